"""Child processes for the local stack: free ports, process groups that are always stopped, HTTP readiness,
and a throwaway Prometheus. Used by the demo and by every test that starts a real server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent (thread) exits."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Child processes that are always stopped (process groups, SIGTERM then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []

    def start(self, name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` in its own process group; on Linux it gets SIGTERM should this process die first.

        Without that, a test run killed from outside (a CI timeout, Ctrl-C twice) never runs ``stop_all``
        and leaves serving layers and traffic generators loading the machine for the next runs.
        """
        if sys.platform.startswith("linux") and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = _die_with_parent
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group, wait up to ``grace_s``, then SIGKILL whatever is left.

        A group can outlive its leader (``airflow standalone`` exits on SIGTERM while its scheduler
        may not), so the check is on the whole group, not the leader alone.
        """
        for _name, proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + grace_s
        for _name, proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.time()))
            while group_running(proc.pid) and time.time() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_by = time.time() + 5  # SIGKILL is asynchronous: wait until the kernel is done
            while group_running(proc.pid) and time.time() < killed_by:
                time.sleep(0.05)
        self.procs.clear()


def group_running(pgid: int) -> bool:
    """Return True while a process of group ``pgid`` is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # fields after the ")" that ends the command name: state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def wait_http(url: str, timeout_s: float = 60.0, *, alive: subprocess.Popen[Any] | None = None,
              log_file: Path | None = None) -> None:
    """Wait until ``url`` answers 200; fail at once if the process serving it has died."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if alive is not None and alive.poll() is not None:
            tail = log_file.read_text()[-2000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"the process behind {url} exited with code {alive.returncode}:\n{tail}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s")


@contextlib.contextmanager
def prometheus_server(workdir: Path, *, targets: Sequence[str] = (), tsdb_dir: Path | None = None,
                      scrape_interval_s: int = 1) -> Iterator[str]:
    """Run Prometheus on a free loopback port, scraping ``targets`` (``host:port``); yield its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    tsdb = tsdb_dir or workdir / "tsdb"
    config = workdir / "prometheus.yml"
    target_list = ", ".join(f'"{t}"' for t in targets)
    config.write_text(
        f"global:\n  scrape_interval: {scrape_interval_s}s\n  evaluation_interval: {scrape_interval_s}s\n"
        + (f"scrape_configs:\n  - job_name: serving\n    static_configs:\n      - targets: [{target_list}]\n"
           if targets else "scrape_configs: []\n"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready at {url}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for_scrape(url: str, query: str, timeout_s: float = 15.0) -> None:
    """Wait until ``query`` returns a sample (e.g. the first scrape of a target happened)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
        if result:
            return
        time.sleep(0.2)
    raise AssertionError(f"{query} never returned data from {url}")
