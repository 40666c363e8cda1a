"""``vastserver simulate``: a short simulated evening against real in-process servers.

The guarantees (no frequency-cap or competitive-separation violation, overdelivery within
1 %, fill) are checked on what the simulated players actually played; determinism by running
the same seed twice; the two-instance mode against a real ``redis-server``. The checkers
themselves are tested on hand-made records so a "0 violations" result means something.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.load import parse_catalog
from vastserver.pipeline.delivery import RESERVATION_S, SeparationRules
from vastserver.sim.checks import check_frequency_caps, check_separation, check_viewer_identity
from vastserver.sim.cli import main_simulate
from vastserver.sim.config import Faults, SimConfig
from vastserver.sim.records import Pod, ServedAd
from vastserver.sim.report import (
    _budget_rows,
    billed_revenue,
    deterministic_part,
    render_text,
    write_outputs,
)
from vastserver.sim.runner import fit_budgets, run_comparison, run_simulation
from vastserver.sim.vastdoc import parse_duration_ms, parse_vast, parse_vmap

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)  # 18:00 in New York: the evening peak
HOUSEHOLDS = 250
HOURS = 3.0


def _creative(cid: str, adv: str, seconds: int, rating: str = "TV-G") -> dict[str, Any]:
    return {
        "id": cid,
        "advertiser_id": adv,
        "title": f"{cid} :{seconds}",
        "duration": seconds,
        "universal_ad_id": cid.upper().replace("-", ""),
        "rating": rating,
        "click_through": f"https://www.{adv}.example/offer",
        "renditions": [
            {
                "url": f"https://cdn.example.com/{cid}/1920x1080.mp4",
                "mime": "video/mp4",
                "width": 1920,
                "height": 1080,
                "bitrate_kbps": 5000,
            }
        ],
    }


def sim_catalog() -> dict[str, Any]:
    """Caps of every scope and window, daily budgets with even pacing, two competitive
    categories with two advertisers each, and a house line item."""
    flight = {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}
    advertisers = [
        ("adv-auto-a", "auto"),
        ("adv-auto-b", "auto"),
        ("adv-beer-a", "beer"),
        ("adv-beer-b", "beer"),
        ("adv-tel", "telecom"),
        ("adv-house", None),
    ]
    cats = {"auto": ["IAB2"], "beer": ["IAB8-5"], "telecom": ["IAB19-6"], None: ["IAB1-7"]}
    doc: dict[str, Any] = {
        "version": "sim-test",
        "advertisers": [
            {
                "id": a,
                "name": a,
                "domain": f"{a}.example",
                "categories": cats[c],
                "competitive_category": c,
            }
            for a, c in advertisers
        ],
        "campaigns": [
            {
                "id": f"cmp-{a[4:]}",
                "advertiser_id": a,
                "name": a,
                **flight,
                "timezone": "America/Los_Angeles" if a == "adv-tel" else "America/New_York",
                # A campaign-level daily budget below its line item's.
                **({"budget": {"daily_impressions": 45}} if a == "adv-auto-b" else {}),
            }
            for a, _ in advertisers
        ],
        "creatives": [
            _creative("cr-auto-a-15", "adv-auto-a", 15),
            _creative("cr-auto-a-30", "adv-auto-a", 30),
            _creative("cr-auto-b-30", "adv-auto-b", 30),
            _creative("cr-beer-a-15", "adv-beer-a", 15, "TV-14"),
            _creative("cr-beer-b-30", "adv-beer-b", 30, "TV-14"),
            _creative("cr-tel-15", "adv-tel", 15),
            _creative("cr-tel-20", "adv-tel", 20),
            _creative("cr-house-10", "adv-house", 10),
            _creative("cr-house-30", "adv-house", 30),
        ],
        "line_items": [
            {
                "id": "li-auto-a",
                "campaign_id": "cmp-auto-a",
                "name": "auto a guaranteed",
                "tier": "guaranteed",
                "price": 30,
                "creative_ids": ["cr-auto-a-15", "cr-auto-a-30"],
                "frequency_caps": [
                    {"scope": "line_item", "max": 2, "window": "1h"},
                    {"scope": "creative", "max": 1, "window": "30m"},
                ],
                "pacing": {"delivery": "even", "budget": {"daily_impressions": 90}},
            },
            {
                "id": "li-auto-b",
                "campaign_id": "cmp-auto-b",
                "name": "auto b",
                "tier": "standard",
                "price": 26,
                "creative_ids": ["cr-auto-b-30"],
                "frequency_caps": [{"scope": "campaign", "max": 3, "window": "1d"}],
                "pacing": {"delivery": "even", "budget": {"daily_impressions": 70}},
            },
            {
                # A three-hour flight inside the simulated window: paced to its end.
                "id": "li-beer-a",
                "campaign_id": "cmp-beer-a",
                "name": "beer a",
                "tier": "standard",
                "price": 24,
                "creative_ids": ["cr-beer-a-15"],
                "start": "2026-11-25T23:00:00Z",
                "end": "2026-11-26T01:30:00Z",
                "targeting": {"genre": {"exclude": ["kids", "animation"]}},
                "frequency_caps": [{"scope": "line_item", "max": 1, "window": "30m"}],
                "pacing": {"delivery": "even", "budget": {"impressions": 30}},
            },
            {
                "id": "li-beer-b",
                "campaign_id": "cmp-beer-b",
                "name": "beer b",
                "tier": "standard",
                "price": 21,
                "creative_ids": ["cr-beer-b-30"],
                "targeting": {"genre": {"exclude": ["kids", "animation"]}},
                "frequency_caps": [
                    {"scope": "advertiser", "max": 2, "window": "session"},
                    {"scope": "line_item", "max": 3, "window": "lifetime"},
                ],
            },
            {
                "id": "li-tel",
                "campaign_id": "cmp-tel",
                "name": "telecom",
                "tier": "standard",
                "price": 18,
                "creative_ids": ["cr-tel-15", "cr-tel-20"],
                "frequency_caps": [{"scope": "line_item", "max": 4, "window": "1d"}],
                "pacing": {"delivery": "asap", "budget": {"daily_spend": 1.5}},
            },
            {
                "id": "li-house",
                "campaign_id": "cmp-house",
                "name": "house",
                "tier": "house",
                "creative_ids": ["cr-house-10", "cr-house-30"],
                # Two creatives, one of them an hour: separation lets the other come back
                # the next break, so only the reservation of the first (a look-ahead
                # stitcher fetches both before either plays) keeps the cap.
                "frequency_caps": [{"scope": "advertiser", "max": 1, "window": "1h"}],
            },
        ],
        "ad_rules": {
            "default": {
                "pre": {"duration": 30, "max_ads": 2},
                "mid": {"duration": 90, "max_ads": 3},
                "post": {"duration": 30, "max_ads": 1},
                "midroll_interval": 600,
            }
        },
    }
    return doc


def _config(**kw: Any) -> SimConfig:
    base: dict[str, Any] = {
        "seed": 7,
        "households": HOUSEHOLDS,
        "hours": HOURS,
        "start": START,
        "catalog_doc": sim_catalog(),
        "sessions_per_household": 2.5,
    }
    base.update(kw)
    return SimConfig(**base)


def _assert_guarantees(r: dict[str, Any]) -> None:
    assert r["frequency_caps"]["violations"] == 0, r["frequency_caps"]["examples"]
    assert r["competitive_separation"]["violations"] == 0, r["competitive_separation"]
    assert r["competitive_separation"]["in_pod_same_advertiser"] == 0
    assert r["competitive_separation"]["stream_creative_repeats"] == 0
    assert r["delivery"]["max_overdelivery_pct"] <= 1.0, [
        b for b in r["delivery"]["budgets"] if b["overdelivery_pct"] > 0
    ]
    assert r["traffic"]["fill_rate"] > 0
    assert r["consistency"]["server_vs_simulator_counts"] == []
    assert r["consistency"]["anomalies"] == 0, r["consistency"]["anomaly_examples"]
    assert r["viewer_identity"]["viewers_with_several_hashes"] == 0
    assert r["viewer_identity"]["hashes_shared_by_several_viewers"] == 0


@pytest.fixture(scope="module")
def first_run() -> dict[str, Any]:
    return run_simulation(_config())


def test_short_evening_keeps_every_guarantee(first_run: dict[str, Any]) -> None:
    r = first_run
    _assert_guarantees(r)
    t, b = r["traffic"], r["beacons"]
    # Enough traffic that the checks had something to check, through both client kinds.
    assert t["sessions_player"] > 50 and t["sessions_ssai"] > 20
    assert 0 < t["sessions_ssai_lookahead"] < t["sessions_ssai"]
    assert t["pods"] > 200 and t["ads_played"] > 300
    assert r["frequency_caps"]["cap_checks"] > 100
    # Budgets were reached (so overdelivery was really tested) ...
    spent = {(x["kind"], x["owner"]): x for x in r["delivery"]["budgets"]}
    for key in (("line_item", "li-tel"), ("line_item", "li-beer-a"), ("campaign", "cmp-auto-b")):
        assert spent[key]["delivered"] >= 0.95 * spent[key]["budget"], spent[key]
    # ... and every fault happened and was absorbed.
    assert b["lost"] > 0 and b["late"] > 0 and b["duplicated"] > 0 and b["replays_sent"] > 0
    m = b["server_metrics"]
    assert m.get("notUsed ok", 0) > 0
    assert m.get("error ok", 0) > 0 and m.get("error advisory", 0) > 0
    assert m.get("impression replay", 0) + m.get("complete replay", 0) > 0
    assert 0.5 < r["completion"]["rate"] < 1.0
    # Pacing samples every simulated hour for every budgeted line item.
    pacing = {p["line_item"]: p for p in r["delivery"]["pacing"]}
    assert set(pacing) == {"li-auto-a", "li-auto-b", "li-beer-a"}
    assert all(len(p["samples"]) >= HOURS + 1 for p in pacing.values())
    # li-beer-a's flight lies inside the window: its curve ends at the whole budget.
    last = pacing["li-beer-a"]["samples"][-1]
    assert last["target"] == 30 and 29 <= last["delivered"] <= 30
    assert all(r["verdicts"].values()), r["verdicts"]
    assert "[PASS] frequency-cap violations: 0" in render_text(r)


def test_same_seed_same_report(first_run: dict[str, Any]) -> None:
    """Another process, another hash seed, the same numbers."""
    code = (
        "import json; from tests.test_simulate import _config; "
        "from vastserver.sim.runner import run_simulation; "
        "from vastserver.sim.report import deterministic_part; "
        "print(json.dumps(deterministic_part(run_simulation(_config())), sort_keys=True))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == json.dumps(deterministic_part(first_run), sort_keys=True)


def test_two_instances_on_one_redis(redis_url: str) -> None:
    r = run_simulation(_config(instances=2, redis_url=redis_url, households=200))
    _assert_guarantees(r)
    per = r["traffic"]["requests_per_instance"]
    assert set(per) == {"0", "1"} and min(per.values()) > 0.3 * max(per.values())
    assert r["consistency"]["instances_disagree_on"] == []
    assert all(r["verdicts"].values()), r["verdicts"]


def test_redis_with_foreign_keys_is_refused(redis_url: str) -> None:
    from tests.support.redis_server import command

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert command(port, "SET", "vs:c:someone-else", "1") == b"+OK"
    cfg = _config(households=5, hours=0.2, instances=2, redis_url=redis_url)
    from vastserver.sim.harness import SimError

    with pytest.raises(SimError, match="already holds server keys"):
        run_simulation(cfg)
    assert command(port, "EXISTS", "vs:c:someone-else") == b":1"


def test_a_server_that_rekeys_the_session_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that keys the ad on a session of its own (written into the token) instead
    of the one the client sent would escape its session caps if the checks read the token:
    they read the client's session, and the mismatch itself is an anomaly."""
    import itertools

    from vastserver import app

    real = app._ad_request
    n = itertools.count()

    def rekeyed(request: Any) -> Any:
        req = real(request)
        if request.path == "/vast" and req.session:
            req = replace(req, session=f"{req.session}-{next(n)}")
        return req

    monkeypatch.setattr(app, "_ad_request", rekeyed)
    r = run_simulation(_config(households=60, hours=1.0))
    c = r["consistency"]
    assert c["token_session_mismatches"] == r["traffic"]["ads_served"] > 0
    assert r["verdicts"]["no_anomalies"] is False
    assert any("token session" in a for a in c["anomaly_examples"])
    # li-beer-b's session cap (two adv-beer-b impressions a session) counted on the
    # client's session: the server, fooled by its own keys, served past it
    session_caps = [e for e in r["frequency_caps"]["examples"] if e["cap"]["window"] == "session"]
    assert [e["cause"] for e in session_caps] == ["server"]
    assert r["verdicts"]["frequency_caps"] is False
    # separation is checked on the client's session too: categories come back within a break
    assert r["competitive_separation"]["cross_break_competitive"] > 0


def test_a_cap_check_that_ignores_reservations_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look-ahead stitchers fetch three breaks before the first plays: li-house's hourly
    advertiser cap then holds only because each serve counts the reservations of the ones
    before it. A server that makes no cap reservations serves past it."""
    from vastserver import delivery
    from vastserver.pipeline.delivery import is_cap_key

    real = delivery.reservation_plan

    def no_cap_reservations(*args: Any, **kwargs: Any) -> Any:
        guards, incrs = real(*args, **kwargs)
        return guards, tuple(i for i in incrs if not is_cap_key(i.key))

    monkeypatch.setattr(delivery, "reservation_plan", no_cap_reservations)
    r = run_simulation(_config(households=100, hours=2.0, lookahead_share=1.0))
    assert r["traffic"]["sessions_ssai_lookahead"] == r["traffic"]["sessions_ssai"] > 0
    assert r["frequency_caps"]["over_cap_by_cause"]["server"] > 0
    assert r["verdicts"]["frequency_caps"] is False
    # li-house's hourly advertiser cap, exceeded by two breaks fetched at the same moment
    caught = [
        e
        for e in r["frequency_caps"]["examples"]
        if e["cause"] == "server"
        and e["cap"] == {"scope": "advertiser", "max": 1, "window": "1h"}
        and len({p["served_ms"] for p in e["plays"]}) == 1
    ]
    assert caught


def test_cli_writes_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(sim_catalog()))
    out = tmp_path / "out"
    argv = ["--seed", "3", "--households", "60", "--hours", "1", "--start", START.isoformat(),
            "--catalog", str(catalog), "--out", str(out), "--ssai-share", "0.5",
            "--lost-beacons", "0.05", "--setting", "competitive_separation_breaks=2"]  # fmt: skip
    assert main_simulate(argv) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["config"]["ssai_share"] == 0.5 and doc["config"]["faults"]["lost"] == 0.05
    assert doc["config"]["settings"] == {"competitive_separation_breaks": "2"}
    assert "Guarantees" in (out / "report.txt").read_text()
    captured = capsys.readouterr()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not list(out.glob("*.png"))  # plots are skipped cleanly without matplotlib
        assert "skipped the plots pacing.png, traffic.png" in captured.err
    else:
        assert (out / "pacing.png").exists()
    assert "Guarantees" in captured.out


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_simulate(["--compare-model"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main_simulate(["--instances", "2", "--households", "5"]) == 2
    assert "redis" in capsys.readouterr().err
    assert main_simulate(["--ssai-share", "2"]) == 2
    assert main_simulate(["--setting", "no-equals-sign", "--households", "5"]) == 2
    assert main_simulate(["--catalog", str(tmp_path / "missing.json")]) == 2


def test_an_unusable_out_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run can take minutes: a --out that cannot take the report is a set-up error
    found before it starts, not a traceback after it ends."""
    from vastserver.sim import cli

    def no_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the simulation ran")

    monkeypatch.setattr(cli, "run_simulation", no_run)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(sim_catalog()))
    in_the_way = tmp_path / "report.json"
    in_the_way.write_text("{}")
    for out, why in ((in_the_way, "is not a directory"), (in_the_way / "sub", "Not a directory")):
        assert main_simulate(["--catalog", str(catalog), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("simulate: ") and why in captured.err, captured.err
        assert str(out) in captured.err and "Traceback" not in captured.err
        assert captured.out == ""
    # a directory that is not there yet is created before the run
    assert cli._out_problem(tmp_path / "new" / "dir") is None
    assert (tmp_path / "new" / "dir").is_dir()


def test_an_event_log_directory_holding_a_log_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run into one --event-log directory would be read back (report, train) as
    one log of two worlds: refused as gen-events refuses it, before anything runs."""
    from vastserver.sim.harness import SimError

    log = tmp_path / "log"
    (log / "instance-0").mkdir(parents=True)
    (log / "instance-0" / "events-20261125T050031-13260-000001.jsonl").write_text("")
    args = ["--households", "5", "--hours", "0.2", "--event-log", str(log)]
    assert main_simulate(args) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"simulate: --event-log: {log} already holds event segments; use an empty directory\n"
    )
    # --compare-model: refused before the first arm runs, whichever arm's directory holds it
    (log / "instance-0").rename(tmp_path / "elsewhere")
    (log / "truth" / "instance-0").mkdir(parents=True)
    (log / "truth" / "instance-0" / "events-1.jsonl.gz").write_bytes(b"")
    with pytest.raises(SimError, match="already holds event segments"):
        run_comparison(_config(event_log_dir=log, model_path=tmp_path / "no-model"))


@pytest.mark.parametrize("passed", [True, False])
def test_a_report_that_cannot_be_written_is_printed_anyway(
    passed: bool,
    first_run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writing fails after the run (a full disk): the verdicts are printed all the same, and
    the exit status is 2 (the files are missing), also when a verdict failed."""
    import copy
    import errno

    from vastserver.sim import cli

    report = copy.deepcopy(first_run)
    report["verdicts"]["frequency_caps"] = passed
    monkeypatch.setattr(cli, "run_simulation", lambda *a, **k: report)

    def disk_full(report: dict[str, Any], out: Path) -> tuple[list[str], list[str]]:
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.json"))

    monkeypatch.setattr(cli, "write_outputs", disk_full)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(sim_catalog()))
    out = tmp_path / "out"
    assert main_simulate(["--catalog", str(catalog), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "Guarantees" in captured.out
    assert ("[FAIL] frequency-cap" in captured.out) is not passed
    assert captured.err.startswith(f"simulate: could not write the report into {out}: ")
    assert "No space left on device" in captured.err and "Traceback" not in captured.err


def test_a_run_without_a_session_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """10 households in 6 minutes start no session: the fill verdict failed with 'n/a of
    pods' and nothing said why."""
    assert main_simulate(["--households", "10", "--hours", "0.1", "--line-items", "5"]) == 1
    captured = capsys.readouterr()
    note = (
        "No session was simulated: 10 households started none in 0.1 h (give more "
        "--households or --hours); the checks had nothing to check."
    )
    assert captured.out.splitlines()[2] == note
    assert f"simulate: {note}" in captured.err


def test_a_model_that_does_not_load_is_named_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    assert main_simulate(["--households", "5", "--hours", "0.2", "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "simulate: the servers score with ['price'], not 'model' "
        f"(model bundle {missing}: not a directory)\n"
    )


def test_an_unreachable_redis_is_a_set_up_error(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/simulator.md: exit 2 on a set-up error (1 is a failed guarantee), a message and
    no traceback; a password in the URL is not printed."""
    url = "redis://sim:s3cret@127.0.0.1:1/0"
    args = ["--instances", "2", "--redis", url, "--households", "5", "--hours", "0.2"]
    assert main_simulate(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("simulate: the Redis database at redis://sim:***@127.0.0.1:1/0")
    assert "s3cret" not in err and "Traceback" not in err


def test_model_comparison_runs_every_arm(tmp_path: Path) -> None:
    from vastserver.ml.model import ModelBundle, ModelError

    bundle = ROOT / "fixtures" / "demo-model"
    try:
        ModelBundle.load(bundle)
    except ModelError as e:
        pytest.skip(f"no loadable model bundle in fixtures/demo-model yet: {e}")
    # enough demand that ranking has choices to make: in the small hand-made catalog every
    # pod takes all that is eligible, so the three arms serve the same ads (its truth lift
    # was 0.1 % with a 2.2 % noise, then 0 once throttled line items stopped taking their
    # competitors' places); 200 generated line items give the truth arm 0.3-1.1 % on seeds
    # 1-7 (no look-ahead stitchers: in a small world their fetches leave price and truth
    # ranking the same expected rate)
    cfg = _config(
        households=300,
        hours=2.0,
        catalog_doc=generate_catalog(200, seed=3, now=START),
        model_path=bundle,
        event_log_dir=tmp_path / "log",
        lookahead_share=0.0,
    )
    r = run_comparison(cfg)
    # each arm logs apart: one log holding both runs of the same hours would mislead training
    for arm in ("price", "model", "truth"):
        assert list((tmp_path / "log" / arm / "instance-0").glob("*.jsonl"))
    c = r["comparison"]
    assert c["price"]["scorer"]["name"] == "price"
    assert c["model"]["scorer"]["name"] == "model"
    assert c["truth"]["scorer"]["name"] == "truth"
    assert c["completion_lift_pct"] is not None
    assert c["expected_completion_lift_pct"] is not None
    assert c["verdicts"] == {"model_keeps_expected_completion_rate": True}, c
    # ranking by the ground truth itself finds completions here that price ranking misses
    assert c["truth_expected_completion_lift_pct"] > 0
    share = c["model_share_of_truth_lift_pct"]
    want = c["expected_completion_lift_pct"] / c["truth_expected_completion_lift_pct"] * 100
    assert share == pytest.approx(want, abs=0.2)
    assert set(r["arms"]) == {"price", "model", "truth"}
    for arm in r["arms"].values():
        _assert_guarantees(arm)
    assert "the perfect model" in render_text(r)


def test_simulated_servers_log_every_uncounted_beacon(tmp_path: Path) -> None:
    """The limit on uncounted beacons' records counts real seconds: a simulated day's log
    would keep more or fewer of its replays as the host runs faster or slower. The
    simulator's servers keep them all, unless the run's own settings say otherwise."""
    from vastserver.sim.harness import server_settings

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(sim_catalog()))
    kw: dict[str, Any] = {"catalog": path, "redis_url": None, "model": None, "event_log": None}
    env = {"VASTSERVER_UNCOUNTED_LOG_RATE": "5"}
    assert server_settings(extra={}, env=env, **kw).uncounted_log_rate is None
    assert server_settings(extra={"uncounted_log_rate": 7}, env={}, **kw).uncounted_log_rate == 7


def test_scope_cap_counts_the_whole_scope() -> None:
    """li-pre (no cap) plays in pre-rolls; li-mid, same campaign, allows one campaign
    impression per viewer per day but serves in the mid-roll right after."""
    doc = sim_catalog()
    doc["line_items"] = [li for li in doc["line_items"] if li["id"] in ("li-house", "li-tel")] + [
        {
            "id": "li-pre",
            "campaign_id": "cmp-auto-a",
            "name": "pre-rolls, no cap",
            "tier": "guaranteed",
            "price": 30,
            "creative_ids": ["cr-auto-a-15"],
            "positions": ["pre"],
        },
        {
            "id": "li-mid",
            "campaign_id": "cmp-auto-a",
            "name": "mid-rolls, one campaign impression a day",
            "tier": "guaranteed",
            "price": 30,
            "creative_ids": ["cr-auto-a-30"],
            "positions": ["mid"],
            "frequency_caps": [{"scope": "campaign", "max": 1, "window": "1d"}],
        },
    ]
    r = run_simulation(_config(catalog_doc=doc, households=40, hours=1.0))
    assert r["frequency_caps"]["over_cap_by_cause"]["server"] == 0
    assert r["frequency_caps"]["violations"] == 0, r["frequency_caps"]["examples"][:2]


async def test_stream_separation_minutes_are_exact(tmp_path: Path) -> None:
    """The full-scale run found a creative served again 1799.6 s after itself in one session;
    this is that case, on the simulator's harness."""
    from vastserver.sim.harness import PUBLIC_URL, Servers, SimClock, server_settings

    doc = sim_catalog()
    # li-house without its cap: the separation alone must keep the creative out
    doc["line_items"] = [
        {k: v for k, v in li.items() if k != "frequency_caps"}
        for li in doc["line_items"]
        if li["id"] == "li-house"
    ]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    settings = server_settings(
        catalog=path,
        redis_url=None,
        model=None,
        event_log=None,
        # minutes only (30 by default); /decide for anyone (no bearer token here)
        extra={"separation_breaks": 0, "debug_access": "open"},
        env={},
    )
    clock = SimClock(START)
    async with Servers([settings], clock, 1) as servers:
        query = "/decide?pod_duration=10&max_ads=1&session=s-1&device_id=ifa-1&avail="
        clock.ms = 400
        first = json.loads((await servers.get(PUBLIC_URL + query + "0", endpoint="d")).body)
        assert [a["creative_id"] for a in first["pod"]["ads"]] == ["cr-house-10"]
        clock.ms = 400 + 1_799_600  # 29 min 59.6 s later
        again = json.loads((await servers.get(PUBLIC_URL + query + "5", endpoint="d")).body)
        assert again["pod"]["ads"] == []


# ---------------------------------------------------------------------------- the checkers


def _ad(sid: str, **kw: Any) -> ServedAd:
    base: dict[str, Any] = {
        "serving_id": sid,
        "pod": 0,
        "slot": 1,
        "line_item": "li-auto-a",
        "creative": "cr-auto-a-15",
        "campaign": "cmp-auto-a",
        "advertiser": "adv-auto-a",
        "category": "auto",
        "price_micros": 30_000_000,
        "served_ms": 0,
        "duration_ms": 15_000,
        "session": "s1",
        "viewer_key": "ifa:1",
        "viewer_hash": "h1",
        "lmt": False,
    }
    base.update(kw)
    category = base.pop("category")  # the advertiser's: the one label of most ads here
    base.setdefault("labels", frozenset([category] if category else []))
    ad = ServedAd(**base)
    if ad.played_ms is None:
        ad.played_ms = ad.served_ms + 1000
    if ad.impression_arrival_ms is None:
        ad.impression_arrival_ms = ad.played_ms + 200
    return ad


def test_budget_rows_count_no_spend_for_flat_impressions() -> None:
    """The simulator's replica of spend counting follows the server: a flat line item's
    impressions move its campaign's spend budget by nothing, a CPM one's by its price."""
    doc = sim_catalog()
    next(c for c in doc["campaigns"] if c["id"] == "cmp-tel")["budget"] = {"spend": 1.0}
    doc["line_items"].append(
        {
            "id": "li-tel-sponsor",
            "campaign_id": "cmp-tel",
            "name": "telecom sponsorship",
            "tier": "sponsorship",
            "pricing_model": "flat",
            "price": 5000,
            "creative_ids": ["cr-tel-15"],
        }
    )
    catalog = parse_catalog(doc, source="test")
    tel = {"campaign": "cmp-tel", "advertiser": "adv-tel", "category": "telecom"}
    ads = [
        _ad("cpm-1", line_item="li-tel", creative="cr-tel-15", price_micros=18_000_000, **tel),
        *(
            _ad(
                f"flat-{i}", line_item="li-tel-sponsor", creative="cr-tel-15", price_micros=0, **tel
            )
            for i in range(3)
        ),
    ]
    start = datetime(2026, 11, 25, 20, tzinfo=UTC)
    [row] = _budget_rows(
        "cmp-tel", "campaign", catalog.campaigns["cmp-tel"].budget, ads, catalog, start
    )
    assert row["limit"] == "spend" and row["delivered"] == pytest.approx(0.018)


def test_budget_rows_take_a_spend_limit_in_exact_micros() -> None:
    """A spend budget of 0.0157 spent exactly (10 impressions at CPM 1.57) is no
    overdelivery: it was read as ``int(0.0157 * 1e6)`` = 15,699 micros, 0.006 % over."""
    doc = sim_catalog()
    next(c for c in doc["campaigns"] if c["id"] == "cmp-tel")["budget"] = {"spend": 0.0157}
    catalog = parse_catalog(doc, source="test")
    tel = {"campaign": "cmp-tel", "advertiser": "adv-tel", "category": "telecom"}
    ads = [
        _ad(f"t{i}", line_item="li-tel", creative="cr-tel-15", price_micros=1_570_000, **tel)
        for i in range(10)
    ]
    [row] = _budget_rows(
        "cmp-tel", "campaign", catalog.campaigns["cmp-tel"].budget, ads, catalog, START
    )
    assert row["budget"] == row["delivered"] == 0.0157
    assert row["overdelivery_pct"] == row["overdelivery_with_late_pct"] == 0.0


def test_revenue_is_what_the_server_bills() -> None:
    """Whole micros per counted impression, as the server's spend: 3 at CPM 1.234567 bill
    3 x 1,234 micros, not 3 x 1,234.567; an ad without a counted impression bills nothing."""
    ads = [_ad(f"r{i}", price_micros=1_234_567) for i in range(4)]
    ads[3].impression_arrival_ms = None
    ads[3].played_ms = None
    assert billed_revenue(ads) == 0.003702


def test_overdelivery_verdict_reads_impressions_counted_within_their_reservation() -> None:
    """A late beacon (counted after its ad's reservation lapsed) can push a correct server
    past a budget: that excess is reported apart, the verdict reads the rest."""
    catalog = parse_catalog(sim_catalog(), source="test")
    beer = {"line_item": "li-beer-a", "creative": "cr-beer-a-15", "campaign": "cmp-beer-a",
            "advertiser": "adv-beer-a", "category": "beer"}  # fmt: skip
    budget = catalog.line_items["li-beer-a"].pacing.budget  # 30 impressions
    ads = [_ad(f"b{i}", pod=i, served_ms=i * 60_000, **beer) for i in range(30)]
    late = _ad("late", pod=30, served_ms=0, **beer)
    late.impression_arrival_ms = (RESERVATION_S + 1) * 1000
    [row] = _budget_rows("li-beer-a", "line_item", budget, [*ads, late], catalog, START)
    assert (row["delivered"], row["delivered_within_reservation"]) == (31, 30)
    assert row["overdelivery_pct"] == 0.0 and row["overdelivery_with_late_pct"] == 3.333
    assert row["late_impressions_after_reservation"] == 1
    # one more counted within its reservation: the server's own overdelivery
    extra = _ad("extra", pod=31, served_ms=0, **beer)
    [row] = _budget_rows("li-beer-a", "line_item", budget, [*ads, extra], catalog, START)
    assert row["overdelivery_pct"] == 3.333


def test_cap_checker_finds_and_classifies_excess() -> None:
    catalog = parse_catalog(sim_catalog(), source="test")
    minute = 60_000
    # li-auto-a: 2 per hour. Three plays within the hour, all known in time: the server's fault.
    ads = [_ad(f"a{i}", pod=i, served_ms=i * 10 * minute, creative=f"c{i}") for i in range(3)]
    rep = check_frequency_caps(catalog, ads, [])
    assert (rep.server, rep.beacon_faults) == (1, 0)
    # The first impression arrived after its reservation lapsed, but 4 minutes before the
    # next serve: the server knew, and served over the cap anyway.
    ads[0].impression_arrival_ms = ads[0].served_ms + (RESERVATION_S + 60) * 1000
    rep = check_frequency_caps(catalog, ads, [])
    assert (rep.server, rep.beacon_faults) == (1, 0)
    # It arrived after the last serve, its reservation long lapsed: the server could not know.
    ads[0].impression_arrival_ms = ads[2].served_ms + minute
    rep = check_frequency_caps(catalog, ads, [])
    assert (rep.server, rep.beacon_faults) == (0, 1)
    # Lost entirely: same.
    ads[0].impression_arrival_ms = None
    assert check_frequency_caps(catalog, ads, []).beacon_faults == 1
    # Outside the window: fine.
    spread = [_ad(f"b{i}", pod=i, served_ms=i * 40 * minute, creative=f"c{i}") for i in range(3)]
    assert check_frequency_caps(catalog, spread, []).violations == 0
    # li-auto-b's campaign cap (3/1d) counted against plays of a line item without the cap.
    mixed = [
        _ad(f"m{i}", pod=i, served_ms=i * minute, line_item="li-x", campaign="cmp-auto-b")
        for i in range(3)
    ] + [_ad("m9", pod=9, served_ms=9 * minute, line_item="li-auto-b", campaign="cmp-auto-b")]
    rep = check_frequency_caps(catalog, mixed, [])
    assert (rep.server, rep.scope_semantics, rep.violations) == (0, 1, 1)
    # lmt viewers: only session caps apply.
    lmt = [_ad(f"l{i}", pod=i, served_ms=i * minute, creative=f"c{i}", lmt=True) for i in range(3)]
    assert check_frequency_caps(catalog, lmt, []).cap_checks == 0


def test_cap_checker_judges_by_what_the_server_knew_at_the_serve() -> None:
    """li-beer-a allows one impression per 30 minutes. Whether the server knew the cap was
    full is decided at the serve of the over-cap ad, never by that ad's own beacon."""
    catalog = parse_catalog(sim_catalog(), source="test")
    minute = 60_000
    beer = {"line_item": "li-beer-a", "creative": "cr-beer-a-15", "campaign": "cmp-beer-a",
            "advertiser": "adv-beer-a", "category": "beer"}  # fmt: skip
    # The first play was counted at once; the second serve, 10 minutes later, ignores the
    # cap; the over-cap ad's own impression beacon is lost (the viewer still saw it).
    first = _ad("A0", pod=0, served_ms=0, **beer)
    again = _ad("A1", pod=1, served_ms=10 * minute, **beer)
    again.impression_arrival_ms = None
    rep = check_frequency_caps(catalog, [first, again], [])
    assert (rep.server, rep.beacon_faults, rep.violations) == (1, 0, 1)
    # The first impression came 6 minutes late (after its 5-minute reservation), 14 minutes
    # before the second serve: the server had counted it and served again.
    first = _ad("B0", pod=0, served_ms=0, **beer)
    first.impression_arrival_ms = (first.played_ms or 0) + 360_000
    again = _ad("B1", pod=1, served_ms=20 * minute, **beer)
    rep = check_frequency_caps(catalog, [first, again], [])
    assert (rep.server, rep.beacon_faults) == (1, 0)
    # Not yet played, but its reservation was live at the second serve: known too.
    first = _ad("C0", pod=0, served_ms=0, **beer)
    first.played_ms, first.impression_arrival_ms = 3 * minute, 3 * minute + 200
    again = _ad("C1", pod=1, served_ms=minute, **beer)
    assert check_frequency_caps(catalog, [first, again], []).server == 1
    # Served later than the over-cap play's serve but played first (a prefetched break):
    # judged at its own serve, where the earlier serve's reservation was live.
    early = _ad("D0", pod=0, served_ms=0, **beer)
    early.played_ms, early.impression_arrival_ms = 12 * minute, 12 * minute + 200
    late_serve = _ad("D1", pod=1, served_ms=2 * minute, **beer)
    assert check_frequency_caps(catalog, [early, late_serve], []).server == 1
    # The first impression lost, reservation lapsed at the second serve: beacon fault.
    first = _ad("E0", pod=0, served_ms=0, **beer)
    first.impression_arrival_ms = None
    again = _ad("E1", pod=1, served_ms=10 * minute, **beer)
    rep = check_frequency_caps(catalog, [first, again], [])
    assert (rep.server, rep.beacon_faults, rep.violations) == (0, 1, 0)


def test_separation_checker_finds_violations() -> None:
    rules = SeparationRules(creative_breaks=3, creative_minutes=30, competitive_breaks=1)
    a = _ad("x1", pod=0)
    b = _ad("x2", pod=0, advertiser="adv-auto-b", creative="cr-auto-b-30", slot=2)
    c = _ad("x3", pod=1, advertiser="adv-auto-b", creative="cr-auto-b-30", served_ms=600_000)
    d = _ad("x4", pod=2, creative="cr-auto-a-15", served_ms=3_000_000)
    pods = [
        Pod(0, 0, "s1", 0, "pre", 30_000, 45_000, 0, ["x1", "x2"]),
        Pod(1, 0, "s1", 1, "mid", 90_000, 30_000, 600_000, ["x3"]),
        Pod(2, 0, "s1", 4, "mid", 90_000, 15_000, 3_000_000, ["x4"]),
    ]
    ads = {x.serving_id: x for x in (a, b, c, d)}
    rep = check_separation(pods, ads, rules)
    assert rep.in_pod_competitive == 1  # two auto advertisers in pod 0
    assert rep.cross_break_competitive == 1  # auto in avail 0 and 1
    assert rep.creative_repeats == 1  # cr-auto-b-30 in avails 0 and 1 (10 minutes apart)
    assert rep.competitive_violations == 2


def test_one_advertiser_twice_in_a_pod_fails_competitive_separation(
    first_run: dict[str, Any],
) -> None:
    """The server never puts one advertiser (so never one creative) twice in a pod: a pod
    that holds it fails the verdict, with or without a competitive category."""
    from vastserver.sim.report import verdicts

    rules = SeparationRules(creative_breaks=3, creative_minutes=30, competitive_breaks=1)
    house = {"advertiser": "adv-house", "campaign": "cmp-house", "line_item": "li-house"}
    ads = {
        x.serving_id: x
        for x in (
            # adv-house has no competitive category: two of its creatives in one pod
            _ad("h1", pod=0, creative="cr-house-10", category=None, **house),
            _ad("h2", pod=0, creative="cr-house-30", category=None, slot=2, **house),
            # one creative twice in a pod (an advertiser with a category)
            _ad("t1", pod=1, creative="cr-tel-15", category="telecom", advertiser="adv-tel"),
            _ad("t2", pod=1, creative="cr-tel-15", category="telecom", advertiser="adv-tel"),
        )
    }
    pods = [
        Pod(0, 0, "s1", 0, "pre", 30_000, 40_000, 0, ["h1", "h2"]),
        Pod(1, 1, "s2", 0, "pre", 30_000, 30_000, 0, ["t1", "t2"]),
    ]
    rep = check_separation(pods, ads, rules)
    assert (rep.in_pod_same_advertiser, rep.in_pod_same_creative) == (2, 1)
    # one advertiser twice is not also two advertisers of its category
    assert rep.in_pod_competitive == 0
    assert rep.competitive_violations == 2
    v = verdicts({**first_run, "competitive_separation": rep.as_dict()})
    assert v["competitive_separation"] is False
    assert "one advertiser twice in a pod 2 (a creative twice 1)" in render_text(
        {**first_run, "competitive_separation": rep.as_dict(), "verdicts": v}
    )


def test_separation_checker_reads_every_competitive_label() -> None:
    """Labels of line items and creatives separate as an advertiser's category does: two
    advertisers without a category whose ads share a line-item label in one pod, or within
    ``competitive_breaks`` breaks of one session, are violations; ads whose labels differ
    are not."""
    rules = SeparationRules(creative_breaks=0, creative_minutes=0, competitive_breaks=1)
    labelled = [  # (id, pod, labels): each of its own advertiser with no category
        ("a", 0, {"beer"}),
        ("b", 0, {"snacks", "beer"}),
        ("c", 1, {"snacks"}),
        ("d", 2, {"auto"}),
        ("e", 2, {"telecom"}),
    ]
    ads = {
        x: _ad(
            x, creative=f"cr-{x}", pod=p, advertiser=f"adv-{x}", category=None, labels=frozenset(ls)
        )
        for x, p, ls in labelled
    }
    pods = [
        Pod(0, 0, "s1", 0, "pre", 30_000, 30_000, 0, ["a", "b"]),
        Pod(1, 1, "s1", 1, "mid", 30_000, 15_000, 60_000, ["c"]),
        Pod(2, 2, "s2", 0, "pre", 30_000, 30_000, 0, ["d", "e"]),
    ]
    rep = check_separation(pods, ads, rules)
    assert rep.in_pod_competitive == 1  # beer: adv-a and adv-b in pod 0
    assert rep.cross_break_competitive == 1  # snacks: pod 0 (b) and the next break (c)
    assert rep.in_pod_same_advertiser == rep.in_pod_same_creative == 0
    assert {e["category"] for e in rep.examples} == {"beer", "snacks"}


def test_separation_checker_excuses_an_ad_not_used_before_the_other_break() -> None:
    """A notUsed the server counted takes the ad out of the session's history: a break served
    after it may bring back its creative and label, not those of the ad that played beside
    it. A notUsed counted after the other break was served excuses nothing (the server had
    the ad in the history when it decided), nor does one of the break served second."""
    rules = SeparationRules(creative_breaks=3, creative_minutes=30, competitive_breaks=1)
    food = {"advertiser": "adv-food", "creative": "cr-food", "category": "food"}
    food_b = {"advertiser": "adv-food-b", "creative": "cr-food-b", "category": "food"}

    def run(unused_ms: int, avails: tuple[int, int] = (0, 1), second: str = "early") -> Any:
        """An auto ad ``u`` (notUsed counted at ``unused_ms``) in the ``early`` pod (served
        at 0) or the ``late`` one (served at 60 s), a played food ad beside it, and an auto
        ad of the same creative and another food advertiser in the other pod."""
        u_pod, o_pod = (0, 1) if second == "early" else (1, 0)
        ads = {
            x.serving_id: x
            for x in (
                _ad("u", pod=u_pod, served_ms=60_000 * u_pod, not_used_arrival_ms=unused_ms),
                _ad("f", pod=u_pod, served_ms=60_000 * u_pod, slot=2, **food),
                _ad("u2", pod=o_pod, served_ms=60_000 * o_pod),
                _ad("f2", pod=o_pod, served_ms=60_000 * o_pod, slot=2, **food_b),
            )
        }
        by_pod = {u_pod: ["u", "f"], o_pod: ["u2", "f2"]}
        pods = [
            Pod(0, 0, "s1", avails[0], "mid", 30_000, 30_000, 0, by_pod[0]),
            Pod(1, 0, "s1", avails[1], "mid", 30_000, 30_000, 60_000, by_pod[1]),
        ]
        rep = check_separation(pods, ads, rules)
        return rep.cross_break_competitive, rep.creative_repeats

    assert run(unused_ms=5_000) == (1, 0)  # food only: auto and cr-auto-a-15 came back
    assert run(unused_ms=60_000) == (1, 0)  # at the same simulated millisecond: excused
    assert run(unused_ms=90_000) == (2, 1)  # counted after the later break: not excused
    assert run(unused_ms=5_000, avails=(1, 0)) == (1, 0)  # a look-ahead fetched avail 1 first
    assert run(unused_ms=70_000, second="late") == (2, 1)  # u was decided second


def test_the_simulator_reads_an_ads_labels_from_the_catalog() -> None:
    """The labels checked are the catalog's (advertiser, line item, creative), read on the
    simulator's side."""
    from vastserver.sim.engine import _labels

    doc = sim_catalog()
    li = next(x for x in doc["line_items"] if x["id"] == "li-tel")
    li["competitive_categories"] = ["streaming"]
    cr = next(x for x in doc["creatives"] if x["id"] == "cr-tel-15")
    cr["competitive_categories"] = ["sports"]
    catalog = parse_catalog(doc, source="test")
    adv = catalog.advertisers["adv-tel"]
    assert _labels(catalog, adv, "li-tel", "cr-tel-15") == {"telecom", "streaming", "sports"}
    assert _labels(catalog, None, "li-gone", "cr-gone") == frozenset()


def test_viewer_identity_checker() -> None:
    ok = [_ad("i1"), _ad("i2")]
    assert check_viewer_identity(ok)["viewers_with_several_hashes"] == 0
    bad = [*ok, _ad("i3", viewer_hash="h2"), _ad("i4", viewer_key="ifa:2")]
    r = check_viewer_identity(bad)
    assert r["viewers_with_several_hashes"] == 1 and r["hashes_shared_by_several_viewers"] == 1


def test_fit_budgets_and_documents() -> None:
    doc = fit_budgets(sim_catalog(), households=1000, per_household=0.1, seed=1)
    budgets = {li["id"]: li.get("pacing", {}).get("budget") for li in doc["line_items"]}
    assert budgets["li-house"] is None
    assert all(50 <= b["daily_impressions"] <= 150 for b in budgets.values() if b is not None)
    assert sim_catalog()["line_items"][0]["pacing"]["budget"] == {"daily_impressions": 90}
    assert parse_duration_ms("00:00:15.500") == 15_500
    vmap = (ROOT / "fixtures" / "golden" / "vmap-tags.xml").read_text()
    breaks = parse_vmap(vmap)
    assert breaks and breaks[0].time_offset == "start" and "/vast?" in breaks[0].tag_url
    pod = parse_vast((ROOT / "fixtures" / "golden" / "vast42-midroll-120s.xml").read_text())
    assert [a.sequence for a in pod.ads] == sorted(a.sequence for a in pod.ads)
    assert all("/t/impression?" in a.impression_url for a in pod.ads)
    empty = parse_vast((ROOT / "fixtures" / "golden" / "vast42-nofill.xml").read_text())
    assert not empty.ads and empty.error_url and "[ERRORCODE]" in empty.error_url


def test_faults_and_config_are_validated() -> None:
    assert Faults(lost=1.5).validate()
    assert _config(instances=2).validate()  # no redis
    assert replace(_config(), hours=0).validate()
    assert not _config().validate()


def test_write_outputs_for_a_comparison(tmp_path: Path, first_run: dict[str, Any]) -> None:
    from vastserver.sim.report import comparison_report

    both = comparison_report(first_run, first_run)
    assert both["comparison"]["completion_lift_pct"] == 0.0
    assert both["comparison"]["expected_completion_lift_pct"] == 0.0
    c = first_run["completion"]
    # the expected completions are the ground truth's probabilities of the ads played:
    # close to the drawn ones, not equal
    assert 0.5 < c["expected_rate"] < 1.0 and c["expected_completes"] != c["completes"]
    assert abs(c["expected_completes"] - c["completes"]) < 0.05 * c["impressions"]
    files, _ = write_outputs(both, tmp_path)
    assert "report.json" in files and "price arm" in (tmp_path / "report.txt").read_text()


def test_without_matplotlib_the_skipped_plots_are_named(
    tmp_path: Path,
    first_run: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vastserver.sim import cli
    from vastserver.sim.report import comparison_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    files, skipped = write_outputs(comparison_report(first_run, first_run), tmp_path / "c")
    assert files == ["report.json", "report.txt"]
    want = ["price-pacing.png", "price-traffic.png", "model-pacing.png", "model-traffic.png"]
    assert skipped == want
    monkeypatch.setattr(cli, "run_simulation", lambda *a, **k: first_run)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(sim_catalog()))
    assert main_simulate(["--catalog", str(catalog), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "simulate: skipped the plots pacing.png, traffic.png: matplotlib is not installed "
        "(pip install matplotlib)"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.txt"]


def test_comparison_verdict_on_the_models_expected_completion_rate(
    first_run: dict[str, Any],
) -> None:
    """The model arm fails when its expected completions per impression fall below
    price-only ranking's by more than two standard errors of the difference."""
    from vastserver.sim.report import comparison_report

    c = first_run["completion"]
    se = c["expected_rate_stderr"]
    assert 0 < se < 0.05  # a few hundred plays
    noise_pct = 2 * (2 * se**2) ** 0.5 / c["expected_rate"] * 100

    def model_arm(rate: float) -> dict[str, Any]:
        return {**first_run, "completion": {**c, "expected_rate": rate}}

    same = comparison_report(first_run, first_run)["comparison"]
    assert same["verdicts"] == {"model_keeps_expected_completion_rate": True}
    assert same["expected_completion_lift_noise_pct"] == pytest.approx(noise_pct, abs=1e-3)
    within = comparison_report(first_run, model_arm(c["expected_rate"] - 1.5 * se))
    assert within["comparison"]["verdicts"]["model_keeps_expected_completion_rate"] is True
    worse = comparison_report(first_run, model_arm(c["expected_rate"] - 3.5 * se))
    assert worse["comparison"]["verdicts"]["model_keeps_expected_completion_rate"] is False
    assert "[FAIL] the model's expected completion rate" in render_text(worse)


def test_pacing_figures_read_periods_begun_in_the_window() -> None:
    """A window opened at 21:00 New York finds li-auto-a's day 90 % gone and nothing
    delivered: that gap is reported apart, not as a pacing error. In the next day, being
    behind at full throttle (too little traffic) and the pacing's own error (ahead of the
    curve, or behind while holding back) are told apart."""
    from types import SimpleNamespace

    from vastserver.pipeline.context import SimClock
    from vastserver.sim.engine import Sample
    from vastserver.sim.report import _pacing

    catalog = parse_catalog(sim_catalog())
    start = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)  # 21:00 in New York
    hour = 3_600_000

    def sample(h: float, delivered: int, target: float, throttle: float) -> Sample:
        return Sample(
            int(h * hour),
            {"li-auto-a": delivered},
            {"li-auto-a": delivered},
            {"li-auto-a": target},
            {"li-auto-a": throttle},
            {"li-auto-a": target},
        )

    budget = 90  # li-auto-a's daily impressions
    samples = [
        sample(0, 0, 80.0, 1.0),  # the day begun before the window: 88.9 % behind
        sample(2, 9, 88.0, 1.0),
        sample(5, 4, 4.0, 1.0),  # 02:00: the window's first whole day, on the curve
        sample(8, 9, 18.0, 1.0),  # behind by 9 while serving every chance: traffic
        sample(10, 30, 25.5, 0.4),  # ahead by 4.5: the pacing's own error
        sample(12, 27, 30.0, 0.5),  # behind by 3 while holding back: also the pacing's
    ]
    engine = SimpleNamespace(budgeted=["li-auto-a"], samples=samples, clock=SimClock(start))
    (row,) = _pacing(engine, catalog, {"li-auto-a": 40})  # type: ignore[arg-type]
    assert row["period_begun_before_window_pct_of_budget"] == round(80 / budget * 100, 3)
    assert row["max_abs_deviation_pct_of_budget"] == 10.0
    assert row["behind_at_full_throttle_pct_of_budget"] == 10.0
    assert row["pacing_deviation_pct_of_budget"] == 5.0
    assert len(row["samples"]) == len(samples)

    # Only the day begun before the window: no deviation figure at all.
    engine.samples = samples[:2]
    (row,) = _pacing(engine, catalog, {"li-auto-a": 9})  # type: ignore[arg-type]
    assert row["max_abs_deviation_pct_of_budget"] is None
    assert row["period_begun_before_window_pct_of_budget"] == round(80 / budget * 100, 3)


def test_the_sim_clock_reads_utc_and_adds_elapsed_time() -> None:
    """A start in another zone is the same instant read in UTC: every logged time was
    written at the start's offset (``-04:00``), and a ``ZoneInfo`` start added wall-clock
    time, an hour off across the fall-back. A naive start is refused."""
    from zoneinfo import ZoneInfo

    from vastserver.cliargs import iso_datetime
    from vastserver.pipeline.context import SimClock

    ny = ZoneInfo("America/New_York")
    fall_back = datetime(2026, 11, 1, 0, 0, tzinfo=ny)  # 04:00Z; clocks go back at 06:00Z
    clock = SimClock(fall_back)
    for hours in (1, 2, 3):
        at = clock.at(hours * 3_600_000)
        assert at.tzinfo is UTC and at.utcoffset() is not None
        assert at.timestamp() - fall_back.timestamp() == hours * 3600
    clock.ms = 3 * 3_600_000
    assert clock() == datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    assert clock.ts() == fall_back.timestamp() + 3 * 3600
    assert clock.start.isoformat() == "2026-11-01T04:00:00+00:00"
    with pytest.raises(ValueError):
        SimClock(datetime(2026, 11, 1))
    start = iso_datetime("2026-11-01T02:00:00-04:00")  # what --start gives the clock
    assert start.isoformat() == "2026-11-01T06:00:00+00:00"
    assert SimClock(start)().isoformat() == "2026-11-01T06:00:00+00:00"
