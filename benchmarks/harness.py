"""``vastserver bench``: the orchestration, the targets and the report.

One run measures, on this machine and in the same session:

1. **micro-benchmarks** (in-process, no HTTP, each in a fresh process): per-request ``/vast``
   work at each catalog size, scoring with 10/100/1,000 candidates, pods of 1/4/8 ads, and the
   memory of the in-memory frequency store with 1M viewers (:mod:`benchmarks.micro`);
2. **HTTP runs**: for each worker count and catalog size, the real server
   (``python -m vastserver serve``) is started on loopback, VAST responses are fetched to
   harvest signed beacon URLs, then each endpoint's request list is replayed closed-loop
   (wrk when installed, else :mod:`benchmarks.loadgen` in its own process), and the 4-ad
   ``/vast`` once more at a fixed rate of half the measured maximum;
3. the **baseline**: :mod:`benchmarks.static_server` with the same worker count, answering the
   same request lists with a real pre-rendered 4-ad VAST document (and VMAP, and 204 for
   beacons), measured the same way.

Ratios are real / baseline for the same endpoint and worker count, so the machine's speed and
load mostly cancel out. The targets of the performance issue are evaluated from them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import procstat, profiling, redisproc, reqmix, wrkdrv
from benchmarks.micro import interleaved as interleaved_cpu
from vastserver.cliargs import HelpWithDefaults, positive_float, positive_int

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef-not-for-production"
ENDPOINTS: tuple[str, ...] = ("vast_pod4", "vast", "vmap", "beacon", "mix")
FRESH_BEACONS = "beacon_new"
"""First-time beacons of ads served just before the run: each one is counted."""
TARGET_LINE_ITEMS = 10_000
ENDPOINT_NOTES = {
    "vast_pod4": "/vast, 4-ad pods of 120 s (30 % SSAI headers)",
    "vast": "/vast, pods of 1-8 ads, mixed VAST versions (30 % SSAI headers)",
    "vmap": "/vmap, ad-tag schedules (pre, 3 mids, post)",
    "beacon": "/t/{event}, harvested signed beacons, mostly replays (answered 204 uncounted)",
    FRESH_BEACONS: "/t/{event}, first-time beacons of freshly served ads (counted)",
    "mix": "session mix: 1 VMAP / 4 breaks, 1 VAST per break, 6 beacons per ad",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- options


@dataclass(slots=True)
class Options:
    quick: bool
    duration: float
    connections: int
    sizes: list[int]
    http_sizes: list[int]
    workers: list[int]
    out: Path | None
    cache_dir: Path
    model: Path | None
    model_source: str
    event_log: str
    tool: str
    seed: int
    store_viewers: int
    micro_budget: float
    harvest_s: float
    profile: bool
    warmup: float
    notes: list[str] = field(default_factory=list)


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vastserver bench",
        description="Benchmark the server against a static aiohttp baseline on this machine "
        "(see docs/benchmark.md).",
        formatter_class=HelpWithDefaults,
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, short runs (the test)")
    ap.add_argument(
        "--duration", type=positive_float, help="seconds per load run (default 10; quick 1)"
    )
    ap.add_argument(
        "--connections", type=positive_int, help="concurrent connections (default 32; quick 8)"
    )
    ap.add_argument(
        "--sizes", type=_int_list, help="catalog sizes (default 1000,10000,100000; quick 1000)"
    )
    ap.add_argument(
        "--http-sizes", type=_int_list, help="catalog sizes for the HTTP runs (default: --sizes)"
    )
    ap.add_argument("--workers", type=_int_list, help="server worker counts (default 1,2; quick 1)")
    ap.add_argument("--out", type=Path, help="write the JSON report here")
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="generated catalogs (default var/bench-cache)"
    )
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, help="model bundle (default fixtures/demo-model)")
    model.add_argument("--no-model", action="store_true", help="price scorer only")
    ap.add_argument(
        "--event-log",
        choices=("off", "on"),
        default="off",
        help="whether the servers write their event log",
    )
    ap.add_argument(
        "--tool",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="load generator (auto: wrk when installed, else aiohttp)",
    )
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    ap.add_argument(
        "--store-viewers",
        type=positive_int,
        help="viewers in the store test (default 1M; quick 10,000)",
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    ap.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar=("OLD", "NEW"),
        help="compare two JSON reports (ratios and targets) and exit; runs nothing",
    )
    return ap


def resolve(args: argparse.Namespace) -> Options:
    quick: bool = args.quick
    sizes: list[int] = args.sizes or ([1000] if quick else [1000, 10_000, 100_000])
    cache = args.cache_dir or (ROOT / "var" / "bench-cache")
    notes: list[str] = []
    model: Path | None = None
    source = "none"
    if args.model is not None:
        model, source = args.model.resolve(), "--model"
    elif not args.no_model:
        demo = ROOT / "fixtures" / "demo-model"
        if demo.is_dir():
            model, source = demo, "fixtures/demo-model"
        elif not quick:
            source = "train"  # a stand-in is trained into the cache (see ensure_model)
    return Options(
        quick=quick,
        duration=args.duration or (1.0 if quick else 10.0),
        connections=args.connections or (8 if quick else 32),
        sizes=sizes,
        http_sizes=args.http_sizes or sizes,
        workers=args.workers or ([1] if quick else [1, 2]),
        out=args.out,
        cache_dir=cache,
        model=model,
        model_source=source,
        event_log=args.event_log,
        tool=args.tool,
        seed=args.seed,
        store_viewers=args.store_viewers or (10_000 if quick else 1_000_000),
        micro_budget=0.5 if quick else 5.0,
        harvest_s=1.0 if quick else 15.0,
        profile=not args.no_profile,
        warmup=0.0 if quick else 1.0,
        notes=notes,
    )


# --------------------------------------------------------------------------- preparation


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _env() -> dict[str, str]:
    """The environment of every process the bench starts: the caller's, without any
    ``VASTSERVER_*`` setting but the ones set here (a model, a store or a limit exported in
    the caller's shell would otherwise change what is measured behind the report's back)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTSERVER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["VASTSERVER_SECRET"] = SECRET
    env["VASTSERVER_LOG_LEVEL"] = "WARNING"
    return env


def ensure_catalog(opts: Options, n: int) -> Path:
    day = datetime.now(UTC).strftime("%Y%m%d")
    opts.cache_dir.mkdir(parents=True, exist_ok=True)
    path = opts.cache_dir / f"catalog-{n}-s{opts.seed}-{day}.json"
    if not path.exists():
        log(f"generating a {n:,}-line-item catalog -> {path}")
        t0 = time.perf_counter()
        cmd = _py("-m", "vastserver", "gen-catalog", "--line-items", str(n))
        cmd += ["--seed", str(opts.seed), "--out", str(path), "--compact"]
        subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True)
        log(f"  generated in {time.perf_counter() - t0:.1f}s")
    return path


def ensure_model(opts: Options) -> None:
    """No model given and no demo model: train a stand-in bundle once into the cache."""
    if opts.model_source != "train":
        return
    out = opts.cache_dir / f"bench-model-s{opts.seed}"
    if not (out / "model.ubj").exists():
        log(f"fixtures/demo-model absent: training a stand-in model -> {out}")
        events = opts.cache_dir / f"bench-events-s{opts.seed}-{os.getpid()}"
        code = (
            "import sys\n"
            "from vastserver.ml.synth import main_gen_events\n"
            "from vastserver.ml.train import main_train\n"
            f"rc = main_gen_events(['--out', {str(events)!r}, '--seed', '{opts.seed}', "
            "'--sessions', '1500', '--days', '2'])\n"
            f"rc = rc or main_train(['--events', {str(events)!r}, '--out', {str(out)!r}])\n"
            "sys.exit(rc)\n"
        )
        r = subprocess.run(_py("-c", code), env=_env(), cwd=ROOT, capture_output=True, text=True)
        shutil.rmtree(events, ignore_errors=True)
        if r.returncode != 0:
            opts.model, opts.model_source = None, "none"
            opts.notes.append(f"stand-in model training failed: {r.stderr[-300:]}")
            log("  training failed: no model")
            return
    opts.model = out
    opts.model_source = "stand-in trained by bench (fixtures/demo-model absent)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- servers


@dataclass(slots=True)
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    logfile: Path
    started_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_ready(srv: Server, path: str, timeout_s: float) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            tail = srv.logfile.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server exited with {srv.proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(srv.url + path, timeout=2) as r:
                if r.status == 200:
                    doc: dict[str, Any] = json.loads(r.read() or b"{}")
                    return doc
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s: {last}")


PORT_ATTEMPTS = 3
"""Starts of a server whose port another process took: the harness picks a free port and
passes it on, and something else (an outgoing connection of this run too: ephemeral ports
come from the same range) can bind it in between. The server then exits at once, saying
so, and is started again on another port. (``--port 0`` would need the server's
``listening`` line, which the bench's ``VASTSERVER_LOG_LEVEL=WARNING`` leaves out.)"""


class PortTakenError(RuntimeError):
    """A server exited at start-up because its port was taken (see :data:`PORT_ATTEMPTS`)."""


def _port_taken(srv: Server) -> bool:
    """Whether ``srv`` exited because its port was in use when it bound it."""
    if srv.proc.poll() is None:
        return False
    return "Address already in use" in srv.logfile.read_text(errors="replace")[-4000:]


def start_real(
    opts: Options, catalog: Path, workers: int, workdir: Path, redis_url: str | None = None
) -> tuple[Server, dict[str, Any]]:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _start_real(opts, catalog, workers, workdir, redis_url)
        except PortTakenError:
            if attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _start_real(
    opts: Options, catalog: Path, workers: int, workdir: Path, redis_url: str | None
) -> tuple[Server, dict[str, Any]]:
    port = free_port()
    logfile = workdir / f"server-{workers}w-{port}.log"
    cmd = _py("-m", "vastserver", "serve", "--host", "127.0.0.1", "--port", str(port))
    cmd += ["--workers", str(workers), "--catalog", str(catalog)]
    if redis_url is not None:
        cmd += ["--redis", redis_url]
    cmd += ["--public-url", f"http://127.0.0.1:{port}"]
    if opts.event_log == "on":
        ev = workdir / f"events-{port}"
        ev.mkdir()
        cmd += ["--event-log", str(ev)]
    else:
        cmd += ["--event-log", "off"]
    if opts.model is not None:
        cmd += ["--model", str(opts.model)]
    t0 = time.perf_counter()
    with logfile.open("wb") as lf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=lf, stderr=subprocess.STDOUT)
    srv = Server(proc, port, logfile, 0.0)
    try:
        ready = _wait_ready(srv, "/readyz", 600)
        if workers > 1:  # /readyz answers once one worker is up: wait for them all
            _wait_workers(srv, workers, 600)
    except Exception as e:
        stop(srv)
        if _port_taken(srv):
            raise PortTakenError(f"port {port} taken before the server bound it") from e
        raise
    srv.started_s = time.perf_counter() - t0
    return srv, ready


def _wait_workers(srv: Server, workers: int, timeout_s: float) -> None:
    """Every worker has loaded the catalog once its RSS stops growing and it idles."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(procstat.tree(srv.pid)) >= workers + 1:
            break
        time.sleep(0.2)
    wait_idle(srv.pid, timeout_s=max(1.0, deadline - time.monotonic()))


def start_static(vast: Path, vmap: Path, workers: int, workdir: Path) -> Server:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _start_static(vast, vmap, workers, workdir)
        except PortTakenError:
            if attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _start_static(vast: Path, vmap: Path, workers: int, workdir: Path) -> Server:
    port = free_port()
    logfile = workdir / f"static-{workers}w-{port}.log"
    cmd = _py("-m", "benchmarks.static_server", "--port", str(port), "--workers", str(workers))
    cmd += ["--vast", str(vast), "--vmap", str(vmap)]
    t0 = time.perf_counter()
    with logfile.open("wb") as lf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=lf, stderr=subprocess.STDOUT)
    srv = Server(proc, port, logfile, 0.0)
    try:
        _wait_ready(srv, "/healthz", 60)
        if workers > 1:
            _wait_workers(srv, workers, 60)
    except Exception as e:
        stop(srv)
        if _port_taken(srv):
            raise PortTakenError(f"port {port} taken before the server bound it") from e
        raise
    srv.started_s = time.perf_counter() - t0
    return srv


def stop(srv: Server) -> None:
    """SIGTERM the server (its parent forwards it to the workers), then SIGKILL leftovers."""
    pids = procstat.tree(srv.pid)
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait(timeout=10)
    for p in pids[1:]:
        try:
            os.kill(p, 0)
        except OSError:
            continue
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def wait_idle(pid: int, timeout_s: float = 120.0, step: float = 0.25) -> float:
    """Wait until the server tree uses < 10 % of a core (a closed-loop run leaves queued
    requests behind when the load generator stops); returns the seconds waited."""
    t0 = time.monotonic()
    prev = procstat.sample(pid).cpu_s
    while time.monotonic() - t0 < timeout_s:
        time.sleep(step)
        cur = procstat.sample(pid).cpu_s
        if cur - prev < 0.1 * step:
            break
        prev = cur
    return time.monotonic() - t0


# --------------------------------------------------------------------------- harvest


@dataclass(slots=True)
class Harvest:
    files: dict[str, Path]
    vast_doc: bytes | None
    vmap_doc: bytes | None
    pods: int
    ads: int
    beacons: int
    mix_proportions: dict[str, float]
    fill_rate: float
    seconds: float
    vast_rps: float
    """/vast responses per second while harvesting (4 clients): the estimate the request
    lists are sized from."""


async def _fetch(session: aiohttp.ClientSession, base: str, line: reqmix.Line) -> tuple[int, str]:
    async with session.get(base + line.path, headers=dict(line.headers)) as r:
        return r.status, await r.text()


async def _harvest(
    base: str, lines: dict[str, list[reqmix.Line]], budget_s: float, max_pods: int
) -> tuple[list[reqmix.HarvestedPod], bytes | None, bytes | None, float]:
    """Pods with their beacons, the baseline's 4-ad VAST (the first of ``lines["probe"]``
    answered with 4 ads, else the closest), a VMAP, and the /vast rate while harvesting."""
    rng = random.Random(11)
    pods: list[reqmix.HarvestedPod] = []
    vast_doc: bytes | None = None
    vmap_doc: bytes | None = None
    timeout = aiohttp.ClientTimeout(total=max(60.0, budget_s * 4))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        status, body = await _fetch(session, base, lines["vmap"][0])
        if status == 200:
            vmap_doc = body.encode()
        best: tuple[int, bytes] | None = None
        for line in lines["probe"]:
            status, body = await _fetch(session, base, line)
            n = reqmix.ad_count(body) if status == 200 else -1
            if best is None or abs(n - 4) < abs(best[0] - 4):
                best = (n, body.encode())
            if n == 4:
                break
        vast_doc = best[1] if best else None
        t0 = time.perf_counter()
        pods = await _serve_pods(session, base, lines["vast"], budget_s, max_pods, rng)
        rate = len(pods) / max(1e-3, time.perf_counter() - t0)
    return pods, vast_doc, vmap_doc, rate


async def _serve_pods(
    session: aiohttp.ClientSession,
    base: str,
    lines: Sequence[reqmix.Line],
    budget_s: float,
    max_pods: int,
    rng: random.Random,
) -> list[reqmix.HarvestedPod]:
    """Fetch pods (4 at a time) until ``max_pods``, the lines or ``budget_s`` run out."""
    pods: list[reqmix.HarvestedPod] = []
    deadline = time.monotonic() + budget_s
    queue = list(lines)

    async def worker() -> None:
        while queue and time.monotonic() < deadline and len(pods) < max_pods:
            line = queue.pop()
            status, body = await _fetch(session, base, line)
            if status == 200:
                pods.append(reqmix.HarvestedPod(line, body, reqmix.beacons_of(body, rng)))

    await asyncio.gather(*(worker() for _ in range(4)))
    return pods


async def _harvest_fresh(
    base: str, lines: Sequence[reqmix.Line], budget_s: float, max_pods: int
) -> list[reqmix.HarvestedPod]:
    timeout = aiohttp.ClientTimeout(total=max(60.0, budget_s * 4))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await _serve_pods(session, base, lines, budget_s, max_pods, random.Random(13))


def harvest_fresh(
    opts: Options, srv: Server, workdir: Path, tag: str, beacons: int, per_pod: float
) -> tuple[Path | None, dict[str, Any]]:
    """Serve new pods (new viewers) for about ``beacons`` first-time beacons, at most 45 s
    (quick: 2 s), and write their beacons as a request list."""
    max_pods = max(1, math.ceil(beacons / max(1.0, per_pod)))
    # new viewers for each call (the tag names it): pods served again to the viewers of an
    # earlier call would be cut short by their frequency caps
    lines = reqmix.vast_lines(random.Random(f"{opts.seed}-fresh-{tag}"), max_pods)
    t0 = time.perf_counter()
    budget = 2.0 if opts.quick else 45.0
    pods = asyncio.run(_harvest_fresh(srv.url, lines, budget, max_pods))
    found = [b for p in pods for ad in p.beacons for b in ad]
    info = {
        "wanted_beacons": beacons,
        "pods": len(pods),
        "beacons": len(found),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not found:
        return None, info
    path = workdir / f"{tag}-{FRESH_BEACONS}.txt"
    reqmix.write_lines(path, found)
    return path, info


def beacon_results(srv: Server) -> dict[str, float] | None:
    """``vastserver_beacons_total`` summed by result, from the server's ``/metrics`` (one
    worker's view: only meaningful with one worker)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "vastserver_beacons":
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    res = smp.labels.get("result", "")
                    out[res] = out.get(res, 0.0) + smp.value
    return out


def counted_share(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    if before is None or after is None:
        return None
    total = sum(after.values()) - sum(before.values())
    ok = after.get("ok", 0.0) - before.get("ok", 0.0)
    return round(ok / total, 3) if total > 0 else None


VIEWER_MARGIN = 3.0
"""Distinct viewers in a /vast list per request a run is expected to send."""
MIN_VIEWERS = 2000
MAX_VIEWERS = 400_000


def viewers_needed(opts: Options, rps: float, seconds: float | None = None) -> int:
    """Viewers for a list that a run (warm-up and measured run, or ``seconds``) at about
    ``rps`` never goes through twice: a viewer served again is capped (frequency caps),
    gets a shorter pod, and a shorter pod is cheaper than the 4-ad decision measured."""
    secs = opts.warmup + opts.duration if seconds is None else seconds
    return max(MIN_VIEWERS, min(MAX_VIEWERS, math.ceil(rps * secs * VIEWER_MARGIN)))


def harvest(opts: Options, srv: Server, workdir: Path, tag: str) -> Harvest:
    rng = random.Random(opts.seed)
    lines = {
        "vast": reqmix.vast_lines(rng, 2000),
        "vmap": reqmix.vmap_lines(rng, 200),
        # viewers of their own, seen by no measured run, for the baseline's 4-ad document
        "probe": reqmix.vast_pod4_lines(random.Random(f"{opts.seed}-probe"), 40),
    }
    t0 = time.perf_counter()
    pods, vast_doc, vmap_doc, rate = asyncio.run(
        _harvest(srv.url, lines, opts.harvest_s, 60 if opts.quick else 400)
    )
    # The replayed lists: the /vast ones sized from the harvest's rate, so that no viewer
    # comes twice within a run (the harvest's own pods were served to the first list's
    # viewers: the /vast endpoint list is a new one)
    n = viewers_needed(opts, rate)
    lines["vast_pod4"] = reqmix.vast_pod4_lines(random.Random(f"{opts.seed}-pod4-{tag}"), n)
    lines["vast"] = reqmix.vast_lines(random.Random(f"{opts.seed}-vast-{tag}"), n)
    del lines["probe"]
    files: dict[str, Path] = {}
    for kind, ls in lines.items():
        files[kind] = workdir / f"{tag}-{kind}.txt"
        reqmix.write_lines(files[kind], ls)
    beacons = [b for p in pods for ad in p.beacons for b in ad]
    mix = reqmix.session_mix(pods, lines["vmap"])
    if beacons:
        files["beacon"] = workdir / f"{tag}-beacon.txt"
        reqmix.write_lines(files["beacon"], beacons)
    if mix:
        files["mix"] = workdir / f"{tag}-mix.txt"
        reqmix.write_lines(files["mix"], mix)
    ads = sum(len(p.beacons) for p in pods)
    return Harvest(
        files=files,
        vast_doc=vast_doc,
        vmap_doc=vmap_doc,
        pods=len(pods),
        ads=ads,
        beacons=len(beacons),
        mix_proportions=reqmix.proportions(mix),
        fill_rate=round(sum(1 for p in pods if p.beacons) / max(1, len(pods)), 3),
        seconds=round(time.perf_counter() - t0, 2),
        vast_rps=round(rate, 1),
    )


# --------------------------------------------------------------------------- load runs


def _tool(opts: Options) -> str | None:
    wrk = wrkdrv.available()
    if opts.tool == "wrk":
        if wrk is None:
            raise SystemExit("--tool wrk: wrk is not installed (apt-get install wrk)")
        return wrk
    if opts.tool == "aiohttp":
        return None
    return wrk


def run_load(
    opts: Options,
    srv: Server,
    requests_file: Path,
    workdir: Path,
    *,
    rate: float | None = None,
    duration: float | None = None,
) -> dict[str, Any]:
    """One measured run; adds ``cpu_us_per_req`` and ``rss_mb`` to the tool's result."""
    dur = duration or opts.duration
    wrk = _tool(opts)
    if rate is None and wrk is not None:
        if opts.warmup > 0:
            wrkdrv.run(
                wrk,
                url=srv.url,
                requests_file=requests_file,
                duration=opts.warmup,
                connections=opts.connections,
                threads=1,
                server_pid=None,
                workdir=workdir,
            )
            wait_idle(srv.pid)
        res = wrkdrv.run(
            wrk,
            url=srv.url,
            requests_file=requests_file,
            duration=dur,
            connections=opts.connections,
            threads=1,
            server_pid=srv.pid,
            workdir=workdir,
        )
    else:
        out = workdir / f"loadgen-{time.monotonic_ns()}.json"
        cmd = _py("-m", "benchmarks.loadgen", "--url", srv.url, "--requests", str(requests_file))
        cmd += ["--duration", str(dur), "--connections", str(opts.connections)]
        cmd += ["--server-pid", str(srv.pid), "--out", str(out)]
        if rate is not None:
            cmd += ["--rate", f"{rate:.3f}"]
        elif opts.warmup > 0:
            cmd += ["--warmup", str(opts.warmup)]
        subprocess.run(cmd, check=True, cwd=ROOT, env=_env(), timeout=dur * 4 + 300)
        res = json.loads(out.read_text())
        out.unlink()
    cpu = res.get("server_cpu_s")
    n = int(res.get("requests") or 0)
    res["cpu_us_per_req"] = round(cpu / n * 1e6, 1) if cpu is not None and n else None
    tree = procstat.sample(srv.pid)
    res["rss_mb"] = round(tree.rss / 2**20, 1)
    res["rss_worker_max_mb"] = round(tree.rss_max / 2**20, 1)
    res["drain_s"] = round(wait_idle(srv.pid), 2)
    res.pop("stdout_tail", None)
    return res


def split_fresh(opts: Options, path: Path) -> tuple[Path | None, Path]:
    """A first-time list cut in two: the warm-up's share (warm-up ÷ warm-up + run) and the
    measured run's. Both load generators start at a random offset of their list, so a
    warm-up and a run over one list overlap and the run replays beacons the warm-up
    already counted (cheaper: 11a counted only 0.894 of its first-time beacons)."""
    if opts.warmup <= 0:
        return None, path
    lines = path.read_text().splitlines(keepends=True)
    n = math.ceil(len(lines) * opts.warmup / (opts.warmup + opts.duration))
    if n == 0 or n >= len(lines):
        return None, path
    warm = path.with_name(f"{path.stem}-warmup{path.suffix}")
    measured = path.with_name(f"{path.stem}-measured{path.suffix}")
    warm.write_text("".join(lines[:n]))
    measured.write_text("".join(lines[n:]))
    return warm, measured


def run_fresh(opts: Options, srv: Server, path: Path, workdir: Path) -> dict[str, Any]:
    """:func:`run_load` on a first-time list: the warm-up fires beacons of its own."""
    warm, measured = split_fresh(opts, path)
    quiet = replace(opts, warmup=0.0)
    if warm is not None:
        run_load(quiet, srv, warm, workdir, duration=opts.warmup)
    return run_load(quiet, srv, measured, workdir)


def idle_probe(srv: Server, seconds: float, interval: float = 0.05) -> dict[str, Any]:
    """With no load: ``/healthz`` every ``interval`` for ``seconds`` (longer than the 10 s
    pacing period). The slowest probe shows how long background work (pacing, rates) blocks
    the event loop; CPU per second shows what it costs."""
    import urllib.request

    lat: list[float] = []
    before = procstat.sample(srv.pid)
    t_end = time.perf_counter() + seconds
    per_s: list[float] = []
    mark, prev = time.perf_counter(), before.cpu_s
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(srv.url + "/healthz", timeout=30) as r:
                r.read()
        except OSError:
            pass
        lat.append(time.perf_counter() - t0)
        if time.perf_counter() - mark >= 1.0:
            cur = procstat.sample(srv.pid).cpu_s
            per_s.append(round((cur - prev) / (time.perf_counter() - mark), 3))
            mark, prev = time.perf_counter(), cur
        time.sleep(max(0.0, interval - (time.perf_counter() - t0)))
    after = procstat.sample(srv.pid)
    lat.sort()
    return {
        "seconds": seconds,
        "probes": len(lat),
        "probe_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "probe_max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "cpu_share": round(procstat.cpu_delta(before, after) / seconds, 4),
        "cpu_share_max_1s": max(per_s, default=None),
    }


def _profile_run(
    opts: Options, srv: Server, requests_file: Path, workdir: Path, name: str
) -> dict[str, Any]:
    """A closed-loop run with py-spy attached (not a measured run: sampling pauses the
    server 200 times a second)."""
    dur = opts.duration if opts.quick else max(5.0, opts.duration)
    raw = (opts.out.parent if opts.out else workdir) / f"{_stem(opts)}profile-{name}.txt"
    rec = profiling.start_record(srv.pid, dur + 1, raw, subprocesses=True)
    if rec is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    time.sleep(0.5)
    try:
        res = run_load(opts, srv, requests_file, workdir, duration=dur)
    finally:
        prof = profiling.finish_record(rec, raw, timeout_s=dur + 60)
    prof["load"] = {"requests": res.get("requests"), "rps": res.get("rps")}
    return prof


def _stem(opts: Options) -> str:
    return (opts.out.stem + ".") if opts.out else ""


class SharedStore:
    """The Redis that multi-worker runs share their counters through (forked workers cannot
    share the in-memory store, and the server refuses to start them without one). Started on
    first use, emptied before each server, stopped at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: redisproc.RedisServer | None = None

    def url(self) -> str:
        """A fresh (flushed) database's URL; RuntimeError when redis-server is missing."""
        if self.server is None:
            exe = shutil.which("redis-server")
            if exe is None:
                raise RuntimeError(
                    "more than one worker needs a shared store: redis-server is not on PATH"
                )
            d = self.workdir / "redis"
            d.mkdir(exist_ok=True)
            self.server = redisproc.RedisServer(exe, d)
            self.server.start()
        self.server.flushall()
        return self.server.url

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


PAIRED_ROUNDS = 3
"""Rounds of the throughput targets' runs taken in turns with the static baseline."""


def _pair(
    opts: Options,
    real: Server,
    static: Server,
    requests_file: Path,
    workdir: Path,
    real_first: bool,
    fresh: bool = False,
    beacons: bool = False,
) -> dict[str, Any]:
    """One closed-loop run of the same list on each server, one right after the other
    (``fresh``: a first-time list, see :func:`run_fresh`; ``beacons``: the share of its
    beacons the real server counted is ``counted_share``)."""
    order = [("real", real), ("static", static)]
    if not real_first:
        order.reverse()
    got: dict[str, Any] = {"first": order[0][0]}
    for name, srv in order:
        before = beacon_results(srv) if beacons and name == "real" else None
        res = (run_fresh if fresh else run_load)(opts, srv, requests_file, workdir)
        if beacons and name == "real":
            got["counted_share"] = counted_share(before, beacon_results(srv))
        got["tool"] = res.get("tool")
        got[f"{name}_rps"] = res.get("rps")
        got[f"{name}_cpu_us_per_req"] = res.get("cpu_us_per_req")
        got[f"{name}_requests"] = res.get("requests")
        got[f"{name}_errors"] = res.get("errors") or {}
        got[f"{name}_bytes_per_response"] = res.get("bytes_per_response")
    r, b = got.get("real_rps"), got.get("static_rps")
    got["ratio"] = round(r / b, 4) if r and b else None
    return got


def run_paired(
    opts: Options,
    srv: Server,
    hv: Harvest,
    workdir: Path,
    tag: str,
    fresh_want: int,
    viewers: int,
) -> dict[str, Any]:
    """The two throughput targets' ratios measured in turns with the static baseline.

    The baseline's own runs come minutes after the real server's, and this machine's speed
    drifts within minutes (the same static work moved by up to 37 % within one run), so a
    ratio of two runs minutes apart carries that drift. Here a static server (the same
    pre-rendered pod) runs beside the real one and each round measures both right after
    each other, alternating which goes first: 4-ad pods for new viewers, then first-time
    beacons of pods served for that round. The target takes the median round's ratio.
    Each round's pods go to ``viewers`` new viewers (none twice within a run), its beacons to
    pods served for it alone; each pair records its errors, bytes per response and (beacons)
    the share of the real server's beacons that were counted, which the targets check."""
    vast = workdir / f"{tag}-paired-vast.xml"
    vmap = workdir / f"{tag}-paired-vmap.xml"
    vast.write_bytes(hv.vast_doc or b"<VAST/>")
    vmap.write_bytes(hv.vmap_doc or b"<vmap:VMAP/>")
    try:
        static = start_static(vast, vmap, 1, workdir)
    except Exception as e:
        return {"error": f"static start failed: {e}"}
    rounds = 1 if opts.quick else PAIRED_ROUNDS
    per_ep: dict[str, list[dict[str, Any]]] = {"vast_pod4": [], FRESH_BEACONS: []}
    try:
        for i in range(rounds):
            rtag = f"{tag}-paired{i}"
            lines = workdir / f"{rtag}-vast_pod4.txt"
            rng = random.Random(opts.seed + 3000 + i)  # new viewers each round
            reqmix.write_lines(lines, reqmix.vast_pod4_lines(rng, viewers))
            per_ep["vast_pod4"].append(
                _pair(opts, srv, static, lines, workdir, i % 2 == 1, fresh=True)
            )
            f, _ = harvest_fresh(opts, srv, workdir, rtag, fresh_want, hv.beacons / max(1, hv.pods))
            if f is not None:
                wait_idle(srv.pid)
                per_ep[FRESH_BEACONS].append(
                    _pair(opts, srv, static, f, workdir, i % 2 == 0, fresh=True, beacons=True)
                )
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        stop(static)
    out: dict[str, Any] = {"rounds": rounds}
    for ep, pairs in per_ep.items():
        ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
        out[ep] = {
            "pairs": pairs,
            "ratios": ratios,
            "median_ratio": round(statistics.median(ratios), 4) if ratios else None,
        }
    return out


def http_real(
    opts: Options,
    workers: int,
    size: int,
    catalog: Path,
    workdir: Path,
    do_profile: bool,
    shared: SharedStore | None = None,
    paired: bool = False,
) -> tuple[dict[str, Any], Harvest | None]:
    log(f"real server: {workers} worker(s), {size:,} line items")
    entry: dict[str, Any] = {"server": "vastserver", "workers": workers, "line_items": size}
    entry["store"] = "memory" if workers == 1 else "redis"
    try:
        redis_url = None
        if workers > 1:
            redis_url = (shared or SharedStore(workdir)).url()
        srv, ready = start_real(opts, catalog, workers, workdir, redis_url)
    except Exception as e:
        entry["error"] = f"start failed: {e}"
        log(f"  {entry['error'][:300]}")
        return entry, None
    try:
        entry["startup_s"] = round(srv.started_s, 2)
        entry["readyz"] = ready
        entry["rss_idle_mb"] = round(procstat.sample(srv.pid).rss / 2**20, 1)
        hv = harvest(opts, srv, workdir, f"w{workers}-n{size}")
        entry["harvest"] = {
            "pods": hv.pods,
            "ads": hv.ads,
            "beacons": hv.beacons,
            "fill_rate": hv.fill_rate,
            "seconds": hv.seconds,
            "mix_proportions": hv.mix_proportions,
            "vast_pod4_doc_bytes": len(hv.vast_doc or b""),
            "vast_pod4_doc_ads": reqmix.ad_count((hv.vast_doc or b"").decode()),
            "vast_rps": hv.vast_rps,
            "vast_viewers": len(hv.files["vast_pod4"].read_text().splitlines()),
        }
        wait_idle(srv.pid)
        eps: dict[str, Any] = {}
        for ep in ENDPOINTS:
            f = hv.files.get(ep)
            if f is None:
                eps[ep] = {"error": "nothing harvested (no fill)"}
                continue
            log(f"  {ep}")
            # /vast: the warm-up and the run each get viewers of their own (run_fresh)
            eps[ep] = (run_fresh if ep in ("vast_pod4", "vast") else run_load)(
                opts, srv, f, workdir
            )
        entry["endpoints"] = eps
        if workers == 1:
            log("  idle: /healthz probes over a pacing period")
            idle_s = 3.0 if opts.quick else 11.0
            rec = None
            raw = (opts.out.parent if opts.out else workdir) / f"{_stem(opts)}profile-idle.txt"
            if opts.profile and size == max(opts.http_sizes):
                rec = profiling.start_record(srv.pid, idle_s, raw, subprocesses=True)
            entry["idle"] = idle_probe(srv, idle_s)
            if rec is not None:
                entry.setdefault("profiles", {})["idle"] = profiling.finish_record(
                    rec, raw, timeout_s=idle_s + 30
                )
        mx = float(eps["vast_pod4"].get("rps") or 0.0)
        tag = f"w{workers}-n{size}"
        if mx > 0:
            rate = max(0.5, mx / 2)
            log(f"  vast_pod4 at a fixed {rate:.1f} req/s (half of the maximum)")
            # viewers of its own: the closed-loop runs' viewers are capped by now
            fixed = workdir / f"{tag}-vast_pod4-fixed.txt"
            rng = random.Random(f"{opts.seed}-fixed-{tag}")
            n = viewers_needed(opts, rate, opts.duration)
            reqmix.write_lines(fixed, reqmix.vast_pod4_lines(rng, n))
            entry["fixed_rate"] = run_load(opts, srv, fixed, workdir, rate=rate)
        # first-time beacons for about one run at the replayed beacons' rate
        replayed_rps = float((eps.get("beacon") or {}).get("rps") or 0.0)
        want = int(replayed_rps * (opts.warmup + opts.duration) * 1.25)
        if want and hv.pods:
            # After the /vast runs: the new pods' reservations must not change those.
            log(f"  {FRESH_BEACONS}: serving pods for ~{want:,} first-time beacons")
            f, info = harvest_fresh(opts, srv, workdir, tag, want, hv.beacons / hv.pods)
            entry["harvest_fresh"] = info
            if f is not None:
                wait_idle(srv.pid)
                before = beacon_results(srv) if workers == 1 else None
                eps[FRESH_BEACONS] = run_fresh(opts, srv, f, workdir)
                eps[FRESH_BEACONS]["counted_share"] = counted_share(
                    before, beacon_results(srv) if workers == 1 else None
                )
                hv.files[FRESH_BEACONS] = f
        if paired and hv.vast_doc and want:
            log("  vast_pod4 and first-time beacons in turns with a static server")
            viewers = viewers_needed(opts, mx)
            entry["paired"] = run_paired(opts, srv, hv, workdir, tag, want, viewers)
        if do_profile and opts.profile:
            log("  profiling /vast (4-ad pods) and beacons with py-spy")
            profs = entry.setdefault("profiles", {})
            profs["vast_pod4"] = _profile_run(opts, srv, hv.files["vast_pod4"], workdir, "vast")
            if "beacon" in hv.files:
                profs["beacon"] = _profile_run(opts, srv, hv.files["beacon"], workdir, "beacon")
        entry["rss_end_mb"] = round(procstat.sample(srv.pid).rss / 2**20, 1)
        return entry, hv
    except Exception as e:
        entry["error"] = f"{type(e).__name__}: {e}"
        log(f"  failed: {entry['error'][:300]}")
        return entry, None
    finally:
        stop(srv)


def http_baseline(
    opts: Options, workers: int, hv: Harvest, workdir: Path, floor_rate: float | None = None
) -> dict[str, Any]:
    """The static server's runs; ``floor_rate``: the real server's half-load rate, at which
    the fixed-rate generator is run against the static server too (``fixed_rate_floor``):
    the latency the generator and the stack add whatever the server does."""
    log(f"static baseline: {workers} worker(s)")
    entry: dict[str, Any] = {"server": "static", "workers": workers}
    vast = workdir / "static-vast.xml"
    vmap = workdir / "static-vmap.xml"
    vast.write_bytes(hv.vast_doc or b"<VAST/>")
    vmap.write_bytes(hv.vmap_doc or b"<vmap:VMAP/>")
    entry["vast_doc_bytes"] = vast.stat().st_size
    entry["vmap_doc_bytes"] = vmap.stat().st_size
    try:
        srv = start_static(vast, vmap, workers, workdir)
    except Exception as e:
        entry["error"] = f"start failed: {e}"
        return entry
    try:
        entry["rss_idle_mb"] = round(procstat.sample(srv.pid).rss / 2**20, 1)
        eps: dict[str, Any] = {}
        for ep in (*ENDPOINTS, FRESH_BEACONS):
            f = hv.files.get(ep)
            if f is None:
                eps[ep] = {"error": "no request list"}
                continue
            log(f"  {ep}")
            eps[ep] = run_load(opts, srv, f, workdir)
        entry["endpoints"] = eps
        a = float(eps["vast_pod4"].get("rps") or 0.0)
        b = float(eps["vast"].get("rps") or 0.0)
        if a > 0 and b > 0:
            # vast_pod4 and vast get the very same bytes from the baseline: any difference
            # between the two runs is the machine's noise
            entry["noise"] = {"same_work_rps_spread": round(abs(a - b) / ((a + b) / 2), 3)}
        if a > 0:
            entry["fixed_rate"] = run_load(opts, srv, hv.files["vast_pod4"], workdir, rate=a / 2)
        if floor_rate:
            log(f"  vast_pod4 at the real server's fixed {floor_rate:.1f} req/s (the floor)")
            entry["fixed_rate_floor"] = run_load(
                opts, srv, hv.files["vast_pod4"], workdir, rate=floor_rate
            )
        return entry
    except Exception as e:
        entry["error"] = f"{type(e).__name__}: {e}"
        return entry
    finally:
        stop(srv)


def add_ratios(real: dict[str, Any], base: dict[str, Any] | None) -> None:
    for ep, r in (real.get("endpoints") or {}).items():
        b = ((base or {}).get("endpoints") or {}).get(ep) or {}
        thr = cpu = None
        if r.get("rps") and b.get("rps"):
            thr = round(r["rps"] / b["rps"], 4)
        if r.get("cpu_us_per_req") and b.get("cpu_us_per_req"):
            cpu = round(r["cpu_us_per_req"] / b["cpu_us_per_req"], 2)
        r["ratio"] = {"throughput": thr, "cpu": cpu}


# --------------------------------------------------------------------------- micro


def run_micro(opts: Options, catalogs: dict[int, Path], workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"scaling": {}, "scoring": None, "store": None}
    model_args = ["--model", str(opts.model)] if opts.model is not None else []
    budget = str(opts.micro_budget)

    def micro(what: str, catalog: Path, *extra: str) -> dict[str, Any]:
        f = workdir / f"micro-{what}-{time.monotonic_ns()}.json"
        cmd = _py("-m", "benchmarks.micro", what, "--catalog", str(catalog), "--out", str(f))
        r = subprocess.run(
            [*cmd, *extra], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=3600
        )
        if r.returncode != 0:
            return {"error": r.stderr[-1500:]}
        doc: dict[str, Any] = json.loads(f.read_text())
        return doc

    for n in sorted(catalogs):
        log(f"micro: /vast work in process at {n:,} line items")
        out["scaling"][str(n)] = micro("scaling", catalogs[n], *model_args, "--budget", budget)
    if len(catalogs) >= 2:
        log(f"micro: /vast work in process, the sizes in turns ({INTERLEAVED_ROUNDS} rounds)")
        out["interleaved"] = run_interleaved(opts, catalogs, model_args)
    ref = _reference_size(list(catalogs))
    log(f"micro: scoring 10/100/1,000 candidates and pods of 1/4/8 ({ref:,} line items)")
    out["scoring"] = micro(
        "scoring", catalogs[ref], *model_args, "--budget", str(3 * float(budget))
    )
    log(f"micro: frequency store with {opts.store_viewers:,} viewers")
    out["store"] = micro("store", catalogs[min(catalogs)], "--viewers", str(opts.store_viewers))
    return out


INTERLEAVED_ROUNDS = 10
INTERLEAVED_BLOCK = 250
"""Requests per size and round: 2,500 each in all, within the 3,000 of a worker's list."""


def run_interleaved(
    opts: Options, catalogs: dict[int, Path], model_args: list[str]
) -> dict[str, Any]:
    """``micro.interleaved`` over one ``blocks`` worker per catalog size: the scaling
    target's figure (the sizes measured in turns, not minutes apart)."""
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        for n in sorted(catalogs):
            cmd = _py("-m", "benchmarks.micro", "blocks", "--catalog", str(catalogs[n]))
            proc = subprocess.Popen(
                [*cmd, *model_args],
                cwd=ROOT,
                env=_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs[n] = proc
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 900)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                return {"error": f"the {n:,} line-item worker did not start: {line[:200]!r}"}
        block = 20 if opts.quick else INTERLEAVED_BLOCK
        return interleaved_cpu(procs, rounds=INTERLEAVED_ROUNDS, block=block)
    except (OSError, RuntimeError, TimeoutError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                try:
                    if proc.stdin:
                        proc.stdin.write("quit\n")
                        proc.stdin.close()
                    proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()


def _reference_size(sizes: Sequence[int]) -> int:
    return min(sizes, key=lambda n: (abs(math.log(n / TARGET_LINE_ITEMS)), -n))


# --------------------------------------------------------------------------- targets


MAX_ERROR_SHARE = 0.01
"""A run with more failed requests than this share is not judged."""
MIN_COUNTED_SHARE = 0.99
"""First-time beacons: a run whose real server counted fewer than this share of its beacons
replayed some (answered without counting, cheaper): not judged."""
FULL_POD_BYTES = (0.8, 1.25)
"""Mean bytes per real ``/vast`` response over the baseline's 4-ad document: outside this
band the pods were not the 4-ad pods the baseline serves (no-fills, capped viewers)."""


def _status(value: float | None, ok: bool, problems: Sequence[str] = ()) -> str:
    """``not measured`` without a value, ``invalid`` when the runs behind it were not sound
    (``problems``: then the value is not judged), else ``met`` or ``missed``."""
    if value is None:
        return "not measured"
    if problems:
        return "invalid"
    return "met" if ok else "missed"


def run_problems(
    res: dict[str, Any] | None,
    what: str,
    pod_bytes: float | None = None,
    *,
    requests: str = "requests",
    errors: str = "errors",
    per_response: str = "bytes_per_response",
) -> list[str]:
    """Why the figures of one run (a load tool's result, or one side of a paired round, its
    keys named by ``requests``/``errors``/``per_response``) cannot be judged: it failed,
    too many of its requests failed (non-2xx, shed, connection errors, 4-ad requests answered
    without an ad), or, given the 4-ad document's size ``pod_bytes``, its responses were not
    full pods."""
    if not res:
        return [f"{what}: no run"]
    if res.get("error"):
        return [f"{what}: {str(res['error'])[:200]}"]
    out: list[str] = []
    n = int(res.get(requests) or 0)
    errs = res.get(errors) or {}
    failed = sum(int(v) for v in errs.values())
    if n == 0:
        out.append(f"{what}: no responses")
    elif failed > MAX_ERROR_SHARE * n:
        kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(errs.items()))
        out.append(f"{what}: {failed:,} of {n:,} requests failed ({kinds})")
    bpr = res.get(per_response)
    if pod_bytes and bpr is not None:
        lo, hi = FULL_POD_BYTES
        if not lo <= bpr / pod_bytes <= hi:
            out.append(
                f"{what}: {bpr:,.0f} bytes per response where the 4-ad pod has "
                f"{pod_bytes:,.0f}: the pods were not full (no-fills, capped viewers)"
            )
    return out


def _doc_problems(run: dict[str, Any]) -> list[str]:
    """The baseline's document must be a 4-ad pod, or the ratios compare unlike work."""
    h = run.get("harvest") or {}
    ads = h.get("vast_pod4_doc_ads")
    if ads is not None and ads < 4:
        return [f"the baseline's '4-ad' document has {ads} ad(s): the real server did not fill"]
    return []


def _counted_problem(share: float | None, what: str) -> list[str]:
    if share is None:
        return [f"{what}: the share of counted beacons was not measured"]
    if share < MIN_COUNTED_SHARE:
        return [
            f"{what}: the server counted {share:.3f} of the first-time beacons (< "
            f"{MIN_COUNTED_SHARE}): the rest were replays, answered uncounted"
        ]
    return []


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    runs = [r for r in report["http"]["runs"] if r.get("endpoints")]
    bases = {b["workers"]: b for b in report["http"]["baseline"] if b.get("endpoints")}
    one = [r for r in runs if r["workers"] == 1]
    ref = min(
        one,
        key=lambda r: (abs(math.log(r["line_items"] / TARGET_LINE_ITEMS)), -r["line_items"]),
        default=None,
    )
    targets: list[dict[str, Any]] = []
    base1 = bases.get(1)

    def at(run: dict[str, Any] | None) -> dict[str, Any]:
        if run is None:
            return {}
        scorer = ((run.get("readyz") or {}).get("model") or {}).get("scorer")
        return {
            "workers": 1,
            "line_items": run["line_items"],
            "as_specified": run["line_items"] == TARGET_LINE_ITEMS,
            "server_scorer": scorer,
        }

    paired = (ref or {}).get("paired") or {}
    pod_bytes = float(((ref or {}).get("harvest") or {}).get("vast_pod4_doc_bytes") or 0) or None

    def run_level(vast: bool) -> list[str]:
        """What makes every figure of the reference run unsound (``vast``: the /vast ones)."""
        if ref is None:
            return []
        out = [f"the run failed: {str(ref['error'])[:200]}"] if ref.get("error") else []
        if vast:
            out += _doc_problems(ref)
            scorer = at(ref).get("server_scorer")
            if scorer != "model":
                out.append(
                    f"the server scored with {scorer!r}, not the model: it did not load the "
                    "bundle passed with --model (model wiring) or no model was available"
                )
        return out

    def pair_problems(ep: str, bytes_ref: float | None, beacons: bool) -> list[str]:
        out: list[str] = []
        for i, p in enumerate((paired.get(ep) or {}).get("pairs") or [], 1):
            for side in ("real", "static"):
                out += run_problems(
                    p,
                    f"round {i} ({side})",
                    bytes_ref if side == "real" else None,
                    requests=f"{side}_requests",
                    errors=f"{side}_errors",
                    per_response=f"{side}_bytes_per_response",
                )
            if beacons:
                out += _counted_problem(p.get("counted_share"), f"round {i}")
        return out

    def not_wrk(*tools: Any) -> list[str]:
        """Throughput is the server's only when the client is not the bottleneck: wrk."""
        other = sorted({str(t) for t in tools if t is not None and t != "wrk"})
        if not other:
            return []
        return [
            f"measured with {', '.join(other)}, not wrk: the load generator, not the server, "
            "may be the bottleneck (install wrk)"
        ]

    def judged(
        value: float | None, ok: bool, problems: list[str], tool: list[str], notes: list[str]
    ) -> str:
        notes += [f"not judged: {p}" for p in problems] + tool
        if value is not None and tool and not problems:
            return "not measured"
        return _status(value, ok, problems)

    def in_turns(ep: str) -> dict[str, Any] | None:
        """The paired rounds' figures for ``ep`` when they gave a ratio."""
        got = paired.get(ep) or {}
        if got.get("median_ratio") is None:
            return None
        return {
            "method": f"in turns with a static server: median of {len(got['ratios'])} "
            "round(s), each one run per server",
            "round_ratios": got["ratios"],
        }

    # 1. /vast throughput vs the static baseline
    ratio = None
    notes: list[str] = []
    problems = run_level(vast=True)
    tools: list[Any] = []
    turns1 = in_turns("vast_pod4")
    if ref is not None and base1 is not None:
        real1, stat1 = ref["endpoints"].get("vast_pod4"), base1["endpoints"].get("vast_pod4")
        ratio = (real1 or {}).get("ratio", {}).get("throughput")
        problems += run_problems(real1, "separate run (real)", pod_bytes)
        problems += run_problems(stat1, "separate run (static)")
        tools += [(real1 or {}).get("tool"), (stat1 or {}).get("tool")]
    if turns1 is not None:
        ratio = paired["vast_pod4"]["median_ratio"]
        problems += pair_problems("vast_pod4", pod_bytes, beacons=False)
        tools += [p.get("tool") for p in paired["vast_pod4"]["pairs"]]
    targets.append(
        {
            "id": "vast_throughput",
            "description": "/vast, 4-ad pod, 10k line items, model on, 1 worker: throughput "
            ">= 25 % of the static baseline",
            "threshold": 0.25,
            "measured": ratio,
            "unit": "ratio",
            "status": judged(
                ratio, ratio is not None and ratio >= 0.25, problems, not_wrk(*tools), notes
            ),
            "at": at(ref),
            "detail": None
            if ref is None or base1 is None
            else {
                "vast_rps": ref["endpoints"]["vast_pod4"].get("rps"),
                "baseline_rps": base1["endpoints"]["vast_pod4"].get("rps"),
                "separate_runs_ratio": ref["endpoints"]["vast_pod4"]
                .get("ratio", {})
                .get("throughput"),
                "bytes_per_response": ref["endpoints"]["vast_pod4"].get("bytes_per_response"),
                "pod_doc_bytes": pod_bytes,
                **(turns1 or {}),
            },
            "notes": notes,
            "profile": "profiles.vast_http, profiles.vast_inprocess",
        }
    )
    # 2. p99 at half of that load
    fr = (ref or {}).get("fixed_rate") or {}
    p99 = (fr.get("latency_ms") or {}).get("p99")
    floor_lat = ((base1 or {}).get("fixed_rate_floor") or {}).get("latency_ms")
    notes2 = ["the load generator could not keep the schedule: latencies are inflated"]
    if not fr.get("generator_saturated"):
        notes2 = []
    problems2 = run_level(vast=True)
    if ref is not None:
        problems2 += run_problems(fr or None, "fixed-rate run", pod_bytes)
    targets.append(
        {
            "id": "vast_p99_half_load",
            "description": "p99 <= 5 ms at half of the measured maximum /vast rate "
            "(fixed-rate open-loop run, latency from each request's due time)",
            "threshold": 5.0,
            "measured": p99,
            "unit": "ms",
            "status": judged(p99, p99 is not None and p99 <= 5.0, problems2, [], notes2),
            "at": at(ref),
            "detail": None
            if not fr
            else {
                "rate": fr.get("target_rate"),
                "achieved_rps": fr.get("rps"),
                "requests": fr.get("requests"),
                "p50_ms": (fr.get("latency_ms") or {}).get("p50"),
                "service_p99_ms": (fr.get("service_ms") or {}).get("p99"),
                # the generator against the static server at the same rate: what the
                # measurement itself adds
                "floor_p50_ms": (floor_lat or {}).get("p50"),
                "floor_p99_ms": (floor_lat or {}).get("p99"),
                "generator_saturated": fr.get("generator_saturated"),
                "errors": fr.get("errors"),
                "bytes_per_response": fr.get("bytes_per_response"),
            },
            "notes": notes2,
            "profile": "profiles.vast_http, profiles.vast_inprocess",
        }
    )
    # 3. 100k vs 1k per-request time (in process)
    scaling = report["micro"]["scaling"] if report.get("micro") else {}
    turns = (report.get("micro") or {}).get("interleaved") or {}
    ok_sizes = sorted(int(k) for k, v in scaling.items() if "scorers" in v)
    measured = None
    detail: dict[str, Any] | None = None
    notes = []
    exact: float | None = None  # the ratio judged (3 decimals; ``measured`` is rounded to 2)
    if turns.get("ratio") is not None:
        lo, hi = turns["sizes"][0], turns["sizes"][-1]
        exact = turns["ratio"]
        measured = round(turns["ratio"], 2)
        rr = [r for r in turns["round_ratios"] if r is not None]
        detail = {
            "small": lo,
            "large": hi,
            "scorer": "model"
            if "model" in (scaling.get(str(hi)) or {}).get("scorers", {})
            else "price",
            "small_cpu_ms": turns["per_size"][str(lo)]["cpu_median_ms"],
            "large_cpu_ms": turns["per_size"][str(hi)]["cpu_median_ms"],
            "method": f"in turns: {turns['rounds']} rounds of {turns['block']} requests per size",
            "exact_ratio": exact,
            "round_ratio_min": min(rr) if rr else None,
            "round_ratio_max": max(rr) if rr else None,
        }
        if (lo, hi) != (1000, 100_000):
            notes.append(f"measured {hi:,} vs {lo:,} line items, not 100k vs 1k")
    elif len(ok_sizes) >= 2:
        lo, hi = ok_sizes[0], ok_sizes[-1]
        scorer = "model" if "model" in scaling[str(hi)]["scorers"] else "price"
        s_lo = scaling[str(lo)]["scorers"][scorer]
        s_hi = scaling[str(hi)]["scorers"][scorer]
        t_lo = s_lo.get("cpu_median_ms", s_lo["median_ms"])
        t_hi = s_hi.get("cpu_median_ms", s_hi["median_ms"])
        measured = round(t_hi / t_lo, 2) if t_lo else None
        detail = {
            "small": lo,
            "large": hi,
            "scorer": scorer,
            "small_cpu_ms": t_lo,
            "large_cpu_ms": t_hi,
            "wall_ratio": round(s_hi["median_ms"] / s_lo["median_ms"], 2)
            if s_lo["median_ms"]
            else None,
        }
        if (lo, hi) != (1000, 100_000):
            notes.append(f"measured {hi:,} vs {lo:,} line items, not 100k vs 1k")
    targets.append(
        {
            "id": "scaling_100k_vs_1k",
            "description": "per-request /vast time at 100k line items <= 1.5x that at 1k "
            "(in-process, median CPU time per request, the sizes measured in turns)",
            "threshold": 1.5,
            "measured": measured,
            "unit": "ratio",
            "status": _status(
                measured, measured is not None and (exact if exact is not None else measured) <= 1.5
            ),
            "at": detail or {},
            "notes": notes,
            "profile": "micro.scaling.<size>.profile",
        }
    )
    # 4. beacon throughput: first-time (counted) beacons when measured; replays otherwise
    ratio = None
    detail4: dict[str, Any] | None = None
    notes4: list[str] = []
    problems4 = run_level(vast=False)
    tools4: list[Any] = []
    if ref is not None and base1 is not None:
        eps_r, eps_b = ref["endpoints"], base1["endpoints"]
        ep = FRESH_BEACONS if (eps_r.get(FRESH_BEACONS) or {}).get("rps") else "beacon"
        if ep == "beacon":
            notes4.append("no first-time beacon run: measured on replayed beacons")
        else:
            share = (eps_r.get(ep) or {}).get("counted_share")
            problems4 += _counted_problem(share, "separate run")
        problems4 += run_problems(eps_r.get(ep), "separate run (real)")
        problems4 += run_problems(eps_b.get(ep), "separate run (static)")
        tools4 += [(eps_r.get(ep) or {}).get("tool"), (eps_b.get(ep) or {}).get("tool")]
        ratio = (eps_r.get(ep) or {}).get("ratio", {}).get("throughput")
        turns4 = in_turns(FRESH_BEACONS) if ep == FRESH_BEACONS else None
        detail4 = {
            "endpoint": ep,
            "beacon_rps": (eps_r.get(ep) or {}).get("rps"),
            "baseline_rps": (eps_b.get(ep) or {}).get("rps"),
            "counted_share": (eps_r.get(ep) or {}).get("counted_share"),
            "replayed_beacon_ratio": (eps_r.get("beacon") or {}).get("ratio", {}).get("throughput"),
            "separate_runs_ratio": ratio,
            **(turns4 or {}),
        }
        if turns4 is not None:
            ratio = paired[FRESH_BEACONS]["median_ratio"]
            problems4 += pair_problems(FRESH_BEACONS, None, beacons=True)
            tools4 += [p.get("tool") for p in paired[FRESH_BEACONS]["pairs"]]
    targets.append(
        {
            "id": "beacon_throughput",
            "description": "a beacon at >= 50 % of the static baseline's throughput (1 worker; "
            "first-time beacons, each counted)",
            "threshold": 0.5,
            "measured": ratio,
            "unit": "ratio",
            "status": judged(
                ratio, ratio is not None and ratio >= 0.5, problems4, not_wrk(*tools4), notes4
            ),
            "at": at(ref),
            "detail": detail4,
            "notes": notes4,
            "profile": "profiles.beacon_http",
        }
    )
    return targets


# --------------------------------------------------------------------------- report


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, int | float):
        if isinstance(x, float) and math.isnan(x):
            return "-"
        return f"{x:,.{nd}f}"
    return str(x)


def render_table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    hdr = (
        f"| {'workers':>7} | {'line items':>10} | {'endpoint':<10} | {'req/s':>9} | {'p50 ms':>7} "
        f"| {'p90 ms':>7} | {'p99 ms':>8} | {'p99.9 ms':>8} | {'CPU µs/req':>10} | {'RSS MB':>7} "
        f"| {'thr ratio':>9} | {'CPU ratio':>9} |"
    )
    lines.append(hdr)
    lines.append("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    rows = [*report["http"]["baseline"], *report["http"]["runs"]]
    rows.sort(key=lambda r: (r["workers"], r.get("line_items", 0)))
    for r in rows:
        name = "static" if r["server"] == "static" else f"{r['line_items']:,}"
        if r.get("error"):
            lines.append(f"| {r['workers']:>7} | {name:>10} | error: {r['error'][:80]} |")
            continue
        for ep, e in (r.get("endpoints") or {}).items():
            if e.get("error"):
                continue
            lat = e.get("latency_ms") or {}
            ratio = e.get("ratio") or {}
            lines.append(
                f"| {r['workers']:>7} | {name:>10} | {ep:<10} | {_f(e.get('rps')):>9} "
                f"| {_f(lat.get('p50'), 2):>7} | {_f(lat.get('p90'), 2):>7} "
                f"| {_f(lat.get('p99'), 2):>8} | {_f(lat.get('p999'), 2):>8} "
                f"| {_f(e.get('cpu_us_per_req'), 0):>10} | {_f(e.get('rss_mb'), 0):>7} "
                f"| {_f(ratio.get('throughput'), 3):>9} | {_f(ratio.get('cpu'), 1):>9} |"
            )
        for key, label in (("fixed_rate", "@half"), ("fixed_rate_floor", "@floor")):
            fr = r.get(key)
            if not fr:
                continue
            lat = fr.get("latency_ms") or {}
            half = f"{label}*" if fr.get("generator_saturated") else label
            lines.append(
                f"| {r['workers']:>7} | {name:>10} | {half:<10} | {_f(fr.get('rps')):>9} "
                f"| {_f(lat.get('p50'), 2):>7} | {_f(lat.get('p90'), 2):>7} "
                f"| {_f(lat.get('p99'), 2):>8} | {_f(lat.get('p999'), 2):>8} "
                f"| {_f(fr.get('cpu_us_per_req'), 0):>10} | {_f(fr.get('rss_mb'), 0):>7} "
                f"| {'':>9} | {'':>9} |"
            )
    return "\n".join(lines)


def render_micro(report: dict[str, Any]) -> str:
    m = report.get("micro") or {}
    out: list[str] = []
    sc = m.get("scaling") or {}
    if sc:
        out.append(
            "| line items | scorer | CPU median ms | wall median ms | wall p90 ms | ads/pod "
            "| RSS MB |"
        )
        out.append("|---:|---|---:|---:|---:|---:|---:|")
        for n, v in sorted(sc.items(), key=lambda kv: int(kv[0])):
            if "scorers" not in v:
                out.append(f"| {int(n):,} | error | {str(v.get('error'))[-100:]} | | | | |")
                continue
            for name, s in v["scorers"].items():
                out.append(
                    f"| {int(n):,} | {name} | {_f(s.get('cpu_median_ms'), 2)} "
                    f"| {_f(s['median_ms'], 2)} | {_f(s['p90_ms'], 2)} | {_f(s['ads_mean'], 2)} "
                    f"| {_f(v['rss_mb'], 0)} |"
                )
    turns = m.get("interleaved") or {}
    if turns.get("per_size"):
        out.append("")
        out.append(
            f"In turns ({turns['rounds']} rounds of {turns['block']} requests per size): "
            "CPU median "
            + ", ".join(
                f"{int(n):,}: {_f(v['cpu_median_ms'], 3)} ms" for n, v in turns["per_size"].items()
            )
            + f"; largest / smallest {_f(turns['ratio'], 2)} (rounds "
            + f"{_f(min(r for r in turns['round_ratios'] if r is not None), 2)}-"
            + f"{_f(max(r for r in turns['round_ratios'] if r is not None), 2)})"
        )
    elif turns.get("error"):
        out.append("")
        out.append(f"In turns: error {str(turns['error'])[-200:]}")
    scoring = m.get("scoring") or {}
    if scoring.get("scored_candidates"):
        out.append("")
        out.append(
            "| scored candidates (CPU median) | model predict ms | decide, price ms "
            "| decide, model ms |"
        )
        out.append("|---:|---:|---:|---:|")
        for n, e in scoring["scored_candidates"].items():

            def med(x: Any) -> str:
                if not isinstance(x, dict):
                    return str(x)
                return _f(x.get("cpu_median_ms", x.get("median_ms")), 3)

            out.append(
                f"| {int(n):,} | {med(e.get('model_predict'))} | {med(e.get('decide_price'))} "
                f"| {med(e.get('decide_model', 'no model'))} |"
            )
        out.append("")
        n_li = scoring.get("line_items", 0)
        out.append(f"| ads per pod ({n_li:,} line items) | CPU median ms/req | wall median ms |")
        out.append("|---:|---:|---:|")
        for k, s in (scoring.get("pods") or {}).items():
            out.append(f"| {k} | {_f(s.get('cpu_median_ms'), 2)} | {_f(s.get('median_ms'), 2)} |")
    st = m.get("store") or {}
    if "viewers" in st:
        out.append("")
        out.append(
            f"frequency store: {st['viewers']:,} viewers -> {st['keys']:,} keys, "
            f"{_f(st['rss_delta_mb'])} MB RSS ({_f(st['bytes_per_viewer'], 0)} B/viewer; "
            f"1M viewers ≈ {_f(st['projected_1m_viewers_mb'], 0)} MB)"
        )
    return "\n".join(out)


def render_idle(report: dict[str, Any]) -> str:
    out = [
        "| line items | slowest /healthz probe ms | median probe ms | idle CPU share "
        "| worst 1 s CPU share |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in report["http"]["runs"]:
        i = r.get("idle")
        if r["workers"] != 1 or not i:
            continue
        out.append(
            f"| {r['line_items']:,} | {_f(i['probe_max_ms'], 1)} | {_f(i['probe_p50_ms'], 2)} "
            f"| {_f(i['cpu_share'], 3)} | {_f(i['cpu_share_max_1s'], 2)} |"
        )
    return "\n".join(out)


def render_targets(report: dict[str, Any]) -> str:
    out = []
    for t in report["targets"]:
        m = t["measured"]
        unit = " ms" if t["unit"] == "ms" else "x"
        shown = "-" if m is None else f"{m:g}{unit}"
        extra = ""
        if t.get("at") and t["at"].get("as_specified") is False:
            extra = f" (at {t['at'].get('line_items'):,} line items)"
        status = t["status"].upper()
        out.append(f"- {t['id']}: {status}: measured {shown}{extra} — {t['description']}")
        detail = t.get("detail") or {}
        if detail.get("round_ratios"):
            rounds = ", ".join(f"{x:g}" for x in detail["round_ratios"])
            out.append(
                f"    {detail['method']} ({rounds}); "
                f"separate runs: {_f(detail.get('separate_runs_ratio'), 4)}"
            )
        if detail.get("bytes_per_response") and detail.get("pod_doc_bytes"):
            out.append(
                f"    mean bytes per /vast response {_f(detail['bytes_per_response'], 0)} "
                f"(the 4-ad document: {_f(detail['pod_doc_bytes'], 0)})"
            )
        for n in t.get("notes") or []:
            out.append(f"    note: {n}")
    return "\n".join(out)


def render_profiles(report: dict[str, Any], n: int = 12) -> str:
    out: list[str] = []
    for name, p in (report.get("profiles") or {}).items():
        if not isinstance(p, dict):
            continue
        if p.get("error"):
            out.append(f"{name}: {p['error']}")
            continue
        if "vastserver_inclusive" in p:
            out.append(f"{name} (py-spy, {p.get('samples')} samples): self")
            out += [f"  {f['pct']:5.1f}%  {f['frame']}" for f in p["self"][:n]]
            out.append(f"{name}: inclusive, vastserver frames")
            out += [f"  {f['pct']:5.1f}%  {f['frame']}" for f in p["vastserver_inclusive"][:n]]
        elif "cumulative_vastserver" in p:
            out.append(f"{name} (cProfile, {p.get('total_s')} s): self")
            out += [f"  {f['self_pct']:5.1f}%  {f['frame']}" for f in p["self"][:n]]
            out.append(f"{name}: cumulative, vastserver frames")
            out += [f"  {f['cum_pct']:5.1f}%  {f['frame']}" for f in p["cumulative_vastserver"][:n]]
    return "\n".join(out)


def _ratio_rows(report: dict[str, Any]) -> dict[tuple[int, int, str], dict[str, Any]]:
    out: dict[tuple[int, int, str], dict[str, Any]] = {}
    for r in report["http"]["runs"]:
        for ep, e in (r.get("endpoints") or {}).items():
            out[(r["workers"], r["line_items"], ep)] = e
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Side by side: throughput and CPU ratios to the baseline, and the targets. Ratios (not
    raw req/s) are compared, so two runs on differently loaded machines stay comparable."""
    a, b = _ratio_rows(old), _ratio_rows(new)
    lines = [
        "| workers | line items | endpoint | thr ratio old | thr ratio new | change "
        "| CPU ratio old | CPU ratio new |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(set(a) | set(b)):
        ra = (a.get(key) or {}).get("ratio") or {}
        rb = (b.get(key) or {}).get("ratio") or {}
        ta, tb = ra.get("throughput"), rb.get("throughput")
        change = f"{tb / ta:.2f}x" if ta and tb else "-"
        lines.append(
            f"| {key[0]} | {key[1]:,} | {key[2]} | {_f(ta, 3)} | {_f(tb, 3)} | {change} "
            f"| {_f(ra.get('cpu'), 1)} | {_f(rb.get('cpu'), 1)} |"
        )
    lines.append("")
    old_t = {t["id"]: t for t in old.get("targets") or []}
    for t in new.get("targets") or []:
        o = old_t.get(t["id"]) or {}
        lines.append(
            f"- {t['id']}: {o.get('status', '-')} ({_f(o.get('measured'), 3)}) -> "
            f"{t['status']} ({_f(t.get('measured'), 3)})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _model_problem(path: Path) -> str | None:
    """Why the bundle at ``path`` would not load (what ``serve --model`` would say), or
    None."""
    from vastserver.ml.model import ModelBundle, ModelError

    try:
        ModelBundle.load(path)
    except ModelError as e:
        return str(e)
    return None


def main(argv: Sequence[str]) -> int:
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if args.compare:
        reports = []
        for p in args.compare:
            try:
                doc = json.loads(Path(p).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                print(f"bench --compare: {p}: {e}", file=sys.stderr)
                return 2
            if not isinstance(doc, dict) or not isinstance(doc.get("http"), dict):
                print(f"bench --compare: {p}: not a bench report (no 'http')", file=sys.stderr)
                return 2
            reports.append(doc)
        try:
            text = compare(reports[0], reports[1])
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            # the right top-level shape, broken inside (a missing list, a string for a number)
            print(f"bench --compare: not a well-formed bench report ({e!r})", file=sys.stderr)
            return 2
        print(text)
        return 0
    opts = resolve(args)
    if opts.model_source == "--model" and opts.model is not None:
        problem = _model_problem(opts.model)
        if problem is not None:  # before anything runs, not as every server's start-up error
            print(f"bench: --model: {problem}", file=sys.stderr)
            return 2
    t_start = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
    wrk = _tool(opts)
    with tempfile.TemporaryDirectory(prefix="vastserver-bench-") as tmp:
        workdir = Path(tmp)
        all_sizes = sorted(set(opts.sizes) | set(opts.http_sizes))
        catalogs = {n: ensure_catalog(opts, n) for n in all_sizes}
        ensure_model(opts)
        report: dict[str, Any] = {
            "meta": {
                "started": started,
                "host": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "event_loop": _loop_name(),
                    "load_tool": wrkdrv.version(wrk) if wrk else "aiohttp loadgen",
                    "py_spy": profiling.py_spy() is not None,
                    "loadavg_start": list(os.getloadavg()),
                },
                "options": {
                    "quick": opts.quick,
                    "duration_s": opts.duration,
                    "connections": opts.connections,
                    "sizes": opts.sizes,
                    "http_sizes": opts.http_sizes,
                    "workers": opts.workers,
                    "event_log": opts.event_log,
                    "seed": opts.seed,
                    "store_viewers": opts.store_viewers,
                },
                "model": {
                    "path": str(opts.model) if opts.model else None,
                    "source": opts.model_source,
                },
                "endpoints": ENDPOINT_NOTES,
                "notes": opts.notes,
            },
            "micro": None,
            "http": {"runs": [], "baseline": []},
            "profiles": {},
        }
        report["micro"] = run_micro(opts, {n: catalogs[n] for n in opts.sizes}, workdir)
        ref_size = _reference_size(opts.http_sizes)
        shared = SharedStore(workdir)
        try:
            for w in opts.workers:
                harvested: Harvest | None = None
                for n in opts.http_sizes:
                    entry, hv = http_real(
                        opts,
                        w,
                        n,
                        catalogs[n],
                        workdir,
                        do_profile=(w == 1 and n == ref_size),
                        shared=shared,
                        paired=(w == 1 and n == ref_size),
                    )
                    report["http"]["runs"].append(entry)
                    if hv is not None and (harvested is None or n == ref_size):
                        harvested = hv
                if harvested is None:
                    report["http"]["baseline"].append(
                        {
                            "server": "static",
                            "workers": w,
                            "error": "no real run to take lists from",
                        }
                    )
                    continue
                floor = next(
                    (
                        r["fixed_rate"].get("target_rate")
                        for r in report["http"]["runs"]
                        if r["workers"] == w and r["line_items"] == ref_size and r.get("fixed_rate")
                    ),
                    None,
                )
                base = http_baseline(opts, w, harvested, workdir, floor_rate=floor)
                report["http"]["baseline"].append(base)
                for r in report["http"]["runs"]:
                    if r["workers"] == w:
                        add_ratios(r, base)
        finally:
            shared.close()
        for r in report["http"]["runs"]:
            for name, p in (r.pop("profiles", None) or {}).items():
                key = f"{name.replace('_pod4', '')}_http"
                if name == "idle":
                    key = f"idle_http_{r['line_items']}"
                report["profiles"][key] = p
        scoring = (report["micro"] or {}).get("scoring") or {}
        if isinstance(scoring, dict) and "profile_vast_path" in scoring:
            report["profiles"]["vast_inprocess"] = scoring.pop("profile_vast_path")
        report["targets"] = evaluate_targets(report)
        report["meta"]["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        report["meta"]["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        report["meta"]["host"]["loadavg_end"] = list(os.getloadavg())
    text = "\n\n".join(
        [
            "HTTP (ratios: this row / the static baseline with the same workers; @half: vast_pod4 "
            "at a fixed rate of half its maximum; @floor: the static server at the real "
            "server's half rate, what the generator itself adds; * = the load generator could "
            "not keep up)",
            render_table(report),
            "Idle server, 1 worker (background work blocking the event loop)",
            render_idle(report),
            "In-process micro-benchmarks",
            render_micro(report),
            "Targets",
            render_targets(report),
            "Top frames",
            render_profiles(report),
            f"elapsed {report['meta']['elapsed_s']} s",
        ]
    )
    print(text)
    if opts.out is not None:
        opts.out.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        log(f"wrote {opts.out}")
    return 0
