"""Fixtures shared by the supervisor tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.children.kit import Tracker


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short temporary directory: unix socket paths inside must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="k3sn-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    """Ends, by PID, every child the test's supervisors started."""
    t = Tracker()
    try:
        yield t
    finally:
        t.kill_all()
