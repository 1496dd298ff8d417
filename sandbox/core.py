"""Sandbox core: HTTP plumbing, clock, request ledger, fault injection and the token authority.

Each emulator (``sandbox/<api>.py``) is an ``Emulator`` subclass with a route table; this module serves
it on its own loopback port, applies injected faults and latency, and records every call in the ledger.
Nothing here knows any platform's wire format: emulators render their own errors.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import http.client
import json
import random
import re
import secrets
import socket
import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from sandbox.server import Sandbox


# --------------------------------------------------------------------------------------------------
# Requests and responses
# --------------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    #: set by handlers so the ledger can attribute the call
    account: str | None = None
    units: int = 0
    ids: int = 0

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); ValueError when it is not JSON or not an object."""
        value = self.json()
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"request body must be a JSON object, not {type(value).__name__}")
        return value

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def bearer(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: "reset" closes the socket without answering; "truncate" cuts the body in half
    action: str | None = None


def json_bytes(obj: Any) -> bytes:
    """The wire encoding of every sandbox JSON body (compact separators, ASCII escapes)."""
    return _dumps(obj).encode()


_dumps = json.JSONEncoder(separators=(",", ":")).encode  # == json.dumps(obj, separators=(",", ":"))


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = _dumps(obj).encode()
    return Response(status, body, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})})


_RAW_MARK = "\x00sandbox-raw-array\x00"
_RAW_MARK_JSON = _dumps(_RAW_MARK).encode()


def json_array_response(obj: dict[str, Any], key: str, fragments: list[bytes], status: int = 200,
                        headers: dict[str, str] | None = None) -> Response:
    """``json_response(obj)`` where ``obj[key]`` is a list whose items are given already encoded
    (``json_bytes(item)`` each, e.g. cached per item and clock minute): the same bytes, without
    re-encoding the items. ``key`` keeps its position in ``obj`` (put a placeholder there)."""
    head = _dumps({**obj, key: _RAW_MARK}).encode()
    i = head.find(_RAW_MARK_JSON)
    if i < 0 or head.find(_RAW_MARK_JSON, i + 1) >= 0:  # the marker text inside the data itself: slow path
        return json_response({**obj, key: [json.loads(f) for f in fragments]}, status, headers)
    body = b"".join((head[:i], b"[", b",".join(fragments), b"]", head[i + len(_RAW_MARK_JSON):]))
    return Response(status, body, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})})


Handler = Callable[["Request", "re.Match[str]"], Response]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str
    handler: Handler


class Emulator:
    """Base class: subclasses set ``name`` and register routes in ``__init__`` via ``self.route``."""

    name = "emulator"

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.routes: list[Route] = []
        self._minute_cache: dict[Any, Any] = {}

    def per_minute(self, key: Any, now: datetime, build: Callable[[], Any]) -> Any:
        """``build()`` at most once per (key, sandbox-clock minute): hot renderings whose values move on a
        scale of minutes (lifetime counters, settling daily values). Cleared by ``Sandbox.reset``."""
        k = (key, int(now.timestamp() // 60))
        hit = self._minute_cache.get(k)
        if hit is None:
            if len(self._minute_cache) > 50_000:
                self._minute_cache.clear()
            hit = self._minute_cache[k] = build()
        return hit

    def clear_caches(self) -> None:
        self._minute_cache.clear()

    def route(self, method: str, pattern: str, endpoint: str, handler: Handler) -> None:
        self.routes.append(Route(method.upper(), re.compile(pattern + r"\Z"), endpoint, handler))

    def match(self, method: str, path: str) -> tuple[Route, re.Match[str]] | None:
        for r in self.routes:
            if r.method in (method, "*"):
                m = r.pattern.match(path)
                if m:
                    return r, m
        return None

    # -- platform-specific renderings used by the fault injector; override per API ---------------
    def error_response(self, status: int, code: int | str | None, message: str) -> Response:
        return json_response({"error": {"code": status, "message": message}}, status)

    def throttle_response(self, rule: FaultRule) -> Response:
        return self.error_response(rule.status or 429, rule.code, "Rate limit exceeded (injected)")

    def account_of(self, req: Request, m: re.Match[str]) -> str | None:
        """The account a request is about, before the handler runs (fault matching). Override per API."""
        if m.groupdict().get("account"):
            return m.group("account")
        return _guess_account(req)

    def not_found(self, req: Request) -> Response:
        return self.error_response(404, None, f"No route for {req.method} {req.path}")

    def internal_error(self, req: Request, exc: BaseException) -> Response:
        """A handler raised: answer the API's own 500 envelope (never a dropped connection)."""
        return self.error_response(500, None, f"Internal error ({type(exc).__name__}); see the sandbox log")

    def reset(self) -> None:
        """Forget per-test state (quota counters, issued tokens)."""


# --------------------------------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------------------------------


class Clock:
    """The sandbox's notion of now: real UTC time plus a movable offset (or a frozen instant)."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._frozen: datetime | None = None
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            return datetime.now(UTC) + self._offset

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            d = timedelta(**delta)
            if self._frozen is not None:
                self._frozen += d
            else:
                self._offset += d
        return self.now()

    def set(self, instant: datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("clock instant must be timezone-aware")
        with self._lock:
            self._frozen = None
            self._offset = instant - datetime.now(UTC)

    def freeze(self, instant: datetime | None = None) -> None:
        with self._lock:
            self._frozen = instant or (datetime.now(UTC) + self._offset)

    def reset(self) -> None:
        with self._lock:
            self._offset = timedelta(0)
            self._frozen = None


# --------------------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    at: str
    emulator: str
    endpoint: str
    method: str
    status: int
    account: str | None
    units: int
    ids: int


class Ledger:
    """Every request the sandbox answered: per emulator, endpoint and account.

    Exact running counters (calls, units, ids) per (emulator, endpoint, account) plus a bounded deque of
    the most recent ``max_entries`` entries: ``calls()``/``units()`` stay exact after old entries are
    evicted; ``entries()`` and ``ids_per_call()`` only see the retained ones.
    """

    def __init__(self, max_entries: int | None = 200_000) -> None:
        self._entries: deque[LedgerEntry] = deque(maxlen=max_entries)
        self._counters: dict[tuple[str, str, str | None], list[int]] = {}
        self._lock = threading.Lock()

    @property
    def max_entries(self) -> int | None:
        return self._entries.maxlen

    def record(self, entry: LedgerEntry) -> None:
        key = (entry.emulator, entry.endpoint, entry.account)
        with self._lock:
            self._entries.append(entry)
            c = self._counters.get(key)
            if c is None:
                c = self._counters[key] = [0, 0, 0]
            c[0] += 1
            c[1] += entry.units
            c[2] += entry.ids

    def entries(self, emulator: str | None = None, endpoint: str | None = None,
                account: str | None = None, limit: int | None = None) -> list[LedgerEntry]:
        """Retained entries, oldest first; ``limit`` keeps the most recent N of the matching ones."""
        with self._lock:
            items = list(self._entries)
        out = [
            e for e in items
            if (emulator is None or e.emulator == emulator)
            and (endpoint is None or e.endpoint == endpoint)
            and (account is None or e.account == account)
        ]
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out

    def _sum(self, col: int, emulator: str | None, endpoint: str | None, account: str | None) -> int:
        with self._lock:
            return sum(
                c[col] for (em, ep, acc), c in self._counters.items()
                if (emulator is None or em == emulator) and (endpoint is None or ep == endpoint)
                and (account is None or acc == account)
            )

    def calls(self, emulator: str | None = None, endpoint: str | None = None, account: str | None = None) -> int:
        return self._sum(0, emulator, endpoint, account)

    def units(self, emulator: str | None = None, endpoint: str | None = None, account: str | None = None) -> int:
        return self._sum(1, emulator, endpoint, account)

    def ids(self, emulator: str | None = None, endpoint: str | None = None, account: str | None = None) -> int:
        """Total ids over every call (exact, from the counters)."""
        return self._sum(2, emulator, endpoint, account)

    def ids_per_call(self, emulator: str | None = None, endpoint: str | None = None,
                     account: str | None = None) -> list[int]:
        """Ids of each retained call (the most recent ``max_entries`` only)."""
        return [e.ids for e in self.entries(emulator, endpoint, account)]

    def counters(self) -> dict[tuple[str, str, str | None], dict[str, int]]:
        """Exact per-(emulator, endpoint, account) totals."""
        with self._lock:
            return {k: {"calls": c[0], "units": c[1], "ids": c[2]} for k, c in self._counters.items()}

    def summary(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """{emulator: {endpoint: {"calls", "units"}}}, exact; emulators in ``exclude`` left out."""
        out: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"calls": 0, "units": 0}))
        with self._lock:
            items = list(self._counters.items())
        for (em, ep, _acc), c in items:
            if em in exclude:
                continue
            slot = out[em][ep]
            slot["calls"] += c[0]
            slot["units"] += c[1]
        return {k: dict(v) for k, v in out.items()}

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._counters.clear()


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------

FAULT_KINDS = ("status", "platform_error", "throttle", "reset", "timeout", "malformed", "truncated",
               "repeat_cursor", "latency")


@dataclass
class FaultRule:
    """Inject a failure into matching requests.

    kind: status (plain HTTP status), platform_error (the API's own error with ``code``), throttle (the
    API's rate-limit answer), reset (close the connection), timeout (sleep ``delay`` s before answering),
    malformed (invalid JSON), truncated (body cut in half), repeat_cursor (paginators answer the same
    cursor again), latency (sleep ``delay`` s, then answer normally).
    Matching: ``emulator`` and ``endpoint`` names (None = any), ``account`` (None = any); ``after`` skips
    the first N matches; ``times`` limits how often it fires (None = always); ``probability`` in 0..1.
    """

    kind: str
    emulator: str | None = None
    endpoint: str | None = None
    account: str | None = None
    times: int | None = 1
    after: int = 0
    probability: float = 1.0
    status: int | None = None
    code: int | str | None = None
    message: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    fired: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        for name in ("emulator", "endpoint", "account", "message"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{name}: expected a string or null, got {v!r}")
        for name in ("times", "status"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"{name}: expected a non-negative integer or null, got {v!r}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status: expected an HTTP status 100-599, got {self.status!r}")
        if not isinstance(self.after, int) or isinstance(self.after, bool) or self.after < 0:
            raise ValueError(f"after: expected a non-negative integer, got {self.after!r}")
        if (not isinstance(self.probability, (int, float)) or isinstance(self.probability, bool)
                or not 0.0 <= self.probability <= 1.0):
            raise ValueError(f"probability: expected a number in 0..1, got {self.probability!r}")
        if not isinstance(self.delay, (int, float)) or isinstance(self.delay, bool) or self.delay < 0:
            raise ValueError(f"delay: expected a non-negative number of seconds, got {self.delay!r}")
        if self.code is not None and (isinstance(self.code, bool) or not isinstance(self.code, (int, str))):
            raise ValueError(f"code: expected an integer or string, got {self.code!r}")
        if not isinstance(self.headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()):
            raise ValueError("headers: expected an object of string values")


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def add(self, rule: FaultRule | None = None, **kw: Any) -> FaultRule:
        rule = rule or FaultRule(**kw)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, emulator: str, endpoint: str, account: str | None, kinds: Iterable[str]) -> FaultRule | None:
        """Return (and consume one shot of) the first rule of ``kinds`` matching this request."""
        if not self._rules:  # the common case: no fault injected, no lock (a list read is atomic)
            return None
        kinds = tuple(kinds)
        with self._lock:
            for rule in self._rules:
                if rule.kind not in kinds:
                    continue
                if rule.emulator not in (None, emulator) or rule.endpoint not in (None, endpoint):
                    continue
                if rule.account is not None and rule.account != account:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                return rule
        return None


# --------------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------------


@dataclass
class Grant:
    token: str
    kind: str  # access | refresh | page
    provider: str  # tiktok | meta | google
    subject: str  # the credential name the grant belongs to
    expires_at: datetime | None
    scopes: tuple[str, ...] = ()
    revoked: bool = False
    used: bool = False  # a rotated refresh token cannot be used again
    accounts: tuple[str, ...] = ()


class TokenAuthority:
    """Issues, checks, expires and revokes tokens, on the sandbox clock. Tokens are opaque random strings."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()
        self.issued: list[str] = []  # every token ever issued (tests scan logs for them)

    def issue(self, provider: str, kind: str, subject: str, lifetime: timedelta | None,
              prefix: str, scopes: Iterable[str] = (), accounts: Iterable[str] = (),
              expires_at: datetime | None = None) -> Grant:
        token = prefix + secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")
        exp = expires_at if expires_at is not None else (self.clock.now() + lifetime if lifetime else None)
        grant = Grant(token, kind, provider, subject, exp, tuple(scopes), accounts=tuple(accounts))
        with self._lock:
            self._grants[token] = grant
            self.issued.append(token)
        return grant

    def lookup(self, token: str | None) -> Grant | None:
        if not token:
            return None
        with self._lock:
            return self._grants.get(token)

    def check(self, token: str | None, provider: str, kinds: Iterable[str] = ("access",)) -> tuple[str, Grant | None]:
        """-> ("missing"|"invalid"|"expired"|"revoked"|"ok", grant)."""
        if not token:
            return "missing", None
        g = self.lookup(token)
        if g is None or g.provider != provider or g.kind not in tuple(kinds):
            return "invalid", None
        if g.revoked:
            return "revoked", g
        if g.expires_at is not None and g.expires_at <= self.clock.now():
            return "expired", g
        return "ok", g

    def mark_used(self, token: str) -> None:
        with self._lock:
            if token in self._grants:
                self._grants[token].used = True

    def expire(self, subject: str, kind: str = "access") -> int:
        """Force every grant of ``subject`` of ``kind`` to be expired now."""
        n = 0
        past = self.clock.now() - timedelta(seconds=1)
        with self._lock:
            for g in self._grants.values():
                if g.subject == subject and g.kind == kind:
                    g.expires_at = past
                    n += 1
        return n

    def revoke(self, subject: str, kind: str = "refresh") -> int:
        n = 0
        with self._lock:
            for g in self._grants.values():
                if g.subject == subject and g.kind == kind:
                    g.revoked = True
                    n += 1
        return n

    def reset(self) -> None:
        with self._lock:
            self._grants.clear()
            self.issued.clear()


# --------------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, emulator: Emulator, sandbox: Sandbox, port: int = 0) -> None:
        self.emulator = emulator
        self.sandbox = sandbox
        super().__init__(("127.0.0.1", port), _Handler)


_HEADER_LINE = re.compile(rb"[!-9;-~]+:[^\r\n]*\r?\n")  # "Name: value" + CRLF/LF, nothing unusual
_MAX_LINE = 65536  # http.client._MAXLINE
_MAX_HEADERS = 100  # http.client._MAXHEADERS


def _parse_headers(rfile: Any) -> Message:
    """``http.client.parse_headers(rfile)`` (the same ``Message``: headers, values, empty payload),
    without the email feed parser for ordinary header blocks (one ``Name: value`` per line); anything
    unusual (folded lines, stray CR, odd names, no colon) is parsed by the stdlib parser itself."""
    lines: list[bytes] = []
    plain = True
    match = _HEADER_LINE.fullmatch
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > _MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
        if plain and match(line) is None:
            plain = False
    if not plain:
        return email.parser.Parser(_class=Message).parsestr(b"".join(lines).decode("iso-8859-1"))
    msg = Message()
    items = []
    for line in lines[:-1]:
        name, _, value = line.decode("iso-8859-1").partition(":")
        items.append((name, value.lstrip(" \t").rstrip("\r\n")))
    msg._headers = items
    msg.set_payload("")
    return msg


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
    # to every keep-alive response
    disable_nagle_algorithm = True
    server: _Server
    _date: ClassVar[tuple[int, str]] = (-1, "")  # (epoch second, its Date value), shared by every handler
    # raw request target -> (path, query string, parsed query), shared by every handler
    _query_cache: ClassVar[dict[str, tuple[str, str, dict[str, list[str]]]]] = {}

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr access log
        return

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The stdlib's ``Date`` value, formatted once per second (``formatdate`` drops sub-seconds)."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = time.time()
        sec = int(now)
        cached = _Handler._date
        if cached[0] == sec:
            return cached[1]
        value = super().date_time_string(sec)
        _Handler._date = (sec, value)
        return value

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request`` of Python 3.11 (same checks, errors and keep-alive
        rules), with ``_parse_headers`` in place of ``http.client.parse_headers``."""
        self.command = None  # type: ignore[assignment]  # set in case of error on the first line
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1")
        requestline = requestline.rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if len(words) == 0:
            return False

        if len(words) >= 3:  # Enough to determine protocol version
            version = words[-1]
            try:
                if not version.startswith("HTTP/"):
                    raise ValueError
                base_version_number = version.split("/", 1)[1]
                version_parts = base_version_number.split(".")
                if len(version_parts) != 2:
                    raise ValueError
                if any(not component.isdigit() for component in version_parts):
                    raise ValueError("non digit in http version")
                if any(len(component) > 10 for component in version_parts):
                    raise ValueError("unreasonable length http version")
                version_number = int(version_parts[0]), int(version_parts[1])
            except (ValueError, IndexError):
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            if version_number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if version_number >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                                f"Invalid HTTP version ({base_version_number})")
                return False
            self.request_version = version

        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path

        # gh-87389: a path starting with '//' is reduced to a single '/'
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")

        # Examine the headers and look for a Connection directive.
        try:
            self.headers = _parse_headers(self.rfile)
        except http.client.LineTooLong as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(err))
            return False

        conntype = self.headers.get("Connection", "")
        if conntype.lower() == "close":
            self.close_connection = True
        elif conntype.lower() == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        # Examine the headers and look for an Expect directive
        expect = self.headers.get("Expect", "")
        return not (expect.lower() == "100-continue" and self.protocol_version >= "HTTP/1.1"
                    and self.request_version >= "HTTP/1.1" and not self.handle_expect_100())

    def _split_target(self) -> tuple[str, str, dict[str, list[str]]]:
        """(path, query string, parsed query) of the request target; parsed once per distinct target
        (clients repeat the same URLs), handed out as a fresh copy."""
        raw = self.path
        hit = self._query_cache.get(raw)
        if hit is None:
            parts = urlsplit(raw)
            hit = (parts.path, parts.query, parse_qs(parts.query, keep_blank_values=True))
            if len(self._query_cache) >= 4096:
                self._query_cache.clear()
            self._query_cache[raw] = hit
        return hit[0], hit[1], {k: list(v) for k, v in hit[2].items()}

    def _dispatch(self) -> None:
        headers = self.headers
        try:
            length = max(0, int(headers.get("Content-Length") or 0))
        except ValueError:
            self._send(json_response({"error": {"code": 400, "message": "invalid Content-Length"}}, 400))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        path, query_string, query = self._split_target()
        method = self.command
        override = headers.get("X-HTTP-Method-Override")
        if method == "POST" and override:
            # google-api-python-client turns long GETs into POST + override, with the query in the body
            method = override.upper()
            if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded") and body:
                extra = body.decode()
                query_string = f"{query_string}&{extra}" if query_string else extra
                query = parse_qs(query_string, keep_blank_values=True)
                body = b""
        req = Request(method, path, query, headers, body)
        try:
            resp = self.server.sandbox.handle(self.server.emulator, req)
        except Exception as exc:  # last resort: dispatch itself failed; still answer with JSON
            traceback.print_exc()
            resp = json_response({"error": {"code": 500, "message": f"sandbox failure: {type(exc).__name__}"}}, 500)
        self._send(resp)

    def _send(self, resp: Response) -> None:
        if resp.action == "reset":
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        body = resp.body
        declared = len(body)
        if resp.action == "truncate":
            body = body[: max(1, len(body) // 2)]
            self.close_connection = True
        if self.request_version == "HTTP/0.9":  # the stdlib's own path (sends no status line nor headers)
            self.send_response(resp.status)
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(declared))
            if self.close_connection:
                self.send_header("Connection", "close")
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)
            with contextlib.suppress(OSError):
                self.flush_headers()
            return
        # what send_response() + send_header()s + end_headers() + write(body) put on the wire, in one write
        code = resp.status
        reason = self.responses[code][0] if code in self.responses else ""
        head = ["%s %d %s\r\n" % (self.protocol_version, code, reason),  # noqa: UP031 (the stdlib's format)
                f"Server: {self.version_string()}\r\nDate: {self.date_time_string()}\r\n"]
        for k, v in resp.headers.items():
            head.append(f"{k}: {v}\r\n")
            if k.lower() == "connection":
                if v.lower() == "close":
                    self.close_connection = True
                elif v.lower() == "keep-alive":
                    self.close_connection = False
        head.append(f"Content-Length: {declared}\r\n")
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self._headers_buffer = []
        with contextlib.suppress(OSError):
            self.wfile.write("".join(head).encode("latin-1", "strict") + body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


def serve(emulator: Emulator, sandbox: Sandbox, port: int = 0) -> tuple[_Server, threading.Thread]:
    server = _Server(emulator, sandbox, port)
    # a short poll interval keeps Sandbox.stop() (one shutdown per emulator) well under a second
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"sandbox-{emulator.name}", daemon=True)
    thread.start()
    return server, thread


def dispatch(sandbox: Sandbox, emulator: Emulator, req: Request) -> Response:
    """Route, inject faults, call the handler and record the ledger entry."""
    found = emulator.match(req.method, req.path)
    if found is None:
        resp = emulator.not_found(req)
        endpoint = "unknown"
    else:
        route, m = found
        endpoint = route.endpoint
        try:
            req.account = emulator.account_of(req, m)
            resp = _with_faults(sandbox, emulator, endpoint, req, lambda: route.handler(req, m))
        except Exception as exc:  # a handler bug must not drop the connection
            traceback.print_exc()
            resp = emulator.internal_error(req, exc)
    sandbox.ledger.record(LedgerEntry(
        at=sandbox.clock.now().isoformat(), emulator=emulator.name, endpoint=endpoint, method=req.method,
        status=resp.status, account=req.account, units=req.units, ids=req.ids,
    ))
    return resp


def _with_faults(sandbox: Sandbox, emulator: Emulator, endpoint: str, req: Request,
                 call: Callable[[], Response]) -> Response:
    if sandbox.settings.latency_ms:
        time.sleep(sandbox.settings.latency_ms / 1000)
    account = req.account
    faults = sandbox.faults
    lat = faults.take(emulator.name, endpoint, account, ("latency",))
    if lat:
        time.sleep(lat.delay)
    rule = faults.take(emulator.name, endpoint, account,
                       ("status", "platform_error", "throttle", "reset", "timeout", "malformed", "truncated"))
    if rule is None:
        return call()
    if rule.kind == "timeout":
        time.sleep(rule.delay or 5.0)
        return call()
    if rule.kind == "reset":
        return Response(action="reset")
    if rule.kind == "status":
        status = rule.status or 500
        resp = emulator.error_response(status, rule.code, rule.message or f"Injected HTTP {status}")
    elif rule.kind == "platform_error":
        resp = emulator.error_response(rule.status or 400, rule.code, rule.message or "Injected platform error")
    elif rule.kind == "throttle":
        resp = emulator.throttle_response(rule)
    else:
        resp = call()
        if rule.kind == "malformed":
            resp = Response(resp.status, b'{"data": [unterminated', dict(resp.headers))
        else:  # truncated
            resp.action = "truncate"
    resp.headers.update(rule.headers)
    return resp


def _guess_account(req: Request) -> str | None:
    """Best-effort account for fault matching before the handler runs (query ids, path ids)."""
    for name in ("business_id", "ids", "id", "playlistId", "channelId"):
        v = req.arg(name)
        if v:
            return v.split("==")[-1]
    return None


def repeat_cursor(sandbox: Sandbox, emulator: str, endpoint: str, account: str | None) -> bool:
    """True when a ``repeat_cursor`` fault fires for this page (paginators then answer the incoming cursor)."""
    return sandbox.faults.take(emulator, endpoint, account, ("repeat_cursor",)) is not None


def scheduler_headers(job_name: str, schedule_time: datetime | None = None, *,
                      audience: str = "https://sandbox.invalid/",
                      service_account: str = "scheduler@sde-sandbox.iam.gserviceaccount.com") -> dict[str, str]:
    """The headers Cloud Scheduler sends to an HTTP target with an OIDC token (api-contracts §4.2).

    ``schedule_time`` defaults to the current minute (UTC); the bearer is a JWT-shaped fake OIDC token
    (header.payload.signature, base64url, unsigned) whose claims carry ``aud``, ``iss``, ``email``.
    """
    at = (schedule_time or datetime.now(UTC).replace(second=0, microsecond=0)).astimezone(UTC)
    def b64(obj: Any) -> str:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    iat = int(at.timestamp())
    claims = {"aud": audience, "azp": service_account, "email": service_account, "email_verified": True,
              "exp": iat + 3600, "iat": iat, "iss": "https://accounts.google.com",
              "sub": str(100000000000000000000 + iat)}
    token = ".".join((b64({"alg": "RS256", "kid": "sandbox", "typ": "JWT"}), b64(claims), b64(b"sandbox-signature")))
    return {
        "User-Agent": "Google-Cloud-Scheduler",
        "X-CloudScheduler": "true",
        "X-CloudScheduler-JobName": job_name,
        "X-CloudScheduler-ScheduleTime": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/octet-stream",
    }


def dataclass_json(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: dataclass_json(v) for k, v in asdict(obj).items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, (list, tuple)):
        return [dataclass_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dataclass_json(v) for k, v in obj.items()}
    return obj
