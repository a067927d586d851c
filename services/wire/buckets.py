"""Embedding buckets: how a model's packed records are grouped into Redis hashes, and the
manifest that names each bucket's generation in a version.

Redis spends ~100 bytes on a key besides its value; a record is 20-260 bytes. So records are
not keys: the record of (field f, ID k) is the field `hash_fields(f, k)` of the hash of bucket
`bucket_of(f, k, n)` (splitmix64 of k and f, mod n; n a power of two, the manifest's length).
The field name is the decimal int64 k XOR (f x 0x9E3779B97F4A7C15): Redis keeps a name that
is an integer as a 9-byte integer in the listpack (a 9-byte binary name would cost 11). Exact
within a field; two fields' IDs share a name only when k1 ^ k2 equals one 64-bit constant of
the two fields (as rare as two raw values sharing an ID in `hash_raw`). Sized `per_bucket`
records on average (`bucket_count`), a bucket stays a listpack (a record costs its bytes plus
about 12: name, lengths) while it has at most `hash-max-listpack-entries` fields and no record
over `hash-max-listpack-value` bytes (services/stack/infra.py starts Redis with 512 and 1024;
the publisher warns when a server's limits are lower than what it writes).

Versions are copy-on-write per bucket: publishing version V writes each bucket it touches
under a new generation G = V << 20 | (fencing token mod 2^20) (COPY of the bucket's previous
generation, then HSET/HDEL of the changes), and the version's manifest (uint64[n], 0 = an
empty bucket) says which generation of each bucket belongs to it. Buckets V did not touch keep
their generation, so a reader resolving everything through version V's manifest reads exactly
V, whatever a publisher is writing meanwhile or left behind when it was killed; and the
buckets whose generation changed between two manifests are exactly what changed
(`changed_buckets`). The token in G keeps a fenced-out trainer from ever writing a key the
owner's manifest names. Every bucket hash also holds the sentinel field b"" = G: a reader
that does not find it knows the generation was deleted (its version is past retention), not
that the bucket's IDs have no record.

    b = bucket_of(fields, keys, 1024)          # int64[N] in [0, 1024)
    names = hash_fields(fields, keys)          # [b"-8124...", ...] * N
    m = manifest_from_bytes(blob)              # uint64[n_buckets]
"""

from __future__ import annotations

from typing import Any

import numpy as np

GEN_TOKEN_BITS = 20
SENTINEL = b""  # the hash field holding the bucket's generation
_FIELD_MIX = np.uint64(0x9E3779B97F4A7C15)


def bucket_of(fields: np.ndarray, keys: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket of each (field, ID): fields int[N], keys int64[N] -> int64[N] in [0, n_buckets).
    splitmix64's finaliser, so that sequential IDs spread evenly."""
    if n_buckets & (n_buckets - 1) or n_buckets < 1:
        raise ValueError(f"n_buckets must be a power of two, got {n_buckets}")
    x = np.asarray(keys, np.int64).view(np.uint64) ^ (
        np.asarray(fields, np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x & np.uint64(n_buckets - 1)).astype(np.int64)


def field_numbers(fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """int64[N]: the hash field names of N (field, ID) pairs as the integers they spell."""
    with np.errstate(over="ignore"):
        return (np.asarray(keys, np.int64).view(np.uint64)
                ^ (np.asarray(fields, np.uint64) * _FIELD_MIX)).view(np.int64)


def hash_fields(fields: np.ndarray, keys: np.ndarray) -> list[bytes]:
    """The hash field names of N (field, ID) pairs (see the module docstring)."""
    return [str(x).encode() for x in field_numbers(fields, keys).tolist()]


def joined_names(numbers: np.ndarray) -> tuple[bytes, np.ndarray]:
    """int64[N] field numbers -> (b"n0 n1 ... n(N-1) ", int64[N] end of each name's bytes
    incl. its space): the decimal names end to end, built without per-name Python."""
    digits = np.asarray(numbers, np.int64).astype("S20")  # an int64 has <= 20 characters
    u = np.empty((len(digits), 21), np.uint8)
    u[:, :20] = digits.view(np.uint8).reshape(-1, 20)
    u[:, 20] = ord(" ")
    keep = u != 0  # astype pads with NULs, which no decimal holds
    return u[keep].tobytes(), np.cumsum(keep.sum(axis=1))


def bucket_count(records: int, per_bucket: int) -> int:
    """The power of two of buckets that holds `records` at about `per_bucket` each."""
    need = max(1, -(-int(records) // max(1, int(per_bucket))))
    return 1 << (need - 1).bit_length()


def generation(version: int, token: int) -> int:
    return (int(version) << GEN_TOKEN_BITS) | (int(token) & ((1 << GEN_TOKEN_BITS) - 1))


def generation_version(gen: int) -> int:
    return int(gen) >> GEN_TOKEN_BITS


def manifest_to_bytes(manifest: np.ndarray) -> bytes:
    return np.ascontiguousarray(manifest, "<u8").tobytes()


def manifest_from_bytes(blob: bytes) -> np.ndarray:
    """uint64[n_buckets]; ValueError when the length is not 8 x a power of two."""
    n = len(blob) // 8
    if len(blob) % 8 or n < 1 or n & (n - 1):
        raise ValueError(f"manifest of {len(blob)} bytes: not 8 x a power of two")
    return np.frombuffer(blob, "<u8").astype(np.uint64)


def changed_buckets(old: np.ndarray, new: np.ndarray) -> np.ndarray | None:
    """bool[n]: buckets whose generation differs between two manifests; None when the bucket
    counts differ (every bucket changed)."""
    if old.shape != new.shape:
        return None
    return old != new


def current_bucket_keys(client: Any, model: str) -> list[str]:
    """The bucket keys the current version of `model` names ([] when it has none); `client`
    a redis-py client (single or cluster)."""
    from services.wire.redis_keys import bucket_key, manifest_key, version_key
    from services.wire.versions import ModelVersion

    blob = client.get(version_key(model))
    if blob is None:
        return []
    try:
        rec = ModelVersion.from_json(blob)
        manifest = manifest_from_bytes(client.get(manifest_key(model, rec.version)) or b"")
    except ValueError:
        return []
    return [bucket_key(model, b, g) for b, g in enumerate(manifest.tolist()) if g]


def sample_records(client: Any, model: str, limit: int) -> list[bytes]:
    """Up to `limit` packed records of the current version of `model` (bucket order)."""
    out: list[bytes] = []
    for key in current_bucket_keys(client, model):
        vals = client.hgetall(key)
        out += [v for f, v in vals.items() if f != SENTINEL]
        if len(out) >= limit:
            break
    return out[:limit]


def read_current(client: Any, model: str, fields: np.ndarray,
                 keys: np.ndarray) -> list[bytes | None]:
    """The records of (field, ID) pairs in the current version of `model` (None: no record),
    through its manifest; blocking client (single or cluster). For tools and tests; serving
    reads the version it loaded (services/serving/embedding_reads.py)."""
    from services.wire.redis_keys import bucket_key, manifest_key, version_key
    from services.wire.versions import ModelVersion

    rec = ModelVersion.from_json(client.get(version_key(model)))
    manifest = manifest_from_bytes(client.get(manifest_key(model, rec.version)))
    buckets = bucket_of(fields, keys, len(manifest))
    names = hash_fields(fields, keys)
    pipe = client.pipeline(transaction=False)
    for b, name in zip(buckets.tolist(), names, strict=True):
        pipe.hget(bucket_key(model, b, int(manifest[b])), name)  # generation 0: no key
    return list(pipe.execute())
