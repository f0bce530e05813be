"""The built .deb and .rpm: metadata, contents, lint, scriptlets and dependencies."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, Built, meta, need_tools

pytestmark = pytest.mark.timeout(900)
MONITORING = (  # packaging/monitoring/, shipped by both formats
    "/usr/share/k3snoded/prometheus/k3snoded-alerts.yml",
    "/usr/share/k3snoded/grafana/k3snoded-dashboard.json",
)


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)


def deb_field(deb: Path, name: str) -> str:
    return run("dpkg-deb", "-f", str(deb), name).stdout.strip()


def deb_listing(deb: Path) -> dict[str, str]:
    """path -> permission string, from `dpkg-deb -c`."""
    out: dict[str, str] = {}
    for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines():
        parts = line.split()
        path = parts[5].removeprefix(".")
        out[path.rstrip("/") or "/"] = parts[0]
    return out


# -- .deb -------------------------------------------------------------------------------------


def test_deb_control(built: Built) -> None:
    assert deb_field(built.deb, "Package") == "k3snoded"
    assert deb_field(built.deb, "Version") == built.version
    depends = deb_field(built.deb, "Depends")
    assert depends.split(", ")[0] == "python3.13 | python3.12 | python3.11"
    assert "libc6 (>= 2.17)" in depends and "iproute2" in depends
    assert "libsystemd0" not in depends  # the journal is spoken to directly (decision 0009)
    assert deb_field(built.deb, "Architecture") != "all"  # the venv holds C extensions


def test_deb_contents(built: Built) -> None:
    files = deb_listing(built.deb)
    assert files["/usr/bin/k3snoded"].startswith("-rwxr-xr-x")
    assert files["/lib/systemd/system/k3snoded.service"].startswith("-rw-r--r--")
    assert files["/etc/k3snoded/config.yaml.example"].startswith("-rw-r--r--")
    assert files["/etc/default/k3snoded"].startswith("-rw-r--r--")
    assert files["/etc/k3snoded"] == "drwx------"
    assert files["/var/lib/k3snoded"] == "drwx------"
    assert "/opt/k3snoded/pyvenv.cfg" in files
    assert "/usr/share/doc/k3snoded/copyright" in files
    assert "/usr/share/lintian/overrides/k3snoded" in files
    for path in MONITORING:
        assert files[path].startswith("-rw-r--r--"), path
    assert any(p.startswith("/opt/k3snoded/lib/common/k3snoded/") for p in files)
    for v in ("3.11", "3.12", "3.13"):  # one tree per CPython ABI, each with its C extensions
        site = f"/opt/k3snoded/lib/python{v}/site-packages"
        so = f"{site}/aiohttp/_http_parser.cpython-{v.replace('.', '')}"
        assert any(p.startswith(so) for p in files), v
        assert f"/opt/k3snoded/lib/python{v}/site-packages/k3snoded-common.pth" in files
    assert not any("__pycache__" in p for p in files)  # compiled on the target (postinst)
    # Never shipped: the operator's own files.
    assert "/etc/k3snoded/config.yaml" not in files
    assert "/etc/k3snoded/token" not in files
    # The venv is sealed: no installer, no console scripts but the interpreter links.
    assert not any("/site-packages/pip/" in p for p in files)
    assert sorted(p for p in files if p.startswith("/opt/k3snoded/bin/")) == [
        "/opt/k3snoded/bin/python3.11",
        "/opt/k3snoded/bin/python3.12",
        "/opt/k3snoded/bin/python3.13",
    ]


def test_deb_conffiles(built: Built) -> None:
    conffiles = run("dpkg-deb", "-I", str(built.deb), "conffiles").stdout.split()
    assert conffiles == ["/etc/k3snoded/config.yaml.example", "/etc/default/k3snoded"]


def test_deb_ships_the_repository_files(built: Built, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(built.deb), str(tmp_path))
    unit = tmp_path / "lib/systemd/system/k3snoded.service"
    assert unit.read_text() == (REPO / "systemd/k3snoded.service").read_text()
    for path in MONITORING:
        shipped = (tmp_path / path.lstrip("/")).read_bytes()
        assert shipped == (REPO / "packaging/monitoring" / Path(path).name).read_bytes()
    example = REPO / "etc/config.example.yaml"
    if example.exists():
        assert (tmp_path / "etc/k3snoded/config.yaml.example").read_bytes() == example.read_bytes()
    venv = tmp_path / "opt/k3snoded"
    # The interpreters are the system's (home); nothing of Debian's dist-packages is visible.
    cfg = (venv / "pyvenv.cfg").read_text()
    assert cfg == "home = /usr/bin\ninclude-system-site-packages = false\n"
    for v in ("3.11", "3.12", "3.13"):
        assert (venv / f"bin/python{v}").readlink() == Path(f"/usr/bin/python{v}")
        pth = venv / f"lib/python{v}/site-packages/k3snoded-common.pth"
        assert pth.read_text() == "/opt/k3snoded/lib/common\n"
    # The wrapper tries exactly the versions the package carries, newest first.
    wrapper = (tmp_path / "usr/bin/k3snoded").read_text()
    assert "for v in 3.13 3.12 3.11; do" in wrapper
    assert meta("PKG_PYTHONS") == "3.13 3.12 3.11"
    assert "for v in 3.13 3.12 3.11; do" in (venv / "bytecode").read_text()


def test_lintian_reports_no_errors_and_no_warnings(built: Built) -> None:
    need_tools("lintian")
    proc = run("lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", str(built.deb))
    problems = [line for line in proc.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert problems == [], proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every override is still needed (an unused one would hide nothing and mislead).
    assert "unused-override" not in proc.stdout


def test_deb_holds_nothing_of_the_build_machine(built: Built, tmp_path: Path) -> None:
    """A hermetic build: no extension module searches libraries in a path of the machine that
    built it (a wheel left in pip's cache by another interpreter brought a RUNPATH into
    /root/.pyenv), and no file names the build user's home or pyenv."""
    need_tools("readelf")
    run("dpkg-deb", "-x", str(built.deb), str(tmp_path))
    leaks: list[str] = []
    for so in sorted(tmp_path.rglob("*.so*")):
        if not so.is_file() or so.is_symlink():
            continue
        dynamic = run("readelf", "-d", str(so)).stdout
        for line in dynamic.splitlines():
            if "(RUNPATH)" in line or "(RPATH)" in line:
                paths = line.split("[", 1)[1].rstrip("]").split(":")
                leaks += [f"{so.relative_to(tmp_path)}: {p}" for p in paths if "$ORIGIN" not in p]
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for marker in (b"/.pyenv/", b"/.cache/pip/", str(Path.home()).encode() + b"/."):
                if marker in data:
                    leaks.append(f"{path.relative_to(tmp_path)} names {marker.decode()}")
    assert leaks == []


# -- .rpm -------------------------------------------------------------------------------------


def rpm_q(rpm: Path, *query: str) -> str:
    proc = run("rpm", "-qp", *query, str(rpm))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rpmlint_reports_no_errors(built: Built) -> None:
    need_tools("rpmlint")
    proc = run("rpmlint", "-r", str(REPO / "packaging/rpmlintrc"), str(built.rpm))
    assert " 0 errors" in proc.stdout, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rpm_contents(built: Built) -> None:
    files = set(rpm_q(built.rpm, "-l").split())
    for path in (
        "/usr/bin/k3snoded",
        "/usr/lib/systemd/system/k3snoded.service",
        "/etc/k3snoded",
        "/etc/k3snoded/config.yaml.example",
        "/etc/sysconfig/k3snoded",
        "/var/lib/k3snoded",
        "/opt/k3snoded/pyvenv.cfg",
        "/opt/k3snoded/bin/python3.11",
        "/opt/k3snoded/bin/python3.13",
        "/opt/k3snoded/lib/common/k3snoded/__init__.py",
        *MONITORING,
    ):
        assert path in files, path
    assert "/etc/k3snoded/config.yaml" not in files
    configs = set(rpm_q(built.rpm, "-c").split())
    assert configs == {"/etc/k3snoded/config.yaml.example", "/etc/sysconfig/k3snoded"}
    # %config(noreplace): flag 'n' in the file flags.
    flags = rpm_q(built.rpm, "--queryformat", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]")
    for conf in configs:
        line = next(ln for ln in flags.splitlines() if ln.startswith(conf + " "))
        assert "c" in line.split()[1] and "n" in line.split()[1], line
    modes = rpm_q(built.rpm, "--queryformat", "[%{FILENAMES} %{FILEMODES:perms}\n]")
    assert "/var/lib/k3snoded drwx------" in modes.splitlines()
    assert "/etc/k3snoded drwx------" in modes.splitlines()


def test_rpm_dependencies(built: Built) -> None:
    requires = {line.split()[0] for line in rpm_q(built.rpm, "-R").splitlines() if line}
    out = rpm_q(built.rpm, "-R")
    assert "(/usr/bin/python3.13 or /usr/bin/python3.12 or /usr/bin/python3.11)" in out
    assert "iproute" in requires
    assert not any("libsystemd" in r for r in requires)
    # No automatic scan: nothing like python3.11dist(...) or the bundled libraries' sonames.
    assert not any("dist(" in r or "libpq" in r for r in requires), requires


def scriptlets(rpm: Path) -> dict[str, str]:
    """{'postinstall': body, 'preuninstall': body, ...} from `rpm -qp --scripts`."""
    parts = re.split(r"^(\w+) scriptlet \(using [^)]*\):\n", rpm_q(rpm, "--scripts"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_rpm_scriptlets(built: Built) -> None:
    s = scriptlets(built.rpm)
    assert set(s) == {"postinstall", "preuninstall", "postuninstall", "posttrans"}
    # The commands only: comments and the operator hints (echo) may name anything.
    code = {
        name: "\n".join(
            ln for ln in text.splitlines() if "echo" not in ln and not ln.lstrip().startswith("#")
        )
        for name, text in s.items()
    }
    post, preun, postun = code["postinstall"], code["preuninstall"], code["postuninstall"]
    # Never started, enabled or restarted by the package.
    for text in code.values():
        assert "restart" not in text
        assert "start" not in text.replace("--now", "")
        assert "enable" not in text
    assert "daemon-reload" in post
    # Stop (and disable) only on erase ($1 == 0), never on upgrade.
    assert '[ "$1" -eq 0 ]' in preun
    assert "disable --now k3snoded.service" in preun
    assert '[ "$1" -eq 0 ]' in postun
    assert "/var/lib/k3snoded" not in postun  # rpm has no purge: erase keeps the state


def test_rpm_scriptlets_run(built: Built, tmp_path: Path) -> None:
    """The scriptlets are valid sh and succeed for install (1), upgrade (2) and erase (0)."""
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here: the erase scriptlet would act on this machine")
    for name, body in scriptlets(built.rpm).items():
        script = tmp_path / f"{name}.sh"
        script.write_text(body)
        for arg in ("1", "2", "0"):
            proc = run("sh", "-e", str(script), arg)
            assert proc.returncode == 0, f"{name} {arg}: {proc.stderr}"
            assert proc.stderr == "", f"{name} {arg}: {proc.stderr}"


def test_rpm_install_reinstall_erase_in_a_root(built: Built, tmp_path: Path) -> None:
    """rpm's side of the conffile story, in a private --root (scriptlets: see above)."""
    root = tmp_path / "root"
    rpm = ("rpm", "--root", str(root))

    def ok(*argv: str) -> None:
        proc = run(*rpm, *argv)
        assert proc.returncode == 0, proc.stderr

    ok("--initdb")
    ok("-i", "--nodeps", "--noscripts", str(built.rpm))
    sysconfig = root / "etc/sysconfig/k3snoded"
    example = root / "etc/k3snoded/config.yaml.example"
    assert (root / "usr/bin/k3snoded").stat().st_mode & 0o777 == 0o755
    assert (root / "var/lib/k3snoded").stat().st_mode & 0o777 == 0o700
    edited = sysconfig.read_text() + "K3SNODED_DEBUG=1\n"
    sysconfig.write_text(edited)
    (root / "var/lib/k3snoded/marker").write_text("node state")
    (root / "etc/k3snoded/config.yaml").write_text("operator's\n")

    ok("-U", "--replacepkgs", "--nodeps", "--noscripts", str(built.rpm))
    assert sysconfig.read_text() == edited  # %config(noreplace)

    ok("-e", "--nodeps", "--noscripts", "k3snoded")
    assert not (root / "usr/bin/k3snoded").exists()
    assert not (root / "opt/k3snoded").exists()
    assert not sysconfig.exists()
    assert (root / "etc/sysconfig/k3snoded.rpmsave").read_text() == edited
    assert not example.exists()  # unedited: removed
    assert (root / "var/lib/k3snoded/marker").read_text() == "node state"  # no purge in rpm
    assert (root / "etc/k3snoded/config.yaml").read_text() == "operator's\n"
