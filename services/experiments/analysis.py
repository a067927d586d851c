"""The A/B report: per arm units, exposures, clicks and CTR with a 95% CI; the difference
against control with its CI and p-value; an always-valid sequential test (mSPRT); a
sample-ratio-mismatch check; log loss and AUC of the served predictions; latency; embedding
bytes. Statistics come from scipy / statsmodels / scikit-learn.

    report = experiment_report(session, experiment_id)          # current phase
    report.to_dict()                                            # what GET .../report returns

Units of analysis: an exposure is one shown item (an outcome row), a click is feedback inside
the attribution window. Items shown to the same unit are not independent, so the per-item
intervals are somewhat narrow when units see many items: the report also gives the
difference with unit-clustered standard errors, and its always-valid test uses the
unit-clustered variance; SRM is checked on units.
The report covers one phase (a weight layout): units are re-bucketed per phase.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)

from storage.db.models import (
    Arm,
    ArmWeight,
    Experiment,
    ExperimentPhase,
    Exposure,
    Model,
    ModelVersionRow,
    Outcome,
)

SRM_ALPHA = 0.001
DEFAULT_TAU = 0.02  # mSPRT mixing s.d. of the CTR difference (the effect size of interest)


@dataclass
class ArmStats:
    arm: str
    model: str
    is_control: bool
    weight: float
    units: int
    requests: int
    exposures: int
    clicks: int
    ctr: float
    ctr_ci: tuple[float, float]
    diff: float | None = None  # CTR - control CTR
    diff_ci: tuple[float, float] | None = None
    p_value: float | None = None  # two-sided, fixed-horizon
    # The same difference with standard errors clustered by unit: a user's clicks on the items
    # of one session (and across sessions) are not independent, and the per-item interval
    # above is too narrow when units see many items.
    diff_ci_clustered: tuple[float, float] | None = None
    p_value_clustered: float | None = None
    lift: float | None = None  # diff / control CTR
    always_valid_p: float | None = None  # mSPRT: safe to read at any time
    log_loss: float | None = None
    auc: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    embedding_bytes: int | None = None  # in the trainer (values, optimizer state, index)
    redis_embedding_bytes: int | None = None
    model_version: int | None = None


@dataclass
class ExperimentReport:
    experiment_id: int
    name: str
    status: str
    phase: int
    arms: list[ArmStats]
    srm_chi2: float | None
    srm_p_value: float | None
    srm_flag: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------
# statistics on counts (pure functions)
# ------------------------------------------------------------------------------------------


def ctr_interval(clicks: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a click-through rate (statsmodels)."""
    if n == 0:
        return (0.0, 1.0)
    lo, hi = proportion_confint(clicks, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def difference(c1: int, n1: int, c0: int, n0: int,
               alpha: float = 0.05) -> tuple[float, tuple[float, float], float]:
    """Treatment minus control CTR: (diff, Wald CI, two-sided p-value), statsmodels'
    confint_proportions_2indep / test_proportions_2indep."""
    diff = c1 / n1 - c0 / n0
    lo, hi = confint_proportions_2indep(c1, n1, c0, n0, method="wald", compare="diff",
                                        alpha=alpha)
    res = test_proportions_2indep(c1, n1, c0, n0, method="wald", compare="diff")
    p = float(res.pvalue) if np.isfinite(res.pvalue) else 1.0
    return float(diff), (float(lo), float(hi)), p


def clustered_difference(clicked: np.ndarray, treated: np.ndarray, units: np.ndarray,
                         alpha: float = 0.05) -> tuple[float, tuple[float, float], float]:
    """Treatment minus control CTR with unit-clustered standard errors: OLS of clicked on a
    treatment indicator, cluster-robust covariance by unit (statsmodels). bool[N] clicked,
    bool[N] treated, [N] unit ids -> (diff, CI, two-sided p-value)."""
    y = np.asarray(clicked, dtype=np.float64)
    X = sm.add_constant(np.asarray(treated, dtype=np.float64), has_constant="add")
    groups = pd.factorize(pd.Series(units))[0]
    fit = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups})
    lo, hi = fit.conf_int(alpha=alpha)[1]
    p = float(fit.pvalues[1]) if np.isfinite(fit.pvalues[1]) else 1.0
    return float(fit.params[1]), (float(lo), float(hi)), p


def msprt_p_values(c1: np.ndarray, n1: np.ndarray, c0: np.ndarray, n0: np.ndarray,
                   tau: float = DEFAULT_TAU, var: np.ndarray | None = None) -> np.ndarray:
    """Always-valid p-values of the mixture SPRT (Johari et al., "Always Valid Inference",
    2017) for a difference of two proportions, at each of T looks: c/n int[T] cumulative counts.

    With the normal approximation d ~ N(theta, V), V = p1 q1 / n1 + p0 q0 / n0, and a
    N(0, tau^2) mixture over theta, the likelihood ratio is N(d; 0, V + tau^2) / N(d; 0, V)
    (scipy densities); p_t = min(p_{t-1}, 1 / Lambda_t), so p only falls and may be read at
    any look without inflating the false-positive rate.

    `var` float[T], if given, is V at each look in place of the binomial one: the report passes
    the unit-clustered variance (`clustered_ctr_variance_at`), since the binomial V treats a
    user's many items as independent and then rejects far too often."""
    c1, n1, c0, n0 = (np.asarray(a, np.float64) for a in (c1, n1, c0, n0))
    ok = (n1 > 0) & (n0 > 0)
    p1 = np.divide(c1, n1, out=np.zeros_like(c1), where=ok)
    p0 = np.divide(c0, n0, out=np.zeros_like(c0), where=ok)
    if var is None:
        var = (np.divide(p1 * (1 - p1), n1, out=np.zeros_like(p1), where=ok)
               + np.divide(p0 * (1 - p0), n0, out=np.zeros_like(p0), where=ok))
    var = np.asarray(var, np.float64)
    ok &= var > 0
    var = np.where(ok, var, 1.0)
    d = p1 - p0
    log_lr = (stats.norm.logpdf(d, scale=np.sqrt(var + tau**2))
              - stats.norm.logpdf(d, scale=np.sqrt(var)))
    p = np.where(ok, np.minimum(1.0, np.exp(-log_lr)), 1.0)
    return np.minimum.accumulate(p)


def srm_test(observed: list[int], weights: list[float]) -> tuple[float, float]:
    """Sample-ratio mismatch: Pearson chi-square of units per arm against the weights
    (scipy.stats.chisquare) -> (statistic, p-value). Arms of weight 0 are left out."""
    obs = np.asarray(observed, np.float64)
    w = np.asarray(weights, np.float64)
    keep = w > 0
    obs, w = obs[keep], w[keep]
    if len(obs) < 2 or obs.sum() == 0:
        return 0.0, 1.0
    expected = obs.sum() * w / w.sum()
    chi2, p = stats.chisquare(obs, expected)
    return float(chi2), float(p)


def prediction_quality(clicked: np.ndarray, scores: np.ndarray) -> tuple[float | None,
                                                                         float | None]:
    """(log loss, AUC) of served scores against clicks (scikit-learn); None when undefined."""
    if len(clicked) == 0:
        return None, None
    p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(clicked, np.int64)
    ll = float(log_loss(y, p, labels=[0, 1]))
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None
    return ll, auc


def cumulative_at(ts: np.ndarray, clicked: np.ndarray,
                  grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (exposures, clicks) at each time of `grid`: int[T] each. ts float[N] need
    not be sorted."""
    order = np.argsort(ts, kind="stable")
    ts, clicked = np.asarray(ts)[order], np.asarray(clicked, np.int64)[order]
    idx = np.searchsorted(ts, grid, side="right")
    cum = np.concatenate([[0], np.cumsum(clicked)])
    return idx, cum[idx]


def clustered_ctr_variance_at(ts: np.ndarray, clicked: np.ndarray, units: np.ndarray,
                              grid: np.ndarray) -> np.ndarray:
    """Variance of one arm's CTR (clicks / exposures) at each time of `grid`, clustered by
    unit, and never below the binomial p q / n: float[T]. ts float[N], clicked bool[N],
    units [N].

    The CTR is a ratio of per-unit sums, C / N = sum_u c_u / sum_u n_u; its cluster-robust
    (delta-method) variance is G / (G - 1) * sum_u (c_u - p n_u)^2 / N^2 over the G units seen
    so far. The sum is kept as sum c^2 - 2 p sum c n + p^2 sum n^2, whose three sums grow
    row by row in time order, so every look costs one vectorised pass."""
    order = np.argsort(np.asarray(ts), kind="stable")
    y = np.asarray(clicked, np.float64)[order]
    codes = pd.factorize(pd.Series(np.asarray(units)[order]))[0]
    frame = pd.DataFrame({"u": codes, "y": y})
    n_prev = frame.groupby("u").cumcount().to_numpy(np.float64)
    c_prev = frame.groupby("u")["y"].cumsum().to_numpy() - y
    zero = np.zeros(1)
    sum_nn = np.concatenate([zero, np.cumsum(2 * n_prev + 1)])
    sum_cn = np.concatenate([zero, np.cumsum(c_prev + y * (n_prev + 1))])
    sum_cc = np.concatenate([zero, np.cumsum(y * (2 * c_prev + 1))])
    groups = np.concatenate([zero, np.cumsum(n_prev == 0)])
    clicks = np.concatenate([zero, np.cumsum(y)])
    idx = np.searchsorted(np.asarray(ts)[order], grid, side="right")
    n, c, g = idx.astype(np.float64), clicks[idx], groups[idx]
    ok = (n > 0) & (g > 1)
    p = np.divide(c, n, out=np.zeros_like(c), where=n > 0)
    spread = sum_cc[idx] - 2 * p * sum_cn[idx] + p * p * sum_nn[idx]
    clustered = np.divide(spread * g, (g - 1) * n * n, out=np.zeros_like(n), where=ok)
    binomial = np.divide(p * (1 - p), n, out=np.zeros_like(n), where=n > 0)
    return np.maximum(clustered, binomial)


# ------------------------------------------------------------------------------------------
# from the database
# ------------------------------------------------------------------------------------------


def phase_frames(session: Session, experiment_id: int,
                 phase: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exposures, outcomes) of one phase as DataFrames: exposures[request_id, arm_id, unit_id,
    ts, latency_ms, model_version]; outcomes[request_id, arm_id, unit_id, score, clicked, ts].

    Each outcome carries its exposure's unit from the same query: the joiner may commit rows
    between the two queries, so an outcome's exposure need not be in `exposures`."""
    ex = session.execute(
        select(Exposure.request_id, Exposure.arm_id, Exposure.unit_id, Exposure.ts,
               Exposure.latency_ms, Exposure.model_version)
        .where(Exposure.experiment_id == experiment_id, Exposure.phase == phase)).all()
    exposures = pd.DataFrame(ex, columns=["request_id", "arm_id", "unit_id", "ts",
                                          "latency_ms", "model_version"])
    oc = session.execute(
        select(Outcome.request_id, Exposure.arm_id, Exposure.unit_id, Outcome.score,
               Outcome.clicked, Outcome.ts)
        .join(Exposure, Exposure.request_id == Outcome.request_id)
        .where(Exposure.experiment_id == experiment_id, Exposure.phase == phase)).all()
    outcomes = pd.DataFrame(oc, columns=["request_id", "arm_id", "unit_id", "score", "clicked",
                                         "ts"])
    outcomes["clicked"] = outcomes["clicked"].astype(bool)
    return exposures, outcomes


def phase_weights(session: Session, experiment_id: int, phase: int) -> dict[int, float]:
    """arm id -> weight in `phase`."""
    rows = session.execute(
        select(ArmWeight.arm_id, ArmWeight.weight).join(ExperimentPhase)
        .where(ExperimentPhase.experiment_id == experiment_id,
               ExperimentPhase.phase == phase)).all()
    return {int(a): float(w) for a, w in rows}


def latest_versions(session: Session, model_names: list[str]) -> dict[str, ModelVersionRow]:
    """The newest recorded version of each model that has one."""
    newest = (select(ModelVersionRow.model_id, func.max(ModelVersionRow.version).label("v"))
              .group_by(ModelVersionRow.model_id).subquery())
    rows = session.execute(
        select(Model.name, ModelVersionRow)
        .join(ModelVersionRow, ModelVersionRow.model_id == Model.id)
        .join(newest, (newest.c.model_id == ModelVersionRow.model_id)
              & (newest.c.v == ModelVersionRow.version))
        .where(Model.name.in_(model_names))).all()
    return {name: row for name, row in rows}


def experiment_report(session: Session, experiment_id: int, phase: int | None = None,
                      tau: float = DEFAULT_TAU, looks: int = 50) -> ExperimentReport:
    """The report of one phase (default: the current one). Raises LookupError for an unknown
    experiment."""
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise LookupError(f"experiment {experiment_id} not found")
    phase = exp.phase if phase is None else phase
    arms: list[Arm] = list(exp.arms)
    weights = phase_weights(session, experiment_id, phase)
    exposures, outcomes = phase_frames(session, experiment_id, phase)
    versions = latest_versions(session, [a.model_name for a in arms])
    control = next((a for a in arms if a.is_control), arms[0] if arms else None)
    notes: list[str] = []

    t_end = float(outcomes["ts"].max()) if len(outcomes) else 0.0
    t_start = float(outcomes["ts"].min()) if len(outcomes) else 0.0
    grid = np.linspace(t_start, t_end, max(2, looks))
    cum: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    var_at: dict[int, np.ndarray] = {}
    out: list[ArmStats] = []
    for arm in arms:
        ex = exposures[exposures["arm_id"] == arm.id]
        oc = outcomes[outcomes["arm_id"] == arm.id]
        n, c = len(oc), int(oc["clicked"].sum())
        lat = ex["latency_ms"].to_numpy(np.float64)
        ll, auc = prediction_quality(oc["clicked"].to_numpy(), oc["score"].to_numpy())
        ver = versions.get(arm.model_name)
        out.append(ArmStats(
            arm=arm.name, model=arm.model_name, is_control=arm is control,
            weight=weights.get(arm.id, 0.0), units=int(ex["unit_id"].nunique()),
            requests=len(ex), exposures=n, clicks=c, ctr=c / n if n else 0.0,
            ctr_ci=ctr_interval(c, n), log_loss=ll, auc=auc,
            latency_p50_ms=float(np.percentile(lat, 50)) if len(lat) else None,
            latency_p99_ms=float(np.percentile(lat, 99)) if len(lat) else None,
            embedding_bytes=int(ver.embedding_bytes) if ver else None,
            redis_embedding_bytes=int(ver.redis_embedding_bytes) if ver else None,
            model_version=int(ver.version) if ver else None))
        cum[arm.id] = cumulative_at(oc["ts"].to_numpy(), oc["clicked"].to_numpy(), grid)
        var_at[arm.id] = clustered_ctr_variance_at(oc["ts"].to_numpy(), oc["clicked"].to_numpy(),
                                                   oc["unit_id"].to_numpy(), grid)

    base = next((s for s in out if s.is_control), None)
    if base is not None and base.exposures > 0:
        n0, c0 = cum[control.id]  # type: ignore[union-attr]
        for arm, s in zip(arms, out, strict=True):
            if s.is_control or s.exposures == 0:
                continue
            s.diff, s.diff_ci, s.p_value = difference(s.clicks, s.exposures, base.clicks,
                                                      base.exposures)
            s.lift = s.diff / base.ctr if base.ctr > 0 else None
            pair = outcomes[outcomes["arm_id"].isin([arm.id, control.id])]  # type: ignore[union-attr]
            units = pair["unit_id"]
            if units.nunique() > 2:
                _, s.diff_ci_clustered, s.p_value_clustered = clustered_difference(
                    pair["clicked"].to_numpy(), (pair["arm_id"] == arm.id).to_numpy(),
                    units.to_numpy())
            n1, c1 = cum[arm.id]
            var = var_at[arm.id] + var_at[control.id]  # type: ignore[union-attr]
            s.always_valid_p = float(msprt_p_values(c1, n1, c0, n0, tau=tau, var=var)[-1])
    else:
        notes.append("no exposures in the control arm yet: no differences")

    chi2, p_srm = srm_test([s.units for s in out], [s.weight for s in out])
    flag = p_srm < SRM_ALPHA
    if flag:
        notes.append(f"sample ratio mismatch (p = {p_srm:.2e} < {SRM_ALPHA}): do not trust "
                     "the differences until the assignment or logging is fixed")
    return ExperimentReport(experiment_id=exp.id, name=exp.name, status=exp.status,
                            phase=phase, arms=out, srm_chi2=chi2, srm_p_value=p_srm,
                            srm_flag=flag, notes=notes)


def format_report(report: ExperimentReport) -> str:
    """A plain-text verdict table (what `chunkrec report` prints)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    lines = [f"experiment {report.experiment_id} {report.name!r} ({report.status}), "
             f"phase {report.phase}",
             f"{'arm':<14}{'units':>7}{'expos':>8}{'clicks':>7}{'CTR [95% CI]':>24}"
             f"{'diff [95% CI]':>26}{'p':>8}{'mSPRT p':>9}{'AUC':>7}{'p99 ms':>8}"
             f"{'emb MB':>8}"]
    for s in report.arms:
        ci = f"{pct(s.ctr)} [{pct(s.ctr_ci[0])},{pct(s.ctr_ci[1])}]"
        diff = ("control" if s.is_control else "-" if s.diff is None
                else f"{pct(s.diff)} [{pct(s.diff_ci[0])},{pct(s.diff_ci[1])}]")  # type: ignore[index]
        p = "-" if s.p_value is None else f"{s.p_value:.3g}"
        avp = "-" if s.always_valid_p is None else f"{s.always_valid_p:.3g}"
        auc = "-" if s.auc is None else f"{s.auc:.3f}"
        p99 = "-" if s.latency_p99_ms is None else f"{s.latency_p99_ms:.1f}"
        mb = "-" if s.embedding_bytes is None else f"{s.embedding_bytes / 1e6:.2f}"
        lines.append(f"{s.arm:<14}{s.units:>7}{s.exposures:>8}{s.clicks:>7}{ci:>24}{diff:>26}"
                     f"{p:>8}{avp:>9}{auc:>7}{p99:>8}{mb:>8}")
    srm = "FLAG" if report.srm_flag else "ok"
    lines.append(f"SRM chi2 = {report.srm_chi2:.2f}, p = {report.srm_p_value:.3g} ({srm})")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)
