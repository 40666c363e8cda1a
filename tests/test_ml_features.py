"""Feature definition: serving and training adapters agree; schema versioning; speed."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.delivery_support import tokens_for
from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.load import load_catalog, parse_catalog
from vastserver.catalog.model import BreakPosition
from vastserver.delivery import DeliveryControl
from vastserver.eventlog import EventLog, read_events
from vastserver.metrics import Metrics
from vastserver.ml.features import (
    OTHER,
    SCHEMA_VERSION,
    AdPart,
    FeatureRow,
    FeatureSchema,
    LogHistory,
    RequestPart,
    SchemaError,
    ServingEncoder,
    from_record,
    from_serving,
    learn_schema,
    parse_time,
)
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest, BreakSpec, Content, Device
from vastserver.pipeline.matching import build_index
from vastserver.pipeline.scoring import PriceScorer, ScoringContext
from vastserver.records import beacon_record
from vastserver.service import AdService, build_snapshot
from vastserver.store.memory import MemoryStore
from vastserver.tracking import Keyring

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = ROOT / "fixtures" / "demo-catalog.json"
START = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def ts(self) -> float:
        return self.now.timestamp()


class RecordingScorer(PriceScorer):
    """Price ranking, but remembers what the pipeline handed to the scorer."""

    def __init__(self) -> None:
        self.calls: list[tuple[AdRequest, list[Candidate], ScoringContext]] = []

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        self.calls.append((req, list(cands), ctx))
        return super().predict(req, cands, ctx)


def _request(ifa: str, *, avail: int = 1, session: str | None = None) -> AdRequest:
    return AdRequest(
        brk=BreakSpec(BreakPosition.MID, pod_duration_ms=120_000, max_ads=4, avail=avail),
        device=Device(
            ifa=ifa,
            ip="198.51.100.7",
            user_agent="Roku/DVP-12.0",
            device_type="ctv",
            platform="roku",
            country="US",
            dma="501",
            language="en",
        ),
        content=Content(
            id="ep-000001",
            genres=("sports", "news"),
            rating="TV-14",
            live=True,
            series="sunday-football",
            channel="ch-sports-1",
        ),
        session=session or f"sess-{ifa}",
        segments=("adults_21plus",),
        key_values={"league": "nfl"},
    )


async def _beacon(service: AdService, log: EventLog, clock: Clock, event: str, token: Any) -> None:
    result = await service.delivery.on_beacon(event, token, service.snapshot.catalog)
    log.append(
        beacon_record(
            event,
            token,
            counted=result.counted,
            result="ok" if result.counted else "replay",
            caller_ip="203.0.113.9",
            device_ip=None,
            device_user_agent=None,
            error_code=None,
            at=clock().isoformat(),
        )
    )


async def test_serving_and_log_adapters_give_identical_vectors(tmp_path: Path) -> None:
    clock = Clock(START)
    store = MemoryStore(clock=clock.ts)
    rng = random.Random(5)
    delivery = DeliveryControl(store, clock=clock, rng=rng, token_max_age_s=7 * 86400)
    scorer = RecordingScorer()
    with EventLog(tmp_path / "events", clock=clock.ts) as log:
        service = AdService(
            build_snapshot(load_catalog(DEMO_CATALOG), "demo", clock()),
            clock=clock,
            metrics=Metrics(),
            keyring=Keyring.from_secrets(["feature-test-secret-0123456789"]),
            delivery=delivery,
            rng=rng,
            scorer=scorer,
            events=log,
        )
        # History: many viewers (so line items reach the completion-rate threshold), and the
        # viewer of interest twice: once more than 24 h ago, then a few hours ago.
        plan = [(f"viewer-{i}", timedelta(minutes=7 * i)) for i in range(45)]
        plan += [("viewer-x", timedelta(hours=-30)), ("viewer-x", timedelta(hours=20))]
        plan.sort(key=lambda p: p[1])
        for n, (ifa, offset) in enumerate(plan):
            clock.now = START + offset
            d = await service.decide(_request(ifa, avail=n % 3, session=f"s{n}"))
            for i, token in enumerate(tokens_for(service, d)):
                clock.now = START + offset + timedelta(seconds=1 + 20 * i)
                await _beacon(service, log, clock, "impression", token)
                if (n + i) % 3:
                    clock.now += timedelta(seconds=15)
                    await _beacon(service, log, clock, "complete", token)
        clock.now = START + timedelta(hours=26, minutes=13, seconds=7)
        await delivery.update_rates(service.snapshot.catalog)  # the pacing loop's refresh
        scorer.calls.clear()
        final = await service.decide(_request("viewer-x", avail=2))
        log.flush()
        records = list(read_events(tmp_path / "events"))

    assert final.ads, "the final break must serve something to compare"
    req, cands, ctx = scorer.calls[-1]
    assert ctx.viewer_exposures > 0
    assert ctx.completion_rates, "some line item must have a completion rate"

    # Training side: walk the log in time order (decisions before beacons at equal times).
    keyed = sorted(
        enumerate(records),
        key=lambda p: (parse_time(p[1]["at"]).timestamp(), p[1]["type"] != "decision", p[0]),
    )
    history = LogHistory()
    final_rec: dict[str, Any] | None = None
    logged_hist: dict[str, dict[str, Any]] = {}
    for _, rec in keyed:
        if rec["type"] == "decision" and rec["ad_serving_ids"] == [
            a.ad_serving_id for a in final.ads
        ]:
            final_rec = rec
            for ad in rec["ads"]:
                logged_hist[ad["ad_serving_id"]] = history.history(rec, ad)
        history.observe(rec)
    assert final_rec is not None

    by_key = {c.key: c for c in cands}
    # At serving the creative rates come with the model bundle: a bundle trained on this
    # log up to the decision carries what the log's history has for each creative then.
    bundle_rates = {
        ad["creative_id"]: logged_hist[ad["ad_serving_id"]]["creative_completion_rate"]
        for ad in final_rec["ads"]
        if logged_hist[ad["ad_serving_id"]]["creative_completion_rate"] is not None
    }
    assert bundle_rates, "some creative must have a completion rate"
    serving_rows: list[FeatureRow] = []
    log_rows: list[FeatureRow] = []
    for ad in final_rec["ads"]:
        cand = by_key[f"{ad['line_item_id']}/{ad['creative_id']}"]
        serving_rows.append(from_serving(req, cand, ctx, creative_rates=bundle_rates))
        log_rows.append(from_record(final_rec["context"], ad, logged_hist[ad["ad_serving_id"]]))
    assert log_rows == serving_rows
    assert {r.viewer_exposures for r in log_rows} == {ctx.viewer_exposures}
    assert any(r.completion_rate is not None for r in log_rows)

    schema = learn_schema(log_rows * 30, min_count=1, creative_rates=bundle_rates)
    assert schema.creative_rate_col is not None
    x_log = schema.vectorize(log_rows)
    x_serve = schema.vectorize(serving_rows)
    np.testing.assert_array_equal(x_log, x_serve)
    # The batched serving encoder gives the same matrix as the row-by-row path.
    served = [by_key[f"{a['line_item_id']}/{a['creative_id']}"] for a in final_rec["ads"]]
    np.testing.assert_array_equal(ServingEncoder(schema).encode(req, served, ctx), x_serve)


def _row(**kw: Any) -> FeatureRow:
    req = RequestPart(
        device_type=kw.pop("device_type", "ctv"),
        platform=kw.pop("platform", "roku"),
        genres=kw.pop("genres", ("drama",)),
        rating=kw.pop("rating", "TV-PG"),
        live=kw.pop("live", False),
        break_position=kw.pop("break_position", "mid"),
        avail=1,
        max_ads=4,
        pod_duration_ms=120_000,
        hour_utc=kw.pop("hour_utc", 1),
    )
    ad = AdPart(
        creative_duration_ms=kw.pop("creative_duration_ms", 30_000),
        categories=kw.pop("categories", ("IAB2",)),
        competitive_category=kw.pop("competitive_category", "auto"),
        tier=kw.pop("tier", "standard"),
    )
    assert not kw
    return FeatureRow(req, ad, completion_rate=None, viewer_exposures=2)


def test_vocabulary_other_bucket_and_none() -> None:
    rows = [_row()] * 30 + [_row(platform="tvos")] * 25 + [_row(platform=None)] * 20
    rows += [_row(platform="vizio")] * 3  # below min_count: "other"
    schema = learn_schema(rows, min_count=20)
    assert schema.vocabularies["platform"] == ("roku", "tvos", "__none__")
    names = schema.features
    x = schema.vectorize([_row(platform="vizio"), _row(platform="webos"), _row(platform=None)])
    other = names.index(f"platform={OTHER}")
    none = names.index("platform=__none__")
    assert x[0, other] == 1.0 and x[1, other] == 1.0 and x[2, none] == 1.0
    # exactly one column hot per categorical
    for cat in ("device_type", "platform", "genre", "break", "iab", "competitive", "tier"):
        cols = [i for i, n in enumerate(names) if n.startswith(f"{cat}=")]
        assert (x[:, cols].sum(axis=1) == 1.0).all(), cat
    # missing values are NaN
    y = schema.vectorize([_row(live=None, rating=None)])
    assert math.isnan(y[0, names.index("live")]) and math.isnan(y[0, names.index("rating_rank")])
    assert math.isnan(y[0, names.index("completion_rate")])
    assert y.dtype == np.float32


def test_values_xgboost_cannot_name_stay_out_of_the_vocabulary() -> None:
    """A free-text genre such as "drama<hd>", seen often enough, became the feature name
    "genre=drama<hd>", which xgboost refuses: train died with a traceback."""
    rows = [_row(platform="roku")] * 30 + [_row(platform="tv[4k]<x>")] * 30
    schema = learn_schema(rows, min_count=20)
    assert schema.vocabularies["platform"] == ("roku",)
    x = schema.vectorize([_row(platform="tv[4k]<x>")])
    assert x[0, schema.features.index(f"platform={OTHER}")] == 1.0


def test_schema_round_trip_and_versioning() -> None:
    schema = learn_schema([_row()] * 30 + [_row(genres=("news", "sports"))] * 30)
    doc = schema.to_json()
    assert doc["version"] == SCHEMA_VERSION
    again = FeatureSchema.from_json(doc)
    assert again.features == schema.features
    assert again.vocabularies == schema.vocabularies
    with pytest.raises(SchemaError, match="features-v0"):
        FeatureSchema.from_json({**doc, "version": "features-v0"})
    with pytest.raises(SchemaError, match="do not match"):
        FeatureSchema.from_json({**doc, "features": [*doc["features"][:-1], "extra"]})
    with pytest.raises(SchemaError):
        FeatureSchema.from_json({"version": SCHEMA_VERSION})
    with pytest.raises(SchemaError):
        FeatureSchema.from_json(["not", "an", "object"])


def test_history_definitions_match_the_delivery_counters() -> None:
    import inspect

    from vastserver.ml.features import MIN_RATE_IMPRESSIONS

    default = inspect.signature(DeliveryControl.update_rates).parameters["min_impressions"]
    assert default.default == MIN_RATE_IMPRESSIONS


def test_log_history_counts_only_counted_beacons_before_the_decision() -> None:
    h = LogHistory()
    t0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def beacon(event: str, at: datetime, counted: bool = True, li: str = "li-1") -> None:
        h.observe(
            {"type": "beacon", "event": event, "counted": counted, "line_item_id": li,
             "viewer": "v1", "at": at.isoformat()}
        )  # fmt: skip

    for i in range(19):
        beacon("impression", t0 + timedelta(minutes=i))
        beacon("complete", t0 + timedelta(minutes=i, seconds=30))
    beacon("impression", t0 + timedelta(hours=1), counted=False)  # replay: ignored
    decision = {"at": (t0 + timedelta(hours=2)).isoformat(), "viewer": "v1"}
    hist = h.history(decision, {"line_item_id": "li-1"})
    assert hist["completion_rate"] is None  # 19 < 20 impressions
    assert hist["viewer_exposures"] == 19
    beacon("impression", t0 + timedelta(hours=1, minutes=5))
    assert h.history(decision, {"line_item_id": "li-1"})["completion_rate"] == 19 / 20
    later = {"at": (t0 + timedelta(hours=27)).isoformat(), "viewer": "v1"}
    assert h.history(later, {"line_item_id": "li-1"})["viewer_exposures"] == 0
    assert h.history(decision, {"line_item_id": "li-2"})["completion_rate"] is None


def test_serving_encoder_batch_of_100_is_fast_and_matches_rows() -> None:
    now = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    catalog = parse_catalog(generate_catalog(300, 3, now=now))
    cands = build_index(catalog).all_candidates(BreakPosition.MID)[:100]
    assert len(cands) == 100
    req = replace(_request("viewer-y"), brk=BreakSpec(BreakPosition.MID, 90_000, 3, avail=4))
    ctx = ScoringContext(now, 7, {c.line_item.id: 0.7 for c in cands[::4]})
    rows = [from_serving(req, c, ctx) for c in cands]
    schema = learn_schema(rows, min_count=2)
    enc = ServingEncoder(schema)
    x = enc.encode(req, cands, ctx)
    np.testing.assert_array_equal(x, schema.vectorize(rows))
    assert x.shape == (100, schema.n_features) and x.dtype == np.float32
    samples = []
    for _ in range(200):
        t0 = time.perf_counter()
        enc.encode(req, cands, ctx)
        samples.append(time.perf_counter() - t0)
    samples.sort()
    assert samples[100] < 0.001, f"median {samples[100] * 1e6:.0f} us for 100 candidates"


def test_serving_encoder_survives_a_catalog_swap() -> None:
    now = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    req = _request("viewer-z")
    ctx = ScoringContext(now)
    a = build_index(parse_catalog(generate_catalog(40, 1, now=now))).all_candidates(
        BreakPosition.MID
    )
    b = build_index(parse_catalog(generate_catalog(40, 2, now=now))).all_candidates(
        BreakPosition.MID
    )
    schema = learn_schema([from_serving(req, c, ctx) for c in a + b], min_count=1)
    enc = ServingEncoder(schema, max_entries=len(a) + 5)
    enc.encode(req, a, ctx)
    got = enc.encode(req, b, ctx)  # overflows: the table resets before the batch
    np.testing.assert_array_equal(got, schema.vectorize([from_serving(req, c, ctx) for c in b]))


def test_creative_rates_are_history_in_training_and_the_bundle_at_serving() -> None:
    """features-v2: a creative's completion rate, as of each decision in training (only
    counted beacons before it) and as of the end of the log in the bundle, for serving."""
    h = LogHistory()
    t0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

    def beacon(event: str, at: datetime, creative: str, counted: bool = True) -> None:
        h.observe(
            {"type": "beacon", "event": event, "counted": counted, "line_item_id": "li-1",
             "creative_id": creative, "viewer": "v1", "at": at.isoformat()}
        )  # fmt: skip

    for i in range(20):
        at = t0 + timedelta(minutes=i)
        beacon("impression", at, "cr-a")
        beacon("impression", at, "cr-b")
        if i % 4 == 0:
            beacon("complete", at + timedelta(seconds=30), "cr-a")
        beacon("complete", at + timedelta(seconds=30), "cr-b", counted=i % 2 == 0)
    decision = {"at": (t0 + timedelta(hours=2)).isoformat(), "viewer": "v1"}
    ad = {"line_item_id": "li-1", "creative_id": "cr-a"}
    assert h.history(decision, ad)["creative_completion_rate"] == 5 / 20
    assert h.history(decision, {**ad, "creative_id": "cr-b"})["creative_completion_rate"] == 0.5
    assert h.history(decision, ad)["completion_rate"] == 15 / 40  # the line item's, both
    assert h.history(decision, {**ad, "creative_id": "cr-new"})["creative_completion_rate"] is None
    assert h.creative_rates() == {"cr-a": 0.25, "cr-b": 0.5}

    # At serving the column comes from the bundle: unknown creatives are missing (NaN).
    now = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    cands = build_index(parse_catalog(generate_catalog(30, 5, now=now))).all_candidates(
        BreakPosition.MID
    )[:6]
    req = _request("viewer-c")
    ctx = ScoringContext(now)
    rates = {cands[0].creative.id: 0.9, cands[1].creative.id: 0.1}
    rows = [from_serving(req, c, ctx, creative_rates=rates) for c in cands]
    schema = learn_schema(rows * 20, min_count=1, creative_rates=rates)
    x = ServingEncoder(schema).encode(req, cands, ctx)
    col = schema.features.index("creative_completion_rate")
    assert col == schema.creative_rate_col == schema.n_features - 1
    for i, c in enumerate(cands):
        want = rates.get(c.creative.id)
        assert math.isnan(x[i, col]) if want is None else x[i, col] == np.float32(want)
    assert not all(c.creative.id in rates for c in cands)
    np.testing.assert_array_equal(x, schema.vectorize(rows))


def test_features_v1_bundles_still_read_without_the_creative_column() -> None:
    v2 = learn_schema([_row()] * 30, creative_rates={"cr-1": 0.5})
    doc = v2.to_json()
    assert doc["creative_rates"] == {"cr-1": 0.5}
    assert FeatureSchema.from_json(doc).creative_rates == {"cr-1": 0.5}
    v1 = FeatureSchema(v2.vocabularies, v2.genre_flags, "features-v1")
    assert v1.creative_rate_col is None and v1.n_features == v2.n_features - 1
    assert v1.features == v2.features[:-1]
    again = FeatureSchema.from_json(v1.to_json())
    assert again.version == "features-v1" and "creative_rates" not in v1.to_json()
    assert v1.vectorize([_row()]).shape == (1, v1.n_features)
    with pytest.raises(SchemaError, match="features-v1"):
        FeatureSchema(v2.vocabularies, v2.genre_flags, "features-v1", {"cr-1": 0.5})
    for bad in ({"cr-1": 1.5}, {"cr-1": "x"}, {"cr-1": True}):
        with pytest.raises(SchemaError, match="cr-1"):
            FeatureSchema.from_json({**doc, "creative_rates": bad})
    with pytest.raises(SchemaError, match="object"):
        FeatureSchema.from_json({**doc, "creative_rates": [1]})
