"""The hash index on a torch device: (field, raw ID) -> entry slot, the same open addressing as
`HashIndex` (hash_index.py, numpy, used by serving) with every array a torch tensor on `device`
(cpu or cuda), so the chunk store's lookups never leave the device.

Same layout and the same hash (splitmix64 of the key salted by the field, bit for bit: a test
checks it against the numpy one), so a snapshot's `index.*` arrays are one format for both.
The table holds int32 entry slots; full keys live beside it (`keys` int64, `fields` int16),
so a probe compares the real key. Linear probing; every probe round is one batched gather over
the keys still unresolved (a few rounds at load <= 0.7).

    index = DeviceHashIndex(device="cuda")
    slots, new = index.get_or_insert(fields, keys)   # int16[N], int64[N] -> int64[N], bool[N]
    index.lookup(fields, keys)                       # int64[N], -1 where absent

On the CPU, batches of fewer than NUMPY_BELOW keys run the probe loops in numpy over views of the
same tensors (no copy): a probe round is a dozen small ops, and numpy's per-call cost is a few
times lower than torch's (measured here: numpy 3.7x torch's lookups/s at 2,560 keys; torch
1.2-1.6x numpy's at 100k). On CUDA they are always torch ops.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from storage.vhpi import kernels
from storage.vhpi.hash_index import HashIndex, mix64

EMPTY = -1
TOMBSTONE = -2
NUMPY_BELOW = 1 << 15  # CPU batches smaller than this probe in numpy (see module docstring)
GROWN_LOAD = 0.5
MAX_LOAD = 0.7  # a table grows past this load (live + tombstones)
SHARD_MAX_LOAD = 0.9  # a shard's own bound: its table is sized with the others' (grown_size)
MAX_BLOCK = 256  # the widest window a probe round reads (rounds after the first widen x4)

_SIGN = -(1 << 63)
_GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def grown_size(size: int, entries: int, tombstones: int, adding: int,
               max_load: float = MAX_LOAD) -> int:
    """The table size after inserting `adding` keys into a table of `size` cells holding
    `entries` live keys and `tombstones`: unchanged while (entries + tombstones + adding) <=
    max_load x size, else doubled until the live keys are at most GROWN_LOAD of it (the
    same size when tombstones alone overflowed: a rebuild clears them). One rule for one
    table and for the shards of a sharded store (storage/vhpi/maintenance.py sizes those by
    their sums, so N shards' tables add up to one store's)."""
    if entries + tombstones + adding <= max_load * size:
        return size
    new_size = size
    while entries + adding > GROWN_LOAD * new_size:
        new_size *= 2
    return new_size


def shard_size(size: int, world: int) -> int:
    """Each of `world` shards' table size, so that they add up to one table of `size` cells
    (exactly when `world` is a power of two; else the next power of two up)."""
    return 1 << max(4, int(np.ceil(np.log2(max(size, 1) / world))))


def _signed(x: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64_t(x: torch.Tensor) -> torch.Tensor:
    """storage.splitmix.splitmix64 on int64 tensors holding uint64 bits (wraps mod 2^64)."""
    x = (x ^ _srl(x, 30)) * _signed(_C1)
    x = (x ^ _srl(x, 27)) * _signed(_C2)
    return x ^ _srl(x, 31)


def mix64_t(fields: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """hash_index.mix64 on tensors: int[N], int64[N] -> int64[N] (the uint64 bits)."""
    salt = (fields.long() + 1) * _signed(_GOLDEN)
    return splitmix64_t(keys.long() ^ salt)


class DeviceHashIndex:
    """See module docstring. `max_load` bounds (live + tombstones) / table size; past it the
    table doubles (or is rebuilt at its size when mostly tombstones). Freed slots are reused."""

    numpy_on_cpu = True  # False: the torch loops on the CPU too (the tests run both)
    # Table positions a torch probe reads at once, [N, P] in one gather, before it looks
    # whether any key needs more: each round of the probe loop costs a host sync (nonzero), so
    # on a GPU one wide round beats several narrow ones. None: 8 on a GPU, 1 on the CPU.
    probe_block: int | None = None

    def __init__(self, initial_capacity: int = 1024, max_load: float = MAX_LOAD,
                 device: str | torch.device = "cpu", fused: bool = False) -> None:
        self.device = torch.device(device)
        self.fused = fused  # lookups by kernels.probe: one launch (a CUDA device, or the CPU
        # under Triton's interpreter; the store checks that)
        size = 1 << max(4, int(np.ceil(np.log2(max(initial_capacity, 2) / max_load))))
        cap = max(initial_capacity, 16)
        self.max_load = max_load
        self.table = torch.full((size,), EMPTY, dtype=torch.int32, device=self.device)
        self.keys = torch.zeros(cap, dtype=torch.int64, device=self.device)
        self.fields = torch.zeros(cap, dtype=torch.int16, device=self.device)
        self.alive = torch.zeros(cap, dtype=torch.bool, device=self.device)
        self.free_slots = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.num_entries = 0
        self.high_water = 0
        self._tombstones = 0
        self.inserted_any = False  # whether the last get_or_insert inserted a key

    @property
    def entry_capacity(self) -> int:
        return int(self.keys.shape[0])

    @property
    def table_bytes(self) -> int:
        return int(self.table.numel() * 4)

    def _as(self, x: object, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device).to(dtype).reshape(-1)

    # ---- lookup ------------------------------------------------------------------------
    def _numpy(self, n: int) -> SimpleNamespace | None:
        """On the CPU and for fewer than NUMPY_BELOW keys, numpy views of the table and keys
        (what HashIndex's loops read and write); None otherwise."""
        if self.device.type != "cpu" or not self.numpy_on_cpu or n >= NUMPY_BELOW:
            return None
        return SimpleNamespace(table=self.table.numpy(), keys=self.keys.numpy(),
                               fields=self.fields.numpy())

    def _hash(self, fields: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """mix64_t, in numpy where the probe loops are (the same bits)."""
        if self._numpy(keys.numel()) is not None:
            return torch.from_numpy(mix64(fields.numpy(), keys.numpy()).view(np.int64))
        return mix64_t(fields, keys)

    def _probe(self, fields: torch.Tensor, keys: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        view = self._numpy(keys.numel())
        if view is not None:
            out = HashIndex._probe(view, fields.numpy(), keys.numpy(),  # type: ignore[arg-type]
                                   h.numpy().view(np.uint64))
            return torch.from_numpy(out.astype(np.int64))
        # index_select, not t[idx]: on CPU torch's advanced indexing is ~6x slower.
        tmask = self.table.numel() - 1
        pos = h & tmask
        block = self.probe_block or (8 if self.device.type != "cpu" else 1)
        if block > 1:
            return self._probe_block(fields, keys, pos, block)
        out: torch.Tensor | None = None
        pending: torch.Tensor | None = None  # positions in the batch still probing
        while True:
            v = self.table.index_select(0, pos).long()
            safe = v.clamp(min=0)
            hit = ((v >= 0) & (self.keys.index_select(0, safe) == keys)
                   & (self.fields.index_select(0, safe) == fields))
            res = torch.where(hit, v, EMPTY)
            if out is None:
                out = res
            else:
                out.index_copy_(0, pending, res)
            more = torch.nonzero(~hit & (v != EMPTY)).squeeze(1)
            if more.numel() == 0:
                return out
            pending = more if pending is None else pending.index_select(0, more)
            pos = (pos.index_select(0, more) + 1) & tmask
            keys, fields = keys.index_select(0, more), fields.index_select(0, more)

    def _probe_block(self, fields: torch.Tensor, keys: torch.Tensor, pos: torch.Tensor,
                     block: int) -> torch.Tensor:
        """Linear probing `block` positions a round: a key stops at its first hit or EMPTY
        (tombstones and other keys are passed over); keys that find neither go on to the next
        `block` positions, so the result is the plain loop's."""
        tmask = self.table.numel() - 1
        out = torch.full_like(keys, EMPTY)
        todo = torch.arange(keys.numel(), device=self.device)
        while todo.numel():
            steps = torch.arange(block, device=self.device)
            at = (pos.unsqueeze(1) + steps) & tmask  # [n, block]
            v = self.table[at].long()
            safe = v.clamp(min=0)
            hit = (v >= 0) & (self.keys[safe] == keys.unsqueeze(1)) & (
                self.fields[safe] == fields.unsqueeze(1))
            stop = hit | (v == EMPTY)
            first = stop.to(torch.int8).argmax(dim=1, keepdim=True)  # the first stop
            found = hit.gather(1, first).squeeze(1)
            out.index_copy_(0, todo, torch.where(found, v.gather(1, first).squeeze(1), EMPTY))
            more = torch.nonzero(~stop.any(dim=1)).squeeze(1)  # one host sync a round
            todo, keys, fields = todo[more], keys[more], fields[more]
            pos = (pos[more] + block) & tmask
            # The few keys left sit in long clusters: read wider, so rounds (syncs) stay few.
            block = min(4 * block, MAX_BLOCK)
        return out

    def lookup(self, fields: object, keys: object) -> torch.Tensor:
        """int[N] fields, int64[N] raw keys -> int64[N] entry slots, -1 where absent."""
        f, k = self._as(fields, torch.int16), self._as(keys, torch.int64)
        return kernels.probe(self, f, k) if self.fused else self._probe(f, k, self._hash(f, k))

    def get_or_insert(self, fields: object, keys: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Entry slot of every key, inserting the absent ones (duplicates get one slot).
        Returns (int64[N] slots, bool[N] true where the key was inserted by this call)."""
        fields, keys = self._as(fields, torch.int16), self._as(keys, torch.int64)
        h = None if self.fused else self._hash(fields, keys)
        slots = kernels.probe(self, fields, keys) if h is None else self._probe(fields, keys, h)
        inserted = torch.zeros(keys.numel(), dtype=torch.bool, device=self.device)
        missing = torch.nonzero(slots < 0).squeeze(1)
        any_new = False
        while missing.numel():
            any_new = True
            h = self._hash(fields, keys) if h is None else h
            # One representative per distinct 64-bit hash (the first, in hash order as
            # np.unique gives them: unsigned order, hence the flipped sign bit); a true
            # collision goes in on the next round.
            uh, inv = torch.unique(h[missing] ^ _SIGN, return_inverse=True)
            first = torch.full((uh.numel(),), missing.numel(), dtype=torch.int64,
                               device=self.device)
            first.scatter_reduce_(0, inv, torch.arange(missing.numel(), device=self.device),
                                  "amin")
            reps = missing[first]
            self._ensure_table_room(reps.numel())
            new_slots = self._take_slots(reps.numel())
            self.keys[new_slots] = keys[reps]
            self.fields[new_slots] = fields[reps]
            self.alive.index_fill_(0, new_slots, True)  # (t[i] = True waits on a GPU)
            self.num_entries += reps.numel()
            self._place(h[reps], new_slots)
            inserted.index_fill_(0, reps, True)
            # Every missing key now holds its hash's new slot, unless that slot went to a
            # different key of the same 64-bit hash: that one goes in on the next round.
            cand = new_slots.index_select(0, inv)
            mine = ((self.keys.index_select(0, cand) == keys.index_select(0, missing))
                    & (self.fields.index_select(0, cand) == fields.index_select(0, missing)))
            slots.index_copy_(0, missing, torch.where(mine, cand, EMPTY))
            missing = missing[~mine]
        self.inserted_any = any_new
        if any_new:  # every duplicate of a newly inserted key counts as inserted too
            new_set = torch.zeros(self.high_water, dtype=torch.int32, device=self.device)
            new_set.index_add_(0, slots, inserted.to(torch.int32))  # no selection: no sync
            inserted = new_set.index_select(0, slots) > 0
        return slots, inserted

    def _take_slots(self, n: int) -> torch.Tensor:
        reuse = min(n, self.free_slots.numel())
        taken = self.free_slots[self.free_slots.numel() - reuse :].long()
        self.free_slots = self.free_slots[: self.free_slots.numel() - reuse]
        fresh = n - reuse
        if self.high_water + fresh > self.entry_capacity:
            self._grow_entries(self.high_water + fresh)
        out = torch.cat([taken, torch.arange(self.high_water, self.high_water + fresh,
                                             device=self.device)])
        self.high_water += fresh
        return out

    def _grow_entries(self, need: int) -> None:
        cap = max(need, int(self.entry_capacity * 1.5) + 16)
        for name in ("keys", "fields", "alive"):
            old = getattr(self, name)
            new = torch.zeros(cap, dtype=old.dtype, device=self.device)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def _place(self, h: torch.Tensor, slots: torch.Tensor) -> None:
        """Write entry slots into empty cells by linear probing (keys known absent)."""
        view = self._numpy(slots.numel())
        if view is not None:
            HashIndex._place(view, h.numpy().view(np.uint64),  # type: ignore[arg-type]
                             slots.numpy().astype(np.int32))
            return
        tmask = self.table.numel() - 1
        pos = h & tmask
        slots32 = slots.to(torch.int32)
        block = self.probe_block or (8 if self.device.type != "cpu" else 1)
        if block > 1:
            self._place_block(pos, slots32, block)
            return
        while pos.numel():
            free = self.table.index_select(0, pos) == EMPTY
            # among keys aiming at one free cell, one wins (whichever write lands last)
            self.table.index_put_((pos,), torch.where(free, slots32, self.table.index_select(
                0, pos)))
            lost = self.table.index_select(0, pos) != slots32
            pos, slots32 = (pos[lost] + 1) & tmask, slots32[lost]

    def _place_block(self, pos: torch.Tensor, slots32: torch.Tensor, block: int) -> None:
        """_place reading `block` cells a round: each key claims the first EMPTY cell of its
        window (cells before it are taken, so lookups pass over them to it); of keys claiming
        one cell one wins, the others go on from the cell after it; keys whose window is full
        go on to the next window. One host sync a round, not one a cell (a GPU's plain loop
        took ~66 rounds a step at load 0.7)."""
        tmask = self.table.numel() - 1
        while pos.numel():
            at = (pos.unsqueeze(1) + torch.arange(block, device=self.device)) & tmask
            empty = self.table[at] == EMPTY
            has = empty.any(dim=1)
            cell = at.gather(1, empty.to(torch.int8).argmax(dim=1, keepdim=True)).squeeze(1)
            # A key without an EMPTY cell writes back what its (taken) first cell holds: no
            # key claims a taken cell, so that write races with none.
            self.table.index_put_((cell,), torch.where(has, slots32, self.table[cell]))
            won = has & (self.table[cell] == slots32)
            nxt = torch.where(has, cell + 1, pos + block) & tmask
            more = torch.nonzero(~won).squeeze(1)  # one host sync a round
            pos, slots32 = nxt[more], slots32[more]
            block = min(4 * block, MAX_BLOCK)

    @property
    def tombstones(self) -> int:
        return self._tombstones

    def _ensure_table_room(self, adding: int) -> None:
        size = self.table.numel()
        if self.num_entries + self._tombstones + adding > self.max_load * size:
            self._rebuild(grown_size(size, self.num_entries, self._tombstones, adding,
                                     self.max_load))

    def resize_table(self, size: int) -> None:
        """Rebuild the table at `size` cells (a power of two holding every live key)."""
        if size & (size - 1) or size < 16 or self.num_entries > size:
            raise ValueError(f"table size {size}: a power of two >= 16 and >= the entries "
                             f"({self.num_entries}) is needed")
        self._rebuild(size)

    def _rebuild(self, size: int) -> None:
        self.table = torch.full((size,), EMPTY, dtype=torch.int32, device=self.device)
        self._tombstones = 0
        live = torch.nonzero(self.alive[: self.high_water]).squeeze(1)
        if live.numel():
            self._place(mix64_t(self.fields[live], self.keys[live]), live)

    # ---- deletion ----------------------------------------------------------------------
    def delete(self, slots: object) -> None:
        """Remove the entries at these slots (distinct, live); their slots are reused."""
        slots = self._as(slots, torch.int64)
        if slots.numel() == 0:
            return
        h = mix64_t(self.fields[slots], self.keys[slots])
        tmask = self.table.numel() - 1
        pos = h & tmask
        slots32 = slots.to(torch.int32)
        pending = torch.arange(slots.numel(), device=self.device)
        while pending.numel():
            p = pos[pending]
            hit = self.table[p] == slots32[pending]
            self.table[p[hit]] = TOMBSTONE
            pending = pending[~hit]
            pos[pending] = (pos[pending] + 1) & tmask
        self.alive[slots] = False
        self.num_entries -= slots.numel()
        self._tombstones += slots.numel()
        self.free_slots = torch.cat([self.free_slots, slots32])
        if self._tombstones > 0.25 * self.table.numel():
            self._rebuild(self.table.numel())

    # ---- persistence: the numpy HashIndex's arrays, by the same names -------------------
    def state(self) -> dict[str, np.ndarray]:
        return {
            "table": self.table.cpu().numpy(),
            "keys": self.keys.cpu().numpy(),
            "fields": self.fields.cpu().numpy(),
            "alive": self.alive.cpu().numpy(),
            "free_slots": self.free_slots.cpu().numpy(),
            "counters": np.array(
                [self.num_entries, self.high_water, self._tombstones], dtype=np.int64
            ),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], max_load: float = MAX_LOAD,
                   device: str | torch.device = "cpu", fused: bool = False) -> DeviceHashIndex:
        idx = cls.__new__(cls)
        idx.device = torch.device(device)
        idx.fused = fused
        idx.max_load = max_load
        for name in ("table", "keys", "fields", "alive", "free_slots"):
            setattr(idx, name, torch.from_numpy(np.array(state[name])).to(idx.device))
        idx.num_entries, idx.high_water, idx._tombstones = (int(x) for x in state["counters"])
        idx.inserted_any = False
        return idx
