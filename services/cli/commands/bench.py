"""`chunkrec bench ...`: benchmarks.

    chunkrec bench quality --data frappe:../shared/data/frappe/frappe.test.libfm \\
        --policies fixed:64,fixed:16,fiited:K=8,budget=0.25 --seeds 3 --out results.json
    # writes results.json and results.png (the frontier and the ΔAUC CIs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Benchmarks: quality, reading speed."""


@app.command("quality")
def quality(
    data: Annotated[str, typer.Option("--data", help="data-set spec, e.g. frappe:PATH")],
    policies: Annotated[
        str | None,
        typer.Option(
            "--policies",
            help="comma-separated policy specs; a comma starts a new policy only before a "
            "policy kind, so fiited:K=8,budget=0.25 stays one",
        ),
    ] = None,
    policy: Annotated[
        list[str] | None, typer.Option("--policy", help="one policy spec; may be repeated")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="seeds 0..N-1 per policy")] = 3,
    out: Annotated[Path, typer.Option(help="JSON: one object per policy and seed")] = Path(
        "results.json"
    ),
    reference: Annotated[
        str | None, typer.Option(help="policy the ΔAUC is measured against (default: first)")
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="network (models.networks.MODEL_NAMES; dlrm: dot products are exact under "
            "zero padding)"
        ),
    ] = "dlrm",
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    max_rows: Annotated[int | None, typer.Option(min=1, help="stop after N rows")] = None,
    png: Annotated[Path | None, typer.Option(
        help="the memory-vs-AUC frontier and ΔAUC CIs (default: the JSON's path, .png)")] = None,
    no_png: Annotated[bool, typer.Option("--no-png", help="write no picture")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
    bootstrap: Annotated[int, typer.Option(min=10, help="bootstrap resamples")] = 300,
    lr: Annotated[
        float | None,
        typer.Option(help="Adam learning rate of the network (default: models.learner.DENSE_LR)"),
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch.set_num_threads")] = None,
    common_dim: Annotated[
        bool,
        typer.Option(
            help="zero-pad fixed-dim baselines to the widest policy's D, so every run uses the "
            "same network and only the embedding memory differs"
        ),
    ] = True,
    hot_start: Annotated[
        Path | None,
        typer.Option(
            "--hot-start",
            help="start every policy from this fixed:64 policy save (and its network from "
            "PATH.net.pt if present)",
        ),
    ] = None,
    device: Annotated[str, typer.Option(
        help="cpu or cuda: where every policy's store and the network train")] = "cpu",
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="train each run as one model sharded over N local ranks "
        "(torch.distributed: gloo on cpu, NCCL on cuda), one global budget")] = 1,
) -> None:
    """Stream the data set once per policy and seed (progressive validation) and compare
    embedding bytes, AUC, log loss, NE, speed and paired ΔAUC against the reference."""
    from services.cli.preflight import extra_problem, fail_if, output_problem

    png = None if no_png else (png or out.with_suffix(".png"))
    for path, what in ((out, "--out"), (png, "--png")):  # before the work, not after it
        if path is not None:
            fail_if(output_problem(path, what))
    if png is not None:
        fail_if(extra_problem("matplotlib", "plots", "the picture (--no-png: none)"))
    # heavy (torch, scikit-learn): imported when the command runs, not for `chunkrec --help`
    from models.networks import MODEL_NAMES
    from services.evaluation.policy_specs import PolicySpecError, split_policies
    from services.evaluation.quality_run import bench_quality
    from storage.datasets.spec import DatasetError
    from storage.settings import get_settings

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter("expected cpu or cuda", param_hint="--device")
    if workers > 1 and hot_start is not None:
        raise typer.BadParameter("not supported with --workers > 1 yet", param_hint="--hot-start")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("torch sees no CUDA device here", param_hint="--device")
    specs = split_policies(policies or "") + [p.strip() for p in policy or [] if p.strip()]
    if not specs:
        raise typer.BadParameter("give --policies or --policy", param_hint="--policies")
    if model.strip().lower() not in MODEL_NAMES:
        raise typer.BadParameter(f"expected one of {', '.join(MODEL_NAMES)}", param_hint="--model")
    options = {"lr": lr} if lr is not None else {}
    try:
        bench_quality(data, specs, out=out, png=png, threads=threads, seeds=seeds,
                      reference=reference, model=model, batch_size=batch_size,
                      max_rows=max_rows, n_bootstrap=bootstrap, common_dim=common_dim,
                      hot_start=hot_start, data_dir=get_settings().data_dir, device=device,
                      show_progress=not no_progress, workers=workers, **options)
    except (DatasetError, PolicySpecError) as exc:
        fail_if(str(exc))  # plain: rich would read its brackets as markup


@app.command("quality-rank")
def quality_rank(
    data: Annotated[str, typer.Option("--data", help="data-set spec, e.g. frappe:PATH")],
    policy: Annotated[str, typer.Option("--policy", help="fixed, fiited or adaembed spec")],
    seed: Annotated[int, typer.Option(min=0)] = 0,
    model: Annotated[str, typer.Option(help="network: dlrm or mlp")] = "dlrm",
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    max_rows: Annotated[int | None, typer.Option(min=1, help="stop after N rows")] = None,
    device: Annotated[str, typer.Option(help="cpu (gloo) or cuda (NCCL)")] = "cpu",
) -> None:
    """One rank of a sharded `bench quality` run that torchrun started (MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK from torchrun); rank 0 prints the stream's AUC
    and the bytes of every shard together."""
    import torch.distributed as dist

    from models.learner import DENSE_LR
    from services.distributed.launch import init_from_env
    from services.evaluation.sharded import metrics_of, stream_rank
    from storage.settings import get_settings

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter("expected cpu or cuda", param_hint="--device")
    init_from_env(device)  # torchrun's variables, read by torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    out = stream_rank(rank, world, data, policy, seed, model, batch_size, max_rows, DENSE_LR, 0,
                      get_settings().data_dir, device, True)
    if rank == 0:
        m = metrics_of(out).summary()
        typer.echo(f"{policy} over {world} ranks: {m['rows']:,.0f} rows, AUC {m['auc']:.4f}, "
                   f"{out['memory']['total_bytes']:,} bytes (budget "
                   f"{out['budget_bytes']:,.0f})")
