"""VASTSERVER_UNCOUNTED_LOG_RATE: the event-log records of uncounted beacons and clicks
(replays, tokenless advisory beacons, ...) are rate limited per process, so that anyone
cannot fill the log's disk with them; counted beacons are always logged, and every beacon's
answer and count stay the same. Over HTTP, with a real event log, on a driven clock."""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from lxml import etree

from tests.conftest import FakeClock, make_settings
from vastserver.app import create_app
from vastserver.eventlog import RateLimit, read_events
from vastserver.settings import DEFAULT_UNCOUNTED_LOG_RATE, SettingsError, load_settings
from vastserver.tracking import expand_macros

NS = {"v": "http://www.iab.com/VAST"}


class Monotonic:
    """The rate limit's clock (seconds), moved by hand: no test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Server = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def server(aiohttp_client: Any, clock: FakeClock, monotonic: Monotonic, tmp_path: Path) -> Server:
    """A real server writing its event log to ``tmp_path``, its rate limit on ``monotonic``."""

    async def factory(**overrides: Any) -> TestClient[Any, Any]:
        settings = make_settings(event_log=str(tmp_path), **overrides)
        app = create_app(settings, clock=clock, rng=random.Random(1), monotonic=monotonic)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return factory


def _local(url: str) -> str:
    parts = urlsplit(expand_macros(url.strip()))
    return f"{parts.path}?{parts.query}"


async def _ad(client: Any) -> dict[str, str]:
    """One served ad's impression, quartile and click URLs (local paths)."""
    resp = await client.get("/vast?pod_duration=30&max_ads=1&device_id=d1")
    ad = etree.fromstring(await resp.read()).find("v:Ad", NS)
    assert ad is not None
    urls = {"impression": ad.findtext(".//v:Impression", namespaces=NS)}
    for t in ad.iterfind(".//v:Tracking", NS):
        urls.setdefault(t.get("event"), t.text)
    urls["click"] = ad.findtext(".//v:ClickThrough", namespaces=NS)
    return {k: _local(v) for k, v in urls.items() if v}


async def _beacons(client: Any, tmp_path: Path) -> list[tuple[str, bool, str]]:
    await client.close()  # a clean shutdown flushes the log
    return [
        (r["event"], r["counted"], r["result"])
        for r in read_events([tmp_path])
        if r["type"] == "beacon"
    ]


def _dropped(text: str, reason: str) -> float:
    m = re.search(rf'^vastserver_event_log_dropped_total{{reason="{reason}"}} (\S+)$', text, re.M)
    assert m is not None, f"no {reason} series"
    return float(m.group(1))


async def test_a_flood_of_replays_logs_the_burst_and_every_counted_beacon(
    server: Server, tmp_path: Path, monotonic: Monotonic
) -> None:
    client = await server(uncounted_log_rate=5)
    urls = await _ad(client)
    assert (await client.get(urls["impression"])).status == 204  # counted
    for counted in ("start", "firstQuartile", "midpoint"):
        for _ in range(4):  # 12 replays of the impression: 5 fit the burst
            assert (await client.get(urls["impression"])).status == 204
        assert (await client.get(urls[counted])).status == 204  # counted mid-flood
    for _ in range(3):  # tokenless advisory beacons and click replays: limited too
        assert (await client.get("/t/error?r=303")).status == 204
    assert (await client.get(urls["click"], allow_redirects=False)).status == 302  # counted
    for _ in range(2):
        replay = await client.get(urls["click"], allow_redirects=False)
        assert replay.status == 302  # a click past the limit still takes the viewer there
    metrics = await (await client.get("/metrics")).text()
    assert _dropped(metrics, "rate_limited") == 12 + 3 + 2 - 5
    # The beacons' counts are untouched.
    assert 'vastserver_beacons_total{event="impression",result="replay"} 12.0' in metrics
    assert 'vastserver_beacons_total{event="error",result="advisory"} 3.0' in metrics
    assert 'vastserver_beacons_total{event="click",result="replay"} 2.0' in metrics

    monotonic.now += 0.5  # 2.5 more tokens at 5 a second: 2 records
    for _ in range(3):
        assert (await client.get(urls["impression"])).status == 204
    metrics = await (await client.get("/metrics")).text()
    assert _dropped(metrics, "rate_limited") == 12 + 3 + 2 - 5 + 1

    beacons = await _beacons(client, tmp_path)
    assert [b for b in beacons if b[1]] == [
        ("impression", True, "ok"),
        ("start", True, "ok"),
        ("firstQuartile", True, "ok"),
        ("midpoint", True, "ok"),
        ("click", True, "ok"),
    ]
    assert [b for b in beacons if not b[1]] == [("impression", False, "replay")] * (5 + 2)


async def test_rate_zero_logs_no_uncounted_beacon(server: Server, tmp_path: Path) -> None:
    client = await server(uncounted_log_rate=0)
    urls = await _ad(client)
    for _ in range(3):
        assert (await client.get(urls["impression"])).status == 204
    assert (await client.get("/t/breakStart")).status == 204
    assert (await client.get(urls["complete"])).status == 204
    metrics = await (await client.get("/metrics")).text()
    assert _dropped(metrics, "rate_limited") == 3
    assert await _beacons(client, tmp_path) == [
        ("impression", True, "ok"),
        ("complete", True, "ok"),
    ]


async def test_minus_one_logs_every_uncounted_beacon(server: Server, tmp_path: Path) -> None:
    client = await server(uncounted_log_rate=-1)
    urls = await _ad(client)
    flood = DEFAULT_UNCOUNTED_LOG_RATE + 20  # past what the default would let through
    for _ in range(flood):
        assert (await client.get("/t/breakEnd")).status == 204
    assert (await client.get(urls["impression"])).status == 204
    metrics = await (await client.get("/metrics")).text()
    assert _dropped(metrics, "rate_limited") == 0
    beacons = await _beacons(client, tmp_path)
    assert beacons == [("breakEnd", False, "advisory")] * flood + [("impression", True, "ok")]


async def test_default_rate_lets_its_burst_through(server: Server, tmp_path: Path) -> None:
    client = await server()
    for _ in range(DEFAULT_UNCOUNTED_LOG_RATE + 3):
        assert (await client.get("/t/error")).status == 204
    metrics = await (await client.get("/metrics")).text()
    assert _dropped(metrics, "rate_limited") == 3
    assert len(await _beacons(client, tmp_path)) == DEFAULT_UNCOUNTED_LOG_RATE


async def test_every_drop_reason_is_exported_from_the_start(server: Server) -> None:
    client = await server()
    metrics = await (await client.get("/metrics")).text()
    for reason in ("buffer_full", "closed", "unrecordable", "rate_limited"):
        assert _dropped(metrics, reason) == 0


def test_rate_limit_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Monotonic()
    limit = RateLimit(2, 3, clock=clock)
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token
    assert [limit.allow() for _ in range(2)] == [True, False]
    clock.now += 100  # refills to the burst, no more
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    clock.now -= 1  # a clock that went back gives nothing (and takes nothing)
    assert not limit.allow()


@pytest.mark.parametrize(
    ("raw", "rate"),
    [(None, DEFAULT_UNCOUNTED_LOG_RATE), ("", DEFAULT_UNCOUNTED_LOG_RATE), ("0", 0),
     ("-1", None), ("50", 50), ("1000000", 1_000_000)],
)  # fmt: skip
def test_setting_valid(raw: str | None, rate: int | None) -> None:
    env = {} if raw is None else {"VASTSERVER_UNCOUNTED_LOG_RATE": raw}
    assert load_settings(env).uncounted_log_rate == rate


def _problems(raw: str) -> list[str]:
    try:
        load_settings({"VASTSERVER_UNCOUNTED_LOG_RATE": raw})
    except SettingsError as e:
        return e.problems
    return []


@pytest.mark.parametrize("raw", ["-2", "1000001", "1.5", "abc", "nan", "off", " 7x"])
def test_setting_invalid_is_a_start_up_error(raw: str) -> None:
    assert _problems(raw) == [
        "VASTSERVER_UNCOUNTED_LOG_RATE: records a second, an integer from 0 (log none) to "
        f"1000000, or -1 (no limit), got {raw!r}"
    ]


def _gauge(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, f"no {name}"
    return float(m.group(1))


async def test_a_failing_event_log_disk_shows_in_the_metrics_before_anything_drops(
    server: Server,
) -> None:
    """The disk failing left /metrics silent until 100,000 records had been dropped: the
    records waiting and whether the last write failed are gauges, from the first failure."""
    import asyncio

    from tests.test_eventlog import FaultyDisk
    from vastserver.app import RUNTIME
    from vastserver.eventlog import EventLog

    client = await server()
    log_ = client.server.app[RUNTIME].events
    assert isinstance(log_, EventLog)
    disk = FaultyDisk(log_)

    async def metrics() -> str:
        return await (await client.get("/metrics")).text()

    text = await metrics()
    assert _gauge(text, "vastserver_event_log_write_failing") == 0.0
    disk.mode = "enospc"
    for n in range(3):
        assert (await client.get(f"/vast?pod_duration=30&device_id=f{n}")).status == 200
    for _ in range(200):  # the writer retries every commit interval (50 ms)
        text = await metrics()
        if _gauge(text, "vastserver_event_log_write_failing") == 1.0:
            break
        await asyncio.sleep(0.02)
    assert _gauge(text, "vastserver_event_log_write_failing") == 1.0
    assert _gauge(text, "vastserver_event_log_pending_records") >= 3
    assert _dropped(text, "buffer_full") == 0
    disk.mode = None
    for _ in range(200):
        text = await metrics()
        if _gauge(text, "vastserver_event_log_write_failing") == 0.0:
            break
        await asyncio.sleep(0.02)
    assert _gauge(text, "vastserver_event_log_write_failing") == 0.0
    assert _gauge(text, "vastserver_event_log_pending_records") == 0.0
