"""`GET /experiments/{id}`: the experiment dashboard, one HTML page: the verdict (ship, do not
ship, keep running, with the reason and "about N more users"), the decision rules and the
decision table, then server-side SVG charts (services/experiments/router/charts.py): CTR per
arm over time with 95% CI bands, online AUC of the served predictions per arm, embedding
bytes per arm's model over time, and the live chunks per ID histogram of each model that
reports one (FIITED). Refreshes itself every 10 s.
"""

from __future__ import annotations

from html import escape

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from statsmodels.stats.proportion import proportion_confint

from services.experiments.analysis import ExperimentReport, experiment_report
from services.experiments.router.charts import Series, bar_chart, line_chart
from services.experiments.router.deps import SessionDep
from services.experiments.router.schemas import ExperimentId, PhaseQuery
from services.experiments.verdict_text import format_report
from storage.db.models import Experiment, Model, ModelVersionRow

router = APIRouter(tags=["dashboard"])
POINTS = 24

_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:16px;color:#222}} .grid{{display:flex;
flex-wrap:wrap;gap:12px}} .chart-title{{font-size:13px;font-weight:bold}}
.tick,.legend{{font-size:10px}} pre{{background:#f6f6f6;padding:8px;font-size:11px}}</style>
</head><body><h1>{title}</h1><h2 id="verdict">{verdict}</h2>
<pre id="report">{table}</pre><div class="grid">{charts}</div>
<script>
// marks each plotted series with its rendered size, so a headless browser test can check
// that the charts were laid out with data
document.querySelectorAll('.series').forEach(function (el) {{
  var b = el.getBBox(); el.setAttribute('data-rendered-width', b.width.toFixed(1));
}});
document.body.setAttribute('data-charts-ready', '1');
</script></body></html>"""


def _time_series(report: ExperimentReport) -> tuple[list[Series], list[Series]]:
    """(CTR series with CI bands, cumulative AUC series) per arm at the report's looks."""
    ctr: list[Series] = []
    auc: list[Series] = []
    for arm, look in report.looks.items():
        t = np.asarray(look["t"], float)
        n, c = np.asarray(look["items"], float), np.asarray(look["clicks"], float)
        ok = n > 0
        rate = np.where(ok, c / np.maximum(n, 1), np.nan)
        lo, hi = (np.where(ok, b, np.nan) for b in
                  proportion_confint(c, np.maximum(n, 1), method="wilson"))
        ctr.append(Series(arm, t, rate, lo, hi))
        auc.append(Series(arm, t, np.array([np.nan if a is None else a for a in look["auc"]])))
    return ctr, auc


def _memory(session: Session, exp: Experiment) -> tuple[list[Series], dict[str, dict]]:
    """(embedding bytes over time per arm, newest live-chunks histogram per arm)."""
    series: list[Series] = []
    hists: dict[str, dict] = {}
    rows_by_arm = {}
    for arm in exp.arms:
        rows = session.execute(
            select(ModelVersionRow.published_at, ModelVersionRow.embedding_bytes,
                   ModelVersionRow.chunk_histogram)
            .join(Model).where(Model.name == arm.model_name)
            .order_by(ModelVersionRow.version)).all()
        rows_by_arm[arm.name] = rows
    starts = [r[0][0] for r in rows_by_arm.values() if r]
    t0 = min(starts) if starts else 0.0
    for name, rows in rows_by_arm.items():
        x = np.array([r[0] - t0 for r in rows], float)
        y = np.array([r[1] for r in rows], float)
        series.append(Series(name, x, y))
        if rows and rows[-1][2] and len(rows[-1][2]) > 1:
            hists[name] = {str(k): float(v) for k, v in rows[-1][2].items()}
    return series, hists


def render_dashboard(session: Session, experiment_id: int, phase: int | None = None) -> str:
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise LookupError(f"experiment {experiment_id} not found")
    report: ExperimentReport = experiment_report(session, experiment_id, phase=phase)
    ctr, auc = _time_series(report)
    mem, hists = _memory(session, exp)
    charts = [line_chart("ctr-chart", "CTR per arm (cumulative, 95% CI)", ctr, unit="%"),
              line_chart("auc-chart", "Online AUC of served predictions per arm", auc),
              line_chart("bytes-chart", "Embedding bytes per arm (trainer)", mem, unit="B",
                         x_label="seconds since first version"),
              bar_chart("chunks-chart", "Live chunks per ID (sampled from Redis)", hists)]
    title = f"Experiment {exp.id}: {exp.name} (phase {report.phase}, {exp.status})"
    v = report.verdict
    verdict = "" if v is None else (
        f"Verdict: {v.verdict}{' ' + v.arm if v.arm else ''}"
        + (f" (about {v.more_users:,} more users)" if v.more_users else "") + f". {v.reason}")
    return _PAGE.format(title=escape(title), verdict=escape(verdict),
                        table=escape(format_report(report)),
                        charts="".join(charts))


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
def dashboard(experiment_id: ExperimentId, session: SessionDep,
              phase: PhaseQuery = None) -> HTMLResponse:
    try:
        return HTMLResponse(render_dashboard(session, experiment_id, phase))
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
