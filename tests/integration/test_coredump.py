"""``k3snoded run`` disables its own core dumps (tests/unit/test_coredump.py has the mechanism).

The daemon runs under the harness (its own network namespace, the stand-in k3s) with
RLIMIT_CORE unlimited and its working directory in the test's tmp; SIGABRT while it runs.
The kernel's core_pattern here is a relative file name, so a dumpable daemon would leave one.
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import pytest

from tests.integration.harness import DaemonHarness
from tests.unit.test_coredump import PATTERN, _cores

pytestmark = pytest.mark.skipif(
    PATTERN.startswith("|") or "/" in PATTERN,
    reason=f"core_pattern {PATTERN!r} does not write into the working directory",
)


def test_a_crashing_daemon_leaves_no_core(tmp_path: Path) -> None:
    h = DaemonHarness(tmp_path)
    old = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    try:
        h.start()  # inherits the unlimited RLIMIT_CORE, as under LimitCORE=infinity
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, old)
    try:
        h.wait_for(lambda s: bool(s["k3s"]["ready"]), what="k3s ready")
        assert h.proc is not None
        limits = Path(f"/proc/{h.proc.pid}/limits").read_text()
        assert "Max core file size        unlimited" in limits, limits
        h.signal(signal.SIGABRT)
        assert h.proc.wait(20) == -signal.SIGABRT
    finally:
        h.close()
    assert _cores(tmp_path) == [], "the daemon dumped core (with the token in its memory)"
