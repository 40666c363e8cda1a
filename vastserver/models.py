"""Which scorer serves each decision: the model, its fallback, a shadow, experiment arms.

* **Primary**: the model bundle from ``VASTSERVER_MODEL`` (default: the bundled demo model).
  A missing or corrupt bundle at start-up does not stop the server: it serves with the
  **price scorer** (every candidate predicted to complete, so value = price x tier weight),
  ``/readyz`` reports ``model.ready: false`` with the error, and
  ``vastserver_model_fallback_total{reason="load_failed"}`` counts it. ``VASTSERVER_MODEL=off``
  is price scoring by choice: ``model.configured: false``, ``model.ready: true``.
* **Hot reload**: SIGHUP, SIGUSR1 (the model alone), ``POST /admin/model/reload`` (with
  several workers it reaches them all) or a change of the bundle's files (polled every
  ``VASTSERVER_MODEL_WATCH_S`` seconds) loads the new bundle in a worker thread;
  only a bundle that validates (files and checksums, a schema version the feature module reads,
  finite canary scores in [0, 1]) replaces the old one, which keeps serving otherwise.
  ``vastserver_model_reloads_total{result}`` counts them, ``ok`` or ``rejected``.
* **Shadow**: ``VASTSERVER_SHADOW_MODEL`` is scored on ``VASTSERVER_SHADOW_SAMPLE`` of the
  decisions; its predictions go to the event log next to the served ones, never into a value.
* **Experiments**: ``VASTSERVER_EXPERIMENT=NAME`` with ``VASTSERVER_ARMS=arm:weight[:bundle],...``
  splits traffic deterministically by a hash of the viewer key (the session with ``lmt=1``):
  an arm with a bundle scores with it, ``model`` with the primary, anything else price-only.
  The arm is recorded on every decision and labels ``vastserver_experiment_decisions_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vastserver.logs import event
from vastserver.metrics import Metrics
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import AdRequest
from vastserver.pipeline.scoring import PriceScorer, Scorer, ScoringContext

log = logging.getLogger("vastserver.models")


class ArmsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ArmSpec:
    name: str
    weight: float
    bundle: Path | None


def parse_arms(spec: str) -> list[ArmSpec]:
    """``control:50:path/to/bundle,price:50`` -> arms; weights need not sum to 100."""
    arms: list[ArmSpec] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        fields = part.split(":", 2)
        if len(fields) < 2:
            raise ArmsError(f"arm {part!r}: expected name:weight[:bundle]")
        name, weight_raw = fields[0], fields[1]
        if not name.replace("_", "").replace("-", "").isalnum() or len(name) > 32:
            raise ArmsError(f"arm {part!r}: name must be letters, digits, '-' or '_'")
        try:
            weight = float(weight_raw)
        except ValueError:
            raise ArmsError(f"arm {part!r}: weight is not a number") from None
        if not 0 < weight <= 1e6:
            raise ArmsError(f"arm {part!r}: weight must be positive")
        arms.append(ArmSpec(name, weight, Path(fields[2]) if len(fields) == 3 else None))
    if len({a.name for a in arms}) != len(arms):
        raise ArmsError("arm names must be unique")
    if not arms:
        raise ArmsError("no arms")
    return arms


def load_scorer(path: Path) -> Scorer:
    """Load and validate a bundle (raises ``ModelError``)."""
    from vastserver.ml.model import ModelBundle, ModelScorer

    return ModelScorer(ModelBundle.load(path))


def _fingerprint(path: Path) -> tuple[tuple[str, float, int], ...]:
    try:
        files = sorted(p for p in path.iterdir() if p.is_file())
        return tuple((p.name, p.stat().st_mtime, p.stat().st_size) for p in files)
    except OSError:
        return ()


class ModelManager:
    def __init__(
        self,
        metrics: Metrics,
        *,
        model_path: Path | None,
        shadow_path: Path | None = None,
        shadow_sample: float = 0.1,
        experiment: str | None = None,
        arms: Sequence[ArmSpec] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.model_path = model_path
        self.fallback: Scorer = PriceScorer()
        self.primary: Scorer = self.fallback
        self.error: str | None = None
        self.rejected: str | None = None
        """Why the last :meth:`reload` kept the old bundle (None after one that loaded)."""
        self.shadow: Scorer | None = None
        self.shadow_sample = shadow_sample
        self.experiment = experiment
        self.arms: list[tuple[str, float, Scorer | None]] = []
        self.rng = rng or random.Random()
        self._fingerprint: tuple[tuple[str, float, int], ...] = ()
        if model_path is not None:
            self._try_load(model_path)
        if shadow_path is not None:
            try:
                self.shadow = load_scorer(shadow_path)
            except Exception as e:  # ModelError, or anything a broken file raises
                event(log, "shadow_model_rejected", logging.ERROR, error=str(e)[:300])
        total = sum(a.weight for a in arms)
        for a in arms:
            scorer: Scorer | None
            if a.bundle is not None:
                scorer = load_scorer(a.bundle)  # a broken arm bundle is a settings error
            elif a.name == "model":
                scorer = None  # resolved to the primary at decision time (follows reloads)
            else:
                scorer = self.fallback
            self.arms.append((a.name, a.weight / total, scorer))
        self._export()

    @classmethod
    def fixed(cls, metrics: Metrics, scorer: Scorer | None = None) -> ModelManager:
        """A manager that always uses ``scorer`` (in-process tools and tests)."""
        m = cls(metrics, model_path=None)
        if scorer is not None:
            m.use(scorer)
        return m

    def use(self, scorer: Scorer) -> None:
        """Serve with ``scorer`` from now on (already validated by the caller)."""
        self.primary, self.error = scorer, None
        self._export()

    @property
    def configured(self) -> bool:
        """A model was asked for: a bundle path (``VASTSERVER_MODEL`` not ``off``), or a
        scorer handed in. Without one the price scorer serves by choice."""
        return self.model_path is not None or self.primary is not self.fallback

    @property
    def ready(self) -> bool:
        """Serving what was asked for: the configured model, or price scoring when none is
        (``error`` says why a configured bundle is not serving)."""
        return self.error is None

    def _try_load(self, path: Path) -> bool:
        """Load the bundle at start; the price scorer serves in its place if it fails."""
        fp = _fingerprint(path)
        try:
            scorer = load_scorer(path)
        except Exception as e:  # ModelError, or anything a broken file raises
            self.metrics.model_fallback.labels("load_failed").inc()
            msg = str(e)[:300]
            event(log, "model_rejected", logging.ERROR, path=str(path), error=msg)
            self.error = msg
            self._fingerprint = fp
            return False
        self.primary, self.error, self._fingerprint = scorer, None, fp
        event(log, "model_loaded", version=scorer.version, path=str(path))
        self._export()
        return True

    async def reload(self) -> bool:
        """Validate the configured bundle off the event loop, then swap it in (or keep the old
        one and return False)."""
        if self.model_path is None:
            return False
        path = self.model_path
        # The files as they were before loading: if the trainer finishes writing while a
        # half-written bundle is validated (and refused), the watcher sees them change.
        fp = await asyncio.to_thread(_fingerprint, path)
        try:
            scorer = await asyncio.to_thread(load_scorer, path)
        except Exception as e:
            # not a fallback: the bundle serving before keeps serving
            self.metrics.model_reloads.labels("rejected").inc()
            self.rejected = str(e)[:300]
            event(log, "model_rejected", logging.ERROR, path=str(path), error=self.rejected)
            self._fingerprint = fp
            return False
        self.primary, self.error, self.rejected, self._fingerprint = scorer, None, None, fp
        self.metrics.model_reloads.labels("ok").inc()
        event(log, "model_loaded", version=scorer.version, path=str(path))
        self._export()
        return True

    async def watch(self, interval_s: float, stop: asyncio.Event) -> None:
        """Reload when the bundle's files change (name, mtime or size)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass
            if stop.is_set() or self.model_path is None:
                continue
            fp = await asyncio.to_thread(_fingerprint, self.model_path)
            if fp and fp != self._fingerprint:
                await self.reload()

    def _export(self) -> None:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(self.primary.name, self.primary.version).set(1)
        for _, _, scorer in self.arms:  # an arm's own bundle serves decisions too
            if scorer is not None:
                self.metrics.model_info.labels(scorer.name, scorer.version).set(1)
        if self.shadow is not None:
            self.metrics.model_info.labels("shadow", self.shadow.version).set(1)
        live = [self.primary, self.fallback, *(s for _, _, s in self.arms if s is not None)]
        if self.shadow is not None:
            live.append(self.shadow)
        self.metrics.keep_model_versions({(s.name, s.version) for s in live})

    # ------------------------------------------------------------------ per decision

    def choose(self, req: AdRequest) -> tuple[str | None, Scorer]:
        """The experiment arm (None without an experiment) and the scorer for a request."""
        if not self.arms:
            return None, self.primary
        key = req.viewer_key()
        if key is None:
            # Nothing to stick to (lmt: no device id, and no session): a draw per request.
            # Hashing the empty session put every such request in the same arm.
            u = self.rng.random()
        else:
            h = hashlib.blake2b(f"{self.experiment}|{key}".encode(), digest_size=8).digest()
            u = int.from_bytes(h, "big") / 2**64
        acc = 0.0
        for name, share, scorer in self.arms:
            acc += share
            if u < acc:
                return name, scorer or self.primary
        name, _, scorer = self.arms[-1]
        return name, scorer or self.primary

    def shadow_scores(
        self, req: AdRequest, cands: Sequence[Candidate], ctx: ScoringContext
    ) -> list[float] | None:
        if self.shadow is None or not cands or self.rng.random() >= self.shadow_sample:
            return None
        try:
            return self.shadow.predict(req, cands, ctx)
        except Exception as e:  # a shadow must never hurt serving
            event(log, "shadow_failed", logging.WARNING, error=str(e)[:200])
            return None
