"""Content checks before sending (gateway/content.py): each rule as a table of hits and near-misses, segments
with the appended opt-out, the config model, `smsgw content check`, and one run against real Postgres and the
simulator (a refused shortener, an appended opt-out seen at the SMSC, SHAFT words in a transactional row, a
keyword reply that is never checked)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from click.testing import CliRunner
from gw import campaign_settings, running_gateway, wait_final
from pydantic import ValidationError

from gateway.cli import main
from gateway.content import (
    APPENDED_OPT_OUT,
    ContentRule,
    check_content,
    count_segments,
    find_class_words,
    find_shorteners,
    has_opt_out_instruction,
    has_program_name,
    load_lists,
)
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.status import Reason
from keywords.config import ContentRules, ShortCodeKeywords

ROOT = Path(__file__).resolve().parent.parent
LISTS = load_lists()
SHORTENERS = LISTS.shorteners


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reply STOP to opt out", True),
        ("Sale today. Reply STOP to opt-out.", True),
        ("reply stop to optout", True),
        ("Txt END 2 unsubscribe", True),
        ("Text 'QUIT' to cancel", True),
        ("Reply \u201cSTOP\u201d to opt out", True),
        ("Reply UNSUBSCRIBE to unsubscribe", True),
        ("Reply STOPALL to end all messages", True),
        ("Send CANCEL to stop", True),
        ("Reply HELP for help, STOP to cancel.", True),  # the keyword templates' own wording
        ("To opt out, reply STOP", True),
        ("Unsubscribe: text END", True),
        ("Opt-out: reply STOP", True),
        # near-misses
        ("Reply STOP", False),  # no purpose stated
        ("Reply START to opt in", False),
        ("Reply HELP for help", False),
        ("Don't stop to cancel your plans", False),  # bare keyword in lower case
        ("Stop by our store", False),
        ("Reply STOPP to opt out", False),
        ("Reply STOP to opt outside", False),
        ("To opt out visit acme.example/prefs", False),
        ("Reply YES to unsubscribe", False),
        ("", False),
    ],
)
def test_opt_out_instruction(text: str, expected: bool) -> None:
    assert has_opt_out_instruction(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Deals at bit.ly/abc", ["bit.ly"]),
        ("Deals at https://bit.ly/abc", ["bit.ly"]),
        ("Deals at HTTP://WWW.BIT.LY/abc", ["bit.ly"]),
        ("See tinyurl.com/x2 and t.co/y", ["tinyurl.com", "t.co"]),
        ("(goo.gl/maps/1)", ["goo.gl"]),
        ("Link: rb.gy.", ["rb.gy"]),
        ("Go to m.tiny.cc/a", ["tiny.cc"]),
        ("at cutt.ly:443/x", ["cutt.ly"]),
        # near-misses
        ("bit.lyrics is a song site", []),
        ("orbit.ly/x", []),  # another host ending in the letters of one
        ("acme.example/bit.ly", []),  # a path, not a host
        ("mail ops@bit.ly", []),  # an e-mail address
        ("t.com is not t.co", ["t.co"]),
        ("Meet at 5.30 in bit. ly", []),
        ("https://acme.example/s/abc", []),
        ("bit.ly.acme.example/x", []),  # a subdomain of our own domain
    ],
)
def test_link_shorteners(text: str, expected: list[str]) -> None:
    assert find_shorteners(text, SHORTENERS) == expected


@pytest.mark.parametrize(
    ("text", "allow", "expected"),
    [
        ("Try our new CBD gummies", (), [("cannabis", "CBD")]),
        ("cbd", (), [("cannabis", "cbd")]),
        ("Free BEER on Friday", (), [("alcohol", "BEER")]),
        ("Happy   hour at 5", (), [("alcohol", "Happy   hour")]),
        ("Gun show this weekend", (), [("firearms", "Gun show")]),
        ("Vape deals", (), [("tobacco", "Vape")]),
        ("Beer and cigars", (), [("alcohol", "Beer"), ("tobacco", "cigars")]),
        ("Beer and cigars", ("alcohol",), [("tobacco", "cigars")]),
        ("CBD-infused gummies", (), [("cannabis", "CBD")]),  # a hyphen ends a word
        ("e-cig sale", (), [("tobacco", "e-cig")]),
        ("Code 14/88", (), [("hate", "14/88")]),
        # near-misses: inside another word, or a different word
        ("abcbdef", (), []),
        ("Your code is ABCBD12", (), []),
        ("We have begun shipping", (), []),
        ("Sussex office closed", (), []),
        ("Beers", (), [("alcohol", "Beers")]),
        ("Beersheba branch", (), []),
        ("Your order shipped", (), []),
        ("happy hours of service", (), []),
    ],
)
def test_shaft_words(text: str, allow: tuple[str, ...], expected: list[tuple[str, str]]) -> None:
    assert find_class_words(text, LISTS, allow) == expected


def test_shipped_classes() -> None:
    assert set(LISTS.words) == {"sex", "hate", "alcohol", "firearms", "tobacco", "cannabis"}
    assert all(LISTS.words.values())
    assert {"bit.ly", "tinyurl.com", "goo.gl", "ow.ly", "t.co", "is.gd", "buff.ly", "rebrand.ly", "cutt.ly",
            "shorturl.at", "tiny.cc", "bl.ink", "t.ly", "rb.gy"} <= SHORTENERS


@pytest.mark.parametrize(
    ("text", "programs", "expected"),
    [
        ("Acme Alerts: sale", ["Acme Alerts"], "Acme Alerts"),
        ("ACME  ALERTS sale", ["Acme Alerts"], "Acme Alerts"),
        ("Acme News: this week", ["Acme Alerts", "Acme News"], "Acme News"),
        ("Acme: sale", ["Acme Alerts"], None),
        ("Acme Alertsx sale", ["Acme Alerts"], None),
    ],
)
def test_program_name(text: str, programs: list[str], expected: str | None) -> None:
    assert has_program_name(text, programs) == expected


def _failed(result: Any) -> list[ContentRule]:
    return [r.rule for r in result.results if not r.passed]


def test_marketing_needs_program_and_opt_out() -> None:
    rules = ContentRules()
    result = check_content("Big sale today", "marketing", rules, "Acme Alerts")
    assert _failed(result) == [ContentRule.PROGRAM_NAME, ContentRule.OPT_OUT]
    ok = check_content("Acme Alerts: big sale. Reply STOP to opt out", "marketing", rules, "Acme Alerts")
    assert ok.passed and ok.text == "Acme Alerts: big sale. Reply STOP to opt out" and not ok.appended
    assert [r.rule for r in ok.results] == list(ContentRule)


def test_switches_turn_rules_off() -> None:
    rules = ContentRules(require_program_name=False, require_opt_out=False, link_shorteners=False, shaft=False,
                         max_segments_marketing=None)
    result = check_content("beer at bit.ly/x " * 40, "marketing", rules, "Acme Alerts")
    assert result.passed and result.results == ()


def test_transactional_gets_only_shortener_shaft_and_its_segment_cap() -> None:
    rules = ContentRules(max_segments_transactional=1)
    result = check_content("Your order shipped", "transactional", rules, "Acme Alerts")
    assert result.passed
    assert [r.rule for r in result.results] == [ContentRule.LINK_SHORTENER, ContentRule.SHAFT,
                                                ContentRule.MAX_SEGMENTS]
    bad = check_content("Your beer order: bit.ly/o1 " + "x" * 150, "transactional", rules, "Acme Alerts")
    assert _failed(bad) == [ContentRule.LINK_SHORTENER, ContentRule.SHAFT, ContentRule.MAX_SEGMENTS]
    assert [r.detail for r in bad.results if not r.passed] == [
        "link shortener bit.ly", "alcohol: 'beer'", "2 segments, at most 1 for transactional"
    ]
    off = ContentRules(transactional_shaft=False, transactional_link_shorteners=False)
    assert check_content("Your beer order: bit.ly/o1", "transactional", off, "Acme Alerts").passed


def test_appended_opt_out_counts_towards_segments() -> None:
    body = "Acme Alerts " + "x" * 148  # 160 GSM-7 characters: one segment on its own
    assert count_segments(body) == ("GSM-7", 160, 1)
    rules = ContentRules(append_opt_out=True, max_segments_marketing=1)
    result = check_content(body, "marketing", rules, "Acme Alerts")
    assert result.appended and result.text == body + APPENDED_OPT_OUT
    assert (result.encoding, result.characters, result.segments) == ("GSM-7", 183, 2)
    assert _failed(result) == [ContentRule.MAX_SEGMENTS]
    assert check_content(body, "marketing", ContentRules(append_opt_out=True, max_segments_marketing=2),
                         "Acme Alerts").passed
    # Without append_opt_out the text stays as it is and the missing instruction is the failure.
    plain = check_content(body, "marketing", ContentRules(max_segments_marketing=1), "Acme Alerts")
    assert plain.text == body and _failed(plain) == [ContentRule.OPT_OUT]


def test_segments_follow_the_encoding() -> None:
    assert count_segments("Acme \U0001f600 sale") == ("UCS-2", 12, 1)  # the emoji is 2 units
    assert count_segments("\u00e7" * 71) == ("UCS-2", 71, 2)
    assert count_segments("\u00e7" * 71, latin1=True) == ("Latin-1", 71, 1)
    assert count_segments("\u201cquoted\u201d", smart=True) == ("GSM-7", 8, 1)
    assert count_segments("x" * 153 * 3, method="udh16")[2] == 4  # 152 per part with a 16-bit reference


def test_every_rule_has_a_reason() -> None:
    assert {rule.reason for rule in ContentRule} <= {r.value for r in Reason}
    assert ContentRule.LINK_SHORTENER.reason == "content_link_shortener"


def test_rules_config(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="allow_classes"):
        ContentRules(allow_classes=("alcohols",))
    with pytest.raises(ValidationError, match="not a directory"):
        ContentRules(word_lists_dir=tmp_path / "missing")
    own = tmp_path / "words"
    own.mkdir()
    (own / "gambling.txt").write_text("# our own class\ncasino\nsports betting\n")
    rules = ContentRules(word_lists_dir=own)
    result = check_content("Acme Alerts: sports  betting and beer. STOP to end", "marketing", rules, "Acme Alerts")
    assert [r.detail for r in result.results if not r.passed] == ["gambling: 'sports  betting'"]
    cfg = ShortCodeKeywords(program="P", contact="c", frequency="f", content={"allow_classes": ["alcohol"]})
    assert cfg.content is not None and cfg.content.allow_classes == ("alcohol",)
    assert ShortCodeKeywords(program="P", contact="c", frequency="f").content is None


def test_package_data_ships_the_lists() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gateway"]
    data = ROOT / "gateway"
    shipped = {p.relative_to(data) for pattern in patterns for p in data.glob(pattern)}
    assert {p.relative_to(data) for p in (data / "content_data").rglob("*.txt")} <= shipped


# --- the CLI -----------------------------------------------------------------------------------------------------

CONFIG = """
[keywords."12345"]
program = "Acme Alerts"
contact = "help@acme.example"
frequency = "Up to 4 msgs/week"

[keywords."12345".content]
append_opt_out = true
max_segments_marketing = 1
"""


def test_cli_content_check(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(CONFIG)
    runner = CliRunner()
    ok = runner.invoke(main, ["content", "check", "Acme Alerts: sale today", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "encoding   GSM-7" in ok.output and "segments   1" in ok.output
    assert "PASS opt_out: appended 'Reply STOP to opt out.'" in ok.output
    assert "text       Acme Alerts: sale today Reply STOP to opt out." in ok.output

    long = runner.invoke(main, ["content", "check", "Acme Alerts " + "x" * 148, "--config", str(config),
                                "--short-code", "+12345", "--json"])
    assert long.exit_code == 1, long.output
    doc = json.loads(long.output)
    assert (doc["encoding"], doc["characters"], doc["segments"], doc["ok"]) == ("GSM-7", 183, 2, False)
    assert {r["rule"]: r["passed"] for r in doc["rules"]}["max_segments"] is False

    shaft = runner.invoke(main, ["content", "check", "Your CBD order shipped", "--config", str(config),
                                 "--class", "transactional"])
    assert shaft.exit_code == 1 and "FAIL shaft: cannabis: 'CBD'" in shaft.output

    unknown = runner.invoke(main, ["content", "check", "x", "--config", str(config), "--short-code", "999"])
    assert unknown.exit_code == 2


# --- end to end: real Postgres, the simulator --------------------------------------------------------------------

SC = "12345"


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, deliver_timeout=1.0)) as simulator:
        yield simulator


async def test_content_rules_at_send_time(db_pool: asyncpg.Pool, db_dsn: str, sim: SmscSimulator) -> None:
    keywords = {
        "program": "Acme Alerts", "contact": "help@acme.example", "frequency": "Up to 4 msgs/week",
        "lists": [{"name": "news", "program": "Acme News", "frequency": "2 msgs/week"}],
        "custom": [{"word": "BEER", "reply": "{program}: our beer list is at bit.ly/beer"}],
        "content": {"append_opt_out": True},
    }
    # Configured with '+': rows from "12345" still get the rules.
    settings = campaign_settings(db_dsn, sim, {"+" + SC: keywords})
    numbers = [f"1555000010{i}" for i in range(5)]

    def texts_to(number: str) -> list[str]:
        return [r.text for r in sim.submits if r.destination_addr == number and r.status == 0]

    async with running_gateway(settings):
        await sim.wait_for(lambda: sim.bound() >= 1, timeout=10)
        for number in numbers:
            await db_pool.execute("SELECT smsgw_opt_in($1, $2, 'news', 'api', NULL, NULL, NULL, 'test')", SC, number)
        rows = [
            ("Acme News: deals at https://bit.ly/deal1. Reply STOP to opt out", "marketing", "news"),
            ("Acme News: spring sale today", "marketing", "news"),
            ("Your CBD order has shipped", "transactional", None),
            ("Your order has shipped", "transactional", None),
        ]
        ids = [
            await db_pool.fetchval(
                "INSERT INTO outbound_message (source, destination, body, message_class, list_name)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id", SC, "+" + number, body, klass, list_name,
            )
            for number, (body, klass, list_name) in zip(numbers, rows, strict=False)
        ]
        delivery = await sim.inject_mo(numbers[4], SC, "beer")
        assert await sim.wait_for(lambda: delivery.acked, timeout=10)
        assert await sim.wait_for(lambda: texts_to(numbers[4]), timeout=10)
        await wait_final(db_pool, timeout=10)
        await asyncio.sleep(0.2)
        got = [
            tuple(await db_pool.fetchrow("SELECT status, reason, detail FROM outbound_message WHERE id = $1", i))
            for i in ids
        ]
    assert got == [
        ("rejected", "content_link_shortener", "link shortener bit.ly"),
        ("delivered", "delivered", None),
        ("rejected", "content_shaft", "cannabis: 'CBD'"),
        ("delivered", "delivered", None),
    ]
    assert texts_to(numbers[0]) == [] and texts_to(numbers[2]) == []
    assert texts_to(numbers[1]) == ["Acme News: spring sale today Reply STOP to opt out."]
    assert texts_to(numbers[3]) == ["Your order has shipped"]
    # A keyword reply is never checked: its shortener and SHAFT word go out as configured.
    assert texts_to(numbers[4]) == ["Acme Alerts: our beer list is at bit.ly/beer"]
