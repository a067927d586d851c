"""A/B commands: `chunkrec db upgrade|downgrade`, `chunkrec route`, `chunkrec join`,
`chunkrec report`.

    chunkrec db upgrade
    CHUNKREC_ROUTER_API_KEY=... chunkrec route --port 8100
    chunkrec join --default-schema movielens-100k
    chunkrec report 1 [--json]
"""

from __future__ import annotations

from typing import Annotated

import typer

db_app = typer.Typer(no_args_is_help=True)


def _migrate(step: str, revision: str) -> None:
    """`chunkrec db upgrade|downgrade REVISION`; an unreachable database, a folder that does
    not exist or an unknown revision is one line (services/cli/preflight.py), exit 2."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from services.cli.preflight import database_problem, fail_if, one_line, shown_url
    from storage.db import migrate
    from storage.settings import get_settings

    settings = get_settings()
    url = settings.resolved_database_url
    fail_if(_revision_problem(revision))  # before the database is touched
    fail_if(database_problem(url, need_schema=False, explicit=bool(settings.database.url)))
    try:
        getattr(migrate, step)(url, revision)
        at = migrate.current(url)
    except CommandError as exc:
        fail_if(f"cannot {step} {shown_url(url)} to {revision!r}: {one_line(exc)}")
    except SQLAlchemyError as exc:
        fail_if(f"cannot {step} {shown_url(url)}: {one_line(exc)}")
    typer.echo(f"{shown_url(url)}: at revision {at}")


def _revision_problem(revision: str) -> str | None:
    """None when Alembic knows `revision` (an id, head, base, +1/-1...), else one line listing
    the revisions there are."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    from storage.db.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    if revision in ("head", "heads", "base") or revision[:1] in "+-":
        return None
    try:
        script.get_revisions(revision)
        return None
    except CommandError:
        known = ", ".join(sorted(r.revision for r in script.walk_revisions()))
        return f"no database revision {revision!r}: expected one of {known}, head or base"


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply Alembic revisions to CHUNKREC_DATABASE_URL (default SQLite in the data dir)."""
    _migrate("upgrade", revision)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()] = "base") -> None:
    """Revert Alembic revisions (default: everything)."""
    _migrate("downgrade", revision)


def route(host: Annotated[str | None, typer.Option()] = None,
          port: Annotated[int | None, typer.Option()] = None,
          migrate: Annotated[bool, typer.Option(
              "--migrate", help="upgrade the database to the newest schema first "
              "(CHUNKREC_ROUTER_MIGRATE)")] = False) -> None:
    """Run the A/B router (FastAPI on uvicorn): admin, /v1/rank, /v1/feedback, reports,
    the dashboard at /experiments/{id}. A database behind the newest schema stops it with
    one line naming the fix, unless --migrate."""
    from services.cli.preflight import database_problem, extra_problem, fail_if

    fail_if(extra_problem("statsmodels", "ab", "the A/B router"))
    import uvicorn

    from services.experiments.router.app import create_app
    from services.messaging.reachable import broker_problem
    from storage.settings import get_settings

    settings = get_settings()
    if migrate:
        settings = settings.replace(router_migrate=True)
    # checked here too (the app checks at startup), so the refusal is one line, not uvicorn's
    # traceback of a failed lifespan
    url = settings.resolved_database_url
    problem = database_problem(url, need_schema=not settings.router.migrate,
                               explicit=bool(settings.database.url),
                               fix="run `chunkrec db upgrade` (or start with --migrate)")
    if problem is None and settings.router.item_table is not None:
        from services.experiments.router.items import ItemTable, ItemTableError

        try:
            ItemTable.load(settings.router.item_table)
        except ItemTableError as exc:
            problem = str(exc)
    if problem is None:  # before uvicorn, whose startup would block ~40 s deaf to SIGTERM
        problem = broker_problem(settings.kafka.bootstrap)
    fail_if(problem)
    uvicorn.run(create_app(settings), host=host or settings.router.host,
                port=port or settings.router.port, log_level="warning", log_config=None)


def join(default_schema: Annotated[str, typer.Option(
             help="data set spec whose schema the events follow when a model's Redis version "
                  "does not say")] = "movielens-100k",
         record_every_s: Annotated[float, typer.Option(
             help="copy model versions from Redis to the database this often")] = 5.0) -> None:
    """Run the joiner: exposures + feedback -> labelled events and outcomes; also records the
    arms' model versions (embedding bytes, live-chunk histogram) from Redis."""
    from services.experiments.run_joiner import run_joiner
    from storage.datasets.spec import DatasetError
    from storage.settings import get_settings

    try:
        run_joiner(get_settings(), default_schema, record_every_s, echo=typer.echo)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def report(experiment_id: Annotated[int, typer.Argument()],
           phase: Annotated[int | None, typer.Option()] = None,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print an experiment's report (per-arm CTR with CIs, differences, mSPRT, SRM, AUC,
    latency, embedding bytes)."""
    from services.cli.preflight import database_problem, extra_problem, fail_if

    fail_if(extra_problem("statsmodels", "ab", "the A/B report"))
    import orjson

    from services.experiments.analysis import experiment_report
    from services.experiments.verdict_text import format_report
    from storage.db.session import make_engine, session_factory
    from storage.settings import get_settings

    settings = get_settings()
    fail_if(database_problem(settings.resolved_database_url, need_schema=True))
    factory = session_factory(make_engine(settings.resolved_database_url))
    with factory() as s:
        try:
            rep = experiment_report(s, experiment_id, phase=phase)
        except LookupError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    if as_json:
        typer.echo(orjson.dumps(rep.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(format_report(rep))
