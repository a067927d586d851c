"""The A/B router: deterministic assignment that matches the weights, admin endpoints behind
the API key, ranking through the serving tier (an httpx mock transport standing in for
serving) with the exposure logged, feedback logged, phases re-bucketing units."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from services import wire
from services.experiments.router.app import create_app
from services.experiments.router.assignment import assign_arm, assign_arms
from storage.settings import Settings

KEY = "s3cret-key"


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, orjson.loads(value)))


def fake_serving(request: httpx.Request) -> httpx.Response:
    """Scores an item by its numeric 'item' feature / 100; model 'broken' fails."""
    body = orjson.loads(request.content)
    if body["model"] == "broken":
        return httpx.Response(503, json={"detail": "no version"})
    scores = [int(it["features"]["item"]) / 100 for it in body["items"]]
    return httpx.Response(200, json={"model": body["model"], "version": 7, "scores": scores,
                                     "unseen_ids": 0})


@pytest.fixture
def client(migrated_db: str) -> Iterator[tuple[TestClient, ListSink]]:
    settings = Settings(database_url=migrated_db, router_api_key=KEY, router_config_ttl_s=0.0,
                        serving_url="http://serving.test")
    sink = ListSink()
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake_serving))
    with TestClient(create_app(settings, sink=sink, http=http)) as c:
        yield c, sink


ADMIN = {"X-API-Key": KEY}
BODY = {"name": "exp", "salt": "salt1",
        "arms": [{"name": "ctl", "model": "fixed64", "weight": 1, "control": True},
                 {"name": "fiited", "model": "fiited", "weight": 1}]}


def test_assignment_deterministic_and_matches_weights() -> None:
    units = [f"u{i}" for i in range(100_000)]
    weights = [0.5, 0.3, 0.2]
    arms = assign_arms("salt-a", 1, units, weights)
    assert np.array_equal(arms, assign_arms("salt-a", 1, units, weights))  # a "restart"
    assert all(assign_arm("salt-a", 1, u, weights) == a for u, a in
               zip(units[:500], arms[:500].tolist(), strict=True))
    counts = np.bincount(arms, minlength=3)
    _, p = stats.chisquare(counts, np.array(weights) * len(units))
    assert p > 0.001, counts
    # another salt or phase re-buckets independently: agreement is chance (sum of w^2 = 0.38)
    other = assign_arms("salt-a", 2, units, weights)
    assert abs((other == arms).mean() - 0.38) < 0.01
    assert not np.any(assign_arms("s", 1, units[:1000], [0, 1, 0]) != 1)  # zero weight never


@pytest.mark.parametrize("headers,status", [({}, 401), ({"X-API-Key": "wrong"}, 403),
                                            ({"X-API-Key": KEY + "x"}, 403)])
def test_admin_refuses_missing_or_wrong_key(client, headers, status) -> None:
    c, _ = client
    assert c.post("/v1/experiments", json=BODY, headers=headers).status_code == status
    created = c.post("/v1/experiments", json=BODY, headers=ADMIN)
    assert created.status_code == 201
    eid = created.json()["id"]
    for method, path, body in (("post", f"/v1/experiments/{eid}/start", None),
                               ("post", f"/v1/experiments/{eid}/stop", None),
                               ("put", f"/v1/experiments/{eid}/weights",
                                {"weights": {"ctl": 1, "fiited": 2}}),
                               ("get", f"/v1/experiments/{eid}", None)):
        r = c.request(method.upper(), path, json=body, headers=headers)
        assert r.status_code == status, (path, r.text)
    assert c.get(f"/v1/experiments/{eid}", headers=ADMIN).json()["status"] == "draft"


def test_rank_feedback_and_phases(client) -> None:
    c, sink = client
    eid = c.post("/v1/experiments", json=BODY, headers=ADMIN).json()["id"]
    cands = [{"item": str(i), "features": {"item": str(i)}} for i in (5, 50, 20, 90)]
    req = {"unit_id": "alice", "candidates": cands, "context": {"user": "alice"}, "top_k": 3}
    assert c.post("/v1/rank", json=req).status_code == 409  # not started
    assert c.post(f"/v1/experiments/{eid}/start", headers=ADMIN).status_code == 200
    r = c.post("/v1/rank", json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [i["item"] for i in out["items"]] == ["90", "50", "20"]
    assert out["phase"] == 1 and "arm" not in out and "model" not in out  # arm kept hidden
    expected_arm = ["ctl", "fiited"][assign_arm("salt1", 1, "alice", [1, 1])]
    topic, key, exposure = sink.sent[0]
    assert topic == wire.EXPOSURES_TOPIC and key.decode() == out["request_id"]
    assert exposure["arm"] == expected_arm and exposure["model_version"] == 7
    assert c.get(f"/v1/experiments/{eid}/assignment", params={"unit_id": "alice"},
                 headers=ADMIN).json()["arm"] == expected_arm
    # the same unit always lands on the same arm within the phase
    for _ in range(5):
        c.post("/v1/rank", json=req)
    assert {e["arm"] for t, _, e in sink.sent if t == wire.EXPOSURES_TOPIC} == {expected_arm}
    assert [s["item"] for s in exposure["shown"]] == ["90", "50", "20"]
    assert exposure["shown"][0]["features"] == {"user": "alice", "item": "90"}
    assert exposure["latency_ms"] > 0 and abs(exposure["ts"] - time.time()) < 60

    fb = c.post("/v1/feedback", json={"request_id": out["request_id"], "item": "90",
                                      "clicked": True})
    assert fb.status_code == 202
    assert sink.sent[-1][0] == wire.FEEDBACK_TOPIC and sink.sent[-1][2]["clicked"] is True

    # a new weight layout is a new phase: assignment follows phase 2's weights
    r = c.put(f"/v1/experiments/{eid}/weights", json={"weights": {"ctl": 0, "fiited": 1}},
              headers=ADMIN)
    assert r.json()["phase"] == 2
    out2 = c.post("/v1/rank", json=req).json()
    assert out2["phase"] == 2 and sink.sent[-1][2]["arm"] == "fiited"
    # bad input and a failing serving tier
    assert c.post("/v1/rank", json={"unit_id": "x", "candidates": []}).status_code == 422
    assert c.post(f"/v1/experiments/{eid}/stop", headers=ADMIN).status_code == 200
    assert c.post("/v1/rank", json=req).status_code == 409


def test_rank_reports_serving_failure(client) -> None:
    c, _ = client
    body = {**BODY, "arms": [{"name": "a", "model": "broken", "weight": 1},
                             {"name": "b", "model": "broken", "weight": 1}]}
    eid = c.post("/v1/experiments", json=body, headers=ADMIN).json()["id"]
    c.post(f"/v1/experiments/{eid}/start", headers=ADMIN)
    r = c.post("/v1/rank", json={"unit_id": 1, "candidates": [{"item": "1"}]})
    assert r.status_code == 502 and "503" in r.json()["detail"]
