"""The merge patch that fits a Node to this machine's role (k3snoded.kube.node_patch)."""

from __future__ import annotations

from typing import Any

import pytest

from k3snoded.kube import DEDICATED, node_patch
from k3snoded.model import Role

CP = "node-role.kubernetes.io/control-plane"
MASTER = "node-role.kubernetes.io/master"
OTHER = {"key": "gpu", "value": "a100", "effect": "NoSchedule"}


def _node(taints: list[dict[str, str]], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "resourceVersion": "42", "labels": labels},
        "spec": {"taints": taints},
    }


@pytest.mark.parametrize(
    ("taints", "labels", "role", "dedicated", "expected"),
    [
        # a promoted agent in a dedicated fleet gets the taint (k3s never adds it)
        ([], {"a": "b"}, Role.SERVER, True, {"spec": {"taints": [DEDICATED]}}),
        ([OTHER], {}, Role.SERVER, True, {"spec": {"taints": [OTHER, DEDICATED]}}),
        # a server that already fits: nothing to do
        ([DEDICATED], {CP: "true"}, Role.SERVER, True, None),
        ([], {CP: "true"}, Role.SERVER, False, None),
        # dedicated turned off: the taint goes
        ([DEDICATED, OTHER], {CP: "true"}, Role.SERVER, False, {"spec": {"taints": [OTHER]}}),
        # a demoted server: taint and role labels go, other labels and taints stay
        (
            [OTHER, DEDICATED],
            {CP: "true", MASTER: "true", "zone": "a"},
            Role.AGENT,
            True,
            {"spec": {"taints": [OTHER]}, "metadata": {"labels": {CP: None, MASTER: None}}},
        ),
        ([], {CP: "true"}, Role.AGENT, False, {"metadata": {"labels": {CP: None}}}),
        ([OTHER], {"zone": "a"}, Role.AGENT, True, None),
    ],
)
def test_node_patch(
    taints: list[dict[str, str]],
    labels: dict[str, str],
    role: Role,
    dedicated: bool,
    expected: dict[str, Any] | None,
) -> None:
    patch = node_patch(_node(taints, labels), role, dedicated)
    if expected is None:
        assert patch is None
        return
    assert patch is not None
    meta = patch["metadata"]
    assert meta.pop("resourceVersion") == "42"  # optimistic concurrency
    if not meta:
        del patch["metadata"]
    assert patch == expected


def test_a_node_without_spec_or_labels() -> None:
    assert node_patch({"metadata": {"resourceVersion": "1"}}, Role.AGENT, True) is None
    patch = node_patch({"metadata": {"resourceVersion": "1"}}, Role.SERVER, True)
    assert patch == {"spec": {"taints": [DEDICATED]}, "metadata": {"resourceVersion": "1"}}
