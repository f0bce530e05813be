#!/bin/sh
# /opt/k3snoded/bytecode: compile (or remove) the bytecode of k3snoded's private virtualenv.
# Run by the package's scripts only: `compile` after install/upgrade, for every supported
# interpreter this machine has (the sources are checked by hash, so a stale file is never used);
# `clean` before removal and before an upgrade replaces the sources. dpkg/rpm do not own these
# files; these scripts do, so remove and purge leave nothing behind.
set -e
venv=/opt/k3snoded
case "$1" in
compile)
	for v in 3.13 3.12 3.11; do
		if [ -x "/usr/bin/python$v" ] && [ -d "$venv/lib/python$v/site-packages" ]; then
			"/usr/bin/python$v" -I -m compileall -q -j 0 --invalidation-mode checked-hash \
				"$venv/lib/python$v/site-packages" "$venv/lib/common" >/dev/null || true
		fi
	done
	;;
clean)
	find "$venv/lib" -depth -type d -name __pycache__ -exec rm -rf {} + 2>/dev/null || true
	;;
*)
	echo "usage: $0 compile|clean" >&2
	exit 2
	;;
esac
