"""What receipt matching tells ops: the detected id mapping per SMSC, unmatched receipts, parked receipts.

The result writer and the parked-receipt sweeper learn from RECORD_RECEIPTS (its rows say which candidate key
of each receipt matched, gateway/smpp/receipt.py `receipt_keys`); maintenance counts parked receipts. Rule of
this module: no database access here, only metrics and logs, so a mismatch shows within minutes, not days.
State is per process (like the metrics) and keyed by SMSC name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Final

from gateway import metrics
from gateway.smpp.receipt import ID_MAPPINGS, stat_label

log = logging.getLogger(__name__)

# What each mapping means, for the log line.
_DESCRIPTIONS: Final[dict[str, str]] = {
    "exact": "submit_sm_resp and receipts write the same id",
    "hex_to_decimal": "submit_sm_resp hex, receipts decimal",
    "decimal_to_hex": "submit_sm_resp decimal, receipts hex",
}
# Warn about parked receipts piling up at most this often per SMSC, and only past this many stale ones.
WARN_INTERVAL_S: Final = 60.0
PILE_UP_MIN: Final = 10

_detected: dict[str, str] = {}
_last_warning: dict[str, float] = {}
_last_stale: dict[str, int] = {}
_parked_smscs: set[str] = set()


def observe_matches(rows: Iterable[Mapping[str, object]], *, count_unmatched: bool = True) -> None:
    """Take RECORD_RECEIPTS' result rows (smsc, matched, n): count unmatched receipts, note the mapping.

    ``matched`` is the index of the candidate key that found the message (see `ID_MAPPINGS`) or None when
    the receipt was parked. The mapping seen most in these rows becomes the SMSC's detected one; the log
    line is written when it is first detected and when it changes, not for every batch. The sweeper
    passes ``count_unmatched=False``: what it parks again was counted when it first arrived.
    """
    seen: dict[str, dict[int, int]] = {}
    for row in rows:
        smsc, matched, n = str(row["smsc"]), row["matched"], int(row["n"])  # type: ignore[call-overload]
        status = row.get("status")
        if status is not None:
            # Rows this statement made final (delivered, undeliverable...), with their submit -> receipt ages.
            metrics.FINAL.labels(str(status), stat_label(str(row.get("receipt_stat") or ""))).inc(n)
            ages = row.get("ages")
            if ages:
                metrics.RECEIPT_LATENCY.labels(smsc).observe_many(ages)  # type: ignore[arg-type]
            continue
        if matched is None:
            if count_unmatched:
                metrics.RECEIPTS_UNMATCHED.labels(smsc).inc(n)
            continue
        seen.setdefault(smsc, {})[int(matched)] = n  # type: ignore[call-overload]
    for smsc, counts in seen.items():
        mapping = ID_MAPPINGS[max(counts, key=lambda index: (counts[index], -index))]
        if _detected.get(smsc) == mapping:
            continue
        previous = _detected.get(smsc)
        _detected[smsc] = mapping
        for name in ID_MAPPINGS:
            metrics.RECEIPT_ID_MAPPING.labels(smsc, name).set(1 if name == mapping else 0)
        log.info(
            f"receipt ids: {_DESCRIPTIONS[mapping]}",
            extra={"smsc": smsc, "mapping": mapping, "previous": previous},
        )


def detected_mapping(smsc: str) -> str | None:
    """The mapping last detected for ``smsc`` in this process, or None before its first matched receipt."""
    return _detected.get(smsc)


def observe_parked(rows: Iterable[Mapping[str, object]], match_window: float, now: float | None = None) -> None:
    """Take PARKED_RECEIPTS' rows (smsc, parked, stale): set the gauge, warn when stale receipts pile up.

    A stale receipt is parked for longer than the match window: no mark will take it any more, its id
    matched no message in time (an id format the automatic matching cannot reconcile, an SMSC that
    reuses ids, receipts for messages sent by someone else). The warning is rate-limited per SMSC.
    """
    now = time.monotonic() if now is None else now
    present: set[str] = set()
    for row in rows:
        smsc, parked, stale = str(row["smsc"]), int(row["parked"]), int(row["stale"])  # type: ignore[call-overload]
        present.add(smsc)
        metrics.RECEIPTS_PARKED.labels(smsc).set(parked)
        grew = stale > _last_stale.get(smsc, 0)
        _last_stale[smsc] = stale
        if grew and stale >= PILE_UP_MIN and now - _last_warning.get(smsc, -WARN_INTERVAL_S) >= WARN_INTERVAL_S:
            _last_warning[smsc] = now
            log.warning(
                "receipts pile up unmatched: their ids name no message submitted to this SMSC"
                " (check submit_id_format / receipt_id_format)",
                extra={
                    "smsc": smsc,
                    "parked": parked,
                    "match_window_s": match_window,
                    "stale": stale,
                    "mapping": _detected.get(smsc),
                },
            )
    for smsc in _parked_smscs - present:
        metrics.RECEIPTS_PARKED.labels(smsc).set(0)
        _last_stale[smsc] = 0
    _parked_smscs.update(present)


def reset() -> None:
    """Forget what was detected (tests run several gateways in one process)."""
    _detected.clear()
    _last_warning.clear()
    _last_stale.clear()
    _parked_smscs.clear()
