"""The in-memory store's state file: caps, budgets and beacon claims across a restart.

The :class:`~vastserver.store.memory.MemoryStore` lives in one process; without this file a
restart (a deploy, a crash) would start every budget, cap and beacon claim from zero, and a
line item whose lifetime budget was 90 % delivered would deliver it again. With
``VASTSERVER_STATE_FILE`` set the server writes the store's live keys to the file every
``VASTSERVER_STATE_SAVE_S`` seconds and once more when it stops, and reads them back when it
starts. A SIGTERM loses nothing (a failed last save makes the exit status 1); a ``kill -9``
loses what was counted since the last save. (Redis keeps its own state: the file is for
the in-memory store only.)

Expiries and window buckets are stored as the absolute times they already are, so what is
read back expires when it would have.

Format: UTF-8 text, a JSON header line (``format``, ``version``, ``saved_at``, ``keys``),
then JSON arrays of ``[key, value]`` pairs, one line per chunk of keys, in the order the
keys were first written (after a restart the store evicts in that order). Values are those
of the store's layout (see :mod:`vastserver.store.memory`): an int, or an array of ints
(expiry first), or for a session history ``[expiry, [entries]]``.

A save copies the keys and values in one step (~35 ms for 2M keys), encodes them on the
event loop a chunk at a time (~7 ms a turn; the cyclic collector paused meanwhile, so the
allocations do not set off collections that walk the copies) and writes them in a thread to a
temporary file (mode 0600) beside the target, synced and renamed over it, so the file is
always a whole snapshot. One server holds the file at a time: a lock file beside it
(``flock``) is taken at start and kept while the process lives.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vastserver.gcpause import gc_paused

from .memory import _CLAIM, MemoryStore, entry_expired

__all__ = ["FORMAT", "VERSION", "StateFileError", "StateLock", "load_state", "save_state"]

FORMAT = "vastserver-memory-store"
VERSION = 1
CHUNK = 2_500
"""Keys encoded per line (and per turn of the event loop: ~7 ms)."""
MAX_HEADER = 4096
LEAST_CLAIM_WINDOW_S = 60 + 3600
"""The shortest claim window any server can have used: the least ``VASTSERVER_TOKEN_MAX_AGE``
(60 s) and the hour's grace. Files written before the header kept ``claim_window_s``
(versions up to e9206d6) never used less."""
_SEQ = itertools.count()


class StateFileError(ValueError):
    """The state file exists but cannot be read back (or is held by another server); the
    message names the file and why."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use
        """Another running server holds the file (not a fault of the file itself)."""


class StateLock:
    """An exclusive ``flock`` on ``<file>.lock`` for as long as the process runs: two
    servers writing one state file would each overwrite what the other counted."""

    def __init__(self, path: Path) -> None:
        # Beside the file the saves write (they follow symlinks): two paths to one file, one
        # of them a symlink, must take the same lock.
        real = path.resolve()
        lock = real.with_name(real.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StateFileError(f"{path}: cannot open its lock file {lock}: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateFileError(f"{path}: in use by another running server", in_use=True) from None
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


async def save_state(store: MemoryStore, path: Path) -> int:
    """Write the store's live keys to ``path`` (atomically); returns how many."""
    # The pairs each chunk allocates would set off the cyclic collector over and over, and
    # every young collection would walk the two big lists (a full one stalled the loop for
    # ~140 ms at 2M keys): collection waits until the encoding is done.
    with gc_paused():
        wall, keys, values = store.items_snapshot()
        lines: list[str] = []
        kept = 0
        for start in range(0, len(keys), CHUNK):
            chunk = [
                (k, v)
                for k, v in zip(
                    keys[start : start + CHUNK], values[start : start + CHUNK], strict=True
                )
                if not entry_expired(k, v, wall)
            ]
            kept += len(chunk)
            lines.append(json.dumps(chunk, separators=(",", ":")))
            await asyncio.sleep(0)  # one chunk per turn: requests keep being served
        del keys, values
    header = {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": wall,
        "keys": kept,
        # claims evicted before this save stay refused after a restart (MemoryStore)
        "claim_horizon": store.claim_horizon,
        "claim_window_s": store.claim_window_s,
    }
    await asyncio.to_thread(_write_atomic, path, [json.dumps(header), *lines])
    return kept


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _write_atomic(path: Path, lines: list[str]) -> None:
    path = path.resolve()  # a symlinked state file: replace its target, keep the link
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_temp_prefix(path)}{os.getpid()}.{next(_SEQ)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a power cut
    finally:
        os.close(dfd)


def _remove_stale_temps(path: Path) -> None:
    """Temporary files a killed save left behind (the lock says no other server writes)."""
    target = path.resolve()
    prefix = _temp_prefix(target)
    try:
        for p in target.parent.iterdir():
            if p.name.startswith(prefix) and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
    except OSError:
        pass


def load_state(store: MemoryStore, path: Path) -> int | None:
    """Read ``path`` into the (empty) store; None when there is no file yet, else the keys
    it holds afterwards (expired ones are skipped). ``StateFileError`` when the file cannot
    be read back: the server then refuses to start rather than forget budgets it has spent.
    Call it holding the :class:`StateLock`."""
    _remove_stale_temps(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: cannot read the state file: {e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would hang or never end
        raise StateFileError(f"{path}: not a regular file")
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise StateFileError(f"{path}: cannot read the state file: {e}") from None
    with f:
        try:
            expected, shift = _header(f, path, store)
            return store.restore(_entries(f, path, expected), claim_shift_s=shift)
        except StateFileError:
            raise
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError, MemoryError) as e:
            why = type(e).__name__ if isinstance(e, RecursionError | MemoryError) else str(e)
            raise StateFileError(f"{path}: not a state file this server wrote: {why}") from None


def _header(f: IO[str], path: Path, store: MemoryStore) -> tuple[Any, int]:
    """The header's key count, and how far the claims' expiries move: their window is the
    token lifetime plus an hour (:attr:`MemoryStore.claim_window_s`), and a server started
    with another ``VASTSERVER_TOKEN_MAX_AGE`` moves them (and the claim horizon) with it, so
    that claim expiries keep the order of the tokens' serve times (a file of an earlier
    server, which did not record its window, moves them at least that far). A raised one
    also puts the horizon past the tokens whose claims had lapsed by the save."""
    header = json.loads(f.readline(MAX_HEADER) or "null")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateFileError(f"{path}: not a vastserver state file")
    if header.get("version") != VERSION:
        raise StateFileError(
            f"{path}: state file version {header.get('version')!r}; this server reads {VERSION}"
        )
    horizon = header.get("claim_horizon", 0)  # absent from files of earlier servers
    if type(horizon) is not int or horizon < 0:
        raise StateFileError(f"{path}: claim_horizon is not a time")
    window = header.get("claim_window_s")
    if window is not None and (type(window) is not int or window <= 0):
        raise StateFileError(f"{path}: claim_window_s is not a duration")
    shift = 0
    if store.claim_window_s is not None:
        if window is None:
            window = _unrecorded_window(f, path, header, horizon)
        shift = store.claim_window_s - window
    if horizon:
        store.claim_horizon = max(store.claim_horizon, horizon + shift)
    if shift > 0:
        # A raised lifetime makes tokens verify again whose claims had lapsed before the
        # save (served over the old window before it): nothing marks their beacons as
        # replays. Their new claims would expire by saved_at + shift: refused, as evicted
        # ones are (lost rather than counted twice).
        saved_at = header.get("saved_at")
        base = store.clock_now()
        if (
            isinstance(saved_at, int | float)
            and type(saved_at) is not bool
            and math.isfinite(saved_at)
        ):
            base = float(saved_at)
        store.claim_horizon = max(store.claim_horizon, math.ceil(base) + shift)
    return header.get("keys"), shift


def _unrecorded_window(f: IO[str], path: Path, header: dict[str, Any], horizon: int) -> int:
    """A claim window for a file whose header lacks it, at most the one its server used, so
    that moving its claims by the difference never moves them short of the new window.

    Those servers gave a claim ``VASTSERVER_TOKEN_MAX_AGE`` plus an hour from its beacon (or
    its token's serve time), both before the save: no claim in the file (nor the claim
    horizon, an evicted claim's expiry) lies further past ``saved_at`` than that window. So
    the latest of them less ``saved_at`` is at most the window (about it when beacons came
    until the save); assuming the default window instead (90,000 s) would expire at once the
    claims of a server that ran with a shorter one. One extra pass over the file, once."""
    pos = f.tell()
    latest = horizon
    for key, raw in _entries(f, path, header.get("keys")):
        if key[:1] == _CLAIM and type(raw) is int and raw > latest:
            latest = raw
    f.seek(pos)
    saved_at = header.get("saved_at")
    if (
        type(saved_at) is bool
        or not isinstance(saved_at, int | float)
        or not math.isfinite(saved_at)
    ):
        return LEAST_CLAIM_WINDOW_S
    return max(LEAST_CLAIM_WINDOW_S, math.floor(latest - saved_at))


def _entries(f: IO[str], path: Path, expected: Any) -> Iterator[tuple[str, Any]]:
    seen = 0
    for line in f:
        chunk = json.loads(line)
        if not isinstance(chunk, list):
            raise StateFileError(f"{path}: a line is not an array of keys")
        for pair in chunk:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise StateFileError(f"{path}: an entry is not a [key, value] pair")
            seen += 1
            yield pair[0], pair[1]
    if seen != expected:
        raise StateFileError(f"{path}: {seen} keys where the header says {expected!r}")
