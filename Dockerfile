# The chunkrec app image: trainers, serving and replay all run from it (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHUNKREC_DATA_DIR=/data \
    CHUNKREC_CHECKPOINT_DIR=/data/checkpoints

WORKDIR /app

# dependencies first (a layer that survives source edits); torch from the CPU index
COPY pyproject.toml README.md ./
RUN mkdir -p services models storage \
    && touch services/__init__.py models/__init__.py storage/__init__.py \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" . \
    && pip uninstall -y chunkrec

COPY services ./services
COPY models ./models
COPY storage ./storage
RUN pip install --no-deps . && useradd --create-home --uid 1000 chunkrec \
    && mkdir -p /data && chown chunkrec /data

USER chunkrec
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["chunkrec"]
CMD ["--help"]
