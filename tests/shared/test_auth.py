"""Self-healing auth against all three platforms' sandbox endpoints: refresh once on a rejected token.

Token rejection is detected by the production helper ``shared.auth.raise_if_token_rejected`` (the tables
every platform client uses). The classify callbacks below only add "return the data / anything else is
fatal" around it, because the TikTok and Meta clients do not exist yet.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from shared.auth import call_with_token, raise_if_token_rejected, token_rejection
from shared.errors import AuthError, FatalApiError, TokenRejectedError
from shared.http import ApiSession
from shared.tokens import TokenManager, TokenSet
from shared.vault import make_vault
from tests.shared.test_tokens import TIKTOK_REFRESH, first_credential


def tiktok_classify(response: requests.Response) -> Any:
    body = response.json()
    raise_if_token_rejected("tiktok", response, body)
    if body.get("code") != 0:
        raise FatalApiError("error", platform="tiktok", status=response.status_code, code=body.get("code"))
    return body["data"]


def meta_classify(response: requests.Response) -> Any:
    body = response.json()
    raise_if_token_rejected("facebook", response, body)
    if response.status_code >= 400:
        raise FatalApiError("error", platform="facebook", status=response.status_code)
    return body


def youtube_classify(response: requests.Response) -> Any:
    raise_if_token_rejected("youtube", response)
    if response.status_code >= 400:
        raise FatalApiError("error", platform="youtube", status=response.status_code)
    return response.json()


@pytest.fixture
def manager(sandbox: Any, make_config: Any, database_url: str) -> TokenManager:
    config = make_config(now_override=sandbox.clock.now().isoformat())
    vault = make_vault(config)
    for name, payload in sandbox.credentials().items():
        vault.write(name, payload)
    return TokenManager(config, vault, sleep=lambda s: None)


def tiktok_call(manager: TokenManager, calls: list[str]) -> Any:
    config = manager.config
    session = ApiSession("tiktok", config, classify=tiktok_classify)

    def call(ts: TokenSet) -> Any:
        calls.append(ts.access_token)
        return session.request(
            "GET", config.tiktok_base_url + "/open_api/v1.3/business/get/", endpoint="business.get",
            params={"business_id": ts.account_ids[0], "fields": json.dumps(["display_name"])},
            headers={"Access-Token": ts.access_token},
        )
    return call


def test_tiktok_expired_token_refreshes_once_and_completes(sandbox: Any, manager: TokenManager) -> None:
    name, initial = first_credential(sandbox, "tiktok")
    sandbox.tokens.expire(name)
    calls: list[str] = []
    data = call_with_token(manager, name, tiktok_call(manager, calls))
    assert data["display_name"]
    assert len(calls) == 2 and calls[0] == initial["access_token"] and calls[1] != calls[0]
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1
    assert manager.vault.read(name)["access_token"] == calls[1]
    # the next call uses the stored token directly
    calls.clear()
    call_with_token(manager, name, tiktok_call(manager, calls))
    assert len(calls) == 1 and sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1


def test_tiktok_revoked_refresh_token_is_auth_error(sandbox: Any, manager: TokenManager, db_conn: Any) -> None:
    name, _ = first_credential(sandbox, "tiktok")
    sandbox.tokens.expire(name)
    sandbox.tokens.revoke(name)
    with pytest.raises(AuthError) as err:
        call_with_token(manager, name, tiktok_call(manager, []))
    assert "re-authorize" in str(err.value)
    assert db_conn.run("SELECT outcome FROM social.token_state WHERE credential = :c", c=name) == [
        ["needs_reauthorization"]]


def test_rejected_twice_is_auth_error(sandbox: Any, manager: TokenManager) -> None:
    name, _ = first_credential(sandbox, "tiktok")
    attempts: list[str] = []

    def always_rejected(ts: TokenSet) -> Any:
        attempts.append(ts.access_token)
        raise TokenRejectedError("rejected", platform="tiktok", code=40105)

    with pytest.raises(AuthError):
        call_with_token(manager, name, always_rejected)
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1


def test_meta_page_token_rejected_rederives_page_tokens(sandbox: Any, manager: TokenManager) -> None:
    name, initial = first_credential(sandbox, "meta")
    page_id, old_page_token = next(iter(initial["metadata"]["page_tokens"].items()))
    sandbox.tokens.revoke(name, "page")  # Meta invalidated the page tokens (e.g. a role change)
    config = manager.config
    session = ApiSession("meta", config, classify=meta_classify)
    used: list[str] = []

    def insights(ts: TokenSet) -> Any:
        token = ts.page_tokens[page_id]
        used.append(token)
        return session.request("GET", f"{config.meta_graph_url}/{page_id}/insights", endpoint="page.insights",
                               params={"metric": "page_post_engagements", "period": "day"},
                               headers={"Authorization": f"Bearer {token}"})

    body = call_with_token(manager, name, insights)
    assert body["data"]
    assert used[0] == old_page_token and used[1] != old_page_token and len(used) == 2
    assert sandbox.ledger.calls("meta", endpoint="oauth.access_token") == 1
    assert manager.vault.read(name)["metadata"]["page_tokens"][page_id] == used[1]


def test_meta_expired_user_token_is_auth_error(sandbox: Any, manager: TokenManager) -> None:
    name, _ = first_credential(sandbox, "meta")
    sandbox.tokens.expire(name)  # the long-lived user token lapsed: it cannot be exchanged any more
    sandbox.tokens.revoke(name, "page")

    def insights(ts: TokenSet) -> Any:
        raise TokenRejectedError("rejected", platform="meta", status=400, code=190)

    with pytest.raises(AuthError):
        call_with_token(manager, name, insights)


def test_youtube_expired_token_refreshes_once_and_completes(sandbox: Any, manager: TokenManager) -> None:
    name, initial = first_credential(sandbox, "google")
    sandbox.tokens.expire(name)
    config = manager.config
    session = ApiSession("youtube", config, classify=youtube_classify)
    used: list[str] = []

    def channels(ts: TokenSet) -> Any:
        used.append(ts.access_token)
        return session.request("GET", config.youtube_data_base_url + "/youtube/v3/channels",
                               endpoint="channels.list", params={"part": "id", "mine": "true"},
                               headers={"Authorization": f"Bearer {ts.access_token}"})

    body = call_with_token(manager, name, channels)
    assert body["items"][0]["id"] == initial["account_ids"][0]
    assert len(used) == 2 and used[0] == initial["access_token"]
    assert sandbox.ledger.calls("google_oauth", endpoint="token") == 1


def test_youtube_revoked_refresh_token_is_auth_error(sandbox: Any, manager: TokenManager) -> None:
    name, _ = first_credential(sandbox, "google")
    sandbox.tokens.expire(name)
    sandbox.tokens.revoke(name)
    config = manager.config
    session = ApiSession("youtube", config, classify=youtube_classify)

    def channels(ts: TokenSet) -> Any:
        return session.request("GET", config.youtube_data_base_url + "/youtube/v3/channels",
                               endpoint="channels.list", params={"part": "id", "mine": "true"},
                               headers={"Authorization": f"Bearer {ts.access_token}"})

    with pytest.raises(AuthError) as err:
        call_with_token(manager, name, channels)
    assert "invalid_grant" in str(err.value)


# --------------------------------------------------------------------------------------------------
# The detection tables against each sandbox's real answers
# --------------------------------------------------------------------------------------------------


def _raw_call(manager: TokenManager, platform: str, ts: TokenSet, *, bad_request: bool = False) -> requests.Response:
    """One plain HTTP call to the platform's sandbox endpoint with ``ts``'s token."""
    config = manager.config
    if platform == "tiktok":
        return requests.get(config.tiktok_base_url + "/open_api/v1.3/business/get/", timeout=30,
                            params={"business_id": "no-such-business" if bad_request else ts.account_ids[0],
                                    "fields": json.dumps(["display_name"])},
                            headers={"Access-Token": ts.access_token})
    if platform == "facebook":
        page_id, token = next(iter(ts.page_tokens.items()))
        return requests.get(f"{config.meta_graph_url}/{page_id}/insights", timeout=30,
                            params={"metric": "no_such_metric" if bad_request else "page_post_engagements",
                                    "period": "day"},
                            headers={"Authorization": f"Bearer {token}"})
    return requests.get(config.youtube_data_base_url + "/youtube/v3/channels", timeout=30,
                        params={"part": "nonsense" if bad_request else "id", "mine": "true"},
                        headers={"Authorization": f"Bearer {ts.access_token}"})


@pytest.mark.parametrize(("platform", "provider", "expected"), [
    ("tiktok", "tiktok", {40102, 40105}), ("facebook", "meta", {190, 102}),
    ("youtube", "google", {"authError", "UNAUTHENTICATED", "HTTP 401"})])
def test_token_signal_of_each_platform_is_detected_and_other_errors_are_not(
        sandbox: Any, manager: TokenManager, platform: str, provider: str, expected: set[Any]) -> None:
    name, _ = first_credential(sandbox, provider)
    ts = manager.get(name)
    ok = _raw_call(manager, platform, ts)
    assert ok.status_code == 200 and token_rejection(platform, ok) is None
    other = _raw_call(manager, platform, ts, bad_request=True)  # a non-token error of the same API
    assert other.status_code >= 400 or other.json().get("code") not in (0, None), other.text
    assert token_rejection(platform, other) is None, other.text
    sandbox.tokens.expire(name)
    sandbox.tokens.revoke(name, "page")
    rejected = _raw_call(manager, platform, ts)
    error = token_rejection(platform, rejected)
    assert isinstance(error, TokenRejectedError), rejected.text
    assert error.code in expected and error.platform == platform and error.status == rejected.status_code
    with pytest.raises(TokenRejectedError):
        raise_if_token_rejected(platform, rejected)


def test_unknown_platform_is_a_programming_error(sandbox: Any, manager: TokenManager) -> None:
    name, _ = first_credential(sandbox, "tiktok")
    response = _raw_call(manager, "tiktok", manager.get(name))
    with pytest.raises(ValueError):
        token_rejection("myspace", response)


def test_rejected_twice_records_needs_reauthorization(sandbox: Any, manager: TokenManager, db_conn: Any) -> None:
    name, _ = first_credential(sandbox, "google")

    def always_rejected(ts: TokenSet) -> Any:
        raise TokenRejectedError("rejected", platform="youtube", status=401, code="authError")

    with pytest.raises(AuthError):
        call_with_token(manager, name, always_rejected)
    assert db_conn.run("SELECT outcome, error_class FROM social.token_state WHERE credential = :c", c=name) == [
        ["needs_reauthorization", "needs_reauthorization"]]
