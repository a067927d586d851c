"""The joiner process (`chunkrec join`): exposures + feedback -> labelled events and outcomes
(services/experiments/joiner.py), and, every `record_every_s`, the running experiments' model
versions copied from Redis into the database (version_recorder.py).

    run_joiner(settings, default_schema="movielens-100k", record_every_s=5.0)

Runs until SIGTERM or Ctrl-C, then drains what it holds. The events a model trains on follow
its schema, read from its version record in Redis; until a model has published one,
`default_schema`'s. A bad `default_schema` raises DatasetError before anything is connected.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.experiments.joiner import JoinerService
from services.experiments.version_recorder import record_versions, schema_of
from services.messaging.redis_clients import open_sync
from storage.batch import DatasetSchema
from storage.datasets.spec import open_dataset
from storage.db.experiments import experiment_config, running_experiment_ids
from storage.db.session import make_engine, session_factory
from storage.settings import Settings

log = logging.getLogger("chunkrec.versions")


class SchemaLookup:
    """model -> the schema its events follow: its Redis version record's (cached once found),
    else the default."""

    def __init__(self, client: redis.Redis, default: DatasetSchema) -> None:
        self.client = client
        self.default = default
        self.found: dict[str, DatasetSchema] = {}

    def __call__(self, model: str) -> DatasetSchema:
        if model not in self.found:
            found = schema_of(self.client, model)
            if found is None:  # not cached: the model's first version will say
                return self.default
            self.found[model] = found
        return self.found[model]


class VersionRecording:
    """The joiner's tick: at most every `every_s`, record the running experiments' models'
    current versions. A failure is logged and retried at the next tick; the join goes on."""

    def __init__(self, factory: sessionmaker[Session], client: redis.Redis,
                 every_s: float) -> None:
        self.factory = factory
        self.client = client
        self.every_s = every_s
        self.last = 0.0

    def __call__(self) -> None:
        if time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        try:
            with self.factory() as s:
                models = sorted({a.model for e in running_experiment_ids(s)
                                 for a in experiment_config(s, e).arms})
            record_versions(self.factory, self.client, models)
        except (redis.RedisError, SQLAlchemyError) as exc:
            log.warning("recording versions: %s", str(exc)[:300])


def run_joiner(settings: Settings, default_schema: str, record_every_s: float,
               echo: Callable[[str], None] = print) -> None:
    """Join until SIGTERM or Ctrl-C; drain and close; `echo` the joiner's counters last."""
    # the joiner validates events with the trainer's validator: it needs the fields
    default = open_dataset(default_schema, settings.data_dir).schema
    factory = session_factory(make_engine(settings.resolved_database_url))
    client = open_sync(settings.redis)  # a RedisCluster client with settings.redis.cluster
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    svc = JoinerService(settings.kafka.bootstrap, factory, SchemaLookup(client, default),
                        window_s=settings.joiner.attribution_window_s,
                        grace_s=settings.joiner.grace_s,
                        wall_clock=settings.joiner.wall_clock,
                        max_poll_interval_ms=settings.kafka.max_poll_interval_ms,
                        on_tick=VersionRecording(factory, client, record_every_s))
    try:
        svc.run(stop.is_set)
    except KeyboardInterrupt:
        pass
    finally:
        svc.drain()
        svc.close()
        echo(f"joiner: {svc.state.stats}")
