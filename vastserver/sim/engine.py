"""The discrete-event simulation: sessions, players, stitchers and beacons in simulated time.

One priority queue holds every future action (a session starting, a break being fetched or
played, a beacon arriving), ordered by simulated millisecond and then by insertion. The loop
pops one action, moves the shared :class:`~vastserver.sim.harness.SimClock` to its time
(after running the pacing updates and delivery samples that fall before it) and awaits it:
requests go out one at a time over real HTTP, so a run is a pure function of its seed.

Viewing behaviour comes from the hidden ground truth (:class:`vastserver.ml.truth.ViewerModel`):
whether an ad makes an impression, how far it is watched, clicks. On top of it the simulator
adds what real clients do to an ad server: prefetching (and ``notUsed`` when the viewer left
before the break), viewers leaving mid-pod, lost, duplicated and late beacons, error beacons
with ``[ERRORCODE]`` and the empty response's root ``<Error>``.
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlencode

from vastserver.catalog.model import AdRules, Advertiser, Catalog
from vastserver.delivery import PACING_INTERVAL_S
from vastserver.ml.truth import AdExposure, ViewerModel
from vastserver.pipeline.delivery import local_day
from vastserver.report import pacing_target
from vastserver.sim.config import SimConfig
from vastserver.sim.harness import ADMIN_TOKEN, PUBLIC_URL, Servers, SimClock
from vastserver.sim.records import Pod, ServedAd
from vastserver.sim.vastdoc import (
    DocumentError,
    VastPod,
    VmapBreak,
    parse_vast,
    parse_vmap,
    query_param,
)
from vastserver.sim.world import SessionPlan, World, placement_for
from vastserver.tracking import (
    PARAM_TOKEN,
    AdToken,
    Keyring,
    TokenError,
    expand_macros,
    verify,
)

__all__ = ["Engine", "Sample"]

PACING_INTERVAL_MS = round(PACING_INTERVAL_S * 1000)
"""Every instance updates pacing this often (its own loop's interval), in simulated time."""
STITCHER_UA = "SimStitcher/1.0 (SSAI; +https://ads.sim.invalid)"
FRACTIONS = {"start": 0.0, "firstQuartile": 0.25, "midpoint": 0.5, "thirdQuartile": 0.75,
             "complete": 1.0}  # fmt: skip
EXIT_ON_ABANDONED_AD = 0.7
"""A viewer who stops watching an ad closes the stream (else the player moves on)."""
NO_FILL_CODE = "303"
LOOKAHEAD_BREAKS = 3
"""A look-ahead stitcher fetches the break that is due and the two after it at once (as a
live or VOD SSAI that prepares its manifest ahead); the later ones play after their
5-minute reservation lapsed, so their impressions count as late."""


def _labels(
    catalog: Catalog, adv: Advertiser | None, line_item_id: str, creative_id: str
) -> frozenset[str]:
    """An ad's competitive labels read from the catalog on the simulator's side, not the
    server's: its advertiser's category and its line item's and creative's labels."""
    li = catalog.line_items.get(line_item_id)
    cr = catalog.creatives.get(creative_id)
    labels = {adv.competitive_category} if adv and adv.competitive_category else set()
    labels.update(li.competitive_categories if li else ())
    labels.update(cr.competitive_categories if cr else ())
    return frozenset(labels)


def _hms(ms: int) -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, rem = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{rem:03d}"


@dataclass(slots=True)
class Sample:
    """Delivery of budgeted line items at one moment, as ``/admin/line-items`` reports it."""

    at_ms: int
    delivered: dict[str, int]
    """Impressions counted in the budget's period (today in the campaign's time zone for a
    daily budget, else the flight), from the simulator's replica of the counting rules."""
    server_delivered: dict[str, int]
    """``delivered_impressions`` of ``/admin/line-items`` (a lifetime counter)."""
    server_target: dict[str, float | None]
    throttle: dict[str, float]
    expected_target: dict[str, float | None]
    """``vastserver.report.pacing_target`` (the curve) at this moment."""
    mismatch_between_instances: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FetchedBreak:
    vmap: VmapBreak
    pod: VastPod | None
    pod_index: int | None
    serving_ids: list[str]
    fetched: bool = False
    scheduled: bool = False
    """Its fetch is in the queue (or done)."""


@dataclass(slots=True)
class SessionState:
    plan: SessionPlan
    rng: random.Random
    headers: dict[str, str]
    breaks: list[FetchedBreak] = field(default_factory=list)
    session: str = ""
    next_break: int = 0
    pos_ms: int = 0
    """Sim time at which the content was at ``pos_s``."""
    pos_s: float = 0.0
    ended: bool = False
    lookahead: bool = False
    """A stitcher fetching :data:`LOOKAHEAD_BREAKS` breaks at once."""


Action = Callable[[], Awaitable[None]]


class Engine:
    def __init__(
        self,
        config: SimConfig,
        world: World,
        catalog: Catalog,
        servers: Servers,
        clock: SimClock,
    ) -> None:
        self.cfg = config
        self.world = world
        self.catalog = catalog
        self.servers = servers
        self.clock = clock
        self.keyring = Keyring.from_secrets(list(servers.settings[0].secrets))
        self.max_age_s = servers.settings[0].token_max_age_s
        self.truth = ViewerModel()
        self.queue: list[tuple[int, int, Action]] = []
        self.seq = 0
        self.horizon_ms = int(config.hours * 3_600_000)
        self.pods: list[Pod] = []
        self.ads: dict[str, ServedAd] = {}
        self.stats: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        """``"<event> <status>"`` for every beacon and click sent."""
        self.claimed: set[tuple[str, str]] = set()
        self.settled: set[str] = set()
        self.exposures: dict[str, deque[int]] = {}
        self.samples: list[Sample] = []
        self.anomalies: list[str] = []
        self.last_ms = 0
        self.next_pace = 0
        self.next_sample = 0
        self.counted: Counter[tuple[str, str]] = Counter()
        """(line item, event) -> beacons the server should have counted."""
        self.delivered_by_day: Counter[tuple[str, str]] = Counter()
        """(line item, campaign-local serve day) -> counted impressions."""
        end = clock.at(self.horizon_ms)
        self.budgeted = sorted(
            li.id
            for li in catalog.line_items.values()
            if pacing_target(li, catalog, clock.start) is not None
            and li.status == "active"
            and catalog.campaigns[li.campaign_id].status == "active"
            and li.start < end
            and clock.start < li.end
        )
        """Line items with an impression budget that are live in the window (paced)."""

    # ------------------------------------------------------------------ queue

    def push(self, ms: int, action: Action) -> None:
        """Schedule ``action`` at simulated ``ms`` (never before now: time only moves on)."""
        heapq.heappush(self.queue, (max(ms, self.clock.ms), self.seq, action))
        self.seq += 1

    def anomaly(self, text: str) -> None:
        self.stats["anomalies"] += 1
        if len(self.anomalies) < 50:
            self.anomalies.append(f"t={self.clock.ms / 1000:.1f}s {text}")

    async def run(self) -> None:
        for plan in self.world.sessions:
            self.push(plan.start_ms, self._starter(plan))
        while self.queue:
            ms, _, action = heapq.heappop(self.queue)
            await self._catch_up(ms)
            self.clock.ms = ms
            self.last_ms = ms
            await action()
        end = max(self.last_ms, self.horizon_ms)
        await self._catch_up(end)
        if not self.samples or self.samples[-1].at_ms != end:
            self.clock.ms = end
            await self.sample()

    async def _catch_up(self, until_ms: int) -> None:
        """Run the pacing updates and delivery samples due up to ``until_ms`` in time order
        (a pacing update first when both fall on the same millisecond)."""
        step = self.cfg.sample_every_s * 1000
        sample_until = min(until_ms, self.horizon_ms)
        while True:
            pace_due = self.next_pace <= until_ms
            sample_due = self.next_sample <= sample_until
            if not pace_due and not sample_due:
                return
            if pace_due and (not sample_due or self.next_pace <= self.next_sample):
                self.clock.ms = self.next_pace
                await self.servers.pace()
                self.next_pace += PACING_INTERVAL_MS
            else:
                self.clock.ms = self.next_sample
                await self.sample()
                self.next_sample += step

    # ------------------------------------------------------------------ delivery samples

    async def line_items(self, instance: int) -> list[dict[str, Any]]:
        res = await self.servers.get(
            PUBLIC_URL + "/admin/line-items",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            endpoint="admin",
            instance=instance,
        )
        if res.status != 200:
            self.anomaly(f"/admin/line-items answered {res.status}")
            return []
        doc = json.loads(res.body)
        return doc if isinstance(doc, list) else []

    async def sample(self) -> None:
        now = self.clock()
        rows = {r["id"]: r for r in await self.line_items(0)}
        s = Sample(self.clock.ms, {}, {}, {}, {}, {})
        for li_id in self.budgeted:
            r = rows.get(li_id, {})
            li = self.catalog.line_items[li_id]
            if li.pacing.budget.daily_impressions is not None:
                day = local_day(now, self.catalog.campaigns[li.campaign_id].timezone)
                s.delivered[li_id] = self.delivered_by_day[(li_id, day)]
            else:
                s.delivered[li_id] = self.counted[(li_id, "impression")]
            s.server_delivered[li_id] = int(r.get("delivered_impressions", 0))
            s.server_target[li_id] = r.get("target_now")
            s.throttle[li_id] = float(r.get("throttle", 1.0))
            s.expected_target[li_id] = pacing_target(
                self.catalog.line_items[li_id], self.catalog, now
            )
        for inst in range(1, len(self.servers.instances)):
            other = {r["id"]: r for r in await self.line_items(inst)}
            for li_id, r in rows.items():
                o = other.get(li_id, {})
                for k in ("served", "delivered_impressions", "completes", "spend"):
                    if r.get(k) != o.get(k):
                        s.mismatch_between_instances.append(f"{li_id}.{k}")
        self.samples.append(s)

    # ------------------------------------------------------------------ sessions

    def _starter(self, plan: SessionPlan) -> Action:
        async def start() -> None:
            await self.start_session(plan)

        return start

    def _query(self, plan: SessionPlan) -> dict[str, str]:
        d, c, h = plan.device, plan.content, plan.household
        q: dict[str, str] = {
            "content_duration": str(c.duration_s),
            "device_type": d.device_type,
            "platform": d.platform,
            "genre": ",".join(c.genres),
            "rating": c.rating,
            "live": "1" if c.live else "0",
            "content_id": c.id,
            "channel": c.channel,
            "language": h.language,
        }
        if c.live:
            q["midroll_interval"] = str(self._rules(plan).midroll_interval_s)
        else:
            interval = self._rules(plan).midroll_interval_s
            rng = random.Random(f"{plan.rng_seed}:cues")
            cues: list[int] = []
            t = interval * rng.uniform(0.8, 1.1)
            while t < c.duration_s - 120:
                cues.append(int(t))
                t += interval * rng.uniform(0.8, 1.2)
            if cues:
                q["cue_points"] = ",".join(str(x) for x in cues)
        if c.series:
            q["series"] = c.series
        if c.kids:
            q["kids"] = "1"
        if d.lmt:
            q["lmt"] = "1"
        elif d.ifa:
            q["device_id"] = d.ifa
            if d.ifa_type:
                q["ifa_type"] = d.ifa_type
        if h.segments:
            q["segments"] = ",".join(h.segments)
        for k, v in c.key_values:
            q[f"kv_{k}"] = v
        placement = placement_for(self.catalog, c)
        if placement:
            q["placement"] = placement
        return q

    def _rules(self, plan: SessionPlan) -> AdRules:
        return self.catalog.rules_for(placement_for(self.catalog, plan.content))

    async def start_session(self, plan: SessionPlan) -> None:
        rng = random.Random(plan.rng_seed)
        h, d = plan.household, plan.device
        if plan.ssai:
            headers = {
                "User-Agent": STITCHER_UA,
                "X-Device-IP": h.ip,
                "X-Device-User-Agent": d.user_agent,
            }
        else:
            headers = {"User-Agent": d.user_agent, "X-Forwarded-For": h.ip}
        # Drawn from a stream of its own, so the session's other draws stay as they were.
        lookahead = plan.ssai and (
            random.Random(f"{plan.rng_seed}:lookahead").random() < self.cfg.lookahead_share
        )
        s = SessionState(plan=plan, rng=rng, headers=headers, lookahead=lookahead)
        self.stats["sessions_lookahead"] += lookahead
        q = self._query(plan)
        if plan.ssai:
            # Stitchers name their own sessions; players take the one the VMAP carries.
            q["session"] = f"ssai-{rng.getrandbits(64):016x}"
        self.stats["sessions"] += 1
        self.stats["sessions_ssai" if plan.ssai else "sessions_player"] += 1
        res = await self.servers.get(
            f"{PUBLIC_URL}/vmap?{urlencode(q)}", headers=headers, endpoint="vmap"
        )
        if res.status != 200:
            self.anomaly(f"/vmap answered {res.status}: {res.body[:200]}")
            return
        try:
            breaks = parse_vmap(res.body)
        except DocumentError as e:
            self.anomaly(f"bad VMAP: {e}")
            return
        s.breaks = [FetchedBreak(b, None, None, []) for b in breaks]
        s.session = (query_param(breaks[0].tag_url, "session") or "") if breaks else ""
        s.pos_ms = self.clock.ms + 800  # the player starts (pre-roll or content) in a moment
        s.pos_s = 0.0
        self.advance(s)

    def _offset_s(self, s: SessionState, b: VmapBreak) -> float:
        if b.time_offset == "start":
            return 0.0
        if b.time_offset == "end":
            return float(s.plan.content.duration_s)
        return b.offset_s or 0.0

    def advance(self, s: SessionState) -> None:
        """Schedule what happens next: the next break (fetch, then play) or leaving."""
        content = s.plan.content
        leave_at_s = s.plan.watch_fraction * content.duration_s
        if s.next_break >= len(s.breaks):
            s.ended = True
            return
        fb = s.breaks[s.next_break]
        c = self._offset_s(s, fb.vmap)
        play_ms = s.pos_ms + int((c - s.pos_s) * 1000)
        if s.plan.ssai:
            lead = 500 if c == 0 else int(s.rng.uniform(5_000, 90_000))
        else:
            lead = 300 if c == 0 else int(s.rng.uniform(300, 8_000))
        fetch_ms = max(self.clock.ms + 1, play_ms - lead)
        i = s.next_break
        if c > leave_at_s or (fb.vmap.time_offset == "end" and s.plan.watch_fraction < 1.0):
            leave_ms = s.pos_ms + int(max(0.0, leave_at_s - s.pos_s) * 1000)
            if fetch_ms < leave_ms:
                self._schedule_fetch(s, i, fetch_ms)
            if any(b.scheduled for b in s.breaks[i:]):
                self.push(leave_ms, self._abandoner(s, i))
            else:
                s.ended = True
            return
        self._schedule_fetch(s, i, fetch_ms)
        self.push(max(play_ms, fetch_ms + 1), self._player(s, i))

    def _schedule_fetch(self, s: SessionState, i: int, fetch_ms: int) -> None:
        """Fetch break ``i`` at ``fetch_ms`` unless it is fetched already; a look-ahead
        stitcher fetches the breaks after it at the same moment."""
        last = i + (LOOKAHEAD_BREAKS if s.lookahead else 1)
        for j in range(i, min(last, len(s.breaks))):
            if not s.breaks[j].scheduled:
                s.breaks[j].scheduled = True
                self.push(fetch_ms, self._fetcher(s, j))

    def _fetcher(self, s: SessionState, i: int) -> Action:
        async def go() -> None:
            await self.fetch_break(s, i)

        return go

    def _player(self, s: SessionState, i: int) -> Action:
        async def go() -> None:
            await self.play_break(s, i)

        return go

    def _abandoner(self, s: SessionState, i: int) -> Action:
        async def go() -> None:
            self.abandon(s, i, self.clock.ms)

        return go

    # ------------------------------------------------------------------ fetching

    def _token(self, url: str, event: str) -> AdToken | None:
        raw = query_param(url, PARAM_TOKEN)
        if raw is None:
            return None
        try:
            now = int(self.clock().timestamp())
            return verify(raw, self.keyring, now, self.max_age_s, event)
        except TokenError as e:
            self.anomaly(f"served a token that does not verify: {e}")
            return None

    async def fetch_break(self, s: SessionState, i: int) -> None:
        fb = s.breaks[i]
        fb.fetched = True
        res = await self.servers.get(fb.vmap.tag_url, headers=s.headers, endpoint="vast")
        self.stats["vast_requests"] += 1
        if res.status != 200:
            self.anomaly(f"/vast answered {res.status}: {res.body[:200]}")
            return
        try:
            pod = parse_vast(res.body)
        except DocumentError as e:
            self.anomaly(f"bad VAST: {e}")
            return
        fb.pod = pod
        tag = fb.vmap.tag_url
        requested_ms = int(float(query_param(tag, "pod_duration") or 0) * 1000)
        record = Pod(
            index=len(self.pods),
            session_plan=s.plan.index,
            session=query_param(tag, "session") or s.session,
            avail=int(query_param(tag, "avail") or 0),
            position=query_param(tag, "break") or "mid",
            requested_ms=requested_ms,
            filled_ms=sum(a.duration_ms for a in pod.ads),
            served_ms=self.clock.ms,
            ssai=s.plan.ssai,
        )
        self.pods.append(record)
        fb.pod_index = record.index
        self.stats["pods"] += 1
        self.stats["pods_filled"] += bool(pod.ads)
        self.stats["pod_ms_requested"] += requested_ms
        self.stats["pod_ms_filled"] += record.filled_ms
        if record.filled_ms > requested_ms:
            self.anomaly(f"pod of {record.filled_ms} ms for a {requested_ms} ms break")
        for ad in pod.ads:
            tok = self._token(ad.impression_url, "impression")
            if tok is None:
                continue
            if tok.creative_id != ad.creative_id:
                self.anomaly(f"token creative {tok.creative_id} != Creative@id {ad.creative_id}")
            if tok.session != record.session:
                # Caps and separation are keyed on the session the client sent: a server
                # that keys the ad on another one escapes its session caps.
                self.stats["token_session_mismatches"] += 1
                self.anomaly(f"token session {tok.session!r} != the request's {record.session!r}")
            camp = self.catalog.campaigns.get(tok.campaign_id)
            adv = self.catalog.advertisers.get(camp.advertiser_id if camp else "")
            served = ServedAd(
                serving_id=tok.ad_serving_id,
                pod=record.index,
                slot=ad.sequence,
                line_item=tok.line_item_id,
                creative=tok.creative_id,
                campaign=tok.campaign_id,
                advertiser=tok.advertiser_id,
                labels=_labels(self.catalog, adv, tok.line_item_id, tok.creative_id),
                price_micros=tok.price_micros,
                served_ms=self.clock.ms,
                duration_ms=ad.duration_ms,
                session=record.session,
                viewer_key=s.plan.device.viewer_key(s.plan.household.ip, record.session),
                viewer_hash=tok.viewer_hash,
                lmt=tok.lmt,
            )
            if served.serving_id in self.ads:
                self.anomaly(f"ad serving id {served.serving_id} served twice")
            self.ads[served.serving_id] = served
            record.ads.append(served.serving_id)
            fb.serving_ids.append(served.serving_id)
            self.stats["ads_served"] += 1
        if not pod.ads:
            self.stats["no_fill"] += 1
            if pod.error_url and s.rng.random() < self.cfg.faults.no_fill_error:
                self.beacon(s, "error", None, pod.error_url, self.clock.ms, error_code=NO_FILL_CODE)
                vmap_error = fb.vmap.tracking.get("error")
                if vmap_error and not s.plan.ssai:
                    # VMAP 1.0 error 1009: "empty VAST response" for the break.
                    self.beacon(s, "error", None, vmap_error, self.clock.ms, error_code="1009")

    # ------------------------------------------------------------------ playing

    def _recent(self, device: str, at_ms: int) -> int:
        seen = self.exposures.setdefault(device, deque())
        while seen and seen[0] <= at_ms - 86_400_000:
            seen.popleft()
        return sum(1 for t in seen if t < at_ms)

    async def play_break(self, s: SessionState, i: int) -> None:
        fb = s.breaks[i]
        t = self.clock.ms
        c = self._offset_s(s, fb.vmap)
        if not s.plan.ssai and "breakStart" in fb.vmap.tracking:
            self.beacon(s, "breakStart", None, fb.vmap.tracking["breakStart"], t)
        t += 200
        pod = fb.pod
        if pod is not None and fb.pod_index is not None:
            self.pods[fb.pod_index].played = True
        ads = list(pod.ads) if pod is not None else []
        plan = s.plan
        position = self.pods[fb.pod_index].position if fb.pod_index is not None else "mid"
        for n, ad in enumerate(ads):
            sid = fb.serving_ids[n] if n < len(fb.serving_ids) else None
            served = self.ads.get(sid) if sid else None
            x = AdExposure(
                device_type=plan.device.device_type,
                genres=plan.content.genres,
                live=plan.content.live,
                break_position=position,
                slot=ad.sequence,
                pod_size=len(ads),
                creative_id=ad.creative_id,
                creative_duration_ms=ad.duration_ms,
                recent_exposures=self._recent(plan.device.key, t),
                hour_utc=self.clock.at(t).astimezone(UTC).hour,
            )
            # Common random numbers: the viewer's response to the ad in this slot of this
            # break draws from its own stream, so two runs of a seed that put different ads
            # there (model vs price) differ by the ads, not by the luck of the draw.
            ad_rng = random.Random(f"{plan.rng_seed}:ad:{i}:{n}")
            o = self.truth.simulate(x, ad_rng)
            self.stats["ads_attempted"] += 1
            if not o.impression:
                if o.failure == "error" and ad.error_url:
                    self.stats["ads_failed_error"] += 1
                    at = t + int(s.rng.uniform(200, 2000))
                    self.beacon(s, "error", sid, ad.error_url, at, error_code=str(o.error_code))
                elif o.failure == "notUsed":
                    self.stats["ads_failed_not_used"] += 1
                    self.beacon(s, "notUsed", sid, self._not_used_url(ad.impression_url), t)
                else:
                    self.stats["ads_failed_silent"] += 1
                t += 500
                continue
            self.stats["impressions_true"] += 1
            self.exposures.setdefault(plan.device.key, deque()).append(t)
            if served is not None:
                served.played_ms = t
                served.complete = o.complete
                served.p_complete = self.truth.params.start_rate * self.truth.p_complete(x)
            self.beacon(s, "impression", sid, ad.impression_url, t + int(s.rng.uniform(50, 400)))
            for ev in o.progress:
                url = ad.tracking.get(ev)
                if url:
                    at = t + int(FRACTIONS[ev] * ad.duration_ms) + int(s.rng.uniform(20, 300))
                    self.beacon(
                        s, ev, sid, url, at, playhead_ms=int(FRACTIONS[ev] * ad.duration_ms)
                    )
            if o.click and ad.click_url and not plan.ssai:
                at = t + int(max(0.1, o.watched_fraction) * ad.duration_ms * 0.5)
                self.beacon(s, "click", sid, ad.click_url, at)
            if o.complete:
                self.stats["completes_true"] += 1
                t += ad.duration_ms + 100
                continue
            t += int(o.watched_fraction * ad.duration_ms)
            if ad_rng.random() < EXIT_ON_ABANDONED_AD:  # the viewer's, from the slot's stream
                self.stats["sessions_left_during_ad"] += 1
                rest = fb.serving_ids[n + 1 :]
                self._not_used(s, [a.impression_url for a in ads[n + 1 :]], rest, t, ssai_only=True)
                s.ended = True
                self._prefetched_unplayed(s, i + 1, t)
                return
            t += 300
        if not plan.ssai and "breakEnd" in fb.vmap.tracking:
            self.beacon(s, "breakEnd", None, fb.vmap.tracking["breakEnd"], t)
        s.pos_ms = t + 200
        s.pos_s = c
        s.next_break = i + 1
        self.advance(s)

    def abandon(self, s: SessionState, i: int, at_ms: int) -> None:
        """The viewer left before break ``i`` played: its prefetched ads were never used
        (nor those of the breaks a look-ahead stitcher fetched after it)."""
        s.ended = True
        self.stats["sessions_left_before_break"] += 1
        self._prefetched_unplayed(s, i, at_ms)

    def _prefetched_unplayed(self, s: SessionState, first: int, at_ms: int) -> None:
        """The session ended: the pods fetched for breaks from ``first`` on never play."""
        for fb in s.breaks[first:]:
            if fb.pod is None or not fb.pod.ads:
                continue
            self.stats["pods_prefetched_unplayed"] += 1
            self._not_used(s, [a.impression_url for a in fb.pod.ads], fb.serving_ids, at_ms)

    def _not_used(
        self,
        s: SessionState,
        urls: list[str],
        sids: list[str],
        at_ms: int,
        *,
        ssai_only: bool = False,
    ) -> None:
        if ssai_only and not s.plan.ssai:
            return  # a player that was closed says nothing
        p = self.cfg.faults.not_used_ssai if s.plan.ssai else self.cfg.faults.not_used_player
        for url, sid in zip(urls, sids, strict=False):
            self.stats["ads_unplayed"] += 1
            if s.rng.random() < p:
                self.beacon(s, "notUsed", sid, self._not_used_url(url), at_ms + 100)

    @staticmethod
    def _not_used_url(impression_url: str) -> str:
        """The server accepts ``/t/notUsed`` with the ad's token but does not emit the URL
        (the IAB XSD rejects the event): build it from the impression URL."""
        return impression_url.replace("/t/impression?", "/t/notUsed?", 1)

    # ------------------------------------------------------------------ beacons

    def beacon(
        self,
        s: SessionState,
        event: str,
        sid: str | None,
        url: str,
        at_ms: int,
        *,
        error_code: str | None = None,
        playhead_ms: int | None = None,
    ) -> None:
        """Fire one beacon at ``at_ms`` through the fault model (lost, late, duplicated)."""
        f = self.cfg.faults
        rng = s.rng
        macros = {
            "CACHEBUSTING": f"{rng.randrange(10**8):08d}",
            "TIMESTAMP": self.clock.at(at_ms).isoformat(timespec="milliseconds"),
            "ADPLAYHEAD": _hms(playhead_ms or 0),
        }
        if error_code is not None:
            macros["ERRORCODE"] = error_code
        full = expand_macros(url, macros)
        self.stats["beacons_fired"] += 1
        if rng.random() < f.lost:
            self.stats["beacons_lost"] += 1
            return
        send_ms = at_ms
        if s.plan.ssai:
            send_ms += int(rng.uniform(500, 5000))  # stitchers report from the CDN logs
        if rng.random() < f.late:
            self.stats["beacons_late"] += 1
            send_ms += int(rng.uniform(f.late_min_s, f.late_max_s) * 1000)
        headers = {"User-Agent": s.headers["User-Agent"]}
        if s.plan.ssai:
            headers["X-Device-IP"] = s.plan.household.ip
            headers["X-Device-User-Agent"] = s.plan.device.user_agent
        else:
            headers["X-Forwarded-For"] = s.plan.household.ip
        self.push(send_ms, self._sender(event, sid, full, headers))
        if rng.random() < f.duplicate:
            self.stats["beacons_duplicated"] += 1
            self.push(
                send_ms + int(rng.uniform(1000, 30_000)), self._sender(event, sid, full, headers)
            )

    def _sender(self, event: str, sid: str | None, url: str, headers: dict[str, str]) -> Action:
        async def go() -> None:
            await self.send(event, sid, url, headers)

        return go

    async def send(self, event: str, sid: str | None, url: str, headers: dict[str, str]) -> None:
        endpoint = "click" if event == "click" else "beacon"
        res = await self.servers.get(url, headers=headers, endpoint=endpoint, read_body=False)
        self.statuses[f"{event} {res.status}"] += 1
        self.stats["beacons_sent"] += 1
        expected = 302 if event == "click" else 204
        if res.status != expected:
            self.anomaly(f"{event} beacon answered {res.status}")
            return
        if sid is None:
            return
        # Replica of the server's counting rules (``DeliveryControl.on_beacon``): each
        # (ad, event) counts once; impression and notUsed settle an ad, the first one wins.
        key = (sid, event)
        if key in self.claimed:
            self.stats["replays_sent"] += 1
            return
        self.claimed.add(key)
        if event in ("impression", "notUsed"):
            if sid in self.settled:
                self.stats["settle_conflicts"] += 1
                return
            self.settled.add(sid)
        self.stats[f"counted_{event}"] += 1
        ad = self.ads.get(sid)
        if ad is None:
            return
        self.counted[(ad.line_item, event)] += 1
        if event == "notUsed":
            ad.not_used_arrival_ms = self.clock.ms
        if event == "impression":
            ad.impression_arrival_ms = self.clock.ms
            tz = self.catalog.campaigns[ad.campaign].timezone
            day = local_day(self.clock.at(ad.served_ms), tz)
            self.delivered_by_day[(ad.line_item, day)] += 1
