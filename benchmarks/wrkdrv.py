"""Driving ``wrk`` with a request list.

The Lua script loads the list (:mod:`benchmarks.reqmix` format) in each thread's ``init``,
pre-formats every request with its headers, and cycles through them from a per-thread random
offset; ``done`` writes the summary and the latency percentiles as JSON to the file named by
``BENCH_WRK_OUT``. Non-2xx/3xx answers count as ``errors.status`` (beacons answer 204, which
is a success); wrk's ``requests`` include them. Bodies are not read in Lua (a ``response()``
hook would slow the client down): the mean bytes per response (``bytes_per_response``) is what
shows that answers were the full documents (a no-fill VAST is a few hundred bytes, a 4-ad pod
several kB).

The first ``request()`` of a thread creates the file named by ``BENCH_WRK_START``: the
server's CPU is sampled from then (wrk's own window starts after ``init`` has pre-formatted
the whole list, which takes a while for a long list), to that moment plus the duration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks import procstat

LUA = r"""
local reqs = {}
local idx = 0
local started = false

function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    local fields = {}
    for field in string.gmatch(line, "[^\t]+") do
      fields[#fields + 1] = field
    end
    if #fields >= 2 then
      local headers = {}
      for i = 3, #fields do
        local k, v = string.match(fields[i], "^([^:]+):%s*(.*)$")
        if k then headers[k] = v end
      end
      reqs[#reqs + 1] = wrk.format("GET", fields[2], headers)
    end
  end
  f:close()
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  idx = math.random(#reqs) - 1
end

function request()
  if not started then
    started = true
    local mark = os.getenv("BENCH_WRK_START")
    if mark then
      local m = io.open(mark, "w")
      if m then m:close() end
    end
  end
  idx = idx % #reqs + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_WRK_OUT"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "mean": %.1f, "max": %d}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
  out:close()
end
"""


def available() -> str | None:
    return shutil.which("wrk")


def version(wrk: str) -> str:
    try:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _started(proc: subprocess.Popen[bytes], mark: Path, timeout_s: float) -> float:
    """When wrk sent its first request (its ``init`` is done): ``perf_counter`` time."""
    deadline = time.perf_counter() + timeout_s
    while not mark.exists() and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.001)
    return time.perf_counter()


def run(
    wrk: str,
    *,
    url: str,
    requests_file: Path,
    duration: float,
    connections: int,
    threads: int,
    server_pid: int | None,
    workdir: Path,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Closed-loop run; result in the shape of :func:`benchmarks.loadgen.summarize`."""
    script = workdir / "replay.lua"
    if not script.exists():
        script.write_text(LUA)
    out = workdir / f"wrk-{time.monotonic_ns()}.json"
    secs = max(1, round(duration))
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{secs}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url.rstrip("/") + "/",
        "--",
        str(requests_file),
    ]
    mark = workdir / f"wrk-{time.monotonic_ns()}.start"
    env = {**os.environ, "BENCH_WRK_OUT": str(out), "BENCH_WRK_START": str(mark)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    before = after = None
    if server_pid:
        t0 = _started(proc, mark, timeout_s + 60)
        before = procstat.sample(server_pid)
        time.sleep(max(0.0, t0 + secs - time.perf_counter()))
        after = procstat.sample(server_pid)
    stdout, stderr = proc.communicate(timeout=secs + timeout_s + 30)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"wrk failed ({proc.returncode}): {stderr.decode(errors='replace')[-2000:]}"
        )
    mark.unlink(missing_ok=True)
    doc = json.loads(out.read_text())
    out.unlink()
    window = doc["duration_us"] / 1e6
    lat = {k: round(v / 1000.0, 3) for k, v in doc["latency_us"].items()}
    n = int(doc["requests"])
    if n == 0:
        lat = dict.fromkeys(lat)
    errs = {k: v for k, v in doc["errors"].items() if v}
    return {
        "tool": "wrk",
        "mode": "closed",
        "connections": max(connections, threads),
        "threads": threads,
        "target_rate": None,
        "window_s": window,
        "requests": n,
        "rps": n / window if window > 0 else 0.0,
        "latency_ms": lat,
        "errors": errs,
        "bytes": doc["bytes"],
        "bytes_per_response": round(doc["bytes"] / n, 1) if n else None,
        "server_cpu_s": procstat.cpu_delta(before, after) if before and after else None,
        "stdout_tail": stdout.decode(errors="replace")[-400:],
    }
