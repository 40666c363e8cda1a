"""A real player plays our ads: @dailymotion/vmap and @dailymotion/vast-client (VASTClient,
VASTTracker) run by node (``tests/node/play.mjs``) against the server over loopback."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
from collections import Counter
from typing import Any

from tests.conftest import ADMIN, FakeClock, make_settings
from tests.support import conformance as c
from vastserver.app import create_app

PLAY_SCRIPT = c.NODE_DIR / "play.mjs"
VMAP_QUERY = "content_duration=1800&cue_points=600&postroll=0&device_type=ctv&device_id=player-1"
COUNTED = re.compile(r'^vastserver_beacons_total\{event="([A-Za-z]+)",result="([a-z_]+)"\} (\S+)$')


def _bound_socket() -> socket.socket:
    """The server's socket, bound to a port the system picks before the app is made: the
    app must know its own URL (every tracking URL is absolute), and a port picked, released
    and bound again by the test server could be taken in between."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def _beacons(client: Any) -> Counter[tuple[str, str]]:
    text = await (await client.get("/metrics")).text()
    out: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        m = COUNTED.match(line)
        if m:
            out[m.group(1), m.group(2)] = int(float(m.group(3)))
    return out


async def _play(base: str, query: str = VMAP_QUERY) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(PLAY_SCRIPT),
        base,
        query,
        cwd=c.NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def _serve(aiohttp_client: Any) -> tuple[str, Any]:
    """A server on loopback that knows its own URL: that URL and a client of it."""
    sock = _bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = make_settings(public_url=base)
    app = create_app(settings, clock=FakeClock(), rng=random.Random(7))
    # the test server serves on that socket (closed with it), never binding a port itself
    client = await aiohttp_client(app, server_kwargs={"socket_factory": lambda *_: sock})
    assert str(client.make_url("/")) == base + "/"
    return base, client


async def _served(client: Any) -> int:
    """Ads reserved: the store's served counters, one per ad a decision reserved."""
    admin = await client.get("/admin/line-items", headers={"Authorization": f"Bearer {ADMIN}"})
    return sum(int(row["served"]) for row in await admin.json())


async def test_a_vast_2_0_player_is_served_only_the_ad_it_plays(aiohttp_client: Any) -> None:
    """VAST 2.0 has no pods: a 2.0 response of several ads used to reserve them all while
    the player played one. Each break of a VMAP asking for VAST 2.0 now answers one ad,
    which VASTClient.get returns and the player plays: every reserved ad is played."""
    c.require_node()
    base, client = await _serve(aiohttp_client)
    assert "max_ads" not in VMAP_QUERY  # the breaks' own, pods of several ads in 3.0 on
    played = await _play(base, VMAP_QUERY + "&vast=2.0")
    assert Counter(a["break"] for a in played["ads"]) == {"preroll": 1, "midroll-1": 1}
    assert await _served(client) == len(played["ads"]) == 2


async def test_a_player_plays_the_schedule_and_every_pixel_counts_once(
    aiohttp_client: Any,
) -> None:
    """VMAP -> each break's ad tag -> impression, quartiles and complete, a click, an error
    with a code and a notUsed, as the libraries fire them: every pixel answers 204 (the
    click 302), each counts once, and firing them all again counts nothing more."""
    c.require_node()
    base, client = await _serve(aiohttp_client)
    played = await _play(base)
    ads, pixels = played["ads"], played["pixels"]
    scenarios = Counter(a["scenario"] for a in ads)
    assert len(ads) >= 4 and set(scenarios) == {"full", "click", "error", "notUsed"}, ads
    ours = [p for p in pixels if p["status"] is not None]
    wrong = [p for p in ours if p["status"] != (302 if "/c?" in p["url"] else 204)]
    assert not wrong, wrong
    clicks = [p for p in ours if "/c?" in p["url"]]
    assert len(clicks) == scenarios["click"]
    assert all(p["location"].startswith("https://") for p in clicks)
    errors = [p for p in ours if "/t/error?" in p["url"]]
    assert errors and all("&ec=405" in p["url"] for p in errors)

    counted = await _beacons(client)
    played_through = scenarios["full"] + scenarios["click"]
    expected = {
        "impression": played_through,
        "start": played_through,
        "firstQuartile": played_through,
        "midpoint": played_through,
        "thirdQuartile": played_through,
        "complete": played_through,
        "click": scenarios["click"],
        "error": scenarios["error"],
        "notUsed": scenarios["notUsed"],
    }
    assert {e: counted[e, "ok"] for e in expected} == expected
    assert counted["breakStart", "advisory"] == counted["breakEnd", "advisory"] == 2

    for p in ours:  # a replay of every pixel: answered as before, counted never
        resp = await client.get(p["url"][len(base) :], allow_redirects=False)
        assert resp.status == p["status"], p
    again = await _beacons(client)
    assert {e: again[e, "ok"] for e in expected} == expected
    assert again["impression", "replay"] == played_through
    admin = await client.get("/admin/line-items", headers={"Authorization": f"Bearer {ADMIN}"})
    delivered = sum(row["delivered_impressions"] for row in await admin.json())
    assert delivered == played_through
    assert await _served(client) == len(ads)  # every ad reserved was played
