"""Hash joins: correctness, duplicate keys, and O(n) behaviour (each index built once, one lookup per row)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from shared.joins import DuplicateKeyError, index_by, inner_join, left_join

VIDEOS = [
    {"id": "v1", "title": "a", "account_id": "x"},
    {"id": "v2", "title": "b", "account_id": "x"},
    {"id": "v3", "title": "c", "account_id": "y"},
]
STATS = [{"id": "v3", "views": 30}, {"id": "v1", "views": 10}]


def test_index_by_field() -> None:
    index = index_by(STATS, "id")
    assert index == {"v3": STATS[0], "v1": STATS[1]}


def test_index_by_composite_and_callable() -> None:
    rows = [{"p": "tiktok", "a": "1", "v": 1}, {"p": "youtube", "a": "1", "v": 2}]
    assert set(index_by(rows, ("p", "a"))) == {("tiktok", "1"), ("youtube", "1")}
    assert set(index_by(rows, lambda r: r["v"] * 10)) == {10, 20}


def test_duplicate_key_raises_naming_the_key() -> None:
    rows = [{"id": "v1"}, {"id": "v2"}, {"id": "v1"}]
    with pytest.raises(DuplicateKeyError, match=r"duplicate key id='v1' \(row 2 repeats") as info:
        index_by(rows, "id")
    assert isinstance(info.value, ValueError)
    assert info.value.key == "id" and info.value.value == "v1" and info.value.position == 2
    same = {"id": "x"}
    with pytest.raises(DuplicateKeyError):  # the very same row twice is a duplicate too
        index_by([same, same], "id")
    with pytest.raises(DuplicateKeyError, match=r"key\(row\)=3 \(row 2"):
        index_by([{"id": 1}, {"id": 3}, {"id": 3}], lambda r: r["id"])
    with pytest.raises(DuplicateKeyError, match=r"\(p, a\)"):
        index_by([{"p": 1, "a": 2}, {"p": 1, "a": 2}], ("p", "a"))


def test_missing_key_field_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="indexed row 1 has no key field 'id'"):
        index_by([{"id": 1}, {"other": 2}], "id")
    with pytest.raises(KeyError, match="left row 0"):
        list(left_join([{"x": 1}], {}, "id"))


def test_bad_key_types() -> None:
    with pytest.raises(TypeError):
        index_by([{"id": 1}], 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        index_by([{"id": 1}], ())


def test_left_join_keeps_every_left_row_in_order() -> None:
    out = list(left_join(VIDEOS, index_by(STATS, "id"), "id"))
    assert out == [
        {"id": "v1", "title": "a", "account_id": "x", "views": 10},
        {"id": "v2", "title": "b", "account_id": "x"},
        {"id": "v3", "title": "c", "account_id": "y", "views": 30},
    ]
    assert VIDEOS[0] == {"id": "v1", "title": "a", "account_id": "x"}  # inputs untouched


def test_left_join_prefix_avoids_clashes() -> None:
    out = list(left_join(VIDEOS[:1], index_by([{"id": "v1", "title": "T"}], "id"), "id", prefix="stats_"))
    assert out == [{"id": "v1", "title": "a", "account_id": "x", "stats_id": "v1", "stats_title": "T"}]
    out = list(left_join(VIDEOS[:1], index_by([{"id": "v1", "title": "T"}], "id"), "id"))
    assert out[0]["title"] == "T"  # without a prefix the right side wins a clash (documented)


def test_inner_join_drops_unmatched() -> None:
    out = list(inner_join(VIDEOS, index_by(STATS, "id"), "id"))
    assert [(r["id"], r["views"]) for r in out] == [("v1", 10), ("v3", 30)]


def test_join_on_composite_key_and_generators() -> None:
    accounts = index_by(
        ({"platform": p, "account_id": a, "brand": b} for p, a, b in [("tiktok", "x", "B1")]),
        ("platform", "account_id"),
    )
    posts = ({"platform": "tiktok", "account_id": a, "post": i} for i, a in enumerate(["x", "z"]))
    out = list(left_join(posts, accounts, ("platform", "account_id")))
    assert out[0]["brand"] == "B1" and "brand" not in out[1]


class CountingDict(dict):
    lookups = 0

    def get(self, key: Hashable, default: Any = None) -> Any:
        CountingDict.lookups += 1
        return super().get(key, default)


class CountingRow(dict):
    reads = 0

    def __getitem__(self, key: str) -> Any:
        CountingRow.reads += 1
        return super().__getitem__(key)


@pytest.mark.parametrize("n", [10, 1000, 20_000])
def test_work_is_linear(n: int) -> None:
    """One key read per row and one dict lookup per left row: no nested loops (work, not time)."""
    CountingDict.lookups = 0
    CountingRow.reads = 0
    right = [CountingRow(id=i, v=i * 2) for i in range(n)]
    index = CountingDict(index_by(right, "id"))
    assert CountingRow.reads == n
    left = [CountingRow(id=i, name=str(i)) for i in range(0, 2 * n, 2)]  # half match
    out = list(left_join(left, index, "id"))
    assert CountingDict.lookups == n
    assert CountingRow.reads == 2 * n
    assert sum(1 for r in out if "v" in r) == (n + 1) // 2
    assert all(r["v"] == r["id"] * 2 for r in out if "v" in r)


def test_randomised_against_a_reference_join() -> None:
    import random

    rnd = random.Random(7)
    for _ in range(50):
        right_keys = rnd.sample(range(200), rnd.randint(0, 100))
        right = [{"k": k, "r": k * 3} for k in right_keys]
        left = [{"k": rnd.randrange(200), "l": i} for i in range(rnd.randint(0, 150))]
        index = index_by(right, "k")
        expected_left = [{**lr, **next((rr for rr in right if rr["k"] == lr["k"]), {})} for lr in left]
        assert list(left_join(left, index, "k")) == expected_left
        assert list(inner_join(left, index, "k")) == [r for r in expected_left if "r" in r]
