"""The token vault: both backends against real parts (PostgreSQL; the real Secret Manager client over REST
to the sandbox's Secret Manager)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sandbox import FaultRule
from shared import db
from shared.errors import VaultError
from shared.vault import CredentialNotFound, LocalVault, SecretManagerVault, make_vault

PAYLOAD = {"credential": "tiktok-x", "provider": "tiktok", "access_token": "act.SECRET-PAYLOAD-VALUE"}


def _local(config: Any, keep: int = 3) -> LocalVault:
    return LocalVault(lambda: db.connect(config), keep_versions=keep)


# --------------------------------------------------------------------------------------------------
# LocalVault (PostgreSQL)
# --------------------------------------------------------------------------------------------------


def test_local_vault_versions_latest_and_retention(database_url: str, make_config: Any, db_conn: Any) -> None:
    config = make_config(vault_keep_versions=2)
    vault = make_vault(config)
    assert isinstance(vault, LocalVault)
    numbers = [vault.write("tiktok-x", {**PAYLOAD, "n": i}) for i in range(1, 6)]
    assert numbers == [1, 2, 3, 4, 5]
    assert vault.read("tiktok-x")["n"] == 5
    states = {v.version: v.state for v in vault.versions("tiktok-x")}
    assert states == {5: "ENABLED", 4: "ENABLED", 3: "DESTROYED", 2: "DESTROYED", 1: "DESTROYED"}
    # destroyed versions really lose their payload
    rows = db_conn.run("SELECT version, payload IS NULL FROM social.vault_versions WHERE name = 'tiktok-x'"
                       " ORDER BY version")
    assert rows == [[1, True], [2, True], [3, True], [4, False], [5, False]]
    assert vault.names() == ["tiktok-x"]


def test_local_vault_read_skips_disabled_latest(database_url: str, config: Any, db_conn: Any) -> None:
    vault = _local(config)
    vault.write("c1", {"n": 1})
    vault.write("c1", {"n": 2})
    db_conn.run("UPDATE social.vault_versions SET state = 'DISABLED' WHERE name = 'c1' AND version = 2")
    assert vault.read("c1") == {"n": 1}
    # prune never retires the newest enabled version, and destroys disabled versions older than the kept ones
    assert vault.prune("c1", 0) == 0
    vault.write("c1", {"n": 3})
    assert vault.prune("c1", 1) == 2
    assert {v.version: v.state for v in vault.versions("c1")} == {3: "ENABLED", 2: "DESTROYED", 1: "DESTROYED"}


def test_local_vault_missing_credential(database_url: str, config: Any) -> None:
    vault = _local(config)
    with pytest.raises(CredentialNotFound) as err:
        vault.read("nope")
    assert "tokens import nope" in str(err.value)
    assert vault.versions("nope") == []


def test_local_vault_concurrent_writers_get_distinct_versions(database_url: str, config: Any) -> None:
    vault = _local(config, keep=100)
    results: list[int] = []
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            results.append(vault.write("c", {"i": i}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 13))


def test_local_vault_errors_never_carry_the_payload(database_url: str, config: Any) -> None:
    vault = _local(config)
    with pytest.raises(VaultError) as err:
        vault.write("bad name!", PAYLOAD)  # violates the name CHECK constraint
    assert "SECRET-PAYLOAD-VALUE" not in str(err.value)
    assert "SECRET-PAYLOAD-VALUE" not in repr(err.value.__cause__)

    def broken() -> Any:
        raise OSError("database is down")

    with pytest.raises(VaultError):
        LocalVault(broken).read("x")


# --------------------------------------------------------------------------------------------------
# SecretManagerVault: the real client, REST transport, against the sandbox
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def sm_vault(sandbox: Any, make_config: Any) -> SecretManagerVault:
    config = make_config(vault_backend="secretmanager", vault_keep_versions=3)
    vault = make_vault(config)
    assert isinstance(vault, SecretManagerVault)
    return vault


def test_secret_manager_client_uses_rest_anonymous_and_the_endpoint(sandbox: Any, sm_vault: SecretManagerVault
                                                                    ) -> None:
    from google.auth.credentials import AnonymousCredentials

    transport = sm_vault._client._transport
    assert type(transport).__name__.endswith("RestTransport")
    assert isinstance(transport._credentials, AnonymousCredentials)
    assert sandbox.env["SECRET_MANAGER_ENDPOINT"].split("://")[1] in transport._host


def test_secret_manager_write_read_latest_and_retention(sandbox: Any, sm_vault: SecretManagerVault) -> None:
    assert sm_vault.write("tiktok-x", {**PAYLOAD, "n": 1}) == 1  # creates the secret
    assert sm_vault.read("tiktok-x")["n"] == 1
    for n in range(2, 7):
        assert sm_vault.write("tiktok-x", {**PAYLOAD, "n": n}) == n
    assert sm_vault.read("tiktok-x") == {**PAYLOAD, "n": 6}
    states = {v.version: v.state for v in sm_vault.versions("tiktok-x")}
    assert states == {6: "ENABLED", 5: "ENABLED", 4: "ENABLED", 3: "DESTROYED", 2: "DESTROYED", 1: "DESTROYED"}
    # old versions were disabled, then destroyed, on the emulator itself; payloads are gone
    emu = sandbox.secret_manager
    assert emu.payload("tiktok-x", "1") is None
    assert emu.payload("tiktok-x", "6") is not None
    assert sandbox.ledger.calls("secret_manager", "versions.state") == 6  # 3 x (disable + destroy)
    # every version was added with a client CRC32C checksum
    sec = emu._secrets[(None, "tiktok-x")]
    assert all(v.client_checksum for v in sec.versions)
    assert sm_vault.names() == ["tiktok-x"]


def test_secret_manager_reads_newest_enabled_when_latest_is_disabled(sandbox: Any,
                                                                      sm_vault: SecretManagerVault) -> None:
    sm_vault.write("c", {"n": 1})
    sm_vault.write("c", {"n": 2})
    sm_vault._client.disable_secret_version(name=f"projects/{sm_vault.project}/secrets/c/versions/2")
    assert sm_vault.read("c") == {"n": 1}


def test_secret_manager_names_only_labelled_credentials(sandbox: Any, sm_vault: SecretManagerVault) -> None:
    sandbox.secret_manager.put("db-password", b"hunter2")  # another secret of the project
    sm_vault.write("google-x", {"n": 1})
    assert sm_vault.names() == ["google-x"]


def test_secret_manager_missing_and_failing(sandbox: Any, sm_vault: SecretManagerVault) -> None:
    with pytest.raises(CredentialNotFound):
        sm_vault.read("absent")
    sm_vault.write("c", PAYLOAD)
    sandbox.faults.add(FaultRule(kind="status", emulator="secret_manager", endpoint="secrets.addVersion",
                                 status=503, times=None))
    with pytest.raises(VaultError) as err:
        sm_vault.write("c", PAYLOAD)
    assert err.value.retriable
    assert "SECRET-PAYLOAD-VALUE" not in str(err.value)


def test_secret_manager_names_sends_the_label_filter(sandbox: Any, sm_vault: SecretManagerVault) -> None:
    """Spy on the real client's list call (it still goes over REST to the sandbox)."""
    from shared.vault import CREDENTIAL_FILTER

    sm_vault.write("tiktok-y", {"n": 1})
    sandbox.secret_manager.put("db-password", b"hunter2")
    real = sm_vault._client.list_secrets
    sent: list[Any] = []

    def spy(*args: Any, **kw: Any) -> Any:
        sent.append(kw.get("request"))
        return real(*args, **kw)

    sm_vault._client.list_secrets = spy
    try:
        assert sm_vault.names() == ["tiktok-y"]
    finally:
        del sm_vault._client.list_secrets
    assert sent and sent[0]["filter"] == CREDENTIAL_FILTER == "labels.sde-credential=true"


def test_secret_manager_names_denied_is_a_distinct_error(sandbox: Any, sm_vault: SecretManagerVault) -> None:
    from shared.vault import VaultListDenied

    sandbox.faults.add(FaultRule(kind="status", emulator="secret_manager", endpoint="secrets.list", status=403,
                                 code="PERMISSION_DENIED", times=None))
    with pytest.raises(VaultListDenied) as err:
        sm_vault.names()
    assert not err.value.retriable


def test_secret_manager_concurrent_prunes_do_not_fail(sandbox: Any, make_config: Any) -> None:
    """Two writers plan the same prune; the second finds the versions destroyed (REST: 400 BadRequest)."""
    vault = make_vault(make_config(vault_backend="secretmanager", vault_keep_versions=100))
    for n in range(1, 5):
        vault.write("c", {"n": n})
    stale = vault.versions("c")  # what the slower writer saw before the faster one pruned
    assert vault.prune("c", 1) == 3
    real = vault.versions
    calls: list[str] = []

    def planned_before_the_other_prune(name: str) -> Any:  # the slower writer's stale plan, once
        calls.append(name)
        return stale if len(calls) == 1 else real(name)

    vault.versions = planned_before_the_other_prune  # type: ignore[method-assign]
    try:
        vault.prune("c", 1)
    finally:
        del vault.versions
    assert {v.version: v.state for v in vault.versions("c")} == {4: "ENABLED", 3: "DESTROYED", 2: "DESTROYED",
                                                                1: "DESTROYED"}
