"""The HTTP contract every platform function shares: validate the body, sync each account, report.

Cloud Scheduler (or a person) POSTs an optional JSON body. Each account is synced on its own: one
account's failure never stops the others, every account gets one ``social.sync_runs`` row and one JSON
summary log line, and the HTTP status tells Scheduler whether a retry could help (500) or not (200).

An optional run-level planner (``plan_run(ctx, accounts) -> {account_id: allocation}``) runs once before
the per-account loop, so a shared budget (YouTube's daily Data API quota) is split across every account
of the run instead of being spent first come, first served; pipelines read ``ctx.allocations``.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pg8000.exceptions import Error as DriverError

from shared import db
from shared.config import Config
from shared.errors import InputError, LoadError, QuotaExceededError, SDEError
from shared.logs import log_context, redact, set_level
from shared.registry import Account, active_accounts, load_registry, sync_registry
from shared.timewindow import DateRange, parse_date

logger = logging.getLogger(__name__)

#: the earliest timezone on Earth is UTC+14: no account's "today" is later than this
_MAX_UTC_OFFSET = timedelta(hours=14)

BASE_FIELDS: dict[str, type] = {"accounts": list, "start_date": str, "end_date": str, "dry_run": bool}


@dataclass
class SyncRequest:
    accounts: list[str] | None = None
    window: DateRange | None = None
    dry_run: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AccountResult:
    """What one account's sync did; pipelines fill it, the runner adds timing and errors."""

    status: str = "ok"  # ok | failed | skipped | deferred
    api_calls: int = 0
    quota_units: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    seconds: float = 0.0
    started_at: datetime | None = None
    window_start: date | None = None
    window_end: date | None = None
    error_class: str | None = None
    error_message: str | None = None
    retriable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def add_counts(self, inserted: int = 0, updated: int = 0, unchanged: int = 0) -> None:
        self.rows_inserted += inserted
        self.rows_updated += updated
        self.rows_unchanged += unchanged


@dataclass
class RunContext:
    run_id: str
    function: str
    trigger: str  # scheduler | manual | cli
    config: Config
    now: datetime
    request: SyncRequest
    deadline: float  # time.monotonic() value after which no new account starts
    schedule_time: str | None = None
    started: float = field(default_factory=time.monotonic)
    #: what the run-level planner (``plan_run``) gave each account id; {} when there is no planner
    allocations: dict[str, Any] = field(default_factory=dict)
    _conn: Any = None
    _tokens: Any = None

    @property
    def conn(self) -> Any:
        """The run's database connection (reopened after a dropped connection)."""
        if self._conn is None:
            self._conn = db.connect(self.config)
        return self._conn

    def reset_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # the connection is already broken; nothing to save
                logger.debug("closing a broken connection failed", exc_info=True)
        self._conn = None

    @property
    def tokens(self) -> Any:
        """The TokenManager shared by every account of this run (vault + locked refresh)."""
        if self._tokens is None:
            from shared.tokens import TokenManager
            from shared.vault import make_vault

            # default connect: a dedicated connection per refresh (it carries the advisory lock), closed
            # afterwards; never the run's transactional connection
            self._tokens = TokenManager(self.config, make_vault(self.config))
        return self._tokens

    @property
    def dry_run(self) -> bool:
        return self.request.dry_run

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


SyncAccount = Callable[[RunContext, Account], AccountResult]
PlanRun = Callable[[RunContext, list[Account]], Mapping[str, Any]]


# --------------------------------------------------------------------------------------------------
# request parsing
# --------------------------------------------------------------------------------------------------


def read_body(raw: bytes, allowed: Mapping[str, type]) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty) holding only ``allowed`` fields of the right type.

    Any problem raises InputError naming the field. Shared by every function's HTTP contract.
    """
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("body", "is not valid JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InputError("body", "must be a JSON object")
    for key, value in body.items():
        if key not in allowed:
            raise InputError(key, f"unknown field; allowed: {', '.join(sorted(allowed))}")
        expected = allowed[key]
        if expected is bool and not isinstance(value, bool):
            raise InputError(key, "must be true or false")
        if expected is str and not isinstance(value, str):
            raise InputError(key, "must be a string")
        if expected is list and not isinstance(value, list):
            raise InputError(key, "must be a list")
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(key, "must be an integer")
    return body


def read_names(body: Mapping[str, Any], field_name: str) -> list[str] | None:
    """A de-duplicated, non-empty list of non-empty strings (account ids, credential names) or None."""
    names = body.get(field_name)
    if names is None:
        return None
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(field_name, "must be a non-empty list of non-empty strings")
    return list(dict.fromkeys(n.strip() for n in names))


def parse_body(raw: bytes, *, now: datetime, extra_fields: Mapping[str, type] | None = None) -> SyncRequest:
    """Validate a platform function's request body; any problem raises InputError naming the field.

    "Future" means after today in the earliest timezone on Earth (UTC+14); a missing ``end_date`` means
    yesterday (UTC).
    """
    today_max = (now + _MAX_UTC_OFFSET).date()
    body = read_body(raw, {**BASE_FIELDS, **(extra_fields or {})})
    accounts = read_names(body, "accounts")
    window = None
    start_raw, end_raw = body.get("start_date"), body.get("end_date")
    if start_raw is not None or end_raw is not None:
        if start_raw is None:
            raise InputError("start_date", "is required when end_date is given")
        start = parse_date(start_raw, "start_date")
        end = parse_date(end_raw, "end_date") if end_raw is not None else now.date() - timedelta(days=1)
        if start > today_max:
            raise InputError("start_date", f"{start} is in the future")
        if end > today_max:
            raise InputError("end_date", f"{end} is in the future")
        if start > end:
            raise InputError("start_date", f"start_date {start} is after end_date {end}")
        window = DateRange(start, end)
    options = {k: v for k, v in body.items() if k not in BASE_FIELDS}
    return SyncRequest(accounts=accounts, window=window, dry_run=bool(body.get("dry_run", False)), options=options)


def trigger_of(headers: Mapping[str, str]) -> str:
    ua = headers.get("User-Agent", "") or ""
    if ua.startswith("Google-Cloud-Scheduler") or headers.get("X-CloudScheduler"):
        return "scheduler"
    if headers.get("X-SDE-Trigger") == "cli":
        return "cli"
    return "manual"


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def serve_http(request: Any, function: str,
               handle: Callable[[str, str], tuple[dict[str, Any], int]]) -> tuple[dict[str, Any], int]:
    """The HTTP boundary of every function: run id, trigger, log context, method check, and the one
    place where errors become responses (InputError -> 400 naming the field, other SDEError -> 500).

    ``handle(run_id, trigger)`` does the work and returns (JSON body, HTTP status).
    """
    run_id = request.headers.get("Function-Execution-Id") or uuid.uuid4().hex
    trigger = trigger_of(request.headers)
    with log_context(run_id=run_id, function=function, trigger=trigger):
        if request.method not in ("POST", "GET"):
            return {"error": "method_not_allowed", "message": "use POST"}, 405
        try:
            return handle(run_id, trigger)
        except InputError as exc:
            logger.warning("rejected request: %s", exc)
            return exc.to_json(), 400
        except SDEError as exc:
            logger.error("cannot start run: %s", exc)
            return {"run_id": run_id, "error": exc.error_class, "message": redact(str(exc))}, 500


def run_http(
    request: Any,
    *,
    function: str,
    platforms: Sequence[str],
    sync_account: SyncAccount,
    extra_fields: Mapping[str, type] | None = None,
    config: Config | None = None,
    plan_run: PlanRun | None = None,
) -> tuple[dict[str, Any], int]:
    """Entry point behind every platform function: returns (JSON body, HTTP status).

    ``plan_run(ctx, accounts)``, when given, runs once after the accounts are selected and before the
    first sync; its result (account id -> allocation) is ``ctx.allocations``. A planner failure is logged
    and the run goes on without allocations (each sync then plans for itself).
    """

    def handle(run_id: str, trigger: str) -> tuple[dict[str, Any], int]:
        cfg = config or Config.from_env()
        set_level(cfg.log_level)
        now = cfg.now()
        sync = parse_body(request.get_data(cache=True) or b"", now=now, extra_fields=extra_fields)
        ctx = RunContext(
            run_id=run_id, function=function, trigger=trigger, config=cfg, now=now, request=sync,
            deadline=time.monotonic() + cfg.run_deadline_seconds,
            schedule_time=request.headers.get("X-CloudScheduler-ScheduleTime"),
        )
        try:
            return _run(ctx, platforms, sync_account, plan_run)
        finally:
            ctx.close()

    return serve_http(request, function, handle)


def _run(ctx: RunContext, platforms: Sequence[str], sync_account: SyncAccount,
         plan_run: PlanRun | None = None) -> tuple[dict[str, Any], int]:
    accounts = _select_accounts(ctx, platforms)
    logger.info("run started: %d account(s)", len(accounts),
                extra={"fields": {"accounts": len(accounts), "dry_run": ctx.dry_run}})
    if plan_run is not None and accounts:
        _plan(ctx, accounts, plan_run)
    results: list[tuple[Account, AccountResult]] = []
    for i, account in enumerate(accounts, 1):
        with log_context(platform=account.platform, account=account.account_id):
            result = _sync_one(ctx, account, sync_account)
            results.append((account, result))
            _log_result(account, result, i, len(accounts))
            if not ctx.dry_run:
                _record(ctx, account, result)
    body = _summary(ctx, results)
    status = 500 if any(r.status == "failed" and r.retriable for _, r in results) else 200
    logger.info("run finished: %s", body["status"], extra={"fields": {"totals": body["totals"]}})
    return body, status


def _plan(ctx: RunContext, accounts: list[Account], plan_run: PlanRun) -> None:
    try:
        ctx.allocations = dict(plan_run(ctx, accounts) or {})
    except (SDEError, DriverError, ConnectionError) as exc:
        logger.warning("run planning failed, each account plans for itself: %s", redact(str(exc)))
        ctx.allocations = {}
        ctx.reset_connection()
        return
    logger.info("run planned: %d allocation(s)", len(ctx.allocations),
                extra={"fields": {"allocations": ctx.allocations}})


def mirror_registry(conn: Any, config: Config, registry: list[Account] | None = None) -> None:
    """Copy the registry file (when there is one) into ``social.accounts``; idempotent."""
    if registry is None:
        if not config.accounts_file.exists():
            return
        registry = load_registry(config.accounts_file, default_timezone=config.default_timezone)
    with db.transaction(conn):
        sync_registry(conn, registry)


def _select_accounts(ctx: RunContext, platforms: Sequence[str]) -> list[Account]:
    cfg = ctx.config
    wanted = ctx.request.accounts
    if cfg.accounts_file.exists():
        registry = load_registry(cfg.accounts_file, default_timezone=cfg.default_timezone)
        if wanted is not None:  # validate before mirroring the registry: a bad request writes nothing
            listed = {a.account_id for a in registry if a.platform in platforms and a.active}
            unknown = [a for a in wanted if a not in listed]
            if unknown:
                raise InputError("accounts", f"unknown or inactive account(s) for {'/'.join(platforms)}: "
                                             f"{', '.join(unknown)}")
        mirror_registry(ctx.conn, cfg, registry)
    accounts = [a for p in platforms for a in active_accounts(ctx.conn, p)]
    if wanted is None:
        return accounts
    known = {a.account_id: a for a in accounts}
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise InputError("accounts", f"unknown or inactive account(s) for {'/'.join(platforms)}: {', '.join(unknown)}")
    return [known[a] for a in wanted]


def _sync_one(ctx: RunContext, account: Account, sync_account: SyncAccount) -> AccountResult:
    started = time.monotonic()
    # the run's clock (honours NOW_OVERRIDE, so quota days line up with the run's "today")
    started_at = ctx.now + timedelta(seconds=started - ctx.started)
    if started > ctx.deadline:
        return AccountResult(status="deferred", error_class="deadline", started_at=started_at,
                             error_message="run deadline reached before this account started")
    try:
        result = sync_account(ctx, account)
    except QuotaExceededError as exc:
        result = _from_partial(exc, AccountResult(status="deferred", error_class=exc.error_class,
                                                  error_message=redact(str(exc))))
    except SDEError as exc:
        result = _from_partial(exc, AccountResult(status="failed", error_class=exc.error_class,
                                                  error_message=redact(str(exc)), retriable=exc.retriable))
        if isinstance(exc, LoadError):
            ctx.reset_connection()
    except (DriverError, ConnectionError) as exc:
        # a raw pg8000 InterfaceError/DatabaseError, or the socket error pg8000 lets through when the
        # server drops the connection (builtin ConnectionError; requests' errors are not among them)
        load = LoadError(f"database error: {type(exc).__name__}: {exc}")
        result = _from_partial(exc, AccountResult(status="failed", error_class=load.error_class,
                                                  error_message=redact(str(load)), retriable=True))
        logger.error("database error during the sync: %s", redact(str(load)))
        ctx.reset_connection()
    except Exception as exc:  # a bug in one account must not stop the others
        logger.error("unexpected error: %s", exc, extra={"fields": {"stack_trace": traceback.format_exc()}})
        result = AccountResult(status="failed", error_class="internal",
                               error_message=redact(f"{type(exc).__name__}: {exc}"))
        ctx.reset_connection()
    result.seconds = round(time.monotonic() - started, 3)
    result.started_at = started_at
    return result


def _from_partial(exc: BaseException, result: AccountResult) -> AccountResult:
    """Keep the API calls/quota units a failed sync spent (``exc.partial_result``): quota is spent anyway
    and the daily-budget check sums the ledger. Rows are not kept: the failed transaction rolled back."""
    partial = getattr(exc, "partial_result", None)
    if isinstance(partial, AccountResult):
        result.api_calls, result.quota_units = partial.api_calls, partial.quota_units
        result.window_start, result.window_end = partial.window_start, partial.window_end
        result.details = {k: v for k, v in partial.details.items() if k != "rows"}
    return result


def _log_result(account: Account, r: AccountResult, i: int, n: int) -> None:
    level = logging.INFO if r.status in ("ok", "skipped") else logging.WARNING
    logger.log(level, "account %d/%d %s %s: %s", i, n, account.platform, account.name, r.status,
               extra={"fields": _result_json(account, r)})


def _record(ctx: RunContext, account: Account, r: AccountResult) -> None:
    try:
        record_row(
            ctx.conn, run_id=ctx.run_id, function=ctx.function, platform=account.platform,
            account_id=account.account_id, trigger=ctx.trigger, started_at=r.started_at or ctx.now,
            status=r.status, window_start=r.window_start, window_end=r.window_end, api_calls=r.api_calls,
            quota_units=r.quota_units, rows_inserted=r.rows_inserted, rows_updated=r.rows_updated,
            rows_unchanged=r.rows_unchanged, error_class=r.error_class, error_message=r.error_message,
            details={**r.details, "schedule_time": ctx.schedule_time},
            # the run's clock (NOW_OVERRIDE in tests and replays): finished_at never precedes started_at
            finished_at=(r.started_at or ctx.now) + timedelta(seconds=r.seconds),
        )
    except SDEError as exc:
        logger.error("could not record the run ledger row: %s", exc)
        ctx.reset_connection()


def record_row(conn: Any, *, run_id: str, function: str, platform: str, account_id: str, trigger: str,
               started_at: datetime, status: str, outcome: str | None = None, window_start: date | None = None,
               window_end: date | None = None, api_calls: int = 0, quota_units: int = 0, rows_inserted: int = 0,
               rows_updated: int = 0, rows_unchanged: int = 0, error_class: str | None = None,
               error_message: str | None = None, details: Mapping[str, Any] | None = None,
               finished_at: datetime | None = None) -> None:
    """One ``social.sync_runs`` row per (run, function, platform, account), in its own transaction so
    that failures are recorded too. A retry of the same run id updates the row. ``finished_at`` defaults
    to the database clock; pass it when ``started_at`` comes from the run's own (overridable) clock."""
    with db.transaction(conn):
        conn.run(
            "INSERT INTO social.sync_runs (run_id, function, platform, account_id, trigger, window_start,"
            " window_end, started_at, finished_at, status, outcome, api_calls, quota_units, rows_inserted,"
            " rows_updated, rows_unchanged, error_class, error_message, details)"
            " VALUES (:run_id, :function, :platform, :account_id, :trigger, :ws, :we,"
            " :started_at, COALESCE(CAST(:finished_at AS timestamptz), clock_timestamp()), :status, :outcome,"
            " :calls, :units, :ins, :upd, :unch, :ecls, :emsg, CAST(:details AS jsonb))"
            " ON CONFLICT (run_id, function, platform, account_id) DO UPDATE SET"
            " status = EXCLUDED.status, outcome = EXCLUDED.outcome, finished_at = EXCLUDED.finished_at,"
            " api_calls = EXCLUDED.api_calls, quota_units = EXCLUDED.quota_units,"
            " rows_inserted = EXCLUDED.rows_inserted, rows_updated = EXCLUDED.rows_updated,"
            " rows_unchanged = EXCLUDED.rows_unchanged, details = EXCLUDED.details,"
            " error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message",
            run_id=run_id, function=function, platform=platform, account_id=account_id, trigger=trigger,
            ws=window_start, we=window_end, started_at=started_at, finished_at=finished_at, status=status,
            outcome=outcome,
            calls=api_calls, units=quota_units, ins=rows_inserted, upd=rows_updated, unch=rows_unchanged,
            ecls=error_class, emsg=redact(error_message or "")[:2000] or None,
            details=json.dumps(dict(details or {}), default=str),
        )


def _result_json(account: Account, r: AccountResult) -> dict[str, Any]:
    d = asdict(r)
    d.pop("retriable")
    for k in ("window_start", "window_end", "started_at"):
        d[k] = d[k].isoformat() if d[k] else None
    return {"platform": account.platform, "account_id": account.account_id, "name": account.name,
            "brand": account.brand, **d}


def _summary(ctx: RunContext, results: list[tuple[Account, AccountResult]]) -> dict[str, Any]:
    totals = {k: sum(getattr(r, k) for _, r in results)
              for k in ("api_calls", "quota_units", "rows_inserted", "rows_updated", "rows_unchanged")}
    counts: dict[str, int] = {}
    for _, r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    totals.update({f"accounts_{k}": v for k, v in sorted(counts.items())})
    failed = counts.get("failed", 0)
    status = "ok" if not failed else ("failed" if failed == len(results) else "partial")
    return {
        "run_id": ctx.run_id, "function": ctx.function, "trigger": ctx.trigger, "status": status,
        "dry_run": ctx.dry_run, "now": ctx.now.isoformat(),
        "window": ({"start_date": ctx.request.window.start.isoformat(), "end_date": ctx.request.window.end.isoformat()}
                   if ctx.request.window else None),
        "accounts": [_result_json(a, r) for a, r in results], "totals": totals,
    }
