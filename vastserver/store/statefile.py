"""The in-memory store's state file: caps, budgets and beacon claims across a restart.

The :class:`~vastserver.store.memory.MemoryStore` lives in one process; without this file a
restart (a deploy, a crash) would start every budget, cap and beacon claim from zero, and a
line item whose lifetime budget was 90 % delivered would deliver it again. With
``VASTSERVER_STATE_FILE`` set the server writes the store's live keys to the file every
``VASTSERVER_STATE_SAVE_S`` seconds and once more when it stops, and reads them back when it
starts. A SIGTERM loses nothing; a ``kill -9`` loses what was counted since the last save.
(Redis keeps its own state: the file is for the in-memory store only.)

Expiries and window buckets are stored as the absolute times they already are, so what is
read back expires when it would have.

Format: UTF-8 text, a JSON header line (``format``, ``version``, ``saved_at``, ``keys``),
then JSON arrays of ``[key, value]`` pairs, one line per chunk of keys, least recently used
first. Values are those of the store's layout (see :mod:`vastserver.store.memory`): an int,
or an array of ints (expiry first), or for a session history ``[expiry, [entries]]``.

A save is written to a temporary file beside the target, synced and renamed over it, so
the file is always a whole snapshot. Encoding runs on the event loop a chunk at a time, so
no request waits for more than one chunk (~10 ms); the write runs in a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .memory import MemoryStore

__all__ = ["FORMAT", "VERSION", "StateFileError", "load_state", "save_state"]

FORMAT = "vastserver-memory-store"
VERSION = 1
_SEQ = itertools.count()
CHUNK = 10_000
"""Keys encoded per line (and per turn of the event loop)."""


class StateFileError(ValueError):
    """The state file exists but cannot be read back; the message names the file and why."""


async def save_state(store: MemoryStore, path: Path) -> int:
    """Write the store's live keys to ``path`` (atomically); returns how many."""
    wall, items = store.items_snapshot()
    lines: list[str] = []
    kept = 0
    for start in range(0, len(items), CHUNK):
        chunk = [kv for kv in items[start : start + CHUNK] if not _expired(kv, wall)]
        kept += len(chunk)
        lines.append(json.dumps(chunk, separators=(",", ":")))
        await asyncio.sleep(0)  # one chunk per turn: requests keep being served
    header = {"format": FORMAT, "version": VERSION, "saved_at": wall, "keys": kept}
    await asyncio.to_thread(_write_atomic, path, [json.dumps(header), *lines])
    return kept


def _expired(kv: tuple[str, Any], wall: float) -> bool:
    key, value = kv
    if key[:1] == "\x01":  # a claim: its value is its expiry
        return bool(value <= wall)
    return type(value) is tuple and value[0] <= wall


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_SEQ)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def load_state(store: MemoryStore, path: Path) -> int | None:
    """Read ``path`` into the (empty) store; None when there is no file yet, else the keys
    restored (expired ones are skipped). ``StateFileError`` when the file cannot be read
    back: the server then refuses to start rather than forget budgets it has spent."""
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: cannot read the state file: {e}") from None
    with f:
        try:
            return store.restore(_entries(f, path))
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            if isinstance(e, StateFileError):
                raise
            raise StateFileError(f"{path}: not a state file this server wrote: {e}") from None


def _entries(f: Any, path: Path) -> Iterator[tuple[str, Any]]:
    header = json.loads(f.readline() or "null")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StateFileError(f"{path}: not a vastserver state file")
    if header.get("version") != VERSION:
        raise StateFileError(
            f"{path}: state file version {header.get('version')!r}; this server reads {VERSION}"
        )
    expected = header.get("keys")
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
