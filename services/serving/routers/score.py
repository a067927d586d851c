"""`POST /v1/score`: click probabilities for a batch of candidates (schemas.py shows the
bodies; scorer.py the path from items to scores)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from fastapi import APIRouter, HTTPException
from redis.exceptions import RedisError

from services.serving.deps import ScoringDep
from services.serving.embedding_reads import VersionGone, gather_embeddings
from services.serving.errors import redis_failure
from services.serving.json_route import OrjsonRoute
from services.serving.responses import OrjsonResponse
from services.serving.schemas import ScoreRequest, ScoreResponse
from services.serving.scorer import FieldError, items_to_arrays

log = logging.getLogger("chunkrec.serving")
RETRY_AFTER_S = 1
router = APIRouter(tags=["score"], route_class=OrjsonRoute)


@router.post(
    "/v1/score",
    response_model=ScoreResponse,
    response_class=OrjsonResponse,
    responses={404: {"description": "unknown model"},
               413: {"description": "request body too large"},
               422: {"description": "a field that does not fit the model (named in loc)"},
               503: {"description": "no version of the model loaded yet, Redis down, or "
                                    "saturated (Retry-After)"}},
)
async def score(req: ScoreRequest, s: ScoringDep) -> OrjsonResponse:
    """Score `items` with the newest loaded version of `model`; every item is scored by the
    same version (the one returned)."""
    settings, registry, client, metrics = s.settings, s.registry, s.redis, s.metrics
    hasher, throttle, slots = s.hasher, s.throttle, s.slots
    if len(req.items) > settings.serving.max_items:
        raise HTTPException(422, [{
            "type": "too_long", "loc": ["body", "items"],
            "msg": f"{len(req.items)} items, at most {settings.serving.max_items} per request "
                   "(CHUNKREC_SERVING_MAX_ITEMS)"}])
    model = registry.get(req.model)  # taken once: a concurrent swap does not affect us
    if model is None:
        if req.model in registry.known():
            raise HTTPException(503, f"model {req.model!r} has no version loaded yet")
        known = ", ".join(registry.known()) or "none yet"
        raise HTTPException(404, f"unknown model {req.model!r}; serving: {known}")
    try:
        if slots.locked():  # wait_for wraps the wait in a task: paid only when one waits
            await asyncio.wait_for(slots.acquire(), settings.serving.queue_wait_s)
        else:
            await slots.acquire()  # a free slot: taken without yielding
    except TimeoutError:
        metrics.shed.inc()
        raise HTTPException(503, "serving is saturated; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    try:
        try:
            ids, dense = items_to_arrays(model, req.items, req.dense, hasher)
        except FieldError as exc:
            raise HTTPException(422, exc.errors) from None
        try:
            emb, unseen, hits, misses = await gather_embeddings(model, ids, client, metrics)
        except VersionGone as exc:
            registry.wake()  # a newer version is in Redis: load it now
            throttle.log(log, "score-gone", "score: %s", exc)
            raise HTTPException(503, f"model {model.name!r} v{model.version} was superseded; "
                                "retry", headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except (RedisError, OSError) as exc:
            # the client gets a fixed phrase: redis-py's text names Redis' host and port
            kind, phrase = redis_failure(exc)
            metrics.redis_errors.labels(kind).inc()
            throttle.log(log, f"score-{kind}", "score: embeddings unavailable: %r", exc)
            raise HTTPException(503, f"embeddings unavailable: {phrase}") from None
        probs = model.predict(emb, dense)
    finally:
        slots.release()
    metrics.observe_score(model.name, len(req.items), unseen, hits, misses, len(model.cache))
    # the float32 array itself: orjson writes each score's shortest float32 form (~10 chars),
    # not the ~19 of its float64 widening, and makes no Python float per item
    return OrjsonResponse({"model": model.name, "version": model.version,
                           "scores": np.ascontiguousarray(probs, np.float32),
                           "unseen_ids": unseen})
