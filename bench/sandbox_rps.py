"""Requests per second the sandbox answers on loopback (no injected latency).

A mix of YouTube Data ``channels.list`` / ``videos.list`` (50 ids) and Analytics day reports, from N
client processes with keep-alive ``http.client`` connections, against ``python -m sandbox`` in a subprocess (so
client and server do not share one GIL). Target: >= 1,000 req/s.

    python -m bench.sandbox_rps [--seconds 5] [--clients 2] [--in-process] [--results FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
TARGET_RPS = 1_000


def _start_subprocess(tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], dict[str, Any]]:
    env_file, creds = tmp / "sandbox.env", tmp / "creds"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--posts-per-account", "300", "--accounts",
                             "youtube=2,tiktok=0,facebook=0,instagram=0", "--write-env", str(env_file),
                             "--write-credentials", str(creds)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for raw in proc.stdout:
        if raw.startswith(b"# sandbox ready") or time.monotonic() > deadline:
            break
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    cred = json.loads(next(creds.glob("youtube-*.json")).read_text())
    return proc, env, cred


def _plan(env: dict[str, str], cred: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    auth = cred["access_token"]
    data, analytics = env["YOUTUBE_DATA_BASE_URL"], env["YOUTUBE_ANALYTICS_BASE_URL"]
    h = {"Authorization": f"Bearer {auth}"}
    uploads = requests.get(f"{data}/youtube/v3/channels", params={"part": "contentDetails", "mine": "true"},
                           headers=h, timeout=10).json()["items"][0]["contentDetails"]["relatedPlaylists"]["uploads"]
    ids = [i["contentDetails"]["videoId"] for i in requests.get(
        f"{data}/youtube/v3/playlistItems", params={"part": "contentDetails", "playlistId": uploads, "maxResults": 50},
        headers=h, timeout=10).json()["items"]]
    today = datetime.now(UTC).date()
    start: date = today - timedelta(days=30)
    return [
        (f"{data}/youtube/v3/channels?part=id,statistics&mine=true", h),
        (f"{data}/youtube/v3/videos?part=snippet,statistics,contentDetails&id={','.join(ids)}", h),
        (f"{analytics}/v2/reports?ids=channel==MINE&startDate={start}&endDate={today}"
         "&metrics=views,likes,estimatedMinutesWatched&dimensions=day", h),
        (f"{data}/youtube/v3/playlistItems?part=contentDetails&playlistId={uploads}&maxResults=50", h),
    ]


def _worker(args: tuple[list[tuple[str, dict[str, str]]], int, float]) -> tuple[int, int, float]:
    """One client process: keep-alive ``http.client`` connections, cycling through the plan."""
    plan, offset, seconds = args
    conns: dict[str, http.client.HTTPConnection] = {}
    count = errors = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    i = offset
    while time.perf_counter() < end:
        url, headers = plan[i % len(plan)]
        i += 1
        parts = urlsplit(url)
        conn = conns.get(parts.netloc)
        if conn is None:
            conn = conns[parts.netloc] = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        resp = conn.getresponse()
        resp.read()
        count += 1
        errors += resp.status != 200
    return count, errors, time.perf_counter() - t0


def run(seconds: float, clients: int, plan: list[tuple[str, dict[str, str]]]) -> tuple[int, int, float]:
    """``clients`` client processes (so the client side is not what is measured: a ``requests`` client
    costs ~1 ms of CPU per call, more than the sandbox spends answering)."""
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(_worker, [(plan, k, seconds) for k in range(clients)])
    return sum(r[0] for r in results), sum(r[1] for r in results), max(r[2] for r in results)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox_rps", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--in-process", action="store_true", help="run the sandbox in this process (shares the GIL)")
    p.add_argument("--quota", type=int, default=10**9, help="YouTube daily quota for the in-process sandbox")
    p.add_argument("--results", type=Path, help="write a Markdown result file")
    args = p.parse_args(argv)
    proc = None
    sb = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.in_process:
            from sandbox import Sandbox, SandboxSettings, WorldSettings

            sb = Sandbox(SandboxSettings(world=WorldSettings(posts_per_account=300), youtube_daily_quota=args.quota))
            sb.start()
            acc = sb.world.accounts("youtube")[0]
            env, cred = sb.env, sb.google_oauth.initial_credential(acc.credential, [acc])
        else:
            proc, env, cred = _start_subprocess(Path(tmp))
        try:
            plan = _plan(env, cred)
            run(0.5, args.clients, plan)  # warm-up (index, caches, connections)
            total, errors, elapsed = run(args.seconds, args.clients, plan)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)
            if sb is not None:
                sb.stop()
    rps = total / elapsed
    mode = "in-process" if args.in_process else "subprocess (python -m sandbox)"
    verdict = "meets" if rps >= TARGET_RPS else "BELOW"
    print(f"sandbox_rps: {total} requests in {elapsed:.2f} s with {args.clients} client processes ({mode}): "
          f"{rps:,.0f} req/s ({verdict} the {TARGET_RPS:,} req/s target); non-200: {errors}")
    if args.results:
        cmd = "python -m bench.sandbox_rps " + " ".join(argv if argv is not None else sys.argv[1:])
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(
            "# Sandbox throughput (requests/s on loopback)\n\n"
            f"- command: `{cmd.strip()}`\n"
            f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- machine: nproc={os.cpu_count()}, Python {platform.python_version()}, {platform.machine()}\n"
            f"- mode: {mode}; {args.clients} client processes, keep-alive http.client; mix of channels.list, "
            "videos.list (50 ids), playlistItems.list (50), Analytics day report (30 days)\n"
            f"- result: **{rps:,.0f} req/s** ({total} requests in {elapsed:.2f} s, non-200: {errors}); "
            f"target {TARGET_RPS:,} req/s: {verdict}\n")


if __name__ == "__main__":
    main()
