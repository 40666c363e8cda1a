"""The closed set of reasons a candidate is dropped.

One enum labels the ``debug`` explanation, the ``/decide`` JSON and the
``vastserver_rejections_total{reason=...}`` metric, so the three always agree.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    RETRIEVAL = "retrieval"
    ELIGIBILITY = "eligibility"
    TARGETING = "targeting"
    POLICY = "policy"
    FREQUENCY = "frequency"
    PACING = "pacing"
    SCORING = "scoring"
    POD = "pod"


class Reason(StrEnum):
    # eligibility: status, flight, creative fit for the break
    INACTIVE = "inactive"
    OUT_OF_FLIGHT = "out_of_flight"
    BREAK_POSITION = "break_position"
    CREATIVE_NOT_APPROVED = "creative_not_approved"
    LONGER_THAN_POD = "longer_than_pod"
    SHORTER_THAN_MIN = "shorter_than_min_duration"
    LONGER_THAN_MAX = "longer_than_max_duration"
    DURATION_NOT_REQUIRED = "duration_not_in_required"
    FITS_NO_SLOT = "fits_no_slot"
    """A structured pod whose slots take different durations: no slot takes this one; or an
    OpenRTB hybrid pod's ads (``BreakSpec.imps``): no split among its imps takes this one."""
    # targeting
    TARGETING = "targeting"
    DAYPART = "daypart"
    # policy and brand safety
    CONTENT_RATING = "content_rating"
    KIDS_CONTENT = "kids_content"
    BLOCKED_CATEGORY = "blocked_category"
    BLOCKED_ATTRIBUTE = "blocked_attribute"
    """The creative has an AdCOM creative attribute the request blocks (OpenRTB
    ``video.battr``, ``battr`` on ``/vast``): see ``Creative.attributes``."""
    BLOCKED_ADVERTISER = "blocked_advertiser"
    NO_PLAYABLE_MEDIA = "no_playable_media"
    INSECURE_MEDIA = "insecure_media"
    MIME_TYPE = "mime_type"
    """Playable media, but no rendition of a type the request lists (OpenRTB
    ``video.mimes``)."""
    PROTOCOL_NOT_ACCEPTED = "protocol_not_accepted"
    """A third-party tag (a ``<Wrapper>``) for a player whose OpenRTB ``video.protocols``
    lists the VAST version's inline code only, or an inline ad for one listing its wrapper
    code only."""
    VPAID_ON_CTV = "vpaid_on_ctv"
    STREAM_SEPARATION = "stream_separation"
    # delivery control
    FREQUENCY_CAP = "frequency_cap"
    BUDGET_EXHAUSTED = "budget_exhausted"
    PACING_THROTTLE = "pacing_throttle"
    # pricing and ranking
    BELOW_FLOOR = "below_floor"
    OUTRANKED = "outranked"
    """Beyond the per-request candidate limit on price x tier before scoring."""
    # pod building
    DUPLICATE_CREATIVE = "duplicate_creative"
    COMPETITIVE_SEPARATION = "competitive_separation"
    NOT_SELECTED = "not_selected"

    @property
    def stage(self) -> Stage:
        return _STAGE_OF[self]


_STAGE_OF: dict[Reason, Stage] = {
    Reason.INACTIVE: Stage.ELIGIBILITY,
    Reason.OUT_OF_FLIGHT: Stage.ELIGIBILITY,
    Reason.BREAK_POSITION: Stage.ELIGIBILITY,
    Reason.CREATIVE_NOT_APPROVED: Stage.ELIGIBILITY,
    Reason.LONGER_THAN_POD: Stage.ELIGIBILITY,
    Reason.SHORTER_THAN_MIN: Stage.ELIGIBILITY,
    Reason.LONGER_THAN_MAX: Stage.ELIGIBILITY,
    Reason.DURATION_NOT_REQUIRED: Stage.ELIGIBILITY,
    Reason.FITS_NO_SLOT: Stage.ELIGIBILITY,
    Reason.TARGETING: Stage.TARGETING,
    Reason.DAYPART: Stage.TARGETING,
    Reason.CONTENT_RATING: Stage.POLICY,
    Reason.KIDS_CONTENT: Stage.POLICY,
    Reason.BLOCKED_CATEGORY: Stage.POLICY,
    Reason.BLOCKED_ATTRIBUTE: Stage.POLICY,
    Reason.BLOCKED_ADVERTISER: Stage.POLICY,
    Reason.NO_PLAYABLE_MEDIA: Stage.POLICY,
    Reason.INSECURE_MEDIA: Stage.POLICY,
    Reason.MIME_TYPE: Stage.POLICY,
    Reason.PROTOCOL_NOT_ACCEPTED: Stage.POLICY,
    Reason.VPAID_ON_CTV: Stage.POLICY,
    Reason.STREAM_SEPARATION: Stage.POLICY,
    Reason.FREQUENCY_CAP: Stage.FREQUENCY,
    Reason.BUDGET_EXHAUSTED: Stage.PACING,
    Reason.PACING_THROTTLE: Stage.PACING,
    Reason.BELOW_FLOOR: Stage.POLICY,
    Reason.OUTRANKED: Stage.SCORING,
    Reason.DUPLICATE_CREATIVE: Stage.POD,
    Reason.COMPETITIVE_SEPARATION: Stage.POD,
    Reason.NOT_SELECTED: Stage.POD,
}
