"""Frequency caps: the frequency a list's HELP text promises (`max_per_day`, `max_per_week`), as a rule.

A marketing message of a list (message_class 'marketing', `list_name` set) goes only while the number has been
sent fewer than `max_per_day` messages of that list in the last 24 h and fewer than `max_per_week` in the last
7 days: rolling windows, not calendar days. Over the cap the row waits until the oldest counted message leaves
the window (`frequency_cap_action = "wait"`, the default) or ends `rejected / frequency_cap` ("reject").
Transactional messages and replies are never capped.

What counts (one statement per admitted batch, `gateway.db.outbound_sql.FREQUENCY_CAP_SENT`):
  * rows of that short code, list and number with `submitted_at` in the last 7 days (what was actually sent);
  * rows of that list and number that are `claimed` and not yet submitted, by this or any other instance
    (admitted and buffered, or about to be admitted), except the batch being admitted: counted as sent now;
  * the rows of the batch being admitted that passed before this one (claim order): counted as sent now.
Counting every other in-flight row (not only those claimed earlier) is what keeps two instances from both
passing a cap: of two admissions, the later one sees the other's claimed row whatever the commit order. The
price is on the safe side: a row in flight that is then not sent (failed, capped, given back while its settle
is still buffered) still counts until it leaves `claimed`, and two instances holding rows for one number and
list at the same moment may both wait.

Numbers: rows keep `destination` as the producer wrote it, so rows are matched by `smsgw_cap_number`
(its digits: '+1 202-555-0123' and '12025550123' are one number), against both the E.164 digits the gateway
sends to and the row's own digits. A number written in national format on some rows and in international
format on others is counted as two numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from keywords.consent_watch import short_code_key  # the SQL twin is smsgw_short_code()

if TYPE_CHECKING:
    from keywords.config import ShortCodeKeywords

DAY = timedelta(days=1)
WEEK = timedelta(days=7)

_NOT_DIGIT = re.compile(r"[^0-9]")


@dataclass(frozen=True)
class Allowed:
    """The message may go now."""


@dataclass(frozen=True)
class WaitUntil:
    """Over a cap: the first moment at which it is not (the oldest counted message has left its window)."""

    at: datetime


CapDecision = Allowed | WaitUntil


@dataclass(frozen=True)
class ListCap:
    """The caps of one list; None: no cap of that length."""

    max_per_day: int | None
    max_per_week: int | None
    action: Literal["wait", "reject"] = "wait"


def _free_at(times: list[datetime], now: datetime, window: timedelta, cap: int | None) -> datetime | None:
    """When fewer than `cap` of `times` (sorted) are within `window` before that moment; None: already."""
    if cap is None:
        return None
    inside = [t for t in times if t > now - window]
    if len(inside) < cap:
        return None
    # Once the (len - cap + 1) oldest have left, cap - 1 remain.
    return inside[len(inside) - cap] + window


def cap_decision(
    sent_times: Iterable[datetime], now: datetime, max_per_day: int | None, max_per_week: int | None
) -> CapDecision:
    """Whether one more message may go at `now`, given when the counted ones went (in-flight ones: `now`).

    A message sent at t counts in the day window while now < t + 24 h, in the week window while now < t + 7 d.
    """
    times = sorted(sent_times)
    waits = [w for w in (_free_at(times, now, DAY, max_per_day), _free_at(times, now, WEEK, max_per_week)) if w]
    if not waits:
        return Allowed()
    return WaitUntil(max(waits))


def number_keys(raw_destination: str, e164_digits: str) -> list[str]:
    """The `smsgw_cap_number` values that name this recipient: its E.164 digits and the row's own digits."""
    own = _NOT_DIGIT.sub("", raw_destination)
    return [e164_digits] if own in ("", e164_digits) else [e164_digits, own]


def caps_from_keywords(keywords: Mapping[str, ShortCodeKeywords]) -> dict[tuple[str, str], ListCap]:
    """(short code, list name) -> its caps, for the lists that have any."""
    caps: dict[tuple[str, str], ListCap] = {}
    for code, kw in keywords.items():
        for lst in kw.lists:
            if lst.max_per_day is not None or lst.max_per_week is not None:
                caps[(short_code_key(code), lst.name)] = ListCap(
                    lst.max_per_day, lst.max_per_week, lst.frequency_cap_action
                )
    return caps
