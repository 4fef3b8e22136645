"""`smsgw subscribers import | export`: bulk subscriber lists with their consent evidence.

An import is one transaction: the good lines are COPYed into a temporary table, then one set-based statement
adds the subscriptions and one `consent_event` (channel 'import') per subscription added, naming the file and
line. Numbers opted out of the short code or of the list are not subscribed again (an import is not the
person's consent to come back) and are reported. Bad lines (not a phone number, a bad opted_in_at) are
reported with their line numbers and skipped; the good ones are kept.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from gateway.admin import AdminError, sql, text
from gateway.message import normalise_number
from gateway.settings import Settings
from keywords.consent_watch import short_code_key

# Bad lines listed in human output (all of them are in --json).
SHOWN_BAD_LINES: Final = 20
_EXPORT_FETCH: Final = 5000


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    value: str
    error: str


@dataclass(slots=True)
class ImportReport:
    """What an import did; `as_dict` is the --json document."""

    file: str
    short_code: str
    list_name: str
    rows: int = 0  # data lines read (good and bad)
    valid: int = 0
    numbers: int = 0  # distinct valid numbers
    added: int = 0
    consent_events: int = 0
    already_subscribed: int = 0
    duplicates_in_file: int = 0
    bad: list[BadLine] = field(default_factory=list)
    opted_out: list[tuple[int, str]] = field(default_factory=list)  # (line, +number) not re-subscribed
    seconds: float = 0.0
    list_created: bool = False
    attributes_set: int = 0  # numbers whose attributes the extra columns set or merged

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "short_code": self.short_code, "list": self.list_name, "rows": self.rows,
            "valid": self.valid, "numbers": self.numbers, "added": self.added,
            "consent_events": self.consent_events, "already_subscribed": self.already_subscribed,
            "duplicates_in_file": self.duplicates_in_file,
            "bad_lines": [{"line": b.line, "value": b.value, "error": b.error} for b in self.bad],
            "opted_out_not_subscribed": [{"line": ln, "number": n} for ln, n in self.opted_out],
            "list_created": self.list_created, "attributes_set": self.attributes_set, "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else None,
        }


Record = tuple[int, str, dt.datetime | None, str | None, str | None]  # ..., attributes (JSON object text)

# Columns with a meaning of their own; every other column of the header is a subscriber attribute (issue 10).
_KNOWN_COLUMNS: Final = frozenset({"number", "opted_in_at", "source"})


def _parse_time(raw: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(raw.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # a time without an offset is read as UTC (documented)
    if value > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5):
        raise ValueError("in the future")
    return value


def parse_csv(stream: TextIO, default_region: str, report: ImportReport) -> Iterator[Record]:
    """Read the header now (so a wrong file fails before anything is written), and return an iterator of
    (line, msisdn, opted_in_at, source) for each good line; bad lines go to `report.bad` as it is consumed.

    Raises:
        AdminError: no header, or no `number` column (exit 2: the file is not what the command takes).
    """
    reader = csv.reader(stream)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise AdminError(f"{report.file}: empty file (expected a header with a 'number' column)", code=2) from None
    if "number" not in header:
        raise AdminError(f"{report.file}: line 1: no 'number' column in the header {header}", code=2)
    i_num = header.index("number")
    i_time = header.index("opted_in_at") if "opted_in_at" in header else None
    i_src = header.index("source") if "source" in header else None
    attrs = [(i, h) for i, h in enumerate(header) if h and h not in _KNOWN_COLUMNS]
    return _records(reader, i_num, i_time, i_src, default_region, report, attrs)


def _records(reader: Any, i_num: int, i_time: int | None, i_src: int | None, default_region: str,
             report: ImportReport, attrs: list[tuple[int, str]] | None = None) -> Iterator[Record]:
    for cells in reader:
        # reader.line_num is the physical line the record ended on: a quoted field may span lines.
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue  # blank lines are not data
        report.rows += 1
        raw = cells[i_num] if i_num < len(cells) else ""
        msisdn = normalise_number(raw, default_region)
        if msisdn is None:
            report.bad.append(BadLine(line, raw, "not a phone number"))
            continue
        opted_in_at = None
        if i_time is not None and i_time < len(cells) and cells[i_time].strip():
            try:
                opted_in_at = _parse_time(cells[i_time])
            except ValueError as exc:
                report.bad.append(BadLine(line, cells[i_time], f"opted_in_at: {exc}"))
                continue
        source = None
        if i_src is not None and i_src < len(cells):
            source = cells[i_src].strip() or None
        # Extra columns: attributes of the subscriber (an empty cell sets nothing; keys are the header lowercased).
        values = {key: cells[i].strip() for i, key in attrs or () if i < len(cells) and cells[i].strip()}
        report.valid += 1
        yield line, msisdn, opted_in_at, source, json.dumps(values) if values else None


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=True,
    )


class _CountingReader(io.TextIOBase):
    """A text stream that reports how many bytes were read, for the progress bar."""

    def __init__(self, raw: io.BufferedReader, on_read: Any) -> None:
        self._text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        self._raw = raw
        self._on_read = on_read
        self._last = -1

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        line = self._text.readline(-1 if size is None else size)
        pos = self._raw.tell()  # moves once per buffer the wrapper reads: the bar is updated that often
        if pos != self._last:
            self._last = pos
            self._on_read(pos)
        return line

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


async def ensure_list(conn: asyncpg.Connection, settings: Settings, short_code: str, list_name: str,
                      create_program: str | None) -> bool:
    """Make sure the list exists; returns True when this call created it.

    A list named in the settings but not yet synced (the gateway has not started since) is created from them.

    Raises:
        AdminError: the list is neither in the database, nor configured, nor asked for with --create-list.
    """
    if await conn.fetchval(sql.LIST_EXISTS, short_code, list_name) is not None:
        return False
    configured = next((cfg for code, cfg in settings.keywords.items() if short_code_key(code) == short_code), None)
    if configured is not None and any(pl.name == list_name for pl in configured.lists):
        pl = configured.list_named(list_name)
        await conn.execute(sql.CREATE_LIST, short_code, list_name, pl.program, pl.frequency, pl.marketing)
        return True
    if create_program is not None:
        await conn.execute(sql.CREATE_LIST, short_code, list_name, create_program, "", True)
        return True
    raise AdminError(
        f"list {list_name!r} of short code {short_code} does not exist (not in subscriber_list nor in the keyword "
        "settings); configure it, or pass --create-list PROGRAM"
    )


async def import_csv(
    conn: asyncpg.Connection,
    settings: Settings,
    short_code: str,
    list_name: str,
    path: Path,
    *,
    source_detail: str | None = None,
    create_program: str | None = None,
    progress: bool | None = None,
) -> ImportReport:
    """Import a CSV file (header with `number`, optional `opted_in_at`, `source`) into a list, in one transaction.
    Any other column is a subscriber attribute (merged into `subscriber.attributes`; empty cells set nothing).

    Raises:
        AdminError: unreadable file, bad header, unknown list.
    """
    started = time.perf_counter()
    code = short_code_key(short_code)
    report = ImportReport(file=path.name, short_code=code, list_name=list_name)
    if progress is None:
        progress = os.isatty(2)
    detail = source_detail or f"import {path.name}"
    try:
        raw = path.open("rb")
        size = os.fstat(raw.fileno()).st_size
    except OSError as exc:
        raise AdminError(f"{path}: {exc.strerror}", code=2) from None
    with raw, _progress(progress) as bar:
        async with conn.transaction():
            report.list_created = await ensure_list(conn, settings, code, list_name, create_program)
            await conn.execute(sql.IMPORT_STAGE)
            task = bar.add_task(f"reading {path.name}", total=size or 1)
            stream = _CountingReader(raw, lambda pos: bar.update(task, completed=pos))
            try:
                records = parse_csv(stream, settings.dispatcher.default_region, report)
                # Parsed in Python (phonenumbers is the one number rule of the gateway) and streamed into COPY as
                # it is read: memory stays flat however long the file.
                await conn.copy_records_to_table(
                    "smsgw_import", records=records, columns=["line", "msisdn", "opted_in_at", "source", "attributes"],
                    timeout=600
                )
            except UnicodeDecodeError as exc:
                raise AdminError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", code=2) from None
            bar.update(task, completed=size or 1, description=f"subscribing {report.valid:,} numbers")
            row = await conn.fetchrow(sql.IMPORT_APPLY, code, list_name, detail, timeout=600)
    report.numbers = row["numbers"]
    report.added = row["added"]
    report.consent_events = row["events"]
    report.attributes_set = row["attributes"]
    report.duplicates_in_file = report.valid - report.numbers
    report.opted_out = [(ln, "+" + n) for ln, n in zip(row["refused_lines"], row["refused_numbers"], strict=True)]
    report.already_subscribed = report.numbers - report.added - len(report.opted_out)
    report.seconds = time.perf_counter() - started
    return report


def render_import(con: Console, report: ImportReport) -> None:
    rate = f" ({report.rows / report.seconds:,.0f} rows/s)" if report.seconds > 0 else ""
    if report.list_created:
        con.print(f"created list {text(report.list_name)} on short code {report.short_code}")
    con.print(
        f"{text(report.file)}: {report.rows:,} rows, {report.valid:,} valid, {report.numbers:,} distinct numbers; "
        f"added {report.added:,} to {text(report.list_name)} on {report.short_code} with {report.consent_events:,} "
        f"consent events; {report.already_subscribed:,} already subscribed; {len(report.opted_out):,} opted out "
        f"(not subscribed again); {len(report.bad):,} bad lines; {report.seconds:.2f} s{rate}"
    )
    if report.attributes_set:
        con.print(f"attributes set for {report.attributes_set:,} numbers (the file's extra columns)")
    for b in report.bad[:SHOWN_BAD_LINES]:
        con.print(f"  line {b.line}: {text(b.value)!r}: {b.error}")
    if len(report.bad) > SHOWN_BAD_LINES:
        con.print(f"  ... and {len(report.bad) - SHOWN_BAD_LINES:,} more bad lines (--json lists all)")
    for ln, number in report.opted_out[:SHOWN_BAD_LINES]:
        con.print(f"  line {ln}: {number}: opted out, not subscribed again")
    if len(report.opted_out) > SHOWN_BAD_LINES:
        con.print(f"  ... and {len(report.opted_out) - SHOWN_BAD_LINES:,} more opted-out numbers (--json lists all)")


async def export_rows(conn: asyncpg.Connection, short_code: str, list_name: str,
                      status: str | None) -> AsyncIterator[asyncpg.Record]:
    """Subscriptions of a list through a server-side cursor (a million-row list is not held in memory).

    Raises:
        AdminError: the list does not exist.
    """
    code = short_code_key(short_code)
    if await conn.fetchval(sql.LIST_EXISTS, code, list_name) is None:
        raise AdminError(f"list {list_name!r} of short code {code} does not exist")
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(sql.EXPORT, code, list_name, status, prefetch=_EXPORT_FETCH):
            yield row


def export_record(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "number": "+" + row["msisdn"], "status": row["status"], "opted_in_at": row["opted_in_at"],
        "opted_out_at": row["opted_out_at"], "updated_at": row["updated_at"],
    }


EXPORT_COLUMNS: Final = ("number", "status", "opted_in_at", "opted_out_at", "updated_at")


def csv_line(record: dict[str, Any]) -> str:
    """One CSV line (re-importable: the number column is E.164 with '+')."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        [v.isoformat() if isinstance(v, dt.datetime) else ("" if v is None else v) for v in record.values()]
    )
    return out.getvalue()
