"""Online metrics against sklearn on fixed arrays, windows, and the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from models.bootstrap import bootstrap_auc, poisson1_weights
from models.metrics import StreamMetrics, binary_entropy


def _stream(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.float32)
    p = np.clip(rng.random(n) * 0.5 + 0.3 * y, 0.01, 0.99).astype(np.float32)
    return p, y


def _fill(p: np.ndarray, y: np.ndarray, chunk: int = 97) -> StreamMetrics:
    m = StreamMetrics(capacity=8)  # forces the buffers to grow many times
    for i in range(0, len(y), chunk):
        m.update(p[i : i + chunk], y[i : i + chunk])
    return m


def test_whole_stream_matches_sklearn() -> None:
    p, y = _stream()
    m = _fill(p, y)
    assert len(m) == len(y)
    np.testing.assert_array_equal(m.predictions, p)
    np.testing.assert_array_equal(m.labels, y)
    s = m.summary()
    assert s["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert s["logloss"] == pytest.approx(log_loss(y, p.astype(np.float64)), rel=1e-9)
    ctr = y.mean(dtype=np.float64)
    h = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    assert s["ne"] == pytest.approx(s["logloss"] / h, rel=1e-9)
    assert s["calibration"] == pytest.approx(p.mean(dtype=np.float64) / ctr, rel=1e-6)
    run = m.running()
    for key in ("logloss", "ne", "calibration", "ctr"):
        assert run[key] == pytest.approx(s[key], rel=1e-6)


def test_constant_base_rate_predictor_has_ne_one_and_auc_half() -> None:
    _, y = _stream()
    m = _fill(np.full(len(y), y.mean(), np.float32), y)
    assert m.ne() == pytest.approx(1.0, rel=1e-5)
    assert m.auc() == pytest.approx(0.5)
    assert m.calibration() == pytest.approx(1.0, rel=1e-5)


def test_windows_and_tail() -> None:
    p, y = _stream(1000)
    m = _fill(p, y)
    wins = m.sliding(300)
    assert [(w["start"], w["stop"]) for w in wins] == [(0, 300), (300, 600), (600, 900)]
    for w in wins:
        a, b = w["start"], w["stop"]
        assert w["auc"] == pytest.approx(roc_auc_score(y[a:b], p[a:b]), abs=1e-12)
        assert w["logloss"] == pytest.approx(log_loss(y[a:b], p[a:b].astype(np.float64)))
        # NE's base rate is the CTR observed so far: rows [0, stop)
        assert w["ne"] == pytest.approx(
            w["logloss"] / binary_entropy(float(y[:b].mean(dtype=np.float64)))
        )
    overlapping = m.sliding(500, step=250)
    assert [w["start"] for w in overlapping] == [0, 250, 500]
    tail = m.last_fraction(0.3)
    assert (tail["start"], tail["stop"]) == (700, 1000)
    assert tail["auc"] == pytest.approx(roc_auc_score(y[700:], p[700:]), abs=1e-12)
    assert m.summary(start=-300) == tail


def test_degenerate_ranges_are_nan() -> None:
    m = StreamMetrics()
    assert math.isnan(m.auc()) and math.isnan(m.running()["ne"])
    m.update(np.array([0.2, 0.4]), np.array([0.0, 0.0]))
    assert math.isnan(m.auc()) and math.isnan(m.calibration()) and math.isnan(m.ne())
    assert math.isfinite(m.logloss())
    with pytest.raises(ValueError):
        m.update(np.zeros(3), np.zeros(2))


def test_poisson_weights_have_mean_and_variance_one() -> None:
    w = poisson1_weights(np.random.default_rng(0), 200_000).astype(np.float64)
    assert w.mean() == pytest.approx(1.0, abs=0.01)
    assert w.var() == pytest.approx(1.0, abs=0.02)
    assert (w == 0).mean() == pytest.approx(math.exp(-1), abs=0.005)


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_is_weighted_auc_with_documented_weights(ties: bool) -> None:
    p, y = _stream(800, seed=3)
    q = np.clip(p + np.random.default_rng(9).normal(0, 0.1, len(p)), 0, 1).astype(np.float32)
    if ties:
        p, q = np.round(p, 1), np.round(q, 1)
    boot = bootstrap_auc(y, np.stack([p, q]), n_resamples=4, seed=5)
    tail = bootstrap_auc(y, np.stack([p, q]), n_resamples=4, seed=5, start=500)
    rng = np.random.default_rng(5)
    for r in range(4):
        w = poisson1_weights(rng, len(y))
        for m, s in enumerate((p, q)):
            assert boot[r, m] == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
            assert tail[r, m] == pytest.approx(
                roc_auc_score(y[500:], s[500:], sample_weight=w[500:]), abs=1e-12
            )


def test_bootstrap_pairs_rows() -> None:
    """Identical score vectors differ by exactly 0 on every resample; the spread of the AUC
    itself is of the order sqrt(AUC(1-AUC)/N)."""
    p, y = _stream(2000)
    boot = bootstrap_auc(y, np.stack([p, p]), n_resamples=200, seed=1)
    np.testing.assert_array_equal(boot[:, 0], boot[:, 1])
    assert 0.002 < boot[:, 0].std() < 0.05
    assert boot[:, 0].mean() == pytest.approx(roc_auc_score(y, p), abs=0.01)


def _bounded(p: np.ndarray, y: np.ndarray, retain: int, chunk: int = 97) -> StreamMetrics:
    m = StreamMetrics(capacity=8, retain=retain)
    for i in range(0, len(y), chunk):
        m.update(p[i : i + chunk], y[i : i + chunk])
    return m


@pytest.mark.parametrize("chunk", [97, 1000, 5000])  # batches smaller and larger than retain
def test_bounded_metrics_keep_the_window_and_the_whole_stream(chunk: int) -> None:
    p, y = _stream(n=40_000, seed=3)
    full, m = _fill(p, y), _bounded(p, y, retain=2000, chunk=chunk)
    assert len(m) == len(full) == 40_000
    assert m.predictions.shape[0] >= 2000 and m._pred.shape[0] <= 4000  # bounded buffers
    np.testing.assert_array_equal(m.predictions, p[m.first_kept :])
    # the newest window: exactly the unbounded metrics
    for name in ("auc", "logloss", "ne", "calibration", "ctr"):
        assert m.summary(start=-2000)[name] == pytest.approx(full.summary(start=-2000)[name],
                                                             rel=1e-9)
    # the whole stream: running sums exactly, AUC from the histogram within 1e-4
    for name in ("logloss", "ne", "calibration", "ctr"):
        assert m.summary()[name] == pytest.approx(full.summary()[name], rel=1e-9)
    assert m.auc() == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    with pytest.raises(ValueError, match="only rows from"):
        m.auc(start=100, stop=5000)


def test_bounded_state_does_not_grow_and_restores_exactly() -> None:
    p, y = _stream(n=60_000, seed=4)
    small, large = _bounded(p[:20_000], y[:20_000], 1000), _bounded(p, y, 1000)
    size = {k: v.nbytes for k, v in small.state().items()}
    assert {k: v.nbytes for k, v in large.state().items()} == size  # 3x the stream, same bytes
    back = StreamMetrics.from_state(large.state())
    assert len(back) == len(large) and back.retain == 1000
    assert back.summary() == large.summary()
    assert back.summary(start=-1000) == large.summary(start=-1000)
    back.update(p[:500], y[:500])  # and it goes on where it stopped
    large.update(p[:500], y[:500])
    assert back.summary(start=-1000) == large.summary(start=-1000)
    assert back.auc() == large.auc()
    # an unbounded state (older checkpoints) restores bounded when asked
    bounded = StreamMetrics.from_state(_fill(p, y).state(), retain=1000)
    assert bounded.running() == pytest.approx(_fill(p, y).running(), rel=1e-9)
    assert bounded.summary(start=-1000) == pytest.approx(_fill(p, y).summary(start=-1000))


@pytest.mark.parametrize("retain", [None, 1000])
def test_merged_parts_of_a_stream_give_the_whole_streams_metrics(retain) -> None:
    """A sharded job's ranks each see part of the stream: merging their states gives the
    metrics of the whole (AUC from the summed histograms once rows were dropped)."""
    rng = np.random.default_rng(0)
    p = rng.random(5000).astype(np.float32)
    y = (rng.random(5000) < p).astype(np.float32)
    whole = StreamMetrics(retain=retain and 2 * retain)
    parts = [StreamMetrics(retain=retain), StreamMetrics(retain=retain)]
    for k, i in enumerate(range(0, 5000, 250)):
        parts[k % 2].update(p[i : i + 250], y[i : i + 250])
        whole.update(p[i : i + 250], y[i : i + 250])
    merged = StreamMetrics.merge([m.state() for m in parts])
    assert len(merged) == 5000
    assert merged.auc() == pytest.approx(whole.auc(), abs=1e-12)
    assert merged.running()["logloss"] == pytest.approx(whole.running()["logloss"], rel=1e-12)
    assert abs(parts[0].auc() - whole.auc()) > 1e-6  # one part alone is not the whole
