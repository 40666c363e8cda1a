"""``python -m vastserver.sim ...``: the same as ``vastserver simulate ...``."""

import sys

from vastserver.sim.cli import main_simulate

raise SystemExit(main_simulate(sys.argv[1:]))
