"""Pod building: the best ordered set of ads for one ad break, by exact dynamic programming.

Problem
-------
Given candidate :class:`PodItem` s and the break's :class:`PodConstraints`, choose an ordered
pod (slot 1 plays first) that maximises the *score* below, subject to:

* ``1 <= len(pod) <= max_ads``;
* at most one item per ``group`` (competitive / creative separation);
* every item is :func:`eligible` (min / max / required durations, fits in the break);
* capacity: ``sum(ceil(duration_ms / 1000)) <= pod_duration_ms // 1000`` (see below);
* slot permissions: slot 1 uses ``value_first``; the last slot (pods of >= 2 ads) uses
  ``value_last``; the slots in between use ``value`` and need ``middle_allowed``. A slot value of
  ``-inf`` means "not allowed there". A one-ad pod's only ad is slot 1.

Score (the objective)
---------------------
Values are normalised to ``[0, 1)``: ``v_norm = v / scale`` with ``scale = 1.0000001 * m`` where
``m`` is the largest finite slot value (``value``, ``value_first``, ``value_last``) over *all*
candidates passed in, or ``scale = 1`` when every such value is 0. The score of a pod is::

    score = sum(TIER_BASE[item.tier] + v_norm(realised slot value of item))

with ``TIER_BASE = (0, 11, 121, 1331)`` (tier 0 house, 1 standard, 2 guaranteed, 3 sponsorship).
A pod holds at most 10 ads and each normalised value is < 1, so one item of a higher tier beats
any number of lower-tier items: the score orders pods lexicographically by (number of tier-3
items, tier-2, tier-1, total value). Tier 0 has no base, so house ads only count through their
value (a zero-value house ad adds nothing and, by the tie rule below, is left out). When
``max_ads > 10`` the bases are generalised to ``(0, B, B**2, B**3)`` with ``B = max_ads + 1``
(:func:`tier_bases`), which keeps tiers strictly ahead of price; for ``max_ads <= 10`` they are
exactly ``TIER_BASE``.

Capacity is counted in whole seconds, each ad taking ``ceil(duration_ms / 1000)`` seconds out of
``pod_duration_ms // 1000``. This is conservative: since ``1000 * ceil(d / 1000) >= d``, every pod
it accepts also satisfies ``sum(duration_ms) <= pod_duration_ms``, but a set whose millisecond
total fits while its ceil-seconds total does not (e.g. two 15.2 s ads in a 30.5 s break) is
**not** considered. :func:`eligible` applies the same rule to a single ad.

Algorithm
---------
Groups partition the candidates, so this is a multiple-choice knapsack with a cardinality limit
and two "special slot" flags. The DP table is ``best[q, k, s]``: the best score of a partial pod
built from the groups processed so far that uses exactly ``k`` ads and exactly ``s`` capacity
seconds, where ``q = 2 * first_filled + last_filled``. Groups are processed one at a time; a group
contributes nothing or exactly one of its (item, role) options, where the role is

* first:  ``(0, l) -> (1, l)``, gain ``TIER_BASE + v_first``;
* last:   ``(f, 0) -> (f, 1)``, gain ``TIER_BASE + v_last``;
* middle: ``(f, l) -> (f, l)``, gain ``TIER_BASE + v``;

each also moving ``(k, s) -> (k + 1, s + ceil_seconds)``. Each option is one vectorised numpy
max-update of a shifted slice of the previous layer over the whole ``(k, s)`` grid, restricted to
the reachable region. Back-pointers (the winning option per cell, per group) are kept in an
``int16``/``int32`` array and walked backwards to recover the pod. Final states are ``k == 1``
with only the first slot filled, or ``k >= 2`` with both first and last filled (the ``k - 2``
others are middles).

Before the DP, exact reductions shrink the work (none changes the result):

* within a group, an option dominated by another of the same role (no more seconds, at least the
  gain) is dropped;
* across groups, an option is dropped when ``K`` other groups each hold a same-role option with no
  more seconds and a strictly higher gain (one of them is always free to swap in), which removes
  most low-value candidates;
* capacity is counted in units of the gcd of the options' seconds (15/30/60 s creatives -> 15 s
  units) and capped at the sum of the ``K`` longest groups.

With ``m`` options (<= 3 per eligible candidate), ``G`` groups, ``K = min(max_ads, G)`` and
``S = pod_duration_ms // 1000``, time is ``O(m * K * S)`` for the DP (numpy-vectorised over the
``4 x K x S`` table) plus ``O(m**2)`` for the dominance pruning, and space is ``O(K * S)`` floats
for the table plus ``O(G * K * S)`` small ints for back-pointers. 200 candidates, a 300 s break
and 8 ads take about 2-3 ms; about 10 ms when no candidate dominates another (value rising with
duration, every candidate in its own group, durations sharing no common unit).

Ties
----
Ties are exact float ties of the score and are resolved deterministically, independently of the
input order: (1) the smallest total capacity seconds wins, then (2) the fewest ads; (3) remaining
ties follow a fixed processing order -- groups by their smallest key, options by item key then
role first/last/middle -- in which an option replaces the incumbent only when strictly better,
which in effect prefers pods that use lower-keyed groups (two identical ads: the lower key).
Keys must be unique.

Play order: the first-slot item, then middle items by descending ``value`` (ties by key), then the
last-slot item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "TIER_BASE",
    "PodConstraints",
    "PodItem",
    "PodResult",
    "build_pod",
    "capacity_seconds",
    "eligible",
    "tier_bases",
]

TIER_BASE: tuple[int, int, int, int] = (0, 11, 121, 1331)
"""Score added per item of tier 0 (house), 1 (standard), 2 (guaranteed), 3 (sponsorship)."""

_NORM_HEADROOM = 1.0000001
_NEG_INF = float("-inf")

# Roles, in the order options are tried within one item.
_FIRST, _LAST, _MIDDLE = 0, 1, 2
_ROLE_MIN_ADS = (1, 2, 3)  # smallest pod in which a role exists


@dataclass(frozen=True, slots=True)
class PodItem:
    """One candidate ad for the pod."""

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
class PodConstraints:
    """The ad break's rules."""

    pod_duration_ms: int
    """Total of chosen durations must be <= this (counted in ceil-seconds, see module doc)."""
    max_ads: int
    """>= 1."""
    min_ad_duration_ms: int | None = None
    max_ad_duration_ms: int | None = None
    required_durations_s: frozenset[int] | None = None
    """If set, each ad's duration rounded to the nearest second (halves up) must be in it."""

    def __post_init__(self) -> None:
        if self.pod_duration_ms < 0:
            raise ValueError("pod_duration_ms must be >= 0")
        if self.max_ads < 1:
            raise ValueError("max_ads must be >= 1")


@dataclass(frozen=True, slots=True)
class PodResult:
    """The chosen pod.

    ``objective`` is ``(score, n_tier3, n_tier2, n_tier1, n_tier0, normalised_value)``: the scalar
    that was maximised (module doc) followed by its explanation. All zeros for an empty pod.
    """

    items: tuple[PodItem, ...]
    """In play order (slot 1 first)."""
    objective: tuple[float, ...]
    total_duration_ms: int
    value: float
    """Sum of the realised (unnormalised) slot values of the chosen items."""


_EMPTY = PodResult(items=(), objective=(0.0,) * 6, total_duration_ms=0, value=0.0)


def capacity_seconds(duration_ms: int) -> int:
    """Capacity an ad uses: its duration rounded *up* to whole seconds."""
    return -(-duration_ms // 1000)


def rounded_seconds(duration_ms: int) -> int:
    """Duration rounded to the nearest whole second, halves up (15.5 s -> 16)."""
    return (duration_ms + 500) // 1000


def eligible(item: PodItem, c: PodConstraints) -> bool:
    """Per-item rules: min / max ad duration, required durations, and fitting in the break
    on its own (``ceil(duration_ms / 1000) <= pod_duration_ms // 1000``, which implies
    ``duration_ms <= pod_duration_ms``)."""
    d = item.duration_ms
    if c.min_ad_duration_ms is not None and d < c.min_ad_duration_ms:
        return False
    if c.max_ad_duration_ms is not None and d > c.max_ad_duration_ms:
        return False
    if c.required_durations_s is not None and rounded_seconds(d) not in c.required_durations_s:
        return False
    return d <= c.pod_duration_ms and capacity_seconds(d) <= c.pod_duration_ms // 1000


def tier_bases(max_ads: int) -> tuple[int, int, int, int]:
    """Per-tier score bases: :data:`TIER_BASE` up to 10 ads, ``(0, B, B**2, B**3)`` with
    ``B = max_ads + 1`` beyond, so a higher tier always beats a full pod of lower tiers."""
    if max_ads <= 10:
        return TIER_BASE
    b = max_ads + 1
    return (0, b, b * b, b * b * b)


def _value_scale(items: Sequence[PodItem]) -> float:
    m = 0.0
    for it in items:
        for v in (it.value, it.first_value, it.last_value):
            if v > m:  # -inf never wins; finite values are >= 0
                m = v
    return m * _NORM_HEADROOM if m > 0 else 1.0


@dataclass(frozen=True, slots=True)
class _Option:
    item: PodItem
    role: int
    seconds: int
    gain: float


def _group_options(
    group: list[PodItem], bases: tuple[int, int, int, int], scale: float, max_ads: int
) -> list[_Option]:
    """The (item, role) options of one group, without dominated ones, in processing order."""
    by_role: list[list[_Option]] = [[], [], []]
    for it in group:
        w = capacity_seconds(it.duration_ms)
        base = bases[it.tier]
        for role, v in enumerate((it.first_value, it.last_value, it.middle_value)):
            if v == _NEG_INF or max_ads < _ROLE_MIN_ADS[role]:
                continue
            by_role[role].append(_Option(it, role, w, base + v / scale))
    kept: list[_Option] = []
    for opts in by_role:
        # Keep an option only if none with <= seconds has >= gain (lower key wins exact ties).
        opts.sort(key=lambda o: (o.seconds, -o.gain, o.item.key))
        best = _NEG_INF
        for o in opts:
            if o.gain > best:
                kept.append(o)
                best = o.gain
    kept.sort(key=lambda o: (o.item.key, o.role))
    return kept


def _prune_dominated(groups: list[list[_Option]], max_pod: int) -> list[list[_Option]]:
    """Drop options that can never be in an optimal pod.

    An option is dropped when at least ``max_pod`` *other* groups each have an option of the same
    role with no more seconds and a strictly higher gain: a pod using it has at most
    ``max_pod - 1`` other items, so one of those groups is unused and swapping in its option keeps
    the pod valid and strictly raises the score. This changes neither the optimum nor which pod
    the tie rules pick, and typically removes most low-value candidates before the DP.
    """
    flat = [(j, o) for j, opts in enumerate(groups) for o in opts]
    keep = [True] * len(flat)
    for role in (_FIRST, _LAST, _MIDDLE):
        idx = [i for i, (_, o) in enumerate(flat) if o.role == role]
        if len(idx) <= max_pod:
            continue
        gid = np.array([flat[i][0] for i in idx])
        sec = np.array([flat[i][1].seconds for i in idx])
        gain = np.array([flat[i][1].gain for i in idx])
        # dom[a, b]: option b beats option a in another group. Columns are in group order
        # (flat is grouped), so reduceat over group starts counts distinct dominating groups.
        dom = (gain[None, :] > gain[:, None]) & (sec[None, :] <= sec[:, None])
        dom &= gid[None, :] != gid[:, None]
        starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
        n_groups = np.logical_or.reduceat(dom, starts, axis=1).sum(axis=1)
        for i, drop in zip(idx, n_groups >= max_pod, strict=True):
            if drop:
                keep[i] = False
    pruned: list[list[_Option]] = [[] for _ in groups]
    for (j, o), k in zip(flat, keep, strict=True):
        if k:
            pruned[j].append(o)
    return [opts for opts in pruned if opts]


def build_pod(items: Sequence[PodItem], c: PodConstraints) -> PodResult:
    """The optimal pod for one break (see the module docstring for objective, rules and ties)."""
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("PodItem keys must be unique")
    cands = sorted((it for it in items if eligible(it, c)), key=lambda it: it.key)
    if not cands:
        return _EMPTY

    bases = tier_bases(c.max_ads)
    scale = _value_scale(items)
    grouped: dict[str, list[PodItem]] = {}
    for it in cands:  # insertion order = groups by smallest key
        grouped.setdefault(it.group, []).append(it)
    groups = [
        opts for g in grouped.values() if (opts := _group_options(g, bases, scale, c.max_ads))
    ]
    groups = _prune_dominated(groups, min(c.max_ads, len(groups)))
    if not groups:
        return _EMPTY

    # Capacity unit: the gcd of all option seconds (exact; 15/30/60 s creatives -> 15 s units).
    unit = math.gcd(*(o.seconds for g in groups for o in g))
    n_ads = min(c.max_ads, len(groups))
    longest = sorted((max(o.seconds for o in g) for g in groups), reverse=True)
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
        for o_idx, o in enumerate(opts, start=1):
            w = o.seconds // unit
            src_u = min(reach_u, n_cap - w)  # source columns 0..src_u
            if src_u < 0:
                continue
            us = slice(0, src_u + 1)
            ut = slice(w, w + src_u + 1)
            if o.role == _MIDDLE:
                cand = prev[:, ks, us] + o.gain
                tgt = best[:, kt, ut]
                tch = ch[:, kt, ut]
            elif o.role == _FIRST:  # q 0,1 -> 2,3
                cand = prev[0:2, ks, us] + o.gain
                tgt = best[2:4, kt, ut]
                tch = ch[2:4, kt, ut]
            else:  # _LAST: q 0,2 -> 1,3
                cand = prev[0::2, ks, us] + o.gain
                tgt = best[1::2, kt, ut]
                tch = ch[1::2, kt, ut]
            better = cand > tgt
            np.copyto(tgt, cand, where=better)
            np.copyto(tch, o_idx, where=better)
        reach_k = min(reach_k + 1, n_ads)
        reach_u = min(reach_u + max(o.seconds for o in opts) // unit, n_cap)

    # Final states as final[u, k]: k == 1 -> first only (q=2); k >= 2 -> first and last (q=3).
    final = np.full((n_cap + 1, n_ads + 1), -np.inf)
    final[:, 1] = best[2, 1, :]
    if n_ads >= 2:
        final[:, 2:] = best[3, 2:, :].T
    flat = int(np.argmax(final))  # first maximum in (u, k) order: fewest seconds, then fewest ads
    u, k = divmod(flat, n_ads + 1)
    if final[u, k] == -np.inf:
        return _EMPTY

    q = 2 if k == 1 else 3
    chosen = _backtrack(groups, choice, unit, q, k, u)
    return _result(chosen, bases, scale)


def _backtrack(
    groups: list[list[_Option]],
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
        o = groups[j][o_idx - 1]
        chosen.append(o)
        k -= 1
        u -= o.seconds // unit
        if o.role == _FIRST:
            q -= 2
        elif o.role == _LAST:
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


def _result(chosen: list[_Option], bases: tuple[int, int, int, int], scale: float) -> PodResult:
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
    norm = math.fsum(v / scale for v in realised)
    score = math.fsum(bases[t] for t in tiers) + norm
    return PodResult(
        items=tuple(o.item for o in ordered),
        objective=(score, *(float(tiers.count(t)) for t in (3, 2, 1, 0)), norm),
        total_duration_ms=sum(o.item.duration_ms for o in ordered),
        value=math.fsum(realised),
    )
