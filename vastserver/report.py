"""``vastserver report``: delivery per line item, read back from the event log.

The event log is the system of record: this report joins decisions (what was served) with
counted beacons (what was delivered) and, given the catalog, compares delivery with the pacing
target at the time of the last event.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from vastserver.catalog.load import CatalogError, load_catalog
from vastserver.catalog.model import Catalog, LineItem
from vastserver.cliargs import HelpWithDefaults
from vastserver.eventlog import EventLogCorruptError, ReadStats, read_events
from vastserver.pipeline.delivery import (
    cpm_spend_micros,
    daily_target_fraction,
    local_day_bounds,
    target_fraction,
)
from vastserver.settings import event_log_dir

QUARTER_S = 900


@dataclass(slots=True)
class LineItemDelivery:
    id: str
    served: int = 0
    impressions: int = 0
    starts: int = 0
    completes: int = 0
    clicks: int = 0
    errors: int = 0
    spend_micros: int = 0
    """What the counted impressions billed, in micros, as the server bills them."""
    currency: str | None = None
    """The currency of the line item's price, from its served ads (None: none logged)."""
    by_hour: dict[str, int] = field(default_factory=dict)
    by_quarter: dict[int, int] = field(default_factory=dict)
    """Impressions per UTC quarter hour of their serve (``served_at // 900``; the beacon's
    ``at`` when the record has none). Every zone's midnight falls on a quarter hour, so
    these add up to the impressions of any local day: what a daily budget counts."""

    def impressions_between(self, start: float, end: float) -> int:
        """Impressions served in ``[start, end)`` (unix times on quarter hours)."""
        lo, hi = start // QUARTER_S, end // QUARTER_S
        return sum(n for q, n in self.by_quarter.items() if lo <= q < hi)

    @property
    def spend(self) -> float:
        return self.spend_micros / 1_000_000

    @property
    def completion_rate(self) -> float | None:
        return self.completes / self.impressions if self.impressions else None


def billed_micros(rec: Mapping[str, Any]) -> int:
    """What a counted impression's beacon record billed, in whole micros: the server's
    :func:`spend_micros` of the price it was served at (``price_cpm``, exact to the micro
    of CPM), so sums match its ``spend`` (``/admin/line-items``, spend budgets). Summing
    ``price_cpm / 1000`` counted the fractions of a micro the server does not bill."""
    return cpm_spend_micros(float(rec.get("price_cpm") or 0))


@dataclass(slots=True)
class DeliveryReport:
    items: dict[str, LineItemDelivery]
    decisions: int
    filled: int
    first_at: datetime | None
    last_at: datetime | None
    torn_lines: int = 0
    invalid_records: int = 0
    """Lines that were not JSON objects, and records with fields of the wrong type."""
    repeated_beacons: int = 0
    """Beacons logged as counted for an ad and event counted before (see
    :func:`counted_once`), read as not counted."""
    not_gzip_files: int = 0
    """Files named ``.jsonl.gz`` that are not gzip-compressed (skipped unread)."""

    @property
    def fill_rate(self) -> float | None:
        return self.filled / self.decisions if self.decisions else None


def _at(rec: Mapping[str, Any]) -> datetime | None:
    raw = rec.get("at")
    if isinstance(raw, str):
        try:
            at = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return at if at.utcoffset() is not None else None
    return None


def _opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _well_formed(rec: Mapping[str, Any]) -> bool:
    """The fields the reports read have the types the server writes (a damaged or hand-made
    log may hold anything): ``at`` a date-time with an offset; a decision's ``ads`` a list of
    objects with string ids and numeric predictions, its ``ad_serving_ids`` strings; a
    beacon's ids strings, ``counted`` a bool and ``price_cpm`` a finite number."""
    if not isinstance(rec.get("at"), str) or _at(rec) is None:
        return False
    kind = rec.get("type")
    if kind == "decision":
        ads = rec.get("ads", [])
        ids = rec.get("ad_serving_ids", [])
        if not isinstance(ads, list) or not isinstance(ids, list):
            return False
        if not all(isinstance(a, str) for a in ids):
            return False
        for ad in ads:
            if not isinstance(ad, dict):
                return False
            if not (
                _opt_str(ad.get("line_item_id"))
                and _opt_str(ad.get("ad_serving_id"))
                and _opt_str(ad.get("currency"))
            ):
                return False
            p = ad.get("prediction")
            if p is not None and not (isinstance(p, int | float) and math.isfinite(p)):
                return False
        return _opt_str(rec.get("experiment")) and _opt_str(rec.get("model_version"))
    if kind == "beacon":
        price = rec.get("price_cpm")
        return (
            isinstance(rec.get("counted", False), bool)
            and _opt_str(rec.get("line_item_id"))
            and _opt_str(rec.get("ad_serving_id"))
            and _opt_str(rec.get("event"))
            and (
                price is None
                or (
                    (isinstance(price, int | float) and not isinstance(price, bool))
                    and math.isfinite(price)
                )
            )
        )
    return True


def well_formed(
    records: Iterable[Mapping[str, Any]], skipped: list[int]
) -> Iterator[Mapping[str, Any]]:
    """``records`` without the malformed ones (see :func:`_well_formed`), counted in
    ``skipped[0]``."""
    for rec in records:
        if _well_formed(rec):
            yield rec
        else:
            skipped[0] += 1


def counted_once(
    records: Iterable[Mapping[str, Any]], repeats: list[int]
) -> Iterator[Mapping[str, Any]]:
    """``records`` with a counted beacon whose ad (``ad_serving_id``) and event were counted
    before passed on as not counted, and counted in ``repeats[0]``. The server counts each
    once, but its claims live in the store: after a crash (``kill -9`` between two saves of
    the state file) a replayed beacon is counted again, and the log holds both records."""
    seen: set[tuple[str, str]] = set()
    for rec in records:
        if rec.get("type") == "beacon" and rec.get("counted"):
            asid, event = rec.get("ad_serving_id"), rec.get("event")
            if isinstance(asid, str) and isinstance(event, str):
                key = (asid, event)
                if key in seen:
                    repeats[0] += 1
                    yield {**rec, "counted": False}
                    continue
                seen.add(key)
        yield rec


def build_report(records: Iterable[Mapping[str, Any]]) -> DeliveryReport:
    items: dict[str, LineItemDelivery] = {}
    decisions = filled = 0
    first: datetime | None = None
    last: datetime | None = None

    def item(li: str) -> LineItemDelivery:
        it = items.get(li)
        if it is None:
            it = items[li] = LineItemDelivery(li)
        return it

    for rec in records:
        at = _at(rec)
        if at is not None:
            first = at if first is None or at < first else first
            last = at if last is None or at > last else last
        kind = rec.get("type")
        if kind == "decision":
            decisions += 1
            ads = rec.get("ads") or []
            filled += bool(ads)
            for ad in ads:
                it = item(str(ad.get("line_item_id")))
                it.served += 1
                it.currency = ad.get("currency") or it.currency
        elif kind == "beacon" and rec.get("counted") and rec.get("line_item_id"):
            it = item(str(rec["line_item_id"]))
            match rec.get("event"):
                case "impression":
                    it.impressions += 1
                    it.spend_micros += billed_micros(rec)
                    if at is not None:
                        hour = at.strftime("%Y-%m-%dT%H")
                        it.by_hour[hour] = it.by_hour.get(hour, 0) + 1
                    served = rec.get("served_at")
                    if (
                        not isinstance(served, int | float)
                        or isinstance(served, bool)
                        or not math.isfinite(served)
                    ):
                        served = None if at is None else at.timestamp()
                    if served is not None:
                        q = int(served // QUARTER_S)
                        it.by_quarter[q] = it.by_quarter.get(q, 0) + 1
                case "start":
                    it.starts += 1
                case "complete":
                    it.completes += 1
                case "click":
                    it.clicks += 1
                case "error":
                    it.errors += 1
                case _:
                    pass
    return DeliveryReport(items, decisions, filled, first, last)


def pacing_target(li: LineItem, catalog: Catalog, at: datetime) -> float | None:
    """Impressions the pacing curve expected by ``at`` (None without an impression budget)."""
    b = li.pacing.budget
    tz = catalog.campaigns[li.campaign_id].timezone
    dps = li.targeting.dayparts
    if b.daily_impressions is not None:
        frac = daily_target_fraction(at, tz, li.pacing.delivery, dps, li.start, li.end)
        return b.daily_impressions * frac
    if b.impressions is not None:
        return b.impressions * target_fraction(at, li.start, li.end, li.pacing.delivery, tz, dps)
    return None


def pacing_figures(
    it: LineItemDelivery, catalog: Catalog | None, at: datetime | None
) -> tuple[float | None, int]:
    """(the target at ``at``, the impressions it is compared with): a daily budget's
    target is for the campaign's local day of ``at``, so only the impressions served that
    day count, as the server's daily counter does; a lifetime budget's, every impression."""
    if catalog is None or at is None or it.id not in catalog.line_items:
        return None, it.impressions
    li = catalog.line_items[it.id]
    target = pacing_target(li, catalog, at)
    if li.pacing.budget.daily_impressions is None:
        return target, it.impressions
    day = local_day_bounds(at, catalog.campaigns[li.campaign_id].timezone)
    return target, it.impressions_between(*day)


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def render_text(rep: DeliveryReport, catalog: Catalog | None, out: TextIO) -> None:
    span = f"{rep.first_at} .. {rep.last_at}" if rep.first_at else "no events"
    out.write(f"events: {span}\n")
    out.write(
        f"decisions: {rep.decisions}  filled: {rep.filled}  fill rate: {_fmt(rep.fill_rate, True)}"
        f"  torn lines skipped: {rep.torn_lines}"
        f"  invalid records skipped: {rep.invalid_records}"
        f"  repeated beacons not counted: {rep.repeated_beacons}\n\n"
    )
    header = (
        f"{'line item':<34}{'served':>8}{'impr':>8}{'compl':>8}{'compl%':>8}"
        f"{'clicks':>7}{'spend':>10}{'cur':>4}{'target':>9}{'pacing':>8}\n"
    )
    out.write(header)
    out.write("-" * (len(header) - 1) + "\n")
    for li_id in sorted(rep.items):
        it = rep.items[li_id]
        target, counted = pacing_figures(it, catalog, rep.last_at)
        ratio = counted / target if target else None
        out.write(
            f"{li_id[:33]:<34}{it.served:>8}{it.impressions:>8}{it.completes:>8}"
            f"{_fmt(it.completion_rate, True):>8}{it.clicks:>7}{it.spend:>10.2f}"
            f"{it.currency or '-':>4}"
            f"{('-' if target is None else f'{target:.0f}'):>9}{_fmt(ratio, True):>8}\n"
        )
    if catalog is not None:
        out.write(
            "\npacing: impressions / target at the last event; for a daily budget, only the"
            " impressions served on the campaign's local day of the last event\n"
        )


def report_json(rep: DeliveryReport, catalog: Catalog | None) -> dict[str, Any]:
    rows = []
    for li_id in sorted(rep.items):
        it = rep.items[li_id]
        target, counted = pacing_figures(it, catalog, rep.last_at)
        rows.append(
            {
                "line_item_id": li_id,
                "served": it.served,
                "impressions": it.impressions,
                "completes": it.completes,
                "completion_rate": it.completion_rate,
                "clicks": it.clicks,
                "errors": it.errors,
                "spend": round(it.spend, 6),
                "currency": it.currency,
                "pacing_target": target,
                "pacing_impressions": counted if target is not None else None,
                "pacing_ratio": counted / target if target else None,
                "impressions_by_hour": it.by_hour,
            }
        )
    return {
        "decisions": rep.decisions,
        "filled": rep.filled,
        "fill_rate": rep.fill_rate,
        "first_at": rep.first_at.isoformat() if rep.first_at else None,
        "last_at": rep.last_at.isoformat() if rep.last_at else None,
        "torn_lines": rep.torn_lines,
        "invalid_records": rep.invalid_records,
        "repeated_beacons": rep.repeated_beacons,
        "not_gzip_files": rep.not_gzip_files,
        "line_items": rows,
    }


def _ci(lo_hi: tuple[float, float], pct: bool = True) -> str:
    lo, hi = lo_hi
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]%" if pct else f"[{lo:.4f}, {hi:.4f}]"


def _render_extras(doc: Mapping[str, Any], out: TextIO) -> None:
    exp = doc.get("experiment")
    if exp is not None:
        out.write(f"experiment {exp['experiment']}\n")
        out.write(
            f"{'arm':<14}{'decisions':>10}{'fill':>8}{'fill 95% CI':>18}{'impr':>8}"
            f"{'compl%':>8}{'compl 95% CI':>18}{'rev/dec':>10}{'rev/dec 95% CI':>22}\n"
        )
        for a in exp["arms"]:
            out.write(
                f"{a['arm']:<14}{a['decisions']:>10}{_fmt(a['fill_rate'], True):>8}"
                f"{_ci(a['fill_rate_ci']):>18}{a['impressions']:>8}"
                f"{_fmt(a['completion_rate'], True):>8}{_ci(a['completion_rate_ci']):>18}"
                f"{a['revenue_per_decision']:>10.4f}"
                f"{_ci(a['revenue_per_decision_ci'], pct=False):>22}\n"
            )
        for a in exp["arms"]:
            mix = ", ".join(f"{k} {v}" for k, v in a["scorer_mix"].items())
            note = (
                f"; {a['excluded_decisions']} scored by the price fallback (model not "
                "loaded, or no time left to score) left out of the comparison"
                if a["excluded_decisions"]
                else ""
            )
            out.write(f"  {a['arm']}: decisions by scorer: {mix}{note}\n")
    cal = doc.get("calibration")
    if cal is not None:
        for part in cal["by_version"]:  # one table per model version: arms apart
            out.write(
                f"\ncalibration of {part['model_version'] or 'an unknown version'} over "
                f"{part['ads']} impressions\n"
            )
            out.write(f"{'decile':>7}{'n':>8}{'predicted':>11}{'observed':>10}\n")
            for r in part["deciles"]:
                out.write(
                    f"{r['decile']:>7}{r['n']:>8}{r['predicted']:>11.3f}{r['observed']:>10.3f}\n"
                )


def main_report(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="vastserver report", description=__doc__, formatter_class=HelpWithDefaults
    )
    default_dir = event_log_dir(os.environ.get("VASTSERVER_EVENT_LOG_DIR") or None)
    ap.add_argument(
        "events",
        nargs="*",
        help="event-log files/dirs (default: the directory the server writes,"
        " VASTSERVER_EVENT_LOG_DIR, else <VASTSERVER_HOME or the checkout>/var/events:"
        f" {default_dir or 'off, so name one'})",
    )
    ap.add_argument("--catalog", help="catalog JSON, for pacing targets")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--experiment", help="compare the arms of this experiment")
    ap.add_argument(
        "--model", action="store_true", help="predicted vs observed completion per decile"
    )
    args = ap.parse_args(list(argv))
    catalog = None
    if args.catalog:
        try:
            catalog = load_catalog(Path(args.catalog))
        except CatalogError as e:
            print(str(e), file=sys.stderr)
            return 2
    if args.events:
        paths = [Path(p) for p in args.events]
    elif default_dir is not None:
        paths = [default_dir]
    else:
        print(
            "the event log is off (VASTSERVER_EVENT_LOG_DIR): name the EVENTS to read",
            file=sys.stderr,
        )
        return 2
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"no such event log: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    stats = ReadStats()
    if args.experiment or args.model:
        try:
            read = read_events(paths, stats=stats, skip_invalid=True)
            records = list(counted_once(well_formed(read, [0]), [0]))
        except (OSError, EventLogCorruptError) as e:
            print(f"cannot read the event log: {e}", file=sys.stderr)
            return 2
        _warn_not_gzip(stats)
        doc: dict[str, Any] = {}
        if args.experiment:
            doc["experiment"] = experiment_report(records, args.experiment)
            if not doc["experiment"]["arms"]:
                print(_no_experiment(records, args.experiment), file=sys.stderr)
                return 2
        if args.model:
            doc["calibration"] = calibration_report(records)
        if args.json:
            json.dump(doc, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _render_extras(doc, sys.stdout)
        return 0
    skipped, repeats = [0], [0]
    try:
        read = read_events(paths, stats=stats, skip_invalid=True)
        rep = build_report(counted_once(well_formed(read, skipped), repeats))
    except (OSError, EventLogCorruptError) as e:
        print(f"cannot read the event log: {e}", file=sys.stderr)
        return 2
    # the counts are known once the records have been read
    rep.torn_lines = stats.torn_lines
    rep.invalid_records = stats.invalid_lines + skipped[0]
    rep.repeated_beacons = repeats[0]
    rep.not_gzip_files = stats.not_gzip_files
    _warn_not_gzip(stats)
    if args.json:
        json.dump(report_json(rep, catalog), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(rep, catalog, sys.stdout)
    return 0


def _no_experiment(records: Iterable[Mapping[str, Any]], name: str) -> str:
    """``--experiment NAME`` that no decision of the log belongs to: say which ones do."""
    names = sorted(
        {
            str(r["experiment"])
            for r in records
            if r.get("type") == "decision" and r.get("experiment") is not None
        }
    )
    found = f"experiments in it: {', '.join(names)}" if names else "no decision in it names one"
    return f"report: no decision of experiment {name!r} in the event log ({found})"


def _warn_not_gzip(stats: ReadStats) -> None:
    if stats.not_gzip_files:
        print(
            f"report: skipped {stats.not_gzip_files} file(s) named .jsonl.gz that are not "
            "gzip-compressed (a plain log is read when named .jsonl)",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------- experiments


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95 % interval."""
    n = len(values)
    if n == 0:
        return (0.0, 0.0, 0.0)
    mean = sum(values) / n
    if n == 1:
        return (mean, mean, mean)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return (mean, mean - half, mean + half)


@dataclass(slots=True)
class _Arm:
    decisions: int = 0
    filled: int = 0
    impressions: int = 0
    completes: int = 0
    revenue_by_decision: dict[str, int] = field(default_factory=dict)
    """Decision -> what its counted impressions billed, in micros."""
    scorer_mix: dict[str, int] = field(default_factory=dict)
    """Decisions per scorer that made them, all of the arm's (excluded ones too)."""
    fallback: list[Mapping[str, Any]] = field(default_factory=list)
    """Price-scored decisions, set aside until it is known whether the arm has a model."""
    model: bool = False
    """The arm is scored by a model: its ``model`` arm, or it scored a decision with one."""


def experiment_report(records: Iterable[Mapping[str, Any]], name: str) -> dict[str, Any]:
    """Compare the arms of one experiment: fill, completion rate and revenue per decision,
    each with a 95 % interval. Beacons are joined to decisions by ad serving id.

    A model arm is compared over the decisions its model scored: those the price fallback
    made (the model not loaded, scoring skipped for the deadline) would compare price
    against price; they are counted in ``excluded_decisions``, and ``scorer_mix`` shows
    every arm's decisions by scorer."""
    arms: dict[str, _Arm] = {}
    arm_of_ad: dict[str, tuple[str, str]] = {}
    beacons: list[Mapping[str, Any]] = []

    def count(arm_name: str, arm: _Arm, rec: Mapping[str, Any]) -> None:
        arm.decisions += 1
        did = f"{rec.get('seq')}-{rec.get('at')}"
        arm.revenue_by_decision[did] = 0
        if rec.get("ads"):
            arm.filled += 1
        for asid in rec.get("ad_serving_ids") or []:
            arm_of_ad[str(asid)] = (arm_name, did)

    for rec in records:
        if rec.get("type") == "decision" and rec.get("experiment") == name:
            arm_name = str(rec.get("arm"))
            arm = arms.setdefault(arm_name, _Arm(model=arm_name == "model"))
            scorer = str(rec.get("scorer") or "unknown")  # older records do not say
            arm.scorer_mix[scorer] = arm.scorer_mix.get(scorer, 0) + 1
            arm.model = arm.model or scorer == "model"
            if scorer == "price":
                arm.fallback.append(rec)
            else:
                count(arm_name, arm, rec)
        elif rec.get("type") == "beacon" and rec.get("counted"):
            beacons.append(rec)
    for arm_name, arm in arms.items():
        if not arm.model:  # a price arm: its price decisions are what it is compared on
            for rec in arm.fallback:
                count(arm_name, arm, rec)
    for b in beacons:
        hit = arm_of_ad.get(str(b.get("ad_serving_id")))
        if hit is None:
            continue
        arm = arms[hit[0]]
        if b.get("event") == "impression":
            arm.impressions += 1
            arm.revenue_by_decision[hit[1]] += billed_micros(b)
        elif b.get("event") == "complete":
            arm.completes += 1
    out = []
    for arm_name in sorted(arms):
        a = arms[arm_name]
        rev = [m / 1_000_000 for m in a.revenue_by_decision.values()]
        rev_mean, rev_lo, rev_hi = mean_ci(rev)
        out.append(
            {
                "arm": arm_name,
                "scorer_mix": dict(sorted(a.scorer_mix.items())),
                "excluded_decisions": len(a.fallback) if a.model else 0,
                "decisions": a.decisions,
                "fill_rate": a.filled / a.decisions if a.decisions else None,
                "fill_rate_ci": wilson(a.filled, a.decisions),
                "impressions": a.impressions,
                "completion_rate": a.completes / a.impressions if a.impressions else None,
                "completion_rate_ci": wilson(a.completes, a.impressions),
                "revenue": sum(a.revenue_by_decision.values()) / 1_000_000,
                "revenue_per_decision": rev_mean,
                "revenue_per_decision_ci": (rev_lo, rev_hi),
            }
        )
    return {"experiment": name, "arms": out}


def calibration_report(records: Iterable[Mapping[str, Any]], bins: int = 10) -> dict[str, Any]:
    """Predicted vs observed completion per decile of prediction, over served ads that got a
    counted impression (the model's drift shows as a gap between the two columns). Only
    decisions the model scored count: the price scorer's constant (an experiment's price
    arm, a deadline fallback) predicts nothing."""
    predicted: dict[str, tuple[float, str | None]] = {}
    impressed: set[str] = set()
    completed: set[str] = set()
    for rec in records:
        if rec.get("type") == "decision":
            if rec.get("scorer") != "model":
                continue
            for ad in rec.get("ads") or []:
                p = ad.get("prediction")
                if isinstance(p, int | float):
                    predicted[str(ad.get("ad_serving_id"))] = (float(p), rec.get("model_version"))
        elif rec.get("type") == "beacon" and rec.get("counted"):
            asid = str(rec.get("ad_serving_id"))
            if rec.get("event") == "impression":
                impressed.add(asid)
            elif rec.get("event") == "complete":
                completed.add(asid)
    # by prediction, then ad serving id (stable across runs): sorting on (prediction,
    # completed) would put a tie's misses in one decile and its completions in the next
    ads = sorted((a for a in impressed if a in predicted), key=lambda a: (predicted[a][0], a))
    versions = sorted({str(predicted[a][1]) for a in ads if predicted[a][1]})
    pooled = _deciles([(predicted[a][0], a in completed) for a in ads], bins)
    by_version = []
    for v in sorted({str(predicted[a][1] or "") for a in ads}):
        # an experiment's challenger and the primary are calibrated apart
        mine = [(predicted[a][0], a in completed) for a in ads if str(predicted[a][1] or "") == v]
        by_version.append({"model_version": v or None, **_deciles(mine, bins)})
    return {"model_versions": versions, **pooled, "by_version": by_version}


def _deciles(rows: Sequence[tuple[float, bool]], bins: int) -> dict[str, Any]:
    """``rows``: (prediction, completed), in prediction order."""
    out = []
    n = len(rows)
    for k in range(bins):
        chunk = rows[k * n // bins : (k + 1) * n // bins]
        if not chunk:
            continue
        out.append(
            {
                "decile": k + 1,
                "n": len(chunk),
                "predicted": sum(p for p, _ in chunk) / len(chunk),
                "observed": sum(1 for _, c in chunk if c) / len(chunk),
            }
        )
    gap = max((abs(r["predicted"] - r["observed"]) for r in out), default=None)
    return {"ads": n, "deciles": out, "max_gap": gap}
