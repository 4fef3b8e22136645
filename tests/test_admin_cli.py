"""The admin CLI (issue 8 item 5) against a real Postgres: each command's output checked, `--json` parsed.

Commands run in-process through click's CliRunner in a worker thread (each command calls uvloop.run, which
cannot nest in the test's running loop), with the database URL in the environment as in production.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from click.testing import CliRunner, Result
from gw import running_gateway, settings_for, wait_status

from gateway.cli import main
from gateway.simulator import SimulatorConfig, SmscSimulator


async def smsgw(dsn: str | None, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run `smsgw ARGS` with the database URL in the environment; stdout and stderr kept apart."""
    environment = {"COLUMNS": "250", "SMSGW_CONFIG": None}
    if dsn is not None:
        environment["SMSGW_DATABASE__URL"] = dsn
    environment.update(env or {})
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, list(args), env=environment, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[SmscSimulator]:
    simulator = SmscSimulator(SimulatorConfig(receipt_delay=0.02))
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


INSERT_ROW = """
INSERT INTO outbound_message (source, destination, body, status, reason, attempts, expires_at, smsc, done_at)
VALUES ('12345', $1, 'hello', $2, $3, $4, $5, CASE WHEN $2 IN ('queued', 'claimed') THEN NULL ELSE 'sim' END,
        CASE WHEN $2 IN ('queued', 'claimed', 'submitted') THEN NULL ELSE now() END)
RETURNING id
"""


# -- message show -----------------------------------------------------------------------------------------


async def test_message_show_single_and_multipart(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    mo = await db_pool.fetchval(
        """INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message,
                                        short_code, msisdn, intent, keyword)
           VALUES ('sim', '+12025550100', '12345', 'HELP', 0, 0, 'HELP'::bytea, '12345', '12025550100', 'help', 'HELP')
           RETURNING id"""
    )
    single = await db_pool.fetchval(
        "INSERT INTO outbound_message (source, destination, body, inbound_message_id) "
        "VALUES ('12345', '+12025550100', 'Acme: help at support', $1) RETURNING id", mo,
    )
    long_body = "The quick brown fox jumps over the lazy dog. " * 9  # 405 GSM-7 characters: 3 parts of 153
    multi = await db_pool.fetchval(
        "INSERT INTO outbound_message (source, destination, body) VALUES ('12345', '2025550100', $1) RETURNING id",
        long_body,
    )
    async with running_gateway(settings_for(db_dsn, sim)):
        counts = await wait_status(db_pool, "delivered", 2, timeout=20)
    assert counts == {"delivered": 2}, counts

    result = await smsgw(db_dsn, "message", "show", str(single), "--json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    m = data["message"]
    assert (m["id"], m["status"], m["reason"], m["receipt_stat"], m["smsc"]) == (
        single, "delivered", "delivered", "DELIVRD", "sim"
    )
    assert m["smsc_message_id"] and m["bind_name"] and m["submitted_at"] and m["done_at"] and m["attempts"] == 1
    assert data["parts"] == [] and data["parked_receipts"] == []
    assert data["replies_to"]["id"] == mo and data["replies_to"]["body"] == "HELP"

    human = await smsgw(db_dsn, "message", "show", str(single))
    assert human.exit_code == 0, human.output
    for expected in ("delivered", "DELIVRD", m["smsc_message_id"], f"replies to MO {mo}", "+12025550100"):
        assert expected in human.stdout, (expected, human.stdout)

    result = await smsgw(db_dsn, "message", "show", str(multi), "--json")
    data = as_json(result)
    assert data["message"]["status"] == "delivered" and data["message"]["parts"] == 3
    parts = data["parts"]
    assert [p["seq"] for p in parts] == [1, 2, 3]
    assert all(p["status"] == "delivered" and p["receipt_stat"] == "DELIVRD" and p["done_at"] for p in parts)
    assert len({p["smsc_message_id"] for p in parts}) == 3
    human = await smsgw(db_dsn, "message", "show", str(multi))
    assert "1/3" in human.stdout and "3/3" in human.stdout and parts[2]["smsc_message_id"] in human.stdout

    # A receipt parked under the single message's id is shown with it.
    key = await db_pool.fetchval("SELECT smsc_msgid_key FROM outbound_message WHERE id = $1", single)
    await db_pool.execute(
        "INSERT INTO pending_receipt (smsc, msgid_key, message_id, status, receipt_stat) "
        "VALUES ('sim', $1, $1, 'delivered', 'DELIVRD')", key,
    )
    data = as_json(await smsgw(db_dsn, "message", "show", str(single), "--json"))
    assert [p["message_id"] for p in data["parked_receipts"]] == [key]

    # --to: any written form of the number finds both (E.164 '+1...' and national '202...').
    for number in ("+1 202 555 0100", "2025550100", "(202) 555-0100"):
        data = as_json(await smsgw(db_dsn, "message", "show", "--to", number, "--json"))
        assert data["number"] == "+12025550100"
        assert [x["id"] for x in data["messages"]] == [multi, single]
    data = as_json(await smsgw(db_dsn, "message", "show", "--to", "+12025550100", "--limit", "1", "--json"))
    assert [x["id"] for x in data["messages"]] == [multi]
    human = await smsgw(db_dsn, "message", "show", "--to", "+12025550100")
    assert str(single) in human.stdout and str(multi) in human.stdout

    missing = await smsgw(db_dsn, "message", "show", "987654")
    assert missing.exit_code == 1 and "not found" in missing.stderr
    usage = await smsgw(db_dsn, "message", "show")
    assert usage.exit_code == 2
    bad_number = await smsgw(db_dsn, "message", "show", "--to", "not-a-number")
    assert bad_number.exit_code == 2 and "not a phone number" in bad_number.stderr


# -- retry / cancel ---------------------------------------------------------------------------------------


async def test_retry_and_cancel_allowed_and_refused(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async def row(status: str, reason: str | None = None, attempts: int = 1, expires: str | None = None) -> int:
        expires_at = await db_pool.fetchval(f"SELECT now() + interval '{expires}'") if expires else None
        return int(await db_pool.fetchval(INSERT_ROW, "+12025550111", status, reason, attempts, expires_at))

    queued, queued2 = await row("queued", attempts=0), await row("queued", attempts=0)
    claimed = await row("claimed")
    submitted = await row("submitted")
    delivered = await row("delivered", "delivered")
    failed = await row("failed", "ESME_RSYSERR after 5 attempts", attempts=5)
    undeliverable = await row("undeliverable", "UNDELIV")
    await db_pool.execute(
        "INSERT INTO message_part (message_id, seq, total, smsc, smsc_message_id, smsc_msgid_key, status) "
        "VALUES ($1, 1, 2, 'sim', 'a1', 'a1', 'undeliverable'), ($1, 2, 2, 'sim', 'a2', 'a2', 'delivered')",
        undeliverable,
    )
    expired_late = await row("expired", "expired_before_submit", expires="-1 hour")
    expired_ok = await row("expired", "no_receipt_within_timeout", expires="1 day")
    opted_out = await row("rejected", "opted_out", attempts=0)
    not_subscribed = await row("rejected", "not_subscribed", attempts=0)
    too_long = await row("rejected", "too_long", attempts=0)

    # cancel: only queued rows.
    result = await smsgw(db_dsn, "message", "cancel", str(queued), str(claimed), str(submitted), str(delivered),
                         "424242", "--json")
    assert result.exit_code == 1
    out = {o["id"]: o for o in as_json(result)}
    assert out[queued]["done"] is True
    assert not any(out[i]["done"] for i in (claimed, submitted, delivered, 424242))
    assert "in flight" in out[claimed]["message"]
    assert "already submitted" in out[submitted]["message"]
    assert "already final" in out[delivered]["message"]
    assert out[424242]["message"] == "not found"
    assert tuple(await db_pool.fetchrow("SELECT status, reason FROM outbound_message WHERE id = $1", queued)) == (
        "rejected", "cancelled"
    )
    assert await db_pool.fetchval("SELECT status FROM outbound_message WHERE id = $1", claimed) == "claimed"
    again = await smsgw(db_dsn, "message", "cancel", str(queued))
    assert again.exit_code == 1 and f"{queued}: refused: already cancelled" in again.stdout
    ok = await smsgw(db_dsn, "message", "cancel", str(queued2))
    assert ok.exit_code == 0 and f"{queued2}: ok: cancelled" in ok.stdout

    # retry: failed / expired (deadline not passed) / undeliverable / cancelled; never consent refusals.
    ids = [failed, undeliverable, expired_ok, queued, expired_late, opted_out, not_subscribed, too_long, delivered,
           claimed]
    result = await smsgw(db_dsn, "message", "retry", *map(str, ids), "--json")
    assert result.exit_code == 1
    out = {o["id"]: o for o in as_json(result)}
    assert [i for i in ids if out[i]["done"]] == [failed, undeliverable, expired_ok, queued]
    assert "consent refusals are never overridden" in out[opted_out]["message"]
    assert "consent refusals are never overridden" in out[not_subscribed]["message"]
    assert "deadline" in out[expired_late]["message"]
    assert "insert a new row" in out[too_long]["message"]
    assert "delivered" in out[delivered]["message"]
    assert "in progress" in out[claimed]["message"]
    r = await db_pool.fetchrow("SELECT * FROM outbound_message WHERE id = $1", failed)
    assert (r["status"], r["reason"], r["attempts"], r["done_at"], r["smsc_msgid_key"]) == (
        "queued", "manual_retry", 0, None, None
    )
    assert r["detail"] == "manual retry; was failed / ESME_RSYSERR after 5 attempts after 5 attempts"
    assert await db_pool.fetchval("SELECT count(*) FROM message_part WHERE message_id = $1", undeliverable) == 0
    for refused in (opted_out, not_subscribed, expired_late, too_long):
        assert await db_pool.fetchval("SELECT status FROM outbound_message WHERE id = $1", refused) != "queued"

    human = await smsgw(db_dsn, "message", "retry", str(opted_out))
    assert human.exit_code == 1
    assert f"{opted_out}: refused: rejected by consent (opted_out)" in human.stdout


# -- subscribers import / export --------------------------------------------------------------------------


async def test_import_100k_rows_with_consent_events(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    n = 100_000
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "opted_in_at", "source"])
        for i in range(n):
            w.writerow([f"+1415{i:07d}", "2024-05-01T12:00:00Z", "spring signup form"])
    started = time.perf_counter()
    result = await smsgw(db_dsn, "subscribers", "import", "12345", "news", str(path), "--create-list", "Acme News",
                         "--json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    report = as_json(result)
    assert (report["rows"], report["valid"], report["added"], report["consent_events"]) == (n, n, n, n)
    assert report["bad_lines"] == [] and report["list_created"] is True
    print(f"\nsubscribers import: {n:,} rows in {elapsed:.2f} s ({n / elapsed:,.0f} rows/s, CLI end to end)")
    assert elapsed < 60, elapsed

    assert await db_pool.fetchval(
        "SELECT count(*) FROM subscription WHERE short_code = '12345' AND list_name = 'news' AND status = 'active'"
    ) == n
    events = await db_pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT msisdn) AS numbers, min(source_detail) AS sample FROM consent_event "
        "WHERE short_code = '12345' AND list_name = 'news' AND action = 'opt_in' AND channel = 'import'"
    )
    assert (events["n"], events["numbers"]) == (n, n)
    assert events["sample"].startswith("import big.csv line ") and "source: spring signup form" in events["sample"]
    assert "opted in at 2024-05-01T12:00:00Z" in events["sample"]
    opted_in = await db_pool.fetchval("SELECT opted_in_at FROM subscription WHERE msisdn = '14150000000'")
    assert opted_in.isoformat().startswith("2024-05-01T12:00:00")

    # The export of the whole list is the file again (CSV, re-importable).
    export = await smsgw(db_dsn, "subscribers", "export", "12345", "news")
    assert export.exit_code == 0, export.stderr
    lines = export.stdout.splitlines()
    assert lines[0] == "number,status,opted_in_at,opted_out_at,updated_at" and len(lines) == n + 1
    assert lines[1].startswith("+14150000000,active,2024-05-01T12:00:00")


async def test_import_bad_lines_opt_outs_and_idempotence(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    await db_pool.execute("SELECT smsgw_opt_out('12345', '+12025550140', 'sms', 'STOP', 'stop', NULL, NULL)")
    path = tmp_path / "crm.csv"
    path.write_text(
        "Number,Opted_In_At,Source\n"                # line 1: header (any case)
        "+12025550101,2024-01-02T03:04:05+00:00,web\n"  # 2 good
        "not-a-number,,web\n"                      # 3 bad number
        "(202) 555-0102,,\n"                        # 4 good (national form, default region US)
        "+12025550103,yesterday,web\n"              # 5 bad opted_in_at
        "\n"                                        # 6 blank: skipped, not an error
        "+12025550101,,again\n"                     # 7 duplicate of line 2
        "+12025550140,,web\n"                       # 8 opted out of the short code: not subscribed again
        '"+1 202 555 0104","2024-02-01",' + '"multi\nline"\n'  # 9-10 good; the record ends on line 10
        "+1202555CALL,,vanity\n"                    # 11 bad: letters
        "12,,\n"                                    # 12 bad: too short
    )
    missing = await smsgw(db_dsn, "subscribers", "import", "12345", "alerts", str(path))
    assert missing.exit_code == 1 and "--create-list" in missing.stderr

    first = await smsgw(db_dsn, "subscribers", "import", "+12345", "alerts", str(path), "--create-list", "Alerts",
                        "--source-detail", "CRM export 2024-06", "--json")
    assert first.exit_code == 0, first.output
    report = as_json(first)
    assert [(b["line"], b["value"]) for b in report["bad_lines"]] == [
        (3, "not-a-number"), (5, "yesterday"), (11, "+1202555CALL"), (12, "12")
    ]
    assert report["opted_out_not_subscribed"] == [{"line": 8, "number": "+12025550140"}]
    assert (report["rows"], report["valid"], report["numbers"], report["added"], report["consent_events"]) == (
        9, 5, 4, 3, 3
    )
    assert report["duplicates_in_file"] == 1 and report["short_code"] == "12345"
    active = {r["msisdn"] for r in await db_pool.fetch(
        "SELECT msisdn FROM subscription WHERE short_code = '12345' AND list_name = 'alerts' AND status = 'active'")}
    assert active == {"12025550101", "12025550102", "12025550104"}
    assert "12025550140" not in active
    assert await db_pool.fetchval("SELECT count(*) FROM opt_out WHERE msisdn = '12025550140'") == 1
    details = [r["source_detail"] for r in await db_pool.fetch(
        "SELECT source_detail FROM consent_event WHERE channel = 'import' ORDER BY source_detail")]
    assert details[0] == "CRM export 2024-06 line 10; source: multi\nline; opted in at 2024-02-01T00:00:00Z"
    assert "CRM export 2024-06 line 2; source: web; opted in at 2024-01-02T03:04:05Z" in details

    human = await smsgw(db_dsn, "subscribers", "import", "12345", "alerts", str(path))
    assert human.exit_code == 0, human.output
    assert "added 0 " in human.stdout and "3 already subscribed" in human.stdout
    assert "line 3: 'not-a-number': not a phone number" in human.stdout
    assert "line 8: +12025550140: opted out, not subscribed again" in human.stdout
    assert await db_pool.fetchval("SELECT count(*) FROM consent_event WHERE channel = 'import'") == 3

    # A list the settings name is created from them (before the gateway ever synced it).
    vip = await smsgw(db_dsn, "subscribers", "import", "12345", "vip", str(path), "--json", env={
        "SMSGW_KEYWORDS": json.dumps({"12345": {
            "program": "Acme", "contact": "help@acme.example", "frequency": "4/wk",
            "lists": [{"name": "vip", "program": "Acme VIP", "frequency": "2/wk"}]}}),
    })
    assert vip.exit_code == 0, vip.output
    assert as_json(vip)["list_created"] is True
    assert await db_pool.fetchval("SELECT program FROM subscriber_list WHERE name = 'vip'") == "Acme VIP"

    no_header = tmp_path / "plain.csv"
    no_header.write_text("phone\n+12025550101\n")
    bad = await smsgw(db_dsn, "subscribers", "import", "12345", "alerts", str(no_header))
    assert bad.exit_code == 2 and "no 'number' column" in bad.stderr

    # Export: active by default; --status all shows a number that left the list, --json parses.
    await db_pool.execute("SELECT smsgw_leave_list('12345', '+12025550102', 'alerts', 'sms', 'LEAVE', 'leave')")
    export = await smsgw(db_dsn, "subscribers", "export", "12345", "alerts", "--csv")
    rows = list(csv.DictReader(export.stdout.splitlines()))
    assert [r["number"] for r in rows] == ["+12025550101", "+12025550104"]
    everything = as_json(await smsgw(db_dsn, "subscribers", "export", "12345", "alerts", "--status", "all", "--json"))
    assert {(r["number"], r["status"]) for r in everything} == {
        ("+12025550101", "active"), ("+12025550102", "opted_out"), ("+12025550104", "active")
    }
    out = as_json(await smsgw(db_dsn, "subscribers", "export", "12345", "alerts", "--status", "opted_out", "--json"))
    assert [r["number"] for r in out] == ["+12025550102"] and out[0]["opted_out_at"]
    gone = await smsgw(db_dsn, "subscribers", "export", "12345", "nosuch")
    assert gone.exit_code == 1 and "does not exist" in gone.stderr


# -- consent history --------------------------------------------------------------------------------------


async def test_consent_history_after_opt_in_and_opt_out(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await db_pool.execute(
        "INSERT INTO subscriber_list (short_code, name, program) VALUES ('12345', 'news', 'Acme News')"
    )
    await db_pool.execute("SELECT smsgw_opt_in('12345', '+12025550150', 'news', 'api', NULL, NULL, NULL, 'web form')")
    mo = await db_pool.fetchval(
        """INSERT INTO inbound_message (smsc, source, destination, body, data_coding, esm_class, raw_short_message)
           VALUES ('sim', '12025550150', '12345', 'Stop please', 0, 0, ''::bytea) RETURNING id"""
    )
    await db_pool.execute("SELECT smsgw_opt_out('12345', '12025550150', 'sms', 'STOP', 'Stop please', $1)", mo)
    await db_pool.execute("SELECT smsgw_opt_out('777', '12025550150', 'api', NULL, NULL, NULL, 'CRM')")

    data = as_json(await smsgw(db_dsn, "consent", "history", "(202) 555-0150", "--json"))
    assert data["number"] == "+12025550150"
    assert [(e["short_code"], e["action"], e["channel"]) for e in data["events"]] == [
        ("12345", "opt_in", "api"), ("12345", "opt_out", "sms"), ("777", "opt_out", "api")
    ]
    assert data["events"][0]["list_name"] == "news" and data["events"][0]["source_detail"] == "web form"
    stop = data["events"][1]
    assert (stop["keyword"], stop["message_text"], stop["inbound_message_id"]) == ("STOP", "Stop please", mo)
    assert sorted(o["short_code"] for o in data["opted_out"]) == ["12345", "777"]
    assert data["active_lists"] == []
    assert data["subscriptions"][0]["status"] == "opted_out"

    one = as_json(await smsgw(db_dsn, "consent", "history", "+12025550150", "--short-code", "+12345", "--json"))
    assert {e["short_code"] for e in one["events"]} == {"12345"} and len(one["events"]) == 2
    assert [o["short_code"] for o in one["opted_out"]] == ["12345"]

    await db_pool.execute("SELECT smsgw_opt_in('12345', '+12025550150', 'news', 'sms', 'START', 'start')")
    human = await smsgw(db_dsn, "consent", "history", "+12025550150", "--short-code", "12345")
    assert human.exit_code == 0, human.output
    assert "not opted out of short code 12345" in human.stdout
    assert "active lists: 12345/news" in human.stdout
    for expected in ("Stop please", "web form", "START", "opt_out", "opt_in", "sms", "api"):
        assert expected in human.stdout, expected

    nobody = as_json(await smsgw(db_dsn, "consent", "history", "+12025550199", "--json"))
    assert nobody["events"] == [] and nobody["opted_out"] == [] and nobody["active_lists"] == []


# -- check-config / status --------------------------------------------------------------------------------


async def test_check_config_masks_secrets(tmp_path: Path) -> None:
    smpp_secret, db_secret = "Zq9sEcr7", "Db-Pa55-w0rd"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[smsc.carrier_a]\nhost = "smsc.example"\nsystem_id = "acme"\npassword = "{smpp_secret}"\n'
        '[[route]]\nsmsc = ["carrier_a"]\n'
    )
    url = f"postgresql://smsgw:{db_secret}@db.example:5432/smsgw?sslmode=require&password={db_secret}"
    result = await smsgw(None, "check-config", "--config", str(config), env={"SMSGW_DATABASE__URL": url})
    assert result.exit_code == 0, result.output
    assert smpp_secret not in result.output and db_secret not in result.output
    assert "smsc.carrier_a.password = ********" in result.stdout
    assert "database.url = postgresql://smsgw:********@db.example:5432/smsgw?sslmode=require&password=********" \
        in result.stdout
    assert "config OK" in result.stderr

    data = as_json(await smsgw(None, "check-config", "--config", str(config), "--json",
                               env={"SMSGW_DATABASE__URL": url}))
    assert data["ok"] is True and data["errors"] == []
    assert data["settings"]["smsc"]["carrier_a"]["host"] == "smsc.example"
    assert smpp_secret not in json.dumps(data) and db_secret not in json.dumps(data)

    config.write_text(
        f'[smsc.carrier_a]\nport = "nope"\nsystem_id = "acme"\npassword = "{smpp_secret}"\n'
        '[[route]]\nsmsc = ["carrier_b"]\n'
    )
    bad = await smsgw(None, "check-config", "--config", str(config), env={"SMSGW_DATABASE__URL": url})
    assert bad.exit_code == 2
    assert "config error: smsc.carrier_a.port:" in bad.stderr
    assert smpp_secret not in bad.output and db_secret not in bad.output
    bad_json = await smsgw(None, "check-config", "--config", str(config), "--json")
    assert bad_json.exit_code == 2 and as_json(bad_json)["ok"] is False

    # No database URL and no SMSC: what `smsgw run` would refuse is reported too.
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    none = await smsgw(None, "check-config", "--config", str(empty))
    assert none.exit_code == 2
    assert "database.url: not set" in none.stderr and "no SMSC configured" in none.stderr


async def test_status_reads_binds_and_queue(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    await db_pool.execute(
        "INSERT INTO outbound_message (source, destination, body, send_after) "
        "SELECT '12345', '+1202555' || lpad(i::text, 4, '0'), 'later', now() + interval '1 hour' "
        "FROM generate_series(1, 7) i"
    )
    async with running_gateway(settings_for(db_dsn, sim, binds=2)):
        deadline = asyncio.get_running_loop().time() + 10
        data: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            result = await smsgw(db_dsn, "status", "--json")
            assert result.exit_code == 0, result.output
            data = as_json(result)
            if any(s["smsc"] == "sim" and s["binds_up"] == 2 for s in data["smscs"]):
                break
            await asyncio.sleep(0.2)
        assert any(s["smsc"] == "sim" and s["binds_up"] == 2 and s["up"] for s in data["smscs"]), data
        assert data["queue_depth"].get("queued") == 7
        assert data["oldest_queued_age_s"] is None  # none is due yet

        human = await smsgw(db_dsn, "status")
        assert human.exit_code == 0, human.output
        assert "sim" in human.stdout and "2/2" in human.stdout and "queued" in human.stdout

        watched = await smsgw(db_dsn, "status", "--watch", "0.2", "--count", "2", "--json")
        assert watched.exit_code == 0, watched.output
        rounds = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
        assert len(rounds) == 2 and all(r["queue_depth"]["queued"] == 7 for r in rounds)

    unreachable = await smsgw("postgresql://nobody@127.0.0.1:1/none", "status")
    assert unreachable.exit_code == 1 and "database" in unreachable.stderr
