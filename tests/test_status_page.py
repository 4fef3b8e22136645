"""The status report (gateway/ops_status.py) against a real database, and the status page `/` rendered by a real
headless chromium during a gateway run: the figures on the page are the ones in Postgres. The phone-sized
screenshot is kept at test-artifacts/status-page.png (repo root) for people to look at."""

from __future__ import annotations

import asyncio
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_final, wait_status
from test_health import with_http

from gateway.http_server import render_status_page
from gateway.ops_status import gather_status
from gateway.simulator import SimulatorConfig, SmscSimulator

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
_CHROMIUM_TIMEOUT_S = 60.0
_MIDNIGHT = "date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"

INSERT_ROW = """
INSERT INTO outbound_message (source, destination, body, status, reason, error_code, smsc, created_at, send_after,
                              submitted_at, done_at)
VALUES ('12345', $1, 'x', $2, $3, $4, 'sim', now() - make_interval(secs => $5), now() + make_interval(secs => $6),
        $7, $8)
"""


async def test_gather_status_reads_the_database(db_pool: asyncpg.Pool) -> None:
    now, yesterday = await db_pool.fetchrow(f"SELECT now(), {_MIDNIGHT} - interval '1 hour'")
    rows = [
        # destination, status, reason, error_code, created s ago, send_after s from now, submitted_at, done_at
        ("+12025550001", "delivered", "delivered", None, 60, -60, now, now),
        ("+12025550002", "delivered", "delivered", None, 60, -60, now, now),
        ("+12025550003", "delivered", "delivered", None, 60, -60, yesterday, yesterday),  # not today
        ("+12025550123", "undeliverable", "receipt_UNDELIV", 1, 60, -60, now, now),
        ("+12025550124", "failed", "response_timeout", None, 60, -60, None, yesterday),
        ("+12025550200", "queued", None, None, 600, -590, None, None),  # due for 590 s, created 600 s ago
        ("+12025550201", "queued", None, None, 5, 3600, None, None),  # scheduled: not late
        ("+12025550300", "submitted", None, None, 40, -40, None, None),
    ]
    for dest, status, reason, code, created, send_after, submitted, done in rows:
        await db_pool.execute(INSERT_ROW, dest, status, reason, code, created, send_after, submitted, done)
    await db_pool.execute("UPDATE outbound_message SET submitted_at = now() - interval '30 seconds'"
                          " WHERE status = 'submitted'")
    await db_pool.execute(
        "INSERT INTO pending_receipt (smsc, msgid_key, message_id, status) VALUES ('sim', 'a', 'a', 'delivered'),"
        " ('sim', 'b', 'b', 'delivered')"
    )
    await db_pool.execute(
        "INSERT INTO consent_event (msisdn, short_code, action, channel, created_at) VALUES"
        " ('15550000001', '12345', 'opt_out', 'sms', now()), ('15550000002', '12345', 'opt_out', 'sms', now()),"
        f" ('15550000003', '12345', 'opt_out', 'sms', {_MIDNIGHT} - interval '1 minute'),"
        " ('15550000004', '12345', 'opt_in', 'sms', now())"
    )
    await db_pool.execute("INSERT INTO quarantine (kind, smsc, error) VALUES ('receipt', 'sim', 'bad')")
    await db_pool.execute(
        "INSERT INTO gateway_instance (instance, smsc, last_seen, binds_up, binds_total, tps, effective_tps,"
        " last_error, last_error_at) VALUES ('gw-a', 'sim', now(), 1, 2, 100, 50, 'sim-1: bind failed: x', now()),"
        " ('gw-old', 'sim', now() - interval '10 minutes', 2, 2, 100, 100, NULL, NULL)"
    )

    report = await gather_status(db_pool)

    assert report.queue_depth == {"queued": 2, "claimed": 0, "submitted": 1}
    assert report.oldest_queued_age_s is not None and 585 <= report.oldest_queued_age_s <= 660
    assert report.final_today == {"delivered": 2, "undeliverable": 1}
    assert report.delivered_today == 2 and report.undeliverable_today == 1
    assert report.receipts_parked == 2
    assert report.opt_outs_today == 2 and report.opt_ins_today == 1
    assert report.quarantined_today == 1
    live, old = report.smscs[0], report.smscs[1]
    assert (live.instance, live.binds_up, live.binds_total, live.tps, live.effective_tps) == ("gw-a", 1, 2, 100, 50)
    assert live.last_error == "sim-1: bind failed: x" and live.up and not live.stale
    assert old.instance == "gw-old" and old.stale and not old.up
    # The newest failures first, numbers masked to their last four digits everywhere.
    assert [(e.status, e.reason, e.destination) for e in report.last_errors] == [
        ("undeliverable", "receipt_UNDELIV", "…0123"),
        ("failed", "response_timeout", "…0124"),
    ]
    dumped = report.model_dump_json()
    assert "2025550123" not in dumped and "2025550124" not in dumped
    assert '"delivered_today":2' in dumped  # the computed figures are in the JSON the CLI prints


def test_status_page_escapes_what_the_smsc_wrote() -> None:
    hostile = '<script>alert("x")</script>'
    page = render_status_page(
        None,
        local=[{
            "smsc": "sim<b>", "binds": [("sim-0", False)], "tps": 10.0, "effective_tps": 5.0, "buffered": 0,
            "in_flight": 0, "last_error": f"sim-0: bind lost: {hostile}", "last_error_at": datetime.now(UTC),
        }],
        instance="gw&1",
        checks={"binds": {"ok": False, "detail": f"no bind up: {hostile}"}},
        error=hostile,
    )
    assert "<script>" not in page and "sim<b>" not in page
    assert "&lt;script&gt;" in page and "gw&amp;1" in page and "NOT READY" in page


async def _chromium(*args: str) -> str:
    """Run headless chromium (killed when it takes too long); its stdout."""
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def _figure(dom: str, ident: str) -> str:
    match = re.search(rf'id="{re.escape(ident)}"[^>]*>([^<]*)<', dom)
    assert match is not None, f"{ident} not on the page"
    return match.group(1)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
async def test_status_page_in_headless_chromium(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        async with running_gateway(with_http(settings_for(db_dsn, sim))) as gw:
            await enqueue(db_pool, 12)
            c = await wait_status(db_pool, "delivered", 12, timeout=20)
            assert c.get("delivered") == 12, c
            # An opt-out over SMPP (its confirmation is one more delivered message).
            delivery = await sim.inject_mo("15550009999", "12345", "STOP")
            assert await sim.wait_for(lambda: delivery.acked, timeout=10)
            c = await wait_status(db_pool, "delivered", 13, timeout=20)
            assert c.get("delivered") == 13, c
            # Rows scheduled for later stay queued; an undelivered one shows among the last errors.
            await db_pool.execute(
                "INSERT INTO outbound_message (source, destination, body, send_after)"
                " SELECT '12345', '+1202555' || lpad(g::text, 4, '0'), 'later', now() + interval '1 hour'"
                " FROM generate_series(1, 3) g"
            )
            await db_pool.execute(
                "INSERT INTO outbound_message (source, destination, body, status, reason, smsc, done_at)"
                " VALUES ('12345', '+12025550177', 'x', 'undeliverable', 'receipt_UNDELIV', 'sim', now())"
            )
            await wait_final(db_pool, timeout=10)  # nothing in flight: the figures hold still
            # A heartbeat with the bind up (the "all instances" table is read from it).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while loop.time() < deadline and not await db_pool.fetchval(  # noqa: ASYNC110 - polls the database
                "SELECT count(*) FROM gateway_instance WHERE binds_up = 1"
            ):
                await asyncio.sleep(0.1)

            report = await gather_status(db_pool)
            url = f"http://127.0.0.1:{gw.metrics_port}/"
            profile = tmp_path / "chromium"
            dom = await _chromium(f"--user-data-dir={profile}", "--dump-dom", url)
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "status-page.png"
            shot.unlink(missing_ok=True)
            await _chromium(f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=390,844", url)

    assert report.delivered_today == 13 and report.opt_outs_today == 1
    assert _figure(dom, "delivered-today") == str(report.delivered_today)
    assert _figure(dom, "undeliverable-today") == str(report.undeliverable_today) == "1"
    assert _figure(dom, "queue-queued") == str(report.queue_depth["queued"]) == "3"
    assert _figure(dom, "queue-submitted") == "0"
    assert _figure(dom, "opt-outs-today") == str(report.opt_outs_today)
    assert _figure(dom, "receipts-parked") == str(report.receipts_parked)
    assert _figure(dom, "binds-sim") == "1/1 up"
    assert _figure(dom, "ready") == "ready"
    assert "receipt_UNDELIV" in dom and "…0177" in dom
    assert "2025550177" not in dom and "15550009999" not in dom  # numbers masked
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
