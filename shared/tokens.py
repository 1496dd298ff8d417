"""The token lifecycle: credential payloads, per-provider refresh grants, and the locked, write-ahead refresh.

Why it is built this way:

* **Predictive refresh** (hourly ``refresh_tokens``): a token is refreshed when its remaining lifetime is
  below ``max(2 x refresh interval, token_refresh_fraction x lifetime)``, so a missed run never lets it
  lapse, and a fresh token is never refreshed (TikTok's refresh-token clock does not reset anyway).
* **One refresher at a time** per credential: ``pg_advisory_lock`` on a dedicated connection, then the
  vault is re-read; if someone else rotated the token meanwhile, theirs is used (no second grant, which
  for TikTok would burn the refresh token the winner just stored).
* **Write-ahead**: a rotated refresh token is journalled to a 0600 file under ``data_dir`` the moment
  the platform answers, then written to the vault (bounded retries), and only then used. If the vault
  write keeps failing, the journal stays and the next ``get`` replays it; the response is never dropped.
* Every token is registered with ``shared.logs.register_secret`` the moment it is loaded or received.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from shared.config import Config
from shared.errors import (
    AuthError,
    FatalApiError,
    InputError,
    RetriableApiError,
    SDEError,
    VaultError,
)
from shared.logs import register_secret

__all__ = [
    "DEFAULT_LIFETIMES",
    "PROVIDERS",
    "WARNING_DAYS",
    "RefreshOutcome",
    "TokenManager",
    "TokenSet",
    "lock_key",
    "needs_refresh",
    "refresh_margin",
    "refresh_token_warnings",
]

log = logging.getLogger(__name__)

PROVIDERS = ("tiktok", "meta", "google")
#: access-token lifetimes assumed when a payload has no ``issued_at`` (TikTok 24 h, Google 1 h, Meta 60 d)
DEFAULT_LIFETIMES = {"tiktok": timedelta(hours=24), "google": timedelta(hours=1), "meta": timedelta(days=60)}
#: warn when the refresh token (Meta: the long-lived user token) dies within these many days
WARNING_DAYS = (30, 7, 1)
#: vault write attempts after a refresh before the journal becomes the last resort
VAULT_WRITE_ATTEMPTS = 4
VAULT_WRITE_BACKOFF_SECONDS = 0.5
#: the advisory lock wait is bounded: a stuck refresher must not hang every ingestion run
LOCK_TIMEOUT = "120s"

TIKTOK_REFRESH_PATH = "/open_api/v1.3/tt_user/oauth2/refresh_token/"
#: TikTok business codes (api-contracts §1.2): re-authorize / retry
TIKTOK_REAUTH_CODES = frozenset({40103, 40107, 40130})
TIKTOK_RETRIABLE_CODES = frozenset({40100, 40132, 50000, 50002, *range(51000, 51049)})
#: Google OAuth error codes that mean "the refresh token is dead" (api-contracts §3.3)
GOOGLE_REAUTH_ERRORS = frozenset({"invalid_grant"})
#: Meta error codes (api-contracts §2.3): token invalid / transient
META_TOKEN_CODES = frozenset({190, 102})
META_RETRIABLE_CODES = frozenset({1, 2, 4, 17, 32, 341, 613, 80000, 80001, 80002, 80003, 80004, 80005, 80006, 80008})


# ------------------------------------------------------------------------------------------------
# The credential payload
# ------------------------------------------------------------------------------------------------


def _parse_instant(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(name, "must be an ISO-8601 instant like 2026-11-28T08:00:00+00:00") from None
    else:
        raise InputError(name, "must be an ISO-8601 string or null")
    if parsed.tzinfo is None:
        raise InputError(name, "must include a UTC offset")
    return parsed.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


@dataclass(frozen=True)
class TokenSet:
    """One credential (vault payload, docs/architecture.md "Credentials"). ``repr`` never shows a token."""

    credential: str
    provider: str
    access_token: str = field(repr=False)
    access_token_expires_at: datetime | None = None
    refresh_token: str | None = field(default=None, repr=False)
    refresh_token_expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()
    account_ids: tuple[str, ...] = ()
    issued_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)

    @property
    def page_tokens(self) -> dict[str, str]:
        """Meta: page id -> page token derived from the user token."""
        return dict(self.metadata.get("page_tokens") or {})

    def secrets(self) -> list[str]:
        """Every token value in this set (for redaction)."""
        out = [self.access_token, self.refresh_token or ""]
        out += [t for t in self.page_tokens.values() if isinstance(t, str)]
        return [s for s in out if s]

    def register(self) -> TokenSet:
        for s in self.secrets():
            register_secret(s)
        return self

    def holds(self, token: str) -> bool:
        """True when ``token`` is this set's access token or one of its page tokens."""
        return bool(token) and (token == self.access_token or token in self.page_tokens.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "credential": self.credential,
            "provider": self.provider,
            "access_token": self.access_token,
            "access_token_expires_at": _iso(self.access_token_expires_at),
            "refresh_token": self.refresh_token,
            "refresh_token_expires_at": _iso(self.refresh_token_expires_at),
            "scopes": list(self.scopes),
            "account_ids": list(self.account_ids),
            "issued_at": _iso(self.issued_at),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, credential: str | None = None) -> TokenSet:
        """Validate a payload; any problem raises ``InputError`` naming the field (never echoing a value)."""
        if not isinstance(data, Mapping):
            raise InputError("credential", "payload must be a JSON object")
        known = {"credential", "provider", "access_token", "access_token_expires_at", "refresh_token",
                 "refresh_token_expires_at", "scopes", "account_ids", "issued_at", "metadata"}
        for key in data:
            if key not in known:
                raise InputError(str(key), f"unknown field; allowed: {', '.join(sorted(known))}")
        name = data.get("credential", credential)
        if credential is not None and name != credential:
            raise InputError("credential", f"payload names {name!r} but the credential is {credential!r}")
        if not isinstance(name, str) or not name.strip():
            raise InputError("credential", "is required (a non-empty string)")
        provider = data.get("provider")
        if provider not in PROVIDERS:
            raise InputError("provider", f"must be one of {', '.join(PROVIDERS)}")
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise InputError("access_token", "is required (a non-empty string)")
        refresh = data.get("refresh_token")
        if refresh is not None and (not isinstance(refresh, str) or not refresh):
            raise InputError("refresh_token", "must be a non-empty string or null")
        if provider in ("tiktok", "google") and refresh is None:
            raise InputError("refresh_token", f"is required for provider {provider}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("scopes", "account_ids"):
            value = data.get(key) or []
            if isinstance(value, str):
                value = [s for s in value.replace(",", " ").split() if s]
            if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
                raise InputError(key, "must be a list of strings")
            lists[key] = tuple(str(v) for v in value)
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise InputError("metadata", "must be a JSON object")
        pages = metadata.get("page_tokens")
        if pages is not None and (not isinstance(pages, Mapping)
                                  or not all(isinstance(v, str) and v for v in pages.values())):
            raise InputError("metadata.page_tokens", "must map page ids to non-empty token strings")
        return cls(
            credential=name.strip(),
            provider=provider,
            access_token=access,
            access_token_expires_at=_parse_instant(data.get("access_token_expires_at"), "access_token_expires_at"),
            refresh_token=refresh,
            refresh_token_expires_at=_parse_instant(data.get("refresh_token_expires_at"), "refresh_token_expires_at"),
            scopes=lists["scopes"],
            account_ids=lists["account_ids"],
            issued_at=_parse_instant(data.get("issued_at"), "issued_at"),
            metadata=dict(metadata),
        )


# ------------------------------------------------------------------------------------------------
# The predictive rule and warnings
# ------------------------------------------------------------------------------------------------


def refresh_margin(ts: TokenSet, config: Config) -> timedelta:
    """``max(2 x refresh interval, fraction x lifetime)``; lifetime from issued_at, else the provider default.

    TikTok 24 h -> 4.8 h; Google 1 h -> 2 h (refreshed every run); Meta user token 60 d -> 12 days.
    """
    lifetime = DEFAULT_LIFETIMES[ts.provider]
    if ts.issued_at and ts.access_token_expires_at and ts.access_token_expires_at > ts.issued_at:
        lifetime = ts.access_token_expires_at - ts.issued_at
    return max(timedelta(minutes=2 * config.token_refresh_interval_minutes), lifetime * config.token_refresh_fraction)


def needs_refresh(ts: TokenSet, config: Config, now: datetime) -> bool:
    """True when the access token is inside its refresh margin. No expiry (Meta page tokens) = fresh."""
    if ts.access_token_expires_at is None:
        return False
    return ts.access_token_expires_at - now < refresh_margin(ts, config)


def reauthorization_deadline(ts: TokenSet) -> datetime | None:
    """When a human must re-authorize: the refresh token's expiry (Meta: the long-lived user token's)."""
    if ts.refresh_token_expires_at is not None:
        return ts.refresh_token_expires_at
    if ts.provider == "meta":
        return ts.access_token_expires_at
    return None


def refresh_token_warnings(ts: TokenSet, config: Config, now: datetime) -> list[str]:
    """One warning at the tightest of 30 / 7 / 1 days before the re-authorization deadline.

    Meta renews its user token itself 12 days ahead, so for Meta only a renewal that is overdue warns
    (the 30-day level would fire every hour for 18 days of a healthy token).
    """
    deadline = reauthorization_deadline(ts)
    if deadline is None:
        return []
    left = deadline - now
    if left <= timedelta(0):
        return [f"refresh_token_expired: the {ts.provider} authorization of {ts.credential} ended at "
                f"{_iso(deadline)}; re-authorize the account"]
    if ts.provider == "meta" and ts.refresh_token_expires_at is None and left >= refresh_margin(ts, config):
        return []
    for days in sorted(WARNING_DAYS):
        if left <= timedelta(days=days):
            return [f"refresh_token_expires_within_{days}d: the {ts.provider} authorization of {ts.credential} "
                    f"ends at {_iso(deadline)} ({left.total_seconds() / 86400:.1f} days left); "
                    f"re-authorize before then"]
    return []


def lock_key(credential: str) -> int:
    """Stable signed 64-bit key for ``pg_advisory_lock`` (same in every process and Python version)."""
    digest = hashlib.blake2b(b"sde-token:" + credential.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass
class RefreshOutcome:
    """What ``ensure_fresh`` did for one credential (never a token)."""

    credential: str
    outcome: str  # refreshed | fresh | needs_reauthorization | error | due (dry run only)
    provider: str | None = None
    expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None
    warnings: list[str] = field(default_factory=list)
    account_ids: list[str] = field(default_factory=list)
    error_class: str | None = None
    error_message: str | None = None
    retriable: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in ("refreshed", "fresh", "due")

    def to_json(self) -> dict[str, Any]:
        return {
            "credential": self.credential,
            "provider": self.provider,
            "outcome": self.outcome,
            "expires_at": _iso(self.expires_at),
            "refresh_expires_at": _iso(self.refresh_expires_at),
            "warnings": list(self.warnings),
            "account_ids": list(self.account_ids),
            "error_class": self.error_class,
            "error_message": self.error_message,
        }


# ------------------------------------------------------------------------------------------------
# Provider grants
# ------------------------------------------------------------------------------------------------


class _Reauthorize(FatalApiError):
    """The platform says the refresh grant is dead: a human must re-authorize."""

    error_class = "needs_reauthorization"


def _json_body(response: requests.Response) -> Any:
    return response.json()


def _envelope_request_id(body: Any) -> str | None:
    return body.get("request_id") if isinstance(body, dict) else None


def classify_tiktok_oauth(response: requests.Response) -> Any:
    """TikTok OAuth: HTTP status first (gateway errors), then the envelope ``code`` of the 200 body."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise RetriableApiError("gateway error", platform="tiktok", status=status)
    body = _json_body(response)
    code = body.get("code") if isinstance(body, dict) else None
    rid = _envelope_request_id(body)
    if status >= 400 and not isinstance(code, int):
        raise FatalApiError("HTTP error", platform="tiktok", status=status, request_id=rid)
    if code == 0 and 200 <= status < 300:
        data = body.get("data")
        if not isinstance(data, dict):
            raise FatalApiError("refresh answer has no data object", platform="tiktok", status=status, code=0)
        for key in ("access_token", "refresh_token"):
            if isinstance(data.get(key), str):
                register_secret(data[key])
        return data
    if code in TIKTOK_REAUTH_CODES:
        raise _Reauthorize("refresh token expired, invalid or revoked", platform="tiktok", status=status,
                           code=code, request_id=rid)
    if code in TIKTOK_RETRIABLE_CODES:
        raise RetriableApiError("throttled or temporary error", platform="tiktok", status=status, code=code,
                                request_id=rid)
    raise FatalApiError("refresh rejected", platform="tiktok", status=status, code=code, request_id=rid)


def classify_google_oauth(response: requests.Response) -> Any:
    """Google token endpoint: 200 JSON; 400 ``invalid_grant`` = dead refresh token; 429/5xx retriable."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise RetriableApiError("token endpoint unavailable", platform="google", status=status)
    body = _json_body(response)
    if 200 <= status < 300 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        register_secret(body["access_token"])
        if isinstance(body.get("refresh_token"), str):
            register_secret(body["refresh_token"])
        return body
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, dict):  # Google JSON error shape {"error": {"status": ...}}
        code = code.get("status")
    if code in GOOGLE_REAUTH_ERRORS:
        raise _Reauthorize("refresh token expired or revoked", platform="google", status=status, code=code)
    raise FatalApiError("token refresh rejected", platform="google", status=status, code=code)


def classify_meta_oauth(response: requests.Response) -> Any:
    """Graph API: ``error.code`` 190/102 = token invalid; throttle codes and ``is_transient`` retriable."""
    status = response.status_code
    try:
        body = _json_body(response)
    except ValueError:
        if status == 429 or status >= 500:
            raise RetriableApiError("server error", platform="meta", status=status) from None
        raise
    error = body.get("error") if isinstance(body, dict) else None
    if 200 <= status < 300 and not error:
        if isinstance(body, dict) and isinstance(body.get("access_token"), str):
            register_secret(body["access_token"])
        return body
    error = error if isinstance(error, dict) else {}
    code, rid = error.get("code"), error.get("fbtrace_id")
    if code in META_TOKEN_CODES:
        raise _Reauthorize("user token invalid or expired", platform="meta", status=status, code=code,
                           request_id=rid)
    if code in META_RETRIABLE_CODES or error.get("is_transient") or status == 429 or status >= 500:
        raise RetriableApiError("throttled or temporary error", platform="meta", status=status, code=code,
                                request_id=rid)
    raise FatalApiError("request rejected", platform="meta", status=status, code=code, request_id=rid)


_CLASSIFIERS: dict[str, Callable[[requests.Response], Any]] = {
    "tiktok": classify_tiktok_oauth,
    "google": classify_google_oauth,
    "meta": classify_meta_oauth,
}


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def refresh_tiktok(session: Any, config: Config, ts: TokenSet, now: datetime) -> TokenSet:
    """``POST tt_user/oauth2/refresh_token/`` (JSON body, no Access-Token header)."""
    config.require("tiktok_client_id", "tiktok_client_secret")
    if not ts.refresh_token:
        raise AuthError(f"{ts.credential}: no refresh token stored; re-authorize the account")
    data = session.request(
        "POST", config.tiktok_base_url.rstrip("/") + TIKTOK_REFRESH_PATH, endpoint="oauth2/refresh_token",
        json={"client_id": config.tiktok_client_id, "client_secret": config.tiktok_client_secret,
              "grant_type": "refresh_token", "refresh_token": ts.refresh_token},
        account=ts.credential,
    )
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise FatalApiError("refresh answer has no access_token", platform="tiktok", code=0)
    expires_in = _seconds(data.get("expires_in"))
    refresh_in = _seconds(data.get("refresh_token_expires_in"))
    metadata = dict(ts.metadata)
    if data.get("open_id"):
        metadata["open_id"] = data["open_id"]
    scope = data.get("scope")
    return replace(
        ts,
        access_token=access,
        access_token_expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        # persist whatever refresh token the latest response carries (it may rotate) [U]
        refresh_token=data.get("refresh_token") or ts.refresh_token,
        # counts down from the authorization, not from this refresh: store it from EVERY response
        refresh_token_expires_at=now + timedelta(seconds=refresh_in) if refresh_in is not None
        else ts.refresh_token_expires_at,
        scopes=tuple(s for s in scope.split(",") if s) if isinstance(scope, str) and scope else ts.scopes,
        issued_at=now,
        metadata=metadata,
    )


def refresh_google(session: Any, config: Config, ts: TokenSet, now: datetime) -> TokenSet:
    """Form-encoded ``grant_type=refresh_token`` at ``config.google_token_url``; the refresh token stays."""
    config.require("google_client_id", "google_client_secret")
    if not ts.refresh_token:
        raise AuthError(f"{ts.credential}: no refresh token stored; re-authorize the account")
    data = session.request(
        "POST", config.google_token_url, endpoint="token",
        data={"client_id": config.google_client_id, "client_secret": config.google_client_secret,
              "refresh_token": ts.refresh_token, "grant_type": "refresh_token"},
        account=ts.credential,
    )
    expires_in = _seconds(data.get("expires_in"))
    scope = data.get("scope")
    return replace(
        ts,
        access_token=data["access_token"],
        access_token_expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        refresh_token=data.get("refresh_token") or ts.refresh_token,
        scopes=tuple(scope.split()) if isinstance(scope, str) and scope else ts.scopes,
        issued_at=now,
    )


def refresh_meta(session: Any, config: Config, ts: TokenSet, now: datetime) -> TokenSet:
    """Exchange the long-lived user token (``fb_exchange_token``), then re-derive every page token.

    Secrets travel as query parameters here (the contract's GET); ``ApiSession`` logs only sanitized URLs.
    Page tokens are read with the token in an ``Authorization`` header, not in the URL.
    """
    config.require("meta_app_id", "meta_app_secret")
    graph = config.meta_graph_url
    data = session.request(
        "GET", f"{graph}/oauth/access_token", endpoint="oauth/access_token",
        params={"grant_type": "fb_exchange_token", "client_id": config.meta_app_id,
                "client_secret": config.meta_app_secret, "fb_exchange_token": ts.access_token},
        account=ts.credential,
    )
    user_token = data.get("access_token")
    if not isinstance(user_token, str) or not user_token:
        raise FatalApiError("exchange answer has no access_token", platform="meta")
    expires_in = _seconds(data.get("expires_in"))
    pages: dict[str, str] = {}
    for page_id in ts.page_tokens:
        page = session.request(
            "GET", f"{graph}/{page_id}", endpoint="page_access_token", params={"fields": "access_token"},
            headers={"Authorization": f"Bearer {user_token}"}, account=ts.credential,
        )
        token = page.get("access_token") if isinstance(page, dict) else None
        if not isinstance(token, str) or not token:
            raise FatalApiError(f"page {page_id} answered without an access_token (missing page role?)",
                                platform="meta")
        register_secret(token)
        pages[page_id] = token
    metadata = dict(ts.metadata)
    if ts.page_tokens:
        metadata["page_tokens"] = pages
    return replace(
        ts,
        access_token=user_token,
        access_token_expires_at=now + timedelta(seconds=expires_in) if expires_in is not None
        else now + DEFAULT_LIFETIMES["meta"],
        issued_at=now,
        metadata=metadata,
    )


REFRESHERS: dict[str, Callable[[Any, Config, TokenSet, datetime], TokenSet]] = {
    "tiktok": refresh_tiktok,
    "google": refresh_google,
    "meta": refresh_meta,
}


# ------------------------------------------------------------------------------------------------
# The manager
# ------------------------------------------------------------------------------------------------


class TokenManager:
    """Reads credentials from the vault and refreshes them: predictively or after a rejection.

    Args:
        config: settings (client ids/secrets, endpoints, refresh rule, ``data_dir`` for the journal).
        vault: where credentials live.
        connect: returns the database connection that carries the advisory lock of one refresh (and
            the ``social.token_state`` upsert). Default: a NEW dedicated connection per refresh
            (``shared.db.connect``), closed afterwards. A caller-supplied factory is treated as lending
            its connection (not closed) unless ``close_connections=True``.
        session: optional ``{provider: ApiSession}`` (tests inject counters or fakes).
    """

    def __init__(self, config: Config, vault: Any, connect: Callable[[], Any] | None = None, *,
                 session: Mapping[str, Any] | None = None, sleep: Callable[[float], None] = time.sleep,
                 close_connections: bool | None = None) -> None:
        self.config = config
        self.vault = vault
        self._close_connections = connect is None if close_connections is None else close_connections
        if connect is None:
            from shared import db

            def connect() -> Any:
                return db.connect(config)

        self._connect = connect
        self._sessions: dict[str, Any] = dict(session or {})
        self._sessions_lock = threading.Lock()
        self._sleep = sleep
        self.journal_dir = Path(config.data_dir) / "token-journal"
        #: test hook: called with the new TokenSet after the platform answered, before any persistence
        self.after_platform_answer: Callable[[TokenSet], None] | None = None

    # -- sessions -------------------------------------------------------------------------------
    def session(self, provider: str) -> Any:
        with self._sessions_lock:
            if provider not in self._sessions:
                from shared.http import ApiSession

                self._sessions[provider] = ApiSession(provider, self.config, classify=_CLASSIFIERS[provider])
            return self._sessions[provider]

    # -- reading --------------------------------------------------------------------------------
    def get(self, credential: str) -> TokenSet:
        """The credential from the vault (``versions/latest``, every call), after replaying any journal."""
        self._recover(credential)
        payload = self.vault.read(credential)
        _register_payload(payload)
        try:
            return TokenSet.from_json(payload, credential=credential).register()
        except InputError as exc:
            raise VaultError(f"vault {credential}: stored credential is invalid: {exc}") from None

    # -- predictive -----------------------------------------------------------------------------
    def ensure_fresh(self, credential: str, *, force: bool = False, dry_run: bool = False) -> RefreshOutcome:
        """Refresh when inside the margin (or ``force``); never raises for one credential's failure."""
        now = self.config.now()
        outcome = RefreshOutcome(credential=credential, outcome="error")
        ts: TokenSet | None = None
        try:
            ts = self.get(credential)
            outcome.provider = ts.provider
            if not force and not needs_refresh(ts, self.config, now):
                outcome.outcome = "fresh"
            elif dry_run:
                outcome.outcome = "due"
            else:
                ts, refreshed = self._locked_refresh(credential, seen=ts, force=force)
                outcome.outcome = "refreshed" if refreshed else "fresh"
        except AuthError as exc:
            outcome.outcome, outcome.error_class, outcome.error_message = (
                "needs_reauthorization", exc.error_class, str(exc))
        except SDEError as exc:
            outcome.error_class, outcome.error_message, outcome.retriable = exc.error_class, str(exc), exc.retriable
            if isinstance(exc, VaultError) and getattr(exc, "error_class", "") == "vault_missing":
                outcome.outcome = "needs_reauthorization"
        if ts is not None:
            outcome.expires_at = ts.access_token_expires_at
            outcome.refresh_expires_at = reauthorization_deadline(ts)
            outcome.account_ids = list(ts.account_ids)
            outcome.warnings = refresh_token_warnings(ts, self.config, now)
        if not dry_run:
            self._record_state(outcome)
        return outcome

    # -- reactive -------------------------------------------------------------------------------
    def refresh_after_rejection(self, credential: str, rejected_access_token: str) -> TokenSet:
        """The platform rejected ``rejected_access_token``: return a token set that does not hold it.

        Under the credential's lock: if the vault already holds another token (a concurrent refresher
        won), that one is returned without calling the platform; else refresh, persist, return.
        Raises ``AuthError`` when the refresh grant itself is dead.
        """
        try:
            ts, refreshed = self._locked_refresh(credential, rejected=rejected_access_token)
        except AuthError as exc:
            self._record_state(RefreshOutcome(credential, "needs_reauthorization", error_class=exc.error_class,
                                              error_message=str(exc)))
            raise
        if refreshed:
            self._record_state(RefreshOutcome(credential, "refreshed", provider=ts.provider,
                                              expires_at=ts.access_token_expires_at,
                                              refresh_expires_at=reauthorization_deadline(ts)))
        return ts

    # -- the locked path ------------------------------------------------------------------------
    def _locked_refresh(self, credential: str, *, seen: TokenSet | None = None, rejected: str | None = None,
                        force: bool = False) -> tuple[TokenSet, bool]:
        key = lock_key(credential)
        try:
            conn = self._connect()
        except SDEError as exc:
            raise VaultError(f"{credential}: cannot open the lock connection: {exc}") from exc
        try:
            try:
                conn.run(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
                conn.run("SELECT pg_advisory_lock(:k)", k=key)
            except Exception as exc:
                raise VaultError(f"{credential}: cannot take the refresh lock: {type(exc).__name__}") from exc
            try:
                current = self.get(credential)
                now = self.config.now()
                if rejected is not None:
                    if not current.holds(rejected):
                        log.info("%s: another refresher already replaced the rejected token", credential)
                        return current, False
                elif seen is not None and current.access_token != seen.access_token:
                    log.info("%s: another refresher already rotated the token", credential)
                    return current, False
                elif not force and not needs_refresh(current, self.config, now):
                    return current, False
                return self._refresh_and_persist(current, now), True
            finally:
                with contextlib.suppress(Exception):
                    conn.run("SELECT pg_advisory_unlock(:k)", k=key)
        finally:
            self._release(conn)

    def _release(self, conn: Any) -> None:
        if self._close_connections:
            with contextlib.suppress(Exception):
                conn.close()

    def _refresh_and_persist(self, current: TokenSet, now: datetime) -> TokenSet:
        deadline = current.refresh_token_expires_at
        if deadline is not None and deadline <= now and current.provider != "meta":
            raise AuthError(f"{current.credential}: the {current.provider} refresh token expired at "
                            f"{_iso(deadline)}; re-authorize the account")
        refresher = REFRESHERS[current.provider]
        log.info("%s: refreshing the %s token", current.credential, current.provider,
                 extra={"fields": {"credential": current.credential, "provider": current.provider}})
        try:
            new = refresher(self.session(current.provider), self.config, current, now)
        except _Reauthorize as exc:
            raise AuthError(f"{current.credential}: {exc}; re-authorize the account") from exc
        new.register()
        if self.after_platform_answer is not None:
            self.after_platform_answer(new)
        self._persist(new)
        return new

    # -- write-ahead persistence ----------------------------------------------------------------
    def _journal_path(self, credential: str) -> Path:
        return self.journal_dir / f"{credential}.json"

    def _journal_write(self, ts: TokenSet) -> Path | None:
        """Durably write the new set to a 0600 file (atomic rename); best effort, never raises."""
        path = self._journal_path(ts.credential)
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(ts.to_json(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return path
        except OSError as exc:
            log.error("%s: cannot write the token journal under %s: %s", ts.credential, self.journal_dir,
                      exc.strerror or type(exc).__name__)
            return None

    def _persist(self, ts: TokenSet) -> int:
        """Journal, then vault write with bounded retries; on final failure keep the journal and raise."""
        journal = self._journal_write(ts)
        last: BaseException | None = None
        for attempt in range(1, VAULT_WRITE_ATTEMPTS + 1):
            try:
                version = self.vault.write(ts.credential, ts.to_json())
            except Exception as exc:  # whatever the backend raises, the response must not be dropped
                last = exc
                log.warning("%s: vault write attempt %d of %d failed: %s", ts.credential, attempt,
                            VAULT_WRITE_ATTEMPTS, exc)
                if attempt < VAULT_WRITE_ATTEMPTS:
                    self._sleep(VAULT_WRITE_BACKOFF_SECONDS * 2 ** (attempt - 1))
                continue
            if journal is not None:
                with contextlib.suppress(OSError):
                    journal.unlink()
            return version
        where = f"kept in the recovery file {journal}" if journal else "and the recovery file could not be written"
        raise VaultError(f"{ts.credential}: the refreshed credential could not be stored in the vault after "
                         f"{VAULT_WRITE_ATTEMPTS} attempts; {where}; the next read replays it") from last

    def _recover(self, credential: str) -> None:
        """Replay a journal left by a refresh whose vault write failed (or whose process died)."""
        path = self._journal_path(credential)
        if not path.exists():
            return
        try:
            pending = TokenSet.from_json(json.loads(path.read_text(encoding="utf-8")), credential=credential)
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable token journal %s (%s); leaving it for a human", credential, path,
                      type(exc).__name__)
            return
        pending.register()
        try:
            stored: TokenSet | None = TokenSet.from_json(self.vault.read(credential), credential=credential)
        except InputError:
            stored = None
        except VaultError as exc:
            if exc.error_class != "vault_missing":
                raise
            stored = None
        if stored is not None:
            stored.register()
        newer = stored is None or (pending.access_token != stored.access_token and (
            stored.issued_at is None or (pending.issued_at is not None and pending.issued_at >= stored.issued_at)))
        if newer:
            log.warning("%s: replaying the token journal into the vault (an earlier vault write failed)",
                        credential)
            self.vault.write(credential, pending.to_json())
        with contextlib.suppress(OSError):
            path.unlink()

    # -- state ----------------------------------------------------------------------------------
    def _record_state(self, outcome: RefreshOutcome) -> None:
        """Upsert ``social.token_state`` (best effort: the vault, not this table, is the source of truth)."""
        try:
            conn = self._connect()
        except Exception as exc:
            log.warning("%s: cannot record token state: %s", outcome.credential, exc)
            return
        try:
            conn.run(
                "INSERT INTO social.token_state AS t (credential, provider, outcome, error_class, error_message,"
                " access_expires_at, refresh_expires_at, warnings, last_checked_at, last_refreshed_at, updated_at)"
                " VALUES (:c, :p, :o, :ec, :em, :ae, :re, CAST(:w AS jsonb), now(),"
                " CASE WHEN :o = 'refreshed' THEN now() END, now())"
                " ON CONFLICT (credential) DO UPDATE SET provider = COALESCE(EXCLUDED.provider, t.provider),"
                " outcome = EXCLUDED.outcome, error_class = EXCLUDED.error_class,"
                " error_message = EXCLUDED.error_message,"
                " access_expires_at = COALESCE(EXCLUDED.access_expires_at, t.access_expires_at),"
                " refresh_expires_at = COALESCE(EXCLUDED.refresh_expires_at, t.refresh_expires_at),"
                " warnings = EXCLUDED.warnings, last_checked_at = now(),"
                " last_refreshed_at = COALESCE(EXCLUDED.last_refreshed_at, t.last_refreshed_at), updated_at = now()",
                c=outcome.credential, p=outcome.provider, o=outcome.outcome if outcome.outcome != "due" else "fresh",
                ec=outcome.error_class, em=(outcome.error_message or "")[:2000] or None,
                ae=outcome.expires_at, re=outcome.refresh_expires_at, w=json.dumps(outcome.warnings),
            )
        except Exception as exc:
            log.warning("%s: cannot record token state: %s", outcome.credential, type(exc).__name__)
        finally:
            self._release(conn)


def _register_payload(payload: Any) -> None:
    """Register token-looking values of a raw payload before validation can echo anything."""
    if not isinstance(payload, Mapping):
        return
    for key in ("access_token", "refresh_token"):
        if isinstance(payload.get(key), str):
            register_secret(payload[key])
    meta = payload.get("metadata")
    pages = meta.get("page_tokens") if isinstance(meta, Mapping) else None
    if isinstance(pages, Mapping):
        for v in pages.values():
            if isinstance(v, str):
                register_secret(v)


def credential_platforms(provider: str) -> tuple[str, ...]:
    """Account platforms a provider's credential serves."""
    return {"tiktok": ("tiktok",), "meta": ("facebook", "instagram"), "google": ("youtube",)}[provider]

