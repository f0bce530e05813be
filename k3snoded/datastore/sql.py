"""The one SQL core behind every SQL backend (kine style).

``SqlDatastore`` implements the whole ``Datastore`` contract with portable SQL written once here.
A backend supplies only a ``Dialect``: how to connect (driver, timeouts, TLS), the ``now``
expression (epoch seconds on the database's clock), the DDL types, the upsert syntax, the schema
lock, and the mapping of driver exceptions to ``DatastoreUnavailable`` / ``DatastoreRejected``.
SQL here uses ``?`` placeholders; the dialect rewrites them for its driver.
"""

# SQL text is built only from module constants; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from k3snoded.datastore import schema
from k3snoded.datastore.base import COORDINATOR_LEASE, Datastore, MemberRecord, MemberRow
from k3snoded.datastore.endpoint import Endpoint
from k3snoded.datastore.schema import FLAGS, LEASES, MEMBERS, VERSION_TABLE
from k3snoded.datastore.session import CountingCursor, Session
from k3snoded.errors import DatastoreError, DatastoreRejected
from k3snoded.model import Lease, Member, Role, RolePreference

log = logging.getLogger(__name__)

MEMBER_COLUMNS = (
    "name",
    "address",
    "api_port",
    "preference",
    "eligible",
    "role",
    "ready",
    "k3s_version",
)


class MissingDatabase(DatastoreRejected):
    """The database does not exist (preflight tries to create it)."""


class Dialect(abc.ABC):
    """What one database needs translated. Blocking methods run on the session's worker."""

    name: ClassVar[str]
    placeholder: ClassVar[str] = "%s"
    now: ClassVar[str]  # SQL expression: the database's now, epoch seconds, as a float
    types: ClassVar[Mapping[str, str]]  # DDL template values: float, table_options
    cte_upsert: ClassVar[bool] = False  # INSERT ... RETURNING allowed inside WITH

    def __init__(self, endpoint: Endpoint, timeout: float, idle: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout  # driver connect/read/write timeouts, seconds
        # How long the server keeps a silent session (and anything it holds): longer than
        # k3snoded ever idles between statements, short enough that a dead client's session
        # (its schema lock, say) goes in a minute, not at TCP keepalive's two hours.
        self.idle = idle

    @property
    def label(self) -> str:
        return f"{self.name} {self.endpoint.address}/{self.endpoint.database}"

    def prepare(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def scrub(self, text: str) -> str:
        """Remove the password (user info or ``password=`` parameter) from a driver message."""
        for secret in self.endpoint.secrets:
            text = text.replace(secret, "***")
        return text

    @abc.abstractmethod
    def connect(self) -> Any:
        """Open an autocommit connection to the endpoint's database (blocking)."""

    @abc.abstractmethod
    def abort(self, conn: Any) -> None:
        """Unblock a call stuck on ``conn`` from another thread."""

    @abc.abstractmethod
    def translate(self, exc: BaseException) -> DatastoreError:
        """Driver exception -> DatastoreUnavailable / DatastoreRejected / MissingDatabase."""

    @abc.abstractmethod
    def create_database(self) -> None:
        """Create the endpoint's database through the server (blocking); raise on failure."""

    def check_tls(self, cur: CountingCursor) -> None:  # noqa: B027 - optional hook
        """Raise ``DatastoreRejected`` if TLS is configured but the connection is not TLS."""

    def upsert(self, table: str, columns: Sequence[str], values: str, update: Sequence[str]) -> str:
        """``INSERT ... VALUES (values)`` that overwrites ``update`` columns on a key conflict."""
        sets = ", ".join(f"{c} = excluded.{c}" for c in update)
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
            f"ON CONFLICT ({columns[0]}) DO UPDATE SET {sets}"
        )

    def insert_if_absent(self, table: str, columns: Sequence[str], values: str) -> str:
        """``INSERT ... VALUES (values)`` that changes nothing when the key exists."""
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
            f"ON CONFLICT ({columns[0]}) DO NOTHING"
        )

    def lease_upsert(self) -> str:
        """The lease statement; parameters (name, holder, ttl); row count > 0 means held.

        Taken when free, expired, ours, or void: expiring more than a TTL later than a fresh
        lease would (``now + 2 ttl``; the second parameter ``ttl`` is that margin) only happens
        when the database clock stepped back, and must not keep a dead holder's lease for the
        length of the step. The margin covers contenders whose statement began (``now``) a
        lock wait before the winner's: without it they took the lease from the winner."""
        return (
            f"INSERT INTO {LEASES} (name, holder, expires_at) VALUES (?, ?, {self.now} + ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            f"WHERE {LEASES}.holder = excluded.holder OR {LEASES}.expires_at <= {self.now} "
            f"OR {LEASES}.expires_at > excluded.expires_at + ?"
        )

    def ddl(self, cur: CountingCursor, statement: str) -> None:
        """Run one statement of a schema step."""
        cur.execute(statement)

    @abc.abstractmethod
    def lock_schema(self, cur: CountingCursor) -> None:
        """Take the database-wide lock that serializes ``ensure_schema``."""

    @abc.abstractmethod
    def unlock_schema(self, cur: CountingCursor, ok: bool) -> None:
        """Release it (``ok`` False: the migration failed)."""


def _enum(kind: type[Role] | type[RolePreference], value: str, default: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        return default  # written by a newer k3snoded


def _row(r: Sequence[Any]) -> MemberRow:
    name, address, api_port, preference, eligible, role, ready, version, assigned, age, stamp = r
    member = Member(
        name=str(name),
        address=str(address),
        preference=_enum(RolePreference, str(preference), RolePreference.AUTO),
        eligible=bool(eligible),
        role=_enum(Role, str(role), Role.NONE),
        ready=bool(ready),
        heartbeat_age=max(0.0, float(age)),
        api_port=int(api_port),
    )
    assigned_role = None if assigned is None else _enum(Role, str(assigned), None)
    return MemberRow(
        member=member, assigned=assigned_role, k3s_version=str(version), stamp=float(stamp)
    )


class SqlDatastore(Datastore):
    """The contract in portable SQL over one ``Session``."""

    def __init__(self, dialect: Dialect, retry_timeout: float) -> None:
        self.dialect = dialect
        # A call may connect (connect timeout) then run one statement (read timeout).
        self._session = Session(dialect, dialect.label, budget=2 * retry_timeout + 0.5)
        self._long = 4 * retry_timeout + 1.0  # preflight and ensure_schema: several statements
        now = dialect.now
        select = f"SELECT {', '.join(MEMBER_COLUMNS)}, assigned, {now} - updated_at, updated_at "
        self._members_sql = f"{select}FROM {MEMBERS} ORDER BY name"
        # A member's own row, the servers, the coordinator: two index lookups (the primary
        # key, the ``assigned`` index), never a scan of the fleet. Parameter: the name.
        self._seen_by_sql = (
            f"{select}FROM {MEMBERS} WHERE assigned = 'server' UNION ALL "
            f"{select}FROM {MEMBERS} WHERE name IN (?, (SELECT holder FROM {LEASES} "
            f"WHERE name = '{COORDINATOR_LEASE}')) "
            "AND (assigned IS NULL OR assigned <> 'server') ORDER BY name"
        )
        self._heartbeat_sql = dialect.upsert(
            MEMBERS,
            (*MEMBER_COLUMNS, "created_at", "updated_at"),
            ", ".join(["?"] * len(MEMBER_COLUMNS) + [now, now]),
            (*MEMBER_COLUMNS[1:], "updated_at"),
        )
        self._flag_sql = dialect.upsert(
            FLAGS, ("name", "value", "updated_at"), f"?, ?, {now}", ("value", "updated_at")
        )
        self._claim_sql = dialect.insert_if_absent(
            FLAGS, ("name", "value", "updated_at"), f"?, ?, {now}"
        )

    @property
    def statements(self) -> int:
        return self._session.statements

    @property
    def description(self) -> str:
        return self.dialect.label

    async def preflight(self) -> None:
        def check(cur: CountingCursor) -> None:
            cur.execute("SELECT 1")
            cur.fetchall()
            self.dialect.check_tls(cur)

        try:
            await self._session.run(check, self._long)
            return
        except MissingDatabase:
            log.info("%s: database does not exist, creating it", self.description)
        await self._session.offload(self.dialect.create_database, self._long)
        await self._session.run(check, self._long)

    async def ensure_schema(self) -> None:
        render = self.dialect.types

        def recorded(cur: CountingCursor) -> int | None:
            try:
                cur.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}")
                (found,) = cur.fetchall()[0]
            except Exception:  # no version table yet: the locked path below creates it
                return None
            return int(found or 0)

        def migrate(cur: CountingCursor) -> tuple[int, int]:
            # Up to date (every start but the first of a new version): no lock. A fleet that
            # starts at once (or comes back after an outage) would otherwise queue every member
            # behind one lock whose wait times out at retry_timeout (1,000 members did).
            known = recorded(cur)
            if known is not None and known >= schema.LATEST:
                return known, known
            self.dialect.lock_schema(cur)
            ok = False
            try:
                cur.execute(schema.render(schema.VERSION_DDL, render))
                cur.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}")
                (found,) = cur.fetchall()[0]
                current = int(found or 0)
                for version, ddl in schema.pending(current):
                    for template in ddl:
                        self.dialect.ddl(cur, schema.render(template, render))
                    cur.execute(
                        f"INSERT INTO {VERSION_TABLE} (version, applied_at) "
                        f"VALUES (?, {self.dialect.now})",
                        (version,),
                    )
                ok = True
                return current, max(current, schema.LATEST)
            finally:
                self.dialect.unlock_schema(cur, ok)

        before, after = await self._session.run(migrate, self._long)
        if before > schema.LATEST:
            log.warning(
                "%s: schema version %d is newer than this k3snoded's (%d); using it as is",
                self.description,
                before,
                schema.LATEST,
            )
        elif before != after:
            log.info("%s: schema upgraded from version %d to %d", self.description, before, after)

    @staticmethod
    def _record(rec: MemberRecord) -> tuple[Any, ...]:
        return (
            rec.name,
            rec.address,
            rec.api_port,
            rec.preference.value,
            int(rec.eligible),
            rec.role.value,
            int(rec.ready),
            rec.k3s_version[:64],  # the column's width; informational only
        )

    async def heartbeat(self, rec: MemberRecord) -> None:
        await self._session.run(lambda cur: cur.execute(self._heartbeat_sql, self._record(rec)))

    async def members(self) -> list[MemberRow]:
        def read(cur: CountingCursor) -> list[MemberRow]:
            cur.execute(self._members_sql)
            return [_row(r) for r in cur.fetchall()]

        return await self._session.run(read)

    async def members_seen_by(self, name: str) -> list[MemberRow]:
        def read(cur: CountingCursor) -> list[MemberRow]:
            cur.execute(self._seen_by_sql, (name,))
            return [_row(r) for r in cur.fetchall()]

        return await self._session.run(read)

    async def sync(self, rec: MemberRecord, *, everyone: bool = True) -> list[MemberRow]:
        if not self.dialect.cte_upsert:
            return await super().sync(rec, everyone=everyone)
        cols = ", ".join(MEMBER_COLUMNS)
        now = self.dialect.now
        others = f"SELECT {cols}, assigned, {now} - updated_at, updated_at FROM {MEMBERS} "
        # The statement sees the table as it was before its own upsert: this member's row
        # comes from RETURNING, every other one from the table.
        params: tuple[str, ...] = (rec.name,)
        if everyone:
            rest = f"{others}WHERE name <> ?"
        else:
            rest = (
                f"{others}WHERE assigned = 'server' AND name <> ? UNION ALL "
                f"{others}WHERE name = (SELECT holder FROM {LEASES} "
                f"WHERE name = '{COORDINATOR_LEASE}') AND name <> ? "
                "AND (assigned IS NULL OR assigned <> 'server')"
            )
            params = (rec.name, rec.name)
        sql = (
            f"WITH me AS ({self._heartbeat_sql} RETURNING {cols}, assigned, updated_at) "
            f"SELECT {cols}, assigned, 0.0, updated_at FROM me UNION ALL {rest} ORDER BY name"
        )

        def both(cur: CountingCursor) -> list[MemberRow]:
            cur.execute(sql, (*self._record(rec), *params))
            return [_row(r) for r in cur.fetchall()]

        return await self._session.run(both)

    async def assign_roles(self, roles: Mapping[str, Role], holder: str) -> bool:
        """One autocommit statement: the lease check is its WHERE. A coordinator that dies
        mid-call leaves no transaction behind, so no row stays locked (a two-statement
        transaction left the lease row, and every member row, locked until the server noticed
        the dead client: hours)."""
        now, params = self.dialect.now, []
        for name, role in roles.items():
            params += [name, role.value]
        case = (
            f"CASE name {' '.join(['WHEN ? THEN ?'] * len(roles))} ELSE NULL END"
            if roles
            else "NULL"
        )
        held = f"SELECT 1 FROM {LEASES} WHERE name = ? AND holder = ? AND expires_at > {now}"
        update = f"UPDATE {MEMBERS} SET assigned = {case} WHERE EXISTS ({held})"

        def write(cur: CountingCursor) -> bool:
            cur.execute(update, (*params, COORDINATOR_LEASE, holder))
            if cur.rowcount > 0:
                return True
            # No row changed: no member rows, nothing to change (MySQL counts changed rows
            # only), or not the holder. Only the last is a refusal.
            cur.execute(held, (COORDINATOR_LEASE, holder))
            return bool(cur.fetchall())

        return await self._session.run(write)

    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        def acquire(cur: CountingCursor) -> bool:
            cur.execute(self.dialect.lease_upsert(), (name, holder, float(ttl), float(ttl)))
            return cur.rowcount > 0

        return await self._session.run(acquire)

    async def release_lease(self, name: str, holder: str) -> None:
        await self._session.run(
            lambda cur: cur.execute(
                f"DELETE FROM {LEASES} WHERE name = ? AND holder = ?", (name, holder)
            )
        )

    async def lease(self, name: str) -> Lease | None:
        now = self.dialect.now

        def read(cur: CountingCursor) -> Lease | None:
            cur.execute(
                f"SELECT holder, expires_at - {now} FROM {LEASES} "
                f"WHERE name = ? AND expires_at > {now}",
                (name,),
            )
            rows = cur.fetchall()
            return Lease(name, str(rows[0][0]), float(rows[0][1])) if rows else None

        return await self._session.run(read)

    async def last_holder(self, name: str) -> str | None:
        def read(cur: CountingCursor) -> str | None:
            cur.execute(f"SELECT holder FROM {LEASES} WHERE name = ?", (name,))
            rows = cur.fetchall()
            return str(rows[0][0]) if rows else None

        return await self._session.run(read)

    async def set_flag(self, name: str, value: str) -> None:
        await self._session.run(lambda cur: cur.execute(self._flag_sql, (name, value)))

    async def claim_flag(self, name: str, value: str) -> str:
        read = f"SELECT value FROM {FLAGS} WHERE name = ?"

        def claim(cur: CountingCursor) -> str:
            # Set already (every start but the fleet's first): a plain read. MySQL's
            # insert-if-absent locks the existing row, and a whole fleet starting at once
            # queued on it (1,000 members on MariaDB collapsed into timeouts and reconnects).
            cur.execute(read, (name,))
            rows = cur.fetchall()
            if rows:
                return str(rows[0][0])
            cur.execute(self._claim_sql, (name, value))
            cur.execute(read, (name,))
            rows = cur.fetchall()
            return str(rows[0][0]) if rows else value

        return await self._session.run(claim)

    async def flags(self) -> dict[str, str]:
        def read(cur: CountingCursor) -> dict[str, str]:
            cur.execute(f"SELECT name, value FROM {FLAGS}")
            return {str(k): str(v) for k, v in cur.fetchall()}

        return await self._session.run(read)

    async def remove_member(self, name: str) -> None:
        await self._session.run(
            lambda cur: cur.execute(f"DELETE FROM {MEMBERS} WHERE name = ?", (name,))
        )

    async def close(self) -> None:
        await self._session.close()
