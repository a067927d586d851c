"""The `chunkrec` command. Each group lives in its own module under services/cli/commands/;
each command parses its options and calls one function of its role's folder (the stack, the
trainer, the experiment system, the evaluation library), imported when the command runs, so
`chunkrec --help` loads neither torch nor pandas (tests/services/test_cli_validation.py).

Settings are checked before any command runs: a bad CHUNKREC_ variable stops every command with
exit status 2 and one line naming it (`error: CHUNKREC_PUBLISH_INTERVAL_S='nan': ...`); then
logging is set up from them (CHUNKREC_LOG_FORMAT=text|json, CHUNKREC_LOG_LEVEL; logs.py)."""

from __future__ import annotations

import typer

from services.cli.commands import (
    ab,
    bench,
    data,
    experiment,
    replay,
    serve,
    settings,
    stack,
    train,
)

app = typer.Typer(
    help="chunkrec: online-learning CTR with self-resizing (FIITED) embedding tables.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("chunkrec")
        except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
            version = "0.0.0+unknown"
        typer.echo(f"chunkrec {version}")
        raise typer.Exit()


@app.callback()
def check_settings(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="print the version and exit"),
) -> None:
    """chunkrec: online-learning CTR with self-resizing (FIITED) embedding tables."""
    from storage.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    from services.cli.logs import configure_logging

    configure_logging(settings.log.format, settings.log.level)


app.add_typer(data.app, name="data", help="Fetch and inspect data sets.")
app.add_typer(bench.app, name="bench", help="Benchmarks: quality, reading speed.")
app.command("replay")(replay.replay)
app.command("train")(train.train)
app.command("serve")(serve.serve)
app.command("up")(stack.up)
app.command("down")(stack.down_command)
app.command("infra")(stack.infra)
app.add_typer(ab.db_app, name="db", help="Metadata database migrations.")
app.command("route")(ab.route)
app.command("join")(ab.join)
app.command("report")(ab.report)
app.add_typer(experiment.app, name="experiment", help="A/B experiments through the router.")
app.command("settings")(settings.settings_command)
