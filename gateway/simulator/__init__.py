"""The slave-charger simulator: plays a config's Modbus slaves on this machine, for installers and tests.

`charger-gateway simulate CONFIG` runs `main`; tests and benchmarks call
`run_simulation` inside their own event loop.
"""

from __future__ import annotations

from gateway.simulator.errors import SimulatorError
from gateway.simulator.runner import main, run_simulation

__all__ = ["SimulatorError", "main", "run_simulation"]
