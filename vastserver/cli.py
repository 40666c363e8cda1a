"""``vastserver`` command line: ``serve``, ``check-catalog``, ``gen-catalog``..."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from vastserver.cliargs import HelpWithDefaults
from vastserver.logs import configure as configure_logs
from vastserver.logs import event
from vastserver.settings import (
    DEFAULT_CATALOG,
    DEFAULT_EVENT_LOG_DIR,
    DEFAULT_MODEL,
    Settings,
    SettingsError,
    default_public_url,
    load_settings,
)

log = logging.getLogger("vastserver")


def _serve_parser() -> argparse.ArgumentParser:
    # The defaults are the settings' (a flag wins over its environment variable, which
    # wins over the default), so the parser's own are None and the help says them.
    p = argparse.ArgumentParser(
        prog="vastserver serve", description="Run the ad server.", formatter_class=HelpWithDefaults
    )
    p.add_argument("--host", help="bind address (VASTSERVER_HOST, default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help="port; 0: a free one the system picks, named in the start-up 'listening' log line "
        "(VASTSERVER_PORT, default 8080)",
    )
    p.add_argument(
        "--catalog", help=f"catalog JSON (VASTSERVER_CATALOG, default {DEFAULT_CATALOG})"
    )
    p.add_argument(
        "--model",
        help=f"model bundle, or 'off' for price-only scoring (VASTSERVER_MODEL, default "
        f"{DEFAULT_MODEL})",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes accepting on the one port; more than 1 needs --redis "
        "(VASTSERVER_WORKERS, default 1)",
    )
    p.add_argument(
        "--redis",
        help="redis:// URL for shared state (VASTSERVER_REDIS_URL, default none: in-memory)",
    )
    p.add_argument(
        "--public-url",
        dest="public_url",
        help="absolute base of the URLs we emit (VASTSERVER_PUBLIC_URL, default "
        "http://<host>:<port>)",
    )
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="worker i serves /metrics alone on this port + i, and no longer on the main port; "
        "0: each worker on a free port of its own, named in the 'listening' log line "
        "(VASTSERVER_METRICS_PORT, default none)",
    )
    p.add_argument(
        "--event-log",
        dest="event_log",
        help="event log directory, or 'off' (VASTSERVER_EVENT_LOG_DIR, default "
        f"{DEFAULT_EVENT_LOG_DIR})",
    )
    p.add_argument(
        "--state-file",
        dest="state_file",
        help="keep the in-memory store's caps, budgets and beacon claims in this file across "
        "restarts, or 'off' (VASTSERVER_STATE_FILE, default off)",
    )
    return p


BACKLOG = 1024
"""Connections the kernel queues for a worker that has not accepted them yet."""


def _bind(settings: Settings, port: int | None = None) -> socket.socket:
    """The server socket: the main port, or with ``port`` a worker's own metrics port.
    Bound here, before any worker starts, so a port in use is a clean start-up error; but
    not listening: a worker listens once its catalog, model and state are loaded (seconds
    for a large state file), so until then a connection is refused at once (a load balancer
    tries another instance) instead of waiting unanswered in the backlog.

    The workers are forked with this one socket and all accept on it, so no SO_REUSEPORT:
    that would only let *another* server bind the same port and silently take part of its
    traffic, with its own memory of caps and budgets."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port if port is None else port))
    sock.set_inheritable(True)
    return sock


def _run_worker(
    settings: Settings, sock: socket.socket, metrics_sock: socket.socket | None = None
) -> None:
    from jinja2 import TemplateError

    from vastserver.app import STATE_SAVE_FAILED, StartupErrors, create_app
    from vastserver.catalog.load import CatalogError
    from vastserver.geo import GeoError
    from vastserver.store.statefile import StateFileError

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        app = create_app(settings)
    except (StateFileError, StartupErrors, CatalogError, GeoError, OSError, TemplateError) as e:
        # What the settings name but only loading finds wrong: the state file, the catalog's
        # contents, the geo database's rows, an event-log directory that cannot be made, the
        # templates.
        for error in e.errors if isinstance(e, StartupErrors) else [e]:
            _load_failed(settings, error)
        sys.exit(2)
    # Everything loaded at start-up is long-lived: keep it out of the GC's generations.
    gc.collect()
    gc.freeze()
    status = asyncio.run(_serve_until_signal(app, sock, settings, metrics_sock))
    if app.get(STATE_SAVE_FAILED):
        print(
            f"{settings.state_file}: the last state save failed; it holds the state of the "
            "save before (see the state_save_failed log line)",
            file=sys.stderr,
        )
        sys.exit(status or 1)
    if status:
        sys.exit(status)


async def _serve_until_signal(
    app: web.Application,
    sock: socket.socket,
    settings: Settings,
    metrics_sock: socket.socket | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully: /readyz turns false at once (so a
    load balancer stops sending), the listener closes after ``drain`` seconds, in-flight
    requests finish, and the cleanup contexts flush the event log and close the store.
    Returns the exit status: 2 when a port could not be listened on, else 0."""
    from vastserver.app import RUNTIME, metrics_app

    # aiohttp keeps an idle connection for an hour by default: a fleet of players that each
    # leave one open would hold a descriptor apiece. The same timer closes a connection
    # whose request head is still incomplete (slow headers).
    keepalive = float(settings.keepalive_s)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=max(SHUTDOWN_TIMEOUT_S, settings.deadline_ms / 1000 + 1),
        keepalive_timeout=keepalive,
    )
    await runner.setup()
    side: web.AppRunner | None = None
    if metrics_sock is not None:
        # The workers share the main port, so a scrape there reaches one of them at random:
        # each worker answers /metrics on a port of its own (the main port then does not).
        side = web.AppRunner(
            metrics_app(app), access_log=None, handle_signals=False, keepalive_timeout=keepalive
        )
        await side.setup()
    listening = sock
    try:  # listens: connections were refused until now
        await web.SockSite(runner, sock, backlog=BACKLOG).start()
        if side is not None and metrics_sock is not None:
            listening = metrics_sock
            await web.SockSite(side, metrics_sock, backlog=BACKLOG).start()
    except OSError as e:
        # Bound at start, but another process listened there first (SO_REUSEADDR lets two
        # sockets bind a port that neither listens on yet).
        host, port = listening.getsockname()[:2]
        _listen_failed(host, port, e, metrics=listening is metrics_sock)
        await runner.cleanup()
        if side is not None:
            await side.cleanup()
        return 2
    event(log, "accepting", pid=os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gc_task = asyncio.create_task(gc_maintenance(stop, sweep_every_s=settings.gc_sweep_s or None))
    await stop.wait()
    gc_task.cancel()
    rt = app[RUNTIME]
    rt.ready = False
    event(log, "draining", seconds=settings.drain_s, in_flight=rt.in_flight)
    await asyncio.sleep(settings.drain_s)
    # The listener closes first; connections accepted until then get SHUTDOWN_SETTLE_S to
    # send their request before every connection is told to close: from then on aiohttp
    # drops what arrives, and a request that came just after (aiohttp#2298) would wait for
    # the shutdown timeout unanswered.
    for site in list(runner.sites):
        await site.stop()
    await asyncio.sleep(SHUTDOWN_SETTLE_S)
    await runner.cleanup()
    if side is not None:
        await side.cleanup()
    event(log, "stopped")
    return 0


SHUTDOWN_SETTLE_S = 1.0
"""After the listener closes, how long connections it accepted have to send their request."""
SHUTDOWN_TIMEOUT_S = 5.0
"""Then how long in-flight requests have to finish (longer with a ``DEADLINE_MS`` over 4 s:
that plus 1 s): a connection still sending is closed after it, so the state file is saved
within a short termination grace period (Kubernetes': 30 s)."""
GC_FREEZE_AT_S = (10.0, 30.0, 60.0, 120.0, 300.0)
GC_FREEZE_EVERY_S = 600.0
GC_SWEEP_EVERY_S = 3600.0


async def gc_maintenance(
    stop: asyncio.Event,
    at_s: Sequence[float] = GC_FREEZE_AT_S,
    every_s: float = GC_FREEZE_EVERY_S,
    sweep_every_s: float | None = GC_SWEEP_EVERY_S,
) -> None:
    """Keep long-lived objects out of the cyclic collector's way.

    A full collection traverses every tracked object; once traffic has warmed the caches
    (fragments, scores, counter keys, tokens) they hold hundreds of thousands, and each full
    collection paused serving for 20-40 ms at 10k line items (the p99 at half load). So at
    the given times after start and then every ``every_s``: one full collection (no cyclic
    garbage gets frozen), then ``gc.freeze()``. Frozen objects are still freed by reference
    counting when a cache evicts them, but a cycle frozen while alive is never collected
    once it dies: every connection open at a freeze is one (asyncio's transport and its
    socket refer to each other), ~1 KB each. So a run at least ``sweep_every_s`` after the
    last sweep unfreezes first: its full collection also walks the frozen heap and frees
    those (one longer pause, logged as ``gc_sweep``: measured ~150 ms with a warm 10k
    line-item catalog, ~250k objects, and ~1 s at 100k, 1.7M objects, on 2 shared CPUs).
    ``sweep_every_s`` None never sweeps (``VASTSERVER_GC_SWEEP_S=0``: no such pause, and
    those connections stay in memory). A run due while the collector is paused (a catalog
    reload building) is skipped."""
    loop = asyncio.get_running_loop()
    start = last_sweep = loop.time()
    times = list(at_s)
    while not stop.is_set():
        due = times.pop(0) if times else None
        wait = (start + due - loop.time()) if due is not None else every_s
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, wait))
            return
        except TimeoutError:
            pass
        if not gc.isenabled():
            # a catalog reload is building with the collector paused: a collection now would
            # walk everything it built so far (seconds at 100k line items, with the loop
            # stopped), and the reload freezes what it built when it is done
            continue
        if sweep_every_s is not None and loop.time() - last_sweep >= sweep_every_s:
            last_sweep = loop.time()
            t0 = time.perf_counter()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            event(log, "gc_sweep", ms=round((time.perf_counter() - t0) * 1000, 1), freed=freed)
        else:
            gc.collect()
            gc.freeze()


def insecure_public_url(url: str) -> bool:
    """Whether the public URL is ``http://`` on a host other than loopback: every tracking
    and click URL we emit would be plain http (vastlint warns on them; a player on an https
    page may block them), which is for development only."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return True


def _settings_invalid(problems: list[str]) -> None:
    """Start-up refused for its settings: one JSON log line listing every problem, with a
    message for a human (exit status 2, the caller's)."""
    event(
        log,
        "settings_invalid",
        logging.ERROR,
        problems=problems,
        msg="invalid settings: " + "; ".join(problems),
    )


def _load_failed(settings: Settings, e: Exception) -> None:
    """A file the settings name that loading found wrong, as one JSON log line with a
    message for a human (exit status 2, the caller's): ``catalog_invalid`` (with every
    issue), ``geo_invalid``, ``state_file_invalid`` (``state_file_in_use`` when another
    server holds it), ``templates_invalid``, else ``start_failed``."""
    from jinja2 import TemplateError

    from vastserver.catalog.load import CatalogError
    from vastserver.geo import GeoError
    from vastserver.store.statefile import StateFileError

    fields: dict[str, Any] = {"error": str(e)}
    if isinstance(e, StateFileError):
        hint = (
            "stop the other server, or give this one another --state-file"
            if e.in_use
            else "move it away to start with empty state"
        )
        name = "state_file_in_use" if e.in_use else "state_file_invalid"
        event(
            log, name, logging.ERROR, path=str(settings.state_file), **fields, msg=f"{e} ({hint})"
        )
        return
    if isinstance(e, CatalogError):
        name = "catalog_invalid"
        fields = {"path": e.source, "issues": [str(issue) for issue in e.errors]}
    elif isinstance(e, GeoError):
        name = "geo_invalid"
        fields["path"] = str(settings.geo_path)
    elif isinstance(e, TemplateError):
        name = "templates_invalid"
    else:
        name = "start_failed"
        fields["error_type"] = type(e).__name__
    what = "templates" if isinstance(e, TemplateError) else type(e).__name__
    event(log, name, logging.ERROR, **fields, msg=f"cannot start: {what}: {e}")


def _listen_failed(host: str, port: int, e: OSError, *, metrics: bool = False) -> None:
    """A port that cannot be bound or listened on, as a JSON log line (exit status 2)."""
    what = " (metrics)" if metrics else ""
    event(
        log,
        "listen_failed",
        logging.ERROR,
        host=host,
        port=port,
        listener="metrics" if metrics else "main",
        error=str(e),
        msg=f"cannot listen on {host}:{port}{what}: {e}",
    )


def serve(argv: Sequence[str]) -> int:
    args = _serve_parser().parse_args(list(argv))  # usage errors name `vastserver serve`
    from vastserver.signals import hold_sighup

    # a reload signal during start-up reloads once started; its default kills (installed
    # first by vastserver.launch, before the imports: keep what it noted)
    hold_sighup(keep_noted=True)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = load_settings(os.environ, overrides, check_bundles=True)
    except SettingsError as e:
        _settings_invalid(e.problems)
        return 2
    try:
        sock = _bind(settings)
    except OSError as e:
        _listen_failed(settings.host, settings.port, e)
        return 2
    if settings.port == 0 and settings.public_url == default_public_url(settings.host, 0):
        # the tracking URLs must name the port the system picked, not port 0
        bound = sock.getsockname()[1]
        settings = replace(settings, public_url=default_public_url(settings.host, bound))
    metrics_socks: list[socket.socket | None] = [None] * settings.workers
    if settings.metrics_port is not None:
        for i in range(settings.workers):
            # 0: each worker's own port is the system's pick (a worker started again in
            # its place gets the same socket, so the port it is scraped on stays)
            port = settings.metrics_port + i if settings.metrics_port else 0
            try:
                metrics_socks[i] = _bind(settings, port)
            except OSError as e:
                _listen_failed(settings.host, port, e, metrics=True)
                return 2
    if insecure_public_url(settings.public_url):
        event(
            log,
            "insecure_public_url",
            logging.WARNING,
            public_url=settings.public_url,
            detail="tracking and click URLs are http:// on a host that is not loopback: "
            "players on https pages may block them, and beacons travel in the clear; "
            "set VASTSERVER_PUBLIC_URL to an https:// URL",
        )
    _log_listening(settings, sock, metrics_socks)
    if settings.workers == 1:
        _run_worker(settings, sock, metrics_socks[0])
        return 0
    return _supervise(settings, sock, metrics_socks)


def _log_listening(
    settings: Settings, sock: socket.socket, metrics_socks: Sequence[socket.socket | None]
) -> None:
    """The ``listening`` log line, once every port is bound and before any worker loads:
    the ports as bound, so with port 0 (``--port 0``, ``--metrics-port 0``) the ones the
    system picked. ``port`` and ``url`` are the main socket's; with a metrics port,
    ``metrics_ports`` lists worker ``i``'s at index ``i``. A supervisor (or a test) that
    starts the server on port 0 reads its ports here: none can be taken by another process
    between a pick and the bind."""
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{port}"
    fields: dict[str, Any] = {"url": url, "port": port}
    msg = f"listening on {url}"
    if settings.metrics_port is not None:
        ports = [s.getsockname()[1] for s in metrics_socks if s is not None]
        fields["metrics_ports"] = ports
        msg += ", /metrics on port " + ", ".join(map(str, ports))
    event(
        log,
        "listening",
        **fields,
        public_url=settings.public_url,
        workers=settings.workers,
        msg=msg,
    )


_FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2}


PR_SET_PDEATHSIG = 1
"""``prctl(2)`` option: the signal this process gets when its parent dies (Linux)."""


def _die_with(supervisor: int) -> bool:
    """Have the kernel send this worker SIGTERM when ``supervisor``, its parent, dies (a
    SIGKILL, an OOM kill): orphaned workers would serve on unsupervised, holding the port a
    restarted server needs. False when it is already gone (it died before the call). Where
    ``prctl`` is missing (not Linux), the worker only checks its parent on an admin reload."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass
        else:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == supervisor


def _worker_process(
    settings: Settings,
    sock: socket.socket,
    metrics_sock: socket.socket | None,
    supervisor: int,
) -> None:
    """A forked worker, with the signal dispositions of a fresh start (SIGTERM and SIGINT
    stop it while it loads, without a traceback; a SIGHUP, SIGUSR1 or SIGUSR2 is held until
    it serves), then unblocked. It stops when ``supervisor`` dies."""
    from vastserver import app
    from vastserver.signals import hold_sighup

    if not _die_with(supervisor):
        return  # the supervisor died while forking it
    app.SUPERVISOR_PID = supervisor
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    hold_sighup()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    _run_worker(settings, sock, metrics_sock)


RESPAWN_MAX_DELAY_S = 30.0
"""A worker that keeps dying young is started again at most this often."""
YOUNG_S = 10.0
"""A worker that dies within this many seconds of its start died young (backoff grows)."""
_STOP_CODES = (0, -signal.SIGTERM, -signal.SIGINT)
"""Exit codes of a worker that stopped as asked (killed by the signal while loading)."""


def _supervise(
    settings: Settings, sock: socket.socket, metrics_socks: list[socket.socket | None]
) -> int:
    """Fork the workers, pass signals on, and replace a worker that dies (an OOM kill, a
    crash) while the others serve on: logged as ``worker_exited``, started again at once, or
    after a growing delay (up to :data:`RESPAWN_MAX_DELAY_S`) when it keeps dying young. A
    worker of the first start that exits 2 could not start (its port, its settings): the
    server is not what was asked for, so the others stop too and the exit status is 2. After
    SIGTERM/SIGINT: 0 when every worker stopped as asked, else 1."""
    from vastserver.signals import RELOAD_SIGNALS, take_early_signals

    ctx = multiprocessing.get_context("fork")
    n = settings.workers
    procs: list[BaseProcess | None] = [None] * n
    started = [0.0] * n
    young = [0] * n
    first = [True] * n
    due: dict[int, float] = {}
    state = {"stopping": False, "status": 0}

    def spawn(i: int) -> None:
        # Signals wait while a worker is forked: the child must not run this parent's
        # handlers (a replacement is forked after they are set), and a SIGTERM must find the
        # new worker in ``procs`` (or find the server stopping, and no worker started).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            if state["stopping"]:
                return
            pr = ctx.Process(
                target=_worker_process, args=(settings, sock, metrics_socks[i], os.getpid())
            )
            pr.start()
            procs[i] = pr
            started[i] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def stop(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and not state["stopping"]:
            state["stopping"] = True
            # the workers hold the sockets too; once they close theirs, connections are
            # refused at once (a load balancer moves on), not queued behind ours
            for s in (sock, *metrics_socks):
                if s is not None:
                    s.close()
        for pr in procs:
            if pr is not None and pr.pid is not None and pr.is_alive():
                os.kill(pr.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(n):
        spawn(i)
    # until every worker exists a SIGHUP (catalog and model), SIGUSR1 (model) or SIGUSR2
    # (catalog) stays held (noted), then it is passed on to all; a worker's admin reload
    # sends one here too
    for sig in RELOAD_SIGNALS:
        signal.signal(sig, stop)
    for sig in take_early_signals():  # came while the workers were being started
        stop(sig, None)
    while True:
        running = [pr for pr in procs if pr is not None]
        if not running and not due:
            return state["status"]
        wait_s = None if not due else max(0.0, min(due.values()) - time.monotonic())
        mp_connection.wait([pr.sentinel for pr in running], wait_s)
        now = time.monotonic()
        for i, pr in enumerate(procs):
            if pr is None or pr.is_alive():
                continue
            pr.join()
            procs[i] = None
            code = pr.exitcode
            if state["stopping"]:
                if code not in _STOP_CODES:
                    state["status"] = max(state["status"], 1)
            elif code == 2 and first[i]:
                state["status"] = 2
                stop(signal.SIGTERM, None)
            else:
                young[i] = young[i] + 1 if now - started[i] < YOUNG_S else 0
                delay = min(RESPAWN_MAX_DELAY_S, 2.0 ** young[i] - 1)
                event(
                    log,
                    "worker_exited",
                    logging.ERROR,
                    pid=pr.pid,
                    code=code,
                    restart_in_s=delay,
                )
                due[i] = now + delay
        if state["stopping"]:
            due.clear()
        for i, t in list(due.items()):
            if t <= now:
                del due[i]
                first[i] = False
                spawn(i)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader of our output went away (`vastserver report --json | head`): stop
        # quietly, and keep Python from complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    level = os.environ.get("VASTSERVER_LOG_LEVEL") or "INFO"
    if level.upper() not in logging.getLevelNamesMapping():
        configure_logs("INFO")  # to say so
        _settings_invalid(
            [f"VASTSERVER_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, got {level[:40]!r}"]
        )
        return 2
    configure_logs(level)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: vastserver {serve,check-catalog,gen-catalog,gen-events,train,report,simulate,"
            "bench} ...\n\n"
            "  serve          run the ad server (vastserver serve --help)\n"
            "  check-catalog  validate a catalog as the server loads it (every problem)\n"
            "  gen-catalog    write a synthetic catalog (vastserver gen-catalog --help)\n"
            "  gen-events     write a synthetic event log from a hidden viewer model\n"
            "  train          train the completion model from event logs\n"
            "  report         delivery per line item from the event log (report --help)\n"
            "  simulate       CTV households against the real server, guarantees checked\n"
            "  bench          throughput and latency against a static baseline"
        )
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        return serve(rest)
    if cmd == "gen-events":
        from vastserver.ml.synth import main_gen_events

        return main_gen_events(rest)
    if cmd == "train":
        from vastserver.ml.train import main_train

        return main_train(rest)
    if cmd == "bench":
        from vastserver.bench import main_bench

        return main_bench(rest)
    if cmd == "simulate":
        from vastserver.sim.cli import main_simulate

        return main_simulate(rest)
    if cmd == "report":
        from vastserver.report import main_report

        return main_report(rest)
    if cmd == "check-catalog":
        from vastserver.catalog.load import main_check_catalog

        return main_check_catalog(rest)
    if cmd == "gen-catalog":
        from vastserver.catalog.gen import main_gen_catalog

        return main_gen_catalog(rest)
    print(f"vastserver: unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
