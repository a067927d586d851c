"""Publishing one model version from the N ranks of a sharded trainer (services/trainer/sharded.py)
in the wire format of services/trainer/publisher.py: every rank writes its own shard's records,
one rank writes the version record after all of them.

    pub = ShardPublisher(client, model, fields, group=group, lease=lease)   # every rank
    pub.publish(policy, dense_blob, version, full, record)    # every rank, the same step

One publish of version V, on every rank at the same step:

1. the rank writes its shard's export into the buckets under generation G(V, token) (the job's
   one fencing token, so every rank writes the same generation). Buckets are a hash of the ID,
   not of its owner, so two ranks may write one bucket: the bucket script copies the bucket's
   previous generation only when the new one does not exist yet, and never deletes a bucket
   left empty (the other rank may have written it first, or be about to);
2. one all-reduce: the buckets any rank touched, record bytes and counts, entries written; every
   rank then holds the same new manifest (a touched bucket holds generation G(V, token));
3. rank 0 commits (the fenced commit of RedisPublisher: dense weights, manifest, the version
   record, PUBLISH) and retires the superseded generations; a barrier after, so no rank starts
   version V + 1 before V is committed.

A full republish (on start, when a rank asks, or when buckets fill past 2x `per_bucket`) sizes
the buckets for the live records of all shards (an all-reduce).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist

from models.distributed.group import ShardGroup
from models.policy import EmbeddingPolicy
from services import wire
from services.trainer.lease import ModelLease
from services.trainer.publisher import BUCKET_CHANGES_LUA, PublishStats, RedisPublisher

# As publisher._BUCKET_LUA, but shared by the ranks: copy the previous generation only into a
# generation no rank has written yet; keep an emptied bucket (its sentinel). Returns
# {byte change, record change}.
_SHARED_BUCKET_LUA = """
local dst = KEYS[1]
if redis.call('EXISTS', dst) == 0 and KEYS[2] then redis.call('COPY', KEYS[2], dst) end
""" + BUCKET_CHANGES_LUA + """return {delta, count}
"""


class ShardPublisher(RedisPublisher):
    """See module docstring. `lease` is the job's lease: rank 0's, its owner value handed to
    every rank (services/trainer/sharded.py)."""

    def __init__(self, client, model: str, field_names: tuple[str, ...], *,  # noqa: ANN001
                 group: ShardGroup, lease: ModelLease, write_chunk: int = 2000,
                 dense_versions_kept: int = 3, per_bucket: int = 128) -> None:
        super().__init__(client, model, field_names, write_chunk, dense_versions_kept,
                         lease=lease, per_bucket=per_bucket)
        self.group = group

    def _write_shared(self, packed: wire.PackedExport, gen: int, manifest: np.ndarray,
                      full: bool) -> tuple[np.ndarray, int, int]:
        """Step 1: this rank's records; -> (touched int64[n], byte change, record change)."""
        touched = np.zeros(len(manifest), np.int64)
        delta = count = 0
        pipe = self.r.pipeline(transaction=False)
        pending = 0

        def flush() -> None:
            nonlocal delta, count, pending
            for d, c in pipe.execute():
                delta += int(d)
                count += int(c)
            pending = 0

        for w in packed.buckets:
            keys = [wire.bucket_key(self.model, w.bucket, gen)]
            old = 0 if full else int(manifest[w.bucket])
            if old:
                keys.append(wire.bucket_key(self.model, w.bucket, old))
            args: list[bytes | int] = [gen, len(w.names)]
            for name, rec in zip(w.names, w.records, strict=True):
                args += (name, rec)
            args += w.deletes
            pipe.execute_command("EVAL", _SHARED_BUCKET_LUA, len(keys), *keys, *args)
            touched[w.bucket] = 1
            pending += len(w.names) + len(w.deletes) + 1
            if pending >= self.write_chunk:
                flush()
        if pending:
            flush()
        return touched, delta, count

    def publish(self, policy: EmbeddingPolicy, dense_blob: bytes, version: int, full: bool,
                record: wire.ModelVersion | None) -> PublishStats:
        """Every rank, the same step (module docstring). `full`: this rank asks for a full
        republish; `record` (rank 0's; None elsewhere) gets the Redis side filled in."""
        t0 = time.perf_counter()
        g = self.group
        n = 0 if self.manifest is None else len(self.manifest)
        want = int(full or n == 0 or self.redis_records > 2 * self.per_bucket * n)
        full = bool(g.max(torch.tensor([want], dtype=torch.int64))[0])
        export = policy.export(dirty_only=not full)
        if full:
            live = g.sum(torch.tensor([int(np.count_nonzero(export.masks))], dtype=torch.int64))
            n = wire.bucket_count(int(live[0]), self.per_bucket)
            self.redis_bytes = self.redis_records = 0
            manifest = np.zeros(n, np.uint64)
        else:
            assert self.manifest is not None
            manifest = self.manifest.copy()
        packed = wire.pack_export(export, n)
        if self.lease.me is None:
            raise RuntimeError("the job's lease was not handed to this rank")
        gen = wire.generation(version, self.lease.token or 0)
        touched, delta, count = self._write_shared(packed, gen, manifest, full)
        sums = g.sum(torch.from_numpy(np.concatenate(
            [touched, [delta, count, packed.entries_written, packed.entries_deleted]])))
        sums_np = sums.numpy()
        hit = sums_np[:n] > 0
        delta, count, written, deleted = (int(v) for v in sums_np[n:])
        self.redis_bytes += delta
        self.redis_records += count
        superseded = [] if full else [
            wire.bucket_key(self.model, int(b), int(manifest[b]))
            for b in np.flatnonzero(hit & (manifest != 0))]
        manifest[hit] = gen
        if g.rank == 0:
            assert record is not None
            if full:
                superseded = self._stale_keys(manifest)
            dkey = wire.dense_key(self.model, version)
            mkey = wire.manifest_key(self.model, version)
            old = version - self.dense_versions_kept
            record.version = version
            record.full = full
            record.dense_key = dkey
            record.manifest_key = mkey
            record.buckets = n
            record.widths = [int(w) for w in export.widths]
            record.entries_written = written
            record.entries_deleted = deleted
            record.redis_embedding_bytes = self.redis_bytes
            record.redis_embedding_records = self.redis_records
            record.created_at = time.time()
            old_keys = ([wire.dense_key(self.model, old), wire.manifest_key(self.model, old)]
                        if old >= 1 else [])
            self.r.sadd(wire.MODELS_SET, self.model)
            self._commit_script(
                keys=[dkey, mkey, wire.version_key(self.model), *old_keys],
                args=[dense_blob, wire.manifest_to_bytes(manifest), record.to_json(),
                      wire.versions_channel(self.model), str(version)])
            self.retired.append((version, superseded))
            self._delete_retired(version)
        self.manifest = manifest
        dist.barrier(group=g.group)  # version V is committed before any rank writes V + 1
        return PublishStats(version, full, written, deleted, int(packed.record_bytes),
                            time.perf_counter() - t0, int(hit.sum()))
