"""The traffic generator against a real server: rate, duration, stopping, and tolerance of failures."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from serving_harness import Served

from canary.serving.traffic import run_traffic


def test_sends_at_the_rate_for_the_duration_and_counts_match_the_store(served: Served) -> None:
    served.setup("churn", {"v1": 50, "v2": 50})
    started = time.monotonic()
    stats = run_traffic(served.url, "churn", rps=100, duration_s=1.5, seed=3)
    assert stats.sent == 150
    assert 1.49 <= time.monotonic() - started < 3.0  # the 150th request is due at 149 / 100 s
    assert (stats.ok, stats.errors, stats.unavailable, stats.other, stats.failed) == (150, 0, 0, 0, 0)
    assert set(stats.by_version) == {"v1", "v2"}
    recorded = dict(served.rows("SELECT version, COUNT(*) FROM requests GROUP BY version"))
    assert recorded == stats.by_version
    segments = {s for (s,) in served.rows("SELECT DISTINCT segment FROM requests")}
    assert segments == {"new", "returning"}


def test_counts_5xx_and_503_without_raising(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    served.admin("PUT", "/faults/v1", json={"error_rate": 1.0}).raise_for_status()
    stats = run_traffic(served.url, "churn", rps=200, duration_s=0.25)
    assert (stats.sent, stats.errors, stats.ok) == (50, 50, 0)
    assert stats.by_version == {"v1": 50}
    served.admin("PUT", "/endpoints/idle/versions/v1").raise_for_status()
    stats = run_traffic(served.url, "idle", rps=200, duration_s=0.25)
    assert (stats.sent, stats.unavailable) == (50, 50)
    stats = run_traffic(served.url, "missing", rps=200, duration_s=0.1)
    assert stats.other == stats.sent == 20


def test_stop_event_ends_an_open_ended_run(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    stats = run_traffic(served.url, "churn", rps=50, stop_event=stop)
    assert time.monotonic() - started < 1.5
    assert 15 <= stats.sent <= 35
    assert stats.ok == stats.sent


def test_connection_errors_are_counted() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stats = run_traffic(f"http://127.0.0.1:{port}", "churn", rps=100, duration_s=0.1, timeout_s=1.0)
    assert stats.failed == stats.sent == 10


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rps": 10}, "must be bounded"),
    ({"rps": 0, "duration_s": 1}, "rps must be > 0"),
])
def test_rejects_unbounded_or_zero_rate(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_traffic("http://127.0.0.1:1", "churn", **kwargs)  # type: ignore[arg-type]
