"""youtube_sync: API calls against the theoretical minimum, peak memory, transform + join cost per video.

For each channel size V (default 10, 5,000 and 50,000 videos):

* a sandbox (in this process, threads) with exactly one channel of V videos, a fresh database on a
  dedicated embedded PostgreSQL (temp dir, deleted at the end);
* the FIRST LOAD and then a DAILY run ("tomorrow": sandbox clock + NOW_OVERRIDE moved one day) each run
  in a child process (``python -m bench.youtube --child``) through the real functions-framework app;
  the child reports its peak RSS (VmHWM) above the RSS it had just before the sync (imports, app, the
  database connection already paid for) and ru_maxrss;
* the sandbox ledger (what the APIs really answered) is compared with the formula of each job.

Expected call counts are literal formulas of the API limits (``ceil(V/50)`` etc.), written out here and
never taken from the code under test.

Transform + join cost per video is measured in-process on synthetic API JSON (1,000 → 50,000 videos) by
timing the pipeline's own functions: ``pipeline._ingest_videos`` (videos.list items → posts rows,
statistics map, publish times) and ``pipeline._post_metrics`` (batches by publish date, analytics rows →
hash index → left join → metric rows). Its ``client`` is a stand-in whose ``video_totals`` returns the
synthetic analytics rows of the requested ids (no HTTP: the sandbox part above measures that).

Usage: ``python -m bench youtube [--quick]`` or ``python -m bench.youtube [--sizes 10,5000,50000]
[--out bench/results/youtube.md]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from functions.youtube import pipeline

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "youtube.md"
REPO = Path(__file__).resolve().parent.parent
MEMORY_LIMIT_MB = 200.0
#: the API limits: playlistItems page size, ids per videos.list, rows per dimensions=video page
PAGE, IDS, ROWS = 50, 50, 200
#: the default YOUTUBE_ANALYTICS_BATCH (ids per Analytics filter): two full 200-row pages
BATCH = 400


# --- child: one sync through the functions-framework app ------------------------------------------


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(body: dict[str, Any]) -> None:
    from functions_framework import create_app

    client = create_app("youtube_sync", str(REPO / "functions" / "youtube" / "main.py")).test_client()
    from shared import db
    from shared.config import Config

    db.connect(Config.from_env()).close()  # migrations checked + driver loaded before the baseline
    with contextlib.suppress(OSError):  # reset the high-water mark: VmHWM then measures the sync alone
        Path("/proc/self/clear_refs").write_text("5")
    rss0 = _vm_kb("VmRSS")
    started = time.perf_counter()
    resp = client.post("/", data=json.dumps(body).encode(), headers={"Content-Type": "application/octet-stream",
                                                                      "User-Agent": "Google-Cloud-Scheduler"})
    seconds = time.perf_counter() - started
    print(json.dumps({"status": resp.status_code, "body": resp.get_json(), "seconds": seconds,
                      "rss_before_kb": rss0, "hwm_kb": _vm_kb("VmHWM"),
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


# --- parent ---------------------------------------------------------------------------------------


def _expected(v_public: int, known: int, full: bool, eligible: int, new: int) -> dict[str, int]:
    """The theoretical minimum of calls, from the API limits alone (not from the code under test).

    first load: channels 1, playlistItems max(1, ceil(V/50)), videos.list ceil(V/50)
    daily:      channels 1, playlistItems ceil((N+1)/50), videos.list ceil((K+N)/50)
    both:       reports.query ceil(E/200) (dimensions=video, 200 rows a page) + 1 (dimensions=day)
    """
    if full:
        playlist = max(1, math.ceil(v_public / PAGE))
        videos = math.ceil(v_public / IDS)
    else:
        playlist = math.ceil((new + 1) / PAGE)
        videos = math.ceil((known + new) / IDS)
    return {"channels.list": 1, "playlistItems.list": playlist, "videos.list": videos,
            "reports.query": math.ceil(eligible / ROWS) + 1}


def run_size(v: int, pg_url: str, work: Path) -> dict[str, Any]:
    from sandbox import Sandbox, SandboxSettings, WorldSettings
    from sandbox.youtube import pacific_day
    from shared import db
    from shared.config import Config
    from shared.vault import make_vault

    world = WorldSettings(accounts_per_platform={"tiktok": 0, "facebook": 0, "instagram": 0, "youtube": 0})
    sb = Sandbox(SandboxSettings(world=world, youtube_daily_quota=1_000_000)).start()
    try:
        acc = sb.world.add_account("youtube", v, name=f"Bench {v}", credential=f"bench-yt-{v}",
                                   future_posts_per_day=3.0)
        dbname = f"bench_yt_{v}_{os.getpid()}"
        admin = db._connect_url(db.parse_database_url(pg_url))
        admin.run(f"DROP DATABASE IF EXISTS {db.quote_ident(dbname)}")
        admin.run(f"CREATE DATABASE {db.quote_ident(dbname)}")
        admin.close()
        p = db.parse_database_url(pg_url)
        url = f"postgresql://{p.user}@/{dbname}?host={p.host}&port={p.port}" if p.unix_sock else \
            f"postgresql://{p.user}@{p.host}:{p.port}/{dbname}"
        registry = work / f"accounts_{v}.toml"
        registry.write_text("\n".join([
            "[[accounts]]", 'platform = "youtube"', f'account_id = "{acc.account_id}"', f'name = "{acc.name}"',
            'brand = "Bench"', f'secret = "{acc.credential}"', f'timezone = "{acc.timezone}"', ""]))
        env = {**{k: val for k, val in os.environ.items() if k not in ("NOW_OVERRIDE",)}, **sb.env,
               "DATABASE_URL": url, "ACCOUNTS_FILE": str(registry), "DATA_DIR": str(work / "data"),
               "VAULT_BACKEND": "local", "LOG_LEVEL": "WARNING", "YOUTUBE_DAILY_QUOTA": "1000000",
               "PYTHONPATH": str(REPO)}
        make_vault(Config.from_env(env)).write(acc.credential, sb.credentials()[acc.credential])
        out: dict[str, Any] = {"videos": v}
        known = 0
        for phase in ("first load", "daily"):
            if phase == "daily":
                now = sb.clock.advance(days=1)
                env["NOW_OVERRIDE"] = now.isoformat()
                # the hourly refresh_tokens job keeps the access token fresh: store a current one
                fresh = sb.google_oauth.initial_credential(acc.credential, [acc])
                make_vault(Config.from_env(env)).write(acc.credential, fresh)
            now = sb.clock.now()
            public = [p for p in sb.world.posts(acc, now) if not p.private]
            today = now.astimezone(__import__("zoneinfo").ZoneInfo(acc.timezone)).date()
            through = today - timedelta(days=5)
            eligible = sum(1 for p in public if pacific_day(p.published_at) <= through)
            sb.ledger.reset()
            proc = subprocess.run([sys.executable, "-m", "bench.youtube", "--child", "{}"], env=env, cwd=REPO,
                                  capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"status"')]
            if proc.returncode or not lines:
                raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
            res = json.loads(lines[-1])
            account = res["body"]["accounts"][0]
            ledger = {ep: sb.ledger.calls(emu, ep) for emu, ep in (
                ("youtube_data", "channels.list"), ("youtube_data", "playlistItems.list"),
                ("youtube_data", "videos.list"), ("youtube_analytics", "reports.query"))}
            full = phase == "first load"
            expected = _expected(len(public), known, full, eligible, len(public) - known)
            out[phase] = {
                "status": account["status"], "seconds": round(res["seconds"], 2), "ledger": ledger,
                "expected": expected, "match": ledger == expected, "units": sb.ledger.units("youtube_data"),
                "rows": account["details"].get("rows"),
                "peak_mb": round((res["hwm_kb"] - res["rss_before_kb"]) / 1024, 1),
                "hwm_mb": round(res["hwm_kb"] / 1024, 1), "ru_maxrss_mb": round(res["ru_maxrss_kb"] / 1024, 1),
            }
            known = len(public)
        return out
    finally:
        sb.stop()


# --- transform + join per video (in-process, synthetic JSON) ---------------------------------------


def _synthetic(n: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    items, records = [], {}
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(n):
        vid = f"v{i:010d}"
        items.append({"id": vid, "snippet": {"publishedAt": (base + timedelta(minutes=10 * i)).strftime(
                          "%Y-%m-%dT%H:%M:%SZ"), "title": f"video {i} 🚀", "categoryId": "22"},
                      "contentDetails": {"duration": f"PT{i % 60}M{i % 59}S"},
                      "statistics": {"viewCount": str(i * 7), "likeCount": str(i), "commentCount": str(i % 13)}})
        if i % 10:
            records[vid] = {"video": vid, "views": i * 6, "likes": i, "comments": i % 13, "shares": i % 7,
                            "estimatedMinutesWatched": i * 2, "averageViewDuration": 40, "subscribersGained": i % 3}
    return items, records


class _Sink:
    """Stands in for ``pipeline._Buffer``: holds rows and lets go of them every ``FLUSH_ROWS`` rows, as
    the real buffer does after each upsert (so memory, and Python's GC work, stay bounded like in a sync)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= pipeline.FLUSH_ROWS:
            self.rows = []


class _Totals:
    """Stand-in for the client's ``video_totals``: the synthetic analytics rows of the requested ids."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.calls = 0

    def video_totals(self, ids: list[str], start: str, end: str) -> list[dict[str, Any]]:
        self.calls += 1
        return [self.records[v] for v in ids if v in self.records]


def transform_cost(n: int, rounds: int = 7) -> float:
    """Best-of-rounds µs per video of the pipeline's own ingest + analytics join + metric rows."""
    items, records = _synthetic(n)
    # the synthetic input stands for API pages that a sync receives 50 at a time and drops: keep it out
    # of the GC's generations so the timing is the pipeline's own work, not rescans of the whole input
    gc.collect()
    gc.freeze()
    best = float("inf")
    snap, through = date(2026, 11, 27), date(2026, 11, 22)
    for _ in range(rounds):
        gc.collect()
        posts, out = _Sink(), _Sink()
        stats: dict[str, Any] = {}
        published: dict[str, Any] = {}
        client = _Totals(records)
        t0 = time.perf_counter()
        pipeline._ingest_videos(items, "UCbench", posts, stats, published)
        pipeline._post_metrics(client, "UCbench", snap, through, published, stats, out, BATCH)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
        assert posts.count == n and out.count == n and client.calls == math.ceil(n / BATCH)
    gc.unfreeze()
    return best


# --- report ---------------------------------------------------------------------------------------


def report(results: list[dict[str, Any]], costs: dict[int, float], command: str) -> str:
    lines = [
        "# youtube_sync: API calls, memory, transform + join cost",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        f"- machine: nproc={os.cpu_count()}, Python {platform.python_version()}, {platform.machine()}",
        "- method: one sandbox channel of V videos (+3 uploads/day), fresh database; each sync runs in a child"
        " process through the functions-framework app; calls are the sandbox ledger's; memory is the child's"
        " VmHWM above its RSS right before the sync (imports, app and DB connection excluded; absolute peak"
        " also shown).",
        "",
        "## Formulas (theoretical minimum per run)",
        "",
        "| job | first load (V videos) | daily run (K known, N new) |",
        "|---|---|---|",
        "| channels.list | 1 | 1 |",
        "| playlistItems.list | max(1, ceil(V/50)) | ceil((N+1)/50): pages up to the first known video |",
        "| videos.list | ceil(V/50): details + statistics in ONE pass | ceil((K+N)/50): new + known ids share calls |",
        "| reports.query dimensions=video | ceil(E/200): batches of 400 ids = two full 200-row pages | same |",
        "| reports.query dimensions=day | 1 per look-back chunk (28 days: 1) | 1 |",
        "| Data API units | 1 + playlist + videos | 1 + playlist + videos |",
        "",
        "E = videos published on or before today − lag (the others have no consolidated analytics yet)."
        " The expected counts below are these formulas evaluated on the sandbox world (V, K, N, E), not"
        " the pipeline's own plan. ceil(E/200) assumes every eligible video has an Analytics row (true in"
        " the sandbox); videos without one can only make it smaller.",
        "",
        "## Ledger vs formula",
        "",
        "| V | run | channels | playlistItems | videos | reports.query | units | expected (ch/pl/vi/rq) | match |"
        " seconds | peak Δ MB | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for phase in ("first load", "daily"):
            p = r[phase]
            lg, ex = p["ledger"], p["expected"]
            lines.append(
                f"| {r['videos']:,} | {phase} | {lg['channels.list']} | {lg['playlistItems.list']} |"
                f" {lg['videos.list']} | {lg['reports.query']} | {p['units']} |"
                f" {ex['channels.list']}/{ex['playlistItems.list']}/{ex['videos.list']}/{ex['reports.query']} |"
                f" {'yes' if p['match'] else 'NO'} | {p['seconds']} | {p['peak_mb']} | {p['hwm_mb']} |")
    worst = max((r[ph]["peak_mb"] for r in results for ph in ("first load", "daily")), default=0.0)
    lines += ["", f"Peak memory of the sync above its starting RSS: max {worst} MB"
              f" (limit {MEMORY_LIMIT_MB:.0f} MB): {'OK' if worst < MEMORY_LIMIT_MB else 'OVER'}.", ""]
    lines += ["## Transform + join per video (best of 7, in-process)", "",
              "Timed: `pipeline._ingest_videos` (videos.list items → posts rows + statistics + publish times) and"
              " `pipeline._post_metrics` (publish-date batches of 400, hash index, left join, metric rows) on"
              " synthetic JSON; the analytics rows come from an in-memory stand-in of `video_totals`.", "",
              "| videos | µs / video |", "|---|---|"]
    for n, us in costs.items():
        lines.append(f"| {n:,} | {us:.1f} |")
    if costs:
        ratio = max(costs.values()) / min(costs.values())
        lines += ["", f"max/min = {ratio:.2f} (flat within 2x: {'yes' if ratio <= 2 else 'NO'})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.youtube")
    parser.add_argument("--sizes", default="10,5000,50000")
    parser.add_argument("--quick", action="store_true", help="sizes 10,1000 (a smoke run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return
    sizes = [10, 1000] if args.quick else [int(x) for x in args.sizes.split(",")]
    import pgserver

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-yt-") as tmp:
        work = Path(tmp)
        server = pgserver.get_server(work / "pg", cleanup_mode="delete")
        try:
            for v in sizes:
                print(f"youtube bench: {v:,} videos ...", flush=True)
                results.append(run_size(v, server.get_uri(), work))
                print(json.dumps(results[-1], default=str), flush=True)
        finally:
            server.cleanup()
    costs = {n: transform_cost(n) for n in ((1000, 5000) if args.quick else (1000, 10_000, 50_000))}
    print(json.dumps({"us_per_video": costs}), flush=True)
    text = report(results, costs, "python -m bench.youtube " + " ".join(argv))
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
