"""`GET /v1/experiments/{id}/report`: the analysis of one phase
(services/experiments/analysis.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from services.experiments.analysis import experiment_report
from services.experiments.router.deps import SessionDep
from services.experiments.router.schemas import ExperimentId, PhaseQuery

router = APIRouter(tags=["reports"])


@router.get("/v1/experiments/{experiment_id}/report")
def report(experiment_id: ExperimentId, session: SessionDep,
           phase: PhaseQuery = None) -> dict[str, Any]:
    """Per arm: units, exposures, clicks, CTR [95% CI], difference vs control [95% CI] and
    p-value, mSPRT always-valid p-value, log loss, AUC, latency p50/p99, embedding bytes;
    the SRM check."""
    try:
        return experiment_report(session, experiment_id, phase=phase).to_dict()
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
