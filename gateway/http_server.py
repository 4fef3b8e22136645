"""The HTTP server on the metrics port: `/metrics`, `/healthz`, `/readyz` and the status page `/`.

Rule of this module: it runs on the gateway's own event loop and only reads: the Prometheus registry, the
dispatchers' bind state in memory, and the database through short statements with timeouts whose answers are
cached (about a second for readiness, two for the page), so a probe every second, or a status page left open
on a dozen phones, costs the gateway next to nothing. Every value put into HTML is escaped.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import asyncpg
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from gateway import metrics
from gateway.db import ops_sql as sql
from gateway.db.migrate import load_migrations
from gateway.ops_status import StatusReport, format_age, gather_status

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["HttpServer", "LoopTicker", "render_status_page"]

log = logging.getLogger(__name__)

# /healthz fails when the loop has not run the ticker for this long (a stalled loop serves nothing on time).
STALL_AFTER_S: Final = 5.0
_TICK_S: Final = 0.25
# Readiness: the database check's timeout and how long its answer is reused.
_DB_TIMEOUT_S: Final = 1.0
_READY_CACHE_S: Final = 1.0
# The status page's database report is reused for this long (the page refreshes itself every 5 s).
_STATUS_CACHE_S: Final = 2.0


class LoopTicker:
    """A task that wakes every `interval` seconds and records when it ran and how late.

    The health handler runs on the same loop, so a fully stalled loop answers no probe at all (the probe times
    out, which is the failure a container runtime sees); the ticker also catches a loop that still runs
    callbacks but starves timers, and a ticker that died.
    """

    def __init__(self, interval: float = _TICK_S) -> None:
        self.interval = interval
        self.last_beat = time.monotonic()
        self.lag = 0.0  # how late the last tick woke, seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running loop."""
        self.last_beat = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="loop-ticker")

    async def stop(self) -> None:
        """Stop the ticker task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            expected = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.lag = max(0.0, now - expected)
            self.last_beat = now
            metrics.observe_loop_tick(self.lag, time.time())

    def beat_age(self) -> float:
        """Seconds since the last tick."""
        return time.monotonic() - self.last_beat

    def healthy(self, stall_after: float) -> bool:
        """The ticker runs and ticked within `stall_after` seconds."""
        running = self._task is not None and not self._task.done()
        return running and self.beat_age() < stall_after


@dataclass
class _Cached:
    """A value and when it was computed (monotonic), shared by concurrent requests through `lock`."""

    value: Any = None
    at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, max_age: float, compute: Callable[[], Awaitable[Any]]) -> Any:
        if time.monotonic() - self.at < max_age:
            return self.value
        async with self.lock:  # one database round trip for every request waiting here
            if time.monotonic() - self.at >= max_age:
                self.value = await compute()
                self.at = time.monotonic()
        return self.value


class HttpServer:
    """aiohttp server for one gateway: start() binds host:port (0 = any free port, see `port`), stop() closes."""

    def __init__(self, gateway: Gateway, host: str, port: int, *, stall_after: float = STALL_AFTER_S) -> None:
        self.gateway = gateway
        self.host = host
        self.requested_port = port
        self.stall_after = stall_after
        self.ticker = LoopTicker()
        self.port: int | None = None
        self.stopping = False  # set when the gateway begins to stop: not ready any more
        # The shipped migrations, read once: the ones this code needs (version -> name).
        self._shipped = {m.version: m.name for m in load_migrations()}
        self._db_check = _Cached()
        self._status = _Cached()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start the ticker and listen."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._status_page)
        self.ticker.start()
        self._runner = web.AppRunner(app, access_log=None)  # probes every few seconds would flood the log
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.requested_port).start()
        self.port = self._runner.addresses[0][1]
        log.info("http served", extra={"url": f"http://{self.host}:{self.port}/"})

    async def stop(self) -> None:
        """Close the listener and the ticker."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ticker.stop()

    # -- handlers ------------------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        # The format the scraper asks for (Accept), as prometheus_client's own server chooses it: the text
        # format 0.0.4 by default, OpenMetrics or text 1.0.0 when asked. Gzip when the scraper accepts it.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression(web.ContentCoding.gzip)
        return resp

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok = self.ticker.healthy(self.stall_after)
        body = {
            "status": "ok" if ok else "stalled",
            "last_tick_age_s": round(self.ticker.beat_age(), 3),
            "loop_lag_s": round(self.ticker.lag, 4),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = await self.readiness()
        ready = all(c["ok"] for c in checks.values())
        failed = [name for name, c in checks.items() if not c["ok"]]
        body = {"status": "ready" if ready else "not ready", "failed": failed, "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def _status_page(self, _request: web.Request) -> web.Response:
        report: StatusReport | None = None
        error: str | None = None
        try:
            report = await self._status.get(_STATUS_CACHE_S, self._gather)
        except Exception as exc:  # the page still shows what this process knows when the database does not answer
            error = f"{type(exc).__name__}: {exc}"
        checks = await self.readiness()
        page = render_status_page(
            report,
            local=self.local_binds(),
            instance=self.gateway.settings.dispatcher.instance,
            checks=checks,
            error=error,
        )
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    # -- checks --------------------------------------------------------------------------------------

    async def _gather(self) -> StatusReport:
        pool = self.gateway.pool
        if pool is None:
            raise RuntimeError("database pool not open")
        return await gather_status(pool)

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Each readiness check: {"ok": bool, "detail": str}. Database and migrations are cached ~1 s."""
        if self.stopping:
            stop = {"ok": False, "detail": "gateway is stopping"}
            return {"running": stop}
        db, migrations = await self._db_check.get(_READY_CACHE_S, self._check_database)
        return {"database": db, "migrations": migrations, "binds": self._check_binds()}

    async def _check_database(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One statement: the database answers (as SELECT 1 would), and which migrations it has."""
        pool = self.gateway.pool
        if pool is None:
            down = {"ok": False, "detail": "database pool not open"}
            return down, {"ok": False, "detail": "unknown (no database)"}
        try:
            rows = await asyncio.wait_for(pool.fetch(sql.APPLIED_MIGRATIONS, timeout=_DB_TIMEOUT_S), _DB_TIMEOUT_S)
        except asyncpg.UndefinedTableError:
            return {"ok": True, "detail": "reachable"}, {"ok": False, "detail": "schema_migrations missing"}
        except Exception as exc:  # unreachable, timed out, pool exhausted: not ready, whatever the cause
            down = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
            return down, {"ok": False, "detail": "unknown (no database)"}
        applied = {r["version"]: r["name"] for r in rows}
        # A newer migration in the database is fine (rolling deploy); one this code ships but the database
        # lacks (or names differently) means the schema is older than the code.
        missing = [name for version, name in sorted(self._shipped.items()) if applied.get(version) != name]
        if missing:
            return {"ok": True, "detail": "reachable"}, {"ok": False, "detail": "missing: " + ", ".join(missing)}
        latest = self._shipped[max(self._shipped)] if self._shipped else "none"
        return {"ok": True, "detail": "reachable"}, {"ok": True, "detail": f"current ({latest})"}

    def _check_binds(self) -> dict[str, Any]:
        """Every SMSC that a route names has a bind that can transmit."""
        gw = self.gateway
        by_name = {d.name: d for d in gw.dispatchers}
        if gw.router is not None:
            needed = {name for route in gw.router.routes for name in route.smsc}
        elif gw.settings.route:
            needed = {name for route in gw.settings.route for name in route.smsc}
        else:
            needed = set(by_name)
        down = sorted(name for name in needed if name not in by_name or not by_name[name].is_up)
        if not needed:
            return {"ok": False, "detail": "no SMSC configured"}
        if down:
            return {"ok": False, "detail": "no bind up: " + ", ".join(down)}
        return {"ok": True, "detail": "bound: " + ", ".join(sorted(needed))}

    def local_binds(self) -> list[dict[str, Any]]:
        """This process's binds, live from memory (the database report lags by one heartbeat)."""
        out: list[dict[str, Any]] = []
        for d in self.gateway.dispatchers:
            out.append({
                "smsc": d.name,
                "binds": [(b.name, b.conn is not None and not b.conn.is_closed) for b in d.binds],
                "tps": float(d.smsc.tps),
                "effective_tps": float(d.account_bucket.rate),
                "buffered": d.ready_count,
                "in_flight": d.in_flight,
                "last_error": d.last_error,
                "last_error_at": d.last_error_at,
            })
        return out


# -- the page ----------------------------------------------------------------------------------------

_CSS: Final = """
*{box-sizing:border-box}
body{margin:0 auto;max-width:760px;padding:8px;color:#1b1f24;background:#f4f5f7;
font:15px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:18px;margin:4px 0 8px}
h2{font-size:14px;margin:14px 0 4px;text-transform:uppercase;letter-spacing:.04em;color:#57606a}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;font-weight:600;color:#fff}
.ok{background:#1a7f37}.bad{background:#cf222e}.warn{background:#9a6700}
.muted{color:#57606a;font-size:12px}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:6px;overflow:hidden;table-layout:fixed}
td,th{padding:5px 6px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{font-size:12px;color:#57606a;font-weight:600;background:#fafbfc}
td.n{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:6px}
.grid.q4{grid-template-columns:repeat(4,1fr)}
.tile{background:#fff;border-radius:6px;padding:6px 8px}
.tile b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.tile span{font-size:12px;color:#57606a}.tile b.alert{color:#cf222e}
.err{background:#fff0f0;border:1px solid #f5c2c7;border-radius:6px;padding:6px 8px;overflow-wrap:anywhere}
"""


def _e(value: object) -> str:
    """HTML-escaped text of `value` ('' for None)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _rate(value: float) -> str:
    return "no limit" if value <= 0 else f"{value:g}/s"


def _time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%H:%M:%S")


def _tile(ident: str, value: object, label: str, *, alert: bool = False) -> str:
    """One figure with its label; `alert` paints a non-zero figure red (failures, quarantine)."""
    cls = ' class="alert"' if alert and value not in (0, "0") else ""
    return f'<div class="tile"><b id="{_e(ident)}"{cls}>{_e(value)}</b><span>{_e(label)}</span></div>'


def render_status_page(
    report: StatusReport | None,
    *,
    local: list[dict[str, Any]],
    instance: str,
    checks: dict[str, dict[str, Any]],
    error: str | None = None,
) -> str:
    """The status page as one HTML document (no script; it reloads itself every 5 seconds).

    `report`: the database view (None when the database did not answer; `error` says why); `local`: this
    process's binds (HttpServer.local_binds); `checks`: the readiness checks.
    """
    ready = all(c["ok"] for c in checks.values())
    parts: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        '<meta http-equiv="refresh" content="5">',
        f"<title>smsgw {_e(instance)}</title><style>{_CSS}</style></head><body>",
        f'<h1>smsgw <span class="muted">{_e(instance)}</span> ',
        f'<span id="ready" class="badge {"ok" if ready else "bad"}">{"ready" if ready else "NOT READY"}</span></h1>',
    ]
    if not ready:
        failed = "; ".join(f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"])
        parts.append(f'<div class="err" id="ready-detail">{_e(failed)}</div>')
    if error is not None:
        parts.append(f'<div class="err" id="db-error">database: {_e(error)}</div>')

    # Binds of this process, live.
    parts.append("<h2>Binds (this instance)</h2><table><tr><th>SMSC</th><th>binds</th><th>rate</th></tr>")
    for d in local:
        up = sum(1 for _, is_up in d["binds"] if is_up)
        total = len(d["binds"])
        cls = "ok" if up == total and total else ("bad" if up == 0 else "warn")
        names = " ".join(
            f'<span class="badge {"ok" if is_up else "bad"}" title="{"up" if is_up else "down"}">{_e(name)}</span>'
            for name, is_up in d["binds"]
        )
        rate = _rate(d["effective_tps"])
        if d["tps"] > 0 and d["effective_tps"] != d["tps"]:
            rate += f" of {_rate(d['tps'])}"
        parts.append(
            f'<tr><td>{_e(d["smsc"])}</td><td><span class="badge {cls}" id="binds-{_e(d["smsc"])}">'
            f"{up}/{total} up</span><br>{names}</td><td>{_e(rate)}<br>"
            f'<span class="muted">{d["in_flight"]} in flight, {d["buffered"]} buffered</span></td></tr>'
        )
        if d["last_error"]:
            parts.append(
                f'<tr><td colspan=3 class="muted">last error {_e(_time(d["last_error_at"]))}: '
                f'{_e(d["last_error"])}</td></tr>'
            )
    parts.append("</table>")

    if report is not None:
        depth = report.queue_depth
        parts.append('<h2>Queue</h2><div class="grid q4">')
        parts.append(_tile("queue-queued", depth.get("queued", 0), "queued"))
        parts.append(_tile("queue-claimed", depth.get("claimed", 0), "claimed"))
        parts.append(_tile("queue-submitted", depth.get("submitted", 0), "awaiting receipt"))
        parts.append(_tile("queue-oldest", format_age(report.oldest_queued_age_s), "oldest queued"))
        parts.append("</div>")

        f = report.final_today
        parts.append('<h2>Today (UTC)</h2><div class="grid">')
        parts.append(_tile("delivered-today", f.get("delivered", 0), "delivered"))
        parts.append(_tile("undeliverable-today", f.get("undeliverable", 0), "undeliverable", alert=True))
        parts.append(_tile("failed-today", f.get("failed", 0), "failed", alert=True))
        parts.append(_tile("expired-today", f.get("expired", 0), "expired"))
        parts.append(_tile("rejected-today", f.get("rejected", 0), "rejected"))
        parts.append(_tile("receipts-parked", report.receipts_parked, "receipts parked"))
        parts.append(_tile("opt-outs-today", report.opt_outs_today, "opt-outs"))
        parts.append(_tile("opt-ins-today", report.opt_ins_today, "opt-ins"))
        parts.append(_tile("quarantined-today", report.quarantined_today, "quarantined", alert=True))
        parts.append("</div>")

        parts.append("<h2>All instances</h2><table><tr><th>SMSC / instance</th><th>binds</th><th>rate</th></tr>")
        for s in report.smscs:
            cls = "bad" if s.stale or s.binds_up == 0 else ("ok" if s.binds_up == s.binds_total else "warn")
            state = "gone" if s.stale else f"{s.binds_up}/{s.binds_total}"
            rate = _rate(s.effective_tps) + (f" of {_rate(s.tps)}" if s.tps > 0 and s.effective_tps != s.tps else "")
            parts.append(
                f"<tr><td>{_e(s.smsc)}<br><span class=muted>{_e(s.instance)}, seen {_e(format_age(s.age_s))} ago</span>"
                f'</td><td><span class="badge {cls}">{_e(state)}</span></td><td>{_e(rate)}</td></tr>'
            )
            if s.last_error:
                parts.append(
                    f'<tr><td colspan=3 class="muted">last error {_e(_time(s.last_error_at))}: '
                    f"{_e(s.last_error)}</td></tr>"
                )
        if not report.smscs:
            parts.append('<tr><td colspan=3 class="muted">no heartbeat yet</td></tr>')
        parts.append("</table>")

        parts.append('<h2>Last errors</h2><table id="last-errors"><tr><th style="width:24%">time</th>'
                     '<th>reason</th><th style="width:26%">to</th></tr>')
        for row in report.last_errors:
            code = f" (code {row.error_code})" if row.error_code is not None else ""
            parts.append(
                f"<tr><td>{_e(_time(row.at))}</td><td>{_e(row.status)}: {_e(row.reason)}{_e(code)}"
                f'<br><span class="muted">{_e(row.smsc or "")} #{row.id}</span></td>'
                f"<td>{_e(row.destination)}</td></tr>"
            )
        if not report.last_errors:
            parts.append('<tr><td colspan=3 class="muted">none</td></tr>')
        parts.append("</table>")
        parts.append(f'<p class="muted">as of {_e(report.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))}, '
                     "refreshes every 5 s</p>")
    parts.append("</body></html>")
    return "".join(parts)
