"""Synthetic catalogs for load tests, benchmarks and demos.

:func:`generate_catalog` builds a realistic catalog document in the JSON format of
``docs/catalog.md``: advertisers in competitive verticals, campaigns with flights around ``now``,
line items across all tiers with varied targeting, frequency caps and pacing, and creatives with
a progressive MP4 ladder, an HLS rendition and a mezzanine. The output depends only on the
arguments (a private ``random.Random(seed)``, nothing read from the clock or environment).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vastserver.catalog.model import PLATFORMS, RATINGS
from vastserver.cliargs import HelpWithDefaults, iso_datetime, non_negative_int

__all__ = ["generate_catalog", "main_gen_catalog"]

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Vertical:
    competitive: str
    categories: tuple[str, ...]
    suffixes: tuple[str, ...]
    themes: tuple[str, ...]
    rating: str | None
    """Creative rating forced by the vertical (alcohol: TV-14), or None for a random mild one."""
    weight: int


VERTICALS: tuple[Vertical, ...] = (
    Vertical("auto", ("IAB2",), ("Motors", "Automotive", "Cars"),
             ("Winter Sales Event", "Test Drive", "New SUV", "Hybrid Launch", "Lease Offer"),
             None, 12),
    Vertical("beer", ("IAB8-5",), ("Brewing Co.", "Lager", "Ale Works"),
             ("Game Day", "Summer Cold One", "Crafted Since 1890", "Light Refresh"), "TV-14", 6),
    Vertical("wine", ("IAB8-18",), ("Cellars", "Vineyards", "Estates"),
             ("Harvest Reserve", "Holiday Toast", "Rosé Season"), "TV-14", 3),
    Vertical("fast_food", ("IAB8-9",), ("Burger", "Pizza", "Tacos", "Chicken"),
             ("Value Menu", "Late Night Deal", "New Spicy Sandwich", "Family Bundle"), None, 10),
    Vertical("telecom", ("IAB19-6",), ("Wireless", "Mobile", "Fiber"),
             ("Unlimited Plan", "Switch and Save", "5G Everywhere", "Free Phone"), None, 8),
    Vertical("streaming", ("IAB1-7",), ("+", "TV", "Stream", "Play"),
             ("New Original Series", "Free Trial", "Live Sports Package", "Movie Night"),
             None, 7),
    Vertical("insurance", ("IAB13-6",), ("Insurance", "Mutual", "Assurance"),
             ("Bundle and Save", "Claims in Minutes", "Safe Driver Discount"), None, 8),
    Vertical("pharma", ("IAB7",), ("Pharma", "Health", "Therapeutics"),
             ("Ask Your Doctor", "Allergy Relief", "Sleep Better"), "TV-PG", 5),
    Vertical("retail", ("IAB22",), ("Market", "Outfitters", "Home", "Store"),
             ("Black Friday", "Back to School", "Spring Refresh", "Everyday Low Prices"), None, 10),
    Vertical("toys", ("IAB9",), ("Toys", "Playthings", "Toy Co."),
             ("Holiday Wishlist", "Build It", "New Collectibles"), "TV-Y", 4),
    Vertical("banking", ("IAB13",), ("Bank", "Financial", "Credit Union"),
             ("Open an Account", "Home Loans", "Cash Back Card"), None, 5),
    Vertical("travel", ("IAB20",), ("Airlines", "Resorts", "Travel"),
             ("Fly for Less", "Island Getaway", "Weekend Escape"), None, 5),
    Vertical("snacks", ("IAB8",), ("Foods", "Snacks", "Kitchens"),
             ("Big Game Snacks", "New Flavor", "Crunch Time"), None, 6),
    Vertical("soft_drinks", ("IAB8",), ("Cola", "Soda", "Refreshments"),
             ("Zero Sugar", "Summer Refresh", "Share a Bottle"), None, 4),
    Vertical("gaming", ("IAB9-30",), ("Games", "Studios", "Interactive"),
             ("Launch Trailer", "Season Pass", "Now Available"), "TV-PG", 4),
    Vertical("electronics", ("IAB19",), ("Electronics", "Devices", "Labs"),
             ("New 4K TV", "Noise-Cancelling Headphones", "Smart Home"), None, 4),
)  # fmt: skip

BRAND_WORDS: tuple[str, ...] = (
    "Acme", "Northstar", "Vireo", "Halden", "Cobalt", "Summit", "Ridgeway", "Atlas", "Meridian",
    "Bluefin", "Crescent", "Redwood", "Silverline", "Harbor", "Evergreen", "Lumen", "Keystone",
    "Granite", "Aurora", "Pioneer", "Copperleaf", "Falcon", "Juniper", "Orchard", "Sterling",
    "Tidewater", "Willow", "Zenith", "Brightwater", "Canyon", "Driftwood", "Emberly", "Foxglove",
    "Highland", "Ironwood", "Larkspur", "Maple", "Oakmont", "Prairie", "Quarry", "Riverbend",
    "Sable", "Thistle", "Upland", "Valiant", "Westfield", "Yellowstone", "Bramble", "Cinder",
)  # fmt: skip

CAMPAIGN_SEASONS: tuple[str, ...] = (
    "Q1 Brand", "Spring Launch", "Summer", "Back to School", "Holiday", "Always-On",
    "Big Game", "Black Friday", "New Year", "Fall Flight",
)  # fmt: skip

COUNTRIES = ("US", "US", "US", "US", "CA", "GB", "AU", "DE", "MX")
REGIONS = ("US-CA", "US-NY", "US-TX", "US-FL", "US-IL", "US-PA", "US-OH", "US-GA", "CA-ON", "CA-QC")
DMAS = ("501", "803", "602", "504", "623", "807", "506", "511", "524", "618", "753", "539")
GENRES = (
    "drama", "comedy", "news", "sports", "kids", "documentary", "reality", "movies",
    "animation", "lifestyle", "crime", "scifi",
)  # fmt: skip
SERIES = (
    "the-long-road", "harbor-lights", "kitchen-rivals", "night-shift", "galaxy-patrol",
    "home-makeover", "sunday-football", "tiny-explorers", "the-newsroom-hour", "wild-coast",
)  # fmt: skip
CHANNELS = ("ch-news-24", "ch-sports-1", "ch-movies", "ch-kids", "ch-comedy", "ch-true-crime")
LANGUAGES = ("en", "en", "en", "es", "fr", "de")
SEGMENTS = (
    "auto_intenders", "sports_fans", "parents", "adults_21plus", "cord_cutters", "hispanic",
    "high_income", "gamers", "travelers", "new_movers", "foodies", "homeowners",
)  # fmt: skip
TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
             "UTC", "Europe/London")  # fmt: skip
CONTENT_IDS = tuple(f"ep-{n:06d}" for n in range(1, 41))

DIMENSION_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("country", 20), ("genre", 18), ("device_type", 15), ("segment", 10), ("platform", 8),
    ("region", 6), ("dma", 5), ("rating", 5), ("language", 5), ("live", 4), ("series", 3),
    ("channel", 3), ("break", 2), ("content_id", 1),
)  # fmt: skip

LADDER: tuple[tuple[int, int, int, str], ...] = (
    (640, 360, 800, "avc1.4d401e"),
    (960, 540, 1500, "avc1.4d401f"),
    (1280, 720, 2500, "avc1.64001f"),
    (1920, 1080, 5000, "avc1.640028"),
)
"""Progressive MP4 renditions: width, height, bitrate (kbps), codec."""

FREQUENCY_CAPS: tuple[JSON, ...] = (
    {"scope": "line_item", "max": 3, "window": "1d"},
    {"scope": "creative", "max": 2, "window": "12h"},
    {"scope": "campaign", "max": 10, "window": "1w"},
    {"scope": "advertiser", "max": 1, "window": "pod"},
    {"scope": "line_item", "max": 1, "window": "30m"},
    {"scope": "campaign", "max": 25, "window": "lifetime"},
    {"scope": "creative", "max": 4, "window": "session"},
)

DAYPARTS: tuple[JSON, ...] = (
    {"days": [0, 1, 2, 3, 4, 5, 6], "start_hour": 19, "end_hour": 23,
     "timezone": "America/New_York"},
    {"days": [5, 6], "start_hour": 6, "end_hour": 12},
    {"days": [0, 1, 2, 3, 4], "start_hour": 6, "end_hour": 10},
    {"days": [6], "start_hour": 12, "end_hour": 20, "timezone": "America/Chicago"},
    {"start_hour": 22, "end_hour": 24},
)  # fmt: skip

KEY_VALUES: tuple[JSON, ...] = (
    {"show_type": {"include": ["premiere", "finale"]}},
    {"tier": {"include": ["premium"]}},
    {"app_section": {"exclude": ["kids"]}},
    {"pod_type": {"include": ["premium"]}, "tier": {"exclude": ["free"]}},
)


def _weighted(rng: random.Random, pairs: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _letters(n: int, width: int) -> str:
    """``n`` in base 26 as ``width`` upper-case letters."""
    out = ""
    for _ in range(width):
        n, r = divmod(n, 26)
        out = chr(ord("A") + r) + out
    return out


class _Gen:
    def __init__(self, line_items: int, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.n_line_items = line_items
        self.seed = seed
        now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.advertisers: list[JSON] = []
        self.campaigns: list[JSON] = []
        self.line_items: list[JSON] = []
        self.creatives: list[JSON] = []
        self.vertical_of: dict[str, Vertical | None] = {}
        self.prefix_of: dict[str, str] = {}
        self.creative_count: dict[str, int] = {}
        self.names: set[str] = set()

    # ---- advertisers

    def advertiser(self, index: int) -> JSON:
        rng = self.rng
        vertical: Vertical = _weighted(rng, [(v, v.weight) for v in VERTICALS])
        name = f"{rng.choice(BRAND_WORDS)} {rng.choice(vertical.suffixes)}".replace(" +", "+")
        if name in self.names:
            name = f"{name} {_letters(index, 2)}"
        self.names.add(name)
        adv_id = f"adv-{index:05d}"
        adv: JSON = {
            "id": adv_id,
            "name": name,
            "domain": f"{_slug(name)}-{index}.example",
            "categories": list(vertical.categories),
            # A few advertisers opt out of competitive separation (no category).
            "competitive_category": vertical.competitive if rng.random() < 0.92 else None,
        }
        self.vertical_of[adv_id] = vertical
        self.prefix_of[adv_id] = name[0].upper() + _letters(index, 3)
        return adv

    def house_advertiser(self) -> JSON:
        adv_id = "adv-house"
        self.vertical_of[adv_id] = None
        self.prefix_of[adv_id] = "HOUS"
        return {
            "id": adv_id,
            "name": "Publisher Promos",
            "domain": "tv.example",
            "categories": ["IAB1-7"],
            "competitive_category": None,
        }

    # ---- campaigns

    def campaign(self, index: int, adv: JSON, house: bool) -> JSON:
        rng = self.rng
        r = rng.random()
        if r < 0.05:  # already over
            end = self.today - timedelta(days=rng.randint(1, 10))
            start = end - timedelta(days=rng.randint(14, 60))
        elif r < 0.10:  # not started yet
            start = self.today + timedelta(days=rng.randint(3, 20))
            end = start + timedelta(days=rng.randint(14, 90))
        else:
            start = self.today - timedelta(days=rng.randint(0, 45))
            end = self.today + timedelta(days=rng.randint(14, 120))
        if house:
            start, end = self.today - timedelta(days=365), self.today + timedelta(days=3 * 365)
        season = "House Promos" if house else rng.choice(CAMPAIGN_SEASONS)
        camp: JSON = {
            "id": f"cmp-{index:06d}",
            "advertiser_id": adv["id"],
            "name": f"{adv['name']} {season} {start.year}",
            "start": _iso(start),
            "end": _iso(end),
        }
        if not house and rng.random() < 0.04:
            camp["status"] = "paused"
        if not house and rng.random() < 0.6:
            impressions = rng.randint(20, 2000) * 10_000
            camp["budget"] = {
                "impressions": impressions,
                "spend": round(impressions / 1000 * rng.uniform(8, 40), 2),
            }
            if rng.random() < 0.2:
                camp["goal"] = "spend"
        camp["timezone"] = rng.choice(TIMEZONES)
        return camp

    # ---- creatives

    def creative(self, adv: JSON, camp: JSON) -> JSON:
        rng = self.rng
        adv_id = adv["id"]
        vertical = self.vertical_of[adv_id]
        k = self.creative_count.get(adv_id, 0) + 1
        self.creative_count[adv_id] = k
        cr_id = f"cr-{len(self.creatives) + 1:06d}"
        seconds: int = _weighted(rng, [(15, 40), (30, 33), (6, 8), (20, 7), (60, 7), (10, 5)])
        theme = rng.choice(vertical.themes) if vertical else "Tonight on TV"
        cr: JSON = {
            "id": cr_id,
            "advertiser_id": adv_id,
            "title": f"{adv['name']} - {theme} :{seconds:02d}",
        }
        odd = rng.random()
        if odd < 0.06:  # NTSC-ish lengths as delivered by some agencies
            cr["duration"] = round(seconds * 0.999, 3)
        elif odd < 0.12:
            cr["duration_ms"] = seconds * 1001
        else:
            cr["duration"] = seconds
        path = f"ads/{adv_id}/{cr_id}"
        host = "cdn.example.com" if rng.random() < 0.7 else "cdn2.example.com"
        ladder = [LADDER[0], LADDER[2], LADDER[3]]
        if rng.random() < 0.5:
            ladder.insert(1, LADDER[1])
        renditions: list[JSON] = [
            {
                "url": f"https://{host}/{path}/{w}x{h}_{kbps}k.mp4",
                "mime": "video/mp4",
                "width": w,
                "height": h,
                "bitrate_kbps": kbps,
                "codec": codec,
            }
            for w, h, kbps, codec in ladder
        ]
        renditions.append(
            {
                "url": f"https://hls.example.net/{path}/master.m3u8",
                "mime": "application/x-mpegURL",
                "width": 1920,
                "height": 1080,
                "codec": "avc1.640028,mp4a.40.2",
                "delivery": "streaming",
            }
        )
        cr["renditions"] = renditions
        cr["mezzanine"] = {
            "url": f"https://mezz.example.org/{path}/mezzanine.mov",
            "mime": "video/quicktime",
            "width": 1920,
            "height": 1080,
            "codec": "prores",
            "file_size": seconds * 27_500_000,
        }
        cr["universal_ad_id"] = f"{self.prefix_of[adv_id]}{k:04d}000H"
        cr["click_through"] = (
            f"https://www.{adv['domain']}/offers?utm_source=ctv&utm_medium=video"
            f"&utm_campaign={camp['id']}"
        )
        if rng.random() < 0.5:
            cr["categories"] = list(adv["categories"])
        if vertical is not None and vertical.rating is not None:
            cr["rating"] = vertical.rating
        else:
            cr["rating"] = _weighted(rng, [("TV-G", 80), ("TV-PG", 15), ("TV-Y", 5)])
        if rng.random() < 0.03:
            cr["approved"] = False
        if seconds > 6 and rng.random() < 0.05:
            cr["skip_offset"] = 5
        if rng.random() < 0.01:
            cr["api_framework"] = "VPAID"
        if rng.random() < 0.15:
            cr["verifications"] = [
                {
                    "vendor": "verify.example.com-omid",
                    "js_url": "https://verify.example.com/omid/v1/verification.js",
                    "api_framework": "omid",
                    "parameters": json.dumps({"campaign": camp["id"], "creative": cr_id}),
                }
            ]
        if rng.random() < 0.10:
            cr["icons"] = [
                {
                    "program": "AdChoices",
                    "width": 77,
                    "height": 15,
                    "x_position": "right",
                    "y_position": "top",
                    "image_url": "https://cdn.example.com/icons/adchoices-77x15.png",
                    "creative_type": "image/png",
                    "click_through": "https://optout.example.org/adchoices",
                    "offset": 0,
                    "duration": seconds,
                }
            ]
        self.creatives.append(cr)
        return cr

    # ---- line items

    def targeting(self, vertical: Vertical | None, tier: str) -> JSON:
        rng = self.rng
        t: JSON = {}
        k = _weighted(rng, [(0, 10), (1, 40), (2, 35), (3, 15)])
        if tier == "house":
            k = min(k, 1)
        dims: list[str] = []
        while len(dims) < k:
            dim = _weighted(rng, DIMENSION_WEIGHTS)
            if dim not in dims:
                dims.append(dim)
        for dim in dims:
            t[dim] = self.rule(dim)
        if vertical is not None and vertical.competitive in ("beer", "wine"):
            # Alcohol stays out of kids programming (on top of the creatives' TV-14 rating).
            kids = ("kids", "animation")
            include = [g for g in t.get("genre", {}).get("include", []) if g not in kids]
            t["genre"] = (
                {"include": include, "exclude": list(kids)} if include else {"exclude": list(kids)}
            )
            if "series" in t:
                t["series"]["include"] = [
                    s for s in t["series"]["include"] if s != "tiny-explorers"
                ]
                if not t["series"]["include"]:
                    del t["series"]
        if rng.random() < 0.08:
            t["dayparts"] = [copy.deepcopy(rng.choice(DAYPARTS))]
        if rng.random() < 0.06:
            t["key_values"] = copy.deepcopy(rng.choice(KEY_VALUES))
        return t

    def rule(self, dim: str) -> JSON:
        rng = self.rng

        def some(pool: Sequence[str], lo: int, hi: int) -> list[str]:
            unique = list(dict.fromkeys(pool))
            return sorted(rng.sample(unique, rng.randint(lo, min(hi, len(unique)))))

        match dim:
            case "country":
                return {"include": some(COUNTRIES, 1, 3)}
            case "region":
                return {"include": some(REGIONS, 1, 3)}
            case "dma":
                return {"include": some(DMAS, 1, 4)}
            case "device_type":
                return rng.choice(
                    [{"include": ["ctv"]}, {"include": ["ctv", "stb"]},
                     {"exclude": ["desktop", "mobile"]}]
                )  # fmt: skip
            case "platform":
                if rng.random() < 0.3:
                    return {"exclude": ["web"]}
                return {"include": some(PLATFORMS[:-1], 1, 3)}
            case "genre":
                if rng.random() < 0.3:
                    return {"exclude": some(("news", "kids", "crime"), 1, 2)}
                return {"include": some(GENRES, 1, 3)}
            case "rating":
                if rng.random() < 0.5:
                    return {"exclude": ["TV-Y", "TV-Y7"]}
                return {"include": list(RATINGS[rng.randint(2, 4) :])}
            case "live":
                return {"include": [rng.choice(("1", "0"))]}
            case "series":
                return {"include": some(SERIES, 1, 2)}
            case "channel":
                return {"include": some(CHANNELS, 1, 2)}
            case "content_id":
                return {"include": some(CONTENT_IDS, 1, 3)}
            case "language":
                return {"include": [rng.choice(LANGUAGES)]}
            case "segment":
                return {"include": some(SEGMENTS, 1, 2)}
            case _:  # break
                return {"include": some(("pre", "mid", "post"), 1, 2)}

    def line_item(self, camp: JSON, creatives: list[JSON], tier: str) -> JSON:
        rng = self.rng
        vertical = self.vertical_of[camp["advertiser_id"]]
        li_id = f"li-{len(self.line_items) + 1:06d}"
        chosen = sorted(
            rng.sample(creatives, rng.randint(1, len(creatives))), key=lambda c: str(c["id"])
        )
        if tier == "sponsorship":  # own the breaks of one series
            targeting: JSON = {"series": {"include": [rng.choice(SERIES)]}}
        else:
            targeting = self.targeting(vertical, tier)
        label = ", ".join(sorted(k for k in targeting if k not in ("dayparts", "key_values")))
        li: JSON = {
            "id": li_id,
            "campaign_id": camp["id"],
            "name": f"{camp['name']} / {tier} / {label or 'run of network'}",
            "tier": tier,
            "creative_ids": [c["id"] for c in chosen],
        }
        if rng.random() < 0.3:  # a sub-flight inside the campaign's
            c_start = datetime.fromisoformat(camp["start"])
            c_end = datetime.fromisoformat(camp["end"])
            days = max(1, (c_end - c_start).days)
            start = c_start + timedelta(days=rng.randint(0, days // 2))
            end = c_end - timedelta(days=rng.randint(0, max(0, (c_end - start).days - 1)))
            li["start"], li["end"] = _iso(start), _iso(end)
        r = rng.random()
        if r < 0.05:
            li["status"] = "paused"
        elif r < 0.06:
            li["status"] = "archived"
        if tier == "sponsorship":
            li["pricing_model"] = "flat"
            li["price"] = float(rng.randint(5, 50) * 1000)
            li["targeting"] = targeting
            li["positions"] = rng.choice([["pre"], ["pre", "mid"]])
            li["slot"] = "first"
        else:
            if tier == "guaranteed":
                li["price"] = round(rng.uniform(20, 60), 2)
            elif tier == "standard":
                li["price"] = round(min(60.0, max(5.0, rng.lognormvariate(2.7, 0.45))), 2)
            else:
                li["price"] = 0.0
            if targeting:
                li["targeting"] = targeting
            positions = _weighted(
                rng, [(None, 75), (["pre"], 10), (["pre", "mid"], 8), (["mid"], 7)]
            )
            if positions is not None:
                li["positions"] = positions
            if rng.random() < 0.08:
                li["slot"] = rng.choice(("first", "last"))
        if tier != "house" and rng.random() < 0.35:
            caps = rng.sample(FREQUENCY_CAPS, rng.randint(1, 2))
            li["frequency_caps"] = [dict(c) for c in caps]
        if tier == "guaranteed":
            impressions = rng.randint(10, 500) * 10_000
            li["pacing"] = {
                "delivery": "even",
                "budget": {"impressions": impressions, "daily_impressions": impressions // 30},
            }
        elif tier == "standard" and rng.random() < 0.3:
            li["pacing"] = {
                "delivery": rng.choice(("asap", "even", "frontloaded")),
                "budget": {"daily_spend": float(rng.randint(5, 200) * 10)},
            }
        self.line_items.append(li)
        return li

    # ---- whole catalog

    def build(self) -> JSON:
        rng = self.rng
        n = self.n_line_items
        n_house = round(n * 0.1)
        n_paid = n - n_house
        n_adv = max(1, round(n_paid / 10)) if n_paid else 0
        self.advertisers = [self.advertiser(i + 1) for i in range(n_adv)]
        if n_house:
            self.advertisers.append(self.house_advertiser())

        camp_index = 0
        order = list(self.advertisers[:n_adv])
        rng.shuffle(order)
        remaining = n_paid
        while remaining > 0:
            adv = order[camp_index] if camp_index < len(order) else rng.choice(order)
            camp_index += 1
            size = min(remaining, rng.randint(2, 6))
            remaining -= size
            camp = self.campaign(camp_index, adv, house=False)
            self.campaigns.append(camp)
            creatives = [self.creative(adv, camp) for _ in range(rng.randint(1, 3))]
            for _ in range(size):
                tier = _weighted(rng, [("standard", 78), ("guaranteed", 17), ("sponsorship", 5)])
                self.line_item(camp, creatives, tier)
        if n_house:
            house = self.advertisers[-1]
            camp_index += 1
            camp = self.campaign(camp_index, house, house=True)
            self.campaigns.append(camp)
            creatives = [self.creative(house, camp) for _ in range(min(8, max(1, n_house // 3)))]
            for _ in range(n_house):
                self.line_item(camp, creatives, "house")

        return {
            "version": f"gen-{n}-s{self.seed}",
            "advertisers": self.advertisers,
            "campaigns": self.campaigns,
            "line_items": self.line_items,
            "creatives": self.creatives,
            "ad_rules": {
                "default": {
                    "pre": {"duration": 30, "max_ads": 2},
                    "mid": {"duration": 120, "max_ads": 4},
                    "post": {"duration": 60, "max_ads": 2},
                    "midroll_interval": 600,
                    "min_midroll_spacing": 300,
                },
                "kids": {
                    "pre": {"duration": 15, "max_ads": 1},
                    "mid": {"duration": 60, "max_ads": 2},
                    "midroll_interval": 900,
                },
                "live_sports": {"mid": {"duration": 180, "max_ads": 6}, "midroll_interval": 900},
            },
            "blocklist": {"domains": ["blocked-brand.example"], "categories": ["IAB25", "IAB26"]},
        }


def generate_catalog(line_items: int, seed: int, *, now: datetime) -> dict[str, Any]:
    """A synthetic catalog document with exactly ``line_items`` line items.

    Roughly one advertiser per ten line items (plus a house advertiser for ~10% house line
    items), 2-6 line items per campaign, 1-3 creatives per campaign. Flights are placed around
    ``now`` (a naive ``now`` is taken as UTC): most running, a few over or not yet started.
    Deterministic for given arguments.
    """
    if line_items < 0:
        raise ValueError("line_items must be >= 0")
    return _Gen(line_items, seed, now).build()


# --------------------------------------------------------------------------- CLI


def main_gen_catalog(argv: list[str]) -> int:
    """``gen-catalog --line-items N --seed S [--out PATH] [--now ISO] [--compact]``."""
    parser = argparse.ArgumentParser(
        prog="vastserver gen-catalog",
        formatter_class=HelpWithDefaults,
        description="Write a synthetic catalog (JSON, see docs/catalog.md).",
    )
    parser.add_argument(
        "--line-items", type=non_negative_int, required=True, metavar="N", help="line items"
    )
    parser.add_argument("--seed", type=int, required=True, metavar="S", help="random seed")
    parser.add_argument("--out", type=Path, metavar="PATH", help="output file (default: stdout)")
    parser.add_argument(
        "--now", type=iso_datetime, metavar="ISO", help="reference time for flights (default: now)"
    )
    parser.add_argument("--compact", action="store_true", help="no indentation")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    now: datetime = args.now or datetime.now(UTC)
    doc = generate_catalog(args.line_items, args.seed, now=now)
    text = json.dumps(doc, indent=None if args.compact else 2, ensure_ascii=False) + "\n"
    out: Path | None = args.out
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)  # atomic: a watcher never sees a half-written catalog
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"gen-catalog: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"gen-catalog: wrote {out} ({len(doc['line_items'])} line items, "
        f"{len(doc['creatives'])} creatives, {len(doc['advertisers'])} advertisers)",
        file=sys.stderr,
    )
    return 0
