"""Bounded memory by default: a flood of never-seen IDs cannot grow the chunk store past its
entry limit (StoreConfig.max_bytes // the most bytes one ID may hold). The least useful
entries (the flood's one-off IDs) are evicted and exported as deleted, the useful ones stay."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models.policies.chunked import ChunkedPolicy
from models.policies.registry import parse_policy
from storage.vhpi.config import DEFAULT_MAX_BYTES, StoreConfig

ROWS, FIELDS = 512, 8


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the steps are small, and on a shared machine more threads only wait
    on each other (this keeps the million-ID flood to seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def flood(spec: str, new_ids: int, popular: int = 2000) -> None:
    """Train `spec` on batches where most IDs are brand new and the rest come from a small
    popular vocabulary; after every step the entry count and the measured bytes must be
    within the limit, and every evicted entry must be exported as deleted."""
    torch.manual_seed(0)
    policy = parse_policy(spec, num_fields=FIELDS)
    assert isinstance(policy, ChunkedPolicy)
    store = policy.store
    limit = store.config.entry_limit()
    max_bytes = store.config.max_bytes
    assert limit is not None and max_bytes is not None
    assert new_ids > 2 * limit, "the flood must overrun the limit to test anything"
    rng = np.random.default_rng(1)
    w = torch.randn(policy.dim) * 0.1
    next_id, deleted, peak_alloc = 10**12, 0, 0
    while next_id - 10**12 < new_ids:
        ids = (rng.zipf(1.3, size=(ROWS, FIELDS)) % popular).astype(np.int64)
        fresh = rng.random((ROWS, FIELDS)) < 0.85
        n = int(fresh.sum())
        ids[fresh] = np.arange(next_id, next_id + n)
        next_id += n
        emb = policy.lookup(ids, train=True)
        (emb * w).sum().backward()
        policy.apply_gradients()
        assert store.index.num_entries <= limit
        assert policy.memory().total_bytes <= max_bytes
        peak_alloc = max(peak_alloc, store.memory()["allocated_bytes"])
        out = policy.export()
        deleted += out.deleted_keys.size
        # Evicted entries are gone from the store, so serving's copies are deleted too.
        assert (store.index.lookup(out.deleted_fields, out.deleted_keys) < 0).all()
    # Capacity grown ahead of use (index 1.5x, pools 1.25x) stays within this of the cap.
    assert peak_alloc <= 1.6 * max_bytes
    # Every brand-new ID got an entry; all but the ones still held were exported as deleted.
    assert deleted + store.index.num_entries >= next_id - 10**12
    # The popular IDs earned their utility: the flood's one-off IDs went first.
    head = np.arange(1, 50, dtype=np.int64)
    found = np.asarray(store.index.lookup(np.zeros(head.size, np.int16), head))
    assert (found >= 0).mean() >= 0.9


def test_a_million_new_ids_stay_within_fiiteds_entry_limit() -> None:
    flood("fiited:budget=0.25,max_bytes=24MiB", new_ids=1_000_000)


@pytest.mark.parametrize("spec", ["fixed:16,max_bytes=4MiB", "dml:max_bytes=8MiB",
                                  "amtl:max_bytes=8MiB"])
def test_other_chunk_store_policies_are_bounded_too(spec: str) -> None:
    flood(spec, new_ids=120_000)


def test_the_default_is_bounded_and_fits_the_benchmarks() -> None:
    """Without max_bytes the store still has a limit, and it is far above the largest
    vocabulary the quality benchmarks use (8 fields x 100k synthetic IDs)."""
    config = StoreConfig()
    assert config.max_bytes == DEFAULT_MAX_BYTES
    for spec in ["fiited", "fiited:budget=0.25", "fixed:64", "adaembed", "dml", "amtl"]:
        policy = parse_policy(spec, num_fields=FIELDS)
        assert isinstance(policy, ChunkedPolicy)
        limit = policy.store.config.entry_limit()
        assert limit is not None and 1_000_000 < limit < 10**8, (spec, limit)
    unbounded = parse_policy("fiited:max_bytes=none", num_fields=FIELDS)
    assert isinstance(unbounded, ChunkedPolicy)
    assert unbounded.store.config.entry_limit() is None
    explicit = parse_policy("fixed:64,max_entries=1000", num_fields=FIELDS)
    assert isinstance(explicit, ChunkedPolicy)
    assert explicit.store.config.entry_limit() == 1000


def test_a_hot_start_is_cut_to_the_entry_limit(tmp_path) -> None:  # noqa: ANN001
    source = parse_policy("fixed:16", num_fields=2)
    ids = np.stack([np.arange(300), np.arange(300) % 7], axis=1).astype(np.int64)
    for rep in range(3):  # IDs below 100 are seen three times, the rest once
        emb = source.lookup(ids if rep == 0 else ids[:100], train=True)
        emb.sum().backward()
        source.apply_gradients()
    source.save(tmp_path / "f.npz")
    policy = parse_policy(f"fixed:8,max_entries=200,hot={tmp_path / 'f.npz'}", num_fields=2)
    assert isinstance(policy, ChunkedPolicy)
    store = policy.store
    assert store.index.num_entries <= 200
    kept = store.index.lookup(np.zeros(100, np.int16), np.arange(100, dtype=np.int64))
    assert (kept >= 0).all(), "the most used IDs of the save were dropped"
