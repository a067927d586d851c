"""One run of the quality benchmark as `chunkrec bench quality` does it: a progress line per
(policy, seed) on stderr, the table on stdout, the JSON of every run, the frontier PNG.

    report = bench_quality("frappe:PATH", ["fixed:64", "fiited:K=8,budget=0.25"],
                           out=Path("results.json"), png=Path("frontier.png"), seeds=3)

Raises DatasetError or PolicySpecError (one line naming the spec) before any run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from services.evaluation.quality import (
    QualityReport,
    Run,
    render_table,
    run_quality_bench,
    write_frontier_png,
    write_json,
)


def bench_quality(data: str, specs: Sequence[str], *, out: Path, png: Path | None = None,
                  threads: int | None = None, **options: Any) -> QualityReport:
    """run_quality_bench(data, specs, **options) with progress lines; then the table, `out`
    (JSON) and `png` (the memory-vs-AUC frontier) when given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    console = Console(width=None if sys.stdout.isatty() else 200)
    log = Console(stderr=True)

    def progress(run: Run) -> None:
        s = run.metrics.summary()
        log.print(
            f"[dim]{run.policy} seed {run.seed}: {s['rows']:,} rows, AUC {s['auc']:.4f}, "
            f"{run.samples_per_s:,.0f} samples/s, {run.wall_s:.1f} s[/dim]"
        )

    report = run_quality_bench(data, specs, progress=progress, **options)
    console.print(render_table(report))
    write_json(report, out)
    log.print(f"wrote {out}")
    if png is not None:
        write_frontier_png(report, png)
        log.print(f"wrote {png}")
    return report
