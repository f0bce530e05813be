#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs to run k3snoded's tests and demo:
# system packages (databases, keepalived, packaging tools) and a virtualenv with pinned versions.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  mariadb-server postgresql keepalived iproute2 iputils-ping tcpdump nftables
  rpm fakeroot lintian rpmlint python3-venv debootstrap systemd-container
  prometheus # promtool: checks and unit-tests the shipped alert rules
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: run as root to install system packages" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements/dev.txt 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import aiohttp, zeroconf, yaml, pymysql, psycopg2, pyroute2, k3snoded" \
    || { echo "setup: the virtualenv is incomplete" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
echo "setup: ok"
