"""The demo's process handling: whatever it starts, it stops, children that outlive their leader included."""

from __future__ import annotations

import sys
import time

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
