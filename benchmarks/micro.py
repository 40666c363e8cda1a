"""In-process micro-benchmarks (no HTTP), each run in a fresh process by the harness.

``python -m benchmarks.micro scaling --catalog PATH --out FILE [--model DIR] [--budget S]``
    Per-request time of the ``/vast`` work without HTTP (query parsing -> ``AdService.decide``
    with the in-memory store -> rendering), over a 4-ad pod request mix, with the price
    scorer and, when a model is given, with the model; plus candidates retrieved per request
    and the process RSS with the catalog loaded.

``python -m benchmarks.micro scoring --catalog PATH --out FILE [--model DIR]``
    With 10 / 100 / 1,000 scored candidates: the model's ``predict`` time and the pure
    ``decide`` (values, media de-duplication, pod optimiser; filters skipped so exactly N are
    scored) with the price scorer and the model. Pods of 1 / 4 / 8 ads: the full in-process
    path. A cProfile of the in-process ``/vast`` path (4-ad pods).

``python -m benchmarks.micro blocks --catalog PATH [--model DIR]``
    A worker for :func:`interleaved`: builds the server's objects with the model scorer (the
    price scorer without a model), serves a warm-up, freezes the heap as ``serve`` does, prints
    ``ready`` and then answers each ``run N`` line on stdin with one JSON line: the CPU and
    wall time of each of the next N ``/vast`` requests of its list. ``quit`` or EOF ends it.

``python -m benchmarks.micro store --catalog PATH --viewers N --out FILE``
    Memory of the in-memory frequency store holding N distinct viewers, each of whom was
    served one ad (reservation commit) and counted one impression (cap, budget and exposure
    counters): RSS delta after ``gc.collect()``, keys held, bytes per viewer, and the
    projection to 1M viewers when N is smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import procstat, profiling, reqmix

T = TypeVar("T")

SECRET = "bench-micro-secret-0123456789abcdef"
SCORED_SIZES = (10, 100, 1000)
POD_SIZES = (1, 4, 8)


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the in-memory store's) without a loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise RuntimeError("coroutine suspended: not an in-memory path")


@dataclass(slots=True)
class Bench:
    """A server's objects built exactly as ``create_app`` builds them."""

    rt: Any
    queries: list[tuple[dict[str, str], dict[str, str]]]
    loop: asyncio.AbstractEventLoop

    @staticmethod
    def build(catalog: Path, model: Path | None, *, seed: int = 7, n: int = 3000) -> Bench:
        from urllib.parse import parse_qsl, urlsplit

        from vastserver.app import RUNTIME, create_app
        from vastserver.settings import load_settings

        settings = load_settings(
            {},
            {
                "catalog": str(catalog),
                "event_log": "off",
                "secret": SECRET,
                "public_url": "http://127.0.0.1:8080",
            },
        )
        rt = create_app(settings)[RUNTIME]
        if model is not None:
            from vastserver.ml.model import ModelBundle, ModelScorer

            rt.service.scorer = ModelScorer(ModelBundle.load(model))
        rng = random.Random(seed)
        queries = []
        for line in reqmix.vast_pod4_lines(rng, n):
            q = dict(parse_qsl(urlsplit(line.path).query))
            queries.append((q, dict(line.headers)))
        return Bench(rt, queries, asyncio.new_event_loop())

    def request(self, q: dict[str, str], headers: dict[str, str]) -> Any:
        from vastserver.geo import fill_geo
        from vastserver.params import client_info, parse_vast_request

        rt = self.rt
        client = client_info(headers, "127.0.0.1")
        rules = rt.service.snapshot.catalog.rules_for(q.get("placement"))
        req = parse_vast_request(q, client, rules, require_https=rt.settings.require_https_media)
        from dataclasses import replace

        return replace(req, device=fill_geo(req.device, rt.geo))

    def serve(self, q: dict[str, str], headers: dict[str, str]) -> tuple[int, int, int]:
        """The /vast work of one request; returns (ads, bytes, candidates traced)."""
        req = self.request(q, headers)
        # a real loop: decide() gathers the store read and the session history
        d = self.loop.run_until_complete(self.rt.service.decide(req))
        body: str = self.rt.renderer.vast(d, debug=None)
        return len(d.ads), len(body), len(d.traces)

    def set_scorer(self, name: str, model: Path | None) -> None:
        if name == "price":
            from vastserver.pipeline.scoring import PriceScorer

            self.rt.service.scorer = PriceScorer()
        else:
            assert model is not None
            from vastserver.ml.model import ModelBundle, ModelScorer

            self.rt.service.scorer = ModelScorer(ModelBundle.load(model))


@dataclass(slots=True)
class Samples:
    wall: list[float]
    cpu: list[float]
    """Process CPU time of each call: unlike wall time, barely moved by other processes
    competing for the cores (this machine is shared)."""


def _timed(
    fn: Callable[[int], object], *, budget_s: float, min_n: int, max_n: int, warmup: int = 2
) -> Samples:
    for i in range(warmup):
        fn(i)
    out = Samples([], [])
    t_end = time.perf_counter() + budget_s
    i = warmup
    clock, cpu = time.perf_counter, time.process_time
    while len(out.wall) < max_n and (len(out.wall) < min_n or clock() < t_end):
        c0 = cpu()
        t0 = clock()
        fn(i)
        out.wall.append(clock() - t0)
        out.cpu.append(cpu() - c0)
        i += 1
    return out


def _stats_ms(xs: Samples) -> dict[str, float | int]:
    s = sorted(xs.wall)
    c = sorted(xs.cpu)
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s) * 1000, 4),
        "mean_ms": round(statistics.fmean(s) * 1000, 4),
        "p90_ms": round(s[min(len(s) - 1, int(0.9 * len(s)))] * 1000, 4),
        "cpu_median_ms": round(statistics.median(c) * 1000, 4),
        "cpu_mean_ms": round(statistics.fmean(c) * 1000, 4),
    }


# --------------------------------------------------------------------------- scaling


def scaling(catalog: Path, model: Path | None, budget_s: float) -> dict[str, Any]:
    rss0 = procstat.rss_bytes(os.getpid())
    t0 = time.perf_counter()
    b = Bench.build(catalog, model)
    load_s = time.perf_counter() - t0
    rt = b.rt
    n_li = len(rt.service.snapshot.catalog.line_items)
    out: dict[str, Any] = {
        "line_items": n_li,
        "catalog_load_s": round(load_s, 2),
        "rss_mb": round(procstat.rss_bytes(os.getpid()) / 2**20, 1),
        "rss_catalog_mb": round((procstat.rss_bytes(os.getpid()) - rss0) / 2**20, 1),
        "scorers": {},
    }
    scorers = ["price"] + (["model"] if model is not None else [])
    for name in scorers:
        if name != scorers[0]:
            # a fresh server: the previous scorer's serves left caps and budgets reserved
            # (fewer ads, cheaper requests), which would flatter the next one
            del b, rt
            gc.collect()
            b = Bench.build(catalog, model)
            rt = b.rt
        b.set_scorer(name, model)
        ads: list[int] = []
        traces: list[int] = []

        def one(i: int, ads: list[int] = ads, traces: list[int] = traces, b: Bench = b) -> None:
            q, h = b.queries[i % len(b.queries)]
            n_ads, _, n_traces = b.serve(q, h)
            ads.append(n_ads)
            traces.append(n_traces)

        xs = _timed(one, budget_s=budget_s, min_n=5, max_n=5000)
        out["scorers"][name] = {
            **_stats_ms(xs),
            "ads_mean": round(statistics.fmean(ads), 2),
            "traced_candidates_mean": round(statistics.fmean(traces), 1),
        }
    # where the time goes at this size (the last scorer: the model when there is one)
    n_prof = max(3, min(100, len(xs.wall) // 4))

    def profiled() -> None:
        for i in range(n_prof):
            q, h = b.queries[i % len(b.queries)]
            b.serve(q, h)

    out["profile"] = profiling.cprofile(profiled, n=15)
    out["profile"]["requests"] = n_prof
    return out


# --------------------------------------------------------------------------- interleaved


def blocks(catalog: Path, model: Path | None) -> int:
    """The ``blocks`` worker (module docstring)."""
    b = Bench.build(catalog, model)
    if model is None:
        b.set_scorer("price", None)
    for i in range(200):
        b.serve(*b.queries[i % len(b.queries)])
    gc.collect()
    gc.freeze()  # as ``vastserver serve`` does once the catalog is loaded
    print("ready", flush=True)
    i = 200
    clock, cpu = time.perf_counter, time.process_time
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] != "run" or len(cmd) != 2 or not cmd[1].isdigit():
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
            continue
        walls: list[float] = []
        cpus: list[float] = []
        for _ in range(int(cmd[1])):
            c0, t0 = cpu(), clock()
            b.serve(*b.queries[i % len(b.queries)])
            walls.append(clock() - t0)
            cpus.append(cpu() - c0)
            i += 1
        print(json.dumps({"wall": walls, "cpu": cpus}), flush=True)
    return 0


def interleaved(
    workers: dict[int, Any], *, rounds: int, block: int, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Per-request ``/vast`` CPU time at each catalog size, measured in turns.

    ``workers`` maps a size to a started ``blocks`` process (stdin and stdout pipes, text
    mode, ``ready`` already read). Each round gives every size one block of the next
    ``block`` requests of the same list, one size after the other, so a slow drift of the
    machine's speed (which moved a 1k figure by 2x within 20 minutes here) lands on every
    size alike; measuring the sizes one after the other, minutes apart, it lands on their
    ratio. Every size serves the same requests, and no request twice when ``rounds x block``
    stays within the list (3,000): a viewer served again meets her caps and the scores
    cached for her, so a size that got through more requests in the same time would look
    cheaper. The medians pool every round's requests; ``round_ratios`` are each round's
    median ratio of the largest size to the smallest."""
    import select

    samples: dict[int, Samples] = {n: Samples([], []) for n in workers}
    per_round: list[dict[int, float]] = []
    for _ in range(rounds):
        medians: dict[int, float] = {}
        for n, proc in workers.items():
            proc.stdin.write(f"run {block}\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
            if not ready:
                raise TimeoutError(f"the {n:,} line-item worker did not answer in {timeout_s} s")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the {n:,} line-item worker ended")
            got = json.loads(line)
            if "error" in got:
                raise RuntimeError(got["error"])
            samples[n].wall.extend(got["wall"])
            samples[n].cpu.extend(got["cpu"])
            medians[n] = statistics.median(got["cpu"])
        per_round.append(medians)
    lo, hi = min(workers), max(workers)
    stats = {str(n): _stats_ms(xs) for n, xs in samples.items()}
    lo_ms = stats[str(lo)]["cpu_median_ms"]
    return {
        "sizes": sorted(workers),
        "rounds": rounds,
        "block": block,
        "per_size": stats,
        "ratio": round(stats[str(hi)]["cpu_median_ms"] / lo_ms, 3) if lo_ms else None,
        "round_ratios": [round(r[hi] / r[lo], 3) if r[lo] else None for r in per_round],
    }


# --------------------------------------------------------------------------- scoring, pods


def _all_candidates(catalog: Any) -> list[Any]:
    """Every line item x creative pair (built here: the pipeline's API for it moves)."""
    from vastserver.pipeline.candidates import Candidate

    out: list[Any] = []
    for li in sorted(catalog.line_items.values(), key=lambda li: li.id):
        campaign = catalog.campaigns[li.campaign_id]
        advertiser = catalog.advertisers[campaign.advertiser_id]
        out.extend(
            Candidate(li, catalog.creatives[cid], campaign, advertiser) for cid in li.creative_ids
        )
    return out


def _candidate_pool(rt: Any, req: Any) -> list[Any]:
    return _all_candidates(rt.service.snapshot.catalog)


def _guarded(fn: Callable[[], T]) -> T | str:
    """A measurement that fails (an internal API changed) is reported, not fatal."""
    try:
        return fn()
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {e}"


def predict_cold(scorer: Any, req: Any, cands: Sequence[Any], now: datetime) -> list[float]:
    """``scorer.predict`` as a new request gets it: in a new context (its own completion-rate
    mapping, which the model's score cache is kept under), so the candidates are scored, not
    looked up in the cache the previous timed call filled. ``StageEnv(now=now)`` does the
    same for ``decide``."""
    from vastserver.pipeline.scoring import ScoringContext

    out: list[float] = scorer.predict(req, cands, ScoringContext(now))
    return out


def scoring(catalog: Path, model: Path | None, budget_s: float) -> dict[str, Any]:
    from vastserver.pipeline.decide import decide
    from vastserver.pipeline.scoring import PriceScorer
    from vastserver.pipeline.stages import StageEnv

    b = Bench.build(catalog, model)
    rt = b.rt
    q, h = b.queries[0]
    req = b.request(q, h)
    pool = _candidate_pool(rt, req)
    rng = random.Random(3)
    rng.shuffle(pool)
    now = datetime.now(UTC)
    model_scorer: Any = None
    if model is not None:
        from vastserver.ml.model import ModelBundle, ModelScorer

        model_scorer = ModelScorer(ModelBundle.load(model))
    scored: dict[str, Any] = {}
    for n in SCORED_SIZES:
        cands = [pool[i % len(pool)] for i in range(n)]
        entry: dict[str, Any] = {}
        part = budget_s / 6

        def predict_t(c: list[Any] = cands, part: float = part) -> dict[str, float | int]:
            fn = lambda _i: predict_cold(model_scorer, req, c, now)  # noqa: E731
            return _stats_ms(_timed(fn, budget_s=part, min_n=20, max_n=20000))

        def decide_t(
            scorer: Any, c: list[Any] = cands, part: float = part
        ) -> dict[str, float | int]:
            fn = lambda _i: decide(req, c, StageEnv(now=now), scorer=scorer, filters=())  # noqa: E731
            return _stats_ms(_timed(fn, budget_s=part, min_n=10, max_n=20000))

        entry["model_predict"] = _guarded(predict_t) if model_scorer is not None else "no model"
        entry["decide_price"] = _guarded(lambda: decide_t(PriceScorer()))
        if model_scorer is not None:
            entry["decide_model"] = _guarded(lambda: decide_t(model_scorer))
        scored[str(n)] = entry
    pods: dict[str, Any] = {}
    for k in POD_SIZES:

        def one(i: int, k: int = k) -> None:
            # each pod size gets its own viewers (no caps carried over from another size)
            q, h = b.queries[(POD_SIZES.index(k) * 1000 + i) % len(b.queries)]
            b.serve({**q, "max_ads": str(k), "pod_duration": str(30 * k)}, h)

        pods[str(k)] = _stats_ms(_timed(one, budget_s=budget_s / 3, min_n=5, max_n=5000))

    def profiled() -> None:
        for i in range(max(5, min(200, int(pods["4"]["n"]) // 2))):
            q, h = b.queries[i % len(b.queries)]
            b.serve(q, h)

    return {
        "line_items": len(rt.service.snapshot.catalog.line_items),
        "scorer": rt.service.scorer.name,
        "scored_candidates": scored,
        "pods": pods,
        "profile_vast_path": profiling.cprofile(profiled),
    }


# --------------------------------------------------------------------------- store


def store_memory(catalog: Path, viewers: int) -> dict[str, Any]:
    from vastserver.catalog.load import load_catalog
    from vastserver.delivery import exposure_read
    from vastserver.pipeline.delivery import (
        Viewer,
        impression_increments,
        reservation_guards,
    )
    from vastserver.store.base import Guarded, Incr
    from vastserver.store.memory import MemoryStore
    from vastserver.tracking import Keyring, viewer_hash

    everything = _all_candidates(load_catalog(catalog))
    cands = [c for c in everything if c.line_item.frequency_caps] or everything
    cands = cands[:200]
    keyring = Keyring.from_secrets((SECRET,))
    store = MemoryStore(max_keys=50_000_000)
    rng = random.Random(5)
    hashes = [viewer_hash(f"ifa:{rng.getrandbits(128):032x}", keyring) for _ in range(viewers)]
    gc.collect()
    pid = os.getpid()
    rss0 = procstat.rss_bytes(pid)
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    ts = now.timestamp()
    for i, vh in enumerate(hashes):
        c = cands[i % len(cands)]
        v = Viewer(vh, None, False)
        guards, incrs = reservation_guards(c, v, now, c.line_item.price)
        _run_sync(store.commit([Guarded(guards, incrs)], ts))
        imp = impression_increments(c, v, ts, now, c.line_item.price)
        exposure = exposure_read(v)
        assert exposure is not None  # a viewer known by device (not lmt) always has one
        imp.append(Incr(exposure.key, exposure.window, 1))
        _run_sync(store.add(imp, ts))
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss1 = procstat.rss_bytes(pid)
    # the hashes live until after the final reading: freed before it, their memory could go
    # back to the OS and come off the store's figure
    del hashes
    delta = rss1 - rss0
    per_viewer = delta / viewers if viewers else 0.0
    return {
        "viewers": viewers,
        "keys": len(store),
        "keys_per_viewer": round(len(store) / max(1, viewers), 2),
        "rss_delta_mb": round(delta / 2**20, 1),
        "bytes_per_viewer": round(per_viewer, 1),
        "projected_1m_viewers_mb": round(per_viewer * 1_000_000 / 2**20, 1),
        "write_us_per_viewer": round(elapsed / max(1, viewers) * 1e6, 2),
        "method": "RSS delta after gc.collect() (viewer hashes made before the baseline and "
        "kept alive to the final reading); each viewer: one reservation commit and one "
        "counted impression (caps, budgets, 24 h exposure)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.micro")
    ap.add_argument("what", choices=("scaling", "scoring", "store", "blocks"))
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--budget", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--viewers", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.what == "blocks":
        return blocks(args.catalog, args.model)
    if args.out is None:
        ap.error("--out is required")
    if args.what == "scaling":
        result = scaling(args.catalog, args.model, args.budget)
    elif args.what == "scoring":
        result = scoring(args.catalog, args.model, args.budget)
    else:
        result = store_memory(args.catalog, args.viewers)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
