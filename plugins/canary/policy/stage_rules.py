"""The stage rules: one rule book for the live gate and ``canary replay``.

Which rule decides a stage at one poll, given where the stage stands in time and what its window
holds. :func:`canary.policy.gate.evaluate_stage` calls these functions with the numbers of one poll;
:mod:`canary.stats.replay` calls the same functions with numpy arrays holding every row of every run
at once. Every function here is pure and takes scalars or numpy arrays alike (broadcast together):
plain numbers in give a :class:`~canary.policy.decisions.Decision` (or ``bool``) out, arrays in give arrays
out (an object array of :class:`~canary.policy.decisions.Decision` for the decisions).

Precedence (first match wins), so that missing data can never look healthy:

1. warming up after the traffic change (``elapsed < warmup``) -> CONTINUE;
2. no data from the metrics backend -> CONTINUE until the no-data deadline, then HALT;
3. an absolute guardrail breached -> ROLLBACK;
4. no canary requests in the window (below 100%: or no stable requests) -> CONTINUE until the
   no-data deadline, then HALT;
5. the analysis: any metric ROLLBACK -> ROLLBACK, else any HALT -> HALT;
6. bake time (``min_duration``) and ``min_requests`` canary requests reached and every metric
   non-inferior -> ADVANCE;
7. the stage's ``max_duration`` reached -> TIMEOUT;
8. otherwise CONTINUE.

Rules 1-4 are :func:`screen` (they need no analysis, so the gate calls its analyzer only when they
pass), rules 5-8 are :func:`conclude`, and :func:`stage_decision` is both in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from canary.policy.decisions import Decision

if TYPE_CHECKING:
    from canary.spec.model import Guardrails, RolloutSpec, StageSpec


class Rule(StrEnum):
    """The rule that produced a stage decision (what the reason and the evidence talk about)."""

    WARMUP = "warmup"  # CONTINUE: the window after the traffic change has not opened yet
    NO_DATA = "no_data"  # the metrics backend had no data: CONTINUE, then HALT at the no-data deadline
    GUARDRAIL = "guardrail"  # ROLLBACK: an absolute limit breached
    EMPTY = "empty"  # no canary (or stable) requests in the window: CONTINUE, then HALT at the deadline
    ANALYSIS = "analysis"  # the analysis decides (from :func:`screen`: none of rules 1-4 fired)
    PROMOTION = "promotion"  # ADVANCE: bake time, minimum requests and non-inferiority
    TIMEOUT = "timeout"  # TIMEOUT: the stage's maximum duration reached undecided
    OBSERVING = "observing"  # CONTINUE: nothing decided yet


class Verdict(NamedTuple):
    """A stage decision and the rule that made it (scalars, or arrays of equal shape)."""

    decision: Any  # Decision, or an object array of Decision
    rule: Any  # Rule, or an object array of Rule


@dataclass(frozen=True, kw_only=True)
class StageRules:
    """The numbers one stage is judged by (fields may be numpy arrays: one value per replayed row).

    ``compares`` is True below 100%, where canary is compared with stable traffic beside it.
    """

    warmup_s: Any
    poll_interval_s: Any
    min_duration_s: Any
    max_duration_s: Any
    min_requests: Any
    compares: Any

    @classmethod
    def of(cls, spec: RolloutSpec, stage: StageSpec) -> StageRules:
        """Return the rules of one spec stage."""
        return cls(warmup_s=spec.analysis.warmup_s, poll_interval_s=spec.analysis.poll_interval_s,
                   min_duration_s=stage.min_duration_s, max_duration_s=stage.max_duration_s,
                   min_requests=stage.min_requests, compares=stage.weight < 100)


def _out(value: Any) -> Any:
    """Return a 0-d result (numpy scalar or 0-d array) as a Python scalar, arrays unchanged."""
    return value.item() if isinstance(value, np.generic | np.ndarray) and np.ndim(value) == 0 else value


def no_data_deadline_s(rules: StageRules) -> Any:
    """Seconds into a stage after which missing data is a HALT rather than a reason to wait.

    The stage's minimum duration, but never before the window after the warm-up has been open for a
    full poll interval (a window that has only just opened is empty by construction, not evidence),
    and never after the stage's maximum duration.
    """
    return _out(np.minimum(np.maximum(rules.min_duration_s, np.add(rules.warmup_s, rules.poll_interval_s)),
                           rules.max_duration_s))


def warming_up(rules: StageRules, elapsed_s: Any) -> Any:
    """Return True while the window after the traffic change has not opened."""
    return _out(np.less(elapsed_s, rules.warmup_s))


def no_data_due(rules: StageRules, elapsed_s: Any) -> Any:
    """Return True once missing data (or an empty window) HALTs instead of waiting."""
    return _out(np.greater_equal(elapsed_s, no_data_deadline_s(rules)))


def empty_versions(rules: StageRules, canary_requests: Any, stable_requests: Any) -> tuple[Any, Any]:
    """Return ``(canary_empty, stable_empty)``: versions without requests that the stage needs.

    Stable counts only below 100% (``rules.compares``): at 100% no stable traffic runs.
    """
    return (_out(np.equal(canary_requests, 0)),
            _out(np.logical_and(rules.compares, np.equal(stable_requests, 0))))


def guardrail_breaches(guardrails: Guardrails, canary_requests: Any, canary_errors: Any,
                       canary_p99_ms: Any) -> tuple[Any, Any]:
    """Return ``(error_rate_breached, latency_p99_breached)`` of the absolute guardrails.

    A guardrail counts only after ``guardrails.min_requests`` canary requests in the window; an
    unknown p99 (None or nan: no latency data) breaches nothing.
    """
    counted = np.greater_equal(canary_requests, guardrails.min_requests)
    if guardrails.max_error_rate is None:
        rate = np.zeros(np.shape(canary_requests), dtype=bool)
    else:
        error_rate = np.divide(canary_errors, np.maximum(canary_requests, 1))
        rate = counted & (error_rate > guardrails.max_error_rate)
    if guardrails.max_latency_p99_ms is None:
        p99 = np.zeros(np.shape(canary_requests), dtype=bool)
    else:
        p99_ms = np.asarray(np.nan if canary_p99_ms is None else canary_p99_ms, dtype=float)
        with np.errstate(invalid="ignore"):
            p99 = counted & (p99_ms > guardrails.max_latency_p99_ms)
    return _out(np.asarray(rate)), _out(np.asarray(p99))


def bake_time_reached(rules: StageRules, elapsed_s: Any) -> Any:
    """Return True once the stage has run its minimum duration."""
    return _out(np.greater_equal(elapsed_s, rules.min_duration_s))


def enough_requests(rules: StageRules, canary_requests: Any) -> Any:
    """Return True once the window holds the stage's minimum canary requests."""
    return _out(np.greater_equal(canary_requests, rules.min_requests))


def timed_out(rules: StageRules, elapsed_s: Any) -> Any:
    """Return True once the stage has run its maximum duration."""
    return _out(np.greater_equal(elapsed_s, rules.max_duration_s))


def analysis_verdict(*, rollback: Any, halt: Any, all_non_inferior: Any) -> Any:
    """Combine the metrics' verdicts: any ROLLBACK, else any HALT, else ADVANCE if every metric is
    non-inferior (also when nothing is compared), else CONTINUE."""
    return _first([rollback, halt, all_non_inferior],
                  [Decision.ROLLBACK, Decision.HALT, Decision.ADVANCE], Decision.CONTINUE)


def screen(rules: StageRules, elapsed_s: Any, *, has_data: Any, canary_requests: Any, stable_requests: Any,
           breached: Any) -> Verdict:
    """Apply rules 1-4 (warm-up, no data, guardrails, empty window).

    Returns rule :attr:`Rule.ANALYSIS` (with CONTINUE) where none of them fired: there the analysis
    and :func:`conclude` decide. ``breached``: any guardrail (see :func:`guardrail_breaches`); it is
    ignored without data.
    """
    due = no_data_due(rules, elapsed_s)
    no_data = np.logical_not(has_data)
    canary_empty, stable_empty = empty_versions(rules, canary_requests, stable_requests)
    empty = np.logical_or(canary_empty, stable_empty)
    return _verdict([warming_up(rules, elapsed_s), no_data & due, no_data, breached, empty & due, empty],
                    [(Decision.CONTINUE, Rule.WARMUP), (Decision.HALT, Rule.NO_DATA),
                     (Decision.CONTINUE, Rule.NO_DATA), (Decision.ROLLBACK, Rule.GUARDRAIL),
                     (Decision.HALT, Rule.EMPTY), (Decision.CONTINUE, Rule.EMPTY)],
                    (Decision.CONTINUE, Rule.ANALYSIS))


def conclude(rules: StageRules, elapsed_s: Any, *, canary_requests: Any, verdict: Any) -> Verdict:
    """Apply rules 5-8 to the analysis' combined ``verdict`` (see :func:`analysis_verdict`)."""
    verdict = np.asarray(verdict, dtype=object)
    promotable = (bake_time_reached(rules, elapsed_s) & enough_requests(rules, canary_requests)
                  & (verdict == Decision.ADVANCE))
    return _verdict([verdict == Decision.ROLLBACK, verdict == Decision.HALT, promotable, timed_out(rules, elapsed_s)],
                    [(Decision.ROLLBACK, Rule.ANALYSIS), (Decision.HALT, Rule.ANALYSIS),
                     (Decision.ADVANCE, Rule.PROMOTION), (Decision.TIMEOUT, Rule.TIMEOUT)],
                    (Decision.CONTINUE, Rule.OBSERVING))


def stage_decision(rules: StageRules, elapsed_s: Any, *, has_data: Any, canary_requests: Any, stable_requests: Any,
                   breached: Any, verdict: Any) -> Verdict:
    """Apply all rules in order: :func:`screen`, then :func:`conclude` where the screen passed."""
    pre = screen(rules, elapsed_s, has_data=has_data, canary_requests=canary_requests,
                 stable_requests=stable_requests, breached=breached)
    post = conclude(rules, elapsed_s, canary_requests=canary_requests, verdict=verdict)
    if not isinstance(pre.rule, np.ndarray) and not isinstance(post.rule, np.ndarray):
        return post if pre.rule is Rule.ANALYSIS else pre
    shape = np.broadcast_shapes(np.shape(pre.rule), np.shape(post.rule))
    passed = _objects(pre.rule, shape) == Rule.ANALYSIS
    return Verdict(np.where(passed, _objects(post.decision, shape), _objects(pre.decision, shape)),
                   np.where(passed, _objects(post.rule, shape), _objects(pre.rule, shape)))


def _objects(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``value`` broadcast to an object array of ``shape`` (enum members stay members: a bare
    member in ``np.where`` would become a plain string)."""
    out = np.empty(shape, dtype=object)
    out[...] = value
    return out


def _first(conditions: list[Any], choices: list[Any], default: Any) -> Any:
    """Return, element-wise, the choice of the first true condition (``default`` where none is)."""
    conds = np.broadcast_arrays(*(np.asarray(c, dtype=bool) for c in conditions))
    index = np.select(conds, list(range(len(choices))), default=len(choices))
    table = [*choices, default]
    if index.ndim == 0:
        return table[int(index)]
    lookup = np.empty(len(table), dtype=object)
    lookup[:] = table
    return lookup[index]


def _verdict(conditions: list[Any], outcomes: list[tuple[Decision, Rule]], default: tuple[Decision, Rule]) -> Verdict:
    decisions = _first(conditions, [d for d, _ in outcomes], default[0])
    rules = _first(conditions, [r for _, r in outcomes], default[1])
    return Verdict(decisions, rules)
