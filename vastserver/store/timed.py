"""A Store wrapper that reports how long each call takes (for the store latency metric)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .base import Guarded, Incr, Read, Store


class TimedStore:
    def __init__(self, inner: Store, observe: Callable[[str, float], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.local = inner.local
        self._observe = observe

    async def read(self, reads: Sequence[Read], now: float) -> list[int]:
        t = time.perf_counter()
        try:
            return await self.inner.read(reads, now)
        finally:
            self._observe("read", time.perf_counter() - t)

    async def add(self, incrs: Sequence[Incr], now: float) -> None:
        t = time.perf_counter()
        try:
            await self.inner.add(incrs, now)
        finally:
            self._observe("add", time.perf_counter() - t)

    async def commit(self, batch: Sequence[Guarded], now: float) -> list[bool]:
        t = time.perf_counter()
        try:
            return await self.inner.commit(batch, now)
        finally:
            self._observe("commit", time.perf_counter() - t)

    async def claim_and_add(
        self,
        keys: Sequence[str],
        ttl_s: int,
        incrs: Sequence[Incr],
        now: float,
        *,
        served_at: float | None = None,
        unless: str | None = None,
    ) -> list[bool]:
        t = time.perf_counter()
        try:
            return await self.inner.claim_and_add(
                keys, ttl_s, incrs, now, served_at=served_at, unless=unless
            )
        finally:
            self._observe("claim", time.perf_counter() - t)

    async def history(self, key: str) -> list[str]:
        t = time.perf_counter()
        try:
            return await self.inner.history(key)
        finally:
            self._observe("history", time.perf_counter() - t)

    async def push_history(
        self,
        key: str,
        entries: Sequence[str],
        *,
        keep: int,
        ttl_s: int,
        release: tuple[str, str] | None = None,
    ) -> None:
        t = time.perf_counter()
        try:
            if release is None:  # the call as before the argument existed
                await self.inner.push_history(key, entries, keep=keep, ttl_s=ttl_s)
            else:
                await self.inner.push_history(key, entries, keep=keep, ttl_s=ttl_s, release=release)
        finally:
            self._observe("push_history", time.perf_counter() - t)

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        if self.local:  # a dict lookup: observing its latency costs ~3x the call
            return await self.inner.acquire(key, owner, ttl_ms)
        t = time.perf_counter()
        try:
            return await self.inner.acquire(key, owner, ttl_ms)
        finally:
            self._observe("acquire", time.perf_counter() - t)

    async def release(self, key: str, owner: str) -> None:
        if self.local:
            await self.inner.release(key, owner)
            return
        t = time.perf_counter()
        try:
            await self.inner.release(key, owner)
        finally:
            self._observe("release", time.perf_counter() - t)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
