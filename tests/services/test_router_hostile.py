"""The router against hostile and mistaken clients (issue 12): what it sends to Kafka stays
within what the joiner, the trainer and the database accept; client mistakes are 4xx, never
5xx; clients neither see nor choose their arm and cannot write unlimited labelled data; a
saturated serving tier sheds load with 503 + Retry-After; an unmigrated database stops the
router at start. The router runs on a real migrated database and sends to the real broker
(serving is an httpx mock transport, as in test_router.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from services import wire
from services.experiments.router.app import create_app
from services.experiments.router.assignment import assign_arm
from services.stack.infra import ManagedProcess, create_topics
from storage.settings import Settings

KEY = "hostile-admin-key"
ADMIN = {"X-API-Key": KEY}
ARMS = [{"name": "ctl", "model": "fixed64", "weight": 1, "control": True},
        {"name": "new", "model": "fiited", "weight": 1}]
FIELDS = {"user", "item", "genre"}  # the fake serving model's schema
SERVING_MAX_BODY = 256 * 1024


def serving_like(request: httpx.Request) -> httpx.Response:
    """Answers like services/serving: 413 past its body limit, 422 (pydantic's shape, locs
    under body.items) for fields outside the model's schema, else a score per item."""
    if len(request.content) > SERVING_MAX_BODY:
        return httpx.Response(413, json={"detail": f"request body larger than "
                                                   f"{SERVING_MAX_BODY} bytes"})
    body = orjson.loads(request.content)
    errors = [{"type": "value_error", "loc": ["body", "items", i, "features"],
               "msg": f"unknown fields {sorted(set(it['features']) - FIELDS)}; expected "
                      f"exactly {sorted(FIELDS)}"}
              for i, it in enumerate(body["items"]) if not set(it["features"]) <= FIELDS]
    if errors:
        return httpx.Response(422, json={"detail": errors})
    scores = [1.0 / (1 + i) for i in range(len(body["items"]))]
    return httpx.Response(200, json={"model": body["model"], "version": 3, "scores": scores,
                                     "unseen_ids": 0})


class ExposureTap:
    """Reads what the router sent to Kafka `exposures` from now on."""

    def __init__(self, bootstrap: str) -> None:
        create_topics(bootstrap, {wire.EXPOSURES_TOPIC: 1})
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        parts = [TopicPartition(wire.EXPOSURES_TOPIC, p)
                 for p in self.consumer.partitions_for_topic(wire.EXPOSURES_TOPIC) or {0}]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for p in parts:  # resolve the end offsets now, before the test sends anything
            self.consumer.position(p)

    def until(self, request_id: str, deadline_s: float = 30.0) -> list[tuple[int, dict]]:
        """(size in bytes, exposure) of every message up to the one of `request_id`."""
        seen: list[tuple[int, dict]] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    seen.append((len(r.value), orjson.loads(r.value)))
            if any(e["request_id"] == request_id for _, e in seen):
                return seen
        raise AssertionError(f"exposure {request_id} not on Kafka after {deadline_s} s")

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def tap(broker: ManagedProcess) -> Iterator[ExposureTap]:
    t = ExposureTap(broker.address)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def router(broker: ManagedProcess, migrated_db: str) -> Callable:
    """router(handler=serving_like, **settings) -> context manager of a TestClient on a
    started experiment, sending to the real broker."""

    @contextmanager
    def make(handler=serving_like, **overrides) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
        settings = Settings(database_url=migrated_db, router_api_key=KEY,
                            router_config_ttl_s=0.0, serving_url="http://serving.internal:8000",
                            kafka_bootstrap=broker.address, **overrides)
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        with TestClient(create_app(settings, http=http)) as c:
            r = c.post("/v1/experiments", headers=ADMIN,
                       json={"name": f"h-{uuid.uuid4().hex[:8]}", "salt": "s", "arms": ARMS})
            assert r.status_code == 201, r.text
            c.post(f"/v1/experiments/{r.json()['id']}/start", headers=ADMIN)
            c.experiment_id = r.json()["id"]  # type: ignore[attr-defined]
            yield c

    return make


def rank_body(unit: object = "u1", items: list[str] | None = None, **extra) -> dict:
    cands = [{"item": i, "features": {"item": i, "genre": "Drama"}}
             for i in (items or ["1", "2", "3"])]
    return {"unit_id": unit, "candidates": cands, "context": {"user": "u1"}, **extra}


class NullSink:
    def send(self, topic: str, key: bytes, value: bytes) -> None:
        pass


def no_internals(resp: httpx.Response) -> None:
    assert "serving.internal" not in resp.text and "http://" not in resp.text, resp.text


# --- finding 1: sizes and contents checked before anything reaches Kafka -------------------


def test_oversized_strings_and_exposures_never_reach_kafka(router, tap) -> None:
    with router(router_max_exposure_bytes=64 * 1024) as c:
        bad = [
            rank_body(unit='"' * 300_000),  # 0.6 MB, under the body limit: killed the trainer
            rank_body(unit="u" * 257),  # exposures.unit_id is VARCHAR(256)
            rank_body(unit="nul\x00"),  # PostgreSQL text cannot hold NUL
            rank_body(items=["1", "x" * 220]),  # exp:{request_id}:{item} fits 256 chars
            {**rank_body(), "context": {"user": "v" * (wire.MAX_STRING_CHARS + 1)}},
            {**rank_body(), "context": {'"' * 100: "1"}},  # a feature name is schema-like
            {**rank_body(), "context": {"f" * 65: "1"}},
        ]
        for body in bad:
            r = c.post("/v1/rank", json=body)
            assert r.status_code == 422, (r.status_code, r.text[:300])
            assert len(r.content) < 10_000  # the input is not echoed back
        # each value within bounds, but candidates x features past the exposure limit
        wide = {"unit_id": "u1", "context": {"user": "u1"},
                "candidates": [{"item": str(i), "features": {f"f{k}": "v" * 200
                                                             for k in range(10)}}
                               for i in range(50)]}
        r = c.post("/v1/rank", json=wide)
        assert r.status_code == 413 and "CHUNKREC_ROUTER_MAX_EXPOSURE_BYTES" in r.text, r.text
        assert c.post("/v1/feedback", json={"request_id": "r", "item": "x" * 220,
                                            "clicked": True}).status_code == 422
        ok = c.post("/v1/rank", json=rank_body())
        assert ok.status_code == 200, ok.text
    seen = tap.until(ok.json()["request_id"])
    assert [e["request_id"] for _, e in seen] == [ok.json()["request_id"]]
    assert all(size <= 64 * 1024 for size, _ in seen)


# --- finding 2: repeated items and non-finite scores -----------------------------------------


def test_repeated_item_is_422_naming_it(router, tap) -> None:
    with router() as c:
        r = c.post("/v1/rank", json=rank_body(items=["7", "8", "item-9", "8"]))
        assert r.status_code == 422 and "'8'" in r.text, r.text
        ok = c.post("/v1/rank", json=rank_body(items=["7", "8"]))
    assert [e["request_id"] for _, e in tap.until(ok.json()["request_id"])] == \
        [ok.json()["request_id"]]


@pytest.mark.parametrize("scores", [[0.5, None, 0.2], [0.5, float("nan"), 0.2], [0.5, 0.2]])
def test_non_finite_or_missing_score_from_serving_is_502(router, tap, scores) -> None:
    def serving(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if body["items"][0]["features"]["item"] == "ok":
            return serving_like(request)
        # orjson writes NaN as null; json.dumps writes it as NaN, which orjson will not read
        return httpx.Response(200, content=orjson.dumps(
            {"model": body["model"], "version": 1, "scores": scores, "unseen_ids": 0}))

    unit = f"u-{uuid.uuid4().hex[:8]}"  # this test's own: the tap may hold an earlier one's
    with router(handler=serving) as c:
        r = c.post("/v1/rank", json=rank_body(unit, items=["1", "2", "3"]))
        assert r.status_code == 502 and "score" in r.json()["detail"], r.text
        no_internals(r)
        ok = c.post("/v1/rank", json=rank_body(unit, items=["ok"]))
    # the failed request is logged as the arm's failure (nothing shown: its error rate), and
    # none of its unscored items reaches the exposure
    seen = [e for _, e in tap.until(ok.json()["request_id"]) if e["unit_id"] == unit]
    assert [e["request_id"] for e in seen][-1] == ok.json()["request_id"] and len(seen) == 2
    assert seen[0]["shown"] == [] and seen[0]["model_version"] == 0
    assert seen[0]["arm"] == seen[1]["arm"] and len(seen[1]["shown"]) == 1


# --- finding 5: client mistakes are 4xx with serving's reason --------------------------------


def test_client_mistakes_are_4xx_not_5xx(router) -> None:
    with router() as c:
        past_int64 = {**rank_body(), "context": {"user": 1 << 63}}
        assert c.post("/v1/rank", json=past_int64).status_code == 422
        assert c.post("/v1/rank", json=rank_body(unit=1 << 63)).status_code == 422
        for raw in (b'{"unit_id": "\\ud800", "candidates": [{"item": "1"}]}',
                    b'{"unit_id": "u", "candidates": [{"item": "\\udc00"}]}',
                    b'{"unit_id": "u", "candidates": [{"item": "1", '
                    b'"features": {"genre": "\\ud83d"}}]}',
                    b'{"request_id": "\\ud800", "item": "1", "clicked": true}'):
            path = "/v1/feedback" if b"request_id" in raw else "/v1/rank"
            r = c.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422, (raw, r.status_code, r.text)
        # serving's 422 (a field outside the model's schema) comes back as a 422 with its
        # reason, located at the router's candidate
        unknown = rank_body()
        unknown["candidates"][1]["features"]["colour"] = "red"
        r = c.post("/v1/rank", json=unknown)
        assert r.status_code == 422 and "colour" in r.text, r.text
        assert r.json()["detail"][0]["loc"][:3] == ["body", "candidates", 1]
        no_internals(r)
        # the context copied into every candidate grows past serving's body limit: 413
        many = {"unit_id": "u1", "candidates": [{"item": str(i)} for i in range(100)],
                "context": {"user": "u" * 1000, "item": "i" * 1000, "genre": "g" * 1000}}
        r = c.post("/v1/rank", json=many)
        assert r.status_code == 413, (r.status_code, r.text)
        no_internals(r)
    # what the router accepts, serving's schema accepts: the edges of each bound
    from services.experiments.router.schemas import RankRequest
    from services.serving.schemas import ScoreRequest

    edge = RankRequest.model_validate({
        "unit_id": wire.INT64_MIN, "context": {"user": "u" * wire.MAX_STRING_CHARS},
        "candidates": [{"item": "1", "features": {"a.b-c_9": wire.INT64_MAX, "e": ""}}]})
    ScoreRequest.model_validate({"model": "m", "items": [
        {"features": {**edge.context, **c.features}} for c in edge.candidates]})


# --- finding 6: arms hidden, candidates and units capped, item features server-side ---------


def test_rank_response_hides_the_arm_and_admin_sees_it(router, tap) -> None:
    with router() as c:
        r = c.post("/v1/rank", json=rank_body(unit="alice"))
        assert r.status_code == 200, r.text
        out = r.json()
        assert set(out) == {"request_id", "experiment_id", "phase", "items"}
        assert all(set(it) == {"item", "position"} for it in out["items"])
        path = f"/v1/experiments/{c.experiment_id}/assignment"
        assert c.get(path, params={"unit_id": "alice"}).status_code == 401
        assigned = c.get(path, params={"unit_id": "alice"}, headers=ADMIN)
        assert assigned.status_code == 200, assigned.text
    expected = ARMS[assign_arm("s", 1, "alice", [1, 1])]
    assert assigned.json()["arm"] == expected["name"]
    assert assigned.json()["model"] == expected["model"]
    exposure = tap.until(out["request_id"])[-1][1]
    assert (exposure["arm"], exposure["model"]) == (expected["name"], expected["model"])


def test_candidates_and_requests_per_unit_are_capped(router) -> None:
    with router(router_max_candidates=4, router_unit_requests_per_minute=3) as c:
        r = c.post("/v1/rank", json=rank_body(items=[str(i) for i in range(5)]))
        assert r.status_code == 422 and "at most 4" in r.text, r.text
        first = c.post("/v1/rank", json=rank_body(unit="greedy"))
        assert first.status_code == 200
        assert c.post("/v1/rank", json=rank_body(unit="greedy")).status_code == 200
        fb = {"request_id": first.json()["request_id"], "item": "1", "clicked": True}
        assert c.post("/v1/feedback", json=fb).status_code == 202  # the unit's third request
        for path, body in (("/v1/rank", rank_body(unit="greedy")), ("/v1/feedback", fb)):
            r = c.post(path, json=body)
            assert r.status_code == 429, (path, r.status_code, r.text)
            assert int(r.headers["Retry-After"]) >= 1
        assert c.post("/v1/rank", json=rank_body(unit="patient")).status_code == 200
        # feedback on an item the request did not show is refused
        other = c.post("/v1/rank", json=rank_body(unit="other", items=["1", "2"])).json()
        r = c.post("/v1/feedback", json={"request_id": other["request_id"], "item": "3",
                                         "clicked": True})
        assert r.status_code == 422 and "not shown" in r.text


def test_rate_limiter_memory_is_bounded() -> None:
    from services.experiments.router.limiter import UnitRateLimiter

    lim = UnitRateLimiter(per_minute=2, max_units=100)
    assert all(lim.take(f"u{i}") is None for i in range(10_000))
    assert len(lim) <= 100
    assert lim.take("u9999") is None and lim.take("u9999") is not None  # 2 a minute


def test_item_table_supplies_item_features(router, tap, tmp_path: Path) -> None:
    table = tmp_path / "items.csv"
    table.write_text("item,genre\n1,Drama\n2,Comedy\n3,Action\n")
    with router(router_item_table=table) as c:
        r = c.post("/v1/rank", json=rank_body())  # candidates carry their own features
        assert r.status_code == 422 and "item table" in r.text, r.text
        r = c.post("/v1/rank", json={"unit_id": "u", "candidates": [{"item": "1"},
                                                                    {"item": "404"}]})
        assert r.status_code == 422 and "'404'" in r.text, r.text
        ok = c.post("/v1/rank", json={"unit_id": "u", "context": {"user": "u"},
                                      "candidates": [{"item": "2"}, {"item": "1"}]})
        assert ok.status_code == 200, ok.text
    exposure = tap.until(ok.json()["request_id"])[-1][1]
    assert {s["item"]: s["features"] for s in exposure["shown"]} == {
        "2": {"user": "u", "item": "2", "genre": "Comedy"},
        "1": {"user": "u", "item": "1", "genre": "Drama"}}
    from services.experiments.router.items import ItemTable, ItemTableError

    dup = tmp_path / "dup.csv"
    dup.write_text("item,genre\n1,Drama\n1,Comedy\n")
    with pytest.raises(ItemTableError, match="twice"):
        ItemTable.load(dup)
    from services.cli import app as cli

    run = CliRunner().invoke(cli, ["route"], env={
        "CHUNKREC_ROUTER_ITEM_TABLE": str(dup), "CHUNKREC_ROUTER_MIGRATE": "1",
        "CHUNKREC_DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}"})
    assert run.exit_code == 2 and "twice" in run.output, run.output


# --- finding 8: a saturated serving tier sheds load with 503 + Retry-After ------------------


def test_saturated_serving_sheds_with_503(router) -> None:
    release = threading.Event()

    async def slow_serving(request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + 30
        while not release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # serving "busy" until the test releases it
        return serving_like(request)

    with router(handler=slow_serving, router_serving_concurrency=2,
                router_queue_wait_s=0.05) as c, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(c.post, "/v1/rank", json=rank_body(unit=f"u{i}"))
                   for i in range(6)]
        deadline = time.monotonic() + 30
        while sum(f.done() for f in futures) < 4:  # the four beyond the two slots
            assert time.monotonic() < deadline, "no request was shed"
            wait_futures(futures, timeout=0.05)
        release.set()
        answers = [f.result(timeout=30) for f in futures]
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 503, 503, 503, 503], codes
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            no_internals(r)


def test_pool_timeout_is_503_not_502(router) -> None:
    def no_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("timed out waiting for http://serving.internal:8000")

    with router(handler=no_connection) as c:
        r = c.post("/v1/rank", json=rank_body())
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
    no_internals(r)


# --- finding 12: an unmigrated database stops the router at start ---------------------------


def test_unmigrated_database_refuses_to_start(db_url: str) -> None:
    settings = Settings(database_url=db_url, router_api_key=KEY, serving_url="http://s")
    with pytest.raises(RuntimeError, match="chunkrec db upgrade"), \
            TestClient(create_app(settings, sink=NullSink())):
        pass
    from services.cli import app as cli

    run = CliRunner().invoke(cli, ["route"], env={"CHUNKREC_DATABASE_URL": db_url})
    assert run.exit_code == 2, run.output
    assert "chunkrec db upgrade" in run.output and len(run.output.strip().splitlines()) == 1
    # asked to, it migrates and starts
    migrating = Settings(database_url=db_url, router_api_key=KEY, serving_url="http://s",
                         router_migrate=True)
    with TestClient(create_app(migrating, sink=NullSink())) as c:
        r = c.post("/v1/experiments", headers=ADMIN, json={"name": "m", "arms": ARMS})
        assert r.status_code == 201, r.text


# --- finding 9 (router part): admin weights bounded and finite -------------------------------


def test_admin_weights_past_1e6_or_not_finite_are_422(router) -> None:
    """Review finding: weights 1e308/1e308 (their sum is inf) and 1e999 (inf) were accepted."""
    with router() as c:
        eid = c.experiment_id
        arms = [a["name"] for a in ARMS]
        for bad in (1e308, float("inf"), 1e6 + 1):
            body = {"weights": dict.fromkeys(arms, bad)}
            raw = orjson.dumps(body) if bad != float("inf") else (
                orjson.dumps(body).replace(b"null", b"1e999"))
            r = c.put(f"/v1/experiments/{eid}/weights", headers=ADMIN | {
                "content-type": "application/json"}, content=raw)
            assert r.status_code == 422, (bad, r.text)
        zero = c.put(f"/v1/experiments/{eid}/weights", headers=ADMIN,
                     json={"weights": dict.fromkeys(arms, 0)})
        assert zero.status_code == 422 and "above 0" in zero.text
        created = c.post("/v1/experiments", headers=ADMIN, json={
            "name": "w", "arms": [dict(a, weight=1e308) for a in ARMS]})
        assert created.status_code == 422
        ok = c.put(f"/v1/experiments/{eid}/weights", headers=ADMIN,
                   json={"weights": dict.fromkeys(arms, 2.5)})
        assert ok.status_code == 200, ok.text
