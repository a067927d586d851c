"""Decision rules and the verdict: ship, do not ship, keep running.

    rules = DecisionRules.from_dict(exp.decision_rules)    # or DEFAULT_RULES
    tests, verdicts, overall = decide(rules, arms, srm_flag)

A rule names a metric, which direction is better, a test and a relative margin:

    primary    ctr, higher is better, non-inferiority: the arm's CTR >= (1 - margin) control's;
               or superiority: > control's (its margin is the lift the sample size plans for)
    guardrails non-inferiority, each with its own margin:
               log_loss      served predictions' log loss <= (1 + margin) control's
               latency_p99   the arm's p99 latency <= (1 + margin) control's p99, tested as "at
                             most 1% of the arm's requests are slower than (1 + margin) x the
                             control's p99" (control's p99 taken as known)
               error_rate    the share of requests the arm failed (serving's 502 / 503) at
                             most control's + margin: an absolute margin (0.01 = one
                             percentage point), since control's rate is often 0
    cost       reported beside, never tested: embedding bytes (trainer), Redis record bytes

Every test is unit-clustered and always valid (inference.anytime_test over the report's
looks), so the verdict may be read at any time. A test *passes* when its anytime lower bound
shows the arm acceptable, *fails* when its anytime upper bound shows it unacceptable, and is
undecided otherwise. An arm ships when every test passes, does not ship when any fails, and
keeps running otherwise.

Error control. Shipping an arm is an intersection-union test (every test must pass), which
holds its level without splitting alpha over the guardrails (Berger 1982); over the k
treatment arms alpha is split (Bonferroni): each pass test runs at alpha / k. "Do not ship"
is a union of claims (any failing test), so the fail tests run at alpha / (k x tests per arm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from services.experiments import inference

METRICS = {"ctr": "increase", "log_loss": "decrease", "latency_p99": "decrease",
           "error_rate": "decrease"}
ABSOLUTE = ("error_rate",)  # metrics whose margin is absolute, not relative
COST_METRICS = ("embedding_bytes", "redis_embedding_bytes")
TESTS = ("non_inferiority", "superiority")
SLOW_SHARE = 0.01  # latency_p99: the share of requests allowed above the limit
VERDICTS = ("ship", "do not ship", "keep running")


@dataclass(frozen=True)
class MetricRule:
    metric: str
    margin: float  # relative, > 0
    test: str = "non_inferiority"
    direction: str = ""  # "increase" | "decrease": which way is better (default: the metric's)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: one of {sorted(METRICS)}")
        if self.test not in TESTS:
            raise ValueError(f"test {self.test!r}: one of {list(TESTS)}")
        if not (0 < self.margin < 1):
            raise ValueError(f"{self.metric}: margin {self.margin!r} must be in (0, 1) "
                             "(relative: 0.01 = 1%)")
        direction = self.direction or METRICS[self.metric]
        if direction not in ("increase", "decrease"):
            raise ValueError(f"{self.metric}: direction {direction!r}: increase or decrease")
        if self.metric in ("latency_p99", "error_rate") and direction != "decrease":
            raise ValueError(f"{self.metric}: lower is better (direction decrease)")
        if self.metric == "error_rate" and self.test != "non_inferiority":
            raise ValueError("error_rate: a non-inferiority test (a guardrail)")
        object.__setattr__(self, "direction", direction)

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "increase"

    @property
    def tolerance(self) -> float:
        """inference.contrast_weights' tolerance: the margin for non-inferiority, 0 for
        superiority."""
        return self.margin if self.test == "non_inferiority" else 0.0


@dataclass(frozen=True)
class DecisionRules:
    primary: MetricRule
    guardrails: tuple[MetricRule, ...] = ()
    cost: tuple[str, ...] = COST_METRICS
    alpha: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5) or not (0.5 <= self.power < 1):
            raise ValueError("alpha must be in (0, 0.5) and power in [0.5, 1)")
        names = [g.metric for g in self.guardrails]
        if len(set(names)) != len(names) or self.primary.metric in names:
            raise ValueError("each metric at most once (primary and guardrails)")
        if any(g.test != "non_inferiority" for g in self.guardrails):
            raise ValueError("guardrails are non-inferiority tests")
        if any(c not in COST_METRICS for c in self.cost):
            raise ValueError(f"cost metrics: of {list(COST_METRICS)}")

    @classmethod
    def from_dict(cls, d: dict) -> DecisionRules:
        return cls(primary=MetricRule(**d["primary"]),
                   guardrails=tuple(MetricRule(**g) for g in d.get("guardrails", [])),
                   cost=tuple(d.get("cost", COST_METRICS)), alpha=float(d.get("alpha", 0.05)),
                   power=float(d.get("power", 0.8)))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def rules(self) -> tuple[MetricRule, ...]:
        return (self.primary, *self.guardrails)


DEFAULT_RULES = DecisionRules(
    primary=MetricRule("ctr", 0.01),
    guardrails=(MetricRule("log_loss", 0.02), MetricRule("latency_p99", 0.25),
                MetricRule("error_rate", 0.01)))


@dataclass
class ArmData:
    """What the decision needs of one arm: cumulative moments at every look (inference
    .MOMENTS, float[L, M]) of each tested metric, its latency p99 and its cost figures."""

    name: str
    is_control: bool
    weight: float
    moments: dict[str, np.ndarray]  # "ctr" (with covariate if cuped), "log_loss", "slow",
    # "error_rate" (failed requests per request)
    p99_ms: float | None = None
    cost: dict[str, float | None] = field(default_factory=dict)


@dataclass
class MetricTest:
    """One row of the decision table: an arm's metric against control's."""

    arm: str
    metric: str
    role: str  # primary | guardrail
    test: str
    direction: str
    margin: float
    alpha: float  # the level the pass test ran at (fail: alpha_fail)
    alpha_fail: float
    control: float | None  # the metric's value (ctr, log_loss: at the pooled covariate mean;
    treatment: float | None  # latency_p99: the share of requests above the limit)
    change: float | None  # relative change (latency_p99: that share)
    lower: float | None  # anytime bounds of `change`, valid at every look at once
    upper: float | None
    limit: float  # where `change` must stay: -margin / +margin / 0 / SLOW_SHARE
    p_pass: float | None
    p_fail: float | None
    result: str  # pass | fail | undecided
    units_needed: float | None = None  # per arm, for `power` (primary only)


@dataclass
class ArmVerdict:
    arm: str
    verdict: str
    reason: str
    more_users: int | None = None  # about this many more users (the experiment's) to decide


def ratio_bounds(m0: np.ndarray, m1: np.ndarray, rule: MetricRule, alpha: float,
                 covariate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                           inference.AnytimeTest]:
    """The anytime test of a ratio metric's rule, vectorised: m0, m1 float[..., L, M] the two
    arms' cumulative moments at L looks -> (control, treatment) values at the last look
    float[...], the contrast's variance at every look float[..., L], and the test at level
    alpha (its `lower` > 0: pass). The mixing scale tau is the contrast's value at equality
    (margin x control), from the last look."""
    fit = inference.fit_arms(m0, m1, covariate=covariate)
    est, var = inference.contrast(fit, rule.higher_is_better, rule.tolerance)
    c0, c1 = fit.means[..., -1, 0], fit.means[..., -1, 1]
    tau = np.where(np.isfinite(c0) & (c0 > 0), rule.margin * np.abs(c0), 1.0)
    return c0, c1, var, inference.anytime_test(est, var, tau, alpha)


def metric_test(rule: MetricRule, ctrl: ArmData, arm: ArmData, alpha: float,
                alpha_fail: float, power: float, covariate: bool) -> MetricTest:
    """The anytime pass/fail test of one rule for one arm (see module docstring)."""
    key = "slow" if rule.metric == "latency_p99" else rule.metric
    m0, m1 = ctrl.moments.get(key), arm.moments.get(key)
    base = dict(arm=arm.name, metric=rule.metric, test=rule.test, direction=rule.direction,
                margin=rule.margin, alpha=alpha, alpha_fail=alpha_fail)
    empty = MetricTest(**base, role="", control=None, treatment=None, change=None, lower=None,
                       upper=None, limit=0.0, p_pass=None, p_fail=None, result="undecided")
    if m0 is None or m1 is None:
        return empty
    if rule.metric == "error_rate":
        return error_rate_test(rule, m0, m1, alpha, alpha_fail, base, empty)
    if rule.metric == "latency_p99":
        fit = inference.fit_arms(m0, m1)
        c0, c1 = fit.means[..., 0], fit.means[..., 1]
        if not (np.isfinite(c0[-1]) and np.isfinite(c1[-1])):
            return empty  # an arm with fewer than 2 units: no clustered share yet (and a NaN
            # in the report would make its JSON invalid: the endpoint answered 500)
        # at least the variance at the null's edge (a share of exactly SLOW_SHARE over the
        # arm's requests): an arm without one slow request has no clustered spread at all
        requests = m1[..., inference.M["n"]]
        edge = np.divide(SLOW_SHARE * (1 - SLOW_SHARE), requests,
                         out=np.full_like(requests, np.nan), where=requests > 0)
        est, var = SLOW_SHARE - c1, np.fmax(fit.cov[..., 1, 1], edge)
        tau = max(SLOW_SHARE - float(c0[-1]), 1e-3) if np.isfinite(c0[-1]) else SLOW_SHARE
        t = inference.anytime_test(est, var, tau, alpha)
        tf = inference.anytime_test(est, var, tau, alpha_fail)
        lower, upper = SLOW_SHARE - float(tf.upper), SLOW_SHARE - float(t.lower)
        control, treated, change, limit = float(c0[-1]), float(c1[-1]), float(c1[-1]), SLOW_SHARE
        units = None
    else:
        cov = covariate and rule.metric == "ctr"
        c0, c1, var, t = ratio_bounds(m0, m1, rule, alpha, cov)
        tf = ratio_bounds(m0, m1, rule, alpha_fail, cov)[3]
        control, treated = float(c0), float(c1)
        if not np.isfinite(control) or control <= 0:
            return empty
        effect = rule.margin * control  # the contrast's value at equality (NI) / planned lift
        change = treated / control - 1
        shift = rule.tolerance  # contrast / control = +-change + tolerance
        if rule.higher_is_better:
            lower, upper = float(t.lower) / control - shift, float(tf.upper) / control - shift
            limit = -shift
        else:
            lower, upper = shift - float(tf.upper) / control, shift - float(t.lower) / control
            limit = shift
        g0, g1 = m0[-1, inference.M["units"]], m1[-1, inference.M["units"]]
        units = None
        if np.isfinite(var[-1]) and var[-1] > 0 and g0 > 0 and g1 > 0:
            unit_var = float(var[-1]) * 2 / (1 / g0 + 1 / g1)
            units = inference.sequential_sample_size(unit_var, effect, effect, alpha, power)
    passed, failed = float(t.lower) > 0, float(tf.upper) < 0
    p_pass, p_fail = float(t.p_pass), float(tf.p_fail)
    result = "pass" if passed else "fail" if failed else "undecided"
    return MetricTest(**base, role="", control=control, treatment=treated,
                      change=change, lower=None if not np.isfinite(lower) else lower,
                      upper=None if not np.isfinite(upper) else upper, limit=limit,
                      p_pass=p_pass, p_fail=p_fail, result=result, units_needed=units)


def error_rate_test(rule: MetricRule, m0: np.ndarray, m1: np.ndarray, alpha: float,
                    alpha_fail: float, base: dict, empty: MetricTest) -> MetricTest:
    """The error-rate guardrail: change = the arm's share of failed requests minus
    control's, acceptable up to +margin (absolute). Unit-clustered like every test; the
    variance is at least the binomial one at the null's edge (the arm failing a `margin`
    share of its requests), since two arms without a single error have no spread at all."""
    fit = inference.fit_arms(m0, m1)
    c0, c1 = fit.means[..., 0], fit.means[..., 1]
    if not (np.isfinite(c0[-1]) and np.isfinite(c1[-1])):
        return empty
    requests = m1[..., inference.M["n"]]
    edge = np.divide(rule.margin * (1 - rule.margin), requests,
                     out=np.full_like(requests, np.nan), where=requests > 0)
    est = rule.margin - (c1 - c0)  # > 0: acceptable
    var = np.fmax(fit.cov[..., 0, 0] + fit.cov[..., 1, 1], edge)
    t = inference.anytime_test(est, var, rule.margin, alpha)
    tf = inference.anytime_test(est, var, rule.margin, alpha_fail)
    lower, upper = rule.margin - float(tf.upper), rule.margin - float(t.lower)
    passed, failed = float(t.lower) > 0, float(tf.upper) < 0
    return MetricTest(**base, role="", control=float(c0[-1]), treatment=float(c1[-1]),
                      change=float(c1[-1] - c0[-1]),
                      lower=lower if np.isfinite(lower) else None,
                      upper=upper if np.isfinite(upper) else None, limit=rule.margin,
                      p_pass=float(t.p_pass), p_fail=float(tf.p_fail),
                      result="pass" if passed else "fail" if failed else "undecided")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}%"


def arm_verdict(tests: list[MetricTest], arm: ArmData, ctrl: ArmData, srm_flag: bool,
                total_units: float, total_weight: float) -> ArmVerdict:
    """The verdict of one arm from its rows of the decision table alone."""
    if srm_flag:
        return ArmVerdict(arm.name, "keep running", "sample-ratio mismatch: fix the "
                          "assignment or the logging first; these data decide nothing")
    failed = [t for t in tests if t.result == "fail"]
    if failed:
        t = failed[0]
        side = "below" if t.direction == "increase" else "above"
        return ArmVerdict(arm.name, "do not ship",
                          f"{t.metric} is worse than the margin allows: anytime bound "
                          f"{_pct(t.upper if side == 'below' else t.lower)} {side} "
                          f"{_pct(t.limit)}")
    if all(t.result == "pass" for t in tests):
        p = tests[0]
        cost = ", ".join(f"{k.replace('_', ' ')} {100 * v / c:.0f}% of control's"
                         for k, v in arm.cost.items()
                         if v is not None and (c := ctrl.cost.get(k)))
        return ArmVerdict(arm.name, "ship",
                          f"{p.metric} {p.test.replace('_', '-')} shown (anytime bound "
                          f"{_pct(p.lower if p.direction == 'increase' else p.upper)} vs "
                          f"{_pct(p.limit)}), {len(tests) - 1} guardrail(s) hold"
                          + (f"; {cost}" if cost else ""))
    open_ = [t.metric for t in tests if t.result == "undecided"]
    more = None
    need = tests[0].units_needed
    if need is not None and min(arm.weight, ctrl.weight) > 0:
        more = max(0, int(np.ceil(need * total_weight / min(arm.weight, ctrl.weight)
                                  - total_units)))
    reason = f"undecided: {', '.join(open_)}"
    if more is not None:
        reason += (f"; about {more:,} more users for {tests[0].metric} at "
                   f"{100 * (1 - tests[0].alpha):.1f}% confidence and the planned power")
    return ArmVerdict(arm.name, "keep running", reason, more)


def decide(rules: DecisionRules, arms: list[ArmData], srm_flag: bool, covariate: bool
           ) -> tuple[list[MetricTest], list[ArmVerdict], ArmVerdict]:
    """(decision table rows, a verdict per treatment arm, the overall verdict)."""
    ctrl = next(a for a in arms if a.is_control)
    treated = [a for a in arms if not a.is_control]
    k = max(1, len(treated))
    alpha = rules.alpha / k
    alpha_fail = rules.alpha / (k * len(rules.rules))
    total_units = sum(float(a.moments["ctr"][-1, inference.M["units"]])
                      for a in arms if "ctr" in a.moments)
    total_weight = sum(a.weight for a in arms)
    rows: list[MetricTest] = []
    verdicts: list[ArmVerdict] = []
    for arm in treated:
        tests = []
        for role, rule in [("primary", rules.primary)] + [("guardrail", g)
                                                          for g in rules.guardrails]:
            t = metric_test(rule, ctrl, arm, alpha, alpha_fail, rules.power, covariate)
            t.role = role
            tests.append(t)
        rows.extend(tests)
        verdicts.append(arm_verdict(tests, arm, ctrl, srm_flag, total_units, total_weight))
    return rows, verdicts, overall_verdict(verdicts)


def overall_verdict(verdicts: list[ArmVerdict]) -> ArmVerdict:
    ship = [v for v in verdicts if v.verdict == "ship"]
    if ship:
        return ArmVerdict(", ".join(v.arm for v in ship), "ship",
                          "; ".join(f"{v.arm}: {v.reason}" for v in ship))
    if verdicts and all(v.verdict == "do not ship" for v in verdicts):
        return ArmVerdict("", "do not ship", "; ".join(f"{v.arm}: {v.reason}" for v in verdicts))
    more = [v.more_users for v in verdicts if v.verdict == "keep running" and v.more_users]
    return ArmVerdict("", "keep running",
                      "; ".join(f"{v.arm}: {v.verdict} ({v.reason})" for v in verdicts),
                      max(more) if more else None)
