"""`chunkrec up` end to end: the A/B experiment on MovieLens-100k with small limits (its own
broker, Redis, three trainers, serving, database, router, joiner, warm-up replay and simulated
users, down to the verdict table and a dashboard that answered), the two-model replay of a
small synthetic stream (--no-experiment), and `chunkrec down` from another process stopping
exactly what `up` started."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from services.stack.infra import wait_until
from services.stack.state import start_time
from storage.datasets.movielens import ML100K_FILES
from storage.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:events=3000,fields=4,vocab=500,seed=3"


def _env(data_dir: Path) -> dict[str, str]:
    return dict(os.environ) | {"CHUNKREC_DATA_DIR": str(data_dir),
                               "CHUNKREC_KAFKA_MAX_POLL_INTERVAL_MS": "3000"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def _recorded(state_file: Path) -> dict[str, tuple[int, str]]:
    try:
        doc = orjson.loads(state_file.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    procs = {k: (v["pid"], v["start"]) for k, v in doc["procs"].items()}
    procs["up"] = (doc["owner"]["pid"], doc["owner"]["start"])
    return procs


def _gone(pid: int, start: str) -> bool:
    return start_time(pid) != start


def _movielens_into(data_dir: Path) -> None:
    """MovieLens-100k in the test's data dir: copied from the usual cache, else fetched."""
    cache = Settings().data_dir / "movielens-100k"
    target = data_dir / "movielens-100k"
    if all((cache / f).is_file() for f in ML100K_FILES):
        shutil.copytree(cache, target)
        return
    fetched = subprocess.run(_cli("data", "fetch", "movielens-100k"), env=_env(data_dir),
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr


def test_up_runs_the_experiment_to_its_verdict_and_stops_everything(tmp_path: Path) -> None:
    _movielens_into(tmp_path)
    state_file = tmp_path / "stack" / "stack.json"
    log = tmp_path / "up.log"
    # simulated users click at once: a short attribution window closes exposures sooner
    env = _env(tmp_path) | {"CHUNKREC_ATTRIBUTION_WINDOW_S": "2", "CHUNKREC_JOINER_GRACE_S": "1"}
    proc = subprocess.Popen(_cli("up", "--events", "3000", "--sessions", "100",
                                 "--no-progress", "--minutes", "2"),
                            env=env, cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    seen: dict[str, tuple[int, str]] = {}

    def started_all() -> bool:
        seen.update(_recorded(state_file))
        return "users" in seen or proc.poll() is not None

    try:
        wait_until(started_all, 90, "chunkrec up started the simulated users")
        assert proc.wait(timeout=120) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "all events applied, 3,000 events replayed" in out, out[-4000:]
    verdict = out[out.index("verdict: experiment 1"):]
    header = next(line for line in verdict.splitlines() if "fixed64" in line).split()
    assert [w for w in header if w.isidentifier()] == ["fixed64", "fiited", "fixed_eq"], verdict
    for row in ("CTR [95% CI]", "diff vs control", "always valid", "AUC (served)",
                "latency p50 / p99", "embedding bytes (trainer)", "Redis record bytes",
                "SRM check", "diff, CUPED", "decision rules: ctr non-inferiority within 5.00%",
                "fiited    ctr", "VERDICT: "):
        assert row in verdict, row
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/experiments/1 +\(HTTP 200\)",
                     verdict), verdict
    assert "simulated users: 100 requests" in out and "100 requests joined" in out, out[-2000:]
    # the router served item features from the run's table; the users sent item ids only
    items = next((tmp_path / "stack" / "runs").glob("*/items.csv")).read_text().splitlines()
    assert items[0] == "item,genre" and len(items) == 1 + 1682
    api_key = next((tmp_path / "stack" / "runs").glob("*/router_api_key")).read_text().strip()
    logs = "".join(p.read_text(errors="replace")
                   for p in (tmp_path / "stack" / "runs").glob("*/logs/*.log"))
    assert api_key and api_key not in out + logs  # the admin key is never printed or logged
    assert {"tansu", "redis", "train-fixed64", "train-fiited", "train-fixed_eq", "serve",
            "replay", "router", "joiner", "users"} <= set(seen)
    assert [n for n, (pid, start) in seen.items() if not _gone(pid, start)] == []
    assert not state_file.exists()


def test_up_without_experiment_runs_to_its_summary(tmp_path: Path) -> None:
    state_file = tmp_path / "stack" / "stack.json"
    log = tmp_path / "up.log"
    proc = subprocess.Popen(_cli("up", "--data", SPEC, "--events", "2500", "--rate", "max",
                                 "--no-progress", "--minutes", "2", "--no-experiment"),
                            env=_env(tmp_path), cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    seen: dict[str, tuple[int, str]] = {}

    def started_all() -> bool:
        seen.update(_recorded(state_file))
        return "replay" in seen or proc.poll() is not None

    try:
        wait_until(started_all, 60, "chunkrec up started everything")
        assert proc.wait(timeout=110) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "all events applied, 2,500 events replayed" in out, out[-3000:]
    for model in ("fiited", "fixed64"):
        assert model in out
    assert {"tansu", "redis", "train-fiited", "train-fixed64", "serve", "replay"} <= set(seen)
    assert all(_gone(pid, start) for pid, start in seen.values())
    assert not state_file.exists()
    charts = list((tmp_path / "stack" / "runs").glob("*/summary.png"))
    assert len(charts) == 1 and charts[0].stat().st_size > 10_000


def test_down_stops_what_up_started_and_nothing_else(tmp_path: Path) -> None:
    state_file = tmp_path / "stack" / "stack.json"
    log = tmp_path / "up.log"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    proc = subprocess.Popen(_cli("up", "--data", SPEC, "--rate", "200", "--no-progress",
                                 "--minutes", "3"),
                            env=_env(tmp_path), cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "replay" in _recorded(state_file), 60, "chunkrec up started",
                   alive=lambda: proc.poll() is None)
        seen = _recorded(state_file)
        down = subprocess.run(_cli("down"), env=_env(tmp_path), cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopping chunkrec up" in down.stdout
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
        assert all(_gone(pid, start) for pid, start in seen.values()), seen
        assert not state_file.exists()
        assert bystander.poll() is None  # not ours: left alone
        again = subprocess.run(_cli("down"), env=_env(tmp_path), cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 0 and "nothing to stop" in again.stdout
    finally:
        for p in (proc, bystander):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def test_up_with_workers_shards_every_trainer(tmp_path: Path) -> None:
    """`chunkrec up --workers 2`: each model trains over 2 ranks (a shard and a partition of
    `events` each), applies every event and leaves a complete global checkpoint."""
    log = tmp_path / "up.log"
    done = subprocess.run(_cli("up", "--data", SPEC, "--events", "2500", "--rate", "max",
                               "--no-progress", "--minutes", "3", "--no-experiment",
                               "--workers", "2"),
                          env=_env(tmp_path), cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                          stderr=subprocess.STDOUT, timeout=200)
    out = log.read_text()
    assert done.returncode == 0, out[-3000:]
    assert "all events applied, 2,500 events replayed" in out, out[-3000:]
    for model in ("fiited", "fixed64"):
        assert re.search(rf"starting trainer {model} \(.*\) over 2 ranks", out), out[:3000]
        ckpts = list((tmp_path / "stack" / "runs").glob(f"*/checkpoints/{model}/ckpt-*"))
        assert ckpts and all((c / "COMMIT").is_file() for c in ckpts)
        assert {p.name for p in ckpts[-1].glob("shard-*.npz")} == {"shard-0.npz", "shard-1.npz"}
