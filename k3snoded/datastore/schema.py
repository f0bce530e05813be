"""k3snoded's tables beside kine's, as versioned migration steps.

Each step is a list of DDL templates; ``{float}``, ``{table_options}`` and ``{if_not_exists}``
(for ``CREATE INDEX``) are filled in by the backend's dialect (the only per-database difference in
the DDL). Times are stored as seconds since the epoch **on the database's clock** (a float
column), so ages and expiries are plain subtractions in every backend.

To change the schema, append a step (``(3, [...])``): ``ensure_schema`` applies, in order, every
step above the version recorded in ``k3snoded_schema_version``, under a database lock, and records
each one. Steps must be additive so that nodes still running the older version keep working
during a rolling upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

VERSION_TABLE = "k3snoded_schema_version"
MEMBERS = "k3snoded_members"
LEASES = "k3snoded_leases"
FLAGS = "k3snoded_flags"

VERSION_DDL = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    "version INTEGER NOT NULL PRIMARY KEY, "
    "applied_at {float} NOT NULL){table_options}"
)

STEPS: Sequence[tuple[int, Sequence[str]]] = (
    (
        1,
        (
            f"CREATE TABLE IF NOT EXISTS {MEMBERS} ("
            "name VARCHAR(253) NOT NULL PRIMARY KEY, "
            "address VARCHAR(255) NOT NULL, "
            "api_port INTEGER NOT NULL, "
            "preference VARCHAR(16) NOT NULL, "
            "eligible INTEGER NOT NULL, "
            "role VARCHAR(16) NOT NULL, "
            "ready INTEGER NOT NULL, "
            "k3s_version VARCHAR(64) NOT NULL, "
            "assigned VARCHAR(16) NULL, "
            "created_at {float} NOT NULL, "
            "updated_at {float} NOT NULL){table_options}",
            f"CREATE TABLE IF NOT EXISTS {LEASES} ("
            "name VARCHAR(64) NOT NULL PRIMARY KEY, "
            "holder VARCHAR(253) NOT NULL, "
            "expires_at {float} NOT NULL){table_options}",
            f"CREATE TABLE IF NOT EXISTS {FLAGS} ("
            "name VARCHAR(64) NOT NULL PRIMARY KEY, "
            "value TEXT NOT NULL, "
            "updated_at {float} NOT NULL){table_options}",
        ),
    ),
    (
        2,
        # What a member that does not coordinate reads (members_seen_by): the servers by this
        # index, its own row and the coordinator's by the primary key; no scan of the fleet.
        (f"CREATE INDEX {{if_not_exists}}k3snoded_members_assigned ON {MEMBERS} (assigned)",),
    ),
)

LATEST = STEPS[-1][0]


def render(template: str, types: Mapping[str, str]) -> str:
    """Fill a DDL template with the dialect's types."""
    return template.format_map(types)


def pending(current: int) -> list[tuple[int, Sequence[str]]]:
    """The steps to apply to a database at ``current`` (0: no k3snoded tables yet), in order."""
    return [(version, ddl) for version, ddl in STEPS if version > current]
