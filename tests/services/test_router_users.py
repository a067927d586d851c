"""Simulated users through the real router app (serving replaced by an httpx mock): one
request per session, clicks only on shown items rated >= 4, and a better ranking earns a
higher CTR."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pandas as pd
from fastapi.testclient import TestClient

from services import wire
from services.router.app import create_app
from services.simulated_users import UserFeatures, build_sessions, simulate
from storage.settings import Settings


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, orjson.loads(value)))


def test_simulated_users_ctr_follows_ranking(tmp_path) -> None:
    from storage.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'u.db'}"
    upgrade(url)
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 80
    rows = [(u, i, float(rng.integers(1, 6)), 1000 + 10 * k + u)
            for u in range(n_users) for k, i in enumerate(rng.choice(n_items, 9, replace=False))]
    ratings = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    truth = {(str(u), str(i)): r for u, i, r, _ in rows}
    feats = UserFeatures({u: {"gender": "F"} for u in range(n_users)},
                         {i: "Drama" for i in range(n_items)}, np.arange(n_items),
                         ratings.groupby("user")["item"].agg(set).to_dict())

    def serving(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sign = 1 if body["model"] == "oracle" else -1
        scores = [0.5 + sign * 0.1 * truth.get((f["features"]["user"], f["features"]["item"]), 0)
                  for f in body["items"]]
        return httpx.Response(200, json={"model": body["model"], "version": 1,
                                         "scores": scores, "unseen_ids": 0})

    settings = Settings(database_url=url, router_api_key="k", serving_url="http://s")
    sink = ListSink()
    app = create_app(settings, sink=sink,
                     http=httpx.AsyncClient(transport=httpx.MockTransport(serving)))
    with TestClient(app) as c:
        eid = c.post("/v1/experiments", headers={"X-API-Key": "k"}, json={
            "name": "users", "arms": [{"name": "reverse", "model": "reverse", "weight": 1},
                                      {"name": "oracle", "model": "oracle", "weight": 1}]}
                     ).json()["id"]
        c.post(f"/v1/experiments/{eid}/start", headers={"X-API-Key": "k"})
        sessions = build_sessions(ratings, session_items=3)
        assert len(sessions) == n_users * 3
        assert np.all(np.diff([s.ts for s in sessions]) >= 0)  # users arrive in time order
        st = simulate(c, "", sessions, feats, negatives=5, top_k=3)
    assert st.requests == len(sessions) and st.errors == 0 and st.shown == 3 * len(sessions)
    exposures = {e["request_id"]: e for t, e in sink.sent if t == wire.EXPOSURES_TOPIC}
    clicks = [f for t, f in sink.sent if t == wire.FEEDBACK_TOPIC]
    assert len(exposures) == st.requests and len(clicks) == st.clicks > 0
    for f in clicks:  # only shown items the user rated >= 4
        e = exposures[f["request_id"]]
        assert f["item"] in {s["item"] for s in e["shown"]}
        assert truth[(e["unit_id"], f["item"])] >= 4
    shown = {a: 0 for a in ("oracle", "reverse")}
    clicked = dict(shown)
    for e in exposures.values():
        shown[e["arm"]] += len(e["shown"])
    for f in clicks:
        clicked[exposures[f["request_id"]]["arm"]] += 1
    assert clicked["oracle"] / shown["oracle"] > 1.5 * clicked["reverse"] / shown["reverse"]
