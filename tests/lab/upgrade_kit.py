"""What the upgrade and operations lab tests and bench/upgrade.py share: the stand-in releases
on a mirror inside the lab, a fleet that installs k3s from it, the probing client, and a
watcher of every machine's k3s pid and version.

    lab = Lab(5, with_db=True, with_client=True).up()
    db = dbs.start(lab, "postgres")
    fleet = upgrade_fleet(lab, db, eligible=3, agents=2)   # k3s OLD from the mirror, formed
    probe = Probe(lab); probe.start()
    watch = Watch(fleet); watch.start()
    set_version(fleet, NEW)                                 # the same file everywhere + SIGHUP
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

from tests.fakes.releases import broken_release, release, write_mirror
from tests.lab import dbs
from tests.lab.fleet import PYTHON, REPO, Fleet, Status
from tests.lab.netns import Lab
from tests.lab.probe import Sample

OLD, NEW, BAD = "v1.31.4+k3s1", "v1.31.5+k3s1", "v1.31.6+k3s1"
MIRROR_PORT = 8088


def serve_releases(lab: Lab) -> str:
    """The mirror (OLD, NEW, and BAD: a build that panics at start), served over HTTP from
    the lab's db machine; its URL."""
    assert lab.db is not None
    root = lab.workdir / "mirror"
    write_mirror(root, {OLD: release(OLD), NEW: release(NEW), BAD: broken_release(BAD)})
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    lab.db.spawn(
        [str(PYTHON), "-m", "http.server", str(MIRROR_PORT), "--bind", lab.db.address,
         "--directory", str(root)],
    )  # fmt: skip
    url = f"http://{lab.db.address}:{MIRROR_PORT}"
    check = (
        f"import urllib.request;urllib.request.urlopen('{url}/{OLD}/sha256sum-amd64.txt',timeout=2)"
    )
    deadline = time.monotonic() + 20
    while lab.db.run([str(PYTHON), "-c", check], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError("the release mirror did not come up")
        time.sleep(0.2)
    return url


def upgrade_fleet(
    lab: Lab,
    db: dbs.Database,
    *,
    eligible: int,
    agents: int,
    servers: int,
    stable_for: float = 2.0,
    extra: dict[str, Any] | None = None,
) -> Fleet:
    """A formed fleet whose machines installed k3s OLD from the lab's mirror."""
    url = serve_releases(lab)
    cfg: dict[str, Any] = {
        "k3s": {"install": "auto", "version": OLD, "mirror": url, "ready_timeout": 30},
        "upgrade": {"stable_for": stable_for, "drain_timeout": 10, "agent_batch": 2},
        **(extra or {}),
    }
    fleet = Fleet(
        lab,
        endpoint=db.endpoint,
        eligible=eligible,
        agents=agents,
        servers=servers,
        fake_env={"K3S_FAKE_SHUTDOWN_DELAY": "1"},
        extra=cfg,
        releases=True,
        agents_in_fleet=True,
    )
    fleet.start_all()
    fleet.wait(fleet.converged, timeout=120, what="fleet formed on k3s " + OLD)
    return fleet


def set_version(fleet: Fleet, version: str) -> None:
    """Change k3s.version in the file every machine reads, then SIGHUP every daemon."""
    fleet.extra["k3s"] = {**fleet.extra["k3s"], "version": version}
    for n in fleet.nodes:
        n.write_config()
    for n in fleet.nodes:
        n.signal(signal.SIGHUP)


def version_of(s: Status | None) -> str:
    ops = (s or {}).get("operations") or {}
    return str(ops.get("k3s_version") or "")


def rollout_of(fleet: Fleet) -> dict[str, Any] | None:
    """The rollout as the coordinator reports it."""
    for s in fleet.statuses().values():
        if s is not None and s.get("coordinator") == s["node"]["name"]:
            return (s.get("operations") or {}).get("rollout")
    return None


class Probe:
    """tests/lab/probe.py in the client machine."""

    def __init__(self, lab: Lab, max_seconds: float = 900.0) -> None:
        assert lab.client is not None
        self.lab = lab
        self.out = lab.workdir / "probe.json"
        self.stop_file = lab.workdir / "probe.stop"
        self.max = max_seconds
        self.samples: list[Sample] = []

    def start(self) -> None:
        assert self.lab.client is not None
        self.stop_file.unlink(missing_ok=True)
        self.out.unlink(missing_ok=True)
        self.lab.client.spawn(
            [str(PYTHON), "-m", "tests.lab.probe", "--out", str(self.out), "--stop",
             str(self.stop_file), "--max", str(self.max)],
            env={"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        time.sleep(0.5)

    def stop(self) -> list[Sample]:
        self.stop_file.write_text("stop")
        deadline = time.monotonic() + 10
        while not self.out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.samples = [(a, b, bool(c)) for a, b, c in json.loads(self.out.read_text())]
        return self.samples


class Watch:
    """Every machine's k3s pid and version, sampled every 0.25 s in a thread (bounded)."""

    def __init__(self, fleet: Fleet, max_seconds: float = 900.0) -> None:
        self.fleet = fleet
        self.max = max_seconds
        self.pids: dict[str, list[int]] = {n.name: [] for n in fleet.nodes}
        self.versions: dict[str, list[str]] = {n.name: [] for n in fleet.nodes}
        self.skew: list[str] = []  # moments an agent ran a newer k3s than a server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from k3snoded.versions import older

        end = time.monotonic() + self.max
        while not self._stop.is_set() and time.monotonic() < end:
            st = self.fleet.statuses()
            running: dict[str, tuple[str, str]] = {}
            for name, s in st.items():
                if s is None:
                    continue
                pid, v = s["k3s"].get("pid"), version_of(s)
                if pid and (not self.pids[name] or self.pids[name][-1] != pid):
                    self.pids[name].append(int(pid))
                if v and (not self.versions[name] or self.versions[name][-1] != v):
                    self.versions[name].append(v)
                if s["k3s"].get("ready"):
                    running[name] = (s["node"]["role"], v)
            servers = [v for r, v in running.values() if r == "server"]
            agents = [v for r, v in running.values() if r == "agent"]
            if any(older(s, a) for s in servers for a in agents):
                self.skew.append(f"servers {servers}, agents {agents}")
            time.sleep(0.25)

    def restarts(self) -> dict[str, int]:
        return {n: max(0, len(p) - 1) for n, p in self.pids.items()}
