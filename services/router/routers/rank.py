"""`POST /v1/rank`: assign the unit's arm, score the candidates with the arm's model through
the serving tier (HTTP), return them ranked, log the exposure to Kafka `exposures`."""

from __future__ import annotations

import time
import uuid

import httpx
import numpy as np
import orjson
from fastapi import APIRouter, HTTPException

from services import wire
from services.router.assignment import assign_arm
from services.router.deps import StateDep
from services.router.schemas import RankedItem, RankRequest, RankResponse
from storage.db.experiments import ExperimentConfig

router = APIRouter(tags=["rank"])


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


@router.post("/v1/rank", response_model=RankResponse,
             responses={404: {"description": "unknown experiment"},
                        409: {"description": "experiment not running"},
                        502: {"description": "the serving tier failed"}})
async def rank(req: RankRequest, state: StateDep) -> RankResponse:
    t0 = time.perf_counter()
    cfg = _experiment(state, req.experiment_id)
    unit = str(req.unit_id)
    arm = cfg.arms[assign_arm(cfg.salt, cfg.phase, unit, [a.weight for a in cfg.arms])]
    items = [{**req.context, **c.features} for c in req.candidates]
    url = state.settings.resolved_serving_url.rstrip("/") + "/v1/score"
    try:
        resp = await state.http.post(url, content=orjson.dumps(
            {"model": arm.model, "items": [{"features": f} for f in items]}),
            headers={"content-type": "application/json"},
            timeout=state.settings.router_score_timeout_s)
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"serving unreachable: {type(exc).__name__}") from exc
    if resp.status_code != 200:
        raise HTTPException(502, f"serving answered {resp.status_code}: {resp.text[:300]}")
    body = resp.json()
    scores = np.asarray(body["scores"], np.float64)
    order = np.argsort(-scores, kind="stable")[: req.top_k or len(scores)]
    request_id = uuid.uuid4().hex
    shown = [{"item": req.candidates[i].item, "position": pos, "score": float(scores[i]),
              "features": items[i]} for pos, i in enumerate(order.tolist())]
    latency_ms = (time.perf_counter() - t0) * 1e3
    exposure = {"request_id": request_id, "experiment_id": cfg.id, "phase": cfg.phase,
                "arm": arm.name, "arm_id": arm.id, "model": arm.model,
                "model_version": int(body.get("version", 0)), "unit_id": unit,
                "ts": time.time(), "latency_ms": latency_ms, "shown": shown}
    state.sink.send(wire.EXPOSURES_TOPIC, request_id.encode(), orjson.dumps(exposure))
    return RankResponse(request_id=request_id, experiment_id=cfg.id, phase=cfg.phase,
                        arm=arm.name, model=arm.model, model_version=exposure["model_version"],
                        items=[RankedItem(item=s["item"], score=s["score"],
                                          position=s["position"]) for s in shown])
