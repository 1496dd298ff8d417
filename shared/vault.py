"""The token vault: one JSON secret per credential, versioned, with retention. Two backends, one interface.

* ``SecretManagerVault`` (production): the real ``google-cloud-secret-manager`` client. Reads
  ``versions/latest`` at every call (never an env var: env secrets resolve only at instance start), writes
  add a version with a CRC32C checksum, then old versions are disabled and destroyed (every enabled *or
  disabled* version is billed monthly; an hourly refresher would pile up ~720 a month).
* ``LocalVault`` (laptop, tests, single host): the same model in PostgreSQL (``social.vault_versions``,
  migration 0002), written in one transaction per version.

No error raised here ever contains a payload; everything becomes ``VaultError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.config import Config
from shared.errors import SDEError, VaultError
from shared.logs import redact

__all__ = [
    "CREDENTIAL_FILTER",
    "CREDENTIAL_LABEL",
    "CredentialNotFound",
    "LocalVault",
    "SecretManagerVault",
    "Vault",
    "VaultListDenied",
    "VersionInfo",
    "make_vault",
]

log = logging.getLogger(__name__)

#: Secret Manager label that marks a secret as an SDE credential (``names()`` lists only those).
CREDENTIAL_LABEL = ("sde-credential", "true")
#: server-side filter of ``secrets.list`` (List-operation filtering on labels): only credentials come back
CREDENTIAL_FILTER = f"labels.{CREDENTIAL_LABEL[0]}={CREDENTIAL_LABEL[1]}"
_STATES = ("ENABLED", "DISABLED", "DESTROYED")


class CredentialNotFound(VaultError):
    """The vault has no (enabled) version of this credential: a human must import it."""

    error_class = "vault_missing"
    retriable = False


class VaultListDenied(VaultError):
    """Listing the project's secrets is not allowed (no project-level ``secretmanager.secrets.list``).

    Callers that list only to supplement a known set of credentials log it and carry on.
    """

    error_class = "vault_list_denied"
    retriable = False


@dataclass(frozen=True)
class VersionInfo:
    """One version of a secret (never its payload)."""

    name: str
    version: int
    state: str  # ENABLED | DISABLED | DESTROYED
    created_at: datetime | None = None


class Vault(Protocol):
    """What the token code needs from a secret store."""

    def read(self, name: str) -> dict[str, Any]: ...  # newest ENABLED version

    def write(self, name: str, payload: Mapping[str, Any]) -> int: ...  # new version number

    def versions(self, name: str) -> list[VersionInfo]: ...  # newest first

    def names(self) -> list[str]: ...

    def prune(self, name: str, keep: int) -> int: ...  # versions destroyed


def _encode(name: str, payload: Mapping[str, Any]) -> bytes:
    if not isinstance(payload, Mapping):
        raise VaultError(f"vault write {name}: payload must be a JSON object")
    try:
        return json.dumps(dict(payload), separators=(",", ":"), sort_keys=True, default=str).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise VaultError(f"vault write {name}: payload is not JSON-serializable ({type(exc).__name__})") from None


def _decode(name: str, version: int | str, data: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VaultError(f"vault read {name} version {version}: payload is not valid JSON") from None
    if not isinstance(value, dict):
        raise VaultError(f"vault read {name} version {version}: payload is not a JSON object")
    return value


def _plan_prune(versions: list[VersionInfo], keep: int) -> list[VersionInfo]:
    """Versions to retire: every non-destroyed version older than the newest ``keep`` ENABLED ones."""
    keep = max(1, keep)  # never retire the version that ``read`` returns
    enabled = [v for v in versions if v.state == "ENABLED"]
    if not enabled:
        return []
    oldest_kept = enabled[min(keep, len(enabled)) - 1].version
    return [v for v in versions if v.version < oldest_kept and v.state != "DESTROYED"]


# ------------------------------------------------------------------------------------------------
# Local vault (PostgreSQL)
# ------------------------------------------------------------------------------------------------


class LocalVault:
    """Secret-Manager semantics on ``social.vault_versions``; one short connection per operation.

    ``connect`` returns a NEW connection that this vault owns and closes (pg8000 connections are not
    thread-safe, and concurrent refreshers run in threads or processes).
    """

    def __init__(self, connect: Callable[[], Any], *, keep_versions: int = 3) -> None:
        self._connect = connect
        self.keep_versions = keep_versions

    def _run(self, action: str, name: str | None, fn: Callable[[Any], Any]) -> Any:
        from shared import db

        what = f"vault {action}" + (f" {name}" if name else "")
        try:
            conn = self._connect()
        except SDEError as exc:
            raise VaultError(f"{what}: cannot connect to the local vault: {exc}") from exc
        except Exception as exc:
            raise VaultError(f"{what}: cannot connect to the local vault: {type(exc).__name__}") from exc
        try:
            with db.transaction(conn):
                return fn(conn)
        except VaultError:
            raise
        except SDEError as exc:
            raise VaultError(f"{what}: {exc}") from exc
        except Exception as exc:  # driver/socket errors: never echo parameters (they hold the payload)
            raise VaultError(f"{what}: {type(exc).__name__}") from exc
        finally:
            try:
                conn.close()
            except Exception:  # already broken; nothing left to release
                log.debug("closing a vault connection failed", exc_info=True)

    def read(self, name: str) -> dict[str, Any]:
        def _read(conn: Any) -> tuple[int, str] | None:
            rows = conn.run(
                "SELECT version, payload FROM social.vault_versions WHERE name = :n AND state = 'ENABLED'"
                " ORDER BY version DESC LIMIT 1",
                n=name,
            )
            return (rows[0][0], rows[0][1]) if rows else None

        found = self._run("read", name, _read)
        if found is None:
            raise CredentialNotFound(f"vault read {name}: no enabled version (import it with "
                                     f"`python -m shared.cli tokens import {name} --file ...`)")
        return _decode(name, found[0], found[1])

    def write(self, name: str, payload: Mapping[str, Any]) -> int:
        text = _encode(name, payload).decode("utf-8")

        def _write(conn: Any) -> int:
            version = conn.run(
                "INSERT INTO social.vault_secrets AS s (name) VALUES (:n) ON CONFLICT (name) DO UPDATE"
                " SET last_version = s.last_version + 1, updated_at = now() RETURNING s.last_version",
                n=name,
            )[0][0]
            conn.run(
                "INSERT INTO social.vault_versions (name, version, payload) VALUES (:n, :v, :p)",
                n=name, v=version, p=text,
            )
            self._prune(conn, name, self.keep_versions)
            return int(version)

        return self._run("write", name, _write)

    def versions(self, name: str) -> list[VersionInfo]:
        rows = self._run("versions", name, lambda conn: conn.run(
            "SELECT version, state, created_at FROM social.vault_versions WHERE name = :n ORDER BY version DESC",
            n=name,
        ))
        return [VersionInfo(name, int(r[0]), r[1], r[2]) for r in rows]

    def names(self) -> list[str]:
        rows = self._run("names", None, lambda conn: conn.run(
            "SELECT DISTINCT name FROM social.vault_versions WHERE state = 'ENABLED' ORDER BY name"
        ))
        return [r[0] for r in rows]

    def prune(self, name: str, keep: int) -> int:
        return self._run("prune", name, lambda conn: self._prune(conn, name, keep))

    @staticmethod
    def _prune(conn: Any, name: str, keep: int) -> int:
        rows = conn.run(
            "SELECT version, state, created_at FROM social.vault_versions WHERE name = :n"
            " ORDER BY version DESC FOR UPDATE",
            n=name,
        )
        retire = _plan_prune([VersionInfo(name, int(r[0]), r[1], r[2]) for r in rows], keep)
        ids = [v.version for v in retire]
        if not ids:
            return 0
        # Same two steps as Secret Manager: disable, then destroy (drop the payload, keep the row).
        conn.run(
            "UPDATE social.vault_versions SET state = 'DISABLED', disabled_at = clock_timestamp()"
            " WHERE name = :n AND version = ANY(CAST(:ids AS int[])) AND state = 'ENABLED'",
            n=name, ids=ids,
        )
        conn.run(
            "UPDATE social.vault_versions SET state = 'DESTROYED', payload = NULL, destroyed_at = clock_timestamp()"
            " WHERE name = :n AND version = ANY(CAST(:ids AS int[])) AND state = 'DISABLED'",
            n=name, ids=ids,
        )
        return len(ids)


# ------------------------------------------------------------------------------------------------
# Secret Manager
# ------------------------------------------------------------------------------------------------

_clients: dict[str | None, Any] = {}
_clients_lock = threading.Lock()


def _secretmanager_client(endpoint: str | None) -> Any:
    """One client per endpoint per process (warm instances reuse it).

    With an endpoint (the sandbox, an emulator): REST transport, that endpoint, anonymous credentials.
    Without: the library defaults (gRPC, Application Default Credentials of the function's account).
    """
    with _clients_lock:
        if endpoint not in _clients:
            from google.cloud import secretmanager

            try:
                if endpoint:
                    from google.auth.credentials import AnonymousCredentials

                    client = secretmanager.SecretManagerServiceClient(
                        transport="rest",
                        credentials=AnonymousCredentials(),
                        client_options={"api_endpoint": endpoint},
                    )
                else:
                    client = secretmanager.SecretManagerServiceClient()
            except Exception as exc:  # DefaultCredentialsError and friends
                raise VaultError(f"cannot create the Secret Manager client: {type(exc).__name__}: {exc}") from exc
            _clients[endpoint] = client
        return _clients[endpoint]


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _state_name(state: Any) -> str:
    name = getattr(state, "name", None) or str(state)
    return name if name in _STATES else str(name).rsplit(".", 1)[-1]


def _to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    to_dt = getattr(value, "ToDatetime", None)
    return to_dt() if to_dt else None


class SecretManagerVault:
    """The vault on Google Secret Manager (``projects/{project}/secrets/{name}``)."""

    def __init__(self, project: str, *, endpoint: str | None = None, keep_versions: int = 3,
                 client: Any = None) -> None:
        self.project = project
        self.keep_versions = keep_versions
        self._client = client if client is not None else _secretmanager_client(endpoint)

    def _secret(self, name: str) -> str:
        return f"projects/{self.project}/secrets/{name}"

    @staticmethod
    def _error(action: str, name: str | None, exc: Exception) -> VaultError:
        from google.api_core import exceptions as gexc

        what = f"secret manager {action}" + (f" {name}" if name else "")
        code = getattr(exc, "code", None)
        detail = redact(getattr(exc, "message", None) or str(exc))[:300]
        cls: type[VaultError] = VaultError
        if isinstance(exc, gexc.NotFound) and action == "read":
            cls = CredentialNotFound
        err = cls(f"{what}: {type(exc).__name__}" + (f" {code}" if code else "") + f": {detail}")
        if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated | gexc.InvalidArgument):
            err.retriable = False
        return err

    def read(self, name: str) -> dict[str, Any]:
        from google.api_core import exceptions as gexc

        try:
            try:
                resp = self._client.access_secret_version(name=f"{self._secret(name)}/versions/latest")
            except (gexc.FailedPrecondition, gexc.BadRequest):
                # ``latest`` is the newest version even when it is disabled: fall back to the newest ENABLED.
                enabled = [v for v in self.versions(name) if v.state == "ENABLED"]
                if not enabled:
                    raise CredentialNotFound(f"secret manager read {name}: no enabled version") from None
                resp = self._client.access_secret_version(name=f"{self._secret(name)}/versions/{enabled[0].version}")
        except VaultError:
            raise
        except Exception as exc:
            raise self._error("read", name, exc) from exc
        data = bytes(resp.payload.data)
        expected = resp.payload.data_crc32c if "data_crc32c" in resp.payload else None
        if expected is not None and expected != _crc32c(data):
            raise VaultError(f"secret manager read {name}: CRC32C mismatch (corrupted in transit)")
        return _decode(name, resp.name.rsplit("/", 1)[-1], data)

    def write(self, name: str, payload: Mapping[str, Any]) -> int:
        from google.api_core import exceptions as gexc

        data = _encode(name, payload)
        body = {"data": data, "data_crc32c": _crc32c(data)}
        try:
            try:
                version = self._client.add_secret_version(parent=self._secret(name), payload=body)
            except gexc.NotFound:
                self._create(name)
                version = self._client.add_secret_version(parent=self._secret(name), payload=body)
        except VaultError:
            raise
        except Exception as exc:
            raise self._error("write", name, exc) from exc
        number = int(version.name.rsplit("/", 1)[-1])
        try:
            self.prune(name, self.keep_versions)
        except VaultError as exc:  # the new version is stored; old ones are retried on the next write
            log.warning("could not prune old versions of %s: %s", name, exc)
        return number

    def _create(self, name: str) -> None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.AlreadyExists):  # created concurrently: fine
            self._client.create_secret(
                parent=f"projects/{self.project}",
                secret_id=name,
                secret={"replication": {"automatic": {}}, "labels": {CREDENTIAL_LABEL[0]: CREDENTIAL_LABEL[1]}},
            )

    def versions(self, name: str) -> list[VersionInfo]:
        try:
            items = list(self._client.list_secret_versions(parent=self._secret(name)))
        except Exception as exc:
            raise self._error("versions", name, exc) from exc
        out = [
            VersionInfo(name, int(v.name.rsplit("/", 1)[-1]), _state_name(v.state), _to_datetime(v.create_time))
            for v in items
        ]
        return sorted(out, key=lambda v: v.version, reverse=True)

    def names(self) -> list[str]:
        """Secrets labelled ``sde-credential=true`` (the project may hold other secrets: DB passwords...).

        The label filter is applied by the server (``filter=labels.sde-credential=true``) and checked again
        here (an emulator may ignore the filter). Needs project-level ``secretmanager.secrets.list``
        (``roles/secretmanager.viewer``: metadata only); without it ``VaultListDenied`` is raised.
        """
        from google.api_core import exceptions as gexc

        try:
            secrets = list(self._client.list_secrets(
                request={"parent": f"projects/{self.project}", "filter": CREDENTIAL_FILTER}))
        except gexc.Forbidden as exc:  # PermissionDenied is a Forbidden (403)
            raise VaultListDenied(f"secret manager names: listing secrets is denied ({type(exc).__name__}); "
                                  "grant roles/secretmanager.viewer on the project") from exc
        except Exception as exc:
            raise self._error("names", None, exc) from exc
        key, value = CREDENTIAL_LABEL
        return sorted(s.name.rsplit("/", 1)[-1] for s in secrets if dict(s.labels).get(key) == value)

    def prune(self, name: str, keep: int) -> int:
        from google.api_core import exceptions as gexc

        retire = _plan_prune(self.versions(name), keep)
        for v in sorted(retire, key=lambda v: v.version):
            path = f"{self._secret(name)}/versions/{v.version}"
            try:
                if v.state == "ENABLED":
                    self._client.disable_secret_version(name=path)
                self._client.destroy_secret_version(name=path)
            except gexc.BadRequest as exc:
                # FailedPrecondition (gRPC) is a BadRequest; over REST a 400 FAILED_PRECONDITION arrives as
                # plain BadRequest (api-contracts §4.1). Destroyed concurrently by another writer: fine.
                if self._state_of(name, v.version) == "DESTROYED":
                    continue
                raise self._error("prune", name, exc) from exc
            except Exception as exc:
                raise self._error("prune", name, exc) from exc
        return len(retire)

    def _state_of(self, name: str, version: int) -> str | None:
        try:
            return next((v.state for v in self.versions(name) if v.version == version), None)
        except VaultError:
            return None


def make_vault(config: Config, connect: Callable[[], Any] | None = None) -> Vault:
    """The vault selected by ``config.vault_backend`` (``local`` | ``secretmanager``)."""
    if config.vault_backend == "secretmanager":
        config.require("gcp_project")
        return SecretManagerVault(str(config.gcp_project), endpoint=config.secret_manager_endpoint,
                                  keep_versions=config.vault_keep_versions)
    if connect is None:
        from shared import db

        def connect() -> Any:
            return db.connect(config)

    return LocalVault(connect, keep_versions=config.vault_keep_versions)
