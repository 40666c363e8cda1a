"""Beacons over real HTTP: counted once, never when forged or expired, logged durably."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from tests.conftest import ADMIN, DEMO_CATALOG, ClientFactory, FakeClock, raw_request
from vastserver.eventlog import read_events
from vastserver.tracking import expand_macros

NS = {"v": "http://www.iab.com/VAST"}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _local(url: str) -> str:
    parts = urlsplit(expand_macros(url.strip()))
    return f"{parts.path}?{parts.query}"


async def _first_ad(client: Any, query: str = "pod_duration=30&max_ads=1&device_id=d1") -> Any:
    resp = await client.get("/vast?" + query)
    root = etree.fromstring(await resp.read())
    ad = root.find("v:Ad", NS)
    assert ad is not None
    return ad


def _tracking(ad: Any, event: str) -> str:
    if event == "impression":
        return ad.find(".//v:Impression", NS).text
    return next(t.text for t in ad.iterfind(".//v:Tracking", NS) if t.get("event") == event)


async def _stats(client: Any, li: str) -> dict[str, Any]:
    resp = await client.get(f"/admin/line-items/{li}", headers=AUTH)
    assert resp.status == 200
    return dict(await resp.json())


async def _served_line_item(client: Any) -> str:
    """The line item of the one ad served so far."""
    rows = await (await client.get("/admin/line-items", headers=AUTH)).json()
    return str(next(x for x in rows if x["served"] == 1)["id"])


async def test_impression_counted_once_and_forgeries_ignored(client: Any, clock: FakeClock) -> None:
    ad = await _first_ad(client)
    imp = _tracking(ad, "impression")
    tk = parse_qs(urlsplit(imp).query)["tk"][0]
    li = await _served_line_item(client)
    for _ in range(3):
        assert (await client.get(_local(imp))).status == 204
    complete = _tracking(ad, "complete")
    assert (await client.get(_local(complete))).status == 204
    assert (await client.get(_local(complete))).status == 204
    before = await _stats(client, li)
    assert before["delivered_impressions"] == 1 and before["completes"] == 1

    payload, kid, sig = tk.split(".")
    forged_sig = f"{payload}.{kid}.{sig[::-1]}"
    forged_kid = f"{payload}.000000.{sig}"
    tampered = f"{payload[:-2]}AA.{kid}.{sig}"
    for bad in (forged_sig, forged_kid, tampered, "x.y.z", ""):
        resp = await client.get(f"/t/impression?tk={bad}")
        assert resp.status in (400, 403)
    clock.now += timedelta(hours=25)
    assert (await client.get(_local(imp))).status == 403
    after = await _stats(client, li)
    counters = ("served", "delivered_impressions", "completes", "spend")
    assert {k: after[k] for k in counters} == {k: before[k] for k in counters}

    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="impression",result="replay"} 2.0' in text
    assert 'vastserver_beacons_total{event="impression",result="expired"} 1.0' in text


async def test_an_expired_click_still_takes_the_viewer_to_the_advertiser(
    client: Any, clock: FakeClock
) -> None:
    """A click on an ad whose token has expired is not counted, but the viewer is sent to
    the click-through we signed (a 403 page would strand her); a forged one still is not."""
    ad = await _first_ad(client)
    click = ad.find(".//v:ClickThrough", NS).text
    fresh = await client.get(_local(click), allow_redirects=False)
    assert fresh.status == 302
    clock.now += timedelta(hours=25)
    late = await client.get(_local(click), allow_redirects=False)
    assert late.status == 302
    assert urlsplit(late.headers["Location"]).netloc == urlsplit(fresh.headers["Location"]).netloc
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="click",result="ok"} 1.0' in text
    assert 'vastserver_beacons_total{event="click",result="expired"} 1.0' in text
    tk = parse_qs(urlsplit(click).query)["tk"][0]
    payload, kid, sig = tk.split(".")
    forged = await client.get(f"/c?tk={payload}.{kid}.{sig[::-1]}", allow_redirects=False)
    assert forged.status in (400, 403) and "Location" not in forged.headers


async def test_admin_line_items_auth(client: Any) -> None:
    assert (await client.get("/admin/line-items")).status == 401
    assert (
        await client.get("/admin/line-items", headers={"Authorization": "Bearer x"})
    ).status == 401
    rows = await (await client.get("/admin/line-items", headers=AUTH)).json()
    assert rows and {
        "id",
        "budget",
        "served",
        "delivered_impressions",
        "completes",
        "spend",
        "target_now",
        "throttle",
        "allowance",
        "allowance_left",
        "cap_hits",
        "campaign_id",
        "campaign_budget",
    } <= set(rows[0])
    assert (await client.get("/admin/line-items/nope", headers=AUTH)).status == 404
    # a line item exhausted by its campaign's budget shows that budget (its own may be none)
    row = next(r for r in rows if r["campaign_id"] == "cmp-northstar-winter")
    assert row["campaign_budget"] == {
        "impressions": 20000000,
        "daily_impressions": None,
        "spend": 700000,
        "daily_spend": None,
    }


async def test_the_line_item_listing_is_the_array_it_was_and_pages_slice_it(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing is streamed a few line items at a time; its bytes are still the one
    ``json_response`` it was (every line item, in id order, the same fields), and ``offset``
    and ``limit`` cut a page of it, with the total in ``X-Total-Count``."""
    from vastserver import delivery
    from vastserver.app import RUNTIME

    monkeypatch.setattr(delivery, "LISTING_CHUNK", 3)  # 14 line items: 5 chunks
    ad = await _first_ad(client)
    assert (await client.get(_local(_tracking(ad, "impression")))).status == 204
    rt = client.server.app[RUNTIME]
    catalog = rt.service.snapshot.catalog
    expected = await rt.delivery.line_item_stats(catalog, sorted(catalog.line_items))
    assert sum(r["delivered_impressions"] for r in expected) == 1  # not all zeros
    resp = await client.get("/admin/line-items", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.headers["X-Total-Count"] == "14" and resp.headers["X-Request-Id"]
    assert await resp.read() == json.dumps(expected).encode()  # what json_response sent

    for query, page in [
        ("offset=0&limit=3", expected[:3]),
        ("offset=3&limit=3", expected[3:6]),
        ("offset=4&limit=5", expected[4:9]),
        ("offset=12", expected[12:]),
        ("limit=7", expected[:7]),
        ("offset=12&limit=100", expected[12:]),
        ("offset=14", []),
        ("offset=1000000&limit=2", []),
        ("limit=0", []),
        ("offset=&limit=", expected),  # empty: not given, as everywhere in the API
    ]:
        resp = await client.get(f"/admin/line-items?{query}", headers=AUTH)
        assert resp.status == 200 and resp.headers["X-Total-Count"] == "14", query
        assert await resp.read() == json.dumps(page).encode(), query


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("offset=1.5", "offset"),
        ("offset=10000000000", "offset"),
        ("limit=-5", "limit"),
        ("limit=ten", "limit"),
        ("offset=2&limit=+3", "limit"),
    ],
)
async def test_a_bad_page_of_line_items_is_a_400_naming_the_field(
    client: Any, query: str, field: str
) -> None:
    resp = await client.get(f"/admin/line-items?{query}", headers=AUTH)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "bad_request" and body["field"] == field and body["why"]
    # the admin API's 401 comes first: a bad page tells no one without the token anything
    assert (await client.get(f"/admin/line-items?{query}")).status == 401


async def test_a_store_down_during_the_listing_is_a_503_or_a_cut_connection(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Down before anything is sent: a 503, as before. Down mid-listing, once the 200 is
    sent: the connection is cut before the array closes, so no client takes the rows it
    got for every line item; the server serves on."""
    import aiohttp

    from vastserver import delivery
    from vastserver.app import RUNTIME
    from vastserver.store.base import StoreUnavailable

    monkeypatch.setattr(delivery, "LISTING_CHUNK", 3)
    inner = client.server.app[RUNTIME].store.inner
    working = inner.read
    reads = 0

    async def fails_on(n: int, *args: Any, **kw: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads >= n:
            raise StoreUnavailable("connection refused")
        return await working(*args, **kw)

    monkeypatch.setattr(inner, "read", lambda *a, **kw: fails_on(1, *a, **kw))
    resp = await client.get("/admin/line-items", headers=AUTH)
    assert resp.status == 503 and await resp.json() == {"error": "store_unavailable"}

    reads = 0
    monkeypatch.setattr(inner, "read", lambda *a, **kw: fails_on(3, *a, **kw))
    resp = await client.get("/admin/line-items", headers=AUTH)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert "line_items_cut" in caplog.text
    # any other error once the 200 went out: cut as well (a second status line was written
    # into the chunked body, and the connection kept for the next request)
    reads = 0

    async def breaks_on_3(*args: Any, **kw: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads >= 3:
            raise RuntimeError("a bug")
        return await working(*args, **kw)

    monkeypatch.setattr(inner, "read", breaks_on_3)
    resp = await client.get("/admin/line-items", headers=AUTH)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    monkeypatch.setattr(inner, "read", working)
    resp = await client.get("/admin/line-items", headers=AUTH)
    assert len(await resp.json()) == 14
    assert (await client.get("/healthz")).status == 200
    # no HEAD: the streamed body would follow HEAD's headers and break the connection
    head = await client.head("/admin/line-items", headers=AUTH)
    assert head.status == 405
    assert (await client.get("/healthz")).status == 200


async def test_a_large_listing_lets_other_requests_through(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100k line items the listing was built in one go on the event loop (~7 s) and no
    other request was answered meanwhile. It now reads, builds and sends a chunk at a time,
    yielding in between: a /healthz sent once the first chunk is read is answered while
    chunks are still being read (counted, not timed). The line items come in id order
    whatever the file's order (sorted in slices, then merged)."""
    import random

    from tests.conftest import FIXED_NOW
    from vastserver import delivery
    from vastserver.app import RUNTIME
    from vastserver.catalog.gen import generate_catalog

    doc = generate_catalog(3000, 5, now=FIXED_NOW)
    random.Random(1).shuffle(doc["line_items"])
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(delivery, "LISTING_CHUNK", 25)  # 120 chunks
    monkeypatch.setattr(delivery, "SCAN_CHUNK", 128)  # 24 sorted runs to merge
    client: Any = await make_client(catalog=str(path))
    rt = client.server.app[RUNTIME]
    timeline: list[str] = []
    started = asyncio.Event()
    real = rt.delivery.line_item_stats

    async def counted(catalog: Any, ids: Any) -> Any:
        timeline.append("chunk")
        started.set()
        return await real(catalog, ids)

    monkeypatch.setattr(rt.delivery, "line_item_stats", counted)

    async def listing() -> list[dict[str, Any]]:
        resp = await client.get("/admin/line-items", headers=AUTH)
        assert resp.status == 200
        return list(await resp.json())

    task = asyncio.create_task(listing())
    await started.wait()
    assert (await client.get("/healthz")).status == 200
    timeline.append("healthz")
    rows = await task
    answered = timeline.index("healthz")
    assert timeline.count("chunk") == 120 and 0 < answered < 120, timeline
    assert [r["id"] for r in rows] == sorted(li["id"] for li in doc["line_items"])


async def test_event_log_records_decisions_and_beacons(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client: Any = await make_client(event_log=str(tmp_path))
    ad = await _first_ad(client)
    assert (await client.get(_local(_tracking(ad, "impression")))).status == 204
    assert (await client.get(_local(_tracking(ad, "impression")))).status == 204
    await client.close()  # clean shutdown flushes the log
    records = list(read_events([tmp_path]))
    decisions = [r for r in records if r["type"] == "decision"]
    beacons = [r for r in records if r["type"] == "beacon"]
    assert len(decisions) == 1 and decisions[0]["filled"]
    asid = decisions[0]["ad_serving_ids"][0]
    assert [(b["ad_serving_id"], b["counted"], b["result"]) for b in beacons] == [
        (asid, True, "ok"),
        (asid, False, "replay"),
    ]
    assert decisions[0]["context"]["device_type"] is None
    assert decisions[0]["ads"][0]["line_item_id"] == beacons[0]["line_item_id"]
    assert decisions[0]["ads"][0]["currency"] == "USD"  # the demo catalog's


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", (False, None, True, True, False)),
        ("&kids=1", (True, None, True, False, False)),
        ("&lmt=1", (False, None, False, False, True)),
        ("&gdpr=1", (False, True, False, False, True)),  # no consent string
        ("&gdpr=0", (False, False, True, True, False)),
        ("&us_privacy=1YYN", (False, None, True, False, False)),
    ],
)
async def test_a_decision_record_says_why_the_decision_was_restricted(
    make_client: ClientFactory, tmp_path: Path, query: str, why: tuple[Any, ...]
) -> None:
    """A decision record kept ``lmt`` and the (possibly emptied) segments, but not why:
    child-directed content, the GDPR, a refused consent and a US opt-out looked alike. Its
    context now holds ``kids``, ``gdpr`` and the resolved permissions."""
    client: Any = await make_client(event_log=str(tmp_path))
    resp = await client.get("/vast?pod_duration=30&device_id=d1&segments=sports_fans" + query)
    assert resp.status == 200
    await client.close()  # flushes the log
    [decision] = [r for r in read_events([tmp_path]) if r["type"] == "decision"]
    ctx = decision["context"]
    fields = ("kids", "gdpr", "device_id_allowed", "segments_allowed", "lmt")
    assert tuple(ctx[k] for k in fields) == why
    assert ctx["segments"] == (["sports_fans"] if ctx["segments_allowed"] else [])


async def test_a_beacon_answered_503_in_a_store_outage_is_in_the_event_log(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A beacon with a valid token that the store could not count (a 503, retried by the
    player) is logged all the same, as ``store_unavailable``; its retry once the store is
    back is the counted one."""
    from vastserver.app import RUNTIME
    from vastserver.store.base import StoreUnavailable

    client: Any = await make_client(event_log=str(tmp_path))
    ad = await _first_ad(client)
    inner = client.server.app[RUNTIME].store.inner
    working = inner.claim_and_add

    async def down(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    inner.claim_and_add = down
    imp = _local(_tracking(ad, "impression"))
    resp = await client.get(imp)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    inner.claim_and_add = working
    assert (await client.get(imp)).status == 204
    await client.close()  # flushes the log
    beacons = [r for r in read_events([tmp_path]) if r["type"] == "beacon"]
    assert [(b["event"], b["counted"], b["result"]) for b in beacons] == [
        ("impression", False, "store_unavailable"),
        ("impression", True, "ok"),
    ]
    assert beacons[0]["ad_serving_id"] == beacons[1]["ad_serving_id"]
    assert beacons[0]["line_item_id"] == beacons[1]["line_item_id"]


async def test_a_click_in_a_store_outage_redirects_and_is_logged_as_uncounted(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A click the store cannot count still takes the viewer to the advertiser (a 302, so
    nothing retries it): it was labelled ``store_unavailable``, which says "answered 503, its
    retry gets a record". Now the metric and the record say ``redirected_uncounted``, and
    the same click once the store is back is counted. A click token without a click-through
    (nothing to redirect to) is answered 503 for a retry, as a beacon is."""
    from dataclasses import replace

    from vastserver.app import RUNTIME
    from vastserver.store.base import StoreUnavailable
    from vastserver.tracking import CLICK_SCOPE, sign, verify

    client: Any = await make_client(event_log=str(tmp_path))
    rt = client.server.app[RUNTIME]
    ad = await _first_ad(client)
    click = ad.find(".//v:ClickThrough", NS)
    assert click is not None
    c = _local(click.text)
    raw = parse_qs(urlsplit(c).query)["tk"][0]
    now = int(rt.clock().timestamp())
    token = verify(raw, rt.keyring, now, rt.settings.token_max_age_s, CLICK_SCOPE)
    bare = f"/c?tk={sign(replace(token, click_url=''), rt.keyring, CLICK_SCOPE)}"
    inner = rt.store.inner
    working = inner.claim_and_add

    async def down(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    inner.claim_and_add = down
    resp = await client.get(c, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"].startswith("http")
    resp = await client.get(bare, allow_redirects=False)
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="click",result="redirected_uncounted"} 1.0' in text
    assert 'vastserver_beacons_total{event="click",result="store_unavailable"} 1.0' in text
    assert 'vastserver_beacons_total{event="click",result="ok"}' not in text
    inner.claim_and_add = working
    assert (await client.get(c, allow_redirects=False)).status == 302
    await client.close()  # flushes the log
    beacons = [r for r in read_events([tmp_path]) if r["type"] == "beacon"]
    assert [(b["event"], b["counted"], b["result"]) for b in beacons] == [
        ("click", False, "redirected_uncounted"),
        ("click", False, "store_unavailable"),
        ("click", True, "ok"),
    ]


async def test_a_header_that_is_not_utf8_neither_fails_a_beacon_nor_its_record(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A byte that is not UTF-8 in X-Device-User-Agent (or X-Device-IP) made the beacon's
    record unencodable after the count: the player got a 503 for a counted impression, its
    retry a replay, and the event log had no record (a reviewer found it)."""
    client: Any = await make_client(event_log=str(tmp_path))
    ad = await _first_ad(client)
    head = b"GET " + _local(_tracking(ad, "impression")).encode() + b" HTTP/1.1\r\n"
    odd = b"X-Device-User-Agent: Roku\xff/9\r\nX-Device-IP: 198.51.100.4\xff\r\n"
    assert (await raw_request(client, head + odd))[0] == 204
    assert (await raw_request(client, head + odd))[0] == 204  # a replay
    # the analysis fields of the tokenless beacons are in their records too
    assert (await client.get("/t/breakStart?s=sess-1&b=midroll-1&ph=00:10:00.500")).status == 204
    assert (await client.get("/t/error?r=no_fill&ec=303")).status == 204
    await client.close()  # flushes the log
    beacons = [r for r in read_events([tmp_path]) if r["type"] == "beacon"]
    assert [(b["event"], b["result"]) for b in beacons] == [
        ("impression", "ok"),
        ("impression", "replay"),
        ("breakStart", "advisory"),
        ("error", "advisory"),
    ]
    assert beacons[0]["device_user_agent"] == "Roku\ufffd/9" and beacons[0]["device_ip"] is None
    assert (beacons[2]["session"], beacons[2]["break_id"]) == ("sess-1", "midroll-1")
    assert beacons[2]["playhead_ms"] == 600_500
    assert (beacons[3]["reason"], beacons[3]["error_code"]) == ("no_fill", 303)


async def test_a_beacon_behind_a_proxy_logs_the_device_as_vast_reads_it(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A stitcher (MediaTailor forwards the player's User-Agent and X-Forwarded-For, never
    X-Device-*) or a player behind a proxy: the beacon's record had no device IP or UA. Now
    read as /vast reads them; ``caller_ip`` stays the peer, and counting does not change."""
    client: Any = await make_client(event_log=str(tmp_path))
    ad = await _first_ad(client)
    imp = _local(_tracking(ad, "impression"))
    proxied = {"X-Forwarded-For": "203.0.113.7", "User-Agent": "Roku/DVP-12.0 (12.0.0.4182)"}
    assert (await client.get(imp, headers=proxied)).status == 204
    assert (await client.get(imp, headers=proxied)).status == 204  # a replay
    ssai = {"X-Device-IP": "198.51.100.23", "X-Device-User-Agent": "Roku/9", **proxied}
    quartile = _local(_tracking(ad, "firstQuartile"))
    assert (await client.get(quartile, headers=ssai)).status == 204
    await client.close()  # flushes the log
    beacons = [r for r in read_events([tmp_path]) if r["type"] == "beacon"]
    assert [(b["result"], b["device_ip"], b["device_user_agent"]) for b in beacons] == [
        ("ok", "203.0.113.7", "Roku/DVP-12.0 (12.0.0.4182)"),
        ("replay", "203.0.113.7", "Roku/DVP-12.0 (12.0.0.4182)"),
        ("ok", "198.51.100.23", "Roku/9"),
    ]
    assert {b["caller_ip"] for b in beacons} == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("query", "personal"),
    [
        ("device_id=d1", True),
        ("device_id=d1&kids=1", True),  # no segments, but the device may be known
        ("device_id=d1&lmt=1", False),
        ("device_id=00000000-0000-0000-0000-000000000000", False),
        ("device_id=d1&gdpr=1", False),  # the GDPR applies, no consent string
    ],
)
async def test_a_beacon_of_a_viewer_who_refused_tracking_logs_no_device_ip_or_ua(
    make_client: ClientFactory, tmp_path: Path, query: str, personal: bool
) -> None:
    """Every beacon logged the device's full IP and user agent, whatever the consent: a
    viewer under ``lmt=1``, the all-zero IFA or ``gdpr=1`` without consent was kept out of
    caps and profiles, and still left a fingerprint on every beacon. Their tokens carry
    ``lmt``: those beacons log ``device_ip`` and ``device_user_agent`` as null; they still
    count, and the others are logged as before."""
    client: Any = await make_client(event_log=str(tmp_path))
    ad = await _first_ad(client, "pod_duration=30&max_ads=1&session=s-1&" + query)
    device = {"X-Forwarded-For": "198.51.100.23", "User-Agent": "Roku/DVP-12.0 serial=YH00AB1"}
    imp = _local(_tracking(ad, "impression"))
    assert (await client.get(imp, headers=device)).status == 204
    assert (await client.get(imp, headers=device)).status == 204  # a replay
    start = _local(_tracking(ad, "start"))
    ssai = {"X-Device-IP": "198.51.100.23", "X-Device-User-Agent": "Roku/9", **device}
    assert (await client.get(start, headers=ssai)).status == 204
    await client.close()  # flushes the log
    beacons = [r for r in read_events([tmp_path]) if r["type"] == "beacon"]
    assert [(b["event"], b["result"]) for b in beacons] == [
        ("impression", "ok"),
        ("impression", "replay"),
        ("start", "ok"),
    ]
    seen = [(b["device_ip"], b["device_user_agent"]) for b in beacons]
    if personal:
        assert seen == [
            ("198.51.100.23", "Roku/DVP-12.0 serial=YH00AB1"),
            ("198.51.100.23", "Roku/DVP-12.0 serial=YH00AB1"),
            ("198.51.100.23", "Roku/9"),
        ]
    else:
        assert seen == [(None, None)] * 3
    # the peer, as before; under a refusal only its network (a player calling us directly
    # is the device)
    assert {b["caller_ip"] for b in beacons} == {"127.0.0.1" if personal else "127.0.0.0"}


async def test_report_from_event_log(
    make_client: ClientFactory, tmp_path: Path, capsys: Any
) -> None:
    import json

    from tests.conftest import DEMO_CATALOG
    from vastserver.report import main_report

    client: Any = await make_client(event_log=str(tmp_path))
    served: list[Any] = []
    for i in range(4):
        served.append(await _first_ad(client, f"pod_duration=30&max_ads=1&device_id=r{i}"))
    for ad in served[:3]:
        assert (await client.get(_local(_tracking(ad, "impression")))).status == 204
    assert (await client.get(_local(_tracking(served[0], "complete")))).status == 204
    await client.close()

    assert main_report([str(tmp_path), "--json", "--catalog", str(DEMO_CATALOG)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["decisions"] == 4 and data["filled"] == 4
    totals = {
        k: sum(r[k] for r in data["line_items"]) for k in ("served", "impressions", "completes")
    }
    assert totals == {"served": 4, "impressions": 3, "completes": 1}
    assert main_report([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "fill rate: 100.0%" in text
    assert main_report([str(tmp_path / "missing")]) == 2


async def test_report_spend_is_what_the_server_billed(
    make_client: ClientFactory, tmp_path: Path, capsys: Any
) -> None:
    """The server bills each impression whole micros (its price as a CPM in micros // 1000:
    ``spend`` in ``/admin``, spend budgets); ``report`` summed ``price_cpm / 1000``, fractions
    of a micro included, and told another spend (and the experiment report another
    revenue). At CPMs with micros of CPM below a micro of spend, both now agree."""
    import json

    from tests.conftest import DEMO_CATALOG
    from vastserver.report import experiment_report, main_report

    doc = json.loads(DEMO_CATALOG.read_text())
    for li in doc["line_items"]:
        if li.get("pricing_model", "CPM") == "CPM" and li["price"]:
            li["price"] += 0.000567  # 567 micros of CPM: 0.567 of a micro per impression
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(doc))
    logs = tmp_path / "events"
    client: Any = await make_client(event_log=str(logs), catalog=str(catalog))
    for i in range(12):
        ad = await _first_ad(client, f"pod_duration=30&max_ads=1&device_id=s{i}")
        assert (await client.get(_local(_tracking(ad, "impression")))).status == 204
    rows = await (await client.get("/admin/line-items", headers=AUTH)).json()
    billed = {r["id"]: r["spend"] for r in rows if r["delivered_impressions"]}
    await client.close()
    assert main_report([str(logs), "--json"]) == 0
    got = {r["line_item_id"]: r["spend"] for r in json.loads(capsys.readouterr().out)["line_items"]}
    assert {li: got[li] for li in billed} == billed and sum(billed.values()) > 0
    records = [
        {**r, "experiment": "x", "arm": "a", "scorer": "model"} if r["type"] == "decision" else r
        for r in read_events([logs])
    ]
    [arm] = experiment_report(records, "x")["arms"]
    assert arm["revenue"] == pytest.approx(sum(billed.values()), abs=1e-12)


async def test_report_reads_where_the_server_writes_by_default(
    make_client: ClientFactory,
    tmp_path: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without EVENTS, ``report`` reads the directory the server writes (the same settings
    resolution: ``VASTSERVER_EVENT_LOG_DIR``, else <project root>/var/events), not
    ``./var/events`` relative to the working directory."""
    import json

    from vastserver.report import main_report
    from vastserver.settings import DEFAULT_EVENT_LOG_DIR, load_settings

    logs = tmp_path / "events"
    client: Any = await make_client(event_log=str(logs))
    await _first_ad(client, "pod_duration=30&max_ads=1&device_id=r0")
    await client.close()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "var" / "events").mkdir(parents=True)  # what the old default read
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("VASTSERVER_EVENT_LOG_DIR", str(logs))
    assert main_report(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decisions"] == 1
    with pytest.raises(SystemExit):
        main_report(["--help"])
    assert str(logs) in "".join(capsys.readouterr().out.split())  # the default, wrapped
    monkeypatch.setenv("VASTSERVER_EVENT_LOG_DIR", "off")
    assert main_report([]) == 2
    assert "name the EVENTS" in capsys.readouterr().err
    monkeypatch.delenv("VASTSERVER_EVENT_LOG_DIR")
    assert load_settings({}).event_log_dir == DEFAULT_EVENT_LOG_DIR
    assert DEFAULT_EVENT_LOG_DIR.is_absolute()


async def test_head_neither_decides_nor_counts(client: Any) -> None:
    """HEAD is safe by HTTP's rules: no decision (it would reserve caps and budget), no
    counted beacon, no click."""
    for path in ("/vast?pod_duration=30", "/vmap?content_duration=600", "/decide"):
        assert (await client.head(path)).status == 405
    ad = await _first_ad(client)
    li = await _served_line_item(client)
    imp = _local(_tracking(ad, "impression"))
    assert (await client.head(imp)).status == 405
    click = _local(ad.find(".//v:ClickThrough", NS).text)
    assert (await client.head(click, allow_redirects=False)).status == 405
    stats = await _stats(client, li)
    assert stats["served"] == 1 and stats["delivered_impressions"] == 0
    assert (await client.get(imp)).status == 204
    assert (await _stats(client, li))["delivered_impressions"] == 1
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.head(path)).status == 200


async def test_a_token_counts_only_on_its_own_events_path(client: Any) -> None:
    """Each URL's token is signed for its event: the impression URL's token sent as a
    complete, a quartile or a click is a bad signature and counts nothing; the complete
    URL's as an impression neither. notUsed takes the impression's token."""
    ad = await _first_ad(client)
    li = await _served_line_item(client)
    imp_tk = parse_qs(urlsplit(_tracking(ad, "impression")).query)["tk"][0]
    complete_tk = parse_qs(urlsplit(_tracking(ad, "complete")).query)["tk"][0]
    pause_tk = parse_qs(urlsplit(_tracking(ad, "pause")).query)["tk"][0]
    assert len({imp_tk, complete_tk, pause_tk}) == 3
    assert imp_tk.split(".")[0] == complete_tk.split(".")[0]  # one payload, scoped tags
    for path, tk in [
        ("/t/complete", imp_tk),
        ("/t/midpoint", imp_tk),
        ("/t/click", imp_tk),
        ("/c", imp_tk),
        ("/t/impression", complete_tk),
        ("/t/impression", pause_tk),
        ("/t/notUsed", complete_tk),
    ]:
        resp = await client.get(f"{path}?tk={tk}", allow_redirects=False)
        assert resp.status == 403 and await resp.text() == "bad_signature", path
    stats = await _stats(client, li)
    assert stats["delivered_impressions"] == 0 and stats["completes"] == 0
    assert (await client.get(_local(_tracking(ad, "complete")))).status == 204
    assert (await _stats(client, li))["completes"] == 1
    # the player-derived notUsed URL (the impression's token) settles the ad
    assert (await client.get(f"/t/notUsed?tk={imp_tk}")).status == 204
    assert (await client.get(_local(_tracking(ad, "impression")))).status == 204
    assert (await _stats(client, li))["delivered_impressions"] == 0  # settled by notUsed
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="complete",result="bad_signature"} 1.0' in text
    assert 'vastserver_beacons_total{event="notUsed",result="ok"} 1.0' in text
    assert 'vastserver_beacons_total{event="impression",result="already_settled"} 1.0' in text


async def test_an_ad_not_used_counts_no_complete_quartile_or_click(client: Any) -> None:
    """``notUsed`` settles an ad as never played. Its impression was refused, but its
    ``complete``, quartiles and click were still counted (completion rates past 100 %, and
    the model credited an unshown ad; a reviewer found it). Now each is ``already_settled``;
    the click still redirects the viewer."""
    ad = await _first_ad(client)
    li = await _served_line_item(client)
    imp = _local(_tracking(ad, "impression"))
    assert (await client.get(imp.replace("/t/impression", "/t/notUsed"))).status == 204
    for url in [imp, *(_local(_tracking(ad, e)) for e in ("firstQuartile", "complete"))]:
        assert (await client.get(url)).status == 204
    click = _local(ad.find(".//v:ClickThrough", NS).text)
    resp = await client.get(click, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"].startswith("http")
    stats = await _stats(client, li)
    assert stats["delivered_impressions"] == 0 and stats["completes"] == 0
    text = await (await client.get("/metrics")).text()
    for event in ("impression", "firstQuartile", "complete", "click"):
        assert f'vastserver_beacons_total{{event="{event}",result="already_settled"}} 1.0' in text
    assert 'result="ok"} 1.0' not in text.replace('event="notUsed",result="ok"} 1.0', "")


async def test_a_replay_after_its_claim_was_evicted_is_not_counted(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    """In the in-memory store a flood of new viewers (ids anyone may choose) evicts the
    least recently used keys, beacon claims first (written once, never touched): a replay
    after that must still not count. A token issued after the eviction counts as usual."""
    from vastserver.app import RUNTIME
    from vastserver.store.memory import MemoryStore

    client = await make_client(memory_max_keys=1000)
    store = client.server.app[RUNTIME].store.inner
    assert isinstance(store, MemoryStore)
    imp = _local(_tracking(await _first_ad(client), "impression"))
    assert (await client.get(imp)).status == 204
    before = _metric_ok(await (await client.get("/metrics")).text())
    assert before == 1
    i = 0
    while store.claim_horizon == 0:  # until the claim is evicted
        clock.now += timedelta(milliseconds=100)
        resp = await client.get(f"/vast?pod_duration=60&max_ads=2&device_id=f{i}&session=s{i}")
        assert resp.status == 200
        i += 1
        assert i < 2000, "the claim was never evicted"
    assert (await client.get(imp)).status == 204
    text = await (await client.get("/metrics")).text()
    assert _metric_ok(text) == 1
    assert store.forgotten >= 1
    assert f"vastserver_store_claims_forgotten_total {float(store.forgotten)}" in text
    clock.now += timedelta(seconds=5)
    late = await _first_ad(client, "pod_duration=30&device_id=late")
    fresh = _local(_tracking(late, "impression"))
    assert (await client.get(fresh)).status == 204
    assert _metric_ok(await (await client.get("/metrics")).text()) == 2


def _metric_ok(text: str) -> float:
    line = 'vastserver_beacons_total{event="impression",result="ok"} '
    return next((float(x[len(line) :]) for x in text.splitlines() if x.startswith(line)), 0.0)


async def test_a_click_through_is_counted(client: Any) -> None:
    ad = await _first_ad(client)
    click = ad.find(".//v:ClickThrough", NS)
    assert click is not None
    resp = await client.get(_local(click.text), allow_redirects=False)
    assert resp.status == 302
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="click",result="ok"} 1.0' in text


def _catalog_with_click_through(tmp_path: Path, click_through: str) -> str:
    """The demo catalog with every media creative's click-through set to ``click_through``."""
    doc = json.loads(DEMO_CATALOG.read_text(encoding="utf-8"))
    for cr in doc["creatives"]:
        if "vast_tag_url" not in cr:
            cr["click_through"] = click_through
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


async def _click_locations(client: Any) -> list[tuple[str, str, bytes]]:
    """Each ad's AdServingId, its /c answer's Location and that header's bytes on the wire."""
    resp = await client.get("/vast?pod_duration=120&max_ads=4&device_type=ctv&device_id=c1")
    root = etree.fromstring(await resp.read())
    out = []
    for ad in root.iterfind("v:Ad", NS):
        click = ad.find(".//v:ClickThrough", NS)
        if click is None:
            continue  # a wrapper: the click-through is the tag's
        got = await client.get(_local(click.text), allow_redirects=False)
        assert got.status == 302
        raw = dict(got.raw_headers)[b"Location"]
        out.append((ad.findtext(".//v:AdServingId", namespaces=NS), got.headers["Location"], raw))
    assert out
    return out


async def test_the_click_redirect_fills_the_click_through_macros(
    make_client: ClientFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """The player never sees the click-through (it rides in the signed token), so /c used to
    send the viewer to `?cb=[CACHEBUSTING]&ts=[TIMESTAMP]` as written: /c fills them in."""
    catalog = _catalog_with_click_through(
        tmp_path, "https://brand.example/go?cb=[CACHEBUSTING]&ts=[TIMESTAMP]&id=[ADSERVINGID]"
    )
    client = await make_client(catalog=catalog)
    clock.now = datetime(2026, 11, 25, 20, 0, 1, 250000, tzinfo=UTC)
    seen = set()
    for serving_id, location, _ in await _click_locations(client):
        q = parse_qs(urlsplit(location).query)
        assert re.fullmatch(r"[0-9]{8}", q["cb"][0]), location
        assert "ts=2026-11-25T20%3A00%3A01.250%2B00%3A00&" in location  # percent-encoded
        assert q["id"] == [serving_id]
        seen.add(q["cb"][0])
    assert len(seen) > 1  # a cache buster per click


async def test_the_click_redirect_sends_an_ascii_location(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """An internationalised click-through went out as raw UTF-8 in the Location header:
    the host now goes as IDNA, the rest percent-encoded, byte for byte what was written
    otherwise."""
    client = await make_client(
        catalog=_catalog_with_click_through(tmp_path, "https://www.bücher.example/galaxy-ü?q=ä")
    )
    for _, location, raw in await _click_locations(client):
        assert location == "https://www.xn--bcher-kva.example/galaxy-%C3%BC?q=%C3%A4"
        assert raw == location.encode("ascii")


async def test_beacons_verify_for_the_configured_token_max_age(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    """VASTSERVER_TOKEN_MAX_AGE, not a fixed day, decides how long a tracking URL counts."""
    client = await make_client(token_max_age=7 * 86400)
    imp = _local(_tracking(await _first_ad(client), "impression"))
    clock.now += timedelta(days=2)
    assert (await client.get(imp)).status == 204
    assert _metric_ok(await (await client.get("/metrics")).text()) == 1
    clock.now += timedelta(days=6)
    assert (await client.get(imp)).status == 403
