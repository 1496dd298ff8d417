"""The three paging styles of our APIs, as generators that always end: done, or an error.

- ``paginate_cursor``: TikTok ``data.cursor`` / ``data.has_more`` (a page may hold fewer than
  ``max_count`` items, even none, while ``has_more`` is true: keep going, the cursor decides).
- ``paginate_next_link``: Meta ``paging.next`` (stop when it is absent, even though
  ``paging.cursors.after`` is still there on the last page).
- ``paginate_page_token``: YouTube ``nextPageToken``.

Each yields ``get_items(page)`` for every page fetched. A cursor/URL/token seen before raises
``PaginationLoopError`` ("Loop detected in pagination", as in the Meltano SDK) and more than
``max_pages`` pages raises ``PaginationLimitError``: both are ``FatalApiError``s, never retried.
The callables do the I/O (``client.py``); this module only decides what to ask for next.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

from shared.errors import FatalApiError
from shared.http import sanitize_url

__all__ = [
    "PaginationError",
    "PaginationLimitError",
    "PaginationLoopError",
    "paginate_cursor",
    "paginate_next_link",
    "paginate_page_token",
]

Page = dict[str, Any]


class PaginationError(FatalApiError):
    """Paging cannot continue safely (a loop, a missing cursor, too many pages)."""

    error_class = "pagination"


class PaginationLoopError(PaginationError):
    """The API handed back a cursor/URL/token it had already given: following it would loop."""


class PaginationLimitError(PaginationError):
    """More pages than ``max_pages``: a runaway listing, not data we should silently truncate."""


def _default_data(page: Page) -> Any:
    return page.get("data", [])


def _default_items(page: Page) -> Any:
    return page.get("items", [])


def _check_max_pages(max_pages: int) -> None:
    if max_pages < 1:
        raise ValueError(f"max_pages must be >= 1, got {max_pages}")


def _short(token: object) -> str:
    text = str(token)
    return text if len(text) <= 60 else text[:57] + "..."


def _advance(seen: set[Any], token: Hashable, shown: str, pages: int, max_pages: int, platform: str,
             endpoint: str | None) -> None:
    """Allow one more page, or stop with an error (never a loop): a repeated token, or too many pages."""
    if token in seen:
        raise PaginationLoopError(f"Loop detected in pagination: {shown} repeated after page {pages}",
                                  platform=platform, endpoint=endpoint)
    seen.add(token)
    if pages >= max_pages:
        raise PaginationLimitError(f"more than max_pages={max_pages} pages", platform=platform, endpoint=endpoint)


def paginate_cursor(
    fetch: Callable[[Any], Page],
    *,
    get_items: Callable[[Page], Any],
    get_cursor: Callable[[Page], Any],
    has_more: Callable[[Page], bool],
    max_pages: int,
    platform: str = "api",
    endpoint: str | None = None,
) -> Iterator[Any]:
    """Yield ``get_items(page)`` for ``fetch(None)``, then ``fetch(cursor)`` while ``has_more(page)``.

    Raises:
        PaginationLoopError: a cursor repeats. PaginationError: ``has_more`` without a cursor.
        PaginationLimitError: more than ``max_pages`` pages.
    """
    _check_max_pages(max_pages)
    seen: set[Hashable] = set()
    cursor: Any = None
    pages = 0
    while True:
        page = fetch(cursor)
        pages += 1
        yield get_items(page)
        if not has_more(page):
            return
        cursor = get_cursor(page)
        if cursor is None or cursor == "":
            raise PaginationError(
                f"has_more is true but no cursor after page {pages}", platform=platform, endpoint=endpoint
            )
        _advance(seen, cursor, f"cursor {_short(cursor)}", pages, max_pages, platform, endpoint)


def paginate_next_link(
    fetch_first: Callable[[], Page],
    fetch_url: Callable[[str], Page],
    *,
    max_pages: int,
    get_items: Callable[[Page], Any] = _default_data,
    platform: str = "api",
    endpoint: str | None = None,
) -> Iterator[Any]:
    """Yield ``get_items(page)`` (default ``page["data"]``) following ``paging.next`` until it is absent."""
    _check_max_pages(max_pages)
    seen: set[str] = set()
    page = fetch_first()
    pages = 1
    while True:
        yield get_items(page)
        paging = page.get("paging") or {}
        next_url = paging.get("next") if isinstance(paging, dict) else None
        if not next_url:
            return
        _advance(seen, next_url, f"next link {sanitize_url(next_url)}", pages, max_pages, platform, endpoint)
        page = fetch_url(next_url)
        pages += 1


def paginate_page_token(
    fetch: Callable[[str | None], Page],
    *,
    max_pages: int,
    get_items: Callable[[Page], Any] = _default_items,
    platform: str = "api",
    endpoint: str | None = None,
) -> Iterator[Any]:
    """Yield ``get_items(page)`` (default ``page["items"]``) for ``fetch(None)``, then ``fetch(nextPageToken)``."""
    _check_max_pages(max_pages)
    seen: set[str] = set()
    token: str | None = None
    pages = 0
    while True:
        page = fetch(token)
        pages += 1
        yield get_items(page)
        token = page.get("nextPageToken") or None
        if token is None:
            return
        _advance(seen, token, f"page token {_short(token)}", pages, max_pages, platform, endpoint)
