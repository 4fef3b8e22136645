"""Personalised broadcast enqueue benchmark (issue 10, part 1): a private Postgres, N subscribers on one list
with a first_name attribute each (every 10th without one: the template's default), then one
`smsgw_broadcast_template` call that inserts N rows which 0012's trigger renders per subscriber. For comparison,
the same list broadcast with a plain body (`smsgw_broadcast`) in the same run. The last line is one JSON object.

    .venv/bin/python bench/templates.py [--subscribers 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrate import migrate

SC = "12345"
BODY = "Hi {first_name|there}, Acme Alerts: 20% off this week. Reply STOP to opt out"


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--limit", type=float, default=10.0, help="seconds the personalised enqueue should stay under")
    args = ap.parse_args()
    n = args.subscribers

    tmp = Path(tempfile.mkdtemp(prefix="smsgw-bench-tpl-"))
    pg = EmbeddedPostgres(tmp / "pg")
    try:
        pg.start()
        conn = await asyncpg.connect(pg.dsn())
        try:
            await migrate(conn)
            await conn.execute("INSERT INTO subscriber_list (short_code, name, program, frequency, marketing)"
                               " VALUES ($1, 'news', 'Acme News', '4 msgs/month', true)", SC)
            await conn.execute(
                "INSERT INTO subscription (short_code, list_name, msisdn, status, opted_in_at)"
                " SELECT $1, 'news', (12020000000 + i)::text, 'active', now() FROM generate_series(1, $2) i", SC, n)
            await conn.execute(
                "INSERT INTO subscriber (short_code, msisdn, attributes)"
                " SELECT $1, (12020000000 + i)::text, jsonb_build_object('first_name', 'Name' || i, 'tier', 'gold')"
                " FROM generate_series(1, $2) i WHERE i % 10 <> 0", SC, n)
            await conn.execute("INSERT INTO message_template (short_code, name, body, message_class)"
                               " VALUES ($1, 'promo', $2, 'marketing')", SC, BODY)
            await conn.execute("VACUUM ANALYZE")

            started = time.perf_counter()
            plain = await conn.fetchval("SELECT smsgw_broadcast($1, 'news', $2, 'plain')", SC,
                                        "Hi there, Acme Alerts: 20% off this week. Reply STOP to opt out",
                                        timeout=600)
            plain_s = time.perf_counter() - started

            started = time.perf_counter()
            rows = await conn.fetchval("SELECT smsgw_broadcast_template($1, 'news', 'promo', 'personal')", SC,
                                       timeout=600)
            personal_s = time.perf_counter() - started

            sample = await conn.fetch(
                "SELECT destination, body FROM outbound_message WHERE campaign_key = 'personal'"
                " AND destination = ANY($1::text[]) ORDER BY destination", ["+12020000001", "+12020000010"])
            rendered = await conn.fetchval(
                "SELECT count(*) FROM outbound_message WHERE campaign_key = 'personal' AND status = 'queued'"
                " AND body IS NOT NULL")
        finally:
            await conn.close()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "bench": "templates", "subscribers": n, "rows": rows, "rendered": rendered,
        "personalised_s": round(personal_s, 3), "personalised_rows_per_s": round(rows / personal_s),
        "plain_s": round(plain_s, 3), "plain_rows_per_s": round(plain / plain_s),
        "overhead": round(personal_s / plain_s - 1, 3), "limit_s": args.limit, "ok": personal_s < args.limit
        and rendered == rows == n,
        "sample": [dict(r) for r in sample], "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(f"personalised broadcast: {rows:,} rows in {personal_s:.2f} s ({rows / personal_s:,.0f} rows/s); "
          f"plain: {plain:,} rows in {plain_s:.2f} s")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
