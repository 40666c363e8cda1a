"""Benchmark helpers behind ``vastserver bench`` (entry point: :mod:`vastserver.bench`).

* :mod:`benchmarks.reqmix`: the request mix (VMAP, VAST pods with SSAI headers, beacons
  harvested from real VAST responses) and the request-list file format.
* :mod:`benchmarks.static_server`: the baseline, a tiny aiohttp app serving a pre-rendered
  document of the same size.
* :mod:`benchmarks.loadgen`: the aiohttp load generator (closed loop and fixed rate), run in
  its own process.
* :mod:`benchmarks.wrkdrv`: the ``wrk`` driver (a Lua script replaying a request list).
* :mod:`benchmarks.procstat`: CPU time and RSS of a server's process tree from ``/proc``.
* :mod:`benchmarks.micro`: in-process micro-benchmarks (no HTTP): scaling with line items,
  scored candidates, pod size; frequency-store memory; an in-process profile.
* :mod:`benchmarks.profiling`: py-spy sampling of a running server, reduced to top frames.
* :mod:`benchmarks.harness`: the orchestration, the targets and the report.
"""
