"""How often the trainer loop publishes, and how much it takes in per poll: two limits that keep
the work between two polls, and the share of time spent publishing, bounded.

    pacer = PublishPacer(interval_s=2.0, max_share=0.25)
    if pacer.due(now): ...publish...; pacer.published(started, ended)
    n = poll_records(samples_per_s, events_per_message, max_poll_interval_s=5, cap=64)

Publishing: a version is due `interval_s` after the last one ended, or later when publishing
cannot keep up: after a publish of s seconds the next waits at least s (1 - share) / share, so
publishing takes at most `max_share` of the trainer's time (share 1: back to back). A publish
of many new IDs into Redis can take seconds (every touched bucket copied and written); without
the limit a trainer whose publishes take longer than the interval would do little else.

Polling: Kafka drops a consumer from its group when it does not poll within
`max_poll_interval_ms` (the trainer keeps it small: tansu assigns partitions only after it),
and the rejoin costs seconds (about 3 s each with tansu, measured). The loop trains everything
a poll returned before polling again, so a poll takes only the messages that train within a
quarter of that interval at the learner's measured rate: 64 Arrow messages of 4096 events are
~40 s of training on one CPU core.
"""

from __future__ import annotations

import math


class PublishPacer:
    """See module docstring (times in seconds of one clock, e.g. time.monotonic())."""

    def __init__(self, interval_s: float, max_share: float, now: float) -> None:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self.interval_s = interval_s
        self.max_share = max_share
        self.next_at = now + interval_s

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def published(self, started: float, ended: float) -> None:
        """A publish ran from `started` to `ended`: the next is due after the interval, or
        after the wait that keeps publishing within `max_share`."""
        took = max(0.0, ended - started)
        self.next_at = ended + max(self.interval_s, took * (1 - self.max_share) / self.max_share)


def poll_records(samples_per_s: float, events_per_message: float, max_poll_interval_s: float,
                 cap: int) -> int:
    """Messages to take in one poll: those that train within a quarter of the poll interval at
    `samples_per_s`, at least 1, at most `cap`; 1 while the rate is not known yet."""
    if not (math.isfinite(samples_per_s) and samples_per_s > 0
            and math.isfinite(events_per_message) and events_per_message > 0):
        return 1
    fit = samples_per_s * max_poll_interval_s / 4 / events_per_message
    return max(1, min(cap, int(fit)))
