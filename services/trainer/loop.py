"""The streaming trainer: Kafka events in, progressive validation, versions out to Redis,
checkpoints with the Kafka offsets.

    trainer = StreamTrainer(settings, TrainerConfig(model="fiited25", policy="fiited:...",
                                                    arch="dlrm", schema=schema))
    trainer.run()            # until stop() (SIGTERM / SIGINT), max_events, or idle_exit_s

Exactly once: the trainer never trusts Kafka's committed offsets. It keeps, per partition,
the next offset after the last *applied* event, and writes those offsets in the same atomic
checkpoint as the state they produced (store, network, optimizer, metrics, counters). On start
it restores the newest checkpoint and, when the group assigns it partitions (the rebalance
listener), seeks each one to the checkpointed offset (partitions it has no offset for start at
`trainer_start`). Events polled but not yet trained on are dropped on a revocation and
re-read after the seek. So after a crash the events after the checkpoint are applied again
exactly once, and the ones before it not again. One trainer process per model.

Per poll: every message is validated (services.wire); invalid events and malformed messages
go to `events.dlq` with their reason and original bytes, counted; valid ones are queued and
trained on in micro-batches of `trainer_batch_events` (a partial batch after
`trainer_linger_ms`). Publishes and checkpoints happen only with the queue empty, i.e. on
exactly the events the offsets say. A poll takes only the messages that train within a quarter
of `kafka_max_poll_interval_ms`, and publishing takes at most `publish_max_share` of the time
(pacing.py); TrainerStats.phases says where the time went.

The parts: offsets.py (the per-partition offsets and the queue: the protocol above), ingest.py
(validation and dead letters), versions.py (the version record), hot_start.py (`--hot-start`),
checkpoint.py, publisher.py (Redis), lease.py (one trainer per model), run.py (the process).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from models.learner import Learner
from models.metrics import StreamMetrics
from models.networks import build_model
from models.policies.registry import parse_policy
from services import wire
from services.messaging.confirmed import ConfirmedProducer
from services.messaging.redis_clients import open_sync
from services.trainer.checkpoint import CheckpointState, load_latest, write_checkpoint
from services.trainer.config import TrainerConfig, TrainerStats
from services.trainer.hot_start import hot_start_from
from services.trainer.ingest import close_trainer_io, ingest
from services.trainer.lease import Fenced, ModelLease
from services.trainer.offsets import OffsetBook
from services.trainer.pacing import PublishPacer, poll_records
from services.trainer.publisher import PublishStats, RedisPublisher
from services.trainer.publishing import VersionPublishing
from services.trainer.versions import version_record
from storage.batch import SparseBatch
from storage.settings import Settings

log = logging.getLogger("chunkrec.trainer")


class StreamTrainer(VersionPublishing):
    """See module docstring."""

    def __init__(self, settings: Settings, config: TrainerConfig) -> None:
        self.s = settings
        self.c = config
        wire.check_model_name(config.model)
        if settings.trainer.threads:
            torch.set_num_threads(settings.trainer.threads)
        schema = config.schema
        self.policy = parse_policy(config.policy, num_fields=schema.num_fields, seed=config.seed,
                                   device=settings.trainer.device)
        self.net = build_model(config.arch, schema, dim=self.policy.dim, seed=config.seed)
        self.learner = Learner(self.net, self.policy, lr=config.lr)
        # bounded: the version record reads the whole-stream and the newest-window metrics
        # only, and a checkpoint must not grow with the stream
        self.learner.metrics = StreamMetrics(retain=max(1, settings.trainer.metrics_window))
        self.stats = TrainerStats()
        self.offsets = OffsetBook(settings.trainer.start)  # applied, consumed, the queue
        self.version = 0
        self.ckpt_root = Path(settings.trainer.checkpoint_dir) / config.model
        self._stop = False
        self._need_full = True  # a full republish on start
        self._published_events = -1  # events_applied at the last publish
        self._events_seen = 0  # valid events polled by this process (pacing.poll_records)
        self._polled_at = time.monotonic()  # the consumer's last poll (keep_membership)
        self._pool: ThreadPoolExecutor | None = None  # publish_in_background's thread
        self._pending: tuple[Future[PublishStats], int] | None = None  # (its write, events)
        self.consumer: KafkaConsumer | None = None
        self.producer: ConfirmedProducer | None = None
        self.publisher: RedisPublisher | None = None
        self.lease: ModelLease | None = None
        self.fenced = False  # another trainer took the model over: write nothing more
        self._restore()

    @property
    def applied(self) -> dict[TopicPartition, int]:
        """Per partition, the next offset after the last applied event."""
        return self.offsets.applied

    # ---------------------------------------------------------------- state
    def _restore(self) -> None:
        got = load_latest(self.ckpt_root, self.policy, self.net, self.learner.optimizer,
                          metrics_retain=max(1, self.s.trainer.metrics_window))
        if got is None:
            if self.c.hot_start is not None:
                self.offsets.resume_at(hot_start_from(Path(self.c.hot_start), self.policy,
                                                      self.net, self.c))
            return
        restored, metrics = got
        st = restored.state
        if st.policy != self.c.policy or st.arch != self.c.arch or st.schema != self.c.schema.name:
            raise ValueError(
                f"{restored.path}: checkpoint of policy {st.policy!r} / arch {st.arch!r} / "
                f"schema {st.schema!r}, asked for {self.c.policy!r} / {self.c.arch!r} / "
                f"{self.c.schema.name!r}; use another --model name or checkpoint dir"
            )
        self.learner.metrics = metrics
        self.learner.rows_trained = st.rows_trained
        self.learner.batches_trained = st.batches_trained
        self.stats.events_applied = st.events_applied
        self.stats.events_checksum = st.events_checksum
        self.stats.events_invalid = st.events_invalid
        self.version = st.version
        self.offsets.resume_at(st.offsets)
        log.info("restored %s: %d events applied, offsets %s", restored.path,
                 st.events_applied, st.offsets)

    def checkpoint(self) -> Path:
        """Write a checkpoint of the applied state (the queue must be empty)."""
        assert not self.offsets.queue, "checkpoint with events queued"
        self._check_lease()  # a fenced trainer must not write over the owner's checkpoints
        if self.producer is not None:
            self.producer.flush()  # dead letters of the checkpointed offsets are durable
        state = CheckpointState(
            model=self.c.model, policy=self.c.policy, arch=self.c.arch,
            schema=self.c.schema.name, events_applied=self.stats.events_applied,
            events_checksum=self.stats.events_checksum,
            events_invalid=self.stats.events_invalid,
            offsets=self.offsets.named(),
            version=self.version, rows_trained=self.learner.rows_trained,
            batches_trained=self.learner.batches_trained,
        )
        t0 = time.perf_counter()
        path = write_checkpoint(self.ckpt_root, state, self.policy, self.net,
                                self.learner.optimizer, self.learner.metrics,
                                keep=self.s.trainer.checkpoints_kept)
        self.stats.add_time("checkpoint", time.perf_counter() - t0)
        self.stats.checkpoints += 1
        log.info("checkpoint %s: %d events applied", path.name, self.stats.events_applied)
        return path

    # ---------------------------------------------------------------- Kafka
    def connect(self) -> None:
        """Take the model's lease (LeaseHeld when another trainer owns it), then join the
        consumer group: a refused trainer never takes partitions from the owner."""
        client = open_sync(self.s.redis, socket_timeout=10)
        self.lease = ModelLease(client, self.c.model, self.s.trainer.lease_ttl_s)
        try:
            self.lease.acquire(wait_s=self.s.trainer.lease_ttl_s)  # or LeaseHeld
        except redis.RedisError as exc:
            log.warning("Redis unreachable (%s): the first publish takes the model's lease",
                        exc)
        self.publisher = RedisPublisher(client, self.c.model, self.c.schema.fields,
                                        self.s.redis.write_chunk,
                                        self.s.trainer.dense_versions_kept,
                                        lease=self.lease,
                                        per_bucket=self.s.redis.bucket_records)
        self.consumer = KafkaConsumer(
            bootstrap_servers=self.s.kafka.bootstrap,
            group_id=f"chunkrec-trainer-{self.c.model}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.s.kafka.session_timeout_ms,
            heartbeat_interval_ms=self.s.kafka.heartbeat_interval_ms,
            max_poll_interval_ms=self.s.kafka.max_poll_interval_ms,
            max_poll_records=self.s.trainer.max_poll_records,
            client_id=f"chunkrec-trainer-{self.c.model}",
        )
        self.consumer.subscribe([self.c.topic], listener=self.offsets.listener(self.consumer))
        # max_block_ms: a send that cannot get metadata gives up (and is counted) in seconds,
        # not the default minute
        self.producer = ConfirmedProducer(KafkaProducer(
            bootstrap_servers=self.s.kafka.bootstrap, acks="all", retries=5, linger_ms=5,
            max_block_ms=10_000))

    def close(self) -> None:
        if self._pending is not None:  # a version still being written: let it finish
            with contextlib.suppress(Exception):
                self._pending[0].result()
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        close_trainer_io(self.lease, not self.fenced, self.consumer, self.producer,
                         self.publisher)

    def lag(self) -> int | None:
        """Events (messages) behind the broker's high-water marks (OffsetBook.lag)."""
        return self.offsets.lag()

    # ---------------------------------------------------------------- the loop
    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler): final train, checkpoint,
        publish."""
        self._stop = True

    def ingest(self, records: dict[TopicPartition, list[Any]]) -> int:
        """Validate polled records, dead-letter the invalid ones, queue the valid ones
        (services/trainer/ingest.py). Returns the number of valid events queued."""
        assert self.producer is not None
        return ingest(records, book=self.offsets, schema=self.c.schema, producer=self.producer,
                      stats=self.stats)

    def _check_lease(self) -> None:
        """Renew the lease; raises Fenced when another trainer owns the model. Redis being
        unreachable is not a loss of the lease (the next write checks again)."""
        if self.lease is None:
            return
        try:
            self.lease.renew()
        except redis.RedisError as exc:
            log.warning("lease not renewed (%s)", exc)

    def queued_events(self) -> int:
        return self.offsets.queued_events()

    def train_queue(self) -> int:
        """Train on every queued event, in order, in micro-batches; then the applied offsets
        are the consumed ones. Returns the number of events applied."""
        if not self.offsets.queue:
            self.offsets.commit()
            return 0
        t0 = time.perf_counter()
        joined = wire.EventBatch.concat(self.offsets.take())
        size = max(1, self.s.trainer.batch_events)
        if not self.c.decode_only:
            t_steps = time.perf_counter()
            for a in range(0, len(joined), size):
                self.learner.step(_rows(joined.batch, a, a + size))
            self.stats.add_time("steps", time.perf_counter() - t_steps)
        self.stats.events_applied += len(joined)
        self.stats.events_checksum = wire.add_checksums(
            self.stats.events_checksum, wire.event_id_checksum(joined.event_ids))
        self.offsets.commit()
        self.stats.last_applied_at = time.perf_counter()
        self.stats.train_seconds += self.stats.last_applied_at - t0
        return len(joined)

    def version_record(self) -> wire.ModelVersion:
        return version_record(
            self.c, version=self.version, policy=self.policy, learner=self.learner,
            counts=(self.stats.events_applied, self.stats.events_checksum,
                    self.stats.events_invalid),
            offsets=self.offsets.named(), lag=self.lag(),
            window=max(1, self.s.trainer.metrics_window))

    def run(self) -> TrainerStats:
        """Consume, train, publish and checkpoint until stopped; then a final train,
        checkpoint and publish. Returns the counters."""
        if self.consumer is None:
            self.connect()
        try:
            self._run_loop()
        except Fenced as exc:
            self.fenced = True
            log.error("%s: stopping without a checkpoint or publish", exc)
            raise
        finally:
            self.close()
        self.stats.extra["samples_per_s"] = self.learner.samples_per_s
        return self.stats

    def keep_membership(self) -> None:
        """Inside a long publish (between its round trips): when the last poll is a third of
        `kafka_max_poll_interval_ms` old, a poll with every partition paused. Kafka drops a
        consumer that does not poll within the interval (a rejoin costs ~3 s with tansu);
        paused partitions return no record and kafka-python keeps what it fetched for them
        until they are resumed. A partition assigned by this very poll is not paused: what it
        returns is sought back, to be read again by the loop. The queue is empty meanwhile
        (publishes run only then), so a rebalance here drops nothing."""
        c = self.consumer
        if c is None or (time.monotonic() - self._polled_at
                         < self.s.kafka.max_poll_interval_ms / 3000):
            return
        parts = c.assignment()
        c.pause(*parts)
        try:
            for tp, msgs in c.poll(timeout_ms=0).items():
                if msgs:
                    c.seek(tp, msgs[0].offset)  # not taken now: the loop reads it again
        finally:
            c.resume(*(parts & c.assignment()))
            self._polled_at = time.monotonic()

    def _poll_records(self) -> int:
        """Messages the next poll takes (pacing.poll_records; all it may while only decoding)."""
        cap = self.s.trainer.max_poll_records
        if self.c.decode_only:
            return cap
        per_message = self._events_seen / self.stats.messages if self.stats.messages else math.nan
        return poll_records(self.learner.samples_per_s, per_message,
                            self.s.kafka.max_poll_interval_ms / 1000, cap)

    def _run_loop(self) -> None:
        """The loop of `run` (raises Fenced when another trainer took the model over)."""
        assert self.consumer is not None
        now = time.monotonic()
        last_ckpt = last_event = now
        pacer = PublishPacer(self.s.trainer.publish_interval_s,
                             self.s.trainer.publish_max_share, now)
        first_queued: float | None = None
        ckpt_events = self.stats.events_applied
        linger = self.s.trainer.linger_ms / 1000
        if not self.c.decode_only:
            self.publish()
        while not self._stop:
            t_poll = time.perf_counter()
            records = self.consumer.poll(timeout_ms=100, max_records=self._poll_records())
            self._polled_at = time.monotonic()
            if self.stats.first_event_at is not None:  # not the wait for the stream
                self.stats.add_time("poll", time.perf_counter() - t_poll)
            now = time.monotonic()
            if self.lease is not None and self.lease.due():
                self._check_lease()
            queued = self.ingest(records) if records else 0
            self._events_seen += queued
            if queued:
                last_event = now
                first_queued = first_queued or now
            if self.offsets.fresh:
                self.offsets.resolve_fresh()
            pub_due = pacer.due(now) and not self.publishing()  # due again once written
            ckpt_due = now - last_ckpt >= self.s.trainer.checkpoint_interval_s or (
                self.s.trainer.checkpoint_every_events > 0
                and self.stats.events_applied - ckpt_events
                >= self.s.trainer.checkpoint_every_events)
            queued = self.queued_events()
            if queued >= self.s.trainer.batch_events or pub_due or ckpt_due or (
                    queued and first_queued is not None and now - first_queued >= linger):
                self.train_queue()
                first_queued = None
            if pub_due and not self.c.decode_only:
                started = time.monotonic()
                if self.s.trainer.publish_background:
                    self.publish_in_background()
                else:
                    self.publish()
                pacer.published(started, time.monotonic())
            if ckpt_due and not self.c.decode_only:
                if self.stats.events_applied != ckpt_events:
                    self.checkpoint()
                    ckpt_events = self.stats.events_applied
                last_ckpt = time.monotonic()
            if self.c.max_events is not None and (
                    self.stats.events_applied + self.queued_events() >= self.c.max_events):
                break
            assigned_at = self.offsets.assigned_at  # the idle clock starts at an assignment
            if self.c.idle_exit_s is not None and assigned_at is not None and (
                    now - max(last_event, assigned_at) >= self.c.idle_exit_s):
                break
        self.train_queue()
        if not self.c.decode_only:
            if self.stats.events_applied != ckpt_events or not self.stats.checkpoints:
                self.checkpoint()
            self.publish()


def _rows(batch: SparseBatch, a: int, b: int) -> SparseBatch:
    return batch if a == 0 and b >= len(batch) else batch.take(slice(a, b))
