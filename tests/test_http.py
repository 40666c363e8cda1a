"""The HTTP surface over real loopback HTTP: /vast, /vmap, /decide, beacons, clicks, ops."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import make_mocked_request
from lxml import etree

from tests.conftest import (
    ADMIN,
    DEMO_CATALOG,
    FIXED_NOW,
    PUBLIC_URL,
    ClientFactory,
    FakeClock,
    raw_request,
)
from vastserver.app import RUNTIME
from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.model import BreakPosition
from vastserver.eventlog import read_events
from vastserver.tracking import expand_macros

NS = {"v": "http://www.iab.com/VAST", "vmap": "http://www.iab.net/videosuite/vmap"}


def _secs(hms: str) -> float:
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


async def _vast(client: Any, query: str = "", **kw: Any) -> etree._Element:
    resp = await client.get("/vast?" + query, **kw)
    assert resp.status == 200, await resp.text()
    return etree.fromstring(await resp.read())


def _ads(root: etree._Element) -> list[etree._Element]:
    return root.findall("v:Ad", NS)


async def test_health_and_ready(client: Any) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 200 and body["ready"] is True
    assert body["catalog"]["line_items"] > 0
    assert body["store"] == {"backend": "memory", "reachable": True}


async def test_vast_pod_respects_break(client: Any) -> None:
    for pod, max_ads in [(30, 2), (60, 3), (120, 4), (300, 8), (15, 1)]:
        root = await _vast(client, f"pod_duration={pod}&max_ads={max_ads}&device_type=ctv")
        ads = _ads(root)
        assert root.get("version") == "4.2"
        assert 1 <= len(ads) <= max_ads
        assert [int(a.get("sequence")) for a in ads] == list(range(1, len(ads) + 1))
        total = sum(_secs(d.text) for d in root.iterfind(".//v:Duration", NS))
        assert total <= pod
        serving_ids = [e.text for e in root.iterfind(".//v:AdServingId", NS)]
        assert len(set(serving_ids)) == len(ads)


async def test_vast_aliases_and_required_durations(client: Any) -> None:
    root = await _vast(client, "poddur=60&maxseq=4&rqddurs=15,30")
    durations = [_secs(d.text) for d in root.iterfind(".//v:Duration", NS)]
    assert durations and all(round(d) in (15, 30) for d in durations)
    assert sum(durations) <= 60


async def test_vast_headers_and_cors(client: Any) -> None:
    resp = await client.get("/vast", headers={"Origin": "https://player.example.tv"})
    assert resp.headers["Content-Type"] == "application/xml; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Access-Control-Allow-Origin"] == "https://player.example.tv"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    pre = await client.options(
        "/vast",
        headers={"Origin": "https://p.example", "Access-Control-Request-Method": "GET"},
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://p.example"
    # a path we do not serve has nothing to preflight: its 404, not a 204 allowing methods
    nowhere = await client.options(
        "/nope/x",
        headers={"Origin": "https://p.example", "Access-Control-Request-Method": "GET"},
    )
    assert nowhere.status == 404 and "Access-Control-Allow-Methods" not in nowhere.headers


async def test_no_fill_is_valid_empty_vast(client: Any) -> None:
    root = await _vast(client, "pod_duration=2")
    assert _ads(root) == []
    err = root.find("v:Error", NS)
    assert err is not None and "[ERRORCODE]" in err.text


async def test_a_zero_length_avail_is_a_no_fill(client: Any) -> None:
    """pod_duration=0 (an avail with no time left) was a 400; it is the no-fill answer."""
    for query in ("pod_duration=0", "poddur=0", "pod_duration=0.0&break=pre&max_ads=4"):
        resp = await client.get("/vast?" + query)
        assert resp.status == 200, (query, await resp.text())
        root = etree.fromstring(await resp.read())
        assert _ads(root) == []
        err = root.find("v:Error", NS)
        assert err is not None and "[ERRORCODE]" in err.text
        resp = await client.get("/decide?" + query)
        assert resp.status == 200, (query, await resp.text())
        data = await resp.json()
        assert data["break"]["pod_duration_ms"] == 0 and data["pod"]["ads"] == []
    resp = await client.get("/vast?pod_duration=-0.001")
    assert resp.status == 400 and (await resp.json())["field"] == "pod_duration"


async def test_creative_ids_are_stable(make_client: ClientFactory) -> None:
    a = await make_client(seed=1)
    b = await make_client(seed=2)
    ids_a = [
        c.get("id") for c in (await _vast(a, "pod_duration=120")).iterfind(".//v:Creative", NS)
    ]
    ids_b = [
        c.get("id") for c in (await _vast(b, "pod_duration=120")).iterfind(".//v:Creative", NS)
    ]
    assert ids_a and ids_a == ids_b
    sid_a = [e.text for e in (await _vast(a, "pod_duration=120")).iterfind(".//v:AdServingId", NS)]
    sid_b = [e.text for e in (await _vast(b, "pod_duration=120")).iterfind(".//v:AdServingId", NS)]
    assert set(sid_a).isdisjoint(sid_b)


BAD_INPUT = [
    ("pod_duration=abc", "pod_duration"),
    # what Python's float()/int() take but no client means: underscores, signs written as
    # '+' (a space once decoded), padding, exponents, other scripts' digits
    ("pod_duration=1_20", "pod_duration"),
    ("pod_duration=+120", "pod_duration"),
    ("pod_duration=%20120", "pod_duration"),
    ("pod_duration=12e1", "pod_duration"),
    ("pod_duration=%D9%A1%D9%A2%D9%A0", "pod_duration"),
    ("max_ads=%D9%A3", "max_ads"),
    ("avail=1_0", "avail"),
    ("required_durations=15,%E3%80%8030", "required_durations"),
    ("session=abc%0A", "session"),
    ("device_id=d1%0A", "device_id"),
    ("required_durations=%D9%A1%D9%A5", "required_durations"),
    ("pod_duration=-5", "pod_duration"),
    ("pod_duration=1e9", "pod_duration"),
    ("pod_duration=nan", "pod_duration"),
    ("poddur=inf", "poddur"),
    ("max_ads=0", "max_ads"),
    ("max_ads=2.5", "max_ads"),
    ("maxseq=999", "maxseq"),
    ("min_ad_duration=x", "min_ad_duration"),
    ("max_ad_duration=0", "max_ad_duration"),
    ("min_ad_duration=30&max_ad_duration=15", "min_ad_duration"),
    ("required_durations=15,abc", "required_durations"),
    ("rqddurs=0", "rqddurs"),
    ("break=side", "break"),
    ("break=7", "break"),
    ("avail=-1", "avail"),
    ("vast=5.0", "vast"),
    ("vast=1.0", "vast"),
    ("device_type=fridge", "device_type"),
    ("platform=amiga", "platform"),
    ("country=USA", "country"),
    ("country=CA&region=US-NY", "region"),  # a region of another country
    ("rating=R", "rating"),
    ("live=maybe", "live"),
    ("lmt=2", "lmt"),
    ("debug=yes", "debug"),
    ("language=english!", "language"),
    ("device_id=" + "x" * 300, "device_id"),
    ("genre=" + ",".join(["g"] * 40), "genre"),
    ("session=%00bad", "session"),
    ("device_ip=203.0.113.999", "device_ip"),
    ("device_ua=Roku%0A", "device_ua"),
    ("battr=abc", "battr"),
    ("battr=13,x", "battr"),
    ("battr=0", "battr"),
    ("battr=1001", "battr"),
    ("battr=-1", "battr"),
    ("battr=2.5", "battr"),
    ("battr=1_3", "battr"),
    ("battr=%D9%A1%D9%A3", "battr"),
    ("battr=" + ",".join(["9"] * 40), "battr"),
]


@pytest.mark.parametrize(("query", "field"), BAD_INPUT)
async def test_bad_input_is_400_naming_the_field(client: Any, query: str, field: str) -> None:
    for path in ("/vast", "/decide"):
        resp = await client.get(f"{path}?{query}")
        assert resp.status == 400, (path, query)
        body = await resp.json()
        assert body["field"] == field and body["why"]


BAD_VMAP = [
    ("content_duration=abc", "content_duration"),
    ("content_duration=6_00", "content_duration"),
    ("content_duration=600&cue_points=1_00", "cue_points"),
    ("content_duration=600&cue_points=%D9%A1%D9%A0%D9%A0", "cue_points"),
    ("content_duration=600&cue_points=1_0%25", "cue_points"),
    ("content_duration=600&cue_points=00:%D9%A1%D9%A0:00", "cue_points"),
    ("content_duration=600&cue_points=%C2%A0300", "cue_points"),
    # carried into every break's ad tag: what /vast would refuse is refused here
    ("content_duration=600&min_ad_duration=abc", "min_ad_duration"),
    ("content_duration=600&max_ad_duration=0", "max_ad_duration"),
    ("content_duration=600&min_ad_duration=30&max_ad_duration=15", "min_ad_duration"),
    ("content_duration=600&required_durations=abc", "required_durations"),
    ("content_duration=600&rqddurs=0", "rqddurs"),
    ("content_duration=600&vast=9.9", "vast"),
    ("content_duration=600&session=abc%0A", "session"),
    ("cue_points=10,abc", "cue_points"),
    ("cue_points=50%", "cue_points"),
    ("content_duration=600&cue_points=700", "cue_points"),
    # VMAP's timeOffset is HH:MM:SS[.mmm]: nothing past 99:59:59.999, in any form
    ("cue_points=999:59:59", "cue_points"),
    ("cue_points=100:00:00", "cue_points"),
    ("cue_points=360000", "cue_points"),
    ("cue_points=359999.9996", "cue_points"),  # written as 100:00:00.000
    ("cue_points=00:10:00%0A", "cue_points"),
    ("content_duration=360000", "content_duration"),
    ("content_duration=600&cue_points=599.9996", "cue_points"),  # 00:10:00.000, the end
    ("midroll_interval=360000&content_duration=600", "midroll_interval"),
    ("midroll_interval=300", "midroll_interval"),
    ("content_duration=600&midroll_interval=5", "midroll_interval"),
    ("preroll=yes", "preroll"),
    ("inline=2", "inline"),
    ("midroll_duration=-1", "midroll_duration"),
    ("device_type=toaster", "device_type"),
    ("country=CA&region=US-NY", "region"),  # a region of another country
    ("content_duration=600&battr=0", "battr"),
]


@pytest.mark.parametrize(("query", "field"), BAD_VMAP)
async def test_bad_vmap_input_is_400(client: Any, query: str, field: str) -> None:
    resp = await client.get(f"/vmap?{query}")
    assert resp.status == 400
    assert (await resp.json())["field"] == field


async def test_xml_is_compressed_for_a_caller_that_accepts_it(client: Any) -> None:
    """A 4-ad pod is ~31 KB of XML, more than TCP's first window: compressed (~4 KB) it
    reaches a stitcher or a player a round trip or two sooner. Only for a caller whose
    ``Accept-Encoding`` takes it, and not for a small answer (a no-fill)."""
    import gzip

    pod = "/vast?pod_duration=120&max_ads=4&device_id=gz"
    resp = await client.get(pod, headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Vary"] == "Accept-Encoding"
    # a player page's cross-origin fetch: both headers it varies on (CORS replaced it)
    cors = await client.get(
        pod,
        headers={"Accept-Encoding": "gzip", "Origin": "https://p.example"},
        auto_decompress=False,
    )
    assert cors.headers["Content-Encoding"] == "gzip"
    assert cors.headers.getall("Vary") == ["Accept-Encoding, Origin"]
    raw = await resp.read()
    xml = gzip.decompress(raw)
    assert len(raw) * 4 < len(xml)
    assert etree.fromstring(xml).findall("{*}Ad")
    plain = await client.get(pod, skip_auto_headers=["Accept-Encoding"])
    assert "Content-Encoding" not in plain.headers
    assert etree.fromstring(await plain.read()).findall("{*}Ad")
    vmap = await client.get(
        "/vmap?content_duration=1800&cue_points=600&inline=1",
        headers={"Accept-Encoding": "GZIP, deflate"},
        auto_decompress=False,
    )
    assert vmap.headers["Content-Encoding"] in ("gzip", "deflate")
    empty = await client.get("/vast?pod_duration=1", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in empty.headers  # a no-fill: too small to gain
    # a weight of 0 refuses a coding (aiohttp's own choice went by the name alone)
    for header, coding in (("gzip;q=0", None), ("gzip;q=0, deflate", "deflate")):
        resp = await client.get(pod, headers={"Accept-Encoding": header}, auto_decompress=False)
        assert resp.headers.get("Content-Encoding") == coding, header


async def test_bad_device_ip_header_is_400(client: Any) -> None:
    resp = await client.get("/vast", headers={"X-Device-IP": "not-an-ip"})
    assert resp.status == 400
    assert (await resp.json())["field"] == "X-Device-IP"


@pytest.mark.parametrize(
    "xff", ["203.0.113.7:51234", "unknown", "[2001:db8::1]:443", ", 203.0.113.7", "_hidden"]
)
async def test_forwarded_for_never_fails_a_request(client: Any, xff: str) -> None:
    """X-Forwarded-For is what the proxies wrote, read leniently; X-Device-IP wins."""
    for headers in (
        {"X-Device-IP": "198.51.100.4", "X-Forwarded-For": xff},
        {"X-Forwarded-For": xff},
    ):
        for path in ("/vast", "/decide", "/vmap"):
            resp = await client.get(path, headers=headers)
            assert resp.status == 200, (path, headers, await resp.text())
    resp = await client.post(
        "/openrtb2/pod",
        data=json.dumps({"id": "r", "imp": [{"id": "1", "video": {"poddur": 30}}]}),
        headers={"X-Forwarded-For": xff},
    )
    assert resp.status == 200


async def test_device_ip_and_ua_parameters_are_read_and_carried_into_vmap_tags(
    client: Any,
) -> None:
    """An SSAI stitcher without X-Device-* headers (MediaTailor) passes the device's IP and
    UA as parameters: a bad one is a 400 on every path, and the VMAP's ad tags carry them."""
    for path in ("/vast", "/decide", "/vmap"):
        resp = await client.get(f"{path}?device_ip=bad")
        assert resp.status == 400 and (await resp.json())["field"] == "device_ip", path
    resp = await client.get(
        "/vmap?device_ip=2001:db8::7&device_ua=Roku%2FDVP%2012.0",
        headers={"X-Forwarded-For": "203.0.113.7", "User-Agent": "MediaTailor/1"},
    )
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    tags = [t.text.strip() for t in root.iterfind(".//vmap:AdTagURI", NS)]
    assert tags
    for tag in tags:
        q = parse_qs(urlsplit(tag).query)
        assert q["device_ip"] == ["2001:db8::7"] and q["device_ua"] == ["Roku/DVP 12.0"]


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ("", {"device_id", "segments"}),
        ("&gdpr=1", set()),  # the GDPR applies, no consent string
        ("&lmt=1", set()),
        ("&us_privacy=1YYN", {"device_id"}),  # an opt-out of sale: no segments
    ],
)
async def test_vmap_tags_carry_no_ifa_or_segments_the_consent_forbids(
    client: Any, extra: str, kept: set[str]
) -> None:
    """A VMAP under ``gdpr=1`` without consent repeated the viewer's IFA and segments in
    every break's ad tag, to the player, the stitcher and their logs, though the /vast
    behind the tag may use neither. They are left out where the consent (or ``lmt``)
    forbids them, and that /vast decides the same either way."""
    from vastserver.catalog.model import AdRules
    from vastserver.params import client_info, parse_vast_request

    ifa, segments = "6D92078A-8246-4BA4-AE5B-76104861E7DC", "sports_fans,auto_intenders"
    query = f"content_duration=600&cue_points=300&session=s-1&device_id={ifa}&segments={segments}"
    resp = await client.get(f"/vmap?{query}&device_ip=198.51.100.23{extra}")
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    tags = [t.text.strip() for t in root.iterfind(".//vmap:AdTagURI", NS)]
    assert len(tags) == 3
    device = client_info({}, "127.0.0.1")
    for tag in tags:
        q = {k: v[0] for k, v in parse_qs(urlsplit(tag).query).items()}
        assert {"device_id", "segments"} & q.keys() == kept
        assert q["device_ip"] == "198.51.100.23" and q["session"] == "s-1"
        full = {**q, "device_id": ifa, "segments": segments}
        assert parse_vast_request(q, device, AdRules()) == parse_vast_request(
            full, device, AdRules()
        )


async def test_non_utf8_user_agents_are_served_and_logged(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A header byte that is not UTF-8 reaches us as a lone surrogate (aiohttp decodes with
    surrogateescape); it must neither fail the decision nor the event log. With an
    experiment, the arm is picked from a hash of the IP + UA viewer key."""
    client: Any = await make_client(event_log=str(tmp_path), experiment="exp1", arms="a:50,b:50")
    status, body = await raw_request(
        client,
        b"GET /vast?pod_duration=60 HTTP/1.1\r\n"
        b"User-Agent: Roku\xff/9\r\nX-Device-User-Agent: Roku\xfe/10\r\n",
    )
    assert status == 200, body[:200]
    assert _ads(etree.fromstring(body))
    await client.close()  # flushes the event log
    decisions = [r for r in read_events([tmp_path]) if r["type"] == "decision"]
    assert len(decisions) == 1
    assert decisions[0]["filled"] and decisions[0]["arm"] in ("a", "b")


async def test_badv_takes_domain_names_of_any_legal_length(client: Any) -> None:
    """A domain name may be 253 characters (OpenRTB's badv takes them): /vast too."""
    label = "a" * 63
    longest = f"{label}.{label}.{label}.{'b' * 57}.com"
    assert len(longest) == 253
    for path in ("/vast", "/decide", "/vmap"):
        resp = await client.get(f"{path}?badv=ads.example.{'x' * 60}.com,{longest}")
        assert resp.status == 200, (path, await resp.text())
        resp = await client.get(f"{path}?badv=x{longest}")
        assert resp.status == 400 and (await resp.json())["field"] == "badv"
    # other lists keep their 64-character entries
    resp = await client.get(f"/vast?bcat={'c' * 65}")
    assert resp.status == 400 and (await resp.json())["field"] == "bcat"


async def test_battr_is_carried_into_every_vmap_tag(client: Any) -> None:
    """``battr`` (blocked AdCOM creative attributes) goes to each break's ``/vast`` as the
    other targeting does, and an ``inline=1`` VMAP's pods are decided with it."""
    resp = await client.get("/vmap?content_duration=1800&cue_points=900&battr=13,%209")
    assert resp.status == 200, await resp.text()
    root = etree.fromstring(await resp.read())
    tags = [parse_qs(urlsplit(u).query) for u in _urls(root, ".//vmap:AdTagURI")]
    assert len(tags) == 3 and all(t["battr"] == ["13, 9"] for t in tags)
    for tag in tags:
        query = {k: v[0] for k, v in tag.items()}
        assert (await client.get("/vast", params=query)).status == 200


async def test_an_inline_vmap_is_decided_with_its_battr(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The breaks of an ``inline=1`` VMAP are decided as their tags would be: with its
    ``battr``, no SIMID, VPAID or declared-13 ad in any break."""
    from tests.test_openrtb import ATTR_SHOW, INTERACTIVE, attributes_catalog

    client: Any = await make_client(catalog=str(attributes_catalog(tmp_path)))
    query = f"content_duration=600&series={ATTR_SHOW}&rating=TV-14&device_type=desktop&inline=1"

    async def served(extra: str) -> set[str]:
        resp = await client.get(f"/vmap?{query}{extra}")
        assert resp.status == 200, await resp.text()
        root = etree.fromstring(await resp.read())
        return {str(c.get("id")) for c in root.iter("{*}Creative")}

    assert await served("") & INTERACTIVE
    assert not await served("&battr=13") & INTERACTIVE


async def test_unknown_params_ignored_and_long_query_refused(client: Any) -> None:
    assert (await client.get("/vast?foo=bar&utm=1")).status == 200
    assert (await client.get("/vast?x=" + "a" * 5000)).status == 414
    assert (await client.get("/vast?x=" + "a" * 9000)).status == 400
    many = "&".join(f"p{i}=1" for i in range(700))
    assert (await client.get("/vast?" + many)).status == 414


def _urls(root: etree._Element, xpath: str) -> list[str]:
    return [(e.text or "").strip() for e in root.iterfind(xpath, NS)]


def _local(url: str) -> str:
    """Path and query of one of our absolute URLs, macros expanded as a player would."""
    parts = urlsplit(expand_macros(url))
    return f"{parts.path}?{parts.query}"


async def test_base64_padded_ids_are_served(client: Any) -> None:
    """A session or device id in base64 ends in ``=`` padding: it was a 400, a whole avail
    unfilled. It is served, percent-encoded wherever it is put into a URL, and its beacons
    verify."""
    session, ifa = "YWJjZA==", "QUJDRA=="
    resp = await client.get(f"/decide?pod_duration=60&session={session}&device_id={ifa}")
    assert resp.status == 200, await resp.text()
    root = await _vast(client, f"pod_duration=60&session={session}&device_id={ifa}&avail=1")
    imp = _urls(root, ".//v:Impression")[0]
    assert (await client.get(_local(imp))).status == 204
    resp = await client.get(f"/vmap?content_duration=600&cue_points=300&session={session}")
    assert resp.status == 200, await resp.text()
    vmap = etree.fromstring(await resp.read())
    for key, xpath in (("session", ".//vmap:AdTagURI"), ("s", ".//vmap:Tracking")):
        for url in _urls(vmap, xpath):
            assert f"{key}=YWJjZA%3D%3D&" in url, url
            assert parse_qs(urlsplit(url).query)[key] == [session]
    tracking = _urls(vmap, ".//vmap:Tracking")[0]
    assert (await client.get(_local(tracking))).status == 204
    assert (await client.get("/vast?session=YW%26Jj")).status == 400  # still a token


async def test_beacons_verify_tokens(client: Any, clock: FakeClock) -> None:
    root = await _vast(client, "pod_duration=60")
    imp = _urls(root, ".//v:Impression")[0]
    assert imp.startswith("https://ads.example.com/t/impression?tk=")
    assert (await client.get(_local(imp))).status == 204
    quartile = next(
        e.text.strip()
        for e in root.iterfind(".//v:Tracking", NS)
        if e.get("event") == "firstQuartile"
    )
    assert (await client.get(_local(quartile))).status == 204
    err = _urls(root, ".//v:InLine/v:Error")[0]
    assert "ec=[ERRORCODE]" in err
    assert (await client.get(_local(err))).status == 204

    tk = parse_qs(urlsplit(imp).query)["tk"][0]
    payload, kid, sig = tk.split(".")
    forged = f"{payload}.{kid}.{'A' * len(sig)}"
    assert (await client.get(f"/t/impression?tk={forged}")).status == 403
    assert (await client.get("/t/impression?tk=garbage")).status == 400
    assert (await client.get("/t/impression")).status == 400
    assert (await client.get(f"/t/bogus?tk={tk}")).status == 400
    clock.now += timedelta(hours=25)
    assert (await client.get(f"/t/impression?tk={tk}")).status == 403

    metrics = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="impression",result="ok"} 1.0' in metrics
    assert 'vastserver_beacons_total{event="impression",result="bad_signature"} 1.0' in metrics
    assert 'vastserver_beacons_total{event="impression",result="expired"} 1.0' in metrics


async def test_no_fill_error_beacon_accepted(client: Any) -> None:
    root = await _vast(client, "pod_duration=2")
    url = root.find("v:Error", NS).text.strip()
    assert (await client.get(_local(url))).status == 204


async def test_click_redirects_only_to_signed_target(client: Any) -> None:
    root = await _vast(client, "pod_duration=120&max_ads=4")
    clicks = _urls(root, ".//v:ClickThrough")
    assert clicks
    for url in clicks:
        assert url.startswith("https://ads.example.com/c?tk=")
        resp = await client.get(_local(url) + "&url=https://evil.example", allow_redirects=False)
        assert resp.status == 302
        target = resp.headers["Location"]
        assert target.startswith("https://") and "evil" not in target
    assert (await client.get("/c?url=https://evil.example", allow_redirects=False)).status == 400


async def test_ssai_headers_set_device(client: Any) -> None:
    resp = await client.get(
        "/decide?pod_duration=30",
        headers={"X-Device-IP": "203.0.113.9", "X-Device-User-Agent": "Roku/DVP-12.0"},
    )
    assert resp.status == 200


async def test_debug_extension_explains(client: Any) -> None:
    root = await _vast(client, "pod_duration=60&debug=1")
    ext = root.find(".//v:Extension[@type='vastserver-debug']/v:Explanation", NS)
    assert ext is not None
    data = json.loads(ext.text)
    selected = [c for c in data["candidates"] if c["selected"]]
    assert len(selected) == len(_ads(root))
    dropped = [c for c in data["candidates"] if not c["selected"]]
    assert all(c["reason"] and c["stage"] for c in dropped)


async def test_decide_json_matches_reasons(client: Any) -> None:
    data = await (await client.get("/decide?pod_duration=30&max_ads=1")).json()
    assert data["break"]["pod_duration_ms"] == 30000
    assert len(data["pod"]["ads"]) <= 1
    from vastserver.pipeline.reasons import Reason

    reasons = {c["reason"] for c in data["candidates"] if c["reason"]}
    assert reasons <= {r.value for r in Reason}


async def test_vmap_tags(client: Any) -> None:
    resp = await client.get("/vmap?content_duration=1800&cue_points=600,50%,00:25:00.500")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/xml; charset=utf-8"
    root = etree.fromstring(await resp.read())
    breaks = root.findall("vmap:AdBreak", NS)
    offsets = [b.get("timeOffset") for b in breaks]
    assert offsets == ["start", "00:10:00.000", "00:15:00.000", "00:25:00.500", "end"]
    ids = [b.get("breakId") for b in breaks]
    assert len(set(ids)) == len(ids)
    for n, b in enumerate(breaks):
        assert b.get("breakType") == "linear"
        tag = b.find("vmap:AdSource/vmap:AdTagURI", NS)
        assert tag.get("templateType") == "vast3"
        q = parse_qs(urlsplit(tag.text.strip()).query)
        assert q["avail"] == [str(n)] and q["session"] and q["pod_duration"]
        assert q["break"][0] in ("pre", "mid", "post")
        events = [t.get("event") for t in b.iterfind("vmap:TrackingEvents/vmap:Tracking", NS)]
        assert events == ["breakStart", "breakEnd", "error"]


@pytest.mark.parametrize(
    ("query", "template_type"),
    [("&vast=2.0", "vast2"), ("&vast=3.0", "vast3"), ("&vast=4.1", "vast3"), ("", "vast3")],
)
async def test_vmap_template_type_follows_the_tags_vast_version(
    make_client: ClientFactory, query: str, template_type: str
) -> None:
    """VMAP 1.0 names an ad tag's answer vast1, vast2 or vast3 (nothing newer: 4.x is
    vast3); tags answering VAST 2.0 say vast2, and so do those an inline VMAP leaves for
    the player at its deadline."""
    client: Any = await make_client(deadline_ms=60)
    service = client.server.app[RUNTIME].service
    decide = service.decide

    async def slow_decide(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0.04)  # two decisions fill the deadline
        return await decide(*args, **kw)

    service.decide = slow_decide
    for extra in ("&cue_points=600", "&midroll_interval=600&inline=1"):
        resp = await client.get(f"/vmap?content_duration=3600{extra}{query}")
        assert resp.status == 200
        root = etree.fromstring(await resp.read())
        tags = root.findall("vmap:AdBreak/vmap:AdSource/vmap:AdTagURI", NS)
        assert tags  # all 3 breaks; the 7 of the inline one but the first decided
        assert {t.get("templateType") for t in tags} == {template_type}


@pytest.fixture(scope="module")
def many_ads_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough advertisers for a full pod of 4 in 120 s (the demo catalog fills 2)."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    path.write_text(json.dumps(generate_catalog(400, seed=7, now=FIXED_NOW)))
    return path


async def _served(client: Any) -> int:
    """Ads reserved so far: the store's served counters, one per ad a decision reserved."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    rows = await (await client.get("/admin/line-items", headers=auth)).json()
    return sum(int(r["served"]) for r in rows)


def _any_ns_ads(root: etree._Element) -> list[etree._Element]:
    return root.findall("{*}Ad")  # 2.0 and 3.0 have no namespace


@pytest.mark.parametrize(("version", "n_ads"), [("2.0", 1), ("3.0", 4), ("4.2", 4)])
async def test_a_vast_2_0_break_holds_the_one_ad_its_player_plays(
    make_client: ClientFactory, many_ads_catalog: Path, version: str, n_ads: int
) -> None:
    """VAST 2.0 has no ad pods (Ad@sequence came with 3.0) and its players play one ad of a
    response. A 2.0 request for a pod of 4 used to answer 4 <Ad>s, all 4 reserved against
    caps and budgets, 3 never played. Now its break allows 1 ad (the explanation's break
    says max_ads 1), the one max_ads=1 gets, and only it is reserved; 3.0 on keep pods."""
    query = "max_ads=4&pod_duration=120&device_id=v2pod&debug=1"
    client: Any = await make_client(catalog=str(many_ads_catalog))
    root = await _vast(client, f"vast={version}&{query}")
    ads = _any_ns_ads(root)
    assert len(ads) == n_ads
    assert await _served(client) == n_ads
    explanation = root.find(".//{*}Extension[@type='vastserver-debug']/{*}Explanation")
    assert explanation is not None
    decision = json.loads(str(explanation.text))
    assert decision["break"]["max_ads"] == n_ads
    assert decision["break"]["vast_version"] == version  # why the one slot, for 2.0
    assert len(decision["pod"]["ads"]) == n_ads
    if version == "2.0":  # the best single ad, as a pod of one (on a fresh store) gets it
        single: Any = await make_client(catalog=str(many_ads_catalog))
        one = await _vast(single, f"vast=3.0&{query.replace('max_ads=4', 'max_ads=1')}")
        assert [a.get("id") for a in ads] == [a.get("id") for a in _any_ns_ads(one)]


async def test_a_vmap_asking_for_vast_2_0_gets_breaks_of_one_ad(
    make_client: ClientFactory, many_ads_catalog: Path
) -> None:
    """A VMAP whose tags ask for VAST 2.0: each tag's /vast answers one ad, and an inline
    VMAP's pods hold one ad each, reserved alone (3.0 inline pods hold more). The 2.0 tags
    used to carry the breaks' planned max_ads (2 and 4 here), which their /vast cut to 1:
    now they ask for the one ad they get; 4.2 tags keep the planned pods."""
    query = "content_duration=1800&cue_points=600&postroll=0&device_id=v2vmap&vast=2.0"
    client: Any = await make_client(catalog=str(many_ads_catalog))
    rules = client.server.app[RUNTIME].service.snapshot.catalog.rules_for(None)
    planned = [str(rules.for_position(p).max_ads) for p in (BreakPosition.PRE, BreakPosition.MID)]
    assert planned == ["2", "4"]  # pods of several ads, as 4.2 tags ask for them
    tags: dict[str, list[str]] = {}
    for version in ("4.2", "2.0"):
        vmap = await client.get(f"/vmap?{query.replace('2.0', version)}")
        root = etree.fromstring(await vmap.read())
        tags[version] = _urls(root, "vmap:AdBreak/vmap:AdSource/vmap:AdTagURI")
    max_ads = {v: [parse_qs(urlsplit(t).query)["max_ads"] for t in ts] for v, ts in tags.items()}
    assert max_ads == {"4.2": [[n] for n in planned], "2.0": [["1"], ["1"]]}
    for tag in tags["2.0"]:
        assert len(_any_ns_ads(await _vast(client, _local(tag)))) == 1
    assert await _served(client) == 2
    for version, most in (("2.0", 1), ("3.0", 8)):
        inline: Any = await make_client(catalog=str(many_ads_catalog))
        resp = await inline.get(f"/vmap?{query.replace('2.0', version)}&inline=1")
        root = etree.fromstring(await resp.read())
        pods = [len(v.findall("{*}Ad")) for v in root.iterfind(".//vmap:VASTAdData/{*}VAST", NS)]
        assert len(pods) == 2 and all(1 <= n <= most for n in pods)
        assert await _served(inline) == sum(pods)
        if version == "3.0":
            assert max(pods) > 1


async def _decided(client: Any, query: str) -> list[tuple[str, str]]:
    """The (line item, creative) pairs a ``/decide`` pod holds."""
    resp = await client.get(f"/decide?{query}")
    assert resp.status == 200, await resp.text()
    ads = (await resp.json())["pod"]["ads"]
    return [(a["line_item_id"], a["creative_id"]) for a in ads]


async def test_decide_test_1_previews_without_reserving(client: Any) -> None:
    """``/decide`` was always a real decision: previewing what a viewer would get reserved
    that viewer's caps, budgets and session history. ``test=1`` decides it as an OpenRTB
    test request: the same pod every time, nothing reserved; without it the first call
    reserves its pod and the second, for the same viewer's session, gets another."""
    query = "pod_duration=60&device_id=preview-viewer&session=preview-session"
    preview = await _decided(client, f"{query}&test=1")
    assert preview, "a preview is decided as usual"
    assert await _decided(client, f"{query}&test=true") == preview
    assert await _served(client) == 0
    real = await _decided(client, query)
    assert real == preview  # what the preview said the viewer would get
    assert await _served(client) == len(real)
    assert await _decided(client, query) != real  # the real one left its mark
    assert await _decided(client, f"{query}&test=0") != real  # test=0: a real decision


async def test_an_explanation_says_whether_it_was_a_preview(client: Any) -> None:
    """``/decide?test=1`` answered the same JSON as a real decision: nothing in it told a
    preview (nothing reserved) from a decision that reserved its ads. ``test`` says which,
    in ``/decide`` and in the ``debug=1`` explanation a VAST carries."""
    query = "pod_duration=60&device_id=explained-preview"
    for flag, preview in (("&test=1", True), ("&test=0", False), ("", False)):
        resp = await client.get(f"/decide?{query}{flag}")
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["test"] is preview, flag
        root = await _vast(client, f"{query}{flag}&debug=1")
        explanation = root.find(".//v:Extension[@type='vastserver-debug']/v:Explanation", NS)
        assert explanation is not None, flag
        assert json.loads(str(explanation.text))["test"] is preview, flag


async def test_vast_test_1_beacons_are_answered_but_not_counted(client: Any) -> None:
    """A ``/vast?test=1`` pod renders as usual, but reserves nothing, and its impression
    beacon answers 204 counted as ``test``: no delivered impression."""
    root = await _vast(client, "pod_duration=60&device_id=preview-vast&test=1")
    ads = _ads(root)
    assert ads
    for ad in ads:
        imp = _urls(ad, ".//v:Impression")[0]
        assert (await client.get(_local(imp))).status == 204
    assert await _served(client) == 0
    auth = {"Authorization": f"Bearer {ADMIN}"}
    rows = await (await client.get("/admin/line-items", headers=auth)).json()
    assert sum(int(r["delivered_impressions"]) for r in rows) == 0
    metrics = await (await client.get("/metrics")).text()
    assert f'vastserver_beacons_total{{event="impression",result="test"}} {len(ads)}.0' in metrics
    assert 'vastserver_beacons_total{event="impression",result="ok"}' not in metrics


async def test_vmap_test_1_tags_carry_it_and_inline_pods_reserve_nothing(
    make_client: ClientFactory,
) -> None:
    """``/vmap?test=1``: every ad tag asks its ``/vast`` for a test decision, and an inline
    VMAP's pods are decided as test requests: a preview schedule reserves nothing."""
    query = "content_duration=1800&cue_points=600&device_id=preview-vmap&test=1"
    client: Any = await make_client()
    root = etree.fromstring(await (await client.get(f"/vmap?{query}")).read())
    tags = _urls(root, "vmap:AdBreak/vmap:AdSource/vmap:AdTagURI")
    assert len(tags) == 3
    for tag in tags:
        assert parse_qs(urlsplit(tag).query)["test"] == ["1"]
        await _vast(client, _local(tag))
    assert await _served(client) == 0
    inline: Any = await make_client()
    root = etree.fromstring(await (await inline.get(f"/vmap?{query}&inline=1")).read())
    pods = [len(v.findall("{*}Ad")) for v in root.iterfind(".//vmap:VASTAdData/{*}VAST", NS)]
    assert len(pods) == 3 and sum(pods) > 0
    assert await _served(inline) == 0
    real = etree.fromstring(await (await inline.get(f"/vmap?{query[:-7]}&inline=1")).read())
    assert real.find(".//vmap:VASTAdData", NS) is not None
    assert await _served(inline) > 0  # without test=1 the same schedule reserves


def _decision_series(text: str) -> dict[str, float]:
    """The samples of the metrics that count decisions, by their exposition line's name and
    labels; the zero-valued ones left out (a label set bound up front reads 0)."""
    names = (
        "vastserver_pods_total",
        "vastserver_ads_per_pod_count",
        "vastserver_pod_seconds_requested_total",
        "vastserver_pod_seconds_filled_total",
        "vastserver_rejections_total",
        "vastserver_model_score_count",
        "vastserver_experiment_decisions_total",
    )
    out = {}
    for line in text.splitlines():
        if line.startswith(names):
            series, value = line.rsplit(" ", 1)
            if float(value):
                out[series] = float(value)
    return out


async def test_previews_count_apart_from_the_decision_metrics(
    make_client: ClientFactory,
) -> None:
    """A preview counted as a viewer's decision in ``vastserver_pods_total`` and the other
    decision metrics, so ad-ops previewing on a live server moved the fill rate and the
    delivery the dashboards show. It now counts in ``vastserver_previews_total{endpoint}``
    alone (once a request, an inline VMAP's breaks together); every request still counts
    in ``vastserver_requests_total``. The same requests without ``test=1`` count as ever."""
    client: Any = await make_client(experiment="exp1", arms="a:50,b:50")
    previews = (
        "/vast?pod_duration=60&device_id=metrics-preview&test=1",
        "/decide?pod_duration=60&device_id=metrics-preview&test=1",
        "/vmap?content_duration=1800&cue_points=600&device_id=metrics-preview&inline=1&test=1",
    )
    for path in previews:
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        assert b"<Ad " in await resp.read() or path.startswith("/decide")
    text = await (await client.get("/metrics")).text()
    assert _decision_series(text) == {}
    for endpoint in ("vast", "decide", "vmap"):
        assert f'vastserver_previews_total{{endpoint="{endpoint}"}} 1.0' in text
        assert f'vastserver_requests_total{{endpoint="{endpoint}",outcome="2xx"}} 1.0' in text
    for path in previews:  # the same, for real
        assert (await client.get(path.replace("&test=1", ""))).status == 200
    text = await (await client.get("/metrics")).text()
    counted = _decision_series(text)
    pods = sum(v for k, v in counted.items() if k.startswith("vastserver_pods_total"))
    assert pods == 1 + 1 + 3  # the VMAP's 3 breaks
    assert counted["vastserver_ads_per_pod_count"] == 5
    assert any(k.startswith("vastserver_rejections_total") for k in counted)
    assert any(k.startswith("vastserver_experiment_decisions_total") for k in counted)
    for endpoint in ("vast", "decide", "vmap"):
        assert f'vastserver_previews_total{{endpoint="{endpoint}"}} 1.0' in text


async def _inline_breaks(client: Any, query: str) -> list[list[str]]:
    """The creatives of each inline pod of ``/vmap?query``, in play order."""
    resp = await client.get(f"/vmap?{query}")
    assert resp.status == 200, await resp.text()
    root = etree.fromstring(await resp.read())
    return [
        [str(c.get("id")) for c in v.iterfind(".//{*}Creative")]
        for v in root.iterfind(".//vmap:VASTAdData/{*}VAST", NS)
    ]


@pytest.mark.parametrize("capped", [False, True], ids=["separation", "line-item-cap"])
async def test_an_inline_vmap_preview_separates_its_breaks_as_the_real_one(
    make_client: ClientFactory, tmp_path: Path, capped: bool
) -> None:
    """A real inline VMAP's breaks each leave their ads in the session's history and their
    reservations in the counters before the next is decided: a creative is not shown again
    within the separation window, nor a line item past its cap. A preview (``test=1``)
    writes neither, and its breaks repeated the creative (or the capped line item's other
    creative) of the break before. Its breaks now see what its earlier ones chose, in the
    request alone: the preview is the real schedule, and the store is left untouched."""
    cat = json.loads(DEMO_CATALOG.read_text())
    if capped:  # the house promo, two creatives: once a day (separation alone allows both)
        (house,) = (li for li in cat["line_items"] if li["id"] == "li-house-promo")
        house["frequency_caps"] = [{"scope": "line_item", "max": 1, "window": "1d"}]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(cat))
    query = "content_duration=1800&cue_points=600,1200&device_id=sep-viewer&session=sep&inline=1"
    preview_client: Any = await make_client(catalog=str(path))
    preview = await _inline_breaks(preview_client, f"{query}&test=1")
    real = await _inline_breaks(await make_client(catalog=str(path)), query)
    assert len(real) == 4 and preview == real
    shown = [c for pod in preview for c in pod]
    if capped:
        assert sum(c.startswith("cr-house-promo") for c in shown) == 1
    else:
        assert len(shown) == len(set(shown))  # none again within 3 breaks (30 minutes)
    # nothing reached the store: no reservation, no history, no cap counted
    assert await _served(preview_client) == 0
    assert await _inline_breaks(preview_client, query) == real


async def test_a_preview_break_that_selects_again_keeps_both_counts(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A break whose kept candidates the counters all refuse selects again and reads the
    new ones' counters (the refill). A budget counter read then holds the store's count,
    to which the preview's earlier breaks add theirs: the preview kept only its own and
    showed a line item whose budget the real schedule had spent."""
    cat = json.loads(DEMO_CATALOG.read_text())
    cat["advertisers"] = [a for a in cat["advertisers"] if a["id"] == "adv-streamly"]
    cat["advertisers"][0]["competitive_category"] = None
    cat["campaigns"] = [c for c in cat["campaigns"] if c["advertiser_id"] == "adv-streamly"]
    (orig,) = (c for c in cat["creatives"] if c["id"] == "cr-streamly-originals-30")
    cat["creatives"], cat["line_items"] = [], []
    for n, price in enumerate([40.0, 39.0, 38.0, 10.0], start=1):
        cr = json.loads(json.dumps(orig))
        cr["id"] = f"cr-{n}"
        for r in cr["renditions"]:
            r["url"] = r["url"].replace(".mp4", f"-{n}.mp4")
        cat["creatives"].append(cr)
        li: dict[str, Any] = {
            "id": f"L{n}",
            "campaign_id": "cmp-streamly-originals",
            "name": f"L{n}",
            "tier": "standard",
            "creative_ids": [cr["id"]],
            "price": price,
        }
        if n < 4:  # the three a group keeps: capped once a day
            li["frequency_caps"] = [{"scope": "line_item", "max": 1, "window": "1d"}]
        else:  # left out of the first selection: a budget of 2, one already reserved below
            li["pacing"] = {"budget": {"impressions": 2}}
        cat["line_items"].append(li)
    cat.pop("blocklist", None)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(cat))
    client: Any = await make_client(catalog=str(path), separation_breaks=0, separation_minutes=0)

    async def pod(viewer: str) -> list[str]:
        resp = await client.get(f"/vast?pod_duration=30&max_ads=1&device_id={viewer}")
        return [str(c.get("id")) for c in etree.fromstring(await resp.read()).iter("{*}Creative")]

    assert [await pod("other") for _ in range(4)][-1] == ["cr-4"]  # L4: 1 of 2 reserved
    assert [await pod("V") for _ in range(3)] == [["cr-1"], ["cr-2"], ["cr-3"]]  # V: capped
    query = "content_duration=1800&cue_points=600,1200&device_id=V&session=sV&inline=1"
    preview = await _inline_breaks(client, f"{query}&test=1")
    real = await _inline_breaks(client, query)
    assert real == [["cr-4"], [], [], []]  # the pre-roll spends L4's budget
    assert preview == real


async def test_a_preview_with_the_store_down_is_decided_as_the_real_one(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """With the store refusing, a decision follows the failure policy (caps open, budgets
    closed) and reads no counters. A preview's later breaks then selected again with no
    counters to add its earlier breaks' reservations to: a KeyError, answered as an empty
    VMAP where the real one served every break. (The real breaks hold fewer ads: their
    reservations fail, which drops the ads that needed one; a preview reserves nothing.)"""
    from vastserver.store.base import StoreUnavailable

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(generate_catalog(300, seed=7, now=FIXED_NOW)))
    client: Any = await make_client(catalog=str(path))
    rt = client.server.app[RUNTIME]

    async def down(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    for op in ("read", "commit", "claim_and_add", "history", "push_history"):
        setattr(rt.store.inner, op, down)
    query = "content_duration=1800&cue_points=600,1200&device_id=dv1&device_type=ctv&inline=1"
    preview = await _inline_breaks(client, f"{query}&test=1")
    real = await _inline_breaks(client, query)
    assert len(real) == 4 and all(real)
    assert len(preview) == 4 and all(preview)


@pytest.mark.parametrize("path", ["/vast", "/decide", "/vmap"])
@pytest.mark.parametrize("value", ["2", "yes"])
async def test_a_bad_test_flag_is_a_400_naming_it(client: Any, path: str, value: str) -> None:
    resp = await client.get(f"{path}?test={value}")
    assert resp.status == 400
    assert (await resp.json())["field"] == "test"


async def test_vmap_tags_stay_within_what_vast_reads(client: Any) -> None:
    """A VMAP query whose ad tags /vast would refuse (over 4 KiB once encoded) is a 400,
    not a schedule whose every break goes unfilled; at the limit, each tag is served."""
    slashes = "/" * 1400  # 1,400 characters that encode to 4,200
    resp = await client.get(f"/vmap?content_duration=600&content_url=https:{slashes}")
    assert resp.status == 400 and (await resp.json())["field"] == "query"
    resp = await client.get(f"/vmap?content_duration=600&content_url=https:{slashes[:1300]}")
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    for tag in root.iterfind(".//vmap:AdTagURI", NS):
        parts = urlsplit(tag.text.strip())
        assert 3900 < len(parts.query) <= 4096
        vast = await client.get(f"{parts.path}?{parts.query}")
        assert vast.status == 200 and etree.fromstring(await vast.read()).tag.endswith("VAST")


async def _offsets(client: Any, query: str) -> list[str]:
    resp = await client.get(f"/vmap?{query}")
    assert resp.status == 200, await resp.text()
    root = etree.fromstring(await resp.read())
    return [b.get("timeOffset") for b in root.findall("vmap:AdBreak", NS)]


async def test_vmap_cue_points_are_told_apart_as_written(client: Any) -> None:
    """timeOffset is written to the millisecond: cue points that write the same are one
    break, and one that writes as 00:00:00.000 is the pre-roll's, not a second break."""
    assert await _offsets(client, "cue_points=10.0001,10.0002,10&preroll=0&postroll=0") == [
        "00:00:10.000"
    ]
    assert await _offsets(client, "cue_points=0.0001") == ["start", "end"]
    assert await _offsets(client, "cue_points=0.0001,00:00:00.000,0%25&content_duration=60") == [
        "start",
        "end",
    ]
    assert await _offsets(client, "cue_points=10.0006,00:00:10.001&postroll=0") == [
        "start",
        "00:00:10.001",
    ]


async def test_vmap_offsets_keep_two_digit_hours(client: Any) -> None:
    """The longest offset VMAP's HH:MM:SS[.mmm] can write is 99:59:59.999, in any form."""
    last = "content_duration=359999.999&cue_points=99:59:59.998,359699.997,50%25"
    assert await _offsets(client, f"{last}&preroll=0&postroll=0") == [
        "50:00:00.000",
        "99:54:59.997",
        "99:59:59.998",
    ]
    assert await _offsets(client, "cue_points=359999.999&preroll=0&postroll=0") == ["99:59:59.999"]
    for query in ("cue_points=999:59:59", "content_duration=604800&cue_points=100%25"):
        resp = await client.get(f"/vmap?{query}")
        assert resp.status == 400
        body = await resp.json()
        assert body["field"] in ("cue_points", "content_duration")
        assert "99:59:59.999" in body["why"] or "359999.999" in body["why"]


async def test_vmap_midrolls_follow_the_placements_ad_rules(client: Any) -> None:
    """Without cue points or an interval, content of a known length gets a mid-roll every
    ``midroll_interval`` of its placement's ad rules (the demo's default 600 s, kids_app
    900 s); live content (no length) and ``midroll=0`` get none."""
    mids = ["00:10:00.000", "00:20:00.000", "00:30:00.000", "00:40:00.000", "00:50:00.000"]
    assert await _offsets(client, "content_duration=3600") == ["start", *mids, "end"]
    kids = await _offsets(client, "content_duration=3600&placement=kids_app")
    assert kids == ["start", "00:15:00.000", "00:30:00.000", "00:45:00.000", "end"]
    assert await _offsets(client, "content_duration=3600&midroll=0") == ["start", "end"]
    assert await _offsets(client, "content_duration=3600&cue_points=900&midroll=0") == [
        "start",
        "end",
    ]
    assert await _offsets(client, "preroll=1") == ["start", "end"]


async def test_vmap_midrolls_keep_the_min_spacing(client: Any) -> None:
    """A mid-roll closer than the ad rules' ``min_midroll_spacing`` (300 s in the demo) to the
    one kept before it is left out, whether it comes from cue points or an interval."""
    q = "content_duration=3600&preroll=0&postroll=0"
    close = await _offsets(client, f"{q}&cue_points=600,610,620,899.999,900,1000")
    assert close == ["00:10:00.000", "00:15:00.000"]
    every = await _offsets(client, f"{q}&midroll_interval=60")
    assert every == [f"00:{m:02d}:00.000" for m in range(1, 60, 5)]  # 1, 6, 11, ...


async def test_vmap_too_many_midrolls_is_a_400_naming_their_source(client: Any) -> None:
    """More than 100 mid-rolls is refused, never a schedule cut short: the interval asked
    for, else the content length the placement's interval fills."""
    resp = await client.get("/vmap?content_duration=359999&midroll_interval=300")
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == "midroll_interval" and "100 mid-rolls" in body["why"]
    resp = await client.get("/vmap?content_duration=70000")
    assert resp.status == 400
    body = await resp.json()
    assert body["field"] == "content_duration" and "600 s" in body["why"], body
    # 100 exactly is fine: 60,000 s at 600 s gives 99, 60,600 gives 100
    assert len(await _offsets(client, "content_duration=60600&preroll=0&postroll=0")) == 100


async def test_vmap_pod_duration_and_max_ads_shape_every_break(client: Any) -> None:
    """``pod_duration`` and ``max_ads`` on ``/vmap`` set every break's tag (a position's own
    ``*_duration`` wins); malformed ones are a 400 as on ``/vast``."""
    q = "content_duration=1800&cue_points=900&pod_duration=45.5&max_ads=3&postroll_duration=20"
    resp = await client.get(f"/vmap?{q}")
    assert resp.status == 200, await resp.text()
    root = etree.fromstring(await resp.read())
    tags = [
        parse_qs(urlsplit(u.text.strip()).query) for u in root.iter(f"{{{NS['vmap']}}}AdTagURI")
    ]
    assert [(t["pod_duration"][0], t["max_ads"][0]) for t in tags] == [
        ("45.500", "3"),
        ("45.500", "3"),
        ("20", "3"),
    ]
    for bad, field in (
        ("max_ads=abc", "max_ads"),
        ("maxseq=0", "maxseq"),
        ("poddur=901", "poddur"),
    ):
        resp = await client.get(f"/vmap?content_duration=1800&{bad}")
        assert resp.status == 400 and (await resp.json())["field"] == field, bad
    # VAST 2.0 plays one ad a break whatever is asked
    resp = await client.get("/vmap?content_duration=1800&max_ads=3&vast=2.0")
    root = etree.fromstring(await resp.read())
    tags = [
        parse_qs(urlsplit(u.text.strip()).query) for u in root.iter(f"{{{NS['vmap']}}}AdTagURI")
    ]
    assert {t["max_ads"][0] for t in tags} == {"1"}


async def test_a_break_length_is_never_rounded_up(client: Any) -> None:
    """A break of 29.9999 s holds no 30 s ad: limits are taken to the millisecond below (a
    lower bound to the one above), and a VMAP's tags carry them so."""
    resp = await client.get("/vast?pod_duration=29.9999&max_ads=4&device_type=ctv")
    body = await resp.read()
    root = etree.fromstring(body)
    durations = [
        d.text.strip() for d in root.iter() if isinstance(d.tag, str) and d.tag.endswith("Duration")
    ]
    assert durations, body[:300]
    assert "00:00:30.000" not in durations
    total = 0
    for d in durations:
        h, m, s = d.split(":")
        total += round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)
    assert total <= 29_999
    resp = await client.get("/vmap?content_duration=1800&cue_points=900&midroll_duration=29.9999")
    root = etree.fromstring(await resp.read())
    tags = [
        parse_qs(urlsplit(u.text.strip()).query) for u in root.iter(f"{{{NS['vmap']}}}AdTagURI")
    ]
    assert tags[1]["pod_duration"] == ["29.999"]


async def test_vmap_interval_and_no_breaks(client: Any) -> None:
    root = etree.fromstring(
        await (await client.get("/vmap?content_duration=1900&midroll_interval=600")).read()
    )
    offsets = [b.get("timeOffset") for b in root.findall("vmap:AdBreak", NS)]
    assert offsets == ["start", "00:10:00.000", "00:20:00.000", "00:30:00.000", "end"]
    empty = await client.get("/vmap?preroll=0&postroll=0")
    root = etree.fromstring(await empty.read())
    assert root.tag == "{http://www.iab.net/videosuite/vmap}VMAP"
    assert root.findall("vmap:AdBreak", NS) == []
    # no break to carry them, but parameters /vast refuses are refused as with breaks
    for inline in ("0", "1"):
        bad = await client.get(f"/vmap?preroll=0&postroll=0&inline={inline}&min_ad_duration=x")
        assert bad.status == 400 and (await bad.json())["field"] == "min_ad_duration"


async def test_vmap_inline_separates_across_breaks(client: Any) -> None:
    resp = await client.get("/vmap?inline=1&content_duration=1800&cue_points=600,1200")
    root = etree.fromstring(await resp.read())
    seen: list[str] = []
    for b in root.findall("vmap:AdBreak", NS):
        vast = b.find("vmap:AdSource/vmap:VASTAdData/v:VAST", NS)
        assert vast is not None
        seen += [c.get("id") for c in vast.iterfind(".//v:Creative", NS)]
    assert seen and len(seen) == len(set(seen)), "a creative repeated within the stream"


async def test_inline_vmap_sends_breaks_past_the_token_horizon_as_tags(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    """An inline pod's tokens are signed when the VMAP is served: a break that played more
    than VASTSERVER_TOKEN_MAX_AGE later answered 403 and its impression never counted.
    Breaks due past a quarter of it are ad tags, decided when the player fetches them."""
    client: Any = await make_client(token_max_age=3600)  # horizon: 900 s of content
    query = "inline=1&content_duration=1800&cue_points=600,1200&device_type=ctv"
    resp = await client.get(f"/vmap?{query}")
    root = etree.fromstring(await resp.read())
    breaks = {b.get("breakId"): b for b in root.findall("vmap:AdBreak", NS)}
    assert list(breaks) == ["preroll", "midroll-1", "midroll-2", "postroll"]
    inline = {k for k, b in breaks.items() if b.find(".//vmap:VASTAdData", NS) is not None}
    assert inline == {"preroll", "midroll-1"}
    tag = _urls(breaks["midroll-2"], "vmap:AdSource/vmap:AdTagURI")[0]
    assert _urls(breaks["postroll"], "vmap:AdSource/vmap:AdTagURI")
    clock.now += timedelta(hours=2)  # a viewer who paused: midroll-2 plays late
    vast = etree.fromstring(await (await client.get(_local(tag))).read())
    (imp, *_) = _urls(vast, "v:Ad//v:Impression")
    assert (await client.get(_local(imp))).status == 204
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="impression",result="ok"} 1.0' in text
    # With the default max age (a day), a break 8 hours in is a tag, one 5 hours in inline.
    default: Any = await make_client()
    resp = await default.get("/vmap?inline=1&content_duration=36000&cue_points=18000,28800")
    root = etree.fromstring(await resp.read())
    kinds = [b.find(".//vmap:VASTAdData", NS) is not None for b in root.findall("vmap:AdBreak", NS)]
    assert kinds == [True, True, False, False]


async def test_inline_vmap_checks_its_tags_and_keeps_their_duration_rules(client: Any) -> None:
    """An inline VMAP may send breaks as ad tags (past its deadline), so it is held to
    what /vast accepts as a tag VMAP is, and decides its breaks by the same rules."""
    base = "/vmap?inline=1&content_duration=1800&cue_points=600,1200"
    for bad in (
        "min_ad_duration=abc",
        "required_durations=0",
        "min_ad_duration=10&max_ad_duration=5",
    ):
        resp = await client.get(f"{base}&{bad}")
        assert resp.status == 400, bad
    slashes = "/" * 1400
    resp = await client.get(f"{base}&content_url=https:{slashes}")
    assert resp.status == 400 and (await resp.json())["field"] == "query"
    resp = await client.get(f"{base}&min_ad_duration=20&max_ad_duration=40&device_id=rules")
    root = etree.fromstring(await resp.read())
    durations = [d.text.strip() for d in root.iterfind(".//v:Duration", NS)]
    assert durations and all("00:00:20" <= d[:8] <= "00:00:40" for d in durations), durations
    tag = await client.get("/vast?pod_duration=120&min_ad_duration=20&max_ad_duration=40")
    assert tag.status == 200


async def test_metrics_exposed(client: Any) -> None:
    await client.get("/vast?pod_duration=60")
    await client.get("/vast?pod_duration=abc")
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_requests_total{endpoint="vast",outcome="2xx"} 1.0' in text
    assert 'vastserver_requests_total{endpoint="vast",outcome="4xx"} 1.0' in text
    assert "vastserver_request_seconds_bucket" in text
    assert 'vastserver_pods_total{result="filled"} 1.0' in text
    assert "vastserver_pod_seconds_requested_total 60.0" in text
    assert "vastserver_ads_per_pod_bucket" in text
    assert 'vastserver_rejections_total{reason="not_selected",stage="pod"}' in text


async def test_metrics_leave_the_public_port_when_a_metrics_port_is_set(
    make_client: ClientFactory,
) -> None:
    """``/metrics`` has no authentication: with ``VASTSERVER_METRICS_PORT`` it is served on
    that port alone (``metrics_app``), and the ad port answers 404."""
    from vastserver.app import metrics_app

    client: Any = await make_client(metrics_port="19950")
    assert (await client.get("/vast?pod_duration=60")).status == 200
    assert (await client.get("/metrics")).status == 404
    side = metrics_app(client.server.app)
    req = make_mocked_request("GET", "/metrics", app=side)
    match = await side.router.resolve(req)
    resp = await match.handler(req)
    assert resp.status == 200 and b'vastserver_requests_total{endpoint="vast"' in resp.body


def _rejections(text: str) -> dict[str, float]:
    prefix = 'vastserver_rejections_total{reason="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


@pytest.mark.parametrize(
    "query",
    [
        # li-northstar-ev-prime fails its daypart (20:00 UTC is 15:00 in New York) and,
        # under a TV-Y7 rating, the content rating rules too: the index counts one, the
        # explanation's screen names the other
        "pod_duration=120&rating=TV-Y7&device_type=ctv",
        "pod_duration=90&genre=sports&live=1",
        "pod_duration=60",
    ],
)
async def test_an_explained_request_moves_the_rejection_metrics_as_a_plain_one(
    client: Any, query: str
) -> None:
    """``debug=1`` and ``/decide`` counted the explanation's reasons instead of the index's:
    the same request moved ``vastserver_rejections_total`` differently once explained."""
    moved = []
    for n, path in enumerate(("/vast?", "/vast?debug=1&", "/decide?")):
        before = _rejections(await (await client.get("/metrics")).text())
        assert (await client.get(f"{path}{query}&device_id=viewer-{n}")).status == 200
        after = _rejections(await (await client.get("/metrics")).text())
        moved.append({k: v - before[k] for k, v in after.items() if v != before[k]})
    assert moved[0] and moved[1] == moved[0] and moved[2] == moved[0], moved


@pytest.mark.parametrize(
    "query",
    [
        "pod_duration=120&rating=TV-Y7&device_type=ctv",  # a daypart and the rating fail
        "pod_duration=90&genre=sports&live=1",
        "pod_duration=60",
    ],
)
async def test_the_explanation_names_the_reason_the_metrics_count(
    make_client: Any, tmp_path: Path, query: str
) -> None:
    """Every candidate the explanation drops is counted under the same reason: an
    unapproved creative was ``creative_not_approved`` in ``debug`` and ``inactive`` in the
    metrics, and one failing its daypart and the content rating had one reason in each."""
    cat = json.loads(DEMO_CATALOG.read_text())
    cat["creatives"][0]["approved"] = False
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(cat))
    client = await make_client(catalog=str(path))
    before = _rejections(await (await client.get("/metrics")).text())
    resp = await client.get(f"/decide?{query}&device_id=viewer-explained")
    assert resp.status == 200
    explained = Counter(c["reason"] for c in (await resp.json())["candidates"] if c["reason"])
    after = _rejections(await (await client.get("/metrics")).text())
    moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert explained["creative_not_approved"] >= 1
    assert moved == dict(explained)


async def test_admin_reload_requires_token(client: Any) -> None:
    bad = {"Authorization": "Bearer wrong-token-123456789"}
    admin = [
        ("POST", "/admin/catalog/reload"),
        ("POST", "/admin/model/reload"),
        ("GET", "/admin/line-items"),
        ("GET", "/admin/line-items/li-1"),
    ]
    for method, path in admin:
        for headers in ({}, bad):
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 401, path
            # RFC 7235 §3.1: a 401 carries a challenge
            assert resp.headers["WWW-Authenticate"] == "Bearer", path
    ok = {"Authorization": "Bearer admin-token-0123456789"}
    resp = await client.post("/admin/catalog/reload", headers=ok)
    assert resp.status == 200 and (await resp.json())["version"]


async def test_explanations_need_the_admin_token_by_default(make_client: ClientFactory) -> None:
    """An explanation lists every candidate (line items, advertisers, prices) and costs far
    more than a request: by default (``VASTSERVER_DEBUG_ACCESS=admin``) only the admin
    bearer gets one, and a 401 names what was refused."""
    from tests.test_openrtb import dynamic_pod

    client = await make_client(debug_access="admin")
    ok = {"Authorization": "Bearer admin-token-0123456789"}
    bad = {"Authorization": "Bearer wrong-token-123456789"}
    rtb = dynamic_pod()
    rtb["imp"][0]["ext"] = {"vastserver": {"debug": 1}}
    refused = [
        ("GET", "/decide?pod_duration=60", "Authorization"),
        ("GET", "/vast?pod_duration=60&debug=1", "debug"),
        ("GET", "/vmap?content_duration=1800&cue_points=600&debug=1", "debug"),
        ("GET", "/vmap?content_duration=1800&cue_points=600&debug=1&inline=1", "debug"),
        ("POST", "/openrtb2/pod", "imp[0].ext.vastserver.debug"),
    ]
    for method, path, field in refused:
        data = json.dumps(rtb) if method == "POST" else None
        for headers in ({}, bad):
            resp = await client.request(method, path, data=data, headers=headers)
            assert resp.status == 401, (path, await resp.text())
            assert (await resp.json())["field"] == field
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        resp = await client.request(method, path, data=data, headers=ok)
        assert resp.status == 200, (path, await resp.text())
        text = await resp.text()
        if "/vmap" in path and "inline=1" not in path:
            continue  # a VMAP of tags: nothing decided here to explain (see below)
        assert any(x in text for x in ('"candidates"', "vastserver-debug")), path
    # without debug, nothing changes for players
    assert (await client.get("/vast?pod_duration=60&debug=0")).status == 200
    assert (await client.get("/vmap?content_duration=1800&cue_points=600")).status == 200


async def test_a_test_request_needs_the_admin_token_by_default(
    make_client: ClientFactory,
) -> None:
    """``test=1`` shows ads that are counted and billed nowhere: a player sending it on a
    live server would deliver them for free. Like an explanation, it needs the admin bearer
    token (``/decide`` always does); the tags of a test VMAP carry it, and need it too."""
    client = await make_client(debug_access="admin")
    ok = {"Authorization": "Bearer admin-token-0123456789"}
    vmap = "/vmap?content_duration=1800&cue_points=600&device_id=preview-auth&test=1"
    for path in ("/vast?pod_duration=60&device_id=preview-auth&test=1", vmap, vmap + "&inline=1"):
        resp = await client.get(path)
        assert resp.status == 401, (path, await resp.text())
        body = await resp.json()
        assert body["field"] == "test" and "test request" in body["why"]
        assert (await client.get(path, headers=ok)).status == 200, path
    tags = _urls(
        etree.fromstring(await (await client.get(vmap, headers=ok)).read()),
        "vmap:AdBreak/vmap:AdSource/vmap:AdTagURI",
    )
    assert tags and (await client.get(_local(tags[0]))).status == 401
    assert (await client.get(_local(tags[0]), headers=ok)).status == 200
    assert await _served(client) == 0
    # without test, nothing changes for players
    assert (await client.get("/vast?pod_duration=60&test=0")).status == 200


async def test_a_debug_vmaps_tags_play_without_the_admin_token(make_client: ClientFactory) -> None:
    """``debug=1`` asks for the VMAP's own explanation: its ad tags do not carry it, since
    the player fetching them sends no bearer token and would get a 401 for every break."""
    client = await make_client(debug_access="admin")
    ok = {"Authorization": "Bearer admin-token-0123456789"}
    query = "content_duration=1800&cue_points=600&debug=1"
    for inline in ("", "&inline=1"):
        resp = await client.get(f"/vmap?{query}{inline}", headers=ok)
        assert resp.status == 200, await resp.text()
        root = etree.fromstring(await resp.read())
        tags = [t.text.strip() for t in root.iterfind(".//vmap:AdTagURI", NS) if t.text]
        assert inline or len(tags) == 3
        for tag in tags:
            assert "debug" not in parse_qs(urlsplit(tag).query), tag
            played = await client.get(_local(tag))  # as a player: no Authorization
            assert played.status == 200, (tag, await played.text())
            assert b"vastserver-debug" not in await played.read()
        if inline:  # the inline VMAP is what gets explained
            assert b"vastserver-debug" in etree.tostring(root)


async def test_an_admin_token_read_with_a_trailing_newline_still_matches(
    make_client: ClientFactory,
) -> None:
    """A token from a mounted secret file ends in a newline no header can carry."""
    client = await make_client(admin_token="admin-token-0123456789\n")
    ok = {"Authorization": "Bearer admin-token-0123456789"}
    assert (await client.get("/admin/line-items", headers=ok)).status == 200


async def test_the_admin_api_and_metrics_answer_no_cors(client: Any) -> None:
    evil = {"Origin": "https://evil.example"}
    pre = await client.options(
        "/admin/catalog/reload",
        headers={
            **evil,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status != 204 and "Access-Control-Allow-Origin" not in pre.headers
    for path in ("/admin/line-items", "/metrics"):
        resp = await client.get(path, headers=evil)
        assert "Access-Control-Allow-Origin" not in resp.headers, path
        assert "Access-Control-Allow-Credentials" not in resp.headers, path
    assert (await client.get("/vast", headers=evil)).headers["Access-Control-Allow-Origin"] == (
        "https://evil.example"
    )


async def test_a_token_that_is_not_utf8_is_refused_not_an_error(client: Any) -> None:
    """aiohttp decodes header bytes with surrogateescape; comparing such a value raised,
    which answered 503 and logged an unhandled error for any caller."""
    for path in (b"/admin/line-items", b"/admin/catalog/reload", b"/admin/model/reload"):
        method = b"GET" if path.endswith(b"items") else b"POST"
        status, _ = await raw_request(
            client, method + b" " + path + b" HTTP/1.1\r\nAuthorization: Bearer \xff\r\n"
        )
        assert status == 401, path


async def test_a_reload_during_a_decision_leaves_its_explanation_on_one_catalog(
    tmp_path: Path,
) -> None:
    """The debug explanation screened the candidates a decision did not keep from whatever
    catalog was current after its store round trip: a reload in between mixed the two
    (the same line item and creative traced twice; a reviewer found it)."""
    from collections import Counter

    from tests.conftest import DEMO_CATALOG, make_settings
    from vastserver.app import RUNTIME, create_app
    from vastserver.params import client_info, parse_vast_request

    app = create_app(make_settings(), background_pacing=False)
    svc = app[RUNTIME].service
    other = json.loads(DEMO_CATALOG.read_text())
    for li in other["line_items"]:
        li["price"] = li["price"] + 0.5  # another snapshot, the same ids
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    req = parse_vast_request(
        {"pod_duration": "120", "max_ads": "4", "debug": "1"},
        client_info({"User-Agent": "x"}, "192.0.2.1"),
        svc.snapshot.catalog.rules_for(None),
    )
    calm = await svc.decide(req, explain=True)
    prefetch = svc.delivery.prefetch

    async def reload_meanwhile(*args: Any, **kwargs: Any) -> Any:
        svc.reload_catalog(path)
        return await prefetch(*args, **kwargs)

    svc.delivery.prefetch = reload_meanwhile
    raced = await svc.decide(req, explain=True)
    for d in (calm, raced):
        traced = Counter((t.line_item_id, t.creative_id) for t in d.traces)
        assert traced.most_common(1)[0][1] == 1
        assert len(d.traces) == len(calm.traces)


async def test_a_slow_catalog_reload_does_not_stall_serving(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload loads and indexes in a worker thread (a 100k catalog takes ~15 s, and a
    catalog path that blocks would block forever): requests are served meanwhile."""
    import threading
    import time

    import vastserver.service as service_module

    real = service_module._load_snapshot
    release = threading.Event()

    def slow(*args: Any) -> Any:
        release.wait(10)  # a long parse, or a FIFO nobody writes to
        return real(*args)

    monkeypatch.setattr(service_module, "_load_snapshot", slow)
    ok = {"Authorization": "Bearer admin-token-0123456789"}
    reload = asyncio.ensure_future(client.post("/admin/catalog/reload", headers=ok))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    resp = await client.get("/vast?pod_duration=30")
    assert resp.status == 200 and _ads(etree.fromstring(await resp.read()))
    assert time.monotonic() - t0 < 1.0 and not reload.done()
    release.set()
    done = await asyncio.wait_for(reload, 10)
    assert done.status == 200 and (await done.json())["version"]


async def test_a_reloaded_catalog_is_kept_out_of_the_collectors_way(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Start-up freezes what it loaded (``gc.freeze()``); a reload did not, and the loader
    paused the collector while it built: the first collection after a 100k reload walked
    the 1.7M new objects with the GIL held, and serving stopped for 4-6 s. What a reload
    builds is now frozen before the collector resumes (and nothing when it fails)."""
    import gc

    ok = {"Authorization": "Bearer admin-token-0123456789"}
    path = tmp_path / "catalog.json"
    path.write_text(DEMO_CATALOG.read_text())
    client: Any = await make_client(catalog=str(path))
    gc.unfreeze()  # what tests before froze: their objects' frees would move the count
    try:
        path.write_text('{"line_items": 5}')
        refused = await client.post("/admin/catalog/reload", headers=ok)
        assert refused.status == 422 and gc.get_freeze_count() == 0
        assert gc.isenabled()
        path.write_text(DEMO_CATALOG.read_text())
        done = await client.post("/admin/catalog/reload", headers=ok)
        assert done.status == 200 and gc.isenabled()
        assert gc.get_freeze_count() > 1000
        rt = client.server.app[RUNTIME]
        catalog = rt.service.snapshot.catalog
        built = [catalog.line_items, next(iter(catalog.line_items.values())), catalog.creatives]
        assert all(gc.is_tracked(o) for o in built)
        young = {id(o) for g in (0, 1, 2) for o in gc.get_objects(g)}
        assert not any(id(o) in young for o in built)  # frozen: in no generation
    finally:
        gc.unfreeze()


async def test_lmt_viewers_without_a_session_share_no_identity(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``lmt=1`` without a ``session`` (or GDPR without consent) leaves nothing to know the
    viewer by: such requests must not share one. They keyed on ``session:`` (the empty
    session), so every one of them had the same viewer hash and one 24 h exposure counter:
    the impressions one viewer counted became another's ``viewer_exposures`` (a model
    feature: ad fatigue). With a session, lmt requests remain that session's viewer."""
    client: Any = await make_client(event_log=str(tmp_path))

    async def serve(query: str, ua: str) -> int:
        root = await _vast(client, query, headers={"User-Agent": ua})
        ours = [u for u in _urls(root, ".//v:Impression") if u.startswith(PUBLIC_URL)]
        for url in ours:
            assert (await client.get(_local(url))).status == 204
        return len(ours)

    counted = 0
    for n in range(3):  # unrelated lmt viewers without a session, their impressions counted
        counted += await serve("pod_duration=60&lmt=1", f"Roku/{n}")
    counted += await serve("pod_duration=60&gdpr=1", "Roku/gdpr")  # no consent: as lmt
    assert counted > 0
    for _ in range(2):  # one lmt viewer with a session
        await serve("pod_duration=60&lmt=1&session=s-lmt", "Roku/s")
    await client.close()  # flushes the event log
    decisions = [r for r in read_events([tmp_path]) if r["type"] == "decision"]
    assert len(decisions) == 6 and all(d["ads"] for d in decisions)
    alone, sessioned = decisions[:4], decisions[4:]
    assert [{ad["viewer_exposures"] for ad in d["ads"]} for d in alone] == [{0}] * 4
    assert len({d["viewer"] for d in alone}) == 4
    # the session's viewer: one hash, and its second break sees the first one's impressions
    assert sessioned[0]["viewer"] == sessioned[1]["viewer"]
    assert sessioned[0]["viewer"] not in {d["viewer"] for d in alone}
    first = len(sessioned[0]["ads"])
    assert [{ad["viewer_exposures"] for ad in d["ads"]} for d in sessioned] == [{0}, {first}]


async def _decided(client: Any, query: str) -> tuple[list[str], dict[str, str]]:
    """The creatives of a ``/decide`` pod and the separation reasons of the dropped ones."""
    d = json.loads(await (await client.get("/decide?" + query)).text())
    seps = {
        c["creative_id"]: c["reason"]
        for c in d["candidates"]
        if c.get("reason") in ("stream_separation", "competitive_separation")
    }
    return [a["creative_id"] for a in d["pod"]["ads"]], seps


async def test_separation_without_avail_goes_by_minutes(client: Any, clock: FakeClock) -> None:
    """A stitcher template with ``session`` but no ``avail``: every break looked like avail 0,
    so what played once stayed blocked for the whole session. Without ``avail`` separation goes
    by time: blocked within the minutes window (30), free again after it."""
    q = "pod_duration=60&max_ads=4&device_type=ctv&session=s-live&device_id=ifa-live"
    first, _ = await _decided(client, q)
    assert first
    clock.now += timedelta(minutes=10)
    soon, seps = await _decided(client, q)
    assert not set(first) & set(soon)
    assert {seps[c] for c in first} == {"stream_separation"}
    clock.now += timedelta(minutes=31)
    later, seps = await _decided(client, q)
    assert set(first) <= set(later)
    assert "stream_separation" not in seps.values()


async def test_separation_with_avail_counts_breaks(client: Any, clock: FakeClock) -> None:
    """A request that sends ``avail`` keeps the break rule: the next break (distance 1 < 3) is
    blocked even after the minutes window."""
    q = "pod_duration=60&max_ads=4&device_type=ctv&session=s-vod&device_id=ifa-vod&avail="
    first, _ = await _decided(client, q + "0")
    clock.now += timedelta(minutes=31)
    later, seps = await _decided(client, q + "1")
    assert first and not set(first) & set(later)
    assert {seps[c] for c in first} == {"stream_separation"}


async def test_decide_and_the_event_log_show_the_competitive_labels_of_each_ad(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Every line item labelled 'one_per_pod', every creative 'promo': each ad's labels are
    those and its advertiser's category, /decide and the decision record show them, and the
    shared label leaves one ad per pod."""
    doc = json.loads(DEMO_CATALOG.read_text(encoding="utf-8"))
    for li in doc["line_items"]:
        li["competitive_categories"] = ["one_per_pod"]
    for cr in doc["creatives"]:
        cr["competitive_categories"] = ["promo"]
    category = {a["id"]: a.get("competitive_category") for a in doc["advertisers"]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    logs = tmp_path / "events"
    client: Any = await make_client(catalog=str(path), event_log=str(logs))
    resp = await client.get("/decide?pod_duration=120&max_ads=4&device_type=ctv")
    assert resp.status == 200, await resp.text()
    ads = (await resp.json())["pod"]["ads"]
    assert len(ads) == 1
    for a in ads:
        own = category[a["advertiser_id"]]
        assert a["competitive_labels"] == sorted({"one_per_pod", "promo", *([own] if own else [])})
    await client.close()  # flushes the event log
    (record,) = [r for r in read_events([logs]) if r["type"] == "decision"]
    assert [a["competitive_labels"] for a in record["ads"]] == [
        x["competitive_labels"] for x in ads
    ]


async def test_vast_fills_a_fractional_avail_with_a_creative_as_long(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """An SCTE-35 avail of 29.97 s takes a 29.97 s (NTSC) creative: it was refused as
    ``longer_than_pod`` when the break was counted down to 29 whole seconds."""
    catalog = json.loads(DEMO_CATALOG.read_text())
    (ntsc,) = [c for c in catalog["creatives"] if c["id"] == "cr-streamly-originals-30"]
    ntsc.pop("duration", None)
    ntsc["duration_ms"] = 29_970
    path = tmp_path / "ntsc.json"
    path.write_text(json.dumps(catalog))
    client = await make_client(catalog=str(path))
    root = await _vast(client, "pod_duration=29.97&min_ad_duration=29&device_type=ctv")
    durations = [d.text for d in root.iterfind(".//v:Linear/v:Duration", NS)]
    assert durations == ["00:00:29.970"]
    ids = [c.get("id") or "" for c in root.iterfind(".//v:Creative", NS)]
    assert len(ids) == 1 and "cr-streamly-originals-30" in ids[0], ids


async def test_a_fractional_break_falling_back_to_whole_seconds_is_no_degradation(
    client: Any,
) -> None:
    """Two 15 s ads overrun a 29.97 s avail, so the pod is built again for its 29 whole
    seconds (one ad). That is how the optimiser treats such breaks, not a degradation:
    ``pod_search_budget`` counts a structured pod's search out of budget only."""
    root = await _vast(client, "pod_duration=29.97&max_ads=2&device_type=ctv&device_id=frac")
    durations = [d.text for d in root.iterfind(".//v:Linear/v:Duration", NS)]
    assert durations == ["00:00:15.000"]
    text = await (await client.get("/metrics")).text()
    assert 'reason="pod_search_budget"' not in text
