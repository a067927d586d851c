"""`GET /healthz` (the process answers) and `GET /readyz` (Redis reachable, a model loaded, and
no served model whose version checks have failed for over `serving_stale_after_s`; per model
the version served, whether it may be stale, and the age of its last good version check)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from redis.exceptions import RedisError

from services.serving.deps import RedisDep, RegistryDep, SettingsDep
from services.serving.responses import OrjsonResponse
from services.serving.schemas import HealthResponse, ModelStatus, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "not ready"}})
async def readyz(registry: RegistryDep, client: RedisDep, settings: SettingsDep
                 ) -> OrjsonResponse:
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
        age = registry.refresh_age(name)
        models[name] = ModelStatus(
            version=m.version, redis_version=registry.redis_versions.get(name),
            # Redis down: the cached version is served and may be behind what the trainer has
            stale=not redis_ok or registry.stale(name),
            age_s=round(now - m.record.created_at, 3),
            refresh_age_s=None if age is None else round(age, 3),
            refresh_error=registry.errors.get(name, ""),
            events_applied=m.record.events_applied)
    missing = sorted(registry.only - set(models))
    overdue = registry.overdue()
    ready = redis_ok and bool(models) and not missing and not overdue
    detail = "" if ready else "; ".join(filter(None, [
        "" if redis_ok else "redis unreachable",
        "" if models else "no model loaded",
        f"not loaded: {missing}" if missing and models else "",
        *(f"{n}: no good version check for {models[n].refresh_age_s} s "
          f"(CHUNKREC_SERVING_STALE_AFTER_S={settings.serving.stale_after_s:g}): "
          f"{registry.errors.get(n) or 'redis unreachable'}" for n in overdue),
        "" if overdue else registry.last_error]))
    body = ReadyResponse(ready=ready, redis=redis_ok, models=models, detail=detail)
    return OrjsonResponse(body.model_dump(), status_code=200 if ready else 503)
