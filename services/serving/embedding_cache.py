"""An in-process cache of decoded embeddings, one per loaded model version, vectorised.

    cache = EmbeddingCache(capacity=200_000, dim=64)
    slots = cache.lookup(fields, keys)          # int64[N] each -> int32[N], -1 = not cached
    cache.insert(fields, keys, rows, found)     # the records a request fetched from Redis
    cache.rows[slots], cache.found[slots]       # float32[N, D] zero-padded, bool[N]

Keyed by the (field index, int64 ID) pair itself through the store's open-addressing
`HashIndex`: a request's B x F cells are looked up in one vectorised call, duplicates and all,
and its embeddings are one gather, so a warm request does no per-key Python work (the packed
records of Redis are decoded once, when fetched). An ID Redis has no record of is cached too
(`found` False, a zero row): it reads as zeros until the next version.

Eviction: least recently used, in batches. Every lookup stamps its slots with a tick; an
insert that would pass `capacity` first evicts the oldest eighth of the cache (never a slot
stamped with the current tick, i.e. one the running request reads). The entries' bytes are
`nbytes` (rows + flags + stamps + index).

Invalidation: a cache serves one model version at a time (`version`). When a new version is
swapped in, the cache moves to it minus the entries of the buckets whose generation changed
between the two manifests (`drop_buckets`; services/wire/buckets.py): those are exactly the
records that may differ, every other entry is byte for byte the new version's. A request still
scoring with the old version sees `cache.version` differ from its own and reads Redis through
its own manifest without the cache (scorer.gather_embeddings), so no entry of one version
ever serves another.

Concurrency: requests run on one event loop; a request's lookup, eviction, insert and gather
run without an await between them (the await is the Redis fetch before), so no other request
can move a slot under it.
"""

from __future__ import annotations

import numpy as np

from services import wire
from storage.vhpi.hash_index import HashIndex

EVICT_FRACTION = 8  # an eviction frees capacity // EVICT_FRACTION entries (or what is needed)


class EmbeddingCache:
    """At most `capacity` (field, ID) -> float32[dim] entries. Capacity 0 turns caching off:
    what a request inserts lives until its `end_request()`, so every request fetches."""

    def __init__(self, capacity: int, dim: int, version: int = 0) -> None:
        self.version = version  # the model version whose records the entries are
        self.capacity = max(0, int(capacity))
        self.dim = int(dim)
        start = min(self.capacity, 4096) or 1024
        self.index = HashIndex(initial_capacity=start)
        self.rows = np.zeros((self.index.entry_capacity, self.dim), np.float32)
        self.found = np.zeros(self.index.entry_capacity, bool)
        self.used = np.zeros(self.index.entry_capacity, np.int64)  # tick of the last lookup
        self.tick = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return self.index.num_entries

    @property
    def nbytes(self) -> int:
        return (self.rows.nbytes + self.found.nbytes + self.used.nbytes
                + self.index.table_bytes + self.index.keys.nbytes + self.index.fields.nbytes)

    def lookup(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Slots of the pairs (int32[N], -1 where not cached), stamped as just used."""
        self.tick += 1
        slots = self.index.lookup(fields, keys)
        hit = slots >= 0
        self.used[slots[hit]] = self.tick
        return slots

    def insert(self, fields: np.ndarray, keys: np.ndarray, rows: np.ndarray,
               found: np.ndarray) -> np.ndarray:
        """Cache N distinct pairs not cached yet with their decoded rows float32[N, dim] and
        whether Redis had a record (bool[N]); returns their slots."""
        over = len(self) + len(keys) - self.capacity
        if over > 0 and self.capacity:
            self._evict(max(over, self.capacity // EVICT_FRACTION))
        slots, _ = self.index.get_or_insert(fields, keys)
        if self.index.entry_capacity > len(self.rows):
            self._grow(self.index.entry_capacity)
        self.rows[slots] = rows
        self.found[slots] = found
        self.used[slots] = self.tick
        return slots

    def drop_buckets(self, changed: np.ndarray) -> int:
        """Forget the entries whose bucket (of len(changed) buckets) is flagged in
        changed bool[n_buckets]; returns how many. One vectorised pass over the entries."""
        idx = self.index
        live = np.flatnonzero(idx.alive[: idx.high_water])
        if not len(live):
            return 0
        b = wire.bucket_of(idx.fields[live].astype(np.int64), idx.keys[live], len(changed))
        gone = live[changed[b]]
        if len(gone):
            idx.delete(gone.astype(np.int32))
            self.rows[gone] = 0
        return len(gone)

    def end_request(self) -> None:
        """With caching off, forget what the request inserted."""
        if not self.capacity and len(self):
            self._evict(len(self), keep_current=False)

    def _evict(self, count: int, keep_current: bool = True) -> None:
        """Free up to `count` least recently used entries, none stamped with the current tick
        while `keep_current`."""
        idx = self.index
        live = np.flatnonzero(idx.alive[: idx.high_water])
        old = live[self.used[live] < self.tick] if keep_current else live
        if not len(old):
            return
        if count < len(old):
            old = old[np.argpartition(self.used[old], count - 1)[:count]]
        idx.delete(old.astype(np.int32))
        self.rows[old] = 0
        self.evictions += len(old)

    def _grow(self, size: int) -> None:
        pad = size - len(self.rows)
        self.rows = np.concatenate([self.rows, np.zeros((pad, self.dim), np.float32)])
        self.found = np.concatenate([self.found, np.zeros(pad, bool)])
        self.used = np.concatenate([self.used, np.zeros(pad, np.int64)])
