"""Where the full trainer loop's time goes: events/s end to end and seconds per phase (poll,
decode, learner steps, publish: export / pack / Redis, metrics, checkpoint, other), for one or
more source trees side by side on the same events, broker and Redis. Prints one table.

    python bench/trainer_loop.py [--data synthetic:events=100000,fields=26,vocab=1000000,dense=13]
        [--policy fiited:budget=0.25] [--tree /work/main] [--tree .]
        [--tree .@trainer_publish_background=true] [--set publish_interval_s=2]

A local tansu broker and redis-server are started, the data set replayed once into a topic as
Arrow messages (`chunkrec replay` does the same), then for each `--tree` a fresh process with
PYTHONPATH=tree runs `chunkrec train`'s StreamTrainer over the whole topic (its own model
name, checkpoint folder and consumer group) to the last event. End to end: events / seconds
from the first event queued to the end of the run (the final checkpoint and publish included;
group join and process start not). A tree whose trainer keeps no phase split of its own
(TrainerStats.phases) is timed from outside by wrapping its consumer, learner, publisher and
checkpoint: the same phases, so two trees compare. `--set key=value` (repeatable) passes
trainer settings to every tree, e.g. `publish_min_events=50000`; a tree that does not know a
setting fails; `--tree PATH@key=value,...` gives one tree its own. On a shared machine only ratios
within one run mean anything.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False)
PHASES = ("poll", "decode", "steps", "publish_export", "publish_pack", "publish_redis",
          "metrics", "checkpoint", "other")


def _settings_kwargs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set {pair!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _wrap(obj: Any, name: str, acc: dict[str, float], phase: str,
          when: Any = None) -> None:
    """Time every call of obj.name into acc[phase] (a tree without its own split); with
    `when`, only calls that start while when() is true."""
    inner = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        counted = when is None or when()
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if counted:
                acc[phase] = acc.get(phase, 0.0) + time.perf_counter() - t0

    setattr(obj, name, timed)


def _measure(bootstrap: str, redis_url: str, topic: str, data: str, policy: str, arch: str,
             events: int, threads: int, ckpt: str, sets: dict[str, str]) -> dict[str, Any]:
    """One trainer over the topic, in this process (the tree on sys.path)."""
    from services import wire
    from services.trainer.loop import StreamTrainer, TrainerConfig
    from storage.datasets import open_dataset
    from storage.settings import Settings

    settings = Settings(kafka_bootstrap=bootstrap, redis_url=redis_url, checkpoint_dir=ckpt,
                        trainer_threads=threads, kafka_max_poll_interval_ms=3000, **sets)
    config = TrainerConfig(model=f"bench-loop-{uuid.uuid4().hex[:6]}", policy=policy,
                           schema=open_dataset(data, settings.data_dir).schema, arch=arch,
                           topic=topic, max_events=events)
    trainer = StreamTrainer(settings, config)
    own = hasattr(trainer.stats, "phases")
    outside: dict[str, float] = {}
    if not own:
        trainer.connect()
        _wrap(trainer.consumer, "poll", outside, "poll",  # not the wait for the stream
              when=lambda: trainer.stats.first_event_at is not None)
        _wrap(trainer.learner, "step", outside, "steps")
        _wrap(trainer.policy, "export", outside, "publish_export")
        _wrap(wire, "pack_export", outside, "publish_pack")
        _wrap(trainer, "version_record", outside, "metrics")
        _wrap(trainer.publisher, "publish", outside, "publish_all")
        _wrap(trainer, "checkpoint", outside, "checkpoint")
    stats = trainer.run()
    end = time.perf_counter()
    if stats.events_applied < events:
        raise RuntimeError(f"applied {stats.events_applied} of {events} events")
    wall = end - stats.first_event_at
    if own:
        phases = stats.phase_split(wall)
    else:
        outside["decode"] = stats.decode_seconds
        outside["publish_redis"] = (outside.pop("publish_all", 0.0)
                                    - outside.get("publish_export", 0.0)
                                    - outside.get("publish_pack", 0.0))
        phases = {p: outside.get(p, 0.0) for p in PHASES if p != "other"}
        phases["other"] = max(0.0, wall - sum(phases.values()))
    return {"events": stats.events_applied, "wall_s": wall,
            "events_per_s": stats.events_applied / wall, "phases": phases,
            "versions": stats.versions_published, "checkpoints": stats.checkpoints,
            "background_s": getattr(stats, "phases", {}).get("publish_background", 0.0),
            "own_split": own}


@app.command()
def main(
    data: str = typer.Option("synthetic:events=100000,fields=26,vocab=1000000,dense=13",
                             help="data-set spec to replay"),
    policy: str = typer.Option("fiited:budget=0.25", help="policy of the trained model"),
    arch: str = typer.Option("dlrm", help="network: dlrm or mlp"),
    events: int = typer.Option(100_000, min=1000, help="events to replay (at most)"),
    arrow_batch: int = typer.Option(4096, help="events per Arrow message"),
    threads: int = typer.Option(1, help="torch threads of the trainer"),
    tree: Annotated[list[str] | None, typer.Option(
        help="source tree to measure (repeatable; default: this one)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="trainer setting key=value (repeatable)")] = None,
    log: bool = typer.Option(False, help="print each trainer's log (INFO) after its row"),
    measure: str | None = typer.Option(None, hidden=True, help="internal: JSON arguments"),
) -> None:
    if measure is not None:  # the child: one measurement, JSON on the last line
        args = json.loads(measure)
        if args.pop("log", None):
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s %(name)s %(message)s")
            logging.getLogger("kafka").setLevel(logging.WARNING)
        print(json.dumps(_measure(**args)), flush=True)
        return
    from services.stack.infra import create_topics, start_redis, start_tansu
    from services.stack.replay import replay_dataset
    from storage.settings import Settings

    console = Console()
    sets = _settings_kwargs(set_ or [])
    trees = []  # (path, its own settings): PATH or PATH@key=value,key=value
    for spec in tree or ["."]:
        path, _, own = spec.partition("@")
        trees.append((str(Path(path).resolve()),
                      _settings_kwargs([x for x in own.split(",") if x])))
    here = Path(__file__).resolve()
    results: list[tuple[str, dict[str, Any]]] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chunkrec-loop-")))
        bootstrap = stack.enter_context(start_tansu(log_dir=tmp / "logs")).address
        redis_url = stack.enter_context(start_redis(log_dir=tmp / "logs")).url
        settings = Settings(kafka_bootstrap=bootstrap, redis_url=redis_url)
        topic = f"bench-loop-{uuid.uuid4().hex[:6]}"
        create_topics(bootstrap, {topic: 2, "events.dlq": 1})
        sent = replay_dataset(settings, data, topic=topic, batch_events=arrow_batch,
                              limit=events, fmt="arrow")
        console.print(f"replayed {sent.events:,} events of {data} in {sent.messages:,} Arrow "
                      "messages")
        for i, (t, own) in enumerate(trees):
            args = {"bootstrap": bootstrap, "redis_url": redis_url, "topic": topic,
                    "data": data, "policy": policy, "arch": arch, "events": sent.events,
                    "threads": threads, "ckpt": str(tmp / f"ckpt-{i}"), "sets": sets | own,
                    "log": log}
            env = os.environ | {"PYTHONPATH": t}
            proc = subprocess.run([sys.executable, str(here), "--measure", json.dumps(args)],
                                  env=env, cwd=t, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                console.print(proc.stderr[-3000:])
                raise typer.Exit(1)
            if log:
                console.print(proc.stderr, markup=False, highlight=False)
            label = _label(t) + "".join(f" {k}={v}" for k, v in own.items())
            results.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
            console.print(f"{label}: {results[-1][1]['events_per_s']:,.0f} events/s")

    table = Table(title=f"trainer loop: {data}, {policy}, {arch}, {sent.events:,} events, "
                        f"{threads} torch thread(s), cpu; settings {sets or 'default'}")
    table.add_column("")
    for label, _ in results:
        table.add_column(label, justify="right")
    table.add_row("events/s end to end", *(f"{r['events_per_s']:,.0f}" for _, r in results))
    table.add_row("seconds in all", *(f"{r['wall_s']:.1f}" for _, r in results))
    for p in PHASES:
        table.add_row(f"  {p}", *(f"{r['phases'][p]:.1f}" for _, r in results))
    table.add_row("Redis writes off the loop (publish_background)",
                  *(f"{r['background_s']:.1f}" for _, r in results))
    table.add_row("versions / checkpoints",
                  *(f"{r['versions']} / {r['checkpoints']}" for _, r in results))
    table.add_row("phase split", *("own" if r["own_split"] else "wrapped" for _, r in results))
    console.print(table)


def _label(tree: str) -> str:
    head = subprocess.run(["git", "-C", tree, "log", "-1", "--format=%h"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return f"{tree} ({head})" if head else tree


if __name__ == "__main__":
    app()
