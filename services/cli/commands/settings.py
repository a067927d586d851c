"""`chunkrec settings`: every CHUNKREC_* variable, its default and what it sets, read from the
Settings class itself (README's settings table is this command's `--markdown` output).

    chunkrec settings              # name, default, description
    chunkrec settings --markdown   # the README table
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

REPO = Path(__file__).resolve().parents[3]


def setting_rows() -> Iterator[tuple[str, str, str]]:
    """(environment variable, default, description) of every setting, by its flat name
    (storage.settings.flat_names: CHUNKREC_<GROUP>_<FIELD>, or an older name)."""
    from storage.settings import GROUPS, PREFIX, Settings, flat_names

    for flat, (group, name) in flat_names().items():
        field = (GROUPS[group] if group else Settings).model_fields[name]
        default = "" if field.is_required() else field.get_default(call_default_factory=True)
        yield f"{PREFIX}{flat}".upper(), _shown(default), field.description or ""


def _shown(value: Any) -> str:
    """A default as the README shows it: paths from the home or the checkout's parent."""
    if isinstance(value, Path):
        for base, shown in ((REPO.parent, ".."), (Path.home(), "~")):
            if value.is_relative_to(base):
                return f"{shown}/{value.relative_to(base)}"
    if value is None or value == "":
        return "(none)"
    return str(value)


def settings_command(markdown: bool = typer.Option(
        False, "--markdown", help="the README's table")) -> None:
    """Every CHUNKREC_* setting: its default and what it sets (values are read from the
    environment and a .env file in the working folder)."""
    rows = list(setting_rows())
    if markdown:
        typer.echo("| variable | default | what |\n|---|---|---|")
        for name, default, what in rows:
            typer.echo(f"| `{name}` | `{default}` | {what} |".replace("``", ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("variable", "default", "what")
    for row in rows:
        table.add_row(*row)
    Console().print(table, markup=False)
