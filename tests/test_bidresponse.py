"""``POST /openrtb2/auction``: the BidRequest of ``/openrtb2/pod``, answered with an OpenRTB
2.6 BidResponse (a bid per ad, each ad's VAST alone in ``adm``), over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from lxml import etree

from tests.conftest import ADMIN, ClientFactory
from tests.support import conformance as c
from tests.test_openrtb import _exact_slots, _tag_show, dynamic_pod, structured_pod
from tests.test_third_party import wrapper_doc

AUTH = {"Authorization": f"Bearer {ADMIN}"}
PROTOCOLS = {"2.0": 2, "3.0": 3, "4.0": 7, "4.1": 11, "4.2": 13, "4.3": 15}


async def _auction(client: Any, doc: dict[str, Any], **kw: Any) -> dict[str, Any]:
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc), **kw)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    assert resp.headers["X-Request-Id"]
    got: dict[str, Any] = await resp.json()
    return got


def _bids(answer: dict[str, Any], seat_id: str = "vastserver") -> list[dict[str, Any]]:
    (seat,) = answer["seatbid"]
    assert seat["seat"] == seat_id
    bids: list[dict[str, Any]] = seat["bid"]
    return bids


def _ad(adm: str) -> etree._Element:
    """The one ``<Ad>`` of a bid's VAST document."""
    ads = list(etree.fromstring(adm.encode()).iter("{*}Ad"))
    assert len(ads) == 1, adm
    return ads[0]


def _text(ad: etree._Element, tag: str) -> str | None:
    e = next(ad.iter(f"{{*}}{tag}"), None)
    return None if e is None else str(e.text).strip()


def _seconds(ad: etree._Element) -> float:
    h, m, s = str(_text(ad, "Duration")).split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _check_bid(bid: dict[str, Any], version: str) -> etree._Element:
    """The fields every bid carries agree with its own VAST: price = ``<Pricing>``, dur =
    ``<Duration>`` in whole seconds, crid = ``Creative@id``, adomain = ``<Advertiser>``."""
    ad = _ad(bid["adm"])
    assert c.detect_vast_version(bid["adm"].encode()) == version
    if version != "2.0":  # (VAST 2.0 has no <Pricing>)
        pricing = _text(ad, "Pricing")
        assert bid["price"] == (0.0 if pricing is None else float(pricing))
    assert bid["dur"] == int(_seconds(ad) + 0.5)
    assert bid["mtype"] == 2 and bid["protocol"] == PROTOCOLS[version]
    creative = next(ad.iter("{*}Creative"))
    assert bid["crid"] == creative.get("id") and bid["cid"]
    if version in ("3.0", "4.0", "4.1", "4.2", "4.3"):
        assert bid["adomain"] == [_text(ad, "Advertiser")]
    if version in ("4.1", "4.2", "4.3"):
        assert bid["id"] == _text(ad, "AdServingId")
    if version.startswith("4"):
        cats = [str(e.text).strip() for e in ad.iter("{*}Category")]
        assert bid.get("cat", []) == cats
        assert bid.get("cattax", 1) == 1
    return ad


async def test_a_dynamic_pod_is_a_bid_per_ad_in_pod_order(make_client: ClientFactory) -> None:
    client = await make_client()
    doc = dynamic_pod()
    answer = await _auction(client, doc)
    assert answer["id"] == doc["id"] and answer["cur"] == "USD" and answer["bidid"]
    bids = _bids(answer)
    assert len(bids) >= 2
    assert len({b["id"] for b in bids}) == len(bids)
    assert [int(str(_ad(b["adm"]).get("sequence"))) for b in bids] == list(range(1, len(bids) + 1))
    for bid in bids:
        assert bid["impid"] == "1"
        assert "slotinpod" not in bid  # a dynamic pod's ads take any place
        _check_bid(bid, "4.2")
        assert bid["price"] > 0 and 6 <= bid["dur"] <= 30
    # The same decision as /openrtb2/pod: the VAST pod of the same request, once more
    again = await _auction(client, doc)
    assert again["bidid"] != answer["bidid"]
    assert {b["id"] for b in _bids(again)}.isdisjoint(b["id"] for b in bids)


async def test_a_structured_pod_names_each_slots_imp(make_client: ClientFactory) -> None:
    """Three imps of one rule (first, any, last): the ads fill them in play order, the
    first is ``slotinpod`` 1 and the last -1; slots of different lengths (slot rules): each
    ad names the imp whose rule it fits, as the debug explanation does."""
    client = await make_client()
    doc = structured_pod()
    for imp in doc["imp"]:
        imp["video"].update(minduration=5, maxduration=30)
    bids = _bids(await _auction(client, doc))
    assert [b["impid"] for b in bids] == ["slot-0", "slot-1", "slot-2"]
    assert [b.get("slotinpod") for b in bids] == [1, None, -1]
    for bid in bids:
        _check_bid(bid, "4.2")

    doc = _exact_slots(30, 15, rqddurs=True)
    doc["device"]["ifa"] = "slots-viewer"
    doc["imp"][0]["video"]["slotinpod"] = 0
    doc["imp"][1]["video"]["slotinpod"] = 1  # plays first
    doc["ext"] = {"vastserver": {"debug": 1}}
    answer = await _auction(client, doc)
    bids = _bids(answer)
    # slot-0 promises any place (0): its bid claims none, though its ad plays last
    assert [(b["impid"], b["dur"], b.get("slotinpod")) for b in bids] == [
        ("slot-1", 15, 1),
        ("slot-0", 30, None),
    ]
    explained = answer["ext"]["vastserver"]["debug"]["pod"]["ads"]
    assert [a["imp_id"] for a in explained] == ["slot-1", "slot-0"]
    assert [b["crid"] for b in bids] == [a["creative_id"] for a in explained]


async def test_a_first_or_last_imp_takes_a_free_end(make_client: ClientFactory) -> None:
    """``slotinpod`` 2 (first or last) with the first slot claimed (1): the imp is the last
    slot, so its ad plays last and its bid claims -1, never a place in the middle."""
    client = await make_client()
    doc = structured_pod()
    codes = (1, 2, 0)
    for imp, code in zip(doc["imp"], codes, strict=True):
        imp["video"].update(minduration=5, maxduration=30, slotinpod=code)
    bids = _bids(await _auction(client, doc))
    assert [(b["impid"], b.get("slotinpod")) for b in bids] == [
        ("slot-0", 1),
        ("slot-2", None),
        ("slot-1", -1),
    ]
    doc["imp"][2]["video"]["slotinpod"] = -1  # both ends claimed: 2 cannot be kept
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 400
    assert "imp[1].video.slotinpod" in await resp.text()


async def test_ads_moved_up_past_an_empty_slot_name_their_imps(make_client: ClientFactory) -> None:
    """[45 s, 30 s, 15 s]: no ad lasts 45 s; the ads play first and second and fill the
    30 s and 15 s imps. The 30 s imp promises any place (0), so its bid claims none, though
    its ad moved up to play first: a bid's ``slotinpod`` never contradicts its imp's."""
    client = await make_client()
    doc = _exact_slots(45, 30, 15, rqddurs=True)
    assert [imp["video"].get("slotinpod") for imp in doc["imp"]] == [1, 0, -1]
    bids = _bids(await _auction(client, doc))
    assert [(b["impid"], b["dur"], b.get("slotinpod")) for b in bids] == [
        ("slot-1", 30, None),
        ("slot-2", 15, -1),
    ]


def _hybrid(dynamic_at: int, poddur: int, maxseq: int, *, ends: bool) -> dict[str, Any]:
    """Three imps of pod 7, each up to 30 s: imp ``dynamic_at`` (id ``dyn``) dynamic, of
    ``poddur`` seconds and ``maxseq`` ads; the others structured, the first and last in
    request order claiming ``slotinpod`` 1 and -1 when ``ends``, else any (0)."""
    doc = structured_pod()
    for imp in doc["imp"]:
        imp["video"].update(slotinpod=0, minduration=5, maxduration=30)
    video = doc["imp"][dynamic_at]["video"]
    del video["slotinpod"]
    video.update(poddur=poddur, maxseq=maxseq)
    doc["imp"][dynamic_at]["id"] = "dyn"
    structured = [imp["video"] for imp in doc["imp"] if imp["id"] != "dyn"]
    if ends:
        structured[0]["slotinpod"], structured[-1]["slotinpod"] = 1, -1
    doc["ext"] = {"vastserver": {"debug": 1}}
    return doc


async def _hybrid_bids(client: Any, doc: dict[str, Any]) -> list[tuple[str, int, Any]]:
    """Each bid's (impid, dur, slotinpod), in pod order; the bids agree with their VAST
    and with the explanation, and the dynamic imp's ads fit its ``poddur`` and ``maxseq``."""
    answer = await _auction(client, doc)
    bids = _bids(answer)
    explained = answer["ext"]["vastserver"]["debug"]["pod"]["ads"]
    assert [b["crid"] for b in bids] == [a["creative_id"] for a in explained]
    assert [int(str(_ad(b["adm"]).get("sequence"))) for b in bids] == list(range(1, len(bids) + 1))
    for bid in bids:
        _check_bid(bid, "4.2")
    (dyn,) = [imp["video"] for imp in doc["imp"] if "poddur" in imp["video"]]
    in_dyn = [b["dur"] for b in bids if b["impid"] == "dyn"]
    assert len(in_dyn) <= dyn["maxseq"] and sum(in_dyn) <= dyn["poddur"]
    structured = [imp["id"] for imp in doc["imp"] if imp["id"] != "dyn"]
    taken = [b["impid"] for b in bids if b["impid"] != "dyn"]
    assert len(taken) == len(set(taken)) and set(taken) <= set(structured)  # one ad each
    return [(b["impid"], b["dur"], b.get("slotinpod")) for b in bids]


async def test_a_hybrid_pods_ads_name_their_imps(make_client: ClientFactory) -> None:
    """A hybrid pod (structured imps and a dynamic one sharing the ``podid``): the first ad
    fills the ``slotinpod`` 1 imp, the last the -1 imp, the others the dynamic imp (up to
    its ``maxseq``), wherever it stands in the request; no bid carries ``slotinpod`` (set in
    structured pods only). The demo catalog's best three ads for it last 15, 15 and 30 s."""
    client = await make_client()
    for at in (1, 0, 2):
        doc = _hybrid(at, poddur=60, maxseq=2, ends=True)
        ids = [imp["id"] for imp in doc["imp"] if imp["id"] != "dyn"]
        assert await _hybrid_bids(client, doc) == [
            (ids[0], 15, None),
            ("dyn", 15, None),
            (ids[1], 30, None),
        ], at


async def test_a_hybrid_pods_dynamic_imp_gets_ads_that_fit_its_poddur(
    make_client: ClientFactory,
) -> None:
    """Two structured imps of any place and a dynamic imp of 15 or 20 s for one ad: the ad
    in the dynamic imp must fit those seconds, so it gets a 15 s ad and the structured imps
    take the others, the 30 s one included, in play order. (It used to get the last ad
    played, 30 s, in its 15 s: the ads took the imps in play order whatever they lasted.)"""
    client = await make_client()
    for poddur in (15, 20):
        doc = _hybrid(2, poddur=poddur, maxseq=1, ends=False)
        assert await _hybrid_bids(client, doc) == [
            ("dyn", 15, None),
            ("slot-0", 15, None),
            ("slot-1", 30, None),
        ], poddur


@pytest.mark.parametrize("version", ["2.0", "3.0", "4.0", "4.1", "4.2", "4.3"])
async def test_every_adm_is_a_conformant_vast_of_the_asked_version(
    make_client: ClientFactory, version: str
) -> None:
    """Each ``adm`` passes the IAB XSD of its version, vastlint and vast-client."""
    c.require_spec()
    c.require_node()
    client = await make_client()
    doc = dynamic_pod()
    doc["imp"][0]["video"]["protocols"] = [PROTOCOLS[version]]
    bids = _bids(await _auction(client, doc))
    assert len(bids) == (1 if version == "2.0" else len(bids)) and bids
    for bid in bids:
        _check_bid(bid, version)
        c.assert_vast_conformant(bid["adm"].encode(), version, parse_with_node=False)
    parsed = c.node_parse_many([b["adm"] for b in bids])
    allowed = c.UNAVOIDABLE_CLIENT_WARNINGS[version]
    for bid, p in zip(bids, parsed, strict=True):
        assert p["ok"], p["error"]
        assert [w for w in p["warnings"] + p["xmlWarnings"] if not w.startswith(allowed)] == []
        (ad,) = p["ads"]
        assert ad["creatives"][0]["id"] == bid["crid"]


TAG_CREATIVE = "cr-tp-30"
""":func:`wrapper_doc`'s third-party tag, Tag Show's first-slot sponsorship."""


@pytest.mark.parametrize(
    ("protocols", "inline", "wrapper"),
    [
        ([3], 3, None),  # inline codes only: no tag (it used to bid with protocol 6)
        ([11], 11, None),
        ([3, 5], 3, None),  # 5 is a 2.0 wrapper, no 3.0 one
        ([6], None, 6),  # wrapper codes only: only the tag
        ([14], None, 14),
        ([5], None, 5),  # (it used to get an inline ad, protocol 2)
        ([3, 6], 3, 6),
        ([13, 14], 13, 14),
        ([2, 3, 5, 6, 7, 8, 11, 12, 13, 14], 13, 14),
        (None, 13, 14),  # no protocols: as before
    ],
)
async def test_a_bid_protocol_is_always_one_its_imp_lists(
    make_client: ClientFactory,
    tmp_path: Path,
    protocols: list[int] | None,
    inline: int | None,
    wrapper: int | None,
) -> None:
    """A third-party tag bids (as a ``<Wrapper>``, with the wrapper code) only where the
    imp lists that version's wrapper code, an inline ad only where it lists the inline
    code; the refused ads are ``protocol_not_accepted`` in the explanation."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(wrapper_doc()))
    client = await make_client(catalog=str(path))
    answer = await _auction(client, _tag_show(protocols, "auction-forms"))
    bids = _bids(answer)
    got = set()
    for bid in bids:
        assert protocols is None or bid["protocol"] in protocols
        form = etree.QName(_ad(bid["adm"])[0]).localname
        assert (form == "Wrapper") is (bid["crid"] == TAG_CREATIVE), bid["crid"]
        got.add((form, bid["protocol"]))
    expected = {("InLine", inline), ("Wrapper", wrapper)}
    assert got == {(form, code) for form, code in expected if code is not None}
    reasons = {
        c["creative_id"]: c["reason"] for c in answer["ext"]["vastserver"]["debug"]["candidates"]
    }
    assert (reasons[TAG_CREATIVE] == "protocol_not_accepted") is (wrapper is None)
    refused_inline = [
        cr for cr, why in reasons.items() if why == "protocol_not_accepted" and cr != TAG_CREATIVE
    ]
    assert bool(refused_inline) is (inline is None)


async def _served(client: Any) -> dict[str, tuple[int, int]]:
    rows = await (await client.get("/admin/line-items", headers=AUTH)).json()
    return {r["id"]: (int(r["served"]), int(r["delivered_impressions"])) for r in rows}


async def test_the_bids_are_reserved_and_their_beacons_count(make_client: ClientFactory) -> None:
    """The served ads are reserved as /openrtb2/pod reserves them, and an ``adm``'s
    impression beacon counts its impression (once)."""
    client = await make_client()
    start = await _served(client)
    bids = _bids(await _auction(client, dynamic_pod()))
    after = await _served(client)
    assert sum(s for s, _ in after.values()) - sum(s for s, _ in start.values()) == len(bids)
    assert sum(d for _, d in after.values()) == sum(d for _, d in start.values())
    url = urlsplit(str(_text(_ad(bids[0]["adm"]), "Impression")))
    assert (await client.get(f"{url.path}?{url.query}")).status == 204
    assert (await client.get(f"{url.path}?{url.query}")).status == 204  # a replay
    delivered = await _served(client)
    assert sum(d for _, d in delivered.values()) == sum(d for _, d in start.values()) + 1
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="impression",result="ok"} 1.0' in text
    assert 'vastserver_requests_total{endpoint="openrtb_auction",outcome="2xx"}' in text


async def test_no_fill_is_a_204_without_a_body(make_client: ClientFactory) -> None:
    client = await make_client()
    doc = dynamic_pod()
    doc["imp"][0]["video"]["mincpmpersec"] = 9_999.0  # no ad pays that
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 204 and await resp.read() == b""
    assert resp.headers["X-Request-Id"]
    # with debug (admin): a BidResponse without seatbid, explaining why
    doc["ext"] = {"vastserver": {"debug": 1}}
    answer = await _auction(client, doc, headers=AUTH)
    assert "seatbid" not in answer and answer["id"] == doc["id"]
    assert answer["ext"]["vastserver"]["debug"]["filled"] is False


async def test_an_overloaded_server_answers_no_bid(make_client: ClientFactory) -> None:
    from vastserver.app import RUNTIME

    client = await make_client(max_in_flight=1)
    client.app[RUNTIME].in_flight = 1  # another decision holds the only place
    resp = await client.post("/openrtb2/auction", data=json.dumps(dynamic_pod()))
    assert resp.status == 204 and resp.headers["X-Shed"] == "1"
    assert resp.headers["X-OpenRTB-Version"] == "2.6"
    assert await resp.read() == b""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (json.dumps({"imp": []}).encode(), "id"),
        (json.dumps({**dynamic_pod(), "tmax": 0}).encode(), "tmax"),
        (json.dumps({**dynamic_pod(), "cur": ["EUR"]}).encode(), "cur"),
    ],
)
async def test_bad_requests_are_400s_as_on_the_pod_endpoint(
    make_client: ClientFactory, body: bytes, field: str
) -> None:
    client = await make_client()
    for path in ("/openrtb2/auction", "/openrtb2/pod"):
        resp = await client.post(path, data=body)
        assert resp.status == 400
        got = await resp.json()
        assert got["error"] == "bad_request" and got["field"] == field, (path, got)


async def test_test_and_debug_need_the_admin_token(make_client: ClientFactory) -> None:
    """``test`` = 1 (a preview) and ``debug`` answer 401 without the admin token, as on
    ``/openrtb2/pod``; with it a preview bids as usual and reserves nothing."""
    client = await make_client(debug_access="admin")
    doc = dynamic_pod()
    doc["test"] = 1
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 401 and (await resp.json())["field"] == "test"
    start = await _served(client)
    assert _bids(await _auction(client, doc, headers=AUTH))
    assert await _served(client) == start
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_previews_total{endpoint="openrtb_auction"} 1.0' in text
    doc = dynamic_pod()
    doc["ext"] = {"vastserver": {"debug": 1}}
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 401
    answer = await _auction(client, doc, headers=AUTH)
    explained = answer["ext"]["vastserver"]["debug"]["pod"]["ads"]
    assert [a["creative_id"] for a in explained] == [b["crid"] for b in _bids(answer)]


async def test_the_seat_is_the_one_the_setting_names(make_client: ClientFactory) -> None:
    """``seatbid.seat`` is ``VASTSERVER_OPENRTB_SEAT`` (the exchange's id for us), read from
    the environment as any setting; ``vastserver`` when it is unset or empty."""
    from vastserver.settings import load_settings

    from_env = load_settings({"VASTSERVER_OPENRTB_SEAT": "acme-ctv_01:east"})
    assert from_env.openrtb_seat == "acme-ctv_01:east"
    assert load_settings({"VASTSERVER_OPENRTB_SEAT": ""}).openrtb_seat == "vastserver"
    client = await make_client(openrtb_seat=from_env.openrtb_seat)
    bids = _bids(await _auction(client, dynamic_pod()), seat_id="acme-ctv_01:east")
    assert bids and all(b["impid"] == "1" for b in bids)


@pytest.mark.parametrize("seat", ["two words", "tab\there", "x" * 65, "s\u00e9at", "nl\n", "\x7f"])
def test_an_invalid_seat_stops_start_up(seat: str) -> None:
    """A seat id is 1-64 printable ASCII characters without a space: anything else is a
    start-up error naming the setting (64 is fine)."""
    from vastserver.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="VASTSERVER_OPENRTB_SEAT: a seat id, 1 to 64"):
        load_settings({"VASTSERVER_OPENRTB_SEAT": seat})
    assert load_settings({"VASTSERVER_OPENRTB_SEAT": "x" * 64}).openrtb_seat == "x" * 64


async def test_a_bid_lists_its_creatives_attributes(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``bid.attr``: the creative's AdCOM attributes, ascending, declared (``[15, 9]``) or
    derived (13 for SIMID files or VPAID); absent when it has none (a skip offset makes no
    16); what ``video.battr`` judges, so no bid carries a code the request blocks."""
    from tests.test_openrtb import attr_pod, attributes_catalog

    client = await make_client(catalog=str(attributes_catalog(tmp_path)))
    bids = _bids(await _auction(client, attr_pod(None, viewer="bid-attr")))
    got = {b["crid"]: b.get("attr") for b in bids if b["crid"].startswith("cr-attr-")}
    assert got == {
        "cr-attr-plain": None,
        "cr-attr-simid": [13],
        "cr-attr-vpaid": [13],
        "cr-attr-game": [13],
        "cr-attr-racy": [9, 15],
        "cr-attr-skippable": None,
    }
    for bid in bids:
        _check_bid(bid, "4.2")
    bids = _bids(await _auction(client, attr_pod([13], viewer="bid-attr-2")))
    assert bids and all(13 not in b.get("attr", []) for b in bids)
    assert {b["crid"] for b in bids} >= {"cr-attr-plain", "cr-attr-racy", "cr-attr-skippable"}


def _sponsored_preroll(viewer: str) -> dict[str, Any]:
    """A pre-roll of the series a flat sponsorship (price 0 per impression) targets, no
    floor at all."""
    return {
        "id": f"flat-{viewer}",
        "imp": [
            {
                "id": "1",
                "video": {"mimes": ["video/mp4"], "poddur": 30, "maxseq": 3, "startdelay": 0},
            }
        ],
        "device": {"ua": "Roku/DVP-9.10", "ip": "8.8.8.8", "devicetype": 3, "ifa": viewer},
        "app": {"content": {"series": "galaxy-patrol", "genre": "scifi"}},
    }


async def test_an_ad_billed_nothing_is_never_bid(make_client: ClientFactory) -> None:
    """A flat line item's ad (billed 0 an impression) would be a bid of price 0, which an
    exchange drops (no deal): the auction's per-ad floor is one micro, so it is dropped as
    ``below_floor`` before anything is reserved, and every bid is positive; the pod endpoint
    (a VAST, no bid) still serves it."""
    client = await make_client()
    vast = await client.post("/openrtb2/pod", data=json.dumps(_sponsored_preroll("flat-a")))
    assert vast.status == 200 and "cr-streamly-bumper-6" in await vast.text()
    start = await _served(client)
    doc = _sponsored_preroll("flat-b")
    doc["ext"] = {"vastserver": {"debug": 1}}
    answer = await _auction(client, doc, headers=AUTH)
    bids = _bids(answer)
    assert bids and all(b["price"] > 0 for b in bids)
    assert "cr-streamly-bumper-6" not in {b["crid"] for b in bids}
    reasons = {
        c["creative_id"]: c["reason"] for c in answer["ext"]["vastserver"]["debug"]["candidates"]
    }
    assert reasons["cr-streamly-bumper-6"] == "below_floor"
    assert reasons["cr-house-promo-15"] == "below_floor"
    after = await _served(client)
    assert (
        after["li-streamly-galaxy-sponsor"] == start["li-streamly-galaxy-sponsor"]
    )  # nothing reserved
    assert sum(s for s, _ in after.values()) - sum(s for s, _ in start.values()) == len(bids)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"bseat": ["other", "vastserver"]}, "bseat"),
        ({"wseat": ["someone-else"]}, "wseat"),
        ({"imp.pmp": {"private_auction": 1, "deals": [{"id": "d-1", "wseat": ["x"]}]}}, "imp[0]"),
    ],
)
async def test_a_request_excluding_us_is_a_no_bid_reserving_nothing(
    make_client: ClientFactory, change: dict[str, Any], why: str
) -> None:
    """Our seat in ``bseat``, a ``wseat`` without it, or a private auction (deals only: we
    hold none): a 204 before any decision, so nothing is reserved; with ``debug`` the
    no-bid BidResponse says why. Seats listed otherwise (``wseat`` with ours, ``bseat``
    without it, ``private_auction`` 0) change nothing."""
    client = await make_client()
    doc = dynamic_pod()
    for key, value in change.items():
        if key.startswith("imp."):
            doc["imp"][0][key[4:]] = value
        else:
            doc[key] = value
    start = await _served(client)
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 204 and await resp.read() == b""
    doc["ext"] = {"vastserver": {"debug": 1}}
    answer = await _auction(client, doc, headers=AUTH)
    assert "seatbid" not in answer and answer["id"] == doc["id"] and answer["cur"] == "USD"
    debug = answer["ext"]["vastserver"]["debug"]
    assert debug["filled"] is False and debug["no_bid"].startswith(why)
    assert await _served(client) == start
    ours = dynamic_pod()
    ours.update(wseat=["vastserver"], bseat=["other"])
    ours["imp"][0]["pmp"] = {"private_auction": 0, "deals": [{"id": "d-1"}]}
    assert _bids(await _auction(client, ours))


async def test_a_pod_with_one_private_imp_is_private(make_client: ClientFactory) -> None:
    """A structured pod is answered whole: one imp of ``private_auction`` 1 makes it a
    no-bid; a malformed ``pmp`` is a 400 naming it."""
    client = await make_client()
    doc = structured_pod()
    doc["imp"][1]["pmp"] = {"private_auction": 1}
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 204
    doc["imp"][1]["pmp"] = {"private_auction": 2}
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 400 and (await resp.json())["field"] == "imp[1].pmp.private_auction"
    doc["imp"][1]["pmp"] = None
    doc["bseat"] = "vastserver"
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 400 and (await resp.json())["field"] == "bseat"


async def test_ids_are_echoed_exactly_as_sent(make_client: ClientFactory) -> None:
    """``id`` and ``imp[].id`` come back untrimmed (the exchange matches them against its
    own), and imp ids differing only by a space are two imps; a blank id is a 400."""
    client = await make_client()
    doc = structured_pod()
    doc["id"] = " req-7 "
    for imp, imp_id in zip(doc["imp"], ["1", " 1", "imp 1 "], strict=True):
        imp["id"] = imp_id
        imp["video"].update(minduration=5, maxduration=30)
    answer = await _auction(client, doc)
    assert answer["id"] == " req-7 "
    assert [b["impid"] for b in _bids(answer)] == ["1", " 1", "imp 1 "]
    doc["imp"][2]["id"] = " 1"
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 400 and (await resp.json())["field"] == "imp[2].id"
    doc["id"] = "  "
    resp = await client.post("/openrtb2/auction", data=json.dumps(doc))
    assert resp.status == 400 and (await resp.json())["field"] == "id"


async def test_a_refused_debug_names_the_field_sent_and_answers_carry_the_version(
    make_client: ClientFactory,
) -> None:
    """The 401 for ``debug`` without the token names where it was sent (the top level's
    ``ext.vastserver.debug``, or the imp's); every answer of both endpoints, bids, no-bids,
    400s and 401s, carries ``X-OpenRTB-Version: 2.6``."""
    client = await make_client(debug_access="admin")
    top = dynamic_pod()
    top["ext"] = {"vastserver": {"debug": 1}}
    in_imp = dynamic_pod()
    in_imp["imp"][0]["ext"] = {"vastserver": {"debug": 1}}
    no_bid = dynamic_pod()
    no_bid["bseat"] = ["vastserver"]
    for path in ("/openrtb2/auction", "/openrtb2/pod"):
        for doc, field in ((top, "ext.vastserver.debug"), (in_imp, "imp[0].ext.vastserver.debug")):
            resp = await client.post(path, data=json.dumps(doc))
            assert resp.status == 401 and (await resp.json())["field"] == field, path
            assert resp.headers["X-OpenRTB-Version"] == "2.6"
        for doc, status in ((dynamic_pod(), 200), ({"imp": []}, 400), (no_bid, 204)):
            resp = await client.post(path, data=json.dumps(doc))
            expected = 200 if path.endswith("pod") and status == 204 else status
            assert resp.status == expected, (path, await resp.text())
            assert resp.headers["X-OpenRTB-Version"] == "2.6"
        # and the ones refused before the handler: a method, a body too large, undecodable
        refusals = (
            (await client.get(path), 405),
            (await client.post(path, data=b"x", headers={"Content-Length": "300000"}), 413),
            (await client.post(path, data=b"x", headers={"Content-Encoding": "gzip"}), 400),
        )
        for resp, status in refusals:
            assert resp.status == status, (path, status)
            assert resp.headers["X-OpenRTB-Version"] == "2.6", (path, status)


def _report_pod(viewer: str, *imps: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A live sports mid-roll on a Roku in the US, one ``podid``, the given imps."""
    return {
        "id": f"hybrid-{viewer}",
        "imp": [
            {"id": imp_id, "video": {"mimes": ["video/mp4"], "podid": "pp", "startdelay": -1, **v}}
            for imp_id, v in imps
        ],
        "device": {"ua": "Roku/DVP-9.10", "ip": "8.8.8.8", "devicetype": 3, "ifa": viewer},
        "app": {"content": {"genre": "sports", "livestream": 1, "contentrating": "TV-14"}},
        "ext": {"vastserver": {"debug": 1}},
    }


def _durations(vast: bytes) -> list[int]:
    """Each ad's ``<Duration>`` in whole seconds, in pod order."""
    out = []
    for d in etree.fromstring(vast).iter("{*}Duration"):
        h, m, sec = str(d.text).split(":")
        out.append(round(int(h) * 3600 + int(m) * 60 + float(sec)))
    return out


S1 = {"slotinpod": 1, "maxduration": 30}


@pytest.mark.parametrize(
    ("imps", "pod", "expected"),
    [
        # the optimiser plays 15, 15, 30 s: 45 s on d; the 30 s ad plays first instead, in s1
        (
            (("s1", S1), ("d", {"poddur": 30, "maxseq": 3, "maxduration": 30})),
            [15, 15, 30],
            [("s1", 30), ("d", 15), ("d", 15)],
        ),
        # two 30 s ads (rqddurs): the 15 s dynamic imp takes neither, one is left out
        (
            (("i0", {"rqddurs": [30, 60]}), ("i1", {"poddur": 15, "rqddurs": [6, 30]})),
            [30, 30],
            [("i0", 30)],
        ),
        # (the report's: 50 s on a dynamic imp of 45 s)
        (
            (("a", S1), ("d", {"poddur": 45, "maxseq": 3, "maxduration": 30})),
            None,
            None,
        ),
    ],
)
async def test_a_hybrid_pods_bids_fit_their_imps(
    make_client: ClientFactory,
    imps: tuple[tuple[str, dict[str, Any]], ...],
    pod: list[int] | None,
    expected: list[tuple[str, int]] | None,
) -> None:
    """The decision splits a hybrid pod's ads among its imps: a dynamic imp never gets more
    seconds than its ``poddur`` (nor more ads than its ``maxseq``). Where the optimiser's
    play order fits no split, another order of its ads that one fits is played; where none
    does, the ads no split takes are left out (reason ``fits_no_slot``) before anything is
    reserved. The pod endpoint (VAST, no imps to fill) keeps the optimiser's pod."""
    client = await make_client()
    doc = _report_pod(f"hybrid-{imps[1][0]}-{imps[1][1]['poddur']}", *imps)
    if pod is not None:
        plain = {k: v for k, v in doc.items() if k != "ext"}
        resp = await client.post("/openrtb2/pod", data=json.dumps(plain))
        assert _durations(await resp.read()) == pod
    start = await _served(client)
    answer = await _auction(client, doc, headers=AUTH)
    bids = _bids(answer)
    got = [(b["impid"], b["dur"]) for b in bids]
    if expected is not None:
        assert got == expected
    for imp_id, video in imps:
        mine = [dur for impid, dur in got if impid == imp_id]
        if "poddur" in video:
            assert sum(mine) <= video["poddur"] and len(mine) <= video.get("maxseq", 20), got
        else:
            assert len(mine) <= 1, got
    for bid in bids:
        _check_bid(bid, "4.2")
    assert [int(str(_ad(b["adm"]).get("sequence"))) for b in bids] == list(range(1, len(bids) + 1))
    debug = answer["ext"]["vastserver"]["debug"]
    assert [a["imp_id"] for a in debug["pod"]["ads"]] == [b["impid"] for b in bids]
    selected = {c["creative_id"] for c in debug["candidates"] if c["selected"]}
    assert selected == {b["crid"] for b in bids}
    if pod is not None and len(pod) > len(bids):
        assert "fits_no_slot" in {c["reason"] for c in debug["candidates"]}
    after = await _served(client)
    assert sum(s for s, _ in after.values()) - sum(s for s, _ in start.values()) == len(bids)


def test_fit_imps_splits_reorders_and_leaves_out() -> None:
    """:func:`fit_imps` on its own: two dynamic imps packed (15, 10, 20, 15 s as 20 + 10 and
    15 + 15 in 30 s each, which first-fit in play order misses); an ad moved to the first
    imp only where its line item may play first; the least valuable ad left out when no
    order fits; a crowded pod keeps its two ends."""

    from vastserver.pipeline.imps import PodImp, fit_imps
    from vastserver.pipeline.pod import PodItem

    def item(key: int, seconds: int, value: float = 1.0, *, first: bool = True) -> PodItem:
        return PodItem(key, seconds * 1000, value, 1, f"g{key}", None if first else -1e309)

    two = [PodImp("x", max_ads=2, capacity_s=30), PodImp("y", max_ads=2, capacity_s=30)]
    items = [item(0, 15), item(1, 10), item(2, 20), item(3, 15)]
    kept, imps, out = fit_imps(items, two)
    assert kept == items and not out
    for imp in (0, 1):
        assert sum(it.duration_ms for it, i in zip(kept, imps, strict=True) if i == imp) <= 30_000

    hybrid = [PodImp("a", role="first"), PodImp("d", max_ads=2, capacity_s=30)]
    items = [item(0, 15), item(1, 15), item(2, 30)]
    kept, imps, out = fit_imps(items, hybrid)
    assert [it.key for it in kept] == [2, 0, 1] and imps == [0, 1, 1] and not out
    items = [item(0, 15), item(1, 15), item(2, 30, first=False)]  # may not play first
    kept, imps, out = fit_imps(items, hybrid)
    assert [it.key for it in out] == [0] and [it.key for it in kept] == [1, 2]
    assert imps == [0, 1]

    crowded = [PodImp("a", role="first"), PodImp("z", role="last")] + [
        PodImp(f"d{i}", max_ads=3, capacity_s=7) for i in range(6)
    ]
    items = [item(k, 15 + k % 3, 1.0 + k) for k in range(20)]
    kept, imps, out = fit_imps(items, crowded)
    assert len(kept) == 2 and len(out) == 18 and imps == [0, 1]


def test_fit_imps_work_is_bounded_for_the_whole_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reviewer's hybrid pod: a first and a last imp and 12 dynamic imps of distinct
    sizes, each with room for one 11 s ad only: 14 ads of 11 s and no packing of them.
    Bounded per packing (2,000 steps) and per order (2,000 orders), one BidRequest took 10 s
    of the event loop. The steps of every packing of one call now share one budget."""
    import vastserver.pipeline.imps as imps_mod
    from vastserver.pipeline.imps import MAX_PACK_STEPS, MAX_TRIES, PodImp, fit_imps
    from vastserver.pipeline.pod import PodItem

    imps = [PodImp("f", role="first"), PodImp("l", role="last")] + [
        PodImp(f"d{i}", max_ads=2 + i % 2, capacity_s=11 + i % 6) for i in range(12)
    ]
    items = [PodItem(k, 11_000, 1.0 + k / 100, 1, f"g{k}") for k in range(16)]
    spent = [0, 0]  # steps, packings
    real = imps_mod._pack

    def counted(needs: Any, bins: Any, budget: list[int]) -> Any:
        before = budget[0]
        try:
            return real(needs, bins, budget)
        finally:
            spent[0] += before - budget[0]
            spent[1] += 1

    monkeypatch.setattr(imps_mod, "_pack", counted)
    kept, fitted, out = fit_imps(items, imps)
    assert spent[0] <= MAX_PACK_STEPS
    assert spent[1] <= MAX_TRIES + 2 * len(items) + 2
    assert len(kept) == 14 and len(out) == 2  # one ad a dynamic imp, and the two ends
    for imp in range(2, len(imps)):  # what was kept fits: no dynamic imp past its poddur
        seconds = [it.duration_ms for it, i in zip(kept, fitted, strict=True) if i == imp]
        assert len(seconds) <= imps[imp].max_ads
        assert sum(seconds) <= (imps[imp].capacity_s or 0) * 1000


def test_fit_imps_leaves_out_the_lowest_tier_first() -> None:
    """A reviewer's pod: a guaranteed ad (tier 2, price 10) and two standard ones (30, 29),
    20 s each, for an any-place imp and a dynamic imp of 30 s: one must go. The guaranteed
    one went (the split ranked by value alone); the optimiser ranks tier first."""
    from vastserver.pipeline.imps import PodImp, fit_imps
    from vastserver.pipeline.pod import PodItem

    imps = [PodImp("s"), PodImp("d", max_ads=2, capacity_s=30)]
    items = [
        PodItem(0, 20_000, 0.3, 1, "g0"),
        PodItem(1, 20_000, 0.29, 1, "g1"),
        PodItem(2, 20_000, 0.1, 2, "g2"),
    ]
    kept, _, out = fit_imps(items, imps)
    assert [it.key for it in out] == [1] and {it.key for it in kept} == {0, 2}


def _premium_first_slot(viewer: str, floors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A structured pod of three 30 s slots (first, any, last) of one rule, each imp with
    the floors given for it (``bidfloor``, ``durfloors``; ``mincpmpersec`` goes under
    ``video``)."""
    imps = []
    for imp_id, slot in (("a", 1), ("b", 0), ("c", -1)):
        video: dict[str, Any] = {
            "mimes": ["video/mp4"],
            "podid": "p",
            "startdelay": -1,
            "slotinpod": slot,
            "maxduration": 30,
        }
        imp: dict[str, Any] = {"id": imp_id, "video": video}
        for k, v in floors.get(imp_id, {}).items():
            (video if k == "mincpmpersec" else imp)[k] = v
        imps.append(imp)
    return {
        "id": f"floors-{viewer}",
        "imp": imps,
        "device": {
            "ua": "Roku/DVP-9.10",
            "ip": "8.8.8.8",
            "devicetype": 3,
            "ifa": viewer,
            "geo": {"country": "USA"},
        },
        "app": {"content": {"genre": "sports", "livestream": 1, "contentrating": "TV-MA"}},
    }


def _imp_floor(imp: dict[str, Any], seconds: int) -> float:
    """The least price OpenRTB lets a bid of ``seconds`` (``bid.dur``) for ``imp`` have."""
    per_s = imp["video"].get("mincpmpersec")
    bidfloor = imp.get("bidfloor", 0.0)
    least = 0.0 if per_s is None else per_s * seconds
    ranges = imp.get("durfloors")
    if ranges:
        held = [
            r.get("bidfloor", 0.0)
            for r in ranges
            if r.get("mindur", 0) <= seconds <= r.get("maxdur", seconds)
        ]
        return max(least, max(held) if held else 0.0 if per_s is not None else bidfloor)
    return least if per_s is not None else bidfloor


def _check_imp_floors(doc: dict[str, Any], bids: list[dict[str, Any]]) -> dict[str, float]:
    """Every bid meets the floors of the imp it names; the price of each imp's bid."""
    imps = {imp["id"]: imp for imp in doc["imp"]}
    for bid in bids:
        assert bid["price"] >= _imp_floor(imps[bid["impid"]], bid["dur"]), (bid["impid"], bid)
    return {bid["impid"]: bid["price"] for bid in bids}


async def test_each_imp_of_a_pod_has_its_own_floor(make_client: ClientFactory) -> None:
    """``imp.bidfloor`` is the least bid for that impression: a premium floor on the first
    slot (40) held every ad of the pod to it, so a pod that fills its three slots without
    it got one bid. Each bid now meets the floor of the imp it names, and the others fill."""
    client = await make_client()
    low = {"bidfloor": 1}
    bare = _bids(await _auction(client, _premium_first_slot("pf-0", {"b": low, "c": low})))
    assert [b["impid"] for b in bare] == ["a", "b", "c"]
    doc = _premium_first_slot("pf-1", {"a": {"bidfloor": 40}, "b": low, "c": low})
    bids = _bids(await _auction(client, doc))
    prices = _check_imp_floors(doc, bids)
    assert len(bids) == 3 and prices["a"] >= 40, prices
    assert bids[0]["slotinpod"] == 1 and bids[-1]["slotinpod"] == -1
    # A floor no ad meets leaves its imp unfilled, not the pod: the others still bid.
    doc = _premium_first_slot("pf-2", {"a": {"bidfloor": 400}, "b": low, "c": low})
    bids = _bids(await _auction(client, doc))
    prices = _check_imp_floors(doc, bids)
    assert "a" not in prices and set(prices) == {"b", "c"}, prices
    # The pod endpoint serves the same three ads.
    doc = _premium_first_slot("pf-3", {"a": {"bidfloor": 40}, "b": low, "c": low})
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200
    assert len(list(etree.fromstring(await resp.read()).iter("{*}Ad"))) == 3


async def test_per_second_and_duration_floors_are_each_imps_own(
    make_client: ClientFactory,
) -> None:
    """``mincpmpersec`` and ``durfloors`` differing per imp: each ad meets those of the imp
    its bid names (at its ``bid.dur``), not the highest of every imp's."""
    client = await make_client()
    floors: dict[str, dict[str, Any]] = {
        "a": {"mincpmpersec": 2.0},  # a :15 at 42 passes (30), a :30 would need 60
        "b": {"bidfloor": 1, "durfloors": [{"maxdur": 16, "bidfloor": 30}]},
        "c": {"mincpmpersec": 0.5},
    }
    doc = _premium_first_slot("pf-s-1", floors)
    bids = _bids(await _auction(client, doc))
    prices = _check_imp_floors(doc, bids)
    assert len(bids) == 3, prices
    # The highest of them all held every ad: 2.0 a second and 30 for :15s left one bid.
    assert any(
        price < max(_imp_floor(imp, bid["dur"]) for imp in doc["imp"])
        for bid, price in zip(bids, prices.values(), strict=True)
    ), prices
