"""Paginators: every style ends (done, loop error or page limit); never an endless loop.

Most tests drive the generators with in-memory page sequences (the paginators do no I/O themselves);
one test wires ``paginate_next_link`` to a real ``ApiSession`` over loopback HTTP.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.config import Config
from shared.errors import ApiError, FatalApiError, RetriableApiError
from shared.http import ApiSession
from shared.pagination import (
    PaginationError,
    PaginationLimitError,
    PaginationLoopError,
    paginate_cursor,
    paginate_next_link,
    paginate_page_token,
)

# --- TikTok-style cursor ---------------------------------------------------------------------------------


def tiktok_pages(pages: list[dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    calls: list[Any] = []

    def fetch(cursor: Any) -> dict[str, Any]:
        calls.append(cursor)
        return pages[len(calls) - 1]

    return fetch, calls


def tiktok(fetch: Callable[[Any], dict[str, Any]], max_pages: int = 10) -> Iterator[Any]:
    return paginate_cursor(
        fetch,
        get_items=lambda p: p["data"]["videos"],
        get_cursor=lambda p: p["data"].get("cursor"),
        has_more=lambda p: bool(p["data"].get("has_more")),
        max_pages=max_pages,
        platform="tiktok",
        endpoint="video.list",
    )


def page(videos: list[int], cursor: int | None, has_more: bool) -> dict[str, Any]:
    return {"code": 0, "data": {"videos": videos, "cursor": cursor, "has_more": has_more}}


def test_cursor_follows_has_more_even_with_short_and_empty_pages() -> None:
    fetch, calls = tiktok_pages(
        [page([1, 2, 3], 3000, True), page([4], 2000, True), page([], 1000, True), page([5, 6], 500, False)]
    )
    assert list(tiktok(fetch)) == [[1, 2, 3], [4], [], [5, 6]]
    assert calls == [None, 3000, 2000, 1000]


def test_cursor_single_page() -> None:
    fetch, calls = tiktok_pages([page([1], 99, False)])
    assert list(tiktok(fetch)) == [[1]]
    assert calls == [None]


def test_cursor_repeated_raises_loop_error_after_yielding_what_was_fetched() -> None:
    fetch, calls = tiktok_pages([page([1], 3000, True), page([2], 2000, True), page([3], 3000, True)])
    seen: list[Any] = []
    with pytest.raises(PaginationLoopError, match="Loop detected in pagination") as info:
        for items in tiktok(fetch):
            seen.append(items)
    assert seen == [[1], [2], [3]]
    assert calls == [None, 3000, 2000]
    err = info.value
    assert isinstance(err, FatalApiError) and isinstance(err, ApiError)
    assert not isinstance(err, RetriableApiError)
    assert err.platform == "tiktok" and err.endpoint == "video.list"


def test_cursor_same_cursor_twice_in_a_row_is_a_loop() -> None:
    fetch, _ = tiktok_pages([page([1], 3000, True), page([1], 3000, True)])
    with pytest.raises(PaginationLoopError):
        list(tiktok(fetch))


def test_cursor_has_more_without_cursor_is_an_error() -> None:
    fetch, _ = tiktok_pages([page([1], None, True)])
    with pytest.raises(PaginationError, match="no cursor"):
        list(tiktok(fetch))


def test_cursor_max_pages() -> None:
    fetch, calls = tiktok_pages([page([i], 10_000 - i, True) for i in range(10)])
    with pytest.raises(PaginationLimitError, match="max_pages=3"):
        list(tiktok(fetch, max_pages=3))
    assert len(calls) == 3


def test_cursor_exactly_max_pages_is_fine() -> None:
    fetch, _ = tiktok_pages([page([1], 30, True), page([2], 20, True), page([3], 10, False)])
    assert list(tiktok(fetch, max_pages=3)) == [[1], [2], [3]]


@pytest.mark.parametrize("bad", [0, -1])
def test_max_pages_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        list(paginate_page_token(lambda t: {}, max_pages=bad))
    with pytest.raises(ValueError):
        list(paginate_next_link(lambda: {}, lambda u: {}, max_pages=bad))


# --- Meta next link --------------------------------------------------------------------------------------


def meta(data: list[int], after: str, next_url: str | None) -> dict[str, Any]:
    paging: dict[str, Any] = {"cursors": {"before": "B", "after": after}}
    if next_url:
        paging["next"] = next_url
    return {"data": data, "paging": paging}


def test_next_link_stops_when_next_is_absent_even_if_after_cursor_remains() -> None:
    pages = {
        "u2": meta([3, 4], "c2", "u3"),
        "u3": meta([5], "c3", None),  # last page: cursors.after still present, next gone
    }
    fetched: list[str] = []

    def fetch_url(url: str) -> dict[str, Any]:
        fetched.append(url)
        return pages[url]

    result = list(paginate_next_link(lambda: meta([1, 2], "c1", "u2"), fetch_url, max_pages=10))
    assert result == [[1, 2], [3, 4], [5]]
    assert fetched == ["u2", "u3"]


def test_next_link_loop_is_detected_and_the_token_is_not_in_the_message() -> None:
    url = "https://graph.facebook.com/v26.0/1/posts?access_token=EAAsecret&after=c1"
    pages = {url: meta([2], "c1", url)}
    with pytest.raises(PaginationLoopError, match="Loop detected") as info:
        list(paginate_next_link(lambda: meta([1], "c0", url), pages.__getitem__, max_pages=10, platform="facebook"))
    assert "EAAsecret" not in str(info.value)
    assert "access_token=REDACTED" in str(info.value)
    assert info.value.platform == "facebook"


def test_next_link_max_pages() -> None:
    fetched: list[str] = []

    def fetch_url(url: str) -> dict[str, Any]:
        fetched.append(url)
        n = int(url[1:])
        return meta([n], f"c{n}", f"u{n + 1}")

    with pytest.raises(PaginationLimitError):
        list(paginate_next_link(lambda: meta([0], "c0", "u1"), fetch_url, max_pages=4))
    assert fetched == ["u1", "u2", "u3"]  # 4 pages fetched in all, the 5th never requested


def test_next_link_custom_items_and_missing_paging() -> None:
    assert list(paginate_next_link(lambda: {"data": [1]}, lambda u: {}, max_pages=1)) == [[1]]
    assert list(
        paginate_next_link(
            lambda: {"values": [7], "paging": None}, lambda u: {}, max_pages=1, get_items=lambda p: p["values"]
        )
    ) == [[7]]


# --- YouTube page token ----------------------------------------------------------------------------------


def yt(items: list[int], token: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "youtube#playlistItemListResponse", "items": items}
    if token is not None:
        body["nextPageToken"] = token
    return body


def test_page_token_follows_until_absent_or_empty() -> None:
    pages = {None: yt([1], "A"), "A": yt([2], "B"), "B": yt([3], "")}
    calls: list[str | None] = []

    def fetch(token: str | None) -> dict[str, Any]:
        calls.append(token)
        return pages[token]

    assert list(paginate_page_token(fetch, max_pages=5)) == [[1], [2], [3]]
    assert calls == [None, "A", "B"]


def test_page_token_loop() -> None:
    pages = {None: yt([1], "A"), "A": yt([2], "B"), "B": yt([3], "A")}
    with pytest.raises(PaginationLoopError, match="page token A repeated"):
        list(paginate_page_token(pages.__getitem__, max_pages=50, platform="youtube"))


def test_page_token_max_pages() -> None:
    calls: list[str | None] = []

    def fetch(token: str | None) -> dict[str, Any]:
        calls.append(token)
        return yt([len(calls)], f"T{len(calls)}")

    with pytest.raises(PaginationLimitError):
        list(paginate_page_token(fetch, max_pages=2))
    assert calls == [None, "T1"]


def test_generators_are_lazy() -> None:
    calls: list[str | None] = []

    def fetch(token: str | None) -> dict[str, Any]:
        calls.append(token)
        return yt([1], f"T{len(calls)}")

    gen = paginate_page_token(fetch, max_pages=100)
    assert calls == []
    next(gen)
    assert calls == [None]


# --- wired to a real session ------------------------------------------------------------------------------


class _Graph(BaseHTTPRequestHandler):
    """Three pages of a Meta-like edge; the last keeps ``cursors.after`` but drops ``next``."""

    base = ""

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        after = query.get("after", ["0"])[0]
        n = int(after)
        paging: dict[str, Any] = {"cursors": {"before": "x", "after": str(n + 1)}}
        if n < 2:
            paging["next"] = f"{self.base}/v26.0/1/posts?access_token=TOK&limit=2&after={n + 1}"
        body = json.dumps({"data": [{"id": f"p{n}a"}, {"id": f"p{n}b"}], "paging": paging}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_next_link_over_loopback_http() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Graph)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    _Graph.base = base
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:

        def classify(response: requests.Response) -> Any:
            return response.json()

        session = ApiSession("facebook", Config(), classify=classify, sleep=lambda s: None)
        first = f"{base}/v26.0/1/posts"
        pages = paginate_next_link(
            lambda: session.request("GET", first, endpoint="posts", params={"access_token": "TOK", "limit": 2}),
            lambda url: session.request("GET", url, endpoint="posts"),
            max_pages=10,
            platform="facebook",
        )
        ids = [row["id"] for items in pages for row in items]
        assert ids == ["p0a", "p0b", "p1a", "p1b", "p2a", "p2b"]
        assert session.counter.snapshot()["by_endpoint"] == {"posts": {"calls": 3, "units": 0}}
    finally:
        httpd.shutdown()
        httpd.server_close()
