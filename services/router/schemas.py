"""Request and response bodies of the router API (apart from the database models in
storage/db/models.py and the Kafka formats in services/wire.py).

    POST /v1/rank      {"unit_id": "196", "candidates": [{"item": "242",
                        "features": {"item": "242", "genre": "Comedy"}}, ...],
                        "context": {"user": "196", ...}, "top_k": 5, "experiment_id": 1}
                    -> {"request_id": "...", "experiment_id": 1, "phase": 1, "arm": "fiited",
                        "model": "fiited", "model_version": 12,
                        "items": [{"item": "242", "score": 0.61, "position": 0}, ...]}
    POST /v1/feedback  {"request_id": "...", "item": "242", "clicked": true}
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

# database integers: an id past int64 is a 422, not an overflow (500) in the SQL driver
DB_INT_MAX = (1 << 63) - 1
ExperimentId = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
PhaseQuery = Annotated[int | None, Query(ge=1, le=DB_INT_MAX)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
RawValue = str | int


class ArmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    model: Name = Field(description="the model (serving name) this arm ranks with")
    weight: float = Field(ge=0, description="traffic weight (relative)")
    control: bool = False


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    arms: list[ArmIn] = Field(min_length=2)
    salt: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="hash salt (default: random); keep it to reproduce buckets")


class WeightsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(
        description="arm name -> weight, every arm; opens a new phase")


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


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: Annotated[str, Field(min_length=1, max_length=256)]
    features: dict[str, RawValue] = Field(default_factory=dict,
                                          description="item-level raw feature values")


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_id: str | int = Field(description="who is being served: the unit the split hashes")
    candidates: list[Candidate] = Field(min_length=1, max_length=1000)
    context: dict[str, RawValue] = Field(default_factory=dict,
                                         description="features shared by every candidate")
    top_k: int | None = Field(default=None, ge=1, description="items shown (default: all)")
    experiment_id: int | None = Field(default=None, ge=1, le=DB_INT_MAX,
                                      description="default: the only running experiment")


class RankedItem(BaseModel):
    item: str
    score: float
    position: int


class RankResponse(BaseModel):
    request_id: str
    experiment_id: int
    phase: int
    arm: str
    model: str
    model_version: int
    items: list[RankedItem]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=64)]
    item: Annotated[str, Field(min_length=1, max_length=256)]
    clicked: bool


class FeedbackResponse(BaseModel):
    accepted: bool = True
