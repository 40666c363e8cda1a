"""``vastserver gen-events``: a synthetic event log produced by the real decision path.

Simulates CTV viewing sessions on a simulated clock and runs every ad break through the real
in-process :class:`~vastserver.service.AdService` (``MemoryStore``, ``DeliveryControl``,
pacing and completion-rate refreshes), writing to a real :class:`~vastserver.eventlog.EventLog`
in ``--out``. Each served ad's fate is drawn from the hidden viewer model
(:mod:`vastserver.ml.truth`) and its beacons (``impression``, ``start``, quartiles,
``complete``, ``click``, ``error``, ``notUsed``, a few replays) go through
``DeliveryControl.on_beacon`` and are logged the way the HTTP beacon handler logs them, so the
log is the server's format: decision records from ``AdService.decide`` and beacon
records from ``records.beacon_record`` -- except that decisions leave out the history inputs
each ad was scored with (``completion_rate``, ``viewer_exposures``), so training rebuilds them
from the log, which here starts with the store; that keeps the demo bundle reproducible.

Sessions: a viewer (device type, platform, geo, language, segments, a few with limit-ad-
tracking) from a pool with skewed activity watches one piece of content (genres, rating, live,
series, channel) from a library with skewed popularity; session starts follow a diurnal curve
(US evening peak in UTC). A session plays a pre-roll, mid-rolls every ``midroll_interval`` of
its placement's ad rules, and a post-roll if the viewer stays to the end (viewers leave
between breaks now and then). Break durations and ad counts come from the catalog's ad rules
(``kids_app``/``kids`` and ``live_sports`` placements when the catalog has them).

Ranking: by default an **exploration scorer** (:class:`ExplorationScorer`: a random
prediction in [0.25, 1) per candidate) so that training data covers more line items and
creatives in more contexts than a pure price ranking would (with :class:`PriceScorer` the same
highest-priced line item wins every break it is eligible for). Tiers still dominate, as in
production. ``--scorer price`` uses the production default.

Determinism: everything random is drawn from generators seeded from ``--seed`` (string
seeds, independent of ``PYTHONHASHSEED``), the tracking secret is fixed, and every clock --
the service's, the store's TTL clock and the event log's ``ts`` -- is the simulated clock. Two
runs with the same arguments write records with identical content; only segment file names
carry the writing process's pid.

The demo model bundle is built with::

    vastserver gen-events --out /tmp/demo-events --seed 7 \\
        --catalog fixtures/demo-catalog.json --sessions 3000 --days 3 \\
        --start 2026-11-02T00:00:00+00:00 \\
      && vastserver train --events /tmp/demo-events --out fixtures/demo-model --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vastserver.catalog.gen import (
    CHANNELS,
    DMAS,
    GENRES,
    REGIONS,
    SEGMENTS,
    SERIES,
    generate_catalog,
)
from vastserver.catalog.load import CatalogError, load_catalog, parse_catalog
from vastserver.catalog.model import AdRules, BreakPosition, Catalog
from vastserver.cliargs import (
    HelpWithDefaults,
    at_least_an_hour,
    iso_datetime,
    positive_float,
    positive_int,
)
from vastserver.delivery import DeliveryControl
from vastserver.eventlog import EventLog, new_log_problem
from vastserver.metrics import Metrics
from vastserver.ml.truth import AdExposure, Outcome, ViewerModel
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest, BreakSpec, Content, Device, SimClock
from vastserver.pipeline.decide import Decision
from vastserver.pipeline.scoring import PriceScorer, Scorer, ScoringContext
from vastserver.records import beacon_record
from vastserver.service import AdService, build_snapshot
from vastserver.store.memory import MemoryStore
from vastserver.tracking import AdToken, Keyring

__all__ = [
    "DEFAULT_START",
    "ExplorationScorer",
    "SimClock",
    "SynthConfig",
    "SynthStats",
    "generate_events",
    "main_gen_events",
]

DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "fixtures" / "demo-catalog.json"
DEFAULT_START = datetime(2026, 11, 2, tzinfo=UTC)
DEFAULT_SESSIONS = 3000
SECRET = "synthetic-event-log-secret-0123456789"
"""Fixed tracking secret: viewer hashes are stable across runs (never use it to serve)."""
TOKEN_MAX_AGE_S = 24 * 3600

DIURNAL_UTC: tuple[int, ...] = (
    10, 9, 8, 7, 5, 3, 2, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 4, 4, 5, 6, 8, 9,
)  # fmt: skip
"""Session starts per UTC hour (US evening = 00-04 UTC)."""

DEVICE_MIX: tuple[tuple[str | None, int], ...] = (
    ("ctv", 62), ("stb", 12), ("mobile", 14), ("desktop", 8), (None, 4),
)  # fmt: skip
CTV_PLATFORMS = ("roku", "firetv", "tvos", "androidtv", "tizen", "webos", "vizio")
GENRE_WEIGHTS: dict[str, int] = {
    "drama": 12, "comedy": 12, "news": 9, "sports": 12, "kids": 8, "documentary": 5,
    "reality": 8, "movies": 10, "animation": 5, "lifestyle": 5, "crime": 8, "scifi": 6,
}  # fmt: skip
LEAGUES = ("nfl", "nba", "mlb", "nhl")


# ------------------------------------------------------------------------------- pieces


class ExplorationScorer:
    """Random predictions in [0.25, 1): varied pods for training data (never for serving)."""

    name = "explore"
    version = "explore-v1"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        r = self.rng.random
        return [0.25 + 0.75 * r() for _ in cands]


@dataclass(frozen=True, slots=True)
class SynthConfig:
    seed: int
    sessions: int = DEFAULT_SESSIONS
    days: float = 3.0
    start: datetime = DEFAULT_START
    scorer: str = "explore"
    """``explore`` (:class:`ExplorationScorer`) or ``price`` (:class:`PriceScorer`)."""
    pacing_interval_s: float = 60.0
    """How often the simulated delivery loop refreshes pacing and completion rates."""


@dataclass(slots=True)
class SynthStats:
    sessions: int = 0
    decisions: int = 0
    ads: int = 0
    impressions: int = 0
    completes: int = 0
    clicks: int = 0
    beacons: int = 0
    first: str = ""
    last: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "decisions": self.decisions,
            "ads": self.ads,
            "impressions": self.impressions,
            "completes": self.completes,
            "clicks": self.clicks,
            "beacons": self.beacons,
            "first": self.first,
            "last": self.last,
        }


@dataclass(frozen=True, slots=True)
class Viewer:
    device: Device
    segments: tuple[str, ...]
    key: str
    """What the truth model tracks exposures by (the real viewer, lmt or not)."""


@dataclass(frozen=True, slots=True)
class Show:
    content: Content
    key_values: tuple[tuple[str, str], ...]
    minutes: int


@dataclass(slots=True)
class Session:
    viewer: Viewer
    show: Show
    session_id: str
    placement: str | None
    rules: AdRules
    mids_left: int
    avail: int = 0
    breaks: int = 0


@dataclass(frozen=True, slots=True)
class Beacon:
    event: str
    token: AdToken
    caller_ip: str | None
    error_code: int | None = None


@dataclass(slots=True)
class _Queue:
    heap: list[tuple[int, int, Any]] = field(default_factory=list)
    seq: int = 0

    def push(self, ms: int, item: Any) -> None:
        heapq.heappush(self.heap, (ms, self.seq, item))
        self.seq += 1

    def pop(self) -> tuple[int, Any]:
        ms, _, item = heapq.heappop(self.heap)
        return ms, item


def _weighted(rng: random.Random, pairs: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def make_viewers(rng: random.Random, n: int) -> list[Viewer]:
    out: list[Viewer] = []
    for i in range(n):
        dt: str | None = _weighted(rng, DEVICE_MIX)
        platform: str | None
        if dt == "ctv":
            platform = rng.choice(CTV_PLATFORMS)
        elif dt == "stb":
            platform = rng.choice(("roku", "androidtv", None))
        elif dt == "desktop":
            platform = "web"
        else:
            platform = None
        r = rng.random()
        country, region, dma, language = "US", None, None, "en"
        if r < 0.84:
            region = rng.choice([x for x in REGIONS if x.startswith("US-")])
            dma = rng.choice(DMAS)
            language = "es" if rng.random() < 0.12 else "en"
        elif r < 0.91:
            country = "CA"
            region = rng.choice(("CA-ON", "CA-QC"))
            language = "fr" if region == "CA-QC" and rng.random() < 0.6 else "en"
        else:
            country = rng.choice(("GB", "AU", "DE", "MX"))
            language = {"DE": "de", "MX": "es"}.get(country, "en")
        lmt = rng.random() < 0.04
        has_ifa = dt in ("ctv", "stb", "mobile") and rng.random() < 0.9
        ip = f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        device = Device(
            ip=ip,
            user_agent=f"SynthPlayer/{platform or dt or 'unknown'} {i}",
            ifa=_uuid(rng) if has_ifa else None,
            ifa_type=("rida" if platform == "roku" else "aaid") if has_ifa else None,
            lmt=lmt,
            device_type=dt,
            platform=platform,
            country=country,
            region=region,
            dma=dma,
            language=language,
        )
        segments = tuple(sorted(rng.sample(SEGMENTS, rng.choice((0, 1, 1, 2, 3)))))
        out.append(Viewer(device, segments, f"viewer-{i}"))
    return out


def make_shows(rng: random.Random, n: int) -> list[Show]:
    genres_w = list(GENRE_WEIGHTS.items())
    out: list[Show] = []
    for i in range(n):
        genre: str = _weighted(rng, genres_w)
        genres = [genre]
        if rng.random() < 0.3:
            other = rng.choice(GENRES)
            if other != genre:
                genres.append(other)
        kids = genre in ("kids", "animation") and rng.random() < 0.8
        rating: str | None
        if kids:
            rating = rng.choice(("TV-Y", "TV-Y7", "TV-G"))
        else:
            rating = rng.choice(("TV-G", "TV-PG", "TV-PG", "TV-14", "TV-14", "TV-MA"))
        if rng.random() < 0.08:
            rating = None
        live: bool | None = genre in ("sports", "news") and rng.random() < 0.6
        if rng.random() < 0.08:
            live = None
        kv: tuple[tuple[str, str], ...] = ()
        if genre == "sports" and live:
            kv = (("league", rng.choice(LEAGUES)),)
        channel = {
            "news": "ch-news-24", "sports": "ch-sports-1", "movies": "ch-movies",
            "kids": "ch-kids", "animation": "ch-kids", "comedy": "ch-comedy",
            "crime": "ch-true-crime",
        }.get(genre, rng.choice(CHANNELS))  # fmt: skip
        series = rng.choice(SERIES) if rng.random() < 0.7 else None
        minutes = rng.choice((120, 150, 180)) if live else rng.choice((22, 30, 44, 60, 95, 115))
        content = Content(
            id=f"ep-{i + 1:06d}",
            genres=tuple(genres),
            rating=rating,
            live=live,
            series=series,
            channel=channel,
            kids=kids,
        )
        out.append(Show(content, kv, minutes))
    return out


def _placement(catalog: Catalog, show: Show) -> str | None:
    c = show.content
    names = catalog.ad_rules
    if c.kids:
        for name in ("kids_app", "kids"):
            if name in names:
                return name
    if c.live and "sports" in c.genres and "live_sports" in names:
        return "live_sports"
    return None


# ------------------------------------------------------------------------------ simulation


class Simulator:
    def __init__(
        self, catalog: Catalog, log: EventLog, config: SynthConfig, clock: SimClock
    ) -> None:
        seed = config.seed
        self.config = config
        self.log = log
        self.clock = clock
        self.rng = random.Random(f"synth:{seed}:world")
        self.truth_rng = random.Random(f"synth:{seed}:truth")
        service_rng = random.Random(f"synth:{seed}:service")
        delivery_rng = random.Random(f"synth:{seed}:delivery")
        scorer: Scorer = (
            ExplorationScorer(random.Random(f"synth:{seed}:scorer"))
            if config.scorer == "explore"
            else PriceScorer()
        )
        self.store = MemoryStore(clock=self.clock.ts)
        self.delivery = DeliveryControl(
            self.store, clock=self.clock, rng=delivery_rng, token_max_age_s=TOKEN_MAX_AGE_S
        )
        self.service = AdService(
            build_snapshot(catalog, "<synthetic>", self.clock()),
            clock=self.clock,
            metrics=Metrics(),
            keyring=Keyring.from_secrets([SECRET]),
            delivery=self.delivery,
            rng=service_rng,
            scorer=scorer,
            events=log,
            # Without the scored ads' history inputs, training rebuilds them from this
            # complete log, as the demo bundle (fixtures/demo-model) was built: logging them
            # would change that bundle (the served completion rates lag the log's).
            log_scoring_inputs=False,
        )
        self.truth = ViewerModel()
        self.queue = _Queue()
        self.stats = SynthStats()
        self.true_impressions: dict[str, deque[int]] = {}

    def _schedule_sessions(self) -> None:
        cfg, rng = self.config, self.rng
        viewers = make_viewers(rng, max(1, cfg.sessions // 3))
        shows = make_shows(rng, 80)
        viewer_cum = _cumulative([rng.paretovariate(1.3) for _ in viewers])
        show_cum = _cumulative([1.0 / (k + 1) ** 0.8 for k in range(len(shows))])
        rng.shuffle(shows)
        total_days = max(1, int(cfg.days + 0.999999))
        horizon_ms = int(cfg.days * 86400 * 1000)
        catalog = self.service.snapshot.catalog
        for _ in range(cfg.sessions):
            while True:
                day = rng.randrange(total_days)
                hour = rng.choices(range(24), weights=DIURNAL_UTC)[0]
                ms = ((day * 24 + hour) * 3600 + rng.randrange(3600)) * 1000
                if ms < horizon_ms:
                    break
            viewer = rng.choices(viewers, cum_weights=viewer_cum)[0]
            show = rng.choices(shows, cum_weights=show_cum)[0]
            placement = _placement(catalog, show)
            rules = catalog.rules_for(placement)
            mids = min(6, (show.minutes * 60) // max(60, rules.midroll_interval_s))
            session = Session(viewer, show, _uuid(rng), placement, rules, mids)
            self.queue.push(ms, session)

    async def run(self) -> SynthStats:
        self._schedule_sessions()
        interval_ms = max(1, int(self.config.pacing_interval_s * 1000))
        next_pacing = 0
        catalog = self.service.snapshot.catalog
        q = self.queue
        while q.heap:
            ms, item = q.pop()
            self.clock.ms = ms
            if ms >= next_pacing:
                await self.delivery.update_pacing(catalog)
                await self.delivery.update_rates(catalog)
                next_pacing = ms + interval_ms
            if isinstance(item, Session):
                await self._break(ms, item)
            else:
                await self._beacon(item)
        return self.stats

    async def _break(self, ms: int, s: Session) -> None:
        if s.breaks == 0:
            self.stats.sessions += 1
            position = BreakPosition.PRE
        elif s.mids_left > 0:
            position = BreakPosition.MID
            s.mids_left -= 1
        else:
            position = BreakPosition.POST
        rule = s.rules.for_position(position)
        v, show = s.viewer, s.show
        req = AdRequest(
            brk=BreakSpec(
                position=position,
                pod_duration_ms=rule.duration_s * 1000,
                max_ads=rule.max_ads,
                avail=s.avail,
            ),
            device=v.device,
            content=show.content,
            session=s.session_id,
            placement=s.placement,
            segments=v.segments,
            key_values=dict(show.key_values),
        )
        d = await self.service.decide(req, request_id=f"synth-{self.queue.seq}")
        self.stats.decisions += 1
        if not self.stats.first:
            self.stats.first = d.now.isoformat()
        self.stats.last = d.now.isoformat()
        offset = ms + 500
        for ad in d.ads:
            self._play(d, ad.slot, ad.candidate, ad.ad_serving_id, ad.price_cpm, offset, v)
            offset += ad.candidate.creative.duration_ms
        s.breaks += 1
        s.avail += 1
        # Next break: after the ads and a stretch of content, unless the viewer leaves.
        if position is BreakPosition.POST:
            return
        if self.rng.random() < 0.06 + 0.025 * s.breaks:
            return
        if s.mids_left == 0 and position is BreakPosition.MID:
            gap_s = self.rng.uniform(120, 600)
        elif s.mids_left == 0 and position is BreakPosition.PRE:
            gap_s = s.show.minutes * 60.0
        else:
            gap_s = s.rules.midroll_interval_s * self.rng.uniform(0.85, 1.15)
        self.queue.push(offset + int(gap_s * 1000), s)

    def _play(
        self,
        d: Decision,
        slot: int,
        cand: Candidate,
        serving_id: str,
        price_cpm: float,
        start_ms: int,
        viewer: Viewer,
    ) -> None:
        self.stats.ads += 1
        req = d.request
        token = AdToken(
            ad_serving_id=serving_id,
            line_item_id=cand.line_item.id,
            creative_id=cand.creative.id,
            campaign_id=cand.campaign.id,
            advertiser_id=cand.advertiser.id,
            viewer_hash=d.viewer_hash,
            price_micros=round(price_cpm * 1_000_000),
            served_at=int(d.now.timestamp()),
            pod_position=slot,
            session=req.session or "",
            click_url=cand.creative.click_through or "",
            lmt=req.device.lmt,
        )
        seen = self.true_impressions.setdefault(viewer.key, deque())
        day_ago = start_ms - 86_400_000
        while seen and seen[0] <= day_ago:
            seen.popleft()
        hour = (self.clock.start + timedelta(milliseconds=start_ms)).astimezone(UTC).hour
        x = AdExposure(
            device_type=req.device.device_type,
            genres=req.content.genres,
            live=bool(req.content.live),
            break_position=req.brk.position.value,
            slot=slot,
            pod_size=len(d.ads),
            creative_id=cand.creative.id,
            creative_duration_ms=cand.creative.duration_ms,
            recent_exposures=sum(1 for t in seen if t < start_ms),
            hour_utc=hour,
        )
        outcome = self.truth.simulate(x, self.truth_rng)
        self._schedule_beacons(outcome, token, start_ms, cand.creative.duration_ms, req)
        if outcome.impression:
            seen.append(start_ms)

    def _schedule_beacons(
        self, o: Outcome, token: AdToken, start_ms: int, duration_ms: int, req: AdRequest
    ) -> None:
        rng, push = self.rng, self.queue.push
        ip = req.device.ip
        if not o.impression:
            if o.failure == "error":
                push(start_ms + rng.randrange(200, 3000), Beacon("error", token, ip, o.error_code))
            elif o.failure == "notUsed":
                push(start_ms, Beacon("notUsed", token, ip))
            return
        push(start_ms + rng.randrange(50, 400), Beacon("impression", token, ip))
        if rng.random() < 0.01:  # a player that fires twice: logged as a replay
            push(start_ms + rng.randrange(1000, 5000), Beacon("impression", token, ip))
        fractions = {"start": 0.0, "firstQuartile": 0.25, "midpoint": 0.5,
                     "thirdQuartile": 0.75, "complete": 1.0}  # fmt: skip
        for ev in o.progress:
            at = start_ms + int(fractions[ev] * duration_ms) + rng.randrange(50, 600)
            push(at, Beacon(ev, token, ip))
        if o.click:
            push(
                start_ms + int(max(0.1, o.watched_fraction) * duration_ms * 0.5),
                Beacon("click", token, ip),
            )

    async def _beacon(self, b: Beacon) -> None:
        catalog = self.service.snapshot.catalog
        result = await self.delivery.on_beacon(b.event, b.token, catalog)
        label = "ok" if result.counted else ("replay" if result.replay else result.reason)
        self.log.append(
            beacon_record(
                b.event,
                b.token,
                counted=result.counted,
                result=label,
                caller_ip=b.caller_ip,
                device_ip=None,
                device_user_agent=None,
                error_code=b.error_code,
                at=self.clock().isoformat(),
            )
        )
        self.stats.beacons += 1
        if result.counted:
            if b.event == "impression":
                self.stats.impressions += 1
            elif b.event == "complete":
                self.stats.completes += 1
            elif b.event == "click":
                self.stats.clicks += 1


def _cumulative(weights: Sequence[float]) -> list[float]:
    out: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def generate_events(out_dir: Path, catalog: Catalog, config: SynthConfig) -> SynthStats:
    """Simulate ``config`` against ``catalog``, writing the event log into ``out_dir``."""
    if config.scorer not in ("explore", "price"):
        raise ValueError(f"unknown scorer {config.scorer!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = SimClock(config.start)
    with EventLog(out_dir, clock=clock.ts, commit_interval_s=0.2) as log:
        sim = Simulator(catalog, log, config, clock)
        stats = asyncio.run(sim.run())
        log.flush()
    return stats


# ------------------------------------------------------------------------------ CLI


def main_gen_events(argv: Sequence[str]) -> int:
    """``gen-events --out DIR --seed S [--catalog PATH | --line-items N] [--sessions N]
    [--days D] [--start ISO] [--scorer explore|price]``."""
    p = argparse.ArgumentParser(
        prog="vastserver gen-events",
        formatter_class=HelpWithDefaults,
        description="Write a synthetic event log (decisions + beacons) by simulating viewing "
        "sessions through the real decision path.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="event log directory")
    p.add_argument("--seed", type=int, required=True, metavar="S", help="random seed")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--catalog", type=Path, metavar="PATH", help="catalog JSON (default: demo)")
    src.add_argument(
        "--line-items", type=positive_int, metavar="N", help="generate a catalog (seeded)"
    )
    p.add_argument(
        "--sessions", type=positive_int, default=DEFAULT_SESSIONS, metavar="N",
        help="viewing sessions to simulate",
    )  # fmt: skip
    p.add_argument(
        "--days", type=at_least_an_hour, default=3.0, metavar="D",
        help="simulated days the sessions are spread over",
    )  # fmt: skip
    p.add_argument(
        "--start",
        type=iso_datetime,
        default=DEFAULT_START,
        metavar="ISO",
        help=f"simulated start time (default {DEFAULT_START.isoformat()})",
    )
    p.add_argument(
        "--scorer", choices=("explore", "price"), default="explore",
        help="explore: random predictions, for varied training data; price: rank by price",
    )  # fmt: skip
    p.add_argument(
        "--pacing-interval", type=positive_float, default=60.0, metavar="S",
        help="simulated seconds between pacing/completion-rate refreshes (default 60)",
    )  # fmt: skip
    try:
        args = p.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    out: Path = args.out
    if (problem := new_log_problem(out)) is not None:
        print(f"gen-events: {problem}", file=sys.stderr)
        return 2
    try:
        if args.line_items is not None:
            doc = generate_catalog(args.line_items, args.seed, now=args.start)
            catalog = parse_catalog(json.loads(json.dumps(doc)), source="<generated>")
        else:
            catalog = load_catalog(args.catalog or DEFAULT_CATALOG)
    except (CatalogError, OSError, ValueError) as e:
        print(f"gen-events: cannot load the catalog: {e}", file=sys.stderr)
        return 1
    config = SynthConfig(
        seed=args.seed,
        sessions=args.sessions,
        days=args.days,
        start=args.start,
        scorer=args.scorer,
        pacing_interval_s=args.pacing_interval,
    )
    try:
        stats = generate_events(out, catalog, config)
    except OSError as e:
        print(f"gen-events: {e}", file=sys.stderr)
        return 1
    print(
        "gen-events: wrote " + json.dumps({"out": str(out), **stats.as_dict()}),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":  # python -m vastserver.ml.synth (same as `vastserver gen-events`)
    raise SystemExit(main_gen_events(sys.argv[1:]))
