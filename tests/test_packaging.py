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
