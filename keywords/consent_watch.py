"""Numbers whose consent changed while their rows may sit in a dispatcher's buffer.

Rule of this module: send-time enforcement reads the consent tables once per claimed batch (admission); a
STOP committed after that must still stop every row not yet sent. Rather than a copy of the opt-out table
(millions of rows), this keeps only the (short code, number) pairs announced on `NOTIFY smsgw_consent` in the
last `keep_seconds`, so the check just before submit_sm is one set lookup. A row whose pair changed after it
was admitted goes back to the queue and is admitted again (with a fresh consent lookup). While the listener
is disconnected notifications are lost: every row must be looked up again (`down`), and a reconnect counts as
"everything may have changed". The watch starts down: nothing is sent before the listener is connected.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

CONSENT_CHANNEL = "smsgw_consent"


def short_code_key(raw: str) -> str:
    """The one form of a short code used in consent tables and checks: no blanks, no leading '+'.

    SMSCs write the destination of an MO as `12345`, `+12345` or with TON/NPI only; producers write the
    source as they like. Both sides go through this function.
    """
    return raw.strip().lstrip("+").strip()


class ConsentWatch:
    """Recent consent changes, keyed by (short code key, msisdn digits); times are the loop's monotonic clock."""

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self._changed: dict[tuple[str, str], float] = {}
        self._gap_at = float("-inf")  # last time notifications may have been lost
        self.down = True  # no listener connected (yet): announcements cannot reach us

    def listener_up(self, now: float) -> None:
        """The listener is connected: changes made while it was not were never announced."""
        self.down = False
        self.note_gap(now)

    def listener_down(self, now: float) -> None:
        """The listener lost its connection: from now on until `listener_up`, every row is re-checked."""
        self.down = True
        self.note_gap(now)

    def note_change(self, short_code: str, msisdn: str, now: float) -> None:
        self._changed[(short_code_key(short_code), msisdn.lstrip("+"))] = now

    def note_gap(self, now: float) -> None:
        """Notifications may have been lost (listener reconnected, or a payload we cannot read)."""
        self._gap_at = now

    def on_notify(self, payload: str, now: float) -> None:
        """Feed one `smsgw_consent` payload: JSON {"short_code": ..., "msisdn": ...}; anything else is a gap."""
        try:
            data = json.loads(payload)
            self.note_change(str(data["short_code"]), str(data["msisdn"]), now)
        except (ValueError, KeyError, TypeError):
            self.note_gap(now)

    def must_recheck(self, short_code: str, msisdn: str, admitted_at: float) -> bool:
        """True when the pair's consent may have changed since the row was admitted at `admitted_at`."""
        if self.down or self._gap_at >= admitted_at:
            return True
        if not self._changed:  # the usual case on the hot path: no consent changed lately
            return False
        changed = self._changed.get((short_code_key(short_code), msisdn.lstrip("+")))
        return changed is not None and changed >= admitted_at

    def prune(self, now: float) -> None:
        """Forget changes older than any row can have waited in a buffer."""
        horizon = now - self.keep_seconds
        stale = [k for k, t in self._changed.items() if t < horizon]
        for k in stale:
            del self._changed[k]

    def __len__(self) -> int:
        return len(self._changed)
