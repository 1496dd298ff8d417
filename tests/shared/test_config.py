"""Config: the only reader of the environment; one ConfigError naming every bad setting."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.config import Config
from shared.errors import ConfigError


def test_defaults_need_no_environment() -> None:
    cfg = Config.from_env({})
    assert cfg.database_url is None and cfg.vault_backend == "local"
    assert cfg.meta_graph_url == "https://graph.facebook.com/v26.0"
    assert cfg.youtube_lag_days == 5 and cfg.youtube_daily_quota == 10_000


def test_values_are_parsed_by_type() -> None:
    cfg = Config.from_env({
        "DATABASE_URL": "postgresql://u:p@db:5432/wh", "YOUTUBE_LAG_DAYS": "3", "HTTP_TIMEOUT_SECONDS": "2.5",
        "DATA_DIR": "/tmp/x", "META_API_VERSION": "v25.0", "LOG_LEVEL": "debug",
    })
    assert cfg.youtube_lag_days == 3 and cfg.http_timeout_seconds == 2.5
    assert cfg.data_dir == Path("/tmp/x") and cfg.meta_graph_url.endswith("/v25.0")


def test_every_problem_is_named_in_one_error() -> None:
    bad = {
        "YOUTUBE_LAG_DAYS": "x", "TIKTOK_BASE_URL": "ftp:/nope", "VAULT_BACKEND": "s3", "LOG_LEVEL": "LOUD",
        "HTTP_TIMEOUT_SECONDS": "nan", "RUN_DEADLINE_SECONDS": "0", "YOUTUBE_DAILY_QUOTA": "-5",
        "HTTP_BACKOFF_CAP_SECONDS": "-3", "TOKEN_REFRESH_INTERVAL_MINUTES": "0", "META_API_VERSION": "v",
        "DATABASE_URL": "mysql://x/y", "DEFAULT_TIMEZONE": "Mars/Olympus", "NOW_OVERRIDE": "2026-11-27T10:00:00",
        "YOUTUBE_ANALYTICS_BATCH": "501", "TOKEN_REFRESH_FRACTION": "1.5",
    }
    with pytest.raises(ConfigError) as err:
        Config.from_env(bad)
    named = {p.split(":")[0] for p in err.value.problems}
    assert named == set(bad), named ^ set(bad)


def test_secret_manager_backend_requires_a_project() -> None:
    with pytest.raises(ConfigError, match="GCP_PROJECT"):
        Config.from_env({"VAULT_BACKEND": "secretmanager"})


def test_now_override_and_require() -> None:
    cfg = Config.from_env({"NOW_OVERRIDE": "2026-11-28T03:00:00-03:00"})
    assert cfg.now() == datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    with pytest.raises(ConfigError) as err:
        cfg.require("tiktok_client_id", "google_client_secret")
    assert [p.split(":")[0] for p in err.value.problems] == ["TIKTOK_CLIENT_ID", "GOOGLE_CLIENT_SECRET"]
