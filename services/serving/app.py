"""The serving app factory.

    app = create_app(settings)          # FastAPI; uvicorn runs it (`chunkrec serve`)

On startup (lifespan) it opens one async Redis client (hiredis parser when installed; a
blocking pool with short timeouts, `open_redis`), loads every model version it finds, and
starts the refresher (registry.py) that swaps in new versions; on shutdown it stops the
refresher and closes the client. Routers: score, health,
metrics (one file each under routers/); `/docs` is FastAPI's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from services.messaging.redis_clients import open_async
from services.serving.deps import Scoring
from services.serving.errors import LogThrottle
from services.serving.metrics import ServingMetrics
from services.serving.middleware import RequestMetrics
from services.serving.registry import ModelRegistry
from services.serving.responses import OrjsonResponse
from services.serving.routers import health, metrics, score
from services.serving.schemas import RAW_VALUE_MSG, RAW_VALUE_TAGS
from services.serving.scorer import RawIdHasher
from services.web.body_limit import BodyLimit
from storage.settings import Settings

log = logging.getLogger("chunkrec.serving")


def open_redis(settings: Settings) -> aioredis.Redis:
    """The app's async Redis client: a blocking pool of `serving_redis_max_connections`.

    A burst of requests that all miss the cache waits up to `serving_redis_pool_timeout_s` for
    a pooled connection (a plain pool refuses the one past its size: "Too many connections").
    Every connect and read gives up after `serving_redis_timeout_s`, so a hung Redis costs a
    request that long, not a TCP timeout. A pooled connection goes stale when Redis restarts
    ("Connection closed by server"): one retry on a fresh connection turns that into a success
    instead of a 503; a timeout is not retried (the retry would wait as long again)."""
    timeout = settings.serving.redis_timeout_s
    if settings.redis.cluster:  # redis-py's cluster client: a pool per node, slot routing
        return open_async(settings.redis, socket_timeout=timeout,
                          socket_connect_timeout=timeout,
                          max_connections=settings.serving.redis_max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis.url, max_connections=settings.serving.redis_max_connections,
        timeout=settings.serving.redis_pool_timeout_s, socket_timeout=timeout,
        socket_connect_timeout=timeout, health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError], **settings.redis.client_kwargs)
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def create_app(settings: Settings) -> FastAPI:
    """A serving app reading models from `settings.redis.url` (see module docstring)."""
    if settings.serving.threads:
        torch.set_num_threads(settings.serving.threads)
    serving_metrics = ServingMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = open_redis(settings)
        registry = ModelRegistry(settings, client, serving_metrics)
        app.state.redis = client
        app.state.registry = registry
        app.state.scoring = Scoring(settings, registry, client, serving_metrics,
                                    app.state.hasher, app.state.log_throttle,
                                    app.state.score_slots)
        try:
            await registry.refresh()  # serve what Redis has from the first request on
        except (RedisError, OSError) as exc:
            log.warning("redis not reachable at startup (%r); retrying in the background", exc)
        except Exception:  # noqa: BLE001 - the refresher retries; startup must not fail on it
            log.exception("version check at startup failed; retrying in the background")
        task = asyncio.create_task(registry.run())
        # What startup allocated (modules, models) goes out of the collector's way: a full
        # collection then walks only what requests allocate (it was the p99 tail).
        gc.freeze()
        try:
            yield
        finally:
            registry.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()

    app = FastAPI(
        title="chunkrec serving",
        description="CTR scores from online-trained models with self-resizing (FIITED) "
                    "embedding tables; embeddings read from Redis.",
        version="1",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    app.state.metrics = serving_metrics
    app.state.hasher = RawIdHasher(max_bytes=settings.serving.hash_memo_bytes)
    app.state.log_throttle = LogThrottle()
    # admission: past this many requests in scoring, a burst queues (then sheds with 503)
    # instead of starving the event loop so that every request's Redis reads time out
    app.state.score_slots = asyncio.Semaphore(settings.serving.max_inflight)
    app.include_router(score.router)
    app.include_router(health.router)
    app.include_router(metrics.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> OrjsonResponse:
        # pydantic's errors without the offending input echoed back (it can be a whole body);
        # a raw feature value's two union branches fold into one error at the field's loc
        errors: dict[tuple[object, ...], dict[str, object]] = {}
        for e in exc.errors():
            loc = tuple(e.get("loc", ()))
            if len(loc) >= 3 and loc[-3] == "features" and loc[-1] in RAW_VALUE_TAGS:
                loc = loc[:-1]
                errors[loc] = {"type": "value_error", "loc": list(loc), "msg": RAW_VALUE_MSG}
            else:
                errors.setdefault(loc, {"type": e.get("type"), "loc": list(loc),
                                        "msg": e.get("msg")})
            if len(errors) >= 20:
                break
        return OrjsonResponse({"detail": list(errors.values())}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=settings.serving.max_body_bytes,
                       timeout_s=settings.serving.body_timeout_s)
    app.add_middleware(RequestMetrics, metrics=serving_metrics)  # outermost: sees 413s too
    return app


def app_from_env() -> FastAPI:
    """The entry point of a `chunkrec serve --workers N` worker process (uvicorn imports it
    by name): the app of the settings in the environment, which the parent set."""
    from storage.settings import get_settings

    return create_app(get_settings())
