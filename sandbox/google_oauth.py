"""Google OAuth 2.0 token endpoint (``POST https://oauth2.googleapis.com/token``), refresh grant only.

Wire format: api-contracts.md §3.3. Form-encoded body; success is 200 with ``access_token`` /
``expires_in`` / ``scope`` / ``token_type`` and (normally) no new ``refresh_token``; a dead refresh token
is 400 ``invalid_grant``; bad client credentials ``invalid_client`` with HTTP
``settings.google_invalid_client_status`` (401) [U].
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from sandbox.core import Emulator, FaultRule, Request, Response, json_response

if TYPE_CHECKING:
    from sandbox.world import Account

SCOPES = (
    "https://www.googleapis.com/auth/yt-analytics.readonly",
    "https://www.googleapis.com/auth/youtube.readonly",
)
_NO_STORE = {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> Response:
    return json_response({"error": error, "error_description": description}, status, _NO_STORE)


class GoogleOAuthEmulator(Emulator):
    name = "google_oauth"

    def __init__(self, sandbox: Any) -> None:
        super().__init__(sandbox)
        self.route("POST", r"/token", "token", self._token)
        # the older host/path some libraries still use
        self.route("POST", r"/o/oauth2/token", "token", self._token)

    # -- fault renderings ------------------------------------------------------------------------------
    def error_response(self, status: int, code: int | str | None, message: str) -> Response:
        if code is None:
            code = "invalid_request" if status < 500 else "internal_failure"
        return _oauth_error(status, str(code), message)

    def throttle_response(self, rule: FaultRule) -> Response:
        return _oauth_error(rule.status or 429, str(rule.code or "rate_limit_exceeded"),
                            rule.message or "Rate limit exceeded (injected)")

    def account_of(self, req: Request, m: re.Match[str]) -> str | None:
        token = req.form().get("refresh_token") if req.body else None
        grant = self.sb.tokens.lookup(token)
        return grant.subject if grant else None

    # -- credentials -----------------------------------------------------------------------------------
    def initial_credential(self, name: str, accounts: list[Account]) -> dict[str, Any]:
        """The vault payload the browser consent step would have produced for ``name``."""
        ids = [a.account_id for a in accounts]
        now = self.sb.clock.now()
        access = self.sb.tokens.issue("google", "access", name,
                                      timedelta(seconds=self.sb.settings.google_access_lifetime_s),
                                      "ya29.", SCOPES, ids)
        refresh = self.sb.tokens.issue("google", "refresh", name, None, "1//0g", SCOPES, ids)
        return {
            "credential": name,
            "provider": "google",
            "access_token": access.token,
            "access_token_expires_at": access.expires_at.isoformat() if access.expires_at else None,
            "refresh_token": refresh.token,
            "refresh_token_expires_at": None,
            "scopes": list(SCOPES),
            "account_ids": ids,
            "issued_at": now.isoformat(),
            "metadata": {},
        }

    # -- POST /token -----------------------------------------------------------------------------------
    def _token(self, req: Request, m: re.Match[str]) -> Response:
        ctype = (req.header("Content-Type") or "").lower()
        if req.body and "json" in ctype:
            try:
                body = {k: str(v) for k, v in req.json_object().items()}
            except ValueError:
                return _oauth_error(400, "invalid_request", "Invalid JSON payload received.")
        else:
            body = req.form()
        client_id, client_secret = body.get("client_id"), body.get("client_secret")
        basic = _basic_auth(req.header("Authorization"))
        if basic:
            client_id, client_secret = basic
        grant_type = body.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type: ")
        s = self.sb.settings
        if client_id != s.google_client_id:
            return _oauth_error(s.google_invalid_client_status, "invalid_client", "The OAuth client was not found.")
        if client_secret != s.google_client_secret:
            return _oauth_error(s.google_invalid_client_status, "invalid_client", "Unauthorized")
        if grant_type != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        token = body.get("refresh_token")
        if not token:
            return _oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
        state, grant = self.sb.tokens.check(token, "google", ("refresh",))
        if grant is not None:
            req.account = grant.subject
        if state != "ok" or grant is None or grant.used:
            return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
        access = self.sb.tokens.issue("google", "access", grant.subject,
                                      timedelta(seconds=s.google_access_lifetime_s), "ya29.",
                                      grant.scopes, grant.accounts)
        out: dict[str, Any] = {
            "access_token": access.token,
            "expires_in": s.google_access_lifetime_s,
            "scope": " ".join(grant.scopes or SCOPES),
            "token_type": "Bearer",
        }
        if s.google_rotate_refresh_token:
            self.sb.tokens.mark_used(token)
            fresh = self.sb.tokens.issue("google", "refresh", grant.subject, None, "1//0g", grant.scopes,
                                         grant.accounts)
            out["refresh_token"] = fresh.token
        return json_response(out, 200, _NO_STORE)


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        raw = base64.b64decode(header[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, _, pw = raw.partition(":")
    return unquote_plus(user), unquote_plus(pw)
