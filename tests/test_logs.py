"""Logs: JSON lines by default, text with a flag; phone numbers masked unless `log_numbers`; secrets never.

A table of records -> expected output for the formatter, then the daemon itself (`smsgw run` as a subprocess,
and in-process with every record captured) configured with distinctive secrets that must appear nowhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for, wait_status

from gateway.db.embedded import free_port
from gateway.logs import JsonFormatter, TextFormatter, make_formatter, setup_logging
from gateway.settings import load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator

SMSGW = str(Path(sys.executable).with_name("smsgw"))

SMPP_SECRET = "Zq7xK9pW"  # SMPP allows 8 characters at most
DB_SECRET = "Hunter2-Vq8sLm3r"


def _record(msg: str, *args: object, level: int = logging.INFO, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"boom for {msg}")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("gateway.test", level, __file__, 1, msg, args or None, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


# (record, expected fields of the JSON line (a subset), strings that must not appear anywhere in the line)
CASES: list[tuple[logging.LogRecord, dict[str, Any], list[str]]] = [
    # smsc / bind / row are plain fields, shown first
    (
        _record("bound", smsc="sim", bind="sim-0", smsc_system_id="smsgw"),
        {"msg": "bound", "smsc": "sim", "bind": "sim-0", "smsc_system_id": "smsgw", "level": "info"},
        [],
    ),
    (_record("row rejected", row=123456789, smsc="sim"), {"row": 123456789}, []),
    # number-bearing fields: last 4 digits kept, '+' kept
    (
        _record("MO queued", source="+12025550123", destination="12345"),
        {"source": "+*******0123", "destination": "12345"},  # a short code stays readable
        ["12025550123"],
    ),
    (_record("x", msisdn="447700900123"), {"msisdn": "********0123"}, ["447700900123"]),
    (_record("x", number=12025550199), {"number": "*******0199"}, ["12025550199"]),
    (_record("x", to=["+12025550111", "+12025550112"]), {"to": ["+*******0111", "+*******0112"]}, ["2025550111"]),
    (_record("x", sender="ACME"), {"sender": "ACME"}, []),
    # numbers inside the message text and inside other fields' text
    (
        _record("reply to +12025550123 queued", row=42),
        {"msg": "reply to +*******0123 queued", "row": 42},
        ["12025550123"],
    ),
    (_record("opt-out from %s", "+447700900456"), {"msg": "opt-out from +********0456"}, ["447700900456"]),
    (
        _record("refused", error='duplicate key: Key (msisdn)=(12025550177) already exists'),
        {"error": "duplicate key: Key (msisdn)=(*******0177) already exists"},
        ["12025550177"],
    ),
    (
        _record("pdu", pdu="DeliverSm(source_addr='12025550188', destination_addr='12345', sequence_number=1234567)"),
        {"pdu": "DeliverSm(source_addr='*******0188', destination_addr='12345', sequence_number=1234567)"},
        ["12025550188"],
    ),
    # message ids, counts, ports, timestamps: never masked
    (
        _record(
            "submitted 1500 rows, message id 1234567890abc, seq 12345678", message_id="12345678901", count=12345678
        ),
        {"msg": "submitted 1500 rows, message id 1234567890abc, seq 12345678", "message_id": "12345678901",
         "count": 12345678},
        [],
    ),
    (_record("url", url="http://127.0.0.1:9464/metrics"), {"url": "http://127.0.0.1:9464/metrics"}, []),
    (_record("took 2024-01-01T10:00:00+0000 +1s"), {"msg": "took 2024-01-01T10:00:00+0000 +1s"}, []),
    # secrets: password fields, URL credentials, password=... in text, in tracebacks too
    (_record("bind", password=SMPP_SECRET), {"password": "***"}, [SMPP_SECRET]),
    (_record("x", db_password="p", api_token="t"), {"db_password": "***", "api_token": "***"}, []),
    (
        _record("connect to postgresql://gw:" + DB_SECRET + "@db.example:5432/smsgw failed"),
        {"msg": "connect to postgresql://gw:***@db.example:5432/smsgw failed"},
        [DB_SECRET],
    ),
    (_record("x", dsn=f"host=db password={DB_SECRET} dbname=x"), {"dsn": "host=db password=*** dbname=x"}, [DB_SECRET]),
    (_record("x", error=f"host=db password={DB_SECRET} dbname=x"), {"error": "host=db password=*** dbname=x"}, []),
    (_record(f"at postgresql://u:{DB_SECRET}@h/d", exc=True, level=logging.ERROR), {"level": "error"}, [DB_SECRET]),
    # a field cannot overwrite the envelope
    (_record("real message", level=logging.WARNING, logger="other"), {"msg": "real message", "logger": "gateway.test"},
     []),
]


@pytest.mark.parametrize(("record", "expected", "absent"), CASES, ids=[c[0].getMessage()[:30] for c in CASES])
def test_json_line_per_record(record: logging.LogRecord, expected: dict[str, Any], absent: list[str]) -> None:
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one event per line, tracebacks included
    out = json.loads(line)
    assert {k: out.get(k) for k in expected} == expected
    assert set(out) >= {"ts", "level", "logger", "msg"}
    for needle in absent:
        assert needle not in line
    text = TextFormatter().format(record)
    for needle in absent:
        assert needle not in text


def test_field_order_puts_smsc_bind_row_first() -> None:
    out = json.loads(JsonFormatter().format(_record("x", error="e", row=7, bind="sim-1", smsc="sim")))
    assert list(out)[4:8] == ["smsc", "bind", "row", "error"]


def test_log_numbers_true_keeps_numbers_but_not_secrets() -> None:
    record = _record(
        "reply to +12025550123", source="+12025550123", error=f"postgresql://u:{DB_SECRET}@h/d", password="x"
    )
    out = json.loads(make_formatter("json", log_numbers=True).format(record))
    assert out["msg"] == "reply to +12025550123" and out["source"] == "+12025550123"
    assert out["error"] == "postgresql://u:***@h/d" and out["password"] == "***"


def test_text_format_is_one_readable_line() -> None:
    line = TextFormatter().format(
        _record("bind lost", level=logging.WARNING, smsc="sim", bind="sim-0", reason="connection reset by peer")
    )
    assert line.endswith('WARNING test: bind lost smsc=sim bind=sim-0 reason="connection reset by peer"'), line


def test_setup_logging_installs_the_masking_formatter(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        logging.getLogger("gateway.x").info("MO from +12025550123", extra={"msisdn": "12025550123", "smsc": "a"})
        setup_logging("INFO", "text", log_numbers=True)
        logging.getLogger("gateway.x").info("MO from +12025550123", extra={"msisdn": "12025550123"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = capsys.readouterr().err.strip().splitlines()
    assert json.loads(first)["msisdn"] == "*******0123" and "12025550123" not in first
    assert "MO from +12025550123 msisdn=12025550123" in second


def test_log_numbers_setting_defaults_to_false() -> None:
    assert load_settings(None).log_numbers is False
    assert load_settings(None, log_numbers=True).log_numbers is True


# -- the daemon ---------------------------------------------------------------------------------------------


def _secret_dsn(dsn: str) -> str:
    """The test cluster trusts loopback connections: a password in the URL is accepted and ignored."""
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{DB_SECRET}@", 1)


def _config(path: Path, dsn: str, sim_port: int) -> Path:
    path.write_text(
        f'log_level = "DEBUG"\n[database]\nurl = "{dsn}"\n[metrics]\nenabled = false\n'
        "[dispatcher]\nflush_interval = 0.01\npoll_interval = 0.2\nshutdown_timeout = 5\n"
        f'[smsc.sim]\nport = {sim_port}\nsystem_id = "smsgw"\npassword = "{SMPP_SECRET}"\nwindow = 20\n'
        "reconnect_min = 0.05\nreconnect_max = 0.2\n"
    )
    return path


async def test_daemon_logs_never_show_secrets_or_numbers(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    assert "postgresql://postgres@" in db_dsn
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_")}
    # First the SMSC refuses the password (bind failures are logged), then accepts it: a run with traffic.
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, accounts={"smsgw": "other"})) as sim:
        await enqueue(db_pool, 50)
        config = _config(tmp_path / "gw.toml", _secret_dsn(db_dsn), sim.port)
        proc = subprocess.Popen(  # noqa: ASYNC220 - the daemon under test runs beside the loop
            [SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            assert await sim.wait_for(lambda: sim.stats.bind_failures >= 2, timeout=20)
            sim.config.accounts["smsgw"] = SMPP_SECRET
            c = await wait_status(db_pool, "delivered", 50, timeout=30)
            assert c.get("delivered", 0) == 50, c
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, stderr[-3000:]
    lines = stderr.strip().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    assert any(e["msg"] == "bind failed" and e.get("smsc") == "sim" and e.get("bind") for e in events), lines[:20]
    assert any(e["msg"] == "bound" and e.get("smsc") == "sim" for e in events)
    for secret in (SMPP_SECRET, DB_SECRET):
        assert secret not in stderr
    for i in range(50):
        assert f"202555{i:04d}" not in stderr  # destinations +1202555xxxx never in full

    # The database unreachable at start: one JSON event, the URL's password masked.
    dead = _secret_dsn(f"postgresql://postgres@127.0.0.1:{free_port()}/nope")
    config = _config(tmp_path / "dead.toml", dead, 9)
    proc2 = await asyncio.to_thread(
        subprocess.run, [SMSGW, "run", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc2.returncode == 1, proc2.stderr[-2000:]
    assert DB_SECRET not in proc2.stderr and SMPP_SECRET not in proc2.stderr
    last = json.loads(proc2.stderr.strip().splitlines()[-1])
    assert last["level"] == "critical" and last["msg"] == "gateway failed" and "exc" in last

    # --log-format text: human-readable lines, same redaction.
    proc3 = await asyncio.to_thread(
        subprocess.run, [SMSGW, "run", "--config", str(config), "--log-format", "text"], env=env,
        capture_output=True, text=True, timeout=60,
    )
    assert proc3.returncode == 1
    assert "CRITICAL gateway: gateway failed" in proc3.stderr and DB_SECRET not in proc3.stderr
    assert not proc3.stderr.lstrip().startswith("{")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_log_records_carry_no_secret_in_any_field(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    """Not only the formatted text: no record's message, args or extra fields hold a secret (the redaction in
    the formatter is a safety net, not the reason secrets stay out)."""
    capture = _Capture()
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, accounts={"smsgw": "other"})) as sim:
            settings = settings_for(_secret_dsn(db_dsn), sim, password=SMPP_SECRET)
            await enqueue(db_pool, 20)
            async with running_gateway(settings):
                assert await sim.wait_for(lambda: sim.stats.bind_failures >= 2, timeout=10)
                sim.config.accounts["smsgw"] = SMPP_SECRET
                c = await wait_status(db_pool, "delivered", 20, timeout=30)
                await sim.inject_mo("+12025550999", "12345", "STOP")
                await asyncio.sleep(0.5)
    finally:
        root.removeHandler(capture)
        root.setLevel(saved_level)
    assert c.get("delivered") == 20, c
    assert any(r.getMessage() == "bind failed" for r in capture.records)
    formatter = JsonFormatter()
    for record in capture.records:
        raw = repr(vars(record)) + record.getMessage()
        assert SMPP_SECRET not in raw and DB_SECRET not in raw, vars(record)
        line = formatter.format(record)
        assert "12025550999" not in line and "2025550999" not in line, line
