"""TikTok Business API v1.3 emulator: wire format, limits, errors and the tt_user OAuth lifecycle.

Real HTTP over loopback. Wire compatibility with the official SDK (``business_api_client`` from
tiktok-business-api-sdk-official 1.1.3): the SDK has no wrapper for the organic ``/business/*`` endpoints
(it only wraps Marketing-API paths), but its generic machinery is what every generated endpoint uses:
``Configuration.host`` is pointed at the sandbox and ``ApiClient.call_api`` sends the request with the
``Access-Token`` header, deserialises the answer into its ``InlineResponse200`` envelope model and raises
``TiktokSDKError`` when ``code != 0``. Nothing is mocked.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from business_api_client.api_client import ApiClient
from business_api_client.configuration import Configuration
from business_api_client.tiktok_business.tiktok_exceptions import TiktokSDKError

from sandbox import FaultRule, Sandbox, SandboxSettings, WorldSettings
from sandbox.world import Account

BASE = "/open_api/v1.3"


@pytest.fixture
def sb(sandbox: Sandbox) -> Sandbox:
    """The session sandbox (tests/fixtures/sandbox.py), reset before each test."""
    return sandbox


@pytest.fixture
def acc(sb: Sandbox) -> Account:
    return sb.world.accounts("tiktok")[0]


@pytest.fixture
def cred(sb: Sandbox, acc: Account) -> dict[str, Any]:
    return sb.credentials()[acc.credential]


def call(sb: Sandbox, path: str, token: str | None, **params: Any) -> requests.Response:
    headers = {"Access-Token": token} if token is not None else {}
    q = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()}
    return requests.get(sb.url("tiktok") + BASE + path, params=q, headers=headers, timeout=10)


def post(sb: Sandbox, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(sb.url("tiktok") + BASE + path, json=body, timeout=10)


def refresh(sb: Sandbox, token: str, **over: str) -> dict[str, Any]:
    s = sb.settings
    body = {"client_id": s.tiktok_client_id, "client_secret": s.tiktok_client_secret,
            "grant_type": "refresh_token", "refresh_token": token, **over}
    r = post(sb, "/tt_user/oauth2/refresh_token/", body)
    assert r.status_code == 200
    return r.json()


def code_of(r: requests.Response) -> int:
    assert r.status_code == 200, r.text  # business errors travel as HTTP 200 + code
    body = r.json()
    assert set(body) == {"code", "message", "request_id", "data"}
    return body["code"]


# -- official SDK -----------------------------------------------------------------------------------


def sdk_client(sb: Sandbox) -> ApiClient:
    config = Configuration()
    config.host = sb.url("tiktok")
    return ApiClient(config)


def sdk_get(client: ApiClient, path: str, token: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    return client.call_api(BASE + path, "GET", query_params=query, header_params={"Access-Token": token},
                           response_type="InlineResponse200", auth_settings=[], _return_http_data_only=True)


def test_official_sdk_reads_account_and_videos(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    client = sdk_client(sb)
    fields = ["username", "followers_count", "video_views", "daily_new_followers", "audience_activity"]
    out = sdk_get(client, "/business/get/", cred["access_token"],
                  [("business_id", acc.account_id), ("fields", json.dumps(fields))])
    assert set(out) == {"data", "request_id"}
    data = out["data"]
    assert data["username"] == acc.name.lstrip("@")
    assert isinstance(data["followers_count"], int)
    assert len(data["metrics"]) == 7  # default window today-7 .. today-1
    assert {"date", "followers_count", "video_views", "daily_new_followers"} <= set(data["metrics"][0])

    videos = sdk_get(client, "/business/video/list/", cred["access_token"],
                     [("business_id", acc.account_id), ("max_count", "5"),
                      ("fields", json.dumps(["item_id", "create_time", "video_views", "likes"]))])["data"]
    assert set(videos) == {"videos", "cursor", "has_more"}
    assert 1 <= len(videos["videos"]) <= 5 and videos["has_more"] is True

    with pytest.raises(TiktokSDKError, match="Error Code: 40105"):
        sdk_get(client, "/business/get/", "act.not-a-token", [("business_id", acc.account_id)])


# -- /business/get/ -----------------------------------------------------------------------------------


def test_business_get_envelope_profile_and_metrics(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    now = sb.clock.now()
    today = now.date()
    fields = ["username", "display_name", "profile_image", "followers_count", "total_likes", "videos_count",
              "is_business_account", "video_views", "unique_video_views", "daily_total_followers",
              "daily_lost_followers", "engaged_audience", "audience_genders", "audience_ages"]
    r = call(sb, "/business/get/", cred["access_token"], business_id=acc.account_id, fields=fields,
             start_date=str(today - timedelta(days=3)), end_date=str(today))
    assert code_of(r) == 0
    body = r.json()
    assert body["message"] == "OK" and body["request_id"]
    data = body["data"]
    assert "x-expires=" in data["profile_image"]
    assert data["is_business_account"] is True
    assert data["videos_count"] == len(sb.world.posts(acc, now))
    # T+1: metrics stop at today-1 even though end_date is today
    assert [m["date"] for m in data["metrics"]] == [str(today - timedelta(days=k)) for k in (3, 2, 1)]
    day = today - timedelta(days=1)
    assert data["metrics"][-1]["daily_total_followers"] == sb.world.followers(acc, day)
    assert data["metrics"][-1]["video_views"] == sb.world.observed(sb.world.daily(acc, "views", day), day, now)
    assert abs(sum(g["percentage"] for g in data["audience_genders"]) - 1) < 0.01
    assert "metrics" in data and "profile_views" not in data["metrics"][0]  # only requested fields


def test_business_get_late_corrections_grow_recent_days(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    day = sb.clock.now().date() - timedelta(days=1)
    args = {"business_id": acc.account_id, "fields": ["video_views"], "start_date": str(day), "end_date": str(day)}
    first = call(sb, "/business/get/", cred["access_token"], **args).json()["data"]["metrics"][0]["video_views"]
    sb.clock.advance(days=2)
    cred2 = sb.tiktok.initial_credential(acc.credential, [acc])
    later = call(sb, "/business/get/", cred2["access_token"], **args).json()["data"]["metrics"][0]["video_views"]
    assert later > first


def test_business_get_limits(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    today = sb.clock.now().date()
    token = cred["access_token"]
    too_old = call(sb, "/business/get/", token, business_id=acc.account_id, fields=["video_views"],
                   start_date=str(today - timedelta(days=61)), end_date=str(today - timedelta(days=1)))
    assert code_of(too_old) == sb.settings.tiktok_out_of_range_code
    oldest = call(sb, "/business/get/", token, business_id=acc.account_id, fields=["video_views"],
                  start_date=str(today - timedelta(days=60)), end_date=str(today - timedelta(days=1)))
    assert code_of(oldest) == 0 and len(oldest.json()["data"]["metrics"]) == 60
    bad_json = requests.get(sb.url("tiktok") + BASE + "/business/get/", headers={"Access-Token": token},
                            params={"business_id": acc.account_id, "fields": "[video_views"}, timeout=10)
    assert code_of(bad_json) == 40002
    assert code_of(call(sb, "/business/get/", token, business_id=acc.account_id, start_date="2026/01/01")) == 40002
    other = sb.world.accounts("tiktok")[1]
    assert code_of(call(sb, "/business/get/", token, business_id=other.account_id)) == 40001


def test_access_token_errors_are_http_200_with_codes(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    assert code_of(call(sb, "/business/get/", None, business_id=acc.account_id)) == 40104
    assert code_of(call(sb, "/business/get/", "act.bogus", business_id=acc.account_id)) == 40105
    # Bearer is not how this API authenticates
    r = requests.get(sb.url("tiktok") + BASE + "/business/get/", params={"business_id": acc.account_id},
                     headers={"Authorization": f"Bearer {cred['access_token']}"}, timeout=10)
    assert code_of(r) == 40104
    sb.clock.advance(hours=24, seconds=1)
    assert code_of(call(sb, "/business/get/", cred["access_token"], business_id=acc.account_id)) == 40102


def test_throttle_fault_is_code_40100(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    sb.faults.add(FaultRule(kind="throttle", emulator="tiktok", endpoint="business.video.list",
                            account=acc.account_id))
    r = call(sb, "/business/video/list/", cred["access_token"], business_id=acc.account_id)
    assert code_of(r) == 40100
    assert code_of(call(sb, "/business/video/list/", cred["access_token"], business_id=acc.account_id)) == 0
    assert sb.ledger.calls("tiktok", "business.video.list", acc.account_id) == 2


def test_injected_gateway_error_keeps_status(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    sb.faults.add(FaultRule(kind="status", emulator="tiktok", status=503))
    r = call(sb, "/business/get/", cred["access_token"], business_id=acc.account_id)
    assert r.status_code == 503 and r.json()["code"] == 50000


# -- /business/video/list/ ----------------------------------------------------------------------------


def test_video_list_limits(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    token = cred["access_token"]
    assert code_of(call(sb, "/business/video/list/", token, business_id=acc.account_id, max_count=21)) == 40002
    assert code_of(call(sb, "/business/video/list/", token, business_id=acc.account_id, max_count=20)) == 0
    r = call(sb, "/business/video/list/", token, business_id=acc.account_id, fields=["likes", "comments"])
    assert code_of(r) == 40002
    r = call(sb, "/business/video/list/", token, business_id=acc.account_id, fields=["likes"])
    assert code_of(r) == 0  # a single field may omit item_id
    assert code_of(call(sb, "/business/video/list/", token, business_id=acc.account_id, filters="{oops")) == 40002
    assert code_of(call(sb, "/business/video/list/", token, business_id=acc.account_id, cursor="abc")) == 40002
    # plural alias (v1.2-era path still used by some clients)
    assert code_of(call(sb, "/business/videos/list/", token, business_id=acc.account_id)) == 0


def test_video_list_cursor_paging_newest_first_with_short_pages(sb: Sandbox, acc: Account,
                                                                cred: dict[str, Any]) -> None:
    sb.settings.tiktok_short_page_probability = 0.5
    try:
        now = sb.clock.now()
        expected = [p.post_id for p in sb.world.posts(acc, now)]
        seen: list[str] = []
        times: list[int] = []
        cursor: int | None = None
        short_with_more = 0
        for _ in range(200):
            args: dict[str, Any] = {"business_id": acc.account_id, "max_count": 20,
                                    "fields": ["item_id", "create_time"]}
            if cursor is not None:
                args["cursor"] = cursor
            data = call(sb, "/business/video/list/", cred["access_token"], **args).json()["data"]
            seen += [v["item_id"] for v in data["videos"]]
            times += [v["create_time"] for v in data["videos"]]
            if data["videos"]:
                assert data["cursor"] == data["videos"][-1]["create_time"] * 1000
            if data["has_more"] and len(data["videos"]) < 20:
                short_with_more += 1
            if not data["has_more"]:
                break
            cursor = data["cursor"]
        assert seen == expected  # every video once, newest first
        assert times == sorted(times, reverse=True)
        assert short_with_more >= 1
        assert sb.ledger.ids_per_call("tiktok", "business.video.list")[0] <= 20
    finally:
        sb.settings.tiktok_short_page_probability = SandboxSettings().tiktok_short_page_probability


def test_video_list_cursor_is_exclusive_epoch_ms(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    posts = sb.world.posts(acc, sb.clock.now())
    pivot = posts[10]
    data = call(sb, "/business/video/list/", cred["access_token"], business_id=acc.account_id, max_count=1,
                cursor=int(pivot.published_at.timestamp()) * 1000).json()["data"]
    assert data["videos"][0]["item_id"] == posts[11].post_id


def test_repeat_cursor_fault(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    sb.faults.add(FaultRule(kind="repeat_cursor", emulator="tiktok", endpoint="business.video.list"))
    cursor = int(sb.clock.now().timestamp() * 1000) - 1000
    data = call(sb, "/business/video/list/", cred["access_token"], business_id=acc.account_id,
                cursor=cursor).json()["data"]
    assert data["cursor"] == cursor and data["has_more"] is True
    again = call(sb, "/business/video/list/", cred["access_token"], business_id=acc.account_id,
                 cursor=cursor).json()["data"]
    assert again["cursor"] != cursor


def test_video_fields_and_t_plus_one(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    fields = ["item_id", "media_type", "create_time", "caption", "share_url", "embed_url", "thumbnail_url",
              "video_duration", "likes", "comments", "shares", "favorites", "reach", "video_views",
              "total_time_watched", "average_time_watched", "full_video_watched_rate", "new_followers",
              "profile_views", "video_view_retention", "impression_sources", "audience_countries",
              "audience_genders", "audience_types", "engagement_likes"]
    future = [p for p in sb.world.all_posts(acc) if p.published_at > sb.clock.now() and p.media_type == "VIDEO"]
    post_ = future[-1]  # the first upcoming upload
    sb.clock.set(post_.published_at + timedelta(hours=12))
    token = sb.tiktok.initial_credential(acc.credential, [acc])["access_token"]
    args = {"business_id": acc.account_id, "fields": fields, "filters": {"video_ids": [post_.post_id]}}
    v = call(sb, "/business/video/list/", token, **args).json()["data"]["videos"][0]
    assert set(v) == set(fields)
    assert v["item_id"] == post_.post_id and v["create_time"] == int(post_.published_at.timestamp())
    assert v["video_views"] == 0 and v["likes"] == 0  # T+1: nothing before a day has passed
    sb.clock.advance(days=3)
    token = sb.tiktok.initial_credential(acc.credential, [acc])["access_token"]  # the old one expired
    v = call(sb, "/business/video/list/", token, **args).json()["data"]["videos"][0]
    at = sb.clock.now() - timedelta(days=1)
    assert v["video_views"] == post_.metric("views", at) > 0
    assert v["favorites"] == post_.metric("saves", at)
    assert v["video_duration"] == round(post_.duration_seconds, 3)
    assert v["impression_sources"][0]["impression_source"] == "For You"
    assert v["video_view_retention"][0]["second"] == "1"


# -- OAuth --------------------------------------------------------------------------------------------


def test_initial_credential_payload(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    assert cred["provider"] == "tiktok" and cred["credential"] == acc.credential
    assert cred["account_ids"] == [acc.account_id] and cred["metadata"] == {"open_id": acc.account_id}
    assert datetime.fromisoformat(cred["refresh_token_expires_at"]) == acc.authorized_at + timedelta(days=365)
    expires = datetime.fromisoformat(cred["access_token_expires_at"])
    assert expires - datetime.fromisoformat(cred["issued_at"]) == pytest.approx(timedelta(hours=24),
                                                                                abs=timedelta(seconds=1))


def test_refresh_rotates_and_counts_down_from_authorization(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    first = refresh(sb, cred["refresh_token"])
    assert first["code"] == 0
    data = first["data"]
    assert set(data) == {"access_token", "expires_in", "open_id", "refresh_token", "refresh_token_expires_in",
                         "scope", "token_type"}
    assert data["expires_in"] == 86400 and data["token_type"] == "Bearer" and data["open_id"] == acc.account_id
    assert data["refresh_token"] != cred["refresh_token"]
    remaining = (acc.authorized_at + timedelta(days=365) - sb.clock.now()).total_seconds()
    assert abs(data["refresh_token_expires_in"] - remaining) <= 2
    # the new access token works; the old refresh token is used up
    assert code_of(call(sb, "/business/get/", data["access_token"], business_id=acc.account_id)) == 0
    assert refresh(sb, cred["refresh_token"])["code"] == 40107
    sb.clock.advance(days=1)
    second = refresh(sb, data["refresh_token"])["data"]
    assert data["refresh_token_expires_in"] - second["refresh_token_expires_in"] == pytest.approx(86400, abs=2)


def test_refresh_errors(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    assert refresh(sb, "rft.unknown")["code"] == 40107
    assert refresh(sb, cred["refresh_token"], client_secret="wrong")["code"] == sb.settings.tiktok_invalid_client_code
    assert refresh(sb, cred["refresh_token"], grant_type="password")["code"] == 40108
    sb.tokens.revoke(acc.credential, "refresh")
    assert refresh(sb, cred["refresh_token"])["code"] == 40107


def test_refresh_token_expires_a_year_after_authorization(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    sb.clock.set(acc.authorized_at + timedelta(days=365, seconds=1))
    assert refresh(sb, cred["refresh_token"])["code"] == 40103


def test_refresh_without_rotation_keeps_the_token(sb: Sandbox, cred: dict[str, Any]) -> None:
    sb.settings.tiktok_rotate_refresh_token = False
    try:
        data = refresh(sb, cred["refresh_token"])["data"]
        assert data["refresh_token"] == cred["refresh_token"]
        assert refresh(sb, cred["refresh_token"])["code"] == 0
    finally:
        sb.settings.tiktok_rotate_refresh_token = True


def test_auth_code_exchange_and_token_info(sb: Sandbox, acc: Account) -> None:
    s = sb.settings
    body = {"client_id": s.tiktok_client_id, "client_secret": s.tiktok_client_secret,
            "grant_type": "authorization_code", "auth_code": f"sbx-auth-{acc.credential}",
            "redirect_uri": "https://example.com/cb"}
    data = post(sb, "/tt_user/oauth2/token/", body).json()["data"]
    assert data["open_id"] == acc.account_id and data["refresh_token_expires_in"] == 365 * 86400
    info = post(sb, "/tt_user/token_info/get/", {"app_id": s.tiktok_client_id,
                                                 "access_token": data["access_token"]}).json()
    assert info["code"] == 0 and info["data"]["creator_id"] == acc.account_id
    bad = post(sb, "/tt_user/oauth2/token/", {**body, "auth_code": "nope"}).json()
    assert bad["code"] == 40110


# -- determinism -----


def test_same_seed_same_answers(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    instant = datetime.combine(sb.world.anchor, datetime.min.time(), UTC) + timedelta(hours=9)
    other = Sandbox(SandboxSettings(world=WorldSettings(posts_per_account=120, anchor=sb.world.anchor))).start()
    try:
        answers = []
        for box in (sb, other):
            box.clock.freeze(instant)
            a = box.world.accounts("tiktok")[0]
            token = box.credentials()[a.credential]["access_token"]
            get = call(box, "/business/get/", token, business_id=a.account_id,
                       fields=["followers_count", "video_views", "audience_activity", "audience_countries"]).json()
            videos = call(box, "/business/video/list/", token, business_id=a.account_id, max_count=20,
                          fields=["item_id", "video_views", "likes", "impression_sources"]).json()
            answers.append((a.account_id, get["data"], videos["data"]))
        assert answers[0] == answers[1]
    finally:
        other.stop()


# -- audit fixes -------------------------------------------------------------------------------------------------


def test_token_info_with_non_object_body_is_a_param_error(sb: Sandbox) -> None:
    for body in (b"[1, 2]", b'"text"', b"{not json"):
        r = requests.post(sb.url("tiktok") + BASE + "/tt_user/token_info/get/", data=body,
                          headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 200 and r.json()["code"] == 40002, r.text


def test_walk_5000_posts_every_page_no_post_lost(sandbox_factory: Any) -> None:
    """Dense posting (5,000 posts in 20 days): whole-second publish instants are unique per account, so
    paging by the ms cursor loses nothing."""
    box = sandbox_factory(SandboxSettings(world=WorldSettings(posts_per_account=5000, history_days=20,
                                                              accounts_per_platform={"tiktok": 1})))
    acc = box.world.accounts("tiktok")[0]
    token = box.credentials()[acc.credential]["access_token"]
    visible = box.world.posts(acc, box.clock.now())
    assert len({int(p.published_at.timestamp()) for p in visible}) == len(visible)
    seen: list[str] = []
    cursor: int | None = None
    for _ in range(1000):
        args: dict[str, Any] = {"business_id": acc.account_id, "max_count": 20}
        if cursor is not None:
            args["cursor"] = cursor
        data = call(box, "/business/video/list/", token, **args).json()["data"]
        seen += [v["item_id"] for v in data["videos"]]
        if not data["has_more"]:
            break
        cursor = data["cursor"]
    assert len(seen) == len(visible) == len(set(seen))
    assert seen == [p.post_id for p in visible]


def test_rate_limit_per_account_per_minute(sandbox_factory: Any) -> None:
    box = sandbox_factory(tiktok_rate_limit_per_minute=40)
    box.clock.freeze(box.clock.now().replace(second=0, microsecond=0))
    acc = box.world.accounts("tiktok")[0]
    token = box.credentials()[acc.credential]["access_token"]
    codes = [call(box, "/business/get/", token, business_id=acc.account_id).json()["code"] for _ in range(41)]
    assert codes[:40] == [0] * 40 and codes[40] == 40100
    other = call(box, "/business/video/list/", token, business_id=acc.account_id).json()
    assert other["code"] == 0  # per endpoint
    box.clock.advance(minutes=1)
    assert call(box, "/business/get/", token, business_id=acc.account_id).json()["code"] == 0


def test_create_time_as_string_setting(sandbox_factory: Any) -> None:
    box = sandbox_factory(tiktok_create_time_as_string=True)
    acc = box.world.accounts("tiktok")[0]
    token = box.credentials()[acc.credential]["access_token"]
    v = call(box, "/business/video/list/", token, business_id=acc.account_id,
             fields=["item_id", "create_time"]).json()["data"]["videos"][0]
    post = box.world.posts(acc, box.clock.now())[0]
    assert v["create_time"] == str(int(post.published_at.timestamp()))


def test_video_ids_filter_uses_positions(sb: Sandbox, acc: Account, cred: dict[str, Any]) -> None:
    posts = sb.world.posts(acc, sb.clock.now())
    wanted = [posts[30].post_id, posts[2].post_id, "nope"]
    sb.settings.tiktok_short_page_probability = 0.0  # no trust-and-safety short page in this check
    try:
        data = call(sb, "/business/video/list/", cred["access_token"], business_id=acc.account_id,
                    filters={"video_ids": wanted}).json()["data"]
    finally:
        sb.settings.tiktok_short_page_probability = SandboxSettings().tiktok_short_page_probability
    assert [v["item_id"] for v in data["videos"]] == [posts[2].post_id, posts[30].post_id]
    assert data["has_more"] is False
