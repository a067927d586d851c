"""The version record the trainer publishes with each version (wire.ModelVersion): what it
trains (policy, schema, network), what it has applied (counts, checksum, offsets) and how well
it predicts (progressive validation over the whole stream and the newest `window` rows).

    record = version_record(config, version=7, policy=policy, learner=learner,
                            counts=(applied, checksum, invalid), offsets={"events:0": 1234},
                            lag=0, window=10_000)
    # the publisher fills in the Redis side (dense key, widths, entries, record bytes)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from services import wire

if TYPE_CHECKING:
    from models.learner import Learner
    from models.policy import EmbeddingPolicy
    from services.trainer.config import TrainerConfig


def stream_metrics(learner: Learner, window: int, lag: int | None) -> dict[str, Any]:
    """AUC, log loss and NE of the stream so far and of its newest `window` rows; the lag."""
    m = learner.metrics
    run = m.running()
    return {
        "auc": wire.finite_or_none(m.auc()) if len(m) else None,
        "logloss": wire.finite_or_none(run["logloss"]),
        "ne": wire.finite_or_none(run["ne"]),
        "window_auc": wire.finite_or_none(m.auc(start=-window)) if len(m) else None,
        "window_logloss": wire.finite_or_none(m.logloss(start=-window)),
        "window_rows": min(len(m), window),
        "rows": len(m),
        "lag": lag,
        "samples_per_s": wire.finite_or_none(learner.samples_per_s),
    }


def version_record(config: TrainerConfig, *, version: int, policy: EmbeddingPolicy,
                   learner: Learner, counts: tuple[int, int, int], offsets: dict[str, int],
                   lag: int | None, window: int) -> wire.ModelVersion:
    """`counts`: (events applied, their checksum, invalid events)."""
    applied, checksum, invalid = counts
    metrics = stream_metrics(learner, window, lag)
    mem = policy.memory()
    schema = config.schema
    return wire.ModelVersion(
        model=config.model, version=version, created_at=time.time(),
        policy=config.policy, schema=schema.name, fields=list(schema.fields),
        dense_names=list(schema.dense), arch=config.arch, dim=policy.dim, widths=[],
        dense_key="", full=False, entries_written=0, entries_deleted=0,
        embedding_bytes=mem.total_bytes, embedding_value_bytes=mem.value_bytes,
        redis_embedding_bytes=0, redis_embedding_records=0,
        events_applied=applied, events_checksum=str(checksum), events_invalid=invalid,
        offsets=offsets, metrics=metrics,
    )
