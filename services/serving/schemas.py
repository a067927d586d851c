"""Request and response bodies of the serving API (kept apart from the wire formats: these are
what HTTP clients send, services/wire/ is what the trainer writes).

    POST /v1/score
    {"model": "fiited",
     "items": [{"features": {"user": "196", "item": "242", ...}},     # raw values, hashed
               {"ids": {"user": -4417..., "item": 8815..., ...}},     # already-hashed int64
               ...],
     "dense": {"age": 0.3}}                                           # optional, every item
    -> {"model": "fiited", "version": 12, "scores": [0.61, ...], "unseen_ids": 3}

Raw feature values are hashed exactly as the trainer hashes an event's "features"
(storage.batch.hash_values of the value's string form), so a client may send either form.
Whether the fields match the model's schema is checked per request against the loaded version
(the schema is the model's, not the API's), with the same error shape pydantic gives.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from services import wire

Int64 = Annotated[StrictInt, Field(ge=wire.INT64_MIN, le=wire.INT64_MAX)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


# A union validated by pydantic-core (a Python validator per value cost ~0.3 ms a request);
# its error locs end in a branch tag, which the app's 422 handler folds (see RAW_VALUE_TAGS).
RawValue = Annotated[StrictStr, Field(max_length=wire.MAX_STRING_CHARS)] | Int64
RAW_VALUE_TAGS = frozenset({"constrained-str", "constrained-int", "str", "int"})
RAW_VALUE_MSG = f"expected a string of at most {wire.MAX_STRING_CHARS} chars or an int64"
ModelName = wire.ModelName  # the one model-name rule (services/wire/names.py)


class Item(BaseModel):
    """One candidate: exactly one of `features` (raw values) and `ids` (hashed IDs), one entry
    per field of the model's schema; `dense` overrides the request's dense values."""

    model_config = ConfigDict(extra="forbid")

    features: dict[str, RawValue] | None = Field(
        default=None, examples=[{"user": "196", "item": "242"}],
        description="field -> raw value (string or int64), hashed like the trainer's events")
    ids: dict[str, Int64] | None = Field(
        default=None, description="field -> already-hashed int64 ID")
    dense: dict[str, Finite] | None = Field(
        default=None, description="numeric features of this item (all of the schema's)")

    @model_validator(mode="after")
    def _one_of(self) -> Item:
        if (self.features is None) == (self.ids is None):
            raise ValueError("expected exactly one of 'features' and 'ids'")
        return self


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName
    items: list[Item] = Field(min_length=1, description="candidates to score (at most "
                              "CHUNKREC_SERVING_MAX_ITEMS, default 1000)")
    dense: dict[str, Finite] | None = Field(
        default=None, description="numeric features shared by every item without its own")


class ScoreResponse(BaseModel):
    model: str
    version: int = Field(description="the model version that scored every item")
    scores: list[float] = Field(description="click probability per item, in request order")
    unseen_ids: int = Field(description="distinct (field, ID) pairs of the request with no "
                            "embedding record in Redis (never trained on, or every chunk "
                            "pruned): they read as zero vectors")


class ModelStatus(BaseModel):
    version: int
    redis_version: int | None = Field(description="the newest version in Redis, as last seen")
    stale: bool = Field(description="a newer version is in Redis than the one loaded, Redis "
                        "is unreachable, or the model's version record cannot be read or "
                        "loaded (the loaded version and its cache are served)")
    age_s: float = Field(description="seconds since the loaded version was published")
    refresh_age_s: float | None = Field(
        default=None, description="seconds since the model's version record was last read "
        "and its newest version loaded; past CHUNKREC_SERVING_STALE_AFTER_S, not ready")
    refresh_error: str = Field(default="", description="why the last version check failed")
    events_applied: int


class ReadyResponse(BaseModel):
    ready: bool
    redis: bool
    models: dict[str, ModelStatus]
    detail: str = ""


class HealthResponse(BaseModel):
    status: str = "ok"
