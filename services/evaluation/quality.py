"""The streaming quality benchmark behind `chunkrec bench quality`.

Each (policy, seed) run streams the data set once, in the same order for every run, through a
`Learner` (progressive validation: each row is scored before it is trained on) over a fresh
network and policy built from that seed. At the end it measures the policy's bytes
(`policy.memory()`) and the metrics of the whole stream and of its last 30%.

Paired comparison against the reference policy (`--reference`, default the first):
- Rows are resampled with Poisson(1) weights (`models.bootstrap.bootstrap_auc`); one set of
  weights per resample is shared by all runs, so every difference is paired by row.
- Seeds are paired too: seed s of a policy is compared with seed s of the reference (same
  network initialisation). Per run, `delta_auc` is AUC(policy, s) - AUC(reference, s) and its
  CI the 2.5 / 97.5 percentiles of that difference over the resamples.
- Pooled over seeds (the table's column, `delta_auc_pooled*` in the JSON): the mean of the
  per-seed differences, on the original rows and on each resample, and its percentile CI.
  This CI covers the row sampling of the stream with the seeds' noise averaged out; the
  spread across seeds is shown by AUC's ± std. The last 30%: the same (`delta_auc_last30*`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from models.bootstrap import bootstrap_auc
from models.learner import DENSE_LR, Learner
from models.metrics import StreamMetrics
from models.networks import build_model
from models.policies.registry import parse_policy
from services.evaluation.policy_specs import (  # noqa: F401 - re-exported for bench/
    POLICY_KINDS,
    PolicySpecError,
    policy_kind,
    split_policies,
)
from storage.datasets.spec import Dataset, open_dataset

TAIL_FRACTION = 0.3
FULL_DIM = 64  # "% of fixed-64": the total bytes of fixed:64 are 100%


@dataclass
class Run:
    """One (policy, seed) pass over the stream."""

    policy: str
    seed: int
    dim: int
    metrics: StreamMetrics
    memory: dict[str, int]
    stats: dict[str, float]
    samples_per_s: float
    wall_s: float
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class QualityReport:
    data: str
    model: str
    reference: str
    base: str  # the policy whose total bytes are 100%
    policies: list[str]
    runs: list[Run]
    rows: list[dict[str, Any]]  # one summary per policy, in command-line order
    # bootstrap AUCs [resamples, runs] of the whole stream and of its last 30%, runs in order
    boot: dict[str, np.ndarray] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)  # own widths, before common_dim's pad

    def records(self) -> list[dict[str, Any]]:
        """The JSON: one object per policy and seed."""
        return [r.record for r in self.runs]

    def paired_delta(self, policy: str, other: str, suffix: str = "_last30") -> dict[str, Any]:
        """AUC(policy) - AUC(other), seed s paired with seed s and pooled over seeds, with its
        95% paired-bootstrap CI; `suffix` "" for the whole stream, "_last30" for its tail."""
        index = {(r.policy, r.seed): i for i, r in enumerate(self.runs)}
        seeds = [r.seed for r in self.runs if r.policy == policy and (other, r.seed) in index]
        if not seeds:
            raise ValueError(f"no seeds shared by {policy!r} and {other!r}")
        mine = [index[(policy, s)] for s in seeds]
        theirs = [index[(other, s)] for s in seeds]
        key = f"auc{suffix}"
        value = float(np.mean([self.runs[i].record[key] - self.runs[j].record[key]
                               for i, j in zip(mine, theirs, strict=True)]))
        boot = self.boot[suffix]
        return {"delta": value, "ci": _ci((boot[:, mine] - boot[:, theirs]).mean(axis=1))}


def run_one(
    dataset: Dataset,
    spec: str,
    seed: int,
    model: str = "dlrm",
    batch_size: int = 256,
    max_rows: int | None = None,
    lr: float = DENSE_LR,
    common_dim: int = 0,
    hot_start: Path | None = None,
    advance: Callable[[int], object] | None = None,
    device: str = "cpu",
) -> Run:
    """Progressive validation of one policy and seed over the whole stream; with `hot_start`
    (a fixed:64 policy save) the policy, and the network where `PATH.net.pt` exists, start
    from it (models.policies.hot_start). `advance(n)` is called with each batch's rows;
    `device`: where the policy and network run."""
    policy = parse_policy(spec, num_fields=dataset.schema.num_fields, seed=seed, device=device)
    if common_dim and policy.dim < common_dim and policy_kind(spec) == "fixed":
        # Every policy runs the same network: a fixed-dim baseline is zero-padded to the
        # widest policy's D, so only where the embedding memory goes differs between runs.
        policy = parse_policy(f"{spec},pad={common_dim}", dataset.schema.num_fields, seed=seed,
                              device=device)
    net = build_model(model, dataset.schema, dim=policy.dim, seed=seed)
    if hot_start is not None:
        from models.policies.hot_start import hot_start as start_from

        start_from(policy, hot_start, model=net)
    learner = Learner(net, policy, lr=lr)
    batches = dataset.batches(batch_size)
    if advance is not None:  # a progress bar's rows
        batches = (advance(len(b)) or b for b in batches)
    t0 = time.perf_counter()
    metrics = learner.run(batches, max_rows=max_rows)
    wall = time.perf_counter() - t0
    return Run(
        policy=spec,
        seed=seed,
        dim=policy.dim,
        metrics=metrics,
        memory=policy.memory().as_dict(),
        stats={k: float(v) for k, v in policy.stats().items()},
        samples_per_s=learner.samples_per_s,
        wall_s=wall,
    )


def _ci(samples: np.ndarray) -> list[float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _base_policy(policies: Sequence[str], dims: dict[str, int], reference: str) -> str:
    """The first fixed policy of D = 64 (its total bytes are 100%), else the reference. D is
    the policy's own width: a fixed:8 zero-padded to 64 for the common network is not it."""
    for spec in policies:
        if _is_fixed64(spec, dims):
            return spec
    return reference


def _is_fixed64(spec: str, dims: dict[str, int]) -> bool:
    return policy_kind(spec) == "fixed" and dims.get(spec) == FULL_DIM


def run_quality_bench(
    data: str,
    policies: Sequence[str],
    seeds: int = 3,
    reference: str | None = None,
    model: str = "dlrm",
    batch_size: int = 256,
    max_rows: int | None = None,
    n_bootstrap: int = 300,
    lr: float = DENSE_LR,
    progress: Callable[[Run], None] | None = None,
    common_dim: bool = True,
    hot_start: Path | None = None,
    data_dir: Path | None = None,
    advance: Callable[[int], object] | None = None,
    on_start: Callable[[int | None], None] | None = None,
    device: str = "cpu",
    runner: Callable[..., Run] | None = None,  # run_one's stand-in (sharded.py: over N ranks)
) -> QualityReport:
    """Run every policy with seeds 0..seeds-1 and compare them (see module docstring).

    A `reference` not among `policies` is run too, after them. Every spec is built once
    before any run, so a bad one raises PolicySpecError at once. `on_start(total)`: the rows
    every run together will read (None: unknown), before the first; `advance(n)`: each batch's
    rows, for a progress bar."""
    policies = list(dict.fromkeys(p.strip() for p in policies if p.strip()))
    if not policies:
        raise ValueError("no policies given")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    reference = (reference or policies[0]).strip()
    if reference not in policies:
        policies.append(reference)
    dataset = open_dataset(data, data_dir)  # data_dir: where cached data sets are
    dims = []
    for spec in policies:  # fail on a bad spec now, not after hours of the others' runs
        try:
            dims.append(parse_policy(spec, num_fields=dataset.schema.num_fields, seed=0).dim)
        except ValueError as exc:  # parse_policy's message names the spec
            raise PolicySpecError(str(exc)) from exc
        except TypeError as exc:
            raise PolicySpecError(f"policy {spec!r}: {exc}") from exc
    width = max(dims) if common_dim else 0
    if on_start is not None:
        try:
            per_run: int | None = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            per_run = None  # a reader that does not know its length
        if per_run is not None and max_rows is not None:
            per_run = min(per_run, max_rows)
        on_start(None if per_run is None else per_run * seeds * len(policies))

    runs: list[Run] = []
    labels: np.ndarray | None = None
    for spec in policies:
        for seed in range(seeds):
            run = (runner or run_one)(dataset, spec, seed, model, batch_size, max_rows, lr,
                                      width, hot_start, advance, device)
            if labels is None:
                labels = run.metrics.labels.copy()
            elif not np.array_equal(labels, run.metrics.labels):
                raise RuntimeError(f"{data}: the stream differed between runs ({spec}, seed "
                                   f"{seed}); a paired comparison needs the same rows")
            runs.append(run)
            if progress is not None:
                progress(run)
    assert labels is not None
    if len(labels) == 0:
        raise RuntimeError(f"{data}: the stream is empty")

    tail = runs[0].metrics.tail_start(TAIL_FRACTION)
    scores = np.stack([r.metrics.predictions for r in runs])  # [runs, N]
    boot_full = bootstrap_auc(labels, scores, n_bootstrap, seed=0)  # [R, runs]
    boot_tail = bootstrap_auc(labels, scores, n_bootstrap, seed=0, start=tail)
    index = {(r.policy, r.seed): i for i, r in enumerate(runs)}

    for run in runs:
        run.record = _run_record(run, data, model, reference, tail)
    for i, run in enumerate(runs):
        j = index[(reference, run.seed)]
        for suffix, boot in (("", boot_full), ("_last30", boot_tail)):
            key = f"auc{suffix}"
            run.record[f"delta_auc{suffix}"] = run.record[key] - runs[j].record[key]
            run.record[f"delta_auc{suffix}_ci"] = _ci(boot[:, i] - boot[:, j])

    native = dict(zip(policies, dims, strict=True))
    base = _base_policy(policies, native, reference)
    base_bytes = float(np.mean([r.memory["total_bytes"] for r in runs if r.policy == base]))
    base_values = float(np.mean([r.memory["value_bytes"] for r in runs if r.policy == base]))
    report = QualityReport(data, model, reference, base, policies, runs, [],
                           {"": boot_full, "_last30": boot_tail}, native)
    for spec in policies:
        mine = [r for r in runs if r.policy == spec]
        row = _policy_row(spec, mine, base_bytes, base_values)
        for suffix in ("", "_last30"):
            # pooled over seeds: the mean of the per-seed paired differences, per resample
            row[f"delta_auc{suffix}_ci"] = report.paired_delta(spec, reference, suffix)["ci"]
        for r in mine:
            for suffix in ("", "_last30"):
                r.record[f"delta_auc{suffix}_pooled"] = row[f"delta_auc{suffix}"]
                r.record[f"delta_auc{suffix}_pooled_ci"] = row[f"delta_auc{suffix}_ci"]
            r.record["pct_of_base"] = 100.0 * r.memory["total_bytes"] / base_bytes
            r.record["base"] = base
        report.rows.append(row)
    return report


def _run_record(run: Run, data: str, model: str, reference: str, tail: int) -> dict[str, Any]:
    """The JSON object of one run, before its paired deltas are added."""
    full, last = run.metrics.summary(), run.metrics.summary(start=tail)
    return {
        "policy": run.policy,
        "seed": run.seed,
        "data": data,
        "model": model,
        "dim": run.dim,
        "rows": full["rows"],
        "auc": full["auc"],
        "logloss": full["logloss"],
        "ne": full["ne"],
        "calibration": full["calibration"],
        "auc_last30": last["auc"],
        "logloss_last30": last["logloss"],
        "ne_last30": last["ne"],
        "embedding_bytes": run.memory["total_bytes"],
        "value_bytes": run.memory["value_bytes"],
        "samples_per_s": run.samples_per_s,
        "wall_s": run.wall_s,
        "reference": reference,
        "memory": run.memory,
        "stats": run.stats,
    }


def _policy_row(spec: str, runs: Sequence[Run], total: float, values: float) -> dict[str, Any]:
    """The table row of one policy: means (and std) over its seeds; % of the base's bytes."""
    row: dict[str, Any] = {"policy": spec, "seeds": len(runs)}
    for key in ("auc", "auc_last30", "logloss", "ne", "calibration", "samples_per_s"):
        row[key], row[f"{key}_std"] = _mean_std([r.record[key] for r in runs])
    row["value_bytes"] = float(np.mean([r.memory["value_bytes"] for r in runs]))
    row["embedding_bytes"] = float(np.mean([r.memory["total_bytes"] for r in runs]))
    row["pct_of_base"] = 100.0 * row["embedding_bytes"] / total if total else math.nan
    row["value_pct_of_base"] = 100.0 * row["value_bytes"] / values if values else math.nan
    for suffix in ("", "_last30"):
        row[f"delta_auc{suffix}"] = float(np.mean([r.record[f"delta_auc{suffix}"] for r in runs]))
    return row


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _pct(p: float) -> str:
    return f"{p:.1f}%" if p >= 1 else f"{p:.2g}%"


def _mean_pm(mean: float, std: float, seeds: int) -> str:
    """"0.7123 ± 0.0021"; with one seed there is no spread to show: "0.7123 ± n/a"."""
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f} ± n/a"


def _delta(value: float, ci: Sequence[float]) -> str:
    lo, hi = ci
    mark = "" if lo <= 0 <= hi else " *"  # * : the CI excludes 0
    return f"{value:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}"


def base_label(report: QualityReport) -> str:
    """What 100% of the bytes is: "fixed-64", or the reference policy's spec."""
    return "fixed-64" if _is_fixed64(report.base, report.dims) else report.base


def render_table(report: QualityReport) -> Table:
    """One row per policy; * marks a delta whose 95% CI excludes 0."""
    base_name = base_label(report)
    n = report.rows[0]["seeds"]
    table = Table(title=f"{dataset_title(report.data)} · {report.model} · {n} seed(s) · "
                        f"ΔAUC vs {report.reference} (95% paired bootstrap CI)")
    for name in ("policy", "values (%)", "total bytes", f"% of {base_name}", "AUC", "AUC last30",
                 "logloss", "NE", "samples/s", "ΔAUC", "ΔAUC last30"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    for row in report.rows:
        table.add_row(
            row["policy"],
            f"{_bytes(row['value_bytes'])} ({_pct(row['value_pct_of_base'])})",
            _bytes(row["embedding_bytes"]),
            _pct(row["pct_of_base"]),
            _mean_pm(row["auc"], row["auc_std"], row["seeds"]),
            _mean_pm(row["auc_last30"], row["auc_last30_std"], row["seeds"]),
            f"{row['logloss']:.4f}",
            f"{row['ne']:.4f}",
            f"{row['samples_per_s']:,.0f}",
            *(("reference",) * 2 if row["policy"] == report.reference else (
                _delta(row["delta_auc"], row["delta_auc_ci"]),
                _delta(row["delta_auc_last30"], row["delta_auc_last30_ci"]))),
        )
    return table


def write_json(report: QualityReport, path: Path) -> None:
    """Strict JSON (NaN, e.g. the AUC of a one-class range, is written as null)."""
    text = json.dumps(_plain(report.records()), indent=2, allow_nan=False)
    Path(path).write_text(text + "\n")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dataset_title(spec: str) -> str:
    """A data set's name for titles: its kind and file name, not the whole path
    ("frappe:/a/b/frappe.test.libfm" -> "frappe · frappe.test.libfm")."""
    kind, sep, arg = spec.partition(":")
    if not sep:
        return spec
    first = arg.split(",")[0]
    if "=" in first:  # synthetic:events=...: the parameters are the name
        return spec
    return f"{kind} · {Path(first).name}"
