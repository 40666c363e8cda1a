"""The ``vastserver`` command (and ``python -m vastserver``): for ``serve``, the reload signals
are held (:mod:`vastserver.signals`) before anything else is imported.

Importing the CLI and the server (aiohttp, jinja2, the settings, the models) takes a second
or two on a small machine, and a SIGHUP, SIGUSR1 or SIGUSR2 kills a process that has no
handler for it: a reload signal sent just after start (``systemctl reload`` at once, a
deploy script) stopped the server without a log line.
"""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        from vastserver.signals import hold_sighup

        hold_sighup()
    from vastserver.cli import main as cli_main

    return cli_main()
