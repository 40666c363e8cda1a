"""Helpers for delivery-control scenarios: a service with an injected clock and store."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from vastserver.catalog.load import parse_catalog
from vastserver.catalog.model import BreakPosition
from vastserver.delivery import DeliveryControl
from vastserver.metrics import Metrics
from vastserver.pipeline.context import AdRequest, BreakSpec, Device
from vastserver.pipeline.delivery import SeparationRules
from vastserver.service import AdService, build_snapshot
from vastserver.store.base import Store
from vastserver.tracking import AdToken, Keyring

SECRET = "delivery-test-secret-0123456789"


def base_catalog() -> dict[str, Any]:
    return {
        "version": "delivery-test",
        "advertisers": [
            {"id": "adv-a", "name": "A", "domain": "a.example", "competitive_category": "auto"},
            {"id": "adv-b", "name": "B", "domain": "b.example", "competitive_category": "food"},
        ],
        "campaigns": [
            {
                "id": "cmp-a",
                "advertiser_id": "adv-a",
                "name": "A",
                "start": "2026-01-01T00:00:00Z",
                "end": "2099-12-31T23:59:59Z",
            },
            {
                "id": "cmp-b",
                "advertiser_id": "adv-b",
                "name": "B",
                "start": "2026-01-01T00:00:00Z",
                "end": "2099-12-31T23:59:59Z",
            },
        ],
        "creatives": [
            _creative("cr-a", "adv-a", "AAAA0001000H"),
            _creative("cr-b", "adv-b", "BBBB0001000H"),
        ],
        "line_items": [
            {
                "id": "li-a",
                "campaign_id": "cmp-a",
                "name": "A",
                "tier": "standard",
                "price": 20,
                "creative_ids": ["cr-a"],
            },
            {
                "id": "li-b",
                "campaign_id": "cmp-b",
                "name": "B house",
                "tier": "house",
                "price": 0,
                "creative_ids": ["cr-b"],
            },
        ],
    }


CATEGORIES = ("auto", "food", "beer")


CATEGORIES = ("auto", "food", "beer")
"""The competitive categories of :func:`six_advertisers`, in turn."""


def six_advertisers() -> dict[str, Any]:
    """Six advertisers ``adv-0`` .. ``adv-5``, two per competitive category (auto, food,
    beer, in turn), one 15 s creative ``cr-i`` each through line item ``li-i``; prices fall
    from the first to the last, so every 2-ad break left alone picks the same two."""
    cat = base_catalog()
    tmpl_cr = cat["creatives"][0]
    tmpl_li = cat["line_items"][0]
    tmpl_cmp = cat["campaigns"][0]
    cat["advertisers"], cat["campaigns"], cat["creatives"], cat["line_items"] = [], [], [], []
    for i in range(6):
        adv = f"adv-{i}"
        cat["advertisers"].append(
            {
                "id": adv,
                "name": adv,
                "domain": f"{adv}.example",
                "competitive_category": CATEGORIES[i % 3],
            }
        )
        cat["campaigns"].append({**tmpl_cmp, "id": f"cmp-{i}", "advertiser_id": adv})
        cat["creatives"].append(
            {
                **tmpl_cr,
                "id": f"cr-{i}",
                "advertiser_id": adv,
                "universal_ad_id": f"UID{i:09d}",
                "click_through": f"https://{adv}.example/click",
                "renditions": [
                    {**r, "url": f"https://cdn.example.com/cr-{i}/720.mp4"}
                    for r in tmpl_cr["renditions"]
                ],
            }
        )
        cat["line_items"].append(
            {
                **tmpl_li,
                "id": f"li-{i}",
                "campaign_id": f"cmp-{i}",
                "price": 30 - i,
                "creative_ids": [f"cr-{i}"],
            }
        )
    return cat


def _creative(cid: str, adv: str, uid: str) -> dict[str, Any]:
    return {
        "id": cid,
        "advertiser_id": adv,
        "title": f"Creative {cid}",
        "duration": 15,
        "universal_ad_id": uid,
        "click_through": f"https://{adv}.example/click",
        "renditions": [
            {
                "url": f"https://cdn.example.com/{cid}/720.mp4",
                "mime": "video/mp4",
                "width": 1280,
                "height": 720,
                "bitrate_kbps": 2500,
            }
        ],
    }


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_service(
    catalog: dict[str, Any],
    store: Store,
    clock: Callable[[], datetime],
    seed: int = 1,
    separation: SeparationRules | None = None,
) -> AdService:
    cat = parse_catalog(json.loads(json.dumps(catalog)))
    rng = random.Random(seed)
    metrics = Metrics()
    delivery = DeliveryControl(
        store,
        clock=clock,
        rng=rng,
        token_max_age_s=86400,
        separation=separation,
        metrics=metrics,
    )
    return AdService(
        build_snapshot(cat, "<test>", clock()),
        clock=clock,
        metrics=metrics,
        keyring=Keyring.from_secrets([SECRET]),
        delivery=delivery,
        rng=rng,
    )


def request(
    device_id: str | None = "viewer-1",
    *,
    pod_s: int = 30,
    max_ads: int = 2,
    session: str | None = None,
    lmt: bool = False,
) -> AdRequest:
    return AdRequest(
        brk=BreakSpec(BreakPosition.MID, pod_duration_ms=pod_s * 1000, max_ads=max_ads),
        device=Device(ifa=device_id, lmt=lmt, device_type="ctv", ip="203.0.113.9", user_agent="t"),
        session=session,
    )


def tokens_for(service: AdService, d: Any) -> list[AdToken]:
    """The tokens the rendered VAST would carry for each ad of a decision."""
    out = []
    for ad in d.ads:
        c = ad.candidate
        out.append(
            AdToken(
                ad_serving_id=ad.ad_serving_id,
                line_item_id=c.line_item.id,
                creative_id=c.creative.id,
                campaign_id=c.campaign.id,
                advertiser_id=c.advertiser.id,
                viewer_hash=d.viewer_hash,
                price_micros=round(ad.price_cpm * 1_000_000),
                served_at=int(d.now.timestamp()),
                pod_position=ad.slot,
                session=d.request.session or "",
                click_url="",
                lmt=d.request.device.lmt,
            )
        )
    return out
