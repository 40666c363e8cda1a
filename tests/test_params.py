"""Request headers: who calls and for which device (params.client_info, header_text)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vastserver.consent import Permissions
from vastserver.params import ClientInfo, ParamError, client_info, header_text

PEER = "192.0.2.10"


@pytest.mark.parametrize(
    ("xff", "caller"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("203.0.113.7, 10.0.0.1", "203.0.113.7"),
        ("203.0.113.7:51234", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0::1, 203.0.113.7", "2001:db8::1"),
        (", 203.0.113.7", "203.0.113.7"),  # a leading empty element
        (" ,,\t203.0.113.7:80 , 10.0.0.1", "203.0.113.7"),
        # the first element is the client; when it is no address, the peer is the caller
        ("unknown", PEER),
        ("unknown, 203.0.113.7", PEER),
        ("_hidden, 203.0.113.7", PEER),
        ("not-an-ip", PEER),
        ("[2001:db8::1", PEER),
        ("[2001:db8::1]x", PEER),
        ("999.1.1.1", PEER),
        (",", PEER),
        ("203.0.113.\udcff", PEER),
    ],
)
def test_forwarded_for_is_read_leniently(xff: str, caller: str) -> None:
    got = client_info({"X-Forwarded-For": xff}, PEER)
    assert got.caller_ip == caller
    assert got.device_ip == caller


def test_device_ip_wins_over_a_malformed_forwarded_for() -> None:
    headers = {"X-Device-IP": "198.51.100.4", "X-Forwarded-For": "203.0.113.7:51234:x"}
    got = client_info(headers, PEER)
    assert got == ClientInfo(PEER, None, "198.51.100.4", None)
    headers["X-Forwarded-For"] = "203.0.113.7:51234"
    assert client_info(headers, PEER).caller_ip == "203.0.113.7"


@pytest.mark.parametrize(
    "device_ip",
    [
        "not-an-ip",
        "198.51.100.4:80",
        "[2001:db8::1]",
        "unknown",
        "1.2.3.\udcff",
        "fe80::1%eth0",  # a zone: ipaddress takes any text after the % (it was kept as the IP)
        '::1%ATTACKER TEXT {"x":1} <a>',
    ],
)
def test_a_malformed_device_ip_is_refused(device_ip: str) -> None:
    """X-Device-IP is set on purpose by the SSAI caller: it is held to the letter."""
    with pytest.raises(ParamError) as err:
        client_info({"X-Device-IP": device_ip, "X-Forwarded-For": "203.0.113.7"}, PEER)
    assert err.value.field == "X-Device-IP"


def test_a_forwarded_for_with_an_ipv6_zone_is_not_an_address() -> None:
    """X-Forwarded-For is read leniently: an entry with a zone is no address (the peer
    stands), never its text."""
    got = client_info({"X-Forwarded-For": "fe80::1%<script>"}, PEER)
    assert got.caller_ip == got.device_ip == PEER


def test_header_text() -> None:
    assert header_text("Roku/DVP-12.0") == "Roku/DVP-12.0"
    # what aiohttp makes of the bytes b"Roku\xff/9" and of UTF-8 text
    assert header_text(b"Roku\xff/9".decode("utf-8", "surrogateescape")) == "Roku\ufffd/9"
    assert header_text(b"T\xc3\xa9l\xc3\xa9".decode("utf-8", "surrogateescape")) == "Télé"
    assert header_text("a\ud800b") == "a\ufffd\ufffd\ufffdb"  # not from a byte: still text


def test_user_agents_are_valid_text() -> None:
    headers = {
        "User-Agent": b"Roku\xff/9".decode("utf-8", "surrogateescape"),
        "X-Device-User-Agent": b"Roku\xfe/10".decode("utf-8", "surrogateescape"),
    }
    got = client_info(headers, PEER)
    assert got.caller_user_agent == "Roku\ufffd/9"
    assert got.device_user_agent == "Roku\ufffd/10"
    del headers["X-Device-User-Agent"]
    assert client_info(headers, PEER).device_user_agent == "Roku\ufffd/9"


HEADER = st.text(max_size=60) | st.binary(max_size=60).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["X-Forwarded-For", "User-Agent", "X-Device-User-Agent", "X-Device-IP"]),
        HEADER,
    )
)
def test_only_a_bad_device_ip_is_an_error(headers: dict[str, str]) -> None:
    try:
        got = client_info(headers, PEER)
    except ParamError as e:
        assert e.field == "X-Device-IP"
        return
    for ua in (got.caller_user_agent, got.device_user_agent):
        if ua is not None:
            ua.encode("utf-8")  # no lone surrogate left


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("99999999999999999999999", "must be between"),
        ("-99999999999999999999999", "must be between"),
        ("60.0000000000001", "9 after"),
        ("0000000000000060", "at most 12 digits"),  # in range, but too many digits
        ("6e1", "not a number"),
        ("abc", "not a number"),
    ],
)
def test_a_number_too_long_to_read_is_out_of_range_not_malformed(raw: str, why: str) -> None:
    from vastserver.catalog.model import AdRules
    from vastserver.params import parse_vast_request

    client = client_info({}, "127.0.0.1")
    with pytest.raises(ParamError) as e:
        parse_vast_request({"pod_duration": raw}, client, AdRules())
    assert e.value.field == "pod_duration" and why in e.value.why
    with pytest.raises(ParamError) as e:
        parse_vast_request({"max_ads": raw}, client, AdRules())
    assert e.value.field == "max_ads"
    assert ("must be between" in e.value.why) == raw.lstrip("-").isdigit()


ZERO_IFA = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("ifa", [ZERO_IFA, "00000000000000000000000000000000", "0"])
def test_the_all_zero_ifa_counts_as_limited_ad_tracking(ifa: str) -> None:
    """A tvOS app without ATT consent (an Android device with limit ad tracking on) sends
    the all-zero IFA: the viewer refused tracking. Keyed as an IFA it made every such
    household one viewer; it then fell back to an IP + UA fingerprint for caps, history
    and arms, and kept the audience segments. It counts as ``lmt=1``: caps on the session
    only, no segments, no fingerprint."""
    from vastserver.catalog.model import AdRules
    from vastserver.params import parse_vast_request

    client = client_info({"X-Forwarded-For": "203.0.113.9", "User-Agent": "AppleTV/17.1"}, PEER)
    q = {"device_id": ifa, "segments": "sports_fans,auto_intenders"}
    req = parse_vast_request(q, client, AdRules())
    assert req.device.ifa is None and req.device.lmt is True
    assert req.segments == ()
    assert req.permissions == Permissions(device_id=False, segments=False)
    assert req.viewer_key() is None  # no session: no viewer to know, never "ipua:..."
    with_session = parse_vast_request({**q, "session": "s-1"}, client, AdRules())
    assert with_session.viewer_key() == "session:s-1"
    real = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    req = parse_vast_request({**q, "device_id": real}, client, AdRules())
    assert req.device.ifa == real and req.device.lmt is False
    assert req.segments == ("sports_fans", "auto_intenders")
    assert req.viewer_key() == f"ifa:{real.lower()}"  # one device in either case
    lower = parse_vast_request({**q, "device_id": real.lower()}, client, AdRules())
    assert lower.viewer_key() == req.viewer_key()


def test_lmt_drops_the_audience_segments() -> None:
    """Limit ad tracking is the device's opt-out of interest-based ads: ``lmt=1`` kept the
    segments (a US opt-out already dropped them). Both are now dropped, with the IFA."""
    from vastserver.params import parse_targeting

    client = client_info({}, PEER)
    q = {"device_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "segments": "sports_fans"}
    assert parse_targeting(q, client).segments == ("sports_fans",)
    for lmt in ("1", "true"):
        got = parse_targeting({**q, "lmt": lmt}, client)
        assert got.segments == () and got.device.lmt is True and got.device.ifa is None
        assert got.permissions == Permissions(device_id=False, segments=False)
    assert parse_targeting({**q, "lmt": "0"}, client).segments == ("sports_fans",)


def test_key_values_are_not_consent_gated_but_segments_are() -> None:
    """Key-values describe the content and the placement (the catalogs and the simulator
    target kv_league, kv_tier): they stay whatever the consent says, as README documents,
    while the audience segments go."""
    from vastserver.params import parse_targeting

    client = client_info({}, PEER)
    q = {"kv_league": "nfl", "kv_tier": "premium", "segments": "sports_fans"}
    for refusal in ({"gdpr": "1"}, {"lmt": "1"}, {"us_privacy": "1YYN"}, {"kids": "1"}):
        got = parse_targeting({**q, **refusal}, client)
        assert dict(got.key_values) == {"league": "nfl", "tier": "premium"}, refusal
        assert got.segments == (), refusal


def test_device_ip_and_ua_parameters_rank_below_the_ssai_headers() -> None:
    """MediaTailor sends no X-Device-* headers but can put ``[session.client_ip]`` and
    ``[session.user_agent]`` in the ad tag: X-Device-* first, then device_ip / device_ua,
    then X-Forwarded-For / User-Agent, then the peer."""
    q = {"device_ip": "2001:DB8::7", "device_ua": "Roku/DVP-12.0"}
    fwd = {"X-Forwarded-For": "203.0.113.7", "User-Agent": "MediaTailor/1"}
    ssai = {"X-Device-IP": "198.51.100.4", "X-Device-User-Agent": "AppleTV/17"}
    assert client_info({**fwd, **ssai}, PEER, q) == ClientInfo(
        "203.0.113.7", "MediaTailor/1", "198.51.100.4", "AppleTV/17"
    )
    assert client_info(fwd, PEER, q) == ClientInfo(
        "203.0.113.7", "MediaTailor/1", "2001:db8::7", "Roku/DVP-12.0"
    )
    assert client_info(fwd, PEER, {"device_ip": "", "device_ua": ""}) == client_info(fwd, PEER)
    assert client_info({}, PEER, q) == ClientInfo(PEER, None, "2001:db8::7", "Roku/DVP-12.0")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"device_ip": "not-an-ip"}, "device_ip"),
        ({"device_ip": "198.51.100.4:80"}, "device_ip"),
        ({"device_ua": "Roku\n/9"}, "device_ua"),
        ({"device_ua": "x" * 2049}, "device_ua"),
    ],
)
def test_a_malformed_device_parameter_is_refused(query: dict[str, str], field: str) -> None:
    with pytest.raises(ParamError) as err:
        client_info({"X-Forwarded-For": "203.0.113.7"}, PEER, query)
    assert err.value.field == field


def test_the_nginx_example_keeps_the_stitchers_forwarded_for() -> None:
    """docs/nginx.conf.example once set X-Forwarded-For to $remote_addr, putting the
    stitcher's own address where MediaTailor had sent the player's. It must append the
    peer, so the first element, which the server reads, stays the player's."""
    from pathlib import Path

    conf = Path(__file__).parent.parent / "docs" / "nginx.conf.example"
    directives = [
        line.split("#")[0].split()
        for line in conf.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    xff = [d for d in directives if d[:2] == ["proxy_set_header", "X-Forwarded-For"]]
    assert xff == [["proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for;"]]
    # $proxy_add_x_forwarded_for: the header as received, then ", " and the peer
    player, stitcher = "198.51.100.4", "52.94.10.1"
    sent = f"{player}, {stitcher}"
    assert client_info({"X-Forwarded-For": sent}, "10.0.0.2").device_ip == player


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("198.51.100.23", "198.51.100.0"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("::ffff:198.51.100.23", "198.51.100.0"),
        (" 10.1.2.3 ", "10.1.2.0"),
        ("not-an-ip", None),
        ("", None),
        (None, None),
    ],
)
def test_ip_prefix_keeps_the_network_not_the_host(text: str | None, network: str | None) -> None:
    """What the event log keeps of the caller of a beacon whose viewer refused tracking."""
    from vastserver.params import ip_prefix

    assert ip_prefix(text) == network


@pytest.mark.parametrize(
    ("country", "region", "expected"),
    [
        ("US", "NY", "US-NY"),  # a bare subdivision gets the country, as in the geo table
        ("us", "ny", "US-NY"),
        ("GB", "ENG", "GB-ENG"),
        (None, "US-NY", "US-NY"),
        (None, "us-ny", "US-NY"),
        ("CA", "CA-ON", "CA-ON"),
        ("ca", "ca-on", "CA-ON"),
    ],
)
def test_region_is_normalised_as_the_geo_table_reads_it(
    country: str | None, region: str, expected: str
) -> None:
    """``country=US&region=NY`` was kept as ``NY``, which never matched a line item's
    ``region include ["US-NY"]``, while the geo table (and OpenRTB's ``device.geo.region``)
    read the same ``NY`` as ``US-NY``. The request parameter now goes through the geo
    table's normaliser, and what it yields is a value the catalog accepts."""
    from vastserver.catalog.load import DIMENSIONS, CatalogIssue
    from vastserver.geo import normalize
    from vastserver.params import parse_targeting

    q = {"region": region} | ({"country": country} if country else {})
    got = parse_targeting(q, client_info({}, PEER)).device
    assert got.region == expected
    assert normalize(country, region, None).region == expected
    errs: list[CatalogIssue] = []
    assert DIMENSIONS["region"](expected, "$.region", errs) == expected
    assert errs == []


@pytest.mark.parametrize(
    "query",
    [
        {"region": "NY"},  # a bare subdivision of no known country
        {"region": "California"},
        {"country": "US", "region": "California"},
        {"region": "US-NEWY"},
        {"region": "USA-NY"},
        {"region": "US_NY"},
        {"region": "US-NY "},
        {"country": "US", "region": "N\u0131"},  # dotless i: its upper() is "I", not ASCII
    ],
)
def test_a_malformed_region_is_refused(query: dict[str, str]) -> None:
    """Any token passed as a region (``region=California``): it answered 200 and matched
    nothing, where README promises a 400 naming a malformed known parameter."""
    from vastserver.params import parse_targeting

    with pytest.raises(ParamError) as err:
        parse_targeting(query, client_info({}, PEER))
    assert err.value.field == "region"
    assert "ISO 3166-2" in err.value.why


@pytest.mark.parametrize(
    ("country", "region", "other"),
    [("CA", "US-NY", "US"), ("us", "ca-on", "CA"), ("GB", "US-NY", "US")],
)
def test_a_region_of_another_country_is_refused(country: str, region: str, other: str) -> None:
    """``country=CA&region=US-NY`` names no place: it was taken as written, so the viewer
    matched both a Canada country rule and a New York region rule. A 400 names ``region``
    and why, as for a malformed one."""
    from vastserver.params import parse_targeting

    with pytest.raises(ParamError) as err:
        parse_targeting({"country": country, "region": region}, client_info({}, PEER))
    assert err.value.field == "region"
    code, of = region.upper(), country.upper()
    assert err.value.why == f"{code} is a region of {other}, not of country {of}"


def test_ifa_type_is_case_folded_as_openrtb_folds_it() -> None:
    """OpenRTB lower-cased ``ext.ifa_type`` and /vast kept it as sent: ``ifa_type=RIDA``
    missed a line item targeting ``rida`` that the same device's OpenRTB request matched."""
    from vastserver.params import parse_targeting

    client = client_info({}, PEER)
    for raw in ("RIDA", "Rida", "rida"):
        assert parse_targeting({"ifa_type": raw}, client).device.ifa_type == "rida"
    assert parse_targeting({}, client).device.ifa_type is None


def test_series_channel_and_content_id_are_free_text() -> None:
    """The catalog takes any text for them (``"Law & Order, SVU"``, a single value) and
    OpenRTB passes it through, but /vast answered such a value with a 400 (a token was
    required): a line item targeting that series could never serve there."""
    from vastserver.params import parse_targeting

    client = client_info({}, PEER)
    q = {"series": "Law & Order, SVU", "channel": "Canal+ Séries", "content_id": "ep 7/12"}
    content = parse_targeting(q, client).content
    assert (content.series, content.channel, content.id) == (
        "Law & Order, SVU",
        "Canal+ Séries",
        "ep 7/12",
    )
    for name in q:
        for bad in ("a\nb", "x" * 257):
            with pytest.raises(ParamError) as e:
                parse_targeting({name: bad}, client)
            assert e.value.field == name
