"""Benchmark: ``canary replay`` on 1,000 runs x 1,000 rows (issue target: under a minute).

Prints the wall time, rows per second and the ratio to the 60 s budget. Run: ``make bench``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from canary.cli import main  # noqa: E402

BUDGET_S = 60.0
SPEC = """\
model: svc
endpoint: e
stages:
  - {weight: 5, max_duration: 1h}
  - {weight: 25, max_duration: 1h}
  - {weight: 50, max_duration: 1h}
  - {weight: 100, max_duration: 1h}
analysis:
  metrics:
    - {name: error_rate, kind: error_rate, tolerance: 0.25, mde: 1.0}
    - {name: slow, kind: latency, threshold_ms: 300, tolerance: 0.2}
"""


def synthetic_runs(runs: int, points: int, seed: int = 0) -> pd.DataFrame:
    """Runs of ``points`` looks (a stable and a canary row each) ramping 5/25/50%; odd runs have 2x errors."""
    rng = np.random.default_rng(seed)
    run = np.repeat(np.arange(runs), points)
    t = np.tile(np.arange(points) * 30.0, runs)
    w = np.where(t < points * 10, 5, np.where(t < points * 20, 25, 50))
    nc = rng.binomial(500, w / 100)
    ns = 500 - nc
    theta = np.where(run % 2 == 0, 1.0, 2.0)
    fc, fs = rng.binomial(nc, 0.9), rng.binomial(ns, 0.9)
    df = pd.DataFrame({"run": np.r_[run, run], "t": np.r_[t, t], "version": ["canary"] * len(run) + ["stable"] * len(run),
                       "requests": np.r_[nc, ns], "errors": np.r_[rng.binomial(nc, 0.01 * theta), rng.binomial(ns, 0.01)],
                       "weight": np.r_[w, w], "latency_le_100": np.r_[fc, fs],
                       "latency_le_300": np.r_[fc + rng.binomial(nc - fc, 0.9), fs + rng.binomial(ns - fs, 0.9)]})
    return df.sort_values(["run", "t"], kind="stable")


def main_bench(runs: int = 1000, points: int = 500) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec, data = Path(tmp) / "svc.yaml", Path(tmp) / "runs.csv"
        spec.write_text(SPEC)
        frame = synthetic_runs(runs, points)
        frame.to_csv(data, index=False)
        out = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = main(["replay", str(spec), str(data)])
        elapsed_s = time.perf_counter() - started
    summary = out.getvalue().strip().splitlines()[-1]
    print(f"canary replay: {runs} runs x {2 * points} rows = {len(frame):,} rows in {elapsed_s:.1f} s "
          f"({len(frame) / elapsed_s:,.0f} rows/s), exit {code}; {elapsed_s / BUDGET_S:.2f} x the {BUDGET_S:.0f} s "
          f"budget; {summary}")


if __name__ == "__main__":
    main_bench()
