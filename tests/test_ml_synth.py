"""Synthetic event logs: deterministic, the server's format, driven by the truth model."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from vastserver.catalog.load import load_catalog
from vastserver.eventlog import read_events
from vastserver.ml.synth import SynthConfig, generate_events, main_gen_events
from vastserver.ml.truth import AdExposure, ViewerModel
from vastserver.records import beacon_record

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = ROOT / "fixtures" / "demo-catalog.json"
SMALL = ["--sessions", "120", "--days", "1", "--start", "2026-11-10T00:00:00+00:00"]


def _records(directory: Path) -> list[dict[str, Any]]:
    return list(read_events(directory))


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "events"
    assert main_gen_events(["--out", str(out), "--seed", "11", *SMALL]) == 0
    return out


def test_same_seed_same_log_in_another_process(small_log: Path, tmp_path: Path) -> None:
    """Another interpreter with another hash seed writes the same records."""
    out = tmp_path / "again"
    code = (
        "import sys; from vastserver.ml.synth import main_gen_events; "
        f"sys.exit(main_gen_events({['--out', str(out), '--seed', '11', *SMALL]!r}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=120)
    first, second = _records(small_log), _records(out)
    assert len(first) > 500
    assert first == second
    # ... and a different seed writes a different log
    other = tmp_path / "other"
    assert main_gen_events(["--out", str(other), "--seed", "12", *SMALL]) == 0
    assert _records(other) != first


def test_log_is_in_the_server_format(small_log: Path) -> None:
    records = _records(small_log)
    kinds = Counter(r["type"] for r in records)
    assert set(kinds) == {"decision", "beacon"}
    served: set[str] = set()
    for r in records:
        if r["type"] == "decision":
            assert r["scorer"] == "explore"
            assert [a["ad_serving_id"] for a in r["ads"]] == r["ad_serving_ids"]
            served.update(r["ad_serving_ids"])
    beacon_keys = set(
        beacon_record(
            "impression",
            None,
            counted=False,
            result="advisory",
            caller_ip=None,
            device_ip=None,
            device_user_agent=None,
            error_code=None,
            at="",
        )
    ) | {"ts", "seq", "ad_serving_id", "line_item_id", "creative_id", "campaign_id",
         "advertiser_id", "price_cpm", "served_at", "pod_position", "viewer"}  # fmt: skip
    events: Counter[tuple[str, bool]] = Counter()
    for r in records:
        if r["type"] != "beacon":
            continue
        assert set(r) == beacon_keys
        assert r["ad_serving_id"] in served
        events[(r["event"], r["counted"])] += 1
    for ev in ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete"):
        assert events[(ev, True)] > 0, ev
    assert events[("impression", False)] > 0  # replays are logged, not counted
    assert events[("notUsed", True)] + events[("error", True)] > 0
    # time only moves forward within the log (one process, simulated clock)
    ts = [r["ts"] for r in records]
    assert ts == sorted(ts)
    assert [r["seq"] for r in records] == list(range(len(records)))


def test_price_scorer_and_generated_catalog(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["--out", str(out), "--seed", "3", "--line-items", "60", "--scorer", "price", *SMALL]
    assert main_gen_events(args) == 0
    decisions = [r for r in _records(out) if r["type"] == "decision"]
    assert decisions and {d["scorer"] for d in decisions} == {"price"}
    assert any(d["ads"] for d in decisions)


def test_cli_refuses_bad_usage(
    tmp_path: Path, small_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_gen_events(["--out", str(small_log), "--seed", "1"]) == 2  # not empty
    assert "already holds event segments" in capsys.readouterr().err
    # nor a directory whose subdirectory holds a log: readers would read both as one
    assert main_gen_events(["--out", str(small_log.parent), "--seed", "1"]) == 2
    assert capsys.readouterr().err == (
        f"gen-events: {small_log.parent} already holds event segments; use an empty directory\n"
    )
    (tmp_path / "file").write_text("")
    assert main_gen_events(["--out", str(tmp_path / "file"), "--seed", "1"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    both = ["--out", str(tmp_path / "x"), "--seed", "1", "--catalog", str(DEMO_CATALOG)]
    assert main_gen_events([*both, "--line-items", "5"]) == 2
    assert main_gen_events(["--out", str(tmp_path / "y"), "--seed", "1", "--days", "0"]) == 2
    missing = ["--out", str(tmp_path / "z"), "--seed", "1", "--catalog", str(tmp_path / "no")]
    assert main_gen_events(missing) == 1


def test_generate_events_api(tmp_path: Path) -> None:
    cat = load_catalog(DEMO_CATALOG)
    stats = generate_events(tmp_path / "ev", cat, SynthConfig(seed=5, sessions=30, days=0.5))
    assert stats.sessions == 30
    assert stats.ads > 0 and 0 < stats.completes <= stats.impressions <= stats.ads
    with pytest.raises(ValueError):
        generate_events(tmp_path / "ev2", cat, SynthConfig(seed=5, scorer="nope"))


def _x(**kw: Any) -> AdExposure:
    base: dict[str, Any] = {
        "device_type": "ctv",
        "genres": ("drama",),
        "live": False,
        "break_position": "mid",
        "slot": 1,
        "pod_size": 3,
        "creative_id": "cr-1",
        "creative_duration_ms": 15_000,
        "recent_exposures": 0,
        "hour_utc": 12,
    }
    base.update(kw)
    return AdExposure(**base)


def test_truth_model_effects_and_determinism() -> None:
    m = ViewerModel()
    p = m.p_complete
    assert p(_x(break_position="pre")) > p(_x()) > p(_x(break_position="post"))
    assert p(_x()) > p(_x(slot=3)) > p(_x(slot=5))
    assert p(_x(creative_duration_ms=6_000)) > p(_x()) > p(_x(creative_duration_ms=60_000))
    assert p(_x()) > p(_x(recent_exposures=10))
    assert p(_x()) > p(_x(live=True))
    assert p(_x()) > p(_x(device_type="mobile"))
    drop_ctv = p(_x()) - p(_x(creative_duration_ms=60_000))
    drop_mob = p(_x(device_type="mobile")) - p(
        _x(device_type="mobile", creative_duration_ms=60_000)
    )
    assert drop_mob > drop_ctv  # long creatives hurt more on small screens
    assert m.p_click(_x(device_type="mobile")) > 5 * m.p_click(_x())
    for x in (_x(), _x(device_type=None, genres=()), _x(break_position="post", slot=6)):
        assert 0.0 < m.p_impression(x) <= 1.0 and 0.0 < p(x) < 1.0 and 0.0 < m.p_click(x) < 0.1

    def draw(seed: int) -> list[Any]:
        rng = random.Random(seed)
        return [m.simulate(_x(slot=1 + i % 4), rng) for i in range(300)]

    assert draw(1) == draw(1)
    outcomes = draw(2)
    assert any(o.complete for o in outcomes) and any(
        o.impression and not o.complete for o in outcomes
    )
    for o in outcomes:
        if not o.impression:
            assert o.progress == () and not o.click
        else:
            assert list(o.progress) == ["start", "firstQuartile", "midpoint", "thirdQuartile",
                                        "complete"][: len(o.progress)]  # fmt: skip
