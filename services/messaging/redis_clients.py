"""Redis clients for one Redis or a Redis Cluster, chosen by `settings.redis.cluster`.

    client = open_sync(settings.redis, socket_timeout=10)   # redis.Redis | RedisCluster
    aclient = open_async(settings.redis, ...)               # their asyncio twins

A cluster client (redis-py's `RedisCluster`) discovers the nodes from the URL's one, routes
each command by its keys' hash slot (the key layout's hash tags keep what one script touches
on one slot, services/wire/redis_keys.py) and splits a pipeline into one per node. Pub/sub is
the exception: a cluster broadcasts PUBLISH to every node, so a subscriber listens on any one
node through a plain client (`async_subscriber`).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from storage.settings import RedisSettings


def open_sync(s: RedisSettings, **kwargs: Any) -> redis.Redis:
    """A blocking client of `s.url` (a RedisCluster when `s.cluster`)."""
    kwargs = {**s.client_kwargs, **kwargs}
    if s.cluster:
        return RedisCluster.from_url(s.url, **kwargs)  # type: ignore[return-value]
    return redis.Redis.from_url(s.url, **kwargs)


def open_async(s: RedisSettings, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client of `s.url`; pool options in `kwargs` apply to a single Redis only
    (a cluster client keeps a pool per node of `max_connections`)."""
    kwargs = {**s.client_kwargs, **kwargs}
    if s.cluster:
        keep = {k: v for k, v in kwargs.items()
                if k in ("socket_timeout", "socket_connect_timeout", "password",
                         "max_connections", "health_check_interval")}
        return AsyncRedisCluster.from_url(s.url, **keep)  # type: ignore[return-value]
    return aioredis.Redis.from_url(s.url, **kwargs)


def async_subscriber(client: aioredis.Redis, s: RedisSettings) -> aioredis.Redis:
    """A client for pub/sub: `client` itself, or for a cluster a plain client of the URL's
    node (every node delivers every PUBLISH). The caller closes the latter."""
    if isinstance(client, AsyncRedisCluster):
        return aioredis.Redis.from_url(s.url, **s.client_kwargs)
    return client
