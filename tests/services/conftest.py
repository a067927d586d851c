"""Fixtures for the streaming system: a real tansu broker, a real redis-server and a real
Redis Cluster (3 masters, started on first use), one of each per test session
(services/stack/infra.py and redis_cluster.py start them on free ports and stop exactly them).

Tests share them without stepping on each other: each test uses its own events topic
(`topic` fixture), model name and checkpoint folder; dead letters all go to `events.dlq` and
carry their source topic.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services import wire
from services.stack.infra import (
    ManagedProcess,
    create_topics,
    free_port,
    start_http_process,
    start_redis,
    start_tansu,
)
from services.stack.redis_cluster import RedisClusterProcs, start_redis_cluster
from storage.settings import Settings


@pytest.fixture(scope="session")
def infra_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra-logs")


@pytest.fixture(scope="session")
def broker(infra_logs: Path) -> Iterator[ManagedProcess]:
    proc = start_tansu(log_dir=infra_logs)
    try:
        create_topics(proc.address, {wire.DLQ_TOPIC: 1})
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_server(infra_logs: Path) -> Iterator[ManagedProcess]:
    proc = start_redis(log_dir=infra_logs)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(infra_logs: Path) -> Iterator[RedisClusterProcs]:
    """A local Redis Cluster of 3 masters (services/stack/redis_cluster.py)."""
    procs = start_redis_cluster(3, log_dir=infra_logs)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def redis_client(redis_server: ManagedProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def topic(broker: ManagedProcess) -> str:
    """A fresh events topic with 2 partitions."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    create_topics(broker.address, {name: 2})
    return name


@pytest.fixture
def stream_settings(broker: ManagedProcess, redis_server: ManagedProcess,
                    tmp_path: Path) -> Settings:
    """Settings pointing at the fixtures, with intervals short enough for tests."""
    return Settings(
        kafka_bootstrap=broker.address,
        redis_url=redis_server.url,
        checkpoint_dir=tmp_path / "checkpoints",
        publish_interval_s=0.3,
        checkpoint_interval_s=60.0,
        checkpoint_every_events=0,
        trainer_batch_events=256,
        trainer_threads=1,
        kafka_max_poll_interval_ms=3000,
    )


def stream_env(settings: Settings) -> dict[str, str]:
    """CHUNKREC_* environment of `settings`, for `chunkrec` subprocesses."""
    return settings.to_env()


ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def cli_process(args: list[str], env: dict[str, str], log: Path,
                port: int | None = None) -> Iterator[tuple[str, ManagedProcess]]:
    """`chunkrec ARGS` in its own process (its own interpreter lock: a burst test measures the
    server, not the test's client) with `env` added to this environment, serving HTTP on
    `port` (default: a free one, passed as --port); yields (base URL, process) once /healthz
    answers 200, and stops it after."""
    if port is None:
        port = free_port()
        args = [*args, "--port", str(port)]
    mp = start_http_process(f"chunkrec {args[0]}", [sys.executable, "-m", "services.cli", *args],
                            port, log, env=env, cwd=ROOT)
    with mp:
        yield f"http://127.0.0.1:{port}", mp
