"""What the router's handlers get injected (Depends): settings, DB sessions, the Kafka sink,
the HTTP client to serving and the slots that bound the calls in flight, the experiment config
cache, the per-unit rate limiter, the requests this replica issued, the item table, the admin
key check."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Protocol

import httpx
from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from services.experiments.router.items import ItemTable
from services.experiments.router.limiter import IssuedRequests, UnitRateLimiter
from storage.db.experiments import ExperimentConfig, experiment_config, running_experiment_ids
from storage.settings import Settings


class MessageSink(Protocol):
    """Where exposures and feedback go (Kafka in production)."""

    def send(self, topic: str, key: bytes, value: bytes) -> None: ...


class KafkaSink:
    """kafka-python producer: send() only buffers; a background thread ships batches."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5,
                                      retries=5)

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.producer.send(topic, key=key, value=value)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


@dataclass
class ConfigCache:
    """Experiment configs read from the database at most every `ttl_s` per experiment, so a
    start / stop / new phase reaches every replica within ttl_s."""

    factory: sessionmaker[Session]
    ttl_s: float
    _entries: dict[int, tuple[float, ExperimentConfig]] = field(default_factory=dict)
    _running: tuple[float, list[int]] = (float("-inf"), [])

    def get(self, experiment_id: int) -> ExperimentConfig:
        now = time.monotonic()
        hit = self._entries.get(experiment_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        with self.factory() as s:
            cfg = experiment_config(s, experiment_id)
        self._entries[experiment_id] = (now, cfg)
        return cfg

    def running(self) -> list[int]:
        now = time.monotonic()
        if now - self._running[0] >= self.ttl_s:
            with self.factory() as s:
                self._running = (now, running_experiment_ids(s))
        return self._running[1]

    def invalidate(self, experiment_id: int | None = None) -> None:
        if experiment_id is None:
            self._entries.clear()
        else:
            self._entries.pop(experiment_id, None)
        self._running = (float("-inf"), [])


@dataclass
class RouterState:
    settings: Settings
    factory: sessionmaker[Session]
    sink: MessageSink
    http: httpx.AsyncClient
    configs: ConfigCache
    limiter: UnitRateLimiter
    issued: IssuedRequests
    # score calls in flight; a rank waits router_queue_wait_s for one, then gets a 503
    serving_slots: asyncio.Semaphore
    items: ItemTable | None = None  # when loaded, item features come only from it


async def get_state(request: Request) -> RouterState:
    return request.app.state.router


StateDep = Annotated[RouterState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def spend_budget(state: RouterState, key: str) -> None:
    """One request of `key` ("unit:{unit}", or "request:{id}" for feedback on a request this
    replica did not issue); 429 + Retry-After when its minute's budget is spent."""
    wait_s = state.limiter.take(key)
    if wait_s is not None:
        raise HTTPException(429, f"over {state.settings.router.unit_requests_per_minute:g} "
                            "requests a minute for this unit "
                            "(CHUNKREC_ROUTER_UNIT_REQUESTS_PER_MINUTE)",
                            headers={"Retry-After": str(wait_s)})


def require_admin(state: StateDep,
                  x_api_key: Annotated[str | None, Header()] = None) -> None:
    """401 without an X-API-Key header, 403 with a wrong one (compared in constant time);
    with no key configured every admin call is refused."""
    expected = state.settings.router.api_key
    if not expected:
        raise HTTPException(403, "admin API disabled: set CHUNKREC_ROUTER_API_KEY")
    if x_api_key is None:
        raise HTTPException(401, "missing X-API-Key header",
                            headers={"WWW-Authenticate": "ApiKey"})
    if not secrets.compare_digest(x_api_key.encode(), expected.encode()):
        raise HTTPException(403, "wrong API key")


AdminDep = Depends(require_admin)
