"""One YouTube channel's sync: discover uploads, snapshot every video, load channel day metrics.

Jobs, in order of priority (discovery first, then the newest work, so a short quota defers the oldest):

1. ``channels.list`` (1 unit): uploads playlist, lifetime subscriber count, public video count.
2. ``playlistItems.list`` newest first (1 unit per 50). Daily runs stop at the first already-known
   video. The first run, ``full_rescan`` and a scan RESUMED after a cut-short one page through the whole
   playlist, but only UNKNOWN ids go to videos.list during the scan (discovery); known ids wait for
   the statistics pass, so a channel whose scan the quota keeps cutting still finishes over a few days.
3. ``videos.list`` (1 unit per 50 ids): details of new videos and statistics of every video in ONE
   pass: new ids first (interleaved with the scan), then known ids newest first.
4. Analytics ``reports.query`` dimensions=video (0 Data units): lifetime totals through
   today − lag, ids grouped by publish date into batches of ``youtube_analytics_batch``.
5. Analytics ``reports.query`` dimensions=day for the look-back window (or a backfill window).

``plan_run`` (called once per run by ``shared.runner``) splits the day's remaining Data API units
across the run's channels from the database alone: discovery of every channel first, then statistics
of known videos, proportionally. All writes of one sync happen in one transaction. A
``QuotaExceededError`` (YouTube's or the planned budget's) stops the Data API work only: what was
fetched is still joined and committed, the rest is reported as deferred. Any other error rolls the
whole sync back. A dry run makes no API call at all: it reports the plan estimated from the database.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pg8000.exceptions import Error as DriverError

from functions.youtube import settings, transform
from functions.youtube.client import YouTubeClient, new_session
from shared.batching import chunked
from shared.db import UpsertResult, transaction, upsert
from shared.errors import FatalApiError, LoadError, QuotaExceededError, SDEError
from shared.joins import index_by, left_join
from shared.registry import Account
from shared.runner import AccountResult, RunContext
from shared.timewindow import DateRange, day_bounds_utc, local_today, lookback, split_range, zone

__all__ = ["Plan", "allocate", "plan_calls", "plan_run", "sync_account"]

logger = logging.getLogger(__name__)

POSTS = "social.posts"
POST_METRICS = "social.post_metrics_daily"
ACCOUNT_METRICS = "social.account_metrics_daily"
#: rows buffered before one upsert (binary COPY); bounds memory on 50,000-video channels
FLUSH_ROWS = 5_000
_PACIFIC = settings.QUOTA_TIMEZONE
#: a channel never synced: its size is unknown until channels.list; plan discovery for this many uploads
FIRST_RUN_VIDEOS_GUESS = 500
#: days of uploads used to estimate a channel's upload rate (new uploads expected per run)
UPLOAD_RATE_DAYS = 28


# --- planning --------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Data API calls (= units) a sync is expected to need; Analytics calls cost no Data units."""

    full_scan: bool
    video_count: int  # public uploads per channels.list (or known posts when unknown)
    known: int
    channels_calls: int = 1
    playlist_calls: int = 0
    videos_calls: int = 0
    analytics_video_calls: int = 0  # ceil(V / 200): one 200-row page per 200 ids (batches of 400)
    analytics_day_calls: int = 1

    @property
    def data_units(self) -> int:
        return self.channels_calls + self.playlist_calls + self.videos_calls

    def as_json(self) -> dict[str, Any]:
        return {"full_scan": self.full_scan, "video_count": self.video_count, "known_videos": self.known,
                "channels.list": self.channels_calls, "playlistItems.list": self.playlist_calls,
                "videos.list": self.videos_calls, "reports.query(video)": self.analytics_video_calls,
                "reports.query(day)": self.analytics_day_calls, "data_units": self.data_units}


def plan_calls(video_count: int, known: int, *, full_scan: bool, analytics_batch: int = 400) -> Plan:
    """The theoretical minimum of calls for a channel with ``video_count`` uploads, ``known`` of them stored.

    full (or resumed) scan: playlistItems ceil(V/50) (at least 1), videos.list ceil(V/50) (one pass)
    daily:      playlistItems ceil((new+1)/50) (up to the first known video), videos.list ceil((known+new)/50)
    analytics:  ceil(V/200) video reports (batches of ``analytics_batch`` ids, 200 rows a page), 1 day report
    """
    new = video_count if full_scan else max(0, video_count - known)
    listed = max(1, video_count) if full_scan else new + 1
    total = video_count if full_scan else known + new
    rows_per_page = min(settings.VIDEO_MAX_RESULTS, analytics_batch)
    return Plan(full_scan=full_scan, video_count=video_count, known=known,
                playlist_calls=max(1, math.ceil(listed / settings.PAGE_SIZE)),
                videos_calls=math.ceil(total / settings.VIDEOS_PER_CALL),
                analytics_video_calls=math.ceil(total / rows_per_page))


@dataclass
class Estimate:
    """What the database says about a channel before any call: the input of the run plan."""

    known: int
    mode: str  # full | resume | incremental
    expected_videos: int  # uploads expected (known + expected new)
    expected_new: int
    discovery_units: int  # channels.list + playlist pages + videos.list of the new ids
    statistics_units: int  # videos.list of the known ids

    def as_json(self) -> dict[str, Any]:
        return {"known_videos": self.known, "mode": self.mode, "expected_videos": self.expected_videos,
                "expected_new": self.expected_new, "discovery_units": self.discovery_units,
                "statistics_units": self.statistics_units}


def estimate(conn: Any, account: Account, now: datetime, *, full_rescan: bool = False) -> Estimate:
    """Estimate a channel's Data API units from the database alone (no call).

    Known videos K cost ceil(K/50) statistics calls. Discovery is channels.list + the playlist pages
    up to the expected new uploads N + ceil(N/50) videos.list; N comes from the channel's recent upload
    rate (at least 1). A resumed or full scan re-pages the whole playlist (size from the last plan).
    """
    aid = account.account_id
    rows = conn.run(
        "SELECT count(*), count(*) FILTER (WHERE published_at >= :since),"
        " (SELECT max(snapshot_date) FROM social.post_metrics_daily WHERE platform = :p AND account_id = :a)"
        " FROM social.posts WHERE platform = :p AND account_id = :a",
        p=settings.PLATFORM, a=aid, since=now - timedelta(days=UPLOAD_RATE_DAYS))
    known, recent, last_snapshot = int(rows[0][0]), int(rows[0][1]), rows[0][2]
    partial = _last_scan_partial(conn, aid)
    last_count = _last_video_count(conn, aid)
    today = local_today(account.timezone, now)
    gap = max(1, (today - last_snapshot).days) if last_snapshot else 1
    per_page = settings.PAGE_SIZE
    if known == 0 or full_rescan or partial:
        mode = "full" if known == 0 or full_rescan else "resume"
        videos = max(known, last_count if last_count is not None else (known or FIRST_RUN_VIDEOS_GUESS))
        new = max(0, videos - known)
        discovery = 1 + max(1, math.ceil(videos / per_page)) + math.ceil(new / per_page)
    else:
        mode = "incremental"
        new = max(1, math.ceil(recent / UPLOAD_RATE_DAYS * gap))
        videos = known + new
        discovery = 1 + math.ceil((new + 1) / per_page) + math.ceil(new / per_page)
    return Estimate(known=known, mode=mode, expected_videos=videos, expected_new=new, discovery_units=discovery,
                    statistics_units=math.ceil(known / settings.VIDEOS_PER_CALL))


def allocate(budget: int, costs: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Split ``budget`` units across channels given (discovery, statistics) units per channel.

    Everything fits: each gets its cost plus a proportional share of the slack (estimates are estimates).
    Otherwise discovery + new videos of EVERY channel first, then statistics of known videos
    proportionally to each channel's statistics cost; when even discovery does not fit, discovery
    proportionally. Integer shares; the remainder goes to the channels in order. Never more than ``budget``.
    """
    ids = list(costs)
    if not ids:
        return {}
    budget = max(0, budget)
    disc = {a: costs[a][0] for a in ids}
    stat = {a: costs[a][1] for a in ids}
    total_d, total_s = sum(disc.values()), sum(stat.values())

    def share(amount: int, weights: dict[str, int]) -> dict[str, int]:
        total = sum(weights.values())
        if amount <= 0:
            return dict.fromkeys(ids, 0)
        if total <= 0:
            weights, total = dict.fromkeys(ids, 1), len(ids)
        out = {a: amount * weights[a] // total for a in ids}
        left = amount - sum(out.values())
        for a in sorted(ids, key=lambda x: -weights[x]):
            if left <= 0:
                break
            out[a] += 1
            left -= 1
        return out

    if total_d + total_s <= budget:
        cost = {a: disc[a] + stat[a] for a in ids}
        extra = share(budget - total_d - total_s, cost)
        return {a: cost[a] + extra[a] for a in ids}
    if total_d <= budget:
        extra = share(budget - total_d, stat)
        return {a: disc[a] + extra[a] for a in ids}
    return share(budget, disc)


def plan_run(ctx: RunContext, accounts: list[Account]) -> dict[str, Any]:
    """The run-level plan (``shared.runner`` hook): every channel's allocation of today's remaining units.

    A backfill window costs no Data API unit: nothing to plan.
    """
    if ctx.request.window is not None or not accounts:
        return {}
    conn = ctx.conn
    remaining = max(0, ctx.config.youtube_daily_quota - units_used_today(conn, ctx.now))
    full_rescan = bool(ctx.request.options.get("full_rescan"))
    estimates = {a.account_id: estimate(conn, a, ctx.now, full_rescan=full_rescan) for a in accounts}
    units = allocate(remaining, {a: (e.discovery_units, e.statistics_units) for a, e in estimates.items()})
    order = [a.account_id for a in accounts]
    out: dict[str, Any] = {}
    for i, aid in enumerate(order):
        out[aid] = {"units": units[aid], "reserve_after": sum(units[x] for x in order[i + 1:]),
                    "budget_at_plan": remaining, **estimates[aid].as_json()}
    needed = sum(e.discovery_units + e.statistics_units for e in estimates.values())
    if needed > remaining:
        logger.warning("quota short for this run: ~%d units needed, %d left today; discovery first, then "
                       "statistics of known videos newest first", needed, remaining,
                       extra={"fields": {"needed_units": needed, "remaining_units": remaining}})
    return out


# --- state read from the warehouse -----------------------------------------------------------------


def _known_posts(conn: Any, account_id: str) -> dict[str, datetime | None]:
    rows = conn.run("SELECT post_id, published_at FROM social.posts WHERE platform = :p AND account_id = :a",
                    p=settings.PLATFORM, a=account_id)
    return {r[0]: r[1] for r in rows}


def _last_scan_state(conn: Any, account_id: str) -> tuple[str | None, dict[str, Any] | None]:
    """(``playlist_scan`` of the latest sync that recorded one, its ``playlist_resume`` point or None)."""
    rows = conn.run(
        "SELECT details->>'playlist_scan', details->'playlist_resume' FROM social.sync_runs WHERE function = :f"
        " AND platform = :p AND account_id = :a AND details ? 'playlist_scan' ORDER BY started_at DESC LIMIT 1",
        f=settings.FUNCTION, p=settings.PLATFORM, a=account_id)
    if not rows:
        return None, None
    resume = rows[0][1]
    return rows[0][0], resume if isinstance(resume, dict) else None


def _last_scan_partial(conn: Any, account_id: str) -> bool:
    """True when the latest recorded uploads scan of this channel was cut short (quota/budget)."""
    return _last_scan_state(conn, account_id)[0] == "partial"


def _last_video_count(conn: Any, account_id: str) -> int | None:
    """The channel's public video count as of its latest recorded sync (channels.list), if any."""
    rows = conn.run(
        "SELECT details->'plan'->>'video_count' FROM social.sync_runs WHERE function = :f AND platform = :p"
        " AND account_id = :a AND details->'plan' ? 'video_count' ORDER BY started_at DESC LIMIT 1",
        f=settings.FUNCTION, p=settings.PLATFORM, a=account_id)
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def units_used_today(conn: Any, now: datetime) -> int:
    """Data API units this project's youtube_sync runs recorded since midnight Pacific (the quota day)."""
    since, _ = day_bounds_utc(local_today(_PACIFIC, now), _PACIFIC)
    rows = conn.run("SELECT COALESCE(SUM(quota_units), 0) FROM social.sync_runs WHERE function = :f"
                    " AND started_at >= :since", f=settings.FUNCTION, since=since)
    return int(rows[0][0])


# --- the sync --------------------------------------------------------------------------------------


@dataclass
class _Counts:
    posts: UpsertResult = field(default_factory=lambda: UpsertResult(0, 0, 0))
    post_metrics: UpsertResult = field(default_factory=lambda: UpsertResult(0, 0, 0))
    account_metrics: UpsertResult = field(default_factory=lambda: UpsertResult(0, 0, 0))

    def total(self) -> UpsertResult:
        return self.posts + self.post_metrics + self.account_metrics


class _Buffer:
    """Rows for one table, upserted every FLUSH_ROWS rows (inside the caller's transaction)."""

    def __init__(self, conn: Any, table: str, key: tuple[str, ...]) -> None:
        self.conn, self.table, self.key = conn, table, key
        self.rows: list[dict[str, Any]] = []
        self.result = UpsertResult(0, 0, 0)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.result = self.result + upsert(self.conn, self.table, self.rows, self.key)
            self.rows = []


def sync_account(ctx: RunContext, account: Account) -> AccountResult:
    """Sync one channel (see the module docstring); the runner times it and records the ledger row."""
    session = new_session(ctx.config)
    session.deadline = ctx.deadline
    result = AccountResult()
    client = YouTubeClient(ctx.config, tokens=ctx.tokens, credential=account.secret,
                           account_id=account.account_id, session=session)
    try:
        if ctx.request.window is not None:
            _backfill(ctx, account, client, result, ctx.request.window)
        else:
            _daily(ctx, account, client, result)
    except SDEError as exc:
        _count(result, session)
        result.details.pop("playlist_scan", None)  # rolled back: the previous scan state still holds
        exc.partial_result = result  # type: ignore[attr-defined]  # the runner keeps calls/units of failures
        raise
    except (DriverError, ConnectionError) as exc:
        # a raw driver error outside transaction() (pg8000 lets a dropped connection's socket error through)
        _count(result, session)
        result.details.pop("playlist_scan", None)
        load = LoadError(f"database error during the sync: {type(exc).__name__}: {exc}")
        load.partial_result = result  # type: ignore[attr-defined]
        raise load from exc
    _count(result, session)
    return result


def _count(result: AccountResult, session: Any) -> None:
    snap = session.counter.snapshot()
    result.api_calls = snap["calls"]
    result.quota_units = snap["units"]
    result.details["calls"] = snap["by_endpoint"]


def _backfill(ctx: RunContext, account: Account, client: YouTubeClient, result: AccountResult,
              window: DateRange) -> None:
    """A manual window: channel day metrics only (post snapshots are always "today"); 0 Data API units."""
    chunks = split_range(window.start, window.end, settings.DAY_CHUNK_DAYS)
    result.window_start, result.window_end = window.start, window.end
    result.details["plan"] = {"reports.query(day)": len(chunks), "data_units": 0}
    if ctx.dry_run:
        result.details["dry_run"] = True
        return
    with transaction(ctx.conn):
        buf = _Buffer(ctx.conn, ACCOUNT_METRICS, ("platform", "account_id", "metric_date"))
        for chunk in chunks:
            for rec in client.day_series(chunk.start.isoformat(), chunk.end.isoformat()):
                row = transform.day_metric_row(rec, account.account_id)
                if row is not None:
                    buf.add(row)
        buf.flush()
    result.add_counts(buf.result.inserted, buf.result.updated, buf.result.unchanged)
    result.details["rows"] = {"account_metrics_daily": _json(buf.result)}


def _budget(ctx: RunContext, account: Account) -> tuple[int, dict[str, Any] | None]:
    """Units this channel may spend now: today's remaining units minus what the run plan reserved for the
    channels after it (so units an earlier channel did not use carry over to the next one)."""
    remaining = max(0, ctx.config.youtube_daily_quota - units_used_today(ctx.conn, ctx.now))
    alloc = ctx.allocations.get(account.account_id)
    if not isinstance(alloc, dict):
        return remaining, None
    return max(0, remaining - int(alloc.get("reserve_after", 0))), alloc


def _dry_run(ctx: RunContext, account: Account, result: AccountResult, budget: int,
             alloc: dict[str, Any] | None) -> None:
    """The plan from the database alone: no API call, no quota spent, nothing written."""
    est = estimate(ctx.conn, account, ctx.now, full_rescan=bool(ctx.request.options.get("full_rescan")))
    plan = plan_calls(est.expected_videos, est.known, full_scan=est.mode != "incremental",
                      analytics_batch=ctx.config.youtube_analytics_batch)
    short = max(0, plan.data_units - budget)
    result.details.update(dry_run=True, plan={**plan.as_json(), "estimated_from": "database"},
                          estimate=est.as_json(), budget_units=budget, allocation=alloc,
                          would_defer_videos=min(short * settings.VIDEOS_PER_CALL, est.expected_videos))


def _daily(ctx: RunContext, account: Account, client: YouTubeClient, result: AccountResult) -> None:
    cfg, conn = ctx.config, ctx.conn
    today = local_today(account.timezone, ctx.now)
    through = today - timedelta(days=cfg.youtube_lag_days)
    window = lookback(today - timedelta(days=1), max(1, cfg.youtube_lookback_days))
    result.window_start, result.window_end = window.start, window.end
    budget, alloc = _budget(ctx, account)
    details = result.details
    details.update(snapshot_date=today.isoformat(), analytics_through=through.isoformat(), budget_units=budget)
    if alloc is not None:
        details["allocation"] = {k: alloc[k] for k in ("units", "discovery_units", "statistics_units") if k in alloc}
    if ctx.dry_run:
        _dry_run(ctx, account, result, budget, alloc)
        return
    client.budget.allow(budget)
    deferral: QuotaExceededError | None = None

    # 1. the channel ------------------------------------------------------------------------------
    info: transform.ChannelInfo | None = None
    try:
        item = client.channel()
        if item is None:
            raise FatalApiError(f"channel {account.account_id} not found", platform=settings.PLATFORM,
                                endpoint="channels.list")
        info = transform.channel_info(item)
    except QuotaExceededError as exc:
        deferral = exc
    known = _known_posts(conn, account.account_id)
    scan_state, resume = _last_scan_state(conn, account.account_id)
    if bool(ctx.request.options.get("full_rescan")) or not known:
        mode, resume = "full", None
    elif scan_state == "partial":
        mode = "resume"
    else:
        mode, resume = "incremental", None
    video_count = (info["video_count"] or 0) if info is not None else len(known)
    plan = plan_calls(video_count, len(known), full_scan=mode != "incremental",
                      analytics_batch=cfg.youtube_analytics_batch)
    details["plan"] = {**plan.as_json(), "mode": mode}
    if plan.data_units > budget:
        logger.warning("quota budget short: plan %d units, %d for this channel; oldest videos' statistics "
                       "will be deferred", plan.data_units, budget)

    with transaction(conn):
        posts = _Buffer(conn, POSTS, ("platform", "post_id"))
        stats: dict[str, tuple[int | None, int | None, int | None]] = {}
        published: dict[str, datetime | None] = dict(known)
        progress = _Progress()
        if info is not None and deferral is None:
            try:
                _fetch_videos(client, account, info, known, mode, resume, posts, stats, published, progress)
            except QuotaExceededError as exc:
                deferral = exc
            details["playlist_scan"] = progress.scan_state(mode)
            if details["playlist_scan"] == "partial":
                details["playlist_resume"] = progress.resume_record(mode, resume)
        posts.flush()

        metrics = _Buffer(conn, POST_METRICS, ("platform", "post_id", "snapshot_date"))
        analytics_stats = _post_metrics(client, account.account_id, today, through, published, stats, metrics,
                                        cfg.youtube_analytics_batch)
        metrics.flush()

        acct = _Buffer(conn, ACCOUNT_METRICS, ("platform", "account_id", "metric_date"))
        for rec in client.day_series(window.start.isoformat(), window.end.isoformat()):
            row = transform.day_metric_row(rec, account.account_id)
            if row is not None:
                acct.add(row)
        acct.flush()
        followers = UpsertResult(0, 0, 0)
        if info is not None and info["subscribers"] is not None:
            followers = upsert(conn, ACCOUNT_METRICS, [transform.followers_row(account.account_id, today,
                                                                               info["subscribers"])],
                               ("platform", "account_id", "metric_date"))

    counts = _Counts(posts.result, metrics.result, acct.result + followers)
    total = counts.total()
    result.add_counts(total.inserted, total.updated, total.unchanged)
    details["rows"] = {"posts": _json(counts.posts), "post_metrics_daily": _json(counts.post_metrics),
                       "account_metrics_daily": _json(counts.account_metrics)}
    details["videos"] = {"known_before": len(known), "new": posts.result.inserted, "discovered": progress.scanned,
                         "with_statistics": len(stats), **analytics_stats}
    if deferral is not None:
        details["deferred"] = {"reason": deferral.code or "quotaExceeded", "endpoint": deferral.endpoint,
                               "videos_without_statistics": max(0, progress.queued - len(stats)),
                               "playlist_scan": details.get("playlist_scan")}
        result.status = "deferred"
        result.error_class = deferral.error_class
        result.error_message = str(deferral)


#: a resume point that stays what it was (the cut happened among the newest uploads, above it)
_KEEP = "keep"


@dataclass
class _Progress:
    """How far the Data API work got: tells a complete scan from one cut short, and where to resume."""

    scan_finished: bool = False
    scanned: int = 0  # unknown ids found by the scan (queued first: discovery)
    queued: int = 0  # ids queued for videos.list
    fetched: int = 0  # ids sent in a successful videos.list call
    discovered_fetched: int = 0  # unknown ids sent in a successful videos.list call (in scan order)
    #: per scanned page: (token it was requested with | _KEEP, unknown ids before it, unknown ids in it)
    marks: list[tuple[str | None, int, int]] = field(default_factory=list)
    next_token: str | None = None  # the page the scan would request next
    next_keep: bool = False  # ... and it belongs to the newest-uploads pass of a resumed scan

    def scan_state(self, mode: str) -> str:
        """complete | incremental | partial: partial when the scan, or the videos.list of the unknown ids
        it found, was cut short; the next run then RESUMES from ``resume_record``."""
        if not self.scan_finished or self.discovered_fetched < self.scanned:
            return "partial"
        return "incremental" if mode == "incremental" else "complete"

    def resume_point(self) -> str | None:
        """Token of the first page holding an unknown id not stored yet (else of the page not yet
        requested); None = from the top; ``_KEEP`` = the previous resume point still holds."""
        for token, before, count in self.marks:
            if before + count > self.discovered_fetched:
                return token
        return _KEEP if self.next_keep else self.next_token

    def resume_record(self, mode: str, previous: dict[str, Any] | None) -> dict[str, Any] | None:
        point = self.resume_point()
        if point == _KEEP:
            return previous
        kind = (previous or {}).get("scan", "full") if mode == "resume" else (
            "incremental" if mode == "incremental" else "full")
        return {"page_token": point, "scan": kind}


def _ingest_videos(items: Iterable[Mapping[str, Any]], account_id: str, posts: Any,
                   stats: dict[str, tuple[int | None, int | None, int | None]],
                   published: dict[str, datetime | None]) -> None:
    """videos.list items → ``social.posts`` rows (into ``posts``), the statistics map and publish times."""
    for item in items:
        row = transform.post_row(item, account_id)
        if row is None:
            continue
        posts.add(row)
        stats[row["post_id"]] = transform.video_stats(item)
        published[row["post_id"]] = row["published_at"]


def _fetch_videos(client: YouTubeClient, account: Account, info: transform.ChannelInfo,
                  known: dict[str, datetime | None], mode: str, resume: dict[str, Any] | None, posts: _Buffer,
                  stats: dict[str, tuple[int | None, int | None, int | None]],
                  published: dict[str, datetime | None], progress: _Progress) -> None:
    """Scan uploads, sending UNKNOWN ids to videos.list as they are found, then known ids newest first.

    ``mode``: incremental (from the top, stop at the first known video); full (the whole playlist, known
    ids skipped during the scan; those it no longer lists are gone); resume (a scan cut short earlier:
    the newest uploads down to the first known video, then from the recorded ``resume`` page token
    onwards: to the end after a full scan, down to the known videos after an incremental one; without a
    recorded token, the whole playlist with known ids skipped). A scan stops by itself when the budget
    can no longer pay for a page AND the videos.list of its ids. Raises QuotaExceededError when the budget
    or the API quota runs out; everything fetched before is in ``posts``/``stats``/``published`` and
    ``progress`` says how far it got and where to resume.
    """
    pending: list[str] = []
    discovery = 0  # how many of the pending ids are unknown (they are always at the front)

    def fetch(ids: list[str], unknown: int) -> None:
        items = client.videos(ids)
        progress.fetched += len(ids)
        progress.discovered_fetched += unknown
        _ingest_videos(items, account.account_id, posts, stats, published)

    def flush() -> None:
        nonlocal discovery
        if pending:
            fetch(pending[:], discovery)
            pending.clear()
            discovery = 0

    def enqueue(ids: Iterable[str], *, unknown: bool) -> None:
        nonlocal discovery
        for vid in ids:
            pending.append(vid)
            progress.queued += 1
            discovery += unknown
            if len(pending) == settings.VIDEOS_PER_CALL:
                flush()

    listed: set[str] = set()
    listed_known: list[str] = []

    def scan(start: str | None, *, stop: str, keep: bool) -> None:
        """stop: first_known | after_unknown (first known after an unknown, or a page of known only) | never"""
        progress.next_token, progress.next_keep = start, keep
        seen_unknown = False
        for page in client.upload_pages(playlist, start):
            fresh: list[str] = []
            halt = False
            for ref in page:
                vid = ref.video_id
                if vid in known:
                    if stop == "first_known" or (stop == "after_unknown" and seen_unknown):
                        halt = True
                        break
                    if vid not in listed:
                        listed.add(vid)
                        listed_known.append(vid)
                elif vid not in listed:
                    listed.add(vid)
                    fresh.append(vid)
                    seen_unknown = True
            progress.marks.append((_KEEP if keep else page.token, progress.scanned, len(fresh)))
            progress.scanned += len(fresh)
            progress.next_token = page.next_token
            enqueue(fresh, unknown=True)
            if halt or (stop == "after_unknown" and not fresh):
                return
            left = client.budget.remaining
            if page.next_token and left is not None and left < 2:
                # another page could not be followed by the videos.list of its ids: store what was
                # found with the last unit and stop here (the next run resumes at next_token)
                if left:
                    flush()
                raise QuotaExceededError("planned daily budget too small for another uploads page and its "
                                         "videos; scan resumes next run", platform=settings.PLATFORM,
                                         code="planned_budget", endpoint="playlistItems.list")

    playlist = info["uploads_playlist"]
    if playlist:
        try:
            if mode == "incremental":
                scan(None, stop="first_known", keep=False)
            elif mode == "resume" and resume and resume.get("page_token"):
                scan(None, stop="first_known", keep=True)  # the newest uploads, above the resume point
                try:
                    scan(resume["page_token"], stop="after_unknown" if resume.get("scan") == "incremental"
                         else "never", keep=False)
                except FatalApiError as exc:
                    if exc.code != "invalidPageToken" or progress.next_token != resume["page_token"]:
                        raise
                    logger.warning("stored resume token rejected; rescanning the whole playlist")
                    scan(None, stop="never", keep=False)
            else:
                scan(None, stop="never", keep=False)
        except QuotaExceededError:
            raise
        except FatalApiError as exc:
            # a channel without uploads has no uploads playlist: YouTube answers 404 playlistNotFound
            if not (not progress.marks and exc.status == 404 and exc.code in settings.EMPTY_PLAYLIST_REASONS
                    and info["video_count"] == 0):
                raise
            logger.info("uploads playlist %s not found and videoCount is 0: no uploads", playlist)
    progress.scan_finished = True
    # known videos, newest first: after a complete full scan only those it listed (the others were
    # deleted or made private: videos.list would omit them); otherwise every known video
    rest = listed_known if mode == "full" else list(known)
    rest.sort(key=lambda v: _sort_key(known[v]), reverse=True)
    enqueue(rest, unknown=False)
    flush()


def _sort_key(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else float("-inf")


def _pacific_date(dt: datetime) -> date:
    return dt.astimezone(zone(_PACIFIC)).date()


def _post_metrics(client: Any, account_id: str, today: date, through: date,
                  published: Mapping[str, datetime | None],
                  stats: Mapping[str, tuple[int | None, int | None, int | None]],
                  out: Any, batch_size: int) -> dict[str, int]:
    """Join Analytics totals (per batch) and Data API statistics (one dict) into one row per video.

    Analytics days are Pacific-time days: a batch starts at its earliest video's Pacific publish date.
    Videos published after ``through``, and videos whose publish date is unknown, are not queried; they
    still get a row with their Data API counts (analytics columns NULL). ``client`` needs only
    ``video_totals(ids, start, end)``; ``out`` only ``add(row)``.
    """
    eligible: list[tuple[date, str]] = []
    late: list[str] = []
    for vid, at in published.items():
        day = _pacific_date(at) if at is not None else None
        if day is not None and day <= through:
            eligible.append((day, vid))
        else:
            late.append(vid)
    eligible.sort()
    counters = {"with_analytics": 0, "without_analytics": 0, "unavailable": 0, "analytics_deferred": 0,
                "publish_date_unknown": sum(1 for v in late if published[v] is None)}
    quota_hit = False

    def emit(rows: Iterator[dict[str, Any]]) -> None:
        for joined in rows:
            vid = joined["video"]
            analytics = joined if "views" in joined else None
            st = stats.get(vid)
            if analytics is None and st is None:
                counters["unavailable"] += 1  # private/deleted since, and no analytics: nothing to say
                continue
            counters["with_analytics" if analytics else "without_analytics"] += 1
            out.add(transform.post_metric_row(vid, account_id, today, through, analytics, st))

    for batch in chunked(eligible, batch_size):
        ids = [vid for _, vid in batch]
        records: list[dict[str, Any]] = []
        if not quota_hit:
            try:
                records = client.video_totals(ids, batch[0][0].isoformat(), through.isoformat())
            except QuotaExceededError:
                quota_hit = True
        if quota_hit:
            counters["analytics_deferred"] += len(ids)
        index = index_by(transform.unique_records(records, "video"), "video")
        emit(left_join(({"video": vid} for vid in ids), index, on="video"))
    emit({"video": vid} for vid in late)
    return counters


def _json(r: UpsertResult) -> dict[str, int]:
    return {"inserted": r.inserted, "updated": r.updated, "unchanged": r.unchanged}
