"""Event-log records: what a decision and a counted beacon leave behind.

Decisions record the *raw* request context and the chosen ads; the feature module turns
them into model features both when training and when serving, so the log never freezes a
feature definition. ``docs/event-log.md`` documents the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.decide import Decision
from vastserver.pipeline.scoring import ScoringContext
from vastserver.tracking import AdToken


class EventSink(Protocol):
    def append(self, record: Mapping[str, Any]) -> None: ...


class NullSink:
    """Used when no event log is configured."""

    def append(self, record: Mapping[str, Any]) -> None:
        return None


def context_record(req: AdRequest) -> dict[str, Any]:
    d, c, b = req.device, req.content, req.brk
    return {
        "device_type": d.device_type,
        "platform": d.platform,
        "country": d.country,
        "region": d.region,
        "dma": d.dma,
        "language": d.language,
        "lmt": d.lmt,
        "content_id": c.id,
        "genres": list(c.genres),
        "rating": c.rating,
        "live": c.live,
        "series": c.series,
        "channel": c.channel,
        "break": b.position.value,
        "avail": b.avail,
        "pod_duration_ms": b.pod_duration_ms,
        "max_ads": b.max_ads,
        "session": req.session,
        "placement": req.placement,
        "segments": list(req.segments),
        # why the decision was restricted: child-directed content (no segments), the GDPR
        # as resolved, and what the consent, lmt and a US opt-out left it to use
        "kids": c.kids,
        "gdpr": req.privacy.gdpr,
        "device_id_allowed": req.permissions.device_id,
        "segments_allowed": req.permissions.segments,
    }


def decision_record(
    d: Decision,
    *,
    request_id: str | None,
    arm: str | None,
    model_version: str | None,
    experiment: str | None = None,
    shadow: tuple[str, list[float]] | None = None,
    scoring: ScoringContext | None = None,
) -> dict[str, Any]:
    """``shadow``: (shadow model version, its predictions for the served ads, in order).
    ``scoring``: the context the ads were scored with; each ad then records the history
    inputs the scorer was handed (``completion_rate``, ``viewer_exposures``), which training
    uses instead of rebuilding them from a log that may not reach back far enough."""
    history: list[dict[str, Any]] = [{} for _ in d.ads]
    if scoring is not None:
        rates = scoring.completion_rates
        history = [
            {
                "completion_rate": rates.get(a.candidate.line_item.id),
                "viewer_exposures": scoring.viewer_exposures,
            }
            for a in d.ads
        ]
    return {
        "type": "decision",
        "at": d.now.isoformat(),
        "request_id": request_id,
        "viewer": d.viewer_hash,
        "ad_serving_ids": [a.ad_serving_id for a in d.ads],
        "context": context_record(d.request),
        "candidates": len(d.traces),
        "filled": d.filled,
        "duration_ms": d.total_duration_ms,
        "scorer": d.scorer,
        "experiment": experiment,
        "arm": arm,
        "model_version": model_version,
        "shadow_version": None if shadow is None else shadow[0],
        "ads": [
            {
                "ad_serving_id": a.ad_serving_id,
                "line_item_id": a.candidate.line_item.id,
                "creative_id": a.candidate.creative.id,
                "campaign_id": a.candidate.campaign.id,
                "advertiser_id": a.candidate.advertiser.id,
                "slot": a.slot,
                "pod_size": len(d.ads),
                "tier": a.candidate.line_item.tier.name.lower(),
                "creative_duration_ms": a.candidate.creative.duration_ms,
                "categories": list(a.candidate.advertiser.categories),
                "competitive_category": a.candidate.advertiser.competitive_category,
                "competitive_labels": sorted(a.candidate.labels),
                "price_cpm": a.price_cpm,
                "currency": a.candidate.line_item.currency,
                "prediction": a.prediction,
                "value": a.value,
                **history[i],
                **({} if shadow is None else {"shadow_prediction": shadow[1][i]}),
            }
            for i, a in enumerate(d.ads)
        ],
    }


def beacon_record(
    event: str,
    token: AdToken | None,
    *,
    counted: bool,
    result: str,
    caller_ip: str | None,
    device_ip: str | None,
    device_user_agent: str | None,
    error_code: int | None,
    at: str,
    reason: str | None = None,
    session: str | None = None,
    break_id: str | None = None,
    playhead_ms: int | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "type": "beacon",
        "at": at,
        "event": event,
        "counted": counted,
        "result": result,
        "caller_ip": caller_ip,
        "device_ip": device_ip,
        "device_user_agent": device_user_agent,
        "error_code": error_code,
        "reason": reason,
        "session": session,
        "break_id": break_id,
        "playhead_ms": playhead_ms,
    }
    if token is not None:
        rec.update(
            ad_serving_id=token.ad_serving_id,
            line_item_id=token.line_item_id,
            creative_id=token.creative_id,
            campaign_id=token.campaign_id,
            advertiser_id=token.advertiser_id,
            price_cpm=token.price_micros / 1_000_000,
            served_at=token.served_at,
            pod_position=token.pod_position,
            viewer=token.viewer_hash,
        )
    return rec
