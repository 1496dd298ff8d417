"""JSON-lines logging: one valid object per line, Cloud Logging keys, context fields, redaction."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shared.logs import (
    JsonFormatter,
    clear_secrets,
    cloud_trace,
    configure_logging,
    current_context,
    get_logger,
    log_context,
    redact,
    register_secret,
)

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    clear_secrets()


@pytest.fixture
def buf(root_restored: None) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]  # every line must parse


def test_one_json_object_per_line_with_severity_message_time(buf: io.StringIO) -> None:
    log = get_logger("sde.test")
    log.debug("d")
    log.info("hello %s", "world")
    log.warning("w")
    log.error("e")
    log.critical("c")
    log.log(25, "between info and warning")
    out = lines(buf)
    assert [o["severity"] for o in out] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "INFO"]
    assert out[1]["message"] == "hello world"
    for o in out:
        assert RFC3339.fullmatch(o["time"])
        assert o["logger"] == "sde.test"
        loc = o["logging.googleapis.com/sourceLocation"]
        assert (
            loc["file"].endswith("test_logs.py")
            and loc["function"] == "test_one_json_object_per_line_with_severity_message_time"
        )


def test_multiline_messages_stay_on_one_line(buf: io.StringIO) -> None:
    get_logger("x").info('first\nsecond\n"quoted"')
    raw = buf.getvalue()
    assert raw.count("\n") == 1
    assert json.loads(raw)["message"] == 'first\nsecond\n"quoted"'


def test_level_filters_records(root_restored: None) -> None:
    stream = io.StringIO()
    configure_logging("WARNING", stream=stream)
    get_logger("x").info("dropped")
    get_logger("x").warning("kept")
    assert [o["message"] for o in lines(stream)] == ["kept"]


def test_unknown_level_is_a_clear_error(root_restored: None) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", stream=io.StringIO())


def test_context_fields_nest_and_unwind(buf: io.StringIO) -> None:
    log = get_logger("x")
    with log_context(run_id="r-1", function="tiktok", trigger="scheduler"):
        log.info("run started")
        with log_context(platform="tiktok", account="acct-9"):
            assert current_context()["account"] == "acct-9"
            log.info("account done", extra={"fields": {"rows": 120, "pages": 3}})
        log.info("run done")
    log.info("outside")
    first, inner, done, outside = lines(buf)
    assert first["run_id"] == "r-1" and first["function"] == "tiktok" and "account" not in first
    assert inner["account"] == "acct-9" and inner["platform"] == "tiktok" and inner["rows"] == 120
    assert inner["pages"] == 3 and inner["trigger"] == "scheduler"
    assert "account" not in done and done["run_id"] == "r-1"
    assert "run_id" not in outside


def test_context_is_per_thread(buf: io.StringIO) -> None:
    log = get_logger("x")
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with log_context(account=name):
            barrier.wait()
            log.info("from %s", name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {(o["message"], o["account"]) for o in lines(buf)} == {("from a", "a"), ("from b", "b")}


def test_trace_goes_to_the_cloud_logging_key(buf: io.StringIO) -> None:
    trace = cloud_trace("105445aa7843bc8bf206b12000100000/1;o=1", "my-project")
    assert trace == "projects/my-project/traces/105445aa7843bc8bf206b12000100000"
    assert cloud_trace(None, "p") is None and cloud_trace("abc/1", None) is None
    with log_context(trace=trace, run_id="r"):
        get_logger("x").info("traced")
    (o,) = lines(buf)
    assert o["logging.googleapis.com/trace"] == trace
    assert "trace" not in o


def test_core_keys_cannot_be_overridden_by_fields(buf: io.StringIO) -> None:
    with log_context(severity="DEBUG", message="spoof"):
        get_logger("x").error("real", extra={"fields": {"time": "never"}})
    (o,) = lines(buf)
    assert o["severity"] == "ERROR" and o["message"] == "real" and o["time"] != "never"


def test_exception_traceback_is_included_and_redacted(buf: io.StringIO) -> None:
    secret = "ya29.a0AfB_secret_access_token_value"
    register_secret(secret)
    try:
        raise RuntimeError(f"refresh failed for token {secret}")
    except RuntimeError:
        get_logger("x").exception("sync failed")
    (o,) = lines(buf)
    assert o["severity"] == "ERROR"
    assert o["message"] == "sync failed"
    assert "Traceback (most recent call last)" in o["stack_trace"]
    assert "RuntimeError: refresh failed for token [REDACTED]" in o["stack_trace"]
    assert secret not in buf.getvalue()


def test_registered_secrets_never_appear_anywhere_in_a_line(buf: io.StringIO) -> None:
    secret = 'tok|en"with/odd+chars'
    register_secret(secret)
    register_secret("")  # ignored
    register_secret("ab")  # too short to redact safely: ignored
    log = get_logger("x")
    with log_context(account="a", note=f"ctx {secret}"):
        log.info("msg %s", secret, extra={"fields": {"payload": {"nested": [secret, 1]}, secret: "as key"}})
    log.info("url-encoded tok%7Cen%22with%2Fodd%2Bchars end")
    out = buf.getvalue()
    assert "tok|en" not in out and "tok%7Cen" not in out and 'tok|en\\"' not in out
    assert out.count("[REDACTED]") >= 5
    assert "ab" in redact("ab cd")


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("GET https://graph.facebook.com/v26.0/me?access_token=EAAB123&fields=id", "EAAB123"),
        ('{"access_token": "act.123abc", "expires_in": 86400}', "act.123abc"),
        ("{'refresh_token': 'rft.999', 'scope': 'x'}", "rft.999"),
        ("Authorization: Bearer ya29.ZZZ-yyy_xxx", "ya29.ZZZ-yyy_xxx"),
        ("headers={'Access-Token': 'tt-abcdef'}", "tt-abcdef"),
        ('"Access-Token": "tt-abcdef"', "tt-abcdef"),
        ("client_secret=s3cr3t&grant_type=refresh_token", "s3cr3t"),
        ("postgresql://sde:dbpass@10.0.0.1/db", "dbpass"),
    ],
)
def test_secret_patterns_are_redacted_without_registration(buf: io.StringIO, text: str, leak: str) -> None:
    get_logger("x").warning("seen: %s", text)
    out = buf.getvalue()
    assert leak not in out
    assert "[REDACTED]" in out
    json.loads(out)


def test_non_secret_parameters_survive(buf: io.StringIO) -> None:
    get_logger("x").info("GET /v3/videos?part=id&pageToken=CAUQAA&page_token=abc&limit=100")
    assert lines(buf)[0]["message"] == "GET /v3/videos?part=id&pageToken=CAUQAA&page_token=abc&limit=100"


def test_configure_logging_is_idempotent(root_restored: None) -> None:
    root = logging.getLogger()
    root.addHandler(logging.StreamHandler(sys.stderr))  # what basicConfig would have left behind
    first, second = io.StringIO(), io.StringIO()
    h1 = configure_logging("INFO", stream=first)
    h2 = configure_logging("INFO", stream=second)  # a warm instance / a re-imported module
    assert h1 is h2
    ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1
    assert not [h for h in root.handlers if type(h) is logging.StreamHandler]
    get_logger("x").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_non_json_values_are_stringified(buf: io.StringIO) -> None:
    import datetime as dt

    get_logger("x").info("m", extra={"fields": {"day": dt.date(2026, 9, 2), "ids": ("a", "b"), "ratio": 0.5}})
    (o,) = lines(buf)
    assert o["day"] == "2026-09-02" and o["ids"] == ["a", "b"] and o["ratio"] == 0.5


def test_configure_logging_survives_a_closed_previous_stream() -> None:
    """A warm instance (or a test) may have closed the stream the handler was writing to."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first)
    first.close()
    configure_logging("INFO", stream=second)
    logging.getLogger("sde.test").info("after reconfigure")
    assert json.loads(second.getvalue().splitlines()[-1])["message"] == "after reconfigure"
    configure_logging("INFO", stream=sys.stdout)
