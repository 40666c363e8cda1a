"""``gate_checks`` (the request path, with its cross-request cache) reads and checks exactly
what ``cap_checks`` and ``budget_checks`` (the per-candidate specification) define."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import FIXED_NOW
from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.load import parse_catalog
from vastserver.catalog.model import billed_cpm
from vastserver.pipeline.candidates import Candidate, all_candidates
from vastserver.pipeline.delivery import (
    ROOMY_IMPRESSIONS,
    ROOMY_S,
    GateCache,
    Viewer,
    budget_checks,
    cap_checks,
    gate_checks,
    impression_increments,
    impression_plan,
    note_headroom,
    reservation_guards,
    reservation_plan,
    scope_caps,
)
from vastserver.store.base import Read

VIEWERS = [
    Viewer("00aa11bb22cc33dd", "sess-1", False),
    Viewer("00aa11bb22cc33dd", None, False),
    Viewer("99aa11bb22cc33dd", "sess-2", True),
]


@pytest.fixture(scope="module")
def cands() -> list[Candidate]:
    cat = parse_catalog(generate_catalog(300, 5, now=FIXED_NOW))
    out = all_candidates(cat)
    assert any(c.line_item.frequency_caps for c in out)
    return list(out)


def _spec(
    cands: list[Candidate], viewer: Viewer, now: datetime
) -> tuple[dict[int, tuple[object, object]], dict[str, Read]]:
    by_id: dict[int, tuple[object, object]] = {}
    reads: dict[str, Read] = {}
    for c in cands:
        caps: list[tuple[str, str, int]] = []
        for cap in c.line_item.frequency_caps:
            chk = cap_checks(cap, c, viewer)
            if chk is not None:
                caps.append((chk.impressions.key, chk.reservations.key, chk.limit))
                reads[chk.impressions.key] = chk.impressions
                reads[chk.reservations.key] = chk.reservations
        budgets: list[tuple[str, str, int, int]] = []
        for b in budget_checks(c, now, billed_cpm(c.line_item, c.line_item.price)):
            budgets.append((b.delivered.key, b.reservations.key, b.limit, b.amount))
            reads[b.delivered.key] = b.delivered
            reads[b.reservations.key] = b.reservations
        by_id[id(c)] = (tuple(caps), tuple(budgets))
    return by_id, reads


@pytest.mark.parametrize("viewer", VIEWERS)
def test_gate_checks_match_the_per_candidate_checks(cands: list[Candidate], viewer: Viewer) -> None:
    cache = GateCache()
    # the same cache across viewers and across a local midnight (daily budget keys change)
    for now in (FIXED_NOW, FIXED_NOW + timedelta(hours=6), FIXED_NOW):
        for v in (viewer, VIEWERS[0]):
            checks, reads = gate_checks(cands, v, now, cache)
            want, want_reads = _spec(cands, v, now)
            got = {k: (c.caps, c.budgets) for k, c in checks.items()}
            assert got == want
            assert {r.key: r for r in reads} == want_reads
            assert len(reads) == len({r.key for r in reads})


def test_cache_is_bounded_and_rebuilt_for_a_new_line_item(cands: list[Candidate]) -> None:
    cache = GateCache(max_entries=50)
    gate_checks(cands, VIEWERS[0], FIXED_NOW, cache)
    assert len(cache.entries) <= 50 + len(cands)
    gate_checks(cands[:10], VIEWERS[0], FIXED_NOW, cache)
    assert len(cache.entries) <= 10
    # a reloaded catalog has new objects under the same ids: entries are rebuilt, not reused
    reloaded = all_candidates(parse_catalog(generate_catalog(300, 5, now=FIXED_NOW)))
    checks, _ = gate_checks(reloaded[:10], VIEWERS[0], FIXED_NOW, cache)
    for c in reloaded[:10]:
        assert cache.entries[id(c)].cand is c
    assert set(checks) == {id(c) for c in reloaded[:10]}
    want, _ = _spec(reloaded[:10], VIEWERS[0], FIXED_NOW)
    assert {k: (c.caps, c.budgets) for k, c in checks.items()} == want


def test_roomy_candidates_skip_their_budgets_until_the_pause_ends(cands: list[Candidate]) -> None:
    cache = GateCache()
    viewer = VIEWERS[0]
    checks, _ = gate_checks(cands, viewer, FIXED_NOW, cache)
    budgeted = [id(c) for c in cands if checks[id(c)].budgets]
    # every other budgeted candidate has its first budget nearly spent
    counts = {checks[k].budgets[0][0]: checks[k].budgets[0][2] - 1 for k in budgeted[::2]}

    def has_room(k: int) -> bool:
        return all(
            limit - counts.get(dlv, 0) - counts.get(rsv, 0) >= ROOMY_IMPRESSIONS * amount
            for dlv, rsv, limit, amount in checks[k].budgets
        )

    roomy = {k for k in budgeted if has_room(k)}
    assert roomy and set(budgeted) - roomy
    note_headroom(cands, checks, counts, FIXED_NOW, cache)

    later = FIXED_NOW + timedelta(seconds=ROOMY_S / 2)
    got, reads = gate_checks(cands, viewer, later, cache)
    want, _ = _spec(cands, viewer, later)
    needed: set[str] = set()
    for c in cands:
        caps, budgets = want[id(c)]
        if id(c) in roomy:
            budgets = ()
        assert (got[id(c)].caps, got[id(c)].budgets) == (caps, budgets)
        needed |= {k for cap in caps for k in cap[:2]} | {k for b in budgets for k in b[:2]}
    assert {r.key for r in reads} == needed

    # the pause is over: everything is read and checked again
    after = FIXED_NOW + timedelta(seconds=ROOMY_S * 1.5)
    got, reads = gate_checks(cands, viewer, after, cache)
    want, want_reads = _spec(cands, viewer, after)
    assert {k: (c.caps, c.budgets) for k, c in got.items()} == want
    assert {r.key: r for r in reads} == want_reads


def test_impression_plan_matches_impression_increments() -> None:
    cat = parse_catalog(generate_catalog(300, 5, now=FIXED_NOW))
    scoped = all_candidates(cat)
    scopes = scope_caps(cat)
    cache = GateCache()
    served = (FIXED_NOW, FIXED_NOW + timedelta(hours=6, seconds=17), FIXED_NOW)
    for at in served:
        for viewer in VIEWERS:
            for c in scoped:
                for price in (c.line_item.price, c.line_item.price * 1.5 + 0.01):
                    for sc in (scopes, None):
                        ts = at.timestamp()
                        want = impression_increments(c, viewer, ts, at, price, sc)
                        assert impression_plan(c, viewer, ts, price, sc, cache) == want
    assert any(impression_increments(c, VIEWERS[0], 0.0, FIXED_NOW, 1.0, scopes) for c in scoped)


def test_reservation_plan_matches_reservation_guards(cands: list[Candidate]) -> None:
    cat = parse_catalog(generate_catalog(300, 5, now=FIXED_NOW))
    scoped = all_candidates(cat)
    scopes = scope_caps(cat)
    cache = GateCache()
    for now in (FIXED_NOW, FIXED_NOW + timedelta(hours=6), FIXED_NOW):
        for viewer in VIEWERS:
            for c in scoped:
                for price in (c.line_item.price, c.line_item.price * 1.5 + 0.01):
                    for sc in (scopes, None):
                        want = reservation_guards(c, viewer, now, price, sc)
                        assert reservation_plan(c, viewer, now, price, sc, cache) == want
    assert any(reservation_guards(c, VIEWERS[0], FIXED_NOW, 1.0, scopes)[0] for c in scoped)


@pytest.mark.parametrize(
    "tz",
    ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns",
     "Australia/Eucla", "Pacific/Chatham", "Europe/London"],
)  # fmt: skip
def test_local_day_memo_equals_the_direct_conversion(tz: str) -> None:
    from zoneinfo import ZoneInfo

    from vastserver.pipeline.delivery import local_day

    zone = ZoneInfo(tz)
    # every 7 s across two days around a DST change (2026-03-08 in the US, 03-29 in Europe)
    for start in (datetime(2026, 3, 7, 0, 0, tzinfo=UTC), datetime(2026, 3, 28, 0, 0, tzinfo=UTC)):
        for k in range(0, 2 * 86400, 7):
            now = start + timedelta(seconds=k, microseconds=k % 1000)
            assert local_day(now, tz) == now.astimezone(zone).strftime("%Y-%m-%d")


def test_gate_checks_of_a_slot_priced_line_item_hold_its_budgets_at_each_price() -> None:
    """A slot price that bills otherwise moves a spend budget by its own amount: checked
    apart (``first`` / ``last``), each as ``budget_checks`` at that price; an impression
    budget alone, or a price that bills the same, adds nothing."""
    from tests.delivery_support import base_catalog

    cat = base_catalog()
    cat["line_items"][0].update(
        price=2.0,
        slot_prices={"first": 6.0, "last": 2.0},
        pacing={"delivery": "asap", "budget": {"spend": 100, "impressions": 50}},
    )
    cat["line_items"][1].update(
        slot_prices={"first": 9.0}, pacing={"delivery": "asap", "budget": {"impressions": 5}}
    )
    cands = all_candidates(parse_catalog(cat))
    checks, reads = gate_checks(cands, VIEWERS[0], FIXED_NOW, GateCache())
    a, b = (checks[id(c)] for c in cands)

    def at(c: Candidate, price: float) -> tuple[tuple[str, str, int, int], ...]:
        return tuple(
            (x.delivered.key, x.reservations.key, x.limit, x.amount)
            for x in budget_checks(c, FIXED_NOW, price)
        )

    assert a.budgets == at(cands[0], 2.0) and a.first == at(cands[0], 6.0) and a.last is None
    assert a.first != a.budgets  # the spend budget's amount: 6,000 micros, not 2,000
    assert b.budgets == at(cands[1], 0.0) and b.first is None and b.last is None
    assert {r.key for r in reads} == {k for c in (a, b) for x in c.budgets for k in x[:2]}
