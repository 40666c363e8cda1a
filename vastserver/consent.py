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
import binascii
from dataclasses import dataclass

__all__ = ["MAX_TC_STRING", "Permissions", "TcString", "decode_tc_string", "permissions"]

MAX_TC_STRING = 4096
"""Longer consent strings are refused as malformed (a query string holds at most 4096)."""

# Bit offsets of the core segment's fields (TCF v2.x).
_VERSION = (0, 6)
_PURPOSES_CONSENT = (152, 24)
_PURPOSES_LI = (176, 24)
_MAX_VENDOR_ID = (213, 16)
_IS_RANGE = 229
_VENDOR_SECTION = 230


class _Bits:
    """A big-endian bit reader over the decoded bytes."""

    __slots__ = ("_n", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._n = len(data) * 8

    def read(self, offset: int, length: int) -> int:
        if offset < 0 or offset + length > self._n:
            raise ValueError("TC string too short")
        return (self._value >> (self._n - offset - length)) & ((1 << length) - 1)

    def flag(self, offset: int) -> bool:
        return bool(self.read(offset, 1))


@dataclass(frozen=True, slots=True)
class TcString:
    """The decoded parts of a TC string's core segment that decisions need."""

    purposes_consent: frozenset[int]
    purposes_legitimate_interest: frozenset[int]
    vendor_consent: frozenset[int]


def _bit_set(bits: _Bits, offset: int, length: int) -> frozenset[int]:
    """Numbers 1..length whose bit (first bit = 1) is set."""
    value = bits.read(offset, length)
    return frozenset(i + 1 for i in range(length) if value >> (length - 1 - i) & 1)


def _vendors(bits: _Bits) -> frozenset[int]:
    max_id = bits.read(*_MAX_VENDOR_ID)
    if not bits.flag(_IS_RANGE):
        return _bit_set(bits, _VENDOR_SECTION, max_id)
    entries = bits.read(_VENDOR_SECTION, 12)
    at = _VENDOR_SECTION + 12
    out: set[int] = set()
    for _ in range(entries):
        is_range = bits.flag(at)
        start = bits.read(at + 1, 16)
        at += 17
        end = start
        if is_range:
            end = bits.read(at, 16)
            at += 16
        if not 1 <= start <= end <= max_id:
            raise ValueError("bad vendor range")
        out.update(range(start, end + 1))
    return frozenset(out)


def decode_tc_string(text: str) -> TcString:
    """The core segment of a TCF v2 consent string; ``ValueError`` when it is not one."""
    if len(text) > MAX_TC_STRING or not text.isascii():
        raise ValueError("not a TC string")
    core = text.split(".", 1)[0]
    try:
        data = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("TC string is not base64url") from e
    bits = _Bits(data)
    if bits.read(*_VERSION) != 2:
        raise ValueError("not a version 2 TC string")
    return TcString(
        purposes_consent=_bit_set(bits, *_PURPOSES_CONSENT),
        purposes_legitimate_interest=_bit_set(bits, *_PURPOSES_LI),
        vendor_consent=_vendors(bits),
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
    vendor = vendor_id is None or vendor_id in tc.vendor_consent
    return Permissions(device_id=1 in p and basic and vendor, segments=1 in p and 4 in p and vendor)
