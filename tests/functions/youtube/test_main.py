"""The entry point's HTTP contract through the real functions-framework app: 400s write nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

TABLES = ("social.accounts", "social.posts", "social.post_metrics_daily", "social.account_metrics_daily",
          "social.sync_runs")

_future = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()


@pytest.mark.parametrize(("body", "raw", "field", "words"), [
    ({"bogus": 1}, None, "bogus", "unknown field"),
    ({"start_date": "2026-13-01"}, None, "start_date", "not a valid calendar date"),
    ({"start_date": "26-01-01"}, None, "start_date", "YYYY-MM-DD"),
    ({"start_date": "2026-02-10", "end_date": "2026-02-01"}, None, "start_date", "after end_date"),
    ({"start_date": "2026-01-01", "end_date": _future}, None, "end_date", "future"),
    ({"accounts": ["UCdoesnotexist0000000000"]}, None, "accounts", "UCdoesnotexist0000000000"),
    (None, b"{not json", "body", "not valid JSON"),
    (None, b"[1, 2]", "body", "JSON object"),
    ({"dry_run": "yes"}, None, "dry_run", "true or false"),
    ({"full_rescan": 1}, None, "full_rescan", "true or false"),
    ({"accounts": "UCabc"}, None, "accounts", "list"),
    ({"accounts": []}, None, "accounts", "non-empty"),
    ({"start_date": 20260101}, None, "start_date", "string"),
])
def test_bad_bodies_get_400_naming_the_field_and_write_nothing(yt: Any, body: Any, raw: bytes | None, field: str,
                                                                words: str) -> None:
    yt.use(yt.sandbox.world.accounts("youtube")[:2])
    status, answer = yt.post(body, raw=raw)
    assert status == 400, answer
    assert answer["error"] == "invalid_request"
    assert answer["field"] == field
    assert words in answer["message"]
    for table in TABLES:
        assert yt.count(table) == 0, table
    assert yt.sandbox.ledger.calls("youtube_data") == 0


def test_json_sent_as_octet_stream_is_accepted(yt: Any) -> None:
    chans = yt.use(yt.sandbox.world.accounts("youtube")[:2])
    status, answer = yt.post({"accounts": [chans[1].account_id], "dry_run": True},
                             headers={"Content-Type": "application/octet-stream"})
    assert status == 200, answer
    assert [a["account_id"] for a in answer["accounts"]] == [chans[1].account_id]


def test_empty_body_syncs_everything_and_a_manual_call_is_recorded_as_manual(yt: Any) -> None:
    chans = yt.use(yt.sandbox.world.accounts("youtube")[:1])
    resp = yt.client.post("/", data=b"", headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["trigger"] == "manual" and body["status"] == "ok"
    assert yt.q("SELECT account_id, trigger, status FROM social.sync_runs") == [[chans[0].account_id, "manual", "ok"]]


def test_full_rescan_relists_every_upload(yt: Any) -> None:
    yt.use(yt.sandbox.world.accounts("youtube")[:1])
    assert yt.post({})[0] == 200
    yt.sandbox.ledger.reset()
    status, body = yt.post({"full_rescan": True})
    assert status == 200 and body["totals"]["rows_inserted"] == 0
    assert yt.sandbox.ledger.calls("youtube_data", "playlistItems.list") == 3  # 120 videos / 50


def test_other_methods_are_refused(yt: Any) -> None:
    yt.use(yt.sandbox.world.accounts("youtube")[:1])
    resp = yt.client.put("/", data=b"{}")
    assert resp.status_code == 405
