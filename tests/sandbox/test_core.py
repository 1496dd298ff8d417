"""Sandbox core over real HTTP: fault injection, ledger, clock, token authority and the admin endpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from sandbox import FaultRule, Sandbox
from sandbox.core import TokenAuthority


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
