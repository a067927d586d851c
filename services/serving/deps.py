"""FastAPI dependencies: the objects the app factory keeps on `app.state`, injected with
`Depends` so routers never reach for globals."""

from __future__ import annotations

import asyncio
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


async def get_hasher(request: Request) -> RawIdHasher:
    return request.app.state.hasher


async def get_log_throttle(request: Request) -> LogThrottle:
    return request.app.state.log_throttle


async def get_score_slots(request: Request) -> asyncio.Semaphore:
    return request.app.state.score_slots


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
HasherDep = Annotated[RawIdHasher, Depends(get_hasher)]
LogThrottleDep = Annotated[LogThrottle, Depends(get_log_throttle)]
ScoreSlotsDep = Annotated[asyncio.Semaphore, Depends(get_score_slots)]
