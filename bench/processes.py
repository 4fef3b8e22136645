"""Helpers the benchmarks share for the processes they start (simulator, gateway, receiver)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable


def wait_port(port: int, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:`port`; exit the benchmark after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop(procs: Iterable[subprocess.Popen[bytes] | None], timeout: float = 10.0) -> None:
    """SIGTERM each process still running, wait up to `timeout` s each, then SIGKILL."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for p in running:
        p.terminate()
    for p in running:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)
