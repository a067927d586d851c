"""Request and response bodies of the router API (apart from the database models in
storage/db/models.py and the Kafka formats in services/wire/).

    POST /v1/rank      {"unit_id": "196", "candidates": [{"item": "242",
                        "features": {"item": "242", "genre": "Comedy"}}, ...],
                        "context": {"user": "196", ...}, "top_k": 5, "experiment_id": 1}
                    -> {"request_id": "...", "experiment_id": 1, "phase": 1,
                        "items": [{"item": "242", "position": 0}, ...]}
    POST /v1/feedback  {"request_id": "...", "item": "242", "clicked": true}

The response names neither the arm nor the model, nor gives scores or the model version
(each tells the arms apart): a client that saw its arm could re-roll its unit id until it
landed in the one it wants. Admins read a unit's arm at GET /v1/experiments/{id}/assignment.

Every string is bounded by what it meets downstream: a raw value like serving's and the
events' (wire.MAX_STRING_CHARS), a unit id and an item like their database columns
(exposures.unit_id, outcomes.item: 256 chars), an item also so that its joined event id
"exp:{request_id}:{item}" fits wire.MAX_EVENT_ID_CHARS. Strings are strict (no coercion), hold
no NUL (PostgreSQL text cannot) and no lone surrogate (not encodable as UTF-8); an int is an
int64, as serving and the trainer read it; a feature name looks like a schema field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from services import wire

# database integers: an id past int64 is a 422, not an overflow (500) in the SQL driver
DB_INT_MAX = (1 << 63) - 1
ExperimentId = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
PhaseQuery = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
Name = wire.ModelName  # an arm name follows the model-name rule too

MAX_UNIT_CHARS = wire.UNIT_ID_CHARS  # exposures.unit_id
# outcomes.item is 256 chars; the joined event id "exp:{32-hex request_id}:{item}" must fit
# MAX_EVENT_ID_CHARS whole, or two items sharing a long prefix would share an event id
MAX_ITEM_CHARS = wire.MAX_EVENT_ID_CHARS - len(wire.joined_event_id("0" * 32, ""))
MAX_FEATURES = 256  # per candidate, and in the context
FEATURE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NO_NUL = r"^[^\x00]*$"  # strict strings already refuse lone surrogates (string_unicode)


Int64 = Annotated[StrictInt, Field(ge=wire.INT64_MIN, le=wire.INT64_MAX)]
# serving's RawValue (services/serving/schemas.py), without NUL
RawValue = Annotated[StrictStr, Field(max_length=wire.MAX_STRING_CHARS, pattern=_NO_NUL)] | Int64
FeatureName = Annotated[StrictStr, Field(pattern=f"^{FEATURE_NAME.pattern}$")]
Features = Annotated[dict[FeatureName, RawValue], Field(max_length=MAX_FEATURES)]
ItemId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ITEM_CHARS, pattern=_NO_NUL)]
UnitId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_UNIT_CHARS,
                                    pattern=_NO_NUL)] | Int64
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=wire.REQUEST_ID_CHARS,
                                       pattern=_NO_NUL)]


# relative traffic weights: finite and bounded, so their sum is too (1e308 + 1e308 is inf)
Weight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


def _some_traffic(weights: list[float]) -> None:
    if not sum(weights) > 0:
        raise ValueError("weights: at least one arm needs a weight above 0")


class ArmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    model: Name = Field(description="the model (serving name) this arm ranks with")
    weight: Weight = Field(description="traffic weight (relative, 0..1e6)")
    control: bool = False


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    arms: list[ArmIn] = Field(min_length=2)
    salt: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="hash salt (default: random); keep it to reproduce buckets")

    @model_validator(mode="after")
    def _traffic(self) -> ExperimentCreate:
        _some_traffic([a.weight for a in self.arms])
        return self


class WeightsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, Weight] = Field(
        description="arm name -> weight (0..1e6), every arm; opens a new phase")

    @model_validator(mode="after")
    def _traffic(self) -> WeightsUpdate:
        _some_traffic(list(self.weights.values()))
        return self


class MetricRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["ctr", "log_loss", "latency_p99", "error_rate"]
    test: Literal["non_inferiority", "superiority"] = "non_inferiority"
    margin: float = Field(gt=0, lt=1, allow_inf_nan=False,
                          description="relative: 0.01 = 1% (superiority: the lift to plan "
                          "for); error_rate: absolute, 0.01 = one percentage point")
    direction: Literal["increase", "decrease"] | None = Field(
        default=None, description="which way is better (default: the metric's own)")


class DecisionRulesIn(BaseModel):
    """services/experiments/decision.py: DecisionRules."""

    model_config = ConfigDict(extra="forbid")

    primary: MetricRuleIn
    guardrails: list[MetricRuleIn] = Field(default_factory=list, max_length=4)
    cost: list[Literal["embedding_bytes", "redis_embedding_bytes"]] = Field(
        default_factory=lambda: ["embedding_bytes", "redis_embedding_bytes"], max_length=2)
    alpha: float = Field(default=0.05, gt=0, lt=0.5, allow_inf_nan=False)
    power: float = Field(default=0.8, ge=0.5, lt=1, allow_inf_nan=False)

    def as_rules(self) -> dict:
        """The rules as decision.DecisionRules.to_dict() stores them (ValueError: they do not
        fit together, e.g. a metric twice)."""
        from services.experiments.decision import DecisionRules

        d = self.model_dump()
        for rule in (d["primary"], *d["guardrails"]):
            rule["direction"] = rule["direction"] or ""
        return DecisionRules.from_dict(d).to_dict()


class PrePeriodUnit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_id: UnitId
    exposures: int = Field(ge=0, le=DB_INT_MAX)
    clicks: int = Field(ge=0, le=DB_INT_MAX)

    @model_validator(mode="after")
    def _clicks(self) -> PrePeriodUnit:
        if self.clicks > self.exposures:
            raise ValueError(f"unit {self.unit_id!r}: clicks ({self.clicks}) above exposures "
                             f"({self.exposures})")
        return self


class PrePeriodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    units: list[PrePeriodUnit] = Field(min_length=1, max_length=10_000, description=(
        "each unit's items shown and clicks before it entered the experiment (CUPED)"))


class ArmOut(BaseModel):
    id: int
    name: str
    model: str
    weight: float
    control: bool


class ExperimentOut(BaseModel):
    id: int
    name: str
    salt: str
    status: str
    phase: int
    arms: list[ArmOut]
    decision_rules: dict | None = None


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: ItemId
    features: Features = Field(
        default_factory=dict, description="item-level raw feature values; refused when the "
        "router has an item table (CHUNKREC_ROUTER_ITEM_TABLE), which supplies them")


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_id: UnitId = Field(
        description="who is being served: the unit the split hashes")
    candidates: list[Candidate] = Field(
        min_length=1, max_length=1000, description="distinct items (at most "
        "CHUNKREC_ROUTER_MAX_CANDIDATES, default 100)")
    context: Features = Field(default_factory=dict,
                              description="features shared by every candidate")
    top_k: int | None = Field(default=None, ge=1, le=1000,
                              description="items shown (default: all)")
    experiment_id: int | None = Field(default=None, ge=1, le=DB_INT_MAX,
                                      description="default: the only running experiment")


class RankedItem(BaseModel):
    item: str
    position: int


class RankResponse(BaseModel):
    request_id: str
    experiment_id: int
    phase: int
    items: list[RankedItem]


class Assignment(BaseModel):
    """Admin view of where a unit is served (never shown to the unit's client)."""

    experiment_id: int
    phase: int
    unit_id: str
    arm: str
    model: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    item: ItemId
    clicked: bool


class FeedbackResponse(BaseModel):
    accepted: bool = True
