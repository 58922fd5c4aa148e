"""Sequential paired tests for the shadow test: both versions answer the same mirrored requests.

A paired comparison removes what the two versions share (hard requests, a slow database, the time of
day), so it needs far fewer requests than comparing two independent streams. Five tests (six with the
score distribution) run on the
cumulative counts and sums of one shadow window; each is anytime-valid, so the shadow test may look at every
poll and stop as soon as it is conclusive.

**A bad outcome on one side only** (an error, or an answer slower than a threshold fixed before the
test): for a pair where exactly one version had it (a *discordant* pair), under "no regression" the
candidate is that version with probability at most 1/2, whatever the base rate. The label e-process of
:mod:`canary.stats.label` with exposure share 1/2 is then an exact sequential McNemar test (McNemar
1947; its e-process form is the binomial case of Lindon & Malek, NeurIPS 2022): it tests
``theta = P(candidate only) / P(stable only) <= 1`` on the discordant counts alone, and its e-value
crossing ``1 / a`` fails the candidate with probability at most ``a`` under the null, at any looks.

Passing needs more than "no evidence of harm": the increase of the bad-outcome rate on the same
requests, ``P(candidate bad) - P(stable bad) = P(candidate only) - P(stable only)``, must be shown
within a margin. Each of the two discordant shares gets Robbins' beta-binomial confidence sequence
(:func:`canary.stats.distribution.proportion_cs`) at level ``a / 2``, so

.. math:: \\Delta \\le u_{co} - l_{so}

holds at all times with probability ``1 - a``.

**Disagreement** of the predicted class on pairs both answered: a confidence sequence on the
disagreement rate against ``1 - min_prediction_agreement`` (an absolute guardrail: a new model is
expected to change some answers, not too many). It fails when the lower bound exceeds the limit and
passes when the upper bound is within it.

**Score shift**: pairs both answered where the candidate's score is above stable's by more than a
fixed ``shift``, against pairs where it is below by as much (a paired sign comparison, Dixon & Mood
1946). Two models trained apart never move scores exactly as often each way, so this is a guardrail with
a tolerance, like the disagreement test: the imbalance of the two shares gets the confidence sequence
above and fails beyond ``±margin``, passes within. It sees a shifted or miscalibrated model whose
predicted classes mostly stay the same.

**Mean score difference**: on pairs both answered, ``X_i`` = the candidate's score minus stable's, in
``[-1, 1]``, with mean ``mu``. From the running sums ``S_n = sum X_i`` and ``V_n = sum X_i**2`` alone (so
any poll cadence gives the same answer), the process ``sum (X_i - mu)`` is sub-exponential with variance
process ``V_n`` and scale ``c = 1``: the empirical-Bernstein construction of Howard, Ramdas, McAuliffe &
Sekhon (2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2),
Theorem 4) with the constant prediction ``X_hat = 0``. Its step is Fan, Grama & Liu (2015, Lemma 4.1):
for ``xi >= -1`` and ``0 <= l < 1``, ``exp(l xi - xi**2 (-log(1 - l) - l)) <= 1 + l xi``, applied to
``xi = X_i - X_hat >= -1`` (the scale is 1, not the range 2, because ``X_hat`` is the centre of the
range). Their gamma-exponential mixture (Proposition 8, tuned as in their Sec. 3.5;
``gamma_exponential_mixture_bound`` in their ``confseq`` package), with
:math:`a = (v + \\rho)/c^2`, :math:`r = \\rho/c^2`, :math:`x = (cs + v + \\rho)/c^2`
and ``P`` the regularised lower incomplete gamma function,

.. math:: \\log M(s, v) = r \\log r - \\log\\Gamma(r) - \\log P(r, r) + \\log\\Gamma(a) + \\log P(a, x)
          - a \\log x + (cs + v)/c^2,

is a nonnegative supermartingale at ``(s, v) = (sum (X_i - mu), V_n)``; its boundary ``u(v)`` (``M = 2/a``)
is crossed with probability at most ``a/2`` by either tail, so

.. math:: \\mu \\in \\left[\\frac{S_n - u(V_n)}{n},\\; \\frac{S_n + u(V_n)}{n}\\right]

holds at all ``n`` with probability ``1 - a``. ``V_n`` is the second moment about 0, close to ``n`` times
the variance when the mean shift is small, so the width is then about what the variance itself would give. A
new model is expected to move its scores a little, so this is a guardrail with the band
``±max_mean_score_shift``: it fails when the sequence lies outside the band and passes when it lies within.
It sees a uniform drift too small per request for the score-shift test (every score 0.06 higher: no pair
beyond 0.1). For example, 1,980 answered pairs with ``S_n = 138.6`` (mean +0.070) and ``V_n = 14.65`` (root
mean square 0.086) give ``[0.060, 0.080]`` at ``a = 0.01`` (fails beyond ±0.05); 2,000 pairs with
``S_n = 8``, ``V_n = 40`` give ``[-0.008, +0.016]`` at ``a = 0.05`` (passes within ±0.05).

The shadow test fails when any test fails (a Bonferroni split of its level over the tests) and passes
when every test passes (an intersection-union test: each bound at the full level).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import gammainc, gammaln

from canary.stats.distribution import proportion_cs
from canary.stats.label import GridPrior, log_mixture

#: Exposure share of each version within a pair: both answer every mirrored request.
PAIR_SHARE = 0.5


class PairedDecision:
    """What one paired test says at a look."""

    FAIL = "fail"
    PASS = "pass"
    CONTINUE = "continue"


@dataclass(frozen=True, kw_only=True)
class PairedCounts:
    """Pairs of answers to the same requests, and those where one version only had a bad outcome."""

    pairs: int
    candidate_only: int
    stable_only: int

    def __post_init__(self) -> None:
        if min(self.pairs, self.candidate_only, self.stable_only) < 0 or \
                self.candidate_only + self.stable_only > self.pairs:
            raise ValueError(f"paired counts need 0 <= candidate_only + stable_only <= pairs, got {self}")


@dataclass(frozen=True, kw_only=True)
class PairedAssessment:
    """One paired test's verdict and the evidence behind it (JSON-able through :meth:`to_dict`).

    ``kind`` says what ``estimate``, ``lower``, ``upper`` and ``limit`` measure: ``discordant``, the
    increase of a rate on the same requests (0.02 = 2 points more often than stable; the shift test's
    imbalance); ``rate``, the disagreement rate itself; ``distance``, a total-variation distance; ``mean``,
    the mean score difference (candidate minus stable, on the score scale; ``limit`` is the half-width of
    the band ``±limit``).
    """

    test: str
    kind: str
    decision: str
    pairs: int
    candidate_only: int | None
    stable_only: int | None
    e_value: float | None
    e_threshold: float | None
    estimate: float | None
    lower: float
    upper: float
    limit: float
    reason: str
    #: What ``candidate_only`` and ``stable_only`` count, for people (the shift test counts higher / lower).
    sides: tuple[str, str] = ("candidate only", "stable only")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sides": list(self.sides)}


def _e_value(log_e: float) -> float:
    return math.exp(min(log_e, 700.0))


def discordant_log_e(candidate_only: int, stable_only: int, design_ratio: float) -> float:
    """Return log E of the sequential McNemar test of ``P(candidate only) <= P(stable only)``.

    The label mixture with exposure share 1/2 and a grid prior around ``log(design_ratio)``: a test
    supermartingale under the null in the order pairs arrive, so any look at the counts is valid.
    """
    if candidate_only + stable_only == 0:
        return 0.0
    prior = GridPrior.around(math.log(design_ratio))
    return log_mixture([(float(candidate_only), float(stable_only), PAIR_SHARE)], 1.0, prior, 1)


def increase_bounds(counts: PairedCounts, a: float) -> tuple[float, float]:
    """Return time-uniform (lower, upper) bounds at joint level ``a`` on ``P(candidate bad) - P(stable bad)``."""
    n = np.array([counts.pairs, counts.pairs], dtype=float)
    lo, hi = proportion_cs(np.array([counts.candidate_only, counts.stable_only], dtype=float), n, a / 2.0)
    return float(lo[0] - hi[1]), float(hi[0] - lo[1])


def _points(x: float) -> str:
    return f"{x * 100:+.2f} points"


def assess_discordant(test: str, counts: PairedCounts, *, fail_alpha: float, pass_alpha: float,
                      max_increase: float, design_ratio: float, min_pairs: int, what: str) -> PairedAssessment:
    """Judge one bad outcome (``what``: "failed", "was slow") on paired counts.

    Fails on the McNemar e-value reaching ``1 / fail_alpha``; passes once ``min_pairs`` pairs are in
    and the upper bound on the increase (level ``pass_alpha``) is at most ``max_increase``.
    """
    log_e = discordant_log_e(counts.candidate_only, counts.stable_only, design_ratio)
    threshold = 1.0 / fail_alpha
    lower, upper = increase_bounds(counts, pass_alpha)
    estimate = (counts.candidate_only - counts.stable_only) / counts.pairs if counts.pairs else None
    shown = (f"candidate only {what} on {counts.candidate_only} and stable only on {counts.stable_only} "
             f"of {counts.pairs} mirrored requests")
    if log_e >= math.log(threshold):
        decision = PairedDecision.FAIL
        reason = (f"{test}: {shown} ({_points(estimate or 0.0)}); evidence {_e_value(log_e):.3g} >= "
                  f"{threshold:.3g} that the candidate {what} more often")
    elif counts.pairs >= min_pairs and upper <= max_increase:
        decision = PairedDecision.PASS
        reason = f"{test}: {shown}; increase at most {_points(upper)}, within {_points(max_increase)}"
    else:
        decision = PairedDecision.CONTINUE
        reason = (f"{test}: {shown}; increase at most {_points(upper)}, not yet within {_points(max_increase)}"
                  if counts.pairs >= min_pairs else f"{test}: {shown}; {min_pairs} pairs needed")
    return PairedAssessment(test=test, kind="discordant", decision=decision, pairs=counts.pairs,
                            candidate_only=counts.candidate_only,
                            stable_only=counts.stable_only, e_value=_e_value(log_e), e_threshold=threshold,
                            estimate=estimate, lower=lower, upper=upper, limit=max_increase, reason=reason)


def guardrail_decision(lower: float, upper: float, limit: float, *, enough: bool) -> str:
    """The rule of a guardrail with a tolerance: fail when the quantity's lower bound is above ``limit``,
    pass when there is ``enough`` data and its upper bound is within it, else continue."""
    if lower > limit:
        return PairedDecision.FAIL
    if enough and upper <= limit:
        return PairedDecision.PASS
    return PairedDecision.CONTINUE


def assess_disagreement(both_answered: int, disagreements: int, *, fail_alpha: float, pass_alpha: float,
                        max_disagreement: float, min_pairs: int) -> PairedAssessment:
    """Judge the share of pairs whose predicted class differs against ``max_disagreement``."""
    if not 0 <= disagreements <= both_answered:
        raise ValueError(f"need 0 <= disagreements <= pairs, got {disagreements} of {both_answered}")
    n = np.array([both_answered], dtype=float)
    x = np.array([disagreements], dtype=float)
    fail_lo, _ = proportion_cs(x, n, fail_alpha)
    _, pass_hi = proportion_cs(x, n, pass_alpha)
    lower, upper = float(fail_lo[0]), float(pass_hi[0])
    estimate = disagreements / both_answered if both_answered else None
    shown = f"{disagreements} of {both_answered} answered pairs predict a different class"
    decision = guardrail_decision(lower, upper, max_disagreement, enough=both_answered >= min_pairs)
    reason = f"prediction agreement: {shown}; " + {
        PairedDecision.FAIL: f"disagreement at least {lower:.1%}, above {max_disagreement:.1%}",
        PairedDecision.PASS: f"disagreement at most {upper:.1%}, within {max_disagreement:.1%}",
        PairedDecision.CONTINUE: f"disagreement at most {upper:.1%}, not yet within {max_disagreement:.1%}"}[decision]
    return PairedAssessment(test="prediction agreement", kind="rate", decision=decision, pairs=both_answered,
                            candidate_only=None, stable_only=None, e_value=None, e_threshold=None,
                            estimate=estimate, lower=lower, upper=upper, limit=max_disagreement, reason=reason)


def assess_shift(answered: int, higher: int, lower: int, *, shift: float, fail_alpha: float, pass_alpha: float,
                 max_imbalance: float, min_pairs: int) -> PairedAssessment:
    """Judge a systematic score shift: pairs where the candidate's score is above stable's by more than
    ``shift`` (``higher``) against pairs where it is below by more than ``shift`` (``lower``).

    A guardrail with a tolerance (a new model is expected to move its scores somewhat, and two models
    trained apart rarely move them exactly as often each way): fails when the imbalance
    ``P(higher) - P(lower)`` is shown beyond ``±max_imbalance`` (bounds at level ``fail_alpha``), passes
    once it is shown within (level ``pass_alpha``).
    """
    counts = PairedCounts(pairs=answered, candidate_only=higher, stable_only=lower)
    fail_lo, fail_hi = increase_bounds(counts, fail_alpha)
    lo, hi = increase_bounds(counts, pass_alpha)
    estimate = (higher - lower) / answered if answered else None
    test = f"score shift beyond ±{shift:g}"
    shown = (f"the candidate's score is above stable's by more than {shift:g} on {higher} and below on {lower} "
             f"of {answered} answered pairs")
    margin = f"±{max_imbalance * 100:.2f} points"
    # The guardrail on the size of the imbalance, either way.
    decision = guardrail_decision(max(fail_lo, -fail_hi, 0.0), max(abs(lo), abs(hi)), max_imbalance,
                                  enough=answered >= min_pairs)
    if decision == PairedDecision.FAIL:
        direction = "up" if fail_lo > max_imbalance else "down"
        beyond = fail_lo if direction == "up" else fail_hi
        reason = (f"{test}: {shown}; its scores are shifted {direction}: imbalance at least {_points(beyond)}, "
                  f"beyond {margin}")
    else:
        within = "within" if decision == PairedDecision.PASS else "not yet within"
        reason = f"{test}: {shown}; imbalance {_points(lo)} to {_points(hi)}, {within} {margin}"
    return PairedAssessment(test=test, kind="discordant", decision=decision, pairs=answered, candidate_only=higher,
                            stable_only=lower,
                            e_value=None, e_threshold=None, estimate=estimate, lower=lo, upper=hi,
                            limit=max_imbalance, reason=reason, sides=("higher", "lower"))


def gamma_exponential_rho(v_opt: float, a: float) -> float:
    """Return the mixture's tuning ``rho`` that makes the one-sided boundary at level ``a`` tightest at ``v_opt``.

    Howard et al. (2021), Sec. 3.5 (``OneSidedNormalMixture::best_rho`` in ``confseq``), used for the
    gamma-exponential mixture as they do; ``v_opt > 0``, ``0 < a < 1/2``.
    """
    if not v_opt > 0 or not 0 < a < 0.5:
        raise ValueError(f"need v_opt > 0 and 0 < a < 1/2, got v_opt={v_opt}, a={a}")
    level = 2.0 * math.log(1.0 / (2.0 * a))
    return v_opt / (level + math.log1p(level))


def gamma_exponential_log_mixture(s: np.ndarray | float, v: np.ndarray | float, *, rho: float,
                                  c: float = 1.0) -> np.ndarray:
    """Return :math:`\\log M(s, v)` of the gamma-exponential mixture (Howard et al. 2021, Proposition 8).

    Parameters
    ----------
    s : array_like
        The sum of centred observations, ``>= 0`` (the boundary's side; below 0 the mixture is below 1).
    v : array_like
        Intrinsic time (the variance process), ``>= 0``.
    rho : float
        Tuning, ``> 0`` (:func:`gamma_exponential_rho`).
    c : float
        Sub-exponential scale, ``> 0``.

    Notes
    -----
    Written with ``u = cs / (v + rho)`` so that the large terms cancel analytically:
    :math:`\\log\\Gamma(a) - a \\log x + x = [\\log\\Gamma(a) - a\\log a + a] + a(u - \\log(1 + u))`.
    """
    s = np.asarray(s, dtype=float)
    v = np.asarray(v, dtype=float)
    r = rho / (c * c)
    lead = r * math.log(r) - float(gammaln(r)) - math.log(float(gammainc(r, r)))
    a = (v + rho) / (c * c)
    u = c * s / (v + rho)
    return (lead + (gammaln(a) - a * np.log(a) + a) + a * (u - np.log1p(u))
            + np.log(gammainc(a, a * (1.0 + u))) - r)


def gamma_exponential_bound(v: np.ndarray | float, a: float, *, rho: float, c: float = 1.0,
                            iterations: int = 64) -> np.ndarray:
    """Return the smallest ``s >= 0`` with :math:`M(s, v) \\ge 1/a`: a one-sided boundary crossed with
    probability at most ``a`` (Ville's inequality), elementwise in ``v`` (``>= 0``).

    :math:`M` increases in ``s``, so bisection after doubling an upper end; the bound returned is the
    upper end of the last bracket (never below the exact boundary).
    """
    v = np.asarray(v, dtype=float)
    level = math.log(1.0 / a)
    hi = np.maximum(v, 1.0) * c
    for _ in range(200):
        short = gamma_exponential_log_mixture(hi, v, rho=rho, c=c) < level
        if not short.any():
            break
        hi = np.where(short, 2.0 * hi, hi)
    lo = np.zeros_like(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        out = gamma_exponential_log_mixture(mid, v, rho=rho, c=c) >= level
        lo, hi = np.where(out, lo, mid), np.where(out, mid, hi)
    return hi


def mean_difference_cs(n: np.ndarray | int, total: np.ndarray | float, total_sq: np.ndarray | float, a: float, *,
                       v_opt: float) -> tuple[np.ndarray, np.ndarray]:
    """Return time-uniform (lower, upper) bounds at level ``a`` on the mean of i.i.d. values in ``[-1, 1]``.

    Parameters
    ----------
    n, total, total_sq : array_like
        Count, sum and sum of squares of the values so far (``|total| <= n``, ``total**2 <= n * total_sq``,
        ``total_sq <= n``); ``n = 0`` gives ``[-1, 1]``.
    a : float
        Error level in (0, 1): the pair of bounds covers the mean at every ``n`` with probability ``1 - a``.
    v_opt : float
        Intrinsic time (``total_sq``) at which the sequence is tightest, fixed before any value.

    Notes
    -----
    ``sum (X_i - mu)`` is sub-exponential with variance process ``total_sq`` and scale 1 either way
    (module docstring), so each tail gets the gamma-exponential boundary at level ``a / 2``.
    """
    n = np.asarray(n, dtype=float)
    total = np.asarray(total, dtype=float)
    total_sq = np.asarray(total_sq, dtype=float)
    slack = 1e-9 * np.maximum(n, 1.0)
    if np.any(n < 0) or np.any(np.abs(total) > n + slack) or np.any(total_sq < -slack) or \
            np.any(total_sq > n + slack) or np.any(total * total > n * total_sq + slack * np.maximum(n, 1.0)):
        raise ValueError(f"need values in [-1, 1]: n={n}, sum={total}, sum of squares={total_sq} are impossible")
    radius = gamma_exponential_bound(np.maximum(total_sq, 0.0), a / 2.0, rho=gamma_exponential_rho(v_opt, a / 2.0))
    safe_n = np.maximum(n, 1.0)
    lower = np.where(n > 0, np.maximum((total - radius) / safe_n, -1.0), -1.0)
    upper = np.where(n > 0, np.minimum((total + radius) / safe_n, 1.0), 1.0)
    return lower, upper


def _score_points(x: float) -> str:
    return f"{x:+.3f}"


def assess_mean_shift(answered: int, diff_sum: float | None, diff_sum_sq: float | None, *, fail_alpha: float,
                      pass_alpha: float, max_shift: float, min_pairs: int, v_opt: float) -> PairedAssessment:
    """Judge the mean of the candidate's score minus stable's on pairs both answered against ``±max_shift``.

    A guardrail with a tolerance: fails when the confidence sequence (level ``fail_alpha``) lies outside
    the band ``[-max_shift, max_shift]``, passes once ``min_pairs`` pairs are in and the sequence at level
    ``pass_alpha`` lies within it. Sums of None with answered pairs (a backend that cannot compute them)
    make the test *not available*: it continues, never passes (the shadow verdict says why).
    """
    test = "mean score difference"
    band = f"±{max_shift:g}"
    if answered and (diff_sum is None or diff_sum_sq is None):
        return PairedAssessment(
            test=test, kind="mean", decision=PairedDecision.CONTINUE, pairs=answered, candidate_only=None,
            stable_only=None, e_value=None, e_threshold=None, estimate=None, lower=-1.0, upper=1.0, limit=max_shift,
            reason=f"{test}: not available: the metrics backend reported no sums of score differences for the "
                   f"{answered} answered pairs", sides=("", ""))
    total, total_sq = float(diff_sum or 0.0), float(diff_sum_sq or 0.0)
    fail_lo, fail_hi = (float(b) for b in mean_difference_cs(answered, total, total_sq, fail_alpha, v_opt=v_opt))
    lo, hi = (float(b) for b in mean_difference_cs(answered, total, total_sq, pass_alpha, v_opt=v_opt))
    estimate = total / answered if answered else None
    decision = guardrail_decision(max(fail_lo, -fail_hi, 0.0), max(abs(lo), abs(hi)), max_shift,
                                  enough=answered >= min_pairs)
    if estimate is None:
        shown = "no answered pairs yet"
    elif estimate == 0.0:
        shown = f"the candidate's scores equal stable's on average on {answered} answered pairs"
    else:
        shown = (f"the candidate's scores are {'higher' if estimate > 0 else 'lower'} by {abs(estimate):.3f} on "
                 f"average on {answered} answered pairs")
    if decision == PairedDecision.FAIL:
        up = fail_lo > max_shift
        reason = (f"{test}: the candidate's scores are {'higher' if up else 'lower'} by {abs(estimate or 0.0):.3f} "
                  f"on average (at least {fail_lo if up else -fail_hi:.3f}) on {answered} answered pairs, beyond "
                  f"{band}")
    else:
        within = "within" if decision == PairedDecision.PASS else "not yet within"
        reason = (f"{test}: {shown}; the mean difference is {_score_points(lo)} to {_score_points(hi)}, "
                  f"{within} {band}")
    return PairedAssessment(test=test, kind="mean", decision=decision, pairs=answered, candidate_only=None,
                            stable_only=None, e_value=None, e_threshold=None, estimate=estimate, lower=lo, upper=hi,
                            limit=max_shift, reason=reason, sides=("", ""))


def assess_distribution(candidate_bins: tuple[int, ...], stable_bins: tuple[int, ...], *, fail_alpha: float,
                        pass_alpha: float, max_tv: float, min_pairs: int) -> PairedAssessment:
    """Judge the total-variation distance between the two versions' binned scores against ``max_tv``.

    Each version's bin shares get confidence sequences (:func:`canary.stats.distribution.tv_bounds`,
    valid whatever the pairing); fails when the lower bound (level ``fail_alpha``) exceeds ``max_tv``,
    passes when the upper bound (level ``pass_alpha``) is within it.
    """
    from canary.stats.distribution import tv_bounds

    pairs = int(sum(candidate_bins))
    if not candidate_bins or pairs == 0 or int(sum(stable_bins)) == 0:
        lower, upper, estimate = 0.0, 1.0, None
    else:
        c, s = np.asarray(candidate_bins, dtype=float), np.asarray(stable_bins, dtype=float)
        lower = float(tv_bounds(c, s, fail_alpha)[0])
        upper = float(tv_bounds(c, s, pass_alpha)[1])
        estimate = float(0.5 * np.abs(c / c.sum() - s / s.sum()).sum())
    test = "score distribution"
    shown = f"total-variation distance {'n/a' if estimate is None else f'{estimate:.3f}'} on {pairs} answered pairs"
    decision = guardrail_decision(lower, upper, max_tv, enough=pairs >= min_pairs)
    reason = f"{test}: {shown}; " + {PairedDecision.FAIL: f"at least {lower:.3f}, above {max_tv:g}",
                                     PairedDecision.PASS: f"at most {upper:.3f}, within {max_tv:g}",
                                     PairedDecision.CONTINUE: f"at most {upper:.3f}, not yet within {max_tv:g}"}[decision]
    return PairedAssessment(test=test, kind="distance", decision=decision, pairs=pairs, candidate_only=None,
                            stable_only=None,
                            e_value=None, e_threshold=None, estimate=estimate, lower=lower, upper=upper,
                            limit=max_tv, reason=reason, sides=("", ""))


def combine(assessments: list[PairedAssessment]) -> str:
    """Return the shadow test's decision: fail if any test fails, pass if all pass, else continue."""
    decisions = {a.decision for a in assessments}
    if PairedDecision.FAIL in decisions:
        return PairedDecision.FAIL
    if assessments and decisions == {PairedDecision.PASS}:
        return PairedDecision.PASS
    return PairedDecision.CONTINUE


__all__ = ["PAIR_SHARE", "PairedAssessment", "PairedCounts", "PairedDecision", "assess_disagreement",
           "assess_discordant", "assess_distribution", "assess_mean_shift", "assess_shift", "combine",
           "discordant_log_e", "gamma_exponential_bound", "gamma_exponential_log_mixture", "gamma_exponential_rho",
           "guardrail_decision", "increase_bounds", "mean_difference_cs"]
