"""Bitset matching: the request-independent part of every filter, precomputed at catalog load.

Each candidate (line item x creative) has an ordinal, best first (tier, then value); a set of
candidates is a bitset, cut into chunks of :data:`CHUNK_BITS` candidates, each a Python
``int``. At load time we build, for every targeting dimension and value, every content
rating, category, creative attribute, domain, duration, media capability and flight
boundary, the bitset of candidates it admits or excludes. A request then costs a few dozen
AND/XOR operations per chunk, plus a per-candidate look only at the candidates with rules
no bitset can answer (dayparts, key-values, price floors), and it stops at the chunk where
its candidate limit fills: the work grows with the limit, not with the catalog size.

The per-candidate filters in :mod:`stages` remain the specification: ``tests/test_matching``
checks on random catalogs and requests that a candidate survives the bitsets (plus
:func:`residual`) exactly when it survives those filters, and the ``debug`` explanation uses
the filters to name the reason for every candidate the bitsets dropped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from vastserver.catalog.model import (
    KIDS_RATINGS,
    RATING_RANK,
    RATINGS,
    BreakPosition,
    Catalog,
    Slot,
    is_https,
    is_vpaid,
)
from vastserver.pipeline.candidates import (
    Candidate,
    all_candidates,
    request_values,
    separation_group,
)
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.pod import SlotRule, capacity_seconds, rounded_seconds
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.scoring import TIER_WEIGHT, effective_cpm
from vastserver.pipeline.stages import (
    ALCOHOL_CATEGORIES,
    CTV_DEVICE_TYPES,
    CTV_MIMES,
    PLAYABLE_MIMES,
    UNKNOWN_CONTENT_RATING,
    PreGate,
    StageEnv,
    floor,
    playable_urls,
    rules,
)

DIMENSIONS: tuple[str, ...] = (
    "country",
    "region",
    "dma",
    "device_type",
    "platform",
    "genre",
    "rating",
    "live",
    "series",
    "channel",
    "content_id",
    "language",
    "segment",
    "break",
    "ifa_type",
)
"""Every catalog targeting dimension; all are answered by bitsets."""


def bit_ordinals(mask: int) -> npt.NDArray[np.intp]:
    """Ordinals of the set bits, ascending (numpy unpacks the bytes: linear in the size of
    the bitset, unlike peeling bits off a big int one by one, which is quadratic). The
    unpacked bits are read as booleans: numpy's ``nonzero`` on a ``bool`` array is several
    times faster than on the ``uint8`` one ``unpackbits`` returns (8,192 bits: ~2 us
    against ~15 us, numpy 2.4)."""
    if not mask:
        return np.empty(0, dtype=np.intp)
    raw = np.frombuffer(mask.to_bytes((mask.bit_length() + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little").view(np.bool_).nonzero()[0]


def _ordinals(ix: Iterable[int]) -> npt.NDArray[np.int32]:
    return np.fromiter(ix, dtype=np.int32)


Chunks = tuple[int, ...]
"""A bitset over the catalog's candidates, cut into chunks of ``chunk_bits`` bits: bit ``j`` of
chunk ``k`` is candidate ``k * chunk_bits + j``. A request evaluates its checks one chunk at a
time, best candidates first, and stops at the chunk where its candidate limit fills, so the
cost of a match follows the limit, not the catalog size."""

CHUNK_BITS = 8192
"""Candidates per chunk (1 KB integers: an AND costs little more than the interpreter's
dispatch, and a 100k catalog's ~180k candidates make 23 chunks)."""


def split_chunks(ordinals: npt.NDArray[np.int32], n: int, width: int) -> Chunks:
    """The bitset of ``ordinals`` (each below ``n``) as ``ceil(n / width)`` chunks."""
    count = -(-n // width)
    if not len(ordinals):
        return (0,) * count
    flags = np.zeros(count * width, dtype=np.bool_)
    flags[ordinals] = True
    raw = np.packbits(flags, bitorder="little").tobytes()
    step = width // 8
    return tuple(int.from_bytes(raw[i : i + step], "little") for i in range(0, len(raw), step))


def join_chunks(chunks: Chunks, width: int) -> int:
    """The chunks as one bitset."""
    step = width // 8
    return int.from_bytes(b"".join(c.to_bytes(step, "little") for c in chunks), "little")


def chunk_ordinals(chunks: Chunks, width: int) -> list[int]:
    """The set bits' ordinals, ascending."""
    out: list[int] = []
    for k, c in enumerate(chunks):
        if c:
            out.extend((bit_ordinals(c) + k * width).tolist())
    return out


@dataclass(slots=True)
class _FlightCache:
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    mask: Chunks = ()


@dataclass(slots=True)
class _PacedCache:
    paced: frozenset[str] | None = None
    mask: Chunks = ()


_DOMAIN_MASKS = 256
"""Advertiser-domain bitsets kept built (the blocklists in use are few)."""

_PASS_MASKS = 1024
"""Single-value targeting bitsets kept built, by (dimension, value named by a rule): at most
the catalog's targeted values plus one per dimension, 23 chunks of 1 KB each at 100k."""

_DURATION_MASKS = 256
"""Duration-fit bitsets kept built, by (check, bound): pods come in a few lengths."""

_MIME_MASKS = 64
"""``video.mimes`` bitsets kept built, by (playable types listed, https only)."""

_Step = tuple[bool, Reason, Chunks]
"""One request check: (keep or drop, reason, the bitset kept or dropped)."""

_DimCheck = tuple[Chunks | None, tuple[Chunks, ...], tuple[Chunks, ...]]
"""One targeting dimension: (its restricted candidates, the includes and the excludes of
the request's values)."""


@dataclass(frozen=True, slots=True)
class MatchPlan:
    """A request's checks with every bitset looked up: evaluated chunk by chunk."""

    before: tuple[_Step, ...]
    """Status, flight, position, durations: before targeting."""
    passes: tuple[Chunks, ...]
    """Targeting of the dimensions where the request has one value (or none): what passes."""
    targeting: tuple[_DimCheck, ...]
    """Targeting of the dimensions where it has several."""
    after: tuple[_Step, ...]
    """Kids, rating, blocklists, blocked attributes, media: after targeting."""


def _apply(
    steps: Sequence[_Step], k: int, m: int, count: int, dropped: dict[Reason, int]
) -> tuple[int, int]:
    """Chunk ``k`` of ``m`` (``count`` set bits) after ``steps``, and its popcount; adds what
    each step dropped to ``dropped``. Stops at an empty chunk. Only non-negative ints (``~x``
    and ``&`` with the negative result cost more); ``bit_count`` is paid only when a step
    drops something."""
    for keep, reason, bits in steps:
        new = m & bits[k] if keep else m ^ (m & bits[k])
        if new != m:
            n = new.bit_count()
            dropped[reason] = dropped.get(reason, 0) + count - n
            if not n:
                return 0, 0
            m, count = new, n
    return m, count


def _or_all(chunks: Iterable[int]) -> int:
    out = 0
    for c in chunks:
        out |= c
    return out


def _targeted(t: int, k: int, check: _DimCheck) -> int:
    """Chunk ``k`` of ``t`` without what one targeting dimension drops: the candidates it
    restricts that none of the request's values reaches, and those a value excludes."""
    restricted, includes, excludes = check
    if restricted is not None:
        out = t & restricted[k]  # restricted in this dimension...
        if out:
            for inc in includes:
                out ^= out & inc[k]  # ...and not reached by any value
            t ^= out
    for exc in excludes:
        t ^= t & exc[k]
    return t


DurationBound = int | frozenset[int] | tuple[SlotRule, ...]
"""The bound of one duration check: ms (pod, min, max), seconds (req) or slot rules (slots)."""


def _duration_fits(rule: str, bound: DurationBound, ms: int) -> bool:
    """Whether a creative of ``ms`` passes one duration check (see ``BitIndex._durations``)."""
    if rule == "slots":
        assert isinstance(bound, tuple)
        return any(s.fits(ms) for s in bound)
    if rule == "req":
        assert isinstance(bound, frozenset)
        return rounded_seconds(ms) in bound
    assert isinstance(bound, int)
    return ms >= bound if rule == "min" else ms <= bound  # "min", or "pod" and "max"


FIRST_ONLY = 1
LAST_ONLY = 2
_SLOT_ROLE = {Slot.ANY: 0, Slot.FIRST: FIRST_ONLY, Slot.LAST: LAST_ONLY}
CANDIDATE_LIMIT = 48
"""Default of the most candidates a decision scores (``VASTSERVER_CANDIDATE_LIMIT``). With
:data:`PER_SLOT_ROLE`, 48 chose the same pods as 64 on 1,000 benchmark requests at 1k and
10k line items, and 995 of 1,000 at 100k (the 5 others worth a millionth less); without
that limit, 48 changed a fifth of the pods at 100k, for worse."""
PER_TIE = 8
"""Creatives of one line item and length the selection keeps: the first takes its group's
place as any candidate does, the others none. They rotate per request, as the optimiser's
ties (``decide.rotation_keys``); a line item's ninth creative of one length never serves."""

PER_SLOT_ROLE = 8
"""Candidates kept that may only play first (and, apart, only last). A pod takes one of
each; spares cover caps, budgets and pacing, checked later. In a large catalog the
best-ranked line items are often first-slot sponsorships: at 100k line items they took 46 %
of the candidate limit while one could play, and pods came out 3.35 ads long of 4."""


@dataclass(frozen=True, slots=True)
class BitIndex:
    candidates: tuple[Candidate, ...]
    n_all: int
    chunk_bits: int
    all: Chunks
    all_counts: tuple[int, ...]
    """Popcount of each chunk of ``all`` (the last chunk may be partial)."""
    static_ok: Chunks
    """Line item and campaign active."""
    approved: Chunks
    """Creative approved."""
    position: Mapping[BreakPosition, Chunks]
    include: Mapping[str, Mapping[str, Chunks]]
    restricted: Mapping[str, Chunks]
    exclude: Mapping[str, Mapping[str, Chunks]]
    rating_ok: Mapping[str, Chunks]
    alcohol: Chunks
    category: Mapping[str, Chunks]
    """IAB code (and its top-level prefix) -> candidates whose advertiser or creative has it."""
    attribute: Mapping[int, Chunks]
    """AdCOM creative attribute -> candidates whose creative has it (declared or derived:
    ``Creative.attributes``); only the codes some creative has."""
    domain: Mapping[str, npt.NDArray[np.int32]]
    """Advertiser domain -> its candidates' ordinals. A few candidates in a bitset as wide
    as the catalog: kept as ordinals and built when a blocklist names the domain (dense, the
    domains of a 100k catalog took 140 MB)."""
    vpaid: Chunks
    ctv_playable: Chunks
    ctv_https: Chunks
    any_playable: Chunks
    any_https: Chunks
    by_mime: Mapping[str, tuple[Chunks, Chunks]]
    """Playable MIME type (lowercase) -> (candidates with a rendition of that type, those
    with an https one). Third-party tags are in every type's sets (their media are the
    tag's; an https tag counts as https media), for requests listing ``video.mimes``."""
    wrappers: tuple[Chunks, Chunks]
    """Third-party tags (and the https ones): the ``by_mime`` sets of a type no creative
    of the catalog has; the first, the ads served as ``<Wrapper>`` (``video.protocols``)."""
    duration: Mapping[int, Chunks]
    residual_flags: bytes
    """One byte per candidate: 1 for dayparts or key-value rules (checked one by one)."""
    group: tuple[int, ...]
    """Separation-group number of each candidate (for the per-group limit)."""
    n_groups: int
    slot_role: bytes
    """One byte per candidate: :data:`FIRST_ONLY`, :data:`LAST_ONLY` or 0 (any slot), for
    the per-role limit."""
    flights: tuple[tuple[datetime, datetime, npt.NDArray[np.int32]], ...]
    """(start, end, ordinals) per distinct flight window; the in-flight bitset is built from
    them at each flight boundary (as bitsets they took 200 MB on a 100k catalog)."""
    boundaries: tuple[datetime, ...]
    line_item_no: npt.NDArray[np.int32]
    """The number of each candidate's line item (in ``line_item_nos``)."""
    tie: tuple[int, ...]
    """Each candidate's tie number, -1 for none: the creatives of one line item of the same
    whole-second length (as the pod optimiser counts them) share one, so the selection
    keeps them together as one place of their group (:data:`PER_TIE`)."""
    line_item_nos: Mapping[str, int]
    _flight_cache: _FlightCache = field(default_factory=_FlightCache)
    _paced_cache: _PacedCache = field(default_factory=_PacedCache)
    _domain_masks: dict[str, Chunks] = field(default_factory=dict)
    _duration_masks: dict[tuple[str, DurationBound], Chunks] = field(default_factory=dict)
    _passes: dict[tuple[str, tuple[str, ...]], Chunks] = field(default_factory=dict)
    _mime_masks: dict[tuple[frozenset[str], bool], Chunks] = field(default_factory=dict)

    def _chunks(self, ordinals: npt.NDArray[np.int32]) -> Chunks:
        return split_chunks(ordinals, self.n_all, self.chunk_bits)

    # ------------------------------------------------------------------ flight

    def in_flight(self, now: datetime) -> Chunks:
        """Candidates whose line item and campaign flights contain ``now``; cached until the
        next flight boundary."""
        c = self._flight_cache
        if (
            c.valid_from is not None
            and c.valid_until is not None
            and c.valid_from <= now < c.valid_until
        ):
            return c.mask
        live = [ords for start, end, ords in self.flights if start <= now < end]
        mask = self._chunks(np.concatenate(live) if live else _ordinals(()))
        i = bisect.bisect_right(self.boundaries, now)
        prev = self.boundaries[i - 1] if i > 0 else datetime.min.replace(tzinfo=now.tzinfo)
        nxt = (
            self.boundaries[i]
            if i < len(self.boundaries)
            else datetime.max.replace(tzinfo=now.tzinfo)
        )
        c.valid_from, c.valid_until, c.mask = prev, nxt, mask
        return mask

    # ------------------------------------------------------------------ matching

    def plan(self, req: AdRequest, env: StageEnv) -> MatchPlan:
        """The request's checks, in the order of the per-candidate filters so the counts
        attribute each candidate to the same first failing check (residual checks
        excepted)."""
        b = req.brk
        before: list[_Step] = [
            (True, Reason.INACTIVE, self.static_ok),
            (True, Reason.OUT_OF_FLIGHT, self.in_flight(env.now)),
            (True, Reason.BREAK_POSITION, self.position[b.position]),
            (True, Reason.CREATIVE_NOT_APPROVED, self.approved),
        ]
        for reason, rule, bound in (
            (Reason.LONGER_THAN_POD, "pod", b.pod_duration_ms),
            (Reason.SHORTER_THAN_MIN, "min", b.min_ad_duration_ms),
            (Reason.LONGER_THAN_MAX, "max", b.max_ad_duration_ms),
            (Reason.DURATION_NOT_REQUIRED, "req", b.required_durations_s),
            (Reason.FITS_NO_SLOT, "slots", b.slots),
        ):
            if bound is not None:
                before.append((True, reason, self._durations(rule, bound)))
        passes: list[Chunks] = []
        targeting: list[_DimCheck] = []
        for dim in DIMENSIONS:
            values = request_values(req, dim)
            if len(values) <= 1:  # one value (or none): one cached bitset
                got = self._pass(dim, values)
                if got is not None:
                    passes.append(got)
                continue
            check = self._dim_check(dim, values)
            if check is not None:
                targeting.append(check)
        after: list[_Step] = []
        rating = req.content.rating or UNKNOWN_CONTENT_RATING
        if req.content.kids or rating in KIDS_RATINGS:
            after.append((False, Reason.KIDS_CONTENT, self.alcohol))
        after.append((True, Reason.CONTENT_RATING, self.rating_ok[rating]))
        for d in env.blocked_domains:
            after.append((False, Reason.BLOCKED_ADVERTISER, self._domain_mask(d)))
        for code in env.blocked_categories:
            got = self.category.get(code)
            if got is not None:
                after.append((False, Reason.BLOCKED_CATEGORY, got))
        for attr in req.blocked_attributes:  # OpenRTB video.battr
            got_attr = self.attribute.get(attr)
            if got_attr is not None:
                after.append((False, Reason.BLOCKED_ATTRIBUTE, got_attr))
        # OpenRTB video.protocols: the ad forms (inline, wrapper) the player takes
        if not req.inline_ads:
            after.append((True, Reason.PROTOCOL_NOT_ACCEPTED, self.wrappers[0]))
        if not req.wrapper_ads:
            after.append((False, Reason.PROTOCOL_NOT_ACCEPTED, self.wrappers[0]))
        if req.device.device_type in CTV_DEVICE_TYPES:
            after.append((False, Reason.VPAID_ON_CTV, self.vpaid))
            after.append((True, Reason.NO_PLAYABLE_MEDIA, self.ctv_playable))
            playable, secure = CTV_MIMES, self.ctv_https
        else:
            after.append((True, Reason.NO_PLAYABLE_MEDIA, self.any_playable))
            playable, secure = PLAYABLE_MIMES, self.any_https
        if req.mimes is not None:
            # Only the renditions of the listed types count, for being playable and secure.
            allowed = playable & req.mimes
            after.append((True, Reason.MIME_TYPE, self._mime_mask(allowed, secure=False)))
            secure = self._mime_mask(allowed, secure=True)
        if req.require_https:
            after.append((True, Reason.INSECURE_MEDIA, secure))
        return MatchPlan(tuple(before), tuple(passes), tuple(targeting), tuple(after))

    def match_chunk(self, plan: MatchPlan, k: int, dropped: dict[Reason, int]) -> int:
        """Chunk ``k`` of the candidates passing every check of ``plan``; adds how many of the
        chunk each check dropped to ``dropped``."""
        # Only non-negative ints (``~x`` and ``&`` with the negative result cost more), and
        # ``bit_count`` is paid only when a step drops something (``count`` tracks the
        # popcount of ``m``).
        m, count = _apply(plan.before, k, self.all[k], self.all_counts[k], dropped)
        if not m:
            return 0
        t = m
        for ok in plan.passes:
            t &= ok[k]
        for check in plan.targeting:
            t = _targeted(t, k, check)
        if t != m:
            n = t.bit_count()
            dropped[Reason.TARGETING] = dropped.get(Reason.TARGETING, 0) + count - n
            if not n:
                return 0
            m, count = t, n
        return _apply(plan.after, k, m, count, dropped)[0]

    def match(self, req: AdRequest, env: StageEnv) -> tuple[int, dict[Reason, int]]:
        """Candidates (over the whole catalog) passing every bitset-answerable check, and
        how many each check dropped."""
        plan = self.plan(req, env)
        dropped: dict[Reason, int] = {}
        chunks = tuple(self.match_chunk(plan, k, dropped) for k in range(len(self.all)))
        return join_chunks(chunks, self.chunk_bits), dropped

    def _durations(self, rule: str, bound: DurationBound) -> Chunks:
        """Candidates whose duration passes one duration check of a break: ``pod`` (fits in
        ``bound`` ms), ``min``/``max`` (at least / at most ``bound`` ms) or ``req`` (rounds to
        one of the ``bound`` seconds). Kept per (rule, bound): pods come in a few lengths."""
        key = (rule, bound)
        cache = self._duration_masks
        mask = cache.get(key)
        if mask is None:
            acc = [0] * len(self.all)
            for ms, bits in self.duration.items():
                if _duration_fits(rule, bound, ms):
                    for k, c in enumerate(bits):
                        acc[k] |= c
            mask = tuple(acc)
            if len(cache) >= _DURATION_MASKS:
                cache.clear()
            cache[key] = mask
        return mask

    def _dim_check(self, dim: str, values: tuple[str, ...]) -> _DimCheck | None:
        """The bitsets a dimension's targeting needs for the request's ``values``; None when
        no rule of the dimension can drop anything for them."""
        restricted = self.restricted.get(dim)
        includes: tuple[Chunks, ...] = ()
        if restricted is not None:
            inc = self.include[dim]
            includes = tuple(x for v in values if (x := inc.get(v)) is not None)
        exc = self.exclude.get(dim)
        excludes: tuple[Chunks, ...] = ()
        if exc:
            excludes = tuple(x for v in values if (x := exc.get(v)) is not None)
        if restricted is None and not excludes:
            return None
        return restricted, includes, excludes

    def _pass(self, dim: str, values: tuple[str, ...]) -> Chunks | None:
        """The candidates a dimension lets through for ``values`` (none or one), or None
        when it drops nothing for them. Kept per (dimension, value named by a rule): values
        no rule names all pass the same candidates and share one entry, so a long tail of
        content ids or segments does not crowd the cache."""
        restricted = self.restricted.get(dim)
        exc = self.exclude.get(dim)
        v = values[0] if values else None
        named = v is not None and (
            (restricted is not None and v in self.include[dim]) or (exc is not None and v in exc)
        )
        if restricted is None and not named:
            return None
        key = (dim, values if named else ())
        cache = self._passes
        mask = cache.get(key)
        if mask is None:
            check = self._dim_check(dim, key[1])
            assert check is not None  # restricted, or the value is excluded
            mask = tuple(_targeted(m, k, check) for k, m in enumerate(self.all))
            if len(cache) >= _PASS_MASKS:
                cache.clear()
            cache[key] = mask
        return mask

    def _mime_mask(self, mimes: frozenset[str], *, secure: bool) -> Chunks:
        """Candidates with a rendition (``secure``: an https one) of one of ``mimes``, and
        third-party tags (``secure``: https ones). Kept per set: callers send a few."""
        key = (mimes, secure)
        cache = self._mime_masks
        mask = cache.get(key)
        if mask is None:
            k = int(secure)
            parts = [self.wrappers[k], *(self.by_mime[m][k] for m in mimes if m in self.by_mime)]
            mask = tuple(_or_all(chunk) for chunk in zip(*parts, strict=True))
            if len(cache) >= _MIME_MASKS:
                cache.clear()
            cache[key] = mask
        return mask

    def paced_mask(self, paced: frozenset[str]) -> Chunks:
        """The candidates of the line items in ``paced`` (a pacing pass's set: rebuilt when
        another set object comes, every pacing period, not per request)."""
        cache = self._paced_cache
        if cache.paced is not paced:
            cache.mask, cache.paced = self._chunks(self._line_item_ordinals(paced)), paced
        return cache.mask

    def _line_item_ordinals(
        self, line_items: Iterable[str], also: Iterable[int] = ()
    ) -> npt.NDArray[np.int32]:
        """The ordinals of every candidate of ``line_items``, and ``also``, ascending."""
        nos = self.line_item_nos
        wanted = np.fromiter((nos[li] for li in line_items if li in nos), dtype=np.int32)
        ords = np.flatnonzero(np.isin(self.line_item_no, wanted)).astype(np.int32)
        more = np.fromiter(also, dtype=np.int32)
        return np.union1d(ords, more).astype(np.int32) if len(more) else ords

    def _pre_gated(
        self,
        m: int,
        k: int,
        paced: Chunks | None,
        refused: Chunks | None,
        pre: PreGate,
        dropped: dict[Reason, int],
    ) -> int:
        """Chunk ``k``'s matches ``m`` less those ``pre`` refuses among the ones it may refuse
        (in ``paced`` or ``refused``), each counted under its reason."""
        look = (m & paced[k] if paced is not None else 0) | (
            m & refused[k] if refused is not None else 0
        )
        if not look:
            return m
        width = self.chunk_bits
        cands = self.candidates
        off: list[int] = []
        for j in bit_ordinals(look).tolist():
            reason = pre.check(cands[k * width + j])
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                off.append(j)
        if not off:
            return m
        return m ^ split_chunks(np.asarray(off, dtype=np.int32), width, width)[0]

    def _domain_mask(self, domain: str) -> Chunks:
        cache = self._domain_masks
        mask = cache.get(domain)
        if mask is None:
            ords = self.domain.get(domain)
            mask = self._chunks(_ordinals(()) if ords is None else ords)
            if len(cache) >= _DOMAIN_MASKS:
                cache.clear()
            cache[domain] = mask
        return mask

    def survivors(
        self,
        req: AdRequest,
        env: StageEnv,
        limit: int | None = None,
        per_group: int = 3,
        per_slot_role: int = PER_SLOT_ROLE,
        ordinals: list[int] | None = None,
    ) -> tuple[list[Candidate], dict[Reason, int]]:
        """Candidates passing every pre-delivery check (bitsets, then residual rules one by
        one) and the drop counts by reason.

        Candidates are numbered best first (tier, then CPM x tier weight: an upper bound on
        value, since a prediction is at most 1), so with a ``limit`` the scan keeps the
        ``limit`` best, at most ``per_group`` per separation group (a pod holds one per
        group; spares cover duration fit) and at most ``per_slot_role`` that may only play
        first, and as many that may only play last (a pod has one first and one last slot;
        spares cover caps and budgets, checked later), with slot rules (a structured pod)
        at most each distinct rule's share of the limit, each kept candidate taking room from
        one rule it fits (:class:`_SlotQuota`), and stops at the chunk where the limit fills:
        what follows was not examined and counts as ``outranked``, whatever it would have
        failed. So the drop counts by check cover the chunks examined, and the work is
        bounded by the limit, not by the catalog or how many candidates match.

        The request's :class:`PreGate` (pacing, refusals of a first counter fetch) is applied
        to the matches before the quotas: a throttled or refused candidate takes no place.
        ``ordinals``, when given, receives the kept candidates' ordinals."""
        plan = self.plan(req, env)
        dropped: dict[Reason, int] = {}
        out: list[Candidate] = []
        pre = env.pre
        paced = self.paced_mask(pre.paced) if pre.paced else None
        refused = (
            self._chunks(self._line_item_ordinals(pre.refused_lines, pre.refused_at))
            if pre.refused_at or pre.refused_lines
            else None
        )
        gated = paced is not None or refused is not None
        check_all = bool(req.duration_floors) or (
            req.floor_cpm_per_s is not None
            or req.floor_cpm is not None
            or req.slot_floors is not None
        )
        residual = self.residual_flags
        cands = self.candidates
        groups = self.group
        width = self.chunk_bits
        # A candidate whose group already keeps per_group candidates cannot make the cut:
        # skipped without a look (no residual check), so the work stays bounded when a few
        # groups hold most of the matches. (It used to be skipped after 2 x per_group
        # matches of its group, counted before their residual checks: when those all failed
        # one, dayparts or key-values, a candidate that passes was lost as outranked.)
        n_chunks = len(self.all)
        if limit is None:
            for k in range(n_chunks):
                m = self.match_chunk(plan, k, dropped)
                if m and gated:
                    m = self._pre_gated(m, k, paced, refused, pre, dropped)
                for i in (bit_ordinals(m) + k * width).tolist() if m else ():
                    c = cands[i]
                    if check_all or residual[i]:
                        reason = residual_check(req, c, env)
                        if reason is not None:
                            dropped[reason] = dropped.get(reason, 0) + 1
                            continue
                    out.append(c)
                    if ordinals is not None:
                        ordinals.append(i)
            return out, dropped
        # Per group: candidates kept (a full group's later matches are passed over unread).
        per = [0] * self.n_groups
        ties = self.tie
        tie_kept: dict[int, int] = {}  # tie number -> its creatives kept
        roles = self.slot_role
        role_kept = [0, 0, 0]  # any (unlimited), first only, last only
        rules = _SlotQuota(req.brk.slots, limit) if req.brk.slots is not None else None
        examined = failed = 0  # matches in the chunks evaluated; of them, residual drops
        k = 0
        # (with slot rules each kept candidate takes room from one rule, so the rules are all
        # full by the time the limit is; ``full`` stops the scan should the shares fall short)
        while k < n_chunks and len(out) < limit and not (rules is not None and rules.full):
            m = self.match_chunk(plan, k, dropped)
            if m and gated:
                m = self._pre_gated(m, k, paced, refused, pre, dropped)
            k += 1
            if not m:
                continue
            ords = (bit_ordinals(m) + (k - 1) * width).tolist()
            examined += len(ords)
            for i in ords:
                t = ties[i]
                # another creative of a line item and length already kept takes no place of
                # the group's (ties rotate in the optimiser)
                sibling = t >= 0 and rules is None and t in tie_kept
                if sibling:
                    if tie_kept[t] >= PER_TIE:
                        continue
                else:
                    r = roles[i]
                    if r and role_kept[r] >= per_slot_role:
                        continue  # before the group's count: it must not crowd out the group
                    if rules is not None and not rules.room(cands[i].creative.duration_ms):
                        continue  # the same: every slot it fits has its share
                    g = groups[i]
                    if per[g] >= per_group:
                        continue  # the group is full: no residual check can change that
                c = cands[i]
                if check_all or residual[i]:
                    reason = residual_check(req, c, env)
                    if reason is not None:
                        dropped[reason] = dropped.get(reason, 0) + 1
                        failed += 1
                        continue
                if sibling:
                    tie_kept[t] += 1
                else:
                    per[g] += 1
                    role_kept[r] += 1
                    if t >= 0:
                        tie_kept[t] = 1
                    if rules is not None:
                        rules.keep(c.creative.duration_ms)
                out.append(c)
                if ordinals is not None:
                    ordinals.append(i)
                if len(out) >= limit:
                    break
        # Every examined match neither kept nor dropped by a residual rule, and every
        # candidate of the chunks not evaluated, was outranked.
        outranked = examined - len(out) - failed + sum(self.all_counts[k:])
        if outranked:
            dropped[Reason.OUTRANKED] = outranked
        return out, dropped


class _SlotQuota:
    """A structured pod's slots of different rules share the candidate limit: each distinct
    rule keeps at most its share of it (``limit`` x its slots / all slots, rounded up), so a
    slot whose ads rank low (15 s ads worth less than 30 s ones) still gets candidates.

    Each kept candidate is charged to ONE rule it fits, so the shares add up to (about) the
    limit even when rules overlap: a 15 s ad fits both 'up to 30 s' and 'exactly 15 s' and
    counting it for both would fill both shares with half the limit, then skip everything
    else while the scan went on over the whole catalog. A candidate is kept when the kept
    ones plus it can still be charged within the shares: if every rule it fits is full, a
    kept candidate charged to one of them moves to another rule it fits with room left
    (an augmenting path over the few rules), so which rule took an earlier ad never costs a
    later one its place. Once a kind of candidate (the set of rules it fits) cannot be
    charged, it never can again (more kept candidates only take room), so that answer is
    remembered; :attr:`full` says no rule has room, and the scan stops."""

    __slots__ = ("charged", "closed", "fits", "free", "quota", "rules")

    def __init__(self, slots: tuple[SlotRule, ...], limit: int) -> None:
        self.rules = list(dict.fromkeys(slots))
        self.quota = [-(-limit * slots.count(rule) // len(slots)) for rule in self.rules]
        self.free = list(self.quota)  # per rule: room left
        # per kind (the rules a duration fits): how many kept candidates are charged to each rule
        self.charged: dict[tuple[int, ...], list[int]] = {}
        self.closed: set[tuple[int, ...]] = set()  # kinds that can no longer be charged
        self.fits: dict[int, tuple[int, ...]] = {}  # duration (ms) -> the rules it fits

    @property
    def full(self) -> bool:
        return not any(self.free)

    def _fits(self, ms: int) -> tuple[int, ...]:
        f = self.fits.get(ms)
        if f is None:
            f = self.fits[ms] = tuple(n for n, rule in enumerate(self.rules) if rule.fits(ms))
        return f

    def _path(self, kind: tuple[int, ...]) -> list[tuple[tuple[int, ...], int, int]] | None:
        """How to make room for a candidate of ``kind``: the moves (kind of a kept candidate,
        from rule, to rule), the last onto a rule with room left; None if there is no way.
        Empty when a rule of ``kind`` has room."""
        free = self.free
        if any(free[n] for n in kind):
            return []
        if kind in self.closed:
            return None
        came: dict[int, tuple[tuple[int, ...], int] | None] = dict.fromkeys(kind)
        todo = list(kind)
        for r in todo:  # breadth first; grows as rules are reached
            for other, counts in self.charged.items():
                if not counts[r]:
                    continue
                for to in other:
                    if to in came:
                        continue
                    came[to] = (other, r)
                    if free[to]:
                        moves: list[tuple[tuple[int, ...], int, int]] = []
                        at, step = to, came[to]
                        while step is not None:
                            moves.append((step[0], step[1], at))
                            at = step[1]
                            step = came[at]
                        return moves
                    todo.append(to)
        self.closed.add(kind)
        return None

    def room(self, ms: int) -> bool:
        return self._path(self._fits(ms)) is not None

    def keep(self, ms: int) -> None:
        kind = self._fits(ms)
        moves = self._path(kind)
        assert moves is not None  # room() said so
        for other, frm, to in moves:
            counts = self.charged[other]
            counts[frm] -= 1
            counts[to] += 1
        # the rule freed by the moves, else (no moves) the one of its rules with most room
        rule = moves[-1][1] if moves else max(kind, key=self.free.__getitem__)
        end = moves[0][2] if moves else rule
        self.free[end] -= 1
        counts = self.charged.setdefault(kind, [0] * len(self.rules))
        counts[rule] += 1


def residual_check(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """What bitsets cannot answer: key-values, dayparts, the price floors."""
    return rules(req, c, env) or floor(req, c, env)


def _category_keys(codes: Iterable[str]) -> set[str]:
    keys: set[str] = set()
    for code in codes:
        keys.add(code)
        keys.add(code.split("-", 1)[0])
    return keys


def build_bit_index(
    catalog: Catalog, candidates: Sequence[Candidate], chunk_bits: int = CHUNK_BITS
) -> BitIndex:
    if chunk_bits <= 0 or chunk_bits % 8:
        raise ValueError(f"chunk_bits must be a positive multiple of 8, not {chunk_bits}")
    n = len(candidates)
    position: dict[BreakPosition, set[int]] = {p: set() for p in BreakPosition}
    include: dict[str, dict[str, set[int]]] = {d: defaultdict(set) for d in DIMENSIONS}
    exclude: dict[str, dict[str, set[int]]] = {d: defaultdict(set) for d in DIMENSIONS}
    restricted: dict[str, set[int]] = {d: set() for d in DIMENSIONS}
    rating_ok: dict[str, set[int]] = {r: set() for r in RATINGS}
    category: dict[str, set[int]] = defaultdict(set)
    attribute: dict[int, set[int]] = defaultdict(set)
    domain: dict[str, set[int]] = defaultdict(set)
    duration: dict[int, set[int]] = defaultdict(set)
    static_ok: set[int] = set()
    approved: set[int] = set()
    alcohol: set[int] = set()
    vpaid: set[int] = set()
    ctv_playable: set[int] = set()
    ctv_https: set[int] = set()
    any_playable: set[int] = set()
    any_https: set[int] = set()
    by_mime: dict[str, tuple[set[int], set[int]]] = defaultdict(lambda: (set(), set()))
    wrappers: tuple[set[int], set[int]] = (set(), set())
    residual: set[int] = set()
    flights: dict[tuple[datetime, datetime], set[int]] = defaultdict(set)
    boundaries: set[datetime] = set()

    for i, c in enumerate(candidates):
        li, cr, camp, adv = c.line_item, c.creative, c.campaign, c.advertiser
        if li.status == "active" and camp.status == "active":
            static_ok.add(i)
        if cr.approved:
            approved.add(i)
        start, end = max(li.start, camp.start), min(li.end, camp.end)
        if start < end:
            flights[(start, end)].add(i)
        boundaries.update((li.start, li.end, camp.start, camp.end))
        for p in li.positions:
            position[p].add(i)
        for dim in DIMENSIONS:
            rule = li.targeting.rules.get(dim)
            if rule is None:
                continue
            if rule.include:
                restricted[dim].add(i)
                for v in rule.include:
                    include[dim][v].add(i)
            for v in rule.exclude:
                exclude[dim][v].add(i)
        rank = RATING_RANK.get(cr.rating, 0)
        for r in RATINGS:
            if rank <= RATING_RANK[r]:
                rating_ok[r].add(i)
        codes = c.categories
        if any(code in ALCOHOL_CATEGORIES for code in codes):
            alcohol.add(i)
        for key in _category_keys(codes):
            category[key].add(i)
        for attr in cr.attributes:
            attribute[attr].add(i)
        domain[adv.domain].add(i)
        if is_vpaid(cr.api_framework):
            vpaid.add(i)
        ctv = playable_urls(cr, CTV_MIMES)
        anyp = playable_urls(cr, PLAYABLE_MIMES)
        if ctv:
            ctv_playable.add(i)
        if any(is_https(u) for u in ctv):
            ctv_https.add(i)
        if anyp:
            any_playable.add(i)
        if any(is_https(u) for u in anyp):
            any_https.add(i)
        if cr.vast_tag_url is not None:
            wrappers[0].add(i)
            if is_https(cr.vast_tag_url):
                wrappers[1].add(i)
        else:  # a tag's own renditions are never played (see playable_urls)
            for rend in cr.renditions:
                mime = rend.mime.lower()
                if mime in PLAYABLE_MIMES:
                    by_mime[mime][0].add(i)
                    if is_https(rend.url):
                        by_mime[mime][1].add(i)
        duration[cr.duration_ms].add(i)
        if li.targeting.dayparts or li.targeting.key_values:
            residual.add(i)

    tie_keys: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        tie_keys[(c.line_item.id, capacity_seconds(c.creative.duration_ms))].append(i)
    tie = [-1] * n
    for t, members in enumerate(m for m in tie_keys.values() if len(m) > 1):
        for i in members:
            tie[i] = t
    line_item_nos: dict[str, int] = {}
    line_item_no = np.fromiter(
        (line_item_nos.setdefault(c.line_item.id, len(line_item_nos)) for c in candidates),
        dtype=np.int32,
        count=n,
    )
    group_ids: dict[str, int] = {}
    group = tuple(group_ids.setdefault(separation_group(c), len(group_ids)) for c in candidates)

    zero = split_chunks(_ordinals(()), n, chunk_bits)

    def chunks(ix: Iterable[int]) -> Chunks:
        ords = _ordinals(ix)
        return split_chunks(ords, n, chunk_bits) if len(ords) else zero

    def bitmap(m: Mapping[str, set[int]]) -> dict[str, Chunks]:
        return {k: chunks(v) for k, v in m.items()}

    every = split_chunks(np.arange(n, dtype=np.int32), n, chunk_bits)
    return BitIndex(
        candidates=tuple(candidates),
        n_all=n,
        chunk_bits=chunk_bits,
        all=every,
        all_counts=tuple(c.bit_count() for c in every),
        static_ok=chunks(static_ok),
        approved=chunks(approved),
        position={p: chunks(s) for p, s in position.items()},
        include={d: bitmap(m) for d, m in include.items()},
        restricted={d: chunks(s) for d, s in restricted.items() if s},
        exclude={d: bitmap(m) for d, m in exclude.items() if m},
        rating_ok=bitmap(rating_ok),
        alcohol=chunks(alcohol),
        category=bitmap(category),
        attribute={a: chunks(s) for a, s in attribute.items()},
        domain={d: _ordinals(ix) for d, ix in domain.items()},
        vpaid=chunks(vpaid),
        ctv_playable=chunks(ctv_playable),
        ctv_https=chunks(ctv_https),
        any_playable=chunks(any_playable),
        any_https=chunks(any_https),
        by_mime={m: (chunks(a), chunks(b)) for m, (a, b) in by_mime.items()},
        wrappers=(chunks(wrappers[0]), chunks(wrappers[1])),
        duration={ms: chunks(s) for ms, s in duration.items()},
        residual_flags=bytes(i in residual for i in range(len(candidates))),
        group=group,
        n_groups=len(group_ids),
        slot_role=bytes(_SLOT_ROLE[c.line_item.slot] for c in candidates),
        flights=tuple((s, e, _ordinals(ix)) for (s, e), ix in flights.items()),
        boundaries=tuple(sorted(boundaries)),
        line_item_no=line_item_no,
        line_item_nos=line_item_nos,
        tie=tuple(tie),
    )


@dataclass(frozen=True, slots=True)
class CatalogIndex:
    """What a catalog snapshot serves from: every candidate and the bitsets over them."""

    catalog: Catalog
    bits: BitIndex

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return self.bits.candidates

    def all_candidates(self, position: BreakPosition) -> list[Candidate]:
        """Candidates whose line item may play at ``position`` (no other check)."""
        bits = self.bits
        return [
            bits.candidates[i] for i in chunk_ordinals(bits.position[position], bits.chunk_bits)
        ]

    def select(
        self,
        req: AdRequest,
        env: StageEnv,
        limit: int | None = None,
        ordinals: list[int] | None = None,
    ) -> tuple[list[Candidate], dict[Reason, int]]:
        """The best ``limit`` candidates passing every pre-delivery check (all without a
        limit), and drop counts by reason (``outranked`` for those beyond the limit);
        ``ordinals`` receives the kept ones' ordinals (for :attr:`PreGate.refused_at`)."""
        return self.bits.survivors(req, env, limit, ordinals=ordinals)


def upper_bound(c: Candidate) -> float:
    """The most a candidate can be worth: its best slot price x tier weight (predictions
    are <= 1)."""
    li = c.line_item
    price = max(effective_cpm(c), li.first_slot_price or 0.0, li.last_slot_price or 0.0)
    return price * TIER_WEIGHT[li.tier]


def build_index(catalog: Catalog) -> CatalogIndex:
    """Number candidates best first (tier, upper bound, then id) so a limited scan of the
    matching bitset finds the most valuable candidates first."""
    ranked = sorted(
        all_candidates(catalog),
        key=lambda c: (-int(c.line_item.tier), -upper_bound(c), c.line_item.id, c.creative.id),
    )
    return CatalogIndex(catalog, build_bit_index(catalog, ranked))
