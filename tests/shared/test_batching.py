"""chunked and rows_per_statement."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.batching import MAX_STATEMENT_PARAMS, chunked, rows_per_statement


@pytest.mark.parametrize(
    ("n", "size", "expected"),
    [
        (0, 3, []),
        (1, 3, [[0]]),
        (3, 3, [[0, 1, 2]]),
        (7, 3, [[0, 1, 2], [3, 4, 5], [6]]),
        (4, 1, [[0], [1], [2], [3]]),
        (2, 500, [[0, 1]]),
    ],
)
def test_chunked(n: int, size: int, expected: list[list[int]]) -> None:
    assert list(chunked(range(n), size)) == expected


def test_chunked_preserves_everything_in_order() -> None:
    for n in range(0, 60):
        for size in range(1, 12):
            chunks = list(chunked(range(n), size))
            assert [x for c in chunks for x in c] == list(range(n))
            assert all(len(c) == size for c in chunks[:-1])
            assert all(1 <= len(c) <= size for c in chunks)


def test_chunked_is_lazy_on_generators() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10):
            pulled.append(i)
            yield i

    gen = chunked(source(), 4)
    assert pulled == []
    assert next(gen) == [0, 1, 2, 3]
    assert pulled == [0, 1, 2, 3]
    assert next(gen) == [4, 5, 6, 7]
    assert len(pulled) == 8


def test_chunked_infinite_source() -> None:
    import itertools

    assert next(chunked(itertools.count(), 3)) == [0, 1, 2]


@pytest.mark.parametrize("size", [0, -1, 1.5, "2", True])
def test_chunked_rejects_bad_sizes(size: object) -> None:
    with pytest.raises(ValueError):
        next(chunked([1, 2], size))  # type: ignore[arg-type]


def test_rows_per_statement() -> None:
    assert MAX_STATEMENT_PARAMS == 30_000
    assert rows_per_statement(1) == 30_000
    assert rows_per_statement(7) == 4285
    assert rows_per_statement(7) * 7 <= 30_000 < (rows_per_statement(7) + 1) * 7
    assert rows_per_statement(10, max_params=100) == 10
    assert rows_per_statement(30_000) == 1
    for n_cols in range(1, 200):
        rows = rows_per_statement(n_cols)
        assert rows * n_cols <= 30_000 < (rows + 1) * n_cols


@pytest.mark.parametrize(("n_cols", "max_params"), [(0, 30_000), (-2, 30_000), (30_001, 30_000)])
def test_rows_per_statement_rejects(n_cols: int, max_params: int) -> None:
    with pytest.raises(ValueError):
        rows_per_statement(n_cols, max_params)
