"""`smsgw status [--watch SECONDS]`: binds, rates, queue and today's figures, read from the database.

The figures come from `gateway.ops_status.gather_status` (the same report as the status page), so `smsgw status`
run on any machine that reaches the database shows every instance, and costs the queue only index look-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gateway.admin import CONNECT_TIMEOUT_S, AdminError, fmt_time, text
from gateway.ops_status import StatusReport, format_age, gather_status


async def _pool(dsn: str) -> asyncpg.Pool:
    try:
        return await asyncpg.create_pool(dsn, min_size=1, max_size=1, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise AdminError(f"database: cannot connect: {exc}") from None


async def report(dsn: str) -> StatusReport:
    """One snapshot."""
    pool = await _pool(dsn)
    try:
        return await gather_status(pool)
    finally:
        await pool.close()


def renderable(rep: StatusReport) -> Group:
    """The report as rich tables (also what --watch redraws)."""
    binds = Table(title="binds per SMSC and instance", title_justify="left")
    for col in ("smsc", "instance", "binds up", "tps", "effective tps", "heartbeat", "last error"):
        binds.add_column(col)
    for s in rep.smscs:
        state = "" if s.up else (" (stale)" if s.stale else " DOWN")
        err = f"{fmt_time(s.last_error_at)} {text(s.last_error)}" if s.last_error else "-"
        binds.add_row(
            s.smsc, text(s.instance), f"{s.binds_up}/{s.binds_total}{state}", f"{s.tps:g}", f"{s.effective_tps:g}",
            f"{format_age(s.age_s)} ago", err,
        )
    if not rep.smscs:
        binds.add_row("-", "no gateway instance has written a heartbeat", "", "", "", "", "")
    queue = Table(title="queue", title_justify="left")
    for col in ("status", "rows", "oldest"):
        queue.add_column(col)
    depth = rep.queue_depth
    for status in ("queued", "claimed", "submitted"):
        oldest = next((q.oldest_age_s for q in rep.queue if q.status == status), None)
        queue.add_row(status, f"{depth.get(status, 0):,}", format_age(oldest))
    today = ", ".join(f"{k} {v:,}" for k, v in sorted(rep.final_today.items())) or "none"
    lines = Text(
        f"oldest queued (due): {format_age(rep.oldest_queued_age_s)}\n"
        f"final today (UTC): {today}\n"
        f"receipts parked: {rep.receipts_parked:,}; opt-outs today: {rep.opt_outs_today:,}; "
        f"opt-ins today: {rep.opt_ins_today:,}; quarantined today: {rep.quarantined_today:,}\n"
        f"as of {fmt_time(rep.generated_at)}"
    )
    parts: list[Table | Text] = [binds, queue, lines]
    if rep.last_errors:
        errors = Table(title="last errors", title_justify="left")
        for col in ("id", "at", "status", "reason", "error", "smsc", "bind", "to"):
            errors.add_column(col)
        for e in rep.last_errors:
            errors.add_row(
                str(e.id), fmt_time(e.at), e.status, text(e.reason), text(e.error_code), text(e.smsc), text(e.bind),
                text(e.destination),
            )
        parts.append(errors)
    return Group(*parts)


async def watch(dsn: str, con: Console, interval: float, *, as_json: bool = False,
                iterations: int | None = None) -> None:
    """Redraw every `interval` seconds until Ctrl-C (or `iterations` rounds, for tests). With --json, one JSON
    document per line per round (a stream a script can follow)."""
    pool = await _pool(dsn)
    try:
        done = 0
        # Live redraws in place on a terminal; in a pipe or log each round is printed after the previous one.
        live = Live(console=con, auto_refresh=False) if not as_json and con.is_terminal else None
        with live if live is not None else contextlib.nullcontext():
            while iterations is None or done < iterations:
                try:
                    rep = await gather_status(pool)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # A database restart should not end a watch: say so and try again next round.
                    problem = f"database: {exc} (retrying every {interval:g} s)"
                    if as_json:
                        con.print(json.dumps({"error": problem}), soft_wrap=True, markup=False)
                    elif live is not None:
                        live.update(Text(problem), refresh=True)
                    else:
                        con.print(Text(problem))
                else:
                    if as_json:
                        con.print(rep.model_dump_json(), soft_wrap=True, markup=False)
                    elif live is not None:
                        live.update(renderable(rep), refresh=True)
                    else:
                        con.print(renderable(rep))
                done += 1
                if iterations is None or done < iterations:
                    await asyncio.sleep(interval)
    finally:
        await pool.close()
