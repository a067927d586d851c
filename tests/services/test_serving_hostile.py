"""The serving tier against hostile data and hostile clients, on a real redis-server and a real
uvicorn (run in a thread of the test process, so each test starts its own app quickly and can
read its state): a bad version record of one model, corrupt embedding records, a flood of
distinct long raw values, a burst of cache-missing requests, a hung Redis, and clients that
trickle their request bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from services import wire
from services.serving.app import create_app
from services.serving.scorer import RawIdHasher
from services.stack.infra import ManagedProcess, free_port, start_redis, wait_until
from services.trainer.publisher import RedisPublisher
from storage.batch import hash_values
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from tests.services.conftest import cli_process

SPEC = "synthetic:events=2000,fields=3,vocab=300,seed=5"
POLICY = "fiited:dim=16,budget=0.6,interval=10"
FIELDS = ("f0", "f1", "f2")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Published:
    """A model trained one step in-process and published to Redis as `version`."""

    name: str
    policy: object
    net: object
    publisher: RedisPublisher


def publish(r: redis.Redis, name: str, version: int = 1, prev: Published | None = None
            ) -> Published:
    """Publish `name` at `version` (full), training it one more step first: a new version
    scores differently from the old one."""
    ds = open_dataset(SPEC)
    if prev is None:
        policy = parse_policy(POLICY, num_fields=len(FIELDS))
        net = build_model("dlrm", ds.schema, dim=policy.dim)
        prev = Published(name, policy, net, RedisPublisher(r, name, FIELDS))
    Learner(prev.net, prev.policy).step(next(ds.batches(500)))  # type: ignore[arg-type]
    mem = prev.policy.memory()  # type: ignore[attr-defined]
    record = wire.ModelVersion(
        model=name, version=version, created_at=time.time(), policy=POLICY, schema="synthetic",
        fields=list(FIELDS), dense_names=[], arch="dlrm", dim=prev.policy.dim,  # type: ignore[attr-defined]
        widths=[], dense_key="", full=True, entries_written=0, entries_deleted=0,
        embedding_bytes=mem.total_bytes, embedding_value_bytes=mem.value_bytes,
        redis_embedding_bytes=0, redis_embedding_records=0, events_applied=500 * version,
        events_checksum="0", events_invalid=0, offsets={})
    prev.publisher.publish(prev.policy, wire.dense_to_bytes(prev.net.state_dict()),  # type: ignore[arg-type, attr-defined]
                           version, True, record)
    return prev


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    """`create_app(settings)` on a real uvicorn (uvloop and httptools when installed, as
    `chunkrec serve` runs it) in a thread; yields (base URL, app)."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, loop="auto", http="auto"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn in a thread", thread.is_alive)
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def serving_process(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`chunkrec serve` in its own process (its own interpreter lock: a burst test measures
    the server, not the test's client competing with it); yields its base URL."""
    with cli_process(["serve"], env, tmp_path / "serve.log") as (url, _):
        yield url


def app_settings(redis_url: str, models: str, **kw: object) -> Settings:
    # serving_threads=0: leave torch's thread count of the test process alone
    return Settings(redis_url=redis_url, serving_models=models, serving_poll_s=0.2,
                    serving_threads=0, **kw)


def _served(url: str, model: str) -> int:
    doc = httpx.get(url + "/readyz", timeout=5).json()
    m = doc["models"].get(model)
    return -1 if m is None else int(m["version"])


def _metric(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def _items(rows: np.ndarray) -> list[dict[str, object]]:
    return [{"ids": dict(zip(FIELDS, map(int, row), strict=True))} for row in rows]


# ------------------------------------------------------------------------------------------
# finding 3: one bad version record must not freeze serving, and readiness must say so
# ------------------------------------------------------------------------------------------


def test_bad_version_record_of_one_model_spares_the_others_and_is_reported(
        redis_server: ManagedProcess, redis_client: redis.Redis) -> None:
    bad, good = "hostile-rec-a", "hostile-rec-b"
    a = publish(redis_client, bad)
    b = publish(redis_client, good)
    settings = app_settings(redis_server.url, f"{bad},{good}", serving_stale_after_s=1.0)
    with serving(settings) as (url, _app):
        wait_until(lambda: _served(url, bad) == 1 and _served(url, good) == 1, 30, "both v1")
        assert httpx.get(url + "/readyz").status_code == 200
        redis_client.set(wire.version_key(bad), b"{not json")
        # the refresher lives on: the other model's next version is swapped in
        publish(redis_client, good, 2, prev=b)
        wait_until(lambda: _served(url, good) == 2, 15, "good model v2 despite the bad record")

        def reported() -> bool:
            ready = httpx.get(url + "/readyz", timeout=5)
            text = httpx.get(url + "/metrics", timeout=5).text
            doc = ready.json()
            failures = _metric(text, f'chunkrec_model_refresh_failures_total{{model="{bad}"}}')
            return (ready.status_code == 503 and doc["models"][bad]["stale"] is True
                    and doc["models"][bad]["refresh_age_s"] > 1.0
                    and doc["models"][good]["stale"] is False
                    and doc["models"][good]["refresh_age_s"] < 1.0
                    and bad in doc["detail"]
                    and _metric(text, f'chunkrec_model_stale{{model="{bad}"}}') == 1.0
                    and _metric(text, f'chunkrec_model_stale{{model="{good}"}}') == 0.0
                    and failures is not None and failures >= 2)

        wait_until(reported, 15, "the bad record reported as stale and not ready")
        # the served (old) version of the bad model still scores
        ids = next(open_dataset(SPEC).batches(3)).ids
        resp = httpx.post(url + "/v1/score", json={"model": bad, "items": _items(ids)})
        assert resp.status_code == 200 and resp.json()["version"] == 1
        # a good record again: swapped in, ready again
        publish(redis_client, bad, 2, prev=a)
        wait_until(lambda: _served(url, bad) == 2, 15, "bad model recovers")
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 15, "ready again")
        text = httpx.get(url + "/metrics").text
        assert _metric(text, f'chunkrec_model_stale{{model="{bad}"}}') == 0.0


def test_a_version_that_does_not_load_is_built_once_and_reported_stale(
        redis_server: ManagedProcess, redis_client: redis.Redis) -> None:
    name = "hostile-unloadable"
    publish(redis_client, name)
    settings = app_settings(redis_server.url, name)
    with serving(settings) as (url, _app):
        wait_until(lambda: _served(url, name) == 1, 30, "v1 served")
        record = wire.ModelVersion.from_json(redis_client.get(wire.version_key(name)))
        record.version, record.dense_key = 2, wire.dense_key(name, 2)
        redis_client.set(record.dense_key, b"not a state dict")
        redis_client.set(wire.version_key(name), record.to_json())

        def failures() -> float:
            text = httpx.get(url + "/metrics", timeout=5).text
            return _metric(text, f'chunkrec_model_refresh_failures_total{{model="{name}"}}') or 0

        wait_until(lambda: failures() >= 5, 15, "five failed version checks")
        text = httpx.get(url + "/metrics").text
        doc = httpx.get(url + "/readyz").json()
    assert _metric(text, f'chunkrec_model_load_failures_total{{model="{name}"}}') == 1.0
    assert _metric(text, f'chunkrec_model_stale{{model="{name}"}}') == 1.0
    assert doc["models"][name]["version"] == 1 and doc["models"][name]["stale"] is True
    assert doc["models"][name]["redis_version"] == 2 and doc["models"][name]["refresh_error"]


# ------------------------------------------------------------------------------------------
# finding 4: a corrupt embedding record reads as missing, counted, logged once
# ------------------------------------------------------------------------------------------


def test_corrupt_embedding_records_read_as_missing_counted_and_logged_once(
        redis_server: ManagedProcess, redis_client: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    name = "hostile-emb"
    publish(redis_client, name)
    ids = next(open_dataset(SPEC).batches(8)).ids.copy()
    picked = ids[:2, [0, 1]].diagonal()
    ver = wire.ModelVersion.from_json(redis_client.get(wire.version_key(name)))
    manifest = wire.manifest_from_bytes(redis_client.get(ver.manifest_key))
    buckets = wire.bucket_of(np.array([0, 1]), picked, len(manifest))
    where = [wire.bucket_key(name, b, manifest[b]) for b in buckets.tolist()]
    names = wire.hash_fields(np.array([0, 1]), picked)
    assert all(redis_client.hexists(k, f) for k, f in zip(where, names, strict=True)), \
        "the picked IDs have records"
    redis_client.hset(where[0], names[0], b"abc")  # not a multiple of 4 bytes
    redis_client.hset(where[1], names[1], (0xFFFF).to_bytes(4, "little") + b"\0" * 8)  # K
    keys = [f"{name} {FIELDS[f]}:{int(k)}" for f, k in zip((0, 1), picked, strict=True)]
    unseen = ids.copy()
    unseen[0, 0] = 10**15 + 1  # IDs never trained: the zeros a corrupt record must read as
    unseen[1, 1] = 10**15 + 2
    # caching off: every request fetches the corrupt records again
    settings = app_settings(redis_server.url, name, serving_cache_entries=0)
    with caplog.at_level(logging.WARNING, logger="chunkrec.serving"), \
            serving(settings) as (url, _app):
        wait_until(lambda: _served(url, name) == 1, 30, "v1 served")
        got = []
        for _ in range(3):
            resp = httpx.post(url + "/v1/score", json={"model": name, "items": _items(ids)})
            assert resp.status_code == 200, resp.text
            got.append(resp.json())
        want = httpx.post(url + "/v1/score", json={"model": name, "items": _items(unseen)})
        assert want.status_code == 200
        assert all(g["scores"] == want.json()["scores"] for g in got)
        assert got[0]["unseen_ids"] == want.json()["unseen_ids"]
        text = httpx.get(url + "/metrics").text
    assert _metric(text, f'chunkrec_serving_corrupt_records_total{{model="{name}"}}') == 6.0
    for key in keys:
        assert sum(key in r.getMessage() for r in caplog.records) == 1, key


# ------------------------------------------------------------------------------------------
# finding 7: the raw-value memo is bounded in bytes
# ------------------------------------------------------------------------------------------


def test_raw_value_memo_is_bounded_in_bytes() -> None:
    cap = 2 << 20
    hasher = RawIdHasher(max_bytes=cap)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for batch in range(40):  # 40,000 distinct values of 1 KB: 40 MB if kept
            raw: list[str | int] = [f"{batch:04d}-{i:05d}-" + "x" * 1012 for i in range(1000)]
            got = hasher.hash(raw)
            if batch % 13 == 0:
                want = hash_values(np.array(raw, dtype=object))
                np.testing.assert_array_equal(got, want)
            del raw, got
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert hasher.nbytes <= cap
    assert held < 2 * cap, f"memo holds {held / 2**20:.1f} MiB past a {cap / 2**20:.0f} MiB cap"
    # still a memo: a repeated request's values are all known
    raw = ["a", "b", 7]
    first = hasher.hash(raw)
    assert len(hasher) >= 3
    np.testing.assert_array_equal(hasher.hash(raw), first)


def test_app_memo_takes_its_byte_cap_from_settings() -> None:
    app = create_app(Settings(serving_hash_memo_bytes=3 << 20, serving_threads=0))
    assert app.state.hasher.max_bytes == 3 << 20


# ------------------------------------------------------------------------------------------
# finding 8: bursts, a hung Redis, slow clients
# ------------------------------------------------------------------------------------------


def test_burst_of_cache_missing_requests_waits_for_pooled_connections(
        redis_server: ManagedProcess, redis_client: redis.Redis, tmp_path: Path) -> None:
    """300 requests at once, every one missing the cache, with twice as many admitted as the
    pool of 8 connections has: admitted requests wait for a pooled connection (none is refused
    with "Too many connections") and Redis never sees more than the pool's 8 connections from
    serving. Admission is set apart from the pool: neither the admission queue nor the pool
    gives up within the test's time (waits of 60 s), so a loaded machine makes the burst
    slower, never a 503; what is tested is that the pool queues, not how fast."""
    name = "hostile-burst"
    publish(redis_client, name)
    n, pool = 300, 8
    env = {"CHUNKREC_REDIS_URL": redis_server.url, "CHUNKREC_SERVING_MODELS": name,
           "CHUNKREC_SERVING_POLL_S": "0.2", "CHUNKREC_SERVING_CACHE_ENTRIES": "0",
           "CHUNKREC_SERVING_MAX_INFLIGHT": str(2 * pool), "CHUNKREC_SERVING_QUEUE_WAIT_S": "60",
           "CHUNKREC_SERVING_REDIS_MAX_CONNECTIONS": str(pool),
           "CHUNKREC_SERVING_REDIS_POOL_TIMEOUT_S": "60"}
    before = {c["id"] for c in redis_client.client_list()}  # the test's own connections
    peak = 0
    done = threading.Event()

    def watch() -> None:  # the most connections serving held at once, while the burst runs
        nonlocal peak
        with redis.Redis.from_url(redis_server.url) as r:
            me = str(r.client_id())  # CLIENT LIST gives ids as text
            while not done.wait(0.005):
                ids = {c["id"] for c in r.client_list()} - before - {me}
                peak = max(peak, len(ids))

    async def burst(url: str) -> list[str]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            async def one(k: int) -> str:
                items = [{"features": {f: f"burst-{k}-{f}" for f in FIELDS}}]
                resp = await client.post("/v1/score", json={"model": name, "items": items})
                return "ok" if resp.status_code == 200 else f"{resp.status_code} {resp.text}"

            return await asyncio.gather(*(one(k) for k in range(n)))

    with serving_process(env, tmp_path) as url:
        wait_until(lambda: _served(url, name) == 1, 30, "v1 served")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            answers = asyncio.run(burst(url))
        finally:
            done.set()
            watcher.join(timeout=10)
    assert answers.count("ok") == n, Counter(answers)
    assert 1 <= peak <= pool, f"serving held {peak} Redis connections, its pool is {pool}"


def test_hung_redis_fails_fast_without_naming_its_address() -> None:
    store = start_redis()
    try:
        with redis.Redis.from_url(store.url) as r:
            name = "hostile-hung"
            publish(r, name)
        settings = app_settings(store.url, name, serving_redis_timeout_s=1.0)
        with serving(settings) as (url, _app):
            wait_until(lambda: _served(url, name) == 1, 30, "v1 served")
            store.proc.send_signal(signal.SIGSTOP)
            try:
                for k in range(2):  # each with IDs no cache has seen: Redis is needed
                    items = [{"features": {f: f"hung-{k}-{f}" for f in FIELDS}}]
                    t0 = time.monotonic()
                    resp = httpx.post(url + "/v1/score", json={"model": name, "items": items},
                                      timeout=20)
                    took = time.monotonic() - t0
                    assert resp.status_code == 503, resp.text
                    assert took < 3.0, f"503 after {took:.1f} s"
                    for secret in ("127.0.0.1", str(store.port)):
                        assert secret not in resp.text, resp.text
                t0 = time.monotonic()
                ready = httpx.get(url + "/readyz", timeout=20)
                assert ready.status_code == 503 and time.monotonic() - t0 < 3.0
                for secret in ("127.0.0.1", str(store.port)):
                    assert secret not in ready.text, ready.text
            finally:
                store.proc.send_signal(signal.SIGCONT)
            items = [{"features": {f: f"after-{f}" for f in FIELDS}}]
            wait_until(lambda: httpx.post(url + "/v1/score", timeout=10, json={
                "model": name, "items": items}).status_code == 200, 15, "Redis answers again")
    finally:
        store.stop()


def _raw_request(port: int, head: bytes, pieces: list[bytes], pace_s: float,
                 wait_s: float) -> tuple[bytes, float]:
    """Send `head`, then `pieces` one every `pace_s` (a slow client's pace) until the server
    answers; returns (what the server sent until it closed or `wait_s` passed, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        t0 = time.monotonic()
        sock.sendall(head)
        got = b""
        sock.settimeout(pace_s)
        for piece in pieces:
            try:
                data = sock.recv(65536)
                got += data
                if not data:
                    break
            except TimeoutError:  # nothing yet: the client goes on trickling
                with contextlib.suppress(OSError):
                    sock.sendall(piece)
            except ConnectionResetError:  # closed on a piece it did not read: what came counts
                return got, time.monotonic() - t0
            if time.monotonic() - t0 > wait_s:
                break
        sock.settimeout(max(0.1, wait_s - (time.monotonic() - t0)))
        with contextlib.suppress(TimeoutError, OSError):
            while data := sock.recv(65536):
                got += data
        return got, time.monotonic() - t0


@pytest.mark.parametrize("chunked", [False, True])
def test_trickled_body_gets_408_within_the_body_deadline(
        redis_server: ManagedProcess, chunked: bool) -> None:
    settings = app_settings(redis_server.url, "hostile-none", serving_body_timeout_s=1.0)
    body = b'{"model": "x", "items": [' + b" " * 200 + b"]}"
    if chunked:
        head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        pieces = [b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body))]
    else:
        head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        pieces = [body[i:i + 1] for i in range(len(body))]
    with serving(settings) as (url, _app):
        port = int(url.rsplit(":", 1)[1])
        got, took = _raw_request(port, head, pieces, pace_s=0.2, wait_s=8.0)
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert took < 4.0, f"answered after {took:.1f} s"
    assert b"connection: close" in got.lower()


def test_a_prompt_body_is_not_timed_out(redis_server: ManagedProcess,
                                       redis_client: redis.Redis) -> None:
    name = "hostile-prompt"
    publish(redis_client, name)
    settings = app_settings(redis_server.url, name, serving_body_timeout_s=1.0)
    ids = next(open_dataset(SPEC).batches(4)).ids
    with serving(settings) as (url, _app):
        wait_until(lambda: _served(url, name) == 1, 30, "v1 served")
        with httpx.Client(base_url=url) as client:
            for _ in range(3):  # keep-alive: later requests reuse the connection
                resp = client.post("/v1/score", json={"model": name, "items": _items(ids)})
                assert resp.status_code == 200, resp.text

            def chunks() -> Iterator[bytes]:
                yield b'{"model": "' + name.encode() + b'", '
                yield b'"items": ' + httpx.Request("POST", "/", json=_items(ids)).read()
                yield b"}"

            resp = client.post("/v1/score", content=chunks(),
                               headers={"content-type": "application/json"})
            assert resp.status_code == 200, resp.text


def test_a_burst_past_the_slots_is_shed_with_retry_after_not_redis_timeouts(
        redis_server: ManagedProcess, redis_client: redis.Redis, tmp_path: Path) -> None:
    """On the demo stack 300 concurrent cache-missing 50-item requests starved the event loop,
    so most admitted requests' Redis reads passed the 1 s timeout (503 'redis timed out').
    Admission: at most serving_max_inflight requests score at once; the rest wait
    serving_queue_wait_s for a slot, then get 503 + Retry-After."""
    name = "hostile-shed"
    publish(redis_client, name)
    env = {"CHUNKREC_REDIS_URL": redis_server.url, "CHUNKREC_SERVING_MODELS": name,
           "CHUNKREC_SERVING_POLL_S": "0.2", "CHUNKREC_SERVING_CACHE_ENTRIES": "0",
           "CHUNKREC_SERVING_MAX_INFLIGHT": "2", "CHUNKREC_SERVING_QUEUE_WAIT_S": "0.05"}
    n = 300

    async def burst(url: str) -> list[tuple[int, str, str | None]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            async def one(k: int) -> tuple[int, str, str | None]:
                items = [{"features": {f: f"shed-{k}-{j}-{f}" for f in FIELDS}}
                         for j in range(50)]
                resp = await client.post("/v1/score", json={"model": name, "items": items})
                return resp.status_code, resp.text, resp.headers.get("retry-after")

            return await asyncio.gather(*(one(k) for k in range(n)))

    with serving_process(env, tmp_path) as url:
        wait_until(lambda: _served(url, name) == 1, 30, "v1 served")
        answers = asyncio.run(burst(url))
        text = httpx.get(url + "/metrics").text
    codes = Counter(code for code, _, _ in answers)
    assert set(codes) <= {200, 503} and codes[200] >= 2 and codes[503] >= 1, codes
    for code, body, retry in answers:
        if code == 503:
            assert "saturated" in body and retry == "1", body
    assert _metric(text, "chunkrec_serving_shed_total") == codes[503]
