"""The token-refresh run: validate the body, pick the credentials, ``ensure_fresh`` each, record, report.

One credential's failure never stops the others. Each credential gets one ``social.sync_runs`` row
(function ``token_refresh``, ``account_id`` = the credential name, ``outcome`` = the verdict) and one JSON
summary log line. HTTP 500 only when some credential failed in a way a retry could fix (a 5xx, a timeout,
a vault outage); a credential that needs a human (revoked, expired authorization) is reported with 200
so Cloud Scheduler does not hammer the platform.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions.token_refresh import settings
from shared import db
from shared.config import Config
from shared.errors import InputError, SDEError, VaultError
from shared.logs import log_context, set_level
from shared.registry import Account, load_registry
from shared.runner import mirror_registry, read_body, read_names, record_row, serve_http
from shared.tokens import RefreshOutcome, TokenManager
from shared.vault import CredentialNotFound, VaultListDenied, make_vault

__all__ = ["RefreshRequest", "handle", "parse_body", "select_credentials"]

logger = logging.getLogger(__name__)


@dataclass
class RefreshRequest:
    credentials: list[str] | None = None
    force: bool = False
    dry_run: bool = False


def parse_body(raw: bytes) -> RefreshRequest:
    """Validate the optional JSON body; any problem raises InputError naming the field."""
    body = read_body(raw, settings.BODY_FIELDS)
    return RefreshRequest(credentials=read_names(body, "credentials"), force=bool(body.get("force", False)),
                          dry_run=bool(body.get("dry_run", False)))


def _platform_order(platform: str, account_id: str) -> tuple[bool, str, str]:
    """A Meta credential's ledger platform is facebook rather than instagram (when it serves both)."""
    return (platform == "instagram", platform, account_id)


def referenced_credentials(conn: Any, config: Config) -> tuple[dict[str, str], list[Account] | None]:
    """credential -> platform of the first active account referencing it, and the registry file's accounts.

    Read-only: from the registry file when there is one (what the mirror will write), else from
    ``social.accounts``.
    """
    registry: list[Account] | None = None
    if config.accounts_file.exists():
        registry = load_registry(config.accounts_file, default_timezone=config.default_timezone)
        rows = [(a.secret, a.platform, a.account_id) for a in registry if a.active and a.secret]
    else:
        rows = [tuple(r) for r in conn.run(
            "SELECT secret, platform, account_id FROM social.accounts WHERE active AND coalesce(secret, '') <> ''")]
    referenced: dict[str, str] = {}
    for secret, platform, _ in sorted(rows, key=lambda r: _platform_order(r[1], r[2])):
        referenced.setdefault(secret, platform)
    return referenced, registry


def _listed(vault: Any, warnings: list[str]) -> set[str] | None:
    """Labelled credentials in the vault (a supplement); None when listing is denied or fails."""
    try:
        return set(vault.names())
    except VaultListDenied as exc:
        message = f"listing the vault is denied; refreshing only the credentials the registry references ({exc})"
    except VaultError as exc:
        message = f"listing the vault failed; refreshing only the credentials the registry references ({exc})"
    logger.warning(message)
    warnings.append(message)
    return None


def _exists(vault: Any, name: str) -> bool:
    try:
        vault.read(name)
    except CredentialNotFound:
        return False
    except VaultError:
        return True  # it may exist: ensure_fresh reports the real error
    return True


def select_credentials(conn: Any, config: Config, vault: Any, wanted: list[str] | None, *,
                       dry_run: bool = False, warnings: list[str] | None = None) -> dict[str, str | None]:
    """credential name -> account platform (None when no active account references it).

    Primary source: every credential an active account of the registry references (a referenced one
    missing from the vault is reported, not skipped). Supplement: the vault's labelled credentials; the
    listing needs project-level ``secretmanager.secrets.list``, and when it is denied the run carries on
    with the referenced ones (and says so in ``warnings``). Unknown ``wanted`` names raise ``InputError``
    before anything is written; the registry is mirrored into ``social.accounts`` only when not a dry run.
    """
    warnings = warnings if warnings is not None else []
    referenced, registry = referenced_credentials(conn, config)
    if wanted is not None:
        unknown = [n for n in wanted if n not in referenced]
        if unknown:
            listed = _listed(vault, warnings)
            unknown = [n for n in unknown if n not in listed] if listed is not None else [
                n for n in unknown if not _exists(vault, n)]
        if unknown:
            raise InputError("credentials", f"unknown credential(s): {', '.join(unknown)}")
        selected = {n: referenced.get(n) for n in wanted}
    else:
        listed = _listed(vault, warnings) or set()
        selected = {n: referenced.get(n) for n in sorted(listed | set(referenced))}
    if not dry_run:
        mirror_registry(conn, config, registry)
    return selected


def _platform(outcome: RefreshOutcome, referenced: str | None) -> str:
    if referenced:
        return referenced
    return settings.PROVIDER_PLATFORM.get(outcome.provider or "", "tiktok")


def handle(request: Any, config: Config | None = None) -> tuple[dict[str, Any], int]:
    """The whole HTTP contract of ``refresh_tokens``: (JSON body, status)."""

    def work(run_id: str, trigger: str) -> tuple[dict[str, Any], int]:
        cfg = config or Config.from_env()
        set_level(cfg.log_level)
        req = parse_body(request.get_data(cache=True) or b"")
        conn = db.connect(cfg)
        try:
            vault = make_vault(cfg)
            warnings: list[str] = []
            targets = select_credentials(conn, cfg, vault, req.credentials, dry_run=req.dry_run,
                                         warnings=warnings)
            return _run(conn, cfg, vault, req, targets, run_id, trigger,
                        request.headers.get("X-CloudScheduler-ScheduleTime"), warnings)
        finally:
            try:
                conn.close()
            except Exception:  # the connection is already broken; nothing to release
                logger.debug("closing the run connection failed", exc_info=True)

    return serve_http(request, settings.FUNCTION, work)


def _run(conn: Any, config: Config, vault: Any, req: RefreshRequest, targets: Mapping[str, str | None],
         run_id: str, trigger: str, schedule_time: str | None, warnings: list[str]) -> tuple[dict[str, Any], int]:
    manager = TokenManager(config, vault)
    now = config.now()
    logger.info("token refresh started: %d credential(s)", len(targets),
                extra={"fields": {"credentials": len(targets), "force": req.force, "dry_run": req.dry_run}})
    results: list[dict[str, Any]] = []
    failed_retriably = False
    for i, (name, referenced) in enumerate(targets.items(), 1):
        with log_context(credential=name):
            started, started_at = time.monotonic(), datetime.now(UTC)
            try:
                outcome = manager.ensure_fresh(name, force=req.force, dry_run=req.dry_run)
            except Exception as exc:  # a bug for one credential must not stop the others
                logger.exception("unexpected error refreshing %s", name)
                outcome = RefreshOutcome(name, "error", error_class="internal",
                                         error_message=f"{type(exc).__name__}: {exc}")
            status = "ok" if outcome.ok else "failed"
            failed_retriably |= outcome.outcome == "error" and outcome.retriable
            platform = _platform(outcome, referenced)
            entry = {**outcome.to_json(), "platform": platform, "status": status,
                     "seconds": round(time.monotonic() - started, 3)}
            results.append(entry)
            level = (logging.ERROR if outcome.outcome == "error" else
                     logging.WARNING if outcome.outcome == "needs_reauthorization" or outcome.warnings else
                     logging.INFO)
            logger.log(level, "credential %d/%d %s: %s", i, len(targets), name, outcome.outcome,
                       extra={"fields": entry})
            if not req.dry_run:
                details = {"outcome": outcome.outcome, "provider": outcome.provider, "warnings": outcome.warnings,
                           "expires_at": entry["expires_at"], "refresh_expires_at": entry["refresh_expires_at"],
                           "force": req.force, "schedule_time": schedule_time}
                try:
                    record_row(conn, run_id=run_id, function=settings.FUNCTION, platform=platform,
                               account_id=name, trigger=trigger, started_at=started_at, status=status,
                               outcome=outcome.outcome, error_class=outcome.error_class,
                               error_message=outcome.error_message, details=details)
                except SDEError as exc:
                    logger.error("could not record the run ledger row: %s", exc)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    n_failed = sum(1 for r in results if r["status"] == "failed")
    body = {
        "run_id": run_id, "function": settings.FUNCTION, "trigger": trigger,
        "status": "ok" if not n_failed else ("failed" if n_failed == len(results) else "partial"),
        "dry_run": req.dry_run, "force": req.force, "now": now.isoformat(),
        "credentials": results, "totals": {"credentials": len(results), **dict(sorted(counts.items()))},
        "warnings": warnings,
    }
    logger.info("token refresh finished: %s", body["status"], extra={"fields": {"totals": body["totals"]}})
    return body, 500 if failed_retriably else 200
