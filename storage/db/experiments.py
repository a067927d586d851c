"""Experiment lifecycle in the metadata database: create, start, stop, new weight layouts
(phases), and the frozen config a router replica assigns with.

    exp = create_experiment(s, "fiited-vs-fixed", [ArmSpec("fixed64", "fixed64", 1, True),
                                                   ArmSpec("fiited", "fiited", 1)])
    start_experiment(s, exp.id)
    set_weights(s, exp.id, {"fixed64": 1, "fiited": 3})   # phase 2: units are re-bucketed
    set_decision_rules(s, exp.id, rules.to_dict())          # services/experiments/decision.py
    record_pre_period(s, exp.id, {"196": (40, 22), ...})    # unit -> (exposures, clicks) before

A weight change never edits the running layout: it opens a new phase with its own weights, so
a unit's arm within a phase never changes, and the analysis reads one phase at a time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from storage.db.models import (
    Arm,
    ArmWeight,
    Experiment,
    ExperimentPhase,
    UnitPrePeriod,
    utcnow,
)

STATUSES = ("draft", "running", "stopped")


class ExperimentError(ValueError):
    """An operation that does not fit the experiment's state (message says why)."""


@dataclass(frozen=True)
class ArmSpec:
    name: str
    model: str
    weight: float
    is_control: bool = False


@dataclass(frozen=True)
class ArmConfig:
    id: int
    name: str
    model: str
    weight: float
    is_control: bool


@dataclass(frozen=True)
class ExperimentConfig:
    """What the router needs to assign and log: arms in id order with the current phase's
    weights."""

    id: int
    name: str
    salt: str
    status: str
    phase: int
    arms: tuple[ArmConfig, ...]
    decision_rules: dict | None = None


def _check_weights(weights: dict[str, float], names: set[str]) -> None:
    if set(weights) != names:
        raise ExperimentError(f"weights must name every arm exactly: expected {sorted(names)}, "
                              f"got {sorted(weights)}")
    if any(not (w >= 0) for w in weights.values()) or sum(weights.values()) <= 0:
        raise ExperimentError("weights must be >= 0 with a positive sum")


def _add_phase(session: Session, exp: Experiment, phase: int,
               weights: dict[str, float]) -> None:
    row = ExperimentPhase(experiment_id=exp.id, phase=phase)
    session.add(row)
    session.flush()
    for arm in exp.arms:
        session.add(ArmWeight(phase_id=row.id, arm_id=arm.id, weight=float(weights[arm.name])))
    exp.phase = phase


def create_experiment(session: Session, name: str, arms: list[ArmSpec],
                      salt: str | None = None) -> Experiment:
    """A draft experiment in phase 1. Exactly one control arm (the first when none is
    marked)."""
    if len(arms) < 2:
        raise ExperimentError("an experiment needs at least two arms")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ExperimentError(f"arm names must be unique, got {names}")
    controls = [a for a in arms if a.is_control]
    if len(controls) > 1:
        raise ExperimentError("at most one control arm")
    if session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None:
        raise ExperimentError(f"an experiment named {name!r} exists")
    _check_weights({a.name: a.weight for a in arms}, set(names))
    exp = Experiment(name=name, salt=salt or secrets.token_hex(8), status="draft", phase=1)
    session.add(exp)
    session.flush()
    for i, a in enumerate(arms):
        session.add(Arm(experiment_id=exp.id, name=a.name, model_name=a.model,
                        is_control=a.is_control or (not controls and i == 0)))
    session.flush()
    session.refresh(exp)
    _add_phase(session, exp, 1, {a.name: a.weight for a in arms})
    return exp


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise LookupError(f"experiment {experiment_id} not found")
    return exp


def start_experiment(session: Session, experiment_id: int) -> Experiment:
    exp = get_experiment(session, experiment_id)
    if exp.status != "draft":
        raise ExperimentError(f"experiment {experiment_id} is {exp.status}, not draft")
    exp.status, exp.started_at = "running", utcnow()
    return exp


def stop_experiment(session: Session, experiment_id: int) -> Experiment:
    exp = get_experiment(session, experiment_id)
    if exp.status != "running":
        raise ExperimentError(f"experiment {experiment_id} is {exp.status}, not running")
    exp.status, exp.stopped_at = "stopped", utcnow()
    return exp


def set_weights(session: Session, experiment_id: int, weights: dict[str, float]) -> Experiment:
    """Open the next phase with `weights` (arm name -> weight). A stopped experiment cannot."""
    exp = get_experiment(session, experiment_id)
    if exp.status == "stopped":
        raise ExperimentError(f"experiment {experiment_id} is stopped")
    _check_weights(weights, {a.name for a in exp.arms})
    _add_phase(session, exp, exp.phase + 1, weights)
    return exp


def experiment_config(session: Session, experiment_id: int) -> ExperimentConfig:
    exp = get_experiment(session, experiment_id)
    rows = session.execute(
        select(ArmWeight.arm_id, ArmWeight.weight).join(ExperimentPhase)
        .where(ExperimentPhase.experiment_id == exp.id,
               ExperimentPhase.phase == exp.phase)).all()
    weights = {a: w for a, w in rows}
    arms = tuple(ArmConfig(a.id, a.name, a.model_name, float(weights.get(a.id, 0.0)),
                           a.is_control) for a in sorted(exp.arms, key=lambda a: a.id))
    return ExperimentConfig(exp.id, exp.name, exp.salt, exp.status, exp.phase, arms,
                            exp.decision_rules)


def running_experiment_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Experiment.id).where(Experiment.status == "running")
                                .order_by(Experiment.id)))


def set_decision_rules(session: Session, experiment_id: int, rules: dict | None) -> Experiment:
    """Store the experiment's decision rules (already validated by the caller; None clears
    them). They may change while it runs: the report reads them when it is made."""
    exp = get_experiment(session, experiment_id)
    exp.decision_rules = rules
    return exp


def record_pre_period(session: Session, experiment_id: int,
                      units: dict[str, tuple[int, int]]) -> int:
    """Each unit's (exposures, clicks) before it entered the experiment, replacing what was
    recorded for those units. Returns the number of units written."""
    get_experiment(session, experiment_id)
    ids = list(units)
    for start in range(0, len(ids), 5000):
        chunk = ids[start:start + 5000]
        session.execute(delete(UnitPrePeriod).where(UnitPrePeriod.experiment_id == experiment_id,
                                                    UnitPrePeriod.unit_id.in_(chunk)))
        session.execute(insert(UnitPrePeriod), [
            {"experiment_id": experiment_id, "unit_id": u, "exposures": int(units[u][0]),
             "clicks": int(units[u][1])} for u in chunk])
    return len(ids)
