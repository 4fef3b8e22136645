"""Routing and failover across several SMSCs (each a simulator on its own port)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from gw import ENQUEUE, counts, enqueue, running_gateway, wait_status

from gateway.db.embedded import free_port
from gateway.settings import Settings, load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator


def two_smsc_settings(dsn: str, a: int, b: int, routes: list[dict[str, Any]]) -> Settings:
    smsc = {"system_id": "smsgw", "password": "secret", "window": 20, "reconnect_min": 0.05, "reconnect_max": 0.3}
    return load_settings(
        None,
        database={"url": dsn},
        smsc={"a": {**smsc, "port": a}, "b": {**smsc, "port": b}},
        route=routes,
        dispatcher={"flush_interval": 0.01, "poll_interval": 0.2, "maintenance_interval": 0.2, "retry_base": 0.05},
        metrics={"enabled": False},
    )



async def test_routes_by_source_prefix_and_class(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    routes = [
        {"smsc": ["b"], "destination_prefix": ["44"]},
        {"smsc": ["b"], "message_class": "marketing", "source": ["777"]},
        {"smsc": ["a"]},
    ]
    async with SmscSimulator() as sim_a, SmscSimulator() as sim_b:
        await db_pool.execute(
            ENQUEUE,
            ["12345", "12345", "12345"],
            ["+12025550001", "+447700900001", "+12025550002"],
            ["us", "uk", "us again"],
            [None] * 3,
            [0] * 3,
        )
        async with running_gateway(two_smsc_settings(db_dsn, sim_a.port, sim_b.port, routes)):
            await wait_status(db_pool, "delivered", 3, timeout=20)
    rows = dict(await db_pool.fetch("SELECT body, smsc FROM outbound_message"))
    assert rows == {"us": "a", "uk": "b", "us again": "a"}
    assert sorted(r.text for r in sim_b.submits) == ["uk"]


async def test_weights_split_traffic(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    async with SmscSimulator() as sim_a, SmscSimulator() as sim_b:
        await enqueue(db_pool, 400)
        settings = two_smsc_settings(db_dsn, sim_a.port, sim_b.port, [{"smsc": ["a", "b"], "weights": [3, 1]}])
        async with running_gateway(settings):
            await wait_status(db_pool, "delivered", 400, timeout=30)
    share_a = sim_a.stats.submits_ok / 400
    assert 0.6 <= share_a <= 0.9, share_a


async def test_failover_when_an_smsc_goes_down_mid_run(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    port_a = free_port()
    sim_a = SmscSimulator(SimulatorConfig(port=port_a, receipt_delay=0.01))
    await sim_a.start()
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim_b:
        await enqueue(db_pool, 1000)
        routes = [{"smsc": ["a"]}, {"smsc": ["b"]}]  # b only when a is down
        settings = two_smsc_settings(db_dsn, port_a, sim_b.port, routes)
        settings = settings.model_copy(
            update={"smsc": {n: s.model_copy(update={"tps": 200}) for n, s in settings.smsc.items()}}
        )
        async with running_gateway(settings):
            await sim_a.wait_for(lambda: sim_a.stats.submits_ok >= 200, timeout=20)
            await sim_a.stop()  # carrier A disappears: connections dropped, no listener
            await wait_status(db_pool, "delivered", 990, timeout=60)
            await asyncio.sleep(1.0)
    by_status = {
        (r["status"], r["smsc"]): r["count"]
        for r in await db_pool.fetch("SELECT status, smsc, count(*) FROM outbound_message GROUP BY 1, 2")
    }
    # Everything not yet accepted by A went through B. Rows A accepted keep waiting for receipts that died
    # with A (they end by the receipt timeout, see test_receipt_timeout_ends_submitted_rows).
    assert set(by_status) <= {("delivered", "a"), ("delivered", "b"), ("submitted", "a")}, by_status
    assert by_status[("delivered", "a")] + by_status.get(("submitted", "a"), 0) >= 200
    assert by_status[("delivered", "b")] >= 1
    assert sum(by_status.values()) == 1000


async def test_rows_wait_while_their_only_smsc_is_down_and_unmatched_rows_are_rejected(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    port_a = free_port()
    async with SmscSimulator() as sim_b:
        routes = [{"smsc": ["a"], "source": ["12345"]}, {"smsc": ["b"], "source": ["55555"]}]
        await enqueue(db_pool, 5)  # source 12345: only SMSC a, which is not running yet
        await enqueue(db_pool, 1, source="99999")  # no route
        async with running_gateway(two_smsc_settings(db_dsn, port_a, sim_b.port, routes)):
            await asyncio.sleep(1.0)
            c = await counts(db_pool)
            assert c == {"queued": 5, "rejected": 1}, c
            reason = await db_pool.fetchval("SELECT reason FROM outbound_message WHERE status = 'rejected'")
            assert reason == "no_route"
            async with SmscSimulator(SimulatorConfig(port=port_a)) as sim_a:
                c = await wait_status(db_pool, "delivered", 5, timeout=20)
                assert sim_a.stats.submits_ok == 5
    assert c == {"delivered": 5, "rejected": 1}


async def test_receipt_timeout_ends_submitted_rows(db_pool: asyncpg.Pool, db_dsn: str) -> None:
    from gateway import maintenance

    await enqueue(db_pool, 2)
    await db_pool.execute(
        "UPDATE outbound_message SET status = 'submitted', smsc = 'a', submitted_at = now() - interval '2 hours'"
        " WHERE id = (SELECT min(id) FROM outbound_message)"
    )
    settings = load_settings(None, database={"url": db_dsn}, dispatcher={"receipt_timeout": 3600})
    touched = await maintenance.run_once(db_pool, settings.dispatcher)
    assert touched["no_receipt"] == 1
    row = await db_pool.fetchrow("SELECT status, reason FROM outbound_message WHERE status <> 'queued'")
    assert dict(row) == {"status": "expired", "reason": "no_receipt_within_timeout"}
