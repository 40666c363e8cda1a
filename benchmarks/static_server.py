"""The baseline: the same aiohttp stack answering with pre-rendered bytes.

``python -m benchmarks.static_server --port P --workers N --vast FILE --vmap FILE``

* ``GET /vast`` (and ``/decide``): the VAST document in ``--vast`` (the harness saves a real
  4-ad pod there, so the bytes on the wire match);
* ``GET /vmap``: the document in ``--vmap``;
* ``GET /t/{event}``, ``GET /c``: 204 with no body (what a beacon answers);
* ``GET /healthz``, ``GET /readyz``: 200.

Workers are started as ``vastserver serve --workers N`` starts them (one socket
bound by the parent, N forked processes accepting on it; one worker runs in the parent), with
uvloop when it is installed, ``access_log=None``, and the same response headers
(``Content-Type: application/xml; charset=utf-8``, ``Cache-Control: no-store``). Whatever
the real server costs beyond this is the ad server's own work.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

XML = "application/xml; charset=utf-8"


def make_app(vast: bytes, vmap: bytes) -> web.Application:
    async def vast_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=vast, headers={"Content-Type": XML, "Cache-Control": "no-store"})

    async def vmap_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=vmap, headers={"Content-Type": XML, "Cache-Control": "no-store"})

    async def beacon_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def ok_handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ready": True, "static": True})

    app = web.Application()
    app.router.add_get("/vast", vast_handler)
    app.router.add_get("/decide", vast_handler)
    app.router.add_get("/vmap", vmap_handler)
    app.router.add_get("/t/{event}", beacon_handler)
    app.router.add_get("/c", beacon_handler)
    app.router.add_get("/healthz", ok_handler)
    app.router.add_get("/readyz", ok_handler)
    return app


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _run_worker(sock: socket.socket, vast: bytes, vmap: bytes) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(vast, vmap), sock=sock, print=None, access_log=None)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.static_server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--vast", type=Path, required=True, help="pre-rendered VAST document")
    ap.add_argument("--vmap", type=Path, required=True, help="pre-rendered VMAP document")
    args = ap.parse_args(argv)
    vast = args.vast.read_bytes()
    vmap = args.vmap.read_bytes()
    sock = _bind(args.host, args.port)
    if args.workers <= 1:
        _run_worker(sock, vast, vmap)
        return 0
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_run_worker, args=(sock, vast, vmap), daemon=False)
        for _ in range(args.workers)
    ]
    for p in procs:
        p.start()
    sock.close()

    def stop(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
