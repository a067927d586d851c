"""One version per response, against real processes: a publisher (its own process) publishes
version after version and is SIGKILLed in the middle of one; `chunkrec serve` answers
concurrent readers throughout, with caching off (every request reads Redis) and on (the cache
moves from version to version). Every response's scores must equal the scores recomputed
afterwards from exactly the version it names; the killed publish must have left generations
behind that no manifest names (so the kill did land mid-publish), and a restarted publisher
moves serving on. Once against one redis-server and one serving process, once against a
Redis Cluster of 3 masters and `chunkrec serve --workers 2`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from services import wire
from services.messaging.redis_clients import open_async, open_sync
from services.serving.embedding_reads import gather_embeddings
from services.serving.registry import build_loaded_model
from services.stack.infra import wait_until
from storage.datasets.spec import open_dataset
from storage.settings import RedisSettings
from tests.services.conftest import cli_process
from tests.services.publish_child import FIELDS, SPEC

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Backend:
    url: str
    cluster: bool

    def sync(self) -> redis.Redis:
        return open_sync(RedisSettings(url=self.url, cluster=self.cluster))

    def aio(self) -> aioredis.Redis:
        return open_async(RedisSettings(url=self.url, cluster=self.cluster))


def _child(b: Backend, name: str, first: int, versions: int,
           pause_at: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.services.publish_child", b.url, name,
                             str(first), str(versions), "cluster" if b.cluster else "single",
                             str(pause_at)],
                            cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def _go(proc: subprocess.Popen[str], upto: int | None = None) -> None:
    """Let the child publish its next version (and wait for "published UPTO")."""
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if upto is not None:
        _wait_line(proc, f"published {upto}")


def _wait_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    for got in proc.stdout:  # the child's own progress, read as it comes
        if got.strip() == line:
            return
    raise AssertionError(f"publisher exited before printing {line!r}")


def _expected(client: redis.Redis, b: Backend, name: str, version: int,
              ids: np.ndarray) -> np.ndarray:
    """The scores of `ids` in `version`, recomputed from Redis through its own manifest."""
    record = wire.ModelVersion.from_json(client.get(wire.version_key(name)))
    record.version = version
    record.manifest_key = wire.manifest_key(name, version)
    record.dense_key = wire.dense_key(name, version)
    model = build_loaded_model(record, client.get(record.dense_key),
                               client.get(record.manifest_key), 0)

    async def emb() -> np.ndarray:
        ac = b.aio()
        try:
            return (await gather_embeddings(model, ids, ac))[0]
        finally:
            await ac.aclose()

    return model.predict(asyncio.run(emb()), None)


def _children(pid: int) -> int:
    """How many processes have `pid` as their parent (Linux /proc)."""
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                n += 1
        except (OSError, ValueError, IndexError):
            continue
    return n


@pytest.mark.parametrize(("backend", "cache_entries", "workers"),
                         [("single", 0, 1), ("cluster", 100_000, 2)])
def test_every_response_is_one_version_through_publishes_and_a_kill_mid_publish(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str, cache_entries: int,
        workers: int) -> None:
    if backend == "cluster":
        cl = request.getfixturevalue("redis_cluster")
        b = Backend(cl.url, True)
    else:
        b = Backend(request.getfixturevalue("redis_server").url, False)
    redis_client = b.sync()
    name = f"onever-{backend}"
    ids = next(open_dataset(SPEC).batches(64)).ids.copy()
    items = [{"ids": dict(zip(FIELDS, map(int, row), strict=True))} for row in ids]
    pub = _child(b, name, 1, 1000, pause_at=6)
    try:
        _go(pub, 1)
        env = {"CHUNKREC_REDIS_URL": b.url, "CHUNKREC_REDIS_CLUSTER": str(b.cluster),
               "CHUNKREC_SERVING_POLL_S": "0.2",
               "CHUNKREC_SERVING_CACHE_ENTRIES": str(cache_entries),
               "CHUNKREC_SERVING_WORKERS": str(workers)}
        seen: list[tuple[int, list[float]]] = []
        stop = threading.Event()
        with cli_process(["serve"], env, tmp_path / "serve.log") as (url, proc):
            if workers > 1:
                wait_until(lambda: _children(proc.proc.pid) >= workers, 30, "the workers")

            def reader() -> None:
                with httpx.Client(base_url=url, timeout=10) as c:
                    while not stop.is_set():
                        r = c.post("/v1/score", json={"model": name, "items": items})
                        if r.status_code == 200:
                            seen.append((r.json()["version"], r.json()["scores"]))

            threads = [threading.Thread(target=reader) for _ in range(3)]
            for t in threads:
                t.start()
            try:
                for v in range(2, 6):
                    wait_until(lambda v=v: len(seen) > 5 * v, 30, "reads")
                    _go(pub, v)
                _go(pub)
                _wait_line(pub, "midway 6")  # v6's first bucket writes are in, no more
                pub.send_signal(signal.SIGKILL)  # inside v6's bucket writes
                pub.wait(timeout=30)
                last = wire.ModelVersion.from_json(redis_client.get(wire.version_key(name)))
                assert last.version == 5
                committed = wire.manifest_from_bytes(redis_client.get(last.manifest_key))
                named = {wire.bucket_key(name, b, g)
                         for b, g in enumerate(committed.tolist()) if g}
                orphans = [k for k in redis_client.scan_iter(match=wire.bucket_pattern(name))
                           if k.decode() not in named
                           and wire.generation_version(int(k.rsplit(b":", 1)[1])) == 6]
                assert orphans, "the kill landed between publishes, not inside one"
                wait_until(lambda: any(v == 5 for v, _ in seen[-6:]), 30, "v5 served")
                n_after_kill = len(seen)
                wait_until(lambda: len(seen) > n_after_kill + 20, 30, "reads after the kill")
                restarted = _child(b, name, 6, 3)  # a new token, full first
                try:
                    for v in (6, 7, 8):
                        _go(restarted, v)
                finally:
                    restarted.kill()
                    restarted.wait(timeout=30)
                wait_until(lambda: any(v == 8 for v, _ in seen[-6:]), 30, "v8 served")
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=30)
    finally:
        pub.kill()
        pub.wait(timeout=30)
    versions = sorted({v for v, _ in seen})
    assert {1, 5, 8} <= set(versions) and len(seen) > 50
    want = {v: _expected(redis_client, b, name, v, ids) for v in versions}
    distinct = {v: np.round(w, 5).tobytes() for v, w in want.items()}
    assert len(set(distinct.values())) >= 4, "versions must score differently to tell apart"
    for v, scores in seen:
        np.testing.assert_allclose(scores, want[v], rtol=1e-5, atol=1e-6,
                                   err_msg=f"a response named v{v}")
