"""The report as plain text (what `chunkrec report` prints and the dashboard shows): the arm
table, the decision table, the verdict.

    print(format_report(experiment_report(session, experiment_id)))
"""

from __future__ import annotations

from services.experiments.analysis import ExperimentReport


def _pct(x: float | None, sign: bool = False) -> str:
    return "-" if x is None else f"{100 * x:{'+' if sign else ''}.2f}%"


def format_rules(rules: dict | None, default: bool) -> str:
    if not rules:
        return "rules: none"
    p = rules["primary"]
    guards = ", ".join(f"{g['metric']} within {_pct(g['margin'])}"
                       for g in rules.get("guardrails", []))
    head = (f"rules{' (default)' if default else ''}: primary {p['metric']} "
            f"({p['direction']}) {p['test'].replace('_', '-')} margin {_pct(p['margin'])}")
    return (f"{head}; guardrails: {guards or 'none'}; cost: {', '.join(rules.get('cost', []))}; "
            f"alpha {rules['alpha']:g}, power {rules['power']:g}")


def decision_lines(report: ExperimentReport) -> list[str]:
    """The decision table (one row per arm and metric) and the verdicts."""
    lines = [format_rules(report.rules, report.rules_default)]
    if report.tests:
        lines.append(f"{'arm':<12}{'metric':<13}{'role':<10}{'control':>10}{'arm':>10}"
                     f"{'change [anytime bounds]':>30}{'limit':>9}{'result':>11}")
        for t in report.tests:
            share = t.metric == "latency_p99"
            val = ((lambda x: _pct(x)) if share or t.metric == "error_rate"
                   else (lambda x: "-" if x is None else f"{x:.4f}"))
            bounds = f"{_pct(t.change, not share)} [{_pct(t.lower, not share)}, " \
                     f"{_pct(t.upper, not share)}]"
            lines.append(f"{t.arm:<12}{t.metric:<13}{t.role:<10}{val(t.control):>10}"
                         f"{val(t.treatment):>10}{bounds:>30}{_pct(t.limit, not share):>9}"
                         f"{t.result:>11}")
        t0 = report.tests[0]
        lines.append(f"(lower bound at level {t0.alpha:.3g}, upper at {t0.alpha_fail:.3g}: "
                     "Bonferroni over arms for ship, over arms x metrics for do-not-ship; "
                     "latency_p99 rows: share of requests over (1 + margin) x control's p99; "
                     "error_rate rows: the arm's failed share minus control's, in points)")
    for v in report.arm_verdicts:
        lines.append(f"{v.arm}: {v.verdict.upper()}: {v.reason}")
    if report.verdict is not None:
        v = report.verdict
        lines.append(f"VERDICT: {v.verdict.upper()}{' ' + v.arm if v.arm else ''}"
                     + (f" (about {v.more_users:,} more users)" if v.more_users else ""))
    return lines


def format_report(report: ExperimentReport) -> str:
    """A plain-text verdict table (what `chunkrec report` prints)."""
    lines = [f"experiment {report.experiment_id} {report.name!r} ({report.status}), "
             f"phase {report.phase}",
             f"{'arm':<14}{'units':>7}{'expos':>8}{'clicks':>7}{'CTR [95% CI]':>24}"
             f"{'diff, clustered [95% CI]':>28}{'CUPED diff [95% CI]':>28}{'mSPRT p':>9}"
             f"{'AUC':>7}{'p99 ms':>8}{'emb MB':>8}"]
    for s in report.arms:
        ci = f"{_pct(s.ctr)} [{_pct(s.ctr_ci[0])},{_pct(s.ctr_ci[1])}]"
        if s.is_control:
            diff = cuped = "control"
        else:
            diff = ("-" if s.diff is None or s.diff_ci_clustered is None else
                    f"{_pct(s.diff)} [{_pct(s.diff_ci_clustered[0])},"
                    f"{_pct(s.diff_ci_clustered[1])}]")
            cuped = ("-" if s.diff_cuped is None or s.diff_ci_cuped is None else
                     f"{_pct(s.diff_cuped)} [{_pct(s.diff_ci_cuped[0])},"
                     f"{_pct(s.diff_ci_cuped[1])}]")
        avp = "-" if s.always_valid_p is None else f"{s.always_valid_p:.3g}"
        auc = "-" if s.auc is None else f"{s.auc:.3f}"
        p99 = "-" if s.latency_p99_ms is None else f"{s.latency_p99_ms:.1f}"
        mb = "-" if s.embedding_bytes is None else f"{s.embedding_bytes / 1e6:.2f}"
        lines.append(f"{s.arm:<14}{s.units:>7}{s.exposures:>8}{s.clicks:>7}{ci:>24}{diff:>28}"
                     f"{cuped:>28}{avp:>9}{auc:>7}{p99:>8}{mb:>8}")
    for s in report.arms:
        if s.variance_reduction is not None and s.diff_ci_cuped and s.diff_ci_clustered:
            shrink = 1 - (s.diff_ci_cuped[1] - s.diff_ci_cuped[0]) / (
                s.diff_ci_clustered[1] - s.diff_ci_clustered[0])
            lines.append(f"CUPED ({s.arm} vs control): variance {-100 * s.variance_reduction:+.1f}%"
                         f", CI width {-100 * shrink:+.1f}%")
    srm = "FLAG" if report.srm_flag else "ok"
    lines.append(f"SRM chi2 = {report.srm_chi2:.2f}, p = {report.srm_p_value:.3g} ({srm})")
    lines.extend(f"note: {n}" for n in report.notes)
    lines.extend(decision_lines(report))
    return "\n".join(lines)
