"""Creative rotation: a line item's equivalent creatives take turns, drawn from the pipeline's
injected RNG, while the pod stays the optimiser's exact choice."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.delivery_support import Clock, _creative, base_catalog, make_service, request
from vastserver.models import ModelManager
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.decide import decide, rotation_keys
from vastserver.pipeline.scoring import PriceScorer, ScoringContext
from vastserver.pipeline.stages import StageEnv
from vastserver.store.memory import MemoryStore

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
TIED = ("cr-a", "cr-a2", "cr-a3")
REQUESTS = 600


def _catalog() -> dict[str, Any]:
    """li-a ($20, standard) with three 15 s creatives of its advertiser, and a house ad."""
    cat = base_catalog()
    cat["creatives"] += [
        _creative("cr-a2", "adv-a", "AAAA0002000H"),
        _creative("cr-a3", "adv-a", "AAAA0003000H"),
    ]
    cat["line_items"][0]["creative_ids"] = list(TIED)
    return cat


async def _serve(svc: Any, n: int) -> list[str]:
    """The creative of li-a each of ``n`` viewers without a session gets in a 15 s break."""
    out = []
    for i in range(n):
        d = await svc.decide(request(f"viewer-{i}", pod_s=15, max_ads=1))
        assert [a.candidate.line_item.id for a in d.ads] == ["li-a"]
        out.append(d.ads[0].candidate.creative.id)
    return out


def _service(seed: int) -> Any:
    clock = Clock(T0)
    return make_service(_catalog(), MemoryStore(clock=lambda: clock.now.timestamp()), clock, seed)


async def test_tied_creatives_take_turns_evenly() -> None:
    served = await _serve(_service(seed=3), REQUESTS)
    counts = Counter(served)
    assert set(counts) == set(TIED)
    # Each serves 1/3 of the time: binomial(600, 1/3) has mean 200 and sd 11.5; the bound is
    # over 4 sd wide (and the seed fixes the draws, so the test cannot flake).
    for cr in TIED:
        assert 150 <= counts[cr] <= 250, counts
    # Not a fixed cycle either: the creative of a request does not just follow from the last.
    assert len(Counter(itertools.pairwise(served))) == 9
    # Deterministic for a given RNG seed.
    assert await _serve(_service(seed=3), 60) == served[:60]


class _PrefersA2(PriceScorer):
    """Price scoring, but cr-a2 is predicted to complete a little more often than its siblings."""

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        base = super().predict(req, cands, ctx)
        return [
            p if c.creative.id == "cr-a2" else p * 0.99 for p, c in zip(base, cands, strict=True)
        ]


async def test_a_creative_the_model_prefers_still_wins() -> None:
    svc = _service(seed=3)
    svc.models = ModelManager.fixed(svc.metrics, _PrefersA2())
    assert set(await _serve(svc, 100)) == {"cr-a2"}


def test_only_a_line_items_ties_trade_keys() -> None:
    svc = _service(seed=1)
    cat = svc.snapshot.catalog
    li_a, li_b = cat.line_items["li-a"], cat.line_items["li-b"]

    def cand(li: Any, cr: str) -> Candidate:
        camp = cat.campaigns[li.campaign_id]
        return Candidate(li, cat.creatives[cr], camp, cat.advertisers[camp.advertiser_id])

    # cr-a and cr-a3 tie, cr-a2 is worth more; li-b's creative is alone.
    cands = [cand(li_a, "cr-a"), cand(li_b, "cr-b"), cand(li_a, "cr-a2"), cand(li_a, "cr-a3")]
    vals = [20.0, 0.0001, 21.0, 20.0]
    assert rotation_keys(cands, vals, None) == [0, 1, 2, 3]
    rng = random.Random(5)
    seen = set()
    for _ in range(50):
        keys = rotation_keys(cands, vals, rng)
        assert keys[1:3] == [1, 2]
        seen.add((keys[0], keys[3]))
    assert seen == {(0, 3), (3, 0)}
    # Two creatives (the common case) swap half the time; not when their seconds differ.
    pair = [cands[0], cands[3]]
    swaps = Counter(tuple(rotation_keys(pair, [20.0, 20.0], rng)) for _ in range(1000))
    assert set(swaps) == {(0, 1), (1, 0)} and 400 <= swaps[(1, 0)] <= 600, swaps
    longer = replace(cat.creatives["cr-a3"], duration_ms=16_000)
    pair[1] = Candidate(li_a, longer, pair[1].campaign, pair[1].advertiser)
    assert all(rotation_keys(pair, [20.0, 20.0], rng) == [0, 1] for _ in range(50))


class _Bits(random.Random):
    """An RNG whose every bit is ``bit``: two tied creatives swap keys (1) or keep them (0)."""

    def __init__(self, bit: int) -> None:
        super().__init__(0)
        self.bit = bit

    def getrandbits(self, k: int, /) -> int:
        return self.bit


@pytest.mark.parametrize("labelled", ["cr-a", "cr-a2"])
def test_a_labelled_creative_still_takes_turns(labelled: str) -> None:
    """li-a's two tied creatives, one with a competitive label of its own: the draw decides
    which plays (the pod builder's search for groups sharing keys used to give the tie to
    the labelled one, which then served every request)."""
    cat = base_catalog()
    cat["creatives"].append(_creative("cr-a2", "adv-a", "AAAA0002000H"))
    next(c for c in cat["creatives"] if c["id"] == labelled)["competitive_categories"] = ["promo"]
    cat["line_items"][0]["creative_ids"] = ["cr-a", "cr-a2"]
    clock = Clock(T0)
    svc = make_service(cat, MemoryStore(clock=lambda: clock.now.timestamp()), clock)
    snap = svc.snapshot.catalog

    def cand(li: str, cr: str) -> Candidate:
        item = snap.line_items[li]
        camp = snap.campaigns[item.campaign_id]
        return Candidate(item, snap.creatives[cr], camp, snap.advertisers[camp.advertiser_id])

    cands = [cand("li-a", "cr-a"), cand("li-a", "cr-a2"), cand("li-b", "cr-b")]
    assert [c.separation_keys for c in cands[:2]] == [
        frozenset({"comp:auto", "comp:promo"}) if c.creative.id == labelled else None
        for c in cands[:2]
    ]
    served: dict[int, list[str]] = {}
    for bit in (0, 1):
        d = decide(
            request(pod_s=30, max_ads=2), cands, StageEnv(now=T0, rng=_Bits(bit)), filters=()
        )
        assert len(d.ads) == 2
        served[bit] = [a.candidate.creative.id for a in d.ads if a.candidate.line_item.id == "li-a"]
    # Keys kept (0): cr-a has the lower key; swapped (1): cr-a2 has.
    assert served == {0: ["cr-a"], 1: ["cr-a2"]}
