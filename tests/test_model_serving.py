"""The model in the decision path: fallback, hot reload, shadow, experiments, reports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.conftest import ADMIN, ROOT, ClientFactory
from vastserver.eventlog import read_events
from vastserver.report import calibration_report, experiment_report, main_report, wilson
from vastserver.tracking import expand_macros

DEMO_MODEL = ROOT / "fixtures" / "demo-model"
NS = {"v": "http://www.iab.com/VAST"}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _metric(text: str, start: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(start))


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, dst)
    return dst


async def test_model_scores_the_decision(make_client: ClientFactory) -> None:
    client: Any = await make_client(model=str(DEMO_MODEL))
    ready = await (await client.get("/readyz")).json()
    assert ready["model"]["ready"] and ready["model"]["scorer"] == "model"
    assert ready["model"]["version"].startswith("m-")
    data = await (await client.get("/decide?pod_duration=120&max_ads=4&device_type=ctv")).json()
    assert data["scorer"] == "model"
    preds = [c["prediction"] for c in data["candidates"] if c["prediction"] is not None]
    assert preds and all(0 < p < 1 for p in preds) and len(set(preds)) > 1
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_model_seconds_count{scorer="model",') >= 1
    assert _metric(text, 'vastserver_model_score_count{scorer="model",') >= 1
    assert 'vastserver_model_info{scorer="model",version="m-' in text


async def test_missing_model_falls_back_to_price(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client: Any = await make_client(model=str(tmp_path / "nope"))
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200, "the server serves; only the model is not ready"
    assert body["model"]["ready"] is False and body["model"]["scorer"] == "price"
    assert body["model"]["error"]
    assert (await client.get("/vast?pod_duration=60")).status == 200
    text = await (await client.get("/metrics")).text()
    assert _metric(text, 'vastserver_model_fallback_total{reason="load_failed"}') == 1


async def test_readyz_tells_a_model_off_by_choice_from_a_broken_one(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``VASTSERVER_MODEL=off`` is price scoring by choice: ready, not configured. A bundle
    that does not load is configured and not ready, with the error."""
    off = await (await (await make_client(model="off")).get("/readyz")).json()
    assert off["model"] == {
        "configured": False,
        "ready": True,
        "scorer": "price",
        "version": off["model"]["version"],
        "error": None,
        "shadow": None,
        "experiment": None,
    }
    broken = await (await (await make_client(model=str(tmp_path / "nope"))).get("/readyz")).json()
    assert broken["model"]["configured"] is True and broken["model"]["ready"] is False
    assert broken["model"]["error"] and broken["model"]["scorer"] == "price"
    good = await (await (await make_client(model=str(DEMO_MODEL))).get("/readyz")).json()
    assert good["model"]["configured"] is True and good["model"]["ready"] is True


async def test_corrupt_model_reload_keeps_the_old_one(
    make_client: ClientFactory, model_copy: Path
) -> None:
    client: Any = await make_client(model=str(model_copy), model_watch_s="0")
    v1 = (await (await client.get("/readyz")).json())["model"]["version"]
    data = (model_copy / "model.ubj").read_bytes()
    (model_copy / "model.ubj").write_bytes(data[: len(data) // 2])
    resp = await client.post("/admin/model/reload", headers=AUTH)
    body = await resp.json()
    assert resp.status == 422 and body["reloaded"] is False and body["version"] == v1
    # why it was refused, as a refused catalog reload lists its issues
    assert body["error"] == "model_invalid" and len(body["issues"]) == 1
    assert "model.ubj" in body["issues"][0] or "checksum" in body["issues"][0], body
    assert (await (await client.get("/readyz")).json())["model"]["version"] == v1
    assert (await client.get("/vast")).status == 200
    (model_copy / "model.ubj").write_bytes(data)
    resp = await client.post("/admin/model/reload", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["version"] == v1
    assert (await client.post("/admin/model/reload")).status == 401
    text = await (await client.get("/metrics")).text()
    # a rejected reload is no fallback: the old bundle kept serving
    assert _metric(text, 'vastserver_model_reloads_total{result="rejected"}') == 1
    assert _metric(text, 'vastserver_model_reloads_total{result="ok"}') == 1
    assert _metric(text, "vastserver_model_fallback_total") == 0


async def test_watched_bundle_reloads_when_files_change(
    make_client: ClientFactory, model_copy: Path, tmp_path: Path
) -> None:
    client: Any = await make_client(model=str(model_copy), model_watch_s="1")
    rt = client.server.app
    from vastserver.app import RUNTIME

    models = rt[RUNTIME].service.models
    before = models.primary
    schema = model_copy / "schema.json"
    schema.write_text(schema.read_text() + " ")  # checksum now mismatches: rejected
    for _ in range(40):
        await asyncio.sleep(0.1)
        text = await (await client.get("/metrics")).text()
        if _metric(text, 'vastserver_model_reloads_total{result="rejected"}'):
            break
    assert _metric(text, 'vastserver_model_reloads_total{result="rejected"}') == 1
    assert _metric(text, "vastserver_model_fallback_total") == 0
    assert models.primary is before


async def test_a_bundle_completed_while_a_reload_refused_it_is_picked_up(
    make_client: ClientFactory, model_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer finishes writing while a reload validates (and refuses) the half-written
    bundle: the reload recorded the files as they were after loading, so the watcher never
    saw a change and the old model served for good (a reviewer found it)."""
    import vastserver.models as models_module
    from vastserver.app import RUNTIME

    client: Any = await make_client(model=str(model_copy), model_watch_s="1")
    models = client.server.app[RUNTIME].service.models
    before = models.primary
    schema = model_copy / "schema.json"
    good = schema.read_text()
    schema.write_text(good + " ")  # half-written: the checksum does not match
    real = models_module.load_scorer

    def load_while_the_trainer_finishes(path: Path) -> Any:
        try:
            return real(path)
        finally:
            schema.write_text(good)  # the last file lands during the load

    monkeypatch.setattr(models_module, "load_scorer", load_while_the_trainer_finishes)
    resp = await client.post("/admin/model/reload", headers=AUTH)
    assert resp.status == 422
    monkeypatch.setattr(models_module, "load_scorer", real)
    for _ in range(50):
        await asyncio.sleep(0.1)
        if models.primary is not before:
            break
    assert models.primary is not before and models.primary.version == before.version


async def test_shadow_and_experiment_are_logged(
    make_client: ClientFactory, tmp_path: Path, capsys: Any
) -> None:
    events = tmp_path / "events"
    client: Any = await make_client(
        model=str(DEMO_MODEL),
        shadow_model=str(DEMO_MODEL),
        shadow_sample_pct="100",
        experiment="rank-1",
        arms="model:50,price:50",
        event_log=str(events),
    )
    arms: dict[str, str] = {}
    for i in range(60):
        resp = await client.get(f"/vast?pod_duration=60&max_ads=2&device_id=viewer-{i}")
        root = etree.fromstring(await resp.read())
        for n, ad in enumerate(root.findall("v:Ad", NS)):
            imp = ad.find(".//v:Impression", NS).text.strip()
            path = imp.split("ads.example.com", 1)[1]
            assert (await client.get(expand_macros(path))).status == 204
            if n == 0:
                complete = next(
                    t.text.strip()
                    for t in ad.iterfind(".//v:Tracking", NS)
                    if t.get("event") == "complete"
                )
                await client.get(expand_macros(complete.split("ads.example.com", 1)[1]))
    # the same viewer always lands in the same arm
    for i in (3, 3, 7):
        await client.get(f"/vast?pod_duration=60&device_id=viewer-{i}")
    await client.close()
    records = list(read_events([events]))
    decisions = [r for r in records if r["type"] == "decision"]
    for d in decisions:
        vid = d["viewer"]
        assert arms.setdefault(vid, d["arm"]) == d["arm"], "arm must be sticky per viewer"
        assert d["experiment"] == "rank-1"
        assert d["model_version"] == ("price-v1" if d["arm"] == "price" else d["model_version"])
        if d["ads"]:
            assert d["shadow_version"] and all("shadow_prediction" in a for a in d["ads"])
    assert {"model", "price"} <= set(arms.values())

    rep = experiment_report(records, "rank-1")
    by_arm = {a["arm"]: a for a in rep["arms"]}
    assert by_arm["model"]["decisions"] + by_arm["price"]["decisions"] == len(decisions)
    assert by_arm["model"]["impressions"] > 0 and by_arm["price"]["impressions"] > 0
    lo, hi = by_arm["model"]["completion_rate_ci"]
    assert lo <= by_arm["model"]["completion_rate"] <= hi
    cal = calibration_report(records)
    assert cal["ads"] > 0 and cal["deciles"]

    assert main_report([str(events), "--experiment", "rank-1", "--model"]) == 0
    out = capsys.readouterr().out
    assert "experiment rank-1" in out and "calibration of m-" in out


def test_wilson_interval() -> None:
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    assert wilson(0, 0) == (0.0, 1.0)


def test_bad_experiment_settings_are_refused() -> None:
    from vastserver.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as e:
        load_settings({}, {"experiment": "x"})
    assert "VASTSERVER_ARMS" in str(e.value)
    with pytest.raises(SettingsError):
        load_settings({}, {"experiment": "x", "arms": "a:0"})
    with pytest.raises(SettingsError):
        load_settings({}, {"arms": "a:1"})
    ok = load_settings({}, {"experiment": "x", "arms": f"model:1,challenger:1:{DEMO_MODEL}"})
    assert [a.name for a in ok.arms] == ["model", "challenger"]


def test_demo_model_beats_no_skill_on_its_hold_out() -> None:
    holdout = json.loads((DEMO_MODEL / "metrics.json").read_text())["completion"]["holdout"]
    model, baseline = holdout["model"], holdout["baseline"]
    assert model["auc"] >= 0.65 > baseline["auc"]
    assert model["log_loss"] <= 0.95 * baseline["log_loss"]


def _served(
    asid: str, p: float, scorer: str, complete: bool, version: str | None = None
) -> list[dict[str, Any]]:
    """A decision's records for one served, impressed ad (completed or not)."""
    recs: list[dict[str, Any]] = [
        {"type": "decision", "scorer": scorer, "model_version": version or scorer + "-v",
         "ads": [{"ad_serving_id": asid, "prediction": p}]},
        {"type": "beacon", "counted": True, "ad_serving_id": asid, "event": "impression"},
    ]  # fmt: skip
    if complete:
        recs.append({"type": "beacon", "counted": True, "ad_serving_id": asid, "event": "complete"})
    return recs


def test_calibration_counts_the_models_predictions_only_and_splits_ties_blind() -> None:
    """The price arm's constant 1.0 was mixed into the model's deciles, and ties were
    sorted by their outcome, so one decile held a tie's misses and the next its completes."""

    records: list[dict[str, Any]] = []
    for i in range(40):  # one tie at 0.5, half of it completed
        records += _served(f"m{i}", 0.5, "model", i % 2 == 0)
    for i in range(40):  # the price arm: 1.0 for all, none completed
        records += _served(f"p{i}", 1.0, "price", False)
    cal = calibration_report(records, bins=2)
    assert cal["ads"] == 40 and cal["model_versions"] == ["model-v"]
    observed = [d["observed"] for d in cal["deciles"]]
    assert [d["predicted"] for d in cal["deciles"]] == [0.5, 0.5]
    assert sorted(observed) != [0.0, 1.0], observed


def test_calibration_keeps_model_versions_apart() -> None:
    """A challenger arm's predictions were pooled with the primary's deciles."""
    records: list[dict[str, Any]] = []
    for i in range(20):
        for version, p, done in (("m-primary", 0.9, True), ("m-challenger", 0.2, False)):
            records += _served(f"{version}-{i}", p, "model", done, version)
    cal = calibration_report(records, bins=2)
    parts = {p["model_version"]: p for p in cal["by_version"]}
    assert set(parts) == {"m-primary", "m-challenger"}
    assert parts["m-primary"]["ads"] == 20 and parts["m-primary"]["max_gap"] == pytest.approx(0.1)
    assert [d["predicted"] for d in parts["m-challenger"]["deciles"]] == pytest.approx([0.2, 0.2])
    assert parts["m-challenger"]["max_gap"] == pytest.approx(0.2)


async def test_an_arms_bundle_has_its_own_model_metrics(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A challenger arm's scores and latency landed in the primary's ``scorer="model"``
    series, and ``vastserver_model_info`` did not name its bundle."""
    challenger = tmp_path / "challenger"
    shutil.copytree(DEMO_MODEL, challenger)
    _another_version(challenger, 0.5)

    client: Any = await make_client(
        model=str(DEMO_MODEL), experiment="x", arms=f"model:50,challenger:50:{challenger}"
    )
    for i in range(40):
        assert (await client.get(f"/vast?pod_duration=120&device_id=v{i}")).status == 200
    text = await (await client.get("/metrics")).text()
    versions = re.findall(
        r'^vastserver_model_info\{scorer="model",version="([^"]+)"\} 1.0$', text, re.M
    )
    assert len(set(versions)) == 2, versions  # the primary's and the challenger's
    for v in versions:
        assert _metric(text, f'vastserver_model_score_count{{scorer="model",version="{v}"}}') > 0
        assert _metric(text, f'vastserver_model_seconds_count{{scorer="model",version="{v}"}}') > 0


def _arm_decision(
    seq: int, arm: str, scorer: str, complete: bool, experiment: str = "x"
) -> list[dict[str, Any]]:
    asid = f"ad-{seq}"
    recs: list[dict[str, Any]] = [
        {"type": "decision", "seq": seq, "at": "2026-11-26T12:00:00+00:00",
         "experiment": experiment, "arm": arm, "scorer": scorer,
         "ad_serving_ids": [asid], "ads": [{"ad_serving_id": asid}]},
        {"type": "beacon", "counted": True, "ad_serving_id": asid, "event": "impression",
         "price_cpm": 10.0},
    ]  # fmt: skip
    if complete:
        recs.append({"type": "beacon", "counted": True, "ad_serving_id": asid, "event": "complete"})
    return recs


def test_experiment_compares_the_decisions_each_arms_model_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decisions of the model arm that the price fallback scored (the primary not loaded,
    scoring skipped for the deadline) counted as the model's: the comparison mixed price
    into the model arm. They are left out and counted, and each arm's scorer mix shown."""
    records: list[dict[str, Any]] = []
    for i in range(10):
        records += _arm_decision(i, "model", "model", True)
        records += _arm_decision(100 + i, "model", "price", False)  # fallback
        records += _arm_decision(200 + i, "price", "price", i % 2 == 0)
        records += _arm_decision(300 + i, "challenger", "price", False)  # never scored
    by_arm = {a["arm"]: a for a in experiment_report(records, "x")["arms"]}
    model, price = by_arm["model"], by_arm["price"]
    assert model["scorer_mix"] == {"model": 10, "price": 10}
    assert (model["decisions"], model["excluded_decisions"], model["impressions"]) == (10, 10, 10)
    assert model["completion_rate"] == 1.0
    assert price["scorer_mix"] == {"price": 10}
    assert (price["decisions"], price["excluded_decisions"], price["completion_rate"]) == (
        10, 0, 0.5)  # fmt: skip
    # an arm that never scored with a model (a price arm of another name) is not emptied
    assert by_arm["challenger"]["decisions"] == 10
    # the model arm of an experiment whose model never loaded: nothing to compare
    only_price = [r for i in range(5) for r in _arm_decision(i, "model", "price", True)]
    (arm,) = experiment_report(only_price, "x")["arms"]
    assert (arm["decisions"], arm["excluded_decisions"], arm["impressions"]) == (0, 5, 0)

    events = tmp_path / "events"
    events.mkdir()
    (events / "events-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main_report([str(events), "--experiment", "x"]) == 0
    out = capsys.readouterr().out
    assert "model: decisions by scorer: model 10, price 10; 10 scored by the price" in out
    assert "price: decisions by scorer: price 10\n" in out
    # an experiment no decision of the log belongs to: said, with those that are there
    assert main_report([str(events), "--experiment", "nosuch"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "report: no decision of experiment 'nosuch' in the event log (experiments in it: x)\n"
    )


def test_lmt_requests_without_a_session_split_across_arms() -> None:
    """With ``lmt`` and no session every request hashed the same key (``session:``) and so
    landed in the same arm. They are assigned by a per-request draw of the injected RNG."""
    import random

    from tests.delivery_support import request
    from vastserver.metrics import Metrics
    from vastserver.models import ArmSpec, ModelManager

    def manager(seed: int) -> ModelManager:
        arms = [ArmSpec("model", 1, None), ArmSpec("price", 1, None)]
        return ModelManager(
            Metrics(), model_path=None, experiment="x", arms=arms, rng=random.Random(seed)
        )

    models = manager(5)
    anon = [models.choose(request(None, lmt=True))[0] for _ in range(200)]
    assert 60 < anon.count("model") < 140, anon.count("model")
    again = manager(5)
    assert [again.choose(request(None, lmt=True))[0] for _ in range(200)] == anon
    for session in ("s1", "s2", "s3"):  # a session still sticks to its arm
        assert len({models.choose(request(None, lmt=True, session=session))[0]
                    for _ in range(20)}) == 1  # fmt: skip
    assert len({models.choose(request(f"v{i}"))[0] for i in range(40)}) == 2


async def test_lmt_vast_requests_without_a_session_reach_both_arms(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    client: Any = await make_client(
        model=str(DEMO_MODEL), experiment="x", arms="model:50,price:50", event_log=str(events)
    )
    for _ in range(40):
        assert (await client.get("/vast?pod_duration=60&lmt=1")).status == 200
    await client.close()
    arms = [r["arm"] for r in read_events([events]) if r["type"] == "decision"]
    assert len(arms) == 40 and {"model", "price"} == set(arms)


def _another_version(bundle: Path, factor: float) -> None:
    """Make ``bundle`` another valid version: one creative's rate scaled, checksum updated."""
    import hashlib

    schema = json.loads((bundle / "schema.json").read_text())
    cid = sorted(schema["creative_rates"])[0]
    schema["creative_rates"][cid] = factor * schema["creative_rates"][cid]
    raw = json.dumps(schema).encode()
    (bundle / "schema.json").write_bytes(raw)
    meta = json.loads((bundle / "metadata.json").read_text())
    meta["sha256"]["schema.json"] = hashlib.sha256(raw).hexdigest()
    (bundle / "metadata.json").write_text(json.dumps(meta))


async def test_model_metrics_keep_no_series_of_versions_swapped_out(
    make_client: ClientFactory, model_copy: Path
) -> None:
    """``vastserver_model_seconds`` and ``vastserver_model_score`` kept the series of every
    version ever loaded (a scrape grew by ~25 series a retrain, for good). A swap now drops
    those of versions no longer primary, arm or shadow."""
    client: Any = await make_client(model=str(model_copy), model_watch_s="0")
    seen = []
    for factor in (None, 0.5, 0.25):
        if factor is not None:
            _another_version(model_copy, factor)
            resp = await client.post("/admin/model/reload", headers=AUTH)
            assert resp.status == 200, await resp.text()
        seen.append((await (await client.get("/readyz")).json())["model"]["version"])
        for i in range(5):
            assert (await client.get(f"/vast?pod_duration=120&device_id=s{i}")).status == 200
    assert len(set(seen)) == 3, seen
    text = await (await client.get("/metrics")).text()
    for name in ("vastserver_model_seconds_count", "vastserver_model_score_count"):
        assert _metric(text, f'{name}{{scorer="model",version="{seen[2]}"}}') > 0
        for old in seen[:2]:
            assert f'version="{old}"' not in text, (name, old)
