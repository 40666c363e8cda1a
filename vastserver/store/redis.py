"""``RedisStore``: shared state for several server instances, on ``redis.asyncio``.

Key layout (``prefix`` defaults to ``"vs:"``):

* counter ``{prefix}c:{key}``: a hash ``{bucket index: count}`` with ``EXPIRE`` refreshed on
  every write (default ``window_s + bucket_s``; lifetime counters use the single field
  ``"0"`` and expire only with an explicit ``ttl_s``). Writes drop fields that have left the
  window and fields whose count reached 0, so a hash holds at most ``window/bucket + 1``
  small fields (a listpack in Redis) and an empty one disappears. A key must always be used
  with the same ``Window``;
* claim ``{prefix}d:{key}``: ``SET NX EX``;
* claim windows ``{prefix}claim-windows``: a sorted set of each claim window an instance
  claimed with (member) and when it came into force (score: that instance's clock at its
  first claim plus :data:`CLAIM_MARGIN_S`, so a clock behind by less than the margin errs
  towards refusing; never moved), and ``{prefix}claim-windows:used``, a hash of when an
  instance last claimed with each (refreshed at most once a minute). A claim given its
  beacon's ``served_at`` lasts until ``served_at`` + the longest window recorded, not just
  the caller's (instances with different ``VASTSERVER_TOKEN_MAX_AGE`` values share the
  claims); a beacon served before the longest window in force then (compared as numbers),
  past that window less :data:`CLAIM_MARGIN_S`, raises :class:`~.base.ClaimExpired`: its
  claim may have lapsed, and counting it might count it twice. A token served before every
  recorded window is judged with the shortest, or :data:`LEGACY_CLAIM_WINDOW_S` if shorter
  (earlier versions claimed with it and recorded nothing). A window unused for its own
  length drops out (never the shortest, which answers for tokens served before every
  recorded window): dropping one only shortens the window a lookup finds for a token, never
  a claim already written, so it can refuse more, never count twice;
* history ``{prefix}h:{key}``: a list, newest first (``LPUSH``/``LTRIM``/``EXPIRE`` in one
  script, :data:`HISTORY_LUA`), read with ``LRANGE``;
* lock ``{prefix}l:{key}``: a string holding its owner, with a ``PX`` expiry; taken by
  :data:`ACQUIRE_LUA` (set when absent or already the caller's), freed by
  :data:`RELEASE_LUA` (deleted only while it still holds the caller's name).

Round trips: ``read`` is one ``EVALSHA`` (sums computed server-side over the window's
fields, one consistent snapshot); ``commit`` and ``add`` are one ``EVALSHA`` of
:data:`COMMIT_LUA`, which processes the groups in order, atomically: every guard of a group
is summed in Lua, then the group's increments are applied only if all guards hold (``add`` is
a single group without guards). ``claim_and_add`` is one ``EVALSHA`` of
:data:`CLAIM_ADD_LUA` (claims, then the increments only if every claim is new: a beacon is
claimed and counted together or not at all). ``push_history`` is one ``EVALSHA`` of
:data:`HISTORY_LUA`, which also frees the caller's lock when asked to (as :data:`RELEASE_LUA`
does: a decision writes its break and ends its session's turn in one round trip); ``acquire``
and ``release`` are one ``EVALSHA`` each.
Scripts are cached by SHA; after a server restart the first call re-loads them
(redis-py's ``Script`` handles ``NOSCRIPT``). Every key a script touches is passed in
``KEYS``.

Failures: every Redis or socket error is raised as :class:`StoreUnavailable`. Writes are
**never retried** (a retried ``commit``, ``add``, claim or push after an ambiguous failure
could apply twice or lose a claim); ``read`` and ``history`` retry once on a connection error,
and so do ``acquire`` and ``release`` (repeating either with the same owner changes nothing).
The connection pool checks a pooled connection before reuse and reconnects one the server
closed, so after a server restart the next call simply works (a write racing the restart
itself can still fail once). ``socket_timeout`` bounds connecting, each reply, and waiting for
a free pooled connection (at most ``max_connections`` per store).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

from .base import (
    ClaimExpired,
    ClaimHeld,
    Guarded,
    Incr,
    Read,
    StorePoolExhausted,
    StoreUnavailable,
)
from .memory import bucket_bounds, incr_plan

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - a dependency; without it redis-py packs as before
    _hiredis_pack = None

_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def _pool_full(e: BaseException) -> bool:
    """Whether redis-py found every pooled connection busy for the pool's wait."""
    return isinstance(e, RedisConnectionError) and "No connection available" in str(e)


_PLAIN_ARGS = frozenset({str, bytes, int})

CLAIM_MARGIN_S = 600
"""A token served under a shorter claim window is refused this long before a claim written
with that window expires: claims written by instances whose clocks run ahead still live."""

LEGACY_CLAIM_WINDOW_S = 86400 + 3600
"""The claim window of versions that recorded none (up to e9206d6, with the default
``VASTSERVER_TOKEN_MAX_AGE``): their claims lasted this long from their beacon. A token served
before every recorded window is judged with it when it is shorter than the shortest recorded,
so that a first instance started with a raised max age on their Redis does not count a replay
of a token whose claim they let lapse."""


def _pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
    """``pack_command`` of our connections: hiredis' C packer for the arguments we send.

    redis-py's sync connections pack with ``hiredis.pack_command`` when hiredis is
    installed, its asyncio ones always in Python (redis/redis-py#4176): per argument an
    encode and a concatenation of the growing buffer. A decision's scripts carry a few
    hundred keys and arguments, and that packing took more of its client time than any
    other part of the Redis calls. Arguments of any other type than ``str``, ``bytes`` and
    ``int``, or a connection set to another encoding than strict UTF-8, take redis-py's
    own path, with its conversions and errors."""
    enc = self.encoder
    if (
        _hiredis_pack is None
        or not set(map(type, args)) <= _PLAIN_ARGS
        or enc.encoding != "utf-8"
        or enc.encoding_errors != "strict"
    ):
        return AbstractConnection.pack_command(self, *args)
    head = args[0]  # a command name may hold literal arguments: "SCRIPT LOAD"
    if isinstance(head, str):
        args = (*head.encode().split(), *args[1:])
    elif b" " in head:
        args = (*head.split(), *args[1:])
    return [_hiredis_pack(args)]


def _hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (TCP, TLS or Unix socket, as the URL chose) packing with :func:`_pack_command`."""
    return type(f"Hiredis{cls.__name__}", (cls,), {"pack_command": _pack_command})


_WSUM_LUA = """
local function wsum(key, lo, hi)
  local flat = redis.call('HGETALL', key)
  local s = 0
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b >= lo and b <= hi then s = s + tonumber(flat[i + 1]) end
  end
  if s < 0 then return 0 end
  return s
end
"""

READ_LUA = (
    _WSUM_LUA
    + """
-- KEYS: counter hashes; ARGV: lo, hi bucket index per key. Returns the clamped sums.
local out = {}
for i = 1, #KEYS do
  out[i] = wsum(KEYS[i], tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]))
end
return out
"""
)

_INCR_LUA = """
-- One increment (see COMMIT_LUA): count, drop a field at or below zero (a bucket never
-- goes negative), trim old fields, set the TTL.
local function incr(key, field, amount, ttl, trim)
  if redis.call('HINCRBY', key, field, amount) <= 0 then
    redis.call('HDEL', key, field)
  end
  if trim ~= '' then
    local t = tonumber(trim)
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if tonumber(f) < t then redis.call('HDEL', key, f) end
    end
  end
  if tonumber(ttl) > 0 then redis.call('EXPIRE', key, ttl) end
end
"""

COMMIT_LUA = (
    _WSUM_LUA
    + _INCR_LUA
    + """
-- KEYS: the counter hash of every guard and increment, in the order they appear below.
-- ARGV: ngroups, then per group: nguards, nincrs,
--   per guard: lo, hi, limit, amount, nextra, then lo, hi per extra counter
--              (holds iff wsum(key) + wsum(each extra) + amount <= limit)
--   per incr:  field, amount, ttl (0 = leave the TTL), trim ('' = none: drop fields < trim)
-- Returns 1/0 per group. Groups run in order, each seeing the ones before.
local a, k = 2, 1
local out = {}
for g = 1, tonumber(ARGV[1]) do
  local ng, ni = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local ok = 1
  for _ = 1, ng do
    local nx = tonumber(ARGV[a + 4])
    if ok == 1 then
      local s = wsum(KEYS[k], tonumber(ARGV[a]), tonumber(ARGV[a + 1]))
      for x = 1, nx do
        s = s + wsum(KEYS[k + x], tonumber(ARGV[a + 3 + 2 * x]), tonumber(ARGV[a + 4 + 2 * x]))
      end
      if s + tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 2]) then ok = 0 end
    end
    a = a + 5 + 2 * nx
    k = k + 1 + nx
  end
  for _ = 1, ni do
    if ok == 1 then incr(KEYS[k], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]) end
    a = a + 4
    k = k + 1
  end
  out[g] = ok
end
return out
"""
)

CLAIM_ADD_LUA = (
    _INCR_LUA
    + """
-- KEYS: the claim windows (a sorted set: window -> when it came into force), when each was
--   last claimed with (a hash: window -> time), the claim keys, the claim key ``unless``
--   when given, then the counter hash of every increment.
-- ARGV: nclaims, ttl, served_at, window, now, margin (served_at and window '' when not
--   known), the legacy window, 1 when ``unless`` is given (else 0), then per incr: field,
--   amount, ttl, trim (as in COMMIT_LUA).
-- Returns 1/0 per claim (SET NX EX); the increments apply only if every claim is new.
-- Returns -1 (nothing claimed or counted) for a token served before the longest window in
-- force when it was served allowed, older than that window less the margin: a claim of it
-- may have lapsed; -2 (nothing claimed or counted) when ``unless`` is claimed.
local n = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
if ARGV[3] ~= '' and ARGV[4] ~= '' then
  local cw, used = KEYS[1], KEYS[2]
  local served, mine, now = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
  local margin = tonumber(ARGV[6])
  local flat = redis.call('ZRANGE', cw, 0, -1, 'WITHSCORES')
  local seen = {}
  local lastflat = redis.call('HGETALL', used)
  for i = 1, #lastflat, 2 do seen[lastflat[i]] = tonumber(lastflat[i + 1]) end
  local wins, known = {}, false
  for i = 1, #flat, 2 do
    wins[#wins + 1] = {flat[i], tonumber(flat[i]), tonumber(flat[i + 1])}
    if flat[i] == mine then known = true end
  end
  if not known then
    -- in force from now + margin (an instance whose clock is behind errs towards refusing);
    -- a recorded time never moves
    redis.call('ZADD', cw, 'NX', now + margin, mine)
    wins[#wins + 1] = {mine, tonumber(mine), now + margin}
  end
  if seen[mine] == nil or seen[mine] <= now - 60 then
    redis.call('HSET', used, mine, now)
    seen[mine] = now
  end
  local least = math.huge
  for _, e in ipairs(wins) do
    if e[2] < least then least = e[2] end
  end
  -- a window no instance claimed with for its own length drops out (never the shortest:
  -- it answers for tokens served before every window still recorded); the longest window
  -- in force when the token was served, and the longest of all, by number
  local longest, at = 0, nil
  for _, e in ipairs(wins) do
    local last = seen[e[1]]
    if last == nil then
      redis.call('HSET', used, e[1], now)
      last = now
    end
    if e[2] ~= least and now > last + e[2] + margin then
      redis.call('ZREM', cw, e[1])
      redis.call('HDEL', used, e[1])
    else
      if e[2] > longest then longest = e[2] end
      if e[3] < served and (at == nil or e[2] > at) then at = e[2] end
    end
  end
  -- served before every window recorded: maybe by a version that recorded none, whose
  -- claims lasted the legacy window from their beacon
  if at == nil then at = math.min(least, tonumber(ARGV[7])) end
  if now > served + at - margin then return -1 end
  local need = math.ceil(served + longest - now)
  if need > ttl then ttl = need end
end
local first = n + 3
if ARGV[8] == '1' then
  if redis.call('EXISTS', KEYS[first]) == 1 then return -2 end
  first = first + 1
end
local out, all = {}, 1
for i = 1, n do
  if redis.call('SET', KEYS[i + 2], '1', 'NX', 'EX', ttl) then
    out[i] = 1
  else
    out[i] = 0
    all = 0
  end
end
if all == 1 then
  local a = 9
  for k = first, #KEYS do
    incr(KEYS[k], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
    a = a + 4
  end
end
return out
"""
)

ACQUIRE_LUA = """
-- KEYS: the lock; ARGV: owner, ttl in ms. 1 when taken (free, or already the owner's: its
-- expiry moves), 0 while another owner holds it.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE_LUA = """
-- KEYS: the lock; ARGV: owner. Deletes the lock only while the owner holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

HISTORY_LUA = """
-- KEYS: the history, then the lock to release (optional); ARGV: keep, ttl in s, the lock's
-- owner ('' without a lock), then the entries (pushed in order: the last ends up newest).
local h = KEYS[1]
local keep = tonumber(ARGV[1])
if keep <= 0 then
  redis.call('DEL', h)
else
  local n, i = #ARGV, 4
  while i <= n do  -- in slices: unpack's arguments are bounded by Lua's C stack
    local j = math.min(i + 999, n)
    redis.call('LPUSH', h, unpack(ARGV, i, j))
    i = j + 1
  end
  redis.call('LTRIM', h, 0, keep - 1)
  redis.call('EXPIRE', h, ARGV[2])
end
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 0
"""


class RedisStore:
    """Shared :class:`~vastserver.store.base.Store` on Redis (see the module docstring)."""

    name = "redis"
    local = False

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "vs:",
        socket_timeout: float = 1.0,
        max_connections: int = 64,
        pool_timeout: float = 1.0,
    ) -> None:
        # ``pool_timeout`` bounds waiting for a free pooled connection under a burst of
        # concurrent requests; ``socket_timeout`` bounds connecting and each reply.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=True,
            # redis-py skips its "is this pooled connection still open?" check on checkout
            # when RESP3 maintenance notifications are on (its default); we need that check
            # to reconnect by ourselves after a server restart.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self._pool.connection_class = _hiredis_packing(self._pool.connection_class)
        self._pool_limits = (max_connections, pool_timeout)
        self._client = Redis(connection_pool=self._pool)
        self._read = self._client.register_script(READ_LUA)
        self._commit = self._client.register_script(COMMIT_LUA)
        self._claim_add = self._client.register_script(CLAIM_ADD_LUA)
        self._acquire = self._client.register_script(ACQUIRE_LUA)
        self._release = self._client.register_script(RELEASE_LUA)
        self._push_history = self._client.register_script(HISTORY_LUA)
        self._c = prefix + "c:"
        self._d = prefix + "d:"
        self._h = prefix + "h:"
        self._l = prefix + "l:"
        self._cw = prefix + "claim-windows"
        self._cw_used = prefix + "claim-windows:used"
        self.claim_window_s: int | None = None
        """How long after its ad was served this instance's beacon claims expire (set by the
        app from ``VASTSERVER_TOKEN_MAX_AGE``); None: no claim window bookkeeping."""

    def _unavailable(self, what: str, e: BaseException) -> StoreUnavailable:
        """The error a failed ``what`` call raises, saying what failed: the message, not
        redis-py's repr (``network:ConnectionError`` alike for a refused connection and a
        full pool). A full pool is this process's overload, not Redis failing:
        :class:`StorePoolExhausted`."""
        if _pool_full(e):
            size, wait = self._pool_limits
            return StorePoolExhausted(
                f"redis {what} failed: pool_exhausted: all {size} connections busy for"
                f" {wait:g} s (this process is overloaded; VASTSERVER_REDIS_POOL_SIZE)"
            )
        return StoreUnavailable(f"redis {what} failed: {type(e).__name__}: {e}"[:300])

    async def read(self, reads: Sequence[Read], now: float) -> list[int]:
        if not reads:
            return []
        c = self._c
        keys: list[str] = []
        args: list[int] = []
        for r in reads:
            keys.append(c + r.key)
            args.extend(bucket_bounds(r.window, now))
        try:
            try:
                res = await self._read(keys=keys, args=args)
            except RedisConnectionError as e:  # e.g. a pooled connection the server closed
                if _pool_full(e):
                    raise  # waited for a connection once already: no second wait
                res = await self._read(keys=keys, args=args)  # reads are safe to repeat
        except _FAILURES as e:
            raise self._unavailable("read", e) from e
        return [int(x) for x in res]

    async def add(self, incrs: Sequence[Incr], now: float) -> None:
        if incrs:
            await self.commit((Guarded((), tuple(incrs)),), now)

    async def commit(self, batch: Sequence[Guarded], now: float) -> list[bool]:
        if not batch:
            return []
        c = self._c
        keys: list[str] = []
        args: list[int | str] = [len(batch)]
        for group in batch:
            args += (len(group.guards), len(group.incrs))
            for g in group.guards:
                keys.append(c + g.key)
                lo, hi = bucket_bounds(g.window, now)
                args += (lo, hi, g.limit, g.amount, len(g.extra))
                for e in g.extra:
                    keys.append(c + e.key)
                    args.extend(bucket_bounds(e.window, now))
            self._incr_args(group.incrs, now, keys, args)
        try:
            res = await self._commit(keys=keys, args=args)
        except _FAILURES as e:
            raise self._unavailable("commit", e) from e
        return [bool(x) for x in res]

    def _incr_args(
        self, incrs: Sequence[Incr], now: float, keys: list[str], args: list[int | str]
    ) -> None:
        """Append each increment's counter key and its ``field, amount, ttl, trim`` (the
        scripts' increment arguments)."""
        for incr in incrs:
            keys.append(self._c + incr.key)
            idx, trim, ttl = incr_plan(incr, now)
            args += (idx, incr.amount, ttl or 0, "" if trim is None else trim)

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
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if not keys:
            if unless is not None:
                raise ValueError("unless needs keys to claim")
            await self.add(incrs, now)
            return []
        redis_keys = [self._cw, self._cw_used, *(self._d + key for key in keys)]
        if unless is not None:
            redis_keys.append(self._d + unless)
        window = self.claim_window_s
        args: list[int | str] = [
            len(keys),
            ttl_s,
            "" if served_at is None else math.floor(served_at),
            "" if window is None else window,
            math.floor(now),
            CLAIM_MARGIN_S,
            LEGACY_CLAIM_WINDOW_S,
            0 if unless is None else 1,
        ]
        self._incr_args(incrs, now, redis_keys, args)
        try:
            res = await self._claim_add(keys=redis_keys, args=args)
        except _FAILURES as e:
            raise self._unavailable("claim", e) from e
        if res == -1:
            raise ClaimExpired(f"token served at {served_at} is past the claim window then")
        if res == -2:
            raise ClaimHeld(f"{unless} is claimed")
        return [bool(x) for x in res]

    async def history(self, key: str) -> list[str]:
        k = self._h + key
        try:
            try:
                res = await self._client.lrange(k, 0, -1)
            except RedisConnectionError as e:
                if _pool_full(e):
                    raise  # waited for a connection once already: no second wait
                res = await self._client.lrange(k, 0, -1)
        except _FAILURES as e:
            raise self._unavailable("history", e) from e
        return [str(x) for x in res]

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
        keys = [self._h + key]
        args: list[str | int] = [keep, ttl_s, ""]
        if release is not None:
            keys.append(self._l + release[0])
            args[2] = release[1]
        args += entries
        try:
            await self._push_history(keys=keys, args=args)
        except _FAILURES as e:
            raise self._unavailable("history", e) from e

    async def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive")
        keys = [self._l + key]
        args: list[str | int] = [owner, ttl_ms]
        try:
            try:
                res = await self._acquire(keys=keys, args=args)
            except RedisConnectionError as e:  # the same owner may take its lock again
                if _pool_full(e):
                    raise  # waited for a connection once already: no second wait
                res = await self._acquire(keys=keys, args=args)
        except _FAILURES as e:
            raise self._unavailable("acquire", e) from e
        return bool(res)

    async def release(self, key: str, owner: str) -> None:
        keys, args = [self._l + key], [owner]
        try:
            try:
                await self._release(keys=keys, args=args)
            except RedisConnectionError as e:
                if _pool_full(e):
                    raise  # waited for a connection once already: no second wait
                await self._release(keys=keys, args=args)
        except _FAILURES as e:
            raise self._unavailable("release", e) from e

    async def ping(self) -> bool:
        """True when Redis answers; False (never raises) when it cannot be reached."""
        try:
            return bool(await self._client.ping())
        except _FAILURES:
            return False

    async def close(self) -> None:
        try:
            await self._client.aclose()
        finally:
            await self._pool.aclose()
