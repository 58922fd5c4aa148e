"""Importing the report costs nothing heavy: Altair, vl-convert and Jinja2 load only when a page is drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_report_loads_no_chart_library():
    code = ("import sys, json; import canary.report.html, canary.report.charts, canary.report.markdown, "
            "canary.rollout.report; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'altair', 'vl_convert', 'jinja2', 'pandas', 'numpy', 'great_expectations'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "plugins"), "PATH": ""})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
