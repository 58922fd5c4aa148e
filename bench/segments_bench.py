"""Benchmark of per-segment analysis (``analysis.segments``): A/A false stops and a segment-confined regression (B10).

Run: ``python bench/segments_bench.py [--reps 2000] [--seed 1]`` (``make bench``). Simulates one stage at a
20% canary share with four segments of 40/30/20/10% of the traffic, looks every 500 requests up to 50,000,
and runs the error-rate label test and the SRM check overall and in every segment, as the analyzer does,
at cumulative counts (vectorised over replications), and prints:

- A/A (every version fails 2% everywhere): the share of runs stopped by any test (rollback or SRM halt) at
  the shipped split (:mod:`canary.stats.budget`: the overall test keeps half of each test's level, each
  segment a quarter of the other half), against the naive design that tests every segment at the whole
  level (no multiplicity control);
- a regression confined to the smallest segment (3x the errors in 10% of the traffic, 1.2x overall, within
  a tolerance of 1.5x): how often and how fast it is rolled back with segments, against the overall test
  alone.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from canary.spec.model import parse_spec
from canary.stats import srm
from canary.stats.analyzer import count_orientation
from canary.stats.budget import error_budget
from canary.stats.label import GridPrior, grid_log_lr

SHARES = np.array([0.4, 0.3, 0.2, 0.1])
WEIGHT = 0.2
STEP = 500
MAX_REQUESTS = 50_000
CHUNK = 250  # replications per block (bounds memory)
SPEC = parse_spec({
    "model": "bench", "endpoint": "e", "stages": [{"weight": 20, "max_duration": "1h"}, {"weight": 100}],
    "analysis": {"alpha": 0.05, "metrics": [{"name": "error_rate", "kind": "error_rate", "tolerance": 0.5,
                                             "mde": 1.0}],
                 "segments": {"by": "device", "values": ["a", "b", "c", "d"]}}})


def simulate(rng: np.random.Generator, reps: int, rates: np.ndarray) -> dict[str, np.ndarray]:
    """Cumulative counts per look, shape (reps, looks, segments): requests and errors per version."""
    looks = MAX_REQUESTS // STEP
    n = rng.multinomial(STEP, SHARES, size=(reps, looks))
    n_c = rng.binomial(n, WEIGHT)
    n_s = n - n_c
    x_c = rng.binomial(n_c, rates[None, None, :])
    x_s = rng.binomial(n_s, 0.02)
    return {k: v.cumsum(axis=1) for k, v in {"n_c": n_c, "n_s": n_s, "x_c": x_c, "x_s": x_s}.items()}


def label_log_e(x_c: np.ndarray, x_s: np.ndarray, n_c: np.ndarray, n_s: np.ndarray, prior: GridPrior) -> np.ndarray:
    rho = np.where((n_c > 0) & (n_s > 0), n_c / np.maximum(n_c + n_s, 1), 0.5)
    return logsumexp(grid_log_lr(x_c, x_s, rho, 1.0, prior, 1) + prior.log_weights, axis=-1)


def first_stop(sim: dict[str, np.ndarray], *, overall_level: tuple[float, float],
               segment_level: tuple[float, float] | None) -> np.ndarray:
    """Return the look index of the first stop per replication (-1: none); levels are (metric, srm)."""
    prior = GridPrior.around(math.log(count_orientation(SPEC.analysis.metrics[0]).design_ratio))
    scopes = [tuple(sim[k].sum(axis=2) for k in ("x_c", "x_s", "n_c", "n_s"))]
    levels = [overall_level]
    if segment_level is not None:
        scopes += [tuple(sim[k][..., j] for k in ("x_c", "x_s", "n_c", "n_s")) for j in range(len(SHARES))]
        levels += [segment_level] * len(SHARES)
    stopped = np.zeros(sim["n_c"].shape[:2], dtype=bool)
    for (x_c, x_s, n_c, n_s), (metric_level, srm_level) in zip(scopes, levels, strict=True):
        stopped |= label_log_e(x_c, x_s, n_c, n_s, prior) >= math.log(1.0 / metric_level)
        stopped |= srm.log_e_value(n_c, n_s, WEIGHT) >= math.log(1.0 / srm_level)
    return np.where(stopped.any(axis=1), stopped.argmax(axis=1), -1)


def run(rng: np.random.Generator, reps: int, rates: np.ndarray, **levels) -> np.ndarray:
    return np.concatenate([first_stop(simulate(rng, min(CHUNK, reps - i), rates), **levels)
                           for i in range(0, reps, CHUNK)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    budget = error_budget(SPEC.analysis)
    seg = budget.for_segment()
    shipped = {"overall_level": (budget.metric("error_rate"), budget.srm_alpha),
               "segment_level": (seg.metric("error_rate"), seg.srm_alpha)}
    whole = (budget.metric("error_rate") / budget.scope_share, budget.srm_alpha / budget.scope_share)
    naive = {"overall_level": whole, "segment_level": whole}
    alone = {"overall_level": whole, "segment_level": None}
    alpha = SPEC.analysis.alpha
    se = 2 * math.sqrt(alpha * (1 - alpha) / args.reps)
    print(f"per-segment analysis (B10): {args.reps} replications, canary 20%, segments 40/30/20/10%, looks every "
          f"{STEP} requests to {MAX_REQUESTS:,}; {budget.describe()}")
    print()
    print(f"A/A (2% errors everywhere): share of runs stopped by any test; target <= {alpha + se:.3f}")
    healthy = np.full(len(SHARES), 0.02)
    print(f"{'design':58} {'stopped':>8}")
    for name, levels in (("shipped: overall 1/2, each segment 1/8 of each level", shipped),
                         ("naive: every segment at the whole level", naive),
                         ("overall only, whole level", alone)):
        print(f"{name:58} {(run(rng, args.reps, healthy, **levels) >= 0).mean():8.3f}")
    print()
    print("regression in the 10% segment only (6% vs 2% errors there; overall ratio 1.2, within tolerance 1.5)")
    confined = np.array([0.02, 0.02, 0.02, 0.06])
    print(f"{'design':58} {'rolled back':>12} {'mean requests':>14}")
    for name, levels in (("shipped (with segments)", shipped), ("overall only, whole level", alone)):
        first = run(rng, args.reps, confined, **levels)
        requests = np.where(first >= 0, (first + 1) * STEP, MAX_REQUESTS).mean()
        print(f"{name:58} {(first >= 0).mean():12.3f} {requests:14,.0f}")


if __name__ == "__main__":
    main()
