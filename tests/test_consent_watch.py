"""ConsentWatch: which admitted rows must have their consent looked up again before submit_sm (pure, no I/O)."""

from __future__ import annotations

import json

import pytest

from keywords.consent_watch import ConsentWatch, short_code_key

SC, NUMBER = "12345", "15550001111"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("12345", "12345"),
        ("+12345", "12345"),
        (" +12345 ", "12345"),
        ("+ 12345", "12345"),
        ("++12345", "12345"),
        ("\t12345\n", "12345"),
        ("ACME", "ACME"),  # alphanumeric senders keep their case: they are not numbers
        ("", ""),
    ],
)
def test_short_code_key(raw: str, key: str) -> None:
    assert short_code_key(raw) == key


def _payload(short_code: str = SC, msisdn: str = NUMBER) -> str:
    return json.dumps({"short_code": short_code, "msisdn": msisdn})


# (what happens, as (kind, argument, now)), then the question (short code, number, admitted_at), and the answer.
CASES = [
    ("nothing changed", [], (SC, NUMBER, 10.0), False),
    ("changed after admission", [("notify", _payload(), 11.0)], (SC, NUMBER, 10.0), True),
    ("changed at the admission instant", [("notify", _payload(), 10.0)], (SC, NUMBER, 10.0), True),
    ("changed before admission", [("notify", _payload(), 9.0)], (SC, NUMBER, 10.0), False),
    ("another number changed", [("notify", _payload(msisdn="15550002222"), 11.0)], (SC, NUMBER, 10.0), False),
    ("another short code changed", [("notify", _payload(short_code="54321"), 11.0)], (SC, NUMBER, 10.0), False),
    ("'+' on the short code in the payload", [("notify", _payload(short_code="+12345"), 11.0)], (SC, NUMBER, 10.0),
     True),
    ("'+' on the short code asked", [("notify", _payload(), 11.0)], ("+12345", NUMBER, 10.0), True),
    ("'+' on the number asked", [("notify", _payload(), 11.0)], (SC, "+" + NUMBER, 10.0), True),
    ("'+' on the number in the payload", [("notify", _payload(msisdn="+" + NUMBER), 11.0)], (SC, NUMBER, 10.0),
     True),
    ("gap after admission: anything may have changed", [("gap", None, 11.0)], ("99999", "15559999999", 10.0), True),
    ("gap before admission", [("gap", None, 9.0)], (SC, NUMBER, 10.0), False),
    ("empty payload is a gap", [("notify", "", 11.0)], (SC, NUMBER, 10.0), True),
    ("payload not JSON is a gap", [("notify", "stop", 11.0)], (SC, NUMBER, 10.0), True),
    ("payload without msisdn is a gap", [("notify", '{"short_code": "12345"}', 11.0)], ("1", "2", 10.0), True),
    ("payload that is a list is a gap", [("notify", "[]", 11.0)], ("1", "2", 10.0), True),
    ("payload null is a gap", [("notify", "null", 11.0)], ("1", "2", 10.0), True),
    ("old gap, new change elsewhere", [("gap", None, 5.0), ("notify", _payload(msisdn="1"), 11.0)],
     (SC, NUMBER, 10.0), False),
    ("listener down: every row rechecked", [("down", None, 5.0)], (SC, "1", 10.0), True),
    ("listener back up: rows admitted after are fine", [("down", None, 5.0), ("up", None, 8.0)], (SC, "1", 10.0),
     False),
    ("listener back up: rows admitted while down are rechecked", [("down", None, 5.0), ("up", None, 8.0)],
     (SC, "1", 6.0), True),
    ("pruned change is forgotten", [("notify", _payload(), 0.0), ("prune", None, 61.0)], (SC, NUMBER, -1.0), False),
    ("unpruned change is kept", [("notify", _payload(), 0.0), ("prune", None, 59.0)], (SC, NUMBER, -1.0), True),
    ("a later change survives the prune", [("notify", _payload(), 0.0), ("notify", _payload(), 30.0),
                                           ("prune", None, 61.0)], (SC, NUMBER, 20.0), True),
]


@pytest.mark.parametrize(("events", "question", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_must_recheck(
    events: list[tuple[str, str | None, float]], question: tuple[str, str, float], expected: bool
) -> None:
    watch = ConsentWatch(keep_seconds=60)
    watch.listener_up(-100.0)  # connected long before every event of the table
    for kind, argument, now in events:
        if kind == "notify":
            assert argument is not None
            watch.on_notify(argument, now)
        elif kind == "gap":
            watch.note_gap(now)
        elif kind == "down":
            watch.listener_down(now)
        elif kind == "up":
            watch.listener_up(now)
        else:
            watch.prune(now)
    assert watch.must_recheck(*question) is expected


def test_prune_bounds_memory() -> None:
    watch = ConsentWatch(keep_seconds=60)
    for i in range(1000):
        watch.note_change(SC, f"1555{i:07d}", float(i))
    assert len(watch) == 1000
    watch.prune(1000.0)
    assert len(watch) == 60  # only the changes at 940..999 are within 60 s of t=1000


def test_watch_starts_down_until_the_listener_connects() -> None:
    watch = ConsentWatch(keep_seconds=60)
    assert watch.down and watch.must_recheck(SC, NUMBER, 10.0)
    watch.listener_up(11.0)
    assert not watch.down and not watch.must_recheck(SC, NUMBER, 12.0)
