"""`chunkrec replay`: stream a data set into Kafka as click events (services/stack/replay.py),
or, with --mode users, simulated MovieLens users against the A/B router
(services/stack/simulated_users.py).

    chunkrec replay --data movielens-100k --topic events --rate 2000
    chunkrec replay --data synthetic:events=20000,fields=4,vocab=2000,seed=1 --rate max
    chunkrec replay --mode users --data movielens-100k --limit 500 --router-url URL
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from services.cli.options import rate_option

if TYPE_CHECKING:
    from storage.settings import Settings


def replay(
    data: Annotated[str, typer.Option("--data", help="data-set spec, e.g. movielens-100k")],
    topic: Annotated[str | None, typer.Option(
        help="Kafka topic (default: the events topic)")] = None,
    rate: Annotated[str, typer.Option(help="events per second, or 'max'")] = "max",
    batch_events: Annotated[int | None, typer.Option(
        "--batch-events", min=1, help="events per Kafka message (default: settings, 2048 "
        "Arrow / 200 JSON)")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="'arrow': columns, many events a message (fast); 'json': a JSON "
        "array of events, as external producers send")] = "arrow",
    bootstrap: Annotated[str | None, typer.Option(
        help="Kafka host:port (default: CHUNKREC_KAFKA_BOOTSTRAP)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="stop after N events")] = None,
    id_prefix: Annotated[str | None, typer.Option(
        help="event ids are PREFIX:row (default: the spec)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    mode: Annotated[str, typer.Option(
        help="'events': stream into Kafka; 'users': simulated users drive the A/B router "
             "(services/stack/simulated_users.py; --limit = sessions)")] = "events",
    router_url: Annotated[str | None, typer.Option(
        help="--mode users: router base URL (default http://ROUTER_HOST:ROUTER_PORT)")] = None,
    skip_ratings: Annotated[int, typer.Option(
        min=0, help="--mode users: sessions only from the ratings after the first N in time "
                    "order (what a warm-up `replay --limit N` sent)")] = 0,
    unit_share: Annotated[float | None, typer.Option(
        "--unit-share", min=0.0, max=1.0, help="events: only each unit's (user's) first SHARE "
        "of its events; --mode users: sessions only from each user's ratings after them")] = None,
    concurrency: Annotated[int, typer.Option(
        min=1, max=256, help="--mode users: users in flight at once (each user's sessions "
                             "stay in order)")] = 1,
) -> None:
    """Stream a data set into Kafka in event-time order, several events per message; or, with
    --mode users, replay its users against the A/B router."""
    from storage.settings import SettingsError, get_settings

    settings = get_settings()
    if mode == "users":
        _users(settings, data, rate, limit, router_url, quiet, skip_ratings, unit_share,
               concurrency)
        return
    if mode != "events":
        raise typer.BadParameter("expected 'events' or 'users'", param_hint="--mode")
    if fmt not in ("arrow", "json"):
        raise typer.BadParameter("expected 'arrow' or 'json'", param_hint="--format")
    if bootstrap:
        try:  # checked like the environment's value
            settings = get_settings(kafka_bootstrap=bootstrap)
        except SettingsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    events_per_s = rate_option(rate, "--rate")
    from tqdm import tqdm

    from services import wire
    from services.cli.preflight import fail_if
    from services.messaging.reachable import broker_problem
    from services.stack.replay import replay_dataset
    from storage.datasets.spec import DatasetError, open_dataset

    topic = topic or wire.EVENTS_TOPIC
    try:
        dataset = open_dataset(data, settings.data_dir)
    except DatasetError as exc:
        fail_if(str(exc))
    try:
        total: int | None = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        total = None  # readers that do not know their length
    fail_if(broker_problem(settings.kafka.bootstrap))
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    bar = tqdm(total=total, unit="ev", unit_scale=True, disable=quiet, desc=f"replay -> {topic}")
    try:
        stats = replay_dataset(settings, data, topic=topic, rate=events_per_s,
                               batch_events=batch_events, limit=limit, id_prefix=id_prefix,
                               progress=bar.update, fmt=fmt,  # type: ignore[arg-type]
                               unit_share=unit_share)
    except (DatasetError, ValueError) as exc:
        bar.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    bar.close()
    typer.echo(f"sent {stats.events:,} events in {stats.messages:,} messages, "
               f"{stats.seconds:.1f} s, {stats.events_per_s:,.0f} events/s, "
               f"checksum {stats.checksum}")
    if stats.failed_messages:
        typer.echo(f"error: {stats.failed_messages} messages failed", err=True)
        raise typer.Exit(1)


def _users(settings: Settings, data: str, rate: str, limit: int | None, router_url: str | None,
           quiet: bool, skip_ratings: int, unit_share: float | None,
           concurrency: int) -> None:
    from tqdm import tqdm

    from services.stack.simulated_users import run_users
    from storage.datasets.spec import DatasetError

    url = router_url or f"http://{settings.router.host}:{settings.router.port}"
    bar = tqdm(unit="req", disable=quiet, desc=f"users -> {url}")

    def sessions(n: int) -> None:
        bar.reset(total=n)

    try:
        st = run_users(settings, data, url, rate=rate_option(rate, "--rate"), limit=limit,
                       skip_ratings=skip_ratings, unit_share=unit_share,
                       concurrency=concurrency, on_sessions=sessions, progress=bar.update)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        bar.close()
    ctr = st.clicks / st.shown if st.shown else 0.0
    typer.echo(f"{st.requests:,} requests, {st.shown:,} shown, {st.clicks:,} clicks "
               f"(CTR {100 * ctr:.2f}%), {st.errors} errors, {st.seconds:.1f} s")
    if st.errors:
        raise typer.Exit(1)
