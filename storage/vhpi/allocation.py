"""The pruning logic: which chunks stay live under a memory budget.

Every P steps each chunk gets a score from its utility; the store keeps the best-scored chunks
whose bytes fit the budget. Pure functions over arrays, so they are tested on their own.

Scores (`chunk_scores`):
- utilities are normalised per (field, chunk position) by their mean (AdaEmbed normalises per
  table), so a field whose gradients are large by nature does not take every chunk, and a wide
  chunk is not preferred for being wide;
- with `prefix`, chunk j's score is the minimum of the scores of chunks 0..j, so any threshold
  keeps a prefix: an ID's live dimensions are its first ones;
- with `keep_first`, every admitted ID's first chunk ranks above all other chunks, ordered by
  its utility, so first chunks go before any second one;
- IDs not yet admitted score -inf and get nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_EXACT_LIMIT = 1 << 20  # thresholds are searched among this many scores at most


def chunk_scores(
    util: np.ndarray,
    fields: np.ndarray,
    admitted: np.ndarray,
    normalize: bool,
    prefix: bool,
    keep_first: bool,
    live: np.ndarray | None = None,
    hysteresis: float = 0.0,
) -> np.ndarray:
    """float32[E, K] utilities, int[E] fields, bool[E] admitted -> float32[E, K] scores.

    A live chunk's score is raised by the factor (1 + hysteresis) (`live` bool[E, K]): a chunk
    must beat an incumbent by that margin to take its place.

    With `prefix` the scores fall (weakly) along every row, so any threshold `s >= tau` keeps a
    prefix: tied positions pass or fail together."""
    u = np.array(util, dtype=np.float32)  # a copy: everything below is in place
    E, K = u.shape
    if E == 0:
        return u
    first = None
    if normalize:
        # One bincount over (field, position) cells gives every mean at once.
        f = fields.astype(np.int64)
        nf = int(f.max()) + 1
        cell = (f[:, None] * K + np.arange(K)).ravel()
        n = np.maximum(np.bincount(f, minlength=nf), 1).astype(np.float64)
        mean = np.bincount(cell, weights=u.ravel(), minlength=nf * K).reshape(nf, K) / n[:, None]
        u /= np.maximum(mean, 1e-12).astype(np.float32)[f]
    if live is not None and hysteresis:
        u *= np.where(live, np.float32(1.0 + hysteresis), np.float32(1.0))
    if keep_first:
        first = u[:, 0].copy()
    if prefix:
        np.minimum.accumulate(u, axis=1, out=u)
    if keep_first:
        u[:, 0] = (u.max() + 1.0) + first
    u[~admitted] = -np.inf
    return u


def select_chunks(
    scores: np.ndarray,
    capacity: float,
    exact_bytes: Callable[[np.ndarray], float],
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Keep the highest-scored chunks whose bytes fit `capacity`: bool[E, K] = scores >= tau
    for the lowest threshold tau whose selection fits (so prefix-shaped scores keep prefixes).

    scores float32[E, K] (-inf: never); exact_bytes(keep bool[E, K]) -> the true bytes of a
    selection, monotone in it. tau is searched among the scores themselves (all of them up to
    a few million, else a uniform sample), by bisection with the exact byte count."""
    finite = np.isfinite(scores)
    if not finite.any() or capacity <= 0:
        return np.zeros_like(finite)
    if exact_bytes(finite) <= capacity:
        return finite
    flat = scores.ravel()
    if flat.size > _EXACT_LIMIT:
        rng = rng or np.random.default_rng(0)
        flat = flat[rng.choice(flat.size, size=_EXACT_LIMIT, replace=False)]
    candidates = np.unique(flat[np.isfinite(flat)])[::-1]  # distinct thresholds, high to low
    lo, hi = -1, candidates.size - 1  # candidates[lo] fits (lo = -1: nothing), [hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if exact_bytes(scores >= candidates[mid]) <= capacity:
            lo = mid
        else:
            hi = mid
    if lo < 0:
        return np.zeros_like(finite)
    return scores >= candidates[lo]
