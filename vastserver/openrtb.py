"""OpenRTB 2.6 BidRequest for a CTV ad pod -> the same :class:`AdRequest` ``/vast`` builds.

``POST /openrtb2/pod`` receives one BidRequest describing one ad break (an SSAI stitcher such as
MediaTailor or a DAI service asks for a pod). :func:`parse_bid_request` maps it onto the
request model every pipeline stage reads, plus what the model has no place for (the floor,
the impression ids, the slot of each impression).

Policy for malformed input, so callers know what to expect:

* ``id`` and ``imp[].id`` are kept exactly as sent (the BidResponse echoes them, the
  exchange matches them); blank is a 400.

* Anything that shapes the pod (ids, imp list, durations, counts, positions) and every JSON
  type error raises :class:`~vastserver.params.ParamError` naming a JSON path such as
  ``imp[0].video.poddur``. The HTTP layer answers 400.
* Targeting codes from the seller's vocabulary (country, region, metro, language, platform,
  ifa_type, content rating, an unknown device type) degrade to ``None`` when unknown or
  ill-shaped: targeting simply does not match, the request still serves.
* Nothing but ``ParamError`` escapes (the tests fuzz this).

Pods
----
* Dynamic pod: one imp with ``video.poddur`` (seconds) and ``video.maxseq`` (max ads; the ad
  rules' default when absent). ``minduration``/``maxduration``/``rqddurs`` bound each ad.
* Structured pod: several imps sharing a ``podid`` (or all without one) and no ``poddur``;
  each imp is one slot. Pod duration = sum of each slot's ``maxduration`` (or the largest of
  its ``rqddurs``), max ads = number of imps. ``slotinpod`` per imp: 1 first, -1 last,
  0 any, 2 first-or-last (AdCOM): such an imp takes the first slot when no imp claims it
  (1), else the last when none claims that (-1), in request order, and is from then on that
  imp (its slot rule's place, its bid's ``impid`` and ``slotinpod``); with both ends
  claimed already, 400 on its ``slotinpod``.
* Hybrid pod (structured imps plus a dynamic imp with the same ``podid``): durations and ad
  counts add up. :attr:`OpenRtbPod.hybrid_imps` describes the imps, which
  ``POST /openrtb2/auction`` has the decision split the ads among (``BreakSpec.imps``:
  each dynamic imp within its ``maxseq`` and ``poddur``).
* A single imp with neither ``poddur`` nor ``podid``: a one-ad break whose length is its
  ``maxduration`` (else the ad rules' default).
* Imps with different ``podid`` values: 400 (``imp``, one pod per request).
* A structured pod (no dynamic imp) whose imps have different duration rules: each imp is a
  slot with its own :class:`~vastserver.pipeline.pod.SlotRule` (``BreakSpec.slots``, in play
  order: the ``slotinpod`` 1 imp, the others in request order, the -1 imp; each labelled
  with its imp id and role for the explanation), and the pod optimiser places each ad in a
  slot it fits (``PodConstraints.slots``). A slot no ad fits stays unfilled, the later ads
  move up; an ad no slot takes is ``fits_no_slot``.
* Otherwise one duration rule holds for every ad of the pod (the optimiser picks each ad's
  slot), so it is what every imp accepts: the longest ``minduration``, the shortest
  ``maxduration`` and, as soon as any imp lists ``rqddurs`` (which the spec makes exclusive
  of min/max), the durations every listing imp requires (their intersection) that also fit
  the other imps' min/max, with min/max then unset. No common duration (a hybrid pod whose
  rules do not overlap): the pod stays empty (a no-fill).

Break position
--------------
``video.startdelay`` wins when present: 0 pre-roll, > 0 or -1 (generic mid) mid-roll,
-2 post-roll. Otherwise ``video.podseq`` (the pod's place in the content stream): 1 (first
pod) -> pre, -1 (last pod) -> post, 0 (any) -> mid. Neither -> mid, like ``/vast``. All imps
of the pod must agree.

Mapped elsewhere
----------------
* ``device``: ip/ipv6 (else the HTTP layer's device IP), ua, ifa, lmt (``lmt`` = 1, or the
  all-zero IFA of a device that does not allow tracking, counts as limited ad tracking: the
  IFA and the segments are dropped, as ``lmt=1`` on ``/vast``), devicetype (AdCOM list),
  os/make -> platform,
  ``geo.country`` (alpha-3 -> alpha-2; alpha-2 accepted too), ``geo.region`` (prefixed with
  the country: ``NY`` -> ``US-NY``, the catalog's ISO 3166-2 form; dropped when it is
  another country's, ``US-NY`` with ``CAN``), ``geo.metro`` -> dma,
  language/langb (primary subtag, lowercased), ``device.ext.ifa_type`` or ``ext.ifa_type``.
* ``app.content`` (else ``site.content``): id, genre (comma string) + cat codes -> genres,
  contentrating, livestream, series, channel.name (else network.name), language (a fallback
  for the device language).
* ``user.data[].segment[].id`` -> segments; ``bcat`` / ``badv`` -> blocked categories
  (upper-cased: the catalog's IAB codes are) / domains (:func:`domain_forms`);
  ``regs.coppa`` = 1 -> kids content.
* GDPR: ``regs.gdpr`` (2.5: ``regs.ext.gdpr``) and the TCF v2 string in ``user.consent``
  (2.5: ``user.ext.consent``), as ``gdpr``/``gdpr_consent`` on ``/vast``
  (:mod:`vastserver.consent`): without consent to a device identifier the IFA is dropped and
  the viewer counts as under limited ad tracking; without consent to personalised ads the
  segments are dropped.
* US privacy: ``regs.us_privacy``, ``regs.gpp`` and ``regs.gpp_sid`` (2.5: under
  ``regs.ext``) (:func:`vastserver.consent.read_privacy`): an opt-out of sale,
  sharing or targeted advertising drops the segments; so does ``regs.coppa`` = 1.
* ``imp.secure`` = 1 forces HTTPS media even where the server setting allows HTTP.
* ``video.mimes`` -> :attr:`AdRequest.mimes`: lowercased, parameters dropped, the types every
  imp listing it takes (any ad may go in any slot). Only renditions of those types count (a
  creative with none is ``mime_type``) and the VAST lists only them; a third-party tag stays
  (its media are the tag's). An empty list or a malformed type is a 400.
* ``video.battr`` -> :attr:`AdRequest.blocked_attributes`: the AdCOM creative attribute codes
  any imp blocks (any ad may go in any slot); a creative with one of them (declared in the
  catalog, or 13 for SIMID and VPAID) is ``blocked_attribute``. Codes 1 to
  :data:`~vastserver.params.MAX_ATTRIBUTE_CODE` (AdCOM lists 17: later ones block nothing
  rather than fail the request); anything else is a 400 on ``imp[i].video.battr[j]``.
* ``video.protocols`` picks the VAST version, one every imp listing a known code accepts
  (any ad may go in any slot; an imp listing none restricts nothing): among those every
  such imp lists the inline code of, else among those it lists the wrapper code of, 4.2
  when there, else the highest. Inline ads may then play only when every such imp lists
  that version's inline code (:attr:`AdRequest.inline_ads`), third-party tags (served as
  ``<Wrapper>``) only when every one lists its wrapper code
  (:attr:`AdRequest.wrapper_ads`); the others are ``protocol_not_accepted``. No version
  every imp accepts: a 400 on the first imp that leaves none. No known code anywhere: 4.2,
  any ad. ``ext.vastserver.vast`` overrides it all: that version, any ad.
* ``video.mincpmpersec`` -> :attr:`OpenRtbPod.floor_cpm_per_s` (the highest over the imps);
  where an imp has none, a non-zero ``bidfloor`` -> :attr:`OpenRtbPod.floor_cpm` (OpenRTB
  2.6 7.6). Only in the catalog's currency (``bidfloorcur``, which defaults to USD).
* ``imp.durfloors`` -> :attr:`OpenRtbPod.duration_floors` (one entry per imp listing them):
  an ad's CPM must reach, for each such imp, the highest ``bidfloor`` of the ranges holding
  its whole seconds (``bid.dur``; ``mindur`` and ``maxdur`` inclusive), else that imp's
  ``bidfloor`` (0 when the imp gives ``mincpmpersec``, which still holds per second).
* Floors are each imp's own (``imp.bidfloor`` is the least bid for *that* impression): in a
  structured pod whose imps' floors differ, each imp is a slot of its own rule and floors
  (:attr:`OpenRtbPod.slot_floors`), and the ad filling a slot meets that imp's floors at
  the price it is billed there. Where the pod does not say which imp an ad fills (a hybrid
  pod, a pod of one dynamic imp), every ad meets the highest of them
  (:attr:`OpenRtbPod.pod_floors`).
* ``tmax`` (1-600,000 ms) -> :meth:`OpenRtbPod.decision_budget_ms`: the decision's deadline
  is ``tmax`` minus :data:`TMAX_NETWORK_ALLOWANCE_MS` when that is shorter than
  ``VASTSERVER_DEADLINE_MS``.
* ``cur``: must list the catalog's currency (else a 400 on ``cur``: no price could be given
  in an accepted one); absent, it means USD (OpenRTB's default).
* ``test`` = 1 -> :attr:`AdRequest.test`: the pod is decided and rendered as usual, but the
  service reserves nothing (caps, budgets, pacing), leaves no session history and logs no
  decision record, and the ads' tokens carry the test flag, so their beacons count nothing.
* ``cattax`` other than 1 with a ``bcat``: a 400 (the catalog's categories are IAB 1.0).
* ``bseat``, ``wseat`` and ``imp.pmp.private_auction`` -> :attr:`OpenRtbPod.blocked_seats`,
  :attr:`OpenRtbPod.allowed_seats`, :attr:`OpenRtbPod.private_imp`: whether the request
  takes a bid of ours at all (``POST /openrtb2/auction``); ``pmp.deals`` is not read.
* Our own extension ``ext.vastserver`` (top level) and ``imp[].ext.vastserver``:
  ``placement`` (else ``imp[0].tagid`` when it is a plain token), ``session``, ``avail``,
  ``debug`` (0/1), ``vast``, ``kv`` (an object of string values), checked as ``/vast``
  checks its parameters of those names (a 400 names e.g. ``imp[0].ext.vastserver.debug``).
  Each field comes from the first imp whose extension sets it, else from the top level.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, NoReturn

from vastserver.catalog.model import MAX_ADS, MAX_POD_S, RATINGS, AdRules, BreakPosition, Slot
from vastserver.consent import (
    MAX_GPP_SECTIONS,
    MAX_TC_STRING,
    MAX_US_PRIVACY,
    Permissions,
    PrivacySignals,
    applicable_sections,
    read_privacy,
)
from vastserver.geo import region_code, region_in
from vastserver.params import (
    MAX_AD_S,
    MAX_ATTRIBUTE_CODE,
    MAX_DOMAIN,
    MAX_LIST,
    MAX_TEXT,
    MAX_UA,
    ClientInfo,
    ParamError,
    bare_ip,
    is_id,
    limit_tracking,
)
from vastserver.pipeline.context import (
    DEFAULT_VAST_VERSION,
    VAST_VERSIONS,
    AdRequest,
    BreakSpec,
    Content,
    Device,
    DurationFloors,
    ImpFloors,
)
from vastserver.pipeline.imps import PodImp
from vastserver.pipeline.pod import SlotRule, capacity_seconds

MAX_IMPS = 64
MAX_ID = 256
MAX_BLOCKLIST = 512
MAX_SEGMENTS = 256
MAX_FLOOR_CPM_PER_S = 10_000.0
MAX_BIDFLOOR_CPM = 1_000_000.0
MAX_DURFLOORS = 32
"""Ranges in one imp's ``durfloors``."""
MAX_START_DELAY_S = 7 * 24 * 3600
"""``video.startdelay`` only picks the break position, so it is not held to /vmap's
99:59:59.999 (nothing writes it as a VMAP timeOffset)."""

MAX_TMAX_MS = 600_000
TMAX_NETWORK_ALLOWANCE_MS = 20
"""Of the caller's ``tmax``, what the answer's way back (and the request's way in, which
the handler cannot see) is given; the decision gets the rest."""
MIN_DECISION_BUDGET_MS = 5
"""A ``tmax`` shorter than the allowance still leaves the decision this much (the least
``VASTSERVER_DEADLINE_MS`` allows): a degraded answer rather than none."""

RulesFor = Callable[[str | None], AdRules]
"""``Catalog.rules_for``: the placement is only known once the body is parsed."""

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:@/+\-]{1,128}$")
_BAD_CHARS_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_ALPHA_RE = re.compile(r"^[A-Za-z]{2,3}$")
_DMA_RE = re.compile(r"^\d{3}$")
_LANG_RE = re.compile(r"^([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")
_MIME_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+\-]*/[a-z0-9][a-z0-9!#$&^_.+\-]*$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")

DEVICE_TYPES_BY_CODE: Mapping[int, str] = MappingProxyType(
    {1: "mobile", 2: "desktop", 3: "ctv", 4: "mobile", 5: "mobile", 6: "ctv", 7: "stb"}
)
"""AdCOM List: Device Types. 8 (out-of-home) and unknown codes map to no device type."""

_SLOTS: Mapping[int, Slot] = MappingProxyType(
    {1: Slot.FIRST, -1: Slot.LAST, 0: Slot.ANY, 2: Slot.ANY}
)

VAST_PROTOCOLS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "2.0": (2, 5),
        "3.0": (3, 6),
        "4.0": (7, 8),
        "4.1": (11, 12),
        "4.2": (13, 14),
        "4.3": (15, 16),
    }
)
"""AdCOM List: Creative Subtypes - Audio/Video: the (inline, wrapper) code of each VAST
version. A player listing only the inline code of a version takes no ``<Wrapper>`` in it
(a third-party tag), one listing only the wrapper code no ``<InLine>`` ad."""

_VAST_BY_PROTOCOL: Mapping[int, tuple[str, bool]] = MappingProxyType(
    {
        code: (version, code == codes[1])
        for version, codes in VAST_PROTOCOLS.items()
        for code in codes
    }
)
"""AdCOM code -> (VAST version, whether it is the wrapper code)."""

_COUNTRY_PAIRS = """
USA:US CAN:CA MEX:MX BRA:BR ARG:AR CHL:CL COL:CO PER:PE VEN:VE ECU:EC URY:UY PRY:PY
BOL:BO CRI:CR PAN:PA GTM:GT HND:HN SLV:SV NIC:NI DOM:DO PRI:PR CUB:CU JAM:JM TTO:TT
BHS:BS BRB:BB
GBR:GB IRL:IE FRA:FR DEU:DE ESP:ES PRT:PT ITA:IT NLD:NL BEL:BE LUX:LU CHE:CH AUT:AT
DNK:DK NOR:NO SWE:SE FIN:FI ISL:IS POL:PL CZE:CZ SVK:SK HUN:HU ROU:RO BGR:BG GRC:GR
HRV:HR SVN:SI SRB:RS BIH:BA MNE:ME MKD:MK ALB:AL EST:EE LVA:LV LTU:LT UKR:UA BLR:BY
MDA:MD RUS:RU TUR:TR CYP:CY MLT:MT MCO:MC LIE:LI AND:AD SMR:SM
ISR:IL SAU:SA ARE:AE QAT:QA KWT:KW BHR:BH OMN:OM JOR:JO LBN:LB IRQ:IQ IRN:IR EGY:EG
MAR:MA DZA:DZ TUN:TN NGA:NG KEN:KE ZAF:ZA GHA:GH ETH:ET TZA:TZ UGA:UG SEN:SN CIV:CI
CMR:CM
IND:IN PAK:PK BGD:BD LKA:LK NPL:NP CHN:CN HKG:HK MAC:MO TWN:TW JPN:JP KOR:KR MNG:MN
SGP:SG MYS:MY IDN:ID THA:TH VNM:VN PHL:PH KHM:KH MMR:MM AUS:AU NZL:NZ KAZ:KZ UZB:UZ
GEO:GE ARM:AM AZE:AZ
"""
COUNTRY_ALPHA3: Mapping[str, str] = MappingProxyType(
    {a3: a2 for a3, _, a2 in (pair.partition(":") for pair in _COUNTRY_PAIRS.split())}
)
"""ISO 3166-1 alpha-3 -> alpha-2 for the countries CTV traffic commonly comes from."""

_PLATFORM_BY_OS: tuple[tuple[str, str], ...] = (
    ("roku", "roku"),
    ("tvos", "tvos"),
    ("fireos", "firetv"),
    ("firetv", "firetv"),
    ("androidtv", "androidtv"),
    ("googletv", "androidtv"),
    ("tizen", "tizen"),
    ("webos", "webos"),
    ("smartcast", "vizio"),
    ("vizio", "vizio"),
)


@dataclass(frozen=True, slots=True)
class OpenRtbPod:
    """A parsed BidRequest: the ad request plus what the request model has no place for."""

    request: AdRequest
    floor_cpm_per_s: float | None
    """``video.mincpmpersec`` (the catalog's currency per second of ad), the highest over
    the pod's imps: what every ad meets where the pod does not say which imp an ad fills
    (:attr:`slot_floors` None; see :attr:`pod_floors`)."""
    floor_cpm: float | None
    """``bidfloor`` of the imps without ``mincpmpersec`` nor ``durfloors`` (a CPM per ad),
    the highest."""
    imp_ids: tuple[str, ...]
    """In request order; a structured pod has one ad per imp."""
    request_id: str
    slots: tuple[Slot, ...] = ()
    """``slotinpod`` of each imp, aligned with :attr:`imp_ids`."""
    duration_floors: tuple[DurationFloors, ...] = ()
    """``imp.durfloors`` of each imp listing them (with that imp's ``bidfloor`` for the
    durations no range holds)."""
    slot_floors: tuple[ImpFloors, ...] | None = None
    """A structured pod (one slot rule per imp, ``BreakSpec.slots``) whose imps' floors
    differ: each slot's imp's floors, aligned with the slot rules, which the ad filling
    that slot meets (:attr:`AdRequest.slot_floors`) instead of the highest of them all;
    None otherwise."""
    pod_id: str | None = None
    tmax_ms: int | None = None
    """The caller's ``tmax``: see :func:`decision_budget_ms`."""
    imp_maxseq: tuple[int | None, ...] = ()
    """Aligned with :attr:`imp_ids`: the most ads a dynamic imp (one with ``poddur``) takes
    (its ``maxseq``, else the ad rules'); None for a structured imp, one slot for one ad.
    (Whether the pod is structured, for ``bid.slotinpod`` on ``POST /openrtb2/auction``.)"""
    blocked_seats: frozenset[str] = frozenset()
    """``bseat``: the buyer seats that may not bid."""
    allowed_seats: frozenset[str] | None = None
    """``wseat``: the only buyer seats that may bid; None when absent or empty (any)."""
    private_imp: int | None = None
    """The index of the first imp of ``pmp.private_auction`` = 1 (deals only), if any."""
    hybrid_imps: tuple[PodImp, ...] | None = None
    """A pod of several imps, one of them dynamic (a hybrid pod): each imp, in request
    order, for splitting the ads among them (``BreakSpec.imps``, which
    ``POST /openrtb2/auction`` sets: its bids name their imps); None otherwise."""
    debug_field: str = "ext.vastserver.debug"
    """Where the ``debug`` the request asks for was read (``imp[0].ext.vastserver.debug``):
    what a 401 for it names."""

    @property
    def pod_floors(self) -> tuple[float | None, float | None, tuple[DurationFloors, ...]]:
        """``(mincpmpersec, bidfloor, durfloors)`` every ad of the pod meets: the highest
        over the imps (and each imp's ``durfloors``) where the pod does not say which imp an
        ad fills; none where each slot has its own imp's (:attr:`slot_floors`)."""
        if self.slot_floors is not None:
            return None, None, ()
        return self.floor_cpm_per_s, self.floor_cpm, self.duration_floors

    def decision_budget_ms(self, deadline_ms: int) -> int:
        """The decision's time budget: ``deadline_ms`` (``VASTSERVER_DEADLINE_MS``), or
        less when ``tmax`` minus :data:`TMAX_NETWORK_ALLOWANCE_MS` is shorter (never below
        :data:`MIN_DECISION_BUDGET_MS`)."""
        if self.tmax_ms is None:
            return deadline_ms
        own = max(self.tmax_ms - TMAX_NETWORK_ALLOWANCE_MS, MIN_DECISION_BUDGET_MS)
        return min(own, deadline_ms)


# ------------------------------------------------------------------------ typed accessors

Obj = dict[str, object]


def _fail(path: str, why: str) -> NoReturn:
    raise ParamError(path, why)


def _obj(value: object, path: str) -> Obj:
    if not isinstance(value, dict):
        _fail(path, "must be an object")
    return value


def _opt_obj(parent: Obj, key: str, path: str) -> Obj | None:
    value = parent.get(key)
    return None if value is None else _obj(value, _join(path, key))


def _arr(value: object, path: str, max_items: int) -> list[object]:
    if not isinstance(value, list):
        _fail(path, "must be an array")
    if len(value) > max_items:
        _fail(path, f"at most {max_items} entries")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _opt_int(parent: Obj, key: str, path: str, *, lo: int, hi: int) -> int | None:
    value = parent.get(key)
    if value is None:
        return None
    return _int(value, _join(path, key), lo=lo, hi=hi)


def _int(value: object, path: str, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(path, "must be an integer")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        _fail(path, "must be an integer")
    if value < lo or value > hi:
        _fail(path, f"must be between {lo} and {hi}")
    return int(value)


def _opt_num(parent: Obj, key: str, path: str, *, lo: float, hi: float) -> float | None:
    value = parent.get(key)
    if value is None:
        return None
    p = _join(path, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(p, "must be a number")
    # Compare before converting: a huge JSON integer would overflow float().
    if not (isinstance(value, int) or math.isfinite(value)) or value < lo or value > hi:
        _fail(p, f"must be between {lo:g} and {hi:g}")
    return float(value)


def _opt_flag(parent: Obj, key: str, path: str) -> bool | None:
    value = parent.get(key)
    if value is None:
        return None
    if value is True or value is False:
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    _fail(_join(path, key), "must be 0 or 1")


def _str(value: object, path: str, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        _fail(path, "must be a string")
    if len(value) > max_len or _BAD_CHARS_RE.search(value):
        _fail(path, f"must be printable and at most {max_len} characters")
    return value


def _opt_str(parent: Obj, key: str, path: str, max_len: int = MAX_TEXT) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    s = _str(value, _join(path, key), max_len).strip()
    return s or None


def _opt_id(parent: Obj, key: str, path: str) -> str | None:
    """An id the answer echoes (``id``, ``imp[].id``): exactly as sent, never trimmed (the
    exchange matches the echo against its own); None when absent, empty or blank."""
    value = parent.get(key)
    if value is None:
        return None
    s = _str(value, _join(path, key), MAX_ID)
    return s if s.strip() else None


def _opt_token(parent: Obj, key: str, path: str, *, ident: bool = False) -> str | None:
    """Our own identifiers (``ext.vastserver``): the same alphabet ``/vast`` accepts, which
    for a session id (``ident``) takes ``=`` too."""
    s = _opt_str(parent, key, path)
    if s is not None and not (is_id(s) if ident else _TOKEN_RE.match(s)):
        extra = "=" if ident else ""
        _fail(_join(path, key), f"must be 1-128 characters of letters, digits and _.:@/+-{extra}")
    return s


def _str_list(
    parent: Obj, key: str, path: str, *, max_items: int, max_len: int = 64
) -> tuple[str, ...]:
    value = parent.get(key)
    if value is None:
        return ()
    p = _join(path, key)
    out: list[str] = []
    for i, item in enumerate(_arr(value, p, max_items)):
        s = _str(item, f"{p}[{i}]", max_len).strip()
        if s:
            out.append(s)
    return tuple(out)


def _dedupe(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ------------------------------------------------------------------------------- imps


@dataclass(frozen=True, slots=True)
class _Imp:
    index: int
    id: str
    pod_key: str | None
    poddur_s: float | None
    maxseq: int | None
    min_s: float | None
    max_s: float | None
    required: frozenset[int] | None
    slot: Slot
    by_startdelay: BreakPosition | None
    by_podseq: BreakPosition | None
    floor: float | None
    floor_cpm: float | None
    durfloors: DurationFloors | None
    secure: bool
    inline_versions: frozenset[str]
    """The VAST versions whose inline code ``video.protocols`` lists."""
    wrapper_versions: frozenset[str]
    """The VAST versions whose wrapper code it lists (both empty: no known code, any)."""
    mimes: frozenset[str] | None
    battr: frozenset[int]
    """``video.battr``: the AdCOM creative attributes the imp blocks."""
    ext: Obj | None
    tagid: str | None
    private: bool = False
    """``pmp.private_auction`` = 1: only the deals of ``pmp.deals`` may bid (we hold none)."""
    first_or_last: bool = False
    """``slotinpod`` 2: the imp takes whichever end of the pod no other imp claims
    (:func:`_either_end` turns it into ``Slot.FIRST`` or ``Slot.LAST``)."""

    @property
    def floors(self) -> ImpFloors:
        """Its floors, for the ad filling it."""
        return ImpFloors(self.floor, self.floor_cpm, self.durfloors)

    @property
    def slot_max_s(self) -> float | None:
        """The longest ad this imp takes (structured: the slot's length)."""
        if self.required is not None:
            return float(max(self.required))
        return self.max_s

    @property
    def slot_min_s(self) -> float | None:
        if self.required is not None:
            return float(min(self.required))
        return self.min_s


def _durfloors(imp: Obj, path: str, default: float) -> DurationFloors | None:
    """``imp.durfloors`` (OpenRTB 2.6 3.2.35): ranges of whole seconds, each bound inclusive
    and either one absent (open) but not both, with a ``bidfloor`` (default 0); the imp's
    ``bidfloor`` (``default``) holds for durations outside every range. None when absent;
    an empty list counts as absent."""
    raw = imp.get("durfloors")
    if raw is None:
        return None
    dpath = f"{path}.durfloors"
    ranges: list[tuple[int | None, int | None, float]] = []
    for j, item in enumerate(_arr(raw, dpath, MAX_DURFLOORS)):
        ipath = f"{dpath}[{j}]"
        entry = _obj(item, ipath)
        lo = _opt_int(entry, "mindur", ipath, lo=0, hi=MAX_AD_S)
        hi = _opt_int(entry, "maxdur", ipath, lo=0, hi=MAX_AD_S)
        if lo is None and hi is None:
            _fail(ipath, "needs mindur or maxdur")
        if lo is not None and hi is not None and lo > hi:
            _fail(f"{ipath}.mindur", "greater than maxdur")
        cpm = _opt_num(entry, "bidfloor", ipath, lo=0, hi=MAX_BIDFLOOR_CPM) or 0.0
        ranges.append((lo, hi, cpm))
    if not ranges:
        return None
    return DurationFloors(ranges=tuple(ranges), default=default)


def _position_from_startdelay(v: int) -> BreakPosition:
    if v == 0:
        return BreakPosition.PRE
    if v == -2:
        return BreakPosition.POST
    return BreakPosition.MID


def _position_from_podseq(v: int) -> BreakPosition:
    if v == 1:
        return BreakPosition.PRE
    if v == -1:
        return BreakPosition.POST
    return BreakPosition.MID


def _parse_imp(raw: object, i: int, currency: str) -> _Imp:
    path = f"imp[{i}]"
    imp = _obj(raw, path)
    imp_id = _opt_id(imp, "id", path)
    if imp_id is None:
        _fail(f"{path}.id", "required")
    vpath = f"{path}.video"
    if imp.get("video") is None:
        _fail(vpath, "required: only video ad pods are served")
    video = _obj(imp["video"], vpath)

    pod_key: str | None = None
    podid = video.get("podid")
    if podid is not None:
        if isinstance(podid, bool) or not isinstance(podid, str | int):
            _fail(f"{vpath}.podid", "must be a string")
        pod_key = _str(podid, f"{vpath}.podid", 128) if isinstance(podid, str) else str(podid)

    poddur = _opt_num(video, "poddur", vpath, lo=1, hi=MAX_POD_S)
    maxseq = _opt_int(video, "maxseq", vpath, lo=1, hi=MAX_ADS)
    min_s = _opt_num(video, "minduration", vpath, lo=0, hi=MAX_AD_S)
    max_s = _opt_num(video, "maxduration", vpath, lo=1, hi=MAX_AD_S)
    if min_s is not None and max_s is not None and min_s > max_s:
        _fail(f"{vpath}.minduration", "must not exceed maxduration")
    if min_s == 0:
        min_s = None  # the spec's default: no minimum

    required: frozenset[int] | None = None
    if video.get("rqddurs") is not None:
        rpath = f"{vpath}.rqddurs"
        items = _arr(video["rqddurs"], rpath, MAX_LIST)
        if not items:
            _fail(rpath, "empty list")
        required = frozenset(
            _int(v, f"{rpath}[{j}]", lo=1, hi=MAX_AD_S) for j, v in enumerate(items)
        )

    slot_code = _opt_int(video, "slotinpod", vpath, lo=-1, hi=2)
    startdelay = _opt_int(video, "startdelay", vpath, lo=-2, hi=MAX_START_DELAY_S)
    podseq = _opt_int(video, "podseq", vpath, lo=-1, hi=1)
    floor = _opt_num(video, "mincpmpersec", vpath, lo=0, hi=MAX_FLOOR_CPM_PER_S)
    # OpenRTB 2.6 7.6: mincpmpersec when given, else the per-ad bidfloor (default 0)
    bidfloor = _opt_num(imp, "bidfloor", path, lo=0, hi=MAX_BIDFLOOR_CPM)
    durfloors = _durfloors(imp, path, 0.0 if floor is not None else bidfloor or 0.0)
    floor_cpm = bidfloor if floor is None and bidfloor and durfloors is None else None
    if floor is not None or floor_cpm is not None or durfloors is not None:
        cur = (_opt_str(imp, "bidfloorcur", path, 8) or "USD").upper()  # OpenRTB's default
        if cur != currency:
            _fail(
                f"{path}.bidfloorcur",
                f"a floor in {cur} cannot be compared with the catalog's prices in {currency}"
                + ("" if "bidfloorcur" in imp else " (absent, bidfloorcur means USD)"),
            )

    inline: set[str] = set()
    wrapper: set[str] = set()
    if video.get("protocols") is not None:
        ppath = f"{vpath}.protocols"
        for j, code in enumerate(_arr(video["protocols"], ppath, MAX_LIST)):
            known = _VAST_BY_PROTOCOL.get(_int(code, f"{ppath}[{j}]", lo=0, hi=1000))
            if known is not None:
                (wrapper if known[1] else inline).add(known[0])

    battr: frozenset[int] = frozenset()
    if video.get("battr") is not None:
        bpath = f"{vpath}.battr"
        battr = frozenset(
            _int(code, f"{bpath}[{j}]", lo=1, hi=MAX_ATTRIBUTE_CODE)
            for j, code in enumerate(_arr(video["battr"], bpath, MAX_LIST))
        )

    tagid = _opt_str(imp, "tagid", path)
    pmp = _opt_obj(imp, "pmp", path)
    private = pmp is not None and _opt_flag(pmp, "private_auction", f"{path}.pmp") is True
    return _Imp(
        index=i,
        id=imp_id,
        pod_key=pod_key,
        poddur_s=poddur,
        maxseq=maxseq,
        min_s=min_s,
        max_s=max_s,
        required=required,
        slot=_SLOTS[slot_code or 0],
        first_or_last=slot_code == 2,
        by_startdelay=None if startdelay is None else _position_from_startdelay(startdelay),
        by_podseq=None if podseq is None else _position_from_podseq(podseq),
        floor=floor,
        floor_cpm=floor_cpm,
        durfloors=durfloors,
        secure=_opt_flag(imp, "secure", path) is True,
        inline_versions=frozenset(inline),
        wrapper_versions=frozenset(wrapper),
        mimes=_mimes(video, vpath),
        battr=battr,
        ext=_opt_obj(imp, "ext", path),
        tagid=tagid if tagid is not None and _TOKEN_RE.match(tagid) else None,
        private=private,
    )


def _mimes(video: Obj, vpath: str) -> frozenset[str] | None:
    """``video.mimes``, each lowercased without parameters (``video/MP4; codecs=x`` ->
    ``video/mp4``); None when absent."""
    if video.get("mimes") is None:
        return None
    p = f"{vpath}.mimes"
    items = _arr(video["mimes"], p, MAX_LIST)
    if not items:
        _fail(p, "empty list: list the MIME types the player takes, or leave mimes out")
    out: set[str] = set()
    for j, item in enumerate(items):
        mime = _str(item, f"{p}[{j}]", 255).split(";", 1)[0].strip().lower()
        if not _MIME_RE.match(mime):
            _fail(f"{p}[{j}]", "not a MIME type such as video/mp4")
        out.add(mime)
    return frozenset(out)


def _pod_mimes(imps: list[_Imp]) -> frozenset[str] | None:
    """The types every imp takes (any ad of the pod may go in any slot); None when no imp
    lists ``mimes``."""
    lists = [imp.mimes for imp in imps if imp.mimes is not None]
    return frozenset.intersection(*lists) if lists else None


def _position(imps: list[_Imp]) -> BreakPosition:
    for attr, name in (("by_startdelay", "startdelay"), ("by_podseq", "podseq")):
        found: BreakPosition | None = None
        for imp in imps:
            pos: BreakPosition | None = getattr(imp, attr)
            if pos is None:
                continue
            if found is not None and pos is not found:
                _fail(f"imp[{imp.index}].video.{name}", "imps of one pod disagree on the break")
            found = pos
        if found is not None:
            return found
    return BreakPosition.MID


def _either_end(imps: list[_Imp]) -> list[_Imp]:
    """Each imp of ``slotinpod`` 2 (first or last) given the first slot when no imp claims
    it, else the last, in request order; a 400 on its ``slotinpod`` when both are claimed."""
    if not any(imp.first_or_last for imp in imps):
        return imps
    taken = {imp.slot for imp in imps}
    out: list[_Imp] = []
    for imp in imps:
        if imp.first_or_last:
            end = next((s for s in (Slot.FIRST, Slot.LAST) if s not in taken), None)
            if end is None:
                _fail(
                    f"imp[{imp.index}].video.slotinpod",
                    "2 (first or last), but other imps claim both the first and the last slot",
                )
            taken.add(end)
            imp = replace(imp, slot=end)
        out.append(imp)
    return out


def _break(imps: list[_Imp], rules: AdRules, avail: int) -> BreakSpec:
    keys = {imp.pod_key for imp in imps}
    if len(keys) > 1:
        _fail("imp", "one pod per request: every imp must share one video.podid")
    for a, b in ((Slot.FIRST, "first"), (Slot.LAST, "last")):
        claimed = [imp for imp in imps if imp.slot is a]
        if len(claimed) > 1:
            _fail(f"imp[{claimed[1].index}].video.slotinpod", f"two imps claim the {b} slot")
    position = _position(imps)
    default = rules.for_position(position)

    dynamic = [imp for imp in imps if imp.poddur_s is not None]
    structured = [imp for imp in imps if imp.poddur_s is None]
    if len(structured) > MAX_ADS:
        _fail("imp", f"at most {MAX_ADS} slots in a pod")

    pod_s = 0.0
    max_ads = 0
    for imp in dynamic:
        pod_s += imp.poddur_s or 0.0
        max_ads += imp.maxseq if imp.maxseq is not None else default.max_ads
    for imp in structured:
        slot_s = imp.slot_max_s
        if slot_s is None:
            if len(imps) > 1:
                _fail(
                    f"imp[{imp.index}].video.maxduration",
                    "each slot of a structured pod needs maxduration or rqddurs",
                )
            slot_s = float(default.duration_s)
        pod_s += slot_s
        max_ads += 1
    if pod_s > MAX_POD_S:
        _fail("imp", f"the pod lasts {pod_s:g}s, more than {MAX_POD_S}s")
    max_ads = max(1, min(max_ads, MAX_ADS))

    if not dynamic and len(structured) > 1:
        rules_by_slot = _slot_rules(structured)
        if len(set(rules_by_slot)) > 1 or len({imp.floors for imp in structured}) > 1:
            # Slots of different lengths: the ad in each slot fits that slot's rule. Slots
            # of different floors: the ad in each slot meets that slot's imp's floors
            # (slot_floors), so the pod says which imp each ad fills.
            return BreakSpec(
                position=position,
                pod_duration_ms=round(pod_s * 1000),
                max_ads=max_ads,
                avail=avail,
                slots=rules_by_slot,
            )

    # Otherwise one duration rule holds for every ad of the pod, and the optimiser chooses which ad
    # plays in which slot: so the rule is what every slot accepts (the longest minimum, the
    # shortest maximum, the durations all slots require), and any ad fits any slot. Slots of
    # different lengths get ads that fit the shortest (fewer seconds filled, none overrun).
    required: frozenset[int] | None = None
    min_s: float | None = None
    max_s: float | None = None
    lists = [imp.required for imp in imps if imp.required is not None]
    if lists:
        required = frozenset.intersection(*lists)
    mins = [m for m in (imp.slot_min_s for imp in imps) if m is not None]
    maxs = [m for m in (imp.slot_max_s for imp in imps) if m is not None]
    min_s = max(mins) if mins else None
    max_s = min(maxs) if maxs else None
    if required is not None:
        required = frozenset(
            d for d in required if (min_s is None or d >= min_s) and (max_s is None or d <= max_s)
        )
        min_s = max_s = None  # the required durations say it all
    if min_s is not None and max_s is not None and min_s > max_s:
        required, min_s, max_s = frozenset(), None, None
    # No duration fits every slot (only a hybrid pod gets here with such slots): the pod
    # stays empty (every candidate duration_not_required), a no-fill rather than an error.
    return BreakSpec(
        position=position,
        pod_duration_ms=round(pod_s * 1000),
        max_ads=max_ads,
        min_ad_duration_ms=None if min_s is None else round(min_s * 1000),
        max_ad_duration_ms=None if max_s is None else round(max_s * 1000),
        required_durations_s=required,
        avail=avail,
    )


def _slot_rules(imps: list[_Imp]) -> tuple[SlotRule, ...]:
    """Each slot's duration rule, in play order: the imp claiming the first slot
    (``slotinpod`` 1), the others in request order, the one claiming the last (-1); each
    labelled with its imp and role, for the explanation."""
    return tuple(
        SlotRule(
            min_ms=None if imp.min_s is None else round(imp.min_s * 1000),
            max_ms=None if imp.max_s is None else round(imp.max_s * 1000),
            required_s=imp.required,
            imp_id=imp.id,
            role=None if imp.slot is Slot.ANY else imp.slot.value,
        )
        for imp in _play_order(imps)
    )


def _play_order(imps: list[_Imp]) -> list[_Imp]:
    """A structured pod's imps in the order of their slots: the imp of ``slotinpod`` 1, the
    others in request order, the imp of -1."""
    return sorted(imps, key=lambda imp: (imp.slot is Slot.LAST) - (imp.slot is Slot.FIRST))


def _slot_floors(imps: list[_Imp], brk: BreakSpec) -> tuple[ImpFloors, ...] | None:
    """Each slot's imp's floors (aligned with ``brk.slots``) when the pod has slot rules
    and its imps' floors differ; else None (the same floors hold for every ad)."""
    if brk.slots is None:
        return None
    floors = tuple(imp.floors for imp in _play_order(imps))
    return floors if len(set(floors)) > 1 else None


@dataclass(frozen=True, slots=True)
class _VastForm:
    """The VAST version of the pod's documents, and which ads may be in it."""

    version: str
    inline: bool = True
    """Ads served inline (every imp listing known codes lists the version's inline one)."""
    wrapper: bool = True
    """Third-party tags, served as ``<Wrapper>`` (every such imp lists the wrapper code)."""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def _preferred(versions: frozenset[str]) -> str:
    """4.2 (the default) when allowed, else the highest: the preference of old."""
    if DEFAULT_VAST_VERSION in versions:
        return DEFAULT_VAST_VERSION
    return max(versions, key=_version_key)


def _forms(inline: frozenset[str], wrapper: frozenset[str]) -> str:
    """``VAST 2.0, 3.0 inline; 4.2 wrapper`` (for an error message)."""
    parts = [
        f"{', '.join(sorted(versions, key=_version_key))} {form}"
        for versions, form in ((inline, "inline"), (wrapper, "wrapper"))
        if versions
    ]
    return f"VAST {'; '.join(parts)}" if parts else "no VAST version"


def _vast_form(imps: list[_Imp]) -> _VastForm:
    """``video.protocols``: the version every imp listing a known code accepts, each imp
    taking any ad of the pod (as for ``mimes``). Picked among those every such imp accepts
    inline, else among those it accepts as a wrapper (:func:`_preferred`); inline ads and
    third-party tags may then play only when every such imp lists that version's code for
    them. No imp listing a known code: 4.2, any ad. No version every imp accepts: a 400
    naming the first imp that leaves none."""
    inline: frozenset[str] | None = None
    wrapper: frozenset[str] = frozenset()
    for imp in imps:
        if not (imp.inline_versions or imp.wrapper_versions):
            continue  # lists no known code: restricts nothing
        if inline is None:
            inline, wrapper = imp.inline_versions, imp.wrapper_versions
            continue
        before = _forms(inline, wrapper)
        inline &= imp.inline_versions
        wrapper &= imp.wrapper_versions
        if not (inline or wrapper):
            _fail(
                f"imp[{imp.index}].video.protocols",
                "no VAST version is accepted by every imp in one form, inline or wrapper "
                f"(a pod is answered in one): the imps before this one accept {before}, "
                f"this one {_forms(imp.inline_versions, imp.wrapper_versions)}",
            )
    if inline is None:
        return _VastForm(DEFAULT_VAST_VERSION)
    version = _preferred(inline or wrapper)
    return _VastForm(version, inline=version in inline, wrapper=version in wrapper)


# --------------------------------------------------------------------------- device, content


def _ip(dev: Obj, key: str) -> str | None:
    s = _opt_str(dev, key, "device", 64)
    if s is None:
        return None
    try:
        return bare_ip(s)
    except ValueError:
        _fail(f"device.{key}", "not an IP address")


def domain_forms(raw: str) -> tuple[str, ...]:
    """The advertiser domains a ``badv`` entry blocks: lowercased, less one trailing dot and
    one leading ``www.``, and that with ``www.`` again (the catalog's domains are lowercase
    without a trailing dot, with or without ``www.``): ``WWW.X.example.`` blocks ``x.example``
    and ``www.x.example``. None when nothing is left."""
    d = raw.lower()
    d = d.removesuffix(".")
    d = d.removeprefix("www.")
    return (d, f"www.{d}") if d else ()


def country_alpha2(raw: str | None) -> str | None:
    """OpenRTB's alpha-3 country (alpha-2 tolerated) -> alpha-2; unknown -> None."""
    if raw is None or not _ALPHA_RE.match(raw):
        return None
    code = raw.upper()
    if len(code) == 2:
        return code
    return COUNTRY_ALPHA3.get(code)


def language_code(raw: str | None) -> str | None:
    """Primary language subtag, lowercased (``en-US`` -> ``en``): the catalog's form."""
    if raw is None:
        return None
    m = _LANG_RE.match(raw)
    return m.group(1).lower() if m else None


def platform_of(os_name: str | None, make: str | None, device_type: str | None) -> str | None:
    """Where the OS or the maker names a CTV platform unambiguously."""
    os_key = re.sub(r"[\s_\-]", "", os_name or "").lower()
    make_key = re.sub(r"[\s_\-]", "", make or "").lower()
    for needle, platform in _PLATFORM_BY_OS:
        if needle in os_key:
            return platform
    if os_key.startswith("android"):
        if make_key.startswith("amazon"):
            return "firetv"
        if device_type in ("ctv", "stb"):
            return "androidtv"
    if make_key in ("roku", "vizio"):
        return make_key
    return None


def _device(root: Obj, client: ClientInfo) -> Device:
    dev = _opt_obj(root, "device", "") or {}
    ext = _opt_obj(dev, "ext", "device") or {}
    top_ext = _opt_obj(root, "ext", "") or {}

    ifa = _opt_str(dev, "ifa", "device")
    if ifa is not None and not is_id(ifa):
        ifa = None
    ifa_type = _opt_str(ext, "ifa_type", "device.ext") or _opt_str(top_ext, "ifa_type", "ext")
    if ifa_type is not None:
        ifa_type = ifa_type.lower() if _TOKEN_RE.match(ifa_type) else None

    code = dev.get("devicetype")
    device_type: str | None = None
    if code is not None:
        device_type = DEVICE_TYPES_BY_CODE.get(_int(code, "device.devicetype", lo=0, hi=1000))

    geo = _opt_obj(dev, "geo", "device") or {}
    country = country_alpha2(_opt_str(geo, "country", "device.geo", 16))
    metro = _opt_str(geo, "metro", "device.geo", 16)
    region = region_code(_opt_str(geo, "region", "device.geo", 16), country)

    language = language_code(_opt_str(dev, "language", "device", 32)) or language_code(
        _opt_str(dev, "langb", "device", 64)
    )
    ipv4, ipv6 = _ip(dev, "ip"), _ip(dev, "ipv6")
    return Device(
        ip=ipv4 or ipv6 or client.device_ip,
        user_agent=_opt_str(dev, "ua", "device", MAX_UA) or client.device_user_agent,
        ifa=ifa,
        ifa_type=ifa_type,
        lmt=_opt_flag(dev, "lmt", "device") is True,
        device_type=device_type,
        platform=platform_of(
            _opt_str(dev, "os", "device", 64), _opt_str(dev, "make", "device", 64), device_type
        ),
        country=country,
        region=region if region is not None and region_in(region, country) else None,
        dma=metro if metro is not None and _DMA_RE.match(metro) else None,
        language=language,
    )


def _content(root: Obj) -> tuple[Content, str | None]:
    """The content and its language (a fallback for the device's)."""
    kids = False
    regs = _opt_obj(root, "regs", "")
    if regs is not None:
        kids = _opt_flag(regs, "coppa", "regs") is True
    for holder in ("app", "site"):
        parent = _opt_obj(root, holder, "")
        if parent is None or parent.get("content") is None:
            continue
        path = f"{holder}.content"
        c = _obj(parent["content"], path)
        genres: list[str] = []
        raw_genre = c.get("genre")
        if isinstance(raw_genre, list):
            genres.extend(g.lower() for g in _str_list(c, "genre", path, max_items=MAX_LIST))
        elif raw_genre is not None:
            text = _str(raw_genre, f"{path}.genre", 1024)
            genres.extend(g.strip().lower() for g in text.split(",") if g.strip())
        genres.extend(g.lower() for g in _str_list(c, "cat", path, max_items=MAX_LIST))
        if len(genres) > MAX_LIST:
            _fail(f"{path}.genre", f"at most {MAX_LIST} genres and categories")
        rating = _opt_str(c, "contentrating", path, 32)
        if rating is not None:
            rating = rating.upper() if rating.upper() in RATINGS else None
        channel_name: str | None = None
        for key in ("channel", "network"):
            holder_obj = _opt_obj(c, key, path)
            if holder_obj is not None and channel_name is None:
                channel_name = _opt_str(holder_obj, "name", f"{path}.{key}", 128)
        live = _opt_flag(c, "livestream", path)
        return (
            Content(
                id=_opt_str(c, "id", path, 128),
                genres=_dedupe(genres),
                rating=rating,
                live=live,
                series=_opt_str(c, "series", path, 128),
                channel=channel_name,
                kids=kids,
            ),
            language_code(_opt_str(c, "language", path, 32))
            or language_code(_opt_str(c, "langb", path, 64)),
        )
    return Content(kids=kids), None


def _consent(
    root: Obj, tcf_vendor_id: int | None, *, child_directed: bool
) -> tuple[Permissions, PrivacySignals]:
    """``regs.gdpr`` and ``user.consent`` (2.6), else ``regs.ext.gdpr`` and
    ``user.ext.consent`` (2.5); without a ``gdpr`` flag the GDPR applies when a consent
    string is given, as on ``/vast``. ``regs.us_privacy``, ``regs.gpp`` and ``regs.gpp_sid``
    (2.5: under ``regs.ext``) as ``us_privacy``, ``gpp`` and ``gpp_sid`` there."""
    regs = _opt_obj(root, "regs", "") or {}
    gdpr = _opt_flag(regs, "gdpr", "regs")
    regs_ext = regs.get("ext")
    if gdpr is None and isinstance(regs_ext, dict):
        gdpr = _opt_flag(regs_ext, "gdpr", "regs.ext")
    user = _opt_obj(root, "user", "") or {}
    consent = _opt_str(user, "consent", "user", MAX_TC_STRING)
    user_ext = user.get("ext")
    if consent is None and isinstance(user_ext, dict):  # 2.5 (another ext is not ours)
        consent = _opt_str(user_ext, "consent", "user.ext", MAX_TC_STRING)
    usp = _opt_str(regs, "us_privacy", "regs", MAX_US_PRIVACY)
    if usp is None and isinstance(regs_ext, dict):
        usp = _opt_str(regs_ext, "us_privacy", "regs.ext", MAX_US_PRIVACY)
    gpp_holder, gpp_path = regs, "regs"
    if regs.get("gpp") is None and regs.get("gpp_sid") is None and isinstance(regs_ext, dict):
        gpp_holder, gpp_path = regs_ext, "regs.ext"  # 2.5
    gpp = _opt_str(gpp_holder, "gpp", gpp_path, MAX_TC_STRING)
    sid: tuple[int, ...] | None = None
    if gpp_holder.get("gpp_sid") is not None:
        p = f"{gpp_path}.gpp_sid"
        items = _arr(gpp_holder["gpp_sid"], p, MAX_GPP_SECTIONS)
        sid = applicable_sections(
            [_int(x, f"{p}[{i}]", lo=-1, hi=9999) for i, x in enumerate(items)]
        )
    return read_privacy(
        gdpr=gdpr,
        tc_string=consent,
        vendor_id=tcf_vendor_id,
        us_privacy=usp,
        gpp=gpp,
        gpp_sid=sid,
        child_directed=child_directed,
    )


def _segments(root: Obj) -> tuple[str, ...]:
    user = _opt_obj(root, "user", "")
    if user is None or user.get("data") is None:
        return ()
    out: list[str] = []
    for i, d in enumerate(_arr(user["data"], "user.data", MAX_LIST)):
        dpath = f"user.data[{i}]"
        data = _obj(d, dpath)
        if data.get("segment") is None:
            continue
        spath = f"{dpath}.segment"
        for j, s in enumerate(_arr(data["segment"], spath, MAX_SEGMENTS)):
            seg_id = _opt_str(_obj(s, f"{spath}[{j}]"), "id", f"{spath}[{j}]", 128)
            if seg_id is not None:
                out.append(seg_id)
    segments = _dedupe(out)
    if len(segments) > MAX_SEGMENTS:
        _fail("user.data", f"at most {MAX_SEGMENTS} segments")
    return segments


def _key_values(ours: Obj, path: str) -> Mapping[str, str] | None:
    p = _join(path, "kv")
    raw = _opt_obj(ours, "kv", path)
    if raw is None:
        return None
    if len(raw) > MAX_LIST:
        _fail(p, f"at most {MAX_LIST} key-values")
    kv: dict[str, str] = {}
    for k, v in raw.items():
        if len(k) > 64 or _BAD_CHARS_RE.search(k):
            _fail(p, "keys must be printable and at most 64 characters")
        kv[k] = _str(v, f"{p}.{k}")
    return MappingProxyType(kv)


@dataclass(frozen=True, slots=True)
class _Ours:
    """One ``ext.vastserver`` object (top level or an imp's), checked as ``/vast`` checks
    the parameters of the same names; None where it does not set a field."""

    placement: str | None = None
    session: str | None = None
    avail: int | None = None
    debug: bool | None = None
    vast: str | None = None
    kv: Mapping[str, str] | None = None


def _ours(ext: Obj | None, path: str) -> _Ours:
    """``ext.vastserver`` under ``ext`` (found at ``path``)."""
    ours = None if ext is None else _opt_obj(ext, "vastserver", path)
    if ours is None:
        return _Ours()
    p = _join(path, "vastserver")
    vast = _opt_str(ours, "vast", p, 8)
    if vast is not None and vast not in VAST_VERSIONS:
        _fail(f"{p}.vast", f"must be one of {', '.join(VAST_VERSIONS)}")
    return _Ours(
        placement=_opt_token(ours, "placement", p),
        session=_opt_token(ours, "session", p, ident=True),
        avail=_opt_int(ours, "avail", p, lo=0, hi=10_000),
        debug=_opt_flag(ours, "debug", p),
        vast=vast,
        kv=_key_values(ours, p),
    )


def _merge_ours(layers: list[_Ours]) -> _Ours:
    """Each field from the first layer that sets it (the imps in order, then the top)."""
    firsts: dict[str, Any] = {}
    for f in fields(_Ours):
        values = (getattr(o, f.name) for o in layers)
        firsts[f.name] = next((v for v in values if v is not None), None)
    return _Ours(**firsts)


# ---------------------------------------------------------------------------------- entry


def _reject_constant(name: str) -> NoReturn:
    raise ParamError("body", f"{name} is not valid JSON")


def _load(body: bytes | str) -> Obj:
    try:
        doc: object = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        if isinstance(e, ParamError):
            raise
        raise ParamError("body", "not valid JSON") from None
    return _obj(doc, "body")


def _check_currency(root: Obj, currency: str) -> None:
    """``cur``, the currencies the caller accepts: the catalog prices in one, so a list
    without it can never be answered (a 400, as a floor in another currency is). Absent, it
    means USD (OpenRTB's default), as an absent ``bidfloorcur`` does."""
    if root.get("cur") is None:
        if currency != "USD":
            _fail(
                "cur",
                f"absent, cur means USD (OpenRTB's default), and the catalog's prices are in "
                f"{currency}: list {currency} in cur",
            )
        return
    listed = _str_list(root, "cur", "", max_items=MAX_LIST, max_len=8)
    if not listed:
        _fail("cur", "empty list: list the accepted currencies, or leave cur out")
    codes = [c.upper() for c in listed]
    for i, code in enumerate(codes):
        if not _CURRENCY_RE.match(code):
            _fail(f"cur[{i}]", "not an ISO 4217 currency code such as USD")
    if currency not in codes:
        _fail("cur", f"the catalog's prices are in {currency}, which cur does not list")


def parse_bid_request(
    body: bytes | str,
    client: ClientInfo,
    rules: AdRules | RulesFor,
    *,
    require_https: bool = True,
    tcf_vendor_id: int | None = None,
    currency: str = "USD",
) -> OpenRtbPod:
    """Map an OpenRTB 2.6 BidRequest for one CTV ad pod onto an :class:`AdRequest`.

    ``rules`` is either the ad rules to use or ``Catalog.rules_for``, called with the
    placement found in the body; ``currency`` is the catalog's, the only one a price floor
    may be in. Raises :class:`ParamError` (and only that) on bad input.
    """
    root = _load(body)
    request_id = _opt_id(root, "id", "")
    if request_id is None:
        _fail("id", "required")
    tmax = _opt_int(root, "tmax", "", lo=1, hi=MAX_TMAX_MS)
    if root.get("imp") is None:
        _fail("imp", "required")
    raw_imps = _arr(root["imp"], "imp", MAX_IMPS)
    if not raw_imps:
        _fail("imp", "at least one imp is required")
    imps = _either_end([_parse_imp(raw, i, currency) for i, raw in enumerate(raw_imps)])
    _check_currency(root, currency)  # (after the floors: their error names the imp)
    seen: set[str] = set()
    for imp in imps:
        if imp.id in seen:
            _fail(f"imp[{imp.index}].id", "duplicate imp id")
        seen.add(imp.id)

    paths = [*(f"imp[{imp.index}].ext" for imp in imps), "ext"]
    layers = [_ours(imp.ext, path) for imp, path in zip(imps, paths, strict=False)]
    layers.append(_ours(_opt_obj(root, "ext", ""), "ext"))
    ours = _merge_ours(layers)
    debug_at = next((p for o, p in zip(layers, paths, strict=True) if o.debug is not None), "ext")
    placement = ours.placement or imps[0].tagid

    resolved = rules if isinstance(rules, AdRules) else rules(placement)
    brk = replace(_break(imps, resolved, ours.avail or 0), avail_given=ours.avail is not None)

    content, content_language = _content(root)
    allowed, privacy = _consent(root, tcf_vendor_id, child_directed=content.kids)
    device = _device(root, client)
    allowed, ifa = limit_tracking(allowed, device.ifa, device.lmt)
    device = replace(device, ifa=ifa, lmt=not allowed.device_id)
    if device.language is None and content_language is not None:
        device = replace(device, language=content_language)

    blocked_categories = _str_list(root, "bcat", "", max_items=MAX_BLOCKLIST)
    cattax = _opt_int(root, "cattax", "", lo=0, hi=10_000)
    if blocked_categories and cattax not in (None, 1):
        # bcat codes name categories in the cattax taxonomy; ours are IAB Content Category
        # Taxonomy 1.0 (cattax 1, OpenRTB's default): another's codes would block nothing
        _fail(
            "cattax", "bcat in a taxonomy other than 1 (IAB Content Category 1.0) is not supported"
        )
    blocked_domains = _str_list(root, "badv", "", max_items=MAX_BLOCKLIST, max_len=MAX_DOMAIN)
    # ext.vastserver.vast overrides video.protocols: that version, any ad
    form = _VastForm(ours.vast) if ours.vast is not None else _vast_form(imps)
    floors = [imp.floor for imp in imps if imp.floor is not None]
    ad_floors = [imp.floor_cpm for imp in imps if imp.floor_cpm is not None]
    request = AdRequest(
        brk=brk,
        device=device,
        content=content,
        session=ours.session,
        placement=placement,
        vast_version=form.version,
        debug=ours.debug is True,
        blocked_categories=frozenset(c.upper() for c in blocked_categories),
        blocked_domains=frozenset(f for d in blocked_domains for f in domain_forms(d)),
        # any ad may go in any slot (as for mimes): what any imp blocks
        blocked_attributes=frozenset[int]().union(*(imp.battr for imp in imps)),
        segments=_segments(root) if allowed.segments else (),
        key_values=ours.kv if ours.kv is not None else MappingProxyType({}),
        caller_ip=client.caller_ip,
        caller_user_agent=client.caller_user_agent,
        require_https=require_https or any(imp.secure for imp in imps),
        mimes=_pod_mimes(imps),
        inline_ads=form.inline,
        wrapper_ads=form.wrapper,
        test=_opt_flag(root, "test", "") is True,
        privacy=privacy,
        permissions=allowed,
    )
    wseat = _str_list(root, "wseat", "", max_items=MAX_BLOCKLIST, max_len=MAX_ID)
    return OpenRtbPod(
        request=request,
        floor_cpm_per_s=max(floors) if floors else None,
        floor_cpm=max(ad_floors) if ad_floors else None,
        imp_ids=tuple(imp.id for imp in imps),
        request_id=request_id,
        slots=tuple(imp.slot for imp in imps),
        duration_floors=tuple(imp.durfloors for imp in imps if imp.durfloors is not None),
        slot_floors=_slot_floors(imps, brk),
        pod_id=imps[0].pod_key,
        tmax_ms=tmax,
        imp_maxseq=tuple(
            None
            if imp.poddur_s is None
            else imp.maxseq or resolved.for_position(brk.position).max_ads
            for imp in imps
        ),
        blocked_seats=frozenset(
            _str_list(root, "bseat", "", max_items=MAX_BLOCKLIST, max_len=MAX_ID)
        ),
        allowed_seats=frozenset(wseat) if wseat else None,
        private_imp=next((imp.index for imp in imps if imp.private), None),
        debug_field=f"{debug_at}.vastserver.debug",
        hybrid_imps=_hybrid_imps(imps, resolved.for_position(brk.position).max_ads),
    )


def _hybrid_imps(imps: list[_Imp], default_max_ads: int) -> tuple[PodImp, ...] | None:
    """Each imp of a hybrid pod (several imps, one dynamic) as :class:`PodImp`; else None."""
    if len(imps) < 2 or all(imp.poddur_s is None for imp in imps):
        return None
    return tuple(
        PodImp(imp.id, role=None if imp.slot is Slot.ANY else imp.slot.value)
        if imp.poddur_s is None
        else PodImp(
            imp.id,
            max_ads=imp.maxseq or default_max_ads,
            capacity_s=capacity_seconds(round(imp.poddur_s * 1000)),
        )
        for imp in imps
    )
