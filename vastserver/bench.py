"""``vastserver bench``: benchmark the server against a static aiohttp baseline.

The harness lives in the source checkout's ``benchmarks/`` package (it starts servers and
load generators as subprocesses, which run ``python -m benchmarks.*`` from the checkout);
this module only finds it and hands over. Method, options and how to read the report:
``docs/benchmark.md``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def main_bench(argv: Sequence[str]) -> int:
    """``vastserver bench [--quick] [--duration S] [--connections N] [--sizes 1000,10000]
    [--workers 1,2] [--out PATH] ...``; returns the exit code."""
    if not (CHECKOUT / "benchmarks" / "harness.py").is_file():
        print(
            "vastserver bench: needs the source checkout (benchmarks/ next to vastserver/)",
            file=sys.stderr,
        )
        return 2
    root = str(CHECKOUT)
    if root not in sys.path:
        sys.path.insert(0, root)
    harness = importlib.import_module("benchmarks.harness")
    code: int = harness.main(list(argv))
    return code


if __name__ == "__main__":
    raise SystemExit(main_bench(sys.argv[1:]))
