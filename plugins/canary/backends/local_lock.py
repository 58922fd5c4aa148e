"""Endpoint leases in a local SQLite file (the default): one machine, every Airflow component on it.

Connection (optional): ``extra.path``; without one the store is :func:`canary.rollout.lease.default_lock_path`
(``$CANARY_LOCK_PATH`` or ``$AIRFLOW_HOME/canary_locks.db``), so ``airflow dags test``,
``airflow standalone`` and the demo need no set-up. Several hosts (Celery, Kubernetes executors) must
share one store: use the ``postgres`` lock backend there (or a path on storage all of them lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from canary.backends.base import ConnInfo
from canary.backends.sql_lock import DEFAULT_TABLE, SqlEndpointLock
from canary.rollout.lease import default_lock_path


class LocalEndpointLock(SqlEndpointLock):
    """Leases in a SQLite file; each call is one ``BEGIN IMMEDIATE`` transaction (writers serialised).

    :param busy_timeout_s: how long a call waits for another process's transaction.
    """

    backend = "local-lock"
    driver_errors = (sqlite3.Error, OSError)

    def __init__(self, conn: ConnInfo | None = None, *, path: str | Path | None = None, table: str = DEFAULT_TABLE,
                 busy_timeout_s: float = 30.0, clock: Callable[[], float] | None = None) -> None:
        super().__init__(table=table, clock=clock)
        extra_path = (conn.extra.get("path") if conn is not None else None) or None
        if path and not Path(path).is_absolute():  # a spec's ``path`` option: a file in the default folder
            path = default_lock_path().parent / path
        self.path = Path(path or extra_path or default_lock_path()).expanduser()
        self.busy_timeout_s = busy_timeout_s

    def where(self) -> str:
        return f"{self.path}:{self.table}"

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.cursor()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()
