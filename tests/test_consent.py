"""GDPR consent: TC strings decoded, and what a decision may use under them, end to end."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Set as AbstractSet
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ClientFactory
from vastserver.app import RUNTIME
from vastserver.consent import decode_tc_string, permissions
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


def tc_string(
    purposes: AbstractSet[int],
    li: AbstractSet[int] = frozenset(),
    vendors: AbstractSet[int] = frozenset(),
) -> str:
    """A core segment written field by field (TCF v2 layout), vendors as a bitfield."""
    max_vendor = max(vendors, default=0)
    bits = (
        format(2, "06b")  # version
        + "0" * 146  # created ... special feature opt-ins (we do not read them)
        + "".join("1" if p in purposes else "0" for p in range(1, 25))
        + "".join("1" if p in li else "0" for p in range(1, 25))
        + "0"  # purpose one treatment
        + "0" * 12  # publisher country
        + format(max_vendor, "016b")
        + "0"  # bitfield, not ranges
        + "".join("1" if v in vendors else "0" for v in range(1, max_vendor + 1))
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
    )
    bits += "0" * (-len(bits) % 6)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def test_a_string_of_huge_ranges_costs_its_length_not_its_ranges() -> None:
    """712 ranges of 1..65535 fit in 4 KB; expanded, they held the loop for 1.2 s a
    request. Membership is now read off the ranges."""
    text = _ranges_string([(1, 65535)] * 712, {1, 2, 3, 4})
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
    character: reading the third entry's first bit ran off the end (IndexError, a 503)."""
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
    assert decode_tc_string(text).vendor_consents(5)
    assert permissions(True, text, 77) == permissions(True, None)
    assert permissions(True, text, 9).device_id


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
        (True, tc_string({1, 2, 3, 4}, vendors={5}), 5, True, True),
        (True, tc_string({1, 2, 3, 4}, vendors={5}), 6, False, False),  # not our vendor
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
    }
    assert (await _viewer(client, base + "&gdpr=1"))[0] == {
        "limited_tracking": True,
        "segments": [],
    }
    assert (await _viewer(client, f"{base}&gdpr=1&gdpr_consent={full}"))[0] == {
        "limited_tracking": False,
        "segments": ["sports", "auto"],
    }
    assert (await _viewer(client, f"{base}&gdpr_consent={tc_string({1, 2})}"))[0] == {
        "limited_tracking": False,
        "segments": [],
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


async def test_without_consent_caps_follow_the_session_not_the_device(
    make_client: ClientFactory,
) -> None:
    """Two sessions of one device: with consent both are the device's viewer (one history,
    one set of caps); without it each session is a viewer of its own, as under ``lmt=1``."""
    client: Any = await make_client()
    rt = client.server.app[RUNTIME]
    consented = f"gdpr=1&gdpr_consent={tc_string({1, 2})}"
    hashes: dict[tuple[str, str], str] = {}
    for label, extra in (("consent", consented), ("none", "gdpr=1")):
        for session in ("a", "b"):
            resp = await client.get(
                "/vast?pod_duration=30&max_ads=1&device_id=ifa-gdpr-2"
                f"&session={label}-{session}&{extra}"
            )
            assert resp.status == 200
            m = re.search(r"<Impression[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", await resp.text())
            assert m is not None
            raw = parse_qs(urlsplit(m.group(1)).query)["tk"][0]
            now = int(rt.clock().timestamp())
            token = verify(raw, rt.keyring, now=now, max_age_s=3600, event="impression")
            hashes[label, session] = token.viewer_hash
    assert hashes["consent", "a"] == hashes["consent", "b"]
    assert hashes["none", "a"] != hashes["none", "b"]
    assert hashes["consent", "a"] not in (hashes["none", "a"], hashes["none", "b"])


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
        resp = await client.post("/openrtb2/pod", data=json.dumps(body))
        assert resp.status == 200, await resp.text()
        text = await resp.text()
        m = re.search(r"<Explanation><!\[CDATA\[(.*?)\]\]></Explanation>", text, re.S)
        if m is None:
            m = re.search(r"<!--\s*vastserver-debug\s*(.*?)-->", text, re.S)
        assert m is not None, text[:400]
        return json.loads(m.group(1))["viewer"]

    full = tc_string({1, 2, 3, 4})
    assert await viewer(bid({}, {})) == {"limited_tracking": False, "segments": ["sports"]}
    assert await viewer(bid({"gdpr": 1}, {})) == {"limited_tracking": True, "segments": []}
    assert await viewer(bid({"gdpr": 1}, {"consent": full})) == {
        "limited_tracking": False,
        "segments": ["sports"],
    }
    assert await viewer(bid({"ext": {"gdpr": 1}}, {"ext": {"consent": tc_string({1, 2})}})) == {
        "limited_tracking": False,
        "segments": [],
    }
    # an ext of another shape is someone else's extension: not ours to refuse
    assert await viewer(bid({"ext": "x"}, {"ext": 5})) == {
        "limited_tracking": False,
        "segments": ["sports"],
    }
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
    }


def test_the_vendor_id_setting_is_range_checked() -> None:
    assert load_settings({"VASTSERVER_TCF_VENDOR_ID": "755"}).tcf_vendor_id == 755
    assert load_settings({}).tcf_vendor_id is None
    for bad in ("0", "65536", "abc"):
        with pytest.raises(SettingsError, match="VASTSERVER_TCF_VENDOR_ID"):
            load_settings({"VASTSERVER_TCF_VENDOR_ID": bad})


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
