"""Copies model versions from Redis into the metadata database: embedding bytes (trainer and
Redis), metrics, and a histogram of live chunks per ID sampled from the packed records (the
dashboard's FIITED chart).

    record_versions(factory, redis_client, ["fiited", "fixed64"])   # -> rows inserted
    schema_of(redis_client, "fiited")     # -> DatasetSchema of its current version, or None
"""

from __future__ import annotations

import logging

import numpy as np
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services import wire
from storage.batch import DatasetSchema
from storage.db.models import Model, ModelVersionRow

log = logging.getLogger("chunkrec.versions")


def chunk_histogram(client: redis.Redis, model: str, sample: int = 2000) -> dict[str, int]:
    """{live chunks: IDs} over up to `sample` embedding records of `model`'s current version."""
    heads = wire.sample_records(client, model, sample)
    if not heads:
        return {}
    masks = wire.record_masks(heads)
    live = np.unpackbits(masks.view(np.uint8).reshape(-1, 4), axis=1).sum(axis=1)
    values, counts = np.unique(live, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def record_versions(factory: sessionmaker[Session], client: redis.Redis,
                    models: list[str]) -> int:
    """Insert the current Redis version of each model unless it is already recorded."""
    inserted = 0
    for name in models:
        blob = client.get(wire.version_key(name))
        if blob is None:
            continue
        try:
            ver = wire.ModelVersion.from_json(blob)
        except ValueError as exc:  # anything may sit under the key: skip it, keep the rest
            log.warning("%s: unreadable version record (%s)", name, str(exc)[:200])
            continue
        with factory.begin() as s:
            model = s.scalar(select(Model).where(Model.name == name))
            if model is None:
                model = Model(name=name, policy=ver.policy)
                s.add(model)
                s.flush()
            known = s.scalar(select(ModelVersionRow.id).where(
                ModelVersionRow.model_id == model.id, ModelVersionRow.version == ver.version))
            if known is not None:
                continue
            metrics = {k: float(v) for k, v in (ver.metrics or {}).items()
                       if isinstance(v, int | float) and np.isfinite(v)}
            s.add(ModelVersionRow(
                model_id=model.id, version=ver.version, policy=ver.policy,
                published_at=ver.created_at, embedding_bytes=ver.embedding_bytes,
                embedding_value_bytes=ver.embedding_value_bytes,
                redis_embedding_bytes=ver.redis_embedding_bytes,
                redis_embedding_records=ver.redis_embedding_records,
                events_applied=ver.events_applied, metrics=metrics,
                chunk_histogram=chunk_histogram(client, name) if len(ver.widths) > 1 else {}))
            inserted += 1
    return inserted


def schema_of(client: redis.Redis, model: str) -> DatasetSchema | None:
    """The schema (name, fields, dense names) `model`'s current version in Redis trains on;
    None while the model has published no version."""
    blob = client.get(wire.version_key(model))
    if not blob:
        return None
    try:
        return wire.ModelVersion.from_json(blob).schema_obj
    except ValueError as exc:
        log.warning("%s: unreadable version record (%s)", model, str(exc)[:200])
        return None
