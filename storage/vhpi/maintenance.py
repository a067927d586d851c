"""The chunk store's budget and its periodic work: what the store measures, what the budget
allows, and the maintenance that keeps it within both (utility rescale, eviction past the entry
limit or of idle entries, FIITED's prune / regrow). `ChunkStore` (store.py) builds on it; the
state it works on is declared here and set up there.

    store.memory()           # measured bytes: values, optimizer state, metadata, index
    store.maintain()         # every `interval` steps (apply_gradients calls it)
    store.prune_regrow()     # -> {"freed": chunks, "admitted": chunks}
"""

from __future__ import annotations

import time

import numpy as np
import torch

from storage.vhpi.admission import FrequencySketch
from storage.vhpi.allocation import chunk_scores, initial_chunk_count, select_chunks
from storage.vhpi.config import StoreConfig, fixed_entry_bytes
from storage.vhpi.device_index import (
    MAX_LOAD,
    SHARD_MAX_LOAD,
    DeviceHashIndex,
    grown_size,
    mix64_t,
    shard_size,
)
from storage.vhpi.entries import EntryTable
from storage.vhpi.reducer import Reducer


class StoreMaintenance:
    """Base of ChunkStore: accounting, eviction and pruning over its index and entries."""

    config: StoreConfig
    K: int
    index: DeviceHashIndex
    device: torch.device
    entries: EntryTable
    sketch: FrequencySketch | None
    tracks_utility: bool
    entry_limit: int | None
    step: int
    util_origin: int  # t0: the step the stored utilities are scaled to
    epoch: int  # maintenance epochs so far (mod 2^16 in `last`)
    prunes: int
    prune_seconds: float  # wall time in prune_regrow (observability, not checkpointed)
    _deleted: list[tuple[torch.Tensor, torch.Tensor]]  # (fields, keys) evicted since export
    _gen: torch.Generator  # the prune's samples, on the store's device
    reducer: Reducer  # LOCAL, or every shard of a sharded model (reducer.py)
    offsets: np.ndarray  # int64[K + 1] first dimension of each chunk

    def _slots(self, slots: object) -> torch.Tensor:
        """Entry slots as int64[N] on the store's device (from numpy or a tensor)."""
        return torch.as_tensor(slots, device=self.device).reshape(-1).long()

    def utilities(self, slots: object) -> torch.Tensor:
        """Utilities decayed to the current step: int[N] -> float32[N, K]."""
        decay = np.float32(self.config.gamma) ** np.float32(self.step - self.util_origin)
        return self.entries.stored_utilities(self._slots(slots)) * torch.tensor(
            decay, device=self.device)

    def _over_budget(self) -> bool:
        """Live chunks held and more bytes used than the budget allows (over every shard with
        a global reducer: then a collective every shard makes each step)."""
        if not self.reducer.is_global:
            return bool(self.live_chunks()) and self.used_bytes() > self.budget_bytes()
        if self.config.budget is None:
            return False
        mine = torch.tensor([self.live_chunks(), self.used_bytes(), self.budget_bytes()],
                            dtype=torch.float64)
        live, used, budget = self.reducer.sum(mine).tolist()
        return live > 0 and used > budget

    # ---- sizes and accounting ------------------------------------------------------------
    def entry_bytes(self) -> int:
        return self.entries.entry_bytes()

    def live_chunks(self) -> int:
        return self.entries.live_chunks()

    def memory(self) -> dict[str, int]:
        """Bytes measured from the arrays: live values, their optimizer state, entry records
        and the links of live chunks, index table; and everything allocated (capacity)."""
        value = sum(p.live_bytes()[0] for p in self.entries.pools)
        opt = sum(p.live_bytes()[1] for p in self.entries.pools)
        n = self.index.num_entries
        sketch = self.sketch.nbytes if self.sketch is not None else 0
        index_arrays = (self.index.keys, self.index.fields, self.index.alive, self.index.table)
        index_alloc = sum(a.numel() * a.element_size() for a in index_arrays)
        return {
            "value_bytes": value,
            "optimizer_bytes": opt,
            "metadata_bytes": n * self.entry_bytes() + self.entries.links_live_bytes() + sketch,
            "index_bytes": self.index.table_bytes,
            "allocated_bytes": self.entries.allocated_bytes() + sketch
            + int(index_alloc),
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

    # ---- maintenance -------------------------------------------------------------------
    def live_slots(self) -> torch.Tensor:
        """int64[E] slots of every entry held (on the store's device)."""
        return torch.nonzero(self.index.alive[: self.index.high_water]).squeeze(1)

    def maintain(self) -> None:
        """The periodic work: rescale utilities, evict stale or excess entries, prune/regrow."""
        c = self.config
        if self.tracks_utility:
            decay = np.float32(c.gamma) ** np.float32(self.step - self.util_origin)
            self.entries.rescale_utilities(float(decay))
            self.util_origin = self.step
        self.epoch += 1
        if self.sketch is not None and self.epoch % c.sketch_decay_every == 0:
            self.sketch.decay()
        if c.evict_after is not None:
            live = self.live_slots()
            idle = (self.epoch - self.entries.last[live].long()) & 0xFFFF
            self.evict(live[idle * c.interval > c.evict_after])
        self.enforce_entry_limit()
        if c.budget is not None:
            self.prune_regrow()

    def enforce_entry_limit(self, protect: torch.Tensor | None = None) -> int:
        """Past the entry limit, evict the least useful entries (not those in `protect`, the
        batch being trained) down to 1/16 below it; returns how many were evicted.

        Worth: summed utility with a budget; else the access count, the longest unseen first
        among equal counts."""
        limit = self.entry_limit
        if limit is None or self.index.num_entries <= limit:
            return 0
        live = self.live_slots()
        if self.tracks_utility:
            worth = self.utilities(live).sum(dim=1).double()
        else:
            age = (self.epoch - self.entries.last[live].long()) & 0xFFFF
            worth = self.entries.count[live].double() - age / 65536.0
        if protect is not None and protect.numel():
            held = torch.zeros(self.index.high_water, dtype=torch.bool, device=self.device)
            held[protect] = True
            worth[held[live]] = torch.inf
        target = limit - limit // 16
        excess = min(self.index.num_entries - target, int(torch.isfinite(worth).sum()))
        if excess <= 0:
            return 0
        # the `excess` least worth, ties broken by slot (a stable sort, like a full argsort)
        order = torch.sort(worth, stable=True).indices[:excess]
        self.evict(live[order])
        return excess

    def evict(self, slots: torch.Tensor) -> None:
        """Drop entries int64[N]: their chunks and records go back to the pools, their index
        slots are reused, and they are reported as deleted by the next export."""
        slots = self._slots(slots)
        if slots.numel() == 0:
            return
        self.entries.drop(slots)
        self._deleted.append((self.index.fields[slots].clone(), self.index.keys[slots].clone()))
        self.index.delete(slots)

    def prune_regrow(self) -> dict[str, int]:
        """Keep the best-scored chunks that fit the budget: free live chunks that fall out,
        re-admit pruned chunks that rise in (at zero, fresh optimizer state)."""
        t0 = time.perf_counter()
        slots = self.live_slots()
        if slots.numel() == 0 and not self.reducer.is_global:
            return {"freed": 0, "admitted": 0}
        keep = self.chunks_to_keep(slots, self.utilities(slots))
        freed, admitted = self.entries.keep(slots, keep)
        self.prunes += 1
        self.prune_seconds = getattr(self, "prune_seconds", 0.0) + time.perf_counter() - t0
        return {"freed": freed, "admitted": admitted}

    def chunks_to_keep(self, slots: torch.Tensor, util: torch.Tensor) -> torch.Tensor:
        """The prune step's choice, changing nothing: entries int64[N] (every live one) with
        utilities float32[N, K] -> bool[N, K] chunks that fit the budget."""
        c = self.config
        reduce = self.reducer
        costs = self.entries.chunk_costs()
        scores = chunk_scores(
            util,
            self.index.fields[slots],
            self.entries.count[slots] >= c.min_count,
            normalize=c.normalize == "field",
            prefix=c.prefix,
            keep_first=c.keep_first,
            live=self.entries.addresses(slots) >= 0,
            hysteresis=c.hysteresis,
            cost=(costs / costs[0]) ** c.cost_power if c.cost_power else None,
            reduce=reduce,
        )
        fixed_cost = slots.numel() * self.entry_bytes() + self.index.table_bytes
        if self.sketch is not None:
            fixed_cost += self.sketch.nbytes  # the admission sketch is paid before any chunk
        capacity = self.budget_bytes() - fixed_cost
        if reduce.is_global:  # the budget and the fixed costs of every shard
            capacity = float(reduce.sum(torch.tensor([capacity], dtype=torch.float64))[0])
        costs_all = self.entries.position_costs()  # values, optimizer state and links

        def exact(keep: torch.Tensor) -> float:
            counts = reduce.sum(keep.sum(dim=0).long()).cpu().numpy()  # one small copy: K
            return float(counts @ costs_all)

        return select_chunks(scores, capacity, exact, self._gen, reduce)

    def join_budget(self, reducer: Reducer, world: int) -> None:
        """Make this store one of `world` shards under one budget (`reducer` global over
        them): a fresh store's index table becomes its share of one store's table (a
        restored one keeps its size), and the tables grow together from here (_agree_step)."""
        self.reducer = reducer
        index = self.index
        index.max_load = SHARD_MAX_LOAD  # its own bound; the shared rule acts before it
        if index.num_entries == 0 and index.tombstones == 0:
            index.resize_table(shard_size(index.table.numel(), world))

    # ---- admission of new IDs' first chunks (between prunes) ---------------------------
    def _prefix_cost(self, n: int) -> float:
        """Bytes of an entry's first n chunks, with their links."""
        return float(self.entries.position_costs()[:n].sum())

    def _admit(self, slots: torch.Tensor, max_chunks: int | None = None) -> None:
        """Give newly admitted entries their first chunks (`initial_chunk_count`) while the
        budget has room, one chunk to those the room cannot pay a full start for, and none to
        the rest: they read zeros until a prune step finds them room.

        Who goes first when the room is short: the lower unsigned hash of (field, ID), an
        order one store and N shards share (for the new IDs of one step it is the order the
        index gives them slots in). With a global reducer the room is every shard's and the
        order runs over every shard's candidates (a collective: every shard calls it)."""
        reduce = self.reducer
        room = self.budget_bytes() - self.used_bytes()
        if reduce.is_global:
            room = float(reduce.sum(torch.tensor([room], dtype=torch.float64))[0])
        if room < self._prefix_cost(1):
            return
        n_init = initial_chunk_count(self.config, self.entry_bytes(), self._prefix_cost)
        n_init = min(n_init, max_chunks or self.K)
        order = mix64_t(self.index.fields[slots], self.index.keys[slots]) ^ -(1 << 63)
        everyone = reduce.cat(order) if reduce.is_global else order
        place = torch.searchsorted(everyone.sort().values, order)  # in the global order
        total, start = everyone.numel(), 0
        for width in (n_init, 1) if n_init > 1 else (1,):
            per_entry = self._prefix_cost(width)
            n = total - start if np.isinf(room) else max(0, min(total - start,
                                                                int(room // per_entry)))
            take = slots[(place >= start) & (place < start + n)]
            if take.numel():
                self.entries.give_chunks(
                    take, self._initial_values(take, int(self.offsets[width])))
            room -= n * per_entry
            start += n
            if start >= total or room < self._prefix_cost(1):
                return

    def _agree_step(self, before: tuple[int, int], crossed: bool, waiting: bool
                    ) -> tuple[bool, bool]:
        """A global reducer's part of a train lookup, on every shard (one all-reduce): size
        the index tables as one store's table would grow (`grown_size` over their sums, each
        shard 1/N of it), so N shards pay the index bytes one store pays and their budgets
        add up to its budget; and whether any shard admits this step (then all call
        `_admit`). `before`: (entries, tombstones) before this lookup's inserts."""
        idx = self.index
        mine = [idx.table.numel(), before[0], before[1], idx.num_entries - before[0], 1,
                int(crossed), int(waiting)]
        size, n, tomb, add, world, crossed_n, waiting_n = (int(x) for x in self.reducer.sum(
            torch.tensor(mine, dtype=torch.float64)).tolist())
        if n + tomb + add > MAX_LOAD * size:  # one table would be rebuilt here
            share = shard_size(grown_size(size, n, tomb, add), world)
            idx.resize_table(max(share, idx.table.numel()))
        return crossed_n > 0, waiting_n > 0

    # ---- introspection and export ------------------------------------------------------
    def live_chunks_per_id(self) -> np.ndarray:
        """int64[K + 1] histogram: how many live IDs have 0..K live chunks."""
        slots = self.live_slots()
        n = (self.entries.addresses(slots) >= 0).sum(dim=1)
        return torch.bincount(n, minlength=self.K + 1).cpu().numpy()

    def export(self, slots: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
        """(fields int16[N], keys int64[N], masks uint32[N], values float32[N, D]) of entries,
        on the host (what goes to Redis); bit j of a mask is set where chunk j is live."""
        slots = self._slots(slots)
        addr = self.addresses(slots)
        bits = (addr >= 0).long() << torch.arange(self.K, device=self.device)
        masks = bits.sum(dim=1).cpu().numpy().astype(np.uint32)
        return (self.index.fields[slots].cpu().numpy(), self.index.keys[slots].cpu().numpy(),
                masks, self.gather(slots).cpu())

    def take_changes(self, dirty_only: bool = True) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Entry slots changed since the last call (or all live ones), and the (fields, keys)
        evicted since then (host arrays); clears both."""
        live = self.live_slots()
        slots = live[self.entries.dirty[live]] if dirty_only else live
        self.entries.dirty.zero_()
        if self._deleted:
            df = torch.cat([f for f, _ in self._deleted]).cpu().numpy()
            dk = torch.cat([k for _, k in self._deleted]).cpu().numpy()
        else:
            df, dk = np.zeros(0, np.int16), np.zeros(0, np.int64)
        self._deleted = []
        return slots, df, dk
