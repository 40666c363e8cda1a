"""Simulation settings: the population, the clock, the servers and the fault rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

__all__ = ["DEFAULT_START", "Faults", "SimConfig"]

DEFAULT_START = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
"""Midnight of Wednesday 2026-11-25 in New York: a default simulated day starts here."""


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong between players/stitchers and the server (rates are probabilities)."""

    lost: float = 0.02
    """A beacon never arrives (network, app killed)."""
    duplicate: float = 0.01
    """A beacon arrives twice (retry after a timeout, double-firing player)."""
    late: float = 0.02
    """A beacon arrives ``late_min_s``..``late_max_s`` after the event (stitcher batches,
    offline queues)."""
    late_min_s: float = 60.0
    late_max_s: float = 600.0
    not_used_player: float = 0.7
    """A client-side player sends ``notUsed`` for prefetched ads it never played."""
    not_used_ssai: float = 0.95
    """An SSAI stitcher sends ``notUsed`` for ads it fetched and did not stitch."""
    no_fill_error: float = 0.9
    """A player fires an empty VAST's root ``<Error>`` with ``[ERRORCODE]`` 303."""

    def validate(self) -> list[str]:
        problems: list[str] = []
        for name in ("lost", "duplicate", "late", "not_used_player", "not_used_ssai",
                     "no_fill_error"):  # fmt: skip
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                problems.append(f"fault rate {name} must be in [0, 1], got {v}")
        if not 0.0 <= self.late_min_s <= self.late_max_s:
            problems.append("late beacons need 0 <= late_min_s <= late_max_s")
        return problems


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation run. Everything random derives from ``seed``."""

    seed: int = 1
    households: int = 2000
    hours: float = 24.0
    """Sessions start in ``[start, start + hours)``; the run then drains (late beacons)."""
    start: datetime = DEFAULT_START
    catalog_path: Path | None = None
    """Catalog JSON; None: the catalog in ``catalog_doc`` (a generated one)."""
    catalog_doc: Mapping[str, object] | None = None
    """A catalog document to serve (written next to the report or to a temp dir)."""
    instances: int = 1
    redis_url: str | None = None
    flush_redis: bool = False
    """Delete the server's ``vs:*`` keys first when the Redis database already has some."""
    model_path: Path | None = None
    """A model bundle for the server (``{"model": PATH}`` settings override); None: price."""
    truth_ranking: bool = False
    """Rank with the ground truth itself (:class:`vastserver.sim.truth_scorer.TruthScorer`,
    the perfect model) instead of price or ``model_path``: a lift's ceiling."""
    ssai_share: float = 0.3
    """Share of sessions played through an SSAI stitcher instead of a client-side player."""
    lookahead_share: float = 0.5
    """Share of SSAI sessions whose stitcher fetches several breaks ahead at once
    (:data:`~vastserver.sim.engine.LOOKAHEAD_BREAKS`): each of those serves must count the
    reservations of the others, served but not yet played."""
    sessions_per_household: float = 1.8
    """Mean viewing sessions per household per day (spread by ``HOURLY_TRAFFIC``)."""
    faults: Faults = field(default_factory=Faults)
    settings: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    """Extra server settings overrides (``load_settings`` names), e.g. separation rules."""
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Environment passed to ``load_settings`` (the CLI passes ``os.environ``)."""
    event_log_dir: Path | None = None
    """Let the server write its event log here (per instance subdirectories); None: off."""
    sample_every_s: int = 3600
    """How often the delivery of budgeted line items is sampled from ``/admin/line-items``."""

    def validate(self) -> list[str]:
        problems = self.faults.validate()
        if self.households < 1:
            problems.append("households must be >= 1")
        if not 0 < self.hours <= 24 * 7:
            problems.append("hours must be in (0, 168]")
        if self.instances not in (1, 2):
            problems.append("instances must be 1 or 2")
        if self.instances > 1 and not self.redis_url:
            problems.append("two instances need a shared state store: give a redis URL")
        if not 0.0 <= self.ssai_share <= 1.0:
            problems.append("ssai_share must be in [0, 1]")
        if not 0.0 <= self.lookahead_share <= 1.0:
            problems.append("lookahead_share must be in [0, 1]")
        if self.sessions_per_household <= 0:
            problems.append("sessions_per_household must be > 0")
        if self.start.tzinfo is None:
            problems.append("start must carry a UTC offset")
        if self.catalog_path is None and self.catalog_doc is None:
            problems.append("a catalog (path or document) is required")
        if self.truth_ranking and self.model_path is not None:
            problems.append("truth ranking replaces the model: give one or the other")
        if self.sample_every_s < 60:
            problems.append("sample_every_s must be >= 60")
        return problems
