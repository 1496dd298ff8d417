"""Secret Manager REST v1 emulator, through the real google-cloud-secret-manager client (transport="rest")."""

from __future__ import annotations

import base64
from typing import Any

import google_crc32c
import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import secretmanager

from sandbox import FaultRule, Sandbox


@pytest.fixture
def client(sandbox: Sandbox) -> secretmanager.SecretManagerServiceClient:
    return secretmanager.SecretManagerServiceClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options={"api_endpoint": sandbox.env["SECRET_MANAGER_ENDPOINT"]})


def test_official_client_lifecycle(sandbox: Sandbox, client: secretmanager.SecretManagerServiceClient) -> None:
    number, project = sandbox.settings.project_number, sandbox.settings.project_id
    secret = client.create_secret(parent=f"projects/{project}", secret_id="youtube-aurora",
                                  secret={"replication": {"automatic": {}}})
    assert secret.name == f"projects/{number}/secrets/youtube-aurora"
    v1 = client.add_secret_version(parent=secret.name, payload={"data": b'{"v": 1}',
                                                                "data_crc32c": google_crc32c.value(b'{"v": 1}')})
    assert v1.name.endswith("/versions/1") and v1.state == secretmanager.SecretVersion.State.ENABLED
    assert v1.client_specified_payload_checksum
    v2 = client.add_secret_version(parent=f"projects/{project}/secrets/youtube-aurora", payload={"data": b"two"})
    latest = client.access_secret_version(name=f"projects/{project}/secrets/youtube-aurora/versions/latest")
    assert latest.name == v2.name and latest.payload.data == b"two"
    assert latest.payload.data_crc32c == google_crc32c.value(b"two")
    listed = list(client.list_secret_versions(request={"parent": secret.name, "page_size": 1}))
    assert [v.name for v in listed] == [v2.name, v1.name]  # newest first, across pages

    disabled = client.disable_secret_version(name=v2.name)
    assert disabled.state == secretmanager.SecretVersion.State.DISABLED
    with pytest.raises(gexc.BadRequest, match="is in DISABLED state"):
        client.access_secret_version(name=f"{secret.name}/versions/latest")
    enabled = list(client.list_secret_versions(request={"parent": secret.name, "filter": "state:ENABLED"}))
    assert [v.name for v in enabled] == [v1.name]
    client.enable_secret_version(name=v2.name)
    assert client.access_secret_version(name=v2.name).payload.data == b"two"

    destroyed = client.destroy_secret_version(name=v1.name)
    assert destroyed.state == secretmanager.SecretVersion.State.DESTROYED and destroyed.destroy_time
    with pytest.raises(gexc.BadRequest, match="is in DESTROYED state"):
        client.access_secret_version(name=v1.name)
    with pytest.raises(gexc.NotFound, match=r"Secret Version \[.*/versions/9\] not found"):
        client.get_secret_version(name=f"{secret.name}/versions/9")
    client.delete_secret(name=secret.name)
    with pytest.raises(gexc.NotFound, match=rf"Secret \[projects/{number}/secrets/youtube-aurora\] not found or "
                                            "has no versions"):
        client.access_secret_version(name=f"{secret.name}/versions/latest")
    assert sandbox.ledger.calls("secret_manager", account="youtube-aurora") >= 12


def test_crc_mismatch_and_size_cap(sandbox: Sandbox, client: secretmanager.SecretManagerServiceClient) -> None:
    secret = client.create_secret(parent="projects/sde-sandbox", secret_id="s1",
                                  secret={"replication": {"automatic": {}}})
    with pytest.raises(gexc.BadRequest):
        client.add_secret_version(parent=secret.name, payload={"data": b"x", "data_crc32c": 12345})
    with pytest.raises(gexc.BadRequest):
        client.add_secret_version(parent=secret.name, payload={"data": b"x" * (64 * 1024 + 1)})
    client.add_secret_version(parent=secret.name, payload={"data": b"x" * (64 * 1024)})
    with pytest.raises(gexc.Conflict, match="already exists"):  # REST maps by HTTP status (409)
        client.create_secret(parent="projects/sde-sandbox", secret_id="s1", secret={"replication": {"automatic": {}}})


def test_raw_rest_enum_strings_regional_and_errors(sandbox: Sandbox) -> None:
    base = sandbox.env["SECRET_MANAGER_ENDPOINT"] + "/v1/projects/sde-sandbox"
    number = sandbox.settings.project_number
    r = requests.post(f"{base}/locations/us-east1/secrets", params={"secretId": "r1"}, json={}, timeout=10)
    assert r.json()["name"] == f"projects/{number}/locations/us-east1/secrets/r1"
    r = requests.post(f"{base}/locations/us-east1/secrets/r1:addVersion",
                      json={"payload": {"data": base64.b64encode(b"hi").decode()}}, timeout=10)
    assert r.json()["state"] == "ENABLED"  # plain JSON: enum strings
    r = requests.get(f"{base}/locations/us-east1/secrets/r1/versions/1:access", timeout=10)
    assert base64.b64decode(r.json()["payload"]["data"]) == b"hi"
    assert r.json()["payload"]["dataCrc32c"] == str(google_crc32c.value(b"hi"))
    r = requests.get(f"{base}/secrets/r1/versions/latest:access", timeout=10)  # global, not regional
    assert r.status_code == 404
    assert r.json() == {"error": {"code": 404, "status": "NOT_FOUND",
                                  "message": f"Secret [projects/{number}/secrets/r1] not found or has no versions."}}
    r = requests.get(sandbox.env["SECRET_MANAGER_ENDPOINT"] + "/v1/projects/other/secrets/x/versions/1:access",
                     timeout=10)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = requests.post(f"{base}/secrets", params={"secretId": "bad id!"}, json={}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_etag_mismatch_through_official_client_and_setting(sandbox: Sandbox, sandbox_factory: Any,
                                                           client: secretmanager.SecretManagerServiceClient) -> None:
    sandbox.secret_manager.put("etagged", b"v1")
    name = f"projects/{sandbox.settings.project_id}/secrets/etagged/versions/1"
    current = client.get_secret_version(name=name).etag
    with pytest.raises(gexc.Conflict, match="etag"):  # 409 ABORTED by default
        client.disable_secret_version(request={"name": name, "etag": '"stale"'})
    assert client.disable_secret_version(request={"name": name, "etag": current}).state.name == "DISABLED"
    with pytest.raises(gexc.Conflict):
        client.delete_secret(request={"name": f"projects/{sandbox.settings.project_id}/secrets/etagged",
                                      "etag": '"stale"'})
    box = sandbox_factory(secret_manager_etag_mismatch_status=400,
                          secret_manager_etag_mismatch_code="FAILED_PRECONDITION")
    box.secret_manager.put("etagged", b"v1")
    url = box.env["SECRET_MANAGER_ENDPOINT"] + "/v1/projects/sde-sandbox/secrets/etagged/versions/1:disable"
    r = requests.post(url, json={"etag": '"stale"'}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["status"] == "FAILED_PRECONDITION"


def test_repeat_cursor_fault_on_list_pages(sandbox: Sandbox) -> None:
    base = sandbox.env["SECRET_MANAGER_ENDPOINT"] + "/v1/projects/sde-sandbox"
    for k in range(5):
        sandbox.secret_manager.put(f"list-{k}", b"x")
        sandbox.secret_manager.put("many", str(k).encode())
    for path, endpoint, key in ((f"{base}/secrets", "secrets.list", "secrets"),
                                (f"{base}/secrets/many/versions", "versions.list", "versions")):
        first = requests.get(path, params={"pageSize": 2}, timeout=10).json()
        sandbox.faults.add(FaultRule("repeat_cursor", emulator="secret_manager", endpoint=endpoint))
        page = requests.get(path, params={"pageSize": 2, "pageToken": first["nextPageToken"]}, timeout=10).json()
        assert page["nextPageToken"] == first["nextPageToken"]
        again = requests.get(path, params={"pageSize": 2, "pageToken": page["nextPageToken"]}, timeout=10).json()
        assert again[key] == page[key] and again["nextPageToken"] != first["nextPageToken"]


def test_non_object_json_bodies_are_400(sandbox: Sandbox) -> None:
    base = sandbox.env["SECRET_MANAGER_ENDPOINT"] + "/v1/projects/sde-sandbox"
    sandbox.secret_manager.put("body", b"x")
    for url in (f"{base}/secrets/body:addVersion", f"{base}/secrets/body/versions/1:disable",
                f"{base}/secrets?secretId=fresh"):
        r = requests.post(url, data=b"[1]", headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT", r.text


def test_list_secrets_label_filter(sandbox: Sandbox) -> None:
    """secrets.list with filter=labels.KEY=VALUE returns only the labelled secrets (as the vault asks)."""
    base = f"{sandbox.env['SECRET_MANAGER_ENDPOINT']}/v1/projects/{sandbox.settings.project_id}/secrets"
    for sid, labels in (("labelled", {"sde-credential": "true"}), ("other", {})):
        r = requests.post(base, params={"secretId": sid}, json={"replication": {"automatic": {}}, "labels": labels},
                          timeout=10)
        assert r.status_code == 200, r.text
    names = [s["name"].rsplit("/", 1)[-1] for s in
             requests.get(base, params={"filter": "labels.sde-credential=true"}, timeout=10).json()["secrets"]]
    assert names == ["labelled"]
    assert requests.get(base, params={"filter": "name:x OR 1"}, timeout=10).status_code == 400
