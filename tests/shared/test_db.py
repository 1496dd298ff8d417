"""shared.db against a real embedded PostgreSQL (fixtures in tests/fixtures/db.py). No mocks of the DB."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg8000.native
import pytest
from pg8000.exceptions import DatabaseError

from shared import db
from shared.config import REPO_ROOT, Config
from shared.errors import ConfigError, LoadError
from tests.fixtures.db import admin_connection, database_url_for

Conn = pg8000.native.Connection

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 20, 12, 0, 0, 123_456, tzinfo=UTC)
POST_KEY = ("platform", "post_id")
METRIC_KEY = ("platform", "post_id", "snapshot_date")


def post(i: int, **over: object) -> dict:
    row = {"platform": "tiktok", "post_id": f"7{i:018d}", "account_id": "acc1", "title": f"video {i}",
           "published_at": T0, "extra": {"i": i}, "last_seen_at": T0}
    row.update(over)
    return row


def metric(i: int, day: int = 0, **over: object) -> dict:
    row = {"platform": "youtube", "post_id": f"vid{i:05d}", "snapshot_date": dt.date(2026, 11, 1 + day),
           "account_id": "UCabc", "views": 100 * i + day, "likes": i, "comments": None,
           "watch_time_seconds": decimal.Decimal("12.5") * i, "extra": {"subscribersGained": i},
           "fetched_at": T0}
    row.update(over)
    return row


def versions(conn: pg8000.native.Connection, table: str) -> dict:
    """Physical identity of every row: unchanged xmin/ctid proves nothing was written."""
    return {tuple(r[:-2]): tuple(r[-2:]) for r in conn.run(
        f"SELECT platform, post_id, xmin::text, ctid::text FROM {db.quote_ident(table)}")}


def snapshot(conn: pg8000.native.Connection, table: str) -> list:
    return conn.run(f"SELECT t::text FROM {db.quote_ident(table)} AS t ORDER BY 1")


# ------------------------------------------------------------------------------------------------
# quote_ident
# ------------------------------------------------------------------------------------------------


def test_quote_ident_qualifies_and_escapes() -> None:
    assert db.quote_ident("social.posts") == '"social"."posts"'
    assert db.quote_ident("posts") == '"posts"'
    assert db.quote_ident('we"ird') == '"we""ird"'
    assert db.quote_ident("a.b", qualified=False) == '"a.b"'
    assert db.quote_ident("db.social.posts") == '"db"."social"."posts"'
    for bad in ("", ".posts", "social.", "a..b", "x\x00y", "a.b.c.d", "x" * 64):
        with pytest.raises(ValueError):
            db.quote_ident(bad)
    with pytest.raises(ValueError):
        db.quote_ident(None)  # type: ignore[arg-type]


def test_quote_ident_weird_names_and_injection_round_trip(db_conn: pg8000.native.Connection) -> None:
    evil = 'x"; DROP TABLE social.posts; --'
    evil_table = 'y"; DROP TABLE posts; --'  # upsert() takes "schema.table": the name itself has no dot
    names = [evil, evil_table, "Mixed Case", "ñandú 😀", "with.dot", "select"]
    for name in names:
        db_conn.run(f"CREATE TABLE public.{db.quote_ident(name, qualified=False)} (id int PRIMARY KEY, "
                    f"{db.quote_ident(name, qualified=False)} text)")
    created = {r[0] for r in db_conn.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert set(names) <= created
    assert db_conn.run("SELECT to_regclass('social.posts') IS NOT NULL")[0][0] is True
    # the same function protects upsert: a table whose name is an injection attempt works normally
    res = db.upsert(db_conn, f"public.{evil_table}", [{"id": 1, evil_table: "v"}], ["id"])
    assert res == db.UpsertResult(1, 0, 0)
    assert db_conn.run(f"SELECT {db.quote_ident(evil_table, qualified=False)} FROM "
                       f"{db.quote_ident('public.' + evil_table)}") == [["v"]]
    # a dotted injection attempt is split into parts and quoted: an error, never an injected statement
    with pytest.raises(LoadError):
        db.upsert(db_conn, f"public.{evil}", [{"id": 1}], ["id"])
    assert db_conn.run("SELECT to_regclass('social.posts') IS NOT NULL")[0][0] is True


# ------------------------------------------------------------------------------------------------
# upsert: counts, idempotency, bookkeeping
# ------------------------------------------------------------------------------------------------


def test_upsert_counts_and_identical_rerun_writes_nothing(db_conn: pg8000.native.Connection) -> None:
    rows = [post(i) for i in range(5)]
    with db.transaction(db_conn):
        assert db.upsert(db_conn, "social.posts", rows, POST_KEY) == db.UpsertResult(5, 0, 0)
    before = versions(db_conn, "social.posts")
    with db.transaction(db_conn):
        assert db.upsert(db_conn, "social.posts", rows, POST_KEY) == db.UpsertResult(0, 0, 5)
    assert versions(db_conn, "social.posts") == before  # same xmin and ctid: no row version written

    changed = [post(0, title="new title"), post(1), post(2, extra={"i": 2, "new": True}), post(9)]
    with db.transaction(db_conn):
        assert db.upsert(db_conn, "social.posts", changed, POST_KEY) == db.UpsertResult(1, 2, 1)
    after = versions(db_conn, "social.posts")
    rewritten = {k for k in before if after[k] != before[k]}
    assert rewritten == {("tiktok", post(0)["post_id"]), ("tiktok", post(2)["post_id"])}
    assert db_conn.run("SELECT title FROM social.posts WHERE post_id = :p", p=post(0)["post_id"]) == [
        ["new title"]]


def test_fetched_at_alone_is_unchanged(db_conn: pg8000.native.Connection) -> None:
    rows = [metric(i) for i in range(50)]
    assert db.upsert(db_conn, "social.post_metrics_daily", rows, METRIC_KEY) == db.UpsertResult(50, 0, 0)
    before = versions(db_conn, "social.post_metrics_daily")
    later = [dict(r, fetched_at=T0 + dt.timedelta(days=1)) for r in rows]
    assert db.upsert(db_conn, "social.post_metrics_daily", later, METRIC_KEY) == db.UpsertResult(0, 0, 50)
    assert versions(db_conn, "social.post_metrics_daily") == before
    assert db_conn.run("SELECT DISTINCT fetched_at FROM social.post_metrics_daily") == [[T0]]
    # one real change: the row is updated and its fetched_at moves with it
    later[3]["views"] += 1
    assert db.upsert(db_conn, "social.post_metrics_daily", later, METRIC_KEY) == db.UpsertResult(0, 1, 49)
    assert db_conn.run("SELECT views, fetched_at FROM social.post_metrics_daily WHERE post_id = 'vid00003'") == [
        [301, T0 + dt.timedelta(days=1)]]


def test_insert_only_never_overwritten_bookkeeping_set_on_change(db_conn: pg8000.native.Connection) -> None:
    t1, t2 = T0, T0 + dt.timedelta(hours=5)
    db.upsert(db_conn, "social.posts", [post(1, first_seen_at=t1, last_seen_at=t1)], POST_KEY)
    res = db.upsert(db_conn, "social.posts", [post(1, first_seen_at=t2, last_seen_at=t2)], POST_KEY)
    assert res == db.UpsertResult(0, 0, 1)  # only bookkeeping moved
    assert db_conn.run("SELECT first_seen_at, last_seen_at FROM social.posts") == [[t1, t1]]
    res = db.upsert(db_conn, "social.posts", [post(1, title="edited", first_seen_at=t2, last_seen_at=t2)],
                    POST_KEY)
    assert res == db.UpsertResult(0, 1, 0)
    assert db_conn.run("SELECT title, first_seen_at, last_seen_at FROM social.posts") == [["edited", t1, t2]]


def test_duplicate_keys_in_one_batch_last_wins(db_conn: pg8000.native.Connection) -> None:
    batch = [post(1, title="first"), post(2), post(1, title="second"), post(1, title="third")]
    assert db.upsert(db_conn, "social.posts", batch, POST_KEY) == db.UpsertResult(2, 0, 0)
    assert db_conn.run("SELECT title FROM social.posts WHERE post_id = :p", p=post(1)["post_id"]) == [["third"]]
    batch = [post(1, title="x"), post(1, title="third")]  # net effect: unchanged
    assert db.upsert(db_conn, "social.posts", batch, POST_KEY) == db.UpsertResult(0, 0, 1)


def test_only_key_and_bookkeeping_columns_never_update(db_conn: pg8000.native.Connection) -> None:
    rows = [{"platform": "tiktok", "post_id": "1", "account_id": "a", "last_seen_at": T0}]
    assert db.upsert(db_conn, "social.posts", rows, POST_KEY,
                     bookkeeping=("account_id", "last_seen_at")) == db.UpsertResult(1, 0, 0)
    rows[0]["account_id"] = "b"
    assert db.upsert(db_conn, "social.posts", rows, POST_KEY,
                     bookkeeping=("account_id", "last_seen_at")) == db.UpsertResult(0, 0, 1)


def test_nul_bytes_stripped_from_text_and_jsonb(db_conn: pg8000.native.Connection) -> None:
    backslash_u = "C:\\u0000dir"  # a literal backslash-u sequence, not a NUL: must survive untouched
    rows = [
        post(1, title="a\x00b", extra={"k\x00ey": "v\x00al", "list": ["x\x00", {"n": "\x00"}], "p": backslash_u}),
        post(2, title="\x00", extra='{"s": "a\\u0000b", "t": "ok"}'),  # str = JSON text, with an escaped NUL
    ]
    assert db.upsert(db_conn, "social.posts", rows, POST_KEY) == db.UpsertResult(2, 0, 0)
    got = db_conn.run("SELECT title, extra FROM social.posts ORDER BY post_id")
    assert got[0] == ["ab", {"key": "val", "list": ["x", {"n": ""}], "p": backslash_u}]
    assert got[1] == ["", {"s": "ab", "t": "ok"}]
    # idempotent after cleaning
    assert db.upsert(db_conn, "social.posts", rows, POST_KEY) == db.UpsertResult(0, 0, 2)


def test_large_batch_streams_in_chunks(db_conn: pg8000.native.Connection) -> None:
    gen = (metric(i, day=i % 3, extra={"pad": "é" * 100, "i": i}) for i in range(20_000))  # ~5 MB of COPY data
    assert db.upsert(db_conn, "social.post_metrics_daily", gen, METRIC_KEY) == db.UpsertResult(20_000, 0, 0)
    assert db_conn.run("SELECT count(*), sum(views) FROM social.post_metrics_daily") == [
        [20_000, sum(100 * i + i % 3 for i in range(20_000))]]


# ------------------------------------------------------------------------------------------------
# upsert: failures leave the table as it was
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def seeded(db_conn: pg8000.native.Connection) -> list[Any]:
    db.upsert(db_conn, "social.post_metrics_daily", [metric(i) for i in range(100)], METRIC_KEY)
    return snapshot(db_conn, "social.post_metrics_daily")


def test_server_side_failure_mid_batch_leaves_table_unchanged(db_conn: Conn, seeded: list[Any]) -> None:
    rows = [metric(i, views=i + 7) for i in range(10_000)]
    rows[5_000]["account_id"] = None  # NOT NULL violation, found by the server in the merge
    with pytest.raises(LoadError) as err, db.transaction(db_conn):
        db.upsert(db_conn, "social.post_metrics_daily", rows, METRIC_KEY)
    assert "23502" in str(err.value) and isinstance(err.value.__cause__, DatabaseError)
    assert "vid05000" not in str(err.value)  # no row DETAIL in the message
    assert snapshot(db_conn, "social.post_metrics_daily") == seeded


def test_client_side_failure_mid_stream_leaves_table_unchanged_and_tx_usable(db_conn: Conn, seeded: list[Any]) -> None:
    rows = [metric(i, views=i + 7) for i in range(10_000)]
    rows[5_000]["views"] = "not a number"
    with db.transaction(db_conn):
        db_conn.run("INSERT INTO social.accounts (platform, account_id) VALUES ('youtube', 'UCabc')")
        with pytest.raises(ValueError, match=r"row 5001, column 'views'"):
            db.upsert(db_conn, "social.post_metrics_daily", rows, METRIC_KEY)
        # the caller's transaction survived (upsert ran under a savepoint)
        assert db_conn.run("SELECT count(*) FROM social.accounts") == [[1]]
    assert snapshot(db_conn, "social.post_metrics_daily") == seeded
    assert db_conn.run("SELECT 1") == [[1]]  # the connection is still in protocol sync


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"fetched_at": dt.datetime(2026, 1, 1)}, "naive datetime"),
        ({"extra": {"x": float("nan")}}, "column 'extra'"),
        ({"snapshot_date": T0}, "got a datetime"),
        ({"comments": True}, "column 'comments'"),
    ],
)
def test_bad_values_are_value_errors_naming_the_column(
    db_conn: Conn, seeded: list[Any], bad: Any, message: str
) -> None:
    rows = [metric(i) for i in range(300)]
    rows[200].update(bad)
    with pytest.raises(ValueError, match=message):
        db.upsert(db_conn, "social.post_metrics_daily", rows, METRIC_KEY)
    assert snapshot(db_conn, "social.post_metrics_daily") == seeded


def test_rows_must_share_keys_and_columns_must_exist(db_conn: Conn, seeded: list[Any]) -> None:
    rows = [metric(i) for i in range(10)]
    del rows[7]["likes"]
    with pytest.raises(ValueError, match="row 8"):
        db.upsert(db_conn, "social.post_metrics_daily", rows, METRIC_KEY)
    rows[7]["likes"], rows[7]["bogus"] = 1, 2
    with pytest.raises(ValueError, match="row 8"):
        db.upsert(db_conn, "social.post_metrics_daily", rows, METRIC_KEY)
    with pytest.raises(ValueError, match="unknown column"):
        db.upsert(db_conn, "social.post_metrics_daily", [metric(1, bogus=1)], METRIC_KEY)
    with pytest.raises(ValueError, match="key column"):
        db.upsert(db_conn, "social.post_metrics_daily", [metric(1)], ("platform", "nope"))
    with pytest.raises(ValueError, match="does not exist"):
        db.upsert(db_conn, "social.nope", [metric(1)], METRIC_KEY)
    assert db.upsert(db_conn, "social.post_metrics_daily", [], METRIC_KEY) == db.UpsertResult(0, 0, 0)
    assert snapshot(db_conn, "social.post_metrics_daily") == seeded


def test_check_constraint_violation_is_load_error(db_conn: pg8000.native.Connection) -> None:
    with pytest.raises(LoadError, match="23514"):
        db.upsert(db_conn, "social.posts", [post(1, platform="twitter")], POST_KEY)
    assert db_conn.run("SELECT count(*) FROM social.posts") == [[0]]


# ------------------------------------------------------------------------------------------------
# Types
# ------------------------------------------------------------------------------------------------


def test_types_round_trip(db_conn: pg8000.native.Connection) -> None:
    db_conn.run(
        "CREATE TABLE public.types (id int PRIMARY KEY, t text, vc varchar(20), i2 smallint, i4 integer, "
        "i8 bigint, num numeric, f8 double precision, b boolean, d date, ts timestamptz, tsn timestamp, "
        "jb jsonb, js json, by bytea, u uuid)"
    )
    art = dt.timezone(dt.timedelta(hours=-3))
    full = {
        "id": 1, "t": "ñandú 😀 \"q\" \\ \n\t end", "vc": "short", "i2": -32768, "i4": 2_147_483_647,
        "i8": -9_223_372_036_854_775_808, "num": decimal.Decimal("12345678901234567890.000000001"),
        "f8": 1.0000000000000002, "b": False, "d": dt.date(1999, 12, 31),
        "ts": dt.datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=art), "tsn": dt.datetime(1970, 1, 1, 0, 0, 0, 1),
        "jb": {"uni": "日本語 ✨", "nl": "a\nb", "bs": "c:\\path", "quote": '"', "n": None, "l": [1, 2.5, True]},
        "js": ["raw", {"b": 1}], "by": b"\x00\x01\xff", "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    nulls = {k: (2 if k == "id" else None) for k in full}
    coerced = dict(full, id=3, i8="42", num=7, f8=3, d="2026-02-28", ts="2026-02-28T10:00:00Z",
                   num_dummy=None)
    del coerced["num_dummy"]
    assert db.upsert(db_conn, "public.types", [full, nulls, coerced], ["id"]) == db.UpsertResult(3, 0, 0)
    rows = db_conn.run("SELECT * FROM public.types ORDER BY id")
    cols = [c["name"] for c in db_conn.columns]
    got = [dict(zip(cols, r, strict=True)) for r in rows]
    assert got[0]["ts"] == full["ts"] and got[0]["ts"].microsecond == 999_999
    assert got[0]["by"] == full["by"] and got[0]["u"] == full["u"] and got[0]["num"] == full["num"]
    assert {k: v for k, v in got[0].items() if k not in ("by", "u")} == {
        k: v for k, v in full.items() if k not in ("by", "u")}
    assert got[1] == nulls
    assert (got[2]["i8"], got[2]["num"], got[2]["f8"], got[2]["d"], got[2]["ts"]) == (
        42, decimal.Decimal(7), 3.0, dt.date(2026, 2, 28), dt.datetime(2026, 2, 28, 10, tzinfo=UTC))
    # idempotent: the exact same values compare equal on the server
    assert db.upsert(db_conn, "public.types", [full, nulls], ["id"]) == db.UpsertResult(0, 0, 2)


# ------------------------------------------------------------------------------------------------
# Transactions
# ------------------------------------------------------------------------------------------------


def test_transaction_commit_rollback_and_nesting(db_conn: pg8000.native.Connection) -> None:
    ins = "INSERT INTO social.accounts (platform, account_id) VALUES ('tiktok', :a)"
    with db.transaction(db_conn):
        db_conn.run(ins, a="committed")
    with pytest.raises(RuntimeError), db.transaction(db_conn):
        db_conn.run(ins, a="rolled_back")
        raise RuntimeError("boom")
    with db.transaction(db_conn):
        db_conn.run(ins, a="outer")
        with pytest.raises(LoadError) as err, db.transaction(db_conn):  # savepoint
            db_conn.run(ins, a="inner")
            db_conn.run(ins, a="inner")  # duplicate key
        assert isinstance(err.value.__cause__, DatabaseError) and "23505" in str(err.value)
        assert "inner" not in str(err.value)  # the DETAIL (key values) is not in the message
        with db.transaction(db_conn):
            db_conn.run(ins, a="inner_ok")
    got = {r[0] for r in db_conn.run("SELECT account_id FROM social.accounts")}
    assert got == {"committed", "outer", "inner_ok"}


# ------------------------------------------------------------------------------------------------
# Migrations
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def empty_database_url(pg_server: str) -> Iterator[str]:
    """A database with nothing in it (no template): for migration tests."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = admin_connection(pg_server)
    admin.run(f"CREATE DATABASE {db.quote_ident(name)}")
    try:
        yield database_url_for(pg_server, name)
    finally:
        admin.run(f"DROP DATABASE {db.quote_ident(name)} WITH (FORCE)")
        admin.close()


_MIGRATE_CHILD = """
import json, sys
from shared import db
conn = db._connect_url(db.parse_database_url(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()  # start together
print(json.dumps(db.migrate(conn)))
"""


def test_migrations_apply_once_when_two_processes_start_together(empty_database_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _MIGRATE_CHILD, empty_database_url], cwd=REPO_ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:  # both connected and waiting ...
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:  # ... then released together (communicate() one by one would serialise them)
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    applied = [json.loads(o[0]) for o in outs]
    every = [p.stem for p in sorted(db.MIGRATIONS_DIR.glob("*.sql"))]
    assert sorted(applied[0] + applied[1]) == every  # each file applied by exactly one process
    conn = admin_connection(empty_database_url)
    try:
        assert [r[0] for r in conn.run("SELECT version FROM social.schema_migrations ORDER BY 1")] == every
        assert db.migrate(conn) == []
    finally:
        conn.close()


def test_migration_lock_serializes_threads(empty_database_url: str, tmp_path: Path) -> None:
    """A slow migration that would fail if run twice (no IF NOT EXISTS), four threads at once."""
    (tmp_path / "0001_slow.sql").write_text(
        "CREATE SCHEMA IF NOT EXISTS social; SELECT pg_sleep(0.3); CREATE TABLE social.once (id int);")
    (tmp_path / "0002_second.sql").write_text("ALTER TABLE social.once ADD COLUMN name text;")
    barrier, results, errors = threading.Barrier(4), [], []

    def worker() -> None:
        conn = admin_connection(empty_database_url)
        try:
            barrier.wait()
            results.append(db.migrate(conn, tmp_path))
        except Exception as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(v for r in results for v in r) == ["0001_slow", "0002_second"]


def test_failed_migration_rolls_back_and_is_retried(empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE SCHEMA IF NOT EXISTS social; CREATE TABLE social.a (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE social.b (id int); SELECT 1/0;")
    conn = admin_connection(empty_database_url)
    try:
        with pytest.raises(LoadError, match="22012"):
            db.migrate(conn, tmp_path)
        assert conn.run("SELECT to_regclass('social.b') IS NULL, to_regclass('social.a') IS NOT NULL") == [
            [True, True]]
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE social.b (id int);")
        assert db.migrate(conn, tmp_path) == ["0002_bad"]
        (tmp_path / "bad-name.sql").write_text("SELECT 1;")
        with pytest.raises(ConfigError, match=r"NNNN_name\.sql"):
            db.migrate(conn, tmp_path)
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------
# connect()
# ------------------------------------------------------------------------------------------------


def test_parse_database_url_variants() -> None:
    p = db.parse_database_url("postgresql://u%40x:p%3Aw@db.example.com:6543/warehouse?sslmode=require")
    assert (p.user, p.password, p.host, p.port, p.database, p.unix_sock, p.sslmode) == (
        "u@x", "p:w", "db.example.com", 6543, "warehouse", None, "require")
    p = db.parse_database_url("postgresql://postgres:@/mydb?host=/tmp/sock")
    assert (p.password, p.unix_sock, p.database) == (None, "/tmp/sock/.s.PGSQL.5432", "mydb")
    p = db.parse_database_url("postgres://me@%2Fvar%2Frun%2Fpg:5433/x")
    assert p.unix_sock == "/var/run/pg/.s.PGSQL.5433"
    p = db.parse_database_url("postgresql://me@[::1]:5439", default_database="dflt")
    assert (p.host, p.port, p.database) == ("::1", 5439, "dflt")
    assert "secret" not in p.safe_target
    for bad in ("mysql://x@y/z", "postgresql://u:secret@h:notaport/d", "postgresql://u:secret@h/d?sslmode=on"):
        with pytest.raises(ConfigError) as err:
            db.parse_database_url(bad)
        assert "secret" not in str(err.value)


def test_connect_via_unix_socket_url(database_url: str) -> None:
    p = db.parse_database_url(database_url)
    assert p.unix_sock is not None
    socket_dir = p.host
    # the percent-encoded-authority form of the same unix socket
    alt = f"postgresql://postgres@{socket_dir.replace('/', '%2F')}:{p.port}/{p.database}"
    for url in (database_url, alt):
        conn = db.connect(Config.from_env({"DATABASE_URL": url}))
        try:
            assert conn.run("SELECT current_database(), inet_server_addr() IS NULL, current_setting('TimeZone')") == [
                [p.database, True, "UTC"]]
            assert conn.run("SELECT count(*) FROM social.schema_migrations")[0][0] >= 1
        finally:
            conn.close()


def test_connect_error_is_load_error_without_password(database_url: str) -> None:
    p = db.parse_database_url(database_url)
    url = f"postgresql://postgres:hunter2secret@/no_such_db?host={p.host}&port={p.port}"
    with pytest.raises(LoadError) as err:
        db.connect(Config.from_env({"DATABASE_URL": url}))
    assert "no_such_db" in str(err.value) and "hunter2secret" not in str(err.value)
    with pytest.raises(LoadError) as err:
        db.connect(Config.from_env({"DATABASE_URL": f"postgresql://u:hunter2secret@/x?host={p.host}&port=1"}))
    assert "hunter2secret" not in str(err.value)


def test_connect_selects_cloud_sql_connector(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    """MOCKED: the Cloud SQL connector needs Google credentials and a real instance, so only the branch
    selection is tested; the stand-in returns a real connection to the test database."""
    calls = []

    def fake(instance: str, user: str, database: str, iam: bool) -> Any:
        calls.append((instance, user, database, iam))
        return db._connect_url(db.parse_database_url(database_url))

    monkeypatch.setattr(db, "_cloudsql_connect", fake)
    env = {"INSTANCE_CONNECTION_NAME": "proj:southamerica-east1:sde", "DB_NAME": "warehouse"}
    for user, iam in (("sde-loader@proj.iam", True), ("postgres", False)):
        conn = db.connect(Config.from_env({**env, "DB_USER": user}))
        conn.close()
        assert calls[-1] == ("proj:southamerica-east1:sde", user, "warehouse", iam)
    with pytest.raises(ConfigError, match="DB_USER"):
        db.connect(Config.from_env(env))
    # DATABASE_URL wins over the connector
    conn = db.connect(Config.from_env({**env, "DB_USER": "x@y", "DATABASE_URL": database_url}))
    conn.close()
    assert len(calls) == 2


_EMBEDDED_CHILD = """
import sys
from pathlib import Path
from shared import db
print(db.embedded_url(Path(sys.argv[1])))
"""


def test_embedded_server_outlives_its_process_and_is_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / ("d" * 80) / ".data"  # too long for a socket path: pgserver relocates it
    out = subprocess.run([sys.executable, "-c", _EMBEDDED_CHILD, str(data_dir)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    url = out.stdout.strip().splitlines()[-1]
    try:
        sock = db.parse_database_url(url).unix_sock
        assert sock is not None and len(sock) <= 107
        conn = admin_connection(url)  # the child has exited; its server is still up
        pid = conn.run("SELECT pg_postmaster_start_time()")[0][0]
        conn.close()
        assert db.embedded_url(data_dir) == url
        conn = db.connect(Config.from_env({"DATA_DIR": str(data_dir), "DB_NAME": "sde_local"}))
        try:
            assert conn.run("SELECT current_database(), pg_postmaster_start_time()") == [["sde_local", pid]]
            assert conn.run("SELECT to_regclass('social.posts') IS NOT NULL") == [[True]]
        finally:
            conn.close()
    finally:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=data_dir / "pg", user="pgserver")


# ------------------------------------------------------------------------------------------------
# Views
# ------------------------------------------------------------------------------------------------


def test_views(db_conn: pg8000.native.Connection) -> None:
    db.upsert(db_conn, "social.accounts", [
        {"platform": "youtube", "account_id": "UCabc", "name": "Canal", "brand": "Acme", "secret": "yt-acme"},
    ], ("platform", "account_id"))
    db.upsert(db_conn, "social.posts", [
        {"platform": "youtube", "post_id": "v1", "account_id": "UCabc", "title": "one"},
        {"platform": "youtube", "post_id": "v2", "account_id": "UCabc", "title": "two"},
    ], POST_KEY)
    snaps = [
        {"platform": "youtube", "post_id": "v1", "snapshot_date": dt.date(2026, 11, d), "account_id": "UCabc",
         "views": v, "likes": lk}
        for d, v, lk in ((1, 100, 5), (2, 150, 7), (4, 400, None))
    ]
    db.upsert(db_conn, "social.post_metrics_daily", snaps, METRIC_KEY)
    db.upsert(db_conn, "social.account_metrics_daily", [
        {"platform": "youtube", "account_id": "UCabc", "metric_date": dt.date(2026, 11, 1), "views": 9},
        {"platform": "youtube", "account_id": "UCzzz", "metric_date": dt.date(2026, 11, 1), "views": 1},
    ], ("platform", "account_id", "metric_date"))

    delta = db_conn.run("SELECT snapshot_date, previous_snapshot_date, days_since_previous, views_delta, "
                        "likes_delta FROM social.v_post_daily_delta WHERE post_id = 'v1' ORDER BY snapshot_date")
    assert delta == [
        [dt.date(2026, 11, 1), None, None, None, None],
        [dt.date(2026, 11, 2), dt.date(2026, 11, 1), 1, 50, 2],
        [dt.date(2026, 11, 4), dt.date(2026, 11, 2), 2, 250, None],
    ]
    latest = db_conn.run("SELECT post_id, brand, account_name, snapshot_date, views FROM social.v_post_latest "
                         "ORDER BY post_id")
    assert latest == [["v1", "Acme", "Canal", dt.date(2026, 11, 4), 400], ["v2", "Acme", "Canal", None, None]]
    daily = db_conn.run("SELECT account_id, brand, account_name, views FROM social.v_account_daily "
                        "ORDER BY account_id")
    assert daily == [["UCabc", "Acme", "Canal", 9], ["UCzzz", None, None, 1]]


def test_a_socket_error_inside_a_transaction_is_a_retriable_load_error(db_conn: pg8000.native.Connection) -> None:
    """pg8000 sometimes lets a plain ConnectionResetError through when the server drops the socket."""
    with pytest.raises(LoadError) as err, db.transaction(db_conn):
        raise ConnectionResetError("connection reset by peer")
    assert err.value.retriable and isinstance(err.value.__cause__, ConnectionResetError)


def test_prefetched_chunks_arrive_in_order_and_errors_propagate() -> None:
    assert list(db._prefetched(iter([b"a", b"b", b"c"] * 50), depth=2)) == [b"a", b"b", b"c"] * 50

    def failing() -> Iterator[bytes]:
        yield b"ok"
        raise RuntimeError("encoder broke")

    gen = db._prefetched(failing())
    assert next(gen) == b"ok"
    with pytest.raises(RuntimeError, match="encoder broke"):
        next(gen)


def test_prefetched_stops_its_encoder_thread_when_the_consumer_stops() -> None:
    """A COPY the server aborts stops reading the stream: the encoder thread must not hang on a full queue."""
    gen = db._prefetched(iter([b"x"] * 1000), depth=2)
    assert next(gen) == b"x"
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "sde-copy-encoder"]
