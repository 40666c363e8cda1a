"""Tracking tokens and beacon/click URLs: the one place that builds and checks them.

Every served ad carries a signed :class:`AdToken` in its impression, tracking, error and click
URLs. The beacon handler verifies the token (:func:`verify`) and counts the event against the
line item, creative, campaign and advertiser inside it, without any server-side state.

Each URL's token is signed for the **scope** of its event (:func:`scope_of`): every counted
event has its own (``impression``, ``start``, the quartiles, ``complete``, ``skip``,
``error``, ``click``; ``notUsed`` shares the impression's, since players derive it from the
impression URL), and the uncounted ones (``pause``, ``mute``, ``progress``...) share
``other``. The payload is the same in all of an ad's URLs; only the tag differs. So a token
taken from one URL does not verify on another event's path: whoever saw only the impression
URL cannot make up a ``complete`` or a click.

Token format
============

``<payload>.<kid>.<sig>``, all three parts URL-safe (``[A-Za-z0-9_-]`` plus the two dots):

* ``payload``: base64url, no padding, of a compact binary layout::

      u8      format version (currently 2: the tag binds the event scope; version 1
              tokens, with one tag over ``"<payload>.<kid>"`` for every event, verify on
              any path until they expire)
      u8      flags (bit 0 = lmt, bit 1 = test; the other bits must be 0)
      8 x str ad_serving_id, line_item_id, creative_id, campaign_id, advertiser_id,
              viewer_hash, session, click_url
      varint  price_micros
      varint  served_at
      varint  pod_position

  ``varint`` is unsigned LEB128 (at most 63 bits). A ``str`` starts with a varint header
  ``h``; ``kind = h & 7`` and ``n = h >> 3``:

  ====  =======  ==========================================================================
  kind  name     body
  ====  =======  ==========================================================================
  0     UTF8     ``n`` bytes of UTF-8
  1     HEX      ``n`` bytes; the string is their lowercase hex (viewer hashes, hex ids)
  2     B64      ``n`` bytes; the string is their unpadded base64url (ad serving ids)
  3     DEC      ``n == 0``; a varint; the string is its decimal form (numeric ids)
  4     UUID     ``n == 0``; 16 bytes; the string is the canonical lowercase UUID (sessions)
  5     HTTPSW   ``n`` bytes of UTF-8 following an implied ``https://www.`` (click URLs)
  6     HTTPS    ``n`` bytes of UTF-8 following an implied ``https://``
  7     HTTP     ``n`` bytes of UTF-8 following an implied ``http://``
  ====  =======  ==========================================================================

  The encoder picks the first kind that reproduces the string exactly (DEC, UUID, HEX, B64,
  HTTPSW, HTTPS, HTTP, UTF8). The decoder accepts only the canonical encoding (re-encoding
  the decoded token must give the same bytes), and base64 text must be canonical too, so a
  token's content has exactly one spelling and any edit of the string is detected.

  Performance: the encoding of each string is a pure function of the string, and catalog ids,
  viewer hashes and sessions repeat constantly, so both directions are memoized in bounded LRU
  caches (``_encode_str``: str -> field bytes, ``_decode_str``: field bytes -> str). The
  canonical check is done field by field while decoding (each string field's bytes must be
  what ``_encode_str`` gives for the decoded string, each varint must be minimal), which is
  equivalent to re-encoding the whole token. :func:`verify` also memoizes whole decoded
  payloads (after the signature check), since every beacon of one ad carries the same
  payload.

* ``kid``: 6 lowercase hex chars identifying the signing secret (see :class:`Keyring`).
* ``sig``: base64url of HMAC-SHA256(token key, ``"<payload>.<kid>.<scope>"``) truncated to
  16 bytes; the scope is not in the token: the verifier takes it from the event's path.

Why a 128-bit tag is enough: the tag is a MAC, not a hash, so birthday collisions (2**64 work)
give an attacker nothing; forging needs the tag of a payload nobody signed, and without the
key the only way to test a guess is to send it to us, each guess succeeding with probability
2**-128. Truncating HMAC output is explicitly allowed (RFC 2104 section 5, NIST SP 800-107r1)
as long as the tag keeps at least half the hash length and 80 bits, which 128 bits of SHA-256
does. The full 32 bytes would add 21 characters to every URL for no practical gain.

Keys are derived from each configured secret with domain separation, so the token MAC key,
the viewer-hash key and the public key id never reuse the raw secret directly.

URLs
====

:class:`TrackingUrls` builds ``{public_url}/t/{event}?tk=...`` beacons and the
``{public_url}/c?tk=...`` click redirect. IAB macros (``[CACHEBUSTING]``, ``[TIMESTAMP]``,
``[ADPLAYHEAD]``, ``[ERRORCODE]``) are left literal for the player to fill;
:func:`expand_macros` does what a player does, and :func:`parse_beacon_query` turns the query
string the server receives back into typed values without ever raising. The click-through
``/c`` redirects to is the one URL the player never sees: :func:`fill_click_macros` fills
its macros (:data:`CLICK_MACROS`) at click time.

This module is pure standard library so it can be used from the server, CLI and tests alike.
"""

from __future__ import annotations

import binascii
import enum
import functools
import hashlib
import hmac
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, urlsplit

from yarl import URL as YarlURL

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "BEACON_SCOPES",
    "CLICK_MACROS",
    "CLICK_SCOPE",
    "COUNTED_EVENTS",
    "DEFAULT_MACRO_VALUES",
    "DEVICE_MACROS",
    "DOLLAR_MACRO",
    "EVENTS",
    "FORMAT_VERSION",
    "LINEAR_EVENTS",
    "LINEAR_EVENTS_BY_VERSION",
    "MAX_CLOCK_SKEW_S",
    "MAX_TOKEN_LEN",
    "MAX_VENDOR_ID",
    "MIN_SECRET_LEN",
    "OTHER_SCOPE",
    "PARAM_BREAK",
    "PARAM_CACHEBUSTER",
    "PARAM_ERRORCODE",
    "PARAM_PLAYHEAD",
    "PARAM_REASON",
    "PARAM_SESSION",
    "PARAM_TIMESTAMP",
    "PARAM_TOKEN",
    "PRIVACY_MACROS",
    "VIEWER_HASH_LEN",
    "VMAP_BREAK_EVENTS",
    "WITHHELD",
    "AdToken",
    "BeaconLogParams",
    "BeaconParams",
    "Keyring",
    "TokenError",
    "TokenErrorKind",
    "TrackingUrls",
    "beacon_log_params",
    "click_timestamp",
    "expand_macros",
    "fill_click_macros",
    "fill_privacy",
    "fill_server_macros",
    "has_privacy_macros",
    "has_server_macros",
    "is_privacy_macro",
    "new_ad_serving_id",
    "new_ad_serving_ids",
    "parse_beacon_query",
    "privacy_values",
    "scope_of",
    "server_macros",
    "sign",
    "sign_scopes",
    "sign_with_click",
    "verify",
    "viewer_hash",
]

FORMAT_VERSION = 2
"""First byte of every token payload; bump when the layout or the signed message changes
(1: one tag for every event; 2: the tag binds the event scope). :func:`verify` still takes
version 1 tokens, on any event's path, until they expire (``TOKEN_MAX_AGE`` after they were
served): beacons in flight across the upgrade are counted."""
COUNTED_EVENTS: tuple[str, ...] = (
    "impression",
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
    "click",
    "error",
    "skip",
)
"""Events with a per-line-item counter (each counted once per ad serving id); each is its
own token scope."""
OTHER_SCOPE = "other"
"""The scope every uncounted event's URL shares."""
CLICK_SCOPE = "click"
"""The scope of the click token (``/c``, and ``/t/click``)."""
BEACON_SCOPES: tuple[str, ...] = (
    *(e for e in COUNTED_EVENTS if e != CLICK_SCOPE),
    OTHER_SCOPE,
)
"""The scopes of an ad's ``/t/`` URLs, in the order :func:`sign_scopes` returns them."""
_SCOPE_OF: Mapping[str, str] = MappingProxyType(
    {**{e: e for e in COUNTED_EVENTS}, "notUsed": "impression"}
)


_SCOPE_BYTES: Mapping[str, bytes] = MappingProxyType(
    {s: s.encode("ascii") for s in (*BEACON_SCOPES, CLICK_SCOPE)}
)


def scope_of(event: str) -> str:
    """The scope a token must be signed for to count as ``event``."""
    return _SCOPE_OF.get(event, OTHER_SCOPE)


MAX_TOKEN_LEN = 2048
"""Longest token string :func:`verify` will look at (and :func:`sign` will produce)."""

MAX_CLOCK_SKEW_S = 300
"""A token may claim to be served at most this many seconds in the future."""

MIN_SECRET_LEN = 16
"""Shortest accepted signing secret, in characters. Use 32+ random bytes in production."""

VIEWER_HASH_LEN = 16
"""Hex characters in a :func:`viewer_hash` (64 bits)."""

_SIG_LEN = 16
_SIG_B64_LEN = 22
_SHA256_BLOCK = 64
_KID_LEN = 6
_MAX_INT = 2**63 - 1
_FLAG_LMT = 0x01
_FLAG_TEST = 0x02
_KNOWN_FLAGS = _FLAG_LMT | _FLAG_TEST
_STRING_FIELDS = (
    "ad_serving_id",
    "line_item_id",
    "creative_id",
    "campaign_id",
    "advertiser_id",
    "viewer_hash",
    "session",
    "click_url",
)
_INT_FIELDS = ("price_micros", "served_at", "pod_position")

# Domain-separation labels for the keys derived from one secret.
_LABEL_KID = b"vastserver/tracking/kid/v1"
_LABEL_TOKEN = b"vastserver/tracking/token/v1"
_LABEL_VIEWER = b"vastserver/tracking/viewer/v1"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class TokenErrorKind(enum.StrEnum):
    """Closed set of reasons a token is rejected (values are safe as metric labels)."""

    MALFORMED = "malformed"
    """Not decodable: wrong shape, bad base64, unknown version, oversize, bad field values."""
    BAD_SIGNATURE = "bad_signature"
    """Unknown key id, or the HMAC does not match."""
    EXPIRED = "expired"
    """``served_at + max_age_s < now``."""
    FUTURE = "future"
    """``served_at > now + MAX_CLOCK_SKEW_S``."""


class TokenError(Exception):
    """The only exception :func:`verify` raises; ``kind`` says why."""

    def __init__(self, kind: TokenErrorKind, detail: str = "") -> None:
        super().__init__(f"{kind.value}: {detail}" if detail else kind.value)
        self.kind = kind
        self.detail = detail


def _malformed(detail: str) -> TokenError:
    return TokenError(TokenErrorKind.MALFORMED, detail)


# --------------------------------------------------------------------------------------------
# Token
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdToken:
    """What beacon counting needs to know about one served ad.

    Field types and ranges are checked on construction (``TypeError``/``ValueError``), so an
    ``AdToken`` that exists can always be signed, size permitting.
    """

    ad_serving_id: str
    """Unique per ad per response; see :func:`new_ad_serving_id`."""
    line_item_id: str
    creative_id: str
    campaign_id: str
    advertiser_id: str
    viewer_hash: str
    """Keyed hash of the viewer key (:func:`viewer_hash`), never a raw device id."""
    price_micros: int
    """CPM price in micros of the currency, >= 0."""
    served_at: int
    """Unix seconds, >= 0."""
    pod_position: int
    """1-based slot in the pod."""
    session: str
    """Stream/session id; may be empty."""
    click_url: str
    """Creative click-through, used only by the ``/c`` redirect; may be empty."""
    lmt: bool = False
    """Limit ad tracking was set for this request."""
    test: bool = False
    """Served for a test request (OpenRTB ``test`` = 1): its beacons count nothing. Tokens
    signed before the flag existed have the bit clear, so they verify and count as before."""

    def __post_init__(self) -> None:
        # Fast path: the usual all-valid token (exact types). Anything else, including str/int
        # subclasses, goes through the precise checks below, which decide and pick the error.
        if (
            type(self.ad_serving_id) is str
            and type(self.line_item_id) is str
            and type(self.creative_id) is str
            and type(self.campaign_id) is str
            and type(self.advertiser_id) is str
            and type(self.viewer_hash) is str
            and type(self.session) is str
            and type(self.click_url) is str
            and type(self.price_micros) is int
            and type(self.served_at) is int
            and type(self.pod_position) is int
            and 0 <= self.price_micros <= _MAX_INT
            and 0 <= self.served_at <= _MAX_INT
            and 1 <= self.pod_position <= _MAX_INT
            and type(self.lmt) is bool
            and type(self.test) is bool
        ):
            return
        for name in _STRING_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"AdToken.{name} must be str")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"AdToken.{name} must be int")
            if not 0 <= value <= _MAX_INT:
                raise ValueError(f"AdToken.{name} out of range")
        if self.pod_position < 1:
            raise ValueError("AdToken.pod_position is 1-based")
        if not isinstance(self.lmt, bool):
            raise TypeError("AdToken.lmt must be bool")
        if not isinstance(self.test, bool):
            raise TypeError("AdToken.test must be bool")


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class _Key:
    kid: str
    token_key: bytes
    viewer_key: bytes
    token_inner: _Hash = field(compare=False)
    """SHA-256 fed ``token_key XOR ipad``: HMAC's inner hash before the message (RFC 2104)."""
    token_outer: _Hash = field(compare=False)
    """SHA-256 fed ``token_key XOR opad``: HMAC's outer hash before the inner digest.

    :func:`_key_mac` and :func:`_sign_payload` copy these two (one C call each) rather than
    an ``hmac.HMAC`` object, whose ``copy()`` costs ~1 µs of Python per tag; an ad's ~10
    scoped tags are signed on every ``/vast``. Tests hold the result to ``hmac.new``."""

    def __repr__(self) -> str:
        return f"_Key(kid={self.kid!r})"


def _derive_key(secret: str) -> _Key:
    raw = secret.encode("utf-8", "surrogatepass")
    kid = hashlib.sha256(_LABEL_KID + b"\x00" + raw).hexdigest()[:_KID_LEN]
    token_key = hmac.new(raw, _LABEL_TOKEN, hashlib.sha256).digest()
    viewer_key = hmac.new(raw, _LABEL_VIEWER, hashlib.sha256).digest()
    if len(token_key) > _SHA256_BLOCK:  # RFC 2104: a longer key is hashed first (never here:
        token_key = hashlib.sha256(token_key).digest()  # token_key is a 32-byte digest)
    block = token_key.ljust(_SHA256_BLOCK, b"\0")
    return _Key(
        kid=kid,
        token_key=token_key,
        viewer_key=viewer_key,
        token_inner=hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        token_outer=hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )


class Keyring:
    """Signing secrets: the first one signs, all of them verify.

    To rotate: deploy ``new,old`` (new tokens use ``new``, tokens in flight signed with ``old``
    still verify), then after the maximum token age deploy ``new`` alone.

    Note that :func:`viewer_hash` uses the signing (first) secret, so rotating it also changes
    every viewer hash; anything keyed by viewer hash (frequency caps) starts over.
    """

    __slots__ = ("_by_kid", "_keys", "_verified")

    def __init__(self, secrets: Sequence[str]) -> None:
        self._verified: dict[str, tuple[AdToken, str]] = {}
        """Token strings whose signature verified under these keys (a keyring's keys never
        change), with the scope it verified for, so a replayed beacon skips the decoding and
        the HMAC."""
        if isinstance(secrets, str):
            raise TypeError("Keyring needs a sequence of secrets, not a single string")
        keys: list[_Key] = []
        seen: set[str] = set()
        for secret in secrets:
            if not isinstance(secret, str):
                raise TypeError("tracking secrets must be str")
            if len(secret) < MIN_SECRET_LEN:
                # Never echo the secret itself.
                raise ValueError(
                    f"tracking secret #{len(keys) + 1} is empty or shorter than "
                    f"{MIN_SECRET_LEN} characters"
                )
            if secret in seen:
                continue
            seen.add(secret)
            keys.append(_derive_key(secret))
        if not keys:
            raise ValueError("at least one tracking secret is required")
        by_kid: dict[str, tuple[_Key, ...]] = {}
        for key in keys:
            # Distinct secrets sharing a 24-bit kid are astronomically unlikely but harmless:
            # verification tries every key with that kid.
            by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        self._keys: tuple[_Key, ...] = tuple(keys)
        self._by_kid: Mapping[str, tuple[_Key, ...]] = MappingProxyType(by_kid)

    @classmethod
    def from_secrets(cls, secrets: Sequence[str]) -> Keyring:
        """Build from secrets, signing secret first. ``ValueError`` if none or any is short."""
        return cls(secrets)

    @classmethod
    def parse(cls, setting: str) -> Keyring:
        """Build from a comma-separated setting such as ``VAST_TRACKING_SECRETS``.

        Whitespace around each secret is ignored; an empty item (``"a,,b"``, trailing comma)
        is an error rather than silently skipped. Secrets cannot contain commas.
        """
        return cls([part.strip() for part in setting.split(",")])

    @property
    def kids(self) -> tuple[str, ...]:
        """Key ids, signing key first."""
        return tuple(key.kid for key in self._keys)

    @property
    def primary_kid(self) -> str:
        return self._keys[0].kid

    def __repr__(self) -> str:
        return f"Keyring(kids={self.kids!r})"


# --------------------------------------------------------------------------------------------
# Base64 / varint / compact strings
# --------------------------------------------------------------------------------------------

_B64_RE = re.compile(r"[A-Za-z0-9_-]+")
_DEC_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2})+")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOKEN_RE = re.compile(r"([A-Za-z0-9_-]+)\.([0-9a-f]{6})\.([A-Za-z0-9_-]{22})")

_K_UTF8 = 0
_K_HEX = 1
_K_B64 = 2
_K_DEC = 3
_K_UUID = 4
_URL_PREFIXES = ((5, "https://www."), (6, "https://"), (7, "http://"))
_PREFIX_BY_KIND = dict(_URL_PREFIXES)

_STR_CACHE_SIZE = 4096
"""Entries in each of the string encode/decode memo caches."""
_TOKEN_CACHE_SIZE = 4096
_VERIFIED_CACHE_SIZE = 8192
"""Verified token strings a :class:`Keyring` remembers (cleared whole when full)."""
"""Decoded payloads memoized by :func:`verify` (every beacon of one ad carries one payload)."""
_VARINT_CACHE_SIZE = 1024
"""Encoded ints memoized (prices repeat, ``served_at`` repeats within a second)."""

_VERSION_BYTE = bytes((FORMAT_VERSION,))
_LEGACY_VERSION_BYTE = b"\x01"
_HEADS = tuple(bytes((FORMAT_VERSION, flags)) for flags in range(_KNOWN_FLAGS + 1))
"""The version and flags bytes, by flags."""
_SMALL_VARINTS = tuple(bytes((i,)) for i in range(0x80))
_ONLY_STR = frozenset((str,))
_ONLY_INT = frozenset((int,))

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}
# By len(text) % 4: the low bits of the last character that carry no data (they must be 0 in
# the canonical encoding), and the padding binascii wants. len % 4 == 1 is never valid.
_B64_SPARE_BITS = (0, 0, 0x0F, 0x03)
_B64_PADDING = (b"", b"", b"==", b"=")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64e(raw: bytes) -> str:
    """Unpadded base64url (what ``base64.urlsafe_b64encode`` gives, minus the ``=``)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def _b64d(text: str) -> bytes | None:
    """Strict unpadded base64url: ``None`` unless ``text`` is the canonical encoding."""
    if _B64_RE.fullmatch(text) is None:
        return None
    return _b64d_alphabet(text)


def _b64d_alphabet(text: str) -> bytes | None:
    """:func:`_b64d` for a non-empty ``text`` already known to be in the base64url alphabet.

    Canonical means ``_b64e(decoded) == text``: the length is not 1 mod 4 and the spare low
    bits of the last character are zero.
    """
    rem = len(text) % 4
    if rem == 1 or _B64_VALUE[text[-1]] & _B64_SPARE_BITS[rem]:
        return None
    try:
        return binascii.a2b_base64(
            text.encode("ascii").translate(_FROM_URLSAFE) + _B64_PADDING[rem]
        )
    except (binascii.Error, ValueError):  # pragma: no cover - cannot happen for such text
        return None


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _varint_uncached(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    _put_varint(out, value)
    return bytes(out)


_varint = functools.lru_cache(maxsize=_VARINT_CACHE_SIZE)(_varint_uncached)
"""Memoized :func:`_varint_uncached`; for exact ``int`` values (see :func:`_encode_payload`)."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it (not checked for minimality)."""
    result = 0
    size = len(buf)
    for shift in range(0, 63, 7):
        if pos >= size:
            raise _malformed("truncated payload")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result > _MAX_INT:
                raise _malformed("integer out of range")
            return result, pos
    raise _malformed("varint too long")


def _encode_str_uncached(value: str) -> bytes:
    """The canonical encoding of one string field: header varint and body.

    ``UnicodeEncodeError`` (a ``ValueError``) on lone surrogates. The length tests in front of
    the regexes are only shortcuts: each regex can only match strings of such a length.
    """
    if len(value) <= 19 and _DEC_RE.fullmatch(value) and int(value) <= _MAX_INT:
        return _SMALL_VARINTS[_K_DEC] + _varint(int(value))
    if len(value) == 36 and _UUID_RE.fullmatch(value):
        return _SMALL_VARINTS[_K_UUID] + bytes.fromhex(value.replace("-", ""))
    if not len(value) & 1 and _HEX_RE.fullmatch(value):
        raw = bytes.fromhex(value)
        return _varint((len(raw) << 3) | _K_HEX) + raw
    if value and (b64 := _b64d(value)) is not None:
        return _varint((len(b64) << 3) | _K_B64) + b64
    kind = _K_UTF8
    for prefix_kind, prefix in _URL_PREFIXES:
        if value.startswith(prefix):
            kind, value = prefix_kind, value[len(prefix) :]
            break
    raw = value.encode("utf-8")
    return _varint((len(raw) << 3) | kind) + raw


_encode_str = functools.lru_cache(maxsize=_STR_CACHE_SIZE)(_encode_str_uncached)
"""Memoized :func:`_encode_str_uncached`; for exact ``str`` values (see :func:`_encode_payload`)."""


def _encode_payload(token: AdToken) -> bytes:
    return b"".join(_payload_parts(token))


def _payload_parts(token: AdToken) -> tuple[bytes, bytes, bytes]:
    """The payload in three parts: the fields before the click URL, the click URL's field
    (the last string field) and the fields after it."""
    strings = (
        token.ad_serving_id,
        token.line_item_id,
        token.creative_id,
        token.campaign_id,
        token.advertiser_id,
        token.viewer_hash,
        token.session,
    )  # in _STRING_FIELDS order, then click_url
    ints = (token.price_micros, token.served_at, token.pod_position)  # _INT_FIELDS order
    encode_str: Callable[[str], bytes] = _encode_str
    encode_int: Callable[[int], bytes] = _varint
    if (
        set(map(type, strings)) != _ONLY_STR
        or type(token.click_url) is not str
        or set(map(type, ints)) != _ONLY_INT
    ):
        # str/int subclasses may hash or compare oddly: keep them away from the caches.
        encode_str, encode_int = _encode_str_uncached, _varint_uncached
    return (
        b"".join(
            (
                _HEADS[(_FLAG_LMT if token.lmt else 0) | (_FLAG_TEST if token.test else 0)],
                *map(encode_str, strings),
            )
        ),
        encode_str(token.click_url),
        b"".join(map(encode_int, ints)),
    )


def _decode_str_uncached(field_bytes: bytes) -> str | None:
    """Decode one complete, already delimited string field (header and body).

    ``None`` if the bytes are a valid but non-canonical encoding of the string; raises the
    ``TokenError`` the decoder would (invalid UTF-8) otherwise.
    """
    header, pos = _read_varint(field_bytes, 0)
    kind = header & 7
    body = field_bytes[pos:]
    if kind == _K_HEX:
        text = body.hex()
    elif kind == _K_B64:
        text = _b64e(body)
    elif kind == _K_DEC:
        text = str(_read_varint(field_bytes, pos)[0])
    elif kind == _K_UUID:
        h = body.hex()
        text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    else:  # UTF8 and the URL kinds
        try:
            text = _PREFIX_BY_KIND.get(kind, "") + body.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("invalid UTF-8") from None
    return text if _encode_str(text) == field_bytes else None


_decode_str = functools.lru_cache(maxsize=_STR_CACHE_SIZE)(_decode_str_uncached)
"""Memoized :func:`_decode_str_uncached` (exceptions are not cached)."""


def _decode_payload(payload: bytes) -> AdToken:
    """Parse and check a payload: the exact inverse of :func:`_encode_payload`.

    Equivalent to parsing and then requiring ``_encode_payload(token) == payload``, but checks
    canonicality per field: each string field must be the bytes ``_encode_str`` gives for its
    decoded string, and each int varint must have no redundant trailing ``0x80 .. 0x00``
    groups. Errors come in the same order as a parse-then-re-encode check would give them.
    """
    size = len(payload)
    if not size:
        raise _malformed("truncated payload")
    if payload[0] != FORMAT_VERSION:
        raise _malformed("unsupported version")
    if size < 2:
        raise _malformed("truncated payload")
    flags = payload[1]
    if flags & ~_KNOWN_FLAGS:
        raise _malformed("unknown flags")
    canonical = True
    pos = 2
    strings: list[str] = []
    decode = _decode_str
    try:
        for _ in _STRING_FIELDS:
            # Find where the field ends (raising what a byte-by-byte reader would), then decode.
            start = pos
            header = payload[pos]
            pos += 1
            if header & 0x80:
                header, pos = _read_varint(payload, start)
            kind = header & 7
            if _K_DEC <= kind <= _K_UUID:  # DEC or UUID: the header carries no length
                if header >> 3:
                    raise _malformed("unexpected length")
                if kind == _K_DEC:
                    pos = _read_varint(payload, pos)[1]
                else:
                    pos += 16
            else:
                pos += header >> 3
            if pos > size:
                raise _malformed("truncated payload")
            text = decode(payload[start:pos])
            if text is None:
                canonical = False
                text = ""  # placeholder: the token is rejected below, after the other checks
            strings.append(text)
        ints: list[int] = []
        for _ in _INT_FIELDS:
            value = payload[pos]
            if value & 0x80:
                value, pos = _read_varint(payload, pos)
                if not payload[pos - 1]:  # a redundant last group, e.g. 2 as 0x82 0x00
                    canonical = False
            else:
                pos += 1
            ints.append(value)
    except IndexError:  # payload[pos] past the end
        raise _malformed("truncated payload") from None
    if pos != size:
        raise _malformed("trailing bytes")
    try:
        token = AdToken(
            ad_serving_id=strings[0],
            line_item_id=strings[1],
            creative_id=strings[2],
            campaign_id=strings[3],
            advertiser_id=strings[4],
            viewer_hash=strings[5],
            session=strings[6],
            click_url=strings[7],
            price_micros=ints[0],
            served_at=ints[1],
            pod_position=ints[2],
            lmt=bool(flags & _FLAG_LMT),
            test=bool(flags & _FLAG_TEST),
        )
    except (TypeError, ValueError):
        raise _malformed("bad field value") from None
    if not canonical:
        raise _malformed("non-canonical encoding")
    return token


_decode_payload_cached = functools.lru_cache(maxsize=_TOKEN_CACHE_SIZE)(_decode_payload)
"""Memoized :func:`_decode_payload` (``AdToken`` is immutable; errors are not cached).

Only :func:`verify` uses it, after the signature check, so only payloads we signed get in.
"""


def _mac(key: bytes, payload_b64: str, kid: str, scope: str) -> bytes:
    """Reference tag of ``"<payload>.<kid>.<scope>"`` under a raw token key (tests, tools)."""
    msg = f"{payload_b64}.{kid}.{scope}".encode("ascii")
    return hmac.new(key, msg, hashlib.sha256).digest()[:_SIG_LEN]


def _key_mac(key: _Key, msg: bytes) -> bytes:
    """Same as ``_mac(key.token_key, ...)`` for ``msg = b"<payload>.<kid>.<scope>"``, but
    faster."""
    inner = key.token_inner.copy()
    inner.update(msg)
    return _finish_mac(key, inner)


def _finish_mac(key: _Key, inner: _Hash) -> bytes:
    """The tag from HMAC's inner hash once it has been fed the message."""
    outer = key.token_outer.copy()
    outer.update(inner.digest())
    return outer.digest()[:_SIG_LEN]


# --------------------------------------------------------------------------------------------
# Public token API
# --------------------------------------------------------------------------------------------


def sign(token: AdToken, keyring: Keyring, event: str) -> str:
    """Encode ``token`` and sign it for ``event``'s scope with the keyring's first secret.

    Deterministic (same token, scope and key give the same string). ``ValueError`` if a
    string field cannot be UTF-8 encoded or the result would exceed :data:`MAX_TOKEN_LEN`.
    """
    return _sign_payload(_encode_payload(token), keyring._keys[0], (scope_of(event),))[0]


def sign_scopes(
    token: AdToken, keyring: Keyring, scopes: Sequence[str] = BEACON_SCOPES
) -> tuple[str, ...]:
    """``token`` signed for each of ``scopes`` (scope names, not event names: see
    :func:`scope_of`), in order, encoded once. ``ValueError`` for an unknown scope."""
    return _sign_payload(_encode_payload(token), keyring._keys[0], scopes)


def sign_with_click(
    token: AdToken, click_url: str, keyring: Keyring, scopes: Sequence[str] = BEACON_SCOPES
) -> tuple[tuple[str, ...], str]:
    """``sign_scopes(token)`` and the click token, ``replace(token, click_url=click_url)``
    signed for :data:`CLICK_SCOPE`, for a ``token`` without a click URL, sharing the
    encoding of every other field (a served ad gets both: its beacons carry the first, its
    ``/c`` click-through the second)."""
    if token.click_url or type(click_url) is not str:
        click = replace(token, click_url=click_url)
        return sign_scopes(token, keyring, scopes), sign(click, keyring, CLICK_SCOPE)
    head, no_click, tail = _payload_parts(token)
    key = keyring._keys[0]
    return (
        _sign_payload(head + no_click + tail, key, scopes),
        _sign_payload(head + _encode_str(click_url) + tail, key, (CLICK_SCOPE,))[0],
    )


def _sign_payload(payload: bytes, key: _Key, scopes: Sequence[str]) -> tuple[str, ...]:
    signed = f"{_b64e(payload)}.{key.kid}"
    if len(signed) + 1 + _SIG_B64_LEN > MAX_TOKEN_LEN:
        raise ValueError(
            f"token would be {len(signed) + 1 + _SIG_B64_LEN} chars, over {MAX_TOKEN_LEN}"
        )
    # HMAC as in _key_mac, the payload's blocks hashed once: each scope only adds its name
    base = key.token_inner.copy()
    base.update(signed.encode("ascii") + b".")
    prefix = signed + "."
    out = []
    for scope in scopes:
        scope_bytes = _SCOPE_BYTES.get(scope)
        if scope_bytes is None:
            raise ValueError(f"unknown token scope {scope!r}")
        inner = base.copy()
        inner.update(scope_bytes)
        out.append(prefix + _b64e(_finish_mac(key, inner)))
    return tuple(out)


def _verify_signed(s: str, keyring: Keyring, scope: str) -> AdToken:
    """The signature and payload part of :func:`verify` (everything but the time checks)."""
    m = _TOKEN_RE.fullmatch(s)
    if m is None:
        raise _malformed("wrong shape")
    payload_b64, kid, sig_b64 = m.groups()
    # The shape regex already limited both parts to the base64url alphabet.
    payload = _b64d_alphabet(payload_b64)
    sig = _b64d_alphabet(sig_b64)
    if payload is None or sig is None or len(sig) != _SIG_LEN:
        raise _malformed("bad base64")
    version = payload[:1]
    if version == _VERSION_BYTE:
        msg = f"{payload_b64}.{kid}.{scope}".encode("ascii")
    elif version == _LEGACY_VERSION_BYTE:
        # Served before the upgrade to version 2, with one tag for every event: still
        # counted (on any event's path, as then) until it expires, so no beacon in flight
        # across the upgrade is lost. Version 2 has the same layout after this byte.
        msg = f"{payload_b64}.{kid}".encode("ascii")
        payload = _VERSION_BYTE + payload[1:]
    else:
        raise _malformed("unsupported version")
    keys = keyring._by_kid.get(kid, ())
    if not keys:
        raise TokenError(TokenErrorKind.BAD_SIGNATURE, "unknown key id")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(_key_mac(key, msg), sig)
    if not ok:
        raise TokenError(TokenErrorKind.BAD_SIGNATURE, "signature mismatch")
    decoded: AdToken = _decode_payload_cached(payload)
    return decoded


def verify(s: str, keyring: Keyring, now: int, max_age_s: int, event: str) -> AdToken:
    """Check and decode a token string from a request for ``event`` (the path it came on).

    Raises only :class:`TokenError`, whatever ``s`` is. The signature is checked, for
    ``event``'s scope, before the payload is parsed (a token signed for another scope is a
    ``BAD_SIGNATURE``); expiry (``served_at + max_age_s < now``) and the future check
    (``served_at > now + MAX_CLOCK_SKEW_S``) only after the signature is known good.
    """
    if not isinstance(s, str):
        raise _malformed("not a string")
    if len(s) > MAX_TOKEN_LEN:
        raise _malformed("oversize")
    scope = scope_of(event)
    exact = type(s) is str  # a str subclass could redefine equality: never from the cache
    hit = keyring._verified.get(s) if exact else None
    if hit is not None and hit[1] == scope:
        token = hit[0]
    else:
        token = _verify_signed(s, keyring, scope)
        if exact:
            if len(keyring._verified) >= _VERIFIED_CACHE_SIZE:
                keyring._verified.clear()
            keyring._verified[s] = (token, scope)
    if token.served_at > now + MAX_CLOCK_SKEW_S:
        raise TokenError(TokenErrorKind.FUTURE, "served_at in the future")
    if token.served_at + max_age_s < now:
        raise TokenError(TokenErrorKind.EXPIRED, "token too old")
    return token


def viewer_hash(key: str, keyring: Keyring) -> str:
    """Keyed hash of a viewer key (device id, IP+UA...) as :data:`VIEWER_HASH_LEN` hex chars.

    HMAC under a key derived from the signing secret, so the raw id never appears in URLs and
    the hash cannot be reversed by hashing candidate device ids. 64 bits: among a billion
    viewers a given viewer shares its hash with another with probability ~5e-11.
    """
    mac = hmac.new(
        keyring._keys[0].viewer_key, key.encode("utf-8", "surrogatepass"), hashlib.sha256
    )
    return mac.hexdigest()[:VIEWER_HASH_LEN]


def anonymous_viewer_hash(rng: random.Random) -> str:
    """A viewer hash for a request with no viewer key (``lmt`` without a session): drawn at
    random, so such requests share no identity (caps, exposures, logs) with one another."""
    return f"{rng.getrandbits(VIEWER_HASH_LEN * 4):0{VIEWER_HASH_LEN}x}"


def new_ad_serving_id(rng: random.Random) -> str:
    """22-char base64url id from 128 random bits.

    Deterministic for a seeded ``rng`` (golden tests). In production pass a
    ``random.SystemRandom()`` so ids are unpredictable.
    """
    return _b64e(rng.getrandbits(128).to_bytes(16, "big"))


def new_ad_serving_ids(rng: random.Random, n: int) -> list[str]:
    """``n`` ids as ``n`` calls of :func:`new_ad_serving_id` make them; from a
    ``SystemRandom``, in one read of the OS's randomness instead of ``n`` (each is a system
    call, ~7 µs here)."""
    if isinstance(rng, random.SystemRandom):
        raw = os.urandom(16 * n)
        return [_b64e(raw[i : i + 16]) for i in range(0, 16 * n, 16)]
    return [new_ad_serving_id(rng) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------

PARAM_TOKEN = "tk"
PARAM_CACHEBUSTER = "cb"
PARAM_TIMESTAMP = "ts"
PARAM_PLAYHEAD = "ph"
PARAM_ERRORCODE = "ec"
PARAM_REASON = "r"
PARAM_SESSION = "s"
PARAM_BREAK = "b"

LINEAR_EVENTS: frozenset[str] = frozenset(
    {
        # VAST 4.x linear ad metrics
        "loaded",
        "start",
        "firstQuartile",
        "midpoint",
        "thirdQuartile",
        "complete",
        "progress",
        "closeLinear",
        "otherAdInteraction",
        # player operation
        "pause",
        "resume",
        "mute",
        "unmute",
        "skip",
        "rewind",
        "playerExpand",
        "playerCollapse",
        # VAST 3 names still sent by older players
        "fullscreen",
        "exitFullscreen",
    }
)
"""Events whose beacon carries ``ph=[ADPLAYHEAD]``."""

# The linear tracking events each VAST version's XSD allows (``skip`` too, with a skipoffset;
# ``progress`` with an offset). Ads carry our beacon for each; catalog trackers follow them.
_BASE_EVENTS = ("start", "firstQuartile", "midpoint", "thirdQuartile", "complete")
_PLAYBACK_EVENTS = ("pause", "resume", "mute", "unmute", "rewind")
_PLAYER_EVENTS_V2 = (*_PLAYBACK_EVENTS, "fullscreen", "close")
_PLAYER_EVENTS_V4 = (*_PLAYBACK_EVENTS, "playerExpand", "playerCollapse")
LINEAR_EVENTS_BY_VERSION: Mapping[str, tuple[str, ...]] = {
    "2.0": ("creativeView", *_BASE_EVENTS, *_PLAYER_EVENTS_V2),
    "3.0": (
        "creativeView",
        *_BASE_EVENTS,
        *_PLAYBACK_EVENTS,
        "fullscreen",
        "exitFullscreen",
        "closeLinear",
    ),
    # The 4.x schemas (vast4.xsd, 4.1, 4.2) keep creativeView for Linear tracking.
    "4.0": ("creativeView", *_BASE_EVENTS, *_PLAYER_EVENTS_V4),
    "4.1": ("creativeView", "loaded", *_BASE_EVENTS, *_PLAYER_EVENTS_V4, "closeLinear"),
}
LINEAR_EVENTS_BY_VERSION = {
    **LINEAR_EVENTS_BY_VERSION,
    "4.2": LINEAR_EVENTS_BY_VERSION["4.1"],
    "4.3": LINEAR_EVENTS_BY_VERSION["4.1"],
}

VMAP_BREAK_EVENTS: frozenset[str] = frozenset({"breakStart", "breakEnd", "error"})
"""Events a VMAP ``<vmap:Tracking>`` may use."""

EVENTS: frozenset[str] = LINEAR_EVENTS | {
    "impression",
    "error",
    "click",
    "creativeView",
    "acceptInvitation",
    "adExpand",
    "adCollapse",
    "minimize",
    "close",
    "overlayViewDuration",
    "interactiveStart",
    "notUsed",
    "breakStart",
    "breakEnd",
}
"""Every event name accepted in ``/t/{event}``."""

_REASON_BAD_RE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_REASON_LEN = 64


def _q(value: str) -> str:
    return quote(value, safe="")


def _reason(reason: str) -> str:
    cleaned = _REASON_BAD_RE.sub("_", reason)[:_MAX_REASON_LEN]
    return cleaned or "unknown"


_BEACON_MACROS = f"&{PARAM_CACHEBUSTER}=[CACHEBUSTING]&{PARAM_TIMESTAMP}=[TIMESTAMP]"
_ERROR_MACRO = f"&{PARAM_ERRORCODE}=[ERRORCODE]"
_PLAYHEAD_MACRO = f"&{PARAM_PLAYHEAD}=[ADPLAYHEAD]"


@dataclass(frozen=True, slots=True)
class TrackingUrls:
    """Builds every tracking/click URL for one public base URL.

    The IAB macros stay literal (``[CACHEBUSTING]``...) for the player to substitute; the
    URLs contain ``&``, so templates must put them in CDATA or XML-escape them.
    """

    public_url: str
    """Scheme and host (optionally a path prefix), no trailing slash, no query."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.public_url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
            or self.public_url.endswith("/")
        ):
            raise ValueError(
                "public_url must be http(s)://host[/prefix] without trailing slash or query"
            )

    def event(self, event: str, token: str) -> str:
        """``/t/{event}?tk=..&cb=..&ts=..`` (+ ``ph`` on linear events, ``ec`` on error)."""
        if event not in EVENTS:
            raise ValueError(f"unknown tracking event {event!r}")
        url = f"{self.public_url}/t/{event}?{PARAM_TOKEN}={_q(token)}{_BEACON_MACROS}"
        if event in LINEAR_EVENTS:
            url += _PLAYHEAD_MACRO
        if event == "error":
            url += _ERROR_MACRO
        return url

    def impression(self, token: str) -> str:
        return self.event("impression", token)

    def error(self, token: str) -> str:
        return self.event("error", token)

    def click(self, token: str) -> str:
        """``<ClickThrough>`` URL: ``/c`` counts the click and redirects to the click_url.

        Counting happens there, so don't also emit ``event("click")`` as ``<ClickTracking>``
        for the same ad unless the server dedupes.
        """
        return f"{self.public_url}/c?{PARAM_TOKEN}={_q(token)}&{PARAM_CACHEBUSTER}=[CACHEBUSTING]"

    def no_ad_error(self, reason: str) -> str:
        """Root ``<Error>`` of an empty VAST: ``/t/error?r=<reason>`` with no token.

        ``reason`` is reduced to ``[A-Za-z0-9_.-]``, at most 64 chars.
        """
        return (
            f"{self.public_url}/t/error?{PARAM_REASON}={_reason(reason)}"
            f"{_BEACON_MACROS}{_ERROR_MACRO}"
        )

    def vmap_break_event(self, event: str, session: str, break_id: str) -> str:
        """``<vmap:Tracking>`` URL for breakStart/breakEnd/error (error carries [ERRORCODE]).

        Not signed: break beacons carry no money, treat their counts as advisory.
        """
        if event not in VMAP_BREAK_EVENTS:
            raise ValueError(f"unknown VMAP tracking event {event!r}")
        url = (
            f"{self.public_url}/t/{event}?{PARAM_SESSION}={_q(session)}"
            f"&{PARAM_BREAK}={_q(break_id)}{_BEACON_MACROS}"
        )
        if event == "error":
            url += _ERROR_MACRO
        return url


# --------------------------------------------------------------------------------------------
# Macros (player side) and beacon query parsing (server side)
# --------------------------------------------------------------------------------------------

_MACRO_RE = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")

DEFAULT_MACRO_VALUES: Mapping[str, str] = MappingProxyType(
    {
        "CACHEBUSTING": "52790317",
        "TIMESTAMP": "2024-05-01T12:00:00.000+00:00",
        "ADPLAYHEAD": "00:00:05.000",
        "ERRORCODE": "900",
    }
)
"""Values :func:`expand_macros` uses when none is given; any other macro becomes ``-1``."""


CLICK_MACROS: frozenset[str] = frozenset({"CACHEBUSTING", "TIMESTAMP", "ADSERVINGID"})
"""The IAB macros a creative's click-through may carry: the player never sees that URL (it
travels in the signed click token, and ``/c`` redirects to it), so ``/c`` fills them in at
click time (:func:`fill_click_macros`), and only these can it fill truthfully: a fresh
cache buster, the time of the click and the ad's serving id (the ``AdServingId`` it went
out with). The catalog loader refuses any other in a click-through."""


def click_timestamp(now: datetime) -> str:
    """``[TIMESTAMP]`` as VAST 4.x writes it: ISO 8601 with milliseconds, here in UTC."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds")


def fill_click_macros(url: str, *, now: datetime, cachebuster: int, ad_serving_id: str) -> str:
    """``url`` (a click-through) with its :data:`CLICK_MACROS` filled in, each value
    percent-encoded as VAST 4.x asks of a macro's value; ``cachebuster`` is written as the
    8-digit number VAST asks for. Any other ``[MACRO]`` (only a token signed before the
    loader refused them carries one) becomes ``-1``, VAST's "unknown"."""
    if "[" not in url:
        return url  # the common case: nothing to fill
    values = {
        "CACHEBUSTING": f"{cachebuster % 100_000_000:08d}",
        "TIMESTAMP": click_timestamp(now),
        "ADSERVINGID": ad_serving_id,
    }
    return expand_macros(url, values, defaults={})


def expand_macros(
    url: str,
    values: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, str] = DEFAULT_MACRO_VALUES,
) -> str:
    """Replace every ``[MACRO]`` like a VAST 4 player would, percent-encoding the values.

    ``values`` (raw, unencoded, keyed by macro name without brackets) override ``defaults``
    (:data:`DEFAULT_MACRO_VALUES`, a player's test values); macros known to neither become
    ``-1`` (VAST 4: "unknown").
    """

    given = values or {}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        return _q(given[name] if name in given else defaults.get(name, "-1"))

    return _MACRO_RE.sub(repl, url)


# --------------------------------------------------------------------------------------------
# Privacy macros: filled in here, at serve time, in third parties' trackers
# --------------------------------------------------------------------------------------------

PRIVACY_MACROS: tuple[str, ...] = (
    "GDPR",
    "GDPR_CONSENT",
    "GDPR_PD",
    "US_PRIVACY",
    "GPP_STRING",
    "GPP_SID",
)
"""The values of the privacy macros a catalog's third-party trackers may carry, in the order
:func:`privacy_values` gives them: the IAB TCF v2 URL macros ``${GDPR}``,
``${GDPR_CONSENT_<vendor>}`` and ``${GDPR_PD}``, US Privacy's ``${US_PRIVACY}`` and GPP's
``${GPP_STRING_<vendor>}`` and ``${GPP_SID}``. ``<vendor>`` is the GVL id of the vendor the
URL calls (1-65535); every vendor gets the same string."""
MAX_VENDOR_ID = 65535
"""GVL vendor ids are 16-bit (the TC string's ``MaxVendorId``)."""
_PRIVACY_MACRO = re.compile(
    r"\$\{(?:(GDPR)|(GDPR_CONSENT)_[1-9][0-9]{0,4}|(GDPR_PD)|(US_PRIVACY)"
    r"|(GPP_STRING)_[1-9][0-9]{0,4}|(GPP_SID))\}"
)
"""A privacy macro; the number of the group that matched is its :data:`PRIVACY_MACROS`
index plus one (a vendor id above :data:`MAX_VENDOR_ID` is the catalog loader's to refuse)."""
DOLLAR_MACRO = re.compile(r"\$\{([^{}]*)\}")
"""Anything written as a ``${...}`` macro (the loader refuses those that are not privacy
macros)."""


def is_privacy_macro(macro: str) -> bool:
    """Whether ``macro`` (``${...}``) is one :func:`fill_privacy` fills in."""
    m = _PRIVACY_MACRO.fullmatch(macro)
    if m is None:
        return False
    vendor = macro[2:-1].rpartition("_")[2]
    return not vendor.isdigit() or int(vendor) <= MAX_VENDOR_ID


def has_privacy_macros(url: str) -> bool:
    return "${" in url and _PRIVACY_MACRO.search(url) is not None


def privacy_values(
    *,
    gdpr: bool | None,
    tc_string: str | None,
    us_privacy: str | None,
    gpp: str | None,
    gpp_sid: tuple[int, ...] | None,
) -> tuple[str, ...]:
    """The privacy macros' values, in :data:`PRIVACY_MACROS` order, percent-encoded for a
    URL; empty for a signal the request did not send. ``${GDPR}`` is ``1`` or ``0``, empty
    when nothing says whether the GDPR applies (the callee then decides by the IP, as the
    TCF asks); ``${GDPR_PD}`` is the TCF's default, ``1`` (the URL's other parameters may
    hold personal data: the player fills in ``[IFA]``, ``[DEVICEIP]``...); ``${GPP_SID}``
    lists the applicable sections (``2,6``), ``-1`` when the request said none applies."""
    return (
        "" if gdpr is None else "1" if gdpr else "0",
        _q(tc_string or ""),
        "1",
        _q(us_privacy or ""),
        _q(gpp or ""),
        "" if gpp_sid is None else ",".join(map(str, gpp_sid)) or "-1",
    )


def fill_privacy(url: str, values: Sequence[str]) -> str:
    """``url`` with its privacy macros replaced by ``values`` (:func:`privacy_values`, or
    anything in that order); other text, IAB ``[MACROS]`` included, stays as it is."""
    return _PRIVACY_MACRO.sub(lambda m: values[(m.lastindex or 1) - 1], url)


# --------------------------------------------------------------------------------------------
# Device macros: withheld here, at serve time, for a viewer who refused tracking
# --------------------------------------------------------------------------------------------

WITHHELD = "-2"
"""VAST 4.3 section 6.1 ("Marking Macro Values as Unknown or Unavailable"): a macro whose
value is known but may not be shared by policy is replaced with ``-2`` (``-1``: unknown)."""
DEVICE_MACROS: Mapping[str, str] = MappingProxyType(
    {
        "IFA": WITHHELD,
        "IFATYPE": WITHHELD,
        "DEVICEIP": WITHHELD,
        "DEVICEUA": WITHHELD,
        "LATLONG": WITHHELD,
        "LIMITADTRACKING": "1",
    }
)
"""The IAB macros that identify or locate a viewer's device, with what they become in a
third party's URL served to a viewer who refused tracking (``lmt=1``, the all-zero IFA, no
GDPR consent to a device identifier): a player fills in every macro it supports, so left
in they would hand the vendor what the viewer refused. The advertising id, its type (it
says which id scheme, hence the device's platform, and means nothing without the id), the
device's IP address and user agent and its geolocation are withheld (:data:`WITHHELD`);
``[LIMITADTRACKING]`` is ``1``, as the player may not know of a refusal only the server
decided (a GDPR one). ``[CLIENTUA]`` and ``[SERVERUA]`` name software (the player, the
stitcher), ``[GDPRCONSENT]`` is the refusal itself: those stay for the player."""
_CHILD_DIRECTED_MACROS: Mapping[str, str] = MappingProxyType(
    {k: v for k, v in DEVICE_MACROS.items() if k != "LIMITADTRACKING"}
)
""":data:`DEVICE_MACROS` on child-directed content: the identifiers alone."""
REGULATION_MACROS: tuple[str, ...] = ("GDPR", "REGULATIONS")
"""The IAB macros that say which privacy regulations apply, filled in here when the GDPR
applies as the server resolved it (:func:`server_macros`): ``[GDPR]``, the ``0``/``1``
flag players know (the ``vastlint`` linter too; the IAB's VAST 4.x list has no such
macro), becomes ``1``, and ``[REGULATIONS]`` (VAST 4.1+: "list of applicable
regulations", of the values ``coppa`` and ``gdpr``) lists ``gdpr``, after ``coppa`` on
child-directed content. The player may not know the GDPR applies: the server applied it by
the viewer's country (``VASTSERVER_GDPR_BY_GEO``), or read it from a TC string or a GPP
EU TCF section alone; left in, they would contradict ``${GDPR}`` = 1 in the same URL.
``[GDPRCONSENT]`` stays for the player: the server has no consent string to give when the
player has none."""
_SERVER_MACRO = re.compile(r"\[(" + "|".join((*DEVICE_MACROS, *REGULATION_MACROS)) + r")\]")

MacroValues = tuple[tuple[str, str], ...]
"""IAB macros the server fills in, with their values, as ``(name, value)`` pairs sorted by
name (:func:`server_macros`): hashable, so that a rendered fragment can be keyed on exactly
what it filled in."""


def _server_macro_values(refused: bool, child_directed: bool, gdpr: bool) -> MacroValues:
    values: dict[str, str] = {}
    if refused or child_directed:
        values.update(DEVICE_MACROS if refused else _CHILD_DIRECTED_MACROS)
    if gdpr:
        values["GDPR"] = "1"
        values["REGULATIONS"] = "coppa,gdpr" if child_directed else "gdpr"
    return tuple(sorted(values.items()))


_SERVER_MACROS: Mapping[tuple[bool, bool, bool], MacroValues] = MappingProxyType(
    {
        (r, k, g): _server_macro_values(r, k, g)
        for r in (False, True)
        for k in (False, True)
        for g in (False, True)
    }
)


def server_macros(*, refused: bool, child_directed: bool, gdpr: bool) -> MacroValues:
    """The IAB macros the server fills in, in a third party's URL, for a request: the
    :data:`DEVICE_MACROS` of a viewer who ``refused`` tracking (``lmt``, which the all-zero
    IFA and a GDPR refusal set), the identifiers alone on ``child_directed`` content (COPPA:
    no persistent identifier to a third party; ``[LIMITADTRACKING]``, the device's own
    setting, stays for the player: the viewer refused nothing), and the
    :data:`REGULATION_MACROS` when the ``gdpr`` applies as resolved. ``()``: none, the
    player fills in every macro."""
    return _SERVER_MACROS[(refused, child_directed, gdpr)]


def has_server_macros(url: str) -> bool:
    """Whether ``url`` carries one of the macros :func:`server_macros` may fill in: the
    :data:`DEVICE_MACROS` or the :data:`REGULATION_MACROS`."""
    return "[" in url and _SERVER_MACRO.search(url) is not None


def fill_server_macros(url: str, values: MacroValues) -> str:
    """``url`` with the macros of ``values`` (:func:`server_macros`) replaced by their
    values; other text, other macros (``[CACHEBUSTING]``, ``[GDPRCONSENT]``) included,
    stays."""
    if "[" not in url or not values:
        return url
    found = dict(values)
    return _SERVER_MACRO.sub(lambda m: found.get(m.group(1), m.group(0)), url)


@dataclass(frozen=True, slots=True)
class BeaconParams:
    """Typed view of a beacon/click query string; anything unusable is ``None``."""

    token: str | None
    """``tk``: still to be checked with :func:`verify`."""
    cb: str | None
    """``cb``: cache buster (alphanumeric, ``_``, ``-``; at most 64 chars)."""
    ts: datetime | None
    """``ts``: player timestamp, timezone-aware (naive values are taken as UTC)."""
    playhead_ms: int | None
    """``ph``: ad playhead in milliseconds."""
    error_code: int | None
    """``ec``: VAST/VMAP error code."""
    reason: str | None = None
    """``r``: no-ad reason of an empty response's error beacon."""
    session: str | None = None
    """``s``: VMAP break beacons."""
    break_id: str | None = None
    """``b``: VMAP break beacons."""


_CB_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EC_RE = re.compile(r"[0-9]{1,5}")
_REASON_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EPOCH_RE = re.compile(r"[0-9]{9,13}")
_HMS_RE = re.compile(r"([0-9]{1,4}):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,3}))?")
_SECONDS_RE = re.compile(r"([0-9]{1,7})(?:\.([0-9]{1,3}))?")
_MAX_ID_LEN = 256


def _ms(frac: str | None) -> int:
    return int((frac or "0").ljust(3, "0"))


def _parse_playhead(text: str) -> int | None:
    if m := _HMS_RE.fullmatch(text):
        h, mi, s = (int(g) for g in m.groups()[:3])
        return ((h * 60 + mi) * 60 + s) * 1000 + _ms(m.group(4))
    if m := _SECONDS_RE.fullmatch(text):
        return int(m.group(1)) * 1000 + _ms(m.group(2))
    return None


def _parse_ts(text: str) -> datetime | None:
    if len(text) > 64:
        return None
    try:
        if _EPOCH_RE.fullmatch(text):
            n = int(text)
            seconds = n / 1000 if len(text) >= 12 else n  # epoch millis vs seconds
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        # An unencoded "+" in the offset arrives as a space after query decoding.
        dt = datetime.fromisoformat(text.strip().replace(" ", "+"))
    except (ValueError, OverflowError):
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _get(query: Mapping[str, str], name: str) -> str | None:
    try:
        value = query.get(name)
    except Exception:  # a hostile Mapping must not break beacon handling
        return None
    if not isinstance(value, str) or not value or _MACRO_RE.fullmatch(value):
        return None
    if value in ("-1", "-2"):  # VAST 4 "unknown" / "not applicable"
        return None
    return value


def _match(regex: re.Pattern[str], value: str | None) -> str | None:
    return value if value is not None and regex.fullmatch(value) else None


def _short(value: str | None) -> str | None:
    return value if value is not None and len(value) <= _MAX_ID_LEN else None


def parse_beacon_query(query: Mapping[str, str]) -> BeaconParams:
    """Parse ``/t/...`` and ``/c`` query parameters; never raises.

    Unexpanded macros (``[ERRORCODE]``), ``-1``/``-2`` and garbage all become ``None``.
    """
    token, error_code = beacon_counting_params(query)
    ts = _get(query, PARAM_TIMESTAMP)
    logged = beacon_log_params(query)
    return BeaconParams(
        token=token,
        cb=_match(_CB_RE, _get(query, PARAM_CACHEBUSTER)),
        ts=_parse_ts(ts) if ts is not None else None,
        playhead_ms=logged.playhead_ms,
        error_code=error_code,
        reason=logged.reason,
        session=logged.session,
        break_id=logged.break_id,
    )


class BeaconLogParams(NamedTuple):
    """What a beacon's event-log record keeps of its query beyond the counting params."""

    reason: str | None
    session: str | None
    break_id: str | None
    playhead_ms: int | None


def beacon_log_params(query: Mapping[str, str]) -> BeaconLogParams:
    """``r``, ``s``, ``b`` and ``ph`` exactly as :func:`parse_beacon_query` gives them, and
    nothing else: the beacon path calls this only when the event log is on."""
    ph = _get(query, PARAM_PLAYHEAD)
    return BeaconLogParams(
        reason=_match(_REASON_RE, _get(query, PARAM_REASON)),
        session=_short(_get(query, PARAM_SESSION)),
        break_id=_short(_get(query, PARAM_BREAK)),
        playhead_ms=_parse_playhead(ph) if ph is not None else None,
    )


def beacon_counting_params(query: Mapping[str, str]) -> tuple[str | None, int | None]:
    """What counting a beacon needs of its query: ``(token, error_code)``, exactly as
    :func:`parse_beacon_query` gives them, without parsing the parameters only a log or an
    analysis reads (timestamp, playhead, cache buster...). The beacon path calls this."""
    token = _get(query, PARAM_TOKEN)
    ec = _match(_EC_RE, _get(query, PARAM_ERRORCODE))
    return (
        token if token is not None and len(token) <= MAX_TOKEN_LEN else None,
        int(ec) if ec is not None else None,
    )


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _escape_non_ascii(text: str) -> str:
    return _NON_ASCII.sub(lambda m: quote(m.group(), safe=""), text)


def ascii_url(url: str) -> str:
    """``url`` (an http(s) URL the catalog loader accepted) as a ``Location`` header must
    carry it, and as the URLs of the VAST we emit carry it (an IRI is a valid ``anyURI``,
    but not every CTV player's HTTP stack fetches one): an internationalised host in its
    IDNA form (``xn--``), every other non-ASCII character percent-encoded as UTF-8, and all
    the rest (escapes, ``+``, an empty query, IAB macros' brackets) exactly as it was."""
    if url.isascii():
        return url  # the common case
    start = url.index("//") + 2
    end = len(url)
    for sep in "/?#":
        found = url.find(sep, start)
        if found != -1:
            end = min(end, found)
    userinfo, at, hostport = url[start:end].rpartition("@")
    host, colon, port = hostport, "", ""
    if not hostport.endswith("]"):  # an IPv6 literal is ASCII, and holds colons
        host, colon, port = hostport.partition(":")
    if not host.isascii():
        host = YarlURL.build(scheme="http", host=host).raw_host or host
    authority = f"{_escape_non_ascii(userinfo)}{at}{host}{colon}{port}"
    return f"{url[:start]}{authority}{_escape_non_ascii(url[end:])}"
