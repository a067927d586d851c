"""`chunkrec train`: the streaming trainer of one model (services/trainer/run.py).

    chunkrec train --model fiited25 --policy fiited:K=8,budget=0.25 --arch dlrm \\
        --data movielens-100k
    chunkrec train ... --workers 2          # 2 local ranks of one sharded model
    torchrun --nproc-per-node 2 -m services.cli train ... --torchrun    # or torchrun's ranks
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    model: Annotated[str, typer.Option("--model", help="model name ([A-Za-z0-9_.-])")],
    policy: Annotated[str, typer.Option("--policy", help="policy spec, e.g. fixed:64")],
    data: Annotated[str, typer.Option(
        "--data", help="data-set spec whose schema the events follow (not read)")],
    arch: Annotated[str, typer.Option(
        help="network (models.networks.MODEL_NAMES: a wrong one is refused with the list)")
    ] = "dlrm",
    topic: Annotated[str | None, typer.Option(
        help="Kafka topic (default: the events topic)")] = None,
    seed: Annotated[int, typer.Option(help="initialisation seed")] = 0,
    max_events: Annotated[int | None, typer.Option(
        min=1, help="stop once this many events are applied (counted across restarts)")] = None,
    idle_exit: Annotated[float | None, typer.Option(
        min=0.1, help="stop after this many seconds without events")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka host:port")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis", help="Redis URL")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Prometheus /metrics on this port "
        "(default: CHUNKREC_TRAINER_METRICS_PORT; 0: none)")] = None,
    hot_start: Annotated[Path | None, typer.Option(
        "--hot-start", help="when this model has no checkpoint yet, start from another model's "
        "(a fixed:64 trainer's ckpt-* folder, or its checkpoint folder for the newest): its "
        "embeddings, network and Kafka offsets")] = None,
    device: Annotated[str | None, typer.Option(
        help="cpu or cuda: where the store and the network train "
        "(default: CHUNKREC_TRAINER_DEVICE, else cpu)")] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="local ranks of one sharded model (torch.distributed): rank r reads "
        "the partitions p of the topic with p mod N = r")] = 1,
    torchrun: Annotated[bool, typer.Option(
        "--torchrun", help="this process is one rank of a sharded job that torchrun started "
        "(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK)")] = False,
) -> None:
    """Train one model on the event stream; publish versions to Redis; checkpoint."""
    # heavy (torch, Kafka): imported when the command runs, not for `chunkrec --help`
    from models.networks import MODEL_NAMES
    from services import wire
    from services.trainer.lease import Fenced, LeaseHeld
    from services.trainer.run import TrainerOptions, TrainerRefused, run_trainer
    from storage.settings import SettingsError, get_settings

    overrides: dict[str, object] = {
        k: v for k, v in (("kafka_bootstrap", bootstrap), ("redis_url", redis_url)) if v}
    if metrics_port is not None:
        overrides["trainer_metrics_port"] = metrics_port
    if arch.strip().lower() not in MODEL_NAMES:
        raise typer.BadParameter(f"expected one of {', '.join(MODEL_NAMES)}", param_hint="--arch")
    opts = TrainerOptions(model=model, policy=policy, data=data, arch=arch,
                          topic=topic or wire.EVENTS_TOPIC, seed=seed, max_events=max_events,
                          idle_exit_s=idle_exit, hot_start=hot_start, device=device,
                          workers=workers, torchrun=torchrun)
    try:  # settings, names, schema and policy spec are all checked before any connection
        stats = run_trainer(get_settings(**overrides), opts)
    except (SettingsError, TrainerRefused, LeaseHeld, Fenced) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"applied {stats.events_applied:,} events ({stats.events_invalid:,} invalid), "
               f"{stats.versions_published} versions, {stats.checkpoints} checkpoints, "
               f"checksum {stats.events_checksum}")
