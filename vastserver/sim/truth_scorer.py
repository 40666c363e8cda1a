"""The perfect model: the simulator's ground truth as a scorer, to measure a lift's ceiling.

A learned model can at best predict what the ground truth (:mod:`vastserver.ml.truth`) would
say from what a request tells the server. This scorer says exactly that, so a run ranked by it
shows how much completion any model could add over price-only ranking in a world, and the
model's lift can be read as a share of it.

It knows only what the server knows at decision time: the request's device type, genres, live
flag and break, the viewer's counted exposures, the hour and each candidate's creative. The
ad's slot is not known before the pod is built: it scores every candidate as if it played
first (the slot effect is one shift of the log-odds for every candidate of a request, which
keeps their order by probability but can reorder near ties of price x probability: so this
is the ceiling to a close approximation). It lives here, never on the serving path: the
truth must stay hidden from the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from vastserver.ml.truth import AdExposure, ViewerModel
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.scoring import ScoringContext

TRUTH_SCORER = "truth"


class TruthScorer:
    """``Scorer`` that predicts P(complete) with the ground truth itself."""

    name = TRUTH_SCORER
    version = "truth-v1"

    def __init__(self, model: ViewerModel | None = None) -> None:
        self.model = model or ViewerModel()

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        device, content, brk = req.device, req.content, req.brk
        hour = ctx.now.astimezone(UTC).hour
        p = self.model.p_complete
        return [
            p(
                AdExposure(
                    device_type=device.device_type,
                    genres=content.genres,
                    live=bool(content.live),
                    break_position=brk.position.value,
                    slot=1,
                    pod_size=brk.max_ads,
                    creative_id=c.creative.id,
                    creative_duration_ms=c.creative.duration_ms,
                    recent_exposures=ctx.viewer_exposures,
                    hour_utc=hour,
                )
            )
            for c in cands
        ]
