"""Redis memory per embedding record: bucketed hashes (wire format 2) vs one string key per ID
(format 1), for fixed-64 and FIITED 25% trained on MovieLens-100k.

    python bench/redis_memory.py [--passes 1]

Each policy is trained in-process (`passes` over the ratings), then its records are written
into a fresh redis-server twice: as format 1 did (SET chunkrec:M:emb:FIELD:ID per record) and
by the publisher (services/trainer/publisher.py: buckets of `bucket_records` records). Memory
is the sum of MEMORY USAGE of the keys holding records (key, value, dict entry, allocator
rounding: what `chunkrec up`'s report and the issue measured), over the records' own bytes;
beside it INFO used_memory after minus before on a fresh connection, which also counts what
the writes left in Redis' own structures (the Lua heap of the bucket scripts, the keyspace
table's growth). The FIITED/fixed-64 ratio of that memory is
set beside the ratio of the trainer's embedding value bytes. Then where a bucketed record's
bytes go: the record, its ID (the hash field name, an integer in the listpack), the listpack's
entry headers, jemalloc's rounding of the listpack to a size class, the key and object; and
the floor, a record plus its 8-byte exact ID and nothing else. Last, three incremental
publishes of 20 more training steps each show what the copy-on-write generations kept for
readers cost on top (`dense_versions_kept` = 3). Goals (issue 13): <= 1.3x the record
bytes; FIITED's Redis ratio within 1.1x of its trainer-bytes ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.learner import Learner  # noqa: E402
from models.networks import build_model  # noqa: E402
from models.policies.registry import parse_policy  # noqa: E402
from services import wire  # noqa: E402
from services.stack.infra import start_redis  # noqa: E402
from services.trainer.publisher import RedisPublisher  # noqa: E402
from storage.datasets.spec import open_dataset  # noqa: E402
from storage.settings import get_settings  # noqa: E402

POLICIES = (("fixed64", "fixed:64"), ("fiited", "fiited:budget=0.25"))


def _record(name: str, spec: str, dim: int, version: int) -> wire.ModelVersion:
    return wire.ModelVersion(
        model=name, version=version, created_at=time.time(), policy=spec, schema="ml",
        fields=[], dense_names=[], arch="dlrm", dim=dim, widths=[], dense_key="", full=True,
        entries_written=0, entries_deleted=0, embedding_bytes=0, embedding_value_bytes=0,
        redis_embedding_bytes=0, redis_embedding_records=0, events_applied=0,
        events_checksum="0", events_invalid=0, offsets={})


def used(r: redis.Redis) -> int:
    """used_memory on a fresh connection: a writer's query buffer (a pipelined publish can
    grow it to megabytes) goes with its connection, and is not the records' memory."""
    r.connection_pool.disconnect()
    return int(r.info("memory")["used_memory"])


def usage(r: redis.Redis, keys: list) -> int:
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
    return sum(int(u or 0) for u in pipe.execute())


def _lp_entry(value: bytes) -> tuple[int, int]:
    """(data bytes, header + back-length bytes) of one listpack entry (Redis 7 listpack.c): a
    string that is a canonical int64 is stored as an integer of 1-9 bytes, the first of them
    its encoding byte (a 7-bit uint is that byte alone)."""
    try:
        n = int(value)
        as_int = str(n).encode() == value and -(1 << 63) <= n < (1 << 63)
    except ValueError:
        as_int = False
    if as_int:
        size = (1 if 0 <= n < 128 else 2 if -(1 << 12) <= n < (1 << 12) else
                3 if -(1 << 15) <= n < (1 << 15) else 4 if -(1 << 23) <= n < (1 << 23) else
                5 if -(1 << 31) <= n < (1 << 31) else 9)
        data, head = size - 1, 1
    else:
        data = len(value)
        head = 1 if data < 64 else 2 if data < 4096 else 5
    entry = data + head
    return data, head + (1 if entry <= 127 else 2 if entry < 16383 else 3)


def jemalloc_usable(n: int) -> int:
    """jemalloc 5's size class of an n-byte allocation (4 classes per doubling past 128)."""
    if n <= 128:
        return max(8, -(-n // 16) * 16) if n > 8 else 8
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def breakdown(r: redis.Redis, keys: list) -> dict[str, int]:
    """Where the MEMORY USAGE of listpack bucket hashes goes: the records, their IDs (the
    field names, integers in the listpack), the listpack's entry headers and back-lengths
    (with its own header, end byte and the sentinel field), the allocator's rounding of the
    listpack to a jemalloc size class, and the rest (the key's string, the object, the
    keyspace's dict entry)."""
    out = dict(records=0, ids=0, entry_headers=0, rounding=0, key_object_dict=0, total=0)
    for key in keys:
        lp = 7  # header (total bytes, element count) + end byte
        for name, value in r.hgetall(key).items():
            nd, nh = _lp_entry(name)
            vd, vh = _lp_entry(value)
            lp += nd + nh + vd + vh
            if name == wire.SENTINEL:
                out["entry_headers"] += nd + nh + vd + vh
            else:
                out["records"] += vd
                out["ids"] += nd
                out["entry_headers"] += nh + vh
        out["entry_headers"] += 7
        used_now = int(r.memory_usage(key, samples=0) or 0)
        out["rounding"] += jemalloc_usable(lp) - lp
        out["key_object_dict"] += used_now - jemalloc_usable(lp)
        out["total"] += used_now
    return out


def format1_bytes(r: redis.Redis, name: str, fields: tuple[str, ...],
                  policy: object) -> tuple[int, int]:
    """Redis memory of format 1, one string key per record (what the publisher wrote):
    (MEMORY USAGE sum, used_memory delta)."""
    export = policy.export(dirty_only=False)  # type: ignore[attr-defined]
    live = export.masks != 0
    records = wire.pack_records(export.masks[live], export.values[live], export.widths)
    r.flushall()
    before = used(r)
    pipe = r.pipeline(transaction=False)
    keys = [f"chunkrec:{name}:emb:{fields[f]}:{k}"
            for f, k in zip(export.fields[live].tolist(), export.keys[live].tolist(),
                            strict=True)]
    for key, rec in zip(keys, records, strict=True):
        pipe.set(key, rec)
    pipe.execute()
    return usage(r, keys), used(r) - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, default=1, help="training passes over the ratings")
    args = ap.parse_args()
    settings = get_settings()
    ds = open_dataset("movielens-100k", settings.data_dir)
    fields = tuple(ds.schema.fields)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, start_redis(log_dir=Path(tmp)) as proc:
        r = redis.Redis.from_url(proc.url)
        for name, spec in POLICIES:
            policy = parse_policy(spec, num_fields=len(fields))
            net = build_model("dlrm", ds.schema, dim=policy.dim)
            learner = Learner(net, policy)
            for _ in range(args.passes):
                for batch in ds.batches(512):
                    learner.step(batch)
            old, old_used = format1_bytes(r, name, fields, policy)
            r.flushall()
            before = used(r)
            pub = RedisPublisher(r, name, fields, per_bucket=settings.redis.bucket_records)
            st = pub.publish(policy, b"", 1, True, _record(name, spec, policy.dim, 1))
            meta = sum(r.memory_usage(k) or 0 for k in (wire.version_key(name),
                                                       wire.manifest_key(name, 1)))
            new_used = used(r) - before
            buckets = wire.current_bucket_keys(r, name)
            new = usage(r, buckets)
            parts = breakdown(r, buckets)
            listpacks = sum(r.object("encoding", k) == b"listpack" for k in buckets)
            batches = ds.batches(512)
            for v in (2, 3, 4):  # 20 more steps per version, published incrementally
                for _, batch in zip(range(20), batches, strict=False):
                    learner.step(batch)
                pub.publish(policy, b"", v, False, _record(name, spec, policy.dim, v))
            steady = usage(r, list(r.scan_iter(match=wire.bucket_pattern(name))))
            rows[name] = dict(records=st.entries_written, record_bytes=st.record_bytes,
                              old=old, new=new, meta=meta, old_used=old_used,
                              new_used=new_used, buckets=len(buckets),
                              listpacks=listpacks, steady=steady,
                              parts=parts, value_bytes=policy.memory().value_bytes,
                              total_bytes=policy.memory().total_bytes)
    print(f"\nRedis memory per embedding record, MovieLens-100k, {args.passes} pass(es), "
          f"buckets of ~{settings.redis.bucket_records} records")
    print(f"{'model':<9} {'records':>8} {'rec bytes':>10} {'format 1':>10} {'x rec':>6} "
          f"{'B/rec':>6} {'bucketed':>10} {'x rec':>6} {'B/rec':>6} {'buckets':>8} "
          f"{'listpack':>8} {'+3 incr.':>10} {'used_memory f1 / bucketed':>26}")
    for name, x in rows.items():
        n = x["records"]
        print(f"{name:<9} {n:>8,} {x['record_bytes']:>10,} {x['old']:>10,} "
              f"{x['old'] / x['record_bytes']:>6.2f} {x['old'] / n:>6.0f} {x['new']:>10,} "
              f"{x['new'] / x['record_bytes']:>6.2f} {x['new'] / n:>6.0f} {x['buckets']:>8,} "
              f"{x['listpacks']:>8,} {x['steady']:>10,} "
              f"{x['old_used'] / x['record_bytes']:>12.2f}x / "
              f"{x['new_used'] / x['record_bytes']:.2f}x")
    print("\nwhere a bucketed record's Redis bytes go (bytes per record; MEMORY USAGE of the "
          "buckets, split by the listpack encoding and jemalloc's size classes)")
    print(f"{'model':<9} {'record':>7} {'ID':>6} {'lp hdrs':>8} {'rounding':>9} "
          f"{'key+obj':>8} {'total':>7} {'x rec':>6} {'floor x rec':>12}")
    for name, x in rows.items():
        n, p = x["records"], x["parts"]
        floor = (x["record_bytes"] + 8 * n) / x["record_bytes"]
        print(f"{name:<9} {p['records'] / n:>7.1f} {p['ids'] / n:>6.1f} "
              f"{p['entry_headers'] / n:>8.1f} {p['rounding'] / n:>9.1f} "
              f"{p['key_object_dict'] / n:>8.1f} {p['total'] / n:>7.1f} "
              f"{p['total'] / x['record_bytes']:>6.2f} {floor:>12.2f}")
    print("floor: the record plus its 8-byte exact ID, with no container or allocator overhead")
    a, b = rows["fiited"], rows["fixed64"]
    trainer = a["value_bytes"] / b["value_bytes"]
    total = a["total_bytes"] / b["total_bytes"]
    print(f"FIITED / fixed-64: trainer embedding bytes (values, optimizer, index; the stack's "
          f"'embedding bytes (trainer)') {total:.3f}, bucketed Redis "
          f"{a['new'] / b['new']:.3f} ({a['new'] / b['new'] / total:.2f}x that ratio)")
    print(f"FIITED / fixed-64: trainer value bytes {trainer:.3f}, record bytes "
          f"{a['record_bytes'] / b['record_bytes']:.3f}, Redis format 1 "
          f"{a['old'] / b['old']:.3f} ({a['old'] / b['old'] / trainer:.2f}x the trainer "
          f"ratio), bucketed {a['new'] / b['new']:.3f} "
          f"({a['new'] / b['new'] / trainer:.2f}x the trainer ratio)")
    floor = ((a["record_bytes"] + 8 * a["records"]) / (b["record_bytes"] + 8 * b["records"]))
    print(f"FIITED / fixed-64 at the floor (records + 8-byte IDs, no overhead): {floor:.3f} "
          f"({floor / trainer:.2f}x the trainer value-bytes ratio, {floor / total:.2f}x the "
          "total-bytes ratio)")
    worst = max(x["new"] / x["record_bytes"] for x in rows.values())
    print(f"goal <= 1.3x record bytes: {'met' if worst <= 1.3 else 'NOT met'} (worst "
          f"{worst:.2f}x); FIITED ratio within 1.1x of the trainer's: total bytes "
          f"{'met' if a['new'] / b['new'] <= 1.1 * total else 'NOT met'}, value bytes "
          f"{'met' if a['new'] / b['new'] <= 1.1 * trainer else 'NOT met'}")


if __name__ == "__main__":
    main()
