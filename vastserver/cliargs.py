"""Argument types shared by the ``vastserver`` subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime


def iso_datetime(text: str) -> datetime:
    """An ISO 8601 date-time; without an offset it is taken as UTC."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return x


def unit_fraction(text: str) -> float:
    """A share between 0 and 1 inclusive."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return x
