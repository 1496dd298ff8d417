"""shared.runner: body validation, trigger detection, per-account isolation, the run ledger, 200/400/500.

Real PostgreSQL and real werkzeug requests; the per-account sync is a small function written for each
test (the runner's contract is "call it, isolate its failures, record what it says").
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pg8000.exceptions
import pytest
from werkzeug.test import EnvironBuilder

from shared.config import Config
from shared.errors import AuthError, InputError, LoadError, QuotaExceededError, RetriableApiError
from shared.logs import register_secret
from shared.registry import Account
from shared.runner import AccountResult, RunContext, parse_body, run_http, trigger_of

REGISTRY = """
[[accounts]]
platform = "youtube"
account_id = "UCaaa"
name = "A"
brand = "Brand A"
secret = "yt-a"
timezone = "UTC"

[[accounts]]
platform = "youtube"
account_id = "UCbbb"
name = "B"
brand = "Brand B"
secret = "yt-b"

[[accounts]]
platform = "youtube"
account_id = "UCccc"
name = "C"
brand = "Brand C"
secret = "yt-c"

[[accounts]]
platform = "tiktok"
account_id = "tt1"
name = "T"
brand = "Brand T"
secret = "tt-1"
"""

SCHEDULER = {"User-Agent": "Google-Cloud-Scheduler", "X-CloudScheduler": "true",
             "X-CloudScheduler-JobName": "jobs/youtube", "X-CloudScheduler-ScheduleTime": "2026-11-27T09:00:00Z",
             "Content-Type": "application/octet-stream"}


def request(body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None,
            method: str = "POST") -> Any:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return EnvironBuilder(method=method, data=data, headers=headers or SCHEDULER).get_request()


@pytest.fixture
def cfg(database_url: str, tmp_path: Path) -> Config:
    path = tmp_path / "accounts.toml"
    path.write_text(REGISTRY)
    return Config.from_env({"DATABASE_URL": database_url, "ACCOUNTS_FILE": str(path),
                            "DATA_DIR": str(tmp_path / "data")})


def run(cfg: Config, sync: Callable[[RunContext, Account], AccountResult], body: Any = None, **kw: Any
        ) -> tuple[dict[str, Any], int]:
    return run_http(request(body, **kw), function="youtube_sync", platforms=("youtube",), sync_account=sync,
                    extra_fields={"full_rescan": bool}, config=cfg)


def ledger(db_conn: Any) -> dict[str, list[Any]]:
    rows = db_conn.run("SELECT account_id, status, error_class, api_calls, quota_units, rows_inserted, trigger,"
                       " details FROM social.sync_runs ORDER BY account_id")
    return {r[0]: r[1:] for r in rows}


def ok_sync(ctx: RunContext, account: Account) -> AccountResult:
    r = AccountResult(api_calls=3, quota_units=2, window_start=date(2026, 1, 1), window_end=date(2026, 1, 2))
    r.add_counts(inserted=5, updated=1)
    return r


def test_all_ok_is_200_with_one_ledger_row_per_account(cfg: Config, db_conn: Any) -> None:
    seen: list[str] = []

    def sync(ctx: RunContext, account: Account) -> AccountResult:
        seen.append(account.account_id)
        assert ctx.trigger == "scheduler" and ctx.request.options == {"full_rescan": True}
        return ok_sync(ctx, account)

    body, status = run(cfg, sync, {"full_rescan": True})
    assert status == 200 and body["status"] == "ok"
    assert seen == ["UCaaa", "UCbbb", "UCccc"]  # the tiktok account is not this function's
    assert body["totals"] == {"api_calls": 9, "quota_units": 6, "rows_inserted": 15, "rows_updated": 3,
                              "rows_unchanged": 0, "accounts_ok": 3}
    rows = ledger(db_conn)
    assert set(rows) == {"UCaaa", "UCbbb", "UCccc"}
    assert rows["UCaaa"][:6] == ["ok", None, 3, 2, 5, "scheduler"]
    assert rows["UCaaa"][6]["schedule_time"] == "2026-11-27T09:00:00Z"
    # the registry was mirrored into social.accounts
    assert db_conn.run("SELECT count(*) FROM social.accounts")[0][0] == 4


def test_a_retriable_failure_is_500_and_isolated(cfg: Config, db_conn: Any) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        if account.account_id == "UCbbb":
            raise RetriableApiError("503 after retries", platform="youtube", status=503)
        return ok_sync(ctx, account)

    body, status = run(cfg, sync)
    assert status == 500 and body["status"] == "partial"
    rows = ledger(db_conn)
    assert rows["UCbbb"][:2] == ["failed", "api_retriable"]
    assert rows["UCaaa"][0] == rows["UCccc"][0] == "ok"


def test_needs_reauthorization_is_200_not_worth_a_scheduler_retry(cfg: Config, db_conn: Any) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        if account.account_id == "UCaaa":
            raise AuthError("refresh token revoked")
        return ok_sync(ctx, account)

    body, status = run(cfg, sync)
    assert status == 200 and body["status"] == "partial"
    assert ledger(db_conn)["UCaaa"][:2] == ["failed", "needs_reauthorization"]


def test_everything_failed_is_status_failed(cfg: Config) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        raise RetriableApiError("down", platform="youtube", status=500)

    body, status = run(cfg, sync)
    assert status == 500 and body["status"] == "failed" and body["totals"]["accounts_failed"] == 3


def test_quota_exceeded_is_a_deferral_and_keeps_partial_counts(cfg: Config, db_conn: Any) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        if account.account_id == "UCaaa":
            exc = QuotaExceededError("quota", platform="youtube", status=403, code="quotaExceeded")
            exc.partial_result = AccountResult(api_calls=7, quota_units=6, details={"plan": {"x": 1},  # type: ignore[attr-defined]
                                                                                     "rows": {"y": 2}})
            raise exc
        if account.account_id == "UCbbb":
            exc2 = RetriableApiError("boom", platform="youtube", status=500)
            exc2.partial_result = AccountResult(api_calls=2, quota_units=2)  # type: ignore[attr-defined]
            raise exc2
        return ok_sync(ctx, account)

    _body, status = run(cfg, sync)
    assert status == 500
    rows = ledger(db_conn)
    assert rows["UCaaa"][:4] == ["deferred", "quota_exceeded", 7, 6]
    assert rows["UCaaa"][6]["plan"] == {"x": 1} and "rows" not in rows["UCaaa"][6]
    assert rows["UCbbb"][:4] == ["failed", "api_retriable", 2, 2]


def test_a_bug_in_one_account_does_not_stop_the_others(cfg: Config, db_conn: Any) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        if account.account_id == "UCaaa":
            raise KeyError("oops")
        return ok_sync(ctx, account)

    _body, status = run(cfg, sync)
    assert status == 200
    rows = ledger(db_conn)
    assert rows["UCaaa"][:2] == ["failed", "internal"] and rows["UCccc"][0] == "ok"


def test_a_load_error_resets_the_connection_for_the_next_account(cfg: Config, db_conn: Any) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        if account.account_id == "UCaaa":
            ctx.conn.close()  # the database dropped the connection
            raise LoadError("connection lost")
        ctx.conn.run("SELECT 1")
        return ok_sync(ctx, account)

    _body, status = run(cfg, sync)
    assert status == 500  # a load error is retriable
    rows = ledger(db_conn)
    assert rows["UCbbb"][0] == "ok" and rows["UCccc"][0] == "ok"


def test_dry_run_writes_no_ledger(cfg: Config, db_conn: Any) -> None:
    body, status = run(cfg, ok_sync, {"dry_run": True})
    assert status == 200 and body["dry_run"] is True
    assert ledger(db_conn) == {}


def test_accounts_filter_and_unknown_accounts(cfg: Config, db_conn: Any) -> None:
    body, status = run(cfg, ok_sync, {"accounts": ["UCccc"]})
    assert status == 200 and [a["account_id"] for a in body["accounts"]] == ["UCccc"]
    db_conn.run("TRUNCATE social.sync_runs, social.accounts")
    body, status = run(cfg, ok_sync, {"accounts": ["UCccc", "tt1"]})  # tt1 is not a YouTube account
    assert status == 400 and body["field"] == "accounts" and "tt1" in body["message"]
    assert db_conn.run("SELECT count(*) FROM social.accounts")[0][0] == 0  # nothing written
    assert ledger(db_conn) == {}


def test_run_deadline_defers_accounts_not_started(cfg: Config, db_conn: Any) -> None:
    import dataclasses

    late = dataclasses.replace(cfg, run_deadline_seconds=0.0)
    body, status = run(late, ok_sync)
    assert status == 200
    assert {r[0] for r in ledger(db_conn).values()} == {"deferred"}
    assert {a["error_class"] for a in body["accounts"]} == {"deadline"}


def test_bad_configuration_is_a_500_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOUTUBE_LAG_DAYS", "five")
    body, status = run_http(request({}), function="youtube_sync", platforms=("youtube",), sync_account=ok_sync)
    assert status == 500 and body["error"] == "config" and "YOUTUBE_LAG_DAYS" in body["message"]


def test_methods(cfg: Config) -> None:
    _body, status = run_http(request(method="PUT"), function="f", platforms=("youtube",), sync_account=ok_sync,
                            config=cfg)
    assert status == 405


@pytest.mark.parametrize(("headers", "trigger"), [
    ({"User-Agent": "Google-Cloud-Scheduler"}, "scheduler"),
    ({"X-CloudScheduler": "true"}, "scheduler"),
    ({"User-Agent": "curl/8.0"}, "manual"),
    ({}, "manual"),
    ({"X-SDE-Trigger": "cli"}, "cli"),
])
def test_trigger_detection(headers: dict[str, str], trigger: str) -> None:
    assert trigger_of(headers) == trigger


def test_parse_body_options_and_defaults() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    req = parse_body(b'{"start_date": "2026-11-01", "full_rescan": false}', extra_fields={"full_rescan": bool},
                     now=now)
    assert req.window is not None and (req.window.start, req.window.end) == (date(2026, 11, 1), date(2026, 11, 26))
    assert req.options == {"full_rescan": False} and req.dry_run is False
    assert parse_body(b"  ", now=now).accounts is None
    assert parse_body(b"null", now=now).window is None
    assert parse_body(b'{"accounts": ["a", "a", "b"]}', now=now).accounts == ["a", "b"]


def test_future_means_after_today_in_the_earliest_timezone() -> None:
    """At 12:00 UTC it is already the next day in UTC+14 (Kiritimati), but not the day after."""
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_body(b'{"start_date": "2026-11-28", "end_date": "2026-11-28"}', now=now).window is not None
    with pytest.raises(InputError) as err:
        parse_body(b'{"start_date": "2026-11-01", "end_date": "2026-11-29"}', now=now)
    assert err.value.field == "end_date"


@pytest.mark.parametrize(("body", "field"), [
    (b'{"accounts": []}', "accounts"), (b'{"accounts": ["ok", ""]}', "accounts"), (b'{"accounts": "x"}', "accounts"),
    (b'{"dry_run": "yes"}', "dry_run"), (b'{"start_date": 20261101}', "start_date"), (b"[1]", "body"),
    (b"{not json", "body"), (b'{"end_date": "2026-11-01"}', "start_date"),
    (b'{"start_date": "2026-13-01"}', "start_date"),
])
def test_parse_body_names_the_bad_field(body: bytes, field: str) -> None:
    with pytest.raises(InputError) as err:
        parse_body(body, now=datetime(2026, 11, 27, tzinfo=UTC))
    assert err.value.field == field


def test_plan_run_runs_once_before_the_accounts_and_its_result_is_ctx_allocations(cfg: Config, db_conn: Any) -> None:
    calls: list[list[str]] = []
    seen: dict[str, Any] = {}

    def plan(ctx: RunContext, accounts: list[Account]) -> dict[str, Any]:
        assert not seen  # before the first sync
        calls.append([a.account_id for a in accounts])
        return {a.account_id: {"units": i} for i, a in enumerate(accounts)}

    def sync(ctx: RunContext, account: Account) -> AccountResult:
        seen[account.account_id] = ctx.allocations.get(account.account_id)
        return ok_sync(ctx, account)

    body, status = run_http(request({"accounts": ["UCbbb", "UCaaa"]}), function="youtube_sync",
                            platforms=("youtube",), sync_account=sync, config=cfg, plan_run=plan)
    assert status == 200, body
    assert calls == [["UCbbb", "UCaaa"]]
    assert seen == {"UCbbb": {"units": 0}, "UCaaa": {"units": 1}}


def test_a_failing_planner_leaves_every_account_to_plan_for_itself(cfg: Config, db_conn: Any) -> None:
    def plan(ctx: RunContext, accounts: list[Account]) -> dict[str, Any]:
        raise LoadError("cannot read the warehouse")

    seen: list[dict[str, Any]] = []

    def sync(ctx: RunContext, account: Account) -> AccountResult:
        seen.append(dict(ctx.allocations))
        return ok_sync(ctx, account)

    body, status = run_http(request({}), function="youtube_sync", platforms=("youtube",), sync_account=sync,
                            config=cfg, plan_run=plan)
    assert status == 200 and body["status"] == "ok"
    assert seen == [{}, {}, {}]


@pytest.mark.parametrize("error", [
    pg8000.exceptions.InterfaceError("network error"),
    pg8000.exceptions.DatabaseError({"S": "FATAL", "C": "57P01", "M": "terminating connection"}),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_a_raw_driver_error_is_a_retriable_load_failure(cfg: Config, db_conn: Any, error: Exception) -> None:
    def sync(ctx: RunContext, account: Account) -> AccountResult:
        if account.account_id == "UCbbb":
            raise error
        ctx.conn.run("SELECT 1")
        return ok_sync(ctx, account)

    body, status = run(cfg, sync)
    assert status == 500  # Scheduler retries
    rows = ledger(db_conn)
    assert rows["UCbbb"][:2] == ["failed", "load"]
    assert rows["UCaaa"][0] == "ok" and rows["UCccc"][0] == "ok"
    assert {a["account_id"]: a["error_class"] for a in body["accounts"]}["UCbbb"] == "load"


def test_finished_at_follows_the_runs_clock(cfg: Config, db_conn: Any) -> None:
    """Under NOW_OVERRIDE (replays, tests) started_at is the run's clock; finished_at must not precede it."""
    import dataclasses

    future = dataclasses.replace(cfg, now_override="2031-05-01T12:00:00+00:00")
    _body, status = run(future, ok_sync)
    assert status == 200
    rows = db_conn.run("SELECT started_at, finished_at FROM social.sync_runs")
    assert len(rows) == 3
    for started, finished in rows:
        assert started.year == 2031 and finished >= started


def test_a_registered_secret_never_reaches_the_ledger_or_the_response(cfg: Config, db_conn: Any) -> None:
    """Exception texts are redacted before they are stored in social.sync_runs or returned."""
    secret = "sbx-secret-token-0123456789abcdef"
    register_secret(secret)

    def leaky(ctx: RunContext, account: Account) -> AccountResult:
        raise RetriableApiError(f"upstream echoed {secret}", platform="youtube", status=502)

    body, status = run(cfg, leaky)
    assert status == 500 and secret not in json.dumps(body)
    stored = db_conn.run("SELECT error_message FROM social.sync_runs WHERE run_id = :r", r=body["run_id"])
    assert stored and all(secret not in (m or "") and "[REDACTED]" in (m or "") for (m,) in stored)


def test_log_level_setting_applies_to_the_invocation(cfg: Config) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        quiet = dataclasses.replace(cfg, log_level="ERROR")
        run(quiet, ok_sync)
        assert root.level == logging.ERROR
    finally:
        root.setLevel(before)
