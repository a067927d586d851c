"""Trainer crashes, the fast variant of bench/fault_trainer_kills.py: three SIGKILLs at random
moments while ~12k events stream in; the final count and event-id checksum (version record and
checkpoint) equal the produced set's (test_trainer_stream.py has the single-kill case)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from services.stack.infra import ManagedProcess
from storage.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("fault_trainer_kills",
                                                  ROOT / "bench" / "fault_trainer_kills.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_three_sigkills_lose_nothing_and_apply_nothing_twice(
        stream_settings: Settings, topic: str, redis_server: ManagedProcess,
        tmp_path: Path) -> None:
    bench = _bench()
    settings = stream_settings.replace(checkpoint_every_events=2000, checkpoint_interval_s=1.0,
                                       publish_interval_s=0.3)
    spec = "synthetic:events=12000,fields=3,vocab=1000,seed=4"
    rep = bench.run_kills(settings, spec, topic, kills=3, rate=1500, seed=1,  # type: ignore[attr-defined]
                          work=tmp_path, say=False)
    assert rep.kills == 3 and rep.produced == 12000
    assert rep.applied == rep.checkpoint_applied == rep.produced
    assert rep.applied_checksum == rep.checkpoint_checksum == rep.produced_checksum
