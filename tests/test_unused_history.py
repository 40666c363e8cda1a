"""An ad a ``notUsed`` settled never played: it leaves its session's history, so its creative
and competitive labels do not sit out the next breaks (stream-level separation), while an
ad that made its impression still does. The counted ``notUsed`` pushes a tombstone
(:func:`unused_entry`) through the history's usual push: readers drop one shown entry per
tombstone; readers of earlier versions skip it (it has five parts) and keep the ad out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from tests.conftest import FIXED_NOW, ClientFactory, FakeClock
from tests.delivery_support import six_advertisers
from vastserver.app import RUNTIME
from vastserver.pipeline.delivery import (
    SeparationRules,
    history_entries,
    history_key,
    recent_from_history,
    unused_entry,
)
from vastserver.store import Store, StoreUnavailable
from vastserver.tracking import expand_macros

NS = {"v": "http://www.iab.com/VAST"}
RULES = SeparationRules(creative_breaks=3, creative_minutes=30, competitive_breaks=1)
T = 1_764_100_000.25
S = int(T)


# ---------------------------------------------------------------------- the reader


def _out(creatives: set[str], labels: set[str]) -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(creatives), frozenset(labels)


def _shown(avail: int, at: float, *ads: tuple[str, str]) -> list[str]:
    return history_entries(avail, at, [(cr, [label]) for cr, label in ads])


def test_a_tombstone_takes_its_ad_out_of_the_history() -> None:
    shown = _shown(0, T, ("cr-x", "auto"), ("cr-y", "food"))
    entries = [unused_entry(S, "cr-x", "sid-1"), *shown]  # newest first
    assert recent_from_history(entries, 1, T + 60, RULES) == _out({"cr-y"}, {"food"})
    # wherever it stands: a tombstone older than its entry (a late history write) counts too
    assert recent_from_history([*shown, entries[0]], 1, T + 60, RULES) == _out({"cr-y"}, {"food"})


def test_a_tombstone_of_another_ad_takes_nothing_out() -> None:
    shown = _shown(0, T, ("cr-x", "auto"), ("cr-y", "food"))
    for other in (
        unused_entry(S - 1, "cr-x", "sid-1"),  # another serve second
        unused_entry(S + 2, "cr-x", "sid-1"),
        unused_entry(S, "cr-z", "sid-1"),  # another creative
    ):
        got = recent_from_history([other, *shown], 1, T + 60, RULES)
        assert got == _out({"cr-x", "cr-y"}, {"auto", "food"}), other


def test_one_tombstone_takes_out_one_of_two_identical_entries() -> None:
    """A retried break writes its ads twice: one notUsed takes one copy out, not both."""
    twice = _shown(0, T, ("cr-x", "auto")) * 2
    one = unused_entry(S, "cr-x", "sid-1")
    assert recent_from_history([one, *twice], 1, T + 60, RULES) == _out({"cr-x"}, {"auto"})
    two = [one, unused_entry(S, "cr-x", "sid-2")]
    assert recent_from_history([*two, *twice], 1, T + 60, RULES) == (frozenset(), frozenset())


def test_a_serve_time_rounded_up_to_the_next_second_still_matches() -> None:
    """The entry holds the decision's time to the millisecond, rounded; the token its whole
    second, truncated: a decision at S.9996 reads ``S+1.000`` in the history."""
    late = S + 0.9996
    shown = _shown(0, late, ("cr-x", "auto"))
    assert shown[0].split("|")[1] == f"{S + 1}.000"
    got = recent_from_history([unused_entry(int(late), "cr-x", "a"), *shown], 1, late, RULES)
    assert got == (frozenset(), frozenset())
    # and a decision right at S+1 matches the token of S+1
    exact = _shown(0, S + 1.0001, ("cr-x", "auto"))
    got = recent_from_history([unused_entry(S + 1, "cr-x", "a"), *exact], 1, S + 2, RULES)
    assert got == (frozenset(), frozenset())


@pytest.mark.parametrize(
    "bad",
    [
        "unused|abc|cr-x|sid|-",
        f"unused|{S}.5|cr-x|sid|-",
        f"unused|-{S}|cr-x|sid|-",
        "unused|nan|cr-x|sid|-",
        f"unused|{S}\u00b2|cr-x|sid|-",  # a digit int() does not read
        "unused||cr-x|sid|-",
        f"unused|{S}||sid|-",
        f"unused|{S}|cr-x|sid",  # four parts: an avail of "unused" does not parse
        f"unused|{S}|cr-x|sid|-|more",
        f"unusedx|{S}|cr-x|sid|-",
    ],
)
def test_a_malformed_tombstone_is_ignored(bad: str) -> None:
    shown = _shown(0, T, ("cr-x", "auto"))
    garbage = ["0|nan|cr-x|auto", "0|inf|cr-x|auto"]  # shown entries no writer makes
    got = recent_from_history([bad, *garbage, *shown], 1, T + 60, RULES)
    assert got == _out({"cr-x"}, {"auto"})


def _read_before_tombstones(entries: Sequence[str]) -> list[str]:
    """The entries the reader of the versions before tombstones (``recent_from_history`` at
    8ab7b1b) takes into account: four ``|``-separated parts whose avail and time parse; it
    skips every other entry before reading anything of it."""

    def parses(parts: list[str]) -> bool:
        try:
            int(parts[0]), float(parts[1])
        except ValueError:
            return False
        return True

    return [e for e in entries if len(p := e.split("|")) == 4 and parses(p)]


def test_a_reader_of_an_earlier_version_skips_tombstones() -> None:
    """In a mixed fleet an earlier instance keeps the unplayed ad out, as it always did: it
    reads the shown entries alone (on which both readers agree: they hold no tombstone)."""
    shown = _shown(0, T, ("cr-x", "auto"), ("cr-y", "food"))
    tombstones = [unused_entry(S, "cr-x", "sid-1"), unused_entry(0, "c", "i")]
    old_view = _read_before_tombstones([tombstones[0], *shown, tombstones[1]])
    assert old_view == shown
    got = recent_from_history(old_view, 1, T + 60, RULES)
    assert got == _out({"cr-x", "cr-y"}, {"auto", "food"})


# ---------------------------------------------------------------------- over HTTP


@pytest.fixture(params=["memory", "redis"])
async def app_client(
    request: pytest.FixtureRequest, make_client: ClientFactory, tmp_path: Path
) -> Any:
    """A server on :func:`six_advertisers` (a 2-ad break left alone takes ``cr-0``, auto, and
    ``cr-1``, food; the next, keeping both out, ``cr-2``, beer, and ``cr-3``, auto), its
    state in memory or on a real Redis."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(six_advertisers()))
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra["redis"] = request.getfixturevalue("redis_url")
    return await make_client(catalog=str(path), **extra)


def _local(url: str) -> str:
    parts = urlsplit(expand_macros(url.strip()))
    return f"{parts.path}?{parts.query}"


async def _break(
    client: Any, avail: int, session: str | None = "s1", extra: str = ""
) -> dict[str, str]:
    """Creative id -> its impression URL (local), for one break of ``session``."""
    q = f"pod_duration=30&max_ads=2&device_id=d1&avail={avail}{extra}"
    if session is not None:
        q += f"&session={session}"
    resp = await client.get("/vast?" + q)
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    out: dict[str, str] = {}
    for ad in root.iterfind("v:Ad", NS):
        imp = ad.find(".//v:Impression", NS)
        tk = parse_qs(urlsplit(imp.text.strip()).query)["tk"][0]
        assert tk
        creative = ad.find(".//v:Creative", NS)
        out[creative.get("id")] = _local(imp.text)
    return out


def _not_used(impression: str) -> str:
    return impression.replace("/t/impression?", "/t/notUsed?", 1)


def _store(client: Any) -> Store:
    store: Store = client.server.app[RUNTIME].store
    return store


async def _history(client: Any, session: str = "s1") -> list[str]:
    return await _store(client).history(history_key(session))


async def _metric(client: Any, line: str) -> bool:
    return line in await (await client.get("/metrics")).text()


async def test_a_not_used_ad_may_come_back_while_a_played_one_sits_out(
    app_client: Any, clock: FakeClock
) -> None:
    client = app_client
    first = await _break(client, 0)
    assert set(first) == {"cr-0", "cr-1"}
    clock.now = FIXED_NOW + timedelta(seconds=40)
    assert (await client.get(first["cr-1"])).status == 204  # cr-1 (food) played
    assert (await client.get(_not_used(first["cr-0"]))).status == 204  # cr-0 (auto) did not
    assert await _metric(client, 'vastserver_beacons_total{event="notUsed",result="ok"} 1.0')
    history = await _history(client)
    assert history[0] == unused_entry(int(FIXED_NOW.timestamp()), "cr-0", history[0].split("|")[3])
    assert len(history) == 3
    # the next break: cr-0 and its label are back; cr-1 and food (cr-4) still sit out
    clock.now = FIXED_NOW + timedelta(seconds=60)
    second = await _break(client, 1)
    assert set(second) == {"cr-0", "cr-2"}


async def test_a_replayed_or_refused_not_used_pushes_nothing(
    app_client: Any, clock: FakeClock
) -> None:
    client = app_client
    first = await _break(client, 0)
    assert (await client.get(first["cr-1"])).status == 204  # played
    assert (await client.get(_not_used(first["cr-0"]))).status == 204
    after_one = await _history(client)
    assert len(after_one) == 3
    # the replay, a notUsed after an impression, and the impression's own replay push nothing
    assert (await client.get(_not_used(first["cr-0"]))).status == 204
    assert (await client.get(_not_used(first["cr-1"]))).status == 204
    assert (await client.get(first["cr-1"])).status == 204
    assert await _history(client) == after_one
    assert await _metric(client, 'vastserver_beacons_total{event="notUsed",result="replay"} 1.0')
    assert await _metric(
        client, 'vastserver_beacons_total{event="notUsed",result="already_settled"} 1.0'
    )
    # the refused notUsed did not bring cr-1 back, and cr-0's one tombstone did not take a
    # second entry out: the next break keeps cr-1 and food out
    clock.now = FIXED_NOW + timedelta(seconds=60)
    assert set(await _break(client, 1)) == {"cr-0", "cr-2"}


async def test_a_test_ad_s_not_used_pushes_nothing(app_client: Any) -> None:
    """A ``test=1`` break leaves no history, and its ads' beacons count nothing."""
    client = app_client
    preview = await _break(client, 0, extra="&test=1")
    assert preview
    for url in preview.values():
        assert (await client.get(_not_used(url))).status == 204
    assert await _history(client) == []
    assert await _metric(client, 'vastserver_beacons_total{event="notUsed",result="test"} 2.0')


async def test_a_failed_tombstone_write_leaves_the_beacon_counted(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notUsed was counted before its tombstone is written: a store failing then is
    counted as a failed history write, and the beacon is answered (and counted) as usual.
    The ad then stays in the history, as before tombstones."""
    client = app_client
    first = await _break(client, 0)
    history = await _history(client)
    inner = client.server.app[RUNTIME].store.inner
    pushed: list[Sequence[str]] = []

    async def down(key: str, entries: Sequence[str], *, keep: int, ttl_s: int) -> None:
        pushed.append(entries)
        raise StoreUnavailable("history write refused")

    monkeypatch.setattr(inner, "push_history", down)
    assert (await client.get(_not_used(first["cr-0"]))).status == 204
    assert len(pushed) == 1 and pushed[0][0].startswith("unused|")
    assert await _metric(client, 'vastserver_beacons_total{event="notUsed",result="ok"} 1.0')
    assert await _metric(client, 'vastserver_store_errors_total{op="delivery"} 1.0')
    assert await _history(client) == history
    # counted: the retry is a replay, and tries no second write
    assert (await client.get(_not_used(first["cr-0"]))).status == 204
    assert len(pushed) == 1


async def test_other_beacons_write_no_history(
    app_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a counted notUsed with a session writes the history: every other beacon's path
    makes no more store calls than before."""
    client = app_client
    first = await _break(client, 0)
    no_session = await _break(client, 0, session=None)
    inner = client.server.app[RUNTIME].store.inner
    pushes: list[str] = []
    real = inner.push_history

    async def counting(key: str, entries: Sequence[str], *, keep: int, ttl_s: int) -> None:
        pushes.append(key)
        await real(key, entries, keep=keep, ttl_s=ttl_s)

    monkeypatch.setattr(inner, "push_history", counting)
    assert (await client.get(first["cr-1"])).status == 204
    assert (await client.get(first["cr-1"])).status == 204  # a replay
    for url in no_session.values():  # a notUsed counted, but the ad has no session
        assert (await client.get(_not_used(url))).status == 204
    assert pushes == []
    assert (await client.get(_not_used(first["cr-0"]))).status == 204
    assert pushes == [history_key("s1")]
