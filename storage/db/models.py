"""SQLAlchemy 2 models of the metadata database. Every change here is an Alembic revision
under migrations/versions.

    models           one row per model name (what trainers publish to Redis)
    model_versions   a published version: policy, embedding bytes (trainer and Redis), metrics,
                     the live-chunks-per-ID histogram sampled from Redis
    experiments      salt, status (draft | running | stopped), current phase, decision rules
                     (JSON, services/experiments/decision.py)
    arms             an experiment's arms: name, model, control flag
    experiment_phases  a traffic layout: one row per (experiment, phase)
    arm_weights      weight of each arm in each phase (a new layout = a new phase)
    exposures        one row per ranked request (unit, arm, phase, model version, latency; items
                     shown, their clicks and log loss summed)
    outcomes         one row per shown item of an exposure, written when its window closes:
                     score served, clicked inside the window, late feedback seen
    metric_points    free-form time series (name, value) per model or arm
    unit_pre_period  each unit's exposures and clicks before it entered an experiment (the
                     CUPED covariate of the report)
    joiner_outbox    Kafka messages the joiner committed with their exposures but has not yet
                     seen stored by the broker (joined events, their dead letters)
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base; `Base.metadata` is what Alembic's env.py compares against."""


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    policy: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[ModelVersionRow]] = relationship(back_populates="model")


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          index=True)
    version: Mapped[int] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(256), default="")
    published_at: Mapped[float] = mapped_column(Float)  # epoch seconds (the version record's)
    embedding_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    embedding_value_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    redis_embedding_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    redis_embedding_records: Mapped[int] = mapped_column(BigInteger, default=0)
    events_applied: Mapped[int] = mapped_column(BigInteger, default=0)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    # {"0": n, "1": n, ...}: sampled IDs per number of live chunks (FIITED)
    chunk_histogram: Mapped[dict] = mapped_column(JSON, default=dict)

    model: Mapped[Model] = relationship(back_populates="versions")


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    salt: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    phase: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # primary metric, guardrails, cost metrics, alpha, power (decision.DecisionRules.to_dict)
    decision_rules: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    arms: Mapped[list[Arm]] = relationship(back_populates="experiment", order_by="Arm.id")
    phases: Mapped[list[ExperimentPhase]] = relationship(
        back_populates="experiment", order_by="ExperimentPhase.phase")


class Arm(Base):
    __tablename__ = "arms"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               index=True)
    name: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)

    experiment: Mapped[Experiment] = relationship(back_populates="arms")


class ExperimentPhase(Base):
    __tablename__ = "experiment_phases"
    __table_args__ = (UniqueConstraint("experiment_id", "phase"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               index=True)
    phase: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    experiment: Mapped[Experiment] = relationship(back_populates="phases")
    weights: Mapped[list[ArmWeight]] = relationship(back_populates="phase",
                                                    order_by="ArmWeight.arm_id")


class ArmWeight(Base):
    __tablename__ = "arm_weights"
    __table_args__ = (UniqueConstraint("phase_id", "arm_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("experiment_phases.id", ondelete="CASCADE"),
                                          index=True)
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"))
    weight: Mapped[float] = mapped_column(Float)

    phase: Mapped[ExperimentPhase] = relationship(back_populates="weights")
    arm: Mapped[Arm] = relationship()


class Exposure(Base):
    __tablename__ = "exposures"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               index=True)
    phase: Mapped[int] = mapped_column(Integer)
    arm_id: Mapped[int] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"), index=True)
    unit_id: Mapped[str] = mapped_column(String(256), index=True)
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    ts: Mapped[float] = mapped_column(Float, index=True)  # epoch seconds at the router
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    n_shown: Mapped[int] = mapped_column(Integer, default=0)  # 0: the arm failed the request
    # sums over its outcomes, written with them: the report reads requests, not items
    clicks: Mapped[int] = mapped_column(Integer, default=0)  # clicked inside the window
    log_loss: Mapped[float] = mapped_column(Float, default=0.0)  # of the served scores


class Outcome(Base):
    __tablename__ = "outcomes"

    request_id: Mapped[str] = mapped_column(
        ForeignKey("exposures.request_id", ondelete="CASCADE"), primary_key=True)
    item: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    clicked: Mapped[bool] = mapped_column(Boolean, default=False)
    late_feedback: Mapped[int] = mapped_column(Integer, default=0)  # clicks outside the window
    ts: Mapped[float] = mapped_column(Float, index=True)  # the exposure's time


class MetricPoint(Base):
    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    arm_id: Mapped[int | None] = mapped_column(ForeignKey("arms.id", ondelete="CASCADE"),
                                               nullable=True)
    ts: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)


class UnitPrePeriod(Base):
    """A unit's behaviour before it entered the experiment: items shown and clicks. The
    report's CUPED covariate; a unit without a row had no history."""

    __tablename__ = "unit_pre_period"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    exposures: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)


class OutboxMessage(Base):
    """One Kafka message value, written in the same transaction as the rows it derives from
    and deleted once the broker stored it (a transactional outbox: see
    services/experiments/joiner.py)."""

    __tablename__ = "joiner_outbox"

    # 64-bit on PostgreSQL (ids are never reused), INTEGER on SQLite (its rowid alias)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True)
    topic: Mapped[str] = mapped_column(String(255))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    n_events: Mapped[int] = mapped_column(Integer, default=0)  # events in it (0: a dead letter)
    created_at: Mapped[float] = mapped_column(Float)  # epoch seconds
