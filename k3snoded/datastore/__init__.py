"""The datastore k3snoded coordinates through (D1): the contract, and ``open_datastore``.

The composition root calls only ``open_datastore`` (then ``prepare``, which runs preflight and
the schema with backoff); everything else uses the ``Datastore`` contract (``base.py``).
Drivers are imported only for the backend in use, so a missing psycopg2
does not break a MySQL install.
"""

from __future__ import annotations

from pathlib import Path

from k3snoded.config import CoordinationConfig, DatastoreConfig
from k3snoded.datastore.base import (
    BOOTSTRAP_LEASE,
    BOOTSTRAPPED_FLAG,
    COORDINATOR_LEASE,
    Datastore,
    MemberRecord,
    MemberRow,
)
from k3snoded.datastore.endpoint import Backend, Endpoint, EndpointError, parse_endpoint
from k3snoded.datastore.startup import prepare

__all__ = [
    "BOOTSTRAPPED_FLAG",
    "BOOTSTRAP_LEASE",
    "COORDINATOR_LEASE",
    "Backend",
    "Datastore",
    "Endpoint",
    "EndpointError",
    "MemberRecord",
    "MemberRow",
    "endpoint_of",
    "open_datastore",
    "parse_endpoint",
    "prepare",
]


def endpoint_of(cfg: DatastoreConfig) -> Endpoint:
    """Parse the configured endpoint with its TLS files; raise ``EndpointError``."""
    return parse_endpoint(
        cfg.endpoint, ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file
    )


def open_datastore(
    cfg: DatastoreConfig, coord: CoordinationConfig, *, sqlite_path: Path | None = None
) -> Datastore:
    """Build the datastore for ``cfg`` (no I/O yet: call ``preflight`` then ``ensure_schema``).

    Driver timeouts are ``coord.retry_timeout``; a call fails within about twice that.
    For the embedded SQLite (empty endpoint) k3snoded's tables live in ``sqlite_path`` (the
    composition root passes a file in ``node.state_dir``), never in k3s's own ``state.db``; a
    ``sqlite://<path>`` endpoint uses ``sqlite_path`` if given, else that path.
    Raises ``EndpointError`` for a malformed endpoint or one k3snoded cannot coordinate through
    (etcd, NATS, ...).
    """
    ep = endpoint_of(cfg)
    timeout = coord.retry_timeout
    idle = max(60.0, 3 * (coord.renew_interval + coord.lease_ttl))
    if ep.backend is Backend.MYSQL:
        from k3snoded.datastore.mysql import MysqlDialect
        from k3snoded.datastore.sql import SqlDatastore

        return SqlDatastore(MysqlDialect(ep, timeout, idle), timeout)
    if ep.backend is Backend.POSTGRES:
        from k3snoded.datastore.postgres import PostgresDialect
        from k3snoded.datastore.sql import SqlDatastore

        return SqlDatastore(PostgresDialect(ep, timeout, idle), timeout)
    if ep.backend is Backend.SQLITE:
        from k3snoded.datastore.sql import SqlDatastore
        from k3snoded.datastore.sqlite import SqliteDialect

        path = sqlite_path or (Path(ep.path) if ep.path else None)
        if path is None:
            raise EndpointError(
                "the embedded SQLite datastore needs a file for k3snoded's tables (sqlite_path)"
            )
        return SqlDatastore(SqliteDialect(ep.with_path(str(path)), timeout), timeout)
    kind = "etcd" if ep.backend is Backend.ETCD else ep.scheme
    raise EndpointError(
        f"datastore endpoint {ep.redacted()}: k3snoded cannot coordinate through {kind} yet "
        "(not supported for coordination); use MySQL/MariaDB or PostgreSQL, "
        "or SQLite for a single server"
    )
