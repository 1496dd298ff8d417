"""``make demo``: the whole product on one laptop, fired exactly as Cloud Scheduler fires it in production.

1. the embedded PostgreSQL under ``.data/pg`` (``shared.db``; migrations run on first connect);
2. the API sandbox (every emulator on loopback ports, in this process);
3. the registry (``.data/demo/accounts.toml``) of the sandbox's accounts of the demo's platforms, and
   their credentials stored in the token vault (the local vault: a table in the same database);
4. one ``functions-framework`` server process per target (one target per process, as on Cloud Run);
5. POSTs with Cloud Scheduler's headers (``User-Agent: Google-Cloud-Scheduler``, ``X-CloudScheduler*``, an
   OIDC bearer, the JSON body as ``application/octet-stream``): refresh_tokens, then every sync twice
   (the second run of the day must insert nothing);
6. a summary table and how to query the warehouse. Every process started here is stopped at the end,
   on an error and on Ctrl-C (``--keep-db`` leaves the database running for psql).

Adding a platform to the demo is one ``Target`` in ``TARGETS``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from shared.config import REPO_ROOT

DEMO_DIR_NAME = "demo"
READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Target:
    """One Cloud Function as deployed: its entry point, source file, Scheduler job and platforms."""

    name: str  # the function's entry point (functions-framework --target)
    source: str  # relative to the repo root
    job: str  # the Cloud Scheduler job name
    platforms: tuple[str, ...] = ()  # registry platforms it syncs (() = none: token refresh)
    body: dict[str, Any] = field(default_factory=dict)
    runs: int = 1  # how many times the demo fires it (syncs: twice, to show idempotency)


TARGETS: tuple[Target, ...] = (
    Target("refresh_tokens", "functions/token_refresh/main.py", "refresh-tokens-hourly"),
    Target("youtube_sync", "functions/youtube/main.py", "youtube-daily", platforms=("youtube",), runs=2),
    # Target("tiktok_sync", "functions/tiktok/main.py", "tiktok-daily", platforms=("tiktok",), runs=2),
    # Target("meta_sync", "functions/meta/main.py", "meta-daily", platforms=("facebook", "instagram"), runs=2),
)


def log(msg: str) -> None:
    print(f"[demo {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scheduler_headers(job: str, url: str) -> dict[str, str]:
    """Exactly what Cloud Scheduler sends (api-contracts §4.2), built by the sandbox's own
    ``scheduler_headers``: User-Agent, X-CloudScheduler*, an OIDC-shaped bearer whose audience is the
    target URL (locally nothing verifies it; Cloud Run IAM would), ``application/octet-stream``."""
    from sandbox.core import scheduler_headers as sandbox_scheduler_headers

    return sandbox_scheduler_headers(f"projects/sde-demo/locations/us-central1/jobs/{job}", audience=url)


class FunctionServer:
    """``functions-framework --target T --source S --port P`` in its own process group."""

    def __init__(self, target: Target, env: dict[str, str], log_dir: Path) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_dir / f"{target.name}.log"
        exe = Path(sys.executable).with_name("functions-framework")
        cmd = [str(exe) if exe.exists() else "functions-framework", "--target", target.name,
               "--source", str(REPO_ROOT / target.source), "--host", "127.0.0.1", "--port", str(self.port)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self) -> None:
        """Poll until the server answers; /robots.txt never reaches the function (the framework 404s it)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                requests.get(self.url + "robots.txt", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.target.name} not ready after {READY_TIMEOUT_S:.0f} s; see {self.log_path}")

    def fire(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        resp = requests.post(self.url, data=json.dumps(body).encode(), timeout=CALL_TIMEOUT_S,
                             headers=scheduler_headers(self.target.job, self.url))
        try:
            payload = resp.json()
        except ValueError:
            payload = {"error": "non_json", "message": resp.text[:500]}
        return resp.status_code, payload, time.monotonic() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # gunicorn master + worker: the group we created
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
        self._log.close()


# --- output ------------------------------------------------------------------------------------------


def summary_row(target: Target, run: int, status: int, body: dict[str, Any], seconds: float) -> list[str]:
    if target.platforms:
        t = body.get("totals", {})
        n_ok, n_failed, n_def = t.get("accounts_ok", 0), t.get("accounts_failed", 0), t.get("accounts_deferred", 0)
        return [f"{target.name} #{run}", str(status), f"{n_ok}/{n_failed}/{n_def}", str(t.get("api_calls", 0)),
                str(t.get("quota_units", 0)), str(t.get("rows_inserted", 0)), str(t.get("rows_updated", 0)),
                str(t.get("rows_unchanged", 0)), f"{seconds:.1f}"]
    t = body.get("totals", {})
    fine = sum(v for k, v in t.items() if k in ("fresh", "refreshed"))
    return [f"{target.name} #{run}", str(status), f"{fine}/{t.get('credentials', 0) - fine}/0", "-", "-", "-", "-",
            "-", f"{seconds:.1f}"]


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [line, " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += [" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    return "\n".join([*out, line])


def channel_rows(body: dict[str, Any]) -> list[list[str]]:
    return [[a.get("name") or a["account_id"], a["status"], str(a["api_calls"]), str(a["quota_units"]),
             str(a["rows_inserted"]), str(a["rows_updated"]), str(a["rows_unchanged"]), f"{a['seconds']:.2f}"]
            for a in body.get("accounts", [])]


def query_help(url: str, keep_db: bool) -> str:
    psql = Path(__import__("pgserver").__file__).parent / "pginstall" / "bin" / "psql"
    py = Path(sys.executable).relative_to(REPO_ROOT) if str(sys.executable).startswith(str(REPO_ROOT)) else "python"
    sql = ("SELECT brand, account_name, metric_date, followers, views, watch_time_seconds "
           "FROM social.v_account_daily ORDER BY metric_date DESC, brand LIMIT 12")
    snippet = ("from shared import db; from shared.config import Config; "
               "c = db.connect(Config.from_env()); "
               f"[print(r) for r in c.run({sql!r})]")
    lines = [
        "",
        "Query the warehouse (schema social):",
        f"  connection string : {url}",
        "  views             : social.v_account_daily (channel day metrics + followers),",
        "                      social.v_post_latest (every video with its latest snapshot),",
        "                      social.v_post_daily_delta (day-over-day growth per video)",
        f"  psql              : {psql} {shlex.quote(url)} -c {shlex.quote(sql)}",
        f"  python            : {py} -c {shlex.quote(snippet)}",
    ]
    if not keep_db:
        lines.append("  (the demo stopped the database it started: the python command restarts it from .data/pg;"
                     " `.venv/bin/python -m scripts.demo --keep-db` leaves it running for psql)")
    return "\n".join(lines)


# --- the demo ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep-db", action="store_true", help="leave the embedded PostgreSQL running at the end")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".data", help="default: .data")
    parser.add_argument("--seed", type=int, default=7, help="sandbox world seed (default 7)")
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    data_dir: Path = args.data_dir.resolve()
    demo_dir = data_dir / DEMO_DIR_NAME
    demo_dir.mkdir(parents=True, exist_ok=True)
    servers: list[FunctionServer] = []
    sandbox: Any = None
    pg_server: Any = None
    code = 1
    try:
        # 1. database ------------------------------------------------------------------------------
        import pgserver

        from shared import db
        from shared.config import Config

        pgdir = data_dir / "pg"
        was_running = (pgdir / "postmaster.pid").exists()
        log(f"starting the embedded PostgreSQL under {pgdir}" + (" (already running)" if was_running else ""))
        pg_server = pgserver.get_server(pgdir, cleanup_mode=None if (was_running or args.keep_db) else "stop")
        url = db.embedded_url(data_dir)

        # 2. sandbox -------------------------------------------------------------------------------
        from sandbox import Sandbox, SandboxSettings, WorldSettings

        sandbox = Sandbox(SandboxSettings(world=WorldSettings(seed=args.seed))).start()
        platforms = sorted({p for t in TARGETS for p in t.platforms})
        log(f"sandbox up: {', '.join(f'{k}={v}' for k, v in sandbox.env.items() if k.endswith('_URL'))}")

        # 3. registry, credentials and settings ----------------------------------------------------
        accounts_file = demo_dir / "accounts.toml"
        accounts_file.write_text(sandbox.registry_toml(platforms))
        env = {k: v for k, v in os.environ.items() if k not in ("NOW_OVERRIDE", "DATABASE_URL")}
        env.update(sandbox.env)
        env.update({"DATABASE_URL": url, "DATA_DIR": str(data_dir), "ACCOUNTS_FILE": str(accounts_file),
                    "VAULT_BACKEND": "local", "PYTHONPATH": str(REPO_ROOT), "LOG_LEVEL": "INFO"})
        config = Config.from_env(env)
        conn = db.connect(config)  # runs the migrations once, before the functions start
        conn.close()
        from shared.vault import make_vault

        vault = make_vault(config)
        creds = sandbox.credentials()
        channels = [a for a in sandbox.world.accounts() if a.platform in platforms]
        for name in sorted({a.credential for a in channels}):
            vault.write(name, creds[name])
        shown = accounts_file.relative_to(REPO_ROOT) if accounts_file.is_relative_to(REPO_ROOT) else accounts_file
        n_creds = len({a.credential for a in channels})
        log(f"registry {shown}: {len(channels)} account(s) ({', '.join(platforms)}), {n_creds} credential(s)"
            " stored in the local vault")

        # 4. one functions-framework process per target ---------------------------------------------
        for target in TARGETS:
            servers.append(FunctionServer(target, env, demo_dir))
        for server in servers:
            server.wait_ready()
            log(f"{server.target.name} listening on {server.url} (functions-framework, pid {server.proc.pid})")

        # 5. fire them as Cloud Scheduler would --------------------------------------------------------
        rows: list[list[str]] = []
        details: list[tuple[str, dict[str, Any]]] = []
        failed = False
        for server in servers:
            for run in range(1, server.target.runs + 1):
                log(f"POST {server.url} as Cloud Scheduler job {server.target.job} (run {run})")
                status, body, seconds = server.fire(server.target.body)
                rows.append(summary_row(server.target, run, status, body, seconds))
                if server.target.platforms:
                    details.append((f"{server.target.name} #{run}", body))
                if status >= 400 or "error" in body:
                    failed = True
                    log(f"{server.target.name} answered {status}: {json.dumps(body)[:500]}")

        # 6. report ----------------------------------------------------------------------------------
        print()
        print(table(rows, ["run", "HTTP", "ok/failed/deferred", "API calls", "quota units", "inserted",
                           "updated", "unchanged", "seconds"]))
        for title, body in details[:1]:
            print(f"\nper account, {title}:")
            print(table(channel_rows(body), ["account", "status", "API calls", "quota units", "inserted",
                                             "updated", "unchanged", "seconds"]))
        if len(details) > 1:
            second = details[1][1]["totals"]
            verdict = "OK: nothing inserted" if second.get("rows_inserted") == 0 else "UNEXPECTED: rows inserted"
            print(f"\nsecond run of the same day: {second.get('rows_inserted')} inserted -> {verdict}")
        print(query_help(url, args.keep_db or was_running))
        print(f"\nfunction logs: {demo_dir}/<target>.log; demo took {time.monotonic() - started:.1f} s")
        code = 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        code = 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        for server in servers:
            server.stop()
        if sandbox is not None:
            sandbox.stop()
        if pg_server is not None and pg_server.cleanup_mode == "stop":
            pg_server.cleanup()  # we started it: stop it (a server that was already running is left alone)
    return code


if __name__ == "__main__":
    sys.exit(main())
