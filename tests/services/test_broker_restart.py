"""Broker restarts in the durable local mode: tansu's s3:// engine over SeaweedFS. The broker is
SIGKILLed mid-replay and restarted on its port; the producer retries, the replay finishes
with every message acknowledged, and every acknowledged event is in the topic afterwards (read
back through the restarted broker), and the trainer applies each exactly once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from services import wire
from services.stack.infra import (
    InfraError,
    ManagedProcess,
    S3Store,
    create_topics,
    free_port,
    start_redis,
    start_seaweedfs,
    start_tansu,
    wait_until,
)
from services.stack.replay import ReplayStats, replay_dataset
from services.trainer.loop import StreamTrainer, TrainerConfig
from storage.datasets.spec import open_dataset
from storage.settings import Settings

SPEC = "synthetic:events=6000,fields=3,vocab=800,seed=12"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Store]:
    proc, store = start_seaweedfs(tmp_path / "weed", log_dir=tmp_path / "logs")
    try:
        yield store
    finally:
        proc.stop()


def _read_all(bootstrap: str, topic: str, partitions: int, expect: int,
              strict: bool = True) -> list[bytes]:
    """Every message of `topic` from the start: at least `expect` of them (with `strict`,
    AssertionError otherwise; without, what the log holds once nothing more arrives)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values: list[bytes] = []
    per_partition = dict.fromkeys(range(partitions), 0)

    def done() -> bool:
        for tp, msgs in consumer.poll(timeout_ms=300).items():
            values.extend(m.value for m in msgs)
            per_partition[tp.partition] += len(msgs)
        if len(values) >= expect:
            return True
        ends = [consumer.highwater(tp) for tp in tps]  # known once a fetch has answered
        return not strict and None not in ends and all(
            consumer.position(tp) >= end for tp, end in zip(tps, ends, strict=True))

    try:
        try:
            wait_until(done, 60, f"{expect} messages read back")
        except InfraError as exc:
            if not strict:
                return values
            ends = {tp.partition: consumer.highwater(tp) for tp in tps}
            raise AssertionError(f"{exc}: read {per_partition} per partition, "
                                 f"positions {[consumer.position(tp) for tp in tps]}, "
                                 f"highwater {ends}") from None
        consumer.poll(timeout_ms=500)  # anything past `expect` (duplicates) shows up too
    finally:
        consumer.close()
    return values


def test_durable_broker_restart_loses_no_acknowledged_event(s3: S3Store, tmp_path: Path
                                                            ) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    broker: ManagedProcess = start_tansu(port=port, log_dir=logs, s3=s3)
    store = start_redis(log_dir=logs)
    topic = "events-durable"
    try:
        create_topics(broker.address, {topic: 2, wire.DLQ_TOPIC: 1})
        settings = Settings(kafka_bootstrap=broker.address, redis_url=store.url,
                            checkpoint_dir=tmp_path / "ckpt", publish_interval_s=0.5,
                            trainer_threads=1, kafka_max_poll_interval_ms=3000)
        acked = [0]
        replayed: list[ReplayStats] = []
        producer = threading.Thread(target=lambda: replayed.append(replay_dataset(
            settings, SPEC, topic=topic, batch_events=50, rate=2000,
            progress=lambda n: acked.__setitem__(0, acked[0] + n))))
        producer.start()
        wait_until(lambda: acked[0] >= 2000, 30, "replay under way")
        at_kill = acked[0]
        broker.proc.send_signal(signal.SIGKILL)  # a crash, not a shutdown
        broker.stop()
        broker = start_tansu(port=port, log_dir=logs, s3=s3)
        producer.join(timeout=120)
        assert not producer.is_alive()
        sent = replayed[0]
        total = len(open_dataset(SPEC))  # type: ignore[arg-type]
        assert sent.events == total and sent.failed_messages == 0

        values = _read_all(broker.address, topic, 2, sent.messages, strict=False)
        schema = open_dataset(SPEC).schema
        ids = [e for v in values for e in wire.read_arrow(v, schema)[0].event_ids]
        distinct = set(ids)
        lost = sorted(set(range(total)) - {int(i.rsplit(":", 1)[1]) for i in distinct})
        assert not lost, (f"{len(lost)} acknowledged events lost (broker killed after "
                          f"{at_kill} acknowledged): {lost[:5]}..{lost[-5:]}")
        assert len(distinct) == total
        assert wire.event_id_checksum(sorted(distinct)) == sent.checksum
        duplicates = len(ids) - len(distinct)  # a retried send the broker had already kept
        print(f"\nbroker SIGKILLed after {at_kill} of {total} events sent, restarted; "
              f"{len(values)} messages read back, {duplicates} duplicate events (retries), "
              f"{sent.resent_messages} messages re-sent (acknowledged without an offset)")

        stats = StreamTrainer(settings, TrainerConfig(
            model="durable1", policy="fiited:dim=16,budget=0.5,interval=10",
            schema=open_dataset(SPEC).schema, topic=topic, idle_exit_s=3.0)).run()
        assert stats.events_applied == len(ids)  # what the log holds, each applied once
    finally:
        broker.stop()
        store.stop()
