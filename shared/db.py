"""The database layer: connect, migrate, quote identifiers, transactions and the bulk upsert.

Why it looks like this (measurements in ``../shared/docs/postgres-load.md`` and ``BENCHMARKS.md``):
pg8000's convenient paths (``executemany``, multi-row VALUES) top out at 2k-20k rows/s, while a binary
``COPY ... FROM STDIN`` into a TEMP stage followed by ONE set-based ``INSERT ... SELECT ... ON CONFLICT``
is bounded only by the server-side merge. So ``upsert`` streams rows through a small ``struct``
encoder in ~1 MB chunks (memory stays flat), dedupes the stage by key (last row wins) and merges with
an ``IS DISTINCT FROM`` guard so an unchanged re-run writes nothing.

Every SQL value is a parameter or COPY data; every identifier goes through :func:`quote_ident`.
Driver errors surface as :class:`shared.errors.LoadError` raised ``from`` the driver error, with the
server's SQLSTATE and message but never the row detail (rows may carry secrets) or a password.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import itertools
import json
import logging
import operator
import queue
import re
import ssl
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import pg8000.native
from pg8000.exceptions import DatabaseError
from pg8000.exceptions import Error as DriverError

from shared.config import Config
from shared.errors import ConfigError, LoadError

__all__ = [
    "MIGRATIONS_DIR",
    "UpsertResult",
    "connect",
    "embedded_url",
    "migrate",
    "parse_database_url",
    "quote_ident",
    "transaction",
    "upsert",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_lock key that serializes migrations across processes ("SDE_MIGR" in ASCII).
MIGRATION_LOCK_KEY = 0x5344455F4D494752
APPLICATION_NAME = "social-data-engine"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MAX_IDENT_BYTES = 63  # PostgreSQL NAMEDATALEN - 1; longer names are silently truncated by the server

# ------------------------------------------------------------------------------------------------
# Identifiers and errors
# ------------------------------------------------------------------------------------------------


def quote_ident(name: str, *, qualified: bool = True) -> str:
    """THE identifier quoting function: ``social.posts`` -> ``"social"."posts"``, quotes doubled.

    With ``qualified=False`` the whole string is one identifier (dots included), as for column names.
    Rejects empty names or parts, NUL, more than 3 parts and parts over 63 bytes (the server would
    silently truncate them, which could alias two names).
    """
    if not isinstance(name, str) or name == "":
        raise ValueError(f"identifier must be a non-empty string, got {name!r}")
    parts = name.split(".") if qualified else [name]
    if len(parts) > 3:
        raise ValueError(f"identifier has more than 3 dotted parts: {name!r}")
    quoted = []
    for part in parts:
        if part == "":
            raise ValueError(f"identifier has an empty part: {name!r}")
        if "\x00" in part:
            raise ValueError("identifier contains a NUL character")
        if len(part.encode("utf-8")) > _MAX_IDENT_BYTES:
            raise ValueError(f"identifier part longer than {_MAX_IDENT_BYTES} bytes: {part[:20]!r}...")
        quoted.append('"' + part.replace('"', '""') + '"')
    return ".".join(quoted)


def _describe(exc: BaseException) -> str:
    """SQLSTATE + message of a driver error; never the DETAIL (it echoes row values)."""
    if exc.args and isinstance(exc.args[0], Mapping):
        fields = exc.args[0]
        code, msg = fields.get("C", ""), fields.get("M", "")
        return f"{code} {msg}".strip() or type(exc).__name__
    return str(exc) or type(exc).__name__


def _load_error(action: str, exc: BaseException) -> LoadError:
    err = LoadError(f"{action}: {_describe(exc)}")
    if exc.args and isinstance(exc.args[0], Mapping):
        err.sqlstate = exc.args[0].get("C")  # type: ignore[attr-defined]
    return err


# ------------------------------------------------------------------------------------------------
# Connecting
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnParams:
    """A parsed PostgreSQL URL. ``safe_target`` is loggable (no password)."""

    user: str
    password: str | None
    host: str
    port: int
    database: str
    unix_sock: str | None
    sslmode: str
    application_name: str

    @property
    def safe_target(self) -> str:
        where = self.unix_sock or f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def parse_database_url(url: str, *, default_database: str = "postgres") -> ConnParams:
    """Parse ``postgresql://user:pw@host:port/db?sslmode=..&host=/socket/dir`` (libpq URL subset).

    A host starting with ``/`` (in the authority, percent-encoded, or as ``?host=``) is a unix-socket
    directory: the socket is ``<dir>/.s.PGSQL.<port>``. Errors name the problem, never the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ConfigError("DATABASE_URL: expected a postgresql:// URL")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        userinfo, hostport = "", authority
    user_raw, colon, password_raw = userinfo.partition(":")
    user = unquote(user_raw) or "postgres"
    password = unquote(password_raw) if colon and password_raw else None
    if hostport.startswith("["):  # [ipv6]:port
        host, _, port_raw = hostport[1:].partition("]")
        port_raw = port_raw.lstrip(":")
    else:
        host, _, port_raw = hostport.partition(":")
    host = unquote(host)
    database = unquote(path) or default_database
    params = dict(parse_qsl(query, keep_blank_values=True))
    host = params.pop("host", host) or host
    port_raw = params.pop("port", port_raw)
    user = params.pop("user", user)
    if "password" in params:
        password = params.pop("password") or None
    database = params.pop("dbname", database)
    sslmode = params.pop("sslmode", "prefer")
    application_name = params.pop("application_name", APPLICATION_NAME)
    if sslmode not in _SSLMODES:
        raise ConfigError(f"DATABASE_URL: sslmode must be one of {', '.join(_SSLMODES)}, got {sslmode!r}")
    try:
        port = int(port_raw) if port_raw else 5432
    except ValueError:
        raise ConfigError(f"DATABASE_URL: port must be an integer, got {port_raw!r}") from None
    unix_sock = f"{host.rstrip('/')}/.s.PGSQL.{port}" if host.startswith("/") else None
    if not host:
        raise ConfigError("DATABASE_URL: no host (give host:port or ?host=/socket/dir)")
    return ConnParams(user, password, host, port, database, unix_sock, sslmode, application_name)


def _ssl_context(sslmode: str) -> ssl.SSLContext | None:
    """libpq sslmode -> ssl context. pg8000 cannot negotiate, so allow/prefer mean no TLS."""
    if sslmode in ("disable", "allow", "prefer"):
        return None
    ctx = ssl.create_default_context()
    if sslmode == "require":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif sslmode == "verify-ca":
        ctx.check_hostname = False
    return ctx


def _connect_url(params: ConnParams) -> pg8000.native.Connection:
    return pg8000.native.Connection(
        params.user,
        host=params.host if params.unix_sock is None else "localhost",
        port=params.port,
        database=params.database,
        password=params.password,
        unix_sock=params.unix_sock,
        ssl_context=None if params.unix_sock else _ssl_context(params.sslmode),
        application_name=params.application_name,
        startup_params={"TimeZone": "UTC"},
    )


_connector: Any = None
_connector_lock = threading.Lock()


def _is_iam_user(user: str | None) -> bool:
    """Cloud SQL IAM database users are emails (``sa@project.iam``, ``someone@example.com``)."""
    return bool(user) and "@" in str(user)


def _cloudsql_connect(instance: str, user: str, database: str, iam: bool) -> pg8000.native.Connection:
    """Connect through the Cloud SQL Python Connector (lazy refresh: right for serverless)."""
    global _connector
    from google.cloud.sql.connector import Connector  # runtime dependency, imported only when used

    with _connector_lock:
        if _connector is None:
            _connector = Connector(refresh_strategy="LAZY")
    dbapi_conn = _connector.connect(instance, "pg8000", user=user, db=database, enable_iam_auth=iam)
    # The connector only speaks pg8000.dbapi; the native API is a sibling subclass of the same
    # CoreConnection (same socket and protocol state), and dbapi sends nothing until a cursor is used.
    dbapi_conn.__class__ = pg8000.native.Connection
    dbapi_conn._context = None
    dbapi_conn.run("SET TIME ZONE 'UTC'")
    return dbapi_conn


def embedded_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir/pg`` and return its admin URL.

    The server outlives this process (``cleanup_mode=None``) so later processes reuse it; pgserver moves
    the unix socket to a short runtime directory when ``data_dir`` is too deep for the 107-byte limit.
    """
    try:
        import pgserver  # dev dependency: laptops, tests and benchmarks only
    except ImportError as exc:
        raise ConfigError(
            "DATABASE_URL/INSTANCE_CONNECTION_NAME: not set, and the embedded PostgreSQL needs the "
            "dev dependency pgserver (pip install -r requirements-dev.txt)"
        ) from exc
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(data_dir / "pg", cleanup_mode=None)
        return server.get_uri()
    except Exception as exc:  # pgserver raises CalledProcessError, RuntimeError, AssertionError...
        raise LoadError(f"cannot start the embedded PostgreSQL under {data_dir / 'pg'}: {exc}") from exc


_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def connect(config: Config) -> pg8000.native.Connection:
    """Open a native pg8000 connection and make sure the schema is migrated (once per process per DB).

    DATABASE_URL wins; else INSTANCE_CONNECTION_NAME (Cloud SQL connector, IAM auth for email users);
    else the embedded pgserver under ``config.data_dir / "pg"``. Sessions run in UTC.
    """
    if config.database_url:
        params = parse_database_url(config.database_url, default_database=config.db_name)
        target = params.safe_target
        opener: Callable[[], pg8000.native.Connection] = lambda: _connect_url(params)  # noqa: E731
    elif config.instance_connection_name:
        config.require("db_user")
        instance, user = config.instance_connection_name, str(config.db_user)
        target = f"cloudsql:{instance}/{config.db_name}"

        def opener() -> pg8000.native.Connection:
            return _cloudsql_connect(instance, user, config.db_name, _is_iam_user(user))
    else:
        params = parse_database_url(embedded_url(config.data_dir))
        if config.db_name != params.database:
            _ensure_database(params, config.db_name)
            params = ConnParams(**{**params.__dict__, "database": config.db_name})
        target = params.safe_target
        opener = lambda: _connect_url(params)  # noqa: E731
    try:
        conn = opener()
    except (DriverError, OSError, ssl.SSLError) as exc:
        raise _load_error(f"cannot connect to {target}", exc) from exc
    except Exception as exc:  # connector errors (auth, API): keep the type in the message
        raise LoadError(f"cannot connect to {target}: {type(exc).__name__}: {exc}") from exc
    if target not in _migrated:
        with _migrated_lock:
            try:
                migrate(conn)
            except BaseException:
                conn.close()
                raise
            _migrated.add(target)
    return conn


def _ensure_database(admin: ConnParams, name: str) -> None:
    """Create ``name`` on the embedded server if it is missing (the embedded server starts empty)."""
    conn = _connect_url(admin)
    try:
        if not conn.run("SELECT 1 FROM pg_database WHERE datname = :n", n=name):
            try:
                conn.run(f"CREATE DATABASE {quote_ident(name, qualified=False)}")
            except DatabaseError as exc:  # lost a creation race with another process
                if _describe(exc).split()[0] != "42P04":
                    raise
    except DriverError as exc:
        raise _load_error(f"cannot create database {name!r}", exc) from exc
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------
# Transactions
# ------------------------------------------------------------------------------------------------

_IDLE, _IN_TX, _FAILED_TX = b"I", b"T", b"E"
_savepoint_ids = itertools.count(1)


def _tx_status(conn: pg8000.native.Connection) -> bytes | None:
    """The server-reported transaction state from the last ReadyForQuery (I / T / E)."""
    return getattr(conn, "_transaction_status", None)


#: what a dropped connection can raise: pg8000 errors, or a plain socket error that pg8000 lets through
_CONNECTION_ERRORS = (DriverError, ConnectionError)


@contextmanager
def transaction(conn: pg8000.native.Connection) -> Iterator[pg8000.native.Connection]:
    """BEGIN ... COMMIT, ROLLBACK on any error; nested use becomes a SAVEPOINT.

    Driver errors are re-raised as LoadError ``from`` the driver error; other exceptions (and a
    LoadError from an inner block) pass through unchanged after the rollback.
    """
    status = _tx_status(conn)
    if status == _FAILED_TX:
        raise LoadError("transaction: the connection is inside a failed transaction; roll it back first")
    nested = status == _IN_TX
    sp = f"sde_sp_{next(_savepoint_ids)}" if nested else ""
    try:
        conn.run(f"SAVEPOINT {sp}" if nested else "BEGIN")
    except _CONNECTION_ERRORS as exc:
        raise _load_error("transaction: cannot start", exc) from exc
    try:
        yield conn
    except BaseException as exc:
        try:
            if nested:
                conn.run(f"ROLLBACK TO SAVEPOINT {sp}")
                conn.run(f"RELEASE SAVEPOINT {sp}")
            else:
                conn.run("ROLLBACK")
        except (DriverError, OSError):
            log.warning("rollback failed after %s; the connection is unusable", type(exc).__name__)
        if isinstance(exc, _CONNECTION_ERRORS):
            raise _load_error("transaction rolled back", exc) from exc
        raise
    try:
        conn.run(f"RELEASE SAVEPOINT {sp}" if nested else "COMMIT")
    except _CONNECTION_ERRORS as exc:
        raise _load_error("transaction: commit failed", exc) from exc


# ------------------------------------------------------------------------------------------------
# Migrations
# ------------------------------------------------------------------------------------------------


def _migration_files(directory: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    numbers: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise ConfigError(f"migration file name must look like NNNN_name.sql: {path.name}")
        if m.group(1) in numbers:
            raise ConfigError(f"two migrations share number {m.group(1)}: {numbers[m.group(1)]}, {path.name}")
        numbers[m.group(1)] = path.name
        files.append((path.stem, path))
    return files


def _applied_versions(conn: pg8000.native.Connection) -> dict[str, str | None] | None:
    if conn.run("SELECT to_regclass('social.schema_migrations') IS NOT NULL")[0][0] is not True:
        return None
    return {v: c for v, c in conn.run("SELECT version, checksum FROM social.schema_migrations")}


def migrate(conn: pg8000.native.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending ``NNNN_name.sql`` files in name order; return the versions applied by this call.

    Each file runs in its own transaction together with its row in ``social.schema_migrations``, all
    under ``pg_advisory_lock(MIGRATION_LOCK_KEY)`` so processes that cold-start together apply each
    file exactly once. Call it outside a transaction. Files must not contain BEGIN/COMMIT or
    statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY).
    """
    files = _migration_files(directory or MIGRATIONS_DIR)
    checksums = {v: hashlib.sha256(p.read_bytes()).hexdigest() for v, p in files}
    try:
        applied = _applied_versions(conn)
        if applied is not None and all(v in applied for v, _ in files):
            _warn_changed(applied, checksums)
            return []
        conn.run("SELECT pg_advisory_lock(:k)", k=MIGRATION_LOCK_KEY)
        try:
            conn.run(
                "CREATE SCHEMA IF NOT EXISTS social;"
                "CREATE TABLE IF NOT EXISTS social.schema_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now(),"
                " checksum text)"
            )
            applied = _applied_versions(conn) or {}
            done: list[str] = []
            for version, path in files:
                if version in applied:
                    continue
                log.info("applying migration %s", version)
                with transaction(conn):
                    conn.run(path.read_text(encoding="utf-8"))
                    conn.run(
                        "INSERT INTO social.schema_migrations (version, checksum) VALUES (:v, :c)",
                        v=version,
                        c=checksums[version],
                    )
                done.append(version)
            _warn_changed(applied, checksums)
            return done
        finally:
            if _tx_status(conn) == _IDLE:
                conn.run("SELECT pg_advisory_unlock(:k)", k=MIGRATION_LOCK_KEY)
    except LoadError as exc:
        raise LoadError(f"migration failed: {exc}") from exc.__cause__
    except DriverError as exc:
        raise _load_error("migration failed", exc) from exc


def _warn_changed(applied: Mapping[str, str | None], checksums: Mapping[str, str]) -> None:
    for version, checksum in checksums.items():
        if applied.get(version) not in (None, checksum):
            log.warning("migration %s was edited after it was applied; add a new migration instead", version)


# ------------------------------------------------------------------------------------------------
# Binary COPY encoder
# ------------------------------------------------------------------------------------------------

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
#: A tuple header no table can match: sent to make the server abort the COPY cleanly when the
#: client-side encoder fails mid-stream (pg8000 has no CopyFail for iterables).
_POISON = b"\x7f\xff"
_CHUNK_BYTES = 1 << 20

_pack_i = struct.Struct(">i").pack
_pack_len_h = struct.Struct(">ih").pack
_pack_len_i = struct.Struct(">ii").pack
_pack_len_q = struct.Struct(">iq").pack
_pack_len_f = struct.Struct(">if").pack
_pack_len_d = struct.Struct(">id").pack
_pack_len_b = struct.Struct(">ib").pack
_PG_EPOCH_DATE_ORD = dt.date(2000, 1, 1).toordinal()
_PG_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_PG_EPOCH_NAIVE = dt.datetime(2000, 1, 1)


def _text(v: Any) -> bytes:
    if v.__class__ is not str:
        if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
            v = str(v)
        else:
            raise TypeError(f"expected str, got {type(v).__name__}")
    if "\x00" in v:
        v = v.replace("\x00", "")
    b = v.encode("utf-8")
    return _pack_i(len(b)) + b


def _as_int(v: Any) -> int:
    if v.__class__ is int:
        return v
    if isinstance(v, bool):
        raise TypeError("expected an integer, got bool")
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float | decimal.Decimal) and v == int(v):
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    raise TypeError(f"expected an integer, got {type(v).__name__} {v!r}")


def _int2(v: Any) -> bytes:
    return _pack_len_h(2, v if v.__class__ is int else _as_int(v))


def _int4(v: Any) -> bytes:
    return _pack_len_i(4, v if v.__class__ is int else _as_int(v))


def _int8(v: Any) -> bytes:
    return _pack_len_q(8, v if v.__class__ is int else _as_int(v))


def _float4(v: Any) -> bytes:
    if isinstance(v, bool):
        raise TypeError("expected a number, got bool")
    return _pack_len_f(4, float(v))


def _float8(v: Any) -> bytes:
    if isinstance(v, bool):
        raise TypeError("expected a number, got bool")
    return _pack_len_d(8, float(v))


def _bool(v: Any) -> bytes:
    if v is True or v is False or (isinstance(v, int) and v in (0, 1)):
        return _pack_len_b(1, int(v))
    raise TypeError(f"expected bool, got {type(v).__name__} {v!r}")


def _date(v: Any) -> bytes:
    if v.__class__ is not dt.date:
        if isinstance(v, dt.datetime):
            raise TypeError("expected a date, got a datetime (convert it in the account's timezone)")
        if isinstance(v, str):
            v = dt.date.fromisoformat(v)
        elif not isinstance(v, dt.date):
            raise TypeError(f"expected a date, got {type(v).__name__}")
    return _pack_len_i(4, v.toordinal() - _PG_EPOCH_DATE_ORD)


def _timestamptz(v: Any) -> bytes:
    if isinstance(v, str):
        v = dt.datetime.fromisoformat(v)
    if not isinstance(v, dt.datetime):
        raise TypeError(f"expected an aware datetime, got {type(v).__name__}")
    if v.tzinfo is None or v.utcoffset() is None:
        raise ValueError("naive datetime for a timestamptz column: attach a timezone")
    d = v - _PG_EPOCH_TZ
    return _pack_len_q(8, (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds)


def _timestamp(v: Any) -> bytes:
    if isinstance(v, str):
        v = dt.datetime.fromisoformat(v)
    if not isinstance(v, dt.datetime):
        raise TypeError(f"expected a naive datetime, got {type(v).__name__}")
    if v.tzinfo is not None:
        raise ValueError("aware datetime for a timestamp-without-time-zone column")
    d = v - _PG_EPOCH_NAIVE
    return _pack_len_q(8, (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds)


def _json_default(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, set | frozenset | tuple):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _strip_nul(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.replace("\x00", "")
    if isinstance(obj, Mapping):
        return {_strip_nul(k): _strip_nul(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strip_nul(x) for x in obj]
    return obj


_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
).encode


def _json_text(v: Any) -> str:
    """JSON text for a json/jsonb column. A str is taken as JSON text already (validated here)."""
    if isinstance(v, str | bytes):
        text = v.decode("utf-8") if isinstance(v, bytes) else v
        if "\\u0000" in text or "\x00" in text:
            text = _dumps(_strip_nul(json.loads(text.replace("\x00", ""))))
        return text
    text = _dumps(v)
    if "\\u0000" in text or "\x00" in text:  # jsonb refuses \u0000: strip NUL from every string
        text = _dumps(_strip_nul(v))
    return text


def _jsonb(v: Any) -> bytes:
    b = _json_text(v).encode("utf-8")
    return _pack_i(len(b) + 1) + b"\x01" + b


def _json(v: Any) -> bytes:
    b = _json_text(v).encode("utf-8")
    return _pack_i(len(b)) + b


def _bytea(v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(v).__name__}")
    b = bytes(v)
    return _pack_i(len(b)) + b


def _as_text(v: Any) -> bytes:
    """Text stage column for types cast in the merge (numeric, uuid, ...)."""
    if isinstance(v, bool):
        raise TypeError("expected a number or string, got bool")
    if isinstance(v, float):
        if v != v:
            raise ValueError("NaN is not a valid value here")
        s = repr(v)
    else:
        s = str(v)
    if "\x00" in s:
        s = s.replace("\x00", "")
    b = s.encode("utf-8")
    return _pack_i(len(b)) + b


#: base type name -> (stage column type or None for "same as target", encoder)
_ENCODERS: dict[str, tuple[str | None, Callable[[Any], bytes]]] = {
    "text": ("text", _text),
    "varchar": ("text", _text),
    "bpchar": ("text", _text),
    "name": ("text", _text),
    "int2": (None, _int2),
    "int4": (None, _int4),
    "int8": (None, _int8),
    "float4": (None, _float4),
    "float8": (None, _float8),
    "bool": (None, _bool),
    "date": (None, _date),
    "timestamptz": (None, _timestamptz),
    "timestamp": (None, _timestamp),
    "jsonb": ("jsonb", _jsonb),
    "json": ("text", _json),
    "bytea": ("bytea", _bytea),
}


# ------------------------------------------------------------------------------------------------
# Upsert
# ------------------------------------------------------------------------------------------------

#: Types without an equality operator, compared in the IS DISTINCT FROM guard through a cast.
_NO_EQUALITY = {"json": "jsonb"}


@dataclass(frozen=True)
class UpsertResult:
    """Rows of one upsert call: inserted + updated + unchanged == distinct keys sent."""

    inserted: int
    updated: int
    unchanged: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def __add__(self, other: UpsertResult) -> UpsertResult:
        return UpsertResult(
            self.inserted + other.inserted, self.updated + other.updated, self.unchanged + other.unchanged
        )


@dataclass(frozen=True)
class _Column:
    name: str
    sql_type: str  # format_type(): what the merge casts to
    base_type: str  # pg_type.typname of the (domain's) base type
    is_array: bool


_table_cache: weakref.WeakKeyDictionary[Any, dict[str, dict[str, _Column]]] = weakref.WeakKeyDictionary()

_CATALOG_SQL = """
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       b.typname,
       b.typcategory = 'A'
FROM pg_attribute AS a
JOIN pg_type AS t ON t.oid = a.atttypid
JOIN pg_type AS b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def _table_columns(conn: pg8000.native.Connection, table: str) -> dict[str, _Column]:
    """Target columns and types, read from the catalog once per (connection, table)."""
    per_conn = _table_cache.setdefault(conn, {})
    cols = per_conn.get(table)
    if cols is None:
        rows = conn.run(_CATALOG_SQL, table=quote_ident(table))
        if not rows:
            raise ValueError(f"upsert: table {table!r} does not exist")
        cols = {r[0]: _Column(r[0], r[1], r[2], bool(r[3])) for r in rows}
        per_conn[table] = cols
    return cols


#: Fixed-width types that ``struct`` packs directly: base type -> (struct code, byte length).
_FIXED = {"int2": ("h", 2), "int4": ("i", 4), "int8": ("q", 8), "float4": ("f", 4), "float8": ("d", 8)}


def _make_json_chunks() -> Callable[[Any], Any] | None:
    """The C JSON encoder built once (``json.dumps`` rebuilds it on every call: half of its cost)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    return make(None, _json_default, json.encoder.encode_basestring, None, ":", ",", False, False, False)


_json_chunks = _make_json_chunks()


def _compile_row_encoder(
    columns: Sequence[str], base_types: Sequence[str], encoders: Sequence[Callable[[Any], bytes]]
) -> Callable[[Mapping[str, Any], bytearray], None]:
    """Build ``encode_row(row, buf)`` for one column layout (the hot loop of a 1M-row upsert).

    Generated like ``collections.namedtuple`` does, because per-column function calls cost more than
    the encoding itself: the common case of each type (int, float, plain str, date, aware datetime,
    dict/list for jsonb) is inlined; everything else (NULL, coercions, NUL bytes, errors) goes
    through the per-column encoder. Column names never enter the source (one ``itemgetter``).
    """
    n = len(columns)
    ns: dict[str, Any] = {
        "NULL": _NULL, "P_i": _pack_i, "P_len_i": _pack_len_i, "P_len_q": _pack_len_q,
        "date": dt.date, "datetime": dt.datetime, "DATE_ORD": _PG_EPOCH_DATE_ORD,
        "EPOCH_TZ": _PG_EPOCH_TZ, "Decimal": decimal.Decimal, "J": _json_chunks,
        # itemgetter of one name returns the value itself, not a 1-tuple
        "GET": operator.itemgetter(*columns) if n > 1 else (lambda row, c=columns[0]: (row[c],)),
    }
    lines = ["def encode_row(row, buf):", f"    {', '.join(f'v{i}' for i in range(n))}, = GET(row)"]
    for i, (kind, enc) in enumerate(zip(base_types, encoders, strict=True)):
        ns[f"E{i}"] = enc
        v = f"v{i}"
        if kind in _FIXED:
            code, size = _FIXED[kind]
            ns[f"P{i}"] = struct.Struct(">i" + code).pack
            test = f"{v}.__class__ is int" if code in "hiq" else f"{v}.__class__ is float or {v}.__class__ is int"
            fast = [f"    if {test}:", f"        buf += P{i}({size}, {v})"]
        elif enc is _text:
            fast = [
                f"    if {v}.__class__ is str and '\\x00' not in {v}:",
                f"        b = {v}.encode()",
                "        buf += P_i(len(b))",
                "        buf += b",
            ]
        elif kind == "date":
            fast = [f"    if {v}.__class__ is date:", f"        buf += P_len_i(4, {v}.toordinal() - DATE_ORD)"]
        elif kind == "timestamptz":
            fast = [
                f"    if {v}.__class__ is datetime and {v}.tzinfo is not None:",
                f"        d = {v} - EPOCH_TZ",
                "        buf += P_len_q(8, (d.days * 86400 + d.seconds) * 1000000 + d.microseconds)",
            ]
        elif kind == "jsonb" and _json_chunks is not None:
            fast = [
                f"    if ({v}.__class__ is dict or {v}.__class__ is list) and"
                f" '\\\\u0000' not in (s := ''.join(J({v}, 0))):",
                "        b = s.encode()",
                "        buf += P_i(len(b) + 1)",
                "        buf += b'\\x01'",
                "        buf += b",
            ]
        elif kind not in _ENCODERS:  # text stage + cast (numeric, uuid, ...)
            fast = [
                f"    if {v}.__class__ is int or {v}.__class__ is Decimal or ({v}.__class__ is float and {v} == {v}):",
                f"        b = (repr({v}) if {v}.__class__ is float else str({v})).encode()",
                "        buf += P_i(len(b))",
                "        buf += b",
            ]
        else:
            fast = ["    if False:", "        pass"]
        lines += [*fast, f"    elif {v} is None:", "        buf += NULL", "    else:", f"        buf += E{i}({v})"]
    exec(compile("\n".join(lines), "<shared.db row encoder>", "exec"), ns)
    return ns["encode_row"]


class _Stream:
    """Iterable of ~1 MB binary-COPY chunks; records the row count or the encoder's error."""

    def __init__(self, first: Mapping[str, Any], rest: Iterator[Mapping[str, Any]],
                 columns: Sequence[str], base_types: Sequence[str],
                 encoders: Sequence[Callable[[Any], bytes]], table: str) -> None:
        self.first, self.rest, self.table = first, rest, table
        self.columns, self.encoders = list(columns), list(encoders)
        self.encode_row = _compile_row_encoder(columns, base_types, encoders)
        self.rows = 0
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks()
        except Exception as exc:  # make the server abort the COPY; upsert() re-raises this error
            self.error = exc
            yield _POISON

    def _chunks(self) -> Iterator[bytes]:
        n, encode_row = len(self.columns), self.encode_row
        row_head = struct.Struct(">hiq").pack
        nfields = n + 1
        buf = bytearray(_COPY_HEADER)
        ordinal = 0
        for row in itertools.chain((self.first,), self.rest):
            ordinal += 1
            mark = len(buf)
            try:
                if len(row) != n:
                    raise KeyError
                buf += row_head(nfields, 8, ordinal)
                encode_row(row, buf)
            except Exception as exc:
                del buf[mark:]
                raise self._diagnose(row, ordinal, exc) from exc
            if len(buf) >= _CHUNK_BYTES:
                yield bytes(buf)
                buf.clear()
        self.rows = ordinal
        buf += _COPY_TRAILER
        yield bytes(buf)

    def _diagnose(self, row: Any, ordinal: int, exc: Exception) -> ValueError:
        """Name the row and column the fast path choked on."""
        where = f"upsert into {self.table}: row {ordinal}"
        if not isinstance(row, Mapping):
            return ValueError(f"{where}: rows must be mappings, got {type(row).__name__}")
        if set(row) != set(self.columns):
            return ValueError(f"{where} has columns {sorted(row)}, expected the first row's {sorted(self.columns)}")
        for col, enc in zip(self.columns, self.encoders, strict=True):
            v = row[col]
            if v is None:
                continue
            try:
                enc(v)
            except Exception as col_exc:
                return ValueError(f"{where}, column {col!r}: {col_exc}")
        return ValueError(f"{where}: {type(exc).__name__}: {exc}")


def upsert(
    conn: pg8000.native.Connection,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    key: Sequence[str],
    *,
    bookkeeping: Sequence[str] = ("fetched_at", "first_seen_at", "last_seen_at", "created_at", "updated_at"),
    insert_only: Sequence[str] = ("first_seen_at",),
) -> UpsertResult:
    """Insert or update ``rows`` (dicts with the same keys) into ``table`` by ``key``; count the outcome.

    Binary COPY into a TEMP stage, dedupe by key (the last row wins), then one
    ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE ... WHERE (cols) IS DISTINCT FROM (EXCLUDED.cols)``.
    ``bookkeeping`` columns are written but not compared, so a re-run that only moves ``fetched_at`` is
    "unchanged" and writes nothing; ``insert_only`` columns are never overwritten. NUL is stripped from
    text and jsonb strings. Never commits the caller's transaction: inside one it works under a
    SAVEPOINT (a failure rolls back only this call), outside one it is a single atomic statement.
    Bad rows raise ValueError, database failures LoadError; either way the table is left as it was.
    """
    plan = _plan(conn, table, rows, key, bookkeeping, insert_only)
    if plan is None:
        return UpsertResult(0, 0, 0)
    with transaction(conn):
        _fill_stage(conn, plan)
        try:
            inserted, updated, distinct = conn.run(plan.merge_sql)[0]
            conn.run(plan.drop_sql)  # free the temp space now, not at the caller's COMMIT
        except DriverError as exc:
            raise _load_error(f"upsert into {table}: merge failed", exc) from exc
    return UpsertResult(inserted, updated, distinct - inserted - updated)


@dataclass
class _Plan:
    """The statements of one upsert call (also used by bench/upsert.py to time the merge alone)."""

    table: str
    create_sql: str
    copy_sql: str
    merge_sql: str
    drop_sql: str
    stream: _Stream


def _plan(
    conn: pg8000.native.Connection,
    table: str,
    rows: Iterable[Mapping[str, Any]],
    key: Sequence[str],
    bookkeeping: Sequence[str],
    insert_only: Sequence[str],
) -> _Plan | None:
    """Validate the first row against the catalog and build the SQL; None when there are no rows."""
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return None
    if not isinstance(first, Mapping):
        raise ValueError(f"upsert into {table}: rows must be mappings, got {type(first).__name__}")
    columns = list(first.keys())
    key = list(key)
    if not key:
        raise ValueError(f"upsert into {table}: key must name at least one column")
    missing_key = [k for k in key if k not in first]
    if missing_key:
        raise ValueError(f"upsert into {table}: key column(s) {missing_key} missing from the rows")
    try:
        table_cols = _table_columns(conn, table)
    except DriverError as exc:
        raise _load_error(f"upsert into {table}: cannot read the catalog", exc) from exc
    unknown = [c for c in columns if c not in table_cols]
    if unknown:
        raise ValueError(f"upsert into {table}: unknown column(s) {unknown}")
    cols = [table_cols[c] for c in columns]
    arrays = [c.name for c in cols if c.is_array]
    if arrays:
        raise ValueError(f"upsert into {table}: array columns are not supported: {arrays}")

    stage = "sde_stage_" + hashlib.sha1(f"{table}|{'|'.join(columns)}".encode()).hexdigest()[:16]
    q_stage = "pg_temp." + quote_ident(stage, qualified=False)
    stage_defs, selects, encoders = ['"_ord" bigint'], [], []
    for c in cols:
        stage_type, enc = _ENCODERS.get(c.base_type, ("text", _as_text))
        stage_type = stage_type or c.sql_type
        qc = quote_ident(c.name, qualified=False)
        stage_defs.append(f"{qc} {stage_type}")
        selects.append(qc if stage_type == c.sql_type else f"CAST({qc} AS {c.sql_type}) AS {qc}")
        encoders.append(enc)
    return _Plan(
        table=table,
        create_sql=(
            f"DROP TABLE IF EXISTS {q_stage}; "
            f"CREATE TEMP TABLE {quote_ident(stage, qualified=False)} ({', '.join(stage_defs)}) ON COMMIT DROP"
        ),
        copy_sql=(
            f"COPY {q_stage} (\"_ord\", {', '.join(quote_ident(c, qualified=False) for c in columns)}) "
            "FROM STDIN (FORMAT binary)"
        ),
        merge_sql=_merge_sql(table, columns, key, selects, q_stage, bookkeeping, insert_only,
                             no_equality={c.name for c in cols if c.base_type in _NO_EQUALITY}),
        drop_sql=f"DROP TABLE {q_stage}",
        stream=_Stream(first, iterator, columns, [c.base_type for c in cols], encoders, table),
    )


def _prefetched(chunks: Iterable[bytes], depth: int = 4) -> Iterator[bytes]:
    """Yield ``chunks`` while a thread encodes the next ones.

    Sending a chunk blocks in the socket with the GIL released (the server is busy ingesting the COPY),
    so encoding the next chunk meanwhile overlaps the two: the client's encoder and the server's COPY
    run on different cores instead of taking turns. At most ``depth`` chunks (~1 MB each) wait.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ready.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            ready.put(exc)
            return
        ready.put(done)

    worker = threading.Thread(target=produce, name="sde-copy-encoder", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)
        worker.join()


def _fill_stage(conn: pg8000.native.Connection, plan: _Plan) -> None:
    """(Re)create the TEMP stage and stream the rows into it with binary COPY."""
    stream = plan.stream
    try:
        conn.run(plan.create_sql)
        conn.run(plan.copy_sql, stream=_prefetched(stream))
    except DatabaseError as exc:
        if stream.error is not None:  # our encoder failed and poisoned the COPY: report its error
            raise stream.error from None
        raise _load_error(f"upsert into {plan.table}: COPY to the stage failed", exc) from exc
    except DriverError as exc:
        raise _load_error(f"upsert into {plan.table}: COPY to the stage failed", exc) from exc
    if stream.error is not None:  # the poison tuple always fails the COPY; this is a safety net
        raise stream.error


def _merge_sql(
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
    selects: Sequence[str],
    q_stage: str,
    bookkeeping: Sequence[str],
    insert_only: Sequence[str],
    no_equality: set[str] | frozenset[str] = frozenset(),
) -> str:
    """The one set-based statement: dedupe the stage, merge, count inserted/updated/distinct."""
    q = {c: quote_ident(c, qualified=False) for c in columns}
    no_eq_type = {c: ("json" if c in no_equality else "") for c in no_equality}
    keys = ", ".join(q[k] for k in key)
    cols = ", ".join(q[c] for c in columns)
    settable = [c for c in columns if c not in key and c not in insert_only]
    compared = [c for c in settable if c not in bookkeeping]
    if compared:
        sets = ", ".join(f"{q[c]} = EXCLUDED.{q[c]}" for c in settable)
        def side(alias: str) -> str:  # json/xml have no "=": compare them as jsonb/text
            return ", ".join(
                f"CAST({alias}.{q[c]} AS {_NO_EQUALITY[no_eq_type[c]]})" if c in no_eq_type else f"{alias}.{q[c]}"
                for c in compared
            )

        guard = f"({side('t')}) IS DISTINCT FROM ({side('EXCLUDED')})"
        action = f"DO UPDATE SET {sets} WHERE {guard}"
    else:  # nothing but key/bookkeeping columns: a conflicting row can never have changed
        action = "DO NOTHING"
    return (
        f"WITH src AS MATERIALIZED ("
        f"SELECT DISTINCT ON ({keys}) {', '.join(selects)} FROM {q_stage} ORDER BY {keys}, \"_ord\" DESC), "
        f"m AS (INSERT INTO {quote_ident(table)} AS t ({cols}) SELECT {cols} FROM src "
        f"ON CONFLICT ({keys}) {action} RETURNING (t.xmax = 0) AS ins) "
        "SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins), (SELECT count(*) FROM src) FROM m"
    )
