"""`chunkrec up` / `chunkrec down`: the whole system on one machine (services/stack.py).

    chunkrec up                       # MovieLens-100k through two trainers, serving, summary
    chunkrec up --events 20000 --no-progress
    chunkrec down                     # from another shell: stops what `up` started
"""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from services.commands import data as data_commands
from services.infra import InfraError
from services.stack import Stack, StackConfig, StackError, StackResult, down
from services.stack_report import live_table, plot, rate, redis_memory, summary_table
from storage.datasets.movielens import ML100K_FILES
from storage.settings import Settings, get_settings


def _ensure_movielens(settings: Settings) -> None:
    cache = settings.data_dir / "movielens-100k"
    if not all((cache / f).is_file() for f in ML100K_FILES):
        data_commands.fetch("movielens-100k", force=False)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # `chunkrec down` sends SIGTERM: stop exactly like a Ctrl-C


def up(
    data: Annotated[str, typer.Option(help="data set to replay")] = "movielens-100k",
    events: Annotated[int | None, typer.Option(min=1, help="replay at most N events")] = None,
    minutes: Annotated[float, typer.Option(
        min=0.1, help="stop everything after this long even if not done")] = 9.0,
    rate_: Annotated[str, typer.Option("--rate", help="replay events/s, or 'max'")] = "5000",
    port: Annotated[int | None, typer.Option(help="serving port (default: a free one)")] = None,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="plain status lines instead of the live table")] = False,
    durable: Annotated[bool, typer.Option(
        "--durable", help="broker log in SeaweedFS (tansu's s3:// engine): survives a broker "
                          "restart")] = False,
) -> None:
    """Start broker, Redis, the fiited and fixed64 trainers, serving and a replay; show
    progress; print a summary and write a PNG when every event is applied; stop it all."""
    settings = get_settings()
    console = Console()
    if not console.is_terminal:  # logs and pipes: plain lines (a Live table shows only its
        no_progress = True        # last frame there), and no wrapped tables
        console = Console(width=max(console.width, 170))
    try:
        events_per_s = None if rate_.strip().lower() == "max" else float(rate_)
    except ValueError as exc:
        raise typer.BadParameter(f"expected a number or 'max', got {rate_!r}",
                                 param_hint="--rate") from exc
    if data == "movielens-100k":
        _ensure_movielens(settings)
    config = StackConfig(data=data, events=events, rate=events_per_s, minutes=minutes,
                         serving_port=port, durable=durable)
    policies = dict(config.models)
    stack = Stack(settings, config)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    last_line = [0.0]

    def plain(result: StackResult) -> None:
        if time.monotonic() - last_line[0] < 5:
            return
        last_line[0] = time.monotonic()
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

    try:
        with stack:
            console.print(f"run folder: {stack.run_dir}")
            stack.start(on_step=lambda msg: console.print(f"- {msg}"))
            console.print(f"serving: {stack.serving_url}/docs  (stop: Ctrl-C or chunkrec down)")
            if no_progress:
                result = stack.wait(on_tick=plain)
            else:
                title = f"chunkrec up: {data} -> fiited, fixed64 -> {stack.serving_url}"
                with Live(console=console, refresh_per_second=2, transient=False) as live:
                    result = stack.wait(on_tick=lambda res: live.update(
                        live_table(res, policies, stack.served_versions(), title)))
            r = stack.client()
            try:
                memory = {name: redis_memory(r, name, rec.redis_embedding_records)
                          for name, rec in result.latest.items()}
            finally:
                r.close()
            console.print(summary_table(result, policies, memory))
            png = plot(result, stack.run_dir / "summary.png")
            console.print(f"chart: {png}")
            console.print("stopping everything chunkrec up started ...")
    except KeyboardInterrupt:
        console.print("interrupted: everything chunkrec up started is stopped")
        raise typer.Exit(130) from None
    except (StackError, InfraError) as exc:
        console.print(f"error: {exc}", highlight=False)
        console.print(f"logs: {stack.log_dir}")
        raise typer.Exit(1) from None
    console.print("stopped.")
    if not result.done:
        raise typer.Exit(1)


def down_command(
    timeout: Annotated[float, typer.Option(help="seconds to wait for `up` to stop")] = 90.0,
) -> None:
    """Stop what `chunkrec up` started (and nothing else)."""
    n = down(get_settings(), timeout_s=timeout, echo=typer.echo)
    typer.echo(f"stopped ({n} processes signalled)" if n else "nothing to stop")
