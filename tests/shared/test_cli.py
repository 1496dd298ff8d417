"""``python -m shared.cli tokens ...`` in a real subprocess against the local vault and the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.config import REPO_ROOT
from shared.vault import make_vault
from tests.fixtures.vaults import WritesFail
from tests.shared.test_tokens import first_credential


@pytest.fixture
def cli(sandbox: Any, database_url: str, tmp_path: Path) -> Any:
    env = {**os.environ, **sandbox.env, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
           "NOW_OVERRIDE": sandbox.clock.now().isoformat()}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO_ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)
    return run


def test_import_from_file_and_stdin_then_list(cli: Any, sandbox: Any, make_config: Any, tmp_path: Path) -> None:
    tik_name, tik = first_credential(sandbox, "tiktok")
    goo_name, goo = first_credential(sandbox, "google")
    path = tmp_path / "cred.json"
    path.write_text(json.dumps(tik), encoding="utf-8")
    out = cli("tokens", "import", tik_name, "--file", str(path))
    assert out.returncode == 0, out.stderr
    assert f"imported {tik_name} (tiktok" in out.stdout and "version 1" in out.stdout
    out = cli("tokens", "import", goo_name, "--file", "-", stdin=json.dumps({k: v for k, v in goo.items()
                                                                               if k != "credential"}))
    assert out.returncode == 0, out.stderr
    assert make_vault(make_config()).read(goo_name)["refresh_token"] == goo["refresh_token"]
    out = cli("tokens", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["CREDENTIAL", "PROVIDER"]
    by_name = {line.split()[0]: line for line in lines[1:] if not line.startswith("warning")}
    assert by_name[tik_name].split()[1] == "tiktok" and by_name[tik_name].endswith("fresh")
    assert by_name[goo_name].endswith("expiring")  # a 1 h Google token is always inside the 2 h margin
    rows = [json.loads(line) for line in cli("tokens", "list", "--json").stdout.splitlines()]
    assert {r["credential"] for r in rows} == {tik_name, goo_name}
    everything = out.stdout + out.stderr + json.dumps(rows)
    assert not [t for t in sandbox.tokens.issued if t in everything]


def test_list_shows_needs_attention(cli: Any, sandbox: Any, make_config: Any) -> None:
    from shared.tokens import TokenManager

    name, payload = first_credential(sandbox, "tiktok")
    make_vault(make_config()).write(name, payload)
    sandbox.tokens.revoke(name)
    config = make_config(now_override=sandbox.clock.now().isoformat())
    assert TokenManager(config, make_vault(config)).ensure_fresh(name, force=True).outcome == "needs_reauthorization"
    out = cli("tokens", "list")
    assert out.returncode == 0, out.stderr
    assert any(line.startswith(name) and line.endswith("needs attention") for line in out.stdout.splitlines())
    # re-importing a fresh authorization clears the verdict
    fresh = sandbox.tokens.issue("tiktok", "refresh", name, None, "rft.")
    assert cli("tokens", "import", name, "--file", "-",
               stdin=json.dumps({**payload, "refresh_token": fresh.token})).returncode == 0
    assert any(line.startswith(name) and line.endswith("fresh") for line in cli("tokens", "list").stdout.splitlines())


@pytest.mark.parametrize(("args", "stdin", "expected"), [
    (("tokens", "import", "x", "--file", "-"), "{not json", "file: is not valid JSON"),
    (("tokens", "import", "x", "--file", "-"), '{"provider": "myspace", "access_token": "abcdSECRET"}',
     "provider: must be one of"),
    (("tokens", "import", "x", "--file", "-"),
     '{"provider": "tiktok", "access_token": "abcdSECRET", "refresh_token": "r1234SECRET",'
     ' "access_token_expires_at": "next week"}', "access_token_expires_at: must be an ISO-8601"),
    (("tokens", "import", "bad name", "--file", "-"), "{}", "name: must be"),
    (("tokens", "import", "x", "--file", "/no/such/file.json"), None, "file: cannot read"),
    (("tokens", "frobnicate"), None, "invalid choice"),
    (("tokens",), None, "required"),
])
def test_errors_are_one_line_exit_2(cli: Any, args: tuple[str, ...], stdin: str | None, expected: str) -> None:
    out = cli(*args, stdin=stdin)
    assert out.returncode == 2
    assert expected in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr and "SECRET" not in out.stderr


def test_stale_journal_fresh_import_then_list_keeps_the_import(cli: Any, sandbox: Any, make_config: Any,
                                                               tmp_path: Path) -> None:
    """The reviewer's repro: a refresh left a journal (vault outage); a human re-imports; ``tokens list``
    must not replay the old journal over the import (and neither may the next refresh)."""
    from shared.tokens import TokenManager

    name, payload = first_credential(sandbox, "tiktok")
    config = make_config(data_dir=tmp_path / "data", now_override=sandbox.clock.now().isoformat())
    vault = make_vault(config)
    vault.write(name, payload)

    outage = TokenManager(config, WritesFail(vault), sleep=lambda s: None)
    assert outage.ensure_fresh(name, force=True).outcome == "error"
    journal = config.data_dir / "token-journal" / f"{name}.json"
    assert journal.exists()
    fresh = sandbox.tokens.issue("tiktok", "refresh", name, None, "rft.")
    out = cli("tokens", "import", name, "--file", "-", stdin=json.dumps({**payload, "refresh_token": fresh.token}))
    assert out.returncode == 0, out.stderr
    assert not journal.exists()
    assert cli("tokens", "list").returncode == 0
    assert vault.read(name)["refresh_token"] == fresh.token
    assert TokenManager(config, vault).get(name).refresh_token == fresh.token


def test_list_is_side_effect_free(cli: Any, sandbox: Any, make_config: Any, tmp_path: Path) -> None:
    from shared.tokens import TokenManager

    name, payload = first_credential(sandbox, "tiktok")
    config = make_config(data_dir=tmp_path / "data", now_override=sandbox.clock.now().isoformat())
    vault = make_vault(config)
    vault.write(name, payload)

    TokenManager(config, WritesFail(vault), sleep=lambda s: None).ensure_fresh(name, force=True)
    journal = config.data_dir / "token-journal" / f"{name}.json"
    assert journal.exists()
    assert cli("tokens", "list").returncode == 0
    assert journal.exists()  # only a refresh (under the lock) replays it
    assert [v.version for v in vault.versions(name)] == [1]


def test_import_without_expiry(cli: Any, sandbox: Any, make_config: Any) -> None:
    name, payload = first_credential(sandbox, "google")
    bare = {k: v for k, v in payload.items() if k not in ("access_token_expires_at", "issued_at")}
    out = cli("tokens", "import", name, "--file", "-", stdin=json.dumps(bare))
    assert out.returncode == 2 and "access_token_expires_at: is required" in out.stderr
    out = cli("tokens", "import", name, "--file", "-", stdin=json.dumps({**bare, "issued_at": payload["issued_at"]}))
    assert out.returncode == 0, out.stderr
    assert "warning: access_token_expires_at missing" in out.stderr
    stored = make_vault(make_config()).read(name)
    assert stored["access_token_expires_at"] is not None


def test_import_google_testing_mode_warns_in_list(cli: Any, sandbox: Any, make_config: Any) -> None:
    from datetime import datetime, timedelta

    name, payload = first_credential(sandbox, "google")
    consent = sandbox.clock.now() - timedelta(days=6, hours=12)
    body = {**payload, "issued_at": consent.isoformat(), "metadata": {"google_testing_mode": True}}
    out = cli("tokens", "import", name, "--file", "-", stdin=json.dumps(body))
    assert out.returncode == 0, out.stderr
    stored = make_vault(make_config()).read(name)
    assert datetime.fromisoformat(stored["refresh_token_expires_at"]) == consent + timedelta(days=7)
    rows = [json.loads(line) for line in cli("tokens", "list", "--json").stdout.splitlines()]
    row = next(r for r in rows if r["credential"] == name)
    assert row["warnings"] and row["warnings"][0].startswith("refresh_token_expires_within_1d")
