"""The fixed-rate generator's own HTTP client (``benchmarks.loadgen.fixed_rate``) against
raw-socket toy servers that answer in the ways an aiohttp test server will not: interim
1xx heads, a 304 that names a length it does not send, keep-alive connections closed while
idle, no answer at all, a stall, and no server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from benchmarks import loadgen

BODY = b'<VAST version="4.2"><Ad id="1"><InLine/></Ad></VAST>'
OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

Answer = Callable[[socket.socket, int], bool]
"""Answers request number n (from 1) on a connection; False closes the connection."""


class ToyServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                _, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.seen += 1
                    n = self.seen
                if not self.answer(c, n):
                    c.close()
                    return
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def toy() -> Iterator[Callable[[Answer], ToyServer]]:
    made: list[ToyServer] = []

    def make(answer: Answer) -> ToyServer:
        made.append(ToyServer(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _run(
    port: int, *, rate: float, duration: float, connections: int, timeout: float = 2.0
) -> dict[str, Any]:
    rec = loadgen.Recorder()
    reqs = [("vast_pod4", f"http://127.0.0.1:{port}/vast?a=1", {})]
    loadgen.fixed_rate(
        f"http://127.0.0.1:{port}", reqs, connections, duration, rate, rec, 0, timeout
    )
    return loadgen.summarize(
        rec, mode="fixed-rate", window_s=duration, connections=connections, rate=rate, cpu_s=None
    )


def test_interim_answers_are_skipped(toy: Callable[[Answer], ToyServer]) -> None:
    """A 103 Early Hints head before the 200 was taken for the answer, and every later
    answer went to the wrong request."""

    def answer(c: socket.socket, n: int) -> bool:
        c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)
        return True

    srv = toy(answer)
    got = _run(srv.port, rate=40.0, duration=0.5, connections=1)
    assert got["statuses"] == {"200": 20} and got["errors"] == {}
    assert got["bytes"] == 20 * len(BODY)


def test_a_304_has_no_body_whatever_length_it_names(toy: Callable[[Answer], ToyServer]) -> None:
    """A 304 carries the representation's Content-Length and no body: reading that many
    bytes waited for the timeout on every request."""

    def answer(c: socket.socket, n: int) -> bool:
        c.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 52\r\n\r\n")
        return True

    srv = toy(answer)
    got = _run(srv.port, rate=40.0, duration=0.5, connections=1)
    assert got["statuses"] == {"304": 20}
    assert got["errors"] == {"empty_vast": 20}  # answered, not timed out
    assert srv.seen == 20


def test_a_keep_alive_connection_closed_while_idle_is_opened_again(
    toy: Callable[[Answer], ToyServer],
) -> None:
    """A server that closes each connection after its answer (as a keep-alive timeout
    does while it is idle): every request is sent on a new connection and answered, none
    is counted as an error the server never saw."""

    def answer(c: socket.socket, n: int) -> bool:
        c.sendall(OK)
        return False  # close without saying so

    srv = toy(answer)
    got = _run(srv.port, rate=20.0, duration=1.0, connections=4)
    assert got["errors"] == {} and got["statuses"] == {"200": 20}
    assert srv.seen == 20


def test_a_server_that_never_answers_ends_the_run(toy: Callable[[Answer], ToyServer]) -> None:
    """Each request has the timeout for its whole answer, and requests due once the window
    and one timeout have passed are not sent: all are counted as failures, and the run
    ends instead of taking (requests / connections) x timeout."""

    def answer(c: socket.socket, n: int) -> bool:
        time.sleep(30)  # never in time
        return True

    srv = toy(answer)
    got = _run(srv.port, rate=20.0, duration=1.0, connections=2, timeout=0.5)
    assert got["requests"] == 20
    assert got["errors"] == {"TimeoutError": 20}
    assert srv.seen < 20  # the ones past the window and the timeout were never sent


def test_no_server_is_counted_not_raised() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    got = _run(port, rate=20.0, duration=0.5, connections=2)
    assert got["requests"] == 10
    assert got["errors"] == {"ConnectionRefusedError": 10}


def test_a_server_stall_is_not_the_generator_falling_behind(
    toy: Callable[[Answer], ToyServer],
) -> None:
    """A stall near the end held connections busy, the last requests went out late, and
    the achieved send rate fell under 95 %: the run was flagged as the generator's fault."""

    def answer(c: socket.socket, n: int) -> bool:
        if n == 80:
            time.sleep(0.6)
        c.sendall(OK)
        return True

    srv = toy(answer)
    got = _run(srv.port, rate=50.0, duration=2.0, connections=8)
    assert got["errors"] == {} and got["requests"] == 100
    assert got["latency_ms"]["max"] >= 500.0  # the stall is charged to the requests
    # the requests queued behind the stall on its connection went out late, and are not
    # the generator's lateness (~2-3 of them: the stall is 20 requests from the end)
    assert got["late_sends"] - got["dispatch_late"] >= 2
    # flagged only for the generator's own lateness or CPU (a busy CI machine can make
    # its threads wake late), never for the stall
    share = got["generator_cpu_share"]
    assert share is not None
    assert got["generator_saturated"] is (got["dispatch_late"] > 5 or share >= 0.85)


def test_requests_ask_for_no_compression() -> None:
    """The server compresses XML for a caller whose Accept-Encoding takes it; the static
    baseline does not, and wrk sends none: neither generator may ask for it, or the server
    would pay for work the baseline never does."""
    wire = loadgen._encode("http://127.0.0.1:1", ("vast", "http://127.0.0.1:1/vast?x=1", {}))
    assert wire.startswith(b"GET /vast?x=1 HTTP/1.1\r\n")
    assert b"accept-encoding" not in wire.lower()
