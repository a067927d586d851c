"""Option values shared by several commands, parsed the same way everywhere."""

from __future__ import annotations

import typer


def rate_option(raw: str, hint: str) -> float | None:
    """A --rate-like option: events (or sessions) per second, or 'max' (None: unthrottled);
    services/stack/replay.py's parse_rate, refused as a bad parameter naming `hint`."""
    from services.stack.replay import parse_rate

    try:
        return parse_rate(raw)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
