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

# The interpreter the private virtualenv is built with and bound to (its bin/python links to it).
# Debian 12 ships it as /usr/bin/python3.11 (package python3.11); on RPM distributions the
# python3.11 package installs the same path (RHEL/Rocky 9, Fedora).
PKG_PYTHON=/usr/bin/python3.11
VENV_DIR=/opt/k3snoded

PKG_EXTRA_PINS=()  # pins beyond requirements/runtime.txt (none today)

# Runtime dependencies. The venv's C extensions are manylinux wheels (glibc only), except
# systemd-python, which is built here against libsystemd and links libsystemd.so.0.
DEB_DEPENDS="python3.11, python3 (>= 3.11), libc6 (>= 2.28), libsystemd0, iproute2"
DEB_RECOMMENDS="ca-certificates, kmod"
# libsystemd as a soname dependency (what rpm's own scan would write), not a package name.
RPM_REQUIRES=("$PKG_PYTHON" "libsystemd.so.0()(64bit)" "iproute")
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
  "systemd/k3snoded.service | {unitdir}/k3snoded.service | 0644"
  "{example} | /etc/k3snoded/config.yaml.example | 0644"
  "packaging/files/default.env | {envfile} | 0644"
  "packaging/files/k3snoded.8 | /usr/share/man/man8/k3snoded.8.gz | 0644"
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
