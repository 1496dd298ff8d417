"""Pure raw-JSON → row mappers for YouTube; the only module that knows the APIs' JSON keys.

No I/O, no clock: every "as of" date is passed in. Data API counts arrive as JSON strings (uint64);
Analytics rows are positional arrays described by ``columnHeaders``, and ``rows`` is absent when empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

from functions.youtube import settings

__all__ = [
    "ChannelInfo",
    "VideoRef",
    "channel_info",
    "day_metric_row",
    "followers_row",
    "parse_duration",
    "parse_instant",
    "playlist_refs",
    "post_metric_row",
    "post_row",
    "report_records",
    "to_int",
    "unique_records",
    "video_stats",
]

_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration(value: object) -> float | None:
    """ISO-8601 duration (``PT1H2M3S``, ``P1DT2M``, ``P0D``) → seconds; None when absent or malformed.

    Live streams report ``P0D`` (0 s). Years/months are not used by YouTube and are rejected.
    """
    if not isinstance(value, str) or not value.startswith("P") or value in ("P", "PT") or value.endswith("T"):
        return None
    m = _DURATION.fullmatch(value)
    if m is None:
        return None
    parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
    seconds = (parts.get("weeks", 0) * 7 * 86400 + parts.get("days", 0) * 86400 + parts.get("hours", 0) * 3600
               + parts.get("minutes", 0) * 60 + parts.get("seconds", 0))
    return int(seconds) if seconds == int(seconds) else seconds


def to_int(value: object) -> int | None:
    """A count as the APIs send it (JSON string ``"123"``, int, float ``12.0``) → int; None if absent/bad."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if f == f and abs(f) != float("inf") else None
    return None


def parse_instant(value: object) -> datetime | None:
    """RFC 3339 (``2026-01-02T03:04:05Z`` or with an offset / fraction) → aware UTC datetime; None if bad."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


# --- channels.list ---------------------------------------------------------------------------------


class ChannelInfo(dict[str, Any]):
    """``{"channel_id", "title", "uploads_playlist", "subscribers", "video_count", "view_count"}``."""


def channel_info(item: Mapping[str, Any]) -> ChannelInfo:
    """One ``channels.list`` item → the facts the pipeline needs (subscribers None when hidden)."""
    stats = item.get("statistics") or {}
    related = (item.get("contentDetails") or {}).get("relatedPlaylists") or {}
    hidden = bool(stats.get("hiddenSubscriberCount"))
    return ChannelInfo(
        channel_id=item.get("id"),
        title=(item.get("snippet") or {}).get("title"),
        uploads_playlist=related.get("uploads") or None,
        subscribers=None if hidden else to_int(stats.get("subscriberCount")),
        video_count=to_int(stats.get("videoCount")),
        view_count=to_int(stats.get("viewCount")),
    )


# --- playlistItems.list ----------------------------------------------------------------------------


class VideoRef(tuple[str, datetime | None]):
    """(video_id, published_at or None) from an uploads-playlist item."""

    __slots__ = ()

    @property
    def video_id(self) -> str:
        return self[0]

    @property
    def published_at(self) -> datetime | None:
        return self[1]


def playlist_refs(items: list[Mapping[str, Any]] | None) -> Iterator[VideoRef]:
    """Video refs of one ``playlistItems.list`` page, in the API's order; items without an id are skipped.

    Private/deleted uploads have no ``videoPublishedAt``: their ref carries ``None``.
    """
    for item in items or ():
        cd = item.get("contentDetails") or {}
        vid = cd.get("videoId") or ((item.get("snippet") or {}).get("resourceId") or {}).get("videoId")
        if isinstance(vid, str) and vid:
            yield VideoRef((vid, parse_instant(cd.get("videoPublishedAt"))))


# --- videos.list -----------------------------------------------------------------------------------


def post_row(item: Mapping[str, Any], account_id: str) -> dict[str, Any] | None:
    """One ``videos.list`` item → a ``social.posts`` row; None when the item has no id."""
    vid = item.get("id")
    if not isinstance(vid, str) or not vid:
        return None
    snippet = item.get("snippet") or {}
    content = item.get("contentDetails") or {}
    extra: dict[str, Any] = {}
    for key, name in (("categoryId", "category_id"), ("liveBroadcastContent", "live_broadcast_content"),
                      ("defaultAudioLanguage", "default_audio_language")):
        if snippet.get(key) is not None:
            extra[name] = snippet[key]
    if content.get("duration") is not None:
        extra["duration_iso"] = content["duration"]
    return {
        "platform": settings.PLATFORM,
        "post_id": vid,
        "account_id": account_id,
        "published_at": parse_instant(snippet.get("publishedAt")),
        "title": snippet.get("title"),
        "permalink": settings.WATCH_URL.format(video_id=vid),
        "media_type": "video",
        "duration_seconds": parse_duration(content.get("duration")),
        "extra": extra,
    }


def video_stats(item: Mapping[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(viewCount, likeCount, commentCount) of a ``videos.list`` item; None where hidden or absent."""
    stats = item.get("statistics") or {}
    return to_int(stats.get("viewCount")), to_int(stats.get("likeCount")), to_int(stats.get("commentCount"))


# --- Analytics reports.query -----------------------------------------------------------------------


def report_records(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A ``resultTable`` → one dict per row keyed by column name; ``[]`` when ``rows`` is absent."""
    names = [str(h.get("name")) for h in response.get("columnHeaders") or ()]
    rows = response.get("rows") or ()
    return [dict(zip(names, row, strict=False)) for row in rows]


def unique_records(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``records`` with one record per ``key`` value: the LAST one wins (a later page is the fresher answer).

    Analytics pages a sorted ranking with ``startIndex``; if the ranking moves between two requests a
    video can show up on both pages. Order: first appearance.
    """
    by_key: dict[Any, dict[str, Any]] = {}
    for rec in records:
        by_key[rec.get(key)] = rec
    if len(by_key) == len(records):
        return records
    return list(by_key.values())


def post_metric_row(
    video_id: str,
    account_id: str,
    snapshot_date: date,
    analytics_through: date,
    analytics: Mapping[str, Any] | None,
    stats: tuple[int | None, int | None, int | None] | None,
) -> dict[str, Any]:
    """One ``social.post_metrics_daily`` row.

    Columns (views, likes, comments, shares, watch time, average view duration) are Analytics lifetime
    totals consolidated through ``analytics_through`` (NULL, with ``analytics_through`` NULL, when the
    video has no Analytics row); ``extra.data_api_*`` are Data API counts as of ``snapshot_date``.
    """
    extra: dict[str, Any] = {}
    if stats is not None:
        extra["data_api_view_count"], extra["data_api_like_count"], extra["data_api_comment_count"] = stats
    row: dict[str, Any] = {
        "platform": settings.PLATFORM,
        "post_id": video_id,
        "snapshot_date": snapshot_date,
        "account_id": account_id,
        "views": None,
        "likes": None,
        "comments": None,
        "shares": None,
        "watch_time_seconds": None,
        "avg_view_duration_seconds": None,
        "analytics_through": None,
        "extra": extra,
    }
    if analytics is not None:
        minutes = to_int(analytics.get("estimatedMinutesWatched"))
        row.update(
            views=to_int(analytics.get("views")),
            likes=to_int(analytics.get("likes")),
            comments=to_int(analytics.get("comments")),
            shares=to_int(analytics.get("shares")),
            watch_time_seconds=None if minutes is None else minutes * 60,
            avg_view_duration_seconds=to_int(analytics.get("averageViewDuration")),
            analytics_through=analytics_through,
        )
        extra["subscribers_gained"] = to_int(analytics.get("subscribersGained"))
    return row


def day_metric_row(record: Mapping[str, Any], account_id: str) -> dict[str, Any] | None:
    """One ``dimensions=day`` record → a ``social.account_metrics_daily`` row (no ``followers`` column)."""
    try:
        day = date.fromisoformat(str(record.get("day")))
    except ValueError:
        return None
    minutes = to_int(record.get("estimatedMinutesWatched"))
    return {
        "platform": settings.PLATFORM,
        "account_id": account_id,
        "metric_date": day,
        "views": to_int(record.get("views")),
        "watch_time_seconds": None if minutes is None else minutes * 60,
        "likes": to_int(record.get("likes")),
        "comments": to_int(record.get("comments")),
        "shares": to_int(record.get("shares")),
        "followers_gained": to_int(record.get("subscribersGained")),
        "followers_lost": to_int(record.get("subscribersLost")),
    }


def followers_row(account_id: str, snapshot_date: date, subscribers: int) -> dict[str, Any]:
    """The lifetime subscriber count (channels.list) on the snapshot date's account row."""
    return {"platform": settings.PLATFORM, "account_id": account_id, "metric_date": snapshot_date,
            "followers": subscribers}
