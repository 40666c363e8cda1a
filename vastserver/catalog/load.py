"""Load and validate a catalog JSON document into an immutable :class:`Catalog`.

The format is documented in ``docs/catalog.md``. Validation is hand-written in a small
declarative style: each JSON object kind is an :class:`Obj` listing its fields (a parser plus a
default), object-level checks, and a ``build`` function turning the parsed fields into a model
dataclass. Parsers never stop at the first problem: every issue is appended to a shared list
with the JSON path where it was found, and :func:`parse_catalog` raises one
:class:`CatalogError` carrying all of them. For any input whatsoever the loader either returns
a :class:`Catalog` or raises :class:`CatalogError`; nothing else escapes.
"""

from __future__ import annotations

import difflib
import enum
import errno
import functools
import hashlib
import json
import math
import os
import re
import stat
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Generic, TypeAlias, TypeVar
from urllib.parse import urlsplit

from yarl import URL as YarlURL

from vastserver.catalog.model import (
    CREATIVE_ATTRIBUTES,
    DEVICE_TYPES,
    FLAT,
    MAX_ADS,
    MAX_POD_S,
    PLATFORMS,
    RATINGS,
    REGION_RE,
    AdRules,
    Advertiser,
    BreakPosition,
    BreakRule,
    Budget,
    Campaign,
    Caption,
    Catalog,
    Creative,
    Daypart,
    Delivery,
    FrequencyCap,
    Icon,
    IconFallbackImage,
    InteractiveFile,
    LineItem,
    Mezzanine,
    Pacing,
    Rendition,
    Rule,
    Slot,
    Targeting,
    Tier,
    UniversalAdId,
    Verification,
    catalog_urls,
    is_https,
)
from vastserver.gcpause import gc_paused
from vastserver.tracking import (
    CLICK_MACROS,
    DOLLAR_MACRO,
    LINEAR_EVENTS_BY_VERSION,
    ascii_url,
    has_privacy_macros,
    has_server_macros,
    is_privacy_macro,
)

__all__ = [
    "DEVICE_TYPES",
    "DIMENSIONS",
    "PLATFORMS",
    "CatalogError",
    "CatalogIssue",
    "load_catalog",
    "parse_catalog",
]

# --------------------------------------------------------------------------- vocabulary

TIERS: Mapping[str, Tier] = MappingProxyType({t.name.lower(): t for t in Tier})
STATUSES: tuple[str, ...] = ("active", "paused", "archived")
GOALS: tuple[str, ...] = ("impressions", "spend", "completions")
PRICING_MODELS: tuple[str, ...] = ("CPM", FLAT)
CAP_SCOPES: tuple[str, ...] = ("creative", "line_item", "campaign", "advertiser")
RENDITION_DELIVERIES: tuple[str, ...] = ("progressive", "streaming")
STREAMING_MIMES: frozenset[str] = frozenset(
    {"application/x-mpegurl", "application/vnd.apple.mpegurl", "application/dash+xml"}
)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")
_IAB = re.compile(r"IAB[1-9][0-9]?(-[1-9][0-9]?)?")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_MIME = re.compile(r"[a-z]+/[A-Za-z0-9][A-Za-z0-9.+-]{0,100}")
_REGISTRY = re.compile(r"[A-Za-z0-9._-]{1,256}")
"""A Universal Ad Id registry: a name (``Ad-ID``) or a domain (``ad-id.org``). vastlint
warns on anything else (a space, ``!``, ``/``, non-ASCII) in the id VAST 2.0 carries."""
_CURRENCY = re.compile(r"[A-Z]{3}")
_NO_SPACE = re.compile(r"\S{1,128}")
_WINDOW = re.compile(r"[1-9][0-9]{0,4}[mhdw]|lifetime|pod|session")
_ICON_X = re.compile(r"left|right|[0-9]{1,4}")
_ICON_Y = re.compile(r"top|bottom|[0-9]{1,4}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
_URL_FAST = re.compile(
    r"https?://[a-z0-9](?:[a-z0-9.-]{0,252}[a-z0-9])?(?:[/?][!$&-;=?-Z_a-z~]*)?"
)  # the characters a URI may hold but #, % and brackets: those take the full check
_URL_UNSAFE = re.compile(r'["<>\\^`{|}]')
"""Printable characters no URI may hold unencoded (RFC 3986); vastlint warns on them in a
URL with macros (``VAST-2.0-macro-uri-unencoded``)."""
_IAB_MACRO = re.compile(r"\[[A-Z][A-Z0-9_]*\]")
# fmt: off
IAB_MACROS: Final = frozenset((
        "ADCATEGORIES", "ADCOUNT", "ADPLAYHEAD", "ADSERVINGID", "ADTYPE", "APIFRAMEWORKS",
        "APPBUNDLE", "ASSETURI", "BLOCKEDADCATEGORIES", "BREAKMAXADLENGTH", "BREAKMAXADS",
        "BREAKMAXDURATION", "BREAKMINADLENGTH", "BREAKMINDURATION", "BREAKPOSITION",
        "CACHEBUSTING", "CLICKPOS", "CLIENTUA", "CONTENTID", "CONTENTURI",
        "DEVICEIP", "DEVICEUA", "DOMAIN", "EXTENSIONS", "GDPR", "GDPRCONSENT",
        "IFA", "IFATYPE", "INVENTORYSTATE", "LATLONG", "LIMITADTRACKING", "MEDIAMIME",
        "OMIDPARTNER", "PAGEURL", "PLACEMENTTYPE", "PLAYERCAPABILITIES",
        "PLAYERSIZE", "PLAYERSTATE", "PODSEQUENCE", "REGULATIONS", "SERVERSIDE",
        "SERVERUA", "TIMESTAMP", "TRANSACTIONID", "UNIVERSALADID", "VASTVERSIONS",
        "VERIFICATIONVENDORS",
))
# fmt: on
"""The IAB VAST macros a catalog URL may carry for the player to fill in: those the
``vastlint`` linter knows (0.16; it warns ``VAST-2.0-macro-unknown`` on any other, e.g.
``[CLICKTYPE]``, ``[STOREID]`` or ``[STOREURL]``, which it does not list), less those it
warns on in a catalog URL: ``[CONTENTPLAYHEAD]`` and ``[MEDIAPLAYHEAD]`` (deprecated in
VAST 4.1, ``[ADPLAYHEAD]`` stays) and ``[ERRORCODE]`` and ``[REASON]`` (for Error URLs
only, which are ours)."""
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URI_CHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2}|[^\x00-\x7f])"
_AUTHORITY = re.compile(  # RFC 3986 (non-ASCII let through, as in IRIs): user@host:port
    rf"(?:(?:{_URI_CHAR}|:)*@)?(?:\[[0-9A-Fa-f:.]+\]|{_URI_CHAR}+)(?::[0-9]+)?"
)
_URL_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")
MIN_YEAR, MAX_YEAR = 1970, 2999
"""The years a catalog date-time may fall in."""
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""What XML 1.0 cannot carry (control characters, lone surrogates, U+FFFE/U+FFFF): every
catalog string may end up in a VAST document, which must stay well-formed UTF-8."""
_PATH_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

MAX_SECONDS: Final = 3600
"""Upper bound for creative and icon durations and offsets, in seconds."""
MAX_MONEY: Final = 1e9
MAX_COUNT: Final = 10**12

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class CatalogIssue:
    """One problem found in a catalog document, at a JSON path such as ``$.line_items[3].tier``.

    An issue inside an advertiser, campaign, line item or creative also names that entity
    (:attr:`entity`, e.g. ``line item "li-summer-30s"``, and :attr:`id`, the id as written),
    since a trafficker looks an entity up by its id, not by its place in the array."""

    path: str
    message: str
    entity: str | None = None
    """The entity the issue is in, told by its id (or why it has none to tell it by), when
    that is not the issue itself; shown after the message."""
    id: str | None = None
    """The id of the entity the issue is in, when it has a string id."""

    def __str__(self) -> str:
        where = f" (in {self.entity})" if self.entity else ""
        return f"{self.path}: {self.message}{where}"


class CatalogError(Exception):
    """A catalog document is unusable; :attr:`errors` lists every issue found."""

    MAX_LISTED: Final = 25

    def __init__(self, errors: list[CatalogIssue], *, source: str = "<memory>") -> None:
        self.errors: list[CatalogIssue] = list(errors)
        self.source = source
        super().__init__(self._summary())

    def _summary(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in catalog {self.source}"
        lines = [f"  {issue}" for issue in self.errors[: self.MAX_LISTED]]
        if n > self.MAX_LISTED:
            lines.append(f"  ... and {n - self.MAX_LISTED} more")
        return "\n".join([head + ":", *lines]) if lines else head


Issues: TypeAlias = list[CatalogIssue]

# --------------------------------------------------------------------------- parser kit


class _Invalid(enum.Enum):
    INVALID = 0


INVALID: Final = _Invalid.INVALID
"""Returned by a parser whose input was invalid (the reason is already in the issue list)."""

T = TypeVar("T")
Parser: TypeAlias = Callable[[object, str, Issues], T | _Invalid]
"""``parser(value, json_path, issues)``: the parsed value, or INVALID after recording issues."""


def _fail(errs: Issues, path: str, message: str) -> _Invalid:
    errs.append(CatalogIssue(path, message))
    return INVALID


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list | tuple):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _show(v: object) -> str:
    """A short rendering of an offending value for messages."""
    if isinstance(v, str):
        text = json.dumps(v if len(v) <= 60 else v[:57] + "...")
    elif v is None or isinstance(v, bool | int | float):
        text = json.dumps(v) if not isinstance(v, int) or abs(v) < 10**30 else "<huge integer>"
    else:
        text = _json_type(v)
    return text


def _wrong_type(errs: Issues, path: str, expected: str, v: object) -> _Invalid:
    got = _json_type(v)
    if v is not None and isinstance(v, str | int | float):
        got = f"{got} {_show(v)}"
    return _fail(errs, path, f"expected {expected}, got {got}")


def child(path: str, key: object) -> str:
    """JSON path of ``key`` inside the object at ``path``."""
    if isinstance(key, str) and _PATH_IDENT.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key) if isinstance(key, str) else repr(key)}]"


def string(
    pattern: re.Pattern[str] | None = None, *, what: str = "", max_len: int = 512
) -> Parser[str]:
    """A non-empty string, optionally matching ``pattern`` (described as ``what``)."""

    def parse(v: object, path: str, errs: Issues) -> str | _Invalid:
        if not isinstance(v, str):
            return _wrong_type(errs, path, "a string", v)
        if not v or v.isspace():
            return _fail(errs, path, "must not be empty")
        if len(v) > max_len:
            return _fail(errs, path, f"too long ({len(v)} characters, at most {max_len})")
        bad = _NOT_XML_CHAR.search(v)
        if bad is not None:
            return _fail(errs, path, f"contains {_char(bad.group())}, which XML cannot carry")
        if pattern is not None and not pattern.fullmatch(v):
            return _fail(errs, path, f"{_show(v)} is not {what or 'valid'}")
        return v

    return parse


def enum_of(*choices: str) -> Parser[str]:
    allowed = frozenset(choices)
    listing = ", ".join(json.dumps(c) for c in choices)

    def parse(v: object, path: str, errs: Issues) -> str | _Invalid:
        if not isinstance(v, str):
            return _wrong_type(errs, path, f"one of {listing}", v)
        if v not in allowed:
            return _fail(errs, path, f"{_show(v)} is not one of {listing}")
        return v

    return parse


def integer(lo: int, hi: int) -> Parser[int]:
    def parse(v: object, path: str, errs: Issues) -> int | _Invalid:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                v = int(v)  # 30.0 is as good as 30
            else:
                return _wrong_type(errs, path, "an integer", v)
        if not lo <= v <= hi:
            return _fail(errs, path, f"{_show(v)} is out of range [{lo}, {hi}]")
        return v

    return parse


def number(lo: float, hi: float, *, lo_exclusive: bool = False) -> Parser[float]:
    def parse(v: object, path: str, errs: Issues) -> float | _Invalid:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return _wrong_type(errs, path, "a number", v)
        if isinstance(v, float) and not math.isfinite(v):
            return _fail(errs, path, f"{v} is not a finite number")
        if v < lo or (lo_exclusive and v == lo):
            return _fail(errs, path, f"{_show(v)} must be {'>' if lo_exclusive else '>='} {lo:g}")
        if v > hi:
            return _fail(errs, path, f"{_show(v)} must be <= {hi:g}")
        return float(v)

    return parse


def boolean(v: object, path: str, errs: Issues) -> bool | _Invalid:
    if not isinstance(v, bool):
        return _wrong_type(errs, path, "true or false", v)
    return v


def nullable(p: Parser[T]) -> Parser[T | None]:
    def parse(v: object, path: str, errs: Issues) -> T | _Invalid | None:
        return None if v is None else p(v, path, errs)

    return parse


def list_of(
    p: Parser[T], *, min_len: int = 0, max_len: int | None = None, unique: bool = False
) -> Parser[tuple[T, ...]]:
    def parse(v: object, path: str, errs: Issues) -> tuple[T, ...] | _Invalid:
        if not isinstance(v, list | tuple):
            return _wrong_type(errs, path, "an array", v)
        n = len(errs)
        out: list[T] = []
        seen: set[object] = set()
        for i, item in enumerate(v):
            ipath = f"{path}[{i}]"
            x = p(item, ipath, errs)
            if x is INVALID:
                continue
            if unique:
                if x in seen:
                    _fail(errs, ipath, f"duplicate value {_show(x)}")
                seen.add(x)
            out.append(x)
        if len(v) < min_len:
            _fail(errs, path, "must not be empty" if min_len == 1 else f"needs {min_len}+ items")
        if max_len is not None and len(v) > max_len:
            _fail(errs, path, f"at most {max_len} items")
        return INVALID if len(errs) > n else tuple(out)

    return parse


def set_of(p: Parser[T], *, min_len: int = 0) -> Parser[frozenset[T]]:
    items = list_of(p, min_len=min_len, unique=True)

    def parse(v: object, path: str, errs: Issues) -> frozenset[T] | _Invalid:
        x = items(v, path, errs)
        return x if x is INVALID else frozenset(x)

    return parse


def map_of(key: Parser[str], value: Parser[T]) -> Parser[Mapping[str, T]]:
    """A JSON object with free-form keys, as a read-only mapping."""

    def parse(v: object, path: str, errs: Issues) -> Mapping[str, T] | _Invalid:
        if not isinstance(v, dict):
            return _wrong_type(errs, path, "an object", v)
        n = len(errs)
        _report_duplicate_keys(v, path, errs)
        out: dict[str, T] = {}
        for k, item in v.items():
            kpath = child(path, k)
            parsed_key = key(k, kpath, errs)
            x = value(item, kpath, errs)
            if not isinstance(parsed_key, _Invalid) and not isinstance(x, _Invalid):
                out[parsed_key] = x
        return INVALID if len(errs) > n else MappingProxyType(out)

    return parse


def datetime_iso(v: object, path: str, errs: Issues) -> datetime | _Invalid:
    """ISO 8601 date-time with an explicit UTC offset, normalised to UTC."""
    if not isinstance(v, str):
        return _wrong_type(errs, path, "an ISO 8601 date-time string", v)
    if _NOT_XML_CHAR.search(v) or not v.isascii():
        return _fail(errs, path, f"{_show(v)} is not an ISO 8601 date-time")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return _fail(errs, path, f"{_show(v)} is not an ISO 8601 date-time")
    if dt.utcoffset() is None:
        return _fail(errs, path, f"{_show(v)} needs a UTC offset, e.g. 'Z' or '-05:00'")
    try:
        utc = dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return _fail(errs, path, f"{_show(v)} is out of range")
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        # pacing does calendar arithmetic in the campaign's time zone across the flight:
        # year 1 or 9999 would overflow it (and no flight runs then)
        return _fail(errs, path, f"{_show(v)} is out of range (years {MIN_YEAR}-{MAX_YEAR})")
    return utc


@cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def timezone_name(v: object, path: str, errs: Issues) -> str | _Invalid:
    if not isinstance(v, str):
        return _wrong_type(errs, path, "an IANA time zone name", v)
    if v not in _known_timezones():
        return _fail(errs, path, f"unknown time zone {_show(v)}{_timezone_hint(v)}")
    return v


@functools.lru_cache(maxsize=256)
def _timezone_hint(v: str) -> str:
    """A "did you mean" for a time zone name (~3 ms over ~600 names: a catalog repeating one
    bad name thousands of times pays it once)."""
    close = difflib.get_close_matches(v, sorted(_known_timezones()), n=1) if len(v) < 64 else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _char(c: str) -> str:
    return f"U+{ord(c):04X}"


def url(v: object, path: str, errs: Issues) -> str | _Invalid:
    """An absolute http(s) URL with a host."""
    return _url(v, path, errs, privacy_macros=False)


_PRIVACY_MACRO_LIST = (
    "${GDPR}, ${GDPR_CONSENT_<GVL vendor id>}, ${GDPR_PD}, ${US_PRIVACY}, "
    "${GPP_STRING_<vendor id>} and ${GPP_SID}"
)


def _url(
    v: object,
    path: str,
    errs: Issues,
    *,
    privacy_macros: bool,
    more_macros: frozenset[str] = frozenset(),
    as_ascii: bool = True,
) -> str | _Invalid:
    """:func:`url`; with ``privacy_macros``, ``${GDPR}``-style privacy macros (which the
    renderer fills in, :func:`vastserver.tracking.fill_privacy`) may stand after the host:
    in a creative's trackers (its icons' too) and its ``vast_tag_url``. ``more_macros``: IAB
    macros allowed here beside :data:`IAB_MACROS` (``REASON`` in ``verificationNotExecuted``
    URLs).

    An accepted URL is returned in its ASCII form (:func:`~vastserver.tracking.ascii_url`:
    an IDNA host, other non-ASCII percent-encoded), as the VAST carries it; with
    ``as_ascii`` false, as written (a click-through, which only the ``/c`` redirect sends,
    in that form)."""
    if not isinstance(v, str):
        return _wrong_type(errs, path, "an http(s) URL", v)
    if len(v) > 4096:
        return _fail(errs, path, "URL too long (at most 4096 characters)")
    if _URL_FAST.fullmatch(v):
        return v  # the common case: a plain http(s) URL with a lowercase host name
    if _URL_BAD_CHAR.search(v) or _NOT_XML_CHAR.search(v):
        return _fail(errs, path, f"URL {_show(v)} contains whitespace or control characters")
    checked = v  # what the URI checks see: privacy macros as a value fills them in
    if privacy_macros and "${" in v:
        for m in DOLLAR_MACRO.finditer(v):
            if not is_privacy_macro(m.group()):
                return _fail(
                    errs,
                    path,
                    f"URL {_show(v)}: {_show(m.group())} is no privacy macro this server "
                    f"fills in (those are {_PRIVACY_MACRO_LIST}, as the IAB writes them)",
                )
        checked = DOLLAR_MACRO.sub("0", v)
    unsafe = _URL_UNSAFE.search(checked)
    if unsafe is not None:
        c = unsafe.group()
        hint = ""
        if c in "{}" and any(is_privacy_macro(m.group()) for m in DOLLAR_MACRO.finditer(v)):
            hint = (
                "; privacy macros such as ${GDPR} are filled in only in a creative's"
                " trackers (its icons' too) and vast_tag_url"
            )
        return _fail(
            errs,
            path,
            f"URL {_show(v)} contains {c}, which a URI cannot hold: percent-encode it "
            f"(%{ord(c):02X}){hint}",
        )
    unknown = [
        m for m in _IAB_MACRO.findall(v) if m[1:-1] not in IAB_MACROS and m[1:-1] not in more_macros
    ]
    if unknown:
        return _fail(
            errs,
            path,
            f"URL {_show(v)}: {unknown[0]} is no IAB VAST macro that players fill in "
            "(percent-encode its brackets if it is meant literally)",
        )
    try:
        parts = urlsplit(v)
        host = parts.hostname
        _ = urlsplit(checked).port  # raises ValueError on a bad port
    except ValueError:
        return _fail(errs, path, f"{_show(v)} is not a valid URL")
    if parts.scheme not in ("http", "https"):
        return _fail(errs, path, f"{_show(v)} must be an http or https URL")
    if not host:
        return _fail(errs, path, f"{_show(v)} has no host")
    if "${" in parts.netloc:
        return _fail(errs, path, f"{_show(v)}: privacy macros go after the host")
    authority_end = len(parts.scheme) + 3 + len(parts.netloc)
    problem = _not_any_uri(checked, parts.netloc, authority_end)
    if problem is not None:
        return _fail(
            errs,
            path,
            f"{_show(v)} is not a valid URI once a player fills in its IAB macros: {problem}",
        )
    try:
        ascii_form = ascii_url(v)  # what the VAST, or the /c redirect, carries
    except ValueError as e:  # (UnicodeError too) a host IDNA cannot encode
        return _fail(errs, path, f"{_show(v)} has a host that cannot be encoded ({e})")
    return ascii_form if as_ascii else v


def _not_any_uri(v: str, authority: str, authority_end: int) -> str | None:
    """Why ``v`` would fail the VAST XSDs' ``anyURI`` (as the IAB XSDs check it) once a
    player has filled in its IAB macros (``[CACHEBUSTING]``); None when it would not."""
    if not _AUTHORITY.fullmatch(authority):
        return "a host, user or port that a URI cannot have"
    filled = _IAB_MACRO.sub("0", v[authority_end:])
    if _BAD_PERCENT.search(filled):
        return "a % not followed by two hex digits (%%MACRO%% macros are not IAB macros)"
    if "[" in filled or "]" in filled:
        return "a bracket outside an IAB macro such as [CACHEBUSTING]"
    if filled.count("#") > 1:
        return "more than one #"
    return None


CLICK_URL_MAX_BYTES = 1024
"""A click-through travels inside the signed click token (at most 2,048 characters, with
the other fields and base64's growth): a longer one would make every ad of its creative
unservable."""


def click_url(v: object, path: str, errs: Issues) -> str | _Invalid:
    """:func:`url`, short enough for the click token, and one a redirect can carry; as
    written (the redirect sends it in ASCII form, :func:`vastserver.tracking.ascii_url`)."""
    got = _url(v, path, errs, privacy_macros=False, as_ascii=False)
    if isinstance(got, _Invalid):
        return got
    size = len(got.encode("utf-8"))
    if size > CLICK_URL_MAX_BYTES:
        return _fail(errs, path, f"too long for a click-through ({size} bytes, at most 1024)")
    try:
        YarlURL(got)  # what the /c redirect builds its Location from
    except ValueError as e:
        return _fail(errs, path, f"{_show(got)} cannot be redirected to ({e})")
    return got


def creative_click_url(v: object, path: str, errs: Issues) -> str | _Invalid:
    """A creative's click-through (:func:`click_url`): the player never sees it (``/c``
    redirects to it), so it may carry only the IAB macros ``/c`` fills in at click time
    (:data:`~vastserver.tracking.CLICK_MACROS`); any other would reach the advertiser
    unfilled."""
    got = click_url(v, path, errs)
    if isinstance(got, _Invalid):
        return got
    unfillable = sorted({m for m in _IAB_MACRO.findall(got) if m[1:-1] not in CLICK_MACROS})
    if unfillable:
        allowed = ", ".join(f"[{m}]" for m in sorted(CLICK_MACROS))
        return _fail(
            errs,
            path,
            f"{_show(got)}: {', '.join(unfillable)} cannot be filled in a click-through (the "
            f"/c redirect fills only {allowed}; the player never sees this URL)",
        )
    return got


def _report_duplicate_keys(v: Mapping[Any, Any], path: str, errs: Issues) -> None:
    if type(v) is _DupDict:
        for key in v.duplicate_keys:
            _fail(errs, child(path, key), "key appears more than once in this object")


# ---- objects with fixed fields

_REQUIRED: Final = object()
_ABSENT: Final = object()
"""Field default meaning: leave the field out of the parsed dict when it is not given."""


@dataclass(frozen=True, slots=True)
class F:
    """A field: its parser and default (``_REQUIRED``, ``_ABSENT`` or a value)."""

    parser: Parser[Any]
    default: object = _REQUIRED


Check: TypeAlias = Callable[[dict[str, Any], Mapping[Any, Any], str, Issues], None]
"""Object-level check: ``(parsed_fields, raw_object, path, issues)``; sees only valid fields."""


class Obj(Generic[T]):
    """A JSON object with a fixed set of fields, built into ``T`` when every field is valid.

    Every object may also carry a ``"_comment"`` string, which is ignored.
    """

    def __init__(
        self,
        what: str,
        fields: Mapping[str, F],
        build: Callable[[dict[str, Any]], T],
        checks: Sequence[Check] = (),
    ) -> None:
        self.what = what
        self.fields = dict(fields)
        self.build = build
        self.checks = tuple(checks)
        self._required = tuple(k for k, f in fields.items() if f.default is _REQUIRED)
        self._defaults = {
            k: f.default
            for k, f in fields.items()
            if f.default is not _REQUIRED and f.default is not _ABSENT
        }

    def fields_of(self, v: object, path: str, errs: Issues) -> dict[str, Any] | None:
        """Parse the fields that are valid (with defaults filled in); None if not an object."""
        if not isinstance(v, dict):
            _wrong_type(errs, path, f"{self.what} object", v)
            return None
        _report_duplicate_keys(v, path, errs)
        out = dict(self._defaults)
        fields = self.fields
        for key, raw in v.items():
            f = fields.get(key)
            if f is None:
                self._extra(key, raw, path, errs)
                continue
            x = f.parser(raw, f"{path}.{key}", errs)
            if x is INVALID:
                out.pop(key, None)
            else:
                out[key] = x
        for key in self._required:
            if key not in v:
                _fail(errs, f"{path}.{key}", f"required field of {self.what} is missing")
        for check in self.checks:
            check(out, v, path, errs)
        return out

    def _extra(self, key: object, raw: object, path: str, errs: Issues) -> None:
        kpath = child(path, key)
        if key == "_comment":
            if not isinstance(raw, str):
                _wrong_type(errs, kpath, "a string (comments are strings)", raw)
            return
        hint = ""
        if isinstance(key, str) and len(key) <= 64:
            close = difflib.get_close_matches(key, list(self.fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(errs, kpath, f"unknown field of {self.what}{hint}")

    def __call__(self, v: object, path: str, errs: Issues) -> T | _Invalid:
        n = len(errs)
        d = self.fields_of(v, path, errs)
        if d is None or len(errs) > n:
            return INVALID
        return self.build(d)


# ---- reusable checks


def either(a: str, b: str, *, required: bool = True) -> Check:
    """Exactly one (or, if not ``required``, at most one) of fields ``a`` and ``b``."""

    def check(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
        if a in raw and b in raw:
            _fail(errs, f"{path}.{b}", f"give either {a!r} or {b!r}, not both")
        elif required and a not in raw and b not in raw:
            _fail(errs, f"{path}.{a}", f"required field is missing (or give {b!r})")

    return check


def ordered(first: str, second: str) -> Check:
    """``d[first] < d[second]`` when both are valid."""

    def check(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
        if first in d and second in d and not d[first] < d[second]:
            _fail(errs, f"{path}.{second}", f"{second} must be after {first}")

    return check


def _seconds_or_ms(d: Mapping[str, Any], name: str) -> int | None:
    """``name_ms`` if given, else ``name`` (seconds) converted to milliseconds."""
    ms = d.get(f"{name}_ms")
    if ms is not None:
        return int(ms)
    s = d.get(name)
    return None if s is None else round(s * 1000)


# --------------------------------------------------------------------------- the schema

ID = string(_ID, what="a valid id (letters, digits, '.', '_', ':', '-'; at most 128)")
CURRENCY = string(_CURRENCY, what="an ISO 4217 currency code like 'USD'")
NAME = string(max_len=256)
HOST = string(_HOST, what="a lowercase domain name like 'brand.example'")
IAB = string(_IAB, what="an IAB category code like 'IAB8-5'")
MIME = string(_MIME, what="a MIME type like 'video/mp4'")
REGISTRY = string(
    _REGISTRY,
    what="a registry name or domain of letters, digits, '.', '_' and '-' (like 'ad-id.org')",
)
CATEGORIES = list_of(IAB, unique=True)
ATTRIBUTES = list_of(integer(min(CREATIVE_ATTRIBUTES), max(CREATIVE_ATTRIBUTES)), unique=True)
"""A creative's ``attributes``: AdCOM 1.0 creative attribute codes, each once."""
COMPETITIVE_SLUG = string(_SLUG, what="a lowercase slug like 'fast_food'")
COMPETITIVE_LABELS = list_of(COMPETITIVE_SLUG, unique=True)
"""A line item's or a creative's ``competitive_categories``: slugs as the advertiser's
``competitive_category``, each once."""
SECONDS = number(0.001, MAX_SECONDS)
MILLIS = integer(1, MAX_SECONDS * 1000)
AD_SECONDS = number(1, MAX_SECONDS)
AD_MILLIS = integer(1000, MAX_SECONDS * 1000)
"""A creative's length: at least 1 s (players and vastlint read ``00:00:00.500`` as an ad
of no length, which fires no quartile)."""
OFFSET_SECONDS = number(0, MAX_SECONDS)
OFFSET_MILLIS = integer(0, MAX_SECONDS * 1000)
PIXELS = integer(1, 16384)
COUNT = nullable(integer(0, MAX_COUNT))
MONEY = nullable(number(0, MAX_MONEY))


def _rendition(d: dict[str, Any]) -> Rendition:
    if "delivery" not in d:
        d["delivery"] = "streaming" if d["mime"].lower() in STREAMING_MIMES else "progressive"
    return Rendition(**d)


RENDITION = Obj(
    "rendition",
    {
        "url": F(url),
        "mime": F(MIME),
        "width": F(PIXELS),
        "height": F(PIXELS),
        "bitrate_kbps": F(nullable(integer(1, 1_000_000)), None),
        "codec": F(nullable(NAME), None),
        "delivery": F(enum_of(*RENDITION_DELIVERIES), _ABSENT),
    },
    _rendition,
)

MEZZANINE = Obj(
    "mezzanine",
    {
        "url": F(url),
        "mime": F(MIME),
        "width": F(PIXELS),
        "height": F(PIXELS),
        "codec": F(nullable(NAME), None),
        "file_size": F(nullable(integer(0, 10**15)), None),
    },
    lambda d: Mezzanine(**d),
)

CAPTION_MIMES: tuple[str, ...] = ("text/vtt", "application/ttml+xml", "text/srt")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")

CAPTION = Obj(
    "caption",
    {
        "url": F(url),
        "mime": F(enum_of(*CAPTION_MIMES)),
        "language": F(string(_LANGUAGE, what="a language tag such as en or es-MX")),
    },
    lambda d: Caption(**d),
)


def https_only(
    what: str, *, privacy_macros: bool = False, more_macros: frozenset[str] = frozenset()
) -> Parser[str]:
    """:func:`url`, https only: vastlint warns on http tracking pixels and verification
    scripts, and players on https pages drop them (the error says ``<what> must be
    https``). ``privacy_macros``, ``more_macros``: see :func:`_url`."""

    def parse(v: object, path: str, errs: Issues) -> str | _Invalid:
        got = _url(v, path, errs, privacy_macros=privacy_macros, more_macros=more_macros)
        if isinstance(got, str) and not is_https(got):
            return _fail(errs, path, f"{what} must be https")
        return got

    return parse


tracker_url = https_only("tracking pixels", privacy_macros=True)
"""A third-party tracker: it may carry privacy macros, which the renderer fills in."""


def tag_url(v: object, path: str, errs: Issues) -> str | _Invalid:
    """A third-party VAST tag (``vast_tag_url``): it may carry privacy macros, which the
    renderer fills in (passing the viewer's consent on to the tag's ad server)."""
    return _url(v, path, errs, privacy_macros=True)


_VENDOR = re.compile(r"\S*\.\S*-[^\s-]+")
"""``domain-useCase`` (``company.com-omid``), the form VAST 4.1 asks verification vendors
to use so that their names do not collide (vastlint warns on any other)."""


MAX_TRACKERS_PER_EVENT = 8
"""Third-party URLs of one event a creative (or a verification) may have."""
_not_executed_https = https_only(
    "verificationNotExecuted tracking", more_macros=frozenset({"REASON"})
)


def not_executed_url(v: object, path: str, errs: Issues) -> str | _Invalid:
    """A ``verificationNotExecuted`` tracking URL: https, with ``[REASON]`` (the code of
    why the player did not run the script, which is all the event tells)."""
    got = _not_executed_https(v, path, errs)
    if isinstance(got, str) and "[REASON]" not in got:
        return _fail(errs, path, f"{_show(got)} must carry the [REASON] macro")
    return got


VERIFICATION = Obj(
    "verification",
    {
        "vendor": F(string(_VENDOR, what="a vendor as domain-useCase, e.g. company.com-omid")),
        "js_url": F(https_only("verification scripts")),
        # OMID is the one JavaScript verification framework VAST names (vastlint warns on
        # any other value, and on "OMID": the attribute is case-sensitive).
        "api_framework": F(enum_of("omid"), "omid"),
        # Required: an OMID script without its parameters measures nothing (vastlint warns
        # VAST-4.1-verification-parameters on a <Verification> without them).
        "parameters": F(string(max_len=8192)),
        "browser_optional": F(boolean, False),
        "not_executed_urls": F(list_of(not_executed_url, max_len=MAX_TRACKERS_PER_EVENT), ()),
    },
    lambda d: Verification(**d),
)


INTERACTIVE_API_FRAMEWORKS: tuple[str, ...] = ("SIMID",)
"""The frameworks of a creative's ``interactive`` files (``InteractiveCreativeFile@
apiFramework``): SIMID, VPAID's successor, is the one CTV players run. Exact case, as
the SIMID spec writes it (players ignore near misses, and vastlint warns on them)."""
SIMID_TYPE = "text/html"
"""The MIME type of a SIMID file: the SIMID spec requires ``type="text/html"`` (the
creative is an HTML document the player loads in an iframe)."""
MAX_INTERACTIVE_FILES = 8
"""Interactive files a creative may carry."""


def _simid_is_html(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
    if d.get("api_framework") == "SIMID" and "type" in d and d["type"] != SIMID_TYPE:
        _fail(
            errs,
            f"{path}.type",
            f"a SIMID file is an HTML document: its type must be {SIMID_TYPE!r}",
        )


INTERACTIVE_FILE = Obj(
    "interactive file",
    {
        # https only: the player loads it in an iframe of its (https) page, and vastlint
        # warns on any other SIMID URL; IAB macros as in the other catalog URLs
        "url": F(https_only("interactive files")),
        "api_framework": F(enum_of(*INTERACTIVE_API_FRAMEWORKS)),
        "type": F(MIME, SIMID_TYPE),
        "variable_duration": F(boolean, False),
    },
    lambda d: InteractiveFile(**d),
    checks=[_simid_is_html],
)


def _icon(d: dict[str, Any]) -> Icon:
    return Icon(
        program=d["program"],
        width=d["width"],
        height=d["height"],
        x_position=d["x_position"],
        y_position=d["y_position"],
        image_url=d["image_url"],
        creative_type=d["creative_type"],
        click_through=d["click_through"],
        duration_ms=_seconds_or_ms(d, "duration"),
        offset_ms=_seconds_or_ms(d, "offset"),
        click_fallback_images=d["click_fallback_images"],
        view_tracking_urls=d["view_tracking_urls"],
        click_tracking_urls=d["click_tracking_urls"],
    )


ICON_FALLBACK_IMAGE = Obj(
    "icon click fallback image",
    {
        "image_url": F(https_only("icon click fallback images")),
        # vastlint warns on a fallback image without its size
        "width": F(PIXELS),
        "height": F(PIXELS),
        "alt_text": F(nullable(NAME), None),
    },
    lambda d: IconFallbackImage(**d),
)
_ICON_TRACKERS = list_of(tracker_url, max_len=MAX_TRACKERS_PER_EVENT)

ICON = Obj(
    "icon",
    {
        "program": F(NAME),
        "width": F(PIXELS),
        "height": F(PIXELS),
        "x_position": F(string(_ICON_X, what="'left', 'right' or a pixel offset")),
        "y_position": F(string(_ICON_Y, what="'top', 'bottom' or a pixel offset")),
        "image_url": F(url),
        "creative_type": F(MIME),
        "click_through": F(nullable(click_url), None),
        "duration": F(SECONDS, _ABSENT),
        "duration_ms": F(MILLIS, _ABSENT),
        "offset": F(OFFSET_SECONDS, _ABSENT),
        "offset_ms": F(OFFSET_MILLIS, _ABSENT),
        "click_fallback_images": F(list_of(ICON_FALLBACK_IMAGE, max_len=8), ()),
        "view_tracking_urls": F(_ICON_TRACKERS, ()),
        "click_tracking_urls": F(_ICON_TRACKERS, ()),
    },
    _icon,
    checks=[
        either("duration", "duration_ms", required=False),
        either("offset", "offset_ms", required=False),
    ],
)


MAX_UNIVERSAL_AD_IDS = 8
"""Other registries' ids a creative may carry beside its primary ``universal_ad_id``."""

UNIVERSAL_AD_ID = Obj(
    "universal ad id",
    {
        "registry": F(REGISTRY),
        "value": F(string(_NO_SPACE, what="an id without spaces (at most 128)")),
    },
    lambda d: UniversalAdId(**d),
)


def _distinct_universal_ad_ids(
    d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues
) -> None:
    """Each of ``universal_ad_ids`` is another registry's real id of the creative: not
    ``unknown`` (the primary says that) and neither the primary id nor another one again.
    Read from ``raw``, so that it is reported beside errors in other entries."""
    extra = raw.get("universal_ad_ids")
    if not isinstance(extra, list):
        return
    seen = {(raw.get("universal_ad_id_registry", "ad-id.org"), raw.get("universal_ad_id"))}
    for n, u in enumerate(extra):
        if not isinstance(u, dict):
            continue
        registry, value = u.get("registry"), u.get("value")
        if not isinstance(registry, str) or not isinstance(value, str):
            continue
        where = f"{path}.universal_ad_ids[{n}].value"
        if value.strip().lower() == "unknown":
            _fail(errs, where, "an extra universal ad id must be a real id, not 'unknown'")
        elif (registry, value) in seen:
            _fail(errs, where, f"{_show(registry)} id {_show(value)} is already given")
        seen.add((registry, value))


def _skip_before_end(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
    duration, skip = _seconds_or_ms(d, "duration"), _seconds_or_ms(d, "skip_offset")
    if duration is not None and skip is not None and skip >= duration:
        name = "skip_offset_ms" if "skip_offset_ms" in d else "skip_offset"
        _fail(errs, f"{path}.{name}", "skip offset must be shorter than the creative's duration")


TRACKER_EVENTS: tuple[str, ...] = (
    "impression",
    "click",
    *dict.fromkeys(e for events in LINEAR_EVENTS_BY_VERSION.values() for e in events),
    "skip",
    "interactiveStart",
)
"""Events a creative's third-party trackers may name (a VAST version without the event
leaves its trackers out). ``skip`` needs a skip offset and ``interactiveStart`` (VAST 4.2+)
interactive files: :func:`_trackers_of_events_sent`."""


CREATIVE_API_FRAMEWORKS: tuple[str, ...] = ("VPAID",)
"""A creative's ``api_framework`` values: what the server acts on."""

_NOT_WITH_TAG = (
    "renditions",
    "mezzanine",
    "click_through",
    "skip_offset",
    "skip_offset_ms",
    "captions",
    "interactive",
)


def _trackers_of_events_sent(
    d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues
) -> None:
    """A pixel of an event the creative's ads never send is refused, not left silent: a
    ``skip`` pixel needs a skip offset (only skippable ads send skip), an
    ``interactiveStart`` one interactive files (only SIMID creatives start; a wrapper's tag
    brings its own). Read from ``raw``, so that it is reported beside any error in the
    trackers' URLs."""
    trackers = raw.get("trackers")
    if not isinstance(trackers, dict):
        return
    skippable = raw.get("skip_offset") is not None or raw.get("skip_offset_ms") is not None
    if "skip" in trackers and not skippable:
        _fail(errs, f"{path}.trackers.skip", "needs a skip offset (only skippable ads send skip)")
    if "interactiveStart" in trackers and not raw.get("interactive"):
        _fail(
            errs,
            f"{path}.trackers.interactiveStart",
            "needs interactive files (only SIMID creatives send interactiveStart)",
        )


def _media_or_tag(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
    """Renditions, or a third-party VAST tag (served as a Wrapper, which carries no media,
    mezzanine, click-through, skip offset, captions or interactive files of its own: the tag's
    ad has them)."""
    if raw.get("vast_tag_url") is None:
        if "renditions" not in raw:
            _fail(errs, f"{path}.renditions", "required field is missing (or give 'vast_tag_url')")
        return
    for key in _NOT_WITH_TAG:
        if raw.get(key) is not None:
            _fail(errs, f"{path}.{key}", "not with 'vast_tag_url' (the tag's ad has its own)")


def _icon_trackers(icon: Icon) -> tuple[str, ...]:
    """An icon's third-party tracking URLs (which may carry privacy macros)."""
    return icon.view_tracking_urls + icon.click_tracking_urls


def _creative(d: dict[str, Any]) -> Creative:
    duration_ms = _seconds_or_ms(d, "duration")
    assert duration_ms is not None  # guaranteed by the either() check
    cr = Creative(
        id=d["id"],
        advertiser_id=d["advertiser_id"],
        title=d["title"],
        duration_ms=duration_ms,
        renditions=d.get("renditions", ()),
        vast_tag_url=d["vast_tag_url"],
        captions=d["captions"],
        interactive=d["interactive"],
        trackers=d["trackers"],
        privacy_macros=has_privacy_macros(d["vast_tag_url"] or "")
        or any(has_privacy_macros(u) for us in d["trackers"].values() for u in us)
        or any(has_privacy_macros(u) for i in d["icons"] for u in _icon_trackers(i)),
        universal_ad_id=d["universal_ad_id"],
        universal_ad_id_registry=d["universal_ad_id_registry"],
        more_universal_ad_ids=d["universal_ad_ids"],
        ad_id=d["ad_id"],
        mezzanine=d["mezzanine"],
        click_through=d["click_through"],
        categories=d["categories"],
        rating=d["rating"],
        approved=d["approved"],
        skip_offset_ms=_seconds_or_ms(d, "skip_offset"),
        api_framework=d["api_framework"],
        verifications=d["verifications"],
        icons=d["icons"],
        competitive_categories=d["competitive_categories"],
        attributes=d["attributes"],
    )
    return replace(cr, server_macros=any(map(has_server_macros, catalog_urls(cr))))


CREATIVE = Obj(
    "creative",
    {
        "id": F(ID),
        "advertiser_id": F(ID),
        "title": F(NAME),
        "duration": F(AD_SECONDS, _ABSENT),
        "duration_ms": F(AD_MILLIS, _ABSENT),
        "renditions": F(list_of(RENDITION, min_len=1), _ABSENT),
        "vast_tag_url": F(nullable(tag_url), None),
        "captions": F(list_of(CAPTION), ()),
        "interactive": F(list_of(INTERACTIVE_FILE, max_len=MAX_INTERACTIVE_FILES), ()),
        "trackers": F(
            map_of(
                enum_of(*TRACKER_EVENTS),
                list_of(tracker_url, min_len=1, max_len=MAX_TRACKERS_PER_EVENT),
            ),
            MappingProxyType({}),
        ),
        "universal_ad_id": F(string(_NO_SPACE, what="an id without spaces (at most 128)")),
        "universal_ad_id_registry": F(REGISTRY, "ad-id.org"),
        "universal_ad_ids": F(list_of(UNIVERSAL_AD_ID, max_len=MAX_UNIVERSAL_AD_IDS), ()),
        "ad_id": F(nullable(NAME), None),
        "mezzanine": F(nullable(MEZZANINE), None),
        "click_through": F(nullable(creative_click_url), None),
        "categories": F(CATEGORIES, ()),
        "rating": F(enum_of(*RATINGS), "TV-G"),
        "approved": F(boolean, True),
        "skip_offset": F(OFFSET_SECONDS, _ABSENT),
        "skip_offset_ms": F(OFFSET_MILLIS, _ABSENT),
        # Only VPAID does anything (it keeps the creative off CTV): another value would be
        # accepted and ignored.
        "api_framework": F(nullable(enum_of(*CREATIVE_API_FRAMEWORKS)), None),
        "verifications": F(list_of(VERIFICATION), ()),
        "icons": F(list_of(ICON), ()),
        "competitive_categories": F(COMPETITIVE_LABELS, ()),
        # AdCOM creative attributes; 13 is added for SIMID files or VPAID (model.Creative)
        "attributes": F(ATTRIBUTES, ()),
    },
    _creative,
    checks=[
        either("duration", "duration_ms"),
        either("skip_offset", "skip_offset_ms", required=False),
        _skip_before_end,
        _media_or_tag,
        _trackers_of_events_sent,
        _distinct_universal_ad_ids,
    ],
)

ADVERTISER = Obj(
    "advertiser",
    {
        "id": F(ID),
        "name": F(NAME),
        "domain": F(HOST),
        "categories": F(CATEGORIES, ()),
        "competitive_category": F(nullable(COMPETITIVE_SLUG), None),
    },
    lambda d: Advertiser(**d),
)

BUDGET = Obj(
    "budget",
    {
        "impressions": F(COUNT, None),
        "spend": F(MONEY, None),
        "daily_impressions": F(COUNT, None),
        "daily_spend": F(MONEY, None),
    },
    lambda d: Budget(**d),
)

CAMPAIGN = Obj(
    "campaign",
    {
        "id": F(ID),
        "advertiser_id": F(ID),
        "name": F(NAME),
        "start": F(datetime_iso),
        "end": F(datetime_iso),
        "status": F(enum_of(*STATUSES), "active"),
        "budget": F(BUDGET, Budget()),
        "goal": F(enum_of(*GOALS), "impressions"),
        "timezone": F(timezone_name, "UTC"),
    },
    lambda d: Campaign(**d),
    checks=[ordered("start", "end")],
)

# ---- targeting

_COUNTRY = re.compile(r"[A-Z]{2}")
_DMA = re.compile(r"[0-9]{3}")
_LANGUAGE = re.compile(r"[a-z]{2,3}")


def _no_comma(p: Parser[str]) -> Parser[str]:
    """A rule's value that a request can send: requests list several values separated by
    commas (``genre``, ``segments``, ``kv_<key>``), so one with a comma would match none."""

    def parse(v: object, path: str, errs: Issues) -> str | _Invalid:
        got = p(v, path, errs)
        if isinstance(got, str) and "," in got:
            return _fail(
                errs,
                path,
                f"{_show(got)} contains a comma, which separates a request's values: "
                "no request can match it (list the values separately)",
            )
        return got

    return parse


FREE_VALUE = string(max_len=256)
LISTED_VALUE = _no_comma(FREE_VALUE)
"""A value of a dimension requests send as a comma list (genre, segments, key-values)."""

DIMENSIONS: Mapping[str, Parser[str]] = MappingProxyType(
    {
        "country": string(_COUNTRY, what="an ISO 3166-1 alpha-2 country code like 'US'"),
        "region": string(REGION_RE, what="an ISO 3166-2 region code like 'US-NY'"),
        "dma": string(_DMA, what="a 3-digit Nielsen DMA code like '501'"),
        "device_type": enum_of(*DEVICE_TYPES),
        "platform": enum_of(*PLATFORMS),
        "genre": LISTED_VALUE,
        "rating": enum_of(*RATINGS),
        "live": enum_of("1", "0"),
        "series": FREE_VALUE,
        "channel": FREE_VALUE,
        "content_id": FREE_VALUE,
        "language": string(_LANGUAGE, what="an ISO 639 language code like 'en'"),
        "segment": LISTED_VALUE,
        "break": enum_of(*(p.value for p in BreakPosition)),
        "ifa_type": FREE_VALUE,
    }
)
"""Targeting dimension name to the parser of its values."""


def _rule_sane(*, any_case: bool) -> Check:
    """A rule lists some value, and none both included and excluded; ``any_case``: its
    dimension is matched in any case (:data:`CASE_FOLDED`), so ``include ["Drama"]`` and
    ``exclude ["drama"]`` are one value, both included and excluded."""

    def check(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
        include, exclude = d.get("include"), d.get("exclude")
        if include is None or exclude is None:
            return
        if not include and not exclude:
            _fail(errs, path, "rule lists no values: give 'include' and/or 'exclude' values")
        included = {v.lower() if any_case else v: v for v in sorted(include)}
        for value in sorted(exclude):
            same = included.get(value.lower() if any_case else value)
            if same == value:
                _fail(errs, f"{path}.exclude", f"{_show(value)} is both included and excluded")
            elif same is not None:
                _fail(
                    errs,
                    f"{path}.exclude",
                    f"{_show(value)} is both included (as {_show(same)}) and excluded: "
                    "values are matched in any case here",
                )

    return check


def rule(values: Parser[str], what: str, *, any_case: bool = False) -> Obj[Rule]:
    """A rule over ``values``; ``any_case``: matched in any case (see :func:`_rule_sane`)."""
    return Obj(
        what,
        {"include": F(set_of(values), frozenset()), "exclude": F(set_of(values), frozenset())},
        lambda d: Rule(**d),
        checks=[_rule_sane(any_case=any_case)],
    )


DAYPART = Obj(
    "daypart",
    {
        "days": F(set_of(integer(0, 6), min_len=1), frozenset(range(7))),
        "start_hour": F(integer(0, 23), 0),
        "end_hour": F(integer(1, 24), 24),
        "timezone": F(nullable(timezone_name), None),
    },
    lambda d: Daypart(**d),
    checks=[ordered("start_hour", "end_hour")],
)

EMPTY_MAP: Mapping[str, Rule] = MappingProxyType({})


CASE_FOLDED = frozenset({"genre", "ifa_type"})
"""Dimensions matched case-insensitively: requests lower-case them, so the catalog does too."""


def _fold(r: Rule) -> Rule:
    return Rule(
        include=frozenset(v.lower() for v in r.include),
        exclude=frozenset(v.lower() for v in r.exclude),
    )


def _targeting(d: dict[str, Any]) -> Targeting:
    rules = {k: _fold(d[k]) if k in CASE_FOLDED else d[k] for k in DIMENSIONS if k in d}
    return Targeting(
        rules=MappingProxyType(rules) if rules else EMPTY_MAP,
        dayparts=d["dayparts"],
        key_values=d["key_values"],
    )


TARGETING = Obj(
    "targeting",
    {
        **{
            dim: F(rule(values, f"{dim} rule", any_case=dim in CASE_FOLDED), _ABSENT)
            for dim, values in DIMENSIONS.items()
        },
        "dayparts": F(list_of(DAYPART), ()),
        "key_values": F(
            map_of(
                string(_KEY, what="a key name (letters, digits, '_.:-')"),
                rule(LISTED_VALUE, "key-value rule"),
            ),
            EMPTY_MAP,
        ),
    },
    _targeting,
)

FREQUENCY_CAP = Obj(
    "frequency cap",
    {
        "scope": F(enum_of(*CAP_SCOPES), "line_item"),
        "max": F(integer(1, 1_000_000)),
        "window": F(
            string(
                _WINDOW,
                what="a window like '30m', '12h', '1d', '1w', 'lifetime', 'pod' or 'session'",
            )
        ),
    },
    lambda d: FrequencyCap(**d),
)

PACING = Obj(
    "pacing",
    {
        "delivery": F(enum_of(*(m.value for m in Delivery)), "asap"),
        "budget": F(BUDGET, Budget()),
    },
    lambda d: Pacing(delivery=Delivery(d["delivery"]), budget=d["budget"]),
)


def _line_item(d: dict[str, Any]) -> LineItem:
    prices = d["slot_prices"]
    return LineItem(
        **{k: v for k, v in d.items() if k not in ("tier", "positions", "slot", "slot_prices")},
        tier=TIERS[d["tier"]],
        positions=frozenset(BreakPosition(p) for p in d["positions"]),
        slot=Slot(d["slot"]),
        first_slot_price=prices.get("first"),
        last_slot_price=prices.get("last"),
    )


def _flat_pricing(d: dict[str, Any], raw: Mapping[Any, Any], path: str, errs: Issues) -> None:
    """A flat line item's fee does not grow with impressions: it has no price per slot and
    no spend budget of its own, and ``value_cpm`` (how it competes) is for it alone."""
    if "pricing_model" not in d:
        return
    if d["pricing_model"] != FLAT:
        if "value_cpm" in d:
            _fail(
                errs,
                f"{path}.value_cpm",
                "value_cpm is for flat-priced line items (a CPM line item competes at its price)",
            )
        return
    if d.get("slot_prices"):
        _fail(
            errs,
            f"{path}.slot_prices",
            "a flat-priced line item is paid its fee, not a price per slot",
        )
    pacing = d.get("pacing")
    if isinstance(pacing, Pacing):
        for name in ("spend", "daily_spend"):
            if getattr(pacing.budget, name) is not None:
                _fail(
                    errs,
                    f"{path}.pacing.budget.{name}",
                    "a flat-priced line item spends nothing per impression; "
                    "limit it with impressions or daily_impressions",
                )


SLOT_PRICES = Obj(
    "slot prices",
    {"first": F(number(0, MAX_MONEY), _ABSENT), "last": F(number(0, MAX_MONEY), _ABSENT)},
    lambda d: d,
)


LINE_ITEM = Obj(
    "line item",
    {
        "id": F(ID),
        "campaign_id": F(ID),
        "name": F(NAME),
        "tier": F(enum_of(*TIERS)),
        "creative_ids": F(list_of(ID, min_len=1, unique=True)),
        "start": F(datetime_iso, _ABSENT),
        "end": F(datetime_iso, _ABSENT),
        "status": F(enum_of(*STATUSES), "active"),
        "pricing_model": F(enum_of(*PRICING_MODELS), "CPM"),
        "price": F(number(0, MAX_MONEY), 0.0),
        "currency": F(CURRENCY, _ABSENT),  # the catalog's when absent
        "targeting": F(TARGETING, Targeting()),
        "frequency_caps": F(list_of(FREQUENCY_CAP), ()),
        "pacing": F(PACING, Pacing()),
        "positions": F(
            set_of(enum_of(*(p.value for p in BreakPosition)), min_len=1),
            frozenset(p.value for p in BreakPosition),
        ),
        "slot": F(enum_of(*(s.value for s in Slot)), "any"),
        "slot_prices": F(SLOT_PRICES, {}),
        "value_cpm": F(number(0, MAX_MONEY), _ABSENT),
        "competitive_categories": F(COMPETITIVE_LABELS, ()),
    },
    _line_item,
    checks=[ordered("start", "end"), _flat_pricing],
)

# ---- ad rules: named placements inherit omitted fields from "default"

BLOCKLIST = Obj(
    "blocklist",
    {"domains": F(set_of(HOST), frozenset()), "categories": F(set_of(IAB), frozenset())},
    lambda d: d,
)

BREAK_RULE = Obj(
    "break rule",
    {"duration": F(integer(0, MAX_POD_S), _ABSENT), "max_ads": F(integer(0, MAX_ADS), _ABSENT)},
    lambda d: d,
)

PLACEMENT = Obj(
    "ad rules",
    {
        "pre": F(BREAK_RULE, _ABSENT),
        "mid": F(BREAK_RULE, _ABSENT),
        "post": F(BREAK_RULE, _ABSENT),
        "midroll_interval": F(integer(1, 86_400), _ABSENT),
        "min_midroll_spacing": F(integer(0, 86_400), _ABSENT),
        "blocklist": F(BLOCKLIST, _ABSENT),
    },
    lambda d: d,
)


def _merge_rules(base: AdRules, d: Mapping[str, Any]) -> AdRules:
    changes: dict[str, Any] = {}
    for pos in ("pre", "mid", "post"):
        if pos in d:
            old: BreakRule = getattr(base, pos)
            new = d[pos]
            changes[pos] = BreakRule(
                new.get("duration", old.duration_s), new.get("max_ads", old.max_ads)
            )
    if "midroll_interval" in d:
        changes["midroll_interval_s"] = d["midroll_interval"]
    if "min_midroll_spacing" in d:
        changes["min_midroll_spacing_s"] = d["min_midroll_spacing"]
    if "blocklist" in d:
        changes["blocked_domains"] = base.blocked_domains | d["blocklist"]["domains"]
        changes["blocked_categories"] = base.blocked_categories | d["blocklist"]["categories"]
    return replace(base, **changes)


PLACEMENTS = map_of(string(_ID, what="a placement name (letters, digits, '._:-')"), PLACEMENT)


def _raw(v: object, path: str, errs: Issues) -> object:
    return v


RAW_ARRAY = list_of(_raw)
"""An array whose items are checked later."""

ROOT = Obj(
    "catalog",
    {
        "version": F(
            string(_VERSION, what="a version like 'demo-2026.1' (letters, digits, '._-')")
        ),
        # Collections are parsed entry by entry in _parse, to cross-check references.
        "advertisers": F(RAW_ARRAY, ()),
        "campaigns": F(RAW_ARRAY, ()),
        "line_items": F(RAW_ARRAY, ()),
        "creatives": F(RAW_ARRAY, ()),
        "ad_rules": F(PLACEMENTS, MappingProxyType({})),
        "blocklist": F(BLOCKLIST, {"domains": frozenset(), "categories": frozenset()}),
        "currency": F(CURRENCY, "USD"),
    },
    lambda d: d,
)

# --------------------------------------------------------------------------- whole catalog


@dataclass(slots=True)
class _Entry:
    """One element of a top-level collection: its path, valid fields and the raw object."""

    path: str
    fields: dict[str, Any]
    raw: dict[Any, Any]


def _entries(items: Sequence[object], path: str, obj: Obj[Any], errs: Issues) -> list[_Entry]:
    out: list[_Entry] = []
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        d = obj.fields_of(item, ipath, errs)
        if d is not None and isinstance(item, dict):
            out.append(_Entry(ipath, d, item))
    return out


def _index(entries: list[_Entry], kind: str, errs: Issues) -> dict[str, _Entry]:
    """Entries by id, reporting duplicate ids."""
    by_id: dict[str, _Entry] = {}
    for e in entries:
        ident = e.fields.get("id")
        if ident is None:
            continue
        first = by_id.get(ident)
        if first is not None:
            _fail(errs, f"{e.path}.id", f"duplicate {kind} id {ident!r} (first at {first.path})")
        else:
            by_id[ident] = e
    return by_id


def _raw_ids(data: object, section: str) -> frozenset[str] | None:
    """The ids of ``section``'s entries as written, even of otherwise invalid entries
    (avoids cascades of dangling refs); None when the section is there but no array (it is
    reported as such, and every reference to it would be reported again)."""
    items = data.get(section, ()) if isinstance(data, dict) else ()
    if not isinstance(items, list | tuple):
        return None
    return frozenset(
        item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)
    )


_canonical = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _content_hash(data: object) -> str:
    """The first 8 hex digits of the SHA-256 of the document's canonical JSON (sorted keys,
    no spaces), hashed in pieces: one ``json.dumps`` of a whole 100k-line-item catalog held
    the interpreter 2.7 s at once, and a reload runs beside the serving loop."""
    h = hashlib.sha256()
    for piece in _canonical_pieces(data, 2):
        h.update(piece.encode())
    return h.hexdigest()[:8]


def _canonical_pieces(value: object, depth: int) -> Iterator[str]:
    """``_canonical(value)`` as consecutive pieces, splitting objects and arrays ``depth``
    levels down (the root, its sections: one piece per advertiser, line item...)."""
    if depth > 0 and isinstance(value, dict):
        yield "{"
        for n, key in enumerate(sorted(value)):
            yield f"{',' if n else ''}{_canonical(key)}:"
            yield from _canonical_pieces(value[key], depth - 1)
        yield "}"
    elif depth > 0 and isinstance(value, list):
        yield "["
        for n, item in enumerate(value):
            if n:
                yield ","
            yield from _canonical_pieces(item, depth - 1)
        yield "]"
    else:
        yield _canonical(value)


def parse_catalog(data: object, *, source: str = "<memory>") -> Catalog:
    """Validate a decoded catalog document (see ``docs/catalog.md``) and build the snapshot.

    Raises :class:`CatalogError` listing every problem; never raises anything else.
    """
    errs: Issues = []
    with gc_paused():
        try:
            catalog = _parse(data, errs)
        except RecursionError:
            errs.append(CatalogIssue("$", "document is nested too deeply"))
            catalog = None
    if errs or catalog is None:
        issues = _with_entities(errs, data) if errs else [CatalogIssue("$", "invalid catalog")]
        raise CatalogError(issues, source=source)
    return catalog


_COLLECTIONS: Final = MappingProxyType(
    {
        "advertisers": "advertiser",
        "campaigns": "campaign",
        "line_items": "line item",
        "creatives": "creative",
    }
)
_ENTITY_PATH = re.compile(r"\$\.(advertisers|campaigns|line_items|creatives)\[([0-9]+)\]")


def _duplicate_ids(items: Sequence[object]) -> frozenset[str]:
    """The string ids given to more than one entry of ``items``."""
    seen: set[str] = set()
    twice: set[str] = set()
    for item in items:
        ident = item.get("id") if isinstance(item, dict) else None
        if isinstance(ident, str):
            (twice if ident in seen else seen).add(ident)
    return frozenset(twice)


def _entity_label(kind: str, item: Mapping[Any, Any], duplicates: frozenset[str]) -> str:
    """How an issue names the entity it is in: by its id, or by what is wrong with it."""
    if "id" not in item:
        return f"a {kind} with no id"
    ident = item["id"]
    if not isinstance(ident, str):
        return f"a {kind} whose id {_show(ident)} is not a string"
    if ident in duplicates:
        return f"{kind} {_show(ident)}, an id given to more than one {kind}"
    if not _ID.fullmatch(ident):
        return f"{kind} {_show(ident)}, an invalid id"
    return f"{kind} {_show(ident)}"


def _with_entities(errs: Issues, data: object) -> Issues:
    """``errs``, each issue inside an advertiser, campaign, line item or creative naming
    that entity by its id (the path alone gives its index: of little help among thousands
    of line items). Works on the raw document, so an entity whose id is missing, not a
    string, malformed or duplicated is named by that, and the issue is still reported."""
    if not isinstance(data, dict):
        return errs
    items: dict[str, Sequence[object]] = {}
    duplicates: dict[str, frozenset[str]] = {}
    for name in _COLLECTIONS:
        raw = data.get(name)
        if isinstance(raw, list | tuple):
            items[name] = raw
    out: Issues = []
    for issue in errs:
        m = _ENTITY_PATH.match(issue.path)
        entries = items.get(m.group(1)) if m is not None else None
        if m is None or entries is None or int(m.group(2)) >= len(entries):
            out.append(issue)
            continue
        item = entries[int(m.group(2))]
        if not isinstance(item, dict):  # reported as not an object: nothing to name it by
            out.append(issue)
            continue
        name = m.group(1)
        if name not in duplicates:
            duplicates[name] = _duplicate_ids(entries)
        ident = item.get("id")
        about_id = issue.path == f"{m.group()}.id"  # its message tells the id's problem
        entity = None if about_id else _entity_label(_COLLECTIONS[name], item, duplicates[name])
        out.append(replace(issue, entity=entity, id=ident if isinstance(ident, str) else None))
    return out


def _parse(data: object, errs: Issues) -> Catalog | None:
    root = ROOT.fields_of(data, "$", errs)
    if root is None:
        return None

    advertisers = _entries(root.get("advertisers", ()), "$.advertisers", ADVERTISER, errs)
    campaigns = _entries(root.get("campaigns", ()), "$.campaigns", CAMPAIGN, errs)
    creatives = _entries(root.get("creatives", ()), "$.creatives", CREATIVE, errs)
    line_items = _entries(root.get("line_items", ()), "$.line_items", LINE_ITEM, errs)

    adv_by_id = _index(advertisers, "advertiser", errs)
    camp_by_id = _index(campaigns, "campaign", errs)
    cre_by_id = _index(creatives, "creative", errs)
    _index(line_items, "line item", errs)
    known_adv = _raw_ids(data, "advertisers")
    known_camp = _raw_ids(data, "campaigns")
    known_cre = _raw_ids(data, "creatives")

    for kind, entries in (("campaign", campaigns), ("creative", creatives)):
        for e in entries:
            adv = e.fields.get("advertiser_id")
            if adv is not None and known_adv is not None and adv not in known_adv:
                _fail(
                    errs, f"{e.path}.advertiser_id", f"{kind} refers to unknown advertiser {adv!r}"
                )

    for e in line_items:
        _check_line_item_refs(e, camp_by_id, known_camp, cre_by_id, known_cre, errs)
    currency = root.get("currency", "USD")
    if "currency" in root:  # absent means the default; invalid, it is reported alone
        _check_currency(line_items, currency, errs)

    ad_rules = _ad_rules(root.get("ad_rules", MappingProxyType({})))
    if errs:
        return None

    built_campaigns = {cid: CAMPAIGN.build(e.fields) for cid, e in camp_by_id.items()}
    built_line_items: dict[str, LineItem] = {}
    for e in line_items:
        d = e.fields
        camp = built_campaigns[d["campaign_id"]]
        d.setdefault("start", camp.start)
        d.setdefault("end", camp.end)
        built_line_items[d["id"]] = LINE_ITEM.build(d)
    blocklist = root["blocklist"]
    return Catalog(
        version=f"{root['version']}+{_content_hash(data)}",
        advertisers=MappingProxyType({k: ADVERTISER.build(e.fields) for k, e in adv_by_id.items()}),
        campaigns=MappingProxyType(built_campaigns),
        line_items=MappingProxyType(built_line_items),
        creatives=MappingProxyType(
            media_keys({k: CREATIVE.build(e.fields) for k, e in cre_by_id.items()})
        ),
        ad_rules=ad_rules,
        blocked_domains=blocklist["domains"],
        blocked_categories=blocklist["categories"],
        currency=currency,
    )


def media_keys(creatives: Mapping[str, Creative]) -> dict[str, Creative]:
    """``creatives`` with their :attr:`Creative.media_key`: creatives that share a video
    file (any rendition URL), a third-party tag or a Universal Ad Id (of any registry) show
    the viewer the same ad, so they share one key (the least of their identities), and a pod
    holds one of them at most. (Two creatives can share a file at one rendition and not at
    another.)"""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = parent.setdefault(x, x)
        while root != parent[root]:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def identities(c: Creative) -> list[str]:
        out = [f"url:{r.url}" for r in c.renditions]
        if c.vast_tag_url is not None:
            out.append(f"url:{c.vast_tag_url}")
        if c.universal_ad_id.strip().lower() not in ("", "unknown"):
            out.append(f"uaid:{c.universal_ad_id_registry}:{c.universal_ad_id}")
        out += [f"uaid:{u.registry}:{u.value}" for u in c.more_universal_ad_ids]
        return out or [f"creative:{c.id}"]

    for c in creatives.values():
        first, *rest = identities(c)
        root = find(first)
        for x in rest:
            other = find(x)
            if other != root:  # the smaller identity stays the root
                root, other = min(root, other), max(root, other)
                parent[other] = root
    return {k: replace(c, media_key=find(identities(c)[0])) for k, c in creatives.items()}


def _check_currency(line_items: Sequence[_Entry], currency: str, errs: Issues) -> None:
    """Line items price in the catalog's ``currency``: prices are ranked against each other,
    campaign spend budgets add up their line items' spend and price floors compare with
    them. A line item that gives another is an error (one that gives none takes it)."""
    for e in line_items:
        cur = e.fields.get("currency")
        if cur is None:
            if "currency" not in e.raw:
                e.fields["currency"] = currency
        elif cur != currency:
            _fail(
                errs,
                f"{e.path}.currency",
                f"{cur} differs from the catalog's currency {currency} (its top-level "
                "'currency'): prices, budgets and price floors are compared across line "
                "items, so a catalog has one currency",
            )


def _check_line_item_refs(
    e: _Entry,
    camp_by_id: Mapping[str, _Entry],
    known_camp: frozenset[str] | None,
    cre_by_id: Mapping[str, _Entry],
    known_cre: frozenset[str] | None,
    errs: Issues,
) -> None:
    """A line item's campaign and creatives exist (unless their section is no array:
    ``known_*`` None) and belong to one advertiser."""
    d, path = e.fields, e.path
    camp_id = d.get("campaign_id")
    camp = camp_by_id.get(camp_id) if camp_id is not None else None
    if camp_id is not None and known_camp is not None and camp_id not in known_camp:
        _fail(errs, f"{path}.campaign_id", f"line item refers to unknown campaign {camp_id!r}")
    camp_adv = camp.fields.get("advertiser_id") if camp is not None else None
    raw_ids = e.raw.get("creative_ids")
    for i, cre_id in enumerate(raw_ids if isinstance(raw_ids, list | tuple) else ()):
        cpath = f"{path}.creative_ids[{i}]"
        if not isinstance(cre_id, str) or not _ID.fullmatch(cre_id):
            continue  # already reported as malformed
        if known_cre is not None and cre_id not in known_cre:
            _fail(errs, cpath, f"line item refers to unknown creative {cre_id!r}")
            continue
        cre = cre_by_id.get(cre_id)
        cre_adv = cre.fields.get("advertiser_id") if cre is not None else None
        if camp_adv is not None and cre_adv is not None and cre_adv != camp_adv:
            _fail(
                errs,
                cpath,
                f"creative {cre_id!r} belongs to advertiser {cre_adv!r} but campaign "
                f"{camp_id!r} belongs to advertiser {camp_adv!r}",
            )
    if camp is not None:
        _check_flight(d, camp.fields, path, errs)


def _check_flight(d: Mapping[str, Any], camp: Mapping[str, Any], path: str, errs: Issues) -> None:
    """A line item's flight (defaulting to its campaign's) must lie within the campaign's."""
    c_start, c_end = camp.get("start"), camp.get("end")
    start, end = d.get("start", c_start), d.get("end", c_end)
    if "start" in d and c_start is not None and start < c_start:
        _fail(errs, f"{path}.start", "line item starts before its campaign")
    if "end" in d and c_end is not None and end > c_end:
        _fail(errs, f"{path}.end", "line item ends after its campaign")
    own_both = "start" in d and "end" in d  # already reported by the object check
    if not own_both and start is not None and end is not None and not start < end:
        name = "end" if "end" in d else "start"
        _fail(errs, f"{path}.{name}", "line item flight is empty (end must be after start)")


def _ad_rules(placements: Mapping[str, Any]) -> Mapping[str, AdRules]:
    default = _merge_rules(AdRules(), placements.get("default", {}))
    out = {"default": default}
    for name, d in placements.items():
        if name != "default":
            out[name] = _merge_rules(default, d)
    return MappingProxyType(out)


# --------------------------------------------------------------------------- files


class _DupDict(dict[str, Any]):
    """A decoded JSON object that had repeated keys (the last value wins, as in ``json``)."""

    duplicate_keys: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    dup = _DupDict(d)
    seen: set[str] = set()
    repeated: list[str] = []
    for k, _ in pairs:
        if k in seen and k not in repeated:
            repeated.append(k)
        seen.add(k)
    dup.duplicate_keys = tuple(repeated)
    return dup


def decode_json(raw: bytes | str, *, source: str = "<memory>") -> object:
    """Decode JSON text, reporting syntax errors (and repeated keys, later) as CatalogError."""
    try:
        with gc_paused():
            return json.loads(raw, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        issue = CatalogIssue(
            "$", f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        )
    except UnicodeDecodeError as exc:
        issue = CatalogIssue(
            "$", f"invalid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
        )
    except RecursionError:
        issue = CatalogIssue("$", "invalid JSON: nested too deeply")
    except ValueError as exc:  # e.g. integers with too many digits
        issue = CatalogIssue("$", f"invalid JSON: {exc}")
    raise CatalogError([issue], source=source)


def _read_regular_file(path: Path) -> bytes:
    """The file's bytes; ``OSError`` unless it is a regular file. Opened without blocking
    and checked on the open descriptor: a FIFO put at the catalog path would otherwise block
    the read (and the reload, and every reload after it) until someone writes to it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def load_catalog(path: Path) -> Catalog:
    """Read, validate and build the catalog in the JSON file at ``path``."""
    source = str(path)
    try:
        raw = _read_regular_file(Path(path))
    except OSError as exc:
        raise CatalogError(
            [CatalogIssue("$", f"cannot read file: {exc.strerror or exc}")], source=source
        ) from None
    return parse_catalog(decode_json(raw, source=source), source=source)


def main_check_catalog(argv: Sequence[str]) -> int:
    """``check-catalog PATH [--json]``: validate a catalog as ``serve`` and a reload would.

    Exit 0 when it loads, 1 listing every problem (not only the first 25), 2 on usage."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="vastserver check-catalog",
        description="Validate a catalog (JSON, see docs/catalog.md) as the server loads it: "
        "every problem with its JSON path. Exit 0 when it loads, 1 when it does not.",
    )
    parser.add_argument("path", type=Path, metavar="PATH", help="the catalog file")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        cat = load_catalog(args.path)
    except CatalogError as e:
        if args.json:
            errors = [{"path": i.path, "message": i.message, "id": i.id} for i in e.errors]
            print(json.dumps({"ok": False, "source": e.source, "errors": errors}))
        else:
            n = len(e.errors)
            print(f"{n} error{'s' if n != 1 else ''} in catalog {e.source}")
            for issue in e.errors:
                print(f"  {issue}")
        sys.stdout.flush()
        return 1
    counts = {
        "advertisers": len(cat.advertisers),
        "campaigns": len(cat.campaigns),
        "line_items": len(cat.line_items),
        "creatives": len(cat.creatives),
    }
    if args.json:
        print(json.dumps({"ok": True, "source": str(args.path), "version": cat.version, **counts}))
    else:
        parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())
        print(f"ok: catalog {args.path} (version {cat.version}): {parts}")
    sys.stdout.flush()
    return 0
