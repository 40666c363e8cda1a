"""Argument types shared by the ``vastserver`` subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

N = TypeVar("N", int, float)


class HelpWithDefaults(argparse.HelpFormatter):
    """``--help`` lists every option with its default (the README promises it): an option
    whose help does not already say its default gets ``(default: X)``; a default of None,
    False or empty is no value to show. Lines break at spaces only, so a path stays whole."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.nargs == 0 or not has_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)".lstrip()

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = re.sub(r"\s+", " ", text).strip()
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def has_default(action: argparse.Action) -> bool:
    """Whether ``action`` has a default worth listing in ``--help``."""
    d: Any = action.default
    return d is not argparse.SUPPRESS and d is not None and d is not False and d != [] and d != ()


def iso_datetime(text: str) -> datetime:
    """An ISO 8601 date-time in the years 1970-2999 (simulated clocks run days past it and
    catalogs refuse other years); without an offset it is taken as UTC. Returned in UTC
    (the same instant): clocks started from it read UTC, as the servers' clocks do."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    dt = dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
    if not 1970 <= dt.astimezone(UTC).year <= 2999:
        raise argparse.ArgumentTypeError(f"out of range (years 1970-2999): {text!r}")
    return dt.astimezone(UTC)


def _bounded(text: str, kind: Callable[[str], N], ok: Callable[[N], bool], why: str) -> N:
    try:
        x = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not ok(x):
        raise argparse.ArgumentTypeError(why)
    return x


def positive_int(text: str) -> int:
    return _bounded(text, int, lambda n: n >= 1, "must be >= 1")


def non_negative_int(text: str) -> int:
    return _bounded(text, int, lambda n: n >= 0, "must be >= 0")


def positive_float(text: str) -> float:
    return _bounded(text, float, lambda x: 0 < x < math.inf, "must be > 0 and finite")


def non_negative_float(text: str) -> float:
    return _bounded(text, float, lambda x: 0 <= x < math.inf, "must be >= 0 and finite")


def at_least_an_hour(text: str) -> float:
    """A number of days, at least one hour's worth (1/24) and finite (``gen-events --days``:
    sessions are placed by hour, and a shorter run would never place one)."""
    return _bounded(
        text, float, lambda x: 1 / 24 <= x < math.inf, "must be at least 1/24 (an hour) and finite"
    )


def unit_fraction(text: str) -> float:
    """A share between 0 and 1 inclusive."""
    return _bounded(text, float, lambda x: 0.0 <= x <= 1.0, "must be between 0 and 1")


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    return _bounded(text, float, lambda x: 0.0 < x < 1.0, "must be between 0 and 1 (exclusive)")
