"""Self-healing in the lab (issue: self-healing, faults): a dead server is replaced, a returning
machine rejoins without a second bootstrap, the coordinator can die, ``k3snoded leave`` hands
over first. The quick set; the long fault runs are behind ``make soak``.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.lab import dbs
from tests.lab.fixtures import LabFactory, lab_factory, require_root
from tests.lab.fleet import PYTHON, REPO, Fleet, Status

__all__ = ["lab_factory"]

require_root()
pytestmark = pytest.mark.lab


def _servers(st: dict[str, Status | None]) -> set[str]:
    return {n for n, s in st.items() if s is not None and s["node"]["role"] == "server"}


def _ready_servers(st: dict[str, Status | None], exclude: str = "") -> set[str]:
    return {
        n
        for n, s in st.items()
        if s is not None and n != exclude and s["node"]["role"] == "server" and s["k3s"]["ready"]
    }


def _cacerts(fleet: Fleet, name: str) -> str:
    code = (
        "import ssl,urllib.request,sys;"
        "c=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE;"
        "sys.stdout.write(urllib.request.urlopen('https://127.0.0.1:6443/cacerts',"
        "context=c,timeout=5).read().decode())"
    )
    return fleet.node(name).machine.run([str(PYTHON), "-c", code]).stdout


def _fleet(lab_factory: LabFactory, **kw: object) -> Fleet:
    lab = lab_factory(4, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=3, agents=1, servers=2, **kw)  # type: ignore[arg-type]
    fleet.start_all()
    fleet.wait(fleet.converged, timeout=90, what="fleet formed")
    return fleet


def test_dead_server_is_replaced_and_rejoins_without_a_second_bootstrap(
    lab_factory: LabFactory,
) -> None:
    fleet = _fleet(lab_factory)
    st = fleet.statuses()
    before = _servers(st)
    ca = _cacerts(fleet, sorted(before)[0])
    # Crash the coordinator when it is a server: then a new coordinator must take over the
    # lease before anyone can decide the replacement.
    coordinator = next(n for n, x in st.items() if x and x.get("coordinator") == n)
    victim = coordinator if coordinator in before else sorted(before)[-1]
    node = fleet.node(victim)
    # A crash: every process on the machine killed, its link down.
    for pid in node.machine.pids():
        node.machine.kill(pid)
    node.machine.link_down()
    st = fleet.wait(
        lambda st: len(_ready_servers(st, exclude=victim)) == 2,
        timeout=10 + 5 + 30,  # dead_after + decision + the stand-in's start
        what=f"a replacement for {victim}",
    )
    replacement = (_ready_servers(st, exclude=victim) - before).pop()
    assert _cacerts(fleet, replacement) == ca, "the replacement must join the same cluster CA"
    # The coordinator's own status: only it reads every member (the others read their own
    # row, the servers' and the coordinator's), so only it lists the dead, demoted machine.
    coord = next(
        s for s in st.values() if s is not None and s.get("coordinator") == s["node"]["name"]
    )
    dead = next(p for p in coord["peers"] if p["name"] == victim)
    assert dead["role"] == "agent" and not dead["alive"]

    # The machine returns and takes the role the fleet needs (agent): no second bootstrap.
    node.machine.link_up()
    node.start()
    st = fleet.wait(fleet.converged, timeout=60, what=f"{victim} back")
    s = st[victim]
    assert s is not None and s["node"]["role"] == "agent"
    assert len(_servers(st)) == 2
    assert {x.get("bootstrapped_by") for x in st.values() if x and x.get("bootstrapped_by")} == {
        next(x["bootstrapped_by"] for x in st.values() if x and x.get("bootstrapped_by"))
    }
    for name in _servers(st):
        assert _cacerts(fleet, name) == ca


def test_coordinator_daemon_killed_and_restarted_roles_do_not_change(
    lab_factory: LabFactory,
) -> None:
    """SIGKILL of the coordinator's daemon, restarted 5 s later (the unit's RestartSec): its
    k3s is adopted, not restarted, and no role changes (the heartbeat gap stays inside
    coordination.dead_after)."""
    fleet = _fleet(lab_factory)
    st = fleet.statuses()
    roles = {n: s["node"]["role"] for n, s in st.items() if s}
    coordinator = next(n for n, s in st.items() if s and s.get("coordinator") == n)
    k3s_pid = st[coordinator]["k3s"]["pid"]  # type: ignore[index]
    fleet.node(coordinator).kill()  # the daemon only; its k3s keeps running
    time.sleep(5)
    fleet.node(coordinator).start()
    st = fleet.wait(
        lambda st: (
            fleet.converged(st)
            and any(s is not None and s.get("coordinator") == n for n, s in st.items())
        ),
        timeout=60,
        what="old coordinator back and a coordinator elected",
    )
    assert {n: s["node"]["role"] for n, s in st.items() if s} == roles
    assert st[coordinator]["k3s"]["pid"] == k3s_pid  # type: ignore[index]
    assert st[coordinator]["k3s"]["adopted"]  # type: ignore[index]


def test_leave_hands_over_before_stopping(lab_factory: LabFactory) -> None:
    fleet = _fleet(lab_factory)
    st = fleet.statuses()
    servers = _servers(st)
    leaver = sorted(servers)[0]
    node = fleet.node(leaver)
    r = node.machine.run(
        [
            str(PYTHON),
            "-m",
            "k3snoded",
            "leave",
            "--config",
            str(node.config_dir / "config.yaml"),
            "--timeout",
            "90",
        ],
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left the fleet" in r.stdout
    st = fleet.statuses()
    assert len(_ready_servers(st, exclude=leaver)) == 2, "a replacement was ready before it left"
    s = st[leaver]
    assert s is not None and s["leaving"] == "left" and s["k3s"]["pid"] is None
    # Its member row is gone: the datastore members no longer list it (one cycle later).
    fleet.wait(
        lambda st: all(
            leaver not in {p["name"] for p in x["peers"]}
            for n, x in st.items()
            if x is not None and n != leaver and "coordinator" in x
        ),
        timeout=10,
        what=f"{leaver} gone from the member table",
    )


def test_replacement_machine_with_the_same_name_joins(lab_factory: LabFactory) -> None:
    """k3s refuses a node name whose stored node password differs (k3s #6054, #802). A new
    machine with the old one's name gets the same token-derived password from k3snoded."""
    fleet = _fleet(lab_factory)
    node = fleet.node("n4")  # the agent-only machine
    first = node.node_password_file.read_text()

    def replace_machine(password: str | None) -> None:
        node.stop()
        node.machine.stop_all()
        shutil.rmtree(node.root)
        shutil.rmtree(node.data_dir)
        node.root.mkdir()
        if password is not None:  # a password k3snoded did not choose
            node.node_password_file.parent.mkdir(parents=True)
            node.node_password_file.write_text(password)
        node.start()

    # Control: a fresh machine with some other password is refused by the servers.
    replace_machine("0" * 32 + "\n")
    time.sleep(8)
    s = node.status()
    assert s is not None and not s["k3s"]["ready"]
    assert "Node password rejected" in node.log()

    # A fresh disk: k3snoded writes the derived password, the servers accept it.
    replace_machine(None)
    fleet.wait(
        lambda st: bool(st["n4"] and st["n4"]["k3s"]["ready"]), timeout=60, what="n4 rejoined"
    )
    assert node.node_password_file.read_text() == first
    assert node.node_password_file.stat().st_mode & 0o777 == 0o600


def test_datastore_outage_changes_nothing_and_recovers(lab_factory: LabFactory) -> None:
    """The outage policy: no role changes, k3s left running, the VIP stays on a server whose
    API answers; coordination resumes by itself when the datastore is back."""
    lab = lab_factory(4, with_db=True)
    db = dbs.start(lab, "postgres")
    # k3s itself would exit 255 after its own leader-election timeout; keep the stand-in up
    # through this outage so "left running" is observable as the same pid.
    fleet = Fleet(
        lab,
        endpoint=db.endpoint,
        eligible=3,
        agents=1,
        servers=2,
        fake_env={"K3S_FAKE_DATASTORE_LOSS_EXIT": "120"},
    )
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="fleet formed")
    roles = {n: s["node"]["role"] for n, s in st.items() if s}
    pids = {n: s["k3s"]["pid"] for n, s in st.items() if s}
    holder = fleet.vip_holders()
    dbs.stop(lab, "postgres")
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        now = fleet.statuses()
        assert {n: s["node"]["role"] for n, s in now.items() if s} == roles
        assert {n: s["k3s"]["pid"] for n, s in now.items() if s} == pids
        # No apiserver is ready without its datastore (/readyz): the VIP may be released,
        # but never moves to another machine.
        assert fleet.vip_holders() in (holder, [])
        time.sleep(1.0)
    assert any("datastore unavailable" in fleet.node(n).log() for n in roles if n != "n4")
    dbs.start(lab, "postgres")
    st = fleet.wait(
        lambda st: (
            fleet.converged(st)
            and all("datastore reachable again" in fleet.node(n).log() for n in ("n1", "n2", "n3"))
        ),
        timeout=60,
        what="coordination resumed",
    )
    assert {n: s["node"]["role"] for n, s in st.items() if s} == roles
    after = {n: s["k3s"]["pid"] for n, s in st.items() if s}
    assert after == pids, "\n".join(
        fleet.node(n).log()[-4000:] for n in after if after[n] != pids[n]
    )


def test_an_agent_machine_restarted_during_an_outage_resumes_its_role(
    lab_factory: LabFactory,
) -> None:
    """The role persisted in state_dir: a fleet agent whose machine restarts while the datastore
    is down runs its agent again without waiting for the datastore (agents do not need it)."""
    lab = lab_factory(4, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(lab, endpoint=db.endpoint, eligible=3, agents=1, servers=2)
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="fleet formed")
    agent = next(
        n for n in fleet.nodes if not n.agent_only and (st[n.name] or {})["node"]["role"] == "agent"
    )
    dbs.stop(lab, "postgres")
    agent.stop()
    agent.machine.stop_all()  # the machine restarts: its k3s is gone too
    agent.start()
    s = fleet.wait(
        lambda st: bool((st[agent.name] or {}).get("k3s", {}).get("pid")),
        timeout=20,
        what=f"{agent.name}'s agent running again with the datastore down",
    )[agent.name]
    assert s is not None and s["node"]["role"] == "agent"
    assert "resuming the agent role" in s["decision"]
    assert "datastore ready" not in agent.log().split("k3snoded 0.1.0 starting")[-1]


def _pids(st: dict[str, Status | None]) -> dict[str, int | None]:
    return {n: s["k3s"]["pid"] for n, s in st.items() if s is not None}


@pytest.mark.parametrize("fault", ["freeze", "partition"])
def test_a_returning_server_does_not_take_its_seat_back(
    lab_factory: LabFactory, fault: str
) -> None:
    """A ready server is frozen (SIGSTOP of every process on it) or cut off, and replaced.
    When it comes back it still runs k3s server and says role=server; the replacement must
    keep its seat and its k3s (same pid), and so must the other server."""
    fleet = _fleet(lab_factory)
    st = fleet.statuses()
    coordinator = next(n for n, s in st.items() if s and s.get("coordinator") == n)
    servers = _servers(st)
    victim = sorted(servers - {coordinator})[0] if servers - {coordinator} else sorted(servers)[0]
    machine = fleet.node(victim).machine
    pids = machine.pids()
    if fault == "freeze":
        for pid in pids:
            machine.freeze(pid)
    else:
        machine.partition()
    try:
        st = fleet.wait(
            lambda st: len(_ready_servers(st, exclude=victim)) == 2,
            timeout=10 + 5 + 30,
            what=f"a replacement for the {fault} {victim}",
        )
    finally:
        if fault == "freeze":
            for pid in pids:
                machine.thaw(pid)
        else:
            machine.heal()
    seated = _ready_servers(st, exclude=victim)
    before = {n: p for n, p in _pids(st).items() if n in seated}
    st = fleet.wait(
        lambda st: (
            fleet.converged(st) and (st[victim] or {}).get("node", {}).get("role") == "agent"
        ),
        timeout=60,
        what=f"{victim} back as an agent",
    )
    time.sleep(5.0)  # long enough for a flapping coordinator to act
    st = fleet.statuses()
    assert _ready_servers(st) == seated, fleet.table(st)
    assert {n: p for n, p in _pids(st).items() if n in seated} == before, fleet.table(st)


def test_without_registration_address_losing_a_server_restarts_no_surviving_k3s(
    lab_factory: LabFactory,
) -> None:
    """No registration.address (no VIP): agents join a server's own address. A server dies;
    the replacement is promoted (its k3s restarts: a role change), and no other surviving
    k3s restarts (before: --tls-san and agents' --server followed the lowest ready server)."""
    lab = lab_factory(5, with_db=True)
    db = dbs.start(lab, "postgres")
    fleet = Fleet(
        lab,
        endpoint=db.endpoint,
        eligible=4,
        agents=1,
        servers=2,
        agents_know_registration=False,
        extra={"registration": {"address": None, "vip": {"enabled": False}}},
    )
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="fleet formed without an address")
    time.sleep(5.0)  # settled: announcements and registrations stable
    st = fleet.statuses()
    before = _pids(st)
    servers = _servers(st)
    victim = sorted(servers)[0]  # the lowest address: the one everything followed before
    node = fleet.node(victim)
    for pid in node.machine.pids():
        node.machine.kill(pid)
    node.machine.link_down()
    st = fleet.wait(
        lambda st: len(_ready_servers(st, exclude=victim)) == 2,
        timeout=10 + 5 + 30,
        what=f"a replacement for {victim}",
    )
    time.sleep(5.0)
    st = {n: s for n, s in fleet.statuses().items() if n != victim}
    promoted = _ready_servers(st) - servers
    after = _pids(st)
    same = {n: before[n] for n in after if n not in promoted}
    assert {n: after[n] for n in same} == same, fleet.table()
    assert all(s is not None and s["k3s"]["ready"] for s in st.values()), fleet.table()


def test_a_coordinator_dying_in_its_role_write_does_not_stop_failover(
    lab_factory: LabFactory,
) -> None:
    """The datastore connections go through the contract suite's proxy, which silences the
    connection that sends a role write (the coordinator's machine dies right then: the server
    is not told); the test then crashes that machine. Before, the write was a transaction whose
    SELECT ... FOR UPDATE had locked the lease row for hours: nobody could coordinate again."""
    lab = lab_factory(5, with_db=True)
    db = dbs.start(lab, "postgres")
    assert lab.db is not None
    report, armed = lab.workdir / "silenced", lab.workdir / "armed"
    report.touch()
    port = 15432
    proxy = lab.db.spawn(
        [
            str(PYTHON),
            "-m",
            "tests.contract.proxy",
            "--listen",
            f"{db.host}:{port}",
            "--target",
            f"{db.host}:{db.port}",
            "--silence-on",
            "UPDATE k3snoded_members SET assigned",
            "--report",
            str(report),
            "--armed-by",
            str(armed),
        ],
        cwd=REPO,
    )
    assert proxy.poll() is None
    endpoint = db.endpoint.replace(f":{db.port}/", f":{port}/")
    fleet = Fleet(lab, endpoint=endpoint, eligible=4, agents=1, servers=2)
    time.sleep(1.0)  # the proxy listens
    fleet.start_all()
    st = fleet.wait(fleet.converged, timeout=90, what="fleet formed through the proxy")
    armed.touch()  # formation's role writes went through; from now on the next one is cut
    coordinator = next(n for n, s in st.items() if s and s.get("coordinator") == n)
    victim = sorted(_servers(st) - {coordinator})[0]
    _crash(fleet, victim)  # the coordinator now writes a new decision...
    deadline = time.monotonic() + 30
    while not report.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    silenced = report.read_text().split()
    assert silenced, "no role write was sent"
    writer = next(n.name for n in fleet.nodes if n.machine.address == silenced[0])
    _crash(fleet, writer)  # ...and dies in the middle of it
    rest = {n.name for n in fleet.nodes if not n.agent_only} - {victim, writer}
    fleet.wait(
        lambda st: (
            _ready_servers(st) >= rest
            and all((st[n] or {}).get("coordinator") in rest for n in rest)
        ),
        timeout=10 + 10 + 5 + 30,  # lease TTL + dead_after + decision + the stand-in's start
        what="a new coordinator and two ready servers",
    )


def _crash(fleet: Fleet, name: str) -> None:
    node = fleet.node(name)
    for pid in node.machine.pids():
        node.machine.kill(pid)
    node.machine.link_down()
