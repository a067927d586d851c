"""`GET /readyz` and `GET /metrics` of the router.

/readyz checks what a rank needs: the database at the newest schema revision, serving
answering its /healthz, a Kafka broker answering at CHUNKREC_KAFKA_BOOTSTRAP. 200 when all
are ready, 503 otherwise; each check says ok or what is wrong, without internal addresses
(the body may reach clients through a load balancer's health page).

    {"status": "ready", "checks": {"database": "ok", "serving": "ok", "kafka": "ok"}}
"""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from services.experiments.router.deps import RouterState, StateDep
from services.messaging.reachable import broker_problem
from storage.db.migrate import current, head

router = APIRouter(tags=["health"])


def _database(state: RouterState) -> str:
    try:
        at = current(state.settings.resolved_database_url)
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
        return f"unreachable ({type(exc).__name__})"
    want = head()
    return "ok" if at == want else f"at revision {at}, not {want}: run chunkrec db upgrade"


async def _serving(state: RouterState) -> str:
    url = state.settings.resolved_serving_url.rstrip("/") + "/healthz"
    try:
        r = await state.http.get(url, timeout=2.0)
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok" if r.status_code == 200 else f"answered {r.status_code}"


def _kafka(state: RouterState) -> str:
    if getattr(state.sink, "producer", None) is None:
        return "ok"  # not Kafka (an injected sink)
    problem = broker_problem(state.settings.kafka.bootstrap, timeout_s=2.0)
    return "ok" if problem is None else "no broker answers"


@router.get("/readyz")
async def readyz(state: StateDep, request: Request) -> JSONResponse:
    database = await asyncio.to_thread(_database, state)
    kafka = await asyncio.to_thread(_kafka, state)
    checks = {"database": database, "serving": await _serving(state), "kafka": kafka}
    metrics = request.app.state.router_metrics
    for name, result in checks.items():
        metrics.ready.labels(name).set(1.0 if result == "ok" else 0.0)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, tags=["metrics"])
async def metrics(request: Request) -> Response:
    return Response(request.app.state.router_metrics.render(), media_type=CONTENT_TYPE_LATEST)
