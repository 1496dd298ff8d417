"""All YouTube HTTP: Data API v3 list calls and Analytics v2 ``reports.query``, with tokens and quota.

Every call goes through ``shared.auth.call_with_token`` (a rejected token is refreshed once, under a
lock, and the call retried once) and ``shared.http.ApiSession`` (classified retries, counters).
Errors are classified by HTTP status plus ``error.errors[].reason`` (tables in ``settings.py``), never
by message text. Data API calls draw on a ``QuotaBudget`` first: when the planned budget is spent the
client raises ``QuotaExceededError`` itself instead of letting YouTube refuse a call mid-way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import requests

from functions.youtube import settings
from functions.youtube.transform import VideoRef, playlist_refs, report_records
from shared.auth import call_with_token
from shared.config import Config
from shared.errors import FatalApiError, QuotaExceededError, RetriableApiError, TokenRejectedError
from shared.http import ApiSession, shared_transport
from shared.pagination import paginate_page_token

__all__ = ["CachedTokens", "QuotaBudget", "YouTubeClient", "classify", "new_session", "quota_cost"]

def quota_cost(method: str, endpoint: str) -> int:
    """Data API units of one call (every attempt counts, invalid requests included)."""
    return settings.UNITS.get(endpoint, 0)


def new_session(config: Config) -> ApiSession:
    """An ApiSession with its own counter (per account) over the instance's pooled connections."""
    return ApiSession(settings.PLATFORM, config, classify=classify, quota_cost=quota_cost,
                      transport=shared_transport())


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
    if status == 401 or settings.TOKEN_REASONS.intersection(reasons):
        raise TokenRejectedError(f"access token rejected ({what})", **kw)
    if settings.RETRIABLE_REASONS.intersection(reasons) or status in settings.RETRIABLE_STATUSES:
        raise RetriableApiError(f"transient error ({what})", **kw)
    raise FatalApiError(f"request refused ({what})", **kw)


# --- planned quota ---------------------------------------------------------------------------------


class QuotaBudget:
    """Data API units this account may still spend in this run (None = unlimited)."""

    def __init__(self, units: int | None) -> None:
        self.remaining = units

    def take(self, units: int, endpoint: str) -> None:
        if self.remaining is None or units == 0:
            return
        if self.remaining < units:
            raise QuotaExceededError(
                f"planned daily budget spent before {endpoint}; remaining work deferred",
                platform=settings.PLATFORM, code="planned_budget", endpoint=endpoint,
            )
        self.remaining -= units


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


class YouTubeClient:
    """Calls for one channel with one credential; counts land in ``session.counter``."""

    def __init__(self, config: Config, *, tokens: Any, credential: str, account_id: str,
                 session: ApiSession | None = None, budget: QuotaBudget | None = None) -> None:
        self.config = config
        self.tokens = tokens if isinstance(tokens, CachedTokens) else CachedTokens(tokens)
        self.credential = credential
        self.account_id = account_id
        self.session = session or new_session(config)
        self.budget = budget or QuotaBudget(None)
        self.data_url = config.youtube_data_base_url.rstrip("/") + settings.DATA_API_PATH
        self.analytics_url = config.youtube_analytics_base_url.rstrip("/") + settings.ANALYTICS_PATH

    # -- plumbing ----------------------------------------------------------------------------------
    def _get(self, url: str, endpoint: str, params: Mapping[str, Any]) -> Any:
        units = settings.UNITS.get(endpoint, 0)
        self.budget.take(units, endpoint)
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

        return call_with_token(self.tokens, self.credential, call)

    # -- Data API ----------------------------------------------------------------------------------
    def channel(self) -> dict[str, Any] | None:
        """``channels.list`` for this channel: snippet, uploads playlist, statistics (1 unit)."""
        page = self._get(f"{self.data_url}/channels", "channels.list",
                         {"part": settings.CHANNEL_PARTS, "id": self.account_id, "maxResults": 1,
                          "fields": settings.CHANNEL_FIELDS})
        items = page.get("items") or []
        return items[0] if items else None

    def upload_pages(self, playlist_id: str) -> Iterator[list[VideoRef]]:
        """Pages of the uploads playlist, newest first (1 unit per page); stop iterating to stop paying."""

        def fetch(token: str | None) -> dict[str, Any]:
            params = {"part": settings.PLAYLIST_ITEM_PARTS, "playlistId": playlist_id,
                      "maxResults": settings.PAGE_SIZE, "fields": settings.PLAYLIST_ITEM_FIELDS}
            if token:
                params["pageToken"] = token
            return self._get(f"{self.data_url}/playlistItems", "playlistItems.list", params)

        return paginate_page_token(fetch, max_pages=settings.MAX_PLAYLIST_PAGES,
                                   get_items=lambda page: list(playlist_refs(page.get("items"))),
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
        """One ``reports.query`` (``ids=channel==MINE``); no Data API units."""
        return self._get(self.analytics_url, "reports.query", {"ids": settings.ANALYTICS_IDS, **params})

    def video_totals(self, video_ids: Sequence[str], start: str, end: str,
                     on_page: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Lifetime-to-``end`` totals per video for up to 500 ids: pages of 200 rows via ``startIndex``.

        Stops as soon as a page is short or every id has a row (a video has at most one row), so the
        number of calls is ceil(rows / 200), plus one only when rows is an exact multiple of 200 below
        the id count.
        """
        out: list[dict[str, Any]] = []
        start_index = 1
        while True:
            resp = self.report({
                "startDate": start, "endDate": end, "metrics": ",".join(settings.VIDEO_METRICS),
                "dimensions": "video", "filters": "video==" + ",".join(video_ids),
                "sort": settings.VIDEO_SORT, "maxResults": settings.VIDEO_MAX_RESULTS, "startIndex": start_index,
            })
            records = report_records(resp)
            out.extend(records)
            if on_page is not None:
                on_page(len(records))
            if len(records) < settings.VIDEO_MAX_RESULTS or len(out) >= len(video_ids):
                return out
            start_index += len(records)

    def day_series(self, start: str, end: str) -> list[dict[str, Any]]:
        """Channel metrics per day for ``start..end`` (the API omits days it has not processed yet)."""
        return report_records(self.report({
            "startDate": start, "endDate": end, "metrics": ",".join(settings.DAY_METRICS), "dimensions": "day",
            "sort": "day",
        }))
