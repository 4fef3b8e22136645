"""`smsgw run --workers N`: one config split into N gateway processes, supervised (gateway/workers.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest
from gw import counts, enqueue, wait_status

from gateway.db.embedded import free_port
from gateway.settings import ConfigError, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.workers import share, worker_overrides

SMSGW = str(Path(sys.executable).with_name("smsgw"))


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [(4, 2, [2, 2]), (5, 2, [3, 2]), (3, 3, [1, 1, 1]), (7, 3, [3, 2, 2]), (1, 1, [1])],
)
def test_binds_are_split_evenly_and_add_up(total: int, count: int, expected: list[int]) -> None:
    assert [share(total, i, count) for i in range(count)] == expected


def _settings(binds: int, port: int = 9464) -> object:
    return load_settings(
        None,
        smsc={"a": {"system_id": "x", "password": "p", "binds": binds},
              "b": {"system_id": "y", "password": "q", "binds": binds + 1, "bind_mode": "pair", "receivers": 1}},
        metrics={"port": port},
        dispatcher={"instance": "gw1"},
    )


def test_worker_overrides_name_split_and_ports() -> None:
    settings = _settings(2)
    w0, w1 = (worker_overrides(settings, i, 2) for i in range(2))  # type: ignore[arg-type]
    assert w0 == {"SMSGW_DISPATCHER__INSTANCE": "gw1/w0", "SMSGW_SMSC__A__BINDS": "1", "SMSGW_SMSC__B__BINDS": "2",
                  "SMSGW_SMSC__B__RECEIVERS": "1", "SMSGW_METRICS__PORT": "9464"}
    assert w1 == {"SMSGW_DISPATCHER__INSTANCE": "gw1/w1", "SMSGW_SMSC__A__BINDS": "1", "SMSGW_SMSC__B__BINDS": "1",
                  "SMSGW_SMSC__B__RECEIVERS": "1", "SMSGW_METRICS__PORT": "9465"}


def test_fewer_binds_than_workers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"smsc\.a\.binds: 1 binds cannot be split between 2 workers"):
        worker_overrides(_settings(1), 0, 2)  # type: ignore[arg-type]


def _config(path: Path, dsn: str, sim_port: int) -> Path:
    path.write_text(
        f'log_level = "INFO"\n[database]\nurl = "{dsn}"\n'
        f"[metrics]\nenabled = true\nport = {free_port()}\n"
        '[dispatcher]\ninstance = "gwtest"\nflush_interval = 0.01\npoll_interval = 0.2\nshutdown_timeout = 5\n'
        "maintenance_interval = 0.5\nlease_seconds = 5\n"
        f'[smsc.sim]\nport = {sim_port}\nsystem_id = "smsgw"\nbinds = 2\nwindow = 20\nreconnect_min = 0.05\n'
    )
    return path


def _children(pid: int) -> list[int]:
    return sorted(p.pid for p in psutil.Process(pid).children() if p.status() != psutil.STATUS_ZOMBIE)


async def test_two_workers_share_the_work_survive_a_kill_and_stop_cleanly(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        await enqueue(db_pool, 2000)
        config = _config(tmp_path / "gw.toml", db_dsn, sim.port)
        env = {**os.environ, "SMSGW_SMSC__SIM__PASSWORD": "secret"}
        proc = subprocess.Popen(  # noqa: ASYNC220 - the daemon under test runs beside the loop
            [SMSGW, "run", "--config", str(config), "--workers", "2"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            c = await wait_status(db_pool, "delivered", 2000, timeout=60)
            assert c.get("delivered") == 2000, c
            # Two instances on the database, one per worker, and the SMSC sees the configured two binds.
            instances = {r["instance"] for r in await db_pool.fetch("SELECT instance FROM gateway_instance")}
            assert instances == {"gwtest/w0", "gwtest/w1"}
            assert sim.bound("smsgw") == 2
            # Rows went out through both workers' binds (one bind each).
            assert len({r.bind for r in sim.submits}) == 2

            # kill -9 one worker: the supervisor starts another; the new rows are delivered all the same.
            before = _children(proc.pid)
            assert len(before) == 2, before
            os.kill(before[0], signal.SIGKILL)
            await enqueue(db_pool, 500, start=5000)
            c = await wait_status(db_pool, "delivered", 2500, timeout=60)
            assert c.get("delivered") == 2500, c
            async with asyncio.timeout(30):
                while len(after := _children(proc.pid)) < 2 or before[0] in after:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            assert before[1] in after  # the other worker was left alone
            # The new worker is up (it beats under the same instance name) before the stop.
            beat = await db_pool.fetchval("SELECT max(last_seen) FROM gateway_instance WHERE instance = 'gwtest/w0'")
            async with asyncio.timeout(30):
                while await db_pool.fetchval(  # noqa: ASYNC110
                    "SELECT max(last_seen) FROM gateway_instance WHERE instance = 'gwtest/w0'"
                ) == beat:
                    await asyncio.sleep(0.1)

            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert code == 0, stderr[-3000:]
        assert "worker died; restarting" in stderr
    final = await counts(db_pool)
    assert final == {"delivered": 2500}, final
    assert await db_pool.fetchval("SELECT count(*) FROM gateway_instance") == 0  # both left on SIGTERM
