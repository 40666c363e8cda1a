"""GDPR consent: what an IAB TCF v2 consent string lets a decision use.

Under the GDPR, an ad server may read a device identifier (the IFA, or the IP and user
agent standing in for it) to cap frequencies only with the viewer's consent, and may
target audience segments (a profile) only with consent to personalised ads. The CMP on
the device records the viewer's choices in a TC string; players and stitchers pass it on
as ``gdpr=1&gdpr_consent=...`` (OpenRTB: ``regs.gdpr``, ``user.consent``; in 2.5,
``regs.ext.gdpr`` and ``user.ext.consent``).

What the server makes of it (:func:`permissions`):

* no ``gdpr`` flag, or ``gdpr=0``: everything as before;
* GDPR applies: the **device identifier** is used only with consent to purposes 1 (store
  and access information on a device) and 2 (select basic ads, which covers frequency
  capping; consent or legitimate interest); without it the viewer is treated as under
  limited ad tracking (session-level caps only, no IFA). **Audience segments** are used
  only with consent to purposes 1 and 4 (select personalised ads); without it they are
  ignored. With ``VASTSERVER_TCF_VENDOR_ID`` set, the string must also give that vendor
  consent;
* GDPR applies but the string is missing, not a version 2 TC string, or cannot be
  decoded: no consent (the same as refusing all).

Only the core segment is read; publisher restrictions are not applied. US privacy (USP)
and GPP strings are not interpreted.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

__all__ = ["MAX_TC_STRING", "Permissions", "TcString", "decode_tc_string", "permissions"]

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
        section is cut short). A range section is scanned entry by entry, never expanded:
        the work is bounded by the string's length, whatever ranges it claims."""
        bits = self._bits
        max_id = bits.read(*_MAX_VENDOR_ID)
        if not bits.flag(_IS_RANGE):
            return 1 <= vendor_id <= max_id and bits.flag(_VENDOR_SECTION + vendor_id - 1)
        entries = bits.read(_VENDOR_SECTION, 12)
        text = bits.text()  # slicing text is cheaper than shifting a long int per field
        at = _VENDOR_SECTION + 12
        for _ in range(entries):
            if at >= len(text):
                raise ValueError("TC string too short")
            is_range = text[at] == "1"
            size = 33 if is_range else 17
            if at + size > len(text):
                raise ValueError("TC string too short")
            start = int(text[at + 1 : at + 17], 2)
            end = int(text[at + 17 : at + 33], 2) if is_range else start
            at += size
            if start <= vendor_id <= end:
                return True
        return False


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
    p = tc.purposes_consent
    basic = 2 in p or 2 in tc.purposes_legitimate_interest
    try:
        vendor = vendor_id is None or tc.vendor_consents(vendor_id)
    except ValueError:  # a vendor section cut short
        return NONE
    return Permissions(device_id=1 in p and basic and vendor, segments=1 in p and 4 in p and vendor)
