"""Experiment admin (X-API-Key required): create, read, start, stop, change weights.

    POST /v1/experiments                      ExperimentCreate -> ExperimentOut (draft)
    GET  /v1/experiments/{id}                 -> ExperimentOut
    POST /v1/experiments/{id}/start | /stop   -> ExperimentOut
    PUT  /v1/experiments/{id}/weights         WeightsUpdate -> ExperimentOut (next phase)
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from services.router.deps import AdminDep, SessionDep, StateDep
from services.router.schemas import (
    ArmOut,
    ExperimentCreate,
    ExperimentId,
    ExperimentOut,
    WeightsUpdate,
)
from storage.db import experiments as store

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], dependencies=[AdminDep])


def _out(cfg: store.ExperimentConfig) -> ExperimentOut:
    return ExperimentOut(id=cfg.id, name=cfg.name, salt=cfg.salt, status=cfg.status,
                         phase=cfg.phase,
                         arms=[ArmOut(id=a.id, name=a.name, model=a.model, weight=a.weight,
                                      control=a.is_control) for a in cfg.arms])


def _fail(exc: Exception) -> HTTPException:
    if isinstance(exc, LookupError):
        return HTTPException(404, str(exc))
    return HTTPException(409, str(exc))


@router.post("", response_model=ExperimentOut, status_code=201)
def create(body: ExperimentCreate, session: SessionDep) -> ExperimentOut:
    try:
        exp = store.create_experiment(
            session, body.name,
            [store.ArmSpec(a.name, a.model, a.weight, a.control) for a in body.arms],
            salt=body.salt)
        session.commit()
    except store.ExperimentError as exc:
        session.rollback()
        raise HTTPException(409, str(exc)) from exc
    return _out(store.experiment_config(session, exp.id))


@router.get("/{experiment_id}", response_model=ExperimentOut)
def read(experiment_id: ExperimentId, session: SessionDep) -> ExperimentOut:
    try:
        return _out(store.experiment_config(session, experiment_id))
    except LookupError as exc:
        raise _fail(exc) from exc


def _change(op, experiment_id: int, session, state, *args) -> ExperimentOut:  # type: ignore[no-untyped-def]
    try:
        op(session, experiment_id, *args)
        session.commit()
    except (LookupError, store.ExperimentError) as exc:
        session.rollback()
        raise _fail(exc) from exc
    state.configs.invalidate(experiment_id)  # this replica at once; others within the TTL
    return _out(store.experiment_config(session, experiment_id))


@router.post("/{experiment_id}/start", response_model=ExperimentOut)
def start(experiment_id: ExperimentId, session: SessionDep, state: StateDep) -> ExperimentOut:
    return _change(store.start_experiment, experiment_id, session, state)


@router.post("/{experiment_id}/stop", response_model=ExperimentOut)
def stop(experiment_id: ExperimentId, session: SessionDep, state: StateDep) -> ExperimentOut:
    return _change(store.stop_experiment, experiment_id, session, state)


@router.put("/{experiment_id}/weights", response_model=ExperimentOut)
def weights(experiment_id: ExperimentId, body: WeightsUpdate, session: SessionDep,
            state: StateDep) -> ExperimentOut:
    """A new weight layout opens the next phase; units are re-bucketed for it."""
    return _change(store.set_weights, experiment_id, session, state, body.weights)
