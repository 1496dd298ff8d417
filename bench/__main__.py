"""``python -m bench [name ...] [-- bench args]``: run benchmarks found as ``bench/<name>.py``.

Every module in this package that defines ``main(argv: list[str]) -> None`` is a benchmark; adding a
file is all it takes. With no name, every benchmark runs with its default arguments. Arguments after
the names, from the first one starting with ``-`` (e.g. ``--quick --rounds 2``), are passed to each
selected benchmark.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the modules in bench/ (not starting with '_'), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([str(_HERE)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, flags = argv[:first_flag], argv[first_flag:]
    if flags in (["-h"], ["--help"]) and not names:
        print(__doc__.strip())
        print("available:", ", ".join(discover()) or "(none)")
        return 0
    available = discover()
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}",
              file=sys.stderr)
        return 2
    selected = names or available
    ran = 0
    for name in selected:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            continue  # a helper module, not a benchmark
        print(f"== bench {name} ==", flush=True)
        entry(list(flags))
        ran += 1
    if not ran:
        print("bench: no benchmark found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
