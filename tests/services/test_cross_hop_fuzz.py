"""Cross-hop fuzz: hostile content through router -> exposures -> joiner -> events -> trainer ->
Redis -> serving, and straight onto every topic and into Redis, against the real processes
(`chunkrec serve`, `route`, `join`, `train` as subprocesses, their own tansu broker and
redis-server, a SQLite database). At the end every process is alive, still serves and trains,
and every good event (replayed ones, and the labelled events of well-formed ranks) was applied
exactly once (count and event-id checksum in the trainer's version record)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from kafka import KafkaProducer

from services import wire
from services.stack.infra import (
    ManagedProcess,
    create_topics,
    free_port,
    start_redis,
    start_tansu,
    wait_until,
)
from storage.datasets.spec import open_dataset

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:events=2000,fields=3,vocab=300,seed=11"
MODEL = "xhop"
KEY = "fuzz-admin-" + uuid.uuid4().hex
SEED = 20261203


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManagedProcess, ...]]:
    """A broker and a Redis of this test's own: it writes junk on the shared topic names."""
    logs = tmp_path_factory.mktemp("xhop-infra")
    broker, rds = start_tansu(log_dir=logs), start_redis(log_dir=logs)
    try:
        create_topics(broker.address, {wire.EVENTS_TOPIC: 2, wire.DLQ_TOPIC: 1,
                                       wire.EXPOSURES_TOPIC: 2, wire.FEEDBACK_TOPIC: 2})
        yield broker, rds
    finally:
        broker.stop()
        rds.stop()


def _spawn(args: list[str], env: dict[str, str], log: Path, port: int = 0) -> ManagedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args],
                            env=dict(os.environ) | env, cwd=ROOT,
                            stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
                            stderr=subprocess.STDOUT, start_new_session=True)
    return ManagedProcess(args[0], proc, "127.0.0.1", port, log)


def _ok(url: str, path: str = "/healthz") -> bool:
    try:
        return httpx.get(url + path, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _good_rank(rng: random.Random, eid: int) -> dict[str, Any]:
    items = rng.sample(range(1, 300), 3)
    return {"unit_id": f"user{rng.randrange(50)}", "experiment_id": eid,
            "context": {"f0": str(rng.randrange(1, 300))},
            "candidates": [{"item": f"i{j}", "features": {"f1": str(j), "f2": str(j % 7)}}
                           for j in items]}


def _junk_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([0, -1, 1 << 63, -(1 << 64), 10**30, True])
    if kind == 2:
        return rng.choice([1.5, 1e308, -0.0])
    if kind == 3:
        return "".join(rng.choice('"\\\x00\x01a\u00e9\u2028\U0001f600 ') for _ in
                       range(rng.choice([0, 1, 5, 300, 5000])))
    if kind == 4:
        return '"' * rng.choice([1025, 300_000])
    if kind == 5:
        return rng.choice(["", "x", "i1", "user1"])
    if kind == 6:
        return [_junk_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {rng.choice(["item", "features", "f0", "x1", "", "\u00e9"]):
                _junk_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"item": _junk_value(rng, depth + 1), "features": {
        f"x{i}": _junk_value(rng, depth + 1) for i in range(rng.randrange(3))}}


EDGE_VALUES: list[str | int] = ['"' * 1024, "\\" * 1024, "\u2028\u2029" * 512, "\x01" * 1024,
                              "\U0001f600" * 1024, "", " ", "i1", (1 << 63) - 1, -(1 << 63), 0]
EDGE_UNITS: list[str | int] = ['"' * 256, "\u2028" * 256, "\U0001f600" * 256, (1 << 63) - 1,
                              -(1 << 63), "", "0"]


def _hostile_rank(rng: random.Random, eid: int) -> bytes:
    """A /v1/rank body: a structural attack, a good one with one part replaced by junk, raw
    bytes, or one at the edges of what is allowed (quotes, escapes, 4-byte characters, int64
    bounds at every length limit) that the whole chain must carry as a good event."""
    body = _good_rank(rng, eid)
    pick = rng.randrange(10)
    if pick == 0:
        return rng.choice([b"", b"{", b"[]", b"null", b'{"unit_id": "\\ud800"}',
                           b"[" * 10_000 + b"]" * 10_000, b"\xff\xfe" * 1000])
    if pick == 1:
        body["candidates"] = body["candidates"] * 2  # every item twice
    elif pick == 2:
        body["candidates"] = [{"item": f"i{j}", "features": {"f1": "v" * 1024, "f2": "x"}}
                              for j in range(rng.choice([101, 1000, 5000]))]
    elif pick == 3:
        body["unit_id"] = rng.choice(['"' * 300_000, "\u2028" * 300, 1 << 70, None,
                                      "a\x00b"])
    elif pick <= 6:  # legal at every edge
        body["unit_id"] = rng.choice(EDGE_UNITS)
        body["context"] = {"f0": rng.choice(EDGE_VALUES)}
        for j, c in enumerate(body["candidates"]):
            c["item"] = rng.choice(['"', "\u00e9", "\U0001f600", "\\"]) * 50 + str(j)
            c["features"] = {"f1": rng.choice(EDGE_VALUES), "f2": rng.choice(EDGE_VALUES)}
    else:
        where = rng.choice(["unit_id", "candidates", "context", "top_k", "experiment_id",
                            "extra"])
        body[where] = _junk_value(rng)
    return json.dumps(body).encode()  # json: orjson refuses ints past 64 bits


def _junk_message(rng: random.Random) -> bytes:
    pick = rng.randrange(6)
    if pick == 0:
        return rng.randbytes(rng.choice([0, 1, 100, 70_000]))
    if pick == 1:
        return b"\x01" * rng.choice([1 << 20, 3 << 20])
    if pick == 2:
        return json.dumps(_junk_value(rng)).encode()
    if pick == 3:  # an exposure of the right shape with hostile parts
        shown = [{"item": "i1", "position": 0, "score": None, "features": {"f0": "1"}}] * 2
        return orjson.dumps({"request_id": uuid.uuid4().hex, "experiment_id": 1, "phase": 1,
                             "arm": "a", "arm_id": 1, "model": MODEL, "model_version": 1,
                             "unit_id": '"' * 300_000, "ts": 1e300, "latency_ms": -1,
                             "shown": shown})
    if pick == 4:
        return json.dumps({"request_id": _junk_value(rng), "item": _junk_value(rng),
                           "clicked": _junk_value(rng), "ts": _junk_value(rng)}).encode()
    return orjson.dumps([{"event_id": "junk", "ts": 1e300, "label": 2, "schema": "x"}] * 3)


def test_hostile_traffic_on_every_hop_stops_nothing_and_loses_nothing(
        infra: tuple[ManagedProcess, ManagedProcess], tmp_path: Path) -> None:
    broker, rds = infra
    rng = random.Random(SEED)
    serve_port, route_port = free_port(), free_port()
    serve_url, route_url = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{route_port}"
    env = {"CHUNKREC_KAFKA_BOOTSTRAP": broker.address, "CHUNKREC_REDIS_URL": rds.url,
           "CHUNKREC_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
           "CHUNKREC_DATA_DIR": str(tmp_path), "CHUNKREC_CHECKPOINT_DIR": str(tmp_path / "ck"),
           "CHUNKREC_KAFKA_MAX_POLL_INTERVAL_MS": "3000", "CHUNKREC_ROUTER_API_KEY": KEY,
           "CHUNKREC_ATTRIBUTION_WINDOW_S": "1", "CHUNKREC_JOINER_GRACE_S": "0.5",
           "CHUNKREC_PUBLISH_INTERVAL_S": "0.5", "CHUNKREC_SERVING_POLL_S": "0.3",
           "CHUNKREC_SERVING_URL": serve_url, "CHUNKREC_TRAINER_THREADS": "1"}
    migrated = subprocess.run([sys.executable, "-m", "services.cli", "db", "upgrade"],
                              env=dict(os.environ) | env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    procs = {
        "train": _spawn(["train", "--model", MODEL, "--policy", "fiited:dim=16,budget=0.5",
                         "--data", SPEC], env, tmp_path / "train.log"),
        "serve": _spawn(["serve", "--port", str(serve_port)], env, tmp_path / "serve.log",
                        serve_port),
        "route": _spawn(["route", "--port", str(route_port)], env, tmp_path / "route.log",
                        route_port),
        "join": _spawn(["join", "--default-schema", SPEC, "--record-every-s", "0.5"], env,
                       tmp_path / "join.log"),
    }
    r = redis.Redis.from_url(rds.url)
    try:
        schema = open_dataset(SPEC).schema
        probe = {"model": MODEL, "items": [{"features": {f: "1" for f in schema.fields}}]}
        wait_until(lambda: _ok(serve_url) and _ok(route_url), 90, "serving and router up",
                   lambda: all(p.alive() for p in procs.values()))
        wait_until(lambda: httpx.post(serve_url + "/v1/score", json=probe).status_code == 200,
                   90, "serving has the model", procs["train"].alive)
        exp = httpx.post(route_url + "/v1/experiments", headers={"X-API-Key": KEY}, json={
            "name": "xhop", "arms": [{"name": "a", "model": MODEL, "weight": 1,
                                      "control": True},
                                     {"name": "b", "model": MODEL, "weight": 1}]})
        assert exp.status_code in (200, 201), exp.text
        eid = exp.json()["id"]
        assert httpx.post(f"{route_url}/v1/experiments/{eid}/start",
                          headers={"X-API-Key": KEY}).status_code == 200

        # good events straight onto `events`, and good ranks with clicks through the router
        batch = next(open_dataset(SPEC).batches(600))
        replayed = wire.batch_to_events(batch, [f"good:{i}" for i in range(600)])
        prod = KafkaProducer(bootstrap_servers=broker.address, max_request_size=8 << 20)
        for a in range(0, 600, 100):
            prod.send(wire.EVENTS_TOPIC, wire.encode_events(replayed[a:a + 100]))
        expected = [str(e["event_id"]) for e in replayed]
        http = httpx.Client(timeout=10)
        statuses: dict[int, int] = {}
        for i in range(200):
            if i % 4 == 0:
                resp = http.post(route_url + "/v1/rank", json=_good_rank(rng, eid))
                assert resp.status_code == 200, resp.text
                body = resp.json()
                expected += [wire.joined_event_id(body["request_id"], it["item"])
                             for it in body["items"]]
                clicked = body["items"][0]["item"]
                fb = http.post(route_url + "/v1/feedback", json={
                    "request_id": body["request_id"], "item": clicked, "clicked": True})
                assert fb.status_code == 202, fb.text
            else:
                resp = http.post(route_url + "/v1/rank", content=_hostile_rank(rng, eid),
                                 headers={"content-type": "application/json"})
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                assert resp.status_code < 500, (resp.status_code, resp.text[:500])
                if resp.status_code == 200:  # accepted: its events are good ones
                    body = resp.json()
                    expected += [wire.joined_event_id(body["request_id"], it["item"])
                                 for it in body["items"]]
                fb = http.post(route_url + "/v1/feedback", content=json.dumps(
                    {"request_id": _junk_value(rng), "item": _junk_value(rng),
                     "clicked": _junk_value(rng)}).encode(),
                               headers={"content-type": "application/json"})
                assert fb.status_code < 500, (fb.status_code, fb.text[:500])
            # junk straight onto every topic, and into Redis
            topic = rng.choice([wire.EVENTS_TOPIC, wire.EXPOSURES_TOPIC, wire.FEEDBACK_TOPIC,
                                wire.DLQ_TOPIC])
            prod.send(topic, _junk_message(rng))
        prod.flush()
        prod.close()
        assert statuses.get(200, 0) >= 20 and sum(statuses.values()) - statuses[200] >= 50
        r.sadd(wire.MODELS_SET, "ghost")
        r.set(wire.version_key("ghost"), b"{not json")
        r.set(wire.version_key("ghost2"), b'{"version": "x"}')
        r.sadd(wire.MODELS_SET, "ghost2")
        for k in wire.current_bucket_keys(r, MODEL)[:5]:  # corrupt records in place
            for f in [f for f in r.hkeys(k) if f != wire.SENTINEL][:4]:
                r.hset(k, f, rng.choice([b"abc", b"\xff" * 12, b""]))

        def applied_all() -> bool:
            blob = r.get(wire.version_key(MODEL))
            return blob is not None and wire.ModelVersion.from_json(blob).events_applied >= len(
                expected)

        wait_until(applied_all, 120, f"the trainer applied {len(expected)} good events",
                   lambda: all(p.alive() for p in procs.values()))
        rec = wire.ModelVersion.from_json(r.get(wire.version_key(MODEL)))
        assert rec.events_applied == len(expected)
        assert int(rec.events_checksum) == wire.event_id_checksum(expected)

        # every process alive, and each still does its job
        assert {n: p.alive() for n, p in procs.items()} == dict.fromkeys(procs, True)
        assert http.post(serve_url + "/v1/score", json=probe).status_code == 200
        again = http.post(route_url + "/v1/rank", json=_good_rank(rng, eid))
        assert again.status_code == 200, again.text
        assert _ok(serve_url, "/healthz") and _ok(route_url, "/healthz")
        http.close()
    finally:
        r.close()
        for p in procs.values():
            p.stop()
        for name in procs:  # what each process said, for a failure's report
            tail = (tmp_path / f"{name}.log").read_text(errors="replace")[-1500:]
            print(f"--- {name}.log (tail)\n{tail}")
