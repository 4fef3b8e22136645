"""`smsgw audit` (issue 10 item 6): the reply checks as tables, then the command end to end in a subprocess
(its own private Postgres, real SMPP to its own simulator), and proof that it never dials a configured SMSC or
database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.admin import audit_rules as rules
from gateway.admin.audit import Check, audit_settings
from gateway.settings import load_settings
from gateway.smpp.segment import segment_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "gateway.example.toml"

PROGRAMS = ["Acme Alerts"]
FREQ = ["Up to 4 msgs/week"]
HELP_OK = (
    "Acme Alerts: help at help@acme.example or 1-800-555-0100. Msg&data rates may apply. Up to 4 msgs/week. "
    "Reply STOP to cancel."
)
STOP_OK = "You are unsubscribed from Acme Alerts. No more messages will be sent. Reply HELP for help."
JOIN_OK = (
    "Acme Alerts: you are subscribed to Acme News. 2 msgs/week. Msg&data rates may apply. "
    "Reply HELP for help, STOP to cancel."
)


# -- the rules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (HELP_OK, []),
        (HELP_OK.replace("Acme Alerts", "We"), [rules.PROGRAM]),
        ("acme  ALERTS: help at help@acme.example. Msg&data rates may apply. 4 msgs/week. Reply STOP to end.", []),
        (HELP_OK.replace("help@acme.example or 1-800-555-0100", "our team"), [rules.CONTACT]),
        (HELP_OK.replace("help@acme.example or 1-800-555-0100", "(800) 555-0100"), []),
        (HELP_OK.replace("help@acme.example or 1-800-555-0100", "https://acme.example/help"), []),
        (HELP_OK.replace("help@acme.example or 1-800-555-0100", "acme.com/help"), []),
        (HELP_OK.replace(" Up to 4 msgs/week.", ""), [rules.FREQUENCY]),
        (HELP_OK.replace("Up to 4 msgs/week", "Msg frequency varies"), []),
        (HELP_OK.replace("Up to 4 msgs/week", "2 messages per month"), []),
        (HELP_OK.replace("Msg&data rates may apply", "Msg & data rates may apply"), []),
        (HELP_OK.replace("Msg&data rates may apply", "Message and data rates may apply"), []),
        (HELP_OK.replace("Msg&data rates may apply", "Standard rates apply"), [rules.RATES]),
        (HELP_OK.replace("Reply STOP to cancel.", "Reply END."), [rules.STOP]),
        (HELP_OK + " " + "x" * 40, ["one segment (2)"]),
        ("Acme Alerts✓ a@b.co Msg&data rates may apply 4 msgs/wk STOP", []),  # UCS-2, under 70: one SMS
        ("Acme Alerts ✓ " + "y" * 70, [rules.CONTACT, rules.FREQUENCY, rules.RATES, rules.STOP, "one segment (2)"]),
        ("", [rules.PROGRAM, rules.CONTACT, rules.FREQUENCY, rules.RATES, rules.STOP]),
    ],
)
def test_help_rules(text: str, missing: list[str]) -> None:
    assert rules.help_missing(text, programs=PROGRAMS, frequencies=FREQ) == missing


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (STOP_OK, []),
        ("Acme Alerts: you have opted out. You will not receive further messages.", []),
        ("Acme Alerts: opted-out. No further msgs.", []),
        ("Acme Alerts: No more messages will be sent.", [rules.OPT_OUT_CONFIRMED]),
        ("You are unsubscribed. No more messages will be sent.", [rules.PROGRAM]),
        ("You are unsubscribed from Acme Alerts.", [rules.NO_MORE_MESSAGES]),
        (STOP_OK + " " + "z" * 80, ["one segment (2)"]),
        ("Thanks!", [rules.OPT_OUT_CONFIRMED, rules.PROGRAM, rules.NO_MORE_MESSAGES]),
    ],
)
def test_stop_rules(text: str, missing: list[str]) -> None:
    assert rules.stop_missing(text, programs=PROGRAMS) == missing


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (JOIN_OK, []),
        (JOIN_OK.replace("Acme Alerts: you are subscribed to Acme News", "Subscribed"), [rules.PROGRAM]),
        (JOIN_OK.replace("Acme Alerts: you are subscribed to ", ""), []),  # the list's program name is enough
        (JOIN_OK.replace(" 2 msgs/week.", ""), [rules.FREQUENCY]),
        (JOIN_OK.replace(" Msg&data rates may apply.", ""), [rules.RATES]),
        (JOIN_OK.replace("Reply HELP for help, STOP to cancel.", "Reply STOP to cancel."), [rules.HELP]),
        (JOIN_OK.replace("Reply HELP for help, STOP to cancel.", "Reply HELP for help."), [rules.STOP]),
        (JOIN_OK + " " + "w" * 60, ["one segment (2)"]),
    ],
)
def test_join_rules(text: str, missing: list[str]) -> None:
    assert rules.join_missing(text, programs=["Acme Alerts", "Acme News"], frequencies=["2 msgs/week"]) == missing


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (JOIN_OK, []),
        (JOIN_OK.replace("you are subscribed to", "welcome back to"), []),
        (JOIN_OK.replace("you are subscribed to", "you are re-subscribed to"), []),
        (JOIN_OK.replace("you are subscribed to", "you are unsubscribed from"), [rules.SUBSCRIBED]),
        (JOIN_OK.replace("you are subscribed to", "news from"), [rules.SUBSCRIBED]),
    ],
)
def test_opt_in_rules(text: str, missing: list[str]) -> None:
    assert rules.opt_in_missing(text, programs=["Acme Alerts", "Acme News"], frequencies=["2 msgs/week"]) == missing


@pytest.mark.parametrize(
    "text",
    ["a" * 160, "a" * 161, "€" * 80, "€" * 81, "✓" * 70, "✓" * 71, "✓" * 134, "✓" * 135, "Olá", "Café à €"],
)
def test_segments_agree_with_the_segmenter(text: str) -> None:
    assert rules.segments(text) == len(segment_text(text, ref=0, max_segments=255).segments)


def test_segment_boundaries() -> None:
    # GSM-7: 160 in one, then 153 per part; € is an extension character (2 septets); UCS-2: 70, then 67.
    assert [rules.segments(t) for t in ("a" * 160, "a" * 161, "€" * 80, "€" * 81, "✓" * 70, "✓" * 71)] == [
        1, 2, 1, 2, 1, 2,
    ]


def test_check_lines() -> None:
    assert Check("12345", "HELP reply").line() == "PASS  12345  HELP reply"
    failed = Check("12345", "HELP reply", (rules.FREQUENCY, rules.RATES))
    assert not failed.passed
    assert failed.line() == "FAIL  12345  HELP reply  frequency; Msg&data rates may apply"


def test_audit_settings_keep_keywords_and_reach_only_the_simulator() -> None:
    settings = load_settings(EXAMPLE)
    private = audit_settings(settings, dsn="postgresql://postgres@127.0.0.1:5999/postgres", sim_port=40000)
    assert private.keywords == settings.keywords and private.inbound == settings.inbound
    assert list(private.smsc) == ["audit_sim"]
    assert (private.smsc["audit_sim"].host, private.smsc["audit_sim"].port) == ("127.0.0.1", 40000)
    assert private.route == [] and private.webhook == {} and not private.metrics.enabled
    assert private.database.resolved_url() == "postgresql://postgres@127.0.0.1:5999/postgres"
    assert private.dispatcher.max_segments == settings.dispatcher.max_segments
    assert not private.dispatcher.quiet_hours


# -- the command, end to end ------------------------------------------------------------------------------

@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket standing in for the carrier (and the production database): nothing may connect."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def connections(sock: socket.socket) -> int:
    """Connections the kernel accepted on ``sock`` (they wait in its backlog until accept)."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def smsgw_audit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", *args],
        capture_output=True, text=True, timeout=60, env=environment, cwd=ROOT, check=False,
    )


def test_example_config_passes_and_no_carrier_is_dialled(trap: socket.socket) -> None:
    port = str(trap.getsockname()[1])
    # Even with the environment pointing every SMSC and the database somewhere real, the audit goes nowhere.
    env = {
        "SMSGW_SMSC__CARRIER_A__HOST": "127.0.0.1", "SMSGW_SMSC__CARRIER_A__PORT": port,
        "SMSGW_SMSC__CARRIER_B__HOST": "127.0.0.1", "SMSGW_SMSC__CARRIER_B__PORT": port,
        "SMSGW_DATABASE__URL": f"postgresql://smsgw@127.0.0.1:{port}/smsgw",
    }
    result = smsgw_audit("--config", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checks, summary = lines[:-1], lines[-1]
    assert checks and all(line.startswith("PASS  12345  ") for line in checks), result.stdout
    names = [line.split("  ", 2)[2] for line in checks]
    assert names == [
        "HELP reply", "STOP reply", "marketing after STOP refused", "transactional after STOP refused",
        "HELP after STOP answered", "START reply", "START restores delivery", "UNSTOP reply",
        "join NEWS (news) reply",
    ]
    assert summary == f"{len(checks)} checks, {len(checks)} passed, 0 failed"
    assert connections(trap) == 0


def test_help_without_frequency_fails(tmp_path: Path, trap: socket.socket) -> None:
    port = str(trap.getsockname()[1])
    text = EXAMPLE.read_text()
    # The SMSC hosts in the file itself point at the trap this time.
    text = text.replace('"smpp.carrier-a.example"', '"127.0.0.1"').replace('"smpp.carrier-b.example"', '"127.0.0.1"')
    text = text.replace("port = 2775", f"port = {port}")
    text += (
        '\n[keywords."12345".templates]\n'
        'help = "{program}: help at {contact}. Msg&data rates may apply. Reply STOP to cancel."\n'
        # A second short code whose HELP has everything but takes two SMS (its parts are joined at the SMSC).
        '\n[keywords."67890"]\nprogram = "Acme Two"\ncontact = "help@acme.example"\nfrequency = "1 msg/week"\n'
        '[keywords."67890".templates]\n'
        f'help = "{{program}}: help at {{contact}}. Msg&data rates may apply. {{frequency}}. Reply STOP to cancel. '
        f'{"Padding. " * 10}"\n'
        # Not audited: only the short codes named with --short-code are.
        '\n[keywords."11111"]\nprogram = "Other"\ncontact = "nobody"\nfrequency = "often"\n'
    )
    config = tmp_path / "gw.toml"
    config.write_text(text)
    assert load_settings(config).smsc["carrier_a"].port == int(port)

    result = smsgw_audit("--config", str(config), "--short-code", "12345", "--short-code", "67890", "--show-replies")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  12345  HELP reply  frequency\n" in result.stdout
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL  12345  HELP reply  frequency", "FAIL  67890  HELP reply  one segment (2)"]
    assert "PASS  12345  HELP after STOP answered" in result.stdout
    assert "PASS  67890  START restores delivery" in result.stdout
    assert "  11111  " not in result.stdout
    assert "reply: 'Acme Alerts: help at help@acme.example or 1-800-555-0100. Msg&data" in result.stdout
    assert f"Reply STOP to cancel. {'Padding. ' * 10}'" in result.stdout  # both parts of the long reply, joined
    assert result.stdout.splitlines()[-1].endswith(" passed, 2 failed")
    assert connections(trap) == 0


def test_unknown_short_code_is_a_usage_error() -> None:
    result = smsgw_audit("--config", str(EXAMPLE), "--short-code", "99999")
    assert result.returncode == 2
    assert '[keywords."99999"]' in result.stderr
