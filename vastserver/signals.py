"""The reload signals' holder, from process start until the server's loop takes them over.

Standard library only: ``vastserver serve`` installs it before anything heavy is imported
(:mod:`vastserver.launch`), since a reload signal's default action kills the process.
"""

from __future__ import annotations

import signal

RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
"""SIGHUP reloads the catalog and the model, SIGUSR1 the model alone, SIGUSR2 the catalog
alone."""
_early_signals: set[int] = set()


def hold_sighup(*, keep_noted: bool = False) -> None:
    """From process start until the server's loop takes the reload signals over
    (:func:`vastserver.app._sighup`), a SIGHUP, SIGUSR1 or SIGUSR2 is noted instead of
    taking its default action, which kills the process: before, a reload signal sent while
    a worker loaded its catalog (15-25 s at 100k line items) stopped the server. A noted
    signal makes one reload once the server runs, since the files may have changed after
    start-up read them. Forked workers inherit the holder, and start with nothing noted: a
    signal the parent noted before the fork is the parent's to pass on. ``keep_noted``:
    keep what an earlier holder of this process noted (``serve`` installs it again after
    :mod:`vastserver.launch`)."""
    if not keep_noted:
        _early_signals.clear()
    for sig in RELOAD_SIGNALS:
        signal.signal(sig, _note_signal)


def _note_signal(signum: int, _frame: object) -> None:
    _early_signals.add(signum)


def take_early_signals() -> list[signal.Signals]:
    """The reload signals that came while they were held, and forget them."""
    noted = [sig for sig in RELOAD_SIGNALS if sig in _early_signals]
    _early_signals.clear()
    return noted
