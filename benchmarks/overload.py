"""Overload: offered load at 2x capacity, admitted requests keep a bounded p99.

``python -m benchmarks.overload [--line-items N] [--max-in-flight K] [--seconds S]``

1. Start ``vastserver serve`` (1 worker, a generated catalog, the demo model) with
   ``VASTSERVER_MAX_IN_FLIGHT=K``.
2. Capacity: a closed loop of ``K`` clients for ``S`` seconds gives the maximum ``/vast``
   rate ``R`` (4-ad pods).
3. Open-loop runs at a fixed rate of ``0.5 R`` and ``2 R`` (an aiohttp generator in this
   process; latency counted from each request's due time, so queueing in the generator
   counts too). A shed request answers at once with a no-fill and ``X-Shed: 1``; the report
   gives the p50/p99 of admitted and of shed requests and the shed share.

The claim under test: at 2x capacity the server sheds the excess instead of queueing it, so
admitted requests keep a p99 of the same order as at half load rather than growing with the
backlog. Ratios and percentiles only; nothing here is a test assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import reqmix
from benchmarks.harness import ROOT, free_port
from benchmarks.loadgen import latency_summary

SECRET = "overload-bench-secret-0123456789"


def _start(catalog: Path, max_in_flight: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTSERVER_")}
    env.update(VASTSERVER_SECRET=SECRET, VASTSERVER_MAX_IN_FLIGHT=str(max_in_flight))
    cmd = [sys.executable, "-m", "vastserver", "serve", "--port", str(port)]
    cmd += ["--catalog", str(catalog), "--event-log", "off"]
    with log.open("wb") as lf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


async def _closed(base: str, urls: list[str], clients: int, seconds: float) -> float:
    end = time.perf_counter() + seconds
    done = 0
    async with aiohttp.ClientSession() as s:

        async def client(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < end:
                async with s.get(base + urls[i % len(urls)]) as r:
                    await r.read()
                done += 1
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return done / seconds


async def _open(base: str, urls: list[str], rate: float, seconds: float) -> dict[str, Any]:
    admitted: list[float] = []
    shed: list[float] = []
    errors = 0
    start = time.perf_counter()
    total = max(1, int(rate * seconds))
    conn = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(url: str, due: float) -> None:
            nonlocal errors
            try:
                async with s.get(base + url) as r:
                    await r.read()
                    (shed if r.headers.get("X-Shed") == "1" else admitted).append(
                        time.perf_counter() - due
                    )
            except (aiohttp.ClientError, OSError, TimeoutError):
                errors += 1

        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(urls[i % len(urls)], due)))
        await asyncio.gather(*tasks)
    n = len(admitted) + len(shed)
    return {
        "rate": round(rate, 1),
        "requests": n,
        "errors": errors,
        "shed_share": round(len(shed) / n, 4) if n else None,
        "admitted_ms": latency_summary(admitted),
        "shed_ms": latency_summary(shed),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    ap.add_argument("--line-items", type=int, default=1000)
    ap.add_argument("--max-in-flight", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    work = ROOT / "var" / "bench-cache"
    work.mkdir(parents=True, exist_ok=True)
    catalog = work / f"overload-catalog-{args.line_items}.json"
    if not catalog.exists():
        subprocess.run(
            [sys.executable, "-m", "vastserver", "gen-catalog", "--line-items",
             str(args.line_items), "--seed", "1", "--out", str(catalog)],
            cwd=ROOT, check=True,
        )  # fmt: skip
    rng = random.Random(1)
    urls = [ln.path for ln in reqmix.vast_pod4_lines(rng, 2000)]
    proc, base = _start(catalog, args.max_in_flight, work / "overload-server.log")
    try:
        asyncio.run(_closed(base, urls, args.max_in_flight, 2.0))  # warm up
        capacity = asyncio.run(_closed(base, urls, args.max_in_flight, args.seconds))
        half = asyncio.run(_open(base, urls, capacity / 2, args.seconds))
        double = asyncio.run(_open(base, urls, capacity * 2, args.seconds))
    finally:
        proc.terminate()
        proc.wait(30)
    report = {
        "line_items": args.line_items,
        "max_in_flight": args.max_in_flight,
        "capacity_rps": round(capacity, 1),
        "half_load": half,
        "double_load": double,
    }
    p99_half = half["admitted_ms"]["p99"] or math.nan
    p99_double = double["admitted_ms"]["p99"] or math.nan
    report["admitted_p99_ratio_double_vs_half"] = round(p99_double / p99_half, 2)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
