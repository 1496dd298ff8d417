"""JSON-lines logging in Cloud Logging's structured format, with context fields and secret redaction.

One JSON object per line on stdout: ``severity``, ``message``, ``time`` (RFC 3339), the source location,
the fields of every enclosing ``log_context(...)`` and the record's ``extra={"fields": {...}}``.
Every emitted line goes through ``scrub``: registered secrets (tokens, loaded by the token code) and
secret-looking URL parameters, JSON members and ``Bearer``/``Access-Token`` values become ``[REDACTED]``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote

__all__ = [
    "REDACTED",
    "SECRET_PARAM_NAMES",
    "JsonFormatter",
    "clear_secrets",
    "cloud_trace",
    "configure_logging",
    "current_context",
    "get_logger",
    "log_context",
    "redact",
    "redact_patterns",
    "register_secret",
]

REDACTED = "[REDACTED]"

#: Query-string / JSON member names whose values are secrets (compared case-insensitively).
SECRET_PARAM_NAMES: frozenset[str] = frozenset(
    {
        "access_token",
        "token",
        "refresh_token",
        "client_secret",
        "app_secret",
        "fb_exchange_token",
        "code",
        "auth_code",
        "key",
        "password",
        "input_token",
        "signature",
        "id_token",
        "appsecret_proof",
    }
)

#: Registered secrets shorter than this are ignored: redacting "a" would mangle every line.
MIN_SECRET_LENGTH = 4

_NAMES = "|".join(sorted((re.escape(n) for n in SECRET_PARAM_NAMES), key=len, reverse=True))
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # name=value in a URL or form body; the lookbehind keeps ``page_token``/``pageToken`` readable
    (re.compile(rf"(?i)(?<![\w-])({_NAMES})=([^&\s\"'#<>,;)\]}}]+)"), rf"\1={REDACTED}"),
    # "name": "value" (JSON) and 'name': 'value' (Python reprs)
    (re.compile(rf"(?i)(\"(?:{_NAMES})\"\s*:\s*\")((?:[^\"\\]|\\.)*)(\")"), rf"\1{REDACTED}\3"),
    (re.compile(rf"(?i)('(?:{_NAMES})'\s*:\s*')([^']*)(')"), rf"\1{REDACTED}\3"),
    # Authorization: Bearer xxx
    (re.compile(r"(?i)\b(Bearer)\s+[A-Za-z0-9\-._~+/=|%]+"), rf"\1 {REDACTED}"),
    # TikTok's Access-Token header, as a header line, dict repr or JSON member
    (
        re.compile(r"(?i)(Access-Token[\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"),
        rf"\1{REDACTED}",
    ),
    # userinfo password in a URL: scheme://user:password@host
    (re.compile(r"(://[^/\s:@]+:)([^@/\s]+)(@)"), rf"\1{REDACTED}\3"),
)

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Make ``value`` (and its URL-encoded and JSON-escaped forms) disappear from every log line."""
    global _secrets_re
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    variants = {value, quote(value, safe=""), json.dumps(value)[1:-1]}
    with _secrets_lock:
        if variants <= _secrets:
            return
        _secrets.update(variants)
        _secrets_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secrets_re
    with _secrets_lock:
        _secrets.clear()
        _secrets_re = None


def redact_patterns(text: str) -> str:
    """Redact secret-looking values (URL params, JSON members, Bearer/Access-Token) in ``text``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(text: str) -> str:
    """Replace every registered secret and every secret-looking value in ``text`` by ``[REDACTED]``."""
    secrets_re = _secrets_re
    if secrets_re is not None:
        text = secrets_re.sub(REDACTED, text)
    return redact_patterns(text)


# --- context -----------------------------------------------------------------------------------

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("sde_log_context", default={})  # noqa: B039


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (run_id, function, platform, account, trigger, trace, ...) to every record inside."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields of the enclosing ``log_context`` blocks (a copy)."""
    return dict(_context.get())


def cloud_trace(header: str | None, project: str | None) -> str | None:
    """``projects/P/traces/T`` from an ``X-Cloud-Trace-Context: T/SPAN;o=1`` header, or None."""
    if not header or not project:
        return None
    trace_id = header.split("/", 1)[0].strip()
    return f"projects/{project}/traces/{trace_id}" if trace_id else None


# --- formatter ---------------------------------------------------------------------------------

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_TRACE_KEY = "logging.googleapis.com/trace"
_SPAN_KEY = "logging.googleapis.com/spanId"
_SOURCE_KEY = "logging.googleapis.com/sourceLocation"
_CORE = ("severity", "message", "time", "logger", _SOURCE_KEY, _TRACE_KEY, _SPAN_KEY, "stack_trace")


def _severity(levelno: int) -> str:
    if levelno in _SEVERITY:
        return _SEVERITY[levelno]
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _SEVERITY[threshold]
    return "DEBUG"


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One Cloud Logging structured-JSON object per record; the whole line is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {}
        context = dict(_context.get())
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            context.update(extra)
        trace = context.pop("trace", None)
        span = context.pop("span_id", None)
        for key, value in context.items():
            if key not in _CORE:
                payload[key] = value

        payload["severity"] = _severity(record.levelno)
        payload["message"] = record.getMessage()
        payload["time"] = (
            datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        )
        payload["logger"] = record.name
        payload[_SOURCE_KEY] = {"file": record.pathname, "line": str(record.lineno), "function": record.funcName}
        if trace:
            payload[_TRACE_KEY] = trace
        if span:
            payload[_SPAN_KEY] = span
        if record.exc_info:
            payload["stack_trace"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["stack_trace"] = record.exc_text
        if record.stack_info:
            payload["stack_trace"] = (payload.get("stack_trace", "") + "\n" + record.stack_info).strip()

        line = json.dumps(_scrub_value(payload), ensure_ascii=False, default=str)
        return redact(line)  # second pass over the serialized line: escaped forms, keys, anything missed


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker subclass so ``configure_logging`` recognises its own handler on re-entry."""


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Install the JSON handler on the root logger. Idempotent: a second call reuses the handler.

    Plain ``StreamHandler``s already on the root (``basicConfig``) are removed so lines are not doubled;
    handlers of other types (pytest's capture, Cloud Logging's) are left alone.
    """
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    root = logging.getLogger()
    target = sys.stdout if stream is None else stream
    handler: _JsonHandler | None = None
    for existing in list(root.handlers):
        if isinstance(existing, _JsonHandler):
            if handler is None:
                handler = existing
            else:
                root.removeHandler(existing)
        elif type(existing) is logging.StreamHandler:
            root.removeHandler(existing)
    if handler is None:
        handler = _JsonHandler(target)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    elif handler.stream is not target:
        if getattr(handler.stream, "closed", False):
            handler.stream = target  # setStream() would flush the closed stream (e.g. after captured output)
        else:
            handler.setStream(target)
    root.setLevel(level)
    return handler


def set_level(level: str) -> None:
    """Apply a validated level name (``Config.log_level``) to the root logger for this invocation."""
    logging.getLogger().setLevel(level.upper())


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``; here so modules need one import for logging concerns."""
    return logging.getLogger(name)
