"""Hash joins for API records: build the index once (a dict), then stream the other side in O(n).

Keys are a field name, a tuple of field names (composite key) or a callable ``row -> key``.
A duplicate key on the indexed side is an error, never a silent overwrite.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["DuplicateKeyError", "Key", "index_by", "inner_join", "left_join"]

Row = Mapping[str, Any]
Key = str | tuple[str, ...] | Callable[[Row], Hashable]


class DuplicateKeyError(ValueError):
    """Two rows of the indexed side share a key; ``key`` names the key, ``value`` the duplicate."""

    def __init__(self, key: str, value: Hashable, position: int) -> None:
        self.key = key
        self.value = value
        self.position = position
        super().__init__(f"duplicate key {key}={value!r} (row {position} repeats an earlier row)")


def _key_name(key: Key) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, tuple):
        return "(" + ", ".join(key) + ")"
    name = getattr(key, "__name__", "")
    return name if name and name != "<lambda>" else "key(row)"


def _extractor(key: Key) -> Callable[[Row], Hashable]:
    if isinstance(key, str):
        return lambda row: row[key]
    if isinstance(key, tuple):
        if not key:
            raise ValueError("a composite key needs at least one field")
        fields = key
        return lambda row: tuple(row[f] for f in fields)
    if callable(key):
        return key
    raise TypeError(f"key must be a field name, a tuple of names or a callable, got {key!r}")


def _get(extract: Callable[[Row], Hashable], row: Row, key: Key, side: str, i: int) -> Hashable:
    try:
        return extract(row)
    except KeyError as exc:
        raise KeyError(f"{side} row {i} has no key field {exc.args[0]!r} (key {_key_name(key)})") from None


def index_by(rows: Iterable[Row], key: Key) -> dict[Hashable, Row]:
    """``{key(row): row}`` built in one pass (one hash lookup per row).

    Raises:
        DuplicateKeyError: two rows share a key (a ``ValueError``). KeyError: a row lacks the key field.
    """
    extract = _extractor(key)
    index: dict[Hashable, Row] = {}
    setdefault = index.setdefault
    i = -1
    try:
        if isinstance(key, str):  # the common case, without a call per row
            for i, row in enumerate(rows):
                k = row[key]
                setdefault(k, row)
                if len(index) <= i:  # the index did not grow: k was already there
                    raise DuplicateKeyError(key, k, i)
        else:
            for i, row in enumerate(rows):
                k = extract(row)
                setdefault(k, row)
                if len(index) <= i:
                    raise DuplicateKeyError(_key_name(key), k, i)
    except KeyError as exc:
        raise KeyError(f"indexed row {i} has no key field {exc.args[0]!r} (key {_key_name(key)})") from None
    return index


def _merge(left: Row, right: Row, prefix: str | None) -> dict[str, Any]:
    if prefix:
        return {**left, **{prefix + name: value for name, value in right.items()}}
    return {**left, **right}


def left_join(
    left_rows: Iterable[Row], index: Mapping[Hashable, Row], on: Key, *, prefix: str | None = None
) -> Iterator[dict[str, Any]]:
    """Yield each left row merged with its match in ``index`` (right fields win a name clash unless
    ``prefix`` renames them); a left row without a match comes out with its own fields only."""
    extract = _extractor(on)
    for i, left in enumerate(left_rows):
        right = index.get(_get(extract, left, on, "left", i))
        yield dict(left) if right is None else _merge(left, right, prefix)


def inner_join(
    left_rows: Iterable[Row], index: Mapping[Hashable, Row], on: Key, *, prefix: str | None = None
) -> Iterator[dict[str, Any]]:
    """Like ``left_join`` but left rows without a match are dropped."""
    extract = _extractor(on)
    for i, left in enumerate(left_rows):
        right = index.get(_get(extract, left, on, "left", i))
        if right is not None:
            yield _merge(left, right, prefix)
