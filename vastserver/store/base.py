"""The one narrow async interface behind which all shared delivery state lives.

Counters (frequency caps, budgets, pacing), dedupe keys (beacons counted once) and short
per-session histories (stream-level separation). Two backends implement it: ``MemoryStore``
(one process, bounded) and ``RedisStore`` (several instances); one contract suite tests both.

Windows. A windowed counter is stored as time buckets of ``bucket_s`` seconds; a read over
``window_s`` sums the buckets that overlap ``[now - window_s, now]``, *including the whole
oldest bucket*, so a read can over-count by up to one bucket but never under-count. Caps
checked against such reads are therefore never exceeded in any true sliding window.
``window_s=None`` is a lifetime counter (a single bucket, no expiry but ``ttl_s``).

Locks. ``acquire``/``release`` give a short-lived exclusive lock on a name (the decisions of
one viewing session take turns: each reads the session's history, decides and writes it back
before the next one reads). A lock expires by itself ``ttl_ms`` after it was taken, so an
owner that died never blocks anyone for longer.

Round trips. ``read`` answers a whole batch in one round trip (Redis: one pipeline/Lua
call); ``commit`` applies a batch of guarded increments atomically per guard group in one
round trip; ``add`` applies unconditional increments in one round trip; ``push_history`` writes
a history and may free a lock in one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

T = TypeVar("T")

# The counter descriptions are NamedTuples, not frozen dataclasses: a decision builds ~100 of
# them, and a frozen dataclass's __init__ (object.__setattr__ per field) costs ~5x a tuple's.


class Window(NamedTuple):
    """How a counter is bucketed and read."""

    window_s: int | None
    """Length of the sliding window in seconds; None = lifetime."""
    bucket_s: int
    """Bucket width; window_s should be a multiple (use ~1/12 of the window or coarser)."""

    @staticmethod
    def lifetime() -> Window:
        return Window(None, 0)


class Read(NamedTuple):
    key: str
    window: Window


class Incr(NamedTuple):
    key: str
    window: Window
    amount: int = 1
    """May be negative (release a reservation), but a bucket never goes below zero: a
    decrement beyond what its bucket holds empties it. A release whose reservation was
    never made (a commit that failed open, a budget added by a reload while the ad was in
    flight) must not leave a negative bucket that would cancel later reservations."""
    at: float | None = None
    """Unix time whose bucket is changed; None = now. Lets a release hit the bucket the
    reservation was made in."""
    ttl_s: int | None = None
    """Expiry of the bucket; default window_s + bucket_s (lifetime: none)."""


class Guard(NamedTuple):
    """Allow a group of increments only while ``read(key) + sum(read(extra)) + amount <= limit``.

    ``extra`` adds other windowed counters to the sum (e.g. a cap's impressions over a day plus
    its short-lived reservations)."""

    key: str
    window: Window
    limit: int
    amount: int = 1
    extra: tuple[Read, ...] = ()


class Guarded(NamedTuple):
    """Atomically: if every guard holds, apply every increment; else apply nothing."""

    guards: tuple[Guard, ...]
    incrs: tuple[Incr, ...]


class StoreUnavailable(Exception):
    """The backend cannot be reached; callers apply their fail-open/closed policy."""


class StorePoolExhausted(StoreUnavailable):
    """Every pooled connection stayed busy for the pool's wait: this process is overloaded
    (the backend may be fine). Handled as :class:`StoreUnavailable`; told apart in the
    metrics and the log."""


class ClaimExpired(Exception):
    """``claim_and_add`` refused a beacon's claims (nothing claimed, nothing counted): its
    token was served while the claim window was shorter than now, and is older than the
    window then allowed, so a claim of that time may have lapsed (see :mod:`.redis`)."""


class ClaimHeld(Exception):
    """``claim_and_add`` refused a call (nothing claimed, nothing counted) because its
    ``unless`` key is claimed: e.g. a beacon of an ad that ``notUsed`` settled as unplayed."""


class Store(Protocol):
    name: str
    local: bool
    """True when no call ever waits on I/O (the in-memory store): a call finishes before any
    timeout around it could fire, so callers may await it directly, without ``wait_for`` or
    ``gather`` (~17-27 µs of event-loop work each)."""

    async def read(self, reads: Sequence[Read], now: float) -> list[int]:
        """Current value of each windowed counter, in order (0 for unknown keys)."""
        ...

    async def add(self, incrs: Sequence[Incr], now: float) -> None:
        """Apply unconditional increments."""
        ...

    async def commit(self, batch: Sequence[Guarded], now: float) -> list[bool]:
        """Apply each guarded group atomically (all or nothing); True where applied.

        Groups are evaluated in order, each seeing the effects of the ones before."""
        ...

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
        """Dedupe: claim each key (True the first time it is claimed within ``ttl_s``, False
        after, and for a repeat within ``keys``) and, when every claim is new, ``add(incrs)``:
        atomically, in one round trip. A failed call has done neither, so a beacon whose count
        failed can be retried and counted; one that got through is never counted twice.

        ``unless``: a claim key (not among ``keys``) that, while claimed, refuses the call
        in the same atomic step: nothing is claimed or counted, and :class:`ClaimHeld` is
        raised. Needs ``keys``.

        ``served_at``: when the beacon's ad was served (its claims expire a fixed window after
        it). A store shared by instances whose claim windows differ may lengthen ``ttl_s``
        to the longest window, or raise :class:`ClaimExpired` (see :mod:`.redis`)."""
        ...

    async def history(self, key: str) -> list[str]:
        """The entries pushed to ``key``, newest first."""
        ...

    async def push_history(
        self,
        key: str,
        entries: Sequence[str],
        *,
        keep: int,
        ttl_s: int,
        release: tuple[str, str] | None = None,
    ) -> None:
        """Prepend entries (the last of ``entries`` ends up newest), keep the newest ``keep``,
        and expire the whole history ``ttl_s`` after the last push.

        ``release``: a lock's ``(key, owner)``, released as :meth:`release` does (only while
        ``owner`` holds it) in the same atomic step and round trip as the push: a session's
        decision writes its break and frees its turn together. A failed call has done neither
        (the caller may release on its own: releasing twice changes nothing)."""
        ...

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take the lock ``key`` for ``owner`` for ``ttl_ms`` milliseconds: True when it was
        free (never taken, released, or expired) or is already ``owner``'s (its expiry is
        then moved to ``ttl_ms`` from now), False while another owner holds it. Locks are a
        namespace of their own (a lock and a counter or history of one name are unrelated)."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Free the lock ``key`` if ``owner`` holds it; otherwise (another owner took it after
        ours expired, or nobody holds it) do nothing."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


async def within(store: Store, call: Awaitable[T], seconds: float | None) -> T:
    """Await ``call`` (work on ``store``) for at most ``seconds`` (``TimeoutError`` past
    it). A local store's call cannot outlast any limit: it is awaited directly.

    Past the limit the call is cancelled and left behind, not awaited: a client library
    may swallow the cancellation (redis-py's asyncio connections wrap each socket write in
    ``asyncio.wait_for``, which on Python 3.11 drops an outer cancel that lands as the write
    completes, and then wait for the reply up to their socket timeout), and ``wait_for``
    here would wait for it. A hung Redis held bursts of requests ~1 s past a 150 ms
    deadline that way."""
    if store.local or seconds is None:
        return await call
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    finally:  # past the limit, or our caller was cancelled: so is the call
        if not task.done():
            task.cancel()
            task.add_done_callback(_retrieve)
    if not done:
        raise TimeoutError(f"store call still running after {seconds:.3f} s")
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take an abandoned call's outcome, so asyncio does not log it as never retrieved
    (its failure was already answered by the timeout)."""
    if not task.cancelled():
        task.exception()
