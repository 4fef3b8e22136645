"""`smsgw` command line: run, migrate, demo, simulate-smsc, broadcast, and the admin commands (status, message,
subscribers, consent,
webhooks, check-config; their logic is in gateway/admin/)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
import uvloop

from gateway.settings import ConfigError, Settings, load_settings

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SMSGW_CONFIG",
    help="TOML settings file (env: SMSGW_CONFIG; keys overridable with SMSGW_<SECTION>__<KEY>).",
)


def _load(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Short-code SMS gateway: SMPP 3.4 to carrier SMSCs, queue and receipts in Postgres."""


@main.command()
@_config_option
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    default=None,
    help="json: one JSON object per line (default); text: human-readable lines. Overrides log_format.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="gateway processes sharing this config: binds split between them, metrics on port+i (gateway/workers.py)",
)
@click.option("--skip-migrations", is_flag=True, hidden=True, help="a worker: the supervisor migrated already")
def run(config_path: Path | None, log_format: str | None, workers: int, skip_migrations: bool) -> None:
    """Run the gateway daemon until SIGTERM / SIGINT."""
    import logging

    from gateway.app import run_gateway
    from gateway.logs import setup_logging

    settings = _load(config_path)
    setup_logging(settings.log_level, log_format or settings.log_format, log_numbers=settings.log_numbers)
    if not settings.smsc:
        click.echo("config error: smsc: no SMSC configured", err=True)
        sys.exit(2)
    try:
        settings.database.resolved_url()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if workers > 1:
        sys.exit(_run_workers(settings, config_path, workers, log_format))
    try:
        uvloop.run(run_gateway(settings, apply_migrations=not skip_migrations))
    except Exception:  # e.g. the database unreachable at start: one log event (redacted), not a bare traceback
        logging.getLogger("gateway").critical("gateway failed", exc_info=True)
        sys.exit(1)


def _run_workers(settings: Settings, config_path: Path | None, workers: int, log_format: str | None) -> int:
    """Migrate once, then supervise `workers` gateway processes until SIGTERM / SIGINT."""
    import logging

    import asyncpg

    from gateway.db.migrate import migrate as apply
    from gateway.workers import Supervisor

    try:
        supervisor = Supervisor(settings, config_path, workers, log_format)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        return 2

    async def go() -> int:
        conn = await asyncpg.connect(settings.database.resolved_url(), timeout=30)
        try:
            await apply(conn)
        finally:
            await conn.close()
        return await supervisor.run()

    try:
        return uvloop.run(go())
    except Exception:
        logging.getLogger("gateway").critical("gateway failed", exc_info=True)
        return 1


@main.command()
@_config_option
def migrate(config_path: Path | None) -> None:
    """Apply pending database migrations and exit."""
    import asyncpg

    from gateway.db.migrate import migrate as apply

    settings = _load(config_path)
    try:
        dsn = settings.database.resolved_url()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)

    async def go() -> list[str]:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            return await apply(conn)
        finally:
            await conn.close()

    applied = uvloop.run(go())
    click.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@main.command()
@_config_option
@click.option("--short-code", required=True, help="the short code the list belongs to")
@click.option("--list", "list_name", required=True, help="subscriber list name")
@click.option("--body", default=None, help="message text")
@click.option("--template", "template", default=None, metavar="NAME",
              help="instead of --body: a saved template (`smsgw template set`), rendered per subscriber")
@click.option("--campaign", "campaign_key", required=True, help="campaign key: a second call with it adds nothing")
def broadcast(config_path: Path | None, short_code: str, list_name: str, body: str | None, template: str | None,
              campaign_key: str) -> None:
    """Enqueue a marketing message to every active subscriber of a list (opted-out numbers skipped)."""
    import asyncpg

    from keywords import sql

    if (body is None) == (template is None):
        click.echo("give exactly one of --body and --template", err=True)
        sys.exit(2)
    settings = _load(config_path)
    try:
        dsn = settings.database.resolved_url()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)

    async def go() -> int:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            if template is not None:
                count: int = await conn.fetchval("SELECT smsgw_broadcast_template($1, $2, $3, $4)", short_code,
                                                 list_name, template, campaign_key, timeout=600)
                return count
            count = await conn.fetchval(sql.BROADCAST, short_code, list_name, body, campaign_key, timeout=600)
            return count
        finally:
            await conn.close()

    try:
        count = uvloop.run(go())
    except asyncpg.PostgresError as exc:
        click.echo(f"broadcast failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"enqueued {count} messages for campaign {campaign_key!r} (list {list_name!r}, short code {short_code})")


@main.command("simulate-smsc")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2775, show_default=True, type=int)
@click.option("--system-id", default="smsgw", show_default=True)
@click.option("--password", default="secret", show_default=True, envvar="SMSGW_SIM_PASSWORD")
@click.option("--message-id-format", type=click.Choice(["decimal", "hex"]), default="decimal", show_default=True)
@click.option("--receipt-id-format", type=click.Choice(["decimal", "hex"]), default="decimal", show_default=True)
@click.option("--receipt-delay", default=0.05, show_default=True, type=float, help="seconds")
@click.option("--tps-limit", default=None, type=float, help="answer ESME_RTHROTTLED above this rate")
@click.option(
    "--outcomes",
    default="DELIVRD=1",
    show_default=True,
    help="receipt outcome weights, e.g. DELIVRD=0.9,UNDELIV=0.05,EXPIRED=0.03,REJECTD=0.02",
)
def simulate_smsc(
    host: str,
    port: int,
    system_id: str,
    password: str,
    message_id_format: str,
    receipt_id_format: str,
    receipt_delay: float,
    tps_limit: float | None,
    outcomes: str,
) -> None:
    """Run the built-in SMSC simulator (for development and load tests)."""
    from gateway.logs import setup_logging
    from gateway.simulator import SimulatorConfig, serve

    setup_logging("INFO", "text")
    try:
        weights = {k.strip().upper(): float(v) for k, v in (p.split("=", 1) for p in outcomes.split(",") if p)}
    except ValueError:
        click.echo(f"bad --outcomes {outcomes!r}: expected STAT=weight,...", err=True)
        sys.exit(2)
    config = SimulatorConfig(
        host=host,
        port=port,
        accounts={system_id: password},
        message_id_format=message_id_format,
        receipt_id_format=receipt_id_format,
        receipt_delay=receipt_delay,
        tps_limit=tps_limit,
        outcomes=weights,
        keep_records=False,  # a long run must not grow: counters only
    )

    async def go() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop=stop)

    uvloop.run(go())


@main.command()
@click.option("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
@click.option("--messages", type=int, default=200, show_default=True, help="sample messages to enqueue")
@click.option("--rate", type=float, default=50.0, show_default=True, help="messages per second (TPS of the bind)")
@click.option("--metrics-port", type=int, default=9464, show_default=True)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, help="keep the demo cluster here (default: temporary)"
)
def demo(duration: float | None, messages: int, rate: float, metrics_port: int, data_dir: Path | None) -> None:
    """Embedded Postgres + SMSC simulator + gateway, with sample traffic and a live status line."""
    from gateway.demo import run_demo
    from gateway.logs import setup_logging

    setup_logging("WARNING", "text")
    import shutil
    import tempfile

    temporary = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="smsgw-demo-")) / "pg" if data_dir is None else data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        code = uvloop.run(
            run_demo(duration=duration, messages=messages, rate=rate, metrics_port=metrics_port, data_dir=data_dir)
        )
    finally:
        if temporary:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
    sys.exit(code)


# -- admin CLI (issue 8): thin wiring; the logic is in gateway/admin/ ---------------------------------------

_json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document instead of tables")


def _dsn(settings: Settings) -> str:
    try:
        return settings.database.resolved_url()
    except (ConfigError, OSError) as exc:
        click.echo(str(exc) if isinstance(exc, ConfigError) else f"config error: database.url_file: {exc}", err=True)
        sys.exit(2)


def _admin_run(coro: Any) -> Any:
    """Run an admin coroutine; AdminError and database errors become one line on stderr and the exit code."""
    import asyncpg

    from gateway.admin import EXIT_REFUSED, AdminError

    try:
        return uvloop.run(coro)
    except AdminError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        click.echo(f"error: database: {exc}", err=True)
        sys.exit(EXIT_REFUSED)


@main.command()
@_config_option
@_json_option
@click.option("--watch", type=click.FloatRange(min=0.2), default=None, metavar="SECONDS",
              help="refresh every SECONDS until Ctrl-C (with --json: one JSON document per line per refresh)")
@click.option("--count", type=click.IntRange(min=1), default=None, help="with --watch: stop after this many refreshes")
def status(config_path: Path | None, as_json: bool, watch: float | None, count: int | None) -> None:
    """Binds per SMSC and instance, rates, queue by status, oldest queued, today's figures."""
    from gateway.admin import console
    from gateway.admin import status as admin_status

    dsn = _dsn(_load(config_path))
    if watch is not None:
        try:
            _admin_run(admin_status.watch(dsn, console(), watch, as_json=as_json, iterations=count))
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends
        return
    rep = _admin_run(admin_status.report(dsn))
    if as_json:
        click.echo(rep.model_dump_json(indent=2))
    else:
        console().print(admin_status.renderable(rep))


@main.group()
def message() -> None:
    """Look up, retry and cancel outbound messages."""


@message.command("show")
@_config_option
@click.argument("message_id", type=int, required=False)
@click.option("--to", "to_number", metavar="NUMBER", help="list the latest messages to this number instead")
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True, help="with --to")
@_json_option
def message_show(config_path: Path | None, message_id: int | None, to_number: str | None, limit: int,
                 as_json: bool) -> None:
    """The life of a message: row, parts, submit results, receipts, parked receipts, the MO it answers."""
    from gateway.admin import console, messages, to_json, with_connection

    if (message_id is None) == (to_number is None):
        raise click.UsageError("give a message ID or --to NUMBER (one of them)")
    settings = _load(config_path)
    dsn = _dsn(settings)
    if message_id is not None:
        data = _admin_run(with_connection(dsn, lambda conn: messages.show(conn, message_id)))
        render = messages.render_show
    else:
        assert to_number is not None
        region = settings.dispatcher.default_region
        data = _admin_run(with_connection(dsn, lambda conn: messages.to_number(conn, to_number, region, limit)))
        render = messages.render_list
    if as_json:
        click.echo(to_json(data))
    else:
        render(console(), data)


def _outcomes(as_json: bool, outcomes: list[Any]) -> None:
    from gateway.admin import EXIT_OK, EXIT_REFUSED, console, messages, to_json

    if as_json:
        click.echo(to_json([o.as_dict() for o in outcomes]))
    else:
        messages.render_outcomes(console(), outcomes)
    sys.exit(EXIT_OK if all(o.done for o in outcomes) else EXIT_REFUSED)


@message.command("retry")
@_config_option
@click.argument("ids", type=int, nargs=-1, required=True)
@_json_option
def message_retry(config_path: Path | None, ids: tuple[int, ...], as_json: bool) -> None:
    """Queue final rows again: failed, expired, undeliverable, or rejected as cancelled / no_route / invalid_row.
    Never a consent refusal (opted_out, not_subscribed). Exit 1 when any ID was refused."""
    from gateway.admin import messages, with_connection

    dsn = _dsn(_load(config_path))
    unique = list(dict.fromkeys(ids))
    _outcomes(as_json, _admin_run(with_connection(dsn, lambda conn: messages.retry(conn, unique))))


@message.command("cancel")
@_config_option
@click.argument("ids", type=int, nargs=-1, required=True)
@_json_option
def message_cancel(config_path: Path | None, ids: tuple[int, ...], as_json: bool) -> None:
    """Cancel queued rows (they end rejected / cancelled). A claimed row is in flight and is refused.
    Exit 1 when any ID was refused."""
    from gateway.admin import messages, with_connection

    dsn = _dsn(_load(config_path))
    unique = list(dict.fromkeys(ids))
    _outcomes(as_json, _admin_run(with_connection(dsn, lambda conn: messages.cancel(conn, unique))))


@main.group()
def subscribers() -> None:
    """Bulk import and export of subscriber lists."""


@subscribers.command("import")
@_config_option
@click.argument("short_code")
@click.argument("list_name", metavar="LIST")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source-detail", default=None, help="recorded in each consent event (default: 'import FILE.csv')")
@click.option("--create-list", "create_program", metavar="PROGRAM", default=None,
              help="create the list with this program name when it does not exist")
@click.option("--progress/--no-progress", default=None, help="progress bar on stderr (default: when it is a terminal)")
@_json_option
def subscribers_import(config_path: Path | None, short_code: str, list_name: str, csv_file: Path,
                       source_detail: str | None, create_program: str | None, progress: bool | None,
                       as_json: bool) -> None:
    """Subscribe the numbers of a CSV file (header: number[,opted_in_at][,source]) to a list, with consent events
    (channel 'import'). Opted-out numbers are not subscribed again; bad lines are reported and skipped."""
    from gateway.admin import console, to_json, with_connection
    from gateway.admin import subscribers as subs

    settings = _load(config_path)
    dsn = _dsn(settings)
    report = _admin_run(with_connection(dsn, lambda conn: subs.import_csv(
        conn, settings, short_code, list_name, csv_file, source_detail=source_detail, create_program=create_program,
        progress=progress,
    )))
    if as_json:
        click.echo(to_json(report.as_dict()))
    else:
        subs.render_import(console(), report)


@subscribers.command("export")
@_config_option
@click.argument("short_code")
@click.argument("list_name", metavar="LIST")
@click.option("--status", "status_filter", type=click.Choice(["active", "opted_out", "all"]), default="active",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="a JSON array instead of CSV")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header (the default)")
def subscribers_export(config_path: Path | None, short_code: str, list_name: str, status_filter: str,
                       as_json: bool, as_csv: bool) -> None:
    """Write a list's subscriptions to stdout (CSV re-importable by `subscribers import`, or --json)."""
    from gateway.admin import json_default, with_connection
    from gateway.admin import subscribers as subs

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    dsn = _dsn(_load(config_path))
    wanted = None if status_filter == "all" else status_filter
    out = sys.stdout  # written row by row: a million-row export is never held in memory

    async def go(conn: Any) -> None:
        first = True
        out.write("[" if as_json else ",".join(subs.EXPORT_COLUMNS) + "\n")
        async for row in subs.export_rows(conn, short_code, list_name, wanted):
            record = subs.export_record(row)
            if as_json:
                out.write(("\n" if first else ",\n") + json.dumps(record, default=json_default))
            else:
                out.write(subs.csv_line(record))
            first = False
        if as_json:
            out.write("\n]\n")

    _admin_run(with_connection(dsn, go))


@main.group()
def consent() -> None:
    """Consent evidence."""


@consent.command("history")
@_config_option
@click.argument("number")
@click.option("--short-code", default=None, help="only this short code")
@_json_option
def consent_history(config_path: Path | None, number: str, short_code: str | None, as_json: bool) -> None:
    """Every opt-in, opt-out and HELP of a number (oldest first), and whether it is opted out / on which lists."""
    from gateway.admin import consent as admin_consent
    from gateway.admin import console, to_json, with_connection

    settings = _load(config_path)
    dsn = _dsn(settings)
    region = settings.dispatcher.default_region
    data = _admin_run(with_connection(dsn, lambda conn: admin_consent.history(conn, number, region, short_code)))
    if as_json:
        click.echo(to_json(data))
    else:
        admin_consent.render(console(), data)


@main.group()
def webhooks() -> None:
    """Webhook endpoints: backlog, replay, dead deliveries (logic in gateway/admin/webhooks.py)."""


@webhooks.command("run")
@_config_option
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None, help="overrides log_format")
def webhooks_run(config_path: Path | None, log_format: str | None) -> None:
    """Run only the webhook senders, apart from the SMPP daemon (set `webhooks.in_daemon = false` there), until
    SIGTERM / SIGINT."""
    import logging

    from gateway.logs import setup_logging
    from gateway.webhooks.service import run_webhook_service

    settings = _load(config_path)
    setup_logging(settings.log_level, log_format or settings.log_format, log_numbers=settings.log_numbers)
    if not any(ep.enabled for ep in settings.webhook.values()):
        click.echo("config error: webhook: no enabled endpoint configured", err=True)
        sys.exit(2)
    _dsn(settings)
    try:
        uvloop.run(run_webhook_service(settings))
    except Exception:  # e.g. the database unreachable at start: one log event (redacted), not a bare traceback
        logging.getLogger("gateway").critical("webhook senders failed", exc_info=True)
        sys.exit(1)


@webhooks.command("list")
@_config_option
@_json_option
def webhooks_list(config_path: Path | None, as_json: bool) -> None:
    """Endpoints of the settings and the database, with pending, dead and delivered-last-hour counts and the
    oldest pending delivery's age."""
    from gateway.admin import console, to_json, with_connection
    from gateway.admin import webhooks as admin_webhooks

    settings = _load(config_path)
    dsn = _dsn(settings)
    data = _admin_run(with_connection(dsn, lambda conn: admin_webhooks.list_endpoints(conn, settings)))
    if as_json:
        click.echo(to_json({"endpoints": data}))
    else:
        admin_webhooks.render_list(console(), data)


@webhooks.command("replay")
@_config_option
@click.option("--since", required=True, metavar="TIMESTAMP",
              help="events created since: ISO 8601 (UTC without an offset) or a duration back from now (30m, 6h, 2d)")
@click.option("--endpoint", default=None, metavar="NAME",
              help="only this endpoint (default: every one that wants them)")
@click.option("--type", "event_type", default=None, metavar="TYPE", help="only this event type, e.g. message.final")
@_json_option
def webhooks_replay(config_path: Path | None, since: str, endpoint: str | None, event_type: str | None,
                    as_json: bool) -> None:
    """Deliver the events created since TIMESTAMP again (new deliveries of the same events: the same webhook-id,
    so receivers deduplicate). Exit 1 when the endpoint is unknown or disabled."""
    from gateway.admin import console, to_json, with_connection
    from gateway.admin import webhooks as admin_webhooks

    dsn = _dsn(_load(config_path))
    when = _admin_run(_parse_since(since))
    data = _admin_run(with_connection(dsn, lambda conn: admin_webhooks.replay(conn, when, endpoint, event_type)))
    if as_json:
        click.echo(to_json(data))
    else:
        admin_webhooks.render_replay(console(), data)


async def _parse_since(value: str) -> Any:
    from gateway.admin import webhooks as admin_webhooks

    return admin_webhooks.parse_since(value)


@webhooks.command("retry-dead")
@_config_option
@click.option("--endpoint", default=None, metavar="NAME", help="only this endpoint (default: all)")
@_json_option
def webhooks_retry_dead(config_path: Path | None, endpoint: str | None, as_json: bool) -> None:
    """Dead deliveries become pending again, due now, with a fresh attempt budget; prints how many."""
    from gateway.admin import to_json, with_connection
    from gateway.admin import webhooks as admin_webhooks

    dsn = _dsn(_load(config_path))
    count = _admin_run(with_connection(dsn, lambda conn: admin_webhooks.retry_dead(conn, endpoint)))
    if as_json:
        click.echo(to_json({"endpoint": endpoint, "retried": count}))
    else:
        scope = f" of endpoint {endpoint}" if endpoint else ""
        click.echo(f"{count} dead deliveries{scope} set pending again")


@main.command("check-config")
@_config_option
@_json_option
def check_config(config_path: Path | None, as_json: bool) -> None:
    """Load and validate the settings as `smsgw run` would; print them with secrets masked. Exit 2 when invalid."""
    from gateway.admin import EXIT_OK, EXIT_USAGE, to_json
    from gateway.admin.config import check, flatten

    data, problems = check(config_path)
    if as_json:
        click.echo(to_json({"ok": not problems, "errors": problems, "settings": data}))
    else:
        if data is not None:
            for key, value in flatten(data):
                click.echo(f"{key} = {value if isinstance(value, str) else json.dumps(value)}")
        for line in problems:
            click.echo(line, err=True)
        if not problems:
            click.echo("config OK", err=True)
    sys.exit(EXIT_USAGE if problems else EXIT_OK)


@main.command()
@_config_option
@click.option("--short-code", "short_codes", multiple=True, metavar="X",
              help="audit this short code (repeatable; default: every short code in the config)")
@click.option("--reply-timeout", type=click.FloatRange(0.5, 60), default=5.0, show_default=True,
              help="seconds to wait for each reply")
@click.option("--show-replies", is_flag=True,
              help="print each reply text (and how each test message ended) under its check")
def audit(config_path: Path | None, short_codes: tuple[str, ...], reply_timeout: float, show_replies: bool) -> None:
    """CTIA self-audit of the configured keywords: a private database and the simulator, never the carrier.

    Texts HELP, STOP, START and each join word from fresh numbers and checks every reply; one PASS / FAIL line per
    check. Exit 1 on any failure, 2 when the audit could not run.
    """
    from gateway.admin.audit import run_audit_isolated
    from gateway.logs import setup_logging

    settings = _load(config_path)
    codes = list(dict.fromkeys(short_codes)) or sorted(settings.keywords)
    unknown = [code for code in codes if code not in settings.keywords]
    if unknown or not codes:
        click.echo(f"no [keywords.\"{unknown[0]}\"] section in the config" if unknown
                   else "the config has no [keywords.<short code>] section to audit", err=True)
        sys.exit(2)
    setup_logging("ERROR", "text")
    click.echo(f"auditing {', '.join(codes)} against a private database and the SMSC simulator ...", err=True)

    def show(check: Any) -> None:
        click.echo(check.line())
        if show_replies and check.reply is not None:
            click.echo(f"      reply: {check.reply!r}")
        if show_replies and check.outcome is not None:
            click.echo(f"      message ended: {check.outcome}")

    try:
        checks = uvloop.run(run_audit_isolated(settings, codes, reply_timeout=reply_timeout, on_check=show))
    except Exception as exc:
        click.echo(f"audit could not run: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
    failed = sum(not check.passed for check in checks)
    click.echo(f"{len(checks)} checks, {len(checks) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)



@main.group()
def content() -> None:
    """Content checks before sending (program name, opt-out, link shorteners, SHAFT words, segments)."""


@content.command("check")
@_config_option
@click.argument("text")
@click.option("--short-code", default=None, metavar="X", help="use this short code's rules (default: the only one)")
@click.option("--class", "message_class", type=click.Choice(["marketing", "transactional"]), default="marketing",
              show_default=True)
@_json_option
def content_check(config_path: Path | None, text: str, short_code: str | None, message_class: str,
                  as_json: bool) -> None:
    """Show what TEXT would get: encoding, characters, segments, each rule's result and the final text (with the
    appended opt-out). Exit 1 when a rule fails."""
    from gateway.admin import AdminError, to_json
    from gateway.admin import content as admin_content

    settings = _load(config_path)
    try:
        result, where = admin_content.check(settings, text, short_code, message_class)
    except AdminError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    if as_json:
        click.echo(to_json(admin_content.as_dict(result, where, message_class)))
    else:
        for line in admin_content.render(result, where, message_class):
            click.echo(line)
    sys.exit(0 if result.passed else 1)


# -- personalised templates (issue 10): gateway/admin/templates.py -----------------------------------------


@main.group()
def template() -> None:
    """Named message templates per short code ({first_name}, {order_id|...}); rendered when a row is inserted."""


@template.command("set")
@_config_option
@click.option("--short-code", required=True, metavar="X")
@click.option("--name", required=True, metavar="N")
@click.option("--body", required=True, help='e.g. "Hi {first_name|there}, order {order_id} has shipped"')
@click.option("--class", "message_class", type=click.Choice(["transactional", "marketing"]), default="transactional",
              show_default=True)
@click.option("--allow", multiple=True, metavar="NAME", help="a per-row variable the producer always sets")
@click.option("--assume", multiple=True, metavar="NAME=VALUE", help="the longest value expected for NAME")
@click.option("--check-only", is_flag=True, help="validate and estimate segments; save nothing")
@_json_option
def template_set(config_path: Path | None, short_code: str, name: str, body: str, message_class: str,
                 allow: tuple[str, ...], assume: tuple[str, ...], check_only: bool, as_json: bool) -> None:
    """Validate and save a template: unknown placeholders are refused; the segment count at the longest expected
    values is shown."""
    from gateway.admin import AdminError, to_json, with_connection
    from gateway.admin import templates as tpl

    settings = _load(config_path)
    dsn = _dsn(settings)
    try:
        assumed = tpl.parse_assume(assume)
    except AdminError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    work = tpl.check if check_only else tpl.save
    result = _admin_run(with_connection(dsn, lambda conn: work(
        conn, short_code, name, body, message_class=message_class, allow=allow, assume=assumed)))
    if as_json:
        click.echo(to_json(result.as_dict()))
    else:
        for line in tpl.describe(result):
            click.echo(line)
        if check_only and result.unknown:
            click.echo("unknown placeholders: " + ", ".join("{" + n + "}" for n in result.unknown))


@template.command("list")
@_config_option
@click.option("--short-code", default=None, metavar="X")
@_json_option
def template_list(config_path: Path | None, short_code: str | None, as_json: bool) -> None:
    """The saved templates (of one short code)."""
    from gateway.admin import templates as tpl
    from gateway.admin import to_json, with_connection

    dsn = _dsn(_load(config_path))
    rows = _admin_run(with_connection(dsn, lambda conn: tpl.list_templates(conn, short_code)))
    if as_json:
        click.echo(to_json(rows))
        return
    for r in rows:
        click.echo(f"{r['short_code']}\t{r['name']}\t{r['message_class']}\t{r['body']}")


@template.command("show")
@_config_option
@click.option("--short-code", required=True, metavar="X")
@click.option("--name", required=True, metavar="N")
@_json_option
def template_show(config_path: Path | None, short_code: str, name: str, as_json: bool) -> None:
    """One template, its placeholders and its segments at the longest subscriber values."""
    from gateway.admin import templates as tpl
    from gateway.admin import to_json, with_connection

    dsn = _dsn(_load(config_path))
    info = _admin_run(with_connection(dsn, lambda conn: tpl.show(conn, short_code, name)))
    if as_json:
        click.echo(to_json(info))
        return
    for key in ("short_code", "name", "message_class", "body", "placeholders", "longest_text", "segments",
                "encoding", "updated_at"):
        click.echo(f"{key}: {info[key]}")



@main.group()
def campaign() -> None:
    """Campaign reports: rows sharing a campaign_key (`smsgw broadcast --campaign KEY`)."""


@campaign.command("report")
@_config_option
@click.argument("key")
@_json_option
def campaign_report(config_path: Path | None, key: str, as_json: bool) -> None:
    """Enqueued, submitted, delivered, failed by reason, pending, delivery rates, receipt latency p50/p90/p99,
    first and last submit, and the opt-outs attributed to campaign KEY (view campaign_report). Exit 1 when no
    message has this key."""
    from gateway.admin import campaigns, console, to_json, with_connection

    dsn = _dsn(_load(config_path))
    data = _admin_run(with_connection(dsn, lambda conn: campaigns.report(conn, key)))
    if as_json:
        click.echo(to_json(data))
    else:
        campaigns.render_report(console(), data)


@campaign.command("list")
@_config_option
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_json_option
def campaign_list(config_path: Path | None, limit: int, as_json: bool) -> None:
    """The most recently enqueued campaigns with their counts, newest first."""
    from gateway.admin import campaigns, console, to_json, with_connection

    dsn = _dsn(_load(config_path))
    rows = _admin_run(with_connection(dsn, lambda conn: campaigns.recent(conn, limit)))
    if as_json:
        click.echo(to_json({"campaigns": rows}))
    else:
        campaigns.render_list(console(), rows)



def _render_campaign(row: dict[str, Any]) -> str:
    nxt = row["next_occurrence"].isoformat() if row["next_occurrence"] else "-"
    return (f"{row['key']}: {row['status']}, {row['template']} to {row['short_code']}/{row['list_name']},"
            f" schedule {row['schedule']!r}{' (local time)' if row['local_time'] else ' (UTC)'}, next {nxt}")


@campaign.command("create")
@_config_option
@click.argument("key")
@click.option("--short-code", required=True)
@click.option("--list", "list_name", required=True, help="the subscriber list to send to")
@click.option("--template", required=True, help="a template of the short code (`smsgw template set`)")
@click.option("--schedule", required=True,
              help='a cron expression ("0 10 * * 1": Mondays 10:00) or one ISO timestamp ("2026-12-01T10:00")')
@click.option("--local-time", is_flag=True,
              help="the schedule's times are wall-clock times in each recipient's time zone (else UTC)")
@click.option("--variables", default="{}", show_default=True, help="JSON object common to every message")
@_json_option
def campaign_create(config_path: Path | None, key: str, short_code: str, list_name: str, template: str,
                    schedule: str, local_time: bool, variables: str, as_json: bool) -> None:
    """Schedule campaign KEY: the running daemon enqueues each occurrence once (campaign_key KEY@<occurrence>)."""
    from gateway.admin import campaign_admin, to_json, with_connection

    try:
        values = json.loads(variables)
    except ValueError as exc:
        raise click.UsageError(f"--variables: {exc}") from None
    if not isinstance(values, dict):
        raise click.UsageError("--variables must be a JSON object")
    dsn = _dsn(_load(config_path))
    row = _admin_run(with_connection(dsn, lambda conn: campaign_admin.create(
        conn, key=key, short_code=short_code, list_name=list_name, template=template, schedule=schedule,
        local_time=local_time, variables=values)))
    click.echo(to_json(row) if as_json else _render_campaign(row))


def _campaign_status_command(action: str, help_text: str) -> None:
    @campaign.command(action, help=help_text)
    @_config_option
    @click.argument("key")
    @_json_option
    def command(config_path: Path | None, key: str, as_json: bool) -> None:
        from gateway.admin import campaign_admin, to_json, with_connection

        dsn = _dsn(_load(config_path))
        row = _admin_run(with_connection(dsn, lambda conn: campaign_admin.set_status(conn, key, action)))
        click.echo(to_json(row) if as_json else _render_campaign(row))


_campaign_status_command("pause", "Stop enqueuing occurrences of campaign KEY (rows already enqueued still go).")
_campaign_status_command("resume", "Enqueue again from the next occurrence after now (paused ones are skipped).")
_campaign_status_command("cancel", "End campaign KEY for good: no further occurrence.")

if __name__ == "__main__":
    main()
