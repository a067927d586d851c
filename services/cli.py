"""The `chunkrec` command. Each group lives in its own module under services/commands."""

from __future__ import annotations

import typer

from services.commands import ab, bench, data, replay, serve, stack, train

app = typer.Typer(
    help="chunkrec: online-learning CTR with self-resizing (FIITED) embedding tables.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data", help="Fetch and inspect data sets.")
app.add_typer(bench.app, name="bench", help="Benchmarks: quality, reading speed.")
app.command("replay")(replay.replay)
app.command("train")(train.train)
app.command("serve")(serve.serve)
app.command("up")(stack.up)
app.command("down")(stack.down_command)
app.add_typer(ab.db_app, name="db", help="Metadata database migrations.")
app.command("route")(ab.route)
app.command("join")(ab.join)
app.command("report")(ab.report)

if __name__ == "__main__":
    app()
