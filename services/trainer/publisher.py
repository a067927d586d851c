"""Publishing model versions to Redis (key layout and record formats: services/wire/).

One publish of version V, in this order; nothing a reader resolves through V's manifest is
written before V's version record, and nothing the current version names is overwritten:

1. embeddings, per bucket (wire/buckets.py): the policy's export (the entries touched since
   the last publish, or all of them for a full republish) grouped by bucket
   (wire.pack_buckets: a few byte strings a bucket, no Python object per record); each
   touched bucket is written under a new generation G(V, token) by one Lua script on that
   bucket's slot (COPY of the bucket's current generation, variadic HSET of the new records,
   HDEL of IDs left with no chunk or evicted, the sentinel), pipelined, `write_chunk` records
   per round trip (a Redis Cluster pipeline sends each node its share);
2. the commit, one fenced script on the slot of the model's tag: the dense weights, the
   manifest (every bucket's generation in V), the version record, the deletion of the dense
   blob and manifest `dense_versions_kept` versions back, then PUBLISH of V;
3. generations superseded `dense_versions_kept` versions ago are deleted (readers still on a
   recent version keep finding theirs).

A trainer killed in step 1 leaves generations no manifest names: readers never see them, and
the next full republish sweeps them (SCAN). The commit is fenced (services/trainer/lease.py):
a fenced-out trainer's commit raises `Fenced` and it deletes nothing; the generations it wrote
carry its own token, so they can never be a key the owner's manifest names.

A full republish (on start, after a failure, or when buckets fill past 2x `per_bucket`
records on average) sizes the buckets anew for the live records and writes every bucket.
Record bytes and counts are tracked exactly: each bucket script returns the fields it added
and deleted, and the publisher's books (record_sizes.py) hold every record's size since its
last full republish (the first publish of a publisher is a full one); books that disagree with
Redis's counts make the next publish a full one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from models.policy import EmbeddingPolicy
from services import wire
from services.trainer.lease import ModelLease
from services.trainer.record_sizes import RecordSizes

log = logging.getLogger("chunkrec.publisher")

# A bucket's changes into the generation `dst` (ARGV[1] the generation, ARGV[2] n sets, then n
# (field, record) pairs, then fields to delete), counting {delta, count}: the byte and record
# change (old sizes by HSTRLEN inside Redis): the sharded publisher's bucket script
# (shard_publisher.py; the single-process one, _BUCKET_LUA, keeps books instead).
BUCKET_CHANGES_LUA = """
local n = tonumber(ARGV[2])
local delta, count = 0, 0
for i = 3, 2 + 2 * n, 2 do
  local old = redis.call('HSTRLEN', dst, ARGV[i])
  if old == 0 then count = count + 1 end
  delta = delta + #ARGV[i + 1] - old
  redis.call('HSET', dst, ARGV[i], ARGV[i + 1])
end
for i = 3 + 2 * n, #ARGV do
  local old = redis.call('HSTRLEN', dst, ARGV[i])
  if old > 0 then
    delta = delta - old
    count = count - redis.call('HDEL', dst, ARGV[i])
  end
end
redis.call('HSET', dst, '', ARGV[1])
"""
# One bucket of a wire.PackedBuckets: KEYS[1] the new generation's key, KEYS[2] (when given)
# the bucket's current generation, on the same slot (one hash tag); ARGV: the generation, the
# set names (space-separated), their records' lengths (uint32 LE), the records end to end, the
# names to delete. Variadic HSET / HDEL, a few hundred fields a call (Lua's stack holds
# 8000). Returns {fields added, fields deleted, records left}; a bucket left empty is deleted
# (the manifest then says 0). Byte sizes are the publisher's books (record_sizes.py): asking
# Redis (HSTRLEN) for each replaced record cost about a third of the script's time.
_BUCKET_LUA = """
local dst = KEYS[1]
if KEYS[2] then redis.call('COPY', KEYS[2], dst, 'REPLACE') else redis.call('DEL', dst) end
local lens, recs = ARGV[3], ARGV[4]
local args, n, pos, li, added, removed = {}, 0, 1, 1, 0, 0
for name in string.gmatch(ARGV[2], '%S+') do
  local len
  len, li = struct.unpack('<I4', lens, li)
  args[n + 1] = name
  args[n + 2] = string.sub(recs, pos, pos + len - 1)
  n = n + 2
  pos = pos + len
  if n >= 1000 then added = added + redis.call('HSET', dst, unpack(args, 1, n)); n = 0 end
end
if n > 0 then added = added + redis.call('HSET', dst, unpack(args, 1, n)) end
n = 0
for name in string.gmatch(ARGV[5], '%S+') do
  n = n + 1
  args[n] = name
  if n >= 1000 then removed = removed + redis.call('HDEL', dst, unpack(args, 1, n)); n = 0 end
end
if n > 0 then removed = removed + redis.call('HDEL', dst, unpack(args, 1, n)) end
redis.call('HSET', dst, '', ARGV[1])
local left = redis.call('HLEN', dst) - 1
if left == 0 then redis.call('DEL', dst) end
return {added, removed, left}
"""
# KEYS: dense key, manifest key, version key, then old keys to delete (all on the model's
# slot); ARGV: dense blob, manifest, version record, channel, version number.
_COMMIT_LUA = """
redis.call('SET', KEYS[K0 + 1], ARGV[A0 + 1])
redis.call('SET', KEYS[K0 + 2], ARGV[A0 + 2])
redis.call('SET', KEYS[K0 + 3], ARGV[A0 + 3])
for i = K0 + 4, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', ARGV[A0 + 4], ARGV[A0 + 5])
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
    buckets_written: int = 0
    export_s: float = 0.0  # the policy's export
    pack_s: float = 0.0  # wire.pack_export
    redis_s: float = 0.0  # everything else: Redis round trips (and their argument lists)


@dataclass
class PublishJob:
    """A prepared publish (RedisPublisher.prepare): what `write` sends to Redis."""

    version: int
    full: bool
    buckets: int  # the manifest's length
    manifest: np.ndarray  # uint64[buckets]: the previous version's, to be updated
    packed: wire.PackedBuckets
    delta: int  # the byte change, from the books
    count: int  # the record change the books expect
    widths: list[int]
    export_s: float
    pack_s: float


class RedisPublisher:
    """Writes versions of one model; holds the running count of its Redis record bytes, the
    manifest of the last version it committed, and the generations waiting for deletion."""

    def __init__(self, client: redis.Redis, model: str, field_names: tuple[str, ...],
                 write_chunk: int = 2000, dense_versions_kept: int = 3,
                 lease: ModelLease | None = None, per_bucket: int = 128) -> None:
        self.r = client
        self.model = wire.check_model_name(model)
        self.field_names = field_names
        self.write_chunk = max(1, write_chunk)
        self.dense_versions_kept = max(1, dense_versions_kept)
        self.per_bucket = max(1, per_bucket)
        self.redis_bytes = 0
        self.redis_records = 0
        self.manifest: np.ndarray | None = None  # uint64[n]: the last committed version's
        self.retired: deque[tuple[int, list[str]]] = deque()  # (superseded at V, keys)
        self._limits_checked = False
        self.books = RecordSizes()  # every record's size, as this publisher wrote it
        self._books_match = False  # the books are Redis's (after a full republish went through)
        # the trainer passes its lease; without one (a tool or a test publishing by hand) the
        # first write takes the model over, fencing out whoever wrote it before
        self.lease = lease if lease is not None else ModelLease(client, model, take_over=True)
        self._commit_script = self.lease.fenced_script(_COMMIT_LUA)

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

    def _check_limits(self, max_record: int) -> None:
        """Warn once when the server's listpack limits turn buckets into hash tables (about
        twice the memory); a server that refuses CONFIG GET is trusted."""
        self._limits_checked = True
        try:  # Redis 7 names them listpack; before, the same limits were ziplist ones
            cfg = self.r.config_get("hash-max-listpack-*") or self.r.config_get(
                "hash-max-ziplist-*")
        except redis.RedisError:
            return
        if isinstance(cfg, dict) and cfg and isinstance(next(iter(cfg.values())), dict):
            cfg = next(iter(cfg.values()))  # a cluster answers per node
        cfg = {k.replace("ziplist", "listpack"): v for k, v in cfg.items()}
        entries = int(cfg.get("hash-max-listpack-entries", 0) or 0)
        value = int(cfg.get("hash-max-listpack-value", 0) or 0)
        if entries < 3 * self.per_bucket or value < max_record:
            log.warning("%s: Redis hash-max-listpack-entries %d / -value %d are below %d / %d: "
                        "buckets will be stored as hash tables (~2x the memory); raise them",
                        self.model, entries, value, 3 * self.per_bucket, max_record)

    def _write_buckets(self, packed: wire.PackedBuckets, version: int,
                       manifest: np.ndarray, full: bool,
                       between: Callable[[], None] | None = None) -> tuple[list[str], int, int]:
        """Step 1 of the module docstring; updates `manifest` in place and returns the keys
        of the generations it supersedes, and the fields Redis added and deleted. `between`
        is called after each round trip (the trainer keeps its Kafka membership)."""
        if self.lease.me is None:  # the generation carries our fencing token
            self.lease.acquire(take_over=self.lease.take_over)
        gen = wire.generation(version, self.lease.token or 0)
        superseded: list[str] = []
        pipe = self.r.pipeline(transaction=False)
        queued: list[int] = []
        pending = added = removed = 0

        def flush() -> None:
            nonlocal pending, added, removed
            for b, (add, rem, left) in zip(queued, pipe.execute(), strict=True):
                added += int(add)
                removed += int(rem)
                manifest[b] = gen if int(left) > 0 else 0
            queued.clear()
            pending = 0
            if between is not None:
                between()

        for i, b in enumerate(packed.buckets):
            dst = wire.bucket_key(self.model, b, gen)
            old = 0 if full else int(manifest[b])
            keys = [dst]
            if old:
                keys.append(wire.bucket_key(self.model, b, old))
                superseded.append(keys[1])
            pipe.execute_command("EVAL", _BUCKET_LUA, len(keys), *keys, gen, packed.names[i],
                                 packed.lengths[i], packed.records[i], packed.deletes[i])
            queued.append(b)
            pending += packed.changes[i]
            if pending >= self.write_chunk:
                flush()
        if queued:
            flush()
        return superseded, added, removed

    def _stale_keys(self, manifest: np.ndarray) -> list[str]:
        """Bucket keys of this model that `manifest` does not name (a full republish)."""
        live = {wire.bucket_key(self.model, b, g)
                for b, g in enumerate(manifest.tolist()) if g}
        stale = []
        for key in self.r.scan_iter(match=wire.bucket_pattern(self.model), count=10_000):
            k = key.decode() if isinstance(key, bytes) else key
            if k not in live:
                stale.append(k)
        return stale

    def _delete_retired(self, version: int) -> None:
        """Step 3: delete generations superseded `dense_versions_kept` versions ago."""
        keys: list[str] = []
        while self.retired and self.retired[0][0] <= version - self.dense_versions_kept:
            keys += self.retired.popleft()[1]
        if not keys:
            return
        pipe = self.r.pipeline(transaction=False)
        for k in keys:  # one key per command: a cluster pipeline routes each to its node
            pipe.delete(k)
        pipe.execute()

    def publish(self, policy: EmbeddingPolicy, dense_blob: bytes, version: int, full: bool,
                record: wire.ModelVersion) -> PublishStats:
        """Publish `version` (see the module docstring); the version record is built from
        `record` (its counters are filled in here). Raises redis.RedisError on failure; the
        caller republishes in full next time, since the export has already cleared the
        policy's dirty set. `prepare` then `write`, in one go."""
        return self.write(self.prepare(policy, version, full), dense_blob, record)

    def prepare(self, policy: EmbeddingPolicy, version: int, full: bool) -> PublishJob:
        """The part of a publish that reads the policy: its export, packed per bucket (on the
        thread that trains it). `write` must follow before the next `prepare`: the job is
        relative to the books and the manifest of the version before it."""
        t0 = time.perf_counter()
        n = 0 if self.manifest is None else len(self.manifest)
        # without books that match Redis (a new publisher, a failed or odd publish), full
        full = (full or n == 0 or not self._books_match
                or self.redis_records > 2 * self.per_bucket * n)
        export = policy.export(dirty_only=not full)
        t_export = time.perf_counter()
        if full:
            n = wire.bucket_count(int(np.count_nonzero(export.masks)), self.per_bucket)
            self.redis_bytes = 0
            self.redis_records = 0
            self.books.clear()
            manifest = np.zeros(n, np.uint64)
        else:
            assert self.manifest is not None
            manifest = self.manifest.copy()
        packed = wire.pack_buckets(export, n)
        delta, count = self.books.change(packed.set_numbers, packed.set_sizes,
                                         packed.del_numbers)
        self._books_match = False  # until the job's writes are through
        return PublishJob(version, full, n, manifest, packed, delta, count,
                          [int(w) for w in export.widths], t_export - t0,
                          time.perf_counter() - t_export)

    def write(self, job: PublishJob, dense_blob: bytes, record: wire.ModelVersion,
              between: Callable[[], None] | None = None) -> PublishStats:
        """The part of a publish that talks to Redis: steps 1-3 of the module docstring for
        a prepared job (on any one thread; Redis errors and Fenced raise as `publish`'s);
        `between()` after each round trip of bucket writes."""
        t0 = time.perf_counter()
        version, full, n, manifest, packed = (job.version, job.full, job.buckets, job.manifest,
                                              job.packed)
        if not self._limits_checked and packed.max_record_bytes:
            self._check_limits(packed.max_record_bytes)
        superseded, added, removed = self._write_buckets(packed, version, manifest, full,
                                                         between)
        if added - removed != job.count:
            log.warning("%s: Redis added %d and deleted %d records, the books said %d in all; "
                        "the next publish is a full one", self.model, added, removed, job.count)
        self.redis_bytes += job.delta
        self.redis_records += added - removed
        if full:
            superseded = self._stale_keys(manifest)
        dkey, mkey = wire.dense_key(self.model, version), wire.manifest_key(self.model, version)
        old = version - self.dense_versions_kept
        record.version = version
        record.full = full
        record.dense_key = dkey
        record.manifest_key = mkey
        record.buckets = n
        record.widths = job.widths
        record.entries_written = packed.entries_written
        record.entries_deleted = packed.entries_deleted
        record.redis_embedding_bytes = self.redis_bytes
        record.redis_embedding_records = self.redis_records
        record.created_at = time.time()
        old_keys = ([wire.dense_key(self.model, old), wire.manifest_key(self.model, old)]
                    if old >= 1 else [])
        self.r.sadd(wire.MODELS_SET, self.model)  # its own slot: outside the commit
        self._commit_script(
            keys=[dkey, mkey, wire.version_key(self.model), *old_keys],
            args=[dense_blob, wire.manifest_to_bytes(manifest), record.to_json(),
                  wire.versions_channel(self.model), str(version)])
        self.manifest = manifest
        self.books.apply(packed.set_numbers, packed.set_sizes, packed.del_numbers)
        self._books_match = added - removed == job.count
        self.retired.append((version, superseded))
        self._delete_retired(version)
        t1 = time.perf_counter()
        return PublishStats(version, full, packed.entries_written, packed.entries_deleted,
                            packed.record_bytes, job.export_s + job.pack_s + t1 - t0,
                            len(packed.buckets), export_s=job.export_s, pack_s=job.pack_s,
                            redis_s=t1 - t0)
