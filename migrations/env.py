"""Alembic environment: the URL is the one Settings object's (or the `database_url` attribute
that storage.db.migrate sets), the target metadata is storage.db.models.Base.metadata."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from storage.db.models import Base
from storage.db.session import make_engine
from storage.settings import get_settings

config = context.config
if config.config_file_name is not None and not config.attributes.get("database_url"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    return config.attributes.get("database_url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            # batch mode: SQLite cannot ALTER most things, so later revisions copy tables
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
