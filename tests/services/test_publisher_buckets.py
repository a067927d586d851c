"""The publisher's bucketed, copy-on-write versions against a real redis-server: what readers
of a version find stays until retention ends; a fenced-out publisher's writes are never named
by a manifest; buckets are re-sized when they fill; byte and record counts stay exact."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from services import wire
from services.trainer.lease import Fenced, ModelLease
from services.trainer.publisher import RedisPublisher
from tests.services.fake_policy import HandPolicy

WIDTHS = (4, 4, 8)


def _record(name: str) -> wire.ModelVersion:
    return wire.ModelVersion(
        model=name, version=0, created_at=0.0, policy="x", schema="t", fields=["a", "b"],
        dense_names=[], arch="dlrm", dim=16, widths=[], dense_key="", full=False,
        entries_written=0, entries_deleted=0, embedding_bytes=0, embedding_value_bytes=0,
        redis_embedding_bytes=0, redis_embedding_records=0, events_applied=0,
        events_checksum="0", events_invalid=0, offsets={})


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)


def _check_reads(r: redis.Redis, name: str, policy: HandPolicy, f: np.ndarray,
                 k: np.ndarray) -> wire.ModelVersion:
    rec = wire.ModelVersion.from_json(r.get(wire.version_key(name)))
    got, found = wire.unpack_records(wire.read_current(r, name, f, k), WIDTHS)
    np.testing.assert_array_equal(got, policy.expected(f, k))
    live = [(a, b) in policy.entries for a, b in zip(f.tolist(), k.tolist(), strict=True)]
    assert found.tolist() == live
    assert rec.redis_embedding_records == len(policy.entries)
    return rec


def test_versions_stay_readable_until_retention_and_counts_stay_exact(
        redis_client: redis.Redis) -> None:
    name, policy = "pub-retain", HandPolicy(WIDTHS)
    f, k = np.arange(400) % 2, np.arange(400, dtype=np.int64) * 7919
    policy.set(f, k, np.full(400, 3), _rows(400, 0))
    pub = RedisPublisher(redis_client, name, ("a", "b"), dense_versions_kept=2, per_bucket=16)
    pub.publish(policy, b"", 1, True, _record(name))  # type: ignore[arg-type]
    manifests = {1: wire.manifest_from_bytes(redis_client.get(wire.manifest_key(name, 1)))}
    for v in range(2, 6):
        pick = np.random.default_rng(v).choice(400, 30, replace=False)
        policy.set(f[pick], k[pick], np.full(30, 1), _rows(30, v))
        policy.evict(f[pick[:3]], k[pick[:3]])
        pub.publish(policy, b"", v, False, _record(name))  # type: ignore[arg-type]
        manifests[v] = wire.manifest_from_bytes(redis_client.get(wire.manifest_key(name, v)))
        rec = _check_reads(redis_client, name, policy, f, k)
        assert rec.redis_embedding_bytes == sum(
            len(x) for x in wire.read_current(redis_client, name, f, k) if x)
    keys = set(redis_client.scan_iter(match=wire.bucket_pattern(name)))

    def named(v: int) -> set[bytes]:
        return {wire.bucket_key(name, b, g).encode()
                for b, g in enumerate(manifests[v].tolist()) if g}

    assert named(5) | named(4) <= keys  # the current and the previous version: complete
    last_in_2 = named(1) | named(2)  # generations no version after 2 names: deleted
    assert last_in_2 - named(3) - named(4) - named(5)
    assert not (last_in_2 - named(3) - named(4) - named(5)) & keys
    assert redis_client.get(wire.manifest_key(name, 3)) is None  # beyond dense_versions_kept


def test_a_fenced_publisher_writes_nothing_a_manifest_names(redis_client: redis.Redis) -> None:
    name = "pub-fence"
    f, k = np.zeros(100, np.int64), np.arange(100, dtype=np.int64)
    old_pol, new_pol = HandPolicy(WIDTHS), HandPolicy(WIDTHS)
    old_pol.set(f, k, np.full(100, 7), _rows(100, 1))
    new_pol.set(f, k, np.full(100, 7), _rows(100, 2))
    old = RedisPublisher(redis_client, name, ("a", "b"))
    old.publish(old_pol, b"", 1, True, _record(name))  # type: ignore[arg-type]
    lease = ModelLease(redis_client, name)
    lease.acquire(take_over=True)
    RedisPublisher(redis_client, name, ("a", "b"), lease=lease).publish(
        new_pol, b"", 2, True, _record(name))  # type: ignore[arg-type]
    old_pol.set(f, k, np.full(100, 1), _rows(100, 3))
    with pytest.raises(Fenced):
        old.publish(old_pol, b"", 3, False, _record(name))  # type: ignore[arg-type]
    rec = _check_reads(redis_client, name, new_pol, f, k)
    assert rec.version == 2
    stray = [key for key in redis_client.scan_iter(match=wire.bucket_pattern(name))
             if wire.generation_version(int(key.rsplit(b":", 1)[1])) == 3]
    assert stray  # the zombie did write its generations ...
    manifest = wire.manifest_from_bytes(redis_client.get(rec.manifest_key))
    assert not {wire.generation_version(int(g)) for g in manifest if g} & {3}  # ... unnamed


def test_buckets_are_resized_when_they_fill(redis_client: redis.Redis) -> None:
    name, policy = "pub-grow", HandPolicy(WIDTHS)
    f, k = np.zeros(500, np.int64), np.arange(500, dtype=np.int64)
    policy.set(f[:20], k[:20], np.full(20, 7), _rows(20, 0))
    pub = RedisPublisher(redis_client, name, ("a", "b"), per_bucket=8)
    st = pub.publish(policy, b"", 1, True, _record(name))  # type: ignore[arg-type]
    assert st.full and _check_reads(redis_client, name, policy, f, k).buckets == 4
    policy.set(f[20:], k[20:], np.full(480, 7), _rows(480, 1))
    st = pub.publish(policy, b"", 2, False, _record(name))  # type: ignore[arg-type]
    assert not st.full  # the records land in the 4 buckets first ...
    st = pub.publish(policy, b"", 3, False, _record(name))  # type: ignore[arg-type]
    rec = _check_reads(redis_client, name, policy, f, k)
    assert st.full and rec.buckets == 64  # ... then a full republish re-sizes them


class _Readmitted(HandPolicy):
    """Lists an evicted ID among the deleted even after it was set again (the real store's
    export does: its eviction log is not pruned by a later admission)."""

    def set(self, fields: np.ndarray, keys: np.ndarray, masks: np.ndarray,
            rows: np.ndarray) -> None:
        evicted = set(self.evicted)
        super().set(fields, keys, masks, rows)
        self.evicted |= evicted


def test_an_id_evicted_and_admitted_again_keeps_its_record(redis_client: redis.Redis) -> None:
    name, policy = "pub-readmit", _Readmitted(WIDTHS)
    f, k = np.zeros(50, np.int64), np.arange(50, dtype=np.int64)
    policy.set(f, k, np.full(50, 3), _rows(50, 0))
    pub = RedisPublisher(redis_client, name, ("a", "b"), per_bucket=8)
    pub.publish(policy, b"", 1, True, _record(name))  # type: ignore[arg-type]
    policy.evict(f[:5], k[:5])
    policy.set(f[:5], k[:5], np.full(5, 1), _rows(5, 1))  # back before the next publish
    pub.publish(policy, b"", 2, False, _record(name))  # type: ignore[arg-type]
    rec = _check_reads(redis_client, name, policy, f, k)
    assert rec.redis_embedding_bytes == sum(
        len(x) for x in wire.read_current(redis_client, name, f, k) if x)


def test_books_that_disagree_with_redis_make_the_next_publish_full(
        redis_client: redis.Redis) -> None:
    """A record removed behind the publisher's back: the bucket script's counts disagree with
    the books, so the next publish rewrites everything and the counts are exact again."""
    name, policy = "pub-books", HandPolicy(WIDTHS)
    f, k = np.zeros(60, np.int64), np.arange(60, dtype=np.int64)
    policy.set(f, k, np.full(60, 7), _rows(60, 0))
    pub = RedisPublisher(redis_client, name, ("a", "b"), per_bucket=8)
    pub.publish(policy, b"", 1, True, _record(name))  # type: ignore[arg-type]
    rec = wire.ModelVersion.from_json(redis_client.get(wire.version_key(name)))
    manifest = wire.manifest_from_bytes(redis_client.get(rec.manifest_key))
    b = int(wire.bucket_of(f[:1], k[:1], len(manifest))[0])
    redis_client.hdel(wire.bucket_key(name, b, int(manifest[b])),
                      wire.hash_fields(f[:1], k[:1])[0])
    policy.set(f[:1], k[:1], np.full(1, 1), _rows(1, 1))
    assert not pub.publish(policy, b"", 2, False, _record(name)).full  # type: ignore[arg-type]
    policy.set(f[1:2], k[1:2], np.full(1, 1), _rows(1, 2))
    assert pub.publish(policy, b"", 3, False, _record(name)).full  # type: ignore[arg-type]
    rec = _check_reads(redis_client, name, policy, f, k)
    assert rec.redis_embedding_bytes == sum(
        len(x) for x in wire.read_current(redis_client, name, f, k) if x)
    assert not pub.publish(policy, b"", 4, False, _record(name)).full  # type: ignore[arg-type]
