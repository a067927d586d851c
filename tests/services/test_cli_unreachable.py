"""What a new user sees when something the command needs is not there: an unreachable broker
(replay, train, route), Redis, a database that is unreachable, missing, unmigrated or named
in a folder that does not exist, a revision that does not exist. Every case: exit status 2,
one line on stderr naming what is wrong and what to do, within 10 s, nothing left behind.

The commands run in this process (CliRunner), so that the time measured is the command's
own, not a Python start on a busy machine; tests/services/test_cli_validation.py and
test_security.py run commands as processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.stack.infra import ManagedProcess, free_port

SYNTH = "synthetic:events=200,fields=2,vocab=20,seed=1"
LIMIT_S = 10.0


def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    """The command in this process (imports already loaded: the time is the command's own
    work, not an interpreter's start on a busy machine): (exit status, stderr, seconds)."""
    t0 = time.monotonic()
    result = CliRunner().invoke(app, args, env=env)
    took = time.monotonic() - t0
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr, took


def _one_line(rc: int, stderr: str, *names: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, (rc, stderr[-3000:])
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A broker address nothing listens on, everything else in tmp_path."""
    return {"CHUNKREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "CHUNKREC_DATA_DIR": str(tmp_path / "data"),
            "CHUNKREC_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
            "CHUNKREC_ROUTER_API_KEY": "k" * 32}


def test_unreachable_broker_stops_replay_within_10s(env: dict[str, str]) -> None:
    rc, err, took = _cli(["replay", "--data", SYNTH, "--quiet"], env)
    _one_line(rc, err, "Kafka broker at", env["CHUNKREC_KAFKA_BOOTSTRAP"], "chunkrec infra")
    assert took < LIMIT_S, took


def test_unreachable_broker_stops_train_within_10s(env: dict[str, str],
                                                   redis_server: ManagedProcess) -> None:
    """The policy spec is checked first, then the broker (kafka-python's own wait: ~40 s)."""
    env = env | {"CHUNKREC_REDIS_URL": redis_server.url}
    train = ["train", "--model", "m", "--data", SYNTH, "--policy"]
    rc, err, _ = _cli(train + ["fixed:-8"], env)
    _one_line(rc, err, "fixed:-8")
    rc, err, took = _cli(train + ["fixed:8"], env)
    _one_line(rc, err, "Kafka broker at", env["CHUNKREC_KAFKA_BOOTSTRAP"], "chunkrec infra")
    assert took < LIMIT_S, took


def test_unreachable_redis_stops_train(env: dict[str, str], broker: ManagedProcess) -> None:
    rc, err, took = _cli(["train", "--model", "m", "--policy", "fixed:8", "--data", SYNTH],
                         env | {"CHUNKREC_KAFKA_BOOTSTRAP": broker.address,
                                "CHUNKREC_REDIS_URL": f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"})
    line = _one_line(rc, err, "Redis at 127.0.0.1:", "CHUNKREC_REDIS_URL")
    assert "s3cretpw" not in line, line


def test_route_without_broker_is_one_line(env: dict[str, str],
                                                              tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    env = env | {"CHUNKREC_DATABASE_URL": f"sqlite:///{db}"}
    rc, err, _ = _cli(["db", "upgrade"], env)
    assert rc == 0, err
    rc, err, took = _cli(["route", "--port", str(free_port())], env)
    _one_line(rc, err, "Kafka broker at")
    assert took < LIMIT_S, took  # checked before uvicorn starts (its startup was deaf to SIGTERM)


def test_report_on_a_fresh_path_leaves_no_file(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    rc, err, _ = _cli(["report", "1"], env | {"CHUNKREC_DATABASE_URL": f"sqlite:///{db}"})
    _one_line(rc, err, "does not exist", "chunkrec db upgrade")
    assert not db.exists() and not Path(str(db) + "-wal").exists()


def test_db_upgrade_into_a_missing_folder_creates_nothing(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    rc, err, _ = _cli(["db", "upgrade"], env | {"CHUNKREC_DATABASE_URL": url})
    _one_line(rc, err, "does not exist", str(tmp_path / "no" / "such" / "dir"))
    assert not (tmp_path / "no").exists()


def test_unknown_revision_and_unmigrated_database(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    env = env | {"CHUNKREC_DATABASE_URL": f"sqlite:///{db}"}
    rc, err, _ = _cli(["db", "upgrade", "0099"], env)
    _one_line(rc, err, "'0099'", "0001", "head")
    assert not db.exists()  # refused before the database was touched
    assert _cli(["db", "upgrade", "0001"], env)[0] == 0
    rc, err, _ = _cli(["report", "1"], env)
    _one_line(rc, err, "revision 0001", "chunkrec db upgrade")
    rc, err, _ = _cli(["route"], env)
    _one_line(rc, err, "revision 0001", "--migrate")


def test_unreachable_database_server_is_one_line(env: dict[str, str]) -> None:
    url = f"postgresql+psycopg://user:secret@127.0.0.1:{free_port()}/meta"
    for args in (["report", "1"], ["db", "upgrade"]):
        rc, err, took = _cli(args, env | {"CHUNKREC_DATABASE_URL": url})
        line = _one_line(rc, err, "cannot be reached", "CHUNKREC_DATABASE_URL")
        assert "secret" not in line and took < LIMIT_S
