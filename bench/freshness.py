"""Freshness: seconds from an event produced to serving scores reflecting it.

    python bench/freshness.py [--trials 10] [--policy fiited:budget=0.25] [--rate 1000]

Set-up: the local stack (services/stack/processes.py) with one trainer (`fresh`, the policy given),
serving, and a MovieLens-100k replay at `rate` events/s as background traffic, so the trainer
is busy as in production. Settings are the defaults (CHUNKREC_PUBLISH_INTERVAL_S, 2 s
unless set) except where the stack sets its own (see services/stack/processes.py).

Each trial: a user ID never seen before; one score request for it (its user ID reads as zeros:
`unseen_ids` counts it); then one Kafka message of `events_per_trial` clicks by that user
(raw features, acked by the broker: t0), sent at a random phase of the trainer's publish
cycle; then POST /v1/score every `poll_ms` until the user's
embedding is served (`unseen_ids` drops: the event went broker -> trainer -> Redis version
-> serving swap) and the score differs from before. Reported: that delay, per trial and as a
distribution. Goal (issue 4): <= 5 s.
"""

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services import wire  # noqa: E402
from services.stack.infra import wait_until  # noqa: E402
from services.stack.processes import Stack, StackConfig  # noqa: E402
from services.stack.replay import make_producer  # noqa: E402
from storage.datasets.movielens import SCHEMA_100K  # noqa: E402
from storage.settings import get_settings  # noqa: E402

MODEL = "fresh"


def features_for(user_id: str, user: pd.Series, movie: pd.Series) -> dict[str, str]:
    return {"user": user_id, "item": str(movie["item"]), "gender": str(user["gender"]),
            "age": str(user["age"]), "occupation": str(user["occupation"]),
            "zip": str(user["zip"]), "genre": str(movie["genres"]).split("|")[0]}


def score(client: httpx.Client, feats: dict[str, str]) -> dict:
    resp = client.post("/v1/score", json={"model": MODEL, "items": [{"features": feats}]})
    resp.raise_for_status()
    return resp.json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--policy", default="fiited:budget=0.25")
    ap.add_argument("--rate", type=float, default=1000.0, help="background replay events/s")
    ap.add_argument("--events-per-trial", type=int, default=20)
    ap.add_argument("--poll-ms", type=float, default=20.0)
    ap.add_argument("--deadline", type=float, default=30.0, help="seconds per trial")
    args = ap.parse_args()
    settings = get_settings()
    cache = Path(settings.data_dir) / "movielens-100k"
    if not (cache / "users.parquet").is_file():
        sys.exit("MovieLens-100k is not cached: run `chunkrec data fetch movielens-100k`")
    users = pd.read_parquet(cache / "users.parquet")
    movies = pd.read_parquet(cache / "movies.parquet")
    rng = np.random.default_rng(0)
    config = StackConfig(data="movielens-100k", rate=args.rate, minutes=10,
                         models=((MODEL, args.policy),),
                         publish_interval_s=settings.trainer.publish_interval_s)
    delays: list[float | None] = []
    with Stack(settings, config) as stack:
        stack.start(on_step=lambda msg: print(f"- {msg}", flush=True))
        client = httpx.Client(base_url=stack.serving_url, timeout=10)
        wait_until(lambda: MODEL in stack.served_versions(), 120, "serving the model")
        producer = make_producer(stack.broker.address)  # type: ignore[union-attr]
        print(f"stack up: {stack.serving_url}; {args.trials} trials", flush=True)
        try:
            for trial in range(args.trials):
                user = users.iloc[int(rng.integers(len(users)))]
                movie = movies.iloc[int(rng.integers(len(movies)))]
                feats = features_for(f"fresh-{uuid.uuid4().hex[:12]}", user, movie)
                # a random phase against the publish cycle: a trial that started right
                # after the last detection (itself right after a publish) would always wait
                # a whole interval
                time.sleep(float(rng.uniform(0, config.publish_interval_s)))
                before = score(client, feats)
                events = [{"event_id": f"fresh:{trial}:{k}:{uuid.uuid4().hex[:8]}",
                           "ts": time.time(), "label": 1, "features": feats,
                           "schema": SCHEMA_100K.name} for k in range(args.events_per_trial)]
                ok, bad = wire.validate_events(events, SCHEMA_100K)
                assert not bad, bad
                producer.send(wire.EVENTS_TOPIC, wire.encode_events(events)).get(timeout=30)
                t0 = time.perf_counter()
                delay = None
                while time.perf_counter() - t0 < args.deadline:
                    now = score(client, feats)
                    if now["unseen_ids"] < before["unseen_ids"] and \
                            now["scores"][0] != before["scores"][0]:
                        delay = time.perf_counter() - t0
                        break
                    time.sleep(args.poll_ms / 1000)  # the measurement's resolution
                delays.append(delay)
                print(f"trial {trial + 1:>2}: " + ("timed out" if delay is None
                                                   else f"{delay:.2f} s"), flush=True)
        finally:
            producer.close()
            client.close()
    got = [d for d in delays if d is not None]
    print(f"\nfreshness bench: policy {args.policy}, publish interval "
          f"{config.publish_interval_s:g} s, background replay {args.rate:g} events/s, "
          f"poll every {args.poll_ms:g} ms")
    print(f"{'trials':>7} {'served':>7} {'min s':>7} {'p50 s':>7} {'p90 s':>7} {'max s':>7} "
          f"{'mean s':>7}")
    if got:
        q = np.quantile(got, [0.0, 0.5, 0.9, 1.0])
        print(f"{len(delays):>7} {len(got):>7} {q[0]:>7.2f} {q[1]:>7.2f} {q[2]:>7.2f} "
              f"{q[3]:>7.2f} {statistics.fmean(got):>7.2f}")
        print(f"goal <= 5 s (p90): {'met' if q[2] <= 5 else 'NOT met'}")
    else:
        print(f"{len(delays):>7} {0:>7}  no trial was served within {args.deadline:g} s")


if __name__ == "__main__":
    main()
