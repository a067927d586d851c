"""What the report reads from the database: per-arm sums over units, at every look, computed by
the database (GROUP BY arm, unit, look), never the rows themselves. A report over 10M
outcomes moves a few hundred numbers (bench/report_scale.py).

    span = phase_span(s, exp_id, phase)                     # first/last exposure, requests
    looks = outcome_moments(s, exp_id, phase, span, L, cov) # arm -> {"ctr": float[L, M], ...}
    hist = score_histograms(s, exp_id, phase, span, L)      # arm -> float[L, BINS, 2]

Looks: the phase's time span cut into L equal slices; look k holds everything up to the end of
slice k. The moments of inference.MOMENTS at look k need each unit's running sums (N, C) at
that time; a unit's running sums change only in slices where it was active, so each active
(unit, slice) adds the increment C^2 - C_before^2 (and so on) and the per-slice increments
are summed per arm, then accumulated over slices in numpy. Both SQLite (3.35+, for ln and
floor) and PostgreSQL run the same SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.experiments.inference import MOMENTS

SCORE_BINS = 1000  # served-score histogram bins: AUC from it is within ~1e-3 of the exact one
LOOK_SCORE_BINS = 100  # per look (the dashboard's AUC over time): coarser, 20x fewer rows
LATENCY_BINS_PER_E = 100  # latency histogram: bins of 1% in ln(ms)
PRIOR_ITEMS = 10.0  # CUPED covariate: a unit's pre-period CTR shrunk with this many items
EPS = 1e-7  # scores are clipped to [EPS, 1 - EPS] for the log loss, as scikit-learn does
DOUBLE = "DOUBLE PRECISION"


@dataclass(frozen=True)
class Span:
    t0: float
    t1: float
    requests: int

    def scale(self, looks: int) -> float:
        """Slice index = floor((ts - t0) * scale), in 0..looks-1."""
        width = self.t1 - self.t0
        return (looks * (1 - 1e-9)) / width if width > 0 else 0.0


def phase_span(session: Session, experiment_id: int, phase: int) -> Span:
    row = session.execute(text(
        "SELECT MIN(ts), MAX(ts), COUNT(*) FROM exposures "
        "WHERE experiment_id = :exp AND phase = :phase"),
        {"exp": experiment_id, "phase": phase}).one()
    return Span(float(row[0] or 0.0), float(row[1] or 0.0), int(row[2]))


def pre_period_ctr(session: Session, experiment_id: int) -> float | None:
    """Pooled CTR of the recorded pre-experiment behaviour (None: nothing recorded)."""
    row = session.execute(text(
        "SELECT SUM(clicks), SUM(exposures) FROM unit_pre_period WHERE experiment_id = :exp"),
        {"exp": experiment_id}).one()
    return float(row[0]) / float(row[1]) if row[1] else None


def _moment_columns(name: str, covariate: bool) -> list[tuple[str, str]]:
    """(moment, SQL over the increments table) for one value; the others are 0."""
    c, cb = f"{name}_c", f"{name}_cb"  # running sum after / before the slice
    inc_cc, inc_cn = f"({c} * {c} - {cb} * {cb})", f"({c} * nc - {cb} * nb)"
    inc_nn = "(nc * nc - nb * nb)"
    cols = [("units", "CASE WHEN nb = 0 THEN 1 ELSE 0 END"), ("n", "n"), ("c", f"{name}_v"),
            ("cc", inc_cc), ("cn", inc_cn), ("nn", inc_nn)]
    if covariate:
        cols += [("nx", "n * x"), ("nx2", "n * x * x"), ("cx", f"{name}_v * x"),
                 ("ccx", f"{inc_cc} * x"), ("ccx2", f"{inc_cc} * x * x"),
                 ("cnx", f"{inc_cn} * x"), ("cnx2", f"{inc_cn} * x * x"),
                 ("cnx3", f"{inc_cn} * x * x * x"), ("nnx", f"{inc_nn} * x"),
                 ("nnx2", f"{inc_nn} * x * x"), ("nnx3", f"{inc_nn} * x * x * x"),
                 ("nnx4", f"{inc_nn} * x * x * x * x")]
    return cols


def _look_moments(session: Session, rows_sql: str, params: dict, values: dict[str, bool],
                  looks: int, covariate_sql: str) -> dict[int, dict[str, np.ndarray]]:
    """rows_sql yields (arm, unit, b, <value>...) per row; values: name -> with covariate.
    -> arm id -> name -> float[looks, len(MOMENTS)] cumulative moments."""
    names = list(values)
    per_sums = ", ".join(f"SUM({v}) AS {v}_v" for v in names)
    running = ", ".join(f"SUM({v}_v) OVER w AS {v}_c" for v in names)
    carried = ", ".join(f"{v}_v" for v in names)
    before = ", ".join(f"{v}_c, {v}_c - {v}_v AS {v}_cb, {v}_v" for v in names)
    selects, layout = [], []
    for v in names:
        for moment, expr in _moment_columns(v, values[v]):
            selects.append(f"SUM(CAST({expr} AS {DOUBLE}))")
            layout.append((v, moment))
    sql = f"""
        WITH r AS ({rows_sql}),
        per AS (SELECT arm, unit, b, CAST(COUNT(*) AS {DOUBLE}) AS n, {per_sums}
                FROM r GROUP BY arm, unit, b),
        run AS (SELECT arm, unit, b, n, {carried}, SUM(n) OVER w AS nc, {running} FROM per
                WINDOW w AS (PARTITION BY arm, unit ORDER BY b
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)),
        inc AS (SELECT run.arm, run.b, n, nc, nc - n AS nb, {before}, {covariate_sql} AS x
                FROM run LEFT JOIN unit_pre_period p
                  ON p.experiment_id = :exp AND p.unit_id = run.unit)
        SELECT arm, b, {", ".join(selects)} FROM inc GROUP BY arm, b"""
    out: dict[int, dict[str, np.ndarray]] = {}
    for row in session.execute(text(sql), params):
        arm, b = int(row[0]), min(max(int(row[1]), 0), looks - 1)
        if arm not in out:
            out[arm] = {v: np.zeros((looks, len(MOMENTS))) for v in names}
        slots = out[arm]
        for (v, moment), value in zip(layout, row[2:], strict=True):
            slots[v][b, MOMENTS.index(moment)] += float(value or 0.0)
    return {arm: {v: np.cumsum(m, axis=0) for v, m in d.items()} for arm, d in out.items()}


def _bucket(span: Span, looks: int) -> tuple[str, dict]:
    return "FLOOR((e.ts - :t0) * :scale)", {"t0": span.t0, "scale": span.scale(looks)}


def outcome_moments(session: Session, experiment_id: int, phase: int, span: Span, looks: int,
                    pre_ctr: float | None) -> dict[int, dict[str, np.ndarray]]:
    """arm id -> {"ctr": moments of clicks per item shown, with the CUPED covariate when
    pre_ctr is given; "log_loss": of the served score's log loss per item} at every look.
    Covariate x_u = (pre clicks + k q) / (pre items + k) - q, q = pre_ctr, k = PRIOR_ITEMS:
    the unit's pre-experiment CTR shrunk towards the pooled one (0 without history)."""
    bucket, params = _bucket(span, looks)
    rows = f"""SELECT e.arm_id AS arm, e.unit_id AS unit, {bucket} AS b,
        CAST(CASE WHEN o.clicked THEN 1 ELSE 0 END AS {DOUBLE}) AS ctr,
        CAST(CASE WHEN o.clicked
             THEN -LN(CASE WHEN o.score > :eps THEN o.score ELSE :eps END)
             ELSE -LN(CASE WHEN o.score < 1 - :eps THEN 1 - o.score ELSE :eps END) END
             AS {DOUBLE}) AS log_loss
        FROM outcomes o JOIN exposures e ON e.request_id = o.request_id
        WHERE e.experiment_id = :exp AND e.phase = :phase"""
    params.update(exp=experiment_id, phase=phase, eps=EPS, q=pre_ctr or 0.0, k=PRIOR_ITEMS)
    cov = (f"(CAST(COALESCE(p.clicks, 0) AS {DOUBLE}) + :k * :q) / "
           f"(CAST(COALESCE(p.exposures, 0) AS {DOUBLE}) + :k) - :q")
    return _look_moments(session, rows, params, {"ctr": pre_ctr is not None, "log_loss": False},
                         looks, cov if pre_ctr is not None else "0.0")


def request_moments(session: Session, experiment_id: int, phase: int, span: Span, looks: int,
                    slow_ms: float) -> dict[int, np.ndarray]:
    """arm id -> moments of "slower than slow_ms" per request (exposure) at every look."""
    bucket, params = _bucket(span, looks)
    rows = f"""SELECT e.arm_id AS arm, e.unit_id AS unit, {bucket} AS b,
        CAST(CASE WHEN e.latency_ms > :slow THEN 1 ELSE 0 END AS {DOUBLE}) AS slow
        FROM exposures e WHERE e.experiment_id = :exp AND e.phase = :phase"""
    params.update(exp=experiment_id, phase=phase, slow=slow_ms)
    got = _look_moments(session, rows, params, {"slow": False}, looks, "0.0")
    return {arm: d["slow"] for arm, d in got.items()}


def score_histograms(session: Session, experiment_id: int, phase: int, span: Span,
                     looks: int, bins: int = SCORE_BINS) -> dict[int, np.ndarray]:
    """arm id -> float[looks, bins, 2]: (items, clicks) per served-score bin, per slice
    (not cumulative). looks = 1: the whole phase."""
    bucket, params = _bucket(span, looks)
    params.update(exp=experiment_id, phase=phase, bins=bins)
    rows = session.execute(text(f"""
        SELECT arm, b, s, COUNT(*), SUM(y) FROM (
          SELECT e.arm_id AS arm, {bucket} AS b, FLOOR(o.score * :bins) AS s,
                 CASE WHEN o.clicked THEN 1 ELSE 0 END AS y
          FROM outcomes o JOIN exposures e ON e.request_id = o.request_id
          WHERE e.experiment_id = :exp AND e.phase = :phase) q
        GROUP BY arm, b, s"""), params).all()
    got = np.array([tuple(r) for r in rows], np.float64).reshape(-1, 5)
    out: dict[int, np.ndarray] = {}
    for arm in np.unique(got[:, 0]).astype(int):
        mine = got[got[:, 0] == arm]
        h = np.zeros((looks, bins, 2))
        k = np.clip(mine[:, 1].astype(int), 0, looks - 1)
        j = np.clip(mine[:, 2].astype(int), 0, bins - 1)
        np.add.at(h, (k, j), mine[:, 3:5])
        out[int(arm)] = h
    return out


def auc_from_histogram(hist: np.ndarray) -> float | None:
    """AUC of a score histogram float[BINS, 2] (items, clicks): scores in one bin count as
    ties (half a pair). None without both classes."""
    pos = hist[:, 1]
    neg = hist[:, 0] - hist[:, 1]
    p, n = pos.sum(), neg.sum()
    if p <= 0 or n <= 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (p * n))


def latency_histograms(session: Session, experiment_id: int,
                       phase: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """arm id -> (bin lower edges in ms float[K], requests float[K]), bins of 1% in ln(ms)."""
    rows = session.execute(text("""
        SELECT arm_id, FLOOR(LN(CASE WHEN latency_ms > 0.001 THEN latency_ms ELSE 0.001 END)
                             * :per) AS k, COUNT(*)
        FROM exposures WHERE experiment_id = :exp AND phase = :phase GROUP BY arm_id, k"""),
        {"exp": experiment_id, "phase": phase, "per": LATENCY_BINS_PER_E})
    acc: dict[int, list[tuple[int, int]]] = {}
    for arm, k, n in rows:
        acc.setdefault(int(arm), []).append((int(k), int(n)))
    out = {}
    for arm, bins in acc.items():
        bins.sort()
        k = np.array([b for b, _ in bins], np.float64)
        out[arm] = (np.exp(k / LATENCY_BINS_PER_E), np.array([n for _, n in bins], np.float64))
    return out


def percentile_from_histogram(edges: np.ndarray, counts: np.ndarray, q: float) -> float | None:
    """The q-th percentile (0..100) of a log-binned histogram: the geometric middle of the
    bin holding it (within half a bin, 0.5%, of the exact one)."""
    total = counts.sum()
    if total <= 0:
        return None
    k = int(np.searchsorted(np.cumsum(counts), q / 100 * total, side="left"))
    k = min(k, len(edges) - 1)
    return float(edges[k] * np.exp(0.5 / LATENCY_BINS_PER_E))
