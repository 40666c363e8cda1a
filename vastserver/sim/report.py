"""The simulation report: JSON (every number), text (the verdicts first) and optional plots.

Every number in the report is a function of the seed and the configuration; only the
``run`` section (wall-clock seconds, host facts) differs between two runs of one seed.
"""

from __future__ import annotations

import importlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from vastserver.catalog.model import Budget, Catalog, Delivery, LineItem
from vastserver.pipeline.delivery import (
    RESERVATION_S,
    SeparationRules,
    amount_micros,
    local_day,
    spend_micros,
)
from vastserver.sim.checks import check_frequency_caps, check_separation, check_viewer_identity
from vastserver.sim.engine import Engine
from vastserver.sim.records import ServedAd

__all__ = [
    "OVERDELIVERY_LIMIT_PCT",
    "PLOTS_HINT",
    "build_report",
    "comparison_report",
    "deterministic_part",
    "no_session_note",
    "render_text",
    "verdicts",
    "write_outputs",
]

OVERDELIVERY_LIMIT_PCT = 1.0
LIFT_NOISE_Z = 2.0
"""The model arm's expected completion rate may fall below price-only's by at most this many
standard errors of the difference (the arms' sampling noise) before the verdict fails."""


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def _stderr(total: float, total_sq: float, n: int) -> float | None:
    """Standard error of the mean of ``n`` values from their sum and sum of squares."""
    if n < 2:
        return None
    mean = total / n
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    return round(math.sqrt(var / n), 6)


def _budget_rows(
    owner: str,
    kind: str,
    budget: Budget,
    ads: Sequence[ServedAd],
    catalog: Catalog,
    start: datetime,
) -> list[dict[str, Any]]:
    """Delivered vs limit for every limit of one budget, with the server's integer units
    (spend in micros per impression: :func:`spend_micros` of its billed price, nothing for a
    flat line item's)."""
    counted = [a for a in ads if a.impression_arrival_ms is not None]
    late = {
        a.serving_id
        for a in counted
        if (a.impression_arrival_ms or 0) > a.served_ms + RESERVATION_S * 1000
    }
    tz_of = {a.serving_id: catalog.campaigns[a.campaign].timezone for a in counted}
    rows: list[dict[str, Any]] = []

    def add(limit_kind: str, limit: float | None, daily: bool, spend: bool) -> None:
        if limit is None:
            return
        lim = amount_micros(limit) if spend else int(limit)
        groups: dict[str, list[ServedAd]] = defaultdict(list)
        for a in counted:
            day = ""
            if daily:
                served = start + timedelta(milliseconds=a.served_ms)
                day = local_day(served, tz_of[a.serving_id])
            groups[day].append(a)
        if not groups:
            groups[""] = []

        def used(items: Sequence[ServedAd]) -> int:
            return sum(spend_micros(a.price_micros) for a in items) if spend else len(items)

        def over_pct(amount: int) -> float:
            return round(100.0 * max(0, amount - lim) / lim, 3) if lim else 0.0

        def unit(amount: int) -> float:
            return amount if not spend else amount / 1_000_000

        for day, items in sorted(groups.items()):
            all_used = used(items)
            in_time = used([a for a in items if a.serving_id not in late])
            rows.append(
                {
                    "owner": owner,
                    "kind": kind,
                    "limit": limit_kind,
                    "day": day or None,
                    "budget": unit(lim),
                    "delivered": unit(all_used),
                    "delivered_within_reservation": unit(in_time),
                    # what the server could hold back: impressions counted while their
                    # reservation was live (the others it learned of too late)
                    "overdelivery_pct": over_pct(in_time),
                    "overdelivery_with_late_pct": over_pct(all_used),
                    "late_impressions_after_reservation": sum(
                        1 for a in items if a.serving_id in late
                    ),
                }
            )

    add("impressions", budget.impressions, False, False)
    add("daily_impressions", budget.daily_impressions, True, False)
    add("spend", budget.spend, False, True)
    add("daily_spend", budget.daily_spend, True, True)
    return rows


def billed_revenue(ads: Sequence[ServedAd]) -> float:
    """What the ads with a counted impression billed, in currency, as the server bills it:
    whole micros per impression (:func:`spend_micros`, what its ``spend`` adds up), divided
    once. ``price_micros / 1e9`` per impression counted fractions of a micro it does not."""
    micros = sum(spend_micros(a.price_micros) for a in ads if a.impression_arrival_ms is not None)
    return micros / 1_000_000


def _hourly(engine: Engine) -> list[dict[str, Any]]:
    per: dict[int, Counter[str]] = defaultdict(Counter)
    for p in engine.pods:
        h = p.served_ms // 3_600_000
        per[h]["pods"] += 1
        per[h]["filled"] += bool(p.ads)
    for a in engine.ads.values():
        if a.played_ms is not None:
            h = a.played_ms // 3_600_000
            per[h]["impressions"] += 1
            per[h]["completes"] += a.complete
    out = []
    for h in sorted(per):
        c = per[h]
        out.append(
            {
                "hour": h,
                "pods": c["pods"],
                "fill_rate": _rate(c["filled"], c["pods"]),
                "impressions": c["impressions"],
                "completion_rate": _rate(c["completes"], c["impressions"]),
            }
        )
    return out


FULL_THROTTLE = 0.999
"""A throttle at or above this serves every chance the line item gets."""


def _period_start(li: LineItem, catalog: Catalog, at: datetime) -> datetime:
    """When the budget's period that holds ``at`` began: the local midnight for a daily
    budget (the flight's start on its first day), else the flight's start."""
    if li.pacing.budget.daily_impressions is None:
        return li.start
    tz = ZoneInfo(catalog.campaigns[li.campaign_id].timezone)
    return max(li.start, at.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0))


def _pct_figure(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _pacing(engine: Engine, catalog: Catalog, served: Mapping[str, int]) -> list[dict[str, Any]]:
    """Delivery against the curve, per budgeted line item and sample.

    The deviation figures read only samples in budget periods that began inside the window:
    a window that opens at 21:00 local finds a daily budget ~90 % behind its curve with
    nothing delivered, a gap no pacing could have avoided. And a line item behind its curve
    while its throttle is 1 (every chance served) lacks matching traffic, which pacing cannot
    create; the pacing's own error is being ahead of the curve, or behind it while holding
    back. The three are reported apart."""
    out = []
    window_start = engine.clock.start
    for li_id in engine.budgeted:
        li = catalog.line_items[li_id]
        b = li.pacing.budget
        budget = b.daily_impressions if b.daily_impressions is not None else b.impressions
        rows = []
        worst: float | None = None
        controller: float | None = None
        starved: float | None = None
        partial: float | None = None
        judged = budget and li.pacing.delivery is not Delivery.ASAP and served.get(li_id, 0) > 0
        for s in engine.samples:
            target = s.expected_target.get(li_id)
            delivered = s.delivered.get(li_id, 0)
            throttle = s.throttle.get(li_id, 1.0)
            rows.append(
                {
                    "at_h": round(s.at_ms / 3_600_000, 3),
                    "delivered": delivered,
                    "server_delivered_lifetime": s.server_delivered.get(li_id, 0),
                    "target": None if target is None else round(target, 2),
                    "server_target": s.server_target.get(li_id),
                    "throttle": round(throttle, 4),
                }
            )
            if not judged or target is None:
                continue
            assert budget  # for mypy: judged
            gap = (delivered - target) / budget * 100
            at = engine.clock.at(s.at_ms)
            if _period_start(li, catalog, at) < window_start:
                partial = max(partial or 0.0, abs(gap))
                continue
            worst = max(worst or 0.0, abs(gap))
            if gap < 0 and throttle >= FULL_THROTTLE:
                starved = max(starved or 0.0, -gap)
            else:
                controller = max(controller or 0.0, abs(gap))
        out.append(
            {
                "line_item": li_id,
                "tier": li.tier.name.lower(),
                "delivery": li.pacing.delivery.value,
                "budget_kind": "daily_impressions"
                if b.daily_impressions is not None
                else "impressions",
                "budget": budget,
                "served": served.get(li_id, 0),
                "max_abs_deviation_pct_of_budget": _pct_figure(worst),
                "pacing_deviation_pct_of_budget": _pct_figure(controller),
                "behind_at_full_throttle_pct_of_budget": _pct_figure(starved),
                "period_begun_before_window_pct_of_budget": _pct_figure(partial),
                "samples": rows,
            }
        )
    return out


def build_report(
    engine: Engine,
    catalog: Catalog,
    *,
    config: Mapping[str, Any],
    separation: SeparationRules,
    final_rows: Sequence[Mapping[str, Any]],
    server_metrics: Mapping[str, Mapping[str, int]],
    scorer: Mapping[str, Any],
    world: Mapping[str, int],
) -> dict[str, Any]:
    st = engine.stats
    ads = list(engine.ads.values())
    caps = check_frequency_caps(catalog, ads, engine.pods)
    sep = check_separation(engine.pods, engine.ads, separation)
    identity = check_viewer_identity(ads)

    # Budgets: every line item and campaign limit, from the impressions the server counted.
    by_li: dict[str, list[ServedAd]] = defaultdict(list)
    by_camp: dict[str, list[ServedAd]] = defaultdict(list)
    for a in ads:
        by_li[a.line_item].append(a)
        by_camp[a.campaign].append(a)
    budgets: list[dict[str, Any]] = []
    for li in sorted(catalog.line_items.values(), key=lambda x: x.id):
        budgets += _budget_rows(
            li.id, "line_item", li.pacing.budget, by_li[li.id], catalog, engine.clock.start
        )
    for camp in sorted(catalog.campaigns.values(), key=lambda x: x.id):
        budgets += _budget_rows(
            camp.id, "campaign", camp.budget, by_camp[camp.id], catalog, engine.clock.start
        )
    worst_over = max((r["overdelivery_pct"] for r in budgets), default=0.0)
    worst_with_late = max((r["overdelivery_with_late_pct"] for r in budgets), default=0.0)

    # The server's counters must equal the simulator's replica of its counting rules.
    mismatches = []
    for row in final_rows:
        li_id = str(row.get("id"))
        for event, field in (("impression", "delivered_impressions"), ("complete", "completes")):
            want = engine.counted[(li_id, event)]
            got = int(row.get(field, 0))
            if want != got:
                mismatches.append(
                    {"line_item": li_id, "event": event, "simulator": want, "server": got}
                )
    instance_mismatch = sorted({m for s in engine.samples for m in s.mismatch_between_instances})

    played = [a for a in ads if a.played_ms is not None]
    completes = sum(a.complete for a in played)
    expected = sum(a.p_complete or 0.0 for a in played)
    expected_sq = sum((a.p_complete or 0.0) ** 2 for a in played)
    counted_imps = sum(engine.counted[(li, "impression")] for li in catalog.line_items)
    counted_completes = sum(engine.counted[(li, "complete")] for li in catalog.line_items)
    revenue = billed_revenue(ads)
    statuses = dict(sorted(engine.statuses.items()))
    report: dict[str, Any] = {
        "config": dict(config),
        "scorer": dict(scorer),
        "world": dict(world),
        "traffic": {
            "sessions": st["sessions"],
            "sessions_player": st["sessions_player"],
            "sessions_ssai": st["sessions_ssai"],
            "sessions_ssai_lookahead": st["sessions_lookahead"],
            "vast_requests": st["vast_requests"],
            "pods": st["pods"],
            "pods_filled": st["pods_filled"],
            "fill_rate": _rate(st["pods_filled"], st["pods"]),
            "time_fill_rate": _rate(st["pod_ms_filled"], st["pod_ms_requested"]),
            "ads_served": st["ads_served"],
            "ads_played": st["impressions_true"],
            "ads_failed": {
                "error": st["ads_failed_error"],
                "not_used": st["ads_failed_not_used"],
                "silent": st["ads_failed_silent"],
            },
            "ads_unplayed_after_leaving": st["ads_unplayed"],
            "pods_prefetched_unplayed": st["pods_prefetched_unplayed"],
            "sessions_left_during_ad": st["sessions_left_during_ad"],
            "sessions_left_before_break": st["sessions_left_before_break"],
            "requests": {
                f"{ep} {status}": n for (ep, status), n in sorted(engine.servers.requests.items())
            },
            "requests_per_instance": {
                str(i): n for i, n in sorted(engine.servers.per_instance.items())
            },
        },
        "beacons": {
            "fired": st["beacons_fired"],
            "sent": st["beacons_sent"],
            "lost": st["beacons_lost"],
            "late": st["beacons_late"],
            "duplicated": st["beacons_duplicated"],
            "replays_sent": st["replays_sent"],
            "settle_conflicts": st["settle_conflicts"],
            "statuses": statuses,
            "server_metrics": dict(server_metrics.get("beacons", {})),
        },
        "completion": {
            "impressions": len(played),
            "completes": completes,
            "rate": _rate(completes, len(played)),
            "expected_completes": round(expected, 3),
            "expected_rate": _rate(expected, len(played)),
            "expected_rate_stderr": _stderr(expected, expected_sq, len(played)),
            "server_counted_impressions": counted_imps,
            "server_counted_completes": counted_completes,
            "server_counted_rate": _rate(counted_completes, counted_imps),
            "revenue": round(revenue, 4),
        },
        "frequency_caps": caps.as_dict(),
        "competitive_separation": sep.as_dict(),
        "viewer_identity": identity,
        "delivery": {
            "max_overdelivery_pct": worst_over,
            "max_overdelivery_with_late_pct": worst_with_late,
            "budgets": budgets,
            "pacing": _pacing(
                engine, catalog, {str(r.get("id")): int(r.get("served", 0)) for r in final_rows}
            ),
        },
        "server": {
            "scorer_calls": dict(server_metrics.get("scorer_calls", {})),
            "pods": dict(server_metrics.get("pods", {})),
            "degradations": dict(server_metrics.get("degradations", {})),
            "shed": dict(server_metrics.get("shed", {})),
            "store_errors": dict(server_metrics.get("store_errors", {})),
        },
        "hourly": _hourly(engine),
        "consistency": {
            "server_vs_simulator_counts": mismatches,
            "instances_disagree_on": instance_mismatch,
            "anomalies": st["anomalies"],
            "token_session_mismatches": st["token_session_mismatches"],
            "anomaly_examples": list(engine.anomalies),
        },
    }
    report["verdicts"] = verdicts(report)
    return report


def verdicts(report: Mapping[str, Any]) -> dict[str, bool]:
    d = report["delivery"]
    return {
        "frequency_caps": report["frequency_caps"]["violations"] == 0,
        "competitive_separation": report["competitive_separation"]["violations"] == 0,
        "stream_separation": report["competitive_separation"]["stream_creative_repeats"] == 0,
        "overdelivery_within_1pct": d["max_overdelivery_pct"] <= OVERDELIVERY_LIMIT_PCT,
        "fill_rate_positive": (report["traffic"]["fill_rate"] or 0) > 0,
        "counts_match_server": not report["consistency"]["server_vs_simulator_counts"],
        "instances_agree": not report["consistency"]["instances_disagree_on"],
        "no_anomalies": report["consistency"]["anomalies"] == 0,
        "no_degradations": not (
            report["server"]["degradations"]
            or report["server"]["shed"]
            or report["server"]["store_errors"]
        ),
        "scorer_used": _scorer_used(report),
        "viewer_identity": (
            report["viewer_identity"]["viewers_with_several_hashes"] == 0
            and report["viewer_identity"]["hashes_shared_by_several_viewers"] == 0
        ),
    }


def _scorer_used(report: Mapping[str, Any]) -> bool:
    """The configured scorer scored the decisions, and no other (timed) scorer did."""
    calls = report["server"]["scorer_calls"]
    name = report["scorer"].get("name")
    if not report["traffic"]["pods"]:
        return True
    return set(calls) <= {name} and calls.get(name, 0) > 0


def deterministic_part(report: Mapping[str, Any]) -> dict[str, Any]:
    """Everything but the ``run`` section (wall time and host facts)."""
    out = {k: v for k, v in report.items() if k != "run"}
    if "arms" in out:
        out["arms"] = {k: deterministic_part(v) for k, v in out["arms"].items()}
    return out


def comparison_report(
    price: dict[str, Any], model: dict[str, Any], truth: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The arms side by side and each ranking's change against price-only ranking. With the
    ``truth`` arm (ranked by the ground truth itself, the perfect model), the ceiling of the
    expected lift and the share of it the model reaches."""

    def arm(r: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "scorer": r["scorer"],
            "completion_rate": r["completion"]["rate"],
            "expected_completion_rate": r["completion"]["expected_rate"],
            "impressions": r["completion"]["impressions"],
            "completes": r["completion"]["completes"],
            "revenue": r["completion"]["revenue"],
            "fill_rate": r["traffic"]["fill_rate"],
            "verdicts": r["verdicts"],
        }

    def change(other: Mapping[str, Any], key: str) -> float | None:
        """``other``'s ``key`` against the price arm's, in %, unrounded."""
        p, m = price["completion"][key], other["completion"][key]
        return (m / p - 1.0) * 100 if p and m is not None else None

    def pct(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    noise = _lift_noise_pct(price["completion"], model["completion"])
    lift = change(model, "expected_rate")
    comparison: dict[str, Any] = {
        "price": arm(price),
        "model": arm(model),
        "completion_lift_pct": pct(change(model, "rate")),
        "expected_completion_lift_pct": pct(lift),
        "expected_completion_lift_noise_pct": pct(noise),
        "verdicts": {
            # the model's expected completions per impression are not below price-only
            # ranking's beyond the noise (unknown noise or rates: not judged, passes)
            "model_keeps_expected_completion_rate": lift is None or noise is None or lift >= -noise,
        },
        "expected_completes_lift_pct": pct(change(model, "expected_completes")),
        "completes_lift_pct": pct(change(model, "completes")),
        "revenue_change_pct": pct(change(model, "revenue")),
    }
    arms = {"price": price, "model": model}
    if truth is not None:
        arms["truth"] = truth
        ceiling = change(truth, "expected_rate")
        reached = change(model, "expected_rate")
        comparison |= {
            "truth": arm(truth),
            "truth_expected_completion_lift_pct": pct(ceiling),
            "truth_expected_completes_lift_pct": pct(change(truth, "expected_completes")),
            "truth_revenue_change_pct": pct(change(truth, "revenue")),
            "model_share_of_truth_lift_pct": round(reached / ceiling * 100, 1)
            if ceiling is not None and reached is not None and ceiling > 0
            else None,
        }
    return {"comparison": comparison, "arms": arms}


def _lift_noise_pct(price: Mapping[str, Any], model: Mapping[str, Any]) -> float | None:
    """``LIFT_NOISE_Z`` standard errors of the difference of the arms' expected completion
    rates, as % of price-only's rate; the arms taken as independent samples (they share
    viewers and draws, so this overstates the noise: the check is lenient)."""
    p = float(price["expected_rate"] or 0.0)
    se_p, se_m = price["expected_rate_stderr"], model["expected_rate_stderr"]
    if not p or se_p is None or se_m is None:
        return None
    return LIFT_NOISE_Z * math.sqrt(float(se_p) ** 2 + float(se_m) ** 2) / p * 100


# ---------------------------------------------------------------------------- text


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.2f} %"


def _nonzero(server: Mapping[str, Any]) -> str:
    bad = {k: server[k] for k in ("degradations", "shed", "store_errors") if server[k]}
    return json.dumps(bad) if bad else ""


def no_session_note(report: Mapping[str, Any]) -> str | None:
    """What to say of a run in which no session started (its verdicts checked nothing)."""
    if report["traffic"]["sessions"]:
        return None
    cfg = report["config"]
    return (
        f"No session was simulated: {cfg['households']} households started none in "
        f"{cfg['hours']} h (give more --households or --hours); the checks had nothing to check."
    )


def render_text(report: Mapping[str, Any]) -> str:
    if "arms" in report:
        c = report["comparison"]
        names = [n for n in ("price", "model", "truth") if n in c]
        lines = [
            "vastserver simulate: model ranking vs price-only ranking (same seed)"
            + (", and the ground truth as the perfect model" if "truth" in c else ""),
            "",
            f"  {'':<22}" + "".join(f"{n:>14}" for n in names),
        ]
        for label, key, fmt in (
            ("completion rate", "completion_rate", _pct),
            ("expected (truth)", "expected_completion_rate", _pct),
            ("impressions", "impressions", str),
            ("completes", "completes", str),
            ("revenue", "revenue", lambda v: f"{v:.2f}"),
            ("fill rate", "fill_rate", _pct),
        ):
            lines.append(f"  {label:<22}" + "".join(f"{fmt(c[n][key]):>14}" for n in names))
        lines += [
            "  scorers: "
            + " vs ".join(
                f"{c[n]['scorer'].get('name')} ({c[n]['scorer'].get('version')})" for n in names
            ),
            f"  completion-rate lift: {c['completion_lift_pct']} %   "
            f"completes lift: {c['completes_lift_pct']} %   "
            f"revenue change: {c['revenue_change_pct']} %",
            f"  expected (the ground truth's probabilities of the ads played, no draw luck): "
            f"completion-rate lift {c['expected_completion_lift_pct']} %, "
            f"completes lift {c['expected_completes_lift_pct']} %",
            f"  [{'PASS' if c['verdicts']['model_keeps_expected_completion_rate'] else 'FAIL'}]"
            f" the model's expected completion rate is not below price-only's beyond the noise "
            f"(lift {c['expected_completion_lift_pct']} %, allowed down to "
            f"-{c['expected_completion_lift_noise_pct']} %)",
        ]
        if "truth" in c:
            share = c["model_share_of_truth_lift_pct"]
            lines.append(
                "  the perfect model (ranking by the ground truth itself): expected "
                f"completion-rate lift {c['truth_expected_completion_lift_pct']} %, completes "
                f"lift {c['truth_expected_completes_lift_pct']} %, revenue change "
                f"{c['truth_revenue_change_pct']} %; "
                + (
                    "it does not lift the rate here, so no share is given"
                    if share is None
                    else f"the model reaches {share} % of its rate lift"
                )
            )
        lines.append("")
        for name in names:
            lines += [f"==== {name} arm ====", render_text(report["arms"][name]), ""]
        return "\n".join(lines)

    t, b, c = report["traffic"], report["beacons"], report["completion"]
    caps, sep, d = report["frequency_caps"], report["competitive_separation"], report["delivery"]
    cfg = report["config"]
    v = report["verdicts"]

    def ok(flag: bool) -> str:
        return "PASS" if flag else "FAIL"

    none = no_session_note(report)
    lines = [
        f"vastserver simulate: seed {cfg['seed']}, {cfg['households']} households, "
        f"{cfg['hours']} h from {cfg['start']}, {cfg['instances']} instance(s)"
        f"{' on Redis' if cfg.get('redis') else ''}, scorer {report['scorer'].get('name')}",
        *(["", none] if none else []),
        "",
        "Guarantees",
        f"  [{ok(v['frequency_caps'])}] frequency-cap violations: {caps['violations']} "
        f"({caps['cap_checks']} cap checks over {caps['plays_checked']} plays; over cap "
        f"because of beacon faults: {caps['over_cap_by_cause']['beacon_faults']}, "
        f"scope semantics: {caps['over_cap_by_cause']['scope_semantics']})",
        f"  [{ok(v['competitive_separation'])}] competitive-separation violations: "
        f"{sep['violations']} (in pod {sep['in_pod_competitive']}, one advertiser twice in a "
        f"pod {sep['in_pod_same_advertiser']} (a creative twice "
        f"{sep['in_pod_same_creative']}), across breaks {sep['cross_break_competitive']}; "
        f"{sep['pods_checked']} pods)",
        f"  [{ok(v['overdelivery_within_1pct'])}] max overdelivery: "
        f"{d['max_overdelivery_pct']:.3f} % of budget (limit {OVERDELIVERY_LIMIT_PCT} %; "
        f"with impressions counted after their reservation lapsed "
        f"{d['max_overdelivery_with_late_pct']:.3f} %)",
        f"  [{ok(v['fill_rate_positive'])}] fill rate: {_pct(t['fill_rate'])} of pods, "
        f"{_pct(t['time_fill_rate'])} of break time",
        f"  [{ok(v['counts_match_server'])}] server counters match the simulator's replica: "
        f"{len(report['consistency']['server_vs_simulator_counts'])} mismatches",
        f"  [{ok(v['instances_agree'])}] instances agree on delivery counters",
        f"  [{ok(v['viewer_identity'])}] one viewer hash per viewer "
        f"({report['viewer_identity']['viewers']} viewers)",
        f"  [{ok(v['no_anomalies'])}] protocol anomalies: {report['consistency']['anomalies']}",
        f"  [{ok(v['no_degradations'])}] no decision degraded, shed or hit a store error "
        f"{_nonzero(report['server'])}",
        f"  [{ok(v['scorer_used'])}] decisions scored by '{report['scorer'].get('name')}' "
        f"(scorer calls: {report['server']['scorer_calls']})",
        f"  [{ok(v['stream_separation'])}] stream separation (a creative again within "
        f"{cfg['separation']['creative_breaks']} breaks or "
        f"{cfg['separation']['creative_minutes']} min of a session): "
        f"{sep['stream_creative_repeats']}",
        "",
        "Traffic",
        f"  sessions {t['sessions']} (player {t['sessions_player']}, SSAI {t['sessions_ssai']}, "
        f"{t['sessions_ssai_lookahead']} of them fetching breaks ahead), "
        f"pods {t['pods']} (filled {t['pods_filled']}), ads served {t['ads_served']}, "
        f"played {t['ads_played']}",
        f"  completion rate {_pct(c['rate'])} (ground truth; server counted "
        f"{_pct(c['server_counted_rate'])}), revenue {c['revenue']:.2f}",
        f"  beacons fired {b['fired']}: lost {b['lost']}, late {b['late']}, duplicated "
        f"{b['duplicated']}, sent {b['sent']} (replays {b['replays_sent']}, "
        f"impression/notUsed conflicts {b['settle_conflicts']})",
        "",
        "Pacing (budgeted line items live in the window: delivered in the budget's period vs",
        "the curve at the end of the window; max |delivered - target| in periods begun in the",
        "window, split into the pacing's own error and behind the curve at full throttle)",
    ]
    horizon_h = float(cfg["hours"])
    for p in d["pacing"]:
        within = [x for x in p["samples"] if x["at_h"] <= horizon_h + 1e-9]
        last = within[-1] if within else {}
        dev = p["max_abs_deviation_pct_of_budget"]
        if not p["served"]:
            verdict = "never served (no matching traffic)"
        elif p["delivery"] == "asap":
            verdict = "asap: no curve"
        elif dev is None:
            verdict = (
                "no period begun in the window (behind by up to "
                f"{p['period_begun_before_window_pct_of_budget'] or 0:.2f} % of budget "
                "in the one begun before it)"
            )
        else:
            verdict = (
                f"max |dev| {dev:.2f} % of budget: pacing "
                f"{p['pacing_deviation_pct_of_budget'] or 0:.2f} %, behind at full throttle "
                f"{p['behind_at_full_throttle_pct_of_budget'] or 0:.2f} %"
            )
        lines.append(
            f"  {p['line_item']:<30} {p['delivery']:<11} budget {p['budget']:>8} "
            f"delivered {last.get('delivered', 0):>7} target {last.get('target') or 0:>9.1f}  "
            f"{verdict}"
        )
    over = [r for r in d["budgets"] if r["overdelivery_with_late_pct"] > 0]
    if over:
        lines.append("")
        lines.append("Budgets delivered beyond their limit")
        for r in over[:20]:
            lines.append(
                f"  {r['kind']} {r['owner']} {r['limit']} {r['day'] or ''}: {r['delivered']} of "
                f"{r['budget']} (+{r['overdelivery_with_late_pct']} %); within their "
                f"reservation {r['delivered_within_reservation']} "
                f"(+{r['overdelivery_pct']} %); impressions counted after their "
                f"reservation lapsed: {r['late_impressions_after_reservation']}"
            )
    if caps["examples"]:
        lines += ["", "Frequency-cap excess examples (first few)"]
        for e in caps["examples"][:5]:
            lines.append(f"  {json.dumps(e)[:300]}")
    if report["consistency"]["anomaly_examples"]:
        lines += ["", "Anomalies (first few)"]
        lines += [f"  {a}" for a in report["consistency"]["anomaly_examples"][:10]]
    run = report.get("run")
    if run:
        lines += ["", f"Run: {run.get('wall_seconds')} s wall clock"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- files


PLOTS_HINT = "pip install matplotlib"
"""How to get the plots (matplotlib is no dependency of the server, nor an extra)."""


def _pyplot() -> Any | None:
    """``matplotlib.pyplot`` drawing to files, or None when matplotlib is not installed."""
    try:
        mpl: Any = importlib.import_module("matplotlib")
        mpl.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None


def _plot_names(report: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The plots a report has data for."""
    return [
        *([f"{prefix}pacing.png"] if report["delivery"]["pacing"] else []),
        *([f"{prefix}traffic.png"] if report["hourly"] else []),
    ]


def _plots(plt: Any, report: Mapping[str, Any], out: Path, prefix: str = "") -> list[str]:
    written: list[str] = []
    pacing = report["delivery"]["pacing"]
    if pacing:
        n = min(len(pacing), 12)
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
        for k, p in enumerate(pacing[:n]):
            ax = axes[k // cols][k % cols]
            xs = [s["at_h"] for s in p["samples"]]
            ax.plot(xs, [s["delivered"] for s in p["samples"]], label="delivered")
            ax.plot(xs, [s["target"] or 0 for s in p["samples"]], "--", label="target curve")
            ax.axhline(p["budget"], color="grey", lw=0.8, label="budget")
            ax.set_title(f"{p['line_item']} ({p['delivery']})", fontsize=9)
            ax.set_xlabel("simulated hours")
            ax.legend(fontsize=7)
        for k in range(n, rows * cols):
            axes[k // cols][k % cols].axis("off")
        fig.tight_layout()
        name = f"{prefix}pacing.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    hourly = report["hourly"]
    if hourly:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        hs = [h["hour"] for h in hourly]
        ax.bar(hs, [h["pods"] for h in hourly], color="#9bb", label="pods requested")
        ax.set_xlabel("simulated hour")
        ax.set_ylabel("pods")
        ax2 = ax.twinx()
        ax2.plot(hs, [h["fill_rate"] or 0 for h in hourly], "o-", label="fill rate")
        ax2.plot(hs, [h["completion_rate"] or 0 for h in hourly], "s-", label="completion rate")
        ax2.set_ylim(0, 1.05)
        ax2.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        name = f"{prefix}traffic.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def write_outputs(report: dict[str, Any], out: Path) -> tuple[list[str], list[str]]:
    """``report.json``, ``report.txt`` and the plots (when matplotlib is installed). Returns
    the files written and the plots left out for want of matplotlib (see ``PLOTS_HINT``)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = (
        [(f"{name}-", arm) for name, arm in report["arms"].items()]
        if "arms" in report
        else [("", report)]
    )
    plt = _pyplot()
    plots: list[str] = []
    skipped: list[str] = []
    for prefix, part in parts:
        if plt is None:
            skipped += _plot_names(part, prefix)
        else:
            plots += _plots(plt, part, out, prefix)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    (out / "report.txt").write_text(render_text(report) + "\n")
    return ["report.json", "report.txt", *plots], skipped
