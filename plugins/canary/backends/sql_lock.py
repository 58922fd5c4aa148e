"""The lease store of :mod:`canary.rollout.lease` on a SQL table: one row per endpoint, changed by one upsert.

Taking a lease is a single ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` that only overwrites a
row that is expired or already ours, so two workers racing for a free endpoint cannot both win.
SQLite (:mod:`canary.backends.local_lock`) and PostgreSQL (:mod:`canary.backends.postgres_lock`)
share the statements; only connections and parameter style differ. Times come from the injected
clock of the process (epoch seconds): TTLs are minutes to hours, far above the clock skew of hosts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from canary.backends.base import EndpointBusyError, Lease, LeaseHolder, LeaseLostError
from canary.errors import BackendError, ConfigError

DEFAULT_TABLE = "canary_endpoint_leases"
_TABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_COLUMNS = "lease_key, dag_id, run_id, acquired_at_s, renewed_at_s, expires_at_s"


def check_table_name(table: str) -> str:
    if not _TABLE_PATTERN.match(table):
        raise ConfigError(f"lock option table: {table!r} is not a plain SQL identifier ([schema.]name)")
    return table


class SqlEndpointLock:
    """Leases in a table; subclasses provide :meth:`_transaction` and the parameter style."""

    backend: ClassVar[str]
    #: Database errors this driver raises (wrapped into :class:`BackendError`).
    driver_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, *, table: str = DEFAULT_TABLE, clock: Callable[[], float] | None = None) -> None:
        self.table = check_table_name(table)
        self.clock = clock
        self._schema_ready = False

    # -- what a driver provides -------------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Any]:
        """Yield a DB-API cursor inside one transaction (committed on success, rolled back on error)."""
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        """Translate ``:name`` parameters to the driver's style."""
        return statement

    # -- the EndpointLock protocol ----------------------------------------------------------

    def acquire(self, key: str, holder: LeaseHolder, *, ttl_s: float) -> Lease:
        lease, current = self._take(key, holder, ttl_s, "acquire")
        if lease is None:
            assert current is not None
            raise EndpointBusyError(current)
        return lease

    def renew(self, key: str, holder: LeaseHolder, *, ttl_s: float) -> Lease:
        lease, current = self._take(key, holder, ttl_s, "renew")
        if lease is None:
            raise LeaseLostError(key, holder, current)
        return lease

    def release(self, key: str, holder: LeaseHolder) -> bool:
        with self._run("release", key) as cur:
            cur.execute(self._sql(f"DELETE FROM {self.table} WHERE lease_key = :key AND dag_id = :dag_id "
                                  "AND run_id = :run_id"),
                        {"key": key, "dag_id": holder.dag_id, "run_id": holder.run_id})
            return bool(cur.rowcount and cur.rowcount > 0)

    def get(self, key: str) -> Lease | None:
        with self._run("get", key) as cur:
            return self._select(cur, key)

    def list_leases(self) -> list[Lease]:
        with self._run("list", "*") as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM {self.table}")
            return sorted((_lease(row) for row in cur.fetchall()), key=lambda lease: lease.key)

    def break_lease(self, key: str) -> Lease | None:
        with self._run("break", key) as cur:
            lease = self._select(cur, key)
            if lease is not None:
                cur.execute(self._sql(f"DELETE FROM {self.table} WHERE lease_key = :key"), {"key": key})
            return lease

    # -- internals --------------------------------------------------------------------------

    def _take(self, key: str, holder: LeaseHolder, ttl_s: float, op: str) -> tuple[Lease | None, Lease | None]:
        """Upsert the lease if free, expired or ours; return (our lease, None) or (None, the current lease)."""
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        now = self.clock() if self.clock else time.time()  # looked up per call: patchable
        t = self.table
        mine = f"{t}.dag_id = excluded.dag_id AND {t}.run_id = excluded.run_id"
        statement = (
            f"INSERT INTO {t} ({_COLUMNS}) VALUES (:key, :dag_id, :run_id, :now, :now, :expires) "
            f"ON CONFLICT (lease_key) DO UPDATE SET "
            f"acquired_at_s = CASE WHEN {mine} THEN {t}.acquired_at_s ELSE excluded.acquired_at_s END, "
            f"dag_id = excluded.dag_id, run_id = excluded.run_id, renewed_at_s = excluded.renewed_at_s, "
            f"expires_at_s = excluded.expires_at_s "
            f"WHERE ({mine}) OR {t}.expires_at_s <= :now "
            f"RETURNING {_COLUMNS}")
        params = {"key": key, "dag_id": holder.dag_id, "run_id": holder.run_id, "now": now, "expires": now + ttl_s}
        with self._run(op, key) as cur:
            cur.execute(self._sql(statement), params)
            row = cur.fetchone()
            if row is not None:
                return _lease(row), None
            # Same transaction: the conflicting row is locked (PostgreSQL) or the database is (SQLite).
            return None, self._select(cur, key)

    def _select(self, cur: Any, key: str) -> Lease | None:
        cur.execute(self._sql(f"SELECT {_COLUMNS} FROM {self.table} WHERE lease_key = :key"), {"key": key})
        row = cur.fetchone()
        return _lease(row) if row else None

    def _create_schema(self, cur: Any) -> None:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (lease_key TEXT PRIMARY KEY, dag_id TEXT NOT NULL, "
                    "run_id TEXT NOT NULL, acquired_at_s DOUBLE PRECISION NOT NULL, "
                    "renewed_at_s DOUBLE PRECISION NOT NULL, expires_at_s DOUBLE PRECISION NOT NULL)")

    @contextmanager
    def _run(self, op: str, key: str) -> Iterator[Any]:
        """One transaction with the schema ensured; driver errors become :class:`BackendError`."""
        try:
            with self._transaction() as cur:
                if not self._schema_ready:
                    self._create_schema(cur)
                    self._schema_ready = True
                yield cur
        except self.driver_errors as err:
            raise BackendError(self.backend, f"{op} lease {key!r} in {self.where()}: "
                                             f"{type(err).__name__}: {str(err).strip()}") from err

    def where(self) -> str:
        """Return where the leases live (for messages; never credentials)."""
        return self.table


def _lease(row: Sequence[Any]) -> Lease:
    key, dag_id, run_id, acquired, renewed, expires = row
    return Lease(key=key, holder=LeaseHolder(dag_id=dag_id, run_id=run_id), acquired_at_s=float(acquired),
                 renewed_at_s=float(renewed), expires_at_s=float(expires))


def named_to_pyformat(statement: str) -> str:
    """Turn ``:name`` parameters into ``%(name)s`` (psycopg); ``::`` casts are left alone."""
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", statement)


__all__ = ["DEFAULT_TABLE", "SqlEndpointLock", "check_table_name", "named_to_pyformat"]

