"""Back-pressure from the result writer to the SMPP sockets (the shape of uvicorn's flow_control.py).

Rule of this module: when more results wait for Postgres than `high`, every registered connection stops
reading (`pause_reading()`), so SMSCs keep the receipts and MOs we cannot store yet (their window fills and
they stop sending) and our own submit_sm_resp stay unread (our window fills and the senders stop). Reading
resumes when the buffer is at or below `low`. The writer keeps flushing while reading is paused, so this
cannot deadlock; it only decides, it never waits.
"""

from __future__ import annotations

import logging
import weakref
from typing import Protocol

from gateway import metrics

log = logging.getLogger(__name__)


class Readable(Protocol):
    """What a connection offers to flow control (`SmppConnection` does)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    """Reading on or off for all registered connections, switched by the writer's buffer level."""

    def __init__(self, high: int, low: int | None = None) -> None:
        if high < 1:
            raise ValueError(f"high-water mark must be >= 1, got {high}")
        self.high = high
        self.low = max(0, min(high - 1, high // 2 if low is None else low))
        self.paused = False
        # Weak: a connection that is gone without unregistering (a crash path) is not kept alive by us.
        self._conns: weakref.WeakSet[Readable] = weakref.WeakSet()
        metrics.READING_PAUSED.set(0)

    def register(self, conn: Readable) -> None:
        """Put a connection under flow control (idempotent); it is paused at once when reading is paused."""
        if conn in self._conns:
            return
        self._conns.add(conn)
        if self.paused:
            conn.pause_reading()

    def unregister(self, conn: Readable) -> None:
        self._conns.discard(conn)

    def update(self, level: int) -> None:
        """The writer's buffer now holds `level` rows: pause above `high`, resume at or below `low`."""
        if not self.paused:
            if level > self.high:
                self.paused = True
                metrics.READING_PAUSED.set(1)
                metrics.READING_PAUSES.inc()
                log.warning("result writer behind; SMPP reading paused", extra={"pending": level, "high": self.high})
                for conn in list(self._conns):
                    conn.pause_reading()
        elif level <= self.low:
            self.paused = False
            metrics.READING_PAUSED.set(0)
            log.info("result writer caught up; SMPP reading resumed", extra={"pending": level, "low": self.low})
            for conn in list(self._conns):
                conn.resume_reading()
