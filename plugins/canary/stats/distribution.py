"""Anytime-valid bounds on the total-variation distance between two binned distributions.

Each bin share of each version gets a time-uniform confidence sequence from Robbins' beta-binomial
mixture e-process (Robbins 1970, "Statistical methods related to the law of the iterated logarithm";
the multinomial form is Lindon & Malek, NeurIPS 2022, Sec. 2):

.. math:: E_t(p) = \\frac{B(x + 1/2,\\; n - x + 1/2)}{B(1/2, 1/2)\\; p^x (1 - p)^{n-x}},
          \\qquad C_t = \\{p : E_t(p) < 1/a\\},

a test martingale for the true share ``p`` (Jeffreys mixture), so :math:`C_t` covers ``p`` at all times
with probability :math:`1 - a`. With ``K`` bins and two versions, a Bonferroni split ``a = alpha / (2K)``
makes all ``2K`` sequences hold simultaneously, hence the per-bin differences
:math:`d_j = p^c_j - p^s_j \\in [l_j, u_j]` hold jointly and

.. math:: \\tfrac12 \\sum_j \\max(0, l_j, -u_j) \\le TV(P_c, P_s) \\le \\min\\left(1, \\tfrac12 \\sum_j \\max(|l_j|, |u_j|)\\right)

is a confidence sequence for the total-variation distance. The new model is expected to move its
predictions somewhat, so this is a guardrail with a tolerance: roll back when the lower bound exceeds
it, allow promotion when the upper bound is within it. The bins are fixed in advance (equal-width
score bins), so nothing is chosen from the data being tested. Bins of the two versions add across
stages (the distributions do not depend on the traffic share).
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaln

_JEFFREYS = 0.5


def _log_e(p: np.ndarray, x: np.ndarray, n: np.ndarray) -> np.ndarray:
    log_mix = betaln(x + _JEFFREYS, n - x + _JEFFREYS) - betaln(_JEFFREYS, _JEFFREYS)
    return log_mix - x * np.log(p) - (n - x) * np.log1p(-p)


def proportion_cs(x: np.ndarray, n: np.ndarray, a: float, *, iterations: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Return elementwise (lower, upper) bounds of the beta-binomial confidence sequence at level ``a``.

    Parameters
    ----------
    x, n : array_like
        Successes and trials (``0 <= x <= n``); ``n = 0`` gives ``[0, 1]``.
    a : float
        Error level in (0, 1).

    Notes
    -----
    :math:`\\log E_t(p)` is convex in ``p`` with its minimum at ``x/n``, so each endpoint is found by
    bisection on either side of the estimate (vectorised; about ``iterations`` bits of precision).
    """
    x = np.asarray(x, dtype=float)
    n = np.asarray(n, dtype=float)
    level = np.log(1.0 / a)
    safe_n = np.maximum(n, 1.0)
    p_hat = np.clip(x / safe_n, 0.0, 1.0)
    eps = 1e-12
    # Lower endpoint: between eps and p_hat; E(p) >= 1/a below it.
    lo, hi = np.full_like(p_hat, eps), np.maximum(p_hat, eps)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        out = _log_e(mid, x, n) >= level
        lo, hi = np.where(out, mid, lo), np.where(out, hi, mid)
    lower = np.where(_log_e(np.full_like(p_hat, eps), x, n) >= level, hi, 0.0)
    lo, hi = np.minimum(p_hat, 1 - eps), np.full_like(p_hat, 1 - eps)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        out = _log_e(mid, x, n) >= level
        lo, hi = np.where(out, lo, mid), np.where(out, mid, hi)
    upper = np.where(_log_e(np.full_like(p_hat, 1 - eps), x, n) >= level, lo, 1.0)
    lower = np.where(n > 0, lower, 0.0)
    upper = np.where(n > 0, upper, 1.0)
    return lower, upper


def tv_bounds(bins_c: np.ndarray, bins_s: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (lower, upper) confidence-sequence bounds on TV(canary, stable) at level ``alpha``.

    Parameters
    ----------
    bins_c, bins_s : array_like, shape (..., K)
        Cumulative prediction counts per bin of each version.
    alpha : float
        Joint error level of the two bounds' underlying ``2K`` sequences.
    """
    bins_c = np.asarray(bins_c, dtype=float)
    bins_s = np.asarray(bins_s, dtype=float)
    k = bins_c.shape[-1]
    a = alpha / (2 * k)
    n_c = bins_c.sum(axis=-1, keepdims=True)
    n_s = bins_s.sum(axis=-1, keepdims=True)
    lc, uc = proportion_cs(bins_c, np.broadcast_to(n_c, bins_c.shape), a)
    ls, us = proportion_cs(bins_s, np.broadcast_to(n_s, bins_s.shape), a)
    d_lo, d_hi = lc - us, uc - ls
    lower = 0.5 * np.maximum(0.0, np.maximum(d_lo, -d_hi)).sum(axis=-1)
    upper = np.minimum(1.0, 0.5 * np.maximum(np.abs(d_lo), np.abs(d_hi)).sum(axis=-1))
    return lower, upper
