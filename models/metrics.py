"""Online CTR metrics over a stream of progressive-validation predictions.

`StreamMetrics` keeps every prediction and label (float32, in buffers that grow by doubling) so
that any range of rows can be scored afterwards and a benchmark can bootstrap over rows
(models/bootstrap.py):

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

Bounded memory (a trainer that runs for months): `StreamMetrics(retain=10_000)` keeps only the
newest `retain` rows (at most 2 x retain between compactions) beside the running sums and a
histogram of the scores of each class (HIST_BINS bins in logit space); the whole-stream AUC
then comes from the histogram (ties within a bin count one half: error below the share of
pairs in one bin, ~1e-4 on CTR data), and a range that reaches rows no longer kept raises.
`state()` / `from_state()` give the arrays a checkpoint stores: their size does not grow with
the stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

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


HIST_BINS = 4096
HIST_LOGIT = 16.0  # bins cover logits in [-16, 16]; beyond, the edge bins


def _score_bins(pred: np.ndarray) -> np.ndarray:
    """int64[N] histogram bin of each probability, uniform in logit space."""
    p = np.clip(pred.astype(np.float64), PRED_EPS, 1.0 - PRED_EPS)
    logit = np.log(p) - np.log1p(-p)
    scaled = (logit + HIST_LOGIT) * (HIST_BINS / (2 * HIST_LOGIT))
    return np.clip(scaled.astype(np.int64), 0, HIST_BINS - 1)


def histogram_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """AUC from per-bin counts of negatives and positives (bins in score order; a tie within
    a bin counts one half); nan with one class only."""
    n_neg, n_pos = float(neg.sum()), float(pos.sum())
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    below = np.cumsum(neg, dtype=np.float64) - neg  # negatives in lower bins
    return float((pos * (below + 0.5 * neg)).sum() / (n_neg * n_pos))


class StreamMetrics:
    """The predictions and labels of a stream, in order, with metrics over any row range
    (with `retain`, over the newest rows; see the module docstring)."""

    def __init__(self, capacity: int = 1 << 16, retain: int | None = None) -> None:
        if retain is not None and retain < 1:
            raise ValueError(f"retain must be >= 1, got {retain}")
        self.retain = retain
        if retain is not None:
            capacity = min(capacity, 2 * retain)
        self._pred = np.empty(max(capacity, 1), dtype=np.float32)
        self._labels = np.empty(max(capacity, 1), dtype=np.float32)
        self._n = 0  # rows seen
        self._dropped = 0  # rows no longer kept (the first ones)
        self._dropped_label_sum = 0.0
        self._loss_sum = 0.0
        self._pred_sum = 0.0
        self._label_sum = 0.0
        # score histograms of negatives / positives (bounded mode only)
        self._hist = np.zeros((2, HIST_BINS), np.int64) if retain is not None else None

    def __len__(self) -> int:
        return self._n

    @property
    def first_kept(self) -> int:
        """The first row still kept (0 unless `retain` dropped older ones)."""
        return self._dropped

    @property
    def predictions(self) -> np.ndarray:
        """float32[N] of the kept rows, a view (do not keep it across updates)."""
        return self._pred[: self._n - self._dropped]

    @property
    def labels(self) -> np.ndarray:
        """float32[N] of the kept rows, a view (do not keep it across updates)."""
        return self._labels[: self._n - self._dropped]

    def update(self, pred: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch: pred float[B] in [0, 1], labels float[B] in {0, 1}."""
        pred = np.asarray(pred, dtype=np.float32).reshape(-1)
        labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        if pred.shape != labels.shape:
            raise ValueError(f"pred has shape {pred.shape}, labels {labels.shape}")
        self._loss_sum += float(pointwise_logloss(pred, labels).sum())
        self._pred_sum += float(pred.sum(dtype=np.float64))
        self._label_sum += float(labels.sum(dtype=np.float64))
        if self._hist is not None:
            np.add.at(self._hist, ((labels > 0.5).astype(np.int64), _score_bins(pred)), 1)
            if pred.shape[0] > self.retain:  # only the newest `retain` rows can stay
                cut = pred.shape[0] - self.retain
                self._drop_kept(self._n - self._dropped)
                self._dropped += cut
                self._dropped_label_sum += float(labels[:cut].sum(dtype=np.float64))
                self._n += cut
                pred, labels = pred[cut:], labels[cut:]
        b = pred.shape[0]
        used = self._n - self._dropped
        need = used + b
        if need > self._pred.shape[0]:
            if self.retain is not None:
                self._drop_kept(need - self.retain)
                used = self._n - self._dropped
                need = used + b
            if need > self._pred.shape[0]:
                cap = max(need, 2 * self._pred.shape[0])
                if self.retain is not None:
                    cap = max(need, min(cap, 2 * self.retain))
                self._pred = _grown(self._pred, used, cap)
                self._labels = _grown(self._labels, used, cap)
        self._pred[used:need] = pred
        self._labels[used:need] = labels
        self._n += b

    def _drop_kept(self, count: int) -> None:
        """Forget the oldest `count` kept rows (moving the rest to the front)."""
        used = self._n - self._dropped
        count = min(max(count, 0), used)
        if not count:
            return
        self._dropped_label_sum += float(self._labels[:count].sum(dtype=np.float64))
        self._pred[: used - count] = self._pred[count:used]
        self._labels[: used - count] = self._labels[count:used]
        self._dropped += count

    def state(self) -> dict[str, np.ndarray]:
        """The arrays that restore these metrics (`from_state`): the kept rows, the running
        sums, the histogram. Bounded by `retain` when it is set."""
        pred, labels = self.predictions, self.labels
        dropped, dropped_label_sum = self._dropped, self._dropped_label_sum
        if self.retain is not None and len(pred) > self.retain:  # exactly `retain` rows
            cut = len(pred) - self.retain
            dropped += cut
            dropped_label_sum += float(labels[:cut].sum(dtype=np.float64))
            pred, labels = pred[cut:], labels[cut:]
        sums = np.array([self._n, dropped, dropped_label_sum, self._loss_sum, self._pred_sum,
                         self._label_sum], np.float64)
        out = {"predictions": pred.copy(), "labels": labels.copy(), "sums": sums,
               "retain": np.array([-1 if self.retain is None else self.retain], np.int64)}
        if self._hist is not None:
            out["hist"] = self._hist.copy()
        return out

    @classmethod
    def from_state(cls, z: Any, retain: int | None = None) -> StreamMetrics:
        """Metrics from `state()`'s arrays (or a mapping such as an open .npz). Arrays of an
        older checkpoint (rows only) replay their rows. `retain` (default: the saved one)
        may bound an unbounded state."""
        if "sums" not in z:
            m = cls(retain=retain)
            if z["labels"].size:
                m.update(z["predictions"], z["labels"])
            return m
        saved = int(z["retain"][0])
        m = cls(retain=retain if retain is not None else (None if saved < 0 else saved))
        if m.retain is not None and "hist" not in z:  # an unbounded state, bounded now
            m.update(z["predictions"], z["labels"])
            return m
        n, dropped, dls, loss, psum, lsum = z["sums"].tolist()
        pred = np.asarray(z["predictions"], np.float32)
        labels = np.asarray(z["labels"], np.float32)
        if m.retain is not None and len(pred) > m.retain:  # a smaller retain than saved
            cut = len(pred) - m.retain
            dropped += cut
            dls += float(labels[:cut].sum(dtype=np.float64))
            pred, labels = pred[cut:], labels[cut:]
        m._pred = _grown(pred, len(pred), max(len(pred), 1))
        m._labels = _grown(labels, len(labels), max(len(labels), 1))
        m._n, m._dropped = int(n), int(dropped)
        m._dropped_label_sum, m._loss_sum, m._pred_sum, m._label_sum = dls, loss, psum, lsum
        if m._hist is not None:
            m._hist = np.asarray(z["hist"], np.int64).copy()
        return m

    @classmethod
    def merge(cls, states: Sequence[Mapping[str, np.ndarray]]) -> StreamMetrics:
        """One stream's metrics from the `state()`s of several parts of it (a sharded job's
        ranks, each with its own rows): running sums and histograms add up, the kept rows are
        put one part after the other, the parts' `retain`s add up."""
        retains = [int(s["retain"][0]) for s in states]
        merged = {"predictions": np.concatenate([s["predictions"] for s in states]),
                  "labels": np.concatenate([s["labels"] for s in states]),
                  "sums": np.sum([np.asarray(s["sums"], np.float64) for s in states], axis=0),
                  "retain": np.array([-1 if min(retains) < 0 else sum(retains)], np.int64)}
        if all("hist" in s for s in states):
            merged["hist"] = np.sum([s["hist"] for s in states], axis=0)
        return cls.from_state(merged)

    def _range(self, start: int | None, stop: int | None) -> tuple[int, int]:
        """Absolute rows [a, b) of a slice; raises when it reaches rows no longer kept."""
        start, stop, _ = slice(start, stop).indices(self._n)
        a, b = start, max(start, stop)
        if a < self._dropped and b > a:
            raise ValueError(f"rows [{a}, {b}) asked, but only rows from {self._dropped} on "
                             f"are kept (retain={self.retain})")
        return a, b

    def _whole(self, start: int | None, stop: int | None) -> bool:
        """True when [start, stop) is the whole stream and older rows were dropped: the
        running sums and the histogram answer."""
        if not self._dropped:
            return False
        a, b, _ = slice(start, stop).indices(self._n)
        return a == 0 and b >= self._n

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

    def _kept(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        o = self._dropped
        return self._pred[a - o:b - o], self._labels[a - o:b - o]

    def auc(self, start: int | None = None, stop: int | None = None) -> float:
        if self._whole(start, stop):
            assert self._hist is not None
            return histogram_auc(self._hist[0], self._hist[1])
        return auc_score(*self._kept(*self._range(start, stop)))

    def logloss(self, start: int | None = None, stop: int | None = None) -> float:
        if self._whole(start, stop):
            return self.running()["logloss"]
        a, b = self._range(start, stop)
        if a == b:
            return math.nan
        return float(pointwise_logloss(*self._kept(a, b)).mean())

    def ne(self, start: int | None = None, stop: int | None = None) -> float:
        """Log loss over [start, stop) / entropy of the CTR over [0, stop)."""
        if self._whole(start, stop):
            return self.running()["ne"]
        a, b = self._range(start, stop)
        if a == b:
            return math.nan
        labels_before = self._dropped_label_sum + float(
            self._labels[: b - self._dropped].sum(dtype=np.float64))
        h = binary_entropy(labels_before / b)
        return self.logloss(a, b) / h if h > 0 else math.nan

    def calibration(self, start: int | None = None, stop: int | None = None) -> float:
        if self._whole(start, stop):
            return self.running()["calibration"]
        a, b = self._range(start, stop)
        if a == b:
            return math.nan
        pred, labels = self._kept(a, b)
        ctr = float(labels.mean(dtype=np.float64))
        mean_pred = float(pred.mean(dtype=np.float64))
        return mean_pred / ctr if ctr > 0 else math.nan

    def summary(self, start: int | None = None, stop: int | None = None) -> dict[str, float]:
        """auc, logloss, ne, calibration, ctr, rows and the range [start, stop) itself."""
        if self._whole(start, stop):
            run = self.running()
            return {"start": 0, "stop": self._n, "rows": self._n, "auc": self.auc(),
                    "logloss": run["logloss"], "ne": run["ne"],
                    "calibration": run["calibration"], "ctr": run["ctr"]}
        a, b = self._range(start, stop)
        return {
            "start": a,
            "stop": b,
            "rows": b - a,
            "auc": self.auc(a, b),
            "logloss": self.logloss(a, b),
            "ne": self.ne(a, b),
            "calibration": self.calibration(a, b),
            "ctr": float(self._kept(a, b)[1].mean(dtype=np.float64)) if b > a else math.nan,
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
