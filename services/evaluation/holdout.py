"""Leave-one-data-set-out: FIITED's settings chosen on the other data sets, reported on the
one left out, so a default cannot be fitted to the set it is judged on.

    reports = {"frappe": QualityReport, "movielens": ..., "synthetic": ...}  # every candidate
    rows = holdout_rows(reports, CANDIDATES, BUDGETS)    # one row per (held-out set, budget)

Every data set is run once with the fixed-dim tables and every candidate at every budget
(`candidate_specs`). Per data set, a FIITED run is compared with the best fixed-dim table at
equal or fewer total bytes (`best_fixed`: the highest AUC among the fixed-dim tables whose
mean total bytes are <= the run's), by the paired ΔAUC of `QualityReport.paired_delta`
(seeds paired, rows resampled together, 95% CI).

The choice for a held-out set and a budget (`choose`): over the other sets, the candidate with
the highest mean ΔAUC (whole stream) among those that lose no more than `WORST` on any of
them; if none qualifies, the one whose worst set is best. A candidate that wins on average
and loses badly on one set is not a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.evaluation.policy_specs import policy_kind
from services.evaluation.quality import QualityReport

# One change from today's default each (chunk widths, cost power, keep_first, interval, gamma,
# the initial chunks of a new ID, admission, where tail utilities live); "" is the default.
CANDIDATES = (
    "", "K=8", "widths=8-8-16-32", "cost_power=0", "cost_power=1", "keep_first=false",
    "interval=20", "interval=200", "gamma=0.9", "gamma=0.999", "init_chunks=1",
    "min_count=2", "tail_utilities=all",
)
BUDGETS = (0.5, 0.25)
FIXED = ("fixed:64", "fixed:32", "fixed:16", "fixed:8", "fixed:4")
WORST = -0.002  # the most a chosen candidate may lose on any set it was chosen on (whole)


def fiited_spec(candidate: str, budget: float) -> str:
    """("K=8", 0.25) -> "fiited:budget=0.25,K=8"."""
    return f"fiited:budget={budget:g}" + (f",{candidate}" if candidate else "")


def candidate_specs(candidates: Sequence[str], budgets: Sequence[float]) -> list[str]:
    """The fixed-dim tables, then every candidate at every budget."""
    return [*FIXED, *(fiited_spec(c, b) for b in budgets for c in candidates)]


def _row(report: QualityReport, spec: str) -> dict[str, Any]:
    return next(r for r in report.rows if r["policy"] == spec)


def best_fixed(report: QualityReport, spec: str, suffix: str = "") -> str | None:
    """The fixed-dim table with the highest mean AUC (whole stream, or `suffix` "_last30")
    among those whose mean total bytes are <= `spec`'s; None if none is that small."""
    limit = _row(report, spec)["embedding_bytes"]
    fixed = [r for r in report.rows
             if policy_kind(r["policy"]) == "fixed" and r["embedding_bytes"] <= limit]
    if not fixed:
        return None
    return max(fixed, key=lambda r: r[f"auc{suffix}"])["policy"]


def versus_fixed(report: QualityReport, spec: str, suffix: str = "") -> dict[str, Any] | None:
    """`spec`'s paired ΔAUC against best_fixed (delta, ci, other), or None."""
    other = best_fixed(report, spec, suffix)
    if other is None:
        return None
    return report.paired_delta(spec, other, suffix) | {"other": other}


def value_pct(report: QualityReport, spec: str) -> float:
    """`spec`'s value bytes (no optimizer state, metadata or index) as % of the base's."""
    base = _row(report, report.base)["value_bytes"]
    return 100.0 * _row(report, spec)["value_bytes"] / base


def choose(scores: Mapping[str, Mapping[str, float]], held_out: str,
           worst: float = WORST) -> str:
    """scores[candidate][set] = ΔAUC against the best fixed-dim table (whole stream) -> the
    candidate chosen without `held_out` (module docstring). NaN (no comparison) counts as
    missing; a candidate with no score on the other sets is not chosen."""
    def others(c: str) -> np.ndarray:
        v = [x for s, x in scores[c].items() if s != held_out and np.isfinite(x)]
        return np.asarray(v, dtype=np.float64)

    usable = [c for c in scores if others(c).size]
    if not usable:
        raise ValueError(f"no candidate has a score outside {held_out!r}")
    safe = [c for c in usable if others(c).min() >= worst]
    if safe:
        return max(safe, key=lambda c: others(c).mean())
    return max(usable, key=lambda c: others(c).min())


def holdout_rows(reports: Mapping[str, QualityReport], candidates: Sequence[str],
                 budgets: Sequence[float]) -> list[dict[str, Any]]:
    """One row per (held-out set, budget): the candidate chosen on the other sets, its % of
    fixed-64's total and value bytes on the held-out set, and its paired ΔAUC against the best
    fixed-dim table at <= its total bytes, whole stream and last 30%; the default's too."""
    rows = []
    for budget in budgets:
        scores: dict[str, dict[str, float]] = {}
        for c in candidates:
            scores[c] = {}
            for name, rep in reports.items():
                d = versus_fixed(rep, fiited_spec(c, budget))
                scores[c][name] = np.nan if d is None else d["delta"]
        for name, rep in reports.items():
            chosen = choose(scores, name) if len(reports) > 1 else candidates[0]
            row: dict[str, Any] = {"data": name, "budget": budget, "chosen": chosen}
            for key, cand in (("chosen", chosen), ("default", candidates[0])):
                spec = fiited_spec(cand, budget)
                row[f"{key}_pct"] = _row(rep, spec)["pct_of_base"]
                row[f"{key}_value_pct"] = value_pct(rep, spec)
                for suffix in ("", "_last30"):
                    d = versus_fixed(rep, spec, suffix)
                    if d is not None:
                        d["other_pct"] = _row(rep, d["other"])["pct_of_base"]
                        d["other_value_pct"] = value_pct(rep, d["other"])
                    row[f"{key}{suffix or '_whole'}"] = d
            rows.append(row)
    return rows


def _cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "no fixed-dim at <= bytes"
    lo, hi = d["ci"]
    mark = "*" if not lo <= 0 <= hi else ""
    return f"{d['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}"


def holdout_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The held-out table: per set and budget, the candidate chosen on the other sets, its
    total and values-only bytes (% of fixed-64's), the best fixed-dim at <= its total bytes
    and the paired ΔAUC against it (whole / last 30%; * the 95% CI excludes 0)."""
    lines = [
        "| held-out set | budget | chosen on the others | total % / values % | best fixed at <= "
        "bytes (total % / values %) | ΔAUC whole | ΔAUC last 30% | default: ΔAUC whole | "
        "default: ΔAUC last 30% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        whole = r["chosen_whole"]
        fixed = "—" if whole is None else (
            f"{whole['other']} ({whole['other_pct']:.1f}% / {whole['other_value_pct']:.1f}%)")
        lines.append(
            f"| {r['data']} | {r['budget']:g} | `{r['chosen'] or 'default'}` | "
            f"{r['chosen_pct']:.1f}% / {r['chosen_value_pct']:.1f}% | {fixed} | "
            f"{_cell(whole)} | {_cell(r['chosen_last30'])} | {_cell(r['default_whole'])} | "
            f"{_cell(r['default_last30'])} |")
    return "\n".join(lines) + "\n"
