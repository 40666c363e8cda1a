"""Per-candidate filters, in pipeline order. Each returns ``None`` (keep) or a :class:`Reason`.

Filters are pure functions of (request, candidate, environment); the environment carries the
injected time and the pre-fetched delivery state, never app globals.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple
from zoneinfo import ZoneInfo

from vastserver.catalog.model import (
    KIDS_RATINGS,
    RATING_RANK,
    Creative,
    Daypart,
    billed_cpm,
    is_https,
    is_vpaid,
)
from vastserver.pipeline.candidates import Candidate, request_values
from vastserver.pipeline.context import AdRequest, below_floors
from vastserver.pipeline.pod import rounded_seconds
from vastserver.pipeline.reasons import Reason

ALCOHOL_CATEGORIES: frozenset[str] = frozenset({"IAB8-5", "IAB8-18"})
"""IAB ad categories for beer/cocktails and wine: never in kids content."""

UNKNOWN_CONTENT_RATING = "TV-PG"
"""Content without a rating is treated as TV-PG: TV-14/TV-MA creatives need a known rating."""

CTV_DEVICE_TYPES: frozenset[str] = frozenset({"ctv", "stb"})
CTV_MIMES: frozenset[str] = frozenset(
    {
        "video/mp4",
        "application/x-mpegurl",
        "application/vnd.apple.mpegurl",
        "application/dash+xml",
    }
)
PLAYABLE_MIMES: frozenset[str] = CTV_MIMES | {"video/webm"}


def playable_urls(cr: Creative, mimes: frozenset[str]) -> list[str]:
    """The URLs a player would fetch for ``cr`` among ``mimes``: its renditions of those
    types, or for a third-party tag the tag itself (which media it returns is the tag's
    business: a wrapper counts as playable everywhere, secure when the tag is https)."""
    if cr.vast_tag_url is not None:
        return [cr.vast_tag_url]
    return [r.url for r in cr.renditions if r.mime.lower() in mimes]


class SlotPay(NamedTuple):
    """Which slots of a pod a candidate's budgets can still pay for: slot 1 (billed at its
    line item's first-slot price, else its price), the last slot of a pod of two or more
    (its last-slot price, else its price) and the slots in between (its price). Only a line
    item with slot prices can afford some but not all (its spend budget's remainder between
    the costs of two of its prices)."""

    first: bool
    last: bool
    middle: bool


_NO_LIMITS: Mapping[int, SlotPay] = MappingProxyType({})


class DeliveryGate:
    """Caps, budgets and pacing over pre-fetched counters (``pipeline.delivery.CountsGate``).

    This base gate admits everything: pure callers without a store (tests, tools)."""

    def check(self, req: AdRequest, cand: Candidate) -> Reason | None:
        return None

    def slot_limits(self) -> Mapping[int, SlotPay]:
        """``id(candidate)`` -> the slots it can pay for, for the candidates :meth:`check`
        admitted that cannot pay for every slot (absent: any slot). Complete once
        :meth:`check` has seen every candidate."""
        return _NO_LIMITS


_UNSEEDED = random.Random()


@dataclass(slots=True)
class PreGate:
    """The delivery checks a request can make before it fetches any counter, applied by the
    selection before its quotas (a candidate they refuse takes no competitor's place among
    the few kept per separation group) and by the ``debug`` explanation alike:

    * line items the pacing loop found out of budget (``exhausted``);
    * pacing allowances: a paced line item whose ``room`` (what this instance may still
      serve of it until the next pacing pass) is used up;
    * pacing throttles: one draw per line item per request from the injected ``rng``, so a
      line item with several creatives passes with its throttle's probability, not once
      per creative;
    * candidates a first counter fetch of this request refused (``refused``: caps and
      budgets), when the selection is made again without them.

    The default admits everything (pure callers without delivery control)."""

    paced: frozenset[str] = frozenset()
    """Line items :meth:`pacing` may refuse: ``exhausted``, those with an allowance in
    ``room`` and those throttled below 1 (the same object from one pacing pass to the next,
    so the selection caches its bitset)."""
    exhausted: frozenset[str] = frozenset()
    throttle: Mapping[str, float] = field(default_factory=dict)
    """Line item id -> serve probability (absent = 1)."""
    room: Mapping[str, int] = field(default_factory=dict)
    """Line item id -> impressions this instance may still serve of it until the next pacing
    pass (absent: no allowance). Read live, not once a request: the caller counts each
    serve into it as the serve is reserved."""
    rng: random.Random = field(default_factory=lambda: _UNSEEDED)
    """The injected randomness; a pure caller's default draws from an unseeded one (one for
    all: seeding a new one reads the OS's entropy, ~35 µs a request for a default the
    service then replaces)."""
    refused: Mapping[int, Reason] = field(default_factory=dict)
    """``id(candidate)`` -> the reason a counter check refused it."""
    refused_at: frozenset[int] = frozenset()
    """The refused candidates' ordinals in the catalog index (where the selection looks)."""
    refused_lines: Mapping[str, Reason] = field(default_factory=dict)
    """Line item id -> the reason a counter check refused one of its candidates for, when
    that refuses all of them (a budget; a cap but a creative's own)."""
    _drawn: dict[str, Reason | None] = field(default_factory=dict)

    def pacing(self, line_item_id: str) -> Reason | None:
        if line_item_id not in self.paced:
            return None
        if line_item_id in self.exhausted:
            return Reason.BUDGET_EXHAUSTED
        if self.room.get(line_item_id, 1) <= 0:
            return Reason.PACING_THROTTLE
        drawn = self._drawn
        if line_item_id not in drawn:
            p = self.throttle.get(line_item_id, 1.0)
            drawn[line_item_id] = Reason.PACING_THROTTLE if self.rng.random() >= p else None
        return drawn[line_item_id]

    def check(self, c: Candidate) -> Reason | None:
        got = self.pacing(c.line_item.id)
        if got is None and self.refused:
            got = self.refused.get(id(c))
        if got is None and self.refused_lines:
            got = self.refused_lines.get(c.line_item.id)
        return got


@dataclass(frozen=True, slots=True)
class StageEnv:
    now: datetime
    blocked_categories: frozenset[str] = frozenset()
    blocked_domains: frozenset[str] = frozenset()
    pre: PreGate = field(default_factory=PreGate)
    """Delivery checks known before the counters (pacing, a first fetch's refusals)."""
    rng: random.Random | None = None
    """The injected randomness (creative rotation); None: ties go to the lowest key."""
    gate: DeliveryGate = field(default_factory=DeliveryGate)
    recent_creatives: frozenset[str] = frozenset()
    """Creatives already shown in this session's separation window."""
    recent_media: frozenset[str] = frozenset()
    """Their media keys (:attr:`Candidate.media_key`): another creative of the same video or
    Universal Ad Id is the same ad to the viewer, kept out as well."""
    recent_competitive: frozenset[str] = frozenset()
    """Competitive labels shown in this session's separation window (every label of each
    ad: its advertiser's, line item's and creative's)."""
    viewer_exposures: int = 0
    """Impressions this viewer counted in the last 24 h (for scoring)."""
    completion_rates: Mapping[str, float] = field(default_factory=dict)
    """Line item id -> historic completion rate (for scoring)."""


Filter = Callable[[AdRequest, Candidate, StageEnv], Reason | None]


def eligibility(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    li, cr, camp = c.line_item, c.creative, c.campaign
    if li.status != "active" or camp.status != "active":
        return Reason.INACTIVE
    now = env.now
    if not (li.start <= now < li.end) or not (camp.start <= now < camp.end):
        return Reason.OUT_OF_FLIGHT
    if req.brk.position not in li.positions:
        return Reason.BREAK_POSITION
    if not cr.approved:
        return Reason.CREATIVE_NOT_APPROVED
    return duration_fit(req, cr)


def duration_fit(req: AdRequest, cr: Creative) -> Reason | None:
    b = req.brk
    if cr.duration_ms > b.pod_duration_ms:  # exact ms (pod.py, "Fractional breaks")
        return Reason.LONGER_THAN_POD
    if b.min_ad_duration_ms is not None and cr.duration_ms < b.min_ad_duration_ms:
        return Reason.SHORTER_THAN_MIN
    if b.max_ad_duration_ms is not None and cr.duration_ms > b.max_ad_duration_ms:
        return Reason.LONGER_THAN_MAX
    if b.required_durations_s is not None and (
        rounded_seconds(cr.duration_ms) not in b.required_durations_s
    ):
        return Reason.DURATION_NOT_REQUIRED
    if b.slots is not None and not any(s.fits(cr.duration_ms) for s in b.slots):
        return Reason.FITS_NO_SLOT
    return None


def _in_daypart(dp: Daypart, now: datetime, default_tz: str) -> bool:
    local = now.astimezone(ZoneInfo(dp.timezone or default_tz))
    return local.weekday() in dp.days and dp.start_hour <= local.hour < dp.end_hour


def targeting(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """The targeting dimensions (key-values and dayparts are in :func:`rules`)."""
    for dim, rule in c.line_item.targeting.rules.items():
        if not rule.allows_any(request_values(req, dim)):
            return Reason.TARGETING
    return None


def rules(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """Key-values and dayparts. A request's key-value is a comma-separated list, as publisher
    ad servers send them (``kv_t=house,daypart``, GAM's ``cust_params``): a rule's include
    matches when any listed value is included, its exclude refuses when any is excluded.
    After :func:`policy` and :func:`pre_gate`, where the bitset index checks them (one
    candidate at a time, after every bitset and the pacing): a candidate failing several
    checks is counted in the metrics under the reason the ``debug`` explanation gives it."""
    t = c.line_item.targeting
    for key, rule in t.key_values.items():
        listed = (req.key_values.get(key) or "").split(",")
        if not rule.allows_any(tuple(v.strip(" \t") for v in listed if v.strip(" \t"))):
            return Reason.TARGETING
    if t.dayparts and not any(_in_daypart(dp, env.now, c.campaign.timezone) for dp in t.dayparts):
        return Reason.DAYPART
    return None


def _category_blocked(categories: Sequence[str], blocked: frozenset[str]) -> bool:
    """IAB categories block by prefix: blocking ``IAB8`` blocks ``IAB8-5``."""
    return any(cat in blocked or cat.split("-", 1)[0] in blocked for cat in categories)


def policy(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    cr, adv = c.creative, c.advertiser
    content_rating = req.content.rating or UNKNOWN_CONTENT_RATING
    categories = c.categories
    kids = req.content.kids or content_rating in KIDS_RATINGS
    if kids and any(cat in ALCOHOL_CATEGORIES for cat in categories):
        return Reason.KIDS_CONTENT
    if RATING_RANK.get(cr.rating, 0) > RATING_RANK.get(content_rating, 0):
        return Reason.CONTENT_RATING
    if env.blocked_domains and adv.domain in env.blocked_domains:
        return Reason.BLOCKED_ADVERTISER
    if env.blocked_categories and _category_blocked(categories, env.blocked_categories):
        return Reason.BLOCKED_CATEGORY
    if req.blocked_attributes and not req.blocked_attributes.isdisjoint(cr.attributes):
        return Reason.BLOCKED_ATTRIBUTE
    if not (req.wrapper_ads if cr.vast_tag_url is not None else req.inline_ads):
        return Reason.PROTOCOL_NOT_ACCEPTED
    ctv = req.device.device_type in CTV_DEVICE_TYPES
    if ctv and is_vpaid(cr.api_framework):
        return Reason.VPAID_ON_CTV
    mimes = CTV_MIMES if ctv else PLAYABLE_MIMES
    playable = playable_urls(cr, mimes)
    if not playable:
        return Reason.NO_PLAYABLE_MEDIA
    if req.mimes is not None:
        playable = playable_urls(cr, mimes & req.mimes)
        if not playable:
            return Reason.MIME_TYPE
    if req.require_https and not any(is_https(u) for u in playable):
        return Reason.INSECURE_MEDIA
    return None


def stream_separation(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """Within a session: no creative again inside the separation window (nor one showing the
    same ad: its video or Universal Ad Id), no competitor of a recent break (windows from
    settings; history fetched with the delivery counters)."""
    if c.creative.id in env.recent_creatives or c.media_key in env.recent_media:
        return Reason.STREAM_SEPARATION
    recent = env.recent_competitive
    if recent and not recent.isdisjoint(c.labels):  # most requests have no recent label
        return Reason.STREAM_SEPARATION
    return None


def floor(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """Price floors (OpenRTB ``mincpmpersec`` per second of ad time, ``bidfloor`` per ad,
    ``durfloors`` per ad by its whole seconds) against the least an impression of the line
    item is billed in any slot: its CPM, or a lower slot price; 0 for a flat line item
    (:attr:`LineItem.floor_cpm`), so a non-zero floor drops it (:func:`below_floors`).
    With per-slot floors (:attr:`AdRequest.slot_floors`), also an ad that no slot it fits
    takes at its price there (:func:`slot_floor_mask`)."""
    per_s, per_ad, by_dur = req.floor_cpm_per_s, req.floor_cpm, req.duration_floors
    if per_s is None and per_ad is None and not by_dur:
        if req.slot_floors is None:
            return None
    elif below_floors(c.line_item.floor_cpm, c.creative.duration_ms, per_s, per_ad, by_dur):
        return Reason.BELOW_FLOOR
    if req.slot_floors is not None and not slot_floor_mask(req, c):
        return Reason.BELOW_FLOOR
    return None


def slot_floor_mask(req: AdRequest, c: Candidate) -> int:
    """The slots of a pod with per-slot floors (:attr:`AdRequest.slot_floors`) the ad may
    fill: bit ``j`` set when it fits ``brk.slots[j]`` and its price meets that slot's imp's
    floors wherever the slot may make it play: the first slot plays first, the last one
    last (or first, the pod's only ad), a slot between them anywhere (an empty slot before
    or after it moves its ad up to first or last). So each place's price counts, a
    first-slot price in the first slot (:func:`~vastserver.pipeline.decide.billed_at`).
    0 when the request has no per-slot floors."""
    floors, rules = req.slot_floors, req.brk.slots
    if floors is None or rules is None:
        return 0
    li = c.line_item
    ms = c.creative.duration_ms
    own = billed_cpm(li, li.price)
    first = own if li.first_slot_price is None else billed_cpm(li, li.first_slot_price)
    last = own if li.last_slot_price is None else billed_cpm(li, li.last_slot_price)
    end = len(floors) - 1
    mask = 0
    for j, (rule, f) in enumerate(zip(rules, floors, strict=True)):
        least = first if j == 0 else min(first, last) if j == end else min(first, own, last)
        if rule.fits(ms) and f.admits(least, ms):  # (the higher the price, the more it admits)
            mask |= 1 << j
    return mask


def pre_gate(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    """:class:`PreGate`: out of budget, throttled, refused by a first counter fetch."""
    return env.pre.check(c)


def delivery(req: AdRequest, c: Candidate, env: StageEnv) -> Reason | None:
    return env.gate.check(req, c)


PRE_DELIVERY_FILTERS: tuple[Filter, ...] = (eligibility, targeting, policy, pre_gate, rules, floor)
"""Filters that need no counters; delivery runs after the counters are fetched. In the order
the bitset index checks them, so both name the same first failing check."""
DELIVERY_FILTERS: tuple[Filter, ...] = (stream_separation, delivery)
"""Filters that read state fetched from the store (one round trip after the pure filters)."""
FILTERS: tuple[Filter, ...] = (*PRE_DELIVERY_FILTERS, *DELIVERY_FILTERS)
