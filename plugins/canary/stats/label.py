"""One-sided label e-processes and confidence sequences for count metrics.

Count metrics (errors, KPI events, latency exceedances of a fixed threshold) are modelled as
Poisson processes per version, as in Lindon & Malek, "Anytime-Valid Inference for Multinomial
Count Data" (NeurIPS 2022) and Lindon, Sanden & Shirikian, "Rapid Regression Detection in Software
Deployments through Sequential Testing" (KDD 2022, arXiv 2205.14762). Conditionally on an event
occurring, its *label* (canary or stable) is Bernoulli with success probability

.. math:: p_\\theta(\\rho) = \\frac{\\rho\\,\\theta}{\\rho\\,\\theta + 1 - \\rho},

where :math:`\\rho` is the canary's share of the exposure and :math:`\\theta = \\lambda_c/\\lambda_s` is
the ratio of per-request event rates. The unknown baseline rate and time-of-day swings cancel. For a
period of constant share with :math:`x_c` canary and :math:`x_s` stable events, the log likelihood
ratio of :math:`\\theta` against :math:`\\theta = 1` is (Lindon & Malek 2022, Sec. 3)

.. math:: \\ell(\\theta) = x_c \\log\\theta - (x_c + x_s)\\,\\log(1 + \\rho(\\theta - 1)).

A rollout has several such periods (stages with different canary weights); the likelihood of the whole
stream is the product over periods, so the log likelihood ratios add. Mixing the product over a
discrete prior on :math:`\\theta` gives a test martingale under :math:`\\theta = 1` (Ville's inequality
gives :math:`P(\\sup_t E_t \\ge 1/\\alpha) \\le \\alpha`), and because the likelihood ratio of
:math:`\\theta > 1` against 1 is monotone in the label probability, it is a supermartingale for every
:math:`\\theta \\le 1`: the test is valid for the composite one-sided null "no regression".

Everything is in log space (``log1p``, ``logsumexp``): no underflow at 0.1% rates or millions of
requests, and an update costs O(grid size x periods).

The exposure share of a period is measured from request counts (the plug-in
:math:`\\hat\\rho = n_c/(n_c+n_s)`) rather than taken from the configured weight, so that a router that
serves 4.7% instead of 5% does not bias the test; the SRM test (:mod:`canary.stats.srm`) reports such a
mismatch separately. Conditionally on the routing, event labels under the null are a hypergeometric
draw, which is dominated in the convex order by the binomial (Hoeffding 1963, Thm. 4), so the
plug-in keeps :math:`E[E_t] \\le 1` at every fixed time; the time-uniform behaviour is checked by
simulation in the tests and in ``bench/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

#: Number of grid points of the mixing distribution.
GRID_SIZE = 25
#: Grid half-width, as a multiplicative factor on the log effect (the grid spans effects whose log is
#: between 1/8 and 8 times the design effect).
GRID_SPAN = math.log(8.0)
#: Standard deviation of the prior on log(log effect / design log effect). Tuned in ``bench/``: narrower
#: is faster at the design effect, wider is more robust to effects far from it (STATS.md: a prior ten
#: times too wide costs 1.9-4.5x).
GRID_SD = 0.35


@dataclass(frozen=True)
class GridPrior:
    """A discrete mixing distribution over log effect sizes ``u > 0`` (``u = log theta`` or ``-log theta``).

    Parameters
    ----------
    log_effects : ndarray
        Grid points (all > 0), ascending.
    log_weights : ndarray
        Log prior masses, summing to one in linear scale.
    """

    log_effects: np.ndarray
    log_weights: np.ndarray

    @classmethod
    def around(cls, design_log_effect: float, *, size: int = GRID_SIZE, span: float = GRID_SPAN,
               sd: float = GRID_SD) -> GridPrior:
        """Build a prior concentrated around ``design_log_effect`` (> 0) on a log-log grid.

        The grid is ``u_k = u* exp(s_k)`` with ``s_k`` equally spaced on ``[-span, span]`` and masses
        proportional to ``exp(-s_k^2 / (2 sd^2))``: a discretised log-normal prior on the log effect
        whose median is the design effect (the minimum detectable effect, as STATS.md recommends).
        """
        if not design_log_effect > 0:
            raise ValueError(f"design log effect must be > 0, got {design_log_effect}")
        s = np.linspace(-span, span, size)
        logw = -0.5 * (s / sd) ** 2
        logw -= logsumexp(logw)
        return cls(log_effects=design_log_effect * np.exp(s), log_weights=logw)


def period_log_lr(theta: np.ndarray | float, x_c: np.ndarray | float, x_s: np.ndarray | float,
                  rho: np.ndarray | float) -> np.ndarray:
    """Return the label log likelihood ratio of ``theta`` against ``theta = 1`` for one period.

    Parameters
    ----------
    theta : array_like
        Rate ratio(s) canary/stable, > 0. Broadcasts against the counts.
    x_c, x_s : array_like
        Canary and stable event counts in the period (>= 0).
    rho : array_like
        Canary share of the exposure in the period, in (0, 1).

    Returns
    -------
    ndarray
        ``x_c log(theta) - (x_c + x_s) log1p(rho (theta - 1))`` (Lindon & Malek 2022, Sec. 3).
    """
    theta = np.asarray(theta, dtype=float)
    x_c = np.asarray(x_c, dtype=float)
    x_s = np.asarray(x_s, dtype=float)
    rho = np.asarray(rho, dtype=float)
    return x_c * np.log(theta) - (x_c + x_s) * np.log1p(rho * (theta - 1.0))


def log_mixture(periods: Sequence[tuple[float, float, float]], theta0: float, prior: GridPrior,
                direction: int) -> float:
    """Return log E for the mixture e-process of ``theta`` against ``theta0`` over several periods.

    Parameters
    ----------
    periods : sequence of (x_c, x_s, rho)
        Event counts and exposure share of each period of constant share.
    theta0 : float
        The null rate ratio (> 0).
    prior : GridPrior
        Mixing distribution over log effects ``u > 0``.
    direction : {+1, -1}
        +1 mixes over alternatives ``theta = theta0 exp(u)`` (tests ``theta <= theta0``: regression);
        -1 over ``theta = theta0 exp(-u)`` (tests ``theta >= theta0``: non-inferiority).

    Returns
    -------
    float
        ``log sum_k w_k exp(sum_periods l(theta_k) - l(theta0))``, a test supermartingale under the
        one-sided null (Ville's inequality applies).
    """
    if not periods:
        return 0.0
    arr = np.asarray(periods, dtype=float).reshape(-1, 3)
    x_c, x_s, rho = arr[:, 0:1], arr[:, 1:2], arr[:, 2:3]
    thetas = theta0 * np.exp(direction * prior.log_effects)[None, :]
    llr = (period_log_lr(thetas, x_c, x_s, rho) - period_log_lr(theta0, x_c, x_s, rho)).sum(axis=0)
    return float(logsumexp(llr + prior.log_weights))


def log_mixture_batch(log_lr_by_grid: np.ndarray, prior: GridPrior) -> np.ndarray:
    """Return ``logsumexp(log_lr + log_w)`` over the last axis (vectorised form for replay and bench)."""
    return logsumexp(log_lr_by_grid + prior.log_weights, axis=-1)


def grid_log_lr(x_c: np.ndarray, x_s: np.ndarray, rho: np.ndarray, theta0: float, prior: GridPrior,
                direction: int) -> np.ndarray:
    """Return per-grid-point log likelihood ratios, shape ``x_c.shape + (grid size,)`` (one period)."""
    x_c = np.asarray(x_c, dtype=float)[..., None]
    x_s = np.asarray(x_s, dtype=float)[..., None]
    rho = np.asarray(rho, dtype=float)[..., None]
    thetas = theta0 * np.exp(direction * prior.log_effects)
    return period_log_lr(thetas, x_c, x_s, rho) - period_log_lr(theta0, x_c, x_s, rho)


def log_mixture_many(periods: Sequence[tuple[float, float, float]], theta0s: np.ndarray, prior: GridPrior,
                     direction: int) -> np.ndarray:
    """Vectorised :func:`log_mixture` over many null values ``theta0s`` (returns one log E per value)."""
    theta0s = np.asarray(theta0s, dtype=float)
    if not periods:
        return np.zeros_like(theta0s)
    arr = np.asarray(periods, dtype=float).reshape(-1, 3)
    x_c, x_s, rho = (arr[:, i][:, None, None] for i in range(3))
    t0 = theta0s[None, :, None]
    thetas = t0 * np.exp(direction * prior.log_effects)[None, None, :]
    llr = (period_log_lr(thetas, x_c, x_s, rho) - period_log_lr(t0, x_c, x_s, rho)).sum(axis=0)
    return logsumexp(llr + prior.log_weights, axis=-1)


def confidence_bound(periods: Sequence[tuple[float, float, float]], prior: GridPrior, level_log: float,
                     side: str, *, lo: float = 1e-3, hi: float = 1e3, points: int = 64, rounds: int = 4) -> float:
    """Return a time-uniform one-sided confidence bound on the rate ratio by inverting the mixture.

    The bound is the boundary of ``{theta0 : log E(theta0) < level_log}`` (Howard, Ramdas, McAuliffe &
    Sekhon 2021, Sec. 3: a family of e-processes indexed by the null value gives a confidence
    sequence). ``side="lower"`` inverts the regression mixture (alternatives above ``theta0``) and
    ``side="upper"`` the non-inferiority mixture (alternatives below). The e-value is monotone in
    ``theta0`` for the label likelihood, so the boundary is found by a vectorised zooming search on
    ``log theta0`` (``rounds`` grids of ``points`` values; relative precision about
    ``(log(hi/lo)/points)^rounds``), conservative at every step (the returned value is on the
    accepted side of the boundary).

    Returns
    -------
    float
        The bound; 0 (lower) or inf (upper) when it lies outside ``[lo, hi]`` on the uninformative
        side (e.g. without events), ``hi`` / ``lo`` when beyond the range on the informative side.
    """
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")
    direction = 1 if side == "lower" else -1
    total = sum(p[0] + p[1] for p in periods)
    if total == 0:
        return 0.0 if side == "lower" else math.inf
    a, b = math.log(lo), math.log(hi)
    for _ in range(rounds):
        grid = np.linspace(a, b, points)
        rej = log_mixture_many(periods, np.exp(grid), prior, direction) >= level_log
        if side == "lower":
            # Small theta0 are rejected; the bound is the largest rejected value.
            if not rej[0]:
                return 0.0 if a == math.log(lo) else math.exp(a)
            if rej[-1]:
                return math.exp(b)
            i = int(np.argmin(rej)) - 1
        else:
            if not rej[-1]:
                return math.inf if b == math.log(hi) else math.exp(b)
            if rej[0]:
                return math.exp(a)
            i = int(np.argmax(rej)) - 1
        a, b = grid[i], grid[i + 1]
    return math.exp(a) if side == "lower" else math.exp(b)


def expected_log_lr_rate(theta_true: float, theta0: float, theta_alt: float, rho: float,
                         baseline_rate: float) -> float:
    """Return the drift of the label log likelihood ratio per canary request (Wald's approximation).

    Per canary request there are ``baseline_rate * theta_true`` canary events and
    ``baseline_rate (1 - rho) / rho`` stable events; the drift is the expected
    ``l(theta_alt) - l(theta0)`` per request. ``log(1/alpha) / drift`` approximates the expected
    number of canary requests to reject (Wald 1945, E[N] = E[log LR at stopping] / drift).
    """
    x_c = baseline_rate * theta_true
    x_s = baseline_rate * (1.0 - rho) / rho
    return float(period_log_lr(theta_alt, x_c, x_s, rho) - period_log_lr(theta0, x_c, x_s, rho))
