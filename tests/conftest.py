"""Shared fixtures: the real databases started by scripts/dbctl (make dbs)."""

from __future__ import annotations

import os
import socket

import pytest

MYSQL_DSN = os.environ.get("K3SNODED_TEST_MYSQL", "mysql://k3s:k3s@tcp(127.0.0.1:3306)/k3s")
POSTGRES_DSN = os.environ.get(
    "K3SNODED_TEST_POSTGRES", "postgres://k3s:k3s@127.0.0.1:5432/k3s?sslmode=disable"
)


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _require(port: int, what: str) -> None:
    if _reachable(port):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not running on 127.0.0.1:{port}; `make dbs` should have started it")
    pytest.skip(f"{what} is not running (run `make dbs`)")


@pytest.fixture
def mysql_dsn() -> str:
    _require(3306, "MariaDB")
    return MYSQL_DSN


@pytest.fixture
def postgres_dsn() -> str:
    _require(5432, "PostgreSQL")
    return POSTGRES_DSN
