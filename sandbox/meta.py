"""Meta Graph API emulator: Facebook Pages and Instagram professional accounts (api-contracts §2).

Paths are ``/{version}/{node}[/{edge}]``; node kinds (page, IG user, post, IG media, user) are told apart
by looking the id up in the world, so ``match`` is overridden to pick the endpoint (ledger and fault
names: ``page``, ``page.insights``, ``page.posts``, ``post``, ``post.insights``, ``ig``,
``ig.insights``, ``ig.media``, ``media``, ``media.insights``, ``user``, ``me.accounts``,
``oauth.access_token``, ``debug_token``, ``batch``). Errors use Graph's ``{"error": {...}}`` envelope
with HTTP 400; timestamps are ``YYYY-MM-DDTHH:MM:SS+0000``; daily insights end at Pacific midnight.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

from sandbox.core import (
    Emulator,
    FaultRule,
    Grant,
    Request,
    Response,
    Route,
    dispatch,
    json_array_response,
    json_bytes,
    json_response,
)
from sandbox.world import Account, Post, first_index, unit

PACIFIC = ZoneInfo("America/Los_Angeles")
USER_TOKEN_LIFETIME = timedelta(days=60)
EXCHANGED_EXPIRES_IN = 5_183_944  # seconds, as the real fb_exchange_token answer
PAGE_INSIGHTS_MAX_SECONDS = 93 * 86400  # 8035200
IG_INSIGHTS_MAX_SECONDS = 30 * 86400  # 2592000
BATCH_MAX = 50
DEFAULT_LIMIT = 25
HISTORY_DAYS = 730  # "Only the last two years of insights data is available"
SCOPES = ("pages_show_list", "pages_read_engagement", "read_insights", "instagram_basic",
          "instagram_manage_insights", "business_management")
V = r"/(?:(?P<ver>v\d+\.\d+)/)?"

# --------------------------------------------------------------------------------------------------
# Metric catalogs (data, not code): valid metrics with their source in the world, deprecated sets.
# --------------------------------------------------------------------------------------------------

#: Page metric -> (title, World.daily metric | "followers", scale, periods)
PAGE_METRICS: dict[str, tuple[str, str, float, tuple[str, ...]]] = {
    "page_total_actions": ("Daily Total Actions", "profile_views", 0.2, ("day", "week", "days_28")),
    "page_post_engagements": ("Daily Post Engagements", "engagements", 1.0, ("day", "week", "days_28")),
    "page_fan_adds_by_paid_non_paid_unique": ("Daily New Likes", "followers_gained", 1.0, ("day",)),
    "page_media_view": ("Daily Media Views", "impressions", 1.0, ("day", "week", "days_28")),
    "page_total_media_view_unique": ("Daily Total Media Viewers", "reach", 1.0, ("day", "week", "days_28")),
    "page_follows": ("Followers", "followers", 1.0, ("day",)),
    "page_views_total": ("Daily Total views count per Page", "profile_views", 1.0, ("day", "week", "days_28")),
    "page_video_views": ("Daily Total Video Views", "views", 0.3, ("day", "week", "days_28")),
    "page_daily_follows": ("Daily Follows", "followers_gained", 1.0, ("day",)),
    "page_daily_follows_unique": ("Daily Unique Follows", "followers_gained", 0.97, ("day",)),
    "page_daily_unfollows_unique": ("Daily Unique Unfollows", "followers_lost", 1.0, ("day",)),
    "page_actions_post_reactions_total": ("Daily total post reactions", "likes", 1.0, ("day",)),
}
#: deprecated Page metrics: any of them fails the whole request with (#100) (contract §2.6)
PAGE_DEPRECATED_METRICS = frozenset({
    "page_fans", "page_fans_locale", "page_fans_city", "page_fans_country", "page_fan_adds",
    "page_fan_adds_unique", "page_fan_removes", "page_fan_removes_unique", "page_impressions",
    "page_impressions_paid", "page_impressions_viral", "page_impressions_nonviral", "page_impressions_unique",
    "page_impressions_paid_unique", "page_impressions_organic_unique", "page_impressions_viral_unique",
    "page_impressions_nonviral_unique", "page_posts_impressions", "page_posts_impressions_unique",
    "page_posts_impressions_paid", "page_posts_impressions_paid_unique", "page_posts_impressions_organic",
    "page_posts_impressions_organic_unique", "page_posts_impressions_viral", "page_posts_impressions_viral_unique",
    "page_posts_impressions_nonviral", "page_posts_impressions_nonviral_unique", "page_engaged_users",
    "page_consumptions", "page_consumptions_unique", "page_fans_gender_age", "page_fans_online",
    "page_fans_online_per_day", "page_fans_by_like_source", "page_fans_by_unlike_source",
})
#: Post metric -> title (lifetime values)
POST_METRICS: dict[str, str] = {
    "post_media_view": "Lifetime Media Views",
    "post_total_media_view_unique": "Lifetime Total Media Viewers",
    "post_clicks": "Lifetime Matched Audience Targeting Consumptions on Post",
    "post_clicks_by_type": "Lifetime Matched Audience Targeting Consumptions by Type",
    "post_reactions_by_type_total": "Lifetime Total post Reactions by Type.",
    "post_reactions_like_total": "Lifetime Total Like Reactions of a post.",
    "post_activity_by_action_type": "Lifetime Post Stories by action type",
    "post_video_views": "Lifetime Total Video Views",
}
POST_DEPRECATED_METRICS = frozenset({
    "post_impressions", "post_impressions_unique", "post_impressions_paid", "post_impressions_paid_unique",
    "post_impressions_fan", "post_impressions_fan_unique", "post_impressions_organic",
    "post_impressions_organic_unique", "post_impressions_viral", "post_impressions_viral_unique",
    "post_impressions_nonviral", "post_impressions_nonviral_unique", "post_engaged_users", "post_clicks_unique",
    "post_negative_feedback", "post_negative_feedback_unique", "post_engaged_fan", "post_consumptions",
    "post_consumptions_unique",
})


@dataclass(frozen=True)
class IgMetric:
    title: str
    types: tuple[str, ...]  # allowed metric_type values
    period: str
    source: str  # World.daily metric
    scale: float = 1.0
    breakdowns: dict[str, tuple[str, ...]] = field(default_factory=dict)


_MPT = ("POST", "REEL", "STORY", "AD", "CAROUSEL_CONTAINER")
#: IG User metrics and their metric_type rules (contract §2.8)
IG_USER_METRICS: dict[str, IgMetric] = {
    "reach": IgMetric("Accounts reached", ("time_series", "total_value"), "day", "reach",
                      breakdowns={"media_product_type": _MPT, "follow_type": ("FOLLOWER", "NON_FOLLOWER")}),
    "follower_count": IgMetric("Follower Count", ("time_series",), "day", "followers_gained"),
    "views": IgMetric("Views", ("total_value",), "day", "views",
                      breakdowns={"follow_type": ("FOLLOWER", "NON_FOLLOWER"),
                                  "follower_type": ("FOLLOWER", "NON_FOLLOWER"), "media_product_type": _MPT}),
    "accounts_engaged": IgMetric("Accounts engaged", ("total_value",), "day", "engagements", 0.6),
    "total_interactions": IgMetric("Content interactions", ("total_value",), "day", "engagements",
                                   breakdowns={"media_product_type": _MPT}),
    "likes": IgMetric("Likes", ("total_value",), "day", "likes", breakdowns={"media_product_type": _MPT}),
    "comments": IgMetric("Comments", ("total_value",), "day", "comments", breakdowns={"media_product_type": _MPT}),
    "shares": IgMetric("Shares", ("total_value",), "day", "shares", breakdowns={"media_product_type": _MPT}),
    "saves": IgMetric("Saves", ("total_value",), "day", "saves", breakdowns={"media_product_type": _MPT}),
    "replies": IgMetric("Replies", ("total_value",), "day", "comments", 0.2),
    "reposts": IgMetric("Reposts", ("total_value",), "day", "shares", 0.2),
    "profile_links_taps": IgMetric("Profile links taps", ("total_value",), "day", "profile_views", 0.3,
                                   breakdowns={"contact_button_type": ("BOOK_NOW", "CALL", "DIRECTION", "EMAIL",
                                                                       "TEXT", "UNDEFINED")}),
    "follows_and_unfollows": IgMetric("Follows and unfollows", ("total_value",), "day", "followers_gained",
                                      breakdowns={"follow_type": ("FOLLOWER", "NON_FOLLOWER")}),
}
IG_USER_DEPRECATED_METRICS = frozenset({
    "impressions", "profile_views", "website_clicks", "email_contacts", "get_directions_clicks",
    "phone_call_clicks", "text_message_clicks",
})
#: IG User metrics with period=lifetime (handled apart: contract §2.8, details [U])
IG_DEMOGRAPHIC_METRICS = frozenset({"follower_demographics", "engaged_audience_demographics"})
IG_LIFETIME_METRICS = frozenset({"online_followers", *IG_DEMOGRAPHIC_METRICS})
DEMOGRAPHIC_BREAKDOWNS: dict[str, tuple[str, ...]] = {
    "age": ("13-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"),
    "city": ("Buenos Aires, Argentina", "Mexico City, Distrito Federal", "Madrid, Comunidad de Madrid",
             "Santiago, Santiago Metropolitan Region", "New York, New York", "Bogotá, Distrito Especial"),
    "country": ("AR", "MX", "ES", "CL", "US", "CO", "BR"),
    "gender": ("F", "M", "U"),
}
DEMOGRAPHIC_TIMEFRAMES = ("this_week", "this_month")
#: IG media metric -> product types it is available for (FEED covers IMAGE/VIDEO/CAROUSEL_ALBUM)
IG_MEDIA_METRICS: dict[str, tuple[str, ...]] = {
    "reach": ("FEED", "REELS"), "saved": ("FEED", "REELS"), "likes": ("FEED", "REELS"),
    "comments": ("FEED", "REELS"), "shares": ("FEED", "REELS"), "total_interactions": ("FEED", "REELS"),
    "views": ("FEED", "REELS"), "reposts": ("FEED", "REELS"), "total_likes": ("FEED", "REELS"),
    "total_comments": ("FEED", "REELS"), "total_views": ("FEED", "REELS"),
    "follows": ("FEED",), "profile_visits": ("FEED",), "profile_activity": ("FEED",),
    "ig_reels_avg_watch_time": ("REELS",), "ig_reels_video_view_total_time": ("REELS",),
    "reels_skip_rate": ("REELS",), "crossposted_views": ("REELS",), "facebook_views": ("REELS",),
    "navigation": ("STORY",), "replies": ("STORY",), "link_clicks": ("STORY",),
}
IG_MEDIA_DEPRECATED_METRICS = frozenset({
    "plays", "impressions", "clips_replays_count", "ig_reels_aggregated_all_plays_count", "video_views",
    "engagement", "carousel_album_impressions", "carousel_album_reach", "carousel_album_engagement",
    "carousel_album_saved", "carousel_album_video_views",
})

PAGE_FIELDS = frozenset({"id", "name", "access_token", "instagram_business_account", "category", "fan_count",
                         "followers_count", "link", "username", "about", "verification_status", "tasks",
                         "category_list"})
POST_FIELDS = frozenset({"id", "created_time", "updated_time", "message", "permalink_url", "shares", "reactions",
                         "comments", "likes", "insights", "full_picture", "status_type", "is_published", "from",
                         "attachments"})
IG_USER_FIELDS = frozenset({"id", "ig_id", "username", "name", "biography", "followers_count", "follows_count",
                            "media_count", "profile_picture_url", "website"})
IG_MEDIA_FIELDS = frozenset({"id", "caption", "media_type", "media_product_type", "timestamp", "permalink",
                             "like_count", "comments_count", "username", "media_url", "thumbnail_url", "shortcode",
                             "is_comment_enabled", "owner", "children", "insights"})
USER_FIELDS = frozenset({"id", "name"})

THROTTLE_MESSAGES = {
    4: "(#4) Application request limit reached",
    17: "(#17) User request limit reached",
    32: "(#32) Page request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    80001: "(#80001) There have been too many calls to this Page account. Wait a bit and try again. For more info, "
           "please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting.",
    80002: "(#80002) There have been too many calls to this Instagram account. Wait a bit and try again. For more "
           "info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting.",
}


class GraphError(Exception):
    def __init__(self, code: int, message: str, *, status: int = 400, type_: str = "OAuthException",
                 subcode: int | None = None, transient: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.type = code, message, status, type_
        self.subcode, self.transient, self.headers = subcode, transient, headers or {}


def invalid_metric() -> GraphError:
    return GraphError(100, "(#100) The value must be a valid insights metric")


@dataclass
class Node:
    kind: str  # page | ig | post | media | user
    id: str
    account: Account | None = None
    post: Post | None = None
    credential: str | None = None

    @property
    def owner(self) -> str | None:
        return self.account.account_id if self.account else None


# --------------------------------------------------------------------------------------------------
# Field-expansion syntax: a,b.summary(total_count).limit(0),insights.metric(x,y){name,values},c{d,e}
# --------------------------------------------------------------------------------------------------


@dataclass
class FieldSpec:
    name: str
    mods: dict[str, str] = field(default_factory=dict)
    sub: list[FieldSpec] | None = None


def parse_fields(text: str) -> list[FieldSpec]:
    specs, pos = _parse_list(text, 0, None)
    if pos != len(text):
        raise GraphError(100, f"(#100) Syntax error \"Expected end of string instead of \"{text[pos]}\".\" "
                              f"at character {pos}: {text}")
    return specs


def _parse_list(text: str, pos: int, closer: str | None) -> tuple[list[FieldSpec], int]:
    specs: list[FieldSpec] = []
    while pos < len(text):
        if closer and text[pos] == closer:
            return specs, pos
        m = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*").match(text, pos)
        if not m:
            raise GraphError(100, f"(#100) Syntax error \"Field name expected\" at character {pos}: {text}")
        spec = FieldSpec(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos] in ".{":
            if text[pos] == "{":
                spec.sub, pos = _parse_list(text, pos + 1, "}")
                if pos >= len(text) or text[pos] != "}":
                    raise GraphError(100, f"(#100) Syntax error \"Expected \"}}\"\" at character {pos}: {text}")
                pos += 1
                continue
            mm = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)\(([^()]*)\)").match(text, pos)
            if not mm:
                raise GraphError(100, f"(#100) Syntax error \"Expected modifier\" at character {pos}: {text}")
            spec.mods[mm.group(1)] = mm.group(2).strip()
            pos = mm.end()
        specs.append(spec)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and not (closer and text[pos] == closer):
            raise GraphError(100, f"(#100) Syntax error \"Expected \",\"\" at character {pos}: {text}")
    return specs, pos


def _list_param(raw: str | None) -> list[str]:
    """Graph array params arrive comma-separated or JSON-encoded (the official SDK JSON-encodes lists)."""
    if raw is None:
        return []
    raw = raw.strip()
    if raw.startswith("["):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise GraphError(100, "(#100) Invalid JSON for array parameter") from exc
        return [str(v).strip() for v in value if str(v).strip()]
    return [p.strip() for p in raw.split(",") if p.strip()]


# --------------------------------------------------------------------------------------------------
# Time helpers
# --------------------------------------------------------------------------------------------------


def graph_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def pacific_midnight(d: date) -> datetime:
    return datetime.combine(d, time(0), PACIFIC).astimezone(UTC)


def pacific_date(dt: datetime) -> date:
    return dt.astimezone(PACIFIC).date()


def end_time(d: date) -> str:
    """``end_time`` of the daily value for Pacific day ``d``: Pacific midnight of the next day."""
    return graph_time(pacific_midnight(d + timedelta(days=1)))


def parse_time(raw: str, name: str) -> datetime:
    raw = raw.strip()
    try:
        if re.fullmatch(r"-?\d+", raw):
            return datetime.fromtimestamp(int(raw), UTC)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            return pacific_midnight(date.fromisoformat(raw))
        dt = datetime.fromisoformat(raw.replace("+0000", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=PACIFIC)
    except (ValueError, OverflowError) as exc:
        raise GraphError(100, f"(#100) The parameter {name} is not a valid time: {raw}") from exc


def _expired_message(expired_at: datetime, now: datetime) -> str:
    fmt = "%A, %d-%b-%y %H:%M:%S %Z"
    return (f"Error validating access token: Session has expired on {expired_at.astimezone(PACIFIC).strftime(fmt)}. "
            f"The current time is {now.astimezone(PACIFIC).strftime(fmt)}.")


def _split_value(total: int, key: Any, dims: tuple[str, ...]) -> list[int]:
    weights = [0.2 + unit(key, d) for d in dims]
    s = sum(weights)
    parts = [int(total * w / s) for w in weights]
    parts[0] += total - sum(parts)
    return parts


# --------------------------------------------------------------------------------------------------
# Emulator
# --------------------------------------------------------------------------------------------------

#: endpoints that only exist on one kind of node
_ENDPOINT_KIND = {
    "page": "page", "page.insights": "page", "page.posts": "page", "post": "post", "post.insights": "post",
    "ig": "ig", "ig.insights": "ig", "ig.media": "ig", "media": "media", "media.insights": "media",
    "user": "user", "me.accounts": "user",
}


class MetaEmulator(Emulator):
    name = "meta"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._seq = itertools.count(1)
        self._index: dict[str, Node] = {}  # pages, IG users, users (posts: World.positions per account)
        self._indexed_accounts = -1
        self._users: dict[str, str] = {}  # user id -> credential
        self._page_tokens: dict[tuple[str, str], str] = {}
        self._app_calls: deque[datetime] = deque()
        self._buc_calls: dict[str, deque[datetime]] = {}
        g = self._graph
        self.route("GET", V + r"oauth/access_token/?", "oauth.access_token", g(self._exchange, auth=False))
        self.route("GET", V + r"debug_token/?", "debug_token", g(self._debug_token, auth=False))
        self.route("GET", V + r"(?P<node>[^/]+)/accounts/?", "me.accounts", g(self._accounts_edge))
        for endpoint, handler in (("page.insights", self._page_insights), ("post.insights", self._post_insights),
                                  ("ig.insights", self._ig_insights), ("media.insights", self._media_insights)):
            self.route("GET", V + r"(?P<node>[^/]+)/insights/?", endpoint, g(handler))
        self.route("GET", V + r"(?P<node>[^/]+)/(?P<edge>posts|published_posts|feed)/?", "page.posts",
                   g(self._page_posts))
        self.route("GET", V + r"(?P<node>[^/]+)/media/?", "ig.media", g(self._ig_media))
        for endpoint in ("page", "post", "ig", "media", "user"):
            self.route("GET", V + r"(?P<node>[^/]+)/?", endpoint, g(self._node_read))
        self.route("POST", r"/(?:(?P<ver>v\d+\.\d+)/?)?", "batch", g(self._batch, auth=False, usage=False))

    # -- routing ------------------------------------------------------------------------------------
    def match(self, method: str, path: str) -> tuple[Route, re.Match[str]] | None:
        for r in self.routes:
            if r.method not in (method, "*"):
                continue
            m = r.pattern.match(path)
            if not m:
                continue
            kind = _ENDPOINT_KIND.get(r.endpoint)
            if kind is not None:
                node = self._resolve(m.group("node"))
                node_kind = "user" if node is not None and node.kind == "me" else (node.kind if node else None)
                if node_kind != kind:
                    continue
            return r, m
        return None

    def account_of(self, req: Request, m: re.Match[str]) -> str | None:
        node_id = m.groupdict().get("node")
        node = self._resolve(node_id) if node_id else None
        account = node.owner if node else None
        self._local.account = account
        return account

    def not_found(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if parts and re.fullmatch(r"v\d+\.\d+", parts[0]):
            if parts[0] not in self.sb.settings.meta_api_versions:
                return self._render(self._version_error(parts[0]))
            parts = parts[1:]
        if req.method == "GET" and parts and len(parts) <= 2:
            return self._render(self._unsupported(req.method, parts[0]))
        return self._render(GraphError(2500, f"Unknown path components: /{'/'.join(parts)}"))

    def _unsupported(self, method: str, node_id: str) -> GraphError:
        return GraphError(100, f"Unsupported {method.lower()} request. Object with ID '{node_id}' does not exist, "
                               "cannot be loaded due to missing permissions, or does not support this operation. "
                               "Please read the Graph API documentation at https://developers.facebook.com/docs/"
                               "graph-api", type_="GraphMethodException", subcode=33)

    def _version_error(self, ver: str) -> GraphError:
        supported = self.sb.settings.meta_api_versions
        if _vkey(ver) < _vkey(supported[0]):
            return GraphError(2635, f"(#2635) You are calling a deprecated version of the Graph API. Please update "
                                    f"to the latest version: {supported[-1]}.")
        return GraphError(2500, f"Unknown path components: /{ver}")

    # -- index of world objects ------------------------------------------------------------------------
    def _resolve(self, node_id: str | None) -> Node | None:
        if not node_id:
            return None
        self._build_index()
        if node_id == "me":
            return Node("me", "me")
        node = self._index.get(node_id)
        if node is None:
            node = self._post_node(node_id)
        if node is None:
            return None
        if node.post is not None and node.post.published_at > self.sb.clock.now():
            return None  # not published yet
        return node

    def _build_index(self) -> None:
        """Accounts and users only (cheap); posts/media are indexed per account on first need."""
        world = self.sb.world
        accounts = world.accounts()
        if self._indexed_accounts == len(accounts):
            return
        with self._lock:
            if self._indexed_accounts == len(accounts):
                return
            index: dict[str, Node] = {}
            for acc in accounts:
                if acc.platform == "facebook":
                    index[acc.account_id] = Node("page", acc.account_id, acc)
                elif acc.platform == "instagram":
                    index[acc.account_id] = Node("ig", acc.account_id, acc)
            users: dict[str, str] = {}
            for cred, accs in world.credentials().items():
                if accs[0].platform not in ("facebook", "instagram"):
                    continue
                uid = self.user_id(cred)
                users[uid] = cred
                index[uid] = Node("user", uid, None, None, cred)
                self._link(accs)
            self._index, self._users = index, users
            self._indexed_accounts = len(accounts)

    def _post_node(self, node_id: str) -> Node | None:
        """A post/media node by id: FB post ids carry their page id; IG media ids are looked up in the
        accounts' post indexes, building them one account at a time until found."""
        owner_id = node_id.split("_", 1)[0] if "_" in node_id else None
        if owner_id is not None:
            node = self._index.get(owner_id)
            if node is None or node.kind != "page" or node.account is None:
                return None
            return self._post_in(node.account, node_id)
        if not node_id.isdigit():
            return None
        for acc in self.sb.world.accounts("instagram"):
            hit = self._post_in(acc, node_id)
            if hit is not None:
                return hit
        return None

    def _post_in(self, acc: Account, post_id: str) -> Node | None:
        pos = self.sb.world.positions(acc).get(post_id)
        if pos is None:
            return None
        post = self.sb.world.all_posts(acc)[pos]
        return Node("post" if acc.platform == "facebook" else "media", post_id, acc, post)

    def user_id(self, credential: str) -> str:
        return str(10**15 + int(unit(self.sb.settings.world.seed, credential, "user") * 9 * 10**15))

    @staticmethod
    def _link(accounts: list[Account]) -> None:
        """Link each IG account to one page of the same credential (k-th IG -> k-th page, round robin)."""
        pages = sorted((a for a in accounts if a.platform == "facebook"), key=lambda a: a.account_id)
        igs = sorted((a for a in accounts if a.platform == "instagram"), key=lambda a: a.account_id)
        for p in pages:
            p.extra.setdefault("instagram_accounts", [])
        if not pages:
            return
        for k, ig in enumerate(igs):
            page = pages[k % len(pages)]
            ig.extra["page_id"] = page.account_id
            if ig.account_id not in page.extra["instagram_accounts"]:
                page.extra["instagram_accounts"].append(ig.account_id)

    # -- credentials -----------------------------------------------------------------------------------
    def initial_credential(self, name: str, accounts: list[Account]) -> dict[str, Any]:
        """Long-lived user token (60 d) + non-expiring page tokens, in the vault payload format."""
        self._build_index()
        self._link(accounts)
        tokens = self.sb.tokens
        now = self.sb.clock.now()
        ids = [a.account_id for a in accounts]
        user = tokens.issue("meta", "access", name, USER_TOKEN_LIFETIME, "EAAB", SCOPES, ids)
        page_tokens: dict[str, str] = {}
        ig_page: dict[str, str] = {}
        for a in accounts:
            if a.platform == "facebook":
                page_tokens[a.account_id] = self._page_token(name, a).token
            elif a.platform == "instagram" and a.extra.get("page_id"):
                ig_page[a.account_id] = a.extra["page_id"]
        return {
            "credential": name, "provider": "meta",
            "access_token": user.token,
            "access_token_expires_at": user.expires_at.isoformat() if user.expires_at else None,
            "refresh_token": None, "refresh_token_expires_at": None,
            "scopes": list(SCOPES), "account_ids": ids, "issued_at": now.isoformat(),
            "metadata": {"user_id": self.user_id(name), "page_tokens": page_tokens, "ig_page": ig_page},
        }

    def _page_token(self, credential: str, page: Account) -> Grant:
        key = (credential, page.account_id)
        with self._lock:
            token = self._page_tokens.get(key)
            grant = self.sb.tokens.lookup(token) if token else None
            if grant is None or grant.revoked:
                grant = self.sb.tokens.issue("meta", "page", credential, None, "EAAP", SCOPES,
                                             (page.account_id, *page.extra.get("instagram_accounts", ())))
                self._page_tokens[key] = grant.token
            return grant

    # -- errors and throttling -----------------------------------------------------------------------------
    def fbtrace_id(self) -> str:
        n = next(self._seq)
        raw = hashlib.blake2b(f"{self.sb.settings.world.seed}-{n}".encode(), digest_size=8).digest()
        return base64.b64encode(raw).decode().rstrip("=").replace("+", "A").replace("/", "B")

    def _render(self, e: GraphError) -> Response:
        err: dict[str, Any] = {"message": e.message, "type": e.type, "code": e.code}
        if e.subcode is not None:
            err["error_subcode"] = e.subcode
        if e.transient:
            err["is_transient"] = True
        err["fbtrace_id"] = self.fbtrace_id()
        headers = dict(e.headers)
        if e.type == "OAuthException" and e.code in (102, 104, 190):
            headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "invalid_token" "{e.message}"'
        return json_response({"error": err}, e.status, headers)

    def error_response(self, status: int, code: int | str | None, message: str) -> Response:
        """Injected errors. ``code`` may be ``190`` or ``"190/463"`` (code/subcode)."""
        subcode = None
        if isinstance(code, str) and "/" in code:
            code, sub = code.split("/", 1)
            subcode = int(sub)
        if code is None:
            num = 1 if status < 500 else 2
            return self._render(GraphError(num, message or "An unexpected error has occurred. Please retry your "
                                                "request later.", status=status, transient=True))
        num = int(code)
        transient = num in (1, 2) or num in THROTTLE_MESSAGES
        return self._render(GraphError(num, message, status=status, subcode=subcode, transient=transient))

    def throttle_response(self, rule: FaultRule) -> Response:
        code = int(rule.code) if rule.code is not None else 4
        obj = getattr(self._local, "account", None) or rule.account
        minutes = max(1, int(rule.delay // 60)) if rule.delay else 1
        headers = {"X-App-Usage": json.dumps({"call_count": 100 if code in (4, 17) else 10,
                                              "total_time": 12, "total_cputime": 9})}
        if obj:
            btype = "instagram" if code == 80002 else "pages"
            headers["X-Business-Use-Case-Usage"] = json.dumps({obj: [{
                "type": btype, "call_count": 100, "total_cputime": 20, "total_time": 20,
                "estimated_time_to_regain_access": minutes}]})
        message = rule.message or THROTTLE_MESSAGES.get(code, f"(#{code}) Rate limit reached")
        return self._render(GraphError(code, message, status=rule.status or 400, transient=True, headers=headers))

    def _usage(self, account: str | None, kind: str | None) -> dict[str, str]:
        """Record one call; return the usage headers; raise the throttle error once a value reaches 100."""
        s = self.sb.settings
        now = self.sb.clock.now()
        with self._lock:
            self._app_calls.append(now)
            while self._app_calls and self._app_calls[0] <= now - timedelta(hours=1):
                self._app_calls.popleft()
            app_pct = min(100, len(self._app_calls) * 100 // max(1, s.meta_app_calls_per_hour))
            buc_pct = 0
            if account:
                q = self._buc_calls.setdefault(account, deque())
                q.append(now)
                while q and q[0] <= now - timedelta(hours=24):
                    q.popleft()
                buc_pct = min(100, len(q) * 100 // max(1, s.meta_buc_calls_per_day))
        headers: dict[str, str] = {}
        if app_pct >= 1:
            headers["X-App-Usage"] = json.dumps({"call_count": app_pct, "total_cputime": app_pct // 2,
                                                 "total_time": app_pct // 2})
        btype = "instagram" if kind in ("ig", "media") else "pages"
        if account and buc_pct >= 1:
            regain = 60 * 24 if buc_pct >= s.meta_throttle_at_percent else 0
            headers["X-Business-Use-Case-Usage"] = json.dumps({account: [{
                "type": btype, "call_count": buc_pct, "total_cputime": buc_pct // 2, "total_time": buc_pct // 2,
                "estimated_time_to_regain_access": regain}]})
        limit = s.meta_throttle_at_percent
        if app_pct >= limit:
            raise GraphError(4, THROTTLE_MESSAGES[4], transient=True, headers=headers)
        if buc_pct >= limit:
            code = 80002 if btype == "instagram" else 80001
            raise GraphError(code, THROTTLE_MESSAGES[code], transient=True, headers=headers)
        return headers

    # -- request wrapper ----------------------------------------------------------------------------------
    def _graph(self, handler: Callable[..., Any], auth: bool = True, usage: bool = True) -> Any:
        def run(req: Request, m: re.Match[str]) -> Response:
            headers: dict[str, str] = {}
            try:
                ver = m.groupdict().get("ver")
                if ver and ver not in self.sb.settings.meta_api_versions:
                    raise self._version_error(ver)
                node = self._resolve(m.groupdict().get("node"))
                if usage:
                    headers = self._usage(req.account, node.kind if node else None)
                if not auth:
                    resp = handler(req, m)
                else:
                    grant = self._auth(req)
                    node = self._authorize_node(grant, node, m.groupdict().get("node") or "")
                    resp = handler(req, m, grant, node)
            except GraphError as e:
                e.headers = {**headers, **e.headers}
                return self._render(e)
            resp.headers.update(headers)
            return resp
        return run

    def _token(self, req: Request) -> str | None:
        return req.arg("access_token") or req.bearer()

    def _auth(self, req: Request) -> Grant:
        return self._valid_grant(self._token(req), ("access", "page"))

    def _valid_grant(self, token: str | None, kinds: tuple[str, ...]) -> Grant:
        """The grant behind ``token``, or the Graph API's own error for a missing/expired/revoked/bad one."""
        status, grant = self.sb.tokens.check(token, "meta", kinds)
        if status == "missing":
            raise GraphError(104, "An access token is required to request this resource.")
        if status == "expired" and grant is not None and grant.expires_at is not None:
            raise GraphError(190, _expired_message(grant.expires_at, self.sb.clock.now()), subcode=463)
        if status == "revoked":
            raise GraphError(190, "Error validating access token: The session has been invalidated because the user "
                                  "changed their password or Facebook has changed the session for security reasons.",
                             subcode=460)
        if status != "ok" or grant is None:
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token")
        return grant

    def _authorize_node(self, grant: Grant, node: Node | None, node_id: str) -> Node:
        if node is None:
            raise self._unsupported("GET", node_id)
        if node.kind == "me":
            if grant.kind == "page":
                page = self._index.get(grant.accounts[0]) if grant.accounts else None
                if page is None:
                    raise self._unsupported("GET", node_id)
                return page
            return Node("user", self.user_id(grant.subject), None, None, grant.subject)
        if node.kind == "user":
            if grant.kind != "access" or node.credential != grant.subject:
                raise self._unsupported("GET", node_id)
            return node
        if node.owner not in grant.accounts:
            raise self._unsupported("GET", node_id)
        return node

    # -- node reads --------------------------------------------------------------------------------------
    def _fields(self, req: Request, allowed: frozenset[str], default: tuple[str, ...], node_type: str
                ) -> list[FieldSpec]:
        raw = req.arg("fields")
        specs = parse_fields(raw) if raw else [FieldSpec(f) for f in default]
        for s in specs:
            if s.name not in allowed:
                raise GraphError(100, f"(#100) Tried accessing nonexisting field ({s.name}) on node type "
                                      f"({node_type})")
        return specs

    def _node_read(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        req.ids = 1
        if node.kind == "page":
            return json_response(self._page_obj(req, grant, node))
        if node.kind == "ig":
            return json_response(self._ig_obj(req, node))
        if node.kind == "post":
            specs = self._fields(req, POST_FIELDS, ("created_time", "message", "id"), "Post")
            return json_response(self._post_obj(node.post, node.account, specs))  # type: ignore[arg-type]
        if node.kind == "media":
            specs = self._fields(req, IG_MEDIA_FIELDS, ("id",), "IGMedia")
            return json_response(self._media_obj(node.post, node.account, specs))  # type: ignore[arg-type]
        specs = self._fields(req, USER_FIELDS, ("id", "name"), "User")
        values = {"id": node.id, "name": f"Sandbox Admin ({node.credential})"}
        return json_response({s.name: values[s.name] for s in specs})

    def _page_values(self, grant: Grant, acc: Account) -> dict[str, Any]:
        now = self.sb.clock.now()
        followers = self.sb.world.followers(acc, pacific_date(now))
        token = grant.token if grant.kind == "page" else self._page_token(grant.subject, acc).token
        values: dict[str, Any] = {
            "id": acc.account_id, "name": acc.name, "access_token": token, "category": "Brand",
            "category_list": [{"id": "1706730532910578", "name": "Brand"}],
            "fan_count": int(followers * 0.93), "followers_count": followers,
            "link": f"https://www.facebook.com/{acc.account_id}", "username": acc.slug,
            "about": f"Official page of {acc.brand}", "verification_status": "blue_verified",
            "tasks": ["ANALYZE", "ADVERTISE", "MODERATE", "CREATE_CONTENT", "MANAGE"],
        }
        igs = acc.extra.get("instagram_accounts") or []
        if igs:
            values["instagram_business_account"] = {"id": igs[0]}
        return values

    def _page_obj(self, req: Request, grant: Grant, node: Node) -> dict[str, Any]:
        specs = self._fields(req, PAGE_FIELDS, ("name", "id"), "Page")
        values = self._page_values(grant, node.account)  # type: ignore[arg-type]
        return {s.name: values[s.name] for s in specs if s.name in values}

    def _ig_obj(self, req: Request, node: Node) -> dict[str, Any]:
        specs = self._fields(req, IG_USER_FIELDS, ("id",), "IGUser")
        acc = node.account
        assert acc is not None
        now = self.sb.clock.now()
        values = {
            "id": acc.account_id, "ig_id": int(acc.account_id[-10:]), "username": acc.name, "name": acc.brand,
            "biography": f"{acc.brand} official", "followers_count": self.sb.world.followers(acc, now.date()),
            "follows_count": int(50 + 400 * unit(acc.account_id, "follows")),
            "media_count": self.sb.world.visible_count(acc, now),
            "profile_picture_url": f"https://scontent.cdninstagram.com/v/t51.2885-19/{acc.account_id}.jpg",
            "website": f"https://{acc.slug}.example.com",
        }
        return {s.name: values[s.name] for s in specs}

    # -- /me/accounts ----------------------------------------------------------------------------------------
    def _accounts_edge(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        if node.kind != "user":
            raise GraphError(100, "(#100) Tried accessing nonexisting field (accounts) on node type (Page)")
        specs = self._fields(req, PAGE_FIELDS, ("access_token", "category", "category_list", "name", "id",
                                                "tasks"), "Page")
        pages = [a for a in self.sb.world.credentials().get(grant.subject, []) if a.platform == "facebook"]
        items = [(a.account_id, a) for a in sorted(pages, key=lambda a: a.account_id)]

        def render(acc: Account) -> dict[str, Any]:
            values = self._page_values(grant, acc)
            return {s.name: values[s.name] for s in specs if s.name in values}

        return json_response(self._cursor_page(req, items, render))

    # -- cursor paging ---------------------------------------------------------------------------------------
    def _limit(self, req: Request) -> int:
        raw = req.arg("limit")
        if raw is None or raw == "":
            return DEFAULT_LIMIT
        try:
            limit = int(raw)
        except ValueError as exc:
            raise GraphError(100, "(#100) Param limit must be a number") from exc
        if limit < 0:
            raise GraphError(100, "(#100) Param limit must be a non-negative number")
        cap = self.sb.settings.meta_max_limit
        if limit > cap:
            raise GraphError(100, f"(#100) The limit parameter cannot be greater than {cap}")
        return limit

    def _cursor_page(self, req: Request, items: list[tuple[str, Any]], render: Callable[[Any], dict[str, Any]]
                     ) -> dict[str, Any]:
        """Cursor paging over a small in-memory list of (key, value)."""
        positions = {k: i for i, (k, _) in enumerate(items)}
        values = [v for _, v in items]
        keys = [k for k, _ in items]
        return self._cursor_range(req, values, 0, len(values), keys.__getitem__, positions, render)

    def _cursor_range(self, req: Request, seq: Any, lo: int, hi: int, key_at: Callable[[int], str],
                      positions: dict[str, int], render: Callable[[Any], Any],
                      endpoint: str | None = None, account: str | None = None) -> dict[str, Any]:
        """Cursor paging over ``seq[lo:hi]``: O(log n + page) per call (cursor key -> position by dict)."""
        limit = self._limit(req)
        start = lo
        after, before = req.arg("after"), req.arg("before")
        if after:
            start = self._cursor_pos(after, positions, lo, hi) + 1
        end = min(hi, start + limit)
        if before and not after:
            end = self._cursor_pos(before, positions, lo, hi)
            start = max(lo, end - limit)
        page = [seq[i] for i in range(start, end)]
        req.ids = len(page)
        out: dict[str, Any] = {"data": [render(v) for v in page]}
        if not page:
            return out
        cursors = {"before": _cursor(key_at(start)), "after": _cursor(key_at(end - 1))}
        has_next = end < hi
        if after and endpoint and self.sb.faults.take(self.name, endpoint, account, ("repeat_cursor",)):
            cursors["after"], has_next = after, True  # injected: the page repeats the incoming cursor
        paging: dict[str, Any] = {"cursors": cursors}
        if start > lo:
            paging["previous"] = self._url(req, {"before": cursors["before"], "limit": str(limit)}, drop=("after",))
        if has_next:
            paging["next"] = self._url(req, {"after": cursors["after"], "limit": str(limit)}, drop=("before",))
        out["paging"] = paging
        return out

    @staticmethod
    def _cursor_pos(cursor: str, positions: dict[str, int], lo: int, hi: int) -> int:
        try:
            key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise GraphError(100, "(#100) The after/before cursor is malformed") from exc
        pos = positions.get(key[4:]) if key.startswith("sbx:") else None
        if pos is None or not lo <= pos < hi:
            raise GraphError(100, "(#100) The after/before cursor is malformed")
        return pos

    def _url(self, req: Request, replace: dict[str, str], drop: tuple[str, ...] = ()) -> str:
        host = req.header("Host") or "graph.facebook.com"
        query = {k: v[0] for k, v in req.query.items() if k not in drop}
        if "access_token" not in query and req.bearer():
            query["access_token"] = req.bearer() or ""
        query.update(replace)
        return f"http://{host}{req.path}?{urlencode(query)}"

    # -- posts ---------------------------------------------------------------------------------------------
    def _post_range(self, req: Request, acc: Account) -> tuple[list[Post], int, int]:
        """(all posts newest first, lo, hi): the visible posts inside since/until, by binary search."""
        world = self.sb.world
        posts = world.all_posts(acc)
        lo, hi = world.first_visible(acc, self.sb.clock.now()), len(posts)
        since, until = req.arg("since"), req.arg("until")
        if until:
            u = parse_time(until, "until")
            lo = max(lo, first_index(posts, lambda p: p.published_at <= u))
        if since:
            t = parse_time(since, "since")
            hi = min(hi, first_index(posts, lambda p: p.published_at < t))
        return posts, lo, max(lo, hi)

    def _post_page(self, req: Request, acc: Account, endpoint: str, render: Callable[[Any], Any]
                   ) -> dict[str, Any]:
        posts, lo, hi = self._post_range(req, acc)
        return self._cursor_range(req, posts, lo, hi, lambda i: posts[i].post_id, self.sb.world.positions(acc),
                                  render, endpoint, acc.account_id)

    def _page_posts(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        acc = node.account
        assert acc is not None
        specs = self._fields(req, POST_FIELDS, ("created_time", "message", "id"), "Post")
        self._check_post_expansions(specs)
        key = ("post-json", req.arg("fields"), self.sb.settings.meta_omit_zero_shares)
        now = self.sb.clock.now()
        # each post's encoded JSON is cached per clock minute; the body is assembled from those bytes
        out = self._post_page(req, acc, "page.posts", lambda p: self.per_minute(
            (*key, p.post_id), now, lambda: json_bytes(self._post_obj(p, acc, specs))))
        return json_array_response(out, "data", out["data"])

    def _check_post_expansions(self, specs: list[FieldSpec]) -> None:
        for s in specs:
            if s.name == "insights" and "metric" in s.mods:
                for metric in _list_param(s.mods["metric"]):
                    if metric not in POST_METRICS:
                        raise invalid_metric()

    def _post_obj(self, p: Post, acc: Account, specs: list[FieldSpec]) -> dict[str, Any]:
        now = self.sb.clock.now()
        likes = p.metric("likes", now)
        shares = p.metric("shares", now)
        comments = p.metric("comments", now)
        reactions = int(likes * 1.12)
        local = p.post_id.split("_", 1)[-1]
        out: dict[str, Any] = {}
        for s in specs:
            n = s.name
            if n == "id":
                out[n] = p.post_id
            elif n in ("created_time", "updated_time"):
                out[n] = graph_time(p.published_at)
            elif n == "message":
                out[n] = p.title
            elif n == "permalink_url":
                out[n] = f"https://www.facebook.com/{acc.account_id}/posts/{local}"
            elif n == "shares":
                if shares or not self.sb.settings.meta_omit_zero_shares:
                    out[n] = {"count": shares}
            elif n in ("reactions", "likes", "comments"):
                total = {"reactions": reactions, "likes": likes, "comments": comments}[n]
                edge: dict[str, Any] = {"data": []}
                if "summary" in s.mods and s.mods["summary"] not in ("false", "0"):
                    summary: dict[str, Any] = {"total_count": total}
                    if n == "comments":
                        summary = {"order": "ranked", "total_count": total, "can_comment": True}
                    elif n == "reactions":
                        summary["viewer_reaction"] = "NONE"
                    edge["summary"] = summary
                out[n] = edge
            elif n == "insights":
                metrics = _list_param(s.mods.get("metric")) or list(POST_METRICS)
                out[n] = {"data": [self._post_metric(p, metric) for metric in metrics]}
            elif n == "full_picture":
                out[n] = f"https://scontent.xx.fbcdn.net/v/t39.30808-6/{local}_n.jpg"
            elif n == "status_type":
                out[n] = {"photo": "added_photos", "video": "added_video", "link": "shared_story"}.get(
                    p.media_type, "mobile_status_update")
            elif n == "is_published":
                out[n] = True
            elif n == "from":
                out[n] = {"name": acc.name, "id": acc.account_id}
            elif n == "attachments":
                out[n] = {"data": [{"media_type": p.media_type, "type": p.media_type,
                                    "url": f"https://www.facebook.com/{acc.account_id}/posts/{local}"}]}
        return out

    def _post_metric(self, p: Post, metric: str) -> dict[str, Any]:
        now = self.sb.clock.now()
        views = p.metric("views", now)
        likes = p.metric("likes", now)
        value: Any
        if metric == "post_media_view":
            value = views
        elif metric == "post_total_media_view_unique":
            value = p.metric("reach", now)
        elif metric == "post_clicks":
            value = int(views * 0.03)
        elif metric == "post_clicks_by_type":
            clicks = int(views * 0.03)
            a, b, c = _split_value(clicks, p.post_id, ("other clicks", "link clicks", "photo view"))
            value = {"other clicks": a, "link clicks": b, "photo view": c}
        elif metric == "post_reactions_by_type_total":
            extra = int(likes * 0.12)
            love, wow, haha = _split_value(extra, p.post_id, ("love", "wow", "haha"))
            value = {"like": likes, "love": love, "wow": wow, "haha": haha}
        elif metric == "post_reactions_like_total":
            value = likes
        elif metric == "post_activity_by_action_type":
            value = {"share": p.metric("shares", now), "like": likes, "comment": p.metric("comments", now)}
        else:  # post_video_views
            value = int(views * 0.6) if p.media_type == "video" else 0
        return {"name": metric, "period": "lifetime", "values": [{"value": value}], "title": POST_METRICS[metric],
                "description": f"Lifetime: {POST_METRICS[metric]}", "id": f"{p.post_id}/insights/{metric}/lifetime"}

    def _post_insights(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        metrics = self._metric_list(req)
        for metric in metrics:
            if metric not in POST_METRICS:
                raise invalid_metric()
        period = req.arg("period") or "lifetime"
        if period != "lifetime":
            return json_response({"data": []})
        req.ids = 1
        return json_response({"data": [self._post_metric(node.post, x) for x in metrics]})  # type: ignore[arg-type]

    def _metric_list(self, req: Request) -> list[str]:
        metrics = _list_param(req.arg("metric"))
        if not metrics:
            raise GraphError(3001, "No metric was specified to be fetched", type_="OAuthException", subcode=1504028)
        return metrics

    # -- page insights ---------------------------------------------------------------------------------------
    def _window(self, req: Request, max_seconds: int, default_days: int, code: int, message: str
                ) -> tuple[datetime, datetime]:
        now = self.sb.clock.now()
        since_raw, until_raw = req.arg("since"), req.arg("until")
        until = parse_time(until_raw, "until") if until_raw else pacific_midnight(pacific_date(now))
        since = parse_time(since_raw, "since") if since_raw else until - timedelta(days=default_days)
        if since > until:
            raise GraphError(100, "(#100) The since parameter must be before the until parameter")
        if (until - since).total_seconds() > max_seconds:
            raise GraphError(code, message)
        return since, until

    def _days(self, since: datetime, until: datetime, acc: Account) -> list[date]:
        """Complete Pacific days from ``since`` (floor) whose end is at or before ``until``."""
        now = self.sb.clock.now()
        oldest = pacific_date(now) - timedelta(days=HISTORY_DAYS)
        first = max(pacific_date(since), oldest)
        days = []
        d = first
        while pacific_midnight(d + timedelta(days=1)) <= min(until, now):
            days.append(d)
            d += timedelta(days=1)
        return days

    def _time_paging(self, req: Request, since: datetime, until: datetime) -> dict[str, str]:
        span = until - since
        return {
            "previous": self._url(req, {"since": str(int((since - span).timestamp())),
                                        "until": str(int(since.timestamp()))}),
            "next": self._url(req, {"since": str(int(until.timestamp())),
                                    "until": str(int((until + span).timestamp()))}),
        }

    def _page_daily(self, acc: Account, metric: str, d: date) -> Any:
        world = self.sb.world
        now = self.sb.clock.now()
        _, source, scale, _ = PAGE_METRICS[metric]
        if source == "followers":
            return world.followers(acc, d)
        value = int(world.observed(world.daily(acc, source, d), d, now) * scale)
        if metric == "page_fan_adds_by_paid_non_paid_unique":
            paid = int(value * 0.1 * unit(acc.account_id, d.toordinal(), "paid"))
            return {"paid": paid, "unpaid": value - paid, "total": value}
        return value

    def _page_insights(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        acc = node.account
        assert acc is not None
        metrics = self._metric_list(req)
        for metric in metrics:
            if metric not in PAGE_METRICS or metric in PAGE_DEPRECATED_METRICS:
                raise invalid_metric()
        periods = _list_param(req.arg("period")) or ["day"]
        for period in periods:
            if period not in ("day", "week", "days_28", "month", "lifetime", "total_over_range"):
                raise GraphError(100, "(#100) period must be one of the following values: day, week, days_28, "
                                      "month, lifetime, total_over_range")
        since, until = self._window(req, PAGE_INSIGHTS_MAX_SECONDS, 2, 1,
                                    "There cannot be more than 93 days (8035200 s) between since and until")
        key = ("page.insights", acc.account_id, tuple(metrics), tuple(periods), since, until,
               self.sb.settings.meta_page_unsupported_period)
        data = self.per_minute(key, self.sb.clock.now(), lambda: self._page_insights_data(acc, metrics, periods,
                                                                                        since, until))
        req.ids = 1
        return json_response({"data": data, "paging": self._time_paging(req, since, until)})

    def _page_insights_data(self, acc: Account, metrics: list[str], periods: list[str], since: datetime,
                            until: datetime) -> list[dict[str, Any]]:
        days = self._days(since, until, acc)
        data = []
        for metric in metrics:
            title, _, _, supported = PAGE_METRICS[metric]
            for period in periods:
                if period not in supported:
                    if self.sb.settings.meta_page_unsupported_period == "error":
                        raise invalid_metric()
                    continue
                window = {"day": 1, "week": 7, "days_28": 28}[period]
                values = []
                for d in days:
                    if window == 1:
                        value = self._page_daily(acc, metric, d)
                    else:
                        value = sum(self._page_daily(acc, metric, d - timedelta(days=k)) for k in range(window))
                    values.append({"value": value, "end_time": end_time(d)})
                data.append({"name": metric, "period": period, "values": values, "title": title,
                             "description": f"Daily: {title}", "id": f"{acc.account_id}/insights/{metric}/{period}"})
        return data

    # -- Instagram user insights --------------------------------------------------------------------------------
    def _ig_insights(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        acc = node.account
        assert acc is not None
        metrics = self._metric_list(req)
        if any(x in IG_USER_DEPRECATED_METRICS for x in metrics):
            raise invalid_metric()  # a deprecated metric fails the whole request (contract §2.6/§2.8)
        valid = sorted({*IG_USER_METRICS, *IG_LIFETIME_METRICS})
        for i, metric in enumerate(metrics):
            if metric not in IG_USER_METRICS and metric not in IG_LIFETIME_METRICS:
                raise GraphError(100, f"(#100) metric[{i}] must be one of the following values: {', '.join(valid)}")
        periods = _list_param(req.arg("period"))
        period = periods[0] if len(periods) == 1 else ""
        if not period:
            raise GraphError(100, "(#100) The value must be a valid period: period must be one of the following "
                                  "values: day, week, days_28, month, lifetime, total_over_range")
        lifetime = [x for x in metrics if x in IG_LIFETIME_METRICS]
        if lifetime or period == "lifetime":
            return self._ig_lifetime(req, acc, metrics, period)
        metric_type = req.arg("metric_type") or "default"
        if metric_type not in ("default", "time_series", "total_value"):
            raise GraphError(100, "(#100) metric_type must be one of the following values: default, time_series, "
                                  "total_value")
        if metric_type == "default":
            total_only = [x for x in metrics if "time_series" not in IG_USER_METRICS[x].types]
            if total_only:
                raise GraphError(100, f"(#100) The following metrics ({', '.join(total_only)}) should be specified "
                                      "with parameter metric_type=total_value")
        else:
            for x in metrics:
                if metric_type not in IG_USER_METRICS[x].types:
                    raise GraphError(100, f"(#100) {x} is not compatible with the metric type ({metric_type})")
        for x in metrics:
            if IG_USER_METRICS[x].period != period:
                raise GraphError(100, f"(#100) {x} does not support the {period} period. Supported period: "
                                      f"{IG_USER_METRICS[x].period}")
        breakdowns = _list_param(req.arg("breakdown"))
        if breakdowns:
            if metric_type != "total_value":
                raise GraphError(100, "(#100) breakdown is only supported with metric_type=total_value")
            for x in metrics:
                for b in breakdowns:
                    if b not in IG_USER_METRICS[x].breakdowns:
                        raise GraphError(100, f"(#100) Incompatible breakdown {b} for the metric {x}")
        default_days = self.sb.settings.meta_ig_default_days
        since, until = self._window(req, IG_INSIGHTS_MAX_SECONDS, default_days, 100,
                                    "(#100) There cannot be more than 30 days (2592000 s) between since and until")
        now = self.sb.clock.now()
        if "follower_count" in metrics and since < pacific_midnight(pacific_date(now)) - timedelta(days=30):
            raise GraphError(100, "(#100) (follower_count) metric only supports querying data for the last 30 days "
                                  "excluding the current day")
        days = [d for d in self._days(since, until, acc) if d >= acc.created_at.date()]
        world = self.sb.world
        followers = world.followers(acc, pacific_date(now))
        data = []
        for x in metrics:
            spec = IG_USER_METRICS[x]
            if x == "follower_count" and followers < 100:
                continue
            if not days:
                continue
            daily = [int(world.observed(world.daily(acc, spec.source, d), d, now) * spec.scale) for d in days]
            item: dict[str, Any] = {"name": x, "period": period}
            if metric_type == "total_value":
                total: dict[str, Any] = {"value": sum(daily)}
                if breakdowns:
                    combos = list(itertools.product(*(spec.breakdowns[b] for b in breakdowns)))
                    parts = _split_value(sum(daily), (acc.account_id, x, tuple(breakdowns), days[0].toordinal()),
                                         tuple("|".join(c) for c in combos))
                    results = [{"dimension_values": list(c), "value": n}
                               for c, n in zip(combos, parts, strict=True) if n]
                    total["breakdowns"] = [{"dimension_keys": breakdowns, "results": results}]
                item.update({"title": spec.title, "description": f"{spec.title} (sandbox)", "total_value": total})
            else:
                item["values"] = [{"value": v, "end_time": end_time(d)} for v, d in zip(daily, days, strict=True)]
                item.update({"title": spec.title, "description": f"{spec.title} (sandbox)"})
            item["id"] = f"{acc.account_id}/insights/{x}/{period}"
            data.append(item)
        req.ids = 1
        out: dict[str, Any] = {"data": data}
        if metric_type != "total_value" and data:
            out["paging"] = self._time_paging(req, since, until)
        return json_response(out)

    def _ig_lifetime(self, req: Request, acc: Account, metrics: list[str], period: str) -> Response:
        """``online_followers`` (per-day hour map) and the demographics metrics (total_value + breakdown +
        timeframe): both ``period=lifetime`` only (contract §2.8, details [U])."""
        for x in metrics:
            if x not in IG_LIFETIME_METRICS:
                raise GraphError(100, f"(#100) {x} does not support the {period} period. Supported period: "
                                      f"{IG_USER_METRICS[x].period}")
        if period != "lifetime":
            raise GraphError(100, f"(#100) {metrics[0]} does not support the {period} period. Supported period: "
                                  "lifetime")
        demo = [x for x in metrics if x in IG_DEMOGRAPHIC_METRICS]
        if demo and len(demo) != len(metrics):
            raise GraphError(100, "(#100) online_followers cannot be requested together with demographic metrics")
        metric_type = req.arg("metric_type") or "default"
        now = self.sb.clock.now()
        world = self.sb.world
        followers = world.followers(acc, pacific_date(now))
        req.ids = 1
        if not demo:  # online_followers
            if metric_type not in ("default", "time_series"):
                raise GraphError(100, f"(#100) online_followers is not compatible with the metric type ({metric_type})")
            since, until = self._window(req, IG_INSIGHTS_MAX_SECONDS, self.sb.settings.meta_ig_default_days, 100,
                                        "(#100) There cannot be more than 30 days (2592000 s) between since and until")
            oldest = pacific_date(now) - timedelta(days=30)
            days = [d for d in self._days(since, until, acc) if d >= oldest and d >= acc.created_at.date()]
            if followers < 100 or not days:
                return json_response({"data": []})  # missing data -> empty data set
            values = []
            for d in days:
                weights = [0.3 + unit(acc.account_id, "online", d.toordinal(), h) + (1.2 if 17 <= h <= 22 else 0)
                           for h in range(24)]
                top = max(weights)
                values.append({"value": {str(h): int(followers * 0.4 * w / top) for h, w in enumerate(weights)},
                               "end_time": end_time(d)})
            item = {"name": "online_followers", "period": "lifetime", "values": values,
                    "title": "Online followers",
                    "description": "Followers of this profile online per hour of the day (sandbox)",
                    "id": f"{acc.account_id}/insights/online_followers/lifetime"}
            return json_response({"data": [item], "paging": self._time_paging(req, since, until)})
        if metric_type != "total_value":
            raise GraphError(100, f"(#100) The following metrics ({', '.join(demo)}) should be specified with "
                                  "parameter metric_type=total_value")
        breakdowns = _list_param(req.arg("breakdown"))
        if not breakdowns:
            raise GraphError(100, "(#100) breakdown is required for demographic metrics: one or more of "
                                  f"{', '.join(DEMOGRAPHIC_BREAKDOWNS)}")
        for b in breakdowns:
            if b not in DEMOGRAPHIC_BREAKDOWNS:
                raise GraphError(100, f"(#100) Incompatible breakdown {b} for the metric {demo[0]}")
        timeframe = req.arg("timeframe")
        if timeframe not in DEMOGRAPHIC_TIMEFRAMES:
            raise GraphError(100, "(#100) timeframe must be one of the following values: "
                                  f"{', '.join(DEMOGRAPHIC_TIMEFRAMES)}")
        if followers < 100:
            return json_response({"data": []})
        data = []
        for x in demo:
            base = followers if x == "follower_demographics" else int(followers * 0.08)
            combos = list(itertools.product(*(DEMOGRAPHIC_BREAKDOWNS[b] for b in breakdowns)))
            parts = _split_value(base, (acc.account_id, x, tuple(breakdowns), timeframe),
                                 tuple("|".join(c) for c in combos))
            ranked = sorted(zip(combos, parts, strict=True), key=lambda cp: -cp[1])[:45]  # top 45 only
            results = [{"dimension_values": list(c), "value": n} for c, n in ranked if n]
            title = "Follower demographics" if x == "follower_demographics" else "Engaged audience demographics"
            data.append({"name": x, "period": "lifetime", "title": title, "description": f"{title} (sandbox)",
                         "total_value": {"breakdowns": [{"dimension_keys": breakdowns, "results": results}]},
                         "id": f"{acc.account_id}/insights/{x}/lifetime"})
        return json_response({"data": data})

    # -- Instagram media --------------------------------------------------------------------------------------
    def _ig_media(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        acc = node.account
        assert acc is not None
        specs = self._fields(req, IG_MEDIA_FIELDS, ("id",), "IGMedia")
        for s in specs:
            if s.name == "insights" and "metric" in s.mods:
                requested = _list_param(s.mods["metric"])
                if any(x in IG_MEDIA_DEPRECATED_METRICS for x in requested):
                    raise invalid_metric()
                for i, metric in enumerate(requested):
                    if metric not in IG_MEDIA_METRICS:
                        raise self._media_metric_error(i)
        key = ("media-json", req.arg("fields"), self.sb.settings.meta_ig_watch_time_unit)
        now = self.sb.clock.now()
        out = self._post_page(req, acc, "ig.media", lambda p: self.per_minute(
            (*key, p.post_id), now, lambda: json_bytes(self._media_obj(p, acc, specs))))
        return json_array_response(out, "data", out["data"])

    @staticmethod
    def _media_types(p: Post) -> tuple[str, str]:
        if p.media_type == "REELS":
            return "VIDEO", "REELS"
        return p.media_type, "FEED"

    def _media_obj(self, p: Post, acc: Account, specs: list[FieldSpec]) -> dict[str, Any]:
        now = self.sb.clock.now()
        media_type, product = self._media_types(p)
        code = base64.urlsafe_b64encode(hashlib.blake2b(p.post_id.encode(), digest_size=8).digest()).decode()[:11]
        out: dict[str, Any] = {}
        for s in specs:
            n = s.name
            if n == "id":
                out[n] = p.post_id
            elif n == "caption":
                out[n] = p.title
            elif n == "media_type":
                out[n] = media_type
            elif n == "media_product_type":
                out[n] = product
            elif n == "timestamp":
                out[n] = graph_time(p.published_at)
            elif n == "permalink":
                out[n] = f"https://www.instagram.com/{'reel' if product == 'REELS' else 'p'}/{code}/"
            elif n == "like_count":
                out[n] = p.metric("likes", now)
            elif n == "comments_count":
                out[n] = p.metric("comments", now)
            elif n == "username":
                out[n] = acc.name
            elif n == "media_url":
                out[n] = f"https://scontent.cdninstagram.com/v/{p.post_id}.{'mp4' if media_type == 'VIDEO' else 'jpg'}"
            elif n == "thumbnail_url":
                if media_type == "VIDEO":
                    out[n] = f"https://scontent.cdninstagram.com/v/{p.post_id}_thumb.jpg"
            elif n == "shortcode":
                out[n] = code
            elif n == "is_comment_enabled":
                out[n] = True
            elif n == "owner":
                out[n] = {"id": acc.account_id}
            elif n == "children":
                if media_type == "CAROUSEL_ALBUM":
                    count = 2 + int(unit(p.post_id, "children") * 4)
                    out[n] = {"data": [{"id": f"{p.post_id[:-2]}{k:02d}"} for k in range(count)]}
            elif n == "insights":
                metrics = _list_param(s.mods.get("metric"))
                data = [self._media_metric(p, x) for x in metrics if product in IG_MEDIA_METRICS[x]]
                out[n] = {"data": data}
        return out

    def _media_metric_error(self, i: int) -> GraphError:
        return GraphError(100, f"(#100) metric[{i}] must be one of the following values: "
                               f"{', '.join(sorted(IG_MEDIA_METRICS))}")

    def _media_metric(self, p: Post, metric: str) -> dict[str, Any]:
        now = self.sb.clock.now()
        views = p.metric("views", now)
        likes, comments = p.metric("likes", now), p.metric("comments", now)
        shares, saves = p.metric("shares", now), p.metric("saves", now)
        ms = 1000 if self.sb.settings.meta_ig_watch_time_unit == "ms" else 1
        value: Any = {
            "reach": p.metric("reach", now), "saved": saves, "likes": likes, "comments": comments, "shares": shares,
            "total_interactions": likes + comments + shares + saves, "views": views, "reposts": int(shares * 0.1),
            "total_likes": likes, "total_comments": comments, "total_views": views,
            "follows": p.metric("subscribers", now), "profile_visits": int(views * 0.01),
            "profile_activity": int(views * 0.012),
            "ig_reels_avg_watch_time": int(p.duration_seconds * 0.45 * ms),
            "ig_reels_video_view_total_time": p.metric("watch_seconds", now) * ms,
            "reels_skip_rate": round(20 + 40 * unit(p.post_id, "skip"), 2) if views else 0,
            "crossposted_views": 0, "facebook_views": 0, "navigation": 0, "replies": 0, "link_clicks": 0,
        }[metric]
        title = metric.replace("_", " ").capitalize()
        return {"name": metric, "period": "lifetime", "values": [{"value": value}], "title": title,
                "description": f"{title} (sandbox)", "id": f"{p.post_id}/insights/{metric}/lifetime"}

    def _media_insights(self, req: Request, m: re.Match[str], grant: Grant, node: Node) -> Response:
        p = node.post
        assert p is not None
        metrics = self._metric_list(req)
        if any(x in IG_MEDIA_DEPRECATED_METRICS for x in metrics):
            raise invalid_metric()  # a deprecated metric fails the whole request
        for i, metric in enumerate(metrics):
            if metric not in IG_MEDIA_METRICS:
                raise self._media_metric_error(i)
        _, product = self._media_types(p)
        for metric in metrics:
            if product not in IG_MEDIA_METRICS[metric]:
                raise GraphError(100, f"(#100) The Media Insights API does not support the {metric} metric for "
                                      "this media product type.")
        req.ids = 1
        if p.published_at > self.sb.clock.now() - timedelta(hours=1):
            return json_response({"data": []})  # missing data -> empty data set, not zeros
        return json_response({"data": [self._media_metric(p, x) for x in metrics]})

    # -- OAuth --------------------------------------------------------------------------------------------------
    def _check_app(self, client_id: str | None, client_secret: str | None) -> None:
        s = self.sb.settings
        if client_id != s.meta_app_id:
            raise GraphError(101, "Error validating application. Invalid application ID.")
        if client_secret != s.meta_app_secret:
            raise GraphError(1, "Error validating client secret.")

    def _exchange(self, req: Request, m: re.Match[str]) -> Response:
        if req.arg("grant_type") != "fb_exchange_token":
            raise GraphError(100, "(#100) Unsupported grant_type; the sandbox supports fb_exchange_token")
        self._check_app(req.arg("client_id"), req.arg("client_secret"))
        token = req.arg("fb_exchange_token")
        if not token:
            raise GraphError(100, "(#100) Missing parameter fb_exchange_token")
        grant = self._valid_grant(token, ("access",))
        new = self.sb.tokens.issue("meta", "access", grant.subject, timedelta(seconds=EXCHANGED_EXPIRES_IN), "EAAB",
                                   grant.scopes, grant.accounts)
        req.account = grant.accounts[0] if grant.accounts else None
        return json_response({"access_token": new.token, "token_type": "bearer", "expires_in": EXCHANGED_EXPIRES_IN})

    def _debug_token(self, req: Request, m: re.Match[str]) -> Response:
        app_token = self._token(req) or ""
        s = self.sb.settings
        if app_token != f"{s.meta_app_id}|{s.meta_app_secret}":
            self._auth(req)
        token = req.arg("input_token")
        status, grant = self.sb.tokens.check(token, "meta", ("access", "page"))
        if grant is None:
            grant = self.sb.tokens.lookup(token)
        if grant is None or grant.provider != "meta":
            return json_response({"data": {"error": {"code": 190, "message": "Invalid OAuth access token."},
                                           "is_valid": False, "scopes": []}})
        data: dict[str, Any] = {
            "app_id": s.meta_app_id, "type": "PAGE" if grant.kind == "page" else "USER",
            "application": "Social Data Engine (sandbox)",
            "expires_at": int(grant.expires_at.timestamp()) if grant.expires_at else 0,
            "is_valid": status == "ok", "scopes": list(grant.scopes), "user_id": self.user_id(grant.subject),
        }
        if grant.kind == "page" and grant.accounts:
            data["profile_id"] = grant.accounts[0]
        return json_response({"data": data})

    # -- batch ------------------------------------------------------------------------------------------------
    def _batch(self, req: Request, m: re.Match[str]) -> Response:
        params = {k: v[0] for k, v in req.query.items()}
        ctype = req.header("Content-Type") or ""
        if req.body and "multipart" not in ctype:
            params.update(req.form())
        raw = params.get("batch")
        if not raw:
            raise GraphError(100, "(#100) The parameter batch is required")
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise GraphError(100, "(#100) The parameter batch must be a JSON-encoded array") from exc
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise GraphError(100, "(#100) The parameter batch must be a JSON-encoded array of objects")
        if len(items) > BATCH_MAX:
            raise GraphError(1, f"(#1) Too many requests in batch message. Maximum batch size is {BATCH_MAX}",
                             type_="GraphBatchException")
        include_headers = params.get("include_headers", "true").lower() not in ("false", "0")
        ver = m.groupdict().get("ver") or self.sb.settings.meta_api_versions[-1]
        token = params.get("access_token") or req.bearer()
        out: list[Any] = []
        for item in items:
            out.append(self._batch_item(req, item, ver, token, include_headers))
        req.ids = len(items)
        return json_response(out)

    def _batch_item(self, outer: Request, item: dict[str, Any], ver: str, token: str | None,
                    include_headers: bool) -> Any:
        method = str(item.get("method", "GET")).upper()
        rel = str(item.get("relative_url", "")).lstrip("/")
        parts = urlsplit("/" + rel)
        path = parts.path
        if not re.match(r"/v\d+\.\d+(/|$)", path):
            path = f"/{ver}{path}"
        query = parse_qs(parts.query, keep_blank_values=True)
        item_token = item.get("access_token")
        if isinstance(item_token, str) and item_token:
            query["access_token"] = [item_token]
        elif "access_token" not in query and token:
            query["access_token"] = [token]
        sub = Request(method, path, query, outer.headers, b"")
        if method != "GET":
            resp = self._render(GraphError(100, f"(#100) The sandbox batch only supports GET, not {method}"))
        else:
            resp = dispatch(self.sb, self, sub)
        if resp.action == "reset":
            return None
        body = resp.body.decode("utf-8", "replace")
        if resp.action == "truncate":
            body = body[: max(1, len(body) // 2)]
        entry: dict[str, Any] = {"code": resp.status}
        if include_headers:
            entry["headers"] = [{"name": k, "value": v} for k, v in resp.headers.items()]
        entry["body"] = body
        return entry

    # -- state -----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._page_tokens.clear()
            self._app_calls.clear()
            self._buc_calls.clear()
            self._seq = itertools.count(1)


def _cursor(key: str) -> str:
    return base64.urlsafe_b64encode(f"sbx:{key}".encode()).decode().rstrip("=")


def _vkey(ver: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ver.lstrip("v").split("."))
