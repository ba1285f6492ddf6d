"""OpenMP's wait policy for the commands, chosen before torch loads its OpenMP runtime.

torch's CPU wheels run their parallel loops on GNU OpenMP (libgomp). Unless told otherwise, a libgomp thread
that runs out of work spins for a while (GOMP_SPINCOUNT, 300,000 turns by default) before it sleeps, which
costs nothing on cores of its own and a great deal on shared ones: while one job's threads spin, the other
job's threads that hold the work wait for a core. `OMP_WAIT_POLICY=PASSIVE` makes an idle thread sleep at
once. libgomp reads the variable when it is loaded, so the commands call `wait_passively_unless_set` before
anything imports torch; a policy or spin count the user set is left as it is, and so is a process where torch
is already loaded (too late to change anything). scripts/shared_cpu.py measures what it changes.
"""

from __future__ import annotations

import os
import sys

# Any of these in the environment means the user chose how OpenMP threads wait.
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_passively_unless_set() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a policy or torch is already loaded; True when set."""
    if any(name in os.environ for name in USER_CHOICES) or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
