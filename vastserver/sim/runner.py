"""Running a simulation end to end: catalog, servers, world, engine, report.

:func:`run_simulation` runs one configuration and returns the report (a JSON-able dict);
:func:`run_comparison` runs the same seed three times, price-only, with the model and with
the ground truth as the perfect model, and reports the completion lifts. Both are
synchronous wrappers around ``asyncio.run``; the ``*_async`` variants run inside an
existing loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.load import CatalogError, load_catalog
from vastserver.eventlog import new_log_problem
from vastserver.geo import DEFAULT_GEO_CSV
from vastserver.pipeline.delivery import SeparationRules
from vastserver.settings import Settings, SettingsError
from vastserver.sim.config import SimConfig
from vastserver.sim.engine import Engine
from vastserver.sim.harness import PUBLIC_URL, Servers, SimClock, SimError, server_settings
from vastserver.sim.report import build_report, comparison_report
from vastserver.sim.truth_scorer import TRUTH_SCORER, TruthScorer
from vastserver.sim.world import build_world

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "fit_budgets",
    "generated_catalog",
    "run_comparison",
    "run_comparison_async",
    "run_simulation",
    "run_simulation_async",
]

REDIS_PREFIX = "vs:"
"""``RedisStore``'s default key prefix (``create_app`` does not set another)."""


def generated_catalog(
    line_items: int, seed: int, *, now: datetime, households: int, budget_per_household: float
) -> dict[str, Any]:
    """``generate_catalog`` with budgets the simulated population can actually spend."""
    return fit_budgets(
        generate_catalog(line_items, seed, now=now),
        households=households,
        per_household=budget_per_household,
        seed=seed,
    )


def fit_budgets(
    doc: Mapping[str, Any], *, households: int, per_household: float, seed: int
) -> dict[str, Any]:
    """A copy of ``doc`` where every line item with a pacing budget gets a *daily impression*
    budget of about ``per_household * households`` (x0.5..1.5), keeping its delivery mode.

    Generated catalogs carry budgets for millions of viewers; against a few thousand
    simulated households no line item would ever be paced or exhausted."""
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    rng = random.Random(f"sim:{seed}:budgets")
    for li in out.get("line_items", []):
        pacing = li.get("pacing")
        if not isinstance(pacing, dict) or not pacing.get("budget"):
            continue
        daily = max(10, round(per_household * households * rng.uniform(0.5, 1.5)))
        pacing["budget"] = {"daily_impressions": daily}
        pacing.setdefault("delivery", "even")
    return out


# ---------------------------------------------------------------------------- redis


@contextlib.asynccontextmanager
async def _redis(url: str) -> AsyncIterator[Redis]:
    """A client for ``url``; a Redis error (the server unreachable, a refused login...) is
    a set-up problem, raised as ``SimError``, not a failed guarantee."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    r = Redis.from_url(url)
    try:
        yield r
    except RedisError as e:
        raise SimError(f"the Redis database at {_redacted(url)} is not usable: {e}") from None
    finally:
        await r.aclose()


def _redacted(url: str) -> str:
    """``url`` without a password it may carry."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


async def _redis_keys(url: str) -> int:
    async with _redis(url) as r:
        n = 0
        async for _ in r.scan_iter(match=REDIS_PREFIX + "*", count=1000):
            n += 1
            if n >= 1000:
                break
        return n


async def _redis_clear(url: str) -> None:
    async with _redis(url) as r:
        batch: list[bytes] = []
        async for key in r.scan_iter(match=REDIS_PREFIX + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await r.delete(*batch)
                batch.clear()
        if batch:
            await r.delete(*batch)


# ---------------------------------------------------------------------------- one run


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WATCHED_METRICS = {
    "vastserver_beacons_total": "beacons",
    "vastserver_degradations_total": "degradations",
    "vastserver_shed_total": "shed",
    "vastserver_store_errors_total": "store_errors",
    "vastserver_model_seconds_count": "scorer_calls",
    "vastserver_pods_total": "pods",
}


async def _server_metrics(servers: Servers) -> dict[str, dict[str, int]]:
    """Selected Prometheus counters, summed over the instances, keyed by their labels."""
    out: dict[str, Counter[str]] = {name: Counter() for name in WATCHED_METRICS.values()}
    for inst in servers.instances:
        res = await servers.get(PUBLIC_URL + "/metrics", endpoint="metrics", instance=inst.index)
        for line in res.body.splitlines():
            m = _SAMPLE_RE.match(line.strip())
            if m is None or m.group(1) not in WATCHED_METRICS:
                continue
            labels = " ".join(  # by scorer, not by its version
                v for k, v in _LABEL_RE.findall(m.group(2) or "") if k != "version"
            )
            value = int(float(m.group(3)))
            if value:
                out[WATCHED_METRICS[m.group(1)]][labels or "total"] += value
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def _scorer(servers: Servers, model: Path | None, truth: bool = False) -> dict[str, Any]:
    """The scorer the servers rank with; the run stops if it is not the one asked for."""
    scorers = servers.scorers()
    name, version, error = scorers[0]
    want = TRUTH_SCORER if truth else "price" if model is None else "model"
    if any(n != want for n, _, _ in scorers):
        why = ""
        if error:  # a load error names its bundle as a rule ("model bundle PATH: ...")
            why = f" ({error})" if str(model) in error else f" (model bundle {model}: {error})"
        raise SimError(
            f"the servers score with {sorted({n for n, _, _ in scorers})}, not {want!r}{why}"
        )
    return {"name": name, "version": version}


def _config_summary(
    cfg: SimConfig, catalog_path: Path, catalog_version: str, sep: SeparationRules
) -> dict[str, Any]:
    f = cfg.faults
    return {
        "seed": cfg.seed,
        "households": cfg.households,
        "hours": cfg.hours,
        "start": cfg.start.isoformat(),
        "instances": cfg.instances,
        "redis": bool(cfg.redis_url),
        "model": str(cfg.model_path) if cfg.model_path else None,
        "truth_ranking": cfg.truth_ranking,
        "ssai_share": cfg.ssai_share,
        "lookahead_share": cfg.lookahead_share,
        "sessions_per_household": cfg.sessions_per_household,
        "catalog": catalog_path.name,
        "catalog_version": catalog_version,
        "faults": {
            "lost": f.lost,
            "duplicate": f.duplicate,
            "late": f.late,
            "late_s": [f.late_min_s, f.late_max_s],
            "not_used_player": f.not_used_player,
            "not_used_ssai": f.not_used_ssai,
            "no_fill_error": f.no_fill_error,
        },
        "settings": {k: str(v) for k, v in sorted(cfg.settings.items())},
        "separation": {
            "creative_breaks": sep.creative_breaks,
            "creative_minutes": sep.creative_minutes,
            "competitive_breaks": sep.competitive_breaks,
        },
    }


def _check_new_log(directory: Path | None) -> None:
    """A log directory that already holds a log would be read back as one log with it."""
    problem = None if directory is None else new_log_problem(directory)
    if problem is not None:
        raise SimError(f"--event-log: {problem}")


async def run_simulation_async(config: SimConfig, workdir: Path | None = None) -> dict[str, Any]:
    """Run one simulation; ``workdir`` receives a generated catalog (else a temp dir)."""
    problems = config.validate()
    if problems:
        raise SimError("invalid simulation config:\n" + "\n".join(f"  - {p}" for p in problems))
    _check_new_log(config.event_log_dir)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vastserver-sim-") as tmp:
        catalog_path = config.catalog_path
        if catalog_path is None:
            catalog_path = (workdir or Path(tmp)) / "catalog.json"
            catalog_path.parent.mkdir(parents=True, exist_ok=True)
            catalog_path.write_text(json.dumps(config.catalog_doc, indent=1) + "\n")
        try:
            catalog = load_catalog(catalog_path)
        except CatalogError as e:
            raise SimError(str(e)) from None
        settings: list[Settings] = []
        try:
            for i in range(config.instances):
                log_dir = config.event_log_dir / f"instance-{i}" if config.event_log_dir else None
                settings.append(
                    server_settings(
                        catalog=catalog_path,
                        redis_url=config.redis_url,
                        model=config.model_path,
                        event_log=log_dir,
                        extra=config.settings,
                        env=config.env,
                    )
                )
        except SettingsError as e:
            raise SimError(str(e)) from None
        if config.redis_url:
            if await _redis_keys(config.redis_url) and not config.flush_redis:
                raise SimError(
                    f"the Redis database at {config.redis_url} already holds server keys "
                    f"({REDIS_PREFIX}*): give the simulator an empty database, or allow it "
                    "to delete them (--flush-redis)"
                )
            await _redis_clear(config.redis_url)
        s0 = settings[0]
        world = build_world(
            seed=config.seed,
            households=config.households,
            start=config.start,
            hours=config.hours,
            geo_path=s0.geo_path or DEFAULT_GEO_CSV,
            ssai_share=config.ssai_share,
            sessions_per_household=config.sessions_per_household,
        )
        clock = SimClock(config.start)
        try:
            async with Servers(
                settings, clock, config.seed, TruthScorer if config.truth_ranking else None
            ) as servers:
                scorer = _scorer(servers, config.model_path, config.truth_ranking)
                engine = Engine(config, world, catalog, servers, clock)
                await engine.run()
                final_rows = await engine.line_items(0)
                metrics = await _server_metrics(servers)
        finally:
            if config.redis_url:
                await _redis_clear(config.redis_url)
        separation = SeparationRules(
            creative_breaks=s0.separation_breaks,
            creative_minutes=s0.separation_minutes,
            competitive_breaks=s0.competitive_separation_breaks,
        )
        report = build_report(
            engine,
            catalog,
            config=_config_summary(config, catalog_path, catalog.version, separation),
            separation=separation,
            final_rows=final_rows,
            server_metrics=metrics,
            scorer=scorer,
            world={
                "households": len(world.households),
                "devices": sum(len(h.devices) for h in world.households),
                "sessions_planned": len(world.sessions),
                "content_items": len(world.library),
            },
        )
    report["run"] = {
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "simulated_seconds": round(clock.ms / 1000, 1),
    }
    return report


def run_simulation(config: SimConfig, workdir: Path | None = None) -> dict[str, Any]:
    return asyncio.run(run_simulation_async(config, workdir))


async def run_comparison_async(config: SimConfig, workdir: Path | None = None) -> dict[str, Any]:
    """The same seed three times: price-only ranking, ``config.model_path``, and the ground
    truth itself (the perfect model, the ceiling of the lift); with the lifts."""
    if config.model_path is None:
        raise SimError("a model comparison needs a model bundle (--model PATH)")
    _check_new_log(config.event_log_dir)  # before the first arm: each arm checks its own
    t0 = time.perf_counter()

    def arm(name: str) -> SimConfig:  # each arm logs apart: one log must not hold both
        log = config.event_log_dir
        return replace(config, event_log_dir=None if log is None else log / name)

    price = await run_simulation_async(replace(arm("price"), model_path=None), workdir)
    model = await run_simulation_async(arm("model"), workdir)
    truth = await run_simulation_async(
        replace(arm("truth"), model_path=None, truth_ranking=True), workdir
    )
    out = comparison_report(price, model, truth)
    out["run"] = {"wall_seconds": round(time.perf_counter() - t0, 2)}
    return out


def run_comparison(config: SimConfig, workdir: Path | None = None) -> dict[str, Any]:
    return asyncio.run(run_comparison_async(config, workdir))
