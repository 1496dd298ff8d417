"""Token lifecycle against the sandbox's OAuth emulators, the real local vault and a real PostgreSQL.

The clock: the sandbox clock is moved (``sandbox.clock.advance``) and the manager's config gets the same
instant through NOW_OVERRIDE, so both sides agree on "now" without any wall-time assertion.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandbox import FaultRule
from shared.config import REPO_ROOT, Config
from shared.errors import InputError, VaultError
from shared.logs import configure_logging
from shared.tokens import (
    RefreshOutcome,
    TokenManager,
    TokenSet,
    lock_key,
    needs_refresh,
    refresh_margin,
    refresh_token_warnings,
)
from shared.vault import make_vault

TIKTOK_REFRESH = "oauth2.refresh_token"  # endpoint name of sandbox/tiktok.py's refresh route


def first_credential(sandbox: Any, provider: str) -> tuple[str, dict[str, Any]]:
    from sandbox.server import PROVIDER_OF

    for name, payload in sorted(sandbox.credentials().items()):
        accounts = sandbox.world.credentials()[name]
        if PROVIDER_OF[accounts[0].platform] == provider:
            return name, payload
    raise AssertionError(f"the sandbox world has no {provider} credential")


def manager_now(sandbox: Any, make_config: Any, **overrides: Any) -> TokenManager:
    """A manager whose "now" is the sandbox clock's now."""
    config = make_config(now_override=sandbox.clock.now().isoformat(), **overrides)
    return TokenManager(config, make_vault(config), sleep=lambda s: None)


@pytest.fixture
def tiktok(sandbox: Any, make_config: Any, database_url: str) -> tuple[str, dict[str, Any]]:
    name, payload = first_credential(sandbox, "tiktok")
    make_vault(make_config()).write(name, payload)
    return name, payload


# --------------------------------------------------------------------------------------------------
# Predictive refresh
# --------------------------------------------------------------------------------------------------


def test_tiktok_expiring_in_5_minutes_is_refreshed_and_the_rotated_refresh_token_stored(
        sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    sandbox.clock.advance(hours=23, minutes=55)
    manager = manager_now(sandbox, make_config)
    outcome = manager.ensure_fresh(name)
    assert outcome.outcome == "refreshed", outcome
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1
    stored = manager.vault.read(name)
    assert stored["access_token"] != initial["access_token"]
    assert stored["refresh_token"] != initial["refresh_token"]
    # the stored refresh token is the live one the platform issued; the old one is used up
    assert sandbox.tokens.check(stored["refresh_token"], "tiktok", ("refresh",))[0] == "ok"
    assert sandbox.tokens.lookup(initial["refresh_token"]).used
    assert sandbox.tokens.check(stored["access_token"], "tiktok")[0] == "ok"
    # refresh_token_expires_at = now + refresh_token_expires_in: the one-year clock from authorization
    got = datetime.fromisoformat(stored["refresh_token_expires_at"])
    assert abs(got - datetime.fromisoformat(initial["refresh_token_expires_at"])) < timedelta(minutes=1)
    assert outcome.expires_at == datetime.fromisoformat(stored["access_token_expires_at"])


def test_tiktok_expiring_in_20_hours_is_left_alone(sandbox: Any, make_config: Any,
                                                   tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    sandbox.clock.advance(hours=4)
    manager = manager_now(sandbox, make_config)
    outcome = manager.ensure_fresh(name)
    assert outcome.outcome == "fresh"
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 0
    assert manager.vault.read(name)["access_token"] == initial["access_token"]
    assert [v.version for v in manager.vault.versions(name)] == [1]


def test_force_refreshes_a_fresh_token(sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, _ = tiktok
    assert manager_now(sandbox, make_config).ensure_fresh(name, force=True).outcome == "refreshed"
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1


def test_dry_run_reports_due_without_calling(sandbox: Any, make_config: Any,
                                             tiktok: tuple[str, dict[str, Any]]) -> None:
    name, _ = tiktok
    sandbox.clock.advance(hours=23)
    assert manager_now(sandbox, make_config).ensure_fresh(name, dry_run=True).outcome == "due"
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 0


def test_google_refresh_keeps_the_refresh_token(sandbox: Any, make_config: Any, database_url: str) -> None:
    name, initial = first_credential(sandbox, "google")
    manager = manager_now(sandbox, make_config)
    manager.vault.write(name, initial)
    outcome = manager.ensure_fresh(name)  # a 1 h token is always inside the 2 h margin of an hourly refresher
    assert outcome.outcome == "refreshed"
    stored = manager.vault.read(name)
    assert stored["refresh_token"] == initial["refresh_token"]
    assert stored["access_token"] != initial["access_token"]
    assert sandbox.ledger.calls("google_oauth", endpoint="token") == 1


def test_meta_user_token_exchange_rederives_page_tokens(sandbox: Any, make_config: Any, database_url: str) -> None:
    name, initial = first_credential(sandbox, "meta")
    assert initial["metadata"].get("page_tokens"), "the sandbox credential carries page tokens"
    vault = make_vault(make_config())
    vault.write(name, initial)
    # 50 days into a 60-day user token: inside the 12-day margin (20% of 60 days)
    sandbox.clock.advance(days=50)
    manager = manager_now(sandbox, make_config)
    page_before = dict(initial["metadata"]["page_tokens"])
    outcome = manager.ensure_fresh(name)
    assert outcome.outcome == "refreshed", outcome
    stored = vault.read(name)
    assert stored["access_token"] != initial["access_token"]
    assert set(stored["metadata"]["page_tokens"]) == set(page_before)
    assert datetime.fromisoformat(stored["access_token_expires_at"]) - sandbox.clock.now() > timedelta(days=50)
    # page tokens have no expiry: fresh, no call
    assert manager_now(sandbox, make_config).ensure_fresh(name).outcome == "fresh"


# --------------------------------------------------------------------------------------------------
# Write-ahead: the rotated refresh token is never lost
# --------------------------------------------------------------------------------------------------


class FlakyVault:
    """Wraps a real vault; ``write`` fails the first ``fail`` times (a Secret Manager outage)."""

    def __init__(self, inner: Any, fail: int) -> None:
        self.inner, self.fail, self.attempts = inner, fail, 0

    def write(self, name: str, payload: Any) -> int:
        self.attempts += 1
        if self.attempts <= self.fail:
            raise VaultError("simulated outage")
        return self.inner.write(name, payload)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def test_vault_write_is_retried(sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    config = make_config(now_override=sandbox.clock.now().isoformat())
    flaky = FlakyVault(make_vault(config), fail=2)
    outcome = TokenManager(config, flaky, sleep=lambda s: None).ensure_fresh(name, force=True)
    assert outcome.outcome == "refreshed"
    assert flaky.attempts == 3
    stored = flaky.inner.read(name)
    assert stored["refresh_token"] != initial["refresh_token"]
    assert sandbox.tokens.check(stored["refresh_token"], "tiktok", ("refresh",))[0] == "ok"
    assert not list((config.data_dir / "token-journal").glob("*.json"))


def test_vault_outage_keeps_the_response_in_the_journal_and_the_next_read_recovers(
        sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    config = make_config(now_override=sandbox.clock.now().isoformat())
    flaky = FlakyVault(make_vault(config), fail=1000)
    outcome = TokenManager(config, flaky, sleep=lambda s: None).ensure_fresh(name, force=True)
    assert outcome.outcome == "error" and outcome.retriable
    assert "recovery file" in (outcome.error_message or "")
    journal = config.data_dir / "token-journal" / f"{name}.json"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert flaky.inner.read(name)["refresh_token"] == initial["refresh_token"]  # used up by now
    assert sandbox.tokens.lookup(initial["refresh_token"]).used
    # the vault is back: the next read replays the journal, and the stored refresh token works
    manager = TokenManager(config, make_vault(config), sleep=lambda s: None)
    recovered = manager.get(name)
    assert recovered.refresh_token != initial["refresh_token"]
    assert sandbox.tokens.check(recovered.refresh_token, "tiktok", ("refresh",))[0] == "ok"
    assert not journal.exists()
    assert manager.ensure_fresh(name, force=True).outcome == "refreshed"
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 2


_DIE_AT_VAULT_WRITE = """
import os, sys
from shared.config import Config
from shared.tokens import TokenManager
from shared.vault import LocalVault, make_vault

def die(self, name, payload):
    os._exit(9)  # the process dies after the platform answered, before the vault write

LocalVault.write = die
config = Config.from_env()
TokenManager(config, make_vault(config)).ensure_fresh(sys.argv[1], force=True)
print("not reached")
"""


def test_process_killed_between_answer_and_vault_write(sandbox: Any, make_config: Any, database_url: str,
                                                       tiktok: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    name, initial = tiktok
    config = make_config(now_override=sandbox.clock.now().isoformat())
    env = {**os.environ, **sandbox.env, "DATABASE_URL": database_url, "DATA_DIR": str(config.data_dir),
           "NOW_OVERRIDE": str(config.now_override)}
    proc = subprocess.run([sys.executable, "-c", _DIE_AT_VAULT_WRITE, name], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert "not reached" not in proc.stdout
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1
    assert sandbox.tokens.lookup(initial["refresh_token"]).used  # the platform rotated it
    # a later invocation (another process) recovers the rotated token; the vault never keeps a used-up one
    manager = TokenManager(config, make_vault(config), sleep=lambda s: None)
    ts = manager.get(name)
    assert sandbox.tokens.check(ts.refresh_token, "tiktok", ("refresh",))[0] == "ok"
    assert manager.vault.read(name)["refresh_token"] == ts.refresh_token
    assert manager.ensure_fresh(name, force=True).outcome == "refreshed"


# --------------------------------------------------------------------------------------------------
# Concurrency: one platform refresh for ten refreshers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["predictive", "rejection"])
def test_ten_concurrent_refreshers_make_one_platform_call(sandbox: Any, make_config: Any, mode: str,
                                                         tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    if mode == "predictive":
        sandbox.clock.advance(hours=23, minutes=55)
    else:
        sandbox.tokens.expire(name)
    barrier = threading.Barrier(10)
    seen: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        manager = manager_now(sandbox, make_config)  # one manager per "instance"
        try:
            barrier.wait()
            if mode == "predictive":
                outcome = manager.ensure_fresh(name)
                assert outcome.outcome in ("refreshed", "fresh"), outcome
                seen.append(manager.get(name).access_token)
            else:
                seen.append(manager.refresh_after_rejection(name, initial["access_token"]).access_token)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1
    assert len(seen) == 10 and len(set(seen)) == 1
    assert seen[0] != initial["access_token"]
    assert sandbox.tokens.check(seen[0], "tiktok")[0] == "ok"


def test_lock_key_is_stable_and_64_bit() -> None:
    assert lock_key("tiktok-aurora") == lock_key("tiktok-aurora")
    assert lock_key("tiktok-aurora") != lock_key("tiktok-bolt")
    assert -(2**63) <= lock_key("x") < 2**63
    # stable across processes (no PYTHONHASHSEED dependence)
    out = subprocess.run([sys.executable, "-c", "from shared.tokens import lock_key; print(lock_key('x'))"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(out.stdout) == lock_key("x")


# --------------------------------------------------------------------------------------------------
# Outcome classification
# --------------------------------------------------------------------------------------------------


def test_revoked_tiktok_refresh_token_needs_reauthorization(sandbox: Any, make_config: Any, db_conn: Any,
                                                            tiktok: tuple[str, dict[str, Any]]) -> None:
    name, _ = tiktok
    sandbox.tokens.revoke(name)
    outcome = manager_now(sandbox, make_config).ensure_fresh(name, force=True)
    assert outcome.outcome == "needs_reauthorization"
    assert "40107" in (outcome.error_message or "")
    assert not outcome.retriable
    row = db_conn.run("SELECT outcome, error_class FROM social.token_state WHERE credential = :c", c=name)
    assert row == [["needs_reauthorization", "needs_reauthorization"]]


def test_google_invalid_grant_needs_reauthorization(sandbox: Any, make_config: Any, database_url: str) -> None:
    name, initial = first_credential(sandbox, "google")
    manager = manager_now(sandbox, make_config)
    manager.vault.write(name, initial)
    sandbox.tokens.revoke(name)
    outcome = manager.ensure_fresh(name)
    assert outcome.outcome == "needs_reauthorization"
    assert "invalid_grant" in (outcome.error_message or "")


def test_server_errors_are_retriable_errors(sandbox: Any, make_config: Any,
                                            tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    sandbox.faults.add(FaultRule(kind="status", emulator="tiktok", endpoint=TIKTOK_REFRESH, status=503, times=None))
    manager = manager_now(sandbox, make_config, http_max_retries=1, http_backoff_cap_seconds=0.05)
    outcome = manager.ensure_fresh(name, force=True)
    assert outcome.outcome == "error" and outcome.retriable
    assert outcome.error_class == "api_retriable"
    assert manager.vault.read(name)["refresh_token"] == initial["refresh_token"]


def test_missing_credential_needs_a_human(sandbox: Any, make_config: Any, database_url: str) -> None:
    outcome = manager_now(sandbox, make_config).ensure_fresh("nobody")
    assert outcome.outcome == "needs_reauthorization"
    assert "tokens import" in (outcome.error_message or "")


# --------------------------------------------------------------------------------------------------
# Warnings and the predictive rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("days_left", "level"), [(45, None), (20, "30d"), (5, "7d"), (0.5, "1d")])
def test_tiktok_refresh_token_warnings_through_the_platform(sandbox: Any, make_config: Any, days_left: float,
                                                            level: str | None,
                                                            tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    deadline = datetime.fromisoformat(initial["refresh_token_expires_at"])
    sandbox.clock.advance(seconds=(deadline - sandbox.clock.now()).total_seconds() - days_left * 86400)
    outcome = manager_now(sandbox, make_config).ensure_fresh(name)
    assert outcome.outcome == "refreshed"  # the access token lapsed long ago
    assert outcome.refresh_expires_at is not None
    assert abs(outcome.refresh_expires_at - deadline) < timedelta(minutes=1)
    if level is None:
        assert outcome.warnings == []
    else:
        assert len(outcome.warnings) == 1
        assert outcome.warnings[0].startswith(f"refresh_token_expires_within_{level}")
        assert initial["refresh_token"] not in outcome.warnings[0]


def test_warning_levels_and_meta_rule() -> None:
    config = Config()
    now = datetime.fromisoformat("2026-06-01T00:00:00+00:00")

    def ts(provider: str, **kw: Any) -> TokenSet:
        return TokenSet(credential="c", provider=provider, access_token="a" * 10, refresh_token="r" * 10, **kw)

    assert refresh_token_warnings(ts("tiktok", refresh_token_expires_at=now + timedelta(days=31)), config, now) == []
    assert "within_30d" in refresh_token_warnings(ts("tiktok", refresh_token_expires_at=now + timedelta(days=29)),
                                                  config, now)[0]
    assert "within_7d" in refresh_token_warnings(ts("tiktok", refresh_token_expires_at=now + timedelta(days=6)),
                                                 config, now)[0]
    assert "within_1d" in refresh_token_warnings(ts("tiktok", refresh_token_expires_at=now + timedelta(hours=3)),
                                                 config, now)[0]
    assert "expired" in refresh_token_warnings(ts("tiktok", refresh_token_expires_at=now - timedelta(hours=3)),
                                               config, now)[0]
    meta = TokenSet(credential="m", provider="meta", access_token="u" * 10)
    # a healthy Meta user token is renewed 12 days ahead: no 30-day noise; an overdue renewal warns
    assert refresh_token_warnings(replace_exp(meta, now + timedelta(days=20)), config, now) == []
    assert "within_7d" in refresh_token_warnings(replace_exp(meta, now + timedelta(days=6)), config, now)[0]


def replace_exp(ts: TokenSet, when: datetime) -> TokenSet:
    import dataclasses

    return dataclasses.replace(ts, access_token_expires_at=when)


def test_predictive_margins() -> None:
    config = Config()  # hourly refresher, 20%
    now = datetime.fromisoformat("2026-06-01T00:00:00+00:00")
    tik = TokenSet(credential="t", provider="tiktok", access_token="x" * 8, refresh_token="y" * 8, issued_at=now,
                   access_token_expires_at=now + timedelta(hours=24))
    assert refresh_margin(tik, config) == timedelta(hours=4.8)
    assert not needs_refresh(tik, config, now + timedelta(hours=19))
    assert needs_refresh(tik, config, now + timedelta(hours=19, minutes=13))
    goo = TokenSet(credential="g", provider="google", access_token="x" * 8, refresh_token="y" * 8, issued_at=now,
                   access_token_expires_at=now + timedelta(hours=1))
    assert refresh_margin(goo, config) == timedelta(hours=2)  # 2 x interval wins for 1 h tokens
    meta = TokenSet(credential="m", provider="meta", access_token="x" * 8, issued_at=now,
                    access_token_expires_at=now + timedelta(days=60))
    assert refresh_margin(meta, config) == timedelta(days=12)
    assert not needs_refresh(meta, config, now + timedelta(days=47))
    assert needs_refresh(meta, config, now + timedelta(days=49))
    page_only = TokenSet(credential="p", provider="meta", access_token="x" * 8)  # no expiry
    assert not needs_refresh(page_only, config, now + timedelta(days=1000))


def test_tokenset_validation_and_repr() -> None:
    good = {"credential": "c", "provider": "tiktok", "access_token": "act.SECRETVALUE",
            "refresh_token": "rft.SECRETVALUE", "access_token_expires_at": "2026-11-28T08:00:00+00:00"}
    ts = TokenSet.from_json(good)
    assert "SECRETVALUE" not in repr(ts)
    assert TokenSet.from_json(ts.to_json()) == ts
    for bad, field in [({**good, "provider": "myspace"}, "provider"),
                       ({**good, "access_token_expires_at": "tomorrow"}, "access_token_expires_at"),
                       ({**good, "access_token_expires_at": "2026-11-28T08:00:00"}, "access_token_expires_at"),
                       ({k: v for k, v in good.items() if k != "access_token"}, "access_token"),
                       ({**good, "refresh_token": None}, "refresh_token"),
                       ({**good, "colour": "blue"}, "colour")]:
        with pytest.raises(InputError) as err:
            TokenSet.from_json(bad)
        assert err.value.field == field
        assert "SECRETVALUE" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# No token anywhere: logs, outcomes, messages
# --------------------------------------------------------------------------------------------------


def test_no_token_in_logs_outcomes_or_messages(sandbox: Any, make_config: Any, database_url: str) -> None:
    stream = io.StringIO()
    handler = configure_logging("DEBUG", stream=stream)
    try:
        vault = make_vault(make_config())
        names = []
        for provider in ("tiktok", "google", "meta"):
            name, payload = first_credential(sandbox, provider)
            vault.write(name, payload)
            names.append(name)
        sandbox.clock.advance(days=50)
        manager = manager_now(sandbox, make_config, http_max_retries=1, http_backoff_cap_seconds=0.05)
        outcomes: list[RefreshOutcome] = [manager.ensure_fresh(n) for n in names]
        sandbox.tokens.revoke(names[0])
        outcomes.append(manager.ensure_fresh(names[0], force=True))
        sandbox.faults.add(FaultRule(kind="status", emulator="google_oauth", status=500, times=None))
        outcomes.append(manager.ensure_fresh(names[1], force=True))
    finally:
        import logging

        logging.getLogger().removeHandler(handler)
    assert [o.outcome for o in outcomes] == ["refreshed", "refreshed", "refreshed", "needs_reauthorization", "error"]
    text = stream.getvalue() + json.dumps([o.to_json() for o in outcomes], default=str)
    text += "".join(repr(o) for o in outcomes)
    assert "refreshing" in text  # logging did run
    issued = [t for t in sandbox.tokens.issued if t]
    assert len(issued) > 6
    leaked = [t[:8] for t in issued if t in text]
    assert not leaked, f"tokens leaked into logs/outcomes: {leaked}"


def test_a_lent_connection_is_not_closed(sandbox: Any, make_config: Any, db_conn: Any,
                                         tiktok: tuple[str, dict[str, Any]]) -> None:
    """shared.runner lends its run connection (``lambda: ctx.conn``): it must survive a refresh."""
    name, initial = tiktok
    config = make_config(now_override=sandbox.clock.now().isoformat())
    manager = TokenManager(config, make_vault(config), lambda: db_conn, sleep=lambda s: None)
    sandbox.tokens.expire(name)
    assert manager.refresh_after_rejection(name, initial["access_token"]).access_token != initial["access_token"]
    assert db_conn.run("SELECT 1") == [[1]]
    # and the advisory lock was released: another session can take it at once
    assert db_conn.run("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                       ) == [[0]]


# --------------------------------------------------------------------------------------------------
# Journal replay safety (review of issue 4, item 2)
# --------------------------------------------------------------------------------------------------


def _leave_a_journal(sandbox: Any, make_config: Any, name: str) -> tuple[Any, Path]:
    """A refresh whose vault writes all fail: the platform rotated the token, the journal holds it."""
    config = make_config(now_override=sandbox.clock.now().isoformat())
    flaky = FlakyVault(make_vault(config), fail=1000)
    assert TokenManager(config, flaky, sleep=lambda s: None).ensure_fresh(name, force=True).outcome == "error"
    journal = config.data_dir / "token-journal" / f"{name}.json"
    assert journal.exists()
    return config, journal


def test_journal_records_what_it_supersedes_and_is_not_replayed_over_a_newer_write(
        sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    config, journal = _leave_a_journal(sandbox, make_config, name)
    record = json.loads(journal.read_text(encoding="utf-8"))
    assert record["supersedes"]["access_token"] == initial["access_token"]
    assert record["supersedes"]["refresh_token"] == initial["refresh_token"]
    # a human re-authorized meanwhile (written straight to the vault, e.g. from another machine)
    fresh = sandbox.tokens.issue("tiktok", "refresh", name, None, "rft.")
    newer = {**initial, "refresh_token": fresh.token, "issued_at": None}
    make_vault(config).write(name, newer)
    manager = TokenManager(config, make_vault(config), sleep=lambda s: None)
    assert manager.get(name).refresh_token == fresh.token  # the stale journal lost
    assert not journal.exists()
    assert make_vault(config).read(name)["refresh_token"] == fresh.token


def _advisory_lock_holders(conn: Any, key: int) -> int:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return conn.run("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid::bigint * 4294967296 + objid::bigint = CAST(:u AS numeric)", u=unsigned)[0][0]


class LockCheckingVault:
    """Wraps a real vault; records whether the credential's advisory lock was held at each write."""

    def __init__(self, inner: Any, conn: Any, key: int) -> None:
        self.inner, self.conn, self.key, self.locked_writes = inner, conn, key, []

    def write(self, name: str, payload: Any) -> int:
        self.locked_writes.append(_advisory_lock_holders(self.conn, self.key) == 1)
        return self.inner.write(name, payload)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def test_journal_replay_happens_under_the_lock_and_never_from_read_or_dry_run(
        sandbox: Any, make_config: Any, db_conn: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    config, journal = _leave_a_journal(sandbox, make_config, name)
    vault = LockCheckingVault(make_vault(config), db_conn, lock_key(name))
    manager = TokenManager(config, vault, sleep=lambda s: None)
    # reads for reports have no side effects
    assert manager.read(name).refresh_token == initial["refresh_token"]
    assert manager.ensure_fresh(name, dry_run=True).outcome in ("fresh", "due")
    assert journal.exists() and vault.locked_writes == []
    # the real read replays, holding the credential's advisory lock while it writes
    recovered = manager.get(name)
    assert recovered.refresh_token != initial["refresh_token"]
    assert vault.locked_writes == [True]
    assert not journal.exists()
    assert _advisory_lock_holders(db_conn, lock_key(name)) == 0


# --------------------------------------------------------------------------------------------------
# Answers without expires_in (item 3)
# --------------------------------------------------------------------------------------------------


class DropsExpiresIn:
    """Wraps the manager's real grant session (real HTTP to the sandbox) and removes ``expires_in`` from
    the answer: the sandbox always sends it, real platforms may not."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def request(self, *args: Any, **kw: Any) -> Any:
        data = self.inner.request(*args, **kw)
        return {k: v for k, v in data.items() if k != "expires_in"} if kw.get("endpoint") != "page_access_token" \
            else data


@pytest.mark.parametrize(("provider", "lifetime"),
                         [("tiktok", timedelta(hours=24)), ("google", timedelta(seconds=3600))])
def test_refresh_answer_without_expires_in_gets_the_documented_lifetime(
        sandbox: Any, make_config: Any, database_url: str, provider: str, lifetime: timedelta) -> None:
    name, initial = first_credential(sandbox, provider)
    config = make_config(now_override=sandbox.clock.now().isoformat())
    vault = make_vault(config)
    vault.write(name, initial)
    plain = TokenManager(config, vault, sleep=lambda s: None)
    manager = TokenManager(config, vault, sleep=lambda s: None,
                           session={provider: DropsExpiresIn(plain.session(provider))})
    outcome = manager.ensure_fresh(name, force=True)
    assert outcome.outcome == "refreshed", outcome
    stored = TokenSet.from_json(vault.read(name))
    assert stored.access_token_expires_at == config.now() + lifetime  # the manager's "now" + the default
    # so the predictive rule still works: refreshed again when inside the margin
    later = make_config(now_override=(config.now() + lifetime - timedelta(minutes=5)).isoformat())
    assert needs_refresh(stored, later, later.now())


def test_stored_tiktok_or_google_credential_without_expiry_is_not_forever_fresh() -> None:
    config = Config()
    now = datetime.fromisoformat("2026-06-01T00:00:00+00:00")
    tik = TokenSet(credential="t", provider="tiktok", access_token="x" * 8, refresh_token="y" * 8,
                   issued_at=now - timedelta(hours=23))
    assert needs_refresh(tik, config, now)  # issued 23 h ago + 24 h default: 1 h left
    assert not needs_refresh(dataclasses_replace(tik, issued_at=now - timedelta(hours=1)), config, now)
    assert needs_refresh(dataclasses_replace(tik, issued_at=None), config, now)  # unknown age: refresh
    page_only = TokenSet(credential="p", provider="meta", access_token="x" * 8)
    assert not needs_refresh(page_only, config, now)


def dataclasses_replace(ts: TokenSet, **kw: Any) -> TokenSet:
    import dataclasses

    return dataclasses.replace(ts, **kw)


def test_prepare_import_requires_expiry_or_applies_the_default_with_a_warning() -> None:
    from shared.tokens import prepare_import

    now = datetime.fromisoformat("2026-06-01T00:00:00+00:00")
    base = {"provider": "google", "access_token": "ya29.x", "refresh_token": "1//r"}
    with pytest.raises(InputError) as err:
        prepare_import(base, "g", now)
    assert err.value.field == "access_token_expires_at"
    ts, warnings = prepare_import({**base, "issued_at": "2026-06-01T00:00:00+00:00"}, "g", now)
    assert ts.access_token_expires_at == now + timedelta(seconds=3600)
    assert len(warnings) == 1 and "access_token_expires_at" in warnings[0]
    ts, warnings = prepare_import({**base, "access_token_expires_at": "2026-06-01T01:00:00+00:00"}, "g", now)
    assert warnings == [] and ts.refresh_token_expires_at is None


def test_google_testing_mode_sets_a_7_day_refresh_deadline_and_warns() -> None:
    from shared.tokens import prepare_import

    consent = datetime.fromisoformat("2026-06-01T00:00:00+00:00")
    payload = {"provider": "google", "access_token": "ya29.x", "refresh_token": "1//r",
               "access_token_expires_at": "2026-06-01T01:00:00+00:00", "issued_at": consent.isoformat(),
               "metadata": {"google_testing_mode": True}}
    ts, warnings = prepare_import(payload, "g", consent)
    assert ts.refresh_token_expires_at == consent + timedelta(days=7)
    assert any("google_testing_mode" in w for w in warnings)
    # refreshes keep the deadline (it counts from consent); the warnings fire as it nears
    config = Config()
    assert "within_7d" in refresh_token_warnings(ts, config, consent + timedelta(days=1))[0]
    assert "within_1d" in refresh_token_warnings(ts, config, consent + timedelta(days=6, hours=12))[0]
    with pytest.raises(InputError) as err:
        TokenSet.from_json({**payload, "metadata": {"google_testing_mode": "yes"}}, credential="g")
    assert err.value.field == "metadata.google_testing_mode"


# --------------------------------------------------------------------------------------------------
# A grant is never blindly re-sent; re-authorization codes and lost locks (item 4)
# --------------------------------------------------------------------------------------------------


def test_lost_refresh_answer_is_not_resent(sandbox: Any, make_config: Any,
                                           tiktok: tuple[str, dict[str, Any]]) -> None:
    """The platform rotates the token but the answer is cut off: a re-send would meet 40107 and report a
    live credential as dead. It must be reported as an unknown outcome, with one platform call."""
    name, initial = tiktok
    sandbox.faults.add(FaultRule(kind="truncated", emulator="tiktok", endpoint=TIKTOK_REFRESH, times=1))
    manager = manager_now(sandbox, make_config, http_max_retries=3, http_backoff_cap_seconds=0.05)
    outcome = manager.ensure_fresh(name, force=True)
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 1
    assert outcome.outcome == "error", outcome
    assert outcome.error_class == "refresh_outcome_unknown" and not outcome.retriable
    assert manager.vault.read(name)["refresh_token"] == initial["refresh_token"]


def test_refused_grants_are_resent(sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, _ = tiktok
    sandbox.faults.add(FaultRule(kind="status", emulator="tiktok", endpoint=TIKTOK_REFRESH, status=503, times=1))
    manager = manager_now(sandbox, make_config, http_max_retries=2, http_backoff_cap_seconds=0.05)
    assert manager.ensure_fresh(name, force=True).outcome == "refreshed"
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 2


def test_connection_refused_is_safe_to_resend_and_a_read_timeout_is_not(make_config: Any) -> None:
    import socket

    from shared.errors import RetriableApiError
    from shared.http import ApiSession
    from shared.tokens import _never_reached_grant, classify_tiktok_oauth

    with socket.socket() as s:  # a port with no listener: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = ApiSession("tiktok", make_config(http_max_retries=0), classify=classify_tiktok_oauth)
    with pytest.raises(RetriableApiError) as err:
        session.request("POST", f"http://127.0.0.1:{port}/x", endpoint="x", json={})
    assert _never_reached_grant(err.value)
    # a read timeout after sending
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        slow = ApiSession("tiktok", make_config(http_max_retries=0, http_timeout_seconds=0.2),
                          classify=classify_tiktok_oauth)
        with pytest.raises(RetriableApiError) as err:
            slow.request("POST", f"http://127.0.0.1:{server.getsockname()[1]}/x", endpoint="x", json={})
    assert not _never_reached_grant(err.value)


def test_reauthorization_code_after_another_refresher_won_uses_its_tokens(
        sandbox: Any, make_config: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    """Another refresher (outside our lock: another database, a dropped lock) rotates the grant just before
    ours reaches the platform: TikTok answers 40107 to us, but the vault holds its live tokens."""
    from shared.tokens import refresh_tiktok

    name, initial = tiktok
    config = make_config(now_override=sandbox.clock.now().isoformat())
    vault = make_vault(config)
    other = TokenManager(config, vault, sleep=lambda s: None)
    real = other.session("tiktok")

    class OtherRefresherFirst:
        def __init__(self) -> None:
            self.done = False

        def request(self, *args: Any, **kw: Any) -> Any:
            if not self.done:
                self.done = True
                won = refresh_tiktok(real, config, TokenSet.from_json(initial), config.now())
                vault.write(name, won.to_json())
            return real.request(*args, **kw)

    manager = TokenManager(config, vault, sleep=lambda s: None, session={"tiktok": OtherRefresherFirst()})
    outcome = manager.ensure_fresh(name, force=True)
    assert outcome.outcome == "fresh", outcome
    stored = vault.read(name)
    assert stored["refresh_token"] != initial["refresh_token"]
    assert sandbox.tokens.check(stored["refresh_token"], "tiktok", ("refresh",))[0] == "ok"
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 2  # theirs, then our 40107


@pytest.mark.parametrize("someone_wrote", [False, True])
def test_a_dropped_lock_connection_is_retaken_and_the_vault_reread_before_writing(
        sandbox: Any, make_config: Any, db_conn: Any, someone_wrote: bool,
        tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    config = make_config(now_override=sandbox.clock.now().isoformat())
    vault = make_vault(config)
    manager = TokenManager(config, vault, sleep=lambda s: None)
    imported = {**initial, "access_token": "act.imported-meanwhile"}

    def drop_the_lock(new: TokenSet) -> None:
        killed = db_conn.run("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                             " AND pid <> pg_backend_pid()")
        assert killed == [[True]]
        if someone_wrote:  # another refresher/import took the free lock and wrote meanwhile
            vault.write(name, imported)

    manager.after_platform_answer = drop_the_lock
    outcome = manager.ensure_fresh(name, force=True)
    stored = vault.read(name)
    if someone_wrote:
        assert outcome.outcome == "fresh", outcome
        assert stored["access_token"] == imported["access_token"]  # not overwritten
    else:
        assert outcome.outcome == "refreshed", outcome
        assert stored["refresh_token"] != initial["refresh_token"]
    assert not (config.data_dir / "token-journal" / f"{name}.json").exists()
    assert _advisory_lock_holders(db_conn, lock_key(name)) == 0


# --------------------------------------------------------------------------------------------------
# Refresh deadline past, access fresh (item 8); Meta warnings after a failed renewal (item 11)
# --------------------------------------------------------------------------------------------------


def test_expired_refresh_token_with_a_fresh_access_token_needs_reauthorization(
        sandbox: Any, make_config: Any, db_conn: Any, tiktok: tuple[str, dict[str, Any]]) -> None:
    name, initial = tiktok
    now = sandbox.clock.now()
    past = (now - timedelta(hours=1)).isoformat()
    make_vault(make_config()).write(name, {**initial, "refresh_token_expires_at": past})
    outcome = manager_now(sandbox, make_config).ensure_fresh(name)
    assert outcome.outcome == "needs_reauthorization", outcome
    assert outcome.expires_at == datetime.fromisoformat(initial["access_token_expires_at"])
    assert "stays usable until" in (outcome.error_message or "")
    assert sandbox.ledger.calls("tiktok", endpoint=TIKTOK_REFRESH) == 0
    assert db_conn.run("SELECT outcome FROM social.token_state WHERE credential = :c", c=name) == [
        ["needs_reauthorization"]]


def test_meta_warns_at_30_days_when_the_renewal_failed(sandbox: Any, make_config: Any, database_url: str) -> None:
    name, initial = first_credential(sandbox, "meta")
    make_vault(make_config()).write(name, initial)
    sandbox.clock.advance(days=35)  # 25 days left: outside the 12-day margin, inside 30 days
    manager = manager_now(sandbox, make_config, http_max_retries=0)
    healthy = manager.ensure_fresh(name)
    assert healthy.outcome == "fresh" and healthy.warnings == []  # a healthy token does not nag
    sandbox.faults.add(FaultRule(kind="status", emulator="meta", status=500, times=None))
    failed = manager.ensure_fresh(name, force=True)
    assert failed.outcome == "error"
    assert len(failed.warnings) == 1 and failed.warnings[0].startswith("refresh_token_expires_within_30d")
