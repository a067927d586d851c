"""`POST /v1/rank`: assign the unit's arm, score the candidates with the arm's model through
the serving tier (HTTP), return them ranked, log the exposure to Kafka `exposures`.

What is sent to Kafka is checked first, since the joiner and the trainer downstream take it
as given: the unit's request budget (429 + Retry-After), the number of candidates, distinct
items (an item twice would be two outcome rows with one key), item features from the item
table when there is one, and the exposure's size (413). Serving's answer is checked too: a
4xx about the request comes back as that 4xx with serving's reason; a wrong or non-finite
score list is a serving failure (502), never an exposure. Score calls in flight are bounded:
a rank that finds no free slot within router_queue_wait_s gets 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

import httpx
import numpy as np
import orjson
from fastapi import APIRouter, HTTPException

from services import wire
from services.experiments.router.assignment import assign_arm
from services.experiments.router.deps import RouterState, StateDep, spend_budget
from services.experiments.router.schemas import RankedItem, RankRequest, RankResponse
from storage.db.experiments import ExperimentConfig

router = APIRouter(tags=["rank"])
log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # a saturated serving tier frees slots within a score timeout or so
# what an exposure holds beyond the features sent to serving, its item ids and unit id: its
# other keys, and per shown item the keys, position and score
EXPOSURE_BYTES_FIXED = 1024
EXPOSURE_BYTES_PER_ITEM = 64


def _experiment(state: StateDep, experiment_id: int | None) -> ExperimentConfig:
    if experiment_id is None:
        running = state.configs.running()
        if len(running) != 1:
            raise HTTPException(409, f"{len(running)} experiments are running; name one with "
                                "experiment_id")
        experiment_id = running[0]
    try:
        cfg = state.configs.get(experiment_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    if cfg.status != "running":
        raise HTTPException(409, f"experiment {experiment_id} is {cfg.status}, not running")
    return cfg


def _item_features(state: RouterState, req: RankRequest) -> list[dict[str, Any]]:
    """Each candidate's features merged over the context (the candidate's win)."""
    items = [c.item for c in req.candidates]
    if state.items is None:
        return [{**req.context, **c.features} for c in req.candidates]
    if any(c.features for c in req.candidates):
        raise HTTPException(422, "item features come from the router's item table; send "
                            "candidates as {\"item\": id} only")
    unknown = state.items.unknown(items)
    if unknown:
        raise HTTPException(422, f"{len(unknown)} items not in the item table: "
                            f"{', '.join(map(repr, unknown[:5]))}")
    return [{**req.context, **f} for f in state.items.features(items)]


def _check_candidates(state: RouterState, req: RankRequest) -> None:
    cap = state.settings.router.max_candidates
    if len(req.candidates) > cap:
        raise HTTPException(422, f"{len(req.candidates)} candidates, at most {cap} per rank "
                            "(CHUNKREC_ROUTER_MAX_CANDIDATES)")
    seen: set[str] = set()
    for c in req.candidates:
        if c.item in seen:
            raise HTTPException(422, f"item {c.item!r} is a candidate twice; candidates must "
                                "be distinct items")
        seen.add(c.item)


def _too_large(size: int, limit: int) -> HTTPException:
    return HTTPException(413, f"candidates x features make a {size}-byte exposure, at most "
                         f"{limit} (CHUNKREC_ROUTER_MAX_EXPOSURE_BYTES): send fewer candidates "
                         "or features")


def _serving_refusal(resp: httpx.Response) -> HTTPException:
    """Serving's 4xx about the request as the router's own, its locations moved from the
    scoring body's items to the rank body's candidates (items are sent in candidate order)."""
    try:
        detail = resp.json()["detail"]
    except (ValueError, KeyError, TypeError):
        detail = f"serving refused the candidates ({resp.status_code})"
    if isinstance(detail, list):
        for e in detail:
            loc = e.get("loc") if isinstance(e, dict) else None
            if isinstance(loc, list) and loc[:2] == ["body", "items"]:
                e["loc"] = ["body", "candidates", *loc[2:]]
    return HTTPException(resp.status_code, detail)


async def _score(state: RouterState, model: str, content: bytes, n: int) -> tuple[np.ndarray,
                                                                                  int]:
    """(scores float64[n], model version) from serving, or the HTTPException to answer."""
    settings = state.settings
    url = settings.resolved_serving_url.rstrip("/") + "/v1/score"
    try:
        await asyncio.wait_for(state.serving_slots.acquire(), settings.router.queue_wait_s)
    except TimeoutError:
        raise HTTPException(503, "the serving tier is saturated; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    try:
        resp = await state.http.post(
            url, content=content, headers={"content-type": "application/json"},
            timeout=httpx.Timeout(settings.router.score_timeout_s,
                                  pool=max(settings.router.queue_wait_s, 0.01)))
    except httpx.PoolTimeout:
        raise HTTPException(503, "the serving tier is saturated; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except httpx.HTTPError as exc:  # the type only: its message holds serving's address
        raise HTTPException(502, f"serving unreachable: {type(exc).__name__}") from None
    finally:
        state.serving_slots.release()
    if resp.status_code in (413, 422):
        raise _serving_refusal(resp)
    if resp.status_code != 200:
        log.warning("serving answered %s: %s", resp.status_code, resp.text[:300])
        raise HTTPException(502, f"serving answered {resp.status_code}")
    try:
        body = orjson.loads(resp.content)
        raw, version = body["scores"], int(body.get("version", 0))
        ok = (isinstance(raw, list) and len(raw) == n
              and all(type(x) in (float, int) and math.isfinite(x) for x in raw))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        # a NaN or missing score means a broken model version: failing the request shows up
        # in the arm's error rate, while dropping the item would quietly change the ranking
        raise HTTPException(502, f"serving returned no finite score for each of the {n} "
                            "candidates")
    return np.asarray(raw, np.float64), version


@router.post("/v1/rank", response_model=RankResponse,
             responses={404: {"description": "unknown experiment"},
                        409: {"description": "experiment not running"},
                        413: {"description": "the exposure would be too large"},
                        422: {"description": "bad candidates (serving's reasons included)"},
                        429: {"description": "the unit's request budget is spent"},
                        502: {"description": "the serving tier failed"},
                        503: {"description": "the serving tier is saturated"}})
async def rank(req: RankRequest, state: StateDep) -> RankResponse:
    t0 = time.perf_counter()
    unit = str(req.unit_id)
    spend_budget(state, f"unit:{unit}")
    _check_candidates(state, req)
    items = _item_features(state, req)
    cfg = _experiment(state, req.experiment_id)
    arm = cfg.arms[assign_arm(cfg.salt, cfg.phase, unit, [a.weight for a in cfg.arms])]
    content = orjson.dumps({"model": arm.model, "items": [{"features": f} for f in items]})
    limit = state.settings.router.max_exposure_bytes
    # the exposure holds the shown items' features (a subset of what serving gets), their
    # ids and the unit id, each JSON-escaped as here
    bound = (len(content) + len(orjson.dumps(unit)) + EXPOSURE_BYTES_FIXED
             + sum(len(orjson.dumps(c.item)) + EXPOSURE_BYTES_PER_ITEM for c in req.candidates))
    if bound > limit:
        raise _too_large(bound, limit)
    request_id = uuid.uuid4().hex
    try:
        scores, version = await _score(state, arm.model, content, len(items))
    except HTTPException as exc:
        if exc.status_code in (502, 503):  # the arm failed the user: its error rate
            failed = wire.ExposureMsg.model_construct(
                request_id=request_id, experiment_id=cfg.id, phase=cfg.phase, arm=arm.name,
                arm_id=arm.id, model=arm.model, model_version=0, unit_id=unit, ts=time.time(),
                latency_ms=(time.perf_counter() - t0) * 1e3, shown=[])
            state.sink.send(wire.EXPOSURES_TOPIC, request_id.encode(),
                            orjson.dumps(failed.model_dump()))
        raise
    order = np.argsort(-scores, kind="stable")[: req.top_k or len(scores)]
    # the record is built unvalidated (model_construct): the joiner validates it on read and
    # dead-letters what it refuses, as it does for any producer
    shown = [wire.ShownMsg.model_construct(item=req.candidates[i].item, position=pos,
                                           score=float(scores[i]), features=items[i])
             for pos, i in enumerate(order.tolist())]
    latency_ms = (time.perf_counter() - t0) * 1e3
    exposure = wire.ExposureMsg.model_construct(
        request_id=request_id, experiment_id=cfg.id, phase=cfg.phase, arm=arm.name,
        arm_id=arm.id, model=arm.model, model_version=version, unit_id=unit, ts=time.time(),
        latency_ms=latency_ms, shown=shown)
    value = orjson.dumps(exposure.model_dump())
    if len(value) > limit:  # the bound above is meant to make this unreachable
        raise _too_large(len(value), limit)
    state.sink.send(wire.EXPOSURES_TOPIC, request_id.encode(), value)
    state.issued.add(request_id, unit, (s.item for s in shown))
    return RankResponse(request_id=request_id, experiment_id=cfg.id, phase=cfg.phase,
                        items=[RankedItem(item=s.item, position=s.position) for s in shown])
