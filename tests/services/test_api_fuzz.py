"""Bad requests: schemathesis against the serving and router OpenAPI specs, on real app
processes (uvicorn, real Redis, a seeded model, the router on a migrated SQLite database and
the real broker), finds no 5xx; an oversized body gets 413; 100k candidates get a clear 4xx.
Examples per operation are bounded (MAX_EXAMPLES) to keep this near a minute."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from services.stack.infra import ManagedProcess, free_port
from services.stack.replay import replay_dataset
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from tests.services.conftest import cli_process

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:events=1000,fields=2,vocab=200,seed=8"
MODEL = "apifuzz"
MAX_EXAMPLES = 25
KEY = "fuzz-admin-key"


@pytest.fixture(scope="module")
def apps(broker: ManagedProcess, redis_server: ManagedProcess,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(serving URL, router URL): a model trained on the broker's events, served from Redis."""
    tmp = tmp_path_factory.mktemp("apifuzz")
    from services.stack.infra import create_topics

    topic = "events-apifuzz"
    create_topics(broker.address, {topic: 1})
    s = Settings(kafka_bootstrap=broker.address, redis_url=redis_server.url,
                 checkpoint_dir=tmp / "ckpt", trainer_threads=1,
                 kafka_max_poll_interval_ms=3000)
    sent = replay_dataset(s, SPEC, topic=topic)
    StreamTrainer(s, TrainerConfig(model=MODEL, policy="fixed:dim=8",
                                   schema=open_dataset(SPEC).schema, topic=topic,
                                   max_events=sent.events)).run()
    sport, rport = free_port(), free_port()
    db = f"sqlite:///{tmp / 'meta.db'}"
    env = {"CHUNKREC_REDIS_URL": redis_server.url, "CHUNKREC_SERVING_MAX_ITEMS": "200",
           "CHUNKREC_SERVING_MAX_BODY_BYTES": str(256 * 1024),
           "CHUNKREC_DATABASE_URL": db, "CHUNKREC_ROUTER_API_KEY": KEY,
           "CHUNKREC_KAFKA_BOOTSTRAP": broker.address,
           "CHUNKREC_SERVING_URL": f"http://127.0.0.1:{sport}"}
    subprocess.run([sys.executable, "-m", "services.cli", "db", "upgrade"], check=True,
                   env=dict(os.environ) | env, cwd=ROOT, capture_output=True, timeout=120)
    with (cli_process(["serve", "--port", str(sport)], env, tmp / "serve.log", sport),
          cli_process(["route", "--port", str(rport)], env, tmp / "route.log", rport) as (rurl, _)):
        yield f"http://127.0.0.1:{sport}", rurl


FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _fuzz(url: str, headers: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Every operation of the spec at `url`, MAX_EXAMPLES generated cases each (valid and
    invalid bodies, parameters, headers); returns (cases sent, the 5xx ones)."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    sent = [0]
    server_errors: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()

        @FUZZ
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            resp = case.call(headers=headers)
            sent[0] += 1
            if resp.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> "
                                     f"{resp.status_code}: {resp.text[:200]}")

        run()
    return sent[0], server_errors


def test_serving_openapi_no_5xx(apps: tuple[str, str]) -> None:
    sent, errors = _fuzz(apps[0])
    assert sent >= MAX_EXAMPLES and not errors, errors[:5]


def test_router_openapi_no_5xx(apps: tuple[str, str]) -> None:
    sent, errors = _fuzz(apps[1], headers={"X-API-Key": KEY})
    assert sent >= MAX_EXAMPLES and not errors, errors[:5]


def test_oversized_bodies_and_100k_candidates(apps: tuple[str, str]) -> None:
    serving, router = apps
    item = {"features": {"f0": "1", "f1": "2"}}
    with httpx.Client(timeout=30) as c:
        big = c.post(serving + "/v1/score", json={"model": MODEL, "items": [item] * 100_000})
        assert big.status_code == 413 and "larger than" in big.json()["detail"]
        many = c.post(serving + "/v1/score", json={"model": MODEL, "items": [item] * 201})
        assert many.status_code == 422 and "at most 200" in many.text
        cands = [{"item": str(i)} for i in range(100_000)]
        ranked = c.post(router + "/v1/rank", json={"unit_id": "u", "candidates": cands})
        assert ranked.status_code in (413, 422), ranked.status_code
        assert len(ranked.content) < 10_000  # a clear message, not the input echoed back
        huge = c.post(router + "/v1/feedback", content=b"x" * (8 << 20),
                      headers={"content-type": "application/json"})
        assert huge.status_code == 413
