"""Immutable catalog snapshot: advertisers, campaigns, line items, creatives, ad rules.

Everything here is a frozen dataclass built once at load time (see ``catalog.load``). Request
handling only reads it; a reload builds a new :class:`Catalog` and swaps the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from types import MappingProxyType

RATINGS: tuple[str, ...] = ("TV-Y", "TV-Y7", "TV-G", "TV-PG", "TV-14", "TV-MA")
"""US TV parental guidelines, least to most restrictive audience."""

RATING_RANK: Mapping[str, int] = MappingProxyType({r: i for i, r in enumerate(RATINGS)})
KIDS_RATINGS: frozenset[str] = frozenset({"TV-Y", "TV-Y7", "TV-G"})
DEVICE_TYPES: tuple[str, ...] = ("ctv", "stb", "mobile", "desktop")
PLATFORMS: tuple[str, ...] = (
    "roku",
    "tvos",
    "androidtv",
    "firetv",
    "tizen",
    "webos",
    "vizio",
    "web",
)
REGION_RE = re.compile(r"[A-Z]{2}-[A-Z0-9]{1,3}")
"""A region as the catalog, the geo tables and requests write it: ISO 3166-2 with its country
prefix, upper case (``US-NY``). :func:`vastserver.geo.region_code` brings other spellings to it."""


class Tier(IntEnum):
    """Priority tier of a line item; a higher tier always wins over price."""

    HOUSE = 0
    STANDARD = 1
    GUARANTEED = 2
    SPONSORSHIP = 3


class BreakPosition(StrEnum):
    PRE = "pre"
    MID = "mid"
    POST = "post"


class Slot(StrEnum):
    """Where in a pod a line item may play."""

    ANY = "any"
    FIRST = "first"
    LAST = "last"


class Delivery(StrEnum):
    ASAP = "asap"
    EVEN = "even"
    FRONTLOADED = "frontloaded"


@dataclass(frozen=True, slots=True)
class Advertiser:
    id: str
    name: str
    domain: str
    categories: tuple[str, ...] = ()
    """IAB ad-product taxonomy codes of what the advertiser sells (e.g. ``IAB8-5``)."""
    competitive_category: str | None = None
    """A competitive label of every ad of the advertiser: two ads sharing a label never
    share a pod (see :attr:`LineItem.competitive_categories`)."""


@dataclass(frozen=True, slots=True)
class Rendition:
    url: str
    mime: str
    width: int
    height: int
    bitrate_kbps: int | None = None
    codec: str | None = None
    delivery: str = "progressive"
    """``progressive`` or ``streaming`` (HLS/DASH)."""


@dataclass(frozen=True, slots=True)
class Mezzanine:
    url: str
    mime: str
    width: int
    height: int
    codec: str | None = None
    file_size: int | None = None


@dataclass(frozen=True, slots=True)
class Caption:
    """A closed-caption file of a creative (VAST 4.1+ ``ClosedCaptionFile``)."""

    url: str
    mime: str
    language: str


@dataclass(frozen=True, slots=True)
class InteractiveFile:
    """An interactive layer of a linear creative (VAST 4.1+ ``InteractiveCreativeFile``):
    a SIMID HTML document the player runs beside the video. Players without the framework
    play the video alone, so it adds to the renditions and never replaces them."""

    url: str
    api_framework: str = "SIMID"
    type: str = "text/html"
    variable_duration: bool = False
    """``variableDuration``: whether the creative may extend the ad (pausing the video on
    the viewer's request); a player that cannot allow that must not play the ad."""


@dataclass(frozen=True, slots=True)
class Verification:
    vendor: str
    js_url: str
    parameters: str
    """``VerificationParameters``: what the vendor's script is given (required: OMID
    verification scripts read their measurement ids from it)."""
    api_framework: str = "omid"
    browser_optional: bool = False
    """``JavaScriptResource@browserOptional``: whether the script also runs outside a
    browser (a native OM SDK); false asks for a browser environment."""
    not_executed_urls: tuple[str, ...] = ()
    """``verificationNotExecuted`` tracking URLs (each with ``[REASON]``): the player
    calls them when it did not run the script."""


@dataclass(frozen=True, slots=True)
class UniversalAdId:
    """One registry's id of a creative (a VAST ``<UniversalAdId>``)."""

    registry: str
    value: str


@dataclass(frozen=True, slots=True)
class IconFallbackImage:
    """An image a player shows when it cannot open an icon's click-through (a TV cannot
    open a web page): VAST 4.2+ ``IconClickFallbackImage``."""

    image_url: str
    width: int
    height: int
    alt_text: str | None = None


@dataclass(frozen=True, slots=True)
class Icon:
    program: str
    width: int
    height: int
    x_position: str
    y_position: str
    image_url: str
    creative_type: str
    click_through: str | None = None
    duration_ms: int | None = None
    offset_ms: int | None = None
    click_fallback_images: tuple[IconFallbackImage, ...] = ()
    """``IconClickFallbackImages`` (VAST 4.2+: the 4.1 XSD lacks the element)."""
    view_tracking_urls: tuple[str, ...] = ()
    """``IconViewTracking``: third-party URLs the player calls when it shows the icon."""
    click_tracking_urls: tuple[str, ...] = ()
    """``IconClickTracking``: third-party URLs the player calls on a click on the icon."""


CREATIVE_ATTRIBUTES: Mapping[int, str] = MappingProxyType(
    {
        1: "audio ad (auto-play)",
        2: "audio ad (user initiated)",
        3: "expandable (automatic)",
        4: "expandable (user initiated, click)",
        5: "expandable (user initiated, rollover)",
        6: "in-banner video ad (auto-play)",
        7: "in-banner video ad (user initiated)",
        8: "pop (e.g. over, under, or upon exit)",
        9: "provocative or suggestive imagery",
        10: "shaky, flashing, flickering, extreme animation, smileys",
        11: "surveys",
        12: "text only",
        13: "user interactive (e.g. embedded games)",
        14: "windows dialog or alert style",
        15: "has audio on/off button",
        16: "ad provides skip button (e.g. VPAID-rendered skip button)",
        17: "Adobe Flash",
    }
)
"""AdCOM 1.0 "Creative Attribute" codes a creative may declare (its ``attributes``), what
OpenRTB's ``video.battr`` blocks and ``bid.attr`` reports."""
USER_INTERACTIVE = 13
"""The AdCOM attribute a creative with SIMID files or a VPAID ``api_framework`` has,
declared or not (:func:`derived_attributes`)."""


def is_vpaid(api_framework: str | None) -> bool:
    """Whether a creative's ``api_framework`` names VPAID (any version, any case)."""
    return api_framework is not None and api_framework.upper().startswith("VPAID")


def derived_attributes(
    interactive: tuple[InteractiveFile, ...], api_framework: str | None
) -> frozenset[int]:
    """The AdCOM creative attributes a creative has by what it is: 13 (user interactive)
    with SIMID files or a VPAID ``api_framework``. Never 16 (the ad provides a skip button)
    for a skip offset: in VAST the player draws that button, not the ad."""
    return frozenset({USER_INTERACTIVE}) if interactive or is_vpaid(api_framework) else frozenset()


def is_https(url: str) -> bool:
    """Whether ``url`` is an https one (scheme compared without case)."""
    return url[:8].lower() == "https://"


@dataclass(frozen=True, slots=True)
class Creative:
    id: str
    advertiser_id: str
    title: str
    duration_ms: int
    renditions: tuple[Rendition, ...]
    """Empty for a third-party tag (``vast_tag_url``)."""
    universal_ad_id: str
    universal_ad_id_registry: str = "ad-id.org"
    more_universal_ad_ids: tuple[UniversalAdId, ...] = ()
    """Other registries' ids of the creative (the catalog's ``universal_ad_ids``), after the
    primary one (``universal_ad_id``, which ``Creative@adId`` carries): VAST 4.2+ sends them
    all, earlier versions only the primary one."""
    ad_id: str | None = None
    """The advertiser's own creative id: an ``<Extension type="AdvertiserAdId">`` (VAST
    has no element for it: ``Creative@adId`` is the Ad-ID, the universal ad id)."""
    mezzanine: Mezzanine | None = None
    click_through: str | None = None
    categories: tuple[str, ...] = ()
    rating: str = "TV-G"
    """The least restrictive content rating this creative may run in."""
    approved: bool = True
    skip_offset_ms: int | None = None
    api_framework: str | None = None
    """``VPAID`` marks interactive creatives that CTV devices cannot run."""
    verifications: tuple[Verification, ...] = ()
    icons: tuple[Icon, ...] = ()
    vast_tag_url: str | None = None
    """A third-party VAST tag: the ad goes out as a ``<Wrapper>`` pointing at it, with our
    tracking; ``duration_ms`` is then the duration the tag's ad was trafficked at."""
    captions: tuple[Caption, ...] = ()
    """Closed-caption files (sent from VAST 4.1, which has the element)."""
    interactive: tuple[InteractiveFile, ...] = ()
    """SIMID interactive files (the catalog's ``interactive``), sent beside the media files
    from VAST 4.1; never with ``vast_tag_url``."""
    competitive_categories: tuple[str, ...] = ()
    """Competitive labels of this creative's ads, on top of its line item's and advertiser's
    (see :attr:`LineItem.competitive_categories`)."""
    attributes: tuple[int, ...] = ()
    """AdCOM creative attributes (:data:`CREATIVE_ATTRIBUTES`), ascending: those given (the
    catalog's ``attributes``) and, added on creation, those it has by what it is
    (:func:`derived_attributes`). OpenRTB ``video.battr`` (``battr`` on ``/vast``) blocks
    them, and ``bid.attr`` lists them."""
    trackers: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    """Third-party tracking URLs by event (``impression``, ``click``, linear events): sent
    beside ours, as the advertiser's ad server or a measurement vendor requires."""
    privacy_macros: bool = field(default=False, compare=False)
    """Whether a tracker (an icon's too) or the ``vast_tag_url`` carries privacy macros
    (``${GDPR}``...) for the renderer to fill in (set at load, so that ads without them skip
    the work)."""
    server_macros: bool = field(default=False, compare=False)
    """Whether a URL of the ad from the catalog (:func:`catalog_urls`) carries an IAB macro
    that the renderer fills in for some viewers (:func:`~vastserver.tracking.server_macros`):
    a device macro (``[IFA]``...) it withholds from third parties, or ``[GDPR]`` and
    ``[REGULATIONS]`` (set at load, so that ads without them skip the work and share one
    fragment)."""
    media_key: str = field(default="", compare=False)
    """The video's identity, shared by every creative of the catalog showing the same video
    (set at load, see ``catalog.load.media_keys``); empty: the creative's own."""
    http_media: bool = field(init=False, default=False, compare=False, repr=False)
    """Whether a rendition, the mezzanine or a caption file is http (derived on creation):
    an ad that must carry https media only leaves them out, and an ad without any shares
    its rendering with every request whatever it requires."""

    def __post_init__(self) -> None:
        m = self.mezzanine
        http = (
            any(not is_https(r.url) for r in self.renditions)
            or any(not is_https(x.url) for x in self.captions)
            or (m is not None and not is_https(m.url))
        )
        object.__setattr__(self, "http_media", http)
        derived = derived_attributes(self.interactive, self.api_framework)
        object.__setattr__(self, "attributes", tuple(sorted({*self.attributes, *derived})))

    @property
    def duration_s(self) -> float:
        return self.duration_ms / 1000.0


def catalog_urls(cr: Creative) -> Iterator[str]:
    """Every URL of ``cr``'s ad that comes from the catalog: what the player (or a stitcher
    for it) fetches or opens from third parties, our own beacons and ``/c`` aside. The
    click-through is not among them: it travels in the click token, and ``/c`` fills in
    the few macros it may carry (``CLICK_MACROS`` in :mod:`vastserver.tracking`)."""
    for us in cr.trackers.values():
        yield from us
    if cr.vast_tag_url is not None:
        yield cr.vast_tag_url
    yield from (r.url for r in cr.renditions)
    if cr.mezzanine is not None:
        yield cr.mezzanine.url
    yield from (x.url for x in cr.captions)
    yield from (f.url for f in cr.interactive)
    for v in cr.verifications:
        yield v.js_url
        yield from v.not_executed_urls
    for i in cr.icons:
        yield i.image_url
        if i.click_through is not None:
            yield i.click_through
        yield from (f.image_url for f in i.click_fallback_images)
        yield from i.view_tracking_urls
        yield from i.click_tracking_urls


@dataclass(frozen=True, slots=True)
class Budget:
    impressions: int | None = None
    spend: float | None = None
    daily_impressions: int | None = None
    daily_spend: float | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    advertiser_id: str
    name: str
    start: datetime
    end: datetime
    status: str = "active"
    budget: Budget = field(default_factory=Budget)
    goal: str = "impressions"
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    scope: str
    """``creative`` | ``line_item`` | ``campaign`` | ``advertiser``."""
    max: int
    window: str
    """``<n>m``, ``<n>h``, ``<n>d``, ``<n>w``, ``lifetime``, ``pod`` or ``session``."""


@dataclass(frozen=True, slots=True)
class Pacing:
    delivery: Delivery = Delivery.ASAP
    budget: Budget = field(default_factory=Budget)


@dataclass(frozen=True, slots=True)
class Rule:
    """Include/exclude sets of one targeting dimension; empty include = everything."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    def allows(self, value: str | None) -> bool:
        if value is not None and value in self.exclude:
            return False
        if not self.include:
            return True
        return value is not None and value in self.include

    def allows_any(self, values: tuple[str, ...]) -> bool:
        if self.exclude and any(v in self.exclude for v in values):
            return False
        if not self.include:
            return True
        return any(v in self.include for v in values)


@dataclass(frozen=True, slots=True)
class Daypart:
    """Allowed weekdays (0 = Monday) and hours ``[start_hour, end_hour)`` in a time zone."""

    days: frozenset[int] = frozenset(range(7))
    start_hour: int = 0
    end_hour: int = 24
    timezone: str | None = None
    """None: the campaign's ``timezone`` (never the viewer's: requests carry no time zone)."""


@dataclass(frozen=True, slots=True)
class Targeting:
    rules: Mapping[str, Rule] = field(default_factory=lambda: MappingProxyType({}))
    """Dimension name (``country``, ``device_type``, ``genre``...) to its rule."""
    dayparts: tuple[Daypart, ...] = ()
    key_values: Mapping[str, Rule] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class LineItem:
    id: str
    campaign_id: str
    name: str
    tier: Tier
    creative_ids: tuple[str, ...]
    start: datetime
    end: datetime
    status: str = "active"
    pricing_model: str = "CPM"
    """``CPM`` (``price`` per thousand impressions) or ``flat`` (:data:`FLAT`: ``price`` is
    a fixed fee for the flight, as sponsorships are sold; an impression costs nothing)."""
    price: float = 0.0
    currency: str = "USD"
    targeting: Targeting = field(default_factory=Targeting)
    frequency_caps: tuple[FrequencyCap, ...] = ()
    pacing: Pacing = field(default_factory=Pacing)
    positions: frozenset[BreakPosition] = frozenset(BreakPosition)
    slot: Slot = Slot.ANY
    first_slot_price: float | None = None
    """CPM paid when the ad plays first in its pod (a premium for the first impression)."""
    last_slot_price: float | None = None
    """CPM paid when the ad plays last in a pod of two or more."""
    value_cpm: float | None = None
    """Flat line items only: the CPM the line item is worth when it competes for a slot
    (what ad servers call its value CPM). See :func:`ranking_cpm`."""
    competitive_categories: tuple[str, ...] = ()
    """Competitive exclusion labels of the line item's ads (an ad server's "competitive
    exclusion labels" or industry separation): an ad's labels are its advertiser's
    ``competitive_category``, these and its creative's; two ads sharing any label never share
    a pod, and a label sits out the session's next breaks (stream separation). A
    conglomerate's beer line item and its snack line item each carry their own."""
    rank_cpm: float = field(init=False, compare=False, repr=False)
    """:func:`ranking_cpm` of this line item (computed once: every decision asks)."""
    floor_cpm: float = field(init=False, compare=False, repr=False)
    """What price floors compare: the least an impression of the line item is billed in any
    slot (:func:`billed_cpm`: its price, or a lower slot price; 0 for a flat line item,
    whose fee does not grow with impressions). A bid must not go below the floor it answers,
    and the bid carries this price."""

    def __post_init__(self) -> None:
        slots = [p for p in (self.first_slot_price, self.last_slot_price) if p is not None]
        object.__setattr__(self, "rank_cpm", ranking_cpm(self))
        object.__setattr__(self, "floor_cpm", billed_cpm(self, min([self.price, *slots])))


FLAT = "flat"
"""The pricing model of a line item bought for a fixed fee."""


def ranking_cpm(li: LineItem) -> float:
    """The CPM a line item competes with. A CPM line item's is its price. A flat one's is
    its ``value_cpm`` when set; else its fee spread over its lifetime impression budget
    when it has one; else the fee itself read as a CPM (a fee is large against CPM prices,
    so a flat sponsorship without a value outranks the CPM line items of its tier, which is
    what a sponsorship is bought for). Tiers come first either way."""
    if li.pricing_model != FLAT:
        return li.price
    if li.value_cpm is not None:
        return li.value_cpm
    goal = li.pacing.budget.impressions
    if goal:
        return li.price * 1000 / goal
    return li.price


def billed_cpm(li: LineItem, price_cpm: float) -> float:
    """What one impression served at ``price_cpm`` (a slot's price) costs, as a CPM: nothing
    for a flat line item, whose fee does not grow with impressions."""
    return 0.0 if li.pricing_model == FLAT else price_cpm


MAX_POD_S = 900
"""The longest break a request (or a catalog's ad rules) may ask for, in seconds."""
MAX_ADS = 20
"""The most ads a break may hold."""


@dataclass(frozen=True, slots=True)
class BreakRule:
    duration_s: int
    max_ads: int


@dataclass(frozen=True, slots=True)
class AdRules:
    """Break lengths and spacing for one placement."""

    pre: BreakRule = BreakRule(30, 2)
    mid: BreakRule = BreakRule(90, 4)
    post: BreakRule = BreakRule(30, 2)
    midroll_interval_s: int = 600
    min_midroll_spacing_s: int = 300
    blocked_domains: frozenset[str] = frozenset()
    """Advertiser domains this placement never shows (added to the catalog's blocklist)."""
    blocked_categories: frozenset[str] = frozenset()
    """IAB categories this placement never shows (prefix match, like ``bcat``)."""

    def for_position(self, position: BreakPosition) -> BreakRule:
        if position is BreakPosition.PRE:
            return self.pre
        if position is BreakPosition.MID:
            return self.mid
        return self.post


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    advertisers: Mapping[str, Advertiser]
    campaigns: Mapping[str, Campaign]
    line_items: Mapping[str, LineItem]
    creatives: Mapping[str, Creative]
    ad_rules: Mapping[str, AdRules]
    """Placement name to its rules; ``default`` is always present."""
    blocked_domains: frozenset[str] = frozenset()
    blocked_categories: frozenset[str] = frozenset()
    currency: str = "USD"
    """The one currency all line items price in (prices, budgets and price floors are
    compared across line items)."""

    def rules_for(self, placement: str | None) -> AdRules:
        if placement is not None and placement in self.ad_rules:
            return self.ad_rules[placement]
        return self.ad_rules["default"]
