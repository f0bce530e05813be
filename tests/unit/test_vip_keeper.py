"""VipKeeper's reconcile loop when the VRRP speaker fails: back off instead of re-creating the
speaker and its guard process every cycle, and log a failure again after a recovery."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from k3snoded.config import Config, NodeConfig, RegistrationConfig, VipConfig
from k3snoded.errors import VrrpError
from k3snoded.model import VrrpAuthentication
from k3snoded.vip import VipKeeper

MISSING = "k3sn-nx-test0"  # an interface that does not exist: the real speaker fails at once


def config(interface: str = MISSING) -> Config:
    return Config(
        node=NodeConfig(name="n1", address="198.18.0.11", interface=interface),
        registration=RegistrationConfig(
            address="198.18.0.100",
            # No token file here; these tests are about the speaker's life, not its adverts.
            vip=VipConfig(
                enabled=True, interface=interface, authentication=VrrpAuthentication.NONE
            ),
        ),
        source=Path("/dev/null"),
    )


async def test_a_failing_speaker_is_not_recreated_every_cycle() -> None:
    """The real speaker on an interface that does not exist fails at its first netlink call
    (nothing is sent). Cycling ensure() every 0.1 s for 2 s must not start a guard each time."""
    keeper = VipKeeper(config())
    guards: set[int] = set()
    try:
        for _ in range(20):
            await keeper.ensure(run=True, healthy=True)
            if keeper._guard is not None:
                guards.add(id(keeper._guard))
            await asyncio.sleep(0.1)
    finally:
        await keeper.stop()
    assert len(guards) <= 3, f"{len(guards)} speakers (and guard processes) in 2 s"


class ScriptedSpeaker:
    """Stands in for VrrpSpeaker where nothing real can fail on cue: runs ``life`` seconds,
    then raises (or runs until stopped when ``life`` is None)."""

    def __init__(self, life: float | None) -> None:
        self.life = life
        self.stopped = asyncio.Event()

    def set_healthy(self, healthy: bool) -> None:
        pass

    async def run(self) -> None:
        if self.life is None:
            await self.stopped.wait()
            return
        await asyncio.sleep(self.life)
        raise VrrpError("interface went away")

    async def stop(self) -> None:
        self.stopped.set()

    @property
    def status(self) -> Any:
        raise NotImplementedError


class ScriptedKeeper(VipKeeper):
    def __init__(self, lives: list[float | None]) -> None:
        super().__init__(config("lo"))
        self.lives = lives

    def _make_speaker(self, healthy: bool, resume: bool) -> Any:
        return ScriptedSpeaker(self.lives.pop(0))

    def _start_guard(self) -> None:
        return None  # no process: this test is about the speaker's life and the log


async def test_a_failure_after_a_recovery_is_logged_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("k3snoded.vip.STABLE_AFTER", 0.3)
    monkeypatch.setattr("k3snoded.vip.RETRY_FIRST", 0.05)
    keeper = ScriptedKeeper([0.0, 1.0, 0.0, None])
    caplog.set_level(logging.INFO, logger="k3snoded.vip")
    try:
        for _ in range(60):
            await keeper.ensure(run=True, healthy=True)
            await asyncio.sleep(0.05)
    finally:
        await keeper.stop()
    stopped = [r.getMessage() for r in caplog.records if "VRRP speaker stopped" in r.getMessage()]
    assert len(stopped) == 2, stopped  # first failure, then again after it had recovered
    assert any("runs again" in r.getMessage() for r in caplog.records)
