"""The one feature definition, used by training (from the event log) and serving (from a request).

Raw input
=========
A :class:`FeatureRow` is the raw input for one (request, ad) pair, in three parts:

* :class:`RequestPart` -- the same for every candidate of a request: device type, platform,
  content genres, rating, live, break position, avail, the pod limits (``max_ads``,
  ``pod_duration_ms``) and the UTC hour of the decision;
* :class:`AdPart` -- a function of the catalog objects only: creative duration, advertiser
  categories (IAB), competitive category, tier;
* history -- the line item's historic completion rate, the viewer's recent exposures and
  (features-v2) the creative's historic completion rate.

Two adapters build it: :func:`from_serving` (``AdRequest`` + ``Candidate`` +
``ScoringContext``) and :func:`from_record` (a decision record's ``context``, one of its
``ads`` and a history dict computed from the log by :class:`LogHistory`). Both read only what
the other one also has, so serving and training see the same values (a test checks it on a
decision served through ``AdService`` and read back from the event log).

Choices (features-v2)
=====================
* **Pod slot.** The slot of a candidate is only known after the pod is built from the
  predictions, so it cannot be a feature at scoring time. Training does not use the realised
  slot (``ad["slot"]``) either: both sides use what is known before the pod exists -- break
  position, avail, ``max_ads`` and ``pod_duration_ms``. The model thus predicts completion
  averaged over the slots an ad gets in such a break. ``from_serving``'s ``slot_hint`` is
  accepted for callers that know more, and ignored by this schema version.
* **Hour of day** is the UTC hour of the decision time (the viewer's time zone is unknown).
* **Completion rate** of the line item: at serving ``ctx.completion_rates`` (kept by the
  delivery loop from the shared counters: lifetime counted completes / counted impressions,
  only for line items with at least :data:`MIN_RATE_IMPRESSIONS` impressions, else missing).
  In training :class:`LogHistory` computes the same quantity from the counted ``impression``
  and ``complete`` beacons logged *strictly before* the decision. The serving value lags by up
  to one refresh of the delivery loop (10 s); that small skew is accepted.
* **Creative completion rate** (features-v2): the same quantity per creative. Serving has no
  per-creative counters (they would add a counter to every impression and complete beacon):
  the bundle carries each creative's rate at the end of the training log
  (:attr:`FeatureSchema.creative_rates`, creatives with at least :data:`MIN_RATE_IMPRESSIONS`
  impressions), refreshed whenever a model is trained and hot-reloaded; in training each row
  sees the rate strictly before its decision (:class:`LogHistory`). A line item's creatives
  share its price, so this is where the model can pick the one viewers finish more often.
* **Viewer exposures**: ``ctx.viewer_exposures`` (counted impressions in the last 24 h from the
  store's hour-bucketed window) at serving; in training the counted impressions of the
  same viewer hash in the log, bucketed exactly like the store (``EXPOSURE_WINDOW``).
* **Missing values** are NaN (xgboost's missing value): unknown live flag, unknown rating,
  unknown completion rate.
* **Categoricals** are one-hot over a vocabulary learned at training time (values seen at
  least ``min_count`` times in the training rows, most frequent first, at most
  ``max_values``; a value with ``[``, ``]`` or ``<``, which xgboost refuses in a feature
  name, is never one); anything else, including values first seen in serving, goes to the
  ``__other__`` column. ``None`` is its own value ``__none__``. Genres add multi-hot flags
  for the most frequent genres (``has_genre=...``) on top of the primary (first) genre.

The vocabularies, the feature names, the creative rates and :data:`SCHEMA_VERSION` form the
:class:`FeatureSchema`, serialised into the model bundle; a bundle whose schema version is
not in :data:`SUPPORTED_VERSIONS` is refused (a features-v1 bundle is read without the
creative column) (bump the version whenever a feature's meaning
changes).

Vectorising
===========
Columns are ordered in three contiguous blocks: request columns, ad columns, history columns.
:meth:`FeatureSchema.vectorize` turns a batch of rows into a float32 matrix, encoding each
distinct request/ad part once. On the serving path :class:`ServingEncoder` goes further: it
encodes the request part once per request and keeps each catalog candidate's encoded ad part
in a table keyed by the candidate object's identity (candidates are built once per catalog
snapshot), so a batch is one row copy, one fancy-index gather and two list comprehensions --
no per-candidate dicts or dataclasses.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from vastserver.catalog.model import RATING_RANK
from vastserver.delivery import EXPOSURE_WINDOW
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.scoring import ScoringContext
from vastserver.store.memory import bucket_bounds

__all__ = [
    "MIN_RATE_IMPRESSIONS",
    "SCHEMA_VERSION",
    "AdPart",
    "FeatureRow",
    "FeatureSchema",
    "LogHistory",
    "RequestPart",
    "SchemaError",
    "ServingEncoder",
    "from_record",
    "from_serving",
    "historic_rate",
    "learn_schema",
]

SCHEMA_VERSION: Final = "features-v2"
SUPPORTED_VERSIONS: Final = ("features-v1", "features-v2")
"""Bundles of both load: a features-v1 one has no creative completion-rate column."""
MIN_RATE_IMPRESSIONS: Final = 20
"""Same threshold as ``DeliveryControl.update_rates(min_impressions=20)``."""
OTHER: Final = "__other__"
_UNNAMEABLE = re.compile(r"[\[\]<]")
"""What xgboost refuses in a feature name (free-text genres may hold it)."""
NONE: Final = "__none__"

REQUEST_NUMERIC: Final = (
    "live",
    "rating_rank",
    "avail",
    "max_ads",
    "pod_duration_s",
    "n_genres",
    "hour_utc",
)
REQUEST_CATEGORICAL: Final = ("device_type", "platform", "genre", "break")
AD_NUMERIC: Final = ("creative_duration_s",)
AD_CATEGORICAL: Final = ("iab", "competitive", "tier")
HISTORY_NUMERIC: Final = ("completion_rate", "viewer_exposures")
HISTORY_NUMERIC_V2: Final = (*HISTORY_NUMERIC, "creative_completion_rate")
CATEGORICALS: Final = REQUEST_CATEGORICAL + AD_CATEGORICAL

Matrix = npt.NDArray[np.float32]
NAN: Final = float("nan")


class SchemaError(ValueError):
    """A serialised schema that cannot be used (wrong version, inconsistent, malformed)."""


# ------------------------------------------------------------------------------ raw input


@dataclass(frozen=True, slots=True)
class RequestPart:
    device_type: str | None
    platform: str | None
    genres: tuple[str, ...]
    rating: str | None
    live: bool | None
    break_position: str
    avail: int
    max_ads: int
    pod_duration_ms: int
    hour_utc: int

    @staticmethod
    def from_request(req: AdRequest, now: datetime) -> RequestPart:
        d, c, b = req.device, req.content, req.brk
        return RequestPart(
            device_type=d.device_type,
            platform=d.platform,
            genres=tuple(c.genres),
            rating=c.rating,
            live=c.live,
            break_position=b.position.value,
            avail=b.avail,
            max_ads=b.max_ads,
            pod_duration_ms=b.pod_duration_ms,
            hour_utc=now.astimezone(UTC).hour,
        )

    @staticmethod
    def from_context(context: Mapping[str, Any], at: str) -> RequestPart:
        """From a decision record's ``context`` and ``at`` (see ``records.context_record``)."""
        live = context.get("live")
        return RequestPart(
            device_type=_opt_str(context.get("device_type")),
            platform=_opt_str(context.get("platform")),
            genres=tuple(str(g) for g in context.get("genres") or ()),
            rating=_opt_str(context.get("rating")),
            live=None if live is None else bool(live),
            break_position=str(context["break"]),
            avail=int(context.get("avail") or 0),
            max_ads=int(context["max_ads"]),
            pod_duration_ms=int(context["pod_duration_ms"]),
            hour_utc=parse_time(at).astimezone(UTC).hour,
        )


@dataclass(frozen=True, slots=True)
class AdPart:
    creative_duration_ms: int
    categories: tuple[str, ...]
    competitive_category: str | None
    tier: str
    """Lower-case tier name, as in decision records."""

    @staticmethod
    def from_candidate(cand: Candidate) -> AdPart:
        return AdPart(
            creative_duration_ms=cand.creative.duration_ms,
            categories=tuple(cand.advertiser.categories),
            competitive_category=cand.advertiser.competitive_category,
            tier=cand.line_item.tier.name.lower(),
        )

    @staticmethod
    def from_ad(ad: Mapping[str, Any]) -> AdPart:
        """From one entry of a decision record's ``ads``."""
        return AdPart(
            creative_duration_ms=int(ad["creative_duration_ms"]),
            categories=tuple(str(c) for c in ad.get("categories") or ()),
            competitive_category=_opt_str(ad.get("competitive_category")),
            tier=str(ad["tier"]),
        )


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """Raw features of one (request, ad) pair; see the module docstring."""

    request: RequestPart
    ad: AdPart
    completion_rate: float | None
    """The line item's historic completion rate; None = unknown."""
    viewer_exposures: int
    creative_completion_rate: float | None = None
    """The creative's historic completion rate (features-v2); None = unknown."""


def from_serving(
    req: AdRequest,
    cand: Candidate,
    ctx: ScoringContext,
    slot_hint: int | None = None,
    creative_rates: Mapping[str, float] | None = None,
) -> FeatureRow:
    """Raw features of a candidate at scoring time; ``creative_rates`` are the model
    bundle's (:attr:`FeatureSchema.creative_rates`).

    ``slot_hint`` is ignored: the slot is unknown before the pod is built, so the schema
    uses the break's pod limits instead (see the module docstring)."""
    del slot_hint
    return FeatureRow(
        request=RequestPart.from_request(req, ctx.now),
        ad=AdPart.from_candidate(cand),
        completion_rate=ctx.completion_rates.get(cand.line_item.id),
        viewer_exposures=ctx.viewer_exposures,
        creative_completion_rate=(creative_rates or {}).get(cand.creative.id),
    )


def from_record(
    context: Mapping[str, Any], ad: Mapping[str, Any], history: Mapping[str, Any]
) -> FeatureRow:
    """Raw features of one logged ad.

    ``context`` is the decision record's ``context``, ``ad`` one of its ``ads``; ``history``
    holds what serving had in its ``ScoringContext``: ``at`` (the decision record's ``at``),
    ``viewer_exposures`` and ``completion_rate`` (float or None), as produced by
    :meth:`LogHistory.history`. The realised ``ad["slot"]`` is deliberately not used."""
    rate = history.get("completion_rate")
    crate = history.get("creative_completion_rate")
    return FeatureRow(
        request=RequestPart.from_context(context, str(history["at"])),
        ad=AdPart.from_ad(ad),
        completion_rate=None if rate is None else float(rate),
        viewer_exposures=int(history.get("viewer_exposures") or 0),
        creative_completion_rate=None if crate is None else float(crate),
    )


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)


def parse_time(at: str) -> datetime:
    """An ISO 8601 ``at`` field as an aware datetime (naive = UTC)."""
    dt = datetime.fromisoformat(at)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def historic_rate(impressions: int, completes: int) -> float | None:
    """The completion-rate feature from lifetime counts (as ``DeliveryControl.update_rates``)."""
    if impressions < MIN_RATE_IMPRESSIONS:
        return None
    return min(1.0, completes / impressions)


# ------------------------------------------------------------------------------ history


class LogHistory:
    """History features from an event log, fed in time order.

    Feed every record with :meth:`observe` in time order (decisions before beacons at equal
    times), and ask :meth:`history` for a decision's ads *before* observing beacons that came
    later: the answer then only reflects beacons strictly before the decision, like the
    shared counters the server read. Only counted beacons count, as in the store.
    """

    def __init__(self) -> None:
        self.impressions: Counter[str] = Counter()
        self.completes: Counter[str] = Counter()
        self.creative_impressions: Counter[str] = Counter()
        self.creative_completes: Counter[str] = Counter()
        self._exposures: dict[str, Counter[int]] = {}

    def observe_beacon(
        self,
        event: str,
        line_item_id: str,
        viewer: str,
        at_ts: float,
        creative_id: str | None = None,
    ) -> None:
        """A *counted* beacon (the caller filters ``counted``)."""
        if event == "impression":
            self.impressions[line_item_id] += 1
            if creative_id is not None:
                self.creative_impressions[creative_id] += 1
            bucket = int(at_ts // EXPOSURE_WINDOW.bucket_s)
            self._exposures.setdefault(viewer, Counter())[bucket] += 1
        elif event == "complete":
            self.completes[line_item_id] += 1
            if creative_id is not None:
                self.creative_completes[creative_id] += 1

    def observe(self, record: Mapping[str, Any]) -> None:
        """Any record; only counted beacons with a token change the history."""
        if record.get("type") != "beacon" or not record.get("counted"):
            return
        li = record.get("line_item_id")
        if li is None:
            return
        cid = record.get("creative_id")
        self.observe_beacon(
            str(record["event"]),
            str(li),
            str(record.get("viewer") or ""),
            parse_time(str(record["at"])).timestamp(),
            None if cid is None else str(cid),
        )

    def viewer_exposures(self, viewer: str, at_ts: float) -> int:
        buckets = self._exposures.get(viewer)
        if not buckets:
            return 0
        lo, hi = bucket_bounds(EXPOSURE_WINDOW, at_ts)
        if len(buckets) > 64:  # prune buckets that can never be read again
            for b in [b for b in buckets if b < lo]:
                del buckets[b]
        return sum(n for b, n in buckets.items() if lo <= b <= hi)

    def completion_rate(self, line_item_id: str) -> float | None:
        return historic_rate(self.impressions[line_item_id], self.completes[line_item_id])

    def creative_completion_rate(self, creative_id: str) -> float | None:
        return historic_rate(
            self.creative_impressions[creative_id], self.creative_completes[creative_id]
        )

    def creative_rates(self) -> dict[str, float]:
        """Every creative's rate now (those with enough impressions): what a model bundle
        carries for serving."""
        out: dict[str, float] = {}
        for cid in sorted(self.creative_impressions):
            rate = self.creative_completion_rate(cid)
            if rate is not None:
                out[cid] = rate  # unrounded: training rows saw exactly these values
        return out

    def history(self, decision: Mapping[str, Any], ad: Mapping[str, Any]) -> dict[str, Any]:
        """The ``history`` argument of :func:`from_record` for one ad of a decision record.

        An ad that logged the ``completion_rate`` and ``viewer_exposures`` it was scored
        with gets exactly those: rebuilding them from the log undercounts whatever happened
        before the log starts (retention, a training window, a restart without state). Only
        older records without them are rebuilt from the beacons seen so far."""
        at = str(decision["at"])
        if "viewer_exposures" in ad:
            exposures = ad["viewer_exposures"]
        else:
            exposures = self.viewer_exposures(
                str(decision.get("viewer") or ""), parse_time(at).timestamp()
            )
        return {
            "at": at,
            "viewer_exposures": exposures,
            "completion_rate": (
                ad["completion_rate"]
                if "completion_rate" in ad
                else self.completion_rate(str(ad["line_item_id"]))
            ),
            "creative_completion_rate": (
                None
                if ad.get("creative_id") is None
                else self.creative_completion_rate(str(ad["creative_id"]))
            ),
        }


# ------------------------------------------------------------------------------ schema


def _token(v: str | None) -> str:
    return NONE if v is None else v


def _iab_top(categories: tuple[str, ...]) -> str | None:
    return categories[0].split("-", 1)[0] if categories else None


def _primary_genre(genres: tuple[str, ...]) -> str | None:
    return genres[0] if genres else None


def request_categories(p: RequestPart) -> dict[str, str]:
    return {
        "device_type": _token(p.device_type),
        "platform": _token(p.platform),
        "genre": _token(_primary_genre(p.genres)),
        "break": p.break_position,
    }


def ad_categories(p: AdPart) -> dict[str, str]:
    return {
        "iab": _token(_iab_top(p.categories)),
        "competitive": _token(p.competitive_category),
        "tier": p.tier,
    }


def _feature_names(
    vocabularies: Mapping[str, tuple[str, ...]], genre_flags: tuple[str, ...], version: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    def onehot(cats: Iterable[str]) -> list[str]:
        out: list[str] = []
        for cat in cats:
            out += [f"{cat}={v}" for v in vocabularies[cat]]
            out.append(f"{cat}={OTHER}")
        return out

    req = (
        *REQUEST_NUMERIC,
        *onehot(REQUEST_CATEGORICAL),
        *(f"has_genre={g}" for g in genre_flags),
    )
    ad = (*AD_NUMERIC, *onehot(AD_CATEGORICAL))
    return (
        tuple(req),
        tuple(ad),
        HISTORY_NUMERIC if version == "features-v1" else HISTORY_NUMERIC_V2,
    )


class FeatureSchema:
    """Feature names, vocabularies and the encoders; immutable once built."""

    def __init__(
        self,
        vocabularies: Mapping[str, Sequence[str]],
        genre_flags: Sequence[str],
        version: str = SCHEMA_VERSION,
        creative_rates: Mapping[str, float] | None = None,
    ) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise SchemaError(
                f"feature schema version {version!r} is not supported "
                f"(this build reads {', '.join(SUPPORTED_VERSIONS)}); retrain the model"
            )
        if creative_rates and version == "features-v1":
            raise SchemaError("a features-v1 schema has no creative completion rates")
        rates: dict[str, float] = {}
        for cid, rate in (creative_rates or {}).items():
            if not (
                isinstance(cid, str)
                and isinstance(rate, int | float)
                and not isinstance(rate, bool)
                and 0.0 <= rate <= 1.0
            ):
                raise SchemaError(f"creative completion rate of {cid!r} is not in [0, 1]")
            rates[cid] = float(rate)
        self.creative_rates: Mapping[str, float] = MappingProxyType(rates)
        """Each creative's historic completion rate when the model was trained (those with
        enough counted impressions): the creative column's value at serving."""
        missing = [c for c in CATEGORICALS if c not in vocabularies]
        if missing:
            raise SchemaError(f"feature schema lacks vocabularies for {missing}")
        self.version = version
        self.vocabularies: dict[str, tuple[str, ...]] = {
            c: tuple(str(v) for v in vocabularies[c]) for c in CATEGORICALS
        }
        for cat, vocab in self.vocabularies.items():
            if len(set(vocab)) != len(vocab) or OTHER in vocab:
                raise SchemaError(f"vocabulary of {cat!r} has duplicates or {OTHER!r}")
        self.genre_flags = tuple(str(g) for g in genre_flags)
        if len(set(self.genre_flags)) != len(self.genre_flags):
            raise SchemaError("genre_flags has duplicates")
        req, ad, hist = _feature_names(self.vocabularies, self.genre_flags, version)
        self.request_features, self.ad_features, self.history_features = req, ad, hist
        self.features: tuple[str, ...] = (*req, *ad, *hist)
        self.n_request, self.n_ad = len(req), len(ad)
        self.n_features = len(self.features)
        self.rate_col = self.n_request + self.n_ad
        self.exposure_col = self.rate_col + 1
        self.creative_rate_col: int | None = (
            None if version == "features-v1" else self.exposure_col + 1
        )
        req_index = {n: i for i, n in enumerate(req)}
        ad_index = {n: i for i, n in enumerate(ad)}
        self._req_onehot = {
            cat: {v: req_index[f"{cat}={v}"] for v in (*self.vocabularies[cat], OTHER)}
            for cat in REQUEST_CATEGORICAL
        }
        self._ad_onehot = {
            cat: {v: ad_index[f"{cat}={v}"] for v in (*self.vocabularies[cat], OTHER)}
            for cat in AD_CATEGORICAL
        }
        self._genre_flag_col = {g: req_index[f"has_genre={g}"] for g in self.genre_flags}
        self._req_cache: dict[RequestPart, npt.NDArray[np.float32]] = {}
        self._ad_cache: dict[AdPart, npt.NDArray[np.float32]] = {}

    # -- serialisation

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "features": list(self.features),
            "blocks": {
                "request": self.n_request,
                "ad": self.n_ad,
                "history": len(self.history_features),
            },
            "vocabularies": {c: list(v) for c, v in self.vocabularies.items()},
            "genre_flags": list(self.genre_flags),
            "missing": "NaN",
            "other": OTHER,
            "none": NONE,
            **(
                {"creative_rates": dict(sorted(self.creative_rates.items()))}
                if self.creative_rate_col is not None
                else {}
            ),
        }

    @staticmethod
    def from_json(doc: object) -> FeatureSchema:
        """Rebuild a schema; SchemaError if the version differs or the names do not match."""
        if not isinstance(doc, dict):
            raise SchemaError("feature schema is not a JSON object")
        version = doc.get("version")
        if not isinstance(version, str):
            raise SchemaError("feature schema has no version")
        vocab = doc.get("vocabularies")
        flags = doc.get("genre_flags")
        if not isinstance(vocab, dict) or not isinstance(flags, list):
            raise SchemaError("feature schema lacks vocabularies or genre_flags")
        if not all(isinstance(v, list) for v in vocab.values()):
            raise SchemaError("feature schema vocabularies must be lists")
        rates = doc.get("creative_rates")
        if rates is not None and not isinstance(rates, dict):
            raise SchemaError("feature schema creative_rates must be an object")
        schema = FeatureSchema(vocab, flags, version, rates)
        if list(schema.features) != doc.get("features"):
            raise SchemaError(
                "feature names in the schema do not match the ones its vocabularies define"
            )
        return schema

    # -- encoding

    def encode_request(self, p: RequestPart) -> npt.NDArray[np.float32]:
        """The request block of a row (cached per distinct part)."""
        v = self._req_cache.get(p)
        if v is not None:
            return v
        v = np.zeros(self.n_request, dtype=np.float32)
        v[0] = NAN if p.live is None else float(p.live)
        rank = RATING_RANK.get(p.rating) if p.rating is not None else None
        v[1] = NAN if rank is None else float(rank)
        v[2] = float(p.avail)
        v[3] = float(p.max_ads)
        v[4] = p.pod_duration_ms / 1000.0
        v[5] = float(len(p.genres))
        v[6] = float(p.hour_utc)
        for cat, value in request_categories(p).items():
            cols = self._req_onehot[cat]
            v[cols.get(value, cols[OTHER])] = 1.0
        for g in p.genres:
            col = self._genre_flag_col.get(g)
            if col is not None:
                v[col] = 1.0
        v.setflags(write=False)
        if len(self._req_cache) >= 50_000:
            self._req_cache.clear()
        self._req_cache[p] = v
        return v

    def encode_ad(self, p: AdPart) -> npt.NDArray[np.float32]:
        """The ad block of a row (cached per distinct part)."""
        v = self._ad_cache.get(p)
        if v is not None:
            return v
        v = np.zeros(self.n_ad, dtype=np.float32)
        v[0] = p.creative_duration_ms / 1000.0
        for cat, value in ad_categories(p).items():
            cols = self._ad_onehot[cat]
            v[cols.get(value, cols[OTHER])] = 1.0
        v.setflags(write=False)
        if len(self._ad_cache) >= 50_000:
            self._ad_cache.clear()
        self._ad_cache[p] = v
        return v

    def vectorize(self, rows: Sequence[FeatureRow]) -> Matrix:
        """A float32 matrix, one row per FeatureRow, columns in :attr:`features` order."""
        n = len(rows)
        x = np.empty((n, self.n_features), dtype=np.float32)
        if n == 0:
            return x
        x[:, : self.n_request] = _gather([r.request for r in rows], self.encode_request)
        x[:, self.n_request : self.rate_col] = _gather([r.ad for r in rows], self.encode_ad)
        x[:, self.rate_col] = [
            NAN if r.completion_rate is None else r.completion_rate for r in rows
        ]
        x[:, self.exposure_col] = [r.viewer_exposures for r in rows]
        if self.creative_rate_col is not None:
            x[:, self.creative_rate_col] = [
                NAN if r.creative_completion_rate is None else r.creative_completion_rate
                for r in rows
            ]
        return x

    def canary_rows(self) -> list[FeatureRow]:
        """Synthetic rows that visit every vocabulary value and the unknown/missing cases."""
        v = self.vocabularies
        width = max([len(vals) for vals in v.values()] + [len(self.genre_flags), 1]) + 1
        rows: list[FeatureRow] = []

        def pick(cat: str, i: int) -> str | None:
            vals = [*v[cat], "__canary_unseen__"]
            val = vals[i % len(vals)]
            return None if val == NONE else val

        for i in range(width):
            genre = pick("genre", i)
            flags = self.genre_flags[i % len(self.genre_flags)] if self.genre_flags else None
            genres = tuple(g for g in (genre, flags) if g is not None)
            iab = pick("iab", i)
            rows.append(
                FeatureRow(
                    request=RequestPart(
                        device_type=pick("device_type", i),
                        platform=pick("platform", i),
                        genres=genres,
                        rating=None if i % 3 == 0 else "TV-14",
                        live=None if i % 4 == 0 else bool(i % 2),
                        break_position=pick("break", i) or "mid",
                        avail=i % 5,
                        max_ads=1 + i % 6,
                        pod_duration_ms=15_000 * (1 + i % 8),
                        hour_utc=i % 24,
                    ),
                    ad=AdPart(
                        creative_duration_ms=[6000, 15000, 30000, 60000][i % 4],
                        categories=() if iab is None else (iab,),
                        competitive_category=pick("competitive", i),
                        tier=pick("tier", i) or "standard",
                    ),
                    completion_rate=None if i % 2 else 0.05 * (i % 20),
                    viewer_exposures=i % 30,
                    creative_completion_rate=None if i % 3 else 0.04 * (i % 25),
                )
            )
        return rows


def _gather(parts: list[Any], encode: Any) -> Matrix:
    """Encode each distinct part once, then gather rows by index."""
    index: dict[Any, int] = {}
    idx = np.fromiter(
        (index.setdefault(p, len(index)) for p in parts), dtype=np.intp, count=len(parts)
    )
    table = np.stack([encode(p) for p in index])
    return table[idx]


def learn_schema(
    rows: Sequence[FeatureRow],
    *,
    min_count: int = 20,
    max_values: int = 24,
    genre_flags: int = 8,
    creative_rates: Mapping[str, float] | None = None,
) -> FeatureSchema:
    """Vocabularies from training rows: values seen ``min_count``+ times, most frequent first
    (ties by name), at most ``max_values`` per categorical; the top ``genre_flags`` genres.
    ``creative_rates`` (:meth:`LogHistory.creative_rates` at the end of the log) ride along
    for serving."""
    counts: dict[str, Counter[str]] = {c: Counter() for c in CATEGORICALS}
    genre_counts: Counter[str] = Counter()
    req_seen: Counter[RequestPart] = Counter(r.request for r in rows)
    ad_seen: Counter[AdPart] = Counter(r.ad for r in rows)
    for rp, n in req_seen.items():
        for cat, value in request_categories(rp).items():
            counts[cat][value] += n
        for g in set(rp.genres):
            genre_counts[g] += n
    for ap, n in ad_seen.items():
        for cat, value in ad_categories(ap).items():
            counts[cat][value] += n

    def top(c: Counter[str], k: int) -> tuple[str, ...]:
        ranked = sorted(
            (-n, v)
            for v, n in c.items()
            if n >= min_count and v != OTHER and not _UNNAMEABLE.search(v)
        )
        return tuple(v for _, v in ranked[:k])

    return FeatureSchema(
        {cat: top(counts[cat], max_values) for cat in CATEGORICALS},
        top(genre_counts, genre_flags),
        creative_rates=creative_rates,
    )


# ------------------------------------------------------------------------------ serving


class ServingEncoder:
    """Batch encoder for the serving path (same values as ``vectorize(from_serving(...))``).

    The ad block of each candidate is encoded once and kept in a growing table, keyed by the
    candidate object's ``id`` (the catalog index builds candidates once per snapshot and
    retrieval returns those same objects); the entry keeps a reference to the candidate so the
    id cannot be reused while cached, and is checked by identity. The table is reset when it
    holds ``max_entries`` candidates (old snapshots then fall out). With a creative column
    (features-v2) the table has one more column: the creative's rate from the bundle, as
    fixed per candidate as the ad block.
    """

    def __init__(self, schema: FeatureSchema, max_entries: int = 200_000) -> None:
        self.schema = schema
        self.max_entries = max_entries
        self._slots: dict[int, tuple[Candidate, int]] = {}
        self._width = schema.n_ad + (schema.creative_rate_col is not None)
        self._table = np.zeros((64, self._width), dtype=np.float32)

    def _slot(self, cand: Candidate) -> int:
        n = len(self._slots)
        if n >= len(self._table):
            grown = np.zeros((2 * len(self._table), self._width), dtype=np.float32)
            grown[:n] = self._table[:n]
            self._table = grown
        s = self.schema
        self._table[n, : s.n_ad] = s.encode_ad(AdPart.from_candidate(cand))
        if s.creative_rate_col is not None:
            self._table[n, s.n_ad] = s.creative_rates.get(cand.creative.id, NAN)
        self._slots[id(cand)] = (cand, n)
        return n

    def encode(self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext) -> Matrix:
        s = self.schema
        n = len(cands)
        x = np.empty((n, s.n_features), dtype=np.float32)
        if n == 0:
            return x
        x[:, : s.n_request] = s.encode_request(RequestPart.from_request(req, ctx.now))
        slots = self._slots
        if len(slots) + n > self.max_entries:
            slots.clear()  # never mid-batch: indices below stay valid
        idx = [
            hit[1] if (hit := slots.get(id(c))) is not None and hit[0] is c else self._slot(c)
            for c in cands
        ]
        rows = self._table[idx]
        x[:, s.n_request : s.rate_col] = rows[:, : s.n_ad]
        rates = ctx.completion_rates
        x[:, s.rate_col] = [rates.get(c.line_item.id, NAN) for c in cands]
        x[:, s.exposure_col] = ctx.viewer_exposures
        if s.creative_rate_col is not None:
            x[:, s.creative_rate_col] = rows[:, s.n_ad]
        return x
