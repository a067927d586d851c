"""What a command checks before it starts its work, so that a missing database, an unreachable
server or an unwritable output is one line (exit 2) within seconds, not a traceback after the
work or a 40 s wait.

    problem = database_problem(url, need_schema=True)   # report, route
    problem = database_problem(url, need_schema=False, explicit=True)   # db upgrade
    fail_if(problem)                                    # typer.Exit(2) after "error: ..."
    fail_if(output_problem(Path("out/results.json")))

Nothing here creates a file or a folder: `report` on a fresh path leaves no empty .db, and
`db upgrade` into a folder that does not exist says so instead of creating the tree.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer

CONNECT_TIMEOUT_S = 5.0


def extra_problem(module: str, extra: str, what: str) -> str | None:
    """None when `module` can be imported, else one line naming the extra that brings it:
    `extra_problem("statsmodels", "ab", "the A/B router")`."""
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return None
    return f"{what} needs {module}, which is not installed: pip install 'chunkrec[{extra}]'"


def fail_if(problem: str | None) -> None:
    """Print `error: problem` on stderr, plain (rich would read brackets in it as markup),
    and exit 2; nothing when `problem` is None."""
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)


def shown_url(url: str) -> str:
    """A database URL fit to print: its password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None: not SQLite, or in memory)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _server_problem(url: str, timeout_s: float) -> str | None:
    """A TCP connection to a database server's host and port, with a deadline (a driver's own
    connect may wait minutes for a host that drops packets)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.host or u.host.startswith("/"):
        return None  # a Unix socket: the driver answers at once
    port = u.port or {"postgresql": 5432, "mysql": 3306}.get(u.get_backend_name(), 0)
    if not port:
        return None
    try:
        with socket.create_connection((u.host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return (f"database server {u.host}:{port} of {shown_url(url)} cannot be reached "
                f"({reason}): start it, or set CHUNKREC_DATABASE_URL")


UPGRADE = "run `chunkrec db upgrade`"


def database_problem(url: str, *, need_schema: bool, explicit: bool = True,
                     timeout_s: float = CONNECT_TIMEOUT_S, fix: str = UPGRADE) -> str | None:
    """None when `url` can be used, else one line naming the problem and the fix.

    need_schema: the database must exist and be at the newest revision (report, route);
    else it may be created (db upgrade), but only in a folder that exists when the URL was
    given (`explicit`); the default SQLite file under the data dir gets its folder made.
    `fix`: what the line tells a user to do about a missing or old schema."""
    shown = shown_url(url)
    if url.startswith("postgresql"):
        missing = extra_problem("psycopg", "postgres", f"database {shown}")
        if missing is not None:
            return missing
    path = sqlite_path(url)
    if path is not None:
        if need_schema and not path.is_file():
            return f"database {shown} does not exist: {fix}"
        if not need_schema and explicit and not path.parent.is_dir():
            return (f"database {shown}: folder {path.parent} does not exist: create it, or "
                    "set CHUNKREC_DATABASE_URL to a path in an existing folder")
        if not need_schema:
            return None
    else:
        problem = _server_problem(url, timeout_s)
        if problem is not None or not need_schema:
            return problem
    from storage.db.migrate import schema_problem

    return schema_problem(url, fix)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: a driver's own message (not SQLAlchemy's wrapper with
    its SQL and a link), first line only."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text[:limit]}" if text else type(inner).__name__


def output_problem(path: Path, what: str = "output") -> str | None:
    """None when `path` can be written (its folder exists and is writable, and it is not a
    folder), else one line; checked before hours of work, not after."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{what} {path} is a folder; give a file name"
    if not folder.is_dir():
        return f"{what} {path}: folder {folder} does not exist (create it first)"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{what} {path} is not writable"
    return None
