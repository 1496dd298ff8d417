"""youtube_sync end to end: the functions-framework app, the sandbox over loopback, a real PostgreSQL.

Nothing is mocked. Expected values come from the sandbox's world (what a channel really holds) and the
sandbox ledger (what was really called), never from the code under test.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from sandbox.core import FaultRule
from sandbox.youtube import pacific_day

PAGE = 50


def visible(sandbox: Any, acc: Any) -> list[Any]:
    """The channel's public uploads at the sandbox's now."""
    return [p for p in sandbox.world.posts(acc, sandbox.clock.now()) if not p.private]


def by_account(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["account_id"]: a for a in body["accounts"]}


def test_first_run_loads_every_video_and_metric(yt: Any) -> None:
    chans = yt.use()
    status, body = yt.post({})
    assert status == 200, body
    assert body["status"] == "ok" and body["trigger"] == "scheduler"
    results = by_account(body)
    sb = yt.sandbox
    for acc in chans:
        videos = visible(sb, acc)
        stored = {r[0] for r in yt.q("SELECT post_id FROM social.posts WHERE account_id = :a", a=acc.account_id)}
        assert stored == {p.post_id for p in videos}
        assert results[acc.account_id]["status"] == "ok"
        # one snapshot per video, dated today in the channel's timezone
        snaps = yt.q("SELECT snapshot_date, count(*), count(views), min(analytics_through)"
                     " FROM social.post_metrics_daily WHERE account_id = :a GROUP BY 1", a=acc.account_id)
        assert len(snaps) == 1 and snaps[0][1] == len(videos)
        today = sb.clock.now().astimezone(__import__("zoneinfo").ZoneInfo(acc.timezone)).date()
        assert snaps[0][0] == today
        assert snaps[0][3] == today - timedelta(days=5)
        # the Data API counts as of the snapshot are kept for every video, as ints
        p = videos[0]
        extra, views = yt.q("SELECT extra, views FROM social.post_metrics_daily WHERE post_id = :p", p=p.post_id)[0]
        assert isinstance(extra["data_api_view_count"], int) and isinstance(extra["data_api_like_count"], int)
        # lifetime views as of now >= analytics views consolidated through today - 5 (the as-of dates differ)
        assert 0 < extra["data_api_view_count"] <= p.metric("views", sb.clock.now())
        assert views is None or views <= extra["data_api_view_count"]
        # minimal calls: 1 channels.list, ceil(V/50) pages, ceil(V/50) videos.list (one pass for both jobs)
        n = len(videos)
        assert sb.ledger.calls("youtube_data", "channels.list", acc.account_id) == 1
        assert sb.ledger.calls("youtube_data", "playlistItems.list", acc.account_id) == math.ceil(n / PAGE)
        assert sb.ledger.calls("youtube_data", "videos.list", acc.account_id) == math.ceil(n / PAGE)
        assert results[acc.account_id]["quota_units"] == 1 + 2 * math.ceil(n / PAGE)
        # channel day metrics for the look-back window (days the API has not delivered are absent)
        days = yt.q("SELECT min(metric_date), max(metric_date), count(*) FROM social.account_metrics_daily"
                    " WHERE account_id = :a AND views IS NOT NULL", a=acc.account_id)[0]
        assert days[1] <= today - timedelta(days=1) and days[2] >= 20
        followers = yt.q("SELECT followers FROM social.account_metrics_daily WHERE account_id = :a"
                         " AND metric_date = :d", a=acc.account_id, d=today)[0][0]
        assert followers == sb.world.followers(acc, pacific_day(sb.clock.now()))
    # the ledger: one row per channel with the units the sandbox charged
    rows = yt.q("SELECT account_id, status, quota_units, api_calls, trigger FROM social.sync_runs")
    assert len(rows) == len(chans)
    assert sum(r[2] for r in rows) == sb.ledger.units("youtube_data")
    assert sum(r[3] for r in rows) == sb.ledger.calls("youtube_data") + sb.ledger.calls("youtube_analytics")
    assert {r[4] for r in rows} == {"scheduler"}


def test_second_run_same_day_inserts_nothing(yt: Any) -> None:
    yt.use(yt.sandbox.world.accounts("youtube")[:3])
    assert yt.post({})[0] == 200
    before = yt.count("social.posts")
    status, body = yt.post({})
    assert status == 200
    assert body["totals"]["rows_inserted"] == 0
    assert yt.count("social.posts") == before
    for a in body["accounts"]:
        assert a["details"]["rows"]["posts"]["updated"] == 0  # titles/durations did not change
        assert a["details"]["playlist_scan"] == "incremental"
        assert a["details"]["plan"]["playlistItems.list"] == 1


def test_tomorrow_adds_one_snapshot_per_video_and_only_new_uploads(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:3])
    # 21:00 UTC on the world's anchor day: "tomorrow" at the same time is after every upload of the next
    # day (the world uploads one video per channel per day, between 01:00 and 20:00 UTC)
    start = sb.world.anchor_dt + timedelta(hours=21)
    sb.clock.set(start)
    yt.set_env(NOW_OVERRIDE=start.isoformat())
    assert yt.post({})[0] == 200
    before = {a.account_id: {p.post_id for p in visible(sb, a)} for a in chans}
    yt.tomorrow()
    sb.ledger.reset()
    status, body = yt.post({})
    assert status == 200, body
    for acc in chans:
        now_visible = visible(sb, acc)
        new_ids = {p.post_id for p in now_visible} - before[acc.account_id]
        new = len(new_ids)
        assert new >= 1  # at least one upload since yesterday, discovered and stored
        stored = {r[0] for r in yt.q("SELECT post_id FROM social.posts WHERE account_id = :a", a=acc.account_id)}
        assert new_ids <= stored and len(stored) == len(now_visible)
        # the scan stopped at the first known video: exactly one page per channel
        assert sb.ledger.calls("youtube_data", "playlistItems.list", acc.account_id) == 1
        assert sb.ledger.calls("youtube_data", "videos.list", acc.account_id) == math.ceil(len(now_visible) / PAGE)
        snaps = yt.q("SELECT snapshot_date, count(*) FROM social.post_metrics_daily WHERE account_id = :a"
                     " GROUP BY 1 ORDER BY 1", a=acc.account_id)
        assert len(snaps) == 2
        assert snaps[0][1] == len(before[acc.account_id]) and snaps[1][1] == len(now_visible)
        assert snaps[1][0] - snaps[0][0] == timedelta(days=1)
        res = by_account(body)[acc.account_id]
        assert res["details"]["videos"]["new"] == new and res["details"]["videos"]["discovered"] == new
    # day-over-day deltas are computable from the view
    deltas = yt.q("SELECT count(*) FROM social.v_post_daily_delta WHERE days_since_previous = 1")[0][0]
    assert deltas == sum(len(b) for b in before.values())


def test_edge_channels_zero_fifty_five_hundred_and_private_ids(yt: Any) -> None:
    sb = yt.sandbox
    empty = sb.world.add_account("youtube", 0, name="Empty TV")
    fifty = sb.world.add_account("youtube", 50, name="Fifty TV")
    big = sb.world.add_account("youtube", 500, name="Big TV", private_ids=3)
    yt.use([empty, fifty, big])
    status, body = yt.post({})
    assert status == 200, body
    res = by_account(body)
    assert all(r["status"] == "ok" for r in res.values())
    # 0 videos: one (empty) page, no videos.list, no video report; the day report still runs
    assert yt.count("social.posts", "account_id = :a", a=empty.account_id) == 0
    assert sb.ledger.calls("youtube_data", "playlistItems.list", empty.account_id) == 1
    assert sb.ledger.calls("youtube_data", "videos.list", empty.account_id) == 0
    assert yt.count("social.account_metrics_daily", "account_id = :a", a=empty.account_id) > 0
    # exactly 50: one page (no nextPageToken) and one videos.list
    assert yt.count("social.posts", "account_id = :a", a=fifty.account_id) == 50
    assert sb.ledger.calls("youtube_data", "playlistItems.list", fifty.account_id) == 1
    assert sb.ledger.calls("youtube_data", "videos.list", fifty.account_id) == 1
    assert max(sb.ledger.ids_per_call("youtube_data", "videos.list", fifty.account_id)) == 50
    # 500 with 3 private ids: the private ones are listed, omitted by videos.list, never stored
    public = visible(sb, big)
    assert len(public) == 497
    assert yt.count("social.posts", "account_id = :a", a=big.account_id) == 497
    assert yt.count("social.post_metrics_daily", "account_id = :a", a=big.account_id) == 497
    assert sb.ledger.calls("youtube_data", "videos.list", big.account_id) == 10
    # batches of 400 ids (two full 200-row pages) of every video with consolidated days (published on or
    # before today - 5): 400 + the rest
    through = sb.clock.now().date() - timedelta(days=5)  # the channel's timezone is UTC
    eligible = sum(1 for p in public if pacific_day(p.published_at) <= through)
    assert eligible > 400
    assert {n for n in sb.ledger.ids_per_call("youtube_analytics", "reports.query", big.account_id) if n} == {
        400, eligible - 400}
    with_rows = res[big.account_id]["details"]["videos"]["with_analytics"]
    video_reports = sum(1 for e in sb.ledger.entries("youtube_analytics", "reports.query", big.account_id) if e.ids)
    assert math.ceil(with_rows / 200) <= video_reports <= math.ceil(eligible / 200)


def test_analytics_without_rows_still_stores_data_api_counts(yt: Any) -> None:
    sb = yt.sandbox
    fresh = sb.world.add_account("youtube", 0, name="Fresh TV", future_posts_per_day=1.0)
    yt.use([fresh])
    yt.set_env(YOUTUBE_LAG_DAYS="0")  # query totals through today: the API has nothing consolidated yet
    # one day after the world's anchor, late evening UTC: exactly the first upload is public
    now = sb.world.anchor_dt + timedelta(days=1, hours=23)
    sb.clock.set(now)
    yt.set_env(NOW_OVERRIDE=now.isoformat())
    status, body = yt.post({})
    assert status == 200, body
    videos = visible(sb, fresh)
    assert len(videos) == 1
    # the video report was asked for that video and answered without "rows"
    assert [e.ids for e in sb.ledger.entries("youtube_analytics", "reports.query") if e.ids] == [1]
    rows = yt.q("SELECT views, analytics_through, extra FROM social.post_metrics_daily WHERE account_id = :a",
                a=fresh.account_id)
    assert len(rows) == len(videos)
    assert all(r[0] is None and r[1] is None and r[2]["data_api_view_count"] is not None for r in rows), rows
    assert body["accounts"][0]["details"]["videos"]["without_analytics"] == len(videos)


def test_quota_exceeded_mid_run_defers_that_channel_and_keeps_the_rest(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:3])
    victim = chans[1]
    sb.faults.add(FaultRule(kind="platform_error", emulator="youtube_data", endpoint="videos.list",
                            account=victim.account_id, status=403, code="quotaExceeded", after=1, times=None))
    status, body = yt.post({})
    assert status == 200, body  # a deferral is not a failure Scheduler should retry today
    res = by_account(body)
    assert res[victim.account_id]["status"] == "deferred"
    assert res[victim.account_id]["error_class"] == "quota_exceeded"
    assert res[victim.account_id]["details"]["playlist_scan"] == "partial"
    # nothing already fetched is lost: the first videos.list page (the 50 newest videos) is committed
    newest = [p.post_id for p in visible(sb, victim)[:50]]
    stored = {r[0] for r in yt.q("SELECT post_id FROM social.posts WHERE account_id = :a", a=victim.account_id)}
    assert stored == set(newest)
    assert yt.count("social.post_metrics_daily", "account_id = :a", a=victim.account_id) == 50
    assert yt.count("social.account_metrics_daily", "account_id = :a", a=victim.account_id) > 0
    for other in (chans[0], chans[2]):
        assert res[other.account_id]["status"] == "ok"
        assert yt.count("social.posts", "account_id = :a", a=other.account_id) == len(visible(sb, other))
    ledger = dict((r[0], r[1]) for r in yt.q("SELECT account_id, status FROM social.sync_runs"))
    assert ledger[victim.account_id] == "deferred"
    # the quota is back: the interrupted scan is redone in full and the channel completes
    sb.faults.clear()
    status, body = yt.post({"accounts": [victim.account_id]})
    assert status == 200 and body["accounts"][0]["status"] == "ok"
    assert body["accounts"][0]["details"]["plan"]["full_scan"] is True
    assert yt.count("social.posts", "account_id = :a", a=victim.account_id) == len(visible(sb, victim))


def test_small_budget_processes_newest_videos_first(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.accounts("youtube")[0]
    yt.use([acc])
    yt.set_env(YOUTUBE_DAILY_QUOTA="5")  # channels 1, then (page, videos.list) twice: the 100 newest
    status, body = yt.post({})
    assert status == 200
    res = body["accounts"][0]
    assert res["status"] == "deferred" and res["quota_units"] == 5
    assert res["details"]["plan"]["data_units"] > 5
    assert sb.ledger.units("youtube_data") == 5
    # interleaved scan: each page's 50 ids go to videos.list at once, so the newest work is done first
    stored = {r[0] for r in yt.q("SELECT post_id FROM social.posts")}
    assert stored == {p.post_id for p in visible(sb, acc)[:100]}
    assert res["details"]["playlist_scan"] == "partial"
    # the ledger now says the day's budget is spent: the next run makes no Data API call
    sb.ledger.reset()
    status, body = yt.post({})
    assert body["accounts"][0]["status"] == "deferred"
    assert sb.ledger.units("youtube_data") == 0


def test_expired_access_token_refreshes_once_and_completes(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:2])
    sb.tokens.expire(chans[0].credential)
    status, body = yt.post({})
    assert status == 200, body
    assert all(a["status"] == "ok" for a in body["accounts"])
    assert sb.ledger.calls("google_oauth", "token") == 1
    assert yt.count("social.posts", "account_id = :a", a=chans[0].account_id) == len(visible(sb, chans[0]))


def test_revoked_refresh_token_needs_reauthorization_others_complete(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:3])
    dead = chans[1]
    sb.tokens.expire(dead.credential)
    sb.tokens.revoke(dead.credential, "refresh")
    status, body = yt.post({})
    assert status == 200  # not retriable: a human must re-authorize
    res = by_account(body)
    assert res[dead.account_id]["status"] == "failed"
    assert res[dead.account_id]["error_class"] == "needs_reauthorization"
    assert yt.count("social.posts", "account_id = :a", a=dead.account_id) == 0
    for ok in (chans[0], chans[2]):
        assert res[ok.account_id]["status"] == "ok"
        assert yt.count("social.posts", "account_id = :a", a=ok.account_id) == len(visible(sb, ok))
    row = yt.q("SELECT status, error_class FROM social.sync_runs WHERE account_id = :a", a=dead.account_id)[0]
    assert row == ["failed", "needs_reauthorization"]


def test_dry_run_plans_from_the_database_without_any_call_or_write(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:2])
    status, body = yt.post({"dry_run": True})
    assert status == 200 and body["dry_run"] is True
    for a in body["accounts"]:
        plan = a["details"]["plan"]
        assert plan["data_units"] == 1 + plan["playlistItems.list"] + plan["videos.list"]
        assert plan["estimated_from"] == "database" and plan["full_scan"] is True  # never synced: a full scan
        assert a["details"]["would_defer_videos"] == 0
        assert a["api_calls"] == 0 and a["quota_units"] == 0
    for table in ("social.posts", "social.post_metrics_daily", "social.account_metrics_daily", "social.sync_runs"):
        assert yt.count(table) == 0
    assert sb.ledger.calls() == 0  # no API call at all: no quota spent silently
    # after a real run, the dry run's estimate is the daily plan: K known videos, one page, ceil(K/50) calls
    assert yt.post({})[0] == 200
    sb.ledger.reset()
    status, body = yt.post({"dry_run": True})
    assert status == 200 and sb.ledger.calls() == 0
    for a, acc in zip(body["accounts"], chans, strict=True):
        k = len(visible(sb, acc))
        plan = a["details"]["plan"]
        assert plan["known_videos"] == k and plan["full_scan"] is False and plan["playlistItems.list"] == 1
        assert plan["videos.list"] == math.ceil((k + a["details"]["estimate"]["expected_new"]) / PAGE)
    # with a 3-unit budget the estimate says what would be deferred
    yt.set_env(YOUTUBE_DAILY_QUOTA=str(int(yt.q("SELECT sum(quota_units) FROM social.sync_runs")[0][0]) + 3))
    status, body = yt.post({"dry_run": True, "accounts": [chans[0].account_id]})
    assert body["accounts"][0]["details"]["budget_units"] == 3
    assert body["accounts"][0]["details"]["would_defer_videos"] > 0
    assert sb.ledger.calls() == 0


def test_backfill_window_loads_channel_days_in_chunks(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.accounts("youtube")[0]
    yt.use([acc])
    end = pacific_day(sb.clock.now()) - timedelta(days=10)
    start = end - timedelta(days=399)
    status, body = yt.post({"start_date": start.isoformat(), "end_date": end.isoformat()})
    assert status == 200, body
    assert sb.ledger.calls("youtube_analytics", "reports.query") == 2  # 400 days in 366-day chunks
    assert sb.ledger.units("youtube_data") == 0
    days = yt.q("SELECT min(metric_date), max(metric_date), count(*) FROM social.account_metrics_daily")[0]
    assert days == [start, end, 400]
    # a window before the channel existed: the API answers without "rows"; nothing is invented
    status, body = yt.post({"start_date": "2001-01-01", "end_date": "2001-01-31"})
    assert status == 200 and body["totals"]["rows_inserted"] == 0
    # re-running the same window is idempotent
    status, body = yt.post({"start_date": start.isoformat(), "end_date": end.isoformat()})
    assert body["totals"]["rows_inserted"] == 0 and body["totals"]["rows_updated"] == 0
