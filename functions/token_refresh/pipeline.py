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
from shared.errors import InputError, SDEError
from shared.logs import log_context
from shared.runner import mirror_registry, read_body, read_names, record_row, serve_http
from shared.tokens import RefreshOutcome, TokenManager
from shared.vault import make_vault

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


def select_credentials(conn: Any, config: Config, vault: Any, wanted: list[str] | None) -> dict[str, str | None]:
    """credential name -> account platform (None when no active account references it).

    Default: every credential in the vault plus every credential an active account references (a
    referenced one missing from the vault is reported, not skipped).
    """
    mirror_registry(conn, config)
    rows = conn.run(
        "SELECT secret, platform FROM social.accounts WHERE active AND coalesce(secret, '') <> ''"
        " ORDER BY (platform = 'instagram'), platform, account_id"
    )
    referenced: dict[str, str] = {}
    for secret, platform in rows:
        referenced.setdefault(secret, platform)
    in_vault = set(vault.names())
    if wanted is not None:
        unknown = [n for n in wanted if n not in in_vault and n not in referenced]
        if unknown:
            raise InputError("credentials", f"unknown credential(s): {', '.join(unknown)}")
        return {n: referenced.get(n) for n in wanted}
    return {n: referenced.get(n) for n in sorted(in_vault | set(referenced))}


def _platform(outcome: RefreshOutcome, referenced: str | None) -> str:
    if referenced:
        return referenced
    return settings.PROVIDER_PLATFORM.get(outcome.provider or "", "tiktok")


def handle(request: Any, config: Config | None = None) -> tuple[dict[str, Any], int]:
    """The whole HTTP contract of ``refresh_tokens``: (JSON body, status)."""

    def work(run_id: str, trigger: str) -> tuple[dict[str, Any], int]:
        cfg = config or Config.from_env()
        req = parse_body(request.get_data(cache=True) or b"")
        conn = db.connect(cfg)
        try:
            vault = make_vault(cfg)
            targets = select_credentials(conn, cfg, vault, req.credentials)
            return _run(conn, cfg, vault, req, targets, run_id, trigger,
                        request.headers.get("X-CloudScheduler-ScheduleTime"))
        finally:
            try:
                conn.close()
            except Exception:  # the connection is already broken; nothing to release
                logger.debug("closing the run connection failed", exc_info=True)

    return serve_http(request, settings.FUNCTION, work)


def _run(conn: Any, config: Config, vault: Any, req: RefreshRequest, targets: Mapping[str, str | None],
         run_id: str, trigger: str, schedule_time: str | None) -> tuple[dict[str, Any], int]:
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
    }
    logger.info("token refresh finished: %s", body["status"], extra={"fields": {"totals": body["totals"]}})
    return body, 500 if failed_retriably else 200
