"""One pooled HTTP session per platform: timeouts, classified retries with a capped backoff, counters.

Retry policy (ours, not urllib3's): only ``RetriableApiError`` (429, 5xx, throttle codes, as decided by
the platform's ``classify``), connection errors, timeouts, broken chunked bodies and a 2xx body that is
not valid JSON (truncated) are retried, with exponential backoff and full jitter. ``Retry-After`` wins
over the computed delay. The total sleep of one call never exceeds ``http_backoff_cap_seconds`` and
never crosses the run deadline; when the next sleep would, the last error is raised. Token rejections,
fatal and quota errors are raised at once.

Every attempt is counted (APIs charge invalid and throttled requests too). URLs are sanitized before
they reach a log line or an exception message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random as _random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest

from shared.config import Config
from shared.errors import ApiError, FatalApiError, RetriableApiError
from shared.logs import SECRET_PARAM_NAMES, redact_patterns
from shared.logs import redact as _log_redact

__all__ = [
    "ApiSession",
    "CallCounter",
    "new_transport",
    "parse_retry_after",
    "redact",
    "sanitize_url",
]

log = logging.getLogger(__name__)

URL_REDACTED = "REDACTED"
#: Connections kept per host; the functions run accounts sequentially, so a few are plenty.
POOL_CONNECTIONS = 4
POOL_MAXSIZE = 10

#: ``request`` has a ``json`` parameter that shadows the module inside it.
_JSONDecodeError = json.JSONDecodeError
_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


# --- redaction -----------------------------------------------------------------------------------


def _redact_pairs(query: str) -> str:
    if not query:
        return query
    parts = []
    for pair in query.split("&"):
        name, sep, _value = pair.partition("=")
        if sep and unquote_plus(name).lower() in SECRET_PARAM_NAMES:
            parts.append(f"{name}={URL_REDACTED}")
        else:
            parts.append(pair)
    return "&".join(parts)


def sanitize_url(url: str) -> str:
    """``url`` with secret query/fragment values and any userinfo password replaced by ``REDACTED``.

    >>> sanitize_url("https://x/y?access_token=abc&a=1")
    'https://x/y?access_token=REDACTED&a=1'
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: fall back to the text patterns
        return redact_patterns(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{URL_REDACTED}@{host}" if sep else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_pairs(parts.query), _redact_pairs(parts.fragment)))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-empty string of ``secrets`` (and its URL-encoded form) in ``text``."""
    variants: set[str] = set()
    for secret in secrets:
        if secret:
            variants.update((secret, quote(secret, safe="")))
    for variant in sorted(variants, key=len, reverse=True):
        text = text.replace(variant, URL_REDACTED)
    return text


def _full_url(url: str, params: Any) -> str:
    """The URL that will go on the wire (params merged), for logs and messages only."""
    prepared = PreparedRequest()
    try:
        prepared.prepare_url(url, params)
    except requests.exceptions.RequestException:
        return url
    return prepared.url or url


def _scrub_exception(exc: BaseException) -> None:
    """Rewrite the args of a transport exception chain so no secret URL parameter survives in it.

    requests/urllib3 put the request path (with its query string) into their messages; those
    exceptions become the ``__cause__`` of ours and would otherwise print in tracebacks.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with contextlib.suppress(TypeError, AttributeError):  # exotic exception types keep their args
            current.args = tuple(_log_redact(str(a)) for a in current.args)
        current = current.__cause__ or current.__context__


# --- Retry-After -----------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


# --- counters ------------------------------------------------------------------------------------


class CallCounter:
    """Calls and quota units of one run, per endpoint. Every attempt counts. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.units = 0
        self.by_endpoint: dict[str, dict[str, int]] = {}

    def add(self, endpoint: str, units: int = 0) -> None:
        with self._lock:
            self.calls += 1
            self.units += units
            entry = self.by_endpoint.setdefault(endpoint, {"calls": 0, "units": 0})
            entry["calls"] += 1
            entry["units"] += units

    def snapshot(self) -> dict[str, Any]:
        """A plain, JSON-ready copy: ``{"calls", "units", "by_endpoint": {ep: {"calls", "units"}}}``."""
        with self._lock:
            return {
                "calls": self.calls,
                "units": self.units,
                "by_endpoint": {ep: dict(v) for ep, v in self.by_endpoint.items()},
            }

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.units = 0
            self.by_endpoint = {}


# --- session -------------------------------------------------------------------------------------


def new_transport() -> requests.Session:
    """A pooled ``requests.Session`` without urllib3 retries (``ApiSession`` retries, and counts)."""
    transport = requests.Session()
    adapter = HTTPAdapter(pool_connections=POOL_CONNECTIONS, pool_maxsize=POOL_MAXSIZE, max_retries=0)
    transport.mount("https://", adapter)
    transport.mount("http://", adapter)
    return transport


_shared_lock = threading.Lock()
_shared: requests.Session | None = None


def shared_transport() -> requests.Session:
    """The warm instance's connection pool, shared by every per-account ``ApiSession`` (each keeps its
    own counter). Created on first use, never closed: Cloud Functions reuse it across invocations."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = new_transport()
        return _shared


class ApiSession:
    """A pooled ``requests.Session`` for one platform, shared across warm invocations.

    Args:
        platform: name used in errors and logs.
        config: supplies timeout, retry count, backoff base and cap.
        classify: ``classify(response)`` returns the parsed JSON or raises a classified ``ApiError``.
        quota_cost: ``quota_cost(method, endpoint)`` gives units when a call passes none.
        sleep, random, clock: injectable for tests (``time.sleep``, ``random.random``, ``time.monotonic``).
        transport: an existing pooled ``requests.Session`` to share (e.g. one per warm instance under
            several per-account ApiSessions, each with its own counter); not closed by ``close()``.
    """

    def __init__(
        self,
        platform: str,
        config: Config,
        *,
        classify: Callable[[requests.Response], Any],
        quota_cost: Callable[[str, str], int] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
        transport: requests.Session | None = None,
    ) -> None:
        self.platform = platform
        self.config = config
        self.classify = classify
        self.quota_cost = quota_cost
        self.timeout = config.http_timeout_seconds
        self.max_retries = config.http_max_retries
        self.backoff_base = config.http_backoff_base_seconds
        self.backoff_cap = config.http_backoff_cap_seconds
        #: monotonic instant after which no backoff sleep may end; set per run by the runner.
        self.deadline: float | None = None
        self.counter = CallCounter()
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._owns_transport = transport is None
        self.session = transport if transport is not None else new_transport()

    def close(self) -> None:
        if self._owns_transport:
            self.session.close()

    def __enter__(self) -> ApiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self) -> float:
        if self.deadline is None:
            return self.timeout
        return max(1.0, min(self.timeout, self.deadline - self._clock()))

    def request(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        units: int = 0,
        account: str | None = None,
    ) -> Any:
        """Send, classify, retry what is retriable; return what ``classify`` returns.

        Raises:
            RetriableApiError: retries or the backoff budget/deadline exhausted (``from`` the last cause).
            TokenRejectedError, FatalApiError, QuotaExceededError: from ``classify``, never retried.
        """
        method = method.upper()
        if not units and self.quota_cost is not None:
            units = self.quota_cost(method, endpoint)
        shown = sanitize_url(_full_url(url, params))
        slept = 0.0
        attempt = 0
        while True:
            self.counter.add(endpoint, units)
            started = self._clock()
            cause: BaseException
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    headers=headers,
                    json=json,
                    data=data,
                    timeout=self._timeout(),
                )
            except requests.exceptions.SSLError as exc:  # a certificate problem will not fix itself
                _scrub_exception(exc)
                raise FatalApiError(
                    f"TLS error on {method} {shown}", platform=self.platform, endpoint=endpoint
                ) from exc
            except _TRANSPORT_ERRORS as exc:
                _scrub_exception(exc)
                elapsed_ms = (self._clock() - started) * 1000
                error: ApiError = RetriableApiError(
                    f"{type(exc).__name__} after {elapsed_ms:.0f} ms on {method} {shown}",
                    platform=self.platform,
                    endpoint=endpoint,
                )
                cause = exc
                status = None
            except requests.exceptions.RequestException as exc:  # invalid URL/header: a bug, not transient
                _scrub_exception(exc)
                raise FatalApiError(
                    f"{type(exc).__name__} on {method} {shown}", platform=self.platform, endpoint=endpoint
                ) from exc
            else:
                elapsed_ms = (self._clock() - started) * 1000
                status = response.status_code
                log.debug(
                    "%s %s -> %s in %.0f ms",
                    method,
                    shown,
                    status,
                    elapsed_ms,
                    extra={"fields": self._fields(endpoint, account, status, elapsed_ms, attempt)},
                )
                try:
                    return self.classify(response)
                except RetriableApiError as exc:
                    if exc.retry_after is None:
                        exc.retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    if exc.endpoint is None:
                        exc.endpoint = endpoint
                    error, cause = exc, exc
                except ApiError as exc:
                    if exc.endpoint is None:
                        exc.endpoint = endpoint
                    raise
                except (_JSONDecodeError, UnicodeDecodeError) as exc:
                    if 200 <= status < 300 or status == 429 or status >= 500:
                        error = RetriableApiError(
                            f"malformed or truncated JSON body ({len(response.content)} bytes) on {method} {shown}",
                            platform=self.platform,
                            status=status,
                            endpoint=endpoint,
                            retry_after=parse_retry_after(response.headers.get("Retry-After")),
                        )
                        cause = exc
                    else:
                        raise FatalApiError(
                            f"non-JSON error body on {method} {shown}",
                            platform=self.platform,
                            status=status,
                            endpoint=endpoint,
                        ) from exc

            delay = self._next_delay(error, attempt, slept)
            if delay is None:
                if error is cause:
                    raise error
                raise error from cause
            attempt += 1
            log.warning(
                "retrying %s %s in %.2f s (attempt %d of %d): %s",
                method,
                shown,
                delay,
                attempt + 1,
                self.max_retries + 1,
                error,
                extra={"fields": {**self._fields(endpoint, account, status, None, attempt), "delay_s": delay}},
            )
            self._sleep(delay)
            slept += delay

    def _next_delay(self, error: ApiError, attempt: int, slept: float) -> float | None:
        """Seconds to sleep before the next attempt, or None to give up with ``error``."""
        if attempt >= self.max_retries:
            return None
        budget = self.backoff_cap - slept
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = float(retry_after)
            if delay > budget:  # the server asked for longer than we may wait: retrying early is futile
                return None
        else:
            if budget <= 0:
                return None
            delay = min(budget, self._random() * min(self.backoff_cap, self.backoff_base * 2**attempt))
        if self.deadline is not None and self._clock() + delay > self.deadline:
            return None
        return delay

    def _fields(
        self, endpoint: str, account: str | None, status: int | None, elapsed_ms: float | None, attempt: int
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"platform": self.platform, "endpoint": endpoint, "attempt": attempt + 1}
        if account is not None:
            fields["account"] = account
        if status is not None:
            fields["status"] = status
        if elapsed_ms is not None:
            fields["elapsed_ms"] = round(elapsed_ms, 1)
        return fields
