"""When the coordinator lease statement is sent (the statement budget at rest)."""

from __future__ import annotations

import pytest

from k3snoded.config import CoordinationConfig
from k3snoded.fleet import lease_due

C = CoordinationConfig(renew_interval=3.0, retry_timeout=2.0, lease_ttl=10.0, dead_after=10.0)


@pytest.mark.parametrize(
    ("since", "holder", "due"),
    [
        (3.0, True, False),  # one cycle after a renewal: 3 + 3 + 4 = 10, still fits
        (3.1, True, True),  # the next cycle would be too late
        (6.0, True, True),
        (4.9, False, False),  # others: once per half TTL
        (5.0, False, True),
    ],
)
def test_lease_due(since: float, holder: bool, due: bool) -> None:
    assert lease_due(since, holder=holder, c=C) is due


def test_a_holder_renews_before_its_lease_can_expire() -> None:
    # Simulate cycles every renew_interval: the lease (renewed at t) must never be older than
    # ttl - 2 * retry_timeout when an attempt starts.
    last, worst = 0.0, 0.0
    for cycle in range(1, 100):
        t = cycle * C.renew_interval
        if lease_due(t - last, holder=True, c=C):
            worst = max(worst, t - last)
            last = t
    assert worst <= C.lease_ttl - 2 * C.retry_timeout
    assert worst >= 2 * C.renew_interval  # and it does save statements
