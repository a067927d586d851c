"""The chunk store's entry table: for every entry slot of the hash index, where its K chunks
are (one `ChunkPool` per chunk position) and what the store knows of it.

Entries are a structure of arrays; an ID's live chunks are a prefix of its K positions, and
each live chunk but the last position's holds the next one's address (chunk_links.py), so an ID
pays 4 bytes an address for the chunks it holds, not for K.

Every array is a torch tensor on the table's device (cpu or cuda); slots and addresses go in
and come out as int64 tensors on it.

    head_addr  int32[E]          address of chunk 0, -1 = pruned (reads zeros; so are 1..K-1)
    head_util  uint8[E, H]       utilities of chunks 0..H-1 (log codes, utility_codes.py; or
                                 float16 with utility_code="float16"): H = K
                                 (tail_utilities="all": every chunk of every ID), or 2
    count      int32[E]          accesses seen in training, saturating at count_max (admission)
    last       int32[E]          the maintenance epoch it was last trained in (eviction);
                                 empty where nothing reads it (StoreConfig.keeps_last)
    dirty      bool[E]           changed since the last export (incremental publishing)
  per live chunk (ChunkLinks, indexed by its address in its pool):
    next{j}    int32[C_j]        address of chunk j+1 (j = 0..K-2), -1 = none
    tail_util  uint8[C_1, K-H]   utilities of chunks H..K-1 (none when H = K), as head_util,
                                 beside chunk 1: kept while the ID has a chunk past its first
(count and last are int32 on the device, for its arithmetic; a snapshot stores count as uint8
where it saturates at 255 (a budgeted store), else uint16, and last as uint16; the byte
accounting counts what the snapshot stores. StoreConfig.head_fields and chunk_fields list the
bytes field by field.)

Chunk j lives in pool j (`widths[j]` floats each). With H = 2 a chunk at position >= 2 of an
ID without chunk 1 has utility 0 (its history is lost when chunk 1 goes); with
H = K every ID keeps every chunk's utility, live or pruned, as FIITED describes. Utilities are
stored as the store scales them (see store.py).

    table = EntryTable((4, 4, 8), "rowwise_adagrad", head_utilities=3, entry_capacity=16)
    table.addresses(slots)              # int64[N] -> int64[N, K], -1 = pruned
    table.gather(slots)                 # int64[N] -> float32[N, D], pruned chunks read zeros
    table.resize(slots, n, init)        # entries keep exactly their first n[i] chunks
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from storage.vhpi import utility_codes
from storage.vhpi.chunk_links import ChunkLinks, addresses_of_records
from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.config import entry_bytes

UTIL_MAX = 60000.0
  # float16 headroom


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] along dim 0 (index_select: on CPU torch's advanced indexing is ~6x slower)."""
    return t.index_select(0, idx)


class EntryTable:
    """See module docstring. Slots are the hash index's entry slots; `grow` follows its
    capacity."""

    ARRAYS = ("head_addr", "head_util", "count", "last", "dirty")  # a snapshot's, by name
    _COUNTERS = ("count", "last")  # int32 here, uint8 / uint16 in a snapshot

    def __init__(self, widths: tuple[int, ...], optimizer: str, head_utilities: int,
                 entry_capacity: int, pool_capacity: int = 1024,
                 device: str | torch.device = "cpu", utility_code: str = "float16",
                 count_max: int = 65535, keep_last: bool = True, seed: int = 0) -> None:
        self.widths = widths
        self.device = dev = torch.device(device)
        self.log8 = utility_code == "log8"
        self._util_dtype = torch.uint8 if self.log8 else torch.float16
        self.count_max = count_max
        self.keep_last = keep_last
        # the utilities' stochastic rounding: a hash of (seed, step, the entry's key, position),
        # so shards of one model round as one store does; `row_keys` (the store sets it) gives
        # slots' keys (int64), else a slot is its own key
        self.row_keys: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._round_key = seed << 32
        self.K = K = len(widths)
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self.tracks_utility = tracks_utility = head_utilities > 0
        self.pools = [ChunkPool(w, optimizer, initial_capacity=pool_capacity, device=dev)
                      for w in widths]
        cap = entry_capacity
        self._hu = min(head_utilities, K)
        self._eu = K - self._hu if tracks_utility else 0
        self.head_addr = torch.full((cap,), -1, dtype=torch.int32, device=dev)
        self.head_util = torch.zeros((cap, self._hu), dtype=self._util_dtype, device=dev)
        self.count = torch.zeros(cap, dtype=torch.int32, device=dev)
        self.last = torch.zeros(cap if keep_last else 0, dtype=torch.int32, device=dev)
        self.dirty = torch.zeros(cap, dtype=torch.bool, device=dev)
        self.links = ChunkLinks(K, self._eu, self._util_dtype, dev)
        self.links.follow(self.pools)

    # ---- slots ---------------------------------------------------------------------------
    def grow(self, capacity: int) -> None:
        """Room for entry slots below `capacity` (new slots: no chunks, nothing counted)."""
        old = self.head_addr.shape[0]
        if capacity <= old:
            return
        n, dev = capacity - old, self.device

        def more(t: torch.Tensor, fill: float) -> torch.Tensor:
            return torch.cat([t, torch.full((n, *t.shape[1:]), fill, dtype=t.dtype, device=dev)])

        self.head_addr = more(self.head_addr, -1)
        self.head_util = more(self.head_util, 0)
        self.count = more(self.count, 0)
        if self.keep_last:
            self.last = more(self.last, 0)
        self.dirty = more(self.dirty, False)

    def reset(self, slots: torch.Tensor, count: torch.Tensor | int) -> None:
        """New entries at these slots: no chunks, no utility, `count` accesses."""
        # index_fill_, not t[slots] = scalar: on a GPU the latter copies the scalar from the
        # host and waits for it (a host sync each)
        self.head_addr.index_fill_(0, slots, -1)
        self.head_util.index_fill_(0, slots, 0)
        if isinstance(count, int):
            self.count.index_fill_(0, slots, count)
        else:
            self.count[slots] = count.to(torch.int32)

    def drop(self, slots: torch.Tensor) -> None:
        """Entries leaving: their chunks and records go back, their metadata is cleared."""
        addr = self.addresses(slots)
        for j, pool in enumerate(self.pools):
            pool.release(addr[addr[:, j] >= 0, j])
        self.set_addresses(slots, torch.full_like(addr, -1))
        self.dirty[slots] = False
        self.head_util[slots] = 0
        self.count[slots] = 0

    # ---- addresses -----------------------------------------------------------------------
    def addresses(self, slots: torch.Tensor) -> torch.Tensor:
        """Chunk addresses: int64[N] slots -> int64[N, K], -1 = pruned."""
        return self.links.addresses(_take(self.head_addr, slots).long())

    def set_addresses(self, slots: torch.Tensor, addr: torch.Tensor) -> None:
        """Write int[N, K] addresses, each row a prefix (-1 from some position on): live
        chunks are linked, a new chunk 1 starts with no tail utilities."""
        self.links.follow(self.pools)
        addr = addr.long()
        old_first = self.addresses(slots)[:, 1] if self.K > 1 else None
        self.head_addr[slots] = addr[:, 0].to(torch.int32)
        self.links.write(addr, old_first)

    def stored_utilities(self, slots: torch.Tensor) -> torch.Tensor:
        """Utilities as stored (not decayed): int64[N] -> float32[N, K]."""
        out = torch.zeros((slots.shape[0], self.K), dtype=torch.float32, device=self.device)
        if not self.tracks_utility:
            return out
        out[:, : self._hu] = self._decode(_take(self.head_util, slots))
        if self._eu:
            out[:, self._hu :] = self._decode(self.links.tail_utilities(self._first(slots)))
        return out

    def _first(self, slots: torch.Tensor) -> torch.Tensor:
        """int64[N] address of each entry's chunk 1, -1 = none."""
        return self.links.addresses(_take(self.head_addr, slots).long())[:, 1]

    def seed_rounding(self, seed: int, step: int) -> None:
        """Key the stochastic rounding from here on by (seed, step) too."""
        self._round_key = (seed << 32) + step

    def _noise(self, slots: torch.Tensor, first: int, width: int) -> torch.Tensor:
        """float32[N, width] uniform [0, 1): the rounding of positions first.. of entries."""
        keys = self.row_keys(slots) if self.row_keys is not None else slots.long()
        return utility_codes.keyed_noise(keys, self._round_key, first, width)

    def _owners(self) -> torch.Tensor:
        """int64[rows of tail_util]: the slot whose chunk 1 each row is (-1: none)."""
        slots = torch.nonzero(self.head_addr >= 0).squeeze(1)
        first = self._first(slots)
        out = torch.full((self.links.tail_util.shape[0],), -1, dtype=torch.int64,
                         device=self.device)
        has = first >= 0
        return out.index_put_((first[has],), slots[has])

    def _decode(self, stored: torch.Tensor) -> torch.Tensor:
        return utility_codes.decode(stored) if self.log8 else stored.float()

    def _encode(self, v: torch.Tensor, slots: torch.Tensor, first: int) -> torch.Tensor:
        """float32 utilities [N, w] of positions first.. of entries `slots` -> what is stored:
        log codes (stochastically rounded, so unbiased) or float16 capped at UTIL_MAX."""
        if self.log8:
            return utility_codes.encode(v, noise=self._noise(slots, first, v.shape[1]))
        return v.clamp(max=UTIL_MAX).to(torch.float16)

    def store_utilities(self, slots: torch.Tensor, v: torch.Tensor) -> None:
        """Store float32[N, K] utilities (capped to what the code holds); with head_utilities
        < K the positions past them of an entry without chunk 1 keep none."""
        v = self._encode(v, slots, 0)
        self.head_util.index_copy_(0, slots, v[:, : self._hu])
        if self._eu:
            self.links.store_tail(self._first(slots), v[:, self._hu :])

    def rescale_utilities(self, factor: float) -> None:
        """Multiply every stored utility by `factor` (float32 arithmetic; log codes are
        re-rounded stochastically)."""
        f = torch.tensor(np.float32(factor), device=self.device)
        every = torch.arange(self.head_util.shape[0], device=self.device)
        self.head_util.copy_(self._encode(self._decode(self.head_util) * f, every, 0))
        tail = self.links.tail_util
        if tail.numel():  # rows keyed by the slot owning them (free rows: unchanged zeros)
            tail.copy_(self._encode(self._decode(tail) * f, self._owners(), self._hu))

    # ---- chunks --------------------------------------------------------------------------
    def gather(self, slots: torch.Tensor, addr: torch.Tensor | None = None) -> torch.Tensor:
        """float32[N, D] embeddings of entry slots (-1: zeros), or of given addresses."""
        if addr is None:
            addr = torch.where((slots >= 0)[:, None], self.addresses(slots.clamp(min=0)), -1)
        if self.K == 1:
            return self.pools[0].gather(addr[:, 0])
        return torch.cat([p.gather(addr[:, j]) for j, p in enumerate(self.pools)], dim=1)

    def give_chunks(self, slots: torch.Tensor, values: torch.Tensor) -> None:
        """Entries without chunks get their first n, holding `values` float32[N, offsets[n]]."""
        n = int(np.searchsorted(self.offsets, values.shape[1]))
        addr = torch.full((slots.numel(), self.K), -1, dtype=torch.int64, device=self.device)
        for j in range(n):
            addr[:, j] = self.pools[j].alloc(slots.numel())
            self.pools[j].write(addr[:, j], values[:, self.offsets[j] : self.offsets[j + 1]])
        self.set_addresses(slots, addr)
        self.dirty.index_fill_(0, slots, True)

    def fill(self, slots: torch.Tensor, values: torch.Tensor) -> None:
        """Every chunk of these entries live, holding `values` float32[N, D]; chunks they had
        are freed first."""
        old = self.addresses(slots)
        for j, pool in enumerate(self.pools):
            pool.release(old[old[:, j] >= 0, j])
        addr = torch.empty((slots.numel(), self.K), dtype=torch.int64, device=self.device)
        for j, pool in enumerate(self.pools):
            addr[:, j] = pool.alloc(slots.numel())
            pool.write(addr[:, j], values[:, self.offsets[j] : self.offsets[j + 1]])
        self.set_addresses(slots, addr)

    def resize(self, slots: torch.Tensor, n: torch.Tensor,
               init: Callable[[torch.Tensor], torch.Tensor]) -> int:
        """Entries keep exactly their first n chunks (int64[N], int64[N] in 0..K): chunks past
        n are freed, missing ones allocated holding `init(slots)` (float32[M, D]). Returns the
        number of entries changed."""
        addr = self.addresses(slots)
        want = torch.arange(self.K, device=self.device)[None, :] < n[:, None]
        have = addr >= 0
        free, grow = have & ~want, want & ~have
        changed = (free | grow).any(dim=1)
        n_changed = int(changed.sum())
        if not n_changed:
            return 0
        rows = torch.nonzero(grow.any(dim=1)).squeeze(1)
        values = init(slots[rows]) if rows.numel() else None
        row_of = torch.full((slots.numel(),), -1, dtype=torch.int64, device=self.device)
        row_of[rows] = torch.arange(rows.numel(), device=self.device)
        for j, pool in enumerate(self.pools):
            pool.release(addr[free[:, j], j])
            addr[:, j] = torch.where(free[:, j], -1, addr[:, j])
            g = grow[:, j]
            new_rows = row_of[g]
            if new_rows.numel():
                new = pool.alloc(new_rows.numel())
                assert values is not None
                pool.write(new, values[new_rows][:, self.offsets[j] : self.offsets[j + 1]])
                addr[g, j] = new
        self.set_addresses(slots[changed], addr[changed])
        self.dirty[slots[changed]] = True
        return n_changed

    def keep(self, slots: torch.Tensor, keep: torch.Tensor) -> tuple[int, int]:
        """Live chunks exactly where bool[N, K] `keep` is set: the others are freed, kept ones
        that were pruned come back at zero with fresh optimizer state. -> (freed, admitted)."""
        addr = self.addresses(slots)
        live = addr >= 0
        to_free = live & ~keep
        to_admit = keep & ~live
        freed = admitted = 0
        for j, pool in enumerate(self.pools):
            gone = addr[to_free[:, j], j]
            pool.release(gone)
            freed += gone.numel()
            addr[:, j] = torch.where(to_free[:, j], -1, addr[:, j])
            where = torch.nonzero(to_admit[:, j]).squeeze(1)
            new = pool.alloc(where.numel())
            pool.write(new, torch.zeros(where.numel(), self.widths[j], device=self.device))
            addr[where, j] = new
            admitted += where.numel()
        changed = (to_free | to_admit).any(dim=1)
        self.set_addresses(slots[changed], addr[changed])
        self.dirty[slots[changed]] = True
        return freed, admitted

    # ---- sizes and snapshot --------------------------------------------------------------
    def _utility_bytes(self) -> int:
        return 1 if self.log8 else 2

    def _count_bytes(self) -> int:
        return 1 if self.count_max <= 255 else 2

    def _util_dtype_np(self) -> np.dtype:
        return np.dtype(np.uint8 if self.log8 else np.float16)

    def entry_bytes(self) -> int:
        """Bytes of one entry's head record (with its index keys); StoreConfig.head_fields
        itemises them."""
        return entry_bytes(self.K, self._hu if self.tracks_utility else 0, self._utility_bytes(),
                           self._count_bytes(), 2 if self.keep_last else 0)

    def chunk_costs(self) -> np.ndarray:
        """float64[K] bytes one live chunk's values and optimizer state take at each position
        (what the prune step's utility per byte divides by)."""
        return np.array([p.chunk_bytes for p in self.pools], dtype=np.float64)

    def link_bytes(self) -> np.ndarray:
        """float64[K] bytes a live chunk's link (and tail utilities, at position 1) take."""
        return self.links.position_bytes(self._utility_bytes())

    def position_costs(self) -> np.ndarray:
        """float64[K] all bytes one live chunk adds at each position: chunk_costs + links."""
        return self.chunk_costs() + self.link_bytes()

    def links_live_bytes(self) -> int:
        """Bytes of the links (and tail utilities) of every live chunk."""
        live = np.array([p.num_live for p in self.pools], dtype=np.float64)
        return int(live @ self.link_bytes())

    def live_chunks(self) -> int:
        return sum(p.num_live for p in self.pools)

    def allocated_bytes(self) -> int:
        """Everything allocated: pools, entry arrays and links (capacity; count and last at
        the bytes a snapshot stores)."""
        arrays = sum(getattr(self, name).numel() * getattr(self, name).element_size()
                     for name in self.ARRAYS if name not in self._COUNTERS)
        counters = self._count_bytes() * self.count.numel() + 2 * self.last.numel()
        return (sum(p.allocated_bytes() for p in self.pools) + int(arrays) + counters
                + self.links.allocated_bytes())

    def state(self) -> dict[str, np.ndarray]:
        """The pools' arrays as `pool{j}.*` and the entry arrays by name: CPU numpy arrays
        (count uint8 or uint16, last uint16)."""
        arrays: dict[str, np.ndarray] = {}
        for j, pool in enumerate(self.pools):
            arrays |= {f"pool{j}.{k}": v for k, v in pool.state_dict().items()}
        for name in self.ARRAYS:
            a = getattr(self, name).cpu().numpy()
            if name == "count":
                a = a.astype(np.uint8 if self._count_bytes() == 1 else np.uint16)
            arrays[name] = a.astype(np.uint16) if name == "last" else a
        return arrays | self.links.state()

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Back to what `state` returned (extra arrays are ignored), or to a snapshot of the
        layout before the links (extension records: `ext`, `ext_addr`, `ext_util`), relinked;
        a ValueError where that cannot be (chunk_links.addresses_of_records)."""
        for j, pool in enumerate(self.pools):
            prefix = f"pool{j}."
            pool.load_state_dict(
                {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            )
        for name in self.ARRAYS:
            a = np.array(arrays[name])
            if name in self._COUNTERS:
                # a snapshot from before one-byte counts: counts past 255 saturate (they are
                # compared with min_count <= 255 only); `last` where nothing reads it: dropped
                a = a.astype(np.int32)
                if name == "count":
                    a = np.minimum(a, self.count_max)
                elif not self.keep_last:
                    a = a[:0]
            if name == "head_util" and a.dtype != self._util_dtype_np():
                raise ValueError(f"snapshot's {name} is {a.dtype}, the config says "
                                 f"utility_code={'log8' if self.log8 else 'float16'}")
            setattr(self, name, torch.from_numpy(a).to(self.device))
        if "next0" in arrays or self.K == 1:
            self.links.load_state(arrays)
            return
        self._relink(arrays)

    def _relink(self, arrays: dict[str, np.ndarray]) -> None:
        """Links from a snapshot's extension records (load_state)."""
        addr = torch.from_numpy(addresses_of_records(arrays, self.K)).to(self.device)
        slots = torch.nonzero((addr >= 0).any(dim=1)).squeeze(1)
        self.links.follow(self.pools)
        self.links.write(addr[slots], None)
        if self._eu:
            ext = np.asarray(arrays["ext"], dtype=np.int64)
            has = np.flatnonzero(ext >= 0)
            tail = np.asarray(arrays["ext_util"]).reshape(-1, self._eu)[ext[has]]
            first = addr[torch.from_numpy(has).to(self.device), 1]
            self.links.store_tail(first, torch.from_numpy(tail).to(self.device))
