"""The fast path of ``build_pod`` (branch and bound) returns exactly what the DP returns.

The DP defines the result, tie-breaking included (see ``vastserver/pipeline/pod.py``); the search
must reproduce it bit for bit: same items, same play order, same objective floats. These tests
force each path (``pod_path``) and compare, on inputs rich in exact and floating-point ties, and
check the pieces the search relies on against straightforward versions of the documented rules.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_pod import NEG_INF, assert_valid, pod_path, spec_gain
from vastserver.pipeline import pod as pod_module
from vastserver.pipeline.pod import PodConstraints, PodItem, PodResult, build_pod, eligible

# Value pools full of ties: exact duplicates, zeros, sums that tie in real arithmetic but
# not in floating point (0.1 + 0.2 vs 0.3), values an ulp apart, subnormals.
POOLS = (
    (0.0, 1.0, 2.0),
    (0.1, 0.2, 0.3, 0.6, 0.7),
    (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
    (1.0, 1.0 + 2**-50, 1.0 - 2**-52, 2.0, 3.0),
    (0.0, 5e-324, 1e-300, 1.0),
    (7.0, 3.5),
    (2.5, 10.0, 12.5, 15.0, 20.0, 25.0),
)
DURATIONS = (
    (15_000, 30_000),
    (15_000, 30_000, 60_000),
    (15_000, 15_000, 30_000, 20_000, 6_000, 10_000, 45_000),
    (15_015, 30_030, 14_990, 15_500, 29_999),
    (1_000, 2_000, 3_000),
)


@st.composite
def tied_items(draw: st.DrawFn, max_size: int = 24) -> list[PodItem]:
    pool = draw(st.sampled_from(POOLS))
    durations = draw(st.sampled_from(DURATIONS))
    n_groups = draw(st.integers(1, 12))
    n = draw(st.integers(0, max_size))
    keys = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    values = st.sampled_from(pool)
    slot = st.one_of(st.none(), st.none(), st.none(), st.just(NEG_INF), values)
    return [
        PodItem(
            key=k,
            duration_ms=draw(st.sampled_from(durations)),
            value=draw(values),
            tier=draw(st.sampled_from((0, 1, 1, 1, 2, 3))),
            group=f"g{draw(st.integers(0, n_groups - 1))}",
            value_first=draw(slot),
            value_last=draw(slot),
            middle_allowed=draw(st.sampled_from((True, True, True, False))),
        )
        for k in keys
    ]


@st.composite
def break_rules(draw: st.DrawFn) -> PodConstraints:
    return PodConstraints(
        pod_duration_ms=draw(
            st.one_of(
                st.sampled_from([0, 15_000, 30_000, 45_000, 60_000, 90_000, 120_000, 180_000]),
                st.integers(1_000, 200_000),
            )
        ),
        max_ads=draw(st.integers(1, 10)),
        min_ad_duration_ms=draw(st.one_of(st.none(), st.none(), st.integers(0, 16_000))),
        max_ad_duration_ms=draw(st.one_of(st.none(), st.none(), st.integers(10_000, 45_000))),
        required_durations_s=draw(
            st.one_of(
                st.none(),
                st.none(),
                st.frozensets(st.sampled_from([1, 2, 6, 10, 15, 16, 20, 30, 45]), min_size=1),
            )
        ),
    )


def both_paths(items: Sequence[PodItem], c: PodConstraints) -> PodResult:
    with pod_path("search"):
        fast = build_pod(items, c)
    with pod_path("dp"):
        ref = build_pod(items, c)
    assert fast == ref
    # Bit for bit, not just ==: the objective floats and the play order are the same.
    assert [it.key for it in fast.items] == [it.key for it in ref.items]
    assert [x.hex() for x in fast.objective] == [x.hex() for x in ref.objective]
    return ref


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=tied_items(), c=break_rules())
def test_search_returns_the_dp_pod(items: list[PodItem], c: PodConstraints) -> None:
    r = both_paths(items, c)
    assert_valid(r, items, c)
    with pod_path("search"):
        assert build_pod(list(reversed(items)), c) == r


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=tied_items(max_size=60), c=break_rules())
def test_search_returns_the_dp_pod_large_pools(items: list[PodItem], c: PodConstraints) -> None:
    c = PodConstraints(c.pod_duration_ms, min(c.max_ads, 5), None, None, None)
    both_paths(items, c)


def realistic_items(rng: random.Random, n: int = 60, n_groups: int = 25) -> list[PodItem]:
    """Like the request path: mostly standard-tier 15/30/60 s ads, some guaranteed and house
    ads, a few slot prices and slot restrictions, prices with two decimals."""
    items = []
    for i in range(n):
        first: float | None = None
        last: float | None = None
        middle = True
        r = rng.random()
        if r < 0.08:
            first = round(rng.uniform(10, 40), 2)
        elif r < 0.12:
            last = round(rng.uniform(10, 40), 2)
        elif r < 0.15:
            first, middle = NEG_INF, False  # last slot only
        elif r < 0.18:
            last, middle = NEG_INF, False  # first slot only
        items.append(
            PodItem(
                key=i,
                duration_ms=rng.choice([15_000, 15_000, 15_000, 30_000, 30_000, 30_000, 60_000]),
                value=round(rng.uniform(0.5, 25.0), 2) if rng.random() > 0.05 else 0.0,
                tier=rng.choice([1] * 8 + [2, 0]),
                group=f"g{rng.randrange(n_groups)}",
                value_first=first,
                value_last=last,
                middle_allowed=middle,
            )
        )
    return items


@pytest.mark.parametrize("max_ads", [1, 2, 3, 4, 5, 6, 8])
def test_realistic_requests(max_ads: int) -> None:
    rng = random.Random(20261125 + max_ads)
    for _ in range(40):
        items = realistic_items(rng)
        for seconds in (30, 60, 120, 180):
            c = PodConstraints(pod_duration_ms=seconds * 1000, max_ads=max_ads)
            r = both_paths(items, c)
            with pod_path("default"):
                assert build_pod(items, c) == r


def test_typical_requests_never_need_the_dp() -> None:
    """The point of the search: a 4-ad break over ~60 candidates is decided without the DP."""
    rng = random.Random(7)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pod_module, "_dp_pod", _dp_called)
        for _ in range(50):
            items = realistic_items(rng)
            for c in (
                PodConstraints(pod_duration_ms=120_000, max_ads=4),
                PodConstraints(pod_duration_ms=60_000, max_ads=2),
                PodConstraints(pod_duration_ms=30_000, max_ads=1),
            ):
                assert build_pod(items, c).items


def _dp_called(*args: object) -> None:
    raise AssertionError("the DP ran")


def test_search_over_budget_falls_back_to_the_dp() -> None:
    # Twelve identical ads: every 6-ad pod ties, far too many for a small budget.
    twins = [
        PodItem(key=k, duration_ms=15_000, value=5.0, tier=1, group=f"g{k}") for k in range(12)
    ]
    c = PodConstraints(pod_duration_ms=90_000, max_ads=6)
    calls: list[int] = []
    dp = pod_module._dp_pod

    def counting_dp(*args: object) -> object:
        calls.append(1)
        return dp(*args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(pod_module, "_SEARCH_BUDGET", 50)
        m.setattr(pod_module, "_dp_pod", counting_dp)
        r = build_pod(twins, c)
    assert calls == [1]
    assert r == both_paths(twins, c)
    # Exact ties go to the lower keys; the play order is by value, then key.
    assert [it.key for it in r.items] == [0, 1, 2, 3, 4, 5]
    # More than _SEARCH_MAX_ADS ads: straight to the DP, same pod.
    assert pod_module._SEARCH_MAX_ADS < 10
    with pod_path("default"):
        assert build_pod(twins, PodConstraints(pod_duration_ms=90_000, max_ads=10)) == r


def test_role_ties_follow_the_dp() -> None:
    # Slot prices tie with middle values in every way: the search must pick the DP's roles.
    items = [
        PodItem(0, 15_000, 1.0, 1, "a", value_first=2.0),
        PodItem(1, 15_000, 2.0, 1, "b", value_last=1.0),
        PodItem(2, 15_000, 1.0, 1, "c", value_first=2.0, value_last=2.0),
        PodItem(3, 15_000, 2.0, 1, "d", value_first=NEG_INF),
        PodItem(4, 15_000, 2.0, 1, "e", value_last=NEG_INF, middle_allowed=False),
        PodItem(5, 15_000, 0.1, 0, "f", value_first=0.3),
        PodItem(6, 15_000, 0.2, 0, "g", value_last=0.1),
    ]
    for n in range(2, len(items) + 1):
        for subset in itertools.combinations(items, n):
            for max_ads in range(1, n + 1):
                both_paths(subset, PodConstraints(pod_duration_ms=120_000, max_ads=max_ads))


@pytest.mark.parametrize(
    ("a_first", "a_last", "b_first", "b_last", "c_value", "c_tier"),
    [
        (0.7, 0.2, 0.6, 0.1, 1.0, 2),
        (0.7, 0.9, 0.1, 0.3, 0.3, 2),
        (0.9, 1.1, 0.1, 0.3, 0.5, 3),
        (0.9, 0.6, 0.6, 0.3, 0.3, 2),
    ],
)
def test_float_ties_follow_the_dp(
    a_first: float, a_last: float, b_first: float, b_last: float, c_value: float, c_tier: int
) -> None:
    """a and b can only go first or last and tie either way in real arithmetic, but not in
    floating point before c is added, and do again after: the DP keeps the larger partial sum
    (it stores one value per cell), which is not simply the lower key first."""
    items = [
        PodItem(0, 15_000, 1.0, 1, "a", a_first, a_last, middle_allowed=False),
        PodItem(1, 15_000, 1.0, 1, "b", b_first, b_last, middle_allowed=False),
        PodItem(2, 15_000, c_value, c_tier, "c", NEG_INF, NEG_INF),
    ]
    both_paths(items, PodConstraints(pod_duration_ms=45_000, max_ads=3))
    # The same tie between two pods rather than two role assignments of one pod.
    twins = [*items, PodItem(3, 15_000, c_value, c_tier, "d", NEG_INF, NEG_INF)]
    both_paths(twins, PodConstraints(pod_duration_ms=45_000, max_ads=3))


@pytest.mark.parametrize(
    "spec",
    [
        [(0.2, 1, None, 0.6, True), (0.5, 2, None, 0.9, True), (2.3, 1, None, 0.1, True)],
        [(0.1, 2, None, 0.5, True), (0.6, 1, 2.3, None, True), (0.3, 1, None, 0.7, True)],
        [(0.9, 1, None, 0.2, False), (0.9, 2, None, 0.4, True), (1.1, 1, 0.5, 0.6, True)],
        [
            (0.2, 1, 0.7, None, True),
            (0.3, 1, None, 0.3, True),
            (0.9, 2, 0.2, 0.4, True),
            (0.4, 2, 0.9, None, False),
        ],
    ],
)
def test_float_ties_between_role_assignments(
    spec: list[tuple[float, int, float | None, float | None, bool]],
) -> None:
    """Role assignments whose values tie once rounded although their real values differ by an
    ulp or so: all of them are candidates for the DP's pick."""
    items = [
        PodItem(k, 15_000, value, tier, f"g{k}", first, last, middle)
        for k, (value, tier, first, last, middle) in enumerate(spec)
    ]
    both_paths(items, PodConstraints(pod_duration_ms=60_000, max_ads=len(items)))


def test_group_order_counts_ads_without_a_slot() -> None:
    """Groups are processed by their smallest key among eligible candidates, including one
    that fits no slot; between exact ties the earlier group wins."""
    c = PodConstraints(pod_duration_ms=30_000, max_ads=1)
    nowhere = PodItem(0, 15_000, 9.0, 1, "a", NEG_INF, NEG_INF, middle_allowed=False)
    tied = [PodItem(5, 15_000, 3.0, 1, "a"), PodItem(3, 15_000, 3.0, 1, "b")]
    assert [it.key for it in both_paths([nowhere, *tied], c).items] == [5]
    assert [it.key for it in both_paths(tied, c).items] == [3]
    too_long = PodItem(1, 45_000, 9.0, 1, "b")  # not eligible: does not count
    assert [it.key for it in both_paths([too_long, *tied], c).items] == [3]


# --- the pieces the search relies on ----------------------------------------------------------


def test_eligible_filter_is_eligible() -> None:
    rng = random.Random(3)
    for _ in range(300):
        items = realistic_items(rng, n=20) + [
            PodItem(100 + i, rng.randint(1, 70_000), 1.0, 1, "x") for i in range(20)
        ]
        c = PodConstraints(
            pod_duration_ms=rng.choice([0, 999, 1_000, 15_500, 30_000, 120_000]),
            max_ads=4,
            min_ad_duration_ms=rng.choice([None, 0, 15_000, 15_001]),
            max_ad_duration_ms=rng.choice([None, 14_999, 15_000, 30_000, 200_000]),
            required_durations_s=rng.choice([None, frozenset({15, 30}), frozenset({16})]),
        )
        assert pod_module._eligible(items, c) == [it for it in items if eligible(it, c)]


def _scale(items: Sequence[PodItem]) -> float:
    values = [
        v
        for it in items
        for v in (it.value, it.value_first, it.value_last)
        if v is not None and math.isfinite(v)
    ]
    m = max(values, default=0.0)
    return m * 1.0000001 if m > 0 else 1.0


def options_by_the_rules(
    items: Sequence[PodItem], c: PodConstraints
) -> list[list[tuple[int, int, float, int]]]:
    """The DP's options after both dominance tests, written out from the documented rules:
    groups by smallest key, options ``(role, seconds, gain, key)`` by key then role."""
    scale = _scale(items)
    cands = sorted((it for it in items if eligible(it, c)), key=lambda it: it.key)
    groups: dict[str, list[tuple[int, int, float, int]]] = {}
    for it in cands:
        opts = groups.setdefault(it.group, [])
        w = math.ceil(it.duration_ms / 1000)
        slot = (
            it.value if it.value_first is None else it.value_first,
            it.value if it.value_last is None else it.value_last,
            it.value if it.middle_allowed else NEG_INF,
        )
        for role, v in enumerate(slot):
            if v != NEG_INF and c.max_ads >= role + 1:
                opts.append((role, w, spec_gain(it.tier, v, scale, c.max_ads), it.key))
    # Within a group: dropped if a same-role option before it by (seconds, -gain, key) has no
    # more seconds and at least its gain.
    kept = [
        [
            o
            for o in opts
            if not any(
                p[0] == o[0]
                and p[1] <= o[1]
                and p[2] >= o[2]
                and (p[1], -p[2], p[3]) < (o[1], -o[2], o[3])
                for p in opts
            )
        ]
        for opts in groups.values()
    ]
    kept = [opts for opts in kept if opts]
    max_pod = min(c.max_ads, len(kept))
    # Across groups: dropped if max_pod other groups have a same-role option with no more
    # seconds and a strictly higher gain.
    out = []
    for j, opts in enumerate(kept):
        survivors = [
            o
            for o in opts
            if sum(
                any(p[0] == o[0] and p[1] <= o[1] and p[2] > o[2] for p in other)
                for i, other in enumerate(kept)
                if i != j
            )
            < max_pod
        ]
        if survivors:
            out.append(survivors)
    return out


def dp_options(
    items: Sequence[PodItem], c: PodConstraints
) -> list[list[tuple[int, int, float, int]]]:
    bases = pod_module.tier_bases(c.max_ads)
    cands = sorted(pod_module._eligible(items, c), key=lambda it: it.key)
    scales = pod_module._tier_scales(items, c.max_ads)
    groups = pod_module._group_options(cands, bases, scales, c.max_ads)
    groups = pod_module._prune_dominated(groups, min(c.max_ads, len(groups)))
    return [[(role, w, g, it.key) for role, w, g, it in opts] for opts in groups]


def search_options(items: Sequence[PodItem], c: PodConstraints) -> set[tuple[int, int, float, int]]:
    """Every (role, seconds, gain, key) the search's per-candidate tests keep."""
    bases = pod_module.tier_bases(c.max_ads)
    scales = pod_module._tier_scales(items, c.max_ads)
    light = []
    for it in pod_module._eligible(items, c):
        gains = pod_module._role_gains(it, bases, scales, c.max_ads)
        if max(gains) != NEG_INF:
            light.append((max(gains), it, gains, pod_module.capacity_seconds(it.duration_ms)))
    light.sort(key=lambda e: e[0], reverse=True)
    members: dict[str, list[tuple[float, PodItem, tuple[float, float, float], int]]] = {}
    for e in light:
        members.setdefault(e[1].group, []).append(e)
    neg_tops = [-g[0][0] for g in members.values()]
    max_pod = min(c.max_ads, len(members))
    out = set()
    rivals = pod_module._Rivals(light, max_pod)
    for e in light:
        gains = pod_module._kept_gains(e, members[e[1].group], neg_tops, rivals)
        w = math.ceil(e[1].duration_ms / 1000)
        out |= {(role, w, g, e[1].key) for role, g in enumerate(gains) if g != NEG_INF}
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=tied_items(max_size=30), c=break_rules())
def test_pruning_follows_the_rules(items: list[PodItem], c: PodConstraints) -> None:
    expected = options_by_the_rules(items, c)
    assert dp_options(items, c) == expected
    assert search_options(items, c) == {o for opts in expected for o in opts}
