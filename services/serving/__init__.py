"""The serving tier: FastAPI scoring with embeddings read from Redis.

    app.py          create_app(settings): lifespan, middleware, routers
    routers/        score (POST /v1/score), health (/healthz, /readyz), metrics (/metrics)
    schemas.py      request and response bodies
    scorer.py       items -> IDs -> embeddings (cache, pipelined MGET) -> probabilities
    registry.py     loaded model versions and the refresher that swaps new ones in
    embedding_cache.py   per-version LRU of packed records
    metrics.py      Prometheus series
    middleware.py   body-size limit and body-read deadline, request metrics
    errors.py       failures in words safe for a response body; throttled logging of them

Imports models/, storage/ and services/wire/ only, never the trainer's internals.
"""
