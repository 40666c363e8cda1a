"""Profiles reduced to their top frames: py-spy on a live server, cProfile in process.

``py-spy record --format raw --nolineno`` writes collapsed stacks (``root;...;leaf count``),
in blocking mode (the process is paused for each sample, so stacks are whole; profiled runs
are never the measured ones), sampled only while a thread runs (idle waits in the event loop
are left out), so shares are of the server's busy time. :func:`top_frames` turns them into
the frames with the most *self* samples (where the time is spent) and the most *inclusive*
samples (which calls it is spent under), as percentages of all samples.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def start_record(
    pid: int, duration_s: float, out: Path, *, rate: int = 200, subprocesses: bool = False
) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``duration_s``; None when py-spy is not installed."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(duration_s))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nolineno",
        "--output",
        str(out),
    ]
    if subprocesses:
        cmd.append("--subprocesses")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_record(proc: subprocess.Popen[bytes], out: Path, timeout_s: float) -> dict[str, Any]:
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not out.exists() or out.stat().st_size == 0:
        return {"error": f"py-spy produced nothing: {err.decode(errors='replace')[-500:]}"}
    result = top_frames(out.read_text(encoding="utf-8", errors="replace"))
    result["raw_file"] = str(out)
    return result


_ENTRY_FRAMES = ("(vastserver/cli.py)", "(vastserver/__main__.py)")
"""Process entry frames (in every stack): left out of the ``vastserver`` inclusive list."""


def _parse(raw: str) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def top_frames(raw: str, n_self: int = 15, n_incl: int = 25) -> dict[str, Any]:
    stacks = _parse(raw)
    total = sum(c for _, c in stacks)
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    for frames, c in stacks:
        self_c[frames[-1]] += c
        for f in set(frames):
            incl_c[f] += c

    def pct(c: int) -> float:
        return round(100.0 * c / total, 1) if total else 0.0

    ours = [
        (f, c)
        for f, c in incl_c.most_common()
        if "vastserver/" in f and not f.endswith(_ENTRY_FRAMES)
    ]
    return {
        "samples": total,
        "self": [{"frame": f, "pct": pct(c)} for f, c in self_c.most_common(n_self)],
        "inclusive": [{"frame": f, "pct": pct(c)} for f, c in incl_c.most_common(n_incl)],
        "vastserver_inclusive": [{"frame": f, "pct": pct(c)} for f, c in ours[:n_incl]],
    }


def cprofile(fn: Callable[[], object], n: int = 25) -> dict[str, Any]:
    """Run ``fn`` under cProfile; top functions by own time and by cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    st = pstats.Stats(prof)
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = max(1e-12, float(st.total_tt))  # type: ignore[attr-defined]
    rows: list[tuple[str, float, float, int]] = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in raw.items():
        short = file
        for marker in ("/vastserver/", "/site-packages/", "/lib/python3"):
            if marker in file:
                short = file[file.index(marker) + 1 :]
                break
        rows.append((f"{name} ({short}:{line})", tt, ct, nc))

    def entry(r: tuple[str, float, float, int]) -> dict[str, Any]:
        return {
            "frame": r[0],
            "self_pct": round(100 * r[1] / total, 1),
            "cum_pct": round(100 * r[2] / total, 1),
            "calls": r[3],
        }

    by_self = sorted(rows, key=lambda r: r[1], reverse=True)[:n]
    by_cum = sorted((r for r in rows if "vastserver/" in r[0]), key=lambda r: r[2], reverse=True)[
        :n
    ]
    return {
        "total_s": round(total, 4),
        "self": [entry(r) for r in by_self],
        "cumulative_vastserver": [entry(r) for r in by_cum],
    }
