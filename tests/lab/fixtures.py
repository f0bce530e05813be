"""Pytest helpers for lab tests.

In a lab test module::

    from tests.lab.fixtures import lab_factory, require_root

    require_root()  # module level: skip when not root, fail when CI=true

    @pytest.mark.lab
    def test_something(lab_factory: LabFactory) -> None:
        lab = lab_factory(3, with_client=True)   # already up; torn down after the test
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.netns import Lab

LabFactory = Callable[..., Lab]


def require_root() -> None:
    """Call at module level: skip the module unless root; under CI=true, fail instead."""
    if os.geteuid() == 0:
        return
    reason = "lab tests need root (network namespaces, veth, bridge)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run them as root", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """A function ``(n, **Lab kwargs) -> Lab`` (already up); every lab is torn down afterwards."""
    require_root()
    labs: list[Lab] = []

    def make(n: int, **kwargs: Any) -> Lab:
        lab = Lab(n, **kwargs)
        labs.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.down()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
