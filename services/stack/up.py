"""`chunkrec up`: the local stack (processes.py) and, on MovieLens, the A/B experiment
(experiment.py) on it, shown as it runs (report.py), then stopped.

    code = run_up(settings, UpOptions(data="movielens-100k", sessions=500))   # exit status

Progress is a live table on a terminal, a plain line every 5 s elsewhere (logs and pipes: a
Live table shows only its last frame there). At the end: the training summary, a PNG, the
verdict table with the dashboard's address; then everything is stopped, unless `keep` (until
Ctrl-C or `chunkrec down`). Exit status: 0 done, 1 not done or a child failed, 130 Ctrl-C
or `chunkrec down`.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live

from services.stack.experiment import (
    EXPERIMENT_MODELS,
    UNIT_SHARE,
    ExperimentPlan,
    StackExperiment,
    UsersRun,
    is_movielens,
    warmup_events,
)
from services.stack.infra import InfraError
from services.stack.processes import DEFAULT_MODELS, Stack, StackConfig, StackError, StackResult
from services.stack.report import (
    live_table,
    plot,
    rate,
    redis_memory,
    summary_table,
    verdict_table,
)
from storage.settings import Settings


@dataclass
class UpOptions:
    data: str = "movielens-100k"
    events: int | None = None  # the replay's limit (with the experiment: default the warm-up)
    minutes: float = 9.0
    rate: float | None = 5000.0  # replay events/s (None: max)
    port: int | None = None  # serving's (default: a free one)
    no_progress: bool = False
    durable: bool = False
    experiment: bool = True
    sessions: int | None = None  # None: every session the split leaves
    users_rate: float | None = None  # sessions/s (None: max)
    users_concurrency: int = 8  # simulated users in flight at once
    margin: float = 0.05  # the CTR non-inferiority margin of the experiment's rules
    split: str = "user"  # warm-up: each user's first half ("user") or the first 80% ("time")
    keep: bool = False
    redis_cluster: int = 0  # masters of a local Redis Cluster (0: one redis-server)
    workers: int = 1  # ranks of each sharded trainer (chunkrec train --workers)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # `chunkrec down` sends SIGTERM: stop exactly like a Ctrl-C


class _Every:
    """True at most once per `period_s` (the plain progress lines)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.last = 0.0

    def __call__(self) -> bool:
        if time.monotonic() - self.last < self.period_s:
            return False
        self.last = time.monotonic()
        return True


def _plain_line(result: StackResult, policies: dict[str, str]) -> str:
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
    return f"[{result.seconds:5.0f} s] " + (" | ".join(parts) or "waiting")


def _users_line(run: UsersRun) -> str:
    parts = [f"{arm} {a['exposures']:,} shown, CTR {100 * a['ctr']:.1f}%"
             for arm, a in run.arms.items()]
    state = "users done" if run.requests is not None else "users running"
    return (f"[{run.seconds:5.0f} s] {state}, {run.joined:,} requests joined | "
            + " | ".join(parts))


def run_up(settings: Settings, opts: UpOptions) -> int:
    """Start, watch, report and stop the stack (see module docstring); the exit status."""
    console = Console()
    no_progress = opts.no_progress
    if not console.is_terminal:  # logs and pipes: plain lines (a Live table shows only its
        no_progress = True        # last frame there), and no wrapped tables
        console = Console(width=max(console.width, 170))
    experiment, events = opts.experiment, opts.events
    if experiment and not is_movielens(opts.data):
        console.print(f"note: the experiment's simulated users need MovieLens, not "
                      f"{opts.data!r}: running without it (--no-experiment)", highlight=False)
        experiment = False
    # the warm-up: each user's first half of their ratings (every user then comes back as a
    # simulated user, with a pre-period), or with --events / --split time the first N (80%)
    # of all ratings in time order (the users: the few who rated after them)
    unit_share = None
    if experiment and events is None:
        if opts.split == "user":
            unit_share = UNIT_SHARE
        else:
            events = warmup_events(opts.data, settings.data_dir)
    config = StackConfig(data=opts.data, events=events, unit_share=unit_share,
                         rate=opts.rate, minutes=opts.minutes,
                         serving_port=opts.port, durable=opts.durable,
                         redis_cluster=opts.redis_cluster, workers=opts.workers,
                         models=EXPERIMENT_MODELS if experiment else DEFAULT_MODELS)
    policies = dict(config.models)
    stack = Stack(settings, config)
    lab = StackExperiment(stack, ExperimentPlan(
        data=opts.data, sessions=opts.sessions, users_rate=opts.users_rate,
        margin=opts.margin, unit_share=unit_share,
        concurrency=opts.users_concurrency)) if experiment else None
    signal.signal(signal.SIGTERM, _raise_interrupt)
    every_5s = _Every(5.0)

    def plain(result: StackResult) -> None:
        if every_5s():
            console.print(_plain_line(result, policies), highlight=False)

    def users_line(run: UsersRun) -> None:
        if every_5s():
            console.print(_users_line(run), highlight=False)

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
                title = (f"chunkrec up: {opts.data} -> {', '.join(policies)} -> "
                         f"{stack.serving_url}")
                with Live(console=console, refresh_per_second=2, transient=False) as live:
                    result = stack.wait(on_tick=lambda res: live.update(
                        live_table(res, policies, stack.served_versions(), title)))
            ok = result.done
            verdict = None
            if lab is not None and result.done:
                which = (f"each user's ratings after their first {unit_share:.0%}"
                         if unit_share is not None else
                         f"the ratings after the first {result.events_sent or 0:,}")
                many = "every" if opts.sessions is None else f"{opts.sessions:,}"
                console.print(f"- warm-up of {result.events_sent or 0:,} events applied by "
                              f"every trainer; {many} simulated-user session(s) from {which}, "
                              f"{opts.users_concurrency} users at once")
                run = lab.drive(skip_ratings=result.events_sent or 0, on_tick=users_line)
                ok = run.done
                report, status = lab.finish(stop_experiment=not opts.keep)
                verdict = verdict_table(report, policies,
                                        f"{lab.dashboard_url}  (HTTP {status})")
                errors = "" if run.errors is None else f", {run.errors} errors"
                users = (f"simulated users: {run.requests or 0:,} requests, {run.shown or 0:,} "
                         f"shown, {run.clicks or 0:,} clicks{errors}; "
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
            if opts.keep:
                _keep_running(stack, lab, console)
            console.print("stopping everything chunkrec up started ...")
    except KeyboardInterrupt:
        console.print("interrupted: everything chunkrec up started is stopped")
        return 130
    except (StackError, InfraError) as exc:
        console.print(f"error: {exc}", highlight=False)
        console.print(f"logs: {stack.log_dir}")
        return 1
    finally:
        if lab is not None:
            lab.close()
    console.print("stopped.")
    return 0 if ok else 1


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
