"""The serving core without HTTP: catalog snapshot, decisions, stream-level separation.

Data flows one way: request -> retrieve candidates -> (counters) -> pure ``decide`` -> render.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from vastserver.catalog.load import load_catalog
from vastserver.catalog.model import Catalog
from vastserver.metrics import Metrics
from vastserver.pipeline.candidates import CatalogIndex, build_index
from vastserver.pipeline.context import AdRequest, BreakSpec
from vastserver.pipeline.decide import Decision, decide
from vastserver.pipeline.schedule import PlannedBreak
from vastserver.pipeline.scoring import PriceScorer, Scorer
from vastserver.pipeline.stages import StageEnv

log = logging.getLogger("vastserver.service")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable catalog and the indexes built from it; replaced whole on reload."""

    catalog: Catalog
    index: CatalogIndex
    source: str
    loaded_at: datetime


def build_snapshot(catalog: Catalog, source: str, now: datetime) -> Snapshot:
    return Snapshot(catalog=catalog, index=build_index(catalog), source=source, loaded_at=now)


class AdService:
    def __init__(
        self,
        snapshot: Snapshot,
        *,
        clock: Callable[[], datetime],
        metrics: Metrics,
        scorer: Scorer | None = None,
    ) -> None:
        self._snapshot = snapshot
        self.clock = clock
        self.metrics = metrics
        self.scorer: Scorer = scorer or PriceScorer()
        self._set_catalog_metric(snapshot)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _set_catalog_metric(self, snap: Snapshot) -> None:
        self.metrics.catalog_info.clear()
        self.metrics.catalog_info.labels(snap.catalog.version).set(len(snap.catalog.line_items))

    def reload_catalog(self, path: Path | None = None) -> Snapshot:
        """Load, validate and index a new catalog, then swap it in with one assignment.

        Any error leaves the old snapshot serving (the caller reports the error)."""
        source = Path(path or self._snapshot.source)
        try:
            catalog = load_catalog(source)
            snap = build_snapshot(catalog, str(source), self.clock())
        except Exception:
            self.metrics.catalog_reloads.labels("rejected").inc()
            raise
        self._snapshot = snap
        self.metrics.catalog_reloads.labels("ok").inc()
        self._set_catalog_metric(snap)
        log.info(
            json.dumps({"event": "catalog_reload", "version": snap.catalog.version}),
        )
        return snap

    def _env(
        self,
        req: AdRequest,
        now: datetime,
        recent_creatives: frozenset[str] = frozenset(),
        recent_competitive: frozenset[str] = frozenset(),
    ) -> StageEnv:
        cat = self._snapshot.catalog
        return StageEnv(
            now=now,
            blocked_categories=cat.blocked_categories | req.blocked_categories,
            blocked_domains=cat.blocked_domains | req.blocked_domains,
            recent_creatives=recent_creatives,
            recent_competitive=recent_competitive,
        )

    def decide(
        self,
        req: AdRequest,
        *,
        recent_creatives: frozenset[str] = frozenset(),
        recent_competitive: frozenset[str] = frozenset(),
    ) -> Decision:
        snap = self._snapshot
        now = self.clock()
        cands = snap.index.retrieve(req)
        env = self._env(req, now, recent_creatives, recent_competitive)
        d = decide(req, cands, env, scorer=self.scorer)
        self._observe(d)
        return d

    def decide_stream(self, base: AdRequest, breaks: list[PlannedBreak]) -> list[Decision]:
        """Decide every break of a stream in order; a creative or competitive category shown
        in one break is kept out of the following breaks (stream-level separation)."""
        shown_creatives: set[str] = set()
        shown_categories: set[str] = set()
        out: list[Decision] = []
        for b in breaks:
            req = replace(base, brk=break_spec(b, base.brk))
            d = self.decide(
                req,
                recent_creatives=frozenset(shown_creatives),
                recent_competitive=frozenset(shown_categories),
            )
            for ad in d.ads:
                shown_creatives.add(ad.candidate.creative.id)
                comp = ad.candidate.advertiser.competitive_category
                if comp:
                    shown_categories.add(comp)
            out.append(d)
        return out

    def _observe(self, d: Decision) -> None:
        m = self.metrics
        m.pods.labels("filled" if d.filled else "empty").inc()
        m.ads_per_pod.observe(len(d.ads))
        m.seconds_requested.inc(d.request.brk.pod_duration_ms / 1000)
        m.seconds_filled.inc(d.total_duration_ms / 1000)
        for t in d.traces:
            if t.reason is not None:
                m.rejections.labels(t.reason.stage.value, t.reason.value).inc()


def break_spec(b: PlannedBreak, like: BreakSpec) -> BreakSpec:
    return replace(
        like,
        position=b.position,
        pod_duration_ms=round(b.duration_s * 1000),
        max_ads=b.max_ads,
        avail=b.avail,
    )
