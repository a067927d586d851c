"""The trainer's publishing of versions (a part of StreamTrainer, services/trainer/loop.py):
`publish()` writes a version and waits; `publish_in_background()` (CHUNKREC_TRAINER_PUBLISH_-
BACKGROUND) takes the version's content on the training thread and leaves its Redis writes to
one publishing thread while training goes on.

Why versions stay consistent in the background: the export (RedisPublisher.prepare: the entries
changed since the last version, packed), the dense weights and the version record are all taken
on the training thread, between two training steps, with the queue empty: the version holds
exactly the events its record and offsets say. The publishing thread only sends those bytes
(RedisPublisher.write: buckets under the new generation, then the one fenced commit), so what a
reader resolves through the version's manifest is that state, whatever training did since. One
version in flight: the next is prepared only after the previous write is through (its books and
manifest are the next one's base), so versions commit in order; a failed write is found then
and makes the next publish a full one (the export had cleared the dirty set). A Fenced commit
raises on the training thread when the write is collected. Checkpoints do not depend on
publishing (store, network and offsets only; the version number they keep only orders later
versions), so exactly-once is untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import redis
import torch

from models.policy import EmbeddingPolicy
from services import wire
from services.trainer.config import TrainerConfig, TrainerStats
from services.trainer.lease import Fenced
from services.trainer.offsets import OffsetBook
from services.trainer.publisher import PublishStats, RedisPublisher

log = logging.getLogger("chunkrec.trainer")


class VersionPublishing:
    """The publishing methods of StreamTrainer, which holds the state they use (declared
    here, so this part does not import the loop that mixes it in)."""

    c: TrainerConfig
    stats: TrainerStats
    offsets: OffsetBook
    publisher: RedisPublisher | None
    policy: EmbeddingPolicy
    net: torch.nn.Module
    version: int
    _need_full: bool
    _published_events: int
    _pool: ThreadPoolExecutor | None
    _pending: tuple[Future[PublishStats], int] | None
    version_record: Callable[[], wire.ModelVersion]
    keep_membership: Callable[[], None]

    def publish(self) -> bool:
        """Publish a new version (full when due) and wait until it is in Redis; False when
        Redis is unreachable or nothing changed since the last version (no event applied,
        Redis still holding it)."""
        return self._publish(background=False)

    def publish_in_background(self) -> bool:
        """As `publish`, but the Redis writes run on the publishing thread while training goes
        on: the export (the version's content, at exactly the applied events) is taken here.
        One version in flight: the next waits for it (the loop does not ask while
        `publishing()`); a failure found then makes the next publish a full one."""
        return self._publish(background=True)

    def publishing(self) -> bool:
        """A version is being written in the background."""
        return self._pending is not None and not self._pending[0].done()

    def _collect(self) -> None:
        """Wait for the version being written in the background, if any, and count it (its
        Fenced raises here, on the training thread)."""
        if self._pending is None:
            return
        future, events = self._pending
        self._pending = None
        t0 = time.perf_counter()
        try:
            st = future.result()
        except (redis.RedisError, OSError) as exc:
            log.warning("publish failed (%s); next publish is a full one", exc)
            self._need_full = True
            return
        finally:
            self.stats.add_time("publish_redis", time.perf_counter() - t0)  # waited for it
        self.stats.add_time("publish_background", st.redis_s)
        self._published(st, events)

    def _publish(self, background: bool) -> bool:
        assert self.publisher is not None and not self.offsets.queue
        self._collect()  # the job is relative to the version before it: that one is through
        try:
            if (not self._need_full and self.stats.events_applied == self._published_events
                    and self.publisher.r.exists(wire.version_key(self.c.model))):
                return False
            current = self.publisher.current_version()
            if current is None:
                self._need_full = True  # Redis empty or restarted
            elif current.version > self.version:
                self.version = current.version  # versions keep increasing across restarts
            self.version += 1
            t0 = time.perf_counter()
            blob = wire.dense_to_bytes(
                {k: v.cpu() for k, v in self.net.state_dict().items()})
            t1 = time.perf_counter()
            record = self.version_record()
            self.stats.add_time("publish_export", t1 - t0)
            self.stats.add_time("metrics", time.perf_counter() - t1)
            job = self.publisher.prepare(self.policy, self.version, self._need_full)
            self.stats.add_time("publish_export", job.export_s)
            self.stats.add_time("publish_pack", job.pack_s)
            if background:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="chunkrec-publish")
                self._pending = (self._pool.submit(self.publisher.write, job, blob, record),
                                 self.stats.events_applied)
                return True
            self.keep_membership()
            st = self.publisher.write(job, blob, record, between=self.keep_membership)
            self.stats.add_time("publish_redis", st.redis_s)
        except Fenced:
            raise
        except (redis.RedisError, OSError) as exc:
            log.warning("publish failed (%s); next publish is a full one", exc)
            self._need_full = True
            return False
        self._published(st, self.stats.events_applied)
        return True

    def _published(self, st: PublishStats, events: int) -> None:
        """Version `st.version`, holding the first `events` applied events, is in Redis."""
        self._need_full = False
        self._published_events = events
        self.stats.versions_published += 1
        log.info("published v%d (%s): %d written, %d deleted, %.0f KiB, %.2f s", st.version,
                 "full" if st.full else "incremental", st.entries_written, st.entries_deleted,
                 st.record_bytes / 1024, st.seconds)
