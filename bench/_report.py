"""Assemble BENCHMARKS.md from the result files the benchmarks write to bench/results/.

    python -m bench._report        (``make bench`` runs it after the benchmarks)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ORDER = ["upsert", "joins", "youtube", "sandbox_rps", "sandbox_scale"]

HEADER = """# Benchmarks

Speed and memory are measured here, never asserted in tests (the machines are 2 noisy cores): every
figure below is a ratio or a count measured within one run, with the command that reproduces it.
`make bench` runs every benchmark (`python -m bench [name ...]`) and rebuilds this file from the
result files in `bench/results/` (`python -m bench._report`).

| benchmark | target (issue) | section |
|---|---|---|
| upsert, 10k / 100k / 1M rows | insert >= 0.70x merge-alone; >= 10x executemany; < 50 MB at 1M | [upsert](#upsert) |
| hash-join scaling 10k -> 1M rows | time per row flat within 2x | [joins](#joins) |
| YouTube sync | calls = formula; < 200 MB at 50k videos; cost/video flat (2x) | [youtube](#youtube) |
| sandbox throughput | >= 1,000 requests/s on loopback | [sandbox_rps](#sandbox_rps) |
| sandbox at 100k posts/account | generation cost; per-page latency flat | [sandbox_scale](#sandbox_scale) |
"""


def build() -> str:
    names = {p.stem for p in RESULTS.glob("*.md")}
    ordered = [n for n in ORDER if n in names] + sorted(names - set(ORDER))
    parts = [HEADER]
    for name in ordered:
        body = (RESULTS / f"{name}.md").read_text().strip()
        lines = body.splitlines()
        if lines and lines[0].startswith("#"):
            lines = lines[1:]  # our own heading below keeps the anchors stable
        parts.append(f'<a id="{name}"></a>\n\n## {name}\n\n' + "\n".join(lines).strip() + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    out = ROOT / "BENCHMARKS.md"
    out.write_text(build())
    print(f"wrote {out.relative_to(ROOT)} from {len(list(RESULTS.glob('*.md')))} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
