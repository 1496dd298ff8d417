"""Self-healing authentication: refresh once when the platform rejects a token, retry once.

Two halves, both built once here for every platform client:

* **Detection** (``raise_if_token_rejected``): each platform's own expired/invalid-token signal, by HTTP
  status plus the platform's error code (never message text), in one table per provider:
  TikTok ``40102``/``40105`` in the envelope of a 2xx body (api-contracts §1.2), Meta ``error.code``
  ``190``/``102`` in a 4xx body (§2.3), Google HTTP 401 with reason ``authError`` or status
  ``UNAUTHENTICATED`` (§3.1). A client's ``classify`` calls it first and so raises ``TokenRejectedError``.
* **Healing** (``call_with_token``): on ``TokenRejectedError`` the ``TokenManager`` refreshes under the
  credential's lock (concurrent callers share one platform refresh) and the call runs once more. A second
  rejection, or a refresh grant that is itself dead, raises ``AuthError`` and records
  ``needs_reauthorization`` in ``social.token_state`` (``tokens list`` shows "needs attention").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import AuthError, TokenRejectedError

if TYPE_CHECKING:
    import requests

    from shared.tokens import TokenManager, TokenSet

__all__ = [
    "GOOGLE_TOKEN_REJECTED_REASONS",
    "GOOGLE_TOKEN_REJECTED_STATUSES",
    "META_TOKEN_REJECTED_CODES",
    "PLATFORM_PROVIDER",
    "TIKTOK_TOKEN_REJECTED_CODES",
    "call_with_token",
    "raise_if_token_rejected",
    "token_rejection",
    "with_token",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: TikTok envelope codes in a 2xx body: ACCESS_TOKEN_EXPIRE, INVALID_ACCESS_TOKEN (api-contracts §1.2)
TIKTOK_TOKEN_REJECTED_CODES = frozenset({40102, 40105})
#: Meta ``error.code`` in a 4xx body (normally 400): 190 invalid/expired token, 102 API session (§2.3)
META_TOKEN_REJECTED_CODES = frozenset({190, 102})
#: Google JSON error of an HTTP 401: ``error.errors[].reason`` / ``error.status`` (§3.1)
GOOGLE_TOKEN_REJECTED_REASONS = frozenset({"authError", "expired", "invalidCredentials"})
GOOGLE_TOKEN_REJECTED_STATUSES = frozenset({"UNAUTHENTICATED"})
#: account platform (or provider) -> token provider whose table applies
PLATFORM_PROVIDER = {"tiktok": "tiktok", "facebook": "meta", "instagram": "meta", "meta": "meta",
                     "youtube": "google", "google": "google"}

_UNSET: Any = object()


def _body(response: requests.Response, body: Any) -> Any:
    if body is not _UNSET:
        return body
    try:
        return response.json()
    except ValueError:
        return None


def _tiktok(status: int, body: Any) -> tuple[int | str, str | None] | None:
    if not 200 <= status < 300 or not isinstance(body, Mapping):
        return None
    code = body.get("code")
    if code in TIKTOK_TOKEN_REJECTED_CODES:
        rid = body.get("request_id")
        return code, rid if isinstance(rid, str) else None
    return None


def _meta(status: int, body: Any) -> tuple[int | str, str | None] | None:
    if not 400 <= status < 500 or not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping) and error.get("code") in META_TOKEN_REJECTED_CODES:
        rid = error.get("fbtrace_id")
        return error["code"], rid if isinstance(rid, str) else None
    return None


def _google(status: int, body: Any) -> tuple[int | str, str | None] | None:
    if status != 401:
        return None
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return "HTTP 401", None  # a bare 401 from a Google API is always about the credentials
    reasons = [e.get("reason") for e in error.get("errors") or () if isinstance(e, Mapping)]
    hit = next((r for r in reasons if r in GOOGLE_TOKEN_REJECTED_REASONS), None)
    if hit is None and error.get("status") in GOOGLE_TOKEN_REJECTED_STATUSES:
        hit = error["status"]
    if hit is None and not reasons and not error.get("status"):
        hit = "HTTP 401"
    return (hit, None) if hit is not None else None


_DETECTORS: dict[str, Callable[[int, Any], tuple[int | str, str | None] | None]] = {
    "tiktok": _tiktok, "meta": _meta, "google": _google}


def token_rejection(platform: str, response: requests.Response, body: Any = _UNSET) -> TokenRejectedError | None:
    """The ``TokenRejectedError`` for ``response`` when it is the platform's token signal, else None.

    Args:
        platform: an account platform (``tiktok``, ``facebook``, ``instagram``, ``youtube``) or a provider
            (``meta``, ``google``); used as the error's ``platform``.
        body: the already-parsed JSON body (else ``response.json()``; a non-JSON body is never a rejection).
    """
    provider = PLATFORM_PROVIDER.get(platform)
    if provider is None:
        raise ValueError(f"unknown platform {platform!r}; expected one of {', '.join(sorted(PLATFORM_PROVIDER))}")
    found = _DETECTORS[provider](response.status_code, _body(response, body))
    if found is None:
        return None
    code, request_id = found
    return TokenRejectedError("access token expired or invalid", platform=platform, status=response.status_code,
                              code=code, request_id=request_id)


def raise_if_token_rejected(platform: str, response: requests.Response, body: Any = _UNSET) -> None:
    """Raise ``TokenRejectedError`` when ``response`` is the platform's expired/invalid-token signal.

    Call it first in a client's ``classify`` (before throttle or fatal handling), e.g.
    ``raise_if_token_rejected("youtube", response)``.
    """
    error = token_rejection(platform, response, body)
    if error is not None:
        raise error


def call_with_token(manager: TokenManager, credential: str, call: Callable[[TokenSet], T]) -> T:
    """``call(token_set)``; on ``TokenRejectedError`` refresh once (shared, locked) and call once more.

    Raises:
        AuthError: the refreshed token was rejected too (recorded as ``needs_reauthorization``), or the
            refresh grant is dead (revoked/expired; the manager records that itself).
        Anything else ``call`` or the refresh raises (retriable API errors, ``VaultError``) unchanged.
    """
    tokens = manager.get(credential)
    try:
        return call(tokens)
    except TokenRejectedError as first:
        log.warning("%s: %s rejected the access token (%s); refreshing once", credential, first.platform,
                    first.code if first.code is not None else first.status)
    refreshed = manager.refresh_after_rejection(credential, tokens.access_token)
    try:
        return call(refreshed)
    except TokenRejectedError as second:
        error = AuthError(f"{credential}: {second.platform} rejected the freshly refreshed token too "
                          f"({second.code if second.code is not None else second.status}); "
                          "re-authorize the account")
        _record_reauthorization(manager, credential, str(error))
        raise error from second


def _record_reauthorization(manager: Any, credential: str, message: str) -> None:
    """``manager.record_reauthorization`` (also through a caching view exposing ``.manager``); best effort."""
    record = getattr(manager, "record_reauthorization", None)
    if record is None:
        record = getattr(getattr(manager, "manager", None), "record_reauthorization", None)
    if record is None:
        log.warning("%s: cannot record needs_reauthorization: %s has no record_reauthorization", credential,
                    type(manager).__name__)
        return
    record(credential, message)


#: the name used in docs/architecture.md's module table
with_token = call_with_token
