"""Deadlines, load shedding, faults while serving, hostile input, request ids, shutdown."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import random
import signal
import string
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.conftest import ClientFactory, make_settings
from tests.support import conformance as c
from tests.test_cli import Server, _env, _get
from vastserver.app import RUNTIME
from vastserver.catalog.model import AdRules
from vastserver.eventlog import read_events
from vastserver.params import ClientInfo, ParamError, parse_vast_request, parse_vmap_query
from vastserver.tracking import expand_macros

NS = {"v": "http://www.iab.com/VAST"}
VAST_PARAMS = [
    "pod_duration", "poddur", "max_ads", "maxseq", "min_ad_duration", "max_ad_duration",
    "required_durations", "rqddurs", "break", "avail", "session", "device_id", "ifa_type", "lmt",
    "device_type", "platform", "country", "region", "dma", "language", "content_id", "genre",
    "rating", "live", "series", "channel", "kids", "segments", "bcat", "badv", "placement",
    "vast", "debug", "kv_show",
]  # fmt: skip
VMAP_PARAMS = [
    "content_duration", "cue_points", "midroll_interval", "preroll", "postroll",
    "preroll_duration", "midroll_duration", "postroll_duration", "inline",
]  # fmt: skip


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ----------------------------------------------------------------------------- deadlines


class _Remote:
    local = False


async def test_within_keeps_its_limit_when_the_call_swallows_the_cancel() -> None:
    """redis-py on Python 3.11 can drop a cancel and wait on for its socket timeout; the
    deadline must hold anyway, and the abandoned call's outcome must not go unretrieved."""
    from vastserver.store.base import within

    finished = asyncio.Event()

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # what a swallowed cancel costs: the rest of the wait
            finished.set()
            raise RuntimeError("socket timeout") from None
        return "never"

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await within(_Remote(), stubborn(), 0.05)  # type: ignore[arg-type]
    assert loop.time() - t0 < 0.2
    await asyncio.wait_for(finished.wait(), 2)
    await asyncio.sleep(0.01)
    import gc

    gc.collect()
    assert unhandled == []
    assert await within(_Remote(), asyncio.sleep(0, "ok"), 1.0) == "ok"  # type: ignore[arg-type]


async def test_within_cancels_the_call_with_its_caller() -> None:
    from vastserver.store.base import within

    cancelled = asyncio.Event()

    async def call() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outer = asyncio.ensure_future(within(_Remote(), call(), 5.0))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_hanging_store_degrades_instead_of_hanging(make_client: ClientFactory) -> None:
    client: Any = await make_client(deadline_ms=50)
    rt = client.server.app[RUNTIME]

    async def hang(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(30)

    rt.store.inner.read = hang
    rt.store.inner.commit = hang
    rt.store.inner.push_history = hang
    rt.store.local = False  # a store that can hang waits on something (a network backend)
    assert rt.delivery.store is rt.store
    resp = await asyncio.wait_for(client.get("/vast?pod_duration=60&session=s1"), 10)
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    assert root.findall("v:Ad", NS), "caps fail open: the pod still fills"
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_degradations_total{reason="store_timeout"}') == 1
    assert _metric(text, 'vastserver_degradations_total{reason="history_timeout"}') == 1


async def test_a_store_that_fails_at_once_is_a_degradation_and_a_beacon_store_error(
    make_client: ClientFactory,
) -> None:
    """A store that refuses (Redis down) degrades every decision to the failure policy: the
    degradations metric says so, as it does for a slow store, and a beacon's failed claim
    counts among the store errors (the alerts on both would otherwise stay silent)."""
    from vastserver.store.base import StoreUnavailable

    client: Any = await make_client()
    rt = client.server.app[RUNTIME]
    resp = await client.get("/vast?pod_duration=30&max_ads=1&device_id=d-down")
    imp = etree.fromstring(await resp.read()).find(".//v:Impression", NS)
    assert imp is not None

    async def down(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    for op in ("read", "commit", "claim_and_add", "history", "push_history"):
        setattr(rt.store.inner, op, down)
    assert (await client.get("/vast?pod_duration=60&session=s1")).status == 200
    url = urlsplit(expand_macros(imp.text.strip()))
    assert (await client.get(f"{url.path}?{url.query}")).status == 503
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_degradations_total{reason="store_unavailable"}') == 1
    assert _metric(text, 'vastserver_store_errors_total{op="beacon"}') == 1


async def test_an_inline_vmap_past_its_deadline_sends_the_rest_as_tags(
    make_client: ClientFactory,
) -> None:
    """The breaks of an inline VMAP share one deadline. With the store hung, the first
    break's decision degrades at the deadline; the later breaks are not decided (each used
    to wait out the minimum store wait on three calls: 102 breaks took 2 s) but sent as ad
    tags, which the player fetches when they are due."""
    client: Any = await make_client(deadline_ms=50)
    rt = client.server.app[RUNTIME]
    started = 0
    for _ in range(500):  # the pacing loop's first pass (it reads every line item's rates)
        if rt.delivery._rates_scan is not None:
            break
        await asyncio.sleep(0.01)
    assert rt.delivery._rates_scan is not None  # the next pass is 10 s away

    async def hang(*args: Any, **kw: Any) -> Any:
        nonlocal started
        started += 1
        await asyncio.sleep(30)

    rt.store.inner.read = hang
    rt.store.inner.commit = hang
    rt.store.inner.push_history = hang
    rt.store.local = False
    cues = ",".join(str(300 * i) for i in range(1, 41))  # the demo's min spacing: 300 s
    resp = await asyncio.wait_for(
        client.get(f"/vmap?content_duration=12600&cue_points={cues}&inline=1&session=s9&lmt=1"),
        20,
    )
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    vmap = "{http://www.iab.net/videosuite/vmap}"
    sources = root.findall(f"{vmap}AdBreak/{vmap}AdSource")
    assert len(sources) == 42  # pre, 40 mid, post
    assert sources[0].find(f"{vmap}VASTAdData") is not None
    tags = [s.findtext(f"{vmap}AdTagURI", "").strip() for s in sources[1:]]
    assert all(t.startswith("https://ads.example.com/vast?") for t in tags), tags[:2]
    assert "avail=1&" in tags[0] and "session=s9" in tags[0] and "lmt=1" in tags[0]
    assert started <= 3, started  # the first break's calls only
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_degradations_total{reason="store_timeout"}') == 1


async def test_internal_error_is_a_no_fill_not_a_500(make_client: ClientFactory) -> None:
    client: Any = await make_client()
    rt = client.server.app[RUNTIME]

    async def boom(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("bug")

    rt.service.decide = boom
    resp = await client.get("/vast")
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    assert root.findall("v:Ad", NS) == [] and root.find("v:Error", NS) is not None
    assert (await client.get("/decide")).status == 503
    vmap = await client.get("/vmap?content_duration=600&inline=1")
    assert vmap.status == 200 and b"vmap:VMAP" in await vmap.read()


def _check_empty_vast(xml: bytes, version: str) -> None:
    """A no-fill of the asked version: no ad, a root <Error> in 4.x only, schema-valid."""
    root = etree.fromstring(xml)
    assert root.get("version") == version
    children = [etree.QName(e).localname for e in root if isinstance(e.tag, str)]
    assert "Ad" not in children
    errors = [e for e in root if isinstance(e.tag, str) and etree.QName(e).localname == "Error"]
    if version.startswith("4"):
        assert etree.QName(root).namespace == NS["v"] and len(errors) == 1
    else:  # the 2.0 and 3.0 XSDs have no namespace and no root <Error>
        assert etree.QName(root).namespace is None and errors == []
    if c.SHARED_SPEC is not None:
        assert c.validate_vast_xsd(xml, version) == []
        assert c.vastlint_report(xml) == ([], [])


@pytest.mark.parametrize(
    ("query", "version"),
    [("vast=2.0", "2.0"), ("vast=3.0&vast=4.1", "3.0"), ("vast=4.1", "4.1"), ("", "4.2"),
     ("vast=", "4.2")],
)  # fmt: skip
async def test_internal_error_no_fill_is_of_the_asked_version(
    make_client: ClientFactory, query: str, version: str
) -> None:
    """A player that asked for VAST 2.0 may not read a 4.2 document: the no-fill of an
    internal error has the version the query asks for (the first ``vast``, as the parser
    reads it), else the default 4.2."""
    client: Any = await make_client()
    rt = client.server.app[RUNTIME]

    async def boom(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("bug")

    rt.service.decide = boom
    resp = await client.get("/vast?pod_duration=30&" + query)
    assert resp.status == 200
    _check_empty_vast(await resp.read(), version)


# ----------------------------------------------------------------------------- overload


async def test_overload_sheds_with_no_fill(make_client: ClientFactory) -> None:
    client: Any = await make_client(max_in_flight=2)
    rt = client.server.app[RUNTIME]
    real = rt.service.decide
    gate = asyncio.Event()

    async def slow(*args: Any, **kw: Any) -> Any:
        await gate.wait()
        return await real(*args, **kw)

    rt.service.decide = slow
    pending = [asyncio.create_task(client.get("/vast?pod_duration=30")) for _ in range(2)]
    await asyncio.sleep(0.2)
    # a shed request gets the version it asks for; one not known (never parsed: shed before
    # it could be refused) or none, the default
    asked = {"": "4.2", "vast=2.0": "2.0", "vast=3.0": "3.0", "vast=9.9": "4.2"}
    shed = [await client.get(f"/vast?pod_duration=30&{q}") for q in asked]
    for r, version in zip(shed, asked.values(), strict=True):
        assert r.status == 200 and r.headers["X-Shed"] == "1"
        _check_empty_vast(await r.read(), version)
    gate.set()
    done = await asyncio.gather(*pending)
    assert all(r.status == 200 for r in done)
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_shed_total{endpoint="vast"}') == 4
    assert _metric(text, "vastserver_in_flight_requests") == 0


async def test_stalled_request_bodies_hold_no_decision_slot(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More stalled OpenRTB uploads than there are decision slots: ads are still served, and
    each stalled upload gets a 408 once the body timeout passes."""
    import vastserver.app as appmod

    monkeypatch.setattr(appmod, "BODY_TIMEOUT_S", 1.0)
    client: Any = await make_client(max_in_flight=2)
    host, port = client.server.host, client.server.port
    stalled = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /openrtb2/pod HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        stalled.append((reader, writer))
    await asyncio.sleep(0.2)
    r = await client.get("/vast?pod_duration=30")
    assert r.status == 200 and "X-Shed" not in r.headers
    assert etree.fromstring(await r.read()).findall("v:Ad", NS)
    for reader, writer in stalled:
        head = await asyncio.wait_for(reader.readline(), 5)
        assert head.startswith(b"HTTP/1.1 408"), head
        writer.close()
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "vastserver_shed_total") == 0
    assert _metric(text, 'vastserver_degradations_total{reason="internal_error"}') == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_undecodable_body_is_a_400(
    client: Any, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):  # the connection closes after each: the next request gets a new one
        r = await client.post(
            "/openrtb2/pod",
            data=b"not compressed at all",
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert r.status == 400 and r.headers["Connection"] == "close"
        body = await r.json()
        assert body["field"] == "body"
        assert body["why"] == (
            f"cannot be decoded as Content-Encoding {encoding!r} (gzip, deflate or none are"
            " accepted)"
        )
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_degradations_total{reason="internal_error"}') == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_encoding_aiohttp_cannot_decode_is_its_400(client: Any) -> None:
    """``br`` or ``zstd`` is refused by aiohttp's parser before any handler (its plain-text
    400; the server's log filter, ``MalformedRequests``, keeps it to a sampled warning)."""
    for coding in ("br", "zstd"):
        r = await client.post("/openrtb2/pod", data=b"{}", headers={"Content-Encoding": coding})
        assert r.status == 400


# ----------------------------------------------------------------------------- disk full


async def test_disk_full_event_log_keeps_serving(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client: Any = await make_client(event_log=str(tmp_path))
    rt = client.server.app[RUNTIME]
    full = True

    def write(fd: int, data: Any) -> int:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    rt.events._os_write = write  # the writer's I/O hook: a full disk, then a recovered one
    for i in range(5):
        assert (await client.get(f"/vast?pod_duration=30&device_id=d{i}")).status == 200
    await asyncio.sleep(0.3)
    assert rt.events.stats()["pending"] >= 5
    full = False
    await client.close()  # shutdown flushes what was buffered
    decisions = [r for r in read_events([tmp_path]) if r["type"] == "decision"]
    assert len(decisions) == 5


# ----------------------------------------------------------------------------- hostile input


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(VAST_PARAMS + VMAP_PARAMS + ["x", "kv_", "kv_a"]),
        st.text(max_size=80),
        max_size=12,
    )
)
def test_query_parsing_raises_only_param_errors(q: dict[str, str]) -> None:
    client = ClientInfo("203.0.113.1", "ua", "203.0.113.1", "ua")
    try:
        parse_vast_request(q, client, AdRules())
    except ParamError as e:
        assert e.field and e.why
    try:
        parse_vmap_query(q)
    except ParamError as e:
        assert e.field and e.why


async def test_garbage_over_http_never_500(client: Any) -> None:
    rng = random.Random(99)
    alphabet = string.printable + "é中\u202e%&=;"
    for i in range(250):
        q = {
            rng.choice(VAST_PARAMS + VMAP_PARAMS): "".join(
                rng.choice(alphabet) for _ in range(rng.randint(0, 40))
            )
            for _ in range(rng.randint(1, 6))
        }
        path = rng.choice(["/vast", "/vmap", "/decide"])
        resp = await client.get(path, params=q)
        assert resp.status in (200, 400), (i, path, q, resp.status)
    for body in (
        b"{",
        b"[]",
        b'{"id": 1}',
        b"\xff\xfe",
        b"{}" * 1000,
        json.dumps({"imp": []}).encode(),
    ):
        resp = await client.post("/openrtb2/pod", data=body)
        assert resp.status == 400
    big = b"{" + b'"a":1,' * 100_000 + b'"b":1}'
    assert (await client.post("/openrtb2/pod", data=big)).status == 413


async def test_a_body_announced_too_large_is_a_413_at_once(client: Any) -> None:
    """A ``Content-Length`` over 256 KiB with no body behind it was read for 10 s, then
    answered 408: it is a 413 naming the body at once, and the connection closes."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /openrtb2/pod HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 99999999\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 413"), head
    body = await asyncio.wait_for(reader.read(), 2)  # then EOF: the connection is closed
    assert json.loads(body)["field"] == "body"
    writer.close()


async def test_request_id_echoed_and_in_debug(client: Any) -> None:
    resp = await client.get("/vast?pod_duration=60&debug=1", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    root = etree.fromstring(await resp.read())
    ext = root.find(".//v:Extension[@type='vastserver-debug']/v:Explanation", NS)
    assert json.loads(ext.text)["request_id"] == "abc-123"
    weird = await client.get("/vast", headers={"X-Request-Id": "<script>" * 20})
    rid = weird.headers["X-Request-Id"]
    assert rid != "<script>" * 20 and len(rid) == 20 and set(rid) <= set("0123456789abcdef")


async def test_request_id_in_inline_vmap_and_openrtb_explanations_and_records(
    client: Any,
) -> None:
    """An inline VMAP's breaks and an OpenRTB pod are decided for the request like /vast's
    pod: their explanations and decision records carry its id."""
    from tests.test_openrtb import dynamic_pod

    records: list[dict[str, Any]] = []

    class Sink:
        def append(self, record: Any) -> None:
            records.append(dict(record))

    client.server.app[RUNTIME].service.events = Sink()
    query = "content_duration=1800&cue_points=600,1200&inline=1&debug=1&session=rid-s"
    resp = await client.get(f"/vmap?{query}", headers={"X-Request-Id": "rid-vmap-1"})
    assert resp.status == 200 and resp.headers["X-Request-Id"] == "rid-vmap-1"
    root = etree.fromstring(await resp.read())
    explained = [  # a pod's in an Extension, a no-fill's in a comment
        *(x.text for x in root.iterfind(".//v:Extension/v:Explanation", NS)),
        *(x.text.removeprefix(" vastserver-debug") for x in root.iter(etree.Comment)),
    ]
    assert len(explained) == 4  # pre-roll, two mid-rolls, post-roll
    assert {json.loads(x)["request_id"] for x in explained} == {"rid-vmap-1"}
    decisions = [r for r in records if r["type"] == "decision"]
    assert len(decisions) == 4 and {r["request_id"] for r in decisions} == {"rid-vmap-1"}

    rtb = dynamic_pod()
    rtb["imp"][0]["ext"] = {"vastserver": {"debug": 1}}
    resp = await client.post(
        "/openrtb2/pod", data=json.dumps(rtb), headers={"X-Request-Id": "rid-ortb-1"}
    )
    assert resp.status == 200, await resp.text()
    ext = etree.fromstring(await resp.read()).find(
        ".//v:Extension[@type='vastserver-debug']/v:Explanation", NS
    )
    assert json.loads(ext.text)["request_id"] == "rid-ortb-1"
    assert records[-1]["type"] == "decision" and records[-1]["request_id"] == "rid-ortb-1"


def test_logs_are_json_lines_with_request_id(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from vastserver.logs import REQUEST_ID, JsonFormatter, event

    logger = logging.getLogger("vastserver.test")
    token = REQUEST_ID.set("rid-1")
    try:
        with caplog.at_level(logging.INFO, logger="vastserver.test"):
            event(logger, "beacon_rejected", why='quote " and \n newline')
    finally:
        REQUEST_ID.reset(token)
    line = JsonFormatter().format(caplog.records[0])
    data = json.loads(line)
    assert "\n" not in line
    assert data["event"] == "beacon_rejected" and data["why"].endswith("newline")


def test_every_log_line_has_an_event(caplog: pytest.LogCaptureFixture) -> None:
    """A library's plain message gets the generic event; ours log structured fields at the
    top level, not a JSON string inside ``msg``."""
    import logging

    from vastserver.logs import PLAIN_EVENT, JsonFormatter
    from vastserver.settings import load_settings

    with caplog.at_level(logging.INFO):
        logging.getLogger("aiohttp.server").error("Error handling request %s", "x\ny")
        load_settings({}, {})  # no secret: warns
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert lines[0]["event"] == PLAIN_EVENT and lines[0]["msg"] == "Error handling request x\ny"
    assert lines[1]["event"] == "ephemeral_secret" and "msg" not in lines[1]
    assert "VASTSERVER_SECRET" in lines[1]["detail"]


def test_catalog_reload_logs_a_structured_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from vastserver.app import create_app
    from vastserver.logs import JsonFormatter

    app = create_app(make_settings())
    service = app[RUNTIME].service
    with caplog.at_level(logging.INFO, logger="vastserver.service"):
        snap = service.reload_catalog()
    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert line["event"] == "catalog_reload" and line["version"] == snap.catalog.version
    assert "msg" not in line


# ----------------------------------------------------------------------------- shutdown


def test_sigterm_drains_then_flushes(tmp_path: Path) -> None:
    events = tmp_path / "events"
    srv = Server("--event-log", str(events), env=_env(VASTSERVER_DRAIN_MS="1500"))
    try:
        srv.wait_ready()
        for i in range(5):
            assert _get(f"{srv.base}/vast?pod_duration=30&device_id=t{i}")[0] == 200
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            status = _get(f"{srv.base}/readyz")[0]
        except OSError:
            status = -1
        assert status == 503, "readiness must turn false while draining"
        assert srv.proc.wait(20) == 0
    finally:
        srv.kill()
    decisions = [r for r in read_events([events]) if r["type"] == "decision"]
    assert len(decisions) == 5


def test_sigterm_answers_connections_accepted_before_the_listener_closed(tmp_path: Path) -> None:
    """A connection accepted during the drain whose request arrives just after the listener
    closes is answered (it was cut off or left waiting 30 s unanswered, aiohttp#2298), and a
    connection still sending half a request holds the exit a few seconds, not 30."""
    import socket

    srv = Server(env=_env(VASTSERVER_DRAIN_MS="1000", VASTSERVER_EVENT_LOG_DIR="off"))
    try:
        srv.wait_ready()
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        time.sleep(0.3)
        late = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        stalled = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        stalled.sendall(b"GET /vast?pod_duration=30 HTTP/1.1\r\nHost: x\r\n")  # never ends
        time.sleep(1.0 - (time.monotonic() - t0) + 0.3)  # the listener has closed
        late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = late.recv(64)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert srv.proc.wait(15) == 0
        assert time.monotonic() - t0 < 10, "the exit waited on the stalled connection"
        late.close()
        stalled.close()
    finally:
        srv.kill()


def test_malformed_http_is_logged_sampled_without_tracebacks() -> None:
    """Requests aiohttp cannot parse get its 400; the server's log keeps them as sampled
    one-line warnings, so a client cannot fill the disk with tracebacks."""
    import socket

    bad = [
        b"GET /vast?a=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /vast HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
        b"POST /openrtb2/pod HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /vast HTTP/1.1\r\nHost: x\r\nContent-Encoding: zstd-nope\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        # answered before the body is read (a 414); aiohttp then fails to decode the body
        b"GET /vast?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 10\r\n\r\n0123456789",
    ]
    secret_bad = [
        b"GET /vast?pod_duration=30&gdpr=1&gdpr_consent=" + _CONSENT.encode() + b"\x01 HTTP/1.1"
        b"\r\nHost: x\r\n\r\n",
        b"GET /admin/line-items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + _BEARER.encode()
        + b"\x7f\r\n\r\n",
        b"GET /vast HTTP/1.1\r\nHost: x\r\nX-Consent : " + _CONSENT.encode() + b"\r\n\r\n",
    ]
    srv = Server(env=_env(VASTSERVER_EVENT_LOG_DIR="off"))
    try:
        srv.wait_ready()
        for raw in secret_bad:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(raw)
                assert s.recv(64).split(b" ", 2)[1] == b"400"
        statuses = []
        for raw in bad * 10:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(raw)
                statuses.append(s.recv(64).split(b" ", 2)[1])
        assert set(statuses) == {b"400", b"414"}, statuses
        assert _get(f"{srv.base}/vast?pod_duration=30")[0] == 200
    finally:
        srv.stop()
    assert srv.proc.stdout is not None
    out = srv.proc.stdout.read().decode()
    assert _CONSENT[:24] not in out and _BEARER not in out  # no query or header value
    lines = [json.loads(line) for line in out.splitlines()]
    noted = [x for x in lines if x["event"] == "bad_http_request"]
    assert {"InvalidURLError", "BadHttpMessage"} <= {x["error"] for x in noted}
    assert noted and all(x["level"] == "warning" and x["status"] == 400 for x in noted)
    assert any(x["why"] == "Cannot decode the body's content-encoding" for x in noted)
    assert len(noted) <= 20  # sampled: at most 10 a second, then 1 in 100
    assert not [x for x in lines if "exc" in x or x["level"] == "error"]


_CONSENT = "CPXxRfAPXxRfAAfKABENBCgAAAAAAAAAAYgAAAAAAAA.IGLtVT9fb2vjZ99tkeYwf95y3pwzhheMs8NyZ"
_BEARER = "adm-secret-token-XYZ-0123"


_URL, _BAD_LINE, _METHOD = "Invalid URL", "Bad status line", "Bad HTTP method in the request line"
_LONG = "Request line or header line too long: more than 8190 bytes"
_HEADER, _MESSAGE = "Invalid HTTP header", "Bad HTTP message"


@pytest.mark.parametrize("parser", ["py", "c"])
@pytest.mark.parametrize(
    ("raw", "why_py", "why_c"),
    [
        (f"GET /vast?gdpr_consent={_CONSENT}\x01 HTTP/1.1\r\nHost: x\r\n\r\n", _URL, _URL),
        (f"GET vast?gdpr_consent={_CONSENT} HTTP/1.1\r\nHost: x\r\n\r\n", _URL, _URL),
        (f"GET /vast?c={_CONSENT} HTTP/9.Z\r\nHost: x\r\n\r\n", _BAD_LINE, _BAD_LINE),
        (f"G\x01T /vast?c={_CONSENT} HTTP/1.1\r\nHost: x\r\n\r\n", _METHOD, _METHOD),
        (f"GET /vast?c={_CONSENT}{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n", _LONG, _LONG),
        (
            f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_BEARER}\x7f\r\n\r\n",
            _HEADER,
            _MESSAGE,
        ),
        (f"GET / HTTP/1.1\r\nHost: x\r\nCookie: {_CONSENT}\x00\r\n\r\n", _HEADER, _MESSAGE),
        (f"GET / HTTP/1.1\r\nHost: x\r\nX-Consent : {_CONSENT}\r\n\r\n", _HEADER, _MESSAGE),
        (f"GET / HTTP/1.1\r\nHost: x\r\nX-A: {_CONSENT}{'a' * 9000}\r\n\r\n", _LONG, _LONG),
        # the pure-Python parser's bad chunk size is the chunk-size line itself
        (
            f"POST /openrtb2/pod HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{_CONSENT}\r\n",
            "Bad chunked transfer encoding",
            _MESSAGE,
        ),
        (
            f"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{_BEARER}\r\n",
            "Bad chunked transfer encoding",
            _MESSAGE,
        ),
    ],
)
def test_bad_http_request_log_line_carries_no_client_value(
    parser: str, raw: str, why_py: str, why_c: str
) -> None:
    """aiohttp's parse errors quote the request line, header line or chunk-size line they
    choke on (a consent string in the query, a bearer token); the log line keeps the error's
    class and a fixed reason for that class only, from either of aiohttp's parsers."""
    from unittest import mock

    from aiohttp import http_parser

    from vastserver.logs import JsonFormatter, MalformedRequests

    cls = http_parser.HttpRequestParserPy if parser == "py" else http_parser.HttpRequestParserC
    loop = asyncio.new_event_loop()
    try:
        p = cls(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            messages, _, _ = p.feed_data(raw.encode("latin-1"))
        except Exception as e:  # a bad request line or header
            exc: BaseException | None = e
        else:  # a bad body: set on the payload, as the handler reading it would see
            exc = next(m[1].exception() for m in messages)
    finally:
        loop.close()
    assert exc is not None
    if parser == "c" or "chunked" in raw:  # the hazard: the message quotes the whole line
        assert _CONSENT[:24] in repr(exc) or _BEARER in repr(exc)
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request",
        None,
        (type(exc), exc, None),
    )
    assert MalformedRequests().filter(record)
    line = JsonFormatter().format(record)
    assert _CONSENT[:24] not in line and _BEARER not in line and "vast?" not in line
    out = json.loads(line)
    assert out["event"] == "bad_http_request" and out["status"] == 400
    assert out["error"] == type(exc).__name__
    assert out["why"] == (why_py if parser == "py" else why_c), out


def test_parse_error_reason_is_fixed_per_error_class() -> None:
    """Whatever an error's message says (any of aiohttp's parse errors, built with a
    client's bytes as their text), its reason is its class's fixed text; an unknown error
    gets a generic one, and a body error (``RequestPayloadError``) its cause's."""
    from aiohttp import http_exceptions as he
    from aiohttp.web_protocol import RequestPayloadError

    from vastserver.logs import BODY_REASON, REASONS, UNKNOWN_REASON, parse_error_reason

    secret = f"Invalid header: {_BEARER}: {_CONSENT}"
    built: list[tuple[BaseException, str]] = [
        (he.InvalidURLError(secret), "Invalid URL"),
        (he.BadHttpMethod(secret), "Bad HTTP method in the request line"),
        (he.BadStatusLine(secret), "Bad status line"),
        (he.InvalidHeader(secret), "Invalid HTTP header"),
        (he.LineTooLong(secret), "Request line or header line too long"),
        (
            he.LineTooLong(secret, 4096),
            "Request line or header line too long: more than 4096 bytes",
        ),
        (he.ContentEncodingError(secret), "Cannot decode the body's content-encoding"),
        (he.TransferEncodingError(secret), "Bad chunked transfer encoding"),
        (he.ContentLengthError(secret), "Body shorter than its Content-Length"),
        (he.DecompressSizeError(secret), "Cannot decode the body"),
        (he.PayloadEncodingError(secret), "Cannot decode the body"),
        (he.HttpBadRequest(secret), "Bad request"),
        (he.BadHttpMessage(secret), "Bad HTTP message"),
        (he.HttpProcessingError(code=400, message=secret), "HTTP processing error"),
        (ValueError(secret), UNKNOWN_REASON),
        (RequestPayloadError(secret), BODY_REASON),
    ]
    caused = RequestPayloadError(secret)
    caused.__cause__ = he.ContentEncodingError(secret)
    built.append((caused, "Cannot decode the body's content-encoding"))
    for exc, want in built:
        assert parse_error_reason(exc) == want, exc
    for cls, reason in REASONS.items():  # every class listed, as the parser may build it
        assert parse_error_reason(cls.__new__(cls)) == reason


def test_settings_validation(tmp_path: Path) -> None:
    s = make_settings(deadline_ms="40", max_in_flight="7", drain_ms="0")
    assert (s.deadline_ms, s.max_in_flight, s.drain_s) == (40, 7, 0.0)


def test_metrics_port_settings() -> None:
    from vastserver.settings import SettingsError

    s = make_settings(metrics_port="9100", workers="2", redis="redis://127.0.0.1:6379/0")
    assert (s.metrics_port, s.workers) == (9100, 2)
    assert make_settings().metrics_port is None
    # 0: each worker's metrics port is picked by the system, so no range of ports to check
    s = make_settings(metrics_port="0", port="0", workers="2", redis="redis://127.0.0.1:6379/0")
    assert (s.metrics_port, s.port) == (0, 0)
    for bad, why in [
        ({"metrics_port": "-1"}, "between 0 and 65535"),
        ({"metrics_port": "65535", "workers": "2", "redis": "redis://x"}, "ports 65535-65536"),
        ({"metrics_port": "8079", "workers": "2", "redis": "redis://x"}, "include VASTSERVER_PORT"),
    ]:
        with pytest.raises(SettingsError, match=why):
            make_settings(**bad)


def test_generated_request_ids_are_unique_across_forked_workers() -> None:
    import multiprocessing

    from vastserver import app as app_module

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def worker() -> None:
        child.send([app_module._new_request_id() for _ in range(3)])

    p = ctx.Process(target=worker)
    p.start()
    theirs = parent.recv()
    p.join(10)
    ours = [app_module._new_request_id() for _ in range(3)]
    assert len(set(ours)) == 3 and len(set(theirs)) == 3
    assert {r[:12] for r in ours}.isdisjoint({r[:12] for r in theirs})


async def test_memory_store_evictions_are_exported(client: Any) -> None:
    """The in-memory store's LRU evictions (an evicted counter reads 0) are a metric, so an
    undersized store can be alerted on."""
    from vastserver.store.memory import MemoryStore

    store = client.server.app[RUNTIME].store.inner
    assert isinstance(store, MemoryStore)
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "vastserver_store_evictions_total") == 0
    store.max_keys = 2
    for i in range(3):
        assert (await client.get(f"/vast?pod_duration=60&device_id=ev{i}")).status == 200
    text = await (await client.get("/metrics")).text()
    assert store.evictions > 0
    assert _metric(text, "vastserver_store_evictions_total") == store.evictions


async def test_a_burst_of_sighups_reloads_twice_not_once_each(client: Any) -> None:
    """Signals that arrive during a reload make one more reload after it."""
    from vastserver.app import reload_from_signal

    rt = client.server.app[RUNTIME]
    calls = 0
    gate = asyncio.Event()
    real = rt.service.reload_catalog_in_thread

    async def slow_reload(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        await gate.wait()
        return await real(*args)

    rt.service.reload_catalog_in_thread = slow_reload
    for _ in range(20):
        reload_from_signal(rt)
    await asyncio.sleep(0.05)
    assert calls == 1
    gate.set()
    await asyncio.wait_for(rt.sighup.task, 10)
    assert calls == 2 and rt.sighup.again is False
    reload_from_signal(rt)  # a later signal reloads again
    await asyncio.wait_for(rt.sighup.task, 10)
    assert calls == 3
