"""One contract suite for every ``Store`` backend (memory and Redis), plus backend specifics.

Windows are driven by the explicit ``now``; TTLs (claims, histories, ``ttl_s``) by each
backend's own clock: the memory store gets a fake clock, Redis really waits (once, ~1 s).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import socket
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from tests.support.redis_server import (  # noqa: F401  (pytest fixtures)
    RedisServer,
    free_port,
    redis_server,
    redis_url,
)
from tests.support.stores import claim, claim_many
from vastserver.store import (
    ClaimExpired,
    ClaimHeld,
    Guard,
    Guarded,
    Incr,
    MemoryStore,
    Read,
    RedisStore,
    Store,
    StorePoolExhausted,
    StoreUnavailable,
    Window,
    open_store,
)
from vastserver.store.redis import CLAIM_MARGIN_S, LEGACY_CLAIM_WINDOW_S

T0 = 1_800_000_000.0
"""A multiple of every bucket width used here (so bucket edges are easy to reason about)."""
LIFE = Window.lifetime()
W60 = Window(60, 10)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Harness:
    kind: str
    store: Store
    clock: FakeClock

    async def pass_time(self, seconds: float) -> None:
        """Let TTLs run out: the memory store's clock is fake; Redis expires by its own."""
        self.clock.t += seconds
        if self.kind == "redis":
            await asyncio.sleep(seconds)

    async def value(self, key: str, window: Window, now: float) -> int:
        return (await self.store.read([Read(key, window)], now))[0]


@pytest.fixture(params=["memory", "redis"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    clock = FakeClock(T0)
    store: Store
    if request.param == "memory":
        store = MemoryStore(clock=clock)
    else:
        # the cases assert what is stored, not how fast: a reply late by a second on a
        # loaded host (200 concurrent commits opening their connections) is no failure
        store = RedisStore(
            request.getfixturevalue("redis_url"), socket_timeout=5.0, pool_timeout=5.0
        )
    yield Harness(request.param, store, clock)
    await store.close()


def one(key: str, window: Window, limit: int, amount: int = 1) -> Guarded:
    """Guarded increment of ``key`` by ``amount`` while it stays within ``limit``."""
    return Guarded((Guard(key, window, limit, amount),), (Incr(key, window, amount),))


# ---------------------------------------------------------------------- windows


async def test_unknown_keys(h: Harness) -> None:
    s = h.store
    assert await s.read([Read("nope", W60), Read("nope", LIFE)], T0) == [0, 0]
    assert await s.read([], T0) == []
    assert await s.commit([], T0) == []
    await s.add([], T0)
    assert await s.history("nope") == []
    assert await s.ping()


async def test_window_counts_then_expires(h: Harness) -> None:
    s = h.store
    await s.add([Incr("k", W60, 1)], T0)  # bucket [T0, T0+10)
    await s.add([Incr("k", W60, 2)], T0 + 25)  # bucket [T0+20, T0+30)
    assert await h.value("k", W60, T0 + 25) == 3
    assert await h.value("k", W60, T0 + 60) == 3  # window [T0, T0+60]
    # over-count by at most one bucket: the event at T0 left the true window at T0+60, but
    # its bucket still overlaps [now-60, now] until T0+70
    assert await h.value("k", W60, T0 + 69.9) == 3
    assert await h.value("k", W60, T0 + 70) == 2
    assert await h.value("k", W60, T0 + 89.9) == 2
    assert await h.value("k", W60, T0 + 90) == 0


async def test_never_under_counts_and_over_counts_by_at_most_one_bucket(h: Harness) -> None:
    rng = random.Random(7)
    w = Window(60, 10)
    events = sorted(T0 + rng.uniform(0, 400) for _ in range(40))
    reads = [T0 + rng.uniform(0, 500) for _ in range(60)]
    timeline = sorted([(t, "add") for t in events] + [(t, "read") for t in reads])
    seen: list[float] = []
    for t, what in timeline:
        if what == "add":
            await h.store.add([Incr("k", w, 1)], t)
            seen.append(t)
            continue
        got = await h.value("k", w, t)
        true = sum(1 for e in seen if t - 60 <= e <= t)
        upper = sum(1 for e in seen if t - 60 - 10 < e <= t)
        assert true <= got <= upper, (t - T0, got, true, upper)


async def test_lifetime_counters(h: Harness) -> None:
    s = h.store
    await s.add([Incr("life", LIFE, 3)], T0)
    assert await s.read([Read("life", LIFE)], T0 + 10**7) == [3]
    await s.add([Incr("life", LIFE, -5)], T0)
    assert await h.value("life", LIFE, T0) == 0  # never below zero: -5 emptied it
    await s.add([Incr("life", LIFE, 4, at=T0 - 10**6)], T0)  # `at` is irrelevant here
    assert await h.value("life", LIFE, T0) == 4


async def test_negative_increments_and_at(h: Harness) -> None:
    s = h.store
    r = Window(300, 30)
    # two reservations, released at the buckets they were made in
    await s.add([Incr("res", r, 1)], T0 + 5)
    await s.add([Incr("res", r, 1)], T0 + 40)
    await s.add([Incr("res", r, -1, at=T0 + 5)], T0 + 100)
    assert await h.value("res", r, T0 + 100) == 1
    await s.add([Incr("res", r, -1, at=T0 + 40)], T0 + 110)
    assert await h.value("res", r, T0 + 110) == 0
    assert await h.value("res", r, T0 + 340) == 0

    # a release without `at` hits the current bucket: one that holds nothing stays at zero,
    # so the reservation still counts until its own bucket leaves the window
    await s.add([Incr("res2", r, 1)], T0)
    await s.add([Incr("res2", r, -1)], T0 + 200)
    assert await h.value("res2", r, T0 + 200) == 1
    assert await h.value("res2", r, T0 + 340) == 0

    # a release with no reservation behind it leaves no negative bucket: the reservations
    # made after it count in full (a guard would otherwise let one more through each)
    await s.add([Incr("orphan", r, -2, at=T0 + 10)], T0 + 20)
    await s.add([Incr("orphan", r, 1)], T0 + 20)
    await s.add([Incr("orphan", r, 1)], T0 + 25)
    assert await h.value("orphan", r, T0 + 30) == 2
    assert await s.commit([one("orphan", r, 2)], T0 + 30) == [False]
    await s.add([Incr("life-orphan", LIFE, -3)], T0)
    await s.add([Incr("life-orphan", LIFE, 1)], T0)
    assert await h.value("life-orphan", LIFE, T0) == 1

    # a release whose bucket already left the window changes nothing (it expired already)
    await s.add([Incr("res3", r, 1)], T0)
    await s.add([Incr("res3", r, -1, at=T0)], T0 + 400)
    await s.add([Incr("res3", r, 1)], T0 + 400)
    assert await h.value("res3", r, T0 + 400) == 1

    # `at` targets an older bucket, which leaves the window earlier than "now" would
    await s.add([Incr("old", W60, 1, at=T0 - 30), Incr("new", W60, 1)], T0)
    assert await s.read([Read("old", W60), Read("new", W60)], T0 + 39.9) == [1, 1]
    assert await s.read([Read("old", W60), Read("new", W60)], T0 + 40) == [0, 1]
    assert await s.read([Read("old", W60), Read("new", W60)], T0 + 70) == [0, 0]


# ---------------------------------------------------------------------- guarded commits


async def test_guarded_group_is_all_or_nothing(h: Harness) -> None:
    s = h.store
    await s.add([Incr("a", W60, 2)], T0)
    incrs = (Incr("a", W60, 1), Incr("b", LIFE, 1), Incr("c", LIFE, 5))
    refused = Guarded((Guard("a", W60, 3), Guard("b", LIFE, 0)), incrs)
    assert await s.commit([refused], T0) == [False]
    reads = [Read("a", W60), Read("b", LIFE), Read("c", LIFE)]
    assert await s.read(reads, T0) == [2, 0, 0]
    allowed = Guarded((Guard("a", W60, 3), Guard("b", LIFE, 1)), incrs)
    assert await s.commit([allowed], T0) == [True]
    assert await s.read(reads, T0) == [3, 1, 5]


async def test_groups_apply_in_order_within_a_batch(h: Harness) -> None:
    s = h.store
    assert await s.commit([one("x", W60, 3)] * 5, T0) == [True, True, True, False, False]
    assert await h.value("x", W60, T0) == 3
    # a later group sees an earlier group's increments of another key
    batch = [
        Guarded((), (Incr("y", LIFE, 2),)),
        Guarded((Guard("y", LIFE, 2),), (Incr("z", LIFE, 1),)),
        Guarded((Guard("y", LIFE, 3),), (Incr("z", LIFE, 1),)),
    ]
    assert await s.commit(batch, T0) == [True, False, True]
    assert await s.read([Read("y", LIFE), Read("z", LIFE)], T0) == [2, 1]


async def test_limit_exactly_reached_then_refused(h: Harness) -> None:
    s = h.store
    await s.add([Incr("budget", LIFE, 3)], T0)
    assert await s.commit([one("budget", LIFE, 5, amount=2)], T0) == [True]
    assert await h.value("budget", LIFE, T0) == 5
    assert await s.commit([one("budget", LIFE, 5, amount=2)], T0) == [False]
    assert await s.commit([one("budget", LIFE, 5, amount=1)], T0) == [False]
    check_only = Guarded((Guard("budget", LIFE, 5, amount=0),), ())
    assert await s.commit([check_only], T0) == [True]
    assert await h.value("budget", LIFE, T0) == 5


async def test_guard_extra_counters_add_to_the_sum(h: Harness) -> None:
    """A cap guard over impressions (a day) plus reservations (5 min), incrementing the latter."""
    s = h.store
    day, res = Window(86400, 7200), Window(300, 30)
    await s.add([Incr("imp", day, 2), Incr("other", LIFE, -9)], T0)

    def reserve() -> Guarded:
        extra = (Read("res", res), Read("other", LIFE))  # "other" reads 0, never negative
        return Guarded((Guard("imp", day, 4, 1, extra),), (Incr("res", res, 1),))

    assert await s.commit([reserve(), reserve(), reserve()], T0) == [True, True, False]
    assert await s.read([Read("imp", day), Read("res", res)], T0) == [2, 2]
    # the reservations lapse after their window: room again
    assert await s.commit([reserve()], T0 + 330) == [True]


async def test_malformed_batches_apply_nothing(h: Harness) -> None:
    s = h.store
    bad_window = Window(60, 0)
    with pytest.raises(ValueError):
        await s.add([Incr("a", LIFE), Incr("b", bad_window)], T0)
    with pytest.raises(ValueError):
        await s.commit(
            [Guarded((), (Incr("a", LIFE),)), Guarded((), (Incr("a", LIFE, ttl_s=0),))], T0
        )
    with pytest.raises(ValueError):
        await s.commit([Guarded((Guard("a", LIFE, 9, 1, (Read("b", bad_window),)),), ())], T0)
    assert await h.value("a", LIFE, T0) == 0


async def test_guard_reads_the_window(h: Harness) -> None:
    s = h.store
    assert await s.commit([one("cap", W60, 2)] * 3, T0) == [True, True, False]
    assert await s.commit([one("cap", W60, 2)], T0 + 69) == [False]  # still overlaps
    assert await s.commit([one("cap", W60, 2)], T0 + 70) == [True]


async def test_concurrent_commits_grant_exactly_the_limit(h: Harness) -> None:
    w = Window(3600, 300)
    results = await asyncio.gather(*(h.store.commit([one("cap", w, 50)], T0) for _ in range(200)))
    assert sum(r[0] for r in results) == 50
    assert await h.value("cap", w, T0) == 50


# ---------------------------------------------------------------------- claims, histories


async def test_claims_dedupe(h: Harness) -> None:
    s = h.store
    assert await claim(s, "bc:1:impression", 60)
    assert not await claim(s, "bc:1:impression", 60)
    assert await claim_many(s, ["b", "bc:1:impression", "b", "c"], 60) == [True, False, False, True]
    assert await claim_many(s, [], 60) == []
    with pytest.raises(ValueError):
        await claim(s, "bad", 0)


async def test_claim_and_add_counts_only_new_claims(h: Harness) -> None:
    s = h.store
    n = [Read("beacons", LIFE)]
    assert await s.claim_and_add(["x:imp", "x:settled"], 60, [Incr("beacons", LIFE, 2)], T0) == [
        True,
        True,
    ]
    assert await s.read(n, T0) == [2]
    # a replay: nothing claimed, nothing counted
    assert await s.claim_and_add(["x:imp", "x:settled"], 60, [Incr("beacons", LIFE, 2)], T0) == [
        False,
        False,
    ]
    # one claim new, one taken: the new one is claimed, the increments are not applied
    got = await s.claim_and_add(["y:imp", "x:settled"], 60, [Incr("beacons", LIFE, 5)], T0)
    assert got == [True, False]
    assert await s.read(n, T0) == [2]
    assert not await claim(s, "y:imp", 60)
    # claims with and without increments share one namespace; no keys: the increments apply
    assert await s.claim_and_add(["c"], 60, [], T0) == [True]
    assert await claim_many(s, ["c"], 60) == [False]
    assert await s.claim_and_add([], 60, [Incr("beacons", LIFE, 1)], T0) == []
    assert await s.read(n, T0) == [3]
    # a malformed increment fails the whole call before anything is claimed
    with pytest.raises(ValueError):
        await s.claim_and_add(["z"], 60, [Incr("beacons", LIFE, 1, ttl_s=0)], T0)
    assert await claim_many(s, ["z"], 60) == [True]
    with pytest.raises(ValueError):
        await s.claim_and_add(["w"], 0, [], T0)


async def test_claim_and_add_unless_a_key_is_claimed(h: Harness) -> None:
    """``unless``: while that key is claimed the call claims and counts nothing (how a
    ``notUsed`` keeps the ad's later beacons from counting), in the same atomic step."""
    s = h.store
    n = [Read("beacons", LIFE)]
    add = [Incr("beacons", LIFE, 1)]
    assert await s.claim_and_add(["a:complete"], 60, add, T0, unless="a:unused") == [True]
    assert await s.claim_and_add(["a:notUsed", "a:unused"], 60, [], T0) == [True, True]
    with pytest.raises(ClaimHeld):
        await s.claim_and_add(["a:click"], 60, add, T0, unless="a:unused")
    with pytest.raises(ClaimHeld):  # a replay too: the held key answers first
        await s.claim_and_add(["a:complete"], 60, add, T0, unless="a:unused")
    assert await s.read(n, T0) == [1]
    assert await claim_many(s, ["a:click"], 60) == [True]  # nothing was claimed
    # another ad's calls are not held, and an expired ``unless`` no longer holds
    assert await s.claim_and_add(["b:click"], 60, add, T0, unless="b:unused") == [True]
    assert await s.claim_and_add(["c:unused"], 1, [], T0) == [True]
    await h.pass_time(2.5)
    assert await s.claim_and_add(["c:click"], 60, add, T0 + 3, unless="c:unused") == [True]
    assert await s.read(n, T0 + 3) == [3]
    with pytest.raises(ValueError):
        await s.claim_and_add([], 60, add, T0, unless="a:unused")


async def test_kinds_do_not_collide(h: Harness) -> None:
    s = h.store
    for key in ("same", "\x01same", "\x00", ""):
        await s.add([Incr(key, LIFE, 1)], T0)
        assert await claim(s, key, 60)
        await s.push_history(key, ["e"], keep=3, ttl_s=60)
        assert await h.value(key, LIFE, T0) == 1
        assert await s.history(key) == ["e"]
        assert not await claim(s, key, 60)
    assert await h.value("same", LIFE, T0) == 1


async def test_histories(h: Harness) -> None:
    s = h.store
    await s.push_history("sess", ["a", "b"], keep=3, ttl_s=60)
    assert await s.history("sess") == ["b", "a"]  # the last entry pushed is the newest
    await s.push_history("sess", ["c", "d"], keep=3, ttl_s=60)
    assert await s.history("sess") == ["d", "c", "b"]
    await s.push_history("sess", [], keep=2, ttl_s=60)
    assert await s.history("sess") == ["d", "c"]
    await s.push_history("other", ["x"], keep=1, ttl_s=60)
    await s.push_history("other", ["y", "z"], keep=1, ttl_s=60)
    assert await s.history("other") == ["z"]
    assert await s.history("sess") == ["d", "c"]
    await s.push_history("sess", ["e"], keep=0, ttl_s=60)
    assert await s.history("sess") == []


async def test_ttls_expire(h: Harness) -> None:
    """Claims, histories and ``ttl_s`` counters expire by the backend's clock."""
    s = h.store
    hour = Window(3600, 300)
    assert await claim(s, "c1", 1)
    assert await claim(s, "c100", 100)
    await s.push_history("h1", ["x"], keep=5, ttl_s=1)
    await s.push_history("h100", ["x"], keep=5, ttl_s=100)
    await s.add(
        [
            Incr("life1", LIFE, 4, ttl_s=1),
            Incr("life", LIFE, 4),
            Incr("win1", hour, 2, ttl_s=1),
            Incr("win", hour, 2),
        ],
        T0,
    )
    await h.pass_time(1.1)
    assert await claim(s, "c1", 1)  # expired: claimable again
    assert not await claim(s, "c100", 100)
    assert await s.history("h1") == []
    assert await s.history("h100") == ["x"]
    reads = [Read("life1", LIFE), Read("life", LIFE), Read("win1", hour), Read("win", hour)]
    assert await s.read(reads, T0 + 1.1) == [0, 4, 0, 2]
    # an expired counter starts again from zero
    await s.add([Incr("life1", LIFE, 1, ttl_s=60)], T0 + 1.1)
    assert await h.value("life1", LIFE, T0 + 1.1) == 1


async def test_each_write_pushes_a_counters_expiry_forward(h: Harness) -> None:
    """A counter expires its window (or ``ttl_s``) after its *last* write: a cap's counter
    dropped a window after its first impression would lose later impressions still inside
    the window, and a lifetime cap would reopen a year after the first, not the last."""
    s = h.store
    w = Window(1, 1)  # expiry: window + bucket = 2 s after a write
    await s.add([Incr("w", w, 1), Incr("life", LIFE, 1, ttl_s=2)], T0)
    await h.pass_time(1.2)
    await s.add([Incr("w", w, 1), Incr("life", LIFE, 1, ttl_s=2)], T0 + 1.2)
    await h.pass_time(1.2)  # 2.4 s after the first write, 1.2 s after the second
    assert await h.value("life", LIFE, T0 + 2.4) == 2
    assert await h.value("w", w, T0 + 2.4) == 1  # the bucket of the first left the window


# ---------------------------------------------------------------------- locks


async def test_a_lock_is_exclusive_until_released(h: Harness) -> None:
    s = h.store
    assert await s.acquire("sess", "a", 5000)
    assert not await s.acquire("sess", "b", 5000)
    assert await s.acquire("sess", "a", 5000)  # its owner may take it again
    assert await s.acquire("other", "b", 5000)  # locks of other names are unrelated
    await s.release("sess", "a")
    assert await s.acquire("sess", "b", 5000)
    assert not await s.acquire("sess", "a", 5000)


async def test_releasing_another_owners_lock_does_nothing(h: Harness) -> None:
    s = h.store
    await s.release("sess", "a")  # nobody holds it: nothing to do
    assert await s.acquire("sess", "a", 5000)
    await s.release("sess", "b")
    assert not await s.acquire("sess", "b", 5000)
    await s.release("sess", "a")
    assert await s.acquire("sess", "b", 5000)


async def test_a_lock_expires_by_itself(h: Harness) -> None:
    """A lock whose owner never releases it (a crashed instance) frees itself ``ttl_ms``
    after it was last taken; the late owner's release then leaves the new owner's lock."""
    s = h.store
    assert await s.acquire("sess", "a", 300)
    assert await s.acquire("long", "a", 60_000)
    await h.pass_time(0.4)
    assert await s.acquire("sess", "b", 5000)
    assert not await s.acquire("long", "b", 5000)
    await s.release("sess", "a")
    assert not await s.acquire("sess", "c", 5000)
    assert not await s.acquire("sess", "a", 5000)


async def test_taking_a_lock_again_moves_its_expiry(h: Harness) -> None:
    s = h.store
    assert await s.acquire("sess", "a", 300)
    await h.pass_time(0.2)
    assert await s.acquire("sess", "a", 60_000)
    await h.pass_time(0.2)  # past the first expiry, not the second
    assert not await s.acquire("sess", "b", 5000)


async def test_locks_are_apart_from_counters_claims_and_histories(h: Harness) -> None:
    s = h.store
    assert await s.acquire("k", "a", 5000)
    await s.add([Incr("k", LIFE, 3)], T0)
    await s.push_history("k", ["x"], keep=3, ttl_s=60)
    assert await claim(s, "k", 60)
    assert await h.value("k", LIFE, T0) == 3
    assert await s.history("k") == ["x"]
    assert not await s.acquire("k", "b", 5000)
    await s.release("k", "a")
    assert await h.value("k", LIFE, T0) == 3
    assert await s.history("k") == ["x"]
    with pytest.raises(ValueError):
        await s.acquire("k", "a", 0)


async def test_a_history_push_releases_its_owners_lock(h: Harness) -> None:
    """``push_history(release=(lock, owner))``: the break is written and the turn freed in
    one call (a decision's last round trip)."""
    s = h.store
    assert await s.acquire("sess", "a", 5000)
    await s.push_history("sess", ["x", "y"], keep=3, ttl_s=60, release=("sess", "a"))
    assert await s.history("sess") == ["y", "x"]
    assert await s.acquire("sess", "b", 5000)  # freed
    # nothing to push (keep: the history is trimmed, not refreshed or emptied) and keep=0
    await s.push_history("sess", [], keep=1, ttl_s=60, release=("sess", "b"))
    assert await s.history("sess") == ["y"]
    assert await s.acquire("sess", "c", 5000)
    await s.push_history("sess", ["z"], keep=0, ttl_s=60, release=("sess", "c"))
    assert await s.history("sess") == []
    assert await s.acquire("sess", "d", 5000)
    # the lock may have another name than the history; other locks are untouched
    assert await s.acquire("other", "d", 5000)
    await s.push_history("h2", ["w"], keep=3, ttl_s=60, release=("lock2", "d"))
    assert await s.history("h2") == ["w"]
    assert not await s.acquire("sess", "e", 5000)
    assert not await s.acquire("other", "e", 5000)


async def test_a_history_push_keeps_a_lock_its_owner_lost(h: Harness) -> None:
    """The release in a push compares the owner as ``release`` does: a lock that expired
    and was taken by another decision is kept, and the history is written all the same."""
    s = h.store
    assert await s.acquire("sess", "b", 5000)
    await s.push_history("sess", ["x"], keep=3, ttl_s=60, release=("sess", "a"))
    assert await s.history("sess") == ["x"]
    assert not await s.acquire("sess", "c", 5000)  # still b's
    # a's lock expired, b took it; a's late write keeps b's lock
    assert await s.acquire("late", "a", 300)
    await h.pass_time(0.5)
    assert await s.acquire("late", "b", 5000)
    await s.push_history("late", ["y"], keep=3, ttl_s=60, release=("late", "a"))
    assert await s.history("late") == ["y"]
    assert not await s.acquire("late", "a", 5000)
    # nobody holds it: nothing to release, the push happens
    await s.push_history("free", ["z"], keep=3, ttl_s=60, release=("free", "a"))
    assert await s.history("free") == ["z"]
    assert await s.acquire("free", "b", 5000)


async def test_a_refused_history_push_releases_nothing(h: Harness) -> None:
    s = h.store
    assert await s.acquire("sess", "a", 5000)
    with pytest.raises(ValueError):
        await s.push_history("sess", ["x"], keep=3, ttl_s=0, release=("sess", "a"))
    assert await s.history("sess") == []
    assert not await s.acquire("sess", "b", 5000)


# ---------------------------------------------------------------------- reference model

KEYS = ("k0", "k1", "k2", "k3")
WINDOWS = (Window(60, 10), Window(30, 5), LIFE, Window(120, 30))
"""The window of each key in KEYS (a key is always used with one window)."""
BIG_TTL = 10**6


class Model:
    """The specification, written differently: buckets overlapping [now - window, now]."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.claimed: set[str] = set()
        self.hist: dict[str, list[str]] = defaultdict(list)

    def read(self, key: str, w: Window, now: float) -> int:
        b = self.buckets[key]
        if w.window_s is None:
            total = sum(b.values())
        else:
            bs, win = w.bucket_s, w.window_s
            total = sum(c for i, c in b.items() if i * bs <= now and (i + 1) * bs > now - win)
        return max(total, 0)

    def incr(self, i: Incr, now: float) -> None:
        w = i.window
        t = now if i.at is None else i.at
        idx = 0 if w.window_s is None else math.floor(t / w.bucket_s)
        self.buckets[i.key][idx] = max(self.buckets[i.key][idx] + i.amount, 0)

    def commit(self, batch: list[Guarded], now: float) -> list[bool]:
        out = []
        for g in batch:
            ok = all(
                self.read(x.key, x.window, now)
                + sum(self.read(e.key, e.window, now) for e in x.extra)
                + x.amount
                <= x.limit
                for x in g.guards
            )
            if ok:
                for i in g.incrs:
                    self.incr(i, now)
            out.append(ok)
        return out

    def claim_many(self, keys: list[str]) -> list[bool]:
        out = []
        for k in keys:
            out.append(k not in self.claimed)
            self.claimed.add(k)
        return out

    def push(self, key: str, entries: list[str], keep: int) -> None:
        self.hist[key] = (list(reversed(entries)) + self.hist[key])[: max(keep, 0)]


_incr = st.tuples(st.integers(0, 3), st.integers(-2, 4), st.one_of(st.none(), st.integers(0, 160)))
_guard = st.tuples(
    st.integers(0, 3), st.integers(0, 8), st.integers(0, 2), st.lists(st.integers(0, 3), max_size=2)
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 90)),
        st.tuples(st.just("add"), st.lists(_incr, max_size=4)),
        st.tuples(
            st.just("commit"),
            st.lists(
                st.tuples(st.lists(_guard, max_size=3), st.lists(_incr, max_size=3)),
                max_size=4,
            ),
        ),
        st.tuples(st.just("read"), st.lists(st.integers(0, 3), min_size=1, max_size=4)),
        st.tuples(st.just("claim"), st.lists(st.integers(0, 5), min_size=1, max_size=4)),
        st.tuples(
            st.just("claim_add"),
            st.lists(st.integers(0, 5), min_size=1, max_size=3),
            st.lists(_incr, max_size=3),
        ),
        st.tuples(
            st.just("push"),
            st.integers(0, 2),
            st.lists(st.sampled_from("abcde"), max_size=3),
            st.integers(0, 4),
        ),
        st.tuples(st.just("history"), st.integers(0, 2)),
    ),
    max_size=30,
)
_example = itertools.count()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops)
async def test_matches_reference_model(h: Harness, ops: list[tuple[Any, ...]]) -> None:
    ns = f"ex{next(_example)}:"  # the store outlives examples: give each its own keys
    model = Model()
    s = h.store
    now = T0
    h.clock.t = now  # the memory store's TTL clock follows `now` here (Redis: wall clock)

    def incr(spec: tuple[int, int, int | None]) -> Incr:
        k, amount, back = spec
        return Incr(ns + KEYS[k], WINDOWS[k], amount, at=None if back is None else now - back)

    for op in ops:
        kind = op[0]
        if kind == "advance":
            now += op[1]
            h.clock.t = now
        elif kind == "add":
            incrs = [incr(x) for x in op[1]]
            await s.add(incrs, now)
            for i in incrs:
                model.incr(i, now)
        elif kind == "commit":
            batch = [
                Guarded(
                    tuple(
                        Guard(
                            ns + KEYS[k],
                            WINDOWS[k],
                            lim,
                            amt,
                            tuple(Read(ns + KEYS[x], WINDOWS[x]) for x in extra),
                        )
                        for k, lim, amt, extra in guards
                    ),
                    tuple(incr(x) for x in incrs_),
                )
                for guards, incrs_ in op[1]
            ]
            assert await s.commit(batch, now) == model.commit(batch, now), op
        elif kind == "read":
            reads = [Read(ns + KEYS[k], WINDOWS[k]) for k in op[1]]
            expected = [model.read(r.key, r.window, now) for r in reads]
            assert await s.read(reads, now) == expected, (op, now - T0)
        elif kind == "claim":
            keys = [f"{ns}c{k}" for k in op[1]]
            assert await claim_many(s, keys, BIG_TTL) == model.claim_many(keys)
        elif kind == "claim_add":
            keys = [f"{ns}c{k}" for k in op[1]]
            incrs = [incr(x) for x in op[2]]
            claims = model.claim_many(keys)
            if all(claims):
                for i in incrs:
                    model.incr(i, now)
            assert await s.claim_and_add(keys, BIG_TTL, incrs, now) == claims, op
        elif kind == "push":
            key = f"{ns}h{op[1]}"
            await s.push_history(key, op[2], keep=op[3], ttl_s=BIG_TTL)
            model.push(key, op[2], op[3])
        else:
            key = f"{ns}h{op[1]}"
            assert await s.history(key) == model.hist[key]
    # finally everything, at the final `now`
    reads = [Read(ns + k, w) for k, w in zip(KEYS, WINDOWS, strict=True)]
    assert await s.read(reads, now) == [model.read(r.key, r.window, now) for r in reads]


# ---------------------------------------------------------------------- Redis specifics


def _patient(url: str, **kw: Any) -> RedisStore:
    """A store on the test's Redis with generous timeouts: these tests prove what is
    counted, not latency, and a connect on a loaded 2-core machine took over the default
    second (a CI run failed so)."""
    return RedisStore(url, socket_timeout=5.0, pool_timeout=5.0, **kw)


async def test_two_redis_clients_share_guards(redis_url: str) -> None:  # noqa: F811
    # Generous timeouts: this proves atomicity across clients, not latency on a busy machine.
    a = RedisStore(redis_url, socket_timeout=2.0, pool_timeout=5.0)
    b = RedisStore(redis_url, socket_timeout=2.0, pool_timeout=5.0)
    try:
        w = Window(3600, 300)
        calls = [(a if n % 2 else b).commit([one("cap", w, 50)], T0) for n in range(200)]
        results = await asyncio.gather(*calls)
        assert sum(r[0] for r in results) == 50
        assert await a.read([Read("cap", w)], T0) == await b.read([Read("cap", w)], T0) == [50]
    finally:
        await a.close()
        await b.close()


async def test_a_full_redis_pool_is_told_apart_from_redis_down(
    redis_url: str,  # noqa: F811
) -> None:
    """Under a burst, every pooled connection busy for the pool's wait failed a call as
    ``network:ConnectionError``, word for word what a Redis that refuses connections gave:
    an overloaded instance read as Redis down. A full pool is now its own error, saying so;
    a refused connection says what it was."""
    store = RedisStore(redis_url, max_connections=1, pool_timeout=0.05)
    w = Window(3600, 300)
    try:
        assert await store.read([Read("k", w)], T0) == [0]
        held = await store._pool.get_connection()  # the one connection, busy
        waits = 0
        real = store._pool.get_connection

        async def counted(*args: Any, **kw: Any) -> Any:
            nonlocal waits
            waits += 1
            return await real(*args, **kw)

        store._pool.get_connection = counted  # type: ignore[method-assign]
        try:
            with pytest.raises(StorePoolExhausted, match="pool_exhausted: all 1 connections"):
                await store.read([Read("k", w)], T0)
            assert waits == 1  # not retried: a second wait doubled the documented second
        finally:
            store._pool.get_connection = real  # type: ignore[method-assign]
            await store._pool.release(held)
        assert await store.read([Read("k", w)], T0) == [0]  # free again
    finally:
        await store.close()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RedisStore(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await down.read([Read("k", w)], T0)
        assert not isinstance(info.value, StorePoolExhausted)
        assert "redis read failed: ConnectionError: Error 111" in str(info.value)
    finally:
        await down.close()


async def test_redis_claims_last_the_longest_claim_window_of_any_client(
    redis_url: str,  # noqa: F811
) -> None:
    """Instances on one Redis may run with different token max ages (a rolling change, two
    deploys): every claim lasts the longest claim window any of them claimed with, whichever
    started first, so none lets a replay through to one that still verifies the token; a
    token served before the longest window grew is refused past the window it had then."""
    day, week = 86400 + 3600, 7 * 86400 + 3600
    long, short = _patient(redis_url), _patient(redis_url)
    long.claim_window_s, short.claim_window_s = week, day
    try:
        # the longer one claims first; the shorter one, later, does not shorten the window
        assert await long.claim_and_add(["a"], day, [], T0, served_at=T0) == [True]
        # (a window is in force from its first claim plus the margin)
        s = T0 + CLAIM_MARGIN_S + 5
        assert await short.claim_and_add(["b"], day, [], s + 5, served_at=s) == [True]
        assert await short._client.ttl("vs:d:b") > week - 20
        assert await short.claim_and_add(["b"], day, [], T0 + 3 * 86400, served_at=s) == [False]
        # without a serve time a claim is as asked
        assert await short.claim_and_add(["c"], 60, [], T0) == [True]
        assert 0 < await short._client.ttl("vs:d:c") <= 60
    finally:
        await long.close()
        await short.close()
    # the shorter one first (on other keys), then the longer one
    long, short = _patient(redis_url, prefix="x:"), _patient(redis_url, prefix="x:")
    long.claim_window_s, short.claim_window_s = week, day
    try:
        assert await short.claim_and_add(["a"], day, [], T0, served_at=T0) == [True]
        assert await long.claim_and_add(["b"], week, [], T0 + 10, served_at=T0 + 10) == [True]
        assert await short._client.ttl("x:d:a") <= day  # written before the window grew
        # served before the window grew: refused once a claim of it may have lapsed
        with pytest.raises(ClaimExpired):
            await long.claim_and_add(["a"], 60, [Incr("n", LIFE)], T0 + day, served_at=T0)
        assert await long.read([Read("n", LIFE)], T0 + day) == [0]
        # served after it: claimed for the longest window, by either
        now = T0 + 3 * 86400
        s = T0 + 11 + CLAIM_MARGIN_S
        assert await short.claim_and_add(["c"], 60, [], now, served_at=s) == [True]
        assert await short._client.ttl("x:d:c") > s + week - now - 20
    finally:
        await long.close()
        await short.close()


async def test_redis_claim_window_grown_by_a_slow_clock_refuses_what_it_cannot_cover(
    redis_url: str,  # noqa: F811
) -> None:
    """A longer window is in force from its first claim plus the margin, by the claiming
    instance's clock: an instance whose clock is behind (less than the margin) once recorded
    it before tokens another instance served and claimed under the shorter window, and a
    replay of one, after its claim lapsed, was counted again."""
    short_w, long_w, skew = 7200, 18000, 60
    a, b = _patient(redis_url), _patient(redis_url)
    a.claim_window_s, b.claim_window_s = short_w, long_w
    try:
        assert await a.claim_and_add(["warm"], short_w, [], T0, served_at=T0) == [True]
        t1 = T0 + 5000
        s = t1 - 30  # a serves a token 30 s before b's first claim; its beacon comes to a
        keys, inc = ["tok:impression"], [Incr("n", LIFE)]
        assert await a.claim_and_add(keys, int(s + short_w - s - 2), inc, s + 2, served_at=s)
        # b's first claim at true time t1, its clock 60 s behind
        assert await b.claim_and_add(["other"], long_w, [], t1 - skew, served_at=t1 - 70)
        await a._client.delete("vs:d:tok:impression")  # the claim lapsed at s + short_w
        r = s + short_w + 100  # the replay, to b, where the token still verifies
        with pytest.raises(ClaimExpired):
            await b.claim_and_add(keys, int(s + long_w - r), inc, r - skew, served_at=s)
        assert await a.read([Read("n", LIFE)], r) == [1]
        # the recorded time never moves, and a token served after it lasts the long window
        before = await a._client.zscore("vs:claim-windows", str(long_w))
        assert before == t1 - skew + CLAIM_MARGIN_S
        late = t1 + CLAIM_MARGIN_S
        assert await b.claim_and_add(["late"], 60, [], late + 9000, served_at=late) == [True]
        assert await a._client.zscore("vs:claim-windows", str(long_w)) == before
    finally:
        await a.close()
        await b.close()


async def test_redis_claim_windows_recorded_in_the_same_second_compare_as_numbers(
    redis_url: str,  # noqa: F811
) -> None:
    """Windows first claimed with in the same second (a fleet started together) have equal
    scores, which Redis orders by member string: '90000' passed for longer than '176400',
    the longer window's time was moved on each claim, and a valid token was refused."""
    day, two_days = 86400 + 3600, 2 * 86400 + 3600
    a, b = _patient(redis_url), _patient(redis_url)
    a.claim_window_s, b.claim_window_s = day, two_days
    try:
        assert await a.claim_and_add(["x"], day, [], T0 + 0.2, served_at=T0 - 3) == [True]
        assert await b.claim_and_add(["y"], two_days, [], T0 + 0.7, served_at=T0 - 5) == [True]
        s = T0 + 3600
        now = s + 30 * 3600  # b's token, first beaconed 30 h later, to b
        assert await b.claim_and_add(["t"], int(s + two_days - now), [], now, served_at=s) == [True]
        assert await b._client.ttl("vs:d:t") > s + two_days - now - 20
        assert await b._client.zscore("vs:claim-windows", str(two_days)) == T0 + CLAIM_MARGIN_S
    finally:
        await a.close()
        await b.close()


async def test_redis_claim_window_unused_for_its_length_drops_out(
    redis_url: str,  # noqa: F811
) -> None:
    """One start with a huge token max age made every later claim of the fleet last that
    long, for good. A window no instance claimed with for its own length drops out; the
    tokens served while it was in force stay covered until then."""
    day, month = 86400 + 3600, 30 * 86400 + 3600
    fleet, once = _patient(redis_url), _patient(redis_url)
    fleet.claim_window_s, once.claim_window_s = day, month
    try:
        assert await fleet.claim_and_add(["a"], day, [], T0, served_at=T0) == [True]
        assert await once.claim_and_add(["b"], month, [], T0 + 2, served_at=T0 + 2) == [True]
        # a token the long instance served once its window was in force, counted by the fleet
        s = T0 + 2 + CLAIM_MARGIN_S + 1
        inc = [Incr("n", LIFE)]
        assert await fleet.claim_and_add(["t"], day, inc, s + 10, served_at=s) == [True]
        assert await fleet._client.ttl("vs:d:t") > month - 100  # as long as the long window
        # a month on, still in force: fleet claims last a month
        t = T0 + 29 * 86400
        assert await fleet.claim_and_add(["c29"], day, [], t, served_at=t) == [True]
        assert await fleet._client.ttl("vs:d:c29") > month - 20
        # replayed to the long instance after its claim lapsed (deleted here) but before it
        # could have: refused as a duplicate while the claim lives, expired once it may not
        await fleet._client.delete("vs:d:t")
        last_use = s + month - 10
        with pytest.raises(ClaimExpired):
            await once.claim_and_add(["t"], 60, inc, last_use, served_at=s)
        # unused for its length (and the margin): the fleet's claims last a day again
        t = last_use + month + CLAIM_MARGIN_S - 100
        assert await fleet.claim_and_add(["c59"], day, [], t, served_at=t) == [True]
        assert await fleet._client.ttl("vs:d:c59") > month - 20
        t += 200
        assert await fleet.claim_and_add(["c31"], day, [], t, served_at=t) == [True]
        assert 0 < await fleet._client.ttl("vs:d:c31") <= day
        assert await fleet._client.zrange("vs:claim-windows", 0, -1) == [str(day)]
        # and the long instance back claims with it again, from then on
        t += 100
        assert await once.claim_and_add(["d"], month, [], t, served_at=t) == [True]
        assert await fleet._client.zscore("vs:claim-windows", str(month)) == t + CLAIM_MARGIN_S
        assert await fleet.read([Read("n", LIFE)], t) == [1]
    finally:
        await fleet.close()
        await once.close()


async def test_redis_claims_left_by_versions_that_recorded_no_window_are_not_counted_twice(
    redis_url: str,  # noqa: F811
) -> None:
    """Versions up to e9206d6 claimed for the token max age and an hour from the beacon
    (90,000 s by default) and recorded no claim window. A first instance with a raised max
    age then judged their tokens with its own window: a replay of one, after the old claim
    lapsed (25 h) but while the new instance still verified it (48 h), counted again."""
    two_days = 2 * 86400 + 3600
    new = _patient(redis_url)
    new.claim_window_s = two_days
    served = T0 - 60
    keys, inc = ["tok:impression"], [Incr("n", LIFE)]
    try:
        # as the old version left it: the claim and its count, no claim-windows keys
        await new._client.set("vs:d:tok:impression", "1", ex=LEGACY_CLAIM_WINDOW_S)
        await new.add(inc, served + 5)
        assert not await new._client.exists("vs:claim-windows", "vs:claim-windows:used")
        now = served + 26 * 3600  # the new instance's first beacon
        assert await new.claim_and_add(["other"], two_days, [], now, served_at=now - 30) == [True]
        await new._client.delete("vs:d:tok:impression")  # lapsed at beacon + 90,000 s
        with pytest.raises(ClaimExpired):
            await new.claim_and_add(keys, two_days, inc, now + 5, served_at=served)
        assert await new.read([Read("n", LIFE)], now + 5) == [1]
        # its tokens are still judged by the claims they left while those live
        early = T0 + 3600
        assert await new.claim_and_add(["tok2:impression"], 60, [], early, served_at=served) == [
            True
        ]
        # nothing else is recorded: the new instance's claims last its own window
        assert await new._client.ttl("vs:d:other") > two_days - 60
        assert await new._client.zrange("vs:claim-windows", 0, -1) == [str(two_days)]
    finally:
        await new.close()
    # a recorded window shorter than the legacy one still answers for what came before it
    short = _patient(redis_url, prefix="y:")
    short.claim_window_s = 7200
    try:
        assert await short.claim_and_add(["a"], 7200, [], T0, served_at=T0 - 10) == [True]
        with pytest.raises(ClaimExpired):
            await short.claim_and_add(["b"], 60, [], T0 - 10 + 7200, served_at=T0 - 10)
    finally:
        await short.close()


async def test_redis_a_new_redis_judges_its_first_tokens_with_the_legacy_window(
    redis_url: str,  # noqa: F811
) -> None:
    """What README says of ``VASTSERVER_TOKEN_MAX_AGE`` on a new Redis: the first window is
    in force only from its first beacon plus the margin, and a token served before that is
    judged as one a version that recorded no window could have served, with at most
    90,000 s (its beacons ``expired`` from 24 h 50 min after the serve with a 2-day max
    age), though its claims last the window; one served after it, with the window."""
    two_days = 2 * 86400 + 3600
    st_ = _patient(redis_url)
    st_.claim_window_s = two_days
    early, late = T0 - 60, T0 + CLAIM_MARGIN_S + 1
    try:
        assert await st_.claim_and_add(["a:impression"], two_days, [], T0, served_at=early) == [
            True
        ]
        assert await st_._client.ttl("vs:d:a:impression") > two_days - 120
        cutoff = early + LEGACY_CLAIM_WINDOW_S - CLAIM_MARGIN_S
        assert cutoff - early == 24 * 3600 + 50 * 60
        assert await st_.claim_and_add(["a:complete"], 60, [], cutoff, served_at=early) == [True]
        with pytest.raises(ClaimExpired):
            await st_.claim_and_add(["a:click"], 60, [], cutoff + 1, served_at=early)
        at = late + 30 * 3600
        assert await st_.claim_and_add(["b:impression"], 60, [], at, served_at=late) == [True]
    finally:
        await st_.close()


async def test_redis_claim_windows_never_count_a_replay_twice(
    redis_url: str,  # noqa: F811
) -> None:
    """Instances with different token max ages and clocks (skew under the margin) that come
    and go over months, tokens replayed at random times to random instances: each claim is
    dropped here once Redis would have let it lapse, and no token ever counts twice."""
    rng = random.Random(7)
    ages = [3600, 86400, 7 * 86400, 30 * 86400]
    stores = [_patient(redis_url) for _ in ages]
    for st_, age in zip(stores, ages, strict=True):
        st_.claim_window_s = age + 3600
    skews = [rng.uniform(-CLAIM_MARGIN_S / 2.5, CLAIM_MARGIN_S / 2.5) for _ in ages]
    expiry: dict[str, float] = {}  # claim key -> true time it lapses
    counted: dict[str, int] = defaultdict(int)
    tokens: list[tuple[str, float]] = []
    now = T0
    try:
        for step in range(3000):
            now += rng.choice([1, 30, 600, 3600, 3600, 6 * 3600, 86400, 86400, 20 * 86400])
            awake = [i for i in range(len(ages)) if (now // (40 * 86400) + i) % 3 != 0]
            i = rng.choice(awake)
            clock = now + skews[i]
            if rng.random() < 0.4 or not tokens:
                tokens.append((f"t{step}", clock))  # instance i serves a token
                continue
            tok, served = rng.choice(tokens[-30:])
            if clock - served > ages[i]:
                continue  # i's token check refuses it
            lapsed = [k for k, t in expiry.items() if t <= now]
            if lapsed:
                await stores[0]._client.delete(*(f"vs:d:{k}" for k in lapsed))
                for k in lapsed:
                    del expiry[k]
            ttl = max(1, math.ceil(served + ages[i] + 3600 - clock))
            try:
                res = await stores[i].claim_and_add(
                    [tok], ttl, [Incr(tok, LIFE)], clock, served_at=served
                )
            except ClaimExpired:
                continue
            if res == [True]:
                counted[tok] += 1
                expiry[tok] = now + await stores[i]._client.ttl(f"vs:d:{tok}")
        assert counted and max(counted.values()) == 1
        assert len(await stores[0]._client.zrange("vs:claim-windows", 0, -1)) < len(ages)
    finally:
        for st_ in stores:
            await st_.close()


async def test_redis_restart(request: pytest.FixtureRequest) -> None:
    url: str = request.getfixturevalue("redis_url")
    server: RedisServer = request.getfixturevalue("redis_server")
    store = RedisStore(url, socket_timeout=0.1)
    try:
        assert await store.commit([one("k", LIFE, 5)], T0) == [True]
        # 1. restart while the pool holds idle connections: the next call just works
        server.restart()
        await asyncio.sleep(0.05)  # the (blocking) restart kept the loop from seeing the EOFs
        assert await store.commit([one("k", LIFE, 5)], T0) == [True]  # scripts re-loaded
        assert await store.read([Read("k", LIFE)], T0) == [1]  # no persistence: data lost

        # 2. while it is down every operation fails fast with StoreUnavailable
        server.stop()
        ops = [
            lambda: store.read([Read("k", LIFE)], T0),
            lambda: store.add([Incr("k", LIFE)], T0),
            lambda: store.commit([one("k", LIFE, 5)], T0),
            lambda: store.claim_and_add(["c"], 60, [Incr("k", LIFE)], T0),
            lambda: store.history("h"),
            lambda: store.push_history("h", ["x"], keep=3, ttl_s=60),
            lambda: store.push_history("h", ["x"], keep=3, ttl_s=60, release=("h", "a")),
        ]
        for op in ops:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(op(), 10)  # a hang would fail here, not block
        assert not await store.ping()

        # 3. back up: the same store object recovers
        server.start()
        assert await store.ping()
        assert await store.commit([one("k", LIFE, 5)], T0) == [True]
        assert await claim_many(store, ["c", "c"], 60) == [True, False]
        assert await store.claim_and_add(["e"], 60, [Incr("k", LIFE)], T0) == [True]
        await store.push_history("h", ["x"], keep=3, ttl_s=60)
        assert await store.history("h") == ["x"]
    finally:
        if server.proc is None:
            server.start()
        await store.close()


async def test_redis_history_push_that_fails_releases_nothing(redis_url: str) -> None:  # noqa: F811
    """A push that Redis refuses (here: the history key holds another type) raises
    StoreUnavailable and leaves the lock held: the write and the release are one script,
    and the release comes after the write, so a failed write never frees the session."""
    store = _patient(redis_url)
    raw = Redis.from_url(redis_url)
    try:
        await raw.set("vs:h:sess", "not a list")
        assert await store.acquire("sess", "a", 5000)
        with pytest.raises(StoreUnavailable):
            await store.push_history("sess", ["x"], keep=3, ttl_s=60, release=("sess", "a"))
        assert await raw.get("vs:h:sess") == b"not a list"
        assert not await store.acquire("sess", "b", 5000)  # still a's
        # the owner then releases on its own (as DeliveryControl.remember does)
        await store.release("sess", "a")
        assert await store.acquire("sess", "b", 5000)
        # one EVALSHA, no MULTI: the script is all of the call
        await raw.config_resetstat()
        await store.push_history("ok", ["x"], keep=3, ttl_s=60, release=("sess", "b"))
        stats = await raw.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1
        assert "cmdstat_multi" not in stats and "cmdstat_exec" not in stats
        assert await store.acquire("sess", "c", 5000)
    finally:
        await raw.aclose()
        await store.close()


async def test_redis_unreachable_raises_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.1)
    try:
        with pytest.raises(StoreUnavailable):
            await store.read([Read("k", W60)], T0)
        with pytest.raises(StoreUnavailable):
            await claim_many(store, ["a"], 60)
        assert not await store.ping()
    finally:
        await store.close()


async def test_open_store() -> None:
    mem = open_store(None)
    assert isinstance(mem, MemoryStore) and mem.name == "memory"
    red = open_store("redis://127.0.0.1:1/0")  # no I/O until first use
    assert isinstance(red, RedisStore) and red.name == "redis"
    await mem.close()
    await red.close()


# ---------------------------------------------------------------------- memory specifics


async def test_memory_drops_expired_locks_whose_release_was_lost() -> None:
    clock = FakeClock(T0)
    s = MemoryStore(clock=clock)
    for i in range(5000):
        assert await s.acquire(f"lost-{i}", "a", 1000)
    clock.t += 2
    for i in range(5000):
        assert await s.acquire(f"held-{i}", "a", 60_000)
    assert len(s._locks) == 5000  # the expired ones went; the live ones stayed
    assert not await s.acquire("held-0", "b", 1000)
    assert len(s) == 0  # no key of the LRU map: never evicted, not in the state file


async def test_memory_evicts_least_recently_touched() -> None:
    s = MemoryStore(max_keys=10, clock=FakeClock(T0))
    await s.add([Incr(f"k{i}", W60) for i in range(10)], T0)
    await s.read([Read("k0", W60)], T0)  # touched: now the most recent
    await s.add([Incr(f"k{i}", W60) for i in range(10, 15)], T0)
    assert len(s) == 10
    assert s.evictions == 5
    values = await s.read([Read(f"k{i}", W60) for i in range(15)], T0)
    # an evicted counter reads 0 (a cap could be granted again under memory pressure)
    assert values == [1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    # that read touched k0 first, so k0 is now the least recently touched; claims and
    # histories count towards max_keys too
    assert await claim(s, "claim", 60)
    assert len(s) == 10 and s.evictions == 6
    assert await s.read([Read("k0", W60), Read("k6", W60)], T0) == [0, 1]


async def test_memory_refuses_claims_that_may_have_been_evicted() -> None:
    """A claim is written once and never touched, so it is soon the least recently used: a
    replay after its eviction must not be claimed (counted) again. Claims with an expiry up
    to the latest evicted live claim's are refused; later ones are claimed as usual."""
    clock = FakeClock(T0)
    s = MemoryStore(max_keys=5, clock=clock)
    assert await claim(s, "bc:old:impression", 3600)
    clock.t += 10
    assert await claim(s, "bc:new:impression", 3600)  # 10 s later: a later expiry
    await s.add([Incr(f"viewer{i}", W60) for i in range(4)], T0)  # evicts the first claim
    assert s.evictions == 1 and s.claim_horizon == math.ceil(T0 + 3600)
    clock.t -= 10
    assert s.forgotten == 0
    assert await claim_many(s, ["bc:old:impression", "bc:old:settled"], 3600) == [False, False]
    assert s.forgotten == 1  # one call (a replay, or a first claim just as old): refused
    clock.t += 10
    assert not await claim(s, "bc:new:impression", 3600)  # still held: a plain duplicate
    assert await claim(s, "bc:newer:impression", 3600 + 5)
    assert s.forgotten == 1
    # a claim that had expired when it was evicted moves no horizon
    t = MemoryStore(max_keys=1, clock=clock)
    assert await claim(t, "short", 1)
    clock.t += 5
    await t.add([Incr("x", W60)], clock.t)
    assert t.evictions == 1 and t.claim_horizon == 0


async def test_memory_sweeps_expired_keys() -> None:
    clock = FakeClock(T0)
    s = MemoryStore(clock=clock)
    # long-lived keys touched first must not hold back the sweeping of short-lived ones
    await s.add([Incr("long", Window(86400, 7200)), Incr("life", LIFE)], T0)
    await s.push_history("sess", ["a"], keep=3, ttl_s=86400)
    peak = 0
    n = 20_000
    for i in range(n):
        clock.t += 0.01
        await claim(s, f"c{i}", 2)
        await s.add([Incr(f"v{i}", Window(10, 5))], clock.t)  # expires after 15 s
        peak = max(peak, len(s))
    # live: ~200 claims + ~1500 counters, plus up to one 8-s wheel slot of each
    assert peak < 5_000, peak
    assert s.expirations > 2 * n - 5_000
    clock.t += 3600
    for _ in range(200):
        await s.read([], clock.t)
    assert len(s) == 3  # "long", "life", "sess"
    assert await s.read([Read("long", Window(86400, 7200)), Read("life", LIFE)], clock.t) == [1, 1]
    assert await s.history("sess") == ["a"]
    assert not s._wheel or all(len(slot) <= 2 for slot in s._wheel.values())


async def test_memory_buckets_are_trimmed() -> None:
    s = MemoryStore(clock=FakeClock(T0))
    w = Window(60, 10)
    for t in range(0, 1000, 3):
        await s.add([Incr("busy", w)], T0 + t)
    stored = s._data["busy"]
    assert isinstance(stored, tuple)
    assert (len(stored) - 1) // 2 <= 7  # at most window/bucket + 1 buckets kept
    await s.add([Incr("r", w, 1)], T0)
    await s.add([Incr("r", w, -1, at=T0)], T0 + 5)
    assert "r" not in s._data  # a counter back at zero frees its memory


def test_memory_read_equals_its_single_counter_read() -> None:
    """MemoryStore.read inlines _get (the guards' read) for speed: they must agree."""
    from vastserver.store.memory import _ckey

    clock_now = [T0]
    store = MemoryStore(clock=lambda: clock_now[0])
    rng = random.Random(4)
    windows = [LIFE, W60, Window(300, 30), Window(3600, 300)]
    keys = [f"k{i}" for i in range(30)] + ["\x01odd", "h:x"]
    window_of = {k: rng.choice(windows) for k in keys}
    for step in range(400):
        now = T0 + step * 3.7
        clock_now[0] = now
        k = rng.choice(keys)
        ttl = rng.choice([None, None, 5, 50])
        incr = Incr(k, window_of[k], rng.randint(-2, 3), ttl_s=ttl)
        asyncio.run(store.add([incr], now))
        reads = [Read(key, window_of[key]) for key in keys]
        got = asyncio.run(store.read(reads, now))
        want = [store._get(_ckey(r.key), r.window, now, clock_now[0]) for r in reads]
        assert got == want


# hiredis packs the Redis store's commands (redis-py's asyncio connections would in Python)
_args = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.binary(max_size=40),
        st.integers(min_value=-(2**63), max_value=2**63),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from(["EVALSHA", "SET", "SCRIPT LOAD", b"CLIENT SETNAME", b"LRANGE"]),
    args=_args,
)
def test_redis_commands_pack_as_redis_py_packs_them(head: str | bytes, args: list[Any]) -> None:
    """The store's connections send the very bytes redis-py's own packer gives."""
    from redis.asyncio.connection import AbstractConnection, Connection

    from vastserver.store.redis import _hiredis_pack, _hiredis_packing

    assert _hiredis_pack is not None  # hiredis is a dependency
    conn = _hiredis_packing(Connection)()
    assert b"".join(conn.pack_command(head, *args)) == b"".join(
        AbstractConnection.pack_command(conn, head, *args)
    )


def test_redis_packing_leaves_other_arguments_to_redis_py() -> None:
    """A float, a lone surrogate or another encoding take redis-py's path, errors included."""
    from redis.asyncio.connection import AbstractConnection, Connection
    from redis.exceptions import DataError

    from vastserver.store.redis import _hiredis_packing

    conn = _hiredis_packing(Connection)()
    assert conn.pack_command("SET", "k", 1.5) == AbstractConnection.pack_command(
        conn, "SET", "k", 1.5
    )
    with pytest.raises(DataError):
        conn.pack_command("SET", "k", True)
    with pytest.raises(UnicodeEncodeError):
        conn.pack_command("SET", "k", "\ud800")
    latin = _hiredis_packing(Connection)(encoding="latin-1")
    assert (
        b"".join(latin.pack_command("SET", "k", "é"))
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    )


async def test_redis_store_connections_pack_with_hiredis(redis_url: str) -> None:  # noqa: F811
    """Whatever the URL's connection class, the store's pool makes it pack with hiredis."""
    from vastserver.store.redis import _pack_command

    store = _patient(redis_url)
    try:
        cls = store._pool.connection_class
        assert cls.pack_command is _pack_command
        assert cls.__mro__[1].__name__ == "Connection"  # redis:// is plain TCP
        assert await store.read([Read("k", LIFE)], T0) == [0]
    finally:
        await store.close()
    unix = RedisStore("unix:///tmp/no-such-redis.sock")
    try:
        assert unix._pool.connection_class.__mro__[1].__name__ == "UnixDomainSocketConnection"
    finally:
        await unix.close()
