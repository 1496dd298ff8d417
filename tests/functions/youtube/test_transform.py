"""Pure transforms: ISO durations, string counts, missing fields, report tables, joins and the call plan."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from functions.youtube import transform
from functions.youtube.pipeline import plan_calls
from shared.joins import DuplicateKeyError, index_by, left_join


@pytest.mark.parametrize(("raw", "seconds"), [
    ("PT10M", 600), ("PT1H2M3S", 3723), ("PT45S", 45), ("P1DT2M", 86520), ("P0D", 0), ("PT0S", 0),
    ("PT1.5S", 1.5), ("P1W", 604800), ("PT36H", 129600),
    ("", None), ("P", None), ("PT", None), ("P1DT", None), ("10:00", None), (None, None), (600, None),
    ("P1Y", None), ("PT1M2H", None),
])
def test_parse_duration(raw: object, seconds: float | None) -> None:
    assert transform.parse_duration(raw) == seconds


@pytest.mark.parametrize(("raw", "value"), [
    ("123", 123), ("0", 0), (" 42 ", 42), (7, 7), (12.0, 12), ("1e3", 1000), ("18446744073709551615", 2**64 - 1),
    (None, None), ("", None), ("abc", None), (True, None), (float("nan"), None), ({}, None),
])
def test_to_int_reads_string_counts(raw: object, value: int | None) -> None:
    assert transform.to_int(raw) == value


def test_parse_instant() -> None:
    assert transform.parse_instant("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert transform.parse_instant("2026-01-02T03:04:05.123-03:00") == datetime(2026, 1, 2, 6, 4, 5, 123000,
                                                                                   tzinfo=UTC)
    assert transform.parse_instant("yesterday") is None
    assert transform.parse_instant(None) is None


def test_channel_info_hidden_subscribers_and_missing_parts() -> None:
    item = {"id": "UC1", "contentDetails": {"relatedPlaylists": {"uploads": "UU1"}},
            "statistics": {"subscriberCount": "1500", "videoCount": "12", "viewCount": "999"}}
    info = transform.channel_info(item)
    assert info == {"channel_id": "UC1", "title": None, "uploads_playlist": "UU1", "subscribers": 1500,
                    "video_count": 12, "view_count": 999}
    hidden = transform.channel_info({"id": "UC2", "statistics": {"hiddenSubscriberCount": True,
                                                                "subscriberCount": "0"}})
    assert hidden["subscribers"] is None and hidden["uploads_playlist"] is None and hidden["video_count"] is None


def test_playlist_refs_keep_order_and_private_items() -> None:
    items = [{"contentDetails": {"videoId": "a", "videoPublishedAt": "2026-01-02T00:00:00Z"}},
             {"contentDetails": {"videoId": "b"}},  # private: no videoPublishedAt
             {"snippet": {"resourceId": {"videoId": "c"}}},
             {"contentDetails": {}}]
    refs = list(transform.playlist_refs(items))
    assert [r.video_id for r in refs] == ["a", "b", "c"]
    assert refs[0].published_at == datetime(2026, 1, 2, tzinfo=UTC) and refs[1].published_at is None
    assert list(transform.playlist_refs(None)) == []


def test_post_row_and_stats_from_a_video_item() -> None:
    item = {"id": "vid1", "snippet": {"publishedAt": "2026-03-01T10:00:00Z", "title": "Hola", "categoryId": "22"},
            "contentDetails": {"duration": "PT2M5S"},
            "statistics": {"viewCount": "100", "likeCount": "7", "commentCount": "2", "favoriteCount": "0"}}
    row = transform.post_row(item, "UC1")
    assert row is not None
    assert row["post_id"] == "vid1" and row["account_id"] == "UC1" and row["platform"] == "youtube"
    assert row["duration_seconds"] == 125 and row["title"] == "Hola"
    assert row["published_at"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert row["permalink"].endswith("vid1") and row["extra"]["category_id"] == "22"
    assert transform.video_stats(item) == (100, 7, 2)
    # likes hidden by the owner, no statistics at all, no id
    assert transform.video_stats({"statistics": {"viewCount": "5"}}) == (5, None, None)
    assert transform.video_stats({}) == (None, None, None)
    assert transform.post_row({"snippet": {}}, "UC1") is None
    bare = transform.post_row({"id": "x"}, "UC1")
    assert bare is not None and bare["published_at"] is None and bare["duration_seconds"] is None


def test_report_records_with_and_without_rows() -> None:
    resp = {"columnHeaders": [{"name": "video"}, {"name": "views"}, {"name": "estimatedMinutesWatched"}],
            "rows": [["a", 10, 3], ["b", 5, 1]]}
    assert transform.report_records(resp) == [{"video": "a", "views": 10, "estimatedMinutesWatched": 3},
                                              {"video": "b", "views": 5, "estimatedMinutesWatched": 1}]
    assert transform.report_records({"columnHeaders": resp["columnHeaders"]}) == []
    assert transform.report_records({}) == []


def test_post_metric_row_as_of_semantics() -> None:
    snap, through = date(2026, 3, 10), date(2026, 3, 5)
    analytics = {"video": "a", "views": 1000, "likes": 50, "comments": 4, "shares": 3,
                 "estimatedMinutesWatched": 120, "averageViewDuration": 41, "subscribersGained": 2}
    row = transform.post_metric_row("a", "UC1", snap, through, analytics, (1200, 60, 5))
    assert row["views"] == 1000 and row["watch_time_seconds"] == 7200 and row["avg_view_duration_seconds"] == 41
    assert row["analytics_through"] == through and row["snapshot_date"] == snap
    assert row["extra"] == {"data_api_view_count": 1200, "data_api_like_count": 60, "data_api_comment_count": 5,
                            "subscribers_gained": 2}
    # absent from analytics: Data API counts only, NULL analytics columns and NULL analytics_through
    bare = transform.post_metric_row("b", "UC1", snap, through, None, (9, None, 1))
    assert bare["views"] is None and bare["watch_time_seconds"] is None and bare["analytics_through"] is None
    assert bare["extra"] == {"data_api_view_count": 9, "data_api_like_count": None, "data_api_comment_count": 1}
    # no Data API statistics (deferred by quota): analytics only
    assert transform.post_metric_row("c", "UC1", snap, through, analytics, None)["extra"] == {"subscribers_gained": 2}


def test_day_metric_row() -> None:
    rec = {"day": "2026-03-01", "views": 10, "estimatedMinutesWatched": 2, "likes": 1, "comments": 0, "shares": 0,
           "subscribersGained": 3, "subscribersLost": 1}
    row = transform.day_metric_row(rec, "UC1")
    assert row == {"platform": "youtube", "account_id": "UC1", "metric_date": date(2026, 3, 1), "views": 10,
                   "watch_time_seconds": 120, "likes": 1, "comments": 0, "shares": 0, "followers_gained": 3,
                   "followers_lost": 1}
    assert transform.day_metric_row({"day": "bad"}, "UC1") is None
    assert transform.followers_row("UC1", date(2026, 3, 2), 77)["followers"] == 77


def test_analytics_join_is_a_hash_join() -> None:
    ids = [f"v{i}" for i in range(1000)]
    records = [{"video": f"v{i}", "views": i} for i in range(0, 1000, 3)]
    index = index_by(records, "video")
    joined = list(left_join(({"video": v} for v in ids), index, on="video"))
    assert len(joined) == 1000
    assert joined[3]["views"] == 3 and "views" not in joined[1]
    with pytest.raises(DuplicateKeyError):
        index_by([{"video": "a"}, {"video": "a"}], "video")


@pytest.mark.parametrize(("videos", "known", "full", "pages", "video_calls", "units"), [
    (0, 0, True, 1, 0, 2),
    (10, 0, True, 1, 1, 3),
    (50, 0, True, 1, 1, 3),
    (51, 0, True, 2, 2, 5),
    (5000, 0, True, 100, 100, 201),
    (50000, 0, True, 1000, 1000, 2001),
    (5000, 5000, False, 1, 100, 102),
    (5003, 5000, False, 1, 101, 103),
    (5049, 5000, False, 1, 101, 103),
    (5050, 5000, False, 2, 101, 104),
])
def test_plan_is_the_theoretical_minimum(videos: int, known: int, full: bool, pages: int, video_calls: int,
                                         units: int) -> None:
    plan = plan_calls(videos, known, full_scan=full)
    assert (plan.playlist_calls, plan.videos_calls, plan.data_units) == (pages, video_calls, units)


def test_unique_records_keeps_one_per_key_last_wins_in_first_order() -> None:
    recs = [{"video": "a", "views": 1}, {"video": "b", "views": 2}, {"video": "a", "views": 3}]
    assert transform.unique_records(recs, "video") == [{"video": "a", "views": 3}, {"video": "b", "views": 2}]
    clean = [{"video": "a"}, {"video": "b"}]
    assert transform.unique_records(clean, "video") is clean
