"""A decision with a session on Redis: its round trips (the history write frees the
session's lock in the same call), and look-ahead breaks through two instances over HTTP
still keep stream separation."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.conftest import ClientFactory
from tests.delivery_support import CATEGORIES, Clock, make_service, request, six_advertisers
from vastserver.app import RUNTIME
from vastserver.pipeline.delivery import history_key
from vastserver.store import RedisStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NS = {"v": "http://www.iab.com/VAST"}


class Calls:
    """Counts what one ``RedisStore`` sends: packed writes (a round trip each: a script
    call, a command or a whole pipeline) and the commands in them."""

    def __init__(self, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.round_trips = 0
        self.commands: list[str] = []
        cls: Any = store._pool.connection_class  # this store's own class (hiredis packing)
        send, pack = cls.send_packed_command, cls.pack_command

        async def counting_send(conn: Any, command: Any, check_health: bool = True) -> None:
            self.round_trips += 1
            await send(conn, command, check_health)

        def counting_pack(conn: Any, *args: Any) -> list[bytes]:
            head = args[0]
            self.commands.append((head.decode() if isinstance(head, bytes) else head).upper())
            out: list[bytes] = pack(conn, *args)
            return out

        monkeypatch.setattr(cls, "send_packed_command", counting_send)
        monkeypatch.setattr(cls, "pack_command", counting_pack)


def _four_ad_catalog() -> dict[str, Any]:
    cat = six_advertisers()
    for adv in cat["advertisers"]:
        del adv["competitive_category"]  # a 60 s break takes four of the six
    return cat


async def test_a_decision_with_a_session_takes_five_round_trips(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock, counters and history (concurrently), reservation, and the history write that
    also frees the lock: five round trips, five commands (the release used to be a sixth
    round trip after the history's MULTI/LPUSH/LTRIM/EXPIRE/EXEC)."""
    store = RedisStore(redis_url)
    svc = make_service(_four_ad_catalog(), store, Clock(T0))
    loop = asyncio.get_running_loop()

    def brk(i: int) -> Any:
        req = request(f"viewer-{i}", pod_s=60, max_ads=4, session=f"s-{i}")
        return replace(req, brk=replace(req.brk, avail=0, avail_given=True))

    try:
        warm = await svc.decide(brk(0), deadline=loop.time() + 2)  # scripts loaded, pool open
        assert len(warm.ads) == 4
        calls = Calls(store, monkeypatch)
        d = await svc.decide(brk(1), deadline=loop.time() + 2)
        assert len(d.ads) == 4
        assert calls.round_trips == 5, calls.commands
        assert sorted(calls.commands) == ["EVALSHA"] * 4 + ["LRANGE"], calls.commands
        assert len(await store.history(history_key("s-1"))) == 4  # written
        assert await store.acquire(history_key("s-1"), "next", 1000)  # and freed
        # a break without ads writes no history, and frees the lock on its own
        full = request("viewer-1", pod_s=60, max_ads=4, session="s-1")
        empty = replace(full, brk=replace(full.brk, pod_duration_ms=5000, avail=1))
        await store.release(history_key("s-1"), "next")
        calls.round_trips, calls.commands = 0, []
        assert not (await svc.decide(empty, deadline=loop.time() + 2)).ads
        # lock, counters and history, and the release (no reservation, no history write)
        assert calls.round_trips == 4, calls.commands
        assert sorted(calls.commands) == ["EVALSHA"] * 3 + ["LRANGE"], calls.commands
        assert len(await store.history(history_key("s-1"))) == 4
        assert await store.acquire(history_key("s-1"), "next", 1000)
    finally:
        await store.close()


def _creatives(body: bytes) -> list[str]:
    root = etree.fromstring(body)
    return [str(c.get("id")) for c in root.iterfind(".//v:Creative", NS)]


async def test_look_ahead_breaks_through_two_instances_keep_separation_over_http(
    make_client: ClientFactory,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stitcher fetches avails 4, 5, 6 of one session at once, alternating between two
    instances on one Redis, whose history reads answer late (every break would read the
    empty history without turns). Each break's history write frees its turn: no creative
    repeats, and no competitive category plays in neighbouring breaks."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(six_advertisers()))
    clients = [
        await make_client(seed=i, catalog=str(path), redis=redis_url, deadline_ms=2000)
        for i in (1, 2)
    ]
    for c in clients:
        inner = c.server.app[RUNTIME].store.inner
        real = inner.history

        async def slow(key: str, real: Any = real) -> list[str]:
            got: list[str] = await real(key)
            await asyncio.sleep(0.03)
            return got

        monkeypatch.setattr(inner, "history", slow)
    category = {f"cr-{i}": CATEGORIES[i % 3] for i in range(6)}
    for trial in range(3):
        avails = [4, 5, 6]
        resps = await asyncio.gather(
            *(
                clients[i % 2].get(
                    f"/vast?pod_duration=30&max_ads=2&session=look-{trial}&avail={a}"
                    f"&device_id=dev-{trial}"
                )
                for i, a in enumerate(avails)
            )
        )
        assert all(r.status == 200 for r in resps)
        got = {a: _creatives(await r.read()) for a, r in zip(avails, resps, strict=True)}
        shown = [c for cs in got.values() for c in cs]
        assert len(shown) >= 2, got
        assert len(shown) == len(set(shown)), got  # no creative twice
        for a in (4, 5):
            shared = {category[c] for c in got[a]} & {category[c] for c in got[a + 1]}
            assert not shared, (got, shared)
    for c in clients:
        text = await (await c.get("/metrics")).text()
        assert 'reason="session_lock_timeout"' not in text
        assert 'reason="session_lock_unavailable"' not in text
        assert "vastserver_store_errors_total{" not in text
    store = RedisStore(redis_url)
    try:  # every turn was freed
        for trial in range(3):
            assert await store.acquire(history_key(f"look-{trial}"), "someone", 1000)
    finally:
        await store.close()
