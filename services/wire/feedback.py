"""Feedback: the Kafka topic `feedback` (router -> joiner), one JSON object per message,
key = request_id: a click (or an explicit non-click) on an item an exposure showed.

    {"request_id": "9f1c...", "item": "242", "clicked": true, "ts": 1732240003.5}

`FeedbackMsg` is the record, typed: the router builds its message from it, the joiner parses
with it (`read_feedback`, strict and bounded like exposures.py; raises BadMessage).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from services.wire.exposures import STRICT, EpochS, Item, RequestId, parse_record

FEEDBACK_TOPIC = "feedback"


class FeedbackMsg(BaseModel):
    model_config = STRICT

    request_id: RequestId
    item: Item
    clicked: bool
    ts: EpochS


def read_feedback(value: bytes | None) -> dict[str, Any]:
    """A Kafka feedback message -> its dict. Raises BadMessage."""
    return parse_record("feedback", FeedbackMsg, value).model_dump()
