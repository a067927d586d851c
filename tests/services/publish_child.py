"""A publisher in its own process, for kill tests: trains a FIITED model one micro-batch per
version and publishes it (full first, then incremental), printing "publishing V" before and
"published V" after each publish, until killed or `versions` are out. Each version waits for
a line on stdin (the test paces it: a kill lands where the test means it to). With PAUSE_AT,
that version's publish stops after its first round trip of bucket writes, prints "midway V"
and waits for another line: a kill then lands inside the publish, not after it.

    python -m tests.services.publish_child REDIS_URL MODEL FIRST_VERSION VERSIONS \
        single|cluster [PAUSE_AT]
    (with "cluster", REDIS_URL is a node of a Redis Cluster)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from models.learner import Learner
from models.networks import build_model
from models.policies.registry import parse_policy
from services import wire
from services.messaging.redis_clients import open_sync
from services.trainer.publisher import RedisPublisher
from storage.datasets.spec import open_dataset
from storage.settings import RedisSettings

SPEC = "synthetic:events=200000,fields=4,vocab=20000,seed=5"
POLICY = "fiited:dim=32,budget=0.5,interval=10"
FIELDS = ("f0", "f1", "f2", "f3")


def record(name: str, version: int, dim: int) -> wire.ModelVersion:
    return wire.ModelVersion(
        model=name, version=version, created_at=time.time(), policy=POLICY,
        schema="synthetic", fields=list(FIELDS), dense_names=[], arch="dlrm", dim=dim,
        widths=[], dense_key="", full=False, entries_written=0, entries_deleted=0,
        embedding_bytes=0, embedding_value_bytes=0, redis_embedding_bytes=0,
        redis_embedding_records=0, events_applied=version, events_checksum="0",
        events_invalid=0, offsets={})


def pause_inside(client: redis.Redis, version: Callable[[], int], pause_at: int) -> None:
    """Make `client`'s first pipeline round trip while `version()` is `pause_at` print
    "midway V" and block on stdin (the publisher's first pipeline of a version is its bucket
    writes)."""
    make = client.pipeline
    paused = False

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make(*args, **kwargs)
        run = pipe.execute

        def execute(*eargs: Any, **ekwargs: Any) -> Any:
            nonlocal paused
            out = run(*eargs, **ekwargs)
            if version() == pause_at and not paused:
                paused = True
                print(f"midway {pause_at}", flush=True)
                sys.stdin.readline()
            return out

        pipe.execute = execute
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]


def main(url: str, name: str, first: int, versions: int, cluster: bool,
         pause_at: int = 0) -> None:
    client = open_sync(RedisSettings(url=url, cluster=cluster))
    current = first
    if pause_at:
        pause_inside(client, lambda: current, pause_at)
    ds = open_dataset(SPEC)
    policy = parse_policy(POLICY, num_fields=len(FIELDS))
    net = build_model("dlrm", ds.schema, dim=policy.dim, seed=first)
    learner = Learner(net, policy)
    # small round trips, many versions kept: a kill lands inside the bucket writes, and
    # every version a response names can be recomputed afterwards
    pub = RedisPublisher(client, name, FIELDS, write_chunk=100, dense_versions_kept=10_000,
                         per_bucket=16)
    batches = ds.batches(2000)
    for v in range(first, first + versions):
        current = v
        learner.step(next(batches))
        if not sys.stdin.readline():
            return
        print(f"publishing {v}", flush=True)
        pub.publish(policy, wire.dense_to_bytes(net.state_dict()), v, v == first,  # type: ignore[arg-type]
                    record(name, v, policy.dim))
        print(f"published {v}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
         len(sys.argv) > 5 and sys.argv[5] == "cluster",
         int(sys.argv[6]) if len(sys.argv) > 6 else 0)
