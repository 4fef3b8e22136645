"""Personalised templates (issue 10, part 1): the Python parser and renderer (table tests), the database's
render at insert (migration 0012's trigger: variables, attributes, defaults, missing, unknown, COPY, the producer
role), `smsgw template` and the attribute columns of `smsgw subscribers import`, and a personalised broadcast
to 10,000 subscribers checked per recipient at the simulator."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from gw import campaign_settings, running_gateway, wait_final

from gateway import message_templates as mt
from gateway.admin import AdminError
from gateway.admin import templates as admin_templates
from gateway.cli import main
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.status import Reason

SC = "12345"

# -- the Python twin: parsing and rendering ----------------------------------------------------------------

RENDER_CASES = [
    # (template, values, rendered, missing)
    ("Hi {first_name}", {"first_name": "Ann"}, "Hi Ann", []),
    ("Hi {first_name|there}", {}, "Hi there", []),
    ("Hi {first_name|there}", {"first_name": "Bo"}, "Hi Bo", []),
    ("Hi {first_name|}!", {}, "Hi !", []),
    ("Order {order_id} for {first_name}", {"first_name": "Cy"}, "Order  for Cy", ["order_id"]),
    ("{a}{b}{a}", {}, "", ["a", "b"]),
    ("{{literal}} {x}", {"x": 1}, "{literal} 1", []),
    ("}} and {{", {}, "} and {", []),
    ("no placeholders", {}, "no placeholders", []),
    ("{n}", {"n": None}, "", ["n"]),
    ("{flag} {num}", {"flag": True, "num": 2.5}, "true 2.5", []),
    ("value {v} is not parsed again", {"v": "{w}"}, "value {w} is not parsed again", []),
    ("Hi {first_name|dear friend}, 50% off", {}, "Hi dear friend, 50% off", []),
]


@pytest.mark.parametrize(("template", "values", "rendered", "missing"), RENDER_CASES)
def test_render_and_missing(template: str, values: dict[str, Any], rendered: str, missing: list[str]) -> None:
    assert mt.render(template, values) == rendered
    assert mt.missing(template, values) == missing


@pytest.mark.parametrize("template", ["Hi {first name}", "Hi {", "Hi }", "{a|b{c}", "{1x}", "{}", "{a.b}"])
def test_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(mt.TemplateSyntaxError):
        mt.parse(template)


def test_parse_placeholders_and_defaults() -> None:
    assert mt.parse("Hi {first_name|there}, {{x}} {order_id}") == [
        "Hi ", mt.Placeholder("first_name", "there"), ", {x} ", mt.Placeholder("order_id", None),
    ]
    assert mt.unknown_names("{first_name} {tier} {zip|none} {coupon}", {"tier"}) == ["coupon"]


def test_longest_values_and_segments() -> None:
    body = "Hi {first_name|there}, your order {order_id} shipped"
    longest = mt.longest_values(body, {"first_name": ["Al", "Maximiliano"], "order_id": ["A1"]})
    assert longest == {"first_name": "Maximiliano", "order_id": "A1"}
    assert mt.longest_values(body, {}) == {"first_name": "there"}
    assert mt.segments("x" * 160) == (1, "GSM-7")
    assert mt.segments("x" * 161) == (2, "GSM-7")
    assert mt.segments("é" * 71 + "ж") == (2, "UCS-2")


# -- the database: render at insert ----------------------------------------------------------------------


async def _setup(pool: asyncpg.Pool | asyncpg.Connection) -> None:
    await pool.execute(
        "INSERT INTO message_template (short_code, name, body) VALUES"
        " ($1, 'ship', 'Hi {first_name|there}, order {order_id} shipped'),"
        " ($1, 'promo', 'Acme Alerts: Hi {first_name}, 20% off. Reply STOP to opt out'),"
        " ($1, 'braces', '{{x}} {v} {first_name|}')",
        SC,
    )
    await pool.execute("UPDATE message_template SET message_class = 'marketing' WHERE name = 'promo'")
    await pool.execute("SELECT smsgw_set_attributes('+12345', '+12025550001', '{\"first_name\": \"Ann\"}')")


async def _row(pool: asyncpg.Pool, row_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT body, status, reason, detail, done_at, message_class FROM outbound_message WHERE id = $1", row_id
    )
    assert row is not None
    return row


async def test_sql_render_agrees_with_python(db_pool: asyncpg.Pool) -> None:
    for template, values, rendered, missing in RENDER_CASES:
        vars_json = json.dumps({k: v for k, v in values.items() if v is not None} | {
            k: None for k, v in values.items() if v is None})
        assert await db_pool.fetchval("SELECT smsgw_render($1, $2::jsonb)", template, vars_json) == rendered, template
        assert await db_pool.fetchval("SELECT smsgw_template_missing($1, $2::jsonb)", template, vars_json) \
            == missing, template


async def test_attributes_merge(db_pool: asyncpg.Pool) -> None:
    merged = await db_pool.fetchval(
        "SELECT smsgw_set_attributes(' +12345', '12025550009', '{\"first_name\": \"Ann\", \"tier\": \"gold\"}')")
    assert json.loads(merged) == {"first_name": "Ann", "tier": "gold"}
    merged = await db_pool.fetchval(
        "SELECT smsgw_set_attributes('12345', '+12025550009', '{\"tier\": null, \"city\": \"Oslo\"}')")
    assert json.loads(merged) == {"first_name": "Ann", "city": "Oslo"}
    assert await db_pool.fetchval("SELECT count(*) FROM subscriber WHERE short_code = '12345'") == 1
    with pytest.raises(asyncpg.PostgresError, match="JSON object"):
        await db_pool.fetchval("SELECT smsgw_set_attributes('12345', '+12025550009', '[1]')")


async def test_trigger_renders_from_variables_attributes_and_defaults(db_pool: asyncpg.Pool) -> None:
    await _setup(db_pool)
    insert = ("INSERT INTO outbound_message (source, destination, template, variables) VALUES ($1, $2, $3, $4)"
              " RETURNING id")
    # attributes (destination in another format: the digits are the key), a variable
    a = await db_pool.fetchval(insert, "+12345", "+1 202-555-0001", "ship", '{"order_id": "A-17"}')
    # a variable beats the attribute
    b = await db_pool.fetchval(insert, SC, "+12025550001", "ship", '{"order_id": "9", "first_name": "Annie"}')
    # no subscriber: the default
    c = await db_pool.fetchval(insert, SC, "+12025550002", "ship", '{"order_id": "B"}')
    # literal braces, a value that looks like a placeholder, an empty default
    d = await db_pool.fetchval(insert, SC, "+12025550002", "braces", '{"v": "{order_id}"}')
    assert (await _row(db_pool, a))["body"] == "Hi Ann, order A-17 shipped"
    assert (await _row(db_pool, b))["body"] == "Hi Annie, order 9 shipped"
    assert (await _row(db_pool, c))["body"] == "Hi there, order B shipped"
    assert (await _row(db_pool, d))["body"] == "{x} {order_id} "
    for row_id in (a, b, c, d):
        row = await _row(db_pool, row_id)
        assert (row["status"], row["reason"], row["done_at"]) == ("queued", None, None)
        assert row["message_class"] == "transactional"


async def test_missing_variable_and_unknown_template_are_rejected(db_pool: asyncpg.Pool) -> None:
    await _setup(db_pool)
    insert = ("INSERT INTO outbound_message (source, destination, template, variables) VALUES ($1, $2, $3, $4)"
              " RETURNING id")
    missing = await db_pool.fetchval(insert, SC, "+12025550002", "promo", None)
    row = await _row(db_pool, missing)
    assert (row["status"], row["reason"]) == ("rejected", Reason.TEMPLATE_VARIABLE_MISSING.value)
    assert "{first_name}" in row["detail"] and row["done_at"] is not None and row["body"] is None
    assert row["message_class"] == "marketing"  # a marketing template makes the row marketing
    two = await db_pool.fetchval(insert, SC, "+12025550002", "ship", "{}")
    assert "{order_id}" in (await _row(db_pool, two))["detail"]
    unknown = await db_pool.fetchval(insert, SC, "+12025550001", "nope", None)
    row = await _row(db_pool, unknown)
    assert (row["status"], row["reason"]) == ("rejected", Reason.TEMPLATE_UNKNOWN.value)
    assert "nope" in row["detail"] and row["done_at"] is not None
    # another short code's template is unknown here
    other = await db_pool.fetchval(insert, "99999", "+12025550001", "ship", '{"order_id": "1"}')
    assert (await _row(db_pool, other))["reason"] == "template_unknown"
    # plain rows are untouched; a row needs a body or a template
    plain = await db_pool.fetchval(
        "INSERT INTO outbound_message (source, destination, body) VALUES ($1, '+12025550001', 'Hi {first_name}')"
        " RETURNING id", SC)
    assert tuple(await _row(db_pool, plain))[:3] == ("Hi {first_name}", "queued", None)
    with pytest.raises(asyncpg.CheckViolationError):
        await db_pool.execute("INSERT INTO outbound_message (source, destination) VALUES ($1, '+12025550001')", SC)


async def test_copy_path_renders(db_pool: asyncpg.Pool) -> None:
    await _setup(db_pool)
    async with db_pool.acquire() as conn:
        await conn.copy_records_to_table(
            "outbound_message", columns=["source", "destination", "template", "variables"],
            records=[(SC, "+12025550001", "ship", '{"order_id": "C1"}'), (SC, "+12025550003", "ship", "{}")],
        )
    rows = await db_pool.fetch("SELECT destination, body, status, reason FROM outbound_message ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("+12025550001", "Hi Ann, order C1 shipped", "queued", None),
        ("+12025550003", None, "rejected", "template_variable_missing"),
    ]


async def test_producer_role_inserts_template_rows(db_pool: asyncpg.Pool) -> None:
    await _setup(db_pool)
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE smsgw_producer")
        row_id = await conn.fetchval(
            "INSERT INTO outbound_message (source, destination, template, variables)"
            " VALUES ($1, '+12025550001', 'ship', '{\"order_id\": \"P1\"}') RETURNING id", SC)
        status = await conn.fetchrow(
            "SELECT status, template, variables FROM outbound_message_status WHERE id = $1", row_id)
        assert (status["status"], status["template"]) == ("queued", "ship")
        # the producer reads neither templates nor attributes, nor calls the attributes function
        for statement in ("SELECT * FROM message_template", "SELECT * FROM subscriber",
                          "SELECT smsgw_set_attributes('12345', '+12025550001', '{}')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():  # a savepoint: the outer transaction goes on
                    await conn.execute(statement)
    assert (await _row(db_pool, row_id))["body"] == "Hi Ann, order P1 shipped"


async def test_broadcast_template_renders_per_subscriber(db_pool: asyncpg.Pool) -> None:
    await _setup(db_pool)
    await db_pool.execute(
        "INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)"
        " VALUES ($1, 'news', 'Acme News', '4 msgs/month', true)", SC)
    await db_pool.execute("SELECT smsgw_opt_in($1, '+12025550001', 'news')", SC)
    await db_pool.execute("SELECT smsgw_opt_in($1, '+12025550002', 'news')", SC)
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE smsgw_gateway")  # `smsgw broadcast` runs as the gateway role
        n = await conn.fetchval(
            "SELECT smsgw_broadcast_template($1, 'news', 'ship', 'c1', '{\"order_id\": \"X\"}')", SC)
    assert n == 2
    assert await db_pool.fetchval("SELECT smsgw_broadcast_template($1, 'news', 'ship', 'c1')", SC) == 0
    rows = await db_pool.fetch("SELECT destination, body, message_class FROM outbound_message ORDER BY destination")
    assert [tuple(r) for r in rows] == [("+12025550001", "Hi Ann, order X shipped", "marketing"),
                                        ("+12025550002", "Hi there, order X shipped", "marketing")]
    with pytest.raises(asyncpg.PostgresError, match="no template"):
        await db_pool.fetchval("SELECT smsgw_broadcast_template($1, 'news', 'nope', 'c2')", SC)


# -- saving templates and importing attributes -----------------------------------------------------------


async def test_admin_template_check_and_save(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute("SELECT smsgw_set_attributes($1, '+12025550001', '{\"first_name\": \"Ann\"}')", SC)
        await conn.execute("SELECT smsgw_set_attributes($1, '+12025550002', '{\"first_name\": \"Maximiliano\"}')", SC)
        body = "Hi {first_name|there}, code {coupon}: " + "x" * 135  # 1 segment for Ann, 2 for Maximiliano
        with pytest.raises(AdminError, match="coupon"):
            await admin_templates.save(conn, "+12345", "deal", body, message_class="marketing")
        with pytest.raises(AdminError, match="stray"):
            await admin_templates.save(conn, SC, "deal", "Hi {first name}", message_class="marketing")
        result = await admin_templates.save(conn, "+12345", "deal", body, message_class="marketing",
                                            assume={"coupon": "SAVE20"})
        assert result.saved and result.created and result.short_code == SC
        assert result.longest == {"first_name": "Maximiliano", "coupon": "SAVE20"}
        assert result.segments == 2  # 161+ characters at the longest name
        again = await admin_templates.save(conn, SC, "deal", "Hi {first_name}", message_class="marketing")
        assert not again.created and again.segments == 1
        assert [r["name"] for r in await admin_templates.list_templates(conn, SC)] == ["deal"]
        shown = await admin_templates.show(conn, SC, "deal")
        assert shown["longest_text"] == "Hi Maximiliano"


async def test_cli_template_and_import_attributes(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "subs.csv"
    csv_file.write_text(
        "number,First_Name,tier,source\n+12025550001,Ann,gold,web\n+12025550002,,silver,\n+12025550003,Cy,,\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    res = await _invoke(runner, ["subscribers", "import", SC, "news", str(csv_file), "--create-list", "Acme News",
                                 "--no-progress", "--json"], db_dsn)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["added"] == 3 and report["attributes_set"] == 3
    attrs = dict(await db_pool.fetch("SELECT msisdn, attributes FROM subscriber ORDER BY msisdn"))  # type: ignore[arg-type]
    assert {k: json.loads(v) for k, v in attrs.items()} == {
        "12025550001": {"first_name": "Ann", "tier": "gold"},
        "12025550002": {"tier": "silver"},
        "12025550003": {"first_name": "Cy"},
    }
    # existing behaviour: the source column is still the consent event's source, not an attribute
    assert await db_pool.fetchval(
        "SELECT count(*) FROM consent_event WHERE source_detail LIKE '%source: web%'") == 1

    res = await _invoke(runner, ["template", "set", "--short-code", SC, "--name", "promo",
                                 "--class", "marketing", "--body",
                                 "Acme Alerts: Hi {first_name|there} ({tier}). Reply STOP to opt out"], db_dsn)
    assert res.exit_code == 0, res.output
    assert "1 segment(s), GSM-7" in res.output
    res = await _invoke(runner, ["template", "set", "--short-code", SC, "--name", "bad",
                                 "--body", "Hi {nickname}"], db_dsn)
    assert res.exit_code == 2 and "nickname" in res.output
    res = await _invoke(runner, ["template", "list", "--json"], db_dsn)
    assert [t["name"] for t in json.loads(res.output)] == ["promo"]
    res = await _invoke(runner, ["template", "show", "--short-code", SC, "--name", "promo"], db_dsn)
    assert res.exit_code == 0 and "longest_text: Acme Alerts: Hi there (silver)" in res.output

    res = await _invoke(runner, ["broadcast", "--short-code", SC, "--list", "news",
                                 "--template", "promo", "--campaign", "k1"], db_dsn)
    assert res.exit_code == 0, res.output
    bodies = [r[0] for r in await db_pool.fetch("SELECT body FROM outbound_message ORDER BY destination")]
    assert bodies == ["Acme Alerts: Hi Ann (gold). Reply STOP to opt out",
                      "Acme Alerts: Hi there (silver). Reply STOP to opt out",
                      None]  # +12025550003 has no tier: rejected / template_variable_missing
    res = await _invoke(runner, ["broadcast", "--short-code", SC, "--list", "news",
                                 "--campaign", "k2"], db_dsn)
    assert res.exit_code == 2


async def _invoke(runner: CliRunner, args: list[str], dsn: str) -> Any:
    # The CLI runs its own event loop: keep it off this test's loop.
    env = {"COLUMNS": "250", "SMSGW_CONFIG": None, "SMSGW_DATABASE__URL": dsn}
    return await asyncio.to_thread(runner.invoke, main, args, env=env, catch_exceptions=False)


# -- end to end: a personalised broadcast to 10,000 subscribers, checked at the SMSC -------------------------

E2E_N = 10_000


async def test_personalised_broadcast_end_to_end(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    await db_pool.execute(
        "INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)"
        " VALUES ($1, 'news', 'Acme News', '4 msgs/month', true)", SC)
    await db_pool.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)"
        " SELECT $1, 'news', (12025000000 + i)::text, 'active', now() FROM generate_series(1, $2) i", SC, E2E_N)
    await db_pool.execute(
        "INSERT INTO subscriber (short_code, msisdn, attributes)"
        " SELECT $1, (12025000000 + i)::text, jsonb_build_object('first_name', 'N' || i)"
        " FROM generate_series(1, $2) i WHERE i % 10 <> 0", SC, E2E_N)  # every 10th has no name: the default
    await db_pool.execute(
        "INSERT INTO message_template (short_code, name, body, message_class)"
        " VALUES ($1, 'promo', 'Hi {first_name|friend}, Acme Alerts deals inside. Reply STOP to opt out',"
        " 'marketing')", SC)
    started = time.perf_counter()
    n = await db_pool.fetchval("SELECT smsgw_broadcast_template($1, 'news', 'promo', 'e2e')", SC, timeout=120)
    enqueue_s = time.perf_counter() - started
    print(f"\nenqueued {n} personalised rows in {enqueue_s:.2f} s ({n / enqueue_s:,.0f} rows/s)")
    assert n == E2E_N

    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as sim:
        settings = campaign_settings(db_dsn, sim, window=100, maintenance_interval=0.5)
        started = time.perf_counter()
        async with running_gateway(settings):
            final = await wait_final(db_pool, timeout=60)
        print(f"sent {E2E_N} in {time.perf_counter() - started:.2f} s: {final}")
        assert final.get("delivered", 0) == E2E_N, final
        texts = {r.destination_addr: r.text for r in sim.submits if r.status == 0}
    assert len(texts) == E2E_N
    for i in range(1, E2E_N + 1):
        name = "friend" if i % 10 == 0 else f"N{i}"
        assert texts[f"{12025000000 + i}"] == f"Hi {name}, Acme Alerts deals inside. Reply STOP to opt out", i
