"""The packed embedding record: the value of an ID's field in its bucket hash (buckets.py).

    uint32 LE  chunk mask: bit j set = chunk j stored
    float32 LE values of the stored chunks only, in position order (chunk j has widths[j]
               values; widths come from the version record, versions.py)

A record of mask 0 is never written: an ID that lost all chunks is deleted instead.

    pack_records(masks uint32[N], values float32[N, D], widths) -> [bytes] * N
    unpack_records([bytes | None] * N, widths) -> (float32[N, D] zero-padded, found bool[N])
    pack_export(export, n_buckets) -> PackedExport   # the writes of a publish, per bucket
    pack_buckets(export, n_buckets) -> PackedBuckets # the same as a few byte strings a bucket
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.wire.buckets import bucket_of, field_numbers, hash_fields, joined_names


def _column_mask(masks: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """uint32[N] chunk masks -> bool[N, D]: which of the D values are stored."""
    k = len(widths)
    bits = (masks.astype(np.uint32)[:, None] >> np.arange(k, dtype=np.uint32)) & 1
    return np.repeat(bits.astype(bool), widths, axis=1)


def pack_records(masks: np.ndarray, values: np.ndarray, widths: tuple[int, ...]) -> list[bytes]:
    """N packed records: masks uint32[N], values float32[N, D] -> [bytes] (the module's format).
    The list is cut from `packed_blob`'s one buffer."""
    blob, ends = packed_blob(masks, values, widths)
    starts = np.r_[0, ends][:-1]
    mv = memoryview(blob)
    return [bytes(mv[a:b]) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def packed_blob(masks: np.ndarray, values: np.ndarray,
                widths: tuple[int, ...]) -> tuple[bytes, np.ndarray]:
    """N packed records end to end, and int64[N] the end of each in the blob.

    Vectorised: one [N, 1 + D] uint32 matrix (mask word, then the values' bits) is filtered
    by a keep mask in row-major order, which lays the records end to end."""
    masks = np.asarray(masks, np.uint32)
    values = np.ascontiguousarray(values, np.float32)
    n = masks.shape[0]
    if n == 0:
        return b"", np.zeros(0, np.int64)
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
    return words[keep].tobytes(), np.cumsum(keep.sum(axis=1) * 4)


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
    # an ID evicted and admitted again since the last export is set, not deleted
    gone = ~np.isin(field_numbers(del_f, del_k), field_numbers(set_f, set_k))
    del_f, del_k = del_f[gone], del_k[gone]
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


@dataclass
class PackedBuckets:
    """An export as one write per touched bucket (services/trainer/publisher.py's bucket
    script), each a few byte strings instead of a Python object per record: for bucket
    `buckets[i]`, `names[i]` its set names (decimal, each followed by a space), `lengths[i]`
    their records' lengths (uint32 LE), `records[i]` the records end to end, `deletes[i]` the
    names to delete (decimal, space-separated). `set_numbers` / `set_sizes` / `del_numbers`:
    the same names as integers (buckets.field_numbers) and sizes, for the writer's books."""

    buckets: list[int]
    names: list[bytes]
    lengths: list[bytes]
    records: list[bytes]
    deletes: list[bytes]
    changes: list[int]  # sets + deletes per bucket
    set_numbers: np.ndarray  # int64[S]
    set_sizes: np.ndarray  # int64[S]
    del_numbers: np.ndarray  # int64[X]
    entries_written: int
    entries_deleted: int
    record_bytes: int
    max_record_bytes: int


def _last_unique(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the last occurrence of each distinct value, the distinct values sorted):
    two (field, ID) pairs can spell one name, and Redis keeps the last write of it. Sorts
    (numpy's hashing unique was slower than a sort at these sizes)."""
    order = np.argsort(numbers, kind="stable")
    ordered = numbers[order]
    last = np.ones(len(numbers), bool)
    last[:-1] = ordered[1:] != ordered[:-1]  # stable: the last of equal values is latest
    return np.sort(order[last]), ordered[last]


def _in_sorted(values: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """bool[N]: which of `values` occur in the sorted `ordered`."""
    pos = np.searchsorted(ordered, values)
    hit = pos < len(ordered)
    hit[hit] = ordered[pos[hit]] == values[hit]
    return hit


def pack_buckets(export: Any, n_buckets: int) -> PackedBuckets:
    """models.policy.EmbeddingExport -> PackedBuckets over `n_buckets` buckets: entries with
    a stored chunk are set, the rest and the evicted ones deleted; a name both set and
    deleted (an ID evicted and admitted again since the last export) is set, not deleted.
    No per-record Python: one sort by bucket, one blob of records, one of names."""
    masks = np.asarray(export.masks, np.uint32)
    fields, keys = np.asarray(export.fields, np.int64), np.asarray(export.keys, np.int64)
    live = masks != 0
    numbers = field_numbers(fields, keys)
    rows, set_sorted = _last_unique(numbers[live])
    rows = np.flatnonzero(live)[rows]
    set_num = numbers[rows]
    set_b = bucket_of(fields[rows], keys[rows], n_buckets)
    del_f = np.concatenate([fields[~live], np.asarray(export.deleted_fields, np.int64)])
    del_k = np.concatenate([keys[~live], np.asarray(export.deleted_keys, np.int64)])
    del_num = field_numbers(del_f, del_k)
    gone = np.flatnonzero(~_in_sorted(del_num, set_sorted))
    first, _ = _last_unique(del_num[gone])
    del_num = del_num[gone][first]
    del_b = bucket_of(del_f[gone][first], del_k[gone][first], n_buckets)
    order = np.argsort(set_b, kind="stable")
    set_num, set_b, rows = set_num[order], set_b[order], rows[order]
    blob, rec_ends = packed_blob(masks[rows], np.asarray(export.values)[rows],
                                 tuple(export.widths))
    sizes = np.diff(np.r_[0, rec_ends])
    names, name_ends = joined_names(set_num)
    d_order = np.argsort(del_b, kind="stable")
    del_num, del_b = del_num[d_order], del_b[d_order]
    dnames, dname_ends = joined_names(del_num)
    touched = np.union1d(set_b, del_b)
    s_cut = np.searchsorted(set_b, touched, side="right")
    d_cut = np.searchsorted(del_b, touched, side="right")
    s_lo, d_lo = np.r_[0, s_cut][:-1], np.r_[0, d_cut][:-1]

    def ends_at(ends: np.ndarray, i: np.ndarray) -> list[int]:
        return np.r_[0, ends][i].tolist()

    rec_a, rec_b = ends_at(rec_ends, s_lo), ends_at(rec_ends, s_cut)
    nam_a, nam_b = ends_at(name_ends, s_lo), ends_at(name_ends, s_cut)
    del_a, del_z = ends_at(dname_ends, d_lo), ends_at(dname_ends, d_cut)
    lens = sizes.astype("<u4").tobytes()
    rec, nam, dnm = memoryview(blob), memoryview(names), memoryview(dnames)
    sl, dl = s_lo.tolist(), d_lo.tolist()
    sc, dc = s_cut.tolist(), d_cut.tolist()
    return PackedBuckets(
        buckets=touched.tolist(),
        names=[bytes(nam[a:b]) for a, b in zip(nam_a, nam_b, strict=True)],
        lengths=[lens[4 * a:4 * b] for a, b in zip(sl, sc, strict=True)],
        records=[bytes(rec[a:b]) for a, b in zip(rec_a, rec_b, strict=True)],
        deletes=[bytes(dnm[a:b]) for a, b in zip(del_a, del_z, strict=True)],
        changes=[(b - a) + (z - y) for a, b, y, z in zip(sl, sc, dl, dc, strict=True)],
        set_numbers=set_num, set_sizes=sizes, del_numbers=del_num,
        entries_written=len(set_num), entries_deleted=len(del_num),
        record_bytes=int(sizes.sum()), max_record_bytes=int(sizes.max(initial=0)))


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
