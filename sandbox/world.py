"""The sandbox's synthetic world: brand accounts, their posts and metric curves, all from one seed.

Everything is a pure function of (seed, anchor, knobs): the same seed gives the same accounts, posts and
metrics. Posts exist both before the anchor (history) and after it (future uploads), so moving the
sandbox clock forward reveals new posts, and metrics keep growing then settle after a few days.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

PLATFORMS = ("tiktok", "facebook", "instagram", "youtube")

BRANDS = (
    ("Aurora Foods", "aurora", "America/Argentina/Buenos_Aires"),
    ("Bolt Mobility", "bolt", "America/New_York"),
    ("Cumbre Outdoor", "cumbre", "America/Santiago"),
    ("Delta Beauty", "delta", "Europe/Madrid"),
    ("Estrella Bank", "estrella", "America/Mexico_City"),
)

#: realistic default post counts per platform: (min, max)
DEFAULT_POSTS = {"tiktok": (300, 1200), "facebook": (400, 1800), "instagram": (300, 1500), "youtube": (150, 1200)}
DEFAULT_ACCOUNTS = {"tiktok": 5, "facebook": 6, "instagram": 6, "youtube": 6}

#: time constant (days) of the saturating growth curve of lifetime post metrics
GROWTH_TAU_DAYS = 1.6


def unit(*keys: Any) -> float:
    """Deterministic pseudo-random number in [0, 1) from any keys."""
    h = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


#: Post.metric name -> rate attribute (None = views themselves; "watch"/"subscribers" = fixed rules)
_RATE_ATTRS: dict[str, str | None] = {
    "views": None, "likes": "like_rate", "comments": "comment_rate", "shares": "share_rate", "saves": "save_rate",
    "reach": "reach_rate", "watch_seconds": "watch", "subscribers": "subscribers",
}


@dataclass(slots=True)
class Post:
    post_id: str
    account_id: str
    platform: str
    published_at: datetime
    title: str
    media_type: str
    duration_seconds: float
    potential: float  # lifetime views at saturation
    like_rate: float
    comment_rate: float
    share_rate: float
    save_rate: float
    reach_rate: float
    private: bool = False  # YouTube: private/deleted ids are omitted by the APIs

    def fraction(self, at: datetime) -> float:
        """Share of the lifetime total reached at instant ``at`` (0 before publishing)."""
        age = (at - self.published_at).total_seconds() / 86400
        if age <= 0:
            return 0.0
        return 1.0 - math.exp(-age / GROWTH_TAU_DAYS)

    def views(self, at: datetime) -> int:
        return int(self.potential * self.fraction(at))

    def metric(self, name: str, at: datetime) -> int:
        """Cumulative lifetime value of a metric at an instant."""
        v = self.potential * self.fraction(at)
        attr = _RATE_ATTRS[name]
        if attr is None:
            rate = 1.0
        elif attr == "watch":
            rate = self.duration_seconds * 0.45
        elif attr == "subscribers":
            rate = 0.002
        else:
            rate = getattr(self, attr)
        return int(v * rate)

    def between(self, name: str, start: datetime, end: datetime) -> int:
        """Value accrued in [start, end)."""
        return max(0, self.metric(name, end) - self.metric(name, start))


@dataclass
class Account:
    platform: str
    account_id: str
    name: str
    brand: str
    slug: str
    timezone: str
    credential: str  # name of the credential (secret) that serves this account
    created_at: datetime
    authorized_at: datetime  # when the OAuth consent happened (TikTok refresh-token clock)
    n_posts: int
    followers_base: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorldSettings:
    seed: int = 7
    anchor: date | None = None  # "today" of the world; default = UTC today at start
    accounts_per_platform: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ACCOUNTS))
    posts_per_account: int | None = None  # None = realistic spread per platform (DEFAULT_POSTS)
    history_days: int = 730
    future_posts_per_day: float = 1.0  # uploads per account per day after the anchor
    future_days: int = 30


class World:
    def __init__(self, settings: WorldSettings) -> None:
        self.settings = settings
        self.anchor = settings.anchor or datetime.now(UTC).date()
        self.anchor_dt = datetime.combine(self.anchor, time(0), UTC)
        self._accounts: list[Account] = []
        self._posts: dict[tuple[str, str], list[Post]] = {}
        self._positions: dict[tuple[str, str], dict[str, int]] = {}
        self._lock = threading.Lock()
        self._build()

    # -- accounts -----------------------------------------------------------------------------------
    def _build(self) -> None:
        rng = random.Random(self.settings.seed)
        for platform in PLATFORMS:
            for i in range(self.settings.accounts_per_platform.get(platform, 0)):
                brand, slug, tz = BRANDS[i % len(BRANDS)]
                n = self.settings.posts_per_account
                if n is None:
                    lo, hi = DEFAULT_POSTS[platform]
                    n = rng.randint(lo, hi)
                self._accounts.append(self._make_account(platform, i, brand, slug, tz, n, rng))

    def _make_account(self, platform: str, i: int, brand: str, slug: str, tz: str, n_posts: int,
                      rng: random.Random, credential: str | None = None) -> Account:
        suffix = "" if i < len(BRANDS) else f"-{i // len(BRANDS) + 1}"
        if platform == "youtube":
            core = "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=22))
            account_id = "UC" + core
            name, cred = f"{brand} TV{suffix}", f"youtube-{slug}{suffix}"
        elif platform == "tiktok":
            account_id = "-000" + "".join(rng.choices(string.ascii_letters + string.digits, k=40))
            name, cred = f"@{slug}{suffix.replace('-', '')}", f"tiktok-{slug}{suffix}"
        elif platform == "facebook":
            account_id = str(rng.randint(10**14, 10**15 - 1))
            name, cred = f"{brand}{suffix}", f"meta-{slug}"
        else:
            account_id = "1784" + str(rng.randint(10**12, 10**13 - 1))
            name, cred = f"{slug}{suffix.replace('-', '')}.official", f"meta-{slug}"
        created = self.anchor_dt - timedelta(days=self.settings.history_days + rng.randint(30, 900))
        authorized = self.anchor_dt - timedelta(days=rng.randint(5, 300), hours=rng.randint(0, 23))
        acc = Account(
            platform=platform, account_id=account_id, name=name, brand=brand, slug=slug, timezone=tz,
            credential=credential or cred, created_at=created, authorized_at=authorized, n_posts=n_posts,
            followers_base=int(10 ** rng.uniform(3.5, 6.2)),
        )
        if platform == "youtube":
            acc.extra["uploads_playlist"] = "UU" + account_id[2:]
        return acc

    def accounts(self, platform: str | None = None) -> list[Account]:
        return [a for a in self._accounts if platform is None or a.platform == platform]

    def account_count(self) -> int:
        """Accounts of every platform (they are only ever added: a cheap "did the world grow" check)."""
        return len(self._accounts)

    def account(self, platform: str, account_id: str) -> Account | None:
        for a in self._accounts:
            if a.platform == platform and a.account_id == account_id:
                return a
        return None

    def add_account(self, platform: str, n_posts: int, *, name: str | None = None, brand: str = "Test Brand",
                    timezone: str = "UTC", credential: str | None = None, private_ids: int = 0,
                    future_posts_per_day: float | None = None) -> Account:
        """Add an account for a test (e.g. a channel with exactly 50 or 500 videos)."""
        idx = len(self._accounts)
        rng = random.Random(f"{self.settings.seed}-extra-{idx}")
        acc = self._make_account(platform, idx, brand, f"test{idx}", timezone, n_posts, rng, credential)
        if name:
            acc.name = name
        acc.extra["private_ids"] = private_ids
        if future_posts_per_day is not None:
            acc.extra["future_posts_per_day"] = future_posts_per_day
        with self._lock:
            self._accounts.append(acc)
        return acc

    def credentials(self) -> dict[str, list[Account]]:
        out: dict[str, list[Account]] = {}
        for a in self._accounts:
            out.setdefault(a.credential, []).append(a)
        return out

    # -- posts -----------------------------------------------------------------------------------------
    def all_posts(self, acc: Account) -> list[Post]:
        """Every post of the account, past and future, newest first (generated once, cached)."""
        key = (acc.platform, acc.account_id)
        with self._lock:
            posts = self._posts.get(key)
            if posts is None:
                posts = self._generate(acc)
                self._posts[key] = posts
        return posts

    def posts(self, acc: Account, at: datetime) -> list[Post]:
        """Posts published at or before ``at``, newest first (a copy: O(n); hot paths use ``first_visible``)."""
        return self.all_posts(acc)[self.first_visible(acc, at):]

    def first_visible(self, acc: Account, at: datetime) -> int:
        """Index in ``all_posts(acc)`` of the newest post published at or before ``at`` (binary search)."""
        return first_index(self.all_posts(acc), lambda p: p.published_at <= at)

    def visible_count(self, acc: Account, at: datetime) -> int:
        return len(self.all_posts(acc)) - self.first_visible(acc, at)

    def positions(self, acc: Account) -> dict[str, int]:
        """post id -> index in ``all_posts(acc)`` (built once per account, on first use)."""
        key = (acc.platform, acc.account_id)
        pos = self._positions.get(key)
        if pos is None:
            posts = self.all_posts(acc)
            pos = {p.post_id: i for i, p in enumerate(posts)}
            with self._lock:
                self._positions[key] = pos
        return pos

    def _generate(self, acc: Account) -> list[Post]:
        rng = random.Random(f"{self.settings.seed}-{acc.platform}-{acc.account_id}")
        n = acc.n_posts
        span = self.settings.history_days * 86400 - 3600
        start = self.anchor_dt - timedelta(days=self.settings.history_days)
        offsets = sorted(rng.uniform(0, span) for _ in range(n))
        times = [start + timedelta(seconds=o) for o in offsets]
        rate = acc.extra.get("future_posts_per_day", self.settings.future_posts_per_day)
        n_future = int(rate * self.settings.future_days)
        for k in range(n_future):
            day = 1 + int(k / rate) if rate > 0 else 1
            times.append(self.anchor_dt + timedelta(days=day, hours=rng.uniform(1, 20)))
        times = _unique_seconds(times)
        private = set(rng.sample(range(n), min(n, int(acc.extra.get("private_ids", 0))))) if n else set()
        posts = [self._make_post(acc, rng, i, t, i in private) for i, t in enumerate(times)]
        posts.reverse()
        return posts

    def _make_post(self, acc: Account, rng: random.Random, i: int, t: datetime, private: bool) -> Post:
        p = acc.platform
        if p == "youtube":
            pid = "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=11))
            short = rng.random() < 0.35
            media, dur = ("short", rng.randint(8, 59)) if short else ("video", rng.randint(90, 2400))
        elif p == "tiktok":
            pid = str(7_000_000_000_000_000_000 + rng.randint(0, 10**17) + i)
            media, dur = ("PHOTO", 0) if rng.random() < 0.08 else ("VIDEO", round(rng.uniform(6, 180), 3))
        elif p == "facebook":
            pid = f"{acc.account_id}_{rng.randint(10**14, 10**15 - 1)}"
            media = rng.choice(("photo", "video", "link", "status", "photo", "video"))
            dur = rng.randint(10, 600) if media == "video" else 0
        else:
            pid = str(17_800_000_000_000_000 + rng.randint(0, 10**16) + i)
            media = rng.choice(("IMAGE", "VIDEO", "CAROUSEL_ALBUM", "REELS", "REELS", "IMAGE"))
            dur = rng.randint(6, 90) if media in ("VIDEO", "REELS") else 0
        words = ("launch", "recipe", "behind the scenes", "tips", "live", "unboxing", "challenge", "promo",
                 "Q&A", "tutorial", "news", "collab", "\u00a1oferta!", "día de campo", "🚀 drop")
        title = f"{acc.brand} {rng.choice(words)} #{i + 1}"
        potential = acc.followers_base * 10 ** rng.uniform(-1.3, 0.8)
        return Post(
            post_id=pid, account_id=acc.account_id, platform=p, published_at=t, title=title,
            media_type=media, duration_seconds=float(dur), potential=potential,
            like_rate=rng.uniform(0.02, 0.09), comment_rate=rng.uniform(0.001, 0.01),
            share_rate=rng.uniform(0.001, 0.02), save_rate=rng.uniform(0.001, 0.02),
            reach_rate=rng.uniform(0.6, 0.95), private=private,
        )

    # -- account-level daily metrics ------------------------------------------------------------------
    def daily(self, acc: Account, metric: str, day: date) -> int:
        """Final (settled) value of an account-level daily metric for one day."""
        age = (day - acc.created_at.date()).days
        if age < 0:
            return 0
        base = acc.followers_base
        weekly = 1.0 + 0.15 * math.sin(2 * math.pi * day.toordinal() / 7)
        noise = 0.7 + 0.6 * unit(self.settings.seed, acc.account_id, metric, day.toordinal())
        scale = {
            "views": 0.8, "reach": 0.5, "impressions": 1.1, "profile_views": 0.01, "likes": 0.04,
            "comments": 0.004, "shares": 0.006, "engagements": 0.05, "watch_minutes": 0.9,
            "followers_gained": 0.0015, "followers_lost": 0.0004, "saves": 0.003,
        }[metric]
        return int(base * scale * weekly * noise)

    def followers(self, acc: Account, day: date) -> int:
        """Follower total at the end of ``day``: base + gained − lost, accumulated deterministically."""
        days = max(0, (day - acc.created_at.date()).days)
        growth = acc.followers_base * 0.0011 * days
        wiggle = acc.followers_base * 0.002 * unit(self.settings.seed, acc.account_id, "f", day.toordinal())
        return int(acc.followers_base + growth + wiggle)

    def observed(self, final: int, day: date, at: datetime, settle_days: float = 3.0) -> int:
        """A daily value as reported at ``at``: partial shortly after the day ends, settling later.

        This is how "late-arriving corrections" appear: re-fetching a window returns larger numbers
        for recent days until they settle.
        """
        end = datetime.combine(day + timedelta(days=1), time(0), UTC)
        age_days = (at - end).total_seconds() / 86400
        if age_days >= settle_days:
            return final
        if age_days < 0:
            return 0
        return int(final * (0.85 + 0.15 * age_days / settle_days))


def first_index(items: list[Post], pred: Any) -> int:
    """First index whose item satisfies ``pred``, for a ``pred`` that is False then True along the list."""
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(items[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _unique_seconds(times: list[datetime]) -> list[datetime]:
    """Sorted whole-second instants, one post per second: a tie is pushed to the next free second.

    Clients page TikTok by ``create_time`` seconds (cursor = ms epoch), so two posts in one second could
    be lost between pages; real accounts almost never post twice in a second. Deterministic."""
    out: list[datetime] = []
    prev: datetime | None = None
    one = timedelta(seconds=1)
    for t in sorted(times):
        t = t.replace(microsecond=0)
        if prev is not None and t <= prev:
            t = prev + one
        out.append(t)
        prev = t
    return out
