"""The Redis key layout: where serving finds what the trainer publishes for model M.

M is a model name (names.py: 1..64 of [A-Za-z0-9_.-], so no ':', '{' or '}' inside). Literal
braces are Redis Cluster hash tags: a model's metadata shares the slot of tag `{M}` (so the
publisher's fenced commit script and the lease see one slot), each embedding bucket B has its
own tag `{M:B}` (so all generations of a bucket share a slot: a copy-on-write COPY is legal).

    chunkrec:models                      set of model names
    chunkrec:{M:B}:emb:G                 bucket B of generation G: a hash (buckets.py) of
                                         packed embedding records (records.py)
    chunkrec:{M}:manifest:V              uint64 LE [n_buckets]: the generation of each
                                         bucket in version V (0 = empty bucket, no key)
    chunkrec:{M}:dense:V                 torch.save bytes of the network's state_dict
    chunkrec:{M}:version                 JSON model version record (versions.py: ModelVersion)
    chunkrec:M:versions                  pub/sub channel; message = the version number (ASCII)
    chunkrec:{M}:owner                   "TOKEN HOST PID" of the trainer owning M (a lease with
                                         a TTL; services/trainer/lease.py)
    chunkrec:{M}:fence                   the highest fencing token issued for M (INCR)

Format 2 (wire_version 2). Format 1 kept one string key per ID (`chunkrec:M:emb:FIELD:ID`)
overwritten in place, under `chunkrec:M:version`; format-2 readers do not see it, and a
trainer restart republishes a model in format 2 (leftover format-1 keys are inert).

    bucket_key("m", 7, 5) -> "chunkrec:{m:7}:emb:5"
"""

from __future__ import annotations

KEY_PREFIX = "chunkrec"
MODELS_SET = f"{KEY_PREFIX}:models"


def _meta(model: str) -> str:
    return f"{KEY_PREFIX}:{{{model}}}"


def bucket_key(model: str, bucket: int, generation: int) -> str:
    return f"{KEY_PREFIX}:{{{model}:{int(bucket)}}}:emb:{int(generation)}"


def bucket_pattern(model: str) -> str:
    """SCAN MATCH pattern of every bucket key of `model` (all generations)."""
    return f"{KEY_PREFIX}:{{{model}:*}}:emb:*"


def manifest_key(model: str, version: int) -> str:
    return f"{_meta(model)}:manifest:{int(version)}"


def dense_key(model: str, version: int) -> str:
    return f"{_meta(model)}:dense:{int(version)}"


def version_key(model: str) -> str:
    return f"{_meta(model)}:version"


def owner_key(model: str) -> str:
    return f"{_meta(model)}:owner"


def fence_key(model: str) -> str:
    return f"{_meta(model)}:fence"


def versions_channel(model: str) -> str:
    return f"{KEY_PREFIX}:{model}:versions"
