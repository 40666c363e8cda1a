"""Durable, append-only event log: every ad decision and every counted beacon.

The log is the source for reporting and model training, so it must never lose an event the
server acknowledged more than one commit interval ago, yet appending must cost the request path
almost nothing. :class:`EventLog` gets both by *group commit*:

* :meth:`EventLog.append` (request path, asyncio thread) only serialises the record to one JSON
  line and puts the bytes on an in-memory queue. No file I/O, no fsync, no waiting.
* A background writer thread wakes every ``commit_interval_s`` (default 50 ms), writes every
  queued line with one ``write()`` and makes it durable with one ``fsync()``. After ``kill -9``
  (or a crash) at most the events of the last commit interval are missing; the log on disk is
  always a gap-free prefix of what was appended, possibly ending in one torn line.

Segments are files ``events-<UTC yyyymmddTHHMMSS>-<pid>-<nnnnnn>.jsonl`` in one directory; the
pid keeps several server workers writing into the same directory apart. A segment is closed and
a new one started before a line would take it over ``segment_max_bytes``; lines are never split.

With ``retention_s`` the writer deletes finished segments (of every process sharing the
directory) last written more than that long ago: when it opens a segment, at start-up and every
``retention_check_s`` (default an hour), so a quiet log that never rotates still prunes. Ages
are judged on ``wall_clock`` (real time, as the filesystem stamps files), not ``clock``.

When writing fails (disk full, I/O error, read-only remount) serving continues: the events stay
queued (at most ``buffer_max_events``; beyond that the oldest are dropped, counted in
``dropped_total`` and reported through ``on_drop``) and the writer retries every interval, so the
queued events reach the disk, in order, once it recovers.

:func:`read_events` reads segments back (plain or gzip'd), skipping a torn last line.
``docs/event-log.md`` documents the format and the record types.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import gzip
import itertools
import json
import logging
import math
import os
import stat
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias

from vastserver.logs import event

__all__ = [
    "DROP_BUFFER_FULL",
    "DROP_CLOSED",
    "DROP_RATE_LIMITED",
    "DROP_REASONS",
    "DROP_UNRECORDABLE",
    "EventLog",
    "EventLogCorruptError",
    "RateLimit",
    "ReadStats",
    "new_log_problem",
    "read_events",
]

log = logging.getLogger("vastserver.eventlog")

MiB: Final = 1024 * 1024

#: ``on_drop`` reasons (stable tokens, fit for a metric label).
DROP_BUFFER_FULL: Final = "buffer_full"
DROP_CLOSED: Final = "closed"
#: Records the server drops before they reach the log: one :meth:`EventLog.append` refused,
#: and one beyond its :class:`RateLimit`.
DROP_UNRECORDABLE: Final = "unrecordable"
DROP_RATE_LIMITED: Final = "rate_limited"
#: Every reason a record is dropped for: the closed set of the server's drop metric labels.
DROP_REASONS: Final = (DROP_BUFFER_FULL, DROP_CLOSED, DROP_UNRECORDABLE, DROP_RATE_LIMITED)

SEGMENT_PREFIX: Final = "events-"
SEGMENT_SUFFIX: Final = ".jsonl"

# One shared encoder: json.dumps() with non-default options builds a new encoder on every call.
# allow_nan=False: NaN/Infinity are not JSON and break strict consumers (jq, Spark, BigQuery).
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC

# Logs that are still open, for the fork and interpreter-exit hooks below.
_LIVE: weakref.WeakSet[EventLog] = weakref.WeakSet()


class EventLog:
    """Append-only JSON-lines event log with a group-commit writer thread.

    Thread-safe; one instance per process (create it in each worker *after* forking: a log
    inherited through ``fork()`` is closed in the child). See the module docstring.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int = 64 * MiB,
        max_segments: int | None = None,
        retention_s: float | None = None,
        retention_check_s: float = 3600.0,
        commit_interval_s: float = 0.05,
        buffer_max_events: int = 100_000,
        on_drop: Callable[[int, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if segment_max_bytes < 1:
            raise ValueError("segment_max_bytes must be >= 1")
        if max_segments is not None and max_segments < 1:
            raise ValueError("max_segments must be >= 1 or None")
        if retention_s is not None and not (retention_s > 0 and math.isfinite(retention_s)):
            raise ValueError("retention_s must be a finite number > 0 or None")
        if not (retention_check_s > 0 and math.isfinite(retention_check_s)):
            raise ValueError("retention_check_s must be a finite number > 0")
        if not commit_interval_s > 0:
            raise ValueError("commit_interval_s must be > 0")
        if buffer_max_events < 1:
            raise ValueError("buffer_max_events must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_max_bytes = segment_max_bytes
        self.max_segments = max_segments
        self.retention_s = retention_s
        self.retention_check_s = retention_check_s
        self.commit_interval_s = commit_interval_s
        self.buffer_max_events = buffer_max_events
        self._on_drop = on_drop
        self._clock = clock
        # Retention compares files' mtimes, which the filesystem stamps in real time: an
        # accelerated or fixed ``clock`` (the simulator's, a test server's) must not age them.
        self._wall_clock = wall_clock
        self._pid = os.getpid()

        # Shared state, guarded by _lock.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: deque[bytes] = deque()
        self._closed = False  # append() refuses
        self._closed_reason = "closed"
        self._stopping = False  # writer: final commit, then exit
        self._flush_requested = False
        self._next_seq = 0
        self._appended = 0
        self._written = 0
        self.dropped_total = 0
        self._drops_unreported = 0
        self._attempts_started = 0
        self._attempts_done = 0
        self._last_error: Exception | None = None
        self._segments_created = 0

        # Writer-thread state.
        self._fd: int | None = None
        self._seg_path: Path | None = None
        self._seg_size = 0  # bytes written and fsynced to the open segment
        self._seg_counter = 0
        self._last_name_time = 0.0
        self._failing = False
        self._next_expiry_check = -math.inf  # wall clock; the first writer iteration prunes

        # File operations, replaceable by tests to simulate a full or failing disk.
        self._os_open: Callable[[Path, int, int], int] = os.open
        self._os_write: Callable[[int, memoryview], int] = os.write
        self._os_fsync: Callable[[int], None] = os.fsync
        self._os_ftruncate: Callable[[int, int], None] = os.ftruncate

        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # -- request path ----------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> None:
        """Queue one record; adds ``ts`` and ``seq`` unless present. Never touches the disk.

        Raises TypeError for values JSON cannot represent (and ValueError for NaN/Infinity
        and unencodable strings), RuntimeError after :meth:`close`. Disk trouble never raises.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"event log is {self._closed_reason}")
            rec: dict[str, Any] = {}
            if "ts" not in record:
                rec["ts"] = self._clock()
            assign_seq = "seq" not in record
            if assign_seq:
                rec["seq"] = self._next_seq
            rec.update(record)
            line = (_ENCODER.encode(rec) + "\n").encode("utf-8")
            if assign_seq:
                self._next_seq += 1
            pending = self._pending
            if len(pending) >= self.buffer_max_events:
                pending.popleft()
                self.dropped_total += 1
                self._drops_unreported += 1
            pending.append(line)
            self._appended += 1

    # -- blocking control ------------------------------------------------------------------

    def flush(self) -> None:
        """Block until everything appended so far is written and fsynced (or dropped).

        Raises OSError if the writer's attempt fails; the events stay queued for retry. Blocks
        the calling thread: from asyncio, call it through ``loop.run_in_executor``.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() called from the event log writer thread (on_drop?)")
        with self._cond:
            request = self._attempts_started
            self._flush_requested = True
            self._cond.notify_all()
            while self._attempts_done <= request:
                if not self._thread.is_alive():
                    return
                self._cond.wait(0.5)
            err = self._last_error
        if err is not None:
            if isinstance(err, OSError):
                raise OSError(err.errno, f"event log write failed: {err.strerror or err}") from err
            raise OSError(errno.EIO, f"event log write failed: {err!r}") from err

    def close(self) -> None:
        """Write everything, stop the writer thread. Idempotent; later appends raise.

        If the disk still fails at this point the remaining events are dropped and reported
        through ``on_drop(n, "closed")``; close() itself does not raise for disk state.
        """
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        _LIVE.discard(self)

    def stats(self) -> dict[str, Any]:
        """Counters: appended, written, dropped, pending, segments (created by this log)."""
        with self._lock:
            err = self._last_error
            return {
                "appended": self._appended,
                "written": self._written,
                "dropped": self.dropped_total,
                "pending": self._appended - self._written - self.dropped_total,
                "segments": self._segments_created,
                "last_error": None if err is None else str(err),
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLog({str(self.directory)!r}, closed={self._closed})"

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.commit_interval_s
        next_commit = time.monotonic() + interval
        while True:
            with self._cond:
                while not (self._stopping or self._flush_requested):
                    timeout = next_commit - time.monotonic()
                    if timeout <= 0:
                        break
                    self._cond.wait(timeout)
                stopping = self._stopping
                self._flush_requested = False
                self._attempts_started += 1
                attempt = self._attempts_started
                batch = self._pending
                self._pending = deque()
            next_commit = time.monotonic() + interval

            had_work = bool(batch)
            written, err = self._write_batch(batch) if had_work else (0, None)

            reports: list[tuple[int, str]] = []
            with self._cond:
                self._written += written
                if err is not None:
                    # Unwritten events go back in front of the ones appended meanwhile; keep
                    # the newest buffer_max_events.
                    batch.extend(self._pending)
                    self._pending = batch
                    overflow = len(batch) - self.buffer_max_events
                    if overflow > 0:
                        for _ in range(overflow):
                            batch.popleft()
                        self.dropped_total += overflow
                        self._drops_unreported += overflow
                if self._drops_unreported:
                    reports.append((self._drops_unreported, DROP_BUFFER_FULL))
                    self._drops_unreported = 0
                if stopping and self._pending:
                    lost = len(self._pending)
                    self._pending.clear()
                    self.dropped_total += lost
                    reports.append((lost, DROP_CLOSED))
                self._last_error = err
            if had_work:
                self._note_outcome(err, written)
            for count, reason in reports:
                self._report_drop(count, reason)
            if self.retention_s is not None and not stopping:
                self._prune_expired(periodic=True)
            with self._cond:
                self._attempts_done = attempt
                self._cond.notify_all()
            if stopping:
                self._close_segment()
                return

    def _note_outcome(self, err: Exception | None, written: int) -> None:
        if err is not None and not self._failing:
            self._failing = True
            event(
                log,
                "event_log_write_failed",
                logging.ERROR,
                directory=str(self.directory),
                error=str(err),
                buffering_up_to=self.buffer_max_events,
            )
        elif err is None and self._failing:
            self._failing = False
            event(
                log,
                "event_log_recovered",
                logging.WARNING,
                directory=str(self.directory),
                written=written,
            )

    def _report_drop(self, count: int, reason: str) -> None:
        if self._on_drop is None:
            event(
                log,
                "event_log_dropped",
                logging.WARNING,
                directory=str(self.directory),
                count=count,
                reason=reason,
            )
            return
        try:
            self._on_drop(count, reason)
        except Exception:
            event(log, "event_log_on_drop_failed", logging.ERROR, exc_info=True)

    def _write_batch(self, batch: deque[bytes]) -> tuple[int, Exception | None]:
        """Write and fsync ``batch``, rotating segments as needed.

        Removes the written lines from the left of ``batch``; returns how many, and the error
        that stopped it (None when all were written).
        """
        written = 0
        limit = self.segment_max_bytes
        while batch:
            try:
                if self._fd is None:
                    self._open_segment()
            except Exception as e:
                return written, e
            room = limit - self._seg_size
            total = sum(map(len, batch))
            if total <= room:
                count = len(batch)
            else:
                count, size = 0, 0
                for line in batch:
                    if size + len(line) > room:
                        break
                    size += len(line)
                    count += 1
                if count == 0:
                    if self._seg_size > 0:
                        self._close_segment()  # full: rotate, never split a line
                        continue
                    count = 1  # a single line larger than a segment gets a segment of its own
            data = (
                b"".join(batch) if count == len(batch) else b"".join(itertools.islice(batch, count))
            )
            err, durable = self._write_chunk(data)
            if err is None:
                durable = count
            elif durable:
                durable = _complete_lines(batch, durable)
            for _ in range(durable):
                batch.popleft()
            written += durable
            if err is not None:
                return written, err
            if self._seg_size >= limit:
                self._close_segment()
        return written, None

    def _write_chunk(self, data: bytes) -> tuple[Exception | None, int]:
        """One write() + one fsync(). On error, undo the partial write by truncating the
        segment back to its committed size; if even that fails, abandon the segment and
        return how many bytes did land (their complete lines count as written, so that the
        retry in the next segment does not duplicate them)."""
        fd = self._fd
        assert fd is not None
        done = 0
        try:
            view = memoryview(data)
            while done < len(data):
                n = self._os_write(fd, view[done:])
                if n <= 0:
                    raise OSError(errno.EIO, "write() wrote nothing")
                done += n
            self._os_fsync(fd)
        except Exception as e:
            try:
                self._os_ftruncate(fd, self._seg_size)
            except Exception as te:
                event(
                    log,
                    "event_log_segment_abandoned",
                    logging.ERROR,
                    segment=str(self._seg_path),
                    error=str(te),
                )
                self._seg_size += done  # keeps the file: its complete lines count as written
                self._close_segment()
                return e, done
            return e, 0
        self._seg_size += len(data)
        return None, len(data)

    def _open_segment(self) -> None:
        now = max(self._clock(), self._last_name_time)  # names sort in creation order
        self._last_name_time = now
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        while True:
            self._seg_counter += 1
            name = f"{SEGMENT_PREFIX}{stamp}-{self._pid}-{self._seg_counter:06d}{SEGMENT_SUFFIX}"
            path = self.directory / name
            try:
                fd = self._os_open(path, _OPEN_FLAGS, 0o644)
            except FileExistsError:
                continue
            except FileNotFoundError:
                # The directory was removed under us: recreate it, else fail this attempt.
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = self._os_open(path, _OPEN_FLAGS, 0o644)
            break
        # Marks the segment active: pruning (ours or another process's) skips locked files.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        _fsync_dir(self.directory)  # the new directory entry survives a power cut
        self._fd, self._seg_path, self._seg_size = fd, path, 0
        with self._lock:
            self._segments_created += 1
        if self.max_segments is not None:
            self._prune(self.max_segments, name)
        if self.retention_s is not None:
            self._prune_expired(periodic=False)

    def _close_segment(self) -> None:
        fd, path, size = self._fd, self._seg_path, self._seg_size
        self._fd, self._seg_path, self._seg_size = None, None, 0
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(fd)
        if size == 0 and path is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # opened but never written (writes failed)

    def _prune(self, keep: int, current: str) -> None:
        """Delete the oldest segments in the directory beyond ``keep``.

        Covers every process's segments (plain and gzip'd) but never one that is still being
        written (flock'ed by its writer) nor one newer than our own current segment.
        """
        try:
            names = sorted(n for n in os.listdir(self.directory) if _is_segment_name(n))
        except OSError as e:
            self._prune_failed(e)
            return
        excess = len(names) - keep
        for name in names:
            if excess <= 0 or name >= current:
                break
            if _delete_if_inactive(self.directory / name) != "kept":
                excess -= 1

    def _prune_failed(self, e: Exception) -> None:
        event(
            log,
            "event_log_prune_failed",
            logging.WARNING,
            directory=str(self.directory),
            error=str(e) or repr(e),
        )

    def _prune_expired(self, *, periodic: bool) -> None:
        """Writer thread: delete the finished segments last written (mtime) more than
        ``retention_s`` before the wall clock says it is now; ``periodic``: only if the
        last pass is ``retention_check_s`` old. Logs what it freed; never raises."""
        retention_s = self.retention_s
        assert retention_s is not None
        try:
            now = self._wall_clock()
            if periodic and now < self._next_expiry_check:
                return
            self._next_expiry_check = now + self.retention_check_s
            deleted, freed = _delete_older_than(self.directory, now - retention_s, self._seg_path)
        except Exception as e:
            self._prune_failed(e)
            return
        if deleted:
            event(
                log,
                "event_log_pruned",
                directory=str(self.directory),
                segments=deleted,
                bytes=freed,
                retention_days=retention_s / 86400,
            )

    def _after_fork_in_child(self) -> None:
        # The writer thread does not exist in the child and the lock may be held by it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = True
        self._closed_reason = "inherited through fork (create one EventLog per process)"
        self._pending = deque()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _complete_lines(batch: deque[bytes], nbytes: int) -> int:
    """How many lines at the left of ``batch`` fit entirely in the first ``nbytes`` bytes."""
    count, size = 0, 0
    for line in batch:
        size += len(line)
        if size > nbytes:
            break
        count += 1
    return count


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems do not support it; the data itself is still fsynced
    finally:
        os.close(dfd)


def _is_segment_name(name: str) -> bool:
    return name.startswith(SEGMENT_PREFIX) and (
        name.endswith(SEGMENT_SUFFIX) or name.endswith(SEGMENT_SUFFIX + ".gz")
    )


Deletion: TypeAlias = Literal["deleted", "gone", "kept"]


def _delete_if_inactive(path: Path) -> Deletion:
    """Unlink ``path`` unless a writer holds its lock: ``deleted`` (by us), ``gone`` (another
    pruner was first) or ``kept`` (being written, or the unlink failed: logged)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone"
    except OSError as e:
        event(log, "event_log_prune_failed", logging.WARNING, segment=str(path), error=str(e))
        return "kept"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return "kept"  # being written
        try:
            path.unlink()
        except FileNotFoundError:
            return "gone"
        except OSError as e:
            event(log, "event_log_prune_failed", logging.WARNING, segment=str(path), error=str(e))
            return "kept"
        return "deleted"
    finally:
        os.close(fd)


def _delete_older_than(directory: Path, cutoff: float, own: Path | None) -> tuple[int, int]:
    """Delete the segments (plain and gzip'd, of every process) in ``directory`` whose mtime
    is before ``cutoff``, except ``own`` and any still being written (flock'ed). A file
    another pruner removes meanwhile is skipped. Returns how many we deleted, and their bytes."""
    with os.scandir(directory) as entries:
        candidates = [e for e in entries if _is_segment_name(e.name)]
    deleted = freed = 0
    for entry in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = Path(entry.path)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff or path == own:
            continue
        if _delete_if_inactive(path) == "deleted":
            deleted += 1
            freed += st.st_size
    return deleted, freed


def _close_all_at_exit() -> None:
    for event_log in list(_LIVE):
        try:
            event_log.close()
        except Exception:
            event(log, "event_log_close_failed", logging.ERROR, exc_info=True)


def _after_fork_in_child() -> None:
    for event_log in list(_LIVE):
        event_log._after_fork_in_child()
    _LIVE.clear()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)


class RateLimit:
    """A token bucket: lets ``rate`` records a second through on average, up to ``burst`` at
    once after a quiet spell; ``rate=0`` lets none through. For one thread (the event loop)
    on a monotonic ``clock`` (seconds), injectable for tests."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (0 <= rate < math.inf and 0 <= burst < math.inf):
            raise ValueError("rate and burst must be finite numbers >= 0")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def allow(self) -> bool:
        """Whether one more record may pass now (it takes a token if so)."""
        now = self._clock()
        tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False


# -- reading ---------------------------------------------------------------------------------


class EventLogCorruptError(ValueError):
    """A complete line (not a torn tail) that is not a JSON object, or a file named
    ``.jsonl.gz`` that is not gzip-compressed."""


@dataclass
class ReadStats:
    """What :func:`read_events` went through; pass one in to have it filled."""

    files: int = 0
    events: int = 0
    torn_lines: int = 0  # unterminated last lines (crash mid-write), skipped
    invalid_lines: int = 0  # complete but unparsable lines, skipped with skip_invalid=True
    unreadable_dirs: int = 0  # subdirectories that could not be listed (lost+found), skipped
    repeated_files: int = 0  # files named twice (a directory and its subdirectory), read once
    not_gzip_files: int = 0  # files named .gz that are not gzip, skipped with skip_invalid=True


PathArg: TypeAlias = str | os.PathLike[str]


def read_events(
    paths: Iterable[PathArg] | PathArg,
    *,
    stats: ReadStats | None = None,
    skip_invalid: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield the records of segment files, in file order then line order.

    ``paths`` are files (``.jsonl`` or ``.jsonl.gz``) or directories; a directory contributes
    its ``*.jsonl`` and ``*.jsonl.gz`` files in name order (a ``.gz`` whose uncompressed twin
    is still there is skipped), then its subdirectories' the same way, in name order (the
    logs of several instances side by side, as ``vastserver simulate --event-log`` writes);
    a subdirectory that cannot be listed is skipped and counted, and a file reached twice
    (a directory given with its own subdirectory) is read once.
    A file's last line without its newline is a torn write: it is
    skipped and counted in ``stats.torn_lines``. A complete line that is not a JSON object
    (nested too deep to parse included) raises :class:`EventLogCorruptError`, or is counted
    and skipped with ``skip_invalid``; so does a ``.gz`` file that is not gzip at all
    (counted in ``stats.not_gzip_files``), unlike a truncated or damaged gzip stream, whose
    readable part is kept and whose rest counts as one torn line.
    """
    st = stats if stats is not None else ReadStats()
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    seen: set[Path] = set()

    def first_time(file: Path) -> bool:
        key = file.resolve()
        if key in seen:
            st.repeated_files += 1
            return False
        seen.add(key)
        return True

    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for file in _segment_files(path, st):
                if not first_time(file):
                    continue
                try:
                    yield from _read_file(file, st, skip_invalid)
                except FileNotFoundError:
                    continue  # pruned or compressed while we were reading the directory
        elif first_time(path):
            yield from _read_file(path, st, skip_invalid)


def _segment_files(directory: Path, st: ReadStats, depth: int = 0) -> list[Path]:
    entries = list(directory.iterdir())
    names = {
        p.name
        for p in entries
        if (p.name.endswith(SEGMENT_SUFFIX) or p.name.endswith(SEGMENT_SUFFIX + ".gz"))
        and p.is_file()  # not a directory (or a dangling link) that happens to be named so
    }
    out = [
        directory / n
        for n in sorted(names)
        if not (n.endswith(".gz") and n[: -len(".gz")] in names)
    ]
    if depth < _MAX_DEPTH:
        for sub in sorted(p for p in entries if p.is_dir() and not p.is_symlink()):
            try:
                out += _segment_files(sub, st, depth + 1)
            except OSError:  # unreadable (a root-only lost+found) or gone meanwhile
                st.unreadable_dirs += 1
    return out


_MAX_DEPTH = 4
"""How deep directories are searched for segments (no symlinked directories: no loops)."""


def new_log_problem(directory: Path) -> str | None:
    """Why a tool that writes a log of its own (``gen-events``, ``simulate --event-log``)
    must not write it into ``directory``, or None when it may: not a directory, or one that
    already holds event segments, itself or in a subdirectory. Readers read them all as one
    log, so a second run there would mix two worlds (two runs of the same hours)."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} is not a directory"
    if not directory.is_dir():
        return None
    try:
        found = _segment_files(directory, ReadStats())
    except OSError as e:
        return f"cannot read {directory}: {e.strerror or e}"
    if found:
        return f"{directory} already holds event segments; use an empty directory"
    return None


_GZIP_MAGIC: Final = b"\x1f\x8b"


def _read_file(path: Path, st: ReadStats, skip_invalid: bool) -> Iterator[dict[str, Any]]:
    gz = path.name.endswith(".gz")
    with open(path, "rb") as raw_file:
        if gz:
            head = raw_file.read(len(_GZIP_MAGIC))
            # An empty file or a lone first byte is a gzip file cut short (torn), not another
            # format: a plain log renamed .gz would otherwise read as one torn line.
            if head != _GZIP_MAGIC[: len(head)]:
                if not skip_invalid:
                    raise EventLogCorruptError(f"{path}: named .gz but not gzip-compressed")
                st.not_gzip_files += 1
                return
            raw_file.seek(0)
        st.files += 1
        if not gz:
            yield from _read_lines(raw_file, path, gz, st, skip_invalid)
            return
        with gzip.GzipFile(fileobj=raw_file, mode="rb") as f:
            yield from _read_lines(f, path, gz, st, skip_invalid)


def _read_lines(
    f: Iterable[bytes], path: Path, gz: bool, st: ReadStats, skip_invalid: bool
) -> Iterator[dict[str, Any]]:
    lineno = 0
    try:
        for raw in f:
            lineno += 1
            if not raw.endswith(b"\n"):
                st.torn_lines += 1  # only the last line can lack its newline
                break
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):  # nested deeper than the parser goes
                record = None
            if not isinstance(record, dict):
                if not skip_invalid:
                    raise EventLogCorruptError(f"{path}:{lineno}: not a JSON object")
                st.invalid_lines += 1
                continue
            st.events += 1
            yield record
    except (EOFError, gzip.BadGzipFile, zlib.error):
        if not gz:
            raise
        st.torn_lines += 1  # truncated or damaged gzip stream: keep what decompressed
