"""A command given a bad setting or a bad policy spec stops at once: exit status 2 and one line
naming the setting or parameter, before anything is started or connected (the addresses
below lead nowhere, so a command that got as far as connecting would hang or fail otherwise)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from services.cli import app

NOWHERE = {"CHUNKREC_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CHUNKREC_REDIS_URL": "redis://127.0.0.1:9/0"}
TRAIN = ["train", "--model", "m", "--data", "synthetic:events=1000"]


def _one_line_error(result, name: str) -> None:  # noqa: ANN001 - click's Result
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0]


@pytest.mark.parametrize(("env", "name"), [
    ({"CHUNKREC_PUBLISH_INTERVAL_S": "nan"}, "CHUNKREC_PUBLISH_INTERVAL_S"),
    ({"CHUNKREC_TRAINER_START": "middle"}, "CHUNKREC_TRAINER_START"),
    ({"CHUNKREC_SERVING_MAX_ITEMS": "-5"}, "CHUNKREC_SERVING_MAX_ITEMS"),
])
def test_a_bad_setting_stops_any_command(env: dict[str, str], name: str) -> None:
    for args in (TRAIN + ["--policy", "fixed:8"], ["serve"], ["replay", "--data", "x"]):
        result = CliRunner().invoke(app, args, env=NOWHERE | env)
        _one_line_error(result, name)


@pytest.mark.parametrize(("policy", "name"), [
    ("fixed:-8", "dim"), ("fiited:interval=0", "interval"), ("fixed:64,fixd:64", "fixd:64"),
    ("fiited:budget=2", "budget"), ("nosuch:1", "nosuch"),
])
def test_a_bad_policy_spec_stops_train(policy: str, name: str) -> None:
    result = CliRunner().invoke(app, TRAIN + ["--policy", policy], env=NOWHERE)
    _one_line_error(result, name)


def test_a_bad_override_on_the_command_line_is_refused() -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "70000"], env=NOWHERE)
    _one_line_error(result, "SERVING_PORT")


HEAVY = ("torch", "sklearn", "pandas", "statsmodels", "matplotlib")


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["bench", "quality", "--help"],
                                  ["up", "--help"], ["join", "--help"]])
def test_help_loads_no_heavy_module(args: list[str]) -> None:
    """`chunkrec --help` and a command's --help import no heavy library: each command imports
    what it needs when it runs (a timing assertion would be flaky; this is what makes it fast)."""
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from services.cli import app\n"
            f"result = CliRunner().invoke(app, {args!r})\n"
            "assert result.exit_code == 0, result.output\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
