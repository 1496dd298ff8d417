"""The account registry: strict TOML validation, and an idempotent mirror into social.accounts
(real embedded PostgreSQL through the ``db_conn`` fixture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.config import REPO_ROOT
from shared.errors import ConfigError, InputError
from shared.registry import Account, active_accounts, load_registry, sync_registry

GOOD = """
[defaults]
timezone = "America/Argentina/Buenos_Aires"

[[accounts]]
platform = "youtube"
account_id = "UC0000000000000000000001"
name = "Brand One Official"
brand = "Brand One"
secret = "youtube-brand-one"
timezone = "America/New_York"
[accounts.metadata]
market = "US"
tags = ["a", "b"]

[[accounts]]
platform = "tiktok"
account_id = "7000000000000000001"
name = "@brandone"
brand = "Brand One"
secret = "tiktok-brand-one"

[[accounts]]
platform = "facebook"
account_id = 100000000000001
name = "Brand Two"
brand = "Brand Two"
secret = "meta-brand-two"
active = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_registry(tmp_path: Path) -> None:
    yt, tt, fb = load_registry(write(tmp_path, GOOD))
    assert yt == Account(
        platform="youtube",
        account_id="UC0000000000000000000001",
        name="Brand One Official",
        brand="Brand One",
        timezone="America/New_York",
        secret="youtube-brand-one",
        active=True,
        metadata={"market": "US", "tags": ["a", "b"]},
    )
    assert tt.timezone == "America/Argentina/Buenos_Aires" and tt.metadata == {} and tt.active
    assert fb.account_id == "100000000000001" and fb.active is False  # unquoted numeric id accepted
    with pytest.raises(AttributeError):
        yt.name = "x"  # type: ignore[misc]


def test_default_timezone_falls_back_to_the_argument(tmp_path: Path) -> None:
    text = '[[accounts]]\nplatform="tiktok"\naccount_id="1"\nname="n"\nbrand="b"\nsecret="s"\n'
    (acct,) = load_registry(write(tmp_path, text), default_timezone="Asia/Kolkata")
    assert acct.timezone == "Asia/Kolkata"


def test_the_shipped_example_is_valid() -> None:
    accounts = load_registry(REPO_ROOT / "accounts.example.toml")
    assert {a.platform for a in accounts} == {"tiktok", "facebook", "instagram", "youtube"}
    assert any(not a.active for a in accounts)


def test_every_problem_is_reported_at_once_with_file_and_index(tmp_path: Path) -> None:
    text = """
unexpected = 1
[defaults]
timezone = "Europe/Paris"
colour = "blue"

[[accounts]]
platform = "myspace"
account_id = "1"
name = "A"
brand = "B"
secret = "s-1"

[[accounts]]
platform = "tiktok"
account_id = "2"
brand = "B"
secret = "s-2"
timezone = "Mars/Base"

[[accounts]]
platform = "youtube"
account_id = "UC1"
name = "Y"
brand = "B"
secret = "bad secret!"
activ = true
active = "yes"
metadata = 3

[[accounts]]
platform = "tiktok"
account_id = "7"
name = "T"
brand = "B"
secret = "s-7"

[[accounts]]
platform = "tiktok"
account_id = "7"
name = "T again"
brand = "B"
secret = "s-7"

[[accounts]]
platform = "instagram"
account_id = ""
name = "I"
brand = "B"
secret = "s-8"
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    problems = info.value.problems
    joined = "\n".join(problems)
    assert all(p.startswith(str(path)) for p in problems)
    expected = [
        "unknown top-level key 'unexpected'",
        "defaults: unknown key 'colour'",
        "accounts[0] (myspace/1): unknown platform 'myspace'",
        "accounts[1] (tiktok/2): missing required field 'name'",
        "accounts[1] (tiktok/2): timezone: unknown IANA timezone 'Mars/Base'",
        "accounts[2] (youtube/UC1): unknown key 'activ'",
        "accounts[2] (youtube/UC1): secret 'bad secret!' is not a valid credential name",
        "accounts[2] (youtube/UC1): active must be true or false",
        "accounts[2] (youtube/UC1): metadata must be a table",
        "accounts[4] (tiktok/7): duplicate (platform, account_id), first defined at accounts[3]",
        "accounts[5] (instagram/): account_id must not be empty",
    ]
    for fragment in expected:
        assert fragment in joined, fragment
    assert len(problems) == len(expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("accounts = [", "invalid TOML"),
        ("accounts = 3", "'accounts' must be an array of tables"),
        ("[defaults]\ntimezone = 'Nowhere/Else'\n", "defaults.timezone: unknown IANA timezone"),
        ('[[accounts]]\nplatform = 5\naccount_id="1"\nname="n"\nbrand="b"\nsecret="s"\n', "platform must be a string"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"accounts\.toml") as info:
        load_registry(write(tmp_path, text))
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_registry(tmp_path / "nope.toml")


def test_empty_file_is_an_empty_registry(tmp_path: Path) -> None:
    assert load_registry(write(tmp_path, "")) == []


# --- database -------------------------------------------------------------------------------------


def _table(conn: Any) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = conn.run(
        "SELECT platform, account_id, name, brand, timezone, secret, active, metadata, updated_at FROM social.accounts"
    )
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def test_sync_registry_is_idempotent_and_deactivates_removed_accounts(db_conn: Any, tmp_path: Path) -> None:
    accounts = load_registry(write(tmp_path, GOOD))
    first = sync_registry(db_conn, accounts)
    assert first == {"inserted": 3, "updated": 0, "unchanged": 0, "deactivated": 0}
    table = _table(db_conn)
    assert table[("youtube", "UC0000000000000000000001")][:6] == (
        "Brand One Official",
        "Brand One",
        "America/New_York",
        "youtube-brand-one",
        True,
        {"market": "US", "tags": ["a", "b"]},
    )
    assert table[("facebook", "100000000000001")][4] is False

    again = sync_registry(db_conn, accounts)
    assert again == {"inserted": 0, "updated": 0, "unchanged": 3, "deactivated": 0}
    assert _table(db_conn) == table  # nothing written, not even updated_at

    # rename one account, drop another from the file
    yt, tt, fb = accounts
    renamed = Account(**{**yt.__dict__, "name": "Brand One (new)"})
    third = sync_registry(db_conn, [renamed, fb])
    assert third == {"inserted": 0, "updated": 1, "unchanged": 1, "deactivated": 1}
    after = _table(db_conn)
    assert after[("youtube", renamed.account_id)][0] == "Brand One (new)"
    assert after[("tiktok", tt.account_id)][4] is False  # kept, deactivated
    assert after[("tiktok", tt.account_id)][6] > table[("tiktok", tt.account_id)][6]  # updated_at moved
    assert after[("youtube", renamed.account_id)][6] > table[("youtube", renamed.account_id)][6]
    assert after[("facebook", fb.account_id)][6] == table[("facebook", fb.account_id)][6]  # untouched

    assert sync_registry(db_conn, [renamed, fb]) == {"inserted": 0, "updated": 0, "unchanged": 2, "deactivated": 0}

    # back in the file: reactivated by the upsert
    fourth = sync_registry(db_conn, [renamed, tt, fb])
    assert fourth == {"inserted": 0, "updated": 1, "unchanged": 2, "deactivated": 0}
    assert _table(db_conn)[("tiktok", tt.account_id)][4] is True


def test_sync_empty_registry_deactivates_everything(db_conn: Any, tmp_path: Path) -> None:
    sync_registry(db_conn, load_registry(write(tmp_path, GOOD)))
    result = sync_registry(db_conn, [])
    assert result == {"inserted": 0, "updated": 0, "unchanged": 0, "deactivated": 2}  # one was already inactive
    assert not any(row[4] for row in _table(db_conn).values())


def test_active_accounts(db_conn: Any, tmp_path: Path) -> None:
    text = GOOD + (
        '\n[[accounts]]\nplatform="tiktok"\naccount_id="7000000000000000000"\nname="a"\nbrand="b"\nsecret="s"\n'
    )
    accounts = load_registry(write(tmp_path, text))
    sync_registry(db_conn, accounts)
    tiktok = active_accounts(db_conn, "tiktok")
    assert [a.account_id for a in tiktok] == ["7000000000000000000", "7000000000000000001"]
    assert tiktok[1] == accounts[1]
    youtube = active_accounts(db_conn, "youtube")
    assert youtube == [accounts[0]]
    assert youtube[0].metadata == {"market": "US", "tags": ["a", "b"]}
    assert active_accounts(db_conn, "facebook") == []  # registered but inactive
    assert [a.platform for a in active_accounts(db_conn, ("facebook", "tiktok", "youtube"))] == [
        "tiktok",
        "tiktok",
        "youtube",
    ]
    only = active_accounts(db_conn, "tiktok", only=["7000000000000000001"])
    assert [a.account_id for a in only] == ["7000000000000000001"]


def test_active_accounts_only_with_unknown_or_inactive_ids_is_an_input_error(db_conn: Any, tmp_path: Path) -> None:
    sync_registry(db_conn, load_registry(write(tmp_path, GOOD)))
    with pytest.raises(InputError) as info:
        active_accounts(db_conn, "facebook", only=["100000000000001", "nope"])
    assert info.value.field == "accounts"
    assert "100000000000001" in info.value.message and "nope" in info.value.message
