"""Load generators: open loop (scheduled arrivals) and closed loop (N in flight)."""

from .closed_loop import ClosedLoopConfig, run_closed_loop
from .http import ERROR_KINDS, Target
from .open_loop import OpenLoopConfig, run_open_loop

__all__ = ["ClosedLoopConfig", "ERROR_KINDS", "OpenLoopConfig", "Target",
           "run_closed_loop", "run_open_loop"]
