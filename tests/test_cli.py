"""The ``vastserver`` command as a user runs it: real processes, real sockets."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_CATALOG, ROOT, make_settings
from vastserver.catalog.load import load_catalog
from vastserver.cli import YOUNG_S, _bind

SECRET = "cli-test-secret-0123456789"
CHECKOUT_EVENTS = ROOT / "var" / "events"  # the server's default event-log directory


def free_port() -> int:
    """A port nothing listened on a moment ago (for a connection that must fail); a server
    under test binds port 0 instead: see :class:`Server`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTSERVER_")}
    env.update(
        VASTSERVER_SECRET=SECRET,
        VASTSERVER_ADMIN_TOKEN="cli-admin-token-0123456789",
        VASTSERVER_DRAIN_MS="200",
        # the default directory is the checkout's var/events: a test that wants an event log
        # passes its own (--event-log DIR)
        VASTSERVER_EVENT_LOG_DIR="off",
    )
    env.update(extra)
    return env


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _is_listening(line: str) -> bool:
    return '"event":"listening"' in line


LISTENING_LIMIT_S = 60.0
"""Longest wait for a server's ``listening`` line (settings and bundle checks come first)."""


class Server:
    """``vastserver serve`` in a process of its own, on ``--port 0`` unless ``args`` give a
    port: it binds a free port the system picks and names it in its ``listening`` log line,
    read when :attr:`port` is first asked for. A port picked here and bound by the server
    later could be taken in between (by a parallel job, or by an outgoing connection of this
    run: ephemeral ports come from the same range), failing a test for no defect.

    A test that reads the server's output itself reads what follows that line: the lines
    up to it are in :meth:`head`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        given = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--port"]
        self._port = (int(given[-1]) if given else 0) or None  # 0: the one it logs it got
        port_args = () if given else ("--port", "0")
        cmd = [sys.executable, "-m", "vastserver", "serve", *port_args, *args]
        self.proc = subprocess.Popen(
            cmd,
            env=env or _env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group: the tests can pause it whole
        )
        self._head: _Output | None = None

    def head(self, limit_s: float = LISTENING_LIMIT_S) -> list[str]:
        """The output lines up to and including ``listening`` (waited for up to ``limit_s``;
        an AssertionError, with the output, when the server exits without it)."""
        if self._head is None:
            self._head = _Output(self.proc, until=_is_listening)
        out = self._head
        out.wait_for(lambda lines: out.closed or any(map(_is_listening, lines)), limit_s)
        assert any(map(_is_listening, out.lines)), "no listening line: " + "".join(out.lines)
        return out.lines

    def listening(self) -> dict[str, Any]:
        """The server's ``listening`` log line: its ports as bound."""
        (line,) = [json.loads(x) for x in self.head() if _is_listening(x)]
        return line

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = int(self.listening()["port"])
        return self._port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_ports(self) -> list[int]:
        """Each worker's metrics port (worker i's at index i), from the ``listening`` line."""
        return [int(p) for p in self.listening()["metrics_ports"]]

    def output(self) -> str:
        """All the server wrote, once it has closed its output (stopped)."""
        assert self.proc.stdout is not None
        head = "".join(self._head.finish()) if self._head is not None else ""
        return head + self.proc.stdout.read().decode()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early: {self.output()}")
            try:
                if _get(self.base + "/readyz", 0.5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the server's whole process group: killing the parent alone would leave
        its workers running, orphaned, after a failed test."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class _Output:
    """A process's output lines, read by a thread as they come: a test can wait for a line
    with a deadline instead of sleeping for a time that a loaded machine may overrun."""

    def __init__(
        self, proc: subprocess.Popen[bytes], until: Callable[[str], bool] | None = None
    ) -> None:
        """With ``until``, reading stops after the first line it is true of: what follows
        stays in the process's pipe, for another reader."""
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._until = until
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in iter(self._stdout.readline, b""):
            line = raw.decode()
            self.lines.append(line)
            if self._until is not None and self._until(line):
                return

    @property
    def closed(self) -> bool:
        """Whether reading has ended: the output closed, or the ``until`` line came."""
        return not self._thread.is_alive()

    def wait_for(self, done: Callable[[list[str]], bool], limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not done(list(self.lines)):
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def finish(self, limit_s: float = 15.0) -> list[str]:
        """Every line, once the process has closed its output."""
        self._thread.join(limit_s)
        assert not self._thread.is_alive(), "the output is still open"
        return self.lines


@pytest.fixture
def server_factory() -> Iterator[Any]:
    servers: list[Server] = []
    # segments already there (a development checkout keeps its old ones): a pid the system
    # gave again to a test server would match an old segment's name
    before = set(CHECKOUT_EVENTS.glob("events-*"))

    def make(*args: str, env: dict[str, str] | None = None) -> Server:
        s = Server(*args, env=env)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.kill()  # the group: workers too, even when the parent is already gone
    # none of them wrote its event log into the checkout (segment names carry the pid)
    leaked = [
        p
        for s in servers
        for p in CHECKOUT_EVENTS.glob(f"events-*-{s.proc.pid}-*")
        if p not in before
    ]
    assert not leaked, f"a test server wrote into the checkout: {leaked}"


def test_serve_two_workers_and_clean_shutdown(server_factory: Any, redis_url: str) -> None:
    srv = server_factory("--workers", "2", "--redis", redis_url, "--event-log", "off")
    srv.wait_ready()
    for _ in range(20):
        status, body = _get(srv.base + "/vast?pod_duration=60")
        assert status == 200 and body.startswith(b"<?xml")
    assert _get(srv.base + "/vast?pod_duration=abc")[0] == 400
    pids = subprocess.run(
        ["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(pids) == 2, "expected two worker processes"

    # A beacon replayed over fresh connections may reach either worker (both accept on the
    # one socket); the impression still counts once, in the store they share.
    _, body = _get(srv.base + "/vast?pod_duration=30&max_ads=1&device_id=two-workers-1")
    imp = re.search(rb"<Impression[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", body)
    assert imp is not None, body[:300]
    for _ in range(30):
        assert _get(imp.group(1).decode())[0] == 204
    req = urllib.request.Request(
        srv.base + "/admin/line-items",
        headers={"Authorization": "Bearer cli-admin-token-0123456789"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        stats = json.loads(r.read())
    assert sum(li["delivered_impressions"] for li in stats) == 1
    assert srv.stop() == 0


def test_a_worker_that_dies_is_replaced(server_factory: Any, redis_url: str) -> None:
    """An OOM kill of one worker must not leave the instance at half capacity with /readyz
    still 200 and nothing logged: the parent logs ``worker_exited`` and starts another,
    which serves; a SIGTERM then stops the server cleanly (exit 0)."""
    launched = time.monotonic()  # before any worker's start
    srv = server_factory(
        "--workers", "2", "--redis", redis_url, "--event-log", "off", "--metrics-port", "0"
    )
    srv.wait_ready()

    def workers() -> set[str]:
        out = subprocess.run(
            ["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return set(out.split())

    deadline = time.monotonic() + 20
    while len(before := workers()) < 2:
        assert time.monotonic() < deadline, before
        time.sleep(0.1)
    victim = sorted(before)[0]
    os.kill(int(victim), signal.SIGKILL)
    # it surely died young (within YOUNG_S of its start) when killed that soon after launch;
    # a loaded machine can take longer to get here, and then it may not have
    surely_young = time.monotonic() - launched < YOUNG_S
    deadline = time.monotonic() + 30
    while True:
        now = workers()
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    replacement = (now - before).pop()
    deadline = time.monotonic() + 30
    for port in srv.metrics_ports:  # each worker's own port: the new one's once it is up
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, port
    # every connection is served, by either worker
    for i in range(20):
        assert _get(srv.base + f"/vast?pod_duration=30&device_id=r{i}")[0] == 200
    assert srv.stop() == 0
    lines = [json.loads(x) for x in srv.output().splitlines() if x]
    exited = [x for x in lines if x["event"] == "worker_exited"]
    assert len(exited) == 1 and exited[0]["pid"] == int(victim)
    # died young: started again after a second; else at once
    assert exited[0]["code"] == -signal.SIGKILL
    assert exited[0]["restart_in_s"] in ((1.0,) if surely_young else (0.0, 1.0)), exited
    accepting = {x["pid"] for x in lines if x["event"] == "accepting"}
    assert int(replacement) in accepting


def test_serve_refuses_workers_without_a_shared_store() -> None:
    """Forked workers cannot share the in-memory store: without Redis each would count caps,
    budgets and beacon replays on its own, so ``--workers 2`` alone is a settings error."""
    r = subprocess.run(
        [sys.executable, "-m", "vastserver", "serve", "--port", "0", "--workers", "2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "VASTSERVER_WORKERS" in r.stderr and "VASTSERVER_REDIS_URL" in r.stderr, r.stderr


def test_sighup_reloads_catalog_and_keeps_old_on_error(server_factory: Any, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    shutil.copy(DEMO_CATALOG, catalog)
    srv = server_factory("--catalog", str(catalog))
    srv.wait_ready()
    v1 = json.loads(_get(srv.base + "/readyz")[1])["catalog"]["version"]

    data = json.loads(catalog.read_text())
    data["version"] = "reloaded-2"
    catalog.write_text(json.dumps(data))
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    v2 = v1
    while v2 == v1 and time.monotonic() < deadline:
        time.sleep(0.1)
        v2 = json.loads(_get(srv.base + "/readyz")[1])["catalog"]["version"]
    assert v2.startswith("reloaded-2+")

    catalog.write_text('{"version": "broken", "line_items": [{"id": 1}]}')
    srv.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert srv.proc.poll() is None
    assert json.loads(_get(srv.base + "/readyz")[1])["catalog"]["version"] == v2
    assert _get(srv.base + "/vast")[0] == 200
    assert srv.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_sighup_during_start_up_reloads_once_started(
    server_factory: Any, redis_url: str, workers: int, sig: signal.Signals
) -> None:
    """An operator's SIGHUP can reach the server while it is still loading its catalog (a
    deploy tool that reloads right after starting, a 100k catalog that takes 20 s). Its
    default action kills the process; the server notes it instead and reloads once up.
    The same for SIGUSR1 (the model alone) and SIGUSR2 (the catalog alone), which a worker's
    admin model and catalog reloads send."""
    extra = ("--workers", "2", "--redis", redis_url) if workers == 2 else ()
    srv = server_factory("--event-log", "off", *extra)
    lines = list(srv.head())
    # "listening" is logged before the catalog and the model are loaded (by each worker).
    srv.proc.send_signal(sig)
    out = _Output(srv.proc)
    srv.wait_ready()
    assert _get(srv.base + "/vast?pod_duration=60")[0] == 200
    assert srv.proc.poll() is None

    def count(event: str, got: list[str]) -> int:
        return sum(f'"event":"{event}"' in line for line in lines + got)

    reloads = 0 if sig == signal.SIGUSR1 else workers
    models = workers if sig == signal.SIGUSR2 else 2 * workers
    # the reload runs in the background once the server is up: wait for what it logs (a
    # model loaded at start, then once more for a signal that reloads it), then that
    # nothing more came
    out.wait_for(lambda got: count("model_loaded", got) >= models, 60)
    out.wait_for(lambda got: count("catalog_reload", got) >= reloads, 60)
    assert srv.stop() == 0
    lines += out.finish()
    assert count("catalog_reload", []) == reloads, lines
    assert count("model_loaded", []) == models, lines


CHILD_LAUNCH = """
import signal, sys, types
sys.argv = ["vastserver", "serve", "--port", "0"]
fake = types.ModuleType("vastserver.cli")  # what serve would import, reduced to a report
def main():
    held = [signal.getsignal(s).__name__ for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)]
    print(held, "aiohttp" in sys.modules)
    return 0
fake.main = main
sys.modules["vastserver.cli"] = fake
from vastserver.launch import main as launch
raise SystemExit(launch())
"""


def test_the_reload_signals_are_held_before_the_heavy_imports() -> None:
    """``serve`` held the reload signals once it had imported the CLI and the server (1-2 s
    on a small machine): a SIGHUP in that window killed it (exit 129, no log line). The
    command's entry point now holds them before importing anything else."""
    got = subprocess.run(
        [sys.executable, "-c", CHILD_LAUNCH], capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "['_note_signal', '_note_signal', '_note_signal'] False"
    script = Path(sys.executable).with_name("vastserver")
    if script.exists():  # the installed command goes through the same entry point
        assert "from vastserver.launch import main" in script.read_text()


def test_invalid_settings_list_every_problem() -> None:
    env = _env(
        VASTSERVER_PUBLIC_URL="ftp://nope",
        VASTSERVER_SECRET="short",
        VASTSERVER_CATALOG="/does/not/exist.json",
    )
    r = subprocess.run(
        [sys.executable, "-m", "vastserver", "serve", "--port", "70000", "--workers", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 2
    # one JSON log line, as every line the server writes, with each problem listed
    (line,) = [json.loads(x) for x in r.stderr.splitlines()]
    assert line["event"] == "settings_invalid" and line["level"] == "error"
    assert line["msg"].startswith("invalid settings: ")
    for name in (
        "VASTSERVER_PUBLIC_URL",
        "VASTSERVER_SECRET",
        "VASTSERVER_CATALOG",
        "port",
        "workers",
    ):
        assert sum(name in p for p in line["problems"]) == 1, line
        assert name in line["msg"]


def test_gen_catalog_command(tmp_path: Path) -> None:
    out = tmp_path / "gen.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vastserver",
            "gen-catalog",
            "--line-items",
            "50",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert len(load_catalog(out).line_items) == 50


def test_unknown_command() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vastserver", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "unknown command" in r.stderr


async def test_gc_maintenance_freezes_on_schedule_and_stops_at_once() -> None:
    import asyncio
    import gc

    from vastserver.cli import gc_maintenance

    loop = asyncio.get_running_loop()

    async def frozen(limit_s: float = 10.0) -> float:
        """Loop time at which a freeze is seen: polled, as a loaded machine's loop runs late
        (a fixed sleep raced the task's own timers)."""
        deadline = loop.time() + limit_s
        while gc.get_freeze_count() == 0:
            assert loop.time() < deadline, f"no gc.freeze() within {limit_s} s"
            await asyncio.sleep(0.005)
        return loop.time()

    gc.unfreeze()
    stop = asyncio.Event()
    t0 = loop.time()
    task = asyncio.create_task(gc_maintenance(stop, at_s=(0.05, 0.1), every_s=0.1))
    try:
        assert await frozen() - t0 >= 0.05  # the first scheduled freeze, not before its time
        gc.unfreeze()
        await frozen()  # and the later ones keep coming
        gc.unfreeze()
        await frozen()  # past the scheduled times too (every_s)
        gc.unfreeze()
        gc.disable()  # a catalog reload building: its runs are skipped, not made
        try:
            await asyncio.sleep(0.35)
            assert gc.get_freeze_count() == 0
        finally:
            gc.enable()
        await frozen()  # and come again once it is done
        stop.set()
        await asyncio.wait_for(task, 1.0)  # returns promptly once stopped
    finally:
        task.cancel()
        gc.unfreeze()


@pytest.mark.parametrize(
    "argv, why",
    [
        (["--days", "inf"], "--days: must be at least 1/24 (an hour) and finite"),
        (["--days", "1e-9"], "--days: must be at least 1/24 (an hour) and finite"),
        (["--days", "nan"], "--days: must be at least 1/24 (an hour) and finite"),
        (["--start", "9999-12-31T23:00:00+00:00"], "--start: out of range (years 1970-2999)"),
        (["--start", "0001-01-01T00:00:00"], "--start: out of range (years 1970-2999)"),
    ],
)
def test_gen_events_refuses_arguments_it_cannot_simulate(
    argv: list[str], why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vastserver.cli import main

    assert main(["gen-events", "--out", str(tmp_path / "ev"), "--seed", "1", *argv]) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_the_port_refuses_connections_until_a_worker_listens() -> None:
    """The port is bound before anything loads (a port in use is a clean start-up error)
    but not listening: until a worker has loaded its catalog, model and state and listens,
    a client is refused at once instead of waiting unanswered in the backlog."""
    sock = _bind(make_settings(port=0))
    try:
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sock.listen(8)  # what the worker's site does once it is up
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        sock.close()


def test_start_up_logs_listening_then_accepting(server_factory: Any) -> None:
    srv = server_factory("--event-log", "off")
    srv.wait_ready()
    assert srv.stop() == 0
    events = [json.loads(line)["event"] for line in srv.output().splitlines()]
    assert events.index("listening") < events.index("accepting") < events.index("stopped")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_taken_while_loading_is_a_clean_start_up_error(workers: int, redis_url: str) -> None:
    """Another process binds a metrics port too (SO_REUSEADDR: two may bind a port that
    neither listens on) and listens on it while the server loads: the worker cannot listen
    there once up and exits 2 with a clear message, not a traceback; with two workers the
    other one stops too and the server exits 2. The server is paused (its process group)
    from the moment it has bound until the other process listens."""
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        first = port - (workers - 1)  # the last worker's metrics port is the busy one
        extra = ("--workers", "2", "--redis", redis_url) if workers == 2 else ()
        srv = Server("--metrics-port", str(first), "--event-log", "off", *extra)
        srv.head()  # the server has bound the port too
        os.killpg(srv.proc.pid, signal.SIGSTOP)
        try:
            busy.listen(1)
        finally:
            os.killpg(srv.proc.pid, signal.SIGCONT)
        # A worker being forked as the group stopped can miss that SIGCONT and stay stopped
        # (seen once: the parent then waited on it for good): continue the group until the
        # server has exited, for a bounded time.
        deadline = time.monotonic() + 30
        while srv.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(srv.proc.pid, signal.SIGCONT)
            time.sleep(0.2)
        if srv.proc.poll() is None:
            srv.kill()
        out = srv.output()
        assert srv.proc.wait(30) == 2, out
    assert f"cannot listen on 127.0.0.1:{port}" in out and "Traceback" not in out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_server_on_a_running_servers_port_is_refused(
    server_factory: Any, workers: int, redis_url: str
) -> None:
    """A second ``serve`` on the port of a running one (a forgotten instance, a typo in a
    deployment) must not bind beside it and take part of its traffic with caps and budgets
    of its own: it exits 2, and every request still reaches the first server."""
    extra = ("--workers", "2", "--redis", redis_url) if workers == 2 else ()
    first = server_factory("--event-log", "off", *extra)
    first.wait_ready()
    second = server_factory("--port", str(first.port), "--event-log", "off", *extra)
    assert second.proc.wait(20) == 2
    out = second.output()
    assert f"cannot listen on 127.0.0.1:{first.port}" in out and "Traceback" not in out
    assert {_get(first.base + "/healthz")[0] for _ in range(20)} == {200}
    assert first.stop() == 0


def test_a_busy_metrics_port_is_a_clean_start_up_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        srv = Server("--metrics-port", str(port))
        out = srv.output()
        assert srv.proc.wait(20) == 2
    assert f"cannot listen on 127.0.0.1:{port} (metrics)" in out and "Traceback" not in out
    lines = [json.loads(x) for x in out.splitlines()]  # JSON lines, the failure too
    (failed,) = [x for x in lines if x["event"] == "listen_failed"]
    assert (failed["host"], failed["port"], failed["listener"]) == ("127.0.0.1", port, "metrics")
    assert failed["level"] == "error" and failed["error"]


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads EOF), failing past ``limit``."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    while sock.recv(4096):  # a response sent before the close is read past
        pass
    return time.monotonic() - t0


def test_idle_and_slow_header_connections_are_closed(server_factory: Any) -> None:
    """``VASTSERVER_KEEPALIVE_S`` bounds how long a connection may sit idle between requests
    and how long a client may take to send a request's head; aiohttp's own default is an
    hour, which lets idle players or a slow-headers client hold descriptors."""
    srv = server_factory("--event-log", "off", env=_env(VASTSERVER_KEEPALIVE_S="1"))
    srv.wait_ready()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # within the timeout the connection still serves
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        assert 0.5 < _closed_after(idle, 5) < 3
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as slow:
        t0 = time.monotonic()
        for chunk in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n"):
            slow.sendall(chunk)  # a head trickled in, never finished
            time.sleep(0.3)
        assert _closed_after(slow, 5) + time.monotonic() - t0 < 3
    assert srv.stop() == 0


def test_keepalive_setting_is_range_checked() -> None:
    from vastserver.settings import SettingsError

    assert make_settings().keepalive_s == 75
    assert make_settings(keepalive_s="600").keepalive_s == 600
    with pytest.raises(SettingsError, match="VASTSERVER_KEEPALIVE_S: must be between 1 and 7200"):
        make_settings(keepalive_s="0")


async def test_redis_pool_size_setting_is_range_checked_and_sizes_the_pool() -> None:
    from vastserver.settings import SettingsError
    from vastserver.store import RedisStore, open_store

    assert make_settings().redis_pool_size == 64
    size = make_settings(redis_pool_size="200").redis_pool_size
    assert size == 200
    for bad in ("0", "10001", "many"):
        with pytest.raises(SettingsError, match=r"VASTSERVER_REDIS_POOL_SIZE: (must be|not an)"):
            make_settings(redis_pool_size=bad)
    store = open_store("redis://127.0.0.1:1/0", redis_pool_size=size)  # no I/O until used
    assert isinstance(store, RedisStore) and store._pool.max_connections == 200
    await store.close()


def test_what_only_loading_finds_wrong_is_a_clean_start_up_error(tmp_path: Path) -> None:
    """A catalog whose contents are invalid (every problem listed), an event-log directory
    that cannot be made: exit 2 with the problem, not a traceback and exit 1."""
    cat = json.loads(DEMO_CATALOG.read_text())
    cat["line_items"][0]["price"] = "a lot"
    cat["line_items"][1]["campaign_id"] = "nope"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cat))
    geo = tmp_path / "geo.csv"
    geo.write_text("nonsense,US\n10.0.0.0/8,US\n11.0.0.0/8,USA\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state = tmp_path / "state.json"
    state.write_text("not json\n")
    for args, env, expected, events in (
        (
            ("--catalog", str(bad)),
            _env(),
            ("2 errors in catalog", ".price", ".campaign_id"),
            ["catalog_invalid"],
        ),
        (  # a bad catalog and a bad geo table: both told at once, every row of each
            ("--catalog", str(bad)),
            _env(VASTSERVER_GEO_DB=str(geo)),
            ("2 errors in catalog", ".price", "2 bad rows in geo table", "geo.csv:1:", ":3:"),
            ["geo_invalid", "catalog_invalid"],
        ),
        (
            ("--event-log", str(blocker / "events")),
            _env(),
            ("cannot start", "a-file/events"),
            ["start_failed"],
        ),
        (
            ("--event-log", "off", "--state-file", str(state)),
            _env(),
            (str(state), "move it away"),
            ["state_file_invalid"],
        ),
    ):
        srv = Server(*args, env=env)
        out = srv.output()
        assert srv.proc.wait(20) == 2, out
        assert all(x in out for x in expected) and "Traceback" not in out, out
        # One JSON object per line, as every other log line: the failure is an event
        # with its message for a human, not plain text.
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        failed = [x for x in lines if x["level"] == "error"]
        assert [x["event"] for x in failed] == events, out
        assert all(x["msg"] for x in failed)
        for x in failed:
            if x["event"] == "catalog_invalid":
                assert len(x["issues"]) == 2 and x["path"] == str(bad), x
                assert any(".price" in i for i in x["issues"]), x


def test_a_serve_usage_error_names_vastserver_serve(capsys: pytest.CaptureFixture[str]) -> None:
    """The usage line came from a wrapper parser: ``usage: vastserver [-h] {serve} ...``."""
    from vastserver.cli import serve

    with pytest.raises(SystemExit) as exc:
        serve(["--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vastserver serve [-h] [--host HOST]")
    assert err.endswith("vastserver serve: error: unrecognized arguments: --bogus\n")


def test_an_unknown_log_level_is_a_settings_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vastserver", "serve", "--help"],
        env=_env(VASTSERVER_LOG_LEVEL="bogus"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [json.loads(x) for x in proc.stderr.splitlines()]
    assert line["event"] == "settings_invalid"
    assert line["problems"][0].startswith("VASTSERVER_LOG_LEVEL: must be one of DEBUG, INFO")


def test_port_zero_puts_the_port_it_got_in_the_tracking_urls() -> None:
    """``--port 0`` lets the system pick; the default public URL said port 0, so every
    tracking URL pointed nowhere."""
    srv = Server("--port", "0", "--event-log", "off")
    try:
        listening = srv.listening()
        port = int(listening["url"].rsplit(":", 1)[1])
        assert port > 0 and listening["public_url"] == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/vast?pod_duration=30")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and f"http://127.0.0.1:{port}/t/impression?".encode() in body
    finally:
        srv.kill()


def _until_up(url: str, limit_s: float = 30.0) -> tuple[int, bytes]:
    """``url``'s answer once its port listens (a worker listens once it has loaded)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return _get(url, timeout=1.0)
        except OSError:
            assert time.monotonic() < deadline, url
            time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_port_zero_and_metrics_port_zero_serve_on_the_ports_the_log_names(
    server_factory: Any, workers: int, redis_url: str
) -> None:
    """Picking a free port and passing it to ``serve`` races anything else that binds in
    between (a parallel job; an outgoing connection, which takes an ephemeral port from the
    same range): ``--port 0`` and ``--metrics-port 0`` bind ports the system picks, and the
    ``listening`` line names them: each worker's metrics port its own, not ``0 + i`` (port
    1 for a second worker); ``--metrics-port 0`` was a settings error."""
    extra = ("--workers", "2", "--redis", redis_url) if workers == 2 else ()
    srv = server_factory("--port", "0", "--metrics-port", "0", "--event-log", "off", *extra)
    listening = srv.listening()
    port, mports = listening["port"], listening["metrics_ports"]
    assert listening["url"] == f"http://127.0.0.1:{port}" and port >= 1024
    assert len(mports) == workers and len({port, *mports}) == workers + 1, listening
    assert all(p >= 1024 for p in mports), mports  # picked by the system, not 0 + i
    assert listening["msg"] == f"listening on http://127.0.0.1:{port}, /metrics on port " + (
        ", ".join(map(str, mports))
    )
    assert listening["level"] == "info" and listening["workers"] == workers
    srv.wait_ready()
    status, body = _get(f"{srv.base}/vast?pod_duration=30")
    assert status == 200 and f"http://127.0.0.1:{port}/t/impression?".encode() in body
    assert _get(f"{srv.base}/metrics")[0] == 404  # only on the metrics ports
    for mport in mports:
        status, text = _until_up(f"http://127.0.0.1:{mport}/metrics")
        assert status == 200 and b"vastserver_requests_total" in text
    assert srv.stop() == 0


def test_the_default_public_url_brackets_an_ipv6_host() -> None:
    assert make_settings(host="::1", public_url=None).public_url == "http://[::1]:8080"
    assert make_settings(host="::", public_url=None).public_url == "http://127.0.0.1:8080"


def test_an_override_no_setting_reads_is_refused() -> None:
    """``simulate --setting separation_break=2`` (for separation_breaks) ran as if applied."""
    from vastserver.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="separation_break: no such setting"):
        load_settings({}, {"separation_break": "2", "separation_breaks": "2"})
    assert load_settings({}, {"separation_breaks": "2"}).separation_breaks == 2


def test_a_catalog_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    from vastserver.settings import SettingsError

    with pytest.raises(SettingsError, match="VASTSERVER_CATALOG: not a regular file"):
        make_settings(catalog=str(tmp_path))
    with pytest.raises(SettingsError, match="VASTSERVER_CATALOG: no such file"):
        make_settings(catalog=str(tmp_path / "nope.json"))


def test_an_admin_reload_reaches_every_worker(
    server_factory: Any, tmp_path: Path, redis_url: str
) -> None:
    """POST /admin/catalog/reload lands on one worker; with --workers 2 the other kept the
    old catalog for good (a line item paused through the API served on; a reviewer found
    it). The worker that reloaded asks the parent to send them all a signal that reloads
    the catalog, and only the catalog: it was SIGHUP, which reloaded the model too in the
    other worker (its model then differed from the answering worker's when the bundle had
    changed, until the model watch ran; for good with the watch off). Now SIGUSR2."""
    catalog = tmp_path / "catalog.json"
    shutil.copy(DEMO_CATALOG, catalog)
    srv = server_factory(
        "--catalog", str(catalog), "--workers", "2", "--redis", redis_url, "--event-log", "off",
        "--metrics-port", "0",
    )  # fmt: skip
    srv.wait_ready()

    def reloads(port: int) -> tuple[float, float]:
        """A worker's catalog reloads and model reloads (``ok``), from its own metrics."""
        status, text = _until_up(f"http://127.0.0.1:{port}/metrics")
        assert status == 200

        def ok(family: bytes) -> float:
            m = re.search(
                rb'^vastserver_%s_reloads_total\{result="ok"\} (\S+)' % family, text, re.M
            )
            return 0.0 if m is None else float(m.group(1))

        return ok(b"catalog"), ok(b"model")

    assert [reloads(port) for port in srv.metrics_ports] == [(0, 0), (0, 0)]
    data = json.loads(catalog.read_text())
    data["version"] = "admin-2"
    catalog.write_text(json.dumps(data))
    req = urllib.request.Request(
        srv.base + "/admin/catalog/reload",
        method="POST",
        headers={"Authorization": "Bearer cli-admin-token-0123456789"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["version"].startswith("admin-2+")
    deadline = time.monotonic() + 15
    while (got := [reloads(port) for port in srv.metrics_ports]) != [(1, 0), (1, 0)]:
        assert time.monotonic() < deadline, got  # each worker reloads its catalog, not its model
        time.sleep(0.1)
    for _ in range(30):  # fresh connections: either worker may accept each
        version = json.loads(_get(srv.base + "/readyz")[1])["catalog"]["version"]
        assert version.startswith("admin-2+"), version
    assert srv.stop() == 0
    lines = [json.loads(x) for x in srv.output().splitlines() if x]
    assert sum(x["event"] == "catalog_reload" for x in lines) == 2, lines
    assert sum(x["event"] == "model_loaded" for x in lines) == 2, lines  # the two at start


def test_an_admin_model_reload_reaches_every_worker(
    server_factory: Any, tmp_path: Path, redis_url: str
) -> None:
    """POST /admin/model/reload lands on one worker; with --workers 2 the other served the old
    model until its model watch noticed the files (never, with the watch off). The worker
    that reloaded asks the parent to send them all SIGUSR1, which reloads the model alone:
    no worker loads the catalog again for it."""
    bundle = tmp_path / "model"
    shutil.copytree(ROOT / "fixtures" / "demo-model", bundle)
    model_file = bundle / "model.ubj"
    saved = model_file.read_bytes()
    model_file.unlink()  # a broken bundle: both workers start on the price scorer
    srv = server_factory(
        "--model", str(bundle), "--workers", "2", "--redis", redis_url, "--event-log", "off",
        "--metrics-port", "0",
        env=_env(VASTSERVER_MODEL_WATCH_S="0"),
    )  # fmt: skip
    srv.wait_ready()

    def scorers(deadline: float) -> list[str]:
        """Each worker's scorer, read from its own metrics port."""
        found = []
        for port in srv.metrics_ports:
            while True:
                try:
                    status, text = _get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)
                    if status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, port
                time.sleep(0.1)
            m = re.search(rb'^vastserver_model_info\{scorer="(\w+)"', text, re.M)
            assert m is not None, text[:500]
            found.append(m.group(1).decode())
        return found

    assert scorers(time.monotonic() + 30) == ["price", "price"]
    model_file.write_bytes(saved)
    req = urllib.request.Request(
        srv.base + "/admin/model/reload",
        method="POST",
        headers={"Authorization": "Bearer cli-admin-token-0123456789"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.loads(r.read())["reloaded"] is True
    answered = time.monotonic()
    # The model watch is off: only the signal can bring the model to the other worker, so a
    # generous bound (a loaded machine) proves as much as a tight one.
    while (now := scorers(answered + 30)) != ["model", "model"]:
        assert time.monotonic() < answered + 30, now
        time.sleep(0.05)
    assert srv.stop() == 0
    lines = [json.loads(x) for x in srv.output().splitlines() if x]
    assert sum(x["event"] == "model_loaded" for x in lines) == 2, lines
    assert not [x for x in lines if x["event"] == "catalog_reload"], lines


@pytest.mark.parametrize(
    ("public_url", "warned"),
    [
        ("http://ads.example.com", True),
        ("http://10.0.0.5:8080", True),
        ("https://ads.example.com", False),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", False),
    ],
)
def test_an_http_public_url_off_loopback_is_warned_about_at_start(
    public_url: str, warned: bool
) -> None:
    """Every tracking and click URL is built on VASTSERVER_PUBLIC_URL: http:// on a real
    host serves plain-http trackers (vastlint warns; players on https pages may block them).
    The server still starts, with one warning line; a loopback URL is development."""
    srv = Server("--event-log", "off", "--public-url", public_url)
    try:
        lines = [json.loads(line) for line in srv.head()]
    finally:
        srv.kill()
    found = [x for x in lines if x["event"] == "insecure_public_url"]
    if warned:
        assert len(found) == 1 and found[0]["level"] == "warning", lines
        assert found[0]["public_url"] == public_url
    else:
        assert not found, lines


COMMANDS = ("serve", "gen-catalog", "gen-events", "train", "report", "simulate", "bench")


class _Parsed(Exception):
    """Stops a command once its parser is built."""


def _parsers(monkeypatch: pytest.MonkeyPatch) -> list[argparse.ArgumentParser]:
    """Every command's parser, as ``vastserver CMD`` builds it (subparsers included)."""
    from vastserver.cli import main

    caught: list[argparse.ArgumentParser] = []

    def grab(self: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        caught.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    for cmd in COMMANDS:
        with pytest.raises(_Parsed):
            main([cmd])
    out: list[argparse.ArgumentParser] = []
    while caught:
        p = caught.pop()
        out.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                caught.extend(a.choices.values())
    return out


def test_every_commands_help_lists_its_options_with_their_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README: every command's --help lists its options with their defaults."""
    from vastserver.cliargs import has_default

    parsers = _parsers(monkeypatch)
    progs = {p.prog for p in parsers}
    assert {f"vastserver {c}" for c in COMMANDS} <= progs, progs
    for p in parsers:
        shown = "".join(p.format_help().split())
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction | argparse._HelpAction):
                continue
            where = (p.prog, a.option_strings or a.dest)
            assert a.help, where  # an option without help gets no line in --help at all
            line = p._get_formatter()._expand_help(a)
            assert "".join(line.split()) in shown, where
            if has_default(a):
                assert "default" in line, where
            if p.prog == "vastserver serve":  # defaults from the settings, said in the help
                assert "default" in line, where


def test_metrics_port_help_says_metrics_leave_the_main_port(
    monkeypatch: pytest.MonkeyPatch, server_factory: Any
) -> None:
    """``--metrics-port``'s help said each worker "also" served /metrics on its own port;
    since then the main port answers 404 for /metrics when one is set (it is public and
    /metrics has no authentication). The help says what the server does."""
    (serve,) = [p for p in _parsers(monkeypatch) if p.prog == "vastserver serve"]
    (action,) = [a for a in serve._actions if a.dest == "metrics_port"]
    text = " ".join(serve._get_formatter()._expand_help(action).split())
    assert "also" not in text
    assert "no longer on the main port" in text, text
    srv = server_factory("--event-log", "off", "--metrics-port", "0")
    srv.wait_ready()
    assert _get(srv.base + "/metrics")[0] == 404
    assert _get(f"http://127.0.0.1:{srv.metrics_ports[0]}/metrics")[0] == 200
    assert srv.stop() == 0


def test_help_shows_the_default_of_an_option_that_did_not_say_it() -> None:
    from vastserver.cliargs import HelpWithDefaults

    p = argparse.ArgumentParser(prog="x", formatter_class=HelpWithDefaults)
    p.add_argument("--rounds", type=int, default=200, help="boosting rounds")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--out", help="output")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--dir", default="/a/very-long-hyphenated-path/" * 3, help="where")
    text = p.format_help()
    assert "boosting rounds (default: 200)" in text
    assert "random seed (default 1)" in text and "(default: 1)" not in text
    assert "output\n" in text and "a flag\n" in text
    assert "/a/very-long-hyphenated-path/" * 3 in text  # a path is not broken at a hyphen


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_docker_image_is_configured_by_environment(tmp_path: Path) -> None:
    """No docker daemon here: the Dockerfile is read. Flags in its ENTRYPOINT/CMD would win
    over ``-e VASTSERVER_HOST/PORT`` (silently ignored), and a health check on a fixed
    port would fail a server moved by ``VASTSERVER_PORT``."""
    import http.server
    import shlex
    import threading

    steps = _dockerfile()
    env: dict[str, str] = {}
    for word, rest in steps:
        if word == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(rest))
    assert env["VASTSERVER_HOST"] == "0.0.0.0" and env["VASTSERVER_PORT"] == "8080"
    argv = [a for w, rest in steps if w in ("ENTRYPOINT", "CMD") for a in json.loads(rest)]
    assert argv[:2] == ["vastserver", "serve"]
    assert not {"--host", "--port"} & set(argv), argv
    (check,) = [rest for w, rest in steps if w == "HEALTHCHECK"]
    command = check.partition(" CMD ")[2]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for port, ok in ((httpd.server_address[1], True), (free_port(), False)):
            run_env = {**os.environ, **env, "VASTSERVER_PORT": str(port)}
            run_env["PATH"] = f"{Path(sys.executable).parent}:{run_env.get('PATH', '')}"
            proc = subprocess.run(["sh", "-c", command], env=run_env, timeout=30, check=False)
            assert (proc.returncode == 0) is ok, (port, command)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serve_reports_a_broken_arm_bundle_as_a_settings_problem(tmp_path: Path) -> None:
    """An arm bundle that does not load would raise in every worker's start (a traceback with
    one worker, endless restarts with several): ``serve`` checks it first and exits 2 with
    it listed among the other settings problems."""
    broken = tmp_path / "empty-bundle"
    broken.mkdir()
    env = {
        **_env(),
        "VASTSERVER_EXPERIMENT": "x",
        "VASTSERVER_ARMS": f"a:50:{broken},price:50",
        "VASTSERVER_ADMIN_TOKEN": "short",
    }
    r = subprocess.run(
        [sys.executable, "-m", "vastserver", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"VASTSERVER_ARMS: arm a: model bundle {broken}" in r.stderr, r.stderr
    assert "VASTSERVER_ADMIN_TOKEN" in r.stderr  # listed with the others


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its adopter has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_workers_stop_when_their_supervisor_is_killed(server_factory: Any, redis_url: str) -> None:
    """A SIGKILL of the supervisor left its workers serving, orphaned: the port stayed taken
    (a restarted server could not bind it) and an admin reload signalled whatever process
    adopted them. Now they stop with it and free the port."""
    srv = server_factory("--workers", "2", "--redis", redis_url, "--event-log", "off")
    srv.wait_ready()
    deadline = time.monotonic() + 20
    while len(workers := subprocess.run(
        ["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()) < 2:  # fmt: skip
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()
    killed = time.monotonic()
    while not all(_gone(int(w)) for w in workers):
        assert time.monotonic() < killed + 5, [w for w in workers if not _gone(int(w))]
        time.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    with socket.socket() as s:  # a restarted server can have it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", srv.port))


def test_an_orphaned_worker_signals_no_one_but_reloads_itself(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An admin reload asked the worker's parent to pass the signal on to every worker: once
    the supervisor was gone that was whatever adopted the worker (init, as root PID 1). It
    now signals the supervisor only while it is still the parent."""
    from types import SimpleNamespace

    from vastserver import app

    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(app.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    rt: Any = SimpleNamespace(settings=SimpleNamespace(workers=2))
    reload = app.SignalReload(signal.SIGUSR1, catalog=False)
    monkeypatch.setattr(app, "SUPERVISOR_PID", os.getppid() + 1)  # not the parent any more
    with caplog.at_level(logging.WARNING, logger="vastserver.http"):
        app._reload_the_other_workers(rt, reload)
    assert sent == [] and not reload.skip
    assert "supervisor_gone" in caplog.text
    monkeypatch.setattr(app, "SUPERVISOR_PID", os.getppid())
    app._reload_the_other_workers(rt, reload)
    assert sent == [(os.getppid(), signal.SIGUSR1)] and reload.skip


def test_checking_arm_bundles_imports_no_xgboost_in_the_supervisor() -> None:
    """``serve`` checks each arm's bundle in a spawned child so that the process that forks
    the workers never initialises xgboost; but the check's module imported xgboost at its
    top, in that very process."""
    code = (
        "import sys\n"
        "from vastserver.settings import load_settings\n"
        "env = {'VASTSERVER_EXPERIMENT': 'x',\n"
        f"       'VASTSERVER_ARMS': 'model:50,c:50:{ROOT / 'fixtures' / 'demo-model'}'}}\n"
        "s = load_settings(env, check_bundles=True)\n"
        "assert s.arms and s.arms[1].bundle is not None, s.arms\n"
        "print('xgboost' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


async def test_gc_sweep_frees_connections_closed_since_an_earlier_freeze(
    make_client: Any,
) -> None:
    """A connection open at a freeze is a frozen reference cycle (the transport and its
    socket): once closed, only a collection over the unfrozen heap frees it."""
    import asyncio
    import gc
    from asyncio.selector_events import _SelectorSocketTransport

    from vastserver.cli import gc_maintenance

    def closed_transports() -> int:
        gc.unfreeze()  # gc.get_objects() skips frozen objects
        return sum(
            1
            for o in gc.get_objects()
            if isinstance(o, _SelectorSocketTransport) and o.is_closing()
        )

    client = await make_client()
    host, port = client.server.host, client.server.port
    gc.collect()
    before = closed_transports()
    writers = []
    for i in range(20):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /healthz?i={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writers.append(writer)
    try:
        gc.collect()
        gc.freeze()  # what a scheduled run does, with these 20 connections open
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        del writer, writers, reader
        await asyncio.sleep(0.2)  # the server sees the EOFs and closes its side
        stop = asyncio.Event()
        task = asyncio.create_task(
            gc_maintenance(stop, at_s=(0.0,), every_s=3600.0, sweep_every_s=0.0)
        )
        await asyncio.sleep(0.1)  # its one run is due at once
        stop.set()
        await asyncio.wait_for(task, 1.0)
        assert closed_transports() <= before  # both sides' 20 transports were freed
    finally:
        gc.unfreeze()


def test_gc_sweep_setting_is_checked() -> None:
    from vastserver.settings import SettingsError, load_settings

    assert make_settings().gc_sweep_s == 3600
    assert load_settings({"VASTSERVER_GC_SWEEP_S": "0"}).gc_sweep_s == 0
    assert load_settings({"VASTSERVER_GC_SWEEP_S": "86400"}).gc_sweep_s == 86400
    for bad in ("300", "-1", "x"):
        with pytest.raises(SettingsError, match="VASTSERVER_GC_SWEEP_S"):
            load_settings({"VASTSERVER_GC_SWEEP_S": bad})


async def test_gc_maintenance_without_a_sweep_never_unfreezes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``VASTSERVER_GC_SWEEP_S=0`` (``sweep_every_s`` None): every run collects and freezes,
    none walks the frozen heap."""
    import asyncio
    import gc

    from vastserver.cli import gc_maintenance

    calls: list[str] = []
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    for sweep, expect_unfreeze in ((None, False), (0.0, True)):
        calls.clear()
        stop = asyncio.Event()
        task = asyncio.create_task(
            gc_maintenance(stop, at_s=(0.0, 0.02), every_s=3600.0, sweep_every_s=sweep)
        )
        await asyncio.sleep(0.15)
        stop.set()
        await asyncio.wait_for(task, 1.0)
        assert calls.count("freeze") == 2, calls
        assert ("unfreeze" in calls) is expect_unfreeze, calls


def test_check_catalog_lists_every_problem_and_exits_by_the_outcome(tmp_path: Path) -> None:
    """``vastserver check-catalog`` validates as ``serve`` and a reload do (an operator checks
    a catalog before an upgrade or a push): exit 0 with the counts, exit 1 with every
    problem, past the 25 a start-up error lists."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vastserver", "check-catalog", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    ok = run(str(DEMO_CATALOG))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"ok: catalog {DEMO_CATALOG}") and "14 line items" in ok.stdout
    cat = json.loads(DEMO_CATALOG.read_text())
    for li in cat["line_items"]:
        li["tier"] = "premium"  # 14 problems
    for cr in cat["creatives"]:
        cr["duration"] = -1  # 14 more
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cat))
    out = run(str(bad))
    assert out.returncode == 1
    assert out.stdout.splitlines()[0] == f"28 errors in catalog {bad}"
    assert sum(".tier:" in ln for ln in out.stdout.splitlines()) == 14
    assert sum(".duration:" in ln for ln in out.stdout.splitlines()) == 14
    # each names its line item or creative by id, after the path and message
    li0 = cat["line_items"][0]["id"]
    assert '  $.line_items[0].tier: "premium" is not one of ' in out.stdout
    assert f'(in line item "{li0}")\n' in out.stdout
    got = json.loads(run(str(bad), "--json").stdout)
    assert got["ok"] is False and len(got["errors"]) == 28
    assert {"path", "message", "id"} == set(got["errors"][0])
    ids = {(e["path"], e["id"]) for e in got["errors"]}
    assert ("$.line_items[0].tier", li0) in ids
    assert ("$.creatives[1].duration", cat["creatives"][1]["id"]) in ids
    cat["version"] = "not a version!"  # in no entity: id null
    bad.write_text(json.dumps(cat))
    got = json.loads(run(str(bad), "--json").stdout)
    assert {"path": "$.version", "id": None}.items() <= got["errors"][0].items(), got
    assert json.loads(run(str(DEMO_CATALOG), "--json").stdout)["line_items"] == 14
    assert run().returncode == 2  # no path: usage
