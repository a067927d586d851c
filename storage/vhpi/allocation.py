"""The pruning logic: which chunks stay live under a memory budget.

Every P steps each chunk gets a score from its utility; the store keeps the best-scored chunks
whose bytes fit the budget. Pure functions over torch tensors (on the store's device), so they
are tested on their own.

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
import torch

from storage.vhpi.config import INDEX_ALLOWANCE, StoreConfig, fixed_entry_bytes
from storage.vhpi.reducer import LOCAL, Reducer

_THRESHOLDS = 4096  # candidate thresholds on large stores (quantiles of the scores)
_SAMPLE_ROWS = 1 << 15  # rows of the sample that brackets the threshold


def chunk_scores(
    util: torch.Tensor,
    fields: torch.Tensor,
    admitted: torch.Tensor,
    normalize: bool,
    prefix: bool,
    keep_first: bool,
    live: torch.Tensor | None = None,
    hysteresis: float = 0.0,
    cost: np.ndarray | None = None,
    reduce: Reducer = LOCAL,
) -> torch.Tensor:
    """float32[E, K] utilities, int[E] fields, bool[E] admitted -> float32[E, K] scores.

    A live chunk's score is raised by the factor (1 + hysteresis) (`live` bool[E, K]): a chunk
    must beat an incumbent by that margin to take its place. With `cost` float[K] (a chunk's
    bytes at each position, relative to position 0, raised to the store's cost_power), a score
    is divided by its chunk's cost: utility per byte, so a wide chunk must earn its width.

    With `prefix` the scores fall (weakly) along every row, so any threshold `s >= tau` keeps a
    prefix: tied positions pass or fail together.

    `reduce`: a global reducer makes the means and the first-chunk ceiling those of every
    shard (then every shard calls this, even with E = 0)."""
    u = torch.as_tensor(util, dtype=torch.float32).clone()  # everything below is in place
    E, K = u.shape
    if E == 0 and not reduce.is_global:
        return u
    dev = u.device
    if normalize:
        # One bincount over (field, position) cells gives every mean at once.
        f = torch.as_tensor(fields, device=dev).long()
        nf = int(f.max()) + 1 if E else 0
        if reduce.is_global:
            nf = int(reduce.max(torch.tensor([nf], device=dev))[0])
        cell = (f[:, None] * K + torch.arange(K, device=dev)).reshape(-1)
        n = torch.bincount(f, minlength=nf).double()
        mean = torch.bincount(cell, weights=u.reshape(-1).double(), minlength=nf * K)
        if reduce.is_global:
            both = reduce.sum(torch.cat([n, mean]))
            n, mean = both[:nf], both[nf:]
        mean = mean.reshape(nf, K) / n.clamp(min=1)[:, None]
        u /= mean.clamp(min=1e-12).float().index_select(0, f)
    if cost is not None:
        u /= torch.as_tensor(np.asarray(cost, dtype=np.float32), device=dev)
    if live is not None and hysteresis:
        up = torch.tensor(np.float32(1.0 + hysteresis), device=dev)
        u *= torch.where(torch.as_tensor(live, device=dev), up, torch.ones((), device=dev))
    first = u[:, 0].clone() if keep_first else None
    if prefix and E:
        u = torch.cummin(u, dim=1).values
    if first is not None:
        top = u.max() if E else torch.tensor(-torch.inf, device=dev)
        if reduce.is_global:
            top = reduce.max(top.reshape(1))[0]
        u[:, 0] = (top + 1.0) + first
    u[~torch.as_tensor(admitted, device=dev)] = -torch.inf
    return u


def select_chunks(
    scores: torch.Tensor,
    capacity: float,
    exact_bytes: Callable[[torch.Tensor], float],
    gen: torch.Generator | None = None,
    reduce: Reducer = LOCAL,
) -> torch.Tensor:
    """Keep the highest-scored chunks whose bytes fit `capacity`: bool[E, K] = scores >= tau
    for the lowest threshold tau whose selection fits (so prefix-shaped scores keep prefixes).

    scores float32[E, K] (-inf: never); exact_bytes(keep bool[E, K]) -> the true bytes of a
    selection, monotone in it. tau is one of the scores themselves (all of them on small stores;
    on large ones one of _THRESHOLDS quantiles, so the budget may be under-filled by a fraction
    of a percent). Every exact count is a pass over all E x K scores, so the search first
    brackets tau on a sample of rows and then gallops from there with exact counts. `gen`: the
    generator (on the scores' device) the samples are drawn with.

    With a global `reduce` (a sharded model: `exact_bytes` and `capacity` are then every
    shard's) the candidates come from every shard's scores, so each shard bisects over the same
    thresholds, takes the same branches and keeps the chunks above one global threshold."""
    finite = torch.isfinite(scores)
    any_finite = bool(finite.any())
    if reduce.is_global:
        any_finite = bool(reduce.max(torch.tensor([int(any_finite)], device=scores.device))[0])
    if capacity <= 0 or not any_finite:
        return torch.zeros_like(finite)
    if exact_bytes(finite) <= capacity:
        return finite
    dev = scores.device

    def sample(n: int, k: int) -> torch.Tensor:
        return torch.randperm(n, generator=gen, device=dev)[:k]

    flat = scores[finite]
    if reduce.is_global:
        if flat.numel() > 64 * _THRESHOLDS:
            flat = flat[sample(flat.numel(), 64 * _THRESHOLDS)]
        flat = reduce.cat(flat)
    if flat.numel() > _THRESHOLDS:
        if flat.numel() > 64 * _THRESHOLDS and not reduce.is_global:
            # quantiles of a sample: a full sort costs ~10x more (global: each shard sampled
            # its own part already, and every shard must see the same candidates)
            flat = flat[sample(flat.numel(), 64 * _THRESHOLDS)]
        ordered = flat.sort().values
        levels = np.linspace(0.0, 1.0, _THRESHOLDS)  # np.quantile's "inverted_cdf" positions
        at = np.clip(np.ceil(levels * ordered.numel()).astype(np.int64) - 1, 0, None)
        candidates = torch.unique(ordered[torch.from_numpy(at).to(dev)]).flip(0)
    else:
        candidates = torch.unique(flat).flip(0)  # distinct thresholds, high to low
    n = candidates.numel()

    def fits(i: int, rows: torch.Tensor | None = None, scale: float = 1.0) -> bool:
        sub = scores if rows is None else scores[rows]
        return exact_bytes(sub >= candidates[i]) * scale <= capacity

    def last_fitting(lo: int, hi: int, test: Callable[[int], bool]) -> int:
        """Bisection: candidates[lo] fits (or lo = -1), candidates[hi] does not."""
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if test(mid) else (lo, mid)
        return lo

    E = scores.shape[0]
    if E > _SAMPLE_ROWS and not reduce.is_global:  # a cheap estimate of where tau lies
        rows = sample(E, _SAMPLE_ROWS)
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
        return torch.zeros_like(finite)
    return scores >= candidates[best]


def initial_chunk_count(config: StoreConfig, entry_bytes: int,
                        prefix_cost: Callable[[int], float]) -> int:
    """How many chunks a newly admitted ID starts with: `init_chunks` if set, all K without a
    budget, else the longest prefix that the ID's own share of the budget pays for (the budget
    grows by that share with every new ID), and at least one. `prefix_cost(n)`: bytes of an
    entry's first n chunks with their links."""
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
