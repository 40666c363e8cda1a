"""Shared delivery state behind one narrow async interface (see :mod:`.base`).

Importing this package does not import redis: ``RedisStore`` loads when first asked for, so
the pure pipeline can use the value types of :mod:`.base` without pulling in a client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import Guard, Guarded, Incr, Read, Store, StoreUnavailable, Window
from .memory import MAX_KEYS, MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "Guard",
    "Guarded",
    "Incr",
    "MemoryStore",
    "Read",
    "RedisStore",
    "Store",
    "StoreUnavailable",
    "Window",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(name)


def open_store(
    redis_url: str | None,
    *,
    clock: Callable[[], float] = time.time,
    max_keys: int = MAX_KEYS,
) -> Store:
    """``RedisStore`` when a URL is configured (several instances share state), else the
    single-process ``MemoryStore`` (whose expiries follow ``clock``, holding at most
    ``max_keys``). No I/O here: Redis connects on first use."""
    if redis_url:
        from .redis import RedisStore

        return RedisStore(redis_url)
    return MemoryStore(max_keys=max_keys, clock=clock)
