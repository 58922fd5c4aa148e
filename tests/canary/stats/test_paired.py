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
    assess_shift,
    combine,
    discordant_log_e,
    guardrail_decision,
    increase_bounds,
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
