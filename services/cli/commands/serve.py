"""`chunkrec serve`: the scoring API (services/serving) on uvicorn.

    chunkrec serve --host 127.0.0.1 --port 8000
    chunkrec serve --workers 2          # two processes sharing the port (uvicorn workers)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from storage.settings import Settings


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (CHUNKREC_SERVING_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (CHUNKREC_SERVING_PORT)")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL")] = None,
    models: Annotated[str | None, typer.Option(
        help="comma-separated models to serve (default: every model in Redis)")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="processes sharing the port (CHUNKREC_SERVING_WORKERS)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Serve POST /v1/score, /healthz, /readyz, /metrics and /docs."""
    from services.serving.app import create_app
    from storage.settings import SettingsError, get_settings

    updates = {k: v for k, v in (("serving_host", host), ("serving_port", port),
                                 ("redis_url", redis_url), ("serving_models", models),
                                 ("serving_workers", workers))
               if v is not None}
    try:
        settings = get_settings(**updates)  # the options are checked like the environment
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if settings.serving.workers > 1:
        run_workers(settings, log_level)
    else:
        run_server(create_app(settings), settings.serving.host, settings.serving.port,
                   log_level)


def run_server(app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
    """uvicorn as `chunkrec serve` runs it (one process; uvloop and httptools when installed,
    which uvicorn[standard] brings); bench/serving.py runs its apps the same way."""
    import uvicorn

    # log_config=None: uvicorn's loggers keep the process's logging (services/cli/logs.py)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, loop="auto",
                http="auto", timeout_graceful_shutdown=5, log_config=None)


def run_workers(settings: Settings, log_level: str = "warning") -> None:
    """`settings.serving.workers` uvicorn worker processes on one listening socket (the kernel
    hands each connection to one of them). Each worker builds its app from the environment,
    which carries these settings (`Settings.to_env`), options included."""
    import os

    import uvicorn

    os.environ.update(settings.to_env())
    uvicorn.run("services.serving.app:app_from_env", factory=True,
                workers=settings.serving.workers, host=settings.serving.host,
                port=settings.serving.port, log_level=log_level, access_log=False, loop="auto",
                http="auto", timeout_graceful_shutdown=5, log_config=None)
