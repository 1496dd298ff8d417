"""``python -m sandbox``: every emulator in one process, on loopback, until Ctrl-C / SIGTERM.

Prints the environment settings (``export KEY=VALUE`` lines) a client needs to talk to it, optionally
writes them to a file, plus the account registry (TOML) and one credential JSON per credential.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from datetime import date
from pathlib import Path
from typing import Any

from sandbox.server import Sandbox, SandboxSettings
from sandbox.world import DEFAULT_ACCOUNTS, PLATFORMS, WorldSettings


def _accounts(text: str) -> dict[str, int]:
    out = dict(DEFAULT_ACCOUNTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        platform, sep, n = part.partition("=")
        if not sep or platform not in PLATFORMS or not n.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected PLATFORM=N[,...] with PLATFORM in {', '.join(PLATFORMS)}; got {part!r}")
        out[platform] = int(n)
    return out


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _setting(text: str) -> tuple[str, Any]:
    """``name=value`` for a scalar ``SandboxSettings`` field, parsed by the type of its default."""
    import dataclasses

    name, sep, raw = text.partition("=")
    defaults = SandboxSettings()
    scalar = {f.name for f in dataclasses.fields(SandboxSettings)
              if isinstance(getattr(defaults, f.name), (bool, int, float, str, type(None)))}
    if not sep or name not in scalar:
        raise argparse.ArgumentTypeError(f"expected SETTING=VALUE with SETTING one of {', '.join(sorted(scalar))}")
    default = getattr(defaults, name)
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return name, raw.lower() in ("true", "1")
        if raw.lower() in ("none", "null") and (default is None or name == "ledger_max_entries"):
            return name, None
        if isinstance(default, int) or default is None:
            return name, int(raw)
        if isinstance(default, float):
            return name, float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: invalid value {raw!r}") from None
    return name, raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.splitlines()[0])
    p.add_argument("--port-base", type=int, default=0,
                   help="fixed ports: emulator k listens on PORT_BASE+k (default: free ports)")
    p.add_argument("--seed", type=int, default=7, help="world seed (default 7)")
    p.add_argument("--anchor", type=_day, default=None, help="the world's 'today' (default: UTC today)")
    p.add_argument("--posts-per-account", type=_count, default=None,
                   help="posts per account (default: a realistic spread per platform)")
    p.add_argument("--history-days", type=_positive, default=730, metavar="N",
                   help="days of post history before the anchor (default 730)")
    p.add_argument("--accounts", type=_accounts, default=None, metavar="PLATFORM=N,...",
                   help="accounts per platform, e.g. tiktok=5,youtube=6 (unlisted platforms keep defaults)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every request")
    p.add_argument("--youtube-daily-quota", type=_positive, default=None, metavar="UNITS",
                   help="YouTube Data API units per Pacific day (default 10000)")
    p.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE", type=_setting,
                   help="any scalar SandboxSettings field, e.g. --set meta_app_calls_per_hour=1000000 (repeatable)")
    p.add_argument("--write-env", type=Path, help="write KEY=VALUE lines to this file")
    p.add_argument("--write-registry", type=Path, help="write the accounts registry (TOML) to this file")
    p.add_argument("--write-credentials", type=Path, metavar="DIR",
                   help="write one <credential>.json vault payload per credential into DIR")
    return p


def settings_from_args(args: argparse.Namespace) -> SandboxSettings:
    world = WorldSettings(seed=args.seed, anchor=args.anchor, posts_per_account=args.posts_per_account,
                          history_days=args.history_days)
    if args.accounts is not None:
        world.accounts_per_platform = args.accounts
    settings = SandboxSettings(world=world, latency_ms=args.latency_ms)
    if args.youtube_daily_quota is not None:
        settings.youtube_daily_quota = args.youtube_daily_quota
    for name, value in args.set:
        setattr(settings, name, value)
    settings.__post_init__()  # re-validate
    return settings


def _credentials(sb: Sandbox) -> dict[str, dict[str, Any]]:
    """Per credential; a provider whose emulator cannot mint credentials yet is reported, not fatal."""
    from sandbox.server import PROVIDER_OF

    out: dict[str, dict[str, Any]] = {}
    for name, accounts in sb.world.credentials().items():
        try:
            out[name] = sb.provider(PROVIDER_OF[accounts[0].platform]).initial_credential(name, accounts)
        except NotImplementedError:
            print(f"# note: no credential for {name}: its emulator cannot issue credentials", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        sb = Sandbox(settings_from_args(args)).start(port_base=args.port_base or None)
    except OSError as exc:
        print(f"sandbox: cannot listen: {exc}", file=sys.stderr)
        return 2
    try:
        env = sb.env
        if args.write_env:
            args.write_env.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        if args.write_registry:
            args.write_registry.write_text(sb.registry_toml())
        if args.write_credentials:
            args.write_credentials.mkdir(parents=True, exist_ok=True)
            for name, payload in _credentials(sb).items():
                (args.write_credentials / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        for k, v in env.items():
            print(f"export {k}={shlex.quote(v)}")
        print("# sandbox ready; Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sb.stop()
    print("# sandbox stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
