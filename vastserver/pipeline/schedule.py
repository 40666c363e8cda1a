"""VMAP break schedule: where the breaks of one piece of content go and how long they are."""

from __future__ import annotations

from dataclasses import dataclass

from vastserver.catalog.model import AdRules, BreakPosition
from vastserver.pipeline.context import DEFAULT_VAST_VERSION, ads_per_break


@dataclass(frozen=True, slots=True)
class PlannedBreak:
    break_id: str
    position: BreakPosition
    offset_s: float | None
    """Seconds into the content; None for pre-roll (``start``) and post-roll (``end``)."""
    duration_s: float
    max_ads: int
    avail: int

    @property
    def time_offset(self) -> str:
        """VMAP ``timeOffset``: ``start``, ``end`` or ``HH:MM:SS.mmm`` (players reject ``%``)."""
        if self.position is BreakPosition.PRE:
            return "start"
        if self.position is BreakPosition.POST or self.offset_s is None:
            return "end"
        return hms(self.offset_s)


def hms(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def plan_breaks(
    rules: AdRules,
    cue_points_s: tuple[float, ...],
    *,
    preroll: bool,
    postroll: bool,
    preroll_duration_s: float | None = None,
    midroll_duration_s: float | None = None,
    postroll_duration_s: float | None = None,
    duration_s: float | None = None,
    max_ads: int | None = None,
    vast_version: str = DEFAULT_VAST_VERSION,
) -> list[PlannedBreak]:
    """Pre-roll, one mid-roll per cue point (sorted, ascending), post-roll; avail = index.

    A break's length is its position's ``*_duration_s``, else ``duration_s``, else the ad
    rules'; its most ads ``max_ads``, else the rules'. Breaks the ad rules disable
    (``max_ads`` 0, or no duration and none given) are left out. A break answered in
    ``vast_version`` holds at most what that version plays: one ad in VAST 2.0
    (:func:`~vastserver.pipeline.context.ads_per_break`), so its ad tag asks for one, as
    ``/vast`` would cut it to anyway."""
    out: list[PlannedBreak] = []

    def add(pos: BreakPosition, offset: float | None, override: float | None, bid: str) -> None:
        rule = rules.for_position(pos)
        length = override if override is not None else duration_s
        if rule.max_ads < 1 or (length is None and rule.duration_s < 1):
            return  # the placement's ad rules disable this break
        out.append(
            PlannedBreak(
                break_id=bid,
                position=pos,
                offset_s=offset,
                duration_s=length if length is not None else float(rule.duration_s),
                max_ads=ads_per_break(rule.max_ads if max_ads is None else max_ads, vast_version),
                avail=len(out),
            )
        )

    if preroll:
        add(BreakPosition.PRE, None, preroll_duration_s, "preroll")
    for n, cue in enumerate(sorted(cue_points_s), start=1):
        add(BreakPosition.MID, cue, midroll_duration_s, f"midroll-{n}")
    if postroll:
        add(BreakPosition.POST, None, postroll_duration_s, "postroll")
    return out
