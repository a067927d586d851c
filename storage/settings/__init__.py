"""The one Settings object (env prefix CHUNKREC_). Read once by the entry points and passed in;
no other module reads os.environ.

Settings come in groups, one per part of the system: `settings.kafka.bootstrap`,
`settings.redis.url`, `settings.trainer.publish_interval_s`, `settings.serving.port`,
`settings.database.url`, `settings.router.api_key`, `settings.joiner.grace_s`,
`settings.replay.batch_events`, `settings.log.level`, plus a few shared ones at the top
(`data_dir`, `seed`). The groups are in groups.py.

Each setting has one flat name, used by the environment (`CHUNKREC_` + flat name, upper case),
by `Settings(**flat)`, `get_settings(**flat)` and `settings.replace(**flat)`: the group's name,
`_`, the field's name (`serving_port` -> `serving.port`), except a few older names that say
what they are without their group (`checkpoint_dir`, `publish_interval_s`, ... -> `trainer.*`,
`attribution_window_s` -> `joiner.*`; see `flat_names()`).

Every value is validated when read: numbers have bounds and are finite, choices are Literal,
ports are 1..65535, addresses non-empty. `get_settings()` turns a refusal into a SettingsError
whose message is one line naming the variable, e.g.
`CHUNKREC_PUBLISH_INTERVAL_S='nan': Input should be a finite number`. `get_settings()` is cached
per environment (the same frozen object until a CHUNKREC_ variable changes)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from storage.settings.groups import (
    GROUPS,
    DatabaseSettings,
    Group,
    JoinerSettings,
    KafkaSettings,
    LogSettings,
    RedisSettings,
    ReplaySettings,
    RouterSettings,
    ServingSettings,
    TrainerSettings,
)

PREFIX = "CHUNKREC_"
__all__ = ["GROUPS", "PREFIX", "DatabaseSettings", "Group", "JoinerSettings", "KafkaSettings",
           "LogSettings", "RedisSettings", "ReplaySettings", "RouterSettings", "ServingSettings",
           "Settings", "SettingsError", "TrainerSettings", "describe_validation_error",
           "flat_names", "get_settings"]


_TOP_LEVEL = ("data_dir", "shared_data_dir", "batch_size", "seed")  # settings of no group

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
        return None, field_name, False  # unused: __call__ reads every variable at once

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
        default=Path(__file__).resolve().parents[3] / "shared" / "data",
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
    log: LogSettings = LogSettings()

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
    def resolved_serving_url(self) -> str:  # what the router calls
        return self.serving.url or f"http://{self.serving.host}:{self.serving.port}"



class SettingsError(ValueError):
    """A refused setting; the message is one line naming the variable."""


def describe_validation_error(exc: ValidationError, name: Any = str,
                              secret: frozenset[str] = frozenset()) -> str:
    """One line for a pydantic refusal: `NAME=input: reason` per error, joined by '; '. `name`
    maps a location ('serving.port') to what the user typed (a variable, a spec key); the
    input of a `secret` field is not shown (a URL may hold a password)."""
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


_SECRETS = frozenset(f"{g}.{f}" for g, cls in GROUPS.items() for f, i in cls.model_fields.items()
                     if not i.repr)


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
