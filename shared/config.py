"""All settings, read once from the environment. The only module that touches ``os.environ``.

Every external base URL is a setting so the same code talks to the real APIs or to ``sandbox/``.
A missing or malformed setting raises one ``ConfigError`` that names all of them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_TIMEZONE = "America/Argentina/Buenos_Aires"


@dataclass(frozen=True)
class Config:
    """Frozen settings. Build with ``Config.from_env()``; tests pass an explicit mapping."""

    # --- database -------------------------------------------------------------------------------
    database_url: str | None = None  # any PostgreSQL URL; unset -> embedded pgserver under data_dir
    instance_connection_name: str | None = None  # Cloud SQL "project:region:instance" -> connector
    db_user: str | None = None  # Cloud SQL IAM user (with the connector)
    db_name: str = "postgres"
    data_dir: Path = REPO_ROOT / ".data"  # git-ignored: embedded PostgreSQL, local vault

    # --- API endpoints (host roots; clients append the API paths) --------------------------------
    tiktok_base_url: str = "https://business-api.tiktok.com"
    meta_base_url: str = "https://graph.facebook.com"
    meta_api_version: str = "v26.0"
    youtube_data_base_url: str = "https://youtube.googleapis.com"
    youtube_analytics_base_url: str = "https://youtubeanalytics.googleapis.com"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    secret_manager_endpoint: str | None = None  # e.g. http://127.0.0.1:PORT (REST, anonymous creds)

    # --- OAuth app credentials (client side of the refresh grants) -------------------------------
    tiktok_client_id: str | None = None
    tiktok_client_secret: str | None = None
    meta_app_id: str | None = None
    meta_app_secret: str | None = None
    google_client_id: str | None = None
    google_client_secret: str | None = None

    # --- token vault ----------------------------------------------------------------------------
    vault_backend: str = "local"  # local | secretmanager
    gcp_project: str | None = None
    vault_keep_versions: int = 3  # older versions are disabled, then destroyed
    token_refresh_interval_minutes: int = 60  # how often refresh_tokens is scheduled
    token_refresh_fraction: float = 0.2  # refresh when < 20% of the lifetime remains ...
    # ... or when less than 2x the refresh interval remains (whichever margin is larger)

    # --- registry -------------------------------------------------------------------------------
    accounts_file: Path = REPO_ROOT / "accounts.toml"

    # --- HTTP -----------------------------------------------------------------------------------
    http_timeout_seconds: float = 30.0
    http_max_retries: int = 5
    http_backoff_base_seconds: float = 1.0
    http_backoff_cap_seconds: float = 60.0  # total sleep budget per request
    run_deadline_seconds: float = 1500.0  # below Scheduler's 30 min attempt deadline

    # --- YouTube --------------------------------------------------------------------------------
    youtube_lag_days: int = 5  # analytics totals consolidated through today - lag
    youtube_lookback_days: int = 28  # channel day metrics re-fetched every run
    youtube_daily_quota: int = 10_000  # Data API units per day for the project
    youtube_analytics_batch: int = 400  # ids per filters=video==... query: 2 full 200-row pages (API cap 500)

    # --- misc -----------------------------------------------------------------------------------
    default_timezone: str = DEFAULT_TIMEZONE
    log_level: str = "INFO"
    #: ISO-8601 instant used as "now" instead of the wall clock: for tests against the sandbox's
    #: movable clock and for replays. Never set in production.
    now_override: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build a Config from ``environ`` (default ``os.environ``); collect every problem first."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _parse(f.type, raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        cfg_defaults = cls()
        merged = {f.name: values.get(f.name, getattr(cfg_defaults, f.name)) for f in fields(cls)}
        problems += _validate(merged)
        if problems:
            raise ConfigError(problems)
        return cls(**merged)  # type: ignore[arg-type]

    def require(self, *names: str) -> None:
        """Raise one ConfigError naming every listed setting that is unset."""
        missing = [n.upper() for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise ConfigError([f"{n}: required but not set" for n in missing])

    def now(self) -> datetime:
        """The current instant (timezone-aware UTC), honouring NOW_OVERRIDE."""
        if self.now_override:
            return datetime.fromisoformat(self.now_override).astimezone(UTC)
        return datetime.now(UTC)

    @property
    def meta_graph_url(self) -> str:
        return f"{self.meta_base_url.rstrip('/')}/{self.meta_api_version}"


def _parse(type_name: object, raw: str) -> object:
    t = str(type_name)
    if "Path" in t:
        return Path(raw)
    if t.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if t.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    if t.startswith("bool"):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    return raw


_URL_FIELDS = (
    "tiktok_base_url",
    "meta_base_url",
    "youtube_data_base_url",
    "youtube_analytics_base_url",
    "google_token_url",
    "secret_manager_endpoint",
)


def _validate(v: Mapping[str, object]) -> list[str]:
    problems: list[str] = []
    for name in _URL_FIELDS:
        url = v[name]
        if url is None:
            continue
        p = urlparse(str(url))
        if p.scheme not in ("http", "https") or not p.netloc:
            problems.append(f"{name.upper()}: expected an http(s) URL, got {url!r}")
    if v["vault_backend"] not in ("local", "secretmanager"):
        problems.append(f"VAULT_BACKEND: expected 'local' or 'secretmanager', got {v['vault_backend']!r}")
    if v["vault_backend"] == "secretmanager" and not v["gcp_project"]:
        problems.append("GCP_PROJECT: required when VAULT_BACKEND=secretmanager")
    if not re.fullmatch(r"v\d+\.\d+", str(v["meta_api_version"])):
        problems.append(f"META_API_VERSION: expected like 'v26.0', got {v['meta_api_version']!r}")
    if v["database_url"] and urlparse(str(v["database_url"])).scheme not in ("postgresql", "postgres"):
        problems.append("DATABASE_URL: expected a postgresql:// URL")
    if str(v["log_level"]).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        problems.append(f"LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {v['log_level']!r}")
    try:
        ZoneInfo(str(v["default_timezone"]))
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"DEFAULT_TIMEZONE: unknown IANA timezone {v['default_timezone']!r}")
    for name in ("youtube_lag_days", "youtube_daily_quota", "http_max_retries"):
        if int(v[name]) < 0:  # type: ignore[call-overload]
            problems.append(f"{name.upper()}: must be >= 0")
    for name in ("youtube_lookback_days", "vault_keep_versions", "token_refresh_interval_minutes"):
        if int(v[name]) < 1:  # type: ignore[call-overload]
            problems.append(f"{name.upper()}: must be >= 1")
    for name in ("http_timeout_seconds", "run_deadline_seconds"):
        if not (math.isfinite(float(v[name])) and float(v[name]) > 0):  # type: ignore[arg-type]
            problems.append(f"{name.upper()}: must be a positive number")
    for name in ("http_backoff_base_seconds", "http_backoff_cap_seconds"):
        if not (math.isfinite(float(v[name])) and float(v[name]) >= 0):  # type: ignore[arg-type]
            problems.append(f"{name.upper()}: must be a number >= 0")
    if not 1 <= int(v["youtube_analytics_batch"]) <= 500:  # type: ignore[call-overload]
        problems.append("YOUTUBE_ANALYTICS_BATCH: must be between 1 and 500 (API filter cap)")
    if v["now_override"]:
        try:
            if datetime.fromisoformat(str(v["now_override"])).tzinfo is None:
                problems.append("NOW_OVERRIDE: must include a UTC offset")
        except ValueError:
            problems.append(f"NOW_OVERRIDE: not an ISO-8601 instant: {v['now_override']!r}")
    if not 0 < float(v["token_refresh_fraction"]) < 1:  # type: ignore[arg-type]
        problems.append("TOKEN_REFRESH_FRACTION: must be between 0 and 1")
    return problems
