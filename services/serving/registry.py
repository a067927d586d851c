"""The models serving knows, and the background task that swaps in their new versions.

    registry = ModelRegistry(settings, redis_client, metrics)
    task = asyncio.create_task(registry.run())     # until registry.stop()
    model = registry.get("fiited")                 # a LoadedModel, or None

Version swaps never drop a request: the refresher learns of a new version from the
`chunkrec:{M}:versions` pub/sub announcements (pattern subscription) and, as a fallback for
missed messages and Redis restarts, by reading every model's version record each
`serving_poll_s`. It builds the new network off the request path (weights fetched by the
async client, `load_state_dict` in a worker thread), then replaces one dict entry: a request
takes its `LoadedModel` once at its start and scores every item with it, reading embeddings
through that version's manifest, so it sees either the old version or the new one, never a
mix. The new version takes over the old one's embedding cache minus the buckets whose
generation changed between the two manifests (embedding_cache.py); a full republish (new
bucket count or widths) starts an empty cache. Each serving process (`--workers N`) runs its
own refresher and cache.

Failures are per model and never end the refresher: a record that does not parse, or a version
that does not load, leaves that model on the version it serves, marks it stale (`stale()`,
chunkrec_model_stale), counts in chunkrec_model_refresh_failures_total and is logged when it
starts or changes; the other models refresh as usual. `refresh_age()` is the time since a
model's last good check, and /readyz answers 503 when a served model's is over
`serving_stale_after_s` (`overdue()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
import torch
from redis.exceptions import RedisError

from models.networks import build_model
from services import wire
from services.messaging.redis_clients import async_subscriber
from services.serving.embedding_cache import EmbeddingCache
from services.serving.errors import describe
from services.serving.metrics import ServingMetrics
from services.serving.scorer import LoadedModel
from storage.settings import Settings

log = logging.getLogger("chunkrec.serving")


def build_loaded_model(record: wire.ModelVersion, dense_blob: bytes, manifest: bytes,
                       cache_entries: int) -> LoadedModel:
    """A network for `record` with the weights of `dense_blob` (CPU, eval mode). Blocking:
    run it in a worker thread."""
    net = build_model(record.arch, record.schema_obj, dim=int(record.dim))
    net.load_state_dict(wire.dense_from_bytes(dense_blob))
    bad = [name for name, t in net.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # every score would be NaN: keep serving the previous version
        raise ValueError(f"dense weights not finite: {', '.join(bad[:5])}")
    net.eval()
    model = LoadedModel(record, net,
                        EmbeddingCache(cache_entries, sum(record.widths), record.version),
                        time.time(), wire.manifest_from_bytes(manifest))
    model.compile()
    return model


class ModelRegistry:
    """See module docstring."""

    def __init__(self, settings: Settings, client: aioredis.Redis,
                 metrics: ServingMetrics) -> None:
        self.s = settings
        self.r = client
        self.metrics = metrics
        self.only = {m.strip() for m in settings.serving.models.split(",") if m.strip()}
        self._models: dict[str, LoadedModel] = {}
        self.redis_versions: dict[str, int | None] = {}  # newest version seen in Redis
        self.redis_ok = False
        self.last_error = ""  # the latest failure, in words safe for /readyz (errors.py)
        self.errors: dict[str, str] = {}  # model -> why its last version check failed
        self.refreshed_at: dict[str, float] = {}  # model -> monotonic time of its last good one
        self._unloadable: dict[str, tuple[int, Exception]] = {}  # model -> version, its error
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    # ---------------------------------------------------------------- reading
    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def known(self) -> list[str]:
        """Models loaded, announced in Redis, or with a record that failed to load."""
        return sorted(set(self._models) | set(self.redis_versions) | set(self.errors))

    def stale(self, name: str) -> bool:
        """Whether the served version of `name` may be behind: Redis holds a newer one, Redis
        was unreachable at the last check, or the model's last check failed."""
        m = self._models.get(name)
        newest = self.redis_versions.get(name)
        behind = m is not None and newest is not None and newest > m.version
        return behind or not self.redis_ok or name in self.errors

    def refresh_age(self, name: str) -> float | None:
        """Seconds since the last successful version check of `name` (None: never)."""
        at = self.refreshed_at.get(name)
        return None if at is None else time.monotonic() - at

    def overdue(self) -> list[str]:
        """Served models whose version checks have failed for over `serving_stale_after_s`."""
        return [n for n in self.names()
                if (age := self.refresh_age(n)) is None or age > self.s.serving.stale_after_s]

    # ---------------------------------------------------------------- refreshing
    async def refresh(self) -> list[str]:
        """Read every model's version record; load the ones newer than what is served.
        Returns the names swapped. A model whose record does not parse or whose version does
        not load is a failure of that model alone (`errors`, logged, counted); the others
        are refreshed. Raises RedisError when Redis is unreachable."""
        names = {n.decode() if isinstance(n, bytes) else n
                 for n in await self.r.smembers(wire.MODELS_SET)}
        if self.only:
            names &= self.only
        # a served model missing from the set (Redis restarted empty) is checked too: its
        # check succeeds with nothing newer to load
        checked = sorted(names | set(self._models))
        blobs = []
        if checked:  # one GET each: on a cluster the records sit on different slots
            pipe = self.r.pipeline(transaction=False)
            for n in checked:
                pipe.get(wire.version_key(n))
            blobs = await pipe.execute()
        if not self.redis_ok and self.last_error.startswith("redis:"):
            log.info("version check: redis reachable again")
        self.redis_ok = True
        swapped = []
        for name, blob in zip(checked, blobs, strict=True):
            try:
                if await self._refresh_one(name, blob):
                    swapped.append(name)
            except Exception as exc:  # noqa: BLE001 - one model's failure is its own
                self._failed(name, exc)
            else:
                self._succeeded(name)
        return swapped

    async def _refresh_one(self, name: str, blob: bytes | None) -> bool:
        """Check one model's record (None: no record); raises when it cannot be read or its
        newer version cannot be loaded. Returns whether a new version was swapped in."""
        if blob is None:
            self.redis_versions[name] = None
            return False
        record = wire.ModelVersion.from_json(blob)
        if record.wire_version < 2 or not record.manifest_key:
            raise ValueError(f"{name} v{record.version}: version format {record.wire_version} "
                             "(one key per ID) is not read since format 2; restart its "
                             "trainer to republish")
        if record.model != name:
            raise ValueError(f"the version record of {name!r} names model {record.model!r}")
        self.redis_versions[name] = record.version
        current = self._models.get(name)
        if current is not None and current.version >= record.version:
            return False
        failed = self._unloadable.get(name)
        if failed is not None and failed[0] == record.version:
            raise failed[1]  # the same bytes fail the same way: not rebuilt every poll
        return await self._load(record)

    def _succeeded(self, name: str) -> None:
        self.refreshed_at[name] = time.monotonic()
        if self.errors.pop(name, None) is not None:
            log.info("version check of %s works again", name)

    def _failed(self, name: str, exc: BaseException) -> None:
        """Count, and log when the failure is new or has changed (not once per poll)."""
        self.metrics.refresh_failures.labels(name).inc()
        text = describe(exc)
        if self.errors.get(name) != text:
            since = self.refresh_age(name)
            log.error("version check of %s failed (%s; last good %s): %r", name, text,
                      "never" if since is None else f"{since:.1f} s ago", exc)
        self.errors[name] = text
        self.last_error = f"{name}: {text}"

    async def _load(self, record: wire.ModelVersion) -> bool:
        t0 = time.perf_counter()
        blob = await self.r.get(record.dense_key)
        if blob is None:
            # deleted by the trainer's retention after a newer record was written: the next
            # check finds that one (a failure until then: the served version is behind)
            raise LookupError(f"v{record.version}: dense weights {record.dense_key} gone")
        manifest = await self.r.get(record.manifest_key)
        if manifest is None:
            raise LookupError(f"v{record.version}: manifest {record.manifest_key} gone")
        try:
            model = await asyncio.to_thread(build_loaded_model, record, blob, manifest,
                                            self.s.serving.cache_entries)
        except Exception as exc:
            self.metrics.load_failures.labels(record.model).inc()
            self._unloadable[record.model] = (record.version, exc)
            raise  # a bad version must not stop serving the old: the caller counts it
        current = self._models.get(record.model)
        if current is not None and current.version >= record.version:
            return False  # a concurrent refresh got there first
        if current is not None:
            self._carry_cache(current, model)
        self._models[record.model] = model  # the swap: one reference
        self.metrics.observe_version(model.record, time.perf_counter() - t0)
        log.info("serving %s v%d (%d events applied)", record.model, record.version,
                 record.events_applied)
        return True

    def _carry_cache(self, old: LoadedModel, new: LoadedModel) -> None:
        """Give `new` the cache of `old` minus the buckets that changed (no await: requests
        see the cache move at once; an old-version request then reads without it)."""
        changed = wire.changed_buckets(old.manifest, new.manifest)
        if (changed is None or old.widths != new.widths or old.record.dim != new.record.dim
                or old.cache.capacity != new.cache.capacity):
            return
        cache = old.cache
        dropped = cache.drop_buckets(changed)
        cache.version = new.version
        new.cache = cache
        self.metrics.cache_carried.labels(new.name).inc(len(cache))
        self.metrics.cache_dropped.labels(new.name).inc(dropped)

    def wake(self) -> None:
        """Check versions now (a request found its version superseded)."""
        self._wake.set()

    async def _listen(self) -> None:
        """Wake the refresher on every version announcement; reconnects on any error."""
        while not self._stop.is_set():
            sub = async_subscriber(self.r, self.s.redis)
            pubsub = sub.pubsub()
            try:
                await pubsub.psubscribe(wire.versions_channel("*"))
                while not self._stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - polling goes on; reconnect after a pause
                if not isinstance(exc, RedisError | OSError):
                    log.exception("version announcements: unexpected error")
                self.last_error = f"pub/sub: {describe(exc)}"
                await self._sleep(self.s.serving.poll_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                if sub is not self.r:
                    with contextlib.suppress(Exception):
                        await sub.aclose()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def run(self) -> None:
        """Refresh on each announcement and every `serving_poll_s`, until stop(). Nothing but
        stop() or cancellation ends it: every failure is caught, logged and counted."""
        listener = asyncio.create_task(self._listen())
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    await self.refresh()
                except Exception as exc:  # noqa: BLE001 - the refresher must outlive anything
                    self._iteration_failed(exc)
                self._publish_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.s.serving.poll_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def _iteration_failed(self, exc: BaseException) -> None:
        """A check that failed before any model's record was read: every known model's check
        failed (Redis unreachable, or a bug, logged with its traceback)."""
        if isinstance(exc, RedisError | OSError):
            if self.redis_ok:  # logged when it starts, not on every poll of the outage
                log.warning("version check: redis: %r", exc)
            self.redis_ok = False
            self.last_error = f"redis: {describe(exc)}"
        else:
            log.exception("version check failed")
            self.last_error = describe(exc)
        for name in self.known():
            self.metrics.refresh_failures.labels(name).inc()

    def _publish_status(self) -> None:
        self.metrics.redis_up.set(1 if self.redis_ok else 0)
        for name in self.names():
            self.metrics.stale.labels(name).set(int(self.stale(name)))
            age = self.refresh_age(name)
            if age is not None:
                self.metrics.refresh_age.labels(name).set(round(age, 3))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
