"""`chunkrec experiment create` against a running `chunkrec route` (a real broker, a SQLite
database): the experiment exists with its arms, weights and control, and is running; the
router's /readyz and a bad arm are what a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.stack.infra import ManagedProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
KEY = "experiment-cli-key-0123456789"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                          env=dict(os.environ) | env, capture_output=True, text=True,
                          timeout=120)


def test_create_an_experiment_through_the_router(broker: ManagedProcess, tmp_path: Path) -> None:
    port = free_port()
    env = {"CHUNKREC_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
           "CHUNKREC_KAFKA_BOOTSTRAP": broker.address, "CHUNKREC_ROUTER_API_KEY": KEY,
           "CHUNKREC_DATA_DIR": str(tmp_path)}
    assert _cli(["db", "upgrade"], env).returncode == 0
    log = tmp_path / "route.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "route", "--port", str(port)],
                            cwd=ROOT, env=dict(os.environ) | env, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    router = ManagedProcess("route", proc, "127.0.0.1", port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "router", router.alive)
        done = _cli(["experiment", "create", "ab", "--arm", "fixed64", "--arm", "fiited:3",
                     "--arm", "eq=fixed_eq", "--control", "fixed64", "--router-url", url], env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ("experiment 1 running: arms fixed64 (control), fiited, "
                                       "eq")
        got = httpx.get(url + "/v1/experiments/1", headers={"X-API-Key": KEY}).json()
        assert got["status"] == "running"
        arms = {a["name"]: (a["model"], a["weight"], a["control"]) for a in got["arms"]}
        assert arms == {"fixed64": ("fixed64", 1.0, True), "fiited": ("fiited", 3.0, False),
                        "eq": ("fixed_eq", 1.0, False)}
        assert got["decision_rules"] is None  # no --margin: the report's defaults decide
        tight = _cli(["experiment", "create", "tight", "--arm", "fixed64", "--arm", "fiited",
                      "--margin", "0.03", "--router-url", url], env)
        assert tight.returncode == 0, tight.stderr
        rules = httpx.get(url + "/v1/experiments/2", headers={"X-API-Key": KEY}).json()[
            "decision_rules"]
        assert rules["primary"] == {"metric": "ctr", "test": "non_inferiority",
                                    "margin": 0.03, "direction": "increase"}
        assert [g["metric"] for g in rules["guardrails"]] == ["log_loss", "latency_p99",
                                                              "error_rate"]
        bad = _cli(["experiment", "create", "x", "--arm", "a", "--arm", "b:-1",
                    "--router-url", url], env)
        assert bad.returncode == 2 and "router refused (422)" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        t0 = time.monotonic()
        ready = httpx.get(url + "/readyz", timeout=10)
        # no serving runs here: not ready, and it says which check failed, quickly
        assert ready.status_code == 503 and time.monotonic() - t0 < 5
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["kafka"] == "ok"
        assert ready.json()["checks"]["serving"].startswith("unreachable")
    finally:
        router.stop()
