"""The decision: filters -> score -> pod, with a trace of every candidate.

``decide`` is pure and synchronous: retrieval, counter pre-fetch and rendering happen around it
(``vastserver.service``). Time comes in ``env.now``; randomness (creative rotation) is the
injected ``env.rng``; an environment without one rotates nothing.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple

from vastserver.catalog.model import Slot, billed_cpm
from vastserver.pipeline.candidates import Candidate, separation_keys
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.imps import fit_imps
from vastserver.pipeline.pod import (
    PodConstraints,
    PodItem,
    PodResult,
    build_pod,
    capacity_seconds,
)
from vastserver.pipeline.reasons import Reason, Stage
from vastserver.pipeline.scoring import (
    PriceScorer,
    Scorer,
    ScoringContext,
    effective_cpm,
    values,
)
from vastserver.pipeline.stages import FILTERS, Filter, SlotPay, StageEnv, slot_floor_mask

NEG_INF = float("-inf")
_SEPARATION_KEYS = operator.attrgetter("separation_keys")


class Trace(NamedTuple):
    """What happened to one candidate. (A NamedTuple: a decision builds one per candidate,
    and a tuple is built ~5x faster than a frozen dataclass.)"""

    line_item_id: str
    creative_id: str
    advertiser_id: str
    reason: Reason | None
    prediction: float | None = None
    value: float | None = None
    slot: int | None = None
    labels: frozenset[str] = frozenset()
    """The candidate's competitive labels (:attr:`Candidate.labels`), which the
    explanation shows: they say why ``competitive_separation`` dropped it."""

    @property
    def stage(self) -> Stage | None:
        return None if self.reason is None else self.reason.stage


@dataclass(frozen=True, slots=True)
class PlacedAd:
    candidate: Candidate
    slot: int
    prediction: float
    value: float
    price_cpm: float
    """What the impression costs, as a CPM: the slot's price; 0 for a flat line item."""
    ad_serving_id: str = ""
    """Assigned once the pod is final (after delivery commits)."""


@dataclass(frozen=True, slots=True)
class SlottedAd(PlacedAd):
    """An ad of a pod with slot rules (``BreakSpec.slots``), which says whose slot it fills.
    (A subclass, not a field of :class:`PlacedAd`: a field costs every pod's ads, built on
    each request, while only structured pods have one to fill.)"""

    slot_rule: int = field(kw_only=True)
    """The index in ``BreakSpec.slots`` of the rule whose slot this ad fills: ``slot`` is its
    place among the ads played, which an empty slot before it moves up."""


@dataclass(frozen=True, slots=True)
class ImpAd(PlacedAd):
    """An ad of an OpenRTB hybrid pod (``BreakSpec.imps``), which says whose imp it fills
    (a subclass for the reason :class:`SlottedAd` is one)."""

    imp: int = field(kw_only=True)
    """The index in ``BreakSpec.imps`` of the imp this ad fills."""


@dataclass(frozen=True, slots=True)
class Decision:
    request: AdRequest
    ads: tuple[PlacedAd, ...]
    traces: tuple[Trace, ...]
    value: float
    total_duration_ms: int
    scorer: str
    now: datetime
    viewer_hash: str = ""
    pod_exact: bool = True
    """False when the pod is valid but may not be the best (``PodResult.exact``: the
    structured-pod search ran out of budget, overlapping labels were merged, a fractional
    break fell back to its whole seconds)."""
    pod_budget_spent: bool = False
    """The structured-pod search ran out of budget (``PodResult.budget_spent``): a
    degradation, which the service counts (``pod_search_budget``)."""

    @property
    def filled(self) -> bool:
        return bool(self.ads)


def _media_duplicates(
    cands: Sequence[Candidate],
    vals: Sequence[float],
    groups: Sequence[str],
    overlapping: bool = False,
) -> set[int]:
    """Candidates to drop because the same media file serves in another group.

    Two advertisers sharing a video is rare; the best candidate for the file (tier, then
    value, then order) stays and the others from other groups go. (Keeping the choice out of
    the optimiser keeps its groups a partition, which is what makes it exact.)

    ``overlapping`` (some candidate has several separation keys): a copy whose keys overlap
    those of every copy kept before it (the best first) stays too -- the pod builder never
    puts two of them in one pod, so it may choose among them: one advertiser's creative in a
    labelled line item and an unlabelled one, the labelled copy kept out of a pod by a
    competitor the other may join."""
    best: dict[str, int] = {}
    for i, c in enumerate(cands):
        key = c.media_key
        j = best.get(key)
        if j is None or (int(c.line_item.tier), vals[i]) > (
            int(cands[j].line_item.tier),
            vals[j],
        ):
            best[key] = i
    dup = {i for i, c in enumerate(cands) if groups[best[c.media_key]] != groups[i]}
    if not overlapping or not dup:
        return dup
    by_media: dict[str, list[int]] = {}
    for i in sorted(dup, key=lambda i: (-int(cands[i].line_item.tier), -vals[i], i)):
        by_media.setdefault(cands[i].media_key, []).append(i)
    for media, copies in by_media.items():
        kept = [separation_keys(cands[best[media]])]  # its group's copies: the same keys
        for i in copies:
            mine = separation_keys(cands[i])
            if all(not mine.isdisjoint(k) for k in kept):
                dup.discard(i)
                kept.append(mine)
    return dup


def slot_price(c: Candidate, slot: int, pod_size: int) -> float | None:
    """The line item's first/last-slot price for a given slot, None when it has none."""
    li = c.line_item
    if slot == 1 and li.first_slot_price is not None:
        return li.first_slot_price
    if slot == pod_size and pod_size > 1 and li.last_slot_price is not None:
        return li.last_slot_price
    return None


def slot_allows(c: Candidate, slot: int, pod_size: int) -> bool:
    """Whether the line item may play in ``slot`` of a pod of ``pod_size``: the optimiser's
    slot permissions (a one-ad pod's only ad is slot 1, so never a last-only one)."""
    rule = c.line_item.slot
    if rule is Slot.FIRST:
        return slot == 1
    if rule is Slot.LAST:
        return pod_size > 1 and slot == pod_size
    return True


def billed_at(c: Candidate, slot: int, pod_size: int) -> float:
    """What an impression of ``c`` costs in ``slot`` of a pod of ``pod_size``: the slot's
    price, else the line item's own; nothing for a flat line item."""
    price = slot_price(c, slot, pod_size)
    return billed_cpm(c.line_item, c.line_item.price if price is None else price)


def close_ranks(ads: Sequence[PlacedAd]) -> tuple[list[PlacedAd], list[PlacedAd]]:
    """The ads of a pod some of whose ads were refused at commit, renumbered 1..n, and the
    ones that cannot stay. An ad moving up may land in a slot its line item does not allow
    (a last-only ad left alone in slot 1) or that has another price (a first-slot price):
    it was reserved, and would be billed, at its old slot's price, so it goes too (its
    reservation lapses unspent), one at a time from the first, until the rest agree."""
    kept = list(ads)
    dropped: list[PlacedAd] = []
    while True:
        n = len(kept)
        bad = next(
            (
                i
                for i, a in enumerate(kept)
                if not slot_allows(a.candidate, i + 1, n)
                or billed_at(a.candidate, i + 1, n) != a.price_cpm
            ),
            None,
        )
        if bad is None:
            return [replace(a, slot=i) for i, a in enumerate(kept, start=1)], dropped
        dropped.append(kept.pop(bad))


def _pod_item(
    i: int, c: Candidate, value: float, group: str, pay: SlotPay | None = None
) -> PodItem:
    """Slot restrictions become -inf slot values; slot prices scale the value (value is
    linear in price). ``pay``: the slots the candidate's budgets can pay for, when not all
    (the others are not allowed, as a slot rule would forbid them)."""
    li = c.line_item
    slot = li.slot
    first = last = None
    if slot is Slot.LAST:
        first = NEG_INF
    elif li.first_slot_price is not None:
        first = value * li.first_slot_price / effective_cpm(c)
    if slot is Slot.FIRST:
        last = NEG_INF
    elif li.last_slot_price is not None:
        last = value * li.last_slot_price / effective_cpm(c)
    middle = slot is Slot.ANY
    if pay is not None:
        if not pay.first:
            first = NEG_INF
        if not pay.last:
            last = NEG_INF
        middle = middle and pay.middle
    # positional: a decision builds one per candidate, and keywords cost a third of the call
    return PodItem(i, c.creative.duration_ms, value, int(li.tier), group, first, last, middle)


def rotation_keys(
    cands: Sequence[Candidate], vals: Sequence[float], rng: random.Random | None
) -> list[int]:
    """The optimiser's key for each candidate: its index, except that the creatives of one line
    item the optimiser cannot tell apart (the same value and capacity seconds) trade their
    indices at random. The optimiser gives exact ties to the lowest key, so each of ``N`` such
    creatives wins ``1/N`` of the requests, while a creative of higher value (one the model
    prefers) still wins outright; the pod stays exact, and a given ``rng`` state gives the
    same pod. ``rng`` None (a caller without one) keeps the indices."""
    keys = list(range(len(cands)))
    if rng is None:
        return keys
    by_line_item: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        by_line_item.setdefault(c.line_item.id, []).append(i)
    for members in by_line_item.values():
        if len(members) < 2:
            continue
        if len(members) == 2:  # the common case, without a shuffle's overhead
            i, j = members
            if (
                vals[i] == vals[j]
                and capacity_seconds(cands[i].creative.duration_ms)
                == capacity_seconds(cands[j].creative.duration_ms)
                and rng.getrandbits(1)
            ):
                keys[i], keys[j] = j, i
            continue
        ties: dict[tuple[float, int], list[int]] = {}
        for i in members:
            tie = (vals[i], capacity_seconds(cands[i].creative.duration_ms))
            ties.setdefault(tie, []).append(i)
        for same in ties.values():
            if len(same) > 1:
                drawn = same[:]
                rng.shuffle(drawn)
                for i, k in zip(same, drawn, strict=True):
                    keys[i] = k
    return keys


@dataclass(frozen=True, slots=True)
class Screened:
    survivors: tuple[Candidate, ...]
    traces: tuple[Trace, ...]


def screen(
    req: AdRequest, cands: Sequence[Candidate], env: StageEnv, filters: Sequence[Filter]
) -> Screened:
    """Run per-candidate filters in order; the first that objects names the reason."""
    traces: list[Trace] = []
    survivors: list[Candidate] = []
    for c in cands:
        reason: Reason | None = None
        for f in filters:
            reason = f(req, c, env)
            if reason is not None:
                break
        if reason is None:
            survivors.append(c)
        else:
            traces.append(
                Trace(c.line_item.id, c.creative.id, c.advertiser.id, reason, labels=c.labels)
            )
    return Screened(tuple(survivors), tuple(traces))


def decide(
    req: AdRequest,
    cands: Sequence[Candidate],
    env: StageEnv,
    *,
    scorer: Scorer | None = None,
    filters: Sequence[Filter] = FILTERS,
    prior: Sequence[Trace] = (),
) -> Decision:
    """Filter, score and build the pod. ``prior`` carries traces of an earlier ``screen``."""
    scorer = scorer or PriceScorer()
    screened = screen(req, cands, env, filters)
    traces: list[Trace] = [*prior, *screened.traces]
    survivors = list(screened.survivors)

    ctx = ScoringContext(env.now, env.viewer_exposures, env.completion_rates)
    predictions = scorer.predict(req, survivors, ctx) if survivors else []
    vals = values(survivors, predictions)
    groups = [c.group for c in survivors]
    # the groups that name several keys (competitive labels), which then overlap: rare
    overlap = (
        {c.group: c.separation_keys for c in survivors if c.separation_keys is not None}
        if any(map(_SEPARATION_KEYS, survivors))
        else None
    )
    dup_media = _media_duplicates(survivors, vals, groups, overlap is not None)
    kept = [i for i in range(len(survivors)) if i not in dup_media]
    keys = rotation_keys([survivors[i] for i in kept], [vals[i] for i in kept], env.rng)
    limits = env.gate.slot_limits()  # (empty unless a slot-priced budget is nearly spent)
    items = [
        _pod_item(
            kept[k],
            survivors[i],
            vals[i],
            groups[i],
            limits.get(id(survivors[i])) if limits else None,
        )
        for i, k in zip(kept, keys, strict=True)
    ]
    of_key = {kept[k]: i for i, k in zip(kept, keys, strict=True)}  # pod key -> survivor
    b = req.brk
    if b.max_ads < 1 or b.pod_duration_ms < 1000:
        pod = PodResult((), (), 0, 0.0)  # the ad rules disable this break
    else:
        pod = build_pod(
            items,
            PodConstraints(
                pod_duration_ms=b.pod_duration_ms,
                max_ads=b.max_ads,
                min_ad_duration_ms=b.min_ad_duration_ms,
                max_ad_duration_ms=b.max_ad_duration_ms,
                required_durations_s=b.required_durations_s,
                slots=b.slots,
                slot_masks=None
                if req.slot_floors is None
                else {k: slot_floor_mask(req, survivors[i]) for k, i in of_key.items()},
            ),
            overlap,
        )
    ordered: Sequence[PodItem] = pod.items
    imp_of: list[int] = []
    unfit: set[int] = set()  # (survivors no split of a hybrid pod's imps takes)
    total_ms = pod.total_duration_ms
    if b.imps is not None and pod.items:
        ordered, imp_of, left_out = fit_imps(pod.items, b.imps)
        unfit = {of_key[it.key] for it in left_out}
        total_ms = sum(it.duration_ms for it in ordered)
    slot_of = {of_key[it.key]: n for n, it in enumerate(ordered, start=1)}
    chosen_groups = {groups[k]: k for k in slot_of}
    chosen_keys = (
        {key: k for k in slot_of for key in separation_keys(survivors[k])} if overlap else None
    )
    placed: list[PlacedAd] = []
    n_ads = len(ordered)
    for i, position in slot_of.items():
        c = survivors[i]
        # The value was computed at the ranking CPM (with its house floor); a slot price
        # scales it. The price paid is the slot's, else the line item's own: a house ad at
        # 0 is billed 0, not the floor that only ranks it.
        price = slot_price(c, position, n_ads)
        value = vals[i] * (1.0 if price is None else price / effective_cpm(c))
        placed.append(PlacedAd(c, position, predictions[i], value, billed_at(c, position, n_ads)))
    if pod.slots:  # a structured pod: which slot rule each ad fills
        placed = [
            SlottedAd(a.candidate, a.slot, a.prediction, a.value, a.price_cpm, slot_rule=j)
            for a, j in zip(placed, pod.slots, strict=True)
        ]
    elif imp_of:  # a hybrid pod: which imp each ad fills
        placed = [
            ImpAd(a.candidate, a.slot, a.prediction, a.value, a.price_cpm, imp=j)
            for a, j in zip(placed, imp_of, strict=True)
        ]
    for i, c in enumerate(survivors):
        slot = slot_of.get(i)
        reason = None
        if i in dup_media:
            reason = Reason.DUPLICATE_CREATIVE
        elif i in unfit:
            reason = Reason.FITS_NO_SLOT
        elif slot is None:
            winner = chosen_groups.get(groups[i])
            if winner is None and chosen_keys:  # a pod ad sharing one of its keys
                winner = next(
                    (chosen_keys[k] for k in sorted(separation_keys(c)) if k in chosen_keys),
                    None,
                )
            if winner is None:
                reason = Reason.NOT_SELECTED
            elif (
                survivors[winner].creative.id == c.creative.id
                or survivors[winner].media_key == c.media_key
            ):
                reason = Reason.DUPLICATE_CREATIVE
            else:
                reason = Reason.COMPETITIVE_SEPARATION
        traces.append(
            Trace(
                c.line_item.id,
                c.creative.id,
                c.advertiser.id,
                reason,
                prediction=predictions[i],
                value=vals[i],
                slot=slot,
                labels=c.labels,
            )
        )
    return Decision(
        request=req,
        ads=tuple(placed),
        traces=tuple(traces),
        value=sum(p.value for p in placed),
        total_duration_ms=total_ms,
        scorer=scorer.name,
        now=env.now,
        pod_exact=pod.exact,
        pod_budget_spent=pod.budget_spent,
    )
