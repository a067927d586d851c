"""The pruning logic: which chunks stay live under a memory budget.

Every P steps each chunk gets a score from its utility; the store keeps the best-scored chunks
whose bytes fit the budget. Pure functions over arrays, so they are tested on their own.

Scores (`chunk_scores`):
- utilities are normalised per (field, chunk position) by their mean (AdaEmbed normalises per
  table), so a field whose gradients are large by nature does not take every chunk, and a wide
  chunk is not preferred for being wide;
- with `prefix`, chunk j's score is the minimum of the scores of chunks 0..j (and a hair less
  than chunk j-1's), so any threshold keeps a prefix: an ID's live dimensions are its first ones;
- with `keep_first`, every admitted ID's first chunk ranks above all other chunks, ordered by
  its utility, so first chunks go before any second one;
- IDs not yet admitted score -inf and get nothing.
"""

from __future__ import annotations

import numpy as np

_EXACT_LIMIT = 1 << 21  # up to this many chunks: exact sort; beyond: sampled threshold


def chunk_scores(
    util: np.ndarray,
    fields: np.ndarray,
    admitted: np.ndarray,
    normalize: bool,
    prefix: bool,
    keep_first: bool,
) -> np.ndarray:
    """float32[E, K] utilities, int[E] fields, bool[E] admitted -> float64[E, K] scores."""
    u = util.astype(np.float64)
    E, K = u.shape
    if normalize and E:
        f = fields.astype(np.int64)
        nf = int(f.max()) + 1
        n = np.maximum(np.bincount(f, minlength=nf), 1).astype(np.float64)
        for j in range(K):
            mean = np.bincount(f, weights=u[:, j], minlength=nf) / n
            u[:, j] /= np.maximum(mean[f], 1e-12)
    s = u
    if prefix:
        s = np.minimum.accumulate(u, axis=1)
        # Ties along a row must favour the earlier position, or a prefix could break.
        s = s - np.arange(K) * (1e-9 * (1.0 + np.abs(s)))
    if keep_first and E:
        s = s.copy()
        s[:, 0] = (s.max() + 1.0) + u[:, 0]
    s[~admitted] = -np.inf
    return s


def select_chunks(
    scores: np.ndarray,
    costs: np.ndarray,
    capacity: float,
    exact_bytes,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Keep the highest-scored chunks whose bytes fit `capacity`.

    scores float64[E, K]; costs float64[K] bytes of a chunk at each position (folding in any
    per-entry record it brings); exact_bytes(keep bool[E, K]) -> the true bytes of a selection,
    which must come out <= capacity. Returns bool[E, K]: a threshold on the scores (so a
    prefix-shaped score keeps prefixes)."""
    E, K = scores.shape
    finite = np.isfinite(scores)
    if not finite.any() or capacity <= 0:
        return np.zeros_like(finite)
    if exact_bytes(finite) <= capacity:
        return finite
    flat = scores.ravel()
    cost = np.broadcast_to(costs, (E, K)).ravel()
    if flat.size <= _EXACT_LIMIT:
        cand = np.flatnonzero(np.isfinite(flat))
        order = cand[np.argsort(-flat[cand], kind="stable")]
        sorted_scores = flat[order]
        cum = np.cumsum(cost[order])
        scale = 1.0
    else:
        rng = rng or np.random.default_rng(0)
        sample = rng.choice(flat.size, size=1 << 18, replace=False)
        sample = sample[np.isfinite(flat[sample])]
        order = sample[np.argsort(-flat[sample], kind="stable")]
        sorted_scores = flat[order]
        cum = np.cumsum(cost[order])
        scale = flat.size / (1 << 18)
    # The threshold index from the (scaled) cumulative cost, then walk it down until the true
    # bytes of the selection fit.
    k = int(np.searchsorted(cum * scale, capacity, side="right"))
    while k > 0:
        tau = sorted_scores[k - 1]
        keep = scores >= tau
        if exact_bytes(keep) <= capacity:
            return keep
        over = exact_bytes(keep) - capacity
        # Drop roughly the excess (at least one chunk) and retry.
        step = max(1, int(over / max(costs.mean(), 1.0) / scale))
        k -= step
    return np.zeros_like(finite)
