"""`chunkrec replay --mode users`: simulated MovieLens users against the A/B router. With
CHUNKREC_ROUTER_ITEM_TABLE set (the router's item table, as `chunkrec up` gives both), the
users send item ids only; the router adds the items' features from its table."""

from __future__ import annotations

import httpx
import typer
from tqdm import tqdm

from services.stack.replay import parse_rate
from services.stack.simulated_users import build_sessions, load_movielens, simulate
from storage.datasets.spec import DatasetError
from storage.settings import Settings


def replay_users(settings: Settings, data: str, rate: str, limit: int | None,
                 router_url: str | None, quiet: bool, skip_ratings: int = 0) -> None:
    try:
        ratings, feats = load_movielens(data)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    sessions = build_sessions(ratings, skip_ratings=skip_ratings)[:limit]
    url = router_url or f"http://{settings.router_host}:{settings.router_port}"
    bar = tqdm(total=len(sessions), unit="req", disable=quiet, desc=f"users -> {url}")
    with httpx.Client(timeout=10.0) as client:
        st = simulate(client, url, sessions, feats, rate=parse_rate(rate),
                      seed=settings.seed, progress=bar.update,
                      item_features=settings.router_item_table is None)
    bar.close()
    ctr = st.clicks / st.shown if st.shown else 0.0
    typer.echo(f"{st.requests:,} requests, {st.shown:,} shown, {st.clicks:,} clicks "
               f"(CTR {100 * ctr:.2f}%), {st.errors} errors, {st.seconds:.1f} s")
    if st.errors:
        raise typer.Exit(1)
