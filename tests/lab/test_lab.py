"""The lab itself: machines, reachability, multicast, every fault taking effect and undone, cleanup.

Every server and client below is a small Python program with its own time limit.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import dbs, keepalived, procs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.netns import Lab, Machine, list_namespaces

require_root()
pytestmark = pytest.mark.lab
__all__ = ["lab_factory"]  # the fixture, imported for pytest

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
PORT = 7000

TCP_SERVER = r"""
import socket, sys, time
name, limit = sys.argv[1], float(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(128); s.settimeout(0.1)
print("ready", flush=True)
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.sendall(name.encode()); c.close()
"""

TCP_CLIENT = r"""
import json, socket, sys
out = {}
for addr in sys.argv[2:]:
    try:
        with socket.create_connection((addr, 7000), timeout=float(sys.argv[1])) as c:
            c.settimeout(float(sys.argv[1])); out[addr] = c.recv(64).decode()
    except OSError as e:
        out[addr] = None
print(json.dumps(out))
"""

MCAST_RECV = r"""
import socket, sys, time
addr = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("224.0.0.251", 45353))
mreq = socket.inet_aton("224.0.0.251") + socket.inet_aton(addr)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(5); print("ready", flush=True)
try:
    print(s.recv(100).decode(), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"""

MCAST_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(3):
    s.sendto(sys.argv[2].encode(), ("224.0.0.251", 45353)); time.sleep(0.05)
"""

UDP_COUNT = r"""
import signal, socket, sys, time
done = []
signal.signal(signal.SIGUSR1, lambda *_: done.append(time.monotonic()))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7001)); s.settimeout(0.05)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
print("ready", flush=True)
n, end = 0, time.monotonic() + 8
while time.monotonic() < end and not (done and time.monotonic() - done[0] > 0.2):
    try:
        s.recv(100); n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"""

UDP_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    try:
        s.sendto(b"x", (sys.argv[1], 7001))
    except OSError:  # EPERM when nftables drops on output
        pass
    if i % 20 == 19: time.sleep(0.002)
"""


def wait_line(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> str:
    """The next stdout line of proc, waiting at most timeout seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from pid {proc.pid} within {timeout} s"
    return proc.stdout.readline().decode().strip()


def serve(m: Machine, limit: float = 20) -> subprocess.Popen[bytes]:
    proc = m.spawn([PY, "-c", TCP_SERVER, m.name, str(limit)], stdout=subprocess.PIPE)
    assert wait_line(proc) == "ready"
    return proc


def connect(m: Machine, targets: list[Machine], timeout: float = 1.0) -> dict[str, str | None]:
    res = m.run([PY, "-c", TCP_CLIENT, str(timeout), *(t.address for t in targets)], timeout=30)
    out: dict[str, str | None] = json.loads(res.stdout)
    return out


def reaches(a: Machine, b: Machine, timeout: float = 1.0) -> bool:
    return connect(a, [b], timeout)[b.address] == b.name


def root_snapshot() -> tuple[str, str]:
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    return out("ip", "-br", "link"), out("ip", "-br", "addr")


def test_ten_machines_layout_and_all_pairs_tcp(lab_factory: LabFactory) -> None:
    lab = lab_factory(10)
    ms = lab.machines
    assert [m.address for m in ms] == [f"198.18.0.{11 + i}" for i in range(10)]
    assert ms[0].mac == "02:00:c6:12:00:01" and ms[9].mac == "02:00:c6:12:00:0a"
    for m in ms:
        assert m.ipv4_addresses() == {m.address}
        assert m.run(["cat", "/proc/net/if_inet6"]).stdout == ""  # IPv6 off
        assert "default" not in m.run(["ip", "route"]).stdout
        link = m.run(["ip", "-br", "link", "show", "eth0"]).stdout
        assert m.mac in link and " UP " in link
    assert (
        lab.machines[0]
        .run(["ip", "netns", "exec", lab.switch_ns, "cat", "/proc/net/if_inet6"])
        .stdout
        == ""
    )
    for m in ms:
        serve(m)
    for m in ms:
        others = [o for o in ms if o is not m]
        assert connect(m, others) == {o.address: o.name for o in others}


def test_multicast_reaches_every_other_machine(lab_factory: LabFactory) -> None:
    lab = lab_factory(10)
    sender, *receivers = lab.machines
    listening = []
    for m in receivers:
        p = m.spawn([PY, "-c", MCAST_RECV, m.address], stdout=subprocess.PIPE)
        listening.append(p)
    for p in listening:
        assert wait_line(p) == "ready"
    sender.run([PY, "-c", MCAST_SEND, sender.address, "hello-from-n1"])
    assert [wait_line(p, 6) for p in listening] == ["hello-from-n1"] * len(receivers)


def test_link_down_then_up(lab_factory: LabFactory) -> None:
    n1, n2 = lab_factory(2).machines
    serve(n1)
    assert reaches(n2, n1)
    n1.link_down()
    assert "state DOWN" in n1.run(["ip", "link", "show", "eth0"]).stdout
    assert not reaches(n2, n1, timeout=0.5)
    n1.link_up()
    assert reaches(n2, n1)


def test_partition_then_heal_keeps_carrier(lab_factory: LabFactory) -> None:
    n1, n2, n3 = lab_factory(3).machines
    serve(n1)
    serve(n3)
    n1.partition()
    assert not reaches(n2, n1, timeout=0.5)
    assert reaches(n2, n3)
    assert "LOWER_UP" in n1.run(["ip", "link", "show", "eth0"]).stdout  # the node sees no fault
    n1.heal()
    assert reaches(n2, n1)
    n1.partition(carrier=False)
    assert "NO-CARRIER" in n1.run(["ip", "link", "show", "eth0"]).stdout
    assert not reaches(n2, n1, timeout=0.5)
    n1.heal()
    assert reaches(n2, n1)


def test_split_then_join(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    n1, n2, n3 = lab.machines
    for m in lab.machines:
        serve(m)
    lab.split([n1], [n2])
    assert connect(n3, [n1, n2]) == {n1.address: "n1", n2.address: "n2"}
    assert connect(n1, [n2, n3], timeout=0.5) == {n2.address: None, n3.address: "n3"}
    lab.join()
    assert reaches(n1, n2)


def count_udp(receiver: Machine, sender: Machine, count: int = 200) -> int:
    p = receiver.spawn([PY, "-c", UDP_COUNT], stdout=subprocess.PIPE)
    assert wait_line(p) == "ready"
    sender.run([PY, "-c", UDP_SEND, receiver.address, str(count)])
    receiver.kill(p, signal.SIGUSR1)  # the sender is done: count what arrives in the next 0.2 s
    return int(wait_line(p, 10))


def test_loss_then_clear(lab_factory: LabFactory) -> None:
    n1, n2 = lab_factory(2).machines
    assert count_udp(n1, n2) == 200
    n1.loss(30, direction="in")
    got = count_udp(n1, n2)
    assert 0 < got < 200, got
    n1.clear_loss()
    assert count_udp(n1, n2) == 200
    n2.loss(100, direction="out")
    assert count_udp(n1, n2) == 0
    n2.clear_loss()
    assert count_udp(n1, n2) == 200


def test_delay_applies_or_says_why(lab_factory: LabFactory) -> None:
    n1, n2 = lab_factory(2).machines
    try:
        n1.delay(100)
    except NotImplementedError as exc:
        assert "netem" in str(exc)
        return
    out = n2.run(["ping", "-c", "2", "-W", "2", n1.address]).stdout
    assert "time=1" in out  # ≥ 100 ms
    n1.clear_delay()


TCP_SINK = r"""
import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", 7002)); s.listen(1); s.settimeout(10)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(10); n = 0
while (b := c.recv(65536)):
    n += len(b)
c.close()
print(n, flush=True)
"""

TCP_PUSH = r"""
import socket, sys, time
t = time.monotonic()
with socket.create_connection((sys.argv[1], 7002), timeout=10) as c:
    c.settimeout(10); c.sendall(b"x" * int(sys.argv[2])); c.shutdown(socket.SHUT_WR)
    c.recv(1)  # returns at EOF: the sink has read everything
print(time.monotonic() - t)
"""


def test_throttle_then_clear(lab_factory: LabFactory) -> None:
    n1, n2 = lab_factory(2).machines
    n2.throttle(800)  # 100 kB/s
    sink = n1.spawn([PY, "-c", TCP_SINK], stdout=subprocess.PIPE)
    assert wait_line(sink) == "ready"
    took = float(n2.run([PY, "-c", TCP_PUSH, n1.address, "50000"]).stdout)
    assert int(wait_line(sink, 10)) == 50000
    assert took >= 0.3, took  # 50 kB at 100 kB/s cannot take less (a lower bound: load only adds)
    assert "tbf" in n2.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    n2.clear_throttle()
    assert "tbf" not in n2.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout


def test_freeze_thaw_and_kill(lab_factory: LabFactory) -> None:
    (n1,) = lab_factory(1).machines
    proc = n1.spawn(["sleep", "60"])
    n1.freeze(proc)
    assert wait_state(proc.pid, "T")
    n1.thaw(proc)
    assert wait_state(proc.pid, "S")
    n1.kill(proc, signal.SIGKILL)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    with pytest.raises(ValueError, match="neither spawned by nor inside"):
        n1.kill(os.getpid(), 0)  # never a process outside the lab


def wait_state(pid: int, state: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while procs.pid_state(pid) != state:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_restart_ends_everything_and_comes_back(lab_factory: LabFactory) -> None:
    n1, n2 = lab_factory(2).machines
    serve(n1)
    sleeper = n1.spawn(["sleep", "60"])
    n1.run(["ip", "addr", "add", "198.18.0.100/24", "dev", "eth0"])
    n1.loss(100)
    assert len(n1.pids()) == 2
    n1.restart()
    assert n1.pids() == []
    assert sleeper.poll() is not None
    assert n1.ipv4_addresses() == {n1.address}
    assert "drop" not in n1.run(["nft", "list", "ruleset"]).stdout
    serve(n1)
    assert reaches(n2, n1)


@pytest.mark.parametrize("kind", ["mysql", "postgres"])
def test_database_in_db_machine(lab_factory: LabFactory, kind: dbs.Kind) -> None:
    lab = lab_factory(1, with_db=True)
    db = dbs.start(lab, kind)
    who = {
        "mysql": "SELECT SUBSTRING_INDEX(USER(), '@', -1)",
        "postgres": "SELECT host(inet_client_addr())",
    }[kind]
    assert (
        db.endpoint
        == {
            "mysql": "mysql://k3s:k3s@tcp(198.18.0.240:3306)/k3s",
            "postgres": "postgres://k3s:k3s@198.18.0.240:5432/k3s?sslmode=disable",
        }[kind]
    )
    src = f"c = {db.python_connect_source()}; k = c.cursor(); k.execute({who!r})\n"
    src += "print(k.fetchone()[0])"
    assert lab.machines[0].run([PY, "-c", src]).stdout.strip() == lab.machines[0].address
    # nothing listens in the root namespace on the db address
    assert (
        "198.18.0.240"
        not in subprocess.run(["ss", "-ltn"], capture_output=True, text=True, check=True).stdout
    )


def test_keepalived_vip_and_kill_both(lab_factory: LabFactory) -> None:
    n1, n2 = lab_factory(2).machines
    vip = "198.18.0.100/24"
    k1 = keepalived.start(n1, keepalived.VrrpConfig(vip=vip, priority=150, state="MASTER"))
    k2 = keepalived.start(n2, keepalived.VrrpConfig(vip=vip, priority=100))
    k1.wait_vip(True, timeout=5)
    assert not k2.holds_vip()
    assert k1.vrrp_pid() != k1.pid
    k1.kill_both()
    k2.wait_vip(True, timeout=5)
    assert k1.holds_vip()  # no cleanup after SIGKILL of both (lab-findings §3)


def test_teardown_leaves_nothing_behind() -> None:
    before = root_snapshot()
    with pytest.raises(RuntimeError, match="boom"), Lab(3, with_client=True, with_db=True) as lab:
        names = lab.namespaces
        lab.stop_grace = 0.3  # the stubborn process below needs SIGKILL
        stubborn = lab.machines[0].spawn(
            [
                PY,
                "-c",
                "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
            ]
        )
        client = lab.client
        assert client is not None
        frozen = client.spawn(["sleep", "60"])
        client.freeze(frozen)
        time.sleep(0.2)
        raise RuntimeError("boom")
    assert not set(names) & set(list_namespaces())
    assert stubborn.poll() is not None and frozen.poll() is not None
    assert root_snapshot() == before
    assert not lab.state_file.exists() and not lab.workdir.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cleans_up(sig: int) -> None:
    # A shell that runs a command in the background without job control starts it with SIGINT
    # ignored, and the ignoring is inherited: the child then never sees the signal at all. The
    # lab is about what happens when the signal arrives, so the child takes Python's default.
    script = (
        "import signal, sys, time; from tests.lab.netns import Lab\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "lab = Lab(2).up(); p = lab.machines[0].spawn(['sleep', '60'])\n"
        "print(lab.prefix, p.pid, flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([PY, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    prefix = ""
    try:
        prefix, pid = wait_line(proc, 10).split()
        os.kill(proc.pid, sig)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            if prefix:  # the child could not clean up: do it, so no namespace outlives the test
                subprocess.run([PY, "-m", "tests.lab", "down", prefix], cwd=REPO, check=False)
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
    assert not procs.alive(int(pid))


def test_sigterm_during_down_waits_for_it() -> None:
    script = (
        "import time; from tests.lab.netns import Lab\n"
        "lab = Lab(2).up(); lab.stop_grace = 1.0\n"
        "p = lab.machines[0].spawn(['python3', '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "time.sleep(0.3); print(lab.prefix, p.pid, flush=True); lab.down(); time.sleep(30)\n"
    )
    proc = subprocess.Popen([PY, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    try:
        prefix, pid = wait_line(proc, 10).split()
        time.sleep(0.3)  # inside down(), waiting for the stubborn process
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
    assert not procs.alive(int(pid))


def test_more_than_thirty_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.30 machines, not 31: the kernel's ARP table"):
        Lab(31)
    with pytest.raises(ValueError):
        Lab(0)


def test_cli_up_status_exec_down() -> None:
    name = f"cli{os.getpid()}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "tests.lab", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        assert cli("up", "2", "--client", "--name", name).returncode == 0
        status = cli("status", name).stdout
        assert "198.18.0.250" in status and f"{name}-n2" in status
        res = cli("exec", "--name", name, "client", "ip", "-br", "addr", "show", "eth0")
        assert "198.18.0.250/24" in res.stdout
    finally:
        down = cli("down", name)
    assert down.returncode == 0, down.stderr
    assert not [ns for ns in list_namespaces() if ns.startswith(name + "-")]
