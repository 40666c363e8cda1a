"""What the simulator observed: every served pod and ad, and how each ad played out."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Pod", "ServedAd"]


@dataclass(slots=True)
class ServedAd:
    serving_id: str
    pod: int
    """Index into the run's pod list."""
    slot: int
    line_item: str
    creative: str
    campaign: str
    advertiser: str
    labels: frozenset[str]
    """The ad's competitive labels: its advertiser's ``competitive_category`` and its line
    item's and creative's ``competitive_categories``, as the catalog gives them."""
    price_micros: int
    served_ms: int
    duration_ms: int
    session: str
    """The session the client sent (the break's ad tag; ``Pod.session``): caps, separation
    and limit-ad-tracking viewers are checked on it. The token's session must equal it (the
    engine counts an anomaly otherwise)."""
    viewer_key: str
    """Who the server should cap for (the simulator's own computation)."""
    viewer_hash: str
    """Who the server did cap for (from the signed token)."""
    lmt: bool
    played_ms: int | None = None
    """When its impression happened (the viewer saw it), None if never played."""
    impression_arrival_ms: int | None = None
    """When the server counted its impression (simulator's replica of the dedupe rules)."""
    not_used_arrival_ms: int | None = None
    """When the server counted its ``notUsed`` (the same replica): from then on the ad is out
    of its session's history (it never played), so later breaks may bring back its creative
    and competitive labels."""
    complete: bool = False
    """The viewer watched it to the end (ground truth)."""
    p_complete: float | None = None
    """The ground truth's probability that it would be watched to the end, once played:
    summed over played ads it gives the completions a ranking earns, without the luck of
    the draws."""


@dataclass(slots=True)
class Pod:
    index: int
    session_plan: int
    session: str
    avail: int
    position: str
    requested_ms: int
    filled_ms: int
    served_ms: int
    ads: list[str] = field(default_factory=list)
    """Serving ids in play order."""
    ssai: bool = False
    played: bool = False
