"""Delivery control, the pure part: counter keys, cap and budget checks, pacing curves.

The async side (``vastserver.delivery``) reads every counter a request needs in one store
round trip, hands the numbers to :class:`CountsGate`, and after the pod is chosen commits
reservations with guards so parallel requests cannot overshoot a cap or a budget.

Counting model
--------------
* A frequency cap of ``max`` per ``window`` holds while
  ``impressions(window) + reservations(RESERVATION_S) < max``. A served ad reserves one unit
  for :data:`RESERVATION_S`; its impression beacon converts the reservation into an
  impression; ``notUsed`` (or no beacon at all) lets the reservation lapse.
* Budgets work the same way per line item and per campaign: delivered impressions (or spend
  in micros) plus in-flight reservations must stay under the budget. Daily budgets use the
  calendar day in the campaign's time zone.
* ``lmt=1`` viewers have no per-device profile: only ``session`` caps apply, keyed by the
  session id.
"""

from __future__ import annotations

import calendar
import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import NamedTuple
from zoneinfo import ZoneInfo

from vastserver.catalog.model import (
    Budget,
    Campaign,
    Catalog,
    Daypart,
    Delivery,
    FrequencyCap,
    LineItem,
    billed_cpm,
)
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.reasons import Reason
from vastserver.pipeline.stages import DeliveryGate, PreGate, SlotPay, _in_daypart
from vastserver.store.base import Guard, Incr, Read, Window

RESERVATION_S = 300
"""How long a served ad holds its cap/budget unit without an impression (SSAI prefetch)."""
SESSION_TTL_S = 12 * 3600
LIFETIME_CAP_TTL_S = 366 * 86400
"""A viewer's ``lifetime`` cap counter lasts this long after her last impression in its
scope: every viewer keeps a counter per capped scope, and without an expiry the store
(Redis, the state file) would grow for good with viewers long gone."""
DAY_TTL_S = 3 * 24 * 3600
_WINDOW_RE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

RESERVATION_WINDOW = Window(RESERVATION_S, 30)
ROOMY_S = 1.0
"""How long a candidate whose budgets all had room to spare skips the budget pre-check."""
ROOMY_IMPRESSIONS = 1000
"""The room (in impressions of the candidate, for every one of its budgets) that lets it skip
the pre-check for :data:`ROOMY_S`. The reservation at commit still checks every budget
exactly, so a skipped pre-check never lets a budget overdeliver: at worst an ad that the
pre-check would have dropped is chosen and then lost at commit."""
LIFETIME = Window.lifetime()


def cap_window(spec: str) -> Window | None:
    """Bucketed window for a cap's ``window``; None for ``pod`` (enforced by separation:
    a pod never holds two ads of one advertiser) and handled by the caller for ``session``."""
    if spec == "lifetime" or spec == "session":
        return LIFETIME
    if spec == "pod":
        return None
    m = _WINDOW_RE.match(spec)
    if m is None:
        raise ValueError(f"bad cap window {spec!r}")
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    bucket = max(60, seconds // 12)
    return Window(seconds, bucket)


def _scope_id(cap: FrequencyCap, cand: Candidate) -> str:
    match cap.scope:
        case "creative":
            return cand.creative.id
        case "campaign":
            return cand.campaign.id
        case "advertiser":
            return cand.advertiser.id
        case _:
            return cand.line_item.id


@dataclass(frozen=True, slots=True)
class CapCheck:
    """One cap applied to one viewer: the impression counter and its reservation twin."""

    impressions: Read
    reservations: Read
    limit: int
    ttl_s: int | None


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who frequency caps count for; rebuilt from the signed token when a beacon arrives."""

    hash: str
    """Keyed hash of the viewer key (IFA, else IP + UA)."""
    session: str | None
    lmt: bool

    @staticmethod
    def of(req: AdRequest, viewer_hash: str) -> Viewer:
        return Viewer(viewer_hash, req.session, req.device.lmt)


def _cap_ttl(window: str) -> int | None:
    """The expiry a cap counter is written with; None: its window's own (see ``incr_plan``)."""
    if window == "session":
        return SESSION_TTL_S
    if window == "lifetime":
        return LIFETIME_CAP_TTL_S
    return None


def cap_key_prefix(cap: FrequencyCap, cand: Candidate) -> str:
    """A cap counter's key up to the viewer or session it counts for."""
    return f"{_CAP_KEY}{cap.scope}:{_scope_id(cap, cand)}:{cap.window}:"


_CAP_KEY = "fc:"
_CREATIVE_CAP_KEY = f"{_CAP_KEY}creative:"


def is_cap_key(key: str) -> bool:
    """Whether a counter key is a frequency cap's (budgets' keys start ``li:`` / ``cp:``)."""
    return key.startswith(_CAP_KEY)


def cap_checks(cap: FrequencyCap, cand: Candidate, viewer: Viewer) -> CapCheck | None:
    if viewer.lmt and cap.window != "session":
        return None
    if cap.window == "session":
        if not viewer.session:
            return None
        subject = f"s:{viewer.session}"
    else:
        subject = f"v:{viewer.hash}"
    ttl = _cap_ttl(cap.window)
    window = cap_window(cap.window)
    if window is None:
        return None
    base = cap_key_prefix(cap, cand) + subject
    return CapCheck(
        impressions=Read(base + ":i", window),
        reservations=Read(base + ":r", RESERVATION_WINDOW),
        limit=cap.max,
        ttl_s=ttl,
    )


def local_day_at(ts: float, tz: str) -> str:
    """:func:`local_day` from a unix time (no datetime built)."""
    return _local_day(tz, int(ts // 60))


def local_day(now: datetime, tz: str) -> str:
    """The date in ``tz`` at ``now`` (``YYYY-MM-DD``), memoised per zone and UTC minute: a
    decision asks ~10 times (budget keys), and every zone in use today is offset from UTC by
    whole minutes, so the local date cannot change inside a UTC minute."""
    return _local_day(tz, int(now.timestamp() // 60))


@functools.lru_cache(maxsize=1024)
def _local_day(tz: str, minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, ZoneInfo(tz)).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    delivered: Read
    reservations: Read
    limit: int
    amount: int
    ttl_s: int | None
    moves: str | None = None
    """The counter a counted impression increments for this budget (by ``amount``, with
    ``ttl_s``), beside the ones every impression moves: ``delivered`` when only the budget
    moves it; for a line item's budget judged on a counter every impression moves
    (:func:`delivered_key`), the one versions before 49ba610 judged it on
    (:func:`budget_key`'s), kept moving so that their instances on the same store count
    this one's delivery (a later version may drop it); None for a campaign's lifetime
    budgets, whose counter every impression moves already (:func:`kept_increments`)."""


def spend_micros(price_micros: int) -> int:
    """What one impression billed at a CPM of ``price_micros`` (micros of currency per
    thousand) spends, in whole micros of currency: the one rounding every spend counter,
    budget check and the simulator's replica share."""
    return price_micros // 1000


def cpm_spend_micros(price_cpm: float) -> int:
    """:func:`spend_micros` of an impression billed at ``price_cpm`` (currency per thousand)."""
    return spend_micros(round(price_cpm * 1_000_000))


def amount_micros(amount: float) -> int:
    """A currency amount of the catalog (a spend budget) in whole micros: the most micros
    not above the amount as written (its shortest decimal form, which the JSON number
    was), computed exactly. ``int(amount * 1_000_000)`` went through a binary float:
    ``0.0157`` became 15,699 micros, and a budget reached exactly stopped an impression
    short."""
    return math.floor(Decimal(repr(amount)).scaleb(6))


def budget_key(prefix: str, kind: str, day: str | None) -> str:
    """The reservation counter (with ``:r``) of a budget of ``kind`` (``imp``, ``spend``) of
    ``prefix`` (``li:ID``, ``cp:ID``): the local ``day``'s for a daily budget, else the
    lifetime one; without ``:r``, the counter versions before 49ba610 judged the budget's
    delivery on (still moved: :attr:`BudgetCheck.moves`), which this one judges it on too
    unless :func:`delivered_key` names a counter every impression moves."""
    return f"{prefix}:{kind}:{'d:' + day if day is not None else 'life'}"


def event_key(li_id: str, event: str) -> str:
    """The counter of line item ``li_id``'s counted beacons of ``event`` (every one, budget
    or not; ``:d:DAY`` appended: those of the campaign's local day of their serve)."""
    return f"li:{li_id}:ev:{event}"


def spend_key(li_id: str) -> str:
    """What line item ``li_id``'s counted impressions billed, in micros (every one)."""
    return f"li:{li_id}:spend_micros"


def delivered_key(prefix: str, kind: str, day: str | None) -> str:
    """The counter a budget (as :func:`budget_key`) checks delivery against. Those of the
    budgets a reload may add or raise count every impression whatever the catalog said when
    it was counted, so such a budget counts what was delivered before it: a line item's
    impressions (lifetime, and per local day: the counters ``/admin`` reports) and lifetime
    spend, and its campaign's lifetime impressions and spend (:func:`kept_increments`). A
    daily spend budget and a campaign's daily budgets count only while they exist."""
    if prefix.startswith("li:"):
        li_id = prefix[3:]
        if kind == "imp":
            return event_key(li_id, "impression") + ("" if day is None else f":d:{day}")
        if day is None:
            return spend_key(li_id)
    return budget_key(prefix, kind, day)


def _moves(prefix: str, kind: str, day: str | None) -> str | None:
    """:attr:`BudgetCheck.moves` of the budget :func:`budget_key` names."""
    key = budget_key(prefix, kind, day)
    kept = day is None or (kind == "imp" and prefix.startswith("li:"))
    return None if kept and delivered_key(prefix, kind, day) == key else key


def kept_increments(camp_id: str, price_cpm: float) -> tuple[Incr, ...]:
    """The campaign's lifetime delivery counters one counted impression billed at
    ``price_cpm`` moves, budget or not (the beacon path moves the line item's own: its event
    and spend counters), so that a budget a reload adds counts what came before it."""
    prefix = f"cp:{camp_id}"
    spend = cpm_spend_micros(price_cpm)
    imp = Incr(budget_key(prefix, "imp", None), LIFETIME, 1)
    if spend <= 0:
        return (imp,)
    return (imp, Incr(budget_key(prefix, "spend", None), LIFETIME, spend))


def _budget_checks(prefix: str, budget: Budget, day: str, price_micros: int) -> list[BudgetCheck]:
    """``price_micros``: the impression's billed price as a CPM in micros. An impression
    that costs nothing (a flat line item's) checks and moves no spend budget."""
    out: list[BudgetCheck] = []

    def add(kind: str, limit: float | None, amount: int, daily: bool) -> None:
        if limit is None:
            return
        on = day if daily else None
        key = budget_key(prefix, kind, on)
        lim = amount_micros(limit) if kind == "spend" else int(limit)
        out.append(
            BudgetCheck(
                delivered=Read(delivered_key(prefix, kind, on), LIFETIME),
                reservations=Read(key + ":r", RESERVATION_WINDOW),
                limit=lim,
                amount=amount,
                ttl_s=DAY_TTL_S if daily else None,
                moves=_moves(prefix, kind, on),
            )
        )

    add("imp", budget.impressions, 1, False)
    add("imp", budget.daily_impressions, 1, True)
    spend_amount = spend_micros(price_micros)
    if spend_amount > 0:
        add("spend", budget.spend, spend_amount, False)
        add("spend", budget.daily_spend, spend_amount, True)
    return out


def budget_checks(
    cand: Candidate, now: datetime, price_cpm: float, days: dict[str, str] | None = None
) -> list[BudgetCheck]:
    """The budgets an impression of ``cand`` billed at ``price_cpm`` checks and moves: its
    impression budgets, and its spend budgets when it costs something (a flat line item's
    billed price is 0, :func:`vastserver.catalog.model.billed_cpm`). The price, not the
    catalog, decides, so a serve and its beacons agree across a catalog reload. ``days``
    caches the local date per time zone across calls of one request."""
    li, camp = cand.line_item, cand.campaign
    if days is None:
        day = local_day(now, camp.timezone)
    else:
        day = days.get(camp.timezone) or days.setdefault(
            camp.timezone, local_day(now, camp.timezone)
        )
    return line_item_budget_checks(li, camp, day, price_cpm)


def line_item_budget_checks(
    li: LineItem, camp: Campaign, day: str, price_cpm: float
) -> list[BudgetCheck]:
    """:func:`budget_checks` of line item ``li`` of campaign ``camp`` on the local ``day``
    (the pacing pass asks per line item, with no creative at hand)."""
    micros = round(price_cpm * 1_000_000)
    return [
        *_budget_checks(f"li:{li.id}", li.pacing.budget, day, micros),
        *_budget_checks(f"cp:{camp.id}", camp.budget, day, micros),
    ]


BudgetTest = tuple[str, int, int]
"""A budget check as the pacing pass tests it: (delivered counter key, amount, limit). A
plain tuple of a string and ints: the garbage collector stops tracking it after its first
collection, so a 100k catalog's tests, kept for the day, add nothing to a full collection
(as many :class:`BudgetCheck` objects, two :class:`Read` each, cost two ~250 ms ones)."""


def line_item_budget_tests(
    li: LineItem, camp: Campaign, day: str, price_cpm: float
) -> tuple[BudgetTest, ...]:
    """:func:`line_item_budget_checks` as :data:`BudgetTest` tuples (the tuple is made
    after its items, from a list: a collection untracks them before it looks at it)."""
    return tuple(
        [
            (b.delivered.key, b.amount, b.limit)
            for b in line_item_budget_checks(li, camp, day, price_cpm)
        ]
    )


def over_budget(used: int, amount: int, limit: int) -> bool:
    """Whether one more impression moving a budget by ``amount`` would take it past
    ``limit`` when ``used`` is already counted against it (delivered, and for a reservation
    in flight, reserved). The one test of a budget: the serve-time gate and guard, and the
    pacing pass that marks line items exhausted."""
    return used + amount > limit


# --------------------------------------------------------------------------- pacing


HOURLY_TRAFFIC: tuple[float, ...] = (
    0.020, 0.012, 0.008, 0.006, 0.006, 0.008, 0.015, 0.025,
    0.030, 0.032, 0.034, 0.036, 0.040, 0.040, 0.042, 0.045,
    0.050, 0.058, 0.068, 0.080, 0.085, 0.082, 0.065, 0.043,
)  # fmt: skip
"""A typical CTV day: relative traffic per local hour (sums to 0.93, not 1: use
:data:`HOURLY_SHARE`, the same curve normalised, for shares of a day)."""

HOURLY_SHARE: tuple[float, ...] = tuple(x / sum(HOURLY_TRAFFIC) for x in HOURLY_TRAFFIC)
"""Share of a day's traffic per local hour (sums to 1)."""

_STEP_S = 900
"""The pacing curve's resolution: every time zone in use is offset from UTC (and shifts at
a clock change) by whole quarter hours, so within a quarter hour aligned to UTC no zone's
local hour (or weekday) changes, and the traffic weight is constant."""


class _Day(NamedTuple):
    start: float
    """Unix time of the local midnight that begins the day."""
    end: float
    """Unix time of the next local midnight."""
    cum: tuple[float, ...]
    """Expected traffic from ``start`` to each quarter-hour boundary (``cum[0] == 0``, the
    last entry the day's whole)."""


def _weights(tz: str, dayparts: tuple[Daypart, ...], start: float, end: float) -> tuple[float, ...]:
    """:attr:`_Day.cum` of the day ``[start, end)``, quarter hour by quarter hour in real
    time: the hour a spring-forward skips has no quarters, so it adds nothing, and the hour
    a fall-back repeats adds its share twice. A quarter no daypart allows weighs 0."""
    zone = ZoneInfo(tz)
    cum = [0.0]
    t = start
    while t < end:
        step = min(_STEP_S, end - t)
        at = datetime.fromtimestamp(t, UTC)
        w = HOURLY_SHARE[at.astimezone(zone).hour] * step / 3600
        if dayparts and not any(_in_daypart(dp, at, tz) for dp in dayparts):
            w = 0.0
        cum.append(cum[-1] + w)
        t += step
    return tuple(cum)


_RULES_FROM = 2100
"""The first year from which every zone follows its standing tz rule: the tz database lists
explicit clock changes no later than 2087 (Africa/Casablanca), and a rule places its changes
by the calendar alone (a weekday of a month, a day of the year). From then on a year's
traffic is that of any other year with the weekday of its 1 January and its length."""

_SAMPLE_DAYS = 6
"""No zone changes its clocks twice within 6 days (the closest two changes in the tz
database since 1970 are 6.9 days apart), so a zone whose offset is the same at two local
midnights 6 days apart has not changed it in between."""


class _Run(NamedTuple):
    """Days of a local year alike: ``days`` days from date ordinal ``first`` whose traffic
    depends only on their weekday and ``key`` (the zones' UTC offsets; for a single day with
    a clock change, also when each zone changes, so that day's weights are known by it)."""

    first: int
    days: int
    key: tuple[object, ...]


def _day_start(zone: ZoneInfo, ordinal: int) -> float:
    """The unix time of the local midnight that begins date ordinal ``ordinal``."""
    d = date.fromordinal(ordinal)
    return datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()


def _offsets(zones: tuple[ZoneInfo, ...], ts: float) -> tuple[float, ...]:
    """Each zone's UTC offset (seconds) at unix time ``ts``."""
    out = []
    for z in zones:
        off = datetime.fromtimestamp(ts, z).utcoffset()
        assert off is not None
        out.append(off.total_seconds())
    return tuple(out)


def _change(zone: ZoneInfo, start: float, end: float) -> tuple[float, float, float]:
    """A zone's offset at ``start``, the seconds after ``start`` when it changes within
    ``[start, end)`` (0 when it does not), and its offset at ``end - 1``."""
    (before,) = _offsets((zone,), start)
    (after,) = _offsets((zone,), end - 1)
    if before == after:
        return before, 0.0, after
    lo, hi = int(start), int(end - 1)  # offset(lo) == before, offset(hi) == after
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offsets((zone,), mid)[0] == before:
            lo = mid
        else:
            hi = mid
    return before, hi - start, after


@functools.lru_cache(maxsize=8192)
def _year_runs(tz: str, zones: tuple[str, ...], year: int) -> tuple[_Run, ...]:
    """The local year ``year`` of zone ``tz`` as runs of days alike, for the clocks of
    ``zones`` (``tz`` and the dayparts' zones): offsets are read at every
    :data:`_SAMPLE_DAYS`-th midnight and day by day only where they differ, so a year costs
    some 70 reads per zone, whatever its dayparts (shared by every curve on these zones)."""
    zone = ZoneInfo(tz)
    zs = tuple(ZoneInfo(z) for z in zones)
    o, stop = date(year, 1, 1).toordinal(), date(year + 1, 1, 1).toordinal()
    runs: list[_Run] = []
    start = _day_start(zone, o)
    state = _offsets(zs, start)
    while o < stop:
        end = _day_start(zone, o + 1)
        if end - start != 86400 or _offsets(zs, end) != state:
            # a clock changes that day, or changed at its midnight (a day of 23 or 25 hours)
            key = ("change", end - start, tuple(_change(z, start, end) for z in zs))
            runs.append(_Run(o, 1, key))
            o, start = o + 1, end
            state = _offsets(zs, start)
            continue
        j = o + 1  # days o..j-1 have the offsets ``state`` throughout, and 24 hours
        while (
            j + _SAMPLE_DAYS <= stop and _offsets(zs, _day_start(zone, j + _SAMPLE_DAYS)) == state
        ):
            j += _SAMPLE_DAYS
        while j < stop:
            nxt = _day_start(zone, j + 1)
            if _offsets(zs, nxt) != state or nxt - _day_start(zone, j) != 86400:
                break
            j += 1
        runs.append(_Run(o, j - o, ("steady", state)))
        o = j
        start = _day_start(zone, o)
    return tuple(runs)


class PacingCurve:
    """Expected traffic of a line item over time, in days of traffic: the CTV day
    (:data:`HOURLY_SHARE`) in the campaign's time zone, restricted to the hours its dayparts
    allow (others weigh 0). :meth:`at` is cumulative, so the share of a period ``[s, e)``
    passed at ``t`` is ``(at(t) - at(s)) / (at(e) - at(s))``. Shared by every line item with
    the same zone and dayparts (:func:`pacing_curve`); days are computed once and kept."""

    __slots__ = (
        "_back",
        "_base",
        "_days",
        "_fwd",
        "_runs",
        "_shapes",
        "_years",
        "_zones",
        "dayparts",
        "tz",
        "zone",
    )

    def __init__(self, tz: str, dayparts: tuple[Daypart, ...]) -> None:
        self.tz = tz
        self.zone = ZoneInfo(tz)
        self.dayparts = dayparts
        self._zones = tuple(sorted({tz, *(dp.timezone for dp in dayparts if dp.timezone)}))
        """The zones whose clocks the curve follows: the campaign's and the dayparts'."""
        self._days: dict[int, _Day] = {}
        self._shapes: dict[tuple[object, ...], tuple[float, ...]] = {}
        self._runs: dict[tuple[object, ...], float] = {}
        """(weekday of the first day, days, :attr:`_Run.key`) -> traffic of those days."""
        self._years: dict[tuple[int, bool], float] = {}
        """(weekday of 1 January, leap) -> traffic of a year from :data:`_RULES_FROM` on."""
        self._base: int | None = None
        self._fwd = [0.0]
        """``_fwd[i]``: traffic of the ``i`` local years from the origin year ``_base`` on."""
        self._back = [0.0]
        """``_back[i]``: traffic of the ``i`` local years before the origin year."""

    def day(self, ordinal: int) -> _Day:
        """The local day of date ordinal ``ordinal``. A day without a clock change (in the
        campaign's zone or a daypart's) has the weights of any other with its weekday and
        UTC offsets: those are computed once."""
        d = self._days.get(ordinal)
        if d is not None:
            return d
        if len(self._days) >= 4096:
            self._days.clear()
        start, end = _day_start(self.zone, ordinal), _day_start(self.zone, ordinal + 1)
        zones = tuple(ZoneInfo(z) for z in self._zones)
        first = _offsets(zones, start)
        if first != _offsets(zones, end - 1):  # a clock change that day
            cum = _weights(self.tz, self.dayparts, start, end)
        else:
            key = (date.fromordinal(ordinal).weekday(), end - start, first)
            cum = self._shapes.get(key) or self._shapes.setdefault(
                key, _weights(self.tz, self.dayparts, start, end)
            )
        d = self._days[ordinal] = _Day(start, end, cum)
        return d

    def ordinal(self, ts: float) -> int:
        """The date ordinal of the local day holding unix time ``ts``."""
        return datetime.fromtimestamp(ts, self.zone).toordinal()

    def before(self, ordinal: int) -> float:
        """Traffic of the days from a fixed origin (1 January of the first year asked for)
        to ``ordinal``, negative before the origin: only differences mean anything, and they
        never change. The cost does not grow with the distance from the origin: whole years
        add up from their runs of days alike (:func:`_year_runs`), and from
        :data:`_RULES_FROM` on a year is known by its calendar."""
        year = date.fromordinal(ordinal).year
        if self._base is None:
            self._base = year
        i = year - self._base
        if i >= 0:
            fwd = self._fwd
            while len(fwd) <= i:
                fwd.append(fwd[-1] + self._year(self._base + len(fwd) - 1))
            whole = fwd[i]
        else:
            back = self._back
            while len(back) <= -i:
                back.append(back[-1] + self._year(self._base - len(back)))
            whole = -back[-i]
        return whole + self._span(year, ordinal)

    def _year(self, year: int) -> float:
        """Traffic of the local year ``year``."""
        if year < _RULES_FROM:
            return self._span(year, date(year + 1, 1, 1).toordinal())
        key = (date(year, 1, 1).weekday(), calendar.isleap(year))
        found = self._years.get(key)
        if found is None:
            found = self._years[key] = self._span(year, date(year + 1, 1, 1).toordinal())
        return found

    def _span(self, year: int, ordinal: int) -> float:
        """Traffic from local 1 January of ``year`` to the day ``ordinal`` of that year (or
        the next 1 January)."""
        total = 0.0
        for run in _year_runs(self.tz, self._zones, year):
            if run.first >= ordinal:
                break
            total += self._run(run, min(run.days, ordinal - run.first))
        return total

    def _run(self, run: _Run, days: int) -> float:
        """Traffic of the first ``days`` days of ``run``: each weekday's once, times the
        number of its days (the same for every run alike, so computed once)."""
        key = (date.fromordinal(run.first).weekday(), days, run.key)
        found = self._runs.get(key)
        if found is None:
            if len(self._runs) >= 4096:
                self._runs.clear()
            found = self._runs[key] = sum(
                self.day(run.first + k).cum[-1] * ((days - k + 6) // 7) for k in range(min(7, days))
            )
        return found

    def at(self, ts: float) -> float:
        """Cumulative traffic at unix time ``ts``."""
        ordinal = self.ordinal(ts)
        d = self.day(ordinal)
        offset = ts - d.start
        q = min(int(offset // _STEP_S), len(d.cum) - 2)
        lo, hi = d.cum[q], d.cum[q + 1]
        step = min(_STEP_S, d.end - d.start - q * _STEP_S)
        within = lo + (hi - lo) * min(1.0, (offset - q * _STEP_S) / step)
        return self.before(ordinal) + within


@functools.lru_cache(maxsize=1024)
def pacing_curve(tz: str, dayparts: tuple[Daypart, ...] = ()) -> PacingCurve:
    """The (shared) :class:`PacingCurve` of a time zone and a line item's dayparts."""
    return PacingCurve(tz, dayparts)


def local_day_bounds(at: datetime, tz: str) -> tuple[float, float]:
    """The unix times of the local midnights in ``tz`` that begin and end the day of ``at``."""
    c = pacing_curve(tz)
    day = c.day(c.ordinal(at.timestamp()))
    return day.start, day.end


def curve_fraction(done: float, whole: float, delivery: Delivery) -> float:
    """The target (0..1) when ``done`` of the period's ``whole`` expected traffic has
    passed. A period whose dayparts allow no hour expects nothing: 0."""
    if delivery is Delivery.ASAP:
        return 1.0
    if whole <= 0:
        return 0.0
    frac = min(1.0, max(0.0, done / whole))
    if delivery is Delivery.FRONTLOADED:
        return float(frac ** (1 / 1.5))
    return frac


def target_fraction(
    now: datetime,
    start: datetime,
    end: datetime,
    delivery: Delivery,
    tz: str = "UTC",
    dayparts: tuple[Daypart, ...] = (),
) -> float:
    """Where delivery should be now, as a fraction of the flight's budget (0..1).

    ``even`` follows the expected traffic (:class:`PacingCurve`: the CTV day in ``tz``, only
    in the hours ``dayparts`` allow) across the flight; ``frontloaded`` asks for 1.5x the
    even pace early, tapering (``f**(1/1.5)``-shaped); ``asap`` wants everything now (1.0).
    """
    if now <= start:
        return 0.0
    if now >= end or delivery is Delivery.ASAP:
        return 1.0
    c = pacing_curve(tz, dayparts)
    s = c.at(start.timestamp())
    return curve_fraction(c.at(now.timestamp()) - s, c.at(end.timestamp()) - s, delivery)


def daily_target_fraction(
    now: datetime,
    tz: str,
    delivery: Delivery,
    dayparts: tuple[Daypart, ...] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> float:
    """Fraction of a *daily* budget that should be delivered by now: the local day in
    ``tz``, clipped to the flight ``[start, end)`` when given (a flight that ends at noon
    spends its last daily budget by noon)."""
    ts = now.timestamp()
    c = pacing_curve(tz, dayparts)
    day = c.day(c.ordinal(ts))
    lo = day.start if start is None else max(day.start, start.timestamp())
    hi = day.end if end is None else min(day.end, end.timestamp())
    if ts <= lo:
        return 0.0
    if ts >= hi or delivery is Delivery.ASAP:
        return 1.0
    s = c.at(lo)
    return curve_fraction(c.at(ts) - s, c.at(hi) - s, delivery)


@dataclass(slots=True)
class PIController:
    """Serve probability from delivered vs target, a proportional-integral controller.

    error = (target - delivered) / max(target, floor) (positive when behind);
    p = clamp(p_base + kp * error + ki * integral, p_min, 1).

    Tuning: ``kp=1.5`` reacts to a 10 % shortfall with +15 points of probability;
    ``ki=0.2`` per update (every ~10 s) removes a steady offset within a few minutes; the
    integral is clamped (anti-windup) to ``+-2`` so a long outage does not cause a burst.
    ``p_min`` keeps a trickle so delivery can be observed. A line item ahead of its target
    by more than ``tolerance`` is throttled to ``p_min``.
    """

    kp: float = 1.5
    ki: float = 0.2
    p_base: float = 0.5
    p_min: float = 0.02
    integral_limit: float = 2.0
    tolerance: float = 0.01
    integral: float = 0.0
    p: float = 1.0

    def update(self, delivered: float, target: float, floor: float = 10.0) -> float:
        if target <= 0:
            self.p = self.p_min
            return self.p
        error = (target - delivered) / max(target, floor)
        self.integral = max(-self.integral_limit, min(self.integral_limit, self.integral + error))
        p = self.p_base + self.kp * error + self.ki * self.integral
        if delivered > target * (1 + self.tolerance):
            p = self.p_min
        self.p = max(self.p_min, min(1.0, p))
        return self.p


# --------------------------------------------------------------------------- the gate


BudgetTuple = tuple[str, str, int, int]
"""A budget check by counter key: (delivered, reservations, limit, amount)."""


class CandidateChecks(NamedTuple):
    """The counters that decide one candidate, by counter key: caps as (impressions,
    reservations, limit), budgets as (delivered, reservations, limit, amount) at the line
    item's price. ``first`` and ``last``: the budgets at its first- and last-slot price, for
    a line item with such a price that bills otherwise (None: as ``budgets``), so the gate
    knows which slots it can still pay for (:class:`~vastserver.pipeline.stages.SlotPay`)."""

    caps: tuple[tuple[str, str, int], ...]
    budgets: tuple[BudgetTuple, ...]
    first: tuple[BudgetTuple, ...] | None = None
    last: tuple[BudgetTuple, ...] | None = None


NO_CHECKS = CandidateChecks((), ())


@dataclass(frozen=True, slots=True)
class _CapTemplate:
    """A cap's counter keys without the viewer: ``prefix + subject + ":i"`` / ``":r"``."""

    prefix: str
    window: Window
    limit: int
    session: bool
    ttl_s: int | None


@dataclass(slots=True)
class _GateEntry:
    """One candidate's viewer-independent checks. Holds the candidate, so its ``id`` (the
    cache key) cannot be reused by another object while the entry lives."""

    cand: Candidate
    caps: tuple[_CapTemplate, ...]
    tz: str | None
    """The campaign's time zone when the candidate has a budget (daily keys), else None."""
    day: str = ""
    """The local day the budget fields below are for."""
    reads: dict[str, Read] = field(default_factory=dict)
    budgets: tuple[BudgetTuple, ...] = ()
    first: tuple[BudgetTuple, ...] | None = None
    last: tuple[BudgetTuple, ...] | None = None
    """The budgets at the slot prices (:attr:`CandidateChecks.first`, ``last``)."""
    checks: CandidateChecks = NO_CHECKS
    """``CandidateChecks((), budgets, first, last)``: the whole answer for a candidate
    without caps."""
    roomy_until: float = 0.0
    """Unix time until which the budgets of ``day`` are taken to have room (not read)."""
    counted: tuple[object, tuple[_CapTemplate, ...]] | None = None
    """(the scopes they were built for, templates of the caps an impression moves)."""
    priced: dict[tuple[str, int], tuple[BudgetCheck, ...]] = field(default_factory=dict)
    """(local day, price in micros) -> the candidate's budget checks at that price."""


@dataclass(slots=True)
class GateCache:
    """What :func:`gate_checks` can reuse across requests: each candidate's cap key templates
    and budget counters (per local day), which do not depend on the viewer. Owned by the
    caller; an entry is rebuilt when a catalog reload replaced its candidate. Cleared whole
    when ``max_entries`` is reached."""

    max_entries: int = 50_000
    entries: dict[int, _GateEntry] = field(default_factory=dict)

    def _room(self) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.clear()


def _cap_templates(
    c: Candidate, caps: Iterable[FrequencyCap] | None = None
) -> tuple[_CapTemplate, ...]:
    """Key templates of ``caps`` (default: the line item's own) as ``cap_checks`` builds them."""
    out = []
    for cap in c.line_item.frequency_caps if caps is None else caps:
        window = cap_window(cap.window)
        if window is None:
            continue
        out.append(
            _CapTemplate(
                prefix=cap_key_prefix(cap, c),
                window=window,
                limit=cap.max,
                session=cap.window == "session",
                ttl_s=_cap_ttl(cap.window),
            )
        )
    return tuple(out)


def _gate_entry(c: Candidate) -> _GateEntry:
    return _GateEntry(c, _cap_templates(c), c.campaign.timezone if has_budget(c) else None)


def _priced(
    e: _GateEntry, now: datetime, day: str, price_cpm: float, days: dict[str, str] | None = None
) -> tuple[BudgetCheck, ...]:
    """``budget_checks`` of ``e``'s candidate on the local ``day`` at ``price_cpm``, kept in
    the entry (the gate prices at the line item's price; slot prices add a few more)."""
    key = (day, round(price_cpm * 1_000_000))
    found = e.priced.get(key)
    if found is None:
        if len(e.priced) >= 8:  # slot prices x days: a handful
            e.priced.clear()
        found = e.priced[key] = tuple(budget_checks(e.cand, now, price_cpm, days))
    return found


def _subjects(viewer: Viewer) -> tuple[str | None, str | None]:
    """Who a cap counts for, indexed by ``_CapTemplate.session``: the viewer (not under
    ``lmt``) for windowed caps, the session for session caps (as :func:`cap_checks`)."""
    return (
        None if viewer.lmt else f"v:{viewer.hash}",
        f"s:{viewer.session}" if viewer.session else None,
    )


def _budget_tuples(found: Iterable[BudgetCheck]) -> tuple[BudgetTuple, ...]:
    return tuple((b.delivered.key, b.reservations.key, b.limit, b.amount) for b in found)


def _set_day(e: _GateEntry, now: datetime, day: str, days: dict[str, str]) -> None:
    li = e.cand.line_item
    found = _priced(e, now, day, billed_cpm(li, li.price), days)
    e.day = day
    e.reads = {r.key: r for b in found for r in (b.delivered, b.reservations)}
    e.budgets = _budget_tuples(found)
    e.first = e.last = None
    # A slot price that bills otherwise moves a spend budget by another amount (and a line
    # item priced 0 checks a spend budget only at a slot price): its checks, kept apart.
    for slot, price in ((1, li.first_slot_price), (2, li.last_slot_price)):
        if price is None:
            continue
        at = _priced(e, now, day, billed_cpm(li, price), days)
        tuples = _budget_tuples(at)
        if tuples == e.budgets:
            continue
        e.reads.update((r.key, r) for b in at for r in (b.delivered, b.reservations))
        if slot == 1:
            e.first = tuples
        else:
            e.last = tuples
    e.checks = CandidateChecks((), e.budgets, e.first, e.last)
    e.roomy_until = 0.0


def gate_checks(
    cands: Iterable[Candidate],
    viewer: Viewer,
    now: datetime,
    cache: GateCache | None = None,
) -> tuple[dict[int, CandidateChecks], list[Read]]:
    """Every candidate's checks (keyed by ``id(candidate)``) and all the counters they read,
    deduplicated, for one store round trip. This runs on the request path for every kept
    candidate: the viewer-independent parts come from ``cache`` when one is given, so a
    candidate without caps costs a lookup and a dict update.

    Equivalent to :func:`cap_checks` and :func:`budget_checks` per candidate (a test holds
    them together; at the line item's price, and at each slot price that bills otherwise in
    :attr:`CandidateChecks.first` / ``last``), except for the budgets of a candidate that
    :func:`note_headroom` found roomy within the last :data:`ROOMY_S`: those are neither read
    nor checked."""
    cache = cache if cache is not None else GateCache()
    cache._room()
    entries = cache.entries
    by_id: dict[int, CandidateChecks] = {}
    reads: dict[str, Read] = {}
    days: dict[str, str] = {}
    subjects = _subjects(viewer)
    ts = now.timestamp()
    for c in cands:
        e = entries.get(id(c))
        if e is None or e.cand is not c:
            e = entries[id(c)] = _gate_entry(c)
        budgets: tuple[BudgetTuple, ...] = ()
        plain = NO_CHECKS
        slotted = False
        if e.tz is not None:
            day = days.get(e.tz)
            if day is None:
                day = days[e.tz] = local_day(now, e.tz)
            if e.day != day:
                _set_day(e, now, day, days)
            if e.roomy_until <= ts:
                reads.update(e.reads)
                budgets, plain = e.budgets, e.checks
                slotted = e.first is not None or e.last is not None
        if not e.caps:
            by_id[id(c)] = plain
            continue
        found = []
        for t in e.caps:
            subject = subjects[t.session]
            if subject is None:
                continue
            base = t.prefix + subject
            imp, rsv = base + ":i", base + ":r"
            if imp not in reads:
                reads[imp] = Read(imp, t.window)
                reads[rsv] = Read(rsv, RESERVATION_WINDOW)
            found.append((imp, rsv, t.limit))
        by_id[id(c)] = (
            CandidateChecks(tuple(found), budgets, e.first, e.last)
            if slotted
            else CandidateChecks(tuple(found), budgets)
        )
    return by_id, list(reads.values())


def note_headroom(
    cands: Iterable[Candidate],
    checks: Mapping[int, CandidateChecks],
    counts: Mapping[str, int],
    now: datetime,
    cache: GateCache,
) -> None:
    """After the counters of :func:`gate_checks` were read: mark the candidates whose every
    budget has room for :data:`ROOMY_IMPRESSIONS` more impressions, so the next requests of
    the coming :data:`ROOMY_S` neither read nor pre-check those budgets (most budgets are far
    from spent, and their counters were most of a decision's reads). A budget near its end is
    read on every request. A line item with slot prices needs that room at each of them."""
    ts = now.timestamp()
    entries = cache.entries
    for c in cands:
        chk = checks.get(id(c))
        if chk is None or not chk.budgets:
            continue
        e = entries.get(id(c))
        if e is None or e.cand is not c or chk.budgets is not e.budgets:
            continue
        budgets = chk.budgets
        if chk.first is not None or chk.last is not None:
            budgets = (*budgets, *(chk.first or ()), *(chk.last or ()))
        for dlv, rsv, limit, amount in budgets:
            if limit - counts.get(dlv, 0) - counts.get(rsv, 0) < ROOMY_IMPRESSIONS * amount:
                break
        else:
            e.roomy_until = ts + ROOMY_S


def moves_budget(c: Candidate, price_cpm: float) -> bool:
    """Whether an impression of ``c`` billed at ``price_cpm`` moves a budget: any impression
    budget of the line item or its campaign, or a spend budget when it costs something
    (a flat line item's billed price is 0). Who fails closed when the store is down."""
    return _budgeted(c, cpm_spend_micros(price_cpm) > 0)


def has_budget(c: Candidate) -> bool:
    """Whether the line item or its campaign has any impression or spend budget (a spend
    budget counts for a flat line item too: whether an impression spends is its billed
    price's to say, and a serve's token may carry a price from before a reload)."""
    return _budgeted(c, True)


def _budgeted(c: Candidate, spends: bool) -> bool:
    return line_item_budgeted(c.line_item, c.campaign, spends)


def line_item_budgeted(li: LineItem, camp: Campaign, spends: bool = True) -> bool:
    """:func:`has_budget` (``spends``) or :func:`moves_budget` of line item ``li`` of
    campaign ``camp``."""
    for b in (li.pacing.budget, camp.budget):
        if b.impressions is not None or b.daily_impressions is not None:
            return True
        if spends and (b.spend is not None or b.daily_spend is not None):
            return True
    return False


@dataclass(slots=True)
class CountsGate(DeliveryGate):
    """Checks caps, budgets and pacing against counts fetched before the decision."""

    counts: dict[str, int]
    """Counter key -> value."""
    viewer: Viewer
    now: datetime
    pre: PreGate = field(default_factory=PreGate)
    """The request's pacing (its throttle draws: a line item is drawn once a request)."""
    exhausted: frozenset[str] = frozenset()
    """Line items known to be out of budget (the pacing loop's; with the store down, every
    budgeted one)."""
    checks: dict[int, CandidateChecks] | None = None
    """Precomputed per candidate (``gate_checks``); computed on demand when absent."""
    _counted: dict[int, tuple[Reason | None, bool]] = field(default_factory=dict)
    """``id(candidate)`` -> (:meth:`counted`, :meth:`refuses_line_item`)."""
    _limits: dict[int, SlotPay] = field(default_factory=dict)
    """:meth:`slot_limits`: the admitted candidates whose budgets pay for some slots only."""

    def slot_limits(self) -> Mapping[int, SlotPay]:
        return self._limits

    def check(self, req: AdRequest, cand: Candidate) -> Reason | None:
        return self.counted(cand) or self.pre.pacing(cand.line_item.id)

    def counted(self, cand: Candidate) -> Reason | None:
        """Out of budget, capped or over budget by the counters (no throttle draw). Judged
        once a candidate: a request's refill asks before its delivery filter does."""
        key = id(cand)
        memo = self._counted
        if key in memo:
            return memo[key][0]
        got = memo[key] = self._judge(cand)
        return got[0]

    def refuses_line_item(self, cand: Candidate) -> bool:
        """Whether what :meth:`counted` refused ``cand`` for refuses every creative of its
        line item too (a budget, a line item, campaign or advertiser cap; not a creative's
        own cap)."""
        got = self._counted.get(id(cand))
        return got is not None and got[1]

    def _judge(self, cand: Candidate) -> tuple[Reason | None, bool]:
        if cand.line_item.id in self.exhausted:
            return Reason.BUDGET_EXHAUSTED, True
        chk = None if self.checks is None else self.checks.get(id(cand))
        if chk is None:
            found, _ = gate_checks([cand], self.viewer, self.now)
            chk = found[id(cand)]
        counts = self.counts
        for imp, rsv, limit in chk.caps:
            if counts.get(imp, 0) + counts.get(rsv, 0) >= limit:
                return Reason.FREQUENCY_CAP, not imp.startswith(_CREATIVE_CAP_KEY)
        middle = _pays(chk.budgets, counts)
        if chk.first is None and chk.last is None:  # one price (most line items)
            return (None, False) if middle else (Reason.BUDGET_EXHAUSTED, True)
        pay = SlotPay(
            first=middle if chk.first is None else _pays(chk.first, counts),
            last=middle if chk.last is None else _pays(chk.last, counts),
            middle=middle,
        )
        if not any(pay):
            return Reason.BUDGET_EXHAUSTED, True
        if not all(pay):
            self._limits[id(cand)] = pay
        return None, False


def _pays(budgets: Iterable[BudgetTuple], counts: Mapping[str, int]) -> bool:
    """Whether every one of ``budgets`` has room for one more impression (a plain loop: it
    runs for every candidate with a budget)."""
    for dlv, rsv, limit, amount in budgets:
        if over_budget(counts.get(dlv, 0) + counts.get(rsv, 0), amount, limit):
            return False
    return True


ScopeCaps = Mapping[tuple[str, str], tuple[str, ...]]
"""(scope, scope id) -> the cap windows any line item defines for it."""


def scope_caps(catalog: Catalog) -> ScopeCaps:
    """Which counters exist: a campaign cap on one line item counts the impressions of every
    line item of that campaign (likewise advertiser and creative caps), so each impression
    increments every counter its creative, line item, campaign and advertiser have."""
    out: dict[tuple[str, str], dict[str, None]] = {}
    for li in catalog.line_items.values():
        camp = catalog.campaigns[li.campaign_id]
        for cap in li.frequency_caps:
            if cap.window == "pod":
                continue
            match cap.scope:
                case "creative":
                    ids: tuple[str, ...] = li.creative_ids
                case "campaign":
                    ids = (camp.id,)
                case "advertiser":
                    ids = (camp.advertiser_id,)
                case _:
                    ids = (li.id,)
            for scope_id in ids:
                out.setdefault((cap.scope, scope_id), {})[cap.window] = None
    return {k: tuple(v) for k, v in out.items()}


def counted_caps(cand: Candidate, scopes: ScopeCaps | None) -> tuple[FrequencyCap, ...]:
    """The cap counters one impression of ``cand`` moves (its own caps without ``scopes``)."""
    if scopes is None:
        return cand.line_item.frequency_caps
    out: list[FrequencyCap] = []
    for scope, scope_id in (
        ("creative", cand.creative.id),
        ("line_item", cand.line_item.id),
        ("campaign", cand.campaign.id),
        ("advertiser", cand.advertiser.id),
    ):
        for window in scopes.get((scope, scope_id), ()):
            out.append(FrequencyCap(scope, 0, window))
    return tuple(out)


def reservation_guards(
    cand: Candidate,
    viewer: Viewer,
    now: datetime,
    price_cpm: float,
    scopes: ScopeCaps | None = None,
) -> tuple[tuple[Guard, ...], tuple[Incr, ...]]:
    """Guards (the ad's own caps and budgets still open) and the reservation increments
    (every counter an impression of it would move) for one served ad."""
    guards: list[Guard] = []
    incrs: list[Incr] = []
    for cap in cand.line_item.frequency_caps:
        chk = cap_checks(cap, cand, viewer)
        if chk is None:
            continue
        guards.append(
            Guard(chk.impressions.key, chk.impressions.window, chk.limit, 1, (chk.reservations,))
        )
    for cap in counted_caps(cand, scopes):
        chk = cap_checks(cap, cand, viewer)
        if chk is not None:
            incrs.append(Incr(chk.reservations.key, RESERVATION_WINDOW, 1))
    for b in budget_checks(cand, now, price_cpm):
        guards.append(Guard(b.delivered.key, LIFETIME, b.limit, b.amount, (b.reservations,)))
        incrs.append(Incr(b.reservations.key, RESERVATION_WINDOW, b.amount))
    return tuple(guards), tuple(incrs)


def _counted_entry(
    cand: Candidate, scopes: ScopeCaps | None, cache: GateCache
) -> tuple[_GateEntry, tuple[_CapTemplate, ...]]:
    """``cand``'s cache entry, and the templates of the caps an impression of it moves."""
    cache._room()
    e = cache.entries.get(id(cand))
    if e is None or e.cand is not cand:
        e = cache.entries[id(cand)] = _gate_entry(cand)
    if e.counted is None or e.counted[0] is not scopes:
        e.counted = (scopes, _cap_templates(cand, counted_caps(cand, scopes)))
    return e, e.counted[1]


def reservation_plan(
    cand: Candidate,
    viewer: Viewer,
    now: datetime,
    price_cpm: float,
    scopes: ScopeCaps | None,
    cache: GateCache,
) -> tuple[tuple[Guard, ...], tuple[Incr, ...]]:
    """:func:`reservation_guards` for the request path: the viewer-independent parts (cap key
    templates, budget checks per local day and price) come from ``cache``. Equal to it (a
    test holds them together)."""
    e, counted = _counted_entry(cand, scopes, cache)
    subjects = _subjects(viewer)
    guards: list[Guard] = []
    incrs: list[Incr] = []
    for t in e.caps:
        subject = subjects[t.session]
        if subject is not None:
            base = t.prefix + subject
            guards.append(
                Guard(base + ":i", t.window, t.limit, 1, (Read(base + ":r", RESERVATION_WINDOW),))
            )
    for t in counted:
        subject = subjects[t.session]
        if subject is not None:
            incrs.append(Incr(t.prefix + subject + ":r", RESERVATION_WINDOW, 1))
    if e.tz is None:
        return tuple(guards), tuple(incrs)
    for b in _priced(e, now, local_day(now, e.tz), price_cpm):
        guards.append(Guard(b.delivered.key, LIFETIME, b.limit, b.amount, (b.reservations,)))
        incrs.append(Incr(b.reservations.key, RESERVATION_WINDOW, b.amount))
    return tuple(guards), tuple(incrs)


def impression_increments(
    cand: Candidate,
    viewer: Viewer,
    served_at: float,
    now: datetime,
    price_cpm: float,
    scopes: ScopeCaps | None = None,
) -> list[Incr]:
    """What one counted impression changes: caps and budgets move from reserved to delivered.

    ``now`` picks the daily budget key: use the serve time, so a late beacon lands on the local
    day of its serve in the campaign's time zone. That is the day its reservation was made
    unless a reload changed the zone since: then it is the serve time's day in the new zone.

    A budget's delivered counter that every impression moves is not moved here: the
    campaign's are, always (:func:`kept_increments`), and the line item's are the beacon
    path's event and spend counters. Each budget moves :attr:`BudgetCheck.moves`."""
    out: list[Incr] = []
    for cap in counted_caps(cand, scopes):
        chk = cap_checks(cap, cand, viewer)
        if chk is None:
            continue
        out.append(Incr(chk.impressions.key, chk.impressions.window, 1, ttl_s=chk.ttl_s))
        out.append(Incr(chk.reservations.key, RESERVATION_WINDOW, -1, at=served_at))
    out += kept_increments(cand.campaign.id, price_cpm)
    for b in budget_checks(cand, now, price_cpm):
        if b.moves is not None:
            out.append(Incr(b.moves, LIFETIME, b.amount, ttl_s=b.ttl_s))
        out.append(Incr(b.reservations.key, RESERVATION_WINDOW, -b.amount, at=served_at))
    return out


def impression_plan(
    cand: Candidate,
    viewer: Viewer,
    served_at: float,
    price_cpm: float,
    scopes: ScopeCaps | None,
    cache: GateCache,
) -> list[Incr]:
    """:func:`impression_increments` (with ``now`` the serve time) for the beacon path: the
    cap key templates and budget keys come from ``cache``. Equal to it (a test holds them
    together)."""
    e, counted = _counted_entry(cand, scopes, cache)
    out: list[Incr] = []
    subjects = _subjects(viewer)
    for t in counted:
        subject = subjects[t.session]
        if subject is None:
            continue
        base = t.prefix + subject
        out.append(Incr(base + ":i", t.window, 1, None, t.ttl_s))
        out.append(Incr(base + ":r", RESERVATION_WINDOW, -1, served_at))
    out += kept_increments(cand.campaign.id, price_cpm)
    if e.tz is None:
        return out
    day = local_day_at(served_at, e.tz)
    served = datetime.fromtimestamp(served_at, UTC)
    for b in _priced(e, served, day, price_cpm):
        if b.moves is not None:
            out.append(Incr(b.moves, LIFETIME, b.amount, None, b.ttl_s))
        out.append(Incr(b.reservations.key, RESERVATION_WINDOW, -b.amount, served_at))
    return out


def release_increments(
    cand: Candidate,
    viewer: Viewer,
    served_at: float,
    now: datetime,
    price_cpm: float,
    scopes: ScopeCaps | None = None,
) -> list[Incr]:
    """``notUsed`` before any impression: give the reservations back."""
    out: list[Incr] = []
    for cap in counted_caps(cand, scopes):
        chk = cap_checks(cap, cand, viewer)
        if chk is not None:
            out.append(Incr(chk.reservations.key, RESERVATION_WINDOW, -1, at=served_at))
    for b in budget_checks(cand, now, price_cpm):
        out.append(Incr(b.reservations.key, RESERVATION_WINDOW, -b.amount, at=served_at))
    return out


# --------------------------------------------------------------------------- stream separation


@dataclass(frozen=True, slots=True)
class SeparationRules:
    creative_breaks: int = 3
    """A creative does not play again within this many breaks of a session..."""
    creative_minutes: float = 30.0
    """...nor within this many minutes."""
    competitive_breaks: int = 1
    """A competitive label stays out of the next this-many breaks (0: off)."""


def history_key(session: str) -> str:
    return f"ss:{session}"


def history_entries(avail: int, at: float, shown: Iterable[tuple[str, Iterable[str]]]) -> list[str]:
    """Session-history entries for the ads of one break: ``avail|unix|creative|labels``, the
    ad's competitive labels comma-separated (slugs have no commas), sorted; one label reads
    as the single category entries held before ads had several."""
    return [f"{avail}|{at:.3f}|{cr}|{','.join(sorted(labels))}" for cr, labels in shown]


UNUSED = "unused"
"""First part of a tombstone entry (:func:`unused_entry`)."""


def unused_entry(served_at: int, creative: str, ad_serving_id: str) -> str:
    """The session-history entry a counted ``notUsed`` leaves: a tombstone
    ``unused|served_at|creative|ad serving id|-`` that takes one shown entry of ``creative``
    served at that unix second (its token's ``served_at``) out of the history, since the ad
    never played. Five parts: a reader of the four-part entries alone (versions before it)
    skips it and keeps the ad out, as before."""
    return f"{UNUSED}|{served_at}|{creative}|{ad_serving_id}|-"


_TOMBSTONE = "\x00" + UNUSED + "|"
"""A tombstone's start, as found in the entries joined by NUL (an entry holding a NUL could
only make :func:`_tombstones` look for none in vain)."""


def _tombstones(entries: Iterable[str]) -> Counter[tuple[str, int]]:
    """(creative, served second) -> how many tombstones name it; malformed ones ignored."""
    out: Counter[tuple[str, int]] = Counter()
    for e in entries:
        if not e.startswith(UNUSED + "|"):
            continue
        parts = e.split("|")
        if len(parts) != 5 or not parts[2] or not (parts[1].isascii() and parts[1].isdigit()):
            continue
        out[(parts[2], int(parts[1]))] += 1
    return out


def _unshown(unused: Counter[tuple[str, int]], creative: str, at: float) -> bool:
    """Whether a tombstone takes out the shown entry of ``creative`` written at ``at`` (and,
    if so, uses it up). The entry holds the decision's time rounded to milliseconds, the
    token its whole second: a time in ``[S, S + 1)`` reads ``S.xyz``, or ``S+1.000`` when it
    rounded up from ``S.9995`` or later."""
    if not math.isfinite(at):
        return False
    second = math.floor(at)
    seconds = (second, second - 1) if at == second else (second,)
    for key in ((creative, s) for s in seconds):
        if unused[key] > 0:
            unused[key] -= 1
            return True
    return False


def recent_from_history(
    entries: Iterable[str], avail: int | None, now: float, rules: SeparationRules
) -> tuple[frozenset[str], frozenset[str]]:
    """(creatives, competitive labels) a break at ``avail`` must avoid.

    The same avail again (a retried request) counts as distance 0: it is blocked too. The
    distance goes both ways: a stitcher fetching breaks ahead may ask for a later avail
    before an earlier one, and the earlier break then keeps out what the later one showed.
    ``avail`` None (the request sent none, so every break of the session looks like avail 0):
    breaks cannot be counted, and separation goes by time alone: a creative or competitive
    category shown within ``creative_minutes`` is avoided, an older one is not.

    An ad a ``notUsed`` settled never played: its tombstone (:func:`unused_entry`) takes one
    entry of its creative and serve second out, wherever it stands in the history."""
    creatives: set[str] = set()
    comps: set[str] = set()
    entries = entries if isinstance(entries, list) else list(entries)
    # one scan of the joined entries (~1 µs for 64) finds whether any is a tombstone
    unused = _tombstones(entries) if _TOMBSTONE in "\x00".join(("", *entries)) else None
    for e in entries:
        parts = e.split("|")
        if len(parts) != 4:
            continue
        try:
            e_avail, e_at = int(parts[0]), float(parts[1])
        except ValueError:
            continue
        if unused and _unshown(unused, parts[2], e_at):
            continue
        recent = now - e_at < rules.creative_minutes * 60
        if avail is None:  # time only
            creative_out = comp_out = recent
        else:
            distance = abs(avail - e_avail)
            creative_out = recent or distance < rules.creative_breaks
            comp_out = distance <= rules.competitive_breaks
        if creative_out:
            creatives.add(parts[2])
        if parts[3] and rules.competitive_breaks > 0 and comp_out:
            comps.update(parts[3].split(","))
    return frozenset(creatives), frozenset(comps)
