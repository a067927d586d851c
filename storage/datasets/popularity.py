"""Popularity of the synthetic data set's items: exact Zipf sampling of ranks and the drift of
which item holds which rank (see storage/datasets/synthetic.py for the model).

    ranks = ZipfRanks(vocab=1000, exponent=1.1)
    r = ranks.sample(rng, 4096)            # int64[4096] ranks in [0, 1000), P(r) ~ (r + 1)^-A
    drift_step(perm, rng, drift=0.1)       # perm int32[F, V] (rank -> item), in place
"""

from __future__ import annotations

import numpy as np

DRIFT_STEP = 1.0  # std of a proposed swap's distance in log-rank
DRIFT_STIFFNESS = 0.1  # Metropolis weight (x 1/drift) on squared log-rank distance from home
DRIFT_RANKS = 1 << 14  # only the top ranks propose swaps (deeper ones move as partners)
_GUIDE_PER_ITEM = 4  # guide-table buckets per vocabulary item, for O(1) Zipf sampling


class ZipfRanks:
    """Rank r in [0, vocab) with probability proportional to (r + 1)^-exponent: a CDF over
    ranks plus a guide table, exact and O(1) expected per draw."""

    def __init__(self, vocab: int, exponent: float) -> None:
        p = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
        cdf = np.cumsum(p)
        self.cdf = cdf / cdf[-1]
        self.cdf[-1] = 1.0
        m = _GUIDE_PER_ITEM * vocab
        # one bucket low, so rounding of u * m can never start the search past the answer
        low = np.maximum(np.arange(m, dtype=np.float64) - 1.0, 0.0) / m
        self.guide = np.searchsorted(self.cdf, low, side="right").astype(np.int32)

    def sample(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """Zipf ranks int64[rows] by guide table + exact CDF correction (O(1) expected)."""
        u = rng.random(rows)
        r = self.guide[(u * self.guide.shape[0]).astype(np.int64)].astype(np.int64)
        todo = np.flatnonzero(self.cdf[r] <= u)
        while todo.size:  # at most a few rounds: a bucket spans few ranks
            r[todo] += 1
            todo = todo[self.cdf[r[todo]] <= u[todo]]
        return r


def drift_step(perm: np.ndarray, rng: np.random.Generator, drift: float) -> None:
    """One drift step, in place on perm int32[F, V] (rank -> item): a fraction `drift` of the
    top DRIFT_RANKS rank positions propose a swap with a partner a log-normal distance away in
    rank; proposals are made disjoint, then accepted by Metropolis on the squared log distance
    of both items from their home ranks (weight DRIFT_STIFFNESS / drift: more drift, both
    faster and wider)."""
    num_fields, v = perm.shape
    top = min(v, DRIFT_RANKS)  # bounds the cost per block when the vocabulary is large
    stiffness = DRIFT_STIFFNESS / drift
    owner = np.empty(v, np.int64)
    for f in range(num_fields):
        k = int(rng.binomial(top, drift))
        a = rng.integers(0, top, k)
        b = np.rint((a + 1) * np.exp(DRIFT_STEP * rng.standard_normal(k))) - 1
        b = np.clip(b, 0, v - 1).astype(np.int64)
        tag = np.arange(k, dtype=np.int64)
        owner[a] = 2 * tag
        owner[b] = 2 * tag + 1
        keep = (owner[a] == 2 * tag) & (owner[b] == 2 * tag + 1)  # disjoint pairs only
        a, b, u = a[keep], b[keep], rng.random(k)[keep]
        la, lb = np.log1p(a), np.log1p(b)
        x, y = perm[f, a], perm[f, b]
        lx, ly = np.log1p(x), np.log1p(y)
        delta = (lb - lx) ** 2 + (la - ly) ** 2 - (la - lx) ** 2 - (lb - ly) ** 2
        ok = u < np.exp(-stiffness * np.maximum(delta, 0.0))
        perm[f, a[ok]], perm[f, b[ok]] = y[ok], x[ok]
