"""The simulated world: households, their devices, a content library and the session schedule.

Everything here is drawn up front from ``random.Random`` streams derived from the seed, so
the same seed gives the same households, devices and sessions whatever the servers answer
(the model and price-only runs of a comparison see the very same viewers and sessions).
"""

from __future__ import annotations

import csv
import ipaddress
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from vastserver.catalog.gen import CHANNELS, CONTENT_IDS, GENRES, SEGMENTS, SERIES
from vastserver.catalog.model import Catalog
from vastserver.geo import GeoInfo, open_geo
from vastserver.pipeline.delivery import HOURLY_TRAFFIC

__all__ = [
    "ContentItem",
    "Device",
    "Household",
    "SessionPlan",
    "World",
    "build_world",
    "geo_ranges",
    "placement_for",
    "time_zone_for",
]

CTV_PLATFORMS: tuple[tuple[str, int], ...] = (
    ("roku", 34), ("firetv", 20), ("tizen", 12), ("androidtv", 9), ("webos", 8),
    ("vizio", 8), ("tvos", 9),
)  # fmt: skip
STB_PLATFORMS: tuple[tuple[str, int], ...] = (("androidtv", 60), ("roku", 25), ("tvos", 15))
IFA_TYPE = {
    "roku": "rida", "firetv": "afai", "tizen": "tifa", "androidtv": "aaid", "webos": "lgudid",
    "vizio": "vida", "tvos": "idfa",
}  # fmt: skip
GENRE_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("drama", 12), ("comedy", 12), ("news", 8), ("sports", 12), ("kids", 8),
    ("documentary", 5), ("reality", 8), ("movies", 11), ("animation", 5), ("lifestyle", 5),
    ("crime", 8), ("scifi", 6),
)  # fmt: skip
ZONES: dict[tuple[str, str | None], str] = {
    ("US", "US-CA"): "America/Los_Angeles",
    ("US", "US-NY"): "America/New_York",
    ("US", "US-NJ"): "America/New_York",
    ("US", "US-IL"): "America/Chicago",
    ("US", "US-TX"): "America/Chicago",
    ("US", None): "America/New_York",
    ("CA", None): "America/Toronto",
    ("GB", None): "Europe/London",
    ("DE", None): "Europe/Berlin",
    ("FR", None): "Europe/Paris",
}
COUNTRY_WEIGHT = {"US": 80, "GB": 8, "DE": 6, "FR": 6}
LANGUAGE = {"US": "en", "GB": "en", "DE": "de", "FR": "fr", "CA": "en"}


@dataclass(frozen=True, slots=True)
class Device:
    key: str
    """The simulator's own id of the device (``h12-d1``)."""
    household: int
    device_type: str
    platform: str
    user_agent: str
    ifa: str | None
    ifa_type: str | None
    lmt: bool

    def viewer_key(self, ip: str, session: str) -> str:
        """Who the server caps for (``AdRequest.viewer_key``): IFA, else IP + UA; with
        limit-ad-tracking only the session."""
        if self.lmt:
            return f"session:{session}"
        if self.ifa:
            return f"ifa:{self.ifa}"
        return f"ipua:{ip}|{self.user_agent}"


@dataclass(frozen=True, slots=True)
class Household:
    index: int
    ip: str
    geo: GeoInfo | None
    timezone: str
    language: str
    devices: tuple[Device, ...]
    segments: tuple[str, ...]
    favourite_genres: tuple[str, ...]
    activity: float
    """Mean sessions per day."""


@dataclass(frozen=True, slots=True)
class ContentItem:
    id: str
    genres: tuple[str, ...]
    rating: str
    live: bool
    kids: bool
    series: str | None
    channel: str
    duration_s: int
    key_values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SessionPlan:
    index: int
    start_ms: int
    """Milliseconds after the simulation start."""
    household: Household
    device: Device
    content: ContentItem
    ssai: bool
    watch_fraction: float
    """Share of the content the viewer means to watch (1.0: to the end, post-roll included)."""
    rng_seed: str
    """Seed of this session's own behaviour stream (common random numbers across runs)."""


@dataclass(frozen=True, slots=True)
class World:
    households: tuple[Household, ...]
    library: tuple[ContentItem, ...]
    sessions: tuple[SessionPlan, ...]


def _weighted(rng: random.Random, pairs: Sequence[tuple[str, int]]) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small rates used here."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def geo_ranges(path: Path) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of a ``cidr,country,region,dma`` CSV (comments and header skipped)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(line for line in f if not line.lstrip().startswith("#"))
        for row in rows:
            if not row or row[0].strip() == "cidr":
                continue
            try:
                nets.append(ipaddress.ip_network(row[0].strip(), strict=False))
            except ValueError:
                continue
    return nets


def time_zone_for(geo: GeoInfo | None) -> str:
    if geo is None or geo.country is None:
        return "UTC"
    return ZONES.get((geo.country, geo.region)) or ZONES.get((geo.country, None)) or "UTC"


def _user_agent(rng: random.Random, platform: str) -> str:
    build = rng.randrange(1000, 9999)
    match platform:
        case "roku":
            return f"Roku/DVP-{rng.choice(('12.5', '13.0', '14.1'))} ({build})"
        case "firetv":
            return f"Dalvik/2.1.0 (Linux; U; Android 9; AFTMM Build/PS7{build})"
        case "tizen":
            return f"Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.5) SamsungBrowser/2.{build} TV Safari"
        case "webos":
            return f"Mozilla/5.0 (Web0S; Linux/SmartTV) Chrome/87.0.{build} WebAppManager"
        case "vizio":
            return f"Mozilla/5.0 (Linux; Vizio SmartCast/{build}) Chrome/88 Safari/537.36 CrKey"
        case "tvos":
            return (
                f"AppleCoreMedia/1.0.0.21K{build % 1000} (Apple TV; U; CPU OS 17_2 like Mac OS X)"
            )
        case _:
            return f"Dalvik/2.1.0 (Linux; U; Android 11; BRAVIA 4K Build/RTT{build})"


def _random_host(rng: random.Random, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    size = net.num_addresses
    if size <= 2:
        return str(net.network_address)
    offset = rng.randrange(1, min(size - 1, 1 << 32))
    return str(net.network_address + offset)


def _households(
    rng: random.Random, n: int, geo_path: Path, mean_sessions: float
) -> list[Household]:
    geo = open_geo(geo_path)
    nets = geo_ranges(geo_path)
    if not nets:
        raise ValueError(f"no address ranges in {geo_path}")
    infos = [geo.lookup(str(net.network_address)) for net in nets]
    weights = [
        COUNTRY_WEIGHT.get(info.country or "", 2) if info is not None else 1 for info in infos
    ]
    out: list[Household] = []
    for i in range(n):
        net = rng.choices(nets, weights=weights)[0]
        ip = _random_host(rng, net)
        info = geo.lookup(ip)
        country = info.country if info is not None and info.country else "US"
        language = LANGUAGE.get(country, "en")
        if country == "US" and rng.random() < 0.12:
            language = "es"
        devices: list[Device] = []
        for d in range(1 + (rng.random() < 0.3) + (rng.random() < 0.05)):
            device_type = "ctv" if rng.random() < 0.82 else "stb"
            platform = _weighted(rng, CTV_PLATFORMS if device_type == "ctv" else STB_PLATFORMS)
            lmt = rng.random() < 0.04
            has_ifa = not lmt and rng.random() < 0.92
            devices.append(
                Device(
                    key=f"h{i}-d{d}",
                    household=i,
                    device_type=device_type,
                    platform=platform,
                    user_agent=_user_agent(rng, platform),
                    ifa=_uuid(rng) if has_ifa else None,
                    ifa_type=IFA_TYPE[platform] if has_ifa else None,
                    lmt=lmt,
                )
            )
        segments = tuple(sorted(rng.sample(SEGMENTS, rng.choice((0, 1, 1, 2, 3)))))
        favourites = tuple(dict.fromkeys(_weighted(rng, GENRE_WEIGHTS) for _ in range(3)).keys())
        # Activity: a gamma spread around the mean (a few heavy viewers, many light ones).
        activity = rng.gammavariate(1.5, mean_sessions / 1.5)
        out.append(
            Household(
                index=i,
                ip=ip,
                geo=info,
                timezone=time_zone_for(info),
                language=language,
                devices=tuple(devices),
                segments=segments,
                favourite_genres=favourites,
                activity=activity,
            )
        )
    return out


def _library(rng: random.Random, n: int) -> list[ContentItem]:
    out: list[ContentItem] = []
    for i in range(n):
        genre = _weighted(rng, GENRE_WEIGHTS)
        genres = [genre]
        if rng.random() < 0.25:
            other = rng.choice(GENRES)
            if other != genre:
                genres.append(other)
        kids = genre in ("kids", "animation") and rng.random() < 0.8
        rating = (
            rng.choice(("TV-Y", "TV-Y7", "TV-G"))
            if kids
            else rng.choice(("TV-G", "TV-PG", "TV-PG", "TV-14", "TV-14", "TV-MA"))
        )
        live = genre in ("sports", "news") and rng.random() < 0.5
        channel = {
            "news": "ch-news-24", "sports": "ch-sports-1", "movies": "ch-movies",
            "kids": "ch-kids", "animation": "ch-kids", "comedy": "ch-comedy",
            "crime": "ch-true-crime",
        }.get(genre) or rng.choice(CHANNELS)  # fmt: skip
        if live:
            minutes = rng.choice((60, 90, 120, 180))
        elif genre == "movies":
            minutes = rng.choice((95, 105, 115, 130))
        else:
            minutes = rng.choice((22, 22, 30, 44, 44, 60))
        kv: list[tuple[str, str]] = [("tier", "premium" if rng.random() < 0.3 else "free")]
        if genre == "sports" and live:
            kv.append(("league", rng.choice(("nfl", "nba", "mlb", "nhl"))))
        if kids:
            kv.append(("app_section", "kids"))
        if rng.random() < 0.05:
            kv.append(("show_type", rng.choice(("premiere", "finale"))))
        out.append(
            ContentItem(
                id=CONTENT_IDS[i] if i < len(CONTENT_IDS) else f"ep-{i + 1:06d}",
                genres=tuple(genres),
                rating=rating,
                live=live,
                kids=kids,
                series=rng.choice(SERIES) if rng.random() < 0.7 and not live else None,
                channel=channel,
                duration_s=minutes * 60,
                key_values=tuple(kv),
            )
        )
    return out


def _pick_content(
    rng: random.Random, h: Household, library: Sequence[ContentItem], cum: Sequence[float]
) -> ContentItem:
    if rng.random() < 0.7:
        genre = rng.choice(h.favourite_genres)
        matching = [c for c in library if c.genres[0] == genre]
        if matching:
            return matching[min(len(matching) - 1, int(rng.random() ** 2 * len(matching)))]
    return rng.choices(library, cum_weights=cum)[0]


def build_world(
    *,
    seed: int,
    households: int,
    start: datetime,
    hours: float,
    geo_path: Path,
    ssai_share: float,
    sessions_per_household: float,
) -> World:
    """Households, a content library and every session that starts in the window.

    Sessions per household and local hour are Poisson with mean
    ``activity * HOURLY_TRAFFIC[local hour]`` (the CTV day the pacing curve assumes), so the
    aggregate traffic follows the curve in each household's own time zone."""
    pop_rng = random.Random(f"sim:{seed}:population")
    households_ = _households(pop_rng, households, geo_path, sessions_per_household)
    library = _library(random.Random(f"sim:{seed}:library"), 160)
    popularity = [1.0 / (k + 1) ** 0.8 for k in range(len(library))]
    cum: list[float] = []
    total = 0.0
    for w in popularity:
        total += w
        cum.append(total)
    sched = random.Random(f"sim:{seed}:schedule")
    horizon_ms = int(hours * 3_600_000)
    plans: list[tuple[int, int, Household]] = []
    n_hours = math.ceil(hours)
    for h in households_:
        zone = ZoneInfo(h.timezone)
        for k in range(n_hours):
            hour_start = start + timedelta(hours=k)
            local_hour = hour_start.astimezone(zone).hour
            for _ in range(_poisson(sched, h.activity * HOURLY_TRAFFIC[local_hour])):
                ms = k * 3_600_000 + sched.randrange(3_600_000)
                if ms < horizon_ms:
                    plans.append((ms, h.index, h))
    plans.sort(key=lambda p: (p[0], p[1]))
    sessions: list[SessionPlan] = []
    for n, (ms, _, h) in enumerate(plans):
        device = h.devices[0] if len(h.devices) == 1 else sched.choice(h.devices)
        content = _pick_content(sched, h, library, cum)
        full = sched.random() < (0.65 if content.genres[0] in ("movies", "kids") else 0.5)
        sessions.append(
            SessionPlan(
                index=n,
                start_ms=ms,
                household=h,
                device=device,
                content=content,
                ssai=sched.random() < ssai_share,
                watch_fraction=1.0 if full else sched.uniform(0.05, 0.97),
                rng_seed=f"sim:{seed}:session:{n}",
            )
        )
    return World(tuple(households_), tuple(library), tuple(sessions))


def placement_for(catalog: Catalog, content: ContentItem) -> str | None:
    """The catalog's kids or live-sports placement for such content, when it has one."""
    names = catalog.ad_rules
    if content.kids:
        for name in ("kids_app", "kids"):
            if name in names:
                return name
    if content.live and "sports" in content.genres and "live_sports" in names:
        return "live_sports"
    return None
