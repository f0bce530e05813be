#!/bin/sh
# /usr/bin/k3snoded: the command of the k3snoded package.
# k3snoded and its pinned dependencies live in a private virtualenv (/opt/k3snoded). Run its
# interpreter isolated (-I: no PYTHON* variables, no user site, no current directory on the
# path) and without writing bytecode (-B: the package ships it; /opt stays as dpkg/rpm left it).
exec /opt/k3snoded/bin/python -I -B -m k3snoded "$@"
