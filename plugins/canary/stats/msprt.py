"""Normal-mixture mSPRT and confidence sequence for a difference of means (mean log-latency).

Johari, Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations
Research 2022, arXiv 1512.04922), Sec. 4: for an asymptotically normal estimate :math:`\\hat\\delta` of
:math:`\\delta = \\mu_c - \\mu_s` with variance :math:`V`, the mixture of :math:`N(\\delta; \\tau^2)` likelihood
ratios against :math:`\\delta = 0` is

.. math:: \\Lambda = \\sqrt{\\frac{V}{V+\\tau^2}} \\exp\\left(\\frac{\\tau^2 \\hat\\delta^2}{2 V (V + \\tau^2)}\\right).

For the one-sided null :math:`\\delta \\le 0` we mix over a half-normal on :math:`\\delta > 0`, which
completes the square to

.. math:: \\Lambda_+ = 2 \\sqrt{\\frac{V}{V+\\tau^2}} \\exp\\left(\\frac{\\tau^2 \\hat\\delta^2}{2V(V+\\tau^2)}\\right)
          \\Phi\\left(\\frac{\\tau\\hat\\delta}{\\sqrt{V(V+\\tau^2)}}\\right),

a supermartingale for every :math:`\\delta \\le 0` under the Gaussian model. Several stages combine as
precision-weighted sums: with :math:`S = \\sum_j \\hat\\delta_j / V_j` and :math:`I = \\sum_j 1/V_j`, use
:math:`\\hat\\delta = S/I`, :math:`V = 1/I` (the Gaussian likelihood of a product of periods).

The normal approximation is what makes this test *invalid for rare events* (STATS.md, B7): a burn-in
of :data:`BURN_IN_OBSERVATIONS` per version gates it, and the variance is a pooled plug-in.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr

#: Observations per version before the test may say anything (the normal approximation needs them).
BURN_IN_OBSERVATIONS = 200


def log_one_sided_mixture(delta_hat: np.ndarray | float, var: np.ndarray | float,
                          tau: float) -> np.ndarray:
    """Return log of the half-normal mixture likelihood ratio :math:`\\Lambda_+` (Johari et al. 2022).

    Parameters
    ----------
    delta_hat : array_like
        Estimated difference (canary minus stable), any real.
    var : array_like
        Its variance, > 0.
    tau : float
        Prior scale (> 0), tuned to the minimum detectable effect.
    """
    d = np.asarray(delta_hat, dtype=float)
    v = np.asarray(var, dtype=float)
    t2 = tau * tau
    z = tau * d / np.sqrt(v * (v + t2))
    return (math.log(2.0) + 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2))
            + log_ndtr(z))


def confidence_radius(var: np.ndarray | float, tau: float, alpha: float) -> np.ndarray:
    """Return the radius of the two-sided normal-mixture confidence sequence at level ``alpha``.

    Robbins' normal mixture (Howard, Ramdas, McAuliffe & Sekhon 2021, eq. (14) with the Gaussian
    mixture boundary): :math:`|\\hat\\delta - \\delta| \\le \\sqrt{V(V+\\tau^2)/\\tau^2\\,(2\\log(1/\\alpha) +
    \\log((V+\\tau^2)/V))}` holds for all times with probability at least ``1 - alpha``.
    """
    v = np.asarray(var, dtype=float)
    t2 = tau * tau
    return np.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + np.log((v + t2) / v)))


def log_mean_stats(n: int, log_sum: float, log_sumsq: float) -> tuple[float, float]:
    """Return (mean, unbiased variance) of log-latency from count, sum and sum of squares."""
    if n < 2:
        raise ValueError(f"need at least 2 observations, got {n}")
    mean = log_sum / n
    var = max((log_sumsq - n * mean * mean) / (n - 1), 0.0)
    return mean, var


def precision_terms(n_c: int, sum_c: float, sumsq_c: float, n_s: int, sum_s: float,
                    sumsq_s: float) -> tuple[float, float]:
    """Return ``(S, I) = (delta_hat / V, 1 / V)`` of one period for precision-weighted pooling.

    Uses the pooled variance of log-latency (both versions share the null distribution), floored so
    that a degenerate period (identical latencies) cannot produce an infinite precision.
    """
    mean_c, var_c = log_mean_stats(n_c, sum_c, sumsq_c)
    mean_s, var_s = log_mean_stats(n_s, sum_s, sumsq_s)
    pooled = ((n_c - 1) * var_c + (n_s - 1) * var_s) / (n_c + n_s - 2)
    pooled = max(pooled, 1e-6)
    v = pooled * (1.0 / n_c + 1.0 / n_s)
    return (mean_c - mean_s) / v, 1.0 / v
