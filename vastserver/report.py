"""``vastserver report``: delivery per line item, read back from the event log.

The event log is the system of record: this report joins decisions (what was served) with
counted beacons (what was delivered) and, given the catalog, compares delivery with the pacing
target at the time of the last event.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from vastserver.catalog.load import CatalogError, load_catalog
from vastserver.catalog.model import Catalog, LineItem
from vastserver.eventlog import ReadStats, read_events
from vastserver.pipeline.delivery import daily_target_fraction, target_fraction


@dataclass(slots=True)
class LineItemDelivery:
    id: str
    served: int = 0
    impressions: int = 0
    starts: int = 0
    completes: int = 0
    clicks: int = 0
    errors: int = 0
    spend: float = 0.0
    by_hour: dict[str, int] = field(default_factory=dict)

    @property
    def completion_rate(self) -> float | None:
        return self.completes / self.impressions if self.impressions else None


@dataclass(slots=True)
class DeliveryReport:
    items: dict[str, LineItemDelivery]
    decisions: int
    filled: int
    first_at: datetime | None
    last_at: datetime | None
    torn_lines: int

    @property
    def fill_rate(self) -> float | None:
        return self.filled / self.decisions if self.decisions else None


def _at(rec: Mapping[str, Any]) -> datetime | None:
    raw = rec.get("at")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            return None
    return None


def build_report(records: Iterable[Mapping[str, Any]], torn_lines: int = 0) -> DeliveryReport:
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
                item(str(ad.get("line_item_id"))).served += 1
        elif kind == "beacon" and rec.get("counted") and rec.get("line_item_id"):
            it = item(str(rec["line_item_id"]))
            match rec.get("event"):
                case "impression":
                    it.impressions += 1
                    it.spend += float(rec.get("price_cpm") or 0) / 1000
                    if at is not None:
                        hour = at.strftime("%Y-%m-%dT%H")
                        it.by_hour[hour] = it.by_hour.get(hour, 0) + 1
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
    return DeliveryReport(items, decisions, filled, first, last, torn_lines)


def pacing_target(li: LineItem, catalog: Catalog, at: datetime) -> float | None:
    """Impressions the pacing curve expected by ``at`` (None without an impression budget)."""
    b = li.pacing.budget
    tz = catalog.campaigns[li.campaign_id].timezone
    if b.daily_impressions is not None:
        return b.daily_impressions * daily_target_fraction(at, tz, li.pacing.delivery)
    if b.impressions is not None:
        return b.impressions * target_fraction(at, li.start, li.end, li.pacing.delivery, tz)
    return None


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def render_text(rep: DeliveryReport, catalog: Catalog | None, out: TextIO) -> None:
    span = f"{rep.first_at} .. {rep.last_at}" if rep.first_at else "no events"
    out.write(f"events: {span}\n")
    out.write(
        f"decisions: {rep.decisions}  filled: {rep.filled}  fill rate: {_fmt(rep.fill_rate, True)}"
        f"  torn lines skipped: {rep.torn_lines}\n\n"
    )
    header = (
        f"{'line item':<34}{'served':>8}{'impr':>8}{'compl':>8}{'compl%':>8}"
        f"{'clicks':>7}{'spend':>10}{'target':>9}{'pacing':>8}\n"
    )
    out.write(header)
    out.write("-" * (len(header) - 1) + "\n")
    for li_id in sorted(rep.items):
        it = rep.items[li_id]
        target = None
        if catalog is not None and rep.last_at is not None and li_id in catalog.line_items:
            target = pacing_target(catalog.line_items[li_id], catalog, rep.last_at)
        ratio = it.impressions / target if target else None
        out.write(
            f"{li_id[:33]:<34}{it.served:>8}{it.impressions:>8}{it.completes:>8}"
            f"{_fmt(it.completion_rate, True):>8}{it.clicks:>7}{it.spend:>10.2f}"
            f"{('-' if target is None else f'{target:.0f}'):>9}{_fmt(ratio, True):>8}\n"
        )


def report_json(rep: DeliveryReport, catalog: Catalog | None) -> dict[str, Any]:
    rows = []
    for li_id in sorted(rep.items):
        it = rep.items[li_id]
        target = None
        if catalog is not None and rep.last_at is not None and li_id in catalog.line_items:
            target = pacing_target(catalog.line_items[li_id], catalog, rep.last_at)
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
                "pacing_target": target,
                "pacing_ratio": it.impressions / target if target else None,
                "impressions_by_hour": it.by_hour,
            }
        )
    return {
        "decisions": rep.decisions,
        "filled": rep.filled,
        "fill_rate": rep.fill_rate,
        "first_at": rep.first_at.isoformat() if rep.first_at else None,
        "last_at": rep.last_at.isoformat() if rep.last_at else None,
        "line_items": rows,
    }


def main_report(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="vastserver report", description=__doc__)
    ap.add_argument("events", nargs="*", default=["var/events"], help="event-log files/dirs")
    ap.add_argument("--catalog", help="catalog JSON, for pacing targets")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(list(argv))
    catalog = None
    if args.catalog:
        try:
            catalog = load_catalog(Path(args.catalog))
        except CatalogError as e:
            print(str(e), file=sys.stderr)
            return 2
    paths = [Path(p) for p in args.events]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"no such event log: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    stats = ReadStats()
    rep = build_report(read_events(paths, stats=stats, skip_invalid=True), stats.torn_lines)
    if args.json:
        json.dump(report_json(rep, catalog), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(rep, catalog, sys.stdout)
    return 0

