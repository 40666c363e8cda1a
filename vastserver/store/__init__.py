"""Shared delivery state behind one narrow async interface (see :mod:`.base`).

Importing this package does not import redis: ``RedisStore`` loads when first asked for, so
the pure pipeline can use the value types of :mod:`.base` without pulling in a client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import (
    ClaimExpired,
    ClaimHeld,
    Guard,
    Guarded,
    Incr,
    Read,
    Store,
    StorePoolExhausted,
    StoreUnavailable,
    Window,
)
from .memory import MAX_KEYS, MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "ClaimExpired",
    "ClaimHeld",
    "Guard",
    "Guarded",
    "Incr",
    "MemoryStore",
    "Read",
    "RedisStore",
    "Store",
    "StorePoolExhausted",
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
    claim_window_s: int | None = None,
    redis_pool_size: int = 64,
) -> Store:
    """``RedisStore`` when a URL is configured (several instances share state), else the
    single-process ``MemoryStore`` (whose expiries follow ``clock``, holding at most
    ``max_keys``). ``claim_window_s``: how long after its ad was served a beacon claim
    expires (each store's ``claim_window_s``); ``redis_pool_size``: the most connections
    to Redis. No I/O here: Redis connects on first use."""
    if redis_url:
        from .redis import RedisStore

        shared = RedisStore(redis_url, max_connections=redis_pool_size)
        shared.claim_window_s = claim_window_s
        return shared
    local = MemoryStore(max_keys=max_keys, clock=clock)
    local.claim_window_s = claim_window_s
    return local
