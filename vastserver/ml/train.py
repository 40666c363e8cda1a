"""``vastserver train``: event log -> model bundle (completion model, optional click model).

Dataset
=======
* Decision records give the ads served (raw context + ad fields); beacon records give what
  happened. Ads are joined to **counted** beacons on ``ad_serving_id``. The completion dataset
  holds every served ad with a counted ``impression`` (an ad that never made an impression
  says nothing about completion); label = a counted ``complete`` beacon. The click dataset is
  the same rows with label = a counted ``click``. Completes arrive up to minutes after the
  impression, so an impression of the log's last ``--label-horizon`` seconds (600) with no
  outcome yet (counted ``complete``, ``skip`` or ``error``) is left out, not labelled 0.
* Features come from :mod:`vastserver.ml.features` (``from_record``); the history features are
  computed by :class:`~vastserver.ml.features.LogHistory` walking all records in time order
  (decisions before beacons at equal times), so each row sees only beacons from strictly
  before its decision -- the information the server had.
* Hold-out by time: the last ``--holdout-frac`` (default 20 %) of rows by decision time
  (placed among all impressions, those left out for want of a label included). The
  feature vocabularies are learned on the training part only.

Model
=====
XGBoost ``binary:logistic``, ``hist``, trees of depth 4, at most 200 of them (modest, so
scoring a request stays well under a millisecond): the count is chosen by early stopping on
the latest 15 % of the training rows (by time), then the model is refit on all training rows
with that count -- small logs get fewer trees instead of overfitting. Fixed seed, so the same
log and seed give a byte-identical bundle. A click model (depth 3, 80 trees) is trained when
the training rows hold at least ``--min-click-positives`` (50) clicks, else ``metrics.json``
says why it was skipped.

Evaluation (``metrics.json``): AUC, log loss and a calibration table by decile of the
prediction (mean predicted vs observed rate) on the hold-out, for the model and for the
no-skill baseline that predicts the training base rate everywhere.

Bundle
======
``model.ubj``, ``click_model.ubj`` (optional), ``schema.json`` (feature schema: version,
names, vocabularies), ``metadata.json`` (``created_at`` is the latest event time in the data,
not the wall clock, so retraining on the same log reproduces the bundle), ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from vastserver.cliargs import (
    HelpWithDefaults,
    non_negative_float,
    open_fraction,
    positive_int,
)
from vastserver.eventlog import EventLogCorruptError, ReadStats, read_events
from vastserver.ml.features import (
    SCHEMA_VERSION,
    FeatureRow,
    FeatureSchema,
    LogHistory,
    from_record,
    learn_schema,
    parse_time,
)
from vastserver.ml.model import (
    BUNDLE_FORMAT,
    CLICK_MODEL_FILE,
    METADATA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SCHEMA_FILE,
    ModelBundle,
    ModelError,
    bundle_id,
    file_sha256,
)

__all__ = [
    "CLICK_PARAMS",
    "COMPLETION_PARAMS",
    "Dataset",
    "TrainConfig",
    "auc",
    "calibration",
    "load_dataset",
    "log_loss",
    "main_train",
    "train_bundle",
]

DEFAULT_LABEL_HORIZON_S = 600.0
"""``train --label-horizon``: completes arrive p50 15 s, p99 ~6 min after the impression,
so an impression of the last 10 minutes without an outcome may still complete."""

DEFAULT_THREADS = 1
"""Training threads. ``hist`` gives the same trees for any thread count (checked), and one
thread is as fast as two at demo sizes and does not stall when the cores are busy."""

COMPLETION_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 10.0,
    "lambda": 1.0,
    "max_bin": 128,
}
COMPLETION_ROUNDS = 200
"""At most; early stopping on the latest part of the training rows picks the count."""
EARLY_STOPPING_ROUNDS = 20
EARLY_STOPPING_FRAC = 0.15
MIN_ROUNDS = 10
CLICK_PARAMS: dict[str, Any] = {
    **COMPLETION_PARAMS,
    "max_depth": 3,
    "eta": 0.05,
    "min_child_weight": 20.0,
    "colsample_bytree": 1.0,
}
CLICK_ROUNDS = 80

Vector = npt.NDArray[np.float64]


class TrainError(Exception):
    """The data cannot produce a model (nothing to learn from, a single class...)."""


# ------------------------------------------------------------------------------ dataset


@dataclass(slots=True)
class Dataset:
    """Completion dataset in decision-time order."""

    rows: list[FeatureRow] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    complete: list[int] = field(default_factory=list)
    click: list[int] = field(default_factory=list)
    records: int = 0
    files: int = 0
    decisions: int = 0
    ads_served: int = 0
    counted_impressions: int = 0
    torn_lines: int = 0
    skipped_records: int = 0
    """Records or ads missing fields the features need (skipped, counted)."""
    duplicate_records: int = 0
    """Decisions whose ads, and counted beacons whose (ad, event), were read before."""
    label_horizon_s: float = 0.0
    pending_impressions: int = 0
    """Impressions within ``label_horizon_s`` of the log's last event with no outcome yet
    (no counted complete, skip or error): left out, their label is not known."""
    pending_times: list[float] = field(default_factory=list)
    """Their decision times: the hold-out boundary is placed among all impressions."""
    max_time: float | None = None
    creative_rates: dict[str, float] = field(default_factory=dict)
    """Each creative's completion rate over the whole log (enough impressions only): what
    the bundle carries for serving. Training rows see the rate as of their decision."""


def _opt_id(v: object) -> str | None:
    return None if v is None else str(v)


def load_dataset(
    paths: Iterable[str | os.PathLike[str]], *, label_horizon_s: float = 0.0
) -> Dataset:
    """Read event logs and build the completion/click rows (see the module docstring).

    An impression less than ``label_horizon_s`` seconds before the log's last event whose ad
    has no outcome yet (a counted ``complete``, ``skip`` or ``error``) is left out and
    counted in ``pending_impressions``: its complete beacon may still be on its way."""
    if not label_horizon_s >= 0:
        raise ValueError("label_horizon_s must be >= 0")
    stats = ReadStats()
    # (time, kind, order, payload): kind 0 = decision, 1 = beacon -> decisions first on ties.
    items: list[tuple[float, int, int, Any]] = []
    impressed: set[str] = set()
    impressed_at: dict[str, float] = {}
    ended: set[str] = set()  # a counted skip or error: will not complete
    completed: set[str] = set()
    clicked: set[str] = set()
    ds = Dataset(label_horizon_s=label_horizon_s)
    max_time: float | None = None
    # Each served ad is decided once and each of its events counted once: a record seen again
    # (the same segment copied under another name, two copies of a log) is a duplicate.
    served: set[str] = set()
    for order, rec in enumerate(read_events(list(paths), stats=stats)):
        typ = rec.get("type")
        if typ not in ("decision", "beacon"):
            continue
        try:
            t = _record_time(rec)
        except (KeyError, TypeError, ValueError):
            ds.skipped_records += 1
            continue
        max_time = t if max_time is None else max(max_time, t)
        if typ == "decision":
            ctx, ads = rec.get("context"), rec.get("ads")
            if not isinstance(ctx, dict) or not isinstance(ads, list):
                ds.skipped_records += 1
                continue
            sids = [a.get("ad_serving_id") for a in ads if isinstance(a, dict)]
            ids = [s for s in sids if isinstance(s, str)]  # a damaged record may hold anything
            if ids and all(s in served for s in ids):
                ds.duplicate_records += 1
                continue
            served.update(ids)
            ds.decisions += 1
            ds.ads_served += len(ads)
            if ads:
                slim = {"at": rec["at"], "viewer": rec.get("viewer") or "", "context": ctx}
                items.append((t, 0, order, (slim, ads)))
            continue
        sid = rec.get("ad_serving_id")
        ev = rec.get("event")
        if not _opt_str(sid) or not isinstance(ev, str):
            ds.skipped_records += 1  # a damaged or hand-made record
            continue
        if rec.get("counted") and sid and ev in ("skip", "error"):
            ended.add(sid)
            continue
        if not rec.get("counted") or not sid or ev not in ("impression", "complete", "click"):
            continue
        seen = impressed if ev == "impression" else completed if ev == "complete" else clicked
        if sid in seen:
            ds.duplicate_records += 1
            continue
        if ev == "impression":
            impressed.add(sid)
            impressed_at[sid] = t
            ds.counted_impressions += 1
        elif ev == "complete":
            completed.add(sid)
        else:
            clicked.add(sid)
        cid = rec.get("creative_id")
        beacon = (ev, str(rec.get("line_item_id")), rec.get("viewer"), _opt_id(cid))
        items.append((t, 1, order, beacon))
    ds.records, ds.files, ds.torn_lines = stats.events, stats.files, stats.torn_lines
    ds.max_time = max_time
    items.sort(key=lambda it: (it[0], it[1], it[2]))
    # Outcomes arrive up to minutes after the impression (p99 ~6 min): one without any yet
    # near the end of the log is unknown, not "did not complete".
    horizon_start = (max_time or 0.0) - label_horizon_s
    pending = {
        sid
        for sid, at in impressed_at.items()
        if at > horizon_start and sid not in completed and sid not in ended
    }
    history = LogHistory()
    for t, kind, _, payload in items:
        if kind == 1:
            ev, li, viewer, creative = payload
            history.observe_beacon(ev, li, str(viewer or ""), t, creative)
            continue
        decision, ads = payload
        ctx = decision["context"]
        for ad in ads:
            sid = ad.get("ad_serving_id") if isinstance(ad, dict) else None
            if not isinstance(sid, str) or sid not in impressed:
                continue
            if sid in pending:
                ds.pending_impressions += 1
                ds.pending_times.append(t)
                continue
            try:
                row = from_record(ctx, ad, history.history(decision, ad))
            except (KeyError, TypeError, ValueError, OverflowError):  # int(1e999) overflows
                ds.skipped_records += 1
                continue
            ds.rows.append(row)
            ds.times.append(t)
            ds.complete.append(1 if sid in completed else 0)
            ds.click.append(1 if sid in clicked else 0)
    ds.creative_rates = history.creative_rates()
    return ds


_MAX_TIME = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def _opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _record_time(rec: dict[str, Any]) -> float:
    t = parse_time(str(rec["at"])).timestamp()
    if not 0 <= t < _MAX_TIME:  # the rest of training formats these times as UTC dates
        raise ValueError(f"time out of range: {rec['at']!r}")
    return t


# ------------------------------------------------------------------------------ metrics


def auc(y: Sequence[int] | Vector, p: Sequence[float] | Vector) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN if one
    class is absent."""
    ya = np.asarray(y, dtype=np.float64)
    pa = np.asarray(p, dtype=np.float64)
    n_pos = float(ya.sum())
    n_neg = float(len(ya) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(pa, kind="mergesort")
    sp = pa[order]
    ranks = np.empty(len(pa), dtype=np.float64)
    # average rank per run of equal predictions
    boundaries = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(sp)]))
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = float(ranks[ya == 1].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def log_loss(y: Sequence[int] | Vector, p: Sequence[float] | Vector, eps: float = 1e-15) -> float:
    ya = np.asarray(y, dtype=np.float64)
    pa = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(ya * np.log(pa) + (1 - ya) * np.log(1 - pa)))


def calibration(
    y: Sequence[int] | Vector, p: Sequence[float] | Vector, bins: int = 10
) -> list[dict[str, float]]:
    """Equal-count bins by predicted value: mean predicted vs observed rate per bin."""
    ya = np.asarray(y, dtype=np.float64)
    pa = np.asarray(p, dtype=np.float64)
    order = np.argsort(pa, kind="mergesort")
    out: list[dict[str, float]] = []
    for i, idx in enumerate(np.array_split(order, bins)):
        if len(idx) == 0:
            continue
        out.append(
            {
                "bin": i + 1,
                "count": len(idx),
                "predicted": round(float(pa[idx].mean()), 6),
                "observed": round(float(ya[idx].mean()), 6),
            }
        )
    return out


def _defined(x: float) -> float | None:
    """A metric rounded for ``metrics.json``; None (null) where it is undefined (NaN: a
    hold-out of one class has no AUC), which JSON cannot hold."""
    return None if not math.isfinite(x) else round(x, 6)


def evaluate(y: Vector, p: Vector, base_rate: float) -> dict[str, Any]:
    baseline = np.full(len(y), base_rate)
    m_auc, m_ll = auc(y, p), log_loss(y, p)
    b_ll = log_loss(y, baseline)
    return {
        "rows": len(y),
        "positives": int(y.sum()),
        "observed_rate": round(float(y.mean()), 6) if len(y) else None,
        "model": {
            "auc": _defined(m_auc),
            "log_loss": _defined(m_ll),
            "calibration": calibration(y, p),
        },
        "baseline": {
            "description": "training base rate everywhere (no skill)",
            "prediction": round(base_rate, 6),
            "auc": 0.5,
            "log_loss": _defined(b_ll),
            "calibration": calibration(y, baseline),
        },
        "log_loss_improvement": _defined(1.0 - m_ll / b_ll) if b_ll > 0 else None,
    }


# ------------------------------------------------------------------------------ training


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int = 0
    holdout_frac: float = 0.2
    rounds: int = COMPLETION_ROUNDS
    """Maximum number of trees (early stopping picks the count)."""
    max_depth: int = 4
    min_click_positives: int = 50
    threads: int = DEFAULT_THREADS


def _fit(
    params: dict[str, Any], x: npt.NDArray[np.float32], y: Vector, rounds: int, names: list[str]
) -> Any:
    dtrain = xgb.DMatrix(x, label=y, feature_names=names, nthread=int(params["nthread"]))
    return xgb.train(params, dtrain, num_boost_round=rounds, verbose_eval=False)


def _fit_early_stopped(
    params: dict[str, Any],
    x: npt.NDArray[np.float32],
    y: Vector,
    max_rounds: int,
    names: list[str],
) -> tuple[Any, int]:
    """Pick the number of trees on the latest EARLY_STOPPING_FRAC of the (time-ordered)
    training rows, then refit on all of them with that many trees."""
    k = int(len(y) * (1.0 - EARLY_STOPPING_FRAC))
    rounds = max_rounds
    if k >= 50 and len(y) - k >= 20 and 0 < y[:k].mean() < 1 and 0 < y[k:].mean() < 1:
        nthread = int(params["nthread"])
        dfit = xgb.DMatrix(x[:k], label=y[:k], feature_names=names, nthread=nthread)
        dval = xgb.DMatrix(x[k:], label=y[k:], feature_names=names, nthread=nthread)
        probe = xgb.train(
            params,
            dfit,
            num_boost_round=max_rounds,
            evals=[(dval, "validation")],
            early_stopping_rounds=EARLY_STOPPING_ROUNDS,
            verbose_eval=False,
        )
        rounds = min(max_rounds, max(MIN_ROUNDS, int(probe.best_iteration) + 1))
    return _fit(params, x, y, rounds, names), rounds


def _predict(booster: Any, x: npt.NDArray[np.float32]) -> Vector:
    return np.asarray(booster.inplace_predict(x), dtype=np.float64)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, doc: Any) -> None:
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)  # strict JSON only
    _write_bytes(path, (text + "\n").encode("utf-8"))


def _model_bytes(booster: Any) -> bytes:
    return bytes(booster.save_raw(raw_format="ubj"))


def _schema_bytes(schema: FeatureSchema) -> bytes:
    return (json.dumps(schema.to_json(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def _holdout_start(times: Vector, config: TrainConfig) -> float:
    """Where the hold-out starts: the time of the latest ``holdout_frac`` of ``times``
    (sorted decision times)."""
    n = len(times)
    return float(times[min(n - 1, max(1, round(n * (1.0 - config.holdout_frac))))])


def _pending_note(ds: Dataset) -> str:
    return (
        f"left out {ds.pending_impressions} impressions of the last "
        f"{ds.label_horizon_s:g} s of the log with no outcome yet (--label-horizon)"
    )


def _horizon_hint(ds: Dataset) -> str:
    """For too few rows or one label: what the label horizon left out, when it did. On a log
    that just ended (a short one above all) it can leave out most non-completions."""
    if not ds.pending_impressions:
        return ""
    return (
        f"; {_pending_note(ds)}: when no beacon of the log is still to come (the server "
        "stopped), train with --label-horizon 0"
    )


DUPLICATE_WARNING_SHARE = 0.05
"""Past this share of the records read, duplicates are more than a copied segment: the
summary warns that two logs whose ad serving ids collide were read together."""


def _data_notes(ds: Dataset) -> list[str]:
    """The records the summary must not keep quiet about: skipped, duplicates."""
    notes = []
    if ds.skipped_records:
        notes.append(
            f"skipped {ds.skipped_records} of {ds.records} records (damaged, or missing "
            "fields the features need)"
        )
    if ds.duplicate_records:
        notes.append(
            f"left out {ds.duplicate_records} of {ds.records} records as duplicates (a "
            "decision whose ads, or a counted beacon whose ad and event, were read before)"
        )
        if ds.duplicate_records > DUPLICATE_WARNING_SHARE * ds.records:
            notes.append(
                f"warning: {100 * ds.duplicate_records / ds.records:.0f} % of the records are "
                "duplicates: the events hold a log twice, or two runs whose ad serving ids "
                "collide (two simulate runs of the same simulated hours in one --event-log "
                "directory, or the price/model/truth arms of --compare-model read together); "
                "train on one run's log"
            )
    return notes


def train_bundle(ds: Dataset, out: Path, config: TrainConfig) -> dict[str, Any]:
    """Train on ``ds`` and write the bundle into ``out``; returns the metrics document."""
    n = len(ds.rows)
    if n < 50:
        raise TrainError(
            f"only {n} served ads with a counted impression; need at least 50" + _horizon_hint(ds)
        )
    if not 0.0 < config.holdout_frac < 1.0:
        raise TrainError("holdout fraction must be in (0, 1)")
    times = np.asarray(ds.times, dtype=np.float64)
    y_all = np.asarray(ds.complete, dtype=np.float64)
    c_all = np.asarray(ds.click, dtype=np.float64)
    # The boundary is placed among all served ads with an impression, those left out for
    # want of a label included (they are the latest): the label horizon then decides which
    # recent rows are evaluated, not which rows train.
    t_cut = _holdout_start(np.sort(np.concatenate((times, ds.pending_times))), config)
    if not (times >= t_cut).any():  # every impression after the boundary is pending
        t_cut = _holdout_start(times, config)
    train_mask = times < t_cut
    if not train_mask.any():
        raise TrainError("every row falls in the hold-out (identical decision times)")
    tr = np.flatnonzero(train_mask)
    ho = np.flatnonzero(~train_mask)
    y_tr, y_ho = y_all[tr], y_all[ho]
    if y_tr.min() == y_tr.max():
        raise TrainError(
            "the training rows hold a single completion label; nothing to learn" + _horizon_hint(ds)
        )

    rows_tr = [ds.rows[i] for i in tr]
    rows_ho = [ds.rows[i] for i in ho]
    schema = learn_schema(rows_tr, creative_rates=ds.creative_rates)
    x_tr = schema.vectorize(rows_tr)
    x_ho = schema.vectorize(rows_ho)
    names = list(schema.features)

    params = {
        **COMPLETION_PARAMS,
        "max_depth": config.max_depth,
        "seed": config.seed,
        "nthread": config.threads,
    }
    booster, rounds = _fit_early_stopped(params, x_tr, y_tr, config.rounds, names)
    base_rate = float(y_tr.mean())
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "completion": {
            "label": "counted complete beacon, among ads with a counted impression",
            "train_rows": len(tr),
            "train_base_rate": round(base_rate, 6),
            "trees": rounds,
            "holdout": evaluate(y_ho, _predict(booster, x_ho), base_rate),
        },
    }

    click_booster: Any = None
    c_tr = c_all[tr]
    click_pos = int(c_tr.sum())
    click_params: dict[str, Any] | None = None
    if click_pos >= config.min_click_positives and click_pos < len(tr):
        click_params = {**CLICK_PARAMS, "seed": config.seed, "nthread": config.threads}
        click_booster = _fit(click_params, x_tr, c_tr, CLICK_ROUNDS, names)
        click_rate = float(c_tr.mean())
        metrics["click"] = {
            "label": "counted click beacon, among ads with a counted impression",
            "train_rows": len(tr),
            "train_positives": click_pos,
            "train_base_rate": round(click_rate, 6),
            "holdout": evaluate(c_all[ho], _predict(click_booster, x_ho), click_rate),
        }
    else:
        metrics["click"] = {
            "skipped": f"too few clicks: {click_pos} in the training rows, "
            f"need at least {config.min_click_positives}",
            "train_positives": click_pos,
        }

    model_bytes = _model_bytes(booster)
    schema_bytes = _schema_bytes(schema)
    click_bytes = _model_bytes(click_booster) if click_booster is not None else None
    model_id = bundle_id(model_bytes, schema_bytes)
    sums = {MODEL_FILE: file_sha256(model_bytes), SCHEMA_FILE: file_sha256(schema_bytes)}
    if click_bytes is not None:
        sums[CLICK_MODEL_FILE] = file_sha256(click_bytes)
    metadata: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "model_id": model_id,
        "schema_version": SCHEMA_VERSION,
        "created_at": _iso(ds.max_time) if ds.max_time is not None else None,
        "seed": config.seed,
        "target": "P(complete | impression)",
        "sha256": sums,
        "files": {
            "model": MODEL_FILE,
            "click_model": CLICK_MODEL_FILE if click_booster is not None else None,
            "schema": SCHEMA_FILE,
            "metrics": METRICS_FILE,
        },
        "data": {
            "event_files": ds.files,
            "records": ds.records,
            "torn_lines": ds.torn_lines,
            "skipped_records": ds.skipped_records,
            "duplicate_records": ds.duplicate_records,
            "decisions": ds.decisions,
            "ads_served": ds.ads_served,
            "counted_impressions": ds.counted_impressions,
            "rows": n,
            "train_rows": len(tr),
            "holdout_rows": len(ho),
            "holdout_frac": config.holdout_frac,
            "train_time_range": [_iso(float(times[tr].min())), _iso(float(times[tr].max()))],
            "holdout_time_range": (
                [_iso(float(times[ho].min())), _iso(float(times[ho].max()))] if len(ho) else None
            ),
        },
        "labels": {
            "horizon_s": ds.label_horizon_s,
            "pending_impressions": ds.pending_impressions,
            "pending": "impressions within horizon_s of the log's last event with no counted "
            "complete, skip or error yet: left out, not labelled not-completed",
        },
        "base_rate": round(base_rate, 6),
        "n_features": schema.n_features,
        "xgboost_version": xgb.__version__,
        "numpy_version": np.__version__,
        "params": {k: v for k, v in params.items() if k != "nthread"},
        "num_boost_round": rounds,
        "max_boost_round": config.rounds,
        "early_stopping": {
            "rounds": EARLY_STOPPING_ROUNDS,
            "validation": f"latest {EARLY_STOPPING_FRAC:.0%} of the training rows by time",
            "refit": "on all training rows with the chosen number of trees",
        },
        "click": (
            {
                "params": {k: v for k, v in click_params.items() if k != "nthread"},
                "num_boost_round": CLICK_ROUNDS,
            }
            if click_params is not None
            else metrics["click"]
        ),
    }

    out.mkdir(parents=True, exist_ok=True)
    _write_bytes(out / MODEL_FILE, model_bytes)
    if click_bytes is not None:
        _write_bytes(out / CLICK_MODEL_FILE, click_bytes)
    else:
        (out / CLICK_MODEL_FILE).unlink(missing_ok=True)
    _write_bytes(out / SCHEMA_FILE, schema_bytes)
    _write_json(out / METRICS_FILE, metrics)
    _write_json(out / METADATA_FILE, metadata)  # last: its presence marks a complete bundle
    return metrics


# ------------------------------------------------------------------------------ CLI


def _num(x: float | None, spec: str) -> str:
    """A metric of ``metrics.json`` for the summary; null (undefined) as n/a."""
    return "n/a" if x is None else format(x, spec)


def _summary(metrics: dict[str, Any]) -> str:
    c = metrics["completion"]["holdout"]
    lines = [
        f"completion hold-out ({c['rows']} rows, observed rate {c['observed_rate']}): "
        f"AUC {_num(c['model']['auc'], '.4f')} vs baseline 0.5; "
        f"log loss {_num(c['model']['log_loss'], '.4f')} "
        f"vs baseline {_num(c['baseline']['log_loss'], '.4f')} "
        f"({100 * (c['log_loss_improvement'] or 0):.1f}% better)"
    ]
    k = metrics["click"]
    if "skipped" in k:
        lines.append(f"click model skipped: {k['skipped']}")
    else:
        h = k["holdout"]
        lines.append(
            f"click hold-out ({h['rows']} rows, {h['positives']} clicks): "
            f"AUC {_num(h['model']['auc'], '.4f')}; "
            f"log loss {_num(h['model']['log_loss'], '.5f')} vs "
            f"baseline {_num(h['baseline']['log_loss'], '.5f')}"
        )
    return "\n".join(lines)


def main_train(argv: Sequence[str]) -> int:
    """``train --events PATH... --out MODEL_DIR [--seed S] [--holdout-frac 0.2]``."""
    p = argparse.ArgumentParser(
        prog="vastserver train",
        formatter_class=HelpWithDefaults,
        description="Train the completion (and click) model from event logs into a bundle.",
    )
    p.add_argument(
        "--events", type=Path, nargs="+", required=True, metavar="PATH",
        help="event log directories (their subdirectories too) or segment files",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, required=True, metavar="MODEL_DIR", help="bundle directory to write"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    p.add_argument(
        "--holdout-frac", type=open_fraction, default=0.2, metavar="F",
        help="share of the examples held out for evaluation",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=positive_int, default=COMPLETION_ROUNDS, metavar="N",
        help="boosting rounds of the completion model",
    )  # fmt: skip
    p.add_argument("--max-depth", type=positive_int, default=4, metavar="D", help="tree depth")
    # at least one positive: a click model of none has an undefined AUC (NaN in metrics.json)
    p.add_argument(
        "--min-click-positives", type=positive_int, default=50, metavar="N",
        help="clicks needed to train a click model",
    )  # fmt: skip
    p.add_argument(
        "--label-horizon", type=non_negative_float, default=DEFAULT_LABEL_HORIZON_S,
        metavar="SECONDS",
        help="leave out impressions this close to the log's last event that have no outcome "
        "yet (complete, skip, error) instead of labelling them not completed (completes "
        "arrive up to minutes late; 0 labels every impression)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=positive_int, default=DEFAULT_THREADS, metavar="N",
        help="training threads (the trees do not depend on it)",
    )  # fmt: skip
    try:
        args = p.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    for path in args.events:
        if not path.exists():
            print(f"train: no such file or directory: {path}", file=sys.stderr)
            return 2
    if not 1 <= args.rounds <= 2000 or not 1 <= args.max_depth <= 12:
        print("train: --rounds must be 1..2000 and --max-depth 1..12", file=sys.stderr)
        return 2
    config = TrainConfig(
        seed=args.seed,
        holdout_frac=args.holdout_frac,
        rounds=args.rounds,
        max_depth=args.max_depth,
        min_click_positives=args.min_click_positives,
        threads=max(1, args.threads),
    )
    try:
        ds = load_dataset(args.events, label_horizon_s=args.label_horizon)
        metrics = train_bundle(ds, args.out, config)
        bundle = ModelBundle.load(args.out)  # what the server will do: fail here, not there
    except (TrainError, EventLogCorruptError, ModelError, OSError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    print(
        f"train: wrote {args.out} (model {bundle.version}, {len(ds.rows)} rows)",
        file=sys.stderr,
    )
    print(_summary(metrics), file=sys.stderr)
    if ds.pending_impressions:
        print(_pending_note(ds), file=sys.stderr)
    for note in _data_notes(ds):
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m vastserver.ml.train (same as `vastserver train`)
    raise SystemExit(main_train(sys.argv[1:]))
