"""Secrets never leave the process: not in logs (their text nor their records' extra fields), metrics, the status
page, exceptions, nor `smsgw check-config` / `smsgw run` / `smsgw migrate` / `smsgw status` output.

A private Postgres cluster with password (SCRAM) authentication, so that the database password is a real one and
a wrong one really fails; the daemon runs as a LOGIN member of the least-privileged gateway role. Every secret is
a distinctive string, and each check looks for exactly the strings that were configured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from gw import running_gateway
from pg import connection, create_database

from gateway.db.embedded import EmbeddedPostgres, free_port
from gateway.db.migrate import DEFAULT_ROLES, migrate
from gateway.logs import JsonFormatter
from gateway.settings import ConfigError, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator

SMSGW = str(Path(sys.executable).with_name("smsgw"))

SMPP_SECRET = "Qv7Lm2Zx"  # the account's password (SMPP: 8 characters at most)
SMPP_WRONG = "Wr0ngPw9"  # the password of a second account, which the SMSC refuses
DB_SECRET = "Db-S3cr3t-Kq8Vw2"  # the gateway login's database password
DB_WRONG = "BadDb-Pw-3Nm6"  # a wrong database password
HOOK_PASSWORD = "HookPw-7Yt3"  # credentials in a webhook URL ...
HOOK_TOKEN = "TokVal-5Rz9"  # ... and a token in its query
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"signing-key-8Jf3-unique!").decode()
SECRETS = (SMPP_SECRET, SMPP_WRONG, DB_SECRET, DB_WRONG, HOOK_PASSWORD, HOOK_TOKEN, WEBHOOK_SECRET,
           WEBHOOK_SECRET.removeprefix("whsec_"))

LOGIN = "smsgw_secret_login"
DB = "smsgw_secrets"
SC = "12345"


def leaks(text: str) -> list[str]:
    """The secrets that occur in `text` (the checks below assert this is empty, naming what leaked)."""
    return [secret for secret in SECRETS if secret in text]


@pytest.fixture(scope="module")
def password_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A cluster of its own that asks every role but the superuser for a password."""
    base = tmp_path_factory.mktemp("pg_password")
    pg = EmbeddedPostgres(base / "data", log_file=base / "postgres.log", shared_buffers="32MB")
    pg.start()
    try:
        # In place: the file belongs to the server's user. The superuser stays trusted (the tests' admin).
        (pg.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        yield pg
    finally:
        pg.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def owner_dsn(password_cluster: EmbeddedPostgres) -> str:
    """A migrated database (as its owner, the superuser here) and a LOGIN role with DB_SECRET in the gateway
    role; returns the owner's DSN."""
    admin = password_cluster.dsn("postgres")
    async with connection(admin) as conn:
        await conn.execute("SELECT pg_reload_conf()")
    await create_database(admin, DB)
    async with connection(password_cluster.dsn(DB)) as conn:
        await migrate(conn)
        # A password cannot be a bind parameter of CREATE ROLE; the value is ours and holds no quote.
        await conn.execute(
            f"CREATE ROLE {LOGIN} LOGIN PASSWORD '{DB_SECRET}' IN ROLE {DEFAULT_ROLES['gateway']}"
        )
    return password_cluster.dsn(DB)


def gateway_dsn(pg: EmbeddedPostgres, password: str = DB_SECRET) -> str:
    return f"postgresql://{LOGIN}:{password}@127.0.0.1:{pg.port}/{DB}"


async def test_the_cluster_really_checks_the_password(password_cluster: EmbeddedPostgres, owner_dsn: str) -> None:
    """Without this, a wrong password would be accepted and the checks below would prove less."""
    async with connection(gateway_dsn(password_cluster)) as conn:
        assert await conn.fetchval("SELECT current_user") == LOGIN
    with pytest.raises(asyncpg.InvalidPasswordError) as err:
        await asyncpg.connect(gateway_dsn(password_cluster, DB_WRONG), timeout=10)
    assert leaks(str(err.value)) == [] and leaks(repr(err.value)) == []


def _config(path: Path, sim_port: int, metrics_port: int, hook_port: int, wrong_password_file: Path) -> Path:
    """A settings file with the secrets in every form the settings take them: in the file, in a password file,
    in a webhook URL; the database URL comes from the environment."""
    path.write_text(
        'log_level = "DEBUG"\nlog_format = "json"\n'
        f"[metrics]\nenabled = true\nport = {metrics_port}\n"
        "[dispatcher]\nflush_interval = 0.01\npoll_interval = 0.2\nmaintenance_interval = 0.2\nshutdown_timeout = 5\n"
        "quiet_hours = false\n"
        "[inbound]\npoll_interval = 0.2\n"
        f'[smsc.good]\nport = {sim_port}\nsystem_id = "smsgw"\npassword = "{SMPP_SECRET}"\nwindow = 20\n'
        "reconnect_min = 0.05\nreconnect_max = 0.2\n"
        f'[smsc.bad]\nport = {sim_port}\nsystem_id = "other"\npassword_file = "{wrong_password_file}"\n'
        "reconnect_min = 0.05\nreconnect_max = 0.2\n"
        '[[route]]\nsmsc = ["good"]\n'
        f'[keywords."{SC}"]\nprogram = "Acme Alerts"\ncontact = "help@acme.example"\nfrequency = "4/week"\n'
        f'[webhook.crm]\nurl = "http://hook:{HOOK_PASSWORD}@127.0.0.1:{hook_port}/hook?token={HOOK_TOKEN}"\n'
        f'secret = "{WEBHOOK_SECRET}"\ntimeout = 2\n'
        "[webhooks]\npoll_interval = 0.2\nretry_base = 0.1\nretry_max = 0.5\n"
    )
    return path


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()
    except OSError:
        return ""


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMSGW, *args], env=env, capture_output=True, text=True, timeout=60)


async def _wait(probe: Any, timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = await probe()
    while not value and loop.time() < deadline:
        await asyncio.sleep(0.1)
        value = await probe()
    return value


async def test_daemon_and_cli_output_carries_no_secret(
    password_cluster: EmbeddedPostgres, owner_dsn: str, tmp_path: Path
) -> None:
    wrong_file = tmp_path / "bad_password"
    wrong_file.write_text(SMPP_WRONG + "\n")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SMSGW_")}
    env = {**base_env, "SMSGW_DATABASE__URL": gateway_dsn(password_cluster)}
    metrics_port = free_port()
    pages: dict[str, str] = {}
    accounts = {"smsgw": SMPP_SECRET, "other": "nOtThat1"}
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, accounts=accounts)) as sim:
        config = _config(tmp_path / "gw.toml", sim.port, metrics_port, free_port(), wrong_file)
        proc = subprocess.Popen(  # noqa: ASYNC220 - the daemon under test runs beside the loop
            [SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            async with connection(owner_dsn) as owner:
                await owner.executemany(
                    "INSERT INTO outbound_message (source, destination, body) VALUES ($1, $2, 'hello')",
                    [(SC, f"+1202555{i:04d}") for i in range(20)],
                )
                delivered = await _wait(lambda: owner.fetchval(
                    "SELECT count(*) = 20 FROM outbound_message WHERE status = 'delivered'"), timeout=30)
                assert delivered, await owner.fetch("SELECT status, reason FROM outbound_message")
                delivery = await sim.inject_mo("+12025550177", SC, "STOP")
                assert await sim.wait_for(lambda: delivery.acked, timeout=10)
                assert await _wait(lambda: owner.fetchval("SELECT count(*) = 1 FROM opt_out"), timeout=10)
                # The refused account and the unreachable webhook have failed a few times each by now.
                assert await sim.wait_for(lambda: sim.stats.bind_failures >= 2, timeout=10)
                assert await _wait(lambda: owner.fetchval(
                    "SELECT count(*) > 0 FROM webhook_delivery WHERE last_error IS NOT NULL"), timeout=10)
            for path in ("/metrics", "/", "/readyz", "/healthz"):
                pages[path] = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}{path}")
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, stderr[-3000:]
    events = [json.loads(line) for line in stderr.splitlines()]  # every line one JSON event, extras included
    assert any(e["msg"] == "bind failed" and e.get("smsc") == "bad" for e in events), stderr[-3000:]
    assert "smsgw_bind_up" in pages["/metrics"] and "good" in pages["/"], pages
    assert leaks(stdout) == [] and leaks(stderr) == []
    for path, text in pages.items():
        assert leaks(text) == [], path

    bad_env = {**base_env, "SMSGW_DATABASE__URL": gateway_dsn(password_cluster, DB_WRONG)}
    outputs = {
        "check-config": _run(["check-config", "--config", str(config)], env),
        "check-config --json": _run(["check-config", "--config", str(config), "--json"], env),
        "check-config, wrong db password": _run(["check-config", "--config", str(config)], bad_env),
        "run, wrong db password": _run(["run", "--config", str(config)], bad_env),
        "migrate, wrong db password": _run(["migrate", "--config", str(config)], bad_env),
        "status, wrong db password": _run(["status", "--config", str(config)], bad_env),
        # An unescaped '/' in the password: asyncpg would read the rest as the port and quote it in its error.
        "run, malformed db url": _run(["run", "--config", str(config)], {
            **base_env, "SMSGW_DATABASE__URL": f"postgresql://{LOGIN}:{DB_SECRET}/x@127.0.0.1/{DB}"}),
    }
    for name, result in outputs.items():
        assert leaks(result.stdout + result.stderr) == [], (name, result.stdout[-2000:], result.stderr[-2000:])
    assert outputs["check-config"].returncode == 0, outputs["check-config"].stderr
    settings = json.loads(outputs["check-config --json"].stdout)["settings"]
    assert settings["smsc"]["good"]["password"] == "********"
    assert settings["webhook"]["crm"]["url"].startswith("http://hook:********@127.0.0.1:")
    assert settings["webhook"]["crm"]["url"].endswith("/hook?token=********")
    assert settings["database"]["url"].startswith(f"postgresql://{LOGIN}:********@127.0.0.1:")
    run = outputs["run, wrong db password"]
    assert run.returncode == 1 and "password authentication failed" in run.stderr, run.stderr[-2000:]
    assert outputs["migrate, wrong db password"].returncode != 0
    assert outputs["status, wrong db password"].returncode == 1
    malformed = outputs["run, malformed db url"]
    assert malformed.returncode == 2 and "config error: database.url:" in malformed.stderr, malformed.stderr


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_log_records_and_their_extra_fields_carry_no_secret(
    password_cluster: EmbeddedPostgres, owner_dsn: str, tmp_path: Path
) -> None:
    """In process, every record at DEBUG as the code made it (before the formatter's masking): message, args,
    every extra field, the exception and its chain."""
    wrong_file = tmp_path / "bad_password"
    wrong_file.write_text(SMPP_WRONG)
    capture = _Capture()
    root = logging.getLogger()
    saved = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        async with SmscSimulator(SimulatorConfig(receipt_delay=0.01, accounts={"smsgw": SMPP_SECRET})) as sim:
            good = {"port": sim.port, "system_id": "smsgw", "password": SMPP_SECRET, "reconnect_min": 0.05,
                    "reconnect_max": 0.2}
            settings = load_settings(
                None,
                database={"url": gateway_dsn(password_cluster)},
                smsc={"good": good, "bad": {**good, "system_id": "other", "password": None,
                                            "password_file": str(wrong_file)}},
                route=[{"smsc": ["good"]}],
                dispatcher={"flush_interval": 0.01, "poll_interval": 0.2, "maintenance_interval": 0.2,
                            "shutdown_timeout": 5},
                webhook={"crm": {"url": f"http://hook:{HOOK_PASSWORD}@127.0.0.1:{free_port()}/h?token={HOOK_TOKEN}",
                                 "secret": WEBHOOK_SECRET, "timeout": 2}},
                webhooks={"poll_interval": 0.2, "retry_base": 0.1, "retry_max": 0.5},
                metrics={"enabled": False},
            )
            for text in (repr(settings), str(settings), repr(settings.smsc["bad"]), repr(settings.webhook["crm"])):
                assert leaks(text) == []
            async with connection(owner_dsn) as owner:
                row = await owner.fetchval(
                    "INSERT INTO outbound_message (source, destination, body) VALUES ($1, '+12025550101', 'hi')"
                    " RETURNING id", SC,
                )
                async with running_gateway(settings):
                    assert await _wait(lambda: owner.fetchval(
                        "SELECT status = 'delivered' FROM outbound_message WHERE id = $1", row), timeout=20)
                    assert await sim.wait_for(lambda: sim.stats.bind_failures >= 2, timeout=10)
                    assert await _wait(lambda: owner.fetchval(
                        "SELECT count(*) > 0 FROM webhook_delivery WHERE last_error IS NOT NULL"), timeout=10)
                # What the daemon wrote to the database for people to read (status page, `smsgw status`).
                stored = await owner.fetch(
                    "SELECT last_error AS text FROM gateway_instance UNION ALL"
                    " SELECT last_error FROM webhook_delivery UNION ALL SELECT detail FROM outbound_message"
                )
        # A wrong database password at start: the exception the daemon would log.
        with pytest.raises(asyncpg.InvalidPasswordError) as err:
            async with running_gateway(settings.model_copy(update={"database": load_settings(
                None, database={"url": gateway_dsn(password_cluster, DB_WRONG)}).database})):
                pass
        logging.getLogger("gateway").critical("gateway failed", exc_info=err.value)
    finally:
        root.removeHandler(capture)
        root.setLevel(saved)
    assert any(r.getMessage() == "bind failed" and getattr(r, "smsc", None) == "bad" for r in capture.records)
    formatter = JsonFormatter()
    for record in capture.records:
        raw = f"{record.getMessage()} {record.args!r} {vars(record)!r}"
        if record.exc_info:
            raw += formatter.formatException(record.exc_info)
            exc = record.exc_info[1]
            while exc is not None:  # the chain: causes and contexts
                raw += f" {exc!r} {exc!s} {getattr(exc, '__dict__', {})!r}"
                exc = exc.__cause__ or exc.__context__
        assert leaks(raw) == [], raw[:2000]
        assert leaks(formatter.format(record)) == []
    assert leaks(" ".join(str(r["text"]) for r in stored)) == []


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://gw:{DB_SECRET}/x@db.example/smsgw",  # an unescaped '/' in the password
        f"postgresql://gw:ab#{DB_SECRET}@db.example/smsgw",  # '#'
        f"postgresql://gw:{DB_SECRET}?@db.example/smsgw",  # '?'
        f"mysql://gw:{DB_SECRET}@db.example/smsgw",
    ],
)
def test_a_malformed_database_url_is_refused_without_quoting_it(url: str, tmp_path: Path) -> None:
    """asyncpg would split such a URL so that a piece of the password becomes the port or the host, and its
    error quotes that piece: the settings refuse the URL first, with a message that quotes nothing."""
    with pytest.raises(ConfigError) as err:
        load_settings(None, database={"url": url})
    assert str(err.value).startswith("config error: database.url:") and leaks(str(err.value)) == []
    url_file = tmp_path / "url"
    url_file.write_text(url)
    settings = load_settings(None, database={"url_file": str(url_file)})
    with pytest.raises(ConfigError) as err:
        settings.database.resolved_url()
    assert str(err.value).startswith("database.url_file:") and leaks(str(err.value)) == []


@pytest.mark.parametrize(
    "text",
    [
        f"POST http://hook:{HOOK_PASSWORD}@crm.example/h?token={HOOK_TOKEN} failed",
        f"Cannot connect to https://crm.example/hook?x=1&api_token={HOOK_TOKEN}",
        f"cannot sign with {WEBHOOK_SECRET}: bad key",
        f"connect to postgresql://gw:{DB_SECRET}@db.example:5432/smsgw failed",
        f"host=db password={DB_WRONG} dbname=smsgw",
    ],
)
def test_the_formatter_masks_secrets_quoted_in_any_text(text: str) -> None:
    """The safety net for errors that quote a URL or a secret (aiohttp, asyncpg, our own): the message, a string
    field and a traceback are all masked."""
    try:
        raise RuntimeError(text)
    except RuntimeError:
        record = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, text, None, sys.exc_info())
    record.error = text
    line = JsonFormatter().format(record)
    assert leaks(line) == [], line
    assert json.loads(line)["msg"] != text


def test_the_http_port_binds_to_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """/metrics and the status page: 127.0.0.1 by default, in the example config and in the image (whose only
    way to 0.0.0.0 is the explicit SMSGW_METRICS__HOST)."""
    root = Path(__file__).resolve().parent.parent
    monkeypatch.delenv("SMSGW_METRICS__HOST", raising=False)
    assert load_settings(None).metrics.host == "127.0.0.1"
    for name in ("gateway.example.toml", "local-simulator.toml"):
        assert load_settings(root / "config" / name).metrics.host == "127.0.0.1", name
    dockerfile = (root / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.lstrip().startswith("#")]
    assert not any("0.0.0.0" in line for line in instructions), instructions
    assert "COPY config/gateway.example.toml /etc/smsgw/gateway.toml" in dockerfile
    monkeypatch.setenv("SMSGW_METRICS__HOST", "0.0.0.0")
    assert load_settings(root / "config" / "gateway.example.toml").metrics.host == "0.0.0.0"
