"""The model version record and the dense blob: what a trainer publishes per version.

`chunkrec:{M}:version` holds a ModelVersion as JSON (orjson); `chunkrec:{M}:dense:{version}`
holds the network's state_dict as torch.save bytes, `manifest_key` the generation of each
embedding bucket (buckets.py). Serving rebuilds the network from the record (arch, dim,
fields), reads embeddings through the manifest and decodes them with its chunk widths.

    v = ModelVersion.from_json(redis.get(version_key(m)))   # ValueError if not a record
    net.load_state_dict(dense_from_bytes(redis.get(v.dense_key)))
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from pydantic import TypeAdapter

from storage.batch import DatasetSchema

WIRE_VERSION = 2  # 2: bucketed, copy-on-write records (redis_keys.py, buckets.py)


@dataclass
class ModelVersion:
    """What `chunkrec:{M}:version` holds (JSON): enough for serving to rebuild the network and
    decode the embeddings, and for dashboards to follow the run."""

    model: str
    version: int  # increases by one per publish, across restarts
    created_at: float  # epoch seconds
    policy: str  # policy spec
    schema: str
    fields: list[str]
    dense_names: list[str]
    arch: str  # "dlrm" | "mlp"
    dim: int  # D
    widths: list[int]  # chunk widths, summing to D
    dense_key: str
    full: bool  # full republish (True) or only the entries touched since the last version
    entries_written: int
    entries_deleted: int
    embedding_bytes: int  # policy.memory().total_bytes (values, optimizer, metadata, index)
    embedding_value_bytes: int  # policy.memory().value_bytes
    redis_embedding_bytes: int  # sum of the sizes of the live records in Redis
    redis_embedding_records: int
    events_applied: int
    events_checksum: str  # decimal uint64: sum of event_id_hashes of applied events mod 2^64
    events_invalid: int
    offsets: dict[str, int]  # "topic:partition" -> next offset to read
    buckets: int = 0  # embedding buckets (the manifest's length)
    manifest_key: str = ""  # chunkrec:{M}:manifest:V: each bucket's generation in this version
    metrics: dict[str, float | None] = field(default_factory=dict)  # auc, logloss, ... (null:
    # not defined yet)
    wire_version: int = WIRE_VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_json(cls, blob: bytes | str) -> ModelVersion:
        """Parse and type-check a record (anything may sit in Redis under the key): raises
        ValueError (orjson's or pydantic's) when it is not a version record."""
        doc = orjson.loads(blob)
        if not isinstance(doc, dict):
            raise ValueError(f"version record: expected a JSON object, got {type(doc).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        return _VERSION_ADAPTER.validate_python({k: v for k, v in doc.items() if k in known})

    @property
    def schema_obj(self) -> DatasetSchema:
        return DatasetSchema(self.schema, tuple(self.fields), tuple(self.dense_names))


_VERSION_ADAPTER = TypeAdapter(ModelVersion)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: metrics that are not defined yet are written as null."""
    return float(x) if x is not None and math.isfinite(x) else None


def dense_to_bytes(state_dict: dict[str, Any]) -> bytes:
    """torch.save bytes of a network's state_dict (what `dense_key` holds)."""
    import torch

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def dense_from_bytes(blob: bytes) -> dict[str, Any]:
    import torch

    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
