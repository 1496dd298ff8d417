"""All YouTube HTTP: Data API v3 list calls and Analytics v2 ``reports.query``, with tokens and quota.

Every call goes through ``shared.auth.call_with_token`` (a rejected token is refreshed once, under a
lock, and the call retried once) and ``shared.http.ApiSession`` (classified retries, counters).
Errors are classified by HTTP status plus ``error.errors[].reason`` (tables in ``settings.py``), never
by message text. The session's counter is a ``QuotaBudget``: every ATTEMPT (first try, backoff retries,
the retry after a refreshed token) is charged before it goes out, and when the planned budget cannot
pay for it the client raises ``QuotaExceededError`` itself instead of overspending or letting YouTube
refuse a call mid-way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import requests

from functions.youtube import settings
from functions.youtube.transform import VideoRef, playlist_refs, report_records, unique_records
from shared.auth import call_with_token, raise_if_token_rejected
from shared.config import Config
from shared.errors import AuthError, FatalApiError, QuotaExceededError, RetriableApiError
from shared.http import ApiSession, CallCounter, shared_transport
from shared.pagination import paginate_page_token

__all__ = ["CachedTokens", "QuotaBudget", "UploadPage", "YouTubeClient", "classify", "new_session", "quota_cost"]

logger = logging.getLogger(__name__)

def quota_cost(method: str, endpoint: str) -> int:
    """Data API units of one call (every attempt counts, invalid requests included)."""
    return settings.UNITS.get(endpoint, 0)


def new_session(config: Config, budget: QuotaBudget | None = None) -> ApiSession:
    """An ApiSession whose counter is a (per account) ``QuotaBudget``, over the instance's pooled connections."""
    session = ApiSession(settings.PLATFORM, config, classify=classify, quota_cost=quota_cost,
                         transport=shared_transport())
    session.counter = budget or QuotaBudget(None)
    return session


# --- error classification --------------------------------------------------------------------------


def _error_details(response: requests.Response) -> tuple[list[str], str | None]:
    """(``error.errors[].reason`` values, ``error.status``) of a Google JSON error; empty when not JSON."""
    try:
        body = response.json()
    except ValueError:
        return [], None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return [], None
    reasons = [str(e.get("reason")) for e in err.get("errors") or () if isinstance(e, dict) and e.get("reason")]
    for detail in err.get("details") or ():  # RESOURCE_EXHAUSTED style: details[].reason
        if isinstance(detail, dict) and detail.get("reason"):
            reasons.append(str(detail["reason"]))
    status = err.get("status")
    return reasons, str(status) if status else None


def classify(response: requests.Response) -> Any:
    """Parsed JSON of a 2xx response, else the classified ``ApiError`` (status + reason, never text)."""
    status = response.status_code
    if 200 <= status < 300:
        return response.json()
    reasons, google_status = _error_details(response)
    reason = reasons[0] if reasons else google_status
    kw: dict[str, Any] = {"platform": settings.PLATFORM, "status": status, "code": reason}
    what = f"reason {', '.join(reasons)}" if reasons else f"HTTP {status}"
    if settings.QUOTA_REASONS.intersection(reasons):
        raise QuotaExceededError("daily Data API quota exhausted; remaining work deferred to tomorrow", **kw)
    raise_if_token_rejected(settings.PLATFORM, response)  # the shared table: 401 authError & co
    if settings.RETRIABLE_REASONS.intersection(reasons) or status in settings.RETRIABLE_STATUSES:
        raise RetriableApiError(f"transient error ({what})", **kw)
    raise FatalApiError(f"request refused ({what})", **kw)


def _needs_reauthorization(exc: FatalApiError, endpoint: str) -> bool:
    """403s that only a new consent (right scope, right channel) can fix; by status + reason only."""
    if exc.status != 403 or isinstance(exc, QuotaExceededError):
        return False
    if exc.code in settings.REAUTH_REASONS:
        return True
    return endpoint == "reports.query" and exc.code in settings.ANALYTICS_REAUTH_REASONS


# --- planned quota ---------------------------------------------------------------------------------


class QuotaBudget(CallCounter):
    """The session's call counter, with a ceiling on Data API units (None = unlimited).

    ``ApiSession.request`` counts every attempt (``add``) right before sending it, so the budget is charged
    per attempt: backoff retries and the retry after a refreshed token included. An attempt the budget
    cannot pay for raises ``QuotaExceededError(code="planned_budget")`` and is never sent: the units
    spent never exceed the limit.
    """

    def __init__(self, units: int | None) -> None:
        super().__init__()
        self.limit = units

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.units)

    def allow(self, units: int | None) -> None:
        """From now on, at most ``units`` more units (None = unlimited)."""
        self.limit = None if units is None else self.units + max(0, units)

    def add(self, endpoint: str, units: int = 0) -> None:
        if units and self.limit is not None and self.units + units > self.limit:
            raise QuotaExceededError(
                f"planned daily budget spent before {endpoint}; remaining work deferred",
                platform=settings.PLATFORM, code="planned_budget", endpoint=endpoint,
            )
        super().add(endpoint, units)


# --- tokens ----------------------------------------------------------------------------------------


class CachedTokens:
    """A TokenManager view that reads each credential from the vault once per account sync.

    ``TokenManager.get`` reads the vault on every call (one database round trip, or one Secret Manager
    request); a 50,000-video channel makes ~2,000 calls. A rejected token still goes through the
    manager's locked ``refresh_after_rejection``, whose result replaces the cached set.
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self._sets: dict[str, Any] = {}

    def get(self, credential: str) -> Any:
        if credential not in self._sets:
            self._sets[credential] = self.manager.get(credential)
        return self._sets[credential]

    def refresh_after_rejection(self, credential: str, rejected_access_token: str) -> Any:
        self._sets.pop(credential, None)
        fresh = self.manager.refresh_after_rejection(credential, rejected_access_token)
        self._sets[credential] = fresh
        return fresh


# --- the client ------------------------------------------------------------------------------------


class UploadPage(list[VideoRef]):
    """One uploads-playlist page: its refs, the token it was requested with and its ``nextPageToken``."""

    def __init__(self, refs: Iterator[VideoRef] | list[VideoRef], *, token: str | None,
                 next_token: str | None) -> None:
        super().__init__(refs)
        self.token = token
        self.next_token = next_token



class YouTubeClient:
    """Calls for one channel with one credential; counts land in ``session.counter``."""

    def __init__(self, config: Config, *, tokens: Any, credential: str, account_id: str,
                 session: ApiSession | None = None, budget: QuotaBudget | None = None) -> None:
        self.config = config
        self.tokens = tokens if isinstance(tokens, CachedTokens) else CachedTokens(tokens)
        self.credential = credential
        self.account_id = account_id
        self.session = session or new_session(config)
        if not isinstance(self.session.counter, QuotaBudget):
            self.session.counter = QuotaBudget(None)
        if budget is not None:
            self.budget = budget
        self.data_url = config.youtube_data_base_url.rstrip("/") + settings.DATA_API_PATH
        self.analytics_url = config.youtube_analytics_base_url.rstrip("/") + settings.ANALYTICS_PATH

    @property
    def budget(self) -> QuotaBudget:
        """The session's counter: every attempt is charged to it (see ``QuotaBudget``)."""
        counter = self.session.counter
        assert isinstance(counter, QuotaBudget)
        return counter

    @budget.setter
    def budget(self, budget: QuotaBudget) -> None:
        """Install ``budget`` as the session's counter, keeping what was already counted."""
        old = self.session.counter
        if old is not budget:
            snap = old.snapshot()
            if snap["calls"]:
                budget.calls += snap["calls"]
                budget.units += snap["units"]
                for ep, v in snap["by_endpoint"].items():
                    slot = budget.by_endpoint.setdefault(ep, {"calls": 0, "units": 0})
                    slot["calls"] += v["calls"]
                    slot["units"] += v["units"]
                if budget.limit is not None:
                    budget.limit += snap["units"]
            self.session.counter = budget

    # -- plumbing ----------------------------------------------------------------------------------
    def _get(self, url: str, endpoint: str, params: Mapping[str, Any]) -> Any:
        units = settings.UNITS.get(endpoint, 0)
        long_query = len(url) + len(urlencode(params)) + 1 > settings.MAX_GET_URL_LENGTH

        def call(token_set: Any) -> Any:
            headers = {"Authorization": f"Bearer {token_set.access_token}", "Accept": "application/json"}
            if long_query:  # as google-api-python-client does: POST + X-HTTP-Method-Override, query in the body
                headers["X-HTTP-Method-Override"] = "GET"
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                return self.session.request("POST", url, endpoint=endpoint, headers=headers,
                                            data=urlencode(params), units=units, account=self.account_id)
            return self.session.request("GET", url, endpoint=endpoint, params=params, headers=headers,
                                        units=units, account=self.account_id)

        try:
            return call_with_token(self.tokens, self.credential, call)
        except FatalApiError as exc:
            if _needs_reauthorization(exc, endpoint):
                raise AuthError(f"{self.credential} may not read channel {self.account_id} ({endpoint}: "
                                f"HTTP {exc.status} {exc.code}); re-authorize it with the channel's owner "
                                "account") from exc
            raise

    # -- Data API ----------------------------------------------------------------------------------
    def channel(self) -> dict[str, Any] | None:
        """``channels.list`` for this channel: snippet, uploads playlist, statistics (1 unit)."""
        page = self._get(f"{self.data_url}/channels", "channels.list",
                         {"part": settings.CHANNEL_PARTS, "id": self.account_id, "maxResults": 1,
                          "fields": settings.CHANNEL_FIELDS})
        items = page.get("items") or []
        return items[0] if items else None

    def upload_pages(self, playlist_id: str, start_token: str | None = None) -> Iterator[UploadPage]:
        """Pages of the uploads playlist, newest first (1 unit per page); stop iterating to stop paying.

        ``start_token`` resumes a scan where an earlier one stopped. Each page carries the token it was
        requested with and its ``nextPageToken``, so a scan cut short can record where to resume.
        """
        state: dict[str, str | None] = {"request": None, "next": None}

        def fetch(token: str | None) -> dict[str, Any]:
            token = token or start_token  # only the first request has no token of its own
            params = {"part": settings.PLAYLIST_ITEM_PARTS, "playlistId": playlist_id,
                      "maxResults": settings.PAGE_SIZE, "fields": settings.PLAYLIST_ITEM_FIELDS}
            if token:
                params["pageToken"] = token
            page = self._get(f"{self.data_url}/playlistItems", "playlistItems.list", params)
            state["request"], state["next"] = token, page.get("nextPageToken") or None
            return page

        def items(page: dict[str, Any]) -> UploadPage:
            return UploadPage(playlist_refs(page.get("items")), token=state["request"], next_token=state["next"])

        return paginate_page_token(fetch, max_pages=settings.MAX_PLAYLIST_PAGES, get_items=items,
                                   platform=settings.PLATFORM, endpoint="playlistItems.list")

    def videos(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """``videos.list`` for at most 50 ids (1 unit): snippet, contentDetails and statistics.

        Private, deleted and not-yet-public ids are silently omitted by the API.
        """
        if not ids:
            return []
        if len(ids) > settings.VIDEOS_PER_CALL:
            raise ValueError(f"videos.list takes at most {settings.VIDEOS_PER_CALL} ids, got {len(ids)}")
        page = self._get(f"{self.data_url}/videos", "videos.list",
                         {"part": settings.VIDEO_PARTS, "id": ",".join(ids), "fields": settings.VIDEO_FIELDS})
        return list(page.get("items") or [])

    # -- Analytics API -----------------------------------------------------------------------------
    def report(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One ``reports.query`` for this channel (``ids=channel==<UC...>``); no Data API units."""
        return self._get(self.analytics_url, "reports.query",
                         {"ids": settings.ANALYTICS_IDS.format(channel_id=self.account_id), **params})

    def video_totals(self, video_ids: Sequence[str], start: str, end: str,
                     on_page: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Lifetime-to-``end`` totals per video for up to 500 ids: pages of 200 rows via ``startIndex``.

        Stops as soon as a page is short or every id has a row (a video has at most one row), so the
        number of calls is ceil(rows / 200), plus one only when rows is an exact multiple of 200 below
        the id count. A video answered on two pages (the ranking moved between pages) is kept once, last
        answer wins, with a warning.
        """
        out: list[dict[str, Any]] = []
        start_index = 1
        seen: set[str] = set()
        while True:
            resp = self.report({
                "startDate": start, "endDate": end, "metrics": ",".join(settings.VIDEO_METRICS),
                "dimensions": "video", "filters": "video==" + ",".join(video_ids),
                "sort": settings.VIDEO_SORT, "maxResults": settings.VIDEO_MAX_RESULTS, "startIndex": start_index,
            })
            records = report_records(resp)
            out.extend(records)
            seen.update(str(r.get("video")) for r in records)
            if on_page is not None:
                on_page(len(records))
            if len(records) < settings.VIDEO_MAX_RESULTS or len(seen) >= len(video_ids):
                break
            start_index += len(records)
        unique = unique_records(out, "video")
        if len(unique) < len(out):
            logger.warning("%d duplicate video row(s) across startIndex pages for %s; the last one wins",
                           len(out) - len(unique), self.account_id,
                           extra={"fields": {"duplicates": len(out) - len(unique), "endpoint": "reports.query"}})
        return unique

    def day_series(self, start: str, end: str) -> list[dict[str, Any]]:
        """Channel metrics per day for ``start..end`` (the API omits days it has not processed yet)."""
        return report_records(self.report({
            "startDate": start, "endDate": end, "metrics": ",".join(settings.DAY_METRICS), "dimensions": "day",
            "sort": "day",
        }))
