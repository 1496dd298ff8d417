"""``python -m sandbox`` as a real subprocess: prints settings, serves, stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    env: dict[str, str] = {}
    deadline = time.monotonic() + 20  # generous: the startup itself is well under 2 s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("export "):
            key, _, value = line[7:].strip().partition("=")
            env[key] = value.strip("'")
        if line.startswith("# sandbox ready"):
            return proc, env
    proc.kill()
    raise AssertionError(f"sandbox did not report ready; stderr: {proc.communicate()[1]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc, env = _start("--seed", "3", "--posts-per-account", "40", "--accounts", "youtube=2,tiktok=1",
                       "--write-env", str(tmp_path / "sandbox.env"), "--write-registry", str(tmp_path / "a.toml"),
                       "--write-credentials", str(tmp_path / "creds"))
    try:
        assert {"YOUTUBE_DATA_BASE_URL", "GOOGLE_TOKEN_URL", "SECRET_MANAGER_ENDPOINT",
                "SANDBOX_ADMIN_URL"} <= set(env)
        written = dict(line.split("=", 1) for line in (tmp_path / "sandbox.env").read_text().splitlines())
        assert written == env
        assert (tmp_path / "a.toml").read_text().count('platform = "youtube"') == 2
        cred = json.loads(next((tmp_path / "creds").glob("youtube-*.json")).read_text())
        r = requests.get(env["YOUTUBE_DATA_BASE_URL"] + "/youtube/v3/channels",
                         params={"part": "statistics", "mine": "true"},
                         headers={"Authorization": f"Bearer {cred['access_token']}"}, timeout=10)
        assert r.status_code == 200 and r.json()["items"][0]["id"] == cred["account_ids"][0]
        world = requests.get(env["SANDBOX_ADMIN_URL"] + "/__sandbox/world", timeout=10).json()
        assert len([a for a in world["accounts"] if a["platform"] == "youtube"]) == 2
    finally:
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_cli_bad_argument_is_one_line_error() -> None:
    r = subprocess.run([sys.executable, "-m", "sandbox", "--accounts", "myspace=3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--accounts" in r.stderr


def test_history_days_flag() -> None:
    from sandbox.__main__ import build_parser, settings_from_args

    settings = settings_from_args(build_parser().parse_args(["--history-days", "90", "--posts-per-account", "0"]))
    assert settings.world.history_days == 90 and settings.world.posts_per_account == 0
    assert settings_from_args(build_parser().parse_args([])).world.history_days == 730
    for bad in (["--history-days", "0"], ["--history-days", "x"], ["--posts-per-account", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
