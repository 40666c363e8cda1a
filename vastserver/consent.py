"""Privacy signals: what the IAB TCF v2, US Privacy and GPP strings let a decision use.

Under the GDPR, an ad server may read a device identifier (the IFA, or the IP and user
agent standing in for it) to cap frequencies only with the viewer's consent, and may
target audience segments (a profile) only with consent to personalised ads. The CMP on
the device records the viewer's choices in a TC string; players and stitchers pass it on
as ``gdpr=1&gdpr_consent=...`` (OpenRTB: ``regs.gdpr``, ``user.consent``; in 2.5,
``regs.ext.gdpr`` and ``user.ext.consent``).

What the server makes of it (:func:`permissions`):

* no ``gdpr`` flag, or ``gdpr=0``: everything as before (but with
  ``VASTSERVER_GDPR_BY_GEO`` on, a request that carries no GDPR signal at all and whose
  country is one of :data:`GDPR_COUNTRIES` is decided as under ``gdpr=1`` without a
  consent string: :func:`vastserver.params.gdpr_by_geo`);
* GDPR applies: the **device identifier** is used only with consent to purposes 1 (store
  and access information on a device) and 2 (select basic ads, which covers frequency
  capping; consent or legitimate interest); without it the viewer is treated as under
  limited ad tracking (session-level caps only, no IFA). **Audience segments** are used
  only with consent to purposes 1 and 4 (select personalised ads); without it they are
  ignored. With ``VASTSERVER_TCF_VENDOR_ID`` set, the string must also give that vendor
  consent (and, where purpose 2 rests on legitimate interest alone, list it in the vendor
  legitimate interest section: the viewer did not object to ours), and the publisher's
  restrictions on that vendor apply (:meth:`TcString.restrictions`): a purpose the
  publisher does not allow it counts as refused, "require consent" leaves legitimate
  interest out, and "require legitimate interest" leaves consent out;
* GDPR applies but the string is missing, not a version 2 TC string, or cannot be
  decoded: no consent (the same as refusing all).

Only the core segment is read (the publisher restrictions are in it).

US laws let a viewer opt out of the sale and sharing of their data and of targeted
advertising; none of them bars frequency capping. So an opt-out drops the **audience
segments** and keeps the device identifier (:func:`read_privacy`):

* ``us_privacy`` (IAB US Privacy, CCPA: ``1YNN``): opted out when its third character is
  ``Y``; a string that is not a version 1 one counts as an opt-out;
* ``gpp`` and ``gpp_sid`` (IAB Global Privacy Platform): of the applicable sections
  (``gpp_sid``, else all in the string), US Privacy (6), the national section (7) and the
  state ones (8-27) are read: a SaleOptOut, SharingOptOut or TargetedAdvertisingOptOut of 1
  (opted out), or a GPC segment with its bit set, is an opt-out; so is an applicable section
  the string lacks or that cannot be read. An applicable EU TCF section (2) makes the GDPR
  apply, and its TC string stands in for a missing ``gdpr_consent``;
* child-directed content (``kids``, OpenRTB ``regs.coppa``): COPPA allows no behavioural
  advertising there.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

__all__ = [
    "ALL",
    "GDPR_COUNTRIES",
    "MAX_GPP_SECTIONS",
    "MAX_TC_STRING",
    "MAX_US_PRIVACY",
    "NONE",
    "NO_SIGNALS",
    "US_SECTIONS",
    "GppSignals",
    "Permissions",
    "PrivacySignals",
    "TcString",
    "applicable_sections",
    "decode_tc_string",
    "parse_gpp_sid",
    "permissions",
    "read_gpp",
    "read_privacy",
    "us_privacy_opt_out",
]

MAX_TC_STRING = 4096
"""Longer consent strings are refused as malformed (a query string holds at most 4096)."""

# Bit offsets of the core segment's fields (TCF v2.x).
_VERSION = (0, 6)
_PURPOSES_CONSENT = (152, 24)  # purposes 1-24: consent
_PURPOSES_LI = (176, 24)
_MAX_VENDOR_ID = (213, 16)
_IS_RANGE = 229
_VENDOR_SECTION = 230


_CORE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TC_STRING}}}")
"""A core segment: base64url without padding (TC strings are written that way)."""


class _Bits:
    """A big-endian bit reader over a segment's bits (6 a character)."""

    __slots__ = ("_n", "_value")

    def __init__(self, core: str) -> None:
        pad = -len(core) % 4  # "A" is six zero bits: pad, decode, then drop them again
        data = base64.urlsafe_b64decode(core + "A" * pad)
        self._n = 6 * len(core)
        self._value = int.from_bytes(data, "big") >> (6 * pad)

    def read(self, offset: int, length: int) -> int:
        if offset < 0 or offset + length > self._n:
            raise ValueError("TC string too short")
        return (self._value >> (self._n - offset - length)) & ((1 << length) - 1)

    def flag(self, offset: int) -> bool:
        return bool(self.read(offset, 1))

    def text(self) -> str:
        """The bits as a string of 0s and 1s."""
        return format(self._value, f"0{self._n}b")


@dataclass(frozen=True, slots=True)
class TcString:
    """The decoded parts of a TC string's core segment that decisions need; the vendor
    section is read only when asked about a vendor (:meth:`vendor_consents`)."""

    purposes_consent: frozenset[int]
    purposes_legitimate_interest: frozenset[int]
    _bits: _Bits

    def vendor_consents(self, vendor_id: int) -> bool:
        """Whether the vendor section gives ``vendor_id`` consent (``ValueError`` when the
        section is cut short)."""
        bits = self._bits
        max_id = bits.read(*_MAX_VENDOR_ID)
        if not bits.flag(_IS_RANGE):
            return 1 <= vendor_id <= max_id and bits.flag(_VENDOR_SECTION + vendor_id - 1)
        return _vendor_section(bits.text(), _MAX_VENDOR_ID[0], vendor_id)[0]

    def vendor_legitimate_interest(self, vendor_id: int) -> bool:
        """Whether the vendor legitimate interest section lists ``vendor_id`` (the viewer
        did not object to its legitimate interest; ``ValueError`` when cut short)."""
        return self._legitimate_interests(vendor_id)[1]

    def _legitimate_interests(self, vendor_id: int) -> tuple[str, bool, int]:
        """The bits as text, whether the vendor legitimate interest section (after the
        vendor consents) lists ``vendor_id``, and where that section ends."""
        text = self._bits.text()
        at = _vendor_section(text, _MAX_VENDOR_ID[0], vendor_id)[1]  # consents
        listed, end = _vendor_section(text, at, vendor_id)
        return text, listed, end

    def restrictions(self, vendor_id: int) -> dict[int, frozenset[int]]:
        """The publisher's restrictions on ``vendor_id``: purpose id -> restriction types
        (:data:`NOT_ALLOWED`, :data:`REQUIRE_CONSENT`, :data:`REQUIRE_LI`). They follow the
        vendor consent and vendor legitimate interest sections; ``ValueError`` when the
        string is cut short before they end."""
        text, _, at = self._legitimate_interests(vendor_id)
        count = _field(text, at, 12)
        at += 12
        out: dict[int, set[int]] = {}
        for _ in range(count):
            purpose, kind, entries = (
                _field(text, at, 6),
                _field(text, at + 6, 2),
                _field(text, at + 8, 12),
            )
            listed, at = _ranges(text, at + 20, entries, vendor_id)
            if listed:
                out.setdefault(purpose, set()).add(kind)
        return {p: frozenset(kinds) for p, kinds in out.items()}


NOT_ALLOWED, REQUIRE_CONSENT, REQUIRE_LI = 0, 1, 2
"""Publisher restriction types (TCF v2 core segment, ``RestrictionType``)."""


def _field(text: str, at: int, length: int) -> int:
    """The unsigned number in bits ``at .. at + length`` of a bit string."""
    if at + length > len(text):
        raise ValueError("TC string too short")
    return int(text[at : at + length], 2)


def _ranges(text: str, at: int, entries: int, vendor_id: int) -> tuple[bool, int]:
    """Whether ``entries`` range entries from ``at`` (``IsARange``, a start vendor id and,
    for a range, an end one) include ``vendor_id``, and where they end. Scanned entry by
    entry, never expanded: the work is bounded by the string's length, whatever ranges it
    claims."""
    listed = False
    for _ in range(entries):
        is_range = _field(text, at, 1) == 1
        start = _field(text, at + 1, 16)
        end = _field(text, at + 17, 16) if is_range else start
        at += 33 if is_range else 17
        listed = listed or start <= vendor_id <= end
    return listed, at


def _vendor_section(text: str, at: int, vendor_id: int) -> tuple[bool, int]:
    """A vendor section from ``at`` (``MaxVendorId``, ``IsRangeEncoding``, then a bit field
    or range entries): whether it lists ``vendor_id``, and where it ends."""
    max_id = _field(text, at, 16)
    if _field(text, at + 16, 1) == 0:
        end = at + 17 + max_id
        if end > len(text):
            raise ValueError("TC string too short")
        return 1 <= vendor_id <= max_id and text[at + 17 + vendor_id - 1] == "1", end
    return _ranges(text, at + 29, _field(text, at + 17, 12), vendor_id)


def _bit_set(bits: _Bits, offset: int, length: int) -> frozenset[int]:
    """Numbers 1..length whose bit (first bit = 1) is set."""
    value = bits.read(offset, length)
    return frozenset(i + 1 for i in range(length) if value >> (length - 1 - i) & 1)


def decode_tc_string(text: str) -> TcString:
    """The core segment of a TCF v2 consent string; ``ValueError`` when it is not one."""
    if len(text) > MAX_TC_STRING:
        raise ValueError("not a TC string: too long")
    core = text.split(".", 1)[0]
    if not _CORE.fullmatch(core):
        raise ValueError("not a TC string: its core segment is not base64url")
    bits = _Bits(core)
    if bits.read(*_VERSION) != 2:
        raise ValueError("not a version 2 TC string")
    return TcString(
        purposes_consent=_bit_set(bits, *_PURPOSES_CONSENT),
        purposes_legitimate_interest=_bit_set(bits, *_PURPOSES_LI),
        _bits=bits,
    )


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a request's consent lets its decision use."""

    device_id: bool = True
    """The IFA (or the IP and user agent) as the viewer's key for caps and history."""
    segments: bool = True
    """The audience segments, for targeting and scoring."""


ALL = Permissions()
NONE = Permissions(device_id=False, segments=False)

GDPR_COUNTRIES: frozenset[str] = frozenset(
    {
        # the EU 27 (ISO 3166-1 alpha-2: Greece is GR, not EL)
        *("AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU"),
        *("IE", "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"),
        # parts of the EU with ISO codes of their own, as geo databases name them: Aland
        # (Finland) and France's outermost regions (French Guiana, Guadeloupe, Martinique,
        # Reunion, Mayotte, Saint-Martin)
        *("AX", "GF", "GP", "MQ", "RE", "YT", "MF"),
        *("IS", "LI", "NO"),  # the rest of the EEA
        "GB",  # the UK GDPR
        "CH",  # Switzerland (its FADP; ad servers treat it as the GDPR's)
    }
)
"""Where the GDPR (or its like) applies by the viewer's location: the EEA, the UK and
Switzerland. With ``VASTSERVER_GDPR_BY_GEO`` on, a request from one of them that says
nothing about the GDPR is decided as if it applied."""


def permissions(
    gdpr_applies: bool, consent: str | None, vendor_id: int | None = None
) -> Permissions:
    """What a decision may use under the given signals (see the module's text)."""
    if not gdpr_applies:
        return ALL
    if not consent:
        return NONE
    try:
        tc = decode_tc_string(consent)
    except ValueError:
        return NONE
    consented = set(tc.purposes_consent)
    interests = set(tc.purposes_legitimate_interest)
    vendor = vendor_interest = True
    if vendor_id is not None:
        try:
            vendor = tc.vendor_consents(vendor_id)
            vendor_interest = tc.vendor_legitimate_interest(vendor_id)
            restricted = tc.restrictions(vendor_id)
        except ValueError:  # a vendor section or the restrictions cut short
            return NONE
        for purpose, kinds in restricted.items():
            if kinds & {NOT_ALLOWED, REQUIRE_LI}:
                consented.discard(purpose)
            if kinds & {NOT_ALLOWED, REQUIRE_CONSENT}:
                interests.discard(purpose)
    # purpose 2 on legitimate interest alone needs ours too: the viewer may have objected
    # to it (our vendor id missing from the vendor legitimate interest section)
    basic = 2 in consented or (2 in interests and vendor_interest)
    return Permissions(
        device_id=1 in consented and basic and vendor,
        segments=1 in consented and 4 in consented and vendor,
    )


# --------------------------------------------------------------------------- US privacy

_USP = re.compile(r"1[YN-]{3}")


def us_privacy_opt_out(text: str) -> bool:
    """Whether an IAB US Privacy string (CCPA, ``1YNN``: version, notice, opt-out of sale,
    LSPA) says the viewer opted out of the sale of their data. A string that is not a
    version 1 one counts as an opt-out: the signal was sent, and cannot be read."""
    if not _USP.fullmatch(text):
        return True
    return text[2] == "Y"


# --------------------------------------------------------------------------- GPP

MAX_US_PRIVACY = 64
"""Longer US Privacy strings are refused as malformed (a valid one has 4 characters)."""

MAX_GPP_SECTIONS = 64
"""A ``gpp_sid`` (or a GPP header) listing more section ids is refused as malformed."""

_GPP_MAX_ID = 1000
"""Section ids above this (or ranges wider than it) mark a header as garbage: the GPP
registry's ids are small integers, and expanding a claimed range must stay cheap."""

_FIB_MAX_BITS = 16
"""A Fibonacci code of a number up to ``_GPP_MAX_ID`` has at most 15 bits and its final 1."""

GPP_TCF_EU = 2
GPP_USP = 6


@dataclass(frozen=True, slots=True)
class _UsSection:
    opt_outs: tuple[int, ...]
    """Bit offsets in the core segment of the 2-bit opt-out fields that bar personalised
    ads (sale, sharing, targeted advertising): 1 = opted out, 2 = did not, 0 = n/a."""
    min_bits: int
    """The core segment's length in bits (its shortest version's): a shorter one was cut."""
    versions: frozenset[int]
    gpc: bool
    """Whether the section may carry a GPC segment (type 1: one Global Privacy Control bit)."""


def _us(
    *opt_outs: int, bits: int, versions: tuple[int, ...] = (1,), gpc: bool = True
) -> _UsSection:
    return _UsSection(opt_outs, bits, frozenset(versions), gpc)


US_SECTIONS: dict[int, _UsSection] = {
    # usnat: SaleOptOut, SharingOptOut, TargetedAdvertisingOptOut (70 bits in v2, 60 in v1)
    7: _us(18, 20, 22, bits=60, versions=(1, 2)),
    8: _us(12, 14, bits=46),  # usca: SaleOptOut, SharingOptOut
    9: _us(12, 14, bits=40, gpc=False),  # usva: SaleOptOut, TargetedAdvertisingOptOut, ...
    10: _us(12, 14, bits=38),  # usco
    11: _us(14, 16, bits=42, gpc=False),  # usut
    12: _us(12, 14, bits=44),  # usct
    13: _us(12, 14, bits=46, gpc=False),  # usfl
    14: _us(12, 14, bits=46),  # usmt
    15: _us(12, 14, bits=52),  # usor
    16: _us(12, 14, bits=42),  # ustx
    17: _us(12, 14, bits=52),  # usde
    18: _us(14, 16, bits=42),  # usia
    19: _us(12, 14, bits=42),  # usne
    20: _us(12, 14, bits=46),  # usnh
    21: _us(12, 14, bits=54),  # usnj
    22: _us(12, 14, bits=42),  # ustn
    23: _us(12, 14, bits=42),  # usmn
    24: _us(16, 18, bits=22),  # usmd
    25: _us(16, 18, bits=24, gpc=False),  # usin
    26: _us(16, 18, bits=24, gpc=False),  # usky
    27: _us(16, 18, bits=24, gpc=False),  # usri
}
"""The GPP's US sections (national and state), by section id: where their opt-outs of
sale, sharing and targeted advertising sit (IAB GPP section specifications)."""


@dataclass(frozen=True, slots=True)
class GppSignals:
    """What a GPP string says about the decision."""

    gdpr_applies: bool = False
    """The EU TCF section applies (its id is among the applicable ones)."""
    tc_string: str | None = None
    """The EU TCF v2 section, a TC string."""
    us_opt_out: bool = False
    """An applicable US section (or the US Privacy one) says the viewer opted out of the
    sale or sharing of their data or of targeted advertising, or it cannot be read."""


NO_GPP = GppSignals()


def _fib_ranges(text: str, at: int) -> list[int]:
    """A GPP Fibonacci integer range (12-bit count, then single ids or ranges, each number
    a Fibonacci code ending in ``11`` and added to the one before); ``ValueError`` when
    malformed or when it names more ids than allowed."""
    if at + 12 > len(text):
        raise ValueError("GPP header too short")
    count = int(text[at : at + 12], 2)
    at += 12
    if count > MAX_GPP_SECTIONS:
        raise ValueError("GPP header names too many sections")
    out: list[int] = []
    offset = 0

    def number() -> int:
        nonlocal at
        end = text.find("11", at, at + _FIB_MAX_BITS)
        if end < 0:  # unterminated, or a number beyond any section id
            raise ValueError("GPP header: a Fibonacci code too long or unterminated")
        a, b, value = 1, 2, 0
        for bit in text[at : end + 1]:
            if bit == "1":
                value += a
            a, b = b, a + b
            if value > _GPP_MAX_ID:
                raise ValueError("GPP header: section id out of range")
        at = end + 2
        return value

    for _ in range(count):
        if at >= len(text):
            raise ValueError("GPP header too short")
        is_range = text[at] == "1"
        at += 1
        start = number() + offset
        if is_range:
            end = number() + start
            if end > _GPP_MAX_ID or end - start > MAX_GPP_SECTIONS:
                raise ValueError("GPP header: section range too wide")
            out.extend(range(start, end + 1))
            offset = end
        else:
            out.append(start)
            offset = start
        if start > _GPP_MAX_ID or len(out) > MAX_GPP_SECTIONS:
            raise ValueError("GPP header names too many sections")
    return out


def _segment_bits(segment: str) -> _Bits:
    if not _CORE.fullmatch(segment):
        raise ValueError("GPP segment is not base64url")
    return _Bits(segment)


def _us_opted_out(section: _UsSection, text: str) -> bool:
    """Whether a US section says the viewer opted out (``ValueError`` when unreadable)."""
    core, *rest = text.split(".", 2)
    bits = _segment_bits(core)
    if 6 * len(core) < section.min_bits:
        raise ValueError("GPP US section cut short")
    if bits.read(0, 6) not in section.versions:
        raise ValueError("GPP US section of an unknown version")
    values = [bits.read(at, 2) for at in section.opt_outs]
    if 3 in values:
        raise ValueError("GPP US section: an opt-out field out of range")
    if 1 in values:
        return True
    if section.gpc and rest:  # the sub-segment after the core: GPC, type 1
        sub = _segment_bits(rest[0])
        if sub.read(0, 2) != 1:
            raise ValueError("GPP US section: a sub-segment of an unknown type")
        return sub.flag(2)
    return False


def _gpp_sections(gpp: str) -> tuple[list[int], dict[int, str] | None]:
    """The section ids a GPP header names, and the sections by id (None when the string
    cannot be read: no header, or not as many sections as it names)."""
    if len(gpp) > MAX_TC_STRING:
        return [], None
    header, *parts = gpp.split("~")
    try:
        bits = _segment_bits(header)
        if bits.read(0, 6) != 3 or bits.read(6, 6) != 1:
            return [], None  # not a GPP v1 header
        ids = _fib_ranges(bits.text(), 12)
    except ValueError:
        return [], None
    if len(ids) != len(parts):
        return ids, None
    return ids, dict(zip(ids, parts, strict=True))


def read_gpp(gpp: str | None, applicable: tuple[int, ...] | None) -> GppSignals:
    """The parts of a GPP string the decision needs, for the applicable section ids
    (``gpp_sid``; without it, every section the string holds). A section that applies but
    is missing or cannot be read counts against the viewer: no consent for the EU TCF, an
    opt-out for the US ones. A string whose header cannot be read is one such section."""
    if not gpp and applicable is None:
        return NO_GPP
    ids, sections = _gpp_sections(gpp) if gpp else ([], {})
    readable = sections is not None
    by_id = sections or {}
    wanted = applicable if applicable is not None else tuple(ids)
    gdpr = GPP_TCF_EU in wanted
    tc = by_id.get(GPP_TCF_EU) if gdpr else None
    us_ids = [i for i in wanted if i == GPP_USP or i in US_SECTIONS]
    opt_out = not readable and (applicable is None or bool(us_ids))
    for i in us_ids:
        text = by_id.get(i)
        if text is None:
            opt_out = True
        elif i == GPP_USP:
            opt_out = opt_out or us_privacy_opt_out(text)
        else:
            try:
                opt_out = opt_out or _us_opted_out(US_SECTIONS[i], text)
            except ValueError:
                opt_out = True
    return GppSignals(gdpr_applies=gdpr, tc_string=tc, us_opt_out=opt_out)


_SID = re.compile(r"-?[0-9]{1,4}")


def parse_gpp_sid(text: str) -> tuple[int, ...] | None:
    """``gpp_sid``: a comma list of section ids (``ValueError`` when it is not one). ``-1``
    (and 0), which CMPs report when no section applies, name no section; a list with no
    ids at all is taken as absent (every section in the string applies)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if len(items) > MAX_GPP_SECTIONS:
        raise ValueError(f"at most {MAX_GPP_SECTIONS} section ids")
    for x in items:
        if not _SID.fullmatch(x):
            raise ValueError("a comma list of GPP section ids (integers)")
    return applicable_sections([int(x) for x in items])


def applicable_sections(ids: list[int]) -> tuple[int, ...] | None:
    """The applicable section ids of a ``gpp_sid`` list: ids below 1 (``-1``: none
    applies) dropped; an empty list is taken as absent."""
    if not ids:
        return None
    return tuple(i for i in ids if i > 0)


@dataclass(frozen=True, slots=True)
class PrivacySignals:
    """A request's privacy signals as third parties get them: the values of the privacy
    macros (``${GDPR}``, ``${GDPR_CONSENT_<vendor>}``...) in the catalog's trackers."""

    gdpr: bool | None = None
    """Whether the GDPR applies, as the decision resolved it (see :func:`read_privacy`);
    None: nothing says (the callee decides, by the viewer's IP)."""
    tc_string: str | None = None
    """The TC string: ``gdpr_consent``, else the GPP string's EU TCF section's."""
    us_privacy: str | None = None
    gpp: str | None = None
    gpp_sid: tuple[int, ...] | None = None
    """The applicable GPP sections (``()``: the request said none, ``-1``)."""


NO_SIGNALS = PrivacySignals()


def read_privacy(
    *,
    gdpr: bool | None,
    tc_string: str | None,
    vendor_id: int | None = None,
    us_privacy: str | None = None,
    gpp: str | None = None,
    gpp_sid: tuple[int, ...] | None = None,
    child_directed: bool = False,
) -> tuple[Permissions, PrivacySignals]:
    """Every privacy signal of a request, together (see the module's text): what the
    decision may use, and the signals for third parties' privacy macros. Without a
    ``gdpr`` flag the GDPR applies when a TC string is given, or when the GPP string's
    applicable sections include the EU TCF one (whose TC string stands in for a missing
    ``gdpr_consent``); with one, when it says so or ``gpp_sid`` names the EU TCF section
    (a ``gdpr=0`` wins over a TCF section merely present in a string without
    ``gpp_sid``). A US opt-out (US Privacy or a GPP US section) and child-directed
    content bar audience segments; the device identifier stays, for frequency capping."""
    g = read_gpp(gpp, gpp_sid) if gpp or gpp_sid is not None else NO_GPP
    if gdpr is None:
        applies = bool(tc_string) or g.gdpr_applies
    else:  # an explicit flag wins over a TCF section merely present in the GPP string
        applies = gdpr or (gpp_sid is not None and GPP_TCF_EU in gpp_sid)
    tc = tc_string or g.tc_string
    allowed = permissions(applies, tc, vendor_id)
    if allowed.segments and (
        child_directed
        or g.us_opt_out
        or (us_privacy is not None and us_privacy_opt_out(us_privacy))
    ):
        allowed = Permissions(device_id=allowed.device_id, segments=False)
    if gdpr is None and not applies and us_privacy is None and gpp is None and gpp_sid is None:
        return allowed, NO_SIGNALS  # the common request: nothing to pass on
    signals = PrivacySignals(
        gdpr=True if applies else gdpr,
        tc_string=tc,
        us_privacy=us_privacy,
        gpp=gpp,
        gpp_sid=gpp_sid,
    )
    return allowed, signals
