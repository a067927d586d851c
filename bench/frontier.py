"""The memory-vs-quality frontier of every policy on every real data set (and a synthetic
stream), in one run: `chunkrec bench quality` per data set, then one table across them.

    .venv/bin/python bench/frontier.py                       # the real sets in ../shared/data
    .venv/bin/python bench/frontier.py --synthetic 5000000   # and a 5M-event synthetic stream
    .venv/bin/python bench/frontier.py --data frappe --policies fixed:64,fiited:budget=0.25

Per data set it prints the bench's own table, then a cross-data-set table: per policy its
share of fixed-64's total bytes and its ΔAUC on the last 30% of the stream against fixed-64,
and for every adaptive policy the paired ΔAUC against the fixed-dim baseline nearest to it in
total bytes ("vs fixed@="), each with its 95% paired-bootstrap CI (* = the CI excludes 0).

Small sets get small batches so that prune/regrow runs (at batch 256 Avazu's 8,087 rows would
end before FIITED's first prune step): batch = clamp(rows / 400, 32, 256).

Leave-one-data-set-out (`--holdout`, services/evaluation/holdout.py): every set runs the
fixed-dim tables and every FIITED candidate (one change from the default each: chunk widths,
cost power, keep_first, interval, gamma, a new ID's first chunks, admission, tail utilities)
at budgets 50% and 25%; for each held-out set the candidate is chosen on the other sets and
reported on the held-out one against the best fixed-dim table at <= equal total bytes, whole
stream and last 30%, total and values-only bytes (`holdout.md`, `holdout.json`):

    .venv/bin/python bench/frontier.py --holdout --synthetic 5000000 --seeds 3   # full size
    .venv/bin/python bench/frontier.py --holdout --max-rows 20000 --synthetic 200000 \
        --seeds 1 --data frappe,movielens-1m-part,movielens-100k,avazu       # reduced
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from services.evaluation.frontier_plot import write_frontier_png
from services.evaluation.holdout import (
    BUDGETS,
    CANDIDATES,
    candidate_specs,
    holdout_markdown,
    holdout_rows,
)
from services.evaluation.quality import (
    QualityReport,
    policy_kind,
    render_table,
    run_quality_bench,
    split_policies,
    write_json,
)
from storage.datasets import open_dataset
from storage.settings import get_settings

# Below ~14% of fixed-64 an ID's own record and index slot leave nothing for chunks, so the
# smaller points come from admission (an ID gets an entry once seen min_count times), given to
# FIITED and to its fixed-dim partner alike.
POLICIES = (
    "fixed:64,fixed:32,fixed:16,fixed:8,fixed:4,fixed:2,"
    "fiited:budget=0.5,fiited:budget=0.25,fiited:budget=0.25,cost_power=0,"
    "fiited:budget=0.25,min_count=3,sketch_width=4096,fixed:4,min_count=3,sketch_width=4096,"
    "adaembed:budget=0.25,dml,dml:penalty=0.1,amtl,amtl:penalty=0.003,"
    "dml:memory=0.25,amtl:memory=0.25"
)
# (name, spec relative to the shared data folder, rows) of the real sets
REAL_SETS = (
    ("frappe", "frappe:{d}/frappe/frappe.validation.libfm,{d}/frappe/frappe.test.libfm", 86_582),
    ("movielens-1m-part", "movielens:{d}/movielens-1m-users3000plus", 51_419),
    ("movielens-100k", "movielens-100k", 100_000),
    ("avazu", "avazu:{d}/avazu-sample/train.csv", 8_087),
    ("criteo-head", "criteo:{d}/criteo-kaggle-train-head/criteo_train_rows_1-3000.csv", 3_000),
    ("yidian", "yidian:{d}/yidian-news-sample/yidian_news_sampled.csv", 1_000),
)
SYNTHETIC = "synthetic:events={n},fields=8,vocab=100000,zipf=1.1,seed=1,drift=0.5"


def batch_for(rows: int) -> int:
    return max(32, min(256, rows // 400))


def _candidates(text: str) -> list[str]:
    """"default;K=8;cost_power=0" -> ["", "K=8", "cost_power=0"] (the default first)."""
    out = ["" if c.strip() in ("", "default") else c.strip() for c in text.split(";")]
    return [""] + [c for c in dict.fromkeys(out) if c]


def _fmt(d: dict) -> str:
    lo, hi = d["ci"]
    mark = "" if lo <= 0 <= hi else "*"
    return f"{d['delta']:+.4f} [{lo:+.4f},{hi:+.4f}]{mark}"


def nearest_fixed(report: QualityReport, spec: str) -> str | None:
    """The fixed-dim policy whose total bytes are nearest `spec`'s (on a log scale)."""
    pct = {r["policy"]: r["pct_of_base"] for r in report.rows}
    fixed = [p for p in pct if policy_kind(p) == "fixed"]
    if not fixed:
        return None
    return min(fixed, key=lambda p: abs(math.log(pct[p] / pct[spec])))


def summarise(report: QualityReport) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in report.rows:
        spec = row["policy"]
        entry = {"pct": row["pct_of_base"], "auc_last30": row["auc_last30"]}
        entry["vs_64"] = {"delta": row["delta_auc_last30"], "ci": row["delta_auc_last30_ci"]}
        if policy_kind(spec) != "fixed":
            other = nearest_fixed(report, spec)
            if other is not None:
                entry["vs_fixed"] = report.paired_delta(spec, other)
                entry["vs_fixed"]["other"] = other
        out[spec] = entry
    return out


def table_rows(summary: dict[str, dict], policies: list[str], sep: str) -> list[list[str]]:
    """[policy, cell per data set] rows of the cross-data-set table; a cell is % of fixed-64's
    bytes, ΔAUC (last 30%) vs fixed-64 and, `sep` apart, vs the fixed-dim nearest in bytes."""
    rows = []
    for spec in policies:
        cells = [spec]
        for e in (summary[name].get(spec) for name in summary):
            text = "" if e is None else f"{e['pct']:.1f}%: {_fmt(e['vs_64'])}"
            if e is not None and "vs_fixed" in e and e["vs_fixed"]["other"] != "fixed:64":
                text += f"{sep}vs {e['vs_fixed']['other']}: {_fmt(e['vs_fixed'])}"
            cells.append(text)
        rows.append(cells)
    return rows


def markdown(summary: dict[str, dict], policies: list[str]) -> str:
    """The cross-data-set table as Markdown."""
    lines = ["| policy | " + " | ".join(summary) + " |", "|---" * (len(summary) + 1) + "|"]
    for spec, *cells in table_rows(summary, policies, "<br>"):
        lines.append(f"| `{spec}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="all", help="comma-separated names of REAL_SETS, or all")
    parser.add_argument("--synthetic", type=int, default=0, help="events of a synthetic stream")
    parser.add_argument("--synthetic-only", action="store_true")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out-dir", type=Path, default=Path("results-frontier"))
    parser.add_argument("--max-rows", type=int, default=None,
                        help="reduced size: the first N rows of every set (batch sized to N)")
    parser.add_argument("--holdout", action="store_true",
                        help="leave-one-data-set-out choice of FIITED's settings")
    parser.add_argument("--candidates", default=";".join(c or "default" for c in CANDIDATES),
                        help="--holdout: ';'-separated changes to fiited's default")
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    args = parser.parse_args()
    settings = get_settings()
    root = settings.shared_data_dir
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    candidates = _candidates(args.candidates)
    budgets = [float(b) for b in args.budgets.split(",")]
    policies = (candidate_specs(candidates, budgets) if args.holdout
                else split_policies(args.policies))
    if "fixed:64" not in policies:
        policies.insert(0, "fixed:64")

    jobs: list[tuple[str, str, int]] = []
    if not args.synthetic_only:
        wanted = None if args.data == "all" else set(args.data.split(","))
        for name, spec, rows in REAL_SETS:
            if wanted is None or name in wanted:
                rows = min(rows, args.max_rows or rows)
                jobs.append((name, spec.format(d=root), batch_for(rows)))
    if args.synthetic:
        jobs.append((f"synthetic-{args.synthetic // 1_000_000}M",
                     SYNTHETIC.format(n=args.synthetic), 1024))

    console = Console(width=220)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    reports: dict[str, QualityReport] = {}
    for name, spec, batch in jobs:
        try:
            open_dataset(spec, settings.data_dir)  # movielens-100k is cached there
        except Exception as exc:  # a missing set is reported, the others still run
            console.print(f"[yellow]{name}: skipped ({exc})[/yellow]")
            continue
        console.print(f"[bold]{name}[/bold] ({spec}, batch {batch})", highlight=False)
        report = run_quality_bench(
            spec,
            policies,
            seeds=args.seeds,
            reference="fixed:64",
            batch_size=batch,
            max_rows=args.max_rows if not spec.startswith("synthetic") else None,
            n_bootstrap=args.bootstrap,
            data_dir=settings.data_dir,
            progress=lambda run: print(
                f"  {run.policy} seed {run.seed}: AUC {run.metrics.summary()['auc']:.4f}, "
                f"{run.samples_per_s:,.0f} samples/s, {run.wall_s:.0f} s",
                file=sys.stderr,
                flush=True,
            ),
        )
        console.print(render_table(report))
        write_json(report, args.out_dir / f"{name}.json")
        write_frontier_png(report, args.out_dir / f"{name}.png")
        summary[name] = summarise(report)
        reports[name] = report
        sys.stdout.flush()

    table = Table(title="last 30%: % of fixed-64's total bytes · ΔAUC vs fixed-64 · ΔAUC vs the "
                        "fixed-dim nearest in bytes (95% paired bootstrap CI, * excludes 0)")
    table.add_column("policy")
    for name in summary:
        table.add_column(name, justify="right")
    for row in table_rows(summary, policies, "\n"):
        table.add_row(*row)
    console.print(table)
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out_dir / "summary.md").write_text(markdown(summary, policies))
    if args.holdout and reports:
        rows = holdout_rows(reports, candidates, budgets)
        text = holdout_markdown(rows)
        console.print(text, markup=False, highlight=False)
        (args.out_dir / "holdout.md").write_text(text)
        (args.out_dir / "holdout.json").write_text(json.dumps(rows, indent=2) + "\n")
    console.print(f"wrote {args.out_dir}/")


if __name__ == "__main__":
    main()
