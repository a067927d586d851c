"""The serving tier's embedding cache and raw-value hasher, and the scoring path's gather against
a real redis-server: every cell reads its own record, through cache hits, misses, LRU
eviction, concurrent requests and caching turned off."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
import torch

from services import wire
from services.serving.embedding_cache import EmbeddingCache
from services.serving.embedding_reads import gather_embeddings
from services.serving.metrics import ServingMetrics
from services.serving.registry import ModelRegistry
from services.serving.scorer import LoadedModel, RawIdHasher
from services.stack.infra import ManagedProcess
from services.trainer.publisher import RedisPublisher
from storage.batch import DatasetSchema, hash_values
from storage.settings import Settings
from tests.services.fake_policy import HandPolicy

WIDTHS = (4, 4, 8)
FIELDS = ("user", "item", "genre")


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, sum(WIDTHS))).astype(np.float32)


def test_cache_round_trip_and_cached_misses() -> None:
    cache = EmbeddingCache(100, sum(WIDTHS))
    fields, keys = np.array([0, 0, 1]), np.array([7, -3, 7])
    assert (cache.lookup(fields, keys) == -1).all()
    rows = _rows(3)
    cache.insert(fields, keys, rows, np.array([True, False, True]))
    slots = cache.lookup(np.array([1, 0, 0, 0]), np.array([7, 7, -3, 7]))
    assert (slots >= 0).all() and slots[1] == slots[3]
    np.testing.assert_array_equal(cache.rows[slots], rows[[2, 0, 1, 0]])
    assert cache.found[slots].tolist() == [True, True, False, True]
    assert len(cache) == 3 and cache.nbytes > rows.nbytes


def test_cache_evicts_least_recently_used_and_never_the_current_request() -> None:
    cap = 64
    cache = EmbeddingCache(cap, 2)
    fields = np.zeros(cap, np.int64)
    cache.lookup(fields, np.arange(cap))
    cache.insert(fields, np.arange(cap), np.ones((cap, 2), np.float32), np.ones(cap, bool))
    hot = np.arange(0, cap, 2)  # touched again: the odd keys are now the oldest
    cache.lookup(np.zeros(len(hot), np.int64), hot)
    new = np.arange(1000, 1010)
    cache.insert(np.zeros(10, np.int64), new, np.full((10, 2), 5, np.float32),
                 np.ones(10, bool))
    assert len(cache) <= cap
    assert (cache.lookup(np.zeros(len(hot), np.int64), hot) >= 0).all()
    assert (cache.lookup(np.zeros(10, np.int64), new) >= 0).all()
    odd = cache.lookup(np.zeros(cap // 2, np.int64), np.arange(1, cap, 2))
    assert (odd < 0).sum() >= 10
    # one request larger than the whole cache: nothing it reads is evicted under it
    cache.lookup(np.zeros(200, np.int64), np.arange(5000, 5200))
    slots = cache.insert(np.zeros(200, np.int64), np.arange(5000, 5200),
                         np.arange(400, dtype=np.float32).reshape(200, 2), np.ones(200, bool))
    assert len(set(slots.tolist())) == 200
    np.testing.assert_array_equal(cache.rows[slots][:, 0], np.arange(0, 400, 2))


def test_hasher_matches_hash_values_for_strings_and_ints() -> None:
    hasher = RawIdHasher(capacity=4)
    raw = ["196", 196, "x", "242", "x", 7]
    want = hash_values(np.array([str(v) for v in raw], dtype=object))
    np.testing.assert_array_equal(hasher.hash(raw), want)  # past capacity: starts over
    np.testing.assert_array_equal(hasher.hash(raw[:2]), want[:2])
    np.testing.assert_array_equal(hasher.hash(raw), want)


def _record(name: str, version: int = 1) -> wire.ModelVersion:
    return wire.ModelVersion(
        model=name, version=version, created_at=0.0, policy="fiited", schema="t",
        fields=list(FIELDS), dense_names=[], arch="dlrm", dim=sum(WIDTHS), widths=list(WIDTHS),
        dense_key="", full=True, entries_written=0, entries_deleted=0, embedding_bytes=0,
        embedding_value_bytes=0, redis_embedding_bytes=0, redis_embedding_records=0,
        events_applied=0, events_checksum="0", events_invalid=0, offsets={}, metrics={})


def _model(client: redis.Redis, name: str, capacity: int) -> LoadedModel:
    """The current version of `name` in Redis as serving loads it (no network)."""
    record = wire.ModelVersion.from_json(client.get(wire.version_key(name)))
    manifest = wire.manifest_from_bytes(client.get(record.manifest_key))
    cache = EmbeddingCache(capacity, sum(WIDTHS), record.version)
    return LoadedModel(record, None, cache, 0.0, manifest)  # type: ignore[arg-type]


def _publish(client: redis.Redis, policy: HandPolicy, pub: RedisPublisher, name: str,
             version: int, full: bool) -> None:
    pub.publish(policy, b"", version, full, _record(name, version))  # type: ignore[arg-type]


@pytest.mark.parametrize("capacity", [0, 40, 100_000])
def test_gather_reads_every_cell_from_its_record(redis_server: ManagedProcess,
                                                 capacity: int) -> None:
    """300 known IDs per field in Redis (random masks: pruned chunks read zero), 30 unknown;
    40 concurrent requests of 64 x 3 random cells each. Every cell equals its record, under
    any cache size (40 entries forces evictions while other requests are awaiting Redis)."""
    name = f"cache{capacity}"
    rng = np.random.default_rng(capacity)
    n = 300
    truth: dict[tuple[int, int], np.ndarray] = {}
    client = redis.Redis.from_url(redis_server.url)
    policy = HandPolicy(WIDTHS)
    for f in range(len(FIELDS)):
        keys = rng.integers(-(2**62), 2**62, n)
        rows = _rows(n, seed=f)
        masks = rng.integers(1, 1 << len(WIDTHS), n)
        policy.set(np.full(n, f), keys, masks, rows)
        for k, row, mask in zip(keys, rows, masks, strict=True):
            cols = np.repeat([(int(mask) >> c) & 1 for c in range(len(WIDTHS))], WIDTHS)
            truth[(f, int(k))] = row * cols
    _publish(client, policy, RedisPublisher(client, name, FIELDS, per_bucket=16), name, 1, True)
    known = np.array(list(truth.keys()), dtype=np.int64)
    model = _model(client, name, capacity)

    def request(seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        ids = np.empty((64, len(FIELDS)), np.int64)
        for f in range(len(FIELDS)):
            pool = known[known[:, 0] == f, 1]
            ids[:, f] = r.choice(np.concatenate([pool, np.arange(30) + 10**15]), 64)
        return ids

    async def run() -> list[tuple[np.ndarray, tuple]]:
        aclient = aioredis.Redis.from_url(redis_server.url)
        try:
            batches = [request(s) for s in range(40)]
            outs = await asyncio.gather(*(gather_embeddings(model, ids, aclient)
                                          for ids in batches))
            return list(zip(batches, outs, strict=True))
        finally:
            await aclient.aclose()

    unseen_total = 0
    for ids, (emb, unseen, hits, misses) in asyncio.run(run()):
        want = np.zeros((64, len(FIELDS), sum(WIDTHS)), np.float32)
        pairs = set()
        for b in range(64):
            for f in range(len(FIELDS)):
                pairs.add((f, int(ids[b, f])))
                if (f, int(ids[b, f])) in truth:
                    want[b, f] = truth[(f, int(ids[b, f]))]
        np.testing.assert_array_equal(emb, want)
        assert unseen == sum(p not in truth for p in pairs)
        assert hits + misses == len(pairs)
        unseen_total += unseen
    assert unseen_total > 0
    if capacity == 0:
        assert len(model.cache) == 0
    else:
        assert len(model.cache) <= max(capacity, 64 * len(FIELDS))


def test_cache_moves_to_the_next_version_minus_the_buckets_that_changed(
        redis_server: ManagedProcess) -> None:
    """v1 cached whole; v2 changes 20 IDs: the swap keeps every entry of an unchanged bucket
    and drops the changed buckets' entries, so v2 reads its own records, hits elsewhere. A
    request still on v1 after the swap reads v1's records without the cache."""
    name = "carry"
    client = redis.Redis.from_url(redis_server.url)
    policy, rng = HandPolicy(WIDTHS), np.random.default_rng(1)
    keys = np.arange(2000, dtype=np.int64)
    policy.set(np.zeros(2000, np.int64), keys, np.full(2000, 7), _rows(2000, 1))
    pub = RedisPublisher(client, name, FIELDS, per_bucket=16)
    _publish(client, policy, pub, name, 1, True)
    v1 = _model(client, name, 10_000)
    ids = np.stack([keys, keys, keys], axis=1)  # fields 1, 2 have no records: zeros
    changed = rng.choice(keys, 20, replace=False)
    registry = ModelRegistry(Settings(), None, ServingMetrics())  # type: ignore[arg-type]

    async def run() -> None:
        aclient = aioredis.Redis.from_url(redis_server.url)
        try:
            old, *_ = await gather_embeddings(v1, ids, aclient)
            policy.set(np.zeros(20, np.int64), changed, np.full(20, 1), _rows(20, 2))
            _publish(client, policy, pub, name, 2, False)
            v2 = _model(client, name, 10_000)
            flipped = wire.changed_buckets(v1.manifest, v2.manifest)
            assert flipped is not None and 0 < flipped.sum() < len(flipped)
            cached = len(v1.cache)
            registry._carry_cache(v1, v2)
            assert v2.cache is v1.cache and v1.cache.version == 2
            b = wire.bucket_of(np.tile([0, 1, 2], 2000), ids.reshape(-1), len(flipped))
            assert len(v2.cache) == cached - len(np.unique(ids.reshape(-1)[flipped[b]] * 3
                                                            + np.tile([0, 1, 2], 2000)[flipped[b]]))
            new, _, hits, misses = await gather_embeddings(v2, ids, aclient)
            assert hits > misses > 0
            want = policy.expected(np.zeros(2000, np.int64), keys)
            np.testing.assert_array_equal(new[:, 0], want)
            assert not new[:, 1:].any()
            stale, *_ = await gather_embeddings(v1, ids, aclient)  # v1, after the swap
            np.testing.assert_array_equal(stale, old)
            assert not np.array_equal(stale, new)
        finally:
            await aclient.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(("arch", "dense"), [("dlrm", ()), ("dlrm", ("age", "hour")),
                                             ("mlp", ()), ("mlp", ("age",))])
def test_traced_network_scores_as_the_eager_one(arch: str, dense: tuple[str, ...]) -> None:
    from models.networks import build_model

    model = LoadedModel(_record(f"traced-{arch}"), None,  # type: ignore[arg-type]
                        EmbeddingCache(10, sum(WIDTHS)), 0.0)
    model.record.dense_names = list(dense)
    model.schema = DatasetSchema("t", fields=FIELDS, dense=dense)
    model.net = build_model(arch, model.schema, dim=sum(WIDTHS), seed=3).eval()
    assert model.compile()
    rng = np.random.default_rng(0)
    for rows in (1, 5, 100):
        emb = rng.normal(size=(rows, len(FIELDS), sum(WIDTHS))).astype(np.float32)
        d = rng.normal(size=(rows, len(dense))).astype(np.float32) if dense else None
        traced = model.predict(emb, d)
        with torch.no_grad():
            want = torch.sigmoid(model.net(torch.from_numpy(emb),
                                           None if d is None else torch.from_numpy(d))).numpy()
        np.testing.assert_allclose(traced, want, rtol=1e-5, atol=1e-6)
