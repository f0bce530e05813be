"""The VIP across a daemon restart (k3snoded/handover.py), with keepalived as the backup.

Our master hands over (last adverts with Max_Adver_Interval = hold, VIP kept with a kernel
lifetime) and exits; keepalived (VRRPv3, advert 0.1 s) must learn the long interval (RFC 5798
§6.4.2) and *not* take over after its usual 0.36 s; a new speaker resuming as master keeps the
address, and keepalived stays backup. Without the handover it takes over in 0.36 s (the
control, in the same test).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab import keepalived
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.netns import Machine
from tests.lab.test_vrrp_support import ADVERT, VIP, holders, wait_for
from tests.systemd.probes import HoldsAddress

require_root()

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived is not installed"),
]
__all__ = ["lab_factory"]

PYTHON = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")
HOLD, LIFETIME = 3.0, 5
DRIVER = """
import asyncio, signal, sys
from k3snoded.vrrp.speaker import VrrpSpeaker
resume = sys.argv[1] == "resume"
async def main():
    sp = VrrpSpeaker(interface="eth0", vip="198.18.0.100", prefix=24, vrid=51, priority=150,
                     advert_interval=0.1, resume=resume)
    task = asyncio.create_task(sp.run())
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, done.set)
    await done.wait()
    print("kept" if await sp.hand_over(HOLD, LIFETIME) else "released", flush=True)
    await task
asyncio.run(asyncio.wait_for(main(), 120))
""".replace("HOLD", str(HOLD)).replace("LIFETIME", str(LIFETIME))


def _ours(m: Machine, mode: str) -> subprocess.Popen[bytes]:
    return m.spawn([PYTHON, "-c", DRIVER, mode], stdout=subprocess.PIPE)


def test_keepalived_waits_for_a_handed_over_master(lab_factory: LabFactory) -> None:
    lab = lab_factory(2)
    n1, n2 = lab.machines
    first = _ours(n1, "start")
    wait_for("ours master", lambda: holders(lab.machines) == {"n1"}, timeout=10)
    cfg = keepalived.VrrpConfig(vip=f"{VIP}/24", priority=100, advert_int=ADVERT, state="BACKUP")
    ka = keepalived.start(n2, cfg)
    ka.vrrp_pid()
    time.sleep(1.0)
    assert holders(lab.machines) == {"n1"}
    on_n1, on_n2 = HoldsAddress(n1.netns, VIP).start(), HoldsAddress(n2.netns, VIP).start()
    try:
        first.send_signal(signal.SIGHUP)
        out, _ = first.communicate(timeout=10)
        assert out.decode().strip() == "kept"
        t_exit = time.monotonic()
        time.sleep(2.0)  # 5x keepalived's normal master-down interval: it would have taken over
        second = _ours(n1, "resume")
        wait_for("ours resumed", lambda: time.monotonic() - t_exit > 3.0, timeout=5)
        time.sleep(1.0)
        assert "Entering MASTER STATE" not in ka.log_file.read_text()
    finally:
        on_n1.stop()
        on_n2.stop()
    assert on_n1.all_true(), f"the VIP left n1: {on_n1.false_runs()}"
    assert not on_n2.any_true(), "keepalived took the VIP during the handover"
    # Control: the resumed master stops without handing over; keepalived takes over at once.
    t0 = time.monotonic()
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=10)
    wait_for("keepalived taking over", lambda: holders(lab.machines) == {"n2"}, timeout=2)
    assert time.monotonic() - t0 < 2
