"""youtube_sync under pressure: tiny quotas over several days, run-level quota plans, faults, dropped DB
connections, wrong credentials, and the exact parameters that go on the wire.

Through the real functions-framework app, the sandbox over loopback and a real PostgreSQL. Expected
values come from the sandbox's world and ledger (or from literal formulas), never from the code under
test. Two observers are hooked in (nothing is replaced): a ``requests`` response hook on the process's
shared HTTP transport records every request that went out, and, for the dropped-connection test, kills
the run's PostgreSQL backends at a chosen moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from functions.youtube import pipeline
from functions.youtube.client import YouTubeClient
from sandbox.core import FaultRule
from sandbox.youtube import pacific_day
from shared.http import shared_transport
from shared.tokens import TokenManager
from shared.vault import make_vault

PAGE = 50


def visible(sandbox: Any, acc: Any) -> list[Any]:
    return [p for p in sandbox.world.posts(acc, sandbox.clock.now()) if not p.private]


def by_account(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["account_id"]: a for a in body["accounts"]}


def stored_ids(yt: Any, acc: Any) -> set[str]:
    return {r[0] for r in yt.q("SELECT post_id FROM social.posts WHERE account_id = :a", a=acc.account_id)}


def fresh_tokens(yt: Any, accounts: list[Any]) -> None:
    """Store a current access token per credential, as the hourly refresh_tokens job keeps them."""
    vault = make_vault(yt.config())
    for acc in accounts:
        vault.write(acc.credential, yt.sandbox.google_oauth.initial_credential(acc.credential, [acc]))


def freeze_at(yt: Any, instant: datetime) -> None:
    """Freeze the sandbox clock and the product's clock (NOW_OVERRIDE) at ``instant``."""
    yt.sandbox.clock.freeze(instant)
    yt.set_env(NOW_OVERRIDE=instant.isoformat())


@pytest.fixture
def wire() -> Iterator[list[tuple[str, str, dict[str, list[str]]]]]:
    """Every request sent through the shared transport: (method, path, query-or-form params)."""
    seen: list[tuple[str, str, dict[str, list[str]]]] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        req = response.request
        parts = urlsplit(req.url or "")
        params = parse_qs(parts.query)
        if req.body and req.headers.get("X-HTTP-Method-Override") == "GET":
            body = req.body.decode() if isinstance(req.body, bytes) else str(req.body)
            params.update(parse_qs(body))
        seen.append((req.method or "", parts.path, params))

    transport = shared_transport()
    transport.hooks["response"].append(hook)
    try:
        yield seen
    finally:
        transport.hooks["response"].remove(hook)


# --- item 1: a scan cut short by the quota finishes over the next days -------------------------------


def test_tiny_daily_quota_still_stores_every_video_over_a_few_days(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 120, name="Tiny Quota TV", credential="yt-tiny-quota")
    yt.use([acc])
    yt.set_env(YOUTUBE_DAILY_QUOTA="5")
    freeze_at(yt, sb.world.anchor_dt + timedelta(hours=21))
    states = []
    for _day in range(6):
        sb.ledger.reset()
        status, body = yt.post({})
        assert status == 200, body
        res = body["accounts"][0]
        states.append(res["details"].get("playlist_scan"))
        assert sb.ledger.units("youtube_data") <= 5 and res["quota_units"] <= 5  # never over the day's quota
        if stored_ids(yt, acc) == {p.post_id for p in visible(sb, acc)}:
            break
        yt.tomorrow()
    else:
        pytest.fail(f"the channel never finished: scan states {states}")
    # day 1: the newest stored, then the quota ran out. Every day the clock jump expired the access token,
    # so a rejected attempt (charged) and the refresh come first: still done within a few days.
    assert states[0] == "partial"
    assert len(states) <= 5
    assert yt.count("social.posts", "account_id = :a", a=acc.account_id) == len(visible(sb, acc))
    # the finishing run sent only unknown ids for discovery: no video was fetched twice that day
    assert res["details"]["videos"]["discovered"] == res["details"]["videos"]["new"]


def test_a_rejected_resume_token_falls_back_to_paging_the_whole_playlist(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 120, name="Stale Token TV", credential="yt-stale-token")
    yt.use([acc])
    yt.set_env(YOUTUBE_DAILY_QUOTA="4")
    freeze_at(yt, sb.world.anchor_dt + timedelta(hours=21))
    status, body = yt.post({})
    assert body["accounts"][0]["details"]["playlist_scan"] == "partial"
    assert body["accounts"][0]["details"]["playlist_resume"]["page_token"]
    yt.q("UPDATE social.sync_runs SET details = jsonb_set(details, '{playlist_resume,page_token}', '\"bogus\"')")
    yt.tomorrow()
    fresh_tokens(yt, [acc])
    yt.set_env(YOUTUBE_DAILY_QUOTA="100")
    sb.ledger.reset()
    status, body = yt.post({})
    assert status == 200, body
    statuses = [e.status for e in sb.ledger.entries("youtube_data", "playlistItems.list")]
    assert 400 in statuses  # YouTube refused the stale token ...
    assert stored_ids(yt, acc) == {p.post_id for p in visible(sb, acc)}  # ... and the scan still completed
    assert body["accounts"][0]["details"]["playlist_scan"] == "complete"


# --- item 2: retries and the post-401 retry are charged to the budget ---------------------------------


def test_units_never_exceed_the_budget_when_a_401_forces_a_retry(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 120, name="Expired TV", credential="yt-expired-budget")
    yt.use([acc])
    yt.set_env(YOUTUBE_DAILY_QUOTA="3")
    sb.tokens.expire(acc.credential)
    status, body = yt.post({})
    assert status == 200, body
    res = body["accounts"][0]
    assert sb.ledger.calls("google_oauth", "token") == 1  # the 401 was really answered and healed
    assert sb.ledger.calls("youtube_data", "channels.list") == 2  # rejected attempt + retry
    assert res["status"] == "deferred" and res["details"]["deferred"]["reason"] == "planned_budget"
    assert res["quota_units"] <= 3  # every attempt (the rejected one too) is charged
    assert sb.ledger.units("youtube_data") <= 3
    assert yt.q("SELECT quota_units FROM social.sync_runs")[0][0] <= 3


# --- item 3 / 7: analytics batches, exact call counts ---------------------------------------------------


def test_more_than_500_eligible_videos_take_ceil_e_over_200_reports(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 1100, name="Big Archive TV", credential="yt-big-archive")
    yt.use([acc])
    status, body = yt.post({})
    assert status == 200, body
    public = visible(sb, acc)
    through = sb.clock.now().date() - timedelta(days=5)  # UTC channel
    eligible = sum(1 for p in public if pacific_day(p.published_at) <= through)
    assert eligible > 500
    video_calls = [e for e in sb.ledger.entries("youtube_analytics", "reports.query", acc.account_id) if e.ids]
    assert len(video_calls) == math.ceil(eligible / 200)  # two full 200-row pages per 400-id batch
    assert max(e.ids for e in video_calls) == 400  # several batches, none above 400 ids
    assert sum(e.ids for e in video_calls) == 2 * eligible - (eligible % 400 if eligible % 400 <= 200 else 0)
    assert yt.count("social.post_metrics_daily", "account_id = :a AND views IS NOT NULL", a=acc.account_id) \
        == body["accounts"][0]["details"]["videos"]["with_analytics"]


# --- item 4: one quota plan for the whole run ----------------------------------------------------------


def test_run_plan_lets_every_channel_discover_its_uploads_when_the_quota_is_short(yt: Any) -> None:
    sb = yt.sandbox
    chans = [sb.world.add_account("youtube", 120, name=f"Planned TV {i}", credential=f"yt-planned-{i}",
                                  future_posts_per_day=3.0) for i in range(3)]
    yt.use(chans)
    freeze_at(yt, sb.world.anchor_dt + timedelta(hours=21))
    assert yt.post({})[0] == 200
    before = {a.account_id: stored_ids(yt, a) for a in chans}
    yt.tomorrow()
    fresh_tokens(yt, chans)
    # 9 units: 3 per channel = channels.list + the first page + one videos.list with the new uploads;
    # statistics of all known videos (3 more calls each) do not fit
    yt.set_env(YOUTUBE_DAILY_QUOTA="9")
    sb.ledger.reset()
    status, body = yt.post({})
    assert status == 200, body
    res = by_account(body)
    for acc in chans:
        new_ids = {p.post_id for p in visible(sb, acc)} - before[acc.account_id]
        assert len(new_ids) == 3
        assert new_ids <= stored_ids(yt, acc), acc.name  # every channel discovered its new uploads
        assert res[acc.account_id]["details"]["allocation"]["units"] == 3
        assert res[acc.account_id]["status"] == "deferred"  # the older videos' statistics wait
        assert sb.ledger.calls("youtube_data", "playlistItems.list", acc.account_id) == 1
    assert sb.ledger.units("youtube_data") == 9
    # a dry run reports the same plan without spending anything
    sb.ledger.reset()
    status, body = yt.post({"dry_run": True})
    assert status == 200 and sb.ledger.calls() == 0


# --- item 5: a dropped database connection ------------------------------------------------------------


def test_dropped_db_connection_fails_that_channel_retriably_and_the_others_complete(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:3])
    victim = chans[1]
    killed: list[int] = []

    def kill_run_connections(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        url = response.request.url or ""
        if not killed and "/channels" in url and victim.account_id in url:
            rows = yt.q("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            killed.append(len(rows))

    transport = shared_transport()
    transport.hooks["response"].append(kill_run_connections)
    try:
        status, body = yt.post({})
    finally:
        transport.hooks["response"].remove(kill_run_connections)
    assert killed and killed[0] >= 1
    assert status == 500, body  # Scheduler retries
    res = by_account(body)
    assert res[victim.account_id]["status"] == "failed"
    assert res[victim.account_id]["error_class"] == "load"
    for ok in (chans[0], chans[2]):
        assert res[ok.account_id]["status"] == "ok"
        assert yt.count("social.posts", "account_id = :a", a=ok.account_id) == len(visible(sb, ok))
    ledger = {r[0]: r[1:] for r in yt.q("SELECT account_id, status, error_class FROM social.sync_runs")}
    assert ledger[victim.account_id] == ["failed", "load"]
    assert yt.count("social.posts", "account_id = :a", a=victim.account_id) == 0


# --- item 7: faults and corrections ---------------------------------------------------------------------


def test_persistent_5xx_fails_that_channel_retriably_http_500(yt: Any) -> None:
    sb = yt.sandbox
    chans = yt.use(sb.world.accounts("youtube")[:2])
    victim = chans[0]
    sb.faults.add(FaultRule(kind="status", emulator="youtube_data", endpoint="videos.list",
                            account=victim.account_id, status=503, times=None))
    status, body = yt.post({})
    assert status == 500, body
    res = by_account(body)
    assert res[victim.account_id]["status"] == "failed"
    assert res[victim.account_id]["error_class"] == "api_retriable"
    assert yt.count("social.posts", "account_id = :a", a=victim.account_id) == 0  # rolled back
    assert res[chans[1].account_id]["status"] == "ok"


def test_a_daily_run_with_more_than_50_new_uploads_pages_twice(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 120, name="Busy TV", credential="yt-busy", future_posts_per_day=60.0)
    yt.use([acc])
    freeze_at(yt, sb.world.anchor_dt + timedelta(hours=21))
    assert yt.post({})[0] == 200
    before = stored_ids(yt, acc)
    yt.tomorrow()
    sb.ledger.reset()
    status, body = yt.post({})
    assert status == 200, body
    now_visible = visible(sb, acc)
    new = len({p.post_id for p in now_visible} - before)
    assert new >= 50
    assert sb.ledger.calls("youtube_data", "playlistItems.list") == math.ceil((new + 1) / 50) == 2
    assert sb.ledger.calls("youtube_data", "videos.list") == math.ceil(len(now_visible) / 50)
    assert stored_ids(yt, acc) == {p.post_id for p in now_visible}
    assert body["accounts"][0]["details"]["videos"]["new"] == new


def test_a_late_correction_of_a_past_day_is_picked_up(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 60, name="Corrected TV", credential="yt-corrected")
    yt.use([acc])
    freeze_at(yt, sb.world.anchor_dt + timedelta(hours=12))  # 04:00/05:00 Pacific
    assert yt.post({})[0] == 200
    day = pacific_day(sb.clock.now()) - timedelta(days=2)  # the latest day Analytics reports: not settled yet
    first = yt.q("SELECT views FROM social.account_metrics_daily WHERE account_id = :a AND metric_date = :d",
                 a=acc.account_id, d=day)[0][0]
    freeze_at(yt, sb.world.anchor_dt + timedelta(hours=18))  # same Pacific and UTC day, six hours later
    status, body = yt.post({})
    assert status == 200, body
    expected = sb.youtube_analytics.channel_day(acc, day, sb.clock.now())["views"]
    assert expected != first  # the API's value for that day changed between the runs
    stored = yt.q("SELECT views FROM social.account_metrics_daily WHERE account_id = :a AND metric_date = :d",
                  a=acc.account_id, d=day)[0][0]
    assert stored == expected
    rows = body["accounts"][0]["details"]["rows"]["account_metrics_daily"]
    assert rows["updated"] > 0 and body["accounts"][0]["rows_updated"] > 0


def test_exact_request_parameters_on_the_wire(yt: Any, wire: list[tuple[str, str, dict[str, list[str]]]]) -> None:
    sb = yt.sandbox
    acc = sb.world.add_account("youtube", 450, name="Wire TV", credential="yt-wire")
    yt.use([acc])
    status, body = yt.post({})
    assert status == 200, body
    calls: dict[str, list[dict[str, list[str]]]] = {}
    for _method, path, params in wire:
        calls.setdefault(path.rsplit("/", 1)[-1], []).append(params)
    one = {k: v[0] for k, v in calls["channels"][0].items()}
    assert one["part"] == "snippet,contentDetails,statistics" and one["id"] == acc.account_id
    for params in calls["playlistItems"]:
        assert params["part"] == ["contentDetails"] and params["maxResults"] == ["50"]
        assert params["playlistId"] == [acc.extra["uploads_playlist"]]
    assert len(calls["playlistItems"]) == math.ceil(450 / 50)
    for params in calls["videos"]:
        assert params["part"] == ["snippet,contentDetails,statistics"]
        assert 1 <= len(params["id"][0].split(",")) <= 50
    reports = calls["reports"]
    assert all(p["ids"] == [f"channel=={acc.account_id}"] for p in reports)  # never channel==MINE
    video = [p for p in reports if p.get("dimensions") == ["video"]]
    day = [p for p in reports if p.get("dimensions") == ["day"]]
    assert len(day) == 1 and len(video) >= 2
    for p in video:
        assert p["sort"] == ["-views"] and p["maxResults"] == ["200"]
        assert p["filters"][0].startswith("video==") and len(p["filters"][0][7:].split(",")) <= 400
        assert int(p["startIndex"][0]) in (1, 201)
    assert day[0]["metrics"][0].split(",")[:1] == ["views"]


# --- item 8: wrong channel, missing scope, empty channels -------------------------------------------------


def test_a_credential_for_another_channel_fails_loudly_as_needs_reauthorization(yt: Any) -> None:
    sb = yt.sandbox
    mine, other = sb.world.accounts("youtube")[:2]
    wrong = SimpleNamespace(platform="youtube", account_id=mine.account_id, name=mine.name, brand=mine.brand,
                            credential=other.credential, timezone=mine.timezone)
    yt.use([wrong])
    status, body = yt.post({})
    assert status == 200, body  # not retriable: a human must re-authorize
    res = body["accounts"][0]
    assert res["status"] == "failed" and res["error_class"] == "needs_reauthorization"
    assert yt.count("social.posts") == 0
    # Analytics for a channel the token does not own: 403 forbidden on ids=channel==<UC>
    day = pacific_day(sb.clock.now()) - timedelta(days=10)
    status, body = yt.post({"start_date": day.isoformat(), "end_date": day.isoformat()})
    assert status == 200
    assert body["accounts"][0]["error_class"] == "needs_reauthorization"
    assert [e.status for e in sb.ledger.entries("youtube_analytics", "reports.query")] == [403]


def test_insufficient_permissions_needs_reauthorization(yt: Any) -> None:
    sb = yt.sandbox
    acc = sb.world.accounts("youtube")[0]
    yt.use([acc])
    sb.faults.add(FaultRule(kind="platform_error", emulator="youtube_data", endpoint="channels.list",
                            status=403, code="insufficientPermissions", times=None))
    status, body = yt.post({})
    assert status == 200
    assert body["accounts"][0]["status"] == "failed"
    assert body["accounts"][0]["error_class"] == "needs_reauthorization"


def test_playlist_not_found_on_an_empty_channel_means_no_uploads(yt: Any) -> None:
    sb = yt.sandbox
    empty = sb.world.add_account("youtube", 0, name="Never Uploaded TV", credential="yt-never-uploaded",
                                 future_posts_per_day=0.0)
    full = sb.world.add_account("youtube", 20, name="Lost Playlist TV", credential="yt-lost-playlist")
    yt.use([empty, full])
    for acc in (empty, full):
        sb.faults.add(FaultRule(kind="platform_error", emulator="youtube_data", endpoint="playlistItems.list",
                                account=acc.account_id, status=404, code="playlistNotFound", times=None))
    status, body = yt.post({})
    res = by_account(body)
    assert res[empty.account_id]["status"] == "ok", res[empty.account_id]
    assert res[empty.account_id]["details"]["playlist_scan"] == "complete"
    assert yt.count("social.account_metrics_daily", "account_id = :a", a=empty.account_id) > 0
    # with videoCount > 0 a missing uploads playlist is a real error, not "no uploads"
    assert res[full.account_id]["status"] == "failed" and res[full.account_id]["error_class"] == "api_fatal"
    assert status == 200


# --- item 9: unknown publish date ----------------------------------------------------------------------


class _Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


@pytest.fixture
def real_client(sandbox: Any, database_url: str, make_config: Callable[..., Any]) -> Callable[[Any], YouTubeClient]:
    def make(acc: Any) -> YouTubeClient:
        cfg = make_config()
        vault = make_vault(cfg)
        vault.write(acc.credential, sandbox.credentials()[acc.credential])
        return YouTubeClient(cfg, tokens=TokenManager(cfg, vault), credential=acc.credential,
                             account_id=acc.account_id)

    return make


def test_a_video_with_an_unknown_publish_date_still_gets_its_data_api_counts(
        sandbox: Any, real_client: Callable[[Any], YouTubeClient]) -> None:
    acc = sandbox.world.accounts("youtube")[0]
    client = real_client(acc)
    items = client.videos([p.post_id for p in visible(sandbox, acc)[10:12]])
    assert len(items) == 2
    del items[1]["snippet"]["publishedAt"]  # the API left the publish time out for this one
    posts, stats, published = _Rows(), {}, {}
    pipeline._ingest_videos(items, acc.account_id, posts, stats, published)
    dated, undated = items[0]["id"], items[1]["id"]
    assert published[undated] is None and published[dated] is not None
    out = _Rows()
    today = sandbox.clock.now().date()
    counters = pipeline._post_metrics(client, acc.account_id, today, today - timedelta(days=5), published, stats,
                                      out, 400)
    rows = {r["post_id"]: r for r in out.rows}
    assert set(rows) == {dated, undated}
    assert rows[undated]["views"] is None and rows[undated]["analytics_through"] is None
    assert rows[undated]["extra"]["data_api_view_count"] == int(items[1]["statistics"]["viewCount"])
    assert rows[dated]["analytics_through"] == today - timedelta(days=5)
    assert counters["publish_date_unknown"] == 1


def test_analytics_rows_repeated_across_pages_are_kept_once_last_wins(
        sandbox: Any, real_client: Callable[[Any], YouTubeClient], caplog: pytest.LogCaptureFixture) -> None:
    """The sandbox never repeats a row across pages, so ``report`` is overridden to do so (a mock of the
    one thing the sandbox cannot produce); paging and the join are the real code."""
    acc = sandbox.world.accounts("youtube")[0]
    ids = [f"vid{i:04d}" for i in range(300)]
    headers = [{"name": "video"}, {"name": "views"}]
    pages = {1: [[v, 10] for v in ids[:200]], 201: [[ids[199], 99]] + [[v, 20] for v in ids[200:250]]}

    asked: list[int] = []

    class Overlapping(YouTubeClient):
        def report(self, params: Any) -> dict[str, Any]:
            asked.append(params["startIndex"])
            return {"columnHeaders": headers, "rows": pages.get(params["startIndex"], [])}

    client = Overlapping(real_client(acc).config, tokens=None, credential=acc.credential, account_id=acc.account_id)
    rows = client.video_totals(ids, "2026-01-01", "2026-01-31")
    assert asked == [1, 201]
    by_id = {r["video"]: r for r in rows}
    assert len(rows) == len(by_id) == 250 and by_id[ids[199]]["views"] == 99
    assert "duplicate" in caplog.text
    out = _Rows()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    counters = pipeline._post_metrics(client, acc.account_id, date(2026, 2, 5), date(2026, 1, 31),
                                      dict.fromkeys(ids, when), {}, out, 400)
    assert counters["with_analytics"] == 250 and len(out.rows) == 250
