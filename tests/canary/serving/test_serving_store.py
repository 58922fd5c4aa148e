"""The metrics store: batched writes from a background thread, flush and close semantics, schema."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from canary.serving.store import MetricsStore, RequestRecord, open_readonly


def _record(i: int, **overrides: object) -> RequestRecord:
    values: dict[str, object] = {"ts": 1000.0 + i, "endpoint": "churn", "version": "v1", "latency_ms": 2.0 + i,
                                 "status": 200, "error": False, "score": 0.25, "label": 0, "kpi_event": i % 2 == 0,
                                 "segment": "new", "request_id": f"r{i}", "mirrored": False}
    values.update(overrides)
    return RequestRecord(**values)  # type: ignore[arg-type]


def _count(path: Path) -> int:
    with closing(open_readonly(path)) as db:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def test_flush_commits_what_was_appended_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MetricsStore(path, flush_interval_s=60.0) as store:
        threads = [threading.Thread(target=lambda k=k: [store.append(_record(k * 1000 + i)) for i in range(500)])
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _count(path) == 0  # still batched: the interval has not elapsed
        store.flush()
        assert _count(path) == 2000


def test_batches_are_committed_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with MetricsStore(path, flush_interval_s=0.05) as store:
        store.append(_record(1))
        deadline = time.monotonic() + 5.0
        while _count(path) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _count(path) == 1


def test_close_commits_and_rejects_later_appends(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = MetricsStore(path, flush_interval_s=60.0)
    store.append(_record(1, error=True, status=500, score=None, label=None, latency_ms=0.0))
    store.close()
    store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        row = db.execute("SELECT error, status, score, label, latency_ms, log_latency_ms FROM requests").fetchone()
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    # A 0 ms latency is floored so that its log stays finite.
    assert row == (1, 500, None, None, 1e-3, pytest.approx(math.log(1e-3)))
    assert {"requests_endpoint_version_ts", "requests_request_id"} <= indexes
    with pytest.raises(RuntimeError, match="is closed"):
        store.append(_record(2))


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    MetricsStore(path).close()
    with closing(open_readonly(path)) as db, pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("DELETE FROM requests")
