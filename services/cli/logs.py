"""Logging of every `chunkrec` process, set once from the settings before a command runs:

    CHUNKREC_LOG_FORMAT=json CHUNKREC_LOG_LEVEL=DEBUG chunkrec train ...

`text` (default): `2026-12-03 13:00:00,123 INFO chunkrec.trainer message`. `json`: one JSON
object a line (python-json-logger): {"time", "level", "logger", "message", "process"} plus
whatever a record carries in `extra=`; uvicorn's loggers go through the same handler (the
commands run uvicorn with log_config=None), so a service's logs parse line by line.
kafka-python, httpx and Alembic stay at WARNING (they log every connection, request or
plugin at INFO)."""

from __future__ import annotations

import logging
import sys

TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CHATTY = ("kafka", "httpx", "httpcore", "alembic")
# uvicorn's own loggers, which its default config would give handlers of their own
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """The root logger writes to stderr as `log_format` at `level`; everything propagates to
    it (uvicorn's loggers too: their own handlers are removed)."""
    handler = _Stderr()
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(process)d",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)  # ours from an earlier call; others' handlers stay
    root.addHandler(handler)
    root.setLevel(level)
    for name in UVICORN:
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for chatty in CHATTY:  # their INFO is a line per connection or request
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))



class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever sys.stderr is when a record is written (a test runner may
    swap it for a while), not the one there was when logging was set up."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass
