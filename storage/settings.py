"""The one Settings object (env prefix CHUNKREC_). Read once by the entry points and passed in;
no other module reads os.environ.

Every value is validated when read: numbers have bounds and are finite, choices are Literal,
ports are 1..65535, addresses non-empty. `get_settings()` turns a refusal into a SettingsError
whose message is one line naming the variable, e.g.
`CHUNKREC_PUBLISH_INTERVAL_S='nan': Input should be a finite number`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHUNKREC_", env_file=".env", extra="ignore",
                                      allow_inf_nan=False)  # a nan interval never fires

    data_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec",
        description="cache for fetched data sets (movielens-100k) and run artefacts",
    )
    shared_data_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "shared" / "data",
        description="where the real sample data sets live (../shared/data beside the repo)",
    )
    batch_size: PositiveInt = 1024
    seed: NonNegativeInt = 0

    # --- streaming system: broker, Redis, trainer (services/trainer/loop.py) ---
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka host:port")
    # secrets: repr=False keeps them out of any logged Settings; a password may sit in the URL
    # (redis://:PASSWORD@host:port/0) or apart in redis_password, which overrides it
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for serving",
                           repr=False, pattern=r"^(redis|rediss|unix)://.")
    redis_password: str = Field(default="", repr=False, description="Redis AUTH password")
    checkpoint_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec" / "checkpoints",
        description="trainer checkpoints, one folder per model",
    )
    checkpoint_interval_s: PositiveFloat = 30.0  # checkpoint this often while events arrive
    checkpoint_every_events: NonNegativeInt = 200_000  # ... and after this many events (0: off)
    checkpoints_kept: PositiveInt = 2
    publish_interval_s: PositiveFloat = 2.0  # a new model version in Redis this often
    trainer_batch_events: PositiveInt = 512  # micro-batch rows of a training step
    trainer_linger_ms: NonNegativeInt = 50  # train a partial micro-batch after waiting this long
    trainer_max_poll_records: PositiveInt = 64  # Kafka messages per poll (each holds many events)
    trainer_threads: int | None = Field(default=None, ge=1)  # torch.set_num_threads, trainer
    # where a model without a checkpoint starts reading the events topic
    trainer_start: Literal["earliest", "latest"] = "earliest"
    metrics_window: PositiveInt = 10_000  # rows of the "recent" online metrics
    redis_write_chunk: PositiveInt = 2_000  # keys per Redis write script (~5 ms of Redis time)
    dense_versions_kept: PositiveInt = 3  # dense-weight blobs kept in Redis (older ones deleted)
    # one trainer per model (services/trainer/lease.py): the owner's lease in Redis lasts this long
    # unless renewed (every third of it); a second trainer waits this long, then is refused
    trainer_lease_ttl_s: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    # tansu assigns a group's partitions only after max_poll_interval; keep it small
    kafka_session_timeout_ms: PositiveInt = 6_000
    kafka_heartbeat_interval_ms: PositiveInt = 2_000  # below the session timeout (Kafka's rule)
    kafka_max_poll_interval_ms: PositiveInt = 5_000
    replay_batch_events: PositiveInt = 200  # events per Kafka message

    # --- serving (services/serving) and the local stack (services/stack/processes.py) ---
    serving_host: Host = "127.0.0.1"
    serving_port: Port = 8000
    serving_models: str = ""  # comma-separated model names to serve; empty: every model in Redis
    serving_max_items: PositiveInt = 1000  # items per /v1/score request
    serving_max_body_bytes: PositiveInt = 2 << 20  # request body limit (413 beyond it)
    serving_cache_entries: NonNegativeInt = 200_000  # records cached per model (LRU); 0: off
    serving_poll_s: PositiveFloat = 1.0  # version check interval besides the pub/sub announcements
    serving_mget_chunk: PositiveInt = 1000  # keys per MGET in one pipelined round trip
    serving_threads: NonNegativeInt = 1  # torch.set_num_threads for serving; 0: torch's
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
    serving_max_inflight: int = Field(
        default=16, gt=0, description="/v1/score requests scored at once; more wait for a slot "
        "(admitted ones keep the event loop free enough for Redis' replies to be read in time)")
    serving_queue_wait_s: float = Field(
        default=1.0, ge=0, description="how long a score request waits for a slot before its "
        "503 + Retry-After")

    # --- metadata database, A/B router, joiner (storage/db, services/router, services/joiner) ---
    database_url: str = Field(
        default="", repr=False,
        description="SQLAlchemy URL (may hold a password); empty: SQLite at data_dir/chunkrec.db")
    router_host: Host = "127.0.0.1"
    router_port: Port = 8100
    router_api_key: str = Field(default="", repr=False,
                                description="admin API key; empty: admin refused")
    serving_url: str = Field(default="", description="serving base URL for the router; empty: "
                             "http://serving_host:serving_port", pattern=r"^(|https?://.+)$")
    router_max_body_bytes: PositiveInt = 2 << 20  # request body limit of the router (413 beyond it)
    router_config_ttl_s: NonNegativeFloat = 1.0  # how long a replica caches experiment configs
    router_score_timeout_s: PositiveFloat = 2.0
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
    attribution_window_s: PositiveFloat = 30.0  # feedback within this after exposure is a click
    joiner_grace_s: NonNegativeFloat = 5.0  # an exposure closes this long after its window
    joiner_wall_clock: bool = True  # close windows by wall time too, not only by event time
    # --- logs and metrics of every process (issue 14; flat here, the lead groups them) ---
    log_format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object a line (time, level, logger, "
        "message, process), for log shippers")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="the root logger's level (kafka-python's stays at WARNING)")
    trainer_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics of `chunkrec train` on "
        "this port (0: none)")
    trainer_metrics_host: Host = Field(
        default="127.0.0.1", description="address the trainer's /metrics listens on")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_servers(cls, v: str) -> str:
        """host:port[,host:port...], every port in 1..65535."""
        for server in v.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return v

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Settings:
        # The broker refuses a consumer whose heartbeat is not below its session timeout, but
        # only once the trainer has connected; say so at start instead.
        if self.kafka_heartbeat_interval_ms >= self.kafka_session_timeout_ms:
            raise ValueError(
                f"CHUNKREC_KAFKA_HEARTBEAT_INTERVAL_MS={self.kafka_heartbeat_interval_ms} must be "
                f"below CHUNKREC_KAFKA_SESSION_TIMEOUT_MS={self.kafka_session_timeout_ms}")
        return self

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


class SettingsError(ValueError):
    """A refused setting; the message is one line naming the variable."""


def describe_validation_error(exc: ValidationError, name: Any = str,
                              secret: frozenset[str] = frozenset()) -> str:
    """One line for a pydantic refusal: `NAME=input: reason` per error, joined by '; '.
    `name` maps a field's name to what the user typed (an environment variable, a spec key);
    the input of a `secret` field is not shown (a URL may hold a password)."""
    parts = []
    for err in exc.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown name"
        if not err["loc"]:  # a whole-object check: its message names what it checks
            parts.append(msg)
            continue
        field = str(err["loc"][0])
        value = err.get("input")
        shown = isinstance(value, str | int | float) and field not in secret
        parts.append(f"{name(field)}={value!r}: {msg}" if shown else f"{name(field)}: {msg}")
    return "; ".join(parts).replace("\n", " ")


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with `overrides` (what a command line sets) winning.
    Raises SettingsError (one line naming the variable) when a value is refused."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        prefix = Settings.model_config.get("env_prefix", "")
        secret = frozenset(n for n, f in Settings.model_fields.items() if not f.repr)
        raise SettingsError(describe_validation_error(
            exc, name=lambda field: f"{prefix}{field}".upper(), secret=secret)) from None
