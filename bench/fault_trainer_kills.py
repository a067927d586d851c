"""Trainer crashes: SIGKILL `chunkrec train` at random moments during a replay, restart it each
time; at the end the applied-event count and event-id checksum in the version record (and the
newest checkpoint) must equal the produced set's: no event lost, none applied twice.

    python bench/fault_trainer_kills.py [--events 200000] [--kills 20] [--rate 800] [--seed 0]
    python bench/fault_trainer_kills.py --workers 2 --events 40000 --kills 10 --rate 250

With --workers N the trainer is one job of N ranks (`chunkrec train --workers N`): each round
waits for a new complete global checkpoint of the job, then SIGKILLs one rank (chosen at
random) after a random 0.2..3 s; the launcher stops the other ranks and the next round
restarts the job from the last complete checkpoint. The checkpoint's counts are the sum of
its ranks' (rank-R.json).

Set-up: a tansu broker and a redis-server (services/stack/infra.py, free ports), a
2-partition topic,
a synthetic stream (4 fields, vocab 5,000) replayed at `rate` events/s in a background thread
while the trainer runs (checkpoints every 5,000 events or 2 s, publishes every 0.5 s). Each
round: start the trainer, wait until it has joined the group, then kill it after a random
0.5..4 s; the last trainer runs to --max-events. Prints one line per kill and a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.distributed.checkpoint import latest_complete  # noqa: E402
from services import wire  # noqa: E402
from services.stack.infra import create_topics, start_redis, start_tansu, wait_until  # noqa: E402
from services.stack.replay import ReplayStats, replay_dataset  # noqa: E402
from services.trainer.checkpoint import CheckpointState, list_checkpoints  # noqa: E402
from storage.settings import Settings  # noqa: E402

POLICY = "fiited:dim=16,budget=0.5,interval=20"
MODEL = "killed"


@dataclass
class KillReport:
    kills: int
    produced: int
    produced_checksum: int
    applied: int
    applied_checksum: int
    checkpoint_applied: int
    checkpoint_checksum: int
    seconds: float

    @property
    def ok(self) -> bool:
        return (self.applied == self.produced == self.checkpoint_applied
                and self.applied_checksum == self.produced_checksum == self.checkpoint_checksum)


def _env(settings: Settings) -> dict[str, str]:
    return dict(os.environ) | settings.to_env()


def _start(settings: Settings, spec: str, topic: str, log: Path,
           max_events: int | None = None, workers: int = 1) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "services.cli", "train", "--model", MODEL, "--policy", POLICY,
           "--data", spec, "--topic", topic]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if max_events is not None:
        cmd += ["--max-events", str(max_events)]
    return subprocess.Popen(cmd, env=_env(settings), cwd=ROOT, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_a_rank(settings: Settings, proc: subprocess.Popen[bytes], k: int,
                 rng: random.Random, seen: Path | None) -> str:
    """A sharded round: a new complete checkpoint of this job, a random moment, then SIGKILL
    of one random rank; the job must fail (its launcher stops the other ranks)."""
    import psutil

    root = Path(settings.trainer.checkpoint_dir) / MODEL
    wait_until(lambda: latest_complete(root) not in (None, seen), 300,
               f"job {k} checkpointed", alive=lambda: proc.poll() is None)
    kill_at = time.monotonic() + rng.uniform(0.2, 3.0)
    wait_until(lambda: time.monotonic() >= kill_at, 10, "kill time",
               alive=lambda: proc.poll() is None)
    ranks = sorted((p for p in psutil.Process(proc.pid).children()
                    if "spawn_main" in " ".join(p.cmdline())), key=lambda p: p.pid)
    victim = rng.randrange(len(ranks))
    os.kill(ranks[victim].pid, signal.SIGKILL)  # spawned in rank order
    if proc.wait(timeout=120) == 0:
        raise RuntimeError(f"job {k} exited 0 after its rank {victim} was killed")
    return f"rank {victim} of {len(ranks)}"


def _checkpoint_counts(settings: Settings, workers: int) -> tuple[int, int]:
    """(events applied, checksum) of the newest checkpoint (global: its ranks' sums)."""
    root = Path(settings.trainer.checkpoint_dir) / MODEL
    if workers == 1:
        ckpt = CheckpointState.from_json(
            (list_checkpoints(root)[-1] / "state.json").read_bytes())
        return ckpt.events_applied, ckpt.events_checksum
    path = latest_complete(root)
    assert path is not None
    applied, checksum = 0, 0
    for r in range(workers):
        extra = json.loads((path / f"rank-{r}.json").read_text())
        applied += int(extra["events_applied"])
        checksum = wire.add_checksums(checksum, int(extra["events_checksum"]))
    return applied, checksum


def run_kills(settings: Settings, spec: str, topic: str, kills: int, rate: float, seed: int,
              work: Path, say: bool = True, workers: int = 1) -> KillReport:
    """The fault run (see module docstring) against the broker and Redis in `settings`."""
    rng = random.Random(seed)
    r = redis.Redis.from_url(settings.redis.url, **settings.redis.client_kwargs)

    def published() -> int:
        blob = r.get(wire.version_key(MODEL))
        return 0 if blob is None else wire.ModelVersion.from_json(blob).events_applied

    replayed: list[ReplayStats] = []
    producer = threading.Thread(target=lambda: replayed.append(replay_dataset(
        settings, spec, topic=topic, batch_events=100, rate=rate)))
    t0 = time.monotonic()
    producer.start()
    for k in range(kills):
        log = work / f"trainer-{k}.log"
        seen = latest_complete(Path(settings.trainer.checkpoint_dir) / MODEL)
        proc = _start(settings, spec, topic, log, workers=workers)
        victim = "trainer"
        try:
            if workers > 1:
                victim = _kill_a_rank(settings, proc, k, rng, seen)
            else:
                wait_until(lambda log=log: b"assigned" in log.read_bytes(), 120,
                           f"trainer {k} joined", alive=lambda proc=proc: proc.poll() is None)
                kill_at = time.monotonic() + rng.uniform(0.5, 4.0)  # the fault schedule
                wait_until(lambda kill_at=kill_at: time.monotonic() >= kill_at, 10,
                           "kill time", alive=lambda proc=proc: proc.poll() is None)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the trainer (and any ranks it started)
            proc.wait(timeout=30)
        if say:
            print(f"kill {k + 1:2d} ({victim}) at {time.monotonic() - t0:6.1f} s: published "
                  f"{published():,} applied events", flush=True)
    producer.join()
    sent = replayed[0]
    if sent.failed_messages:
        raise RuntimeError(f"replay: {sent.failed_messages} messages not acknowledged")
    log = work / "trainer-final.log"
    final = _start(settings, spec, topic, log, max_events=sent.events, workers=workers)
    try:
        if final.wait(timeout=600) != 0:
            raise RuntimeError(f"final trainer failed:\n{log.read_text()[-3000:]}")
    finally:
        if final.poll() is None:
            final.kill()
    rec = wire.ModelVersion.from_json(r.get(wire.version_key(MODEL)))
    r.close()
    ckpt_applied, ckpt_checksum = _checkpoint_counts(settings, workers)
    return KillReport(kills, sent.events, sent.checksum, rec.events_applied,
                      int(rec.events_checksum), ckpt_applied, ckpt_checksum,
                      time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--rate", type=float, default=800.0,
                    help="replay events/s (at 800, 200k events outlast 20 kills of ~10 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1,
                    help="ranks of one sharded job (kill one rank a round)")
    args = ap.parse_args()
    spec = f"synthetic:events={args.events},fields=4,vocab=5000,seed={args.seed}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with start_tansu(log_dir=work) as broker, start_redis(log_dir=work) as store:
            topic = "events-kills"
            create_topics(broker.address, {topic: max(2, args.workers), wire.DLQ_TOPIC: 1})
            settings = Settings(
                kafka_bootstrap=broker.address, redis_url=store.url,
                checkpoint_dir=work / "ckpt", publish_interval_s=0.5,
                checkpoint_interval_s=2.0, checkpoint_every_events=5000,
                trainer_batch_events=512, trainer_threads=1, kafka_max_poll_interval_ms=3000)
            rep = run_kills(settings, spec, topic, args.kills, args.rate, args.seed, work,
                            workers=args.workers)
    print()
    print(f"{'trainer':32s} {args.workers} rank(s), {POLICY}")
    print(f"{'faults injected (SIGKILL)':32s} {rep.kills}")
    print(f"{'events produced (acked)':32s} {rep.produced:,}")
    print(f"{'events applied (version record)':32s} {rep.applied:,}")
    print(f"{'events applied (checkpoint)':32s} {rep.checkpoint_applied:,}")
    print(f"{'lost':32s} {max(0, rep.produced - rep.applied):,}")
    print(f"{'applied twice (count excess)':32s} {max(0, rep.applied - rep.produced):,}")
    print(f"{'checksum produced':32s} {rep.produced_checksum}")
    print(f"{'checksum applied':32s} {rep.applied_checksum}")
    print(f"{'checksums match':32s} {rep.applied_checksum == rep.produced_checksum}")
    print(f"{'wall time':32s} {rep.seconds:.0f} s")
    print(f"{'verdict':32s} {'OK' if rep.ok else 'FAILED'}")
    sys.exit(0 if rep.ok else 1)


if __name__ == "__main__":
    main()
