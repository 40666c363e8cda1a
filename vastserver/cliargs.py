"""Argument types shared by the ``vastserver`` subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

N = TypeVar("N", int, float)


def iso_datetime(text: str) -> datetime:
    """An ISO 8601 date-time in the years 1970-2999 (simulated clocks run days past it and
    catalogs refuse other years); without an offset it is taken as UTC."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    dt = dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
    if not 1970 <= dt.astimezone(UTC).year <= 2999:
        raise argparse.ArgumentTypeError(f"out of range (years 1970-2999): {text!r}")
    return dt


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
