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

A newly admitted ID starts with the chunks its own share of the budget pays for
(`initial_chunk_count`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from storage.vhpi.config import INDEX_ALLOWANCE, StoreConfig, fixed_entry_bytes

_THRESHOLDS = 4096  # candidate thresholds on large stores (quantiles of the scores)
_SAMPLE_ROWS = 1 << 15  # rows of the sample that brackets the threshold


def chunk_scores(
    util: np.ndarray,
    fields: np.ndarray,
    admitted: np.ndarray,
    normalize: bool,
    prefix: bool,
    keep_first: bool,
    live: np.ndarray | None = None,
    hysteresis: float = 0.0,
    cost: np.ndarray | None = None,
) -> np.ndarray:
    """float32[E, K] utilities, int[E] fields, bool[E] admitted -> float32[E, K] scores.

    A live chunk's score is raised by the factor (1 + hysteresis) (`live` bool[E, K]): a chunk
    must beat an incumbent by that margin to take its place. With `cost` float[K] (a chunk's
    bytes at each position, relative to position 0, raised to the store's cost_power), a score
    is divided by its chunk's cost: utility per byte, so a wide chunk must earn its width.

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
    if cost is not None:
        u /= np.asarray(cost, dtype=np.float32)
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
    selection, monotone in it. tau is one of the scores themselves (all of them on small stores;
    on large ones one of _THRESHOLDS quantiles, so the budget may be under-filled by a fraction
    of a percent). Every exact count is a pass over all E x K scores, so the search first
    brackets tau on a sample of rows and then gallops from there with exact counts."""
    finite = np.isfinite(scores)
    if not finite.any() or capacity <= 0:
        return np.zeros_like(finite)
    if exact_bytes(finite) <= capacity:
        return finite
    rng = rng or np.random.default_rng(0)
    flat = scores[finite]
    if flat.size > _THRESHOLDS:
        if flat.size > 64 * _THRESHOLDS:  # quantiles of a sample: a full sort costs ~10x more
            flat = flat[rng.choice(flat.size, size=64 * _THRESHOLDS, replace=False)]
        levels = np.linspace(0.0, 1.0, _THRESHOLDS)
        candidates = np.unique(np.quantile(flat, levels, method="inverted_cdf"))[::-1]
    else:
        candidates = np.unique(flat)[::-1]  # distinct thresholds, high to low
    n = candidates.size

    def fits(i: int, rows: np.ndarray | None = None, scale: float = 1.0) -> bool:
        sub = scores if rows is None else scores[rows]
        return exact_bytes(sub >= candidates[i]) * scale <= capacity

    def last_fitting(lo: int, hi: int, test: Callable[[int], bool]) -> int:
        """Bisection: candidates[lo] fits (or lo = -1), candidates[hi] does not."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if test(mid) else (lo, mid)
        return lo

    E = scores.shape[0]
    if E > _SAMPLE_ROWS:  # a cheap estimate of where tau lies
        rows = rng.choice(E, size=_SAMPLE_ROWS, replace=False)
        guess = last_fitting(-1, n, lambda i: fits(i, rows, E / _SAMPLE_ROWS))
        guess = min(max(guess, 0), n - 1)
    else:
        guess = n // 2
    # Gallop from the guess with exact counts to a bracket, then bisect inside it.
    if fits(guess):
        lo, step = guess, 1
        while lo + step < n and fits(lo + step):
            lo, step = lo + step, step * 2
        hi = min(lo + step, n)
    else:
        hi, step = guess, 1
        while hi - step >= 0 and not fits(hi - step):
            hi, step = hi - step, step * 2
        lo = max(hi - step, -1)
    best = last_fitting(lo, hi, fits)
    if best < 0:
        return np.zeros_like(finite)
    return scores >= candidates[best]


def initial_chunk_count(config: StoreConfig, entry_bytes: int,
                        prefix_cost: Callable[[int], float]) -> int:
    """How many chunks a newly admitted ID starts with: `init_chunks` if set, all K without a
    budget, else the longest prefix that the ID's own share of the budget pays for (the budget
    grows by that share with every new ID), and at least one. `prefix_cost(n)`: bytes of an
    entry's first n chunks with the extension record they need."""
    c, K = config, config.num_chunks
    if c.init_chunks:
        return min(c.init_chunks, K)
    if c.budget is None:
        return K
    share = c.budget * fixed_entry_bytes(c.dim, c.optimizer) - entry_bytes - INDEX_ALLOWANCE
    n = 1
    while n < K and prefix_cost(n + 1) <= share:
        n += 1
    return n
