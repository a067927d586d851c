"""Fixtures for the metadata database, shared by tests/storage and tests/services.

`db_url` runs a test twice: on a fresh SQLite file and on a fresh PostgreSQL database
created on the server at 127.0.0.1:5432 (trust auth, user postgres, maintenance database
`test`; .ci/run starts it). Without a reachable PostgreSQL the second run is skipped with the
reason. `migrated_db` is the same after `alembic upgrade head`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


@pytest.fixture(scope="session")
def pg_unavailable() -> str | None:
    return _pg_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path,
           pg_unavailable: str | None) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
        return
    if pg_unavailable:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 not reachable ({pg_unavailable}); "
                    ".ci/run starts it")
    name = f"chunkrec_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def migrated_db(db_url: str) -> str:
    from storage.db.migrate import upgrade

    upgrade(db_url)
    return db_url


@pytest.fixture
def db_factory(migrated_db: str) -> Iterator[sessionmaker[Session]]:
    from storage.db.session import make_engine, session_factory

    engine = make_engine(migrated_db)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()
