"""The hidden ground truth of synthetic data: how a viewer responds to an ad that was served.

Used by the synthetic event generator (:mod:`vastserver.ml.synth`) and by traffic simulators.
Nothing on the serving path may import this module: the model has to *learn* these effects
from the event log, and tests check it beats a no-skill baseline on data generated here.

Three outcomes per served ad:

* **impression** given served: players and stitchers sometimes fail (more on mobile/desktop
  and on live streams). A failed ad ends in an ``error`` beacon, a ``notUsed`` beacon
  (the stitcher dropped it) or nothing at all.
* **completion** given an impression: a logistic model over device type, genre, break
  position, slot in the pod, creative length (hurts more on mobile/desktop), viewer fatigue
  (impressions in the last 24 h), live content, hour of day, and a hidden per-creative
  quality effect (a stable hash of the creative id, so line-item history carries signal).
* **click** given an impression: small, mostly a function of the device (CTV remotes rarely
  click).

Everything random comes from the ``random.Random`` passed in, so a seeded generator yields the
same outcomes; the per-creative quality is a pure function of the creative id.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "PROGRESS_EVENTS",
    "AdExposure",
    "Outcome",
    "TruthParams",
    "ViewerModel",
    "creative_quality",
]

PROGRESS_EVENTS: Final = ("start", "firstQuartile", "midpoint", "thirdQuartile", "complete")
"""Linear progress events in play order (each fires at its fraction of the creative)."""
PROGRESS_FRACTIONS: Final = (0.0, 0.25, 0.5, 0.75, 1.0)

ERROR_CODES: Final = (400, 402, 405, 900)


def _frozen(d: dict[str, float]) -> MappingProxyType[str, float]:
    return MappingProxyType(d)


@dataclass(frozen=True, slots=True)
class TruthParams:
    """Coefficients of the viewer model (log-odds unless noted)."""

    impression_rate: MappingProxyType[str, float] = field(
        default_factory=lambda: _frozen(
            {"ctv": 0.97, "stb": 0.96, "mobile": 0.92, "desktop": 0.90, "": 0.94}
        )
    )
    """P(impression | served) by device type ('' = unknown); live streams lose 2 points."""
    complete_base: MappingProxyType[str, float] = field(
        default_factory=lambda: _frozen(
            {"ctv": 2.0, "stb": 1.7, "mobile": 0.4, "desktop": 0.1, "": 1.2}
        )
    )
    genre_effect: MappingProxyType[str, float] = field(
        default_factory=lambda: _frozen(
            {
                "kids": 0.35, "animation": 0.3, "movies": 0.3, "drama": 0.2, "documentary": 0.15,
                "crime": 0.1, "scifi": 0.05, "comedy": 0.0, "lifestyle": -0.1,
                "reality": -0.2, "sports": -0.25, "news": -0.45,
            }
        )
    )  # fmt: skip
    position_effect: MappingProxyType[str, float] = field(
        default_factory=lambda: _frozen({"pre": 0.45, "mid": 0.0, "post": -1.1})
    )
    per_slot: float = -0.22
    """Each slot after the first in the pod."""
    per_second_over_15: float = -0.03
    """Creative length beyond 15 s (shorter creatives gain the same per second)."""
    small_screen_per_second: float = -0.03
    """Extra per second over 15 s on mobile/desktop."""
    per_exposure: float = -0.07
    """Each impression the viewer saw in the last 24 h (fatigue), counted up to 25."""
    live: float = -0.35
    prime_time: float = 0.25
    """Hours 0-3 UTC (US evening)."""
    quality_scale: float = 0.6
    """Spread of the hidden per-creative quality effect (uniform in +-scale)."""
    click_rate: MappingProxyType[str, float] = field(
        default_factory=lambda: _frozen(
            {"ctv": 0.002, "stb": 0.0015, "mobile": 0.02, "desktop": 0.015, "": 0.004}
        )
    )
    """P(click | impression) by device type."""
    start_rate: float = 0.985
    """P(start | impression)."""


@dataclass(frozen=True, slots=True)
class AdExposure:
    """What the viewer model sees of one served ad (more than the server ever learns)."""

    device_type: str | None
    genres: tuple[str, ...]
    live: bool
    break_position: str
    slot: int
    """1-based slot in the pod."""
    pod_size: int
    creative_id: str
    creative_duration_ms: int
    recent_exposures: int
    """Impressions this viewer actually saw in the 24 h before this ad."""
    hour_utc: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one served ad played out."""

    impression: bool
    failure: str | None
    """Without an impression: ``"error"``, ``"notUsed"`` or None (the player said nothing)."""
    error_code: int | None
    progress: tuple[str, ...]
    """Progress events fired after the impression, in order (a prefix of PROGRESS_EVENTS)."""
    click: bool
    watched_fraction: float
    """How much of the creative played (0 without an impression)."""

    @property
    def complete(self) -> bool:
        return "complete" in self.progress


def creative_quality(creative_id: str) -> float:
    """Stable hidden quality in [-1, 1) of a creative (a hash, not an RNG draw)."""
    digest = hashlib.sha256(b"truth-quality:" + creative_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1.0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class ViewerModel:
    """The ground-truth response model; see the module docstring."""

    def __init__(self, params: TruthParams | None = None) -> None:
        self.params = params or TruthParams()

    def p_impression(self, x: AdExposure) -> float:
        p = self.params.impression_rate.get(x.device_type or "", self.params.impression_rate[""])
        return max(0.0, p - (0.02 if x.live else 0.0))

    def complete_logit(self, x: AdExposure) -> float:
        pr = self.params
        dev = x.device_type or ""
        z = pr.complete_base.get(dev, pr.complete_base[""])
        if x.genres:
            z += pr.genre_effect.get(x.genres[0], 0.0)
            z += 0.3 * sum(pr.genre_effect.get(g, 0.0) for g in x.genres[1:])
        z += pr.position_effect.get(x.break_position, 0.0)
        z += pr.per_slot * (x.slot - 1)
        over = x.creative_duration_ms / 1000.0 - 15.0
        z += pr.per_second_over_15 * over
        if dev in ("mobile", "desktop"):
            z += pr.small_screen_per_second * max(0.0, over)
        z += pr.per_exposure * min(x.recent_exposures, 25)
        if x.live:
            z += pr.live
        if 0 <= x.hour_utc < 4:
            z += pr.prime_time
        z += pr.quality_scale * creative_quality(x.creative_id)
        return z

    def p_complete(self, x: AdExposure) -> float:
        """P(complete | started); given an impression, ``params.start_rate`` times this."""
        return _sigmoid(self.complete_logit(x))

    def p_click(self, x: AdExposure) -> float:
        """P(click | impression)."""
        base = self.params.click_rate.get(x.device_type or "", self.params.click_rate[""])
        return base * (1.0 + 0.5 * creative_quality(x.creative_id))

    def simulate(self, x: AdExposure, rng: random.Random) -> Outcome:
        """Draw the outcome of one served ad. Uses a fixed number of draws per branch."""
        if rng.random() >= self.p_impression(x):
            r = rng.random()
            if r < 0.45:
                return Outcome(False, "error", rng.choice(ERROR_CODES), (), False, 0.0)
            if r < 0.8:
                return Outcome(False, "notUsed", None, (), False, 0.0)
            return Outcome(False, None, None, (), False, 0.0)
        if rng.random() >= self.params.start_rate:
            return Outcome(True, None, None, (), False, 0.0)
        completes = rng.random() < self.p_complete(x)
        clicked = rng.random() < self.p_click(x)
        progress: tuple[str, ...]
        if completes:
            progress = PROGRESS_EVENTS
            watched = 1.0
        else:
            # Leaves somewhere in the creative; the quartiles passed before leaving fire.
            watched = rng.random() * 0.98
            n = 1 + sum(1 for f in PROGRESS_FRACTIONS[1:-1] if f <= watched)
            progress = PROGRESS_EVENTS[:n]
        return Outcome(True, None, None, progress, clicked, watched)
