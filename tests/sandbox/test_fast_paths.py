"""The throughput fast paths answer exactly what the plain paths answer (bench/sandbox_rps.py).

Cached per-item JSON bytes (YouTube videos.list / playlistItems.list, Meta posts / IG media), the
array-from-bytes assembly, the HTTP header fast parser and the hand-built response head must be
byte-identical to encoding the objects / parsing with the stdlib / ``send_response`` + ``send_header``.
"""

from __future__ import annotations

import http.client
import io
import json
import random
import socket
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sandbox import FaultRule, Sandbox
from sandbox.core import Request, _parse_headers, dispatch, json_array_response, json_bytes, json_response


def _get(sb: Sandbox, emulator: Any, url: str, headers: dict[str, str]) -> Any:
    parts = urlsplit(url)
    msg = Message()
    for k, v in {"Host": "127.0.0.1:9", **headers}.items():
        msg[k] = v
    return dispatch(sb, emulator, Request("GET", parts.path, parse_qs(parts.query, keep_blank_values=True), msg,
                                          b""))


def test_json_array_response_is_json_response_of_the_items() -> None:
    items = [{"t": "é\u2028\x00", "n": [1.5, None, True, -0.0, 10**20]}, {}, "x", 3]
    for obj in ({"a": 1, "items": None, "z": {"q": "ü"}}, {"items": None},
                {"a": "\x00sandbox-raw-array\x00", "items": None}):  # the marker inside the data: slow path
        for its in (items, []):
            want = json_response({**obj, "items": its}, 201, {"X": "1"})
            got = json_array_response(obj, "items", [json_bytes(i) for i in its], 201, {"X": "1"})
            assert (got.status, got.body, got.headers) == (want.status, want.body, want.headers)


def test_header_fast_parser_is_the_stdlib_parser() -> None:
    cases = [b"Host: x\r\nA-B:  v v \r\nX: \r\n\r\n", b"Host: x\nY:z\n\n", b"A: b\r\n folded\r\n\r\n",
             b"A b: c\r\nD: e\r\n\r\n", b"A: b\rc\r\n\r\n", b"From x\r\nA: b\r\n\r\n", b":x\r\nA: b\r\n\r\n",
             b"nocolon\r\nA: b\r\n\r\n", b"A: \xe9\xff\r\n\r\n", b"A:b", b"", b"\r\n", b"A: b\r\nA: c\r\n\r\nbody",
             b"A:\t\tb\t \r\n\r\n", b"A: b\r\r\n\r\n"]
    rnd = random.Random(7)
    alphabet = b"Ab: \t\r\n:x-\xe9"
    cases += [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30))) + b"\r\n\r\n" for _ in range(3000)]
    for raw in cases:
        fa, fb = io.BytesIO(raw), io.BytesIO(raw)
        want, got = http.client.parse_headers(fa), _parse_headers(fb)
        vw, vg = dict(vars(want)), dict(vars(got))
        vw["defects"], vg["defects"] = [repr(d) for d in vw["defects"]], [repr(d) for d in vg["defects"]]
        assert vg == vw, raw
        assert fa.tell() == fb.tell()
    with pytest.raises(http.client.LineTooLong):
        _parse_headers(io.BytesIO(b"X: " + b"y" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        _parse_headers(io.BytesIO(b"X: y\r\n" * 101 + b"\r\n"))


def _yt(sb: Sandbox) -> tuple[dict[str, str], str, list[str]]:
    acc = sb.world.add_account("youtube", 70, private_ids=8, credential="youtube-fast")
    token = sb.google_oauth.initial_credential(acc.credential, [acc])["access_token"]
    h = {"Authorization": f"Bearer {token}"}
    up = acc.extra["uploads_playlist"]
    ids: list[str] = []
    page = ""
    while True:
        body = json.loads(_get(sb, sb.youtube_data, f"/youtube/v3/playlistItems?part=contentDetails&playlistId={up}"
                                                     f"&maxResults=50{page}", h).body)
        ids += [i["contentDetails"]["videoId"] for i in body["items"]]
        if "nextPageToken" not in body:
            return h, up, ids
        page = "&pageToken=" + body["nextPageToken"]


@pytest.mark.parametrize("omit_private", [True, False])
def test_youtube_cached_item_bytes_match_the_plain_rendering(sandbox_factory: Any, omit_private: bool) -> None:
    sb = sandbox_factory(youtube_omit_private_ids=omit_private)
    sb.clock.freeze(datetime(2025, 3, 10, 12, 0, 10, tzinfo=UTC))
    h, up, ids = _yt(sb)
    yd = sb.youtube_data
    urls = [f"/youtube/v3/videos?part={parts}&id={','.join(sel)}"
            for parts in ("snippet,statistics,contentDetails", "statistics,snippet,contentDetails", "id",
                          "status,statistics", "snippet")
            for sel in (ids[:50], ids[-45:] + ids[:3] + ["nope"])]
    urls += [f"/youtube/v3/playlistItems?part={parts}&playlistId={up}&maxResults={n}"
             for parts in ("contentDetails", "snippet,contentDetails,status") for n in (50, 7)]

    def plain(url: str) -> bytes:
        """The same call through the object path: a `fields` selector that keeps everything."""
        resp = _get(sb, yd, url + "&fields=kind,etag,nextPageToken,prevPageToken,items,pageInfo", h)
        assert resp.status == 200
        return resp.body

    for step in (timedelta(0), timedelta(seconds=30), timedelta(seconds=40), timedelta(minutes=-1),
                 timedelta(days=-3)):
        sb.clock.freeze(sb.clock.now() + step)
        for url in urls:
            fast = _get(sb, yd, url, h)
            assert fast.status == 200
            assert fast.body == plain(url), url
            assert fast.body == _get(sb, yd, url, h).body  # and again, from the caches


def test_meta_cached_post_bytes_match_across_minutes_and_repeat_cursor(sandbox: Sandbox) -> None:
    sb = sandbox
    creds = sb.credentials()
    meta = next(c for name, c in sorted(creds.items()) if name.startswith("meta-"))
    page = sorted(meta["metadata"]["page_tokens"])[0]
    h = {"Authorization": f"Bearer {meta['metadata']['page_tokens'][page]}"}
    ig = next(i for i, pg in meta["metadata"]["ig_page"].items() if pg == page)
    url = f"/v26.0/{page}/posts?fields=id,created_time,message,shares,insights.metric(post_media_view)&limit=5"
    first = json.loads(_get(sb, sb.meta, url, h).body)
    assert len(first["data"]) == 5 and "next" in first["paging"]
    nxt = urlsplit(first["paging"]["next"])
    after = f"{nxt.path}?{nxt.query}"
    sb.faults.add(FaultRule("repeat_cursor", emulator="meta", times=1))
    again = json.loads(_get(sb, sb.meta, after, h).body)
    assert again["paging"]["cursors"]["after"] == parse_qs(nxt.query)["after"][0]
    media = json.loads(_get(sb, sb.meta, f"/v26.0/{ig}/media?fields=id,like_count&limit=3", h).body)
    assert [set(m) for m in media["data"]] == [{"id", "like_count"}] * 3
    # the bytes are the compact encoding of what they decode to
    for body in (first, again, media):
        assert json.loads(json_bytes(body)) == body


def test_http_head_and_keep_alive_on_the_wire(sandbox: Sandbox) -> None:
    acc = sandbox.world.accounts("youtube")[0]
    token = sandbox.google_oauth.initial_credential(acc.credential, [acc])["access_token"]
    port = int(sandbox.url("youtube_data").rsplit(":", 1)[1])
    get = (f"GET /youtube/v3/channels?part=id&mine=true HTTP/1.1\r\nHost: h\r\n"
           f"Authorization: Bearer {token}\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(get + b"\r\n" + get + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    first, second = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    for head in (first, second):
        lines = head.split(b"\r\n\r\n")[0].split(b"\r\n")
        assert lines[0].startswith(b"Server: BaseHTTP/") and lines[1].startswith(b"Date: ")
        assert lines[2] == b"Content-Type: application/json; charset=UTF-8"
        assert lines[3].startswith(b"Content-Length: ")
    assert b"Connection: close" not in first and second.split(b"\r\n\r\n")[0].endswith(b"Connection: close")
