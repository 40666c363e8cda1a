"""A throwaway ``redis-server`` on loopback: for the benchmark's multi-worker runs (forked
workers share counters only through Redis) and for the tests' fixtures
(``tests/support/redis_server.py``).

No persistence (``--save "" --appendonly no``), data in a directory the caller owns. Talks
RESP over a raw socket, so it needs neither an event loop nor a Redis client.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    # redis-server does not accept port 0: bind an ephemeral port, release it, use it (and
    # retry in start() if someone else grabbed it in between).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command and return the raw first reply line (e.g. ``b"+PONG"``)."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.strip()


def server_pid(port: int, timeout: float = 1.0) -> int | None:
    """The ``process_id`` of the redis-server answering on ``port`` (``INFO server``)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return None
            buf += chunk
        head, _, body = buf.partition(b"\r\n")
        if not head.startswith(b"$"):
            return None
        size = int(head[1:])
        while len(body) < size:
            chunk = s.recv(65536)
            if not chunk:
                return None
            body += chunk
    for line in body[:size].decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class RedisServer:
    """One ``redis-server`` process; ``restart()`` keeps the port (and so the URL)."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"redis://{HOST}:{self.port}/0"

    def start(self, attempts: int = 5) -> None:
        """Start on ``self.port`` (or a fresh free port); retry when the port is taken."""
        assert self.proc is None, "already running"
        fixed = self.port
        last = ""
        for _ in range(attempts):
            port = fixed if fixed is not None else free_port()
            options = {
                "port": str(port),
                "bind": HOST,
                "save": "",
                "appendonly": "no",
                "dir": str(self.workdir),
                "protected-mode": "no",
                "loglevel": "warning",
            }
            argv = [self.executable]
            for name, value in options.items():
                argv += (f"--{name}", value)
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready(proc, port):
                self.proc, self.port = proc, port
                return
            proc.kill()
            _, err = proc.communicate(timeout=5)
            last = err.decode(errors="replace")[-500:]
            time.sleep(0.05)  # a fixed port may still be held by the previous process
        raise RuntimeError(f"redis-server did not start (port {self.port}): {last}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False  # exited, e.g. "Address already in use"
            with contextlib.suppress(OSError, ValueError):
                # PONG from our process: another redis that took the port between
                # free_port() and the bind would answer too (and tests FLUSHALL theirs)
                if command(port, "PING", timeout=0.2) == b"+PONG":
                    if server_pid(port, timeout=0.5) == proc.pid:
                        return True
                    proc.kill()  # not ours; ours cannot bind the port
                    proc.wait(timeout=5)
                    return False
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop, then start again on the same port (all data is lost: no persistence)."""
        self.stop()
        self.start()

    def flushall(self) -> None:
        assert self.port is not None
        reply = command(self.port, "FLUSHALL")
        assert reply == b"+OK", reply
