"""Sandbox core over real HTTP: fault injection, ledger, clock, token authority and the admin endpoint."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from sandbox import FaultRule, Sandbox
from sandbox.core import TokenAuthority, scheduler_headers


@pytest.fixture
def yt(sandbox: Sandbox) -> dict[str, Any]:
    acc = sandbox.world.accounts("youtube")[0]
    token = sandbox.google_oauth.initial_credential(acc.credential, [acc])["access_token"]
    url = sandbox.url("youtube_data") + "/youtube/v3/channels"

    def call(timeout: float = 10, session: requests.Session | None = None) -> requests.Response:
        return (session or requests).get(url, params={"part": "id", "mine": "true"},
                                         headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    return {"acc": acc, "call": call}


def test_status_fault_times_and_after(sandbox: Sandbox, yt: dict[str, Any]) -> None:
    sandbox.faults.add(FaultRule("status", emulator="youtube_data", endpoint="channels.list", status=503,
                                 times=2, after=1))
    codes = [yt["call"]().status_code for _ in range(5)]
    assert codes == [200, 503, 503, 200, 200]
    body = None
    sandbox.faults.add(FaultRule("status", status=500, times=1, account=yt["acc"].account_id))
    r = yt["call"]()
    body = r.json()
    assert r.status_code == 500 and body["error"]["code"] == 500 and body["error"]["status"] == "INTERNAL"
    sandbox.faults.add(FaultRule("status", status=500, account="someone-else"))
    assert yt["call"]().status_code == 200


def test_probability(sandbox: Sandbox, yt: dict[str, Any]) -> None:
    rule = sandbox.faults.add(FaultRule("status", status=502, times=None, probability=0.5))
    codes = [yt["call"]().status_code for _ in range(40)]
    assert 0 < codes.count(502) < 40 and codes.count(502) == rule.fired


def test_reset_malformed_truncated(sandbox: Sandbox, yt: dict[str, Any]) -> None:
    sandbox.faults.add(FaultRule("reset"))
    with pytest.raises(requests.ConnectionError):
        yt["call"]()
    sandbox.faults.add(FaultRule("malformed"))
    r = yt["call"]()
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    sandbox.faults.add(FaultRule("truncated"))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        yt["call"]()
    assert yt["call"]().json()["items"]


def test_timeout_and_latency_against_short_client_timeouts(sandbox: Sandbox, yt: dict[str, Any]) -> None:
    sandbox.faults.add(FaultRule("timeout", delay=1.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        yt["call"](timeout=0.2)
    sandbox.faults.add(FaultRule("latency", delay=1.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        yt["call"](timeout=0.2)
    sandbox.faults.add(FaultRule("latency", delay=0.05))
    assert yt["call"](timeout=10).status_code == 200  # latency answers normally


def test_settings_latency(sandbox_factory: Any) -> None:
    sb = sandbox_factory(latency_ms=1000)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(sb.url("admin") + "/__sandbox/world", timeout=0.2)


def test_ledger_counts_calls_units_ids(sandbox: Sandbox, yt: dict[str, Any]) -> None:
    acc = yt["acc"]
    yt["call"]()
    token = sandbox.google_oauth.initial_credential(acc.credential, [acc])["access_token"]
    ids = [p.post_id for p in sandbox.world.posts(acc, sandbox.clock.now())[:7]]
    requests.get(sandbox.url("youtube_data") + "/youtube/v3/videos", params={"part": "id", "id": ",".join(ids)},
                 headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert sandbox.ledger.calls("youtube_data") == 2
    assert sandbox.ledger.units("youtube_data", account=acc.account_id) == 2
    assert sandbox.ledger.ids_per_call("youtube_data", "videos.list") == [7]
    assert sandbox.ledger.summary()["youtube_data"]["videos.list"] == {"calls": 1, "units": 1}
    sandbox.reset()
    assert sandbox.ledger.calls() == 0


def test_admin_endpoint(sandbox: Sandbox, yt: dict[str, Any]) -> None:
    admin = sandbox.env["SANDBOX_ADMIN_URL"] + "/__sandbox"
    yt["call"]()
    ledger = requests.get(f"{admin}/ledger", params={"emulator": "youtube_data"}, timeout=10).json()
    assert ledger["summary"]["youtube_data"]["channels.list"]["calls"] == 1
    assert ledger["entries"][0]["account"] == yt["acc"].account_id
    r = requests.post(f"{admin}/faults", json={"kind": "status", "status": 500, "emulator": "youtube_data"},
                      timeout=10)
    assert r.status_code == 200
    assert yt["call"]().status_code == 500
    assert requests.post(f"{admin}/faults", json={"kind": "nonsense"}, timeout=10).status_code == 400
    target = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    r = requests.post(f"{admin}/clock", json={"set": target.isoformat()}, timeout=10)
    assert abs(datetime.fromisoformat(r.json()["now"]) - target) < timedelta(minutes=1)
    assert yt["call"]().status_code == 401  # the token minted before the jump has expired
    r = requests.post(f"{admin}/tokens/revoke", json={"credential": yt["acc"].credential}, timeout=10)
    assert r.json()["affected"] >= 1
    world = requests.get(f"{admin}/world", timeout=10).json()
    assert any(a["account_id"] == yt["acc"].account_id for a in world["accounts"])
    assert "[[accounts]]" in requests.get(f"{admin}/registry", params={"platforms": "youtube"}, timeout=10).text
    requests.post(f"{admin}/reset", timeout=10)
    assert sandbox.ledger.calls("youtube_data") == 0 and sandbox.faults.rules() == []


def test_clock_and_token_authority(sandbox: Sandbox) -> None:
    tokens = TokenAuthority(sandbox.clock)
    g = tokens.issue("google", "access", "cred", timedelta(hours=1), "ya29.", accounts=["UC1"])
    assert tokens.check(g.token, "google") == ("ok", g)
    assert tokens.check(g.token, "meta")[0] == "invalid"
    assert tokens.check(None, "google")[0] == "missing"
    sandbox.clock.advance(hours=2)
    assert tokens.check(g.token, "google")[0] == "expired"
    r = tokens.issue("google", "refresh", "cred", None, "1//")
    tokens.revoke("cred")
    assert tokens.check(r.token, "google", ("refresh",))[0] == "revoked"
    frozen = datetime(2030, 1, 1, tzinfo=UTC)
    sandbox.clock.freeze(frozen)
    assert sandbox.clock.now() == frozen
    assert sandbox.clock.advance(days=1) == frozen + timedelta(days=1)
    with pytest.raises(ValueError):
        sandbox.clock.set(datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        FaultRule("bogus")


# -- robustness, admin validation, ledger bounds, scheduler headers ------------------------------------------


def test_handler_exception_is_the_emulators_own_500_and_is_ledgered(sandbox: Sandbox,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler bug (simulated by swapping a route's handler for one that raises) answers 500 JSON."""
    def boom(req: Any, m: Any) -> Any:
        raise RuntimeError("handler bug")

    cases = [
        ("youtube_data", "GET", "/youtube/v3/channels", lambda b: b["error"]["status"] == "INTERNAL"),
        ("tiktok", "GET", "/open_api/v1.3/business/get/", lambda b: b["code"] == 50000 and "request_id" in b),
        ("secret_manager", "GET", "/v1/projects/p/secrets", lambda b: b["error"]["status"] == "INTERNAL"),
        ("google_oauth", "POST", "/token", lambda b: b["error"] == "internal_failure"),
        ("meta", "GET", "/v26.0/oauth/access_token", lambda b: b["error"]["code"] == 2),
    ]
    for name, method, path, check in cases:
        emu = next(e for e in sandbox.emulators if e.name == name)
        found = emu.match(method, path)
        assert found is not None, name
        monkeypatch.setattr(found[0], "handler", boom)
        r = requests.request(method, sandbox.url(name) + path, timeout=10)
        assert r.status_code == 500 and check(r.json()), (name, r.text)
        assert sandbox.ledger.entries(name)[-1].status == 500


def test_admin_rejects_bad_bodies_with_400_naming_the_problem(sandbox: Sandbox) -> None:
    admin = sandbox.env["SANDBOX_ADMIN_URL"] + "/__sandbox"
    cases = [
        ("clock", {"set": "2030-01-01T00:00:00"}, "timezone"),
        ("clock", {"set": "yesterday"}, "set"),
        ("clock", {"advance": {"dayz": 1}}, "dayz"),
        ("clock", {"advance": {"days": "one"}}, "advance.days"),
        ("clock", {"jump": 1}, "jump"),
        ("clock", [1, 2], "JSON object"),
        ("faults", {"kind": "status", "status": "500"}, "status"),
        ("faults", {"kind": "status", "bogus": 1}, "bogus"),
        ("faults", {"status": 500}, "kind"),
        ("faults", {"kind": "status", "probability": 2}, "probability"),
        ("faults", ["status"], "JSON object"),
        ("tokens/expire", {}, "credential"),
        ("tokens/revoke", [], "JSON object"),
    ]
    for path, body, needle in cases:
        r = requests.post(f"{admin}/{path}", json=body, timeout=10)
        assert r.status_code == 400 and needle in r.json()["error"], (path, body, r.text)
    for path in ("clock", "faults", "tokens/expire"):
        r = requests.post(f"{admin}/{path}", data=b"{nope", headers={"Content-Type": "application/json"},
                          timeout=10)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    assert requests.get(f"{admin}/ledger", params={"limit": "x"}, timeout=10).status_code == 400
    ok = requests.post(f"{admin}/clock", json={"set": "2030-01-01T00:00:00+00:00", "advance": {"hours": 2}},
                       timeout=10)
    assert ok.status_code == 200 and ok.json()["now"].startswith("2030-01-01T02:00")


def test_ledger_counters_stay_exact_when_entries_are_evicted(sandbox_factory: Any) -> None:
    box = sandbox_factory(ledger_max_entries=5)
    acc = box.world.accounts("youtube")[0]
    token = box.google_oauth.initial_credential(acc.credential, [acc])["access_token"]
    for _ in range(12):
        requests.get(box.url("youtube_data") + "/youtube/v3/channels", params={"part": "id", "mine": "true"},
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    led = box.ledger
    assert led.calls("youtube_data") == 12 and led.units("youtube_data", account=acc.account_id) == 12
    assert len(led.entries()) == 5 and len(led.ids_per_call("youtube_data")) == 5
    assert led.summary()["youtube_data"]["channels.list"] == {"calls": 12, "units": 12}
    assert led.counters()[("youtube_data", "channels.list", acc.account_id)]["calls"] == 12
    admin = box.env["SANDBOX_ADMIN_URL"] + "/__sandbox/ledger"
    requests.get(admin, timeout=10)  # admin calls are in neither the summary nor the entries
    body = requests.get(admin, params={"limit": 2}, timeout=10).json()
    assert len(body["entries"]) == 2 and all(e["emulator"] != "admin" for e in body["entries"])
    assert "admin" not in body["summary"] and body["summary"]["youtube_data"]["channels.list"]["calls"] == 12
    assert body["max_entries"] == 5


def test_scheduler_headers_match_cloud_scheduler() -> None:
    at = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    h = scheduler_headers("projects/p/locations/l/jobs/youtube-daily", at)
    assert h["User-Agent"] == "Google-Cloud-Scheduler" and h["X-CloudScheduler"] == "true"
    assert h["X-CloudScheduler-JobName"] == "projects/p/locations/l/jobs/youtube-daily"
    assert h["X-CloudScheduler-ScheduleTime"] == "2026-11-27T09:00:00Z"
    assert h["Content-Type"] == "application/octet-stream"
    scheme, token = h["Authorization"].split(" ")
    parts = token.split(".")
    assert scheme == "Bearer" and len(parts) == 3
    claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    assert claims["iss"] == "https://accounts.google.com" and claims["email"].endswith(".iam.gserviceaccount.com")
    assert "T" in scheduler_headers("jobs/x")["X-CloudScheduler-ScheduleTime"]
