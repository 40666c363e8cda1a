"""CPU time and resident memory of a server's process tree, read from ``/proc``.

CPU is ``utime + stime`` (fields 14 and 15 of ``/proc/<pid>/stat``, in clock ticks) summed over
the server process and its descendants (the ``--workers N`` processes are children of the
parent that bound the socket). A run's server CPU per request is the delta over the run
divided by the requests completed in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tids = list(task_dir.iterdir())
    except OSError:
        return out
    for tid in tids:
        try:
            text = (tid / "children").read_text()
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    # after the comm: index 0 is field 3 (state), so utime (14) is 11 and stime (15) is 12
    return (int(f[11]) + int(f[12])) * _TICK_S


def rss_bytes(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return 0
    return int(text.split()[1]) * _PAGE


@dataclass(frozen=True, slots=True)
class TreeSample:
    pids: tuple[int, ...]
    cpu_s: float
    rss: int
    """Sum over the tree."""
    rss_max: int
    """Largest single process (one worker)."""


def sample(pid: int) -> TreeSample:
    pids = tree(pid)
    rss = [rss_bytes(p) for p in pids]
    return TreeSample(
        pids=tuple(pids),
        cpu_s=sum(cpu_seconds(p) for p in pids),
        rss=sum(rss),
        rss_max=max(rss, default=0),
    )


def cpu_delta(before: TreeSample, after: TreeSample) -> float:
    """CPU seconds used between two samples (processes present in either)."""
    return max(0.0, after.cpu_s - before.cpu_s)
