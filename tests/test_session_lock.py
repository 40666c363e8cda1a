"""The decisions of one session take turns: from reading the session's history to writing the
new break into it, no other decision of the session reads it (stream-level separation of
breaks fetched at once, e.g. a stitcher's look-ahead), in one process and across instances on
one Redis. A lock not had in time, or a store failing, lets the decision go on unlocked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from tests.delivery_support import Clock, make_service, request, six_advertisers
from tests.support.redis_server import (  # noqa: F401  (pytest fixtures)
    redis_server,
    redis_url,
)
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.decide import Decision
from vastserver.pipeline.delivery import SeparationRules, history_key
from vastserver.pipeline.schedule import PlannedBreak
from vastserver.service import AdService
from vastserver.store import MemoryStore, RedisStore, Store, StoreUnavailable
from vastserver.store.timed import TimedStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = SeparationRules(creative_breaks=3, creative_minutes=30, competitive_breaks=1)


def _break(session: str, avail: int, *, test: bool = False) -> AdRequest:
    req = request("viewer-1", pod_s=30, max_ads=2, session=session)
    return replace(req, brk=replace(req.brk, avail=avail, avail_given=True), test=test)


def _service(store: Store, seed: int = 1) -> AdService:
    return make_service(six_advertisers(), store, Clock(T0), seed=seed, separation=RULES)


def _degraded(svc: AdService, reason: str) -> float:
    value: float = svc.metrics.degradations.labels(reason)._value.get()
    return value


class SlowHistory(TimedStore):
    """A store whose history reads answer ``delay`` late: every decision of breaks fetched
    at once reads the session's history before any of them writes it, unless they take
    turns. Records the avail of each history write, in the order they land."""

    def __init__(self, inner: Store, delay: float = 0.02, written: list[int] | None = None) -> None:
        super().__init__(inner, lambda op, seconds: None)
        self.local = False
        self.delay = delay
        self.written: list[int] = [] if written is None else written

    async def history(self, key: str) -> list[str]:
        got = await self.inner.history(key)
        await asyncio.sleep(self.delay)
        return got

    async def push_history(
        self,
        key: str,
        entries: Sequence[str],
        *,
        keep: int,
        ttl_s: int,
        release: tuple[str, str] | None = None,
    ) -> None:
        self.written.append(int(entries[0].split("|", 1)[0]))
        await self.inner.push_history(key, entries, keep=keep, ttl_s=ttl_s, release=release)


def _labels(d: Decision) -> set[str]:
    return {a.candidate.advertiser.competitive_category or "" for a in d.ads} - {""}


def _assert_separated(by_avail: dict[int, Decision], order: list[int]) -> None:
    """No creative twice among the breaks, and no competitive label in two breaks within
    ``competitive_breaks`` of each other, whichever was decided first (the distance counts
    both ways); ``order``, the avails in the order their history landed, names each once."""
    assert sorted(order) == sorted(a for a, d in by_avail.items() if d.ads), order
    creatives = [a.candidate.creative.id for d in by_avail.values() for a in d.ads]
    assert len(creatives) == len(set(creatives)), creatives
    for first in by_avail:
        for later in by_avail:
            if 0 < later - first <= RULES.competitive_breaks:
                shared = _labels(by_avail[first]) & _labels(by_avail[later])
                assert not shared, (first, later, shared)


async def test_breaks_of_one_session_fetched_at_once_keep_separation_on_redis(
    redis_url: str,  # noqa: F811
) -> None:
    """A look-ahead stitcher fetches avails k, k+1, k+2 of one session at once, through two
    instances on one Redis. Without turns all three read the empty history and pick the
    same pod; with them every break sees the ones decided before it."""
    redis_a, redis_b = RedisStore(redis_url), RedisStore(redis_url)
    written: list[int] = []  # the avails whose history landed, in order
    slow_a, slow_b = SlowHistory(redis_a, written=written), SlowHistory(redis_b, written=written)
    services = [_service(slow_a, seed=1), _service(slow_b, seed=2)]
    try:
        for trial in range(3):
            avails = [4, 5, 6]
            got = await asyncio.gather(
                *(
                    services[i % 2].decide(_break(f"look-ahead-{trial}", a))
                    for i, a in enumerate(avails)
                )
            )
            # the first break decided fills: three categories, and breaks within one of
            # a filled one keep out its labels (a middle break decided last may get none)
            assert sum(len(d.ads) for d in got) >= 2
            _assert_separated(dict(zip(avails, got, strict=True)), written)
            written.clear()
        for svc in services:
            assert _degraded(svc, "session_lock_timeout") == 0
            assert _degraded(svc, "session_lock_unavailable") == 0
        # every lock was released
        assert await redis_a.acquire(history_key("look-ahead-0"), "someone", 1000)
    finally:
        await redis_a.close()
        await redis_b.close()


async def test_breaks_fetched_at_once_take_turns_in_one_process() -> None:
    """The same on the in-memory store, when something between the history read and the
    write lets other requests run (here: a slow history read)."""
    slow = SlowHistory(MemoryStore())
    svc = _service(slow)
    avails = [7, 8, 9]
    got = await asyncio.gather(*(svc.decide(_break("s", a)) for a in avails))
    _assert_separated(dict(zip(avails, got, strict=True)), list(slow.written))
    assert got[0].ads


async def test_a_lock_not_had_in_time_lets_the_decision_go_on_unlocked() -> None:
    store = MemoryStore()
    svc = _service(store)
    assert await store.acquire(history_key("s"), "another-request", 60_000)
    loop = asyncio.get_running_loop()
    t = loop.time()
    d = await svc.decide(_break("s", 0), deadline=t + 0.06)
    waited = loop.time() - t
    assert d.ads  # decided all the same
    assert _degraded(svc, "session_lock_timeout") == 1
    # it asked until too little of the deadline was left, no longer
    assert 0.06 - 0.025 - 0.01 <= waited < 0.06
    # the other request's lock is untouched
    assert not await store.acquire(history_key("s"), "third", 1000)
    await store.release(history_key("s"), "another-request")
    assert await store.acquire(history_key("s"), "third", 1000)


async def test_a_decision_waits_for_the_lock_to_be_released() -> None:
    store = MemoryStore()
    svc = _service(store)
    key = history_key("s")
    assert await store.acquire(key, "another-request", 60_000)

    async def release_soon() -> None:
        await asyncio.sleep(0.02)
        await store.release(key, "another-request")

    loop = asyncio.get_running_loop()
    t = loop.time()
    releaser = asyncio.ensure_future(release_soon())
    d = await svc.decide(_break("s", 0), deadline=t + 0.15)
    await releaser
    assert d.ads
    assert loop.time() - t >= 0.02
    assert _degraded(svc, "session_lock_timeout") == 0
    assert await store.history(key)  # decided after the other, and remembered
    assert await store.acquire(key, "third", 1000)  # and released


async def test_a_store_failing_on_acquire_fails_open() -> None:
    class NoLocks(SlowHistory):
        async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
            raise StoreUnavailable("down")

    store = NoLocks(MemoryStore(), delay=0)
    svc = _service(store)
    d = await svc.decide(_break("s", 0), deadline=asyncio.get_running_loop().time() + 0.15)
    assert d.ads
    assert _degraded(svc, "session_lock_unavailable") == 1
    assert svc.metrics.store_errors.labels("session_lock")._value.get() == 1
    assert store.written == [0]  # the break still entered the history


async def test_a_preview_and_a_sessionless_request_take_no_lock() -> None:
    store = MemoryStore()
    svc = _service(store)
    assert await store.acquire(history_key("s"), "another-request", 60_000)
    t = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + 0.2
    assert (await svc.decide(_break("s", 0, test=True), deadline=deadline)).ads
    assert (await svc.decide(request("viewer-2"), deadline=deadline)).ads
    assert time.perf_counter() - t < 0.1  # waiting for the lock would take 0.175 s
    assert _degraded(svc, "session_lock_timeout") == 0


async def test_an_inline_stream_locks_each_break_without_waiting_on_itself() -> None:
    """``decide_stream`` decides its breaks one after the other, each in its own turn."""
    store = MemoryStore()
    svc = _service(store)
    base = _break("s", 0)
    breaks = [
        PlannedBreak(f"b{a}", base.brk.position, 60.0 * a, duration_s=30, max_ads=2, avail=a)
        for a in range(3)
    ]
    loop = asyncio.get_running_loop()
    got = await svc.decide_stream(base, breaks, deadline=loop.time() + 0.15)
    assert all(d is not None and d.ads for d in got)
    assert _degraded(svc, "session_lock_timeout") == 0
    assert await store.acquire(history_key("s"), "next", 1000)  # nothing left held
