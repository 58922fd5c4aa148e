"""The demo's process handling: whatever it starts, it stops, children that outlive their leader included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from canary.devstack.processes import Processes, group_running

# A leader that exits on SIGTERM while its child ignores SIGTERM (like `airflow standalone` and a scheduler).
LEADER = """
import signal, subprocess, sys, time
subprocess.Popen([sys.executable, "-c",
                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
time.sleep(600)
"""


def members(pgid: int) -> list[str]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(stat.parent.name)
    return out


def test_stop_all_kills_group_members_that_ignore_sigterm():
    procs = Processes()
    leader = procs.start("leader", [sys.executable, "-c", LEADER])
    deadline = time.time() + 20  # let the child start and ignore SIGTERM (slow on a loaded machine)
    while len(members(leader.pid)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert len(members(leader.pid)) == 2
    time.sleep(0.5)
    assert group_running(leader.pid)
    started = time.time()
    procs.stop_all(grace_s=2.0)
    assert not group_running(leader.pid)
    assert time.time() - started < 10
    assert procs.procs == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_dies_with_a_parent_that_is_killed_before_it_can_stop_it():
    """A test process killed from outside (a CI timeout) runs no finalizer: its servers must not live on."""
    code = ("import time\nfrom canary.devstack.processes import Processes\n"
            "proc = Processes().start('sleeper', ['sleep', '300'])\nprint(proc.pid, flush=True)\ntime.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)  # the kernel signals the orphan asynchronously: wait for it, bounded
    assert not _alive(child), f"pid {child} outlived its killed parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state
