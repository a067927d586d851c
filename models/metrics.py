"""Online CTR metrics over a stream of progressive-validation predictions.

`StreamMetrics` keeps every prediction and label (float32, in buffers that grow by doubling) so
that any range of rows can be scored afterwards and a benchmark can bootstrap over rows:

    m = StreamMetrics()
    m.update(pred: float32[B], labels: float32[B])   # per batch, in stream order
    m.summary()                  # whole stream: auc, logloss, ne, calibration, ctr, rows
    m.summary(start=-1000)       # the last 1000 rows
    m.last_fraction(0.3)         # the last 30% of rows
    m.sliding(window=10_000)     # list of summaries over consecutive windows

Definitions, over rows [start, stop):
- AUC: sklearn.metrics.roc_auc_score (nan when the range holds one class only).
- log loss: mean binary cross-entropy, predictions clipped to [1e-7, 1 - 1e-7].
- NE: log loss / H(p) with p the base CTR observed so far, i.e. the mean label over rows
  [0, stop); for the whole stream that is the usual normalized entropy.
- calibration: mean prediction / observed CTR over the range (nan when the CTR is 0).

Running sums make the whole-stream log loss, NE and calibration O(1) (`running()`); AUC over
a range costs a sort of that range.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

PRED_EPS = 1e-7


def binary_entropy(p: float) -> float:
    """H(p) in nats; 0 for p in {0, 1}."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def pointwise_logloss(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float[N], float[N] -> float64[N] cross-entropy per row (predictions clipped)."""
    p = np.clip(np.asarray(pred, dtype=np.float64), PRED_EPS, 1.0 - PRED_EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def auc_score(pred: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via sklearn; nan when `labels` holds one class only (or nothing)."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, pred))


def _grown(buf: np.ndarray, used: int, capacity: int) -> np.ndarray:
    out = np.empty(capacity, dtype=buf.dtype)
    out[:used] = buf[:used]
    return out


class StreamMetrics:
    """All predictions and labels of a stream, in order, with metrics over any row range."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._pred = np.empty(max(capacity, 1), dtype=np.float32)
        self._labels = np.empty(max(capacity, 1), dtype=np.float32)
        self._n = 0
        self._loss_sum = 0.0
        self._pred_sum = 0.0
        self._label_sum = 0.0

    def __len__(self) -> int:
        return self._n

    @property
    def predictions(self) -> np.ndarray:
        """float32[N], a view (do not keep it across updates)."""
        return self._pred[: self._n]

    @property
    def labels(self) -> np.ndarray:
        """float32[N], a view (do not keep it across updates)."""
        return self._labels[: self._n]

    def update(self, pred: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch: pred float[B] in [0, 1], labels float[B] in {0, 1}."""
        pred = np.asarray(pred, dtype=np.float32).reshape(-1)
        labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        if pred.shape != labels.shape:
            raise ValueError(f"pred has shape {pred.shape}, labels {labels.shape}")
        b = pred.shape[0]
        need = self._n + b
        if need > self._pred.shape[0]:
            cap = max(need, 2 * self._pred.shape[0])
            self._pred = _grown(self._pred, self._n, cap)
            self._labels = _grown(self._labels, self._n, cap)
        self._pred[self._n : need] = pred
        self._labels[self._n : need] = labels
        self._n = need
        self._loss_sum += float(pointwise_logloss(pred, labels).sum())
        self._pred_sum += float(pred.sum(dtype=np.float64))
        self._label_sum += float(labels.sum(dtype=np.float64))

    def _range(self, start: int | None, stop: int | None) -> tuple[int, int]:
        start, stop, _ = slice(start, stop).indices(self._n)
        return start, max(start, stop)

    def running(self) -> dict[str, float]:
        """Whole-stream log loss, NE, calibration and CTR from running sums (O(1))."""
        n = self._n
        if n == 0:
            return {"rows": 0, "logloss": math.nan, "ne": math.nan, "calibration": math.nan,
                    "ctr": math.nan}
        ctr = self._label_sum / n
        logloss = self._loss_sum / n
        h = binary_entropy(ctr)
        return {
            "rows": n,
            "logloss": logloss,
            "ne": logloss / h if h > 0 else math.nan,
            "calibration": (self._pred_sum / n) / ctr if ctr > 0 else math.nan,
            "ctr": ctr,
        }

    def auc(self, start: int | None = None, stop: int | None = None) -> float:
        a, b = self._range(start, stop)
        return auc_score(self._pred[a:b], self._labels[a:b])

    def logloss(self, start: int | None = None, stop: int | None = None) -> float:
        a, b = self._range(start, stop)
        if a == b:
            return math.nan
        return float(pointwise_logloss(self._pred[a:b], self._labels[a:b]).mean())

    def ne(self, start: int | None = None, stop: int | None = None) -> float:
        """Log loss over [start, stop) / entropy of the CTR over [0, stop)."""
        a, b = self._range(start, stop)
        if a == b:
            return math.nan
        h = binary_entropy(float(self._labels[:b].mean(dtype=np.float64)))
        return self.logloss(a, b) / h if h > 0 else math.nan

    def calibration(self, start: int | None = None, stop: int | None = None) -> float:
        a, b = self._range(start, stop)
        if a == b:
            return math.nan
        ctr = float(self._labels[a:b].mean(dtype=np.float64))
        mean_pred = float(self._pred[a:b].mean(dtype=np.float64))
        return mean_pred / ctr if ctr > 0 else math.nan

    def summary(self, start: int | None = None, stop: int | None = None) -> dict[str, float]:
        """auc, logloss, ne, calibration, ctr, rows and the range [start, stop) itself."""
        a, b = self._range(start, stop)
        return {
            "start": a,
            "stop": b,
            "rows": b - a,
            "auc": self.auc(a, b),
            "logloss": self.logloss(a, b),
            "ne": self.ne(a, b),
            "calibration": self.calibration(a, b),
            "ctr": float(self._labels[a:b].mean(dtype=np.float64)) if b > a else math.nan,
        }

    def last_fraction(self, fraction: float) -> dict[str, float]:
        """summary() over the last `fraction` of the rows seen so far."""
        return self.summary(start=self.tail_start(fraction))

    def tail_start(self, fraction: float) -> int:
        """First row of the last `fraction` of the stream: N - round(fraction * N)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        return self._n - int(round(fraction * self._n))

    def sliding(self, window: int, step: int | None = None) -> list[dict[str, float]]:
        """Summaries over windows [s, s + window) for s = 0, step, 2*step, ... (step defaults
        to window: consecutive, non-overlapping); a trailing partial window is left out."""
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        step = step or window
        return [self.summary(s, s + window) for s in range(0, self._n - window + 1, step)]



# Poisson(1) draws by table look-up of 16 random bits: the table holds the Poisson(1) quantile
# of each 1/65536 step, a CDF error below 2e-5, and is several times faster than rng.poisson.
_POISSON1_TABLE = np.searchsorted(
    np.cumsum(np.exp(-1.0) / np.cumprod(np.r_[1.0, np.arange(1.0, 20.0)])),
    (np.arange(1 << 16) + 0.5) / (1 << 16),
).astype(np.uint8)


def poisson1_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """uint8[n] independent Poisson(1) draws: bootstrap weights of n rows."""
    return _POISSON1_TABLE[rng.integers(0, 1 << 16, size=n, dtype=np.uint16)]


class _SortedScores:
    """One score vector prepared for weighted AUC: the rows in ascending-score order and, for
    each positive, the bounds of its group of tied scores."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")
        s = scores[self.order]
        positive = labels[self.order] > 0.5
        self.neg_mask = (~positive).astype(np.uint8)
        self.pos_idx = np.flatnonzero(positive)
        new_group = np.r_[True, s[1:] != s[:-1]]
        if new_group.all():
            self.lo = self.hi = self.pos_idx  # no ties: a positive has no negative beside it
        else:
            group = np.cumsum(new_group) - 1
            group_start = np.flatnonzero(new_group)
            group_end = np.r_[group_start[1:], len(s)]
            self.lo = group_start[group[self.pos_idx]]  # C[lo]: negatives scored lower
            self.hi = group_end[group[self.pos_idx]]  # C[hi]: ... plus the tied ones
        # Cumulative weights fit int32 (faster) unless N * max weight (< 16) could overflow it.
        self._cum_dtype = np.int32 if 16 * len(s) < 2**31 else np.int64

    def auc(self, weights: np.ndarray) -> float:
        """Weighted AUC with ties counting one half; weights uint8[N] in row order.

        With C the cumulative weight of negatives in score order, a positive at sorted
        position i in the tie group [lo, hi) beats C[lo] + (C[hi] - C[lo]) / 2 of them."""
        w = weights[self.order]
        wp = w[self.pos_idx].astype(np.float64)
        np.multiply(w, self.neg_mask, out=w)
        c = np.zeros(len(w) + 1, dtype=self._cum_dtype)
        np.cumsum(w, out=c[1:])
        den = float(wp.sum()) * float(c[-1])
        if den <= 0:
            return float("nan")
        if self.lo is self.hi:
            return float(np.dot(wp, c[self.lo]) / den)
        beaten = c[self.lo].astype(np.float64) + c[self.hi]
        return float(0.5 * np.dot(wp, beaten) / den)


def bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    n_resamples: int = 500,
    seed: int = 0,
    start: int = 0,
) -> np.ndarray:
    """Paired bootstrap of the AUC of several score vectors on the same rows.

    labels float[N], scores float[M, N] -> float64[n_resamples, M]: the AUC of each score
    vector on each resample of the rows [start, N). Every resample weighs all M score vectors
    with the same row weights, so differences between columns are paired. The weights are
    Poisson(1) per row (the Poisson bootstrap: the large-N equivalent of resampling N rows with
    replacement, and one that restricts exactly to a sub-range), and depend on `seed` and N
    only: with the same seed, rows [start, N) get the same weights whatever `start` is.
    """
    labels = np.asarray(labels)
    scores = np.atleast_2d(np.asarray(scores))
    n = labels.shape[0]
    if scores.shape[1] != n:
        raise ValueError(f"scores has shape {scores.shape}, labels {labels.shape}")
    prepared = [_SortedScores(row[start:], labels[start:]) for row in scores]
    out = np.empty((n_resamples, len(prepared)))
    rng = np.random.default_rng(seed)
    for r in range(n_resamples):
        w = poisson1_weights(rng, n)[start:]
        for m, p in enumerate(prepared):
            out[r, m] = p.auc(w)
    return out
