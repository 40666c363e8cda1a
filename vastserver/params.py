"""Query-string parsing for ``/vast``, ``/vmap`` and ``/decide``.

Unknown parameters are ignored; a malformed known one raises :class:`ParamError` naming the
field and why, which the HTTP layer answers with 400. Nothing here knows about aiohttp.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from types import MappingProxyType
from typing import TypeVar

from vastserver.catalog.model import MAX_ADS, MAX_POD_S, RATINGS, AdRules, BreakPosition
from vastserver.consent import (
    ALL,
    GDPR_COUNTRIES,
    MAX_TC_STRING,
    MAX_US_PRIVACY,
    NO_SIGNALS,
    NONE,
    Permissions,
    PrivacySignals,
    parse_gpp_sid,
    read_privacy,
)
from vastserver.geo import GeoLookup, fill_geo, region_code, region_in
from vastserver.pipeline.context import (
    DEVICE_TYPES,
    PLATFORMS,
    VAST_VERSIONS,
    AdRequest,
    BreakSpec,
    Content,
    Device,
)

MAX_AD_S = 600
MAX_OFFSET_MS = 359_999_999
"""99:59:59.999: VMAP 1.0 writes a break's ``timeOffset`` as ``HH:MM:SS[.mmm]``, two-digit
hours, so no cue point, and no content on /vmap, may run longer."""
MAX_CONTENT_S = MAX_OFFSET_MS / 1000
MAX_LIST = 32
MAX_DOMAIN = 253
"""The longest domain name (RFC 1035), as OpenRTB's ``badv`` allows it."""
MAX_TEXT = 256
MAX_CUE_POINTS = 100
MAX_ATTRIBUTE_CODE = 1000
"""The highest AdCOM creative attribute code ``battr`` (OpenRTB ``video.battr``) takes: the
list has 17 today, and a later code blocks nothing here rather than failing the request."""
KV_PREFIX = "kv_"

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:@/+\-]{1,128}$")
_ID_RE = re.compile(r"[A-Za-z0-9_.:@/+=\-]{1,128}")
"""A viewer's or a session's id (``device_id``, ``session``): a token, or base64 with its
``=`` padding. Every place one is put into a URL percent-encodes it; tracking tokens carry
it as bytes; store keys take any text."""
_ZERO_IFA_RE = re.compile(r"[0\-]+")
_COUNTRY_RE = re.compile(r"^[A-Za-z]{2}$")
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
_HMS_RE = re.compile(r"([0-9]{1,3}):([0-5][0-9]):([0-5][0-9])(\.[0-9]{1,3})?")
# Numbers as people and players write them, in ASCII: Python's int() and float() also take
# "1_0", "+5", " 7", "1e3" and other scripts' digits ("١٢٠"), which a client never means.
_INT_RE = re.compile(r"-?[0-9]{1,9}")
_SPACE = " \t"
"""What list items and offsets may be padded with: ASCII blanks (``15, 30``, or ``15,+30`` as
a form encodes it), not the Unicode spaces str.strip() would also take."""
_DEC_RE = re.compile(r"-?(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})")
_LONG_NUMBER_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
"""A number, of any length: one with more digits than the checks above read is out of
range (or needlessly precise), not "not a number"."""
_BREAK_NAMES = {
    "pre": BreakPosition.PRE,
    "mid": BreakPosition.MID,
    "post": BreakPosition.POST,
    "1": BreakPosition.PRE,
    "2": BreakPosition.MID,
    "3": BreakPosition.POST,
}


class ParamError(ValueError):
    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


def _get(q: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for n in names:
        v = q.get(n)
        if v is not None and v != "":
            return n, v
    return None


def _fmt(x: float) -> str:
    """A bound as people write it, to the millisecond: ``600``, ``359999.999`` (``:g`` would
    round the latter up to ``360000``, a value the check refuses)."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _num(q: Mapping[str, str], *names: str, lo: float, hi: float) -> float | None:
    got = _get(q, *names)
    if got is None:
        return None
    name, raw = got
    if not _DEC_RE.fullmatch(raw):
        if _LONG_NUMBER_RE.fullmatch(raw):
            raise ParamError(
                name,
                f"must be between {_fmt(lo)} and {_fmt(hi)}, in at most 12 digits before "
                "the point and 9 after",
            )
        raise ParamError(name, f"not a number: {raw[:40]!r}")
    v = float(raw)
    if not math.isfinite(v) or v < lo or v > hi:
        raise ParamError(name, f"must be between {_fmt(lo)} and {_fmt(hi)}")
    return v


def _int(q: Mapping[str, str], *names: str, lo: int, hi: int) -> int | None:
    got = _get(q, *names)
    if got is None:
        return None
    name, raw = got
    if not _INT_RE.fullmatch(raw):
        if _LONG_NUMBER_RE.fullmatch(raw) and "." not in raw:
            raise ParamError(name, f"must be between {lo} and {hi}, in at most 9 digits")
        raise ParamError(name, f"not an integer: {raw[:40]!r}")
    v = int(raw)
    if v < lo or v > hi:
        raise ParamError(name, f"must be between {lo} and {hi}")
    return v


def _flag(q: Mapping[str, str], name: str, default: bool) -> bool:
    got = _get(q, name)
    if got is None:
        return default
    raw = got[1].lower()
    if raw in ("1", "true"):
        return True
    if raw in ("0", "false"):
        return False
    raise ParamError(name, "must be 0 or 1")


def _text(q: Mapping[str, str], name: str) -> str | None:
    got = _get(q, name)
    if got is None:
        return None
    if len(got[1]) > MAX_TEXT or any(ord(ch) < 32 for ch in got[1]):
        raise ParamError(name, f"must be printable and at most {MAX_TEXT} characters")
    return got[1]


def _token(q: Mapping[str, str], name: str) -> str | None:
    got = _get(q, name)
    if got is None:
        return None
    if not _TOKEN_RE.fullmatch(got[1]):  # not match(): its "$" lets a final "\n" through
        raise ParamError(name, "must be 1-128 characters of letters, digits and _.:@/+-")
    return got[1]


def is_id(text: str) -> bool:
    """``text`` may be a ``session`` or ``device_id`` (:data:`_ID_RE`)."""
    return _ID_RE.fullmatch(text) is not None


def _id(q: Mapping[str, str], name: str) -> str | None:
    got = _get(q, name)
    if got is None:
        return None
    if not is_id(got[1]):
        raise ParamError(name, "must be 1-128 characters of letters, digits and _.:@/+-=")
    return got[1]


def is_zero_ifa(ifa: str | None) -> bool:
    """Whether ``ifa`` is the all-zero IFA (``00000000-0000-0000-0000-000000000000``) a
    device sends when the viewer does not allow tracking (tvOS/iOS without ATT consent,
    Android with limit ad tracking on or the ad ID deleted)."""
    return ifa is not None and _ZERO_IFA_RE.fullmatch(ifa) is not None


def limit_tracking(
    allowed: Permissions, ifa: str | None, lmt: bool
) -> tuple[Permissions, str | None]:
    """The device's own opt-outs on top of what the consent allows, and the IFA left to key
    on. ``lmt`` (limit ad tracking) is the device's opt-out of interest-based ads, and the
    all-zero IFA says the same (the viewer refused tracking; keyed as an IFA it would also
    make every such household one viewer): either refuses the device identifier (caps on
    the session only) and the audience segments, as a refused consent does. /vast, /vmap,
    /decide and OpenRTB read them alike."""
    if lmt or is_zero_ifa(ifa):
        allowed = NONE
    return allowed, ifa if allowed.device_id else None


def _choice(
    q: Mapping[str, str], name: str, allowed: frozenset[str] | tuple[str, ...]
) -> str | None:
    got = _get(q, name)
    if got is None:
        return None
    v = got[1] if name == "rating" else got[1].lower()
    if v not in allowed:
        raise ParamError(name, f"must be one of {', '.join(sorted(allowed))}")
    return v


def _list(q: Mapping[str, str], *names: str, max_len: int = 64) -> tuple[str, ...]:
    got = _get(q, *names)
    if got is None:
        return ()
    name, raw = got
    items = tuple(x.strip(_SPACE) for x in raw.split(",") if x.strip(_SPACE))
    if len(items) > MAX_LIST:
        raise ParamError(name, f"at most {MAX_LIST} entries")
    for x in items:
        if len(x) > max_len or any(ord(ch) < 32 for ch in x):
            raise ParamError(name, f"entries must be printable and at most {max_len} characters")
    return items


def _battr(q: Mapping[str, str]) -> frozenset[int]:
    """``battr``: blocked AdCOM creative attributes, a comma list of codes 1 to
    :data:`MAX_ATTRIBUTE_CODE` (as OpenRTB's ``video.battr``)."""
    codes = _list(q, "battr")
    if not all(_INT_RE.fullmatch(c) for c in codes):
        raise ParamError("battr", "must be AdCOM creative attribute codes, comma separated")
    out = frozenset(int(c) for c in codes)
    if any(c < 1 or c > MAX_ATTRIBUTE_CODE for c in out):
        raise ParamError("battr", f"each code must be between 1 and {MAX_ATTRIBUTE_CODE}")
    return out


def _lower(v: str | None) -> str | None:
    """A value matched in any case, as OpenRTB and the catalog fold it (``RIDA`` is ``rida``)."""
    return None if v is None else v.lower()


def floor_ms(seconds: float) -> int:
    """Whole milliseconds not above ``seconds``, as written: ``29.9999`` is 29,999 (a limit
    rounded up would let a 30 s ad into a 29.9999 s avail) and ``29.97`` 29,970 (not the
    29,969 of ``floor(29.97 * 1000)``). A parsed number's ``repr`` is its decimal text
    (at most 12 digits before the point and 9 after, :data:`_DEC_RE`)."""
    return math.floor(Decimal(repr(seconds)) * 1000)


def ceil_ms(seconds: float) -> int:
    """Whole milliseconds not below ``seconds`` (:func:`floor_ms`'s counterpart, for lower
    bounds)."""
    return math.ceil(Decimal(repr(seconds)) * 1000)


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The HTTP caller and, for SSAI, the device it calls for."""

    caller_ip: str | None
    caller_user_agent: str | None
    device_ip: str | None
    device_user_agent: str | None


def header_text(value: str) -> str:
    """A request header's value as valid text. aiohttp decodes header bytes as UTF-8 with
    ``surrogateescape``, so a byte that is not UTF-8 (``User-Agent: Roku\\xff/9``) arrives
    as a lone surrogate, which ``.encode("utf-8")`` (the event log, hashing) refuses; here
    it becomes U+FFFD. ASCII, nearly every header, is returned as it is."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _forwarded_ip(xff: str) -> str | None:
    """The client's address from ``X-Forwarded-For``: its first non-empty element, with a
    port taken off (``203.0.113.7:51234``, ``[2001:db8::1]:443``). None when that element
    is no address (``unknown``, an RFC 7239 obfuscated ``_identifier``, garbage): the
    proxies listed after it are not the client either."""
    first = next((e.strip(_SPACE) for e in xff.split(",") if e.strip(_SPACE)), "")
    if first.startswith("["):  # [v6] or [v6]:port
        host, sep, rest = first[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        first = host
    elif first.count(":") == 1:  # v4:port (a bare IPv6 address has several colons)
        first = first.partition(":")[0]
    return ip_or_none(first)


def bare_ip(text: str) -> str:
    """``text`` (spaces around it aside) as a normalised IPv4 or IPv6 address; ValueError
    when it is not one, or is an IPv6 address with a zone (``fe80::1%eth0``): a zone names
    an interface of the host that wrote it, and ``ipaddress`` takes any text after the
    ``%``, which would travel into viewer keys and the event log as the device's IP."""
    addr = ipaddress.ip_address(text.strip(_SPACE))
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise ValueError("an IPv6 zone")
    return str(addr)


def ip_or_none(text: str | None) -> str | None:
    """``text`` as a normalised IP address; None when absent or not one."""
    if not text:
        return None
    try:
        return bare_ip(text)
    except ValueError:
        return None


def ip_prefix(text: str | None) -> str | None:
    """``text``'s network, not its host: the first three bytes of an IPv4 address (a /24) or
    the first six of an IPv6 one (a /48), the rest zeroed, as IP anonymisation in analytics
    does; None when absent or not an address. What the event log keeps of a beacon's peer
    when the viewer refused tracking: enough to trace abuse to a network, not to a home."""
    ip = ip_or_none(text)
    if ip is None:
        return None
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket's IPv4 peer: its /48 would be "::"
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False).network_address)


MAX_UA = 2048
"""The longest ``device_ua`` parameter read (as OpenRTB's ``device.ua``)."""


def client_info(
    headers: Mapping[str, str], peer: str | None, query: Mapping[str, str] | None = None
) -> ClientInfo:
    """Device IP/UA, first of: the IAB SSAI headers ``X-Device-IP`` /
    ``X-Device-User-Agent``; the ``device_ip`` / ``device_ua`` query parameters (what an SSAI
    stitcher that sends no such headers, MediaTailor, can put in an ad tag:
    ``[session.client_ip]``, ``[session.user_agent]``); ``X-Forwarded-For`` / ``User-Agent``;
    the peer.

    ``X-Device-IP`` and ``device_ip`` are set on purpose by the SSAI caller: a malformed one
    is a 400 naming it. ``X-Forwarded-For`` is whatever the proxies in front wrote: read
    leniently, and when it names no address the peer is the caller."""
    q = query or {}
    caller_ua = headers.get("User-Agent")
    caller_ip = peer
    xff = headers.get("X-Forwarded-For")
    if xff:
        caller_ip = _forwarded_ip(xff) or peer
    device_ip = caller_ip
    dev_ip = headers.get("X-Device-IP")
    field = "X-Device-IP"
    if not dev_ip and (got := _get(q, "device_ip")) is not None:
        field, dev_ip = got
    if dev_ip:
        try:
            device_ip = bare_ip(dev_ip)
        except ValueError:
            raise ParamError(field, "not an IP address") from None
    caller_ua = header_text(caller_ua) if caller_ua else caller_ua
    dev_ua = headers.get("X-Device-User-Agent")
    if dev_ua:
        dev_ua = header_text(dev_ua)
    elif (got := _get(q, "device_ua")) is not None:
        dev_ua = header_text(got[1])
        if len(dev_ua) > MAX_UA or any(ord(ch) < 32 or ord(ch) == 127 for ch in dev_ua):
            raise ParamError("device_ua", f"must be printable and at most {MAX_UA} characters")
    return ClientInfo(
        caller_ip=caller_ip,
        caller_user_agent=caller_ua,
        device_ip=device_ip,
        device_user_agent=dev_ua or caller_ua,
    )


@dataclass(frozen=True, slots=True)
class Targeting:
    """Everything but the break: shared by /vast, /vmap and /decide."""

    client: ClientInfo
    device: Device
    content: Content
    session: str | None
    placement: str | None
    vast_version: str
    debug: bool
    blocked_categories: frozenset[str]
    blocked_domains: frozenset[str]
    segments: tuple[str, ...]
    key_values: Mapping[str, str]
    blocked_attributes: frozenset[int] = frozenset()
    privacy: PrivacySignals = NO_SIGNALS
    permissions: Permissions = ALL
    """What the consent and ``lmt`` allow (:func:`limit_tracking`)."""
    test: bool = False
    """``test=1``: a preview, decided as an OpenRTB ``test`` = 1 request
    (:attr:`~vastserver.pipeline.context.AdRequest.test`)."""

    def request(self, brk: BreakSpec, *, require_https: bool = True) -> AdRequest:
        return AdRequest(
            brk=brk,
            device=self.device,
            content=self.content,
            session=self.session,
            placement=self.placement,
            vast_version=self.vast_version,
            debug=self.debug,
            blocked_categories=self.blocked_categories,
            blocked_domains=self.blocked_domains,
            blocked_attributes=self.blocked_attributes,
            segments=self.segments,
            key_values=self.key_values,
            caller_ip=self.client.caller_ip,
            caller_user_agent=self.client.caller_user_agent,
            require_https=require_https,
            privacy=self.privacy,
            permissions=self.permissions,
            test=self.test,
        )


def parse_consent(
    q: Mapping[str, str], tcf_vendor_id: int | None, *, child_directed: bool = False
) -> tuple[Permissions, PrivacySignals]:
    """The privacy signals: ``gdpr`` (0/1) and ``gdpr_consent`` (a TCF v2 string; without
    ``gdpr`` the GDPR applies when one is given), ``us_privacy`` (CCPA), ``gpp`` and
    ``gpp_sid`` (IAB GPP): what the decision may use (:mod:`vastserver.consent`), and what
    third parties' trackers get."""
    consent = _long_text(q, "gdpr_consent", MAX_TC_STRING)
    gpp = _long_text(q, "gpp", MAX_TC_STRING)
    usp = _long_text(q, "us_privacy", MAX_US_PRIVACY)
    got = _get(q, "gpp_sid")
    sid: tuple[int, ...] | None = None
    if got is not None:
        try:
            sid = parse_gpp_sid(got[1])
        except ValueError as e:
            raise ParamError("gpp_sid", str(e)) from None
    return read_privacy(
        gdpr=_flag(q, "gdpr", False) if _get(q, "gdpr") is not None else None,
        tc_string=consent,
        vendor_id=tcf_vendor_id,
        us_privacy=usp,
        gpp=gpp,
        gpp_sid=sid,
        child_directed=child_directed,
    )


def _long_text(q: Mapping[str, str], name: str, max_len: int) -> str | None:
    got = _get(q, name)
    value = got[1] if got else None
    if value is not None and len(value) > max_len:
        raise ParamError(name, f"at most {max_len} characters")
    return value.strip() or None if value else None  # as OpenRTB strips its strings


def _region(q: Mapping[str, str], country: str | None) -> str | None:
    """``region`` as the geo table reads its rows (:func:`~vastserver.geo.region_code`): an
    ISO 3166-2 code (``US-NY``, any case), or a bare subdivision (``NY``) of ``country``.
    A full code must be one of ``country``'s when that is given (``country=CA&region=US-NY``
    names no place)."""
    got = _get(q, "region")
    if got is None:
        return None
    code = region_code(got[1], country)
    if code is None:
        raise ParamError(
            "region",
            "must be an ISO 3166-2 code such as US-NY, or a subdivision code such as NY "
            "with country",
        )
    if not region_in(code, country):
        raise ParamError(
            "region", f"{code} is a region of {code.partition('-')[0]}, not of country {country}"
        )
    return code


def parse_targeting(
    q: Mapping[str, str], client: ClientInfo, *, tcf_vendor_id: int | None = None
) -> Targeting:
    """Viewer, device and content parameters shared by /vast, /vmap and /decide. Without
    consent to use a device identifier the viewer counts as under limited ad tracking, and
    without consent to personalised ads the segments are ignored (:mod:`vastserver.consent`);
    ``lmt`` and the all-zero IFA refuse both (:func:`limit_tracking`)."""
    kids = _flag(q, "kids", False)
    consented, privacy = parse_consent(q, tcf_vendor_id, child_directed=kids)
    allowed, ifa = limit_tracking(consented, _id(q, "device_id"), _flag(q, "lmt", False))
    rating = _choice(q, "rating", RATINGS)
    country = _text(q, "country")
    if country is not None and not _COUNTRY_RE.match(country):
        raise ParamError("country", "must be an ISO 3166-1 alpha-2 code")
    if country is not None:
        country = country.upper()
    region = _region(q, country)
    language = _text(q, "language")
    if language is not None and not _LANG_RE.match(language):
        raise ParamError("language", "must be a language code such as en or en-US")
    live_raw = _get(q, "live")
    device = Device(
        ip=client.device_ip,
        user_agent=client.device_user_agent,
        ifa=ifa,
        ifa_type=_lower(_token(q, "ifa_type")),
        lmt=not allowed.device_id,
        device_type=_choice(q, "device_type", DEVICE_TYPES),
        platform=_choice(q, "platform", PLATFORMS),
        country=country,
        region=region,
        dma=_token(q, "dma"),
        language=language.split("-")[0].lower() if language else None,
    )
    content = Content(
        id=_text(q, "content_id"),
        genres=tuple(g.lower() for g in _list(q, "genre")),
        rating=rating,
        live=None if live_raw is None else _flag(q, "live", False),
        series=_text(q, "series"),
        channel=_text(q, "channel"),
        kids=kids,
    )
    # Key-values describe the content and the placement (kv_league, kv_tier): not consent-
    # gated, so they must carry no audience data (README); segments are for that.
    kv = {k[len(KV_PREFIX) :]: v for k, v in q.items() if k.startswith(KV_PREFIX)}
    if len(kv) > MAX_LIST:
        raise ParamError("kv_*", f"at most {MAX_LIST} key-values")
    for k, v in kv.items():
        if len(k) > 64 or len(v) > MAX_TEXT:
            raise ParamError(f"kv_{k[:64]}", "key or value too long")
    version = _get(q, "vast")
    if version is not None and version[1] not in VAST_VERSIONS:
        raise ParamError("vast", f"must be one of {', '.join(VAST_VERSIONS)}")
    return Targeting(
        client=client,
        device=device,
        content=content,
        session=_id(q, "session"),
        placement=_token(q, "placement"),
        vast_version=version[1] if version else "4.2",
        debug=_flag(q, "debug", False),
        blocked_categories=frozenset(_list(q, "bcat")),
        blocked_domains=frozenset(d.lower() for d in _list(q, "badv", max_len=MAX_DOMAIN)),
        blocked_attributes=_battr(q),
        segments=_list(q, "segments") if allowed.segments else (),
        key_values=MappingProxyType(kv),
        privacy=privacy,
        permissions=allowed,
        test=_flag(q, "test", False),
    )


Located = TypeVar("Located", AdRequest, Targeting)
"""A request to locate: a break's (/vast, /decide, OpenRTB) or a VMAP's targeting."""


def locate(
    x: Located, geo: GeoLookup, *, gdpr_by_geo: bool, tcf_vendor_id: int | None = None
) -> Located:
    """``x`` with its device located (:func:`~vastserver.geo.fill_geo`: the request's
    ``country``, else the IP's), and then, with ``gdpr_by_geo`` (``VASTSERVER_GDPR_BY_GEO``),
    the GDPR applied by that country (:func:`apply_gdpr_by_geo`). Every decision request
    (/vast, /vmap, /decide, OpenRTB) is located here, once, before it is decided."""
    located = replace(x, device=fill_geo(x.device, geo))
    if not gdpr_by_geo:  # the setting's default: nothing more to do
        return located
    return apply_gdpr_by_geo(located, tcf_vendor_id)


def apply_gdpr_by_geo(x: Located, tcf_vendor_id: int | None = None) -> Located:
    """A request that carries no GDPR signal at all (no ``gdpr`` flag, no consent string,
    no applicable EU TCF section of a GPP string: its resolved ``privacy.gdpr`` is None)
    from a country where the GDPR applies (:data:`~vastserver.consent.GDPR_COUNTRIES`),
    decided as under ``gdpr=1`` without a consent string: what that allows
    (:func:`~vastserver.consent.read_privacy`, with the request's other signals) on top of
    the device's own opt-outs (:func:`limit_tracking`), and ``${GDPR}`` = 1 for third
    parties. An explicit ``gdpr=0``, or an unknown country, leaves the request as it is."""
    p = x.privacy
    if p.gdpr is not None or x.device.country not in GDPR_COUNTRIES:
        return x
    consented, privacy = read_privacy(
        gdpr=True,
        tc_string=None,
        vendor_id=tcf_vendor_id,
        us_privacy=p.us_privacy,
        gpp=p.gpp,
        gpp_sid=p.gpp_sid,
        child_directed=x.content.kids,
    )
    allowed, ifa = limit_tracking(consented, x.device.ifa, x.device.lmt)
    return replace(
        x,
        device=replace(x.device, ifa=ifa, lmt=not allowed.device_id),
        segments=x.segments if allowed.segments else (),
        privacy=privacy,
        permissions=allowed,
    )


PAGE_MAX = 999_999_999
"""The largest ``offset`` or ``limit`` of a listing (nine digits, as :func:`_int` reads)."""


def parse_page(q: Mapping[str, str]) -> tuple[int, int | None]:
    """A listing's ``offset`` (default 0) and ``limit`` (default None: every item), each a
    non-negative integer."""
    offset = _int(q, "offset", lo=0, hi=PAGE_MAX)
    return 0 if offset is None else offset, _int(q, "limit", lo=0, hi=PAGE_MAX)


def parse_break_position(q: Mapping[str, str]) -> BreakPosition:
    got = _get(q, "break")
    if got is None:
        return BreakPosition.MID
    pos = _BREAK_NAMES.get(got[1].lower())
    if pos is None:
        raise ParamError("break", "must be pre, mid, post or an IAB BREAKPOSITION 1-3")
    return pos


def parse_vast_request(
    q: Mapping[str, str],
    client: ClientInfo,
    rules: AdRules,
    *,
    require_https: bool = True,
    tcf_vendor_id: int | None = None,
) -> AdRequest:
    """Everything ``/vast`` (and ``/decide``) accepts; break defaults come from ad rules."""
    position = parse_break_position(q)
    default = rules.for_position(position)
    pod_s = _num(q, "pod_duration", "poddur", lo=0, hi=MAX_POD_S)  # 0: an empty avail
    max_ads = _int(q, "max_ads", "maxseq", lo=1, hi=MAX_ADS)
    min_ad = _num(q, "min_ad_duration", lo=0, hi=MAX_AD_S)
    max_ad = _num(q, "max_ad_duration", lo=1, hi=MAX_AD_S)
    if min_ad is not None and max_ad is not None and min_ad > max_ad:
        raise ParamError("min_ad_duration", "must not exceed max_ad_duration")
    required: frozenset[int] | None = None
    got = _get(q, "required_durations", "rqddurs")
    if got is not None:
        name, _ = got
        parts = _list(q, name)
        if not parts:
            raise ParamError(name, "empty list")
        if not all(_INT_RE.fullmatch(p) for p in parts):
            raise ParamError(name, "must be whole seconds, comma separated")
        required = frozenset(int(p) for p in parts)
        if any(r < 1 or r > MAX_AD_S for r in required):
            raise ParamError(name, f"each duration must be between 1 and {MAX_AD_S}")
    avail = _int(q, "avail", lo=0, hi=10_000)
    targeting = parse_targeting(q, client, tcf_vendor_id=tcf_vendor_id)
    brk = BreakSpec(
        position=position,
        pod_duration_ms=default.duration_s * 1000 if pod_s is None else floor_ms(pod_s),
        max_ads=default.max_ads if max_ads is None else max_ads,
        min_ad_duration_ms=None if min_ad is None else ceil_ms(min_ad),
        max_ad_duration_ms=None if max_ad is None else floor_ms(max_ad),
        required_durations_s=required,
        avail=avail or 0,
        avail_given=avail is not None,
    )
    return targeting.request(brk, require_https=require_https)


def parse_offset(raw: str, field: str, content_s: float | None) -> float:
    """A cue point: seconds, ``HH:MM:SS[.mmm]`` or a percentage of the content duration,
    between 0 and 99:59:59.999 (:data:`MAX_OFFSET_MS`) in every form."""
    raw = raw.strip(_SPACE)
    if raw.endswith("%"):
        if content_s is None:
            raise ParamError(field, "a percentage needs content_duration")
        if not _DEC_RE.fullmatch(raw[:-1]):
            raise ParamError(field, f"bad percentage {raw[:20]!r}")
        pct = float(raw[:-1])
        if not 0 <= pct <= 100:
            raise ParamError(field, "percentages must be between 0 and 100")
        v = content_s * pct / 100
    elif m := _HMS_RE.fullmatch(raw):  # not match(): its "$" lets a final "\n" through
        frac = float(m.group(4)) if m.group(4) else 0.0
        v = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)) + frac
    elif _DEC_RE.fullmatch(raw):
        v = float(raw)
    else:
        raise ParamError(field, f"not seconds, HH:MM:SS.mmm or a percentage: {raw[:20]!r}")
    if not math.isfinite(v) or v < 0 or round(v * 1000) > MAX_OFFSET_MS:
        raise ParamError(
            field,
            f"offset out of range: must be between 0 and 99:59:59.999 ({_fmt(MAX_CONTENT_S)} s),"
            " the longest VMAP timeOffset",
        )
    return v


@dataclass(frozen=True, slots=True)
class VmapQuery:
    content_duration_s: float | None
    cue_points_s: tuple[float, ...] | None
    """The mid-rolls asked for (``cue_points``, or every ``midroll_interval``), before the
    placement's spacing (:func:`vmap_midrolls`); None when the request names neither."""
    cue_points_from: str | None
    """The parameter ``cue_points_s`` comes from: ``cue_points`` or ``midroll_interval``."""
    preroll: bool
    midroll: bool
    """``midroll=0``: no mid-rolls, whatever the cue points or ad rules say."""
    postroll: bool
    preroll_duration_s: float | None
    midroll_duration_s: float | None
    postroll_duration_s: float | None
    pod_duration_s: float | None
    """Every break's length, where its own ``*_duration`` is not given."""
    max_ads: int | None
    """Every break's most ads, for the breaks the ad rules do not disable."""
    inline: bool


def parse_vmap_query(q: Mapping[str, str]) -> VmapQuery:
    content_s = _num(q, "content_duration", lo=1, hi=MAX_CONTENT_S)
    interval = _num(q, "midroll_interval", lo=MIN_MIDROLL_INTERVAL_S, hi=MAX_CONTENT_S)
    content_ms = None if content_s is None else round(content_s * 1000)
    # timeOffset is written to the millisecond: cue points are compared, de-duplicated and
    # told from the pre-roll's 0 as they will be written (10.0001 and 10.0002 would
    # otherwise be two breaks at 00:00:10.000, and 0.0001 a mid-roll beside "start").
    cues_ms: set[int] | None = None
    got = _get(q, "cue_points")
    if got is not None:
        raw_points = [p for p in got[1].split(",") if p.strip(_SPACE)]
        if len(raw_points) > MAX_CUE_POINTS:
            raise ParamError("cue_points", f"at most {MAX_CUE_POINTS} cue points")
        cues_ms = {round(parse_offset(p, "cue_points", content_s) * 1000) for p in raw_points}
        if content_ms is not None and any(c >= content_ms for c in cues_ms):
            raise ParamError("cue_points", "every cue point must be before content_duration")
    elif interval is not None:
        if content_ms is None:
            raise ParamError("midroll_interval", "needs content_duration")
        step = floor_ms(interval)
        cues_ms = set(range(step, content_ms, step))
    return VmapQuery(
        content_duration_s=content_s,
        cue_points_s=None if cues_ms is None else tuple(c / 1000 for c in sorted(cues_ms) if c),
        cue_points_from=None if cues_ms is None else "cue_points" if got else "midroll_interval",
        preroll=_flag(q, "preroll", True),
        midroll=_flag(q, "midroll", True),
        postroll=_flag(q, "postroll", True),
        preroll_duration_s=_break_s(q, "preroll_duration"),
        midroll_duration_s=_break_s(q, "midroll_duration"),
        postroll_duration_s=_break_s(q, "postroll_duration"),
        pod_duration_s=_break_s(q, "pod_duration", "poddur"),
        max_ads=_int(q, "max_ads", "maxseq", lo=1, hi=MAX_ADS),
        inline=_flag(q, "inline", False),
    )


MIN_MIDROLL_INTERVAL_S = 30
"""The shortest ``midroll_interval`` a ``/vmap`` request may ask for."""


def _break_s(q: Mapping[str, str], *names: str) -> float | None:
    """A VMAP break length (1-900 s), to the millisecond below: its tags carry it as
    written, and ``/vast`` must not read a longer break than asked (:func:`floor_ms`)."""
    v = _num(q, *names, lo=1, hi=MAX_POD_S)
    return None if v is None else floor_ms(v) / 1000


def vmap_midrolls(vq: VmapQuery, rules: AdRules) -> tuple[float, ...]:
    """Where a VMAP's mid-rolls go, in seconds, ascending (none with ``midroll=0``): the cue
    points asked for, else every ``midroll_interval`` of the placement's ad
    rules through content of a known length (none for live content of unknown length);
    then the rules' ``min_midroll_spacing``: a mid-roll closer than that to the one kept
    before it is left out. More than :data:`MAX_CUE_POINTS` left is a 400 naming what made
    them, never a schedule cut short."""
    if not vq.midroll:
        return ()
    cues = vq.cue_points_s
    source = vq.cue_points_from or "content_duration"
    if cues is None:
        if vq.content_duration_s is None:
            return ()
        step = rules.midroll_interval_s * 1000
        content_ms = round(vq.content_duration_s * 1000)
        cues = tuple(t / 1000 for t in range(step, content_ms, step))
    spacing_ms = rules.min_midroll_spacing_s * 1000
    kept: list[float] = []
    last_ms: int | None = None
    for c in cues:
        at = round(c * 1000)
        if last_ms is None or at - last_ms >= spacing_ms:
            kept.append(c)
            last_ms = at
            if len(kept) > MAX_CUE_POINTS:
                why = f"makes more than {MAX_CUE_POINTS} mid-rolls"
                if source == "content_duration":
                    why += (
                        f" at the placement's midroll_interval of {rules.midroll_interval_s} s:"
                        " send cue_points or a longer midroll_interval"
                    )
                raise ParamError(source, why)
    return tuple(kept)
