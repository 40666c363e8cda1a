"""Delivery control with an injected clock: caps, reservations, budgets, pacing, beacons."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import math
import random
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import vastserver.delivery as delivery_mod
from tests.conftest import ADMIN
from tests.delivery_support import (
    Clock,
    _creative,
    base_catalog,
    make_service,
    request,
    tokens_for,
)
from vastserver.catalog.model import Daypart, Delivery
from vastserver.delivery import LineItemPacing
from vastserver.pipeline.context import DurationFloors
from vastserver.pipeline.delivery import (
    HOURLY_SHARE,
    HOURLY_TRAFFIC,
    LIFETIME,
    RESERVATION_WINDOW,
    ROOMY_IMPRESSIONS,
    ROOMY_S,
    PacingCurve,
    PIController,
    SeparationRules,
    amount_micros,
    cap_window,
    daily_target_fraction,
    history_entries,
    pacing_curve,
    recent_from_history,
    spend_micros,
    target_fraction,
)
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.stages import _in_daypart
from vastserver.store.base import Incr, Read, StorePoolExhausted, StoreUnavailable, Window
from vastserver.store.memory import MemoryStore
from vastserver.tracking import expand_macros

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def _setup(
    catalog: dict[str, Any], now: datetime = T0, seed: int = 1, separation: bool = True
) -> tuple[Any, Clock]:
    clock = Clock(now)
    store = MemoryStore(clock=lambda: clock.now.timestamp())
    rules = None if separation else SeparationRules(0, 0, 0)
    return make_service(catalog, store, clock, seed=seed, separation=rules), clock


def _with_li_a(**fields: Any) -> dict[str, Any]:
    cat = base_catalog()
    cat["line_items"][0].update(fields)
    return cat


async def _serve_and_confirm(svc: Any, req: Any) -> list[str]:
    """Decide, then fire every ad's impression (a player that plays everything)."""
    d = await svc.decide(req)
    for tok in tokens_for(svc, d):
        await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    return [a.candidate.line_item.id for a in d.ads]


# ----------------------------------------------------------------------------- pure parts


def test_cap_windows() -> None:
    assert cap_window("30m") == Window(1800, 150)
    assert cap_window("1d") == Window(86400, 7200)
    assert cap_window("lifetime") == Window(None, 0)
    assert cap_window("pod") is None
    with pytest.raises(ValueError):
        cap_window("3y")


def test_target_curves() -> None:
    start, end = T0, T0 + timedelta(days=2)
    mid = T0 + timedelta(days=1)
    even = target_fraction(mid, start, end, Delivery.EVEN)
    assert even == pytest.approx(0.5, abs=1e-9)
    assert target_fraction(mid, start, end, Delivery.FRONTLOADED) > even
    assert target_fraction(mid, start, end, Delivery.ASAP) == 1.0
    assert target_fraction(start - timedelta(hours=1), start, end, Delivery.EVEN) == 0.0
    assert target_fraction(end, start, end, Delivery.EVEN) == 1.0
    # Even pacing follows the traffic shape inside a day.
    six_pm = T0 + timedelta(hours=18)
    assert daily_target_fraction(six_pm, "UTC", Delivery.EVEN) == pytest.approx(
        sum(HOURLY_TRAFFIC[:18]) / sum(HOURLY_TRAFFIC)
    )
    # The day is the campaign's local day.
    ny = daily_target_fraction(six_pm, "America/New_York", Delivery.EVEN)
    assert ny == pytest.approx(sum(HOURLY_TRAFFIC[:13]) / sum(HOURLY_TRAFFIC))


PRIME = (Daypart(start_hour=18, end_hour=23),)


def test_even_pacing_follows_the_hours_the_dayparts_allow() -> None:
    """A daily budget dayparted 18-23 (campaign zone): its curve starts at 0 at 18:00 and
    reaches 1 at 23:00, by the traffic of those five hours alone. It was the whole day's
    curve: ~60 % of the budget due at 18:00, spent in a burst."""
    ny = "America/New_York"
    day = datetime(2026, 6, 10, tzinfo=ZoneInfo(ny))

    def at(hour: float) -> float:
        t = (day + timedelta(hours=hour)).astimezone(UTC)
        return daily_target_fraction(t, ny, Delivery.EVEN, PRIME)

    prime = sum(HOURLY_SHARE[18:23])
    assert at(12) == 0.0 and at(18) == 0.0
    assert at(20.5) == pytest.approx((sum(HOURLY_SHARE[18:20]) + HOURLY_SHARE[20] / 2) / prime)
    assert at(23) == 1.0 and at(23.9) == 1.0
    # a lifetime flight Monday to Sunday, weekdays only: all due by Friday's end
    weekdays = (Daypart(days=frozenset(range(5))),)
    mon = datetime(2026, 6, 8, tzinfo=UTC)
    sun_end = mon + timedelta(days=7)
    mid_wed = mon + timedelta(days=2, hours=12)
    f = target_fraction(mid_wed, mon, sun_end, Delivery.EVEN, "UTC", weekdays)
    assert f == pytest.approx((2 + sum(HOURLY_SHARE[:12])) / 5)
    sat = mon + timedelta(days=5, hours=1)
    assert target_fraction(sat, mon, sun_end, Delivery.EVEN, "UTC", weekdays) == 1.0
    # a daypart in its own zone: 18-23 Los Angeles is 21-02 in New York, so New York's
    # day holds 00-02 (the evening before in Los Angeles) and 21-24
    la = (Daypart(start_hour=18, end_hour=23, timezone="America/Los_Angeles"),)
    at21 = daily_target_fraction(day.replace(hour=21).astimezone(UTC), ny, Delivery.EVEN, la)
    early, late = sum(HOURLY_SHARE[:2]), sum(HOURLY_SHARE[21:])
    assert at21 == pytest.approx(early / (early + late))


async def test_a_dayparted_daily_budget_spreads_over_its_hours() -> None:
    """The reviewer's run: 18-23 New York, a daily budget of 1000 and a day's traffic of
    12000 requests. The first half hour took 454 impressions; now about a tenth."""
    ny = ZoneInfo("America/New_York")
    cat = _with_li_a(
        targeting={"dayparts": [{"start_hour": 18, "end_hour": 23}]},
        pacing={"delivery": "even", "budget": {"daily_impressions": 1000}},
    )
    cat["campaigns"][0]["timezone"] = "America/New_York"
    t = datetime(2026, 6, 10, 17, 0, tzinfo=ny).astimezone(UTC)
    end = datetime(2026, 6, 10, 23, 0, tzinfo=ny).astimezone(UTC)
    svc, clock = _setup(cat, now=t, seed=3)
    rng = random.Random(5)
    per_hour: dict[int, int] = {}
    n = 0
    while clock.now < end:
        await svc.delivery.update_pacing(svc.snapshot.catalog)
        hour = clock.now.astimezone(ny).hour
        rate = 12000 * HOURLY_SHARE[hour] / 360  # per 10 s
        for _ in range(int(rate) + (rng.random() < rate - int(rate))):
            n += 1
            if "li-a" in await _serve_and_confirm(svc, request(f"v{n}", max_ads=1)):
                per_hour[hour] = per_hour.get(hour, 0) + 1
        clock.now += timedelta(seconds=10)
    total = sum(per_hour.values())
    assert 950 <= total <= 1010, per_hour
    share = sum(HOURLY_SHARE[18:23])
    for hour in range(18, 23):  # each hour near its share of the five
        assert abs(per_hour.get(hour, 0) - 1000 * HOURLY_SHARE[hour] / share) <= 60, per_hour


@pytest.mark.parametrize(
    ("pacing", "dayparts", "flight", "now"),
    [
        ({"delivery": "even", "budget": {"daily_impressions": 900}}, [],
         ("2026-06-01T00:00:00Z", "2026-06-10T16:00:00Z"), "2026-06-10T15:00:00Z"),
        ({"delivery": "frontloaded", "budget": {"daily_impressions": 900}},
         [{"start_hour": 18, "end_hour": 23}],
         ("2026-06-10T23:00:00Z", "2026-06-20T00:00:00Z"), "2026-06-11T01:30:00Z"),
        ({"delivery": "even", "budget": {"impressions": 50000}},
         [{"days": [0, 1, 2, 3, 4], "start_hour": 6, "end_hour": 22}],
         ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"), "2026-03-09T14:00:00Z"),
    ],
)  # fmt: skip
async def test_the_pacing_loop_targets_what_the_curve_says(
    pacing: dict[str, Any], dayparts: list[Any], flight: tuple[str, str], now: str
) -> None:
    """The pacing loop reads each curve once per pass and keeps each line item's flight
    bounds; its target equals the pure functions' (and so the report's)."""
    cat = _with_li_a(
        pacing=pacing, targeting={"dayparts": dayparts}, start=flight[0], end=flight[1]
    )
    cat["campaigns"][0]["timezone"] = "America/New_York"
    svc, clock = _setup(cat, now=datetime.fromisoformat(now))
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    li = svc.snapshot.catalog.line_items["li-a"]
    [row] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    tz, dps, b = "America/New_York", li.targeting.dayparts, li.pacing.budget
    if b.daily_impressions is not None:
        f = daily_target_fraction(clock.now, tz, li.pacing.delivery, dps, li.start, li.end)
        want = b.daily_impressions * f
    else:
        want = b.impressions * target_fraction(
            clock.now, li.start, li.end, li.pacing.delivery, tz, dps
        )
    assert want > 0 and row["target_now"] == pytest.approx(want, abs=1e-3)


def test_a_daily_budget_paces_over_the_part_of_the_day_in_flight() -> None:
    """A flight that ends at noon spends its last daily budget by noon (it was held to a
    quarter of it: the curve ran to midnight), and one that starts at 18:00 starts at 0."""
    ny = "America/New_York"
    end = datetime(2026, 6, 10, 16, 0, tzinfo=UTC)  # 12:00 New York
    start = end - timedelta(days=5)
    last = daily_target_fraction(end - timedelta(seconds=1), ny, Delivery.EVEN, (), start, end)
    assert last > 0.9999
    assert daily_target_fraction(end - timedelta(hours=6), ny, Delivery.EVEN, (), start, end) == (
        pytest.approx(sum(HOURLY_SHARE[:6]) / sum(HOURLY_SHARE[:12]))
    )
    evening = datetime(2026, 6, 10, 22, 0, tzinfo=UTC)  # 18:00 New York
    later = evening + timedelta(days=3)
    first = daily_target_fraction(
        evening + timedelta(seconds=1), ny, Delivery.EVEN, (), evening, later
    )
    assert first < 0.001


async def test_the_last_daily_period_and_the_flights_end() -> None:
    """Five minutes before a noon end the target is nearly the whole daily budget; after the
    flight, /admin/line-items shows no target (it kept the last one for good)."""
    end = datetime(2026, 6, 10, 16, 0, tzinfo=UTC)
    cat = _with_li_a(
        end="2026-06-10T16:00:00Z",
        pacing={"delivery": "even", "budget": {"daily_impressions": 10000}},
    )
    cat["campaigns"][0]["timezone"] = "America/New_York"
    svc, clock = _setup(cat, now=end - timedelta(minutes=5))
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    [row] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert 9800 < row["target_now"] < 10000 and row["throttle"] == 1.0
    clock.now = end + timedelta(hours=10)
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    [row] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert row["target_now"] is None and "li-a" not in svc.delivery.pacing


def test_pi_controller_directions() -> None:
    c = PIController()
    behind = c.update(delivered=50, target=100)
    assert behind == 1.0
    c = PIController()
    ahead = c.update(delivered=120, target=100)
    assert ahead == c.p_min
    c = PIController()
    ps = [c.update(delivered=100, target=100) for _ in range(5)]
    assert all(c.p_min <= p <= 1 for p in ps)


# ----------------------------------------------------------------------------- caps


async def test_frequency_cap_per_hour() -> None:
    cat = _with_li_a(frequency_caps=[{"scope": "line_item", "max": 2, "window": "1h"}])
    svc, clock = _setup(cat)
    seen = []
    for i in range(6):
        clock.now = T0 + timedelta(minutes=5 * i)
        seen.append("li-a" in await _serve_and_confirm(svc, request("viewer-1")))
    assert seen == [True, True, False, False, False, False]
    # another viewer is unaffected
    assert "li-a" in await _serve_and_confirm(svc, request("viewer-2"))
    # 1 h after the first impressions, plus one bucket, the cap opens again
    clock.now = T0 + timedelta(minutes=65)
    assert "li-a" in await _serve_and_confirm(svc, request("viewer-1"))
    d = await svc.decide(request("viewer-1"))
    assert "li-a" not in [a.candidate.line_item.id for a in d.ads]
    reasons = {t.line_item_id: t.reason for t in d.traces}
    assert reasons["li-a"].value == "frequency_cap"


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=3600), min_size=5, max_size=40),
    cap=st.integers(min_value=1, max_value=4),
)
def test_cap_never_exceeded_in_any_window(gaps: list[int], cap: int) -> None:
    """Whatever the request timing, no sliding 1 h window holds more than ``cap`` impressions."""

    async def run() -> list[datetime]:
        cat = _with_li_a(frequency_caps=[{"scope": "campaign", "max": cap, "window": "1h"}])
        svc, clock = _setup(cat)
        shown: list[datetime] = []
        for g in gaps:
            clock.now += timedelta(seconds=g)
            if "li-a" in await _serve_and_confirm(svc, request("viewer-x")):
                shown.append(clock.now)
        return shown

    shown = asyncio.run(run())
    for i, t in enumerate(shown):
        in_window = [u for u in shown[i:] if u - t < timedelta(hours=1)]
        assert len(in_window) <= cap


async def test_parallel_burst_cannot_overshoot_cap() -> None:
    """SSAI prefetch: many parallel decisions for one viewer before any impression."""
    cat = _with_li_a(frequency_caps=[{"scope": "line_item", "max": 3, "window": "1d"}])
    svc, _ = _setup(cat)
    decisions = await asyncio.gather(*(svc.decide(request("viewer-1")) for _ in range(50)))
    served = sum("li-a" in [a.candidate.line_item.id for a in d.ads] for d in decisions)
    assert served == 3


async def test_reservation_lapses_without_impression() -> None:
    cat = _with_li_a(frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}])
    svc, clock = _setup(cat)
    d = await svc.decide(request("v"))
    assert "li-a" in [a.candidate.line_item.id for a in d.ads]
    d2 = await svc.decide(request("v"))
    assert "li-a" not in [a.candidate.line_item.id for a in d2.ads]
    clock.now += timedelta(minutes=6)  # past RESERVATION_S with no impression
    d3 = await svc.decide(request("v"))
    assert "li-a" in [a.candidate.line_item.id for a in d3.ads]


async def test_not_used_releases_and_blocks_late_impression() -> None:
    cat = _with_li_a(frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}])
    svc, _ = _setup(cat)
    d = await svc.decide(request("v"))
    tok = next(t for t in tokens_for(svc, d) if t.line_item_id == "li-a")
    res = await svc.delivery.on_beacon("notUsed", tok, svc.snapshot.catalog)
    assert res.counted
    d2 = await svc.decide(request("v"))
    assert "li-a" in [a.candidate.line_item.id for a in d2.ads]
    late = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert not late.counted and late.reason == "already_settled"


async def test_after_not_used_only_the_impression_s_own_events_decide() -> None:
    """``notUsed`` first: no event of the ad counts (the ad did not play), each
    ``already_settled``, replays too, while a replay of the ``notUsed`` is a replay.
    Impression first: the ``notUsed`` is refused and the ad's events count."""
    svc, _ = _setup(_with_li_a())
    cat = svc.snapshot.catalog
    unused, played = tokens_for(svc, await svc.decide(request("v")))
    assert (await svc.delivery.on_beacon("notUsed", unused, cat)).counted
    assert (await svc.delivery.on_beacon("notUsed", unused, cat)).replay
    for event in ("impression", "firstQuartile", "complete", "click", "complete"):
        got = await svc.delivery.on_beacon(event, unused, cat)
        assert not got.counted and got.reason == "already_settled", event
    assert (await svc.delivery.on_beacon("impression", played, cat)).counted
    got = await svc.delivery.on_beacon("notUsed", played, cat)
    assert not got.counted and got.reason == "already_settled"
    assert (await svc.delivery.on_beacon("complete", played, cat)).counted
    assert (await svc.delivery.on_beacon("click", played, cat)).counted
    stats = {s["id"]: s for s in await svc.delivery.line_item_stats(cat, ["li-a", "li-b"])}
    assert {i: (s["delivered_impressions"], s["completes"]) for i, s in stats.items()} == {
        unused.line_item_id: (0, 0),
        played.line_item_id: (1, 1),
    }


async def test_lmt_uses_session_caps_only() -> None:
    cat = _with_li_a(
        frequency_caps=[
            {"scope": "line_item", "max": 1, "window": "1d"},
            {"scope": "line_item", "max": 2, "window": "session"},
        ]
    )
    svc, _ = _setup(cat, separation=False)  # the cap, not stream separation, is under test
    got = [
        "li-a" in await _serve_and_confirm(svc, request(None, lmt=True, session="s1"))
        for _ in range(4)
    ]
    assert got == [True, True, False, False]  # the 1/day device cap does not apply
    assert "li-a" in await _serve_and_confirm(svc, request(None, lmt=True, session="s2"))


async def test_replayed_beacons_count_once() -> None:
    svc, _ = _setup(base_catalog())
    d = await svc.decide(request("v"))
    tok = tokens_for(svc, d)[0]
    results = [
        await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog) for _ in range(5)
    ]
    assert [r.counted for r in results] == [True, False, False, False, False]
    assert all(r.replay for r in results[1:])
    stats = await svc.delivery.line_item_stats(svc.snapshot.catalog, [tok.line_item_id])
    assert stats[0]["delivered_impressions"] == 1


class _CountFailsOnce:
    """A memory store whose first counting write (``add`` or ``claim_and_add``) fails as a
    Redis outage would, applying nothing."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _fail_once(self) -> None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("down")

    async def add(self, incrs: Any, now: float) -> None:
        self._fail_once()
        await self.inner.add(incrs, now)

    async def claim_and_add(
        self,
        keys: Any,
        ttl_s: int,
        incrs: Any,
        now: float,
        *,
        served_at: float | None = None,
        unless: str | None = None,
    ) -> list[bool]:
        self._fail_once()
        return await self.inner.claim_and_add(
            keys, ttl_s, incrs, now, served_at=served_at, unless=unless
        )


async def test_a_beacon_whose_count_failed_is_counted_when_retried() -> None:
    clock = Clock(T0)
    store = _CountFailsOnce(MemoryStore(clock=lambda: clock.now.timestamp()))
    svc = make_service(base_catalog(), store, clock)  # type: ignore[arg-type]
    d = await svc.decide(request("v"))
    tok = tokens_for(svc, d)[0]
    with pytest.raises(StoreUnavailable):  # the handler answers 503: the player retries
        await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    retried = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert retried.counted
    again = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert again.replay
    stats = await svc.delivery.line_item_stats(svc.snapshot.catalog, [tok.line_item_id])
    assert stats[0]["delivered_impressions"] == 1


async def test_beacon_candidates_follow_the_catalog_snapshot() -> None:
    from vastserver.catalog.load import parse_catalog

    svc, _ = _setup(base_catalog())
    d = await svc.decide(request("v"))
    tok = tokens_for(svc, d)[0]
    old = svc.snapshot.catalog
    first = svc.delivery.candidate(old, tok)
    assert first is not None and first.line_item is old.line_items[tok.line_item_id]
    assert svc.delivery.candidate(old, tok) is first  # one ad's beacons share the lookup
    # a reloaded catalog: the line item's new version, or nothing once it is gone
    cat = base_catalog()
    for li in cat["line_items"]:
        if li["id"] == tok.line_item_id:
            li["name"] = "renamed"
    new = parse_catalog(cat)
    again = svc.delivery.candidate(new, tok)
    assert again is not None and again.line_item is new.line_items[tok.line_item_id]
    # gone: it stands in by its id, under the campaign and advertiser it was served under
    cat["line_items"] = [li for li in cat["line_items"] if li["id"] != tok.line_item_id]
    gone = svc.delivery.candidate(parse_catalog(cat), tok)
    assert gone.line_item.id == tok.line_item_id
    assert (gone.campaign.id, gone.advertiser.id) == (tok.campaign_id, tok.advertiser_id)


async def test_a_catalog_reload_drops_the_old_candidates_gate_entries(tmp_path: Any) -> None:
    svc, _ = _setup(base_catalog())
    await svc.decide(request("v"))
    old = set(svc.delivery.gate_cache.entries)
    assert old
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(base_catalog()))
    svc.reload_catalog(path)
    assert not svc.delivery.gate_cache.entries
    d = await svc.decide(request("v2"))
    assert d.ads
    held = [e.cand for e in svc.delivery.gate_cache.entries.values()]
    assert held and all(
        c.line_item is svc.snapshot.catalog.line_items[c.line_item.id] for c in held
    )


# ----------------------------------------------------------------------------- budgets


async def _li_a_played(svc: Any, clock: Clock, n: int) -> int:
    """Serve viewers ``v0 ..`` a second apart, every ad played: how many got li-a."""
    played = 0
    for i in range(n):
        clock.now = T0 + timedelta(seconds=i)
        played += "li-a" in await _serve_and_confirm(svc, request(f"v{i}"))
    return played


def _budgeted(cat: dict[str, Any], owner: str, budget: dict[str, Any]) -> dict[str, Any]:
    """``cat`` with ``budget`` on li-a (``owner`` "line_item") or on its campaign."""
    if owner == "line_item":
        cat["line_items"][0]["pacing"] = {"delivery": "asap", "budget": budget}
    else:
        cat["campaigns"][0]["budget"] = budget
    return cat


async def test_lifetime_budget_not_overdelivered() -> None:
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 30}})
    svc, clock = _setup(cat)
    assert await _li_a_played(svc, clock, 200) == 30


async def _li_a_tokens(svc: Any, prefix: str, n: int) -> list[Any]:
    """Serve viewers ``prefix0 .. prefix{n-1}``; the tokens of the li-a ads, not yet played."""
    out = []
    for i in range(n):
        d = await svc.decide(request(f"{prefix}{i}"))
        out += [t for t in tokens_for(svc, d) if t.line_item_id == "li-a"]
    return out


async def test_a_budget_a_reload_adds_while_ads_are_in_flight_is_not_overdelivered(
    tmp_path: Any,
) -> None:
    """Ads served before the line item had a budget reserved nothing; their impressions,
    counted after the reload added one, release reservations that were never made. That
    left a negative reservation bucket, which hid the next reservations from the guard:
    13 delivered against a budget of 10 (a reviewer found it). A bucket now stops at zero."""
    svc, clock = _setup(_with_li_a())
    before = await _li_a_tokens(svc, "b", 3)
    assert len(before) == 3
    path = tmp_path / "budgeted.json"
    path.write_text(
        json.dumps(_with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 10}}))
    )
    svc.reload_catalog(path)
    clock.now += timedelta(seconds=40)
    for tok in before:
        assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    after = await _li_a_tokens(svc, "a", 30)  # served now, their impressions still to come
    assert len(after) == 7
    for tok in after:
        assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    [stats] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert stats["delivered_impressions"] == 10


@pytest.mark.parametrize(
    ("owner", "budget"),
    [
        ("line_item", {"impressions": 15}),
        ("line_item", {"daily_impressions": 15}),
        ("line_item", {"spend": 0.3}),  # 15 impressions at CPM 20
        ("campaign", {"impressions": 15}),
        ("campaign", {"spend": 0.3}),
    ],
)
async def test_a_budget_a_reload_adds_counts_what_was_delivered_before_it(
    tmp_path: Any, owner: str, budget: dict[str, Any]
) -> None:
    """li-a delivers 10 with no budget; a reload gives it (or its campaign) a budget of 15
    impressions' worth. Its counters were moved only while a budget existed, so it went on
    to deliver 15 more (25 against 15, while the gauge said 15 and the pacing ratio 1.0; a
    reviewer found it). The budget now counts the 10: 5 more, and ``/admin`` and the gauges
    agree on what was delivered."""
    svc, clock = _setup(_with_li_a())
    before = [await _serve_and_confirm(svc, request(f"b{i}")) for i in range(10)]
    assert sum("li-a" in ids for ids in before) == 10
    _reload(svc, tmp_path, _budgeted(_with_li_a(), owner, budget))
    clock.now += timedelta(minutes=1)
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    after = [await _serve_and_confirm(svc, request(f"a{i}")) for i in range(30)]
    assert sum("li-a" in ids for ids in after) == 5
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    [stats] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert stats["delivered_impressions"] == stats["delivered_today"] == 15
    assert stats["spend"] == pytest.approx(0.3) and stats["exhausted"]
    text = svc.metrics.render().decode()
    assert 'vastserver_line_item_exhausted{line_item="li-a"} 1.0' in text
    if owner == "line_item" and "spend" not in budget:  # an impression budget to pace
        assert 'vastserver_line_item_delivered_impressions{line_item="li-a"} 15.0' in text
        assert 'vastserver_line_item_pacing_ratio{line_item="li-a"} 1.0' in text


@pytest.mark.parametrize("owner", ["line_item", "campaign"])
@pytest.mark.parametrize("field", ["spend", "daily_spend"])
async def test_a_spend_budget_reached_exactly_delivers_its_last_impression(
    owner: str, field: str
) -> None:
    """A spend budget of 0.0157 at CPM 1.57 (1,570 micros an impression) holds exactly 10
    impressions. It was read as ``int(0.0157 * 1e6)`` = 15,699 micros: 9."""
    svc, clock = _setup(_budgeted(_with_li_a(price=1.57), owner, {field: 0.0157}))
    assert await _li_a_played(svc, clock, 20) == 10
    [stats] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert round(stats["spend"] * 1_000_000) == 15_700


def test_amount_micros_is_exact_to_the_decimal_written() -> None:
    for text in ("0.0157", "0.3", "1000", "5.07", "123456.789012", "0.29", "1e-7", "2.0000015"):
        want = math.floor(Decimal(text) * 1_000_000)
        assert amount_micros(json.loads(text)) == want, text


async def test_impressions_of_a_creative_rotated_out_still_count_to_budgets_and_caps(
    tmp_path: Any,
) -> None:
    """A reload that swaps a line item's creative (a routine rotation) while its ads are
    in flight: their impressions counted the delivery but skipped the line item's budget
    and caps and kept their reservations (13 delivered against a budget of 10)."""
    cat = _with_li_a(
        pacing={"delivery": "asap", "budget": {"impressions": 10}},
        frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}],
    )
    svc, clock = _setup(cat)
    before = await _li_a_tokens(svc, "b", 3)
    assert len(before) == 3
    rotated = copy.deepcopy(cat)
    [cr] = [c for c in rotated["creatives"] if c["id"] == before[0].creative_id]
    cr["id"] = "cr-a-v2"
    cr["universal_ad_id"] = "AAAA0009000H"
    rotated["line_items"][0]["creative_ids"] = ["cr-a-v2"]
    path = tmp_path / "rotated.json"
    path.write_text(json.dumps(rotated))
    svc.reload_catalog(path)
    assert before[0].creative_id not in svc.snapshot.catalog.creatives
    for tok in before:
        assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    clock.now += timedelta(minutes=6)  # past the reservations' window: only counts hold
    # the three viewers met their cap of 1 on the old creative
    for i in range(3):
        assert "li-a" not in [
            a.candidate.line_item.id for a in (await svc.decide(request(f"b{i}"))).ads
        ]
    after = await _li_a_tokens(svc, "a", 30)
    assert len(after) == 7 and {t.creative_id for t in after} == {"cr-a-v2"}


def _two_campaigns(budget: int) -> dict[str, Any]:
    """cmp-a (budget ``budget``) with li-a (CPM 20) and li-a2 (CPM 10) on cr-a; cmp-a2, of the
    same advertiser, with the same budget and no line item yet."""
    cat = base_catalog()
    cat["campaigns"][0]["budget"] = {"impressions": budget}
    cmp2 = {**copy.deepcopy(cat["campaigns"][0]), "id": "cmp-a2", "name": "A2"}
    cat["campaigns"].append(cmp2)
    li2 = {**copy.deepcopy(cat["line_items"][0]), "id": "li-a2", "name": "A2", "price": 10}
    cat["line_items"].append(li2)
    return cat


def _reload(svc: Any, tmp_path: Any, cat: dict[str, Any]) -> None:
    path = tmp_path / "reloaded.json"
    path.write_text(json.dumps(cat))
    svc.reload_catalog(path)


async def _line_items_served(svc: Any, prefix: str, n: int) -> list[str]:
    """The adv-a line items served to viewers ``prefix0 ..`` (each impression counted)."""
    out = []
    for i in range(n):
        out += [li for li in await _serve_and_confirm(svc, request(f"{prefix}{i}")) if li != "li-b"]
    return out


async def test_impressions_of_a_removed_line_item_charge_its_campaigns_budget(
    tmp_path: Any,
) -> None:
    """A reload that removes a line item while its ads are in flight: their impressions
    counted only the line item's own counters, never the campaign's budget, so once the
    reservations lapsed its sibling played the budget again (6 played against 3: a reviewer
    found it). They now charge the campaign the token names."""
    cat = _two_campaigns(3)
    svc, clock = _setup(cat)
    before = await _li_a_tokens(svc, "b", 4)
    assert len(before) == 3  # the 4th found the budget reserved
    cat["line_items"] = [li for li in cat["line_items"] if li["id"] != "li-a"]
    _reload(svc, tmp_path, cat)
    for tok in before:
        assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    clock.now += timedelta(minutes=6)  # past the reservations' window: only counts hold
    assert await _line_items_served(svc, "a", 5) == []
    delivered = await svc.delivery.store.read([Read("cp:cmp-a:imp:life", LIFETIME)], 0)
    assert delivered == [3]


async def test_not_used_of_a_removed_line_item_releases_its_campaigns_budget(
    tmp_path: Any,
) -> None:
    """``notUsed`` of an ad whose line item a reload removed released nothing: the campaign's
    budget stayed reserved for the reservations' whole window."""
    cat = _two_campaigns(3)
    svc, _ = _setup(cat)
    before = await _li_a_tokens(svc, "b", 3)
    assert len(before) == 3
    cat["line_items"] = [li for li in cat["line_items"] if li["id"] != "li-a"]
    _reload(svc, tmp_path, cat)
    for tok in before:
        assert (await svc.delivery.on_beacon("notUsed", tok, svc.snapshot.catalog)).counted
    assert await _line_items_served(svc, "a", 5) == ["li-a2"] * 3


async def test_impressions_of_a_moved_line_item_charge_the_campaign_they_were_served_under(
    tmp_path: Any,
) -> None:
    """A reload that moves a line item to another campaign while its ads are in flight:
    their impressions were booked to the new campaign, so the old one played its budget
    again and the new one lost what it never served."""
    cat = _two_campaigns(3)
    svc, clock = _setup(cat)
    before = await _li_a_tokens(svc, "b", 3)
    assert len(before) == 3
    cat["line_items"][0]["campaign_id"] = "cmp-a2"
    _reload(svc, tmp_path, cat)
    for tok in before:
        assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    clock.now += timedelta(minutes=6)
    # cmp-a is spent (li-a2 never plays); cmp-a2's 3 go to li-a, now its line item
    assert await _line_items_served(svc, "a", 5) == ["li-a"] * 3
    got = await svc.delivery.store.read(
        [Read("cp:cmp-a:imp:life", LIFETIME), Read("cp:cmp-a2:imp:life", LIFETIME)], 0
    )
    assert got == [3, 3]


async def test_impressions_of_a_removed_campaign_still_count_advertiser_caps(
    tmp_path: Any,
) -> None:
    """A reload that removes a campaign with its line item: their ads' impressions counted
    no cap at all, so the advertiser's cap (set by its other campaign) let the viewer see
    the advertiser again. What is keyed by ids still counts: advertiser and creative caps."""
    cat = _two_campaigns(100)
    li2 = cat["line_items"][-1]
    li2["campaign_id"] = "cmp-a2"
    li2["frequency_caps"] = [{"scope": "advertiser", "max": 1, "window": "1d"}]
    svc, clock = _setup(cat)
    [tok] = await _li_a_tokens(svc, "v", 1)
    cat["campaigns"] = [c for c in cat["campaigns"] if c["id"] != "cmp-a"]
    cat["line_items"] = [li for li in cat["line_items"] if li["id"] != "li-a"]
    _reload(svc, tmp_path, cat)
    assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    clock.now += timedelta(minutes=6)
    assert await _line_items_served(svc, "v", 1) == []  # v0 met the advertiser's cap
    assert await _line_items_served(svc, "w", 1) == ["li-a2"]


async def test_a_reload_that_respells_a_caps_window_starts_its_counts_over(
    tmp_path: Any,
) -> None:
    """As docs/catalog.md says: the counter key holds the window as written, so ``1d`` to
    ``24h`` starts every viewer at zero; a new ``max`` alone keeps the counts."""
    cat = _with_li_a(frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}])
    svc, _ = _setup(cat)
    assert "li-a" in await _serve_and_confirm(svc, request("v"))
    assert "li-a" not in await _serve_and_confirm(svc, request("v"))
    cat["line_items"][0]["frequency_caps"][0]["max"] = 2  # the one seen still counts
    _reload(svc, tmp_path, cat)
    assert "li-a" in await _serve_and_confirm(svc, request("v"))
    assert "li-a" not in await _serve_and_confirm(svc, request("v"))
    cat["line_items"][0]["frequency_caps"][0]["window"] = "24h"
    _reload(svc, tmp_path, cat)
    got = [await _serve_and_confirm(svc, request("v")) for _ in range(3)]
    assert ["li-a" in ids for ids in got] == [True, True, False]


async def test_a_reload_that_changes_a_campaigns_zone_opens_its_new_day_at_once(
    tmp_path: Any,
) -> None:
    """As docs/catalog.md says: at 20:00 UTC, New York's 25th is spent; Tokyo is on the 26th,
    a new budget day, as soon as the reload lands."""
    cat = base_catalog()
    cat["campaigns"][0].update(budget={"daily_impressions": 2}, timezone="America/New_York")
    svc, _ = _setup(cat, now=T0 + timedelta(hours=20))
    assert await _line_items_served(svc, "a", 4) == ["li-a"] * 2
    cat["campaigns"][0]["timezone"] = "Asia/Tokyo"
    _reload(svc, tmp_path, cat)
    assert await _line_items_served(svc, "b", 4) == ["li-a"] * 2


def _spy_reads(store: Any) -> list[set[str]]:
    """The keys of each ``read`` on ``store`` from now on (an instance attribute shadows the
    method)."""
    seen: list[set[str]] = []
    real_read = store.read

    async def read(reads: Any, now: float) -> list[int]:
        seen.append({r.key for r in reads})
        return await real_read(reads, now)

    store.read = read
    return seen


async def test_a_roomy_budget_skips_the_pre_check_but_never_overdelivers() -> None:
    """A budget with room for ROOMY_IMPRESSIONS more is not read for ROOMY_S. Spent meanwhile
    (as another instance would), it is still refused by the reservation at commit; once the
    pause is over the pre-check reads it again and drops the line item."""
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 1500}})
    svc, clock = _setup(cat)
    store = svc.delivery.store
    read_keys = _spy_reads(store)
    budget_key = "li:li-a:ev:impression"

    assert _li_a_outcome(await svc.decide(request("v0"), explain=True)) == (True, None)
    assert budget_key in read_keys[-1]
    # another instance spends the rest: 1,499 delivered + this instance's 1 reservation
    await store.add([Incr(budget_key, LIFETIME, 1499)], clock.now.timestamp())

    clock.now = T0 + timedelta(seconds=ROOMY_S / 2)
    n = len(read_keys)
    assert _li_a_outcome(await svc.decide(request("v1"), explain=True)) == (
        False,
        Reason.BUDGET_EXHAUSTED,
    )
    # not read by the pre-check; refused by the reservation, then read back to name the guard
    assert budget_key not in read_keys[n] and budget_key in read_keys[n + 1]

    clock.now = T0 + timedelta(seconds=ROOMY_S * 2)
    assert _li_a_outcome(await svc.decide(request("v2"), explain=True)) == (
        False,
        Reason.BUDGET_EXHAUSTED,
    )
    assert budget_key in read_keys[-1]  # read again: the pre-check dropped it
    ts = clock.now.timestamp()
    counted = await store.read(
        [Read(budget_key, LIFETIME), Read("li:li-a:imp:life:r", RESERVATION_WINDOW)], ts
    )
    assert counted == [1499, 1]  # one reservation (the first serve): the budget is exactly spent


def _li_a_outcome(d: Any) -> tuple[bool, Any]:
    """Served, and why not (an explained decision: a line item the pacing loop found out of
    budget is dropped by the selection, named only by the explanation)."""
    served = "li-a" in [a.candidate.line_item.id for a in d.ads]
    return served, next(t.reason for t in d.traces if t.line_item_id == "li-a")


_CAPPED_AND_BUDGETED = {
    "frequency_caps": [{"scope": "line_item", "max": 3, "window": "1d"}],
    "pacing": {"delivery": "asap", "budget": {"impressions": 1500}},
}


async def test_a_refused_reservation_names_the_guard_that_failed() -> None:
    """A line item with a cap and a budget, refused at commit: the trace names the budget
    when the budget ran out, the cap when the cap did (read back after the refusal)."""
    svc, clock = _setup(_with_li_a(**_CAPPED_AND_BUDGETED))
    store = svc.delivery.store
    assert _li_a_outcome(await svc.decide(request("v0"), explain=True)) == (
        True,
        None,
    )  # budget now roomy
    await store.add([Incr("li:li-a:ev:impression", LIFETIME, 1499)], clock.now.timestamp())
    clock.now = T0 + timedelta(seconds=ROOMY_S / 2)
    assert _li_a_outcome(await svc.decide(request("v1"), explain=True)) == (
        False,
        Reason.BUDGET_EXHAUSTED,
    )

    # the cap: another request of the same viewer reserves it between prefetch and commit
    svc, clock = _setup(_with_li_a(**_CAPPED_AND_BUDGETED))
    store = svc.delivery.store
    real_commit = store.commit

    async def commit(batch: Any, now: float) -> list[bool]:
        for g in batch[0].guards:
            if g.key.startswith("fc:"):
                await store.add([Incr(g.extra[0].key, RESERVATION_WINDOW, g.limit)], now)
        return await real_commit(batch, now)

    store.commit = commit
    assert _li_a_outcome(await svc.decide(request("v2"), explain=True)) == (
        False,
        Reason.FREQUENCY_CAP,
    )


async def test_a_store_failure_at_commit_drops_budgeted_ads_as_budget_exhausted() -> None:
    svc, _ = _setup(_with_li_a(**_CAPPED_AND_BUDGETED))

    async def down(batch: Any, now: float) -> list[bool]:
        raise StoreUnavailable("down")

    svc.delivery.store.commit = down
    # budgets fail closed; the capped line item's loss is not a cap hit
    assert _li_a_outcome(await svc.decide(request("v0"), explain=True)) == (
        False,
        Reason.BUDGET_EXHAUSTED,
    )


async def test_a_full_redis_pool_is_counted_apart_from_other_store_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both are store errors (the fail-open/closed policy is the same); the pool's also
    counts in vastserver_store_pool_exhausted_total, and the log says what failed rather
    than the exception's class."""
    svc, _ = _setup(_with_li_a(**_CAPPED_AND_BUDGETED))
    for n, err in enumerate(
        [
            StoreUnavailable("redis commit failed: ConnectionError: refused"),
            StorePoolExhausted("redis commit failed: pool_exhausted: all 64 connections busy"),
        ]
    ):

        async def down(batch: Any, now: float, err: Exception = err) -> list[bool]:
            raise err

        svc.delivery.store.commit = down
        await svc.decide(request(f"v{n}"))
    text = svc.metrics.render().decode()
    errors = [ln for ln in text.splitlines() if ln.startswith("vastserver_store_errors_total{")]
    full = [
        ln for ln in text.splitlines() if ln.startswith("vastserver_store_pool_exhausted_total{")
    ]
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in errors) == 2
    assert len(full) == 1 and full[0].endswith(" 1.0")
    logged = [getattr(r, "fields", {}).get("error", "") for r in caplog.records]
    assert "StorePoolExhausted: redis commit failed: pool_exhausted: all 64" in logged[-1]
    assert logged[0] == "StoreUnavailable: redis commit failed: ConnectionError: refused"


@pytest.mark.parametrize(
    ("li_b", "before", "after"),
    [
        # last-only: alone in slot 1 it may not play at all
        ({"slot": "last", "slot_prices": {"last": 30}}, [("li-a", 1, 20.0), ("li-b", 2, 30.0)], []),
        ({"slot": "last"}, [("li-a", 1, 20.0), ("li-b", 2, 10.0)], []),  # even at one price
        # any slot, a last-slot price: moving up it would be billed 30 as slot 1 of one
        ({"slot_prices": {"last": 30}}, [("li-a", 1, 20.0), ("li-b", 2, 30.0)], []),
        # a first-slot price, already first: it stays, at its price
        (
            {"slot_prices": {"first": 30}},
            [("li-b", 1, 30.0), ("li-a", 2, 20.0)],
            [("li-b", 1, 30.0)],
        ),
    ],
)
async def test_ads_left_after_a_refusal_keep_their_slot_rules_and_prices(
    li_b: dict[str, Any], before: list[Any], after: list[Any]
) -> None:
    """li-a is budgeted and the store fails at commit (budgets fail closed): the ad left
    moves up only where its line item may play at the price it was reserved at."""
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 1500}})
    cat["line_items"][1].update(tier="standard", price=10, **li_b)

    def placed(d: Any) -> list[Any]:
        return [(a.candidate.line_item.id, a.slot, a.price_cpm) for a in d.ads]

    svc, _ = _setup(cat)
    assert placed(await svc.decide(request("v0", pod_s=30, max_ads=2))) == before

    async def down(batch: Any, now: float) -> list[bool]:
        raise StoreUnavailable("down")

    svc, _ = _setup(cat)
    svc.delivery.store.commit = down
    d = await svc.decide(request("v1", pod_s=30, max_ads=2))
    assert placed(d) == after
    reasons = {t.line_item_id: (t.reason, t.slot) for t in d.traces}
    assert reasons["li-a"] == (Reason.BUDGET_EXHAUSTED, None)
    assert reasons["li-b"] == ((None, 1) if after else (Reason.NOT_SELECTED, None))
    assert d.total_duration_ms == 15_000 * len(after)


async def test_a_beacon_replayed_hours_later_counts_once() -> None:
    """A claim lasts as long as its token verifies (and an hour more): a replay two hours
    later, the token still good for a day, is a replay."""
    svc, clock = _setup(base_catalog())
    d = await svc.decide(request("v"))
    tok = tokens_for(svc, d)[0]
    assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    clock.now += timedelta(hours=2)
    again = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert again.replay and not again.counted
    clock.now += timedelta(hours=21, minutes=59)  # 23:59 after the serve: still held
    again = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert again.replay and not again.counted


async def test_an_asap_line_item_is_not_throttled_near_its_budget() -> None:
    """Only even pacing throttles: an ASAP line item at 80 % of its budget serves on."""
    svc, _ = _setup(_with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 10}}))
    for i in range(8):
        assert "li-a" in await _serve_and_confirm(svc, request(f"v{i}"))
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    assert svc.delivery.throttle.get("li-a", 1.0) == 1.0


TWO_AM = T0 + timedelta(hours=2)


def _allowance_at(now: datetime, daily: int) -> int:
    """What a pass at ``now`` allows an even line item of ``daily`` impressions a day (UTC)
    that delivered and reserved nothing: its target two pacing periods later, at least 1."""
    ahead = now + timedelta(seconds=delivery_mod.PACING_LEAD_S)
    return max(1, math.floor(daily * daily_target_fraction(ahead, "UTC", Delivery.EVEN)))


async def _serve_li_a(svc: Any, n: int, tag: str, confirm: bool = True) -> int:
    """``n`` one-ad breaks for new viewers; how many li-a got (the rest go to the house
    line item). ``confirm``: fire each ad's impression."""
    served = 0
    for i in range(n):
        req = request(f"{tag}{i}", max_ads=1)
        if confirm:
            got = await _serve_and_confirm(svc, req)
        else:
            got = [a.candidate.line_item.id for a in (await svc.decide(req)).ads]
        assert got, "the house line item fills what li-a does not"
        served += got == ["li-a"]
    return served


async def test_an_even_line_item_behind_its_target_serves_its_allowance_not_a_burst() -> None:
    """The reviewer's run: 50 a day, even, 30 breaks within the first pacing period after a
    start at 02:00: li-a served 25 (its throttle, 0.79 behind its target, let most through
    until the next pass). Now it serves what its target two periods ahead allows: 1."""
    cat = _with_li_a(pacing={"delivery": "even", "budget": {"daily_impressions": 50}})
    svc, _ = _setup(cat, now=TWO_AM)
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    assert svc.delivery.throttle["li-a"] > 0.5  # behind its target (1.7): the throttle is open
    assert svc.delivery.pacing["li-a"].allowance == _allowance_at(TWO_AM, 50) == 1
    assert await _serve_li_a(svc, 30, "v") == 1
    # refused for this period as a throttled line item is, in the selection
    assert _li_a_outcome(await svc.decide(request("w"), explain=True)) == (
        False,
        Reason.PACING_THROTTLE,
    )


async def test_the_allowance_resets_at_the_next_pass_less_what_was_served() -> None:
    """150 a day at 02:00: a target of 5.2 now and 5.2 two periods ahead, so 5 in the first
    period; the next pass allows what the target leaves after them (at least 1), whether their
    impressions came (delivered) or not yet (reserved: they count as well)."""
    daily = 150
    cat = _with_li_a(pacing={"delivery": "even", "budget": {"daily_impressions": daily}})
    for confirm in (True, False):
        svc, clock = _setup(cat, now=TWO_AM)
        await svc.delivery.update_pacing(svc.snapshot.catalog)
        assert _allowance_at(TWO_AM, daily) == 5
        assert await _serve_li_a(svc, 30, "v", confirm) == 5
        assert await _serve_li_a(svc, 10, "w", confirm) == 0  # no pass, no more
        clock.now += timedelta(seconds=delivery_mod.PACING_INTERVAL_S)
        await svc.delivery.update_pacing(svc.snapshot.catalog)
        want = max(1, _allowance_at(clock.now, daily) - 5)
        assert svc.delivery.pacing["li-a"].allowance == want == 1
        assert await _serve_li_a(svc, 30, "x", confirm) == want


async def test_an_asap_line_item_has_no_allowance() -> None:
    """ASAP wants everything now: no target to hold it to, so no allowance, at any hour."""
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"daily_impressions": 50}})
    svc, _ = _setup(cat, now=TWO_AM)
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    assert "li-a" not in svc.delivery.room and svc.delivery.pacing["li-a"].allowance is None
    assert await _serve_li_a(svc, 30, "v") == 30


async def test_an_ad_the_store_refuses_gives_its_allowance_back() -> None:
    """An ad counts against its allowance as it is reserved, and not at all when the
    reservation fails (the store down: budgets fail closed): the next break may serve it."""
    cat = _with_li_a(pacing={"delivery": "even", "budget": {"daily_impressions": 50}})
    svc, _ = _setup(cat, now=TWO_AM)
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    store = svc.delivery.store
    real = store.commit

    async def down(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("down")

    svc.delivery.throttle["li-a"] = 1.0  # (no throttle draw in the way)
    store.commit = down
    d = await svc.decide(request("v", max_ads=2), explain=True)
    assert _ads(d) == ["li-b"]  # (no budget: it fails open)
    assert [t.reason for t in d.traces if t.line_item_id == "li-a"] == [Reason.BUDGET_EXHAUSTED]
    assert svc.delivery.room["li-a"] == 1
    store.commit = real
    assert await _serve_li_a(svc, 30, "w") == 1


async def _soon(cond: Any, within_s: float = 2.0) -> None:
    """Wait (real time) until ``cond()`` holds, at most ``within_s``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within_s
    while not cond():
        assert loop.time() < until, "not in time"
        await asyncio.sleep(0.01)


async def test_a_line_item_a_reload_adds_gets_its_allowance_at_once(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paced line item a reload added had no allowance (and no throttle) until the next
    pass, up to a period later; the pacing loop now runs a pass as soon as it sees the new
    catalog."""
    monkeypatch.setattr(delivery_mod, "RELOAD_POLL_S", 0.02)
    cat = _with_li_a(pacing={"delivery": "even", "budget": {"daily_impressions": 50}})
    svc, _ = _setup(cat, now=TWO_AM)
    stop = asyncio.Event()
    task = asyncio.create_task(svc.delivery.run_pacing(lambda: svc.snapshot.catalog, stop))
    try:
        await _soon(lambda: "li-a" in svc.delivery.room)
        cat["line_items"].append({**copy.deepcopy(cat["line_items"][0]), "id": "li-c"})
        _reload(svc, tmp_path, cat)
        await _soon(lambda: "li-c" in svc.delivery.room, within_s=1.0)  # a period is 10 s
    finally:
        stop.set()
        await asyncio.wait_for(task, 1.0)


async def test_a_capped_line_item_leaves_its_slot_to_another_ad() -> None:
    """A cap already reached is seen before the pod is built (the prefetched counters), so
    another ad takes the slot, rather than the capped one winning it and being refused at
    commit, which leaves the slot empty."""
    svc, clock = _setup(
        _with_li_a(frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}])
    )
    assert await _serve_and_confirm(svc, request("v", max_ads=1)) == ["li-a"]
    clock.now += timedelta(hours=1)
    d = await svc.decide(request("v", max_ads=1))
    assert [a.candidate.line_item.id for a in d.ads] == ["li-b"]


@pytest.mark.parametrize(
    ("per_ad", "per_s", "served"),
    [
        (20.0, None, True),  # a price equal to bidfloor meets it
        (20.01, None, False),
        (None, 20.0 / 15, True),  # 15 s at mincpmpersec: exactly the price
        (None, 20.01 / 15, False),
    ],
)
async def test_a_floor_is_met_by_a_price_equal_to_it(
    per_ad: float | None, per_s: float | None, served: bool
) -> None:
    svc, _ = _setup(base_catalog())
    req = replace(request("v", max_ads=1), floor_cpm=per_ad, floor_cpm_per_s=per_s)
    d = await svc.decide(req, explain=True)
    assert ([a.candidate.line_item.id for a in d.ads] == ["li-a"]) is served
    reason = {t.line_item_id: t.reason for t in d.traces}["li-a"]
    assert reason is (None if served else Reason.BELOW_FLOOR)


@pytest.mark.parametrize(("per_ad", "served"), [(None, True), (0.01, False), (5.0, False)])
async def test_a_flat_line_item_meets_no_floor(per_ad: float | None, served: bool) -> None:
    """A flat line item's impression is billed nothing (its fee does not grow with them):
    its bid would carry price 0, below any non-zero floor, however high its value CPM."""
    cat = _with_li_a(pricing_model="flat", price=50_000.0, value_cpm=60.0)
    svc, _ = _setup(cat)
    d = await svc.decide(replace(request("v", max_ads=1), floor_cpm=per_ad), explain=True)
    assert ("li-a" in [a.candidate.line_item.id for a in d.ads]) is served
    reason = {t.line_item_id: t.reason for t in d.traces}["li-a"]
    assert reason is (None if served else Reason.BELOW_FLOOR)


@pytest.mark.parametrize(("per_s", "served"), [(20.0 / 30, True), (20.0 / 29.97, False)])
async def test_a_per_second_floor_counts_the_seconds_the_bid_states(
    per_s: float, served: bool
) -> None:
    """``mincpmpersec`` is met per second of the bid's whole seconds too (``bid.dur``: 30
    for a 29.97 s ad), since an exchange divides the bid's price by them."""
    cat = base_catalog()
    cat["creatives"][0]["duration"] = 29.97
    cat["line_items"][0]["price"] = 20.0
    svc, _ = _setup(cat)
    d = await svc.decide(replace(request("v", max_ads=1), floor_cpm_per_s=per_s), explain=True)
    assert ("li-a" in [a.candidate.line_item.id for a in d.ads]) is served


@pytest.mark.parametrize(
    ("ranges", "default", "served"),
    [
        (((1, 15, 20.0),), 0.0, True),  # 15 s in 1-15 (inclusive) at exactly the price
        (((1, 15, 20.01),), 0.0, False),
        (((16, 30, 50.0),), 0.0, True),  # in no range: the imp's bidfloor (none)
        (((16, 30, 50.0),), 20.01, False),  # in no range: the imp's bidfloor rules
        (((None, 15, 5.0), (10, None, 25.0)), 0.0, False),  # in both: the higher floor
        (((15, 15, 1.0),), 99.0, True),  # in a range: the imp's bidfloor does not apply
    ],
)
async def test_duration_floors_price_an_ad_by_its_seconds(
    ranges: tuple[tuple[int | None, int | None, float], ...], default: float, served: bool
) -> None:
    """OpenRTB ``imp.durfloors``: the floor of the range holding the ad's whole seconds
    (the highest where several do), else the imp's ``bidfloor``."""
    svc, _ = _setup(base_catalog())
    floors = (DurationFloors(ranges=ranges, default=default),)
    req = replace(request("v", max_ads=1), duration_floors=floors)
    d = await svc.decide(req, explain=True)
    assert ([a.candidate.line_item.id for a in d.ads] == ["li-a"]) is served
    reason = {t.line_item_id: t.reason for t in d.traces}["li-a"]
    assert reason is (None if served else Reason.BELOW_FLOOR)


async def test_every_imps_duration_floors_hold() -> None:
    """Any ad may fill any imp of the pod: it must reach each imp's floor for its length."""
    svc, _ = _setup(base_catalog())
    low = DurationFloors(ranges=((1, 30, 1.0),))
    high = DurationFloors(ranges=((1, 30, 25.0),))
    d = await svc.decide(replace(request("v", max_ads=1), duration_floors=(low, high)))
    assert "li-a" not in [a.candidate.line_item.id for a in d.ads]


async def test_daily_budget_counters_expire_and_lifetime_ones_do_not() -> None:
    """A daily budget's counter (one per line item and local day) lasts three days, else
    the store (Redis, the state file) would grow by a key a day per budget for good."""
    svc, clock = _setup(
        _with_li_a(
            pacing={"delivery": "asap", "budget": {"impressions": 100, "daily_impressions": 10}}
        )
    )
    assert "li-a" in await _serve_and_confirm(svc, request("v"))
    reads = [
        Read("li:li-a:ev:impression:d:2026-11-25", LIFETIME),
        Read("li:li-a:ev:impression", LIFETIME),
    ]
    store = svc.delivery.store
    assert await store.read(reads, clock.now.timestamp()) == [1, 1]
    clock.now += timedelta(days=3, hours=1)
    assert await store.read(reads, clock.now.timestamp()) == [0, 1]


def test_an_impression_spends_its_price_rounded_down_to_a_micro() -> None:
    """One rounding for every spend counter and budget check: down, never billing more
    than the price (a CPM of 20.000999 spends 20,000 micros an impression, not 20,001)."""
    assert spend_micros(20_000_999) == 20_000
    assert spend_micros(999) == 0


async def test_a_late_beacon_counts_on_the_day_its_ad_was_served() -> None:
    """An impression served before midnight and beaconed after it counts for the serve
    day (as its budget counters do), not the day it arrived."""
    svc, clock = _setup(base_catalog(), now=T0 - timedelta(minutes=1))  # 23:59 UTC
    d = await svc.decide(request("v", max_ads=1))
    clock.now = T0 + timedelta(minutes=2)  # 00:01 the next day
    tok = tokens_for(svc, d)[0]
    assert (await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)).counted
    li = d.ads[0].candidate.line_item.id
    day = (T0 - timedelta(minutes=1)).strftime("%Y-%m-%d")
    keys = [Read(f"li:{li}:ev:impression:d:{day}", LIFETIME)]
    store = svc.delivery.store
    assert await store.read(keys, clock.now.timestamp()) == [1]


@pytest.mark.parametrize("shared", ["rendition", "universal_ad_id", "none"])
async def test_creatives_showing_one_video_never_share_a_pod(shared: str) -> None:
    """Two advertisers' creatives that share a video file at one rendition (not at their
    first), or a Universal Ad Id, are one ad to the viewer: a pod holds one of them."""
    cat = base_catalog()
    cat["line_items"][1].update(tier="standard", price=10)
    a, b = cat["creatives"]
    one = {
        "url": "https://cdn.example.com/shared/1080.mp4",
        "mime": "video/mp4",
        "width": 1920,
        "height": 1080,
        "bitrate_kbps": 5000,
    }
    if shared == "rendition":
        a["renditions"] = [copy.deepcopy(a["renditions"][0]), one]
        b["renditions"] = [one]
    elif shared == "universal_ad_id":
        b["universal_ad_id"] = a["universal_ad_id"]
    svc, _ = _setup(cat)
    d = await svc.decide(request("v0", pod_s=30, max_ads=2))
    got = [a.candidate.creative.id for a in d.ads]
    if shared == "none":
        assert got == ["cr-a", "cr-b"]
    else:
        assert got == ["cr-a"]
        reasons = {t.creative_id: t.reason for t in d.traces}
        assert reasons["cr-b"] is Reason.DUPLICATE_CREATIVE


@pytest.mark.parametrize(("seconds", "fits"), [(15.2, True), (15.5, True), (15.6, False)])
async def test_an_ad_longer_than_a_fractional_break_is_longer_than_the_pod(
    seconds: float, fits: bool
) -> None:
    """A single ad fits a break by its exact length: a 15.2 s or 15.5 s ad plays in a 15.5 s
    break (it used to be counted as 16 whole seconds against 15, and refused), a 15.6 s ad
    does not, and its trace says so (not ``not_selected``, as if it were outbid)."""
    cat = _with_li_a()
    cat["creatives"][0]["duration"] = seconds
    svc, _ = _setup(cat)
    req = request("v0", pod_s=30, max_ads=2)
    req = replace(req, brk=replace(req.brk, pod_duration_ms=15_500))
    d = await svc.decide(req, explain=True)  # every candidate traced
    assert ("li-a" in [a.candidate.line_item.id for a in d.ads]) is fits
    if not fits:
        assert {t.line_item_id: t.reason for t in d.traces}["li-a"] is Reason.LONGER_THAN_POD


@pytest.mark.parametrize("flat", [False, True])
async def test_an_outage_stops_what_would_spend_but_not_a_flat_line_item(flat: bool) -> None:
    """With the store down (read and commit), budgets fail closed for what an impression
    would move: a CPM line item under a campaign spend budget stops; a flat one, which
    spends nothing, serves on."""
    cat = _with_li_a(**({"pricing_model": "flat"} if flat else {}))
    cat["campaigns"][0]["budget"] = {"spend": 100.0}
    svc, _ = _setup(cat)

    async def down(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable("down")

    svc.delivery.store.read = down
    svc.delivery.store.commit = down
    d = await svc.decide(request("v0"))
    assert ("li-a" in [a.candidate.line_item.id for a in d.ads]) == flat
    assert svc.delivery.store_errors == 2


async def test_store_failures_are_logged_sampled(caplog: pytest.LogCaptureFixture) -> None:
    """An outage fails every request: each failure is counted, the first few each second
    are logged (with the operation and the error), not all of them."""
    import logging

    svc, _ = _setup(_with_li_a(**_CAPPED_AND_BUDGETED))

    async def down(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable("connection refused")

    svc.delivery.store.commit = down
    svc.delivery.store.read = down
    with caplog.at_level(logging.WARNING, logger="vastserver.delivery"):
        for i in range(40):
            await svc.decide(request(f"v{i}"))
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "store_error"]
    assert svc.delivery.store_errors == 80  # a read and a commit a request
    assert 1 <= len(logged) <= 20
    fields = logged[0].fields  # type: ignore[attr-defined]
    assert fields["op"] in ("delivery", "commit") and "connection refused" in fields["error"]


async def test_a_budget_near_its_end_is_read_on_every_request() -> None:
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": ROOMY_IMPRESSIONS - 1}})
    svc, clock = _setup(cat)
    read_keys = _spy_reads(svc.delivery.store)
    for i in range(3):
        clock.now = T0 + timedelta(milliseconds=10 * i)
        await svc.decide(request(f"v{i}"))
        assert "li:li-a:ev:impression" in read_keys[-1]


async def test_budget_holds_under_parallel_burst() -> None:
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 10}})
    svc, _ = _setup(cat)
    decisions = await asyncio.gather(*(svc.decide(request(f"v{i}")) for i in range(80)))
    served = sum("li-a" in [a.candidate.line_item.id for a in d.ads] for d in decisions)
    assert served == 10


async def test_even_pacing_tracks_the_daily_curve() -> None:
    """A day of traffic (3x the budget's worth) against an even line item: at every hour the
    delivery stays within 3 % of the daily budget from the target curve, and never over."""
    budget = 1000
    cat = _with_li_a(pacing={"delivery": "even", "budget": {"daily_impressions": budget}})
    svc, clock = _setup(cat)
    rng = random.Random(7)
    delivered = 0
    for minute in range(24 * 60):
        clock.now = T0 + timedelta(minutes=minute)
        await svc.delivery.update_pacing(svc.snapshot.catalog)
        n = rng.gauss(3 * budget * HOURLY_TRAFFIC[minute // 60] / 60, 0.5)
        for k in range(max(0, round(n))):
            clock.now = T0 + timedelta(minutes=minute, seconds=k)
            delivered += "li-a" in await _serve_and_confirm(svc, request(f"v{minute}-{k}"))
        if minute % 60 == 59:
            clock.now = T0 + timedelta(minutes=minute, seconds=59.999)
            target = budget * daily_target_fraction(clock.now, "UTC", Delivery.EVEN)
            assert abs(delivered - target) <= 0.03 * budget, (minute // 60, delivered, target)
    assert budget * 0.97 <= delivered <= budget * 1.01


async def test_flat_line_item_spends_nothing_and_keeps_its_impression_budget() -> None:
    """A flat fee does not grow with impressions: a flat line item's impressions move no
    spend budget (not even its campaign's), its VAST price is 0, and impression budgets
    still bind. The CPM control under the same campaign budget stops at the budget."""
    spend_budget = {"spend": 0.04}  # two impressions at a $20 CPM

    cpm = _with_li_a()
    cpm["campaigns"][0]["budget"] = spend_budget
    svc, _ = _setup(cpm)
    served = [("li-a" in await _serve_and_confirm(svc, request(f"c{i}"))) for i in range(4)]
    assert served == [True, True, False, False]

    flat = _with_li_a(pricing_model="flat", pacing={"budget": {"impressions": 3}})
    flat["campaigns"][0]["budget"] = spend_budget
    svc, _ = _setup(flat)
    prices = []
    for i in range(5):
        d = await svc.decide(request(f"f{i}"))
        prices += [a.price_cpm for a in d.ads if a.candidate.line_item.id == "li-a"]
        for tok in tokens_for(svc, d):
            assert tok.price_micros == 0 or tok.line_item_id != "li-a"
            await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert prices == [0.0, 0.0, 0.0]  # the impression budget (3) binds, spend does not
    [row] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert row["delivered_impressions"] == 3 and row["spend"] == 0


async def test_spend_follows_the_billed_price_across_a_reload_to_flat(tmp_path: Any) -> None:
    """A serve reserves spend at its billed price; when a reload turns the line item flat
    before the impression, the impression still converts that reservation (the token's
    price decides, not the new catalog), so nothing is left reserved or counted twice."""
    cat = _with_li_a()
    cat["campaigns"][0]["budget"] = {"spend": 1.0}
    svc, _ = _setup(cat)
    d = await svc.decide(request("r1"))
    [tok] = [t for t in tokens_for(svc, d) if t.line_item_id == "li-a"]
    assert tok.price_micros == 20_000_000
    keys = [
        Read("cp:cmp-a:spend:life", LIFETIME),
        Read("cp:cmp-a:spend:life:r", RESERVATION_WINDOW),
    ]
    now = svc.clock().timestamp()
    assert await svc.delivery.store.read(keys, now) == [0, 20_000]  # reserved at $20 CPM
    flat = _with_li_a(pricing_model="flat")
    flat["campaigns"][0]["budget"] = {"spend": 1.0}
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(flat))
    svc.reload_catalog(path)
    result = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
    assert result.counted, result
    assert await svc.delivery.store.read(keys, now) == [20_000, 0]


async def test_admin_view_fields() -> None:
    cat = _with_li_a(
        pacing={"delivery": "even", "budget": {"impressions": 500}},
        frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}],
    )
    svc, _ = _setup(cat)
    await _serve_and_confirm(svc, request("v1"))
    await _serve_and_confirm(svc, request("v1"))
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    [row] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    for key in (
        "id",
        "budget",
        "served",
        "delivered_impressions",
        "completes",
        "spend",
        "target_now",
        "throttle",
        "cap_hits",
    ):
        assert key in row
    assert row["served"] == 1 and row["delivered_impressions"] == 1
    assert row["spend"] == pytest.approx(0.02) and row["currency"] == "USD"  # at a $20 CPM
    assert row["cap_hits"] == 1
    assert row["budget"]["impressions"] == 500
    # the pass's allowance, and what is left of it: one less after each serve
    allowance = svc.delivery.pacing["li-a"].allowance
    assert allowance is not None and allowance >= 1
    assert row["allowance"] == row["allowance_left"] == allowance
    await _serve_and_confirm(svc, request("v2"))
    [row] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
    assert (row["allowance"], row["allowance_left"]) == (allowance, allowance - 1)
    text = svc.metrics.render().decode()
    assert 'vastserver_line_item_delivered_impressions{line_item="li-a"} 1.0' in text
    assert 'vastserver_line_item_throttle{line_item="li-a"}' in text
    assert f'vastserver_line_item_pacing_allowance{{line_item="li-a"}} {allowance}.0' in text
    assert 'line_item="li-b"' not in text  # no budget: no per-line-item series


def test_catalog_copy_is_untouched() -> None:
    a = base_catalog()
    b = copy.deepcopy(a)
    _with_li_a(price=1)
    assert a == b


async def test_completion_rates_cover_line_items_this_instance_has_not_served() -> None:
    """After a restart (state file, Redis) or on another worker, the shared counters hold
    a line item's completes, but only line items served here were read: the model got no
    rate where training gave it one (a reviewer found it). The first pass reads them all,
    then those with impressions, and all again every RATES_SCAN_S."""
    from vastserver.delivery import RATES_SCAN_S
    from vastserver.pipeline.delivery import event_key as _ev_key

    svc, clock = _setup(base_catalog())
    d = svc.delivery
    cat = svc.snapshot.catalog
    a, b = sorted(cat.line_items)[:2]
    now = clock.now.timestamp()
    await d.store.add(
        [
            Incr(_ev_key(a, "impression"), LIFETIME, 1000),
            Incr(_ev_key(a, "complete"), LIFETIME, 900),
        ],
        now,
    )
    assert not d.active
    await d.update_rates(cat)
    assert d.completion_rates == {a: 0.9}
    # another instance serves b meanwhile: seen on the next full pass, not before
    await d.store.add(
        [Incr(_ev_key(b, "impression"), LIFETIME, 100), Incr(_ev_key(b, "complete"), LIFETIME, 50)],
        now,
    )
    clock.now += timedelta(seconds=RATES_SCAN_S - 1)
    await d.update_rates(cat)
    assert d.completion_rates == {a: 0.9}
    clock.now += timedelta(seconds=1)  # the injected clock, as the simulator's
    await d.update_rates(cat)
    assert d.completion_rates == {a: 0.9, b: 0.5}


async def test_a_lifetime_cap_counter_expires_a_year_after_the_last_impression() -> None:
    """Each viewer keeps a counter per capped scope; "lifetime" ones had no expiry, so Redis
    and the state file grew for good with viewers long gone (a reviewer found it). They now
    last LIFETIME_CAP_TTL_S (366 days) after the viewer's last impression in the scope."""
    from vastserver.pipeline.delivery import LIFETIME_CAP_TTL_S

    cat = _with_li_a(frequency_caps=[{"scope": "line_item", "max": 1, "window": "lifetime"}])
    cat["campaigns"][0]["end"] = "2029-12-31T23:59:59Z"
    cat["line_items"][0]["end"] = "2029-12-31T23:59:59Z"
    svc, clock = _setup(cat, separation=False)
    assert "li-a" in await _serve_and_confirm(svc, request("v"))
    clock.now += timedelta(days=300)
    assert "li-a" not in await _serve_and_confirm(svc, request("v"))  # capped for good...
    keys = [k for k in svc.delivery.store._data if ":lifetime:v:" in k and k.endswith(":i")]
    assert len(keys) == 1
    clock.now += timedelta(seconds=LIFETIME_CAP_TTL_S - 300 * 86400 + 60)
    assert "li-a" in await _serve_and_confirm(svc, request("v"))  # ...until the key expired


@pytest.mark.parametrize(
    ("tz", "day"),
    [("America/New_York", "2026-11-01"), ("America/New_York", "2026-03-08"),
     ("Europe/Berlin", "2026-10-25"), ("Europe/Berlin", "2026-03-29")],
)  # fmt: skip
def test_the_daily_target_never_steps_back_across_a_clock_change(tz: str, day: str) -> None:
    """At the fall-back the local hour repeats: the even target read the repeated hour as
    new and stepped back (0.028 to 0.0215), throttling the line item for an hour (a
    reviewer found it). At the spring-forward the skipped hour's share was added at once
    (01:59:59 0.0344, 03:00:00 0.0430). Minute by minute over both clock-change days it
    only grows, smoothly."""
    from zoneinfo import ZoneInfo

    local_midnight = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(tz))
    t = local_midnight.astimezone(UTC)
    last = -1.0
    for _ in range(26 * 60):
        f = daily_target_fraction(t, tz, Delivery.EVEN)
        if t.astimezone(ZoneInfo(tz)).date() == local_midnight.date():
            assert f >= last, (t, f, last)
            # nor jumps: a minute adds at most about a minute of the busiest hour
            assert last < 0 or f - last <= 2 * max(HOURLY_SHARE) / 60, (t, f, last)
            last = f
        t += timedelta(minutes=1)
    assert last > 0.99


async def test_a_match_behind_a_group_of_dayparted_line_items_still_serves() -> None:
    """Six dearer line items of one advertiser outside their daypart and a seventh with none:
    the selection passed over a group's match after six matches of it, counted before their
    daypart check, so the one line item allowed to serve was lost as outranked (no fill)."""
    cat = base_catalog()
    tmpl = cat["line_items"][0]
    cat["line_items"] = [
        {**tmpl, "id": f"li-{n}", "price": 80 - 10 * n, "creative_ids": ["cr-a"]}
        | ({"targeting": {"dayparts": [{"start_hour": 12, "end_hour": 13}]}} if n < 7 else {})
        for n in range(1, 8)
    ]
    svc, _ = _setup(cat)  # at midnight UTC: no daypart holds
    d = await svc.decide(request("v", max_ads=1), explain=True)
    assert [a.candidate.line_item.id for a in d.ads] == ["li-7"]
    reasons = {t.line_item_id: t.reason for t in d.traces}
    assert {reasons[f"li-{n}"] for n in range(1, 7)} == {Reason.DAYPART}


async def test_separation_keeps_out_another_creative_of_the_same_ad() -> None:
    """Two creatives of one Universal Ad Id are one ad to the viewer: the one shown at
    avail 0 kept its twin (another line item, advertiser and creative id) out of the pod
    but not out of the next break, which showed the same spot again."""
    cat = base_catalog()
    cat["creatives"][1]["universal_ad_id"] = cat["creatives"][0]["universal_ad_id"]
    cat["advertisers"][1]["competitive_category"] = None  # no competitive label shared
    cat["line_items"][1].update(tier="standard", price=10)
    svc, clock = _setup(cat)

    async def at(avail: int) -> tuple[list[str], dict[str, Reason | None]]:
        req = request("v", max_ads=1, session="s-twins")
        req = replace(req, brk=replace(req.brk, avail=avail))
        d = await svc.decide(req, explain=True)
        return [a.candidate.line_item.id for a in d.ads], {
            t.line_item_id: t.reason for t in d.traces
        }

    assert (await at(0))[0] == ["li-a"]
    clock.now += timedelta(minutes=1)
    served, reasons = await at(1)
    assert served == [] and reasons["li-b"] is Reason.STREAM_SEPARATION
    clock.now += timedelta(minutes=31)
    assert (await at(4))[0] == ["li-a"]  # out of the window: the dearer twin again


def test_separation_without_avail_is_by_time_only() -> None:
    """No ``avail`` (None): breaks cannot be counted; a creative and its competitive category
    are avoided for ``creative_minutes``, not for the session's whole history."""
    now = 1_800_000_000.0
    rules = SeparationRules()
    old = history_entries(0, now - 3 * 3600, [("cr-car-30", {"auto"})])
    assert recent_from_history(old, None, now, rules) == (frozenset(), frozenset())
    new = history_entries(0, now - 10 * 60, [("cr-car-30", {"auto"})])
    assert recent_from_history(new, None, now, rules) == ({"cr-car-30"}, {"auto"})
    assert recent_from_history(new, None, now, SeparationRules(competitive_breaks=0)) == (
        {"cr-car-30"},
        frozenset(),
    )
    # with avail the break rule holds, however old the break
    assert recent_from_history(old, 1, now, rules) == ({"cr-car-30"}, {"auto"})
    assert recent_from_history(old, 3, now, rules) == (frozenset(), frozenset())


def test_separation_by_breaks_goes_both_ways() -> None:
    """A stitcher fetching ahead may ask for avail 5 before avail 4: the earlier break then
    keeps out the creative and the competitive label the later one showed, as the later
    would have kept out the earlier's (it used to count only breaks before it)."""
    now = 1_800_000_000.0
    rules = SeparationRules(creative_breaks=3, creative_minutes=0, competitive_breaks=1)
    shown_at_5 = history_entries(5, now - 5, [("cr-beer-15", {"beer"})])
    assert recent_from_history(shown_at_5, 4, now, rules) == ({"cr-beer-15"}, {"beer"})
    assert recent_from_history(shown_at_5, 3, now, rules) == ({"cr-beer-15"}, frozenset())
    assert recent_from_history(shown_at_5, 2, now, rules) == (frozenset(), frozenset())
    assert recent_from_history(shown_at_5, 6, now, rules) == ({"cr-beer-15"}, {"beer"})


def test_history_keeps_every_competitive_label_of_an_ad() -> None:
    """An ad with several labels (its advertiser's, its line item's, its creative's) keeps
    each out of the next breaks; entries of one category (written before labels) still read."""
    now = 1_800_000_000.0
    rules = SeparationRules(competitive_breaks=1)
    shown = [("cr-pub-15", frozenset({"restaurants", "beer"})), ("cr-tv-30", frozenset())]
    entries = history_entries(4, now - 60, shown)
    assert entries == [
        f"4|{now - 60:.3f}|cr-pub-15|beer,restaurants",
        f"4|{now - 60:.3f}|cr-tv-30|",
    ]
    assert recent_from_history(entries, 5, now, rules)[1] == {"beer", "restaurants"}
    assert recent_from_history(entries, 6, now, rules)[1] == frozenset()
    single = [f"4|{now - 60:.3f}|cr-car-30|auto"]
    assert recent_from_history(single, 5, now, rules)[1] == {"auto"}


async def test_a_scrape_during_the_pacing_export_sees_every_series() -> None:
    cat = base_catalog()
    li_a = cat["line_items"][0]
    li_a["pacing"] = {"delivery": "even", "budget": {"impressions": 500}}
    ids = [f"li-p{k}" for k in range(250)]  # more than two export chunks
    cat["line_items"] = [{**copy.deepcopy(li_a), "id": li_id} for li_id in ids]
    svc, _ = _setup(cat)
    svc.delivery.active.update(ids)  # as if this instance had served each
    await svc.delivery.update_pacing(svc.snapshot.catalog)

    def series() -> int:
        text = svc.metrics.render().decode()
        return sum(f'vastserver_line_item_throttle{{line_item="{i}"}}' in text for i in ids)

    assert series() == len(ids)
    seen: list[int] = []
    task = asyncio.create_task(svc.delivery.update_pacing(svc.snapshot.catalog))
    while not task.done():  # a scrape at each point where the pass yields
        seen.append(series())
        await asyncio.sleep(0)
    await task
    assert len(seen) > 3 and set(seen) == {len(ids)}
    assert series() == len(ids)


async def _pass_counting_yields(svc: Any) -> int:
    """Run one pacing pass, counting the times it let another task run."""
    turns = 0
    task = asyncio.create_task(svc.delivery.update_pacing(svc.snapshot.catalog))
    while not task.done():
        turns += 1
        await asyncio.sleep(0)
    await task
    return turns


@pytest.mark.parametrize("first_pass", [True, False])
async def test_a_pacing_pass_yields_once_its_time_slice_is_spent(
    monkeypatch: pytest.MonkeyPatch, first_pass: bool
) -> None:
    """A chunk of 100 line items held the event loop 15-50 ms on the first pass after a
    start, a reload or a local midnight (budget checks and pacing curves computed then), and
    building the pass's sets at its end ~12 ms at 100k line items: requests waited behind
    it. The pass now yields whenever its slice (``SLICE_S``) is spent (checked every fourth
    line item paced); with a slice of 0 it yields that often, and the outcome is the same."""
    cat = base_catalog()
    li_a = cat["line_items"][0]
    li_a["pacing"] = {"delivery": "even", "budget": {"impressions": 500}}
    ids = [f"li-p{k}" for k in range(250)]
    cat["line_items"] = [{**copy.deepcopy(li_a), "id": li_id} for li_id in ids]
    cat["line_items"][3]["pacing"]["budget"] = {"impressions": 1}  # one exhausted
    outcomes = []
    turns = {}
    for slice_s in (1e9, 0.0):
        monkeypatch.setattr(delivery_mod, "SLICE_S", slice_s)
        svc, _ = _setup(copy.deepcopy(cat))
        svc.delivery.pacing["li-gone"] = LineItemPacing()  # a line item no longer in flight
        if not first_pass:
            await svc.delivery.update_pacing(svc.snapshot.catalog)
        await _serve_and_confirm(svc, request("v1"))
        turns[slice_s] = await _pass_counting_yields(svc)
        d = svc.delivery
        outcomes.append((dict(d.throttle), d.exhausted, d.paced, sorted(d.pacing)))
    assert outcomes[0] == outcomes[1]
    assert "li-gone" not in outcomes[0][3] and len(outcomes[0][3]) == len(ids)
    assert turns[1e9] < 20  # the chunks and scans: 3 chunks of 100
    assert turns[0.0] >= len(ids) // 4  # every 4th line item paced, and more


async def test_a_reload_that_renames_line_items_drops_their_pacing_state(
    tmp_path: Any,
) -> None:
    cat = _with_li_a(pacing={"delivery": "even", "budget": {"impressions": 500}})
    svc, _ = _setup(cat)
    for v in ("v1", "v2", "v3"):
        await _serve_and_confirm(svc, request(v))
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    assert "li-a" in svc.delivery.pacing and "li-a" in svc.delivery.active
    text = svc.metrics.render().decode()
    assert 'vastserver_line_item_throttle{line_item="li-a"}' in text
    assert 'vastserver_line_item_pacing_allowance{line_item="li-a"}' in text
    for li in cat["line_items"]:  # the trafficking system ends them and books new ones
        li["id"] = "new-" + li["id"]
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(cat))
    svc.reload_catalog(path)
    for v in ("v4", "v5"):
        await _serve_and_confirm(svc, request(v))
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    current = set(svc.snapshot.catalog.line_items)
    assert set(svc.delivery.pacing) <= current and "new-li-a" in svc.delivery.pacing
    assert svc.delivery.active <= current and svc.delivery.active
    text = svc.metrics.render().decode()
    assert 'line_item="li-a"' not in text  # its gauges went with it
    assert 'vastserver_line_item_throttle{line_item="new-li-a"}' in text


@pytest.mark.parametrize(
    ("li_budget", "campaign_budget", "room"),
    [
        ({"impressions": 3, "daily_impressions": 100}, None, 3),  # lifetime beside daily
        ({"daily_spend": 0.05}, None, 2),  # 0.02 an impression: a third would spend 0.06
        ({"spend": 0.04}, None, 2),
        (None, {"impressions": 2}, 2),  # the campaign's budget
        (None, {"daily_spend": 0.03}, 1),
    ],
)
async def test_a_line_item_is_exhausted_once_any_budget_serving_checks_is_used_up(
    li_budget: dict[str, Any] | None, campaign_budget: dict[str, Any] | None, room: int
) -> None:
    """/admin/line-items' ``exhausted`` and the exhausted gauge follow every budget the
    serve-time guard checks. Only the paced impression budget (the daily one beside a
    lifetime one) was: a line item serving refused showed ``exhausted: false``, and one with
    spend budgets alone had no gauge at all."""
    cat = _with_li_a()
    if li_budget is not None:
        cat["line_items"][0]["pacing"] = {"delivery": "asap", "budget": li_budget}
    if campaign_budget is not None:
        cat["campaigns"][0]["budget"] = campaign_budget
    svc, clock = _setup(cat)
    catalog = svc.snapshot.catalog

    def gauge() -> str:
        lines = svc.metrics.render().decode().splitlines()
        return next(
            (
                ln
                for ln in lines
                if ln.startswith('vastserver_line_item_exhausted{line_item="li-a"')
            ),
            "",
        )

    for i in range(room):
        await svc.delivery.update_pacing(catalog)
        [row] = await svc.delivery.line_item_stats(catalog, ["li-a"])
        assert row["exhausted"] is False
        clock.now = T0 + timedelta(seconds=i)
        assert "li-a" in await _serve_and_confirm(svc, request(f"v{i}"))
    clock.now = T0 + timedelta(minutes=1)
    await svc.delivery.update_pacing(catalog)
    [row] = await svc.delivery.line_item_stats(catalog, ["li-a"])
    assert row["delivered_impressions"] == room
    assert row["exhausted"] is True
    assert gauge().endswith(" 1.0")
    # serving refuses it for the same reason, before reading a counter
    assert _li_a_outcome(await svc.decide(request("fresh"), explain=True)) == (
        False,
        Reason.BUDGET_EXHAUSTED,
    )


async def test_the_pacing_pass_reads_each_budget_counter_once() -> None:
    """What the exhausted check costs the pass: a counter per budget serving checks, a
    campaign's once for all its line items; a paced line item reads its impression budget's
    counter once (the pacing compares it with the target as well), and its reservations
    (for its allowance) beside it."""
    cat = base_catalog()
    li_a = cat["line_items"][0]
    li_a["pacing"] = {"delivery": "even", "budget": {"daily_impressions": 50}}
    ids = [f"li-p{k}" for k in range(250)]  # more than two chunks
    cat["line_items"] = [{**copy.deepcopy(li_a), "id": li_id} for li_id in ids]
    cat["line_items"][0]["pacing"]["budget"]["spend"] = 5.0
    cat["campaigns"][0]["budget"] = {"impressions": 10_000}
    svc, _ = _setup(cat)
    read_keys = _spy_reads(svc.delivery.store)
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    keys = [k for chunk in read_keys for k in chunk]
    day = T0.strftime("%Y-%m-%d")
    want = {f"li:{i}:ev:impression:d:{day}" for i in ids} | {
        *(f"li:{i}:imp:d:{day}:r" for i in ids),
        "li:li-p0:spend_micros",
        "cp:cmp-a:imp:life",
    }
    assert sorted(keys) == sorted(want)


def _spend_budgeted(n: int, **li_fields: Any) -> dict[str, Any]:
    """``n`` line items with a lifetime and a daily spend budget each (nothing to pace)."""
    cat = base_catalog()
    li_a = cat["line_items"][0]
    li_a["pacing"] = {"delivery": "asap", "budget": {"spend": 5.0, "daily_spend": 1.0}}
    cat["line_items"] = [{**copy.deepcopy(li_a), "id": f"li-s{k}", **li_fields} for k in range(n)]
    return cat


async def test_the_budget_checks_a_pacing_pass_keeps_leave_the_collector_nothing() -> None:
    """The pass keeps each line item's budget checks for the day: as objects (a check and
    its two counter reads each) a 100k catalog's first pass left ~500k of them for the
    cyclic collector, which ran two full collections (~250 ms each, serving stalled) then
    and walked them in every full collection after. As plain tuples it tracks none."""
    n = 2000
    svc, _ = _setup(_spend_budgeted(n))
    catalog = svc.snapshot.catalog
    gc.collect()
    before = len(gc.get_objects())
    await svc.delivery.update_pacing(catalog)
    gc.collect()
    assert len(gc.get_objects()) - before < n // 2  # was 3 per line item and more
    # and they are the checks serving applies: both spend budgets, at the line item's price
    day = T0.strftime("%Y-%m-%d")
    micros = spend_micros(20_000_000)
    assert svc.delivery._budget_checks(
        catalog, catalog.line_items["li-s7"], catalog.campaigns["cmp-a"], day
    ) == (
        ("li:li-s7:spend_micros", micros, 5_000_000),
        (f"li:li-s7:spend:d:{day}", micros, 1_000_000),
    )


async def test_the_scans_of_a_pacing_pass_yield_to_serving() -> None:
    """Finding the budgeted line items (once per snapshot) and those in flight (every pass)
    scans the catalog: 100k line items took ~60 ms with no yield, serving stalled."""
    n = 3500
    svc, _ = _setup(_spend_budgeted(n, end="2026-06-01T00:00:00Z"))  # all ended: no reads
    done, turns = False, 0

    async def other() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    async def pacing() -> None:
        nonlocal done
        await svc.delivery.update_pacing(svc.snapshot.catalog)
        done = True

    await asyncio.gather(pacing(), other())
    assert turns >= 2 * (n // 1000)


def _brute_traffic(tz: str, dayparts: tuple[Daypart, ...], start: float, end: float) -> float:
    """Expected traffic of ``[start, end)`` summed minute by minute from the CTV day and the
    serve-time daypart test: what :class:`PacingCurve` must equal."""
    zone, total, t = ZoneInfo(tz), 0.0, start
    while t < end:
        at = datetime.fromtimestamp(t, UTC)
        if not dayparts or any(_in_daypart(dp, at, tz) for dp in dayparts):
            total += HOURLY_SHARE[at.astimezone(zone).hour] / 60
        t += 60
    return total


_KOLKATA_MONDAY = Daypart(frozenset({0}), 5, 9, "Asia/Kolkata")
_NY_WEEKEND = Daypart(frozenset({5, 6}), 18, 23, "America/New_York")


@pytest.mark.parametrize(
    ("tz", "dayparts", "start", "hours"),
    [("America/Santiago", (Daypart(frozenset(range(7)), 0, 2),), "2026-09-05T20:15:00Z", 48),
     ("America/Santiago", (), "2026-04-04T12:00:00Z", 30),
     ("Australia/Lord_Howe", (), "2026-10-03T10:30:00Z", 30),
     ("Europe/London", (_KOLKATA_MONDAY,), "2026-03-28T18:45:00Z", 60),
     ("Asia/Kathmandu", (_NY_WEEKEND,), "2026-12-30T06:00:00Z", 72),
     ("America/New_York", (), "2026-10-31T23:00:00Z", 30)],
)  # fmt: skip
def test_the_pacing_curve_is_the_minute_by_minute_traffic(
    tz: str, dayparts: tuple[Daypart, ...], start: str, hours: int
) -> None:
    """Across clock changes (Santiago's skipped midnight, Lord Howe's half hour, a daypart
    in another zone) and a new year, the curve's traffic of a period is the brute-force
    integral."""
    pacing_curve.cache_clear()
    c = pacing_curve(tz, dayparts)
    s = datetime.fromisoformat(start).timestamp()
    e = s + hours * 3600
    assert c.at(e) - c.at(s) == pytest.approx(_brute_traffic(tz, dayparts, s, e), abs=1e-9)


@pytest.mark.parametrize(
    ("tz", "dayparts"),
    [("Africa/Casablanca", ()), ("America/Santiago", (Daypart(frozenset(range(7)), 0, 2),)),
     ("Asia/Gaza", ()), ("Europe/London", (Daypart(frozenset({0, 4}), 5, 9, "Asia/Kolkata"),))],
)  # fmt: skip
def test_the_pacing_curve_over_years_is_the_sum_of_its_days(
    tz: str, dayparts: tuple[Daypart, ...]
) -> None:
    """Over years (Casablanca's clock changes around Ramadan, Gaza's, Santiago's at
    midnight) and in years the curve knows by their calendar (from 2100), the curve adds up
    its days as a walk day by day does."""
    pacing_curve.cache_clear()
    c = pacing_curve(tz, dayparts)

    def walk(first: date, last: date) -> float:
        return sum(c.day(o).cum[-1] for o in range(first.toordinal(), last.toordinal()))

    def curve(first: date, last: date) -> float:
        return c.before(last.toordinal()) - c.before(first.toordinal())

    spans = [
        (date(2025, 6, 3), date(2029, 2, 11)),
        (date(2101, 1, 1), date(2102, 3, 1)),
        (date(2543, 2, 27), date(2544, 1, 5)),
        (date(2029, 1, 1), date(2027, 5, 5)),
    ]
    for first, last in spans:
        want = walk(first, last) if first <= last else -walk(last, first)
        assert curve(first, last) == pytest.approx(want, rel=1e-12)
    # a year from 2100 on is worth any other with its calendar (same weekday, both leap)
    weekday = date(2104, 1, 1).weekday()
    twin = next(y for y in range(2960, 3000) if date(y, 1, 1).weekday() == weekday and y % 4 == 0)
    assert curve(date(2104, 1, 1), date(2105, 1, 1)) == pytest.approx(
        walk(date(twin, 1, 1), date(twin + 1, 1, 1)), rel=1e-12
    )


def test_a_flight_ending_far_off_costs_no_more_than_a_near_one(monkeypatch: Any) -> None:
    """The curve walked day by day from its origin: a flight ending in 2999 stalled the
    pacing pass for seconds (12 such line items: 16 s). Now the days it looks at are a few
    per year up to 2100 and a few per kind of year after, however far the end."""
    calls = 0
    day = PacingCurve.day

    def counted(self: PacingCurve, ordinal: int) -> Any:
        nonlocal calls
        calls += 1
        return day(self, ordinal)

    monkeypatch.setattr(PacingCurve, "day", counted)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = datetime(2026, 11, 27, 8, tzinfo=UTC)
    near = target_fraction(
        now, start, datetime(2027, 1, 1, tzinfo=UTC), Delivery.EVEN, "America/New_York"
    )
    for tz in ("America/New_York", "America/Sao_Paulo"):
        pacing_curve.cache_clear()
        calls = 0
        end = datetime(2999, 12, 31, 23, tzinfo=UTC)
        far = target_fraction(
            now, start, end, Delivery.EVEN, tz, (Daypart(frozenset({1, 2}), 6, 23),)
        )
        assert calls < 3000, calls  # day by day: over 356,000
        assert 0 < far < near / 500


async def test_an_exhausted_line_item_shows_on_an_instance_that_never_served_it() -> None:
    """Serving refuses an exhausted line item, so an instance that had not served it (a
    restart, another worker) never counted it as its own and never exported the gauge: the
    line item was refused with no ``exhausted`` series. Now every exhausted one shows."""
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 5}})
    svc, _ = _setup(cat)
    await svc.delivery.store.add([Incr("li:li-a:ev:impression", LIFETIME, 5)], T0.timestamp())
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    assert "li-a" in svc.delivery.exhausted and "li-a" not in svc.delivery.active
    text = svc.metrics.render().decode()
    assert 'vastserver_line_item_exhausted{line_item="li-a"} 1.0' in text
    assert 'vastserver_line_item_throttle{line_item="li-a"}' in text


@pytest.mark.parametrize(("room_cpm", "exhausted"), [(7.0, False), (4.0, True)])
async def test_exhaustion_is_judged_at_the_cheapest_slot_price(
    room_cpm: float, exhausted: bool
) -> None:
    """A $10 line item whose first slot bills $5, with a spend budget that has room for a
    $5 impression but not a $10 one: the pass judged it at $10 and refused it in every slot,
    though serving would allow a first-slot impression. It is exhausted only when not even
    the cheapest slot's impression fits."""
    cat = _with_li_a(
        price=10.0,
        slot_prices={"first": 5.0},
        pacing={"delivery": "asap", "budget": {"spend": 1000}},
    )
    svc, _ = _setup(cat)
    used = 1000 * 1_000_000 - spend_micros(round(room_cpm * 1_000_000))
    await svc.delivery.store.add([Incr("li:li-a:spend_micros", LIFETIME, used)], T0.timestamp())
    await svc.delivery.update_pacing(svc.snapshot.catalog)
    assert ("li-a" in svc.delivery.exhausted) is exhausted


# ------------------------------------------------------- refusals take no competitor's place


def _crowded_group(n_creatives: int = 3, *, tied: bool = False, **li_a: Any) -> dict[str, Any]:
    """li-a, guaranteed with ``n_creatives`` creatives (of 15, 16, 17... s, or all of 15 s
    when ``tied``), and li-c, a standard competitor of 15 s (the same competitive category,
    so one separation group): the selection keeps at most 3 candidates a group, all li-a's
    when their lengths differ (creatives of one line item and length share a place)."""
    cat = base_catalog()
    cat["advertisers"].append(
        {"id": "adv-c", "name": "C", "domain": "c.example", "competitive_category": "auto"}
    )
    cat["campaigns"].append({**cat["campaigns"][1], "id": "cmp-c", "advertiser_id": "adv-c"})
    more = [f"cr-a{k}" for k in range(2, n_creatives + 1)]
    cat["creatives"] += [
        *(_creative(cid, "adv-a", f"AAAA000{k}000H") for k, cid in enumerate(more, 2)),
        _creative("cr-c", "adv-c", "CCCC0001000H"),
    ]
    for k, cr in enumerate(c for c in cat["creatives"] if c["advertiser_id"] == "adv-a"):
        cr["duration"] = 15 if tied else 15 + k
    cat["line_items"][0].update(tier="guaranteed", creative_ids=["cr-a", *more], **li_a)
    cat["line_items"].append(
        {
            "id": "li-c",
            "campaign_id": "cmp-c",
            "name": "C",
            "tier": "standard",
            "price": 10,
            "creative_ids": ["cr-c"],
        }
    )
    return cat


def _ads(d: Any) -> list[str]:
    return [a.candidate.line_item.id for a in d.ads]


@pytest.mark.parametrize("n_creatives", [3, 6])
async def test_a_capped_line_item_with_several_creatives_leaves_the_break_to_a_competitor(
    n_creatives: int,
) -> None:
    """The three places of a separation group went to a line item's creatives before the
    viewer's caps were read: once she had seen it, its competitor was ``outranked`` and the
    break went unfilled. The counters now send the selection round again without it (without
    any of its creatives: a line item cap refuses them all, and with six the second round
    took the next three)."""
    cap = {"scope": "line_item", "max": 1, "window": "1d"}
    svc, _ = _setup(_crowded_group(n_creatives, frequency_caps=[cap]))
    one = request("v", pod_s=30, max_ads=1)
    assert await _serve_and_confirm(svc, one) == ["li-a"]
    assert _ads(await svc.decide(one)) == ["li-c"]
    assert svc.metrics.refills._value.get() == 1
    assert svc.delivery.cap_hits["li-a"] == 3  # its three creatives, refused by their caps
    d = await svc.decide(one, explain=True)
    assert _ads(d) == ["li-c"]
    assert (
        sorted(t.reason.value for t in d.traces if t.line_item_id == "li-a" and t.reason)
        == ["frequency_cap"] * n_creatives
    )
    # a viewer who has not seen li-a gets it, with no second selection
    assert _ads(await svc.decide(request("w", pod_s=30, max_ads=1))) == ["li-a"]
    assert svc.metrics.refills._value.get() == 2  # (the explained decision's)


async def test_a_throttled_line_item_with_several_creatives_leaves_the_break_to_a_competitor() -> (
    None
):
    """Pacing throttled a line item after the selection kept three of its creatives in a
    group of three: its competitor was ``outranked``. The throttle is now drawn before."""
    svc, _ = _setup(_crowded_group())
    svc.delivery.throttle = {"li-a": 0.0}
    svc.delivery.paced = frozenset({"li-a"})
    before = {r: svc.metrics.rejected[r]._value.get() for r in Reason}
    assert _ads(await svc.decide(request("v", pod_s=30, max_ads=1))) == ["li-c"]
    moved = {r: svc.metrics.rejected[r]._value.get() - n for r, n in before.items()}
    assert moved[Reason.PACING_THROTTLE] == 3
    assert svc.metrics.refills._value.get() == 0


async def test_a_throttle_is_drawn_once_a_request_for_a_line_item_with_several_creatives() -> None:
    """Each creative drew the throttle again, so a line item of three creatives throttled to
    0.5 passed 1 - 0.5**3 = 87.5 % of requests, and the controller's tuning depended on how
    many creatives a line item has."""
    svc, _ = _setup(_crowded_group())
    svc.delivery.throttle = {"li-a": 0.5}
    svc.delivery.paced = frozenset({"li-a"})
    n = 2000
    served = 0
    for i in range(n):
        served += _ads(await svc.decide(request(f"v{i}", pod_s=30, max_ads=1))) == ["li-a"]
    assert abs(served / n - 0.5) < 0.05  # binomial sd 0.011


async def test_when_the_second_selection_cannot_read_its_counters_the_first_stands() -> None:
    cap = {"scope": "line_item", "max": 1, "window": "1d"}
    svc, _ = _setup(_crowded_group(frequency_caps=[cap]))
    one = request("v", pod_s=30, max_ads=1)
    assert await _serve_and_confirm(svc, one) == ["li-a"]
    store = svc.delivery.store
    real = store.read
    calls = 0

    async def second_read_fails(reads: Any, now: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreUnavailable("down")
        return await real(reads, now)

    store.read = second_read_fails
    d = await svc.decide(one)
    assert calls == 2 and "li-c" not in _ads(d) and "li-a" not in _ads(d)
    assert svc.metrics.degradations.labels("refill_skipped")._value.get() == 1
    assert svc.metrics.refills._value.get() == 0
    assert svc.delivery.cap_hits["li-a"] == 3  # refused in the decision, as before


async def test_with_the_store_down_a_budgeted_line_item_leaves_the_break_to_a_competitor() -> None:
    """Budgets fail closed with the store down, but the budgeted line item's creatives still
    took their group's three places: its unbudgeted competitor was ``outranked`` and a
    house ad played. The selection runs again without them, reading nothing."""
    budget = {"delivery": "asap", "budget": {"impressions": 1000}}
    svc, _ = _setup(_crowded_group(pacing=budget))
    one = request("v", pod_s=30, max_ads=1)
    assert _ads(await svc.decide(one)) == ["li-a"]

    async def down(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("down")

    svc.delivery.store.read = down
    assert _ads(await svc.decide(request("w", pod_s=30, max_ads=1))) == ["li-c"]
    assert svc.metrics.refills._value.get() == 1


async def test_a_line_items_creatives_of_one_length_all_rotate_and_share_one_place() -> None:
    """The selection kept at most 3 candidates a group by rank, so a line item's fourth and
    fifth creatives of the same length never served (rotation only saw the first three), and
    three such creatives took every place of their group. Creatives of one line item and
    length now take one place and rotate."""
    svc, _ = _setup(_crowded_group(5, tied=True))
    served: dict[str, int] = {}
    n = 1000
    for i in range(n):
        d = await svc.decide(request(f"v{i}", pod_s=30, max_ads=1))
        for a in d.ads:
            served[a.candidate.creative.id] = served.get(a.candidate.creative.id, 0) + 1
    assert set(served) == {"cr-a", "cr-a2", "cr-a3", "cr-a4", "cr-a5"}
    assert all(abs(k / n - 0.2) < 0.06 for k in served.values()), served  # sd 0.013
    # the competitor keeps its place among the candidates (scored, beaten by li-a's tier)
    d = await svc.decide(request("w", pod_s=30, max_ads=1), explain=True)
    li_c = [t.reason for t in d.traces if t.line_item_id == "li-c"]
    assert li_c and Reason.OUTRANKED not in li_c


# ------------------------------------------- slot prices a nearly spent budget cannot pay


def _slot_priced_catalog() -> dict[str, Any]:
    """Review 5's catalog: li-slotfirst ($1 CPM, $3 first, a $5 spend budget), li-fillerlast
    ($0.005, $0.05 last, 4 impressions), li-mid ($0.004, $0.04 first, one a day a viewer);
    one advertiser, campaign and 10 s creative (``UAID<n>``) each."""
    lis = [
        ("slotfirst", 1000, {"first": 3000}, {"pacing": {"budget": {"spend": 5}}}),
        ("fillerlast", 5, {"last": 50}, {"pacing": {"budget": {"impressions": 4}}}),
        (
            "mid",
            4,
            {"first": 40},
            {"frequency_caps": [{"scope": "line_item", "max": 1, "window": "1d"}]},
        ),
    ]
    cat: dict[str, Any] = {
        "version": "r5",
        "advertisers": [],
        "campaigns": [],
        "line_items": [],
        "creatives": [],
    }
    for n, (name, price, slot_prices, extra) in enumerate(lis, start=1):
        cat["advertisers"].append(
            {"id": f"adv-{n}", "name": f"Adv {n}", "domain": f"adv{n}.example"}
        )
        cat["campaigns"].append(
            {
                "id": f"cmp-{n}",
                "advertiser_id": f"adv-{n}",
                "name": f"C {n}",
                "start": "2026-01-01T00:00:00Z",
                "end": "2099-01-01T00:00:00Z",
                "timezone": "UTC",
            }
        )
        cat["line_items"].append(
            {
                "id": f"li-{name}",
                "campaign_id": f"cmp-{n}",
                "name": f"L {name}",
                "tier": "standard",
                "creative_ids": [f"cr-{n}"],
                "price": price,
                "slot_prices": slot_prices,
                **extra,
            }
        )
        cat["creatives"].append(
            {
                "id": f"cr-{n}",
                "advertiser_id": f"adv-{n}",
                "title": f"T {n}",
                "duration": 10,
                "universal_ad_id": f"UAID{n}",
                "renditions": [
                    {
                        "url": f"https://cdn.example.com/{n}.mp4",
                        "mime": "video/mp4",
                        "width": 1280,
                        "height": 720,
                    }
                ],
            }
        )
    return cat


_VAST_NS = {"v": "http://www.iab.com/VAST"}
_LI_OF_UAID = {"UAID1": "li-slotfirst", "UAID2": "li-fillerlast", "UAID3": "li-mid"}


async def _vast_pod(client: Any, device: str) -> list[tuple[str, float, str]]:
    """``/vast`` for a 30 s, 3-ad break: each ad's (line item, ``<Pricing>``, impression
    URL), in sequence."""
    q = f"/vast?pod_duration=30&max_ads=3&device_id={device}"
    resp = await client.get(q)
    assert resp.status == 200
    root = etree.fromstring(await resp.read())
    out = []
    for ad in sorted(root.iterfind("v:Ad", _VAST_NS), key=lambda a: int(a.get("sequence"))):
        uaid = ad.find(".//v:UniversalAdId", _VAST_NS).text.strip()
        price = float(ad.find(".//v:Pricing", _VAST_NS).text)
        parts = urlsplit(expand_macros(ad.find(".//v:Impression", _VAST_NS).text.strip()))
        out.append((_LI_OF_UAID[uaid], price, f"{parts.path}?{parts.query}"))
    return out


async def _line_item_rows(client: Any) -> dict[str, dict[str, Any]]:
    resp = await client.get("/admin/line-items", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200
    return {r["id"]: r for r in await resp.json()}


async def test_a_slot_price_the_budget_cannot_pay_is_not_given_and_the_pods_stay_full(
    make_client: Any, tmp_path: Any
) -> None:
    """li-slotfirst plays first at $3 CPM; after that impression its $5 budget has $2 left:
    two impressions at its $1 price, none at $3. The pre-check judged it at $1, the pod put
    it first, the commit refused it there, the ads moved up lost their slot prices and went
    too (their reservations held): every later break was empty, and a retry built the same
    pod. Now the gate knows it can pay only the other slots: it plays there until its budget
    is spent, every break is filled, and nothing is reserved that was not served."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(_slot_priced_catalog()))
    client = await make_client(catalog=str(path))

    pods = []
    for n in range(6):
        device = f"00000000-0000-4000-8000-{n:012d}"
        if n == 1:  # a preview shows the pod serving then delivers
            resp = await client.get(f"/decide?pod_duration=30&max_ads=3&device_id={device}&test=1")
            preview = [
                (a["line_item_id"], a["price_cpm"]) for a in (await resp.json())["pod"]["ads"]
            ]
        pod = await _vast_pod(client, device)
        if n == 1:
            assert [(li, price) for li, price, _ in pod] == preview
        for _, _, imp in pod:
            assert (await client.get(imp)).status == 204
        pods.append([(li, price) for li, price, _ in pod])

    assert pods == [
        [("li-slotfirst", 3000.0), ("li-mid", 4.0), ("li-fillerlast", 50.0)],
        # the $2 left pay two impressions at $1, in a slot that bills its price
        [("li-mid", 40.0), ("li-slotfirst", 1000.0), ("li-fillerlast", 50.0)],
        [("li-mid", 40.0), ("li-slotfirst", 1000.0), ("li-fillerlast", 50.0)],
        # spent; li-fillerlast has one impression of its 4 left
        [("li-mid", 40.0), ("li-fillerlast", 50.0)],
        [("li-mid", 40.0)],
        [("li-mid", 40.0)],
    ]
    rows = await _line_item_rows(client)
    assert rows["li-slotfirst"]["spend"] == 5.0
    for li, row in rows.items():  # nothing reserved that was not served and played
        assert row["served"] == row["delivered_impressions"], li
    metrics = await (await client.get("/metrics")).text()
    assert 'reason="commit_race_retry"' not in metrics
    assert 'vastserver_pods_total{result="empty"}' not in metrics


@pytest.mark.parametrize(
    ("price", "slot_prices", "room_cpm", "placed"),
    [
        # room for the $3 first slot: anywhere (first, for its value there)
        (1.0, {"first": 3.0}, 3.5, [("li-a", 1, 3.0), ("li-b", 2, 0.0)]),
        # room for $1, not $3: not first, but last at its price (it was put first, refused)
        (1.0, {"first": 3.0}, 2.0, [("li-b", 1, 0.0), ("li-a", 2, 1.0)]),
        # a cheaper first slot: room for $5, not $10: first only (it was refused outright)
        (10.0, {"first": 5.0}, 7.0, [("li-a", 1, 5.0), ("li-b", 2, 0.0)]),
        (10.0, {"last": 5.0}, 7.0, [("li-b", 1, 0.0), ("li-a", 2, 5.0)]),
        # room for no price of it
        (10.0, {"first": 5.0}, 4.0, [("li-b", 1, 0.0)]),
    ],
)
async def test_a_slot_priced_line_item_plays_only_in_the_slots_its_budget_pays(
    price: float, slot_prices: dict[str, float], room_cpm: float, placed: list[Any]
) -> None:
    """li-a's spend budget has room for one impression at ``room_cpm``: the pod gives it
    only a slot whose price that pays, and the commit reserves it there."""
    cat = _with_li_a(
        price=price,
        slot_prices=slot_prices,
        pacing={"delivery": "asap", "budget": {"spend": 1000}},
    )
    svc, _ = _setup(cat)
    used = 1000 * 1_000_000 - spend_micros(round(room_cpm * 1_000_000))
    await svc.delivery.store.add([Incr("li:li-a:spend_micros", LIFETIME, used)], T0.timestamp())
    d = await svc.decide(request("v0", pod_s=30, max_ads=2), explain=True)
    assert [(a.candidate.line_item.id, a.slot, a.price_cpm) for a in d.ads] == placed
    li_a = next(t.reason for t in d.traces if t.line_item_id == "li-a")
    assert li_a is (None if len(placed) == 2 else Reason.BUDGET_EXHAUSTED)
    retries = svc.metrics.degradations.labels("commit_race_retry")._value.get()
    assert retries == 0


def _refusing(store: Any, line_item: str) -> list[list[str]]:
    """Make ``store``'s commit refuse every ad of ``line_item`` with nothing to show for it
    in the counters (a guard the pre-check cannot see, as a slot price's once was), and
    commit the rest. Returns the line items of each commit's batch, as they come."""
    real_commit = store.commit
    batches: list[list[str]] = []

    def owner(group: Any) -> str:
        return next(i.key.split(":")[1] for i in group.incrs if i.key.endswith(":served"))

    async def commit(batch: Any, now: float) -> list[bool]:
        batches.append([owner(g) for g in batch])
        rest = [g for g in batch if owner(g) != line_item]
        done = iter(await real_commit(rest, now))
        return [False if owner(g) == line_item else next(done) for g in batch]

    store.commit = commit
    return batches


async def test_the_retry_of_a_refused_pod_leaves_out_the_line_items_the_commit_refused() -> None:
    """A one-ad pod whose ad the commit refused is decided again; read again, the counters
    admitted the same line item and the retry built the same pod, refused the same way:
    the break went empty. The retry leaves the refused line item out."""
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 1500}})
    svc, _ = _setup(cat)
    batches = _refusing(svc.delivery.store, "li-a")
    d = await svc.decide(request("v0", max_ads=1), explain=True)
    assert batches == [["li-a"], ["li-b"]]
    assert _ads(d) == ["li-b"]
    reasons = {t.line_item_id: t.reason for t in d.traces}
    assert reasons["li-a"] is Reason.BUDGET_EXHAUSTED and reasons["li-b"] is None
    retries = svc.metrics.degradations.labels("commit_race_retry")._value.get()
    assert retries == 1


async def test_an_ad_dropped_after_its_reservation_gives_it_back_at_once() -> None:
    """li-a (first) is refused at commit; li-b, reserved last at its $30 last-slot price,
    would be first at $10 and is dropped: its reservation used to hold its budget (and
    count it served) for 5 minutes. It is given back at once, so the retry and the next
    viewer find li-b's budget of two impressions untouched by it."""
    cat = _with_li_a(pacing={"delivery": "asap", "budget": {"impressions": 1500}})
    cat["line_items"][1].update(
        tier="standard",
        price=10,
        slot_prices={"last": 30},
        pacing={"delivery": "asap", "budget": {"impressions": 2}},
    )
    svc, clock = _setup(cat)
    store = svc.delivery.store
    batches = _refusing(store, "li-a")
    d = await svc.decide(request("v0", pod_s=30, max_ads=2))
    # the pod [li-a, li-b], then the retry without li-a: li-b alone, at its price
    assert batches == [["li-a", "li-b"], ["li-b"]]
    assert [(a.candidate.line_item.id, a.slot, a.price_cpm) for a in d.ads] == [("li-b", 1, 10.0)]
    ts = clock.now.timestamp()
    reserved, served = await store.read(
        [Read("li:li-b:imp:life:r", RESERVATION_WINDOW), Read("li:li-b:served", LIFETIME)], ts
    )
    assert (reserved, served) == (1, 1)  # the retry's ad only
    # the budget's second impression is there for the next viewer
    assert _ads(await svc.decide(request("v1", pod_s=30, max_ads=2))) == ["li-b"]
    assert _ads(await svc.decide(request("v2", pod_s=30, max_ads=2))) == []
