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


def _shown(url: str) -> str:
    """A database URL fit to print: its password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply Alembic revisions to CHUNKREC_DATABASE_URL (default SQLite in the data dir)."""
    from storage.db.migrate import current, upgrade
    from storage.settings import get_settings

    url = get_settings().resolved_database_url
    upgrade(url, revision)
    typer.echo(f"{_shown(url)}: at revision {current(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()] = "base") -> None:
    """Revert Alembic revisions (default: everything)."""
    from storage.db.migrate import current, downgrade
    from storage.settings import get_settings

    url = get_settings().resolved_database_url
    downgrade(url, revision)
    typer.echo(f"{_shown(url)}: at revision {current(url)}")


def route(host: Annotated[str | None, typer.Option()] = None,
          port: Annotated[int | None, typer.Option()] = None,
          migrate: Annotated[bool, typer.Option(
              "--migrate", help="upgrade the database to the newest schema first "
              "(CHUNKREC_ROUTER_MIGRATE)")] = False) -> None:
    """Run the A/B router (FastAPI on uvicorn): admin, /v1/rank, /v1/feedback, reports,
    the dashboard at /experiments/{id}. A database behind the newest schema stops it with
    one line naming the fix, unless --migrate."""
    import uvicorn

    from services.experiments.router.app import create_app
    from storage.db.migrate import schema_problem
    from storage.settings import get_settings

    settings = get_settings()
    if migrate:
        settings = settings.replace(router_migrate=True)
    # checked here too (the app checks at startup), so the refusal is one line, not uvicorn's
    # traceback of a failed lifespan
    problem = None if settings.router.migrate else schema_problem(
        settings.resolved_database_url)
    if problem is None and settings.router.item_table is not None:
        from services.experiments.router.items import ItemTable, ItemTableError

        try:
            ItemTable.load(settings.router.item_table)
        except ItemTableError as exc:
            problem = str(exc)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    uvicorn.run(create_app(settings), host=host or settings.router.host,
                port=port or settings.router.port, log_level="warning")


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
    import orjson

    from services.experiments.analysis import experiment_report
    from services.experiments.verdict_text import format_report
    from storage.db.session import make_engine, session_factory
    from storage.settings import get_settings

    settings = get_settings()
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
