"""Decision rules and pre-period behaviour through the real router app: stored with the
experiment, used by the report and the dashboard; bad input gets a 4xx saying what is wrong."""

from __future__ import annotations

import pytest

from tests.services.test_router import ADMIN, BODY, client  # noqa: F401  (fixture)

RULES = {"primary": {"metric": "ctr", "test": "non_inferiority", "margin": 0.05},
         "guardrails": [{"metric": "log_loss", "margin": 0.02},
                        {"metric": "latency_p99", "margin": 0.5}],
         "alpha": 0.05, "power": 0.8}


def test_rules_are_stored_and_decide_the_report(client) -> None:  # noqa: F811
    c, _ = client
    eid = c.post("/v1/experiments", json=BODY, headers=ADMIN).json()["id"]
    assert c.get(f"/v1/experiments/{eid}", headers=ADMIN).json()["decision_rules"] is None
    r = c.put(f"/v1/experiments/{eid}/rules", json=RULES, headers=ADMIN)
    assert r.status_code == 200, r.text
    stored = r.json()["decision_rules"]
    assert stored["primary"] == {"metric": "ctr", "margin": 0.05, "test": "non_inferiority",
                                 "direction": "increase"}
    assert [g["direction"] for g in stored["guardrails"]] == ["decrease", "decrease"]
    assert c.get(f"/v1/experiments/{eid}", headers=ADMIN).json()["decision_rules"] == stored
    rep = c.get(f"/v1/experiments/{eid}/report").json()
    assert rep["rules"] == stored and rep["rules_default"] is False
    assert rep["verdict"]["verdict"] == "keep running"  # no traffic yet
    page = c.get(f"/experiments/{eid}").text
    assert "Verdict: keep running" in page and "margin 5.00%" in page
    assert c.put("/v1/experiments/999/rules", json=RULES, headers=ADMIN).status_code == 404
    assert c.put(f"/v1/experiments/{eid}/rules", json=RULES).status_code == 401


@pytest.mark.parametrize("change,words", [
    ({"primary": {"metric": "ctr", "margin": 0}}, "margin"),
    ({"primary": {"metric": "ctr", "margin": 1.5}}, "margin"),
    ({"primary": {"metric": "clicks", "margin": 0.01}}, "metric"),
    ({"guardrails": [{"metric": "ctr", "margin": 0.01}]}, "each metric at most once"),
    ({"guardrails": [{"metric": "log_loss", "margin": 0.01, "test": "superiority"}]},
     "guardrails are non-inferiority"),
    ({"guardrails": [{"metric": "latency_p99", "margin": 0.1, "direction": "increase"}]},
     "latency_p99: lower is better"),
    ({"alpha": 0.7}, "alpha"),
    ({"power": 1.0}, "power"),
    ({"cost": ["gpu_hours"]}, "cost"),
    ({"extra": 1}, "extra"),
])
def test_bad_rules_get_a_4xx_naming_the_problem(client, change, words) -> None:  # noqa: F811
    c, _ = client
    eid = c.post("/v1/experiments", json=BODY, headers=ADMIN).json()["id"]
    r = c.put(f"/v1/experiments/{eid}/rules", json={**RULES, **change}, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert words in r.text


def test_pre_period_is_recorded_and_checked(client) -> None:  # noqa: F811
    c, _ = client
    eid = c.post("/v1/experiments", json=BODY, headers=ADMIN).json()["id"]
    units = [{"unit_id": "alice", "exposures": 40, "clicks": 22},
             {"unit_id": 196, "exposures": 3, "clicks": 0}]
    r = c.post(f"/v1/experiments/{eid}/pre-period", json={"units": units}, headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"units": 2}
    bad = [{"unit_id": "bob", "exposures": 2, "clicks": 3}]
    r = c.post(f"/v1/experiments/{eid}/pre-period", json={"units": bad}, headers=ADMIN)
    assert r.status_code == 422 and "clicks (3) above exposures (2)" in r.text
    twice = [units[0], units[0]]
    r = c.post(f"/v1/experiments/{eid}/pre-period", json={"units": twice}, headers=ADMIN)
    assert r.status_code == 422 and "appears twice" in r.text
    r = c.post("/v1/experiments/999/pre-period", json={"units": units}, headers=ADMIN)
    assert r.status_code == 404
    rep = c.get(f"/v1/experiments/{eid}/report").json()
    assert rep["cuped"] is True
