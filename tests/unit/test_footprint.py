"""A regression guard on the daemon's footprint (docs/performance.md): what a VIP server on
PostgreSQL imports, counted in a fresh interpreter. Module counts and resident memory, not
wall time, so the bounds hold on a loaded machine; they sit well above the figures measured
when they were set (474 modules, 50.8 MB; before issue 14: 632 modules, 58.5 MB)."""

from __future__ import annotations

import json
import subprocess
import sys

MAX_MODULES = 540
MAX_RSS_MB = 60.0

PROBE = """
import json, sys
import k3snoded.cli, k3snoded.daemon, k3snoded.fleet, k3snoded.datastore.postgres
import k3snoded.vrrp.speaker, k3snoded.discovery.mdns
rss = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:'))
print(json.dumps({"modules": sorted(sys.modules), "rss_mb": rss / 1024}))
"""


def _probe(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    data: dict[str, object] = json.loads(out.stdout)
    return data


def test_a_vip_server_on_postgres_imports_what_it_needs_and_no_more() -> None:
    data = _probe(PROBE)
    modules = data["modules"]
    assert isinstance(modules, list)
    assert len(modules) <= MAX_MODULES, f"{len(modules)} modules imported"
    rss = data["rss_mb"]
    assert isinstance(rss, float)
    assert rss <= MAX_RSS_MB, f"{rss:.1f} MB resident after the imports"
    # pyroute2 narrowly: its message classes, not the package (190 modules, 12.6 MB).
    assert "pyroute2.iproute" not in modules
    assert sum(m.startswith("pyroute2") for m in modules) < 40
    # Only the configured datastore's driver (imported when the datastore is opened).
    assert "pymysql" not in modules


def test_pyroute2_stays_importable_after_the_narrow_import() -> None:
    code = (
        "import k3snoded.vrrp.netlink, json, sys;"
        "before = 'pyroute2' in sys.modules;"
        "import pyroute2;"
        "print(json.dumps({'before': before, 'iproute': hasattr(pyroute2, 'IPRoute')}))"
    )
    assert _probe(code) == {"before": False, "iproute": True}
