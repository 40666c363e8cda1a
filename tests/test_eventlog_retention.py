"""Event log retention: finished segments older than ``retention_s`` (by mtime, on the log's
clock) are deleted at start-up, on rotation and periodically, by several pruners at once."""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vastserver import eventlog
from vastserver.eventlog import EventLog, read_events

DAY = 86_400.0
NOW = 1_795_636_800.0  # 2026-11-25T20:00:00Z


class Clock:
    """The log's clock (unix seconds), moved by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def segment(directory: Path, name: str, age_days: float, now: float = NOW) -> Path:
    """A finished segment of another process, last written ``age_days`` before ``now``."""
    path = directory / name
    data = b'{"old":1}\n'
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    mtime = now - age_days * DAY
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    return d


@pytest.fixture
def logs() -> Iterator[list[EventLog]]:
    made: list[EventLog] = []
    yield made
    for event_log in made:
        event_log.close()


def open_log(logs: list[EventLog], directory: Path, clock: Clock, **kwargs: Any) -> EventLog:
    kwargs.setdefault("commit_interval_s", 0.01)
    event_log = EventLog(directory, clock=clock, wall_clock=clock, retention_s=7 * DAY, **kwargs)
    logs.append(event_log)
    return event_log


def test_start_up_deletes_old_finished_segments_only(
    directory: Path, logs: list[EventLog], caplog: pytest.LogCaptureFixture
) -> None:
    old = segment(directory, "events-20261101T000000-11-000001.jsonl", 8)
    old_gz = segment(directory, "events-20261101T000000-12-000001.jsonl.gz", 30)
    recent = segment(directory, "events-20261120T000000-13-000001.jsonl", 6.9)
    recent_gz = segment(directory, "events-20261120T000000-14-000001.jsonl.gz", 1)
    # Old by mtime, but its writer (another worker, quiet for days) still holds the lock.
    active = segment(directory, "events-20261101T000000-15-000001.jsonl", 9)
    not_a_segment = segment(directory, "notes.jsonl", 100)
    freed = old.stat().st_size + old_gz.stat().st_size
    fd = os.open(active, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        with caplog.at_level(logging.INFO, logger="vastserver.eventlog"):
            event_log = open_log(logs, directory, Clock())
            event_log.flush()  # one writer iteration: the start-up pass is done
        assert not old.exists()
        assert not old_gz.exists()
        assert recent.exists() and recent_gz.exists() and active.exists()
        assert not_a_segment.exists()
    finally:
        os.close(fd)
    pruned = [r for r in caplog.records if r.getMessage() == "event_log_pruned"]
    assert len(pruned) == 1
    fields = pruned[0].__dict__["fields"]
    assert (fields["segments"], fields["bytes"]) == (2, freed)
    assert fields["retention_days"] == 7


def test_quiet_log_prunes_periodically_without_rotating(
    directory: Path, logs: list[EventLog]
) -> None:
    clock = Clock()
    # 10 minutes short of the retention at start-up: kept by the start-up pass.
    aging = segment(directory, "events-20261120T000000-11-000001.jsonl", 7 - 600 / DAY)
    event_log = open_log(logs, directory, clock, retention_check_s=3600)
    event_log.append({"i": 0})
    event_log.flush()
    assert aging.exists()
    own = next(p for p in directory.iterdir() if p != aging)
    # Our own segment has not been written for longer than the retention: it is still ours.
    os.utime(own, (NOW - 30 * DAY, NOW - 30 * DAY))

    clock.now = NOW + 1800  # aging is past the retention, but the hourly pass is not due
    event_log.flush()
    assert aging.exists()

    clock.now = NOW + 3601  # an hour after the start-up pass, on the log's clock
    event_log.flush()
    assert not aging.exists()
    assert own.exists()
    event_log.append({"i": 1})
    event_log.flush()
    assert event_log.stats()["segments"] == 1  # no rotation was needed to prune
    assert [r["i"] for r in read_events(directory)] == [0, 1]


def test_rotation_prunes_at_once(directory: Path, logs: list[EventLog]) -> None:
    clock = Clock()
    aging = segment(directory, "events-20261120T000000-11-000001.jsonl", 6)
    # The periodic pass only runs at start-up here: what deletes aging is the rotation.
    event_log = open_log(logs, directory, clock, retention_check_s=1e9, segment_max_bytes=60)
    event_log.append({"i": 0})
    event_log.flush()
    assert aging.exists()
    clock.now = NOW + 2 * DAY
    event_log.append({"i": 1, "pad": "x" * 40})  # does not fit: a new segment is opened
    event_log.flush()
    assert event_log.stats()["segments"] == 2
    assert not aging.exists()


def test_without_retention_nothing_is_deleted(directory: Path, logs: list[EventLog]) -> None:
    old = segment(directory, "events-20200101T000000-11-000001.jsonl", 2000)
    event_log = EventLog(directory, clock=Clock(), commit_interval_s=0.01)
    logs.append(event_log)
    event_log.append({"i": 0})
    event_log.flush()
    assert old.exists()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_retention_must_be_positive_and_finite(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="retention_s"):
        EventLog(tmp_path, retention_s=bad)
    with pytest.raises(ValueError, match="retention_check_s"):
        EventLog(tmp_path, retention_s=DAY, retention_check_s=bad)


# -- several pruners, failures ------------------------------------------------------------------


def test_racing_pruners_each_delete_a_file_once(directory: Path) -> None:
    files = [segment(directory, f"events-20261101T000000-{i}-000001.jsonl", 10) for i in range(300)]
    size = files[0].stat().st_size
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def prune() -> None:
        start.wait()
        try:
            results.append(eventlog._delete_older_than(directory, NOW - 7 * DAY, None))
        except BaseException as e:  # any exception fails the test below
            errors.append(e)

    threads = [threading.Thread(target=prune) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(n for n, _ in results) == 300  # every file counted by the one that deleted it
    assert sum(b for _, b in results) == 300 * size
    assert list(directory.iterdir()) == []


def test_a_file_another_pruner_deleted_is_not_counted(directory: Path) -> None:
    assert eventlog._delete_if_inactive(directory / "events-gone-1-000001.jsonl") == "gone"


def test_files_gone_after_listing_are_skipped(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [segment(directory, f"events-20261101T000000-{i}-000001.jsonl", 10) for i in range(4)]
    size = files[0].stat().st_size
    real_scandir = os.scandir

    class ListThenVanish:
        """scandir() whose listing is taken before another pruner deletes two files."""

        def __init__(self, path: Path) -> None:
            self.inner = real_scandir(path)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            entries = list(self.inner)
            files[0].unlink()
            files[2].unlink()
            return iter(entries)

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

    monkeypatch.setattr(eventlog.os, "scandir", ListThenVanish)
    assert eventlog._delete_older_than(directory, NOW, None) == (2, 2 * size)
    assert not files[1].exists() and not files[3].exists()


def test_two_logs_in_one_directory_prune_without_trouble(
    directory: Path, logs: list[EventLog]
) -> None:
    old = [segment(directory, f"events-20261101T000000-{i}-000001.jsonl", 10) for i in range(50)]
    a = open_log(logs, directory, Clock())
    b = open_log(logs, directory, Clock())
    for i in range(20):
        a.append({"w": "a", "i": i})
        b.append({"w": "b", "i": i})
    a.flush()
    b.flush()
    assert not any(p.exists() for p in old)
    back = list(read_events(directory))
    assert [r["i"] for r in back if r["w"] == "a"] == list(range(20))
    assert [r["i"] for r in back if r["w"] == "b"] == list(range(20))


def test_a_failed_deletion_is_a_warning_and_writing_goes_on(
    directory: Path,
    logs: list[EventLog],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck = segment(directory, "events-20261101T000000-11-000001.jsonl", 10)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.INFO, logger="vastserver.eventlog"):
        event_log = open_log(logs, directory, Clock())
        event_log.append({"i": 0})
        event_log.flush()
    assert stuck.exists()
    failed = [r for r in caplog.records if r.getMessage() == "event_log_prune_failed"]
    assert failed and failed[0].levelno == logging.WARNING
    assert failed[0].__dict__["fields"]["segment"] == str(stuck)
    assert not [r for r in caplog.records if r.getMessage() == "event_log_pruned"]
    assert [r["i"] for r in read_events(directory) if "i" in r] == [0]


def test_an_unlistable_directory_is_a_warning_and_writing_goes_on(
    directory: Path,
    logs: list[EventLog],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def scandir(path: Path) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(eventlog.os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="vastserver.eventlog"):
        event_log = open_log(logs, directory, Clock())
        event_log.append({"i": 0})
        event_log.flush()
        event_log.append({"i": 1})
        event_log.flush()
    failed = [r for r in caplog.records if r.getMessage() == "event_log_prune_failed"]
    assert failed and "Input/output error" in failed[0].__dict__["fields"]["error"]
    assert event_log.stats()["written"] == 2
    assert event_log.stats()["last_error"] is None
