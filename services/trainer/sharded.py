"""The streaming trainer of one model over N ranks (`chunkrec train --workers N`): the
single-process trainer's protocol (services/trainer/loop.py) with a sharded model
(models/distributed/).

    trainer = ShardedTrainer(settings, config)   # in each rank (torch.distributed initialised)
    trainer.run()                                # the processes: services/trainer/sharded_run.py

Partitions: rank r reads the partitions p of the topic with p mod N == r, by static assignment
(consumer.assign: no consumer group, no rebalances). A topic with fewer partitions than ranks
works (the extra ranks train on empty batches) but wastes them.

Lock-step: every round every rank polls, validates (ingest.py) and queues; then one all-reduce
agrees on what the round does (train, publish, checkpoint, stop: any rank's wish is every
rank's). Training takes every rank's whole queue in micro-batches of `trainer_batch_events` / N
rows (rounded up), so a step trains on as many rows over all ranks as one process's step (with
`trainer_batch_events` a rank, 2 ranks took half as many steps of twice the rows, and their
online log loss was 0.5623 against one process's 0.4923 on the same 20k events); the ranks run
the same number of steps, a rank out of rows stepping on an empty batch, so an idle partition
never stalls the others.

Exactly once: a global checkpoint (models/distributed/checkpoint.py: every rank's shard, the
dense state once, COMMIT last) carries in each rank's `extra` its partitions' applied offsets
and its counters (events applied, checksum, invalid). On start every rank restores the newest
committed checkpoint, takes the offsets of the partitions it now owns (from whichever old rank
held them: N may differ) and seeks there; the counters are summed over the old ranks into rank
0. A crash of any rank stops every rank (the launcher), and the job restarts from the last
committed checkpoint: the events after it are applied again, once.

Publishing: services/trainer/shard_publisher.py. Fencing: rank 0 takes the model's lease
(services/trainer/lease.py) and hands its owner value to every rank, so all the job's writes
carry its one token; a second job for the model is refused at start (LeaseHeld on every rank).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from models.distributed.budget import GlobalBudget
from models.distributed.checkpoint import COMMIT, latest_complete, load_global, save_global
from models.distributed.embedding import ShardedPolicy
from models.distributed.group import ShardGroup
from models.distributed.learner import DistributedLearner, empty_batch
from models.metrics import StreamMetrics
from models.networks import build_model
from models.policies.registry import parse_policy
from services import wire
from services.messaging.confirmed import ConfirmedProducer
from services.messaging.redis_clients import open_sync
from services.trainer.config import TrainerConfig, TrainerStats
from services.trainer.ingest import close_trainer_io, ingest
from services.trainer.lease import LeaseHeld, ModelLease
from services.trainer.offsets import OffsetBook, tp_name
from services.trainer.shard_publisher import ShardPublisher
from services.trainer.versions import version_record
from storage.batch import SparseBatch
from storage.settings import Settings

log = logging.getLogger("chunkrec.trainer")


def has_single_checkpoints(root: Path) -> bool:
    """True when `root` holds a checkpoint of the single-process trainer (its state.json)."""
    return any((p / "state.json").exists() for p in Path(root).glob("ckpt-*"))


def has_global_checkpoint(root: Path) -> bool:
    """True when `root` holds a committed checkpoint of a sharded job."""
    return latest_complete(Path(root)) is not None


def my_partitions(partitions: list[int], rank: int, world: int) -> list[int]:
    """The partitions rank `rank` of `world` reads: p mod world == rank."""
    return sorted(p for p in partitions if p % world == rank)


class ShardedTrainer:
    """One rank of the job (module docstring); torch.distributed must be initialised."""

    def __init__(self, settings: Settings, config: TrainerConfig) -> None:
        self.s = settings
        self.c = config
        wire.check_model_name(config.model)
        self.group = ShardGroup.current()
        self.rank, self.world = self.group.rank, self.group.world
        schema = config.schema
        local = parse_policy(config.policy, num_fields=schema.num_fields, seed=config.seed,
                             device=settings.trainer.device)
        self.policy = ShardedPolicy(local, self.group)
        GlobalBudget(self.group).attach(self.policy.store)
        self.net = build_model(config.arch, schema, dim=self.policy.dim, seed=config.seed)
        self.learner = DistributedLearner(self.net, self.policy, schema, self.group, lr=config.lr)
        self.learner.metrics = StreamMetrics(retain=max(1, settings.trainer.metrics_window))
        self.stats = TrainerStats()
        self.offsets = OffsetBook(settings.trainer.start)
        self.version = 0
        self.ckpt_root = Path(settings.trainer.checkpoint_dir) / config.model
        self._stop = False
        self.seq = 0  # of the newest checkpoint
        self.consumer: KafkaConsumer | None = None
        self.producer: ConfirmedProducer | None = None
        self.publisher: ShardPublisher | None = None
        self.lease: ModelLease | None = None
        self._restore()

    # ---------------------------------------------------------------- state
    def _restore(self) -> None:
        if has_single_checkpoints(self.ckpt_root):  # every rank: none waits in the barrier
            raise ValueError(f"{self.ckpt_root} holds checkpoints of the single-process "
                             "trainer, which do not restore into ranks; use another --model "
                             "name or checkpoint dir")
        if self.rank == 0:  # a crash may have left a checkpoint without its COMMIT
            for p in self.ckpt_root.glob("ckpt-*"):
                if not (p / COMMIT).exists():
                    shutil.rmtree(p, ignore_errors=True)
        dist.barrier(group=self.group.group)
        path = latest_complete(self.ckpt_root)
        if path is None:
            return
        extras = load_global(path, self.learner)
        self.seq = int(path.name.split("-")[1])
        mine = [e for e in extras if e.get("model") == self.c.model]
        if len(mine) != len(extras) or any(e.get("policy") != self.c.policy for e in extras):
            raise ValueError(f"{path}: a checkpoint of another model or policy; use another "
                             "--model name or checkpoint dir")
        offsets: dict[str, int] = {}
        for e in extras:
            offsets.update(e["offsets"])
        self.offsets.resume_at({name: off for name, off in offsets.items()
                                if int(name.rpartition(":")[2]) % self.world == self.rank})
        if len(extras) == self.world:
            own = [extras[self.rank]]
        else:
            own = extras if self.rank == 0 else []
        for e in own:
            self.stats.events_applied += int(e["events_applied"])
            self.stats.events_checksum = wire.add_checksums(self.stats.events_checksum,
                                                            int(e["events_checksum"]))
            self.stats.events_invalid += int(e["events_invalid"])
        self.version = max(int(e["version"]) for e in extras)
        log.info("rank %d restored %s: offsets %s", self.rank, path, self.offsets.named())

    def checkpoint(self) -> Path:
        """A global checkpoint of the applied state (every rank, the same round)."""
        assert not self.offsets.queue
        if self.producer is not None:
            self.producer.flush()
        if self.rank == 0 and self.lease is not None:
            self.lease.renew()  # a fenced job writes no checkpoint
        self.seq += 1
        path = self.ckpt_root / f"ckpt-{self.seq:08d}"
        save_global(path, self.learner, extra={
            "model": self.c.model, "policy": self.c.policy, "offsets": self.offsets.named(),
            "events_applied": self.stats.events_applied,
            "events_checksum": str(self.stats.events_checksum),
            "events_invalid": self.stats.events_invalid, "version": self.version})
        if self.rank == 0:
            done = sorted(p for p in self.ckpt_root.glob("ckpt-*") if (p / COMMIT).exists())
            for old in done[:-max(1, self.s.trainer.checkpoints_kept)]:
                shutil.rmtree(old, ignore_errors=True)
        self.stats.checkpoints += 1
        return path

    # ---------------------------------------------------------------- connections
    def connect(self) -> None:
        """Rank 0 takes the model's lease and hands it to every rank (LeaseHeld on every rank
        when another job owns the model); then each rank assigns itself its partitions."""
        client = open_sync(self.s.redis, socket_timeout=10)
        self.lease = ModelLease(client, self.c.model, self.s.trainer.lease_ttl_s)
        owner: list[Any] = [None]
        if self.rank == 0:
            try:
                self.lease.acquire(wait_s=self.s.trainer.lease_ttl_s)
                owner[0] = self.lease.me
            except LeaseHeld as exc:
                owner[0] = ("held", str(exc))
        dist.broadcast_object_list(owner, src=0)
        if isinstance(owner[0], tuple):
            raise LeaseHeld(owner[0][1])
        self.lease.me = owner[0]
        self.lease.renewed_at = time.monotonic()
        self.publisher = ShardPublisher(
            client, self.c.model, self.c.schema.fields, group=self.group, lease=self.lease,
            write_chunk=self.s.redis.write_chunk,
            dense_versions_kept=self.s.trainer.dense_versions_kept,
            per_bucket=self.s.redis.bucket_records)
        self.consumer = KafkaConsumer(
            bootstrap_servers=self.s.kafka.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=self.s.trainer.max_poll_records,
            client_id=f"chunkrec-trainer-{self.c.model}-{self.rank}")
        parts = self._partitions()
        tps = [TopicPartition(self.c.topic, p) for p in my_partitions(parts, self.rank,
                                                                        self.world)]
        self.consumer.assign(tps)
        self.offsets.consumer = self.consumer
        for tp in tps:
            if tp in self.offsets.applied:
                self.consumer.seek(tp, self.offsets.applied[tp])
            else:
                if self.offsets.start == "latest":
                    self.consumer.seek_to_end(tp)
                else:
                    self.consumer.seek_to_beginning(tp)
                off = self.consumer.position(tp)
                self.offsets.applied[tp] = self.offsets.consumed[tp] = off
        self.offsets.assigned_at = time.monotonic()
        log.info("rank %d of %d reads %s", self.rank, self.world, [tp_name(t) for t in tps])
        self.producer = ConfirmedProducer(KafkaProducer(
            bootstrap_servers=self.s.kafka.bootstrap, acks="all", retries=5, linger_ms=5,
            max_block_ms=10_000))

    def _partitions(self) -> list[int]:
        assert self.consumer is not None
        deadline = time.monotonic() + 30
        while True:
            parts = self.consumer.partitions_for_topic(self.c.topic)
            if parts:
                if len(parts) < self.world and self.rank == 0:
                    log.warning("topic %s has %d partitions for %d ranks: %d ranks stay idle",
                                self.c.topic, len(parts), self.world, self.world - len(parts))
                return sorted(parts)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.c.topic!r} not found")
            self.consumer.poll(timeout_ms=200)  # refreshes metadata

    def close(self) -> None:  # rank 0 holds the job's lease
        close_trainer_io(self.lease, self.rank == 0, self.consumer, self.producer,
                         self.publisher)

    # ---------------------------------------------------------------- one round
    def stop(self) -> None:
        self._stop = True

    def train_queue(self) -> int:
        """Every rank: train on its whole queue in lock-step micro-batches (collective)."""
        parts = self.offsets.take()
        joined = wire.EventBatch.concat(parts) if parts else None
        n = 0 if joined is None else len(joined)
        size = max(1, -(-self.s.trainer.batch_events // self.world))  # a step: one process's
        mine = -(-n // size)
        steps = int(self.group.max(torch.tensor([mine], dtype=torch.int64))[0])
        for i in range(steps):
            if joined is not None and i < mine:
                batch = _rows(joined.batch, i * size, (i + 1) * size)
            else:
                batch = empty_batch(self.c.schema)
            total = int(self.group.sum(torch.tensor([len(batch)], dtype=torch.int64))[0])
            self.learner.step(batch, total)
        if joined is not None:
            self.stats.events_applied += n
            self.stats.events_checksum = wire.add_checksums(
                self.stats.events_checksum, wire.event_id_checksum(joined.event_ids))
            self.stats.last_applied_at = time.perf_counter()
        self.offsets.commit()
        return n

    def totals(self) -> tuple[int, int, int, dict[str, int]]:
        """(events applied, checksum, invalid, offsets) over every rank (collective)."""
        got: list[Any] = [None] * self.world
        dist.all_gather_object(got, (self.stats.events_applied, self.stats.events_checksum,
                                     self.stats.events_invalid, self.offsets.named()))
        applied = sum(g[0] for g in got)
        checksum = 0
        for g in got:
            checksum = wire.add_checksums(checksum, g[1])
        offsets: dict[str, int] = {}
        for g in got:
            offsets.update(g[3])
        return applied, checksum, sum(g[2] for g in got), offsets

    def publish(self, full: bool = False) -> None:
        """A new version from every rank's shard (collective)."""
        assert self.publisher is not None
        counts = self.totals()
        if self.rank == 0:
            current = self.publisher.current_version()
            if current is not None and current.version > self.version:
                self.version = current.version
        top = self.group.max(torch.tensor([self.version], dtype=torch.int64))
        self.version = int(top[0]) + 1
        # The record's metrics are the job's: every rank's rows (each rank keeps its newest
        # `metrics_window`, so the window is that many of each rank's rows) and throughput.
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (self.learner.metrics.state(),
                                       float(self.learner.samples_per_s or 0.0)))
        job = SimpleNamespace(metrics=StreamMetrics.merge([p[0] for p in parts]),
                              samples_per_s=sum(p[1] for p in parts))
        record = version_record(self.c, version=self.version, policy=self.policy,
                                learner=job, counts=counts[:3], offsets=counts[3], lag=None,
                                window=max(1, self.s.trainer.metrics_window) * self.world)
        record.metrics["ranks"] = self.world
        blob = wire.dense_to_bytes({k: v.cpu() for k, v in self.net.state_dict().items()}) \
            if self.rank == 0 else b""
        self.publisher.publish(self.policy, blob, self.version, full,
                               record if self.rank == 0 else None)
        self.stats.versions_published += 1

    def _agree(self, flags: list[int]) -> list[int]:
        return [int(v) for v in self.group.max(torch.tensor(flags, dtype=torch.int64))]

    def run(self) -> TrainerStats:
        if self.consumer is None:
            self.connect()
        try:
            self._run_loop()
        finally:
            self.close()
        return self.stats

    def _run_loop(self) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        last_pub = last_ckpt = last_event = now
        ckpt_events = self.stats.events_applied
        self.publish(full=True)
        while True:
            records = self.consumer.poll(timeout_ms=100)
            now = time.monotonic()
            if self.rank == 0 and self.lease is not None and self.lease.due():
                self.lease.renew()
            if records and ingest(records, book=self.offsets, schema=self.c.schema,
                                  producer=self.producer, stats=self.stats):
                last_event = now
            idle = int(self.c.idle_exit_s is not None
                       and now - last_event >= self.c.idle_exit_s)
            pub = int(now - last_pub >= self.s.trainer.publish_interval_s)
            ckpt = int(now - last_ckpt >= self.s.trainer.checkpoint_interval_s or (
                self.s.trainer.checkpoint_every_events > 0
                and self.stats.events_applied - ckpt_events
                >= self.s.trainer.checkpoint_every_events))
            queued = self.offsets.queued_events()
            # max over ranks: stop, publish, checkpoint, not idle, events queued
            stop, pub, ckpt, busy, any_queued = self._agree(
                [int(self._stop), pub, ckpt, 1 - idle, int(queued > 0)])
            total = int(self.group.sum(torch.tensor(
                [self.stats.events_applied + queued], dtype=torch.int64))[0])
            if any_queued:
                self.train_queue()
            if pub:
                self.publish()
                last_pub = time.monotonic()
            if ckpt:  # only when some rank applied events since the last one
                if self._agree([int(self.stats.events_applied != ckpt_events)])[0]:
                    self.checkpoint()
                ckpt_events = self.stats.events_applied
                last_ckpt = time.monotonic()
            if stop or not busy or (self.c.max_events is not None
                                    and total >= self.c.max_events):
                break
        self.train_queue()
        self.checkpoint()
        self.publish()

    def result(self) -> dict[str, Any]:
        out = asdict(self.stats)
        out.update(rank=self.rank, offsets=self.offsets.named(), steps=self.learner.steps)
        return out


def _rows(batch: SparseBatch, a: int, b: int) -> SparseBatch:
    return batch if a == 0 and b >= len(batch) else batch.take(slice(a, b))
