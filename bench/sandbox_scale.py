"""Sandbox at scale: one 100k-post account per platform, generation cost and per-page latency.

For TikTok, Facebook, Instagram and YouTube: the time and memory (tracemalloc peak) to generate one
100,000-post account, then the mean latency of first / middle / last pages of ``video/list``, ``/posts``,
``/media`` and ``playlistItems.list`` in-process (no HTTP, so the figure is the emulator's own work).
The paging cost must stay flat from the first page to the last (cursor -> position is O(1)/O(log n)).

    python -m bench.sandbox_scale [--posts 100000] [--pages 30] [--results FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _req(method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> Any:
    from sandbox.core import Request

    m = Message()
    for k, v in headers.items():
        m[k] = v
    return Request(method, path, {k: [v] for k, v in query.items()}, m, b"")


def _timed(sb: Any, emu: Any, path: str, query: dict[str, str], headers: dict[str, str], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        resp = sb.handle(emu, _req("GET", path, query, headers))
        assert resp.status == 200, resp.body[:300]
    return (time.perf_counter() - t0) / n * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox_scale", description=__doc__.splitlines()[0])
    p.add_argument("--posts", type=int, default=100_000)
    p.add_argument("--pages", type=int, default=30, help="requests per measured page position")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results" / "sandbox_scale.md",
                   help="Markdown result file (default: bench/results/sandbox_scale.md)")
    args = p.parse_args(argv)
    from sandbox import Sandbox, SandboxSettings, WorldSettings

    sb = Sandbox(SandboxSettings(world=WorldSettings(accounts_per_platform={}), youtube_daily_quota=10**9,
                                 meta_app_calls_per_hour=10**9, meta_buc_calls_per_day=10**9,
                                 tiktok_short_page_probability=0.0))
    rows: list[str] = []
    gen: list[str] = []
    for platform_name in ("tiktok", "facebook", "instagram", "youtube"):
        cred = f"scale-{platform_name}" if platform_name != "instagram" else "scale-facebook"
        acc = sb.world.add_account(platform_name, args.posts, credential=cred)
        tracemalloc.start()
        t0 = time.perf_counter()
        sb.world.all_posts(acc)
        sb.world.positions(acc)
        secs = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        gen.append(f"| {platform_name} | {args.posts:,} | {secs:.2f} s | {peak:.0f} MiB |")
    accs = {a.platform: a for a in sb.world.accounts()}
    creds = sb.credentials()
    now = sb.clock.now()
    visible = {k: sb.world.posts(a, now) for k, a in accs.items()}
    n = len(visible["tiktok"])
    # TikTok: cursor at first / middle / last page
    tk = accs["tiktok"]
    h = {"Access-Token": creds["scale-tiktok"]["access_token"]}
    lat = []
    for k in (0, n // 2, n - 25):
        cursor = str(int(visible["tiktok"][k].published_at.timestamp()) * 1000) if k else ""
        q = {"business_id": tk.account_id, "max_count": "20", "fields": '["item_id","video_views","likes"]'}
        if cursor:
            q["cursor"] = cursor
        lat.append(_timed(sb, sb.tiktok, "/open_api/v1.3/business/video/list/", q, h, args.pages))
    rows.append(("TikTok video/list (20)", lat))
    # Meta: /posts and /media with an `after` cursor at first / middle / last page
    from sandbox.meta import _cursor

    meta_cred = creds["scale-facebook"]
    for plat, edge, fields in (("facebook", "posts", "id,created_time,shares"),
                               ("instagram", "media", "id,timestamp,like_count")):
        acc = accs[plat]
        token = (meta_cred["metadata"]["page_tokens"][accs["facebook"].account_id])
        lat = []
        for k in (0, len(visible[plat]) // 2, len(visible[plat]) - 30):
            q = {"fields": fields, "limit": "25", "access_token": token}
            if k:
                q["after"] = _cursor(visible[plat][k].post_id)
            lat.append(_timed(sb, sb.meta, f"/v26.0/{acc.account_id}/{edge}", q, {}, args.pages))
        rows.append((f"Meta /{edge} (25)", lat))
    # YouTube playlistItems: pageToken at first / middle / last page
    from sandbox.youtube import _encode_token

    yt = accs["youtube"]
    token = creds["scale-youtube"]["access_token"]
    total = len(visible["youtube"])
    lat = []
    for k in (0, total // 2, total - 50):
        q = {"part": "contentDetails", "playlistId": yt.extra["uploads_playlist"], "maxResults": "50"}
        if k:
            q["pageToken"] = _encode_token(total - k)
        lat.append(_timed(sb, sb.youtube_data, "/youtube/v3/playlistItems", q, {"Authorization": f"Bearer {token}"},
                          args.pages))
    rows.append(("YouTube playlistItems (50)", lat))
    table = ["| endpoint (page size) | first page | middle page | last page | last / first |", "|---|---|---|---|---|"]
    for name, (a, b, c) in rows:
        table.append(f"| {name} | {a:.2f} ms | {b:.2f} ms | {c:.2f} ms | {c / a:.2f}x |")
    out = "\n".join(["| platform | posts | generate + index | peak memory (tracemalloc) |", "|---|---|---|---|", *gen,
                     "", *table])
    print(out)
    if args.results:
        cmd = "python -m bench.sandbox_scale " + " ".join(argv if argv is not None else sys.argv[1:])
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(
            "# Sandbox at scale (one 100k-post account per platform)\n\n"
            f"- command: `{cmd.strip()}`\n"
            f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- machine: nproc={os.cpu_count()}, Python {platform.python_version()}, {platform.machine()}\n"
            f"- in-process (no HTTP); page latency = mean of {args.pages} requests at that cursor position; "
            "target: paging cost flat from first to last page (no per-page O(n) work)\n\n" + out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
