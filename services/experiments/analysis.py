"""The A/B report: per arm units, exposures, clicks and CTR with a 95% CI; the difference
against control with its CI (per item, unit-clustered, and unit-clustered with CUPED) and
p-values; an always-valid sequential test (mSPRT); a sample-ratio-mismatch check; log loss and
AUC of the served predictions; latency; embedding bytes; and the decision: the experiment's
rules (services/experiments/decision.py) tested on every arm, ending in ship, do not ship or
keep running, with the reason and the users still needed.

    report = experiment_report(session, experiment_id)          # current phase
    report.to_dict()                                            # what GET .../report returns

Scale: everything comes from per-arm sums the database computes (services/experiments/
aggregates.py: GROUP BY arm, unit, look), served-score and latency histograms; no row is
loaded. Units of analysis: an exposure is one shown item (an outcome row), a click is feedback
inside the attribution window. Items shown to the same unit are not independent, so the
per-item interval is too narrow when units see many items; the clustered ones (statsmodels'
cluster-robust OLS, computed from the sums: services/experiments/inference.py) are the ones
the tests use. SRM is checked on units. The report covers one phase (a weight layout): units
are re-bucketed per phase.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)

from services.experiments import aggregates, inference
from services.experiments.decision import (
    DEFAULT_RULES,
    ArmData,
    ArmVerdict,
    DecisionRules,
    MetricTest,
    decide,
)
from storage.db.models import ArmWeight, Experiment, ExperimentPhase, Model, ModelVersionRow

SRM_ALPHA = 0.001
DEFAULT_TAU = 0.02  # mSPRT mixing s.d. of the CTR difference (the effect size of interest)
LOOKS = 20  # time slices the sequential tests look at


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
    diff_ci: tuple[float, float] | None = None  # per item (Wald): too narrow, for reference
    p_value: float | None = None  # two-sided, fixed-horizon, per item
    # The same difference with standard errors clustered by unit: a user's clicks on the items
    # of one session (and across sessions) are not independent.
    diff_ci_clustered: tuple[float, float] | None = None
    p_value_clustered: float | None = None
    # ... and with CUPED (the unit's pre-experiment CTR as covariate): the same difference in
    # expectation, with the variance its pre-period explains removed
    diff_cuped: float | None = None
    diff_ci_cuped: tuple[float, float] | None = None
    variance_reduction: float | None = None  # 1 - var(CUPED) / var(clustered)
    lift: float | None = None  # diff / control CTR
    always_valid_p: float | None = None  # mSPRT, two-sided, clustered: safe at any time
    log_loss: float | None = None
    auc: float | None = None  # 1,000-bin score histogram (~1e-3); PostgreSQL: ~20k requests
    errors: int = 0  # requests the arm failed (serving's 502 / 503), counted in `requests`
    error_rate: float | None = None  # errors / requests
    latency_p50_ms: float | None = None  # from a 1%-wide log histogram
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
    rules: dict | None = None  # the decision rules used (DEFAULT_RULES when none are set)
    rules_default: bool = True
    cuped: bool = False  # whether a pre-period covariate was recorded
    tests: list[MetricTest] = field(default_factory=list)  # the decision table
    arm_verdicts: list[ArmVerdict] = field(default_factory=list)
    verdict: ArmVerdict | None = None
    # per arm: time of each look, cumulative items, clicks and AUC (the dashboard's series)
    looks: dict[str, dict[str, list]] = field(default_factory=dict)

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


# ------------------------------------------------------------------------------------------
# from the database
# ------------------------------------------------------------------------------------------


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



def _z_interval(est: float, var: float, alpha: float = 0.05) -> tuple[tuple[float, float], float]:
    """(normal CI, two-sided p) of an estimate with its variance (statsmodels' z-based
    conf_int and pvalues of a cluster-robust fit)."""
    se = float(np.sqrt(var))
    z = stats.norm.ppf(1 - alpha / 2)
    p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else 1.0
    return (est - z * se, est + z * se), p


def _rules(exp: Experiment, notes: list[str]) -> tuple[DecisionRules, bool]:
    if exp.decision_rules is None:
        return DEFAULT_RULES, True
    try:
        return DecisionRules.from_dict(exp.decision_rules), False
    except (KeyError, TypeError, ValueError) as exc:
        notes.append(f"stored decision rules unreadable ({exc}): the defaults decide")
        return DEFAULT_RULES, True


def experiment_report(session: Session, experiment_id: int, phase: int | None = None,
                      tau: float = DEFAULT_TAU, looks: int = LOOKS) -> ExperimentReport:
    """The report of one phase (default: the current one), decided by the experiment's rules.
    Raises LookupError for an unknown experiment."""
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise LookupError(f"experiment {experiment_id} not found")
    phase = exp.phase if phase is None else phase
    arms = list(exp.arms)
    notes: list[str] = []
    rules, default = _rules(exp, notes)
    weights = phase_weights(session, experiment_id, phase)
    versions = latest_versions(session, [a.model_name for a in arms])
    control = next((a for a in arms if a.is_control), arms[0] if arms else None)
    aggregates.tune_for_report(session)
    span = aggregates.phase_span(session, experiment_id, phase)
    pre = aggregates.pre_period_ctr(session, experiment_id)
    lat = aggregates.latency_histograms(session, experiment_id, phase)
    p99 = {a.id: aggregates.percentile_from_histogram(*lat[a.id], 99) if a.id in lat else None
           for a in arms}
    lat_rule = next((g for g in rules.guardrails if g.metric == "latency_p99"), None)
    slow_ms = None
    if lat_rule is not None and control is not None and p99[control.id] is not None:
        slow_ms = (1 + lat_rule.margin) * p99[control.id]
    lm = aggregates.look_moments(session, experiment_id, phase, span, looks, pre, slow_ms)
    look_hist = aggregates.score_histograms(session, experiment_id, phase, span, looks)
    empty = np.zeros((looks, len(inference.MOMENTS)))
    ctr_m = {a.id: lm.get(a.id, {}).get("ctr", empty) for a in arms}
    ll_m = {a.id: lm.get(a.id, {}).get("log_loss", empty) for a in arms}
    err_m = {a.id: lm.get(a.id, {}).get("error", empty) for a in arms}
    slow = {a.id: lm[a.id]["slow"] for a in arms if "slow" in lm.get(a.id, {})}
    M = inference.M
    out: list[ArmStats] = []
    series: dict[str, dict[str, list]] = {}
    t_look = span.t0 + (span.t1 - span.t0) * np.arange(1, looks + 1) / looks
    for arm in arms:
        end = ctr_m[arm.id][-1]
        n, c = int(round(end[M["n"]])), int(round(end[M["c"]]))
        cum_h = np.cumsum(look_hist.get(arm.id, np.zeros((looks, aggregates.SCORE_BINS, 2))),
                          axis=0)
        edges, counts = lat.get(arm.id, (np.zeros(0), np.zeros(0)))
        ver = versions.get(arm.model_name)
        reqs, errs = err_m[arm.id][-1, M["n"]], err_m[arm.id][-1, M["c"]]
        out.append(ArmStats(
            arm=arm.name, model=arm.model_name, is_control=arm is control,
            weight=weights.get(arm.id, 0.0), units=int(round(end[M["units"]])),
            requests=int(counts.sum()), exposures=n, clicks=c, ctr=c / n if n else 0.0,
            ctr_ci=ctr_interval(c, n),
            log_loss=float(ll_m[arm.id][-1, M["c"]] / n) if n else None,
            auc=aggregates.auc_from_histogram(cum_h[-1]),
            errors=int(round(errs)), error_rate=float(errs / reqs) if reqs else None,
            latency_p50_ms=aggregates.percentile_from_histogram(edges, counts, 50),
            latency_p99_ms=p99[arm.id],
            embedding_bytes=int(ver.embedding_bytes) if ver else None,
            redis_embedding_bytes=int(ver.redis_embedding_bytes) if ver else None,
            model_version=int(ver.version) if ver else None))
        series[arm.name] = {
            "t": (t_look - span.t0).tolist(), "items": ctr_m[arm.id][:, M["n"]].tolist(),
            "clicks": ctr_m[arm.id][:, M["c"]].tolist(),
            "auc": [aggregates.auc_from_histogram(x) for x in cum_h]}

    base = next((s for s in out if s.is_control), None)
    if base is not None and base.exposures > 0 and control is not None:
        m0 = ctr_m[control.id]
        for arm, s in zip(arms, out, strict=True):
            if s.is_control or s.exposures == 0:
                continue
            s.diff, s.diff_ci, s.p_value = difference(s.clicks, s.exposures, base.clicks,
                                                      base.exposures)
            s.lift = s.diff / base.ctr if base.ctr > 0 else None
            plain = inference.fit_arms(m0, ctr_m[arm.id])
            d_var = plain.cov[:, 0, 0] + plain.cov[:, 1, 1]
            if np.isfinite(d_var[-1]):
                s.diff_ci_clustered, s.p_value_clustered = _z_interval(s.diff, d_var[-1])
            if pre is not None:
                cup = inference.fit_arms(m0, ctr_m[arm.id], covariate=True)
                est, var = inference.contrast(cup, True, 0.0)
                if np.isfinite(var[-1]) and np.isfinite(d_var[-1]) and d_var[-1] > 0:
                    s.diff_cuped = float(est[-1])
                    s.diff_ci_cuped, _ = _z_interval(s.diff_cuped, float(var[-1]))
                    s.variance_reduction = 1 - float(var[-1]) / float(d_var[-1])
            s.always_valid_p = float(msprt_p_values(
                ctr_m[arm.id][:, M["c"]], ctr_m[arm.id][:, M["n"]], m0[:, M["c"]],
                m0[:, M["n"]], tau=tau, var=d_var)[-1])
    else:
        notes.append("no exposures in the control arm yet: no differences")

    chi2, p_srm = srm_test([s.units for s in out], [s.weight for s in out])
    flag = p_srm < SRM_ALPHA
    if flag:
        notes.append(f"sample ratio mismatch (p = {p_srm:.2e} < {SRM_ALPHA}): do not trust "
                     "the differences until the assignment or logging is fixed")
    report = ExperimentReport(experiment_id=exp.id, name=exp.name, status=exp.status,
                              phase=phase, arms=out, srm_chi2=chi2, srm_p_value=p_srm,
                              srm_flag=flag, notes=notes, rules=rules.to_dict(),
                              rules_default=default, cuped=pre is not None, looks=series)
    if control is not None and base is not None and base.exposures > 0 and len(arms) > 1:
        data = [ArmData(arm.name, arm is control, weights.get(arm.id, 0.0),
                        {"ctr": ctr_m[arm.id], "log_loss": ll_m[arm.id],
                         "error_rate": err_m[arm.id],
                         **({"slow": slow[arm.id]} if arm.id in slow else {})},
                        p99_ms=p99[arm.id],
                        cost={k: getattr(s, k) for k in rules.cost})
                for arm, s in zip(arms, out, strict=True)]
        report.tests, report.arm_verdicts, report.verdict = decide(rules, data, flag,
                                                                   covariate=pre is not None)
    else:
        report.verdict = ArmVerdict("", "keep running", "no exposures in the control arm yet")
    return report
