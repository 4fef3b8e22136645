"""Marketing quiet hours in the recipient's local time.

The recipient's zone is the subscriber's own `time_zone` attribute when it names a known zone (the same rule as a
campaign's local-time send, gateway/campaigns.py): a number says where it was issued, not where its owner lives.
Otherwise a number's time zones come from ``phonenumbers`` (offline geocoding data). A number may map to several
zones (a US toll-free number, a Russian or Australian mobile): the rule is conservative, a message goes
only at an instant that is inside the sending window in every zone of the number (the latest opening to
the earliest closing). When no instant is inside the window in all the zones (a window shorter than the
spread of the offsets, e.g. 10:00-12:00 for a US toll-free number, which spans Guam to Newfoundland),
the first zone that ``phonenumbers`` lists is used alone, so such numbers are not blocked forever.
Whether a common window exists is judged over the coming 8 days (windows opening later do not count), so in
the rare zone sets whose overlap appears or vanishes with a DST change, the fallback applies only while no
common window is in sight.

Window semantics, in each zone's wall-clock time:

- ``start < end``: sending is allowed from ``start`` until ``end`` the same day, e.g. 08:00-21:00.
- ``start > end``: an overnight window, from ``start`` until ``end`` the next day, e.g. 22:00-06:00.
- The window opens at the first instant the local clock reads ``start`` or later and closes at the first
  instant it reads ``end`` or later. A time skipped by a spring-forward change opens (or closes) at the
  end of the gap, e.g. 02:30 on that day in New York is 03:00 EDT. A time repeated by a fall-back change
  counts once, at its first occurrence, so a window is never reopened by the clock going back.

All computations are on UTC instants, so the length of a window on a DST-change day is the real elapsed
time (e.g. 22:00-06:00 is 9 hours on the night of the fall-back change in New York).

Cost: a campaign asks once per recipient. The windows of a zone set are computed once per UTC day (cached),
so a call costs the number's zone lookup and a short scan; working the windows out per call cost three
times as much as the rest of a marketing row's admission.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers.timezone import time_zones_for_number

__all__ = ["named_zone", "next_allowed", "zones_for_number"]

_UNKNOWN_ZONE: Final = "Etc/Unknown"  # phonenumbers' answer when it has no zone for a number
_MINUTE: Final = timedelta(minutes=1)
# How far ahead a window counts: a week covers every case where a common window exists.
_DAYS_AHEAD: Final = 8

_Interval = tuple[datetime, datetime]  # [opens, closes) as aware UTC datetimes


@functools.lru_cache(maxsize=4096)
def _zone_names(digits: str) -> tuple[str, ...]:
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return ()
    return tuple(name for name in time_zones_for_number(number) if name != _UNKNOWN_ZONE)


@functools.lru_cache(maxsize=1024)
def named_zone(name: str | None) -> ZoneInfo | None:
    """The zone a subscriber's `time_zone` attribute names, or None when it names none this machine knows."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def zones_for_number(msisdn_e164_digits: str, default_tz: str = "America/New_York") -> tuple[ZoneInfo, ...]:
    """The time zones of a number in E.164 digits (no '+'), in ``phonenumbers`` order.

    A number ``phonenumbers`` cannot parse or place, and zone names the local tz database lacks,
    fall back to ``default_tz``.

    Raises:
        ValueError: ``msisdn_e164_digits`` is not a non-empty string of ASCII digits.
        ZoneInfoNotFoundError: ``default_tz`` is needed and is not a known zone.
    """
    if not (msisdn_e164_digits.isascii() and msisdn_e164_digits.isdigit()):
        raise ValueError(f"expected E.164 digits without '+', got {msisdn_e164_digits!r}")
    zones: list[ZoneInfo] = []
    for name in _zone_names(msisdn_e164_digits):
        try:
            zones.append(ZoneInfo(name))
        except ZoneInfoNotFoundError:
            continue  # an older tzdata than phonenumbers' data: skip that zone rather than fail the message
    return tuple(zones) or (ZoneInfo(default_tz),)


def _wall_to_utc(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The first UTC instant at which the clock in ``zone`` reads ``day`` ``wall`` or later."""
    local = datetime.combine(day, wall, tzinfo=zone)  # fold=0: the first of two repeated times
    instant = local.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    # ``wall`` falls in a gap (spring forward). fold=1 maps it with the offset after the change and
    # fold=0 with the offset before, so the change itself lies between the two: find, to the second,
    # the first instant whose wall time is not before ``wall``.
    lo = int(local.replace(fold=1).astimezone(UTC).timestamp())
    hi = int(instant.timestamp())
    lo, hi = min(lo, hi), max(lo, hi)
    target = local.replace(tzinfo=None)
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= target:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


def _windows(zone: ZoneInfo, utc_day: date, start: time, end: time) -> list[_Interval]:
    """The allowed intervals in ``zone``, in time order, for every instant of ``utc_day`` and _DAYS_AHEAD days
    after it: local days from two before ``utc_day`` (an overnight window that began the local day before
    may still be open; local dates run up to a day either side of UTC) to _DAYS_AHEAD + 2 after it."""
    overnight = start > end
    intervals: list[_Interval] = []
    for offset in range(-2, _DAYS_AHEAD + 3):
        day = utc_day + timedelta(days=offset)
        opens = _wall_to_utc(day, start, zone)
        closes = _wall_to_utc(day + timedelta(days=1) if overnight else day, end, zone)
        if opens < closes:
            intervals.append((opens, closes))
    return intervals


def _intersect(left: list[_Interval], right: list[_Interval]) -> list[_Interval]:
    """Intersection of two sorted lists of disjoint intervals."""
    out: list[_Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        opens = max(left[i][0], right[j][0])
        closes = min(left[i][1], right[j][1])
        if opens < closes:
            out.append((opens, closes))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return out


@functools.lru_cache(maxsize=1024)
def _day_plan(
    zone_names: tuple[str, ...], utc_day: date, start: time, end: time
) -> tuple[list[_Interval], list[_Interval]]:
    """(windows common to every zone, windows of the first zone alone) for the instants of ``utc_day``."""
    zones = [ZoneInfo(name) for name in zone_names]
    first = _windows(zones[0], utc_day, start, end)
    common = first
    for zone in zones[1:]:
        common = _intersect(common, _windows(zone, utc_day, start, end))
    return common, first


def _first_allowed(intervals: Iterable[_Interval], now: datetime) -> tuple[bool, datetime | None]:
    """(found, when): when is None if ``now`` is allowed, else the next allowed whole minute (within
    _DAYS_AHEAD days)."""
    horizon = now + timedelta(days=_DAYS_AHEAD)
    for opens, closes in intervals:
        if closes <= now:
            continue
        if opens > horizon:
            break
        if opens <= now:
            return True, None
        # Round up to a whole minute; a sliver of a window shorter than that is skipped.
        candidate = opens.replace(second=0, microsecond=0)
        if candidate < opens:
            candidate += _MINUTE
        if candidate < closes:
            return True, candidate
    return False, None


def next_allowed(
    msisdn_e164_digits: str,
    now: datetime,
    *,
    start: time = time(8, 0),
    end: time = time(21, 0),
    default_tz: str = "America/New_York",
    time_zone: str | None = None,
) -> datetime | None:
    """When a marketing message to this number may be sent: None if now, else the next allowed UTC minute.

    ``time_zone`` is the subscriber's own zone (attribute `time_zone`): when it names a known zone it is the only
    one used; else the number's zones are.

    The window ``[start, end)`` is in the recipient's local time (``start > end`` is an overnight
    window, see the module docstring); a number with several zones is allowed only when every one of
    them is inside the window. The result is an aware UTC datetime on a whole minute, strictly after
    ``now``, at which ``next_allowed`` returns None.

    Raises:
        ValueError: ``now`` is naive, ``start == end`` (an empty window) or the window holds no whole
            minute, ``start``/``end`` carry a tzinfo, or the number is not a string of digits.
        ZoneInfoNotFoundError: ``default_tz`` is needed and is not a known zone.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    if start.tzinfo is not None or end.tzinfo is not None:
        raise ValueError("start and end are local wall-clock times: pass them without tzinfo")
    if start == end:
        raise ValueError(f"empty sending window: start and end are both {start}")
    now = now.astimezone(UTC)
    own = named_zone(time_zone)
    zones = (own,) if own is not None else zones_for_number(msisdn_e164_digits, default_tz)
    common, first = _day_plan(tuple(z.key for z in zones), now.date(), start, end)
    found, when = _first_allowed(common, now)
    if not found and len(zones) > 1:
        # No instant suits every zone: rather than never sending, follow the first zone alone.
        found, when = _first_allowed(first, now)
    if not found:
        # One zone always has a window every day unless it holds no whole minute (08:00:10-08:00:50).
        raise ValueError(f"sending window {start}-{end} contains no whole minute")
    return when
