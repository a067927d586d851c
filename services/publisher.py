"""Publishing model versions to Redis (key layout and record formats: services/wire.py).

One publish, in this order, so that a reader that sees a version record finds everything it
names:

1. embeddings: the policy's export (only the entries touched since the last publish, or all
   of them for a full republish) as pipelined MSET (live chunks) / DEL (IDs left with no
   chunk, evicted IDs), `redis_write_chunk` keys per round trip;
2. the dense weights under `chunkrec:{M}:dense:{version}` (old versions beyond the newest
   `dense_versions_kept` are deleted);
3. the version record `chunkrec:{M}:version`;
4. PUBLISH of the version number on `chunkrec:{M}:versions`.

Redis bytes of the embedding records are tracked exactly: each chunk's pipeline first asks
STRLEN of the keys it overwrites or deletes (replies come from before the writes, in the same
round trip). A full republish also deletes embedding keys Redis holds that the export lacks
(left by a trainer that crashed after publishing past its checkpoint), and recounts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from models.policy import EmbeddingPolicy
from services import wire


@dataclass
class PublishStats:
    version: int
    full: bool
    entries_written: int
    entries_deleted: int
    record_bytes: int
    seconds: float


class RedisPublisher:
    """Writes versions of one model; holds the running count of its Redis record bytes."""

    def __init__(self, client: redis.Redis, model: str, field_names: tuple[str, ...],
                 write_chunk: int = 5000, dense_versions_kept: int = 3) -> None:
        self.r = client
        self.model = wire.check_model_name(model)
        self.field_names = field_names
        self.write_chunk = max(1, write_chunk)
        self.dense_versions_kept = max(1, dense_versions_kept)
        self.redis_bytes = 0
        self.redis_records = 0

    def current_version(self) -> wire.ModelVersion | None:
        """The version record in Redis now, or None (Redis empty, restarted, or a new model)."""
        blob = self.r.get(wire.version_key(self.model))
        return None if blob is None else wire.ModelVersion.from_json(blob)

    def _write(self, packed: wire.PackedExport) -> None:
        sets, deletes, step = packed.sets, packed.deletes, self.write_chunk
        for a in range(0, len(sets), step):
            part = sets[a : a + step]
            pipe = self.r.pipeline(transaction=False)
            for key, _ in part:
                pipe.strlen(key)
            pipe.mset(dict(part))
            old = pipe.execute()[:-1]
            self.redis_bytes += sum(len(v) for _, v in part) - sum(old)
            self.redis_records += sum(1 for n in old if n == 0)
        for a in range(0, len(deletes), step):
            part = deletes[a : a + step]
            pipe = self.r.pipeline(transaction=False)
            for key in part:
                pipe.strlen(key)
            pipe.delete(*part)
            old = pipe.execute()[:-1]
            self.redis_bytes -= sum(old)
            self.redis_records -= sum(1 for n in old if n > 0)

    def _sweep_stale(self, live_keys: list[str]) -> int:
        """Delete embedding keys of this model that are not in `live_keys`; returns how many."""
        live = set(live_keys)
        stale: list[str] = []
        for key in self.r.scan_iter(match=wire.emb_prefix(self.model) + "*", count=10_000):
            k = key.decode() if isinstance(key, bytes) else key
            if k not in live:
                stale.append(k)
        for a in range(0, len(stale), self.write_chunk):
            self.r.delete(*stale[a : a + self.write_chunk])
        return len(stale)

    def publish(self, policy: EmbeddingPolicy, dense_blob: bytes, version: int, full: bool,
                record: wire.ModelVersion) -> PublishStats:
        """Publish `version`: embeddings (see module docstring), the dense blob, then the
        version record built from `record` (its counters are filled in here), then announce.
        Raises redis.RedisError on failure; the caller republishes in full next time, since
        the export has already cleared the policy's dirty set."""
        t0 = time.perf_counter()
        export = policy.export(dirty_only=not full)
        packed = wire.pack_export(self.model, self.field_names, export)
        if full:
            self.redis_bytes = 0
            self.redis_records = 0
            self._sweep_stale([k for k, _ in packed.sets])
        self._write(packed)
        dkey = wire.dense_key(self.model, version)
        pipe = self.r.pipeline(transaction=False)
        pipe.set(dkey, dense_blob)
        old = version - self.dense_versions_kept
        if old >= 1:
            pipe.delete(wire.dense_key(self.model, old))
        pipe.sadd(wire.MODELS_SET, self.model)
        pipe.execute()
        record.version = version
        record.full = full
        record.dense_key = dkey
        record.widths = [int(w) for w in export.widths]
        record.entries_written = len(packed.sets)
        record.entries_deleted = len(packed.deletes)
        record.redis_embedding_bytes = self.redis_bytes
        record.redis_embedding_records = self.redis_records
        record.created_at = time.time()
        self.r.set(wire.version_key(self.model), record.to_json())
        self.r.publish(wire.versions_channel(self.model), str(version))
        return PublishStats(version, full, len(packed.sets), len(packed.deletes),
                            packed.record_bytes, time.perf_counter() - t0)
