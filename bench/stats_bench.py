"""Benchmark of the sequential tests against the STATS.md targets B1-B7.

Run: ``python bench/stats_bench.py [--reps 2000] [--seed 1]`` (``make bench``). Simulates the STATS.md
scenarios (one-sided alpha 0.05, canary share 5%, looks every 100 canary requests up to 100k) with
``--reps`` replications, vectorised over replications, and prints one table per target with our
figure, the power-one SPRT oracle, the fixed-horizon test, naive peeking, a Kayenta-style repeated
Mann-Whitney judge and an Argo/Flagger-style threshold check. Prints figures; asserts nothing.

Levels are the shipped error budget of a spec with ``alpha: 0.05`` (:mod:`canary.stats.budget`): the
metric rolls back at ``alpha - srm_alpha`` = 0.049, the sample-ratio check halts at ``srm_alpha`` =
0.001, promotion (non-inferiority) is tested at ``alpha``. B1 counts false *stops*: a healthy, correctly
routed canary rolled back by the metric or halted by the SRM check.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps
from scipy.special import logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from canary.progress import Progress
from canary.spec.model import AnalysisSpec
from canary.stats import label, msprt, srm
from canary.stats.budget import error_budget
from canary.stats.plan import fixed_horizon_n

BUDGET = error_budget(AnalysisSpec(alpha=0.05))
ALPHA = BUDGET.alpha
RHO = 0.05
STEP = 100  # canary requests per look
LOOKS = 1000  # up to 100k canary requests
LOG_THR = math.log(1.0 / BUDGET.metrics_alpha)  # a single metric's rollback threshold (the shipped level)
LOG_SRM = BUDGET.log_srm_threshold
LOG_PROMOTE = math.log(1.0 / BUDGET.promote_alpha)
#: Before the budget was split: the metric and the SRM check each at the whole alpha.
LOG_ALPHA = math.log(1.0 / ALPHA)


@dataclass
class Counts:
    """Cumulative counts per look, shape (reps, looks)."""

    n_c: np.ndarray
    n_s: np.ndarray
    x_c: np.ndarray
    x_s: np.ndarray
    stage: np.ndarray | None = None  # stage index per look (ramps), shape (looks,)
    configured: np.ndarray | None = None  # configured canary share per look, shape (looks,)


def simulate(rng: np.random.Generator, reps: int, p_c: float, p_s: float, *, looks: int = LOOKS,
             shares: tuple[float, ...] = (RHO,), random_routing: bool = False,
             volume: Callable[[np.random.Generator, tuple[int, int]], np.ndarray] | None = None,
             rate_burst: float | None = None, routed: tuple[float, ...] | None = None,
             step_total: float | None = None) -> Counts:
    """Simulate per-look counts; ``shares`` splits the looks into equal stages (a ramp).

    ``routed`` is the share the router really sends (a broken router), ``shares`` the configured one;
    ``step_total`` sets the requests per look (default ``STEP / RHO``: 100 canary requests at 5%).
    """
    stage = np.minimum(np.arange(looks) * len(shares) // looks, len(shares) - 1)
    configured = np.asarray(shares)[stage]
    rho = np.asarray(routed if routed is not None else shares)[stage][None, :]
    if random_routing or volume is not None or routed is not None:
        per_look = step_total if step_total is not None else STEP / RHO
        total = np.full((reps, looks), per_look) if volume is None else volume(rng, (reps, looks))
        total = np.round(total).astype(np.int64)
        dn_c = rng.binomial(total, rho)
        dn_s = total - dn_c
    else:
        dn_c = np.full((reps, looks), STEP)
        dn_s = np.round(STEP * (1 - rho) / rho).astype(np.int64) * np.ones((reps, 1), dtype=np.int64)
    mult = np.ones((reps, looks))
    if rate_burst is not None:  # both versions' error rates jump together in 5% of the looks
        mult = np.where(rng.random((reps, looks)) < 0.05, rate_burst, 1.0)
    dx_c = rng.binomial(dn_c, np.minimum(p_c * mult, 1.0))
    dx_s = rng.binomial(dn_s, np.minimum(p_s * mult, 1.0))
    return Counts(n_c=np.cumsum(dn_c, 1).astype(float), n_s=np.cumsum(dn_s, 1).astype(float),
                  x_c=np.cumsum(dx_c, 1).astype(float), x_s=np.cumsum(dx_s, 1).astype(float),
                  stage=stage if len(shares) > 1 else None, configured=configured)


def first_hit(hit: np.ndarray, n_c: np.ndarray) -> np.ndarray:
    """Canary requests at the first look where ``hit`` holds (nan if never)."""
    any_hit = hit.any(axis=1)
    idx = np.argmax(hit, axis=1)
    return np.where(any_hit, n_c[np.arange(len(idx)), idx], np.nan)


# -- methods -----------------------------------------------------------------------------------------


def ours_log_e(c: Counts, design_ratio: float, *, theta0: float = 1.0, direction: int = 1,
               prior: label.GridPrior | None = None) -> np.ndarray:
    """Label mixture log e-value per look (stages = periods with their own measured share)."""
    prior = prior or label.GridPrior.around(abs(math.log(design_ratio)))
    out = np.empty(c.x_c.shape)
    stages = c.stage if c.stage is not None else np.zeros(c.x_c.shape[1], dtype=int)
    carry = np.zeros((c.x_c.shape[0], len(prior.log_effects)))
    start = 0
    for s in range(int(stages.max()) + 1):
        cols = np.flatnonzero(stages == s)

        def base(a: np.ndarray, j: int, start: int = start) -> np.ndarray:
            return a[:, j] - (a[:, start - 1] if start > 0 else 0.0)

        for j in cols:
            xc, xs, nc, ns = (base(a, j) for a in (c.x_c, c.x_s, c.n_c, c.n_s))
            llr = label.grid_log_lr(xc, xs, nc / (nc + ns), theta0, prior, direction) + carry
            out[:, j] = logsumexp(llr + prior.log_weights, axis=1)
        j = cols[-1]
        xc, xs, nc, ns = (base(a, j) for a in (c.x_c, c.x_s, c.n_c, c.n_s))
        carry = carry + label.grid_log_lr(xc, xs, nc / (nc + ns), theta0, prior, direction)
        start = j + 1
    return out


def srm_log_e(c: Counts) -> np.ndarray:
    """SRM log e-value per look as the analyzer computes it: a mixture per stage, multiplied across stages."""
    out = np.empty(c.n_c.shape)
    stages = c.stage if c.stage is not None else np.zeros(c.n_c.shape[1], dtype=int)
    carry = np.zeros(c.n_c.shape[0])
    start = 0
    for s in range(int(stages.max()) + 1):
        cols = np.flatnonzero(stages == s)
        w = float(c.configured[cols[0]])
        base_c = c.n_c[:, start - 1] if start > 0 else 0.0
        base_s = c.n_s[:, start - 1] if start > 0 else 0.0
        out[:, cols] = carry[:, None] + srm.log_e_value(c.n_c[:, cols] - np.asarray(base_c)[..., None],
                                                        c.n_s[:, cols] - np.asarray(base_s)[..., None], w)
        carry = out[:, cols[-1]]
        start = cols[-1] + 1
    return out


def srm_boundaries(k_max: int, w: float, log_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """For canary counts k = 0..k_max, the stable counts at which the SRM e-value reaches ``log_thr``.

    For fixed k the log e-value is convex in the stable count n_s (its derivative psi(b + n_s) -
    psi(a + b + k + n_s) - log(1 - w) increases), and below the threshold near the configured split,
    so it is at or above the threshold exactly for ``n_s <= lo[k]`` or ``n_s >= hi[k]`` (``lo = -1``: never).
    """
    k = np.arange(k_max + 1, dtype=float)
    mid = np.floor(k * (1 - w) / w)
    assert np.all(srm.log_e_value(k, mid, w) < log_thr)

    def search(lo: np.ndarray, hi: np.ndarray, true_at_hi: bool) -> np.ndarray:
        while np.any(hi - lo > 1):
            m = np.floor((lo + hi) / 2)
            above = srm.log_e_value(k, np.maximum(m, 0), w) >= log_thr
            if true_at_hi:
                hi, lo = np.where(above, m, hi), np.where(above, lo, m)
            else:
                lo, hi = np.where(above, m, lo), np.where(above, hi, m)
        return hi if true_at_hi else lo

    left = search(np.full_like(k, -1.0), mid, true_at_hi=False)  # lo = -1 stands for "never"
    far = 8 * mid + 10_000
    while np.any(srm.log_e_value(k, far, w) < log_thr):
        far = np.where(srm.log_e_value(k, far, w) < log_thr, far * 2, far)
    right = search(mid, far, true_at_hi=True)
    return left, right


def srm_aa_per_request(rng: np.random.Generator, reps: int, log_thrs: tuple[float, ...],
                       canary_requests: int = 100_000) -> list[float]:
    """A/A SRM checked after *every* request, exactly: the share of runs whose e-value ever reaches each level.

    Simulated by canary arrival times (stable requests between canary requests are geometric). The
    e-value can only rise above the threshold on the canary-heavy side at a canary request and, by
    convexity, on the stable-heavy side just before one, so checking those two points is exact.
    """
    bounds = [srm_boundaries(canary_requests, RHO, t) for t in log_thrs]
    fired = np.zeros(len(log_thrs))
    k = np.arange(1, canary_requests + 1)
    for s in range(0, reps, 50):
        n = min(50, reps - s)
        stable_before = np.cumsum(rng.geometric(RHO, (n, canary_requests)) - 1, axis=1)
        for i, (lo, hi) in enumerate(bounds):
            hit = (stable_before <= lo[k][None, :]) | (stable_before >= hi[k - 1][None, :])
            fired[i] += hit.any(axis=1).sum()
    return list(fired / reps)


def oracle_llr(c: Counts, p1: float, p0: float) -> np.ndarray:
    """Power-one SPRT log likelihood ratio on the canary stream, both rates known (Wald 1945)."""
    return c.x_c * math.log(p1 / p0) + (c.n_c - c.x_c) * math.log((1 - p1) / (1 - p0))


def oracle_continuous(rng: np.random.Generator, reps: int, p1: float, p0: float, horizon: int) -> np.ndarray:
    """Requests to cross log(1/alpha), checked after every canary request."""
    a, b = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    out = np.full(reps, np.nan)
    for s in range(0, reps, 200):
        x = rng.random((min(200, reps - s), horizon)) < p1
        llr = np.cumsum(np.where(x, a, b), axis=1)
        hit = llr >= LOG_THR
        out[s:s + len(x)] = np.where(hit.any(1), np.argmax(hit, 1) + 1, np.nan)
    return out


def z_stat(c: Counts) -> np.ndarray:
    """Pooled two-proportion z statistic (canary minus stable), per look."""
    p_c = c.x_c / c.n_c
    p_s = c.x_s / c.n_s
    p = (c.x_c + c.x_s) / (c.n_c + c.n_s)
    se = np.sqrt(p * (1 - p) * (1 / c.n_c + 1 / c.n_s))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, (p_c - p_s) / se, 0.0)


def kayenta(c: Counts, every: int = 10) -> np.ndarray:
    """Kayenta-style judge: one-sided Mann-Whitney on per-interval error rates, re-run every ``every`` looks."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_c = np.nan_to_num(np.diff(c.x_c, axis=1, prepend=0) / np.diff(c.n_c, axis=1, prepend=0))
        rate_s = np.nan_to_num(np.diff(c.x_s, axis=1, prepend=0) / np.diff(c.n_s, axis=1, prepend=0))
    hit = np.zeros(c.x_c.shape, dtype=bool)
    for j in range(every - 1, c.x_c.shape[1], every):
        k = min(j + 1, 100)  # the judge looks at the latest 100 intervals
        res = sps.mannwhitneyu(rate_c[:, j + 1 - k:j + 1], rate_s[:, j + 1 - k:j + 1], alternative="greater",
                               axis=1, method="asymptotic")
        hit[:, j] = res.pvalue < ALPHA
    return hit


def threshold_check(c: Counts, baseline: float, factor: float = 2.0, failure_limit: int = 3,
                    every: int = 10) -> np.ndarray:
    """Argo/Flagger-style: every ``every`` looks, the canary error rate of that interval vs a fixed threshold
    (``factor`` x stable's usual rate); roll back after more than ``failure_limit`` failed measurements
    (Argo ``failureLimit`` / Flagger ``threshold``)."""
    idx = np.arange(every - 1, c.x_c.shape[1], every)
    x = np.diff(c.x_c[:, idx], axis=1, prepend=0)
    n = np.diff(c.n_c[:, idx], axis=1, prepend=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        failed = x / n > factor * baseline
    hit = np.zeros(c.x_c.shape, dtype=bool)
    hit[:, idx] = np.cumsum(failed, axis=1) > failure_limit
    return hit


# -- reporting -----------------------------------------------------------------------------------------


def rate(x: np.ndarray) -> float:
    return float(np.mean(~np.isnan(x)))


def mean_det(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.any(~np.isnan(x)) else math.nan


#: Progress over the benchmark's tables (a bar on a terminal, plain lines on stderr otherwise).
PROGRESS: Progress | None = None
#: How many tables :func:`run` prints.
TABLES = 8


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    if PROGRESS is not None:
        PROGRESS.advance(title.split(":")[0])
    print(f"\n## {title}")
    cells = [header] + [tuple(f"{v:,.3f}" if isinstance(v, float) and abs(v) < 10 else
                              (f"{v:,.0f}" if isinstance(v, float) else str(v)) for v in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def run(reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    se = math.sqrt(ALPHA * (1 - ALPHA) / reps)
    print(f"# canary-rollouts sequential-test benchmark: {reps} replications, alpha {ALPHA}, canary share {RHO:.0%},"
          f" looks every {STEP} canary requests to {STEP * LOOKS:,}")
    print(f"A/A limit alpha + 2 SE = {ALPHA + 2 * se:.3f}")

    # ---- B1 / B6: A/A false stops (rollback by the metric or SRM halt) --------------------------------
    print(f"error budget: {BUDGET.describe()}")
    rows = []
    aa_cases = [
        ("errors 1%", dict(p_c=0.01, p_s=0.01, random_routing=True)),
        ("errors 0.1%", dict(p_c=0.001, p_s=0.001, random_routing=True)),
        ("errors 1%, exact split (SRM cannot fire)", dict(p_c=0.01, p_s=0.01)),
        ("errors 1%, ramp 5/25/50%", dict(p_c=0.01, p_s=0.01, shares=(0.05, 0.25, 0.5), random_routing=True)),
        ("errors 0.1%, ramp 5/25/50%", dict(p_c=0.001, p_s=0.001, shares=(0.05, 0.25, 0.5), random_routing=True)),
        ("errors 1%, traffic bursts (x1-x20 volume)", dict(
            p_c=0.01, p_s=0.01, volume=lambda g, shape: (STEP / RHO) * np.exp(g.normal(0, 1.0, shape)))),
        ("errors 1%, error bursts x10 on both", dict(p_c=0.01, p_s=0.01, rate_burst=10.0, random_routing=True)),
        ("latency: p99 exceedances (1%)", dict(p_c=0.01, p_s=0.01, random_routing=True)),
    ]
    limit = ALPHA + 2 * se
    for name, kw in aa_cases:
        c = simulate(rng, reps, **kw)
        le, srm_le = ours_log_e(c, 2.0), srm_log_e(c)
        rollback = (le >= LOG_THR).any(1)
        halt = (srm_le >= LOG_SRM).any(1)
        stop = float((rollback | halt).mean())
        before = float(((le >= LOG_ALPHA) | (srm_le >= LOG_ALPHA)).any(1).mean())
        peek = (z_stat(c) >= sps.norm.ppf(1 - ALPHA)).any(1).mean()
        kay = kayenta(c).any(1).mean()
        thr = threshold_check(c, kw["p_s"]).any(1).mean()
        rows.append((name, float(rollback.mean()), float(halt.mean()), stop, "pass" if stop <= limit else "FAIL",
                     before, float(peek), float(kay), float(thr)))
    # Per-event looks: the label e-value is checked after every event and the SRM e-value after every request
    # (both = continuous monitoring). Simulated separately, so false stops are bounded by the sum (union bound).
    srm_every, srm_every_before = srm_aa_per_request(rng, reps, (LOG_SRM, LOG_ALPHA))
    for p in (0.01, 0.001):
        ours, ours_before = aa_per_event(rng, reps, p, (LOG_THR, LOG_ALPHA))
        bound = ours + srm_every
        rows.append((f"errors {p:.1%}, label test at every event, SRM at every request", float(ours),
                     float(srm_every), f"<= {bound:.3f}", "pass" if bound <= limit else "FAIL",
                     f"<= {ours_before + srm_every_before:.3f}", "", "", ""))
    table("B1/B6: A/A false stops by 100k canary requests: rolled back by the metric or halted by SRM (target "
          f"false stops <= alpha + 2 SE = {limit:.3f}; B6: peeking >= 0.40)",
          ("scenario", "false rollbacks", "SRM halts", "false stops", "B1", "false stops, SRM at alpha (before)",
           "naive peeking", "Kayenta MW", "Argo/Flagger"), rows)

    # ---- SRM power: a router that sends another share than the configured 5% ------------------------
    rows = []
    rps = 200.0
    for routed in (0.07, 0.06, 0.055):
        c = simulate(rng, reps, 0.01, 0.01, routed=(routed,), looks=2000, step_total=100.0)
        hit = srm_log_e(c) >= LOG_SRM
        total_at = first_hit(hit, c.n_c + c.n_s)
        canary_at = first_hit(hit, c.n_c)
        detected = rate(total_at)
        med_total = float(np.nanmedian(total_at)) if detected > 0 else math.nan
        target = ("pass" if detected >= 0.95 else "FAIL") if routed == 0.07 else ""
        rows.append((f"router sends {routed:.1%} (configured 5%)", detected, med_total,
                     float(np.nanmedian(canary_at)) if detected > 0 else math.nan,
                     f"{med_total / rps:.0f} s" if detected > 0 else "never", target))
    table(f"SRM power at srm_alpha {BUDGET.srm_alpha:g}: HALT on a mis-routed split, looks every 100 requests to "
          "200k requests (target: 7% vs 5% caught in >= 95% of runs)",
          ("scenario", "detected by 200k requests", "median requests to HALT", "median canary requests",
           f"median time at {rps:.0f} req/s", "target"), rows)

    # ---- B7: normal approximations ----------------------------------------------------------------
    rows = []
    c = simulate(rng, reps, 0.001, 0.001)
    for name, burn in (("mSPRT on 0.1% errors, no burn-in", 0), ("mSPRT on 0.1% errors, burn-in 10 events per version",
                                                                 10)):
        rows.append((name, float(msprt_rate_fires(c, burn).mean())))
    ml = aa_mean_log(rng, reps)
    rows.append((f"mSPRT on mean log-latency (shipped), burn-in {msprt.BURN_IN_OBSERVATIONS} obs", float(ml)))
    table("B7: A/A false rollback of normal-approximation tests (target <= alpha + 2 SE)",
          ("test", "A/A false rollback", "B7"), [(*r, "pass" if r[1] <= ALPHA + 2 * se else "FAIL") for r in rows])

    # ---- B2: error-rate regression at the MDE ------------------------------------------------------
    rows = []
    for name, p_s, p_c in (("S1 errors 1% -> 2%", 0.01, 0.02), ("S2 errors 0.1% -> 0.3%", 0.001, 0.003)):
        design = p_c / p_s
        c = simulate(rng, reps, p_c, p_s)
        ours = first_hit(ours_log_e(c, design) >= LOG_THR, c.n_c)
        orc_look = first_hit(oracle_llr(c, p_c, p_s) >= LOG_THR, c.n_c)
        orc = oracle_continuous(rng, reps, p_c, p_s, horizon=int(40 / (p_c * math.log(design)) * 10))
        fixed = fixed_horizon_n(p_c, p_s, RHO, ALPHA)
        peek = first_hit(z_stat(c) >= sps.norm.ppf(1 - ALPHA), c.n_c)
        kay = first_hit(kayenta(c), c.n_c)
        thr = first_hit(threshold_check(c, p_s), c.n_c)
        m = mean_det(ours)
        rows.append((name, m, rate(ours), mean_det(orc), m / mean_det(orc), mean_det(orc_look), m / mean_det(orc_look),
                     fixed, m / fixed, mean_det(peek), mean_det(kay), mean_det(thr)))
    table("B2: mean canary requests to detect the MDE (targets: <= 1.5x oracle (aim 1.35x), <= 1.0x fixed n, "
          "detected by 100k >= 0.999)",
          ("scenario", "ours", "detected", "oracle", "ours/oracle", "oracle (same looks)", "ours/oracle (same looks)",
           "fixed n (power .9)", "ours/fixed", "peeking", "Kayenta", "Argo/Flagger"), rows)

    # ---- B3: tail-only latency regression ----------------------------------------------------------
    p_exc, mean_shift, var_c = s3b_parameters()
    c = simulate(rng, reps, p_exc, 0.01)
    ours = first_hit(ours_log_e(c, p_exc / 0.01) >= LOG_THR, c.n_c)
    ours_wide = first_hit(ours_log_e(c, 1.4) >= LOG_THR, c.n_c)
    orc = oracle_continuous(rng, reps, p_exc, 0.01, horizon=60_000)
    fixed = fixed_horizon_n(p_exc, 0.01, RHO, ALPHA)
    mean_only = s3b_mean_log(rng, reps, mean_shift, var_c)
    rows = [("exceedance label test, prior at the MDE", mean_det(ours), rate(ours), mean_det(orc),
             mean_det(ours) / mean_det(orc), fixed),
            ("exceedance label test, spec default mde (0.4)", mean_det(ours_wide), rate(ours_wide), mean_det(orc),
             mean_det(ours_wide) / mean_det(orc), fixed),
            ("mean log-latency mSPRT (mean-only)", mean_det(mean_only), rate(mean_only), mean_det(orc),
             mean_det(mean_only) / mean_det(orc), math.nan)]
    table(f"B3: p99 +20%, median unchanged (stable exceedance 1% -> canary {p_exc:.2%}); targets: detected >= 0.99,"
          " <= 1.75x exceedance oracle, mean-only test misses",
          ("test", "mean requests", "detected by 100k", "exceedance oracle", "ratio", "fixed n"), rows)

    # ---- B4: promotion while regressing by the tolerance ------------------------------------------
    rows = []
    for name, p_s in (("errors 1%", 0.01), ("errors 0.1%", 0.001)):
        tol = 1.25
        c = simulate(rng, reps, p_s * tol, p_s, random_routing=True)
        ni = ours_log_e(c, tol, theta0=tol, direction=-1) >= LOG_PROMOTE
        healthy = simulate(rng, reps, p_s, p_s)
        ni_h = first_hit(ours_log_e(healthy, tol, theta0=tol, direction=-1) >= LOG_PROMOTE, healthy.n_c)
        rows.append((f"{name}, canary at exactly +25% (tolerance 0.25)", float(ni.any(1).mean()),
                     "pass" if ni.any(1).mean() <= ALPHA + 2 * se else "FAIL", mean_det(ni_h), rate(ni_h)))
    table("B4: P(promote while regressing by >= tolerance) (target <= alpha); and cost of promoting a healthy canary",
          ("scenario", "P(promote)", "B4", "healthy: mean requests to promote", "healthy: promoted by 100k"), rows)

    # ---- B5: ten metrics ---------------------------------------------------------------------------
    # References for the ratio: the label SPRT at the true effect (a point prior at ratio 2: the best any
    # mixture over the ratio can do on these labels) and Wald's oracle knowing both rates, both at the same
    # looks and thresholds. Their ratios show how much of the cost of log(m) extra nats is unavoidable.
    c = simulate(rng, reps, 0.02, 0.01)
    le = ours_log_e(c, 2.0)
    point = label.GridPrior(log_effects=np.array([math.log(2.0)]), log_weights=np.array([0.0]))
    le_point = ours_log_e(c, 2.0, prior=point)
    orc = oracle_llr(c, 0.02, 0.01)
    rows = []
    base, base_point, base_orc = (mean_det(first_hit(x >= LOG_THR, c.n_c)) for x in (le, le_point, orc))
    for m in (1, 2, 5, 10):
        d, d_point, d_orc = (mean_det(first_hit(x >= LOG_THR + math.log(m), c.n_c)) for x in (le, le_point, orc))
        rows.append((f"{m} metric(s), S1 metric at (alpha - srm_alpha)/{m}", d, d / base, d_point, d_point / base_point, d_orc,
                     d_orc / base_orc, d / d_orc))
    table("B5: cost of testing among m metrics (weighted Bonferroni; target <= 1.6x at m = 10)",
          ("setting", "mean requests", "vs single metric", "label SPRT at true ratio", "its ratio",
           "oracle (same looks)", "oracle ratio", "ours/oracle"), rows)

    # ---- prior robustness --------------------------------------------------------------------------
    rows = []
    for true_ratio in (1.5, 2.0, 3.0, 5.0):
        c = simulate(rng, reps, 0.01 * true_ratio, 0.01)
        ours = first_hit(ours_log_e(c, 2.0) >= LOG_THR, c.n_c)
        orc = first_hit(oracle_llr(c, 0.01 * true_ratio, 0.01) >= LOG_THR, c.n_c)
        rows.append((f"true ratio {true_ratio:g} (design 2)", mean_det(ours), rate(ours), mean_det(orc),
                     mean_det(ours) / mean_det(orc)))
    table("Robustness: effect away from the design MDE (1% baseline, prior designed for 2x)",
          ("scenario", "ours", "detected", "oracle (same looks)", "ratio"), rows)
    print(f"\n(total {time.monotonic() - started:.0f}s)")


def aa_per_event(rng: np.random.Generator, reps: int, p: float, log_thrs: tuple[float, ...]) -> list[float]:
    """A/A with the e-value checked after every event (labels are Bernoulli(rho)): the share of runs that
    reach each threshold."""
    prior = label.GridPrior.around(math.log(2.0))
    events = int(100_000 / RHO * p * 1.1)
    m = np.arange(1, events + 1, dtype=float)
    boundaries = []
    for log_thr in log_thrs:
        # Boundary: smallest canary count at which the e-value crosses, for every event count m.
        lo, hi = np.zeros_like(m), m + 1
        for _ in range(int(math.log2(events)) + 2):
            mid = np.floor((lo + hi) / 2)
            le = logsumexp(label.grid_log_lr(mid, m - mid, np.full_like(m, RHO), 1.0, prior, 1) + prior.log_weights,
                           axis=1)
            cross = le >= log_thr
            hi = np.where(cross, mid, hi)
            lo = np.where(cross, lo, mid)
        boundaries.append(hi)
    fired = np.zeros(len(log_thrs))
    for s in range(0, reps, 100):
        k = min(100, reps - s)
        xc = np.cumsum(rng.random((k, events)) < RHO, axis=1)
        for i, boundary in enumerate(boundaries):
            fired[i] += int((xc >= boundary[None, :]).any(1).sum())
    return list(fired / reps)


def msprt_rate_fires(c: Counts, burn_events: int) -> np.ndarray:
    """Two-sample normal-mixture mSPRT on error rates (Johari et al.), with an optional event burn-in."""
    p_c, p_s = c.x_c / c.n_c, c.x_s / c.n_s
    p = (c.x_c + c.x_s) / (c.n_c + c.n_s)
    var = p * (1 - p) * (1 / c.n_c + 1 / c.n_s)
    tau = 0.001  # MDE-scale prior on the rate difference
    with np.errstate(divide="ignore", invalid="ignore"):
        le = np.where(var > 0, msprt.log_one_sided_mixture(p_c - p_s, np.where(var > 0, var, 1.0), tau), 0.0)
    ok = (c.x_c >= burn_events) & (c.x_s >= burn_events)
    return ((le >= LOG_THR) & ok).any(1)


def aa_mean_log(rng: np.random.Generator, reps: int, sd: float = 1.0) -> float:
    """A/A for the shipped mean-log-latency mSPRT (log-normal latencies: exact normal sums)."""
    n_c, n_s = STEP, int(STEP * (1 - RHO) / RHO)
    fired = np.zeros(reps, dtype=bool)
    tot = {v: np.zeros((reps, 3)) for v in ("c", "s")}
    tau = math.log(1.4)
    for _ in range(LOOKS):
        for v, n in (("c", n_c), ("s", n_s)):
            mean = rng.normal(0.0, sd / math.sqrt(n), reps)
            ss = sd * sd * rng.chisquare(n - 1, reps)
            tot[v] += np.stack([np.full(reps, n), n * mean, ss + n * mean * mean], axis=1)
        nc, sc, qc = tot["c"].T
        ns, s_s, qs = tot["s"].T
        var_c = (qc - sc * sc / nc) / (nc - 1)
        var_s = (qs - s_s * s_s / ns) / (ns - 1)
        pooled = ((nc - 1) * var_c + (ns - 1) * var_s) / (nc + ns - 2)
        v = pooled * (1 / nc + 1 / ns)
        if nc[0] >= msprt.BURN_IN_OBSERVATIONS:
            fired |= msprt.log_one_sided_mixture(sc / nc - s_s / ns, v, tau) >= LOG_THR
    return float(fired.mean())


def s3b_parameters(sd: float = 1.0, u0: float = 0.97, factor: float = 1.2) -> tuple[float, float, float]:
    """Canary quantile function Q_s(u) * 1.2 above u0 (p99 +20%, median unchanged), log-normal stable."""
    z99 = sps.norm.ppf(0.99)
    u_cross = sps.norm.cdf(z99 - math.log(factor) / sd)
    p_exc = 1.0 - max(u0, u_cross)
    mean_shift = (1 - u0) * math.log(factor)
    # Variance of the canary's log-latency: Z sd + log(factor) 1{U > u0}.
    ez_tail = sps.norm.pdf(sps.norm.ppf(u0))  # E[Z 1{Z > z0}]
    var_c = sd * sd + (1 - u0) * u0 * math.log(factor) ** 2 + 2 * sd * math.log(factor) * ez_tail * u0
    return p_exc, mean_shift, var_c


def s3b_mean_log(rng: np.random.Generator, reps: int, shift: float, var_c: float, sd: float = 1.0) -> np.ndarray:
    """Mean-log mSPRT on S3b (per-look sums by the central limit theorem), mde 0.2 on the geometric mean."""
    n_c, n_s = STEP, int(STEP * (1 - RHO) / RHO)
    tau = math.log(1.2)
    sc = np.zeros(reps)
    s_s = np.zeros(reps)
    out = np.full(reps, np.nan)
    for j in range(1, LOOKS + 1):
        sc += rng.normal(n_c * shift, math.sqrt(n_c * var_c), reps)
        s_s += rng.normal(0.0, math.sqrt(n_s) * sd, reps)
        nc, ns = j * n_c, j * n_s
        v = sd * sd * (1 / nc + 1 / ns)
        hit = (msprt.log_one_sided_mixture(sc / nc - s_s / ns, v, tau) >= LOG_THR) & np.isnan(out)
        out[hit] = nc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    global PROGRESS
    with Progress(TABLES, "stats benchmark tables") as PROGRESS:
        run(args.reps, args.seed)


if __name__ == "__main__":
    main()
