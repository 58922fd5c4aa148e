"""mSPRT, SRM and total-variation bounds: closed forms against numerical references, and validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special
from scipy import stats as sps

from canary.stats import distribution, msprt, srm


@pytest.mark.parametrize(("delta", "var", "tau"), [(0.1, 0.01, 0.2), (-0.05, 0.004, 0.1), (0.0, 1.0, 0.5)])
def test_one_sided_mixture_matches_numerical_integral(delta, var, tau):
    """Half-normal mixture of Gaussian likelihood ratios (Johari et al. 2022), by quadrature."""

    def integrand(d):
        return math.exp(d * delta / var - d * d / (2 * var)) * 2 * sps.norm.pdf(d, scale=tau)

    ref, _ = integrate.quad(integrand, 0, 20 * tau)
    assert float(msprt.log_one_sided_mixture(delta, var, tau)) == pytest.approx(math.log(ref), rel=1e-6, abs=1e-8)


def test_confidence_radius_is_the_robbins_normal_mixture_boundary():
    """At the radius, the two-sided normal mixture equals 1/alpha (Howard et al. 2021)."""
    var, tau, alpha = 0.003, 0.2, 0.05
    r = float(msprt.confidence_radius(var, tau, alpha))
    two_sided = math.sqrt(var / (var + tau * tau)) * math.exp(tau * tau * r * r / (2 * var * (var + tau * tau)))
    assert two_sided == pytest.approx(1 / alpha, rel=1e-9)


def test_msprt_aa_validity_with_gaussian_data():
    rng = np.random.default_rng(2)
    reps, n_per_look, looks, tau = 2000, 50, 200, 0.2
    s = np.zeros(reps)
    fired = np.zeros(reps, dtype=bool)
    for k in range(1, looks + 1):
        s += rng.normal(0, math.sqrt(n_per_look), reps)  # unit variance, difference of means ~ sum / n
        n = k * n_per_look
        fired |= msprt.log_one_sided_mixture(s / n, 1.0 / n, tau) >= math.log(20)
    assert fired.mean() <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)


def test_srm_e_value_closed_form_and_behaviour():
    n_c, n_s, w, k = 60, 940, 0.05, 100.0
    ref = (special.betaln(k * w + n_c, k * (1 - w) + n_s) - special.betaln(k * w, k * (1 - w))
           - n_c * math.log(w) - n_s * math.log(1 - w))
    assert float(srm.log_e_value(n_c, n_s, w)) == pytest.approx(ref)
    assert float(srm.log_e_value(5_000, 95_000, 0.05)) < 0  # the configured split: no evidence
    assert float(srm.log_e_value(6_000, 94_000, 0.05)) > math.log(1e6)


def test_srm_aa_validity():
    rng = np.random.default_rng(4)
    reps = 2000
    n_c = np.zeros(reps)
    n = 0
    fired = np.zeros(reps, dtype=bool)
    for _ in range(300):
        n_c += rng.binomial(200, 0.05, reps)
        n += 200
        fired |= srm.log_e_value(n_c, n - n_c, 0.05) >= math.log(20)
    assert fired.mean() <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)


def test_proportion_cs_inverts_the_beta_binomial_e_value():
    x, n, a = np.array([0, 3, 50, 100]), np.array([100, 100, 100, 100]), 0.01
    lo, hi = distribution.proportion_cs(x, n, a)
    assert np.all(lo <= x / n) and np.all(x / n <= hi)

    def log_e(p, xi, ni):
        return (special.betaln(xi + 0.5, ni - xi + 0.5) - special.betaln(0.5, 0.5)
                - xi * math.log(p) - (ni - xi) * math.log1p(-p))

    for i in range(len(x)):
        if lo[i] > 0:
            assert log_e(lo[i], x[i], n[i]) == pytest.approx(math.log(1 / a), abs=1e-6)
        if hi[i] < 1:
            assert log_e(hi[i], x[i], n[i]) == pytest.approx(math.log(1 / a), abs=1e-6)


def test_tv_bounds_cover_the_truth_and_tighten():
    rng = np.random.default_rng(8)
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    q = np.array([0.1, 0.1, 0.2, 0.25, 0.2, 0.1, 0.05])
    tv = 0.5 * np.abs(p - q).sum()
    widths = []
    for n in (1_000, 10_000, 100_000):
        lo, hi = distribution.tv_bounds(rng.multinomial(n, p), rng.multinomial(2 * n, q), 0.05)
        assert float(lo) <= tv <= float(hi)
        widths.append(float(hi - lo))
    assert widths[0] > widths[1] > widths[2]


def test_tv_guardrail_aa_validity():
    """Identical distributions: the lower bound never exceeds a 0.05 tolerance along the way."""
    rng = np.random.default_rng(9)
    reps, p = 300, np.full(10, 0.1)
    bc = np.zeros((reps, 10))
    bs = np.zeros((reps, 10))
    fired = np.zeros(reps, dtype=bool)
    for _ in range(40):
        bc += rng.multinomial(100, p, reps)
        bs += rng.multinomial(1900, p, reps)
        lo, _ = distribution.tv_bounds(bc, bs, 0.05)
        fired |= lo > 0.0
    assert fired.mean() <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)
