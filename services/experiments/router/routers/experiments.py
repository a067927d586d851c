"""Experiment admin (X-API-Key required): create, read, start, stop, change weights.

    POST /v1/experiments                      ExperimentCreate -> ExperimentOut (draft)
    GET  /v1/experiments/{id}                 -> ExperimentOut
    POST /v1/experiments/{id}/start | /stop   -> ExperimentOut
    PUT  /v1/experiments/{id}/weights         WeightsUpdate -> ExperimentOut (next phase)
    PUT  /v1/experiments/{id}/rules           DecisionRulesIn -> ExperimentOut (what the report
                                              decides with: services/experiments/decision.py)
    POST /v1/experiments/{id}/pre-period      PrePeriodIn -> {"units": n} (CUPED covariate)
    GET  /v1/experiments/{id}/assignment?unit_id=196  -> Assignment (the unit's arm and model
                                              in the current phase; /v1/rank never says)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from services.experiments.router.assignment import assign_arm
from services.experiments.router.deps import AdminDep, SessionDep, StateDep
from services.experiments.router.schemas import (
    MAX_UNIT_CHARS,
    ArmOut,
    Assignment,
    DecisionRulesIn,
    ExperimentCreate,
    ExperimentId,
    ExperimentOut,
    PrePeriodIn,
    WeightsUpdate,
)
from storage.db import experiments as store

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], dependencies=[AdminDep])


def _out(cfg: store.ExperimentConfig) -> ExperimentOut:
    return ExperimentOut(id=cfg.id, name=cfg.name, salt=cfg.salt, status=cfg.status,
                         phase=cfg.phase, decision_rules=cfg.decision_rules,
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


@router.put("/{experiment_id}/rules", response_model=ExperimentOut)
def rules(experiment_id: ExperimentId, body: DecisionRulesIn, session: SessionDep,
          state: StateDep) -> ExperimentOut:
    """Decision rules: the primary metric and its test, guardrails, cost metrics, alpha and
    power; the report decides with them from its next read."""
    try:
        stored = body.as_rules()
    except ValueError as exc:
        raise HTTPException(422, f"decision rules: {exc}") from exc
    return _change(store.set_decision_rules, experiment_id, session, state, stored)


@router.post("/{experiment_id}/pre-period")
def pre_period(experiment_id: ExperimentId, body: PrePeriodIn,
               session: SessionDep) -> dict[str, int]:
    """Each unit's behaviour before it entered the experiment (replaces what a unit had)."""
    units = {str(u.unit_id): (u.exposures, u.clicks) for u in body.units}
    if len(units) != len(body.units):
        raise HTTPException(422, "pre-period: a unit_id appears twice")
    try:
        n = store.record_pre_period(session, experiment_id, units)
        session.commit()
    except LookupError as exc:
        session.rollback()
        raise _fail(exc) from exc
    return {"units": n}


@router.get("/{experiment_id}/assignment", response_model=Assignment)
def assignment(experiment_id: ExperimentId, session: SessionDep,
               unit_id: Annotated[str, Query(min_length=1, max_length=MAX_UNIT_CHARS)]
               ) -> Assignment:
    """The arm that serves `unit_id` in the current phase (an int unit id hashes as its
    decimal string, as /v1/rank hashes it)."""
    try:
        cfg = store.experiment_config(session, experiment_id)
    except LookupError as exc:
        raise _fail(exc) from exc
    arm = cfg.arms[assign_arm(cfg.salt, cfg.phase, unit_id, [a.weight for a in cfg.arms])]
    return Assignment(experiment_id=cfg.id, phase=cfg.phase, unit_id=unit_id, arm=arm.name,
                      model=arm.model)
