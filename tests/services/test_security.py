"""Security: a password-protected redis-server that the trainer and serving reach with the
password from settings; the router's admin API behind its key (constant-time compare); and the
secrets (Redis password, API key, database password) never in a log, an error body or
/metrics of the processes that hold them.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from services import wire
from services.experiments.router import deps as router_deps
from services.stack.infra import ManagedProcess, free_port, start_redis, wait_until
from services.stack.replay import replay_dataset
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets.spec import open_dataset
from storage.settings import Settings
from tests.conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:events=2000,fields=2,vocab=300,seed=5"
REDIS_PW = "redis-Pw-" + uuid.uuid4().hex
API_KEY = "api-Key-" + uuid.uuid4().hex
DB_PW = "db-Pw-" + uuid.uuid4().hex
SECRETS = (REDIS_PW, API_KEY, DB_PW)


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_redis(log_dir=tmp_path_factory.mktemp("secure-redis"), password=REDIS_PW)
    try:
        yield proc
    finally:
        proc.stop()


def _spawn(args: list[str], env: dict[str, str], log: Path, port: int) -> ManagedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args],
                            env=dict(os.environ) | env, cwd=ROOT,
                            stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
                            stderr=subprocess.STDOUT, start_new_session=True)
    return ManagedProcess(args[0], proc, "127.0.0.1", port, log)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _no_secret(where: str, content: str | bytes) -> None:
    blob = content.decode(errors="replace") if isinstance(content, bytes) else content
    for secret in SECRETS:
        assert secret not in blob, f"a secret leaked into {where}"


def test_admin_key_compared_in_constant_time() -> None:
    src = inspect.getsource(router_deps.require_admin)
    assert "compare_digest" in src and "==" not in src.split("compare_digest")[0].split(
        "expected = ")[1]


def test_password_redis_trainer_serving_and_no_secret_leaks(
        secure_redis: ManagedProcess, stream_settings: Settings, topic: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bare_url = f"redis://127.0.0.1:{secure_redis.port}/0"
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(bare_url) as r:
        r.ping()
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(
            bare_url, password="wrong") as r:
        r.ping()
    assert REDIS_PW not in repr(secure_redis) and REDIS_PW in secure_redis.url

    # trainer: URL without the password, the password apart (CHUNKREC_REDIS_PASSWORD)
    settings = stream_settings.replace(redis_url=bare_url, redis_password=REDIS_PW,
                                       router_api_key=API_KEY)
    _no_secret("repr(Settings)", repr(settings))
    sent = replay_dataset(settings, SPEC, topic=topic, batch_events=100)
    schema = open_dataset(SPEC).schema
    caplog.set_level(logging.DEBUG)
    stats = StreamTrainer(settings, TrainerConfig(
        model="secure1", policy="fiited:dim=16,budget=0.5,interval=10", schema=schema,
        topic=topic, max_events=sent.events)).run()
    assert stats.events_applied == sent.events
    with redis.Redis.from_url(secure_redis.url) as r:  # the URL form of the password
        rec = wire.ModelVersion.from_json(r.get(wire.version_key("secure1")))
    assert rec.events_applied == sent.events

    # serving: the password inside CHUNKREC_REDIS_URL
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = _spawn(["serve", "--port", str(port), "--log-level", "info"],
                   {"CHUNKREC_REDIS_URL": secure_redis.url, "CHUNKREC_SERVING_POLL_S": "0.2"},
                   tmp_path / "serve.log", port)
    try:
        wait_until(lambda: _up(url), 60, "serving", serve.alive)
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 30,
                   "serving ready with the password")
        item = {"features": {f: "1" for f in schema.fields}}
        ok = httpx.post(url + "/v1/score", json={"model": "secure1", "items": [item] * 3})
        assert ok.status_code == 200 and len(ok.json()["scores"]) == 3
        bad = httpx.post(url + "/v1/score", json={"model": "secure1", "items": [{"x": 1}]})
        assert bad.status_code == 422
        _no_secret("serving /readyz", httpx.get(url + "/readyz").content)
        _no_secret("serving /metrics", httpx.get(url + "/metrics").content)
        _no_secret("serving /openapi.json", httpx.get(url + "/openapi.json").content)
    finally:
        serve.stop()
    _no_secret("serving log", (tmp_path / "serve.log").read_bytes())
    _no_secret("trainer log", caplog.text)


@pytest.fixture
def secret_db_url(pg_unavailable: str | None, tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL database owned by a role with a password (SQLite when PostgreSQL is not
    reachable: then only the API key is checked)."""
    if pg_unavailable:
        yield f"sqlite:///{tmp_path / 'meta.db'}"
        return
    name = f"chunkrec_sec_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{DB_PW}'"))
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    try:
        yield f"postgresql+psycopg://{name}:{DB_PW}@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


def test_router_admin_key_and_db_password_stay_secret(secret_db_url: str,
                                                      broker: ManagedProcess,
                                                      tmp_path: Path) -> None:
    env = {"CHUNKREC_DATABASE_URL": secret_db_url, "CHUNKREC_ROUTER_API_KEY": API_KEY,
           "CHUNKREC_KAFKA_BOOTSTRAP": broker.address}
    up = subprocess.run([sys.executable, "-m", "services.cli", "db", "upgrade"],
                        env=dict(os.environ) | env, cwd=ROOT, capture_output=True, timeout=120)
    assert up.returncode == 0, up.stderr.decode()[-2000:]
    _no_secret("db upgrade output", up.stdout + up.stderr)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    router = _spawn(["route", "--port", str(port)], env, tmp_path / "route.log", port)
    body = {"name": "sec", "arms": [{"name": "a", "model": "m1", "weight": 1, "control": True},
                                    {"name": "b", "model": "m2", "weight": 1}]}
    try:
        wait_until(lambda: _up(url), 60, "router", router.alive)
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.post("/v1/experiments", json=body).status_code == 401
            for wrong in ("", "wrong", API_KEY[:-1], API_KEY + "x", API_KEY.upper()):
                resp = c.post("/v1/experiments", json=body, headers={"X-API-Key": wrong})
                assert resp.status_code in (401, 403), wrong
                _no_secret("a refusal", resp.content)
            made = c.post("/v1/experiments", json=body, headers={"X-API-Key": API_KEY})
            assert made.status_code in (200, 201), made.text
            exp = made.json()["id"]
            for path in (f"/v1/experiments/{exp}/start", f"/v1/experiments/{exp}/stop"):
                assert c.post(path).status_code == 401
                assert c.post(path, headers={"X-API-Key": "nope"}).status_code == 403
            for path in ("/openapi.json", f"/v1/experiments/{exp}/report", f"/experiments/{exp}"):
                _no_secret(path, c.get(path).content)
    finally:
        router.stop()
    _no_secret("router log", (tmp_path / "route.log").read_bytes())
