"""The router's FastAPI app.

    app = create_app(settings)                      # Kafka sink, httpx client, DB from settings
    app = create_app(settings, sink=..., http=...)  # injected (tests)
    uvicorn.run(app, host=settings.router_host, port=settings.router_port)
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.router.deps import ConfigCache, KafkaSink, MessageSink, RouterState
from services.router.routers import dashboard, experiments, feedback, rank, reports
from services.serving.middleware import BodyLimit
from storage.db.session import make_engine, session_factory
from storage.settings import Settings


def create_app(settings: Settings, sink: MessageSink | None = None,
               http: httpx.AsyncClient | None = None) -> FastAPI:
    """The router app; what is not injected is made from `settings` at startup and closed at
    shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        factory = session_factory(engine)
        own_sink = sink is None
        own_http = http is None
        state = RouterState(
            settings=settings, factory=factory,
            sink=sink if sink is not None else KafkaSink(settings.kafka_bootstrap),
            http=http if http is not None else httpx.AsyncClient(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)),
            configs=ConfigCache(factory, settings.router_config_ttl_s))
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
    for module in (experiments, rank, feedback, reports, dashboard):
        app.include_router(module.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # pydantic's errors without the input echoed back (100k candidates came back whole)
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": errors[:20]}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=settings.router_max_body_bytes)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
