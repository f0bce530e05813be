"""Entry point: ``python -m tests.fakes.k3s_stub <args>`` (what tests/fakes/k3s execs)."""

import sys

from tests.fakes.k3s_stub.cli import main

sys.exit(main(sys.argv[1:]))
