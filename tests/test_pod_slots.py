"""Structured pods whose slots take different durations (``PodConstraints.slots``).

The slotted optimiser is checked against a brute-force oracle that tries every assignment of
ads to slots (each slot empty or holding one ad), written from the rules in the module
docstring of :mod:`vastserver.pipeline.pod`, not from the implementation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vastserver.pipeline.pod as pod_module
from tests.test_pod import _item_ok, _scale, item, keys, pod_items, spec_gain
from vastserver.pipeline.pod import (
    PodConstraints,
    PodItem,
    PodResult,
    SlotRule,
    build_pod,
)

NEG_INF = float("-inf")
INF = float("inf")


# --- brute-force oracle --------------------------------------------------------------------------


def _role_value(it: PodItem, position: int, n: int) -> float:
    """The item's value at ``position`` (0-based) of a pod of ``n`` ads (-inf: not allowed)."""
    if position == 0:
        return it.value if it.value_first is None else it.value_first
    if position == n - 1:
        return it.value if it.value_last is None else it.value_last
    return it.value if it.middle_allowed else NEG_INF


def _gain(it: PodItem, v: float, c: PodConstraints, scale: float) -> float:
    return spec_gain(it.tier, v, scale, c.max_ads)


def _fits_break(it: PodItem, c: PodConstraints) -> bool:
    return _item_ok(it, c) and it.duration_ms <= c.pod_duration_ms


def _fits_pod(pod: Sequence[PodItem], c: PodConstraints) -> bool:
    """The capacity rule: ceil-seconds within the break's seconds rounded up, exact ms within
    its exact ms (module docstring, "Fractional breaks")."""
    ceil_s = sum(math.ceil(it.duration_ms / 1000) for it in pod)
    ms = sum(it.duration_ms for it in pod)
    return ceil_s <= math.ceil(c.pod_duration_ms / 1000) and ms <= c.pod_duration_ms


def _fits_slot(it: PodItem, rule: SlotRule) -> bool:
    """The slot's rule read as a break's min / max / required durations."""
    return _item_ok(it, PodConstraints(0, 1, rule.min_ms, rule.max_ms, rule.required_s))


def _rank(items: Sequence[PodItem], c: PodConstraints) -> dict[int, int]:
    """The documented tie order: ads by their best positive gain over the roles the pod
    has (first; last with >= 2 ads; middle with >= 3), descending, then by key."""
    assert c.slots is not None
    max_ads = min(c.max_ads, len(c.slots))
    scale = _scale(items)
    best: list[tuple[float, int]] = []
    for it in items:
        vals = [it.value if it.value_first is None else it.value_first]
        if max_ads >= 2:
            vals.append(it.value if it.value_last is None else it.value_last)
        if max_ads >= 3 and it.middle_allowed:
            vals.append(it.value)
        gains = [_gain(it, v, c, scale) for v in vals if v != NEG_INF]
        gains = [g for g in gains if g > 0]
        if gains:
            best.append((-max(gains), it.key))
    return {key: r for r, (_, key) in enumerate(sorted(best))}


def slotted_oracle(
    items: Sequence[PodItem], c: PodConstraints
) -> tuple[float, tuple[int | None, ...]] | None:
    """The best (score, key per slot) over every assignment, ties to the lexicographically
    smallest tuple of ranks (an empty slot after every ad); None when no ad can be placed."""
    assert c.slots is not None
    k = len(c.slots)
    scale = _scale(items)
    rank = _rank(items, c)
    by_key = {it.key: it for it in items}
    best: tuple[float, tuple[float, ...], tuple[int | None, ...]] | None = None

    def walk(j: int, chosen: list[int | None]) -> None:
        nonlocal best
        if j == k:
            pod = [by_key[x] for x in chosen if x is not None]
            n = len(pod)
            if not 1 <= n <= c.max_ads:
                return
            if len({it.group for it in pod}) != n:
                return
            if not _fits_pod(pod, c):
                return
            gains = []
            for p, it in enumerate(pod):
                v = _role_value(it, p, n)
                if v == NEG_INF:
                    return
                g = _gain(it, v, c, scale)
                if g <= 0:
                    return  # an ad that adds nothing is left out
                gains.append(g)
            score = math.fsum(gains)
            order = tuple(INF if x is None else float(rank[x]) for x in chosen)
            if best is None or score > best[0] or (score == best[0] and order < best[1]):
                best = (score, order, tuple(chosen))
            return
        walk(j + 1, [*chosen, None])
        for it in items:
            fits = it.key in rank and _fits_break(it, c) and _fits_slot(it, c.slots[j])
            if c.slot_masks is not None and it.key in c.slot_masks:
                fits = fits and bool(c.slot_masks[it.key] >> j & 1)  # (its price, slot j)
            if fits and it.key not in chosen:
                walk(j + 1, [*chosen, it.key])

    walk(0, [])
    return None if best is None else (best[0], best[2])


def check(items: Sequence[PodItem], c: PodConstraints) -> PodResult:
    r = build_pod(items, c)
    want = slotted_oracle(items, c)
    if not r.exact:  # a fractional break whose lenient pod overran it (module docstring)
        assert c.pod_duration_ms % 1000 and want is not None
        assert_valid(items, r, c)
        return r
    if want is None:
        assert r.items == () and r.slots == ()
        return r
    score, per_slot = want
    got: list[int | None] = [None] * len(per_slot)
    for j, it in zip(r.slots, r.items, strict=True):
        got[j] = it.key
    assert tuple(got) == per_slot
    assert r.slots == tuple(sorted(r.slots))
    assert r.objective[0] == pytest.approx(score, rel=1e-12)
    n = len(r.items)
    vals = [_role_value(it, p, n) for p, it in enumerate(r.items)]
    assert r.value == pytest.approx(sum(vals), rel=1e-12, abs=1e-12)
    assert r.total_duration_ms == sum(it.duration_ms for it in r.items)
    # deterministic, whatever the input order
    assert build_pod(list(reversed(items)), c) == r
    return r


# --- random instances ----------------------------------------------------------------------------

_SLOT_SECONDS = [5, 6, 10, 15, 16, 20, 30, 31, 45]


@st.composite
def slot_rules(draw: st.DrawFn) -> tuple[SlotRule, ...]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["req", "max", "minmax", "any"]))
        if kind == "req":
            out.append(
                SlotRule(required_s=draw(st.frozensets(st.sampled_from(_SLOT_SECONDS), min_size=1)))
            )
        elif kind == "max":
            out.append(SlotRule(max_ms=draw(st.integers(5000, 40000))))
        elif kind == "minmax":
            lo = draw(st.integers(0, 20000))
            out.append(SlotRule(min_ms=lo, max_ms=lo + draw(st.integers(0, 20000))))
        else:
            out.append(SlotRule())
    return tuple(out)


@st.composite
def slotted(draw: st.DrawFn) -> PodConstraints:
    rules = draw(slot_rules())
    return PodConstraints(
        pod_duration_ms=draw(st.sampled_from([0, 15000, 30500, 45000, 60000, 90000, 180000])),
        max_ads=draw(st.integers(1, len(rules) + 1)),
        max_ad_duration_ms=draw(st.one_of(st.none(), st.none(), st.integers(10000, 40000))),
        slots=rules,
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=pod_items(max_size=7), c=slotted())
def test_matches_brute_force_oracle(items: list[PodItem], c: PodConstraints) -> None:
    check(items, c)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=pod_items(max_size=7), c=slotted(), data=st.data())
def test_slot_masks_match_the_oracle(
    items: list[PodItem], c: PodConstraints, data: st.DataObject
) -> None:
    """``slot_masks`` (the slots each ad's price lets it fill: per-imp floors) on top of the
    rules: the oracle's best assignment among those the masks allow, an unlisted ad any."""
    assert c.slots is not None
    full = (1 << len(c.slots)) - 1
    listed = data.draw(st.sets(st.sampled_from([it.key for it in items]))) if items else set()
    masks = {key: data.draw(st.integers(0, full)) for key in sorted(listed)}
    c = replace(c, slot_masks=masks)
    r = check(items, c)
    for it, j in zip(r.items, r.slots, strict=True):
        assert masks.get(it.key, full) >> j & 1


def test_a_slot_its_floor_closes_to_an_ad_goes_to_another() -> None:
    """The best ad (9) may not fill the first slot (its imp's floor is above its price):
    it fills the next, and the first takes the best ad that may; none that may: empty."""
    rule = SlotRule(max_ms=30000)
    items = [item(1, 15, 9.0, group="a"), item(2, 15, 4.0, group="b"), item(3, 15, 1.0, group="c")]
    c = PodConstraints(45000, 2, slots=(rule, rule), slot_masks={1: 0b10, 3: 0b10})
    r = build_pod(items, c)
    assert (keys(r), r.slots) == ([2, 1], (0, 1))
    c = PodConstraints(45000, 2, slots=(rule, rule), slot_masks={1: 0b10, 2: 0b10, 3: 0b10})
    r = build_pod(items, c)
    assert (keys(r), r.slots) == ([1], (1,))
    c = PodConstraints(45000, 2, slots=(rule, rule), slot_masks={1: 0, 2: 0, 3: 0})
    assert build_pod(items, c).items == ()


def test_many_seeded_instances_with_ties_and_duplicates() -> None:
    """Many small seeded instances heavy in ties (few distinct values and durations), shared
    groups (duplicate line items / creatives / advertisers), slot roles and slot prices."""
    rng = random.Random(20261127)
    for _ in range(1500):
        n = rng.randint(0, 7)
        items = [
            PodItem(
                key=key,
                duration_ms=rng.choice([6000, 10000, 15000, 15400, 15600, 20000, 30000, 30001]),
                value=rng.choice([0.0, 1.0, 2.0, 2.0, 5.0]),
                tier=rng.choice([0, 1, 1, 2, 3]),
                group=rng.choice("abcde"),
                value_first=rng.choice([None, None, NEG_INF, 3.0, 6.0]),
                value_last=rng.choice([None, None, NEG_INF, 3.0]),
                middle_allowed=rng.random() < 0.8,
            )
            for key in rng.sample(range(100), n)
        ]
        rules = tuple(
            rng.choice(
                [
                    SlotRule(required_s=frozenset({30})),
                    SlotRule(required_s=frozenset({15})),
                    SlotRule(required_s=frozenset({15, 30})),
                    SlotRule(max_ms=15000),
                    SlotRule(min_ms=10000, max_ms=20000),
                    SlotRule(max_ms=30000),
                    SlotRule(),
                ]
            )
            for _ in range(rng.randint(1, 4))
        )
        c = PodConstraints(
            pod_duration_ms=rng.choice([30000, 45000, 60000, 75000, 120000]),
            max_ads=rng.randint(1, len(rules)),
            slots=rules,
        )
        check(items, c)


# --- hand-written cases --------------------------------------------------------------------------


def test_each_slot_gets_an_ad_of_its_own_length() -> None:
    """[30 s, 15 s]: the shared rule would have been empty; each slot now takes its ad."""
    items = [item(1, 30, 5.0), item(2, 15, 4.0), item(3, 30, 1.0), item(4, 15, 9.0)]
    c = PodConstraints(
        45000,
        2,
        slots=(SlotRule(required_s=frozenset({30})), SlotRule(required_s=frozenset({15}))),
    )
    r = build_pod(items, c)
    assert keys(r) == [1, 4]
    assert r.slots == (0, 1)
    assert r.total_duration_ms == 45000


def test_an_unfillable_slot_stays_empty_and_later_ads_move_up() -> None:
    c = PodConstraints(
        75000,
        3,
        slots=(
            SlotRule(required_s=frozenset({30})),
            SlotRule(required_s=frozenset({15})),
            SlotRule(required_s=frozenset({30})),
        ),
    )
    items = [item(1, 30, 5.0), item(2, 30, 4.0)]
    r = build_pod(items, c)
    assert keys(r) == [1, 2]
    assert r.slots == (0, 2)


def test_separation_and_roles_per_slot() -> None:
    # the same group cannot fill both slots; a first-only ad takes the first filled slot
    c = PodConstraints(
        45000, 2, slots=(SlotRule(max_ms=30000), SlotRule(required_s=frozenset({15})))
    )
    items = [
        item(1, 30, 9.0, group="a"),
        item(2, 15, 8.0, group="a"),
        item(3, 15, 0.5, group="b", last=NEG_INF, middle=False),  # first only
        item(4, 15, 1.0, group="c"),
    ]
    r = build_pod(items, c)
    assert keys(r) == [1, 4]  # 9 + 1 (3 cannot go last, 2 shares 1's group)
    # the first-only ad can only open the pod: with slot 1 its own, it does
    c1 = PodConstraints(45000, 2, slots=(SlotRule(required_s=frozenset({15})), SlotRule()))
    assert keys(build_pod([items[0], items[2]], c1)) == [3, 1]
    c2 = PodConstraints(45000, 2, slots=(SlotRule(required_s=frozenset({30})), SlotRule()))
    assert keys(build_pod([items[0], items[2]], c2)) == [1]


def test_slot_prices_follow_the_played_position() -> None:
    # value_first pays in the first filled slot; value_last in the last of >= 2 ads
    c = PodConstraints(
        60000, 2, slots=(SlotRule(required_s=frozenset({30})), SlotRule(required_s=frozenset({30})))
    )
    items = [item(1, 30, 5.0, last=20.0), item(2, 30, 6.0)]
    assert keys(build_pod(items, c)) == [2, 1]


def test_higher_tier_wins_its_slot() -> None:
    c = PodConstraints(
        45000, 2, slots=(SlotRule(required_s=frozenset({30})), SlotRule(required_s=frozenset({15})))
    )
    items = [item(1, 30, 100.0), item(2, 30, 0.1, tier=3), item(3, 15, 1.0)]
    assert keys(build_pod(items, c)) == [2, 3]


def test_pod_duration_still_binds() -> None:
    c = PodConstraints(
        40000, 2, slots=(SlotRule(required_s=frozenset({30})), SlotRule(required_s=frozenset({15})))
    )
    r = build_pod([item(1, 30, 5.0), item(2, 15, 4.0)], c)
    assert keys(r) == [1]


def test_zero_value_house_ads_are_left_out() -> None:
    c = PodConstraints(60000, 2, slots=(SlotRule(), SlotRule()))
    r = build_pod([item(1, 30, 5.0), item(2, 30, 0.0, tier=0)], c)
    assert keys(r) == [1]


def test_without_slots_nothing_changes() -> None:
    items = [item(1, 30, 5.0), item(2, 15, 4.0)]
    r = build_pod(items, PodConstraints(45000, 2))
    assert r.slots == ()
    with pytest.raises(ValueError):
        PodConstraints(45000, 2, slots=())


def test_a_rules_imp_and_role_label_it_without_changing_it() -> None:
    """A structured pod's rules carry their OpenRTB imp and ``slotinpod`` role for the
    explanation; two slots of the same durations are still one rule (one candidate quota),
    and the pod is the one the unlabelled rules give."""
    a = SlotRule(max_ms=15000, imp_id="imp-a", role="first")
    b = SlotRule(max_ms=15000, imp_id="imp-b")
    assert a == b == SlotRule(max_ms=15000) and len({a, b}) == 1
    items = [item(1, 30, 5.0), item(2, 15, 4.0), item(3, 15, 3.0)]
    labelled = (SlotRule(required_s=frozenset({30}), imp_id="x", role="first"), a, b)
    plain = (SlotRule(required_s=frozenset({30})), SlotRule(max_ms=15000), SlotRule(max_ms=15000))
    r = build_pod(items, PodConstraints(60000, 3, slots=labelled))
    p = build_pod(items, PodConstraints(60000, 3, slots=plain))
    assert (keys(r), r.slots) == (keys(p), p.slots) == ([1, 2, 3], (0, 1, 2))


def assert_valid(items: Sequence[PodItem], r: PodResult, c: PodConstraints) -> None:
    """Every rule of a structured pod holds (whether or not the pod is the best)."""
    assert c.slots is not None
    assert all(any(it is x for x in items) for it in r.items)
    assert len(r.items) == len(r.slots) <= c.max_ads
    assert list(r.slots) == sorted(set(r.slots))
    assert len({it.group for it in r.items}) == len(r.items)
    assert _fits_pod(r.items, c)
    n = len(r.items)
    for p, (j, it) in enumerate(zip(r.slots, r.items, strict=True)):
        assert _fits_break(it, c) and _fits_slot(it, c.slots[j])
        assert _role_value(it, p, n) != NEG_INF
    want = slotted_oracle(items, c) if len(items) <= 8 else None
    if want is not None:
        assert r.objective[0] <= want[0] * (1 + 1e-12)


def _big_instance(rng: random.Random, tied: bool) -> tuple[list[PodItem], PodConstraints]:
    """48 candidates (the candidate limit) in 30 groups, 8 slots of nested ``maxduration``."""
    secs = [rng.choice([10, 15, 20, 30, 45, 60]) for _ in range(8)]
    items = [
        item(
            i,
            rng.choice([5, 10, 15, 20, 30, 45, 60]),
            rng.choice([5.0, 10.0]) if tied else rng.uniform(1, 50),
            tier=rng.choice([1, 1, 2]),
            group=f"g{rng.randrange(30)}",
            first=rng.choice([None, None, NEG_INF, 60.0]),
            last=rng.choice([None, None, NEG_INF]),
        )
        for i in range(48)
    ]
    return items, PodConstraints(
        sum(secs) * 1000, 8, slots=tuple(SlotRule(max_ms=s * 1000) for s in secs)
    )


def test_candidate_limit_sized_requests_give_valid_pods() -> None:
    """48 candidates, 8 slots (the shapes ``benchmarks.slotted_pod`` times): a valid pod,
    exact or not (no timing here: the benchmark measures it)."""
    rng = random.Random(7)
    for n in range(16):
        items, c = _big_instance(rng, tied=n % 2 == 1)
        r = build_pod(items, c)
        assert_valid(items, r, c)
        assert len(r.items) == 8


def test_out_of_budget_returns_the_best_pod_found_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the search budget spent, the pod is still valid, marked inexact; with budget to
    spare the same request is exact and at least as good."""
    rng = random.Random(11)
    items, c = _big_instance(rng, tied=False)
    full = build_pod(items, c)
    monkeypatch.setattr(pod_module, "_SLOT_BUDGET", 400)
    cut = build_pod(items, c)
    assert not cut.exact
    assert_valid(items, cut, c)
    assert cut.items  # the first dive already fills a pod
    assert cut.objective[0] <= full.objective[0]
    # a budget too small for even one pod: empty, and said so
    monkeypatch.setattr(pod_module, "_SLOT_BUDGET", 0)
    none = build_pod(items, c)
    assert none.items == () and not none.exact


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=pod_items(max_size=7), c=slotted(), budget=st.integers(0, 60))
def test_any_budget_gives_a_valid_pod(items: list[PodItem], c: PodConstraints, budget: int) -> None:
    old = pod_module._SLOT_BUDGET
    pod_module._SLOT_BUDGET = budget
    try:
        r = build_pod(items, c)
    finally:
        pod_module._SLOT_BUDGET = old
    assert_valid(items, r, c)
    if r.exact:
        assert r == check(items, c)
