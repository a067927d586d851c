"""A/B exposures: the Kafka topic `exposures` (router -> joiner), one JSON object per message,
key = request_id, written by the router for every ranked request:

    {"request_id": "9f1c...", "experiment_id": 3, "phase": 1, "arm": "fiited",
     "arm_id": 7, "model": "fiited", "model_version": 12, "unit_id": "196",
     "ts": 1732240000.12, "latency_ms": 4.1,
     "shown": [{"item": "242", "position": 0, "score": 0.61,
                "features": {"user": "196", "item": "242", ...}}, ...]}

A request the arm failed (serving unreachable, saturated or answering without a finite
score for each candidate: the router's 502 / 503) is an exposure with `shown` empty and
model_version 0: the report's error rate per arm (a served request shows at least one item).

`ExposureMsg` / `ShownMsg` are the record, typed: the router builds its message from them and
the joiner parses with them (`read_exposure`). Reading is strict (JSON true is not 1, "7" is
not 7) and bounded: ints that fit the database's 32-bit columns, finite numbers, strings as
long as their database columns, at most MAX_SHOWN items; unknown keys are dropped (a newer
router may add some). A message that fails raises BadMessage, whose text is the reason its
dead letter carries.

The joiner turns each shown item into a click event (`events`, label = clicked inside the
attribution window) with event_id `joined_event_id(request_id, item)` = "exp:{rid}:{item}".
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.wire.events import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_STRING_CHARS,
    MAX_TS_S,
)
from services.wire.names import ModelName

EXPOSURES_TOPIC = "exposures"

MAX_SHOWN = 1000  # items per exposure: the router's limit on candidates per /v1/rank
MAX_FEATURES = 256  # raw features per shown item
MAX_FEATURE_NAME_CHARS = 128
MAX_REASON_CHARS = 500  # of a BadMessage
DB_INT_MAX = (1 << 31) - 1  # the Integer columns are 32-bit on PostgreSQL
# the database columns' lengths (storage/db/models.py; tests/services/test_wire.py checks
# they agree): unit_id is 256 here, not wire's 1024 for a raw value, or PostgreSQL refuses it
REQUEST_ID_CHARS = 64  # exposures.request_id
ITEM_CHARS = 256  # outcomes.item
UNIT_ID_CHARS = 256  # exposures.unit_id

Int32 = Annotated[int, Field(ge=0, le=DB_INT_MAX)]
DbId = Annotated[int, Field(ge=1, le=DB_INT_MAX)]
EpochS = Annotated[float, Field(ge=0, lt=MAX_TS_S, allow_inf_nan=False)]
RequestId = Annotated[str, Field(min_length=1, max_length=REQUEST_ID_CHARS)]
Item = Annotated[str, Field(min_length=1, max_length=ITEM_CHARS)]
RawValue = (Annotated[str, Field(max_length=MAX_STRING_CHARS)]
            | Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)])
Features = Annotated[dict[Annotated[str, Field(min_length=1, max_length=MAX_FEATURE_NAME_CHARS)],
                          RawValue], Field(max_length=MAX_FEATURES)]
# strict: JSON true is not 1, "7" is not 7; unknown keys are dropped (newer routers may add some)
STRICT = ConfigDict(strict=True, extra="ignore")


class ShownMsg(BaseModel):
    model_config = STRICT

    item: Item
    position: Int32
    score: Annotated[float, Field(allow_inf_nan=False)]
    features: Features


class ExposureMsg(BaseModel):
    """An exposure as the router writes it (the module docstring has the format)."""

    model_config = STRICT

    request_id: RequestId
    experiment_id: DbId
    phase: Int32
    arm: Annotated[str, Field(max_length=64)] = ""
    arm_id: DbId
    model: ModelName
    model_version: Int32
    unit_id: Annotated[str, Field(max_length=UNIT_ID_CHARS)]
    ts: EpochS
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    shown: Annotated[list[ShownMsg], Field(max_length=MAX_SHOWN)]


class BadMessage(ValueError):
    """A message that cannot be joined; str() is the reason its dead letter carries."""


M = TypeVar("M", bound=BaseModel)


def parse_record(kind: str, model: type[M], value: bytes | None) -> M:
    """A Kafka message value -> the typed record `model`; raises BadMessage (reason prefixed
    with `kind`) when it is empty, too large, not JSON or not that record."""
    if value is None:
        raise BadMessage(f"{kind}: empty value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"{kind}: {len(value)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        # a location may hold a hostile dict key (any length): each part is cut short
        parts = [".".join(str(p)[:40] for p in e["loc"]) + ": " + e["msg"]
                 for e in exc.errors(include_url=False, include_input=False,
                                     include_context=False)[:4]]
        raise BadMessage(f"{kind}: " + "; ".join(parts)[:MAX_REASON_CHARS]) from None


def read_exposure(value: bytes | None) -> tuple[dict[str, Any], int]:
    """A Kafka exposure message -> (its dict, items dropped as repeats). Raises BadMessage.

    An item shown more than once keeps its first showing (list order: the router lists the
    ranking top first), so (request, item) stays the outcomes' key."""
    doc = parse_record("exposure", ExposureMsg, value).model_dump()
    seen: set[str] = set()
    shown = [s for s in doc["shown"] if not (s["item"] in seen or seen.add(s["item"]))]
    dropped = len(doc["shown"]) - len(shown)
    doc["shown"] = shown
    return doc, dropped


def joined_event_id(request_id: str, item: str) -> str:
    """The event id of a shown item's labelled event (deterministic: a re-join is a duplicate
    id, not a new event)."""
    return f"exp:{request_id}:{item}"[:MAX_EVENT_ID_CHARS]
