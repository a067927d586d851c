"""The synthetic CTR stream: reproducibility, Zipf popularity, ground truth, drift, memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from itertools import islice

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from storage.batch import SparseBatch
from storage.datasets import DatasetError, open_dataset
from storage.datasets.synthetic import BLOCK_ROWS, START_TIME, SyntheticDataset


def _all(ds: SyntheticDataset, batch_size: int) -> SparseBatch:
    return SparseBatch.concat(list(ds.batches(batch_size)))


def _assert_same(a: SparseBatch, b: SparseBatch) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.unit_ids, b.unit_ids)
    np.testing.assert_array_equal(a.extras["p_true"], b.extras["p_true"])
    if a.dense is not None:
        np.testing.assert_array_equal(a.dense, b.dense)


def _top_ids(ids: np.ndarray, k: int) -> set[int]:
    values, counts = np.unique(ids, return_counts=True)
    return set(values[np.argsort(-counts, kind="stable")[:k]].tolist())


def test_open_by_spec_gives_the_documented_batch() -> None:
    ds = open_dataset("synthetic:events=1000,fields=4,vocab=500,zipf=1.2,seed=3,drift=0.1")
    assert isinstance(ds, SyntheticDataset)
    assert ds.schema.name == "synthetic"
    assert ds.schema.fields == ("f0", "f1", "f2", "f3")
    sizes = [len(b) for b in ds.batches(300)]
    assert sizes == [300, 300, 300, 100]
    b = next(ds.batches(1000))
    assert b.ids.dtype == np.int64 and b.ids.shape == (1000, 4)
    assert b.labels.dtype == np.float32 and set(np.unique(b.labels)) <= {0.0, 1.0}
    assert b.dense is None
    np.testing.assert_array_equal(b.unit_ids, b.ids[:, 0])
    assert b.timestamps[0] == START_TIME and np.all(np.diff(b.timestamps) >= 0)
    assert b.extras["p_true"].dtype == np.float32
    assert np.all(b.ids != 0)  # MISSING_ID is never produced


def test_defaults_and_dense() -> None:
    ds = open_dataset("synthetic")
    assert isinstance(ds, SyntheticDataset)
    assert (ds.events, ds.num_fields, ds.vocab, ds.zipf, ds.seed, ds.drift, ds.dim) == (
        1_000_000,
        8,
        100_000,
        1.1,
        0,
        0.0,
        32,
    )
    ds = open_dataset("synthetic:events=2_000,fields=3,dense=5,dim=16")
    b = next(ds.batches(2000))
    assert ds.schema.dense == ("d0", "d1", "d2", "d3", "d4")
    assert b.dense is not None and b.dense.shape == (2000, 5)


def test_same_seed_same_stream_whatever_the_batch_size() -> None:
    spec = "synthetic:events=70000,fields=3,vocab=2000,seed=7,drift=0.2,dense=2"
    ref = _all(open_dataset(spec), 70_000)  # type: ignore[arg-type]
    assert len(ref) == 70_000 and 70_000 > 2 * BLOCK_ROWS  # crosses block boundaries
    for batch_size in (4096, 30_000):
        _assert_same(_all(open_dataset(spec), batch_size), ref)  # type: ignore[arg-type]
    rows = SparseBatch.concat(list(islice(open_dataset(spec).batches(1), 300)))
    _assert_same(rows, ref.take(slice(0, 300)))


def test_different_seed_different_stream() -> None:
    a = next(open_dataset("synthetic:events=5000,fields=4,vocab=1000,seed=1").batches(5000))
    b = next(open_dataset("synthetic:events=5000,fields=4,vocab=1000,seed=2").batches(5000))
    assert not np.array_equal(a.labels, b.labels)
    assert len(np.intersect1d(a.ids, b.ids)) == 0  # IDs are keyed by the seed too


@pytest.mark.parametrize("zipf", [0.9, 1.2])
def test_zipf_exponent_recovered_from_rank_frequency(zipf: float) -> None:
    ds = SyntheticDataset(events=200_000, fields=4, vocab=20_000, zipf=zipf, seed=5)
    b = _all(ds, 200_000)
    # pool the sorted frequencies of the four fields, fit log-frequency vs log-rank
    top = 100
    counts = np.zeros(top)
    for f in range(ds.num_fields):
        c = np.sort(np.unique(b.ids[:, f], return_counts=True)[1])[::-1]
        counts += c[:top]
    slope = np.polyfit(np.log(np.arange(1, top + 1)), np.log(counts), 1)[0]
    assert -slope == pytest.approx(zipf, rel=0.10)
    # popular IDs are not small integers
    assert min(abs(i) for i in _top_ids(b.ids[:, 0], 10)) > 1 << 32


def test_base_ctr_and_learnable_signal() -> None:
    ds = SyntheticDataset(events=100_000, seed=11)
    b = _all(ds, 100_000)
    ctr = float(b.labels.mean())
    assert 0.10 <= ctr <= 0.25
    p = b.extras["p_true"]
    assert float(p.mean()) == pytest.approx(ctr, abs=0.01)
    auc = roc_auc_score(b.labels, p)
    assert auc > 0.75
    # the ground truth reproduces p_true exactly from the raw IDs
    np.testing.assert_array_equal(1.0 / (1.0 + np.exp(-ds.true_logits(b.ids))), p)
    # signal needs dimensions: an oracle that keeps 4 dims for every ID loses much of it
    auc4 = roc_auc_score(b.labels, ds.true_logits(b.ids, dims=4))
    assert auc4 < auc - 0.05


def test_dims_concentrate_on_few_ids_loosely_tied_to_popularity() -> None:
    ds = SyntheticDataset(vocab=100_000, dim=32, seed=0)
    items = np.arange(ds.vocab)
    n = ds.n_active(0, ds.item_ids(0, items))
    assert n.min() == 0 and n.max() == 32
    assert (n == 0).mean() > 0.5  # most IDs carry no signal
    assert 0 < (n >= 16).sum() < 0.02 * ds.vocab  # a few carry a lot
    assert (n[:100] == 0).any()  # some popular IDs carry none
    assert (n[1_000:10_000] >= 16).any()  # some mid-popular IDs carry a lot
    assert n[:100].mean() > 2 * n[10_000:].mean()  # but popularity and signal correlate
    # an ID of another field, or one never made, has no latent
    assert np.all(ds.n_active(1, ds.item_ids(0, items[:1000])) == 0)
    assert np.all(ds.n_active(0, np.array([1, 2, 3, -5])) == 0)


def test_true_logits_with_dense_and_drift() -> None:
    ds = SyntheticDataset(events=2 * BLOCK_ROWS + 10, fields=3, vocab=300, drift=0.5, dense=4)
    batches = list(ds.batches(BLOCK_ROWS))
    last = batches[-2]  # generated after one drift step
    p = 1.0 / (1.0 + np.exp(-ds.true_logits(last.ids, last.dense)))
    np.testing.assert_array_equal(p, last.extras["p_true"])


def test_drift_changes_the_hot_set() -> None:
    def overlap(drift: float) -> float:
        ds = SyntheticDataset(events=20 * BLOCK_ROWS, fields=1, vocab=5_000, drift=drift)
        batches = list(ds.batches(4 * BLOCK_ROWS))
        first, last = _top_ids(batches[0].ids, 100), _top_ids(batches[-1].ids, 100)
        return len(first & last) / 100

    still, moving = overlap(0.0), overlap(0.5)
    assert still >= 0.85  # only sampling noise
    assert moving <= 0.75


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ("events=100,colour=red", "colour"),
        ("events=many", "events"),
        ("events=1.5", "events"),
        ("fields=0", "fields"),
        ("vocab=-3", "vocab"),
        ("zipf=abc", "zipf"),
        ("drift=1.5", "drift"),
        ("seed=nan", "seed"),
        ("dim=0", "dim"),
        ("dense=", "dense"),
    ],
)
def test_bad_spec_is_one_line_naming_spec_and_key(params: str, key: str) -> None:
    spec = f"synthetic:{params}"
    with pytest.raises(DatasetError) as err:
        open_dataset(spec)
    message = str(err.value)
    assert spec in message and key in message and "\n" not in message


def test_streams_without_materialising() -> None:
    ds = SyntheticDataset(events=2_000_000, fields=2, vocab=1000, seed=4)
    it = ds.batches(8192)
    assert isinstance(it, Iterator)
    tracemalloc.start()
    try:
        rows = sum(len(b) for b in it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 2_000_000
    # 2M rows held at once would take 80 MB (ids, labels, unit ids, timestamps, p_true); one
    # block of working arrays (latent sums [BLOCK_ROWS, dim]) takes about 16 MB
    assert peak < 40 * 2**20
