"""The admin CLI's logic (`smsgw status | message | subscribers | consent | check-config`).

One module per command group; `gateway/cli.py` only wires click options to these functions. Each command is
non-interactive: human output is a rich table on stdout, `--json` prints one JSON document, diagnostics go to
stderr, and the exit code says what happened (EXIT_OK, EXIT_REFUSED, EXIT_USAGE).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final, TypeVar

import asyncpg
from rich.console import Console
from rich.markup import escape

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1  # not found, refused (status does not allow it), or the database could not be reached
EXIT_USAGE: Final = 2  # bad arguments or configuration

T = TypeVar("T")

CONNECT_TIMEOUT_S: Final = 30.0


class AdminError(Exception):
    """A command cannot do what was asked; the message is for the operator, `code` the exit status."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


async def with_connection(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` on one connection (an admin command needs no pool) and close it, whatever happens."""
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise AdminError(f"database: cannot connect: {exc}") from None
    try:
        return await work(conn)
    finally:
        await conn.close()


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for what asyncpg returns: timestamps, numerics, bytes."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(data: Any) -> str:
    """JSON for `--json` output: timestamps as ISO 8601 (with offset), stable key order as built."""
    return json.dumps(data, default=json_default, ensure_ascii=False, indent=2)


def console(*, stderr: bool = False) -> Console:
    """A rich console: plain text when not a terminal, as wide as COLUMNS says (default 160, so that tables are
    not folded in pipes and logs)."""
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else None
    if width is None and not (stderr and os.isatty(2)) and not (not stderr and os.isatty(1)):
        width = 160
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


def fmt_time(value: dt.datetime | None) -> str:
    """A timestamp for people: UTC, seconds, or '-'."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def text(value: Any) -> str:
    """A cell for people: '-' for NULL; database text is escaped (a body may contain rich markup like '[b]')."""
    return "-" if value is None or value == "" else escape(str(value))
