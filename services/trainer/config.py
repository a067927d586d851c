"""What a trainer is told (TrainerConfig) and what it counts (TrainerStats): apart from the loop
(services/trainer/loop.py) so that its parts (ingest, versions, hot start) and callers use
them without importing the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services import wire
from storage.batch import DatasetSchema


@dataclass
class TrainerConfig:
    model: str
    policy: str
    schema: DatasetSchema
    arch: str = "dlrm"
    topic: str = wire.EVENTS_TOPIC
    seed: int = 0
    lr: float = 1e-3
    max_events: int | None = None  # stop once this many are applied (whole messages, so it
    # may overshoot; counted across restarts)
    idle_exit_s: float | None = None  # stop after this long without a new event
    decode_only: bool = False  # consume + validate + decode, no training (ingestion bench)
    # another model's checkpoint (a fixed:64 trainer's ckpt-* folder, or its checkpoint folder
    # for the newest) to start from when this model has none of its own: switching policy
    # on a running system without starting cold
    hot_start: Path | None = None


# Where a trainer's time goes (TrainerStats.phases; the bench and /metrics print them):
# poll: consumer.poll; decode: validate + decode + dead-letter polled messages; steps: the
# learner's steps; publish_export: the store's export of changed entries (and the dense
# weights); publish_pack: records and bucket writes packed; publish_redis: Redis round trips
# (bucket scripts, commit, retired generations); metrics: the version record's online
# metrics and memory readings; checkpoint: writing checkpoints.
PHASES = ("poll", "decode", "steps", "publish_export", "publish_pack", "publish_redis",
          "metrics", "checkpoint", "other")


@dataclass
class TrainerStats:
    events_applied: int = 0
    events_checksum: int = 0
    events_invalid: int = 0
    dead_letters_lost: int = 0  # dead letters the producer refused, even as a stub
    messages: int = 0
    versions_published: int = 0
    checkpoints: int = 0
    decode_seconds: float = 0.0  # validating and decoding polled messages
    train_seconds: float = 0.0  # training steps on queued events
    # seconds of wall time by phase of the loop (PHASES; "other" is what none of them timed)
    phases: dict[str, float] = field(default_factory=dict)
    first_event_at: float | None = None  # perf_counter when the first valid event was queued
    last_applied_at: float | None = None  # perf_counter when the last events were applied

    @property
    def stream_events_per_s(self) -> float:
        """Applied events per second of wall time from the first event queued to the last
        applied (group join and idle time before the stream are not counted)."""
        if self.first_event_at is None or self.last_applied_at is None:
            return float("nan")
        span = self.last_applied_at - self.first_event_at
        return self.events_applied / span if span > 0 else float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def add_time(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def phase_split(self, wall_s: float) -> dict[str, float]:
        """Seconds per phase of PHASES over `wall_s` of wall time: the timed ones and "other"
        (the loop's bookkeeping, lease renewals, idle polls' leftovers: the rest of the wall)."""
        out = {p: self.phases.get(p, 0.0) for p in PHASES if p != "other"}
        out["other"] = max(0.0, wall_s - sum(out.values()))
        return out

