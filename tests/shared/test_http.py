"""ApiSession over real loopback HTTP against a tiny server that misbehaves on purpose.

Nothing is mocked except ``sleep``/``random`` (injected so no test really waits; assertions are on the
recorded sleeps, never on wall time).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import struct
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.config import Config
from shared.errors import (
    ApiError,
    FatalApiError,
    QuotaExceededError,
    RetriableApiError,
    TokenRejectedError,
)
from shared.http import ApiSession, CallCounter, new_transport, parse_retry_after, redact, sanitize_url
from shared.logs import configure_logging

TOKEN = "EAAGsecretTOKENvalue123"

# --- a scripted, misbehaving local server ----------------------------------------------------------


@dataclass
class Action:
    kind: str  # json | close | reset | slow | truncated | unframed
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class Server:
    def __init__(self) -> None:
        self.actions: deque[Action] = deque()
        self.seen: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:
                with server.lock:
                    action = server.actions.popleft() if server.actions else Action("json", 200, {"ok": True})
                if action.kind == "reset":  # RST before any response: ECONNRESET on the client
                    self.connection.recv(16)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    server.seen.append({"kind": "reset"})
                    return
                self._action = action
                super().handle()

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                action: Action = self._action
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                server.seen.append(
                    {"method": self.command, "path": parts.path, "query": parse_qs(parts.query), "body": body}
                )
                try:
                    if action.kind == "close":  # no response at all
                        self.close_connection = True
                        return
                    if action.kind == "slow":  # answer only after the client's timeout
                        server.release.wait(float(action.body))
                    payload = json.dumps(action.body if action.kind != "slow" else {"late": True}).encode()
                    self.send_response(action.status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in action.headers.items():
                        self.send_header(name, value)
                    if action.kind == "truncated":  # Content-Length promises more than is sent
                        self.send_header("Content-Length", str(len(payload) + 100))
                        self.end_headers()
                        self.wfile.write(payload[: len(payload) // 2])
                    elif action.kind == "unframed":  # close-delimited body cut short: 200 + broken JSON
                        self.end_headers()
                        self.wfile.write(payload[: len(payload) // 2])
                    else:
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                except OSError:  # the client gave up (timeout): nothing to do
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def script(self, *actions: Action) -> None:
        self.actions.extend(actions)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.stop()


def ok(body: Any = None, **headers: str) -> Action:
    return Action("json", 200, {"data": "ok"} if body is None else body, headers)


def status(code: int, body: Any = None, **headers: str) -> Action:
    return Action("json", code, body or {"error": {"code": code}}, {k.replace("_", "-"): v for k, v in headers.items()})


def classify(response: requests.Response) -> Any:
    """A platform-style classifier: status plus the body's error code."""
    code = response.status_code
    if 200 <= code < 300:
        return response.json()
    body = response.json()
    err = (body.get("error") or {}) if isinstance(body, dict) else {}
    kw = {"platform": "test", "status": code, "code": err.get("code")}
    if code == 429 or code >= 500:
        raise RetriableApiError("throttled or server error", **kw)
    if code == 401:
        raise TokenRejectedError("token rejected", **kw)
    if code == 403 and err.get("reason") == "quotaExceeded":
        raise QuotaExceededError("quota exhausted", **kw)
    raise FatalApiError("bad request", **kw)


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def make_session(
    *,
    retries: int = 3,
    base: float = 1.0,
    cap: float = 60.0,
    timeout: float = 2.0,
    jitter: float = 1.0,
    **kw: Any,
) -> tuple[ApiSession, Recorder]:
    config = Config(
        http_timeout_seconds=timeout,
        http_max_retries=retries,
        http_backoff_base_seconds=base,
        http_backoff_cap_seconds=cap,
    )
    rec = Recorder()
    session = ApiSession("test", config, classify=classify, sleep=rec, random=lambda: jitter, **kw)
    return session, rec


# --- success, counters ---------------------------------------------------------------------------------


def test_success_returns_classified_json_and_counts_one_call(server: Server) -> None:
    server.script(ok({"data": [1, 2, 3]}))
    session, rec = make_session()
    result = session.request(
        "get", server.url + "/v1/items", endpoint="items", params={"limit": 3}, units=2, account="acct-1"
    )
    assert result == {"data": [1, 2, 3]}
    assert rec.sleeps == []
    assert server.seen[0]["query"] == {"limit": ["3"]}
    assert session.counter.snapshot() == {"calls": 1, "units": 2, "by_endpoint": {"items": {"calls": 1, "units": 2}}}


def test_post_json_body_is_sent(server: Server) -> None:
    server.script(ok())
    session, _ = make_session()
    session.request("POST", server.url + "/v1/q", endpoint="q", json={"ids": ["a", "b"]})
    assert server.seen[0]["method"] == "POST"
    assert json.loads(server.seen[0]["body"]) == {"ids": ["a", "b"]}


def test_every_attempt_is_counted_and_charged_units(server: Server) -> None:
    server.script(status(503), status(429), ok())
    session, rec = make_session()
    session.request("GET", server.url + "/a", endpoint="videos.list", units=5)
    session.request("GET", server.url + "/b", endpoint="channels.list", units=1)
    snap = session.counter.snapshot()
    assert snap["calls"] == 4
    assert snap["units"] == 3 * 5 + 1
    assert snap["by_endpoint"] == {
        "videos.list": {"calls": 3, "units": 15},
        "channels.list": {"calls": 1, "units": 1},
    }
    assert len(rec.sleeps) == 2
    session.counter.reset()
    assert session.counter.snapshot() == {"calls": 0, "units": 0, "by_endpoint": {}}


def test_quota_cost_supplies_units_when_the_call_passes_none(server: Server) -> None:
    server.script(status(500), ok())
    session, _ = make_session(quota_cost=lambda method, endpoint: 100 if endpoint == "search.list" else 1)
    session.request("GET", server.url + "/s", endpoint="search.list")
    assert session.counter.snapshot()["by_endpoint"] == {"search.list": {"calls": 2, "units": 200}}


def test_counter_is_thread_safe_and_snapshot_is_a_copy() -> None:
    counter = CallCounter()

    def work() -> None:
        for _ in range(2000):
            counter.add("ep", 3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = counter.snapshot()
    assert snap == {"calls": 16000, "units": 48000, "by_endpoint": {"ep": {"calls": 16000, "units": 48000}}}
    snap["by_endpoint"]["ep"]["calls"] = 0
    assert counter.by_endpoint["ep"]["calls"] == 16000


def test_pool_has_no_urllib3_retries() -> None:
    session, _ = make_session()
    for prefix in ("https://api.example", "http://127.0.0.1"):
        adapter = session.session.get_adapter(prefix)
        assert adapter.max_retries.total == 0
        assert adapter.max_retries.read is False


def test_sessions_can_share_one_transport_and_keep_their_own_counters(server: Server) -> None:
    shared_transport = new_transport()
    a, _ = make_session(transport=shared_transport)
    b, _ = make_session(transport=shared_transport)
    a.request("GET", server.url + "/a", endpoint="a")
    b.request("GET", server.url + "/b", endpoint="b")
    b.request("GET", server.url + "/b", endpoint="b")
    assert a.session is b.session is shared_transport
    assert (a.counter.calls, b.counter.calls) == (1, 2)
    a.close()  # not the owner: the shared pool stays usable
    assert b.request("GET", server.url + "/b", endpoint="b") == {"ok": True}
    shared_transport.close()


# --- retries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_retries_throttling_and_server_errors_then_succeeds(server: Server, code: int) -> None:
    server.script(status(code), status(code), ok())
    session, rec = make_session(jitter=0.5)
    assert session.request("GET", server.url + "/x", endpoint="x") == {"data": "ok"}
    assert rec.sleeps == [0.5, 1.0]  # full jitter: random() * base * 2**attempt
    assert session.counter.calls == 3


def test_retry_after_seconds_is_honoured(server: Server) -> None:
    server.script(status(429, Retry_After="7"), ok())
    session, rec = make_session(jitter=0.1)
    session.request("GET", server.url + "/x", endpoint="x")
    assert rec.sleeps == [7.0]


def test_retry_after_http_date_is_honoured(server: Server) -> None:
    when = datetime.now(UTC) + timedelta(seconds=40)
    server.script(status(503, Retry_After=format_datetime(when, usegmt=True)), ok())
    session, rec = make_session()
    session.request("GET", server.url + "/x", endpoint="x")
    assert len(rec.sleeps) == 1
    assert 30 <= rec.sleeps[0] <= 41  # computed from the header's date, not from the jitter (<= 1 s)


def test_parse_retry_after() -> None:
    now = datetime(2026, 9, 3, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after("Thu, 03 Sep 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 03 Sep 2026 11:00:00 GMT", now) == 0.0  # in the past: retry now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None


def test_retry_after_beyond_the_backoff_budget_gives_up_without_sleeping(server: Server) -> None:
    server.script(status(429, Retry_After="3600"), ok())
    session, rec = make_session(cap=60)
    with pytest.raises(RetriableApiError) as info:
        session.request("GET", server.url + "/x", endpoint="x")
    assert info.value.status == 429
    assert info.value.retry_after == 3600
    assert rec.sleeps == []
    assert session.counter.calls == 1


def test_total_sleep_stops_at_the_backoff_cap(server: Server) -> None:
    server.script(*[status(503) for _ in range(20)])
    session, rec = make_session(retries=10, base=1.0, cap=5.0, jitter=1.0)
    with pytest.raises(RetriableApiError) as info:
        session.request("GET", server.url + "/x", endpoint="x")
    assert rec.sleeps == [1.0, 2.0, 2.0]  # 1 + 2 + (4 clamped to the 2 s left of the 5 s budget)
    assert sum(rec.sleeps) <= 5.0
    assert session.counter.calls == 4
    assert info.value.status == 503


def test_retry_after_counts_against_the_cap(server: Server) -> None:
    server.script(status(429, Retry_After="4"), status(429, Retry_After="4"), status(429, Retry_After="4"), ok())
    session, rec = make_session(retries=5, cap=10.0)
    with pytest.raises(RetriableApiError):
        session.request("GET", server.url + "/x", endpoint="x")
    assert rec.sleeps == [4.0, 4.0]  # a third 4 s wait would cross the 10 s budget
    assert session.counter.calls == 3


def test_stops_after_max_retries(server: Server) -> None:
    server.script(*[status(500) for _ in range(10)])
    session, rec = make_session(retries=2, jitter=0.25)
    with pytest.raises(RetriableApiError):
        session.request("GET", server.url + "/x", endpoint="x")
    assert rec.sleeps == [0.25, 0.5]
    assert session.counter.calls == 3


def test_never_sleeps_past_the_run_deadline(server: Server) -> None:
    server.script(status(503, Retry_After="5"))
    now = [1000.0]
    session, rec = make_session(clock=lambda: now[0])
    session.deadline = 1003.0
    with pytest.raises(RetriableApiError):
        session.request("GET", server.url + "/x", endpoint="x")
    assert rec.sleeps == []
    session.deadline = 1010.0
    server.script(status(503, Retry_After="5"), ok())
    assert session.request("GET", server.url + "/x", endpoint="x") == {"data": "ok"}
    assert rec.sleeps == [5.0]


@pytest.mark.parametrize(
    ("action", "exc_type"),
    [
        (status(400), FatalApiError),
        (status(404), FatalApiError),
        (status(401), TokenRejectedError),
        (status(403, {"error": {"code": 403, "reason": "quotaExceeded"}}), QuotaExceededError),
    ],
)
def test_no_retry_on_fatal_quota_or_token_rejected(server: Server, action: Action, exc_type: type) -> None:
    server.script(action, ok())
    session, rec = make_session()
    with pytest.raises(exc_type) as info:
        session.request("GET", server.url + "/x", endpoint="x", units=1)
    assert type(info.value) is exc_type
    assert info.value.endpoint == "x"
    assert rec.sleeps == []
    assert session.counter.snapshot()["calls"] == 1
    assert len(server.seen) == 1


def test_connection_closed_without_response_is_retried(server: Server) -> None:
    server.script(Action("close"), ok())
    session, rec = make_session()
    assert session.request("GET", server.url + "/x", endpoint="x") == {"data": "ok"}
    assert len(rec.sleeps) == 1
    assert session.counter.calls == 2


def test_connection_reset_is_retried(server: Server) -> None:
    server.script(Action("reset"), Action("reset"), ok())
    session, rec = make_session()
    assert session.request("GET", server.url + "/x", endpoint="x") == {"data": "ok"}
    assert session.counter.calls == 3
    assert len(rec.sleeps) == 2


def test_timeout_is_retried_and_the_default_timeout_applies(server: Server) -> None:
    server.script(Action("slow", body=5.0), ok())
    session, rec = make_session(timeout=0.3)
    assert session.request("GET", server.url + "/x", endpoint="x") == {"data": "ok"}
    assert len(rec.sleeps) == 1
    assert session.counter.calls == 2


def test_timeouts_exhausted_raise_retriable_from_the_requests_error(server: Server) -> None:
    server.script(Action("slow", body=5.0), Action("slow", body=5.0))
    session, _ = make_session(timeout=0.2, retries=1)
    with pytest.raises(RetriableApiError) as info:
        session.request("GET", server.url + "/x", endpoint="x")
    assert isinstance(info.value.__cause__, requests.Timeout)
    assert "ReadTimeout" in str(info.value)


def test_truncated_body_with_content_length_is_retried(server: Server) -> None:
    server.script(Action("truncated", 200, {"data": list(range(50))}), ok())
    session, rec = make_session()
    assert session.request("GET", server.url + "/x", endpoint="x") == {"data": "ok"}
    assert session.counter.calls == 2
    assert len(rec.sleeps) == 1


def test_truncated_unframed_2xx_body_is_retried_as_malformed_json(server: Server) -> None:
    server.script(Action("unframed", 200, {"data": list(range(50))}), Action("unframed", 200, {"data": [1, 2]}))
    session, rec = make_session(retries=1)
    with pytest.raises(RetriableApiError) as info:
        session.request("GET", server.url + "/x", endpoint="x")
    assert "malformed or truncated JSON" in str(info.value)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    assert session.counter.calls == 2
    assert len(rec.sleeps) == 1


def test_non_json_4xx_body_is_fatal_not_retried(server: Server) -> None:
    server.script(Action("unframed", 400, {"error": "x" * 40}), ok())
    session, rec = make_session()
    with pytest.raises(FatalApiError):
        session.request("GET", server.url + "/x", endpoint="x")
    assert rec.sleeps == []


def test_connection_refused_is_retried_then_raised_from_cause() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    session, rec = make_session(retries=2, jitter=0.5)
    with pytest.raises(RetriableApiError) as info:
        session.request("GET", f"http://127.0.0.1:{port}/x", endpoint="x")
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert rec.sleeps == [0.5, 1.0]
    assert session.counter.calls == 3


# --- redaction -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://x/y?access_token=abc&a=1", "https://x/y?access_token=REDACTED&a=1"),
        ("https://x/y?a=1&ACCESS_TOKEN=abc", "https://x/y?a=1&ACCESS_TOKEN=REDACTED"),
        (
            "https://g/oauth?client_secret=s&refresh_token=r&code=c&grant_type=refresh_token",
            "https://g/oauth?client_secret=REDACTED&refresh_token=REDACTED&code=REDACTED&grant_type=refresh_token",
        ),
        (
            "https://g/v26.0/oauth/access_token?fb_exchange_token=t&app_secret=s&client_id=1",
            "https://g/v26.0/oauth/access_token?fb_exchange_token=REDACTED&app_secret=REDACTED&client_id=1",
        ),
        (
            "https://y/v3/videos?key=AIza&part=id&pageToken=CAUQAA",
            "https://y/v3/videos?key=REDACTED&part=id&pageToken=CAUQAA",
        ),
        (
            "https://g/debug_token?input_token=t&signature=s&auth_code=c&password=p&token=t",
            "https://g/debug_token?input_token=REDACTED&signature=REDACTED&auth_code=REDACTED"
            "&password=REDACTED&token=REDACTED",
        ),
        ("postgresql://user:pw@db:5432/x", "postgresql://user:REDACTED@db:5432/x"),
        ("https://cb/#access_token=abc&state=1", "https://cb/#access_token=REDACTED&state=1"),
        ("https://x/y?access%5Ftoken=abc", "https://x/y?access%5Ftoken=REDACTED"),
        ("https://x/y?limit=100&after=QVFI", "https://x/y?limit=100&after=QVFI"),
        ("https://x/y", "https://x/y"),
    ],
)
def test_sanitize_url(url: str, expected: str) -> None:
    assert sanitize_url(url) == expected


def test_redact_replaces_given_secrets_and_their_url_encoded_form() -> None:
    text = "tok=ab|cd other=ab%7Ccd and plain zzzz"
    assert redact(text, ["ab|cd", None, ""]) == "tok=REDACTED other=REDACTED and plain zzzz"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging("DEBUG", stream=buf)
    yield buf
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def _assert_no_token(text: str) -> None:
    assert TOKEN not in text
    assert "secretTOKEN" not in text


def test_failing_request_never_leaks_the_token(
    server: Server, json_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(status(500), Action("reset"), Action("close"))
    session, _ = make_session(retries=2)
    url = server.url + f"/v26.0/me/posts?access_token={TOKEN}&limit=5"
    with pytest.raises(ApiError) as info:
        session.request("GET", url, endpoint="posts", params={"fields": "id"})
    logging.getLogger("boundary").error("sync failed", exc_info=info.value)  # what the runner does

    assert server.seen[0]["query"]["access_token"] == [TOKEN]  # the token did go on the wire
    # raw records (before any log redaction filter) are already sanitized by the session
    messages = [r.getMessage() for r in caplog.records if r.name == "shared.http"]
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "shared.http")
    assert any(r.levelno == logging.DEBUG and "500" in r.getMessage() for r in caplog.records)
    assert any("access_token=REDACTED" in m for m in messages)
    for message in messages:
        _assert_no_token(message)
    # the exception, its whole chain and the formatted traceback
    _assert_no_token("".join(traceback.format_exception(info.value)))
    # the emitted JSON lines
    output = json_logs.getvalue()
    _assert_no_token(output)
    lines = [json.loads(line) for line in output.splitlines()]
    assert any(line["severity"] == "WARNING" for line in lines)
    assert any(line["severity"] == "ERROR" and "stack_trace" in line for line in lines)


def test_connection_refused_error_chain_has_no_token(json_logs: io.StringIO) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    session, _ = make_session(retries=0)
    with pytest.raises(RetriableApiError) as info:
        session.request("GET", f"http://127.0.0.1:{port}/oauth?client_secret={TOKEN}", endpoint="x")
    formatted = "".join(traceback.format_exception(info.value))
    assert "Max retries exceeded" in formatted  # the urllib3 message is still there, minus the secret
    _assert_no_token(formatted)
    _assert_no_token(json_logs.getvalue())


def test_invalid_header_is_fatal_and_not_retried(server: Server) -> None:
    session, rec = make_session()
    with pytest.raises(FatalApiError) as info:
        session.request("GET", server.url + "/x", endpoint="x", headers={"Authorization": f"Bearer {TOKEN}\n"})
    assert rec.sleeps == [] and server.seen == []
    assert isinstance(info.value.__cause__, requests.exceptions.InvalidHeader)
    _assert_no_token("".join(traceback.format_exception(info.value)))
