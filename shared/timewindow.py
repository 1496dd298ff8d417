"""Reporting days in the account's own timezone, look-back windows and API span limits; DST-safe.

All "days" are ``datetime.date`` in an IANA timezone; instants are timezone-aware ``datetime``s.
Calendar arithmetic is done on dates (never "now minus 24 hours"), so 23- and 25-hour days and
UTC+14 / UTC-11 / half-hour offsets cannot shift a window by a day.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.errors import InputError

__all__ = [
    "META_INSIGHTS_TZ",
    "DateRange",
    "day_bounds_utc",
    "lagged_end",
    "local_today",
    "local_yesterday",
    "lookback",
    "pacific_end_time_to_date",
    "parse_date",
    "split_range",
    "zone",
]

#: Meta stamps daily insight values with the end of the day in US Pacific time.
META_INSIGHTS_TZ = "America/Los_Angeles"

_ONE_DAY = timedelta(days=1)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


@lru_cache(maxsize=256)
def zone(tz: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name; ``ValueError`` for an unknown one."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown IANA timezone {tz!r}") from None


def _require_aware(now: datetime) -> None:
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, got {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (got a naive datetime)")


def _require_date(value: object, name: str) -> None:
    if isinstance(value, datetime) or not isinstance(value, date):
        raise TypeError(f"{name} must be a datetime.date, got {type(value).__name__}")


@dataclass(frozen=True)
class DateRange:
    """Inclusive range of calendar days ``start..end``."""

    start: date
    end: date

    def __post_init__(self) -> None:
        _require_date(self.start, "start")
        _require_date(self.end, "end")
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def __len__(self) -> int:
        return self.days

    def __iter__(self) -> Iterator[date]:
        day = self.start
        while day <= self.end:
            yield day
            day += _ONE_DAY

    def __contains__(self, day: object) -> bool:
        if isinstance(day, datetime) or not isinstance(day, date):
            return False
        return self.start <= day <= self.end

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def local_today(tz: str, now: datetime) -> date:
    """The calendar date at instant ``now`` in timezone ``tz``."""
    _require_aware(now)
    return now.astimezone(zone(tz)).date()


def local_yesterday(tz: str, now: datetime) -> date:
    """The last complete local day at ``now``: usually what a morning run reports."""
    return local_today(tz, now) - _ONE_DAY


def lookback(end: date, days: int) -> DateRange:
    """The ``days`` days ending at ``end`` (inclusive)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    return DateRange(end - timedelta(days=days - 1), end)


def lagged_end(tz: str, now: datetime, lag_days: int) -> date:
    """Local today minus ``lag_days``: the last day whose totals the API has consolidated."""
    if lag_days < 0:
        raise ValueError(f"lag_days must be >= 0, got {lag_days}")
    return local_today(tz, now) - timedelta(days=lag_days)


def split_range(start: date, end: date, max_days: int) -> list[DateRange]:
    """Contiguous chunks of at most ``max_days`` days covering ``start..end`` exactly, in order.

    For APIs with a maximum span per request (Facebook 93 days, Instagram 30, TikTok 60).
    """
    if max_days < 1:
        raise ValueError(f"max_days must be >= 1, got {max_days}")
    whole = DateRange(start, end)  # validates types and order
    chunks: list[DateRange] = []
    chunk_start = whole.start
    step = timedelta(days=max_days - 1)
    while chunk_start <= whole.end:
        chunk_end = min(chunk_start + step, whole.end)
        chunks.append(DateRange(chunk_start, chunk_end))
        chunk_start = chunk_end + _ONE_DAY
    return chunks


def day_bounds_utc(day: date, tz: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of local ``day`` in ``tz`` as UTC instants (23 or 25 hours across DST).

    A midnight skipped by a DST jump (e.g. America/Santiago) maps to the first instant of the day.
    """
    _require_date(day, "day")
    z = zone(tz)
    start = datetime.combine(day, time(0), tzinfo=z).astimezone(UTC)
    end = datetime.combine(day + _ONE_DAY, time(0), tzinfo=z).astimezone(UTC)
    return start, end


def pacific_end_time_to_date(end_time: str) -> date:
    """The reporting day of a Meta daily insight value.

    ``end_time`` marks the Pacific midnight that ENDS the day (``T07:00:00+0000`` in PDT,
    ``T08:00:00+0000`` in PST), so ``2026-09-03T07:00:00+0000`` is 2026-09-02. The instant is rounded to
    the nearest Pacific midnight first, so an hour's slack around a DST switch does not move the day.
    """
    text = end_time.strip() if isinstance(end_time, str) else ""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"end_time: expected an ISO 8601 instant, got {end_time!r}") from None
    if instant.tzinfo is None:
        raise ValueError(f"end_time: expected an offset, got {end_time!r}")
    local = instant.astimezone(zone(META_INSIGHTS_TZ))
    nearest_midnight = (local + timedelta(hours=12)).date()
    return nearest_midnight - _ONE_DAY


def parse_date(value: object, field: str) -> date:
    """A strict ``YYYY-MM-DD`` date from user input; ``InputError(field, ...)`` otherwise."""
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        raise InputError(field, f"expected a date as YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(field, f"not a valid calendar date: {value!r}") from None
