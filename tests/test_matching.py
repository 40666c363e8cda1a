"""The bitset index agrees with the per-candidate filters it replaces on the hot path."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.load import parse_catalog
from vastserver.catalog.model import RATINGS, BreakPosition, Catalog, Slot
from vastserver.params import ClientInfo, parse_vast_request
from vastserver.pipeline import matching
from vastserver.pipeline.candidates import Candidate, all_candidates
from vastserver.pipeline.context import AdRequest, BreakSpec, DurationFloors, ImpFloors
from vastserver.pipeline.decide import screen
from vastserver.pipeline.matching import CatalogIndex, build_index
from vastserver.pipeline.pod import SlotRule, capacity_seconds
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.stages import (
    PRE_DELIVERY_FILTERS,
    PreGate,
    StageEnv,
    floor,
    policy,
    slot_floor_mask,
)

NOW = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
CLIENT = ClientInfo("198.51.100.7", "ua", "198.51.100.7", "ua")


def _mutate(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """Spice a generated catalog with the cases the generator rarely makes."""
    rng = random.Random(seed)
    for li in data["line_items"]:
        if rng.random() < 0.1:
            li["status"] = "paused"
        if rng.random() < 0.1:
            li["positions"] = rng.sample(["pre", "mid", "post"], k=rng.randint(1, 2))
        if rng.random() < 0.3:  # enough first- and last-only ones for the per-role limit
            li["slot"] = rng.choice(["first", "last"])
    for cr in data["creatives"]:
        r = rng.random()
        if r < 0.08:
            cr["approved"] = False
        elif r < 0.16:
            for rend in cr["renditions"]:
                rend["url"] = rend["url"].replace("https://", "http://")
        elif r < 0.22:
            cr["renditions"] = [
                {**cr["renditions"][0], "mime": "video/webm", "url": "https://cdn.example/x.webm"}
            ]
        elif r < 0.26:
            cr["api_framework"] = "VPAID"
        if rng.random() < 0.3:
            cr["rating"] = rng.choice(RATINGS)
    # AdCOM creative attributes, declared or (13) derived from SIMID files: a draw of their
    # own, so that the mutations above stay what they were for every seed
    attrs = random.Random(seed + 1000)
    for cr in data["creatives"]:
        r = attrs.random()
        if r < 0.2:
            cr["attributes"] = attrs.sample([1, 9, 13, 16], k=attrs.randint(1, 2))
        elif r < 0.3:
            cr["interactive"] = [{"url": "https://simid.example/i.html", "api_framework": "SIMID"}]
    return data


@cache
def catalog_and_index(seed: int) -> tuple[Catalog, CatalogIndex]:
    data = _mutate(generate_catalog(60, seed=seed, now=NOW), seed)
    catalog = parse_catalog(json.loads(json.dumps(data)))
    return catalog, build_index(catalog)


def _vocab(catalog: Catalog, dim: str) -> list[str]:
    values: set[str] = set()
    for li in catalog.line_items.values():
        rule = li.targeting.rules.get(dim)
        if rule is not None:
            values |= rule.include | rule.exclude
    return sorted(values) or ["none"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, dict[str, str], timedelta]:
    seed = draw(st.integers(0, 3))
    catalog, _ = catalog_and_index(seed)
    q: dict[str, str] = {}

    def maybe(name: str, values: list[str]) -> None:
        if draw(st.booleans()):
            q[name] = draw(st.sampled_from(values))

    maybe("break", ["pre", "mid", "post"])
    maybe("pod_duration", ["6", "15", "30", "60", "120"])
    maybe("min_ad_duration", ["10", "15"])
    maybe("max_ad_duration", ["20", "30"])
    maybe("required_durations", ["15", "30", "15,30", "6,20"])
    maybe("device_type", ["ctv", "stb", "mobile", "desktop"])
    maybe("platform", ["roku", "tvos", "androidtv", "firetv", "web"])
    maybe("country", [v for v in _vocab(catalog, "country") if len(v) == 2] or ["US"])
    country = q.get("country")  # a region of another country is a 400
    regions = [r for r in _vocab(catalog, "region") if r.startswith(country or "")]
    maybe("region", regions or [f"{country}-ZZ"])
    maybe("dma", [v for v in _vocab(catalog, "dma") if v.isdigit()] or ["501"])
    maybe("rating", list(RATINGS))
    maybe("live", ["0", "1"])
    maybe("kids", ["0", "1"])
    maybe("language", [v for v in _vocab(catalog, "language") if v.isalpha()] or ["en"])
    if draw(st.booleans()):
        genres = draw(st.lists(st.sampled_from(_vocab(catalog, "genre")), max_size=3))
        if genres:
            q["genre"] = ",".join(genres)
    maybe("series", _vocab(catalog, "series"))
    maybe("channel", _vocab(catalog, "channel"))
    maybe("segments", _vocab(catalog, "segment"))
    maybe("bcat", ["IAB8", "IAB8-5", "IAB19", "IAB1-7", "IAB22"])
    maybe("battr", ["13", "9", "9,13", "1,16", "2"])
    domains = sorted({a.domain for a in catalog.advertisers.values()})
    if draw(st.booleans()):
        picked = draw(st.lists(st.sampled_from(domains), min_size=1, max_size=3))
        q["badv"] = ",".join([*picked, "not-in-the-catalog.example"])
    q["seed"] = str(seed)
    shift = timedelta(hours=draw(st.integers(-24 * 400, 24 * 400)))
    return seed, q, shift


def _env(req: AdRequest, shift: timedelta) -> StageEnv:
    """The request's blocklists (bcat, badv) at ``NOW + shift``."""
    return StageEnv(
        now=NOW + shift,
        blocked_categories=req.blocked_categories,
        blocked_domains=req.blocked_domains,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_bitsets_agree_with_the_filters(case: tuple[int, dict[str, str], timedelta]) -> None:
    seed, q, shift = case
    catalog, index = catalog_and_index(seed)
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None), require_https=True)
    env = _env(req, shift)
    fast, dropped = index.select(req, env)
    slow = screen(req, index.candidates, env, PRE_DELIVERY_FILTERS)
    assert [c.key for c in fast] == [c.key for c in slow.survivors]
    # Every dropped candidate is counted once, under the reason the filters name first (the
    # one the debug explanation gives it).
    assert sum(dropped.values()) == len(index.candidates) - len(fast)
    assert dropped == dict(Counter(t.reason for t in slow.traces))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.integers(0, 2**32 - 1))
def test_the_selection_applies_pacing_as_the_filters_do(
    case: tuple[int, dict[str, str], timedelta], pacing_seed: int
) -> None:
    """Line items out of budget or throttled (one draw per line item, shared by the selection
    and the filters as by a request and its explanation) drop the same candidates under the
    same reasons, with or without a candidate limit."""
    seed, q, shift = case
    catalog, index = catalog_and_index(seed)
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None), require_https=True)
    rng = random.Random(pacing_seed)
    ids = sorted(catalog.line_items)
    exhausted = frozenset(rng.sample(ids, len(ids) // 6))
    throttle = {li: rng.choice((0.0, 0.3, 0.7)) for li in rng.sample(ids, len(ids) // 3)}
    pre = PreGate(
        paced=exhausted | frozenset(throttle),
        exhausted=exhausted,
        throttle=throttle,
        rng=random.Random(pacing_seed),
    )
    env = replace(_env(req, shift), pre=pre)
    fast, dropped = index.select(req, env)
    slow = screen(req, index.candidates, env, PRE_DELIVERY_FILTERS)
    assert [c.key for c in fast] == [c.key for c in slow.survivors]
    assert dropped == dict(Counter(t.reason for t in slow.traces))
    # a candidate limit keeps only candidates the pacing admits, and counts each once
    kept, counted = index.select(req, env, 4)
    assert {c.key for c in kept} <= {c.key for c in fast}
    assert len(kept) + sum(counted.values()) == len(index.candidates)


def test_ten_thousand_line_items_do_not_cost_ten_thousand_evaluations(
    monkeypatch: Any,
) -> None:
    catalog = parse_catalog(generate_catalog(10_000, seed=5, now=NOW))
    index = build_index(catalog)
    calls = 0
    real = matching.residual_check

    def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(matching, "residual_check", counting)
    q = {
        "device_type": "ctv",
        "platform": "roku",
        "genre": "drama",
        "rating": "TV-14",
        "country": "US",
        "pod_duration": "60",
    }
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None))
    survivors, _ = index.select(req, StageEnv(now=NOW))
    assert len(index.candidates) > 15_000
    # Only candidates that matched every bitset and carry dayparts or key-values are looked
    # at one by one.
    assert calls < len(index.candidates) / 10
    assert survivors


def _reference_survivors(
    catalog: Catalog,
    index: CatalogIndex,
    req: Any,
    env: StageEnv,
    limit: int,
    per_group: int,
    per_role: int,
) -> tuple[list[str], dict[Any, int]]:
    """The limited scan written plainly over the whole catalog's match: skip a match that
    may only play first (or only last) when ``per_role`` such are kept, and one whose group
    keeps ``per_group`` already, then take the best ``limit`` passing the residual rules.
    The scan stops in the chunk where the limit fills: the checks' counts cover the chunks
    up to it (a catalog of just those candidates, matched whole), and every candidate after
    the last one kept that is not counted by a check is outranked."""
    bits = index.bits
    mask, checks = bits.match(req, env)
    ords = [i for i in range(len(bits.candidates)) if mask >> i & 1]
    outranked = 0
    residual: dict[Any, int] = {}
    out: list[str] = []
    per: dict[int, int] = {}
    roles: dict[Slot, int] = {}
    # creatives of a line item and length kept after the first take no place of the group
    tie_kept: dict[tuple[str, int], int] = {}

    def fails_residual(i: int, c: Any) -> bool:
        if req.floor_cpm_per_s is None and not bits.residual_flags[i]:
            return False
        reason = matching.residual_check(req, c, env)
        if reason is not None:
            residual[reason] = residual.get(reason, 0) + 1
        return reason is not None

    for i in ords:
        c = bits.candidates[i]
        tie = (c.line_item.id, capacity_seconds(c.creative.duration_ms))
        if tie in tie_kept and req.brk.slots is None:
            if tie_kept[tie] >= matching.PER_TIE:
                outranked += 1
                continue
            if fails_residual(i, c):
                continue
            tie_kept[tie] += 1
        else:
            slot = c.line_item.slot
            if slot is not Slot.ANY and roles.get(slot, 0) >= per_role:
                outranked += 1  # not counted in its group: skipped for its role, not its rank
                continue
            g = bits.group[i]
            if per.get(g, 0) >= per_group:  # its group is full: passed over unread
                outranked += 1
                continue
            if fails_residual(i, c):
                continue
            per[g] = per.get(g, 0) + 1
            roles[slot] = roles.get(slot, 0) + 1
            tie_kept[tie] = 1
        out.append(c.key)
        if len(out) == limit:
            width = bits.chunk_bits
            end = min(len(bits.candidates), (i // width + 1) * width)
            examined = matching.build_bit_index(catalog, bits.candidates[:end], width)
            _, checks = examined.match(req, env)
            outranked += len(bits.candidates) - (i + 1)
            outranked -= sum(v for v in checks.values())
            outranked += sum(1 for j in range(i + 1) if not mask >> j & 1)
            break
    dropped = dict(checks)
    for reason, count in residual.items():
        dropped[reason] = dropped.get(reason, 0) + count
    if outranked:
        dropped[matching.Reason.OUTRANKED] = outranked
    return out, dropped


@cache
def chunked_index(seed: int, width: int) -> CatalogIndex:
    """The seed's catalog indexed with ``width``-candidate chunks."""
    catalog, index = catalog_and_index(seed)
    return CatalogIndex(catalog, matching.build_bit_index(catalog, index.candidates, width))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests(),
    st.sampled_from([1, 2, 5, 20]),
    st.sampled_from([1, 3]),
    st.sampled_from([1, 2, 8]),
    st.booleans(),
)
def test_limited_scan_matches_the_plain_reference(
    case: tuple[int, dict[str, str], timedelta],
    limit: int,
    per_group: int,
    per_role: int,
    tiny_chunks: bool,
) -> None:
    seed, q, shift = case
    catalog, whole = catalog_and_index(seed)
    index = chunked_index(seed, 8) if tiny_chunks else whole
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None), require_https=True)
    env = _env(req, shift)
    want = _reference_survivors(catalog, index, req, env, limit, per_group, per_role)
    got, dropped = index.bits.survivors(req, env, limit, per_group, per_role)
    assert ([c.key for c in got], dropped) == want
    assert len(got) + sum(dropped.values()) == len(index.candidates)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from([8, 16, 64]))
def test_chunk_width_changes_nothing_without_a_limit(
    case: tuple[int, dict[str, str], timedelta], width: int
) -> None:
    seed, q, shift = case
    catalog, whole = catalog_and_index(seed)
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None), require_https=True)
    env = _env(req, shift)
    want = whole.bits.survivors(req, env)
    got = chunked_index(seed, width).bits.survivors(req, env)
    assert [c.key for c in got[0]] == [c.key for c in want[0]]
    assert got[1] == want[1]
    assert whole.bits.match(req, env) == chunked_index(seed, width).bits.match(req, env)


@given(st.integers(min_value=0, max_value=2**300), st.sampled_from([8, 64, 8192]))
def test_chunks_hold_every_bit_in_order(mask: int, width: int) -> None:
    n = max(1, mask.bit_length())
    ords = [i for i in range(mask.bit_length()) if mask >> i & 1]
    chunks = matching.split_chunks(np.array(ords, dtype=np.int32), n, width)
    assert len(chunks) == -(-n // width)
    assert all(c.bit_length() <= width for c in chunks)
    assert matching.join_chunks(chunks, width) == mask
    assert matching.chunk_ordinals(chunks, width) == ords


def _select_counting_chunks(
    index: CatalogIndex, req: AdRequest, env: StageEnv, limit: int
) -> tuple[list[Candidate], dict[Reason, int], list[int]]:
    """``index.select`` with a limit, and the chunks it evaluated, in order."""
    evaluated: list[int] = []
    real = matching.BitIndex.match_chunk

    def spy(self: matching.BitIndex, plan: Any, k: int, dropped: Any) -> int:
        evaluated.append(k)
        return real(self, plan, k, dropped)

    matching.BitIndex.match_chunk = spy  # type: ignore[method-assign]
    try:
        kept, dropped = index.select(req, env, limit)
    finally:
        matching.BitIndex.match_chunk = real  # type: ignore[method-assign]
    return kept, dropped, evaluated


def test_a_scan_stops_at_the_chunk_where_the_limit_fills() -> None:
    """With a limit that fills in the first chunk, later chunks are not evaluated: their
    candidates count as outranked, whatever they would have failed."""
    catalog = parse_catalog(generate_catalog(2_000, seed=5, now=NOW))
    whole = build_index(catalog)
    index = CatalogIndex(catalog, matching.build_bit_index(catalog, whole.candidates, 256))
    q = {"device_type": "ctv", "platform": "roku", "country": "US", "pod_duration": "60"}
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None))
    env = StageEnv(now=NOW)
    got, dropped, evaluated = _select_counting_chunks(index, req, env, 4)
    assert len(got) == 4
    assert len(index.candidates) > 8 * 256
    assert evaluated == [0]
    # The first chunk's checks are counted; the other chunks' candidates are outranked.
    assert sum(v for r, v in dropped.items() if r != matching.Reason.OUTRANKED) <= 256
    assert dropped[matching.Reason.OUTRANKED] >= len(index.candidates) - 256
    assert len(got) + sum(dropped.values()) == len(index.candidates)
    # Without a limit every chunk is evaluated and agrees with the one-chunk index.
    want = whole.select(req, env)
    got_all = index.select(req, env)
    assert [c.key for c in got_all[0]] == [c.key for c in want[0]]
    assert got_all[1] == want[1]


def test_values_no_rule_names_share_one_cached_bitset() -> None:
    """A long tail of content ids, series or countries that no line item targets must not
    take a cache entry each, and they still match as the filters say."""
    catalog, _ = catalog_and_index(1)
    index = build_index(catalog)  # its own caches
    env = StageEnv(now=NOW)
    for n in range(300):
        q = {"content_id": f"tail-{n}", "series": f"tail-series-{n}", "country": "ZZ"}
        req = parse_vast_request(q, CLIENT, catalog.rules_for(None))
        fast, _ = index.select(req, env)
        slow = screen(req, index.candidates, env, PRE_DELIVERY_FILTERS)
        assert [c.key for c in fast] == [c.key for c in slow.survivors]
    assert len(index.bits._passes) <= len(matching.DIMENSIONS)


def test_price_floor_reads_what_an_impression_is_billed() -> None:
    """OpenRTB ``mincpmpersec`` compares what an impression of the line item is billed, the
    price its bid carries: a CPM line item's price; nothing for a flat one, whatever its
    value CPM (its fee is for the whole flight), so any non-zero floor drops it."""
    doc = json.loads((Path(__file__).parents[1] / "fixtures" / "demo-catalog.json").read_text())
    sponsor = next(li for li in doc["line_items"] if li.get("pricing_model") == "flat")
    sponsor["value_cpm"] = 9.0
    by_li = {c.line_item.id: c for c in all_candidates(parse_catalog(doc))}
    flat = by_li[sponsor["id"]]
    cpm = next(c for c in by_li.values() if c.line_item.price >= 20)
    env = StageEnv(now=datetime(2026, 11, 25, 20, tzinfo=UTC))

    def at(creative_cpm: float, c: Any) -> Reason | None:
        """The floor filter at a per-second floor worth ``creative_cpm`` over ``c``'s length."""
        per_s = creative_cpm / (c.creative.duration_ms / 1000)
        req = AdRequest(brk=BreakSpec(BreakPosition.PRE, 60_000, 2), floor_cpm_per_s=per_s)
        return floor(req, c, env)

    assert at(0.01, flat) is Reason.BELOW_FLOOR and at(0.0, flat) is None
    assert at(cpm.line_item.price, cpm) is None
    assert at(cpm.line_item.price + 1, cpm) is Reason.BELOW_FLOOR


def test_slot_floors_read_the_price_billed_in_each_slot() -> None:
    """Per-slot floors (each imp's own, OpenRTB): an ad may fill a slot whose imp's floors
    its price there meets, in any place the slot may make it play (the first slot first,
    the last last or alone, one between anywhere); none such: ``below_floor``."""
    doc = json.loads((Path(__file__).parents[1] / "fixtures" / "demo-catalog.json").read_text())
    li = next(li for li in doc["line_items"] if li["id"] == "li-streamly-originals-ron")
    li["price"], li["slot_prices"] = 30.0, {"first": 45.0}
    c = next(
        c
        for c in all_candidates(parse_catalog(doc))
        if c.line_item.id == li["id"] and c.creative.duration_ms == 30_000
    )
    env = StageEnv(now=datetime(2026, 11, 25, 20, tzinfo=UTC))
    rule = SlotRule(max_ms=30_000)
    brk = BreakSpec(BreakPosition.MID, 90_000, 3, slots=(rule, rule, rule))

    def mask(*floors: ImpFloors) -> int:
        req = AdRequest(brk=brk, slot_floors=floors)
        assert (floor(req, c, env) is None) is (slot_floor_mask(req, c) != 0)
        return slot_floor_mask(req, c)

    per_ad = [ImpFloors(per_ad=f) for f in (40.0, 1.0, 35.0)]
    assert mask(*per_ad) == 0b011  # first: 45; between: 30 at the least; last: 30 (or 45)
    assert mask(ImpFloors(per_ad=30.0), ImpFloors(per_ad=30.01), ImpFloors(per_ad=30.0)) == 0b101
    assert mask(*[ImpFloors(per_s=1.5)] * 3) == 0b001  # 45 for 30 s in the first alone
    durs = DurationFloors(ranges=((30, 30, 44.0),), default=99.0)
    assert mask(ImpFloors(by_duration=durs), ImpFloors(), ImpFloors(per_ad=50.0)) == 0b011
    req = AdRequest(brk=brk, slot_floors=(ImpFloors(per_ad=46.0),) * 3)
    assert floor(req, c, env) is Reason.BELOW_FLOOR
    short = replace(brk, slots=(SlotRule(max_ms=15_000), rule, rule))  # it fits no first slot
    req = AdRequest(
        brk=short, slot_floors=(ImpFloors(per_ad=40.0), ImpFloors(per_ad=99.0), ImpFloors())
    )
    assert slot_floor_mask(req, c) == 0b100
    req = AdRequest(
        brk=short,
        slot_floors=(ImpFloors(per_ad=40.0), ImpFloors(per_ad=99.0), ImpFloors(per_ad=99.0)),
    )
    assert floor(req, c, env) is Reason.BELOW_FLOOR


def _creative(n: str, secs: int) -> dict[str, Any]:
    """Advertiser ``n``'s one creative, ``secs`` long."""
    return {
        "id": f"cr-{n}",
        "advertiser_id": n,
        "title": n,
        "duration": secs,
        "universal_ad_id": f"UID-{n}",
        "renditions": [
            {
                "url": f"https://cdn.example/{n}.mp4",
                "mime": "video/mp4",
                "width": 1280,
                "height": 720,
                "bitrate_kbps": 2500,
            }
        ],
    }


def test_candidates_skipped_for_their_slot_do_not_crowd_out_their_group() -> None:
    """Eight first-slot sponsorships of other advertisers fill the first-only quota; six more
    of one advertiser are skipped for it, and must not count against that advertiser's
    group: its any-slot line item, ranked after them, still makes the cut."""
    flight = {"start": "2026-01-01T00:00:00Z", "end": "2027-12-31T00:00:00Z"}
    names = [f"a{i}" for i in range(8)] + ["g"]
    doc: dict[str, Any] = {
        "version": "roles",
        "advertisers": [
            {"id": n, "name": n, "domain": f"{n}.example", "competitive_category": f"cat_{n}"}
            for n in names
        ],
        "campaigns": [{"id": f"c-{n}", "advertiser_id": n, "name": n, **flight} for n in names],
        "creatives": [_creative(n, 15) for n in names],
        "line_items": [],
    }

    def li(lid: str, adv: str, tier: str, price: float, **kw: Any) -> dict[str, Any]:
        return {
            "id": lid,
            "campaign_id": f"c-{adv}",
            "name": lid,
            "tier": tier,
            "price": price,
            "creative_ids": [f"cr-{adv}"],
            **kw,
        }

    for i in range(8):  # the best-ranked: they fill the first-only quota
        doc["line_items"].append(li(f"s-a{i}", f"a{i}", "sponsorship", 90 - i, slot="first"))
    for j in range(6):
        doc["line_items"].append(li(f"s-g{j}", "g", "sponsorship", 50 - j, slot="first"))
    doc["line_items"].append(li("any-g", "g", "guaranteed", 40))
    catalog = parse_catalog(doc)
    index = build_index(catalog)
    req = parse_vast_request({"pod_duration": "60"}, CLIENT, catalog.rules_for(None))
    kept, dropped = index.select(req, StageEnv(now=NOW), 48)
    ids = [c.line_item.id for c in kept]
    assert ids == [f"s-a{i}" for i in range(8)] + ["any-g"]
    assert dropped == {Reason.OUTRANKED: 6}


def _priced_catalog(ads: list[tuple[str, int, float]]) -> Catalog:
    """One advertiser, campaign, creative (of ``secs``) and standard line item (at ``price``)
    per ``(name, secs, price)``."""
    flight = {"start": "2026-01-01T00:00:00Z", "end": "2027-12-31T00:00:00Z"}
    doc: dict[str, Any] = {
        "version": "slot-rules",
        "advertisers": [
            {"id": n, "name": n, "domain": f"{n}.example", "competitive_category": f"cat_{n}"}
            for n, _, _ in ads
        ],
        "campaigns": [{"id": f"c-{n}", "advertiser_id": n, "name": n, **flight} for n, _, _ in ads],
        "creatives": [_creative(n, secs) for n, secs, _ in ads],
        "line_items": [
            {
                "id": f"li-{n}",
                "campaign_id": f"c-{n}",
                "name": n,
                "tier": "standard",
                "price": price,
                "creative_ids": [f"cr-{n}"],
            }
            for n, _, price in ads
        ],
    }
    return parse_catalog(doc)


def test_structured_pod_keeps_candidates_for_each_slot_rule() -> None:
    """[30 s, 15 s, 15 s] slots; 60 30 s line items all priced above the three 15 s ones.
    Ranked by price alone the candidate limit (48) holds only 30 s ads and the 15 s slots
    stay empty; each distinct slot rule now keeps its share of the limit (16 for the 30 s
    slot, 32 for the 15 s ones), so the pod fills all three slots."""
    from dataclasses import replace

    from vastserver.pipeline.decide import decide
    from vastserver.pipeline.pod import SlotRule

    ads = [(f"l{i}", 30, 90.0 - i * 0.5) for i in range(60)]
    ads += [(f"s{i}", 15, 10.0 - i) for i in range(3)]
    catalog = _priced_catalog(ads)
    index = build_index(catalog)
    req = parse_vast_request({"pod_duration": "60"}, CLIENT, catalog.rules_for(None))
    slots = tuple(SlotRule(required_s=frozenset({s})) for s in (30, 15, 15))
    req = replace(req, brk=replace(req.brk, pod_duration_ms=60_000, max_ads=3, slots=slots))
    env = StageEnv(now=NOW)
    kept, dropped = index.select(req, env, 48)
    secs = [c.creative.duration_ms // 1000 for c in kept]
    assert secs.count(15) == 3 and secs.count(30) == 16
    assert dropped == {Reason.OUTRANKED: 60 - 16}
    d = decide(req, kept, env)
    assert [(a.slot, a.candidate.creative.duration_ms) for a in d.ads] == [
        (1, 30_000),
        (2, 15_000),
        (3, 15_000),
    ]
    # the same break without slot rules (any ad in any slot): the best 48 by price, as before
    plain = replace(req, brk=replace(req.brk, slots=None))
    assert [c.line_item.id for c in index.select(plain, env, 48)[0]] == [
        f"li-l{i}" for i in range(48)
    ]


def test_overlapping_slot_rules_keep_the_full_limit_and_a_bounded_scan() -> None:
    """Slots 'up to 30 s' and 'exactly 15 s' (24 candidates each); one ad in three is 15 s,
    ranked among the 30 s ones. A 15 s ad fits both rules but takes room from one: the
    scan keeps 24 30 s ads and 24 15 s ones (the limit), which it finds in the first two
    64-candidate chunks of four, and stops there. (Charged to both rules, 15 s ads filled
    both shares, 40 were kept and every chunk of the catalog was evaluated.)"""
    from vastserver.pipeline.pod import SlotRule

    ads = [(f"a{i:03d}", 15 if i % 3 == 0 else 30, 200.0 - i * 0.5) for i in range(240)]
    catalog = _priced_catalog(ads)
    whole = build_index(catalog)
    index = CatalogIndex(catalog, matching.build_bit_index(catalog, whole.candidates, 64))
    req = parse_vast_request({"pod_duration": "60"}, CLIENT, catalog.rules_for(None))
    slots = (SlotRule(max_ms=30_000), SlotRule(required_s=frozenset({15})))
    req = replace(req, brk=replace(req.brk, pod_duration_ms=60_000, max_ads=2, slots=slots))
    kept, dropped, evaluated = _select_counting_chunks(index, req, StageEnv(now=NOW), 48)
    secs = [c.creative.duration_ms // 1000 for c in kept]
    assert len(kept) == 48 and secs.count(30) == 24 and secs.count(15) == 24
    # the best 24 of each length: 30 s ads ranked below the 24th were skipped, none else
    assert [c.line_item.id for c in kept] == [
        f"li-a{i:03d}" for i in range(70) if i % 3 == 0 or i < 36
    ]
    assert evaluated == [0, 1]
    assert dropped == {Reason.OUTRANKED: 240 - 48}


def _quota_feasible(kinds: list[frozenset[int]], quota: list[int]) -> bool:
    """Whether candidates fitting the rules ``kinds`` can each be charged to one rule they
    fit within ``quota`` (Hall: no set of rules is fitted only by more than it holds)."""
    n = len(quota)
    for mask in range(1 << n):
        rules = {r for r in range(n) if mask >> r & 1}
        if sum(k <= rules for k in kinds) > sum(quota[r] for r in rules):
            return False
    return True


@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, 10_000, 15_000]),
            st.sampled_from([None, 15_000, 30_000, 60_000]),
            st.sampled_from([None, frozenset({15}), frozenset({30}), frozenset({15, 30})]),
        ),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.sampled_from([6_000, 10_000, 15_000, 20_000, 30_000, 60_000]), max_size=80),
    st.integers(min_value=1, max_value=24),
)
def test_slot_quota_keeps_a_candidate_when_the_kept_ones_can_still_be_charged(
    shapes: list[tuple[int | None, int | None, frozenset[int] | None]],
    durations: list[int],
    limit: int,
) -> None:
    """Fed candidates in rank order, the quota keeps exactly those that, with the ones kept
    before them, can each be charged to one rule they fit within the rules' shares."""
    from vastserver.pipeline.pod import SlotRule

    slots = tuple(SlotRule(lo, hi, req) for lo, hi, req in shapes)
    quota = matching._SlotQuota(slots, limit)
    kept: list[frozenset[int]] = []
    for ms in durations:
        kind = frozenset(n for n, rule in enumerate(quota.rules) if rule.fits(ms))
        want = bool(kind) and _quota_feasible([*kept, kind], quota.quota)
        assert quota.room(ms) == want
        if want:
            quota.keep(ms)
            kept.append(kind)
        assert sum(quota.free) == sum(quota.quota) - len(kept)
    assert quota.full == (len(kept) == sum(quota.quota))


@cache
def _catalog_with_tags(seed: int) -> tuple[Catalog, CatalogIndex]:
    """A spiced catalog where some creatives are third-party tags (http or https) and some
    carry only HLS or serve mp4 over http only, so ``video.mimes`` has wrappers,
    single-type creatives and mixed schemes to sort.
    Most line items are live and untargeted, so most candidates reach the media checks."""
    data = _mutate(generate_catalog(60, seed=seed, now=NOW), seed)
    rng = random.Random(seed + 100)
    for li in data["line_items"]:
        if rng.random() < 0.8:
            li.pop("targeting", None)
            li.pop("positions", None)
            li["status"] = "active"
            li.pop("start", None)
            li.pop("end", None)
    for camp in data["campaigns"]:
        camp["start"] = min(camp["start"], "2026-01-01T00:00:00Z")
        camp["end"] = max(camp["end"], "2028-01-01T00:00:00Z")
    for cr in data["creatives"]:
        r = rng.random()
        if r < 0.15:
            scheme = rng.choice(["https", "http"])
            kept = ("id", "advertiser_id", "title", "approved", "rating", "universal_ad_id")
            kept += ("duration", "duration_ms")
            tag = {k: cr[k] for k in kept if k in cr}
            cr.clear()
            cr.update(tag, vast_tag_url=f"{scheme}://tags.example/vast?c={tag['id']}")
        elif r < 0.3:
            cr["renditions"] = [
                rend for rend in cr["renditions"] if rend["mime"] != "video/mp4"
            ] or cr["renditions"]
        elif r < 0.45:  # mixed: mp4 over http, HLS over https
            for rend in cr["renditions"]:
                if rend["mime"] == "video/mp4":
                    rend["url"] = rend["url"].replace("https://", "http://")
    catalog = parse_catalog(json.loads(json.dumps(data)))
    return catalog, build_index(catalog)


MIME_CHOICES = ["video/mp4", "application/x-mpegurl", "video/webm", "video/ogg"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests(),
    st.none() | st.frozensets(st.sampled_from(MIME_CHOICES), min_size=1),
    st.booleans(),
    st.sampled_from([(True, True), (True, False), (False, True), (False, False)]),
)
def test_bitsets_agree_with_the_filters_on_mimes(
    case: tuple[int, dict[str, str], timedelta],
    mimes: frozenset[str] | None,
    https: bool,
    forms: tuple[bool, bool],
) -> None:
    """OpenRTB ``video.mimes`` and the ad forms ``video.protocols`` admits (inline ads,
    third-party tags): the bitsets keep exactly the candidates the policy filter keeps,
    with and without https media required, wrappers included, and count each drop under
    the reason the filter gives."""
    seed, q, _ = case
    catalog, index = _catalog_with_tags(seed)
    req = parse_vast_request(q, CLIENT, catalog.rules_for(None), require_https=https)
    req = replace(req, mimes=mimes, inline_ads=forms[0], wrapper_ads=forms[1])
    env = _env(req, timedelta(0))
    fast, dropped = index.select(req, env)
    slow = screen(req, index.candidates, env, PRE_DELIVERY_FILTERS)
    assert [c.key for c in fast] == [c.key for c in slow.survivors]
    assert sum(dropped.values()) == len(index.candidates) - len(fast)
    assert dropped == dict(Counter(t.reason for t in slow.traces))


def test_protocols_keep_the_ad_forms_the_player_takes() -> None:
    """``video.protocols`` without the wrapper code: tags are ``protocol_not_accepted``,
    inline ads stay; without the inline code, the reverse; ``/vast`` (both) keeps both."""
    _, index = _catalog_with_tags(1)
    base = AdRequest(brk=BreakSpec(BreakPosition.MID, 120_000, 4), require_https=False)
    env = StageEnv(now=NOW)
    passing = [c for c in index.candidates if policy(base, c, env) is None]
    tag = next(c for c in passing if c.creative.vast_tag_url is not None)
    inline = next(c for c in passing if c.creative.vast_tag_url is None)
    no_tags = replace(base, wrapper_ads=False)
    tags_only = replace(base, inline_ads=False)
    assert policy(no_tags, tag, env) is Reason.PROTOCOL_NOT_ACCEPTED
    assert policy(no_tags, inline, env) is None
    assert policy(tags_only, inline, env) is Reason.PROTOCOL_NOT_ACCEPTED
    assert policy(tags_only, tag, env) is None
    for req, kept in ((no_tags, False), (tags_only, True)):
        fast, dropped = index.select(req, env)
        assert fast and {c.creative.vast_tag_url is not None for c in fast} == {kept}
        assert dropped.get(Reason.PROTOCOL_NOT_ACCEPTED, 0) > 0


def test_mimes_drop_creatives_without_a_listed_type_but_keep_tags() -> None:
    """Only mp4 listed: an HLS-only creative is ``mime_type``; a tag (media unknown) stays;
    the same creative passes when HLS is listed too (in any case, with parameters)."""
    _, index = _catalog_with_tags(1)
    by_kind: dict[str, Any] = {}
    for c in index.candidates:
        types = {r.mime.lower() for r in c.creative.renditions}
        if c.creative.vast_tag_url is not None:
            by_kind.setdefault("tag", c)
        elif types == {"application/x-mpegurl"}:
            by_kind.setdefault("hls", c)
    base = AdRequest(brk=BreakSpec(BreakPosition.MID, 120_000, 4), require_https=False)
    env = StageEnv(now=NOW)
    mp4 = replace(base, mimes=frozenset({"video/mp4"}))
    assert policy(mp4, by_kind["tag"], env) is None
    assert policy(base, by_kind["hls"], env) is None
    assert policy(mp4, by_kind["hls"], env) is Reason.MIME_TYPE
    both = replace(base, mimes=frozenset({"application/x-mpegurl", "video/mp4"}))
    assert policy(both, by_kind["hls"], env) is None
    _, dropped = index.select(mp4, env)
    assert dropped.get(Reason.MIME_TYPE, 0) > 0


def test_blocked_attributes_drop_the_creatives_having_one() -> None:
    """``battr``: a creative declaring a blocked attribute, or having 13 by its SIMID files
    or VPAID, is ``blocked_attribute`` (after ``blocked_category``), by the filter and the
    bitsets alike; without ``battr`` no candidate is."""
    _, index = catalog_and_index(0)
    base = AdRequest(brk=BreakSpec(BreakPosition.MID, 120_000, 4), require_https=False)
    env = StageEnv(now=NOW)
    passing = [c for c in index.candidates if policy(base, c, env) is None]
    simid = next(c for c in passing if c.creative.interactive and c.categories)
    vpaid = next(c for c in passing if c.creative.api_framework == "VPAID")
    nine = next(
        c for c in passing if 9 in c.creative.attributes and 13 not in c.creative.attributes
    )
    plain = next(c for c in passing if not c.creative.attributes)
    assert 13 in simid.creative.attributes and 13 in vpaid.creative.attributes
    interactive = replace(base, blocked_attributes=frozenset({13}))
    for c, blocked in ((simid, True), (vpaid, True), (nine, False), (plain, False)):
        got = policy(interactive, c, env)
        assert got is (Reason.BLOCKED_ATTRIBUTE if blocked else None), c.key
    # codes beyond AdCOM's 17 block nothing, and several codes block any of them
    assert policy(replace(base, blocked_attributes=frozenset({9, 500})), nine, env) is (
        Reason.BLOCKED_ATTRIBUTE
    )
    assert policy(replace(base, blocked_attributes=frozenset({500})), nine, env) is None
    # a blocked category is named first
    cat_env = StageEnv(now=NOW, blocked_categories=frozenset({simid.categories[0]}))
    assert policy(interactive, simid, cat_env) is Reason.BLOCKED_CATEGORY
    for env_ in (env, cat_env):
        fast, dropped = index.select(interactive, env_)
        slow = screen(interactive, index.candidates, env_, PRE_DELIVERY_FILTERS)
        assert [c.key for c in fast] == [c.key for c in slow.survivors]
        assert dropped == dict(Counter(t.reason for t in slow.traces))
        assert dropped.get(Reason.BLOCKED_ATTRIBUTE, 0) > 0
        assert not any(13 in c.creative.attributes for c in fast)
    _, unblocked = index.select(base, env)
    assert Reason.BLOCKED_ATTRIBUTE not in unblocked
