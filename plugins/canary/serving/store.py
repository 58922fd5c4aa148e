"""The local metrics store: one SQLite row per answered request, written in batches from a background thread.

Schema (table ``requests``, WAL journal, index on ``(endpoint, version, ts)`` and on ``request_id``)::

    ts              REAL     arrival time, epoch seconds (a mirrored answer carries its request's ts)
    endpoint        TEXT
    version         TEXT     the version that answered
    latency_ms      REAL     server-side latency, injected latency included
    log_latency_ms  REAL     ln(latency_ms), stored so windows can sum log-latencies in SQL
    status          INTEGER  HTTP status of the answer (200 or 500)
    error           INTEGER  1 for a failed answer
    score           REAL     predicted probability, NULL on error
    label           INTEGER  predicted class, NULL on error
    kpi_event       INTEGER  1 if the synthetic KPI (conversion) happened
    segment         TEXT     user segment, ``new``/``returning`` (``anonymous`` without a user id)
    attributes      TEXT     the request's attributes as a JSON object (``{}`` without), e.g. ``{"device": "ios"}``
    request_id      TEXT     shared by a served answer and its mirrored answer
    mirrored        INTEGER  1 for a shadow answer that was never returned to the client

Readers open the file read-only (:func:`open_readonly`); this module imports nothing beyond the standard
library and :mod:`canary.policy.evidence`, so the metrics backend can use it without the serving stack.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TABLE = "requests"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    version TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    log_latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    error INTEGER NOT NULL,
    score REAL,
    label INTEGER,
    kpi_event INTEGER NOT NULL,
    segment TEXT NOT NULL,
    request_id TEXT NOT NULL,
    mirrored INTEGER NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS {TABLE}_endpoint_version_ts ON {TABLE} (endpoint, version, ts);
CREATE INDEX IF NOT EXISTS {TABLE}_request_id ON {TABLE} (request_id);
"""
_INSERT = (f"INSERT INTO {TABLE} (ts, endpoint, version, latency_ms, log_latency_ms, status, error, score, label, "
           "kpi_event, segment, request_id, mirrored, attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: Latencies are floored here before taking the log, so a 0 ms measurement cannot produce -inf.
MIN_LATENCY_MS = 1e-3


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """One answered request (served or mirrored)."""

    ts: float
    endpoint: str
    version: str
    latency_ms: float
    status: int
    error: bool
    score: float | None
    label: int | None
    kpi_event: bool
    segment: str
    request_id: str
    mirrored: bool
    attributes: Mapping[str, str] = field(default_factory=dict)

    def row(self) -> tuple[object, ...]:
        """Return the values in ``_INSERT`` order."""
        latency_ms = max(self.latency_ms, MIN_LATENCY_MS)
        return (self.ts, self.endpoint, self.version, latency_ms, math.log(latency_ms), self.status,
                int(self.error), self.score, self.label, int(self.kpi_event), self.segment, self.request_id,
                int(self.mirrored), json.dumps(dict(self.attributes), separators=(",", ":"), sort_keys=True))


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier release up to the schema (columns added since have defaults)."""
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
    if "attributes" not in columns:
        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN attributes TEXT NOT NULL DEFAULT '{{}}'")
        conn.commit()


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open the store read-only (raises ``sqlite3.OperationalError`` if the file does not exist)."""
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)


_STOP = object()


class MetricsStore:
    """Append :class:`RequestRecord` values from any thread; a writer thread commits them in batches.

    A batch is committed at most ``flush_interval_s`` after its first record (or once it holds
    ``max_batch`` records), so the request path never waits for the disk.
    """

    def __init__(self, path: str | Path, *, flush_interval_s: float = 0.25, max_batch: int = 5000) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path)) as conn:  # create the schema before anyone reads
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            _add_missing_columns(conn)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._writer = threading.Thread(target=self._run, name=f"metrics-store:{self.path.name}", daemon=True)
        self._writer.start()

    def append(self, record: RequestRecord) -> None:
        """Queue a record for the next batch."""
        if self._closed:
            raise RuntimeError(f"metrics store {self.path} is closed")
        self._queue.put(record.row())

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until every record appended before this call is committed."""
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout_s):
            raise TimeoutError(f"metrics store {self.path}: flush did not finish within {timeout_s} s")

    def close(self) -> None:
        """Commit what is queued and stop the writer thread (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._writer.join()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last batch
        batch: list[tuple[object, ...]] = []
        first_at = 0.0
        try:
            while True:
                timeout = max(0.0, first_at + self.flush_interval_s - time.monotonic()) if batch else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if isinstance(item, tuple):
                    if not batch:
                        first_at = time.monotonic()
                    batch.append(item)
                    if len(batch) < self.max_batch and time.monotonic() - first_at < self.flush_interval_s:
                        continue
                self._write(conn, batch)
                batch = []
                if isinstance(item, threading.Event):
                    item.set()
                elif item is _STOP:
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[tuple[object, ...]]) -> None:
        if not batch:
            return
        try:
            with conn:
                conn.executemany(_INSERT, batch)
        except sqlite3.Error:
            # Losing a batch is better than stopping the writer: the server keeps answering.
            log.exception("metrics store %s: dropped a batch of %d records", self.path, len(batch))
