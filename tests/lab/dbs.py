"""Real MariaDB or PostgreSQL inside a lab's db machine, through scripts/dbctl.

    lab = Lab(3, with_db=True).up()
    db = dbs.start(lab, "postgres")      # stopped automatically at lab teardown
    db.endpoint  # 'postgres://k3s:k3s@198.18.0.240:5432/k3s?sslmode=disable'

The server listens only on the db machine's address, inside its namespace; its files live in the
lab's work directory. User, password and database are all ``k3s``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.lab.netns import Lab, Machine

log = logging.getLogger(__name__)

DBCTL = Path(__file__).resolve().parents[2] / "scripts" / "dbctl"
Kind = Literal["mysql", "postgres"]
PORTS: dict[str, int] = {"mysql": 3306, "postgres": 5432}


@dataclass(frozen=True)
class Database:
    kind: Kind
    machine: Machine
    host: str
    port: int
    directory: Path
    endpoint: str  # the k3s --datastore-endpoint form

    def python_connect_source(self) -> str:
        """A Python expression that opens a DB-API connection (for scripts run via m.run)."""
        if self.kind == "mysql":
            return (
                f"__import__('pymysql').connect(host={self.host!r}, port={self.port}, "
                f"user='k3s', password='k3s', database='k3s', connect_timeout=5)"
            )
        return (
            f"__import__('psycopg2').connect(host={self.host!r}, port={self.port}, "
            f"user='k3s', password='k3s', dbname='k3s', connect_timeout=5)"
        )


def _dbctl(lab: Lab, db: Machine, directory: Path, *args: str, timeout: float = 180) -> str:
    env = {
        **os.environ,
        "DB_NETNS": db.netns,
        "DB_BIND": db.address,
        "DB_DIR": str(directory),
    }
    res = subprocess.run(
        [str(DBCTL), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"lab {lab.prefix}: dbctl {' '.join(args)} failed ({res.returncode}): "
            f"{res.stderr.strip()}"
        )
    return res.stdout.strip()


def start(lab: Lab, kind: Kind) -> Database:
    """Start a database server in lab.db (idempotent); it stops at lab teardown."""
    if kind not in PORTS:
        raise ValueError(f"unknown database {kind!r}; expected mysql or postgres")
    if lab.db is None:
        raise ValueError(
            f"lab {lab.prefix} has no db machine; create it with Lab(..., with_db=True)"
        )
    db = lab.db
    directory = lab.workdir / "db"
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)  # the postgres and mysql users must traverse it
    lab.workdir.chmod(0o755)
    _dbctl(lab, db, directory, "start", kind)
    endpoint = _dbctl(lab, db, directory, "dsn", kind)

    def stop_at_teardown() -> None:
        stop(lab, kind)

    lab.on_down(stop_at_teardown)
    log.info("lab %s: %s up at %s", lab.prefix, kind, endpoint)
    return Database(kind, db, db.address, PORTS[kind], directory, endpoint)


def stop(lab: Lab, kind: Kind) -> None:
    """Stop the server gracefully (the lab's cleanup would otherwise end it by PID)."""
    if lab.db is None:
        return
    _dbctl(lab, lab.db, lab.workdir / "db", "stop", kind, timeout=60)
