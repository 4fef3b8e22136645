"""`smsgw demo`: the whole system on one machine, with nothing to set up.

Starts a private Postgres cluster, the SMSC simulator and the gateway; enqueues sample messages the way
a producer would (plain SQL); prints a live line of counts by status until Ctrl-C or `--duration`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncpg

from gateway.app import Gateway
from gateway.db.embedded import EmbeddedPostgres
from gateway.settings import load_settings
from gateway.simulator import SimulatorConfig, SmscSimulator

# What a producer runs: one INSERT per batch (unnest), here with a few rows the gateway must refuse.
ENQUEUE = """
INSERT INTO outbound_message (source, destination, body, message_class, idempotency_key)
SELECT '12345', d, b, 'transactional', k
FROM unnest($1::text[], $2::text[], $3::text[]) AS t(d, b, k)
ON CONFLICT (idempotency_key) DO NOTHING
"""

COUNTS = "SELECT status, count(*) FROM outbound_message GROUP BY status"
STATUSES = ("queued", "claimed", "submitted", "delivered", "undeliverable", "expired", "rejected", "failed")


def _samples(n: int, run_id: str) -> tuple[list[str], list[str], list[str]]:
    dest, body, key = [], [], []
    for i in range(n):
        dest.append(f"+1202555{i % 10000:04d}")
        body.append(f"Your code is {100000 + i}. Reply STOP to opt out." if i % 5 else "Olá! Café à € 5 ✓")
        key.append(f"demo-{run_id}-{i}")
    # Bad rows: they must end 'rejected' with a reason, never crash anything.
    dest += ["not-a-number", "+12025550100", "+12025550101"]
    body += ["bad number", "", "x" * 1200]  # 1,200 characters: 8 parts, over the limit of 6
    key += [f"demo-{run_id}-bad-{j}" for j in range(3)]
    return dest, body, key


async def run_demo(*, duration: float | None, messages: int, rate: float, metrics_port: int, data_dir: Path) -> int:
    """Run the demo; return the process exit code."""
    pg = EmbeddedPostgres(data_dir)
    print("starting private Postgres ...", flush=True)
    await asyncio.to_thread(pg.start)
    sim = SmscSimulator(
        SimulatorConfig(
            accounts={"demo": "demopass"},
            receipt_delay=0.5,
            outcomes={"DELIVRD": 0.9, "UNDELIV": 0.05, "EXPIRED": 0.03, "REJECTD": 0.02},
        )
    )
    gw: Gateway | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
        settings = load_settings(
            None,
            database={"url": pg.dsn()},
            smsc={
                "sim": {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "system_id": "demo",
                    "password": "demopass",
                    "tps": rate,
                    "window": 20,
                }
            },
            metrics={"port": metrics_port},
            keywords={
                "12345": {
                    "program": "Demo Alerts",
                    "contact": "help@demo.example",
                    "frequency": "Up to 4 msgs/week",
                    "lists": [{"name": "news", "program": "Demo News", "join_keywords": ["NEWS"],
                               "frequency": "2 msgs/week"}],
                }
            },
            log_format="text",
            log_level="WARNING",
        )
        gw = Gateway(settings)
        await gw.start()
        print(f"SMSC simulator on 127.0.0.1:{sim.port}; metrics at http://127.0.0.1:{gw.metrics_port}/metrics")
        conn = await asyncpg.connect(pg.dsn(), timeout=30)
        try:
            run_id = str(int(loop.time() * 1000))
            await conn.execute(ENQUEUE, *_samples(messages, run_id))
            print(f"enqueued {messages + 3} messages with plain SQL (3 deliberately bad); Ctrl-C to stop")
            # Phones texting the short code: each MO is stored, its keyword handled, the reply queued.
            for number, text in (("12025550900", "JOIN NEWS"), ("12025550901", "help"), ("12025550902", "Stop.")):
                await sim.inject_mo(number, "12345", text)
            print("3 phones texted the short code: JOIN NEWS, help, Stop.")
            deadline = None if duration is None else loop.time() + duration
            counts: dict[str, int] = {}
            while not stop.is_set():
                counts = dict(await conn.fetch(COUNTS))  # type: ignore[arg-type]
                line = "  ".join(f"{s}={counts.get(s, 0)}" for s in STATUSES)
                sys.stdout.write("\r" + line + " " * 4)
                sys.stdout.flush()
                if deadline is not None and loop.time() >= deadline:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
            print()
            await gw.stop()
            gw = None
            counts = dict(await conn.fetch(COUNTS))  # type: ignore[arg-type]
            reasons = await conn.fetch(
                "SELECT status, reason, count(*) FROM outbound_message "
                "WHERE status NOT IN ('delivered', 'queued', 'submitted') GROUP BY 1, 2 ORDER BY 3 DESC"
            )
            mos = await conn.fetch("SELECT source, body, intent FROM inbound_message ORDER BY id")
            replies = dict(
                await conn.fetch(  # type: ignore[arg-type]
                    "SELECT i.source, o.body FROM outbound_message o"
                    " JOIN inbound_message i ON i.id = o.inbound_message_id"
                )
            )
        finally:
            await conn.close()
        total = sum(counts.values())
        failed = sum(counts.get(s, 0) for s in ("undeliverable", "expired", "rejected", "failed"))
        print(
            f"summary: queued {total}, submitted {total - counts.get('queued', 0) - counts.get('rejected', 0)}, "
            f"delivered {counts.get('delivered', 0)}, failed {failed}, still pending "
            f"{counts.get('queued', 0) + counts.get('claimed', 0) + counts.get('submitted', 0)}"
        )
        for r in reasons:
            print(f"  {r['status']:<13} {r['reason']}: {r['count']}")
        for m in mos:
            reply = replies.get(m["source"], "(none)")
            print(f"MO from {m['source']} {m['body']!r} -> {m['intent']}; reply: {reply!r}")
        return 0
    finally:
        if gw is not None:
            await gw.stop()
        await sim.stop()
        await asyncio.to_thread(pg.stop)
