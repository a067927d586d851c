"""The router's /metrics and /readyz, on a real broker and database: requests are counted by
route template (not raw path); /readyz is 200 only when the database is at the newest
revision, serving answers and the Kafka producer is connected, and says which check failed
without naming an internal address."""

from __future__ import annotations

import uuid

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.experiments.router.app import create_app
from services.stack.infra import ManagedProcess
from storage.db.migrate import downgrade
from storage.settings import Settings
from tests.services.test_router_hostile import ADMIN, ARMS, KEY, rank_body, serving_like

SERVING = "http://serving.internal:8000"


def _serving(healthy: list[bool]):  # noqa: ANN202 - an httpx handler
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200 if healthy[0] else 500, json={"status": "ok"})
        return serving_like(request)
    return handler


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((name, labels))


def test_readyz_and_metrics(broker: ManagedProcess, migrated_db: str) -> None:
    healthy = [True]
    settings = Settings(database_url=migrated_db, router_api_key=KEY, router_config_ttl_s=0.0,
                        serving_url=SERVING, kafka_bootstrap=broker.address)
    http = httpx.AsyncClient(transport=httpx.MockTransport(_serving(healthy)))
    with TestClient(create_app(settings, http=http)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready",
                                "checks": {"database": "ok", "serving": "ok", "kafka": "ok"}}
        r = c.post("/v1/experiments", headers=ADMIN,
                   json={"name": f"o-{uuid.uuid4().hex[:8]}", "salt": "s", "arms": ARMS})
        exp = r.json()["id"]
        c.post(f"/v1/experiments/{exp}/start", headers=ADMIN)
        for unit in ("u1", "u2", "u3"):
            assert c.post("/v1/rank", json=rank_body(unit)).status_code == 200
        assert c.get(f"/v1/experiments/{exp}/assignment?unit_id=u1").status_code == 401

        healthy[0] = False
        down = c.get("/readyz")
        assert down.status_code == 503 and down.json()["checks"]["serving"] == "answered 500"
        healthy[0] = True
        downgrade(migrated_db, "0001")
        old = c.get("/readyz")
        assert old.status_code == 503
        assert "chunkrec db upgrade" in old.json()["checks"]["database"]
        assert "serving.internal" not in old.text and broker.address not in old.text

        text = c.get("/metrics").text
    assert _value(text, "chunkrec_router_requests_total", route="/v1/rank", method="POST",
                  code="200") == 3
    assert _value(text, "chunkrec_router_requests_total",
                  route="/v1/experiments/{experiment_id}/assignment", code="401") == 1
    assert _value(text, "chunkrec_router_request_seconds_count", route="/v1/rank") == 3
    assert _value(text, "chunkrec_router_ready", check="database") == 0
    assert _value(text, "chunkrec_router_ready", check="kafka") == 1
    assert "u1" not in text  # raw paths and units never become labels
