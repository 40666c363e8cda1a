"""Candidates: the line item x creative pairs a decision chooses from.

The index that narrows them per request is :mod:`vastserver.pipeline.matching`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from vastserver.catalog.model import (
    Advertiser,
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
    media_key: str = field(init=False, compare=False, repr=False)
    """:func:`unique_media_key` of the creative (computed once: candidates live as long as
    their catalog snapshot and every decision asks)."""
    group: str = field(init=False, compare=False, repr=False)
    """:func:`separation_group` of the candidate."""
    labels: frozenset[str] = field(init=False, compare=False, repr=False)
    """The ad's competitive labels: its advertiser's ``competitive_category`` and its line
    item's and creative's ``competitive_categories`` (two ads sharing one never share a pod;
    each sits out the session's next breaks)."""
    separation_keys: frozenset[str] | None = field(init=False, compare=False, repr=False)
    """The pod-separation keys of an ad that has more than one (:func:`separation_keys`), None
    for the usual ad that has just its ``group``: a pod holds no two ads sharing a key."""
    categories: tuple[str, ...] = field(init=False, compare=False, repr=False)
    """The ad's IAB categories: the advertiser's, then those the creative adds (each once).
    Brand safety (kids content, ``bcat``, blocklists) judges these and the VAST
    ``<Category>`` elements carry them, so a publisher sees what the ad was screened on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "media_key", _media_key(self.creative))
        adv = self.advertiser
        labels = frozenset(
            (*self.line_item.competitive_categories, *self.creative.competitive_categories)
        )
        if adv.competitive_category is not None:
            labels |= {adv.competitive_category}
        keys = _keys(adv, labels)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "separation_keys", keys if len(keys) > 1 else None)
        object.__setattr__(self, "group", " ".join(sorted(keys)))
        codes = (*self.advertiser.categories, *self.creative.categories)
        object.__setattr__(self, "categories", tuple(dict.fromkeys(codes)))

    @property
    def key(self) -> str:
        return f"{self.line_item.id}/{self.creative.id}"


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


def all_candidates(catalog: Catalog) -> tuple[Candidate, ...]:
    """Every line item x creative pair, in a stable order (line item id, then creative)."""
    out: list[Candidate] = []
    for li in sorted(catalog.line_items.values(), key=lambda li: li.id):
        campaign = catalog.campaigns[li.campaign_id]
        advertiser = catalog.advertisers[campaign.advertiser_id]
        out.extend(
            Candidate(li, catalog.creatives[cid], campaign, advertiser) for cid in li.creative_ids
        )
    return tuple(out)


def _media_key(creative: Creative) -> str:
    if creative.media_key:  # the catalog's: shared by every creative with the same video
        return creative.media_key
    if creative.vast_tag_url is not None:
        return creative.vast_tag_url  # the same tag twice in a pod is the same ad twice
    urls: Iterable[str] = (r.url for r in creative.renditions)
    return min(urls, default=creative.id)


def _keys(adv: Advertiser, labels: frozenset[str]) -> frozenset[str]:
    """``comp:<label>`` per label, and ``adv:<id>`` when the advertiser has no category of its
    own (with one, every ad of the advertiser carries it: a key of its own adds nothing)."""
    keys = {f"comp:{x}" for x in labels}
    if adv.competitive_category is None:
        keys.add(f"adv:{adv.id}")
    return frozenset(keys)


def unique_media_key(creative: Creative) -> str:
    """The media identity used to refuse the same video twice in a pod."""
    return _media_key(creative)


def separation_group(c: Candidate) -> str:
    """Separation group: the competitive category, else the advertiser. Creatives belong to
    one advertiser, so the group also keeps a creative from playing twice in a pod.

    An ad with several keys (:func:`separation_keys`) has them all, space-separated (ids
    and slugs have no spaces), as its group: ads of one group share every key, so one of
    them is as good a pod member as another, while ads of other groups sharing a key are
    kept apart by the pod builder."""
    return c.group


def separation_keys(c: Candidate) -> frozenset[str]:
    """What keeps two ads out of one pod: ``comp:<label>`` per competitive label, and the
    advertiser (``adv:<id>``) when it has no category -- one ad per advertiser. Two ads
    sharing a key never share a pod. Most ads have one key: their :func:`separation_group`."""
    keys = c.separation_keys
    return frozenset((c.group,)) if keys is None else keys
