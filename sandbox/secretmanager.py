"""Secret Manager REST v1: enough for the real ``google-cloud-secret-manager`` client (transport="rest").

Wire format: api-contracts.md §4.1 and gcp-notes.md §5. Names are returned with the project NUMBER;
requests may use the project id or number. ``$alt=json;enum-encoding=int`` (what the official REST
client sends) is honoured: enums come back as integers then, as strings otherwise. No auth is checked
(the client runs with ``AnonymousCredentials``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import google_crc32c

from sandbox.core import Emulator, FaultRule, Request, Response, json_response, repeat_cursor

if TYPE_CHECKING:
    from sandbox.server import Sandbox

MAX_PAYLOAD = 64 * 1024
STATE_INT = {"STATE_UNSPECIFIED": 0, "ENABLED": 1, "DISABLED": 2, "DESTROYED": 3}
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")

_P = r"/v1/projects/(?P<project>[^/:]+)(?:/locations/(?P<location>[^/:]+))?"
_S = _P + r"/secrets/(?P<account>[^/:]+)"
_V = _S + r"/versions/(?P<version>[^/:]+)"


def sm_error(status: int, message: str, grpc_status: str | None = None) -> Response:
    return json_response({"error": {"code": status, "message": message,
                                    "status": grpc_status or STATUS_NAMES.get(status, "UNKNOWN")}}, status)


def timestamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Version:
    number: int
    data: bytes | None
    crc: int
    client_checksum: bool
    create_time: datetime
    state: str = "ENABLED"
    destroy_time: datetime | None = None
    etag_n: int = 1


@dataclass
class _Secret:
    secret_id: str
    location: str | None
    create_time: datetime
    body: dict[str, Any]
    versions: list[_Version] = field(default_factory=list)
    etag_n: int = 1


class SecretManagerEmulator(Emulator):
    name = "secret_manager"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(sandbox)
        self.sb: Sandbox = sandbox
        self._lock = threading.RLock()
        self._secrets: dict[tuple[str | None, str], _Secret] = {}
        r = self.route
        r("POST", _P + r"/secrets", "secrets.create", self._create)
        r("GET", _P + r"/secrets", "secrets.list", self._list_secrets)
        r("GET", _S, "secrets.get", self._get_secret)
        r("DELETE", _S, "secrets.delete", self._delete_secret)
        r("POST", _S + r":addVersion", "secrets.addVersion", self._add_version)
        r("GET", _S + r"/versions", "versions.list", self._list_versions)
        r("GET", _V + r":access", "versions.access", self._access)
        r("GET", _V, "versions.get", self._get_version)
        r("POST", _V + r":(?P<action>disable|enable|destroy)", "versions.state", self._set_state)

    def reset(self) -> None:
        with self._lock:
            self._secrets.clear()

    # -- convenience for tests and the sandbox itself -----------------------------------------------------
    def put(self, secret_id: str, data: bytes) -> int:
        """Create the secret if needed and add a version; returns the version number."""
        with self._lock:
            now = self.sb.clock.now()
            sec = self._secrets.get((None, secret_id))
            if sec is None:
                sec = _Secret(secret_id, None, now, {"replication": {"automatic": {}}})
                self._secrets[(None, secret_id)] = sec
            v = _Version(len(sec.versions) + 1, data, google_crc32c.value(data), False, now)
            sec.versions.append(v)
            return v.number

    def payload(self, secret_id: str, version: str = "latest") -> bytes | None:
        with self._lock:
            sec = self._secrets.get((None, secret_id))
            if sec is None or not sec.versions:
                return None
            v = sec.versions[-1] if version == "latest" else next(
                (x for x in sec.versions if str(x.number) == version), None)
            return v.data if v else None

    # -- renderings ------------------------------------------------------------------------------------
    def error_response(self, status: int, code: int | str | None, message: str) -> Response:
        return sm_error(status, message, code if isinstance(code, str) else None)

    def throttle_response(self, rule: FaultRule) -> Response:
        return sm_error(rule.status or 429, rule.message or "Quota exceeded for quota metric 'Access requests' "
                        "and limit 'Access requests per minute per project'.", "RESOURCE_EXHAUSTED")

    def not_found(self, req: Request) -> Response:
        return sm_error(404, f"The requested URL {req.path} was not found on this server.")

    def _etag_mismatch(self) -> Response:
        s = self.sb.settings  # status and code are [U] (contract §4.1): settings
        return sm_error(s.secret_manager_etag_mismatch_status,
                        "The etag provided in the request does not match the current etag.",
                        s.secret_manager_etag_mismatch_code)

    def _repeat(self, req: Request, endpoint: str, account: str | None) -> bool:
        return bool(req.arg("pageToken")) and repeat_cursor(self.sb, self.name, endpoint, account)

    def _project(self, req: Request, m: re.Match[str]) -> str | None:
        p = m.group("project")
        s = self.sb.settings
        return s.project_number if p in (s.project_id, s.project_number) else None

    def _denied(self, m: re.Match[str], permission: str, req: Request) -> Response:
        return sm_error(403, f"Permission '{permission}' denied for resource '{req.path[4:].split(':')[0]}' "
                        "(or it may not exist).")

    @staticmethod
    def _ints(req: Request) -> bool:
        return "enum-encoding=int" in (req.arg("$alt") or "")

    def _secret_name(self, sec: _Secret) -> str:
        loc = f"/locations/{sec.location}" if sec.location else ""
        return f"projects/{self.sb.settings.project_number}{loc}/secrets/{sec.secret_id}"

    def _secret_json(self, sec: _Secret) -> dict[str, Any]:
        out = {k: v for k, v in sec.body.items() if k in ("replication", "labels", "annotations", "topics",
                                                             "ttl", "expireTime", "versionAliases",
                                                             "versionDestroyTtl", "rotation")}
        out.setdefault("replication", {"automatic": {}})
        return {"name": self._secret_name(sec), **out, "createTime": timestamp(sec.create_time),
                "etag": _etag(self._secret_name(sec), sec.etag_n)}

    def _version_json(self, sec: _Secret, v: _Version, ints: bool) -> dict[str, Any]:
        name = f"{self._secret_name(sec)}/versions/{v.number}"
        out: dict[str, Any] = {"name": name, "createTime": timestamp(v.create_time),
                               "state": STATE_INT[v.state] if ints else v.state,
                               "replicationStatus": {"automatic": {}},
                               "etag": _etag(name, v.etag_n), "clientSpecifiedPayloadChecksum": v.client_checksum}
        if v.destroy_time is not None:
            out["destroyTime"] = timestamp(v.destroy_time)
        return out

    def _find(self, req: Request, m: re.Match[str]) -> _Secret | None:
        return self._secrets.get((m.group("location"), m.group("account")))

    def _missing_secret(self, m: re.Match[str], versions: bool = False) -> Response:
        loc = f"/locations/{m.group('location')}" if m.group("location") else ""
        name = f"projects/{self.sb.settings.project_number}{loc}/secrets/{m.group('account')}"
        return sm_error(404, f"Secret [{name}] not found" + (" or has no versions." if versions else "."))

    def _resolve(self, sec: _Secret, version: str) -> _Version | None:
        if version == "latest":
            return sec.versions[-1] if sec.versions else None
        if version.isdigit():
            n = int(version)
            if 1 <= n <= len(sec.versions):
                return sec.versions[n - 1]
        return None

    # -- secrets ---------------------------------------------------------------------------------------
    def _create(self, req: Request, m: re.Match[str]) -> Response:
        if self._project(req, m) is None:
            return self._denied(m, "secretmanager.secrets.create", req)
        secret_id = req.arg("secretId") or ""
        req.account = secret_id or None
        if not SECRET_ID.fullmatch(secret_id):
            return sm_error(400, "Secret ID must be 1-255 characters of letters, numbers, dashes and underscores."
                            if secret_id else "Secret ID must be set.")
        try:
            body = req.json_object()
        except ValueError:
            return sm_error(400, "Invalid JSON payload received.")
        key = (m.group("location"), secret_id)
        with self._lock:
            if key in self._secrets:
                loc = f"/locations/{key[0]}" if key[0] else ""
                return sm_error(409, f"Secret [projects/{self.sb.settings.project_number}{loc}/secrets/{secret_id}]"
                                " already exists.")
            sec = _Secret(secret_id, m.group("location"), self.sb.clock.now(), body)
            self._secrets[key] = sec
            return json_response(self._secret_json(sec))

    def _get_secret(self, req: Request, m: re.Match[str]) -> Response:
        if self._project(req, m) is None:
            return self._denied(m, "secretmanager.secrets.get", req)
        with self._lock:
            sec = self._find(req, m)
            return json_response(self._secret_json(sec)) if sec else self._missing_secret(m)

    def _list_secrets(self, req: Request, m: re.Match[str]) -> Response:
        if self._project(req, m) is None:
            return self._denied(m, "secretmanager.secrets.list", req)
        flt = (req.arg("filter") or "").strip()
        want: tuple[str, str] | None = None
        if flt:  # the subset of the list filter syntax we need: labels.KEY=VALUE (or labels.KEY:VALUE)
            fm = re.fullmatch(r"labels\.([a-z0-9_-]+)\s*[:=]\s*([A-Za-z0-9_-]+)", flt)
            if not fm:
                return sm_error(400, f"Invalid filter: {flt}")
            want = (fm.group(1), fm.group(2))
        with self._lock:
            items = [self._secret_json(s) for (loc, _), s in sorted(self._secrets.items(), key=lambda kv: kv[0][1])
                     if loc == m.group("location")
                     and (want is None or (s.body.get("labels") or {}).get(want[0]) == want[1])]
        return _list_response(req, items, "secrets", self._repeat(req, "secrets.list", None))

    def _delete_secret(self, req: Request, m: re.Match[str]) -> Response:
        if self._project(req, m) is None:
            return self._denied(m, "secretmanager.secrets.delete", req)
        with self._lock:
            sec = self._find(req, m)
            if sec is None:
                return self._missing_secret(m)
            wanted = req.arg("etag")
            if wanted and wanted != _etag(self._secret_name(sec), sec.etag_n):
                return self._etag_mismatch()
            del self._secrets[(m.group("location"), m.group("account"))]
        return json_response({})

    # -- versions --------------------------------------------------------------------------------------
    def _add_version(self, req: Request, m: re.Match[str]) -> Response:
        if self._project(req, m) is None:
            return self._denied(m, "secretmanager.versions.add", req)
        try:
            body = req.json_object()
        except ValueError:
            return sm_error(400, "Invalid JSON payload received.")
        try:
            payload = body.get("payload") or {}
            data = base64.b64decode(payload.get("data") or "", validate=True)
        except (ValueError, AttributeError, TypeError, binascii.Error):
            return sm_error(400, "Invalid value at 'payload.data' (TYPE_BYTES), Base64 decoding failed.")
        if len(data) > MAX_PAYLOAD:
            return sm_error(400, f"Secret Payload cannot be larger than 64KiB (got {len(data)} bytes).")
        crc = google_crc32c.value(data)
        given = payload.get("dataCrc32c")
        if given is not None:
            try:
                given_n = int(given)
            except (TypeError, ValueError):
                return sm_error(400, f"Invalid value at 'payload.data_crc32c' (TYPE_INT64), \"{given}\"")
            if given_n != crc:
                # [U] exact wording of the real checksum-mismatch error
                return sm_error(400, "Checksum mismatch: the data_crc32c does not match the payload data.")
        with self._lock:
            sec = self._find(req, m)
            if sec is None:
                return self._missing_secret(m)
            v = _Version(len(sec.versions) + 1, data, crc, given is not None, self.sb.clock.now())
            sec.versions.append(v)
            return json_response(self._version_json(sec, v, self._ints(req)))

    def _list_versions(self, req: Request, m: re.Match[str]) -> Response:
        if self._project(req, m) is None:
            return self._denied(m, "secretmanager.versions.list", req)
        flt = (req.arg("filter") or "").strip()
        want_state = None
        if flt:
            fm = re.fullmatch(r"state\s*[:=]\s*(ENABLED|DISABLED|DESTROYED)", flt)
            if not fm:
                return sm_error(400, f"Invalid filter: {flt}")
            want_state = fm.group(1)
        ints = self._ints(req)
        with self._lock:
            sec = self._find(req, m)
            if sec is None:
                return self._missing_secret(m)
            items = [self._version_json(sec, v, ints) for v in reversed(sec.versions)
                     if want_state is None or v.state == want_state]
        return _list_response(req, items, "versions",
                              self._repeat(req, "versions.list", m.group("account")))

    def _lookup_version(self, req: Request, m: re.Match[str], permission: str) -> tuple[_Secret, _Version] | Response:
        """The (secret, version) a versions.* request names, or the API's error; call under ``self._lock``."""
        if self._project(req, m) is None:
            return self._denied(m, permission, req)
        sec = self._find(req, m)
        if sec is None:
            return self._missing_secret(m, versions=True)
        v = self._resolve(sec, m.group("version"))
        if v is None:
            return self._missing_version(sec, m)
        return sec, v

    def _get_version(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            found = self._lookup_version(req, m, "secretmanager.versions.get")
            if isinstance(found, Response):
                return found
            sec, v = found
            return json_response(self._version_json(sec, v, self._ints(req)))

    def _missing_version(self, sec: _Secret, m: re.Match[str]) -> Response:
        if m.group("version") == "latest":
            return self._missing_secret(m, versions=True)
        return sm_error(404, f"Secret Version [{self._secret_name(sec)}/versions/{m.group('version')}] not found.")

    def _access(self, req: Request, m: re.Match[str]) -> Response:
        with self._lock:
            found = self._lookup_version(req, m, "secretmanager.versions.access")
            if isinstance(found, Response):
                return found
            sec, v = found
            name = f"{self._secret_name(sec)}/versions/{v.number}"
            if v.state != "ENABLED" or v.data is None:
                return sm_error(400, f"Secret Version [{name}] is in {v.state} state.", "FAILED_PRECONDITION")
            return json_response({"name": name, "payload": {"data": base64.b64encode(v.data).decode(),
                                                            "dataCrc32c": str(v.crc)}})

    def _set_state(self, req: Request, m: re.Match[str]) -> Response:
        action = m.group("action")
        if self._project(req, m) is None:
            return self._denied(m, f"secretmanager.versions.{action}", req)
        try:
            body = req.json_object()
        except ValueError:
            return sm_error(400, "Invalid JSON payload received.")
        with self._lock:
            found = self._lookup_version(req, m, f"secretmanager.versions.{action}")
            if isinstance(found, Response):
                return found
            sec, v = found
            name = f"{self._secret_name(sec)}/versions/{v.number}"
            wanted = body.get("etag")
            if wanted and wanted != _etag(name, v.etag_n):
                return self._etag_mismatch()
            if v.state == "DESTROYED" and action != "destroy":
                return sm_error(400, f"Secret Version [{name}] is in DESTROYED state.", "FAILED_PRECONDITION")
            if action == "destroy":
                if v.state != "DESTROYED":
                    v.state, v.data, v.destroy_time = "DESTROYED", None, self.sb.clock.now()
            else:
                v.state = "DISABLED" if action == "disable" else "ENABLED"
            v.etag_n += 1
            return json_response(self._version_json(sec, v, self._ints(req)))


def _etag(name: str, n: int) -> str:
    return '"' + hashlib.blake2b(f"{name}#{n}".encode(), digest_size=7).hexdigest() + '"'


def _list_response(req: Request, items: list[dict[str, Any]], key: str, repeat: bool = False) -> Response:
    """A list method's answer: one page of ``items`` under ``key``; empty lists are ``{}`` like the real API.
    ``repeat`` (injected fault): the page answers the request's own ``pageToken`` as ``nextPageToken``."""
    page, token, err = _page(req, items)
    if err:
        return err
    if repeat:
        token = req.arg("pageToken")
    out: dict[str, Any] = {key: page, "totalSize": len(items)} if page else {}
    if token:
        out["nextPageToken"] = token
    return json_response(out)


def _page(req: Request, items: list[Any]) -> tuple[list[Any], str | None, Response | None]:
    raw_size, token = req.arg("pageSize"), req.arg("pageToken")
    try:
        size = int(raw_size) if raw_size else 25_000
        offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return [], None, sm_error(400, "Invalid page size or page token.")
    if size < 0 or offset < 0:
        return [], None, sm_error(400, "Invalid page size or page token.")
    size = size or 25_000
    page = items[offset:offset + size]
    nxt = offset + size
    return page, (base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < len(items) else None), None
