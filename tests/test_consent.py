"""GDPR consent: TC strings decoded, and what a decision may use under them, end to end."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ClientFactory
from vastserver.app import RUNTIME
from vastserver.consent import (
    NO_SIGNALS,
    GppSignals,
    Permissions,
    PrivacySignals,
    decode_tc_string,
    parse_gpp_sid,
    permissions,
    read_gpp,
    read_privacy,
    us_privacy_opt_out,
)
from vastserver.settings import SettingsError, load_settings
from vastserver.tracking import verify

# TC strings with the contents the IAB Tech Lab's reference decoder (iabtcf-java) finds in
# them: (string, purposes consented, purposes under legitimate interest, vendors consented).
REFERENCE = [
    ("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA", {2, 10}, {2, 9}, set()),
    (
        "COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA",
        {3, 4, 5, 6, 7, 8, 9},
        set(),
        {23, 37, 47, 48, 53, 65, 98},
    ),
    (  # vendor consents range-encoded, with the other segments after the core
        "COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA.IFoEUQQgAIQwgIwQABAEAAAA"
        "OIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAA"
        "AQmAgBC3ZAYzUw",
        set(),
        set(),
        {702, 703},
    ),
    ("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA", set(), set(), {703}),
    ("COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA", {1, 2}, set(), set()),
]


@pytest.mark.parametrize(("text", "purposes", "li", "vendors"), REFERENCE)
def test_decodes_what_the_reference_decoder_reads(
    text: str, purposes: set[int], li: set[int], vendors: set[int]
) -> None:
    tc = decode_tc_string(text)
    assert tc.purposes_consent == purposes
    assert tc.purposes_legitimate_interest == li
    assert {v for v in range(1, 1000) if tc.vendor_consents(v)} == vendors


V1_STRING = "BOOlLqOOOlLqTABABAENAk-AAAAXx7_______9______9uz_Gv_r_f__3nW8_3"


def _bitfield_section(vendors: AbstractSet[int]) -> str:
    """A vendor section as a bit field: MaxVendorId, IsRangeEncoding 0, one bit a vendor."""
    max_vendor = max(vendors, default=0)
    return (
        format(max_vendor, "016b")
        + "0"
        + "".join("1" if v in vendors else "0" for v in range(1, max_vendor + 1))
    )


def _restrictions_section(restrictions: list[tuple[int, int, list[tuple[int, int]]]]) -> str:
    """NumPubRestrictions, then each (purpose, type, [(first, last) vendor ranges])."""
    out = format(len(restrictions), "012b")
    for purpose, kind, ranges in restrictions:
        out += format(purpose, "06b") + format(kind, "02b") + format(len(ranges), "012b")
        for a, b in ranges:
            single = "0" + format(a, "016b")
            out += single if a == b else "1" + format(a, "016b") + format(b, "016b")
    return out


def tc_string(
    purposes: AbstractSet[int],
    li: AbstractSet[int] = frozenset(),
    vendors: AbstractSet[int] = frozenset(),
    restrictions: list[tuple[int, int, list[tuple[int, int]]]] | None = None,
    li_vendors: AbstractSet[int] = frozenset(),
) -> str:
    """A core segment written field by field (TCF v2 layout), vendor sections as bit
    fields, then the publisher restrictions."""
    bits = (
        format(2, "06b")  # version
        + "0" * 146  # created ... special feature opt-ins (we do not read them)
        + "".join("1" if p in purposes else "0" for p in range(1, 25))
        + "".join("1" if p in li else "0" for p in range(1, 25))
        + "0"  # purpose one treatment
        + "0" * 12  # publisher country
        + _bitfield_section(vendors)
        + _bitfield_section(li_vendors)
        + _restrictions_section(restrictions or [])
    )
    bits += "0" * (-len(bits) % 8)
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_the_writer_above_agrees_with_the_decoder() -> None:
    tc = decode_tc_string(tc_string({1, 4, 24}, {2}, {1, 77, 300}))
    assert tc.purposes_consent == {1, 4, 24}
    assert tc.purposes_legitimate_interest == {2}
    assert {v for v in range(1, 1000) if tc.vendor_consents(v)} == {1, 77, 300}


def _ranges_string(entries: list[tuple[int, int]], purposes: AbstractSet[int]) -> str:
    """A core segment whose vendor consents are range-encoded (TCF v2 layout)."""
    bits = (
        format(2, "06b")
        + "0" * 146
        + "".join("1" if p in purposes else "0" for p in range(1, 25))
        + "0" * 24
        + "0" * 13
        + format(65535, "016b")
        + "1"  # ranges
        + format(len(entries), "012b")
        + "".join("1" + format(a, "016b") + format(b, "016b") for a, b in entries)
        + _bitfield_section(set())  # no legitimate interests
        + _restrictions_section([])
    )
    bits += "0" * (-len(bits) % 6)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def test_a_string_of_huge_ranges_costs_its_length_not_its_ranges() -> None:
    """711 ranges of 1..65535 fit in 4 KB; expanded, they held the loop for 1.2 s a
    request. Membership is now read off the ranges."""
    text = _ranges_string([(1, 65535)] * 711, {1, 2, 3, 4})
    assert len(text) <= 4096
    tc = decode_tc_string(text)
    assert tc.vendor_consents(755) and not tc.vendor_consents(0)
    assert permissions(True, text, 755) == permissions(True, tc_string({1, 2, 3, 4}))
    gapped = decode_tc_string(_ranges_string([(10, 20), (700, 800)], set()))
    assert [v for v in (9, 10, 20, 21, 699, 700, 800, 801) if gapped.vendor_consents(v)] == [
        10,
        20,
        700,
        800,
    ]
    cut = _ranges_string([(10, 20)] * 3, {1, 2})[:-10]  # entries promised, not there
    assert permissions(True, cut, 5) == permissions(True, None)


def test_a_range_section_ending_on_a_character_boundary_is_no_consent() -> None:
    """Three entries promised, two single ids given, and the bits end exactly at a
    character: reading the third entry's first bit ran off the end (IndexError, a 503).
    A string cut short is no consent for any vendor, even one listed before the cut."""
    bits = (
        format(2, "06b")
        + "0" * 146
        + "1" * 24
        + "0" * 24
        + "0" * 13
        + format(65535, "016b")
        + "1"
        + format(3, "012b")
        + "0" + format(5, "016b")
        + "0" + format(9, "016b")
    )  # fmt: skip
    assert len(bits) % 6 == 0
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    text = "".join(alphabet[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))
    with pytest.raises(ValueError, match="too short"):
        decode_tc_string(text).vendor_consents(5)
    for vendor in (5, 9, 77):
        assert permissions(True, text, vendor) == permissions(True, None)


@pytest.mark.parametrize(
    "text",
    [
        "COwxsONOwxsONKpAAAENAdCAAMAAAAAA AAAAAAAAAAAA",  # a space
        "COwxsONOwxsONKpAAAENAdCAAMAAAAAA!AAAAAAAAAAAA",
        "COwxsONOwxsONKpAAAENAdCAAMAAAAAA+AAAAAAAAAAAA",  # base64, not base64url
        "COwxsONOwxsONKpAAAENAdCAAMAAAAAA=AAAAAAAAAAAA",
        "COwxsONOwxsONKpAAAENAdCAAMAAAAAA\x00AAAAAAAAAAA",
        "",
        ".",
    ],
)
def test_characters_outside_base64url_make_it_no_string(text: str) -> None:
    with pytest.raises(ValueError):
        decode_tc_string(text)


def test_a_core_segment_cut_at_any_character_still_decodes() -> None:
    """Encoders pad a segment's bits only to a character (6 bits): a length of 4n + 1 is
    valid (Python's base64 refuses it)."""
    text = "COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAAB"
    assert len(text) % 4 == 1
    assert decode_tc_string(text).purposes_consent == {1, 2}


@pytest.mark.parametrize(
    ("applies", "consent", "vendor", "device_id", "segments"),
    [
        (False, None, None, True, True),  # the GDPR does not apply: as before
        (False, "garbage", None, True, True),
        (True, None, None, False, False),  # applies, no string: no consent
        (True, "", None, False, False),
        (True, "%%%not-base64%%%", None, False, False),
        (True, "AAAA", None, False, False),  # too short, and version 0
        (
            True,
            "BOOlLqOOOlLqTABABAENAk-AAAAXx7_______9______9uz_Gv_r_f__3nW8_3",
            None,
            False,
            False,
        ),
        (True, tc_string({1, 2}), None, True, False),  # device id, no personalised ads
        (True, tc_string({1}, li={2}), None, True, False),  # purpose 2 on legitimate interest
        (True, tc_string({2, 4}), None, False, False),  # nothing without purpose 1
        (True, tc_string({1, 4}), None, False, True),
        (True, tc_string({1, 2, 3, 4}), None, True, True),
        # purpose 4 (personalised ads) on legitimate interest only: TCF 2.2 does not allow it
        (True, tc_string({1, 2, 3}, li={4}), None, True, False),
        (True, tc_string({1, 2, 3, 4}, vendors={5}), 5, True, True),
        (True, tc_string({1, 2, 3, 4}, vendors={5}), 6, False, False),  # not our vendor
        # purpose 2 on legitimate interest alone: our vendor's must be listed too (TCF 2.2),
        # else the viewer objected to it
        (True, tc_string({1}, li={2}, vendors={5}), 5, False, False),
        (True, tc_string({1}, li={2}, vendors={5}, li_vendors={6}), 5, False, False),
        (True, tc_string({1}, li={2}, vendors={5}, li_vendors={5}), 5, True, False),
        (True, tc_string({1, 2}, li={2}, vendors={5}), 5, True, False),  # consented: enough
        (True, tc_string({1}, li={2}, vendors={5}), None, True, False),  # no id to look up
    ],
)
def test_permissions(
    applies: bool, consent: str | None, vendor: int | None, device_id: bool, segments: bool
) -> None:
    got = permissions(applies, consent, vendor)
    assert (got.device_id, got.segments) == (device_id, segments)


# ---------------------------------------------------------------------------- end to end


async def _viewer(client: Any, query: str) -> tuple[dict[str, Any], dict[str, Any]]:
    resp = await client.get("/decide?pod_duration=60&session=sess-1&" + query)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return body["viewer"], body


async def test_vast_without_consent_neither_keys_on_the_device_nor_uses_segments(
    make_client: ClientFactory,
) -> None:
    client: Any = await make_client()
    full = tc_string({1, 2, 3, 4})
    base = "device_id=ifa-gdpr-1&segments=sports,auto"
    assert (await _viewer(client, base))[0] == {
        "limited_tracking": False,
        "segments": ["sports", "auto"],
        "gdpr": None,
    }
    assert (await _viewer(client, base + "&gdpr=1"))[0] == {
        "limited_tracking": True,
        "segments": [],
        "gdpr": True,
    }
    assert (await _viewer(client, f"{base}&gdpr=1&gdpr_consent={full}"))[0] == {
        "limited_tracking": False,
        "segments": ["sports", "auto"],
        "gdpr": True,
    }
    assert (await _viewer(client, f"{base}&gdpr_consent={tc_string({1, 2})}"))[0] == {
        "limited_tracking": False,
        "segments": [],
        "gdpr": True,
    }
    assert (await _viewer(client, f"{base}&gdpr=0&gdpr_consent=junk"))[0]["segments"] == [
        "sports",
        "auto",
    ]
    resp = await client.get("/vast?gdpr=yes")
    assert resp.status == 400
    assert (await resp.json())["field"] == "gdpr"
    resp = await client.get("/vast?gdpr=1&gdpr_consent=" + "A" * 4097)
    assert resp.status in (400, 414)


async def _viewer_hash(client: Any, query: str) -> str:
    """The viewer hash (the key its caps and history follow) in the signed impression
    token of the first ad of a 30-second ``/vast`` pod for ``query``."""
    resp = await client.get("/vast?pod_duration=30&max_ads=1&" + query)
    assert resp.status == 200
    m = re.search(r"<Impression[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", await resp.text())
    assert m is not None
    raw = parse_qs(urlsplit(m.group(1)).query)["tk"][0]
    rt = client.server.app[RUNTIME]
    now = int(rt.clock().timestamp())
    return verify(raw, rt.keyring, now=now, max_age_s=3600, event="impression").viewer_hash


async def test_without_consent_caps_follow_the_session_not_the_device(
    make_client: ClientFactory,
) -> None:
    """Two sessions of one device: with consent both are the device's viewer (one history,
    one set of caps); without it each session is a viewer of its own, as under ``lmt=1``."""
    client: Any = await make_client()
    consented = f"gdpr=1&gdpr_consent={tc_string({1, 2})}"
    hashes: dict[tuple[str, str], str] = {}
    for label, extra in (("consent", consented), ("none", "gdpr=1")):
        for session in ("a", "b"):
            hashes[label, session] = await _viewer_hash(
                client, f"device_id=ifa-gdpr-2&session={label}-{session}&{extra}"
            )
    assert hashes["consent", "a"] == hashes["consent", "b"]
    assert hashes["none", "a"] != hashes["none", "b"]
    assert hashes["consent", "a"] not in (hashes["none", "a"], hashes["none", "b"])


async def _rtb_viewer(client: Any, body: dict[str, Any]) -> Any:
    """The ``viewer`` part of the debug explanation of an OpenRTB pod."""
    resp = await client.post("/openrtb2/pod", data=json.dumps(body))
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    m = re.search(r"<Explanation><!\[CDATA\[(.*?)\]\]></Explanation>", text, re.S)
    if m is None:
        m = re.search(r"<!--\s*vastserver-debug\s*(.*?)-->", text, re.S)
    assert m is not None, text[:400]
    return json.loads(m.group(1))["viewer"]


async def test_openrtb_reads_regs_gdpr_and_user_consent(make_client: ClientFactory) -> None:
    client: Any = await make_client()

    def bid(regs: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "r1",
            "imp": [{"id": "1", "video": {"poddur": 60, "maxseq": 2, "mimes": ["video/mp4"]}}],
            "device": {"ifa": "ifa-rtb-1", "devicetype": 3},
            "user": {"data": [{"segment": [{"id": "sports"}]}], **user},
            "regs": regs,
            "ext": {"vastserver": {"debug": 1, "session": "rtb-s"}},
        }

    async def viewer(body: dict[str, Any]) -> Any:
        return await _rtb_viewer(client, body)

    full = tc_string({1, 2, 3, 4})
    personal = {"limited_tracking": False, "segments": ["sports"]}
    assert await viewer(bid({}, {})) == {**personal, "gdpr": None}
    assert await viewer(bid({"gdpr": 1}, {})) == {
        "limited_tracking": True,
        "segments": [],
        "gdpr": True,
    }
    assert await viewer(bid({"gdpr": 1}, {"consent": full})) == {**personal, "gdpr": True}
    assert await viewer(bid({"ext": {"gdpr": 1}}, {"ext": {"consent": tc_string({1, 2})}})) == {
        "limited_tracking": False,
        "segments": [],
        "gdpr": True,
    }
    # an ext of another shape is someone else's extension: not ours to refuse
    assert await viewer(bid({"ext": "x"}, {"ext": 5})) == {**personal, "gdpr": None}
    resp = await client.post("/openrtb2/pod", data=json.dumps(bid({"gdpr": 2}, {})))
    assert resp.status == 400
    assert (await resp.json())["field"] == "regs.gdpr"


async def test_with_a_vendor_id_the_string_must_consent_to_our_vendor(
    make_client: ClientFactory,
) -> None:
    client: Any = await make_client(tcf_vendor_id=77)
    ours = tc_string({1, 2, 3, 4}, vendors={77})
    others = tc_string({1, 2, 3, 4}, vendors={12, 78})
    base = "device_id=ifa-gdpr-3&segments=news&gdpr=1"
    assert (await _viewer(client, f"{base}&gdpr_consent={ours}"))[0]["limited_tracking"] is False
    assert (await _viewer(client, f"{base}&gdpr_consent={others}"))[0] == {
        "limited_tracking": True,
        "segments": [],
        "gdpr": True,
    }


P1_2_4 = {1, 2, 4}


@pytest.mark.parametrize(
    ("consent", "vendor", "device_id", "segments"),
    [
        # purpose 1 flatly not allowed for vendors 70-80: nothing personal for vendor 77
        (tc_string(P1_2_4, vendors={77}, restrictions=[(1, 0, [(70, 80)])]), 77, False, False),
        # ... but vendor 81 is not restricted, and without our vendor id none applies
        (tc_string(P1_2_4, vendors={81}, restrictions=[(1, 0, [(70, 80)])]), 81, True, True),
        (tc_string(P1_2_4, restrictions=[(1, 0, [(70, 80)])]), None, True, True),
        # purpose 4 not allowed: the device id stays, the segments go
        (tc_string(P1_2_4, vendors={77}, restrictions=[(4, 0, [(77, 77)])]), 77, True, False),
        # purpose 2 on legitimate interest only, and the publisher requires consent for it
        (tc_string({1}, {2}, {77}, restrictions=[(2, 1, [(77, 77)])]), 77, False, False),
        (tc_string({1, 2}, {2}, {77}, restrictions=[(2, 1, [(77, 77)])]), 77, True, False),
        # purpose 2 consented only, and the publisher requires legitimate interest for it
        (tc_string({1, 2}, set(), {77}, restrictions=[(2, 2, [(77, 77)])]), 77, False, False),
        (
            tc_string({1, 2}, {2}, {77}, restrictions=[(2, 2, [(77, 77)])], li_vendors={77}),
            77,
            True,
            False,
        ),
        # "require legitimate interest" on purpose 1, which has none: purpose 1 is lost
        (tc_string(P1_2_4, vendors={77}, restrictions=[(1, 2, [(77, 77)])]), 77, False, False),
        # several restrictions; the one on vendor 77 is in the second
        (
            tc_string(P1_2_4, vendors={77}, restrictions=[(4, 0, [(5, 5)]), (4, 0, [(76, 78)])]),
            77,
            True,
            False,
        ),
    ],
)
def test_publisher_restrictions_on_our_vendor_apply(
    consent: str, vendor: int | None, device_id: bool, segments: bool
) -> None:
    got = permissions(True, consent, vendor)
    assert (got.device_id, got.segments) == (device_id, segments)


def test_restrictions_cut_short_are_no_consent() -> None:
    """A string whose restriction section promises more than it holds cannot be read: no
    consent, as for a cut vendor section (without a vendor id it is not read at all)."""
    whole = tc_string(P1_2_4, vendors={77}, restrictions=[(4, 0, [(76, 78)] * 40)])
    assert permissions(True, whole, 77) == Permissions(device_id=True, segments=False)
    cut = whole[: len(whole) // 2 + 20]
    assert permissions(True, cut, 77) == permissions(True, None)
    assert permissions(True, cut, None) == permissions(True, tc_string(P1_2_4))


def test_tc_strings_of_the_reference_library_read_alike() -> None:
    """300 random core segments written by the IAB reference library (@iabtechlabtcf/core
    1.5.21, tests/node/tcf.mjs): purposes, vendors and publisher restrictions read back as
    written, and the permissions follow the restrictions on each vendor."""
    node_dir = Path(__file__).parent / "node"
    if shutil.which("node") is None or not (node_dir / "node_modules/@iabtechlabtcf").is_dir():
        pytest.skip("node or @iabtechlabtcf/core missing (`make node-deps`)")
    proc = subprocess.run(
        ["node", "tcf.mjs", "300", "11"], cwd=node_dir, capture_output=True, check=True, timeout=120
    )
    restricted = objected = 0
    for case in json.loads(proc.stdout):
        tc = decode_tc_string(case["tc"])
        assert tc.purposes_consent == set(case["purposes"]), case
        assert tc.purposes_legitimate_interest == set(case["li"]), case
        vendors = set(case["vendors"])
        for vendor in (1, 5, 76, 77, 78, 300, 755, 999, 1000, 1100, 1199, 1200):
            assert tc.vendor_consents(vendor) is (vendor in vendors), (case, vendor)
            kinds: dict[int, set[int]] = {}
            for purpose, kind, listed in case["restrictions"]:
                if vendor in listed:
                    kinds.setdefault(purpose, set()).add(kind)
            assert tc.restrictions(vendor) == kinds, (case, vendor)
            restricted += bool(kinds)
            # the policy, from what the library says it wrote
            consent = {p for p in case["purposes"] if not kinds.get(p, set()) & {0, 2}}
            li = {p for p in case["li"] if not kinds.get(p, set()) & {0, 1}}
            mine = vendor in vendors and 1 in consent
            # purpose 2 on legitimate interest alone: our vendor's legitimate interest too
            interest = 2 in li and vendor in case["li_vendors"]
            objected += mine and 2 not in consent and 2 in li and not interest
            expected = Permissions(
                device_id=mine and (2 in consent or interest), segments=mine and 4 in consent
            )
            assert permissions(True, case["tc"], vendor) == expected, (case, vendor)
            assert tc.vendor_legitimate_interest(vendor) is (vendor in case["li_vendors"])
    assert restricted > 200
    assert objected > 5  # the library wrote strings where the vendor LI decides


def test_the_vendor_id_setting_is_range_checked() -> None:
    assert load_settings({"VASTSERVER_TCF_VENDOR_ID": "755"}).tcf_vendor_id == 755
    assert load_settings({}).tcf_vendor_id is None
    for bad in ("0", "65536", "abc"):
        with pytest.raises(SettingsError, match="VASTSERVER_TCF_VENDOR_ID"):
            load_settings({"VASTSERVER_TCF_VENDOR_ID": bad})


def test_the_gdpr_by_geo_setting_is_a_boolean() -> None:
    assert load_settings({}).gdpr_by_geo is False
    assert load_settings({"VASTSERVER_GDPR_BY_GEO": ""}).gdpr_by_geo is False  # unset
    for on in ("1", "true", "TRUE"):
        assert load_settings({"VASTSERVER_GDPR_BY_GEO": on}).gdpr_by_geo is True
    for off in ("0", "false", "False"):
        assert load_settings({"VASTSERVER_GDPR_BY_GEO": off}).gdpr_by_geo is False
    # the name overrides use (vastserver simulate --setting gdpr_by_geo=1), over the variable
    overridden = load_settings({"VASTSERVER_GDPR_BY_GEO": "0"}, {"gdpr_by_geo": "1"})
    assert overridden.gdpr_by_geo is True
    for bad in ("yes", "on", "2", "-1"):
        with pytest.raises(SettingsError, match="VASTSERVER_GDPR_BY_GEO: must be 0 or 1"):
            load_settings({"VASTSERVER_GDPR_BY_GEO": bad})


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.",
        max_size=120,
    ),
    st.sampled_from([None, 1, 5, 77, 65535]),
    st.booleans(),
)
def test_no_consent_string_raises(text: str, vendor: int | None, prefix: bool) -> None:
    """Whatever a client sends, the answer is a set of permissions, never an exception."""
    if prefix:  # a valid v2 header with every purpose, then anything
        text = "COwxsONOwxsONKpAAAENAdCAAMAAAAAAAAAAAAAAAAAA"[:40] + text
    got = permissions(True, text, vendor)
    assert isinstance(got.device_id, bool) and isinstance(got.segments, bool)


# ------------------------------------------------------------------- US privacy and GPP


@pytest.mark.parametrize(
    ("text", "opted_out"),
    [
        ("1YNN", False),
        ("1NNN", False),
        ("1---", False),  # the CCPA does not apply
        ("1YYN", True),
        ("1NYY", True),
        ("1-Y-", True),
        # not a version 1 string: the signal was sent and cannot be read
        ("2YNN", True),
        ("1YN", True),
        ("1ynn", True),
        ("", True),
        ("1YNNN", True),
    ],
)
def test_us_privacy_string(text: str, opted_out: bool) -> None:
    assert us_privacy_opt_out(text) is opted_out


# GPP strings written by the IAB reference library (@iabgpp/cmpapi 3.2.0, tests/node/gpp.mjs),
# with what each of their sections says: opted out of sale, sharing or targeted advertising.
GPP_REFERENCE: list[tuple[str, dict[int, bool]]] = [
    ("DBABLA~ClRaAAAAAABA.QA", {7: True}),  # usnat v2
    ("DBABQw~BmYAAABA.QA", {14: True}),
    ("DBAC16s~BVoAAAEA.QA~BWAAAACA~Biog.AAA", {12: False, 13: False, 25: False}),
    ("DBACUyY~BqYAAAABAA.YA~BiqQ.AAA", {17: True, 27: True}),
    ("DBADBjM~BpQAAABA.QA~BiKAAAQA~BmYAAABA", {8: True, 11: False, 13: True}),
    ("DBACTzw~1-Y-~BmUAAAEA.QA~BVEAAABA", {6: True, 12: True, 13: True}),
]
GPP_WITH_TCF = (
    "DBADPXhg~CQuSqEAQuSqEAAKAAAENAAFgACglqwAAAAAAAAAAAAAA.IAAA.YAAAAAAAAAAA"
    "~BpAAAABA.QA~BWIAAAABAA.YA~BmEAAACA.YA"
)


GPP_FULL_CONSENT = (  # EU TCF purposes 1-4 consented; usnat: did not opt out of sale
    "DBACMMA~CQuSqEAQuSqEAAKAAAENAAFgAPAAAAAAAAAAAAAAAAAA.IAAA.YAAAAAAAAAAA~CAAgAAAAAABA.QA"
)


@pytest.mark.parametrize(("gpp", "sections"), GPP_REFERENCE)
def test_gpp_sections_read_as_the_reference_library_wrote_them(
    gpp: str, sections: dict[int, bool]
) -> None:
    for sid, opted_out in sections.items():
        got = read_gpp(gpp, (sid,))
        assert got.us_opt_out is opted_out, sid
        assert not got.gdpr_applies and got.tc_string is None
    # Without gpp_sid every section in the string applies.
    assert read_gpp(gpp, None).us_opt_out is any(sections.values())
    # A section the string does not hold counts against the viewer; one it holds that
    # does not apply is ignored.
    assert read_gpp(gpp, (9 if 9 not in sections else 10,)).us_opt_out is True
    assert read_gpp(gpp, ()).us_opt_out is False


@pytest.mark.parametrize(
    ("sub", "opted_out"),
    [
        ("QA", False),  # the GPC sub-segment (type 1), GPC not set
        ("YA", True),  # GPC set: an opt-out
        ("gA", True),  # a sub-segment of another type: unreadable, so an opt-out
    ],
)
def test_gpc_is_read_only_from_its_own_sub_segment(sub: str, opted_out: bool) -> None:
    gpp = f"DBAC16s~BVoAAAEA.{sub}~BWAAAACA~Biog.AAA"  # the reference's section 12, no opt-out
    assert read_gpp(gpp, (12,)).us_opt_out is opted_out


def test_gpp_eu_tcf_section_is_the_tc_string() -> None:
    got = read_gpp(GPP_WITH_TCF, (2,))
    assert got.gdpr_applies and not got.us_opt_out
    assert got.tc_string == GPP_WITH_TCF.split("~")[1]
    decode_tc_string(got.tc_string)  # a TC string the decoder reads
    assert read_gpp(GPP_WITH_TCF, (15,)) == read_gpp(GPP_WITH_TCF, (15, 99))
    assert read_gpp(GPP_WITH_TCF, (15,)).us_opt_out and not read_gpp(GPP_WITH_TCF, (14,)).us_opt_out
    # The EU section applies, but the string lacks it: the GDPR applies with no consent.
    assert read_gpp("DBABQw~BmYAAABA.QA", (2,)) == GppSignals(gdpr_applies=True)
    assert read_gpp(None, (2,)) == GppSignals(gdpr_applies=True)


@pytest.mark.parametrize(
    "gpp",
    [
        "junk",
        "DBABQw",  # names a section, holds none
        "DBABQw~BmYAAABA~BmYAAABA",  # holds more sections than it names
        "CBABQw~BmYAAABA.QA",  # not a GPP header (type 2)
        "DBABQw~*mYAAABA",  # not base64url
        "DBABQw~AmYAAABA",  # a usmt section of version 0
        "DB" + "_" * 400,  # a header of endless Fibonacci codes
        "DB" + "A" * 3000 + "~BmYAAABA.QA",  # a header naming no section, and one
        "~~~",
    ],
)
def test_unreadable_gpp_counts_as_an_opt_out(gpp: str) -> None:
    assert read_gpp(gpp, None).us_opt_out is True
    assert read_gpp(gpp, (14,)).us_opt_out is True
    assert read_gpp(gpp, (2,)) == GppSignals(gdpr_applies=True)


def test_a_gpp_string_of_no_sections() -> None:
    for gpp in ("DBAA", "DB" + "A" * 3000):
        assert read_gpp(gpp, None) == GppSignals()
        assert read_gpp(gpp, (14,)).us_opt_out is True


_GPP_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_GPP_ALPHABET, max_size=300))
def test_gpp_reader_never_raises(text: str) -> None:
    got = read_gpp(text, None)
    assert isinstance(got, GppSignals)
    read_gpp("DB" + text, (2, 6, 7, 8, 27))


def test_gpp_sid_is_a_comma_list_of_ids() -> None:
    assert parse_gpp_sid("7, 8,2") == (7, 8, 2)
    assert parse_gpp_sid("-1") == ()  # what CMPs report when no section applies
    assert parse_gpp_sid("0,7") == (7,)
    assert parse_gpp_sid(",") is None  # no ids at all: as if absent, every section applies
    for bad in ("x", "7;8", "1.5", "--1", ",".join(["1"] * 65), "99999", "\u0667", "\u00b2"):
        with pytest.raises(ValueError):
            parse_gpp_sid(bad)


@pytest.mark.parametrize(
    "gpp",
    [
        "DBABLA~BAAq",  # a usnat core cut to 24 bits
        "DBABBg~BVo",  # a usca core cut to 18 bits
        "DBABLA~BAAqAAAAAQA.oA",  # usnat, not opted out, a sub-segment of type 2
        "DBABLA~BAA_AAAAAQA",  # usnat with SaleOptOut 3, a value no version defines
        "DBAB" + "A" * 4091 + "w",  # a Fibonacci code thousands of bits long
    ],
)
def test_cut_or_undefined_sections_count_as_an_opt_out(gpp: str) -> None:
    assert read_gpp(gpp, None).us_opt_out is True


def test_gpp_strings_of_the_reference_library_read_alike() -> None:
    """600 random strings from the reference library: every section reads as it was set."""
    node_dir = Path(__file__).parent / "node"
    if shutil.which("node") is None or not (node_dir / "node_modules/@iabgpp/cmpapi").is_dir():
        pytest.skip("node or @iabgpp/cmpapi missing (`make node-deps`)")
    proc = subprocess.run(
        ["node", "gpp.mjs", "600", "17"], cwd=node_dir, capture_output=True, check=True, timeout=120
    )
    cases = json.loads(proc.stdout)
    checked = 0
    for case in cases:
        for key, opted_out in case["opted_out"].items():
            sid = int(key)
            got = read_gpp(case["gpp"], (sid,))
            if sid == 2:
                assert got.gdpr_applies and got.tc_string == case["tc"]
            else:
                assert got.us_opt_out is opted_out, (case, sid)
            checked += 1
        expected = any(v for v in case["opted_out"].values() if v is not None)
        assert read_gpp(case["gpp"], None).us_opt_out is expected, case
    assert checked > 1000


@pytest.mark.parametrize(
    ("signals", "device_id", "segments"),
    [
        ({}, True, True),
        ({"us_privacy": "1YYN"}, True, False),
        ({"us_privacy": "1YNN"}, True, True),
        ({"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": (14,)}, True, False),
        ({"gpp": "DBAC16s~BVoAAAEA.QA~BWAAAACA~Biog.AAA", "gpp_sid": (12,)}, True, True),
        ({"child_directed": True}, True, False),
        # the EU TCF section of a GPP string stands in for gdpr_consent
        ({"gpp": GPP_WITH_TCF, "gpp_sid": (2,)}, None, None),
        ({"gpp": GPP_FULL_CONSENT, "gpp_sid": (2, 7)}, True, True),
        ({"gpp": GPP_FULL_CONSENT, "gpp_sid": (2, 7), "us_privacy": "1YYN"}, True, False),
        ({"gpp": GPP_FULL_CONSENT, "gpp_sid": (2, 7), "gdpr": True}, True, True),
        ({"gpp_sid": (2,)}, False, False),
        ({"gdpr": False, "gpp_sid": (2,)}, False, False),
        ({"gdpr": True, "tc_string": tc_string({1, 2, 3, 4}), "us_privacy": "1YYN"}, True, False),
        # gdpr=0 wins over a TCF section merely present, not over one gpp_sid names
        ({"gdpr": False, "gpp": GPP_WITH_TCF}, True, False),
        ({"gdpr": False, "gpp": GPP_WITH_TCF, "gpp_sid": (2,)}, False, False),
        ({"gpp": GPP_WITH_TCF}, False, False),
        ({"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": ()}, True, True),  # -1: none applies
    ],
)
def test_read_privacy_permissions(
    signals: dict[str, Any], device_id: bool | None, segments: bool | None
) -> None:
    got, _ = read_privacy(
        gdpr=signals.pop("gdpr", None), tc_string=signals.pop("tc_string", None), **signals
    )
    if device_id is None:  # as the TC string in the GPP section says
        assert got == permissions(True, GPP_WITH_TCF.split("~")[1], None)
    else:
        assert (got.device_id, got.segments) == (device_id, segments)


async def test_us_privacy_gpp_and_kids_drop_segments_not_the_device(
    make_client: ClientFactory,
) -> None:
    client: Any = await make_client()
    base = "device_id=ifa-usp-1&segments=sports,auto"
    keep = {"limited_tracking": False, "segments": ["sports", "auto"], "gdpr": None}
    drop = {"limited_tracking": False, "segments": [], "gdpr": None}
    assert (await _viewer(client, base + "&us_privacy=1YNN"))[0] == keep
    assert (await _viewer(client, base + "&us_privacy=1YYN"))[0] == drop
    assert (await _viewer(client, base + "&us_privacy=garbage"))[0] == drop
    assert (await _viewer(client, base + "&gpp=DBABQw~BmYAAABA.QA&gpp_sid=14"))[0] == drop
    assert (await _viewer(client, base + "&gpp=DBABQw~BmYAAABA.QA&gpp_sid=8"))[0] == drop
    assert (await _viewer(client, base + "&gpp=DBABQw~BmYAAABA.QA&gpp_sid=6,9"))[0] == drop
    gpp = "DBAC16s~BVoAAAEA.QA~BWAAAACA~Biog.AAA"
    assert (await _viewer(client, f"{base}&gpp={gpp}&gpp_sid=12,13"))[0] == keep
    assert (await _viewer(client, base + "&kids=1"))[0] == drop
    assert (await _viewer(client, base + "&gpp_sid=2"))[0] == {
        "limited_tracking": True,
        "segments": [],
        "gdpr": True,
    }
    assert (await _viewer(client, base + "&gpp=DBABQw~BmYAAABA.QA&gpp_sid=-1"))[0] == keep
    assert (await _viewer(client, base + "&gpp=DBABQw~BmYAAABA.QA&gpp_sid=,"))[0] == drop
    assert (await _viewer(client, base + "&gpp=DBABQw~BmYAAABA.QA%20"))[0] == drop
    for bad in ("gpp_sid=x", "gpp_sid=1.5", "gpp_sid=%D9%A7"):
        resp = await client.get("/vast?" + bad)
        assert resp.status == 400
        assert (await resp.json())["field"] == "gpp_sid"
    resp = await client.get("/vast?us_privacy=" + "1" * 65)
    assert resp.status == 400
    assert (await resp.json())["field"] == "us_privacy"


async def test_openrtb_reads_us_privacy_gpp_and_coppa(make_client: ClientFactory) -> None:
    client: Any = await make_client()

    def bid(regs: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "r1",
            "imp": [{"id": "1", "video": {"poddur": 60, "maxseq": 2, "mimes": ["video/mp4"]}}],
            "device": {"ifa": "ifa-rtb-2", "devicetype": 3},
            "user": {"data": [{"segment": [{"id": "sports"}]}]},
            "regs": regs,
            "ext": {"vastserver": {"debug": 1, "session": "rtb-u"}},
        }

    async def post(regs: dict[str, Any]) -> Any:
        return await client.post("/openrtb2/pod", data=json.dumps(bid(regs)))

    async def viewer(regs: dict[str, Any]) -> Any:
        return await _rtb_viewer(client, bid(regs))

    keep = {"limited_tracking": False, "segments": ["sports"], "gdpr": None}
    drop = {"limited_tracking": False, "segments": [], "gdpr": None}
    assert await viewer({"us_privacy": "1YNN"}) == keep
    assert await viewer({"us_privacy": "1YYN"}) == drop
    assert await viewer({"ext": {"us_privacy": "1YYN"}}) == drop
    assert await viewer({"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": [14]}) == drop
    assert await viewer({"gpp": "DBAC16s~BVoAAAEA.QA~BWAAAACA~Biog.AAA", "gpp_sid": [13]}) == keep
    assert await viewer({"coppa": 1}) == drop
    assert await viewer({"gpp_sid": [2]}) == {
        "limited_tracking": True,
        "segments": [],
        "gdpr": True,
    }
    assert await viewer({"ext": {"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": [14]}}) == drop
    assert await viewer({"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": [-1]}) == keep
    assert await viewer({"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": []}) == drop
    for regs, field in (
        ({"gpp_sid": "7"}, "regs.gpp_sid"),
        ({"gpp_sid": ["x"]}, "regs.gpp_sid[0]"),
        ({"gpp_sid": [-2]}, "regs.gpp_sid[0]"),
        ({"ext": {"gpp_sid": "7"}}, "regs.ext.gpp_sid"),
        ({"gpp": 5}, "regs.gpp"),
        ({"us_privacy": ["1YNN"]}, "regs.us_privacy"),
    ):
        resp = await post(regs)
        assert resp.status == 400, regs
        assert (await resp.json())["field"] == field


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ({}, NO_SIGNALS),
        ({"gdpr": False}, PrivacySignals(gdpr=False)),
        ({"gdpr": True}, PrivacySignals(gdpr=True)),
        # without a flag, a TC string makes the GDPR apply (as for the decision)
        ({"tc_string": "CPxx"}, PrivacySignals(gdpr=True, tc_string="CPxx")),
        ({"gdpr": False, "tc_string": "CPxx"}, PrivacySignals(gdpr=False, tc_string="CPxx")),
        ({"us_privacy": "1YNN"}, PrivacySignals(us_privacy="1YNN")),
        # gdpr=0, but gpp_sid names the EU TCF section: the GDPR applies (docs/catalog.md)
        ({"gdpr": False, "gpp_sid": (2,)}, PrivacySignals(gdpr=True, gpp_sid=(2,))),
        # the GPP string's TCF section: the GDPR applies and its TC string stands in
        (
            {"gpp": GPP_WITH_TCF, "gpp_sid": (2,)},
            PrivacySignals(
                gdpr=True,
                tc_string=GPP_WITH_TCF.split("~")[1],
                gpp=GPP_WITH_TCF,
                gpp_sid=(2,),
            ),
        ),
        (
            {"gpp": "DBABQw~BmYAAABA.QA", "gpp_sid": ()},
            PrivacySignals(gpp="DBABQw~BmYAAABA.QA", gpp_sid=()),
        ),
    ],
)
def test_read_privacy_keeps_the_signals_for_third_parties(
    signals: dict[str, Any], expected: PrivacySignals
) -> None:
    """What fills the privacy macros of third parties' trackers (``${GDPR}``...)."""
    _, got = read_privacy(
        gdpr=signals.pop("gdpr", None), tc_string=signals.pop("tc_string", None), **signals
    )
    assert got == expected


# ---------------------------------------------------------------------------- by geography

IMPERSONAL = {"limited_tracking": True, "segments": [], "gdpr": True}
"""What ``/decide`` shows of a viewer under ``gdpr=1`` without consent."""


def personal(gdpr: bool | None, segments: tuple[str, ...] = ("adults_21plus",)) -> dict[str, Any]:
    """What ``/decide`` shows of a viewer whose IFA and segments were used."""
    return {"limited_tracking": False, "segments": list(segments), "gdpr": gdpr}


SEGMENT_LINE_ITEM = "li-ridgeway-gameday-sports"
"""The demo catalog's line item for sports fans aged 21+ (segment ``adults_21plus``)."""

EEA_VIEWERS = [
    "device_ip=2001:db8::5",  # Germany, by the IP (fixtures/geo-cidr.csv)
    "device_ip=2001:db8:1::5",  # France
    "device_ip=192.0.2.10",  # the UK
    "country=CH",  # Switzerland, by the request's country
    "country=de&device_ip=198.51.100.7",  # the request's country wins over a US IP
]
US_VIEWERS = ["device_ip=198.51.100.7", "country=US", "country=US&device_ip=2001:db8::5"]

_calls = itertools.count()


async def _sports_break(client: Any, where: str) -> tuple[dict[str, Any], bool]:
    """What a sports break for a 21+ viewer with an IFA in ``where`` used of the viewer,
    and whether the segment-targeted line item matched (it cannot win otherwise). A viewer
    and session of their own each time: no caps or separation carried over."""
    n = next(_calls)
    resp = await client.get(
        f"/decide?pod_duration=60&max_ads=1&genre=sports&rating=TV-14&session=geo-{n}"
        f"&device_id=ifa-geo-{n}&segments=adults_21plus&{where}"
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    reasons = {t["reason"] for t in body["candidates"] if t["line_item_id"] == SEGMENT_LINE_ITEM}
    assert reasons, body["candidates"]
    matched = "targeting" not in reasons
    if not matched:
        assert SEGMENT_LINE_ITEM not in [a["line_item_id"] for a in body["pod"]["ads"]]
    return body["viewer"], matched


@pytest.mark.parametrize("where", EEA_VIEWERS)
async def test_gdpr_by_geo_decides_a_viewer_in_europe_without_signals_as_under_gdpr_1(
    make_client: ClientFactory, where: str
) -> None:
    """``VASTSERVER_GDPR_BY_GEO``: a request that says nothing about the GDPR, from the
    EEA, the UK or Switzerland, used the viewer's IFA and segments; it is decided as under
    ``gdpr=1`` without consent, and what the caller says (``gdpr=0``, a consent string)
    is respected. Off (the default), nothing changes."""
    client: Any = await make_client(gdpr_by_geo="1")
    assert await _sports_break(client, where + "&gdpr=1") == (IMPERSONAL, False)
    assert await _sports_break(client, where) == (IMPERSONAL, False)
    assert await _sports_break(client, where + "&gdpr=0") == (personal(False), True)
    full = tc_string({1, 2, 3, 4})
    assert await _sports_break(client, f"{where}&gdpr_consent={full}") == (personal(True), True)
    # signals other than the GDPR's do not say whether it applies
    assert await _sports_break(client, where + "&us_privacy=1YNN") == (IMPERSONAL, False)
    assert await _sports_break(client, f"{where}&gpp={GPP_WITH_TCF}&gpp_sid=7") == (
        IMPERSONAL,
        False,
    )
    off: Any = await make_client()
    assert await _sports_break(off, where) == (personal(None), True)
    # ... an applicable EU TCF section of a GPP string does: decided as without the setting
    tcf = f"{where}&gpp={GPP_WITH_TCF}"
    assert await _sports_break(client, tcf) == await _sports_break(off, tcf)


@pytest.mark.parametrize("where", [*US_VIEWERS, "", "country=ZZ"])
async def test_gdpr_by_geo_leaves_viewers_elsewhere_or_unknown_alone(
    make_client: ClientFactory, where: str
) -> None:
    """Outside Europe, or where the country is unknown (the test client's 127.0.0.1 is in
    no geo table), a request without GDPR signals stays personalised."""
    client: Any = await make_client(gdpr_by_geo="true")
    assert await _sports_break(client, where) == (personal(None), True)


async def test_gdpr_by_geo_keys_caps_on_the_session_not_the_device(
    make_client: ClientFactory,
) -> None:
    """The device identifier is not used: two sessions of one IFA in Germany are two
    viewers (as under ``gdpr=1`` without consent), in the US one."""
    client: Any = await make_client(gdpr_by_geo="1")
    hashes = {
        (where, session): await _viewer_hash(
            client, f"device_id=ifa-geo-2&session={session}&device_ip={ip}"
        )
        for where, ip in (("DE", "2001:db8::5"), ("US", "198.51.100.7"))
        for session in ("a", "b")
    }
    assert hashes["DE", "a"] != hashes["DE", "b"]
    assert hashes["US", "a"] == hashes["US", "b"]


async def test_gdpr_by_geo_is_in_the_decision_record(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The event log's context says the GDPR applied (as resolved), so an operator sees
    why a decision without signals was not personalised."""
    from vastserver.eventlog import read_events

    client: Any = await make_client(event_log=str(tmp_path), gdpr_by_geo="1")
    for where in ("device_ip=2001:db8::5", "device_ip=2001:db8::5&gdpr=0", "country=US"):
        resp = await client.get(f"/vast?pod_duration=30&device_id=d1&segments=sports&{where}")
        assert resp.status == 200
    await client.close()  # flushes the log
    contexts = [r["context"] for r in read_events([tmp_path]) if r["type"] == "decision"]
    fields = ("country", "gdpr", "device_id_allowed", "segments_allowed", "lmt", "segments")
    assert [tuple(c[k] for k in fields) for c in contexts] == [
        ("DE", True, False, False, True, []),
        ("DE", False, True, True, False, ["sports"]),
        ("US", None, True, True, False, ["sports"]),
    ]


async def test_gdpr_by_geo_vmap_tags_carry_no_ifa_or_segments(make_client: ClientFactory) -> None:
    """A VMAP for a viewer in Germany without signals leaves the IFA and segments out of
    its ad tags, as under ``gdpr=1``; with ``gdpr=0`` they are carried."""
    client: Any = await make_client(gdpr_by_geo="1")
    query = "content_duration=600&cue_points=300&device_id=ifa-geo-3&segments=sports"
    for extra, kept in (("", set()), ("&gdpr=0", {"device_id", "segments"})):
        resp = await client.get(f"/vmap?{query}&device_ip=2001:db8::5{extra}")
        assert resp.status == 200
        tags = re.findall(r"<vmap:AdTagURI[^>]*><!\[CDATA\[(.*?)\]\]>", await resp.text())
        assert len(tags) == 3
        for tag in tags:
            assert {"device_id", "segments"} & parse_qs(urlsplit(tag).query).keys() == kept


async def test_gdpr_by_geo_on_openrtb(make_client: ClientFactory) -> None:
    """The OpenRTB endpoint: ``device.geo.country`` (or the IP) in Europe and no
    ``regs.gdpr`` or consent: decided as under ``regs.gdpr`` = 1 without consent."""
    client: Any = await make_client(gdpr_by_geo="1")

    def bid(country: str | None, regs: dict[str, Any], ip: str | None = None) -> dict[str, Any]:
        device: dict[str, Any] = {"ifa": "ifa-rtb-geo", "devicetype": 3}
        if country is not None:
            device["geo"] = {"country": country}
        if ip is not None:
            device["ipv6"] = ip
        return {
            "id": "r1",
            "imp": [{"id": "1", "video": {"poddur": 60, "maxseq": 2, "mimes": ["video/mp4"]}}],
            "device": device,
            "user": {"data": [{"segment": [{"id": "sports"}]}]},
            "regs": regs,
            "ext": {"vastserver": {"debug": 1, "session": "rtb-geo"}},
        }

    said_no, unsaid = personal(False, ("sports",)), personal(None, ("sports",))
    for country in ("DEU", "FRA", "GBR", "CHE", "NO"):
        assert await _rtb_viewer(client, bid(country, {})) == IMPERSONAL, country
        assert await _rtb_viewer(client, bid(country, {"gdpr": 0})) == said_no
        assert await _rtb_viewer(client, bid(country, {"ext": {"gdpr": 0}})) == said_no
    assert await _rtb_viewer(client, bid(None, {}, ip="2001:db8:1::5")) == IMPERSONAL  # France
    assert await _rtb_viewer(client, bid("USA", {})) == unsaid
    assert await _rtb_viewer(client, bid(None, {})) == unsaid  # 127.0.0.1: no country
    off: Any = await make_client()
    assert await _rtb_viewer(off, bid("DEU", {})) == unsaid
