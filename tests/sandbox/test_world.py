"""The deterministic world: default fleet shape, scale knobs, determinism (counts, never wall time)."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from sandbox.world import DEFAULT_POSTS, World, WorldSettings

ANCHOR = date(2026, 6, 1)


def test_default_fleet_is_23_accounts_across_4_or_5_brands() -> None:
    world = World(WorldSettings(anchor=ANCHOR))
    accounts = world.accounts()
    assert len(accounts) == 23
    assert Counter(a.platform for a in accounts) == {"tiktok": 5, "facebook": 6, "instagram": 6, "youtube": 6}
    assert 4 <= len({a.brand for a in accounts}) <= 5
    assert len({(a.platform, a.account_id) for a in accounts}) == 23
    for a in accounts:
        lo, hi = DEFAULT_POSTS[a.platform]
        assert lo <= a.n_posts <= hi  # hundreds to thousands of posts


def test_history_days_and_posts_per_account_are_honoured() -> None:
    world = World(WorldSettings(anchor=ANCHOR, history_days=45, posts_per_account=300,
                                accounts_per_platform={"tiktok": 1, "youtube": 1}))
    start = world.anchor_dt - timedelta(days=45)
    for acc in world.accounts():
        history = world.posts(acc, world.anchor_dt)
        assert len(history) == 300
        assert all(start <= p.published_at < world.anchor_dt for p in history)
        times = [p.published_at for p in world.all_posts(acc)]
        assert times == sorted(times, reverse=True) and len(set(times)) == len(times)
        assert all(t.microsecond == 0 for t in times)  # whole, unique seconds


def test_a_100k_post_account_is_generated_and_indexed() -> None:
    world = World(WorldSettings(anchor=ANCHOR, posts_per_account=100_000, accounts_per_platform={"tiktok": 1}))
    acc = world.accounts()[0]
    assert world.visible_count(acc, world.anchor_dt) == 100_000
    posts = world.all_posts(acc)
    assert len(world.positions(acc)) == len(posts) == 100_000 + 30  # + a month of future uploads
    assert len({int(p.published_at.timestamp()) for p in posts}) == len(posts)
    k = world.first_visible(acc, world.anchor_dt)
    assert posts[k].published_at <= world.anchor_dt < posts[k - 1].published_at


def _fingerprint(seed: int) -> list[tuple[str, str, int, str, str]]:
    world = World(WorldSettings(seed=seed, anchor=ANCHOR, posts_per_account=50))
    out = []
    for a in world.accounts():
        first = world.all_posts(a)[-1]
        out.append((a.platform, a.account_id, a.followers_base, first.post_id, first.published_at.isoformat()))
    return out


def test_same_seed_same_world_different_seed_different_world() -> None:
    assert _fingerprint(7) == _fingerprint(7)
    other = _fingerprint(8)
    assert other != _fingerprint(7)
    assert {x[1] for x in other}.isdisjoint({x[1] for x in _fingerprint(7)})
