"""The chunk store's entry table: for every entry slot of the hash index, where its K chunks
are (one `ChunkPool` per chunk position) and what the store knows of it.

Entries are a structure of arrays in two tiers, so that the many IDs with at most one live
chunk pay for one address, not K (the virtual entry points to a physical extension record only
when it needs one):

    head_addr  int32[E]          address of chunk 0, -1 = pruned (reads zeros)
    ext        int32[E]          extension record, -1 = none (chunks 1.. all pruned)
    head_util  float16[E, 2]     utilities of chunks 0 and 1
    count      uint16[E]         accesses seen in training, saturating (admission)
    last       uint16[E]         the maintenance epoch it was last trained in (eviction)
    dirty      bool[E]           changed since the last export (incremental publishing)
  extension records:
    ext_addr   int32[R, K-1]     addresses of chunks 1..K-1
    ext_util   float16[R, K-2]   utilities of chunks 2..K-1

Chunk j lives in pool j (`widths[j]` floats each). A chunk with no extension record (position
>= 2) has utility 0. Utilities are stored as the store scales them (see store.py).

    table = EntryTable((4, 4, 8), "rowwise_adagrad", tracks_utility=True, entry_capacity=16)
    table.addresses(slots)              # int32[N] -> int32[N, K], -1 = pruned
    table.gather(slots)                 # int32[N] -> float32[N, D], pruned chunks read zeros
    table.resize(slots, n, init)        # entries keep exactly their first n[i] chunks
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.config import entry_bytes
from storage.vhpi.hash_index import mix64

UTIL_MAX = 60000.0  # float16 headroom


def initial_values(fields: np.ndarray, keys: np.ndarray, seed: int, width: int,
                   init_std: float) -> torch.Tensor:
    """Uniform values with standard deviation init_std for the first `width` dimensions of
    each ID, a pure function of (seed, field, raw ID, dimension), so every policy starts an ID
    at the same point: int16[N], int64[N] -> float32[N, width]. One hash per value."""
    base = mix64(fields, keys ^ np.int64(seed))
    d = np.arange(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(np.zeros(1, np.int16), (base[:, None] + d[None, :]).view(np.int64))
    u = (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))  # [0, 1)
    half_width = np.float32(init_std * np.sqrt(3.0))
    return torch.from_numpy((u * 2 - 1) * half_width)


class EntryTable:
    """See module docstring. Slots are the hash index's entry slots; `grow` follows its
    capacity."""

    ARRAYS = ("head_addr", "ext", "head_util", "count", "last", "dirty", "ext_addr", "ext_util",
              "ext_free")  # the arrays of a snapshot, by these names

    def __init__(self, widths: tuple[int, ...], optimizer: str, tracks_utility: bool,
                 entry_capacity: int, pool_capacity: int = 1024) -> None:
        self.widths = widths
        self.K = K = len(widths)
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.tracks_utility = tracks_utility
        self.pools = [ChunkPool(w, optimizer, initial_capacity=pool_capacity) for w in widths]
        cap = entry_capacity
        hu = min(K, 2) if tracks_utility else 0
        eu = max(K - 2, 0) if tracks_utility else 0
        self.head_addr = np.full(cap, -1, dtype=np.int32)
        self.ext = np.full(cap, -1, dtype=np.int32)
        self.head_util = np.zeros((cap, hu), dtype=np.float16)
        self.count = np.zeros(cap, dtype=np.uint16)
        self.last = np.zeros(cap, dtype=np.uint16)
        self.dirty = np.zeros(cap, dtype=bool)
        self.ext_addr = np.full((0, max(K - 1, 0)), -1, dtype=np.int32)
        self.ext_util = np.zeros((0, eu), dtype=np.float16)
        self.ext_free = np.zeros(0, dtype=np.int32)

    # ---- slots ---------------------------------------------------------------------------
    def grow(self, capacity: int) -> None:
        """Room for entry slots below `capacity` (new slots: no chunks, nothing counted)."""
        old = self.head_addr.shape[0]
        if capacity <= old:
            return
        grow = capacity - old
        self.head_addr = np.concatenate([self.head_addr, np.full(grow, -1, np.int32)])
        self.ext = np.concatenate([self.ext, np.full(grow, -1, np.int32)])
        self.head_util = np.concatenate(
            [self.head_util, np.zeros((grow, self.head_util.shape[1]), np.float16)]
        )
        self.count = np.concatenate([self.count, np.zeros(grow, np.uint16)])
        self.last = np.concatenate([self.last, np.zeros(grow, np.uint16)])
        self.dirty = np.concatenate([self.dirty, np.zeros(grow, bool)])

    def reset(self, slots: np.ndarray, count: np.ndarray | int) -> None:
        """New entries at these slots: no chunks, no utility, `count` accesses."""
        self.head_addr[slots] = -1
        self.ext[slots] = -1
        self.head_util[slots] = 0
        self.count[slots] = count

    def drop(self, slots: np.ndarray) -> None:
        """Entries leaving: their chunks and records go back, their metadata is cleared."""
        addr = self.addresses(slots)
        for j, pool in enumerate(self.pools):
            pool.release(addr[addr[:, j] >= 0, j])
        self.set_addresses(slots, np.full_like(addr, -1))
        self.dirty[slots] = False
        self.head_util[slots] = 0
        self.count[slots] = 0

    # ---- the two tiers -------------------------------------------------------------------
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

    def set_addresses(self, slots: np.ndarray, addr: np.ndarray) -> None:
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

    def stored_utilities(self, slots: np.ndarray) -> np.ndarray:
        """Utilities as stored (not decayed): int32[N] -> float32[N, K]."""
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

    def store_utilities(self, slots: np.ndarray, v: np.ndarray) -> None:
        """Store float32[N, K] utilities (capped to float16's range); a chunk position with no
        extension record keeps none."""
        v = np.minimum(v, UTIL_MAX).astype(np.float16)
        self.head_util[slots] = v[:, : self.head_util.shape[1]]
        if self.K > 2:
            e = self.ext[slots]
            has = e >= 0
            self.ext_util[e[has]] = v[has, 2:]

    def rescale_utilities(self, factor: np.float32) -> None:
        """Multiply every stored utility by `factor`."""
        for arr in (self.head_util, self.ext_util):
            arr[:] = np.minimum(arr.astype(np.float32) * factor, UTIL_MAX)

    # ---- chunks --------------------------------------------------------------------------
    def gather(self, slots: np.ndarray, addr: np.ndarray | None = None) -> torch.Tensor:
        """float32[N, D] embeddings of entry slots (-1: zeros), or of given addresses."""
        if addr is None:
            ok = slots >= 0
            addr = np.full((slots.shape[0], self.K), -1, dtype=np.int32)
            addr[ok] = self.addresses(slots[ok])
        if self.K == 1:
            return self.pools[0].gather(addr[:, 0])
        return torch.cat([p.gather(addr[:, j]) for j, p in enumerate(self.pools)], dim=1)

    def give_chunks(self, slots: np.ndarray, values: torch.Tensor) -> None:
        """Entries without chunks get their first n, holding `values` float32[N, offsets[n]]."""
        n = int(np.searchsorted(self.offsets, values.shape[1]))
        addr = np.full((slots.size, self.K), -1, dtype=np.int32)
        for j in range(n):
            addr[:, j] = self.pools[j].alloc(slots.size)
            self.pools[j].write(addr[:, j], values[:, self.offsets[j] : self.offsets[j + 1]])
        self.set_addresses(slots, addr)
        self.dirty[slots] = True

    def fill(self, slots: np.ndarray, values: torch.Tensor) -> None:
        """Every chunk of these entries live, holding `values` float32[N, D]; chunks they had
        are freed first."""
        old = self.addresses(slots)
        for j, pool in enumerate(self.pools):
            pool.release(old[old[:, j] >= 0, j])
        addr = np.empty((slots.size, self.K), dtype=np.int32)
        for j, pool in enumerate(self.pools):
            addr[:, j] = pool.alloc(slots.size)
            pool.write(addr[:, j], values[:, self.offsets[j] : self.offsets[j + 1]])
        self.set_addresses(slots, addr)

    def resize(self, slots: np.ndarray, n: np.ndarray,
               init: Callable[[np.ndarray], torch.Tensor]) -> int:
        """Entries keep exactly their first n chunks (int32[N], int64[N] in 0..K): chunks past
        n are freed, missing ones allocated holding `init(slots)` (float32[M, D]). Returns the
        number of entries changed."""
        addr = self.addresses(slots)
        want = np.arange(self.K)[None, :] < n[:, None]
        have = addr >= 0
        free, grow = have & ~want, want & ~have
        changed = (free | grow).any(axis=1)
        if not changed.any():
            return 0
        rows = np.flatnonzero(grow.any(axis=1))
        values = init(slots[rows]) if rows.size else None
        row_of = np.full(slots.size, -1, dtype=np.int64)
        row_of[rows] = np.arange(rows.size)
        for j, pool in enumerate(self.pools):
            pool.release(addr[free[:, j], j])
            addr[free[:, j], j] = -1
            g = grow[:, j]
            k = int(g.sum())
            if k:
                new = pool.alloc(k)
                assert values is not None
                pool.write(new, values[torch.from_numpy(row_of[g])][
                    :, self.offsets[j] : self.offsets[j + 1]])
                addr[g, j] = new
        self.set_addresses(slots[changed], addr[changed])
        self.dirty[slots[changed]] = True
        return int(changed.sum())

    def keep(self, slots: np.ndarray, keep: np.ndarray) -> tuple[int, int]:
        """Live chunks exactly where bool[N, K] `keep` is set: the others are freed, kept ones
        that were pruned come back at zero with fresh optimizer state. -> (freed, admitted)."""
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
        self.set_addresses(slots[changed], addr[changed])
        self.dirty[slots[changed]] = True
        return int(to_free.sum()), int(to_admit.sum())

    # ---- sizes and snapshot --------------------------------------------------------------
    def entry_bytes(self) -> int:
        """Bytes of one entry's head record (with its index keys)."""
        return entry_bytes(self.K, self.tracks_utility)

    def record_bytes(self) -> int:
        """Bytes of one extension record."""
        return int(self.ext_addr.itemsize * self.ext_addr.shape[1] + 2 * self.ext_util.shape[1])

    def chunk_costs(self) -> np.ndarray:
        """float64[K] bytes one live chunk costs at each position (values + optimizer)."""
        return np.array([p.chunk_bytes for p in self.pools], dtype=np.float64)

    def live_chunks(self) -> int:
        return sum(p.num_live for p in self.pools)

    def allocated_bytes(self) -> int:
        """Everything allocated: pools, entry arrays and extension records (capacity)."""
        return sum(p.allocated_bytes() for p in self.pools) + sum(
            int(getattr(self, name).nbytes) for name in self.ARRAYS)

    def state(self) -> dict[str, np.ndarray]:
        """The pools' arrays as `pool{j}.*` and the entry arrays by name."""
        arrays: dict[str, np.ndarray] = {}
        for j, pool in enumerate(self.pools):
            arrays |= {f"pool{j}.{k}": v for k, v in pool.state_dict().items()}
        return arrays | {name: getattr(self, name) for name in self.ARRAYS}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Back to what `state` returned (extra arrays are ignored)."""
        for j, pool in enumerate(self.pools):
            prefix = f"pool{j}."
            pool.load_state_dict(
                {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            )
        for name in self.ARRAYS:
            setattr(self, name, np.array(arrays[name]))
