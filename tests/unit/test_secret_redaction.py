"""The datastore password never printed, wherever it sits in the endpoint (issue 13).

pgx (kine's PostgreSQL driver) also reads the password from a ``password=`` query parameter,
so an endpoint may carry it there instead of in the user info.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from k3snoded._config_rules import hide_password
from k3snoded.config import DatastoreConfig
from k3snoded.datastore.endpoint import parse_endpoint
from k3snoded.datastore.postgres import PostgresDialect
from tests.unit.test_config_support import ConfigDir

SECRET = "hunter2-Zq9"
ENDPOINTS = [
    f"postgres://k3s@db.example:5432/k3s?sslmode=disable&password={SECRET}",
    f"postgres://k3s:{SECRET}@db.example:5432/k3s?password={SECRET}",
    f"postgresql://k3s@db.example/k3s?PASSWORD={SECRET}&sslmode=require",
    f"postgres://k3s@db.example/k3s?password={SECRET.replace('-', '%2D')}",
    f"mysql://k3s:{SECRET}@tcp(db.example:3306)/k3s?tls=true",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_no_printed_form_shows_the_password(endpoint: str, tmp_path: Path) -> None:
    secret = SECRET.replace("-", "%2D") if "%2D" in endpoint else SECRET
    shown = [
        hide_password(endpoint),
        repr(DatastoreConfig(endpoint=endpoint)),
        parse_endpoint(endpoint).redacted(),
        str(parse_endpoint(endpoint)),
        repr(parse_endpoint(endpoint)),
    ]
    for text in shown:
        assert secret not in text and SECRET not in text, text
    assert "db.example" in shown[2]


def test_check_config_output_hides_a_query_password(tmp_path: Path) -> None:
    from k3snoded.describe import describe_config

    d = ConfigDir(tmp_path)
    cfg = d.fleet()
    cfg["datastore"] = {"endpoint": ENDPOINTS[0]}
    d.write(cfg)
    text = describe_config(d.load())
    assert SECRET not in text and "db.example" in text


def test_driver_messages_are_scrubbed_of_a_query_password() -> None:
    backend = PostgresDialect(parse_endpoint(ENDPOINTS[0]), 2.0)
    message = f'connection to server failed: FATAL: password "{SECRET}" rejected'
    assert SECRET not in backend.scrub(message)
