"""Model bundles and the model scorer used by the decision pipeline.

:meth:`ModelBundle.load` validates a bundle directory written by ``vastserver train`` and
raises :class:`ModelError` with a message fit for an operator when anything is off: a missing
file, unreadable JSON, a feature schema of another version (``features.SCHEMA_VERSION``), a
model file xgboost cannot parse (truncated, garbage), a feature count that does not match the
schema, or a canary batch (rows built from the bundle's own vocabularies) that does not score
finite values in [0, 1].

:class:`ModelScorer` implements the pipeline's ``Scorer`` protocol: all candidates of a
request are encoded into one float32 matrix (:class:`~vastserver.ml.features.ServingEncoder`)
and scored with a single ``inplace_predict`` (no DMatrix per request) on a booster limited to
one thread (server workers are processes; one request must not fan out over the cores).
Outputs are clipped to ``[1e-6, 1 - 1e-6]``; a non-finite output is replaced by the fallback
(the training base rate unless given) and counted in :attr:`ModelScorer.nonfinite_total`.

Forking: once a process has loaded an xgboost model, its OpenMP runtime is initialised and
**children forked afterwards hang on their first prediction** (checked with xgboost 3.2). Load
bundles in each worker *after* the fork; to validate a bundle in a parent that forks later
(fail fast at start-up), use :func:`vastserver.ml.check.check_bundle`, which loads it in a
fresh ``spawn`` interpreter; import it from :mod:`vastserver.ml.check`, not from here: this
module imports xgboost, which is what that parent must not do.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import xgboost as xgb
from cachetools import LRUCache

from vastserver.ml.check import ModelError, check_bundle
from vastserver.ml.features import (
    SUPPORTED_VERSIONS,
    FeatureSchema,
    RequestPart,
    SchemaError,
    ServingEncoder,
)
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.scoring import ScoringContext

__all__ = [
    "BUNDLE_FORMAT",
    "CLICK_MODEL_FILE",
    "METADATA_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "SCHEMA_FILE",
    "ModelBundle",
    "ModelError",
    "ModelScorer",
    "bundle_id",
    "check_bundle",
    "file_sha256",
    "measure_latency",
]

ALIVE_MAX = 400_000
"""Candidates the score cache may pin between two rate refreshes (then it starts over)."""
SCORE_CACHE_CONTEXTS = 4096
"""Scoring contexts (request features x viewer exposures) whose scores are kept; each holds
the scores of the candidates seen in it (a few dozen)."""

BUNDLE_FORMAT: Final = "vastserver-model-bundle/1"
MODEL_FILE: Final = "model.ubj"
CLICK_MODEL_FILE: Final = "click_model.ubj"
SCHEMA_FILE: Final = "schema.json"
METADATA_FILE: Final = "metadata.json"
METRICS_FILE: Final = "metrics.json"

P_MIN: Final = 1e-6
P_MAX: Final = 1.0 - 1e-6


def bundle_id(model: bytes, schema: bytes) -> str:
    """Short content hash of what determines the predictions (model file + feature schema)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(model).digest())
    h.update(hashlib.sha256(schema).digest())
    return "m-" + h.hexdigest()[:12]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model bundle {path.parent}: missing {path.name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"model bundle {path.parent}: cannot read {path.name}: {e}") from None


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_verified(root: Path, name: str, sums: dict[str, Any]) -> bytes:
    try:
        data = (root / name).read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model bundle {root}: missing {name}") from None
    except OSError as e:
        raise ModelError(f"model bundle {root}: cannot read {name}: {e}") from None
    if file_sha256(data) != sums.get(name):
        raise ModelError(
            f"model bundle {root}: {name} is corrupt (sha256 does not match {METADATA_FILE}; "
            "truncated or modified)"
        )
    return data


def _load_booster(path: Path, data: bytes, n_features: int) -> Any:
    if not data:
        raise ModelError(f"model bundle {path.parent}: {path.name} is empty")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"model bundle {path.parent}: {path.name} is not a valid xgboost model ({first})"
        ) from None
    got = booster.num_features()
    if got != n_features:
        raise ModelError(
            f"model bundle {path.parent}: {path.name} expects {got} features, "
            f"the schema defines {n_features}"
        )
    booster.set_param({"nthread": 1})
    return booster


def _predict(booster: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    out = booster.inplace_predict(x, validate_features=False)
    return np.asarray(out, dtype=np.float64).reshape(-1)


class _DensePredictor:
    """``inplace_predict`` on a float32 matrix without its ~70 µs of Python per call (format
    sniffing, argument JSON, array-interface JSON, output wrapping): the same C entry point
    (``XGBoosterPredictFromDense``, in xgboost since 1.3) with the same arguments, the
    constant ones encoded once. :meth:`for_booster` only returns one that gives exactly
    ``inplace_predict``'s output on the given rows; else the caller keeps ``_predict``.

    It also keeps one proxy matrix (``XGProxyDMatrixCreate``) for all its calls. Given none,
    xgboost makes a new one per call, and setting up its context reads the cgroup CPU quota
    files and compiles a regular expression: ~40 µs of a ~85 µs one-row call (xgboost 3.2,
    strace and perf). A proxy holds the last call's rows, so calls are serialised by a lock
    (the serving loop never contends for it)."""

    def __init__(self, booster: Any) -> None:
        from xgboost import core

        self.booster = booster  # owns the handle
        self._handle = booster.handle
        self._lib = core._LIB
        self._check = core._check_call
        self._ulong: type[ctypes.c_uint64] = getattr(core, "c_bst_ulong")  # noqa: B009
        args = {
            "type": 0,
            "training": False,
            "iteration_begin": 0,
            "iteration_end": 0,
            "missing": float("nan"),
            "strict_shape": False,
            "cache_id": 0,
        }
        self._args = json.dumps(args).encode()
        self._lock = threading.Lock()
        proxy = ctypes.c_void_p()
        self._check(self._lib.XGProxyDMatrixCreate(ctypes.byref(proxy)))
        self._proxy = proxy
        # frees the proxy with this object, without a __del__ (no finaliser on a cycle path)
        weakref.finalize(self, self._lib.XGDMatrixFree, proxy)

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, cols = x.shape
        iface = (
            f'{{"data":[{x.ctypes.data},true],"shape":[{rows},{cols}],'
            f'"strides":null,"typestr":"<f4","version":3}}'
        ).encode()
        shape = ctypes.POINTER(self._ulong)()
        dims = self._ulong()
        preds = ctypes.POINTER(ctypes.c_float)()
        with self._lock:
            self._check(
                self._lib.XGBoosterPredictFromDense(
                    self._handle,
                    iface,
                    self._args,
                    self._proxy,
                    ctypes.byref(shape),
                    ctypes.byref(dims),
                    ctypes.byref(preds),
                )
            )
            size = 1
            for i in range(dims.value):
                size *= int(shape[i])
            if size != rows:
                raise ValueError(f"prediction of {size} values for {rows} rows")
            # copy out of xgboost's per-thread buffer before the next call reuses it
            # (string_at rather than np.ctypeslib.as_array, whose ctypes array type makes a
            # reference cycle)
            raw = ctypes.string_at(preds, 4 * size)
        return np.frombuffer(raw, dtype=np.float32).astype(np.float64)

    @staticmethod
    def for_booster(booster: Any, rows: npt.NDArray[np.float32]) -> _DensePredictor | None:
        try:
            fast = _DensePredictor(booster)
            for n in (1, len(rows)):
                if not np.array_equal(fast(rows[:n]), _predict(booster, rows[:n])):
                    return None
        except Exception:  # a different xgboost: fall back to the public API
            return None
        return fast


@dataclass(frozen=True, slots=True)
class ModelBundle:
    path: Path
    schema: FeatureSchema
    booster: Any
    """xgboost.Booster for P(complete | impression), nthread=1."""
    click_booster: Any | None
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    version: str
    """Content hash of the model file and the schema (``m-<12 hex>``)."""

    @property
    def base_rate(self) -> float:
        rate = self.metadata.get("base_rate")
        if isinstance(rate, int | float) and 0.0 <= rate <= 1.0:
            return float(rate)
        return 0.5

    @staticmethod
    def load(path: Path | str) -> ModelBundle:
        """Load and validate a bundle directory; ModelError says what is wrong.

        Every file's SHA-256 must match ``metadata.json`` before anything is parsed: a
        truncated or modified model file is refused deterministically (xgboost's parser does
        not reliably reject every truncated file)."""
        root = Path(path)
        if not root.is_dir():
            raise ModelError(f"model bundle {root}: not a directory")
        metadata = _read_json(root / METADATA_FILE)
        if not isinstance(metadata, dict):
            raise ModelError(f"model bundle {root}: {METADATA_FILE} is not a JSON object")
        fmt = metadata.get("format")
        if fmt != BUNDLE_FORMAT:
            raise ModelError(
                f"model bundle {root}: format {fmt!r} is not supported (expected {BUNDLE_FORMAT})"
            )
        sums = metadata.get("sha256")
        if not isinstance(sums, dict) or MODEL_FILE not in sums or SCHEMA_FILE not in sums:
            raise ModelError(f"model bundle {root}: {METADATA_FILE} lacks the files' sha256")
        if (root / CLICK_MODEL_FILE).exists() and CLICK_MODEL_FILE not in sums:
            raise ModelError(
                f"model bundle {root}: {CLICK_MODEL_FILE} is not listed in {METADATA_FILE}"
            )
        schema_bytes = _read_verified(root, SCHEMA_FILE, sums)
        try:
            schema_doc = json.loads(schema_bytes)
        except ValueError as e:
            raise ModelError(f"model bundle {root}: {SCHEMA_FILE} is not JSON: {e}") from None
        got_version = schema_doc.get("version") if isinstance(schema_doc, dict) else None
        if got_version not in SUPPORTED_VERSIONS:
            raise ModelError(
                f"model bundle {root}: feature schema {got_version!r} is not one this server "
                f"reads ({', '.join(SUPPORTED_VERSIONS)}); retrain the model with this version"
            )
        try:
            schema = FeatureSchema.from_json(schema_doc)
        except SchemaError as e:
            raise ModelError(f"model bundle {root}: {SCHEMA_FILE}: {e}") from None
        metrics = _read_json(root / METRICS_FILE) if (root / METRICS_FILE).exists() else {}
        model_bytes = _read_verified(root, MODEL_FILE, sums)
        booster = _load_booster(root / MODEL_FILE, model_bytes, schema.n_features)
        click_booster = None
        if CLICK_MODEL_FILE in sums:
            click_bytes = _read_verified(root, CLICK_MODEL_FILE, sums)
            click_booster = _load_booster(root / CLICK_MODEL_FILE, click_bytes, schema.n_features)
        bundle = ModelBundle(
            path=root,
            schema=schema,
            booster=booster,
            click_booster=click_booster,
            metadata=metadata,
            metrics=metrics if isinstance(metrics, dict) else {},
            version=bundle_id(model_bytes, schema_bytes),
        )
        bundle.canary()
        return bundle

    def canary(self) -> None:
        """Score rows built from the schema's vocabularies; ModelError unless finite in [0,1]."""
        x = self.schema.vectorize(self.schema.canary_rows())
        for name, booster in (("completion", self.booster), ("click", self.click_booster)):
            if booster is None:
                continue
            try:
                p = _predict(booster, x)
            except (xgb.core.XGBoostError, ValueError) as e:
                raise ModelError(f"model bundle {self.path}: {name} canary failed: {e}") from None
            if p.shape != (len(x),):
                raise ModelError(
                    f"model bundle {self.path}: {name} canary gave shape {p.shape}, "
                    f"expected ({len(x)},)"
                )
            if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
                raise ModelError(
                    f"model bundle {self.path}: {name} canary scores are not finite "
                    f"probabilities (min {p.min()}, max {p.max()})"
                )


class ModelScorer:
    """``Scorer`` backed by a model bundle: P(complete | impression) per candidate."""

    name = "model"

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        fallback: float | None = None,
        score_cache_contexts: int = SCORE_CACHE_CONTEXTS,
    ) -> None:
        self.bundle = bundle
        self.version: str = bundle.version
        fb = bundle.base_rate if fallback is None else fallback
        if not (math.isfinite(fb) and 0.0 <= fb <= 1.0):
            raise ValueError(f"fallback must be a probability, got {fb}")
        self.fallback = fb
        self.encoder = ServingEncoder(bundle.schema)
        self._booster = bundle.booster
        self._fast = _DensePredictor.for_booster(
            bundle.booster, bundle.schema.vectorize(bundle.schema.canary_rows())
        )
        self.nonfinite_total = 0
        """Predictions that came out NaN/inf and were replaced by ``fallback``."""
        self.predictions_total = 0
        """Scores returned (cached or predicted)."""
        self.cache_hits_total = 0
        """Scores taken from the score cache."""
        self._scores: LRUCache[tuple[RequestPart, int], dict[int, float]] = LRUCache(
            maxsize=score_cache_contexts
        )
        self._alive: dict[int, Candidate] = {}
        """Every candidate scored under the current rates, by id: holding them keeps their ids
        from being reused, so the per-context dicts can map plain ids to plain floats (which
        the garbage collector does not track: hundreds of thousands of cached scores must
        not lengthen every full collection)."""
        self._cached_rates: object = None

    def features(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> npt.NDArray[np.float32]:
        return self.encoder.encode(req, cands, ctx)

    def predict(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        """Scores from the cache where the same candidate was scored in the same context
        (request features and viewer exposures, under the same completion-rate snapshot);
        the others in one batched call. The same features give the same prediction, so the
        cache changes no score."""
        n = len(cands)
        if n == 0:
            return []
        if ctx.completion_rates is not self._cached_rates or len(self._alive) > ALIVE_MAX:
            self._scores.clear()  # the rate features changed: every cached score is stale
            self._alive.clear()
            self._cached_rates = ctx.completion_rates
        key = (RequestPart.from_request(req, ctx.now), ctx.viewer_exposures)
        known = self._scores.get(key)
        if known is None:
            known = self._scores[key] = {}
        alive = self._alive
        out: list[float] = []
        missing: list[int] = []
        for i, c in enumerate(cands):
            hit = known.get(id(c))
            if hit is not None and alive.get(id(c)) is c:
                out.append(hit)
            else:
                out.append(0.0)
                missing.append(i)
        self.predictions_total += n
        self.cache_hits_total += n - len(missing)
        if missing:
            batch = [cands[i] for i in missing]
            for i, c, score in zip(missing, batch, self._score(req, batch, ctx), strict=True):
                out[i] = score
                known[id(c)] = score
                alive[id(c)] = c
        return out

    def _score(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float]:
        n = len(cands)
        x = self.encoder.encode(req, cands, ctx)
        fast = self._fast
        if fast is not None and fast.booster is self._booster:
            p = fast(x)
        else:
            p = _predict(self._booster, x)
        if p.shape != (n,):
            # Never seen with a validated bundle; keep serving on the fallback.
            self.nonfinite_total += n
            return [self.fallback] * n
        bad = ~np.isfinite(p)
        if bad.any():
            self.nonfinite_total += int(bad.sum())
            p[bad] = self.fallback
        np.clip(p, P_MIN, P_MAX, out=p)
        result: list[float] = p.tolist()
        return result

    def predict_click(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float] | None:
        """P(click | impression) per candidate from the click model; None without one.
        Same batching, clipping and fallback (0 for clicks) as :meth:`predict`."""
        booster = self.bundle.click_booster
        if booster is None:
            return None
        n = len(cands)
        if n == 0:
            return []
        p = _predict(booster, self.encoder.encode(req, cands, ctx))
        if p.shape != (n,):
            self.nonfinite_total += n
            return [0.0] * n
        bad = ~np.isfinite(p)
        if bad.any():
            self.nonfinite_total += int(bad.sum())
            p[bad] = 0.0
        np.clip(p, 0.0, P_MAX, out=p)
        clicks: list[float] = p.tolist()
        return clicks


def measure_latency(
    scorer: ModelScorer,
    req: AdRequest,
    cands: Sequence[Candidate],
    ctx: ScoringContext,
    sizes: Sequence[int] = (10, 100, 1000),
    repeats: int = 200,
) -> dict[int, dict[str, float]]:
    """Median/p99 wall time (µs) of ``predict`` for batches of each size (candidates are
    repeated cyclically to reach the size). For reports and benchmarks, not serving."""
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        batch = [cands[i % len(cands)] for i in range(size)]
        scorer.predict(req, batch, ctx)  # warm the caches
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            scorer.predict(req, batch, ctx)
            samples.append((time.perf_counter() - t0) * 1e6)
        samples.sort()
        out[size] = {
            "median_us": round(samples[len(samples) // 2], 1),
            "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 1),
        }
    return out
