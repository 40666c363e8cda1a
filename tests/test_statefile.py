"""The in-memory store's state file: what is counted survives a restart.

Round trips through :mod:`vastserver.store.statefile` on a store of every kind of key, files
that cannot be read back, and the real server stopped (SIGTERM and ``kill -9``) and
started again on its file, with budgets, delivery and beacon claims checked over HTTP.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.reqmix import beacons_of
from tests.support.stores import claim, claim_many
from tests.test_cli import Server, _env, _get
from vastserver.settings import SettingsError, load_settings
from vastserver.store.base import Guard, Guarded, Incr, Read, Window
from vastserver.store.memory import MemoryStore
from vastserver.store.statefile import FORMAT, StateFileError, StateLock, load_state, save_state

HOUR = Window(3600, 600)
LIFETIME = Window(None, 0)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _filled(clock: Clock) -> MemoryStore:
    s = MemoryStore(clock=clock)
    now = clock.t
    await s.add(
        [
            Incr("cap:v1:li-a:1h", HOUR, 2),
            Incr("cap:v1:li-a:1h", HOUR, 1, at=now - 1200),  # an older bucket of the window
            Incr("li:li-a:served", LIFETIME, 7),
            Incr("li:li-a:served:d", LIFETIME, 3, ttl_s=90_000),
            Incr("\x01odd-counter-key", LIFETIME, 5),  # escaped so it is not a claim
            Incr("short", HOUR, 1, ttl_s=30),  # gone by the time it is read back
        ],
        now,
    )
    assert await claim_many(s, ["imp:ad-1", "imp:ad-2"], 3600) == [True, True]
    await s.push_history("sess:s1", ["a", "b"], keep=5, ttl_s=3600)
    return s


READS = [
    Read("cap:v1:li-a:1h", HOUR),
    Read("li:li-a:served", LIFETIME),
    Read("li:li-a:served:d", LIFETIME),
    Read("\x01odd-counter-key", LIFETIME),
    Read("short", HOUR),
]


async def test_every_kind_of_key_reads_back_as_it_was(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    old = await _filled(clock)
    path = tmp_path / "state" / "store.json"  # the directory is made
    assert await save_state(old, path) == 8
    assert json.loads(path.read_text().splitlines()[0])["format"] == FORMAT
    clock.t += 60  # the restart takes a minute: "short" (30 s) expires meanwhile
    new = MemoryStore(clock=clock)
    assert load_state(new, path) == 7
    assert await new.read(READS, clock.t) == [3, 7, 3, 5, 0]
    assert await old.read(READS, clock.t) == [3, 7, 3, 5, 0]
    # claims still refuse a second claim, and expire when they would have
    assert await claim_many(new, ["imp:ad-1", "imp:ad-3"], 3600) == [False, True]
    assert await new.history("sess:s1") == ["b", "a"]
    # a guarded commit sees the restored count: 3 in the hour, limit 3
    assert await new.commit(
        [Guarded((Guard("cap:v1:li-a:1h", HOUR, 3, 1),), (Incr("cap:v1:li-a:1h", HOUR, 1),))],
        clock.t,
    ) == [False]
    clock.t += 3600 + 1  # the claims' and history's hour passes, the lifetime stays
    assert await claim_many(new, ["imp:ad-1"], 3600) == [True]
    assert await new.history("sess:s1") == []
    assert (await new.read(READS, clock.t))[1:4] == [7, 3, 5]


async def test_the_first_written_keys_are_evicted_first_after_a_restore(tmp_path: Path) -> None:
    """The file keeps the order keys were first written (its copy is ~30x cheaper than the
    recency order): a restored store that is too small keeps the latest written."""
    clock = Clock(1_800_000_000.0)
    old = MemoryStore(clock=clock)
    for i in range(10):
        await old.add([Incr(f"k{i}", LIFETIME, 1)], clock.t)
    await old.read([Read("k0", LIFETIME)], clock.t)  # used last, but written first
    path = tmp_path / "s.json"
    await save_state(old, path)
    small = MemoryStore(max_keys=3, clock=clock)
    assert load_state(small, path) == 3
    got = await small.read([Read(f"k{i}", LIFETIME) for i in range(10)], clock.t)
    assert got == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert small.evictions == 7


async def test_the_claim_horizon_survives_a_restart(tmp_path: Path) -> None:
    """Claims evicted before a save stay refused after the restart: their replays would
    otherwise be counted again."""
    clock = Clock(1_800_000_000.0)
    old = MemoryStore(max_keys=2, clock=clock)
    assert await claim(old, "bc:a:impression", 3600)
    await old.add([Incr("k1", LIFETIME, 1), Incr("k2", LIFETIME, 1)], clock.t)
    assert old.claim_horizon > 0
    path = tmp_path / "s.json"
    await save_state(old, path)
    new = MemoryStore(clock=clock)
    load_state(new, path)
    assert new.claim_horizon == old.claim_horizon
    assert not await claim(new, "bc:a:impression", 3600)
    path.write_text(re.sub(r'"claim_horizon": \d+', '"claim_horizon": -5', path.read_text()))
    with pytest.raises(StateFileError, match="claim_horizon"):
        load_state(MemoryStore(clock=clock), path)


@pytest.mark.parametrize("days", [7, 1])
async def test_claims_move_with_the_token_lifetime_across_a_restart(
    tmp_path: Path, days: int
) -> None:
    """A claim expires a fixed time after its token's serve time (the token lifetime and an
    hour): a server restarted with another VASTSERVER_TOKEN_MAX_AGE moves the claims and the
    claim horizon with it. Else, after a lowered lifetime, one evicted old claim would put
    the horizon beyond every new token's claims, and no first beacon would count for days;
    after a raised one, claims would lapse while their tokens still verify."""
    clock = Clock(1_800_000_000.0)
    old = MemoryStore(max_keys=3, clock=clock)
    old.claim_window_s = 4 * 86400 + 3600
    for i in range(4):  # the first is evicted: the horizon is its expiry
        assert await claim(old, f"bc:{i}:impression", old.claim_window_s)
    assert old.claim_horizon == math.ceil(clock.t) + old.claim_window_s
    path = tmp_path / "s.json"
    await save_state(old, path)
    new = MemoryStore(clock=clock)
    new.claim_window_s = days * 86400 + 3600
    load_state(new, path)
    shift = new.claim_window_s - old.claim_window_s
    assert new.claim_horizon == old.claim_horizon + shift
    assert not await claim(new, "bc:1:impression", new.claim_window_s)  # held: a replay
    assert not await claim(new, "bc:0:impression", new.claim_window_s)  # evicted: refused
    clock.t += 5
    assert await claim(new, "bc:later:impression", new.claim_window_s)  # a newer token
    clock.t += new.claim_window_s - 10  # the restored claims last as the new window says
    assert not await claim(new, "bc:2:impression", 60)


async def test_a_raised_lifetime_refuses_tokens_whose_claims_lapsed_before_the_save(
    tmp_path: Path,
) -> None:
    """A restart with a longer VASTSERVER_TOKEN_MAX_AGE makes tokens verify again whose
    claims had lapsed (served longer than the old window before the save): their beacons
    are refused, never counted a second time. Tokens served since still count."""
    clock = Clock(1_800_000_000.0)
    served = clock.t
    old = MemoryStore(clock=clock)
    old.claim_window_s = 60 + 3600  # VASTSERVER_TOKEN_MAX_AGE=60
    assert await claim(old, "bc:old:impression", old.claim_window_s)
    clock.t += old.claim_window_s + 300  # its claim lapses (and is swept)
    await old.add([Incr("k", LIFETIME, 1)], clock.t)
    path = tmp_path / "s.json"
    await save_state(old, path)
    new = MemoryStore(clock=clock)
    new.claim_window_s = 86400 + 3600  # raised to the default
    load_state(new, path)

    def ttl(served_at: float) -> int:  # as the beacon path sets it: from the serve time
        return math.ceil(served_at + new.claim_window_s - clock.t)

    assert not await claim(new, "bc:old:impression", ttl(served))  # a replay: refused
    assert new.forgotten == 1
    assert await claim(new, "bc:new:impression", ttl(clock.t - 60))  # served since: counts
    # served within the old window before the save: its claim would be in the file
    assert await claim(new, "bc:recent:impression", ttl(clock.t - 3000))


def _unwindowed_file(path: Path, saved_at: int, claims: dict[str, int]) -> None:
    """A state file as servers up to e9206d6 wrote it: no ``claim_window_s`` nor
    ``claim_horizon`` in the header; a claim's value is its beacon time plus the claim window
    (the token max age and an hour) of that server."""
    entries = [["\x01" + key, exp] for key, exp in claims.items()]
    entries.append(["li:li-a:served", 7])
    header = {"format": FORMAT, "version": 1, "saved_at": saved_at, "keys": len(entries)}
    path.write_text(json.dumps(header) + "\n" + json.dumps(entries) + "\n")


@pytest.mark.parametrize(
    ("old_age", "new_age", "later"),
    [
        (86400, 2 * 86400, 26 * 3600),  # the default, raised: the old claims lapsed at 25 h
        (3600, 3600, 1800),  # a short max age kept: assuming the default lost every claim
        (3600, 86400, 3 * 3600),  # a short one raised to the default
    ],
)
async def test_claims_of_a_file_without_its_claim_window_move_with_the_new_one(
    tmp_path: Path, old_age: int, new_age: int, later: int
) -> None:
    """Files of earlier servers do not say their claim window: their claims were read back
    unmoved, so after a raised VASTSERVER_TOKEN_MAX_AGE they lapsed 25 h after their beacon
    while their tokens still verified, and a replay counted again. The window is now taken
    as at most the one they used (the latest claim expiry less the save time)."""
    saved = 1_800_000_000
    old_window = old_age + 3600
    beacons = {"bc:ad-1:impression": saved - 3 * 60, "bc:ad-2:impression": saved - 20}
    path = tmp_path / "s.json"
    _unwindowed_file(path, saved, {k: t + old_window for k, t in beacons.items()})
    clock = Clock(saved + later)
    new = MemoryStore(clock=clock)
    new.claim_window_s = new_age + 3600
    assert load_state(new, path) == 3
    assert await new.read([Read("li:li-a:served", LIFETIME)], clock.t) == [7]
    for key, beacon in beacons.items():
        # the token verifies until its serve time (before its beacon) plus the new max age
        for t in (saved + later, beacon + new_age):
            clock.t = t
            assert not await claim(new, key, new.claim_window_s), (key, t)
    # a token served at the save still counts its first beacon (the horizon a raised
    # lifetime sets stops at the tokens whose claims could have lapsed before the save)
    clock.t = saved + later
    assert await claim(new, "bc:fresh:impression", math.ceil(saved + new.claim_window_s - clock.t))


async def test_a_big_store_is_written_in_chunks(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    old = MemoryStore(clock=clock)
    await old.add([Incr(f"k{i}", LIFETIME, i + 1) for i in range(25_000)], clock.t)
    path = tmp_path / "s.json"
    assert await save_state(old, path) == 25_000
    assert len(path.read_text().splitlines()) == 1 + 10  # header, then 2,500 keys a line
    new = MemoryStore(clock=clock)
    assert load_state(new, path) == 25_000
    assert await new.read([Read("k24999", LIFETIME)], clock.t) == [25_000]


def test_no_file_yet_is_an_empty_start(tmp_path: Path) -> None:
    assert load_state(MemoryStore(), tmp_path / "none.json") is None


H1 = '{"format": "vastserver-memory-store", "version": 1, "keys": 1}\n'
H2 = '{"format": "vastserver-memory-store", "version": 1, "keys": 2}\n'


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not a vastserver state file"),
        ("garbage\n", "not a state file this server wrote"),
        ('{"format": "other"}\n', "not a vastserver state file"),
        ('{"format": "vastserver-memory-store", "version": 9}\n', "version 9"),
        # cut short: fewer keys than the header promised
        (H2 + '[["a",1]]\n', "1 keys"),
        (H1 + '[["a",1]\n', "wrote"),
        (H1 + '[["a","x"]]\n', "'a'"),
        (H1 + '[["a",[1,2]]]\n', "'a'"),
        (
            H1 + '[["\\u0001c",[1]]]\n',
            "c",
        ),
        (
            H1 + '[["\\u0002h",[1,[2]]]]\n',
            "h",
        ),
        (H1 + '{"a": 1}\n', "array"),
        (H1 + "[[1, 1]]\n", "pair"),
    ],
)
def test_a_file_that_cannot_be_read_back_is_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(StateFileError) as e:
        load_state(MemoryStore(), path)
    assert str(path) in str(e.value) and why in str(e.value)


def test_the_state_file_is_for_the_in_memory_store() -> None:
    with pytest.raises(SettingsError) as e:
        load_settings({}, {"state_file": "/tmp/x.json", "redis": "redis://127.0.0.1:1/0"})
    assert "VASTSERVER_STATE_FILE" in str(e.value)
    s = load_settings({"VASTSERVER_STATE_FILE": "off"}, {})
    assert s.state_file is None and s.state_save_s == 60


# ------------------------------------------------------------------------- the server

ADMIN = {"Authorization": "Bearer cli-admin-token-0123456789"}


def _line_items(srv: Server) -> dict[str, dict[str, Any]]:
    req = urllib.request.Request(srv.base + "/admin/line-items", headers=ADMIN)
    with urllib.request.urlopen(req, timeout=5) as r:
        return {li["id"]: li for li in json.loads(r.read())}


def _serve_and_count(srv: Server, device: str) -> list[str]:
    """One pod for ``device``; fires each ad's impression; returns the impression URLs."""
    status, body = _get(
        srv.base + f"/vast?pod_duration=60&max_ads=2&device_id={device}&session=s-{device}"
    )
    assert status == 200
    urls = [ad[0].path for ad in beacons_of(body.decode(), random.Random(1))]
    assert urls and all("/t/impression" in u for u in urls)
    for u in urls:
        assert _get(srv.base + u)[0] == 204
    return urls


def _replays(srv: Server) -> float:
    text = _get(srv.base + "/metrics")[1].decode()
    m = re.search(r'vastserver_beacons_total\{event="impression",result="replay"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    running: list[Server] = []
    yield running
    for srv in running:
        srv.kill()


def test_a_restarted_server_keeps_delivery_and_beacon_claims(
    servers: list[Server], tmp_path: Path
) -> None:
    def server_factory(*args: str, env: dict[str, str]) -> Server:
        servers.append(Server(*args, env=env))
        return servers[-1]

    state = tmp_path / "state.json"
    env = _env(VASTSERVER_STATE_SAVE_S="1")
    args = ("--event-log", "off", "--state-file", str(state))
    first = server_factory(*args, env=env)
    first.wait_ready()
    urls = _serve_and_count(first, "dev-1")
    before = _line_items(first)
    delivered = {k: v["delivered_impressions"] for k, v in before.items()}
    assert sum(delivered.values()) == len(urls)
    assert first.stop() == 0  # SIGTERM: saved after the last request

    second = server_factory(*args, env=env)
    second.wait_ready()
    after = _line_items(second)
    assert {k: v["delivered_impressions"] for k, v in after.items()} == delivered
    assert {k: v["served"] for k, v in after.items()} == {k: v["served"] for k, v in before.items()}
    assert {k: v["spend"] for k, v in after.items()} == {k: v["spend"] for k, v in before.items()}
    # the impressions were claimed before the restart: fired again, they are replays
    for u in urls:
        assert _get(second.base + u)[0] == 204
    assert _replays(second) == len(urls)
    assert {k: v["delivered_impressions"] for k, v in _line_items(second).items()} == delivered

    # kill -9 loses at most the last second: what was counted before it survives
    more = _serve_and_count(second, "dev-2")
    time.sleep(2.5)  # two periodic saves
    second.stop(signal.SIGKILL)
    third = server_factory(*args, env=env)
    third.wait_ready()
    total = sum(v["delivered_impressions"] for v in _line_items(third).values())
    assert total == len(urls) + len(more)
    assert third.stop() == 0


def test_an_unreadable_state_file_stops_the_start(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("not json\n")
    srv = Server("--event-log", "off", "--state-file", str(state))
    try:
        assert srv.proc.wait(30) == 2
        out = srv.proc.stdout.read().decode() if srv.proc.stdout else ""
    finally:
        srv.kill()
    assert str(state) in out and "move it away" in out


def test_a_fifo_or_a_device_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(StateFileError, match="not a regular file"):
        load_state(MemoryStore(), fifo)  # would block forever if opened
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(StateFileError, match="not a regular file"):
        load_state(MemoryStore(), link)


def test_a_nested_line_is_a_clean_refusal(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(H1 + "[" * 200_000 + "\n")
    with pytest.raises(StateFileError, match="RecursionError"):
        load_state(MemoryStore(), path)


async def test_the_file_is_private_a_link_stays_a_link_and_stale_temps_go(
    tmp_path: Path,
) -> None:
    clock = Clock(1_800_000_000.0)
    store = MemoryStore(clock=clock)
    await store.add([Incr("k", LIFETIME, 1)], clock.t)
    target = tmp_path / "real" / "state.json"
    link = tmp_path / "state.json"
    target.parent.mkdir()
    link.symlink_to(target)
    await save_state(store, link)
    assert link.is_symlink() and target.is_file()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    stale = target.with_name(".state.json.999.0.tmp")  # a save killed mid-write
    stale.write_text("partial")
    assert load_state(MemoryStore(clock=clock), link) == 1
    assert not stale.exists()


def test_one_server_holds_the_file_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    first = StateLock(path)
    with pytest.raises(StateFileError, match="in use by another running server"):
        StateLock(path)
    first.release()
    StateLock(path).release()
    # a symlink to the file is the same file: the saves follow it, so must the lock (two
    # servers on two paths to one file each counted caps on their own; a reviewer found it)
    (tmp_path / "other").mkdir()
    link = tmp_path / "other" / "s.json"
    link.symlink_to(path)
    first = StateLock(path)
    with pytest.raises(StateFileError, match="in use by another running server"):
        StateLock(link)
    first.release()


def test_a_second_server_on_the_file_and_a_failed_last_save(
    servers: list[Server], tmp_path: Path
) -> None:
    """A second server on a held file does not start; a save that fails is counted and
    logged while serving goes on, and a failed last save makes the exit status 1."""
    state = tmp_path / "d" / "state.json"
    env = _env(VASTSERVER_STATE_SAVE_S="1")
    first = Server("--event-log", "off", "--state-file", str(state), env=env)
    servers.append(first)
    first.wait_ready()
    second = Server("--event-log", "off", "--state-file", str(state), env=env)
    servers.append(second)
    assert second.proc.wait(30) == 2
    out = second.proc.stdout.read().decode() if second.proc.stdout else ""
    assert "in use by another running server" in out and "stop the other server" in out
    assert "move it away" not in out

    _serve_and_count(first, "dev-3")
    shutil.rmtree(state.parent)
    state.parent.write_text("a file where the state directory was")
    deadline = time.monotonic() + 10
    failed = 0.0
    while time.monotonic() < deadline and not failed:
        text = _get(first.base + "/metrics")[1].decode()
        m = re.search(r'vastserver_state_saves_total\{result="failed"\} (\S+)', text)
        failed = float(m.group(1)) if m else 0.0
        time.sleep(0.2)
    assert failed >= 1
    assert _get(first.base + "/healthz")[0] == 200  # serving goes on
    assert first.stop() == 1
    out = first.proc.stdout.read().decode() if first.proc.stdout else ""
    assert "state_save_failed" in out and "the last state save failed" in out


async def test_a_reload_during_a_state_save_still_freezes_what_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state save (on the loop, across awaits) and a catalog reload (in a thread) each
    paused the collector by saving and restoring its one flag: a reload that began during a
    save found it off, so it froze nothing (the multi-second collection after a large
    reload came back) and the save's end turned the collector on mid-reload. The pauses are
    now counted: the reload freezes, and the collector resumes when both are done."""
    import asyncio
    import gc
    from datetime import UTC, datetime

    import vastserver.store.statefile as statefile
    from tests.conftest import DEMO_CATALOG
    from vastserver import service
    from vastserver.store.memory import MemoryStore

    now = time.time()
    store = MemoryStore()
    await store.add([Incr(f"k{n}", LIFETIME, 1) for n in range(3000)], now)
    saving, reloaded = asyncio.Event(), asyncio.Event()

    class Paused:  # the save's asyncio, whose sleep between chunks waits for the reload
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def sleep(self, delay: float) -> None:
            saving.set()
            await reloaded.wait()

    monkeypatch.setattr(statefile, "asyncio", Paused())
    gc.unfreeze()
    assert gc.isenabled()
    try:
        save = asyncio.ensure_future(statefile.save_state(store, tmp_path / "state.json"))
        await saving.wait()
        assert not gc.isenabled()
        snap = await asyncio.to_thread(service._load_snapshot, DEMO_CATALOG, datetime.now(UTC))
        assert snap.catalog.line_items and gc.get_freeze_count() > 1000
        assert not save.done() and not gc.isenabled()  # the save's pause still holds
        reloaded.set()
        assert await save == 3000
        assert gc.isenabled()
    finally:
        reloaded.set()
        gc.enable()
        gc.unfreeze()
