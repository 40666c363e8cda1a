"""Candidates (line item x creative pairs) and the retrieval index built at catalog load.

Retrieval narrows the catalog to the line items whose *include* rules can match the request,
using an inverted index per targeting dimension, so a request touches the line items that match
rather than the whole catalog. The filters in ``stages`` then decide every remaining rule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from vastserver.catalog.model import (
    Advertiser,
    BreakPosition,
    Campaign,
    Catalog,
    Creative,
    LineItem,
)
from vastserver.pipeline.context import AdRequest


@dataclass(frozen=True, slots=True)
class Candidate:
    line_item: LineItem
    creative: Creative
    campaign: Campaign
    advertiser: Advertiser

    @property
    def key(self) -> str:
        return f"{self.line_item.id}/{self.creative.id}"


INDEXED_DIMENSIONS: tuple[str, ...] = (
    "country",
    "device_type",
    "platform",
    "genre",
    "series",
    "channel",
    "content_id",
    "language",
    "segment",
)
"""Dimensions with an inverted index on their include lists (the selective ones)."""


def request_values(req: AdRequest, dimension: str) -> tuple[str, ...]:
    """The request's values for a targeting dimension (several for genre and segments)."""
    d, c = req.device, req.content
    single: str | None
    match dimension:
        case "genre":
            return c.genres
        case "segment":
            return req.segments
        case "country":
            single = d.country
        case "region":
            single = d.region
        case "dma":
            single = d.dma
        case "device_type":
            single = d.device_type
        case "platform":
            single = d.platform
        case "language":
            single = d.language
        case "rating":
            single = c.rating
        case "live":
            single = None if c.live is None else ("1" if c.live else "0")
        case "series":
            single = c.series
        case "channel":
            single = c.channel
        case "content_id":
            single = c.id
        case "break":
            single = req.brk.position.value
        case "ifa_type":
            single = d.ifa_type
        case _:
            single = None
    return () if single is None else (single,)


@dataclass(frozen=True, slots=True)
class CatalogIndex:
    """Candidates grouped by line item plus inverted indexes over include rules.

    ``by_position[pos]`` holds the ordinals of line items that may serve at ``pos``;
    ``include[dim][value]`` the ordinals whose ``dim`` rule includes ``value``;
    ``restricted[dim]`` the ordinals that have a non-empty include rule on ``dim``.
    Retrieval = by_position minus, for each indexed dimension, the restricted line items that
    the request's values do not reach. Set operations on ints keep it cheap.
    """

    catalog: Catalog
    line_items: tuple[LineItem, ...]
    candidates: tuple[tuple[Candidate, ...], ...]
    by_position: Mapping[BreakPosition, frozenset[int]]
    include: Mapping[str, Mapping[str, frozenset[int]]]
    restricted: Mapping[str, frozenset[int]]

    def retrieve(self, req: AdRequest) -> list[Candidate]:
        pool = set(self.by_position[req.brk.position])
        for dim in INDEXED_DIMENSIONS:
            restricted = self.restricted.get(dim)
            if not restricted:
                continue
            reach: set[int] = set()
            by_value = self.include[dim]
            for v in request_values(req, dim):
                hit = by_value.get(v)
                if hit:
                    reach |= hit
            pool -= restricted - reach
        out: list[Candidate] = []
        for i in sorted(pool):
            out.extend(self.candidates[i])
        return out

    def all_candidates(self, position: BreakPosition) -> list[Candidate]:
        out: list[Candidate] = []
        for i in sorted(self.by_position[position]):
            out.extend(self.candidates[i])
        return out


def build_index(catalog: Catalog) -> CatalogIndex:
    items = tuple(sorted(catalog.line_items.values(), key=lambda li: li.id))
    cands: list[tuple[Candidate, ...]] = []
    by_pos: dict[BreakPosition, set[int]] = {p: set() for p in BreakPosition}
    include: dict[str, dict[str, set[int]]] = {d: defaultdict(set) for d in INDEXED_DIMENSIONS}
    restricted: dict[str, set[int]] = {d: set() for d in INDEXED_DIMENSIONS}
    for i, li in enumerate(items):
        campaign = catalog.campaigns[li.campaign_id]
        advertiser = catalog.advertisers[campaign.advertiser_id]
        cands.append(
            tuple(
                Candidate(li, catalog.creatives[cid], campaign, advertiser)
                for cid in li.creative_ids
            )
        )
        for pos in li.positions:
            by_pos[pos].add(i)
        for dim in INDEXED_DIMENSIONS:
            rule = li.targeting.rules.get(dim)
            if rule is not None and rule.include:
                restricted[dim].add(i)
                for v in rule.include:
                    include[dim][v].add(i)
    return CatalogIndex(
        catalog=catalog,
        line_items=items,
        candidates=tuple(cands),
        by_position=MappingProxyType({p: frozenset(s) for p, s in by_pos.items()}),
        include=MappingProxyType(
            {
                d: MappingProxyType({v: frozenset(s) for v, s in m.items()})
                for d, m in include.items()
            }
        ),
        restricted=MappingProxyType({d: frozenset(s) for d, s in restricted.items()}),
    )


def unique_media_key(creative: Creative) -> str:
    """The media identity used to refuse the same video twice in a pod."""
    urls: Iterable[str] = (r.url for r in creative.renditions)
    return min(urls, default=creative.id)
