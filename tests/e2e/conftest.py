"""``make faults``: after the fault-injection tests, print their table and one JSON line (run without xdist)."""

from __future__ import annotations

import json
import sys


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    module = sys.modules.get("test_faults_e2e")
    rows = getattr(module, "FAULT_ROWS", None)
    if not rows:
        return  # not run here (or on an xdist worker, whose rows stay there)
    write = terminalreporter.write_line
    write("")
    write(f"{'fault':36} {'where':26} {'outcome':12} {'to safe (s)':>11}  invariant")
    for row in rows:
        safe = "-" if row["time_to_safe_s"] is None else f"{row['time_to_safe_s']:.1f}"
        held = "held" if row["invariant_held"] else "VIOLATED: " + "; ".join(row["violations"])
        write(f"{row['fault']:36} {row['where']:26} {row['outcome']:12} {safe:>11}  {held}")
    violations = sum(len(row["violations"]) for row in rows)
    times = [row["time_to_safe_s"] for row in rows if row["time_to_safe_s"] is not None]
    write(json.dumps({"faults": len(rows), "runs": len(rows), "invariant_violations": violations,
                      "max_time_to_safe_s": max(times) if times else None, "exit_status": int(exitstatus)}))
