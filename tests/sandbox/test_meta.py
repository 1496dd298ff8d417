"""Meta Graph API emulator: wire format, limits, errors, tokens, batch and usage headers.

Real HTTP over loopback. Wire compatibility with the official ``facebook_business`` SDK (26.0.3): the only
thing changed is where it sends requests: ``FacebookSession.GRAPH`` is an attribute of the session
instance (``api._session.GRAPH``), set to the sandbox URL because graph.facebook.com cannot be reached
here. Everything else (URL building, JSON-encoded list params, Cursor paging, batch) is the SDK's own.
The SDK's client-side type checker warns about field expansions (``insights.metric(...)``) and list
params it does not know; those ``UserWarning``s are ignored in the SDK tests.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from facebook_business.adobjects.igmedia import IGMedia
from facebook_business.adobjects.iguser import IGUser
from facebook_business.adobjects.page import Page
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError

from sandbox import FaultRule, Sandbox, SandboxSettings, WorldSettings
from sandbox.meta import PACIFIC

V = "v26.0"
GRAPH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+0000$")


@pytest.fixture
def sb(sandbox: Sandbox) -> Sandbox:
    """The session sandbox (tests/fixtures/sandbox.py), reset before each test."""
    return sandbox


@pytest.fixture
def cred(sb: Sandbox) -> dict[str, Any]:
    return sb.credentials()["meta-aurora"]


@pytest.fixture
def page_id(cred: dict[str, Any]) -> str:
    return sorted(cred["metadata"]["page_tokens"])[0]


@pytest.fixture
def page_token(cred: dict[str, Any], page_id: str) -> str:
    return cred["metadata"]["page_tokens"][page_id]


@pytest.fixture
def ig_id(cred: dict[str, Any], page_id: str) -> str:
    return next(ig for ig, page in cred["metadata"]["ig_page"].items() if page == page_id)


def get(sb: Sandbox, path: str, token: str | None = None, **params: Any) -> requests.Response:
    if token is not None:
        params["access_token"] = token
    return requests.get(f"{sb.url('meta')}/{V}/{path}", params=params, timeout=10)


def error(r: requests.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert {"message", "type", "code", "fbtrace_id"} <= set(err)
    return err


def sdk(sb: Sandbox, token: str) -> FacebookAdsApi:
    api = FacebookAdsApi.init(access_token=token, api_version=V, crash_log=False)
    api._session.GRAPH = sb.url("meta")  # the one thing that cannot run here: graph.facebook.com
    return api


def ts(d: date) -> int:
    return int(datetime.combine(d, datetime.min.time(), PACIFIC).timestamp())


# -- official SDK ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sdk_page_insights_posts_and_batch(sb: Sandbox, page_id: str, page_token: str) -> None:
    api = sdk(sb, page_token)
    page = Page(page_id, api=api)
    today = sb.clock.now().astimezone(PACIFIC).date()
    insights = page.get_insights(params={"metric": ["page_media_view", "page_post_engagements", "page_follows"],
                                         "period": "day", "since": ts(today - timedelta(days=5)),
                                         "until": ts(today)})
    rows = list(insights)
    assert [r["name"] for r in rows] == ["page_media_view", "page_post_engagements", "page_follows"]
    assert len(rows[0]["values"]) == 5 and all(GRAPH_TIME.match(v["end_time"]) for v in rows[0]["values"])

    posts = list(page.get_posts(fields=["id", "created_time", "message", "permalink_url", "shares",
                                        "reactions.summary(total_count).limit(0)",
                                        "comments.summary(total_count).limit(0)",
                                        "insights.metric(post_media_view,post_total_media_view_unique,post_clicks)"],
                                params={"limit": 50}))
    acc = sb.world.account("facebook", page_id)
    assert acc is not None
    assert [p["id"] for p in posts] == [p.post_id for p in sb.world.posts(acc, sb.clock.now())]  # Cursor paging
    first = posts[0]
    assert GRAPH_TIME.match(first["created_time"])
    assert first["insights"]["data"][0]["name"] == "post_media_view"
    assert isinstance(first["reactions"]["summary"]["total_count"], int)

    batch = api.new_batch()
    got: list[Any] = []
    page.api_get(fields=["id", "name"], batch=batch, success=lambda r: got.append(r.json()))
    page.get_insights(params={"metric": ["page_total_media_view_unique"], "period": "day"}, batch=batch,
                      success=lambda r: got.append(r.json()))
    page.get_insights(params={"metric": ["page_impressions"], "period": "day"}, batch=batch,
                      failure=lambda r: got.append(r.error()))
    assert batch.execute() is None
    assert got[0]["id"] == page_id
    assert got[1]["data"][0]["name"] == "page_total_media_view_unique"
    assert isinstance(got[2], FacebookRequestError) and got[2].api_error_code() == 100
    assert sb.ledger.calls("meta", "page.insights", page_id) >= 3  # sub-requests counted separately
    assert sb.ledger.calls("meta", "batch") == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sdk_instagram_insights_and_media(sb: Sandbox, ig_id: str, page_token: str) -> None:
    api = sdk(sb, page_token)
    user = IGUser(ig_id, api=api)
    profile = user.api_get(fields=["username", "followers_count", "follows_count", "media_count"])
    assert profile["followers_count"] > 0 and profile["media_count"] > 0
    reach = list(user.get_insights(params={"metric": ["reach", "follower_count"], "period": ["day"],
                                           "metric_type": "time_series"}))
    assert {r["name"] for r in reach} == {"reach", "follower_count"}
    totals = list(user.get_insights(params={"metric": ["views", "total_interactions", "reach"], "period": ["day"],
                                            "metric_type": "total_value", "breakdown": ["media_product_type"]}))
    assert all("value" in r["total_value"] for r in totals)
    assert totals[0]["total_value"]["breakdowns"][0]["dimension_keys"] == ["media_product_type"]

    media = list(user.get_media(fields=["id", "caption", "media_type", "media_product_type", "timestamp",
                                        "permalink", "like_count", "comments_count"], params={"limit": 40}))
    acc = sb.world.account("instagram", ig_id)
    assert acc is not None
    assert len(media) == len(sb.world.posts(acc, sb.clock.now()))
    reel = next(m for m in media if m["media_product_type"] == "REELS")
    rows = list(IGMedia(reel["id"], api=api).get_insights(
        params={"metric": ["reach", "likes", "saved", "ig_reels_avg_watch_time", "views"]}))
    assert [r["name"] for r in rows] == ["reach", "likes", "saved", "ig_reels_avg_watch_time", "views"]
    assert all(r["period"] == "lifetime" for r in rows)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sdk_raises_on_graph_errors(sb: Sandbox, page_id: str, page_token: str) -> None:
    api = sdk(sb, page_token)
    with pytest.raises(FacebookRequestError) as exc:
        list(Page(page_id, api=api).get_insights(params={"metric": ["page_fans"], "period": "day"}))
    assert exc.value.api_error_code() == 100 and exc.value.http_status() == 400


# -- Page insights --------------------------------------------------------------------------------------------


def test_page_insights_window_limit(sb: Sandbox, page_id: str, page_token: str) -> None:
    today = sb.clock.now().astimezone(PACIFIC).date()
    until = ts(today)
    err = error(get(sb, f"{page_id}/insights", page_token, metric="page_media_view", period="day",
                    since=until - 94 * 86400, until=until))
    assert err["code"] == 1
    assert err["message"] == "There cannot be more than 93 days (8035200 s) between since and until"
    ok = get(sb, f"{page_id}/insights", page_token, metric="page_media_view", period="day",
             since=until - 93 * 86400, until=until)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["values"]) >= 92


def test_deprecated_or_unknown_metric_fails_whole_request(sb: Sandbox, page_id: str, page_token: str) -> None:
    for bad in ("page_impressions", "page_fans", "page_engaged_users", "page_impressions_unique", "nonsense"):
        err = error(get(sb, f"{page_id}/insights", page_token, metric=f"page_media_view,{bad},page_follows",
                        period="day"))
        assert err["code"] == 100 and err["message"] == "(#100) The value must be a valid insights metric"
    err = error(get(sb, f"{page_id}/posts", page_token,
                    fields="id,insights.metric(post_media_view,post_impressions)"))
    assert err["code"] == 100
    missing = error(get(sb, f"{page_id}/insights", page_token, period="day"))
    assert missing["code"] == 3001


def test_page_insights_end_time_is_pacific_midnight_across_dst(sb: Sandbox, page_id: str) -> None:
    sb.clock.set(datetime(2026, 11, 10, 12, tzinfo=UTC))  # US DST ended on 2026-11-01
    token = sb.credentials()["meta-aurora"]["metadata"]["page_tokens"][page_id]
    r = get(sb, f"{page_id}/insights", token, metric="page_post_engagements", period="day",
            since="2026-10-30", until="2026-11-03")
    assert r.status_code == 200
    ends = [v["end_time"] for v in r.json()["data"][0]["values"]]
    assert ends == ["2026-10-31T07:00:00+0000", "2026-11-01T07:00:00+0000", "2026-11-02T08:00:00+0000",
                    "2026-11-03T08:00:00+0000"]
    paging = r.json()["paging"]
    assert "since=" in paging["next"] and "until=" in paging["previous"]
    nxt = requests.get(paging["next"], timeout=10)  # time-based paging URLs point back at the sandbox
    assert nxt.status_code == 200 and nxt.json()["data"][0]["values"][0]["end_time"] == "2026-11-04T08:00:00+0000"


def test_page_insights_only_complete_days(sb: Sandbox, page_id: str, page_token: str) -> None:
    today = sb.clock.now().astimezone(PACIFIC).date()
    r = get(sb, f"{page_id}/insights", page_token, metric="page_media_view", period="day",
            since=ts(today - timedelta(days=3)), until=ts(today + timedelta(days=2)))
    ends = [v["end_time"] for v in r.json()["data"][0]["values"]]
    assert len(ends) == 3 and ends[-1].startswith(str(today))


# -- Page posts ---------------------------------------------------------------------------------------------------


def test_posts_cursor_paging_and_last_page(sb: Sandbox, page_id: str, page_token: str) -> None:
    acc = sb.world.account("facebook", page_id)
    assert acc is not None
    total = len(sb.world.posts(acc, sb.clock.now()))
    seen: list[str] = []
    url: str | None = f"{sb.url('meta')}/{V}/{page_id}/posts"
    params: dict[str, Any] | None = {"access_token": page_token, "limit": 50, "fields": "id,created_time"}
    last: dict[str, Any] = {}
    while url:
        last = requests.get(url, params=params, timeout=10).json()
        seen += [p["id"] for p in last["data"]]
        url, params = last["paging"].get("next"), None
    assert len(seen) == total == len(set(seen))
    assert "after" in last["paging"]["cursors"] and "next" not in last["paging"]
    over = error(get(sb, f"{page_id}/posts", page_token, limit=sb.settings.meta_max_limit + 1))
    assert over["code"] == 100


def test_post_fields_shares_absent_when_zero(sb: Sandbox, page_id: str) -> None:
    acc = sb.world.account("facebook", page_id)
    assert acc is not None
    upcoming = [p for p in sb.world.all_posts(acc) if p.published_at > sb.clock.now()][-1]
    sb.clock.set(upcoming.published_at + timedelta(minutes=1))
    token = sb.credentials()["meta-aurora"]["metadata"]["page_tokens"][page_id]
    r = get(sb, f"{page_id}/posts", token, fields="id,created_time,message,permalink_url,shares", limit=1)
    post = r.json()["data"][0]
    assert post["id"] == upcoming.post_id and "shares" not in post
    assert post["created_time"] == upcoming.published_at.strftime("%Y-%m-%dT%H:%M:%S+0000")
    sb.clock.advance(days=10)
    r = get(sb, upcoming.post_id, token, fields="id,shares")
    assert r.json()["shares"]["count"] == upcoming.metric("shares", sb.clock.now()) > 0
    ins = get(sb, f"{upcoming.post_id}/insights", token, metric="post_media_view,post_total_media_view_unique")
    values = {d["name"]: d["values"][0]["value"] for d in ins.json()["data"]}
    assert values["post_media_view"] == upcoming.metric("views", sb.clock.now())
    bad_field = error(get(sb, f"{page_id}/posts", token, fields="id,bogus"))
    assert "nonexisting field (bogus)" in bad_field["message"]


# -- Instagram -------------------------------------------------------------------------------------------------------


def test_ig_window_limit_and_follower_count_rules(sb: Sandbox, ig_id: str, page_token: str) -> None:
    now = int(sb.clock.now().timestamp())
    err = error(get(sb, f"{ig_id}/insights", page_token, metric="reach", period="day",
                    since=now - 31 * 86400, until=now))
    assert err["code"] == 100
    assert "There cannot be more than 30 days (2592000 s) between since and until" in err["message"]
    ok = get(sb, f"{ig_id}/insights", page_token, metric="reach", period="day", since=now - 30 * 86400, until=now)
    assert ok.status_code == 200
    old = error(get(sb, f"{ig_id}/insights", page_token, metric="follower_count", period="day",
                    since=now - 40 * 86400, until=now - 20 * 86400))
    assert "(follower_count) metric only supports querying data for the last 30 days" in old["message"]


def test_ig_metric_type_rules(sb: Sandbox, ig_id: str, page_token: str) -> None:
    def ask(metric: str, metric_type: str | None = None, period: str = "day") -> requests.Response:
        extra = {"metric_type": metric_type} if metric_type else {}
        return get(sb, f"{ig_id}/insights", page_token, metric=metric, period=period, **extra)

    assert error(ask("views"))["code"] == 100  # total_value-only metric without metric_type
    err = error(ask("views,accounts_engaged", "time_series"))
    assert "is not compatible with the metric type" in err["message"]
    assert error(ask("follower_count", "total_value"))["code"] == 100
    assert error(ask("reach,impressions", "total_value"))["code"] == 100  # deprecated fails the whole request
    assert error(ask("profile_views", "total_value"))["code"] == 100
    series = ask("reach", "time_series").json()["data"][0]
    assert series["values"] and all(GRAPH_TIME.match(v["end_time"]) for v in series["values"])
    total = ask("reach,views,likes,follows_and_unfollows", "total_value").json()["data"]
    assert [d["name"] for d in total] == ["reach", "views", "likes", "follows_and_unfollows"]
    assert all(set(d["total_value"]) == {"value"} and "values" not in d for d in total)
    # reach as a total equals the sum of its daily series over the same window
    assert total[0]["total_value"]["value"] == sum(v["value"] for v in series["values"])


def test_ig_missing_data_is_an_empty_array(sb: Sandbox, ig_id: str, page_token: str) -> None:
    today = sb.clock.now().astimezone(PACIFIC).date()
    r = get(sb, f"{ig_id}/insights", page_token, metric="reach,views", period="day", metric_type="total_value",
            since=ts(today), until=ts(today + timedelta(days=1)))
    assert r.status_code == 200 and r.json()["data"] == []


def test_ig_small_account_has_no_follower_count(sb: Sandbox) -> None:
    small = sb.world.add_account("instagram", 5, credential="meta-small")
    small.followers_base = 20
    sb.world.add_account("facebook", 5, credential="meta-small")
    cred = sb.meta.initial_credential("meta-small", [a for a in sb.world.accounts() if a.credential == "meta-small"])
    r = get(sb, f"{small.account_id}/insights", cred["access_token"], metric="follower_count,reach", period="day")
    assert [d["name"] for d in r.json()["data"]] == ["reach"]


def test_media_insights_compatibility(sb: Sandbox, ig_id: str, page_token: str) -> None:
    acc = sb.world.account("instagram", ig_id)
    assert acc is not None
    posts = sb.world.posts(acc, sb.clock.now())
    reel = next(p for p in posts if p.media_type == "REELS")
    image = next(p for p in posts if p.media_type == "IMAGE")
    ok = get(sb, f"{image.post_id}/insights", page_token, metric="reach,saved,likes,follows,profile_visits")
    assert ok.status_code == 200 and ok.json()["data"][0]["values"][0]["value"] == image.metric("reach", sb.clock.now())
    err = error(get(sb, f"{image.post_id}/insights", page_token, metric="reach,ig_reels_avg_watch_time"))
    assert err["code"] == 100
    assert error(get(sb, f"{reel.post_id}/insights", page_token, metric="reach,profile_visits"))["code"] == 100
    for deprecated in ("plays", "impressions", "clips_replays_count", "ig_reels_aggregated_all_plays_count",
                       "video_views"):
        assert error(get(sb, f"{reel.post_id}/insights", page_token, metric=f"reach,{deprecated}"))["code"] == 100


def test_media_list_paging(sb: Sandbox, ig_id: str, page_token: str) -> None:
    r = get(sb, f"{ig_id}/media", page_token, fields="id,timestamp,media_type", limit=100).json()
    assert len(r["data"]) == 100 and "next" in r["paging"]
    last = requests.get(r["paging"]["next"], timeout=10).json()
    assert 0 < len(last["data"]) < 100
    assert "next" not in last["paging"] and "after" in last["paging"]["cursors"]
    first = get(sb, f"{ig_id}/media", page_token, fields="id", limit=7).json()
    second = get(sb, f"{ig_id}/media", page_token, fields="id", limit=7,
                 after=first["paging"]["cursors"]["after"]).json()
    assert [m["id"] for m in first["data"] + second["data"]] == [m["id"] for m in r["data"][:14]]


# -- tokens -----


def test_token_errors(sb: Sandbox, cred: dict[str, Any], page_id: str, page_token: str) -> None:
    missing = error(get(sb, page_id))
    assert missing["code"] == 104
    invalid = error(get(sb, page_id, "EAAnotatoken"))
    assert invalid["code"] == 190
    other_page = next(p for p in sb.credentials()["meta-bolt"]["metadata"]["page_tokens"])
    denied = error(get(sb, other_page, page_token))
    assert denied["code"] == 100 and denied["error_subcode"] == 33
    assert error(get(sb, "999999999999", page_token))["error_subcode"] == 33
    sb.clock.advance(days=61)
    expired = error(get(sb, "me", cred["access_token"]))
    assert expired["code"] == 190 and expired["error_subcode"] == 463 and expired["type"] == "OAuthException"
    assert expired["message"].startswith("Error validating access token: Session has expired on ")
    assert re.search(r"The current time is \w+day, \d\d-\w{3}-\d\d \d\d:\d\d:\d\d P[SD]T\.$", expired["message"])
    # page tokens derived from a long-lived user token never expire
    assert get(sb, page_id, page_token, fields="id,name").status_code == 200


def test_user_token_reads_pages_and_page_tokens(sb: Sandbox, cred: dict[str, Any], page_id: str,
                                                page_token: str, ig_id: str) -> None:
    user = cred["access_token"]
    accounts = get(sb, "me/accounts", user, fields="id,name,access_token,instagram_business_account").json()
    tokens = {p["id"]: p["access_token"] for p in accounts["data"]}
    assert tokens == cred["metadata"]["page_tokens"]
    node = get(sb, page_id, user, fields="access_token,name,instagram_business_account").json()
    assert node["access_token"] == page_token and node["instagram_business_account"]["id"] == ig_id
    assert get(sb, f"{ig_id}/insights", user, metric="reach", period="day").status_code == 200
    assert error(get(sb, "me/accounts", page_token))["code"] == 100  # a page token has no /accounts
    assert cred["metadata"]["user_id"] == get(sb, "me", user).json()["id"]
    bad_version = requests.get(f"{sb.url('meta')}/v1.0/{page_id}", params={"access_token": user}, timeout=10)
    assert bad_version.status_code == 400 and bad_version.json()["error"]["code"] == 2635


def test_fb_exchange_token(sb: Sandbox, cred: dict[str, Any], page_id: str) -> None:
    s = sb.settings
    args = {"grant_type": "fb_exchange_token", "client_id": s.meta_app_id, "client_secret": s.meta_app_secret}
    r = get(sb, "oauth/access_token", fb_exchange_token=cred["access_token"], **args)
    body = r.json()
    assert r.status_code == 200 and body["token_type"] == "bearer" and body["expires_in"] == 5183944
    assert get(sb, page_id, body["access_token"]).status_code == 200
    assert error(get(sb, "oauth/access_token", fb_exchange_token=cred["access_token"],
                     **{**args, "client_secret": "nope"}))["code"] == 1
    sb.clock.advance(days=61)
    expired = error(get(sb, "oauth/access_token", fb_exchange_token=cred["access_token"], **args))
    assert expired["code"] == 190 and expired["error_subcode"] == 463
    sb.tokens.revoke("meta-aurora", "access")
    revoked = error(get(sb, "oauth/access_token", fb_exchange_token=body["access_token"], **args))
    assert revoked["code"] == 190 and revoked["error_subcode"] == 460


# -- batch -----


def test_batch_limits_and_shape(sb: Sandbox, page_id: str, page_token: str) -> None:
    url = f"{sb.url('meta')}/{V}/"
    items = [{"method": "GET", "relative_url": f"{page_id}?fields=id,name"}] * 51
    r = requests.post(url, data={"batch": json.dumps(items), "access_token": page_token}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == 1
    items = [{"method": "GET", "relative_url": f"{page_id}?fields=id,name"},
             {"method": "GET", "relative_url": f"{page_id}/insights?metric=page_fans&period=day"},
             {"method": "GET", "relative_url": f"/{V}/{page_id}/posts?limit=2&fields=id"}]
    r = requests.post(sb.url("meta") + "/", data={"batch": json.dumps(items), "include_headers": "false",
                                                  "access_token": page_token}, timeout=10)
    out = r.json()
    assert r.status_code == 200 and [o["code"] for o in out] == [200, 400, 200]
    assert all(set(o) == {"code", "body"} for o in out)
    assert json.loads(out[0]["body"])["id"] == page_id
    assert json.loads(out[1]["body"])["error"]["code"] == 100
    assert len(json.loads(out[2]["body"])["data"]) == 2
    assert sb.ledger.calls("meta", "page") == 1 and sb.ledger.calls("meta", "page.posts") == 1


# -- usage headers and throttling -----


def test_usage_headers_build_up_then_throttle(sb: Sandbox, page_id: str, page_token: str) -> None:
    defaults = SandboxSettings()
    sb.settings.meta_app_calls_per_hour, sb.settings.meta_buc_calls_per_day = 1000, 20
    try:
        r = get(sb, page_id, page_token)
        assert "X-App-Usage" not in r.headers  # headers appear once usage builds up
        buc: dict[str, Any] = {}
        for _ in range(18):
            r = get(sb, page_id, page_token)
            buc = json.loads(r.headers["X-Business-Use-Case-Usage"])
        assert buc[page_id][0]["type"] == "pages" and buc[page_id][0]["call_count"] == 95
        err = error(get(sb, page_id, page_token))
        assert err["code"] == 80001
        sb.clock.advance(hours=25)  # rolling 24 h window
        assert get(sb, page_id, page_token).status_code == 200
        sb.settings.meta_app_calls_per_hour = 30
        for _ in range(30):
            r = get(sb, page_id, page_token)
        assert r.status_code == 400 and r.json()["error"]["code"] == 4
        assert json.loads(r.headers["X-App-Usage"])["call_count"] == 100
    finally:
        sb.settings.meta_app_calls_per_hour = defaults.meta_app_calls_per_hour
        sb.settings.meta_buc_calls_per_day = defaults.meta_buc_calls_per_day


def test_throttle_fault_renders_platform_codes(sb: Sandbox, ig_id: str, page_token: str) -> None:
    sb.faults.add(FaultRule(kind="throttle", emulator="meta", endpoint="ig.insights", code=80002, delay=300))
    err_r = get(sb, f"{ig_id}/insights", page_token, metric="reach", period="day")
    err = error(err_r)
    assert err["code"] == 80002 and err["is_transient"] is True
    usage = json.loads(err_r.headers["X-Business-Use-Case-Usage"])
    assert usage[ig_id][0]["type"] == "instagram" and usage[ig_id][0]["estimated_time_to_regain_access"] == 5
    assert "call_count" in json.loads(err_r.headers["X-App-Usage"])
    sb.faults.add(FaultRule(kind="platform_error", emulator="meta", code="190/460"))
    err = error(get(sb, ig_id, page_token))
    assert err["code"] == 190 and err["error_subcode"] == 460


# -- determinism -----


def test_same_seed_same_answers(sb: Sandbox) -> None:
    instant = datetime.combine(sb.world.anchor, datetime.min.time(), UTC) + timedelta(hours=15)
    other = Sandbox(SandboxSettings(world=WorldSettings(posts_per_account=120, anchor=sb.world.anchor))).start()
    try:
        answers = []
        for box in (sb, other):
            box.clock.freeze(instant)
            c = box.credentials()["meta-delta"]
            page = sorted(c["metadata"]["page_tokens"])[0]
            token = c["metadata"]["page_tokens"][page]
            ig = next(iter(c["metadata"]["ig_page"]))
            ins = get(box, f"{page}/insights", token, metric="page_media_view,page_follows", period="day",
                      since="2026-01-01", until="2026-01-20").json()["data"]
            posts = get(box, f"{page}/posts", token, fields="id,message,shares,insights.metric(post_clicks)",
                        limit=10).json()["data"]
            media = get(box, f"{ig}/media", c["access_token"], fields="id,like_count,media_type",
                        limit=10).json()["data"]
            answers.append((page, ig, ins, posts, media))
        assert answers[0] == answers[1]
    finally:
        other.stop()


# -- audit fixes: repeat_cursor, throttle codes, deprecated IG metrics, lifetime IG metrics, periods, settings --


def test_repeat_cursor_fault_on_posts_and_media(sb: Sandbox, page_id: str, ig_id: str, page_token: str) -> None:
    for node, endpoint in ((page_id, "posts"), (ig_id, "media")):
        first = get(sb, f"{node}/{endpoint}", page_token, limit=5, fields="id").json()
        after = first["paging"]["cursors"]["after"]
        sb.faults.add(FaultRule(kind="repeat_cursor", emulator="meta",
                                endpoint="page.posts" if endpoint == "posts" else "ig.media"))
        page = get(sb, f"{node}/{endpoint}", page_token, limit=5, fields="id", after=after).json()
        assert page["paging"]["cursors"]["after"] == after
        assert f"after={after}" in page["paging"]["next"]
        again = requests.get(page["paging"]["next"], timeout=10).json()  # the fault fired once
        assert [d["id"] for d in again["data"]] == [d["id"] for d in page["data"]]  # the same page again
        assert again["paging"]["cursors"]["after"] != after


@pytest.mark.parametrize("code", [17, 32, 613])
def test_injected_throttle_codes_with_usage_headers(sb: Sandbox, page_id: str, page_token: str, code: int) -> None:
    sb.faults.add(FaultRule(kind="throttle", emulator="meta", endpoint="page.insights", code=code, delay=600))
    r = get(sb, f"{page_id}/insights", page_token, metric="page_media_view", period="day")
    err = error(r)
    assert err["code"] == code and err["is_transient"] is True and err["message"].startswith(f"(#{code})")
    app = json.loads(r.headers["X-App-Usage"])
    assert set(app) == {"call_count", "total_time", "total_cputime"}
    assert app["call_count"] == (100 if code == 17 else 10)
    buc = json.loads(r.headers["X-Business-Use-Case-Usage"])[page_id][0]
    assert buc["type"] == "pages" and buc["estimated_time_to_regain_access"] == 10
    assert get(sb, f"{page_id}/insights", page_token, metric="page_media_view", period="day").status_code == 200


def test_ig_deprecated_metrics_fail_whole_request_as_invalid_insights_metric(
        sb: Sandbox, ig_id: str, page_token: str) -> None:
    for metric in ("impressions", "reach,profile_views"):
        err = error(get(sb, f"{ig_id}/insights", page_token, metric=metric, period="day"))
        assert err["code"] == 100 and "must be a valid insights metric" in err["message"]
    media = get(sb, f"{ig_id}/media", page_token, fields="id", limit=1).json()["data"][0]["id"]
    for metric in ("plays", "reach,impressions", "video_views"):
        err = error(get(sb, f"{media}/insights", page_token, metric=metric))
        assert err["code"] == 100 and "must be a valid insights metric" in err["message"]
    err = error(get(sb, f"{ig_id}/media", page_token, fields="id,insights.metric(reach,plays)"))
    assert err["code"] == 100 and "must be a valid insights metric" in err["message"]
    unknown = error(get(sb, f"{ig_id}/insights", page_token, metric="bogus", period="day"))
    assert "must be one of the following values" in unknown["message"]


def test_ig_online_followers_and_demographics(sb: Sandbox, ig_id: str, page_token: str) -> None:
    today = sb.clock.now().astimezone(PACIFIC).date()
    r = get(sb, f"{ig_id}/insights", page_token, metric="online_followers", period="lifetime",
            since=ts(today - timedelta(days=3)), until=ts(today))
    item = r.json()["data"][0]
    assert item["name"] == "online_followers" and item["period"] == "lifetime" and len(item["values"]) == 3
    assert sorted(item["values"][0]["value"], key=int) == [str(h) for h in range(24)]
    assert GRAPH_TIME.match(item["values"][0]["end_time"])
    assert error(get(sb, f"{ig_id}/insights", page_token, metric="online_followers", period="day"))["code"] == 100
    for metric in ("follower_demographics", "engaged_audience_demographics"):
        r = get(sb, f"{ig_id}/insights", page_token, metric=metric, period="lifetime", metric_type="total_value",
                breakdown="country", timeframe="this_month")
        item = r.json()["data"][0]
        bd = item["total_value"]["breakdowns"][0]
        assert item["period"] == "lifetime" and bd["dimension_keys"] == ["country"]
        assert all(len(x["dimension_values"]) == 1 and x["value"] > 0 for x in bd["results"])
    two = get(sb, f"{ig_id}/insights", page_token, metric="follower_demographics", period="lifetime",
              metric_type="total_value", breakdown="age,gender", timeframe="this_week").json()["data"][0]
    assert 0 < len(two["total_value"]["breakdowns"][0]["results"]) <= 45
    bad = [dict(breakdown="country"), dict(breakdown="country", timeframe="last_90_days"),
           dict(breakdown="hair", timeframe="this_week"), dict(timeframe="this_week")]
    for extra in bad:
        err = error(get(sb, f"{ig_id}/insights", page_token, metric="follower_demographics", period="lifetime",
                        metric_type="total_value", **extra))
        assert err["code"] == 100
    err = error(get(sb, f"{ig_id}/insights", page_token, metric="follower_demographics", period="lifetime",
                    breakdown="age", timeframe="this_week"))
    assert "metric_type=total_value" in err["message"]


def test_page_insights_week_days28_and_unsupported_periods(sb: Sandbox, page_id: str, page_token: str) -> None:
    today = sb.clock.now().astimezone(PACIFIC).date()
    params = dict(metric="page_media_view,page_follows", since=ts(today - timedelta(days=3)), until=ts(today))
    data = get(sb, f"{page_id}/insights", page_token, period="week", **params).json()["data"]
    assert [(d["name"], d["period"]) for d in data] == [("page_media_view", "week")]  # page_follows: day only
    acc = sb.world.account("facebook", page_id)
    assert acc is not None
    d28 = get(sb, f"{page_id}/insights", page_token, period="days_28", **params).json()["data"][0]
    day = get(sb, f"{page_id}/insights", page_token, period="day", metric="page_media_view",
              since=ts(today - timedelta(days=40)), until=ts(today)).json()["data"][0]["values"]
    assert d28["values"][-1]["value"] == sum(v["value"] for v in day[-28:])
    for period in ("month", "lifetime"):
        assert get(sb, f"{page_id}/insights", page_token, period=period, **params).json()["data"] == []
    sb.settings.meta_page_unsupported_period = "error"
    try:
        err = error(get(sb, f"{page_id}/insights", page_token, period="month", **params))
        assert err["code"] == 100 and "valid insights metric" in err["message"]
    finally:
        sb.settings.meta_page_unsupported_period = "omit"


def test_meta_unverified_facts_are_settings(sandbox_factory: Any) -> None:
    box = sandbox_factory(meta_omit_zero_shares=False, meta_ig_watch_time_unit="s", meta_throttle_at_percent=50,
                          meta_buc_calls_per_day=10)
    c = box.credentials()["meta-aurora"]
    page = sorted(c["metadata"]["page_tokens"])[0]
    token = c["metadata"]["page_tokens"][page]
    acc = box.world.account("facebook", page)
    assert acc is not None
    upcoming = [p for p in box.world.all_posts(acc) if p.published_at > box.clock.now()][-1]
    box.clock.set(upcoming.published_at + timedelta(minutes=1))
    post = get(box, upcoming.post_id, token, fields="id,shares").json()
    assert post["shares"] == {"count": 0}
    ig = next(ig for ig, pg in c["metadata"]["ig_page"].items() if pg == page)
    ig_acc = box.world.account("instagram", ig)
    assert ig_acc is not None
    reel = next(p for p in box.world.posts(ig_acc, box.clock.now()) if p.media_type == "REELS")
    v = get(box, f"{reel.post_id}/insights", token, metric="ig_reels_avg_watch_time").json()["data"][0]
    assert v["values"][0]["value"] == int(reel.duration_seconds * 0.45)  # seconds, not ms
    codes = [get(box, page, token).status_code for _ in range(6)]
    # the post read above was the page's first BUC call: its 5th call reaches 50 % of 10 -> throttled at 50 %
    assert codes[:3] == [200] * 3 and codes[3] == 400
