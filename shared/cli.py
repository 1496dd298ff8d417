"""Operator CLI: ``python -m shared.cli tokens list`` and ``tokens import NAME --file F|-``.

Never prints a token. Every error is one line on stderr with exit code 2 (no traceback). ``tokens list``
only reads (it never replays a token journal or writes anything); ``tokens import`` stores a new version
under the credential's refresh lock and deletes any pending journal of that credential.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from shared.config import Config
from shared.errors import InputError, SDEError
from shared.logs import redact

__all__ = ["main"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage + message)
        raise _Usage(f"{self.prog}: {message}")


class _Usage(Exception):
    pass


def _parser() -> _Parser:
    parser = _Parser(prog="python -m shared.cli", description="Social Data Engine operator commands.")
    sub = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    tokens = sub.add_parser("tokens", help="credentials in the token vault")
    tsub = tokens.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = tsub.add_parser("list", help="credentials with expiry and status (never the tokens)")
    listing.add_argument("--json", action="store_true", help="one JSON object per credential")
    imp = tsub.add_parser("import", help="store a credential JSON (docs/architecture.md 'Credentials')")
    imp.add_argument("name", help="credential name (letters, digits, '-', '_')")
    imp.add_argument("--file", required=True, help="JSON file, or - for stdin")
    return parser


def _fmt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def _state(config: Config) -> tuple[dict[str, str], dict[str, list[str]]]:
    """token_state outcomes and registry accounts per credential (empty when the database is unreachable)."""
    from shared import db

    try:
        conn = db.connect(config)
    except SDEError:
        return {}, {}
    try:
        outcomes = {r[0]: r[1] for r in conn.run("SELECT credential, outcome FROM social.token_state")}
        accounts: dict[str, list[str]] = {}
        for secret, platform, account_id in conn.run(
                "SELECT secret, platform, account_id FROM social.accounts WHERE active ORDER BY 2, 3"):
            accounts.setdefault(secret, []).append(f"{platform}:{account_id}")
        return outcomes, accounts
    except Exception:  # the listing still works from the vault alone
        return {}, {}
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _names(vault: Any, registry: dict[str, list[str]]) -> list[str]:
    """Credentials in the vault plus those the registry references (listing may be denied by IAM)."""
    from shared.vault import VaultListDenied

    try:
        listed = set(vault.names())
    except VaultListDenied as exc:
        print(f"warning: {exc}; showing the credentials the registry references", file=sys.stderr)
        listed = set()
    return sorted(listed | set(registry))


def _list(config: Config, as_json: bool) -> int:
    from shared.tokens import (
        TokenManager,
        access_expiry,
        needs_refresh,
        reauthorization_deadline,
        refresh_token_warnings,
    )
    from shared.vault import make_vault

    vault = make_vault(config)
    manager = TokenManager(config, vault)
    outcomes, registry = _state(config)
    now = config.now()
    rows: list[dict[str, Any]] = []
    for name in _names(vault, registry):
        row: dict[str, Any] = {"credential": name, "provider": "?", "accounts": registry.get(name, []),
                               "access_expires_at": None, "refresh_expires_at": None, "warnings": []}
        try:
            ts = manager.read(name)  # side-effect free: a pending journal is replayed only by a refresh
        except SDEError as exc:
            row.update(status="needs attention", note=f"unreadable: {exc.error_class}")
            rows.append(row)
            continue
        deadline = reauthorization_deadline(ts)
        expiry = access_expiry(ts)
        row.update(provider=ts.provider, accounts=registry.get(name) or list(ts.account_ids),
                   access_expires_at=expiry, refresh_expires_at=deadline,
                   warnings=refresh_token_warnings(ts, config, now))
        if outcomes.get(name) == "needs_reauthorization" or (deadline is not None and deadline <= now):
            status = "needs attention"
        elif expiry is not None and expiry <= now:
            status = "expired"
        elif needs_refresh(ts, config, now) or row["warnings"]:
            status = "expiring"
        else:
            status = "fresh"
        row["status"] = status
        rows.append(row)
    if as_json:
        for row in rows:
            print(json.dumps(row, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)))
        return 0
    if not rows:
        print("no credentials in the vault (import one with: python -m shared.cli tokens import NAME --file F)")
        return 0
    header = ("CREDENTIAL", "PROVIDER", "ACCOUNTS", "ACCESS EXPIRES", "REFRESH EXPIRES", "STATUS")
    table = [header] + [(r["credential"], r["provider"], ",".join(r["accounts"]) or "-",
                         _fmt(r["access_expires_at"]), _fmt(r["refresh_expires_at"]), r["status"]) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        for w in r["warnings"]:
            print(f"warning: {w}")
    return 0


def _import(config: Config, name: str, source: str) -> int:
    from shared.tokens import TokenManager, _register_payload, prepare_import
    from shared.vault import make_vault

    if not _NAME.fullmatch(name):
        raise InputError("name", "must be 1-255 letters, digits, '-' or '_'")
    try:
        raw = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise InputError("file", f"cannot read {source}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise InputError("file", "is not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError("file", f"is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict):
        _register_payload(data)
        data.setdefault("credential", name)
    ts, warnings = prepare_import(data, name, config.now())
    ts.register()
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    version = TokenManager(config, make_vault(config)).import_credential(ts)
    _reset_state(config, name)
    print(f"imported {name} ({ts.provider}, {len(ts.account_ids)} account(s)) as version {version}; "
          f"access expires {_fmt(ts.access_token_expires_at)}")
    return 0


def _reset_state(config: Config, name: str) -> None:
    """A fresh authorization clears the 'needs re-authorization' verdict."""
    from shared import db

    try:
        conn = db.connect(config)
    except SDEError:
        return
    try:
        conn.run("DELETE FROM social.token_state WHERE credential = :c", c=name)
    except Exception:  # best effort: the next refresh run rewrites the state anyway
        pass
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        config = Config.from_env()
        if args.command == "list":
            return _list(config, args.json)
        return _import(config, args.name, args.file)
    except _Usage as exc:
        _fail(str(exc))
    except InputError as exc:
        _fail(f"error: {exc.field}: {exc.message}")
    except SDEError as exc:
        _fail(f"error: {exc}")
    except KeyboardInterrupt:
        _fail("error: interrupted")
    except Exception as exc:  # last resort: still one line, never a traceback
        _fail(f"error: {type(exc).__name__}: {exc}")
    return 2


def _fail(message: str) -> None:
    print(redact(" ".join(message.split())), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
