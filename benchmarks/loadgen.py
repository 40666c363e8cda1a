"""The load generator, run in its own process (``python -m benchmarks.loadgen``).

Two modes over a request list (:mod:`benchmarks.reqmix`), cycled in order:

* **closed loop** (default): ``--connections N`` clients each send a request, wait for the
  whole response, send the next, for ``--duration`` seconds. Throughput = responses
  completed inside the window / window.
* **fixed rate** (``--rate R``): request *i* is due at ``start + i / R`` whatever happened to
  the earlier ones (open loop, what wrk2 does), sent on connection ``i % --connections``.
  Latency is measured from the **due time**, not from when the connection became free, so
  a server that stalls is charged for the requests queued behind the stall (no coordinated
  omission). The pure service time is reported alongside. This mode does not use aiohttp:
  each connection is a thread with a blocking socket that sleeps to the due time and reads
  the answer itself. Through aiohttp on an event loop the generator added ~1 ms to every
  latency against the static server at 190 req/s (p50 1.7 ms instead of 0.6): an asyncio
  timer wakes up to a millisecond late (``epoll`` takes whole milliseconds, rounded up),
  and the client's own parsing of a 31 KB answer is counted too.

With ``--server-pid`` the server's process-tree CPU time is sampled exactly at the window's
start and end, so CPU per request = CPU in the window / responses in the window.

Every answer is checked: a status of 400 or more (``errors.status``), a shed request
(``X-Shed: 1``: the server answers overload with a 200 no-fill, ``errors.shed``) and, for the
4-ad ``vast_pod4`` lines, a VAST without an ``<Ad>`` (``errors.empty_vast``: internal errors
answer that way too) count as errors. A failed request (an error answer, or a connection that
failed) still counts in ``requests`` and its latency (to the answer, or to the failure) in the
percentiles, so a run of fast failures cannot pass for a fast run.

Writes one JSON document to ``--out``; see :func:`summarize` for its shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http import SERVER_SOFTWARE

from benchmarks import procstat
from benchmarks.reqmix import Line, read_lines

AD_OPEN = re.compile(rb"<Ad[\s>]")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(x: float) -> float | None:
    return None if math.isnan(x) else round(x * 1000.0, 3)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/mean/max in milliseconds (None when there is no sample)."""
    xs = sorted(latencies_s)
    return {
        "p50": _ms(percentile(xs, 50)),
        "p90": _ms(percentile(xs, 90)),
        "p99": _ms(percentile(xs, 99)),
        "p999": _ms(percentile(xs, 99.9)),
        "mean": _ms(sum(xs) / len(xs)) if xs else None,
        "max": _ms(xs[-1]) if xs else None,
    }


@dataclass(slots=True)
class Recorder:
    window_end: float = math.inf
    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    late_sends: int = 0
    """Fixed rate: requests sent more than 1 ms after their due time (all connections busy,
    or the generator itself behind)."""
    dispatch_late: int = 0
    """Fixed rate: requests the generator itself dispatched more than 1 ms late."""
    dispatch_rate: float | None = None
    """Fixed rate: requests sent per second (a server stall that holds connections busy
    lowers it too, so it does not mark the generator saturated)."""
    generator_cpu_share: float | None = None
    """Fixed rate: the generator's own CPU time over the window, in cores."""

    def ok(
        self,
        kind: str,
        due: float,
        sent: float,
        done: float,
        status: int,
        n: int,
        problem: str | None = None,
    ) -> None:
        """An answer; ``problem`` (see :func:`answer_problem`) makes it an error too."""
        if done > self.window_end:
            return
        self._timed(kind, due, sent, done)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.bytes += n
        if problem is not None:
            self.errors[problem] = self.errors.get(problem, 0) + 1

    def error(self, what: str, done: float, kind: str = "", due: float = math.nan) -> None:
        """A request that got no answer: an error, timed to the failure when ``due`` is
        given (a failure is a request's outcome: leaving it out would make the percentiles
        of a failing server look good)."""
        if done > self.window_end:
            return
        self.errors[what] = self.errors.get(what, 0) + 1
        if not math.isnan(due):
            self._timed(kind, due, due, done)

    def _timed(self, kind: str, due: float, sent: float, done: float) -> None:
        self.latencies.append(done - due)
        self.service.append(done - sent)
        self.by_kind.setdefault(kind, []).append(done - due)


def answer_problem(kind: str, status: int, shed: bool, body: bytes) -> str | None:
    """Why an answer does not count as served (None when it does): a status of 400 or more,
    a shed request, or a 4-ad request answered without an ad."""
    if status >= 400:
        return "status"
    if shed:
        return "shed"
    if kind == "vast_pod4" and not AD_OPEN.search(body):
        return "empty_vast"
    return None


def _prepare(base_url: str, lines: Sequence[Line]) -> list[tuple[str, str, dict[str, str]]]:
    return [(ln.kind, base_url + ln.path, dict(ln.headers)) for ln in lines]


async def _one(
    session: aiohttp.ClientSession,
    req: tuple[str, str, dict[str, str]],
    due: float,
    rec: Recorder | None,
) -> None:
    kind, url, headers = req
    sent = time.perf_counter()
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            status = resp.status
            shed = resp.headers.get("X-Shed") == "1"
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        if rec is not None:
            rec.error(type(e).__name__, time.perf_counter(), kind, due)
        return
    if rec is not None:
        problem = answer_problem(kind, status, shed, body)
        rec.ok(kind, due, sent, time.perf_counter(), status, len(body), problem)


async def closed_loop(
    session: aiohttp.ClientSession,
    reqs: Sequence[tuple[str, str, dict[str, str]]],
    connections: int,
    deadline: float,
    rec: Recorder | None,
    start_index: int = 0,
) -> int:
    """Run ``connections`` clients until ``deadline``; returns the next list index."""
    if rec is not None:
        rec.window_end = deadline
    state = {"i": start_index}

    async def client() -> None:
        while time.perf_counter() < deadline:
            i = state["i"]
            state["i"] = i + 1
            now = time.perf_counter()
            await _one(session, reqs[i % len(reqs)], now, rec)

    await asyncio.gather(*(client() for _ in range(connections)))
    return state["i"]


def _encode(base_url: str, req: tuple[str, str, dict[str, str]]) -> bytes:
    """The request as the aiohttp client sends it (same default headers but
    ``Accept-Encoding``, which neither generator nor wrk sends: the server would compress
    its XML, the static baseline does not), pre-encoded."""
    _, url, headers = req
    u = urlsplit(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    hdrs = {
        "Host": u.netloc,
        "Accept": "*/*",
        "User-Agent": SERVER_SOFTWARE,
        **headers,
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return f"GET {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1")


class _Conn:
    """One keep-alive HTTP/1.1 connection with blocking reads (a generator thread's own)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.deadline = math.inf
        self.got_bytes = False

    def connect(self) -> socket.socket:
        if self.sock is None:
            s = socket.create_connection(self.addr, timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock, self.buf = s, b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def _closed_by_peer(self) -> bool:
        """Whether the server closed this idle connection (a keep-alive timeout): a
        non-blocking peek reads its end of stream (or a reset)."""
        assert self.sock is not None
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def _more(self) -> None:
        assert self.sock is not None
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError("no complete answer within the timeout")
        self.sock.settimeout(left)
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionResetError("connection closed by the server")
        self.got_bytes = True
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._more()
        out, self.buf = self.buf[:i], self.buf[i + 2 :]
        return out

    def _head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._more()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for ln in lines:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def exchange(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one GET and read its whole answer within the timeout: (status, headers
        lower-cased, body). A reused connection the server closed while it was idle is
        opened again first; one that fails before any byte of the answer is tried once
        more on a new one (what a client pool does for an idempotent request)."""
        self.deadline = time.perf_counter() + self.timeout
        reused = self.sock is not None
        if reused and self._closed_by_peer():
            self.close()
            reused = False
        try:
            return self._exchange(data)
        except (ConnectionError, TimeoutError) as e:
            self.close()
            if not reused or self.got_bytes or isinstance(e, TimeoutError):
                raise
        return self._exchange(data)

    def _exchange(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        self.got_bytes = False
        sock = self.connect()
        sock.settimeout(max(0.001, self.deadline - time.perf_counter()))
        sock.sendall(data)
        status, headers = self._head()
        while 100 <= status < 200 and status != 101:  # interim answers (103 Early Hints)
            status, headers = self._head()
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self._line().split(b";", 1)[0], 16):
                parts.append(self._take(size))
                self._take(2)
            while self._line():  # trailers, up to the empty line
                pass
            body = b"".join(parts)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:  # delimited by the end of the connection
            try:
                while True:
                    self._more()
            except ConnectionResetError:
                pass
            body, self.buf = self.buf, b""
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


@dataclass(slots=True)
class _Outcome:
    kind: str
    due: float
    sent: float
    done: float
    status: int = 0
    n: int = 0
    problem: str | None = None
    error: str | None = None


SATURATED_CPU_SHARE = 0.85
"""Fixed rate: the generator's own CPU time over the window (all its threads, one core's
worth = 1.0) from which it counts as saturated: its threads then wait for the GIL and for a
core, and that wait is timed as the server's."""


def fixed_rate(
    base_url: str,
    reqs: Sequence[tuple[str, str, dict[str, str]]],
    connections: int,
    duration: float,
    rate: float,
    rec: Recorder,
    start_index: int = 0,
    timeout: float = 60.0,
) -> None:
    """Open loop: request *i* is due at ``start + i / rate``; it is sent by connection
    ``i % connections``, each a thread of its own with a blocking socket, sleeping to the due
    time with ``time.sleep`` (an asyncio timer wakes up to a millisecond late: ``epoll``
    takes its timeout in whole milliseconds, rounded up) and reading the answer itself (no
    event loop between the socket and the clock). A request whose connection is still busy
    with an earlier one goes out late, and that wait counts in its latency. Each request has
    ``timeout`` seconds for its whole answer; requests still unsent once the window and one
    timeout have passed are not sent, and count as ``TimeoutError`` failures."""
    u = urlsplit(base_url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    total = max(1, int(duration * rate))
    k = max(1, min(connections, total))
    wire = [_encode(base_url, r) for r in reqs]
    conns = [_Conn(host, port, timeout) for _ in range(k)]
    for c in conns:  # connected before the window, as the warm-up's were
        try:
            c.connect()
        except OSError:
            c.close()  # tried again by the first request, whose failure is counted
    outcomes: list[list[_Outcome]] = [[] for _ in range(k)]
    late: list[list[int]] = [[0, 0] for _ in range(k)]  # late_sends, dispatch_late
    start = time.perf_counter() + 0.02
    give_up = start + duration + timeout

    def worker(j: int) -> None:
        conn, out, counts = conns[j], outcomes[j], late[j]
        free_at = start
        for i in range(j, total, k):
            idx = (start_index + i) % len(reqs)
            kind = reqs[idx][0]
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            if sent > give_up:
                out.append(_Outcome(kind, due, sent, sent, error="TimeoutError"))
                continue
            if sent - due > 0.001:
                counts[0] += 1
                if free_at <= due:  # the connection was free: the generator was late
                    counts[1] += 1
            try:
                status, headers, body = conn.exchange(wire[idx])
            except (OSError, ValueError, IndexError) as e:
                done = time.perf_counter()
                conn.close()
                out.append(_Outcome(kind, due, sent, done, error=type(e).__name__))
            else:
                done = time.perf_counter()
                shed = headers.get("x-shed") == "1"
                problem = answer_problem(kind, status, shed, body)
                out.append(_Outcome(kind, due, sent, done, status, len(body), problem))
            free_at = done

    cpu0 = time.process_time()
    threads = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    for c in conns:
        c.close()
    rec.window_end = math.inf  # every scheduled request counts, however late it completes
    last_sent = start
    for out in outcomes:
        for o in out:
            last_sent = max(last_sent, o.sent)
            if o.error is not None:
                rec.error(o.error, o.done, o.kind, o.due)
            else:
                rec.ok(o.kind, o.due, o.sent, o.done, o.status, o.n, o.problem)
    rec.late_sends = sum(c[0] for c in late)
    rec.dispatch_late = sum(c[1] for c in late)
    spent = last_sent - start
    rec.dispatch_rate = (total - 1) / spent if spent > 0 else None
    rec.generator_cpu_share = cpu / (end - start) if end > start else None


async def _sample_at(when: float, pid: int | None) -> procstat.TreeSample | None:
    delay = when - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    return procstat.sample(pid) if pid else None


def summarize(
    rec: Recorder,
    *,
    mode: str,
    window_s: float,
    connections: int,
    rate: float | None,
    cpu_s: float | None,
) -> dict[str, Any]:
    n = len(rec.latencies)
    answered = sum(rec.statuses.values())
    return {
        "tool": "sockets" if mode == "fixed-rate" else "aiohttp",
        "mode": mode,
        "connections": connections,
        "target_rate": rate,
        "window_s": window_s,
        "requests": n,
        "rps": n / window_s if window_s > 0 else 0.0,
        "latency_ms": latency_summary(rec.latencies),
        "service_ms": latency_summary(rec.service),
        "by_kind": {
            k: {"requests": len(v), "latency_ms": latency_summary(v)}
            for k, v in sorted(rec.by_kind.items())
        },
        "statuses": {str(k): v for k, v in sorted(rec.statuses.items())},
        "errors": rec.errors,
        "bytes": rec.bytes,
        "bytes_per_response": round(rec.bytes / answered, 1) if answered else None,
        "late_sends": rec.late_sends,
        "dispatch_late": rec.dispatch_late,
        "dispatch_rate": rec.dispatch_rate,
        # fixed rate: the generator itself could not keep the schedule, so the latencies
        # measure the generator as much as the server
        "generator_cpu_share": None
        if rec.generator_cpu_share is None
        else round(rec.generator_cpu_share, 3),
        "generator_saturated": rate is not None
        and (
            rec.dispatch_late > 0.05 * max(1, n)
            or (rec.generator_cpu_share or 0.0) >= SATURATED_CPU_SHARE
        ),
        "server_cpu_s": cpu_s,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    lines = read_lines(args.requests)
    reqs = _prepare(args.url.rstrip("/"), lines)
    connector = aiohttp.TCPConnector(limit=args.connections, limit_per_host=args.connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),  # as wrk: see _encode
    ) as session:
        index = 0
        if args.warmup > 0:
            deadline = time.perf_counter() + args.warmup
            index = await closed_loop(session, reqs, args.connections, deadline, None)
        rec = Recorder()
        pid: int | None = args.server_pid
        before = procstat.sample(pid) if pid else None
        t0 = time.perf_counter()
        after: procstat.TreeSample | None = None
        if args.rate:
            await asyncio.to_thread(
                fixed_rate,
                args.url,
                reqs,
                args.connections,
                args.duration,
                args.rate,
                rec,
                index,
                args.timeout,
            )
            mode = "fixed-rate"
            window = time.perf_counter() - t0
            after = procstat.sample(pid) if pid else None
        else:
            deadline = t0 + args.duration
            sampler = asyncio.create_task(_sample_at(deadline, pid))
            await closed_loop(session, reqs, args.connections, deadline, rec, index)
            mode = "closed"
            window = args.duration
            # sampled at the deadline, like the responses counted: requests still in flight
            # then are left out of both
            after = await sampler
    cpu = procstat.cpu_delta(before, after) if before and after else None
    return summarize(
        rec,
        mode=mode,
        window_s=window,
        connections=args.connections,
        rate=args.rate,
        cpu_s=cpu,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--requests", type=Path, required=True, help="request list file")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=0.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=float, default=None, help="fixed rate (requests/s)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--server-pid", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
