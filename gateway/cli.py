"""`smsgw` command line: run, migrate, demo, simulate-smsc."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

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
def run(config_path: Path | None) -> None:
    """Run the gateway daemon until SIGTERM / SIGINT."""
    from gateway.app import run_gateway
    from gateway.logs import setup_logging

    settings = _load(config_path)
    setup_logging(settings.log_level, settings.log_format)
    if not settings.smsc:
        click.echo("config error: smsc: no SMSC configured", err=True)
        sys.exit(2)
    try:
        settings.database.resolved_url()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    uvloop.run(run_gateway(settings))


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
@click.option("--body", required=True, help="message text")
@click.option("--campaign", "campaign_key", required=True, help="campaign key: a second call with it adds nothing")
def broadcast(config_path: Path | None, short_code: str, list_name: str, body: str, campaign_key: str) -> None:
    """Enqueue a marketing message to every active subscriber of a list (opted-out numbers skipped)."""
    import asyncpg

    from keywords import sql

    settings = _load(config_path)
    try:
        dsn = settings.database.resolved_url()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)

    async def go() -> int:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            count: int = await conn.fetchval(sql.BROADCAST, short_code, list_name, body, campaign_key, timeout=600)
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
