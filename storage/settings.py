"""The one Settings object (env prefix CHUNKREC_). Read once by the entry points and passed in;
no other module reads os.environ."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHUNKREC_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec",
        description="cache for fetched data sets (movielens-100k) and run artefacts",
    )
    shared_data_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "shared" / "data",
        description="where the real sample data sets live (../shared/data beside the repo)",
    )
    batch_size: int = 1024
    seed: int = 0

    # --- streaming system: broker, Redis, trainer (services/trainer.py) ---
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka host:port")
    # secrets: repr=False keeps them out of any logged Settings; a password may sit in the URL
    # (redis://:PASSWORD@host:port/0) or apart in redis_password, which overrides it
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for serving",
                           repr=False)
    redis_password: str = Field(default="", repr=False, description="Redis AUTH password")
    checkpoint_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec" / "checkpoints",
        description="trainer checkpoints, one folder per model",
    )
    checkpoint_interval_s: float = 30.0  # checkpoint at least this often while events arrive
    checkpoint_every_events: int = 200_000  # ... and after this many applied events (0: off)
    checkpoints_kept: int = 2
    publish_interval_s: float = 2.0  # a new model version in Redis this often
    trainer_batch_events: int = 512  # micro-batch rows of a training step
    trainer_linger_ms: int = 50  # train a partial micro-batch after waiting this long
    trainer_max_poll_records: int = 64  # Kafka messages per poll (each holds many events)
    trainer_threads: int | None = None  # torch.set_num_threads for the trainer
    trainer_start: str = "earliest"  # where a model without a checkpoint starts: or "latest"
    metrics_window: int = 10_000  # rows of the "recent" online metrics
    redis_write_chunk: int = 2_000  # keys per Redis write script (~5 ms of Redis time)
    dense_versions_kept: int = 3  # dense-weight blobs kept in Redis (older ones deleted)
    # one trainer per model (services/lease.py): the owner's lease in Redis lasts this long
    # unless renewed (every third of it); a second trainer waits this long, then is refused
    trainer_lease_ttl_s: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    # tansu assigns a group's partitions only after max_poll_interval; keep it small
    kafka_session_timeout_ms: int = 6_000
    kafka_heartbeat_interval_ms: int = 2_000
    kafka_max_poll_interval_ms: int = 5_000
    replay_batch_events: int = 200  # events per Kafka message

    # --- serving (services/serving) and the local stack (services/stack.py) ---
    serving_host: str = "127.0.0.1"
    serving_port: int = 8000
    serving_models: str = ""  # comma-separated model names to serve; empty: every model in Redis
    serving_max_items: int = 1000  # items per /v1/score request
    serving_max_body_bytes: int = 2 << 20  # request body limit (413 beyond it)
    serving_cache_entries: int = 200_000  # embedding records cached per model (LRU)
    serving_poll_s: float = 1.0  # version check interval besides the pub/sub announcements
    serving_mget_chunk: int = 1000  # keys per MGET in one pipelined round trip
    serving_threads: int = 1  # torch.set_num_threads for the serving process
    serving_stale_after_s: float = Field(
        default=10.0, gt=0, description="a served model whose version refresh has failed for "
        "this long makes /readyz answer 503")
    serving_hash_memo_bytes: int = Field(
        default=32 << 20, gt=0, description="bytes of the raw-value -> ID memo (it starts "
        "over beyond them)")
    serving_redis_timeout_s: float = Field(
        default=1.0, gt=0, description="Redis connect and socket timeout of serving: a hung "
        "Redis gives a 503 this soon")
    serving_redis_max_connections: int = Field(
        default=32, ge=2, description="serving's Redis connection pool (one is the pub/sub "
        "listener's); a request waits for a free one")
    serving_redis_pool_timeout_s: float = Field(
        default=1.0, gt=0, description="how long a request waits for a pooled Redis "
        "connection before its 503")
    serving_body_timeout_s: float = Field(
        default=10.0, gt=0, description="time to receive a whole request body (408 beyond it)")

    # --- metadata database, A/B router, joiner (storage/db, services/router, services/joiner) ---
    database_url: str = Field(
        default="", repr=False,
        description="SQLAlchemy URL (may hold a password); empty: SQLite at data_dir/chunkrec.db")
    router_host: str = "127.0.0.1"
    router_port: int = 8100
    router_api_key: str = Field(default="", repr=False,
                                description="admin API key; empty: admin refused")
    serving_url: str = Field(default="", description="serving base URL for the router; empty: "
                             "http://serving_host:serving_port")
    router_max_body_bytes: int = 2 << 20  # request body limit of the router (413 beyond it)
    router_config_ttl_s: float = 1.0  # how long a router replica caches experiment configs
    router_score_timeout_s: float = 2.0
    router_body_timeout_s: float = Field(
        default=10.0, gt=0, description="time to receive a whole request body at the router "
        "(408 beyond it)")
    router_max_candidates: int = Field(
        default=100, gt=0, le=1000, description="candidates per /v1/rank (422 beyond): each "
        "shown one becomes a training event")
    router_max_exposure_bytes: int = Field(
        default=512 << 10, gt=0, le=900_000, description="largest exposure message (the "
        "candidates' features as sent to serving and Kafka; 413 beyond), well under Kafka's "
        "1 MB message limit")
    router_unit_requests_per_minute: float = Field(
        default=1200.0, gt=0, description="ranks + feedback one unit may send per minute "
        "(a token bucket of this size, refilled evenly; 429 + Retry-After beyond)")
    router_rate_limit_units: int = Field(
        default=100_000, gt=0, description="units (and issued requests) a router replica "
        "remembers for rate limits and feedback checks; the least recent are forgotten")
    router_serving_concurrency: int = Field(
        default=64, gt=0, description="score calls in flight to serving (the HTTP pool size)")
    router_queue_wait_s: float = Field(
        default=0.25, ge=0, description="how long a rank waits for a free score slot before "
        "its 503 + Retry-After")
    router_item_table: Path | None = Field(
        default=None, description="CSV or Parquet of items (column `item` + one column per "
        "item feature): item features come from it, never from clients; unknown items 422")
    router_migrate: bool = Field(
        default=False, description="upgrade the database to the newest schema when the "
        "router starts (else a database behind it stops the router)")
    attribution_window_s: float = 30.0  # feedback counts as a click within this after exposure
    joiner_grace_s: float = 5.0  # an exposure closes this long after its window (late arrivals)
    joiner_wall_clock: bool = True  # close windows by wall time too, not only by event time

    @property
    def resolved_database_url(self) -> str:
        """`database_url`, or SQLite under `data_dir` when it is empty."""
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'chunkrec.db'}"

    @property
    def redis_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `redis.Redis.from_url(redis_url, ...)` besides the URL: the
        password when `redis_password` is set (it wins over one in the URL)."""
        return {"password": self.redis_password} if self.redis_password else {}

    @property
    def resolved_serving_url(self) -> str:
        return self.serving_url or f"http://{self.serving_host}:{self.serving_port}"


def get_settings() -> Settings:
    return Settings()
