"""The settings groups (see storage/settings/__init__.py): one pydantic model per part of the
system, frozen, every number bounded. A field's environment variable is CHUNKREC_<GROUP>_<FIELD>
unless the group lists it in UNPREFIXED (then CHUNKREC_<FIELD>)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StringConstraints,
    field_validator,
    model_validator,
)

Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PREFIX = "CHUNKREC_"


class Group(BaseModel):
    """A settings group: frozen; unknown names, nan and inf refused (a nan interval never
    fires). `UNPREFIXED` fields keep a flat name without the group's prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    UNPREFIXED: ClassVar[frozenset[str]] = frozenset()


class KafkaSettings(Group):
    bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka host:port[,host:port]")
    # tansu assigns a group's partitions only after max_poll_interval; keep it small
    session_timeout_ms: PositiveInt = 6_000
    heartbeat_interval_ms: PositiveInt = Field(default=2_000, description="below the session "
        "timeout (Kafka's rule)")
    max_poll_interval_ms: PositiveInt = 5_000
    events_partitions: int = Field(default=2, ge=1, le=1024, description="partitions of the "
        "events topic `chunkrec up` creates: at least the largest `train --workers N` (rank r "
        "reads partitions p mod N = r; more ranks than partitions leave ranks idle)")

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_servers(cls, v: str) -> str:  # host:port[,...], every port in 1..65535
        for server in v.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return v

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        # The broker refuses a consumer whose heartbeat is not below its session timeout, but
        # only once the trainer has connected; say so at start instead.
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"CHUNKREC_KAFKA_HEARTBEAT_INTERVAL_MS={self.heartbeat_interval_ms} must be "
                f"below CHUNKREC_KAFKA_SESSION_TIMEOUT_MS={self.session_timeout_ms}")
        return self


class RedisSettings(Group):
    # secrets: repr=False keeps them out of any logged Settings; a password may sit in the URL
    # (redis://:PASSWORD@host:port/0) or apart in `password`, which overrides it
    url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for serving",
                     repr=False, pattern=r"^(redis|rediss|unix)://.")
    password: str = Field(default="", repr=False, description="Redis AUTH password")
    write_chunk: PositiveInt = Field(default=2_000, description="records per pipelined round "
                                     "trip of bucket writes")
    cluster: bool = Field(default=False, description="`url` is a node of a Redis Cluster "
                          "(clients route by hash slot)")
    bucket_records: PositiveInt = Field(default=128, description="records per bucket hash on "
                                        "average (re-sized past 2x)")

    @property
    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `redis.Redis.from_url(url, ...)` besides the URL: the
        password when `password` is set (it wins over one in the URL)."""
        return {"password": self.password} if self.password else {}


class LogSettings(Group):
    format: Literal["text", "json"] = Field(
        default="text", description="`json`: one JSON object a line (time, level, logger, "
        "message, process), for log shippers")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="the root logger's level (kafka-python's stays at WARNING)")

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.strip().upper() if isinstance(v, str) else v


class TrainerSettings(Group):
    UNPREFIXED = frozenset({"checkpoint_dir", "checkpoint_interval_s", "checkpoint_every_events",
                            "checkpoints_kept", "publish_interval_s", "metrics_window",
                            "dense_versions_kept"})
    checkpoint_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec" / "checkpoints",
        description="trainer checkpoints, one folder per model")
    checkpoint_interval_s: PositiveFloat = Field(default=30.0, description="checkpoint this "
        "often while events arrive")
    checkpoint_every_events: NonNegativeInt = Field(default=200_000, description="checkpoint "
        "after this many events too (0: off)")
    checkpoints_kept: PositiveInt = Field(default=2, description="checkpoints kept per model")
    publish_interval_s: PositiveFloat = Field(default=2.0, description="a new model version in "
        "Redis this often")
    publish_max_share: float = Field(default=0.25, gt=0, le=1, description="publish less often "
        "when publishing cannot keep up: at most this share of the trainer's time (1: no limit)")
    publish_background: bool = Field(default=False, description="write each version to Redis "
        "on a publishing thread while training goes on (one version in flight)")
    metrics_window: PositiveInt = Field(default=10_000, description="rows of the 'recent' online "
        "metrics")
    dense_versions_kept: PositiveInt = Field(default=3, description="dense-weight blobs kept in "
        "Redis (older ones deleted)")
    batch_events: PositiveInt = Field(default=512, description="micro-batch rows of a training "
        "step")
    linger_ms: NonNegativeInt = Field(default=50, description="train a partial micro-batch after "
        "waiting this long")
    max_poll_records: PositiveInt = Field(default=64, description="Kafka messages per poll (each "
        "holds many events)")
    threads: int | None = Field(default=None, ge=1, description="torch threads of the trainer")
    start: Literal["earliest", "latest"] = Field(
        default="earliest", description="where a model without a checkpoint starts reading")
    # one trainer per model (services/trainer/lease.py): the owner's lease in Redis lasts this long
    # unless renewed (every third of it); a second trainer waits this long, then is refused
    lease_ttl_s: float = Field(default=10.0, gt=0, le=3600, description="one trainer per model: "
                               "its lease in Redis lasts this long unless renewed")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="where the trainer's store, network and batches live")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics of "
                              "`chunkrec train` on this port (0: none)")
    metrics_host: Host = Field(default="127.0.0.1",
                               description="address the trainer's /metrics listens on")


class ReplaySettings(Group):
    batch_events: PositiveInt = Field(default=200, description="events per Kafka message (JSON)")
    # events per Arrow message (services/wire/arrow_events.py: at most 65536 a message)
    arrow_batch_events: int = Field(default=2048, ge=1, le=65_536)


class ServingSettings(Group):
    host: Host = "127.0.0.1"
    port: Port = 8000
    url: str = Field(default="", description="serving base URL for the router; empty: "
                     "http://serving_host:serving_port", pattern=r"^(|https?://.+)$")
    models: str = Field(default="", description="comma-separated model names to serve; empty: "
        "every model in Redis")
    max_items: PositiveInt = Field(default=1000, description="items per /v1/score request")
    max_body_bytes: PositiveInt = Field(default=2 << 20, description="request body limit (413 "
        "beyond it)")
    cache_entries: NonNegativeInt = Field(default=200_000, description="records cached per model "
        "(LRU); 0: off")
    poll_s: PositiveFloat = Field(default=1.0, description="version check interval besides the "
        "pub/sub announcements")
    threads: NonNegativeInt = Field(default=1, description="torch.set_num_threads for serving; "
        "0: torch's")
    workers: PositiveInt = Field(default=1, description="processes sharing the port (uvicorn "
                                 "workers), each its own cache")
    stale_after_s: float = Field(
        default=10.0, gt=0, description="a served model whose version refresh has failed for "
        "this long makes /readyz answer 503")
    hash_memo_bytes: int = Field(
        default=32 << 20, gt=0, description="bytes of the raw-value -> ID memo (it starts "
        "over beyond them)")
    redis_timeout_s: float = Field(
        default=1.0, gt=0, description="Redis connect and socket timeout of serving: a hung "
        "Redis gives a 503 this soon")
    redis_max_connections: int = Field(
        default=32, ge=2, description="serving's Redis connection pool (one is the pub/sub "
        "listener's); a request waits for a free one")
    redis_pool_timeout_s: float = Field(
        default=1.0, gt=0, description="how long a request waits for a pooled Redis "
        "connection before its 503")
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="time to receive a whole request body (408 beyond it)")
    max_inflight: int = Field(
        default=16, gt=0, description="/v1/score requests scored at once; more wait for a slot "
        "(admitted ones keep the event loop free enough for Redis' replies to be read in time)")
    queue_wait_s: float = Field(
        default=1.0, ge=0, description="how long a score request waits for a slot before its "
        "503 + Retry-After")


class DatabaseSettings(Group):
    url: str = Field(
        default="", repr=False,
        description="SQLAlchemy URL (may hold a password); empty: SQLite at data_dir/chunkrec.db")


class RouterSettings(Group):
    host: Host = "127.0.0.1"
    port: Port = 8100
    api_key: str = Field(default="", repr=False, description="admin API key; empty: admin refused")
    max_body_bytes: PositiveInt = Field(default=2 << 20, description="request body limit of the "
        "router (413 beyond it)")
    config_ttl_s: NonNegativeFloat = Field(default=1.0, description="how long a replica caches "
        "experiment configs")
    score_timeout_s: PositiveFloat = 2.0
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="time to receive a whole request body at the router "
        "(408 beyond it)")
    max_candidates: int = Field(
        default=100, gt=0, le=1000, description="candidates per /v1/rank (422 beyond): each "
        "shown one becomes a training event")
    max_exposure_bytes: int = Field(
        default=512 << 10, gt=0, le=900_000, description="largest exposure message (the "
        "candidates' features as sent to serving and Kafka; 413 beyond), well under Kafka's "
        "1 MB message limit")
    unit_requests_per_minute: float = Field(
        default=1200.0, gt=0, description="ranks + feedback one unit may send per minute "
        "(a token bucket of this size, refilled evenly; 429 + Retry-After beyond)")
    rate_limit_units: int = Field(
        default=100_000, gt=0, description="units (and issued requests) a router replica "
        "remembers for rate limits and feedback checks; the least recent are forgotten")
    serving_concurrency: int = Field(
        default=64, gt=0, description="score calls in flight to serving (the HTTP pool size)")
    queue_wait_s: float = Field(
        default=0.25, ge=0, description="how long a rank waits for a free score slot before "
        "its 503 + Retry-After")
    item_table: Path | None = Field(
        default=None, description="CSV or Parquet of items (column `item` + one column per "
        "item feature): item features come from it, never from clients; unknown items 422")
    migrate: bool = Field(
        default=False, description="upgrade the database to the newest schema when the "
        "router starts (else a database behind it stops the router)")


class JoinerSettings(Group):
    UNPREFIXED = frozenset({"attribution_window_s"})
    attribution_window_s: PositiveFloat = Field(default=30.0, description="feedback within this "
        "after exposure is a click")
    grace_s: NonNegativeFloat = Field(default=5.0, description="an exposure closes this long "
        "after its window")
    wall_clock: bool = Field(default=True, description="close windows by wall time too, not only "
        "by event time")


GROUPS: dict[str, type[Group]] = {
    "kafka": KafkaSettings, "redis": RedisSettings, "trainer": TrainerSettings,
    "replay": ReplaySettings, "serving": ServingSettings, "database": DatabaseSettings,
    "router": RouterSettings, "joiner": JoinerSettings, "log": LogSettings,
}
