"""Simulated users through the real router app (serving replaced by an httpx mock): one
request per session, clicks only on shown items rated >= 4, and a better ranking earns a
higher CTR."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from services import wire
from services.experiments.router.app import create_app
from services.stack.simulated_users import UserFeatures, build_sessions, simulate
from storage.settings import Settings


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, orjson.loads(value)))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_simulated_users_ctr_follows_ranking(tmp_path, concurrency) -> None:
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
        st = simulate(c, "", sessions, feats, negatives=5, top_k=3, concurrency=concurrency)
    assert st.requests == len(sessions) and st.errors == 0 and st.shown == 3 * len(sessions)
    # each user's sessions in their order, whichever thread ran them: the k-th request of a
    # unit shows items of its k-th session
    first = {s.user: {str(i) for i in s.items} for s in reversed(sessions)}
    seen_first: dict[str, dict] = {}
    for t, e in sink.sent:
        if t == wire.EXPOSURES_TOPIC:
            seen_first.setdefault(e["unit_id"], e)
    for unit, e in seen_first.items():
        rated = {s["item"] for s in e["shown"]} & {str(i) for i in feats.rated[int(unit)]}
        assert rated <= first[int(unit)], (unit, rated)
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


class RecordingClient:
    """A TestClient that keeps the JSON bodies posted to /v1/rank."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.ranks: list[dict] = []

    def post(self, url: str, json: dict) -> httpx.Response:
        if url.endswith("/v1/rank"):
            self.ranks.append(json)
        return self.client.post(url, json=json)


def test_users_send_item_ids_and_the_item_table_fills_the_schema(tmp_path) -> None:
    """With an item table (as `chunkrec up` runs it) the users send item ids only; serving and
    the exposures get the user's context plus the table's item features, and the joined events
    are valid MovieLens events (the seven schema fields, nothing else)."""
    from services.experiments.join_state import Closed
    from services.experiments.join_store import closed_to_events
    from services.stack.simulated_users import ITEM_FEATURES, item_table
    from storage.datasets.movielens import FIELDS, SCHEMA_100K
    from storage.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'u.db'}"
    upgrade(url)
    rng = np.random.default_rng(1)
    n_users, n_items = 30, 50
    rows = [(u, i, float(rng.integers(1, 6)), 1000 + 10 * k + u)
            for u in range(n_users) for k, i in enumerate(rng.choice(n_items, 6, replace=False))]
    ratings = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    genres = ("Drama", "Comedy", "Action")
    feats = UserFeatures({u: {"gender": "MF"[u % 2], "age": str(20 + u), "occupation": "writer",
                              "zip": f"{10000 + u}"} for u in range(n_users)},
                         {i: genres[i % 3] for i in range(n_items)}, np.arange(n_items),
                         ratings.groupby("user")["item"].agg(set).to_dict())
    table = tmp_path / "items.csv"
    item_table(feats).to_csv(table, index=False)
    scored: list[dict] = []

    def serving(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        scored.extend(it["features"] for it in body["items"])
        scores = [float(int(it["features"]["item"]) % 7) for it in body["items"]]
        return httpx.Response(200, json={"model": body["model"], "version": 1,
                                         "scores": scores, "unseen_ids": 0})

    settings = Settings(database_url=url, router_api_key="k", serving_url="http://s",
                        router_item_table=table)
    sink = ListSink()
    app = create_app(settings, sink=sink,
                     http=httpx.AsyncClient(transport=httpx.MockTransport(serving)))
    with TestClient(app) as c:
        eid = c.post("/v1/experiments", headers={"X-API-Key": "k"}, json={
            "name": "table", "arms": [{"name": "a", "model": "a", "weight": 1},
                                      {"name": "b", "model": "b", "weight": 1}]}).json()["id"]
        c.post(f"/v1/experiments/{eid}/start", headers={"X-API-Key": "k"})
        client = RecordingClient(c)
        sessions = build_sessions(ratings, session_items=3)
        st = simulate(client, "", sessions, feats, negatives=5, top_k=3, item_features=False)
        # candidates that carry features are refused while a table is loaded: the default
        # (item_features=True) against this router is every request an error
        refused = simulate(c, "", sessions[:3], feats, negatives=5, top_k=3)
    assert refused.requests == 3 and refused.errors == 3
    assert st.requests == len(sessions) == len(client.ranks) and st.errors == 0
    assert st.shown == 3 * len(sessions) and st.clicks > 0
    for body in client.ranks:
        assert all(cand.keys() == {"item"} for cand in body["candidates"])
        assert set(body["context"]) == set(FIELDS) - set(ITEM_FEATURES)
    assert scored and all(sorted(f) == sorted(FIELDS) for f in scored)

    exposures = [e for t, e in sink.sent if t == wire.EXPOSURES_TOPIC]
    clicks = [f for t, f in sink.sent if t == wire.FEEDBACK_TOPIC]
    assert len(exposures) == st.requests and len(clicks) == st.clicks
    for e in exposures:
        u = int(e["unit_id"])
        for s in e["shown"]:
            i = int(s["item"])
            assert s["features"] == {"user": str(u), **feats.users[u], "item": str(i),
                                     "genre": genres[i % 3]}
    clicked: dict[str, dict[str, float]] = {}
    for f in clicks:
        clicked.setdefault(f["request_id"], {})[f["item"]] = 0.0
    events = [ev for e in exposures for ev in closed_to_events(
        Closed(e, clicked.get(e["request_id"], {}), {}), SCHEMA_100K.name)]
    _, bad = wire.validate_events(events, SCHEMA_100K)
    assert bad == [] and len(events) == st.shown
    assert sum(ev["label"] for ev in events) == st.clicks
    assert all(sorted(ev["features"]) == sorted(FIELDS) for ev in events)
