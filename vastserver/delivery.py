"""Delivery control, the async part: counters in the store, beacons counted once, pacing.

Per decision: one store round trip reads every cap/budget counter the candidates need
(:meth:`DeliveryControl.gate`), the pure pipeline decides, then :meth:`commit` reserves the
chosen ads with guards in one more round trip (an ad whose guard lost a race is dropped).

Failure policy when the store is unreachable (documented per counter type):

* **frequency caps fail open**: serving goes on without them (a viewer may see an extra ad;
  missing an ad break costs more than an extra exposure);
* **budgets fail closed**: line items with an impression or spend budget do not serve until the
  store answers again (overdelivery is money we cannot bill);
* **pacing** keeps the last throttle it computed, and what is left of its allowances.
* Beacons that cannot be counted are answered 503 so a stitcher or player retries them; the
  dedupe key makes the retry safe.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from vastserver.catalog.model import (
    Advertiser,
    Budget,
    Campaign,
    Catalog,
    Creative,
    Delivery,
    LineItem,
    Tier,
    billed_cpm,
)
from vastserver.logs import Sampler, event
from vastserver.metrics import Metrics
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.decide import Decision, PlacedAd, close_ranks
from vastserver.pipeline.delivery import (
    LIFETIME,
    RESERVATION_WINDOW,
    BudgetTest,
    CountsGate,
    GateCache,
    PacingCurve,
    PIController,
    ScopeCaps,
    SeparationRules,
    Viewer,
    budget_key,
    curve_fraction,
    delivered_key,
    event_key,
    gate_checks,
    history_entries,
    history_key,
    impression_plan,
    is_cap_key,
    line_item_budget_tests,
    line_item_budgeted,
    local_day,
    local_day_at,
    moves_budget,
    note_headroom,
    over_budget,
    pacing_curve,
    recent_from_history,
    release_increments,
    reservation_plan,
    scope_caps,
    spend_key,
    spend_micros,
    unused_entry,
)
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.stages import PreGate
from vastserver.store.base import (
    ClaimExpired,
    ClaimHeld,
    Guarded,
    Incr,
    Read,
    Store,
    StorePoolExhausted,
    StoreUnavailable,
    Window,
)
from vastserver.store.base import within as within_timeout
from vastserver.tracking import COUNTED_EVENTS, AdToken

log = logging.getLogger("vastserver.delivery")

PACING_INTERVAL_S = 10.0
PACING_LEAD_S = 2 * PACING_INTERVAL_S
"""How far ahead of the pass a paced line item's allowance reaches: it may serve up to its
target at this much later (two periods: a pass that comes late, or a slow one, leaves it
room until the next)."""
RELOAD_POLL_S = 1.0
"""How often the pacing loop looks, between passes, for a catalog a reload installed: it
runs a pass for it at once, so the line items the reload added (or gave a budget) get their
allowance and throttle within about a second, not up to a period later."""
ALLOWANCE_FLOOR = 1
"""The least a paced line item may serve per pass and instance, ahead of its target or not
(so that its delivery can be observed; the throttle keeps it at a trickle)."""
PACING_CHUNK = 100
RATES_SCAN_S = 600.0
"""How often the completion rates are read for every line item of the catalog (between
those passes, for the ones known to have impressions)."""
"""Line items per store read in the background loops, which yield to serving in between
(~3-5 ms of work per chunk: a request arriving meanwhile waits at most that long)."""


CLAIM_GRACE_S = 3600
"""A beacon claim outlives its token's last verifying second by this much."""


def claim_window_s(token_max_age_s: int) -> int:
    """How long after its ad was served a beacon claim expires."""
    return token_max_age_s + CLAIM_GRACE_S


def served_key(li_id: str) -> str:
    return f"li:{li_id}:served"


@dataclass(frozen=True, slots=True)
class BeaconResult:
    counted: bool
    replay: bool = False
    reason: str = ""


REPLAY = BeaconResult(counted=False, replay=True, reason="replay")
EXPIRED = BeaconResult(counted=False, reason="expired")
"""The store refused the beacon: served under a shorter claim window (see ClaimExpired)."""
ALREADY_SETTLED = BeaconResult(counted=False, reason="already_settled")
"""The ad was settled by the other of ``impression`` and ``notUsed``, or by ``notUsed``
before another counted event."""


def decision_history(d: Decision) -> list[str]:
    """The session-history entries a decided break leaves (:meth:`DeliveryControl.remember`)."""
    return history_entries(
        d.request.brk.avail,
        d.now.timestamp(),
        [(a.candidate.creative.id, a.candidate.labels) for a in d.ads],
    )


@dataclass(frozen=True, slots=True)
class Prefetched:
    gate: CountsGate
    exposures: int
    recent_creatives: frozenset[str]
    recent_competitive: frozenset[str]
    degraded: bool = False
    """No counters were read (the store failed): the failure policy decides."""


HISTORY_KEEP = 64
HISTORY_TTL_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class _Mark:
    """A pacing curve read at the pass's time: cumulative traffic now, :data:`PACING_LEAD_S`
    later (``w_ahead``) and at the bounds of the local day now falls in (unix times
    ``day_start``, ``day_end``)."""

    w_now: float
    w_ahead: float
    day_start: float
    day_end: float
    w_day_start: float
    w_day_end: float

    @staticmethod
    def of(curve: PacingCurve, ts: float) -> _Mark:
        day = curve.day(curve.ordinal(ts))
        return _Mark(
            curve.at(ts),
            curve.at(ts + PACING_LEAD_S),
            day.start,
            day.end,
            curve.at(day.start),
            curve.at(day.end),
        )


def _lowest_price(li: LineItem) -> float:
    """The lowest CPM an impression of ``li`` can be served at: its price, or a slot's
    price below it (while that impression fits a spend budget, serving may allow it)."""
    return min(p for p in (li.price, li.first_slot_price, li.last_slot_price) if p is not None)


_DayChecks = dict[str, tuple[str, tuple[BudgetTest, ...]]]
"""Line item id -> (local day, the budget checks serving applies to it that day): plain
tuples of strings and ints, which the garbage collector stops tracking."""

SCAN_CHUNK = 1000
"""Line items per step of a scan with no store read (~0.5 ms each at 100k)."""
LISTING_CHUNK = 50
"""Line items per store read and per written chunk of ``GET /admin/line-items``: ~1 ms of
work (their counters, rows and JSON), a request arriving meanwhile waits about that long
(100 took ~3.5 ms)."""
SLICE_S = 0.002
"""Most time a pacing pass holds the event loop between two yields (wall time, not the
injected clock: it schedules work, it decides nothing). A chunk of :data:`PACING_CHUNK`
line items costs ~0.5 ms in the steady state, but 15-50 ms on the first pass after a start,
a reload or a local midnight (each line item's budget checks and pacing curve are computed
then): requests waited that long."""


class _Slices:
    """Cut a loop's work into slices of at most :data:`SLICE_S`: :meth:`due` says when to
    yield to the event loop (then :meth:`yielded`)."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until = time.perf_counter() + SLICE_S

    def due(self) -> bool:
        return time.perf_counter() >= self._until

    async def yielded(self) -> None:
        await asyncio.sleep(0)
        self._until = time.perf_counter() + SLICE_S


@dataclass(slots=True)
class LineItemPacing:
    controller: PIController = field(default_factory=PIController)
    target_now: float = 0.0
    delivered: int = 0
    budget: float | None = None
    allowance: int | None = None
    """What the last pass allowed this instance to serve of it until the next (None: ASAP,
    no allowance)."""


def _paced_keys(li: LineItem, day: str) -> tuple[str, str]:
    """The counters of ``li``'s paced impression budget (the daily one when it has one, on
    the local ``day``, else the lifetime one): delivered impressions, and the reservations
    of its serves not yet settled."""
    on = day if li.pacing.budget.daily_impressions is not None else None
    prefix = f"li:{li.id}"
    return delivered_key(prefix, "imp", on), budget_key(prefix, "imp", on) + ":r"


class DeliveryControl:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime],
        rng: random.Random,
        token_max_age_s: int,
        separation: SeparationRules | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.separation = separation or SeparationRules()
        self.clock = clock
        self.rng = random.Random(rng.random())
        """Pacing's throttle draws: a fast generator seeded from ``rng`` (in production
        ``SystemRandom``, one system call per draw)."""
        self.token_max_age_s = token_max_age_s
        self.throttle: dict[str, float] = {}
        self.exhausted: frozenset[str] = frozenset()
        self.paced: frozenset[str] = frozenset()
        """``exhausted`` and the line items with an allowance in :attr:`room` (every one
        the throttle may hold back): the pacing pass's, one object until the next
        (:attr:`PreGate.paced`)."""
        self.room: dict[str, int] = {}
        """Paced (not ASAP) line item id -> what this instance may still serve of it until
        the next pacing pass: the pass's allowance, less each ad of it :meth:`commit`
        reserves since. A new dict each pass (the serves before it count no more)."""
        self.pacing: dict[str, LineItemPacing] = {}
        self.cap_hits: Counter[str] = Counter()
        self.completion_rates: dict[str, float] = {}
        self._scopes: tuple[Catalog, ScopeCaps] | None = None
        self._cands: tuple[Catalog, dict[tuple[str, str, str, str], Candidate]] | None = None
        self.active: set[str] = set()
        """Line items this instance has served or counted beacons for."""
        self._rated: set[str] = set()
        """Line items the last completion-rate pass found with impressions."""
        self._rates_scan: tuple[Catalog, float] | None = None
        """The catalog and (clock) time of the last pass over all its line items."""
        self.store_errors = 0
        self._error_sampler = Sampler()
        self._budgeted_of: tuple[Catalog, list[LineItem]] | None = None
        self._checks_of: tuple[Catalog, _DayChecks] | None = None
        """Per snapshot: each budgeted line item's budget checks, for the local day given."""
        self._curves: tuple[Catalog, dict[str, tuple[PacingCurve, float, float]]] | None = None
        """Per snapshot: each paced line item's curve, and its cumulative traffic at the
        flight's start and end (fixed, so computed once)."""
        self._exported: tuple[set[str], set[str], set[str], set[str]] = (
            set(),
            set(),
            set(),
            set(),
        )
        """Line items with throttle/exhausted gauges, those with a delivered one, and those
        with a pacing-ratio one."""
        self._pruned_for: Catalog | None = None
        """The snapshot :attr:`pacing` and :attr:`active` were last pruned to."""
        self.gate_cache = GateCache()
        """Viewer-independent counter keys of line items, reused across requests."""

    def _store_error(self, err: BaseException, op: str = "delivery") -> None:
        """Count (and log, sampled: an outage fails every request) a store call that failed;
        the caller applies the fail-open/closed policy."""
        self.store_errors += 1
        if self.metrics is not None:
            self.metrics.store_errors.labels(op).inc()
            if isinstance(err, StorePoolExhausted):
                self.metrics.store_pool_exhausted.labels(op).inc()
        if self._error_sampler():
            error = f"{type(err).__name__}: {err}"[:300]
            event(log, "store_error", logging.WARNING, op=op, error=error)

    # ------------------------------------------------------------------ decisions

    def pre_gate(self) -> PreGate:
        """A request's pacing checks: the last pacing pass's, with draws of its own."""
        return PreGate(
            paced=self.paced,
            exhausted=self.exhausted,
            throttle=self.throttle,
            room=self.room,
            rng=self.rng,
        )

    async def prefetch(
        self,
        cands: Sequence[Candidate],
        viewer: Viewer,
        now: datetime,
        *,
        session: str | None = None,
        avail: int | None = 0,
        pre: PreGate | None = None,
    ) -> Prefetched:
        """Everything the delivery filters need, fetched together: cap and budget counters,
        the viewer's recent exposures (one ``read``) and, with a session, its recent history
        (one ``history``), issued concurrently."""
        exposure = exposure_read(viewer)
        checks, reads = gate_checks(cands, viewer, now, self.gate_cache)
        if exposure is not None:
            reads.append(exposure)
        try:
            if session and not self.store.local:
                values, entries = await asyncio.gather(
                    self.store.read(reads, now.timestamp()),
                    self.store.history(history_key(session)),
                )
            elif session:  # nothing to overlap: a local store never waits
                values = await self.store.read(reads, now.timestamp())
                entries = await self.store.history(history_key(session))
            else:
                values, entries = await self.store.read(reads, now.timestamp()), []
        except StoreUnavailable as e:
            self._store_error(e)
            return self.degraded(cands, viewer, now, pre)
        counts = {r.key: v for r, v in zip(reads, values, strict=True)}
        note_headroom(cands, checks, counts, now, self.gate_cache)
        gate = CountsGate(
            counts=counts,
            viewer=viewer,
            now=now,
            pre=self.pre_gate() if pre is None else pre,
            exhausted=self.exhausted,
            checks=checks,
        )
        creatives, comps = recent_from_history(entries, avail, now.timestamp(), self.separation)
        exposures = 0 if exposure is None else counts.get(exposure.key, 0)
        return Prefetched(gate, exposures, creatives, comps)

    async def prefetch_more(
        self,
        gate: CountsGate,
        cands: Sequence[Candidate],
        viewer: Viewer,
        now: datetime,
        pending: Mapping[str, int] | None = None,
    ) -> None:
        """The counters of more candidates, added to ``gate`` (one ``read``). Raises
        :class:`StoreUnavailable` (counted) and leaves ``gate`` as it was. ``pending``: what
        the counters would also hold had earlier decisions been written (a preview's
        reservations), added to what is read."""
        checks, reads = gate_checks(cands, viewer, now, self.gate_cache)
        try:
            values = await self.store.read(reads, now.timestamp())
        except StoreUnavailable as e:
            self._store_error(e)
            raise
        counts = {r.key: v for r, v in zip(reads, values, strict=True)}
        if pending:
            for k in counts.keys() & pending.keys():
                counts[k] += pending[k]
        note_headroom(cands, checks, counts, now, self.gate_cache)
        gate.counts.update(counts)
        if gate.checks is not None:
            gate.checks.update(checks)

    def degraded(
        self,
        cands: Sequence[Candidate],
        viewer: Viewer,
        now: datetime,
        pre: PreGate | None = None,
    ) -> Prefetched:
        """No counters (store down or too slow): caps and stream separation fail open,
        budgeted line items fail closed."""
        exhausted = self.exhausted | {
            c.line_item.id
            for c in cands
            if moves_budget(c, billed_cpm(c.line_item, c.line_item.price))
        }
        gate = CountsGate(
            counts={},
            viewer=viewer,
            now=now,
            pre=self.pre_gate() if pre is None else pre,
            exhausted=exhausted,
        )
        return Prefetched(gate, 0, frozenset(), frozenset(), degraded=True)

    async def lock_session(self, session: str, owner: str, ttl_ms: int) -> bool | None:
        """Take the lock on ``session``'s history for ``owner`` (see :meth:`Store.acquire`):
        True when taken, False while another decision holds it, None when the store failed
        (counted: the caller goes on unlocked, as separation fails open)."""
        try:
            return await self.store.acquire(history_key(session), owner, ttl_ms)
        except StoreUnavailable as e:
            self._store_error(e, "session_lock")
            return None

    async def unlock_session(self, session: str, owner: str) -> None:
        """Free ``owner``'s lock on ``session``'s history; a store failure is counted and
        otherwise ignored (the lock expires by itself)."""
        try:
            await self.store.release(history_key(session), owner)
        except StoreUnavailable as e:
            self._store_error(e, "session_lock")

    async def remember(self, d: Decision, *, unlock: str | None = None) -> None:
        """Add a decided break to its session's history (stream-level separation).

        ``unlock``: the owner of the session's lock (:meth:`lock_session`), freed in the same
        store call as the write (one round trip); a break without ads writes nothing and only
        frees it. When the write fails the lock is released on its own, as
        :meth:`unlock_session` does."""
        session = d.request.session
        if not session:
            return
        if not d.ads:
            if unlock is not None:
                await self.unlock_session(session, unlock)
            return
        entries = decision_history(d)
        key = history_key(session)
        try:
            await self.store.push_history(
                key,
                entries,
                keep=HISTORY_KEEP,
                ttl_s=HISTORY_TTL_S,
                release=None if unlock is None else (key, unlock),
            )
        except StoreUnavailable as e:
            self._store_error(e)
            if unlock is not None:  # releasing again changes nothing, whatever was applied
                await self.unlock_session(session, unlock)

    def candidate(self, catalog: Catalog, token: AdToken) -> Candidate:
        """The token's candidate in ``catalog`` (see :func:`_candidate`). Every counted beacon
        needs it: kept per snapshot, as each ad's beacons come in a burst."""
        cached = self._cands
        if cached is None or cached[0] is not catalog or len(cached[1]) >= CANDIDATE_CACHE_SIZE:
            cached = self._cands = (catalog, {})
        cands = cached[1]
        key = (token.line_item_id, token.creative_id, token.campaign_id, token.advertiser_id)
        if key not in cands:
            cands[key] = _candidate(catalog, token)
        return cands[key]

    def scopes(self, catalog: Catalog) -> ScopeCaps:
        """Cap counters per scope for a catalog snapshot (built once per snapshot)."""
        cached = self._scopes
        if cached is None or cached[0] is not catalog:
            cached = self._scopes = (catalog, scope_caps(catalog))
        return cached[1]

    async def commit(
        self,
        d: Decision,
        viewer: Viewer,
        within: float | None = None,
        catalog: Catalog | None = None,
    ) -> Decision:
        """Reserve caps and budgets for the chosen ads; drop any that lost a race. A store
        failure or a commit slower than ``within`` seconds applies the failure policy.

        An ad the refusals leave in a slot it may not play or at another price
        (:func:`close_ranks`) is dropped too, and what its reservation took is given back
        at once (:meth:`_release`): it holds no cap or budget and is not counted served."""
        if not d.ads:
            return d
        self.active.update(ad.candidate.line_item.id for ad in d.ads)
        room = self._take_allowance(d.ads)
        now = d.now
        batch: list[Guarded] = []
        for ad in d.ads:
            scopes = None if catalog is None else self.scopes(catalog)
            guards, incrs = reservation_plan(
                ad.candidate, viewer, now, ad.price_cpm, scopes, self.gate_cache
            )
            li = ad.candidate.line_item.id
            day = local_day(now, ad.candidate.campaign.timezone)
            incrs = (
                *incrs,
                Incr(served_key(li), LIFETIME, 1),
                Incr(f"{served_key(li)}:d:{day}", LIFETIME, 1, ttl_s=3 * 86400),
            )
            batch.append(Guarded(guards, incrs))
        store_failed = False
        try:
            ok = await within_timeout(self.store, self.store.commit(batch, now.timestamp()), within)
        except (StoreUnavailable, TimeoutError) as e:
            self._store_error(e, "commit")
            # Caps fail open; budgeted line items fail closed.
            ok = [not moves_budget(ad.candidate, ad.price_cpm) for ad in d.ads]
            store_failed = True
        if all(ok):
            return d
        refused = [g for g, fine in zip(batch, ok, strict=True) if not fine]
        reasons = (
            [Reason.BUDGET_EXHAUSTED] * len(refused)
            if store_failed
            else await self._refusal_reasons(refused, now, within)
        )
        lost: dict[str, Reason] = {}
        for ad, fine in zip(d.ads, ok, strict=True):
            if not fine:
                lost[ad.candidate.key] = reasons[len(lost)]
        kept, moved_out = close_ranks([ad for ad, fine in zip(d.ads, ok, strict=True) if fine])
        for ad in moved_out:
            lost[ad.candidate.key] = Reason.NOT_SELECTED
        self._give_back_allowance(
            room, [*(ad for ad, fine in zip(d.ads, ok, strict=True) if not fine), *moved_out]
        )
        if moved_out and not store_failed:  # (failed: nothing known reserved, nothing to undo)
            dropped = {id(ad) for ad in moved_out}
            await self._release(
                [g for ad, g in zip(d.ads, batch, strict=True) if id(ad) in dropped],
                now,
                within,
            )
        slots = {a.candidate.key: a.slot for a in kept}
        traces = tuple(
            t._replace(reason=lost[k], slot=None)
            if (k := f"{t.line_item_id}/{t.creative_id}") in lost
            else (t._replace(slot=slots[k]) if k in slots else t)
            for t in d.traces
        )
        return replace(
            d,
            ads=tuple(kept),
            traces=traces,
            value=sum(a.value for a in kept),
            total_duration_ms=sum(a.candidate.creative.duration_ms for a in kept),
        )

    async def _release(
        self, reserved: Sequence[Guarded], now: datetime, within: float | None
    ) -> None:
        """Give back what the commit's increments of ``reserved`` took (the ads were not
        served), in one store call: their cap and budget reservations and their ``served``
        counts, in the buckets they were made in. On a failure or timeout (counted) the
        reservations lapse on their own with the reservation window (5 minutes)."""
        ts = now.timestamp()
        undo = [i._replace(amount=-i.amount, at=ts) for g in reserved for i in g.incrs]
        try:
            await within_timeout(self.store, self.store.add(undo, ts), within)
        except (StoreUnavailable, TimeoutError) as e:
            self._store_error(e, "release")

    def _take_allowance(self, ads: Sequence[PlacedAd]) -> dict[str, int]:
        """Count the ads about to be reserved against their line items' pacing allowances
        (:attr:`room`), before the store is asked: the decisions that follow on this
        instance see them at once. Returns the allowances counted against."""
        room = self.room
        for ad in ads:
            li = ad.candidate.line_item.id
            if li in room:
                room[li] -= 1
        return room

    def _give_back_allowance(self, room: dict[str, int], ads: Sequence[PlacedAd]) -> None:
        """Undo :meth:`_take_allowance` for ads the commit dropped (not served: refused by
        the store, or moved out by the refusals), unless a pacing pass has set new
        allowances since (which never counted them)."""
        if room is not self.room:
            return
        for ad in ads:
            li = ad.candidate.line_item.id
            if li in room:
                room[li] += 1

    async def _refusal_reasons(
        self, refused: Sequence[Guarded], now: datetime, within: float | None
    ) -> list[Reason]:
        """Why the store refused each group: the first guard that no longer holds, read back
        (one more round trip, only when a reservation was refused). A cap guard gives
        ``frequency_cap``, a budget guard ``budget_exhausted``; when the read fails or every
        guard holds again (a race that resolved), a group with any budget guard is taken as
        ``budget_exhausted``."""
        reads: dict[str, Read] = {}
        for group in refused:
            for g in group.guards:
                reads.setdefault(g.key, Read(g.key, g.window))
                for e in g.extra:
                    reads.setdefault(e.key, e)
        want = list(reads.values())
        try:
            got = await within_timeout(self.store, self.store.read(want, now.timestamp()), within)
            counts: dict[str, int] | None = {r.key: v for r, v in zip(want, got, strict=True)}
        except (StoreUnavailable, TimeoutError):
            counts = None
        out: list[Reason] = []
        for group in refused:
            reason = None
            if counts is not None:
                for g in group.guards:
                    total = counts[g.key] + sum(counts[e.key] for e in g.extra) + g.amount
                    if total > g.limit:
                        reason = (
                            Reason.FREQUENCY_CAP if is_cap_key(g.key) else Reason.BUDGET_EXHAUSTED
                        )
                        break
            if reason is None:
                caps_only = all(is_cap_key(g.key) for g in group.guards)
                reason = Reason.FREQUENCY_CAP if caps_only else Reason.BUDGET_EXHAUSTED
            out.append(reason)
        return out

    def note_rejections(
        self, d: Decision, skip: int = 0, refused: Iterable[tuple[str, Reason]] = ()
    ) -> None:
        """Count frequency-cap refusals per line item: the decision's traces after the first
        ``skip`` (an explanation's view of what the selection dropped) and the
        ``(line item id, reason)`` refusals the selection applied."""
        for t in islice(d.traces, skip, None):
            if t.reason is Reason.FREQUENCY_CAP:
                self.cap_hits[t.line_item_id] += 1
        for li_id, reason in refused:
            if reason is Reason.FREQUENCY_CAP:
                self.cap_hits[li_id] += 1

    # ------------------------------------------------------------------ beacons

    async def on_beacon(self, event: str, token: AdToken, catalog: Catalog) -> BeaconResult:
        """Count a verified beacon once per (ad serving id, event).

        ``impression`` and ``notUsed`` settle the ad, played or not, and the first one wins:
        ``notUsed`` releases the serve's reservations when no impression came first. The
        other settling event, and after ``notUsed`` every other counted event (a quartile,
        ``complete``, a click: the ad did not play), are not counted
        (``already_settled``)."""
        if token.test:  # served for a test request: it reserved nothing, it counts nothing
            return BeaconResult(counted=False, reason="test")
        if event not in COUNTED_EVENTS and event != "notUsed":
            return BeaconResult(counted=False, reason="not_counted_event")
        ad = f"bc:{token.ad_serving_id}"
        # ``settled``: the ad is settled, played or not (what versions before a2b3eb0 check
        # and claim for either settling event); ``unused``: a notUsed counted. A notUsed
        # claims both, so an impression is refused whichever version gets it, and ``unused``
        # refuses every other event, in the call that would count it. A notUsed is refused
        # once the ad's impression is claimed: not by ``settled``, which its own replay
        # finds claimed (a replay is a replay).
        keys = [f"{ad}:{event}"]
        if event == "impression":
            keys.append(f"{ad}:settled")
        elif event == "notUsed":
            keys += (f"{ad}:unused", f"{ad}:settled")
        unless = f"{ad}:impression" if event == "notUsed" else f"{ad}:unused"
        cand = self.candidate(catalog, token)
        served_at = float(token.served_at)
        price = token.price_micros / 1_000_000
        incrs: list[Incr] = []
        if event == "notUsed":
            viewer = Viewer(token.viewer_hash, token.session or None, token.lmt)
            served_dt = datetime.fromtimestamp(served_at, UTC)
            incrs += release_increments(
                cand, viewer, served_at, served_dt, price, self.scopes(catalog)
            )
        else:
            li = token.line_item_id
            ev_key = event_key(li, event)
            incrs.append(Incr(ev_key, LIFETIME, 1))
            day = local_day_at(served_at, cand.campaign.timezone)
            incrs.append(Incr(f"{ev_key}:d:{day}", LIFETIME, 1, ttl_s=3 * 86400))
            if event == "impression":
                viewer = Viewer(token.viewer_hash, token.session or None, token.lmt)
                incrs.append(Incr(spend_key(li), LIFETIME, spend_micros(token.price_micros)))
                exposure = exposure_read(viewer)
                if exposure is not None:
                    incrs.append(Incr(exposure.key, EXPOSURE_WINDOW, 1))
                incrs += impression_plan(
                    cand, viewer, served_at, price, self.scopes(catalog), self.gate_cache
                )
        # Claimed and counted in one atomic call: a failure leaves no claim behind, so the
        # retried beacon is counted (a claim that outlived a failed count lost the beacon).
        # A claim lasts until an hour after its token stops verifying: an expiry fixed by the
        # serve time, so claims expire in the order their tokens were issued (what the
        # in-memory store's refusal of possibly evicted claims relies on).
        now = self.clock().timestamp()
        ttl = max(1, math.ceil(served_at + claim_window_s(self.token_max_age_s) - now))
        try:
            claims = await self.store.claim_and_add(
                keys, ttl, incrs, now, served_at=served_at, unless=unless
            )
        except ClaimExpired:
            return EXPIRED
        except ClaimHeld:
            return ALREADY_SETTLED
        except StoreUnavailable as e:
            self._store_error(e, "beacon")  # the caller answers 503
            raise
        if not claims[0]:
            return REPLAY
        if not all(claims):  # an impression after a notUsed of a version before a2b3eb0
            # (it claims ``settled`` alone)
            return ALREADY_SETTLED
        self.active.add(token.line_item_id)
        if event == "notUsed" and token.session:
            await self._forget_unused(token)
        return BeaconResult(counted=True)

    async def _forget_unused(self, token: AdToken) -> None:
        """Take the ad a counted ``notUsed`` settled out of its session's history: it never
        played, so its creative and competitive labels need not sit out the next breaks. A
        store failure is counted as a history write's and changes nothing else: the beacon
        was counted (the ad then stays in the history, as it did before)."""
        entry = unused_entry(token.served_at, token.creative_id, token.ad_serving_id)
        try:
            await self.store.push_history(
                history_key(token.session), [entry], keep=HISTORY_KEEP, ttl_s=HISTORY_TTL_S
            )
        except StoreUnavailable as e:
            self._store_error(e)

    # ------------------------------------------------------------------ pacing

    async def update_pacing(self, catalog: Catalog) -> None:
        """Recompute each budgeted, in-flight line item's serve probability and whether it is
        exhausted, from shared counters, in chunks that yield to the event loop (a 100k
        catalog must not stall serving).

        A line item is exhausted when any budget serving checks for it (its own impression
        and spend budgets, lifetime and daily, and its campaign's: :func:`budget_checks` at
        the lowest price it can bill, its own or a slot's) has no room left for one more
        impression by the delivered counters alone (the test serving applies,
        :func:`over_budget`): serving refuses it until the next local day (a daily budget)
        or for good. Each budget's counter is read once a pass (a campaign's once for all
        its line items); the paced impression budget's is what pacing compares against its
        target, and with its reservations (serves not yet settled, every instance's), what
        sets a paced line item's allowance (:attr:`room`, :meth:`_pace_one`)."""
        self._forget_retired(catalog)
        now = self.clock()
        items = await self._in_flight(await self._budgeted(catalog), now)
        days: dict[str, str] = {}
        throttle: dict[str, float] = {}
        room: dict[str, int] = {}
        exhausted: set[str] = set()
        marks: dict[PacingCurve, _Mark] = {}
        used: dict[str, int] = {}
        """Budget counter -> delivered (reservation counter -> reserved), as read this pass."""
        in_pass: set[str] = set()
        slices = _Slices()
        for start in range(0, len(items), PACING_CHUNK):
            chunk = items[start : start + PACING_CHUNK]
            plans: list[tuple[LineItem, str, tuple[BudgetTest, ...]]] = []
            reads: dict[str, Read] = {}
            for li in chunk:  # ~28 µs a line item on a first pass: no yield needed here
                camp = catalog.campaigns[li.campaign_id]
                tz = camp.timezone
                day = days.get(tz) or days.setdefault(tz, local_day(now, tz))
                checks = self._budget_checks(catalog, li, camp, day)
                plans.append((li, day, checks))
                for key, _, _ in checks:
                    if key not in used and key not in reads:
                        reads[key] = Read(key, LIFETIME)
                if li.pacing.delivery is not Delivery.ASAP and _li_budget(li) is not None:
                    rsv = _paced_keys(li, day)[1]
                    reads[rsv] = Read(rsv, RESERVATION_WINDOW)
            want = list(reads.values())
            try:
                values = await self.store.read(want, now.timestamp())
            except StoreUnavailable as e:
                self._store_error(e)
                return
            used.update(zip(reads, values, strict=True))
            for n, (li, day, checks) in enumerate(plans):
                if not n & 3 and slices.due():  # the clock read every 4th: a pass's 6 %
                    await slices.yielded()
                if any(over_budget(used[key], amount, limit) for key, amount, limit in checks):
                    exhausted.add(li.id)
                if _li_budget(li) is not None:
                    self._pace_one(catalog, li, now, day, used, throttle, room, marks)
                in_pass.add(li.id)
            await slices.yielded()
        # gathered in the loop: at 100k line items, building these sets here held the event
        # loop ~12 ms; what is left of it (two frozensets) takes ~1 ms each
        self.throttle = throttle
        self.room = room  # the serves since the last pass count no more: they are reserved
        self.exhausted = frozenset(exhausted)
        self.paced = frozenset(exhausted.union(room))
        for n, li_id in enumerate(list(self.pacing)):
            if not n & 63 and slices.due():
                await slices.yielded()
            if li_id not in in_pass and li_id in self.pacing:
                del self.pacing[li_id]  # its flight ended (or has not begun): no stale target
        await self._export_pacing(now, items)

    def _budget_checks(
        self, catalog: Catalog, li: LineItem, camp: Campaign, day: str
    ) -> tuple[BudgetTest, ...]:
        """The budgets serving checks for ``li`` on the local ``day``, at the lowest price it
        can bill (its price or a cheaper slot's: exhausted means not even that impression
        fits). Kept per snapshot and line item until the day changes: the pass asks for
        every budgeted line item every period."""
        cached = self._checks_of
        if cached is None or cached[0] is not catalog:
            cached = self._checks_of = (catalog, {})
        found = cached[1].get(li.id)
        if found is None or found[0] != day:
            checks = line_item_budget_tests(li, camp, day, billed_cpm(li, _lowest_price(li)))
            found = cached[1][li.id] = (day, checks)
        return found[1]

    def _forget_retired(self, catalog: Catalog) -> None:
        """Drop the pacing state and served marks of line items no longer in the catalog,
        once per snapshot (a reload that retires line items must not leave them for the
        life of the process). A request still on the snapshot before may mark one again;
        the next snapshot drops it."""
        if self._pruned_for is catalog:
            return
        self._pruned_for = catalog
        ids = catalog.line_items
        for li_id in [k for k in self.pacing if k not in ids]:
            del self.pacing[li_id]
        self.active.intersection_update(ids)

    async def _budgeted(self, catalog: Catalog) -> list[LineItem]:
        """The catalog's line items with a budget serving checks: an impression or spend
        budget of their own or their campaign's (kept per snapshot: scanning a 100k catalog
        each pacing period would stall serving; the one scan yields every
        :data:`SCAN_CHUNK`, as it took ~60 ms at 100k)."""
        cached = self._budgeted_of
        if cached is not None and cached[0] is catalog:
            return cached[1]
        camps = catalog.campaigns
        items: list[LineItem] = []
        for n, li in enumerate(catalog.line_items.values(), start=1):
            if n % SCAN_CHUNK == 0:
                await asyncio.sleep(0)
            if line_item_budgeted(li, camps[li.campaign_id]):
                items.append(li)
        self._budgeted_of = (catalog, items)
        return items

    @staticmethod
    async def _in_flight(items: Sequence[LineItem], now: datetime) -> list[LineItem]:
        """Those of ``items`` whose flight ``now`` falls in, yielding every
        :data:`SCAN_CHUNK` (every pass filters every budgeted line item)."""
        out: list[LineItem] = []
        for start in range(0, len(items), SCAN_CHUNK):
            if start:
                await asyncio.sleep(0)
            out += [li for li in items[start : start + SCAN_CHUNK] if li.start <= now < li.end]
        return out

    def _curve(self, catalog: Catalog, li: LineItem) -> tuple[PacingCurve, float, float]:
        """``li``'s pacing curve, and its cumulative traffic at the flight's start and end."""
        cached = self._curves
        if cached is None or cached[0] is not catalog:
            cached = self._curves = (catalog, {})
        found = cached[1].get(li.id)
        if found is None:
            tz = catalog.campaigns[li.campaign_id].timezone
            c = pacing_curve(tz, li.targeting.dayparts)
            found = cached[1][li.id] = (c, c.at(li.start.timestamp()), c.at(li.end.timestamp()))
        return found

    def _pace_one(
        self,
        catalog: Catalog,
        li: LineItem,
        now: datetime,
        day: str,
        used: dict[str, int],
        throttle: dict[str, float],
        room: dict[str, int],
        marks: dict[PacingCurve, _Mark],
    ) -> None:
        """The target and throttle of a line item with an impression budget: the daily one
        when it has one (against the impressions counted on the local ``day``), else the
        lifetime one. ``used``: the budget counters read this pass. The curve (the CTV day
        in the campaign's zone, in the hours its dayparts allow) is read once per pass per
        curve: the same as :func:`daily_target_fraction` and :func:`target_fraction` (a test
        holds them together).

        A paced (not ASAP) line item also gets its allowance in ``room``: what it may serve
        until the next pass, its target :data:`PACING_LEAD_S` from now less what it
        delivered and has reserved, at least :data:`ALLOWANCE_FLOOR`. Without it, a line
        item behind its target (after a start, a reload, a new day, an outage) served at
        its throttle's rate, up to 1, until the next pass: half a daily budget of 50 in a
        few seconds at 02:00."""
        b = li.pacing.budget
        state = self.pacing.setdefault(li.id, LineItemPacing())
        curve, w_start, w_end = self._curve(catalog, li)
        mark = marks.get(curve)
        if mark is None:
            mark = marks[curve] = _Mark.of(curve, now.timestamp())
        dlv, rsv = _paced_keys(li, day)
        delivered = used[dlv]
        if b.daily_impressions is not None:
            budget: float = b.daily_impressions
            # the local day, clipped to the flight
            lo = w_start if li.start.timestamp() > mark.day_start else mark.w_day_start
            hi = w_end if li.end.timestamp() < mark.day_end else mark.w_day_end
        else:
            budget = float(b.impressions or 0)
            lo, hi = w_start, w_end
        delivery = li.pacing.delivery
        target = budget * curve_fraction(mark.w_now - lo, hi - lo, delivery)
        state.budget, state.delivered, state.target_now = budget, delivered, target
        if delivery is Delivery.ASAP:
            state.allowance = None
            return
        throttle[li.id] = state.controller.update(delivered, target)
        ahead = budget * curve_fraction(mark.w_ahead - lo, hi - lo, delivery)
        allowance = max(ALLOWANCE_FLOOR, math.floor(ahead - delivered - used.get(rsv, 0)))
        room[li.id] = state.allowance = allowance

    async def _export_pacing(self, now: datetime, items: Sequence[LineItem]) -> None:
        """Per-line-item gauges, only for budgeted line items in flight (bounded labels)
        that this instance has served or that are exhausted: throttle and exhausted for
        each, delivered impressions and the pacing ratio for those with an impression budget
        to pace, and the allowance of those paced (not ASAP).

        The values are gathered first (yielding to the event loop); then, with no await, the
        new ones are set and only the stale label sets removed: a scrape in between sees the
        previous pass's series, never a gauge half refilled."""
        m = self.metrics
        if m is None:
            return
        rows: list[tuple[str, float | None, float | None, float, bool, int | None]] = []
        for n, li in enumerate(items, start=1):
            if n % PACING_CHUNK == 0:
                await asyncio.sleep(0)
            if li.id not in self.active and li.id not in self.exhausted:
                # only line items this instance has served, or that serving refuses as
                # exhausted (it never serves them, so they would never show after a
                # restart): label sets bounded by the catalog
                continue
            state = self.pacing.get(li.id)
            delivered = None if state is None else float(state.delivered)
            ratio = None
            if state is not None and state.target_now > 0:
                ratio = state.delivered / state.target_now
            throttle = self.throttle.get(li.id, 1.0)
            allowance = None if state is None else state.allowance
            rows.append((li.id, delivered, ratio, throttle, li.id in self.exhausted, allowance))
        ids = {r[0] for r in rows}
        delivered_ids = {r[0] for r in rows if r[1] is not None}
        ratio_ids = {r[0] for r in rows if r[2] is not None}
        allowance_ids = {r[0] for r in rows if r[5] is not None}
        for li_id, delivered, ratio, throttle, exhausted, allowance in rows:
            if delivered is not None:
                m.li_delivered.labels(li_id).set(delivered)
            if ratio is not None:
                m.li_pacing_ratio.labels(li_id).set(ratio)
            if allowance is not None:
                m.li_allowance.labels(li_id).set(allowance)
            m.li_throttle.labels(li_id).set(throttle)
            m.li_exhausted.labels(li_id).set(1.0 if exhausted else 0.0)
        old_ids, old_delivered, old_ratio, old_allowance = self._exported
        for stale in old_ids - ids:
            m.li_throttle.remove(stale)
            m.li_exhausted.remove(stale)
        for stale in old_delivered - delivered_ids:
            m.li_delivered.remove(stale)
        for stale in old_ratio - ratio_ids:
            m.li_pacing_ratio.remove(stale)
        for stale in old_allowance - allowance_ids:
            m.li_allowance.remove(stale)
        self._exported = (ids, delivered_ids, ratio_ids, allowance_ids)

    async def update_rates(self, catalog: Catalog, min_impressions: int = 20) -> None:
        """Historic completion rate (a model feature) of the line items with impressions,
        from shared counters, in chunks that yield to the event loop. Every line item of the
        catalog is read on its first pass (after a start or a reload) and every
        :data:`RATES_SCAN_S`; in between, those found with impressions and those this
        instance served. (Only served ones, a restarted or other instance fed the model no
        rate where training had one.)"""
        now = self.clock().timestamp()
        scan = self._rates_scan
        full = scan is None or scan[0] is not catalog or now - scan[1] >= RATES_SCAN_S
        if full:
            ids = sorted(catalog.line_items)
        else:
            ids = sorted(li for li in self.active | self._rated if li in catalog.line_items)
        rated: set[str] = set()
        rates: dict[str, float] = {}
        for start in range(0, len(ids), PACING_CHUNK):
            chunk = ids[start : start + PACING_CHUNK]
            reads = [
                Read(event_key(li, ev), LIFETIME)
                for li in chunk
                for ev in ("impression", "complete")
            ]
            try:
                values = await self.store.read(reads, self.clock().timestamp())
            except StoreUnavailable as e:
                self._store_error(e)
                return
            for i, li in enumerate(chunk):
                imps, completes = values[2 * i], values[2 * i + 1]
                if imps:
                    rated.add(li)
                if imps >= min_impressions:
                    rates[li] = min(1.0, completes / imps)
            await asyncio.sleep(0)
        self.completion_rates = rates
        self._rated = rated
        if full:
            self._rates_scan = (catalog, now)

    async def run_pacing(self, catalog_ref: Callable[[], Catalog], stop: asyncio.Event) -> None:
        """A pacing pass (and completion rates) every :data:`PACING_INTERVAL_S`, and one
        at once for a catalog a reload installs (looked for every :data:`RELOAD_POLL_S`)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            catalog = catalog_ref()
            try:
                await self.update_pacing(catalog)
                await self.update_rates(catalog)
            except Exception:  # a pacing bug must never take serving down
                event(log, "pacing_update_failed", logging.ERROR, exc_info=True)
            due = loop.time() + PACING_INTERVAL_S
            while catalog_ref() is catalog and (left := due - loop.time()) > 0:
                try:
                    await asyncio.wait_for(stop.wait(), min(left, RELOAD_POLL_S))
                except TimeoutError:
                    continue
                return

    # ------------------------------------------------------------------ reporting

    async def line_item_pages(
        self, catalog: Catalog, offset: int = 0, limit: int | None = None
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """:meth:`line_item_stats` of the catalog's line items in id order, from the
        ``offset``-th, at most ``limit`` of them (None: all), :data:`LISTING_CHUNK` at a time,
        yielding to the event loop between chunks: at 100k line items the listing built in
        one go (500k counters read, 62 MB of JSON) held the loop ~7 s, and every request
        waited. Each chunk is read from the store when it is asked for; a
        :class:`~vastserver.store.base.StoreUnavailable` comes out of the chunk it hit."""
        ids = await _sorted_in_slices(catalog.line_items)
        while offset > 0:  # the skipped ones, a slice at a time
            step = min(SCAN_CHUNK, offset)
            if next(islice(ids, step - 1, step), None) is None:
                return  # fewer line items than that
            offset -= step
            await asyncio.sleep(0)
        left = limit
        while left is None or left > 0:
            chunk = list(islice(ids, LISTING_CHUNK if left is None else min(LISTING_CHUNK, left)))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield await self.line_item_stats(catalog, chunk)
            await asyncio.sleep(0)

    async def line_item_stats(self, catalog: Catalog, ids: Sequence[str]) -> list[dict[str, Any]]:
        now = self.clock()
        reads: list[Read] = []
        per = ("served", "impression", "complete", "spend", "today")
        for li_id in ids:
            tz = catalog.campaigns[catalog.line_items[li_id].campaign_id].timezone
            reads += [
                Read(served_key(li_id), LIFETIME),
                Read(event_key(li_id, "impression"), LIFETIME),
                Read(event_key(li_id, "complete"), LIFETIME),
                Read(spend_key(li_id), LIFETIME),
                Read(delivered_key(f"li:{li_id}", "imp", local_day(now, tz)), LIFETIME),
            ]
        values = await self.store.read(reads, now.timestamp()) if reads else []
        out = []
        k = len(per)
        for n, li_id in enumerate(ids):
            li = catalog.line_items[li_id]
            v = dict(zip(per, values[n * k : n * k + k], strict=True))
            pacing = self.pacing.get(li_id)
            b = li.pacing.budget
            cb = catalog.campaigns[li.campaign_id].budget
            out.append(
                {
                    "id": li_id,
                    "name": li.name,
                    "tier": li.tier.name.lower(),
                    "delivery": li.pacing.delivery.value,
                    "budget": _budget_json(b),
                    "campaign_id": li.campaign_id,
                    "campaign_budget": _budget_json(cb),
                    "served": v["served"],
                    "delivered_impressions": v["impression"],
                    "delivered_today": v["today"],
                    "target_period": "today" if b.daily_impressions is not None else "flight",
                    "completes": v["complete"],
                    "spend": v["spend"] / 1_000_000,
                    "currency": li.currency,
                    "target_now": None if pacing is None else round(pacing.target_now, 3),
                    "throttle": self.throttle.get(li_id, 1.0),
                    "allowance": None if pacing is None else pacing.allowance,
                    "allowance_left": self.room.get(li_id),
                    "exhausted": li_id in self.exhausted,
                    "cap_hits": self.cap_hits.get(li_id, 0),
                }
            )
        return out


async def _sorted_in_slices(ids: Iterable[str]) -> Iterator[str]:
    """``ids`` in order, without holding the event loop for the whole sort (~55 ms for 100k
    ids in no order): runs of :data:`SCAN_CHUNK` are sorted between yields, then merged
    lazily as the ids are taken."""
    pending = list(ids)
    runs: list[list[str]] = []
    for start in range(0, len(pending), SCAN_CHUNK):
        runs.append(sorted(pending[start : start + SCAN_CHUNK]))
        await asyncio.sleep(0)
    return heapq.merge(*runs)


def _budget_json(b: Budget) -> dict[str, float | int | None]:
    return {
        "impressions": b.impressions,
        "daily_impressions": b.daily_impressions,
        "spend": b.spend,
        "daily_spend": b.daily_spend,
    }


EXPOSURE_WINDOW = Window(86400, 3600)


def exposure_read(viewer: Viewer) -> Read | None:
    """Impressions a viewer counted over the last 24 h (a model feature: ad fatigue); with
    ``lmt``, the session's. None for ``lmt`` without a session: no viewer to count for (one
    ``vx:s:-`` counter summed every such viewer's impressions into each one's exposures)."""
    if not viewer.lmt:
        return Read(f"vx:v:{viewer.hash}", EXPOSURE_WINDOW)
    if not viewer.session:
        return None
    return Read(f"vx:s:{viewer.session}", EXPOSURE_WINDOW)


def _li_budget(li: LineItem) -> int | None:
    b = li.pacing.budget
    return b.daily_impressions if b.daily_impressions is not None else b.impressions


CANDIDATE_CACHE_SIZE = 50_000


def _candidate(catalog: Catalog, token: AdToken) -> Candidate:
    """The ad the token was served as, rebuilt from ``catalog``, so that its impression commits
    (and its ``notUsed`` releases) what the serve reserved, whatever a reload changed since.

    The campaign and advertiser are the token's, the ones it was served under, not the line
    item's current ones: a line item moved to another campaign still charges the campaign's
    budgets, campaign and advertiser caps (and daily day, in that campaign's time zone) of
    the serve. What the catalog no longer has stands in by its id alone, with no budgets or
    caps of its own (nothing serves against their counters any more):

    * a line item gone: its campaign's budgets and the campaign, advertiser and creative caps
      other line items define still count;
    * a campaign gone too: the advertiser and creative caps still count (its budgets, and
      the campaign caps only its own line items could read, are gone with it); its local
      day is taken in the zone of the line item's current campaign, else UTC;
    * an advertiser gone: its caps, keyed by id, still count;
    * a creative rotated out: its impression still counts towards the line item's budgets
      and caps (and the creative's own caps, keyed by its id)."""
    li = catalog.line_items.get(token.line_item_id)
    camp = catalog.campaigns.get(token.campaign_id)
    if camp is None:
        current = None if li is None else catalog.campaigns.get(li.campaign_id)
        camp = Campaign(
            id=token.campaign_id,
            advertiser_id=token.advertiser_id,
            name="",
            start=_EPOCH,
            end=_EPOCH,
            timezone="UTC" if current is None else current.timezone,
        )
    if li is None:
        li = LineItem(
            id=token.line_item_id,
            campaign_id=camp.id,
            name="",
            tier=Tier.STANDARD,
            creative_ids=(token.creative_id,),
            start=_EPOCH,
            end=_EPOCH,
        )
    adv = catalog.advertisers.get(token.advertiser_id) or Advertiser(
        id=token.advertiser_id, name="", domain=""
    )
    cr = catalog.creatives.get(token.creative_id) or Creative(
        id=token.creative_id,
        advertiser_id=adv.id,
        title="",
        duration_ms=0,
        renditions=(),
        universal_ad_id="",
    )
    return Candidate(li, cr, camp, adv)


_EPOCH = datetime.fromtimestamp(0, UTC)
