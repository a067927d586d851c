"""`chunkrec bench quality --workers N`: one (policy, seed) run streamed through N local ranks
of a sharded model (models/distributed), without Kafka, so sharded quality compares offline
with one process.

    run = run_one_sharded(dataset_spec, "fiited:budget=0.25", seed=0, workers=2)

Every rank reads the same stream in the same batches of `batch_size` rows and keeps rows
i mod N = rank of each, so a step trains on exactly the rows one process would train on in
that step (see models/distributed/learner.py: the gradients are the single process's). Rank 0
gathers every rank's predictions and puts them back in stream order, so the result is a `Run`
like `run_one`'s, and the paired comparison of services/evaluation/quality.py applies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from models.learner import DENSE_LR
from models.metrics import StreamMetrics
from models.networks import build_model
from models.policies.registry import parse_policy
from models.policy import EmbeddingPolicy
from services.distributed.launch import init_from_env, launch
from services.evaluation.policy_specs import policy_kind
from storage.batch import SparseBatch, first_rows
from storage.datasets.spec import Dataset, open_dataset


def my_rows(batches: Iterator[SparseBatch], rank: int, world: int, max_rows: int | None
            ) -> Iterator[tuple[SparseBatch, np.ndarray]]:
    """This rank's rows of each batch (rows i mod world = rank) and their stream positions."""
    seen = 0
    for batch in first_rows(batches, max_rows):
        mine = np.arange(rank, len(batch), world)
        yield batch.take(mine), seen + mine
        seen += len(batch)


def build_local_policy(spec: str, num_fields: int, seed: int, device: str,
                       common_dim: int) -> EmbeddingPolicy:
    policy = parse_policy(spec, num_fields=num_fields, seed=seed, device=device)
    if common_dim and policy.dim < common_dim and policy_kind(spec) == "fixed":
        policy = parse_policy(f"{spec},pad={common_dim}", num_fields, seed=seed, device=device)
    return policy


def stream_rank(rank: int, world: int, data: str, spec: str, seed: int, model: str,
                batch_size: int, max_rows: int | None, lr: float, common_dim: int,
                data_dir: Path | None, device: str, global_budget: bool) -> dict[str, Any]:
    """One rank of a sharded run (module docstring); rank 0 returns the whole run's
    predictions and labels in stream order, every rank its shard's bytes and timings."""
    from models.distributed.embedding import ShardedPolicy
    from models.distributed.group import ShardGroup
    from models.distributed.learner import DistributedLearner

    init_from_env(device)
    group = ShardGroup.current()
    dataset = open_dataset(data, data_dir)
    local = build_local_policy(spec, dataset.schema.num_fields, seed, device, common_dim)
    policy = ShardedPolicy(local, group)
    if global_budget:
        from models.distributed.budget import GlobalBudget

        GlobalBudget(group).attach(policy.store)
    net = build_model(model, dataset.schema, dim=policy.dim, seed=seed)
    learner = DistributedLearner(net, policy, dataset.schema, group, lr=lr)
    positions: list[np.ndarray] = []

    def batches() -> Iterator[SparseBatch]:
        for batch, where in my_rows(dataset.batches(batch_size), rank, world, max_rows):
            positions.append(where)
            yield batch

    t0 = time.perf_counter()
    metrics = learner.run(batches())
    wall = time.perf_counter() - t0
    total = policy.memory().as_dict()  # a collective: every rank
    budget = float(group.sum(
        torch.tensor([policy.store.budget_bytes()], dtype=torch.float64))[0])
    shard = policy.shard_memory().as_dict()
    mine = (np.concatenate(positions) if positions else np.zeros(0, np.int64),
            metrics.predictions, metrics.labels)
    gathered: list[Any] = [None] * world if rank == 0 else []
    dist.gather_object(mine, gathered if rank == 0 else None, dst=0)
    out: dict[str, Any] = {
        "rank": rank, "memory": total, "shard_memory": shard, "wall_s": wall,
        "rows": learner.rows_trained, "train_s": learner.train_seconds,
        "comm_s": group.comm_seconds, "store_s": policy.lookup_seconds,
        "comm_bytes": group.comm_bytes, "steps": learner.steps, "budget_bytes": budget,
        "stats": {k: float(v) for k, v in policy.stats().items()}, "dim": policy.dim,
    }
    if rank == 0:
        where = np.concatenate([g[0] for g in gathered])
        order = np.argsort(where, kind="stable")
        out["predictions"] = np.concatenate([g[1] for g in gathered])[order]
        out["labels"] = np.concatenate([g[2] for g in gathered])[order]
    return out


def run_sharded(data: str, spec: str, seed: int, workers: int, model: str = "dlrm",
                batch_size: int = 256, max_rows: int | None = None, lr: float = DENSE_LR,
                common_dim: int = 0, data_dir: Path | None = None, device: str = "cpu",
                global_budget: bool = False, threads: int | None = None) -> list[dict[str, Any]]:
    """`stream_rank` in `workers` new local processes; their results by rank."""
    return launch(stream_rank, workers, args=(data, spec, seed, model, batch_size, max_rows,
                                              lr, common_dim, data_dir, device, global_budget),
                  threads=threads)


def metrics_of(result: dict[str, Any]) -> StreamMetrics:
    """Rank 0's gathered predictions as the stream's metrics."""
    metrics = StreamMetrics()
    metrics.update(result["predictions"], result["labels"])
    return metrics


def run_one_sharded(dataset: Dataset, spec: str, seed: int, model: str = "dlrm",
                    batch_size: int = 256, max_rows: int | None = None, lr: float = DENSE_LR,
                    common_dim: int = 0, hot_start: Path | None = None,
                    advance: Callable[[int], object] | None = None, device: str = "cpu", *,
                    workers: int = 2, data_dir: Path | None = None) -> Any:
    """`run_one` (services/evaluation/quality.py) over `workers` ranks with one global budget
    (`run_quality_bench(..., runner=partial(run_one_sharded, workers=N))`): a Run whose memory
    is the sum over the shards, each shard's bytes and time in collectives in its stats. The
    ranks open `dataset.spec` themselves."""
    if hot_start is not None:
        raise ValueError("--hot-start is not supported with --workers > 1 yet")
    from services.evaluation.quality import Run

    t0 = time.perf_counter()
    results = run_sharded(dataset.spec, spec, seed, workers, model, batch_size, max_rows, lr,
                          common_dim, data_dir, device, global_budget=True)
    wall = time.perf_counter() - t0
    head = results[0]
    if advance is not None:  # a progress bar's rows, all at once
        advance(len(head["labels"]))
    stats = dict(head["stats"], budget_bytes=float(head["budget_bytes"]))
    for r in results:
        stats[f"rank{r['rank']}_total_bytes"] = float(r["shard_memory"]["total_bytes"])
        stats[f"rank{r['rank']}_comm_s"] = float(r["comm_s"])
    train_s = max(r["train_s"] for r in results)
    rows = sum(r["rows"] for r in results)
    return Run(policy=spec, seed=seed, dim=head["dim"], metrics=metrics_of(head),
               memory=head["memory"], stats=stats,
               samples_per_s=rows / train_s if train_s > 0 else float("nan"), wall_s=wall)
