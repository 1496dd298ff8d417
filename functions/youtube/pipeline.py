"""One YouTube channel's sync: discover uploads, snapshot every video, load channel day metrics.

Jobs, in order of priority (newest work first, so a short quota defers the oldest work):

1. ``channels.list`` (1 unit): uploads playlist, lifetime subscriber count, public video count.
2. ``playlistItems.list`` newest first (1 unit per 50), stopping at the first already-known video on
   daily runs (full scan on the first run, after an interrupted scan, or with ``full_rescan``).
3. ``videos.list`` (1 unit per 50 ids): details of new videos and statistics of every video in ONE
   pass: new ids first (interleaved with the scan), then known ids newest first.
4. Analytics ``reports.query`` dimensions=video (0 Data units): lifetime totals through
   today − lag, ids grouped by publish date into batches of ``youtube_analytics_batch``.
5. Analytics ``reports.query`` dimensions=day for the look-back window (or a backfill window).

All writes of one sync happen in one transaction. A ``QuotaExceededError`` (YouTube's or our planned
budget's) stops the Data API work only: what was fetched is still joined and committed, the rest is
reported as deferred. Any other error rolls the whole sync back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from functions.youtube import settings, transform
from functions.youtube.client import QuotaBudget, YouTubeClient, new_session
from shared.batching import chunked
from shared.db import UpsertResult, transaction, upsert
from shared.errors import FatalApiError, QuotaExceededError, SDEError
from shared.joins import index_by, left_join
from shared.registry import Account
from shared.runner import AccountResult, RunContext
from shared.timewindow import DateRange, day_bounds_utc, local_today, lookback, split_range, zone

__all__ = ["Plan", "plan_calls", "sync_account"]

logger = logging.getLogger(__name__)

POSTS = "social.posts"
POST_METRICS = "social.post_metrics_daily"
ACCOUNT_METRICS = "social.account_metrics_daily"
#: rows buffered before one upsert (binary COPY); bounds memory on 50,000-video channels
FLUSH_ROWS = 5_000
_PACIFIC = settings.QUOTA_TIMEZONE


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
    analytics_video_calls: int = 0  # lower bound: ceil(V / batch); + startIndex pages
    analytics_day_calls: int = 1

    @property
    def data_units(self) -> int:
        return self.channels_calls + self.playlist_calls + self.videos_calls

    def as_json(self) -> dict[str, Any]:
        return {"full_scan": self.full_scan, "video_count": self.video_count, "known_videos": self.known,
                "channels.list": self.channels_calls, "playlistItems.list": self.playlist_calls,
                "videos.list": self.videos_calls, "reports.query(video)": self.analytics_video_calls,
                "reports.query(day)": self.analytics_day_calls, "data_units": self.data_units}


def plan_calls(video_count: int, known: int, *, full_scan: bool, analytics_batch: int = 500) -> Plan:
    """The theoretical minimum of calls for a channel with ``video_count`` uploads, ``known`` of them stored.

    full scan:  playlistItems ceil(V/50) (at least 1), videos.list ceil(V/50) (details + stats, one pass)
    daily:      playlistItems ceil((new+1)/50) (up to the first known video), videos.list ceil((known+new)/50)
    analytics:  ceil(V/batch) video reports (+1 per extra 200-row page), 1 day report per window chunk
    """
    new = video_count if full_scan else max(0, video_count - known)
    listed = max(1, video_count) if full_scan else new + 1
    total = video_count if full_scan else known + new
    return Plan(full_scan=full_scan, video_count=video_count, known=known,
                playlist_calls=max(1, math.ceil(listed / settings.PAGE_SIZE)),
                videos_calls=math.ceil(total / settings.VIDEOS_PER_CALL),
                analytics_video_calls=math.ceil(total / analytics_batch))


# --- state read from the warehouse -----------------------------------------------------------------


def _known_posts(conn: Any, account_id: str) -> dict[str, datetime | None]:
    rows = conn.run("SELECT post_id, published_at FROM social.posts WHERE platform = :p AND account_id = :a",
                    p=settings.PLATFORM, a=account_id)
    return {r[0]: r[1] for r in rows}


def _last_scan_partial(conn: Any, account_id: str) -> bool:
    """True when the latest recorded uploads scan of this channel was cut short (quota/budget)."""
    rows = conn.run(
        "SELECT details->>'playlist_scan' FROM social.sync_runs WHERE function = :f AND platform = :p"
        " AND account_id = :a AND details ? 'playlist_scan' ORDER BY started_at DESC LIMIT 1",
        f=settings.FUNCTION, p=settings.PLATFORM, a=account_id)
    return bool(rows) and rows[0][0] == "partial"


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
        exc.partial_result = result  # type: ignore[attr-defined]  # the runner keeps calls/units of failures
        raise
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


def _daily(ctx: RunContext, account: Account, client: YouTubeClient, result: AccountResult) -> None:
    cfg, conn = ctx.config, ctx.conn
    today = local_today(account.timezone, ctx.now)
    through = today - timedelta(days=cfg.youtube_lag_days)
    window = lookback(today - timedelta(days=1), max(1, cfg.youtube_lookback_days))
    result.window_start, result.window_end = window.start, window.end
    known = _known_posts(conn, account.account_id)
    full = bool(ctx.request.options.get("full_rescan")) or not known or _last_scan_partial(conn, account.account_id)
    remaining = max(0, cfg.youtube_daily_quota - units_used_today(conn, ctx.now))
    client.budget = QuotaBudget(remaining)
    details = result.details
    details.update(snapshot_date=today.isoformat(), analytics_through=through.isoformat(),
                   budget_units=remaining)
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
    video_count = (info["video_count"] or 0) if info is not None else len(known)
    plan = plan_calls(video_count, len(known), full_scan=full, analytics_batch=cfg.youtube_analytics_batch)
    details["plan"] = plan.as_json()
    expected_deferred = max(0, plan.data_units - remaining) * settings.VIDEOS_PER_CALL
    if plan.data_units > remaining:
        logger.warning("quota budget short: plan %d units, %d left today; oldest videos will be deferred",
                       plan.data_units, remaining)
    if ctx.dry_run:
        details.update(dry_run=True, would_defer_videos=min(expected_deferred, plan.video_count))
        return

    with transaction(conn):
        posts = _Buffer(conn, POSTS, ("platform", "post_id"))
        stats: dict[str, tuple[int | None, int | None, int | None]] = {}
        published: dict[str, datetime | None] = dict(known)
        progress = _Progress()
        if info is not None and deferral is None:
            try:
                _fetch_videos(client, account, info, known, full, posts, stats, published, progress)
            except QuotaExceededError as exc:
                deferral = exc
            details["playlist_scan"] = progress.scan_state(full)
        posts.flush()

        metrics = _Buffer(conn, POST_METRICS, ("platform", "post_id", "snapshot_date"))
        analytics_stats = _post_metrics(client, account, today, through, published, stats, metrics,
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
    details["videos"] = {"known_before": len(known), "new": posts.result.inserted, "with_statistics": len(stats),
                         **analytics_stats}
    if deferral is not None:
        with_stats = len(stats)
        details["deferred"] = {"reason": deferral.code or "quotaExceeded", "endpoint": deferral.endpoint,
                               "videos_without_statistics": max(0, progress.queued - with_stats),
                               "playlist_scan": details.get("playlist_scan")}
        result.status = "deferred"
        result.error_class = deferral.error_class
        result.error_message = str(deferral)


@dataclass
class _Progress:
    """How far the Data API work got (to tell a complete scan from one cut short by the quota)."""

    scan_finished: bool = False
    scanned: int = 0  # ids found by the scan (queued first)
    queued: int = 0  # ids queued for videos.list
    fetched: int = 0  # ids sent in a successful videos.list call

    def scan_state(self, full: bool) -> str:
        """complete | incremental | partial: partial when new uploads were found but not all stored,
        so the next run must scan everything again (an incremental scan would stop above them)."""
        if not self.scan_finished or self.fetched < self.scanned:
            return "partial"
        return "complete" if full else "incremental"


def _fetch_videos(client: YouTubeClient, account: Account, info: transform.ChannelInfo,
                  known: dict[str, datetime | None], full: bool, posts: _Buffer,
                  stats: dict[str, tuple[int | None, int | None, int | None]],
                  published: dict[str, datetime | None], progress: _Progress) -> None:
    """Scan uploads and run videos.list over new ids (as they are found) then known ids, newest first.

    Raises QuotaExceededError when the budget or the API quota runs out; everything fetched before is
    already in ``posts``/``stats``/``published`` and ``progress`` says how far it got.
    """
    pending: list[str] = []

    def fetch(ids: list[str]) -> None:
        items = client.videos(ids)
        progress.fetched += len(ids)
        for item in items:
            row = transform.post_row(item, account.account_id)
            if row is None:
                continue
            posts.add(row)
            stats[row["post_id"]] = transform.video_stats(item)
            published[row["post_id"]] = row["published_at"]

    def enqueue(ids: Iterable[str]) -> None:
        for vid in ids:
            pending.append(vid)
            progress.queued += 1
            if len(pending) == settings.VIDEOS_PER_CALL:
                fetch(pending[:])
                pending.clear()

    listed: set[str] = set()
    playlist = info["uploads_playlist"]
    if playlist:
        stopped = False
        for refs in client.upload_pages(playlist):
            fresh = []
            for ref in refs:
                if not full and ref.video_id in known:
                    stopped = True
                    break
                if ref.video_id not in listed:
                    listed.add(ref.video_id)
                    fresh.append(ref.video_id)
            progress.scanned += len(fresh)
            enqueue(fresh)
            if stopped:
                break
    progress.scan_finished = True
    # known videos not seen in the scan, newest first (on a full scan, unlisted ones are gone: skip them)
    if not full:
        rest = [vid for vid in known if vid not in listed]
        rest.sort(key=lambda v: _sort_key(known[v]), reverse=True)
        enqueue(rest)
    if pending:
        fetch(pending[:])
        pending.clear()


def _sort_key(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else float("-inf")


def _pacific_date(dt: datetime) -> date:
    return dt.astimezone(zone(_PACIFIC)).date()


def _post_metrics(client: YouTubeClient, account: Account, today: date, through: date,
                  published: dict[str, datetime | None],
                  stats: dict[str, tuple[int | None, int | None, int | None]],
                  out: _Buffer, batch_size: int) -> dict[str, int]:
    """Join Analytics totals (per batch) and Data API statistics (one dict) into one row per video.

    Analytics days are Pacific-time days: a batch starts at its earliest video's Pacific publish date.
    Videos published after ``through`` are not queried (nothing is consolidated yet).
    """
    eligible: list[tuple[date, str]] = []
    late: list[str] = []
    for vid, at in published.items():
        if at is None:
            continue
        day = _pacific_date(at)
        if day <= through:
            eligible.append((day, vid))
        else:
            late.append(vid)
    eligible.sort()
    counters = {"with_analytics": 0, "without_analytics": 0, "unavailable": 0, "analytics_deferred": 0}
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
            out.add(transform.post_metric_row(vid, account.account_id, today, through, analytics, st))

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
        index = index_by(records, "video")
        emit(left_join(({"video": vid} for vid in ids), index, on="video"))
    emit({"video": vid} for vid in late)
    return counters


def _json(r: UpsertResult) -> dict[str, int]:
    return {"inserted": r.inserted, "updated": r.updated, "unchanged": r.unchanged}
