"""Label e-process: closed forms, an independent implementation, properties and A/A validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from canary.stats import label


def _independent_log_e(periods, theta0, u_grid, w_grid, direction):
    """Plain-Python mixture of binomial label likelihood ratios (no shared code with the module)."""
    total = 0.0
    terms = []
    for u, w in zip(u_grid, w_grid, strict=True):
        theta = theta0 * math.exp(direction * u)
        s = 0.0
        for x_c, x_s, rho in periods:
            p1 = rho * theta / (rho * theta + 1 - rho)
            p0 = rho * theta0 / (rho * theta0 + 1 - rho)
            n = x_c + x_s
            s += sps.binom.logpmf(x_c, n, p1) - sps.binom.logpmf(x_c, n, p0)
        terms.append(math.log(w) + s)
    m = max(terms)
    total = m + math.log(sum(math.exp(t - m) for t in terms))
    return total


def test_period_log_lr_is_the_binomial_label_likelihood_ratio():
    for x_c, x_s, rho, theta in [(3, 50, 0.05, 2.0), (0, 10, 0.25, 1.5), (40, 40, 0.5, 0.7)]:
        p = rho * theta / (rho * theta + 1 - rho)
        ref = sps.binom.logpmf(x_c, x_c + x_s, p) - sps.binom.logpmf(x_c, x_c + x_s, rho)
        assert label.period_log_lr(theta, x_c, x_s, rho) == pytest.approx(ref, rel=1e-10, abs=1e-10)


def test_mixture_matches_independent_implementation():
    prior = label.GridPrior.around(math.log(2.0))
    periods = [(12, 100, 0.05), (30, 90, 0.25), (20, 25, 0.5)]
    for theta0, direction in [(1.0, 1), (1.25, -1), (0.8, 1)]:
        ours = label.log_mixture(periods, theta0, prior, direction)
        ref = _independent_log_e(periods, theta0, prior.log_effects, np.exp(prior.log_weights), direction)
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_prior_is_normalised_and_centred():
    prior = label.GridPrior.around(0.7)
    assert np.exp(prior.log_weights).sum() == pytest.approx(1.0)
    assert prior.log_effects[np.argmax(prior.log_weights)] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        label.GridPrior.around(0.0)


def test_no_underflow_at_millions_of_requests():
    prior = label.GridPrior.around(math.log(3.0))
    # 0.1% baseline over 50M requests at a 5% share; canary at three times the rate.
    log_e = label.log_mixture([(7500, 47500, 0.05)], 1.0, prior, 1)
    assert math.isfinite(log_e) and log_e > 1000
    null = label.log_mixture([(2500, 47500, 0.05)], 1.0, prior, 1)
    assert math.isfinite(null) and null < 0


@settings(max_examples=60, deadline=None)
@given(x_c=st.integers(0, 500), x_s=st.integers(0, 5000), rho=st.floats(0.01, 0.9))
def test_regression_e_value_monotone_in_counts(x_c, x_s, rho):
    prior = label.GridPrior.around(math.log(2.0))
    base = label.log_mixture([(x_c, x_s, rho)], 1.0, prior, 1)
    assert label.log_mixture([(x_c + 1, x_s, rho)], 1.0, prior, 1) >= base - 1e-9
    assert label.log_mixture([(x_c, x_s + 1, rho)], 1.0, prior, 1) <= base + 1e-9
    ni = label.log_mixture([(x_c, x_s, rho)], 1.25, prior, -1)
    assert label.log_mixture([(x_c + 1, x_s, rho)], 1.25, prior, -1) <= ni + 1e-9


@settings(max_examples=40, deadline=None)
@given(x_c=st.integers(1, 200), x_s=st.integers(1, 2000), rho=st.floats(0.02, 0.6))
def test_confidence_bounds_bracket_and_agree_with_tests(x_c, x_s, rho):
    prior_rb = label.GridPrior.around(math.log(2.0))
    prior_ni = label.GridPrior.around(math.log(1.25))
    per = [(x_c, x_s, rho)]
    lo = label.confidence_bound(per, prior_rb, math.log(20), "lower")
    hi = label.confidence_bound(per, prior_ni, math.log(20), "upper")
    assert lo <= hi
    # Rejecting "theta <= 1" is the same event as the lower bound exceeding 1.
    rejects = label.log_mixture(per, 1.0, prior_rb, 1) >= math.log(20)
    assert rejects == (lo > 1.0) or abs(lo - 1.0) < 1e-6


def test_no_events_gives_no_information():
    prior = label.GridPrior.around(math.log(2.0))
    assert label.confidence_bound([], prior, 3.0, "lower") == 0.0
    assert label.confidence_bound([], prior, 3.0, "upper") == math.inf
    assert label.log_mixture([], 1.0, prior, 1) == 0.0


def test_wald_approximation_of_detection_time():
    """Mean requests to detect at the design effect is close to log(1/alpha)/drift (Wald)."""
    rng = np.random.default_rng(7)
    rho, pc, ps, reps = 0.05, 0.02, 0.01, 400
    prior = label.GridPrior.around(math.log(2.0))
    xc = np.zeros(reps)
    xs = np.zeros(reps)
    det = np.full(reps, np.nan)
    for k in range(1, 101):
        xc += rng.binomial(100, pc, reps)
        xs += rng.binomial(1900, ps, reps)
        le = label.log_mixture_batch(label.grid_log_lr(xc, xs, np.full(reps, rho), 1.0, prior, 1), prior)
        det[np.isnan(det) & (le >= math.log(20))] = 100 * k
    drift = label.expected_log_lr_rate(2.0, 1.0, 2.0, rho, ps)
    wald = math.log(20) / drift
    assert np.isnan(det).mean() < 0.01
    # Mixture cost and overshoot make it slower than the point-alternative SPRT, but not much.
    assert wald < np.nanmean(det) < 1.6 * wald


@pytest.mark.parametrize("rate", [0.01, 0.001])
def test_aa_false_rollback_with_per_look_share(rate):
    """A/A: looks every 100 canary requests to 20k, random routing (plug-in share), <= alpha + slack."""
    rng = np.random.default_rng(11 if rate == 0.01 else 12)
    reps, alpha = 1000, 0.05
    prior = label.GridPrior.around(math.log(2.0))
    n_c = np.zeros(reps)
    n_s = np.zeros(reps)
    xc = np.zeros(reps)
    xs = np.zeros(reps)
    fired = np.zeros(reps, dtype=bool)
    for _ in range(200):
        c = rng.binomial(2000, 0.05, reps)
        n_c += c
        n_s += 2000 - c
        xc += rng.binomial(c, rate)
        xs += rng.binomial(2000 - c, rate)
        le = label.log_mixture_batch(label.grid_log_lr(xc, xs, n_c / (n_c + n_s), 1.0, prior, 1), prior)
        fired |= le >= math.log(1 / alpha)
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert fired.mean() <= alpha + 2 * se
