"""The daemon end to end on one node, with the stand-in k3s (issue: core daemon).

Each test runs a real ``k3snoded run`` in a private network namespace and observes it from the
outside: its status socket, sd_notify messages, /proc, exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import PYTHON, TOKEN, DaemonHarness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[DaemonHarness]:
    h = DaemonHarness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def _ready(s: dict[str, object]) -> bool:
    k3s = s["k3s"]
    assert isinstance(k3s, dict)
    return bool(k3s["ready"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_single_server_becomes_ready_and_tells_systemd(node: DaemonHarness) -> None:
    node.start()
    s = node.wait_for(_ready, what="k3s ready")
    assert s["node"]["role"] == "server"
    assert s["k3s"]["pid"] and _alive(s["k3s"]["pid"])
    assert "embedded" in s["decision"]
    # Readiness came through the stand-in's READY=1 on the private socket: k3snoded's own
    # READY=1 follows, with a STATUS= line.
    deadline = time.monotonic() + 5
    while "READY=1" not in node.notify.drain() and time.monotonic() < deadline:
        time.sleep(0.1)
    msgs = node.notify.messages
    assert "READY=1" in msgs
    assert any(m.startswith("STATUS=server, k3s ready") for m in msgs)
    assert (node.data_dir / "server" / "token").exists()


def test_token_is_on_no_command_line_and_in_no_log(node: DaemonHarness) -> None:
    node.start()
    node.wait_for(_ready, what="k3s ready")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert TOKEN.encode() not in cmdline, f"token on the command line of pid {pid}"
    assert TOKEN not in node.log()
    assert TOKEN not in json.dumps(node.status())  # nor in an API response
    sock = node.socket_path
    assert sock.stat().st_mode & 0o777 == 0o600 and sock.parent.stat().st_mode & 0o777 == 0o700
    copy = node.state_dir / "token"
    assert copy.read_text().strip() == TOKEN
    assert copy.stat().st_mode & 0o777 == 0o600


def test_k3s_gets_umask_0022_while_the_daemon_runs_with_0077(node: DaemonHarness) -> None:
    node.start()
    s = node.wait_for(_ready, what="k3s ready")

    def umask(pid: int) -> str:
        line = next(
            x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Umask")
        )
        return line.split()[1]

    assert node.proc is not None
    assert umask(node.proc.pid) == "0077"
    assert umask(s["k3s"]["pid"]) == "0022"


def test_clean_stop_stops_k3s_and_says_stopping(node: DaemonHarness) -> None:
    node.start()
    s = node.wait_for(_ready, what="k3s ready")
    k3s_pid = s["k3s"]["pid"]
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=60) == 0
    assert not _alive(k3s_pid)
    assert "STOPPING=1" in node.notify.drain()
    assert not node.socket_path.exists()
    assert not (node.run_dir / "k3s.pid").exists()


def test_restart_with_backoff_after_crashes(tmp_path: Path) -> None:
    h = DaemonHarness(tmp_path, fake_env={"K3S_FAKE_CRASH_AFTER": "0.3"})
    try:
        h.start()
        s = h.wait_for(lambda s: s["k3s"]["restarts"] >= 2, timeout=40, what="two restarts")
        assert s["k3s"]["last_exit"] not in (None, 0)
        s = h.wait_for(lambda s: s["k3s"]["crash_loop"], timeout=40, what="crash loop flagged")
        assert "restarting in" in h.log()
    finally:
        h.close()


def test_adopts_k3s_after_daemon_sigkill(node: DaemonHarness) -> None:
    node.start()
    s = node.wait_for(_ready, what="k3s ready")
    k3s_pid = s["k3s"]["pid"]
    node.signal(signal.SIGKILL)
    node.wait(timeout=10)
    assert _alive(k3s_pid), "k3s must survive the daemon (its own process group)"
    node.start()
    s = node.wait_for(lambda s: s["k3s"]["ready"] and s["k3s"]["adopted"], what="adoption")
    assert s["k3s"]["pid"] == k3s_pid
    # exactly one k3s: the daemon (python) and the adopted child, nothing started twice
    k3s_like = [p for p in node.netns_pids() if p != node.proc.pid and _alive(p)]  # type: ignore[union-attr]
    assert k3s_pid in k3s_like
    assert len([p for p in k3s_like if _is_fake_k3s(p)]) == 1


def _is_fake_k3s(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"k3s" in cmd and b"k3snoded" not in cmd


def test_sighup_with_a_bad_config_keeps_the_running_one(node: DaemonHarness) -> None:
    node.start()
    s = node.wait_for(_ready, what="k3s ready")
    good = yaml.safe_load(node.config_path.read_text())
    node.config_path.write_text(yaml.safe_dump({**good, "servers": {"count": 0}}))
    node.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "keeping the running one" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "keeping the running one" in node.log()
    assert "servers.count" in node.log()
    after = node.status()
    assert after["k3s"]["pid"] == s["k3s"]["pid"] and after["k3s"]["ready"]
    assert node.proc is not None and node.proc.poll() is None


def test_watchdog_is_fed(node: DaemonHarness) -> None:
    node.start(extra_env={"WATCHDOG_USEC": "1000000"})
    node.wait_for(_ready, what="k3s ready")
    time.sleep(1.5)
    assert node.notify.drain().count("WATCHDOG=1") >= 2


def test_agent_joins_the_registration_address(tmp_path: Path) -> None:
    """An agent starts only with the cluster CA hash to pin: here a secure token in the token
    file (capin.py); without one it waits (``test_an_agent_without_a_ca_hash_never_starts``)."""
    ca_hash = "ab" * 32
    h = DaemonHarness(
        tmp_path,
        config={"node": {"role": "agent"}, "registration": {"address": "127.0.0.1"}},
    )
    h.token_file.write_text(f"K10{ca_hash}::server:{TOKEN}\n")
    try:
        h.start()
        s = h.wait_for(lambda s: s["k3s"]["pid"] is not None, what="agent started")
        assert s["node"]["role"] == "agent"
        assert s["registration"] == "127.0.0.1"
        assert (s["ca_pin"]["ca_hash"], s["ca_pin"]["source"]) == (ca_hash, "token file")
        # The agent keeps retrying to validate the cluster CA (there is no server): not ready.
        assert not s["k3s"]["ready"]
        joined = h.state_dir / f"join-token.{ca_hash[:16]}"
        assert joined.read_text() == f"K10{ca_hash}::node:{TOKEN}\n"
        assert stat.S_IMODE(joined.stat().st_mode) == 0o600
    finally:
        h.close()


def test_an_agent_without_a_ca_hash_never_starts(tmp_path: Path) -> None:
    """A short token, no fleet, no peers: nothing can pin the cluster CA, so k3s is never
    started (it would send the token to whatever answers at the registration address)."""
    h = DaemonHarness(
        tmp_path,
        config={"node": {"role": "agent"}, "registration": {"address": "127.0.0.1"}},
    )
    try:
        h.start()
        s = h.wait_for(lambda s: "CA hash" in s["decision"], what="waiting for the CA hash")
        time.sleep(3)
        s = h.status()
        assert s["k3s"]["pid"] is None and s["node"]["role"] == "none"
        assert s["ca_pin"]["ca_hash"] is None
        assert not list(h.state_dir.glob("join-token*"))
    finally:
        h.close()


def test_an_agent_left_running_is_kept_until_the_ca_hash_is_known(tmp_path: Path) -> None:
    """An agent k3s that a daemon without a pin finds running (an older k3snoded started it) is
    neither stopped nor restarted; once the hash is known the daemon takes it over, and a k3s
    already started with that pin is adopted, not restarted."""
    ca_hash = "ab" * 32
    h = DaemonHarness(
        tmp_path,
        config={"node": {"role": "agent"}, "registration": {"address": "127.0.0.1"}},
    )
    h.token_file.write_text(f"K10{ca_hash}::server:{TOKEN}\n")
    try:
        h.start()
        pid = h.wait_for(lambda s: s["k3s"]["pid"] is not None, what="agent started")["k3s"]["pid"]
        h.signal(signal.SIGKILL)  # the daemon only: k3s, in its own process group, lives on
        h.wait(10)
        # What a daemon that knows no hash finds: a short token, no join token of its own.
        h.token_file.write_text(TOKEN + "\n")
        for path in h.state_dir.glob("join-token*"):
            path.unlink()
        h.start()
        h.wait_for(lambda s: "CA hash" in s["decision"], what="waiting for the CA hash")
        time.sleep(3)
        s = h.status()
        assert (s["k3s"]["pid"], s["k3s"]["adopted"]) == (pid, True)
        assert os.path.exists(f"/proc/{pid}")

        h.signal(signal.SIGKILL)
        h.wait(10)
        h.token_file.write_text(f"K10{ca_hash}::server:{TOKEN}\n")
        h.start()
        s = h.wait_for(lambda s: s["node"]["role"] == "agent", what="the agent role again")
        time.sleep(2)
        s = h.status()
        assert s["k3s"]["pid"] == pid and s["k3s"]["restarts"] == 0
    finally:
        h.close()


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"servers": {"count": 0}}, "servers.count"),
        ({"registration": {"vip": {"vrid": 300}}}, "registration.vip.vrid"),
        ({"nodee": {}}, "nodee"),
    ],
)
def test_bad_config_exits_78_naming_file_and_key(
    tmp_path: Path, patch: dict[str, object], key: str
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    cfg = {"cluster": {"name": "t", "token_file": str(token)}, "servers": {"count": 1}}
    cfg.update(patch)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for cmd in ("check-config", "run"):
        r = subprocess.run(
            [str(PYTHON), "-m", "k3snoded", cmd, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 78, r.stderr
        assert str(path) in r.stderr and key in r.stderr
        assert "Traceback" not in r.stderr


def test_metrics_and_healthz(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    h = DaemonHarness(tmp_path, config={"api": {"listen": "127.0.0.1:6480"}})
    try:
        h.start()
        h.wait_for(_ready, what="k3s ready")
        fetch = (
            "import urllib.request,sys;"
            "r=urllib.request.urlopen('http://127.0.0.1:6480/'+sys.argv[1],timeout=5);"
            "sys.stdout.write(str(r.status)+'\\n'+r.read().decode())"
        )

        def get(path: str) -> tuple[int, str]:
            out = subprocess.run(
                ["ip", "netns", "exec", h.netns, str(PYTHON), "-c", fetch, path],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            code, _, body = out.partition("\n")
            return int(code), body

        code, body = get("healthz")
        assert code == 200 and body.strip() == "ok"
        code, text = get("metrics")
        assert code == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }
        assert samples[("k3snoded_k3s_ready", ())] == 1.0
        assert samples[("k3snoded_role", (("role", "server"),))] == 1.0
        assert samples[("k3snoded_role", (("role", "agent"),))] == 0.0
        assert ("k3snoded_k3s_restarts_total", ()) in samples
        assert TOKEN not in text
    finally:
        h.close()


def _airgap(tmp_path: Path, node: DaemonHarness, *, corrupt: bool) -> dict[str, object]:
    import hashlib

    image = tmp_path / "airgap" / "k3s"
    image.parent.mkdir()
    image.write_bytes(node.wrapper.read_bytes())
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    if corrupt:
        digest = "0" * 64
    sums = tmp_path / "airgap" / "sha256sum-amd64.txt"
    sums.write_text(f"{digest}  k3s\n")
    return {
        "binary": str(tmp_path / "bin" / "k3s"),
        "install": "auto",
        "airgap_file": str(image),
        "airgap_sha256_file": str(sums),
    }


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the airgap list names the amd64 asset")
def test_installs_k3s_from_an_airgap_file(tmp_path: Path) -> None:
    h = DaemonHarness(tmp_path)
    try:
        cfg = yaml.safe_load(h.config_path.read_text())
        cfg["k3s"].update(_airgap(tmp_path, h, corrupt=False))
        h.write_config(cfg)
        h.start()
        h.wait_for(_ready, what="k3s installed and ready")
        installed = tmp_path / "bin" / "k3s"
        assert installed.stat().st_mode & 0o777 == 0o755
        assert installed.read_bytes() == h.wrapper.read_bytes()
    finally:
        h.close()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the airgap list names the amd64 asset")
def test_refuses_a_k3s_whose_checksum_does_not_match(tmp_path: Path) -> None:
    h = DaemonHarness(tmp_path)
    try:
        cfg = yaml.safe_load(h.config_path.read_text())
        cfg["k3s"].update(_airgap(tmp_path, h, corrupt=True))
        h.write_config(cfg)
        h.start()
        deadline = time.monotonic() + 20
        while "k3s is not usable" not in h.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "k3s is not usable" in h.log()
        assert "0" * 64 in h.log()  # the expected digest is named
        assert not (tmp_path / "bin" / "k3s").exists()
        assert h.status()["k3s"]["pid"] is None
    finally:
        h.close()


def test_sighup_with_a_good_config_applies_it(node: DaemonHarness) -> None:
    node.start()
    s = node.wait_for(_ready, what="k3s ready")
    cfg = yaml.safe_load(node.config_path.read_text())
    cfg["k3s"]["server_args"] = ["--disable=traefik"]
    node.write_config(cfg)
    node.signal(signal.SIGHUP)
    # A new command line is a new child spec: the supervisor restarts k3s with it.
    node.wait_for(
        lambda x: x["k3s"]["ready"] and x["k3s"]["pid"] not in (None, s["k3s"]["pid"]),
        what="k3s restarted with the new command line",
    )
    assert "configuration reloaded" in node.log()


def test_status_command_prints_the_node(node: DaemonHarness) -> None:
    node.start()
    node.wait_for(_ready, what="k3s ready")
    for extra, want in (([], "role server"), (["--json"], '"role": "server"')):
        r = subprocess.run(
            [str(PYTHON), "-m", "k3snoded", "status", "--config", str(node.config_path), *extra],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert want in r.stdout
        assert TOKEN not in r.stdout


def test_status_without_a_daemon_says_so(tmp_path: Path) -> None:
    h = DaemonHarness(tmp_path)
    try:
        r = subprocess.run(
            [str(PYTHON), "-m", "k3snoded", "status", "--config", str(h.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 69
        assert "cannot reach the daemon" in r.stderr
    finally:
        h.close()


def test_token_generate_writes_a_0600_file(tmp_path: Path) -> None:
    out = tmp_path / "token"
    r = subprocess.run(
        [str(PYTHON), "-m", "k3snoded", "token", "generate", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    token = out.read_text().strip()
    assert len(token) >= 32 and token not in r.stdout + r.stderr
    assert out.stat().st_mode & 0o777 == 0o600
