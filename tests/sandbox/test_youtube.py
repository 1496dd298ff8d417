"""YouTube Data v3 / Analytics v2 emulators: wire compatibility through the official client, limits, errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
import requests
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from sandbox import FaultRule, Sandbox
from sandbox.world import Account
from sandbox.youtube import PACIFIC, iso_duration, select_fields

METRICS = "views,estimatedMinutesWatched,averageViewDuration,averageViewPercentage,likes,comments,shares"


def channel(sb: Sandbox, i: int = 0) -> Account:
    return sb.world.accounts("youtube")[i]


def token_for(sb: Sandbox, acc: Account) -> str:
    return sb.google_oauth.initial_credential(acc.credential, [acc])["access_token"]


def yt_get(sb: Sandbox, path: str, token: str | None, **params: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(sb.url("youtube_data") + "/youtube/v3/" + path, params=params, headers=headers, timeout=30)


def ya_get(sb: Sandbox, token: str | None, **params: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(sb.url("youtube_analytics") + "/v2/reports", params=params, headers=headers, timeout=60)


def pt_today(sb: Sandbox) -> date:
    return sb.clock.now().astimezone(PACIFIC).date()


def all_video_ids(sb: Sandbox, token: str, acc: Account) -> list[str]:
    ids: list[str] = []
    page: str | None = None
    while True:
        params: dict[str, Any] = {"part": "contentDetails", "playlistId": acc.extra["uploads_playlist"],
                                  "maxResults": 50}
        if page:
            params["pageToken"] = page
        body = yt_get(sb, "playlistItems", token, **params).json()
        ids += [i["contentDetails"]["videoId"] for i in body["items"]]
        page = body.get("nextPageToken")
        if not page:
            return ids


@pytest.fixture
def official(sandbox: Sandbox) -> dict[str, Any]:
    acc = channel(sandbox)
    creds = Credentials(token=token_for(sandbox, acc))
    data = build("youtube", "v3", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": sandbox.url("youtube_data") + "/"})
    analytics = build("youtubeAnalytics", "v2", credentials=creds, static_discovery=True,
                      client_options={"api_endpoint": sandbox.url("youtube_analytics") + "/"})
    return {"acc": acc, "data": data, "analytics": analytics}


# -- official client ------------------------------------------------------------------------------------

def test_official_client_channels_playlist_paging_and_videos(sandbox: Sandbox, official: dict[str, Any]) -> None:
    acc, yt = official["acc"], official["data"]
    resp = yt.channels().list(part="snippet,contentDetails,statistics", mine=True).execute()
    item = resp["items"][0]
    assert resp["kind"] == "youtube#channelListResponse"
    assert item["id"] == acc.account_id
    uploads = item["contentDetails"]["relatedPlaylists"]["uploads"]
    assert uploads == acc.extra["uploads_playlist"]
    stats = item["statistics"]
    assert all(isinstance(stats[k], str) for k in ("viewCount", "subscriberCount", "videoCount"))
    assert stats["hiddenSubscriberCount"] is False

    request = yt.playlistItems().list(part="snippet,contentDetails", playlistId=uploads, maxResults=50)
    ids: list[str] = []
    pages = []
    while request is not None:
        page = request.execute()
        pages.append(page)
        ids += [i["contentDetails"]["videoId"] for i in page["items"]]
        request = yt.playlistItems().list_next(request, page)
    visible = sandbox.world.posts(acc, sandbox.clock.now())
    assert ids == [p.post_id for p in visible]  # newest first, every visible upload once
    assert len(pages) == -(-len(ids) // 50)
    assert "nextPageToken" not in pages[-1] and all("nextPageToken" in p for p in pages[:-1])
    assert pages[0]["pageInfo"] == {"totalResults": len(ids), "resultsPerPage": 50}
    assert int(stats["videoCount"]) == sum(1 for p in visible if not p.private)

    videos = yt.videos().list(part="snippet,statistics,contentDetails", id=",".join(ids[:50])).execute()
    assert [v["id"] for v in videos["items"]] == ids[:50]
    v = videos["items"][0]
    post = visible[0]
    assert v["snippet"]["publishedAt"].endswith("Z")
    assert datetime.fromisoformat(v["snippet"]["publishedAt"]) == post.published_at.replace(microsecond=0)
    assert v["contentDetails"]["duration"] == iso_duration(post.duration_seconds)
    assert isinstance(v["statistics"]["viewCount"], str)
    assert int(v["statistics"]["viewCount"]) == post.metric("views", sandbox.clock.now()) or \
        int(v["statistics"]["viewCount"]) <= post.metric("views", sandbox.clock.now())
    assert sandbox.ledger.ids_per_call("youtube_data", "videos.list") == [50]
    assert sandbox.ledger.units("youtube_data") == 1 + len(pages) + 1


def test_official_client_analytics_500_ids_goes_through_post_override(sandbox: Sandbox,
                                                                      official: dict[str, Any]) -> None:
    acc, ya = official["acc"], official["analytics"]
    token = official["data"]._http.credentials.token
    ids = all_video_ids(sandbox, token, acc)
    filler = [f"zz{i:09d}" for i in range(500 - len(ids))]  # unknown ids are simply absent
    flt = "video==" + ",".join(ids + filler)
    end = pt_today(sandbox)
    start = end - timedelta(days=400)
    resp = ya.reports().query(ids="channel==MINE", startDate=start.isoformat(), endDate=end.isoformat(),
                              metrics="views,likes", dimensions="video", sort="-views", maxResults=200,
                              filters=flt).execute()
    assert resp["kind"] == "youtubeAnalytics#resultTable"
    assert [h["name"] for h in resp["columnHeaders"]] == ["video", "views", "likes"]
    assert [h["columnType"] for h in resp["columnHeaders"]] == ["DIMENSION", "METRIC", "METRIC"]
    views = [r[1] for r in resp["rows"]]
    assert views == sorted(views, reverse=True) and 0 < len(views) <= 200
    assert set(r[0] for r in resp["rows"]) <= set(ids)
    assert sandbox.ledger.ids_per_call("youtube_analytics") == [500]
    # the URL was > 2 KB, so the client sent POST + X-HTTP-Method-Override: GET with a form body
    entry = sandbox.ledger.entries("youtube_analytics")[0]
    assert entry.status == 200 and entry.units == 0 and entry.account == acc.account_id

    day = ya.reports().query(ids=f"channel=={acc.account_id}", startDate=(end - timedelta(days=9)).isoformat(),
                             endDate=end.isoformat(), metrics=METRICS, dimensions="day", sort="day").execute()
    assert [h["dataType"] for h in day["columnHeaders"]] == ["STRING", "INTEGER", "INTEGER", "INTEGER", "FLOAT",
                                                             "INTEGER", "INTEGER", "INTEGER"]
    assert len(day["rows"]) == 10 - sandbox.settings.youtube_analytics_lag_days


# -- Data API limits and errors ----------------------------------------------------------------------------

def test_videos_list_51_ids_is_400_and_maxresults_over_50_is_400(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    ids = [p.post_id for p in sandbox.world.posts(acc, sandbox.clock.now())]
    r = yt_get(sandbox, "videos", token, part="statistics", id=",".join(ids[:51]))
    assert r.status_code == 400
    assert r.json()["error"]["errors"][0]["reason"] == "invalidFilters"
    assert yt_get(sandbox, "videos", token, part="statistics", id=",".join(ids[:50])).status_code == 200
    r = yt_get(sandbox, "playlistItems", token, part="contentDetails", playlistId=acc.extra["uploads_playlist"],
               maxResults=51)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["errors"][0]["location"] == "maxResults" and err["status"] == "INVALID_ARGUMENT"
    # maxResults is ignored with id (contract §3.1)
    r = yt_get(sandbox, "videos", token, part="id", id=",".join(ids[:10]), maxResults=2)
    assert len(r.json()["items"]) == 10
    # invalid requests cost a unit too
    assert sandbox.ledger.units("youtube_data") == 4


def test_unknown_part_and_missing_filter(sandbox: Sandbox) -> None:
    token = token_for(sandbox, channel(sandbox))
    r = yt_get(sandbox, "channels", token, part="snippet,bogus", mine="true")
    assert r.status_code == 400 and r.json()["error"]["errors"][0]["reason"] == "unknownPart"
    r = yt_get(sandbox, "channels", token, part="snippet")
    assert r.status_code == 400 and r.json()["error"]["errors"][0]["reason"] == "missingRequiredParameter"
    r = yt_get(sandbox, "videos", token, mine="true")
    assert r.status_code == 400 and r.json()["error"]["errors"][0]["reason"] == "required"


def test_private_videos_listed_in_playlist_but_omitted_by_videos_list(sandbox: Sandbox) -> None:
    acc = sandbox.world.add_account("youtube", 60, credential="youtube-test-private", private_ids=5,
                                    future_posts_per_day=0)
    token = token_for(sandbox, acc)
    ids = all_video_ids(sandbox, token, acc)
    assert len(ids) == 60
    found = []
    for k in range(0, 60, 50):
        body = yt_get(sandbox, "videos", token, part="id,statistics", id=",".join(ids[k:k + 50])).json()
        found += [v["id"] for v in body["items"]]
    assert len(found) == 55 and set(found) < set(ids)
    first = yt_get(sandbox, "playlistItems", token, part="snippet,contentDetails,status",
                   playlistId=acc.extra["uploads_playlist"], maxResults=50).json()
    private = [i for i in first["items"] if i["status"]["privacyStatus"] == "private"]
    assert private and all(i["snippet"]["title"] == "Private video" for i in private)
    assert all("videoPublishedAt" not in i["contentDetails"] for i in private)


def test_playlist_of_other_channel_403_unknown_404_bad_token_400(sandbox: Sandbox) -> None:
    mine, other = channel(sandbox, 0), channel(sandbox, 1)
    token = token_for(sandbox, mine)
    r = yt_get(sandbox, "playlistItems", token, part="id", playlistId=other.extra["uploads_playlist"])
    assert r.status_code == 403
    assert r.json()["error"]["errors"][0]["reason"] == "playlistItemsNotAccessible"
    r = yt_get(sandbox, "playlistItems", token, part="id", playlistId="UUdoesnotexist00000000000")
    assert r.status_code == 404 and r.json()["error"]["errors"][0]["reason"] == "playlistNotFound"
    r = yt_get(sandbox, "playlistItems", token, part="id", playlistId=mine.extra["uploads_playlist"],
               pageToken="not-a-token")
    assert r.status_code == 400 and r.json()["error"]["errors"][0]["reason"] == "invalidPageToken"


def test_auth_errors_are_google_401(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    assert yt_get(sandbox, "channels", token, part="id", mine="true").status_code == 200
    for bad in (None, "ya29.bogus"):
        r = yt_get(sandbox, "channels", bad, part="id", mine="true")
        assert r.status_code == 401
    sandbox.tokens.expire(acc.credential)
    r = yt_get(sandbox, "channels", token, part="id", mine="true")
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["status"] == "UNAUTHENTICATED" and err["code"] == 401
    assert err["errors"] == [{"message": err["errors"][0]["message"], "domain": "global", "reason": "authError",
                              "location": "Authorization", "locationType": "header"}]
    assert err["message"].startswith("Request had invalid authentication credentials.")
    r = ya_get(sandbox, token, ids="channel==MINE", startDate="2026-01-01", endDate="2026-01-02", metrics="views")
    assert r.status_code == 401 and r.json()["error"]["errors"][0]["reason"] == "authError"
    assert sandbox.ledger.units("youtube_data") == 1  # unauthenticated calls are not charged


def test_quota_exhaustion_and_pacific_midnight_reset(sandbox_factory: Any) -> None:
    sb = sandbox_factory(youtube_daily_quota=3)
    acc = channel(sb)
    pt_noon = datetime.combine(pt_today(sb), time(12), PACIFIC)
    sb.clock.freeze(pt_noon.astimezone(UTC))
    token = token_for(sb, acc)
    codes = [yt_get(sb, "channels", token, part="id", mine="true").status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    r = yt_get(sb, "videos", token, part="id", id="x")
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["errors"][0] == {"message": err["message"], "domain": "youtube.quota", "reason": "quotaExceeded"}
    assert sb.youtube_data.quota_used() == 3
    # 23:59 PT: same day, still exhausted; 00:00 PT next day: fresh budget
    sb.clock.freeze(datetime.combine(pt_today(sb), time(23, 59), PACIFIC).astimezone(UTC))
    token = token_for(sb, acc)
    assert yt_get(sb, "channels", token, part="id", mine="true").status_code == 403
    sb.clock.freeze(datetime.combine(pt_today(sb) + timedelta(days=1), time(0), PACIFIC).astimezone(UTC))
    token = token_for(sb, acc)
    assert yt_get(sb, "channels", token, part="id", mine="true").status_code == 200
    assert sb.ledger.units("youtube_data") == 4


def test_throttle_fault_is_google_rate_limit(sandbox: Sandbox) -> None:
    token = token_for(sandbox, channel(sandbox))
    sandbox.faults.add(FaultRule("throttle", emulator="youtube_data"))
    r = yt_get(sandbox, "channels", token, part="id", mine="true")
    assert r.status_code == 403
    assert r.json()["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    assert r.json()["error"]["errors"][0]["domain"] == "usageLimits"
    sandbox.faults.add(FaultRule("throttle", emulator="youtube_analytics", status=429))
    r = ya_get(sandbox, token, ids="channel==MINE", startDate="2026-01-01", endDate="2026-01-02", metrics="views")
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert yt_get(sandbox, "channels", token, part="id", mine="true").status_code == 200


def test_clock_advance_reveals_uploads_and_grows_metrics(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    before = all_video_ids(sandbox, token, acc)
    stats0 = yt_get(sandbox, "videos", token, part="statistics", id=before[0]).json()["items"][0]["statistics"]
    ch0 = yt_get(sandbox, "channels", token, part="statistics", mine="true").json()["items"][0]["statistics"]
    sandbox.clock.advance(days=3)
    token = token_for(sandbox, acc)
    after = all_video_ids(sandbox, token, acc)
    assert len(after) > len(before) and after[len(after) - len(before):] == before
    stats1 = yt_get(sandbox, "videos", token, part="statistics", id=before[0]).json()["items"][0]["statistics"]
    assert int(stats1["viewCount"]) > int(stats0["viewCount"])
    ch1 = yt_get(sandbox, "channels", token, part="statistics", mine="true").json()["items"][0]["statistics"]
    assert int(ch1["videoCount"]) > int(ch0["videoCount"]) and int(ch1["viewCount"]) > int(ch0["viewCount"])
    # a future upload is not served before its time
    future = sandbox.world.all_posts(acc)[0]
    assert future.published_at > sandbox.clock.now()
    assert yt_get(sandbox, "videos", token, part="id", id=future.post_id).json()["items"] == []


def test_fields_selector(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    r = yt_get(sandbox, "playlistItems", token, part="snippet,contentDetails",
               playlistId=acc.extra["uploads_playlist"], maxResults=3,
               fields="nextPageToken,items(contentDetails/videoId)", key="ignored-api-key")
    body = r.json()
    assert set(body) == {"nextPageToken", "items"}
    assert all(set(i) == {"contentDetails"} and set(i["contentDetails"]) == {"videoId"} for i in body["items"])
    assert select_fields({"a": {"b": 1, "c": 2}, "d": [{"e": 1, "f": 2}]}, "a/b,d(f)") == {"a": {"b": 1},
                                                                                          "d": [{"f": 2}]}


# -- Analytics limits, lag and data ------------------------------------------------------------------------

def _q(sb: Sandbox, token: str, **kw: Any) -> requests.Response:
    end = pt_today(sb)
    params = {"ids": "channel==MINE", "startDate": (end - timedelta(days=30)).isoformat(),
              "endDate": end.isoformat(), "metrics": "views,likes", **kw}
    return ya_get(sb, token, **params)


def test_analytics_limits(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    not_supported = "The query is not supported. Check the documentation at " \
                    "https://developers.google.com/youtube/analytics/v2/available_reports"
    ids = ",".join(f"v{i:010d}" for i in range(501))
    r = _q(sandbox, token, filters="video==" + ids)
    assert r.status_code == 400
    r = _q(sandbox, token, dimensions="video", maxResults=10)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(not_supported)
    r = _q(sandbox, token, dimensions="video", sort="-views", maxResults=201)
    assert r.status_code == 400
    assert _q(sandbox, token, dimensions="video", sort="-views", maxResults=200).status_code == 200
    for dims in ("day,video", "video,day"):
        r = _q(sandbox, token, dimensions=dims, sort="-views", maxResults=10)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(not_supported)
    r = _q(sandbox, token, metrics="views,bogusMetric")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Unknown identifier (bogusMetric) given in field parameters.metrics."
    r = _q(sandbox, token, startDate="2026-02-01", endDate="2026-01-01")
    assert r.status_code == 400
    r = _q(sandbox, token, startDate="2026-2-1")
    assert r.status_code == 400
    r = ya_get(sandbox, token, ids="channel==MINE", startDate="2026-01-01", endDate="2026-01-02")
    assert r.status_code == 400 and r.json()["error"]["errors"][0]["reason"] == "required"
    other = channel(sandbox, 1)
    r = _q(sandbox, token, ids=f"channel=={other.account_id}")
    assert r.status_code == 403 and r.json()["error"]["errors"][0]["reason"] == "forbidden"
    assert sandbox.ledger.ids_per_call("youtube_analytics")[0] == 501


def test_analytics_empty_result_has_no_rows_key_and_lag(sandbox: Sandbox) -> None:
    token = token_for(sandbox, channel(sandbox))
    today = pt_today(sandbox)
    lag = sandbox.settings.youtube_analytics_lag_days
    r = _q(sandbox, token, startDate=(today - timedelta(days=lag - 1)).isoformat(), endDate=today.isoformat(),
           dimensions="day")
    assert r.status_code == 200 and "rows" not in r.json() and r.json()["columnHeaders"]
    r = _q(sandbox, token, startDate=(today - timedelta(days=lag + 4)).isoformat(), endDate=today.isoformat(),
           dimensions="day")
    days = [row[0] for row in r.json()["rows"]]
    assert days[-1] == (today - timedelta(days=lag)).isoformat() and len(days) == 5
    r = _q(sandbox, token, filters="video==doesnotexist")
    assert "rows" not in r.json()


def test_analytics_video_totals_match_day_sums_and_late_corrections(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    today = pt_today(sandbox)
    start, end = today - timedelta(days=40), today - timedelta(days=5)
    vid = next(p for p in sandbox.world.posts(acc, sandbox.clock.now())
               if p.published_at.date() < start and not p.private).post_id
    common = {"startDate": start.isoformat(), "endDate": end.isoformat(), "metrics": "views,likes",
              "filters": f"video=={vid}"}
    days = _q(sandbox, token, dimensions="day", **common).json()["rows"]
    total = _q(sandbox, token, dimensions="video", sort="-views", maxResults=5, **common).json()["rows"]
    assert len(days) == 36 and total[0][0] == vid
    assert abs(sum(d[1] for d in days) - total[0][1]) <= len(days)  # integer truncation per day
    # channel-level recent days grow until they settle (late-arriving corrections)
    lag = sandbox.settings.youtube_analytics_lag_days
    recent = (today - timedelta(days=lag)).isoformat()
    first = _q(sandbox, token, startDate=recent, endDate=recent, dimensions="day").json()["rows"][0][1]
    sandbox.clock.advance(days=5)
    token = token_for(sandbox, acc)
    later = _q(sandbox, token, startDate=recent, endDate=recent, dimensions="day").json()["rows"][0][1]
    assert later > first


def test_analytics_top_videos_paging_with_start_index(sandbox: Sandbox) -> None:
    token = token_for(sandbox, channel(sandbox))
    today = pt_today(sandbox)
    kw = {"startDate": (today - timedelta(days=800)).isoformat(), "dimensions": "video", "sort": "-views"}
    full = _q(sandbox, token, maxResults=200, **kw).json()["rows"]
    paged: list[list[Any]] = []
    for start_index in range(1, len(full) + 1, 25):
        paged += _q(sandbox, token, maxResults=25, startIndex=start_index, **kw).json()["rows"]
    assert paged == full


def test_analytics_50k_video_channel_top_videos(sandbox: Sandbox) -> None:
    acc = sandbox.world.add_account("youtube", 50_000, credential="youtube-test-50k", future_posts_per_day=0)
    token = token_for(sandbox, acc)
    today = pt_today(sandbox)
    r = _q(sandbox, token, startDate=(today - timedelta(days=365)).isoformat(), dimensions="video",
           sort="-views", maxResults=200, metrics="views,estimatedMinutesWatched,averageViewDuration")
    rows = r.json()["rows"]
    assert len(rows) == 200 and rows[0][1] >= rows[-1][1]
    ch = yt_get(sandbox, "channels", token, part="statistics", mine="true").json()["items"][0]["statistics"]
    assert ch["videoCount"] == "50000"


def test_determinism_same_seed_same_responses(sandbox_factory: Any) -> None:
    instant = datetime.now(UTC).replace(microsecond=0)
    bodies = []
    for _ in range(2):
        sb = sandbox_factory()
        sb.clock.freeze(instant)
        acc = channel(sb, 2)
        token = token_for(sb, acc)
        ids = all_video_ids(sb, token, acc)
        out = [yt_get(sb, "videos", token, part="snippet,statistics,contentDetails", id=",".join(ids[:50])).json(),
               yt_get(sb, "channels", token, part="snippet,statistics", mine="true").json(),
               _q(sb, token, dimensions="day", metrics=METRICS).json(),
               _q(sb, token, dimensions="video", sort="-views", maxResults=50).json()]
        bodies.append((ids, out))
        sb.stop()
    assert bodies[0] == bodies[1]


def test_errors_on_http_error_via_official_client(official: dict[str, Any]) -> None:
    with pytest.raises(HttpError) as exc:
        official["data"].videos().list(part="id", id=",".join(["x" * 11] * 51)).execute()
    assert exc.value.resp.status == 400
    assert exc.value.reason  # the client parsed the Google error envelope


# -- audit fixes -------------------------------------------------------------------------------------------------


def test_repeat_cursor_fault_on_playlist_items(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    token = token_for(sandbox, acc)
    params: dict[str, Any] = {"part": "id", "playlistId": acc.extra["uploads_playlist"], "maxResults": 10}
    first = yt_get(sandbox, "playlistItems", token, **params).json()
    sandbox.faults.add(FaultRule("repeat_cursor", emulator="youtube_data", endpoint="playlistItems.list"))
    page = yt_get(sandbox, "playlistItems", token, pageToken=first["nextPageToken"], **params).json()
    assert page["nextPageToken"] == first["nextPageToken"]
    again = yt_get(sandbox, "playlistItems", token, pageToken=page["nextPageToken"], **params).json()
    assert [i["id"] for i in again["items"]] == [i["id"] for i in page["items"]]
    assert again["nextPageToken"] != first["nextPageToken"]


def test_api_key_public_reads_are_accepted_and_charged(sandbox: Sandbox) -> None:
    acc = channel(sandbox)
    key = sandbox.settings.google_api_key
    url = sandbox.url("youtube_data") + "/youtube/v3/"

    def keyed(path: str, **params: Any) -> requests.Response:
        return requests.get(url + path, params={"key": key, **params}, timeout=30)

    ch = keyed("channels", part="statistics,contentDetails", id=acc.account_id)
    assert ch.status_code == 200 and ch.json()["items"][0]["id"] == acc.account_id
    pl = keyed("playlistItems", part="contentDetails", playlistId=acc.extra["uploads_playlist"], maxResults=5)
    ids = [i["contentDetails"]["videoId"] for i in pl.json()["items"]]
    assert pl.status_code == 200 and len(ids) == 5
    vids = keyed("videos", part="statistics", id=",".join(ids))
    assert vids.status_code == 200 and len(vids.json()["items"]) == 5
    assert sandbox.ledger.units("youtube_data") == 3 == sandbox.youtube_data.quota_used()
    assert keyed("channels", part="id", mine="true").status_code == 401  # mine needs OAuth
    bad = requests.get(url + "videos", params={"key": "wrong", "part": "id", "id": ids[0]}, timeout=30)
    assert bad.status_code == 400 and "API key not valid" in bad.json()["error"]["message"]
    assert requests.get(url + "videos", params={"part": "id", "id": ids[0]}, timeout=30).status_code == 401


def test_channels_for_handle_and_for_username(sandbox: Sandbox) -> None:
    acc = channel(sandbox, 0)
    token = token_for(sandbox, acc)
    handle = yt_get(sandbox, "channels", token, part="snippet", id=acc.account_id).json()["items"][0][
        "snippet"]["customUrl"]
    assert handle.startswith("@") and handle == "@" + acc.name.lower().replace(" ", "")
    handles = {yt_get(sandbox, "channels", token, part="snippet", id=a.account_id).json()["items"][0]["snippet"][
        "customUrl"] for a in sandbox.world.accounts("youtube")[:6]}  # the generated brand channels
    assert len(handles) == 6  # unique across brands and "-2" suffixes
    for params in ({"forHandle": handle}, {"forHandle": handle[1:].upper()}, {"forUsername": handle[1:]}):
        items = yt_get(sandbox, "channels", token, part="id", **params).json()["items"]
        assert [i["id"] for i in items] == [acc.account_id]
    assert yt_get(sandbox, "channels", token, part="id", forHandle="@nobody").json()["items"] == []


def test_private_ids_setting(sandbox_factory: Any) -> None:
    box = sandbox_factory(youtube_omit_private_ids=False)
    acc = box.world.add_account("youtube", 30, credential="youtube-test-private-setting", private_ids=3)
    token = token_for(box, acc)
    private = [p.post_id for p in box.world.posts(acc, box.clock.now()) if p.private]
    items = yt_get(box, "videos", token, part="status,statistics", id=",".join(private)).json()["items"]
    assert [i["id"] for i in items] == private
    assert all(i["status"]["privacyStatus"] == "private" and "statistics" not in i for i in items)
