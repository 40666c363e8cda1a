"""Tracking tokens and beacon/click URLs: the one place that builds and checks them.

Every served ad carries a signed :class:`AdToken` in its impression, tracking, error and click
URLs. The beacon handler verifies the token (:func:`verify`) and counts the event against the
line item, creative, campaign and advertiser inside it, without any server-side state.

Token format
============

``<payload>.<kid>.<sig>``, all three parts URL-safe (``[A-Za-z0-9_-]`` plus the two dots):

* ``payload``: base64url, no padding, of a compact binary layout::

      u8      format version (currently 1)
      u8      flags (bit 0 = lmt; the other bits must be 0)
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

* ``kid``: 6 lowercase hex chars identifying the signing secret (see :class:`Keyring`).
* ``sig``: base64url of HMAC-SHA256(token key, ``"<payload>.<kid>"``) truncated to 16 bytes.

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
string the server receives back into typed values without ever raising.

This module is pure standard library so it can be used from the server, CLI and tests alike.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_MACRO_VALUES",
    "EVENTS",
    "FORMAT_VERSION",
    "LINEAR_EVENTS",
    "MAX_CLOCK_SKEW_S",
    "MAX_TOKEN_LEN",
    "MIN_SECRET_LEN",
    "PARAM_BREAK",
    "PARAM_CACHEBUSTER",
    "PARAM_ERRORCODE",
    "PARAM_PLAYHEAD",
    "PARAM_REASON",
    "PARAM_SESSION",
    "PARAM_TIMESTAMP",
    "PARAM_TOKEN",
    "VIEWER_HASH_LEN",
    "VMAP_BREAK_EVENTS",
    "AdToken",
    "BeaconParams",
    "Keyring",
    "TokenError",
    "TokenErrorKind",
    "TrackingUrls",
    "expand_macros",
    "new_ad_serving_id",
    "parse_beacon_query",
    "sign",
    "verify",
    "viewer_hash",
]

FORMAT_VERSION = 1
"""First byte of every token payload; bump when the layout changes."""

MAX_TOKEN_LEN = 2048
"""Longest token string :func:`verify` will look at (and :func:`sign` will produce)."""

MAX_CLOCK_SKEW_S = 300
"""A token may claim to be served at most this many seconds in the future."""

MIN_SECRET_LEN = 16
"""Shortest accepted signing secret, in characters. Use 32+ random bytes in production."""

VIEWER_HASH_LEN = 16
"""Hex characters in a :func:`viewer_hash` (64 bits)."""

_SIG_LEN = 16
_KID_LEN = 6
_MAX_INT = 2**63 - 1
_FLAG_LMT = 0x01
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

    def __post_init__(self) -> None:
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


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class _Key:
    kid: str
    token_key: bytes
    viewer_key: bytes

    def __repr__(self) -> str:
        return f"_Key(kid={self.kid!r})"


def _derive_key(secret: str) -> _Key:
    raw = secret.encode("utf-8", "surrogatepass")
    kid = hashlib.sha256(_LABEL_KID + b"\x00" + raw).hexdigest()[:_KID_LEN]
    token_key = hmac.new(raw, _LABEL_TOKEN, hashlib.sha256).digest()
    viewer_key = hmac.new(raw, _LABEL_VIEWER, hashlib.sha256).digest()
    return _Key(kid=kid, token_key=token_key, viewer_key=viewer_key)


class Keyring:
    """Signing secrets: the first one signs, all of them verify.

    To rotate: deploy ``new,old`` (new tokens use ``new``, tokens in flight signed with ``old``
    still verify), then after the maximum token age deploy ``new`` alone.

    Note that :func:`viewer_hash` uses the signing (first) secret, so rotating it also changes
    every viewer hash; anything keyed by viewer hash (frequency caps) starts over.
    """

    __slots__ = ("_by_kid", "_keys")

    def __init__(self, secrets: Sequence[str]) -> None:
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


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes | None:
    """Strict unpadded base64url: ``None`` unless ``text`` is the canonical encoding."""
    if len(text) % 4 == 1 or _B64_RE.fullmatch(text) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if _b64e(raw) == text else None


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_str(out: bytearray, value: str) -> None:
    if _DEC_RE.fullmatch(value) and int(value) <= _MAX_INT:
        _put_varint(out, _K_DEC)
        _put_varint(out, int(value))
    elif _UUID_RE.fullmatch(value):
        _put_varint(out, _K_UUID)
        out += bytes.fromhex(value.replace("-", ""))
    elif _HEX_RE.fullmatch(value):
        raw = bytes.fromhex(value)
        _put_varint(out, (len(raw) << 3) | _K_HEX)
        out += raw
    elif value and (b64 := _b64d(value)) is not None:
        _put_varint(out, (len(b64) << 3) | _K_B64)
        out += b64
    else:
        kind = _K_UTF8
        for prefix_kind, prefix in _URL_PREFIXES:
            if value.startswith(prefix):
                kind, value = prefix_kind, value[len(prefix) :]
                break
        raw = value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on lone surrogates
        _put_varint(out, (len(raw) << 3) | kind)
        out += raw


def _encode_payload(token: AdToken) -> bytes:
    out = bytearray((FORMAT_VERSION, _FLAG_LMT if token.lmt else 0))
    for name in _STRING_FIELDS:
        _put_str(out, getattr(token, name))
    for name in _INT_FIELDS:
        _put_varint(out, getattr(token, name))
    return bytes(out)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _malformed("truncated payload")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        result = 0
        for shift in range(0, 63, 7):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if result > _MAX_INT:
                    raise _malformed("integer out of range")
                return result
        raise _malformed("varint too long")

    def string(self) -> str:
        header = self.varint()
        kind, n = header & 7, header >> 3
        if kind == _K_UTF8 or kind in _PREFIX_BY_KIND:
            try:
                text = self.take(n).decode("utf-8")
            except UnicodeDecodeError:
                raise _malformed("invalid UTF-8") from None
            return _PREFIX_BY_KIND.get(kind, "") + text
        if kind == _K_HEX:
            return self.take(n).hex()
        if kind == _K_B64:
            return _b64e(self.take(n))
        if n:
            raise _malformed("unexpected length")
        if kind == _K_DEC:
            return str(self.varint())
        h = self.take(16).hex()  # _K_UUID, the only kind left
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _decode_payload(payload: bytes) -> AdToken:
    r = _Reader(payload)
    if r.byte() != FORMAT_VERSION:
        raise _malformed("unsupported version")
    flags = r.byte()
    if flags & ~_FLAG_LMT:
        raise _malformed("unknown flags")
    strings = [r.string() for _ in _STRING_FIELDS]
    ints = [r.varint() for _ in _INT_FIELDS]
    if r.pos != len(payload):
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
        )
        canonical = _encode_payload(token) == payload
    except (TypeError, ValueError):
        raise _malformed("bad field value") from None
    if not canonical:
        raise _malformed("non-canonical encoding")
    return token


def _mac(key: bytes, payload_b64: str, kid: str) -> bytes:
    msg = f"{payload_b64}.{kid}".encode("ascii")
    return hmac.new(key, msg, hashlib.sha256).digest()[:_SIG_LEN]


# --------------------------------------------------------------------------------------------
# Public token API
# --------------------------------------------------------------------------------------------


def sign(token: AdToken, keyring: Keyring) -> str:
    """Encode and sign ``token`` with the keyring's first secret.

    Deterministic (same token and key give the same string). ``ValueError`` if a string field
    cannot be UTF-8 encoded or the result would exceed :data:`MAX_TOKEN_LEN`.
    """
    key = keyring._keys[0]
    payload_b64 = _b64e(_encode_payload(token))
    sig_b64 = _b64e(_mac(key.token_key, payload_b64, key.kid))
    out = f"{payload_b64}.{key.kid}.{sig_b64}"
    if len(out) > MAX_TOKEN_LEN:
        raise ValueError(f"token would be {len(out)} chars, over {MAX_TOKEN_LEN}")
    return out


def verify(s: str, keyring: Keyring, now: int, max_age_s: int) -> AdToken:
    """Check and decode a token string from a request.

    Raises only :class:`TokenError`, whatever ``s`` is. The signature is checked before the
    payload is parsed; expiry (``served_at + max_age_s < now``) and the future check
    (``served_at > now + MAX_CLOCK_SKEW_S``) only after the signature is known good.
    """
    if not isinstance(s, str):
        raise _malformed("not a string")
    if len(s) > MAX_TOKEN_LEN:
        raise _malformed("oversize")
    m = _TOKEN_RE.fullmatch(s)
    if m is None:
        raise _malformed("wrong shape")
    payload_b64, kid, sig_b64 = m.groups()
    payload = _b64d(payload_b64)
    sig = _b64d(sig_b64)
    if payload is None or sig is None or len(sig) != _SIG_LEN:
        raise _malformed("bad base64")
    if payload[:1] != bytes((FORMAT_VERSION,)):
        raise _malformed("unsupported version")
    keys = keyring._by_kid.get(kid, ())
    if not keys:
        raise TokenError(TokenErrorKind.BAD_SIGNATURE, "unknown key id")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(_mac(key.token_key, payload_b64, kid), sig)
    if not ok:
        raise TokenError(TokenErrorKind.BAD_SIGNATURE, "signature mismatch")
    token = _decode_payload(payload)
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


def new_ad_serving_id(rng: random.Random) -> str:
    """22-char base64url id from 128 random bits.

    Deterministic for a seeded ``rng`` (golden tests). In production pass a
    ``random.SystemRandom()`` so ids are unpredictable.
    """
    return _b64e(rng.getrandbits(128).to_bytes(16, "big"))


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


def expand_macros(url: str, values: Mapping[str, str] | None = None) -> str:
    """Replace every ``[MACRO]`` like a VAST 4 player would, percent-encoding the values.

    ``values`` (raw, unencoded, keyed by macro name without brackets) override
    :data:`DEFAULT_MACRO_VALUES`; macros known to neither become ``-1`` (VAST 4: "unknown").
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if values is not None and name in values:
            value = values[name]
        else:
            value = DEFAULT_MACRO_VALUES.get(name, "-1")
        return _q(value)

    return _MACRO_RE.sub(repl, url)


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
    token = _get(query, PARAM_TOKEN)
    ph = _get(query, PARAM_PLAYHEAD)
    ts = _get(query, PARAM_TIMESTAMP)
    ec = _match(_EC_RE, _get(query, PARAM_ERRORCODE))
    return BeaconParams(
        token=token if token is not None and len(token) <= MAX_TOKEN_LEN else None,
        cb=_match(_CB_RE, _get(query, PARAM_CACHEBUSTER)),
        ts=_parse_ts(ts) if ts is not None else None,
        playhead_ms=_parse_playhead(ph) if ph is not None else None,
        error_code=int(ec) if ec is not None else None,
        reason=_match(_REASON_RE, _get(query, PARAM_REASON)),
        session=_short(_get(query, PARAM_SESSION)),
        break_id=_short(_get(query, PARAM_BREAK)),
    )
