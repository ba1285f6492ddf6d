"""OpenMP's wait policy reaches torch's OpenMP runtime: idle threads sleep at once unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def runtime_waiting(module: str, **env: str) -> dict[str, str]:
    """OMP_WAIT_POLICY and GOMP_SPINCOUNT as libgomp reports them when it loads (OMP_DISPLAY_ENV=VERBOSE),
    after importing `module`: a passive policy spins 0 turns, libgomp's own default 300,000."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}, torch; torch.ones(1)"], env={**clean, **env, "OMP_DISPLAY_ENV": "VERBOSE"},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = {}
    for line in result.stderr.splitlines():
        name, _, value = line.strip().partition(" = ")
        if name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            found[name] = value.strip("'")
    return found


@pytest.mark.parametrize("module", ["s18exp.__main__", "s18exp.predict"])
def test_the_commands_make_idle_threads_sleep_unless_told_otherwise(module: str) -> None:
    assert runtime_waiting(module) == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    assert runtime_waiting(module, OMP_WAIT_POLICY="ACTIVE")["OMP_WAIT_POLICY"] == "ACTIVE"
    assert runtime_waiting(module, GOMP_SPINCOUNT="12345")["GOMP_SPINCOUNT"] == "12345"  # a spin count chosen is kept


def test_without_the_commands_libgomp_spins_first() -> None:
    assert runtime_waiting("json")["GOMP_SPINCOUNT"] == "300000"  # the check above is not vacuous
