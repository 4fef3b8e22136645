"""Run one configuration as several gateway processes (`smsgw run --workers N`).

One asyncio process sends at most what one core allows. Workers are ordinary gateway instances on the same
database: `FOR UPDATE SKIP LOCKED` keeps their claims disjoint, the heartbeat splits each account's rate
between them, and receipts match their rows in the database whichever bind they arrive on. What this module
adds is the split of one configuration and a supervisor:

- worker *i* of *N* gets its own instance name (`<instance>/w<i>`), its share of each SMSC's binds (so the
  SMSC sees the configured number of binds, not N times it) and metrics port `port + i` (0 stays 0);
- the parent applies the migrations once, starts the workers, forwards SIGTERM / SIGINT to them (each drains
  and unbinds as a single gateway would), and restarts a worker that dies, with back-off.

Overrides reach a worker as `SMSGW_<SECTION>__<KEY>` environment variables, the settings' own mechanism, so a
worker reads exactly the parent's configuration apart from those keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# A worker that dies is started again after this back-off, doubling up to the maximum while it keeps dying
# within `_STABLE_S` of its start.
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 30.0
_STABLE_S = 60.0


def share(total: int, index: int, count: int) -> int:
    """Worker `index`'s part of `total` (binds) when split as evenly as possible between `count` workers."""
    return total // count + (1 if index < total % count else 0)


def worker_overrides(settings: Settings, index: int, count: int) -> dict[str, str]:
    """The environment variables that make worker `index` of `count` out of the parent's settings.

    Raises:
        ConfigError: an SMSC has fewer binds than there are workers (a worker would have none to send on).
    """
    env = {"SMSGW_DISPATCHER__INSTANCE": f"{settings.dispatcher.instance}/w{index}"}
    for name, smsc in settings.smsc.items():
        if smsc.binds < count:
            raise ConfigError(f"smsc.{name}.binds: {smsc.binds} binds cannot be split between {count} workers")
        env[f"SMSGW_SMSC__{name.upper()}__BINDS"] = str(share(smsc.binds, index, count))
        if smsc.bind_mode == "pair":
            # A receiver per worker at least: receipts for any worker's rows may arrive on any receiver bind.
            env[f"SMSGW_SMSC__{name.upper()}__RECEIVERS"] = str(max(1, share(smsc.receivers, index, count)))
    if settings.metrics.enabled and settings.metrics.port:
        env["SMSGW_METRICS__PORT"] = str(settings.metrics.port + index)
    return env


@dataclass
class _Worker:
    index: int
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = _RESTART_MIN_S


class Supervisor:
    """Starts the workers, restarts the ones that die, and stops them all on SIGTERM / SIGINT."""

    def __init__(self, settings: Settings, config_path: Path | None, count: int, log_format: str | None) -> None:
        self.settings = settings
        self.count = count
        self._stop = asyncio.Event()
        argv = [sys.executable, "-m", "gateway.cli", "run", "--skip-migrations"]
        if config_path is not None:
            argv += ["--config", str(config_path)]
        if log_format is not None:
            argv += ["--log-format", log_format]
        self._argv = argv
        self._workers = [_Worker(i, worker_overrides(settings, i, count)) for i in range(count)]

    async def run(self) -> int:
        """Run until a signal asks to stop; 0 when every worker stopped cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        tasks = [asyncio.create_task(self._keep(w), name=f"worker-{w.index}") for w in self._workers]
        await self._stop.wait()
        log.info("stopping workers", extra={"workers": self.count})
        for w in self._workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return 0 if all(r == 0 for r in results) else 1

    async def _keep(self, w: _Worker) -> int:
        """Keep worker `w` running until the stop; return its last exit code."""
        loop = asyncio.get_running_loop()
        # Every phase of a worker's graceful stop is bounded by shutdown_timeout; a few phases, then the kill.
        stop_grace = 4 * self.settings.dispatcher.shutdown_timeout + 10
        while True:
            w.started_at = loop.time()
            w.process = await asyncio.create_subprocess_exec(*self._argv, env={**os.environ, **w.env})
            log.info("worker started", extra={"worker": w.index, "pid": w.process.pid,
                                              "instance": w.env["SMSGW_DISPATCHER__INSTANCE"]})
            wait = asyncio.create_task(w.process.wait())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
            if self._stop.is_set():
                stop.cancel()
                try:
                    code = await asyncio.wait_for(wait, stop_grace)
                    # A worker still starting (no signal handler yet) ends by the signal itself: nothing to drain.
                    return 0 if code == -signal.SIGTERM else code
                except TimeoutError:
                    log.error("worker did not stop in time; killed", extra={"worker": w.index})
                    w.process.kill()
                    await w.process.wait()
                    return -9
            stop.cancel()
            code = wait.result()
            if loop.time() - w.started_at > _STABLE_S:
                w.backoff = _RESTART_MIN_S
            log.error("worker died; restarting", extra={"worker": w.index, "exit_code": code, "retry_s": w.backoff})
            try:  # a stop during the back-off ends the wait early
                await asyncio.wait_for(self._stop.wait(), w.backoff)
                return code
            except TimeoutError:
                pass
            w.backoff = min(w.backoff * 2, _RESTART_MAX_S)
