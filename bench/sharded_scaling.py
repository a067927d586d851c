"""Sharded training's scaling: one model over 1 and 2 local ranks (models/distributed, gloo on
the CPU or NCCL on CUDA), against the plain single-process Learner, on the same stream.
Prints one table.

    python bench/sharded_scaling.py [--data synthetic:...] [--policy fiited:budget=0.25]
                                    [--batch 1024] [--rows 200000] [--workers 1,2]
                                    [--device cpu|cuda]

Per row: events/s (rows trained / the slowest rank's training seconds, lookups, exchanges,
forward, backward and updates; not reading nor process start-up), its ratio to 1 rank, the
bytes each rank's shard holds, and where a rank's training time goes: collectives (the
all-to-alls of IDs, embeddings and gradients and the small all-reduces), the shard's store
(lookup and apply at the owner) and the rest (the network, DDP's all-reduce, bookkeeping).
On a shared machine only ratios within one run mean anything.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

from services.evaluation.quality import run_one
from services.evaluation.sharded import run_sharded
from storage.datasets.spec import open_dataset

app = typer.Typer(add_completion=False)


@app.command()
def main(
    data: str = "synthetic:events=200000,fields=8,vocab=100000,seed=0",
    policy: str = "fiited:budget=0.25",
    batch: int = 1024,
    rows: int = 200_000,
    workers: str = "1,2",
    device: str = "cpu",
    threads: int = 0,
) -> None:
    counts = [int(w) for w in workers.split(",") if w.strip()]
    cpus = os.cpu_count() or 1
    table = Table(title=f"{policy} on {data}, batch {batch}, {rows:,} rows, device {device}, "
                        f"{cpus} CPUs")
    for col in ("ranks", "events/s", "x 1 rank", "bytes per rank", "total bytes",
                "collectives s", "store s", "rest s", "all-to-all MB/rank (self incl.)"):
        table.add_column(col, justify="right")
    import torch

    torch.set_num_threads(threads or cpus)
    one = run_one(open_dataset(data), policy, 0, batch_size=batch, max_rows=rows, device=device)
    table.add_row("Learner (no torch.distributed)", f"{one.samples_per_s:,.0f}", "",
                  f"{one.memory['total_bytes']:,}", f"{one.memory['total_bytes']:,}",
                  "", "", "", "")
    base = None
    for n in counts:
        res = run_sharded(data, policy, 0, n, batch_size=batch, max_rows=rows, device=device,
                          global_budget=True, threads=threads or max(1, cpus // n))
        slowest = max(r["train_s"] for r in res)
        eps = sum(r["rows"] for r in res) / slowest
        base = base or eps
        comm = max(r["comm_s"] for r in res)
        store = max(r["store_s"] for r in res)
        table.add_row(
            str(n), f"{eps:,.0f}", f"{eps / base:.2f}x",
            " / ".join(f"{r['shard_memory']['total_bytes']:,}" for r in res),
            f"{res[0]['memory']['total_bytes']:,}", f"{comm:.2f}", f"{store:.2f}",
            f"{slowest - comm - store:.2f}",
            f"{max(r['comm_bytes'] for r in res) / 1e6:.1f}",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    app()
