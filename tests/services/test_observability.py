"""Observability a user can rely on: `chunkrec train` serves Prometheus /metrics (events
applied, dead letters, lag, bytes by kind, live chunks per position, prune / publish /
checkpoint time, checkpoint age) while it trains from a real broker and Redis, and with
CHUNKREC_LOG_FORMAT=json every line it logs parses as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.stack.infra import free_port, poll
from services.stack.replay import replay_dataset
from storage.settings import Settings
from tests.services.conftest import stream_env

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic:events=3000,fields=3,vocab=800,seed=4"
POLICY = "fiited:dim=32,budget=0.3,interval=10"  # chunk widths 2-2-4-8-16: 5 positions


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model"))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_trainer_metrics_and_json_logs(stream_settings: Settings, topic: str,
                                       tmp_path: Path) -> None:
    sent = replay_dataset(stream_settings, SPEC, topic=topic, batch_events=100)
    assert sent.events == 3000
    port = free_port()
    env = dict(os.environ) | stream_env(stream_settings) | {
        "CHUNKREC_LOG_FORMAT": "json", "CHUNKREC_LOG_LEVEL": "info",
        "CHUNKREC_TRAINER_METRICS_PORT": str(port), "CHUNKREC_CHECKPOINT_EVERY_EVENTS": "1000"}
    log = tmp_path / "train.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "train", "--model", "observed", "--policy",
         POLICY, "--data", SPEC, "--topic", topic, "--idle-exit", "30"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def all_applied() -> bool:
        nonlocal got
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            got = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
        except httpx.HTTPError:
            return False  # not listening yet
        return (got.get(("chunkrec_trainer_events_applied_total", ())) == 3000
                and got.get(("chunkrec_trainer_checkpoint_seconds_count", ()), 0) >= 1)

    try:
        assert poll(all_applied, time.monotonic() + 120, 0.3), got
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert got[("chunkrec_trainer_events_dead_lettered_total", ())] == 0
    assert got[("chunkrec_trainer_messages_total", ())] == 30
    assert got[("chunkrec_trainer_lag_messages", ())] == 0
    assert got[("chunkrec_trainer_events_per_second", ())] > 0
    kinds = {k: got[("chunkrec_trainer_embedding_bytes", (("kind", k),))]
             for k in ("value", "optimizer", "metadata", "index", "total")}
    assert kinds["total"] == kinds["value"] + kinds["optimizer"] + kinds["metadata"] + \
        kinds["index"] > 0
    live = [got[("chunkrec_trainer_live_chunks", (("position", str(j)),))] for j in range(5)]
    assert live[0] > 0 and live[0] >= live[1] >= live[4]  # live dims are a prefix
    assert got[("chunkrec_trainer_live_ids", ())] >= live[0]
    assert got[("chunkrec_trainer_prune_seconds_count", ())] > 0  # interval=10 steps
    assert got[("chunkrec_trainer_prune_seconds_sum", ())] > 0
    assert got[("chunkrec_trainer_publish_seconds_count", ())] >= 1
    assert 0 <= got[("chunkrec_trainer_checkpoint_age_seconds", ())] < 120
    phase = {k[1][0][1]: v for k, v in got.items()
             if k[0] == "chunkrec_trainer_phase_seconds_total"}
    assert phase["steps"] > 0 and phase["decode"] > 0 and phase["publish_redis"] > 0
    assert set(phase) == {"poll", "decode", "steps", "publish_export", "publish_pack",
                          "publish_redis", "metrics", "checkpoint", "publish_background"}

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines, "the trainer logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= records[0].keys()
    assert any(r["logger"] == "chunkrec.trainer" and "metrics at" in r["message"]
               for r in records)
    assert any("published v" in r["message"] for r in records)


@pytest.mark.parametrize(("env", "named"), [
    ({"CHUNKREC_LOG_FORMAT": "xml"}, "CHUNKREC_LOG_FORMAT"),
    ({"CHUNKREC_LOG_LEVEL": "loud"}, "CHUNKREC_LOG_LEVEL"),
    ({"CHUNKREC_TRAINER_METRICS_PORT": "70000"}, "CHUNKREC_TRAINER_METRICS_PORT"),
])
def test_bad_logging_settings_are_one_line(env: dict[str, str], named: str) -> None:
    done = subprocess.run([sys.executable, "-m", "services.cli", "data", "info", "x"],
                          env=dict(os.environ) | env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and named in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
