"""`chunkrec up` / `chunkrec down`: the whole system on one machine (services/stack/processes.py).

    chunkrec up                       # MovieLens-100k warm-up, then the A/B experiment:
                                      # simulated users, verdict table, dashboard address
    chunkrec up --sessions 500 --keep # smaller; stays up for the dashboard until Ctrl-C
    chunkrec up --no-experiment --events 20000 --no-progress   # the two-model replay
    chunkrec down                     # from another shell: stops what `up` started
"""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from services.cli.commands import data as data_commands
from services.stack.experiment import (
    EXPERIMENT_MODELS,
    ExperimentPlan,
    StackExperiment,
    UsersRun,
    is_movielens,
    warmup_events,
)
from services.stack.infra import InfraError
from services.stack.processes import (
    DEFAULT_MODELS,
    Stack,
    StackConfig,
    StackError,
    StackResult,
    down,
)
from services.stack.report import (
    live_table,
    plot,
    rate,
    redis_memory,
    summary_table,
    verdict_table,
)
from storage.datasets.movielens import ML100K_FILES
from storage.settings import Settings, get_settings


def _ensure_movielens(settings: Settings) -> None:
    cache = settings.data_dir / "movielens-100k"
    if not all((cache / f).is_file() for f in ML100K_FILES):
        data_commands.fetch("movielens-100k", force=False)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # `chunkrec down` sends SIGTERM: stop exactly like a Ctrl-C


def _parse_rate(raw: str, hint: str) -> float | None:
    try:
        return None if raw.strip().lower() == "max" else float(raw)
    except ValueError as exc:
        raise typer.BadParameter(f"expected a number or 'max', got {raw!r}",
                                 param_hint=hint) from exc


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
    sessions: Annotated[int, typer.Option(
        min=1, help="simulated-user sessions (one /v1/rank each)")] = 6000,
    users_rate: Annotated[str, typer.Option(
        "--users-rate", help="simulated-user sessions/s, or 'max'")] = "max",
    keep: Annotated[bool, typer.Option(
        "--keep", help="keep everything running after the report, for inspection, until "
                       "Ctrl-C or `chunkrec down`")] = False,
) -> None:
    """Start broker, Redis, the trainers, serving and a replay; with the experiment (the
    default on MovieLens) also the database, the A/B router and the joiner, then simulated
    users; show progress; print the training summary, a PNG and the verdict table with the
    dashboard's address; stop it all (unless --keep)."""
    settings = get_settings()
    console = Console()
    if not console.is_terminal:  # logs and pipes: plain lines (a Live table shows only its
        no_progress = True        # last frame there), and no wrapped tables
        console = Console(width=max(console.width, 170))
    events_per_s = _parse_rate(rate_, "--rate")
    users_per_s = _parse_rate(users_rate, "--users-rate")
    if data == "movielens-100k":
        _ensure_movielens(settings)
    if experiment and not is_movielens(data):
        console.print(f"note: the experiment's simulated users need MovieLens, not {data!r}: "
                      "running without it (--no-experiment)", highlight=False)
        experiment = False
    if experiment and events is None:
        events = warmup_events(data)
    config = StackConfig(data=data, events=events, rate=events_per_s, minutes=minutes,
                         serving_port=port, durable=durable,
                         models=EXPERIMENT_MODELS if experiment else DEFAULT_MODELS)
    policies = dict(config.models)
    stack = Stack(settings, config)
    lab = StackExperiment(stack, ExperimentPlan(data=data, sessions=sessions,
                                                users_rate=users_per_s)) if experiment else None
    signal.signal(signal.SIGTERM, _raise_interrupt)
    last_line = [0.0]

    def every_5s() -> bool:
        if time.monotonic() - last_line[0] < 5:
            return False
        last_line[0] = time.monotonic()
        return True

    def plain(result: StackResult) -> None:
        if not every_5s():
            return
        parts = []
        for name in policies:
            rec = result.latest.get(name)
            if rec is not None:
                ev_s = rate(result.samples, name)
                auc = rec.metrics.get("auc")
                parts.append(f"{name} v{rec.version} {rec.events_applied:,} ev "
                             f"({0 if ev_s is None else ev_s:,.0f}/s) "
                             f"auc {'-' if auc is None else f'{auc:.4f}'} "
                             f"redis {rec.redis_embedding_bytes / 1024:,.1f} KiB")
        console.print(f"[{result.seconds:5.0f} s] " + (" | ".join(parts) or "waiting"),
                      highlight=False)

    def users_line(run: UsersRun) -> None:
        if not every_5s():
            return
        parts = [f"{arm} {a['exposures']:,} shown, CTR {100 * a['ctr']:.1f}%"
                 for arm, a in run.arms.items()]
        state = "users done" if run.requests is not None else "users running"
        console.print(f"[{run.seconds:5.0f} s] {state}, {run.joined:,} requests joined | "
                      + " | ".join(parts), highlight=False)

    ok = True
    try:
        with stack:
            console.print(f"run folder: {stack.run_dir}")
            stack.start(on_step=lambda msg: console.print(f"- {msg}"))
            if lab is not None:
                lab.start(step=lambda msg: console.print(f"- {msg}"))
            console.print(f"serving: {stack.serving_url}/docs  (stop: Ctrl-C or chunkrec down)")
            if no_progress:
                result = stack.wait(on_tick=plain)
            else:
                title = (f"chunkrec up: {data} -> {', '.join(policies)} -> "
                         f"{stack.serving_url}")
                with Live(console=console, refresh_per_second=2, transient=False) as live:
                    result = stack.wait(on_tick=lambda res: live.update(
                        live_table(res, policies, stack.served_versions(), title)))
            ok = result.done
            verdict = None
            if lab is not None and result.done:
                console.print(f"- warm-up applied by every trainer; {sessions:,} simulated-user "
                              f"sessions from the ratings after the first "
                              f"{result.events_sent or 0:,}")
                run = lab.drive(skip_ratings=result.events_sent or 0, on_tick=users_line)
                ok = run.done
                report, status = lab.finish(stop_experiment=not keep)
                verdict = verdict_table(report, policies,
                                        f"{lab.dashboard_url}  (HTTP {status})")
                users = (f"simulated users: {run.requests or 0:,} requests, {run.shown or 0:,} "
                         f"shown, {run.clicks or 0:,} clicks, {run.errors or 0} errors; "
                         f"{run.joined:,} requests joined ({run.reason})")
                r = stack.client()
                try:  # the trainers' state after learning from the joined traffic too
                    result.latest = stack.read_versions(r)
                finally:
                    r.close()
            r = stack.client()
            try:
                memory = {name: redis_memory(r, name, rec.redis_embedding_records)
                          for name, rec in result.latest.items()}
            finally:
                r.close()
            console.print(summary_table(result, policies, memory))
            png = plot(result, stack.run_dir / "summary.png")
            console.print(f"chart: {png}")
            if verdict is not None:
                console.print(verdict)
                console.print(users, highlight=False)
            if keep:
                _keep_running(stack, lab, console)
            console.print("stopping everything chunkrec up started ...")
    except KeyboardInterrupt:
        console.print("interrupted: everything chunkrec up started is stopped")
        raise typer.Exit(130) from None
    except (StackError, InfraError) as exc:
        console.print(f"error: {exc}", highlight=False)
        console.print(f"logs: {stack.log_dir}")
        raise typer.Exit(1) from None
    finally:
        if lab is not None:
            lab.close()
    console.print("stopped.")
    if not ok:
        raise typer.Exit(1)


def _keep_running(stack: Stack, lab: StackExperiment | None, console: Console) -> None:
    """Until Ctrl-C or `chunkrec down`: everything stays up; a child that dies ends it."""
    if lab is not None:
        console.print(f"kept running: dashboard {lab.dashboard_url}, router "
                      f"{lab.router_url}/docs (admin key in {lab.key_file})", highlight=False)
    console.print(f"kept running: serving {stack.serving_url}/docs; stop with Ctrl-C or "
                  "`chunkrec down`", highlight=False)
    try:
        while True:
            stack.check_children()
            time.sleep(2.0)  # a watchdog period, not a synchronisation
    except KeyboardInterrupt:
        pass


def down_command(
    timeout: Annotated[float, typer.Option(help="seconds to wait for `up` to stop")] = 90.0,
) -> None:
    """Stop what `chunkrec up` started (and nothing else)."""
    n = down(get_settings(), timeout_s=timeout, echo=typer.echo)
    typer.echo(f"stopped ({n} processes signalled)" if n else "nothing to stop")
