"""Alembic, driven from Python: `upgrade(url)` is what `chunkrec db upgrade` runs.

The Alembic environment lives in migrations/ (migrations/alembic.ini, env.py, versions/);
env.py reads the database URL from the one Settings object, or from the `database_url`
attribute set here, so tests can point it at a fresh database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision `url` is at (None: not under Alembic yet)."""
    from alembic.runtime.migration import MigrationContext

    from storage.db.session import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
