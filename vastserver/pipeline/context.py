"""The request model every stage reads: one break, one viewer, one piece of content.

Built by the HTTP layer (query string, OpenRTB JSON) and never mutated afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from vastserver.catalog import model as catalog_model
from vastserver.catalog.model import BreakPosition
from vastserver.consent import ALL, NO_SIGNALS, Permissions, PrivacySignals
from vastserver.pipeline.imps import PodImp
from vastserver.pipeline.pod import SlotRule, rounded_seconds

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime; injected so tests control time."""


def system_clock() -> datetime:
    return datetime.now(UTC)


class SimClock:
    """Simulated time in whole milliseconds after ``start`` (the data generator and the
    simulator drive it; the servers they run read it as their clock). Readings are aware UTC
    datetimes (:data:`Clock`), whatever zone ``start`` is given in: a start kept in its own
    zone put its offset on every logged time, and a ``ZoneInfo`` one added wall-clock time
    (an hour off across a clock change), not elapsed time. A naive start is refused."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"SimClock needs an aware start, not {start.isoformat()}")
        self.start = start.astimezone(UTC)
        self.ms = 0

    def __call__(self) -> datetime:
        return self.start + timedelta(milliseconds=self.ms)

    def at(self, ms: int) -> datetime:
        """The time ``ms`` milliseconds after ``start``."""
        return self.start + timedelta(milliseconds=ms)

    def ts(self) -> float:
        """Now as Unix seconds (for stores and logs that take a float clock)."""
        return self().timestamp()


VAST_VERSIONS: tuple[str, ...] = ("2.0", "3.0", "4.0", "4.1", "4.2", "4.3")
DEFAULT_VAST_VERSION = "4.2"
"""The VAST version of a request that does not name one."""
PODLESS_VAST_VERSIONS: frozenset[str] = frozenset({"2.0"})
"""VAST versions without ad pods (``Ad@sequence`` came with 3.0): a player of one plays one
``<Ad>`` of a response (vast-client's ``VASTClient.get`` returns the first), so a break asked
in one of them holds at most one ad."""
DEVICE_TYPES: frozenset[str] = frozenset(catalog_model.DEVICE_TYPES)
PLATFORMS: frozenset[str] = frozenset(catalog_model.PLATFORMS)


def ads_per_break(max_ads: int, vast_version: str) -> int:
    """The most ads a break of ``max_ads`` holds when answered in VAST ``vast_version``:
    ``max_ads``, but at most 1 in a version without pods (:data:`PODLESS_VAST_VERSIONS`)."""
    return min(max_ads, 1) if vast_version in PODLESS_VAST_VERSIONS else max_ads


@dataclass(frozen=True, slots=True)
class BreakSpec:
    position: BreakPosition
    pod_duration_ms: int
    max_ads: int
    min_ad_duration_ms: int | None = None
    max_ad_duration_ms: int | None = None
    required_durations_s: frozenset[int] | None = None
    avail: int = 0
    """Index of this break within the session (0 = first break)."""
    avail_given: bool = True
    """False when the request sent no ``avail`` (``avail`` is then 0 for every break of the
    session): stream separation cannot count breaks and goes by time alone."""
    slots: tuple[SlotRule, ...] | None = None
    """A structured pod whose slots take different durations: slot ``i``'s rule (the ad in
    it must fit it, on top of the rules above); ``None``: any ad fits any slot."""
    imps: tuple[PodImp, ...] | None = None
    """An OpenRTB hybrid pod (``POST /openrtb2/auction``): the imps its ads are split among,
    each ad filling one (:func:`~vastserver.pipeline.imps.fit_imps`); ``None``: no split."""

    @property
    def session_avail(self) -> int | None:
        """The avail stream separation counts breaks by; None when the request sent none."""
        return self.avail if self.avail_given else None


@dataclass(frozen=True, slots=True)
class Device:
    ip: str | None = None
    user_agent: str | None = None
    ifa: str | None = None
    ifa_type: str | None = None
    lmt: bool = False
    device_type: str | None = None
    platform: str | None = None
    country: str | None = None
    region: str | None = None
    dma: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Content:
    id: str | None = None
    genres: tuple[str, ...] = ()
    rating: str | None = None
    live: bool | None = None
    series: str | None = None
    channel: str | None = None
    kids: bool = False


@dataclass(frozen=True, slots=True)
class DurationFloors:
    """One OpenRTB imp's ``durfloors``: the floor CPM of an ad by its whole seconds (the
    ``bid.dur`` an exchange reads), each range's bounds inclusive and either open; an ad in
    several ranges takes the highest, an ad in none the imp's ``default``."""

    ranges: tuple[tuple[int | None, int | None, float], ...]
    """``(mindur, maxdur, bidfloor)``."""
    default: float = 0.0
    """The imp's ``bidfloor`` (0 where ``mincpmpersec`` says the floor per second)."""

    def floor_for(self, seconds: int) -> float:
        found = [
            cpm
            for lo, hi, cpm in self.ranges
            if (lo is None or seconds >= lo) and (hi is None or seconds <= hi)
        ]
        return max(found) if found else self.default


def below_floors(
    price_cpm: float,
    duration_ms: int,
    per_s: float | None,
    per_ad: float | None,
    by_duration: Sequence[DurationFloors],
) -> bool:
    """Whether an ad of ``duration_ms`` billed ``price_cpm`` is under one of these floors:
    ``mincpmpersec`` (``per_s``), ``bidfloor`` (``per_ad``), each ``durfloors``. Per second,
    the ad's seconds are its exact length or the whole seconds its bid states (``bid.dur``),
    whichever is longer: an exchange divides the bid's price by the latter."""
    if (
        per_s is not None
        and price_cpm < per_s * max(duration_ms, 1000 * rounded_seconds(duration_ms)) / 1000
    ):
        return True
    if per_ad is not None and price_cpm < per_ad:
        return True
    if by_duration:
        seconds = rounded_seconds(duration_ms)
        return any(price_cpm < f.floor_for(seconds) for f in by_duration)
    return False


@dataclass(frozen=True, slots=True)
class ImpFloors:
    """One OpenRTB imp's price floors, which the ad filling that imp must meet at the price
    it is billed there: ``mincpmpersec`` (``per_s``), else ``bidfloor`` (``per_ad``), and
    its ``durfloors``."""

    per_s: float | None = None
    per_ad: float | None = None
    by_duration: DurationFloors | None = None

    def admits(self, price_cpm: float, duration_ms: int) -> bool:
        by_duration = () if self.by_duration is None else (self.by_duration,)
        return not below_floors(price_cpm, duration_ms, self.per_s, self.per_ad, by_duration)


@dataclass(frozen=True, slots=True)
class AdRequest:
    brk: BreakSpec
    device: Device = field(default_factory=Device)
    content: Content = field(default_factory=Content)
    session: str | None = None
    placement: str | None = None
    vast_version: str = DEFAULT_VAST_VERSION
    debug: bool = False
    blocked_categories: frozenset[str] = frozenset()
    blocked_domains: frozenset[str] = frozenset()
    blocked_attributes: frozenset[int] = frozenset()
    """AdCOM creative attributes no ad may have (OpenRTB ``video.battr``, ``battr`` on
    ``/vast``): a creative with one is ``blocked_attribute``."""
    segments: tuple[str, ...] = ()
    key_values: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    caller_ip: str | None = None
    """Who sent the request (an SSAI stitcher when the device headers are present)."""
    caller_user_agent: str | None = None
    require_https: bool = True
    mimes: frozenset[str] | None = None
    """OpenRTB ``video.mimes``, lowercased without parameters: only renditions of these
    types may play (a creative with none is dropped, the VAST lists only these); ``None``:
    any type."""
    inline_ads: bool = True
    """OpenRTB ``video.protocols``: False when the player takes no ``<InLine>`` ad in
    :attr:`vast_version` (it lists that version's wrapper code, not its inline one): only
    third-party tags may play, the others are ``protocol_not_accepted``."""
    wrapper_ads: bool = True
    """OpenRTB ``video.protocols``: False when the player takes no ``<Wrapper>`` in
    :attr:`vast_version` (it lists that version's inline code, not its wrapper one):
    third-party tags are ``protocol_not_accepted``."""
    floor_cpm_per_s: float | None = None
    """OpenRTB ``mincpmpersec``: an ad's CPM divided by its seconds must reach this."""
    floor_cpm: float | None = None
    """OpenRTB ``bidfloor`` (where no ``mincpmpersec`` is given): an ad's CPM must reach
    this."""
    duration_floors: tuple[DurationFloors, ...] = ()
    """OpenRTB ``imp.durfloors``, one entry per imp listing them: an ad's CPM must reach
    each entry's floor for its seconds."""
    slot_floors: tuple[ImpFloors, ...] | None = None
    """OpenRTB, a structured pod whose imps' floors differ: the floors of each slot's imp,
    aligned with ``brk.slots``. The ad filling a slot meets them at the price it is billed
    there (:func:`~vastserver.pipeline.stages.slot_floor_mask`); an ad no slot takes at its
    price is ``below_floor``. ``None``: the floors above hold for every ad."""
    test: bool = False
    """OpenRTB ``test`` = 1 (``test=1`` on /vast, /decide and /vmap): decided and rendered
    as usual, but nothing is reserved or remembered and the ads' beacons count nothing
    (their tokens carry the flag)."""
    privacy: PrivacySignals = NO_SIGNALS
    """The privacy signals, for the privacy macros in third parties' trackers."""
    permissions: Permissions = ALL
    """What the consent and the device's own opt-outs (``lmt``, the all-zero IFA) let the
    decision use: the device identifier and ``segments`` are already left out where they
    may not be; this says so (the decision record keeps it)."""

    def __post_init__(self) -> None:
        # A VAST 2.0 player plays one ad of a pod: decide (and reserve caps and budgets for)
        # at most the one it plays, as for max_ads=1. Here, where every request is made
        # (/vast, /decide, /vmap's tags and inline breaks, OpenRTB), never in the renderer,
        # so the explanation's break shows max_ads 1 and nothing reserved goes unsent.
        max_ads = ads_per_break(self.brk.max_ads, self.vast_version)
        if max_ads != self.brk.max_ads:
            object.__setattr__(self, "brk", replace(self.brk, max_ads=max_ads))

    def viewer_key(self) -> str | None:
        """Stable key for frequency capping: IFA, else a hash input of IP + UA; never cookies.
        (A device that refuses tracking, ``lmt`` or the all-zero IFA, arrives with ``lmt``
        set: :func:`vastserver.params.limit_tracking`.)

        With ``lmt`` the viewer has no per-device profile; the session stands in for it, and
        without a session there is no viewer to know: None (no caps, exposures or history
        kept for it; every such request is a viewer of its own, not one shared key).
        """
        d = self.device
        if d.lmt:
            return f"session:{self.session}" if self.session else None
        if d.ifa:
            # Advertising ids are UUIDs (IDFA, AAID, RIDA, TIFA...), whose case means nothing:
            # a client tag sending one upper case and a stitcher's macro lower case are one
            # device, for its caps too.
            return f"ifa:{d.ifa.lower()}"
        return f"ipua:{d.ip or ''}|{d.user_agent or ''}"
