"""The shipped observability against a real Prometheus (Debian's `prometheus` package, installed by `make test`).

- `promtool check rules` accepts config/prometheus/alerts.yml;
- every metric the alert rules and the Grafana dashboard name is defined (gateway/metrics.py's registry);
- a live run: Prometheus on loopback scrapes a gateway sending a few hundred messages through the simulator;
  through its HTTP API the delivered counter equals the rows delivered in Postgres, every dashboard query
  parses and returns data (except the few listed that need faults), and every alert rule evaluates.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from gw import enqueue, running_gateway, settings_for
from prometheus_client import REGISTRY

import gateway.app  # noqa: F401 - imports every module that defines metrics
import keywords.processor  # noqa: F401
from gateway.db.embedded import free_port
from gateway.simulator import SimulatorConfig, SmscSimulator

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "smsgw.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None, reason="prometheus / promtool not installed (make observability-tools)"
)

_METRIC = re.compile(r"\bsmsgw_[a-z0-9_]+")

# Dashboard targets that may return nothing after a clean run (they need errors, throttling or faults):
# panel title -> the refIds allowed empty ("*": all of the panel's).
MAY_BE_EMPTY = {
    "submit_sm errors by status": "*",
    "Error ratio (non-throttling errors / responses)": "*",
    "Rejected before sending, by reason": "*",
    "Binds, bind failures and reconnects by reason": "AB",  # C (successful binds) has data
    "Throttled submits per second": "*",
    "Flush errors, quarantine, pool": "B",  # quarantined by kind: no kind until something is quarantined
}


def _sample_names() -> set[str]:
    """Every sample name the default registry can expose, from each family's type (children or not)."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return {n for n in names if n.startswith("smsgw_")}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every dashboard target."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in _panels(_dashboard())
        for target in panel.get("targets", [])
    ]


def _instant(expr: str) -> str:
    """A dashboard expression as Grafana sends it: variables replaced (all SMSCs, a 1-minute rate window)."""
    out = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$smsc", ".*")
    assert "$" not in out, f"unknown dashboard variable in {expr}"
    return out


# -- static checks ------------------------------------------------------------------------------------------------


@needs_prometheus
def test_promtool_accepts_the_alert_rules() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_and_dashboard_name_only_defined_metrics() -> None:
    defined = _sample_names()
    assert "smsgw_submitted_total" in defined and "smsgw_submit_rtt_seconds_bucket" in defined
    used_in_alerts = set(_METRIC.findall(ALERTS.read_text()))  # expressions and annotations
    used_in_dashboard = {m for _t, _r, expr in _dashboard_queries() for m in _METRIC.findall(expr)}
    for variable in _dashboard()["templating"]["list"]:
        used_in_dashboard.update(_METRIC.findall(json.dumps(variable.get("query"))))
    assert len(used_in_alerts) >= 10 and len(used_in_dashboard) >= 20
    assert sorted(used_in_alerts - defined) == [], "alerts.yml"
    assert sorted(used_in_dashboard - defined) == [], "smsgw.json"


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    dashboard = _dashboard()
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"].lower() for p in _panels(dashboard))
    for topic in ("submits", "receipt latency", "errors", "binds", "oldest", "throttl", "opt-outs", "writer"):
        assert topic in titles, topic
    assert set(MAY_BE_EMPTY) <= {p["title"] for p in _panels(dashboard)}


# -- a live Prometheus ------------------------------------------------------------------------------------------


def _registry_sum(name: str, **labels: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class _Prometheus:
    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http, self.base = http, f"http://127.0.0.1:{port}"

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        async with self.http.get(self.base + path, params=params) as resp:
            if resp.status == 503:  # "Service Unavailable" while it starts (a loaded machine): not an answer yet
                return {"status": "starting"}
            body: dict[str, Any] = await resp.json(content_type=None)
            return body

    async def query(self, expr: str) -> dict[str, Any]:
        return await self.get("/api/v1/query", query=expr)

    async def scalar(self, expr: str) -> float | None:
        body = await self.query(expr)
        result = body.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if body.get("status") == "success" and result else None

    async def wait(self, what: str, check: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                if await check():
                    return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"Prometheus: {what} not within {timeout}s")
            await asyncio.sleep(0.2)


def _prometheus_config(path: Path, target_port: int) -> Path:
    path.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {json.dumps(str(ALERTS))}\n"
        "scrape_configs:\n  - job_name: smsgw\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    return path


@needs_prometheus
async def test_prometheus_scrapes_a_run_and_agrees_with_postgres(
    db_pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    n = 300
    delivered_before = _registry_sum("smsgw_final_total", status="delivered")
    async with SmscSimulator(SimulatorConfig(receipt_delay=0.01)) as sim:
        settings = settings_for(db_dsn, sim)
        settings = settings.model_copy(
            update={"metrics": settings.metrics.model_copy(
                update={"enabled": True, "host": "127.0.0.1", "port": free_port()}
            )}
        )
        async with running_gateway(settings) as gw:
            assert gw.metrics_port
            prom_port = free_port()
            config = _prometheus_config(tmp_path / "prometheus.yml", gw.metrics_port)
            log_file = (tmp_path / "prometheus.log").open("wb")
            proc = subprocess.Popen(  # noqa: ASYNC220 - a server beside the loop, waited on through its API
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--web.console.templates=" + str(tmp_path),
                    "--web.console.libraries=" + str(tmp_path),
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
            try:
                timeout = aiohttp.ClientTimeout(total=5)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    prom = _Prometheus(http, prom_port)

                    async def scraped() -> bool:
                        return await prom.scalar('up{job="smsgw"}') == 1.0

                    await prom.wait("first scrape of the gateway", scraped, 20)

                    # Traffic: a few hundred messages to delivered, and one STOP (opt-out, its reply).
                    await enqueue(db_pool, n)
                    await sim.inject_mo("+12025550999", "12345", "STOP")

                    async def settled() -> bool:
                        rows = await db_pool.fetchval(
                            "SELECT count(*) FROM outbound_message WHERE status = 'delivered'"
                        )
                        in_process = _registry_sum("smsgw_final_total", status="delivered") - delivered_before
                        return bool(rows >= n + 1 and in_process == rows)

                    await prom.wait("all rows delivered and counted", settled, 20)
                    delivered_rows = await db_pool.fetchval(
                        "SELECT count(*) FROM outbound_message WHERE status = 'delivered'"
                    )
                    expected = _registry_sum("smsgw_final_total", status="delivered")

                    async def caught_up() -> bool:
                        got = await prom.scalar('sum(smsgw_final_total{status="delivered"})')
                        return got == expected

                    await prom.wait("the delivered counter scraped", caught_up, 10)
                    await asyncio.sleep(1.5)  # one more maintenance pass and scrape for the gauges

                    # The counter in Prometheus is the process's counter; its growth is the rows in Postgres.
                    assert await prom.scalar('sum(smsgw_final_total{status="delivered"})') == expected
                    assert expected - delivered_before == delivered_rows == n + 1
                    assert await prom.scalar('sum(smsgw_receipts_total{stat="DELIVRD"})') == _registry_sum(
                        "smsgw_receipts_total", stat="DELIVRD"
                    )
                    assert await prom.scalar('max(smsgw_bind_up{smsc="sim",bind="sim-0"})') == 1.0
                    assert await prom.scalar('smsgw_queue_depth{status="queued"}') == 0.0

                    # Every dashboard query parses and (but for the listed ones) returns data.
                    empty: list[str] = []
                    for title, ref, expr in _dashboard_queries():
                        body = await prom.query(_instant(expr))
                        assert body.get("status") == "success", (title, ref, expr, body)
                        allowed = MAY_BE_EMPTY.get(title, "")
                        if not body["data"]["result"] and not (allowed == "*" or ref in allowed):
                            empty.append(f"{title} [{ref}]: {expr}")
                    assert empty == []
                    values = await prom.get("/api/v1/label/smsc/values", **{"match[]": "smsgw_bind_up"})
                    assert "sim" in values["data"]  # the dashboard's SMSC variable

                    # Every alert rule is loaded and evaluates without error.
                    async def rules_evaluated() -> bool:
                        body = await prom.get("/api/v1/rules")
                        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
                        return bool(rules) and all(r.get("health") != "unknown" for r in rules)

                    await prom.wait("alert rules evaluated", rules_evaluated, 10)
                    groups = (await prom.get("/api/v1/rules"))["data"]["groups"]
                    rules = [r for g in groups for r in g["rules"]]
                    assert len(rules) >= 10
                    assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules
                    firing = [r["name"] for r in rules if r.get("state") == "firing"]
                    assert firing == []  # a clean run fires nothing
            finally:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait, 10)
                log_file.close()
