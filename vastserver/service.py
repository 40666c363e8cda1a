"""The serving core without HTTP: catalog snapshot, decisions, stream-level separation.

Data flows one way: request -> retrieve candidates -> (counters) -> pure ``decide`` -> render.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from pathlib import Path

from vastserver.catalog.load import load_catalog
from vastserver.catalog.model import Catalog
from vastserver.delivery import DeliveryControl, Prefetched, decision_history
from vastserver.gcpause import gc_paused
from vastserver.logs import REQUEST_ID, event
from vastserver.metrics import Metrics
from vastserver.models import ModelManager
from vastserver.pipeline.candidates import Candidate, unique_media_key
from vastserver.pipeline.context import AdRequest, BreakSpec
from vastserver.pipeline.decide import Decision, PlacedAd, Trace, decide, screen
from vastserver.pipeline.delivery import (
    GateCache,
    Viewer,
    recent_from_history,
    reservation_plan,
)
from vastserver.pipeline.matching import CANDIDATE_LIMIT, CatalogIndex, build_index
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.schedule import PlannedBreak
from vastserver.pipeline.scoring import PriceScorer, Scorer, ScoringContext
from vastserver.pipeline.stages import DELIVERY_FILTERS, PRE_DELIVERY_FILTERS, StageEnv
from vastserver.records import EventSink, NullSink, decision_record
from vastserver.store.base import StoreUnavailable, within
from vastserver.tracking import Keyring, anonymous_viewer_hash, new_ad_serving_ids, viewer_hash

log = logging.getLogger("vastserver.service")
_owners = itertools.count()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable catalog and the indexes built from it; replaced whole on reload."""

    catalog: Catalog
    index: CatalogIndex
    source: str
    loaded_at: datetime


def _media_of(catalog: Catalog, creatives: frozenset[str]) -> frozenset[str]:
    """The media keys of the session's recent creatives still in the catalog (none for most
    requests: no session history)."""
    if not creatives:
        return frozenset()
    found = (catalog.creatives.get(cid) for cid in creatives)
    return frozenset(unique_media_key(cr) for cr in found if cr is not None)


def build_snapshot(catalog: Catalog, source: str, now: datetime) -> Snapshot:
    return Snapshot(catalog=catalog, index=build_index(catalog), source=source, loaded_at=now)


def _load_snapshot(source: Path, now: datetime) -> Snapshot:
    """Load and index ``source`` with the cyclic GC paused throughout (the catalog and its
    index are acyclic; collections would hold the GIL, stalling the serving loop of a
    reload) and what was built frozen out of the collector's way, as start-up does after
    loading: a reload of 100k line items otherwise stopped serving for 4-6 s in the first
    full collection after the swap."""
    with gc_paused(freeze=True):
        catalog = load_catalog(source)
        return build_snapshot(catalog, str(source), now)


MIN_STORE_WAIT_S = 0.005
"""A store call always gets at least this long, even past the deadline (a reservation that
never reaches the store would let a cap overshoot)."""
SCORING_RESERVE_S = 0.002
"""Score with the model only if at least this much of the deadline is left."""
SESSION_LOCK_POLL_S = 0.003
"""How often a decision whose session is being decided by another request asks again."""
SESSION_LOCK_RESERVE_S = 0.025
"""Stop waiting for a session's lock when less than this is left of the deadline: the
decision then goes on unlocked (``session_lock_timeout``), with time to read, decide and
reserve."""
SESSION_LOCK_WAIT_S = 1.0
"""Without a deadline, wait at most this long for a session's lock."""
SESSION_LOCK_MARGIN_MS = 250
"""A session's lock expires this long after its decision's deadline (a decision goes on a
little past it: each store call gets at least ``MIN_STORE_WAIT_S``)."""
SESSION_LOCK_LOCAL_TTL_MS = 1000
"""The expiry of a session's lock in a local store: it is released by this process, on the
way out of its decision (a local store's calls never suspend, so even a cancelled decision
releases it), long before."""
_LOCK_OWNER = os.urandom(6).hex() + ":"
"""Names this process's decisions as lock owners (with a count): unique across the
instances sharing a store."""


RETRY_MIN_S = 0.02
"""The least of the deadline left for deciding a pod again after a lost commit race."""


@dataclass(slots=True)
class _Turn:
    """A decision's hold on its session's lock: ``owner`` names it; ``handed_off`` once the
    history write that also frees it returned or timed out: the decision then releases
    nothing more (a write that failed released on its own; one that timed out may still
    land, and leaves the lock to expire rather than free the session before its break is in
    the history). A decision that fails or is cancelled before that releases the lock."""

    owner: str
    handed_off: bool = False


class TimedScorer:
    """Times each batched prediction for the model latency metric."""

    def __init__(self, inner: Scorer, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self._hist = metrics.model_seconds_by(inner.name, inner.version)

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        t = time.perf_counter()
        try:
            return self.inner.predict(req, cands, ctx)
        finally:
            self._hist.observe(time.perf_counter() - t)


@dataclass(slots=True)
class Preview:
    """What the earlier breaks of one preview stream (an ``inline=1`` VMAP with ``test=1``)
    would have written to the store had they been real, for its later breaks to see: a
    real inline VMAP's breaks each reserve their ads and enter the session's history before
    the next is decided, so its later breaks keep out a creative or competitive category
    shown before and an ad whose cap an earlier break's reservation reached. A test decision
    writes nothing, so without this its breaks would repeat what a viewer never gets.
    Request-local: it lives as long as the request and nothing of it reaches the store."""

    history: list[str] = field(default_factory=list)
    """Session-history entries of the breaks decided so far (as ``remember`` writes)."""
    reserved: dict[str, int] = field(default_factory=dict)
    """Counter key -> what the breaks' reservations would have added (as ``commit``)."""

    def add_to(self, counts: dict[str, int]) -> None:
        """The counters as they would read after the earlier breaks' reservations."""
        for k, n in self.reserved.items():
            counts[k] = counts.get(k, 0) + n


class AdService:
    def __init__(
        self,
        snapshot: Snapshot,
        *,
        clock: Callable[[], datetime],
        metrics: Metrics,
        keyring: Keyring,
        delivery: DeliveryControl,
        rng: random.Random,
        models: ModelManager | None = None,
        scorer: Scorer | None = None,
        events: EventSink | None = None,
        candidate_limit: int = CANDIDATE_LIMIT,
        log_scoring_inputs: bool = True,
    ) -> None:
        """``log_scoring_inputs``: decision records carry each ad's scoring history inputs
        (``completion_rate``, ``viewer_exposures``) for training; see ``decision_record``."""
        self.candidate_limit = candidate_limit
        self.log_scoring_inputs = log_scoring_inputs
        self._snapshot = snapshot
        self.clock = clock
        self._reloading = asyncio.Lock()
        self.metrics = metrics
        self.keyring = keyring
        self.delivery = delivery
        self.rng = rng
        self.draws = random.Random(rng.random())
        """Creative rotation's draws: a fast generator seeded from ``rng``, which in
        production is ``SystemRandom`` (unpredictable ids, one system call per draw)."""
        self.models = models or ModelManager.fixed(metrics, scorer)
        self._fallback: Scorer = PriceScorer()
        self.events: EventSink = events or NullSink()
        self._set_catalog_metric(snapshot)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _set_catalog_metric(self, snap: Snapshot) -> None:
        self.metrics.catalog_info.clear()
        self.metrics.catalog_info.labels(snap.catalog.version).set(len(snap.catalog.line_items))

    def reload_catalog(self, path: Path | None = None) -> Snapshot:
        """Load, validate and index a new catalog, then swap it in with one assignment.

        Any error leaves the old snapshot serving (the caller reports the error). This runs
        on the caller's thread: the server uses :meth:`reload_catalog_in_thread`."""
        return self._install(self._load(Path(path or self._snapshot.source)))

    async def reload_catalog_in_thread(self, path: Path | None = None) -> Snapshot:
        """:meth:`reload_catalog` with the loading and indexing in a worker thread, so the
        event loop keeps serving meanwhile (a 100k catalog takes ~15 s; a catalog path that
        blocks, such as a FIFO, blocks only the thread). One reload at a time; the swap
        happens on the loop."""
        async with self._reloading:
            source = Path(path or self._snapshot.source)
            return self._install(await asyncio.to_thread(self._load, source))

    def _load(self, source: Path) -> Snapshot:
        """Load, validate and index ``source``; a failure is counted and raised."""
        try:
            return _load_snapshot(source, self.clock())
        except Exception:
            self.metrics.catalog_reloads.labels("rejected").inc()
            raise

    def _install(self, snap: Snapshot) -> Snapshot:
        self._snapshot = snap
        # the per-candidate gate entries hold the old snapshot's candidates: let them go
        self.delivery.gate_cache = GateCache()
        self.metrics.catalog_reloads.labels("ok").inc()
        self._set_catalog_metric(snap)
        event(log, "catalog_reload", version=snap.catalog.version)
        return snap

    def _env(self, req: AdRequest, now: datetime) -> StageEnv:
        """Blocklists: the catalog's, the placement's and the request's (bcat/badv)."""
        cat = self._snapshot.catalog
        rules = cat.rules_for(req.placement)
        return StageEnv(
            now=now,
            rng=self.draws,
            blocked_categories=(
                cat.blocked_categories | rules.blocked_categories | req.blocked_categories
            ),
            blocked_domains=cat.blocked_domains | rules.blocked_domains | req.blocked_domains,
        )

    async def decide(
        self,
        req: AdRequest,
        *,
        request_id: str | None = None,
        explain: bool = False,
        deadline: float | None = None,
        preview: Preview | None = None,
    ) -> Decision:
        """retrieve -> pure filters -> counters (one store round trip) -> delivery filter,
        score, pod -> reserve (one round trip) -> ad serving ids -> metrics and event log.

        ``deadline`` (event-loop time) bounds the store calls; when it runs short the decision
        degrades instead of waiting: counters missing -> the store failure policy (caps open,
        budgets closed); no time left to score -> price-only values; a slow reservation ->
        budgeted ads dropped. Each degradation is counted by reason.

        ``preview`` (a test request's stream, :meth:`decide_stream`): the counters and
        session history are read as the stream's earlier breaks would have left them, and
        this break's ads are added to it instead of the store.

        The decisions of one ``session`` take turns (:meth:`_lock_session`): from reading its
        history to writing this break's into it, no other decision of the session (in this
        process or another instance on the same store) reads it, so breaks fetched at once
        (a stitcher's look-ahead) keep stream-level separation. A test request writes
        nothing and takes no turn."""
        session = req.session
        if not session or req.test:
            return await self._decide(req, request_id, explain, deadline, preview)
        store = self.delivery.store
        owner = _LOCK_OWNER + str(next(_owners))
        got: bool | None = False
        if store.local:  # answers at once: a free lock is one call, no deadline arithmetic
            got = await self.delivery.lock_session(session, owner, SESSION_LOCK_LOCAL_TTL_MS)
        if got is False:
            got = await self._lock_session(session, owner, deadline)
        if got is None:
            self.metrics.degradations.labels("session_lock_unavailable").inc()
        if not got:
            return await self._decide(req, request_id, explain, deadline, preview)
        turn = _Turn(owner)
        try:
            return await self._decide(req, request_id, explain, deadline, preview, turn)
        finally:
            # the history write frees it (one round trip), unless the decision failed or was
            # cancelled before that
            if turn.handed_off:
                pass
            elif store.local:
                await self.delivery.unlock_session(session, owner)
            else:
                await self._unlock_session(session, owner, deadline)

    async def _lock_session(self, session: str, owner: str, deadline: float | None) -> bool | None:
        """Take the lock on ``session``'s history for ``owner``; while another decision holds
        it, ask again every ``SESSION_LOCK_POLL_S`` until it is free or too little of the
        deadline is left. True when taken; False when the decision goes on without its turn
        (counted: ``session_lock_timeout``); None when the store failed (counted in the store
        errors; the caller counts the degradation)."""
        loop = asyncio.get_running_loop()
        store = self.delivery.store
        give_up = (
            loop.time() + SESSION_LOCK_WAIT_S
            if deadline is None
            else deadline - SESSION_LOCK_RESERVE_S
        )
        while True:
            left = SESSION_LOCK_WAIT_S if deadline is None else deadline - loop.time()
            ttl_ms = max(1, math.ceil(left * 1000)) + SESSION_LOCK_MARGIN_MS
            call = self.delivery.lock_session(session, owner, ttl_ms)
            if store.local:
                got = await call
            else:
                try:
                    got = await within(
                        store, call, None if deadline is None else max(MIN_STORE_WAIT_S, left)
                    )
                except TimeoutError:  # the deadline passed meanwhile
                    got = False
            if got is not False:
                return got
            if loop.time() + SESSION_LOCK_POLL_S > give_up:
                self.metrics.degradations.labels("session_lock_timeout").inc()
                return False
            await asyncio.sleep(SESSION_LOCK_POLL_S)

    async def _unlock_session(self, session: str, owner: str, deadline: float | None) -> None:
        """Release ``owner``'s lock on ``session`` (a release that fails or times out leaves
        it to expire)."""
        loop = asyncio.get_running_loop()
        try:
            await within(
                self.delivery.store,
                self.delivery.unlock_session(session, owner),
                None if deadline is None else max(MIN_STORE_WAIT_S, deadline - loop.time()),
            )
        except TimeoutError:
            pass

    async def _decide(
        self,
        req: AdRequest,
        request_id: str | None,
        explain: bool,
        deadline: float | None,
        preview: Preview | None,
        turn: _Turn | None = None,
        retried: Mapping[str, Reason] | None = None,
    ) -> Decision:
        """:meth:`decide`, once the session (if any) is this decision's to read and write.
        ``turn``: the session's lock, when this decision holds it: freed by the history write.

        A pod whose every ad the commit refused (another instance or request reserved the
        last of a cap or budget since the counters were read: a race, not a store fault) is
        decided once more, the counters read again, when the deadline leaves the time
        (``retried``: this is that second decision, and the line items the commit refused,
        by the reason it refused each, which it leaves out: whatever made the commit refuse
        one, the counters read again could admit it again and build the same pod); else the
        break would go empty while other ads, the house ones at least, were eligible."""
        loop = asyncio.get_running_loop()

        def left(floor: float = 0.0) -> float | None:
            return None if deadline is None else max(floor, deadline - loop.time())

        snap = self._snapshot
        now = self.clock()
        pacing = self.delivery.pre_gate()
        if retried:
            pacing.refused_lines = retried
        env = replace(self._env(req, now), pre=pacing)
        ordinals: list[int] = []
        kept, dropped = snap.index.select(req, env, self.candidate_limit, ordinals)
        key = req.viewer_key()
        vh = anonymous_viewer_hash(self.rng) if key is None else viewer_hash(key, self.keyring)
        viewer = Viewer.of(req, vh)
        try:
            pre = await within(
                self.delivery.store,
                self.delivery.prefetch(
                    kept,
                    viewer,
                    now,
                    session=req.session,
                    avail=req.brk.session_avail,
                    pre=pacing,
                ),
                left(MIN_STORE_WAIT_S),
            )
        except TimeoutError:
            self.metrics.degradations.labels("store_timeout").inc()
            pre = self.delivery.degraded(kept, viewer, now, pacing)
        else:
            if pre.degraded:  # the store failed at once (down, refused)
                self.metrics.degradations.labels("store_unavailable").inc()
        if preview is not None and not pre.degraded:  # (degraded: caps and history open)
            pre = self._previewed(pre, preview, req, now)
        refusals: list[tuple[str, Reason]] = []
        if dropped.get(Reason.OUTRANKED):
            kept, dropped, refusals = await self._refill(
                snap, req, env, viewer, now, pre, kept, dropped, ordinals, left, preview
            )
        env = replace(
            env,
            gate=pre.gate,
            viewer_exposures=pre.exposures,
            recent_creatives=pre.recent_creatives,
            recent_media=_media_of(snap.catalog, pre.recent_creatives),
            recent_competitive=pre.recent_competitive,
            completion_rates=self.delivery.completion_rates,
        )
        prior: tuple[Trace, ...] = ()
        if explain or req.debug:
            prior = self._explain_dropped(snap, req, env, kept)
        arm, chosen = self.models.choose(req)
        scorer: Scorer = TimedScorer(chosen, self.metrics)
        remaining = left()
        if remaining is not None and remaining < SCORING_RESERVE_S:
            self.metrics.degradations.labels("scoring_skipped").inc()
            self.metrics.model_fallback.labels("deadline").inc()
            scorer = self._fallback
        d = decide(req, kept, env, scorer=scorer, filters=DELIVERY_FILTERS, prior=prior)
        if d.pod_budget_spent:
            self.metrics.degradations.labels("pod_search_budget").inc()
        if not req.test:  # a test request reserves nothing and leaves no session history
            picked, errors = d.ads, self.delivery.store_errors
            d = await self.delivery.commit(
                d, viewer, within=left(MIN_STORE_WAIT_S), catalog=snap.catalog
            )
            if len(d.ads) < len(picked) and self.delivery.store_errors > errors:
                self.metrics.degradations.labels("commit_failed").inc()
            elif (
                picked
                and not d.ads
                and retried is None
                and ((r := left()) is None or r >= RETRY_MIN_S)
            ):
                self.metrics.degradations.labels("commit_race_retry").inc()
                return await self._decide(
                    req, request_id, explain, deadline, preview, turn, _commit_refused(d, picked)
                )
            unlock = None if turn is None else turn.owner
            try:
                await within(
                    self.delivery.store,
                    self.delivery.remember(d, unlock=unlock),
                    left(MIN_STORE_WAIT_S),
                )
            except TimeoutError:
                self.metrics.degradations.labels("history_timeout").inc()
            if turn is not None:
                turn.handed_off = True
        elif preview is not None:
            self._preview_reserve(d, viewer, snap, preview)
        d = replace(
            d,
            viewer_hash=vh,
            ads=tuple(
                replace(a, ad_serving_id=i)
                for a, i in zip(d.ads, new_ad_serving_ids(self.rng, len(d.ads)), strict=True)
            ),
        )
        if req.test:
            # A preview counts in none of the decision metrics (the handler counts it in
            # ``previews``: fill rate and delivery are the viewers'), and is no serve to
            # learn from: no decision record.
            return d
        # The metrics count the index's drops whether or not the request is explained: the
        # explanation's own screen of the same candidates (``prior``) may name another of
        # the reasons a candidate fails, and leaves nothing ``outranked`` unexamined.
        self._observe(d, dropped, explained=len(prior))
        self.delivery.note_rejections(
            d,
            skip=len(prior),
            refused=refusals,
        )
        shadow = None
        if d.ads and self.models.shadow is not None:
            ctx = ScoringContext(now, pre.exposures, env.completion_rates)
            scores = self.models.shadow_scores(req, [a.candidate for a in d.ads], ctx)
            if scores is not None:
                shadow = (self.models.shadow.version, scores)
        score_hist = self.metrics.model_score_by(scorer.name, scorer.version)
        for a in d.ads:
            score_hist.observe(a.prediction)
        if arm is not None:
            self.metrics.experiment_decisions.labels(
                self.models.experiment or "", arm, "filled" if d.ads else "empty"
            ).inc()
        if not isinstance(self.events, NullSink):  # no log: skip building the record
            self.events.append(
                decision_record(
                    d,
                    request_id=request_id,
                    arm=arm,
                    experiment=self.models.experiment if arm is not None else None,
                    model_version=scorer.version,
                    shadow=shadow,
                    scoring=(
                        ScoringContext(now, env.viewer_exposures, env.completion_rates)
                        if self.log_scoring_inputs
                        else None
                    ),
                )
            )
        return d

    def _previewed(
        self, pre: Prefetched, preview: Preview, req: AdRequest, now: datetime
    ) -> Prefetched:
        """``pre`` as the preview stream's earlier breaks would have left the store."""
        preview.add_to(pre.gate.counts)
        if not req.session:
            return pre
        creatives, comps = recent_from_history(
            preview.history, req.brk.session_avail, now.timestamp(), self.delivery.separation
        )
        return replace(
            pre,
            recent_creatives=pre.recent_creatives | creatives,
            recent_competitive=pre.recent_competitive | comps,
        )

    def _preview_reserve(
        self, d: Decision, viewer: Viewer, snap: Snapshot, preview: Preview
    ) -> None:
        """Add what committing and remembering ``d`` would have written to ``preview``."""
        if not d.ads:
            return
        scopes = self.delivery.scopes(snap.catalog)
        for a in d.ads:
            _, incrs = reservation_plan(
                a.candidate, viewer, d.now, a.price_cpm, scopes, self.delivery.gate_cache
            )
            for incr in incrs:
                preview.reserved[incr.key] = preview.reserved.get(incr.key, 0) + incr.amount
        if d.request.session:
            preview.history += decision_history(d)

    @property
    def scorer(self) -> Scorer:
        """The primary scorer (the model, or the price fallback)."""
        return self.models.primary

    @scorer.setter
    def scorer(self, scorer: Scorer) -> None:
        self.models.use(scorer)

    async def decide_stream(
        self,
        base: AdRequest,
        breaks: list[PlannedBreak],
        *,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> list[Decision | None]:
        """Decide the breaks of a stream in order, sharing one deadline. Each decision lands
        in the session's history before the next is made, so stream-level separation applies
        across them; a test stream's (a preview's) lands in a request-local :class:`Preview`
        instead, with its reservations, so it shows the separation and caps a real one
        would have while writing nothing. The first break is always decided; once the
        deadline has passed the later ones are not (None): the caller sends those as ad
        tags to fetch when due, so a long schedule costs at most about a deadline of work.
        Every break's decision record carries ``request_id``, by default the id of the
        request being served."""
        loop = asyncio.get_running_loop()
        rid = REQUEST_ID.get() if request_id is None else request_id
        out: list[Decision | None] = []
        preview = Preview() if base.test else None
        for b in breaks:
            if out and deadline is not None and loop.time() >= deadline:
                out.append(None)
                continue
            req = replace(base, brk=break_spec(b, base.brk))
            out.append(await self.decide(req, request_id=rid, deadline=deadline, preview=preview))
        return out

    async def _refill(
        self,
        snap: Snapshot,
        req: AdRequest,
        env: StageEnv,
        viewer: Viewer,
        now: datetime,
        pre: Prefetched,
        kept: list[Candidate],
        dropped: dict[Reason, int],
        ordinals: list[int],
        left: Callable[[float], float | None],
        preview: Preview | None = None,
    ) -> tuple[list[Candidate], dict[Reason, int], list[tuple[str, Reason]]]:
        """Select again when the counters refuse every kept candidate of a separation group
        (the viewer's caps, a budget spent since the last pacing pass) and the selection
        left candidates out: at most ``per_group`` are kept per group, so a capped line
        item with several creatives otherwise shuts its competitors out of the break. The
        refused candidates take no place the second time (they are counted under their
        reasons by the selection), and the new ones' counters come in one more store
        read. Once a request; on a store failure or timeout the first selection stands.
        A refusal that holds for every creative of the line item (a budget; a cap but a
        creative's own) refuses them all the second time. With the store down (``pre``
        degraded: budgeted line items refused, caps open) nothing is read. A ``preview``
        stream's reservations are added to the counters read, as to the first read's.
        Returns the candidates, the drop counts and the ``(line item id, reason)`` of the
        kept candidates refused this way."""
        gate = pre.gate
        refused: dict[int, Reason] = {}
        refused_at: set[int] = set()
        lines: dict[str, Reason] = {}
        alive: set[str] = set()
        hit: set[str] = set()  # groups with a refused candidate
        for c, i in zip(kept, ordinals, strict=True):
            reason = gate.counted(c)
            if reason is None:
                alive.add(c.group)
                continue
            hit.add(c.group)
            if gate.refuses_line_item(c):
                lines.setdefault(c.line_item.id, reason)
            else:
                refused[id(c)] = reason
                refused_at.add(i)
        if hit <= alive:
            return kept, dropped, []  # (nothing refused, or every group has an ad left)
        gated = env.pre
        earlier = gated.refused_lines  # (a retry's: the line items its first commit refused)
        if earlier:
            lines = {**earlier, **lines}
        gated.refused, gated.refused_at, gated.refused_lines = refused, frozenset(refused_at), lines
        again, dropped_again = snap.index.select(req, env, self.candidate_limit)
        before = {id(c) for c in kept}
        new = [c for c in again if id(c) not in before]
        if new and not pre.degraded:
            try:
                await within(
                    self.delivery.store,
                    self.delivery.prefetch_more(
                        gate, new, viewer, now, preview.reserved if preview else None
                    ),
                    left(MIN_STORE_WAIT_S),
                )
            except (TimeoutError, StoreUnavailable):
                self.metrics.degradations.labels("refill_skipped").inc()
                gated.refused, gated.refused_at, gated.refused_lines = {}, frozenset(), earlier
                return kept, dropped, []
        self.metrics.refills.inc()
        return (
            again,
            dropped_again,
            [
                (c.line_item.id, refused.get(id(c)) or lines[c.line_item.id])
                for c in kept
                if id(c) in refused or c.line_item.id in lines
            ],
        )

    def _explain_dropped(
        self, snap: Snapshot, req: AdRequest, env: StageEnv, kept: list[Candidate]
    ) -> tuple[Trace, ...]:
        """The explanation's view of everything ``snap`` (the decision's catalog, even if a
        reload swapped in another meanwhile) did not keep: the per-candidate filters (the
        specification the bitsets are tested against) name each reason; what passed them but
        fell beyond the candidate limit is ``outranked``."""
        passed = {id(c) for c in kept}
        rest = [c for c in snap.index.candidates if id(c) not in passed]
        screened = screen(req, rest, env, PRE_DELIVERY_FILTERS)
        return (
            *screened.traces,
            *(
                Trace(
                    c.line_item.id,
                    c.creative.id,
                    c.advertiser.id,
                    Reason.OUTRANKED,
                    labels=c.labels,
                )
                for c in screened.survivors
            ),
        )

    def _observe(self, d: Decision, dropped: Mapping[Reason, int], explained: int = 0) -> None:
        """Count the decision; its first ``explained`` traces are the explanation's view of
        what ``dropped`` counts already."""
        m = self.metrics
        rejected = m.rejected
        for reason, n in dropped.items():
            rejected[reason].inc(n)
        m.pods_by("filled" if d.filled else "empty").inc()
        m.ads_per_pod.observe(len(d.ads))
        m.seconds_requested.inc(d.request.brk.pod_duration_ms / 1000)
        m.seconds_filled.inc(d.total_duration_ms / 1000)
        tally: dict[Reason, int] = {}
        for t in islice(d.traces, explained, None):
            if t.reason is not None:
                tally[t.reason] = tally.get(t.reason, 0) + 1
        for reason, n in tally.items():
            rejected[reason].inc(n)


_COMMIT_REFUSALS = frozenset({Reason.BUDGET_EXHAUSTED, Reason.FREQUENCY_CAP})


def _commit_refused(d: Decision, chosen: Sequence[PlacedAd]) -> dict[str, Reason]:
    """The line items of the ``chosen`` ads that the commit of ``d`` refused (a cap or a
    budget guard failed), each with its trace's reason; not those it dropped only to close
    the ranks (``not_selected``: their reservations were given back)."""
    ids = {(a.candidate.line_item.id, a.candidate.creative.id) for a in chosen}
    return {
        t.line_item_id: t.reason
        for t in d.traces
        if t.reason in _COMMIT_REFUSALS and (t.line_item_id, t.creative_id) in ids
    }


def break_spec(b: PlannedBreak, like: BreakSpec) -> BreakSpec:
    return replace(
        like,
        position=b.position,
        pod_duration_ms=round(b.duration_s * 1000),
        max_ads=b.max_ads,
        avail=b.avail,
        avail_given=True,
    )
