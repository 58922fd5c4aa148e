"""The shadow test's paired statistics: decisions as tables, error control and coverage by simulation.

Simulations use modest replication counts (the full figures are in ``bench/shadow_bench.py``); their
pass marks are the targets plus two standard errors, so a valid method fails them with small
probability and an invalid one (e.g. a fixed-horizon test checked at every look) fails them for sure.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from canary.stats.paired import (
    PairedCounts,
    PairedDecision,
    assess_disagreement,
    assess_discordant,
    assess_distribution,
    assess_mean_shift,
    assess_shift,
    combine,
    discordant_log_e,
    gamma_exponential_bound,
    gamma_exponential_log_mixture,
    gamma_exponential_rho,
    guardrail_decision,
    increase_bounds,
    mean_difference_cs,
)

LOOK_EVERY = 25  # pairs between looks
MAX_PAIRS = 3000


def simulate_pairs(rng: np.random.Generator, reps: int, p_both: float, p_cand_only: float, p_stable_only: float,
                   n: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Return cumulative (candidate only, stable only) counts of ``reps`` streams of ``n`` pairs."""
    u = rng.random((reps, n))
    cand_only = (u >= p_both) & (u < p_both + p_cand_only)
    stable_only = (u >= p_both + p_cand_only) & (u < p_both + p_cand_only + p_stable_only)
    return np.cumsum(cand_only, axis=1), np.cumsum(stable_only, axis=1)


def first_fail(b: np.ndarray, c: np.ndarray, alpha: float, design_ratio: float = 2.0) -> int | None:
    """Return the pair count of the first look whose e-value reaches 1/alpha, else None."""
    for n in range(LOOK_EVERY, b.size + 1, LOOK_EVERY):
        if discordant_log_e(int(b[n - 1]), int(c[n - 1]), design_ratio) >= math.log(1 / alpha):
            return n
    return None


def test_the_sequential_mcnemar_keeps_a_a_false_failures_within_alpha_at_every_look():
    rng, alpha, reps = np.random.default_rng(7), 0.05, 400
    # Both versions fail together on hard requests (2%) and alone on 1% each: the shared failures cancel.
    b, c = simulate_pairs(rng, reps, p_both=0.02, p_cand_only=0.01, p_stable_only=0.01)
    fails = sum(first_fail(b[r], c[r], alpha) is not None for r in range(reps))
    assert fails / reps <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / reps), fails


def test_peeking_at_a_fixed_horizon_mcnemar_is_caught_by_the_same_harness():
    """The check above can fail: a z-test on the discordant pairs at every look stops far too often."""
    rng, alpha, reps = np.random.default_rng(7), 0.05, 400
    b, c = simulate_pairs(rng, reps, p_both=0.02, p_cand_only=0.01, p_stable_only=0.01)
    z = 1.6449
    fails = 0
    for r in range(reps):
        for n in range(LOOK_EVERY, MAX_PAIRS + 1, LOOK_EVERY):
            d = b[r, n - 1] + c[r, n - 1]
            if d and (b[r, n - 1] - c[r, n - 1]) / math.sqrt(d) > z:
                fails += 1
                break
    assert fails / reps > 2 * alpha, fails


def test_a_candidate_failing_alone_three_times_as_often_is_caught_within_a_few_hundred_pairs():
    rng, reps = np.random.default_rng(11), 200
    b, c = simulate_pairs(rng, reps, p_both=0.02, p_cand_only=0.03, p_stable_only=0.01)
    at = [first_fail(b[r], c[r], 0.05 / 3) for r in range(reps)]
    assert sum(a is not None for a in at) / reps >= 0.99
    assert np.median([a for a in at if a is not None]) <= 1000


def test_the_increase_bounds_cover_the_true_increase_at_every_look():
    rng, alpha, reps = np.random.default_rng(3), 0.05, 300
    p_co, p_so = 0.03, 0.01
    b, c = simulate_pairs(rng, reps, p_both=0.02, p_cand_only=p_co, p_stable_only=p_so, n=2000)
    misses = 0
    for r in range(reps):
        for n in range(LOOK_EVERY, 2001, LOOK_EVERY * 4):
            lo, hi = increase_bounds(PairedCounts(pairs=n, candidate_only=int(b[r, n - 1]),
                                                  stable_only=int(c[r, n - 1])), alpha)
            if not lo <= p_co - p_so <= hi:
                misses += 1
                break
    assert misses / reps <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / reps), misses


COMMON = {"fail_alpha": 0.05 / 3, "pass_alpha": 0.05, "design_ratio": 2.0, "min_pairs": 200, "what": "failed"}


@pytest.mark.parametrize(("pairs", "cand_only", "stable_only", "max_increase", "decision"), [
    (384, 27, 3, 0.15, PairedDecision.FAIL),      # the demo's broken candidate: evidence, whatever the margin
    (2000, 8, 8, 0.02, PairedDecision.PASS),       # as often as stable alone: within 2 points
    (2000, 8, 8, 0.01, PairedDecision.CONTINUE),   # ... but not yet shown within 1 point
    (150, 1, 1, 0.3, PairedDecision.CONTINUE),     # fewer pairs than min_pairs: never passes
    (400, 0, 0, 0.05, PairedDecision.PASS),        # no discordant pair at all
    (0, 0, 0, 0.05, PairedDecision.CONTINUE),      # nothing yet
])
def test_discordant_decisions(pairs, cand_only, stable_only, max_increase, decision):
    got = assess_discordant("errors", PairedCounts(pairs=pairs, candidate_only=cand_only, stable_only=stable_only),
                            max_increase=max_increase, **COMMON)
    assert got.decision == decision, got.reason
    assert got.reason.startswith(f"errors: candidate only failed on {cand_only} and stable only on {stable_only} "
                                 f"of {pairs} mirrored requests")
    assert got.lower <= got.upper
    if decision == PairedDecision.FAIL:
        assert got.e_value >= got.e_threshold == pytest.approx(3 / 0.05)
        assert "evidence" in got.reason and "more often" in got.reason
    if decision == PairedDecision.PASS:
        assert got.upper <= max_increase and f"within {max_increase * 100:+.2f} points" in got.reason


@pytest.mark.parametrize(("answered", "disagree", "limit", "decision"), [
    (1000, 20, 0.1, PairedDecision.PASS),
    (1000, 300, 0.1, PairedDecision.FAIL),
    (1000, 95, 0.1, PairedDecision.CONTINUE),   # 9.5%: neither shown above nor within 10%
    (100, 1, 0.1, PairedDecision.CONTINUE),     # below min_pairs
])
def test_disagreement_decisions(answered, disagree, limit, decision):
    got = assess_disagreement(answered, disagree, fail_alpha=0.05 / 3, pass_alpha=0.05, max_disagreement=limit,
                              min_pairs=200)
    assert got.decision == decision, got.reason
    assert got.reason.startswith(f"prediction agreement: {disagree} of {answered} answered pairs")


@pytest.mark.parametrize(("decisions", "combined"), [
    (["pass", "pass", "pass"], "pass"),
    (["pass", "continue", "pass"], "continue"),
    (["continue", "fail", "pass"], "fail"),
    ([], "continue"),
])
def test_combine_fails_on_any_and_passes_on_all(decisions, combined):
    made = [assess_disagreement(1000, {"pass": 10, "fail": 900, "continue": 95}[d], fail_alpha=0.01, pass_alpha=0.05,
                                max_disagreement=0.1, min_pairs=10) for d in decisions]
    assert [m.decision for m in made] == decisions
    assert combine(made) == combined


@pytest.mark.parametrize("counts", [{"pairs": 10, "candidate_only": 6, "stable_only": 6},
                                    {"pairs": -1, "candidate_only": 0, "stable_only": 0}])
def test_impossible_counts_are_refused(counts):
    with pytest.raises(ValueError, match="candidate_only"):
        PairedCounts(**counts)


@pytest.mark.parametrize(("higher", "lower", "decision", "direction"), [
    (400, 30, PairedDecision.FAIL, "up"),
    (30, 400, PairedDecision.FAIL, "down"),     # a shift either way fails
    (27, 55, PairedDecision.PASS, None),        # two models trained apart: shown within 5 points
    (105, 75, PairedDecision.CONTINUE, None),   # an imbalance neither shown within 5 points nor beyond
    (200, 60, PairedDecision.CONTINUE, None),   # 7 points, not yet shown beyond 5 at the fail level
])
def test_score_shift_decisions(higher, lower, decision, direction):
    got = assess_shift(2000, higher, lower, shift=0.1, fail_alpha=0.05 / 4, pass_alpha=0.05, max_imbalance=0.05,
                       min_pairs=200)
    assert got.decision == decision, got.reason
    assert got.sides == ("higher", "lower")
    if direction:
        assert f"its scores are shifted {direction}: imbalance at least" in got.reason


def test_the_shift_guardrail_rarely_fails_a_candidate_within_its_margin():
    """Scores moved both ways, up 2 points more often than down (within the 5-point margin): rarely failed."""
    rng, alpha, reps = np.random.default_rng(5), 0.05, 200
    up, down = simulate_pairs(rng, reps, p_both=0.0, p_cand_only=0.06, p_stable_only=0.04, n=2000)
    fails = 0
    for r in range(reps):
        for n in range(LOOK_EVERY * 4, 2001, LOOK_EVERY * 4):
            if assess_shift(n, int(up[r, n - 1]), int(down[r, n - 1]), shift=0.1, fail_alpha=alpha, pass_alpha=alpha,
                            max_imbalance=0.05, min_pairs=1).decision == PairedDecision.FAIL:
                fails += 1
                break
    assert fails / reps <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / reps), fails


SAME = (100, 200, 300, 400, 400, 300, 200, 100, 50, 50)  # 2,100 answers per version


@pytest.mark.parametrize(("candidate", "stable", "max_tv", "decision"), [
    # Ten bins and two versions: 20 sequences share the level, so even identical scores need thousands of
    # pairs for a tight bound (2,100 pairs: at most 0.27).
    (SAME, SAME, 0.3, PairedDecision.PASS),
    ((0, 0, 0, 0, 0, 0, 0, 100, 1000, 1000), SAME, 0.3, PairedDecision.FAIL),  # scores piled up at the top
    (SAME, SAME, 0.1, PairedDecision.CONTINUE),               # identical, but 2,100 pairs cannot show 0.1
    ((), (), 0.3, PairedDecision.CONTINUE),                   # nothing answered yet
])
def test_distribution_decisions(candidate, stable, max_tv, decision):
    got = assess_distribution(candidate, stable, fail_alpha=0.05 / 5, pass_alpha=0.05, max_tv=max_tv, min_pairs=200)
    assert got.decision == decision, got.reason
    assert got.reason.startswith("score distribution: total-variation distance ")
    assert 0.0 <= got.lower <= got.upper <= 1.0


@pytest.mark.parametrize(("lower", "upper", "enough", "decision"), [
    (0.25, 0.4, True, PairedDecision.FAIL),       # shown above the limit
    (0.25, 0.4, False, PairedDecision.FAIL),      # ... whatever the amount of data
    (0.05, 0.15, True, PairedDecision.PASS),
    (0.05, 0.15, False, PairedDecision.CONTINUE),  # within, but not enough data to pass
    (0.05, 0.25, True, PairedDecision.CONTINUE),
    (0.2, 0.2, True, PairedDecision.PASS),        # at the limit is within
])
def test_the_guardrail_rule(lower, upper, enough, decision):
    assert guardrail_decision(lower, upper, 0.2, enough=enough) == decision


# -- the mean score difference ----------------------------------------------------------------------------

V_OPT = 5.0  # defaults.SHADOW_MEAN_SHIFT_TUNING_V


def _mixture_by_quadrature(s: float, v: float, rho: float, c: float) -> float:
    """log M(s, v) by integrating exp(l s - psi_E(l) v) over the mixing law of l = (1 - y) / c, where y has
    the gamma density y**(rho/c**2 - 1) exp(-y rho/c**2) truncated to (0, 1] (independent of the closed form)."""
    from scipy.integrate import quad

    r = rho / c ** 2

    def weight(y: float) -> float:
        return y ** (r - 1) * math.exp(-y * r)

    def integrand(y: float) -> float:
        lam = (1 - y) / c
        psi = (-math.log(y) - c * lam) / c ** 2
        return math.exp(lam * s - psi * v) * weight(y)

    return math.log(quad(integrand, 0, 1, limit=200)[0] / quad(weight, 0, 1, limit=200)[0])


@pytest.mark.parametrize(("s", "v", "rho", "c"), [
    (0.0, 0.0, 0.8, 1.0), (3.0, 5.0, 0.8, 1.0), (10.0, 20.0, 1.6, 1.0), (2.0, 0.5, 0.3, 1.0), (40.0, 300.0, 5.0, 1.0),
    (5.0, 10.0, 2.0, 0.5),
])
def test_the_gamma_exponential_mixture_matches_its_integral(s, v, rho, c):
    got = float(gamma_exponential_log_mixture(s, v, rho=rho, c=c))
    assert got == pytest.approx(_mixture_by_quadrature(s, v, rho, c), abs=1e-7)


def test_the_gamma_exponential_mixture_tends_to_the_normal_mixture_at_small_scale():
    """Scale c -> 0 is the sub-Gaussian case: Robbins' one-sided normal mixture (Howard et al. 2021, Prop. 4)."""
    from scipy.special import log_ndtr

    rho = 0.8
    for s, v in [(1.0, 1.0), (3.0, 5.0), (10.0, 20.0)]:
        normal = 0.5 * math.log(4 * rho / (v + rho)) + s * s / (2 * (v + rho)) + log_ndtr(s / math.sqrt(v + rho))
        assert float(gamma_exponential_log_mixture(s, v, rho=rho, c=1e-3)) == pytest.approx(normal, abs=2e-3)


def test_the_boundary_is_where_the_mixture_reaches_the_threshold():
    rho = gamma_exponential_rho(V_OPT, 0.025)
    v = np.array([0.0, 1.0, 5.0, 50.0, 3000.0])
    u = gamma_exponential_bound(v, 0.025, rho=rho)
    assert np.allclose(gamma_exponential_log_mixture(u, v, rho=rho), math.log(1 / 0.025), atol=1e-9)
    assert np.all(np.diff(u) > 0)  # more variance, a wider boundary
    # Tuned for v = 5: the boundary there beats one tuned far away.
    assert gamma_exponential_bound(5.0, 0.025, rho=rho) < gamma_exponential_bound(
        5.0, 0.025, rho=gamma_exponential_rho(500.0, 0.025))


@pytest.mark.parametrize(("n", "total", "total_sq", "lower", "upper"), [
    (0, 0.0, 0.0, -1.0, 1.0),                  # nothing yet
    (200, 0.0, 2.0, -0.0385, 0.0385),          # 200 pairs at 0.1 root mean square: about ±0.04 at 5%
    (200, 0.0, 0.0, -0.0231, 0.0231),          # identical scores: the width shrinks like 1/n
    (2000, 160.0, 40.0, 0.0675, 0.0925),       # +0.08 on average
    (1, -1.0, 1.0, -1.0, 1.0),                 # clipped to the domain
])
def test_mean_difference_bounds(n, total, total_sq, lower, upper):
    lo, hi = mean_difference_cs(n, total, total_sq, 0.05, v_opt=V_OPT)
    assert (float(lo), float(hi)) == pytest.approx((lower, upper), abs=5e-4)


@pytest.mark.parametrize(("n", "total", "total_sq"), [(10, 11.0, 10.0), (10, 0.0, 11.0), (10, 5.0, 1.0), (-1, 0, 0)])
def test_sums_no_values_in_the_domain_could_give_are_refused(n, total, total_sq):
    with pytest.raises(ValueError, match="values in \\[-1, 1\\]"):
        mean_difference_cs(n, total, total_sq, 0.05, v_opt=V_OPT)


MEAN = {"fail_alpha": 0.05 / 5, "pass_alpha": 0.05, "max_shift": 0.05, "min_pairs": 200, "v_opt": V_OPT}


@pytest.mark.parametrize(("answered", "total", "total_sq", "decision", "reason"), [
    (2000, 160.0, 40.0, PairedDecision.FAIL, "mean score difference: the candidate's scores are higher by 0.080 on "
                                             "average (at least 0.065) on 2000 answered pairs, beyond ±0.05"),
    (2000, -160.0, 40.0, PairedDecision.FAIL, "mean score difference: the candidate's scores are lower by 0.080 on "
                                              "average (at least 0.065) on 2000 answered pairs, beyond ±0.05"),
    (2000, 8.0, 40.0, PairedDecision.PASS, "mean score difference: the candidate's scores are higher by 0.004 on "
                                           "average on 2000 answered pairs; the mean difference is -0.008 to +0.016, "
                                           "within ±0.05"),
    (2000, 110.0, 40.0, PairedDecision.CONTINUE, None),  # +0.055: neither shown beyond 0.05 nor within
    (150, 0.0, 1.5, PairedDecision.CONTINUE, None),      # fewer pairs than min_pairs: never passes
    (0, 0.0, 0.0, PairedDecision.CONTINUE, "mean score difference: no answered pairs yet; the mean difference is "
                                           "-1.000 to +1.000, not yet within ±0.05"),
    (500, None, None, PairedDecision.CONTINUE, "mean score difference: not available: the metrics backend reported "
                                               "no sums of score differences for the 500 answered pairs"),
])
def test_mean_shift_decisions(answered, total, total_sq, decision, reason):
    got = assess_mean_shift(answered, total, total_sq, **MEAN)
    assert got.decision == decision, got.reason
    assert (got.kind, got.limit, got.pairs) == ("mean", 0.05, answered)
    assert -1.0 <= got.lower <= got.upper <= 1.0
    if reason:
        assert got.reason == reason
    if decision == PairedDecision.PASS:
        assert -0.05 <= got.lower <= got.upper <= 0.05


def _cumulative(x: np.ndarray, looks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.broadcast_to(looks, (x.shape[0], looks.size)), np.cumsum(x, axis=1)[:, looks - 1],
            np.cumsum(x * x, axis=1)[:, looks - 1])


@pytest.mark.parametrize(("name", "draw", "mean"), [
    # Scores moved both ways with a small mean shift, the usual retrained model.
    ("normal", lambda rng, size: np.clip(rng.normal(0.02, 0.1, size), -1, 1), 0.02),
    # The widest spread the domain allows: every difference is -1 or +1.
    ("extremes", lambda rng, size: rng.choice([-1.0, 1.0], size=size, p=[0.49, 0.51]), 0.02),
    # Skewed: mostly a little lower, rarely much higher (mean 0): the sub-exponential tail matters here.
    ("skewed", lambda rng, size: np.where(rng.random(size) < 0.95, -0.05, 0.95), 0.0),
])
def test_the_mean_difference_sequence_covers_the_true_mean_at_every_look(name, draw, mean):
    rng, alpha, reps = np.random.default_rng(17), 0.05, 200
    looks = np.arange(LOOK_EVERY, MAX_PAIRS + 1, LOOK_EVERY)
    n, total, total_sq = _cumulative(draw(rng, (reps, MAX_PAIRS)), looks)
    lo, hi = mean_difference_cs(n, total, total_sq, alpha, v_opt=V_OPT)
    misses = int(((lo > mean) | (hi < mean)).any(axis=1).sum())
    assert misses / reps <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / reps), (name, misses)


def test_peeking_at_a_fixed_horizon_mean_interval_is_caught_by_the_same_harness():
    rng, alpha, reps = np.random.default_rng(17), 0.05, 200
    looks = np.arange(LOOK_EVERY, MAX_PAIRS + 1, LOOK_EVERY)
    n, total, total_sq = _cumulative(np.clip(rng.normal(0.02, 0.1, (reps, MAX_PAIRS)), -1, 1), looks)
    mean = total / n
    half = 1.96 * np.sqrt(np.maximum(total_sq / n - mean ** 2, 0) / n)
    misses = int(((mean - half > 0.02) | (mean + half < 0.02)).any(axis=1).sum())
    assert misses / reps > 2 * alpha, misses


@pytest.mark.parametrize(("shift", "spread", "decision", "share", "median_pairs"), [
    (0.10, 0.1, PairedDecision.FAIL, 0.99, 400),    # twice the margin: failed within a few hundred pairs
    (0.10, 0.2, PairedDecision.FAIL, 0.99, 700),
    (-0.10, 0.1, PairedDecision.FAIL, 0.99, 400),   # either way
    (0.00, 0.1, PairedDecision.PASS, 0.99, 300),    # no shift: passed near min_pairs
    (0.00, 0.2, PairedDecision.PASS, 0.99, 600),
])
def test_the_mean_difference_test_fails_a_shift_of_twice_the_margin_and_passes_none(shift, spread, decision, share,
                                                                                 median_pairs):
    rng, reps = np.random.default_rng(23), 200
    looks = np.arange(LOOK_EVERY, MAX_PAIRS + 1, LOOK_EVERY)
    n, total, total_sq = _cumulative(np.clip(rng.normal(shift, spread, (reps, MAX_PAIRS)), -1, 1), looks)
    fail_lo, fail_hi = mean_difference_cs(n, total, total_sq, MEAN["fail_alpha"], v_opt=V_OPT)
    lo, hi = mean_difference_cs(n, total, total_sq, MEAN["pass_alpha"], v_opt=V_OPT)
    # The rule of assess_mean_shift (a guardrail on the band), on every look at once.
    failed = (fail_lo > 0.05) | (fail_hi < -0.05)
    passed = (n >= MEAN["min_pairs"]) & (lo >= -0.05) & (hi <= 0.05)
    hit = failed if decision == PairedDecision.FAIL else passed
    other = passed if decision == PairedDecision.FAIL else failed
    assert hit.any(axis=1).mean() >= share
    first = looks[hit.argmax(axis=1)][hit.any(axis=1)]
    assert np.median(first) <= median_pairs, np.median(first)
    assert not (other & ~np.cumsum(hit, axis=1).astype(bool)).any()  # never the other verdict first
    # The vectorised rule is assess_mean_shift's: spot-check one run's first conclusive look.
    r, k = 0, int(hit[0].argmax())
    assert assess_mean_shift(int(looks[k]), float(total[r, k]), float(total_sq[r, k]), **MEAN).decision == decision
