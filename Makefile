# The single entry points. `make test` is what CI runs; `make demo` is the main job.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test check lint typecheck unit sim dbs dbs-stop demo demo-systemd bench soak package \
	clean systemd-lab systemd-roots

setup:
	@scripts/setup.sh

dbs: setup
	@scripts/dbctl start

dbs-stop:
	@scripts/dbctl stop

lint: setup
	$(VENV)/bin/ruff check k3snoded tests bench
	$(VENV)/bin/ruff format --check k3snoded tests bench

typecheck: setup
	$(VENV)/bin/mypy

# Everything CI runs: installs what is missing, starts the databases, lints, type-checks, tests.
test: setup dbs lint typecheck systemd-roots
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(PY) -m tests.sim --seeds 2000

unit: setup
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# The deterministic fleet simulator (tests/sim): SEEDS seeds from START; one failing seed is
# replayed with its trace by `.venv/bin/python -m tests.sim --seed N`.
SEEDS ?= 2000
START ?= 0
sim: setup
	$(PY) -m tests.sim --seeds $(SEEDS) --start $(START)

demo: setup
	$(PY) -m tests.lab.demo $(DEMO_ARGS)

# The demo on Debian containers with systemd as PID 1 and the .deb installed (DEMO_ARGS=--systemd debian12).
demo-systemd: setup dbs
	$(PY) -m tests.lab.demo --systemd $(DEMO_ARGS)

# The cached Debian 12 and 13 roots of the systemd lab (debootstrap, once; in parallel).
systemd-roots: setup
	@scripts/systemd-lab-root bookworm >/dev/null & b=$$!; scripts/systemd-lab-root trixie >/dev/null; t=$$?; wait $$b && exit $$t

# Only the systemd lab (tests/systemd): K3SNODED_SYSTEMD_SUITES=debian12 limits it.
systemd-lab: setup dbs systemd-roots
	$(PY) -m pytest -q tests/systemd $(PYTEST_ARGS)

# Every benchmark and one summary table (bench/all.py); LONG=1 adds the long ones (1,000
# members, cold starts of 20 and 30 machines, faults, VIP under loss, attacks, systemd lab).
bench: setup dbs
	$(PY) bench/all.py $(if $(LONG),--long)

soak: setup dbs
	$(PY) -m pytest -q -m soak $(PYTEST_ARGS)

package: setup
	packaging/build.sh

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache
