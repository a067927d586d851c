"""FastAPI dependencies: the objects the app factory keeps on `app.state`, injected with
`Depends` so routers never reach for globals.

`ScoringDep` hands /v1/score everything it needs as one `Scoring` bundle: FastAPI solves each
dependency per request (a cache key, a call, an await), and seven of them were a measurable
share of a 100-candidate request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from services.serving.errors import LogThrottle
from services.serving.metrics import ServingMetrics
from services.serving.registry import ModelRegistry
from services.serving.scorer import RawIdHasher
from storage.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis


async def get_metrics(request: Request) -> ServingMetrics:
    return request.app.state.metrics


@dataclass(frozen=True)
class Scoring:
    """What a score request reads, built once by the app factory (app.state.scoring)."""

    settings: Settings
    registry: ModelRegistry
    redis: aioredis.Redis
    metrics: ServingMetrics
    hasher: RawIdHasher
    throttle: LogThrottle
    slots: asyncio.Semaphore


async def get_scoring(request: Request) -> Scoring:
    return request.app.state.scoring


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
ScoringDep = Annotated[Scoring, Depends(get_scoring)]
