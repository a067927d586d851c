"""The serving tier: FastAPI scoring with embeddings read from Redis.

    app.py          create_app(settings): lifespan, middleware, routers; app_from_env for
                    `chunkrec serve --workers N` worker processes
    routers/        score (POST /v1/score), health (/healthz, /readyz), metrics (/metrics)
    schemas.py      request and response bodies
    scorer.py       the loaded version (LoadedModel), raw values -> IDs, items -> arrays
    embedding_reads.py   IDs -> embeddings: the cache, then one HMGET per bucket through the
                    version's manifest (pipelined; per node on a cluster)
    registry.py     loaded model versions and the refresher that swaps new ones in (the
                    cache moves to the new version minus the buckets that changed)
    embedding_cache.py   LRU of decoded records, owned by one version at a time
    metrics.py      Prometheus series
    middleware.py   body-size limit and body-read deadline, request metrics
    errors.py       failures in words safe for a response body; throttled logging of them

Imports models/, storage/, services/wire/ and services/messaging/ (Redis clients, single or
cluster) only, never the trainer's internals.
"""
