"""YouTube Data API v3 (channels, playlistItems, videos) and YouTube Analytics API v2 (reports.query).

Wire format: api-contracts.md §3.1/§3.2 and the discovery documents shipped with
google-api-python-client (youtube.v3.json, youtubeAnalytics.v2.json). Errors use the standard Google
JSON error envelope. Both emulators require ``Authorization: Bearer`` tokens issued by the sandbox's
Google OAuth emulator; the token's credential decides which channels are "mine".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sandbox.core import (
    Emulator,
    FaultRule,
    Grant,
    Request,
    Response,
    json_array_response,
    json_bytes,
    json_response,
    repeat_cursor,
)
from sandbox.world import Account, Post, unit

if TYPE_CHECKING:
    from sandbox.server import Sandbox

PACIFIC = ZoneInfo("America/Los_Angeles")

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
                502: "UNKNOWN", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
DEFAULT_REASONS = {400: "badRequest", 401: "authError", 403: "forbidden", 404: "notFound", 409: "conflict",
                   429: "rateLimitExceeded", 500: "backendError", 503: "backendError"}

AUTH_MESSAGE = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.")
QUOTA_MESSAGE = ("The request cannot be completed because you have exceeded your "
                 "<a href=\"/youtube/v3/getting-started#quota\">quota</a>.")
NOT_SUPPORTED = ("The query is not supported. Check the documentation at "
                 "https://developers.google.com/youtube/analytics/v2/available_reports for a list of supported "
                 "queries.")


def google_error(status: int, message: str, reason: str | None = None, domain: str = "global", *,
                 location: str | None = None, location_type: str | None = None, with_status: bool = True,
                 headers: dict[str, str] | None = None) -> Response:
    """The standard Google JSON error: ``{"error": {"code", "message", "errors": [...], "status"}}``."""
    item: dict[str, Any] = {"message": message, "domain": domain, "reason": reason or DEFAULT_REASONS.get(status,
                                                                                                        "error")}
    if location:
        item["location"] = location
        item["locationType"] = location_type or "parameter"
    err: dict[str, Any] = {"code": status, "message": message, "errors": [item]}
    if with_status:
        err["status"] = STATUS_NAMES.get(status, "UNKNOWN")
    return json_response({"error": err}, status, headers)


def auth_error() -> Response:
    return google_error(401, AUTH_MESSAGE, "authError", location="Authorization", location_type="header",
                        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                                     'error="invalid_token"'})


def handle_of(acc: Account) -> str:
    """The channel's @handle: "@" + its name lower-cased with only letters, digits, ".", "_", "-" kept."""
    return "@" + re.sub(r"[^a-z0-9._-]", "", acc.name.lower())


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    out = "P" + (f"{d}D" if d else "") + "T"
    out += (f"{h}H" if h else "") + (f"{m}M" if m else "") + (f"{s}S" if s or not (h or m) else "")
    return out


def etag(*parts: Any) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).hexdigest()[:27]


def pacific_day(at: datetime) -> date:
    return at.astimezone(PACIFIC).date()


def pacific_start(day: date) -> datetime:
    """UTC instant at which a Pacific-time day starts (DST-aware)."""
    return datetime.combine(day, time(0), PACIFIC).astimezone(UTC)


class _GoogleEmulator(Emulator):
    """Shared Bearer-auth, channel resolution and error renderings of both YouTube APIs."""

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self.sb: Sandbox = sandbox
        self._index_lock = threading.Lock()
        self._video_index: dict[str, tuple[Account, Post]] = {}
        self._indexed: set[str] = set()
        self._indexed_count = -1

    def error_response(self, status: int, code: int | str | None, message: str) -> Response:
        if status == 401:
            return auth_error()
        reason = code if isinstance(code, str) else None
        return google_error(status, message, reason)

    def throttle_response(self, rule: FaultRule) -> Response:
        status = rule.status or 403
        if status == 429:
            return google_error(429, rule.message or "Resource has been exhausted (e.g. check quota).",
                                str(rule.code or "rateLimitExceeded"))
        return google_error(status, rule.message or "Rate Limit Exceeded", str(rule.code or "rateLimitExceeded"),
                            "usageLimits")

    def account_of(self, req: Request, m: re.Match[str]) -> str | None:
        chans = self._channels_of(self.sb.tokens.lookup(req.bearer()))
        return chans[0].account_id if chans else None

    # -- auth ------------------------------------------------------------------------------------------
    def _grant(self, req: Request) -> Grant | None:
        state, grant = self.sb.tokens.check(req.bearer(), "google", ("access",))
        return grant if state == "ok" else None

    def _channels_of(self, grant: Grant | None) -> list[Account]:
        if grant is None or grant.provider != "google":
            return []
        world = self.sb.world
        if grant.accounts:
            out = [world.account("youtube", a) for a in grant.accounts]
            return [a for a in out if a is not None]
        return [a for a in world.accounts("youtube") if a.credential == grant.subject]

    # -- world lookups ---------------------------------------------------------------------------------
    def video(self, video_id: str) -> tuple[Account, Post] | None:
        """Global video id index (built lazily per channel, extended when tests add channels)."""
        world = self.sb.world
        n = world.account_count()  # accounts are only ever added: re-scan when the count moves
        if n != self._indexed_count:
            with self._index_lock:
                for acc in world.accounts("youtube"):
                    if acc.account_id not in self._indexed:
                        for p in world.all_posts(acc):
                            self._video_index[p.post_id] = (acc, p)
                        self._indexed.add(acc.account_id)
                self._indexed_count = n
        return self._video_index.get(video_id)


# ==================================================================================================
# YouTube Data API v3
# ==================================================================================================

CHANNEL_PARTS = {"id", "snippet", "contentDetails", "statistics", "status", "brandingSettings", "topicDetails",
                 "localizations", "contentOwnerDetails", "auditDetails"}
PLAYLIST_ITEM_PARTS = {"id", "snippet", "contentDetails", "status"}
VIDEO_PARTS = {"id", "snippet", "contentDetails", "statistics", "status", "player", "topicDetails",
               "recordingDetails", "fileDetails", "processingDetails", "suggestions", "liveStreamingDetails",
               "localizations", "paidProductPlacementDetails"}


class YouTubeDataEmulator(_GoogleEmulator):
    name = "youtube_data"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self._quota_lock = threading.Lock()
        self._quota_used: dict[date, int] = {}
        self._stats_cache: dict[tuple[str, int], tuple[int, int]] = {}
        self._static: dict[str, dict[str, Any]] = {}  # video id -> time-independent resource parts
        self._video_stats_cache: dict[str, tuple[int, dict[str, str]]] = {}  # video id -> (minute, statistics)
        # (video id, parts) -> (minute, statistics it embeds, encoded item): videos.list assembles bytes
        self._video_json: dict[tuple[str, frozenset[str]], tuple[int, dict[str, str] | None, bytes]] = {}
        # (playlist id, video id, position, parts) -> encoded playlistItem (time-independent)
        self._playlist_item_json: dict[tuple[str, str, int, frozenset[str]], bytes] = {}
        for prefix in ("/youtube/v3", ""):
            self.route("GET", prefix + r"/channels", "channels.list", self._channels)
            self.route("GET", prefix + r"/playlistItems", "playlistItems.list", self._playlist_items)
            self.route("GET", prefix + r"/videos", "videos.list", self._videos)

    def reset(self) -> None:
        with self._quota_lock:
            self._quota_used.clear()
        self._stats_cache.clear()
        self._video_stats_cache.clear()
        self._video_json.clear()
        self._playlist_item_json.clear()

    def quota_used(self, day: date | None = None) -> int:
        """Units spent on the Pacific-time day ``day`` (default: today on the sandbox clock)."""
        with self._quota_lock:
            return self._quota_used.get(day or pacific_day(self.sb.clock.now()), 0)

    # -- plumbing --------------------------------------------------------------------------------------
    def _begin(self, req: Request, cost: int = 1, public: bool = False) -> tuple[list[Account], Response | None]:
        """Auth, then quota: every authenticated request costs at least one unit, even invalid ones.

        ``public``: the call may also be made with only an API key (``key=``, no bearer): it reads
        public data, owns no channel, and is charged to the same project quota."""
        key = req.arg("key")
        grant = self._grant(req)
        if grant is None and not req.bearer() and key is not None and public:
            if key != self.sb.settings.google_api_key:
                return [], google_error(400, "API key not valid. Please pass a valid API key.", "badRequest",
                                        headers=None)
            chans: list[Account] = []
        elif grant is None:
            return [], auth_error()
        else:
            chans = self._channels_of(grant)
        if chans:
            req.account = chans[0].account_id
        day = pacific_day(self.sb.clock.now())
        with self._quota_lock:
            used = self._quota_used.get(day, 0)
            if used + cost > self.sb.settings.youtube_daily_quota:
                return chans, google_error(403, QUOTA_MESSAGE, "quotaExceeded", "youtube.quota",
                                                  with_status=False)
            self._quota_used[day] = used + cost
        req.units = cost
        return chans, None

    def _parts(self, req: Request, allowed: set[str]) -> tuple[list[str], Response | None]:
        raw = req.arg("part")
        if raw is None or not raw.strip():
            return [], google_error(400, "Required parameter: part", "required", location="part")
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        for p in parts:
            if p not in allowed:
                return [], google_error(400, p, "unknownPart", "youtube.part", location="part")
        return parts, None

    @staticmethod
    def _max_results(req: Request, default: int = 5) -> tuple[int, Response | None]:
        raw = req.arg("maxResults")
        if raw is None or raw == "":
            return default, None
        try:
            n = int(raw)
        except ValueError:
            n = -1
        if not 0 <= n <= 50:
            msg = f"Invalid value '{raw}'. Values must be within the range: [0, 50]"
            return 0, google_error(400, msg, "invalid", location="maxResults")
        return n, None

    def _render(self, req: Request, body: dict[str, Any]) -> Response:
        fields = req.arg("fields")
        if fields:
            try:
                body = select_fields(body, fields)
            except ValueError as exc:
                return google_error(400, f"Invalid field selection {exc}", "invalidParameter",
                                    location="fields")
        return json_response(body)

    # -- channels.list ---------------------------------------------------------------------------------
    def _channels(self, req: Request, m: re.Match[str]) -> Response:
        keyed = not req.bearer() and req.arg("key") is not None and req.arg("mine") is None
        mine, err = self._begin(req, public=keyed)
        if err:
            return err
        parts, err = self._parts(req, CHANNEL_PARTS)
        if err:
            return err
        max_results, err = self._max_results(req)
        if err:
            return err
        filters = [f for f in ("mine", "id", "forHandle", "forUsername", "managedByMe") if req.arg(f) is not None]
        if len(filters) != 1:
            msg = ("No filter selected. Expected one of: forUsername, managedByMe, mine, id, forHandle"
                   if not filters else "Incompatible parameters specified in the request: " + ", ".join(filters))
            return google_error(400, msg, "missingRequiredParameter" if not filters else "incompatibleParameters",
                                "youtube.parameter", location="parameters.", location_type="other")
        now = self.sb.clock.now()
        if filters[0] == "mine":
            chans = mine if (req.arg("mine") or "").lower() == "true" else []
        elif filters[0] == "id":
            ids = [i for i in (req.arg("id") or "").split(",") if i]
            req.ids = len(ids)
            chans = [a for a in (self.sb.world.account("youtube", i) for i in ids) if a is not None]
        else:  # forHandle ("@name" or "name", case-insensitive) / forUsername (the handle without "@")
            wanted = (req.arg(filters[0]) or "").strip().lower()
            if filters[0] == "forHandle" and not wanted.startswith("@"):
                wanted = "@" + wanted
            if filters[0] == "forUsername":
                wanted = "@" + wanted.lstrip("@")
            chans = [a for a in self.sb.world.accounts("youtube") if handle_of(a) == wanted]
        items = [self._channel_item(a, parts, now) for a in chans][:max_results or None]
        body = {"kind": "youtube#channelListResponse", "etag": etag("channels", [i["id"] for i in items], now.date()),
                "pageInfo": {"totalResults": len(chans), "resultsPerPage": max_results}, "items": items}
        return self._render(req, body)

    def _channel_stats(self, acc: Account, now: datetime) -> tuple[int, int]:
        """(lifetime views of visible uploads, visible upload count), cached per channel and minute."""
        key = (acc.account_id, int(now.timestamp() // 60))
        hit = self._stats_cache.get(key)
        if hit is None:
            views = count = 0
            for p in self.sb.world.posts(acc, now):
                if not p.private:
                    views += p.views(now)
                    count += 1
            hit = (views, count)
            if len(self._stats_cache) > 10_000:
                self._stats_cache.clear()
            self._stats_cache[key] = hit
        return hit

    def _channel_item(self, acc: Account, parts: list[str], now: datetime) -> dict[str, Any]:
        item: dict[str, Any] = {"kind": "youtube#channel", "etag": etag(acc.account_id, now.date()),
                                "id": acc.account_id}
        if "snippet" in parts:
            item["snippet"] = {
                "title": acc.name, "description": f"Official channel of {acc.brand}.",
                "customUrl": handle_of(acc), "publishedAt": rfc3339(acc.created_at),
                "thumbnails": _thumbs(f"https://yt3.ggpht.com/{acc.account_id}"),
                "localized": {"title": acc.name, "description": f"Official channel of {acc.brand}."},
            }
        if "contentDetails" in parts:
            item["contentDetails"] = {"relatedPlaylists": {"likes": "", "uploads": acc.extra["uploads_playlist"]}}
        if "statistics" in parts:
            views, count = self._channel_stats(acc, now)
            item["statistics"] = {
                "viewCount": str(views), "subscriberCount": str(self.sb.world.followers(acc, pacific_day(now))),
                "hiddenSubscriberCount": False, "videoCount": str(count),
            }
        if "status" in parts:
            item["status"] = {"privacyStatus": "public", "isLinked": True, "longUploadsStatus": "allowed",
                              "madeForKids": False}
        return item

    # -- playlistItems.list ----------------------------------------------------------------------------
    def _playlist_items(self, req: Request, m: re.Match[str]) -> Response:
        mine, err = self._begin(req, public=True)
        keyed = not err and self._grant(req) is None
        if err:
            return err
        parts, err = self._parts(req, PLAYLIST_ITEM_PARTS)
        if err:
            return err
        max_results, err = self._max_results(req)
        if err:
            return err
        playlist_id = req.arg("playlistId")
        if not playlist_id and req.arg("id") is None:
            return google_error(400, "No filter selected. Expected one of: id, playlistId",
                                "missingRequiredParameter", "youtube.parameter", location="parameters.",
                                location_type="other")
        acc = self._uploads_owner(playlist_id or "")
        if acc is None:
            return google_error(404, "The playlist identified with the request's <code>playlistId</code> "
                                "parameter cannot be found.", "playlistNotFound", "youtube.playlistItem",
                                location="playlistId", with_status=False)
        if not keyed and acc.account_id not in {c.account_id for c in mine}:
            return google_error(403, "The request is not properly authorized to retrieve the specified playlist.",
                                "playlistItemsNotAccessible", "youtube.playlistItem", location="id",
                                with_status=False)
        req.account = acc.account_id
        now = self.sb.clock.now()
        # newest first; private ones stay listed as "Private video"; no copy of the list (100k-video channels)
        all_posts = self.sb.world.all_posts(acc)
        first = self.sb.world.first_visible(acc, now)
        total = len(all_posts) - first
        start = 0
        token = req.arg("pageToken")
        if token:
            remaining = _decode_token(token)
            if remaining is None or remaining > total:
                return google_error(400, "The request specifies an invalid page token.", "invalidPageToken",
                                    "youtube.parameter", location="pageToken", with_status=False)
            start = total - remaining  # token counts items older than the next one: stable across uploads
        page = all_posts[first + start:first + start + max_results]
        body: dict[str, Any] = {"kind": "youtube#playlistItemListResponse",
                                "etag": etag("pl", playlist_id, start, max_results, total)}
        end = start + len(page)
        if token and repeat_cursor(self.sb, self.name, "playlistItems.list", acc.account_id):
            body["nextPageToken"] = token  # injected: the page repeats the request's token
        elif end < total and max_results > 0:
            body["nextPageToken"] = _encode_token(total - end)
        if start > 0:
            body["prevPageToken"] = _encode_token(total - max(0, start - max_results))
        page_info = {"totalResults": total, "resultsPerPage": max_results}
        if req.arg("fields"):
            body["items"] = [self._playlist_item(acc, p, start + k, parts, playlist_id or "")
                             for k, p in enumerate(page)]
            body["pageInfo"] = page_info
            return self._render(req, body)
        body["items"] = None
        body["pageInfo"] = page_info
        return json_array_response(body, "items", [
            self._playlist_item_bytes(acc, p, start + k, parts, playlist_id or "") for k, p in enumerate(page)])

    def _uploads_owner(self, playlist_id: str) -> Account | None:
        if not playlist_id.startswith("UU"):
            return None
        acc = self.sb.world.account("youtube", "UC" + playlist_id[2:])
        if acc is not None and acc.extra.get("uploads_playlist") == playlist_id:
            return acc
        return None

    def _playlist_item_bytes(self, acc: Account, p: Post, position: int, parts: list[str], playlist_id: str
                             ) -> bytes:
        """``json_bytes(_playlist_item(...))``, cached (an item depends on nothing that moves)."""
        key = (playlist_id, p.post_id, position, frozenset(parts))
        hit = self._playlist_item_json.get(key)
        if hit is None:
            if len(self._playlist_item_json) > 100_000:
                self._playlist_item_json.clear()
            hit = self._playlist_item_json[key] = json_bytes(self._playlist_item(acc, p, position, parts,
                                                                                   playlist_id))
        return hit

    def _playlist_item(self, acc: Account, p: Post, position: int, parts: list[str], playlist_id: str
                       ) -> dict[str, Any]:
        item_id = base64.b64encode(f"{playlist_id}.{p.post_id}".encode()).decode().rstrip("=")
        published = self._static_video(acc, p)["snippet"]["publishedAt"]
        item: dict[str, Any] = {"kind": "youtube#playlistItem", "etag": "pi" + item_id[-24:], "id": item_id}
        if "snippet" in parts:
            title, desc = ("Private video", "This video is private.") if p.private else (p.title, _desc(p))
            snippet: dict[str, Any] = {
                "publishedAt": published, "channelId": acc.account_id, "title": title,
                "description": desc, "thumbnails": {} if p.private else _thumbs(f"https://i.ytimg.com/vi/{p.post_id}"),
                "channelTitle": acc.name, "playlistId": playlist_id, "position": position,
                "resourceId": {"kind": "youtube#video", "videoId": p.post_id},
            }
            if not p.private:
                snippet["videoOwnerChannelTitle"] = acc.name
                snippet["videoOwnerChannelId"] = acc.account_id
            item["snippet"] = snippet
        if "contentDetails" in parts:
            cd: dict[str, Any] = {"videoId": p.post_id}
            if not p.private:
                cd["videoPublishedAt"] = published
            item["contentDetails"] = cd
        if "status" in parts:
            item["status"] = {"privacyStatus": "private" if p.private else "public"}
        return item

    # -- videos.list -----------------------------------------------------------------------------------
    def _videos(self, req: Request, m: re.Match[str]) -> Response:
        _mine, err = self._begin(req, public=True)
        if err:
            return err
        parts, err = self._parts(req, VIDEO_PARTS)
        if err:
            return err
        raw = req.arg("id")
        if raw is None:
            if req.arg("chart") is not None or req.arg("myRating") is not None:
                return google_error(400, "The sandbox only supports videos.list by id.", "unsupportedFilter",
                                    "youtube.parameter", location="parameters.", location_type="other")
            return google_error(400, "No filter selected. Expected one of: myRating, chart, id",
                                "missingRequiredParameter", "youtube.parameter", location="parameters.",
                                location_type="other")
        ids = [i.strip() for i in raw.split(",") if i.strip()]
        req.ids = len(ids)
        if len(ids) > 50:
            # [C] the 50-id cap; the real error text is not documented
            return google_error(400, "The request specifies an invalid filter parameter.", "invalidFilters",
                                "youtube.parameter", location="parameters.", location_type="other")
        now = self.sb.clock.now()
        items: list[Any] = []
        raw_items = not req.arg("fields")  # no partial response: assemble the body from cached item bytes
        part_set = frozenset(parts)
        seen: set[str] = set()
        for vid in ids:  # maxResults / pageToken are ignored with id (contract §3.1)
            if vid in seen:
                continue
            seen.add(vid)
            hit = self.video(vid)
            if hit is None:
                continue
            acc, p = hit
            if p.published_at > now:
                continue  # not yet uploaded: unknown id, omitted
            if p.private and self.sb.settings.youtube_omit_private_ids:
                continue  # private / deleted: silently omitted [U]
            if req.account is None:
                req.account = acc.account_id  # API-key calls own no channel: attribute to the videos' owner
            items.append(self._video_item_bytes(acc, p, part_set, now) if raw_items
                         else self._video_item(acc, p, parts, now))
        body = {"kind": "youtube#videoListResponse", "etag": etag("videos", ids, int(now.timestamp() // 60)),
                "items": items, "pageInfo": {"totalResults": len(items), "resultsPerPage": len(items)}}
        if raw_items:
            return json_array_response(body, "items", items)
        return self._render(req, body)

    def _video_item_bytes(self, acc: Account, p: Post, parts: frozenset[str], now: datetime) -> bytes:
        """``json_bytes(_video_item(...))``, cached per (video, parts) for the clock minute and the very
        statistics object it embeds (so it is rebuilt exactly when ``_video_item`` would change)."""
        minute = int(now.timestamp() // 60)
        stats = self._video_stats(p, now, minute) if "statistics" in parts and not p.private else None
        key = (p.post_id, parts)
        hit = self._video_json.get(key)
        if hit is not None and hit[0] == minute and hit[1] is stats:
            return hit[2]
        if len(self._video_json) > 100_000:
            self._video_json.clear()
        data = json_bytes(self._video_item(acc, p, parts, now))
        self._video_json[key] = (minute, stats, data)
        return data

    def _video_item(self, acc: Account, p: Post, parts: Collection[str], now: datetime) -> dict[str, Any]:
        static = self._static_video(acc, p)
        minute = int(now.timestamp() // 60)
        item: dict[str, Any] = {"kind": "youtube#video", "etag": f"{static['etag']}{minute:x}", "id": p.post_id}
        for part in ("snippet", "contentDetails", "status"):
            if part in parts:
                item[part] = static[part]
        if "statistics" in parts and not p.private:
            item["statistics"] = self._video_stats(p, now, minute)
        if p.private and "status" in parts:
            item["status"] = {**static["status"], "privacyStatus": "private"}
        return item

    def _video_stats(self, p: Post, now: datetime, minute: int) -> dict[str, str]:
        """Lifetime counts, recomputed at most once per sandbox-clock minute per video (hot path)."""
        hit = self._video_stats_cache.get(p.post_id)
        if hit is not None and hit[0] == minute:
            return hit[1]
        stats = {"viewCount": str(p.metric("views", now)), "likeCount": str(p.metric("likes", now)),
                 "favoriteCount": "0", "commentCount": str(p.metric("comments", now))}
        self._video_stats_cache[p.post_id] = (minute, stats)
        return stats

    def _static_video(self, acc: Account, p: Post) -> dict[str, Any]:
        """The time-independent parts of a video resource, built once per video (hot path of videos.list)."""
        hit = self._static.get(p.post_id)
        if hit is not None:
            return hit
        hit = {
            "etag": etag("v", p.post_id)[:16],
            "snippet": {
                "publishedAt": rfc3339(p.published_at), "channelId": acc.account_id, "title": p.title,
                "description": _desc(p), "thumbnails": _thumbs(f"https://i.ytimg.com/vi/{p.post_id}"),
                "channelTitle": acc.name, "categoryId": "22", "liveBroadcastContent": "none",
                "defaultAudioLanguage": "es" if "America" in acc.timezone else "en",
                "localized": {"title": p.title, "description": _desc(p)},
            },
            "contentDetails": {
                "duration": iso_duration(p.duration_seconds), "dimension": "2d", "definition": "hd",
                "caption": "false", "licensedContent": False, "contentRating": {}, "projection": "rectangular",
            },
            "status": {"uploadStatus": "processed", "privacyStatus": "public", "license": "youtube",
                       "embeddable": True, "publicStatsViewable": True, "madeForKids": False},
        }
        self._static[p.post_id] = hit
        return hit


def _desc(p: Post) -> str:
    return f"{p.title} | {p.media_type}"


def _thumbs(base: str) -> dict[str, Any]:
    return {"default": {"url": f"{base}/default.jpg", "width": 120, "height": 90},
            "medium": {"url": f"{base}/mqdefault.jpg", "width": 320, "height": 180},
            "high": {"url": f"{base}/hqdefault.jpg", "width": 480, "height": 360}}


def _encode_token(remaining: int) -> str:
    return base64.urlsafe_b64encode(f"SBX:{remaining}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not raw.startswith("SBX:") or not raw[4:].isdigit():
        return None
    return int(raw[4:])


# -- `fields` partial responses (the common subset of Google's syntax) -----------------------------------

def select_fields(body: Any, spec: str) -> Any:
    """Apply a Google ``fields`` selector: ``a,b/c,items(id,statistics/viewCount)``."""
    return _apply(body, _parse_fields(spec))


def _parse_fields(spec: str) -> dict[str, Any]:
    pos = 0

    def parse_list(depth: int) -> dict[str, Any]:
        nonlocal pos
        tree: dict[str, Any] = {}
        while pos < len(spec):
            m = re.compile(r"[A-Za-z0-9_*]+(?:/[A-Za-z0-9_*]+)*").match(spec, pos)
            if not m:
                raise ValueError(spec)
            path = m.group(0).split("/")
            pos = m.end()
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            leaf = path[-1]
            if pos < len(spec) and spec[pos] == "(":
                pos += 1
                sub = parse_list(depth + 1)
                existing = node.get(leaf)
                node[leaf] = {**existing, **sub} if isinstance(existing, dict) and existing else sub
            else:
                node[leaf] = node.get(leaf) or {}
            if pos < len(spec) and spec[pos] == ",":
                pos += 1
                continue
            if pos < len(spec) and spec[pos] == ")":
                if depth == 0:
                    raise ValueError(spec)
                pos += 1
                return tree
        if depth:
            raise ValueError(spec)
        return tree

    return parse_list(0)


def _apply(value: Any, tree: dict[str, Any]) -> Any:
    if not tree or "*" in tree:
        return value
    if isinstance(value, list):
        return [_apply(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: _apply(value[k], sub) for k, sub in tree.items() if k in value}


# ==================================================================================================
# YouTube Analytics API v2
# ==================================================================================================

#: metric -> dataType
METRICS = {"views": "INTEGER", "estimatedMinutesWatched": "INTEGER", "averageViewDuration": "INTEGER",
           "averageViewPercentage": "FLOAT", "likes": "INTEGER", "dislikes": "INTEGER", "comments": "INTEGER",
           "shares": "INTEGER", "subscribersGained": "INTEGER", "subscribersLost": "INTEGER"}
#: dimensions the API knows (so unknown identifiers can be told from unsupported combinations)
KNOWN_DIMENSIONS = {"day", "month", "video", "country", "province", "city", "ageGroup", "gender", "deviceType",
                    "operatingSystem", "playlist", "insightTrafficSourceType", "subscribedStatus",
                    "creatorContentType", "sharingService", "liveOrOnDemand", "youtubeProduct"}
SUPPORTED_DIMENSIONS = {(), ("day",), ("video",)}
#: channel-level World.daily metric behind each Analytics metric
CHANNEL_METRIC = {"views": "views", "likes": "likes", "comments": "comments", "shares": "shares",
                  "subscribersGained": "followers_gained", "subscribersLost": "followers_lost",
                  "estimatedMinutesWatched": "watch_minutes"}


def _bad(message: str, reason: str = "badRequest", location: str | None = None) -> Response:
    return google_error(400, message, reason, location=location)


class YouTubeAnalyticsEmulator(_GoogleEmulator):
    name = "youtube_analytics"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self._settled: dict[tuple[str, date], dict[str, Any]] = {}  # pure function of (seed, channel, day)
        self._observed: dict[tuple[str, date, int], dict[str, Any]] = {}  # + the clock minute
        self.route("GET", r"/v2/reports", "reports.query", self._query)

    def account_of(self, req: Request, m: re.Match[str]) -> str | None:
        ids = req.arg("ids") or ""
        if ids.startswith("channel==") and ids != "channel==MINE":
            return ids[len("channel=="):]
        return super().account_of(req, m)

    def lag_cutoff(self) -> date:
        """Last Pacific-time day that day reports (and totals) include."""
        return pacific_day(self.sb.clock.now()) - timedelta(days=self.sb.settings.youtube_analytics_lag_days)

    # -- reports.query ---------------------------------------------------------------------------------
    def _query(self, req: Request, m: re.Match[str]) -> Response:
        grant = self._grant(req)
        if grant is None:
            return auth_error()
        mine = self._channels_of(grant)
        for name in ("ids", "startDate", "endDate", "metrics"):
            if not req.arg(name):
                return _bad(f"Required parameter: {name}", "required", name)
        ids = req.arg("ids") or ""
        kind, _, owner = ids.partition("==")
        if kind != "channel" or not owner:
            if kind == "contentOwner":
                return google_error(403, "Forbidden", "forbidden")
            return _bad(f"Invalid value '{ids}'. Values must match the following regular expression: "
                        "'[a-zA-Z]+==[a-zA-Z0-9_+-]+'", "invalid", "ids")
        acc = (mine[0] if mine else None) if owner == "MINE" else next(
            (a for a in mine if a.account_id == owner), None)
        if acc is None:
            return google_error(403, "Forbidden", "forbidden")
        req.account = acc.account_id
        dates: list[date] = []
        for name in ("startDate", "endDate"):
            raw = req.arg(name) or ""
            try:
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
                    raise ValueError(raw)
                dates.append(date.fromisoformat(raw))
            except ValueError:
                return _bad(f"Invalid value '{raw}'. Values must match the following regular expression: "
                            "'[0-9]{4}-[0-9]{2}-[0-9]{2}'", "invalid", name)
        start, end = dates
        if start > end:
            return _bad("The start date cannot be after the end date.", "invalid", "startDate")
        metrics = [x for x in (req.arg("metrics") or "").split(",")]
        for x in metrics:
            if x not in METRICS:
                return _bad(f"Unknown identifier ({x}) given in field parameters.metrics.")
        if len(set(metrics)) != len(metrics):
            return _bad(NOT_SUPPORTED)
        dims = tuple(x for x in (req.arg("dimensions") or "").split(",") if x)
        for x in dims:
            if x not in KNOWN_DIMENSIONS:
                return _bad(f"Unknown identifier ({x}) given in field parameters.dimensions.")
        if dims not in SUPPORTED_DIMENSIONS:
            return _bad(NOT_SUPPORTED)
        # filters: only video==a,b,... (optionally joined with ';' to nothing else)
        video_ids: list[str] | None = None
        for clause in [c for c in (req.arg("filters") or "").split(";") if c]:
            fname, sep, values = clause.partition("==")
            if not sep or not fname:
                return _bad(f"Invalid value '{clause}' given in field parameters.filters.", "invalid", "filters")
            if fname not in KNOWN_DIMENSIONS:
                return _bad(f"Unknown identifier ({fname}) given in field parameters.filters.")
            if fname != "video" or video_ids is not None:
                return _bad(NOT_SUPPORTED)
            video_ids = [v for v in values.split(",") if v]
        req.ids = len(video_ids or [])
        if video_ids is not None and len(video_ids) > self.sb.settings.youtube_analytics_max_ids:
            return _bad(NOT_SUPPORTED)
        # paging and sort
        max_results = start_index = None
        for name in ("maxResults", "startIndex"):
            raw = req.arg(name)
            if raw is None:
                continue
            try:
                n = int(raw)
            except ValueError:
                n = 0
            if n < 1:
                return _bad(f"Invalid value '{raw}'. Values must be greater than or equal to 1", "invalid", name)
            if name == "maxResults":
                max_results = n
            else:
                start_index = n
        sort = [s for s in (req.arg("sort") or "").split(",") if s]
        for s in sort:
            key = s.lstrip("-")
            if key not in METRICS and key not in KNOWN_DIMENSIONS:
                return _bad(f"Unknown identifier ({key}) given in field parameters.sort.")
            if key not in metrics and key not in dims:
                return _bad(NOT_SUPPORTED)
        if dims == ("video",) and (not sort or max_results is None or max_results > 200):
            return _bad(NOT_SUPPORTED)

        headers = [{"name": d, "columnType": "DIMENSION", "dataType": "STRING"} for d in dims]
        headers += [{"name": x, "columnType": "METRIC", "dataType": METRICS[x]} for x in metrics]
        last = min(end, self.lag_cutoff())
        if dims == ("video",):
            rows = self._video_rows(acc, metrics, start, last, video_ids)
        elif dims == ("day",):
            rows = self._day_rows(acc, metrics, start, last, video_ids)
        else:
            rows = self._total_rows(acc, metrics, start, last, video_ids)
        if sort:
            cols = [*dims, *metrics]
            for s in reversed(sort):
                idx = cols.index(s.lstrip("-"))
                rows.sort(key=lambda r, i=idx: r[i], reverse=s.startswith("-"))
        first = (start_index or 1) - 1
        rows = rows[first:first + max_results] if max_results else rows[first:]
        body: dict[str, Any] = {"kind": "youtubeAnalytics#resultTable", "columnHeaders": headers}
        if rows:
            body["rows"] = rows
        return json_response(body)

    # -- data ------------------------------------------------------------------------------------------
    def _videos_of(self, acc: Account, video_ids: list[str] | None, until: datetime) -> list[Post]:
        if video_ids is None:
            return [p for p in self.sb.world.posts(acc, until) if not p.private]
        out, seen = [], set()
        for vid in video_ids:
            hit = self.video(vid)
            if hit is None or vid in seen:
                continue
            seen.add(vid)
            owner, p = hit
            if owner.account_id == acc.account_id and not p.private and p.published_at < until:
                out.append(p)
        return out

    def _video_rows(self, acc: Account, metrics: list[str], start: date, last: date,
                    video_ids: list[str] | None) -> list[list[Any]]:
        if last < start:
            return []
        s, e = pacific_start(start), pacific_start(last + timedelta(days=1))
        rows = []
        for p in self._videos_of(acc, video_ids, e):
            vals = post_values(p, s, e)
            if vals["views"] <= 0 and vals["likes"] <= 0:
                continue
            rows.append([p.post_id, *(vals[x] for x in metrics)])
        return rows

    def _day_rows(self, acc: Account, metrics: list[str], start: date, last: date,
                  video_ids: list[str] | None) -> list[list[Any]]:
        rows: list[list[Any]] = []
        if video_ids is None:
            first = max(start, acc.created_at.date())
            now = self.sb.clock.now()
            d = first
            while d <= last:
                vals = self.channel_day(acc, d, now)
                rows.append([d.isoformat(), *(vals[x] for x in metrics)])
                d += timedelta(days=1)
            return rows
        posts = self._videos_of(acc, video_ids, pacific_start(last + timedelta(days=1)))
        d = start
        while d <= last and posts:
            s, e = pacific_start(d), pacific_start(d + timedelta(days=1))
            live = [p for p in posts if p.published_at < e]
            if live:
                rows.append([d.isoformat(), *_combine([post_values(p, s, e) for p in live], metrics)])
            d += timedelta(days=1)
        return rows

    def _total_rows(self, acc: Account, metrics: list[str], start: date, last: date,
                    video_ids: list[str] | None) -> list[list[Any]]:
        if last < start:
            return []
        if video_ids is None:
            days = self._day_rows(acc, [m for m in METRICS if m not in ("averageViewDuration",
                                                                         "averageViewPercentage")],
                                  start, last, None)
            if not days:
                return []
            keys = [m for m in METRICS if m not in ("averageViewDuration", "averageViewPercentage")]
            totals = {k: sum(r[1 + i] for r in days) for i, k in enumerate(keys)}
            pct = [self.channel_day(acc, date.fromisoformat(r[0]), self.sb.clock.now())["averageViewPercentage"]
                   for r in days]
            totals["averageViewDuration"] = (round(totals["estimatedMinutesWatched"] * 60 / totals["views"])
                                             if totals["views"] else 0)
            totals["averageViewPercentage"] = round(sum(pct) / len(pct), 2)
            return [[totals[x] for x in metrics]]
        s, e = pacific_start(start), pacific_start(last + timedelta(days=1))
        posts = self._videos_of(acc, video_ids, e)
        if not posts:
            return []
        return [_combine([post_values(p, s, e) for p in posts], metrics)]

    def channel_day(self, acc: Account, day: date, now: datetime) -> dict[str, Any]:
        """Channel-level values of one Pacific day as reported at ``now`` (late corrections included).

        Cached per sandbox-clock minute: late corrections move on a scale of hours."""
        key = (acc.account_id, day, int(now.timestamp() // 60))
        hit = self._observed.get(key)
        if hit is None:
            if len(self._observed) > 100_000:
                self._observed.clear()
            hit = self._observed[key] = self._channel_day(acc, day, now)
        return hit

    def _channel_day(self, acc: Account, day: date, now: datetime) -> dict[str, Any]:
        world = self.sb.world
        final = self._settled.get((acc.account_id, day))
        if final is None:
            # scale the world's account-level curve to the channel's upload rate (posts/day × growth window)
            scale = max(0.25, 1.6 * acc.n_posts / max(1, world.settings.history_days))
            final = {metric: int(world.daily(acc, source, day) * scale) for metric, source in CHANNEL_METRIC.items()}
            final["averageViewPercentage"] = round(
                30 + 30 * unit(world.settings.seed, acc.account_id, "avp", day.toordinal()), 2)
            if len(self._settled) > 200_000:
                self._settled.clear()
            self._settled[(acc.account_id, day)] = final
        out: dict[str, Any] = {metric: world.observed(final[metric], day, now) for metric in CHANNEL_METRIC}
        out["dislikes"] = int(out["likes"] * 0.03)
        views = out["views"]
        out["averageViewDuration"] = round(out["estimatedMinutesWatched"] * 60 / views) if views else 0
        out["averageViewPercentage"] = final["averageViewPercentage"]
        return out


_RATES: dict[str, Callable[[Post], float]] = {
    "likes": lambda p: p.like_rate, "comments": lambda p: p.comment_rate, "shares": lambda p: p.share_rate,
    "subscribersGained": lambda p: 0.002, "watch": lambda p: p.duration_seconds * 0.45,
}


def post_values(p: Post, start: datetime, end: datetime) -> dict[str, Any]:
    """Every Analytics metric of one video accrued in [start, end): closed form, O(1) (no day loop)."""
    vs = p.potential * p.fraction(start)
    ve = p.potential * p.fraction(end)
    views = max(0, int(ve) - int(vs))
    out: dict[str, Any] = {"views": views}
    for name, rate in _RATES.items():
        r = rate(p)
        out[name] = max(0, int(ve * r) - int(vs * r))
    watch = out.pop("watch")
    out["estimatedMinutesWatched"] = int(watch / 60)
    out["subscribersLost"] = int(out["subscribersGained"] * 0.15)
    out["dislikes"] = int(out["likes"] * 0.03)
    out["averageViewDuration"] = round(watch / views) if views else 0
    out["averageViewPercentage"] = (round(100 * out["averageViewDuration"] / p.duration_seconds, 2)
                                    if p.duration_seconds and views else 0.0)
    out["_watch"] = watch
    out["_duration"] = p.duration_seconds
    return out


def _combine(values: list[dict[str, Any]], metrics: list[str]) -> list[Any]:
    """Aggregate several videos' values (a filter with several ids is aggregated, not split)."""
    tot = {k: sum(v[k] for v in values) for k in ("views", "likes", "comments", "shares", "subscribersGained",
                                                   "subscribersLost", "dislikes", "estimatedMinutesWatched")}
    watch = sum(v["_watch"] for v in values)
    tot["averageViewDuration"] = round(watch / tot["views"]) if tot["views"] else 0
    weighted = sum(v["views"] * v["_duration"] for v in values)
    tot["averageViewPercentage"] = round(100 * watch / weighted, 2) if weighted else 0.0
    return [tot[x] for x in metrics]


__all__ = ["YouTubeAnalyticsEmulator", "YouTubeDataEmulator", "google_error", "iso_duration", "post_values",
           "select_fields"]
