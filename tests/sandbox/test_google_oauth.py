"""Google OAuth token endpoint emulator: refresh grant, errors, rotation, and the real google-auth client."""

from __future__ import annotations

from typing import Any

import google.auth.transport.requests
import pytest
import requests
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials

from sandbox import Sandbox
from sandbox.google_oauth import SCOPES


def _cred(sb: Sandbox, i: int = 0) -> dict[str, Any]:
    acc = sb.world.accounts("youtube")[i]
    return sb.google_oauth.initial_credential(acc.credential, [acc])


def _refresh(sb: Sandbox, refresh_token: str, **over: str) -> requests.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": sb.settings.google_client_id, "client_secret": sb.settings.google_client_secret, **over}
    return requests.post(sb.env["GOOGLE_TOKEN_URL"], data=form, timeout=10)


def _channels(sb: Sandbox, token: str) -> int:
    return requests.get(sb.url("youtube_data") + "/youtube/v3/channels", params={"part": "id", "mine": "true"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def test_initial_credential_payload(sandbox: Sandbox) -> None:
    acc = sandbox.world.accounts("youtube")[0]
    cred = _cred(sandbox)
    assert cred["credential"] == acc.credential and cred["provider"] == "google"
    assert cred["access_token"].startswith("ya29.") and cred["refresh_token"]
    assert cred["refresh_token_expires_at"] is None and cred["access_token_expires_at"]
    assert cred["account_ids"] == [acc.account_id] and cred["scopes"] == list(SCOPES)
    assert set(cred) >= {"issued_at", "metadata"}


def test_refresh_success_shape_and_new_token_works(sandbox: Sandbox) -> None:
    cred = _cred(sandbox)
    sandbox.tokens.expire(cred["credential"])
    assert _channels(sandbox, cred["access_token"]) == 401
    r = _refresh(sandbox, cred["refresh_token"])
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}  # no new refresh_token
    assert body["expires_in"] == 3599 and body["token_type"] == "Bearer"
    assert body["scope"] == " ".join(SCOPES)
    assert _channels(sandbox, body["access_token"]) == 200
    assert sandbox.ledger.entries("google_oauth")[0].account == cred["credential"]


def test_refresh_errors(sandbox: Sandbox) -> None:
    cred = _cred(sandbox)
    r = _refresh(sandbox, "1//0gunknown")
    assert r.status_code == 400
    assert r.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    r = _refresh(sandbox, cred["refresh_token"], client_secret="wrong")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = _refresh(sandbox, cred["refresh_token"], grant_type="authorization_code")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    sandbox.tokens.revoke(cred["credential"])
    r = _refresh(sandbox, cred["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_rotation_setting(sandbox_factory: Any) -> None:
    sb = sandbox_factory(google_rotate_refresh_token=True)
    cred = _cred(sb)
    body = _refresh(sb, cred["refresh_token"]).json()
    assert body["refresh_token"] != cred["refresh_token"]
    assert _refresh(sb, cred["refresh_token"]).json()["error"] == "invalid_grant"  # the old one is spent
    assert _refresh(sb, body["refresh_token"]).status_code == 200


def test_official_google_auth_client_refreshes_against_sandbox(sandbox: Sandbox) -> None:
    cred = _cred(sandbox)
    s = sandbox.settings
    creds = Credentials(token=None, refresh_token=cred["refresh_token"], token_uri=sandbox.env["GOOGLE_TOKEN_URL"],
                        client_id=s.google_client_id, client_secret=s.google_client_secret)
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.token and creds.expiry is not None
    assert _channels(sandbox, creds.token) == 200
    sandbox.tokens.revoke(cred["credential"])
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(google.auth.transport.requests.Request())


def test_invalid_client_status_is_a_setting(sandbox: Sandbox, sandbox_factory: Any) -> None:
    cred = _cred(sandbox)
    r = _refresh(sandbox, cred["refresh_token"], client_secret="wrong")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    box = sandbox_factory(google_invalid_client_status=400)
    r = _refresh(box, _cred(box)["refresh_token"], client_id="nope")
    assert r.status_code == 400 and r.json()["error"] == "invalid_client"
    r = requests.post(box.env["GOOGLE_TOKEN_URL"], data=b"[1]", headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
