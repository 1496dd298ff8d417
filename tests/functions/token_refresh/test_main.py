"""``refresh_tokens`` through the real functions-framework app, the sandbox, the local vault and PostgreSQL."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from sandbox import FaultRule
from sandbox.server import PROVIDER_OF
from shared.config import REPO_ROOT, Config
from shared.logs import configure_logging
from shared.vault import make_vault
from tests.fixtures.vaults import WritesFail

SCHEDULER = {"User-Agent": "Google-Cloud-Scheduler", "X-CloudScheduler": "true",
             "X-CloudScheduler-ScheduleTime": "2026-06-01T10:00:00Z"}
PROVIDERS = ("tiktok", "google", "meta")


def _deployed_app(sandbox: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  **extra_env: str) -> Any:
    """refresh_tokens through functions-framework with a deployment's env; every sandbox credential stored."""
    registry = tmp_path / "accounts.toml"
    registry.write_text(sandbox.registry_toml(), encoding="utf-8")
    env = {**sandbox.env, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
           "ACCOUNTS_FILE": str(registry), "HTTP_MAX_RETRIES": "1", "HTTP_BACKOFF_CAP_SECONDS": "0.05", **extra_env}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    vault = make_vault(Config.from_env(env))
    for name, payload in sandbox.credentials().items():
        vault.write(name, payload)
    client = functions_framework.create_app("refresh_tokens", str(REPO_ROOT / "functions/token_refresh/main.py"))
    return client.test_client()


@pytest.fixture
def app(sandbox: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The deployed entry point with the env a deployment would have (sandbox URLs, local vault)."""
    return _deployed_app(sandbox, database_url, tmp_path, monkeypatch)


def _by_provider(sandbox: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {p: [] for p in PROVIDERS}
    for name, accounts in sorted(sandbox.world.credentials().items()):
        out[PROVIDER_OF[accounts[0].platform]].append(name)
    return out


def _at_sandbox_now(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOW_OVERRIDE", sandbox.clock.now().isoformat())


def test_revoked_credential_needs_reauthorization_while_the_others_complete(
        app: Any, sandbox: Any, db_conn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _by_provider(sandbox)
    dead = names["tiktok"][0]
    sandbox.clock.advance(hours=23, minutes=55)  # every TikTok token is inside its margin; Google always is
    _at_sandbox_now(sandbox, monkeypatch)
    sandbox.tokens.revoke(dead)
    logs = io.StringIO()
    configure_logging("DEBUG", stream=logs)  # the app's own JSON handler, captured
    try:
        resp = app.post("/", json={}, headers=SCHEDULER)
    finally:
        configure_logging("INFO", stream=sys.stdout)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    outcomes = {c["credential"]: c for c in body["credentials"]}
    assert set(outcomes) == set(sandbox.credentials())
    assert outcomes[dead]["outcome"] == "needs_reauthorization"
    assert outcomes[dead]["status"] == "failed"
    for name in names["tiktok"][1:] + names["google"]:
        assert outcomes[name]["outcome"] == "refreshed", outcomes[name]
    for name in names["meta"]:  # 60-day user tokens, a day old: fresh
        assert outcomes[name]["outcome"] == "fresh", outcomes[name]
    assert body["status"] == "partial" and body["trigger"] == "scheduler"
    # exactly one refresh call per live TikTok credential, one failed for the dead one
    assert sandbox.ledger.calls("tiktok", endpoint="oauth2.refresh_token") == len(names["tiktok"])
    # one ledger row per credential
    rows = db_conn.run("SELECT account_id, platform, status, outcome, trigger, details FROM social.sync_runs"
                       " WHERE function = 'refresh_tokens' AND run_id = :r", r=body["run_id"])
    assert len(rows) == len(outcomes)
    by_name = {r[0]: r for r in rows}
    assert by_name[dead][2:5] == ["failed", "needs_reauthorization", "scheduler"]
    assert by_name[dead][1] == "tiktok"
    details = by_name[names["google"][0]][5]
    details = json.loads(details) if isinstance(details, str) else details
    assert details["outcome"] == "refreshed" and details["expires_at"] and details["warnings"] == []
    assert by_name[names["google"][0]][1] == "youtube"
    # the needs-attention state is kept for the CLI
    state = db_conn.run("SELECT outcome FROM social.token_state WHERE credential = :c", c=dead)
    assert state == [["needs_reauthorization"]]
    # no token anywhere in the response or the logs
    text = resp.get_data(as_text=True) + logs.getvalue()
    assert '"severity"' in text
    leaked = [t[:8] for t in sandbox.tokens.issued if t and t in text]
    assert not leaked


def test_retriable_failure_is_http_500_and_isolated(app: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _by_provider(sandbox)
    sandbox.faults.add(FaultRule(kind="status", emulator="google_oauth", status=503, times=None))
    _at_sandbox_now(sandbox, monkeypatch)
    resp = app.post("/", json={"credentials": names["google"][:1] + names["tiktok"][:1], "force": True})
    assert resp.status_code == 500
    body = resp.get_json()
    outcomes = {c["credential"]: c["outcome"] for c in body["credentials"]}
    assert outcomes == {names["google"][0]: "error", names["tiktok"][0]: "refreshed"}
    assert body["trigger"] == "manual"


def test_dry_run_calls_and_writes_nothing(app: Any, sandbox: Any, db_conn: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.clock.advance(hours=23)
    _at_sandbox_now(sandbox, monkeypatch)
    resp = app.post("/", data=json.dumps({"dry_run": True}), content_type="application/octet-stream")
    assert resp.status_code == 200
    body = resp.get_json()
    assert {c["outcome"] for c in body["credentials"]} <= {"due", "fresh"}
    assert any(c["outcome"] == "due" for c in body["credentials"])
    assert sandbox.ledger.calls("tiktok", endpoint="oauth2.refresh_token") == 0
    assert sandbox.ledger.calls("google_oauth") == 0
    assert db_conn.run("SELECT count(*) FROM social.sync_runs")[0][0] == 0


@pytest.mark.parametrize(("payload", "field"), [
    ({"credential": ["x"]}, "credential"),
    ({"force": "yes"}, "force"),
    ({"credentials": []}, "credentials"),
    ({"credentials": ["no-such-credential"]}, "credentials"),
    ([1, 2], "body"),
])
def test_bad_bodies_are_400_naming_the_field(app: Any, payload: Any, field: str) -> None:
    resp = app.post("/", json=payload)
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "invalid_request", "field": field, "message": resp.get_json()["message"]}


def test_not_json_is_400(app: Any) -> None:
    resp = app.post("/", data=b"{nope", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["field"] == "body"


def test_dry_run_mirrors_nothing_and_replays_no_journal(app: Any, sandbox: Any, db_conn: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.tokens import TokenManager

    name = _by_provider(sandbox)["tiktok"][0]
    _at_sandbox_now(sandbox, monkeypatch)
    config = Config.from_env()
    vault = make_vault(config)

    outage = TokenManager(config, WritesFail(vault), sleep=lambda s: None)
    assert outage.ensure_fresh(name, force=True).outcome == "error"
    journal = config.data_dir / "token-journal" / f"{name}.json"
    assert journal.exists()
    db_conn.run("DELETE FROM social.token_state")
    versions = [v.version for v in vault.versions(name)]
    resp = app.post("/", json={"dry_run": True})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert db_conn.run("SELECT count(*) FROM social.accounts")[0][0] == 0  # the registry was not mirrored
    assert db_conn.run("SELECT count(*) FROM social.token_state")[0][0] == 0
    assert journal.exists() and [v.version for v in vault.versions(name)] == versions
    # the real run replays it (under the lock) and mirrors the registry
    resp = app.post("/", json={"credentials": [name]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert not journal.exists()
    assert db_conn.run("SELECT count(*) FROM social.accounts")[0][0] > 0


def test_unknown_credential_is_400_before_anything_is_written(app: Any, db_conn: Any) -> None:
    resp = app.post("/", json={"credentials": ["no-such-credential"]})
    assert resp.status_code == 400 and resp.get_json()["field"] == "credentials"
    assert db_conn.run("SELECT count(*) FROM social.accounts")[0][0] == 0
    assert db_conn.run("SELECT count(*) FROM social.sync_runs")[0][0] == 0


@pytest.fixture
def sm_app(sandbox: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The deployed entry point with VAULT_BACKEND=secretmanager: the real google-cloud-secret-manager client
    over REST to the sandbox's Secret Manager."""
    return _deployed_app(sandbox, database_url, tmp_path, monkeypatch,
                         VAULT_BACKEND="secretmanager", VAULT_KEEP_VERSIONS="2")


def test_end_to_end_with_secret_manager(sm_app: Any, sandbox: Any, db_conn: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.vault import SecretManagerVault

    names = _by_provider(sandbox)
    sandbox.clock.advance(hours=23, minutes=55)
    _at_sandbox_now(sandbox, monkeypatch)
    before = {n: json.loads(sandbox.secret_manager.payload(n) or b"{}") for n in sandbox.credentials()}
    resp = sm_app.post("/", json={}, headers=SCHEDULER)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    outcomes = {c["credential"]: c["outcome"] for c in body["credentials"]}
    assert set(outcomes) == set(sandbox.credentials())
    for name in names["tiktok"] + names["google"]:
        assert outcomes[name] == "refreshed"
        stored = json.loads(sandbox.secret_manager.payload(name) or b"{}")  # latest version, on the emulator
        assert stored["access_token"] != before[name]["access_token"]
        assert sandbox.tokens.check(stored["access_token"], PROVIDER_OF[
            sandbox.world.credentials()[name][0].platform])[0] == "ok"
    for name in names["meta"]:
        assert outcomes[name] == "fresh"
    assert sandbox.ledger.calls("secret_manager", "secrets.addVersion") >= len(names["tiktok"] + names["google"])
    vault = make_vault(Config.from_env())
    assert isinstance(vault, SecretManagerVault)
    assert [v.version for v in vault.versions(names["tiktok"][0])] == [2, 1]
    assert body["warnings"] == []
    rows = db_conn.run("SELECT count(*) FROM social.sync_runs WHERE run_id = :r", r=body["run_id"])
    assert rows[0][0] == len(outcomes)


def test_secret_manager_listing_denied_refreshes_the_referenced_credentials(
        sm_app: Any, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.faults.add(FaultRule(kind="status", emulator="secret_manager", endpoint="secrets.list", status=403,
                                 code="PERMISSION_DENIED", times=None))
    _at_sandbox_now(sandbox, monkeypatch)
    resp = sm_app.post("/", json={})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert {c["credential"] for c in body["credentials"]} == set(sandbox.credentials())  # all referenced
    assert len(body["warnings"]) == 1 and "denied" in body["warnings"][0]
    assert sandbox.ledger.calls("secret_manager", "secrets.list") >= 1
