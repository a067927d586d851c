"""`GET /healthz` (the process answers) and `GET /readyz` (Redis reachable and a model
loaded; per model the version served and whether Redis holds a newer one)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from redis.exceptions import RedisError

from services.serving.deps import RedisDep, RegistryDep
from services.serving.responses import OrjsonResponse
from services.serving.schemas import HealthResponse, ModelStatus, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "not ready"}})
async def readyz(registry: RegistryDep, client: RedisDep) -> OrjsonResponse:
    try:
        redis_ok = bool(await client.ping())
    except (RedisError, OSError):
        redis_ok = False
    now = time.time()
    models = {}
    for name in registry.names():
        m = registry.get(name)
        if m is None:
            continue
        newest = registry.redis_versions.get(name)
        models[name] = ModelStatus(
            version=m.version, redis_version=newest,
            # Redis down: the cached version is served and may be behind what the trainer has
            stale=not redis_ok or (newest is not None and newest > m.version),
            age_s=round(now - m.record.created_at, 3),
            events_applied=m.record.events_applied)
    missing = sorted(registry.only - set(models))
    ready = redis_ok and bool(models) and not missing
    detail = "" if ready else "; ".join(filter(None, [
        "" if redis_ok else "redis unreachable",
        "" if models else "no model loaded",
        f"not loaded: {missing}" if missing and models else "",
        registry.last_error]))
    body = ReadyResponse(ready=ready, redis=redis_ok, models=models, detail=detail)
    return OrjsonResponse(body.model_dump(), status_code=200 if ready else 503)
