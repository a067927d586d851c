"""Leave-one-data-set-out (services/evaluation/holdout.py): the choice never looks at the
held-out set, and the table compares FIITED with the best fixed-dim table at <= its bytes."""

from __future__ import annotations

import math

import pytest

from services.evaluation.holdout import (
    best_fixed,
    candidate_specs,
    choose,
    fiited_spec,
    holdout_markdown,
    holdout_rows,
)
from services.evaluation.quality import run_quality_bench
from tests.services.test_quality_bench import planted  # noqa: F401 - the fixture


def test_the_choice_ignores_the_held_out_set_and_refuses_a_bad_worst_case() -> None:
    scores = {
        "": {"a": 0.000, "b": 0.000, "c": 0.000},
        "K=8": {"a": 0.010, "b": -0.009, "c": 0.050},  # best mean, but loses badly on b
        "gamma=0.9": {"a": 0.002, "b": 0.001, "c": -0.100},  # bad only on c
    }
    assert choose(scores, "c") == "gamma=0.9"  # c's -0.100 is not seen when c is held out
    assert choose(scores, "a") == ""  # K=8 loses 0.009 on b; gamma=0.9 loses 0.1 on c
    assert choose(scores, "b") == "K=8"  # without b, K=8 is best and safe
    # none safe: the best worst case
    assert choose({"x": {"a": -0.01, "b": -0.02}, "y": {"a": -0.003, "b": -0.005}}, "z") == "y"
    with pytest.raises(ValueError):  # x's only other score is missing
        choose({"x": {"a": math.nan, "b": 0.001}}, "b")


def test_holdout_rows_on_two_streams(planted: None) -> None:  # noqa: F811
    candidates, budgets = ["", "cost_power=0"], [0.5]
    specs = candidate_specs(candidates, budgets)
    assert specs[-2:] == ["fiited:budget=0.5", "fiited:budget=0.5,cost_power=0"]
    reports = {name: run_quality_bench(f"planted:{name}", specs, seeds=1, batch_size=128,
                                       n_bootstrap=20, max_rows=1500)
               for name in ("one", "two")}
    rows = holdout_rows(reports, candidates, budgets)
    assert [(r["data"], r["budget"]) for r in rows] == [("one", 0.5), ("two", 0.5)]
    for r in rows:
        rep = reports[r["data"]]
        spec = fiited_spec(r["chosen"], 0.5)
        other = best_fixed(rep, spec)
        limit = next(x for x in rep.rows if x["policy"] == spec)["embedding_bytes"]
        mine = {x["policy"]: x for x in rep.rows}
        assert other is not None and mine[other]["embedding_bytes"] <= limit
        assert all(mine[other]["auc"] >= x["auc"] for x in rep.rows
                   if x["policy"].startswith("fixed") and x["embedding_bytes"] <= limit)
        assert r["chosen_whole"]["other"] == other
        assert r["chosen_whole"]["delta"] == pytest.approx(
            rep.paired_delta(spec, other, "")["delta"])
        assert 0 < r["chosen_value_pct"] < r["chosen_pct"] < 60  # values are a part of total
    text = holdout_markdown(rows)
    assert text.count("\n") == 2 + len(rows) and "values %" in text
