"""Bitset matching: the request-independent part of every filter, precomputed at catalog load.

Each candidate (line item x creative) has an ordinal; a set of candidates is a Python ``int``
used as a bitset. At load time we build, for every targeting dimension and value, every
content rating, category, domain, duration, media capability and flight boundary, the bitset
of candidates it admits or excludes. A request then costs a few dozen big-int AND/OR/NOT
operations (microseconds for 100k candidates) plus a per-candidate look only at the few
candidates with rules no bitset can answer (dayparts, key-values, price floors): the work
grows with the number of *matching* candidates, not the catalog size.

The per-candidate filters in :mod:`stages` remain the specification: ``tests/test_matching``
checks on random catalogs and requests that a candidate survives the bitsets (plus
:func:`residual`) exactly when it survives those filters, and the ``debug`` explanation uses
the filters to name the reason for every candidate the bitsets dropped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
)
from vastserver.pipeline.candidates import (
    Candidate,
    all_candidates,
    request_values,
    separation_group,
)
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.pod import rounded_seconds
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.scoring import TIER_WEIGHT, effective_cpm
from vastserver.pipeline.stages import (
    ALCOHOL_CATEGORIES,
    CTV_DEVICE_TYPES,
    CTV_MIMES,
    PLAYABLE_MIMES,
    UNKNOWN_CONTENT_RATING,
    StageEnv,
    _in_daypart,
    floor,
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
    the bitset, unlike peeling bits off a big int one by one, which is quadratic)."""
    if not mask:
        return np.empty(0, dtype=np.intp)
    raw = np.frombuffer(mask.to_bytes((mask.bit_length() + 7) // 8, "little"), dtype=np.uint8)
    return np.flatnonzero(np.unpackbits(raw, bitorder="little"))


def mask_of(ordinals: npt.NDArray[np.int32], n: int) -> int:
    """The bitset of ``ordinals`` (each below ``n``): linear in ``n``, one allocation."""
    if not len(ordinals):
        return 0
    flags = np.zeros(n, dtype=np.bool_)
    flags[ordinals] = True
    return int.from_bytes(np.packbits(flags, bitorder="little").tobytes(), "little")


def _ordinals(ix: Iterable[int]) -> npt.NDArray[np.int32]:
    return np.fromiter(ix, dtype=np.int32)


def _bits(ix: Iterable[int]) -> int:
    """A bitset from ordinals (linear, unlike repeated big-int ORs)."""
    ords = _ordinals(ix)
    return mask_of(ords, int(ords.max()) + 1) if len(ords) else 0


def iter_bits(mask: int) -> list[int]:
    return bit_ordinals(mask).tolist()  # type: ignore[no-any-return]


_CHUNK_BITS = 4096
_CHUNK_MASK = (1 << _CHUNK_BITS) - 1


def ordinal_chunks(mask: int) -> Iterator[list[int]]:
    """The set bits' ordinals, ascending, a chunk of :data:`_CHUNK_BITS` bits at a time: a
    scan that stops early never unpacks the rest of a large bitset."""
    offset = 0
    while mask:
        low = mask & _CHUNK_MASK
        if low:
            yield (bit_ordinals(low) + offset).tolist()
        mask >>= _CHUNK_BITS
        offset += _CHUNK_BITS


@dataclass(slots=True)
class _FlightCache:
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    mask: int = 0


_DOMAIN_MASKS = 256
"""Advertiser-domain bitsets kept built (the blocklists in use are few)."""


@dataclass(frozen=True, slots=True)
class BitIndex:
    candidates: tuple[Candidate, ...]
    all: int
    n_all: int
    """``all.bit_count()``."""
    static_ok: int
    """Line item and campaign active, creative approved."""
    position: Mapping[BreakPosition, int]
    include: Mapping[str, Mapping[str, int]]
    restricted: Mapping[str, int]
    exclude: Mapping[str, Mapping[str, int]]
    rating_ok: Mapping[str, int]
    alcohol: int
    category: Mapping[str, int]
    """IAB code (and its top-level prefix) -> candidates whose advertiser or creative has it."""
    domain: Mapping[str, npt.NDArray[np.int32]]
    """Advertiser domain -> its candidates' ordinals. A few candidates in a bitset as wide
    as the catalog: kept as ordinals and built when a blocklist names the domain (dense, the
    domains of a 100k catalog took 140 MB)."""
    vpaid: int
    ctv_playable: int
    ctv_https: int
    any_playable: int
    any_https: int
    duration: Mapping[int, int]
    residual: int
    """Candidates with dayparts or key-value rules: checked one by one."""
    residual_flags: bytes
    """``residual`` as one byte per candidate (testing bit i of a big int costs O(size))."""
    group: tuple[int, ...]
    """Separation-group number of each candidate (for the per-group limit)."""
    flights: tuple[tuple[datetime, datetime, npt.NDArray[np.int32]], ...]
    """(start, end, ordinals) per distinct flight window; the in-flight bitset is built from
    them at each flight boundary (as bitsets they took 200 MB on a 100k catalog)."""
    boundaries: tuple[datetime, ...]
    _flight_cache: _FlightCache = field(default_factory=_FlightCache)
    _domain_masks: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ flight

    def in_flight(self, now: datetime) -> int:
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
        mask = mask_of(np.concatenate(live), self.n_all) if live else 0
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

    def match(self, req: AdRequest, env: StageEnv) -> tuple[int, dict[Reason, int]]:
        """Candidates passing every bitset-answerable check, and how many each check dropped.

        Steps run in the order of the per-candidate filters so the counts attribute each
        candidate to the same first failing check (residual checks excepted)."""
        dropped: dict[Reason, int] = {}
        # Only non-negative ints: ``~x`` on a 100k-bit int and ``&`` with the negative result
        # cost ~10x a plain ``&``, and so does ``bit_count``, paid only when a step drops
        # something (``count`` tracks the popcount of ``m``).
        m = self.all
        count = self.n_all

        def note(new: int, reason: Reason) -> None:
            nonlocal m, count
            if new != m:
                n = new.bit_count()
                dropped[reason] = dropped.get(reason, 0) + count - n
                m, count = new, n

        def keep(bits: int, reason: Reason) -> None:
            note(m & bits, reason)

        def drop(bits: int, reason: Reason) -> None:
            hit = m & bits
            if hit:
                note(m ^ hit, reason)

        b = req.brk
        keep(self.static_ok, Reason.INACTIVE)  # (unapproved creatives are attributed here)
        keep(self.in_flight(env.now), Reason.OUT_OF_FLIGHT)
        keep(self.position[b.position], Reason.BREAK_POSITION)
        b_min, b_max, req_s = b.min_ad_duration_ms, b.max_ad_duration_ms, b.required_durations_s
        keep(self._durations(lambda ms: ms <= b.pod_duration_ms), Reason.LONGER_THAN_POD)
        if b_min is not None:
            keep(self._durations(lambda ms: ms >= b_min), Reason.SHORTER_THAN_MIN)
        if b_max is not None:
            keep(self._durations(lambda ms: ms <= b_max), Reason.LONGER_THAN_MAX)
        if req_s is not None:
            keep(
                self._durations(lambda ms: rounded_seconds(ms) in req_s),
                Reason.DURATION_NOT_REQUIRED,
            )
        t = m
        for dim in DIMENSIONS:
            values = request_values(req, dim)
            restricted = self.restricted.get(dim, 0)
            if restricted:
                out = t & restricted  # restricted in this dimension...
                if out:
                    inc = self.include[dim]
                    for v in values:
                        out ^= out & inc.get(v, 0)  # ...and not reached by any value
                    t ^= out
            exc = self.exclude.get(dim)
            if exc:
                for v in values:
                    t ^= t & exc.get(v, 0)
        note(t, Reason.TARGETING)
        rating = req.content.rating or UNKNOWN_CONTENT_RATING
        if req.content.kids or rating in KIDS_RATINGS:
            drop(self.alcohol, Reason.KIDS_CONTENT)
        keep(self.rating_ok[rating], Reason.CONTENT_RATING)
        for d in env.blocked_domains:
            drop(self._domain_mask(d), Reason.BLOCKED_ADVERTISER)
        for code in env.blocked_categories:
            drop(self.category.get(code, 0), Reason.BLOCKED_CATEGORY)
        if req.device.device_type in CTV_DEVICE_TYPES:
            drop(self.vpaid, Reason.VPAID_ON_CTV)
            keep(self.ctv_playable, Reason.NO_PLAYABLE_MEDIA)
            if req.require_https:
                keep(self.ctv_https, Reason.INSECURE_MEDIA)
        else:
            keep(self.any_playable, Reason.NO_PLAYABLE_MEDIA)
            if req.require_https:
                keep(self.any_https, Reason.INSECURE_MEDIA)
        return m, dropped

    def _durations(self, fits: Callable[[int], bool]) -> int:
        mask = 0
        for ms, bits in self.duration.items():
            if fits(ms):
                mask |= bits
        return mask

    def _domain_mask(self, domain: str) -> int:
        cache = self._domain_masks
        mask = cache.get(domain)
        if mask is None:
            ords = self.domain.get(domain)
            mask = 0 if ords is None else mask_of(ords, self.n_all)
            if len(cache) >= _DOMAIN_MASKS:
                cache.clear()
            cache[domain] = mask
        return mask

    def survivors(
        self, req: AdRequest, env: StageEnv, limit: int | None = None, per_group: int = 3
    ) -> tuple[list[Candidate], dict[Reason, int]]:
        """Candidates passing every pre-delivery check (bitsets, then residual rules one by
        one) and the drop counts by reason.

        Candidates are numbered best first (tier, then CPM x tier weight: an upper bound on
        value, since a prediction is at most 1), so with a ``limit`` the scan stops after the
        ``limit`` best, keeping at most ``per_group`` per separation group (a pod holds one
        per group; spares cover duration fit). The rest count as ``outranked``. The work is
        then bounded by the limit, not by how many candidates match."""
        mask, dropped = self.match(req, env)
        out: list[Candidate] = []
        check_all = req.floor_cpm_per_s is not None
        residual = self.residual_flags
        cands = self.candidates
        groups = self.group
        total = mask.bit_count()
        # A candidate with 2 x per_group better matching candidates in its group cannot make
        # the cut unless most of those fail a residual rule: skipped without a look, so the
        # work stays bounded when a few groups hold most of the matches.
        presort = limit is not None and total > limit
        cap = 2 * per_group
        seen: dict[int, int] = {}
        per: dict[int, int] = {}
        looked = outranked = 0
        full = False
        for chunk in ordinal_chunks(mask):  # best first, and only as far as needed
            for i in chunk:
                if limit is not None and len(out) >= limit:
                    full = True
                    break
                looked += 1
                g = groups[i]
                if presort:
                    rank = seen.get(g, 0)
                    seen[g] = rank + 1
                    if rank >= cap:
                        outranked += 1
                        continue
                c = cands[i]
                if check_all or residual[i]:
                    reason = residual_check(req, c, env)
                    if reason is not None:
                        dropped[reason] = dropped.get(reason, 0) + 1
                        continue
                if limit is not None:
                    if per.get(g, 0) >= per_group:
                        outranked += 1
                        continue
                    per[g] = per.get(g, 0) + 1
                out.append(c)
            if full:
                break
        outranked += total - looked  # not looked at: outranked (or residual-failing)
        if outranked:
            dropped[Reason.OUTRANKED] = outranked
        return out, dropped


def residual_check(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """What bitsets cannot answer: key-values, dayparts, the per-second price floor."""
    t = c.line_item.targeting
    for key, rule in t.key_values.items():
        if not rule.allows(req.key_values.get(key)):
            return Reason.TARGETING
    if t.dayparts and not any(_in_daypart(dp, env.now, c.campaign.timezone) for dp in t.dayparts):
        return Reason.DAYPART
    return floor(req, c, env)


def _category_keys(codes: Iterable[str]) -> set[str]:
    keys: set[str] = set()
    for code in codes:
        keys.add(code)
        keys.add(code.split("-", 1)[0])
    return keys


def build_bit_index(catalog: Catalog, candidates: Sequence[Candidate]) -> BitIndex:
    n = len(candidates)
    position: dict[BreakPosition, set[int]] = {p: set() for p in BreakPosition}
    include: dict[str, dict[str, set[int]]] = {d: defaultdict(set) for d in DIMENSIONS}
    exclude: dict[str, dict[str, set[int]]] = {d: defaultdict(set) for d in DIMENSIONS}
    restricted: dict[str, set[int]] = {d: set() for d in DIMENSIONS}
    rating_ok: dict[str, set[int]] = {r: set() for r in RATINGS}
    category: dict[str, set[int]] = defaultdict(set)
    domain: dict[str, set[int]] = defaultdict(set)
    duration: dict[int, set[int]] = defaultdict(set)
    static_ok: set[int] = set()
    alcohol: set[int] = set()
    vpaid: set[int] = set()
    ctv_playable: set[int] = set()
    ctv_https: set[int] = set()
    any_playable: set[int] = set()
    any_https: set[int] = set()
    residual: set[int] = set()
    flights: dict[tuple[datetime, datetime], set[int]] = defaultdict(set)
    boundaries: set[datetime] = set()

    for i, c in enumerate(candidates):
        li, cr, camp, adv = c.line_item, c.creative, c.campaign, c.advertiser
        if li.status == "active" and camp.status == "active" and cr.approved:
            static_ok.add(i)
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
        codes = (*adv.categories, *cr.categories)
        if any(code in ALCOHOL_CATEGORIES for code in codes):
            alcohol.add(i)
        for key in _category_keys(codes):
            category[key].add(i)
        domain[adv.domain].add(i)
        if cr.api_framework is not None and cr.api_framework.upper().startswith("VPAID"):
            vpaid.add(i)
        ctv = [r for r in cr.renditions if r.mime.lower() in CTV_MIMES]
        anyp = [r for r in cr.renditions if r.mime.lower() in PLAYABLE_MIMES]
        if ctv:
            ctv_playable.add(i)
        if any(r.url[:8].lower() == "https://" for r in ctv):
            ctv_https.add(i)
        if anyp:
            any_playable.add(i)
        if any(r.url[:8].lower() == "https://" for r in anyp):
            any_https.add(i)
        duration[cr.duration_ms].add(i)
        if li.targeting.dayparts or li.targeting.key_values:
            residual.add(i)

    group_ids: dict[str, int] = {}
    group = tuple(group_ids.setdefault(separation_group(c), len(group_ids)) for c in candidates)

    def bitmap(m: Mapping[str, set[int]]) -> dict[str, int]:
        return {k: _bits(v) for k, v in m.items()}

    return BitIndex(
        candidates=tuple(candidates),
        all=(1 << n) - 1,
        n_all=n,
        static_ok=_bits(static_ok),
        position={p: _bits(s) for p, s in position.items()},
        include={d: bitmap(m) for d, m in include.items()},
        restricted={d: _bits(s) for d, s in restricted.items() if s},
        exclude={d: bitmap(m) for d, m in exclude.items() if m},
        rating_ok=bitmap(rating_ok),
        alcohol=_bits(alcohol),
        category=bitmap(category),
        domain={d: _ordinals(ix) for d, ix in domain.items()},
        vpaid=_bits(vpaid),
        ctv_playable=_bits(ctv_playable),
        ctv_https=_bits(ctv_https),
        any_playable=_bits(any_playable),
        any_https=_bits(any_https),
        duration={ms: _bits(s) for ms, s in duration.items()},
        residual=_bits(residual),
        residual_flags=bytes(i in residual for i in range(len(candidates))),
        group=group,
        flights=tuple((s, e, _ordinals(ix)) for (s, e), ix in flights.items()),
        boundaries=tuple(sorted(boundaries)),
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
        cands = self.bits.candidates
        return [cands[i] for i in iter_bits(self.bits.position[position])]

    def select(
        self, req: AdRequest, env: StageEnv, limit: int | None = None
    ) -> tuple[list[Candidate], dict[Reason, int]]:
        """The best ``limit`` candidates passing every pre-delivery check (all without a
        limit), and drop counts by reason (``outranked`` for those beyond the limit)."""
        return self.bits.survivors(req, env, limit)


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
