"""An in-process LRU of packed embedding records, one per loaded model version.

Keyed by the record's Redis key (which spells exactly the (field, ID) pair of one model, see
services/wire.py); the value is the packed record as Redis holds it, or None for an ID Redis
has no record of (a cached miss: it reads as zeros until the next version). Records are kept
packed (mask + live chunks only, so a FIITED model's cache is as small as its Redis share) and
unpacked per request by one vectorised `wire.unpack_records` call.

Invalidation: a cache belongs to one `LoadedModel`; a new version gets a new, empty cache and
the old one goes with the old snapshot. The version record does not list the keys a version
touched, so dropping everything is the only exact choice, and it is also the consistent one:
entries cached after version v was seen stay until v+1 is swapped in, even though the
trainer writes v+1's records to Redis a moment before v+1's version record.

Per-key work is dict operations only (~0.1 us each); a request touches its distinct keys once.
"""

from __future__ import annotations

from collections import OrderedDict


class EmbeddingCache:
    """LRU by entries: at most `capacity` records (capacity 0 turns caching off)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._d: OrderedDict[str, bytes | None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def get_many(self, keys: list[str]) -> tuple[list[bytes | None], list[int]]:
        """(records, indices of the keys not cached). records[i] is None both for a cached
        miss and for a key not cached; the second list says which is which."""
        d = self._d
        out: list[bytes | None] = [None] * len(keys)
        todo: list[int] = []
        if not self.capacity:
            return out, list(range(len(keys)))
        for i, k in enumerate(keys):
            try:
                out[i] = d[k]
            except KeyError:
                todo.append(i)
                continue
            d.move_to_end(k)
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        return out, todo

    def put_many(self, keys: list[str], records: list[bytes | None]) -> None:
        if not self.capacity:
            return
        d = self._d
        d.update(zip(keys, records, strict=True))
        over = len(d) - self.capacity
        for _ in range(max(0, over)):
            d.popitem(last=False)
