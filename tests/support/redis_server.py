"""A throwaway ``redis-server`` on loopback for tests, plus pytest fixtures.

* ``redis_server`` (session): one server for the whole run, in a temp dir, no persistence
  (``--save "" --appendonly no``); skipped cleanly when ``redis-server`` is not on PATH.
* ``redis_url`` (function): the server's URL after a ``FLUSHALL``.

Use them from a test module with ``from tests.support.redis_server import redis_server,
redis_url  # noqa: F401`` (or register this module once with ``pytest_plugins`` in the root
``conftest.py``). The process itself is :class:`benchmarks.redisproc.RedisServer`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.redisproc import HOST, RedisServer, command, free_port

__all__ = ["HOST", "RedisServer", "command", "free_port", "redis_server", "redis_url"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH: Redis-backed tests skipped")
    with tempfile.TemporaryDirectory(prefix="vastserver-redis-") as tmp:
        server = RedisServer(exe, Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None:  # a test stopped it and failed before restarting it
        redis_server.start()
    redis_server.flushall()
    return redis_server.url
