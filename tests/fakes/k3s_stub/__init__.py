"""The stand-in k3s: a program that behaves like k3s where k3snoded can observe it.

See tests/fakes/README.md and ../shared/reference/k3s-behaviour.md §8 (its contract).
"""

VERSION = "v1.31.4+k3s1"
COMMIT = "fakefake"
GO_VERSION = "go1.22.9"
