"""Marketing quiet hours in the recipient's local time."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.quiet_hours import next_allowed, zones_for_number

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")

US_NYC = "12125551234"  # 212: New York
US_LA = "13105551234"  # 310: Los Angeles
CA_TORONTO = "14165551234"  # 416: Toronto
US_ALASKA = "19075551234"  # 907: Anchorage and Adak
UK_MOBILE = "447911123456"
RU_MOBILE = "79141234567"  # Russian mobile: Europe/Bucharest (sic) to Asia/Anadyr
AU_MOBILE = "61412345678"  # Australian mobile: Cocos Islands to Lord Howe Island
US_TOLL_FREE = "18005551234"  # 42 zones, from Guam (UTC+10) to Pago Pago (UTC-11)


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold).astimezone(UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- zones ----------------------------------------------------------------------------------------


def test_zones() -> None:
    assert [z.key for z in zones_for_number(US_NYC)] == ["America/New_York"]
    assert [z.key for z in zones_for_number(CA_TORONTO)] == ["America/Toronto"]
    assert "Europe/London" in [z.key for z in zones_for_number(UK_MOBILE)]
    assert len(zones_for_number(RU_MOBILE)) > 5
    assert len(zones_for_number(AU_MOBILE)) > 5


@pytest.mark.parametrize("digits", ["1", "999999", "0", "8", "80012"])
def test_unknown_numbers_use_the_default_zone(digits: str) -> None:
    assert [z.key for z in zones_for_number(digits)] == ["America/New_York"]
    assert [z.key for z in zones_for_number(digits, "Europe/Berlin")] == ["Europe/Berlin"]


@pytest.mark.parametrize("digits", ["", "+12125551234", "1212 555", "１２１２"])
def test_bad_digits(digits: str) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        next_allowed(digits, utc(2024, 6, 3, 12))


def test_bad_default_zone() -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        next_allowed("1", utc(2024, 6, 3, 12), default_tz="Mars/Olympus_Mons")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_allowed(US_NYC, datetime(2024, 6, 3, 12))
    with pytest.raises(ValueError, match="empty"):
        next_allowed(US_NYC, utc(2024, 6, 3, 12), start=time(9), end=time(9))
    with pytest.raises(ValueError, match="tzinfo"):
        next_allowed(US_NYC, utc(2024, 6, 3, 12), start=time(9, tzinfo=UTC))
    with pytest.raises(ValueError, match="whole minute"):
        next_allowed(US_NYC, utc(2024, 6, 3, 12), start=time(8, 0, 10), end=time(8, 0, 50))


# --- single zone ----------------------------------------------------------------------------------


def test_us_early_morning_waits_until_eight() -> None:
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 7, 30)) == local(NEW_YORK, 2024, 6, 3, 8, 0)


def test_us_at_nine_pm_waits_until_tomorrow() -> None:
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 21, 0)) == local(NEW_YORK, 2024, 6, 4, 8, 0)
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 23, 59)) == local(NEW_YORK, 2024, 6, 4, 8, 0)
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 4, 0, 0)) == local(NEW_YORK, 2024, 6, 4, 8, 0)


@pytest.mark.parametrize(("hour", "minute"), [(8, 0), (12, 0), (20, 59)])
def test_us_inside_the_window_is_allowed(hour: int, minute: int) -> None:
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, hour, minute)) is None
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 20, 59, 59)) is None


def test_result_is_in_utc_and_rounded_up_to_a_minute() -> None:
    now = local(NEW_YORK, 2024, 6, 3, 7, 59, 59, 999999)
    result = next_allowed(US_NYC, now)
    assert result == utc(2024, 6, 3, 12, 0)
    assert result is not None and result.tzinfo is UTC
    # A start with seconds rounds up.
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 7), start=time(8, 0, 30)) == utc(2024, 6, 3, 12, 1)


def test_now_in_another_offset_is_accepted() -> None:
    now = datetime(2024, 6, 3, 13, 30, tzinfo=timezone(timedelta(hours=2)))  # 11:30 UTC = 07:30 EDT
    assert next_allowed(US_NYC, now) == utc(2024, 6, 3, 12, 0)


def test_west_coast() -> None:
    la = ZoneInfo("America/Los_Angeles")
    # 12:00 UTC is 08:00 in New York but 05:00 in Los Angeles.
    assert next_allowed(US_LA, utc(2024, 6, 3, 12)) == local(la, 2024, 6, 3, 8, 0)


def test_uk_number_winter_and_summer() -> None:
    # The UK mobile range maps to London, Guernsey, Jersey and the Isle of Man: all the same clock.
    assert next_allowed(UK_MOBILE, utc(2024, 1, 15, 7, 30)) == utc(2024, 1, 15, 8, 0)  # GMT
    assert next_allowed(UK_MOBILE, utc(2024, 7, 15, 6, 30)) == utc(2024, 7, 15, 7, 0)  # BST
    assert next_allowed(UK_MOBILE, utc(2024, 7, 15, 7, 30)) is None
    assert next_allowed(UK_MOBILE, utc(2024, 7, 15, 20, 0)) == local(LONDON, 2024, 7, 16, 8, 0)


@pytest.mark.parametrize(
    ("time_zone", "now", "expected"),
    [
        # A New York number whose subscriber lives in Los Angeles: 06:30 there (09:30 in New York) waits until 08:00
        # Los Angeles time; 20:30 there (23:30 in New York) is allowed.
        ("America/Los_Angeles", local(ZoneInfo("America/Los_Angeles"), 2026, 7, 1, 6, 30),
         local(ZoneInfo("America/Los_Angeles"), 2026, 7, 1, 8, 0)),
        ("America/Los_Angeles", local(ZoneInfo("America/Los_Angeles"), 2026, 7, 1, 20, 30), None),
        # No zone, an unknown zone or a malformed one: the number's zone (New York) decides.
        (None, local(NEW_YORK, 2026, 7, 1, 23, 30), local(NEW_YORK, 2026, 7, 2, 8, 0)),
        ("Mars/Olympus_Mons", local(NEW_YORK, 2026, 7, 1, 23, 30), local(NEW_YORK, 2026, 7, 2, 8, 0)),
        ("../../etc/passwd", local(NEW_YORK, 2026, 7, 1, 7, 0), local(NEW_YORK, 2026, 7, 1, 8, 0)),
        ("", local(NEW_YORK, 2026, 7, 1, 12, 0), None),
    ],
)
def test_the_subscribers_own_zone_wins_over_the_numbers(
    time_zone: str | None, now: datetime, expected: datetime | None
) -> None:
    assert next_allowed(US_NYC, now, time_zone=time_zone) == expected


def test_custom_window_and_default_zone_for_unknown_numbers() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = local(berlin, 2024, 6, 3, 9, 0)
    assert next_allowed("999999", now, start=time(10), end=time(18), default_tz="Europe/Berlin") == local(
        berlin, 2024, 6, 3, 10, 0
    )


# --- several zones --------------------------------------------------------------------------------


def test_russian_mobile_needs_every_zone_awake() -> None:
    # Winter: the westernmost zone (Europe/Bucharest, UTC+2) opens at 06:00 UTC; the easternmost
    # (Asia/Anadyr and Asia/Kamchatka, UTC+12) closes at 09:00 UTC.
    assert next_allowed(RU_MOBILE, utc(2024, 1, 15, 0, 0)) == utc(2024, 1, 15, 6, 0)
    assert next_allowed(RU_MOBILE, utc(2024, 1, 15, 7, 0)) is None
    assert next_allowed(RU_MOBILE, utc(2024, 1, 15, 9, 0)) == utc(2024, 1, 16, 6, 0)
    # Moscow-only numbers just follow Moscow (UTC+3).
    assert next_allowed("74951234567", utc(2024, 1, 15, 4, 0)) == utc(2024, 1, 15, 5, 0)


def test_australian_mobile_needs_every_zone_awake() -> None:
    # January: Cocos Islands (UTC+6:30) opens at 01:30 UTC; Sydney and Lord Howe (UTC+11, DST) close at 10:00.
    assert next_allowed(AU_MOBILE, utc(2024, 1, 15, 0, 0)) == utc(2024, 1, 15, 1, 30)
    assert next_allowed(AU_MOBILE, utc(2024, 1, 15, 9, 59)) is None
    assert next_allowed(AU_MOBILE, utc(2024, 1, 15, 10, 0)) == utc(2024, 1, 16, 1, 30)
    # A Sydney landline has one zone: 07:00 local (20:00 UTC the day before) waits until 08:00 local.
    sydney = ZoneInfo("Australia/Sydney")
    assert next_allowed("61291234567", local(sydney, 2024, 1, 15, 7, 0)) == local(sydney, 2024, 1, 15, 8, 0)


def test_us_area_code_with_two_zones() -> None:
    # 907 covers Anchorage (UTC-9 in winter) and Adak (UTC-10): the later zone opens last, the earlier closes first.
    assert next_allowed(US_ALASKA, utc(2024, 1, 15, 17, 30)) == utc(2024, 1, 15, 18, 0)  # 08:00 Adak
    assert next_allowed(US_ALASKA, utc(2024, 1, 16, 5, 59)) is None
    assert next_allowed(US_ALASKA, utc(2024, 1, 16, 6, 0)) == utc(2024, 1, 16, 18, 0)  # 21:00 Anchorage closes


def test_canadian_area_code_has_one_zone() -> None:
    toronto = ZoneInfo("America/Toronto")
    assert next_allowed(CA_TORONTO, local(toronto, 2024, 6, 3, 6, 0)) == local(toronto, 2024, 6, 3, 8, 0)


def test_toll_free_number_has_a_common_default_window() -> None:
    # A 13-hour window is longer than half a day, so even Guam and Pago Pago (21 hours apart) share
    # instants: 08:00 in Guam is 11:00 the previous day in Pago Pago. The last zone to open is Guam
    # (22:00 UTC), the first to close St. John's, Newfoundland (UTC-3:30 in winter: 00:30 UTC).
    assert next_allowed(US_TOLL_FREE, utc(2024, 1, 15, 12, 0)) == utc(2024, 1, 15, 22, 0)
    assert next_allowed(US_TOLL_FREE, utc(2024, 1, 16, 0, 29)) is None
    assert next_allowed(US_TOLL_FREE, utc(2024, 1, 16, 0, 30)) == utc(2024, 1, 16, 22, 0)


def test_zones_without_common_window_use_the_first_zone() -> None:
    # 10:00-12:00 is 20:00-22:00 UTC in Adak but 15:00-17:00 UTC in New York: no common instant.
    first = zones_for_number(US_TOLL_FREE)[0]
    assert first.key == "America/Adak"
    start, end = time(10), time(12)
    now = local(first, 2024, 1, 15, 7, 0)
    assert next_allowed(US_TOLL_FREE, now, start=start, end=end) == local(first, 2024, 1, 15, 10, 0)
    assert next_allowed(US_TOLL_FREE, local(first, 2024, 1, 15, 11, 0), start=start, end=end) is None


# --- DST ------------------------------------------------------------------------------------------


def test_spring_forward_in_new_york() -> None:
    # 2024-03-10: 02:00 EST becomes 03:00 EDT. 07:30 that morning is EDT, so 08:00 is 12:00 UTC.
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 3, 10, 7, 30)) == utc(2024, 3, 10, 12, 0)
    # From the evening before (EST) to the morning after the change.
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 3, 9, 22, 0)) == utc(2024, 3, 10, 12, 0)
    # During the night, just after the jump.
    assert next_allowed(US_NYC, utc(2024, 3, 10, 7, 0)) == utc(2024, 3, 10, 12, 0)


def test_fall_back_in_new_york() -> None:
    # 2024-11-03: 02:00 EDT becomes 01:00 EST. 08:00 that morning is EST, so 13:00 UTC.
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 11, 3, 7, 30)) == utc(2024, 11, 3, 13, 0)
    # The first and the second 01:30 both wait until 08:00 EST.
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 11, 3, 1, 30, fold=0)) == utc(2024, 11, 3, 13, 0)
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 11, 3, 1, 30, fold=1)) == utc(2024, 11, 3, 13, 0)
    # The evening before closes at 21:00 EDT.
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 11, 2, 21, 0)) == utc(2024, 11, 3, 13, 0)
    assert next_allowed(US_NYC, utc(2024, 11, 3, 0, 59)) is None  # 20:59 EDT


def test_window_start_inside_the_spring_forward_gap() -> None:
    # 02:30 does not exist on 2024-03-10 in New York: the window opens when the clock jumps, 03:00 EDT.
    start, end = time(2, 30), time(5, 0)
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 3, 10, 1, 0), start=start, end=end) == utc(2024, 3, 10, 7, 0)
    assert next_allowed(US_NYC, utc(2024, 3, 10, 7, 0), start=start, end=end) is None
    # The next day it opens at 02:30 EDT again.
    assert next_allowed(US_NYC, utc(2024, 3, 10, 9, 0), start=start, end=end) == utc(2024, 3, 11, 6, 30)


def test_window_in_the_repeated_hour_counts_its_first_occurrence() -> None:
    # 01:00-01:45 on 2024-11-03 in New York: open during the first 01:00-01:45 (EDT) only.
    start, end = time(1, 0), time(1, 45)
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 11, 3, 1, 10, fold=0), start=start, end=end) is None
    second = next_allowed(US_NYC, local(NEW_YORK, 2024, 11, 3, 1, 10, fold=1), start=start, end=end)
    assert second == local(NEW_YORK, 2024, 11, 4, 1, 0)


# --- overnight windows ----------------------------------------------------------------------------


def test_overnight_window() -> None:
    start, end = time(22, 0), time(6, 0)
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 12, 0), start=start, end=end) == local(
        NEW_YORK, 2024, 6, 3, 22, 0
    )
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 3, 23, 0), start=start, end=end) is None
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 4, 5, 59), start=start, end=end) is None  # opened yesterday
    assert next_allowed(US_NYC, local(NEW_YORK, 2024, 6, 4, 6, 0), start=start, end=end) == local(
        NEW_YORK, 2024, 6, 4, 22, 0
    )


def test_overnight_window_across_fall_back() -> None:
    # 22:00 EDT on 2024-11-02 to 06:00 EST on 2024-11-03: 9 real hours.
    start, end = time(22, 0), time(6, 0)
    assert next_allowed(US_NYC, utc(2024, 11, 3, 10, 59), start=start, end=end) is None  # 05:59 EST
    assert next_allowed(US_NYC, utc(2024, 11, 3, 11, 0), start=start, end=end) == utc(2024, 11, 4, 3, 0)


# --- properties -----------------------------------------------------------------------------------

NUMBERS = [US_NYC, US_LA, CA_TORONTO, US_ALASKA, UK_MOBILE, RU_MOBILE, AU_MOBILE, US_TOLL_FREE, "999999", "61291234567"]
minutes_of_day = st.integers(0, 24 * 60 - 1).map(lambda m: time(m // 60, m % 60))


@settings(max_examples=300, deadline=None)
@given(
    number=st.sampled_from(NUMBERS),
    now=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)),
    start=minutes_of_day,
    end=minutes_of_day,
)
def test_result_is_future_whole_minute_allowed_and_earliest(number: str, now: datetime, start: time, end: time) -> None:
    if start == end:
        return
    result = next_allowed(number, now, start=start, end=end)
    if result is None:
        return
    assert result > now
    assert result.tzinfo is UTC
    assert (result.second, result.microsecond) == (0, 0)
    assert next_allowed(number, result, start=start, end=end) is None
    # No earlier whole minute after now was allowed.
    before = result - timedelta(minutes=1)
    if before > now:
        assert next_allowed(number, before, start=start, end=end) is not None


@settings(max_examples=300, deadline=None)
@given(now=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)))
def test_default_window_matches_the_local_clock_in_new_york(now: datetime) -> None:
    # 08:00-21:00 never touches the 02:00 DST changes, so plain wall-clock arithmetic is the truth.
    wall = now.astimezone(NEW_YORK)
    result = next_allowed(US_NYC, now)
    if time(8) <= wall.time() < time(21):
        assert result is None
    else:
        day = wall.date() if wall.time() < time(8) else wall.date() + timedelta(days=1)
        assert result == datetime(day.year, day.month, day.day, 8, tzinfo=NEW_YORK).astimezone(UTC)
