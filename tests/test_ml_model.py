"""Model bundles: validation on load, the ModelScorer, the demo model."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ClientFactory
from vastserver.catalog.load import load_catalog
from vastserver.catalog.model import BreakPosition
from vastserver.delivery import DeliveryControl
from vastserver.metrics import Metrics
from vastserver.ml.features import SCHEMA_VERSION
from vastserver.ml.model import (
    ModelBundle,
    ModelError,
    ModelScorer,
    file_sha256,
    measure_latency,
)
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest, BreakSpec, Content, Device
from vastserver.pipeline.matching import build_index
from vastserver.pipeline.scoring import Scorer, ScoringContext
from vastserver.service import AdService, build_snapshot
from vastserver.store.memory import MemoryStore
from vastserver.tracking import Keyring

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "fixtures" / "demo-model"
DEMO_CATALOG = ROOT / "fixtures" / "demo-catalog.json"
NOW = datetime(2026, 11, 25, 1, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(DEMO_MODEL)


@pytest.fixture(scope="module")
def cands() -> list[Candidate]:
    index = build_index(load_catalog(DEMO_CATALOG))
    return index.all_candidates(BreakPosition.MID) + index.all_candidates(BreakPosition.PRE)


def _req(device_type: str | None = "ctv", position: BreakPosition = BreakPosition.MID) -> AdRequest:
    return AdRequest(
        brk=BreakSpec(position, pod_duration_ms=120_000, max_ads=4, avail=2),
        device=Device(device_type=device_type, platform="roku", country="US", ifa="v-1"),
        content=Content(genres=("sports",), rating="TV-14", live=True, series="galaxy-patrol"),
        session="s-1",
    )


def _ctx(cands: list[Candidate]) -> ScoringContext:
    return ScoringContext(NOW, 4, {c.line_item.id: 0.62 for c in cands[::2]})


def _copy(tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(DEMO_MODEL, dest)
    return dest


def test_demo_model_loads_and_scores_the_demo_catalog(
    bundle: ModelBundle, cands: list[Candidate]
) -> None:
    meta = json.loads((DEMO_MODEL / "metadata.json").read_text())
    assert bundle.version == meta["model_id"]
    assert bundle.schema.version == SCHEMA_VERSION
    assert (DEMO_MODEL / "README.md").exists()
    assert sum(p.stat().st_size for p in DEMO_MODEL.iterdir()) < 2_000_000
    scorer = ModelScorer(bundle)
    typed: Scorer = scorer  # satisfies the pipeline protocol
    assert typed.name == "model" and typed.version.startswith("m-")
    for device in ("ctv", "stb", "mobile", "desktop", None):
        for pos in BreakPosition:
            p = scorer.predict(_req(device, pos), cands, _ctx(cands))
            assert len(p) == len(cands)
            assert all(isinstance(v, float) and 0.0 < v < 1.0 for v in p)
    assert scorer.nonfinite_total == 0
    clicks = scorer.predict_click(_req("mobile"), cands, _ctx(cands))
    assert clicks is not None and len(clicks) == len(cands)
    assert all(0.0 <= v < 0.5 for v in clicks)
    # the model learnt something the truth model has: mobile completes less than CTV
    ctv = np.mean(scorer.predict(_req("ctv"), cands, _ctx(cands)))
    mobile = np.mean(scorer.predict(_req("mobile"), cands, _ctx(cands)))
    assert ctv > mobile + 0.1
    metrics = bundle.metrics["completion"]["holdout"]
    assert metrics["model"]["auc"] > 0.65
    assert metrics["model"]["log_loss"] < metrics["baseline"]["log_loss"]


def test_batch_equals_one_by_one(bundle: ModelBundle, cands: list[Candidate]) -> None:
    scorer = ModelScorer(bundle)
    req, ctx = _req(), _ctx(cands)
    batch = scorer.predict(req, cands, ctx)
    single = [ModelScorer(bundle).predict(req, [c], ctx)[0] for c in cands]
    assert batch == single
    assert scorer.predict(req, [], ctx) == []
    # the booster is the same xgboost model: DMatrix prediction agrees
    import xgboost as xgb

    x = scorer.features(req, cands, ctx)
    ref = bundle.booster.predict(xgb.DMatrix(x, feature_names=list(bundle.schema.features)))
    np.testing.assert_allclose(batch, np.clip(ref, 1e-6, 1 - 1e-6), rtol=1e-6)


def test_direct_predictor_gives_exactly_inplace_predict(
    bundle: ModelBundle, cands: list[Candidate]
) -> None:
    from vastserver.ml.model import _DensePredictor, _predict

    scorer = ModelScorer(bundle)
    fast = scorer._fast
    assert fast is not None  # this xgboost passes the start-up check
    for device in ("ctv", "mobile", None):
        x = scorer.features(_req(device), cands, _ctx(cands))
        for rows in (x[:1], x[:7], x, x[::2]):  # x[::2] is not contiguous
            assert np.array_equal(fast(rows), _predict(bundle.booster, rows))

    # anything that disagrees with inplace_predict is refused at start-up
    class _Off:
        handle = bundle.booster.handle

        def inplace_predict(self, x: Any, **kw: Any) -> Any:
            return bundle.booster.inplace_predict(x, **kw) + 0.25

    rows = bundle.schema.vectorize(bundle.schema.canary_rows())
    assert _DensePredictor.for_booster(_Off(), rows) is None


def test_direct_predictor_shares_its_proxy_safely_across_threads(
    bundle: ModelBundle, cands: list[Candidate]
) -> None:
    """The predictor keeps one xgboost proxy matrix for all calls; calls from several
    threads at once (a model reload's canary beside serving) must still each get the
    predictions of their own rows."""
    from concurrent.futures import ThreadPoolExecutor

    from vastserver.ml.model import _predict

    scorer = ModelScorer(bundle)
    fast = scorer._fast
    assert fast is not None
    mats = [
        scorer.features(_req(device), cands, _ctx(cands))[: 1 + 3 * i]
        for i, device in enumerate(("ctv", "mobile", None, "ctv"))
    ]
    want = [_predict(bundle.booster, m) for m in mats]
    assert len({w.shape for w in want}) == len(want)  # distinct sizes: a mix-up would show

    def hammer(i: int) -> bool:
        return all(np.array_equal(fast(mats[i]), want[i]) for _ in range(300))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(hammer, range(4)))


def test_score_cache_changes_no_score(bundle: ModelBundle, cands: list[Candidate]) -> None:
    scorer = ModelScorer(bundle, score_cache_contexts=2)
    req, ctx = _req(), _ctx(cands)
    first = scorer.predict(req, cands[:5], ctx)
    assert scorer.cache_hits_total == 0
    # a partly overlapping batch: the known ones are hits, the rest predicted
    again = scorer.predict(req, cands[3:8], ctx)
    assert scorer.cache_hits_total == 2
    assert again == ModelScorer(bundle).predict(req, cands[3:8], ctx)
    assert again[:2] == first[3:5]
    # other exposures, other request features: other contexts, fresh predictions
    more = ScoringContext(NOW, 9, ctx.completion_rates)
    assert scorer.predict(req, cands[:5], more) == ModelScorer(bundle).predict(req, cands[:5], more)
    mobile = _req("mobile")
    assert scorer.predict(mobile, cands[:5], ctx) == ModelScorer(bundle).predict(
        mobile, cands[:5], ctx
    )
    assert len(scorer._scores) == 2  # bounded
    # new completion rates (a new snapshot object): nothing cached is reused
    hits = scorer.cache_hits_total
    rates = ScoringContext(NOW, 4, {c.line_item.id: 0.05 for c in cands})
    got = scorer.predict(req, cands[:5], rates)
    assert scorer.cache_hits_total == hits
    assert got == ModelScorer(bundle).predict(req, cands[:5], rates)
    assert got != first


class _FakeBooster:
    def __init__(self, out: list[float]) -> None:
        self.out = out

    def inplace_predict(self, x: Any, **kw: Any) -> Any:
        return np.array(self.out[: len(x)], dtype=np.float32)


def test_non_finite_outputs_fall_back_and_are_counted(
    bundle: ModelBundle, cands: list[Candidate]
) -> None:
    scorer = ModelScorer(bundle, fallback=0.3)
    scorer._booster = _FakeBooster([np.nan, 0.5, np.inf, -np.inf, 2.0, -1.0])
    got = scorer.predict(_req(), cands[:6], _ctx(cands))
    assert got == pytest.approx([0.3, 0.5, 0.3, 0.3, 1 - 1e-6, 1e-6])
    assert scorer.nonfinite_total == 3
    # default fallback: the training base rate
    assert ModelScorer(bundle).fallback == pytest.approx(bundle.metadata["base_rate"])
    with pytest.raises(ValueError):
        ModelScorer(bundle, fallback=float("nan"))


def test_a_bad_canary_is_refused(bundle: ModelBundle) -> None:
    broken = ModelBundle(
        path=bundle.path,
        schema=bundle.schema,
        booster=_FakeBooster([float("nan")] * 200),
        click_booster=None,
        metadata=bundle.metadata,
        metrics=bundle.metrics,
        version=bundle.version,
    )
    with pytest.raises(ModelError, match="canary"):
        broken.canary()


def _rehash(path: Path, name: str) -> None:
    """Make metadata.json agree with a modified file (to reach the parser's own checks)."""
    meta = json.loads((path / "metadata.json").read_text())
    meta["sha256"][name] = file_sha256((path / name).read_bytes())
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "rehash"),
    [
        *((d, False) for d in ("truncated", "garbage", "empty", "missing", "json-garbage")),
        # metadata updated to match: the parser's own checks must refuse them (not done for
        # a truncated file: xgboost's parser does not reject every one, the checksum does)
        *((d, True) for d in ("garbage", "empty", "json-garbage")),
    ],
)
def test_corrupt_model_file_is_refused(tmp_path: Path, damage: str, rehash: bool) -> None:
    path = _copy(tmp_path)
    model = path / "model.ubj"
    data = model.read_bytes()
    if damage == "truncated":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        model.write_bytes(random.Random(1).randbytes(len(data)))
    elif damage == "empty":
        model.write_bytes(b"")
    elif damage == "missing":
        model.unlink()
    else:
        model.write_bytes(b'{"learner": {"this": "is not a model"}}')
    if rehash:
        _rehash(path, "model.ubj")
    with pytest.raises(ModelError, match=r"model\.ubj"):
        ModelBundle.load(path)


def test_checksums_are_required(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    del meta["sha256"]
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="sha256"):
        ModelBundle.load(path)
    # a click model the metadata does not know about
    path2 = _copy(tmp_path / "two")
    meta2 = json.loads((path2 / "metadata.json").read_text())
    del meta2["sha256"]["click_model.ubj"]
    (path2 / "metadata.json").write_text(json.dumps(meta2))
    with pytest.raises(ModelError, match=r"click_model\.ubj is not listed"):
        ModelBundle.load(path2)


def test_schema_version_mismatch_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    schema = json.loads((path / "schema.json").read_text())
    schema["version"] = "features-v0"
    (path / "schema.json").write_text(json.dumps(schema))
    _rehash(path, "schema.json")
    with pytest.raises(ModelError, match="features-v0"):
        ModelBundle.load(path)


@pytest.mark.parametrize(
    "damage", ["no-metadata", "bad-format", "no-schema", "bad-schema-json", "vocab-mismatch"]
)
def test_inconsistent_bundle_is_refused(tmp_path: Path, damage: str) -> None:
    path = _copy(tmp_path)
    if damage == "no-metadata":
        (path / "metadata.json").unlink()
    elif damage == "bad-format":
        meta = json.loads((path / "metadata.json").read_text())
        (path / "metadata.json").write_text(json.dumps({**meta, "format": "other/9"}))
    elif damage == "no-schema":
        (path / "schema.json").unlink()
    elif damage == "bad-schema-json":
        (path / "schema.json").write_text("{not json")
    else:
        # a vocabulary value fewer: feature names no longer match the model's features
        schema = json.loads((path / "schema.json").read_text())
        dropped = schema["vocabularies"]["platform"].pop()
        schema["features"].remove(f"platform={dropped}")
        (path / "schema.json").write_text(json.dumps(schema))
        _rehash(path, "schema.json")
    with pytest.raises(ModelError) as err:
        ModelBundle.load(path)
    if damage == "vocab-mismatch":
        assert "features" in str(err.value)
    with pytest.raises(ModelError):
        ModelBundle.load(tmp_path / "nowhere")


@pytest.mark.parametrize("rehash", [False, True])
def test_corrupt_click_model_is_refused(tmp_path: Path, rehash: bool) -> None:
    path = _copy(tmp_path)
    (path / "click_model.ubj").write_bytes(b"\x00garbage")
    if rehash:
        _rehash(path, "click_model.ubj")
    with pytest.raises(ModelError, match="click_model"):
        ModelBundle.load(path)


async def test_model_scorer_in_the_real_decision_path(bundle: ModelBundle) -> None:
    clock = lambda: NOW  # noqa: E731
    rng = random.Random(3)
    service = AdService(
        build_snapshot(load_catalog(DEMO_CATALOG), "demo", NOW),
        clock=clock,
        metrics=Metrics(),
        keyring=Keyring.from_secrets(["model-test-secret-0123456789"]),
        delivery=DeliveryControl(MemoryStore(), clock=clock, rng=rng, token_max_age_s=3600),
        rng=rng,
        scorer=ModelScorer(bundle),
    )
    d = await service.decide(_req())
    assert d.scorer == "model" and d.ads
    assert all(0.0 < a.prediction < 1.0 for a in d.ads)


def test_latency(bundle: ModelBundle, cands: list[Candidate]) -> None:
    scorer = ModelScorer(bundle)
    lat = measure_latency(scorer, _req(), cands, _ctx(cands), sizes=(10, 100), repeats=50)
    print("predict latency (us):", lat)
    assert lat[100]["median_us"] < 5000  # loose: shared CI machines; typical ~0.4 ms


def test_pipeline_and_features_do_not_import_xgboost() -> None:
    code = (
        "import sys, vastserver.service, vastserver.pipeline.decide, vastserver.ml.features; "
        "sys.exit(1 if 'xgboost' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_check_bundle_in_a_fresh_process(tmp_path: Path) -> None:
    from vastserver.ml.model import check_bundle

    info = check_bundle(DEMO_MODEL)
    assert info["version"] == ModelBundle.load(DEMO_MODEL).version
    assert info["schema_version"] == SCHEMA_VERSION and info["click_model"] is True
    path = _copy(tmp_path)
    (path / "model.ubj").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"model\.ubj"):
        check_bundle(path)


async def test_a_features_v1_bundle_still_loads_and_scores(make_client: ClientFactory) -> None:
    """Bundles trained before features-v2 (no creative completion rate) keep serving."""
    v1 = ROOT / "tests" / "data" / "model-features-v1"
    bundle = ModelBundle.load(v1)
    assert bundle.schema.version == "features-v1" and bundle.schema.creative_rate_col is None
    assert ModelBundle.load(DEMO_MODEL).schema.version == SCHEMA_VERSION == "features-v2"
    client: Any = await make_client(model=str(v1))
    resp = await client.get("/decide?pod_duration=60&device_type=ctv")
    assert resp.status == 200
    body = await resp.json()
    assert body["scorer"] == "model" and body["pod"]["ads"]
    assert all(0.0 < a["prediction"] < 1.0 for a in body["pod"]["ads"])
