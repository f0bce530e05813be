"""The stand-in k3s: a program that behaves like k3s where k3snoded can observe it.

See tests/fakes/README.md and ../shared/reference/k3s-behaviour.md §8 (its contract).

The release it is: ``v1.31.4+k3s1`` for ``tests/fakes/k3s`` itself; a stand-in *release*
(``tests/fakes/releases.py``) is a small executable that sets ``_K3S_STANDIN_RELEASE`` and runs
this package, so, like a real k3s binary, the file decides the version it reports
(``--version``, ``/version``, its Node's ``kubeletVersion``). The variable is part of that file,
not a test knob: k3snoded never sets it.
"""

import os

DEFAULT_VERSION = "v1.31.4+k3s1"
VERSION = os.environ.get("_K3S_STANDIN_RELEASE", "") or DEFAULT_VERSION
COMMIT = "fakefake"
GO_VERSION = "go1.22.9"
