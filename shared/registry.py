"""The account registry: a declarative TOML file, mirrored into ``social.accounts``.

The file is the source of truth (see ``accounts.example.toml``). ``load_registry`` validates all of
it and reports every problem at once; ``sync_registry`` upserts it and deactivates accounts that left
the file (rows are never deleted: their metrics stay joinable); ``active_accounts`` reads back what a
platform function should sync.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import DEFAULT_TIMEZONE
from shared.db import transaction, upsert
from shared.errors import ConfigError, InputError
from shared.timewindow import zone

__all__ = ["ACCOUNTS_TABLE", "PLATFORMS", "Account", "active_accounts", "load_registry", "sync_registry"]

PLATFORMS = ("tiktok", "facebook", "instagram", "youtube")
ACCOUNTS_TABLE = "social.accounts"

_REQUIRED = ("platform", "account_id", "name", "brand", "secret")
_OPTIONAL = ("timezone", "active", "metadata")
_DEFAULT_KEYS = ("timezone",)
_TOP_KEYS = ("defaults", "accounts")
#: Secret Manager secret ids: letters, digits, ``-`` and ``_``, at most 255 characters.
_SECRET_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")


@dataclass(frozen=True)
class Account:
    """One official account of a brand on one platform."""

    platform: str
    account_id: str
    name: str
    brand: str
    timezone: str
    secret: str  # credential name in the token vault, never the token itself
    active: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.platform, self.account_id)

    def to_row(self) -> dict[str, Any]:
        """The ``social.accounts`` row (bookkeeping columns are the database's)."""
        return {
            "platform": self.platform,
            "account_id": self.account_id,
            "name": self.name,
            "brand": self.brand,
            "timezone": self.timezone,
            "secret": self.secret,
            "active": self.active,
            "metadata": dict(self.metadata),
        }


# --- loading -----------------------------------------------------------------------------------


def load_registry(path: str | Path, *, default_timezone: str = DEFAULT_TIMEZONE) -> list[Account]:
    """Read and validate the registry file.

    Raises:
        ConfigError: unreadable file, invalid TOML, or any invalid entry; ``problems`` lists every
            problem with the file name and the entry index (``accounts[3]``).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: account registry not found (copy accounts.example.toml)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the account registry: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc

    problems: list[str] = []
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"{path}: unknown top-level key {key!r} (expected {', '.join(_TOP_KEYS)})")

    defaults = raw.get("defaults", {})
    tz_default = default_timezone
    if not isinstance(defaults, dict):
        problems.append(f"{path}: [defaults] must be a table")
    else:
        for key in defaults:
            if key not in _DEFAULT_KEYS:
                problems.append(f"{path}: defaults: unknown key {key!r} (expected {', '.join(_DEFAULT_KEYS)})")
        if "timezone" in defaults:
            tz_default = defaults["timezone"]
            if not _valid_tz(tz_default):
                problems.append(f"{path}: defaults.timezone: unknown IANA timezone {tz_default!r}")
                tz_default = default_timezone

    entries = raw.get("accounts", [])
    if not isinstance(entries, list):
        problems.append(f"{path}: 'accounts' must be an array of tables ([[accounts]])")
        entries = []

    accounts: list[Account] = []
    first_index: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: accounts[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table")
            continue
        account, entry_problems = _account(entry, tz_default)
        if isinstance(entry.get("platform"), str) and entry.get("account_id") is not None:
            where += f" ({entry['platform']}/{entry['account_id']})"
        problems += [f"{where}: {p}" for p in entry_problems]
        if account is None:
            continue
        if account.key in first_index:
            problems.append(
                f"{where}: duplicate (platform, account_id), first defined at accounts[{first_index[account.key]}]"
            )
            continue
        first_index[account.key] = i
        accounts.append(account)

    if problems:
        raise ConfigError(problems)
    return accounts


def _valid_tz(tz: object) -> bool:
    if not isinstance(tz, str) or not tz:
        return False
    try:
        zone(tz)
    except ValueError:
        return False
    return True


def _text(entry: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = entry.get(key)
    if value is None:
        problems.append(f"missing required field {key!r}")
        return None
    if key == "account_id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric page ids written unquoted are unambiguous
    if not isinstance(value, str):
        problems.append(f"{key} must be a string, got {type(value).__name__}")
        return None
    if not value.strip():
        problems.append(f"{key} must not be empty")
        return None
    return value.strip()


def _account(entry: Mapping[str, Any], tz_default: str) -> tuple[Account | None, list[str]]:
    problems: list[str] = []
    for key in entry:
        if key not in _REQUIRED + _OPTIONAL:
            problems.append(f"unknown key {key!r} (expected {', '.join(_REQUIRED + _OPTIONAL)})")
    values = {key: _text(entry, key, problems) for key in _REQUIRED}

    platform = values["platform"]
    if platform is not None and platform not in PLATFORMS:
        problems.append(f"unknown platform {platform!r} (expected one of {', '.join(PLATFORMS)})")
    secret = values["secret"]
    if secret is not None and not _SECRET_NAME.fullmatch(secret):
        problems.append(f"secret {secret!r} is not a valid credential name (letters, digits, '-', '_')")

    timezone = entry.get("timezone", tz_default)
    if not _valid_tz(timezone):
        problems.append(f"timezone: unknown IANA timezone {timezone!r}")
    active = entry.get("active", True)
    if not isinstance(active, bool):
        problems.append(f"active must be true or false, got {active!r}")
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict):
        problems.append("metadata must be a table ([accounts.metadata])")

    if problems:
        return None, problems
    return (
        Account(
            platform=str(platform),
            account_id=str(values["account_id"]),
            name=str(values["name"]),
            brand=str(values["brand"]),
            timezone=str(timezone),
            secret=str(secret),
            active=bool(active),
            metadata=dict(metadata),
        ),
        [],
    )


# --- database ----------------------------------------------------------------------------------


def sync_registry(conn: Any, accounts: Sequence[Account]) -> dict[str, int]:
    """Mirror ``accounts`` into ``social.accounts`` in one transaction; idempotent.

    Accounts in the table but no longer in the file are set ``active = false`` (never deleted).

    Returns:
        ``{"inserted", "updated", "unchanged", "deactivated"}`` row counts.
    """
    platforms = [a.platform for a in accounts]
    ids = [a.account_id for a in accounts]
    with transaction(conn):
        (now,) = conn.run("SELECT now()")[0]  # transaction time: the same stamp for every row touched
        rows = [{**a.to_row(), "updated_at": now} for a in accounts]
        result = upsert(conn, ACCOUNTS_TABLE, rows, key=("platform", "account_id"))
        gone = conn.run(
            "UPDATE social.accounts AS a SET active = false, updated_at = :now "
            "WHERE a.active AND NOT EXISTS ("
            "  SELECT 1 FROM unnest(CAST(:platforms AS text[]), CAST(:ids AS text[])) AS f(platform, account_id)"
            "  WHERE f.platform = a.platform AND f.account_id = a.account_id"
            ") RETURNING a.platform, a.account_id",
            platforms=platforms,
            ids=ids,
            now=now,
        )
    return {
        "inserted": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "deactivated": len(gone),
    }


_SELECT = (
    "SELECT platform, account_id, name, brand, timezone, secret, active, metadata FROM social.accounts "
    "WHERE platform = ANY(CAST(:platforms AS text[])) AND active"
)


def active_accounts(conn: Any, platform: str | Collection[str], only: Iterable[str] | None = None) -> list[Account]:
    """Active accounts of ``platform`` (or several), ordered; ``only`` narrows to those account ids.

    Raises:
        InputError: ``only`` names an account that is unknown or inactive (field ``accounts``).
    """
    platforms = [platform] if isinstance(platform, str) else list(platform)
    sql = _SELECT
    params: dict[str, Any] = {"platforms": platforms}
    wanted: list[str] | None = None
    if only is not None:
        wanted = [str(x) for x in only]
        sql += " AND account_id = ANY(CAST(:ids AS text[]))"
        params["ids"] = wanted
    rows = conn.run(sql + " ORDER BY platform, account_id", **params)
    accounts = [
        Account(
            platform=r[0],
            account_id=r[1],
            name=r[2] or "",
            brand=r[3] or "",
            timezone=r[4],
            secret=r[5] or "",
            active=r[6],
            metadata=_json_object(r[7]),
        )
        for r in rows
    ]
    if wanted is not None:
        found = {a.account_id for a in accounts}
        missing = [x for x in wanted if x not in found]
        if missing:
            raise InputError("accounts", f"unknown or inactive {'/'.join(platforms)} account(s): {', '.join(missing)}")
    return accounts


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # a driver that hands jsonb back as text
        value = json.loads(value)
    return dict(value or {})
