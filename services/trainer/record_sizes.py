"""The publisher's books of what it has in Redis: the size of every embedding record, by hash
field name (the int64 that wire.field_numbers gives), so that a publish knows the bytes it
replaces without asking Redis for each record's length (HSTRLEN per record was about a third of
Redis's time on a publish, and the scan it makes grows with the bucket).

    books = RecordSizes()
    delta = books.change(set_numbers, set_sizes, del_numbers)   # byte change, before writing
    books.apply(set_numbers, set_sizes, del_numbers)            # once the writes succeeded
    books.clear()                                               # a full republish starts anew

Two sorted arrays (int64 names, int64 sizes): ~16 bytes a live record; a lookup is one
searchsorted, an update one merge (O(records), no per-record Python). The books are right as
long as nothing but this publisher writes the model's records since its last full republish,
which is what the publish protocol guarantees (services/trainer/publisher.py); the bucket script
still returns the record counts Redis saw, and a disagreement makes the next publish a full one.
"""

from __future__ import annotations

import numpy as np


class RecordSizes:
    """See module docstring."""

    def __init__(self) -> None:
        self.names = np.zeros(0, np.int64)  # sorted, distinct
        self.sizes = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total(self) -> int:
        return int(self.sizes.sum())

    def clear(self) -> None:
        self.names = np.zeros(0, np.int64)
        self.sizes = np.zeros(0, np.int64)

    def sizes_of(self, numbers: np.ndarray) -> np.ndarray:
        """int64[N]: the recorded size of each name (0: not in Redis)."""
        numbers = np.asarray(numbers, np.int64)
        pos = np.searchsorted(self.names, numbers)
        hit = pos < len(self.names)
        hit[hit] = self.names[pos[hit]] == numbers[hit]
        out = np.zeros(len(numbers), np.int64)
        out[hit] = self.sizes[pos[hit]]
        return out

    def change(self, set_numbers: np.ndarray, set_sizes: np.ndarray,
               del_numbers: np.ndarray) -> tuple[int, int]:
        """(byte change, record change) of setting and deleting these names (distinct, no
        name in both)."""
        old_set, old_del = self.sizes_of(set_numbers), self.sizes_of(del_numbers)
        delta = int(np.sum(set_sizes)) - int(old_set.sum()) - int(old_del.sum())
        return delta, int(np.count_nonzero(old_set == 0)) - int(np.count_nonzero(old_del))

    def apply(self, set_numbers: np.ndarray, set_sizes: np.ndarray,
              del_numbers: np.ndarray) -> None:
        """Record a publish's writes (the arguments of `change`)."""
        set_numbers = np.asarray(set_numbers, np.int64)
        set_sizes = np.asarray(set_sizes, np.int64)
        n = len(self.names)
        pos = np.searchsorted(self.names, set_numbers)
        hit = pos < n
        hit[hit] = self.names[pos[hit]] == set_numbers[hit]
        self.sizes[pos[hit]] = set_sizes[hit]
        drop = np.zeros(n, bool)
        dpos = np.searchsorted(self.names, np.asarray(del_numbers, np.int64))
        dhit = dpos < n
        dhit[dhit] = self.names[dpos[dhit]] == np.asarray(del_numbers, np.int64)[dhit]
        drop[dpos[dhit]] = True
        names, sizes = self.names[~drop], self.sizes[~drop]
        new = np.argsort(set_numbers[~hit], kind="stable")
        add_n, add_s = set_numbers[~hit][new], set_sizes[~hit][new]
        at = np.searchsorted(names, add_n)
        self.names = np.insert(names, at, add_n)
        self.sizes = np.insert(sizes, at, add_s)
