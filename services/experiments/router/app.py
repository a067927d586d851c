"""The router's FastAPI app.

    app = create_app(settings)                      # Kafka sink, httpx client, DB from settings
    app = create_app(settings, sink=..., http=...)  # injected (tests)
    uvicorn.run(app, host=settings.router.host, port=settings.router.port)

Startup refuses a database that is not at the newest schema revision (RuntimeError naming the
fix), or upgrades it when `router_migrate` is set; it loads the item table when one is set.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.experiments.router.deps import ConfigCache, KafkaSink, MessageSink, RouterState
from services.experiments.router.items import ItemTable
from services.experiments.router.limiter import IssuedRequests, UnitRateLimiter
from services.experiments.router.metrics import RequestMetrics, RouterMetrics
from services.experiments.router.routers import (
    dashboard,
    experiments,
    feedback,
    health,
    rank,
    reports,
)
from services.web.body_limit import BodyLimit
from storage.db.migrate import schema_problem, upgrade
from storage.db.session import make_engine, session_factory
from storage.settings import Settings


def create_app(settings: Settings, sink: MessageSink | None = None,
               http: httpx.AsyncClient | None = None) -> FastAPI:
    """The router app; what is not injected is made from `settings` at startup and closed at
    shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url
        if settings.router.migrate:
            upgrade(url)
        problem = schema_problem(url)
        if problem is not None:  # else every DB endpoint would answer 500 ("no such table")
            raise RuntimeError(problem)
        items = (ItemTable.load(settings.router.item_table)
                 if settings.router.item_table is not None else None)
        engine = make_engine(url)
        factory = session_factory(engine)
        own_sink = sink is None
        own_http = http is None
        slots = settings.router.serving_concurrency
        state = RouterState(
            settings=settings, factory=factory,
            sink=sink if sink is not None else KafkaSink(settings.kafka.bootstrap),
            # the pool holds as many connections as there are slots, so a rank that got a
            # slot finds a connection; the pool wait is a backstop (PoolTimeout -> 503)
            http=http if http is not None else httpx.AsyncClient(
                limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
                timeout=httpx.Timeout(settings.router.score_timeout_s,
                                      pool=max(settings.router.queue_wait_s, 0.01))),
            configs=ConfigCache(factory, settings.router.config_ttl_s),
            limiter=UnitRateLimiter(settings.router.unit_requests_per_minute,
                                    settings.router.rate_limit_units),
            issued=IssuedRequests(settings.router.rate_limit_units),
            serving_slots=asyncio.Semaphore(slots), items=items)
        app.state.router = state
        gc.freeze()  # startup's objects out of the collector's way (see the serving app)
        try:
            yield
        finally:
            if own_http:
                await state.http.aclose()
            if own_sink:
                state.sink.close()  # type: ignore[attr-defined]
            engine.dispose()

    app = FastAPI(title="chunkrec router", version="1", lifespan=lifespan,
                  description="A/B assignment, ranking through serving, exposure and feedback "
                              "logging, reports and the dashboard.")
    for module in (experiments, rank, feedback, reports, dashboard, health):
        app.include_router(module.router)
    app.state.router_metrics = RouterMetrics()  # /metrics and /readyz (routers/health.py)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's errors without the input echoed back (100k candidates came back whole)
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": errors[:20]}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=settings.router.max_body_bytes,
                       timeout_s=settings.router.body_timeout_s,
                       setting="CHUNKREC_ROUTER_MAX_BODY_BYTES")
    app.add_middleware(RequestMetrics, metrics=app.state.router_metrics)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
