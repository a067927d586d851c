"""Publishing model versions to Redis (key layout and record formats: services/wire/).

One publish, in this order, so that a reader that sees a version record finds everything it
names:

1. embeddings: the policy's export (only the entries touched since the last publish, or all
   of them for a full republish): SET of the records with live chunks, DEL of IDs left with
   no chunk and of evicted IDs, `redis_write_chunk` keys per round trip (a Lua script, so
   each chunk is one command that Redis runs in a few ms);
2. the dense weights under `chunkrec:{M}:dense:{version}` (old versions beyond the newest
   `dense_versions_kept` are deleted);
3. the version record `chunkrec:{M}:version`;
4. PUBLISH of the version number on `chunkrec:{M}:versions`.

Every write is fenced (services/trainer/lease.py): it runs as a Lua script that first checks, inside
Redis, that this trainer still owns the model; a fenced publisher writes nothing and raises
`Fenced`. Steps 2-4 are one such script.

Redis bytes of the embedding records are tracked exactly: the writes run as small Lua
scripts that SET (or DEL) a chunk of keys and return the byte and key-count change (old sizes
by STRLEN inside Redis: one round trip per chunk, no per-key command from Python, which costs
~8 us a key). A full republish also deletes embedding keys Redis holds that the export lacks
(left by a trainer that crashed after publishing past its checkpoint), and recounts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from models.policy import EmbeddingPolicy
from services import wire
from services.trainer.lease import ModelLease

log = logging.getLogger("chunkrec.publisher")

# Every write runs through the model's lease (services/trainer/lease.py): the lease check
# comes first in each script, so the bodies read their own keys from KEYS[K0 + 1] and args from
# ARGV[A0 + 1].
# KEYS: the chunk's keys; ARGV: their records. Returns {byte change, keys created}.
_SET_LUA = """
local delta, created = 0, 0
for i = K0 + 1, #KEYS do
  local k, v = KEYS[i], ARGV[A0 + i - K0]
  local old = redis.call('STRLEN', k)
  if old == 0 then created = created + 1 end
  delta = delta + #v - old
  redis.call('SET', k, v)
end
return {delta, created}
"""
# KEYS: keys to delete. Returns {bytes freed, keys deleted}.
_DEL_LUA = """
local freed, gone = 0, 0
for i = K0 + 1, #KEYS do
  local k = KEYS[i]
  local old = redis.call('STRLEN', k)
  if old > 0 then
    freed = freed + old
    gone = gone + redis.call('DEL', k)
  end
end
return {freed, gone}
"""
# KEYS: dense key, old dense key (or ""), models set, version key; ARGV: dense blob, version
# record, channel, version number. The version's metadata in one step, then the announcement.
_META_LUA = """
redis.call('SET', KEYS[K0 + 1], ARGV[A0 + 1])
if KEYS[K0 + 2] ~= '' then redis.call('DEL', KEYS[K0 + 2]) end
redis.call('SADD', KEYS[K0 + 3], ARGV[A0 + 5])
redis.call('SET', KEYS[K0 + 4], ARGV[A0 + 2])
redis.call('PUBLISH', ARGV[A0 + 3], ARGV[A0 + 4])
return 1
"""


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
                 write_chunk: int = 2000, dense_versions_kept: int = 3,
                 lease: ModelLease | None = None) -> None:
        self.r = client
        self.model = wire.check_model_name(model)
        self.field_names = field_names
        self.write_chunk = max(1, write_chunk)
        self.dense_versions_kept = max(1, dense_versions_kept)
        self.redis_bytes = 0
        self.redis_records = 0
        # the trainer passes its lease; without one (a tool or a test publishing by hand) the
        # first write takes the model over, fencing out whoever wrote it before
        self.lease = lease if lease is not None else ModelLease(client, model, take_over=True)
        self._set_script = self.lease.fenced_script(_SET_LUA)
        self._del_script = self.lease.fenced_script(_DEL_LUA)
        self._meta_script = self.lease.fenced_script(_META_LUA)

    def current_version(self) -> wire.ModelVersion | None:
        """The version record in Redis now, or None (Redis empty, restarted, a new model, or
        a record that does not parse: the next publish replaces it)."""
        blob = self.r.get(wire.version_key(self.model))
        if blob is None:
            return None
        try:
            record = wire.ModelVersion.from_json(blob)
            record.version = int(record.version)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            log.warning("%s: unreadable version record (%s); replacing it", self.model,
                        str(exc)[:200])
            return None
        return record

    def _write(self, packed: wire.PackedExport) -> None:
        sets, deletes, step = packed.sets, packed.deletes, self.write_chunk
        for a in range(0, len(sets), step):
            part = sets[a : a + step]
            delta, created = self._set_script(keys=[k for k, _ in part],
                                              args=[v for _, v in part])
            self.redis_bytes += int(delta)
            self.redis_records += int(created)
        for a in range(0, len(deletes), step):
            freed, gone = self._del_script(keys=deletes[a : a + step])
            self.redis_bytes -= int(freed)
            self.redis_records -= int(gone)

    def _sweep_stale(self, live_keys: list[str]) -> int:
        """Delete embedding keys of this model that are not in `live_keys`; returns how many."""
        live = set(live_keys)
        stale: list[str] = []
        for key in self.r.scan_iter(match=wire.emb_prefix(self.model) + "*", count=10_000):
            k = key.decode() if isinstance(key, bytes) else key
            if k not in live:
                stale.append(k)
        for a in range(0, len(stale), self.write_chunk):
            self._del_script(keys=stale[a : a + self.write_chunk])
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
        old = version - self.dense_versions_kept
        record.version = version
        record.full = full
        record.dense_key = dkey
        record.widths = [int(w) for w in export.widths]
        record.entries_written = len(packed.sets)
        record.entries_deleted = len(packed.deletes)
        record.redis_embedding_bytes = self.redis_bytes
        record.redis_embedding_records = self.redis_records
        record.created_at = time.time()
        self._meta_script(
            keys=[dkey, wire.dense_key(self.model, old) if old >= 1 else "", wire.MODELS_SET,
                  wire.version_key(self.model)],
            args=[dense_blob, record.to_json(), wire.versions_channel(self.model), str(version),
                  self.model])
        return PublishStats(version, full, len(packed.sets), len(packed.deletes),
                            packed.record_bytes, time.perf_counter() - t0)
