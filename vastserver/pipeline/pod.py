"""Pod building: the best ordered set of ads for one ad break, by exact optimisation.

Problem
-------
Given candidate :class:`PodItem` s and the break's :class:`PodConstraints`, choose an ordered
pod (slot 1 plays first) that maximises the *score* below, subject to:

* ``1 <= len(pod) <= max_ads``;
* at most one item per ``group`` (competitive / creative separation);
* every item is :func:`eligible` (min / max / required durations, fits in the break);
* capacity: ``sum(ceil(duration_ms / 1000)) <= ceil(pod_duration_ms / 1000)`` and
  ``sum(duration_ms) <= pod_duration_ms`` (see below and "Fractional breaks");
* slot permissions: slot 1 uses ``value_first``; the last slot (pods of >= 2 ads) uses
  ``value_last``; the slots in between use ``value`` and need ``middle_allowed``. A slot value of
  ``-inf`` means "not allowed there". A one-ad pod's only ad is slot 1.

Score (the objective)
---------------------
Values are normalised to ``[0, 1)``: ``v_norm = v / scale`` with ``scale = 1.0000001 * m`` where
``m`` is the largest finite slot value (``value``, ``value_first``, ``value_last``) over *all*
candidates passed in, or ``scale = 1`` when every such value is 0. With ``n = max(max_ads,
10)``, the score of a pod is::

    score = sum(gain(item)), gain = TIER_BASES[tier] + v_norm     (paid tiers 1, 2, 3)
                             gain = v_norm * HOUSE_W               (house, tier 0)

over the realised slot values, where ``TIER_BASES = (0, 0.001, G, S)`` (tier 0 house, 1
standard, 2 guaranteed, 3 sponsorship) with ``G = floor(1.001 * n) + 1`` and ``S = n * (G + 1)
+ 1``, and ``HOUSE_W = 0.001 / n``; a house gain is computed as ``v / (scale / HOUSE_W)``, a
paid one as ``base + v / scale``. For ``max_ads <= 10`` these are ``TIER_BASE = (0, 0.001, 11,
121)`` and ``HOUSE_WEIGHT = 0.0001`` (:func:`tier_bases`, :func:`house_weight`). A pod holds at
most ``n`` ads and every ``v_norm`` is < 1, so the score orders pods by

1. the number of sponsorships: every other ad adds less than ``G + 1``, ``n`` of them less
   than ``S`` -- a sponsorship always wins its slot;
2. then the number of guaranteed ads: what is left (values, standard bases, house ads) is
   less than ``n * 1.001 < G``. Delivering the guaranteed impressions sold comes first;
3. then the paid value: the sum of the paid ads' ``v_norm`` plus 0.001 per standard ad, with
   the house ads' part, less than 0.001 in all, last. So standard ads rank by value (by
   revenue, under price scoring), not by number: two standard :15s worth 5 and 6 lose to one
   :30 worth 60; the 0.001 per standard ad only tips near ties (equal value: more ads win).

A standard ad adds at least 0.001, more than all the house ads of a pod: of two pods with the
same higher-tier ads, one with a standard ad beats every one with only house ads besides.
House ads still add their value, so they fill the time paid ads leave; a zero-value house ad
adds nothing and, by the tie rule below, is left out.

Capacity is counted in whole seconds, each ad taking ``ceil(duration_ms / 1000)`` seconds. In a
break of whole seconds, ``P = pod_duration_ms`` a multiple of 1000, that is the whole rule: the
seconds are within ``P // 1000``, and since ``1000 * ceil(d / 1000) >= d`` the exact total is
within ``P`` too. This is conservative: a set whose millisecond total fits while its
ceil-seconds total does not (e.g. 15.2 s + 14.8 s in a 30 s break) is **not** considered.
:func:`eligible` compares a single ad's exact ms with ``P`` (in a whole-second break, the same
as its ceil seconds with ``P // 1000``).

Fractional breaks
-----------------
Live avails come from SCTE-35 break durations, often fractional (29.97, 59.94 s), and NTSC
creatives last 29.97 or 14.985 s. Counting such a break down to ``P // 1000`` seconds would
refuse a 29.97 s ad in a 29.97 s break, so a fractional break has the *two* rules of the
constraint above: ceil seconds within ``ceil(P / 1000)`` ("lenient") and exact ms within ``P``.
Call F the pods meeting both, L those meeting the lenient seconds alone (F is in L), T those
within ``P // 1000`` seconds ("strict"; T is in F, as above). :func:`_build` finds it so:

1. only the ads no longer than ``P`` (exact ms) are kept -- no pod of F holds another;
2. the pod is built as for a break of ``ceil(P / 1000)`` whole seconds: the best of L, by the
   score and the tie rule below, with the same DP, search and cost as a whole-second break;
3. if its exact total is within ``P`` it is in F, and since F is in L it is the best of F,
   ties included: **exact**. This is always so for a one-ad pod (``d <= P`` gives ``ceil(d /
   1000) <= ceil(P / 1000)``), for any pod of at most ``P // 1000`` seconds, and for ads of
   durations that add up exactly (29.97 = 2 x 14.985);
4. otherwise (that pod takes all ``ceil(P / 1000)`` seconds and its fractions overrun, e.g.
   15.4 s + 15 s in a 30.2 s break) the pod is built again for ``P // 1000`` seconds: the best
   of T, so a valid pod, as today's rule gave. It is **not always** the best of F: a pod of
   ``ceil(P / 1000)`` seconds whose exact total fits (15.1 s + 15 s, beaten in step 2 by
   15.4 s + 15 s, both 31 seconds in a 30.2 s break) may score more, and finding it would
   need a second capacity dimension in milliseconds (the DP over 15 ms units of a 29.97 s
   break is a thousand times larger). So the result has ``PodResult.exact`` False.

Whole-second breaks skip all of it (one remainder test). With slots, the same two builds run
(:func:`_slotted_pod` with the lenient, then the strict, seconds); overlapping groups build
each branch this way, a fallback anywhere making the whole ``exact`` False. Pods that fit in
ms but exceed the lenient seconds (three 10.1 s ads in a 30.5 s break: 33 seconds > 31) are
not considered, as in whole-second breaks.

Algorithm
---------
The result is defined by an exact dynamic programme (:func:`_dp_pod`, "the DP"). A branch and
bound (:func:`_search`) finds the very same pod -- same options, roles and tie-breaking -- much
faster on typical requests; the DP runs when ``max_ads > 6`` or the search runs long.

*The DP.* Groups partition the candidates, so this is a multiple-choice knapsack with a
cardinality limit and two "special slot" flags. The DP table is ``best[q, k, s]``: the best score
of a partial pod built from the groups processed so far that uses exactly ``k`` ads and exactly
``s`` capacity seconds, where ``q = 2 * first_filled + last_filled``. Groups are processed one at
a time (by their smallest key); a group contributes nothing or exactly one of its (item, role)
options (by key, then role), where the role is

* first:  ``(0, l) -> (1, l)``, the gain at ``value_first``;
* last:   ``(f, 0) -> (f, 1)``, the gain at ``value_last``;
* middle: ``(f, l) -> (f, l)``, the gain at ``value``;

each also moving ``(k, s) -> (k + 1, s + ceil_seconds)``. Each option is one vectorised numpy
max-update of a shifted slice of the previous layer over the whole ``(k, s)`` grid, restricted to
the reachable region. Back-pointers (the winning option per cell, per group) are kept in an
``int16``/``int32`` array and walked backwards to recover the pod. Final states are ``k == 1``
with only the first slot filled, or ``k >= 2`` with both first and last filled (the ``k - 2``
others are middles). A path's value is thus its gains added in group order, starting from 0, in
floating point.

Before the DP, reductions shrink the work (they are part of the reference: the search keeps
exactly the same options):

* within a group, an option dominated by another of the same role (no more seconds, at least the
  gain) is dropped;
* across groups, an option is dropped when ``K`` other groups each hold a same-role option with no
  more seconds and a strictly higher gain (one of them is always free to swap in), which removes
  most low-value candidates;
* capacity is counted in units of the gcd of the options' seconds (15/30/60 s creatives -> 15 s
  units) and capped at the sum of the ``K`` longest groups.

*The search.* The DP's pick is determined by S, the set of all paths (over the options it keeps)
that end in its final cell -- the best value, then fewest seconds, then fewest ads -- with the
optimal value. Walking groups from the last, the DP keeps "nothing from this group" exactly when
some path in S skips it (the previous layer already holds the value); otherwise it takes the
first option, by key then role, that some path in S uses, and continues in that option's source
cell, whose value there is the largest value before the option among those paths -- so only the
paths with that prefix value stay. :func:`_pick` replays this walk on S, so finding S suffices:

* candidates are explored depth first, groups by best gain, one member per group, with the
  options the DP keeps (its two pruning tests, asked only for the candidates visited);
* a branch is cut when its gains plus the best gains of the groups it may still add (no more
  members than ``max_ads`` or the capacity left allow) fall below the best value found so far
  by more than a tolerance (``1e-9`` relative, far above any rounding), or when it holds two
  ads that can only go first (or last), or three that cannot go in the middle: so every path
  of S is reached;
* each pod reached is valued over its role assignments exactly as the DP values paths (the same
  floating-point additions, in group order), and the pods tied on (value, seconds, ads) kept.

After ``_SEARCH_BUDGET`` units of work (a few hundred microseconds) the search gives up and the
DP runs: many pods within the tolerance of the optimum (exact ties, large pods) make the search
slow, never wrong.

With ``m`` options (<= 3 per eligible candidate), ``G`` groups, ``K = min(max_ads, G)`` and
``S = pod_duration_ms // 1000`` (rounded up for a fractional break), time is ``O(m * K * S)``
for the DP (numpy-vectorised over the ``4 x K x S`` table) plus ``O(m log m)`` for the
dominance pruning, and space is ``O(K * S)`` floats for the table plus ``O(G * K * S)`` small
ints for back-pointers. The search is
``O(n log n)`` in the number of candidates plus its (budgeted) branching. Measured here: 60
candidates in 25 groups, a 120 s break and 4 ads take about 0.1 ms (the DP alone 0.3 ms); 200
candidates, a 300 s break and 8 ads about 4 ms (the DP); about 14 ms when no candidate
dominates another (value rising with duration, every candidate in its own group, durations
sharing no common unit).

Overlapping groups
------------------
An ad may carry several separation keys (competitive labels, its advertiser): two ads sharing
a key never share a pod, and an item's ``group`` then names its set of keys (``keys`` of
:func:`build_pod`), so groups overlap instead of partitioning the items. The pod is still
exact, by branch and bound: the best pod with the groups taken as a partition (each group's
other keys relaxed; values normalised over all items, so pods compare) bounds every pod of
those groups, and is the answer when its ads share no key -- as when no two labelled ads
would compete, the usual case: one build. Otherwise the search splits on a group of several
keys that shares one in that pod -- that group kept and every group sharing a key with it
dropped, or that group dropped -- and a branch whose bound does not beat the best pod found
stops. Pods of equal score are compared by the tie rule below (for a structured pod, its
own), whichever branch met them, so ties go as they would without the labels: a line item's
rotated creatives keep taking turns when one of them carries a label. A request builds at
most ``2 ** (_SPLIT_DEPTH + 1)`` pods; past ``_SPLIT_DEPTH`` splits the groups still
overlapping are merged into one (a valid pod, maybe not the best, ``PodResult.exact`` False).
Without ``keys`` nothing of this runs.

Ties
----
Ties are exact float ties of the score and are resolved deterministically, independently of the
input order: (1) the smallest total capacity seconds wins, then (2) the fewest ads; (3) remaining
ties follow a fixed processing order -- groups by their smallest key, options by item key then
role first/last/middle -- in which an option replaces the incumbent only when strictly better,
which in effect prefers pods that use lower-keyed groups (two identical ads: the lower key).
Keys must be unique. (The decision draws the keys of a line item's equivalent creatives at
random per request, ``decide.rotation_keys``, so such ties rotate.)

Play order: the first-slot item, then middle items by descending ``value`` (ties by key), then the
last-slot item.

Structured pods
---------------
With ``PodConstraints.slots`` (a structured pod whose slots take different durations), slot
``j`` holds at most one ad, which must fit ``slots[j]`` (and be one ``PodConstraints.slot_masks``
lets fill it: a slot's own price floor) on top of every rule above (groups, capacity,
``max_ads``, slot permissions). The ads play in slot order and an empty slot is
skipped: the first *filled* slot is the pod's first (``value_first``), the last filled one of
a pod of >= 2 ads its last (``value_last``), the others middles. The score is the one above,
summed with ``math.fsum`` (exactly rounded, so independent of order); an option of gain 0 (a
zero-value house ad) is never taken. Ties: ads are ranked by their best gain over the roles
the pod has, descending, then by key; of the pods with the best score, the one whose tuple of
ranks per slot (an empty slot after every ad) is lexicographically smallest wins.

:func:`_slotted_pod` searches depth first over the slots in order, each slot trying the ads
in rank order and then "empty", so pods are met in the tie order and a pod replaces the best
only when strictly better. What it skips never holds the winner:

* an ad dominated by another of its group (every role's gain as high, no more seconds, every
  slot it fits, ranked before it), or by ``max_ads`` such ads of distinct other groups;
* an ad placed after an empty slot it fits (since the ad before it): moved there, the ranks
  per slot are smaller and the score the same; likewise a middle ad fitting an empty slot
  after the first, or one that could swap slots with an earlier middle ranked after it;
* a node whose upper bound is no more than the best so far: the settled gains plus the
  smaller of two matroid relaxations of what the slots left can add (each its greedy best,
  at most the ads left): distinct groups matched to distinct slots (a group at its best
  gain, in any slot one of its ads fits), or ads matched to distinct slots (each at its own
  gain, a group more than once). The last slot takes no ad that cannot go last, and a child
  is cut before its own bound is worked out when its gain plus the best ``room - 1`` of its
  parent's bound cannot beat the best. Bounds are ``fsum`` of terms dominating the gains of
  any completion, so they never cut a better pod.

The search is exact until it has spent ``_SLOT_BUDGET`` units of work (nodes, candidates
looked at, bound steps: about 4 ms here); then it returns the best pod found so far, a valid
pod with ``PodResult.exact`` False, which the service counts as a degradation
(``pod_search_budget``): the endpoint is public and the search runs on the event loop, so a
crafted request must not stall the others. Measured here (``python -m
benchmarks.slotted_pod``; 48 candidates in 30 groups, 100 requests each, half with tied
values; best of 3 runs per request): [30, 15, 15] slots: 0.23 ms median, 0.4 ms worst, always
exact; 8 slots of exactly 30 or 15 s: 0.8 ms median, 3.3 ms worst, 17 out of budget; 8 slots
of nested ``maxduration`` (10-60 s): 0.9 ms median, 4.1 ms worst, 15 out of budget; 8 slots
of mixed rules: 1.4 ms median, 4.7 ms worst, 27 out of budget. (Before: 190 ms and more
worst, unbounded.)
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HOUSE_WEIGHT",
    "STANDARD_BASE",
    "TIER_BASE",
    "PodConstraints",
    "PodItem",
    "PodResult",
    "SlotRule",
    "build_pod",
    "capacity_seconds",
    "eligible",
    "house_weight",
    "tier_bases",
]

Bases = tuple[float, float, float, float]
"""Per tier 0 (house), 1 (standard), 2 (guaranteed), 3 (sponsorship)."""

STANDARD_BASE = 0.001
"""What a standard ad adds on top of its value: the least paid ad beats any house ads."""

TIER_BASE: Bases = (0.0, STANDARD_BASE, 11.0, 121.0)
"""Score added per item of tier 0 (house), 1 (standard), 2 (guaranteed), 3 (sponsorship),
for pods of at most 10 ads (:func:`tier_bases`)."""

HOUSE_WEIGHT = STANDARD_BASE / 10
"""A house ad's value counts this much, for pods of at most 10 ads (:func:`house_weight`)."""

_NORM_HEADROOM = 1.0000001
_NEG_INF = float("-inf")

# Roles, in the order options are tried within one item.
_FIRST, _LAST, _MIDDLE = 0, 1, 2


@dataclass(slots=True)
class PodItem:
    """One candidate ad for the pod. Treat as immutable: it is not frozen only because a
    frozen dataclass is built ~3x slower, and a decision builds one per candidate."""

    key: int
    """Caller's index of the candidate; returned back. Must be unique within a request."""
    duration_ms: int
    """True creative duration in milliseconds (> 0)."""
    value: float
    """>= 0: value when placed in a middle slot."""
    tier: int
    """0 house, 1 standard, 2 guaranteed, 3 sponsorship (higher wins)."""
    group: str
    """Separation group: at most one item per group in a pod."""
    value_first: float | None = None
    """Value in slot 1; ``None`` = same as ``value``; ``-inf`` = not allowed first."""
    value_last: float | None = None
    """Value in the last slot of a pod of >= 2 ads; ``None`` = ``value``; ``-inf`` = not allowed."""
    middle_allowed: bool = True
    """False: may only go first or last."""

    def __post_init__(self) -> None:
        if self.duration_ms <= 0:
            raise ValueError(f"PodItem {self.key}: duration_ms must be > 0")
        if not 0 <= self.tier < len(TIER_BASE):
            raise ValueError(f"PodItem {self.key}: tier must be in 0..{len(TIER_BASE) - 1}")
        if not (math.isfinite(self.value) and self.value >= 0):
            raise ValueError(f"PodItem {self.key}: value must be finite and >= 0")
        for name, v in (("value_first", self.value_first), ("value_last", self.value_last)):
            if v is not None and v != _NEG_INF and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"PodItem {self.key}: {name} must be None, -inf or finite >= 0")

    @property
    def first_value(self) -> float:
        """Realised value in slot 1 (``-inf`` if not allowed)."""
        return self.value if self.value_first is None else self.value_first

    @property
    def last_value(self) -> float:
        """Realised value in the last slot (``-inf`` if not allowed)."""
        return self.value if self.value_last is None else self.value_last

    @property
    def middle_value(self) -> float:
        """Realised value in a middle slot (``-inf`` if not allowed)."""
        return self.value if self.middle_allowed else _NEG_INF


@dataclass(frozen=True, slots=True)
class SlotRule:
    """The durations one slot of a structured pod takes (``None``: no such bound)."""

    min_ms: int | None = None
    max_ms: int | None = None
    required_s: frozenset[int] | None = None
    """If set, the ad's duration rounded to the nearest second (halves up) must be in it."""
    imp_id: str | None = field(default=None, compare=False)
    """Where the rule came from, for the explanation: the OpenRTB imp whose slot it is…"""
    role: str | None = field(default=None, compare=False)
    """…and its ``slotinpod`` role, ``"first"`` or ``"last"`` (None: any). Neither is part
    of the rule: rules of the same durations are equal (one candidate quota, one bound)."""

    def fits(self, duration_ms: int) -> bool:
        if self.min_ms is not None and duration_ms < self.min_ms:
            return False
        if self.max_ms is not None and duration_ms > self.max_ms:
            return False
        return self.required_s is None or rounded_seconds(duration_ms) in self.required_s


@dataclass(frozen=True, slots=True)
class PodConstraints:
    """The ad break's rules."""

    pod_duration_ms: int
    """Total of chosen durations must be <= this, exact ms; ceil-seconds also count against it
    rounded up to whole seconds (module docstring, "Fractional breaks")."""
    max_ads: int
    """>= 1."""
    min_ad_duration_ms: int | None = None
    max_ad_duration_ms: int | None = None
    required_durations_s: frozenset[int] | None = None
    """If set, each ad's duration rounded to the nearest second (halves up) must be in it."""
    slots: tuple[SlotRule, ...] | None = None
    """A structured pod whose slots take different durations: the ad in slot ``i`` must fit
    ``slots[i]`` (on top of the rules above) and the pod is built by :func:`_slotted_pod`
    (see "Structured pods" in the module docstring). ``None``: any ad fits any slot."""
    slot_masks: Mapping[int, int] | None = None
    """With :attr:`slots`: the slots each item (by key) may fill on top of fitting their
    rules, bit ``j`` for ``slots[j]`` (its price meets that slot's floors); an item not
    listed, every slot. ``None``: every item, every slot it fits."""

    def __post_init__(self) -> None:
        if self.slots is not None and not self.slots:
            raise ValueError("slots must not be empty")
        if self.pod_duration_ms < 0:
            raise ValueError("pod_duration_ms must be >= 0")
        if self.max_ads < 1:
            raise ValueError("max_ads must be >= 1")


@dataclass(frozen=True, slots=True)
class PodResult:
    """The chosen pod.

    ``objective`` is ``(score, n_tier3, n_tier2, n_tier1, n_tier0, normalised_value)``: the scalar
    that was maximised (module doc) followed by its explanation, the normalised value being the
    score less the tier bases (house values at their weight). All zeros for an empty pod.
    """

    items: tuple[PodItem, ...]
    """In play order (slot 1 first)."""
    objective: tuple[float, ...]
    total_duration_ms: int
    value: float
    """Sum of the realised (unnormalised) slot values of the chosen items."""
    slots: tuple[int, ...] = ()
    """With :attr:`PodConstraints.slots`: the slot (0-based) of each item, ascending."""
    exact: bool = True
    """False when a structured pod's search ran out of budget, overlapping groups were merged,
    or a fractional break fell back to its whole seconds (module docstring): a valid pod, maybe
    not the optimum."""
    budget_spent: bool = False
    """The structured pod's search ran out of budget (then ``exact`` is False too): the one
    of those causes that is a degradation (the service counts it), the others being how the
    optimiser treats such breaks and labels."""


_EMPTY = PodResult(items=(), objective=(0.0,) * 6, total_duration_ms=0, value=0.0)


def capacity_seconds(duration_ms: int) -> int:
    """Capacity an ad uses: its duration rounded *up* to whole seconds."""
    return -(-duration_ms // 1000)


def rounded_seconds(duration_ms: int) -> int:
    """Duration rounded to the nearest whole second, halves up (15.5 s -> 16)."""
    return (duration_ms + 500) // 1000


def eligible(item: PodItem, c: PodConstraints) -> bool:
    """Per-item rules: min / max ad duration (exact ms), required durations (rounded to the
    nearest second), and fitting in the break on its own (``duration_ms <= pod_duration_ms``,
    exact ms; then ``ceil(duration_ms / 1000) <= ceil(pod_duration_ms / 1000)`` too)."""
    d = item.duration_ms
    if c.min_ad_duration_ms is not None and d < c.min_ad_duration_ms:
        return False
    if c.max_ad_duration_ms is not None and d > c.max_ad_duration_ms:
        return False
    if c.required_durations_s is not None and rounded_seconds(d) not in c.required_durations_s:
        return False
    return d <= c.pod_duration_ms


def tier_bases(max_ads: int) -> Bases:
    """Per-tier score bases for pods of up to ``n = max(max_ads, 10)`` ads (module docstring):
    ``(0, STANDARD_BASE, G, S)`` with ``G = floor(n * (1 + STANDARD_BASE)) + 1``, above what
    ``n`` standard ads add, and ``S = n * (G + 1) + 1``, above what ``n`` non-sponsorship ads
    add beyond the sponsorships' bases: :data:`TIER_BASE` up to 10 ads."""
    if max_ads <= 10:
        return TIER_BASE
    g = math.floor(max_ads * (1 + STANDARD_BASE)) + 1
    return (0.0, STANDARD_BASE, float(g), float(max_ads * (g + 1) + 1))


def house_weight(max_ads: int) -> float:
    """What a house ad's normalised value is multiplied by: ``STANDARD_BASE / max(max_ads,
    10)``, so the house ads of a pod add less than one standard ad's base."""
    return HOUSE_WEIGHT if max_ads <= 10 else STANDARD_BASE / max_ads


def _tier_scales(items: Sequence[PodItem], max_ads: int) -> Bases:
    """What a value of each tier is divided by: the scale, and for house ads the scale over
    :func:`house_weight` (a paid tier's gain is thus ``base + v / scale`` exactly)."""
    s = _value_scale(items)
    return (s / house_weight(max_ads), s, s, s)


def _value_scale(items: Sequence[PodItem]) -> float:
    m = 0.0
    for it in items:  # -inf never wins; finite values are >= 0
        if it.value > m:
            m = it.value
        vf = it.value_first
        if vf is not None and vf > m:
            m = vf
        vl = it.value_last
        if vl is not None and vl > m:
            m = vl
    return m * _NORM_HEADROOM if m > 0 else 1.0


@dataclass(frozen=True, slots=True)
class _Option:
    item: PodItem
    role: int
    seconds: int
    gain: float


def build_pod(
    items: Sequence[PodItem],
    c: PodConstraints,
    keys: Mapping[str, frozenset[str]] | None = None,
) -> PodResult:
    """The optimal pod for one break (see the module docstring for objective, rules and ties).

    ``keys``: the separation keys of the groups that have several (any other group's only
    key is its name), when groups overlap: a pod then holds no two items whose groups share
    a key (see "Overlapping groups" in the module docstring)."""
    if len({it.key for it in items}) != len(items):
        raise ValueError("PodItem keys must be unique")
    if keys:
        return _overlapping_pod(items, c, keys)
    return _build(items, c, items)


def _build(items: Sequence[PodItem], c: PodConstraints, scaled: Sequence[PodItem]) -> PodResult:
    """:func:`build_pod` of a partition into groups, values normalised over ``scaled``.

    A break of whole seconds is built once. A fractional one (module docstring, "Fractional
    breaks") is built with the lenient capacity ``ceil(pod_duration_ms / 1000)`` over the ads
    no longer than the break; when that pod's exact total exceeds the break, with the strict
    capacity ``pod_duration_ms // 1000`` (``exact`` False)."""
    p = c.pod_duration_ms
    frac = p % 1000
    if not frac:
        return _build_whole(items, c, scaled)
    fit = [it for it in items if it.duration_ms <= p]
    lenient = _build_whole(fit, replace(c, pod_duration_ms=p - frac + 1000), scaled)
    if lenient.total_duration_ms <= p:
        return lenient
    strict = _build_whole(fit, replace(c, pod_duration_ms=p - frac), scaled)
    return replace(strict, exact=False, budget_spent=strict.budget_spent or lenient.budget_spent)


def _build_whole(
    items: Sequence[PodItem], c: PodConstraints, scaled: Sequence[PodItem]
) -> PodResult:
    """:func:`_build` for a break of whole seconds (or counted as whole seconds)."""
    if c.slots is not None:
        return _slotted_pod(items, c, scaled)
    cands = _eligible(items, c)
    if not cands:
        return _EMPTY
    bases = tier_bases(c.max_ads)
    scales = _tier_scales(scaled, c.max_ads)
    chosen: list[_Option] | None
    try:
        if c.max_ads > _SEARCH_MAX_ADS:
            raise _OverBudget
        chosen = _search(cands, c, bases, scales, _SEARCH_BUDGET)
    except _OverBudget:
        chosen = _dp_pod(cands, c, bases, scales)
    if chosen is None:
        return _EMPTY
    return _result(chosen, bases, scales)


_SPLIT_DEPTH = 4
"""Overlapping groups: the most groups :func:`_overlapping_pod` splits on (at most
``2 ** _SPLIT_DEPTH`` pods built); past it, the groups still overlapping are merged."""


def _overlapping_pod(
    items: Sequence[PodItem], c: PodConstraints, keys: Mapping[str, frozenset[str]]
) -> PodResult:
    """The optimal pod when groups overlap (module docstring, "Overlapping groups")."""
    first = _build(items, c, items)
    if _overlap_in(first.items, keys) is None:
        return first  # the usual case: the best pod of the relaxation keeps the keys apart
    by_group: dict[str, list[PodItem]] = {}  # groups by smallest key: ties ignore input order
    for it in _eligible(sorted(items, key=_item_key), c):
        lst = by_group.get(it.group)
        if lst is None:
            by_group[it.group] = [it]
        else:
            lst.append(it)
    of = {g: keys.get(g) or frozenset((g,)) for g in by_group}
    tie = _tie_rule(items, c, by_group)
    best = _EMPTY
    exact = True
    spent = False

    def split(groups: list[str], depth: int, merged: bool = False) -> None:
        nonlocal best, exact, spent
        subset = [it for g in groups for it in by_group[g]]
        if merged:
            subset = _merge_overlapping(subset, of)
        got = _build(subset, c, items)  # groups as a partition: its keys but the first relaxed
        if not got.exact or merged:
            exact = False
        spent = spent or got.budget_spent
        if not got.items or (best.items and not tie(got, best)):
            return  # no pod of these groups beats the best, nor ties it and wins the tie
        shared = _overlap_in(got.items, keys) if not merged else None
        if shared is None:  # the best pod of the relaxation keeps every key apart
            best = got
        elif depth >= _SPLIT_DEPTH:
            split(groups, depth, merged=True)
        else:
            mine = of[shared]  # with ``shared``: no group sharing a key; then without it
            split([g for g in groups if g == shared or mine.isdisjoint(of[g])], depth + 1)
            split([g for g in groups if g != shared], depth + 1)

    split(list(by_group), 0)
    return best if exact else replace(best, exact=False, budget_spent=spent)


def _overlap_in(pod: Sequence[PodItem], keys: Mapping[str, frozenset[str]]) -> str | None:
    """The first group (of several keys) of ``pod`` sharing a key with another of its items."""
    for it in pod:
        mine = keys.get(it.group)
        if mine is None:
            continue
        for o in pod:
            if o is not it and not mine.isdisjoint(keys.get(o.group) or (o.group,)):
                return it.group
    return None


def _rank(r: PodResult) -> tuple[float, int, int]:
    """Pods compared as the search compares them: score, then fewer seconds, fewer ads."""
    return (r.objective[0], -sum(capacity_seconds(it.duration_ms) for it in r.items), -len(r.items))


def _tie_rule(
    items: Sequence[PodItem], c: PodConstraints, by_group: Mapping[str, list[PodItem]]
) -> Callable[[PodResult, PodResult], bool]:
    """Whether one pod beats another as :func:`_build` orders them, ties included (module
    docstring, "Ties" and "Structured pods"), so that the overlapping search returns the pod
    the tie rule prefers whichever branch met it -- rotation relies on the lower key winning.

    ``by_group``: the eligible items by group, each list by key. A subset of whole groups is
    built with the same groups (their keys relaxed), so this order is the one each build
    breaks its own ties by, and the best pod of the relaxation is the first by it among the
    pods it could have returned: a branch whose relaxed pod loses to the best holds no
    better one."""
    if c.slots is not None:
        # Slotted: the score, then the ads' ranks per slot (best gain descending, then key;
        # an empty slot after every ad), lexicographically smallest first.
        n_slots = len(c.slots)
        bases = tier_bases(c.max_ads)
        scales = _tier_scales(items, c.max_ads)
        max_ads = min(c.max_ads, n_slots)
        rank = {
            it.key: (-max(g for g in _role_gains(it, bases, scales, max_ads)), it.key)
            for lst in by_group.values()
            for it in lst
        }
        empty = (math.inf, 0)

        def slot_ranks(r: PodResult) -> tuple[tuple[float, int], ...]:
            per_slot = [empty] * n_slots
            for it, j in zip(r.items, r.slots, strict=True):
                per_slot[j] = rank[it.key]
            return tuple(per_slot)

        def slotted_beats(a: PodResult, b: PodResult) -> bool:
            sa, sb = a.objective[0], b.objective[0]
            return sa > sb if sa != sb else slot_ranks(a) < slot_ranks(b)

        return slotted_beats

    # The DP's walk (``_pick``): from the last group (groups by smallest key), the pod without
    # it wins, else the one whose member there comes first by key, then role; and so on down.
    # That is the members as (group's smallest key, key, role), largest first, compared
    # lexicographically, smallest first (a pod ending first skips the groups left).
    smallest = {it.key: lst[0].key for lst in by_group.values() for it in lst}

    def walk(r: PodResult) -> tuple[tuple[int, int, int], ...]:
        last = len(r.items) - 1
        return tuple(
            sorted(
                (
                    (
                        smallest[it.key],
                        it.key,
                        _FIRST if i == 0 else _LAST if i == last else _MIDDLE,
                    )
                    for i, it in enumerate(r.items)
                ),
                reverse=True,
            )
        )

    def beats(a: PodResult, b: PodResult) -> bool:
        ra, rb = _rank(a), _rank(b)
        return ra > rb if ra != rb else walk(a) < walk(b)

    return beats


def _merge_overlapping(items: list[PodItem], of: Mapping[str, frozenset[str]]) -> list[PodItem]:
    """``items`` with the groups that share keys, directly or through others, merged into one
    (a pod of them is valid, though maybe not the best)."""
    root: dict[str, str] = {}

    def find(k: str) -> str:
        while root.setdefault(k, k) != k:
            k = root[k]
        return k

    for it in items:
        ks = sorted(of[it.group])
        for k in ks[1:]:
            a, b = find(ks[0]), find(k)
            if a != b:
                root[max(a, b)] = min(a, b)
    return [replace(it, group=find(min(of[it.group]))) for it in items]


def _eligible(items: Sequence[PodItem], c: PodConstraints) -> list[PodItem]:
    """The :func:`eligible` items, in input order (the same rules, bounds worked out once)."""
    hi = c.pod_duration_ms  # exact ms (module docstring, "Fractional breaks")
    if c.max_ad_duration_ms is not None and c.max_ad_duration_ms < hi:
        hi = c.max_ad_duration_ms
    lo = c.min_ad_duration_ms
    if lo is None:
        out = [it for it in items if it.duration_ms <= hi]
    else:
        out = [it for it in items if lo <= it.duration_ms <= hi]
    req = c.required_durations_s
    if req is not None:
        out = [it for it in out if rounded_seconds(it.duration_ms) in req]
    return out


def _item_key(it: PodItem) -> int:
    return it.key


_first = operator.itemgetter(0)
_third = operator.itemgetter(2)


def _role_gains(
    it: PodItem, bases: Bases, scales: Bases, max_ads: int
) -> tuple[float, float, float]:
    """The item's gain as first, last and middle; -inf where the DP has no such option (not
    allowed there, or no such slot in pods of at most ``max_ads``)."""
    base = bases[it.tier]
    scale = scales[it.tier]
    v = it.value
    vf = it.value_first
    vl = it.value_last
    gf = _NEG_INF if vf == _NEG_INF else base + (v if vf is None else vf) / scale
    gl = _NEG_INF if vl == _NEG_INF or max_ads < 2 else base + (v if vl is None else vl) / scale
    gm = base + v / scale if it.middle_allowed and max_ads >= 3 else _NEG_INF
    return (gf, gl, gm)


# --- fast path: branch and bound that replays the DP's choice ------------------------------------

_SEARCH_MAX_ADS = 6
"""Larger pods go straight to the DP: they often have too many near-optimal combinations."""
_SEARCH_BUDGET = 300
"""Work units (one or two microseconds each) the search may spend before the DP takes over.
At 200, 13 of 3,000 recorded 4-ad requests on a 10k catalog gave up after ~250 us and paid
the DP's ~420 us on top (up to 900 us in all); at 300 none did, and a case that does give
up (every pod tied) costs 4-12 % more."""


_UNSEEN: Any = object()
"""Not looked at yet by ``live`` (its memo holds None for candidates without options)."""


class _OverBudget(Exception):
    """The search gave up; the DP decides."""


# A candidate before the pruning tests: (best gain, item, gains by role, capacity seconds).
_Light = tuple[float, PodItem, tuple[float, float, float], int]
# A candidate with the options the DP keeps:
# (best gain, seconds, group rank, key, gains by role, item, uniform). Gains are -inf for the
# options the DP does not have. ``uniform`` is 2 when the first, last and middle gains all equal
# the best gain, 1 when the first and last gains do, else 0.
_Rec = tuple[float, int, int, int, tuple[float, float, float], PodItem, int]
# A pod member on a DP path: (group rank, key, role, gain, rec).
_Step = tuple[int, int, int, float, _Rec]
# A pod tied with the best so far: its members by group rank, and its best role assignments as
# (first, last) member indices, where -1 stands for any uniform member (see _assign).
_Entry = tuple[list[_Rec], list[tuple[int, int]]]


def _search(
    cands: list[PodItem],
    c: PodConstraints,
    bases: Bases,
    scales: Bases,
    budget: int,
) -> list[_Option] | None:
    """The pod :func:`_dp_pod` returns (the same options and roles), or None when no pod is
    possible. Raises :class:`_OverBudget` once more than ``budget`` work is done.

    Depth-first over the groups by best gain, each member a candidate of a later group; a
    branch stops when its gains so far plus the best gains of the groups it could still add
    cannot reach the best pod found, less a tolerance far above rounding. Every pod that may
    tie the best is therefore valued exactly as the DP values it, and the DP's tie-breaking is
    replayed on the tied ones (module docstring).
    """
    max_ads = c.max_ads
    cap_s = c.pod_duration_ms // 1000
    allow_last = max_ads >= 2
    allow_mid = max_ads >= 3
    light: list[_Light] = []
    slotless: list[PodItem] = []
    for it in cands:
        if it.value_first is None and it.value_last is None and it.middle_allowed:
            g = bases[it.tier] + it.value / scales[it.tier]
            gains = (g, g if allow_last else _NEG_INF, g if allow_mid else _NEG_INF)
            light.append((g, it, gains, capacity_seconds(it.duration_ms)))
        else:
            gains = _role_gains(it, bases, scales, max_ads)
            top = max(gains)
            if top == _NEG_INF:
                slotless.append(it)  # no option, but it still counts for its group's rank
            else:
                light.append((top, it, gains, capacity_seconds(it.duration_ms)))
    if not light:
        return None
    light.sort(key=_first, reverse=True)
    members: dict[str, list[_Light]] = {}
    for e in light:
        lst = members.get(e[1].group)
        if lst is None:
            members[e[1].group] = [e]
        else:
            lst.append(e)
    glist = list(members.values())  # groups by best gain; in each, members by gain
    n_groups = len(glist)
    max_pod = min(max_ads, n_groups)  # as in _dp_pod's pruning
    neg_tops = [-g[0][0] for g in glist]
    pre = [0.0]  # pre[q]: sum of the q best groups' best gains
    acc = 0.0
    for t in neg_tops:
        acc -= t
        pre.append(acc)
    tol = 1e-9 * (1.0 + acc)  # far above any rounding in sums of these gains
    min_w = min([e[3] for e in light])
    ranks: dict[str, int] = {}
    kept: dict[int, _Rec | None] = {}
    rivals = _Rivals(light, max_pod)
    steps = 0

    def live(e: _Light) -> _Rec | None:
        """The candidate with only the options the DP keeps; None if it keeps none. Memoised
        in ``kept``, which the caller reads first."""
        nonlocal steps
        it = e[1]
        before = rivals.work
        gains = _kept_gains(e, members[it.group], neg_tops, rivals)
        steps += (1 + rivals.work - before) // 4
        top = max(gains)
        rec = None
        if top != _NEG_INF:
            rank = ranks.get(it.group)
            if rank is None:  # the DP takes groups by smallest key: rank by that key
                rank = min([o[1].key for o in members[it.group]])
                for x in slotless:
                    if x.group == it.group and x.key < rank:
                        rank = x.key
                ranks[it.group] = rank
            gf, gl, gm = gains
            uni = (2 if gm == top else 1) if gf == top and gl == top else 0
            rec = (top, e[3], rank, it.key, gains, it, uni)
        kept[it.key] = rec
        return rec

    # The best pod so far by (value, -seconds, -ads) -- the DP's final cell -- and all pods tied
    # on all three.
    best_fold = _NEG_INF
    best_u = 0
    best_k = 0
    thr = _NEG_INF  # branches below this cannot tie the best
    winners: list[_Entry] = []
    path: list[_Rec] = []

    def visit(p: int, k: int, used: int, v: float, ends: int) -> None:
        """Pods extending ``path`` (k members, ``used`` seconds, best gains summing to ``v``)
        with groups from position ``p`` on; ``ends`` tallies members that need an end slot
        (_slot_need)."""
        nonlocal steps, best_fold, best_u, best_k, thr, winners
        steps += 1
        if steps > budget:
            raise _OverBudget
        if k and v >= thr:  # the pod made of path itself
            if k == 1:
                ranked = path[:]
                fold = path[0][4][_FIRST]  # -inf (not allowed first) never wins
                pairs = [(0, 0)]
            else:
                ranked = sorted(path, key=_third)
                steps += k
                fold, pairs = _assign(ranked, tol)
            if fold > best_fold or (
                fold == best_fold and (used < best_u or (used == best_u and k < best_k))
            ):
                best_fold, best_u, best_k = fold, used, k
                winners = [(ranked, pairs)]
                thr = fold - tol
            elif fold == best_fold and used == best_u and k == best_k:
                winners.append((ranked, pairs))
        room = cap_s - used
        r = max_ads - k  # at most r more members
        if room // min_w < r:
            r = room // min_w
        if r <= 0:
            return
        for q in range(p, n_groups):
            rest = pre[q + r if q + r < n_groups else n_groups] - pre[q + 1]
            if v - neg_tops[q] + rest < thr:
                break  # groups come by best gain: no later one does better
            grp = glist[q]
            dead = False
            for e in grp:
                if v + e[0] + rest < thr:
                    break
                w = e[3]
                if w <= room:
                    rec = kept.get(e[1].key, _UNSEEN)
                    if rec is _UNSEEN:
                        rec = live(e)
                        dead = rec is None or dead
                    if rec is not None:
                        more = ends + _slot_need(rec[4])
                        if more in _FEASIBLE_ENDS:
                            path.append(rec)
                            visit(q + 1, k + 1, used + w, v + rec[0], more)  # noqa: F821 (del below)
                            path.pop()
            if dead:  # later visits skip the members the DP keeps no option of
                glist[q] = [x for x in grp if kept.get(x[1].key, _UNSEEN) is not None]

    try:
        visit(0, 0, 0, 0.0, 0)
    finally:
        # visit refers to itself through its closure: without this the whole search (its
        # records, paths and candidates) would be cyclic garbage left to the collector
        del visit
    if best_fold == _NEG_INF:
        return None
    if len(winners) == 1:  # one pod: only its role assignment is left to pick
        ranked, pairs = winners[0]
        if len(ranked) == 1:
            rec = ranked[0]
            return [_Option(rec[5], _FIRST, rec[1], rec[4][_FIRST])]
        if pairs == [(-1, -1)] and all(rec[6] == 2 for rec in ranked):
            return _natural(ranked)
        return _pick_roles(ranked, _expand(ranked, pairs))
    return _pick([p for ranked, pairs in winners for p in _paths(ranked, pairs)])


def _slot_need(gains: tuple[float, float, float]) -> int:
    """A member's part of ``ends`` in :func:`_search`: 16 if it can only go first, 4 if only
    last, 1 if first or last but not in the middle, else 0."""
    if gains[_MIDDLE] != _NEG_INF:
        return 0
    if gains[_LAST] == _NEG_INF:
        return 16
    return 4 if gains[_FIRST] == _NEG_INF else 1


# ``ends`` from which a pod can still be completed: at most one member that can only go first,
# one that can only go last, and two that need an end slot in all.
_FEASIBLE_ENDS = frozenset(
    16 * f + 4 * la + e for f in (0, 1) for la in (0, 1) for e in (0, 1, 2) if f + la + e <= 2
)


def _kept_gains(
    e: _Light, group: list[_Light], neg_tops: list[float], rivals: _Rivals
) -> tuple[float, float, float]:
    """The candidate's gains by role with -inf for the options :func:`_group_options` and
    :func:`_prune_dominated` drop.

    The same two tests, asked for one item. Within its group, an option is dropped when
    another of the same role has no more seconds, at least its gain and sorts before it by
    (seconds, -gain, key). Across groups, it is dropped when ``max_pod`` other groups hold a
    same-role option with no more seconds and a strictly higher gain (counting options the
    first test drops changes nothing: each has a kept one that is at least as good).
    ``group`` lists the candidates of the item's group by best gain, descending;
    ``neg_tops`` the groups' best gains, negated (ascending); ``rivals`` answers the
    cross-group test for the search.
    """
    _, it, gains, w = e
    out = list(gains)
    max_pod = rivals.max_pod
    above_g = _NEG_INF
    above = 0
    for role, g in enumerate(gains):
        if g == _NEG_INF:
            continue
        if len(group) > 1 and _dominated_in_group(it, w, role, g, group):
            out[role] = _NEG_INF
            continue
        if g != above_g:
            above_g = g
            above = bisect.bisect_left(neg_tops, -g)  # groups whose best gain beats g
            if group[0][0] > g:
                above -= 1
        if above >= max_pod and rivals.outnumbered(it.group, role, g, w):
            out[role] = _NEG_INF
    return (out[0], out[1], out[2])


def _role_gain_key(role: int) -> Callable[[_Light], float]:
    def key(e: _Light) -> float:
        return e[2][role]

    return key


_ROLE_GAIN_KEYS = tuple(_role_gain_key(role) for role in range(3))


class _Rivals:
    """The cross-group test of :func:`_kept_gains` for one search: the best ``max_pod + 1``
    groups by gain in a role, among the options of at most so many seconds, listed once per
    (role, seconds) asked. ``max_pod`` groups other than a candidate's beat its gain exactly
    when ``max_pod`` of those listed do: if all ``max_pod + 1`` beat it, one at most is its
    own; if one does not, no group after it does either. So a test costs ``max_pod`` steps,
    not a scan of the candidates."""

    __slots__ = ("light", "max_pod", "orders", "tops", "work")

    def __init__(self, light: list[_Light], max_pod: int) -> None:
        self.light = light
        self.max_pod = max_pod
        self.orders: list[list[_Light] | None] = [None, None, None]
        self.tops: dict[tuple[int, int], list[tuple[float, str]]] = {}
        self.work = 0  # candidates looked at, for the search's budget

    def outnumbered(self, group: str, role: int, g: float, w: int) -> bool:
        """Whether ``max_pod`` groups other than ``group`` hold an option in ``role`` with
        at most ``w`` seconds and a gain above ``g``."""
        top = self.tops.get((role, w))
        if top is None:
            top = self.tops[(role, w)] = self._top(role, w)
        n = 0
        for h, grp in top:
            if h <= g:
                break
            if grp != group:
                n += 1
        return n >= self.max_pod

    def _top(self, role: int, w: int) -> list[tuple[float, str]]:
        order = self.orders[role]
        if order is None:
            order = self.orders[role] = sorted(self.light, key=_ROLE_GAIN_KEYS[role], reverse=True)
        top: list[tuple[float, str]] = []
        named: set[str] = set()
        for o in order:
            h = o[2][role]
            if h == _NEG_INF:
                break
            self.work += 1
            if o[3] > w:
                continue
            grp = o[1].group
            if grp not in named:
                named.add(grp)
                top.append((h, grp))
                if len(top) > self.max_pod:
                    break
        return top


def _dominated_in_group(it: PodItem, w: int, role: int, g: float, group: list[_Light]) -> bool:
    """Whether another option of the group in this role has no more seconds, at least the
    gain ``g`` and sorts before it by (seconds, -gain, key)."""
    for o in group:
        go = o[2][role]
        if go >= g and o[1] is not it:
            ow = o[3]
            if ow <= w and (ow < w or go > g or o[1].key < it.key):
                return True
    return False


def _assign(ranked: list[_Rec], tol: float) -> tuple[float, list[tuple[int, int]]]:
    """The best role assignment of a pod of >= 2 members (by group rank): its value as the DP
    computes it (gains added in group order) and every (first, last) choice that reaches it;
    (-inf, []) if no assignment is possible.

    Uniform members (worth the same in every slot a pod of this size has) are
    interchangeable: any two of them as first and last give the same gains in the same order,
    so they are tried once, as index -1; the others are tried one by one. A choice whose real
    value is more than ``tol`` below the best one cannot tie it once rounded, so only the others
    are summed in group order.
    """
    need = 1 if len(ranked) == 2 else 2
    fold = 0.0
    for rec in ranked:
        if rec[6] < need:
            break
        fold += rec[0]
    else:  # all uniform: one value for every assignment
        return fold, [(-1, -1)]
    mid: list[float] = []  # each member's gain when neither first nor last
    other: list[int] = []
    edge: list[int] = []  # members with no middle option
    base = 0.0
    for i, rec in enumerate(ranked):
        if rec[6] >= need:
            mid.append(rec[0])
            base += rec[0]
        else:
            g = rec[4][_MIDDLE] if need == 2 else _NEG_INF
            mid.append(g)
            other.append(i)
            if g == _NEG_INF:
                edge.append(i)
            else:
                base += g
    if len(edge) > 2:
        return _NEG_INF, []
    n_uni = len(ranked) - len(other)
    # A choice's real value is base + its first bonus + its last bonus (members without a
    # middle option bring their whole gain: their middle gain is not in base).
    first_bonus = {-1: 0.0} if n_uni else {}
    last_bonus = {-1: 0.0} if n_uni else {}
    for i in other:
        m = 0.0 if mid[i] == _NEG_INF else mid[i]
        if ranked[i][4][_FIRST] != _NEG_INF:
            first_bonus[i] = ranked[i][4][_FIRST] - m
        if ranked[i][4][_LAST] != _NEG_INF:
            last_bonus[i] = ranked[i][4][_LAST] - m
    scored: list[tuple[float, int, int]] = []
    for a, fa in first_bonus.items():
        for b, lb in last_bonus.items():
            if (a != b or (a < 0 and n_uni >= 2)) and all(x in (a, b) for x in edge):
                scored.append((fa + lb, a, b))
    if not scored:
        return _NEG_INF, []
    top = max([sc[0] for sc in scored])
    best = _NEG_INF
    found: list[tuple[int, int]] = []
    for bonus, a, b in scored:
        if bonus < top - tol:
            continue
        fold = 0.0
        for i, m in enumerate(mid):
            fold += ranked[i][4][_FIRST] if i == a else ranked[i][4][_LAST] if i == b else m
        if fold > best:
            best = fold
            found = [(a, b)]
        elif fold == best:
            found.append((a, b))
    return best, found


def _expand(ranked: list[_Rec], pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """:func:`_assign`'s (first, last) choices with -1 replaced by each uniform member."""
    need = 1 if len(ranked) == 2 else 2
    uni = [i for i, rec in enumerate(ranked) if rec[6] >= need]
    return [
        (fa, lb)
        for a, b in pairs
        for fa in (uni if a < 0 else [a])
        for lb in (uni if b < 0 else [b])
        if fa != lb
    ]


def _paths(ranked: list[_Rec], pairs: list[tuple[int, int]]) -> list[list[_Step]]:
    """The DP paths (members by group rank, with their roles) of a pod's best assignments."""
    if len(ranked) == 1:
        rec = ranked[0]
        return [[(rec[2], rec[3], _FIRST, rec[4][_FIRST], rec)]]
    out: list[list[_Step]] = []
    for a, b in _expand(ranked, pairs):
        steps: list[_Step] = []
        for i, rec in enumerate(ranked):
            role = _FIRST if i == a else _LAST if i == b else _MIDDLE
            steps.append((rec[2], rec[3], role, rec[4][role], rec))
        out.append(steps)
    return out


def _natural(ranked: list[_Rec]) -> list[_Option]:
    """:func:`_pick_roles` for a uniform pod: every assignment is optimal, so the member of
    the highest group rank goes first, the next one last, the rest in the middle."""
    out: list[_Option] = []
    n = len(ranked)
    for i, rec in enumerate(ranked):
        role = _FIRST if i == n - 1 else _LAST if i == n - 2 else _MIDDLE
        out.append(_Option(rec[5], role, rec[1], rec[4][role]))
    return out


def _pick_roles(ranked: list[_Rec], pairs: list[tuple[int, int]]) -> list[_Option]:
    """:func:`_pick` for a single optimal pod, given its optimal (first, last) member indices.

    Walking members from the highest group rank, the DP gives each the smallest role (first,
    then last, then middle) some remaining assignment gives it, then keeps the assignments
    whose value over the lower-ranked members is the largest."""
    for i in range(len(ranked) - 1, 0, -1):
        if len(pairs) == 1:
            break
        if any(a == i for a, _ in pairs):
            pairs = [p for p in pairs if p[0] == i]
        elif any(b == i for _, b in pairs):
            pairs = [p for p in pairs if p[1] == i]
        if len(pairs) > 1:
            folds = []
            for a, b in pairs:
                acc = 0.0
                for j in range(i):
                    acc += ranked[j][4][_FIRST if j == a else _LAST if j == b else _MIDDLE]
                folds.append(acc)
            top = max(folds)
            pairs = [p for p, f in zip(pairs, folds, strict=True) if f == top]
    a, b = pairs[0]
    out: list[_Option] = []
    for i, rec in enumerate(ranked):
        role = _FIRST if i == a else _LAST if i == b else _MIDDLE
        out.append(_Option(rec[5], role, rec[1], rec[4][role]))
    return out


def _pick(paths: list[list[_Step]]) -> list[_Option]:
    """The DP's back-pointer walk, replayed on all optimal paths of its final cell.

    ``paths`` are every path (members by group rank) that ends in the DP's final cell with the
    optimal value. Walking groups from the last, the DP keeps "nothing from this group" when the
    previous layer already holds the cell's value -- exactly when some path skips the group --
    else the first option (by key, then role) that reaches it; it then continues in that
    option's source cell, whose value there is the largest prefix value among the paths through
    the option, so only the paths with that prefix value stay.
    """
    ends = [len(p) for p in paths]
    prefix = [[0.0] for _ in paths]
    for p, pf in zip(paths, prefix, strict=True):
        for st in p:
            pf.append(pf[-1] + st[3])
    idx = list(range(len(paths)))
    chosen: list[_Option] = []
    while True:
        j = max((paths[i][ends[i] - 1][0] for i in idx if ends[i]), default=None)
        if j is None:
            return chosen
        skip = [i for i in idx if not ends[i] or paths[i][ends[i] - 1][0] < j]
        if skip:
            idx = skip
            continue
        opt = min(paths[i][ends[i] - 1][1:3] for i in idx)
        idx = [i for i in idx if paths[i][ends[i] - 1][1:3] == opt]
        st = paths[idx[0]][ends[idx[0]] - 1]
        chosen.append(_Option(st[4][5], st[2], st[4][1], st[3]))
        for i in idx:
            ends[i] -= 1
        top = max(prefix[i][ends[i]] for i in idx)
        idx = [i for i in idx if prefix[i][ends[i]] == top]


# --- the dynamic programme: the reference, for large pods and searches over budget ---------------

# An option of the DP: (role, capacity seconds, gain, item).
_Opt = tuple[int, int, float, PodItem]


def _group_options(
    cands: list[PodItem], bases: Bases, scales: Bases, max_ads: int
) -> list[list[_Opt]]:
    """The (item, role) options by group -- groups by smallest key, options by key then role --
    without the options dominated within their group; groups left without options are dropped.

    Within a group, an option is dropped when another of the same role has no more seconds and
    at least its gain and sorts before it by (seconds, -gain, key): of two equal ones the lower
    key stays. ``cands`` must come by key."""
    grouped: dict[str, list[PodItem]] = {}
    for it in cands:  # insertion order = groups by smallest key
        lst = grouped.get(it.group)
        if lst is None:
            grouped[it.group] = [it]
        else:
            lst.append(it)
    allow_last = max_ads >= 2
    allow_mid = max_ads >= 3
    out: list[list[_Opt]] = []
    for members in grouped.values():
        rows: list[tuple[int, tuple[float, float, float], PodItem]] = []
        for it in members:
            if it.value_first is None and it.value_last is None and it.middle_allowed:
                g = bases[it.tier] + it.value / scales[it.tier]
                gains = (g, g if allow_last else _NEG_INF, g if allow_mid else _NEG_INF)
            else:
                gains = _role_gains(it, bases, scales, max_ads)
            rows.append((capacity_seconds(it.duration_ms), gains, it))
        opts: list[_Opt] = []
        for w, gains, it in rows:
            for role in (_FIRST, _LAST, _MIDDLE):
                g = gains[role]
                if g == _NEG_INF:
                    continue
                for ow, og, o in rows:
                    if (
                        ow <= w
                        and og[role] >= g
                        and o is not it
                        and (ow < w or og[role] > g or o.key < it.key)
                    ):
                        break  # dominated within the group
                else:
                    opts.append((role, w, g, it))
        if opts:
            out.append(opts)
    return out


def _prune_dominated(groups: list[list[_Opt]], max_pod: int) -> list[list[_Opt]]:
    """Drop options that can never be in an optimal pod.

    An option is dropped when at least ``max_pod`` *other* groups each have an option of the same
    role with no more seconds and a strictly higher gain: a pod using it has at most
    ``max_pod - 1`` other items, so one of those groups is unused and swapping in its option keeps
    the pod valid and raises its value. This typically removes most low-value candidates.

    Per role, options are swept by decreasing gain (equal gains as one batch, as only strictly
    higher gains count). ``seen[d]`` collects the groups met so far with an option of at most
    the ``d``-th smallest seconds value, and stops growing at ``max_pod + 1`` groups (then every
    option with those seconds has ``max_pod`` of them besides its own group). Being full is
    upward closed in ``d``, so once ``seen[0]`` is full every remaining option is dropped.
    """
    if len(groups) <= max_pod:
        return groups  # fewer than max_pod other groups
    by_role: tuple[list[tuple[float, int, int, int]], ...] = ([], [], [])
    for gid, opts in enumerate(groups):
        for pos, o in enumerate(opts):
            by_role[o[0]].append((o[2], o[1], gid, pos))
    dropped: set[tuple[int, int]] = set()
    for lst in by_role:
        n = len(lst)
        if n <= max_pod:
            continue
        lst.sort(key=_neg_gain)
        secs = sorted({e[1] for e in lst})
        where = {s: d for d, s in enumerate(secs)}
        seen: list[set[int]] = [set() for _ in secs]
        i = 0
        while i < n:
            if len(seen[0]) > max_pod:
                dropped.update((e[2], e[3]) for e in lst[i:])
                break
            j = i + 1
            while j < n and lst[j][0] == lst[i][0]:
                j += 1
            for _, sec, gid, pos in lst[i:j]:
                s = seen[where[sec]]
                if len(s) - (gid in s) >= max_pod:
                    dropped.add((gid, pos))
            for _, sec, gid, _ in lst[i:j]:
                for s in seen[where[sec] :]:
                    if len(s) > max_pod:
                        break
                    s.add(gid)
            i = j
    if not dropped:
        return groups
    pruned = [
        [o for pos, o in enumerate(opts) if (gid, pos) not in dropped]
        for gid, opts in enumerate(groups)
    ]
    return [opts for opts in pruned if opts]


def _neg_gain(e: tuple[float, int, int, int]) -> float:
    return -e[0]


def _dp_pod(
    cands: list[PodItem], c: PodConstraints, bases: Bases, scales: Bases
) -> list[_Option] | None:
    """The optimal pod by the DP (module docstring); None if no pod is possible."""
    groups = _group_options(sorted(cands, key=_item_key), bases, scales, c.max_ads)
    groups = _prune_dominated(groups, min(c.max_ads, len(groups)))
    if not groups:
        return None
    # Capacity unit: the gcd of all option seconds (exact; 15/30/60 s creatives -> 15 s units).
    unit = math.gcd(*(o[1] for g in groups for o in g))
    n_ads = min(c.max_ads, len(groups))
    longest = sorted((max(o[1] for o in g) for g in groups), reverse=True)
    n_cap = min(c.pod_duration_ms // 1000, sum(longest[:n_ads])) // unit
    # best[q, k, u]: best score with k ads in exactly u units; q = 2 * first_filled + last_filled.
    best = np.full((4, n_ads + 1, n_cap + 1), -np.inf)
    best[0, 0, 0] = 0.0
    max_opts = max(len(g) for g in groups)
    ptr_dtype = np.int16 if max_opts < np.iinfo(np.int16).max else np.int32
    choice = np.zeros((len(groups), 4, n_ads + 1, n_cap + 1), dtype=ptr_dtype)

    reach_k = 0  # highest k reachable so far
    reach_u = 0  # highest u reachable so far
    for j, opts in enumerate(groups):
        prev = best.copy()
        ch = choice[j]
        src_k = min(reach_k, n_ads - 1)  # source rows 0..src_k
        ks = slice(0, src_k + 1)
        kt = slice(1, src_k + 2)
        for o_idx, (role, sec, gain, _) in enumerate(opts, start=1):
            w = sec // unit
            src_u = min(reach_u, n_cap - w)  # source columns 0..src_u
            if src_u < 0:
                continue
            us = slice(0, src_u + 1)
            ut = slice(w, w + src_u + 1)
            if role == _MIDDLE:
                cand = prev[:, ks, us] + gain
                tgt = best[:, kt, ut]
                tch = ch[:, kt, ut]
            elif role == _FIRST:  # q 0,1 -> 2,3
                cand = prev[0:2, ks, us] + gain
                tgt = best[2:4, kt, ut]
                tch = ch[2:4, kt, ut]
            else:  # _LAST: q 0,2 -> 1,3
                cand = prev[0::2, ks, us] + gain
                tgt = best[1::2, kt, ut]
                tch = ch[1::2, kt, ut]
            better = cand > tgt  # strictly: the incumbent keeps ties
            np.copyto(tgt, cand, where=better)
            np.copyto(tch, o_idx, where=better)
        reach_k = min(reach_k + 1, n_ads)
        reach_u = min(reach_u + max(o[1] for o in opts) // unit, n_cap)

    # Final states as final[u, k]: k == 1 -> first only (q=2); k >= 2 -> first and last (q=3).
    final = np.full((n_cap + 1, n_ads + 1), -np.inf)
    final[:, 1] = best[2, 1, :]
    if n_ads >= 2:
        final[:, 2:] = best[3, 2:, :].T
    flat = int(np.argmax(final))  # first maximum in (u, k) order: fewest seconds, then fewest ads
    u, k = divmod(flat, n_ads + 1)
    if final[u, k] == -np.inf:
        return None
    q = 2 if k == 1 else 3
    return _backtrack(groups, choice, unit, q, k, u)


def _backtrack(
    groups: list[list[_Opt]],
    choice: npt.NDArray[np.integer],
    unit: int,
    q: int,
    k: int,
    u: int,
) -> list[_Option]:
    chosen: list[_Option] = []
    for j in range(len(groups) - 1, -1, -1):
        o_idx = int(choice[j, q, k, u])
        if o_idx == 0:
            continue
        role, sec, gain, it = groups[j][o_idx - 1]
        chosen.append(_Option(it, role, sec, gain))
        k -= 1
        u -= sec // unit
        if role == _FIRST:
            q -= 2
        elif role == _LAST:
            q -= 1
    if (q, k, u) != (0, 0, 0):  # pragma: no cover - would be a bug in the DP
        raise AssertionError("pod back-pointers are inconsistent")
    return chosen


def _position_free(item: PodItem) -> bool:
    """An ad worth the same in every slot (no slot preference or restriction)."""
    return item.value_first is None and item.value_last is None and item.middle_allowed


def _by_value(o: _Option) -> tuple[float, int]:
    return (-o.item.value, o.item.key)


def _play_order(first: list[_Option], middle: list[_Option], last: list[_Option]) -> list[_Option]:
    """Play order realising the optimum: slot-bound ads stay where the optimiser put them;
    position-free ads (same value in every slot) play highest value first: the best of them
    takes a free first slot, the least a free last slot, the rest join the middle, which plays
    in descending value. Moving free ads never changes the score."""
    free = sorted([o for o in (*first, *middle, *last) if _position_free(o.item)], key=_by_value)
    if first and _position_free(first[0].item):
        first = [free.pop(0)]
    if last and _position_free(last[0].item):
        last = [free.pop()]
    mid = sorted([*free, *(o for o in middle if not _position_free(o.item))], key=_by_value)
    return [*first, *mid, *last]


def _result(chosen: list[_Option], bases: Bases, scales: Bases) -> PodResult:
    first = [o for o in chosen if o.role == _FIRST]
    last = [o for o in chosen if o.role == _LAST]
    middle = sorted(
        (o for o in chosen if o.role == _MIDDLE), key=lambda o: (-o.item.value, o.item.key)
    )
    ordered = _play_order(first, middle, last)
    realised = [
        o.item.first_value
        if o.role == _FIRST
        else o.item.last_value
        if o.role == _LAST
        else o.item.value
        for o in ordered
    ]
    tiers = [o.item.tier for o in ordered]
    norm = math.fsum(v / scales[t] for v, t in zip(realised, tiers, strict=True))
    score = math.fsum(bases[t] for t in tiers) + norm
    return PodResult(
        items=tuple(o.item for o in ordered),
        objective=(score, *(float(tiers.count(t)) for t in (3, 2, 1, 0)), norm),
        total_duration_ms=sum(o.item.duration_ms for o in ordered),
        value=math.fsum(realised),
    )


# --- structured pods: a duration rule per slot ----------------------------------------------------

_SLOT_BUDGET = 8000
"""Nodes plus bound steps the structured-pod search may spend (about a microsecond each)
before it returns the best pod found so far (``PodResult.exact`` False)."""


class _SlotCand:
    """An ad fitting at least one slot. A gain is -inf where the ad cannot take that role."""

    __slots__ = ("first", "group", "item", "last", "later", "mask", "middle", "rank", "secs")

    def __init__(
        self, rank: int, item: PodItem, gains: tuple[float, float, float], mask: int
    ) -> None:
        self.rank = rank
        self.item = item
        self.group = item.group
        self.secs = capacity_seconds(item.duration_ms)
        self.first, self.last, self.middle = gains
        self.later = max(self.last, self.middle)
        """The best it adds when it is not the pod's first."""
        self.mask = mask
        """Bit ``j`` set: it fits slot ``j``."""

    def dominates(self, o: _SlotCand) -> bool:
        """Whether it can replace ``o`` in any pod for at least the same score, ranking
        before it: every role's gain as high, no more seconds, every slot ``o`` fits."""
        return (
            self.rank < o.rank
            and self.first >= o.first
            and self.last >= o.last
            and self.middle >= o.middle
            and self.secs <= o.secs
            and o.mask & ~self.mask == 0
        )


# The best a group adds (any role, or not first), the slots its ads fit, its fewest seconds.
_GroupBound = tuple[float, str, int, int]


class _SlotBudgetSpent(Exception):
    pass


def _undominated(cands: list[_SlotCand], max_ads: int) -> list[_SlotCand]:
    """``cands`` (in rank order) less those no winning pod holds: an ad dominated by another of
    its group (the pod holds at most one of them, so the other can take its place), or by
    ``max_ads`` ads of distinct other groups (a pod holding it leaves one of those groups free)."""
    kept: list[_SlotCand] = []
    for c in cands:
        rivals: set[str] = set()
        for o in kept:  # every ad dominating ``c`` ranks before it; a dropped one has a kept
            if o.group not in rivals and o.dominates(c):  # dominator ranked before it
                if o.group == c.group:
                    break
                rivals.add(o.group)
                if len(rivals) >= max_ads:
                    break
        else:
            kept.append(c)
    return kept


def _bound_lists(cands: list[_SlotCand], later: bool, k: int) -> list[_GroupBound]:
    """For the bounds, best first: per ad (or per group: ``None`` key dropped) the best it adds
    in any role (``later``: not as the pod's first), the slots it fits then (the last slot
    takes no ad that cannot go last), its fewest seconds. A group's entry joins those of its
    ads."""
    out: list[_GroupBound] = []
    for c in cands:
        g = c.later if later else max(c.first, c.later)
        if g != _NEG_INF:
            mask = c.mask & ~(1 << (k - 1)) if later and c.last == _NEG_INF else c.mask
            out.append((g, c.group, mask, c.secs))
    out.sort(key=_neg_first_group)
    return out


def _by_group(ads: list[_GroupBound]) -> list[_GroupBound]:
    best: dict[str, tuple[float, int, int]] = {}
    for w, grp, mask, secs in ads:
        w0, m, s0 = best.get(grp, (w, 0, secs))
        best[grp] = (max(w, w0), m | mask, min(secs, s0))
    out = [(w, grp, m, secs) for grp, (w, m, secs) in best.items()]
    out.sort(key=_neg_first_group)
    return out


def _neg_first_group(e: _GroupBound) -> tuple[float, str]:
    return (-e[0], e[1])


def _slotted_pod(
    items: Sequence[PodItem], c: PodConstraints, scaled: Sequence[PodItem]
) -> PodResult:
    """The optimal structured pod: each slot ``j`` of ``c.slots`` holds at most one ad that
    fits its rule (module docstring, "Structured pods"); values normalised over ``scaled``."""
    slots = c.slots
    assert slots is not None
    k = len(slots)
    max_ads = min(c.max_ads, k)
    bases = tier_bases(c.max_ads)
    scales = _tier_scales(scaled, c.max_ads)
    cap = c.pod_duration_ms // 1000
    rows: list[tuple[float, int, PodItem, tuple[float, float, float]]] = []
    for it in _eligible(items, c):
        gains = tuple(
            g if g > 0 else _NEG_INF  # an ad that adds nothing is left out
            for g in _role_gains(it, bases, scales, max_ads)
        )
        top = max(gains)
        if top != _NEG_INF:
            rows.append((-top, it.key, it, (gains[0], gains[1], gains[2])))
    rows.sort(key=_rank_key)
    cands: list[_SlotCand] = []
    allowed = c.slot_masks
    for rank, (_, _, it, gains) in enumerate(rows):
        mask = 0
        for j, rule in enumerate(slots):
            if rule.fits(it.duration_ms):
                mask |= 1 << j
        if allowed is not None:
            mask &= allowed.get(it.key, mask)
        if mask:
            cands.append(_SlotCand(rank, it, gains, mask))
    cands = _undominated(cands, max_ads)
    per_slot: list[list[_SlotCand]] = [[x for x in cands if x.mask >> j & 1] for j in range(k)]
    ad_lists = (_bound_lists(cands, False, k), _bound_lists(cands, True, k))
    group_lists = (_by_group(ad_lists[0]), _by_group(ad_lists[1]))
    full = (1 << k) - 1

    best_score = 0.0
    best: list[tuple[int, _SlotCand]] = []
    done: list[tuple[int, _SlotCand, float]] = []  # placed ads whose role is settled
    used: set[str] = set()
    work = 0
    match: list[int] = [0] * k  # for the bound: the list index of the group matched to a slot

    def upper(j: int, room: int, secs_left: int, lst: list[_GroupBound]) -> list[float]:
        """What slots ``j..k-1`` can add at most: the best gains of unused groups that can be
        matched to distinct slots (each group taking any slot one of its ads fits, at its best
        gain), at most ``room`` of them -- a matroid, so the greedy pick is the maximum."""
        nonlocal work
        rest = full & ~((1 << j) - 1)
        free = rest
        tops: list[float] = []
        failed: set[int] = set()
        for idx, (w, grp, gmask, gsecs) in enumerate(lst):
            work += 1
            if grp in used or gsecs > secs_left:
                continue
            m = gmask & rest
            if not m or m in failed:
                continue
            avail = m & free
            if avail:
                bit = avail & -avail
            else:
                bit, steps = _augment_path(m, lst, match, rest, free)
                work += steps
            if not bit:  # no room for it (nor for a group fitting no other slots)
                failed.add(m)
                continue
            match[bit.bit_length() - 1] = idx
            free &= ~bit
            tops.append(w)
            if len(tops) == room or not free:
                break
        return tops

    def visit(j: int, secs: int, pending: tuple[int, _SlotCand] | None, empty: int) -> None:
        """Slots ``j..k-1`` still to decide; ``pending`` is the latest ad when it is not the
        pod's first: it goes last if no other follows, else in the middle. ``empty``: the
        slots left empty after the pod's first ad."""
        nonlocal best_score, best, work
        work += 1
        if work > _SLOT_BUDGET:
            raise _SlotBudgetSpent
        first = not done and pending is None
        room = max_ads - len(done) - (pending is not None)
        gains = [g for _, _, g in done]
        if pending is not None:
            p = pending[1]
            gains.append(p.later)
            if p.middle == _NEG_INF:
                room = 0  # no ad may follow it
            else:
                # It goes in the middle if another ad follows: not if it fits an empty slot
                # after the first (moved there, the ranks per slot are smaller, the score the
                # same), nor if it could swap with an earlier middle ranked after it.
                jp = pending[0]
                if p.mask & empty & ((1 << jp) - 1):
                    room = 0
                else:
                    for s, q, _ in done[1:]:
                        if q.rank > p.rank and q.mask >> jp & 1 and p.mask >> s & 1:
                            room = 0
                            break
        tops: list[float] = []
        if room and j < k:
            # Two bounds on what the slots left add, each a matroid relaxation: groups that can
            # take distinct slots (a group at its best gain in any slot one of its ads fits),
            # or ads that can (at their own gain in their own slots, a group more than once).
            tops = upper(j, room, cap - secs, group_lists[not first])
            if math.fsum(gains + tops) <= best_score:
                return  # no pod below this node beats the best (ties: the earlier one stays)
            if tops:
                by_ad = upper(j, room, cap - secs, ad_lists[not first])
                if math.fsum(gains + by_ad) < math.fsum(gains + tops):
                    tops = by_ad
        if math.fsum(gains + tops) <= best_score:
            return
        if not tops:  # the pod closes here: the pending ad goes last
            last = 0.0
            if pending is not None:
                last = pending[1].last
                if last == _NEG_INF:
                    return
                gains[-1] = last
            score = math.fsum(gains)
            if score > best_score:
                best_score = score
                best = [(s, q) for s, q, _ in done]
                if pending is not None:
                    best.append(pending)
            return
        # An ad goes in the first slot it fits after the one before it (else moved there the
        # ranks per slot are smaller and the score the same): so it fits none of ``gap``.
        prev = pending[0] if pending is not None else done[-1][0] if done else -1
        gap = ((1 << j) - 1) & ~((1 << (prev + 1)) - 1)
        # A child's bound is at most its ad's gain plus the best ``room - 1`` of ``tops``
        # (a greedy prefix is the matroid's best of that size).
        rest = gains + tops[: room - 1]
        for rec in per_slot[j]:
            work += 1
            if rec.group in used or secs + rec.secs > cap or rec.mask & gap:
                continue
            if math.fsum([*rest, rec.first if first else rec.later]) <= best_score:
                continue
            if first:
                if rec.first == _NEG_INF:
                    continue
                done.append((j, rec, rec.first))
            elif rec.later == _NEG_INF:
                continue
            elif pending is not None:
                done.append((pending[0], pending[1], pending[1].middle))
            used.add(rec.group)
            visit(j + 1, secs + rec.secs, None if first else (j, rec), empty)
            used.discard(rec.group)
            if first or pending is not None:
                done.pop()
        visit(j + 1, secs, pending, empty if first else empty | 1 << j)  # slot j left empty

    exact = True
    try:
        visit(0, 0, None, 0)
    except _SlotBudgetSpent:
        exact = False
    if not best:
        return _EMPTY if exact else replace(_EMPTY, exact=False, budget_spent=True)
    realised: list[float] = []
    n = len(best)
    for p, (_, rec) in enumerate(best):
        it = rec.item
        realised.append(it.first_value if p == 0 else it.last_value if p == n - 1 else it.value)
    tiers = [rec.item.tier for _, rec in best]
    norm = math.fsum(v / scales[t] for v, t in zip(realised, tiers, strict=True))
    return PodResult(
        items=tuple(rec.item for _, rec in best),
        objective=(
            math.fsum(bases[t] for t in tiers) + norm,
            *(float(tiers.count(t)) for t in (3, 2, 1, 0)),
            norm,
        ),
        total_duration_ms=sum(rec.item.duration_ms for _, rec in best),
        value=math.fsum(realised),
        slots=tuple(j for j, _ in best),
        exact=exact,
        budget_spent=not exact,
    )


def _augment_path(
    m: int, lst: list[_GroupBound], match: list[int], rest: int, free: int
) -> tuple[int, int]:
    """Shift matched entries along an alternating path from the slots ``m`` to a free slot
    (Kuhn's augmenting path). Returns the slot bit the new entry takes (0: no path) and the
    slots looked at."""
    seen = 0

    def walk(m: int) -> int:
        nonlocal seen
        m &= ~seen
        while m:
            bit = m & -m
            m ^= bit
            seen |= bit
            s = bit.bit_length() - 1
            if free & bit:
                return bit
            nxt = walk(lst[match[s]][2] & rest & ~seen)
            if nxt:
                match[nxt.bit_length() - 1] = match[s]
                return bit
        return 0

    return walk(m), seen.bit_count()


def _rank_key(row: tuple[float, int, PodItem, tuple[float, float, float]]) -> tuple[float, int]:
    return (row[0], row[1])
