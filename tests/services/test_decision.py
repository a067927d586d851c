"""The verdict never contradicts its table: ship exactly when every row passes, do not ship
when a row fails, keep running otherwise; each row's result follows from its bounds and
limit. A clearly worse arm is not shipped, an equal one with enough users is."""

from __future__ import annotations

import numpy as np
import pytest

from services.experiments import inference
from services.experiments.decision import (
    DEFAULT_RULES,
    ArmData,
    DecisionRules,
    MetricRule,
    decide,
)


def arm(rng, name: str, control: bool, users: int, ctr: float, loss: float,
        slow: float, looks: int = 10, errors: float = 0.0) -> ArmData:
    n = rng.integers(1, 10, users).astype(float)
    c = rng.binomial(n.astype(int), ctr).astype(float)
    ll = n * loss * rng.uniform(0.8, 1.2, users)
    req = np.ceil(n / 3)
    s = rng.binomial(req.astype(int), slow).astype(float)
    err = rng.binomial(req.astype(int), errors).astype(float)
    x = rng.normal(0, 0.1, users)
    cum = lambda *a: np.cumsum(inference.moments_of(*[v.reshape(looks, -1) for v in a]), 0)  # noqa: E731
    return ArmData(name, control, 1.0, {"ctr": cum(n, c, x), "log_loss": cum(n, ll),
                                        "slow": cum(req, s), "error_rate": cum(req, err)},
                   cost={"embedding_bytes": 1000.0 if control else 250.0,
                         "redis_embedding_bytes": None})


@pytest.mark.parametrize("seed", range(12))
def test_verdict_follows_the_table(seed) -> None:
    rng = np.random.default_rng(seed)
    users = int(rng.choice([200, 2000, 20000]))
    arms = [arm(rng, "ctl", True, users, 0.3, 0.6, 0.005)]
    for k in range(2):
        arms.append(arm(rng, f"a{k}", False, users, 0.3 * rng.uniform(0.9, 1.05),
                        0.6 * rng.uniform(0.95, 1.1), rng.choice([0.001, 0.005, 0.03])))
    rows, verdicts, overall = decide(DEFAULT_RULES, arms, srm_flag=False, covariate=True)
    assert len(rows) == 2 * 4
    for t in rows:
        if t.result == "pass":
            assert (t.lower > t.limit) if t.direction == "increase" else (t.upper < t.limit)
        if t.result == "fail":
            assert (t.upper < t.limit) if t.direction == "increase" else (t.lower > t.limit)
    for v in verdicts:
        mine = [t.result for t in rows if t.arm == v.arm]
        want = ("ship" if all(r == "pass" for r in mine) else
                "do not ship" if "fail" in mine else "keep running")
        assert v.verdict == want, (v, mine)
    shipped = [v.arm for v in verdicts if v.verdict == "ship"]
    assert overall.verdict == ("ship" if shipped else "do not ship" if all(
        v.verdict == "do not ship" for v in verdicts) else "keep running")
    # Bonferroni: 2 arms -> ship tests at 0.025, fail tests at 0.05 / (2 x 4)
    assert rows[0].alpha == pytest.approx(0.025) and rows[0].alpha_fail == pytest.approx(0.05 / 8)


def test_clear_cases_and_srm() -> None:
    rng = np.random.default_rng(0)
    rules = DecisionRules(primary=MetricRule("ctr", 0.05))
    ctl = arm(rng, "ctl", True, 40000, 0.3, 0.6, 0.005)
    worse = arm(rng, "worse", False, 40000, 0.3 * 0.85, 0.6, 0.005)
    same = arm(rng, "same", False, 40000, 0.3, 0.6, 0.005)
    rows, verdicts, overall = decide(rules, [ctl, worse, same], srm_flag=False, covariate=True)
    by = {v.arm: v for v in verdicts}
    assert by["worse"].verdict == "do not ship" and "ctr is worse" in by["worse"].reason
    assert by["same"].verdict == "ship" and "25% of control's" in by["same"].reason
    assert overall.verdict == "ship" and overall.arm == "same"
    _, verdicts, overall = decide(rules, [ctl, worse, same], srm_flag=True, covariate=True)
    assert {v.verdict for v in verdicts} == {"keep running"} and "sample-ratio" in \
        verdicts[0].reason
    few = arm(rng, "few", False, 300, 0.3, 0.6, 0.005)
    _, verdicts, overall = decide(rules, [arm(rng, "ctl", True, 300, 0.3, 0.6, 0.005), few],
                                  srm_flag=False, covariate=True)
    assert verdicts[0].verdict == "keep running" and verdicts[0].more_users > 0
    assert f"about {verdicts[0].more_users:,} more users" in verdicts[0].reason


def test_rules_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="margin"):
        MetricRule("ctr", 0.0)
    with pytest.raises(ValueError, match="at most once"):
        DecisionRules(primary=MetricRule("ctr", 0.01), guardrails=(MetricRule("ctr", 0.02),))
    assert DecisionRules.from_dict(DEFAULT_RULES.to_dict()) == DEFAULT_RULES


def test_error_rate_guardrail_has_an_absolute_margin() -> None:
    """Failed requests: control fails none; an arm failing 3% of its requests is beyond a
    1-point margin (do not ship, on the error rate), one failing 0.2% is within it, and two
    arms without a single failure pass on enough requests (the variance at the null's edge,
    not the zero spread of all-zero data)."""
    rng = np.random.default_rng(1)
    rules = DecisionRules(primary=MetricRule("ctr", 0.05),
                          guardrails=(MetricRule("error_rate", 0.01),))
    ctl = arm(rng, "ctl", True, 40000, 0.3, 0.6, 0.005)
    failing = arm(rng, "failing", False, 40000, 0.3, 0.6, 0.005, errors=0.03)
    rare = arm(rng, "rare", False, 40000, 0.3, 0.6, 0.005, errors=0.002)
    clean = arm(rng, "clean", False, 40000, 0.3, 0.6, 0.005)
    rows, verdicts, _ = decide(rules, [ctl, failing, rare, clean], srm_flag=False,
                               covariate=True)
    err = {t.arm: t for t in rows if t.metric == "error_rate"}
    assert err["failing"].result == "fail" and err["failing"].lower > 0.01
    assert err["failing"].change == pytest.approx(0.03, abs=0.005)
    assert err["rare"].result == "pass" and err["rare"].upper < 0.01
    assert err["clean"].result == "pass" and err["clean"].change == 0.0
    by = {v.arm: v for v in verdicts}
    assert by["failing"].verdict == "do not ship" and "error_rate" in by["failing"].reason
    assert by["clean"].verdict == "ship"
    with pytest.raises(ValueError, match="lower is better"):
        MetricRule("error_rate", 0.01, direction="increase")
