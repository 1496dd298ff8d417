"""Account-local days, windows and spans across DST, half-hour offsets and the date line."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from shared.errors import InputError
from shared.timewindow import (
    DateRange,
    day_bounds_utc,
    lagged_end,
    local_today,
    local_yesterday,
    lookback,
    pacific_end_time_to_date,
    parse_date,
    split_range,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- today / yesterday -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "now", "today"),
    [
        # one instant, three calendar days: UTC+14 and UTC-11 are 25 hours apart
        ("Pacific/Kiritimati", utc(2026, 9, 2, 10, 30), date(2026, 9, 3)),
        ("UTC", utc(2026, 9, 2, 10, 30), date(2026, 9, 2)),
        ("Pacific/Pago_Pago", utc(2026, 9, 2, 10, 30), date(2026, 9, 1)),
        # around local midnight in UTC+14
        ("Pacific/Kiritimati", utc(2026, 9, 2, 9, 59, 59), date(2026, 9, 2)),
        ("Pacific/Kiritimati", utc(2026, 9, 2, 10, 0, 0), date(2026, 9, 3)),
        # around local midnight in UTC-11
        ("Pacific/Pago_Pago", utc(2026, 9, 2, 10, 59, 59), date(2026, 9, 1)),
        ("Pacific/Pago_Pago", utc(2026, 9, 2, 11, 0, 0), date(2026, 9, 2)),
        # UTC+5:30
        ("Asia/Kolkata", utc(2026, 9, 1, 18, 29, 59), date(2026, 9, 1)),
        ("Asia/Kolkata", utc(2026, 9, 1, 18, 30, 0), date(2026, 9, 2)),
        # UTC-3 (the product default)
        ("America/Argentina/Buenos_Aires", utc(2026, 9, 3, 2, 59), date(2026, 9, 2)),
        ("America/Argentina/Buenos_Aires", utc(2026, 9, 3, 3, 0), date(2026, 9, 3)),
        # New York on the spring-forward day (EDT from 07:00Z) and the next midnight (04:00Z)
        ("America/New_York", utc(2026, 3, 8, 4, 59), date(2026, 3, 7)),
        ("America/New_York", utc(2026, 3, 8, 5, 0), date(2026, 3, 8)),
        ("America/New_York", utc(2026, 3, 9, 3, 59), date(2026, 3, 8)),
        ("America/New_York", utc(2026, 3, 9, 4, 0), date(2026, 3, 9)),
        # New York fall-back: 01:30 happens twice, both on Nov 1; the day ends at 05:00Z
        ("America/New_York", utc(2026, 11, 1, 5, 30), date(2026, 11, 1)),
        ("America/New_York", utc(2026, 11, 1, 6, 30), date(2026, 11, 1)),
        ("America/New_York", utc(2026, 11, 2, 4, 59), date(2026, 11, 1)),
        ("America/New_York", utc(2026, 11, 2, 5, 0), date(2026, 11, 2)),
        # London: BST midnight is 23:00Z
        ("Europe/London", utc(2026, 7, 1, 22, 59), date(2026, 7, 1)),
        ("Europe/London", utc(2026, 7, 1, 23, 0), date(2026, 7, 2)),
        # Sydney: southern-hemisphere summer time (+11) in January, +10 in July
        ("Australia/Sydney", utc(2026, 1, 14, 12, 59), date(2026, 1, 14)),
        ("Australia/Sydney", utc(2026, 1, 14, 13, 0), date(2026, 1, 15)),
        ("Australia/Sydney", utc(2026, 7, 14, 13, 59), date(2026, 7, 14)),
        ("Australia/Sydney", utc(2026, 7, 14, 14, 0), date(2026, 7, 15)),
    ],
)
def test_local_today(tz: str, now: datetime, today: date) -> None:
    assert local_today(tz, now) == today
    assert local_yesterday(tz, now) == today - timedelta(days=1)


def test_local_today_accepts_any_aware_now() -> None:
    now = datetime(2026, 9, 2, 21, 30, tzinfo=timezone(timedelta(hours=-3)))  # 00:30Z on Sep 3
    assert local_today("UTC", now) == date(2026, 9, 3)
    assert local_today("America/Argentina/Buenos_Aires", now) == date(2026, 9, 2)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        local_today("UTC", datetime(2026, 9, 2, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        lagged_end("UTC", datetime(2026, 9, 2, 12, 0), 3)


def test_unknown_timezone() -> None:
    with pytest.raises(ValueError, match="unknown IANA timezone"):
        local_today("Mars/Olympus", utc(2026, 1, 1))


def test_yesterday_of_every_hour_is_exactly_one_calendar_day_back() -> None:
    """Walking an hour at a time through a year never skips or repeats a local day (DST included)."""
    for tz in ("America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata", "Pacific/Kiritimati"):
        now = utc(2026, 1, 1)
        days: set[date] = set()
        while now < utc(2027, 1, 1):
            today = local_today(tz, now)
            assert local_yesterday(tz, now) == today - timedelta(days=1)
            days.add(today)
            now += timedelta(hours=1)
        ordered = sorted(days)
        assert all((b - a).days == 1 for a, b in itertools.pairwise(ordered))


# --- ranges -------------------------------------------------------------------------------------------------


def test_date_range() -> None:
    r = DateRange(date(2026, 2, 27), date(2026, 3, 2))
    assert r.days == len(r) == 4
    assert list(r) == [date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 2)]
    assert date(2026, 3, 1) in r
    assert date(2026, 3, 3) not in r and date(2026, 2, 26) not in r
    assert "2026-03-01" not in r
    assert str(r) == "2026-02-27..2026-03-02"
    assert DateRange(date(2026, 1, 1), date(2026, 1, 1)).days == 1
    with pytest.raises(ValueError):
        DateRange(date(2026, 1, 2), date(2026, 1, 1))
    with pytest.raises(TypeError):
        DateRange(datetime(2026, 1, 1), date(2026, 1, 2))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        r.start = date(2020, 1, 1)  # type: ignore[misc]


def test_lookback() -> None:
    r = lookback(date(2026, 3, 10), 28)
    assert r == DateRange(date(2026, 2, 11), date(2026, 3, 10))
    assert r.days == 28
    assert lookback(date(2026, 3, 10), 1) == DateRange(date(2026, 3, 10), date(2026, 3, 10))
    assert lookback(date(2024, 3, 1), 2).start == date(2024, 2, 29)  # leap day
    with pytest.raises(ValueError):
        lookback(date(2026, 3, 10), 0)


def test_lagged_end_uses_the_account_day() -> None:
    now = utc(2026, 9, 2, 10, 30)
    assert lagged_end("Pacific/Kiritimati", now, 5) == date(2026, 8, 29)
    assert lagged_end("Pacific/Pago_Pago", now, 5) == date(2026, 8, 27)
    assert lagged_end("UTC", now, 0) == date(2026, 9, 2)
    with pytest.raises(ValueError):
        lagged_end("UTC", now, -1)


@pytest.mark.parametrize("max_days", [1, 2, 7, 30, 60, 93])
def test_split_range_is_exact_contiguous_and_bounded(max_days: int) -> None:
    rnd = random.Random(max_days)
    for _ in range(300):
        start = date(2023, 1, 1) + timedelta(days=rnd.randrange(1500))
        end = start + timedelta(days=rnd.randrange(400))
        chunks = split_range(start, end, max_days)
        assert chunks[0].start == start and chunks[-1].end == end
        for a, b in itertools.pairwise(chunks):
            assert b.start == a.end + timedelta(days=1)
        assert all(c.days == max_days for c in chunks[:-1])
        assert 1 <= chunks[-1].days <= max_days
        assert sum(c.days for c in chunks) == (end - start).days + 1
        assert len(chunks) == -(-((end - start).days + 1) // max_days)


def test_split_range_examples_and_errors() -> None:
    assert split_range(date(2026, 1, 1), date(2026, 1, 1), 93) == [DateRange(date(2026, 1, 1), date(2026, 1, 1))]
    assert split_range(date(2026, 1, 1), date(2026, 3, 1), 30) == [
        DateRange(date(2026, 1, 1), date(2026, 1, 30)),
        DateRange(date(2026, 1, 31), date(2026, 3, 1)),
    ]
    with pytest.raises(ValueError):
        split_range(date(2026, 1, 2), date(2026, 1, 1), 30)
    with pytest.raises(ValueError):
        split_range(date(2026, 1, 1), date(2026, 1, 2), 0)


# --- day bounds -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "start", "end", "hours"),
    [
        ("America/New_York", date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
        ("America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), 25),
        ("America/New_York", date(2026, 7, 4), utc(2026, 7, 4, 4), utc(2026, 7, 5, 4), 24),
        ("Europe/London", date(2026, 3, 29), utc(2026, 3, 29, 0), utc(2026, 3, 29, 23), 23),
        ("Europe/London", date(2026, 10, 25), utc(2026, 10, 24, 23), utc(2026, 10, 26, 0), 25),
        ("Australia/Sydney", date(2026, 4, 5), utc(2026, 4, 4, 13), utc(2026, 4, 5, 14), 25),
        ("Australia/Sydney", date(2026, 10, 4), utc(2026, 10, 3, 14), utc(2026, 10, 4, 13), 23),
        ("Asia/Kolkata", date(2026, 9, 2), utc(2026, 9, 1, 18, 30), utc(2026, 9, 2, 18, 30), 24),
        ("Pacific/Kiritimati", date(2026, 9, 2), utc(2026, 9, 1, 10), utc(2026, 9, 2, 10), 24),
        ("Pacific/Pago_Pago", date(2026, 9, 2), utc(2026, 9, 2, 11), utc(2026, 9, 3, 11), 24),
        # Chile jumps from 24:00 to 01:00: the day starts at the first instant that exists (01:00 -03)
        ("America/Santiago", date(2026, 9, 6), utc(2026, 9, 6, 4), utc(2026, 9, 7, 3), 23),
    ],
)
def test_day_bounds_utc(tz: str, day: date, start: datetime, end: datetime, hours: int) -> None:
    got_start, got_end = day_bounds_utc(day, tz)
    assert (got_start, got_end) == (start, end)
    assert got_start.tzinfo is UTC and got_end.tzinfo is UTC
    assert got_end - got_start == timedelta(hours=hours)
    assert local_today(tz, got_start) == day
    assert local_today(tz, got_end - timedelta(microseconds=1)) == day
    assert local_today(tz, got_end) == day + timedelta(days=1)


def test_day_bounds_tile_the_timeline() -> None:
    for tz in ("America/New_York", "Australia/Sydney", "Europe/London", "America/Santiago"):
        day = date(2026, 1, 1)
        previous_end = day_bounds_utc(day, tz)[0]
        while day.year == 2026:
            start, end = day_bounds_utc(day, tz)
            assert start == previous_end
            assert timedelta(hours=23) <= end - start <= timedelta(hours=25)
            previous_end = end
            day += timedelta(days=1)


# --- Meta end_time ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("end_time", "day"),
    [
        ("2026-09-03T07:00:00+0000", date(2026, 9, 2)),  # PDT
        ("2026-01-11T08:00:00+0000", date(2026, 1, 10)),  # PST
        ("2026-03-08T08:00:00+0000", date(2026, 3, 7)),  # last PST midnight before spring-forward
        ("2026-03-09T07:00:00+0000", date(2026, 3, 8)),  # the 23-hour day
        ("2026-11-01T07:00:00+0000", date(2026, 10, 31)),
        ("2026-11-02T08:00:00+0000", date(2026, 11, 1)),  # the 25-hour day
        ("2026-09-03T08:00:00+0000", date(2026, 9, 2)),  # an hour off the PDT midnight: same day
        ("2026-09-03T07:00:00Z", date(2026, 9, 2)),
        ("2026-09-03T07:00:00+00:00", date(2026, 9, 2)),
    ],
)
def test_pacific_end_time_to_date(end_time: str, day: date) -> None:
    assert pacific_end_time_to_date(end_time) == day


def test_pacific_end_time_round_trips_every_day_of_two_years() -> None:
    day = date(2025, 1, 1)
    while day < date(2027, 1, 1):
        _, end = day_bounds_utc(day, "America/Los_Angeles")
        assert pacific_end_time_to_date(end.strftime("%Y-%m-%dT%H:%M:%S+0000")) == day
        day += timedelta(days=1)


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-09-03", "2026-09-03T07:00:00"])
def test_pacific_end_time_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="end_time"):
        pacific_end_time_to_date(bad)


# --- parse_date --------------------------------------------------------------------------------------------------


def test_parse_date() -> None:
    assert parse_date("2026-09-02", "start_date") == date(2026, 9, 2)
    assert parse_date("2024-02-29", "start_date") == date(2024, 2, 29)


@pytest.mark.parametrize(
    "bad", ["2026-9-2", "20260902", "2026-02-30", "2026-13-01", "", " 2026-09-02", "2026-09-02T00:00", None, 20260902]
)
def test_parse_date_rejects_with_the_field_name(bad: object) -> None:
    with pytest.raises(InputError) as info:
        parse_date(bad, "end_date")
    assert info.value.field == "end_date"
    assert info.value.to_json()["field"] == "end_date"
    assert "end_date" in str(info.value)
