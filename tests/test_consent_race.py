"""A STOP committed while marketing rows to that number wait in a dispatcher's buffer (issue 7, item 8: consent
was checked once, when rows entered the buffer). Now the check is repeated just before each submit_sm against
the numbers whose consent changed since the row was admitted (keywords.consent_watch, fed by NOTIFY)."""

from __future__ import annotations

import asyncio

import asyncpg
from gw import running_gateway, settings_for

from gateway.simulator import SimulatorConfig, SmscSimulator
from gateway.status import Reason
from keywords.consent_watch import ConsentWatch

NUMBER = "+12025550100"
ROWS = 12

INSERT_MARKETING = """
INSERT INTO outbound_message (source, destination, body, message_class, list_name)
SELECT '12345', $1, 'deal ' || g, 'marketing', 'news' FROM generate_series(1, $2) AS g
"""


async def test_stop_while_marketing_rows_are_buffered_stops_every_one_of_them(
    db_pool: asyncpg.Pool, db_dsn: str
) -> None:
    await db_pool.execute("INSERT INTO subscriber_list (short_code, name, program) VALUES ('12345', 'news', 'News')")
    await db_pool.execute("SELECT smsgw_opt_in('12345', $1, 'news')", NUMBER)
    await db_pool.execute(INSERT_MARKETING, NUMBER, ROWS)
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        settings = settings_for(db_dsn, sim, tps=4)
        dispatcher = settings.dispatcher.model_copy(update={"quiet_hours": False})
        settings = settings.model_copy(update={"dispatcher": dispatcher})
        async with running_gateway(settings) as gw:
            disp = gw.dispatchers[0]
            given_back: list[str] = []
            real_give_back = disp._give_back

            def spy(item, reason, **kwargs):  # type: ignore[no-untyped-def]
                given_back.append(reason)
                real_give_back(item, reason, **kwargs)

            disp._give_back = spy  # type: ignore[method-assign]
            # Let the listener's start-up gap pass, and a few rows go out (4/s); the rest wait in the buffer.
            assert await sim.wait_for(lambda: sim.stats.submits_ok >= 2 and disp.ready_count >= 2, timeout=10)
            await db_pool.execute("SELECT smsgw_opt_out('12345', $1, 'sms', 'STOP', 'STOP')", NUMBER)
            watch = gw.consent_watch
            assert watch is not None
            assert await sim.wait_for(lambda: len(watch) > 0, timeout=5)  # the NOTIFY reached the gateway
            sent_before_stop = sim.stats.submits_ok
            await asyncio.sleep(2.0)  # 8 more sends' worth of time at 4/s
            sent_after = sim.stats.submits_ok
            rows = await db_pool.fetch("SELECT status, reason, count(*) FROM outbound_message GROUP BY 1, 2")
    assert sent_after == sent_before_stop, "a row reached the SMSC after the STOP was announced"
    by = {(r["status"], r["reason"]): r["count"] for r in rows}
    assert by == {("delivered", "delivered"): sent_before_stop, ("rejected", "opted_out"): ROWS - sent_before_stop}
    # The buffered rows were caught by the check just before submit_sm, not only by the next admission.
    assert Reason.CONSENT_CHANGED in given_back


def test_watch_fed_by_hand_makes_rows_admitted_before_the_change_recheck() -> None:
    watch = ConsentWatch(keep_seconds=60)
    watch.listener_up(0.0)
    watch.on_notify('{"short_code": "12345", "msisdn": "12025550100"}', now=10.0)
    assert watch.must_recheck("+12345", "12025550100", admitted_at=9.0)
    assert not watch.must_recheck("12345", "12025550100", admitted_at=11.0)  # admitted after: looked up fresh
    assert not watch.must_recheck("12345", "12025550199", admitted_at=9.0)  # another number
