"""One error hierarchy for the whole product, so callers can catch "anything from us".

    SDEError
    |-- ConfigError              missing/invalid settings; raised before any I/O
    |-- InputError(field)        a bad request body or CLI argument (HTTP 400 / one-line CLI message)
    |-- AuthError                credential dead: needs a human to re-authorize; never retried
    |-- VaultError               the token vault could not be read or written
    |-- ApiError(platform, status, code, request_id)
    |   |-- RetriableApiError    429, 5xx, timeouts, platform throttle codes
    |   |-- TokenRejectedError   the platform's own expired/invalid-token signal (self-heal: refresh once)
    |   `-- FatalApiError        any other 4xx / business error
    |       `-- QuotaExceededError   daily quota gone: never retried, remaining work is deferred
    `-- LoadError                database failure; raised `from` the driver error

Classification is by HTTP status plus the platform's error code (never message text); the tables live
in each platform's ``settings.py``. Messages never contain a token: build them from sanitized URLs.
"""

from __future__ import annotations


class SDEError(Exception):
    """Root of every error this product raises on purpose."""

    #: True when running the same work again later could succeed (drives HTTP 500 vs 200 for Scheduler).
    retriable: bool = False
    #: Short machine-readable class for the run ledger and JSON summaries.
    error_class: str = "error"


class ConfigError(SDEError):
    """Settings are missing or malformed; ``problems`` lists every one of them."""

    error_class = "config"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class InputError(SDEError, ValueError):
    """A request body or CLI argument is invalid; ``field`` names the offending field."""

    error_class = "input"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def to_json(self) -> dict[str, str]:
        return {"error": "invalid_request", "field": self.field, "message": self.message}


class AuthError(SDEError):
    """The credential cannot be used or refreshed; a human must re-authorize the account."""

    error_class = "needs_reauthorization"


class VaultError(SDEError):
    """The token vault failed (Secret Manager or the local store)."""

    error_class = "vault"
    retriable = True


class LoadError(SDEError):
    """Writing to PostgreSQL failed; the account's transaction was rolled back."""

    error_class = "load"
    retriable = True


class ApiError(SDEError):
    """An API answered with an error (or did not answer)."""

    error_class = "api"

    def __init__(
        self,
        message: str,
        *,
        platform: str,
        status: int | None = None,
        code: str | int | None = None,
        request_id: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.platform = platform
        self.status = status
        self.code = code
        self.request_id = request_id
        self.endpoint = endpoint
        parts = [f"{platform}"]
        if endpoint:
            parts.append(endpoint)
        if status is not None:
            parts.append(f"HTTP {status}")
        if code is not None:
            parts.append(f"code {code}")
        if request_id:
            parts.append(f"request {request_id}")
        super().__init__(f"{' '.join(parts)}: {message}")


class RetriableApiError(ApiError):
    """Throttling, 5xx, connection errors, timeouts: retried with backoff, then reported."""

    error_class = "api_retriable"
    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class TokenRejectedError(ApiError):
    """The platform rejected the access token as expired or invalid: refresh once, retry once."""

    error_class = "token_rejected"
    retriable = True


class FatalApiError(ApiError):
    """A 4xx or business error that retrying will not fix."""

    error_class = "api_fatal"


class QuotaExceededError(FatalApiError):
    """The daily quota is exhausted (YouTube ``quotaExceeded``): stop, defer, never retry today."""

    error_class = "quota_exceeded"
