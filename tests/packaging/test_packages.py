"""The built .deb and .rpm: metadata, contents, lint, scriptlets and dependencies."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, Built, need_tools

pytestmark = pytest.mark.timeout(900)


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
    for dep in ("python3.11", "python3 (>= 3.11)", "libc6", "libsystemd0", "iproute2"):
        assert dep in depends
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
    assert any(p.startswith("/opt/k3snoded/lib/python3.11/site-packages/k3snoded/") for p in files)
    # Never shipped: the operator's own files.
    assert "/etc/k3snoded/config.yaml" not in files
    assert "/etc/k3snoded/token" not in files
    # The venv is sealed: no installer, no console scripts but the interpreter links.
    assert not any("/site-packages/pip/" in p for p in files)
    assert sorted(p for p in files if p.startswith("/opt/k3snoded/bin/")) == [
        "/opt/k3snoded/bin/python",
        "/opt/k3snoded/bin/python3",
        "/opt/k3snoded/bin/python3.11",
    ]


def test_deb_conffiles(built: Built) -> None:
    conffiles = run("dpkg-deb", "-I", str(built.deb), "conffiles").stdout.split()
    assert conffiles == ["/etc/k3snoded/config.yaml.example", "/etc/default/k3snoded"]


def test_deb_ships_the_repository_files(built: Built, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(built.deb), str(tmp_path))
    unit = tmp_path / "lib/systemd/system/k3snoded.service"
    assert unit.read_text() == (REPO / "systemd/k3snoded.service").read_text()
    example = REPO / "etc/config.example.yaml"
    if example.exists():
        assert (tmp_path / "etc/k3snoded/config.yaml.example").read_bytes() == example.read_bytes()
    venv = tmp_path / "opt/k3snoded"
    assert "/opt/k3snoded" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin/python3.11").readlink() == Path("/usr/bin/python3.11")


def test_lintian_reports_no_errors(built: Built) -> None:
    need_tools("lintian")
    proc = run("lintian", "--fail-on", "error", "--tag-display-limit", "0", str(built.deb))
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], proc.stdout
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
    assert "/usr/bin/python3.11" in requires
    assert "iproute" in requires
    assert "libsystemd.so.0()(64bit)" in requires
    # No automatic scan: nothing like python3.11dist(...) or the bundled libraries' sonames.
    assert not any("dist(" in r or "libpq" in r for r in requires), requires


def scriptlets(rpm: Path) -> dict[str, str]:
    """{'postinstall': body, 'preuninstall': body, ...} from `rpm -qp --scripts`."""
    parts = re.split(r"^(\w+) scriptlet \(using [^)]*\):\n", rpm_q(rpm, "--scripts"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_rpm_scriptlets(built: Built) -> None:
    s = scriptlets(built.rpm)
    assert set(s) == {"postinstall", "preuninstall", "postuninstall"}
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
