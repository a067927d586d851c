"""The trainer loop's pacing (services/trainer/pacing.py): publishing takes at most its share
of the time, and a poll takes only what trains well within Kafka's poll interval."""

from __future__ import annotations

import math

import pytest

from services.trainer.pacing import PublishPacer, poll_records


def test_publishing_that_cannot_keep_up_is_spread_out() -> None:
    pacer = PublishPacer(interval_s=2.0, max_share=0.25, now=100.0)
    assert not pacer.due(101.9) and pacer.due(102.0)
    pacer.published(102.0, 102.1)  # a quick publish: the interval rules
    assert not pacer.due(104.0) and pacer.due(104.1)
    pacer.published(104.1, 108.1)  # 4 s of publishing: 12 s more of other work first
    assert not pacer.due(120.0) and pacer.due(120.1)
    busy = 4.0 / (120.1 - 104.1)
    assert busy == pytest.approx(0.25)
    free = PublishPacer(interval_s=2.0, max_share=1.0, now=0.0)  # no limit: the interval only
    free.published(2.0, 6.0)
    assert free.due(8.0) and not free.due(7.9)
    with pytest.raises(ValueError):
        PublishPacer(interval_s=2.0, max_share=0.0, now=0.0)


def test_a_poll_takes_what_trains_within_a_quarter_of_the_poll_interval() -> None:
    # 6k samples/s (one CPU core), 4096-event messages, 5 s interval: 1 message (~0.7 s)
    assert poll_records(6_000, 4096, 5.0, cap=64) == 1
    # 40k samples/s (a GPU): 50k events = 12 messages
    assert poll_records(40_000, 4096, 5.0, cap=64) == 12
    assert poll_records(1e9, 200, 5.0, cap=64) == 64  # never past the cap
    assert poll_records(10, 4096, 5.0, cap=64) == 1  # never none
    assert poll_records(math.nan, 4096, 5.0, cap=64) == 1  # no rate yet: one message
    assert poll_records(6_000, math.nan, 5.0, cap=64) == 1


def test_the_share_is_a_setting_with_bounds() -> None:
    from storage.settings import Settings

    assert Settings().trainer.publish_max_share == 0.25
    assert Settings(trainer_publish_max_share=1).trainer.publish_max_share == 1.0
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ValueError):
            Settings(trainer_publish_max_share=bad)
