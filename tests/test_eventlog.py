"""The durable event log: format, group commit, rotation, kill -9, disk-full behaviour, reader."""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vastserver.eventlog import (
    DROP_BUFFER_FULL,
    DROP_CLOSED,
    EventLog,
    EventLogCorruptError,
    ReadStats,
    read_events,
)

ROOT = Path(__file__).resolve().parent.parent
FIXED_TS = 1_795_636_800.25  # 2026-11-25T20:00:00.25Z


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("events-*.jsonl"))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def make_log(tmp_path: Path) -> Iterator[Callable[..., EventLog]]:
    logs: list[EventLog] = []

    def make(**kwargs: Any) -> EventLog:
        kwargs.setdefault("commit_interval_s", 0.01)
        event_log = EventLog(kwargs.pop("directory", tmp_path / "log"), **kwargs)
        logs.append(event_log)
        return event_log

    yield make
    for event_log in logs:
        event_log.close()


class FaultyDisk:
    """Replaces the log's file operations; ``mode`` selects how write() fails."""

    def __init__(self, event_log: EventLog) -> None:
        self.mode: str | None = None  # None, "enospc", "partial", "fsync"
        self.truncate_fails = False
        self.writes = 0
        self.partial_calls = 0
        self.truncates = 0
        event_log._os_write = self.write
        event_log._os_fsync = self.fsync
        event_log._os_ftruncate = self.ftruncate

    def write(self, fd: int, data: memoryview) -> int:
        self.writes += 1
        if self.mode == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.mode == "partial":
            # Every other call, half of the bytes land (splitting a line); the next call finds
            # the disk full.
            self.partial_calls += 1
            if self.partial_calls % 2:
                cut = max(1, len(data) // 2)
                if data[cut - 1] == ord("\n") and cut > 1:
                    cut -= 1  # always inside a line
                return os.write(fd, data[:cut])
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.mode == "fsync":
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self.truncates += 1
        if self.truncate_fails:
            raise OSError(errno.EROFS, "Read-only file system")
        os.ftruncate(fd, length)


# -- format and ordering --------------------------------------------------------------------


def test_round_trip_adds_ts_and_seq(make_log: Callable[..., EventLog], tmp_path: Path) -> None:
    event_log = make_log(clock=lambda: FIXED_TS)
    records = [
        {
            "type": "beacon",
            "i": i,
            "name": "Café \u2028 ünïcode \n ☃",  # U+2028 must not split a line on reading
            "nested": {"list": [1, 2.5, None, True], "empty": {}},
        }
        for i in range(2000)
    ]
    for record in records:
        event_log.append(record)
    event_log.flush()

    back = list(read_events([tmp_path / "log"]))
    assert [r["seq"] for r in back] == list(range(2000))
    assert all(r["ts"] == FIXED_TS for r in back)
    assert [{k: v for k, v in r.items() if k not in ("seq", "ts")} for r in back] == records

    raw = segments(tmp_path / "log")[0].read_bytes()
    first = raw.split(b"\n", 1)[0].decode()
    assert first.startswith('{"ts":1795636800.25,"seq":0,"type":"beacon"')
    assert ", " not in first and ": " not in first  # compact separators
    assert "Café" in first and "☃" in first  # ensure_ascii=False


def test_ts_and_seq_kept_when_present(make_log: Callable[..., EventLog], tmp_path: Path) -> None:
    event_log = make_log(clock=lambda: FIXED_TS)
    event_log.append({"ts": 1.5, "seq": 99, "a": 1})
    event_log.append({"a": 2})
    event_log.close()
    back = list(read_events(tmp_path / "log"))
    assert back == [{"ts": 1.5, "seq": 99, "a": 1}, {"ts": FIXED_TS, "seq": 0, "a": 2}]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (object(), TypeError),
        ({1, 2}, TypeError),
        (b"bytes", TypeError),
        ({(1, 2): "tuple key"}, TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("\ud800", ValueError),  # lone surrogate: not encodable as UTF-8
    ],
)
def test_non_json_values_rejected_at_append(
    make_log: Callable[..., EventLog], tmp_path: Path, value: object, error: type[Exception]
) -> None:
    event_log = make_log()
    with pytest.raises(error):
        event_log.append({"bad": value})
    event_log.append({"good": 1})
    event_log.close()
    back = list(read_events(tmp_path / "log"))
    assert [(r["seq"], r["good"]) for r in back] == [(0, 1)]  # no seq consumed by the reject
    assert event_log.stats()["appended"] == 1


def test_concurrent_appenders_keep_seq_in_file_order(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    event_log = make_log()

    def worker(t: int) -> None:
        for i in range(2000):
            event_log.append({"t": t, "i": i})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    event_log.close()
    back = list(read_events(tmp_path / "log"))
    assert [r["seq"] for r in back] == list(range(8000))
    for t in range(4):
        assert [r["i"] for r in back if r["t"] == t] == list(range(2000))


# -- segments ---------------------------------------------------------------------------------


def test_rotation_by_size_never_splits_lines(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    event_log = make_log(segment_max_bytes=1000)
    for i in range(500):
        event_log.append({"i": i, "pad": "x" * (i % 50)})
        if i % 100 == 0:
            event_log.flush()  # rotation both inside one commit and across commits
    event_log.append({"i": 500, "pad": "y" * 3000})  # larger than a segment: gets its own
    event_log.append({"i": 501})
    event_log.close()

    files = segments(tmp_path / "log")
    assert len(files) > 10
    pid = os.getpid()
    for f in files:
        assert f.name.startswith("events-") and f"-{pid}-" in f.name
        data = f.read_bytes()
        assert data.endswith(b"\n")
        assert len(data) <= 1000 or data.count(b"\n") == 1
        for line in data.splitlines():
            json.loads(line)
    assert [r["i"] for r in read_events(tmp_path / "log")] == list(range(502))
    assert event_log.stats()["segments"] == len(files)


def test_segment_names_sort_in_write_order(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    # A frozen clock: many segments share one timestamp; the counter keeps them ordered.
    event_log = make_log(segment_max_bytes=100, clock=lambda: FIXED_TS)
    for i in range(300):
        event_log.append({"i": i})
    event_log.close()
    files = segments(tmp_path / "log")
    assert len(files) > 20
    assert files[0].name == f"events-20261125T200000-{os.getpid()}-000001.jsonl"
    assert [r["i"] for r in read_events(tmp_path / "log")] == list(range(300))


def test_max_segments_prunes_oldest(make_log: Callable[..., EventLog], tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    # Another worker's segment that is still being written (it holds the lock): never deleted.
    foreign = directory / "events-20000101T000000-1-000001.jsonl"
    foreign.write_text('{"other":1}\n')
    foreign_fd = os.open(foreign, os.O_RDONLY)
    fcntl.flock(foreign_fd, fcntl.LOCK_SH)
    # An old finished (and compressed) segment: deleted like ours.
    old = directory / "events-20000101T000000-2-000001.jsonl.gz"
    old.write_bytes(gzip.compress(b'{"old":1}\n'))
    try:
        event_log = make_log(directory=directory, segment_max_bytes=200, max_segments=3)
        for i in range(200):
            event_log.append({"i": i})
        event_log.close()
        files = sorted(p.name for p in directory.iterdir())
        assert foreign.name in files
        assert old.name not in files
        assert len(files) == 3
        ours = [r["i"] for r in read_events(directory) if "i" in r]
        assert ours and ours == list(range(ours[0], 200))  # a suffix: the newest survive
    finally:
        os.close(foreign_fd)


def test_two_logs_in_one_directory_never_collide(tmp_path: Path) -> None:
    # Same pid and a frozen clock: the names would collide; O_EXCL makes the second pick another.
    a = EventLog(tmp_path, clock=lambda: FIXED_TS, commit_interval_s=0.01)
    b = EventLog(tmp_path, clock=lambda: FIXED_TS, commit_interval_s=0.01)
    for i in range(100):
        a.append({"w": "a", "i": i})
        b.append({"w": "b", "i": i})
    a.close()
    b.close()
    assert len(segments(tmp_path)) == 2
    back = list(read_events(tmp_path))
    for w in "ab":
        assert [r["i"] for r in back if r["w"] == w] == list(range(100))


# -- group commit and durability -------------------------------------------------------------


def test_group_commit_without_flush(make_log: Callable[..., EventLog], tmp_path: Path) -> None:
    event_log = make_log(commit_interval_s=0.02)
    for i in range(300):
        event_log.append({"i": i})

    def all_on_disk() -> bool:
        return [r["i"] for r in read_events(tmp_path / "log")] == list(range(300))

    wait_for(all_on_disk)
    # The counters follow the fsync, a moment after the data is readable.
    wait_for(lambda: event_log.stats()["written"] == 300)
    assert event_log.stats()["pending"] == 0


KILL_CHILD = r"""
import sys, time
from pathlib import Path
from vastserver.eventlog import EventLog

log = EventLog(Path(sys.argv[1]), commit_interval_s=float(sys.argv[2]))
start = next_report = time.monotonic()
i = 0
while True:
    log.append({"i": i, "pad": "event payload"})
    now = time.monotonic()
    if now >= next_report:
        print(i, flush=True)  # i is appended (queued) by now
        next_report = now + 0.1
        if now - start > 30:  # the parent went away
            break
    i += 1
"""


def test_kill_9_loses_at_most_the_last_commit_interval(tmp_path: Path) -> None:
    interval = 0.05
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(tmp_path), str(interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    reports: list[tuple[float, int]] = []  # (when we read it, i appended by then)
    try:
        assert proc.stdout is not None
        while not reports or reports[-1][0] - reports[0][0] < 1.0:
            line = proc.stdout.readline()
            if not line:
                _, err = proc.communicate()
                pytest.fail(f"child exited early: {err.decode()}")
            reports.append((time.monotonic(), int(line)))
        kill_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    margin = 2 * interval + 0.25
    guaranteed = max(i for t, i in reports if t <= kill_at - margin)
    stats = ReadStats()
    on_disk = [r["i"] for r in read_events(tmp_path, stats=stats)]
    assert stats.torn_lines <= 1
    assert on_disk == list(range(len(on_disk))), "not a gap-free prefix"
    assert len(on_disk) > guaranteed, f"lost {guaranteed + 1 - len(on_disk)} committed events"


# -- failing disk -----------------------------------------------------------------------------


def test_disk_full_buffers_drops_oldest_and_recovers_in_order(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    drops: list[tuple[int, str]] = []
    event_log = make_log(buffer_max_events=10, on_drop=lambda n, r: drops.append((n, r)))
    disk = FaultyDisk(event_log)
    for i in range(5):
        event_log.append({"i": i})
    event_log.flush()

    disk.mode = "enospc"
    for i in range(5, 30):
        event_log.append({"i": i})  # never raises, never blocks
    with pytest.raises(OSError) as info:
        event_log.flush()
    assert info.value.errno == errno.ENOSPC
    assert event_log.dropped_total == 15
    assert sum(n for n, _ in drops) == 15
    assert {r for _, r in drops} == {DROP_BUFFER_FULL}
    stats = event_log.stats()
    assert stats["pending"] == 10 and stats["written"] == 5 and stats["dropped"] == 15
    assert "No space left" in stats["last_error"]
    with pytest.raises(OSError):
        event_log.flush()  # still failing: retried, still queued
    assert [r["i"] for r in read_events(tmp_path / "log")] == list(range(5))

    disk.mode = None
    event_log.flush()
    event_log.append({"i": 30})
    event_log.flush()
    expected = [*range(5), *range(20, 31)]
    assert [r["i"] for r in read_events(tmp_path / "log")] == expected
    assert [r["seq"] for r in read_events(tmp_path / "log")] == expected
    assert event_log.stats()["pending"] == 0
    assert event_log.stats()["last_error"] is None


def test_disk_recovers_without_flush(make_log: Callable[..., EventLog], tmp_path: Path) -> None:
    event_log = make_log()
    disk = FaultyDisk(event_log)
    disk.mode = "enospc"
    for i in range(50):
        event_log.append({"i": i})
    wait_for(lambda: disk.writes >= 3)  # retried every interval
    assert event_log.stats()["pending"] == 50
    disk.mode = None
    wait_for(lambda: event_log.stats()["written"] == 50)
    assert [r["i"] for r in read_events(tmp_path / "log")] == list(range(50))


@pytest.mark.parametrize("mode", ["partial", "fsync"])
def test_failed_write_is_rolled_back(
    make_log: Callable[..., EventLog], tmp_path: Path, mode: str
) -> None:
    event_log = make_log()
    disk = FaultyDisk(event_log)
    for i in range(10):
        event_log.append({"i": i})
    event_log.flush()
    disk.mode = mode
    for i in range(10, 40):
        event_log.append({"i": i})
    with pytest.raises(OSError):
        event_log.flush()
    assert disk.truncates >= 1
    disk.mode = None
    event_log.flush()
    stats = ReadStats()
    assert [r["i"] for r in read_events(tmp_path / "log", stats=stats)] == list(range(40))
    assert stats.torn_lines == 0 and stats.invalid_lines == 0
    assert len(segments(tmp_path / "log")) == 1


@pytest.mark.parametrize("committed", [0, 10])
def test_untruncatable_segment_is_abandoned_without_duplicates(
    make_log: Callable[..., EventLog], tmp_path: Path, committed: int
) -> None:
    # E.g. the filesystem was remounted read-only: the torn write cannot be undone. The
    # complete lines that landed count as written; the rest go to a new segment.
    event_log = make_log(commit_interval_s=3600)  # one write attempt per flush()
    disk = FaultyDisk(event_log)
    for i in range(committed):
        event_log.append({"i": i})
    event_log.flush()
    disk.mode = "partial"
    disk.truncate_fails = True
    for i in range(committed, 40):
        event_log.append({"i": i})
    with pytest.raises(OSError):
        event_log.flush()
    disk.mode = None
    event_log.flush()
    stats = ReadStats()
    assert [r["i"] for r in read_events(tmp_path / "log", stats=stats)] == list(range(40))
    assert stats.torn_lines == 1  # the torn tail of the abandoned segment
    assert len(segments(tmp_path / "log")) == 2


def test_open_failure_is_retried(make_log: Callable[..., EventLog], tmp_path: Path) -> None:
    event_log = make_log()
    real_open = event_log._os_open
    failing = True

    def flaky_open(path: Path, flags: int, mode: int) -> int:
        if failing:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode)

    event_log._os_open = flaky_open
    event_log.append({"i": 0})
    with pytest.raises(OSError):
        event_log.flush()
    failing = False
    event_log.append({"i": 1})
    event_log.flush()
    assert [r["i"] for r in read_events(tmp_path / "log")] == [0, 1]


def test_directory_removed_at_runtime_is_recreated(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    event_log = make_log(segment_max_bytes=1)  # one line per segment: none stays open
    event_log.append({"i": 0})
    event_log.flush()
    for f in segments(tmp_path / "log"):
        f.unlink()
    (tmp_path / "log").rmdir()
    for i in range(1, 10):
        event_log.append({"i": i})
    event_log.flush()
    assert [r["i"] for r in read_events(tmp_path / "log")] == list(range(1, 10))


def test_close_with_failing_disk_reports_lost_events(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    drops: list[tuple[int, str]] = []
    event_log = make_log(on_drop=lambda n, r: drops.append((n, r)))
    FaultyDisk(event_log).mode = "enospc"
    for i in range(7):
        event_log.append({"i": i})
    event_log.close()  # does not raise
    assert drops == [(7, DROP_CLOSED)]
    assert event_log.stats()["dropped"] == 7
    assert segments(tmp_path / "log") == []  # the empty segment is removed


def test_on_drop_errors_do_not_stop_the_writer(
    make_log: Callable[..., EventLog], tmp_path: Path
) -> None:
    def broken(count: int, reason: str) -> None:
        raise RuntimeError("metrics down")

    event_log = make_log(buffer_max_events=2, on_drop=broken)
    disk = FaultyDisk(event_log)
    disk.mode = "enospc"
    for i in range(5):
        event_log.append({"i": i})
    with pytest.raises(OSError):
        event_log.flush()
    disk.mode = None
    event_log.flush()
    assert [r["i"] for r in read_events(tmp_path / "log")] == [3, 4]


# -- lifecycle --------------------------------------------------------------------------------


def test_close_flushes_and_rejects_later_appends(tmp_path: Path) -> None:
    event_log = EventLog(tmp_path, commit_interval_s=3600)  # only close() can write
    for i in range(100):
        event_log.append({"i": i})
    event_log.close()
    assert [r["i"] for r in read_events(tmp_path)] == list(range(100))
    with pytest.raises(RuntimeError):
        event_log.append({"i": 100})
    event_log.close()  # idempotent
    event_log.flush()  # nothing to do
    assert event_log.closed
    assert event_log.stats() == {
        "appended": 100,
        "written": 100,
        "dropped": 0,
        "pending": 0,
        "segments": 1,
        "last_error": None,
    }


def test_flush_is_prompt_with_long_interval(tmp_path: Path) -> None:
    with EventLog(tmp_path, commit_interval_s=3600) as event_log:
        event_log.append({"i": 0})
        event_log.flush()
        assert [r["i"] for r in read_events(tmp_path)] == [0]
    with pytest.raises(RuntimeError):
        event_log.append({"i": 1})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_log_inherited_through_fork_is_closed_in_the_child(
    make_log: Callable[..., EventLog],
) -> None:
    event_log = make_log()
    event_log.append({"i": 0})
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            event_log.append({"i": 1})
        except RuntimeError:
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    event_log.append({"i": 2})  # the parent is unaffected
    event_log.flush()


# -- reader -----------------------------------------------------------------------------------


def test_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    seg = tmp_path / "events-20261125T200000-1-000001.jsonl"
    seg.write_bytes(b'{"i":0}\n{"i":1}\n{"i":2,"pa')
    stats = ReadStats()
    assert [r["i"] for r in read_events([seg], stats=stats)] == [0, 1]
    assert stats == ReadStats(files=1, events=2, torn_lines=1, invalid_lines=0)
    # Even a complete object without its newline was not committed: skipped too.
    seg.write_bytes(b'{"i":0}\n{"i":1}')
    assert [r["i"] for r in read_events([seg])] == [0]


def test_reader_rejects_corruption_before_the_end(tmp_path: Path) -> None:
    seg = tmp_path / "events-20261125T200000-1-000001.jsonl"
    seg.write_bytes(b'{"i":0}\n{"i":1,\n[1,2]\n{"i":3}\n')
    with pytest.raises(EventLogCorruptError, match=r":2: "):
        list(read_events([seg]))
    stats = ReadStats()
    assert [r["i"] for r in read_events([seg], stats=stats, skip_invalid=True)] == [0, 3]
    assert stats.invalid_lines == 2


def test_reader_directories_and_gzip(tmp_path: Path) -> None:
    (tmp_path / "events-20261125T200000-1-000001.jsonl.gz").write_bytes(
        gzip.compress(b'{"i":0}\n{"i":1}\n')
    )
    (tmp_path / "events-20261125T200000-1-000002.jsonl").write_bytes(b'{"i":2}\n')
    # Compressed copy next to its original (compression in progress): read once.
    (tmp_path / "events-20261125T200000-1-000002.jsonl.gz").write_bytes(gzip.compress(b'{"i":2}\n'))
    # Truncated gzip stream: what decompresses is kept, the rest counts as torn.
    full = gzip.compress(b"".join(b'{"i":%d}\n' % i for i in range(3, 2000)))
    (tmp_path / "events-20261125T200001-1-000003.jsonl.gz").write_bytes(full[: len(full) // 2])
    # A damaged byte in a gzip stream (zlib.error, a traceback before): read up to it.
    bad = bytearray(gzip.compress(b"".join(b'{"j":%d}\n' % i for i in range(2000))))
    bad[20] ^= 0xFF
    (tmp_path / "events-20261125T200002-1-000004.jsonl.gz").write_bytes(bytes(bad))
    (tmp_path / "notes.txt").write_text("ignored")
    stats = ReadStats()
    got = [r["i"] for r in read_events(tmp_path, stats=stats) if "i" in r]
    assert got[:3] == [0, 1, 2] and got == list(range(len(got)))
    assert stats.files == 4 and stats.torn_lines == 2
    # Files are read in the order given.
    assert [r["i"] for r in read_events([str(next(tmp_path.glob("*-000002.jsonl")))])] == [2]


def _counted_impression(at: str) -> dict[str, Any]:
    """A counted impression beacon record of ad ``a1`` of line item ``li-1`` at 20 CPM."""
    return {
        "type": "beacon",
        "at": at,
        "counted": True,
        "line_item_id": "li-1",
        "ad_serving_id": "a1",
        "event": "impression",
        "price_cpm": 20.0,
    }


def test_report_skips_and_counts_damaged_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged or hand-edited log gives a report of what is readable and says how much
    was skipped, never a traceback."""
    from vastserver.report import main_report

    at = "2026-11-26T12:00:00+00:00"
    good = [
        {
            "type": "decision",
            "at": at,
            "ads": [{"line_item_id": "li-1", "ad_serving_id": "a1", "currency": "EUR"}],
        },
        _counted_impression(at),
    ]
    bad = [
        {"type": "decision", "at": at, "ads": "abc"},
        {"type": "decision", "at": at, "ads": 5},
        {"type": "decision", "at": at, "ads": [None]},
        {"type": "decision", "at": at, "ads": [{"ad_serving_id": ["x"]}]},
        {"type": "decision", "at": at, "ads": [{"ad_serving_id": "a2", "currency": 978}]},
        {
            "type": "beacon",
            "at": at,
            "counted": True,
            "line_item_id": "li-1",
            "event": "impression",
            "price_cpm": "abc",
        },
        {
            "type": "beacon",
            "at": "2026-11-26T13:50:53",
            "counted": True,
            "line_item_id": "li-1",
            "event": "impression",
        },
        {
            "type": "beacon",
            "at": at,
            "counted": True,
            "line_item_id": "li-1",
            "event": "impression",
            "price_cpm": float("nan"),
        },
    ]
    lines = [json.dumps(r) for r in good + bad] + ["not json at all", '{"torn": ']
    (tmp_path / "events-1.jsonl").write_text("\n".join(lines))  # the last line has no \n
    for extra in ([], ["--model"]):
        assert main_report([str(tmp_path), "--json", *extra]) == 0
        doc = json.loads(capsys.readouterr().out)
    # no decision of experiment x in the log: said, exit 2, not a traceback
    assert main_report([str(tmp_path), "--json", "--experiment", "x"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "report: no decision of experiment 'x' in the event log (no decision in it names one)\n"
    )
    assert main_report([str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["decisions"] == 1 and doc["torn_lines"] == 1
    assert doc["invalid_records"] == len(bad) + 1
    (row,) = doc["line_items"]
    assert (row["served"], row["impressions"], row["spend"]) == (1, 1, 0.02)
    assert row["currency"] == "EUR"  # the spend's currency, from the served ads
    assert main_report([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"invalid records skipped: {len(bad) + 1}" in text
    assert "0.02 EUR" in text
    (tmp_path / "events-2.jsonl").mkdir()  # not a segment: skipped
    assert main_report([str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decisions"] == 1


def test_report_counts_a_beacon_counted_again_after_a_crash_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a ``kill -9`` between two saves of the state file the server has lost its
    claims, so a replayed impression is counted (and logged as counted) a second time: the
    report counts each ad's event once, and says how many it read as repeats."""
    from vastserver.report import main_report

    at, later = "2026-11-26T12:00:00+00:00", "2026-11-26T12:05:00+00:00"
    beacon = _counted_impression(at)
    recs = [
        {"type": "decision", "at": at, "ads": [{"line_item_id": "li-1", "ad_serving_id": "a1"}]},
        beacon,
        dict(beacon, event="complete"),
        dict(beacon, at=later),  # the replay, after the restart
        dict(beacon, at=later, counted=False, result="replay"),  # refused: no repeat
        dict(beacon, at=later, ad_serving_id="a2"),  # another ad: counted
    ]
    (tmp_path / "events-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main_report([str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["line_items"]
    assert (row["impressions"], row["completes"], row["spend"]) == (2, 1, 0.04)
    assert doc["repeated_beacons"] == 1
    assert main_report([str(tmp_path)]) == 0
    assert "repeated beacons not counted: 1" in capsys.readouterr().out


def test_report_paces_a_daily_budget_on_the_days_impressions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daily budget's target is for the campaign's local day of the last event: only the
    impressions served that day (by ``served_at``, as the server's daily counter) are held
    against it. The whole log's were (100 a day for three days: a ratio of 4.85, not 1.62)."""
    from datetime import datetime

    from tests.delivery_support import base_catalog
    from vastserver.report import main_report

    cat = base_catalog()
    cat["campaigns"][0]["timezone"] = "America/New_York"
    cat["line_items"][0]["pacing"] = {"delivery": "even", "budget": {"daily_impressions": 100}}
    (tmp_path / "catalog.json").write_text(json.dumps(cat))
    logs = tmp_path / "log"
    logs.mkdir()
    recs = []
    for n in range(300):  # 100 a day at 19:00 New York on 8, 9 and 10 June
        day = ("2026-06-08", "2026-06-09", "2026-06-10")[n // 100]
        recs.append(
            {"type": "beacon", "at": f"{day}T23:00:00+00:00", "event": "impression",
             "counted": True, "line_item_id": "li-a", "ad_serving_id": f"a{n}",
             "price_cpm": 20.0}
        )  # fmt: skip
    # served at 23:59 New York on the 9th, its beacon after midnight: the 9th's
    late = dict(recs[0], at="2026-06-10T04:01:00+00:00", ad_serving_id="late")
    late["served_at"] = int(datetime.fromisoformat("2026-06-10T03:59:00+00:00").timestamp())
    recs.insert(200, late)
    (logs / "events-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main_report([str(logs), "--catalog", str(tmp_path / "catalog.json"), "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out)["line_items"])
    assert row["impressions"] == 301 and row["pacing_impressions"] == 100
    target = row["pacing_target"]
    assert 60 < target < 63 and row["pacing_ratio"] == pytest.approx(100 / target)
    assert main_report([str(logs), "--catalog", str(tmp_path / "catalog.json")]) == 0
    text = capsys.readouterr().out
    assert f"{100 * 100 / target:.1f}%" in text and "campaign's local day" in text


def test_report_on_an_unreadable_log_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vastserver.report as report

    def denied(*args: object, **kw: object) -> Any:
        raise PermissionError(13, "Permission denied", str(tmp_path / "events-1.jsonl"))
        yield  # a generator, like read_events

    monkeypatch.setattr(report, "read_events", denied)
    for extra in ([], ["--model"]):
        assert report.main_report([str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cannot read the event log: [Errno 13] Permission denied")


def test_a_directory_of_instance_logs_reads_them_all(tmp_path: Path) -> None:
    """``simulate --event-log DIR`` writes DIR/instance-0, DIR/instance-1: train and report
    given DIR read every instance's segments (before, a parent directory read nothing)."""
    for i in (1, 0):
        log = EventLog(tmp_path / "events" / f"instance-{i}", clock=lambda: FIXED_TS)
        log.append({"type": "decision", "i": i})
        log.close()
    (tmp_path / "events" / "notes.txt").write_text("not a segment")
    back = list(read_events(tmp_path / "events"))
    assert [r["i"] for r in back] == [0, 1]  # subdirectories in name order
    loop = tmp_path / "events" / "instance-0" / "loop"
    loop.symlink_to(tmp_path / "events", target_is_directory=True)  # not followed
    assert [r["i"] for r in read_events(tmp_path / "events")] == [0, 1]


def test_overlapping_paths_read_once_and_an_unlistable_subdirectory_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in (0, 1):
        log = EventLog(tmp_path / "events" / f"instance-{i}", clock=lambda: FIXED_TS)
        log.append({"type": "decision", "i": i})
        log.close()
    st = ReadStats()
    both = [tmp_path / "events", tmp_path / "events" / "instance-0"]
    assert [r["i"] for r in read_events(both, stats=st)] == [0, 1]
    assert st.repeated_files == 1

    (tmp_path / "events" / "lost+found").mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Any:
        if self.name == "lost+found":  # root-only on a volume of its own
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    st = ReadStats()
    assert [r["i"] for r in read_events(tmp_path / "events", stats=st)] == [0, 1]
    assert st.unreadable_dirs == 1


def test_reader_a_line_nested_too_deep_is_an_invalid_line(tmp_path: Path) -> None:
    """json.loads raises RecursionError, not ValueError, on deep nesting: it escaped as a
    traceback from train and report instead of counting as a line that is not an object."""
    seg = tmp_path / "events-20261125T200000-1-000001.jsonl"
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    seg.write_bytes(b'{"i":0}\n' + deep + b'{"i":2}\n')
    with pytest.raises(EventLogCorruptError, match=r":2: not a JSON object"):
        list(read_events([seg]))
    stats = ReadStats()
    assert [r["i"] for r in read_events([seg], stats=stats, skip_invalid=True)] == [0, 2]
    assert stats.invalid_lines == 1 and stats.events == 2


def test_reader_a_gz_file_that_is_not_gzip_is_named_not_torn(tmp_path: Path) -> None:
    """A plain log named .jsonl.gz read as one "torn line" and nothing else, so training
    said only that there were too few served ads. Now it is an error naming the file, or
    skipped and counted; a gzip file cut short is still read as far as it goes."""
    plain = tmp_path / "events-20261125T200000-1-000001.jsonl.gz"
    plain.write_bytes(b'{"i":0}\n{"i":1}\n')
    with pytest.raises(EventLogCorruptError, match=r"000001\.jsonl\.gz: .*not gzip"):
        list(read_events(tmp_path))
    good = tmp_path / "events-20261125T200000-1-000002.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"i":2}\n'))
    (tmp_path / "events-20261125T200000-1-000003.jsonl.gz").write_bytes(b"")  # just created
    (tmp_path / "events-20261125T200000-1-000004.jsonl.gz").write_bytes(b"\x1f")  # cut short
    stats = ReadStats()
    assert [r["i"] for r in read_events(tmp_path, stats=stats, skip_invalid=True)] == [2]
    assert stats.not_gzip_files == 1 and stats.files == 3 and stats.torn_lines == 1


def test_train_and_report_on_a_deep_line_and_a_file_not_gzip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI side: train fails with exit 1 and a message naming the file (no traceback),
    report skips and counts both and exits 0."""
    from vastserver.ml.train import main_train
    from vastserver.report import main_report

    events = tmp_path / "events"
    events.mkdir()
    rec = {"type": "decision", "at": "2026-11-26T12:00:00+00:00", "ads": []}
    (events / "events-1.jsonl").write_text(
        json.dumps(rec) + "\n" + '{"a":' + "[" * 100_000 + "]" * 100_000 + "}\n"
    )
    out = tmp_path / "model"
    assert main_train(["--events", str(events), "--out", str(out)]) == 1
    assert "events-1.jsonl:2: not a JSON object" in capsys.readouterr().err
    (events / "events-1.jsonl").rename(events / "events-2.jsonl.gz")
    assert main_train(["--events", str(events), "--out", str(out)]) == 1
    assert "events-2.jsonl.gz: named .gz but not gzip-compressed" in capsys.readouterr().err
    (events / "events-1.jsonl").write_text(json.dumps(rec) + "\n" + "[" * 100_000 + "\n")
    assert main_report([str(events), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["decisions"], doc["invalid_records"], doc["not_gzip_files"]) == (1, 1, 1)
    assert "skipped 1 file(s) named .jsonl.gz that are not gzip" in captured.err
    for extra, code in ((["--model"], 0), (["--experiment", "x"], 2)):  # 2: no experiment x
        assert main_report([str(events), *extra]) == code
        assert "not gzip" in capsys.readouterr().err
