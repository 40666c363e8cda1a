"""``vastserver simulate``: a CTV traffic simulator against in-process servers."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vastserver.cliargs import (
    HelpWithDefaults,
    iso_datetime,
    positive_float,
    positive_int,
    unit_fraction,
)
from vastserver.sim.config import DEFAULT_START, Faults, SimConfig
from vastserver.sim.harness import SimError
from vastserver.sim.report import PLOTS_HINT, no_session_note, render_text, write_outputs
from vastserver.sim.runner import generated_catalog, run_comparison, run_simulation

__all__ = ["build_parser", "config_from_args", "main_simulate"]

DEFAULT_LINE_ITEMS = 60
DEFAULT_BUDGET_PER_HOUSEHOLD = 0.15


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vastserver simulate",
        formatter_class=HelpWithDefaults,
        description=(
            "Simulate CTV households against in-process vastserver instances on an "
            "accelerated clock and check caps, separation, budgets and pacing."
        ),
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--households", type=positive_int, default=2000, metavar="N", help="simulated households"
    )
    p.add_argument(
        "--hours",
        type=positive_float,
        default=24.0,
        metavar="H",
        help="simulated hours in which sessions start (default 24)",
    )
    p.add_argument(
        "--start",
        type=iso_datetime,
        default=DEFAULT_START,
        metavar="ISO",
        help=f"simulated start time (default {DEFAULT_START.isoformat()})",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--catalog", type=Path, metavar="PATH", help="catalog JSON to serve")
    src.add_argument(
        "--line-items",
        type=positive_int,
        metavar="N",
        help=f"serve a generated catalog (default {DEFAULT_LINE_ITEMS} line items)",
    )
    p.add_argument(
        "--budget-per-household",
        type=positive_float,
        metavar="F",
        help="daily impression budget per budgeted line item = F x households "
        f"(generated catalogs: default {DEFAULT_BUDGET_PER_HOUSEHOLD}; "
        "--catalog: keep its budgets unless given)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write report.json, report.txt, plots (created and checked before the run)",
    )
    p.add_argument(
        "--instances",
        type=int,
        choices=(1, 2),
        default=1,
        help="server instances (2 share --redis)",
    )
    p.add_argument("--redis", metavar="URL", help="redis:// URL shared by the instances")
    p.add_argument(
        "--flush-redis",
        action="store_true",
        help="allow deleting existing server keys (vs:*) in that Redis database",
    )
    p.add_argument("--model", type=Path, metavar="PATH", help="model bundle for the server")
    p.add_argument(
        "--compare-model",
        action="store_true",
        help="run price-only, --model and the ground truth (the perfect model) on the same "
        "seed; report the lift and the share of the perfect model's lift the model reaches",
    )
    p.add_argument(
        "--ssai-share",
        type=unit_fraction,
        default=0.3,
        metavar="F",
        help="share of sessions played through an SSAI stitcher (default 0.3)",
    )
    p.add_argument(
        "--lookahead-share",
        type=unit_fraction,
        default=0.5,
        metavar="F",
        help="share of SSAI sessions whose stitcher fetches three breaks at once (default 0.5)",
    )
    p.add_argument(
        "--sessions-per-household",
        type=positive_float,
        default=1.8,
        metavar="F",
        help="mean sessions per household per day (default 1.8)",
    )
    d = Faults()
    p.add_argument(
        "--lost-beacons", type=unit_fraction, default=d.lost, metavar="P",
        help="share of beacons the player never sends",
    )  # fmt: skip
    p.add_argument(
        "--duplicate-beacons", type=unit_fraction, default=d.duplicate, metavar="P",
        help="share of beacons sent twice",
    )  # fmt: skip
    p.add_argument(
        "--late-beacons", type=unit_fraction, default=d.late, metavar="P",
        help="share of beacons sent late (see --late-seconds)",
    )  # fmt: skip
    p.add_argument(
        "--late-seconds",
        type=float,
        nargs=2,
        default=(d.late_min_s, d.late_max_s),
        metavar=("MIN", "MAX"),
        help="how late a late beacon is (default 60 600)",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="server setting override by load_settings name, e.g. separation_breaks=2 (repeatable)",
    )
    p.add_argument(
        "--event-log",
        type=Path,
        metavar="DIR",
        help="let the servers write their event logs here (DIR/instance-N; with "
        "--compare-model DIR/price/..., DIR/model/... and DIR/truth/...)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    faults = Faults(
        lost=args.lost_beacons,
        duplicate=args.duplicate_beacons,
        late=args.late_beacons,
        late_min_s=args.late_seconds[0],
        late_max_s=args.late_seconds[1],
    )
    catalog_path: Path | None = args.catalog
    doc = None
    if catalog_path is None:
        doc = generated_catalog(
            args.line_items or DEFAULT_LINE_ITEMS,
            args.seed,
            now=args.start,
            households=args.households,
            budget_per_household=args.budget_per_household or DEFAULT_BUDGET_PER_HOUSEHOLD,
        )
    elif args.budget_per_household is not None:
        import json

        from vastserver.sim.runner import fit_budgets

        doc = fit_budgets(
            json.loads(catalog_path.read_text(encoding="utf-8")),
            households=args.households,
            per_household=args.budget_per_household,
            seed=args.seed,
        )
        catalog_path = None
    settings: dict[str, object] = {}
    for item in args.setting:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--setting wants NAME=VALUE, got {item!r}")
        settings[name.strip()] = value.strip()
    return SimConfig(
        seed=args.seed,
        settings=settings,
        households=args.households,
        hours=args.hours,
        start=args.start,
        catalog_path=catalog_path,
        catalog_doc=doc,
        instances=args.instances,
        redis_url=args.redis,
        flush_redis=args.flush_redis,
        model_path=args.model,
        ssai_share=args.ssai_share,
        lookahead_share=args.lookahead_share,
        sessions_per_household=args.sessions_per_household,
        faults=faults,
        env=dict(os.environ),
        event_log_dir=args.event_log,
    )


def _out_problem(out: Path) -> str | None:
    """Why ``--out`` cannot take the report, or None when it can. Checked (and the directory
    created) before the run, which can take minutes, so that it is not lost at its end."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        return f"cannot write the report into --out {out}: {e.strerror or e}"
    return None


def main_simulate(argv: Sequence[str]) -> int:
    """``vastserver simulate ...``: 0 when every guarantee held, 1 when one failed, 2 on a
    usage or set-up error, and 2 when the report could not be written into ``--out`` (it is
    printed all the same)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if args.compare_model and args.model is None:
        print("simulate: --compare-model needs --model PATH", file=sys.stderr)
        return 2
    if args.out is not None and (problem := _out_problem(args.out)) is not None:
        print(f"simulate: {problem}", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
        if args.compare_model:
            report = run_comparison(config, args.out)
            verdicts = [all(arm["verdicts"].values()) for arm in report["arms"].values()]
            ok = all(verdicts) and all(report["comparison"]["verdicts"].values())
        else:
            report = run_simulation(config, args.out)
            ok = all(report["verdicts"].values())
    except (SimError, OSError, ValueError) as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    first = next(iter(report["arms"].values())) if "arms" in report else report
    if (none := no_session_note(first)) is not None:  # the arms share the seed and the world
        print(f"simulate: {none}", file=sys.stderr)
    write_error = None
    if args.out is not None:
        try:
            written, skipped = write_outputs(report, args.out)
        except OSError as e:  # a full disk, the directory removed meanwhile: keep the run
            write_error = f"simulate: could not write the report into {args.out}: {e}"
        else:
            print(f"simulate: wrote {', '.join(written)} to {args.out}", file=sys.stderr)
            if skipped:
                print(
                    f"simulate: skipped the plots {', '.join(skipped)}: matplotlib is not "
                    f"installed ({PLOTS_HINT})",
                    file=sys.stderr,
                )
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    if write_error is not None:
        # 2 even when a verdict failed: the verdicts are on stdout, the files are missing
        print(f"{write_error} (the report is on stdout)", file=sys.stderr)
        return 2
    return 0 if ok else 1
