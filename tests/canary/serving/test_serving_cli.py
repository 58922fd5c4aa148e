"""``canary serve`` and ``canary traffic``: argument parsing, a real server process, clean signal handling."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests
from serving_harness import TOKEN, Served

import canary
from canary.cli import main
from canary.serving.cli import parse_duration, parse_fault
from canary.serving.state import Faults


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("45", 45.0),
                                              ("250ms", 0.25), ("1.5s", 1.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-3s", "5x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration(text)


def test_parse_fault() -> None:
    assert parse_fault("v2:error_rate=0.1, latency_ms=40") == ("v2", Faults(error_rate=0.1, latency_ms=40))
    assert parse_fault("v4:error_rate=0.2,when.device=android,when.region=eu-west") == (
        "v4", Faults(error_rate=0.2, when={"device": "android", "region": "eu-west"}))


@pytest.mark.parametrize(("text", "message"), [
    ("v2", "use VERSION:key=value"),
    ("v2:error_rate", "is not key=value"),
    ("v2:error_rat=0.1", "error_rat: Extra inputs are not permitted"),
    ("v2:error_rate=3", "error_rate: Input should be less than or equal to 1"),
])
def test_parse_fault_rejects_with_the_key(text: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        parse_fault(text)


def test_traffic_command_prints_counts(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.setup("churn", {"v1": 100})
    assert main(["traffic", "--url", served.url, "--endpoint", "churn", "--rps", "100", "--duration", "200ms"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["sent"], stats["ok"], stats["by_version"]) == (20, 20, {"v1": 20})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_traffic_command_fails_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["traffic", "--url", url, "--endpoint", "churn", "--rps", "100", "--duration", "50ms"]) == 1
    assert json.loads(capsys.readouterr().out)["failed"] == 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port, db_path = _free_port(), tmp_path / "metrics.db"
    env = {**os.environ, "PYTHONPATH": str(Path(canary.__file__).parent.parent), "CANARY_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "canary", "serve", "--port", str(port), "--db", str(db_path), "--endpoint", "churn",
         "--version", "v1", "--version", "v2", "--fault", "v1:error_rate=1", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()  # type: ignore[union-attr]
                time.sleep(0.1)
        state = requests.get(f"{url}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
        assert state["endpoints"]["churn"]["weights"] == {"v1": 100, "v2": 0}
        assert state["faults"]["v1"]["error_rate"] == 1.0
        for i in range(5):
            response = requests.post(f"{url}/v1/endpoints/churn/predict", json={"features": [0.0] * 8},
                                     headers={"X-User-Id": f"u{i}"}, timeout=5)
            assert response.status_code == 500
        process.send_signal(sig)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    # Shutdown flushed the last batch and checkpointed the WAL.
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT COUNT(*), SUM(error) FROM requests").fetchone() == (5, 5)
    assert not Path(f"{db_path}-wal").exists()
