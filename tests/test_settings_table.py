"""README's settings table lists exactly the CHUNKREC_* variables the Settings class reads
(walked by `chunkrec settings`, nested groups included), with their defaults."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from services.cli import app
from services.cli.commands.settings import setting_rows

ROOT = Path(__file__).resolve().parents[1]


def _readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Every setting"):]
    return dict(re.findall(r"^\| `(CHUNKREC_[A-Z0-9_]+)` \| `?([^|`]*)`? \|", section, re.M))


def test_readme_lists_every_setting_with_its_default() -> None:
    readme = _readme_table()
    rows = {name: default for name, default, _ in setting_rows()}
    assert len(rows) > 40
    assert set(readme) == set(rows), (set(rows) - set(readme), set(readme) - set(rows))
    for name, default in rows.items():
        assert readme[name].strip() == default, name


def test_settings_command_prints_the_table() -> None:
    out = CliRunner().invoke(app, ["settings", "--markdown"]).stdout
    assert "| `CHUNKREC_KAFKA_BOOTSTRAP` | `127.0.0.1:9092` |" in out
    assert "| `CHUNKREC_LOG_FORMAT` | `text` |" in out
