"""The stand-in's test knobs (environment variables of the stand-in only).

k3snoded scrubs ``K3S_*`` from k3s's environment, so every knob ``K3S_FAKE_<X>`` can also be
given as ``FAKE_K3S_<X>`` or in a file ``<data-dir>/fake-k3s.env`` (``KEY=VALUE`` lines).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"
KNOB_FILE = "fake-k3s.env"


def _data_dir_from_argv(argv: Sequence[str]) -> str:
    found = ""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for prefix in ("--data-dir", "-data-dir", "-d", "--d"):
            if arg == prefix and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(prefix + "="):
                found = arg[len(prefix) + 1 :]
    return found or os.environ.get("K3S_DATA_DIR", "")


ALIAS_PREFIX = "FAKE_K3S_"


def load(argv: Sequence[str]) -> None:
    """Resolve the knobs into ``K3S_FAKE_*`` environment variables.

    Precedence: ``K3S_FAKE_<X>``, then ``FAKE_K3S_<X>`` (an alias that survives k3snoded's
    ``K3S_*`` scrub), then ``<data-dir>/fake-k3s.env``.
    """
    for key, value in list(os.environ.items()):
        if key.startswith(ALIAS_PREFIX):
            os.environ.setdefault("K3S_FAKE_" + key[len(ALIAS_PREFIX) :], value)
    data_dir = _data_dir_from_argv(argv)
    if not data_dir:
        root = os.environ.get("K3S_FAKE_ROOT", "").rstrip("/")
        data_dir = root + DEFAULT_DATA_DIR
    try:
        text = (Path(data_dir) / KNOB_FILE).read_text()
    except OSError:
        return
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        os.environ.setdefault(key.strip(), value.strip())


def seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def ready_delay() -> float:
    return seconds("K3S_FAKE_READY_DELAY", 0.0)


def crash_after() -> float:
    return seconds("K3S_FAKE_CRASH_AFTER", 0.0)


def datastore_loss_exit() -> float:
    """The leader's renew deadline (kube-controller-manager ``--leader-elect-renew-deadline``)."""
    return seconds("K3S_FAKE_DATASTORE_LOSS_EXIT", 10.0)


def shutdown_delay() -> float:
    """k3s cancels its components through a 5 s delayed context (util.DefaultContextDelay)."""
    return seconds("K3S_FAKE_SHUTDOWN_DELAY", 5.0)


def old_bootstrap() -> bool:
    """Pre-2023 k3s (before d95980bba): no bootstrap lock, simultaneous servers race."""
    return os.environ.get("K3S_FAKE_OLD_BOOTSTRAP", "") not in ("", "0", "false")


def datastore_latency() -> float:
    return seconds("K3S_FAKE_DATASTORE_LATENCY", 0.0)


def bootstrap_window() -> float:
    """Seconds between taking the bootstrap lock (old k3s: finding no data) and saving."""
    return seconds("K3S_FAKE_BOOTSTRAP_WINDOW", 1.0)


def lease_interval() -> float:
    return seconds("K3S_FAKE_LEASE_INTERVAL", 2.0)
