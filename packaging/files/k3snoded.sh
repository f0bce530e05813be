#!/bin/sh
# /usr/bin/k3snoded: the command of the k3snoded package.
# k3snoded and its pinned dependencies live in a private virtualenv (/opt/k3snoded) with one
# tree per CPython version (packaging/README.md). Run the newest interpreter the machine has,
# isolated (-I: no PYTHON* variables, no user site, no current directory on the path) and
# without writing bytecode (-B: the package's scripts compile it; /opt stays as dpkg/rpm and
# they left it). The list is PKG_PYTHONS of packaging/meta.sh.
for v in 3.13 3.12 3.11; do
	if [ -x "/usr/bin/python$v" ] && [ -d "/opt/k3snoded/lib/python$v/site-packages" ]; then
		exec "/opt/k3snoded/bin/python$v" -I -B -m k3snoded "$@"
	fi
done
echo "k3snoded: needs one of /usr/bin/python3.13, python3.12, python3.11" >&2
exit 69
