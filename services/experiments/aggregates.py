"""What the report reads from the database: per-arm sums over units, at every look, computed by
the database (GROUP BY arm, unit, look), never the rows themselves. The per-look sums read the
exposures only (one row per request, with its items' clicks and log loss summed by the
joiner), so 10M outcomes cost a scan of their 1M requests, and a report moves a few thousand
numbers (bench/report_scale.py).

    span = phase_span(s, exp_id, phase)                     # first/last exposure, requests
    looks = look_moments(s, exp_id, phase, span, L, q, slow) # arm -> {"ctr": float[L, M], ...}
    hist = score_histograms(s, exp_id, phase, span, L)      # arm -> float[L, BINS, 2], sampled

Looks: the phase's time span cut into L equal slices; look k holds everything up to the end of
slice k. The moments of inference.MOMENTS at look k need each unit's running sums (N, C) at
that time; a unit's running sums change only in slices where it was active, so each active
(unit, slice) adds the increment C^2 - C_before^2 (and so on) and the per-slice increments
are summed per arm, then accumulated over slices in numpy. Both SQLite (3.35+, for ln and
floor) and PostgreSQL run the same SQL (PostgreSQL: bytewise sort of unit ids, a page sample
for the score histogram, SET LOCAL work_mem and jit: tune_for_report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.experiments.inference import MOMENTS

SCORE_BINS = 1000  # served-score histogram bins: AUC from it is within ~1e-3 of the exact one
SAMPLE_REQUESTS = 20_000  # PostgreSQL: above this many requests the AUC reads a sample
LATENCY_BINS_PER_E = 100  # latency histogram: bins of 1% in ln(ms)
PRIOR_ITEMS = 10.0  # CUPED covariate: a unit's pre-period CTR shrunk with this many items
DOUBLE = "DOUBLE PRECISION"
REPORT_WORK_MEM = "256MB"  # PostgreSQL, per sort or hash of the report's queries


@dataclass(frozen=True)
class Span:
    t0: float
    t1: float
    requests: int

    def scale(self, looks: int) -> float:
        """Slice index = floor((ts - t0) * scale), in 0..looks-1."""
        width = self.t1 - self.t0
        return (looks * (1 - 1e-9)) / width if width > 0 else 0.0


def tune_for_report(session: Session) -> None:
    """PostgreSQL: a report is a few big aggregations; give them memory to sort and hash in
    (the default 4 MB spills the GROUP BY arm, unit, look to disk) and skip JIT compilation
    (~0.4 s a query, more than it saves here). For this transaction only (SET LOCAL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
        session.execute(text("SET LOCAL jit = off"))


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
    n, nc, nb = f"{name}_n", f"{name}_nc", f"{name}_nb"  # this slice, running after, before
    c, cb = f"{name}_c", f"{name}_cb"
    inc_cc, inc_cn = f"({c} * {c} - {cb} * {cb})", f"({c} * {nc} - {cb} * {nb})"
    inc_nn = f"({nc} * {nc} - {nb} * {nb})"
    cols = [("units", f"CASE WHEN {nb} = 0 AND {n} > 0 THEN 1 ELSE 0 END"), ("n", n),
            ("c", f"{name}_v"), ("cc", inc_cc), ("cn", inc_cn), ("nn", inc_nn)]
    if covariate:
        cols += [("nx", f"{n} * x"), ("nx2", f"{n} * x2"), ("cx", f"{name}_v * x"),
                 ("ccx", f"{inc_cc} * x"), ("ccx2", f"{inc_cc} * x2"),
                 ("cnx", f"{inc_cn} * x"), ("cnx2", f"{inc_cn} * x2"),
                 ("cnx3", f"{inc_cn} * x3"), ("nnx", f"{inc_nn} * x"),
                 ("nnx2", f"{inc_nn} * x2"), ("nnx3", f"{inc_nn} * x3"),
                 ("nnx4", f"{inc_nn} * x2 * x2")]
    return cols


def _look_moments(session: Session, rows_sql: str, params: dict, values: dict[str, bool],
                  looks: int, covariate_sql: str) -> dict[int, dict[str, np.ndarray]]:
    """rows_sql yields (arm, unit, b, and per value v: v_n its count, v its sum) per row;
    values: name -> with covariate. -> arm id -> name -> float[looks, len(MOMENTS)]
    cumulative moments."""
    names = list(values)
    per_sums = ", ".join(f"SUM({v}_n) AS {v}_n, SUM({v}) AS {v}_v" for v in names)
    carried = ", ".join(f"{v}_n, {v}_v" for v in names)
    running = ", ".join(f"SUM({v}_n) OVER w AS {v}_nc, SUM({v}_v) OVER w AS {v}_c"
                        for v in names)
    before = ", ".join(f"{v}_n, {v}_nc, {v}_nc - {v}_n AS {v}_nb, {v}_c, {v}_c - {v}_v AS "
                       f"{v}_cb, {v}_v" for v in names)
    selects, layout = [], []
    for v in names:
        for moment, expr in _moment_columns(v, values[v]):
            selects.append(f"SUM(CAST({expr} AS {DOUBLE}))")
            layout.append((v, moment))
    sql = f"""
        WITH r AS ({rows_sql}),
        per AS (SELECT arm, unit, b, {per_sums} FROM r GROUP BY arm, unit, b),
        run AS (SELECT arm, unit, b, {carried}, {running} FROM per
                WINDOW w AS (PARTITION BY arm, unit ORDER BY b
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)),
        cov AS (SELECT run.*, {covariate_sql} AS x
                FROM run LEFT JOIN unit_pre_period p
                  ON p.experiment_id = :exp AND p.unit_id = run.unit),
        inc AS (SELECT arm, b, {before}, x, x * x AS x2, x * x * x AS x3 FROM cov)
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


def look_moments(session: Session, experiment_id: int, phase: int, span: Span, looks: int,
                 pre_ctr: float | None, slow_ms: float | None
                 ) -> dict[int, dict[str, np.ndarray]]:
    """arm id -> {"ctr": moments of clicks per item shown, with the CUPED covariate when
    pre_ctr is given; "log_loss": of the served scores' log loss per item; "error": of
    failed requests (n_shown = 0: the router logs them so) per request; "slow" (when
    slow_ms is given): of requests slower than slow_ms per request} at every look, from the
    exposures' per-request sums alone (exposures.n_shown, clicks, log_loss: the joiner writes
    them with the outcomes), so 10M outcomes cost a scan of their 1M requests.
    Covariate x_u = (pre clicks + k q) / (pre items + k) - q, q = pre_ctr, k = PRIOR_ITEMS:
    the unit's pre-experiment CTR shrunk towards the pooled one (0 without history)."""
    bucket, params = _bucket(span, looks)
    # PostgreSQL sorts the unit ids for the window: bytewise ("C") is several times faster
    # than the database's language collation, and any order will do
    unit = ('e.unit_id COLLATE "C"' if session.get_bind().dialect.name == "postgresql"
            else "e.unit_id")
    slow = (f", CAST(1 AS {DOUBLE}) AS slow_n, CAST(CASE WHEN e.latency_ms > :slow THEN 1 "
            f"ELSE 0 END AS {DOUBLE}) AS slow") if slow_ms is not None else ""
    rows = f"""SELECT e.arm_id AS arm, {unit} AS unit, {bucket} AS b,
        CAST(e.n_shown AS {DOUBLE}) AS ctr_n, CAST(e.clicks AS {DOUBLE}) AS ctr,
        CAST(e.n_shown AS {DOUBLE}) AS log_loss_n, e.log_loss AS log_loss,
        CAST(1 AS {DOUBLE}) AS error_n,
        CAST(CASE WHEN e.n_shown = 0 THEN 1 ELSE 0 END AS {DOUBLE}) AS error {slow}
        FROM exposures e WHERE e.experiment_id = :exp AND e.phase = :phase"""
    params.update(exp=experiment_id, phase=phase, q=pre_ctr or 0.0, k=PRIOR_ITEMS,
                  slow=slow_ms or 0.0)
    cov = (f"(CAST(COALESCE(p.clicks, 0) AS {DOUBLE}) + :k * :q) / "
           f"(CAST(COALESCE(p.exposures, 0) AS {DOUBLE}) + :k) - :q")
    values = {"ctr": pre_ctr is not None, "log_loss": False, "error": False}
    if slow_ms is not None:
        values["slow"] = False
    return _look_moments(session, rows, params, values, looks,
                         cov if pre_ctr is not None else "0.0")


def score_histograms(session: Session, experiment_id: int, phase: int, span: Span,
                     looks: int, bins: int = SCORE_BINS) -> dict[int, np.ndarray]:
    """arm id -> float[looks, bins, 2]: (items, clicks) per served-score bin, per slice
    (not cumulative). On PostgreSQL a phase of more than SAMPLE_REQUESTS requests is read
    through a page sample of the exposures (TABLESAMPLE SYSTEM, repeatable) of about that
    many requests and their outcomes: the AUC's error from ~200k items is far below the
    differences it is read for."""
    bucket, params = _bucket(span, looks)
    params.update(exp=experiment_id, phase=phase, bins=bins)
    sample = ""
    join = "JOIN outcomes o ON o.request_id = e.request_id"
    if session.get_bind().dialect.name == "postgresql" and span.requests > SAMPLE_REQUESTS:
        share = 100.0 * SAMPLE_REQUESTS / span.requests
        sample = f"TABLESAMPLE SYSTEM ({share:.6f}) REPEATABLE (7)"
        # the sampled requests' outcomes by their primary key: left to itself the planner
        # misjudges the join's size and hashes the sample against a scan of every outcome
        # (10M outcomes: 6.8 s, against well under a second for ~20k index lookups); the
        # OFFSET 0 keeps it from flattening the lateral subquery back into that join
        join = ("CROSS JOIN LATERAL (SELECT score, clicked FROM outcomes "
                "WHERE request_id = e.request_id OFFSET 0) o")
    rows = session.execute(text(f"""
        SELECT arm, b, s, COUNT(*), SUM(y) FROM (
          SELECT e.arm_id AS arm, {bucket} AS b, FLOOR(o.score * :bins) AS s,
                 CASE WHEN o.clicked THEN 1 ELSE 0 END AS y
          FROM exposures e {sample} {join}
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
