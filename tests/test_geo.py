"""IP geolocation: the CIDR table (longest prefix, v4/v6, misses), MaxMind mapping, open_geo."""

from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vastserver.geo import (
    DEFAULT_GEO_CSV,
    MAX_LISTED_ROWS,
    CidrTable,
    GeoError,
    GeoInfo,
    GeoLookup,
    MaxMindLookup,
    fill_geo,
    geo_from_record,
    normalize,
    open_geo,
)
from vastserver.pipeline.context import Device

# ------------------------------------------------------------------------- the demo table


@pytest.fixture(scope="module")
def demo() -> GeoLookup:
    return open_geo(None)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.1", GeoInfo("US", "US-CA", "807")),
        ("203.0.113.127", GeoInfo("US", "US-CA", "807")),
        ("203.0.113.128", GeoInfo("US", "US-CA", "803")),  # the /25 beats the /24
        ("203.0.113.201", GeoInfo("US", "US-CA", "825")),  # the /29 beats the /25
        ("203.0.113.208", GeoInfo("US", "US-CA", "803")),  # past the /29: back to the /25
        ("203.0.113.255", GeoInfo("US", "US-CA", "803")),
        ("198.51.100.1", GeoInfo("US", "US-NY", "501")),
        ("198.51.100.64", GeoInfo("US", "US-NJ", "501")),
        ("198.51.100.128", GeoInfo("US", "US-NY", "501")),
        ("192.0.2.9", GeoInfo("GB", "GB-ENG", None)),
        ("2001:db8::1", GeoInfo("DE", "DE-BE", None)),
        ("2001:db8:ffff::1", GeoInfo("DE", "DE-BE", None)),
        ("2001:db8:1::5", GeoInfo("FR", "FR-IDF", None)),
        ("2001:db8:1:2::9", GeoInfo("US", "US-IL", "602")),
        ("2001:DB8:1:2:0:0:0:9", GeoInfo("US", "US-IL", "602")),
        ("::ffff:203.0.113.1", GeoInfo("US", "US-CA", "807")),  # IPv4-mapped
        (" 192.0.2.9 ", GeoInfo("GB", "GB-ENG", None)),
    ],
)
def test_demo_table_hits(demo: GeoLookup, ip: str, expected: GeoInfo) -> None:
    assert demo.lookup(ip) == expected


@pytest.mark.parametrize(
    "ip",
    [
        "203.0.112.255",  # just below 203.0.113.0/24
        "203.0.114.0",  # just above
        "8.8.8.8",
        "0.0.0.0",
        "255.255.255.255",
        "2001:db9::1",
        "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
        "::1",
        "::",
    ],
)
def test_demo_table_misses(demo: GeoLookup, ip: str) -> None:
    assert demo.lookup(ip) is None


@pytest.mark.parametrize(
    "ip",
    ["", "   ", "bad", "203.0.113", "203.0.113.1.5", "203.0.113.256", "203.0.113.0/24",
     "2001:db8::g", "2001:db8:::1", "1" * 10_000, "\x00", "203.0.113.1\x00", "fe80::1%"],
)  # fmt: skip
def test_malformed_ips_are_unknown(demo: GeoLookup, ip: str) -> None:
    assert demo.lookup(ip) is None


def test_non_string_ip_is_unknown(demo: GeoLookup) -> None:
    assert demo.lookup(None) is None  # type: ignore[arg-type]
    assert demo.lookup(3405803777) is None  # type: ignore[arg-type]


def test_default_csv_is_shipped() -> None:
    assert DEFAULT_GEO_CSV.is_file()
    assert CidrTable.from_csv(DEFAULT_GEO_CSV).rows >= 5


# ---------------------------------------------------------------------- loading CSV tables


def write(tmp_path: Path, text: str, name: str = "geo.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_csv_comments_header_blank_lines_and_short_rows(tmp_path: Path) -> None:
    table = CidrTable.from_csv(
        write(
            tmp_path,
            "# a comment\n\ncidr,country,region,dma\n10.0.0.0/8,US\n10.1.0.0/16,US,US-TX,623\n"
            "10.1.2.0/24\n",
        )
    )
    assert table.lookup("10.9.9.9") == GeoInfo("US", None, None)
    assert table.lookup("10.1.9.9") == GeoInfo("US", "US-TX", "623")
    assert table.lookup("10.1.2.3") == GeoInfo(None, None, None)  # known range, no data
    assert table.rows == 3


def test_csv_later_duplicate_wins(tmp_path: Path) -> None:
    table = CidrTable.from_csv(write(tmp_path, "10.0.0.0/8,US\n10.0.0.0/8,CA\n"))
    assert table.lookup("10.0.0.1") == GeoInfo("CA", None, None)


def test_csv_row_order_does_not_matter(tmp_path: Path) -> None:
    a = CidrTable.from_csv(write(tmp_path, "10.1.0.0/16,FR\n10.0.0.0/8,US\n", "a.csv"))
    b = CidrTable.from_csv(write(tmp_path, "10.0.0.0/8,US\n10.1.0.0/16,FR\n", "b.csv"))
    for ip in ("10.0.0.1", "10.1.0.1", "10.2.0.1", "10.0.255.255", "10.1.255.255"):
        assert a.lookup(ip) == b.lookup(ip)


def test_whole_address_spaces(tmp_path: Path) -> None:
    table = CidrTable.from_csv(write(tmp_path, "0.0.0.0/0,US\n::/0,DE\n"))
    assert table.lookup("0.0.0.0") == GeoInfo("US", None, None)
    assert table.lookup("255.255.255.255") == GeoInfo("US", None, None)
    assert table.lookup("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == GeoInfo("DE", None, None)
    assert table.lookup("::ffff:1.2.3.4") == GeoInfo("US", None, None)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.0.0.1/8,US\n", "bad CIDR"),  # host bits set
        ("10.0.0.0/33,US\n", "bad CIDR"),
        ("nonsense,US\n", "bad CIDR"),
        ("10.0.0.0/8,USA\n", "alpha-2"),
        ("10.0.0.0/8,US,California\n", "bad region"),
        ("10.0.0.0/8,US,CA,80\n", "3 digits"),
        ("10.0.0.0/8,US,CA,807,extra\n", "expected"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(GeoError) as err:
        CidrTable.from_csv(write(tmp_path, "# header comment\n" + text))
    assert needle in str(err.value)
    assert ":2:" in str(err.value)


def test_csv_errors_name_every_bad_row(tmp_path: Path) -> None:
    """Every bad row is listed, not only the first, so one start finds them all; past
    MAX_LISTED_ROWS the rest are counted."""
    text = "cidr,country,region,dma\n10.0.0.0/8,US,US-NY,501\nbad,US\n11.0.0.0/8,USA\nbad2,US\n"
    with pytest.raises(GeoError) as err:
        CidrTable.from_csv(write(tmp_path, text))
    msg = str(err.value)
    assert msg.startswith("3 bad rows in geo table")
    assert ":3: bad CIDR 'bad'" in msg and ":4: country" in msg and ":5: bad CIDR 'bad2'" in msg
    assert ":2:" not in msg
    many = "".join(f"bad{i},US\n" for i in range(MAX_LISTED_ROWS + 7))
    with pytest.raises(GeoError) as err:
        CidrTable.from_csv(write(tmp_path, many, "many.csv"))
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{MAX_LISTED_ROWS + 7} bad rows")
    assert len(lines) == 1 + MAX_LISTED_ROWS + 1 and lines[-1].strip() == "... and 7 more"


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeoError, match="cannot read"):
        CidrTable.from_csv(tmp_path / "nope.csv")


# ------------------------------------------------- longest prefix against a brute-force oracle

COUNTRIES = ("US", "CA", "GB", "DE", "FR", "JP")


@st.composite
def networks(draw: st.DrawFn) -> list[tuple[str, GeoInfo]]:
    rows: list[tuple[str, GeoInfo]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=25))):
        v6 = draw(st.booleans())
        bits = 128 if v6 else 32
        # Few distinct high bits so that networks nest often.
        prefix = draw(st.integers(min_value=0, max_value=bits))
        base = draw(st.integers(min_value=0, max_value=7)) << (bits - 3)
        base |= draw(st.integers(min_value=0, max_value=(1 << (bits - 3)) - 1))
        addr = ipaddress.ip_address(base) if not v6 else ipaddress.IPv6Address(base)
        if not v6:
            addr = ipaddress.IPv4Address(base)
        net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        rows.append((str(net), GeoInfo(draw(st.sampled_from(COUNTRIES)), None, None)))
    return rows


def oracle(rows: list[tuple[str, GeoInfo]], ip: str) -> GeoInfo | None:
    addr = ipaddress.ip_address(ip)
    best: tuple[int, int] | None = None
    found: GeoInfo | None = None
    for i, (cidr, info) in enumerate(rows):
        net = ipaddress.ip_network(cidr)
        if net.version == addr.version and addr in net:
            key = (net.prefixlen, i)  # longest prefix; the later row among equals
            if best is None or key > best:
                best, found = key, info
    return found


@settings(max_examples=200, deadline=None)
@given(networks(), st.data())
def test_longest_prefix_matches_brute_force(
    rows: list[tuple[str, GeoInfo]], data: st.DataObject
) -> None:
    table = CidrTable(rows)
    probes: list[str] = []
    for cidr, _ in rows:  # the edges of every network and their neighbours
        net = ipaddress.ip_network(cidr)
        lo, hi = int(net.network_address), int(net.broadcast_address)
        top = (1 << net.max_prefixlen) - 1
        cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        probes.extend(str(cls(n)) for n in (lo - 1, lo, hi, hi + 1) if 0 <= n <= top)
    probes.extend(
        str(ipaddress.IPv4Address(n))
        for n in data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=10))
    )
    probes.extend(
        str(ipaddress.IPv6Address(n))
        for n in data.draw(st.lists(st.integers(0, 2**128 - 1), max_size=10))
    )
    for ip in probes:
        if ipaddress.ip_address(ip).version == 6 and ipaddress.IPv6Address(ip).ipv4_mapped:
            continue  # mapped addresses are looked up as IPv4 by design
        assert table.lookup(ip) == oracle(rows, ip), ip


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("us", "ca", "807"), GeoInfo("US", "US-CA", "807")),
        (("US", "US-CA", 807), GeoInfo("US", "US-CA", "807")),
        (("US", None, 7), GeoInfo("US", None, "007")),
        ((None, "CA", None), GeoInfo(None, None, None)),  # a bare region needs the country
        ((None, "us-ca", None), GeoInfo(None, "US-CA", None)),
        (("USA", "California", "LA"), GeoInfo(None, None, None)),
    ],
)
def test_normalize(
    args: tuple[str | None, str | None, str | int | None], expected: GeoInfo
) -> None:
    assert normalize(*args) == expected


# --------------------------------------------------------------------------------- MaxMind


class FakeReader:
    def __init__(self, records: dict[str, object]) -> None:
        self.records = records
        self.closed = False

    def get(self, ip_address: str) -> object:
        if ip_address == "192.0.2.66":
            raise RuntimeError("corrupt record")  # maxminddb's InvalidDatabaseError
        return self.records.get(ip_address)

    def close(self) -> None:
        self.closed = True


CITY_RECORD: dict[str, object] = {
    "city": {"names": {"en": "San Francisco"}},
    "country": {"iso_code": "US", "names": {"en": "United States"}},
    "location": {"latitude": 37.77, "longitude": -122.42, "metro_code": 807},
    "subdivisions": [{"iso_code": "CA", "names": {"en": "California"}}],
}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (CITY_RECORD, GeoInfo("US", "US-CA", "807")),
        ({"country": {"iso_code": "GB"}, "subdivisions": [{"iso_code": "ENG"}]},
         GeoInfo("GB", "GB-ENG", None)),
        ({"registered_country": {"iso_code": "DE"}}, GeoInfo("DE", None, None)),
        ({"country": {"iso_code": "US"}, "location": {"metro_code": "501"}},
         GeoInfo("US", None, "501")),
        ({"country": {"iso_code": 5}, "subdivisions": "x", "location": []}, None),
        ({"country": "US"}, None),
        ({}, None),
        (None, None),
        ([1, 2], None),
        ({"subdivisions": [], "location": {"metro_code": True}}, None),
    ],
)  # fmt: skip
def test_geo_from_record(record: object, expected: GeoInfo | None) -> None:
    assert geo_from_record(record) == expected


def test_maxmind_lookup_with_a_fake_reader() -> None:
    reader = FakeReader(
        {"203.0.113.9": CITY_RECORD, "2001:db8::9": {"country": {"iso_code": "FR"}}}
    )
    geo = MaxMindLookup.from_reader(reader)
    assert geo.lookup("203.0.113.9") == GeoInfo("US", "US-CA", "807")
    assert geo.lookup(" 2001:db8::9") == GeoInfo("FR", None, None)
    assert geo.lookup("192.0.2.1") is None
    assert geo.lookup("192.0.2.66") is None
    assert geo.lookup("::ffff:203.0.113.9") == GeoInfo("US", "US-CA", "807")
    assert geo.lookup("") is None
    geo.close()
    assert reader.closed


def test_maxmind_without_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "maxminddb", None)  # makes `import maxminddb` fail
    with pytest.raises(GeoError, match=r"pip install 'vastserver\[geo\]'"):
        MaxMindLookup(tmp_path / "city.mmdb")
    with pytest.raises(GeoError, match="maxminddb"):
        open_geo(tmp_path / "city.mmdb")


# A minimal MaxMind DB writer (format 2.0, 24-bit records, IPv6 tree): enough to check that
# MaxMindLookup reads a real file through the real package.


class U16(int):
    pass


class U32(int):
    pass


class U64(int):
    pass


def _control(kind: int, size: int) -> bytes:
    first, extended = (kind << 5, b"") if kind <= 7 else (0, bytes([kind - 7]))
    if size < 29:
        return bytes([first | size]) + extended
    if size < 285:
        return bytes([first | 29]) + extended + bytes([size - 29])
    return bytes([first | 30]) + extended + (size - 285).to_bytes(2, "big")


def _encode(value: object) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, dict):
        body = b"".join(_encode(k) + _encode(v) for k, v in value.items())
        return _control(7, len(value)) + body
    if isinstance(value, list):
        return _control(11, len(value)) + b"".join(_encode(v) for v in value)
    if isinstance(value, int):
        kind = 9 if isinstance(value, U64) else 5 if isinstance(value, U16) else 6
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return _control(kind, len(raw)) + raw
    raise TypeError(type(value))


def write_mmdb(path: Path, networks: list[tuple[str, dict[str, object]]]) -> None:
    data = b""
    leaves: list[tuple[int, int, int]] = []  # (bits, prefix length, data offset)
    for cidr, record in networks:
        net = ipaddress.ip_network(cidr)
        bits, plen = int(net.network_address), net.prefixlen
        if net.version == 4:
            plen += 96  # IPv4 lives at ::a.b.c.d/96+n in an IPv6 tree
        leaves.append((bits, plen, len(data)))
        data += _encode(record)

    root: list[object] = [None, None]
    for bits, plen, offset in sorted(leaves, key=lambda t: t[1]):  # shorter prefixes first
        node = root
        for depth in range(plen):
            bit = (bits >> (127 - depth)) & 1
            if depth == plen - 1:
                node[bit] = ("leaf", offset)
                break
            child = node[bit]
            if not isinstance(child, list):  # empty, or a shorter prefix's leaf: split it
                child = [child, child]
                node[bit] = child
            node = child

    order: list[list[object]] = []
    ids: dict[int, int] = {}
    queue = [root]
    while queue:
        node = queue.pop(0)
        ids[id(node)] = len(order)
        order.append(node)
        queue.extend(c for c in node if isinstance(c, list))
    count = len(order)

    def pointer(child: object) -> int:
        if isinstance(child, list):
            return ids[id(child)]
        if isinstance(child, tuple):
            return count + 16 + int(child[1])
        return count

    tree = b"".join(
        pointer(n[0]).to_bytes(3, "big") + pointer(n[1]).to_bytes(3, "big") for n in order
    )
    metadata = {
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(1_700_000_000),
        "database_type": "GeoIP2-City",
        "description": {"en": "vastserver test database"},
        "ip_version": U16(6),
        "languages": ["en"],
        "node_count": U32(count),
        "record_size": U16(24),
    }
    path.write_bytes(tree + b"\x00" * 16 + data + b"\xab\xcd\xefMaxMind.com" + _encode(metadata))


def test_maxmind_reads_a_real_database(tmp_path: Path) -> None:
    maxminddb = pytest.importorskip("maxminddb", exc_type=ImportError)
    path = tmp_path / "city.mmdb"
    write_mmdb(
        path,
        [
            ("203.0.113.0/24", CITY_RECORD),
            (
                "203.0.113.128/25",
                {"country": {"iso_code": "US"}, "location": {"metro_code": U16(803)}},
            ),
            (
                "2001:db8::/32",
                {"country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "BE"}]},
            ),
        ],
    )
    for mode in (maxminddb.MODE_AUTO, maxminddb.MODE_MMAP):  # C extension when present, pure
        with maxminddb.open_database(str(path), mode) as reader:
            assert reader.get("203.0.113.5") == CITY_RECORD
    geo = open_geo(path)
    assert isinstance(geo, MaxMindLookup)
    assert geo.lookup("203.0.113.5") == GeoInfo("US", "US-CA", "807")
    assert geo.lookup("203.0.113.200") == GeoInfo("US", None, "803")
    assert geo.lookup("::ffff:203.0.113.5") == GeoInfo("US", "US-CA", "807")
    assert geo.lookup("2001:db8:5::1") == GeoInfo("DE", "DE-BE", None)
    assert geo.lookup("198.51.100.1") is None
    assert geo.lookup("not an ip") is None
    geo.close()


def test_maxmind_bad_file(tmp_path: Path) -> None:
    pytest.importorskip("maxminddb", exc_type=ImportError)
    path = tmp_path / "broken.mmdb"
    path.write_bytes(b"not a database")
    with pytest.raises(GeoError, match="cannot open"):
        MaxMindLookup(path)


# -------------------------------------------------------------------------------- open_geo


def test_open_geo_by_suffix(tmp_path: Path) -> None:
    assert isinstance(open_geo(None), CidrTable)
    table = open_geo(write(tmp_path, "10.0.0.0/8,JP\n", "mine.CSV"))
    assert table.lookup("10.0.0.1") == GeoInfo("JP", None, None)
    with pytest.raises(GeoError, match="mmdb"):
        open_geo(tmp_path / "geo.txt")


# -------------------------------------------------------------------------------- fill_geo


def test_fill_geo(demo: GeoLookup) -> None:
    bare = Device(ip="203.0.113.9")
    assert fill_geo(bare, demo) == Device(ip="203.0.113.9", country="US", region="US-CA", dma="807")
    # The request's own values win; the IP fills only the gaps.
    partial = Device(ip="203.0.113.9", country="US", dma="999")
    assert fill_geo(partial, demo) == Device(
        ip="203.0.113.9", country="US", region="US-CA", dma="999"
    )
    # A different country in the request: the IP's region/DMA would be nonsense.
    other = Device(ip="203.0.113.9", country="CA")
    assert fill_geo(other, demo) is other
    assert fill_geo(Device(), demo) == Device()
    assert fill_geo(Device(ip="8.8.8.8"), demo) == Device(ip="8.8.8.8")
    assert fill_geo(Device(ip="garbage"), demo) == Device(ip="garbage")
