"""OpenRTB 2.6 ad-pod BidRequests -> AdRequest: realistic requests, mappings, errors, fuzz."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DEMO_CATALOG, ClientFactory
from vastserver.catalog.model import MAX_ADS, MAX_POD_S, AdRules, BreakPosition, BreakRule, Slot
from vastserver.openrtb import (
    MAX_IMPS,
    OpenRtbPod,
    country_alpha2,
    parse_bid_request,
    platform_of,
)
from vastserver.params import ClientInfo, ParamError
from vastserver.pipeline.context import DurationFloors, ImpFloors
from vastserver.pipeline.pod import SlotRule

CLIENT = ClientInfo(
    caller_ip="198.51.100.10",
    caller_user_agent="stitcher/1.0",
    device_ip="198.51.100.77",
    device_user_agent="Mozilla/5.0 (SMART-TV; Linux; Tizen 7.0)",
)
RULES = AdRules(pre=BreakRule(30, 2), mid=BreakRule(90, 4), post=BreakRule(60, 3))


def dynamic_pod() -> dict[str, Any]:
    """A stitcher asking for one dynamic mid-roll pod (MediaTailor-like)."""
    return {
        "id": "b6d9c1f0-6a8e-4f41-9d61-2a3f0c9e7a11",
        "at": 1,
        "tmax": 1500,
        "test": 0,
        "cur": ["USD"],
        "imp": [
            {
                "id": "1",
                "secure": 1,
                "bidfloor": 12.0,
                "bidfloorcur": "USD",
                "video": {
                    "mimes": ["video/mp4", "application/x-mpegURL"],
                    "minduration": 6,
                    "maxduration": 30,
                    "protocols": [2, 3, 5, 6, 7, 8, 11, 12, 13, 14],
                    "w": 1920,
                    "h": 1080,
                    "startdelay": -1,
                    "plcmt": 1,
                    "linearity": 1,
                    "podid": "brk-1734",
                    "podseq": 0,
                    "poddur": 120,
                    "maxseq": 4,
                    "slotinpod": 0,
                    "mincpmpersec": 0.45,
                },
            }
        ],
        "app": {
            "id": "app-77",
            "bundle": "com.example.ctv",
            "name": "Example TV",
            "publisher": {"id": "pub-1"},
            "content": {
                "id": "ep-1001",
                "episode": 3,
                "title": "Galaxy Patrol: Return",
                "series": "galaxy-patrol",
                "season": "1",
                "genre": "Sports, Comedy",
                "cat": ["IAB17"],
                "contentrating": "TV-14",
                "livestream": 0,
                "len": 1800,
                "language": "en",
                "channel": {"id": "ch-1", "name": "northstar-sports"},
                "network": {"id": "nw-1", "name": "Northstar"},
            },
        },
        "device": {
            "ua": "Roku/DVP-12.0 (12.0.0.4182-88)",
            "ip": "203.0.113.7",
            "devicetype": 3,
            "make": "Roku",
            "model": "Ultra",
            "os": "Roku OS",
            "osv": "12.0",
            "ifa": "e5b1b3e2-7c1d-4f3b-9a55-0c6a1f2d3e4f",
            "lmt": 0,
            "language": "en",
            "geo": {"country": "USA", "region": "CA", "metro": "807", "type": 2},
            "ext": {"ifa_type": "rida"},
        },
        "user": {
            "data": [
                {"id": "dmp-1", "segment": [{"id": "cord_cutters"}, {"id": "adults_21plus"}]},
                {"id": "dmp-2", "segment": [{"id": "cord_cutters"}, {"name": "no id"}]},
            ]
        },
        "bcat": ["IAB25", "IAB26"],
        "badv": ["Competitor.example"],
        "regs": {"coppa": 0, "ext": {"gdpr": 0, "us_privacy": "1---"}},
        "source": {"tid": "c0ffee"},
    }


def dai_pod() -> dict[str, Any]:
    """A pre-roll with required durations, tvOS over IPv6 (Google-DAI-like)."""
    return {
        "id": "dai-req-42",
        "imp": [
            {
                "id": "imp-0",
                "tagid": "sports-live",
                "video": {
                    "mimes": ["video/mp4"],
                    "protocols": [7, 8],
                    "rqddurs": [15, 30],
                    "startdelay": 0,
                    "podid": 9001,
                    "poddur": 90,
                    "maxseq": 3,
                },
            }
        ],
        "site": {
            "page": "https://tv.example.com/live",
            "content": {
                "id": "live-match-7",
                "genre": "sports",
                "livestream": 1,
                "contentrating": "tv-pg",
                "network": {"name": "example-sports-net"},
                "language": "de",
            },
        },
        "device": {
            "ua": "AppleCoreMedia/1.0.0.21K69 (Apple TV; U; CPU OS 17_0 like Mac OS X)",
            "ipv6": "2001:db8::42",
            "devicetype": 7,
            "make": "Apple",
            "os": "tvOS",
            "ifa": "00000000-0000-0000-0000-000000000000",
            "lmt": 1,
            "geo": {"country": "GBR", "region": "ENG"},
        },
        "ext": {"ifa_type": "IDFA", "vastserver": {"session": "sess-9", "avail": 2}},
    }


def structured_pod() -> dict[str, Any]:
    """A post-roll of three fixed slots: first 30s, any 15s, last 30s."""

    def imp(i: int, slot: int, dur: int) -> dict[str, Any]:
        return {
            "id": f"slot-{i}",
            "video": {
                "mimes": ["video/mp4"],
                "podid": "7",
                "slotinpod": slot,
                "minduration": 5,
                "maxduration": dur,
                "startdelay": -2,
                "mincpmpersec": 0.3 + i / 10,
            },
        }

    return {
        "id": "structured-1",
        "imp": [imp(0, 1, 30), imp(1, 0, 15), imp(2, -1, 30)],
        "device": {"devicetype": 6, "os": "Fire OS", "make": "Amazon", "geo": {"country": "CAN"}},
    }


def parse(doc: object, rules: AdRules = RULES, *, require_https: bool = False) -> OpenRtbPod:
    return parse_bid_request(json.dumps(doc).encode(), CLIENT, rules, require_https=require_https)


def test_a_floor_must_be_in_the_catalogs_currency() -> None:
    """Floors are compared with line item prices, so only the catalog's currency works;
    an absent bidfloorcur means USD (OpenRTB's default)."""
    doc = dynamic_pod()
    body = json.dumps(doc).encode()
    assert parse_bid_request(body, CLIENT, RULES).floor_cpm_per_s == pytest.approx(0.45)
    with pytest.raises(ParamError) as usd_in_eur:
        parse_bid_request(body, CLIENT, RULES, currency="EUR")
    assert usd_in_eur.value.field == "imp[0].bidfloorcur"
    assert "USD" in str(usd_in_eur.value) and "EUR" in str(usd_in_eur.value)
    doc["imp"][0]["bidfloorcur"] = "eur"
    doc["cur"] = ["USD", "EUR"]
    eur = parse_bid_request(json.dumps(doc).encode(), CLIENT, RULES, currency="EUR")
    assert eur.floor_cpm_per_s == pytest.approx(0.45)
    del doc["imp"][0]["bidfloorcur"]
    with pytest.raises(ParamError) as absent:
        parse_bid_request(json.dumps(doc).encode(), CLIENT, RULES, currency="EUR")
    assert "absent, bidfloorcur means USD" in str(absent.value)


# ------------------------------------------------------------------------ realistic requests


def test_dynamic_pod_maps_everything() -> None:
    pod = parse(dynamic_pod())
    req = pod.request
    assert pod.request_id == "b6d9c1f0-6a8e-4f41-9d61-2a3f0c9e7a11"
    assert pod.imp_ids == ("1",)
    assert pod.slots == (Slot.ANY,)
    assert pod.pod_id == "brk-1734"
    assert pod.floor_cpm_per_s == pytest.approx(0.45)
    brk = req.brk
    assert brk.position is BreakPosition.MID
    assert brk.pod_duration_ms == 120_000
    assert brk.max_ads == 4
    assert brk.min_ad_duration_ms == 6_000
    assert brk.max_ad_duration_ms == 30_000
    assert brk.required_durations_s is None
    d = req.device
    assert d.ip == "203.0.113.7"  # the body's device IP wins over the header's
    assert d.user_agent == "Roku/DVP-12.0 (12.0.0.4182-88)"
    assert d.ifa == "e5b1b3e2-7c1d-4f3b-9a55-0c6a1f2d3e4f"
    assert d.ifa_type == "rida"
    assert d.lmt is False
    assert (d.device_type, d.platform) == ("ctv", "roku")
    assert (d.country, d.region, d.dma, d.language) == ("US", "US-CA", "807", "en")
    c = req.content
    assert c.id == "ep-1001"
    assert c.genres == ("sports", "comedy", "iab17")
    assert c.rating == "TV-14"
    assert c.live is False
    assert c.series == "galaxy-patrol"
    assert c.channel == "northstar-sports"
    assert c.kids is False
    assert req.segments == ("cord_cutters", "adults_21plus")
    assert req.blocked_categories == frozenset({"IAB25", "IAB26"})
    # the domain badv names, with and without www. (domain_forms)
    assert req.blocked_domains == frozenset({"competitor.example", "www.competitor.example"})
    assert req.vast_version == "4.2"
    assert req.require_https is True  # imp.secure = 1
    assert req.caller_ip == "198.51.100.10"
    assert req.caller_user_agent == "stitcher/1.0"
    assert req.placement is None
    assert req.debug is False


def test_dai_like_pre_roll_with_required_durations() -> None:
    pod = parse(dai_pod())
    req = pod.request
    assert pod.pod_id == "9001"  # integer podids (OpenRTB < 2.6-202303) become strings
    assert pod.floor_cpm_per_s is None
    brk = req.brk
    assert brk.position is BreakPosition.PRE
    assert (brk.pod_duration_ms, brk.max_ads) == (90_000, 3)
    assert brk.required_durations_s == frozenset({15, 30})
    assert brk.min_ad_duration_ms is None and brk.max_ad_duration_ms is None
    assert brk.avail == 2
    d = req.device
    assert d.ip == "2001:db8::42"
    assert d.ifa is None  # the all-zero IFA of limited ad tracking
    assert d.lmt is True
    assert d.ifa_type == "idfa"
    assert (d.device_type, d.platform) == ("stb", "tvos")
    assert (d.country, d.region, d.dma) == ("GB", "GB-ENG", None)
    assert d.language == "de"  # no device language: the content's
    c = req.content
    assert c.live is True
    assert c.rating == "TV-PG"
    assert c.channel == "example-sports-net"  # no channel: the network
    assert req.session == "sess-9"
    assert req.placement == "sports-live"  # from imp.tagid
    assert req.vast_version == "4.0"  # the highest VAST the player lists
    assert req.require_https is False
    assert req.viewer_key() == "session:sess-9"


@pytest.mark.parametrize(
    "device",
    [{"lmt": 1}, {"ifa": "00000000-0000-0000-0000-000000000000"}, {"ifa": "0", "lmt": 0}],
)
def test_limited_ad_tracking_drops_the_ifa_and_the_segments(device: dict[str, Any]) -> None:
    """``device.lmt`` = 1 kept ``user.data`` segments, and the all-zero IFA without ``lmt``
    fell back to an IP + UA key: both are the device's opt-out of tracking and of
    interest-based ads, as ``lmt=1`` on /vast. Neither the IFA nor the segments are used."""
    doc = dynamic_pod()
    doc["device"].update(device)
    req = parse(doc).request
    assert req.device.lmt is True and req.device.ifa is None
    assert req.segments == ()
    assert not req.permissions.device_id and not req.permissions.segments
    assert req.viewer_key() is None  # no session: never an "ipua:" fingerprint
    plain = parse(dynamic_pod()).request
    assert plain.segments == ("cord_cutters", "adults_21plus") and plain.device.ifa
    assert plain.permissions.device_id and plain.permissions.segments


def test_structured_pod_of_three_slots() -> None:
    pod = parse(structured_pod())
    brk = pod.request.brk
    assert pod.imp_ids == ("slot-0", "slot-1", "slot-2")
    assert pod.slots == (Slot.FIRST, Slot.ANY, Slot.LAST)
    assert brk.position is BreakPosition.POST
    assert brk.pod_duration_ms == 75_000  # 30 + 15 + 30
    assert brk.max_ads == 3
    # each slot takes the ads of its own length (no rule shared by the pod)
    assert brk.slots == (SlotRule(5_000, 30_000), SlotRule(5_000, 15_000), SlotRule(5_000, 30_000))
    assert (brk.min_ad_duration_ms, brk.max_ad_duration_ms) == (None, None)
    assert pod.floor_cpm_per_s == pytest.approx(0.5)  # the highest of the imps' floors
    d = pod.request.device
    assert (d.device_type, d.platform, d.country) == ("ctv", "firetv", "CA")
    # Nothing in the body: the HTTP layer's device IP and UA.
    assert d.ip == CLIENT.device_ip
    assert d.user_agent == CLIENT.device_user_agent


@pytest.mark.parametrize(
    ("codes", "slots", "order"),
    [
        # 2 (first or last) takes the first slot when no imp claims it, else the last
        ((2, 0, 2), (Slot.FIRST, Slot.ANY, Slot.LAST), ("slot-0", "slot-1", "slot-2")),
        ((0, 2, 1), (Slot.ANY, Slot.LAST, Slot.FIRST), ("slot-2", "slot-0", "slot-1")),
        ((0, -1, 2), (Slot.ANY, Slot.LAST, Slot.FIRST), ("slot-2", "slot-0", "slot-1")),
    ],
)
def test_slotinpod_2_takes_a_free_end_of_the_pod(
    codes: tuple[int, ...], slots: tuple[Slot, ...], order: tuple[str, ...]
) -> None:
    doc = structured_pod()
    for imp, code in zip(doc["imp"], codes, strict=True):
        imp["video"]["slotinpod"] = code
    pod = parse(doc)
    assert pod.slots == slots
    # the slot rules play in that order: the first-slot imp first, the last-slot imp last
    rules = pod.request.brk.slots
    assert rules is not None and tuple(r.imp_id for r in rules) == order
    assert [r.role for r in rules] == ["first", None, "last"]


def test_slotinpod_2_with_both_ends_claimed_is_a_400() -> None:
    doc = structured_pod()  # slotinpod 1, 0, -1
    doc["imp"][1]["video"]["slotinpod"] = 2
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == "imp[1].video.slotinpod" and "first or last" in str(e.value)


def test_structured_slot_lengths_from_rqddurs() -> None:
    doc = structured_pod()
    for imp in doc["imp"]:
        del imp["video"]["maxduration"], imp["video"]["minduration"]
        imp["video"]["rqddurs"] = [15, 30]
        # the same floors too (imps of different floors are slots of their own:
        # test_each_slot_keeps_its_imps_floors)
        imp["video"]["mincpmpersec"] = 0.5
    brk = parse(doc).request.brk
    assert brk.pod_duration_ms == 90_000
    assert brk.required_durations_s == frozenset({15, 30})
    assert brk.slots is None  # one rule for every slot: the pod optimiser as before


def test_hybrid_pod_adds_up() -> None:
    doc = structured_pod()
    doc["imp"][1]["video"] = {"podid": "7", "poddur": 60, "maxseq": 2, "startdelay": -2}
    brk = parse(doc).request.brk
    assert brk.pod_duration_ms == 120_000  # 30 + 60 + 30
    assert brk.max_ads == 4
    # the dynamic part's ads may land in the structured slots too: they follow those rules
    assert (brk.min_ad_duration_ms, brk.max_ad_duration_ms) == (5_000, 30_000)


def test_slots_of_different_rules_each_keep_their_rule() -> None:
    """Slot 1 up to 30 s, the last up to 15 s: each slot keeps its rule, in slot order
    (``slotinpod`` 1 first, -1 last, whatever the imps' order); nothing is shared."""
    doc = structured_pod()
    imps = doc["imp"][:2]
    imps[0]["video"].update(slotinpod=-1, maxduration=15)
    imps[1]["video"].update(slotinpod=1, maxduration=30)
    doc["imp"] = imps
    brk = parse(doc).request.brk
    assert (brk.pod_duration_ms, brk.max_ads) == (45_000, 2)
    assert brk.slots == (SlotRule(5_000, 30_000), SlotRule(5_000, 15_000))
    assert (brk.min_ad_duration_ms, brk.max_ad_duration_ms, brk.required_durations_s) == (
        None,
        None,
        None,
    )
    for imp, durs in zip(imps, ([15], [30, 60]), strict=True):
        del imp["video"]["maxduration"], imp["video"]["minduration"]
        imp["video"]["rqddurs"] = durs
    brk = parse(doc).request.brk
    assert brk.slots == (
        SlotRule(required_s=frozenset({30, 60})),
        SlotRule(required_s=frozenset({15})),
    )
    assert brk.pod_duration_ms == 75_000


def test_each_slot_keeps_its_imps_floors() -> None:
    """Imps of one duration rule and different floors: each is a slot of its own (so the
    pod says which imp each ad fills), with its imp's floors in slot order; the floors
    every ad meets are then none (``pod_floors``), the highest being kept for the pods
    that cannot say (one dynamic imp, a hybrid pod)."""
    doc = structured_pod()
    for imp in doc["imp"]:
        imp["video"]["maxduration"] = 30
    doc["imp"] = [doc["imp"][2], doc["imp"][0], doc["imp"][1]]  # last, first, any
    doc["imp"][2]["bidfloor"] = 40
    del doc["imp"][2]["video"]["mincpmpersec"]
    doc["imp"][0]["durfloors"] = [{"maxdur": 15, "bidfloor": 9}]
    pod = parse(doc)
    assert pod.request.brk.slots == (SlotRule(5_000, 30_000),) * 3
    durs = DurationFloors(ranges=((None, 15, 9.0),), default=0.0)
    assert pod.slot_floors == (
        ImpFloors(per_s=0.3),  # slot-0, slotinpod 1
        ImpFloors(per_ad=40.0),  # slot-1, any
        ImpFloors(per_s=0.5, by_duration=durs),  # slot-2, slotinpod -1
    )
    assert pod.pod_floors == (None, None, ())
    assert pod.floor_cpm_per_s == 0.5 and pod.floor_cpm == 40.0  # (the highest)
    # The same floors everywhere: one shared rule, as before, every ad meets them.
    same = structured_pod()
    for imp in same["imp"]:
        imp["video"].update(maxduration=30, mincpmpersec=0.4)
    pod = parse(same)
    assert pod.request.brk.slots is None and pod.slot_floors is None
    assert pod.pod_floors == (0.4, None, ())
    # A hybrid pod (a dynamic imp too): no per-slot floors, the highest for every ad.
    doc["imp"][1]["video"].update(poddur=60, maxseq=2)
    pod = parse(doc)
    assert pod.slot_floors is None and pod.request.brk.slots is None
    assert pod.pod_floors[:2] == (0.5, 40.0)


def test_bidfloor_is_the_floor_where_mincpmpersec_is_not_given() -> None:
    """OpenRTB 2.6 7.6: buyers look for mincpmpersec, else bidfloor. bidfloor was ignored,
    so ads under it were served; it is now a per-ad CPM floor, in the catalog's currency."""
    doc = dynamic_pod()
    assert parse(doc).floor_cpm is None  # mincpmpersec given: it rules
    del doc["imp"][0]["video"]["mincpmpersec"]
    pod = parse(doc)
    assert (pod.floor_cpm_per_s, pod.floor_cpm) == (None, 12.0)
    doc["imp"][0]["bidfloorcur"] = "EUR"
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == "imp[0].bidfloorcur"
    doc["imp"][0]["bidfloor"] = 0  # OpenRTB's default: no floor, any currency
    assert parse(doc).floor_cpm is None


def test_durfloors_are_each_imps_floors_by_duration() -> None:
    """OpenRTB 2.6 ``imp.durfloors``: ranges of whole seconds, each with its floor; the imp's
    ``bidfloor`` is the floor outside them (and no longer a floor for every ad)."""
    doc = dynamic_pod()
    del doc["imp"][0]["video"]["mincpmpersec"]
    doc["imp"][0]["durfloors"] = [
        {"mindur": 1, "maxdur": 15, "bidfloor": 5},
        {"mindur": 16, "maxdur": 30, "bidfloor": 10.5},
        {"mindur": 31},
    ]
    pod = parse(doc)
    assert pod.floor_cpm is None  # the bidfloor (12) is the durfloors' default instead
    (f,) = pod.duration_floors
    assert f.ranges == ((1, 15, 5.0), (16, 30, 10.5), (31, None, 0.0))
    assert [f.floor_for(s) for s in (15, 16, 30, 31, 0)] == [5.0, 10.5, 10.5, 0.0, 12.0]
    doc["imp"][0]["video"]["mincpmpersec"] = 0.5  # the per-second floor rules the rest
    pod = parse(doc)
    assert pod.floor_cpm_per_s == 0.5 and pod.duration_floors[0].floor_for(0) == 0.0
    doc["imp"][0]["durfloors"] = []
    assert parse(doc).duration_floors == ()


@pytest.mark.parametrize(
    ("durfloors", "field"),
    [
        ({"mindur": 5}, "imp[0].durfloors"),
        ([5], "imp[0].durfloors[0]"),
        ([{"bidfloor": 3}], "imp[0].durfloors[0]"),
        ([{"mindur": 30, "maxdur": 15}], "imp[0].durfloors[0].mindur"),
        ([{"mindur": -1}], "imp[0].durfloors[0].mindur"),
        ([{"maxdur": "15"}], "imp[0].durfloors[0].maxdur"),
        ([{"mindur": 1, "bidfloor": -2}], "imp[0].durfloors[0].bidfloor"),
        ([{"mindur": 1}] * 33, "imp[0].durfloors"),
    ],
)
def test_bad_durfloors_are_a_400_naming_them(durfloors: object, field: str) -> None:
    doc = dynamic_pod()
    doc["imp"][0]["durfloors"] = durfloors
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == field


def test_single_imp_without_pod_is_one_ad() -> None:
    doc = {"id": "r", "imp": [{"id": "a", "video": {"maxduration": 30, "startdelay": 0}}]}
    brk = parse(doc).request.brk
    assert (brk.position, brk.pod_duration_ms, brk.max_ads) == (BreakPosition.PRE, 30_000, 1)
    bare = parse({"id": "r", "imp": [{"id": "a", "video": {}}]}).request.brk
    assert (bare.position, bare.pod_duration_ms, bare.max_ads) == (BreakPosition.MID, 90_000, 1)


def test_dynamic_pod_without_maxseq_uses_ad_rules() -> None:
    doc = dynamic_pod()
    del doc["imp"][0]["video"]["maxseq"]
    doc["imp"][0]["video"]["startdelay"] = -2
    assert parse(doc).request.brk.max_ads == RULES.post.max_ads


def test_rules_callable_gets_the_placement() -> None:
    seen: list[str | None] = []
    special = AdRules(mid=BreakRule(120, 6))

    def rules_for(placement: str | None) -> AdRules:
        seen.append(placement)
        return special if placement == "news-vod" else RULES

    doc = dynamic_pod()
    del doc["imp"][0]["video"]["maxseq"]
    doc["imp"][0]["ext"] = {"vastserver": {"placement": "news-vod"}}
    doc["ext"] = {"vastserver": {"placement": "ignored-imp-wins"}}
    pod = parse_bid_request(json.dumps(doc).encode(), CLIENT, rules_for)
    assert seen == ["news-vod"]
    assert pod.request.placement == "news-vod"
    assert pod.request.brk.max_ads == 6
    assert pod.request.require_https is True  # the default


def test_vastserver_extension() -> None:
    doc = dynamic_pod()
    doc["ext"] = {
        "vastserver": {"placement": "p1", "debug": 1, "vast": "4.1", "kv": {"tier": "gold"}}
    }
    req = parse(doc).request
    assert req.placement == "p1"
    assert req.debug is True
    assert req.vast_version == "4.1"
    assert dict(req.key_values) == {"tier": "gold"}


def test_avail_is_known_only_when_sent() -> None:
    """Stream separation counts breaks by ``avail`` only when the bid request sends it:
    without, every break would look like avail 0 (the same break, blocked all session)."""
    assert parse(dynamic_pod()).request.brk.session_avail is None
    doc = dynamic_pod()
    doc["ext"] = {"vastserver": {"session": "s-1", "avail": 0}}
    assert parse(doc).request.brk.session_avail == 0


def test_base64_padded_session_and_ifa_are_kept() -> None:
    """As on /vast: a session or IFA in base64 keeps its ``=`` padding; ``placement``, a
    catalog name, does not take ``=``."""
    doc = dynamic_pod()
    doc["ext"] = {"vastserver": {"session": "YWJjZA=="}}
    doc["device"]["ifa"] = "QUJDRA=="
    req = parse(doc).request
    assert (req.session, req.device.ifa) == ("YWJjZA==", "QUJDRA==")
    doc["ext"] = {"vastserver": {"placement": "p=1"}}
    with pytest.raises(ParamError) as err:
        parse(doc)
    assert err.value.field == "ext.vastserver.placement"


def test_imp_vastserver_extension() -> None:
    """imp[].ext.vastserver carries what the top-level one does; an imp's wins, field by
    field (the first imp that sets it), over the top level."""
    doc = _second_imp({"podid": "brk-1734", "maxduration": 30})(dynamic_pod())
    assert isinstance(doc, dict)
    doc["imp"][0]["ext"] = {"vastserver": {"session": "s-imp0", "debug": 0, "avail": 3}}
    doc["imp"][1]["ext"] = {
        "vastserver": {"placement": "p-imp1", "session": "s-imp1", "vast": "3.0", "kv": {"a": "1"}}
    }
    doc["ext"] = {"vastserver": {"placement": "p-top", "debug": 1, "vast": "4.1", "kv": {"b": "2"}}}
    req = parse(doc).request
    assert req.placement == "p-imp1"
    assert req.session == "s-imp0"
    assert req.brk.avail == 3
    assert req.debug is False  # imp[0] says 0
    assert req.vast_version == "3.0"
    assert dict(req.key_values) == {"a": "1"}
    doc["imp"][0]["ext"] = {"vastserver": {"debug": 1, "kv": {}}}
    req = parse(doc).request
    assert req.debug is True and dict(req.key_values) == {}
    assert req.session == "s-imp1" and req.brk.avail == 0


# ---------------------------------------------------------------------------- break position


@pytest.mark.parametrize(
    ("startdelay", "podseq", "expected"),
    [
        (0, None, BreakPosition.PRE),
        (5, None, BreakPosition.MID),
        (600, None, BreakPosition.MID),
        (-1, None, BreakPosition.MID),
        (-2, None, BreakPosition.POST),
        (None, 1, BreakPosition.PRE),
        (None, -1, BreakPosition.POST),
        (None, 0, BreakPosition.MID),
        (None, None, BreakPosition.MID),
        (0, -1, BreakPosition.PRE),  # startdelay wins over podseq
        (-2, 1, BreakPosition.POST),
    ],
)
def test_break_position(startdelay: int | None, podseq: int | None, expected: str) -> None:
    video: dict[str, Any] = {"poddur": 60}
    if startdelay is not None:
        video["startdelay"] = startdelay
    if podseq is not None:
        video["podseq"] = podseq
    pod = parse({"id": "r", "imp": [{"id": "a", "video": video}]})
    assert pod.request.brk.position is expected


# ----------------------------------------------------------------------------- device mapping


@pytest.mark.parametrize(
    ("code", "expected"),
    [(1, "mobile"), (2, "desktop"), (3, "ctv"), (4, "mobile"), (5, "mobile"), (6, "ctv"),
     (7, "stb"), (8, None), (99, None)],
)  # fmt: skip
def test_device_types(code: int, expected: str | None) -> None:
    doc = dynamic_pod()
    doc["device"] = {"devicetype": code}
    assert parse(doc).request.device.device_type == expected


@pytest.mark.parametrize(
    ("os_name", "make", "device_type", "expected"),
    [
        ("Roku OS", None, None, "roku"),
        (None, "Roku", None, "roku"),
        ("tvOS", "Apple", "stb", "tvos"),
        ("Fire OS", "Amazon", "ctv", "firetv"),
        ("Android", "Amazon", "ctv", "firetv"),
        ("Android TV", "Sony", "ctv", "androidtv"),
        ("Android", "Nvidia", "stb", "androidtv"),
        ("Android", "Samsung", "mobile", None),
        ("Tizen", "Samsung", "ctv", "tizen"),
        ("webOS TV", "LG", "ctv", "webos"),
        ("SmartCast", None, "ctv", "vizio"),
        ("Linux", "Vizio", "ctv", "vizio"),
        ("iOS", "Apple", "mobile", None),
        (None, None, None, None),
    ],
)
def test_platforms(
    os_name: str | None, make: str | None, device_type: str | None, expected: str | None
) -> None:
    assert platform_of(os_name, make, device_type) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("USA", "US"), ("usa", "US"), ("GBR", "GB"), ("DEU", "DE"), ("JPN", "JP"), ("BRA", "BR"),
     ("US", "US"), ("XYZ", None), ("U", None), ("USAA", None), ("12", None), (None, None)],
)  # fmt: skip
def test_countries(raw: str | None, expected: str | None) -> None:
    assert country_alpha2(raw) == expected


def test_geo_codes_degrade_to_none() -> None:
    doc = dynamic_pod()
    doc["device"]["geo"] = {"country": "XYZ", "region": "Calif.", "metro": "LA"}
    doc["device"]["language"] = "english"
    doc["device"]["ext"] = {"ifa_type": "not a token"}
    doc["app"]["content"]["language"] = "??"
    d = parse(doc).request.device
    assert (d.country, d.region, d.dma, d.language, d.ifa_type) == (None, None, None, None, None)


def test_region_without_country_is_dropped_and_full_codes_kept() -> None:
    doc = dynamic_pod()
    doc["device"]["geo"] = {"region": "NY"}
    assert parse(doc).request.device.region is None
    doc["device"]["geo"] = {"region": "us-ny"}
    assert parse(doc).request.device.region == "US-NY"


def test_region_of_another_country_is_dropped() -> None:
    """``geo.country`` CAN with ``geo.region`` US-NY names no place: the region was taken
    as written. As for any ill-shaped targeting code, it is dropped (the country stays)
    and the request serves; ``/vast`` answers the same a 400."""
    doc = dynamic_pod()
    doc["device"]["geo"] = {"country": "CAN", "region": "US-NY"}
    d = parse(doc).request.device
    assert (d.country, d.region) == ("CA", None)
    doc["device"]["geo"] = {"country": "CAN", "region": "ca-on"}
    assert parse(doc).request.device.region == "CA-ON"
    doc["device"]["geo"] = {"country": "XYZ", "region": "US-NY"}  # no country to disagree
    assert parse(doc).request.device.region == "US-NY"


def test_language_from_langb() -> None:
    doc = dynamic_pod()
    del doc["device"]["language"]
    doc["device"]["langb"] = "es-MX"
    assert parse(doc).request.device.language == "es"


def test_coppa_marks_kids_content() -> None:
    doc = dynamic_pod()
    doc["regs"] = {"coppa": 1}
    assert parse(doc).request.content.kids is True
    del doc["app"]
    assert parse(doc).request.content.kids is True


def test_content_odds_and_ends() -> None:
    doc = dynamic_pod()
    content = doc["app"]["content"]
    content["contentrating"] = "R"
    content["genre"] = ["Drama", "drama", " "]
    content["cat"] = []
    del content["channel"]
    req = parse(doc).request
    assert req.content.rating is None
    assert req.content.genres == ("drama",)
    assert req.content.channel == "Northstar"
    doc["site"] = {"content": {"id": "site-content"}}
    assert parse(doc).request.content.id == "ep-1001"  # app wins over site


def test_https_setting_is_never_relaxed_by_the_body() -> None:
    doc = dynamic_pod()
    doc["imp"][0]["secure"] = 0
    pod = parse_bid_request(json.dumps(doc).encode(), CLIENT, RULES, require_https=True)
    assert pod.request.require_https is True


def test_vast_version_from_protocols() -> None:
    doc = dynamic_pod()
    for protocols, expected in (([2, 3], "3.0"), ([15, 16], "4.3"), ([1, 4], "4.2"), ([], "4.2")):
        doc["imp"][0]["video"]["protocols"] = protocols
        assert parse(doc).request.vast_version == expected


def _protocols(*lists: list[int] | None) -> dict[str, Any]:
    """:func:`structured_pod` (three slots) with these ``video.protocols``, one list an
    imp (None: the imp lists none)."""
    doc = structured_pod()
    for imp, protocols in zip(doc["imp"], lists, strict=True):
        if protocols is not None:
            imp["video"]["protocols"] = protocols
    return doc


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        (([2, 3, 13], [3, 13], None), "4.2"),  # 4.2 when every imp takes it
        (([2, 3, 7], [3, 7, 13], [1, 4]), "4.0"),  # else the highest all take
        (([2, 3], [3, 13], [3, 15]), "3.0"),  # (the union's 4.3 or 4.2 would not play)
        (([15, 16], None, None), "4.3"),  # an imp listing none (or none known) takes any
        (([1, 4], [], None), "4.2"),
    ],
)
def test_the_vast_version_is_one_every_imp_accepts(
    lists: tuple[list[int] | None, ...], expected: str
) -> None:
    """Any ad of a pod may fill any imp, so the version is one every imp listing a known
    code accepts. It used to be picked from the union: imps taking 2.0 only and 4.2 only
    got 4.2, which the first cannot play."""
    assert parse(_protocols(*lists)).request.vast_version == expected


@pytest.mark.parametrize(
    ("lists", "field", "why"),
    [
        (([2], [13], None), "imp[1].video.protocols", "accept VAST 2.0 inline, this one VAST 4.2"),
        (([3], None, [11]), "imp[2].video.protocols", "accept VAST 3.0 inline, this one VAST 4.1"),
        (([2, 3], [3, 13], [7]), "imp[2].video.protocols", "accept VAST 3.0 inline, this"),
        (([3], [6], None), "imp[1].video.protocols", "VAST 3.0 inline, this one VAST 3.0 wrapper"),
    ],
)
def test_imps_without_a_common_vast_version_are_a_400(
    lists: tuple[list[int] | None, ...], field: str, why: str
) -> None:
    """A pod is answered in one VAST version, in one form (inline or wrapper) for every
    imp: when the imps share none, a 400 names the first imp that leaves none and says
    what each side accepts."""
    with pytest.raises(ParamError) as e:
        parse(_protocols(*lists))
    assert e.value.field == field
    assert why in e.value.why and "no VAST version is accepted by every imp" in e.value.why


@pytest.mark.parametrize(
    ("lists", "version", "inline", "wrapper"),
    [
        (([3], None, None), "3.0", True, False),  # inline codes only: no <Wrapper>
        (([6], None, None), "3.0", False, True),  # wrapper codes only: only <Wrapper>s
        (([3, 6], [3, 6, 13], None), "3.0", True, True),
        (([5], None, None), "2.0", False, True),
        (([3, 5], None, None), "3.0", True, False),  # a 2.0 wrapper is no 3.0 one
        (([2, 6, 5], None, None), "2.0", True, True),  # 2.0 both ways (2, 5)
        (([13, 16], None, None), "4.2", True, False),  # 4.3 wrappers are no 4.2 ones
        (([3, 6], [6, 13], None), "3.0", False, True),  # no inline version all take
        (([13, 14], [13], None), "4.2", True, False),
        (([1, 4], None, None), "4.2", True, True),  # nothing known: as without protocols
        ((None, None, None), "4.2", True, True),
    ],
)
def test_inline_and_wrapper_codes_are_kept_apart(
    lists: tuple[list[int] | None, ...], version: str, inline: bool, wrapper: bool
) -> None:
    """AdCOM lists each VAST version twice, inline (2, 3, 7, 11, 13, 15) and wrapper (5, 6,
    8, 12, 14, 16); they used to be one version, so a player listing inline codes only got
    third-party tags as ``<Wrapper>`` and one listing wrapper codes only got inline ads.
    The version is picked among those every imp takes inline, else as a wrapper; then each
    form may play only if every imp lists its code."""
    req = parse(_protocols(*lists)).request
    assert (req.vast_version, req.inline_ads, req.wrapper_ads) == (version, inline, wrapper)


def test_the_vast_extension_overrides_the_protocols() -> None:
    """``ext.vastserver.vast`` (ours) names the version outright: any ad, no 400."""
    doc = _protocols([2], [13], [6])
    doc["ext"] = {"vastserver": {"vast": "4.1"}}
    req = parse(doc).request
    assert (req.vast_version, req.inline_ads, req.wrapper_ads) == ("4.1", True, True)


def test_a_vast_2_0_pod_allows_one_ad() -> None:
    """VAST 2.0 has no ad pods: a player listing only VAST 2.0 (protocols 2/5), or
    ``ext.vastserver.vast`` 2.0, plays one ad of a pod, so the break allows 1 (it used to
    keep maxseq, reserving ads never played). A player that lists 3.0 too keeps its pod."""
    for protocols, vast, max_ads in (
        ([2, 5], None, 1),
        ([2], None, 1),
        ([13], "2.0", 1),
        ([2, 3], None, 4),
        ([2], "3.0", 4),
    ):
        doc = dynamic_pod()
        doc["imp"][0]["video"]["protocols"] = protocols
        if vast is not None:
            doc["ext"] = {"vastserver": {"vast": vast}}
        brk = parse(doc).request.brk
        assert (brk.max_ads, brk.pod_duration_ms) == (max_ads, 120_000), (protocols, vast)
    doc = structured_pod()
    for imp in doc["imp"]:
        imp["video"]["protocols"] = [2, 5]
    brk = parse(doc).request.brk
    assert brk.max_ads == 1  # one ad, in a slot it fits
    assert brk.slots == parse(structured_pod()).request.brk.slots


def test_body_may_be_text() -> None:
    pod = parse_bid_request(json.dumps(dynamic_pod()), CLIENT, RULES)
    assert pod.imp_ids == ("1",)


# ------------------------------------------------------------------------- malformed requests

Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: object) -> Mutation:
    """Set a dotted path with [i] indexes in the dynamic pod."""

    def apply(doc: dict[str, Any]) -> object:
        parts = path.replace("[", ".").replace("]", "").split(".")
        cur: Any = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur.setdefault(p, {})
        last = parts[-1]
        if isinstance(cur, list):
            cur[int(last)] = value
        elif value is _DELETE:
            del cur[last]
        else:
            cur[last] = value
        return doc

    return apply


_DELETE = object()


def _many_imps(n: int) -> Mutation:
    def apply(doc: dict[str, Any]) -> object:
        doc["imp"] = [{"id": f"i{k}", "video": {"podid": "p", "maxduration": 5}} for k in range(n)]
        return doc

    return apply


def _second_imp(video: dict[str, Any], imp_id: str = "2") -> Mutation:
    def apply(doc: dict[str, Any]) -> object:
        doc["imp"].append({"id": imp_id, "video": video})
        return doc

    return apply


def _two_first_slots(doc: dict[str, Any]) -> object:
    doc["imp"][0]["video"]["slotinpod"] = 1
    return _second_imp({"podid": "brk-1734", "maxduration": 30, "slotinpod": 1})(doc)


MALFORMED: list[tuple[str, Mutation, str]] = [
    ("top level array", lambda d: [d], "body"),
    ("top level string", lambda d: "hello", "body"),
    ("id missing", _set("id", _DELETE), "id"),
    ("id number", _set("id", 7), "id"),
    ("id empty", _set("id", ""), "id"),
    ("id control chars", _set("id", "a\nb"), "id"),
    ("id too long", _set("id", "x" * 300), "id"),
    ("imp missing", _set("imp", _DELETE), "imp"),
    ("imp empty", _set("imp", []), "imp"),
    ("imp object", _set("imp", {"id": "1"}), "imp"),
    ("imp entry not object", _set("imp[0]", 5), "imp[0]"),
    ("imp id missing", _set("imp[0].id", _DELETE), "imp[0].id"),
    ("no video", _set("imp[0].video", _DELETE), "imp[0].video"),
    ("video null", _set("imp[0].video", None), "imp[0].video"),
    ("video array", _set("imp[0].video", []), "imp[0].video"),
    ("banner only", lambda d: {"id": "r", "imp": [{"id": "1", "banner": {}}]}, "imp[0].video"),
    ("poddur string", _set("imp[0].video.poddur", "120"), "imp[0].video.poddur"),
    ("poddur bool", _set("imp[0].video.poddur", True), "imp[0].video.poddur"),
    ("poddur zero", _set("imp[0].video.poddur", 0), "imp[0].video.poddur"),
    ("poddur absurd", _set("imp[0].video.poddur", 10**9), "imp[0].video.poddur"),
    ("poddur huge int", _set("imp[0].video.poddur", 10**400), "imp[0].video.poddur"),
    ("poddur too long", _set("imp[0].video.poddur", MAX_POD_S + 1), "imp[0].video.poddur"),
    ("maxseq fraction", _set("imp[0].video.maxseq", 2.5), "imp[0].video.maxseq"),
    ("maxseq zero", _set("imp[0].video.maxseq", 0), "imp[0].video.maxseq"),
    ("maxseq absurd", _set("imp[0].video.maxseq", MAX_ADS + 1), "imp[0].video.maxseq"),
    ("min > max", _set("imp[0].video.minduration", 45), "imp[0].video.minduration"),
    ("maxduration negative", _set("imp[0].video.maxduration", -5), "imp[0].video.maxduration"),
    ("rqddurs not list", _set("imp[0].video.rqddurs", 15), "imp[0].video.rqddurs"),
    ("rqddurs empty", _set("imp[0].video.rqddurs", []), "imp[0].video.rqddurs"),
    ("rqddurs entry", _set("imp[0].video.rqddurs", [15, "30"]), "imp[0].video.rqddurs[1]"),
    ("rqddurs zero", _set("imp[0].video.rqddurs", [0]), "imp[0].video.rqddurs[0]"),
    ("slotinpod 3", _set("imp[0].video.slotinpod", 3), "imp[0].video.slotinpod"),
    ("startdelay -3", _set("imp[0].video.startdelay", -3), "imp[0].video.startdelay"),
    ("podseq 2", _set("imp[0].video.podseq", 2), "imp[0].video.podseq"),
    ("podid object", _set("imp[0].video.podid", {}), "imp[0].video.podid"),
    ("floor negative", _set("imp[0].video.mincpmpersec", -1), "imp[0].video.mincpmpersec"),
    ("floor absurd", _set("imp[0].video.mincpmpersec", 1e300), "imp[0].video.mincpmpersec"),
    ("floor in EUR", _set("imp[0].bidfloorcur", "EUR"), "imp[0].bidfloorcur"),
    ("protocols string", _set("imp[0].video.protocols", "7"), "imp[0].video.protocols"),
    ("secure 2", _set("imp[0].secure", 2), "imp[0].secure"),
    ("too many imps", _many_imps(MAX_IMPS + 1), "imp"),
    ("too many slots", _many_imps(MAX_ADS + 1), "imp"),
    ("two pods", _second_imp({"podid": "other", "poddur": 30}), "imp"),
    ("duplicate imp id", _second_imp({"podid": "brk-1734", "maxduration": 30}, "1"), "imp[1].id"),
    (
        "slot without length",
        _second_imp({"podid": "brk-1734", "startdelay": -1}),
        "imp[1].video.maxduration",
    ),
    ("two first slots", _two_first_slots, "imp[1].video.slotinpod"),
    (
        "positions disagree",
        _second_imp({"podid": "brk-1734", "maxduration": 30, "startdelay": 0}),
        "imp[1].video.startdelay",
    ),
    (
        "pod too long",
        _second_imp({"podid": "brk-1734", "poddur": MAX_POD_S}),
        "imp",
    ),
    ("device array", _set("device", []), "device"),
    ("device ip bad", _set("device.ip", "999.1.1.1"), "device.ip"),
    ("device ipv6 bad", _set("device.ipv6", "2001:db8::zz"), "device.ipv6"),
    ("device ua number", _set("device.ua", 5), "device.ua"),
    ("device ua huge", _set("device.ua", "x" * 5000), "device.ua"),
    ("devicetype string", _set("device.devicetype", "3"), "device.devicetype"),
    ("lmt 2", _set("device.lmt", 2), "device.lmt"),
    ("geo array", _set("device.geo", []), "device.geo"),
    ("country number", _set("device.geo.country", 840), "device.geo.country"),
    ("ifa number", _set("device.ifa", 123), "device.ifa"),
    ("app string", _set("app", "x"), "app"),
    ("content array", _set("app.content", []), "app.content"),
    ("genre number", _set("app.content.genre", 3), "app.content.genre"),
    ("cat string", _set("app.content.cat", "IAB1"), "app.content.cat"),
    ("livestream 2", _set("app.content.livestream", 2), "app.content.livestream"),
    ("channel string", _set("app.content.channel", "abc"), "app.content.channel"),
    ("user data object", _set("user.data", {}), "user.data"),
    ("segment list", _set("user.data[0].segment", "x"), "user.data[0].segment"),
    ("segment id number", _set("user.data[0].segment[0].id", 1), "user.data[0].segment[0].id"),
    ("bcat string", _set("bcat", "IAB25"), "bcat"),
    ("badv entry", _set("badv", [None]), "badv[0]"),
    ("bcat huge", _set("bcat", ["IAB1"] * 600), "bcat"),
    ("regs coppa 5", _set("regs.coppa", 5), "regs.coppa"),
    ("ext array", _set("ext", []), "ext"),
    ("our ext string", _set("ext.vastserver", "x"), "ext.vastserver"),
    ("placement bad", _set("ext.vastserver.placement", "a b"), "ext.vastserver.placement"),
    ("session bad", _set("ext.vastserver.session", "é"), "ext.vastserver.session"),
    ("avail negative", _set("ext.vastserver.avail", -1), "ext.vastserver.avail"),
    ("vast 5", _set("ext.vastserver.vast", "5.0"), "ext.vastserver.vast"),
    ("kv value", _set("ext.vastserver.kv", {"a": 1}), "ext.vastserver.kv.a"),
    ("imp ext string", _set("imp[0].ext", "x"), "imp[0].ext"),
    ("imp our ext string", _set("imp[0].ext.vastserver", "x"), "imp[0].ext.vastserver"),
    (
        "imp placement bad",
        _set("imp[0].ext.vastserver.placement", "a b"),
        "imp[0].ext.vastserver.placement",
    ),
    (
        "imp session bad",
        _set("imp[0].ext.vastserver.session", "é"),
        "imp[0].ext.vastserver.session",
    ),
    ("imp avail negative", _set("imp[0].ext.vastserver.avail", -1), "imp[0].ext.vastserver.avail"),
    ("imp avail string", _set("imp[0].ext.vastserver.avail", "2"), "imp[0].ext.vastserver.avail"),
    ("imp debug 2", _set("imp[0].ext.vastserver.debug", 2), "imp[0].ext.vastserver.debug"),
    ("imp debug yes", _set("imp[0].ext.vastserver.debug", "yes"), "imp[0].ext.vastserver.debug"),
    ("imp vast 5", _set("imp[0].ext.vastserver.vast", "5.0"), "imp[0].ext.vastserver.vast"),
    ("imp kv array", _set("imp[0].ext.vastserver.kv", []), "imp[0].ext.vastserver.kv"),
    ("imp kv value", _set("imp[0].ext.vastserver.kv", {"a": 1}), "imp[0].ext.vastserver.kv.a"),
    (
        "imp kv key",
        _set("imp[0].ext.vastserver.kv", {"k" * 65: "v"}),
        "imp[0].ext.vastserver.kv",
    ),
    # the top level is checked even where an imp's extension sets the field
    (
        "top placement bad under imp's",
        lambda d: _set("ext.vastserver.placement", "a b")(
            _set("imp[0].ext.vastserver.placement", "ok")(d)
        ),
        "ext.vastserver.placement",
    ),
    (
        "second imp debug bad",
        lambda d: _set("imp[1].ext", {"vastserver": {"debug": 2}})(
            _second_imp({"podid": "brk-1734", "maxduration": 30})(d)
        ),
        "imp[1].ext.vastserver.debug",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [(m, f) for _, m, f in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_requests_name_the_field(mutate: Mutation, field: str) -> None:
    doc = mutate(dynamic_pod())
    with pytest.raises(ParamError) as err:
        parse(doc)
    assert err.value.field == field, err.value.why


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b'{"id": NaN}',
        b'{"id": "r", "imp": [{"id": "1", "video": {"poddur": Infinity}}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": 1e999999}',
        b'{"id": "' + b"9" * 5000 + b'"}',
        b'{"a": ' + b"1" * 5000 + b"}",
    ],
)
def test_bad_bodies(body: bytes) -> None:
    with pytest.raises(ParamError) as err:
        parse_bid_request(body, CLIENT, RULES)
    assert err.value.field in ("body", "id", "imp")


# ----------------------------------------------------------------------------------- fuzzing

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=1000)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def _check(doc: object) -> None:
    try:
        body = json.dumps(doc).encode("utf-8", "surrogatepass")
    except (ValueError, OverflowError):
        return
    try:
        pod = parse_bid_request(body, CLIENT, RULES)
    except ParamError:
        return
    brk = pod.request.brk
    assert 1 <= brk.max_ads <= MAX_ADS
    assert 0 < brk.pod_duration_ms <= MAX_POD_S * 1000
    assert len(pod.imp_ids) == len(pod.slots) >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_fuzz_arbitrary_json(doc: object) -> None:
    _check(doc)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    try:
        parse_bid_request(body, CLIENT, RULES)
    except ParamError:
        pass


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


BASES = (dynamic_pod(), dai_pod(), structured_pod())
PATHS = [(b, p) for b, doc in enumerate(BASES) for p in _paths(doc)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(PATHS), JSON, st.booleans()), min_size=1, max_size=4),
    st.integers(min_value=0, max_value=len(BASES) - 1),
)
def test_fuzz_mutated_requests(
    edits: list[tuple[tuple[int, tuple[str | int, ...]], object, bool]], base: int
) -> None:
    doc = copy.deepcopy(BASES[base])
    for (b, path), value, delete in edits:
        if b != base:
            continue
        cur: Any = doc
        try:
            for p in path[:-1]:
                cur = cur[p]
            if delete and isinstance(cur, dict):
                cur.pop(path[-1], None)
            else:
                cur[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit changed the shape
    _check(doc)


def test_every_base_request_parses() -> None:
    for doc in BASES:
        _check(doc)
        parse(doc)


async def test_the_endpoint_takes_floors_in_the_catalogs_currency(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    doc = json.loads(DEMO_CATALOG.read_text())
    doc["currency"] = "EUR"
    path = tmp_path / "eur.json"
    path.write_text(json.dumps(doc))
    client = await make_client(catalog=str(path))
    usd = dynamic_pod()
    resp = await client.post("/openrtb2/pod", data=json.dumps(usd))
    assert resp.status == 400 and "bidfloorcur" in await resp.text()
    eur = dynamic_pod()
    eur["imp"][0]["bidfloorcur"] = "EUR"
    eur["cur"] = ["EUR"]
    resp = await client.post("/openrtb2/pod", data=json.dumps(eur))
    assert resp.status == 200, await resp.text()
    # No cur means USD (OpenRTB's default): answered as cur ["USD"] is, a 400 on cur
    for path in ("/openrtb2/pod", "/openrtb2/auction"):
        for cur in (["USD"], None):
            eur["cur"] = cur
            resp = await client.post(path, data=json.dumps(eur))
            assert resp.status == 400, (path, cur)
            got = await resp.json()
            assert got["field"] == "cur" and "EUR" in got["why"], (path, cur, got)


async def test_durfloors_hold_over_http(make_client: ClientFactory) -> None:
    """The same pod without and with a floor of 1,000 CPM on ads of up to 20 s: short ads
    serve, then only longer ones (a range under no floor)."""
    from lxml import etree

    client = await make_client()

    async def seconds(pod: dict[str, Any]) -> list[float]:
        resp = await client.post("/openrtb2/pod", data=json.dumps(pod))
        assert resp.status == 200, await resp.text()
        out = []
        for ad in etree.fromstring(await resp.read()).iter("{*}Ad"):
            h, m, sec = str(next(ad.iter("{*}Duration")).text).split(":")
            out.append(int(h) * 3600 + int(m) * 60 + float(sec))
        return out

    pod = dynamic_pod()
    del pod["imp"][0]["video"]["mincpmpersec"]
    pod["imp"][0]["bidfloor"] = 0
    pod["device"]["ifa"] = "durfloors-a"
    assert any(s <= 20 for s in await seconds(pod))
    pod["imp"][0]["durfloors"] = [{"maxdur": 20, "bidfloor": 1000}]
    pod["device"]["ifa"] = "durfloors-b"
    got = await seconds(pod)
    assert got and all(s > 20.5 for s in got), got


async def test_floors_hold_against_the_least_a_line_item_pays(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Two floors were passed under: bidfloor (ignored) and a slot price below the line
    item's CPM (the floor compared the CPM, the ad billed the slot's price). Every ad now
    pays at least the per-ad floor and mincpmpersec x its seconds, in whatever slot."""
    from lxml import etree

    doc = json.loads(DEMO_CATALOG.read_text())
    for li in doc["line_items"]:
        if li.get("pricing_model", "CPM") != "flat" and li["price"] > 0:
            li["slot_prices"] = {"last": li["price"] / 4}  # a cheap last slot
    path = tmp_path / "slots.json"
    path.write_text(json.dumps(doc))
    client = await make_client(catalog=str(path))

    async def prices(pod: dict[str, Any]) -> list[tuple[float, float]]:
        """(price, seconds) of each priced ad."""
        resp = await client.post("/openrtb2/pod", data=json.dumps(pod))
        assert resp.status == 200, await resp.text()
        out = []
        for ad in etree.fromstring(await resp.read()).iter("{*}Ad"):
            for e in ad.iter("{*}Pricing"):
                h, m, sec = str(next(ad.iter("{*}Duration")).text).split(":")
                out.append((float(str(e.text)), int(h) * 3600 + int(m) * 60 + float(sec)))
        return out

    pod = dynamic_pod()
    del pod["imp"][0]["video"]["mincpmpersec"]
    for n, floor in enumerate((0.0, 4.0, 6.0)):
        pod["imp"][0]["bidfloor"] = floor
        pod["device"]["ifa"] = f"floor-viewer-{n}"
        got = await prices(pod)
        assert got and all(p >= floor for p, _ in got), (floor, got)
    pod["imp"][0]["bidfloor"] = 0.0
    pod["imp"][0]["video"]["mincpmpersec"] = 0.2
    pod["device"]["ifa"] = "floor-viewer-per-s"
    got = await prices(pod)
    assert got and all(p >= 0.2 * seconds for p, seconds in got), got


def test_bcat_in_another_taxonomy_is_refused_not_ignored() -> None:
    """bcat codes are in the cattax taxonomy; "1" in Content Taxonomy 2.x is Automotive,
    which the catalog's IAB 1.0 codes never match: the block would silently do nothing."""
    doc = dynamic_pod()
    doc["cattax"] = 7
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == "cattax"
    doc["cattax"] = 1
    parse(doc)
    del doc["bcat"]
    doc["cattax"] = 7  # nothing to block: nothing misread
    parse(doc)


async def test_bcat_and_badv_match_however_they_are_written(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``bcat`` whatever its case (``iab8-5`` blocks ``IAB8-5``); ``badv`` lower-cased, less a
    trailing dot and a leading ``www.`` on both sides: ``Harbor-Lager.example.`` blocks an
    advertiser written ``www.harbor-lager.example``, ``WWW.Northstar-Motors.example`` one
    written ``northstar-motors.example``."""
    from tests.conftest import ADMIN

    catalog = json.loads(DEMO_CATALOG.read_text())
    ids = {}
    for adv in catalog["advertisers"]:
        if adv["domain"] == "harbor-lager.example":
            adv["domain"] = "www.harbor-lager.example"
        ids[adv["domain"]] = adv["id"]
    path = tmp_path / "www.json"
    path.write_text(json.dumps(catalog))
    client = await make_client(catalog=str(path))

    async def reasons(doc: dict[str, Any]) -> dict[str, set[str | None]]:
        doc["ext"] = {"vastserver": {"debug": 1}}
        resp = await client.post(
            "/openrtb2/auction", data=json.dumps(doc), headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert resp.status == 200, await resp.text()
        out: dict[str, set[str | None]] = {}
        for c in (await resp.json())["ext"]["vastserver"]["debug"]["candidates"]:
            out.setdefault(c["advertiser_id"], set()).add(c["reason"])
        return out

    def pod(viewer: str) -> dict[str, Any]:
        doc = dynamic_pod()
        del doc["bcat"], doc["badv"]
        doc["device"]["ifa"] = viewer
        doc["app"]["content"] = {"genre": "sports", "livestream": 1, "contentrating": "TV-14"}
        return doc

    harbor, northstar = ids["www.harbor-lager.example"], ids["northstar-motors.example"]
    ridgeway = ids["ridgeway-brewing.example"]
    free = await reasons(pod("blocks-0"))
    for adv in (harbor, northstar, ridgeway):
        assert not free[adv] & {"blocked_advertiser", "blocked_category"}, free[adv]
    doc = pod("blocks-1")
    doc["bcat"] = ["iab8-5"]
    doc["badv"] = ["Harbor-Lager.example.", "WWW.Northstar-Motors.example"]
    got = await reasons(doc)
    assert "blocked_advertiser" in got[harbor] and "blocked_advertiser" in got[northstar]
    assert "blocked_category" in got[ridgeway]
    for adv in (harbor, northstar, ridgeway):
        assert None not in got[adv]  # none selected


def _ads(xml: bytes) -> list[tuple[int, float]]:
    """(sequence, seconds) of each ad of a VAST pod, in document order."""
    from lxml import etree

    out = []
    for ad in etree.fromstring(xml).iter("{*}Ad"):
        h, m, sec = str(next(ad.iter("{*}Duration")).text).split(":")
        out.append((int(ad.get("sequence", "0")), int(h) * 3600 + int(m) * 60 + float(sec)))
    return out


def _xsd_valid(xml: bytes) -> None:
    from tests.support import conformance

    conformance.require_spec()
    errors = conformance.validate_vast_xsd(xml, conformance.detect_vast_version(xml))
    assert errors == [], errors


def _exact_slots(*lengths: int, rqddurs: bool) -> dict[str, Any]:
    doc = structured_pod()
    doc["imp"] = doc["imp"][: len(lengths)]
    for imp, length in zip(doc["imp"], lengths, strict=True):
        del imp["video"]["mincpmpersec"]
        if rqddurs:
            del imp["video"]["minduration"], imp["video"]["maxduration"]
            imp["video"]["rqddurs"] = [length]
        else:
            imp["video"].update(minduration=length, maxduration=length)
    return doc


@pytest.mark.parametrize("rqddurs", [True, False], ids=["rqddurs", "min-max"])
async def test_slots_of_different_lengths_each_get_an_ad_that_fits(
    make_client: ClientFactory, rqddurs: bool
) -> None:
    """Slots of exactly 30 s then 15 s (a DAI-style structured pod): no duration fits both,
    which used to leave the pod empty. Each slot now takes an ad of its own length, in slot
    order, and the VAST is valid."""
    client = await make_client()
    resp = await client.post(
        "/openrtb2/pod", data=json.dumps(_exact_slots(30, 15, rqddurs=rqddurs))
    )
    assert resp.status == 200, await resp.text()
    xml = bytes(await resp.read())
    assert _ads(xml) == [(1, 30.0), (2, 15.0)]
    _xsd_valid(xml)


@pytest.mark.parametrize(("protocols", "n_ads"), [([2, 5], 1), ([2, 3], 2)])
async def test_a_vast_2_0_bid_request_serves_and_reserves_one_ad(
    make_client: ClientFactory, protocols: list[int], n_ads: int
) -> None:
    """A stitcher whose player reads only VAST 2.0 asks for two slots: it gets one ad (it
    used to get both, the second reserved and never played), and one is reserved."""
    from tests.conftest import ADMIN

    client = await make_client()
    doc = _exact_slots(30, 15, rqddurs=False)
    for imp in doc["imp"]:
        imp["video"]["protocols"] = protocols
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    xml = bytes(await resp.read())
    assert len(_ads(xml)) == n_ads
    auth = {"Authorization": f"Bearer {ADMIN}"}
    rows = await (await client.get("/admin/line-items", headers=auth)).json()
    assert sum(int(r["served"]) for r in rows) == n_ads
    _xsd_valid(xml)


async def test_first_and_last_slots_of_different_lengths(make_client: ClientFactory) -> None:
    """slotinpod -1 on the first imp (15 s) and 1 on the second (30 s, up to): the 30 s slot
    plays first, then the 15 s one; a three-slot [30, 15, 30] pod fills in that order."""
    client = await make_client()
    doc = _exact_slots(15, 30, rqddurs=False)
    doc["imp"][0]["video"]["slotinpod"] = -1
    doc["imp"][1]["video"].update(slotinpod=1, minduration=20)
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    got = _ads(bytes(await resp.read()))
    assert [s for s, _ in got] == [1, 2]
    assert 20 <= got[0][1] <= 30 and got[1][1] == 15.0
    doc = _exact_slots(30, 15, 30, rqddurs=True)
    doc["device"]["ifa"] = "slots-viewer-3"
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    xml = bytes(await resp.read())
    assert _ads(xml) == [(1, 30.0), (2, 15.0), (3, 30.0)]
    _xsd_valid(xml)


async def test_debug_names_the_ads_no_slot_takes(make_client: ClientFactory) -> None:
    """debug=1: a 60 s or 20 s ad fits neither the 30 s nor the 15 s slot: fits_no_slot,
    an eligibility reason; the ads placed are explained slot by slot."""
    from lxml import etree

    client = await make_client()
    doc = _exact_slots(30, 15, rqddurs=True)
    doc["ext"] = {"vastserver": {"debug": 1}}
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    root = etree.fromstring(await resp.read())
    ext = next(e for e in root.iter("{*}Extension") if e.get("type") == "vastserver-debug")
    data = json.loads(str(next(ext.iter("{*}Explanation")).text))
    assert [a["slot"] for a in data["pod"]["ads"]] == [1, 2]
    reasons = {c["reason"]: c["stage"] for c in data["candidates"] if not c["selected"]}
    assert reasons.get("fits_no_slot") == "eligibility"
    assert "duration_not_in_required" not in reasons


def _slot_fills(data: dict[str, Any]) -> list[tuple[int, int, str, int]]:
    """(slot played, slot rule, imp id, duration ms) of each ad an explanation places."""
    return [(a["slot"], a["slot_rule"], a["imp_id"], a["duration_ms"]) for a in data["pod"]["ads"]]


def _rule(imp_id: str, role: str | None, *, seconds: int, rqddurs: bool) -> dict[str, Any]:
    """A slot rule as the explanation lists it: exactly ``seconds`` long."""
    ms = None if rqddurs else seconds * 1000
    return {
        "imp_id": imp_id,
        "role": role,
        "min_duration_ms": ms,
        "max_duration_ms": ms,
        "required_durations_s": [seconds] if rqddurs else None,
    }


@pytest.mark.parametrize("rqddurs", [True, False], ids=["rqddurs", "min-max"])
async def test_debug_lists_the_slot_rules_and_the_imp_each_ad_fills(
    make_client: ClientFactory, rqddurs: bool
) -> None:
    """A [30 s, 15 s] structured pod: the explanation listed neither the slots' rules nor
    which imp each ad fills (an ad's ``slot`` is its place in play). The break now lists
    each rule with its imp id and role, and each ad names its rule and imp."""
    client = await make_client()
    doc = _exact_slots(30, 15, rqddurs=rqddurs)
    doc["ext"] = {"vastserver": {"debug": 1}}
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    data = _explanation(bytes(await resp.read()))
    assert data["break"]["slots"] == [
        _rule("slot-0", "first", seconds=30, rqddurs=rqddurs),
        _rule("slot-1", None, seconds=15, rqddurs=rqddurs),
    ]
    assert _slot_fills(data) == [(1, 0, "slot-0", 30_000), (2, 1, "slot-1", 15_000)]


async def test_an_ad_moved_up_past_an_empty_slot_names_the_imp_it_fills(
    make_client: ClientFactory,
) -> None:
    """[45 s, 30 s, 15 s]: no ad lasts 45 s, so the first slot stays empty and the ads
    play first and second: their ``slot`` (1, 2) is not their imp's place (rules 1 and 2,
    imps slot-1 and slot-2), which only ``slot_rule`` and ``imp_id`` tell."""
    client = await make_client()
    doc = _exact_slots(45, 30, 15, rqddurs=True)
    doc["ext"] = {"vastserver": {"debug": 1}}
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    data = _explanation(bytes(await resp.read()))
    assert [(r["imp_id"], r["role"]) for r in data["break"]["slots"]] == [
        ("slot-0", "first"),
        ("slot-1", None),
        ("slot-2", "last"),
    ]
    assert _slot_fills(data) == [(1, 1, "slot-1", 30_000), (2, 2, "slot-2", 15_000)]


async def test_the_decide_explanation_of_a_structured_pod_shows_the_same(
    make_client: ClientFactory,
) -> None:
    """``GET /decide`` takes no slot rules in its query, but its JSON is the same
    explanation, made with every dropped candidate (``explain``): a structured pod's
    decision made that way lists the rules and each ad's imp as ``debug=1`` does."""
    from vastserver.app import RUNTIME
    from vastserver.explain import decision_json

    client = await make_client()
    rt = client.app[RUNTIME]
    doc = _exact_slots(30, 15, rqddurs=True)
    doc["imp"][0]["video"]["slotinpod"] = 0
    doc["imp"][1]["video"]["slotinpod"] = -1
    pod = parse_bid_request(
        json.dumps(doc).encode(), CLIENT, rt.service.snapshot.catalog.rules_for(None)
    )
    decision = await rt.service.decide(pod.request, request_id="twin", explain=True)
    data = json.loads(json.dumps(decision_json(decision, request_id="twin")))
    assert data["break"]["slots"] == [
        _rule("slot-0", None, seconds=30, rqddurs=True),
        _rule("slot-1", "last", seconds=15, rqddurs=True),
    ]
    assert _slot_fills(data) == [(1, 0, "slot-0", 30_000), (2, 1, "slot-1", 15_000)]


async def test_a_structured_pod_search_out_of_budget_is_counted(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its work budget the slot search returns its best pod so far (here none: a budget
    of 0) and the service counts the degradation, as it does for a slow store."""
    import vastserver.pipeline.pod as pod_module

    client = await make_client()
    monkeypatch.setattr(pod_module, "_SLOT_BUDGET", 0)
    resp = await client.post("/openrtb2/pod", data=json.dumps(_exact_slots(30, 15, rqddurs=True)))
    assert resp.status in (200, 204), await resp.text()
    text = await (await client.get("/metrics")).text()
    line = 'vastserver_degradations_total{reason="pod_search_budget"} 1.0'
    assert line in text.splitlines()


def _explanation(xml: bytes) -> dict[str, Any]:
    from lxml import etree

    root = etree.fromstring(xml)
    for ext in root.iter("{*}Extension"):
        if ext.get("type") == "vastserver-debug":
            data: dict[str, Any] = json.loads(str(next(ext.iter("{*}Explanation")).text))
            return data
    comment = next(c for c in root.iter(etree.Comment) if "vastserver-debug" in str(c.text))
    data = json.loads(str(comment.text).split("vastserver-debug", 1)[1])
    return data


def _media_types(xml: bytes) -> list[str]:
    from lxml import etree

    return [str(m.get("type")) for m in etree.fromstring(xml).iter("{*}MediaFile")]


def _hls_only_catalog(tmp_path: Path) -> Path:
    """The demo catalog with Northstar's 15 s winter spot in HLS only."""
    from tests.test_catalog import demo_doc

    doc = demo_doc()
    cr = next(c for c in doc["creatives"] if c["id"] == "cr-northstar-winter-15")
    cr["renditions"] = [r for r in cr["renditions"] if r["mime"] == "application/x-mpegURL"]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    return path


async def test_video_mimes_pick_the_creatives_and_their_media_files(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``video.mimes`` used to be ignored: every rendition was listed and an HLS-only spot
    served to a player taking mp4 only. Now only creatives with a listed type serve (the
    others are ``mime_type``, a policy reason) and the VAST lists only those MediaFiles;
    the comparison ignores case and parameters."""
    client = await make_client(catalog=str(_hls_only_catalog(tmp_path)))
    doc = dynamic_pod()
    doc["imp"][0]["video"]["mimes"] = ['VIDEO/MP4; codecs="avc1.64001f"']
    doc["ext"] = {"vastserver": {"debug": 1}}
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    xml = bytes(await resp.read())
    assert _ads(xml), "the pod still fills"
    assert set(_media_types(xml)) == {"video/mp4"}
    _xsd_valid(xml)
    data = _explanation(xml)
    dropped = {
        (c["creative_id"], c["reason"], c["stage"]) for c in data["candidates"] if not c["selected"]
    }
    assert ("cr-northstar-winter-15", "mime_type", "policy") in dropped
    assert "cr-northstar-winter-15" not in {a["creative_id"] for a in data["pod"]["ads"]}
    text = await (await client.get("/metrics")).text()
    assert any(
        line.startswith('vastserver_rejections_total{reason="mime_type"')
        for line in text.splitlines()
    )

    # HLS accepted: the spot may serve, and only HLS media files are listed
    doc["imp"][0]["video"]["mimes"] = ["application/x-mpegurl"]
    doc["device"]["ifa"] = "mimes-viewer-2"
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    xml = bytes(await resp.read())
    assert _ads(xml)
    assert set(_media_types(xml)) == {"application/x-mpegURL"}
    _xsd_valid(xml)
    reasons = {c["creative_id"]: c["reason"] for c in _explanation(xml)["candidates"]}
    assert reasons.get("cr-northstar-winter-15") != "mime_type"


@pytest.mark.parametrize(
    ("mimes", "field"),
    [
        ([], "imp[0].video.mimes"),
        ("video/mp4", "imp[0].video.mimes"),
        (["video/mp4", 3], "imp[0].video.mimes[1]"),
        (["mp4"], "imp[0].video.mimes[0]"),
        ([" ;codecs=x"], "imp[0].video.mimes[0]"),
    ],
)
def test_bad_video_mimes_are_a_400_naming_them(mimes: object, field: str) -> None:
    doc = dynamic_pod()
    doc["imp"][0]["video"]["mimes"] = mimes
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == field


def test_video_mimes_are_what_every_imp_takes() -> None:
    """Any ad of a structured pod may go in any of its slots: the types all imps list."""
    doc = structured_pod()
    doc["imp"][0]["video"]["mimes"] = ["video/mp4", "Application/X-MpegURL"]
    doc["imp"][1]["video"]["mimes"] = ["video/mp4", "application/x-mpegurl", "video/webm"]
    del doc["imp"][2]["video"]["mimes"]  # (OpenRTB requires it; absent restricts nothing)
    got = parse(doc).request.mimes
    assert got == frozenset({"video/mp4", "application/x-mpegurl"})
    for imp in doc["imp"]:
        imp["video"].pop("mimes", None)
    assert parse(doc).request.mimes is None


async def test_a_test_request_reserves_nothing_and_its_beacons_count_nothing(
    make_client: ClientFactory,
) -> None:
    """``test`` = 1 used to be ignored: a test pod reserved caps and budget and its beacons
    counted as delivery. Now it is decided and rendered as usual, but the line items serve
    nothing and the ads' beacons (their tokens flagged) answer 204 without counting; the
    same request without ``test`` counts."""
    from urllib.parse import parse_qs, urlsplit

    from lxml import etree

    from tests.conftest import ADMIN

    auth = {"Authorization": f"Bearer {ADMIN}"}
    client = await make_client()

    async def serve(test: int, ifa: str) -> list[tuple[str, str]]:
        doc = dynamic_pod()
        doc["test"], doc["device"]["ifa"] = test, ifa
        resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
        assert resp.status == 200, await resp.text()
        xml = bytes(await resp.read())
        _xsd_valid(xml)
        out = []
        for ad in etree.fromstring(xml).iter("{*}Ad"):
            imp = urlsplit(str(next(ad.iter("{*}Impression")).text).strip())
            out.append((str(ad.get("id")), f"{imp.path}?{imp.query}"))
        return out

    async def served() -> dict[str, tuple[int, int]]:
        rows = await (await client.get("/admin/line-items", headers=auth)).json()
        return {r["id"]: (r["served"], r["delivered_impressions"]) for r in rows}

    start = await served()
    ads = await serve(1, "test-viewer")
    assert ads, "a test request is decided and rendered as usual"
    for _, url in ads:
        assert parse_qs(urlsplit(url).query)["tk"]
        assert (await client.get(url)).status == 204
    assert await served() == start
    text = await (await client.get("/metrics")).text()
    assert f'vastserver_beacons_total{{event="impression",result="test"}} {len(ads)}.0' in text
    # a preview, not a viewer's pod: fill rate leaves it out
    assert 'vastserver_previews_total{endpoint="openrtb_pod"} 1.0' in text
    assert "vastserver_pods_total{" not in text

    real = await serve(0, "real-viewer")
    for _, url in real:
        assert (await client.get(url)).status == 204
    after = await served()
    assert sum(s for s, _ in after.values()) == len(real)
    assert sum(d for _, d in after.values()) == len(real)
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_pods_total{result="filled"} 1.0' in text


async def test_a_test_request_needs_the_admin_token(make_client: ClientFactory) -> None:
    """An OpenRTB ``test`` = 1 request is a preview, as ``test=1`` on ``/vast``: its ads are
    counted and billed nowhere, so anyone sending it got ads delivered for free. It needs
    the admin bearer token (the scheme's name in any case, RFC 7235 §2.1); without
    ``test`` nothing changes for callers."""
    from tests.conftest import ADMIN

    client: Any = await make_client(debug_access="admin")
    doc = dynamic_pod()
    doc["test"] = 1
    body = json.dumps(doc)
    resp = await client.post("/openrtb2/pod", data=body)
    assert resp.status == 401
    got = await resp.json()
    assert got["field"] == "test" and "test request" in got["why"]
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {ADMIN}"}
        resp = await client.post("/openrtb2/pod", data=body, headers=headers)
        assert resp.status == 200, (scheme, await resp.text())
    assert (
        await client.post("/openrtb2/pod", data=body, headers={"Authorization": ADMIN})
    ).status == 401
    doc["test"] = 0
    assert (await client.post("/openrtb2/pod", data=json.dumps(doc))).status == 200


@pytest.mark.parametrize("ip", ["fe80::1%eth0", "::1%<a>", "2001:db8::1%25"])
def test_a_device_ip_with_an_ipv6_zone_is_a_400(ip: str) -> None:
    """``ipaddress`` takes any text after an IPv6 address's ``%`` (a zone): it was kept as
    the device's IP, into viewer keys and the event log."""
    doc = dynamic_pod()
    doc["device"]["ip"] = ip
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == "device.ip"


def test_test_flag_is_read_and_checked() -> None:
    doc = dynamic_pod()
    assert parse(doc).request.test is False  # "test": 0
    doc["test"] = 1
    assert parse(doc).request.test is True
    doc["test"] = 2
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == "test"


def test_cur_without_the_catalogs_currency_is_a_400() -> None:
    """``cur`` used to be ignored: a caller accepting only EUR got USD prices. The catalog
    prices in one currency, so a ``cur`` without it is a 400 naming ``cur`` (as a floor in
    another currency is one naming ``bidfloorcur``); absent, it means USD (OpenRTB's
    default), so it is a 400 on ``cur`` only when the catalog's currency is another."""
    doc = dynamic_pod()
    body = json.dumps(doc).encode()
    parse_bid_request(body, CLIENT, RULES, currency="USD")
    for cur, field in ((["EUR", "GBP"], "cur"), ([], "cur"), (["US-D"], "cur[0]"), ("USD", "cur")):
        doc["cur"] = cur
        with pytest.raises(ParamError) as e:
            parse(doc)
        assert e.value.field == field, cur
    doc["cur"] = ["eur", "usd"]
    parse(doc)
    del doc["cur"]
    parse(doc)
    del doc["imp"][0]["bidfloor"], doc["imp"][0]["video"]["mincpmpersec"]
    with pytest.raises(ParamError) as e:
        parse_bid_request(json.dumps(doc).encode(), CLIENT, RULES, currency="EUR")
    assert e.value.field == "cur" and "means USD" in e.value.why


@pytest.mark.parametrize("tmax", [0, -5, 1.5, "100", 600_001])
def test_bad_tmax_is_a_400_naming_it(tmax: object) -> None:
    doc = dynamic_pod()
    doc["tmax"] = tmax
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == "tmax"


def test_tmax_shortens_the_decision_budget() -> None:
    doc = dynamic_pod()
    del doc["tmax"]
    assert parse(doc).decision_budget_ms(150) == 150
    for tmax, want in ((1500, 150), (120, 100), (60, 40), (10, 5)):
        doc["tmax"] = tmax
        assert parse(doc).decision_budget_ms(150) == want, tmax


async def test_the_endpoint_decides_within_tmax(make_client: ClientFactory) -> None:
    """``tmax`` used to be ignored: the decision always had VASTSERVER_DEADLINE_MS (150 ms
    here) even when the caller gives up sooner. Now its deadline is tmax minus the network
    allowance when that is shorter."""
    import asyncio

    from vastserver.app import RUNTIME
    from vastserver.openrtb import TMAX_NETWORK_ALLOWANCE_MS

    client = await make_client(deadline_ms=150)
    service = client.app[RUNTIME].service
    budgets: list[float] = []
    decide = service.decide

    async def spy(*args: Any, deadline: float | None = None, **kw: Any) -> Any:
        assert deadline is not None
        budgets.append(deadline - asyncio.get_running_loop().time())
        return await decide(*args, deadline=deadline, **kw)

    service.decide = spy
    for tmax in (1500, 80):
        doc = dynamic_pod()
        doc["tmax"] = tmax
        resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
        assert resp.status == 200, await resp.text()
    assert 0.1 < budgets[0] <= 0.150
    assert 0 < budgets[1] <= (80 - TMAX_NETWORK_ALLOWANCE_MS) / 1000


def _tag_show(protocols: list[int] | None, ifa: str) -> dict[str, Any]:
    """A 90 s break of Tag Show, whose first-slot sponsorship is a third-party tag (the
    catalog of :func:`tests.test_third_party.wrapper_doc`), with these ``video.protocols``."""
    video: dict[str, Any] = {"poddur": 90, "maxseq": 3, "mimes": ["video/mp4"]}
    if protocols is not None:
        video["protocols"] = protocols
    return {
        "id": f"tag-show-{ifa}",
        "imp": [{"id": "1", "video": video}],
        "site": {"content": {"series": "tag-show"}},
        "device": {"ifa": ifa},
        "ext": {"vastserver": {"debug": 1}},
    }


def _forms(xml: bytes) -> list[str]:
    """``InLine`` or ``Wrapper``, for each ad of a VAST document."""
    from lxml import etree

    return [etree.QName(ad[0]).localname for ad in etree.fromstring(xml).iter("{*}Ad")]


@pytest.mark.parametrize(
    ("protocols", "version", "forms"),
    [
        ([3], "3.0", {"InLine"}),
        ([6], "3.0", {"Wrapper"}),
        ([3, 6], "3.0", {"InLine", "Wrapper"}),
        ([13, 16], "4.2", {"InLine"}),
        (None, "4.2", {"InLine", "Wrapper"}),
    ],
)
async def test_the_pod_has_only_the_ad_forms_the_protocols_list(
    make_client: ClientFactory,
    tmp_path: Path,
    protocols: list[int] | None,
    version: str,
    forms: set[str],
) -> None:
    """A third-party tag goes out as a ``<Wrapper>``: only to a player listing the version's
    wrapper code (it used to go to one listing ``[3]``), and inline ads only to one listing
    its inline code; the ads refused are ``protocol_not_accepted`` (a policy reason, in the
    metrics too). Without ``protocols``, as before: both."""
    from tests.support import conformance
    from tests.test_third_party import wrapper_doc

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(wrapper_doc()))
    client = await make_client(catalog=str(path))
    resp = await client.post("/openrtb2/pod", data=json.dumps(_tag_show(protocols, "forms-1")))
    assert resp.status == 200, await resp.text()
    xml = bytes(await resp.read())
    assert conformance.detect_vast_version(xml) == version
    assert set(_forms(xml)) == forms
    _xsd_valid(xml)
    candidates = _explanation(xml)["candidates"]
    refused = {c["creative_id"] for c in candidates if c["reason"] == "protocol_not_accepted"}
    assert {c["stage"] for c in candidates if c["reason"] == "protocol_not_accepted"} <= {"policy"}
    tags = {"cr-tp-30"}
    if "Wrapper" not in forms:
        assert refused == tags
    elif "InLine" not in forms:
        assert refused and not refused & tags  # every inline ad the policy reached
    else:
        assert not refused
    text = await (await client.get("/metrics")).text()
    line = 'vastserver_rejections_total{reason="protocol_not_accepted",stage="policy"}'
    assert any(x.startswith(line) for x in text.splitlines())


async def test_imps_without_a_common_vast_version_are_a_400_on_both_endpoints(
    make_client: ClientFactory,
) -> None:
    """Imps taking VAST 2.0 only and 4.2 only: one answer cannot play in both, a 400 on
    the second imp's protocols (it used to serve 4.2 to both)."""
    client = await make_client()
    doc = {
        "id": "r",
        "imp": [
            {"id": "a", "video": {"podid": "p", "maxduration": 30, "protocols": [2]}},
            {"id": "b", "video": {"podid": "p", "maxduration": 30, "protocols": [13]}},
        ],
    }
    for endpoint in ("/openrtb2/pod", "/openrtb2/auction"):
        resp = await client.post(endpoint, data=json.dumps(doc))
        assert resp.status == 400, endpoint
        got = await resp.json()
        assert got["field"] == "imp[1].video.protocols", got
        assert "VAST 2.0 inline" in got["why"] and "VAST 4.2 inline" in got["why"], got


# ------------------------------------------------------------------ creative attributes

ATTR_SHOW = "attr-show"
ATTR_CREATIVES: dict[str, dict[str, Any]] = {
    "plain": {},
    "simid": {"interactive": [{"url": "https://simid.example/a.html", "api_framework": "SIMID"}]},
    "vpaid": {"api_framework": "VPAID"},
    "game": {"attributes": [13]},
    "racy": {"attributes": [15, 9]},
    "skippable": {"skip_offset": 5},
}
"""One 15 s creative each, of an advertiser of its own (a pod takes one ad an advertiser),
served by a sponsorship of :data:`ATTR_SHOW`: ``simid``, ``vpaid`` and ``game`` have AdCOM
attribute 13 (user interactive), ``racy`` 9 and 15, ``skippable`` none (a skip offset makes
no 16: VAST's skip button is the player's)."""
INTERACTIVE = {"cr-attr-simid", "cr-attr-vpaid", "cr-attr-game"}


def attributes_doc() -> dict[str, Any]:
    """The demo catalog plus :data:`ATTR_CREATIVES`."""
    doc: dict[str, Any] = json.loads(DEMO_CATALOG.read_text())
    for n, (key, fields) in enumerate(ATTR_CREATIVES.items()):
        doc["advertisers"].append(
            {"id": f"adv-attr-{key}", "name": key, "domain": f"{key}.example"}
        )
        doc["campaigns"].append(
            {
                "id": f"cmp-attr-{key}",
                "advertiser_id": f"adv-attr-{key}",
                "name": key,
                "start": "2026-01-01T00:00:00Z",
                "end": "2099-12-31T23:59:59Z",
            }
        )
        doc["creatives"].append(
            {
                "id": f"cr-attr-{key}",
                "advertiser_id": f"adv-attr-{key}",
                "title": f"attributes {key}",
                "duration": 15,
                "universal_ad_id": f"ATTR{n:04d}000H",
                "renditions": [
                    {
                        "url": f"https://cdn.example.com/attr/{key}.mp4",
                        "mime": "video/mp4",
                        "width": 1920,
                        "height": 1080,
                    }
                ],
                **fields,
            }
        )
        doc["line_items"].append(
            {
                "id": f"li-attr-{key}",
                "campaign_id": f"cmp-attr-{key}",
                "name": key,
                "tier": "sponsorship",
                "creative_ids": [f"cr-attr-{key}"],
                "price": 30 - n,
                "targeting": {"series": {"include": [ATTR_SHOW]}},
            }
        )
    return doc


def attributes_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "attributes-catalog.json"
    path.write_text(json.dumps(attributes_doc()))
    return path


def attr_pod(*battrs: list[int] | None, viewer: str = "attr-viewer") -> dict[str, Any]:
    """A mid-roll of the attributes show with room for every one of its ads, one imp per
    ``battr`` (None: the imp has none), on a desktop player (VPAID plays there) and with
    the explanation."""

    def imp(i: int, battr: list[int] | None) -> dict[str, Any]:
        video: dict[str, Any] = {"podid": "p", "maxduration": 30, "protocols": [13]}
        if len(battrs) == 1:
            video.update(poddur=120, maxseq=8)
        if battr is not None:
            video["battr"] = battr
        return {"id": f"i{i}", "video": video}

    return {
        "id": f"attr-{viewer}",
        "imp": [imp(i, b) for i, b in enumerate(battrs)],
        "app": {"id": "a", "content": {"series": ATTR_SHOW, "contentrating": "TV-14"}},
        "device": {"devicetype": 2, "ip": "203.0.113.9", "ifa": viewer},
        "ext": {"vastserver": {"debug": 1}},
    }


async def _attr_decision(client: Any, doc: dict[str, Any]) -> tuple[set[str], dict[str, str]]:
    """The creatives a pod serves, and the reason of each creative not served."""
    resp = await client.post("/openrtb2/pod", data=json.dumps(doc))
    assert resp.status == 200, await resp.text()
    data = _explanation(bytes(await resp.read()))
    served = {a["creative_id"] for a in data["pod"]["ads"]}
    reasons = {c["creative_id"]: c["reason"] for c in data["candidates"] if not c["selected"]}
    for c in data["candidates"]:
        if c["reason"] == "blocked_attribute":
            assert c["stage"] == "policy"
    return served, reasons


async def test_battr_blocks_interactive_creatives_declared_or_derived(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``video.battr`` used to be ignored: a player blocking 13 (user interactive) got a
    SIMID or VPAID ad. Now a creative declaring a blocked attribute, or having 13 by its
    SIMID files or VPAID, is ``blocked_attribute`` (a policy reason, in the metrics too);
    a skip offset is no 16, and a code past AdCOM's 17 blocks nothing."""
    client = await make_client(catalog=str(attributes_catalog(tmp_path)))
    mine = {f"cr-attr-{k}" for k in ATTR_CREATIVES}
    served, _ = await _attr_decision(client, attr_pod(None, viewer="v0"))
    assert served >= mine  # without battr every one of them serves

    served, reasons = await _attr_decision(client, attr_pod([13], viewer="v1"))
    assert not served & INTERACTIVE
    assert served >= mine - INTERACTIVE
    assert {cr for cr, why in reasons.items() if why == "blocked_attribute"} == INTERACTIVE

    served, reasons = await _attr_decision(client, attr_pod([15, 16, 999], viewer="v2"))
    assert "cr-attr-racy" not in served and reasons["cr-attr-racy"] == "blocked_attribute"
    assert served >= mine - {"cr-attr-racy"}  # the skippable ad is no 16
    text = await (await client.get("/metrics")).text()
    line = 'vastserver_rejections_total{reason="blocked_attribute",stage="policy"}'
    assert any(x.startswith(line) and not x.endswith(" 0.0") for x in text.splitlines())

    # /decide (and /vast) take it as a query parameter
    resp = await client.get(
        "/decide", params={"series": ATTR_SHOW, "pod_duration": "120", "max_ads": "8",
                           "rating": "TV-14", "device_type": "desktop", "battr": "13,9"}
    )  # fmt: skip
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    blocked = INTERACTIVE | {"cr-attr-racy"}
    assert not {a["creative_id"] for a in data["pod"]["ads"]} & blocked
    got = {c["creative_id"] for c in data["candidates"] if c["reason"] == "blocked_attribute"}
    assert got == blocked


async def test_battr_of_every_imp_applies_to_the_whole_pod(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Any ad may go in any slot (as for ``mimes``): what one imp blocks, no imp gets."""
    client = await make_client(catalog=str(attributes_catalog(tmp_path)))
    doc = attr_pod([9], None, [13], viewer="v3")
    served, reasons = await _attr_decision(client, doc)
    blocked = INTERACTIVE | {"cr-attr-racy"}
    assert not served & blocked
    assert {cr for cr, why in reasons.items() if why == "blocked_attribute"} == blocked


def test_battr_is_the_union_of_the_imps() -> None:
    doc = structured_pod()
    doc["imp"][0]["video"]["battr"] = [13, 9]
    doc["imp"][1]["video"]["battr"] = []
    doc["imp"][2]["video"]["battr"] = [16.0, 1000]
    assert parse(doc).request.blocked_attributes == frozenset({9, 13, 16, 1000})
    for imp in doc["imp"]:
        del imp["video"]["battr"]
    assert parse(doc).request.blocked_attributes == frozenset()


@pytest.mark.parametrize(
    ("battr", "field"),
    [
        (13, "imp[0].video.battr"),
        ("13", "imp[0].video.battr"),
        ({"13": 1}, "imp[0].video.battr"),
        ([13, "9"], "imp[0].video.battr[1]"),
        ([0], "imp[0].video.battr[0]"),
        ([13, 1001], "imp[0].video.battr[1]"),
        ([-1], "imp[0].video.battr[0]"),
        ([2.5], "imp[0].video.battr[0]"),
        ([True], "imp[0].video.battr[0]"),
        ([None], "imp[0].video.battr[0]"),
        (list(range(1, 40)), "imp[0].video.battr"),
    ],
)
async def test_a_malformed_battr_is_a_400_naming_it_on_both_endpoints(
    make_client: ClientFactory, battr: object, field: str
) -> None:
    doc = dynamic_pod()
    doc["imp"][0]["video"]["battr"] = battr
    with pytest.raises(ParamError) as e:
        parse(doc)
    assert e.value.field == field
    client = await make_client()
    for endpoint in ("/openrtb2/pod", "/openrtb2/auction"):
        resp = await client.post(endpoint, data=json.dumps(doc))
        assert resp.status == 400, endpoint
        got = await resp.json()
        assert got["error"] == "bad_request" and got["field"] == field, got


async def test_imps_without_podid_are_one_pod(make_client: ClientFactory) -> None:
    """A request is one pod, ``podid`` or not (README): a Prebid-style pre-roll imp and
    mid-roll imp without ``podid`` are a 400 naming the second imp's ``startdelay``."""
    client = await make_client()
    video = {"mimes": ["video/mp4"], "maxduration": 30}
    doc = {
        "id": "prebid-1",
        "imp": [
            {"id": "pre", "video": {**video, "startdelay": 0}},
            {"id": "mid", "video": {**video, "startdelay": -1}},
        ],
        "device": {"ua": "Roku/DVP-9.10", "ip": "8.8.8.8", "devicetype": 3},
    }
    for path in ("/openrtb2/pod", "/openrtb2/auction"):
        resp = await client.post(path, data=json.dumps(doc))
        assert resp.status == 400, path
        got = await resp.json()
        assert got["field"] == "imp[1].video.startdelay", got
        assert "one pod" in got["why"]
