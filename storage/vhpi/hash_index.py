"""A vectorised, collision-free open-addressing hash index: (field, raw ID) -> entry slot.

The table holds only int32 entry slots (4 bytes a slot); the full keys live in the entry
arrays (`keys` int64, `fields` int16), so a probe compares the real key and two different keys
never share an entry. Linear probing; deletion leaves tombstones that a rebuild clears. A batch
of keys is one call: every probe round is one numpy gather over the keys still unresolved.

    index = HashIndex()
    slots, new = index.get_or_insert(fields, keys)   # int64[N], int64[N] -> int32[N], bool[N]
    index.lookup(fields, keys)                       # int32[N], -1 where absent
"""

from __future__ import annotations

import numpy as np

from storage.splitmix import GOLDEN, splitmix64

EMPTY = -1
GROWN_LOAD = 0.5  # load right after the table grows
TOMBSTONE = -2


def mix64(fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """splitmix64 of (key, field): int[N], int64[N] -> uint64[N]."""
    with np.errstate(over="ignore"):
        salt = (fields.astype(np.uint64) + np.uint64(1)) * GOLDEN
    return splitmix64(keys.astype(np.uint64, copy=False) ^ salt)


class HashIndex:
    """Open addressing over int32 slots; entry keys stored beside it (structure of arrays).

    `max_load` bounds (live + tombstones) / table size; past it the table doubles (or is rebuilt
    at the same size when mostly tombstones). Entry slots freed by `delete` are reused.
    """

    def __init__(self, initial_capacity: int = 1024, max_load: float = 0.7) -> None:
        size = 1 << max(4, int(np.ceil(np.log2(max(initial_capacity, 2) / max_load))))
        self.max_load = max_load
        self.table = np.full(size, EMPTY, dtype=np.int32)
        self.keys = np.zeros(max(initial_capacity, 16), dtype=np.int64)
        self.fields = np.zeros(max(initial_capacity, 16), dtype=np.int16)
        self.alive = np.zeros(max(initial_capacity, 16), dtype=bool)
        self.num_entries = 0  # live entries
        self.high_water = 0  # entry slots ever handed out (slots >= this are unused)
        self.free_slots = np.zeros(0, dtype=np.int32)  # stack of freed entry slots
        self._tombstones = 0

    # ---- sizes -------------------------------------------------------------------------
    @property
    def entry_capacity(self) -> int:
        return int(self.keys.shape[0])

    @property
    def table_bytes(self) -> int:
        return int(self.table.nbytes)

    # ---- lookup ------------------------------------------------------------------------
    def _probe(self, fields: np.ndarray, keys: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Entry slot of each key, -1 where absent. int16/int64/uint64[N] -> int32[N]."""
        mask = np.uint64(self.table.shape[0] - 1)
        pos = (h & mask).astype(np.int64)
        out = np.full(keys.shape[0], EMPTY, dtype=np.int32)
        pending = np.arange(keys.shape[0])
        tmask = self.table.shape[0] - 1
        while pending.size:
            p = pos[pending]
            v = self.table[p]
            safe = np.maximum(v, 0)
            hit = (
                (v >= 0)
                & (self.keys[safe] == keys[pending])
                & (self.fields[safe] == fields[pending])
            )
            out[pending[hit]] = v[hit]
            go_on = ~hit & (v != EMPTY)
            pending = pending[go_on]
            pos[pending] = (p[go_on] + 1) & tmask
        return out

    def lookup(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """int[N] fields, int64[N] raw keys -> int32[N] entry slots, -1 where absent."""
        fields = np.asarray(fields, dtype=np.int16).ravel()
        keys = np.asarray(keys, dtype=np.int64).ravel()
        return self._probe(fields, keys, mix64(fields, keys))

    def get_or_insert(self, fields: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entry slot of every key, inserting the absent ones (duplicates get one slot).
        Returns (int32[N] slots, bool[N] true where the key was inserted by this call)."""
        fields = np.asarray(fields, dtype=np.int16).ravel()
        keys = np.asarray(keys, dtype=np.int64).ravel()
        h = mix64(fields, keys)
        slots = self._probe(fields, keys, h)
        inserted = np.zeros(keys.shape[0], dtype=bool)
        missing = np.flatnonzero(slots < 0)
        while missing.size:
            # One representative per distinct 64-bit hash; a true hash collision between two
            # different keys leaves the other one missing and it goes in on the next round.
            _, first = np.unique(h[missing], return_index=True)
            reps = missing[first]
            self._ensure_table_room(reps.size)  # may rebuild: before the new keys are live
            new_slots = self._take_slots(reps.size)
            self.keys[new_slots] = keys[reps]
            self.fields[new_slots] = fields[reps]
            self.alive[new_slots] = True
            self.num_entries += reps.size
            self._place(h[reps], new_slots)
            inserted[reps] = True
            found = self._probe(fields[missing], keys[missing], h[missing])
            slots[missing] = found
            missing = missing[found < 0]
        # Every duplicate of a newly inserted key counts as inserted by this call too.
        if inserted.any():
            new_set = np.zeros(self.high_water, dtype=bool)
            new_set[slots[inserted]] = True
            inserted = new_set[slots]
        return slots, inserted

    def _take_slots(self, n: int) -> np.ndarray:
        reuse = min(n, self.free_slots.size)
        taken = self.free_slots[self.free_slots.size - reuse :]
        self.free_slots = self.free_slots[: self.free_slots.size - reuse]
        fresh = n - reuse
        if self.high_water + fresh > self.entry_capacity:
            self._grow_entries(self.high_water + fresh)
        out = np.concatenate(
            [taken, np.arange(self.high_water, self.high_water + fresh, dtype=np.int32)]
        )
        self.high_water += fresh
        return out.astype(np.int32)

    def _grow_entries(self, need: int) -> None:
        cap = max(need, int(self.entry_capacity * 1.5) + 16)
        for name in ("keys", "fields", "alive"):
            old = getattr(self, name)
            new = np.zeros(cap, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def _place(self, h: np.ndarray, slots: np.ndarray) -> None:
        """Write entry slots into empty table cells by linear probing (keys known absent)."""
        tmask = self.table.shape[0] - 1
        pos = (h & np.uint64(tmask)).astype(np.int64)
        pending = np.arange(slots.shape[0])
        while pending.size:
            p = pos[pending]
            free = self.table[p] == EMPTY
            cand = pending[free]
            self.table[p[free]] = slots[cand]  # among keys aiming at one cell, one wins
            won = self.table[p[free]] == slots[cand]
            losers = np.concatenate([pending[~free], cand[~won]])
            pos[losers] = (pos[losers] + 1) & tmask
            pending = losers

    def _ensure_table_room(self, adding: int) -> None:
        used = self.num_entries + self._tombstones + adding
        size = self.table.shape[0]
        if used <= self.max_load * size:
            return
        # Grow to a load of at most GROWN_LOAD: one doubling when the table fills up one key at
        # a time (0.7 -> 0.35), fewer slots than a blind doubling for a bulk insert.
        new_size = size
        while self.num_entries + adding > GROWN_LOAD * new_size:
            new_size *= 2
        self._rebuild(new_size)

    def _rebuild(self, size: int) -> None:
        self.table = np.full(size, EMPTY, dtype=np.int32)
        self._tombstones = 0
        live = np.flatnonzero(self.alive[: self.high_water]).astype(np.int32)
        if live.size:
            self._place(mix64(self.fields[live], self.keys[live]), live)

    # ---- deletion ----------------------------------------------------------------------
    def delete(self, slots: np.ndarray) -> None:
        """Remove the entries at these slots (int32[N], distinct, live); their slots are reused."""
        slots = np.asarray(slots, dtype=np.int32)
        if slots.size == 0:
            return
        h = mix64(self.fields[slots], self.keys[slots])
        tmask = self.table.shape[0] - 1
        pos = (h & np.uint64(tmask)).astype(np.int64)
        pending = np.arange(slots.size)
        while pending.size:
            p = pos[pending]
            hit = self.table[p] == slots[pending]
            self.table[p[hit]] = TOMBSTONE
            pending = pending[~hit]
            pos[pending] = (pos[pending] + 1) & tmask
        self.alive[slots] = False
        self.num_entries -= slots.size
        self._tombstones += slots.size
        self.free_slots = np.concatenate([self.free_slots, slots])
        if self._tombstones > 0.25 * self.table.shape[0]:
            self._rebuild(self.table.shape[0])

    # ---- persistence -------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        return {
            "table": self.table,
            "keys": self.keys,
            "fields": self.fields,
            "alive": self.alive,
            "free_slots": self.free_slots,
            "counters": np.array(
                [self.num_entries, self.high_water, self._tombstones], dtype=np.int64
            ),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], max_load: float = 0.7) -> HashIndex:
        idx = cls.__new__(cls)
        idx.max_load = max_load
        idx.table = np.array(state["table"])
        idx.keys = np.array(state["keys"])
        idx.fields = np.array(state["fields"])
        idx.alive = np.array(state["alive"])
        idx.free_slots = np.array(state["free_slots"])
        idx.num_entries, idx.high_water, idx._tombstones = (int(x) for x in state["counters"])
        return idx
