"""Alembic, driven from Python: `upgrade(url)` is what `chunkrec db upgrade` runs;
`schema_problem(url)` is what a service checks at start (None: the database is at head).

The Alembic environment lives in migrations/ (migrations/alembic.ini, env.py, versions/);
env.py reads the database URL from the one Settings object, or from the `database_url`
attribute set here, so tests can point it at a fresh database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_ROOT = Path(__file__).resolve().parents[2]
# a source tree: migrations/ at its root; an installed wheel: the copy under chunkrec/
MIGRATIONS_DIR = next((d for d in (_ROOT / "migrations", _ROOT / "chunkrec" / "migrations")
                       if (d / "env.py").is_file()), _ROOT / "migrations")


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


def head() -> str:
    """The newest revision under migrations/versions (one head: revisions form a line)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head() or "base"


def schema_problem(url: str,
                   fix: str = "run `chunkrec db upgrade` (or start with --migrate)") -> str | None:
    """None when the database at `url` is at the newest revision, else one line naming the
    problem and `fix` (the URL shown with its password masked)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    shown = make_url(url).render_as_string(hide_password=True)
    try:
        at = current(url)
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0][:200]
        return f"database {shown} cannot be read ({type(exc).__name__}: {reason})"
    want = head()
    if at == want:
        return None
    state = "has no schema" if at is None else f"is at revision {at}, not {want}"
    return f"database {shown} {state}: {fix}"
