"""The FIITED chunk store: per-ID embeddings split into K chunks that are pruned and regrown
during training against a memory budget.

Entries are a structure of arrays indexed by the hash index's entry slot, in two tiers so that
the many IDs with at most one live chunk pay for one address, not K (the virtual entry points
to a physical extension record only when it needs one):

    head_addr  int32[E]          address of chunk 0, -1 = pruned (reads zeros)
    ext        int32[E]          extension record, -1 = none (chunks 1.. all pruned)
    head_util  float16[E, 2]     utilities of chunks 0 and 1
    count      uint16[E]         accesses seen in training, saturating (admission)
    last       uint16[E]         the maintenance epoch it was last trained in (eviction)
    dirty      bool[E]           changed since the last export (incremental publishing)
  extension records:
    ext_addr   int32[R, K-1]     addresses of chunks 1..K-1
    ext_util   float16[R, K-2]   utilities of chunks 2..K-1

`addresses(slots)` and `utilities(slots)` give the full int32[N, K] / float32[N, K] views.
Chunk j lives in pool j (`widths[j]` floats each), so first chunks can be narrower than later
ones. Utilities follow u <- gamma * u + a * ||g|| for every chunk every step, stored as
u * gamma^-(t - t0) so that decaying the untouched ones costs nothing but one rescale of all of
them every `interval` steps. A chunk with no extension record (position >= 2) has utility 0.

Training step, as the trainer drives it:

    emb, ctx = store.lookup(ids, train=True)     # int64[B, F] -> float32[B, F, D]
    ... loss.backward() on a model of emb ...
    store.apply_gradients(ctx, emb_grad)         # utilities, Adagrad on live chunks, schedule

Memory is bounded: past `config.entry_limit()` entries (by default derived from
`config.max_bytes`, see storage/vhpi/config.py) a train lookup evicts the least useful entries
not in its batch, down to 1/16 below the limit, so the O(entries) ranking runs once per
limit/16 new IDs, not once per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storage.vhpi.admission import FrequencySketch
from storage.vhpi.allocation import chunk_scores, select_chunks
from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.config import (
    INDEX_ALLOWANCE,
    StoreConfig,
    entry_bytes,
    fixed_entry_bytes,
)
from storage.vhpi.hash_index import HashIndex, mix64

_UTIL_MAX = 60000.0  # float16 headroom


@dataclass
class LookupContext:
    """What a train lookup hands to apply_gradients."""

    unique: np.ndarray  # int32[U] entry slots in the batch
    inverse: np.ndarray  # int64[B*F] position of each (row, field) in `unique`
    counts: np.ndarray  # int64[U] accesses of each unique entry in this step
    addresses: np.ndarray  # int32[U, K] chunk addresses at lookup time


class ChunkStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.widths = config.chunk_widths()
        self.K = len(self.widths)
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)
        self._segments = torch.zeros(config.dim, self.K)  # [D, K]: dimension d is in chunk k
        for j in range(self.K):
            self._segments[self.offsets[j] : self.offsets[j + 1], j] = 1.0
        self.tracks_utility = config.budget is not None
        self.entry_limit = config.entry_limit()
        self.index = HashIndex(initial_capacity=config.initial_capacity)
        self.pools = [
            ChunkPool(w, config.optimizer, initial_capacity=config.initial_capacity)
            for w in self.widths
        ]
        cap = self.index.entry_capacity
        hu = min(self.K, 2) if self.tracks_utility else 0
        eu = max(self.K - 2, 0) if self.tracks_utility else 0
        self.head_addr = np.full(cap, -1, dtype=np.int32)
        self.ext = np.full(cap, -1, dtype=np.int32)
        self.head_util = np.zeros((cap, hu), dtype=np.float16)
        self.count = np.zeros(cap, dtype=np.uint16)
        self.last = np.zeros(cap, dtype=np.uint16)
        self.dirty = np.zeros(cap, dtype=bool)
        self.ext_addr = np.full((0, max(self.K - 1, 0)), -1, dtype=np.int32)
        self.ext_util = np.zeros((0, eu), dtype=np.float16)
        self.ext_free = np.zeros(0, dtype=np.int32)
        self._deleted: list[tuple[np.ndarray, np.ndarray]] = []
        self.step = 0
        self.util_origin = 0  # t0: the step the stored utilities are scaled to
        self.epoch = 0  # maintenance epochs so far (mod 2^16 in `last`)
        self.unseen_lookups = 0  # lookups (not training) of IDs the store does not hold
        self.prunes = 0
        self._rng = np.random.default_rng(config.seed)
        self.sketch = (
            FrequencySketch(config.sketch_width, config.sketch_depth)
            if config.sketch_width and config.min_count > 1
            else None
        )

    # ---- views over the two tiers ------------------------------------------------------
    @property
    def ext_live(self) -> int:
        return int(self.ext_addr.shape[0] - self.ext_free.size)

    def addresses(self, slots: np.ndarray) -> np.ndarray:
        """Chunk addresses: int32[N] slots -> int32[N, K], -1 = pruned."""
        out = np.full((slots.shape[0], self.K), -1, dtype=np.int32)
        out[:, 0] = self.head_addr[slots]
        if self.K > 1:
            e = self.ext[slots]
            has = e >= 0
            out[has, 1:] = self.ext_addr[e[has]]
        return out

    def _stored_utilities(self, slots: np.ndarray) -> np.ndarray:
        out = np.zeros((slots.shape[0], self.K), dtype=np.float32)
        if not self.tracks_utility:
            return out
        h = self.head_util.shape[1]
        out[:, :h] = self.head_util[slots]
        if self.K > 2:
            e = self.ext[slots]
            has = e >= 0
            out[has, 2:] = self.ext_util[e[has]]
        return out

    def _store_utilities(self, slots: np.ndarray, v: np.ndarray) -> None:
        v = np.minimum(v, _UTIL_MAX).astype(np.float16)
        self.head_util[slots] = v[:, : self.head_util.shape[1]]
        if self.K > 2:
            e = self.ext[slots]
            has = e >= 0
            self.ext_util[e[has]] = v[has, 2:]

    def utilities(self, slots: np.ndarray) -> np.ndarray:
        """Utilities decayed to the current step: int32[N] -> float32[N, K]."""
        decay = np.float32(self.config.gamma) ** np.float32(self.step - self.util_origin)
        return self._stored_utilities(slots) * decay

    def _set_addresses(self, slots: np.ndarray, addr: np.ndarray) -> None:
        """Write full int32[N, K] addresses, taking or returning extension records."""
        self.head_addr[slots] = addr[:, 0]
        if self.K == 1:
            return
        need = (addr[:, 1:] >= 0).any(axis=1)
        e = self.ext[slots]
        drop = ~need & (e >= 0)
        if drop.any():
            self.ext_free = np.concatenate([self.ext_free, e[drop]])
            self.ext[slots[drop]] = -1
        take = need & (e < 0)
        if take.any():
            rec = self._alloc_ext(int(take.sum()))
            self.ext_addr[rec] = -1
            self.ext_util[rec] = 0
            self.ext[slots[take]] = rec
        e = self.ext[slots]
        has = e >= 0
        self.ext_addr[e[has]] = addr[has, 1:]

    def _alloc_ext(self, n: int) -> np.ndarray:
        if n > self.ext_free.size:
            old = self.ext_addr.shape[0]
            new = max(old + n - self.ext_free.size, int(old * 1.25) + 64)
            self.ext_addr = np.concatenate(
                [self.ext_addr, np.full((new - old, self.K - 1), -1, np.int32)]
            )
            self.ext_util = np.concatenate(
                [self.ext_util, np.zeros((new - old, self.ext_util.shape[1]), np.float16)]
            )
            self.ext_free = np.concatenate(
                [np.arange(new - 1, old - 1, -1, dtype=np.int32), self.ext_free]
            )
        out = self.ext_free[self.ext_free.size - n :].copy()
        self.ext_free = self.ext_free[: self.ext_free.size - n]
        return out

    # ---- sizes and accounting ----------------------------------------------------------
    def entry_bytes(self) -> int:
        return entry_bytes(self.K, self.tracks_utility)

    def ext_record_bytes(self) -> int:
        return int(self.ext_addr.itemsize * self.ext_addr.shape[1] + 2 * self.ext_util.shape[1])

    def chunk_costs(self) -> np.ndarray:
        """float64[K] bytes one live chunk costs at each position (values + optimizer)."""
        return np.array([p.chunk_bytes for p in self.pools], dtype=np.float64)

    def live_chunks(self) -> int:
        return sum(p.num_live for p in self.pools)

    def memory(self) -> dict[str, int]:
        """Bytes measured from the arrays: live values, their optimizer state, entry and
        extension records in use, index table; and everything allocated (capacity)."""
        value = sum(p.live_bytes()[0] for p in self.pools)
        opt = sum(p.live_bytes()[1] for p in self.pools)
        n = self.index.num_entries
        arrays = (
            self.head_addr,
            self.ext,
            self.head_util,
            self.count,
            self.last,
            self.dirty,
            self.ext_addr,
            self.ext_util,
            self.ext_free,
            self.index.keys,
            self.index.fields,
            self.index.alive,
            self.index.table,
        )
        return {
            "value_bytes": value,
            "optimizer_bytes": opt,
            "metadata_bytes": n * self.entry_bytes()
            + self.ext_live * self.ext_record_bytes()
            + (self.sketch.nbytes if self.sketch is not None else 0),
            "index_bytes": self.index.table_bytes,
            "allocated_bytes": sum(p.allocated_bytes() for p in self.pools)
            + (self.sketch.nbytes if self.sketch is not None else 0)
            + sum(int(a.nbytes) for a in arrays),
            "live_ids": n,
            "live_chunks": self.live_chunks(),
        }

    def budget_bytes(self) -> float:
        """Total bytes the budget allows now: a fraction of what a fixed-D store would take
        for the same IDs (infinite without a budget)."""
        if self.config.budget is None:
            return float("inf")
        n = self.index.num_entries
        fixed = n * fixed_entry_bytes(self.config.dim, self.config.optimizer)
        return self.config.budget * (fixed + self.index.table_bytes)

    def used_bytes(self) -> int:
        m = self.memory()
        return m["value_bytes"] + m["optimizer_bytes"] + m["metadata_bytes"] + m["index_bytes"]

    def _ensure_entry_arrays(self) -> None:
        cap = self.index.entry_capacity
        old = self.head_addr.shape[0]
        if cap <= old:
            return
        grow = cap - old
        self.head_addr = np.concatenate([self.head_addr, np.full(grow, -1, np.int32)])
        self.ext = np.concatenate([self.ext, np.full(grow, -1, np.int32)])
        self.head_util = np.concatenate(
            [self.head_util, np.zeros((grow, self.head_util.shape[1]), np.float16)]
        )
        self.count = np.concatenate([self.count, np.zeros(grow, np.uint16)])
        self.last = np.concatenate([self.last, np.zeros(grow, np.uint16)])
        self.dirty = np.concatenate([self.dirty, np.zeros(grow, bool)])

    # ---- lookup ------------------------------------------------------------------------
    def _gather(self, slots: np.ndarray, addr: np.ndarray | None = None) -> torch.Tensor:
        """float32[N, D] embeddings of entry slots (-1: zeros), or of given addresses."""
        if addr is None:
            ok = slots >= 0
            addr = np.full((slots.shape[0], self.K), -1, dtype=np.int32)
            addr[ok] = self.addresses(slots[ok])
        if self.K == 1:
            return self.pools[0].gather(addr[:, 0])
        return torch.cat([p.gather(addr[:, j]) for j, p in enumerate(self.pools)], dim=1)

    def lookup(
        self, ids: np.ndarray, train: bool = False
    ) -> tuple[torch.Tensor, LookupContext | None]:
        """int64[B, F] -> float32[B, F, D] zero-padded embeddings (pruned chunks read zeros).

        With train=True unseen IDs get entries (and, once admitted, chunks within the budget),
        access counts grow, and the returned context goes to `apply_gradients`."""
        ids = np.asarray(ids, dtype=np.int64)
        B, F = ids.shape
        D = self.config.dim
        fields = np.broadcast_to(np.arange(F, dtype=np.int16), (B, F)).ravel()
        keys = ids.ravel()
        if not train:
            slots = self.index.lookup(fields, keys)
            self.unseen_lookups += int((slots < 0).sum())
            uniq, inverse = np.unique(slots, return_inverse=True)
            emb = torch.nn.functional.embedding(
                torch.from_numpy(inverse.ravel()), self._gather(uniq)
            )
            return emb.reshape(B, F, D), None

        if self.sketch is None:
            slots, inserted = self.index.get_or_insert(fields, keys)
            self._ensure_entry_arrays()
            if inserted.any():
                self._init_entries(np.unique(slots[inserted]), 0)
        else:
            slots = self._sketch_admission(fields, keys)
        uniq, inverse, counts = np.unique(slots, return_inverse=True, return_counts=True)
        self.enforce_entry_limit(protect=uniq[uniq >= 0])
        inverse = inverse.ravel()
        if uniq.size and uniq[0] < 0:  # IDs the sketch has not admitted: they read zeros
            uniq, counts = uniq.copy(), counts.copy()
            counts[0] = 0
        before = self.count[np.maximum(uniq, 0)].astype(np.int64)
        before[uniq < 0] = np.iinfo(np.int64).min // 2  # never "crosses" admission
        uniq_ok = np.maximum(uniq, 0)
        known = uniq >= 0
        self.count[uniq[known]] = np.minimum(before[known] + counts[known], np.iinfo(np.uint16).max)
        self.last[uniq[known]] = self.epoch & 0xFFFF
        mc = self.config.min_count
        crossed = uniq[known & (before < mc) & (before + counts >= mc)]
        if crossed.size:
            self._admit(crossed)
        if self.config.budget is not None and self.config.keep_first:
            # Admitted IDs the budget had no room for when they came in (it grows with every
            # new ID) get their first chunk as soon as there is room, not at the next prune.
            waiting = uniq[known & (self.count[uniq_ok] >= mc) & (self.head_addr[uniq_ok] < 0)]
            if waiting.size:
                self._admit(waiting, max_chunks=1)
        addr = self.addresses(uniq_ok)
        addr[~known] = -1
        emb = torch.nn.functional.embedding(torch.from_numpy(inverse), self._gather(uniq, addr))
        return emb.reshape(B, F, D), LookupContext(uniq, inverse, counts, addr)

    def _init_entries(self, slots: np.ndarray, count: np.ndarray | int) -> None:
        self.head_addr[slots] = -1
        self.ext[slots] = -1
        self.head_util[slots] = 0
        self.count[slots] = count

    def _sketch_admission(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Entry slots of (field, key) pairs, -1 for IDs not admitted yet. A missing ID is
        counted in the sketch, and gets an entry once it has been seen min_count times."""
        slots = self.index.lookup(fields, keys)
        miss = np.flatnonzero(slots < 0)
        if miss.size == 0:
            return slots
        mf, mk = fields[miss], keys[miss]
        _, first, inv, cnt = np.unique(
            mix64(mf, mk), return_index=True, return_inverse=True, return_counts=True
        )
        uf, uk = mf[first], mk[first]
        assert self.sketch is not None
        est = self.sketch.add(uf, uk, cnt)
        ok = est >= self.config.min_count
        got = np.full(first.size, -1, dtype=np.int32)
        if ok.any():
            new, _ = self.index.get_or_insert(uf[ok], uk[ok])
            self._ensure_entry_arrays()
            self._init_entries(new, np.minimum(est[ok] - cnt[ok], np.iinfo(np.uint16).max))
            got[ok] = new
        slots[miss] = got[inv.ravel()]
        return slots

    def _prefix_cost(self, n: int) -> float:
        """Bytes of an entry's first n chunks, with the extension record they need."""
        return float(self.chunk_costs()[:n].sum()) + (self.ext_record_bytes() if n > 1 else 0)

    def _initial_chunks(self) -> int:
        """How many chunks a newly admitted ID starts with: `init_chunks` if set, all K without
        a budget, else the longest prefix that the ID's own share of the budget pays for (the
        budget grows by that share with every new ID), and at least one."""
        c = self.config
        if c.init_chunks:
            return min(c.init_chunks, self.K)
        if c.budget is None:
            return self.K
        share = (
            c.budget * fixed_entry_bytes(c.dim, c.optimizer) - self.entry_bytes() - INDEX_ALLOWANCE
        )
        n = 1
        while n < self.K and self._prefix_cost(n + 1) <= share:
            n += 1
        return n

    def _admit(self, slots: np.ndarray, max_chunks: int | None = None) -> None:
        """Give newly admitted entries their first chunks (`_initial_chunks`) while the budget
        has room, one chunk to those the room cannot pay a full start for, and none to the rest:
        they read zeros until a prune step finds them room."""
        room = self.budget_bytes() - self.used_bytes()
        if room < self._prefix_cost(1):
            return
        n_init = min(self._initial_chunks(), max_chunks or self.K)
        while slots.size:
            per_entry = self._prefix_cost(n_init)
            n = slots.size if np.isinf(room) else max(0, min(slots.size, int(room // per_entry)))
            take, slots = slots[:n], slots[n:]
            if take.size:
                self._give_chunks(take, n_init)
                room -= n * per_entry
            if n_init == 1 or room < self._prefix_cost(1):
                return
            n_init = 1

    def _give_chunks(self, slots: np.ndarray, n_init: int) -> None:
        addr = np.full((slots.size, self.K), -1, dtype=np.int32)
        init = self._initial_values(slots, int(self.offsets[n_init]))
        for j in range(n_init):
            addr[:, j] = self.pools[j].alloc(slots.size)
            self.pools[j].write(addr[:, j], init[:, self.offsets[j] : self.offsets[j + 1]])
        self._set_addresses(slots, addr)
        self.dirty[slots] = True

    def _initial_values(self, slots: np.ndarray, width: int) -> torch.Tensor:
        """Uniform values with standard deviation init_std for the first `width` dimensions of
        each entry, a pure function of (seed, field, raw ID, dimension), so every policy starts
        an ID at the same point: int32[N] -> float32[N, width]. One hash per value."""
        base = mix64(self.index.fields[slots], self.index.keys[slots] ^ np.int64(self.config.seed))
        d = np.arange(width, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = mix64(np.zeros(1, np.int16), (base[:, None] + d[None, :]).view(np.int64))
        u = (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))  # [0, 1)
        half_width = np.float32(self.config.init_std * np.sqrt(3.0))
        return torch.from_numpy((u * 2 - 1) * half_width)

    # ---- backward ----------------------------------------------------------------------
    def apply_gradients(self, ctx: LookupContext, grad: torch.Tensor) -> None:
        """float32[B, F, D] gradient of the looked-up embeddings -> utilities of every chunk
        (live or pruned), Adagrad on live chunks; then the prune / evict schedule."""
        c = self.config
        U = ctx.unique.size
        g = torch.zeros(U, c.dim)
        g.index_add_(0, torch.from_numpy(ctx.inverse), grad.reshape(-1, c.dim))
        self.step += 1
        if U and ctx.unique[0] < 0:  # rows of IDs not admitted: nothing to update
            ctx = LookupContext(ctx.unique[1:], ctx.inverse, ctx.counts[1:], ctx.addresses[1:])
            g = g[1:]
        if self.tracks_utility:
            # Per-chunk L2 norms of every entry in one matmul: (g * g) @ segment-indicator.
            norms = torch.sqrt((g * g) @ self._segments).numpy()
            a = ctx.counts.astype(np.float32)
            if c.freq_power != 1.0:
                a = a**c.freq_power
            # u_t = gamma u_{t-1} + a g for every chunk  <=>  v_t = v_{t-1} + a g gamma^-(t-t0)
            scale = np.float32(c.gamma) ** np.float32(-(self.step - self.util_origin))
            v = self._stored_utilities(ctx.unique) + (a * scale)[:, None] * norms
            self._store_utilities(ctx.unique, v)
        addr = ctx.addresses  # a prune step can only run after this update
        live = addr >= 0
        parts = g.split(self.widths, dim=1)
        for j, pool in enumerate(self.pools):
            on = live[:, j]
            if on.any():
                sel = torch.from_numpy(np.flatnonzero(on))
                pool.adagrad_step(addr[on, j], parts[j].index_select(0, sel), c.lr, c.eps)
        self.dirty[ctx.unique[live.any(axis=1)]] = True
        if self.step % c.interval == 0:
            self.maintain()
        elif self.live_chunks() and self.used_bytes() > self.budget_bytes():
            # The index table grew and took room from the chunks: shed the least useful ones
            # now, so the budget holds after every step. (With no live chunk there is nothing
            # to shed: the fixed costs alone, e.g. a large admission sketch on a young store,
            # are over the budget, and new IDs get no chunk until it has room.)
            self.prune_regrow()

    # ---- maintenance -------------------------------------------------------------------
    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.index.alive[: self.index.high_water]).astype(np.int32)

    def maintain(self) -> None:
        """The periodic work: rescale utilities, evict stale or excess entries, prune/regrow."""
        c = self.config
        if self.tracks_utility:
            decay = np.float32(c.gamma) ** np.float32(self.step - self.util_origin)
            for arr in (self.head_util, self.ext_util):
                arr[:] = np.minimum(arr.astype(np.float32) * decay, _UTIL_MAX)
            self.util_origin = self.step
        self.epoch += 1
        if self.sketch is not None and self.epoch % c.sketch_decay_every == 0:
            self.sketch.decay()
        if c.evict_after is not None:
            live = self.live_slots()
            idle = (self.epoch - self.last[live].astype(np.int64)) & 0xFFFF
            self.evict(live[idle * c.interval > c.evict_after])
        self.enforce_entry_limit()
        if c.budget is not None:
            self.prune_regrow()

    def enforce_entry_limit(self, protect: np.ndarray | None = None) -> int:
        """Past the entry limit, evict the least useful entries (not those in `protect`, the
        batch being trained) down to 1/16 below it; returns how many were evicted.

        Worth: summed utility with a budget; else the access count, the longest unseen first
        among equal counts."""
        limit = self.entry_limit
        if limit is None or self.index.num_entries <= limit:
            return 0
        live = self.live_slots()
        if self.tracks_utility:
            worth = self.utilities(live).sum(axis=1).astype(np.float64)
        else:
            age = (self.epoch - self.last[live].astype(np.int64)) & 0xFFFF
            worth = self.count[live].astype(np.float64) - age / 65536.0
        if protect is not None and protect.size:
            held = np.zeros(self.index.high_water, dtype=bool)
            held[protect] = True
            worth[held[live]] = np.inf
        target = limit - limit // 16
        excess = min(self.index.num_entries - target, int(np.isfinite(worth).sum()))
        if excess <= 0:
            return 0
        self.evict(live[np.argpartition(worth, excess - 1)[:excess]])
        return excess

    def evict(self, slots: np.ndarray) -> None:
        """Drop entries: their chunks and records go back to the pools, their index slots are
        reused, and they are reported as deleted by the next export."""
        if slots.size == 0:
            return
        addr = self.addresses(slots)
        for j, pool in enumerate(self.pools):
            pool.release(addr[addr[:, j] >= 0, j])
        self._set_addresses(slots, np.full_like(addr, -1))
        self._deleted.append((self.index.fields[slots].copy(), self.index.keys[slots].copy()))
        self.dirty[slots] = False
        self.head_util[slots] = 0
        self.count[slots] = 0
        self.index.delete(slots)

    def prune_regrow(self) -> dict[str, int]:
        """Keep the best-scored chunks that fit the budget: free live chunks that fall out,
        re-admit pruned chunks that rise in (at zero, fresh optimizer state)."""
        slots = self.live_slots()
        if slots.size == 0:
            return {"freed": 0, "admitted": 0}
        c = self.config
        costs = self.chunk_costs()
        scores = chunk_scores(
            self.utilities(slots),
            self.index.fields[slots],
            self.count[slots] >= c.min_count,
            normalize=c.normalize == "field",
            prefix=c.prefix,
            keep_first=c.keep_first,
            live=self.addresses(slots) >= 0,
            hysteresis=c.hysteresis,
            cost=(costs / costs[0]) ** c.cost_power if c.cost_power else None,
        )
        fixed_cost = slots.size * self.entry_bytes() + self.index.table_bytes
        if self.sketch is not None:
            fixed_cost += self.sketch.nbytes  # the admission sketch is paid before any chunk
        capacity = self.budget_bytes() - fixed_cost
        ext_bytes = self.ext_record_bytes()

        def exact(keep: np.ndarray) -> float:
            per_position = np.count_nonzero(keep, axis=0)
            if self.K == 1:
                n_ext = 0
            elif c.prefix:  # a prefix with a chunk 1 is exactly an entry with a record
                n_ext = int(per_position[1])
            else:
                n_ext = int(np.count_nonzero(keep[:, 1:].any(axis=1)))
            return float(per_position @ costs) + n_ext * ext_bytes

        keep = select_chunks(scores, capacity, exact, self._rng)
        addr = self.addresses(slots)
        live = addr >= 0
        to_free = live & ~keep
        to_admit = keep & ~live
        for j, pool in enumerate(self.pools):
            pool.release(addr[to_free[:, j], j])
            addr[to_free[:, j], j] = -1
            n = int(to_admit[:, j].sum())
            new = pool.alloc(n)
            pool.write(new, torch.zeros(n, self.widths[j]))
            addr[to_admit[:, j], j] = new
        changed = (to_free | to_admit).any(axis=1)
        self._set_addresses(slots[changed], addr[changed])
        self.dirty[slots[changed]] = True
        self.prunes += 1
        return {"freed": int(to_free.sum()), "admitted": int(to_admit.sum())}

    # ---- introspection and export ------------------------------------------------------
    def live_chunks_per_id(self) -> np.ndarray:
        """int64[K + 1] histogram: how many live IDs have 0..K live chunks."""
        slots = self.live_slots()
        return np.bincount((self.addresses(slots) >= 0).sum(axis=1), minlength=self.K + 1)

    def export(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """(fields int16[N], keys int64[N], masks uint32[N], values float32[N, D]) of entries;
        bit j of a mask is set where chunk j is live."""
        addr = self.addresses(slots)
        bits = (addr >= 0).astype(np.uint32) << np.arange(self.K, dtype=np.uint32)
        masks = bits.sum(axis=1, dtype=np.uint32)
        return self.index.fields[slots], self.index.keys[slots], masks, self._gather(slots)

    def take_changes(self, dirty_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry slots changed since the last call (or all live ones), and the (fields, keys)
        evicted since then; clears both."""
        live = self.live_slots()
        slots = live[self.dirty[live]] if dirty_only else live
        self.dirty[:] = False
        if self._deleted:
            df = np.concatenate([f for f, _ in self._deleted])
            dk = np.concatenate([k for _, k in self._deleted])
        else:
            df, dk = np.zeros(0, np.int16), np.zeros(0, np.int64)
        self._deleted = []
        return slots, df, dk

    # ---- snapshot ----------------------------------------------------------------------
    _ARRAYS = (
        "head_addr",
        "ext",
        "head_util",
        "count",
        "last",
        "dirty",
        "ext_addr",
        "ext_util",
        "ext_free",
    )
    _COUNTERS = ("step", "util_origin", "epoch", "unseen_lookups", "prunes")

    def save(self, path: str | Path) -> None:
        """Write the whole store to one .npz file, atomically (temp file, fsync, rename)."""
        from storage.vhpi.snapshot import save_store

        save_store(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> ChunkStore:
        """A store exactly as `save` wrote it."""
        from storage.vhpi.snapshot import load_store

        return load_store(cls, Path(path))
