"""Machine-readable explanation of a decision, for ``debug=1`` and ``GET /decide``."""

from __future__ import annotations

from typing import Any

from vastserver.logs import REQUEST_ID
from vastserver.pipeline.context import BreakSpec
from vastserver.pipeline.decide import Decision, ImpAd, PlacedAd, SlottedAd


def _slots(b: BreakSpec) -> dict[str, Any]:
    """A structured pod's slot rules in play order, each with its imp; nothing without."""
    if b.slots is None:
        return {}
    return {
        "slots": [
            {
                "imp_id": r.imp_id,
                "role": r.role,
                "min_duration_ms": r.min_ms,
                "max_duration_ms": r.max_ms,
                "required_durations_s": None if r.required_s is None else sorted(r.required_s),
            }
            for r in b.slots
        ]
    }


def _slot_fill(b: BreakSpec, a: PlacedAd) -> dict[str, Any]:
    """Which slot rule (an index into ``break.slots``) and imp a placed ad fills; in a
    hybrid pod split among its imps (``break.imps``), the imp."""
    if b.imps is not None:
        return {"imp_id": b.imps[a.imp].imp_id if isinstance(a, ImpAd) else None}
    if b.slots is None:
        return {}
    if not isinstance(a, SlottedAd):
        return {"slot_rule": None, "imp_id": None}
    return {"slot_rule": a.slot_rule, "imp_id": b.slots[a.slot_rule].imp_id}


def decision_json(d: Decision, request_id: str | None = None) -> dict[str, Any]:
    """``request_id`` defaults to the id of the request being served (an inline VMAP's
    breaks are explained where the VAST is rendered, which does not know it)."""
    b = d.request.brk
    return {
        "request_id": REQUEST_ID.get() if request_id is None else request_id,
        # a preview (test=1, OpenRTB test = 1): nothing reserved, remembered or counted
        "test": d.request.test,
        "break": {
            "position": b.position.value,
            "pod_duration_ms": b.pod_duration_ms,
            "max_ads": b.max_ads,
            "min_ad_duration_ms": b.min_ad_duration_ms,
            "max_ad_duration_ms": b.max_ad_duration_ms,
            "required_durations_s": (
                None if b.required_durations_s is None else sorted(b.required_durations_s)
            ),
            "avail": b.avail,
            # the VAST version asked for: a 2.0 break holds one ad whatever max_ads says
            "vast_version": d.request.vast_version,
            **_slots(b),
        },
        "viewer": {
            # under limited ad tracking, or without GDPR consent to a device identifier:
            # caps and history follow the session, not the device
            "limited_tracking": d.request.device.lmt,
            "segments": list(d.request.segments),
            # whether the GDPR applies, as resolved (by the signals, or by the country
            # with VASTSERVER_GDPR_BY_GEO); None: nothing says
            "gdpr": d.request.privacy.gdpr,
        },
        "at": d.now.isoformat(),
        "scorer": d.scorer,
        "filled": d.filled,
        "pod": {
            "value": round(d.value, 6),
            "duration_ms": d.total_duration_ms,
            "ads": [
                {
                    "slot": a.slot,
                    **_slot_fill(b, a),
                    "line_item_id": a.candidate.line_item.id,
                    "creative_id": a.candidate.creative.id,
                    "advertiser_id": a.candidate.advertiser.id,
                    # what keeps competitors out of the pod and of the session's next breaks
                    "competitive_labels": sorted(a.candidate.labels),
                    "tier": a.candidate.line_item.tier.name.lower(),
                    "duration_ms": a.candidate.creative.duration_ms,
                    "prediction": round(a.prediction, 6),
                    "value": round(a.value, 6),
                    "price_cpm": a.price_cpm,
                    "pricing_model": a.candidate.line_item.pricing_model,
                }
                for a in d.ads
            ],
        },
        "candidates": [
            {
                "line_item_id": t.line_item_id,
                "creative_id": t.creative_id,
                "advertiser_id": t.advertiser_id,
                # as in the pod's ads: a candidate dropped by competitive_separation shares
                # one with an ad of the pod or of the session's recent breaks
                "competitive_labels": sorted(t.labels),
                "selected": t.reason is None,
                "stage": None if t.stage is None else t.stage.value,
                "reason": None if t.reason is None else t.reason.value,
                "prediction": None if t.prediction is None else round(t.prediction, 6),
                "value": None if t.value is None else round(t.value, 6),
                "slot": t.slot,
            }
            for t in d.traces
        ],
    }
