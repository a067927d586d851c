"""The embeddings of a request: the version's cache, then Redis through the version's manifest.

    emb, unseen, hits, misses = await gather_embeddings(model, ids, redis, metrics)
    # ids int64[B, F] -> float32[B, F, D] zero-padded

The batch's B x F cells are looked up in the cache of decoded embeddings in one vectorised call
(embedding_cache.py). The distinct (field, ID) pairs it lacks (np.unique per field) are read
from their buckets (services/wire/buckets.py): each pair's bucket, that bucket's generation in
the model's manifest, one HMGET per bucket (its sentinel and the pairs' fields): on one Redis
all of them in one Lua script (one command), on a cluster in one pipeline (redis-py sends each
node its share). Every read goes
through the version's own manifest, so whatever a trainer is publishing meanwhile, or left
half-written when it was killed, a response is computed from exactly that version. Records
are unpacked by one `wire.unpack_records` call and cached; then the embeddings are one gather
of the cache's rows. A pair with no record reads as zeros (and is cached as such) and counts
as unseen; so does a pair whose record is corrupt (counted in
chunkrec_serving_corrupt_records_total, its key logged once). A bucket whose generation is
gone (its version is past the trainer's retention) raises VersionGone: nothing of another
version is substituted.
"""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from services import wire
from services.serving.metrics import ServingMetrics
from services.serving.scorer import LoadedModel

# One command for all of a request's buckets on a single Redis (a cluster gets a pipeline:
# a script may only touch one slot there). KEYS: bucket keys; ARGV[1]: the hash field names of
# all of them, bucket after bucket, separated by spaces (names are decimal integers); ARGV[2]:
# each bucket's count of names, space-separated. Two arguments rather than one per name: the
# client packs each argument of a command in Python, which cost more than the whole read.
# Returns the HMGET replies end to end (each led by the bucket's sentinel).
_READ_LUA = """
local names = {}
for name in string.gmatch(ARGV[1], '%S+') do names[#names + 1] = name end
local out, a, i = {}, 1, 0
for count in string.gmatch(ARGV[2], '%d+') do
  i = i + 1
  local n = tonumber(count)
  local got = redis.call('HMGET', KEYS[i], '', unpack(names, a, a + n - 1))
  for j = 1, n + 1 do out[#out + 1] = got[j] end
  a = a + n
end
return out
"""


class VersionGone(LookupError):
    """A bucket generation of the version being served was deleted (a newer version is
    in Redis; the registry swaps it in)."""


def missed_pairs(ids: np.ndarray, missed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (field, ID) pairs among the cells of ids int64[B, F] flagged in
    missed bool[B * F]: (fields int64[U], keys int64[U])."""
    b, nf = ids.shape
    miss = missed.reshape(b, nf)
    fields, keys = [], []
    for f in range(nf):  # F is a handful of fields; each step is vectorised over the batch
        col = ids[miss[:, f], f]
        if len(col):
            uniq = np.unique(col)
            fields.append(np.full(len(uniq), f, np.int64))
            keys.append(uniq)
    return np.concatenate(fields), np.concatenate(keys)


async def fetch_records(client: aioredis.Redis, model: LoadedModel, fields: np.ndarray,
                        keys: np.ndarray) -> list[bytes | None]:
    """The records of N distinct pairs in `model`'s version (None: no record). One pipelined
    HMGET per bucket."""
    n = len(keys)
    out: list[bytes | None] = [None] * n
    buckets = wire.bucket_of(fields, keys, len(model.manifest))
    gens = model.manifest[buckets]
    names = wire.hash_fields(fields, keys)
    idx = np.flatnonzero(gens != 0)
    if not len(idx):
        return out
    order = idx[np.argsort(buckets[idx], kind="stable")]
    uniq, starts = np.unique(buckets[order], return_index=True)
    groups = np.split(order, starts[1:])
    bucket_keys = [wire.bucket_key(model.name, b, int(model.manifest[b])) for b in uniq.tolist()]
    if isinstance(client, AsyncRedisCluster):
        pipe = client.pipeline(transaction=False)
        for key, members in zip(bucket_keys, groups, strict=True):
            pipe.hmget(key, [wire.SENTINEL, *(names[i] for i in members.tolist())])
        replies = await pipe.execute()
    else:
        joined = b" ".join([names[i] for i in order.tolist()])  # bucket after bucket
        counts = " ".join(str(len(m)) for m in groups)
        flat = await client.eval(_READ_LUA, len(bucket_keys), *bucket_keys, joined, counts)
        replies, a = [], 0
        for members in groups:
            replies.append(flat[a : a + len(members) + 1])
            a += len(members) + 1
    for key, members, vals in zip(bucket_keys, groups, replies, strict=True):
        if vals[0] is None:
            raise VersionGone(f"{key} is gone: {model.name} v{model.version} is past retention")
        for i, v in zip(members.tolist(), vals[1:], strict=True):
            out[i] = v
    return out


def _label(model: LoadedModel, f: int, k: int) -> str:
    return f"{model.name} {model.schema.fields[f]}:{k}"


def unpack_or_skip(model: LoadedModel, fields: np.ndarray, keys: np.ndarray,
                   records: list[bytes | None], metrics: ServingMetrics | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`wire.unpack_records` of the records fetched for pairs (fields, keys), a corrupt record
    read as a missing one: (float32[N, stored_dim], found bool[N]).

    The batch is unpacked in one call; only when it raises are the records checked one by one
    (the format's checks stay in services/wire/records.py), so the common path pays nothing.
    Each corrupt record is counted in `metrics`, and its pair logged once per version."""
    try:
        return wire.unpack_records(records, model.widths, model.stored_dim)
    except ValueError:
        pass
    bad: list[int] = []
    for i, rec in enumerate(records):
        if rec is None:
            continue
        try:
            wire.unpack_records([rec], model.widths, model.stored_dim)
        except ValueError as exc:
            bad.append(i)
            model.note_corrupt(_label(model, int(fields[i]), int(keys[i])), exc)
    if metrics is not None:
        metrics.corrupt_records.labels(model.name).inc(len(bad))
    records = list(records)
    for i in bad:
        records[i] = None
    return wire.unpack_records(records, model.widths, model.stored_dim)


def _pad(model: LoadedModel, emb: np.ndarray) -> np.ndarray:
    dim = int(model.record.dim)
    if dim > model.stored_dim:  # a padded policy (fixed:d,pad=P): the network reads P dims
        return np.pad(emb, ((0, 0), (0, 0), (0, dim - model.stored_dim)))
    return emb


async def _gather_uncached(model: LoadedModel, ids: np.ndarray, client: aioredis.Redis,
                           metrics: ServingMetrics | None) -> tuple[np.ndarray, int, int, int]:
    """gather_embeddings without the cache: for a request whose version no longer owns it,
    or when caching is off."""
    b, nf = ids.shape
    fields, keys = missed_pairs(ids, np.ones(b * nf, bool))
    records = await fetch_records(client, model, fields, keys)
    rows, found = unpack_or_skip(model, fields, keys, records, metrics)
    pair = np.empty((b, nf), np.int64)
    start = 0
    for f in range(nf):  # the pairs are sorted by field, then ID (missed_pairs)
        count = int(np.count_nonzero(fields == f))
        pair[:, f] = start + np.searchsorted(keys[start : start + count], ids[:, f])
        start += count
    emb = rows[pair.reshape(-1)].reshape(b, nf, model.stored_dim)
    return _pad(model, emb), int((~found).sum()), 0, len(keys)


async def gather_embeddings(model: LoadedModel, ids: np.ndarray, client: aioredis.Redis,
                            metrics: ServingMetrics | None = None
                            ) -> tuple[np.ndarray, int, int, int]:
    """ids int64[B, F] -> (float32[B, F, D] zero-padded, unseen pairs, cache hits, misses),
    hits and misses counted over the request's distinct (field, ID) pairs. A corrupt record
    reads as missing (`unpack_or_skip`), counted in `metrics`. Raises VersionGone, RedisError.
    See the module docstring."""
    b, nf = ids.shape
    cache = model.cache
    if cache.version != model.version or not cache.capacity:
        # a newer version took the cache over, or caching is off (every pair is fetched, and
        # inserting them only to forget them at the request's end costs index work)
        return await _gather_uncached(model, ids, client, metrics)
    cell_fields = np.tile(np.arange(nf, dtype=np.int64), b)
    cell_keys = ids.reshape(-1)
    slots = cache.lookup(cell_fields, cell_keys)
    missed = slots < 0
    misses = 0
    if missed.any():
        fields, keys = missed_pairs(ids, missed)
        records = await fetch_records(client, model, fields, keys)  # the only await
        if cache.version != model.version:  # swapped while we waited
            return await _gather_uncached(model, ids, client, metrics)
        rows, found = unpack_or_skip(model, fields, keys, records, metrics)
        misses = len(keys)
        # From here to the return nothing awaits, so no other request moves a slot. Stamp
        # the cells cached now with the current tick (the insert's eviction spares those),
        # cache the fetched pairs, then every cell has a slot.
        cache.lookup(cell_fields, cell_keys)
        cache.insert(fields, keys, rows, found)
        slots = cache.lookup(cell_fields, cell_keys)
    distinct = np.unique(slots)
    unseen = int((~cache.found[distinct]).sum())
    emb = _pad(model, cache.rows[slots].reshape(b, nf, cache.dim))
    cache.end_request()
    return emb, unseen, len(distinct) - misses, misses
