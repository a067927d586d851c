"""The one Settings object (env prefix CHUNKREC_). Read once by the entry points and passed in;
no other module reads os.environ.

Settings come in groups, one per part of the system: `settings.kafka.bootstrap`,
`settings.redis.url`, `settings.trainer.publish_interval_s`, `settings.serving.port`,
`settings.database.url`, `settings.router.api_key`, `settings.joiner.grace_s`,
`settings.replay.batch_events`, plus a few shared ones at the top (`data_dir`, `seed`).

Each setting has one flat name, used by the environment (`CHUNKREC_` + flat name, upper case),
by `Settings(**flat)`, `get_settings(**flat)` and `settings.replace(**flat)`: the group's name,
`_`, the field's name (`serving_port` -> `serving.port`), except a few older names that say
what they are without their group (`checkpoint_dir`, `publish_interval_s`, ... -> `trainer.*`,
`attribution_window_s` -> `joiner.*`; see `flat_names()`).

Every value is validated when read: numbers have bounds and are finite, choices are Literal,
ports are 1..65535, addresses non-empty. `get_settings()` turns a refusal into a SettingsError
whose message is one line naming the variable, e.g.
`CHUNKREC_PUBLISH_INTERVAL_S='nan': Input should be a finite number`. `get_settings()` is cached
per environment: calling it twice costs nothing and gives the same (frozen) object."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
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
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Port = Annotated[int, Field(ge=1, le=65535)]
Host = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PREFIX = "CHUNKREC_"


class Group(BaseModel):
    """A settings group: frozen, unknown names refused, nan/inf refused (a nan interval never
    fires). `UNPREFIXED` fields keep a flat name without the group's prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    UNPREFIXED: ClassVar[frozenset[str]] = frozenset()


class KafkaSettings(Group):
    bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka host:port[,host:port]")
    # tansu assigns a group's partitions only after max_poll_interval; keep it small
    session_timeout_ms: PositiveInt = 6_000
    heartbeat_interval_ms: PositiveInt = 2_000  # below the session timeout (Kafka's rule)
    max_poll_interval_ms: PositiveInt = 5_000

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap_servers(cls, v: str) -> str:
        """host:port[,host:port...], every port in 1..65535."""
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
    write_chunk: PositiveInt = 2_000  # records per pipelined round trip of bucket writes
    cluster: bool = False  # `url` is a node of a Redis Cluster (clients route by hash slot)
    bucket_records: PositiveInt = 128  # records per bucket hash on average (re-sized past 2x)

    @property
    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `redis.Redis.from_url(url, ...)` besides the URL: the
        password when `password` is set (it wins over one in the URL)."""
        return {"password": self.password} if self.password else {}


class TrainerSettings(Group):
    UNPREFIXED = frozenset({"checkpoint_dir", "checkpoint_interval_s", "checkpoint_every_events",
                            "checkpoints_kept", "publish_interval_s", "metrics_window",
                            "dense_versions_kept"})
    checkpoint_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec" / "checkpoints",
        description="trainer checkpoints, one folder per model")
    checkpoint_interval_s: PositiveFloat = 30.0  # checkpoint this often while events arrive
    checkpoint_every_events: NonNegativeInt = 200_000  # ... and after this many events (0: off)
    checkpoints_kept: PositiveInt = 2
    publish_interval_s: PositiveFloat = 2.0  # a new model version in Redis this often
    metrics_window: PositiveInt = 10_000  # rows of the "recent" online metrics
    dense_versions_kept: PositiveInt = 3  # dense-weight blobs kept in Redis (older ones deleted)
    batch_events: PositiveInt = 512  # micro-batch rows of a training step
    linger_ms: NonNegativeInt = 50  # train a partial micro-batch after waiting this long
    max_poll_records: PositiveInt = 64  # Kafka messages per poll (each holds many events)
    threads: int | None = Field(default=None, ge=1)  # torch.set_num_threads, trainer
    # where a model without a checkpoint starts reading the events topic
    start: Literal["earliest", "latest"] = "earliest"
    # one trainer per model (services/trainer/lease.py): the owner's lease in Redis lasts this long
    # unless renewed (every third of it); a second trainer waits this long, then is refused
    lease_ttl_s: float = Field(default=10.0, gt=0, le=3600)


class ReplaySettings(Group):
    batch_events: PositiveInt = 200  # events per Kafka message


class ServingSettings(Group):
    host: Host = "127.0.0.1"
    port: Port = 8000
    url: str = Field(default="", description="serving base URL for the router; empty: "
                     "http://serving_host:serving_port", pattern=r"^(|https?://.+)$")
    models: str = ""  # comma-separated model names to serve; empty: every model in Redis
    max_items: PositiveInt = 1000  # items per /v1/score request
    max_body_bytes: PositiveInt = 2 << 20  # request body limit (413 beyond it)
    cache_entries: NonNegativeInt = 200_000  # records cached per model (LRU); 0: off
    poll_s: PositiveFloat = 1.0  # version check interval besides the pub/sub announcements
    threads: NonNegativeInt = 1  # torch.set_num_threads for serving; 0: torch's
    workers: PositiveInt = 1  # processes sharing the port (uvicorn workers), each its own cache
    stale_after_s: float = Field(default=10.0, gt=0, description="/readyz answers 503 when "
                                 "a served model's version checks fail this long")
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
        default=1.0, gt=0, description="wait for a pooled Redis connection before a 503")
    body_timeout_s: float = Field(default=10.0, gt=0, description="time to receive a whole "
                                  "request body (408 beyond it)")
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
    max_body_bytes: PositiveInt = 2 << 20  # request body limit of the router (413 beyond it)
    config_ttl_s: NonNegativeFloat = 1.0  # how long a replica caches experiment configs
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
    attribution_window_s: PositiveFloat = 30.0  # feedback within this after exposure is a click
    grace_s: NonNegativeFloat = 5.0  # an exposure closes this long after its window
    wall_clock: bool = True  # close windows by wall time too, not only by event time


GROUPS: dict[str, type[Group]] = {
    "kafka": KafkaSettings, "redis": RedisSettings, "trainer": TrainerSettings,
    "replay": ReplaySettings, "serving": ServingSettings, "database": DatabaseSettings,
    "router": RouterSettings, "joiner": JoinerSettings,
}


@functools.cache
def flat_names() -> dict[str, tuple[str | None, str]]:
    """Every setting's flat name -> (group or None for a top-level one, field name)."""
    names: dict[str, tuple[str | None, str]] = {n: (None, n) for n in _TOP_LEVEL}
    for group, cls in GROUPS.items():
        for field in cls.model_fields:
            flat = field if field in cls.UNPREFIXED else f"{group}_{field}"
            names[flat] = (group, field)
    return names


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """Flat names -> the nested form (`{"serving_port": 1}` -> `{"serving": {"port": 1}}`);
    a group given whole (`{"serving": {...}}`) and unknown names pass through."""
    out: dict[str, Any] = {}
    names = flat_names()
    for key, value in values.items():
        group, field = names.get(key, (None, key))
        if group is None:
            out[key] = value
        else:
            current = out.setdefault(group, {})
            if isinstance(current, BaseModel):
                current = out[group] = current.model_dump()
            current[field] = value
    return out


class _FlatEnvSource(PydanticBaseSettingsSource):
    """CHUNKREC_<flat name> from the environment and from `.env` (the environment wins)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # all the work is in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        env_file = self.config.get("env_file")
        sources = [dotenv_values(env_file) if env_file and Path(env_file).is_file() else {},
                   os.environ]
        names = flat_names()
        for source in sources:
            for key, value in source.items():
                flat = key.lower().removeprefix(PREFIX.lower())
                if key.upper().startswith(PREFIX) and flat in names and value is not None:
                    found[flat] = value
        return _nest(found)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_file=".env", extra="ignore",
                                      allow_inf_nan=False, frozen=True)

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

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    trainer: TrainerSettings = TrainerSettings()
    replay: ReplaySettings = ReplaySettings()
    serving: ServingSettings = ServingSettings()
    database: DatabaseSettings = DatabaseSettings()
    router: RouterSettings = RouterSettings()
    joiner: JoinerSettings = JoinerSettings()

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        return _nest(data) if isinstance(data, dict) else data

    def replace(self, **flat: Any) -> Settings:
        """A validated copy with some settings changed, by flat name
        (`settings.replace(serving_port=8001, checkpoint_dir=path)`)."""
        values = self.model_dump()
        for key, value in _nest(flat).items():
            if isinstance(value, dict) and key in GROUPS:
                values[key] = values[key] | value
            else:
                values[key] = value
        return type(self)(**values)

    def is_set(self, flat: str) -> bool:
        """Whether a setting was given (environment, .env or arguments), not defaulted."""
        group, field = flat_names()[flat]
        if group is None:
            return field in self.model_fields_set
        return group in self.model_fields_set and field in getattr(self, group).model_fields_set

    def to_env(self, **flat: Any) -> dict[str, str]:
        """The CHUNKREC_* variables that give a child process these settings (with `flat`
        changed); secrets included, None left out."""
        source = self.replace(**flat) if flat else self
        env = {}
        for name, (group, field) in flat_names().items():
            value = getattr(getattr(source, group) if group else source, field)
            if value is not None:
                env[f"{PREFIX}{name.upper()}"] = str(value)
        return env

    @property
    def resolved_database_url(self) -> str:
        """`database.url`, or SQLite under `data_dir` when it is empty."""
        return self.database.url or f"sqlite:///{Path(self.data_dir) / 'chunkrec.db'}"

    @property
    def resolved_serving_url(self) -> str:
        return self.serving.url or f"http://{self.serving.host}:{self.serving.port}"


_TOP_LEVEL = ("data_dir", "shared_data_dir", "batch_size", "seed")


class SettingsError(ValueError):
    """A refused setting; the message is one line naming the variable."""


def describe_validation_error(exc: ValidationError, name: Any = str,
                              secret: frozenset[str] = frozenset()) -> str:
    """One line for a pydantic refusal: `NAME=input: reason` per error, joined by '; '.
    `name` maps a field's location (its names joined by '.') to what the user typed (an
    environment variable, a spec key); the input of a `secret` field is not shown (a URL may
    hold a password)."""
    parts = []
    for err in exc.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown name"
        loc = [str(p) for p in err["loc"]]
        if not loc or (len(loc) == 1 and loc[0] in GROUPS):  # a whole-object check
            parts.append(msg)
            continue
        field = ".".join(loc)
        value = err.get("input")
        shown = isinstance(value, str | int | float) and field not in secret
        parts.append(f"{name(field)}={value!r}: {msg}" if shown else f"{name(field)}: {msg}")
    return "; ".join(parts).replace("\n", " ")


def _env_name(location: str) -> str:
    """`serving.port` -> CHUNKREC_SERVING_PORT; `trainer.checkpoint_dir` -> its flat name."""
    by_location = {(f"{g}.{f}" if g else f): flat for flat, (g, f) in flat_names().items()}
    return f"{PREFIX}{by_location.get(location, location.replace('.', '_'))}".upper()


_SECRETS = frozenset(f"{g}.{f}" for g, cls in GROUPS.items()
                     for f, info in cls.model_fields.items() if not info.repr)


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with `overrides` (what a command line sets, by flat
    name) winning. Cached per environment and overrides. Raises SettingsError (one line naming
    the variable) when a value is refused."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX)))
    return _cached_settings(env, tuple(sorted(overrides.items(), key=lambda kv: kv[0])))


@functools.lru_cache(maxsize=32)
def _cached_settings(env: tuple[tuple[str, str], ...],
                     overrides: tuple[tuple[str, Any], ...]) -> Settings:
    try:
        return Settings(**dict(overrides))
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, name=_env_name,
                                                      secret=_SECRETS)) from None
