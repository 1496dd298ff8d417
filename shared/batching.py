"""Batching helpers: lazy fixed-size chunks, and statement sizes under the driver's parameter limit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

__all__ = ["MAX_STATEMENT_PARAMS", "chunked", "rows_per_statement"]

T = TypeVar("T")

#: PostgreSQL's wire protocol allows 65,535 bind parameters, but pg8000 over a unix socket deadlocks
#: well before that on large statements; 30,000 keeps every statement comfortably clear.
MAX_STATEMENT_PARAMS = 30_000


def chunked(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of ``size`` items (the last may be shorter); lazy, so generators stream through."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk size must be an integer >= 1, got {size!r}")
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def rows_per_statement(n_cols: int, max_params: int = MAX_STATEMENT_PARAMS) -> int:
    """How many rows of ``n_cols`` parameters fit in one statement of at most ``max_params`` parameters."""
    if n_cols < 1:
        raise ValueError(f"n_cols must be >= 1, got {n_cols}")
    if n_cols > max_params:
        raise ValueError(f"one row of {n_cols} columns exceeds max_params={max_params}")
    return max_params // n_cols
