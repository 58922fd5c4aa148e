"""Benchmark of the shadow test's paired error test against STATS.md target B9.

Run: ``python bench/shadow_bench.py [--reps 2000] [--seed 1]`` (``make bench``). Simulates mirrored
requests answered by both versions, with failures the two share (hard requests: both fail) and
failures of one version alone, looks every 25 pairs up to 10,000, and prints:

- A/A: how often the sequential McNemar test (:mod:`canary.stats.paired`) fails a candidate that fails
  exactly as often as stable, at the shipped level (``alpha / k``: the shadow test splits its level over
  its k paired tests, five with the default spec) and at the whole ``alpha``; and naive peeking at a one-sided z-test on the
  discordant pairs, for contrast;
- a regression (the candidate fails alone twice as often as stable alone): the mean number of pairs to
  fail it, against the *unpaired* label test the canary stages use (each version's own requests, exposure
  share 1/2, same level), which cannot cancel the shared failures.

Prints figures and the ratio paired / unpaired; asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from canary.rollout.shadow import paired_tests
from canary.spec import defaults
from canary.spec.model import ShadowSpec
from canary.stats.label import GridPrior, grid_log_lr
from canary.stats.paired import PAIR_SHARE

ALPHA = 0.05
SHIPPED_TESTS = paired_tests(ShadowSpec())  # the default spec's split of the shadow test's level
SHIPPED = ALPHA / SHIPPED_TESTS
STEP = 25
MAX_PAIRS = 10_000
PRIOR = GridPrior.around(math.log(defaults.SHADOW_DESIGN_RATIO))


def simulate(rng: np.random.Generator, reps: int, p_both: float, p_cand_only: float,
             p_stable_only: float) -> dict[str, np.ndarray]:
    """Return cumulative counts at every look, shape (reps, looks): paired discordant counts and each
    version's own errors on independent requests (for the unpaired test)."""
    looks = MAX_PAIRS // STEP
    probs = [p_both, p_cand_only, p_stable_only, 1.0 - p_both - p_cand_only - p_stable_only]
    per_look = rng.multinomial(STEP, probs, size=(reps, looks))  # both, cand only, stable only, neither
    cum = per_look.cumsum(axis=1)
    # Unpaired: the same marginal error rates, each version on its own requests (no shared hard requests).
    p_c, p_s = p_both + p_cand_only, p_both + p_stable_only
    x_c = rng.binomial(STEP, p_c, size=(reps, looks)).cumsum(axis=1)
    x_s = rng.binomial(STEP, p_s, size=(reps, looks)).cumsum(axis=1)
    return {"b": cum[..., 1], "c": cum[..., 2], "x_c": x_c, "x_s": x_s}


def first_crossing(x_c: np.ndarray, x_s: np.ndarray, level: float) -> np.ndarray:
    """Return the pairs at the first look whose label e-value (share 1/2) reaches 1/level; -1 if none."""
    log_e = logsumexp(grid_log_lr(x_c, x_s, np.full(x_c.shape, PAIR_SHARE), 1.0, PRIOR, 1) + PRIOR.log_weights,
                      axis=-1)
    hit = log_e >= math.log(1.0 / level)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return np.where(first >= 0, (first + 1) * STEP, -1)


def peeking_z(b: np.ndarray, c: np.ndarray, level: float) -> np.ndarray:
    d = b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(d > 0, (b - c) / np.sqrt(np.maximum(d, 1)), 0.0)
    from scipy.stats import norm

    return (z > norm.ppf(1 - level)).any(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    se = 2 * math.sqrt(ALPHA * (1 - ALPHA) / args.reps)
    print(f"shadow test, paired error test (B9): {args.reps} replications, looks every {STEP} pairs to {MAX_PAIRS:,}")
    print()
    print("A/A (candidate fails alone as often as stable alone): share of runs failed")
    print(f"{'scenario':44} {f'shipped a/{SHIPPED_TESTS}':>12} {'whole a':>9} {'peeking z':>10}   target <= {ALPHA + se:.3f}")
    for name, (p_both, p_one) in {"1% each alone, 2% together": (0.02, 0.01),
                                  "0.1% each alone, 0.5% together": (0.005, 0.001),
                                  "5% each alone, no shared failures": (0.0, 0.05)}.items():
        sim = simulate(rng, args.reps, p_both, p_one, p_one)
        shipped = (first_crossing(sim["b"], sim["c"], SHIPPED) > 0).mean()
        whole = (first_crossing(sim["b"], sim["c"], ALPHA) > 0).mean()
        peek = peeking_z(sim["b"], sim["c"], ALPHA).mean()
        print(f"{name:44} {shipped:12.3f} {whole:9.3f} {peek:10.3f}")
    print()
    print("regression (candidate alone twice as often as stable alone): mean pairs to fail it, level "
          f"a/{SHIPPED_TESTS}")
    print(f"{'scenario':44} {'paired':>8} {'unpaired':>9} {'ratio':>7} {'paired found':>13} {'unpaired found':>15}")
    for name, (p_both, p_co, p_so) in {"2% together, 2% vs 1% alone": (0.02, 0.02, 0.01),
                                       "10% together, 2% vs 1% alone": (0.10, 0.02, 0.01),
                                       "no shared failures, 2% vs 1%": (0.0, 0.02, 0.01)}.items():
        sim = simulate(rng, args.reps, p_both, p_co, p_so)
        paired = first_crossing(sim["b"], sim["c"], SHIPPED)
        unpaired = first_crossing(sim["x_c"], sim["x_s"], SHIPPED)
        # Runs not decided by MAX_PAIRS count as MAX_PAIRS (a lower bound on the mean).
        mp = np.where(paired > 0, paired, MAX_PAIRS).mean()
        mu = np.where(unpaired > 0, unpaired, MAX_PAIRS).mean()
        print(f"{name:44} {mp:8,.0f} {mu:9,.0f} {mp / mu:7.2f} {(paired > 0).mean():13.3f} {(unpaired > 0).mean():15.3f}")


if __name__ == "__main__":
    main()
