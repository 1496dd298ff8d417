"""Stage each function for deployment: infra/.build/<name>/ with main.py at the root.

Cloud Functions loads ``main.py`` from the source root; ours imports ``functions.<name>`` and ``shared``,
so the stage holds the entry point, its own folder, the common package and requirements.txt.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def stage(name: str, out: Path) -> Path:
    src = ROOT / "functions" / name
    if not (src / "main.py").is_file():
        raise SystemExit(f"package: no functions/{name}/main.py")
    dest = out / name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "functions").mkdir(parents=True)
    shutil.copy2(src / "main.py", dest / "main.py")
    shutil.copy2(ROOT / "functions" / "__init__.py", dest / "functions" / "__init__.py")
    shutil.copytree(src, dest / "functions" / name, ignore=IGNORE)
    shutil.copytree(ROOT / "shared", dest / "shared", ignore=IGNORE)
    shutil.copy2(ROOT / "requirements.txt", dest / "requirements.txt")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("functions", nargs="*", default=["youtube", "token_refresh"])
    parser.add_argument("--out", type=Path, default=ROOT / "infra" / ".build")
    args = parser.parse_args(argv)
    for name in args.functions:
        print(f"staged {stage(name, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
