"""Scoring: the value of each surviving candidate, computed in one batch per request.

Until a model is loaded the value is ``price x tier weight`` (:class:`PriceScorer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    """The CPM a candidate competes with: its line item's ranking CPM (for a flat line item
    not its fee; see :func:`vastserver.catalog.model.ranking_cpm`), at least the house floor."""
    return max(cand.line_item.rank_cpm, HOUSE_FLOOR_PRICE)


@dataclass(frozen=True, slots=True)
class ScoringContext:
    """Per-request facts a model may use beyond the request and the candidate.

    Fetched with the delivery counters (no extra round trip) or kept fresh by the pacing loop.
    """

    now: datetime
    viewer_exposures: int = 0
    """Impressions this viewer counted in the last 24 h."""
    completion_rates: Mapping[str, float] = field(default_factory=dict)
    """Line item id -> historic completion rate (absent: unknown)."""


class Scorer(Protocol):
    name: str
    version: str

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        """Predicted probability of the outcome we value (completion), one per candidate,
        all finite and in [0, 1]."""
        ...


class PriceScorer:
    """No model: every candidate is predicted to complete; value is price-driven."""

    name = "price"
    version = "price-v1"

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        return [1.0] * len(cands)


def values(cands: Sequence[Candidate], predictions: Sequence[float]) -> list[float]:
    """value = effective CPM x predicted outcome x tier weight."""
    return [
        effective_cpm(c) * p * TIER_WEIGHT[c.line_item.tier]
        for c, p in zip(cands, predictions, strict=True)
    ]
