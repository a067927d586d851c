"""Settings are validated when read: a bad value is refused with one line naming the setting,
and the defaults (and sane overrides) still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.settings import (
    GROUPS,
    ServingSettings,
    Settings,
    SettingsError,
    flat_names,
    get_settings,
)

BAD = [
    ("PUBLISH_INTERVAL_S", "nan"),
    ("PUBLISH_INTERVAL_S", "0"),
    ("PUBLISH_INTERVAL_S", "inf"),
    ("CHECKPOINT_INTERVAL_S", "-1"),
    ("CHECKPOINT_EVERY_EVENTS", "-5"),
    ("CHECKPOINTS_KEPT", "0"),
    ("BATCH_SIZE", "0"),
    ("SEED", "-1"),
    ("SERVING_MAX_ITEMS", "-5"),
    ("SERVING_MAX_BODY_BYTES", "0"),
    ("SERVING_WORKERS", "0"),
    ("SERVING_POLL_S", "0"),
    ("SERVING_CACHE_ENTRIES", "-1"),
    ("SERVING_THREADS", "-1"),
    ("SERVING_PORT", "0"),
    ("SERVING_PORT", "70000"),
    ("ROUTER_PORT", "65536"),
    ("SERVING_HOST", ""),
    ("ROUTER_HOST", ""),
    ("TRAINER_START", "middle"),
    ("TRAINER_BATCH_EVENTS", "0"),
    ("TRAINER_LINGER_MS", "-1"),
    ("TRAINER_MAX_POLL_RECORDS", "0"),
    ("TRAINER_THREADS", "0"),
    ("METRICS_WINDOW", "0"),
    ("REDIS_WRITE_CHUNK", "0"),
    ("DENSE_VERSIONS_KEPT", "0"),
    ("KAFKA_SESSION_TIMEOUT_MS", "0"),
    ("KAFKA_HEARTBEAT_INTERVAL_MS", "-2"),
    ("KAFKA_MAX_POLL_INTERVAL_MS", "0"),
    ("REPLAY_BATCH_EVENTS", "0"),
    ("KAFKA_BOOTSTRAP", ""),
    ("KAFKA_BOOTSTRAP", "localhost"),
    ("KAFKA_BOOTSTRAP", "localhost:99999"),
    ("REDIS_URL", ""),
    ("REDIS_URL", "127.0.0.1:6379"),
    ("SERVING_URL", "serving:8000"),
    ("ROUTER_MAX_BODY_BYTES", "0"),
    ("ROUTER_CONFIG_TTL_S", "-1"),
    ("ROUTER_SCORE_TIMEOUT_S", "0"),
    ("ATTRIBUTION_WINDOW_S", "1e999"),
    ("ATTRIBUTION_WINDOW_S", "0"),
    ("JOINER_GRACE_S", "-1"),
    ("JOINER_GRACE_S", "nan"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_a_bad_setting_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, name: str,
                                            value: str) -> None:
    monkeypatch.setenv(f"CHUNKREC_{name}", value)
    with pytest.raises(SettingsError) as info:
        get_settings()
    message = str(info.value)
    assert f"CHUNKREC_{name}" in message
    assert "\n" not in message


def test_the_defaults_and_sane_values_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("PUBLISH_INTERVAL_S", "0.25"), ("TRAINER_START", "latest"),
                        ("KAFKA_BOOTSTRAP", "k1:9092,k2:19092"), ("CHECKPOINT_EVERY_EVENTS", "0"),
                        ("REDIS_URL", "rediss://:pw@redis.example:6380/2"),
                        ("SERVING_URL", "http://serving:8000"), ("ROUTER_CONFIG_TTL_S", "0"),
                        ("SERVING_CACHE_ENTRIES", "0"), ("SERVING_PORT", "65535")]:
        monkeypatch.setenv(f"CHUNKREC_{name}", value)
    s = get_settings()
    assert s.trainer.publish_interval_s == 0.25 and s.trainer.start == "latest"
    assert s.serving.port == 65535
    monkeypatch.delenv("CHUNKREC_SERVING_PORT")
    assert get_settings().serving.port == ServingSettings.model_fields["port"].default


def test_overrides_are_validated_too() -> None:
    """What a command line sets goes through the same checks as the environment."""
    assert get_settings(serving_port=8123).serving.port == 8123
    with pytest.raises(SettingsError, match="CHUNKREC_SERVING_PORT"):
        get_settings(serving_port=70000)


def test_heartbeat_must_be_shorter_than_the_session_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKREC_KAFKA_HEARTBEAT_INTERVAL_MS", "9000")
    with pytest.raises(SettingsError, match="CHUNKREC_KAFKA_HEARTBEAT_INTERVAL_MS"):
        get_settings()


def test_every_numeric_setting_is_bounded() -> None:
    """A new numeric setting without bounds fails here, so the rule cannot drift."""
    fields = [(name, field) for name, field in Settings.model_fields.items()
              if name not in GROUPS]
    fields += [(f"{g}.{name}", field) for g, cls in GROUPS.items()
               for name, field in cls.model_fields.items()]
    assert len(fields) == len(flat_names()) > 50
    for name, field in fields:
        ann = str(field.annotation)
        if "int" in ann or "float" in ann:
            bounded = any(
                getattr(m, attr, None) is not None
                for m in field.metadata for attr in ("gt", "ge", "lt", "le")
            )
            assert bounded, f"{name} has no bounds"


def test_settings_are_grouped_cached_and_copied_by_flat_name(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Flat names (the environment's) reach the groups; get_settings() is one object per
    environment; replace() validates; to_env() round-trips through a child's environment."""
    monkeypatch.setenv("CHUNKREC_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("CHUNKREC_ROUTER_API_KEY", "k")
    s = get_settings()
    assert s is get_settings()
    assert s.trainer.checkpoint_dir == tmp_path and s.router.api_key == "k"
    monkeypatch.setenv("CHUNKREC_ROUTER_API_KEY", "other")
    assert get_settings() is not s and get_settings().router.api_key == "other"
    copy = s.replace(serving_port=8123, attribution_window_s=3.0)
    assert (copy.serving.port, copy.joiner.attribution_window_s) == (8123, 3.0)
    assert s.serving.port != 8123 and copy.trainer.checkpoint_dir == tmp_path
    with pytest.raises(ValueError, match="less than or equal to 65535"):
        s.replace(serving_port=70000)
    env = copy.to_env()
    assert env["CHUNKREC_SERVING_PORT"] == "8123" and env["CHUNKREC_ROUTER_API_KEY"] == "k"
    for name in list(env):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert get_settings() == copy
    with pytest.raises(ValueError, match="frozen"):
        s.serving.port = 1  # type: ignore[misc]


def test_a_refused_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKREC_REDIS_URL", "redsi://:hunter2@redis:6379/0")
    with pytest.raises(SettingsError, match="CHUNKREC_REDIS_URL") as info:
        get_settings()
    assert "hunter2" not in str(info.value)
