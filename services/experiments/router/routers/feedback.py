"""`POST /v1/feedback`: a click (or an explicit non-click) on a shown item, to Kafka
`feedback`; the joiner attributes it to its exposure.

Feedback spends the request budget of the unit its request was ranked for (429 beyond, the
same bucket as its ranks) when this replica issued the request, and may only name an item
that request showed. Feedback on a request this replica does not know (another replica's, or
one forgotten under load) spends a budget of its own request id and goes on to the joiner,
which drops feedback without an exposure."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, HTTPException

from services import wire
from services.experiments.router.deps import StateDep, spend_budget
from services.experiments.router.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback", response_model=FeedbackResponse, status_code=202,
             responses={422: {"description": "an item the request did not show"},
                        429: {"description": "the unit's request budget is spent"}})
def feedback(req: FeedbackRequest, state: StateDep) -> FeedbackResponse:
    issued = state.issued.get(req.request_id)
    if issued is None:
        spend_budget(state, f"request:{req.request_id}")
    else:
        unit, shown = issued
        spend_budget(state, f"unit:{unit}")
        if req.item not in shown:
            raise HTTPException(422, f"item {req.item!r} was not shown in request "
                                f"{req.request_id}")
    msg = wire.FeedbackMsg.model_construct(request_id=req.request_id, item=req.item,
                                           clicked=req.clicked, ts=time.time())
    state.sink.send(wire.FEEDBACK_TOPIC, req.request_id.encode(),
                    orjson.dumps(msg.model_dump()))
    return FeedbackResponse()
