"""Contract tests of the stand-in k3s (tests/fakes/k3s) against ../shared/reference §8."""
