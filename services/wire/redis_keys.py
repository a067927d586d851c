"""The Redis key layout: where serving finds what the trainer publishes for model M.

M is a model name (names.py: 1..64 of [A-Za-z0-9_.-], so no ':' inside).

    chunkrec:models                      set of model names
    chunkrec:{M}:emb:{field}:{key}       packed embedding record (records.py; field name,
                                         decimal int64 ID)
    chunkrec:{M}:dense:{version}         torch.save bytes of the network's state_dict
                                         (versions.py: dense_to_bytes)
    chunkrec:{M}:version                 JSON model version record (versions.py: ModelVersion)
    chunkrec:{M}:versions                pub/sub channel; message = the version number (ASCII)
    chunkrec:{M}:owner                   "TOKEN HOST PID" of the trainer owning M (a lease with
                                         a TTL; services/trainer/lease.py)
    chunkrec:{M}:fence                   the highest fencing token issued for M (INCR)

    emb_keys("m", ("user", "item"), fields=[0, 1], keys=[7, -3])
        -> ["chunkrec:m:emb:user:7", "chunkrec:m:emb:item:-3"]
"""

from __future__ import annotations

import numpy as np

KEY_PREFIX = "chunkrec"
MODELS_SET = f"{KEY_PREFIX}:models"


def emb_prefix(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:emb:"


def emb_key(model: str, field_name: str, key: int) -> str:
    return f"{KEY_PREFIX}:{model}:emb:{field_name}:{int(key)}"


def emb_keys(model: str, field_names: tuple[str, ...] | list[str], fields: np.ndarray,
             keys: np.ndarray) -> list[str]:
    """Keys of N entries, vectorised: fields int[N] (index into field_names), keys int64[N]."""
    if len(keys) == 0:
        return []
    prefixes = np.array([emb_key(model, f, 0)[:-1] for f in field_names], dtype=object)
    # object-array + is elementwise str concatenation, done in C
    return (prefixes[np.asarray(fields, np.int64)] + np.asarray(keys, np.int64).astype(str)
            .astype(object)).tolist()


def dense_key(model: str, version: int) -> str:
    return f"{KEY_PREFIX}:{model}:dense:{int(version)}"


def version_key(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:version"


def owner_key(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:owner"


def fence_key(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:fence"


def versions_channel(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:versions"
