# shellcheck shell=bash
# The one description of the k3snoded package, sourced by packaging/build.sh (and by the tests).
# Both the .deb and the .rpm are generated from these values; nothing about the package's
# identity, dependencies, conffiles or file layout is written anywhere else.
#
# Expects the current directory to be the repository root.

PKG_NAME=k3snoded
# The version has one home: k3snoded/__init__.py. K3SNODED_VERSION_SUFFIX (e.g. "+test1") lets
# the tests build a strictly newer package to exercise the upgrade path.
PKG_VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' k3snoded/__init__.py)${K3SNODED_VERSION_SUFFIX:-}"
PKG_RELEASE=1 # RPM release; the .deb is a native package (no revision)
PKG_MAINTAINER="k3snoded maintainers <k3snoded@lists.k3snoded.invalid>"
PKG_HOMEPAGE="https://github.com/k3snoded/k3snoded"
PKG_LICENSE="Apache-2.0"
PKG_RPM_GROUP="System Environment/Daemons"
PKG_SUMMARY="Self-healing highly available k3s cluster on bare metal"
PKG_DESCRIPTION="k3snoded runs on every machine of a fleet. The operator installs the
package, drops one YAML file (identical on every machine) into /etc/k3snoded/
and enables the unit. The machines discover each other, elect k3s servers and
agents, run and supervise k3s, and hold a virtual IP as the fixed
registration address.
.
The daemon and its pinned, tested Python dependencies live in a private
virtualenv under /opt/k3snoded."

# The CPython versions the package carries a tree for, newest first (/usr/bin/k3snoded runs the
# first one installed), and the manylinux platforms their wheels may use (glibc >= 2.17: every
# supported distribution; RHEL 9 has 2.34). PKG_BUILD_PYTHON only runs pip during the build.
PKG_PYTHONS="3.13 3.12 3.11"
PKG_PLATFORMS="manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64"
PKG_BUILD_PYTHON=${PKG_BUILD_PYTHON:-/usr/bin/python3}
VENV_DIR=/opt/k3snoded

PKG_EXTRA_PINS=()  # pins beyond requirements/runtime.txt (none today)

# Runtime dependencies: one of the interpreters, glibc for the manylinux wheels, ip(8) for the
# lab-free parts (the VIP guard). Debian 12: python3.11; Debian 13: python3.13; Ubuntu 24.04 and
# RHEL 10: 3.12; Ubuntu 22.04 and RHEL 9: their python3.11 (or 3.12) package.
DEB_DEPENDS="python3.13 | python3.12 | python3.11, libc6 (>= 2.17), iproute2"
DEB_RECOMMENDS="ca-certificates, kmod"
# rpm rich dependency (rpm >= 4.13: RHEL 8 and later) on the interpreters' paths.
RPM_REQUIRES=("(/usr/bin/python3.13 or /usr/bin/python3.12 or /usr/bin/python3.11)" "iproute")
RPM_RECOMMENDS=("ca-certificates" "kmod")

# Conffiles: shipped files in /etc that the operator may edit; dpkg/rpm keep edits on upgrade.
# The operator's own /etc/k3snoded/config.yaml, config.d/ and token are never shipped, so no
# package operation (upgrade, remove, purge) ever touches them.
DEB_CONFFILES=(/etc/k3snoded/config.yaml.example /etc/default/k3snoded)
RPM_CONFFILES=(/etc/k3snoded/config.yaml.example /etc/sysconfig/k3snoded)

# The file list: "source | destination | mode". {unitdir} and {envfile} differ per format.
# A source "-" with mode d... is a directory the package owns; a destination ending in .gz
# whose source does not is compressed on the way (gzip -9n).
PKG_FILES=(
  "packaging/files/k3snoded.sh | /usr/bin/k3snoded | 0755"
  "packaging/files/bytecode.sh | /opt/k3snoded/bytecode | 0755"
  "systemd/k3snoded.service | {unitdir}/k3snoded.service | 0644"
  "{example} | /etc/k3snoded/config.yaml.example | 0644"
  "packaging/files/default.env | {envfile} | 0644"
  "packaging/files/k3snoded.8 | /usr/share/man/man8/k3snoded.8.gz | 0644"
  "packaging/monitoring/k3snoded-alerts.yml | /usr/share/k3snoded/prometheus/k3snoded-alerts.yml | 0644"
  "packaging/monitoring/k3snoded-dashboard.json | /usr/share/k3snoded/grafana/k3snoded-dashboard.json | 0644"
  "- | /etc/k3snoded | d0700"
  "- | /var/lib/k3snoded | d0700"
)
DEB_UNITDIR=/lib/systemd/system
RPM_UNITDIR=/usr/lib/systemd/system
DEB_ENVFILE=/etc/default/k3snoded
RPM_ENVFILE=/etc/sysconfig/k3snoded

# The annotated example config; a placeholder until etc/config.example.yaml exists.
if [ -f etc/config.example.yaml ]; then
  PKG_EXAMPLE=etc/config.example.yaml
else
  PKG_EXAMPLE=packaging/files/config.example.placeholder.yaml
fi
