"""``vastserver simulate``: CTV households against in-process servers on a simulated clock.

* :mod:`vastserver.sim.world`: households, devices, content and the session schedule.
* :mod:`vastserver.sim.harness`: the servers (``create_app`` on loopback sockets, the
  simulated clock, the load balancer, pacing in simulated time).
* :mod:`vastserver.sim.engine`: the discrete-event loop, players, SSAI stitchers, faults.
* :mod:`vastserver.sim.checks`: caps, separation and identity checks from what was played.
* :mod:`vastserver.sim.report`: the report (JSON, text, optional plots).
* :mod:`vastserver.sim.runner`: :func:`run_simulation` and :func:`run_comparison`.
* :mod:`vastserver.sim.cli`: :func:`main_simulate` (the ``vastserver simulate`` command).

See ``docs/simulator.md``.
"""

from vastserver.sim.config import Faults, SimConfig
from vastserver.sim.runner import run_comparison, run_simulation

__all__ = ["Faults", "SimConfig", "run_comparison", "run_simulation"]
