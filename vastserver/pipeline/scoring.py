"""Scoring: the value of each surviving candidate, computed in one batch per request.

Until a model is loaded the value is ``price x tier weight`` (:class:`PriceScorer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vastserver.catalog.model import Tier
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest

TIER_WEIGHT: dict[Tier, float] = {
    Tier.HOUSE: 0.01,
    Tier.STANDARD: 1.0,
    Tier.GUARANTEED: 1.5,
    Tier.SPONSORSHIP: 2.0,
}
HOUSE_FLOOR_PRICE = 0.01
"""House line items usually carry no price; they still need a positive value to fill."""


def effective_cpm(cand: Candidate) -> float:
    li = cand.line_item
    return max(li.price, HOUSE_FLOOR_PRICE)


class Scorer(Protocol):
    name: str

    def predict(self, req: AdRequest, cands: Sequence[Candidate]) -> list[float]:
        """Predicted probability of the outcome we value (completion), one per candidate."""
        ...


class PriceScorer:
    """No model: every candidate is predicted to complete; value is price-driven."""

    name = "price"

    def predict(self, req: AdRequest, cands: Sequence[Candidate]) -> list[float]:
        return [1.0] * len(cands)


def values(cands: Sequence[Candidate], predictions: Sequence[float]) -> list[float]:
    """value = effective CPM x predicted outcome x tier weight."""
    return [
        effective_cpm(c) * p * TIER_WEIGHT[c.line_item.tier]
        for c, p in zip(cands, predictions, strict=True)
    ]
