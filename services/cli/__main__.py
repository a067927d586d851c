"""`python -m services.cli`: the `chunkrec` command."""

from services.cli import app

app()
