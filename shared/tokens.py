"""The token lifecycle: credential payloads, per-provider refresh grants, and the locked, write-ahead refresh.

Why it is built this way:

* **Predictive refresh** (hourly ``refresh_tokens``): a token is refreshed when its remaining lifetime is
  below ``max(2 x refresh interval, token_refresh_fraction x lifetime)``, so a missed run never lets it
  lapse, and a fresh token is never refreshed (TikTok's refresh-token clock does not reset anyway).
* **One refresher at a time** per credential: ``pg_advisory_lock`` on a dedicated connection, then the
  vault is re-read; if someone else rotated the token meanwhile, theirs is used (no second grant, which
  for TikTok would burn the refresh token the winner just stored).
* **Write-ahead**: a rotated refresh token is journalled to a 0600 file under ``data_dir`` the moment
  the platform answers (with the tokens it supersedes), then written to the vault (bounded retries), and
  only then used. If the vault write keeps failing, the journal stays and the next ``get`` replays it,
  under the credential's lock and only while the vault still holds the superseded tokens (an import or
  another refresher that wrote since always wins). Reads for reports (``read``, dry runs, ``tokens
  list``) never replay: they have no side effects.
* **A grant is sent once**: a refresh POST is retried only when it certainly did not reach the server's
  grant logic (connection refused, connect timeout, 429, 5xx, a throttle code). A read timeout or a lost
  2xx body is an "unknown outcome" (TikTok may have rotated the refresh token): never blindly re-sent.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from shared.auth import META_TOKEN_REJECTED_CODES
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
    "GOOGLE_TESTING_FLAG",
    "GOOGLE_TESTING_REFRESH_LIFETIME",
    "PROVIDERS",
    "WARNING_DAYS",
    "GrantSession",
    "RefreshOutcome",
    "RefreshOutcomeUnknown",
    "TokenManager",
    "TokenSet",
    "access_expiry",
    "lock_key",
    "needs_refresh",
    "prepare_import",
    "refresh_margin",
    "refresh_token_warnings",
]

log = logging.getLogger(__name__)

PROVIDERS = ("tiktok", "meta", "google")
#: documented access-token lifetimes (TikTok 24 h §1.3, Google 3600 s §3.3, Meta user token 60 d §2.2): used
#: when a payload has no ``issued_at``, and as the expiry when a refresh answer omits ``expires_in``
DEFAULT_LIFETIMES = {"tiktok": timedelta(hours=24), "google": timedelta(hours=1), "meta": timedelta(days=60)}
#: Google refresh tokens of an app whose consent screen is External + "Testing" die 7 days after consent
#: (api-contracts §3.3); ``metadata.google_testing_mode: true`` at import sets that deadline
GOOGLE_TESTING_FLAG = "google_testing_mode"
GOOGLE_TESTING_REFRESH_LIFETIME = timedelta(days=7)
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
#: Meta error codes (api-contracts §2.3): token invalid (the shared table of shared.auth) / transient
META_TOKEN_CODES = META_TOKEN_REJECTED_CODES
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
        if not isinstance(metadata.get(GOOGLE_TESTING_FLAG, False), bool):
            raise InputError(f"metadata.{GOOGLE_TESTING_FLAG}", "must be true or false")
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


def access_expiry(ts: TokenSet) -> datetime | None:
    """The access token's expiry; for TikTok/Google without one, ``issued_at`` + the documented lifetime.

    None means "never" for Meta (page tokens) and "unknown" for TikTok/Google without ``issued_at``.
    """
    if ts.access_token_expires_at is not None or ts.provider == "meta":
        return ts.access_token_expires_at
    return ts.issued_at + DEFAULT_LIFETIMES[ts.provider] if ts.issued_at else None


def needs_refresh(ts: TokenSet, config: Config, now: datetime) -> bool:
    """True when the access token is inside its refresh margin.

    No expiry: Meta (page tokens) = fresh; TikTok/Google = ``issued_at`` + default lifetime, and with no
    ``issued_at`` either the token's age is unknown, so it is refreshed (a short-lived token must not lapse).
    """
    expiry = access_expiry(ts)
    if expiry is None:
        return ts.provider != "meta"
    return expiry - now < refresh_margin(ts, config)


def reauthorization_deadline(ts: TokenSet) -> datetime | None:
    """When a human must re-authorize: the refresh token's expiry (Meta: the long-lived user token's)."""
    if ts.refresh_token_expires_at is not None:
        return ts.refresh_token_expires_at
    if ts.provider == "meta":
        return ts.access_token_expires_at
    return None


def refresh_token_warnings(ts: TokenSet, config: Config, now: datetime, *, renewal_failed: bool = False
                           ) -> list[str]:
    """One warning at the tightest of 30 / 7 / 1 days before the re-authorization deadline.

    Meta renews its user token itself 12 days ahead (the refresh margin), so a healthy Meta token does not
    warn outside that margin (the 30-day level would fire every hour for 18 days). It does warn at the
    30 / 7 / 1-day levels when the renewal is overdue (inside the margin) or when ``renewal_failed``: a
    renewal was attempted (or forced) and failed or was not possible.
    """
    deadline = reauthorization_deadline(ts)
    if deadline is None:
        return []
    left = deadline - now
    if left <= timedelta(0):
        return [f"refresh_token_expired: the {ts.provider} authorization of {ts.credential} ended at "
                f"{_iso(deadline)}; re-authorize the account"]
    if (ts.provider == "meta" and ts.refresh_token_expires_at is None and not renewal_failed
            and left >= refresh_margin(ts, config)):
        return []
    for days in sorted(WARNING_DAYS):
        if left <= timedelta(days=days):
            return [f"refresh_token_expires_within_{days}d: the {ts.provider} authorization of {ts.credential} "
                    f"ends at {_iso(deadline)} ({left.total_seconds() / 86400:.1f} days left); "
                    f"re-authorize before then"]
    return []


def prepare_import(data: Any, credential: str, now: datetime) -> tuple[TokenSet, list[str]]:
    """Validate a credential for ``tokens import``; returns it with the defaults applied, plus warnings.

    * TikTok/Google need ``access_token_expires_at`` (predictive refresh runs on it). Without it, when
      ``issued_at`` is given, the documented lifetime (24 h / 3600 s) from ``issued_at`` is applied with
      a warning; without either, the import is refused.
    * Google with ``metadata.google_testing_mode: true`` and no ``refresh_token_expires_at``: the refresh
      token dies 7 days after consent, so ``refresh_token_expires_at = issued_at (else now) + 7 days``.
    """
    ts = TokenSet.from_json(data, credential=credential)
    warnings: list[str] = []
    if ts.provider in ("tiktok", "google") and ts.access_token_expires_at is None:
        if ts.issued_at is None:
            raise InputError("access_token_expires_at", f"is required for provider {ts.provider} (or give "
                             "issued_at to assume the documented lifetime)")
        ts = replace(ts, access_token_expires_at=ts.issued_at + DEFAULT_LIFETIMES[ts.provider])
        seconds = int(DEFAULT_LIFETIMES[ts.provider].total_seconds())
        warnings.append(f"access_token_expires_at missing: assumed issued_at + {seconds} s = "
                        f"{_iso(ts.access_token_expires_at)} (the documented {ts.provider} lifetime)")
    if ts.provider == "google" and ts.metadata.get(GOOGLE_TESTING_FLAG) and ts.refresh_token_expires_at is None:
        start = ts.issued_at or now
        ts = replace(ts, refresh_token_expires_at=start + GOOGLE_TESTING_REFRESH_LIFETIME)
        warnings.append(f"{GOOGLE_TESTING_FLAG}: the refresh token of an app in testing mode dies 7 days after "
                        f"consent; refresh_token_expires_at set to {_iso(ts.refresh_token_expires_at)}")
    return ts, warnings


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


class RefreshOutcomeUnknown(FatalApiError):
    """A refresh grant may have reached the platform but its answer was lost (read timeout, dropped or
    truncated response). Not re-sent: TikTok may already have rotated (and used up) the refresh token, and
    a blind retry would meet 40107. The next scheduled run finds out (and reports 40107 if it was lost)."""

    error_class = "refresh_outcome_unknown"


def _json_body(response: requests.Response) -> Any:
    return response.json()


def _never_reached_grant(exc: RetriableApiError) -> bool:
    """True when ``exc`` proves the request never reached the grant logic, so re-sending is safe.

    Safe: a classified answer (429, 5xx, a throttle code: the server refused it), connection refused and
    connect timeouts. Unsafe: read timeouts, connections dropped after sending, lost or truncated 2xx bodies.
    """
    import urllib3.exceptions

    cause = exc.__cause__
    if cause is None or cause is exc:
        return exc.status is not None  # classify raised it from an answer
    seen: set[int] = set()
    stack: list[BaseException] = [cause]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, requests.exceptions.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError):
            return True  # urllib3's NewConnectionError (refused) is a ConnectTimeoutError too
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                stack.append(nxt)
    return False


class GrantSession:
    """Sends refresh grants through a non-retrying ``ApiSession`` and retries only what is safe to re-send.

    ``ApiSession`` retries every transport error, including a read timeout after the grant was sent; for a
    rotating refresh token that retry burns the token the platform just issued. Here a retriable failure
    is re-sent only when ``_never_reached_grant``; otherwise ``RefreshOutcomeUnknown`` is raised.
    """

    def __init__(self, session: Any, *, attempts: int, backoff_base: float, backoff_cap: float,
                 sleep: Callable[[float], None]) -> None:
        self.session = session
        self.attempts = max(1, attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep

    @property
    def counter(self) -> Any:
        return self.session.counter

    def request(self, method: str, url: str, **kw: Any) -> Any:
        slept = 0.0
        for attempt in range(self.attempts):
            try:
                return self.session.request(method, url, **kw)
            except RetriableApiError as exc:
                if not _never_reached_grant(exc):
                    raise RefreshOutcomeUnknown(
                        "the refresh request may have reached the platform but its answer was lost; not re-sent "
                        "(a rotated refresh token could be burnt); the next run retries",
                        platform=exc.platform, status=exc.status, code=exc.code, endpoint=exc.endpoint,
                    ) from exc
                delay = exc.retry_after if exc.retry_after is not None else min(
                    self.backoff_cap, self.backoff_base * 2**attempt)
                if attempt + 1 >= self.attempts or slept + delay > self.backoff_cap:
                    raise
                log.warning("refresh grant refused before processing (%s); re-sending in %.2f s", exc, delay)
                self._sleep(delay)
                slept += delay
        raise AssertionError("unreachable")  # pragma: no cover


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
        # no expires_in: the documented 24 h, so predictive refresh still works
        access_token_expires_at=now + (timedelta(seconds=expires_in) if expires_in is not None
                                       else DEFAULT_LIFETIMES["tiktok"]),
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
        # no expires_in: the documented 3600 s
        access_token_expires_at=now + (timedelta(seconds=expires_in) if expires_in is not None
                                       else DEFAULT_LIFETIMES["google"]),
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


class _CredentialLock:
    """``pg_advisory_lock(lock_key(credential))`` on a dedicated connection; can be checked and re-taken."""

    def __init__(self, manager: TokenManager, credential: str) -> None:
        self.manager = manager
        self.credential = credential
        self.key = lock_key(credential)
        self.conn: Any = None

    def acquire(self) -> None:
        try:
            conn = self.manager._connect()
        except SDEError as exc:
            raise VaultError(f"{self.credential}: cannot open the lock connection: {exc}") from exc
        except Exception as exc:
            raise VaultError(f"{self.credential}: cannot open the lock connection: {type(exc).__name__}") from exc
        try:
            conn.run("SELECT set_config('lock_timeout', :v, false)", v=LOCK_TIMEOUT)
            conn.run("SELECT pg_advisory_lock(:k)", k=self.key)
        except Exception as exc:
            self.manager._release(conn)
            raise VaultError(f"{self.credential}: cannot take the refresh lock: {type(exc).__name__}") from exc
        self.conn = conn

    def alive(self) -> bool:
        """The lock connection still answers (a dropped connection has lost the lock server-side)."""
        try:
            return self.conn is not None and self.conn.run("SELECT 1") == [[1]]
        except Exception:
            return False

    def reacquire(self) -> None:
        dead, self.conn = self.conn, None
        if dead is not None:
            self.manager._release(dead)
        self.acquire()

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.run("SELECT pg_advisory_unlock(:k)", k=self.key)
        self.manager._release(conn)


class TokenManager:
    """Reads credentials from the vault and refreshes them: predictively or after a rejection.

    Args:
        config: settings (client ids/secrets, endpoints, refresh rule, ``data_dir`` for the journal).
        vault: where credentials live.
        connect: returns the database connection that carries the advisory lock of one refresh (and
            the ``social.token_state`` upsert). Default: a NEW dedicated connection per refresh
            (``shared.db.connect``), closed afterwards. A caller-supplied factory is treated as lending
            its connection (not closed) unless ``close_connections=True``.
        session: optional ``{provider: session}`` (tests inject counters or fakes); used as given.
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
        """The provider's grant session. TikTok/Google grants are POSTs that may rotate the refresh token:
        a ``GrantSession`` over a non-retrying ``ApiSession``. Meta's exchange is an idempotent GET."""
        with self._sessions_lock:
            if provider not in self._sessions:
                from shared.http import ApiSession

                api = ApiSession(provider, self.config, classify=_CLASSIFIERS[provider], sleep=self._sleep)
                if provider in ("tiktok", "google"):
                    api.max_retries = 0
                    self._sessions[provider] = GrantSession(
                        api, attempts=self.config.http_max_retries + 1,
                        backoff_base=self.config.http_backoff_base_seconds,
                        backoff_cap=self.config.http_backoff_cap_seconds, sleep=self._sleep)
                else:
                    self._sessions[provider] = api
            return self._sessions[provider]

    # -- reading --------------------------------------------------------------------------------
    def read(self, credential: str) -> TokenSet:
        """The credential from the vault (``versions/latest``), with no side effect: never replays a journal.

        For reports (``tokens list``, dry runs)."""
        payload = self.vault.read(credential)
        _register_payload(payload)
        try:
            return TokenSet.from_json(payload, credential=credential).register()
        except InputError as exc:
            raise VaultError(f"vault {credential}: stored credential is invalid: {exc}") from None

    def get(self, credential: str) -> TokenSet:
        """The credential to use (``versions/latest``, every call). A pending journal is first replayed
        under the credential's lock (only while the vault still holds the tokens it supersedes)."""
        if self._journal_path(credential).exists():
            with self._locked(credential):
                self._recover(credential)
        return self.read(credential)

    # -- predictive -----------------------------------------------------------------------------
    def ensure_fresh(self, credential: str, *, force: bool = False, dry_run: bool = False) -> RefreshOutcome:
        """Refresh when inside the margin (or ``force``); never raises for one credential's failure.

        A dry run reads without side effects (no journal replay, no state written, no platform call).
        """
        now = self.config.now()
        outcome = RefreshOutcome(credential=credential, outcome="error")
        ts: TokenSet | None = None
        attempted = False
        try:
            ts = self.read(credential) if dry_run else self.get(credential)
            outcome.provider = ts.provider
            dead = ts.refresh_token_expires_at
            if dead is not None and dead <= now:
                # the refresh grant is gone: a human must act now, even while the access token still works
                outcome.outcome, outcome.error_class = "needs_reauthorization", AuthError.error_class
                usable = access_expiry(ts)
                outcome.error_message = (
                    f"{credential}: the {ts.provider} refresh token expired at {_iso(dead)}; re-authorize the "
                    "account" + (f" (the current access token stays usable until {_iso(usable)})"
                                 if usable is not None and usable > now else ""))
            elif not force and not needs_refresh(ts, self.config, now):
                outcome.outcome = "fresh"
            elif dry_run:
                outcome.outcome = "due"
            else:
                attempted = True
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
            outcome.expires_at = access_expiry(ts)
            outcome.refresh_expires_at = reauthorization_deadline(ts)
            outcome.account_ids = list(ts.account_ids)
            outcome.warnings = refresh_token_warnings(ts, self.config, now,
                                                      renewal_failed=attempted and not outcome.ok)
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
            self.record_reauthorization(credential, str(exc))
            raise
        if refreshed:
            self._record_state(RefreshOutcome(credential, "refreshed", provider=ts.provider,
                                              expires_at=ts.access_token_expires_at,
                                              refresh_expires_at=reauthorization_deadline(ts)))
        return ts

    def record_reauthorization(self, credential: str, message: str) -> None:
        """Record ``needs_reauthorization`` in ``social.token_state`` (``tokens list``: "needs attention")."""
        self._record_state(RefreshOutcome(credential, "needs_reauthorization",
                                          error_class=AuthError.error_class, error_message=message))

    # -- import ---------------------------------------------------------------------------------
    def import_credential(self, ts: TokenSet) -> int:
        """Store a freshly authorized credential (``tokens import``); returns the new vault version.

        Under the credential's lock (best effort: an import must work while the database is down): any
        journal of the credential is deleted first, so an older refresh can never be replayed over it.
        """
        lock = _CredentialLock(self, ts.credential)
        try:
            lock.acquire()
        except VaultError as exc:
            log.warning("%s: importing without the refresh lock: %s", ts.credential, exc)
        try:
            self.discard_journal(ts.credential)
            return int(self.vault.write(ts.credential, ts.to_json()))
        finally:
            lock.release()

    # -- the locked path ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, credential: str) -> Iterator[_CredentialLock]:
        lock = _CredentialLock(self, credential)
        lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    def _locked_refresh(self, credential: str, *, seen: TokenSet | None = None, rejected: str | None = None,
                        force: bool = False) -> tuple[TokenSet, bool]:
        with self._locked(credential) as lock:
            self._recover(credential)
            current = self.read(credential)
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
            return self._refresh_and_persist(current, now, lock)

    def _release(self, conn: Any) -> None:
        if self._close_connections:
            with contextlib.suppress(Exception):
                conn.close()

    def _changed_since(self, current: TokenSet) -> TokenSet | None:
        """The stored set when its tokens differ from ``current`` (someone else wrote), else None."""
        try:
            stored = self.read(current.credential)
        except SDEError as exc:
            log.warning("%s: cannot re-read the vault: %s", current.credential, exc)
            return None
        if stored.access_token != current.access_token or stored.refresh_token != current.refresh_token:
            return stored
        return None

    def _refresh_and_persist(self, current: TokenSet, now: datetime, lock: _CredentialLock
                             ) -> tuple[TokenSet, bool]:
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
            # a re-authorization code may just mean another refresher (outside our lock: a dropped lock,
            # another database) rotated the grant first: if the vault moved on, use theirs
            theirs = self._changed_since(current)
            if theirs is not None:
                log.warning("%s: the platform refused the stored grant (%s) but the vault holds newer tokens; "
                            "using them", current.credential, exc.code)
                return theirs, False
            raise AuthError(f"{current.credential}: {exc}; re-authorize the account") from exc
        new.register()
        if self.after_platform_answer is not None:
            self.after_platform_answer(new)
        journal = self._journal_write(new, supersedes=current)
        if not lock.alive():
            # the lock died with its connection: someone else may have refreshed meanwhile
            log.warning("%s: the refresh lock connection dropped; re-acquiring before writing", current.credential)
            lock.reacquire()
            theirs = self._changed_since(current)
            if theirs is not None:
                log.warning("%s: the vault changed while the lock was lost; keeping the stored credential",
                            current.credential)
                if journal is not None:
                    with contextlib.suppress(OSError):
                        journal.unlink()
                return theirs, False
        self._persist(new, journal)
        return new, True

    # -- write-ahead persistence ----------------------------------------------------------------
    def _journal_path(self, credential: str) -> Path:
        return self.journal_dir / f"{credential}.json"

    def discard_journal(self, credential: str) -> bool:
        """Delete the credential's journal (a fresh import supersedes it); True when there was one."""
        try:
            self._journal_path(credential).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise VaultError(f"{credential}: cannot delete the token journal: {exc.strerror}") from None
        log.warning("%s: discarded a pending token journal (superseded by an import)", credential)
        return True

    def _journal_write(self, ts: TokenSet, *, supersedes: TokenSet) -> Path | None:
        """Durably write the new set and the tokens it supersedes to a 0600 file (atomic rename); best
        effort, never raises."""
        path = self._journal_path(ts.credential)
        record = {"format": 2, "token_set": ts.to_json(),
                  "supersedes": {"access_token": supersedes.access_token,
                                 "refresh_token": supersedes.refresh_token}}
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            return path
        except OSError as exc:
            log.error("%s: cannot write the token journal under %s: %s", ts.credential, self.journal_dir,
                      exc.strerror or type(exc).__name__)
            return None

    def _persist(self, ts: TokenSet, journal: Path | None) -> int:
        """Vault write with bounded retries after the journal; on final failure keep the journal and raise."""
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
        """Replay a journal left by a refresh whose vault write failed (or whose process died).

        Call only under the credential's lock. Replayed only while the vault still holds the tokens the
        journal supersedes; if anything else was written since (an import, another refresher), the journal
        is stale and deleted.
        """
        path = self._journal_path(credential)
        if not path.exists():
            return
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            supersedes = raw.get("supersedes") if isinstance(raw, dict) and "token_set" in raw else None
            pending = TokenSet.from_json(raw["token_set"] if supersedes is not None else raw, credential=credential)
        except FileNotFoundError:
            return  # replayed by another holder of the lock just before us
        except (OSError, ValueError, KeyError, TypeError) as exc:
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
        if isinstance(supersedes, dict):
            applies = stored is not None and (stored.access_token, stored.refresh_token) == (
                supersedes.get("access_token"), supersedes.get("refresh_token"))
        else:  # a journal written before supersedes were recorded: the old "newer than stored" rule
            applies = stored is None or (pending.access_token != stored.access_token and (
                stored.issued_at is None or (pending.issued_at is not None and pending.issued_at >= stored.issued_at)))
        if applies:
            log.warning("%s: replaying the token journal into the vault (an earlier vault write failed)",
                        credential)
            self.vault.write(credential, pending.to_json())
        else:
            log.warning("%s: discarding a stale token journal (the vault was written after it)", credential)
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

