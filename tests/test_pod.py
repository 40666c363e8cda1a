"""Pod building: hand-written cases plus a brute-force oracle checked with hypothesis.

``build_pod`` has two exact paths, a branch and bound (the "search") and the dynamic programme
it falls back to (the "dp"); the oracle tests run each of them on its own (``pod_path``).
``tests/test_pod_fast.py`` checks that both always return the same pod.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vastserver.pipeline import pod as pod_module
from vastserver.pipeline.pod import (
    HOUSE_WEIGHT,
    TIER_BASE,
    PodConstraints,
    PodItem,
    PodResult,
    SlotRule,
    build_pod,
    capacity_seconds,
    eligible,
    house_weight,
    tier_bases,
)

NEG_INF = float("-inf")
_T = TypeVar("_T")
PATHS = ("search", "dp")


def _no_dp(*args: Any) -> None:
    raise AssertionError("the search should have decided this pod")


@contextlib.contextmanager
def pod_path(path: str) -> Iterator[None]:
    """Force ``build_pod`` down one path: "search" (never the DP, whatever the pod size or
    work), "dp" (never the search) or "default"."""
    with pytest.MonkeyPatch.context() as m:
        if path == "search":
            m.setattr(pod_module, "_SEARCH_MAX_ADS", 10**6)
            m.setattr(pod_module, "_SEARCH_BUDGET", 10**12)
            m.setattr(pod_module, "_dp_pod", _no_dp)
        elif path == "dp":
            m.setattr(pod_module, "_SEARCH_MAX_ADS", 0)
        else:
            assert path == "default"
        yield


def item(
    key: int,
    seconds: float,
    value: float,
    *,
    tier: int = 1,
    group: str | None = None,
    first: float | None = None,
    last: float | None = None,
    middle: bool = True,
) -> PodItem:
    return PodItem(
        key=key,
        duration_ms=round(seconds * 1000),
        value=value,
        tier=tier,
        group=f"g{key}" if group is None else group,
        value_first=first,
        value_last=last,
        middle_allowed=middle,
    )


def keys(r: PodResult) -> list[int]:
    return [it.key for it in r.items]


# --- brute-force oracle (independent of the implementation) ------------------------------------


def _scale(items: Sequence[PodItem]) -> float:
    vals = [
        v
        for it in items
        for v in (
            it.value,
            it.value if it.value_first is None else it.value_first,
            it.value if it.value_last is None else it.value_last,
        )
        if math.isfinite(v)
    ]
    m = max(vals, default=0.0)
    return m * 1.0000001 if m > 0 else 1.0


def _item_ok(it: PodItem, c: PodConstraints) -> bool:
    d = it.duration_ms
    if c.min_ad_duration_ms is not None and d < c.min_ad_duration_ms:
        return False
    if c.max_ad_duration_ms is not None and d > c.max_ad_duration_ms:
        return False
    if c.required_durations_s is not None:
        rounded = math.floor(d / 1000 + 0.5)
        if rounded not in c.required_durations_s:
            return False
    return True


def _slot_values(ordered: Sequence[PodItem]) -> list[float] | None:
    """Realised values of a pod in play order, or None if a slot permission is violated."""
    out: list[float] = []
    n = len(ordered)
    for i, it in enumerate(ordered):
        if i == 0:
            v = it.value if it.value_first is None else it.value_first
        elif i == n - 1:
            v = it.value if it.value_last is None else it.value_last
        else:
            v = it.value if it.middle_allowed else NEG_INF
        if v == NEG_INF:
            return None
        out.append(v)
    return out


def _set_ok(subset: Sequence[PodItem], c: PodConstraints) -> bool:
    if not 1 <= len(subset) <= c.max_ads:
        return False
    if len({it.group for it in subset}) != len(subset):
        return False
    if not all(_item_ok(it, c) for it in subset):
        return False
    ceil_s = sum(math.ceil(it.duration_ms / 1000) for it in subset)
    ms = sum(it.duration_ms for it in subset)
    return ceil_s <= -(-c.pod_duration_ms // 1000) and ms <= c.pod_duration_ms


def _free(it: PodItem) -> bool:
    return it.value_first is None and it.value_last is None and it.middle_allowed


def spec_bases(max_ads: int) -> tuple[float, float, float, float]:
    """The tier bases as the module docstring states them: a standard ad adds 0.001; for pods
    of up to n = max(max_ads, 10) ads guaranteed adds G = floor(1.001 n) + 1 and sponsorship
    S = n (G + 1) + 1."""
    n = max(max_ads, 10)
    g = math.floor(n * 1.001) + 1
    return (0.0, 0.001, float(g), float(n * (g + 1) + 1))


def spec_gain(tier: int, v: float, scale: float, max_ads: int) -> float:
    """One ad's gain: its tier's base plus its normalised value, a house ad's weighted by
    0.001 / max(max_ads, 10) (divided by ``scale`` over that weight, as the spec says)."""
    if tier == 0:
        return v / (scale / (0.001 / max(max_ads, 10)))
    return spec_bases(max_ads)[tier] + v / scale


def pod_score(
    ordered: Sequence[PodItem], all_items: Sequence[PodItem], max_ads: int = 10
) -> float | None:
    """Score of an ordered pod (None if a slot is not allowed), as in the spec."""
    vals = _slot_values(ordered)
    if vals is None:
        return None
    scale = _scale(all_items)
    return sum(spec_gain(it.tier, v, scale, max_ads) for it, v in zip(ordered, vals, strict=True))


def oracle(items: Sequence[PodItem], c: PodConstraints) -> float | None:
    """Best score over every valid subset and every first/last assignment (None: nothing fits)."""
    scores = [pod_score(o, items, c.max_ads) for o in _valid_pods(items, c)]
    return max([x for x in scores if x is not None], default=None)


def _valid_pods(items: Sequence[PodItem], c: PodConstraints) -> Iterator[list[PodItem]]:
    """Every valid pod in play order: each valid subset with each first/last assignment that
    its slot permissions allow."""
    for n in range(1, min(c.max_ads, len(items)) + 1):
        for subset in itertools.combinations(items, n):
            if not _set_ok(subset, c):
                continue
            orders = (
                [list(subset)]
                if n == 1
                else [
                    [subset[f], *(subset[i] for i in range(n) if i not in (f, la)), subset[la]]
                    for f, la in itertools.permutations(range(n), 2)
                ]
            )
            for o in orders:
                if _slot_values(o) is not None:
                    yield o


def assert_valid(r: PodResult, items: Sequence[PodItem], c: PodConstraints) -> None:
    pod = r.items
    if not pod:
        assert r == PodResult((), (0.0,) * 6, 0, 0.0)
        return
    assert _set_ok(pod, c)
    assert all(it in items for it in pod)
    vals = _slot_values(pod)
    assert vals is not None, "returned order violates a slot permission"
    mids = list(pod[1:-1])
    assert mids == sorted(mids, key=lambda it: (-it.value, it.key))
    # Position-free ads play in descending value order at the edges too.
    free = [(i, it) for i, it in enumerate(pod) if _free(it)]
    for (_, a), (_, b) in itertools.pairwise(free):
        assert (-a.value, a.key) <= (-b.value, b.key), "free ads out of value order"
    assert r.total_duration_ms == sum(it.duration_ms for it in pod)
    assert r.value == pytest.approx(sum(vals), rel=1e-12, abs=1e-12)
    score = pod_score(pod, items, c.max_ads)
    assert score is not None
    assert r.objective[0] == pytest.approx(score, rel=0, abs=1e-9)
    tiers = [it.tier for it in pod]
    assert r.objective[1:5] == tuple(float(tiers.count(t)) for t in (3, 2, 1, 0))


def assert_optimal(r: PodResult, best: float, c: PodConstraints) -> None:
    """``r`` scores the oracle's ``best``; or, said inexact (only a fractional break whose
    lenient pod overran it), no more than it."""
    if r.exact:
        assert r.objective[0] == pytest.approx(best, rel=0, abs=1e-9)
    else:
        assert c.pod_duration_ms % 1000, "a whole-second break's pod is exact"
        assert r.objective[0] <= best + 1e-9


def assert_objective_promises(r: PodResult, items: Sequence[PodItem], c: PodConstraints) -> None:
    """The invariants the scalar score stands for, checked against every valid pod: more
    sponsorships, then more guaranteed ads always win; then paid value, plus 0.001 per
    standard ad, decides up to the house ads' part (under 0.001 in all); a pod with a
    standard ad beats one with the same higher-tier ads (at the same slot values) and only
    house ads besides."""
    if not r.items:
        return
    scale = _scale(items)

    def facts(
        pod: Sequence[PodItem],
    ) -> tuple[tuple[int, int], float, int, frozenset[tuple[int, float]]]:
        vals = _slot_values(pod)
        assert vals is not None
        paid = sum(v / scale for it, v in zip(pod, vals, strict=True) if it.tier > 0)
        n1 = sum(it.tier == 1 for it in pod)
        high = frozenset((it.key, v) for it, v in zip(pod, vals, strict=True) if it.tier >= 2)
        return ((sum(it.tier == 3 for it in pod), sum(it.tier == 2 for it in pod)), paid, n1, high)

    counts, paid, n1, high = facts(r.items)
    for pod in _valid_pods(items, c):
        p_counts, p_paid, p_n1, p_high = facts(pod)
        assert p_counts <= counts
        if p_counts == counts:  # house ads add less than 0.001 in all
            assert p_paid + 0.001 * p_n1 < paid + 0.001 * n1 + 0.001 + 1e-9
        if p_high == high and p_n1:
            assert n1, "house ads won over a standard ad"


# --- property test -----------------------------------------------------------------------------

_VALUES = st.one_of(
    st.sampled_from([0.0, 1.0, 2.5, 10.0]),
    st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False),
)
_SLOT_VALUES = st.one_of(st.none(), st.none(), st.just(NEG_INF), _VALUES, _VALUES)
_DURATIONS = st.one_of(
    st.sampled_from([5000, 6000, 10000, 15000, 15200, 15499, 15500, 20000, 29999, 30000, 30001]),
    st.integers(min_value=1, max_value=40000),
)


def _mostly_none(s: st.SearchStrategy[_T]) -> st.SearchStrategy[_T | None]:
    return st.one_of(st.none(), st.none(), st.none(), s)


@st.composite
def pod_items(draw: st.DrawFn, max_size: int = 8) -> list[PodItem]:
    n = draw(st.integers(min_value=0, max_value=max_size) | st.just(max_size))
    ks = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n, unique=True))
    return [
        PodItem(
            key=k,
            duration_ms=draw(_DURATIONS),
            value=draw(_VALUES),
            tier=draw(st.integers(0, 3)),
            group=draw(st.sampled_from("abcdefg")),
            value_first=draw(_SLOT_VALUES),
            value_last=draw(_SLOT_VALUES),
            middle_allowed=draw(st.sampled_from([True, True, True, False])),
        )
        for k in ks
    ]


@st.composite
def constraints(draw: st.DrawFn) -> PodConstraints:
    return PodConstraints(
        pod_duration_ms=draw(
            st.one_of(
                st.sampled_from([0, 30000, 30500, 60000, 90000, 120000, 150000]),
                st.integers(15000, 180000),
            )
        ),
        max_ads=draw(st.integers(1, 10)),
        min_ad_duration_ms=draw(_mostly_none(st.integers(0, 15000))),
        max_ad_duration_ms=draw(_mostly_none(st.integers(10000, 40000))),
        required_durations_s=draw(
            _mostly_none(
                st.frozensets(
                    st.sampled_from([5, 6, 10, 15, 16, 20, 30, 31, 45]), min_size=2, max_size=6
                )
            )
        ),
    )


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=pod_items(), c=constraints())
def test_matches_brute_force_oracle(path: str, items: list[PodItem], c: PodConstraints) -> None:
    with pod_path(path):
        r = build_pod(items, c)
        event(f"pod size {len(r.items)}")
        assert_valid(r, items, c)
        best = oracle(items, c)
        if best is None:
            assert r.items == ()
        else:
            assert r.items, "a valid pod exists but none was returned"
            assert_optimal(r, best, c)
        if r.exact:
            assert_objective_promises(r, items, c)
        # Deterministic and independent of input order.
        assert build_pod(items, c) == r
        assert build_pod(list(reversed(items)), c) == r


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=pod_items(max_size=14), c=constraints())
def test_matches_oracle_bigger_pools_small_pods(
    path: str, items: list[PodItem], c: PodConstraints
) -> None:
    c = PodConstraints(
        pod_duration_ms=c.pod_duration_ms,
        max_ads=min(c.max_ads, 4),
        min_ad_duration_ms=c.min_ad_duration_ms,
        max_ad_duration_ms=c.max_ad_duration_ms,
        required_durations_s=c.required_durations_s,
    )
    with pod_path(path):
        r = build_pod(items, c)
    assert_valid(r, items, c)
    best = oracle(items, c)
    assert (best is None) == (r.items == ())
    if best is not None:
        assert_optimal(r, best, c)


@settings(max_examples=100, deadline=None)
@given(items=pod_items(max_size=30), c=constraints())
def test_dominance_pruning_changes_nothing(items: list[PodItem], c: PodConstraints) -> None:
    # Only the DP prunes the whole option list (the search asks the same tests per candidate,
    # which tests/test_pod_fast.py checks).
    with pod_path("dp"):
        r = build_pod(items, c)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(pod_module, "_prune_dominated", lambda groups, max_pod: groups)
            unpruned = build_pod(items, c)
    assert r == unpruned


def test_large_random_pool_is_valid_and_deterministic() -> None:
    rng = random.Random(7)
    items = [
        PodItem(
            key=i,
            duration_ms=rng.choice([6, 10, 15, 15, 30, 30, 60]) * 1000 + rng.choice([0, 0, 250]),
            value=rng.uniform(0, 30),
            tier=rng.choice([0, 1, 1, 1, 2, 3]),
            group=f"g{rng.randrange(120)}",
            value_first=rng.choice([None, None, None, NEG_INF, 40.0]),
            value_last=rng.choice([None, None, None, NEG_INF]),
            middle_allowed=rng.random() > 0.1,
        )
        for i in range(200)
    ]
    c = PodConstraints(pod_duration_ms=300_000, max_ads=8)
    r = build_pod(items, c)
    assert_valid(r, items, c)
    assert 1 <= len(r.items) <= 8
    shuffled = items[:]
    rng.shuffle(shuffled)
    assert build_pod(shuffled, c) == r
    with pod_path("dp"):
        assert build_pod(shuffled, c) == r
    c4 = PodConstraints(pod_duration_ms=120_000, max_ads=4)
    with pod_path("search"):
        r4 = build_pod(items, c4)
    assert_valid(r4, items, c4)
    with pod_path("dp"):
        assert build_pod(shuffled, c4) == r4


# --- hand-written cases --------------------------------------------------------------------------


def test_tiers_beat_price() -> None:
    sponsor = item(0, 30, 1.0, tier=2)
    cheap_many = [item(k, 10, 100.0, tier=1) for k in (1, 2, 3)]
    r = build_pod([sponsor, *cheap_many], PodConstraints(pod_duration_ms=30_000, max_ads=4))
    assert keys(r) == [0]
    assert r.objective[1:5] == (0.0, 1.0, 0.0, 0.0)


def test_one_higher_tier_item_beats_ten_lower() -> None:
    # The zero-value tier-3 ad fills the whole break; ten pricey tier-2 ads would too.
    items = [item(0, 100, 0.0, tier=3)] + [item(k, 10, 50.0, tier=2) for k in range(1, 11)]
    r = build_pod(items, PodConstraints(pod_duration_ms=100_000, max_ads=10))
    assert keys(r) == [0]
    # With room for both, the tier-3 ad is kept and the rest is filled by value.
    r = build_pod(items, PodConstraints(pod_duration_ms=190_000, max_ads=10))
    assert 0 in keys(r)
    assert len(r.items) == 10


def test_tier_dominance_beyond_ten_ads() -> None:
    assert tier_bases(10) == TIER_BASE == spec_bases(10) == (0.0, 0.001, 11.0, 121.0)
    assert house_weight(10) == HOUSE_WEIGHT == 0.0001
    assert tier_bases(12) == spec_bases(12) == (0.0, 0.001, 13.0, 169.0)
    assert house_weight(12) == 0.001 / 12
    assert tier_bases(20) == spec_bases(20) == (0.0, 0.001, 21.0, 441.0)
    guaranteed = item(0, 120, 0.0, tier=2)
    standard = [item(k, 10, 100.0, tier=1) for k in range(1, 13)]
    r = build_pod([guaranteed, *standard], PodConstraints(pod_duration_ms=120_000, max_ads=12))
    assert keys(r) == [0]


def test_standard_ads_rank_by_value_not_by_count() -> None:
    # Two standard :15s at $5 and $6 CPM against one standard :30 at $60: the :30 earns more.
    items = [item(0, 30, 60.0), item(1, 15, 5.0), item(2, 15, 6.0)]
    for path in PATHS:
        with pod_path(path):
            r = build_pod(items, PodConstraints(pod_duration_ms=30_000, max_ads=2))
        assert keys(r) == [0], path
    # With value to spare, more ads still win: 2 x $40 > $60.
    items = [item(0, 30, 60.0), item(1, 15, 40.0), item(2, 15, 40.0)]
    assert sorted(keys(build_pod(items, PodConstraints(30_000, 2)))) == [1, 2]
    # Equal value: the extra standard ad's base tips it to the pod with more ads.
    items = [item(0, 30, 10.0), item(1, 15, 5.0), item(2, 15, 5.0)]
    assert sorted(keys(build_pod(items, PodConstraints(30_000, 2)))) == [1, 2]


def test_guaranteed_and_sponsorship_still_count_ads_first() -> None:
    for tier in (2, 3):
        items = [
            item(0, 30, 60.0, tier=tier),
            item(1, 15, 1.0, tier=tier),
            item(2, 15, 0.0, tier=tier),
        ]
        assert sorted(keys(build_pod(items, PodConstraints(30_000, 2)))) == [1, 2]
    # One guaranteed ad beats a full pod of standard ads at any price, at any pod size, and
    # one sponsorship a full pod of guaranteed ones.
    for n in (2, 10, 20):
        for low, high in ((1, 2), (2, 3)):
            items = [item(0, 30, 0.0, tier=high)]
            items += [item(k, 30, 100.0, tier=low) for k in range(1, n + 1)]
            r = build_pod(items, PodConstraints(30_000 * n, n))
            assert 0 in keys(r)
            assert r.objective[4 - high] == 1.0 and r.objective[4 - low] == float(n - 1)


def test_a_paid_ad_beats_any_house_ads_and_house_fills_the_rest() -> None:
    # A zero-value standard ad beats two house ads of any value in the same time...
    items = [item(0, 30, 0.0), item(1, 15, 100.0, tier=0), item(2, 15, 100.0, tier=0)]
    assert keys(build_pod(items, PodConstraints(30_000, 2))) == [0]
    # ... also next to the same guaranteed ad, at the largest pod size...
    items = [item(0, 30, 50.0, tier=2), item(1, 30, 0.0)]
    items += [item(k, 1, 100.0, tier=0) for k in range(2, 22)]
    r = build_pod(items, PodConstraints(60_000, 20))
    assert 0 in keys(r) and 1 in keys(r)
    # ... and house ads still fill the time the paid ones leave.
    items = [item(0, 15, 1.0), item(1, 15, 0.5, tier=0), item(2, 30, 100.0, tier=0)]
    r = build_pod(items, PodConstraints(30_000, 2))
    assert sorted(keys(r)) == [0, 1]
    assert r.objective[1:5] == (0.0, 0.0, 1.0, 1.0)


def test_higher_value_wins_within_tier() -> None:
    r = build_pod(
        [item(0, 30, 5.0), item(1, 30, 9.0), item(2, 30, 7.0)],
        PodConstraints(pod_duration_ms=30_000, max_ads=3),
    )
    assert keys(r) == [1]
    assert r.value == 9.0


def test_separation_one_item_per_group() -> None:
    items = [item(0, 15, 5.0, group="auto"), item(1, 15, 8.0, group="auto"), item(2, 15, 1.0)]
    r = build_pod(items, PodConstraints(pod_duration_ms=60_000, max_ads=4))
    assert sorted(keys(r)) == [1, 2]


# --- overlapping groups (ads with several competitive labels) -----------------------------------

# Groups name their keys, space-separated, as ``Candidate.group`` does; a one-key group's only
# key is its name.
_OVERLAPPING = ("a", "b", "c", "a b", "b c", "a c", "a b c", "c d")


def _keys_of(group: str) -> frozenset[str]:
    return frozenset(group.split())


def _overlap_keys(items: Sequence[PodItem]) -> dict[str, frozenset[str]]:
    return {it.group: _keys_of(it.group) for it in items if " " in it.group}


def _keys_apart(pod: Sequence[PodItem]) -> bool:
    seen: set[str] = set()
    for it in pod:
        ks = _keys_of(it.group)
        if not seen.isdisjoint(ks):
            return False
        seen |= ks
    return True


@st.composite
def overlapping_items(draw: st.DrawFn, max_size: int = 8) -> list[PodItem]:
    return [
        replace(it, group=draw(st.sampled_from(_OVERLAPPING)))
        for it in draw(pod_items(max_size=max_size))
    ]


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=overlapping_items(), c=constraints())
def test_overlapping_groups_match_brute_force_oracle(
    path: str, items: list[PodItem], c: PodConstraints
) -> None:
    """Groups sharing keys: the pod holds no two items sharing a key, and it is the best such
    pod (the oracle: every valid pod whose items share no key)."""
    keys_of = _overlap_keys(items)
    with pod_path(path), pytest.MonkeyPatch.context() as m:
        m.setattr(pod_module, "_SPLIT_DEPTH", len(_OVERLAPPING))  # never merged: exact
        r = build_pod(items, c, keys_of)
        assert r.exact or c.pod_duration_ms % 1000
        assert_valid(r, items, c)
        assert _keys_apart(r.items), "two ads sharing a key in one pod"
        scores = [pod_score(o, items, c.max_ads) for o in _valid_pods(items, c) if _keys_apart(o)]
        best = max([x for x in scores if x is not None], default=None)
        if best is None:
            assert r.items == ()
        else:
            assert_optimal(r, best, c)
        assert build_pod(list(reversed(items)), c, keys_of) == r


def test_overlapping_groups_share_a_pod_when_their_keys_differ() -> None:
    """'a b' shares a key with 'a' and with 'b', not with 'c'; 'a' and 'b' may share a pod.
    Without the keys the groups are a partition and all four ads fit."""
    items = [
        item(0, 15, 9.0, group="a b"),
        item(1, 15, 5.0, group="a"),
        item(2, 15, 5.0, group="b"),
        item(3, 15, 1.0, group="c"),
    ]
    c = PodConstraints(pod_duration_ms=60_000, max_ads=4)
    assert sorted(keys(build_pod(items, c))) == [0, 1, 2, 3]
    r = build_pod(items, c, _overlap_keys(items))
    assert sorted(keys(r)) == [1, 2, 3]  # 5 + 5 beat 9
    items[0] = item(0, 15, 11.0, group="a b")
    assert sorted(keys(build_pod(items, c, _overlap_keys(items)))) == [0, 3]


def test_overlapping_groups_in_a_structured_pod() -> None:
    items = [item(0, 30, 9.0, group="a b"), item(1, 15, 6.0, group="a"), item(2, 15, 1.0)]
    c = PodConstraints(
        pod_duration_ms=60_000,
        max_ads=2,
        slots=(SlotRule(max_ms=30_000), SlotRule(max_ms=30_000)),
    )
    r = build_pod(items, c, _overlap_keys(items))
    assert sorted(keys(r)) == [0, 2]
    assert _keys_apart(r.items)


def test_overlapping_groups_past_the_split_depth_are_merged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No splits left: groups sharing keys are merged, the pod stays valid but is not claimed
    exact ('a' and 'b' could share a pod, merged they cannot)."""
    monkeypatch.setattr(pod_module, "_SPLIT_DEPTH", 0)
    items = [
        item(0, 15, 9.0, group="a b"),
        item(1, 15, 5.0, group="a"),
        item(2, 15, 5.0, group="b"),
        item(3, 15, 1.0, group="c"),
    ]
    r = build_pod(items, PodConstraints(pod_duration_ms=60_000, max_ads=4), _overlap_keys(items))
    assert not r.exact
    assert _keys_apart(r.items)
    assert sorted(keys(r)) == [0, 3]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("labelled", [0, 1])
def test_overlapping_groups_break_ties_by_the_tie_rule(path: str, labelled: int) -> None:
    """Two equal ads of one advertiser, one with a label of its own: the lower key wins, as
    without the label, whichever carries it (rotation draws the keys; the branch that keeps
    the labelled group, met first, used to win every tie)."""
    c = PodConstraints(pod_duration_ms=120_000, max_ads=4)
    groups = {labelled: "a p", 1 - labelled: "a"}
    items = [item(k, 30, 10.0, group=groups[k]) for k in (0, 1)] + [item(2, 30, 5.0, group="b")]
    plain = [replace(it, group="a") if it.key < 2 else it for it in items]
    with pod_path(path):
        r = build_pod(items, c, _overlap_keys(items))
        assert sorted(keys(r)) == [0, 2]
        assert keys(r) == keys(build_pod(plain, c))
        # Fewer seconds still come before the keys: a :15 of the same value beats both.
        items[1 - labelled] = item(1 - labelled, 15, 10.0, group=groups[1 - labelled])
        assert sorted(keys(build_pod(items, c, _overlap_keys(items)))) == [1 - labelled, 2]


@pytest.mark.parametrize("labelled", [0, 1])
def test_overlapping_groups_break_ties_by_the_tie_rule_in_a_structured_pod(labelled: int) -> None:
    """The same in a structured pod, whose tie rule ranks ads by gain, then key."""
    c = PodConstraints(
        pod_duration_ms=60_000, max_ads=2, slots=(SlotRule(max_ms=30_000), SlotRule(max_ms=30_000))
    )
    groups = {labelled: "a p", 1 - labelled: "a"}
    items = [item(k, 30, 10.0, group=groups[k]) for k in (0, 1)] + [item(2, 30, 5.0, group="b")]
    plain = [replace(it, group="a") if it.key < 2 else it for it in items]
    r = build_pod(items, c, _overlap_keys(items))
    assert sorted(keys(r)) == [0, 2]
    want = build_pod(plain, c)
    assert (keys(r), r.slots) == (keys(want), want.slots)


def test_required_durations_round_to_nearest_second() -> None:
    c = PodConstraints(pod_duration_ms=120_000, max_ads=4, required_durations_s=frozenset({15}))
    assert eligible(item(0, 15.4, 1.0), c)
    assert eligible(item(0, 14.5, 1.0), c)
    assert not eligible(item(0, 15.5, 1.0), c)  # rounds to 16
    assert not eligible(item(0, 30, 1.0), c)
    items = [item(0, 15.0, 1.0), item(1, 30, 100.0), item(2, 15.5, 50.0), item(3, 14.8, 2.0)]
    r = build_pod(items, c)
    assert sorted(keys(r)) == [0, 3]


def test_min_and_max_ad_duration() -> None:
    c = PodConstraints(
        pod_duration_ms=120_000, max_ads=4, min_ad_duration_ms=10_000, max_ad_duration_ms=30_000
    )
    assert not eligible(item(0, 6, 1.0), c)
    assert eligible(item(0, 10, 1.0), c)
    assert eligible(item(0, 30, 1.0), c)
    assert not eligible(item(0, 30.001, 1.0), c)
    items = [item(0, 6, 100.0), item(1, 10, 1.0), item(2, 45, 100.0), item(3, 30, 2.0)]
    assert sorted(keys(build_pod(items, c))) == [1, 3]


def test_eligible_compares_exact_ms() -> None:
    c = PodConstraints(pod_duration_ms=30_500, max_ads=2)
    assert eligible(item(0, 30, 1.0), c)
    assert eligible(item(0, 30.2, 1.0), c)  # 30.2 s fits a 30.5 s break (31 lenient seconds)
    assert eligible(item(0, 30.5, 1.0), c)
    assert not eligible(item(0, 30.501, 1.0), c)
    assert not eligible(item(0, 30.001, 1.0), PodConstraints(pod_duration_ms=30_000, max_ads=2))
    assert capacity_seconds(30_000) == 30
    assert capacity_seconds(30_001) == 31


# --- fractional breaks (SCTE-35 avails: 29.97, 59.94 s...) -------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_ntsc_creative_fills_an_ntsc_break(path: str) -> None:
    with pod_path(path):
        r = build_pod([item(0, 29.97, 1.0)], PodConstraints(pod_duration_ms=29_970, max_ads=4))
    assert keys(r) == [0] and r.exact and r.total_duration_ms == 29_970


@pytest.mark.parametrize("path", PATHS)
def test_two_half_ntsc_creatives_fill_an_ntsc_break(path: str) -> None:
    items = [item(0, 14.985, 1.0), item(1, 14.985, 1.0), item(2, 14, 0.5)]
    with pod_path(path):
        r = build_pod(items, PodConstraints(pod_duration_ms=29_970, max_ads=4))
    assert sorted(keys(r)) == [0, 1] and r.exact and r.total_duration_ms == 29_970


@pytest.mark.parametrize("path", PATHS)
def test_fractional_break_never_overrun(path: str) -> None:
    # 15.4 + 15.0 = 30.4 s > 30.2 s: both take 16 + 15 = 31 lenient seconds, but not both fit.
    items = [item(0, 15.4, 1.0), item(1, 15.0, 1.0)]
    c = PodConstraints(pod_duration_ms=30_200, max_ads=2)
    with pod_path(path):
        r = build_pod(items, c)
    assert len(r.items) == 1 and r.total_duration_ms <= 30_200
    assert not r.exact  # the strict fallback (module docstring, "Fractional breaks")
    slotted = build_pod(items, replace(c, slots=(SlotRule(), SlotRule())))
    assert len(slotted.items) == 1 and slotted.total_duration_ms <= 30_200


def test_fractional_fallback_is_said_inexact() -> None:
    # 15.4 + 15 (worth most) overruns 30.2 s; 15.1 + 15 = 30.1 s fits but takes 31 seconds,
    # more than the strict 30: the fallback misses it, one ad, and says so (module docstring).
    items = [item(0, 15.4, 9.0), item(1, 15.0, 5.0), item(2, 15.1, 4.0)]
    r = build_pod(items, PodConstraints(pod_duration_ms=30_200, max_ads=2))
    assert keys(r) == [0] and not r.exact
    assert oracle(items, PodConstraints(pod_duration_ms=30_200, max_ads=2)) > r.objective[0]


def test_whole_second_break_unchanged_by_fractional_rule() -> None:
    # A whole-second break keeps the whole-second rule: 15.2 + 14.8 = 30.0 s takes 31 s.
    items = [item(0, 15.2, 1.0), item(1, 14.8, 1.0)]
    r = build_pod(items, PodConstraints(pod_duration_ms=30_000, max_ads=2))
    assert len(r.items) == 1 and r.exact


def _exact_ms_oracle(items: Sequence[PodItem], c: PodConstraints) -> float | None:
    """The best score over every pod whose exact ms fit (no seconds rule at all)."""
    best: float | None = None
    for n in range(1, min(c.max_ads, len(items)) + 1):
        for subset in itertools.combinations(items, n):
            if sum(it.duration_ms for it in subset) > c.pod_duration_ms:
                continue
            if len({it.group for it in subset}) != n:
                continue
            for o in itertools.permutations(subset):
                sc = pod_score(list(o), items, c.max_ads)
                if sc is not None and (best is None or sc > best):
                    best = sc
    return best


@pytest.mark.parametrize("path", PATHS)
def test_fractional_breaks_match_brute_force(path: str) -> None:
    """Small random instances with NTSC-like fractional durations: the pod never exceeds the
    break, equals the oracle (ceil seconds within the break's seconds rounded up, exact ms
    within its ms) when said exact, and one-ad pods are also best by exact ms alone (an ad
    no longer than the break fits its seconds rounded up)."""
    rng = random.Random(2029)
    durations = [14_985, 15_000, 29_970, 30_000, 14_500, 15_400, 10_010, 20_020, 5_005, 6_000]
    breaks = [29_970, 30_200, 30_500, 44_955, 59_940, 60_000, 14_985, 45_500]
    inexact = 0
    with pod_path(path):
        for _ in range(400):
            c = PodConstraints(pod_duration_ms=rng.choice(breaks), max_ads=rng.randint(1, 4))
            items = [
                PodItem(
                    key=k,
                    duration_ms=rng.choice(durations),
                    value=rng.choice([0.0, 1.0, 2.0, 5.0, rng.uniform(0, 10)]),
                    tier=rng.choice([0, 1, 1, 1, 2]),
                    group=rng.choice("abcdef"),
                )
                for k in range(rng.randint(0, 7))
            ]
            r = build_pod(items, c)
            assert_valid(r, items, c)
            assert r.total_duration_ms <= c.pod_duration_ms
            best = oracle(items, c)
            assert (best is None) == (r.items == ())
            if best is not None:
                assert_optimal(r, best, c)
            inexact += not r.exact
            if c.max_ads == 1 and best is not None:
                assert r.exact
                assert best == pytest.approx(_exact_ms_oracle(items, c), rel=0, abs=1e-9)
    assert inexact < 40  # the fallback is the rare case


def test_first_and_last_preferences_set_the_order() -> None:
    opener = item(0, 10, 5.0, first=20.0)
    closer = item(1, 10, 5.0, last=20.0)
    mid_hi = item(2, 10, 10.0)
    mid_lo = item(3, 10, 9.0)
    r = build_pod(
        [mid_lo, closer, mid_hi, opener], PodConstraints(pod_duration_ms=60_000, max_ads=4)
    )
    assert keys(r) == [0, 2, 3, 1]
    assert r.value == 20.0 + 10.0 + 9.0 + 20.0


def test_slot_restrictions() -> None:
    only_last = item(0, 10, 10.0, first=NEG_INF, middle=False)
    only_first = item(1, 10, 1.0, last=NEG_INF, middle=False)
    anywhere = item(2, 10, 5.0)
    c = PodConstraints(pod_duration_ms=60_000, max_ads=3)
    assert keys(build_pod([only_last, only_first, anywhere], c)) == [1, 2, 0]
    # Alone, a last-only ad cannot play: a one-ad pod's ad is slot 1.
    assert build_pod([only_last], c).items == ()
    assert keys(build_pod([only_last, anywhere], c)) == [2, 0]
    # Three ads that may not go in the middle: at most two of them.
    edges = [item(k, 10, 1.0, middle=False) for k in range(3)]
    assert len(build_pod(edges, c).items) == 2


def test_single_ad_uses_first_slot_value() -> None:
    a = item(0, 30, 10.0, first=1.0)
    b = item(1, 30, 5.0)
    r = build_pod([a, b], PodConstraints(pod_duration_ms=30_000, max_ads=2))
    assert keys(r) == [1]
    assert r.value == 5.0


def test_pod_duration_exactly_filled() -> None:
    items = [item(0, 15, 1.0), item(1, 15, 1.0), item(2, 16, 0.5)]
    r = build_pod(items, PodConstraints(pod_duration_ms=30_000, max_ads=4))
    assert sorted(keys(r)) == [0, 1]
    assert r.total_duration_ms == 30_000


def test_ceil_seconds_rule_is_conservative() -> None:
    # 15.2 s + 14.8 s = 30.0 s fits in milliseconds, but takes 16 + 15 = 31 capacity seconds.
    items = [item(0, 15.2, 1.0), item(1, 14.8, 1.0)]
    r = build_pod(items, PodConstraints(pod_duration_ms=30_000, max_ads=2))
    assert len(r.items) == 1


def test_empty_and_nothing_fits() -> None:
    c = PodConstraints(pod_duration_ms=30_000, max_ads=3)
    empty = PodResult(items=(), objective=(0.0,) * 6, total_duration_ms=0, value=0.0)
    assert build_pod([], c) == empty
    assert build_pod([item(0, 31, 5.0), item(1, 45, 9.0)], c) == empty
    assert build_pod([item(0, 10, 1.0)], PodConstraints(pod_duration_ms=0, max_ads=1)) == empty
    no_first = item(0, 10, 1.0, first=NEG_INF)
    assert build_pod([no_first], c) == empty


def test_max_ads_respected() -> None:
    items = [item(k, 5, 1.0 + k) for k in range(10)]
    r = build_pod(items, PodConstraints(pod_duration_ms=120_000, max_ads=3))
    assert sorted(keys(r)) == [7, 8, 9]
    r1 = build_pod(items, PodConstraints(pod_duration_ms=120_000, max_ads=1))
    assert keys(r1) == [9]


def test_determinism_and_ties() -> None:
    c = PodConstraints(pod_duration_ms=30_000, max_ads=1)
    twins = [item(5, 30, 3.0), item(2, 30, 3.0)]
    r = build_pod(twins, c)
    assert keys(r) == [2]  # exact tie: lower key
    assert build_pod(list(reversed(twins)), c) == r
    assert all(build_pod(twins, c) == r for _ in range(5))
    # Exact tie on score: fewer seconds wins.
    assert keys(build_pod([item(0, 30, 3.0), item(1, 20, 3.0)], c)) == [1]
    # A zero-value house ad adds nothing to the score, so the tie rule leaves it out.
    c3 = PodConstraints(pod_duration_ms=60_000, max_ads=3)
    assert keys(build_pod([item(0, 15, 2.0), item(1, 15, 0.0, tier=0)], c3)) == [0]


def test_validation() -> None:
    with pytest.raises(ValueError):
        item(0, 0, 1.0)
    with pytest.raises(ValueError):
        item(0, 10, -1.0)
    with pytest.raises(ValueError):
        item(0, 10, math.nan)
    with pytest.raises(ValueError):
        item(0, 10, 1.0, first=math.inf)
    with pytest.raises(ValueError):
        item(0, 10, 1.0, tier=4)
    with pytest.raises(ValueError):
        PodConstraints(pod_duration_ms=30_000, max_ads=0)
    with pytest.raises(ValueError):
        build_pod([item(0, 10, 1.0), item(0, 15, 2.0)], PodConstraints(30_000, 2))
