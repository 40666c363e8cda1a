"""The guarantees, checked from what the simulator saw (never from the server's own counters).

* **Frequency caps**: for every played ad of a line item with caps, the plays that count
  against each cap (same viewer or session, same scope id, inside the window) must not exceed
  ``max``. Each excess is classified:

  - ``server``: counting only line items carrying the same cap, one of the plays over the
    cap was served when the server knew of ``max`` others: each served before it whose
    impression had been counted by then, or whose reservation
    (:data:`~vastserver.pipeline.delivery.RESERVATION_S`) was still live (an ad's own
    impression beacon never counts for its own serve).
  - ``scope_semantics``: exceeded when the scope's plays through line items that do *not*
    carry this cap are counted too, as ``docs/catalog.md`` defines the scope ("what is
    counted": a creative-scope cap counts the creative's impressions). The server keeps one
    counter per cap and bumps it only for line items that carry that cap, so a campaign-,
    advertiser- or creative-scope cap on one line item ignores the other line items' plays.
  - ``beacon_faults``: exceeded only because impressions were lost, or reached the server
    after the later serve and after their reservation lapsed, so the server could not know
    the viewer had seen the ad.

  ``violations`` (must be 0) = ``server`` + ``scope_semantics``: the server had the
  information. ``beacon_faults`` are reported, not counted.

* **Competitive separation**: no pod holds two advertisers sharing a competitive label (an
  advertiser's ``competitive_category``, a line item's or creative's
  ``competitive_categories``), or one advertiser twice (so no creative twice:
  ``in_pod_same_creative`` is reported apart, and is always an advertiser twice too), and
  within a session a label does not come back within ``competitive_breaks`` breaks (the
  examples name it ``category``). Checked on every served pod, played or not (the server's
  session history counts served breaks), but for an ad whose ``notUsed`` the server counted
  before the other break was served: it never played, and it left the session's history.
* **Stream separation**: a creative does not come back in a session within
  ``creative_breaks`` breaks or ``creative_minutes`` minutes of its last serve (a serve a
  ``notUsed`` settled before, as above, does not count).
* **Viewer identity**: one simulated viewer maps to one viewer hash and back (SSAI headers and
  players land on the same key).
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vastserver.catalog.model import Catalog, FrequencyCap
from vastserver.pipeline.delivery import RESERVATION_S, SeparationRules
from vastserver.sim.records import Pod, ServedAd

__all__ = [
    "CapReport",
    "SeparationReport",
    "check_frequency_caps",
    "check_separation",
    "check_viewer_identity",
    "window_ms",
]

_WINDOW_RE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
MAX_EXAMPLES = 20


def window_ms(spec: str) -> int | None:
    """Length of a sliding cap window; None for ``lifetime``, ``session`` and ``pod``."""
    m = _WINDOW_RE.match(spec)
    if m is None:
        return None
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def _scope_id(scope: str, ad: ServedAd) -> str:
    match scope:
        case "creative":
            return ad.creative
        case "campaign":
            return ad.campaign
        case "advertiser":
            return ad.advertiser
        case _:
            return ad.line_item


def _same_cap(a: FrequencyCap, b: FrequencyCap) -> bool:
    """The server shares one counter between caps of equal scope and window."""
    return a.scope == b.scope and a.window == b.window


@dataclass(slots=True)
class CapReport:
    plays_checked: int = 0
    cap_checks: int = 0
    server: int = 0
    beacon_faults: int = 0
    scope_semantics: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def violations(self) -> int:
        """Exposures beyond a cap the server had the information to prevent (must be 0)."""
        return self.server + self.scope_semantics

    def as_dict(self) -> dict[str, Any]:
        return {
            "violations": self.violations,
            "plays_checked": self.plays_checked,
            "cap_checks": self.cap_checks,
            "over_cap_by_cause": {
                "server": self.server,
                "beacon_faults": self.beacon_faults,
                "scope_semantics": self.scope_semantics,
            },
            "examples": self.examples,
        }


def check_frequency_caps(
    catalog: Catalog, ads: Iterable[ServedAd], pods: Sequence[Pod]
) -> CapReport:
    played = sorted(
        (a for a in ads if a.played_ms is not None),
        key=lambda a: (a.played_ms or 0, a.serving_id),
    )
    out = CapReport(plays_checked=len(played))
    # Per (subject kind, subject, scope, scope id): play times and the ads, in time order.
    index: dict[tuple[str, str, str], list[ServedAd]] = defaultdict(list)
    for a in played:
        for scope in ("creative", "line_item", "campaign", "advertiser"):
            sid = _scope_id(scope, a)
            index[("v", a.viewer_key, scope + ":" + sid)].append(a)
            index[("s", a.session, scope + ":" + sid)].append(a)
    times = {k: [a.played_ms or 0 for a in v] for k, v in index.items()}

    for a in played:
        li = catalog.line_items.get(a.line_item)
        if li is None:
            continue
        t = a.played_ms or 0
        for cap in li.frequency_caps:
            if a.lmt and cap.window != "session":
                continue  # limit-ad-tracking: the server keeps no device profile
            out.cap_checks += 1
            sid = _scope_id(cap.scope, a)
            kind, subject = ("s", a.session) if cap.window == "session" else ("v", a.viewer_key)
            key = (kind, subject, cap.scope + ":" + sid)
            seq, ts = index[key], times[key]
            hi = bisect.bisect_right(ts, t)
            if cap.window == "pod":
                related = [b for b in seq[:hi] if b.pod == a.pod]
            else:
                w = window_ms(cap.window)
                lo = 0 if w is None else bisect.bisect_right(ts, t - w)
                related = seq[lo:hi]
            if len(related) <= cap.max:
                continue
            same = [b for b in related if _carries(catalog, b.line_item, cap)]
            if _knew_full(same, cap):
                out.server += 1
                cause = "server"
            elif _knew_full(related, cap):
                out.scope_semantics += 1
                cause = "scope_semantics"
            else:
                out.beacon_faults += 1
                cause = "beacon_faults"
            if len(out.examples) < MAX_EXAMPLES:
                out.examples.append(
                    {
                        "cause": cause,
                        "line_item": a.line_item,
                        "cap": {"scope": cap.scope, "max": cap.max, "window": cap.window},
                        "viewer": subject,
                        "at_ms": t,
                        "plays": [
                            {
                                "line_item": b.line_item,
                                "creative": b.creative,
                                "played_ms": b.played_ms,
                                "served_ms": b.served_ms,
                                "impression_counted_ms": b.impression_arrival_ms,
                            }
                            for b in related
                        ],
                    }
                )
    return out


def _known_at_serve(b: ServedAd, a: ServedAd) -> bool:
    """When ``a`` was served, the server knew of ``b``: ``b`` was served before (or in the
    same pod: one decision), and its impression had been counted or its reservation was
    still live."""
    if b.pod == a.pod:
        return True
    if (b.served_ms, b.pod) > (a.served_ms, a.pod):
        return False
    counted = b.impression_arrival_ms is not None and b.impression_arrival_ms <= a.served_ms
    return counted or a.served_ms < b.served_ms + RESERVATION_S * 1000


def _knew_full(plays: Sequence[ServedAd], cap: FrequencyCap) -> bool:
    """Over the cap, and for one of ``plays`` the server knew at its serve of ``max`` others
    among them: it served an ad over a cap it knew was full. Only what the server knew at
    that serve counts (never the ad's own impression beacon, nor one that arrived later)."""
    if len(plays) <= cap.max:
        return False
    if cap.window == "pod":
        return True  # one decision: the server knew every ad of the pod
    return any(
        sum(1 for b in plays if b is not a and _known_at_serve(b, a)) >= cap.max for a in plays
    )


def _carries(catalog: Catalog, li_id: str, cap: FrequencyCap) -> bool:
    li = catalog.line_items.get(li_id)
    return li is not None and any(_same_cap(cap, c) for c in li.frequency_caps)


@dataclass(slots=True)
class SeparationReport:
    pods_checked: int = 0
    in_pod_competitive: int = 0
    in_pod_same_advertiser: int = 0
    in_pod_same_creative: int = 0
    cross_break_competitive: int = 0
    creative_repeats: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def competitive_violations(self) -> int:
        """Pods with two advertisers of one category or one advertiser twice (a creative
        twice is one advertiser twice), and categories back too soon across breaks."""
        return self.in_pod_competitive + self.in_pod_same_advertiser + self.cross_break_competitive

    def as_dict(self) -> dict[str, Any]:
        return {
            "violations": self.competitive_violations,
            "pods_checked": self.pods_checked,
            "in_pod_competitive": self.in_pod_competitive,
            "in_pod_same_advertiser": self.in_pod_same_advertiser,
            "in_pod_same_creative": self.in_pod_same_creative,
            "cross_break_competitive": self.cross_break_competitive,
            "stream_creative_repeats": self.creative_repeats,
            "examples": self.examples,
        }


def check_separation(
    pods: Sequence[Pod], ads: Mapping[str, ServedAd], rules: SeparationRules
) -> SeparationReport:
    out = SeparationReport()
    by_session: dict[str, list[Pod]] = defaultdict(list)

    def example(kind: str, **detail: Any) -> None:
        if len(out.examples) < MAX_EXAMPLES:
            out.examples.append({"kind": kind, **detail})

    for pod in pods:
        if not pod.ads:
            continue
        out.pods_checked += 1
        by_session[pod.session].append(pod)
        members = [ads[s] for s in pod.ads]
        # A label held by two advertisers; one advertiser twice is counted below, once.
        advertisers_of: dict[str, set[str]] = defaultdict(set)
        for a in members:
            for label in a.labels:
                advertisers_of[label].add(a.advertiser)
        for c in sorted(c for c, held in advertisers_of.items() if len(held) > 1):
            out.in_pod_competitive += 1
            example("in_pod_competitive", category=c, session=pod.session, avail=pod.avail)
        advs = [a.advertiser for a in members]
        for adv in sorted({x for x in advs if advs.count(x) > 1}):
            out.in_pod_same_advertiser += 1
            example("in_pod_same_advertiser", advertiser=adv, session=pod.session, avail=pod.avail)
        creatives = [a.creative for a in members]
        for cr in sorted({x for x in creatives if creatives.count(x) > 1}):
            out.in_pod_same_creative += 1
            example("in_pod_same_creative", creative=cr, session=pod.session, avail=pod.avail)
    for session, plist in by_session.items():
        plist.sort(key=lambda p: (p.avail, p.served_ms))
        for i, later in enumerate(plist):
            for earlier in plist[:i]:
                distance = later.avail - earlier.avail
                earlier_ads, later_ads = _in_history(earlier, later, ads)
                if rules.competitive_breaks > 0 and 1 <= distance <= rules.competitive_breaks:
                    shared = {x for a in earlier_ads for x in a.labels} & {
                        x for a in later_ads for x in a.labels
                    }
                    for c in sorted(shared):
                        out.cross_break_competitive += 1
                        example(
                            "cross_break_competitive",
                            category=c,
                            session=session,
                            avails=[earlier.avail, later.avail],
                        )
                minutes = (later.served_ms - earlier.served_ms) / 60_000
                if 0 <= distance < rules.creative_breaks or minutes < rules.creative_minutes:
                    repeats = {a.creative for a in earlier_ads} & {a.creative for a in later_ads}
                    for cr in sorted(repeats):
                        out.creative_repeats += 1
                        example(
                            "stream_creative_repeat",
                            creative=cr,
                            session=session,
                            avails=[earlier.avail, later.avail],
                            served_ms=[earlier.served_ms, later.served_ms],
                            seconds_apart=(later.served_ms - earlier.served_ms) / 1000,
                        )
    return out


def _in_history(
    a: Pod, b: Pod, ads: Mapping[str, ServedAd]
) -> tuple[list[ServedAd], list[ServedAd]]:
    """The ads of pods ``a`` and ``b`` the server had to keep apart: the break served second
    was decided on the session's history holding the other's ads, less those whose
    ``notUsed`` it had counted by then (an ad counted at the same simulated millisecond is
    given the benefit of the doubt)."""
    second = b if (a.served_ms, a.index) <= (b.served_ms, b.index) else a

    def kept(ad: ServedAd) -> bool:
        return ad.not_used_arrival_ms is None or ad.not_used_arrival_ms > second.served_ms

    a_ads = [ads[s] for s in a.ads if a is second or kept(ads[s])]
    b_ads = [ads[s] for s in b.ads if b is second or kept(ads[s])]
    return a_ads, b_ads


def check_viewer_identity(ads: Iterable[ServedAd]) -> dict[str, Any]:
    """Each simulated viewer key must map to exactly one server viewer hash, and back."""
    hashes: dict[str, set[str]] = defaultdict(set)
    keys: dict[str, set[str]] = defaultdict(set)
    for a in ads:
        hashes[a.viewer_key].add(a.viewer_hash)
        keys[a.viewer_hash].add(a.viewer_key)
    split = sorted(k for k, v in hashes.items() if len(v) > 1)
    merged = sorted(h for h, v in keys.items() if len(v) > 1)
    return {
        "viewers": len(hashes),
        "viewers_with_several_hashes": len(split),
        "hashes_shared_by_several_viewers": len(merged),
        "examples": (split + merged)[:MAX_EXAMPLES],
    }
