"""YouTube test harness: the real functions-framework app, a real database, the sandbox over loopback.

``yt`` wires one test: the registry file lists the chosen sandbox channels, their credentials are in the
local vault, every setting is in the environment (the function reads ``Config.from_env()`` like in
production) and ``yt.post(body)`` fires the function as Cloud Scheduler would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from shared import db
from shared.config import REPO_ROOT, Config
from shared.vault import make_vault

SOURCE = str(REPO_ROOT / "functions" / "youtube" / "main.py")
SCHEDULER_HEADERS = {
    "User-Agent": "Google-Cloud-Scheduler",
    "X-CloudScheduler": "true",
    "X-CloudScheduler-JobName": "projects/p/locations/l/jobs/youtube-daily",
    "X-CloudScheduler-ScheduleTime": "2026-11-27T09:00:00Z",
    "Authorization": "Bearer fake.oidc.token",
    "Content-Type": "application/octet-stream",
}


def registry_toml(accounts: Iterable[Any]) -> str:
    """accounts.toml for sandbox world accounts (sandbox.world.Account)."""
    out = []
    for a in accounts:
        out += ["[[accounts]]", f"platform = {json.dumps(a.platform)}", f"account_id = {json.dumps(a.account_id)}",
                f"name = {json.dumps(a.name)}", f"brand = {json.dumps(a.brand)}",
                f"secret = {json.dumps(a.credential)}", f"timezone = {json.dumps(a.timezone)}", ""]
    return "\n".join(out)


class YouTubeHarness:
    def __init__(self, sandbox: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sandbox = sandbox
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.accounts_file = tmp_path / "accounts.toml"
        self.env: dict[str, str] = {**sandbox.env, "DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data"),
                                    "ACCOUNTS_FILE": str(self.accounts_file), "VAULT_BACKEND": "local",
                                    "HTTP_BACKOFF_BASE_SECONDS": "0.01", "HTTP_BACKOFF_CAP_SECONDS": "0.5"}
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("NOW_OVERRIDE", raising=False)
        self.channels: list[Any] = []
        self._client: Any = None
        self._conn: Any = None

    # -- setup -------------------------------------------------------------------------------------
    def use(self, channels: Iterable[Any] | None = None) -> list[Any]:
        """Register ``channels`` (default: the world's six demo channels) and store their credentials."""
        chans = list(channels) if channels is not None else self.sandbox.world.accounts("youtube")[:6]
        self.channels = chans
        self.accounts_file.write_text(registry_toml(chans))
        creds = self.sandbox.credentials()
        vault = make_vault(self.config())
        for name in {c.credential for c in chans}:
            vault.write(name, creds[name])
        return chans

    def config(self) -> Config:
        return Config.from_env(self.env)

    def set_env(self, **values: str) -> None:
        for k, v in values.items():
            self.env[k] = v
            self.monkeypatch.setenv(k, v)

    def tomorrow(self, days: int = 1) -> datetime:
        """Move the sandbox clock AND the product's clock (NOW_OVERRIDE) forward."""
        now = self.sandbox.clock.advance(days=days)
        self.set_env(NOW_OVERRIDE=now.isoformat())
        return now

    # -- calls -------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = create_app("youtube_sync", SOURCE).test_client()
        return self._client

    def post(self, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        resp = self.client.post("/", data=data, headers={**SCHEDULER_HEADERS, **(headers or {})})
        return resp.status_code, resp.get_json()

    # -- database ----------------------------------------------------------------------------------
    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = db.connect(Config.from_env({"DATABASE_URL": self.database_url}))
        return self._conn

    def q(self, sql: str, **params: Any) -> list[list[Any]]:
        return self.conn.run(sql, **params)

    def count(self, table: str, where: str = "true", **params: Any) -> int:
        return int(self.q(f"SELECT count(*) FROM {table} WHERE {where}", **params)[0][0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@pytest.fixture
def yt(sandbox: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[YouTubeHarness]:
    h = YouTubeHarness(sandbox, database_url, tmp_path, monkeypatch)
    try:
        yield h
    finally:
        h.close()
