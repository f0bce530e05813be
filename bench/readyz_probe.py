"""CPU cost of the server health probe: /readyz with the admin certificate over one kept-alive
TLS connection (what the supervisor does) against a fresh TLS handshake per probe (baseline),
on the stand-in k3s, in the same run.

    .venv/bin/python bench/readyz_probe.py [--probes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k3snoded.process import HttpProbe, ProbeTls
from tests.fake_k3s.harness import Launcher, new_node


async def _cost(url: str, tls: ProbeTls, probes: int, keep: bool) -> float:
    """Process CPU seconds per probe (this process: TLS, HTTP parsing)."""
    probe = HttpProbe(url, tls.context)
    t0 = time.process_time()
    for _ in range(probes):
        assert await probe.status(5.0) == 200
        if not keep:
            probe.close()
    probe.close()
    return (time.process_time() - t0) / probes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="k3sn-bench-") as tmp:
        launcher = Launcher(Path(tmp))
        try:
            node = new_node(Path(tmp), "s1")
            s = launcher.start(node.server_args("--token", "pw"), node.env)
            s.wait_log("k3s is up and running", timeout=30)
            tls_dir = node.server_dir / "tls"
            tls = ProbeTls(
                tls_dir / "server-ca.crt",
                tls_dir / "client-admin.crt",
                tls_dir / "client-admin.key",
            )
            url = f"https://127.0.0.1:{node.port}/readyz"
            kept = asyncio.run(_cost(url, tls, args.probes, keep=True))
            fresh = asyncio.run(_cost(url, tls, args.probes, keep=False))
        finally:
            launcher.stop_all()
    print(f"readyz probe, kept-alive mTLS connection: {kept * 1e3:.3f} ms CPU per probe")
    print(f"readyz probe, new mTLS handshake each (baseline): {fresh * 1e3:.3f} ms CPU per probe")
    print(f"ratio kept-alive / baseline: {kept / fresh:.2f}")
    print(f"at one probe a second: {kept * 100:.3f} % of a core (baseline {fresh * 100:.3f} %)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
