"""One run of the quality benchmark as `chunkrec bench quality` does it: a progress bar and a
line per (policy, seed) on stderr, the table on stdout, the JSON of every run, the frontier PNG
(next to the JSON unless told otherwise).

    report = bench_quality("frappe:PATH", ["fixed:64", "fiited:K=8,budget=0.25"],
                           out=Path("results.json"), png=Path("results.png"), seeds=3)

Raises DatasetError or PolicySpecError (one line naming the spec) before any run; the outputs
are checked by the command before that (services/cli/preflight.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from services.evaluation.quality import (
    QualityReport,
    Run,
    render_table,
    run_quality_bench,
    write_json,
)


def bench_quality(data: str, specs: Sequence[str], *, out: Path, png: Path | None = None,
                  threads: int | None = None, show_progress: bool = True,
                  **options: Any) -> QualityReport:
    """run_quality_bench(data, specs, **options) with a progress bar over every run's rows;
    then the table, `out` (JSON) and `png` (the memory-vs-AUC frontier) when given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    console = Console(width=None if sys.stdout.isatty() else 200)
    log = Console(stderr=True)
    # a bar on a terminal only (in a log it would be one frame of noise); it starts once the
    # data set and every spec are checked, so a refusal is one line without it
    bar = Progress(TextColumn("bench quality"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=log,
                   disable=not (show_progress and log.is_terminal), transient=True)
    task = bar.add_task("rows", total=None)

    def started(total: int | None) -> None:
        bar.update(task, total=total)
        bar.start()

    def progress(run: Run) -> None:
        s = run.metrics.summary()
        bar.console.print(
            f"{run.policy} seed {run.seed}: {s['rows']:,} rows, AUC {s['auc']:.4f}, "
            f"{run.samples_per_s:,.0f} samples/s, {run.wall_s:.1f} s", markup=False,
            style="dim")

    workers = options.pop("workers", 1)
    if workers > 1:  # one model over N local ranks per run (services/evaluation/sharded.py)
        from functools import partial

        from services.evaluation.sharded import run_one_sharded

        options["runner"] = partial(run_one_sharded, workers=workers,
                                    data_dir=options.get("data_dir"))
    try:
        report = run_quality_bench(data, specs, progress=progress, on_start=started,
                                   advance=lambda n: bar.advance(task, n), **options)
    finally:
        bar.stop()
    console.print(render_table(report))
    write_json(report, out)
    log.print(f"wrote {out}", markup=False)
    if png is not None:
        from services.evaluation.frontier_plot import write_frontier_png

        write_frontier_png(report, png)
        log.print(f"wrote {png}", markup=False)
    return report
