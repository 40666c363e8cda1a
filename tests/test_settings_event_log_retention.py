"""VASTSERVER_EVENT_LOG_RETENTION_DAYS: its parsing, and the server passing it to its event log."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClientFactory
from vastserver.app import RUNTIME
from vastserver.eventlog import EventLog
from vastserver.settings import SettingsError, load_settings

DAY = 86_400.0


def aged_segment(directory: Path, name: str, age_days: float) -> Path:
    """A finished segment last written ``age_days`` ago, in real time (the files' clock; the
    test server's own clock is fixed elsewhere and must not age them)."""
    path = directory / name
    path.write_bytes(b'{"old":1}\n')
    mtime = time.time() - age_days * DAY
    os.utime(path, (mtime, mtime))
    return path


def test_setting_unset_means_keep_everything() -> None:
    assert load_settings({}).event_log_retention_days is None
    env = {"VASTSERVER_EVENT_LOG_RETENTION_DAYS": ""}
    assert load_settings(env).event_log_retention_days is None


@pytest.mark.parametrize(("raw", "days"), [("7", 7.0), ("0.25", 0.25), ("3650", 3650.0)])
def test_setting_valid(raw: str, days: float) -> None:
    env = {"VASTSERVER_EVENT_LOG_RETENTION_DAYS": raw}
    assert load_settings(env).event_log_retention_days == days


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "nan", "inf", "3651", "7d"])
def test_setting_invalid_is_a_start_up_error(raw: str) -> None:
    with pytest.raises(SettingsError, match="VASTSERVER_EVENT_LOG_RETENTION_DAYS") as info:
        load_settings({"VASTSERVER_EVENT_LOG_RETENTION_DAYS": raw})
    assert len(info.value.problems) == 1
    assert repr(raw) in info.value.problems[0]


@pytest.mark.parametrize(("retention", "old_kept"), [("7", False), (None, True)])
async def test_server_prunes_at_start_up(
    make_client: ClientFactory, tmp_path: Path, retention: str | None, old_kept: bool
) -> None:
    directory = tmp_path / "events"
    directory.mkdir()
    # Real ages, while the server's injected clock says 2026-11-25: retention follows the files.
    old = aged_segment(directory, "events-20261101T000000-11-000001.jsonl", 8)
    recent = aged_segment(directory, "events-20261120T000000-12-000001.jsonl", 1)
    overrides: dict[str, Any] = {"event_log": str(directory)}
    if retention is not None:
        overrides["event_log_retention_days"] = retention
    client = await make_client(**overrides)
    event_log = client.app[RUNTIME].events
    assert isinstance(event_log, EventLog)
    await asyncio.to_thread(event_log.flush)
    assert old.exists() is old_kept
    assert recent.exists()
