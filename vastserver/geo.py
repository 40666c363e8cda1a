"""Country, region and DMA from the device IP.

Two backends behind one protocol:

* :class:`CidrTable`: a CSV of ``cidr,country,region,dma`` rows (the demo ships
  ``fixtures/geo-cidr.csv``: documentation address ranges only). Longest-prefix match over
  IPv4 and IPv6, precomputed at load time into flat sorted ranges, so a lookup is one
  ``bisect``.
* :class:`MaxMindLookup`: a GeoIP2 / GeoLite2 City database through the optional
  ``maxminddb`` package (``pip install 'vastserver[geo]'``).

``lookup`` never raises for a bad address: malformed input is simply "unknown" (``None``).
Regions come back in the catalog's ISO 3166-2 form (``US-NY``), DMAs as 3-digit strings.
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from vastserver.catalog.model import REGION_RE
from vastserver.logs import event
from vastserver.pipeline.context import Device
from vastserver.settings import PROJECT_ROOT

log = logging.getLogger("vastserver.geo")

DEFAULT_GEO_CSV = PROJECT_ROOT / "fixtures" / "geo-cidr.csv"

_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_SUBDIVISION_RE = re.compile(r"[A-Z0-9]{1,3}")
_DMA_RE = re.compile(r"^\d{3}$")
_V4_MAPPED_LO = 0xFFFF_0000_0000
_V4_MAPPED_HI = 0xFFFF_FFFF_FFFF


class GeoError(ValueError):
    """A geo database that cannot be loaded (bad path, bad rows, missing package)."""


@dataclass(frozen=True, slots=True)
class GeoInfo:
    country: str | None
    """ISO 3166-1 alpha-2, upper case."""
    region: str | None
    """ISO 3166-2 with the country prefix (``US-CA``)."""
    dma: str | None
    """Nielsen DMA (US metro) code, 3 digits."""


class GeoLookup(Protocol):
    def lookup(self, ip: str) -> GeoInfo | None: ...


def region_code(region: str | None, country: str | None) -> str | None:
    """``region`` in the catalog's ISO 3166-2 form (:data:`~vastserver.catalog.model.REGION_RE`),
    as the geo tables, ``region`` on ``/vast`` and OpenRTB's ``device.geo.region`` are read:
    a full code in any case (``us-ny`` -> ``US-NY``), or a bare subdivision code (``NY``)
    prefixed with ``country`` (alpha-2, upper case) when there is one. None for anything else,
    a bare subdivision without a country included."""
    if region is None or not region.isascii():  # "\u0131".upper() is "I": ASCII codes only
        return None
    r = region.upper()
    if REGION_RE.fullmatch(r):
        return r
    if country is not None and _SUBDIVISION_RE.fullmatch(r):
        return f"{country}-{r}"
    return None


def region_in(code: str, country: str | None) -> bool:
    """Whether the region ``code`` (the catalog's form, :func:`region_code`) lies in
    ``country`` (alpha-2, upper case); any country's does when there is none."""
    return country is None or code.partition("-")[0] == country


def normalize(country: str | None, region: str | None, dma: str | int | None) -> GeoInfo:
    """Clean codes: unknown shapes become ``None``; a bare subdivision gets its country."""
    c = (country or "").strip().upper()
    c_ok = c if _COUNTRY_RE.match(c) else None
    r_ok = region_code((region or "").strip(), c_ok)
    d = f"{dma:03d}" if isinstance(dma, int) and not isinstance(dma, bool) else (dma or "")
    d = d.strip() if isinstance(d, str) else ""
    return GeoInfo(country=c_ok, region=r_ok, dma=d if _DMA_RE.match(d) else None)


def _address(ip: str) -> tuple[int, int] | None:
    """(version, integer) for an IP string; IPv4-mapped IPv6 counts as IPv4; else None."""
    if not isinstance(ip, str) or not ip or len(ip) > 64:
        return None
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    n = int(addr)
    if addr.version == 6 and _V4_MAPPED_LO <= n <= _V4_MAPPED_HI:
        return 4, n - _V4_MAPPED_LO
    return addr.version, n


class _RangeIndex:
    """Flat, sorted, non-overlapping ranges; each maps to its most specific network."""

    __slots__ = ("_ends", "_starts", "_values")

    def __init__(self, networks: Iterable[tuple[int, int, GeoInfo]]) -> None:
        # CIDR blocks are nested or disjoint. Sorted by (start, end descending) a parent comes
        # before its children, so a stack sweep splits parents around children in O(n log n).
        # Equal blocks: the later row wins (it ends up on top of the stack).
        ordered = sorted(
            ((start, end, i, info) for i, (start, end, info) in enumerate(networks)),
            key=lambda t: (t[0], -t[1], t[2]),
        )
        starts: list[int] = []
        ends: list[int] = []
        values: list[GeoInfo] = []

        def emit(lo: int, hi: int, info: GeoInfo) -> None:
            if lo > hi:
                return
            if ends and ends[-1] + 1 == lo and values[-1] == info:
                ends[-1] = hi  # merge neighbours with the same answer
                return
            starts.append(lo)
            ends.append(hi)
            values.append(info)

        stack: list[tuple[int, GeoInfo]] = []
        cursor = 0
        for start, end, _, info in ordered:
            while stack and stack[-1][0] < start:
                top_end, top_info = stack.pop()
                emit(cursor, top_end, top_info)
                cursor = max(cursor, top_end + 1)
            if stack:
                emit(cursor, start - 1, stack[-1][1])
            cursor = start
            stack.append((end, info))
        while stack:
            top_end, top_info = stack.pop()
            emit(cursor, top_end, top_info)
            cursor = max(cursor, top_end + 1)
        self._starts = starts
        self._ends = ends
        self._values = values

    def __len__(self) -> int:
        return len(self._starts)

    def find(self, n: int) -> GeoInfo | None:
        i = bisect.bisect_right(self._starts, n) - 1
        if i >= 0 and n <= self._ends[i]:
            return self._values[i]
        return None


class CidrTable:
    """Longest-prefix match over CIDR rows, IPv4 and IPv6."""

    def __init__(self, rows: Iterable[tuple[str, GeoInfo]]) -> None:
        v4: list[tuple[int, int, GeoInfo]] = []
        v6: list[tuple[int, int, GeoInfo]] = []
        for cidr, info in rows:
            net = ipaddress.ip_network(cidr, strict=True)
            span = (int(net.network_address), int(net.broadcast_address), info)
            (v4 if net.version == 4 else v6).append(span)
        self.rows = len(v4) + len(v6)
        self._v4 = _RangeIndex(v4)
        self._v6 = _RangeIndex(v6)

    @classmethod
    def from_csv(cls, path: Path | str) -> CidrTable:
        """``cidr,country,region,dma``; ``#`` comments, blank lines and a header row skipped.

        Bad rows raise :class:`GeoError`, naming the file and line of every one (the first
        :data:`MAX_LISTED_ROWS`, and how many more).
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GeoError(f"{p}: cannot read geo table: {e}") from None
        rows: list[tuple[str, GeoInfo]] = []
        bad: list[str] = []
        for lineno, fields in enumerate(csv.reader(text.splitlines()), start=1):
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            if fields[0].strip().lower() == "cidr":
                continue
            row = _csv_row(fields)
            if isinstance(row, str):
                bad.append(f"{p}:{lineno}: {row}")
            else:
                rows.append(row)
        if bad:
            more = len(bad) - MAX_LISTED_ROWS
            listed = bad[:MAX_LISTED_ROWS] + ([f"... and {more} more"] if more > 0 else [])
            head = f"{len(bad)} bad row{'s' if len(bad) != 1 else ''} in geo table {p}"
            raise GeoError("\n  ".join([head, *listed]))
        return cls(rows)

    def lookup(self, ip: str) -> GeoInfo | None:
        addr = _address(ip)
        if addr is None:
            return None
        version, n = addr
        return (self._v4 if version == 4 else self._v6).find(n)


MAX_LISTED_ROWS = 50
"""A geo table's bad rows listed in its error; the rest are counted."""


def _csv_row(fields: list[str]) -> tuple[str, GeoInfo] | str:
    """One geo CSV row (``cidr,country,region,dma``), or what is wrong with it."""
    if len(fields) > 4:
        return "expected cidr,country,region,dma"
    cidr, country, region, dma = [*(f.strip() for f in fields), "", "", ""][:4]
    try:
        ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        return f"bad CIDR {cidr!r}: {e}"
    info = normalize(country, region, dma)
    if country and info.country is None:
        return f"country must be ISO 3166-1 alpha-2: {country!r}"
    if region and info.region is None:
        return f"bad region {region!r} (ISO 3166-2, e.g. US-CA)"
    if dma and info.dma is None:
        return f"DMA must be 3 digits: {dma!r}"
    return cidr, info


class MmdbReader(Protocol):
    """The part of ``maxminddb.Reader`` this module uses."""

    def get(self, ip_address: str) -> object: ...

    def close(self) -> None: ...


def _field(record: object, *keys: str | int) -> object:
    cur = record
    for k in keys:
        if isinstance(k, int):
            if not isinstance(cur, list) or len(cur) <= k:
                return None
            cur = cur[k]
        else:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(k)
    return cur


def geo_from_record(record: object) -> GeoInfo | None:
    """A GeoIP2 / GeoLite2 City record -> :class:`GeoInfo` (defensive about its shape)."""
    if not isinstance(record, dict):
        return None
    country = _field(record, "country", "iso_code")
    if country is None:
        country = _field(record, "registered_country", "iso_code")
    region = _field(record, "subdivisions", 0, "iso_code")
    metro = _field(record, "location", "metro_code")
    info = normalize(
        country if isinstance(country, str) else None,
        region if isinstance(region, str) else None,
        metro if isinstance(metro, int | str) and not isinstance(metro, bool) else None,
    )
    if info == GeoInfo(None, None, None):
        return None
    return info


class MaxMindLookup:
    """A GeoIP2 / GeoLite2 City ``.mmdb`` through the optional ``maxminddb`` package."""

    def __init__(self, path: Path | str) -> None:
        try:
            import maxminddb
        except ImportError:
            raise GeoError(
                f"{path}: reading a MaxMind database needs the maxminddb package: "
                "pip install 'vastserver[geo]'"
            ) from None
        try:
            self._reader: MmdbReader = maxminddb.open_database(str(path))
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: InvalidDatabaseError
            raise GeoError(f"{path}: cannot open MaxMind database: {e}") from None

    @classmethod
    def from_reader(cls, reader: MmdbReader) -> MaxMindLookup:
        """Wrap an already opened reader (tests, or a reader shared with other code)."""
        self = cls.__new__(cls)
        self._reader = reader
        return self

    def lookup(self, ip: str) -> GeoInfo | None:
        addr = _address(ip)
        if addr is None:
            return None
        version, n = addr
        # IPv4-mapped IPv6 as plain IPv4: the same answer whatever aliases the file has.
        canonical = str(ipaddress.IPv4Address(n)) if version == 4 else ip.strip()
        try:
            record = self._reader.get(canonical)
        except (ValueError, TypeError, OSError, RuntimeError) as e:
            # RuntimeError: maxminddb's InvalidDatabaseError (a corrupt record). Geo is a
            # targeting hint: an unknown location, never a failed ad request.
            event(log, "geo_lookup_failed", logging.DEBUG, ip=canonical, error=str(e))
            return None
        return geo_from_record(record)

    def close(self) -> None:
        self._reader.close()


def open_geo(path: Path | None) -> GeoLookup:
    """None: the demo CIDR table; ``*.mmdb``: MaxMind; ``*.csv``: a CIDR table."""
    if path is None:
        if not DEFAULT_GEO_CSV.is_file():
            event(log, "geo_disabled", logging.WARNING, missing=str(DEFAULT_GEO_CSV))
            return CidrTable(())
        return CidrTable.from_csv(DEFAULT_GEO_CSV)
    suffix = path.suffix.lower()
    if suffix == ".mmdb":
        return MaxMindLookup(path)
    if suffix == ".csv":
        return CidrTable.from_csv(path)
    raise GeoError(f"{path}: a geo database must be a MaxMind .mmdb or a cidr,country,... .csv")


def fill_geo(device: Device, geo: GeoLookup) -> Device:
    """Fill the device's country/region/dma from its IP where the request left them empty.

    A country the request gave wins: then the IP's region/DMA are only used when the IP
    agrees on the country (a region of another country would be nonsense).
    """
    if device.ip is None or (device.country and device.region and device.dma):
        return device
    info = geo.lookup(device.ip)
    if info is None:
        return device
    if device.country is not None and info.country != device.country:
        return device
    return replace(
        device,
        country=device.country or info.country,
        region=device.region or info.region,
        dma=device.dma or info.dma,
    )
