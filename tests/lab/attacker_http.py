"""Attacks on http (filled in below); registered with the attacker's command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(
    sub: Any, commands: dict[str, Callable[[argparse.Namespace], dict[str, int]]]
) -> None:
    return None
