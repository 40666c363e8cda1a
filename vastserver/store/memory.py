"""``MemoryStore``: the single-process backend (the default), plain dicts, bounded memory.

Every method is ``async`` for the interface but never awaits, so each call is atomic with
respect to other coroutines: no locks are needed and a ``commit`` batch sees exactly the
effects of the groups before it.

Time. Windows are bucketed by the ``now`` the caller passes (as in every backend); *expiry*
(``ttl_s`` of counters, claims and histories) follows the store's own ``clock``, like Redis
expires keys by the server's clock. In production both are ``time.time``; a test that wants
TTLs to follow a fake clock passes ``clock=``.

Layout (all in one ``OrderedDict``, kept in least-recently-touched order):

* windowed counter ``key -> (expiry, bucket, count, bucket, count, ...)``: a flat tuple of
  ints, rebuilt on each write (buckets that left the window are dropped then, and so are
  buckets whose count reached zero; a counter with no buckets left is deleted);
* lifetime counter ``key -> count`` (a plain int) or ``(expiry, 0, count)`` when it has a TTL;
* claim ``"\\x01" + key -> expiry``; history ``"\\x02" + key -> (expiry, (newest, ...))``.
  Counter keys that start with ``\\x00``-``\\x02`` are escaped with a ``\\x00`` prefix, so
  the three kinds never collide (Redis uses separate prefixes for the same reason).

Expiries are whole seconds; recent expiry/bucket ints and single-bucket tuples are interned
(tuples are immutable, and viewers written in the same second mostly hold the very same
``(expiry, bucket, count)``), so a single-bucket counter costs little more than its key, its
``OrderedDict`` slot (~80 B) and its timing-wheel slot (~31 B).

Bounded memory:

* **expiry**: every key with an expiry also sits in a coarse timing wheel (slot = expiry //
  8 s, ``dict`` per slot, a heap of slot ids). Each call deletes up to a few dozen keys
  from slots that are entirely in the past, so expired keys are reclaimed incrementally
  (amortised O(1) per key, no background task, no full scans). Reads never return an expired
  value even before it is swept.
* **size**: after each call, while more than ``max_keys`` keys are held, the least recently
  touched key (read or written) is evicted and counted in :attr:`evictions`. **An evicted
  counter reads 0**, so under memory pressure a cap or budget could be granted again; size
  ``max_keys`` for the working set (roughly 200 B per counter plus its key) and alert on
  ``evictions``.
* **evicted claims fail closed**: a claim is written once and not touched again, so claims
  are among the first keys evicted, and a replayed beacon whose claim was evicted would be
  counted a second time. So the store keeps :attr:`claim_horizon`, the latest expiry of a
  claim evicted while still live, and refuses a new claim whose expiry is not past it (by
  :data:`HORIZON_SLACK_S`), counting it in :attr:`forgotten`. The beacon path sets a claim's
  expiry from the token's serve time (a fixed time after it), so expiries follow the order
  tokens were issued in: under memory pressure the first beacons of the oldest tokens are
  refused (lost, never counted twice), and newer tokens are claimed as usual.

Locks live apart, in a plain ``dict`` ``key -> (owner, expiry)`` (float seconds of ``clock``):
a lock is held for the length of one decision and released at once, so the dict stays small;
when it grows past :data:`_LOCKS_SWEEP_AT` the expired ones are dropped (a lock whose release
was lost). They are not LRU-evicted (an evicted lock would let two decisions of one session
interleave) and not kept in the state file (no decision survives a restart).

A key must always be used with the same ``Window`` (in both backends: buckets are indices of
that window's ``bucket_s``).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .base import ClaimHeld, Guarded, Incr, Read, Window

_ESC = "\x00"
_CLAIM = "\x01"
_HIST = "\x02"

_SLOT_S = 8
"""Timing-wheel granularity: expired keys are reclaimed at most this late."""
_SWEEP_BATCH = 64
"""Expired keys reclaimed per call at most (keeps every call's latency flat)."""
_INTERN_MAX = 8192
MAX_KEYS = 2_000_000
"""Keys held by default before the least recently used are evicted
(``VASTSERVER_MEMORY_MAX_KEYS``)."""
_LOCKS_SWEEP_AT = 4096
"""Locks held before expired ones are dropped (then again at twice as many still live)."""
HORIZON_SLACK_S = 2
"""Two claims for one token made at different times may get expiries this far apart (each
rounds the caller's relative TTL and the store's clock up)."""

_Counter = int | tuple[int, ...]
_History = tuple[int, tuple[str, ...]]
_Value = int | tuple[int, ...] | _History
"""What ``_data`` holds (see the module docstring). The map itself is typed ``Any``: the
kind of each entry is known from its key's namespace, and ``typing.cast`` calls would cost
more than the rest of a lookup on the hot path."""


# ---------------------------------------------------------------------- shared bucket math


def bucket_bounds(window: Window, now: float) -> tuple[int, int]:
    """Inclusive bucket-index range a read at ``now`` sums (lifetime: the single bucket 0)."""
    if window.window_s is None:
        return 0, 0
    bs = window.bucket_s
    if bs <= 0:
        raise ValueError(f"bucket_s must be positive for a windowed counter: {window}")
    return int((now - window.window_s) // bs), int(now // bs)


def incr_plan(incr: Incr, now: float) -> tuple[int, int | None, int | None]:
    """``(bucket index, lowest index still in the window or None, ttl seconds or None)``."""
    w = incr.window
    ttl = incr.ttl_s
    if ttl is not None and ttl <= 0:
        raise ValueError(f"ttl_s must be positive: {incr}")
    if w.window_s is None:
        return 0, None, ttl
    bs = w.bucket_s
    if bs <= 0:
        raise ValueError(f"bucket_s must be positive for a windowed counter: {w}")
    t = now if incr.at is None else incr.at
    return (
        int(t // bs),
        int((now - w.window_s) // bs),
        ttl if ttl is not None else w.window_s + bs,
    )


def validate(batch: Sequence[Guarded]) -> None:
    """Raise ``ValueError`` for a bad window or TTL anywhere in ``batch``, before anything is
    applied (so a malformed batch never half-applies)."""
    for group in batch:
        for g in group.guards:
            w = g.window
            if w.window_s is not None and w.bucket_s <= 0:
                raise ValueError(f"bucket_s must be positive for a windowed counter: {w}")
            for e in g.extra:
                w = e.window
                if w.window_s is not None and w.bucket_s <= 0:
                    raise ValueError(f"bucket_s must be positive for a windowed counter: {w}")
        for i in group.incrs:
            w = i.window
            if w.window_s is not None and w.bucket_s <= 0:
                raise ValueError(f"bucket_s must be positive for a windowed counter: {w}")
            if i.ttl_s is not None and i.ttl_s <= 0:
                raise ValueError(f"ttl_s must be positive: {i}")


def entry_expired(key: str, value: Any, wall: float) -> bool:
    """Whether an entry of the layout above has expired at ``wall``: a claim's value is its
    expiry, a tuple's first item is; a plain int never expires."""
    if key[:1] == _CLAIM:
        return bool(value <= wall)
    return type(value) is tuple and value[0] <= wall


def _ckey(key: str) -> str:
    return key if key[:1] > _HIST else _ESC + key


class MemoryStore:
    """Single-process :class:`~vastserver.store.base.Store` (see the module docstring)."""

    name = "memory"
    local = True

    def __init__(self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.time) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._wheel: dict[int, dict[str, str]] = {}
        self._slots: list[int] = []
        self._ints: dict[int, int] = {}
        self._tuples: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.evictions = 0
        """Keys dropped because ``max_keys`` was exceeded (export as a metric)."""
        self.claim_horizon = 0
        """The latest expiry of a claim evicted while it was live (see the module docstring);
        kept in the state file."""
        self.forgotten = 0
        """Calls whose claims were refused because an equal one may have been evicted
        (export as a metric)."""
        self.claim_window_s: int | None = None
        """How long after its token's serve time a claim expires, when the caller (the beacon
        path) fixes it so; kept in the state file, see :func:`~.statefile.load_state`."""
        self.expirations = 0
        """Expired keys reclaimed by the sweeper."""
        self._locks: dict[str, tuple[str, float]] = {}
        self._locks_sweep_at = _LOCKS_SWEEP_AT

    def __len__(self) -> int:
        """Keys held (counters, claims and histories; expired ones not yet swept included)."""
        return len(self._data)

    # ------------------------------------------------------------------ interface

    async def read(self, reads: Sequence[Read], now: float) -> list[int]:
        """:meth:`_get` for each read, inlined: a decision reads ~300 counters, most of them
        absent or plain lifetime ints, and the windows' bucket ranges repeat."""
        wall = self._clock()
        self._sweep(wall)
        data = self._data
        get = data.get
        touch = data.move_to_end
        ranges: dict[Window, tuple[int, int]] = {}
        out: list[int] = []
        for key, window in reads:
            if key[:1] <= _HIST:
                key = _ESC + key
            v = get(key)
            if v is None:
                out.append(0)
                continue
            touch(key)
            if type(v) is int:
                out.append(v if v > 0 else 0)
                continue
            t: tuple[int, ...] = v
            if t[0] <= wall:
                out.append(0)
                continue
            span = ranges.get(window)
            if span is None:
                if window.window_s is None:
                    span = (0, 0)
                else:
                    bs = window.bucket_s
                    if bs <= 0:
                        raise ValueError(
                            f"bucket_s must be positive for a windowed counter: {window}"
                        )
                    span = (int((now - window.window_s) // bs), int(now // bs))
                ranges[window] = span
            lo, hi = span
            c = 0
            for j in range(1, len(t), 2):
                if lo <= t[j] <= hi:
                    c += t[j + 1]
            out.append(c if c > 0 else 0)
        return out

    async def add(self, incrs: Sequence[Incr], now: float) -> None:
        validate((Guarded((), tuple(incrs)),))
        wall = self._clock()
        self._sweep(wall)
        for incr in incrs:
            self._incr(incr, now, wall)
        self._evict()

    async def commit(self, batch: Sequence[Guarded], now: float) -> list[bool]:
        validate(batch)
        wall = self._clock()
        self._sweep(wall)
        get = self._get
        out: list[bool] = []
        for group in batch:
            ok = True
            for g in group.guards:
                total = get(_ckey(g.key), g.window, now, wall) + g.amount
                for e in g.extra:
                    total += get(_ckey(e.key), e.window, now, wall)
                if total > g.limit:
                    ok = False
                    break
            if ok:
                for incr in group.incrs:
                    self._incr(incr, now, wall)
            out.append(ok)
        self._evict()
        return out

    def _claim_many(self, keys: Sequence[str], ttl_s: int) -> list[bool]:
        wall = self._clock()
        self._sweep(wall)
        data = self._data
        exp = self._intern(math.ceil(wall + ttl_s))
        forgettable = exp <= self.claim_horizon + HORIZON_SLACK_S
        forgot = False
        out: list[bool] = []
        for key in keys:
            k = _CLAIM + key
            cur: int | None = data.get(k)
            if cur is not None and cur > wall:
                data.move_to_end(k)
                out.append(False)
                continue
            if forgettable:  # its first claim may be among the evicted ones
                forgot = True
                out.append(False)
                continue
            self._put(k, cur, exp, exp)
            out.append(True)
        if forgot:
            self.forgotten += 1
        self._evict()
        return out

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
        # ``served_at`` is not needed: one process has one claim window, and the state file
        # moves the claims when a restart changes it.
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if unless is not None and not keys:
            raise ValueError("unless needs keys to claim")
        validate((Guarded((), tuple(incrs)),))  # before anything is applied
        if unless is not None:
            # an evicted ``unless`` reads as free, but the claims of its token, made with
            # the same expiry, are then refused as possibly forgotten (see the docstring)
            held: int | None = self._data.get(_CLAIM + unless)
            if held is not None and held > self._clock():
                raise ClaimHeld(f"{unless} is claimed")
        claims = self._claim_many(keys, ttl_s)
        if incrs and all(claims):
            wall = self._clock()
            for incr in incrs:
                self._incr(incr, now, wall)
            self._evict()
        return claims

    async def history(self, key: str) -> list[str]:
        wall = self._clock()
        self._sweep(wall)
        k = _HIST + key
        cur: _History | None = self._data.get(k)
        if cur is None or cur[0] <= wall:
            return []
        self._data.move_to_end(k)
        return list(cur[1])

    async def push_history(
        self,
        key: str,
        entries: Sequence[str],
        *,
        keep: int,
        ttl_s: int,
        release: tuple[str, str] | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        wall = self._clock()
        self._sweep(wall)
        k = _HIST + key
        cur: _History | None = self._data.get(k)
        old_exp = None if cur is None else cur[0]
        items = () if cur is None or cur[0] <= wall else cur[1]
        new_items = (tuple(reversed(entries)) + items)[: max(keep, 0)]
        if not new_items:
            self._put(k, old_exp, None, None)
        else:
            exp = self._intern(math.ceil(wall + ttl_s))
            self._put(k, old_exp, (exp, new_items), exp)
            self._evict()
        if release is not None:
            self._release(*release)

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive")
        locks = self._locks
        wall = self._clock()
        held = locks.get(key)
        if held is not None and held[0] != owner and held[1] > wall:
            return False
        locks[key] = (owner, wall + ttl_ms / 1000)
        if len(locks) > self._locks_sweep_at:
            for k in [k for k, (_, exp) in locks.items() if exp <= wall]:
                del locks[k]
            self._locks_sweep_at = max(_LOCKS_SWEEP_AT, 2 * len(locks))
        return True

    async def release(self, key: str, owner: str) -> None:
        self._release(key, owner)

    def _release(self, key: str, owner: str) -> None:
        locks = self._locks
        held = locks.get(key)
        if held is not None and held[0] == owner:
            del locks[key]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
        self._locks.clear()
        self._wheel.clear()
        self._slots.clear()
        self._ints.clear()
        self._tuples.clear()

    # ------------------------------------------------------------------ state file

    def items_snapshot(self) -> tuple[float, list[str], list[Any]]:
        """The store's clock, its keys and their values, in the order the keys were first
        written (expired ones included). Two C-speed list copies of the dict underneath the
        ``OrderedDict`` (~30 ms for 2M keys, where walking its recency order takes ~1 s);
        the values are immutable, so later writes do not change them. For
        :func:`vastserver.store.statefile.save_state`."""
        return self._clock(), list(dict.keys(self._data)), list(dict.values(self._data))

    def clock_now(self) -> float:
        """The store's clock: the seconds its expiries are in."""
        return self._clock()

    def restore(self, entries: Iterable[tuple[str, Any]], claim_shift_s: int = 0) -> int:
        """Put back entries written by :meth:`items_snapshot` (values as JSON gives them
        back: arrays for tuples), in order (the later ones are evicted last); expired ones are
        skipped, claims' expiries moved by ``claim_shift_s`` first. ``ValueError`` for a value
        that does not fit its key's kind. Returns the keys held afterwards."""
        wall = self._clock()
        for key, raw in entries:
            kind = key[:1]
            value: _Value
            if kind == _CLAIM:
                if type(raw) is not int:
                    raise ValueError(f"claim {key[1:]!r}: not an expiry")
                value = exp = raw + claim_shift_s
            elif kind == _HIST:
                if not (
                    isinstance(raw, list)
                    and len(raw) == 2
                    and type(raw[0]) is int
                    and isinstance(raw[1], list)
                    and all(isinstance(e, str) for e in raw[1])
                ):
                    raise ValueError(f"history {key[1:]!r}: not [expiry, [entries]]")
                exp = raw[0]
                value = (exp, tuple(raw[1]))
            elif type(raw) is int:
                self._put(key, None, raw, None)
                continue
            else:
                if not (
                    isinstance(raw, list)
                    and len(raw) >= 3
                    and len(raw) % 2 == 1
                    and all(type(x) is int for x in raw)
                ):
                    raise ValueError(f"counter {key!r}: not an expiry and bucket counts")
                exp = raw[0]
                value = self._share(tuple(raw)) if len(raw) == 3 else tuple(raw)
            if exp <= wall:
                continue
            self._put(key, None, value, self._intern(exp))
        self._evict()
        return len(self._data)

    # ------------------------------------------------------------------ counters

    def _get(self, key: str, window: Window, now: float, wall: float) -> int:
        data = self._data
        v = data.get(key)
        if v is None:
            return 0
        data.move_to_end(key)
        if type(v) is int:
            return v if v > 0 else 0
        t: tuple[int, ...] = v
        if t[0] <= wall:
            return 0
        if window.window_s is None:
            lo = hi = 0
        else:
            bs = window.bucket_s
            if bs <= 0:
                raise ValueError(f"bucket_s must be positive for a windowed counter: {window}")
            lo, hi = int((now - window.window_s) // bs), int(now // bs)
        if len(t) == 3:
            c = t[2] if lo <= t[1] <= hi else 0
            return c if c > 0 else 0
        s = 0
        for j in range(1, len(t), 2):
            if lo <= t[j] <= hi:
                s += t[j + 1]
        return s if s > 0 else 0

    def _incr(self, incr: Incr, now: float, wall: float) -> None:
        idx, lo, ttl = incr_plan(incr, now)
        key = _ckey(incr.key)
        amount = incr.amount
        cur: _Counter | None = self._data.get(key)
        old_exp: int | None = None
        live: _Counter | None = cur
        if type(cur) is tuple:
            old_exp = cur[0]
            if old_exp <= wall:
                live = None
        new: _Counter | None
        exp: int | None
        if lo is None:  # lifetime: a plain int, or (expiry, 0, count) with a TTL
            if live is None:
                c = amount
            elif isinstance(live, int):
                c = live + amount
            else:
                c = live[2] + amount
            if ttl is not None:
                exp = self._intern(math.ceil(wall + ttl))
            elif type(live) is tuple:
                exp = live[0]
            else:
                exp = None
            if c <= 0:  # a counter never goes below zero (see Incr.amount)
                new = None
            elif exp is None:
                new = c
            else:
                new = self._share((exp, 0, c))
        else:
            assert ttl is not None
            exp = self._intern(math.ceil(wall + ttl))
            parts = [exp]
            hit = False
            if type(live) is tuple:
                for j in range(1, len(live), 2):
                    b = live[j]
                    if b < lo:
                        continue
                    c = live[j + 1]
                    if b == idx:
                        hit = True
                        c += amount
                        if c <= 0:
                            continue
                    parts.append(b)
                    parts.append(c)
            if not hit and amount > 0 and idx >= lo:
                parts.append(self._intern(idx))
                parts.append(amount)
            if len(parts) == 3:
                new = self._share((parts[0], parts[1], parts[2]))
            else:
                new = tuple(parts) if len(parts) > 1 else None
        if new is None:
            exp = None
        self._put(key, old_exp, new, exp)

    # ------------------------------------------------------------------ bookkeeping

    def _put(self, key: str, old_exp: int | None, new: _Value | None, new_exp: int | None) -> None:
        """Store (or delete, ``new=None``) ``key`` and keep the timing wheel in step.

        ``old_exp`` is the expiry the stored value has (expired or not), i.e. the wheel slot
        the key is filed under; ``new_exp`` the expiry of ``new``."""
        data = self._data
        if new is None:
            if data.pop(key, None) is not None and old_exp is not None:
                self._unschedule(key, old_exp)
            return
        data[key] = new
        data.move_to_end(key)
        if new_exp is None:
            if old_exp is not None:
                self._unschedule(key, old_exp)
            return
        new_slot = new_exp // _SLOT_S
        if old_exp is not None:
            old_slot = old_exp // _SLOT_S
            if old_slot == new_slot:
                return
            bucket = self._wheel.get(old_slot)
            if bucket is not None:
                key = bucket.pop(key, key)  # reuse the stored key object
        slot = self._wheel.get(new_slot)
        if slot is None:
            slot = self._wheel[new_slot] = {}
            heapq.heappush(self._slots, new_slot)
        slot[key] = key

    def _unschedule(self, key: str, exp: int) -> None:
        bucket = self._wheel.get(exp // _SLOT_S)
        if bucket is not None:
            bucket.pop(key, None)

    def _sweep(self, wall: float) -> None:
        """Reclaim up to ``_SWEEP_BATCH`` keys from wheel slots that lie wholly in the past."""
        slots = self._slots
        if not slots or (slots[0] + 1) * _SLOT_S > wall:
            return
        data, wheel = self._data, self._wheel
        budget = _SWEEP_BATCH
        while slots and (slots[0] + 1) * _SLOT_S <= wall:
            keys = wheel.get(slots[0])
            while keys and budget:
                k = keys.popitem()[1]
                if data.pop(k, None) is not None:
                    self.expirations += 1
                budget -= 1
            if keys:
                return
            wheel.pop(heapq.heappop(slots), None)
            if not budget:
                return

    def _evict(self) -> None:
        data = self._data
        while len(data) > self.max_keys:
            k, v = data.popitem(last=False)
            if type(v) is tuple:
                self._unschedule(k, v[0])
            elif k[:1] == _CLAIM:
                self._unschedule(k, v)
                if v > self.claim_horizon and v > self._clock():
                    self.claim_horizon = v
            self.evictions += 1

    def _share(self, t: tuple[int, ...]) -> tuple[int, ...]:
        """One object for equal single-bucket values: viewers written in the same second
        usually hold the very same ``(expiry, bucket, count)`` (tuples are immutable)."""
        tuples = self._tuples
        u = tuples.get(t)
        if u is None:
            if len(tuples) >= _INTERN_MAX:
                tuples.clear()
            tuples[t] = u = t
        return u

    def _intern(self, x: int) -> int:
        """Share the int objects of recent expiries/bucket indices between keys."""
        ints = self._ints
        y = ints.get(x)
        if y is None:
            if len(ints) >= _INTERN_MAX:
                ints.clear()
            ints[x] = y = x
        return y
