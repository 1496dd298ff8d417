"""YouTubeClient over loopback HTTP against the sandbox: classification, retries, paging, tokens, budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from functions.youtube import client as yc
from functions.youtube.client import CachedTokens, QuotaBudget, YouTubeClient, classify
from sandbox.core import FaultRule
from shared.config import Config
from shared.errors import AuthError, FatalApiError, QuotaExceededError, RetriableApiError, TokenRejectedError
from shared.tokens import TokenManager
from shared.vault import make_vault


def _response(status: int, body: Any) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return r


def _google(status: int, reason: str, message: str = "whatever the text says") -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}}


@pytest.mark.parametrize(("status", "body", "error"), [
    (403, _google(403, "quotaExceeded"), QuotaExceededError),
    (403, _google(403, "dailyLimitExceeded"), QuotaExceededError),
    (403, _google(403, "rateLimitExceeded"), RetriableApiError),
    (403, _google(403, "userRateLimitExceeded"), RetriableApiError),
    (429, _google(429, "rateLimitExceeded"), RetriableApiError),
    (429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [{"reason": "RATE_LIMIT_EXCEEDED"}]}},
     RetriableApiError),
    (500, _google(500, "backendError"), RetriableApiError),
    (503, b"<html>unavailable</html>", RetriableApiError),
    (401, _google(401, "authError"), TokenRejectedError),
    (401, b"", TokenRejectedError),
    (403, _google(403, "forbidden"), FatalApiError),
    (400, _google(400, "badRequest"), FatalApiError),
    (404, _google(404, "playlistNotFound"), FatalApiError),
    # the message text never decides: a quota-sounding message with a throttle reason is retriable
    (403, _google(403, "rateLimitExceeded", "You have exceeded your quota"), RetriableApiError),
])
def test_classify_by_status_and_reason(status: int, body: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        classify(_response(status, body))
    assert type(info.value) is error


def test_classify_returns_json_on_success() -> None:
    assert classify(_response(200, {"items": []})) == {"items": []}


class CountingVault:
    def __init__(self, inner: Any) -> None:
        self.inner, self.reads = inner, 0

    def read(self, name: str) -> dict[str, Any]:
        self.reads += 1
        return self.inner.read(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def make_client(sandbox: Any, database_url: str, make_config: Callable[..., Config]) -> Callable[..., Any]:
    def make(acc: Any = None, **overrides: Any) -> tuple[YouTubeClient, Any, Any]:
        cfg = make_config(http_backoff_base_seconds=0.01, http_backoff_cap_seconds=0.5, **overrides)
        acc = acc or sandbox.world.accounts("youtube")[0]
        vault = CountingVault(make_vault(cfg))
        vault.write(acc.credential, sandbox.credentials()[acc.credential])
        manager = TokenManager(cfg, vault)
        return YouTubeClient(cfg, tokens=manager, credential=acc.credential, account_id=acc.account_id), acc, vault

    return make


def test_reads_the_credential_once_per_sync(make_client: Callable[..., Any], sandbox: Any) -> None:
    client, acc, vault = make_client()
    assert client.channel()["id"] == acc.account_id
    refs = [r for page in client.upload_pages(acc.extra["uploads_playlist"]) for r in page]
    items = client.videos([r.video_id for r in refs[:50]])
    assert len(items) == 50
    assert vault.reads == 1
    assert client.session.counter.snapshot()["units"] == 1 + 3 + 1
    assert sandbox.ledger.units("youtube_data") == 5


def test_expired_token_is_refreshed_once_and_cached(make_client: Callable[..., Any], sandbox: Any) -> None:
    client, acc, _vault = make_client()
    client.channel()
    sandbox.tokens.expire(acc.credential)
    client.channel()
    client.channel()
    assert sandbox.ledger.calls("google_oauth", "token") == 1
    assert sandbox.ledger.calls("youtube_data", "channels.list") == 4  # ok, 401, retried ok, ok


def test_quota_exceeded_is_never_retried(make_client: Callable[..., Any], sandbox: Any) -> None:
    client, _acc, _ = make_client()
    sandbox.faults.add(FaultRule(kind="platform_error", emulator="youtube_data", endpoint="channels.list",
                                 status=403, code="quotaExceeded", times=None))
    with pytest.raises(QuotaExceededError):
        client.channel()
    assert sandbox.ledger.calls("youtube_data", "channels.list") == 1


@pytest.mark.parametrize("rule", [
    FaultRule(kind="throttle", emulator="youtube_data", endpoint="channels.list", status=403,
              code="rateLimitExceeded", times=2),
    FaultRule(kind="throttle", emulator="youtube_data", endpoint="channels.list", status=429, times=1),
    FaultRule(kind="status", emulator="youtube_data", endpoint="channels.list", status=503, times=2),
    FaultRule(kind="reset", emulator="youtube_data", endpoint="channels.list", times=1),
])
def test_throttles_and_5xx_are_retried(make_client: Callable[..., Any], sandbox: Any, rule: FaultRule) -> None:
    client, acc, _ = make_client()
    sandbox.faults.add(rule)
    assert client.channel()["id"] == acc.account_id
    assert sandbox.ledger.calls("youtube_data", "channels.list") == (rule.times or 0) + 1
    assert client.session.counter.snapshot()["calls"] == (rule.times or 0) + 1  # every attempt is counted


def test_planned_budget_stops_before_the_call(make_client: Callable[..., Any], sandbox: Any) -> None:
    client, _acc, _ = make_client()
    client.budget = QuotaBudget(1)
    client.channel()
    with pytest.raises(QuotaExceededError) as info:
        client.videos(["abc"])
    assert info.value.code == "planned_budget"
    assert sandbox.ledger.calls("youtube_data", "videos.list") == 0


def test_retries_are_charged_to_the_budget_per_attempt(make_client: Callable[..., Any], sandbox: Any) -> None:
    """A 503 then a success cost two attempts: with a 2-unit budget nothing else may go out."""
    client, acc, _ = make_client()
    client.budget.allow(2)
    sandbox.faults.add(FaultRule(kind="status", emulator="youtube_data", endpoint="channels.list", status=503,
                                 times=1))
    assert client.channel()["id"] == acc.account_id
    assert client.budget.units == 2 and client.budget.remaining == 0
    with pytest.raises(QuotaExceededError) as info:
        client.videos(["abc"])
    assert info.value.code == "planned_budget" and info.value.endpoint == "videos.list"
    assert client.session.counter.snapshot()["units"] == 2  # never above the budget
    assert sandbox.ledger.calls("youtube_data", "videos.list") == 0


def test_a_retry_the_budget_cannot_pay_for_is_not_sent(make_client: Callable[..., Any], sandbox: Any) -> None:
    client, _acc, _ = make_client()
    client.budget.allow(1)
    sandbox.faults.add(FaultRule(kind="status", emulator="youtube_data", endpoint="channels.list", status=503,
                                 times=1))
    with pytest.raises(QuotaExceededError):
        client.channel()
    assert sandbox.ledger.calls("youtube_data", "channels.list") == 1  # the failed attempt only
    assert client.budget.units == 1


def test_analytics_ask_for_the_registered_channel_not_mine(make_client: Callable[..., Any], sandbox: Any) -> None:
    """ids=channel==<UC...>: the sandbox accepts it for the token's own channel and refuses it for another."""
    client, acc, _ = make_client()
    assert client.day_series("2026-01-01", "2026-01-02") is not None
    other = sandbox.world.accounts("youtube")[1]
    stranger = YouTubeClient(client.config, tokens=client.tokens, credential=acc.credential,
                             account_id=other.account_id)
    with pytest.raises(AuthError):
        stranger.day_series("2026-01-01", "2026-01-02")
    assert [e.status for e in sandbox.ledger.entries("youtube_analytics", "reports.query")] == [200, 403]


def test_insufficient_permissions_is_an_auth_error(make_client: Callable[..., Any], sandbox: Any) -> None:
    client, _acc, _ = make_client()
    sandbox.faults.add(FaultRule(kind="platform_error", emulator="youtube_data", endpoint="videos.list",
                                 status=403, code="insufficientPermissions", times=None))
    with pytest.raises(AuthError):
        client.videos(["abc"])
    sandbox.faults.clear()
    sandbox.faults.add(FaultRule(kind="platform_error", emulator="youtube_data", endpoint="videos.list",
                                 status=403, code="forbidden", times=None))
    with pytest.raises(FatalApiError) as info:  # "forbidden" means "not yours" only on Analytics
        client.videos(["abc"])
    assert type(info.value) is FatalApiError


def test_video_totals_pages_by_200_and_long_filters_go_as_post(make_client: Callable[..., Any],
                                                               sandbox: Any) -> None:
    acc = sandbox.world.add_account("youtube", 450, name="Client TV")
    client, _, _ = make_client(acc)
    ids = [p.post_id for p in sandbox.world.posts(acc, sandbox.clock.now())]
    start = min(p.published_at for p in sandbox.world.posts(acc, sandbox.clock.now())).date().isoformat()
    end = (sandbox.clock.now().date().replace(day=1)).isoformat()
    assert len(yc.urlencode({"filters": "video==" + ",".join(ids)})) > yc.settings.MAX_GET_URL_LENGTH
    pages: list[int] = []
    rows = client.video_totals(ids, start, end, on_page=pages.append)
    assert len({r["video"] for r in rows}) == len(rows)
    assert set(r["video"] for r in rows) <= set(ids)
    assert pages[:-1] == [200] * (len(pages) - 1) and pages[-1] <= 200
    assert sandbox.ledger.calls("youtube_analytics", "reports.query") == len(pages)
    assert sandbox.ledger.ids_per_call("youtube_analytics", "reports.query") == [450] * len(pages)


def test_videos_rejects_more_than_50_ids(make_client: Callable[..., Any]) -> None:
    client, _, _ = make_client()
    with pytest.raises(ValueError):
        client.videos([str(i) for i in range(51)])
    assert client.videos([]) == []


def test_cached_tokens_replace_the_rejected_set() -> None:
    class Manager:
        def __init__(self) -> None:
            self.gets, self.refreshes = 0, []

        def get(self, credential: str) -> str:
            self.gets += 1
            return "old"

        def refresh_after_rejection(self, credential: str, rejected: str) -> str:
            self.refreshes.append(rejected)
            return "new"

    m = Manager()
    cache = CachedTokens(m)
    assert cache.get("c") == "old" and cache.get("c") == "old" and m.gets == 1
    assert cache.refresh_after_rejection("c", "old") == "new" and cache.get("c") == "new"
    assert m.refreshes == ["old"] and m.gets == 1
