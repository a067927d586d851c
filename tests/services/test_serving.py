"""Serving against a real redis-server and a real uvicorn (`chunkrec serve` subprocess), with
the trainer fed through a real tansu broker: scores follow training, version swaps under
load drop no request, unseen IDs read as zeros, 4xx messages name the wrong field, /metrics.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from services import wire
from services.stack.infra import ManagedProcess, wait_until
from services.stack.replay import replay_dataset
from services.trainer.loop import StreamTrainer, TrainerConfig
from services.trainer.publisher import RedisPublisher
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from tests.services.conftest import cli_process

SPEC = "synthetic:events=6000,fields=4,vocab=2000,seed=1"
SPEC2 = "synthetic:events=6000,fields=4,vocab=2000,seed=2"  # same schema, other IDs
POLICY = "fiited:dim=32,budget=0.3,interval=10"
FIELDS = ("f0", "f1", "f2", "f3")
MAX_ITEMS = 64
MAX_BODY = 64 * 1024
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def serving(redis_server: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    """`chunkrec serve` on a free port, reading the fixture's Redis; yields its base URL."""
    log = tmp_path_factory.mktemp("serving") / "serve.log"
    env = {"CHUNKREC_REDIS_URL": redis_server.url, "CHUNKREC_SERVING_POLL_S": "0.2",
           "CHUNKREC_SERVING_MAX_ITEMS": str(MAX_ITEMS),
           "CHUNKREC_SERVING_MAX_BODY_BYTES": str(MAX_BODY)}
    with cli_process(["serve"], env, log) as (url, _):
        yield url


def _served_version(url: str, model: str) -> int | None:
    doc = httpx.get(url + "/readyz", timeout=2).json()
    m = doc["models"].get(model)
    return None if m is None else m["version"]


def _wait_served(url: str, model: str, version: int, deadline_s: float = 30) -> None:
    wait_until(lambda: (_served_version(url, model) or 0) >= version, deadline_s,
               f"serving {model} v{version}")


def _record(r: redis.Redis, model: str) -> wire.ModelVersion | None:
    blob = r.get(wire.version_key(model))
    return None if blob is None else wire.ModelVersion.from_json(blob)


def _score(url: str, model: str, ids: np.ndarray) -> dict:
    items = [{"ids": dict(zip(FIELDS, map(int, row), strict=True))} for row in ids]
    resp = httpx.post(url + "/v1/score", json={"model": model, "items": items}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def seeded(redis_server: ManagedProcess) -> tuple[str, torch.nn.Module, object]:
    """A model trained in-process on 1,000 rows and published straight to Redis (no broker):
    (name, network, policy)."""
    name = "seeded"
    ds = open_dataset(SPEC)
    policy = parse_policy(POLICY, num_fields=4)
    net = build_model("dlrm", ds.schema, dim=policy.dim)
    learner = Learner(net, policy)
    learner.step(next(ds.batches(1000)))
    client = redis.Redis.from_url(redis_server.url)
    mem = policy.memory()
    record = wire.ModelVersion(
        model=name, version=1, created_at=time.time(), policy=POLICY, schema="synthetic",
        fields=list(FIELDS), dense_names=[], arch="dlrm", dim=policy.dim, widths=[],
        dense_key="", full=True, entries_written=0, entries_deleted=0,
        embedding_bytes=mem.total_bytes, embedding_value_bytes=mem.value_bytes,
        redis_embedding_bytes=0, redis_embedding_records=0, events_applied=1000,
        events_checksum="0", events_invalid=0, offsets={})
    RedisPublisher(client, name, FIELDS).publish(policy, wire.dense_to_bytes(net.state_dict()),
                                                 1, True, record)
    client.close()
    return name, net, policy


def _expected(net: torch.nn.Module, emb: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(net(emb, None)).numpy()


def test_scores_follow_training_and_match_the_trainer(
        stream_settings: Settings, topic: str, redis_client: redis.Redis, serving: str) -> None:
    model = "serve-follow"
    schema = open_dataset(SPEC).schema
    trainer = StreamTrainer(stream_settings, TrainerConfig(model=model, policy=POLICY,
                                                           schema=schema, topic=topic))
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    ids = next(open_dataset(SPEC).batches(5)).ids  # a fixed set of seen items
    try:
        sent = replay_dataset(stream_settings, SPEC, topic=topic, limit=2000, batch_events=100)
        wait_until(lambda: (rec := _record(redis_client, model)) is not None
                   and rec.events_applied >= sent.events, 60, "first 2000 events applied")
        first = _record(redis_client, model)
        _wait_served(serving, model, first.version)
        before = _score(serving, model, ids)
        assert before["version"] >= first.version

        more = replay_dataset(stream_settings, SPEC2, topic=topic, batch_events=100,
                              limit=2000, id_prefix="more")
        total = sent.events + more.events
        wait_until(lambda: _record(redis_client, model).events_applied >= total, 60,
                   "more events applied")
        _wait_served(serving, model, _record(redis_client, model).version)
        after = _score(serving, model, ids)
        assert after["version"] > before["version"]
        assert not np.allclose(after["scores"], before["scores"], rtol=0, atol=1e-6)
    finally:
        trainer.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()

    # the trainer's final version, served: scores equal the trainer's own network's
    final = _record(redis_client, model)
    _wait_served(serving, model, final.version)
    got = _score(serving, model, ids)
    assert got["version"] == final.version
    emb = trainer.policy.lookup(ids, train=False).detach()
    np.testing.assert_allclose(got["scores"], _expected(trainer.net, emb), rtol=1e-5, atol=1e-6)


def test_unseen_ids_read_as_zeros_and_are_counted(seeded: tuple, serving: str) -> None:
    name, net, _policy = seeded
    _wait_served(serving, name, 1)
    rng = np.random.default_rng(7)
    unseen = rng.integers(-(1 << 62), 1 << 62, size=(3, 4))
    got = _score(serving, name, unseen)
    assert got["unseen_ids"] == 12
    np.testing.assert_allclose(got["scores"], _expected(net, torch.zeros(3, 4, 32)), rtol=1e-5,
                               atol=1e-6)
    # one seen ID among unseen ones: 3 unseen pairs, the seen one read from Redis
    seen = next(open_dataset(SPEC).batches(1)).ids
    mixed = unseen[:1].copy()
    mixed[0, 1] = seen[0, 1]
    got = _score(serving, name, mixed)
    assert got["unseen_ids"] == 3
    # raw feature values are hashed like events' "features": one never trained reads as zero
    resp = httpx.post(serving + "/v1/score", json={"model": name, "items": [
        {"features": {"f0": "never-seen", "f1": 12345, "f2": "x", "f3": "y"}}]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["unseen_ids"] == 4


def test_new_versions_swap_in_under_load_without_failures(
        stream_settings: Settings, topic: str, redis_client: redis.Redis, serving: str) -> None:
    model = "serve-swap"
    schema = open_dataset(SPEC).schema
    settings = stream_settings.replace(publish_interval_s=0.25)
    trainer = StreamTrainer(settings, TrainerConfig(model=model, policy=POLICY, schema=schema,
                                                    topic=topic))
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    ids = next(open_dataset(SPEC).batches(50)).ids
    items = [{"ids": dict(zip(FIELDS, map(int, row), strict=True))} for row in ids]
    try:
        first = replay_dataset(settings, SPEC, topic=topic, limit=500, batch_events=100)
        wait_until(lambda: (rec := _record(redis_client, model)) is not None
                   and rec.events_applied >= first.events, 60, "first events applied")
        _wait_served(serving, model, _record(redis_client, model).version)
        # the rest arrives paced while the clients score, so versions keep coming
        feeder = threading.Thread(target=replay_dataset, daemon=True, kwargs=dict(
            settings=settings, spec=SPEC2, topic=topic, batch_events=50, rate=1500,
            limit=4500, id_prefix="swap"))
        feeder.start()
        statuses, versions = asyncio.run(_hammer(serving, model, items, redis_client,
                                                 total=first.events + 4500))
        feeder.join(timeout=30)
    finally:
        trainer.stop()
        thread.join(timeout=60)
    assert statuses and set(statuses) == {200}, f"failures: {statuses}"
    distinct = sorted(set(versions))
    print(f"{len(statuses)} requests in flight across versions {distinct}")  # shown with -s
    assert len(distinct) >= 3, f"versions seen: {distinct}"  # 2+ swaps while in flight


async def _hammer(url: str, model: str, items: list[dict], r: redis.Redis, total: int,
                  workers: int = 6, max_requests: int = 4000, deadline_s: float = 60
                  ) -> tuple[list[int], list[int]]:
    """Concurrent score requests until the trainer has applied `total` events and serving
    serves that version (bounded by count and time). Returns statuses and versions seen."""
    statuses: list[int] = []
    versions: list[int] = []
    done = asyncio.Event()
    deadline = time.monotonic() + deadline_s

    async def worker(client: httpx.AsyncClient) -> None:
        last = 0
        while not done.is_set() and len(statuses) < max_requests:
            try:
                resp = await client.post("/v1/score", json={"model": model, "items": items})
            except httpx.HTTPError as exc:
                statuses.append(-1)
                versions.append(-1)
                raise AssertionError(f"request failed: {exc!r}") from exc
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                v = resp.json()["version"]
                assert v >= last, "a worker saw versions go backwards"
                last = v
                versions.append(v)

    async def watcher() -> None:
        while time.monotonic() < deadline:
            rec = await asyncio.to_thread(_record, r, model)
            if rec is not None and rec.events_applied >= total and versions \
                    and versions[-1] >= rec.version:
                break
            await asyncio.sleep(0.1)  # poll interval; the condition above decides
        done.set()

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await asyncio.gather(watcher(), *(worker(client) for _ in range(workers)))
    return statuses, versions


def _post(url: str, body: object, **kw: object) -> httpx.Response:
    return httpx.post(url + "/v1/score", json=body, timeout=10, **kw)


def _msgs(resp: httpx.Response) -> str:
    detail = resp.json()["detail"]
    if isinstance(detail, str):
        return detail
    return " | ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail)


def test_bad_requests_get_4xx_naming_the_field(seeded: tuple, serving: str) -> None:
    name = seeded[0]
    _wait_served(serving, name, 1)
    good = {"f0": "a", "f1": "b", "f2": "c", "f3": "d"}

    resp = _post(serving, {"model": "nope", "items": [{"features": good}]})
    assert resp.status_code == 404 and "unknown model 'nope'" in _msgs(resp)
    assert name in _msgs(resp)  # lists the models it serves

    resp = _post(serving, {"model": name, "items": [
        {"features": good}, {"features": {"f0": "a", "f1": "b", "f2": "c", "color": "red"}}]})
    assert resp.status_code == 422
    msg = _msgs(resp)
    assert "body.items.1.features" in msg and "'f3'" in msg and "'color'" in msg

    resp = _post(serving, {"model": name, "items": [{"ids": {**good}}]})
    assert resp.status_code == 422 and "body.items.0.ids.f0" in _msgs(resp)

    resp = _post(serving, {"model": name, "items": [{"features": {**good, "f2": [1, 2]}}]})
    assert resp.status_code == 422 and "body.items.0.features.f2" in _msgs(resp)

    resp = _post(serving, {"model": name, "items": [{"features": good, "ids": {"f0": 1}}]})
    assert resp.status_code == 422 and "exactly one of 'features' and 'ids'" in _msgs(resp)

    resp = _post(serving, {"model": name, "items": [{"features": good}], "colour": 1})
    assert resp.status_code == 422 and "body.colour" in _msgs(resp)

    resp = _post(serving, {"model": name, "items": []})
    assert resp.status_code == 422 and "body.items" in _msgs(resp)

    resp = _post(serving, {"model": name, "items": [{"features": good}], "dense": {"x": 1.0}})
    assert resp.status_code == 422 and "body.dense" in _msgs(resp)

    resp = _post(serving, {"model": "bad name!", "items": [{"features": good}]})
    assert resp.status_code == 422 and "body.model" in _msgs(resp)

    resp = httpx.post(serving + "/v1/score", content=b"{not json",
                      headers={"content-type": "application/json"}, timeout=10)
    assert resp.status_code == 422

    resp = _post(serving, {"model": name, "items": [{"features": good}] * (MAX_ITEMS + 1)})
    assert resp.status_code == 422
    assert "body.items" in _msgs(resp) and f"at most {MAX_ITEMS}" in _msgs(resp)

    big = {"model": name, "items": [{"features": {**good, "f0": "x" * 1024}}] * MAX_ITEMS}
    resp = _post(serving, big)
    assert resp.status_code == 413 and "larger than" in _msgs(resp)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
        yield b'{"model": "seeded", "items": ['
        for _ in range(100):
            yield b'{"features": {"f0": "' + b"y" * 1000 + b'", "f1": "b", "f2": "c", "f3": "d"}},'
        yield b'{"features": {"f0": "a", "f1": "b", "f2": "c", "f3": "d"}}]}'

    resp = httpx.post(serving + "/v1/score", content=chunks(),
                      headers={"content-type": "application/json"}, timeout=10)
    assert resp.status_code == 413

    # still serving after all that
    assert _post(serving, {"model": name, "items": [{"features": good}]}).status_code == 200


def test_health_ready_metrics_and_docs(seeded: tuple, serving: str) -> None:
    name = seeded[0]
    _wait_served(serving, name, 1)
    assert httpx.get(serving + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(serving + "/readyz")
    assert ready.status_code == 200
    doc = ready.json()
    assert doc["ready"] and doc["redis"]
    assert doc["models"][name]["version"] == 1 and doc["models"][name]["stale"] is False
    ids = next(open_dataset(SPEC).batches(4)).ids
    for _ in range(2):  # the second request finds the records in the cache
        _score(serving, name, ids)
    text = httpx.get(serving + "/metrics").text
    for series in ("chunkrec_serving_requests_total", "chunkrec_serving_request_seconds_bucket",
                   "chunkrec_serving_cache_hits_total", "chunkrec_serving_cache_misses_total",
                   "chunkrec_model_version", "chunkrec_model_embedding_bytes",
                   "chunkrec_serving_items_total", "chunkrec_serving_unseen_ids_total"):
        assert series in text, series
    assert f'chunkrec_model_version{{model="{name}"}} 1.0' in text
    hits = [line for line in text.splitlines()
            if line.startswith(f'chunkrec_serving_cache_hits_total{{model="{name}"}}')]
    assert hits and float(hits[0].split()[-1]) > 0
    assert f'chunkrec_model_embedding_bytes{{model="{name}",where="redis"}}' in text
    assert httpx.get(serving + "/docs").status_code == 200
    schema = httpx.get(serving + "/openapi.json").json()
    assert "/v1/score" in schema["paths"]
