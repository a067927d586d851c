"""The models serving knows, and the background task that swaps in their new versions.

    registry = ModelRegistry(settings, redis_client, metrics)
    task = asyncio.create_task(registry.run())     # until registry.stop()
    model = registry.get("fiited")                 # a LoadedModel, or None

Version swaps never drop a request: the refresher learns of a new version from the
`chunkrec:{M}:versions` pub/sub announcements (pattern subscription) and, as a fallback for
missed messages and Redis restarts, by reading every model's version record each
`serving_poll_s`. It builds the new network off the request path (weights fetched by the
async client, `load_state_dict` in a worker thread), then replaces one dict entry: a request
takes its `LoadedModel` once at its start and scores every item with it, so it sees either the
old version or the new one, never a mix. The new version comes with a new, empty embedding
cache (services/serving/embedding_cache.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from models.networks import build_model
from services import wire
from services.serving.embedding_cache import EmbeddingCache
from services.serving.metrics import ServingMetrics
from services.serving.scorer import LoadedModel
from storage.settings import Settings

log = logging.getLogger("chunkrec.serving")


def build_loaded_model(record: wire.ModelVersion, dense_blob: bytes,
                       cache_entries: int) -> LoadedModel:
    """A network for `record` with the weights of `dense_blob` (CPU, eval mode). Blocking:
    run it in a worker thread."""
    net = build_model(record.arch, record.schema_obj, dim=int(record.dim))
    net.load_state_dict(wire.dense_from_bytes(dense_blob))
    net.eval()
    model = LoadedModel(record, net, EmbeddingCache(cache_entries, sum(record.widths)),
                        time.time())
    model.compile()
    return model


class ModelRegistry:
    """See module docstring."""

    def __init__(self, settings: Settings, client: aioredis.Redis,
                 metrics: ServingMetrics) -> None:
        self.s = settings
        self.r = client
        self.metrics = metrics
        self.only = {m.strip() for m in settings.serving_models.split(",") if m.strip()}
        self._models: dict[str, LoadedModel] = {}
        self.redis_versions: dict[str, int | None] = {}  # newest version seen in Redis
        self.redis_ok = False
        self.last_error = ""
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    # ---------------------------------------------------------------- reading
    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def known(self) -> list[str]:
        """Models loaded or announced in Redis."""
        return sorted(set(self._models) | set(self.redis_versions))

    # ---------------------------------------------------------------- refreshing
    async def refresh(self) -> list[str]:
        """Read every model's version record; load the ones newer than what is served.
        Returns the names swapped. Raises RedisError when Redis is unreachable."""
        names = sorted(n.decode() if isinstance(n, bytes) else n
                       for n in await self.r.smembers(wire.MODELS_SET))
        if self.only:
            names = [n for n in names if n in self.only]
        blobs = await self.r.mget([wire.version_key(n) for n in names]) if names else []
        swapped = []
        for name, blob in zip(names, blobs, strict=True):
            if blob is None:
                self.redis_versions[name] = None
                continue
            record = wire.ModelVersion.from_json(blob)
            self.redis_versions[name] = record.version
            current = self._models.get(name)
            if current is not None and current.version >= record.version:
                continue
            if await self._load(record):
                swapped.append(name)
        self.redis_ok = True
        return swapped

    async def _load(self, record: wire.ModelVersion) -> bool:
        t0 = time.perf_counter()
        blob = await self.r.get(record.dense_key)
        if blob is None:
            return False  # deleted by the trainer's retention: a newer record is there
        try:
            model = await asyncio.to_thread(build_loaded_model, record, blob,
                                            self.s.serving_cache_entries)
        except Exception as exc:  # noqa: BLE001 - a bad version must not stop serving the old
            self.last_error = f"{record.model} v{record.version}: {exc}"
            log.error("cannot load %s", self.last_error)
            self.metrics.load_failures.labels(record.model).inc()
            return False
        current = self._models.get(record.model)
        if current is not None and current.version >= record.version:
            return False  # a concurrent refresh got there first
        self._models[record.model] = model  # the swap: one reference
        self.metrics.observe_version(model, time.perf_counter() - t0)
        log.info("serving %s v%d (%d events applied)", record.model, record.version,
                 record.events_applied)
        return True

    async def _listen(self) -> None:
        """Wake the refresher on every version announcement; reconnects on Redis errors."""
        while not self._stop.is_set():
            pubsub = self.r.pubsub()
            try:
                await pubsub.psubscribe(wire.versions_channel("*"))
                while not self._stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._wake.set()
            except (RedisError, OSError) as exc:
                self.last_error = f"pub/sub: {exc}"
                await self._sleep(self.s.serving_poll_s)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def run(self) -> None:
        """Refresh on each announcement and every `serving_poll_s`, until stop()."""
        listener = asyncio.create_task(self._listen())
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    await self.refresh()
                except (RedisError, OSError) as exc:
                    self.redis_ok = False
                    self.last_error = f"redis: {exc}"
                self.metrics.redis_up.set(1 if self.redis_ok else 0)
                for name, m in list(self._models.items()):
                    newest = self.redis_versions.get(name)
                    behind = newest is not None and newest > m.version
                    self.metrics.stale.labels(name).set(int(behind or not self.redis_ok))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.s.serving_poll_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
