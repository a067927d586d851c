"""The packed embedding record: the value of an ID's field in its bucket hash (buckets.py).

    uint32 LE  chunk mask: bit j set = chunk j stored
    float32 LE values of the stored chunks only, in position order (chunk j has widths[j]
               values; widths come from the version record, versions.py)

A record of mask 0 is never written: an ID that lost all chunks is deleted instead.

    pack_records(masks uint32[N], values float32[N, D], widths) -> [bytes] * N
    unpack_records([bytes | None] * N, widths) -> (float32[N, D] zero-padded, found bool[N])
    pack_export(export, n_buckets) -> PackedExport   # the writes of a publish, per bucket
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.wire.buckets import bucket_of, hash_fields


def _column_mask(masks: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """uint32[N] chunk masks -> bool[N, D]: which of the D values are stored."""
    k = len(widths)
    bits = (masks.astype(np.uint32)[:, None] >> np.arange(k, dtype=np.uint32)) & 1
    return np.repeat(bits.astype(bool), widths, axis=1)


def pack_records(masks: np.ndarray, values: np.ndarray, widths: tuple[int, ...]) -> list[bytes]:
    """N packed records: masks uint32[N], values float32[N, D] -> [bytes] (the module's format).

    Vectorised: one [N, 1 + D] uint32 matrix (mask word, then the values' bits) is filtered
    by a keep mask in row-major order, which lays the records end to end; the list is cut
    from that one buffer."""
    masks = np.asarray(masks, np.uint32)
    values = np.ascontiguousarray(values, np.float32)
    n = masks.shape[0]
    if n == 0:
        return []
    d = sum(widths)
    if values.shape != (n, d):
        raise ValueError(f"values has shape {values.shape}, expected ({n}, {d})")
    if np.any(masks >> np.uint32(len(widths))):
        raise ValueError(f"a mask has bits beyond K={len(widths)}")
    keep = np.empty((n, 1 + d), bool)
    keep[:, 0] = True
    keep[:, 1:] = _column_mask(masks, widths)
    words = np.empty((n, 1 + d), "<u4")
    words[:, 0] = masks
    words[:, 1:] = values.astype("<f4", copy=False).view("<u4")
    blob = words[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=1) * 4)
    starts = np.r_[0, ends[:-1]]
    mv = memoryview(blob)
    return [bytes(mv[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


@dataclass
class BucketWrite:
    """The changes of one bucket: set `names[i]` to `records[i]`, delete `deletes`."""

    bucket: int
    names: list[bytes]
    records: list[bytes]
    deletes: list[bytes]


@dataclass
class PackedExport:
    """An EmbeddingExport turned into per-bucket Redis writes: records of entries with stored
    chunks are set, entries without (mask 0) and evicted ones deleted."""

    buckets: list[BucketWrite]
    entries_written: int
    entries_deleted: int
    record_bytes: int
    max_record_bytes: int


def _groups(buckets: np.ndarray) -> dict[int, np.ndarray]:
    """bucket id -> indices of the entries in it (one argsort, no per-entry Python)."""
    if not len(buckets):
        return {}
    order = np.argsort(buckets, kind="stable")
    ids, starts = np.unique(buckets[order], return_index=True)
    return dict(zip(ids.tolist(), np.split(order, starts[1:]), strict=True))


def pack_export(export: Any, n_buckets: int) -> PackedExport:
    """models.policy.EmbeddingExport -> PackedExport over `n_buckets` buckets."""
    masks = np.asarray(export.masks, np.uint32)
    fields, keys = np.asarray(export.fields, np.int64), np.asarray(export.keys, np.int64)
    live = masks != 0
    records = pack_records(masks[live], np.asarray(export.values)[live], tuple(export.widths))
    set_f, set_k = fields[live], keys[live]
    del_f = np.concatenate([fields[~live], np.asarray(export.deleted_fields, np.int64)])
    del_k = np.concatenate([keys[~live], np.asarray(export.deleted_keys, np.int64)])
    set_names, del_names = hash_fields(set_f, set_k), hash_fields(del_f, del_k)
    sets = _groups(bucket_of(set_f, set_k, n_buckets))
    dels = _groups(bucket_of(del_f, del_k, n_buckets))
    out = []
    for b in sorted(sets.keys() | dels.keys()):
        s = sets.get(b, np.empty(0, np.int64)).tolist()
        d = dels.get(b, np.empty(0, np.int64)).tolist()
        out.append(BucketWrite(b, [set_names[i] for i in s], [records[i] for i in s],
                               [del_names[i] for i in d]))
    sizes = [len(r) for r in records]
    return PackedExport(out, len(records), len(del_names), sum(sizes), max(sizes, default=0))


def unpack_records(records: list[bytes | None], widths: tuple[int, ...],
                   dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Records (None = missing) -> (float32[N, D] zero-padded, found bool[N]).

    Missing records read as zeros (count them with `(~found).sum()`). Raises ValueError on a
    record whose length does not match its mask, or that holds a NaN or an infinity."""
    d = sum(widths) if dim is None else dim
    if d != sum(widths):
        raise ValueError(f"widths {widths} do not sum to D={d}")
    n = len(records)
    out = np.zeros((n, d), np.float32)
    found = np.fromiter((r is not None for r in records), bool, n)
    if not found.any():
        return out, found
    present = [r for r in records if r is not None]
    lengths = np.fromiter((len(r) for r in present), np.int64, len(present))
    if np.any(lengths % 4) or np.any(lengths < 4):
        raise ValueError("corrupt embedding record: length not a positive multiple of 4")
    words = np.frombuffer(b"".join(present), "<u4")
    ends = np.cumsum(lengths // 4)
    starts = ends - lengths // 4
    masks = words[starts]
    if np.any(masks >> np.uint32(len(widths))):
        raise ValueError(f"corrupt embedding record: mask bits beyond K={len(widths)}")
    cols = _column_mask(masks, widths)
    if not np.array_equal(cols.sum(axis=1), lengths // 4 - 1):
        raise ValueError("corrupt embedding record: length does not match its chunk mask")
    is_value = np.ones(words.shape[0], bool)
    is_value[starts] = False
    values = words[is_value].view("<f4")
    if not np.isfinite(values).all():  # would score NaN: a record no trainer writes
        raise ValueError("corrupt embedding record: a value is not finite")
    rows = np.zeros((len(present), d), np.float32)
    rows[cols] = values
    out[found] = rows
    return out, found


def record_masks(records: list[bytes | None]) -> np.ndarray:
    """uint32[N] chunk masks of records (0 for missing ones)."""
    return np.array([0 if r is None else int.from_bytes(r[:4], "little") for r in records],
                    dtype=np.uint32)
