"""`POST /v1/feedback`: a click (or an explicit non-click) on a shown item, to Kafka
`feedback`; the joiner attributes it to its exposure."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter

from services import wire
from services.router.deps import StateDep
from services.router.schemas import FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback", response_model=FeedbackResponse, status_code=202)
def feedback(req: FeedbackRequest, state: StateDep) -> FeedbackResponse:
    msg = {"request_id": req.request_id, "item": req.item, "clicked": req.clicked,
           "ts": time.time()}
    state.sink.send(wire.FEEDBACK_TOPIC, req.request_id.encode(), orjson.dumps(msg))
    return FeedbackResponse()
