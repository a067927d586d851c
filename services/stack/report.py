"""What `chunkrec up` shows: the live table, the summary table, the PNG of online AUC and
memory over time, and Redis's own measure of each model's embedding keys.

Two byte counts per model, both from Redis's side:
- record bytes: the sum of the packed records' sizes (the trainer's publisher tracks it
  exactly; the version record carries it as `redis_embedding_bytes`): the payload;
- MEMORY USAGE: Redis's estimate of what each key costs it (key, value, allocator and
  dictionary overhead), summed over every key of the model (or a SCAN sample of `sample`
  keys scaled to the record count, for big models).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import redis
from rich.table import Table

from services import wire
from services.stack.processes import Sample, StackResult


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def rate(samples: list[Sample], model: str, window_s: float = 5.0) -> float | None:
    """Events applied per second by `model` over the last `window_s` of samples."""
    mine = [s for s in samples if s.model == model]
    if len(mine) < 2:
        return None
    last = mine[-1]
    first = next((s for s in mine if s.t >= last.t - window_s), mine[0])
    if last.t <= first.t:
        return None
    return (last.events_applied - first.events_applied) / (last.t - first.t)


def _by_model(title: str, names: list[str], rows: list[tuple[str, list[str]]]) -> Table:
    """One row per measure, one column per model: narrow enough for an 80-column terminal."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for label, cells in rows:
        table.add_row(label, *cells)
    return table


def live_table(result: StackResult, policies: dict[str, str], served: dict[str, int],
               title: str) -> Table:
    names = list(policies)
    recs = [result.latest.get(n) for n in names]

    def cells(fn: object) -> list[str]:
        return [("-" if rec is None else fn(name, rec))  # type: ignore[operator]
                for name, rec in zip(names, recs, strict=True)]

    def ev_s(name: str, _rec: wire.ModelVersion) -> str:
        r = rate(result.samples, name)
        return "-" if r is None else f"{r:,.0f}"

    rows = [
        ("policy", [policies[n] for n in names]),
        ("version (served)", cells(lambda n, r: f"{r.version} ({served.get(n, '-')})")),
        ("events applied", cells(lambda n, r: f"{r.events_applied:,}")),
        ("events/s", cells(ev_s)),
        ("lag (messages)", cells(lambda n, r: str(r.metrics.get("lag", "-")))),
        ("online AUC", cells(lambda n, r: _f(r.metrics.get("auc")))),
        ("recent AUC", cells(lambda n, r: _f(r.metrics.get("window_auc")))),
        ("embedding bytes (trainer)", cells(lambda n, r: _kib(r.embedding_bytes))),
        ("Redis record bytes", cells(lambda n, r: _kib(r.redis_embedding_bytes))),
        ("Redis records", cells(lambda n, r: f"{r.redis_embedding_records:,}")),
    ]
    return _by_model(f"{title}  [{result.seconds:.0f} s]", names, rows)


def redis_memory(r: redis.Redis, model: str, records: int, sample: int = 5000) -> int | None:
    """Redis MEMORY USAGE of the bucket keys of `model`'s current version: all of them, or
    a sample of `sample` buckets scaled to all of them. None when it has no version."""
    keys = wire.current_bucket_keys(r, model)
    if not keys:
        return None
    total = len(keys)
    keys = keys[:sample]
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    used = sum(int(u or 0) for u in pipe.execute())
    return used if len(keys) == total else round(used / len(keys) * total)


def summary_table(result: StackResult, policies: dict[str, str],
                  memory_usage: dict[str, int | None]) -> Table:
    names = list(policies)
    recs = [result.latest.get(n) for n in names]

    def cells(fn: object) -> list[str]:
        return [("-" if rec is None else fn(name, rec))  # type: ignore[operator]
                for name, rec in zip(names, recs, strict=True)]

    rows = [
        ("policy", [policies[n] for n in names]),
        ("versions published", cells(lambda n, r: str(r.version))),
        ("events applied", cells(lambda n, r: f"{r.events_applied:,}")),
        ("online AUC (all events)", cells(lambda n, r: _f(r.metrics.get("auc")))),
        ("recent AUC (last window)", cells(lambda n, r: _f(r.metrics.get("window_auc")))),
        ("online logloss", cells(lambda n, r: _f(r.metrics.get("logloss")))),
        ("embedding bytes (trainer)", cells(lambda n, r: _kib(r.embedding_bytes))),
        ("Redis records", cells(lambda n, r: f"{r.redis_embedding_records:,}")),
        ("Redis record bytes", cells(lambda n, r: _kib(r.redis_embedding_bytes))),
        ("Redis MEMORY USAGE", cells(lambda n, r: _kib(memory_usage.get(n)))),
    ]
    title = (f"chunkrec up: {result.reason}, {result.events_sent or 0:,} events replayed, "
             f"{result.seconds:.0f} s")
    return _by_model(title, names, rows)


def plot(result: StackResult, path: Path) -> Path:
    """PNG: online AUC (cumulative and recent window) and memory (the trainer's embedding
    bytes, Redis record bytes) per model over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model: dict[str, list[Sample]] = defaultdict(list)
    for s in result.samples:
        seen = by_model[s.model]
        if not seen or seen[-1].version != s.version:
            seen.append(s)
    fig, (ax_auc, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (model, ss) in enumerate(sorted(by_model.items())):
        color = f"C{i}"
        t = [s.t for s in ss]
        ax_auc.plot(t, [s.auc if s.auc is not None else float("nan") for s in ss],
                    color=color, label=f"{model} (cumulative)")
        ax_auc.plot(t, [s.window_auc if s.window_auc is not None else float("nan")
                        for s in ss], color=color, linestyle="--", label=f"{model} (recent)")
        ax_mem.plot(t, [s.embedding_bytes / 1024 for s in ss], color=color,
                    label=f"{model} trainer")
        ax_mem.plot(t, [s.redis_bytes / 1024 for s in ss], color=color, linestyle="--",
                    label=f"{model} Redis records")
    ax_auc.set(title="online AUC (progressive validation)", xlabel="seconds", ylabel="AUC")
    ax_mem.set(title="embedding memory", xlabel="seconds", ylabel="KiB")
    for ax in (ax_auc, ax_mem):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def decision_lines(report: dict) -> list[str]:
    """The decision (services/experiments/decision.py) of a report dict: the rules, one line
    per arm and metric with its anytime bounds against the margin, the verdicts."""
    def pct(x: float | None, sign: bool = True) -> str:
        return "-" if x is None else f"{100 * x:{'+' if sign else ''}.2f}%"

    rules = report.get("rules") or {}
    lines = []
    if rules:
        pr = rules["primary"]
        lines.append(f"decision rules{' (default)' if report.get('rules_default') else ''}: "
                     f"{pr['metric']} {pr['test'].replace('_', '-')} within "
                     f"{pct(pr['margin'], False)}; guardrails "
                     + ", ".join(f"{g['metric']} within {pct(g['margin'], False)}"
                                 for g in rules.get("guardrails", []))
                     + f"; alpha {rules['alpha']:g} (Bonferroni over arms), power "
                     f"{rules['power']:g}")
    for t in report.get("tests", []):
        share = t["metric"] == "latency_p99"
        need = (f", ~{t['units_needed']:,.0f} users/arm for {rules.get('power', 0.8):g} power"
                if t.get("units_needed") else "")
        lines.append(f"  {t['arm']:<9} {t['metric']:<12} {pct(t['change'], not share)} "
                     f"[{pct(t['lower'], not share)}, {pct(t['upper'], not share)}] vs "
                     f"{pct(t['limit'], not share)}: {t['result']}{need}")
    for v in report.get("arm_verdicts", []):
        lines.append(f"{v['arm']}: {v['verdict'].upper()} ({v['reason']})")
    v = report.get("verdict")
    if v:
        lines.append(f"VERDICT: {v['verdict'].upper()}{' ' + v['arm'] if v['arm'] else ''}")
    return lines


def verdict_table(report: dict, policies: dict[str, str], dashboard: str) -> Table:
    """The experiment's report (GET /v1/experiments/{id}/report) as one column per arm:
    traffic, CTR with its 95% CI, the difference against control with its CI, fixed-horizon
    and always-valid (mSPRT) p-values, quality of the served predictions, latency and the
    embedding bytes of each arm's model; the SRM check and the notes below."""
    arms = report["arms"]
    control = next((a for a in arms if a["is_control"]), None)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    def ci(x: float | None, bounds: list[float] | None) -> str:
        return "-" if x is None or bounds is None else (
            f"{pct(x)} [{pct(bounds[0])}, {pct(bounds[1])}]")

    def p(x: float | None) -> str:
        return "-" if x is None else f"{x:.3g}"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    def ci_shrink(a: dict) -> float:
        (lo, hi), (clo, chi) = a["diff_ci_clustered"], a["diff_ci_cuped"]
        return 1 - (chi - clo) / (hi - lo)

    def share(a: dict) -> str:
        if control is None or not a["embedding_bytes"] or not control["embedding_bytes"]:
            return "-"
        return f"{100 * a['embedding_bytes'] / control['embedding_bytes']:.1f}%"

    rows = [
        ("policy", [policies.get(a["model"], a["model"]) for a in arms]),
        ("traffic weight", [f"{a['weight']:g}" for a in arms]),
        ("units (users)", [f"{a['units']:,}" for a in arms]),
        ("requests", [f"{a['requests']:,}" for a in arms]),
        ("exposures (items shown)", [f"{a['exposures']:,}" for a in arms]),
        ("clicks", [f"{a['clicks']:,}" for a in arms]),
        ("CTR [95% CI]", [ci(a["ctr"], a["ctr_ci"]) for a in arms]),
        ("diff vs control [95% CI]", ["control" if a["is_control"] else
                                      ci(a["diff"], a["diff_ci"]) for a in arms]),
        ("p-value (fixed horizon)", ["" if a["is_control"] else p(a["p_value"]) for a in arms]),
        ("diff, unit-clustered [95% CI]",
         ["" if a["is_control"] or a.get("diff_ci_clustered") is None
          else ci(a["diff"], a["diff_ci_clustered"]) for a in arms]),
        ("p-value (unit-clustered)",
         ["" if a["is_control"] else p(a.get("p_value_clustered")) for a in arms]),
        ("p-value (always valid, clustered)", ["" if a["is_control"] else p(a["always_valid_p"])
                                           for a in arms]),
        ("diff, CUPED [95% CI]", ["" if a["is_control"] or a.get("diff_ci_cuped") is None
                                  else ci(a["diff_cuped"], a["diff_ci_cuped"]) for a in arms]),
        ("  CUPED variance / CI width", ["" if a.get("variance_reduction") is None
                                         else f"{-100 * a['variance_reduction']:+.1f}% / "
                                         f"{-100 * ci_shrink(a):+.1f}%" for a in arms]),
        ("log loss (served)", [_f(a["log_loss"]) for a in arms]),
        ("AUC (served)", [_f(a["auc"]) for a in arms]),
        ("latency p50 / p99 ms", [f"{ms(a['latency_p50_ms'])} / {ms(a['latency_p99_ms'])}"
                                  for a in arms]),
        ("failed requests (error rate)", [f"{a.get('errors', 0):,} ({pct(a.get('error_rate'))})"
                                          for a in arms]),
        ("model version", [str(a["model_version"] or "-") for a in arms]),
        ("embedding bytes (trainer)", [_kib(a["embedding_bytes"]) for a in arms]),
        ("  % of control", [share(a) for a in arms]),
        ("Redis record bytes", [_kib(a["redis_embedding_bytes"]) for a in arms]),
    ]
    title = (f"verdict: experiment {report['experiment_id']} {report['name']!r} "
             f"({report['status']}, phase {report['phase']})")
    table = _by_model(title, [a["arm"] for a in arms], rows)
    srm = "FLAG: sample ratio mismatch" if report["srm_flag"] else "ok"
    chi2 = report["srm_chi2"]
    lines = [f"SRM check (units vs weights): chi2 = {'-' if chi2 is None else f'{chi2:.2f}'}, "
             f"p = {p(report['srm_p_value'])} ({srm})"]
    lines += [f"note: {n}" for n in report["notes"]]
    lines += decision_lines(report)
    lines.append(f"dashboard: {dashboard}")
    table.caption = "\n".join(lines)
    table.caption_justify = "left"
    return table
