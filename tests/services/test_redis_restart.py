"""Redis restarts while serving is under load: serving keeps answering from its cache (and says
in /readyz and /metrics that the version it serves may be stale), reconnects by itself, the
trainer republishes a full version into the empty Redis, serving swaps it in; no request gets
a 5xx outside the outage, and the ones that need Redis during it get a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from services import wire
from services.stack.infra import ManagedProcess, free_port, start_redis, wait_until
from services.stack.replay import replay_dataset
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets.spec import open_dataset
from storage.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:events=3000,fields=3,vocab=500,seed=9"
MODEL = "restart1"


@dataclass
class Load:
    """A bounded request loop against 127.0.0.1 in its own thread: (t, status, cached)."""

    url: str
    items: list[dict[str, object]]
    fields: tuple[str, ...]
    results: list[tuple[float, int, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    async def _worker(self, client: httpx.AsyncClient, seed: int) -> None:
        rng = random.Random(seed)
        for n in range(200_000):  # bounded; stop() ends it much sooner
            if self.stop.is_set():
                return
            cached = n % 4 != 0  # every 4th request carries IDs no cache has seen
            items = self.items if cached else [
                {"features": {f: f"new-{rng.getrandbits(40)}" for f in self.fields}}]
            try:
                resp = await client.post("/v1/score", json={"model": MODEL, "items": items})
                code = resp.status_code
            except httpx.HTTPError:
                code = -1  # no answer at all
            self.results.append((time.monotonic(), code, cached))

    def run(self) -> None:
        async def main() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
                await asyncio.gather(*(self._worker(client, s) for s in range(4)))
        asyncio.run(main())


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


def _served(url: str) -> int:
    resp = _get(url + "/readyz")
    if resp is None:
        return -1
    model = resp.json().get("models", {}).get(MODEL)
    return -1 if model is None else int(model["version"])


def test_redis_restart_under_load(stream_settings: Settings, topic: str,
                                  tmp_path: Path) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    store = start_redis(port=port, log_dir=logs)
    settings = stream_settings.replace(redis_url=store.url, publish_interval_s=0.3)
    sent = replay_dataset(settings, SPEC, topic=topic, batch_events=100)
    schema = open_dataset(SPEC).schema
    trainer = StreamTrainer(settings, TrainerConfig(
        model=MODEL, policy="fiited:dim=16,budget=0.5,interval=10", schema=schema,
        topic=topic))
    trained = threading.Thread(target=trainer.run)
    trained.start()
    serve_port = free_port()
    url = f"http://127.0.0.1:{serve_port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--port", str(serve_port)],
        env=dict(os.environ) | {"CHUNKREC_REDIS_URL": store.url,
                                "CHUNKREC_SERVING_POLL_S": "0.2"},
        cwd=ROOT, stdout=open(tmp_path / "serve.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True)
    serve = ManagedProcess("serve", proc, "127.0.0.1", serve_port, tmp_path / "serve.log")
    items = [{"features": {f: str(i * 7 + j) for j, f in enumerate(schema.fields)}}
             for i in range(20)]
    load = Load(url, items, schema.fields)
    loader = threading.Thread(target=load.run)
    try:
        wait_until(lambda: trainer.stats.events_applied >= sent.events, 60, "trainer applied")
        with redis.Redis.from_url(store.url) as r:
            wait_until(lambda: (v := r.get(wire.version_key(MODEL))) is not None and
                       wire.ModelVersion.from_json(v).events_applied == sent.events, 30,
                       "version with every event")
            before = wire.ModelVersion.from_json(r.get(wire.version_key(MODEL))).version
        wait_until(lambda: _served(url) == before, 60, "serving the trained version",
                   serve.alive)
        loader.start()
        wait_until(lambda: len(load.results) >= 200, 30, "load running")

        # the outage: redis-server killed outright, its data gone (no persistence)
        store.proc.send_signal(signal.SIGKILL)
        store.stop()
        t_down = time.monotonic()
        n_at_kill = len(load.results)

        def reports_stale() -> bool:
            ready, metrics = _get(url + "/readyz"), _get(url + "/metrics")
            if ready is None or metrics is None or ready.status_code != 503:
                return False
            doc = ready.json()
            return (doc["redis"] is False and doc["models"][MODEL]["stale"] is True
                    and doc["models"][MODEL]["version"] == before
                    and "chunkrec_serving_redis_up 0.0" in metrics.text
                    and f'chunkrec_model_stale{{model="{MODEL}"}} 1.0' in metrics.text)

        wait_until(reports_stale, 15, "serving reporting a stale version")
        wait_until(lambda: len(load.results) >= n_at_kill + 300, 30, "load during the outage")
        store = start_redis(port=port, log_dir=logs)
        t_up = time.monotonic()

        # the trainer sees the version key gone and republishes in full; serving swaps it in
        wait_until(lambda: _served(url) > before, 30, "full republish served", serve.alive)
        t_swapped = time.monotonic()
        with redis.Redis.from_url(store.url) as r:
            rec = wire.ModelVersion.from_json(r.get(wire.version_key(MODEL)))
        assert rec.full and rec.events_applied == sent.events
        assert rec.redis_embedding_records > 0
        wait_until(lambda: (g := _get(url + "/readyz")) is not None and g.status_code == 200,
                   15, "ready again")
        n_at_ready = len(load.results)
        wait_until(lambda: len(load.results) >= n_at_ready + 200
                   and load.results[-1][0] > t_up + 2.0, 30, "load after the restart")
    finally:
        load.stop.set()
        if loader.is_alive():
            loader.join(timeout=30)
        trainer.stop()
        trained.join(timeout=60)
        serve.stop()
        store.stop()

    results = load.results
    assert -1 not in {code for _, code, _ in results}, "a request got no answer"
    assert {code for _, code, _ in results} <= {200, 503}
    cached_codes = {code for _, code, cached in results if cached}
    assert cached_codes == {200}, "a request the cache could answer failed"
    errors = [t for t, code, _ in results if code != 200]
    outage = t_up - t_down
    if errors:
        # 5xx only while Redis was away (plus the reconnect right after it came back)
        assert min(errors) >= t_down and max(errors) - min(errors) <= outage + 1.0
    after = [code for t, code, _ in results if t > t_up + 1.0]
    assert after and set(after) == {200}
    print(f"\nredis outage {outage:.2f} s, requests {len(results)}, "
          f"5xx {len(errors)} (all 503, uncached IDs during the outage), "
          f"full republish served {t_swapped - t_up:.2f} s after restart")
