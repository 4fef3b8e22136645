"""The daemon as ops run it: `smsgw run` in its own process (SIGTERM),
the config loader, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from gw import counts, enqueue, running_gateway, settings_for, wait_status

from gateway.settings import ConfigError, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator

SMSGW = str(Path(sys.executable).with_name("smsgw"))



def _write_config(path: Path, dsn: str, sim_port: int, *, tps: float = 0, metrics_port: int = 0) -> Path:
    path.write_text(
        f'log_level = "INFO"\n[database]\nurl = "{dsn}"\n'
        f"[metrics]\nenabled = {'true' if metrics_port else 'false'}\nport = {metrics_port}\n"
        "[dispatcher]\nflush_interval = 0.01\npoll_interval = 0.2\nshutdown_timeout = 5\n"
        f'[smsc.sim]\nport = {sim_port}\nsystem_id = "smsgw"\ntps = {tps}\nwindow = 20\n'
    )
    return path


async def test_sigterm_mid_run_leaves_no_row_claimed(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        await enqueue(db_pool, 3000)
        config = _write_config(tmp_path / "gw.toml", db_dsn, sim.port, tps=400)
        env = {**os.environ, "SMSGW_SMSC__SIM__PASSWORD": "secret"}
        proc = subprocess.Popen(  # noqa: ASYNC220 - the daemon under test runs beside the loop
            [SMSGW, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            c = await wait_status(db_pool, "delivered", 200, timeout=30)
            assert c.get("delivered", 0) >= 200, c
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert code == 0, stderr[-2000:]
        assert await sim.wait_for(lambda: sim.stats.unbinds >= 1, timeout=5)
    c = await counts(db_pool)
    assert "claimed" not in c and sum(c.values()) == 3000
    assert c.get("queued", 0) > 0  # stopped mid-run
    assert await db_pool.fetchval("SELECT count(*) FROM outbound_message WHERE claimed_by IS NOT NULL") == 0
    # The configured SMPP password is "secret" (SMSGW_SMSC__SIM__PASSWORD): it must not appear, nor any password.
    assert "secret" not in stderr and "password" not in stderr.lower(), stderr[-2000:]


def test_bad_config_fails_with_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[smsc.a]\nport = "not-a-port"\nsystem_id = "x"\npassword = "p"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith("config error: smsc.a.port:")
    proc = subprocess.run([SMSGW, "run", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [str(err.value)]


def test_environment_overrides_the_file_and_secrets_stay_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[database]\nurl = "postgresql://file/db"\n[smsc.carrier]\nsystem_id = "x"\nwindow = 5\n')
    monkeypatch.setenv("SMSGW_SMSC__CARRIER__PASSWORD", "s3cret")
    monkeypatch.setenv("SMSGW_SMSC__CARRIER__WINDOW", "50")
    settings = load_settings(path)
    carrier = settings.smsc["carrier"]
    assert carrier.window == 50 and carrier.resolved_password() == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_password_longer_than_smpp_allows_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[smsc.a]\nsystem_id = "x"\npassword = "123456789"\n')
    with pytest.raises(ConfigError, match="at most 8"):
        load_settings(path)


async def test_metrics_endpoint_serves_the_basic_set(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        settings = settings_for(db_dsn, sim)
        settings = settings.model_copy(
            update={"metrics": settings.metrics.model_copy(update={"enabled": True, "port": 0})}
        )
        await enqueue(db_pool, 10)
        async with running_gateway(settings) as gw:
            await wait_status(db_pool, "delivered", 10, timeout=20)
            await asyncio.sleep(0.5)  # one maintenance pass refreshes the queue depth gauge
            url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for needle in (
        'smsgw_submitted_total{smsc="sim"}',
        'smsgw_receipts_total{smsc="sim",stat="DELIVRD"}',
        'smsgw_bind_up{bind="sim-0",smsc="sim"} 1.0',
        'smsgw_queue_depth{status="queued"} 0.0',
        "smsgw_submit_rtt_seconds_bucket",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("name", ["gateway.example.toml", "local-simulator.toml"])
def test_example_configs_load(name: str) -> None:
    settings = load_settings(Path(__file__).resolve().parent.parent / "config" / name)
    assert settings.smsc


async def test_broadcast_cli_is_idempotent(db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path) -> None:
    await db_pool.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ('12345', 'news', 'N')")
    await db_pool.execute(
        "INSERT INTO subscription (short_code, list_name, msisdn, status) SELECT '12345', 'news',"
        " (15550001000 + g)::text, 'active' FROM generate_series(1, 50) g"
    )
    await db_pool.execute("SELECT smsgw_opt_out('12345', '15550001001')")
    config = tmp_path / "gw.toml"
    config.write_text(f'[database]\nurl = "{db_dsn}"\n')
    args = [
        SMSGW,
        "broadcast",
        "--config",
        str(config),
        "--short-code",
        "12345",
        "--list",
        "news",
        "--body",
        "News!",
        "--campaign",
        "c1",
    ]
    first = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60)
    second = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "enqueued 49 messages" in first.stdout, first.stderr
    assert "enqueued 0 messages" in second.stdout
