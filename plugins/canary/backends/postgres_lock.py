"""Endpoint leases in a PostgreSQL table: one store for every host of a distributed Airflow.

Connection (Airflow's ``postgres`` conventions): ``host``, ``port`` (5432), ``login``, ``password``,
``schema`` = database; ``extra.sslmode`` and ``extra.dbname`` are honoured. Options: ``table``
(``canary_endpoint_leases``, created on first use), ``connect_timeout_s`` (10).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2

from canary.backends.base import ConnInfo
from canary.backends.sql_lock import DEFAULT_TABLE, SqlEndpointLock, named_to_pyformat
from canary.errors import ConfigError


class PostgresEndpointLock(SqlEndpointLock):
    """Leases in PostgreSQL; each call is one short transaction on its own connection."""

    backend = "postgres-lock"
    driver_errors = (psycopg2.Error,)

    def __init__(self, conn: ConnInfo, *, table: str = DEFAULT_TABLE, connect_timeout_s: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(table=table, clock=clock)
        if not conn.host:
            raise ConfigError(f"lock connection {conn.conn_id!r}: the postgres lock backend needs a host")
        extra = dict(conn.extra)
        self._params: dict[str, Any] = {
            "host": conn.host, "port": conn.port or 5432, "user": conn.login or None, "password": conn.password,
            "dbname": extra.get("dbname") or conn.schema or "postgres",
            "connect_timeout": max(1, int(connect_timeout_s)), "application_name": "canary-lock",
        }
        if extra.get("sslmode"):
            self._params["sslmode"] = extra["sslmode"]
        self._params = {k: v for k, v in self._params.items() if v is not None}

    def where(self) -> str:
        p = self._params
        return f"postgres {p['host']}:{p['port']}/{p['dbname']} table {self.table}"

    def _sql(self, statement: str) -> str:
        return named_to_pyformat(statement)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = psycopg2.connect(**self._params)
        try:
            with conn, conn.cursor() as cur:  # commits on success, rolls back on error
                yield cur
        finally:
            conn.close()

    def _create_schema(self, cur: Any) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog: serialise it.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%(name)s))", {"name": f"canary-lock-schema:{self.table}"})
        super()._create_schema(cur)
