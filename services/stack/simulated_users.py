"""Simulated users for the A/B router (`chunkrec replay --mode users --data movielens...`).

Users arrive in rating-time order. Each user's ratings are cut into sessions of
`session_items` consecutive ratings; a session becomes one POST /v1/rank whose candidates are
those rated items plus `negatives` sampled items the user never rated. The router ranks them
with the unit's arm and returns the top_k shown; the user clicks every shown item they rated
>= 4 (POST /v1/feedback). Better rankings put liked items into the top_k, so the arms' CTR
differs by ranking quality alone.

    sessions = build_sessions(ratings, session_items=3)
    stats = simulate(http_client, router_url, sessions, features, ...)
    stats = run_users(settings, "movielens-100k", "http://127.0.0.1:8100", limit=500)  # both

Features: the user's (user, gender, age, occupation, zip) go as the request's context; the
item's (item, genre: ITEM_FEATURES) either with each candidate or, when the router serves
them from its item table (`item_table(features)` written to CHUNKREC_ROUTER_ITEM_TABLE), not
at all: candidates are then `{"item": id}`. Either way the router merges them into the
MovieLens schema's seven fields.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from services.stack.replay import TokenBucket, unit_head
from storage.datasets.spec import DatasetError, open_dataset
from storage.settings import Settings

ITEM_FEATURES = ("item", "genre")  # what a candidate carries (or the item table holds)


@dataclass
class Session:
    user: int
    ts: int
    items: np.ndarray  # int64[k] the items rated in this session
    ratings: np.ndarray  # float64[k]


@dataclass
class UserFeatures:
    """Raw feature values, the string forms the dataset reader hashes."""

    users: dict[int, dict[str, str]]  # user -> gender, age, occupation, zip
    genres: dict[int, str]  # item -> first listed genre
    all_items: np.ndarray  # int64[M]
    rated: dict[int, set[int]]  # user -> every item they rated


@dataclass
class UserStats:
    requests: int = 0
    shown: int = 0
    clicks: int = 0
    errors: int = 0
    seconds: float = 0.0


def build_sessions(ratings: pd.DataFrame, session_items: int = 3, skip_ratings: int = 0,
                   unit_share: float | None = None) -> list[Session]:
    """ratings[user, item, rating, timestamp] -> sessions in time order (stable), made of the
    ratings after the first `skip_ratings` in that order: the ones `replay --limit N` sent as
    warm-up (the reader sorts the same way), so no model has seen a session's labels. With
    `unit_share`, of each user's ratings after their first share (what `replay
    --unit-share` sent: replay.unit_head)."""
    r = ratings.sort_values("timestamp", kind="stable").iloc[skip_ratings:]
    if unit_share is not None:
        r = r[~unit_head(r["user"].to_numpy(), unit_share)]
    r = r.reset_index(drop=True)
    r["block"] = r.groupby("user").cumcount() // session_items
    out = []
    for (user, _), g in r.groupby(["user", "block"], sort=False):
        out.append(Session(int(user), int(g["timestamp"].iloc[0]),
                           g["item"].to_numpy(np.int64), g["rating"].to_numpy(np.float64)))
    out.sort(key=lambda s: s.ts)
    return out


def load_movielens(spec: str, data_dir: Path) -> tuple[pd.DataFrame, UserFeatures]:
    """Ratings and raw features of a MovieLens spec (movielens-100k, movielens:PATH)."""
    ds = open_dataset(spec, data_dir)
    tables = getattr(ds, "_tables", None)
    if tables is None or not spec.lower().startswith("movielens"):
        raise DatasetError(f"--mode users needs a MovieLens data set, got {spec!r}")
    t = tables()
    users: dict[int, dict[str, str]] = {}
    if t.users is not None:
        for row in t.users.itertuples(index=False):
            users[int(row.user)] = {k: str(getattr(row, k)) for k in
                                    ("gender", "age", "occupation", "zip")}
    genres: dict[int, str] = {}
    if t.movies is not None:
        first = t.movies["genres"].astype(str).str.partition("|")[0]
        genres = dict(zip(t.movies["item"].astype(int).tolist(), first.tolist(), strict=True))
    rated = t.ratings.groupby("user")["item"].agg(lambda s: set(s.tolist())).to_dict()
    feats = UserFeatures(users, genres, np.unique(t.ratings["item"].to_numpy(np.int64)),
                         {int(k): v for k, v in rated.items()})
    return t.ratings, feats


def item_table(feats: UserFeatures) -> pd.DataFrame:
    """The router's item table (columns ITEM_FEATURES, one row per item of the data set), the
    values a candidate would carry: rank_request(..., item_features=False) needs it loaded.

        item_table(feats).to_csv(path, index=False)   # item,genre / 1,Animation / ...
    """
    items = pd.Series(feats.all_items, dtype=np.int64)
    return pd.DataFrame({"item": items.astype(str),
                         "genre": items.map(feats.genres).fillna("").astype(str)},
                        columns=list(ITEM_FEATURES))


def rank_request(s: Session, feats: UserFeatures, rng: np.random.Generator, negatives: int,
                 top_k: int, item_features: bool = True) -> tuple[dict, set[str]]:
    """The /v1/rank body of a session, and the items the user would click (rating >= 4).
    Without `item_features` the candidates are item ids only (the router's table has the
    rest)."""
    seen = feats.rated.get(s.user, set())
    pool = rng.choice(feats.all_items, size=min(len(feats.all_items), 4 * negatives + 8),
                      replace=False)
    neg = [int(i) for i in pool if int(i) not in seen][:negatives]
    items = [int(i) for i in s.items] + neg
    rng.shuffle(items)
    context = {"user": str(s.user), **feats.users.get(s.user, {})}
    cands = ([{"item": str(i), "features": {"item": str(i), "genre": feats.genres.get(i, "")}}
              for i in items] if item_features else [{"item": str(i)} for i in items])
    liked = {str(int(i)) for i, r in zip(s.items, s.ratings, strict=True) if r >= 4}
    return {"unit_id": str(s.user), "candidates": cands, "context": context,
            "top_k": top_k}, liked


def simulate(client, router_url: str, sessions: list[Session], feats: UserFeatures,  # type: ignore[no-untyped-def]
             negatives: int = 7, top_k: int = 3, rate: float | None = None, seed: int = 0,
             experiment_id: int | None = None, item_features: bool = True,
             progress: Callable[[int], None] | None = None, concurrency: int = 1) -> UserStats:
    """Drive the router with `sessions` through `client` (an httpx.Client or a TestClient);
    `item_features=False` when the router has an item table (candidates are ids only).
    `concurrency` > 1: that many threads, each with the sessions of its share of the users
    (user % concurrency) in their order, each at rate / concurrency."""
    if concurrency > 1:
        return _simulate_concurrently(client, router_url, sessions, feats, negatives, top_k,
                                      rate, seed, experiment_id, item_features, progress,
                                      concurrency)
    rng = np.random.default_rng(seed)
    bucket = TokenBucket(rate, burst=max(1.0, rate * 0.1)) if rate else None
    st = UserStats()
    base = router_url.rstrip("/")
    t0 = time.perf_counter()
    for s in sessions:
        if bucket is not None:
            bucket.take(1)
        body, liked = rank_request(s, feats, rng, negatives, top_k, item_features)
        if experiment_id is not None:
            body["experiment_id"] = experiment_id
        r = client.post(f"{base}/v1/rank", json=body)
        st.requests += 1
        if r.status_code != 200:
            st.errors += 1
            continue
        out = r.json()
        st.shown += len(out["items"])
        for it in out["items"]:
            if it["item"] in liked:
                fb = client.post(f"{base}/v1/feedback", json={
                    "request_id": out["request_id"], "item": it["item"], "clicked": True})
                st.clicks += fb.status_code == 202
        if progress is not None:
            progress(1)
    st.seconds = time.perf_counter() - t0
    return st


def _simulate_concurrently(client, router_url: str, sessions: list[Session],  # type: ignore[no-untyped-def]
                           feats: UserFeatures, negatives: int, top_k: int, rate: float | None,
                           seed: int, experiment_id: int | None, item_features: bool,
                           progress: Callable[[int], None] | None,
                           concurrency: int) -> UserStats:
    """simulate() in `concurrency` threads over disjoint users; the stats summed."""
    from concurrent.futures import ThreadPoolExecutor

    parts = [[s for s in sessions if s.user % concurrency == k] for k in range(concurrency)]
    share = rate / concurrency if rate else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda kp: simulate(
            client, router_url, kp[1], feats, negatives, top_k, share, seed + kp[0],
            experiment_id, item_features, progress), enumerate(parts)))
    st = UserStats(sum(d.requests for d in done), sum(d.shown for d in done),
                   sum(d.clicks for d in done), sum(d.errors for d in done))
    st.seconds = time.perf_counter() - t0
    return st


def run_users(settings: Settings, data: str, router_url: str, rate: float | None = None,
              limit: int | None = None, skip_ratings: int = 0,
              unit_share: float | None = None, concurrency: int = 1,
              on_sessions: Callable[[int], None] | None = None,
              progress: Callable[[int], None] | None = None) -> UserStats:
    """`chunkrec replay --mode users`: the sessions of a MovieLens data set after its first
    `skip_ratings` ratings (at most `limit`) against the router at `router_url`, at `rate`
    sessions/s; `on_sessions(n)` once they are built. With CHUNKREC_ROUTER_ITEM_TABLE set
    (the router's item table, as `chunkrec up` gives both) the users send item ids only.
    Raises DatasetError for a data set that is not MovieLens."""
    import httpx

    ratings, feats = load_movielens(data, settings.data_dir)
    sessions = build_sessions(ratings, skip_ratings=skip_ratings,
                              unit_share=unit_share)[:limit]
    if on_sessions is not None:
        on_sessions(len(sessions))
    limits = httpx.Limits(max_connections=max(10, concurrency))
    with httpx.Client(timeout=10.0, limits=limits) as client:
        return simulate(client, router_url, sessions, feats, rate=rate, seed=settings.seed,
                        progress=progress, item_features=settings.router.item_table is None,
                        concurrency=concurrency)
