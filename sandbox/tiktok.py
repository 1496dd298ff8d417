"""TikTok API for Business v1.3 emulator: organic Business Account endpoints and tt_user OAuth.

Wire format per docs api-contracts §1: every answer is the ``{"code","message","request_id","data"}``
envelope; business errors arrive as HTTP ``settings.tiktok_error_http_status`` (200) with a non-zero
``code``; ``/business/*`` authenticates with the ``Access-Token`` header; ``fields``/``filters`` are JSON
strings in the query. Values come from the deterministic world (``sandbox.world``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sandbox.core import Emulator, FaultRule, Request, Response, json_response, repeat_cursor
from sandbox.world import Account, Post, first_index, unit

BASE = "/open_api/v1.3"

# -- error codes (tiktok-business-api-sdk-official==1.1.3: tiktok_business/tiktok_code.py) ------------
OK = 0
PERMISSION_ERROR = 40001
PARAM_ERROR = 40002
REQUEST_TOO_FREQUENT = 40100
ACCESS_TOKEN_EXPIRE = 40102
REFRESH_TOKEN_EXPIRE = 40103
EMPTY_ACCESS_TOKEN = 40104
INVALID_ACCESS_TOKEN = 40105
INVALID_REFRESH_TOKEN = 40107
INVALID_GRANT_TYPE = 40108
AUTH_CODE_ERROR = 40110
ROUTE_NOT_FOUND = 40400
SYS_ERROR = 50000

ACCESS_LIFETIME = timedelta(hours=24)
REFRESH_LIFETIME = timedelta(days=365)
SCOPES = ("user.info.basic", "user.info.username", "user.info.stats", "user.account.type", "user.insights",
          "video.list", "video.insights", "comment.list")
AUTH_CODE_PREFIX = "sbx-auth-"

#: /business/get/ fields
PROFILE_FIELDS = frozenset({
    "is_business_account", "username", "display_name", "profile_image", "profile_deep_link",
    "bio_description", "is_verified", "following_count", "followers_count", "total_likes", "videos_count",
})
DAILY_FIELDS = frozenset({
    "video_views", "unique_video_views", "profile_views", "likes", "comments", "shares",
    "phone_number_clicks", "lead_submissions", "app_download_clicks", "bio_link_clicks", "email_clicks",
    "address_clicks", "daily_total_followers", "daily_new_followers", "daily_lost_followers",
    "followers_count", "audience_activity", "engaged_audience",
})
AUDIENCE_FIELDS = frozenset({"audience_ages", "audience_genders", "audience_countries", "audience_cities"})
BUSINESS_DEFAULT_FIELDS = ("display_name", "profile_image")
#: daily field -> (World.daily metric, scale)
DAILY_SOURCES: dict[str, tuple[str, float]] = {
    "video_views": ("views", 1.0), "unique_video_views": ("reach", 1.0), "profile_views": ("profile_views", 1.0),
    "likes": ("likes", 1.0), "comments": ("comments", 1.0), "shares": ("shares", 1.0),
    "engaged_audience": ("engagements", 0.8), "daily_new_followers": ("followers_gained", 1.0),
    "daily_lost_followers": ("followers_lost", 1.0), "phone_number_clicks": ("profile_views", 0.01),
    "lead_submissions": ("profile_views", 0.005), "app_download_clicks": ("profile_views", 0.02),
    "bio_link_clicks": ("profile_views", 0.05), "email_clicks": ("profile_views", 0.01),
    "address_clicks": ("profile_views", 0.004),
}

#: /business/video/list/ fields
VIDEO_FIELDS = frozenset({
    "item_id", "media_type", "is_ad", "create_time", "thumbnail_url", "share_url", "embed_url", "caption",
    "video_duration", "likes", "comments", "shares", "favorites", "reach", "video_views", "total_time_watched",
    "average_time_watched", "full_video_watched_rate", "new_followers", "profile_views", "website_clicks",
    "phone_number_clicks", "lead_submissions", "app_download_clicks", "email_clicks", "address_clicks",
    "video_view_retention", "impression_sources", "audience_genders", "audience_countries", "audience_cities",
    "audience_types", "engagement_likes",
})
VIDEO_MAX_COUNT = 20
VIDEO_DEFAULT_COUNT = 10

IMPRESSION_SOURCES = ("For You", "Follow", "Sound", "Personal Profile", "Search", "Hashtag", "Direct Message")
COUNTRIES = ("US", "MX", "AR", "ES", "CL", "BR", "CO")
CITIES = ("Buenos Aires", "Mexico City", "Madrid", "Santiago", "New York", "Bogota")
AGES = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("Female", "Male", "Other")


class TikTokError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _split(weights: list[float]) -> list[float]:
    """Normalise weights to percentages (4 decimals) summing to ~1."""
    total = sum(weights) or 1.0
    return [round(w / total, 4) for w in weights]


class TikTokEmulator(Emulator):
    name = "tiktok"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], tuple[int, int]] = {}  # (account, endpoint) -> (minute, calls)
        self._likes_cache: dict[tuple[str, int], int] = {}  # (account, minute) -> total_likes
        self.route("GET", BASE + r"/business/get/?", "business.get", self._wrap(self._business_get))
        self.route("GET", BASE + r"/business/videos?/list/?", "business.video.list",
                   self._wrap(self._video_list))
        self.route("POST", BASE + r"/tt_user/oauth2/refresh_token/?", "oauth2.refresh_token",
                   self._wrap(self._refresh))
        self.route("POST", BASE + r"/tt_user/oauth2/token/?", "oauth2.token", self._wrap(self._token))
        self.route("POST", BASE + r"/tt_user/oauth2/revoke/?", "oauth2.revoke", self._wrap(self._revoke))
        self.route("POST", BASE + r"/tt_user/token_info/get/?", "token_info.get", self._wrap(self._token_info))

    # -- envelope ---------------------------------------------------------------------------------------
    def request_id(self) -> str:
        """``YYYYMMDDhhmmss`` + 20 hex, like the real ids; deterministic per (seed, sequence)."""
        n = next(self._seq)
        stamp = self.sb.clock.now().strftime("%Y%m%d%H%M%S")
        tail = hashlib.blake2b(f"{self.sb.settings.world.seed}-{n}".encode(), digest_size=10).hexdigest().upper()
        return stamp + tail

    def envelope(self, data: Any, code: int = OK, message: str = "OK", status: int = 200) -> Response:
        return json_response({"code": code, "message": message, "request_id": self.request_id(), "data": data},
                             status)

    def fail(self, code: int, message: str) -> Response:
        return self.envelope({}, code, message, self.sb.settings.tiktok_error_http_status)

    def error_response(self, status: int, code: int | str | None, message: str) -> Response:
        """Injected errors: with a ``code`` it is a business error (HTTP 200 + code); without one a
        gateway failure with the given HTTP status (still the JSON envelope)."""
        if code is not None:
            return self.fail(int(code), message)
        fallback = {404: ROUTE_NOT_FOUND, 429: REQUEST_TOO_FREQUENT, 504: 50002}.get(status, SYS_ERROR)
        return self.envelope({}, fallback, message, status)

    def throttle_response(self, rule: FaultRule) -> Response:
        code = int(rule.code) if rule.code is not None else REQUEST_TOO_FREQUENT
        status = rule.status or self.sb.settings.tiktok_error_http_status
        return self.envelope({}, code, rule.message or "Request too frequent. Please try again later.", status)

    def not_found(self, req: Request) -> Response:
        return self.fail(ROUTE_NOT_FOUND, f"Route not found: {req.method} {req.path}")

    def account_of(self, req: Request, m: re.Match[str]) -> str | None:
        if req.arg("business_id"):
            return req.arg("business_id")
        if req.method == "POST":
            try:
                body = req.json() or {}
            except ValueError:
                return None
            if isinstance(body, dict):
                token = body.get("refresh_token") or body.get("access_token")
                grant = self.sb.tokens.lookup(token) if isinstance(token, str) else None
                if grant and grant.accounts:
                    return grant.accounts[0]
        return None

    def _wrap(self, handler: Any) -> Any:
        def run(req: Request, m: re.Match[str]) -> Response:
            try:
                return handler(req, m)
            except TikTokError as exc:
                return self.fail(exc.code, exc.message)
        return run

    # -- credentials ------------------------------------------------------------------------------------
    def initial_credential(self, name: str, accounts: list[Account]) -> dict[str, Any]:
        """The vault payload the browser OAuth step would have produced (architecture.md "Credentials")."""
        ids = [a.account_id for a in accounts]
        now = self.sb.clock.now()
        authorized = min(a.authorized_at for a in accounts)
        access = self.sb.tokens.issue("tiktok", "access", name, ACCESS_LIFETIME, "act.", SCOPES, ids)
        refresh = self.sb.tokens.issue("tiktok", "refresh", name, None, "rft.", SCOPES, ids,
                                       expires_at=authorized + REFRESH_LIFETIME)
        return {
            "credential": name, "provider": "tiktok",
            "access_token": access.token, "access_token_expires_at": _iso(access.expires_at),
            "refresh_token": refresh.token, "refresh_token_expires_at": _iso(refresh.expires_at),
            "scopes": list(SCOPES), "account_ids": ids, "issued_at": now.isoformat(),
            "metadata": {"open_id": ids[0]},
        }

    # -- auth -------------------------------------------------------------------------------------------
    def _rate_limit(self, account: str, endpoint: str) -> None:
        """``tiktok_rate_limit_per_minute`` calls per account per endpoint per sandbox-clock minute, then 40100."""
        limit = self.sb.settings.tiktok_rate_limit_per_minute
        if limit is None:
            return
        minute = int(self.sb.clock.now().timestamp() // 60)
        with self._lock:
            last, n = self._calls.get((account, endpoint), (minute, 0))
            n = n + 1 if last == minute else 1
            self._calls[(account, endpoint)] = (minute, n)
        if n > limit:
            raise TikTokError(REQUEST_TOO_FREQUENT, "Request too frequent. Please try again later.")

    def _authorize(self, req: Request, endpoint: str | None = None) -> Account:
        token = req.header("Access-Token")
        status, grant = self.sb.tokens.check(token, "tiktok", ("access",))
        if status == "missing":
            raise TikTokError(EMPTY_ACCESS_TOKEN, "Access token is null.")
        if status == "expired":
            raise TikTokError(ACCESS_TOKEN_EXPIRE, "Access token has expired. Please refresh it.")
        if status != "ok" or grant is None:
            raise TikTokError(INVALID_ACCESS_TOKEN, "The access token is invalid. Please check it and try again.")
        business_id = req.arg("business_id")
        if not business_id:
            raise TikTokError(PARAM_ERROR, "business_id: Missing data for required field.")
        acc = self.sb.world.account("tiktok", business_id)
        if acc is None or business_id not in grant.accounts:
            raise TikTokError(PERMISSION_ERROR, "No permission to operate business_id " + business_id)
        req.account = business_id
        if endpoint:
            self._rate_limit(business_id, endpoint)
        return acc

    # -- /business/get/ ---------------------------------------------------------------------------------
    def _business_get(self, req: Request, m: re.Match[str]) -> Response:
        acc = self._authorize(req, "business.get")
        s = self.sb.settings
        now = self.sb.clock.now()
        today = now.date()
        fields = _json_list(req.arg("fields"), "fields", BUSINESS_DEFAULT_FIELDS)
        unknown = [f for f in fields if f not in PROFILE_FIELDS | DAILY_FIELDS | AUDIENCE_FIELDS]
        if unknown:
            raise TikTokError(PARAM_ERROR, f"fields: Invalid field(s) {unknown}.")
        start = _date_arg(req.arg("start_date"), "start_date", today - timedelta(days=7))
        end = _date_arg(req.arg("end_date"), "end_date", today - timedelta(days=1))
        if start > end:
            raise TikTokError(PARAM_ERROR, "start_date must be earlier than or equal to end_date.")
        if start < today - timedelta(days=s.tiktok_lookback_days):
            raise TikTokError(s.tiktok_out_of_range_code,
                              f"start_date: only the last {s.tiktok_lookback_days} days of data can be queried.")
        key = ("business", acc.account_id, tuple(fields), start, end, s.tiktok_data_lag_days)
        data = self.per_minute(key, now, lambda: self._business_data(acc, fields, start, end, now))
        req.ids = 1
        return self.envelope(data)

    def _business_data(self, acc: Account, fields: list[str], start: date, end: date, now: datetime
                       ) -> dict[str, Any]:
        s = self.sb.settings
        today = now.date()
        world = self.sb.world
        data: dict[str, Any] = {}
        followers_now = world.followers(acc, today)
        profile = {
            "is_business_account": True,
            "username": acc.name.lstrip("@"),
            "display_name": acc.brand,
            "profile_image": (f"https://p16-sign.tiktokcdn-us.com/tos-useast5-avt/{acc.account_id[-12:]}.jpeg"
                              f"?x-expires={int((now + timedelta(hours=48)).timestamp())}&x-signature=sbx"),
            "profile_deep_link": f"https://www.tiktok.com/@{acc.name.lstrip('@')}",
            "bio_description": f"Official {acc.brand} account",
            "is_verified": unit(acc.account_id, "verified") < 0.5,
            "following_count": int(10 + 300 * unit(acc.account_id, "following")),
            "followers_count": followers_now,
            "total_likes": self._total_likes(acc, now) if "total_likes" in fields else 0,
            "videos_count": world.visible_count(acc, now),
        }
        for f in fields:
            if f in PROFILE_FIELDS:
                data[f] = profile[f]
        daily = [f for f in fields if f in DAILY_FIELDS]
        if daily:
            last = min(end, today - timedelta(days=s.tiktok_data_lag_days))
            first = max(start, acc.created_at.date())
            metrics = []
            d = first
            while d <= last:
                metrics.append(self._day(acc, d, daily, now, followers_now))
                d += timedelta(days=1)
            data["metrics"] = metrics
        if followers_now >= 100:
            for f in fields:
                if f in AUDIENCE_FIELDS:
                    data[f] = _audience(acc.account_id, f)
        return data

    def _total_likes(self, acc: Account, now: datetime) -> int:
        """Lifetime likes of the visible videos: O(n), so cached per account and sandbox-clock minute."""
        key = (acc.account_id, int(now.timestamp() // 60))
        hit = self._likes_cache.get(key)
        if hit is None:
            posts = self.sb.world.all_posts(acc)
            hit = sum(p.metric("likes", now) for p in posts[self.sb.world.first_visible(acc, now):])
            if len(self._likes_cache) > 10_000:
                self._likes_cache.clear()
            self._likes_cache[key] = hit
        return hit

    def _day(self, acc: Account, d: date, fields: list[str], now: datetime, followers_now: int) -> dict[str, Any]:
        world = self.sb.world
        row: dict[str, Any] = {"date": d.isoformat()}
        for f in fields:
            if f in ("followers_count", "daily_total_followers"):
                row[f] = world.followers(acc, d)
            elif f == "audience_activity":
                if followers_now >= 100:
                    reach = world.observed(world.daily(acc, "reach", d), d, now)
                    weights = [0.3 + unit(acc.account_id, d.toordinal(), h) + (1.5 if 18 <= h <= 22 else 0)
                               for h in range(24)]
                    total = sum(weights)
                    row[f] = [{"hour": str(h), "count": int(reach * w / total)} for h, w in enumerate(weights)]
            else:
                metric, scale = DAILY_SOURCES[f]
                row[f] = int(world.observed(world.daily(acc, metric, d), d, now) * scale)
        return row

    # -- /business/video/list/ --------------------------------------------------------------------------
    def _video_list(self, req: Request, m: re.Match[str]) -> Response:
        acc = self._authorize(req, "business.video.list")
        now = self.sb.clock.now()
        fields = _json_list(req.arg("fields"), "fields", ("item_id",))
        unknown = [f for f in fields if f not in VIDEO_FIELDS]
        if unknown:
            raise TikTokError(PARAM_ERROR, f"fields: Invalid field(s) {unknown}.")
        if len(fields) > 1 and "item_id" not in fields:
            raise TikTokError(PARAM_ERROR, "fields: item_id is required when requesting several fields.")
        filters = _json_object(req.arg("filters"), "filters")
        video_ids = filters.get("video_ids")
        if video_ids is not None and (not isinstance(video_ids, list)
                                      or not all(isinstance(v, str) for v in video_ids)):
            raise TikTokError(PARAM_ERROR, "filters.video_ids: must be a list of strings.")
        max_count = _int_arg(req.arg("max_count"), "max_count", VIDEO_DEFAULT_COUNT)
        if not 1 <= max_count <= VIDEO_MAX_COUNT:
            raise TikTokError(PARAM_ERROR, f"max_count: must be between 1 and {VIDEO_MAX_COUNT}.")
        now_ms = int(now.timestamp() * 1000)
        cursor = _int_arg(req.arg("cursor"), "cursor", now_ms)
        if cursor < 0:
            raise TikTokError(PARAM_ERROR, "cursor: must be a non-negative UTC epoch in milliseconds.")

        world = self.sb.world
        posts = world.all_posts(acc)
        # newest first: the first visible post published (whole seconds) strictly before the cursor
        start = max(world.first_visible(acc, now),
                    first_index(posts, lambda p: int(p.published_at.timestamp()) * 1000 < cursor))
        size = max_count
        s = self.sb.settings
        if size > 1 and unit(s.world.seed, acc.account_id, cursor, "short") < s.tiktok_short_page_probability:
            size = 1 + int(unit(s.world.seed, acc.account_id, cursor, "len") * (size - 1))
        if video_ids is not None:
            positions = world.positions(acc)
            found = sorted({positions[v] for v in video_ids if v in positions and positions[v] >= start})
            page = [posts[i] for i in found[:size]]
            has_more = len(found) > len(page)
        else:
            page = posts[start:start + size]
            has_more = start + len(page) < len(posts)
        next_cursor = int(page[-1].published_at.timestamp()) * 1000 if page else cursor
        if req.arg("cursor") and repeat_cursor(self.sb, self.name, "business.video.list", acc.account_id):
            next_cursor = cursor
        at = now - timedelta(days=s.tiktok_data_lag_days)  # lifetime metrics with T+1 latency
        key = ("video", tuple(fields), s.tiktok_create_time_as_string, s.tiktok_data_lag_days)
        videos = [self.per_minute((*key, p.post_id), now, lambda p=p: self._video(acc, p, fields, at, now))
                  for p in page]
        req.ids = len(videos)
        return self.envelope({"videos": videos, "cursor": next_cursor, "has_more": has_more})

    def _video(self, acc: Account, p: Post, fields: list[str], at: datetime, now: datetime) -> dict[str, Any]:
        views = p.metric("views", at)
        watched = round(p.duration_seconds * 0.45 * views, 3)
        pid = p.post_id
        username = acc.name.lstrip("@")
        expires = int((now + timedelta(hours=6)).timestamp())
        retention_points = min(max(1, int(p.duration_seconds)), 60)
        values: dict[str, Callable[[], Any]] = {
            "item_id": lambda: pid,
            "media_type": lambda: p.media_type,
            "is_ad": lambda: unit(pid, "ad") < 0.03,
            "create_time": lambda: (str(int(p.published_at.timestamp()))
                                    if self.sb.settings.tiktok_create_time_as_string
                                    else int(p.published_at.timestamp())),
            "thumbnail_url": lambda: f"https://p16-sign.tiktokcdn-us.com/obj/{pid}~tplv-noop.image?x-expires={expires}",
            "share_url": lambda: f"https://www.tiktok.com/@{username}/video/{pid}",
            "embed_url": lambda: f"https://www.tiktok.com/embed/v2/{pid}",
            "caption": lambda: p.title,
            "video_duration": lambda: round(p.duration_seconds, 3),
            "likes": lambda: p.metric("likes", at),
            "comments": lambda: p.metric("comments", at),
            "shares": lambda: p.metric("shares", at),
            "favorites": lambda: p.metric("saves", at),
            "reach": lambda: p.metric("reach", at),
            "video_views": lambda: views,
            "total_time_watched": lambda: watched,
            "average_time_watched": lambda: round(watched / views, 3) if views else 0.0,
            "full_video_watched_rate": lambda: round(0.05 + 0.4 * unit(pid, "full"), 4) if views else 0.0,
            "new_followers": lambda: p.metric("subscribers", at),
            "profile_views": lambda: int(views * 0.01),
            "website_clicks": lambda: int(views * 0.001),
            "phone_number_clicks": lambda: 0,
            "lead_submissions": lambda: 0,
            "app_download_clicks": lambda: 0,
            "email_clicks": lambda: 0,
            "address_clicks": lambda: 0,
            "video_view_retention": lambda: [
                {"second": str(i), "percentage": round(0.95 ** i, 4)} for i in range(1, retention_points + 1)
            ] if views and p.duration_seconds else [],
            "impression_sources": lambda: [
                {"impression_source": src, "percentage": pct}
                for src, pct in zip(IMPRESSION_SOURCES,
                                    _split([unit(pid, src) * (4 if src == "For You" else 1)
                                            for src in IMPRESSION_SOURCES]), strict=True)
            ] if views else [],
            "audience_genders": lambda: _audience(pid, "audience_genders") if views else [],
            "audience_countries": lambda: _audience(pid, "audience_countries") if views else [],
            "audience_cities": lambda: _audience(pid, "audience_cities") if views else [],
            "audience_types": lambda: [
                {"type": t, "percentage": round(v, 4)} for t, v in (
                    ("NEW_VIEWER", 0.6 + 0.3 * unit(pid, "new")), ("RETURN_VIEWER", 0.1 + 0.3 * unit(pid, "ret")),
                    ("FOLLOWER_PERCENT", 0.05 + 0.3 * unit(pid, "fol")),
                    ("NON_FOLLOWER_PERCENT", 0.65 + 0.3 * unit(pid, "non")),
                )
            ] if views else [],
            "engagement_likes": lambda: [
                {"second": str(i), "percentage": round(0.02 * unit(pid, "el", i), 4)}
                for i in range(1, retention_points + 1)
            ] if views and p.duration_seconds else [],
        }
        return {f: values[f]() for f in fields}  # only what was asked for (hot path)

    # -- OAuth ------------------------------------------------------------------------------------------
    def _client(self, req: Request) -> dict[str, Any]:
        try:
            body = req.json()
        except ValueError as exc:
            raise TikTokError(PARAM_ERROR, "Request body must be JSON.") from exc
        if not isinstance(body, dict):
            raise TikTokError(PARAM_ERROR, "Request body must be a JSON object.")
        s = self.sb.settings
        if not body.get("client_id") or not body.get("client_secret"):
            raise TikTokError(PARAM_ERROR, "client_id and client_secret are required.")
        if body["client_id"] != s.tiktok_client_id or body["client_secret"] != s.tiktok_client_secret:
            raise TikTokError(s.tiktok_invalid_client_code, "Invalid client_id or client_secret.")
        return body

    def _token_data(self, access: Any, refresh: Any) -> dict[str, Any]:
        now = self.sb.clock.now()
        return {
            "access_token": access.token,
            "expires_in": int(ACCESS_LIFETIME.total_seconds()),  # always a fresh token
            "open_id": access.accounts[0] if access.accounts else "",
            "refresh_token": refresh.token,
            "refresh_token_expires_in": max(0, round((refresh.expires_at - now).total_seconds())),
            "scope": ",".join(access.scopes),
            "token_type": "Bearer",
        }

    def _refresh(self, req: Request, m: re.Match[str]) -> Response:
        body = self._client(req)
        if body.get("grant_type") != "refresh_token":
            raise TikTokError(INVALID_GRANT_TYPE, "grant_type must be refresh_token.")
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise TikTokError(PARAM_ERROR, "refresh_token: Missing data for required field.")
        with self._lock:
            status, grant = self.sb.tokens.check(token, "tiktok", ("refresh",))
            if status == "expired":
                raise TikTokError(REFRESH_TOKEN_EXPIRE, "Refresh token has expired. Please re-authorize.")
            if status != "ok" or grant is None or grant.used:
                raise TikTokError(INVALID_REFRESH_TOKEN, "The refresh token is invalid.")
            req.account = grant.accounts[0] if grant.accounts else None
            access = self.sb.tokens.issue("tiktok", "access", grant.subject, ACCESS_LIFETIME, "act.",
                                          grant.scopes, grant.accounts)
            if self.sb.settings.tiktok_rotate_refresh_token:
                refresh = self.sb.tokens.issue("tiktok", "refresh", grant.subject, None, "rft.", grant.scopes,
                                               grant.accounts, expires_at=grant.expires_at)
                self.sb.tokens.mark_used(token)
            else:
                refresh = grant
        return self.envelope(self._token_data(access, refresh))

    def _token(self, req: Request, m: re.Match[str]) -> Response:
        """Auth-code exchange; the sandbox accepts ``sbx-auth-<credential>`` codes."""
        body = self._client(req)
        if body.get("grant_type") != "authorization_code":
            raise TikTokError(INVALID_GRANT_TYPE, "grant_type must be authorization_code.")
        code = body.get("auth_code") or ""
        cred = code[len(AUTH_CODE_PREFIX):] if isinstance(code, str) and code.startswith(AUTH_CODE_PREFIX) else ""
        accounts = [a for a in self.sb.world.credentials().get(cred, []) if a.platform == "tiktok"]
        if not accounts:
            raise TikTokError(AUTH_CODE_ERROR, "The auth_code is invalid or has expired.")
        ids = [a.account_id for a in accounts]
        req.account = ids[0]
        now = self.sb.clock.now()
        access = self.sb.tokens.issue("tiktok", "access", cred, ACCESS_LIFETIME, "act.", SCOPES, ids)
        refresh = self.sb.tokens.issue("tiktok", "refresh", cred, None, "rft.", SCOPES, ids,
                                       expires_at=now + REFRESH_LIFETIME)
        return self.envelope(self._token_data(access, refresh))

    def _revoke(self, req: Request, m: re.Match[str]) -> Response:
        body = self._client(req)
        grant = self.sb.tokens.lookup(body.get("access_token"))
        if grant is None or grant.provider != "tiktok":
            raise TikTokError(INVALID_ACCESS_TOKEN, "The access token is invalid.")
        self.sb.tokens.revoke(grant.subject, "access")
        self.sb.tokens.revoke(grant.subject, "refresh")
        return self.envelope({})

    def _token_info(self, req: Request, m: re.Match[str]) -> Response:
        try:
            body = req.json_object()
        except ValueError as exc:
            raise TikTokError(PARAM_ERROR, "Request body must be a JSON object.") from exc
        if body.get("app_id") != self.sb.settings.tiktok_client_id:
            raise TikTokError(self.sb.settings.tiktok_invalid_client_code, "Invalid app_id.")
        status, grant = self.sb.tokens.check(body.get("access_token"), "tiktok", ("access",))
        if status == "expired":
            raise TikTokError(ACCESS_TOKEN_EXPIRE, "Access token has expired.")
        if status != "ok" or grant is None:
            raise TikTokError(INVALID_ACCESS_TOKEN, "The access token is invalid.")
        return self.envelope({"app_id": body["app_id"], "creator_id": grant.accounts[0] if grant.accounts else "",
                              "scope": ",".join(grant.scopes)})

    def reset(self) -> None:
        self._seq = itertools.count(1)
        with self._lock:
            self._calls.clear()
            self._likes_cache.clear()


# -- helpers ------------------------------------------------------------------------------------------


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat() if dt else None


def _json_list(raw: str | None, name: str, default: tuple[str, ...]) -> list[str]:
    if raw is None or raw == "":
        return list(default)
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise TikTokError(PARAM_ERROR, f"{name}: Not a valid JSON list.") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TikTokError(PARAM_ERROR, f"{name}: Not a valid list of strings.")
    return value


def _json_object(raw: str | None, name: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise TikTokError(PARAM_ERROR, f"{name}: Not a valid JSON object.") from exc
    if not isinstance(value, dict):
        raise TikTokError(PARAM_ERROR, f"{name}: Not a valid JSON object.")
    return value


def _int_arg(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise TikTokError(PARAM_ERROR, f"{name}: Not a valid integer.") from exc


def _date_arg(raw: str | None, name: str, default: date) -> date:
    if raw is None or raw == "":
        return default
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise TikTokError(PARAM_ERROR, f"{name}: Not a valid date (YYYY-MM-DD).") from exc


def _audience(key: str, field: str) -> list[dict[str, Any]]:
    if field == "audience_ages":
        return [{"age": a, "percentage": p} for a, p in zip(AGES, _split([unit(key, a) for a in AGES]), strict=True)]
    if field == "audience_genders":
        weights = [0.4 + unit(key, "F"), 0.4 + unit(key, "M"), 0.05 * unit(key, "O")]
        return [{"gender": g, "percentage": p} for g, p in zip(GENDERS, _split(weights), strict=True)]
    if field == "audience_countries":
        return [{"country": c, "percentage": p}
                for c, p in zip(COUNTRIES, _split([unit(key, c) for c in COUNTRIES]), strict=True)]
    return [{"city_name": c, "percentage": p}
            for c, p in zip(CITIES, _split([unit(key, c) for c in CITIES]), strict=True)]
