"""Table tests of the stage rules (literal inputs): each rule, their precedence, scalars and arrays alike."""

from __future__ import annotations

import math

import numpy as np
import pytest

from canary.policy.decisions import Decision
from canary.policy.stage_rules import (
    Rule,
    StageRules,
    analysis_verdict,
    conclude,
    empty_versions,
    guardrail_breaches,
    no_data_deadline_s,
    screen,
    stage_decision,
)
from canary.spec.model import Guardrails, parse_spec

C, A, R, H, T = Decision.CONTINUE, Decision.ADVANCE, Decision.ROLLBACK, Decision.HALT, Decision.TIMEOUT


def rules(warmup_s: float, poll_s: float, min_s: float, max_s: float, min_requests: int = 100,
          compares: bool = True) -> StageRules:
    return StageRules(warmup_s=warmup_s, poll_interval_s=poll_s, min_duration_s=min_s, max_duration_s=max_s,
                      min_requests=min_requests, compares=compares)


#: Warm-up outlasts the bake time: the no-data deadline is warm-up + one poll (130 s), not 60 s.
LONG_WARMUP = rules(100, 30, 60, 600)
#: No warm-up: the deadline is the minimum duration (300 s).
BAKE = rules(0, 30, 300, 600)
BAKE_100 = rules(0, 30, 300, 600, compares=False)
#: The maximum duration caps the deadline (250 s, before warm-up + poll = 270 s).
CAPPED = rules(240, 30, 0, 250)


@pytest.mark.parametrize(("stage", "expected_s"), [
    (rules(240, 30, 60, 3600), 270.0),  # the example
    (LONG_WARMUP, 130.0),
    (BAKE, 300.0),
    (CAPPED, 250.0),
    (rules(0, 30, 0, 600), 30.0),  # a minimum of 0 still waits one poll interval
])
def test_no_data_deadline(stage, expected_s):
    assert no_data_deadline_s(stage) == expected_s


# (rules, elapsed_s, has_data, canary requests, stable requests, guardrail breached, analysis verdict,
#  expected decision, expected rule)
CASES = [
    # 1. warm-up beats everything, even a breach and a regression
    (LONG_WARMUP, 99, True, 500, 500, True, R, C, Rule.WARMUP),
    # 2. no data: wait until the deadline, then halt; a breach cannot be seen without data
    (LONG_WARMUP, 100, False, 0, 0, False, A, C, Rule.NO_DATA),
    (LONG_WARMUP, 129.9, False, 0, 0, True, A, C, Rule.NO_DATA),
    (LONG_WARMUP, 130, False, 0, 0, False, A, H, Rule.NO_DATA),
    # 3. a guardrail beats an empty (stable) window and the analysis
    (LONG_WARMUP, 110, True, 500, 0, True, A, R, Rule.GUARDRAIL),
    (LONG_WARMUP, 110, True, 500, 500, True, H, R, Rule.GUARDRAIL),
    # 4. an empty window waits until the no-data deadline (not the bake time), then halts
    (LONG_WARMUP, 110, True, 0, 500, False, A, C, Rule.EMPTY),
    (LONG_WARMUP, 130, True, 0, 500, False, A, H, Rule.EMPTY),
    (LONG_WARMUP, 130, True, 500, 0, False, A, H, Rule.EMPTY),
    (BAKE, 0, True, 0, 0, False, C, C, Rule.EMPTY),
    (BAKE, 300, True, 0, 0, False, C, H, Rule.EMPTY),
    (CAPPED, 245, True, 0, 500, False, C, C, Rule.EMPTY),
    (CAPPED, 250, True, 0, 500, False, C, H, Rule.EMPTY),
    # at 100% no stable traffic runs: an empty stable window is not missing data
    (BAKE_100, 300, True, 500, 0, False, A, A, Rule.PROMOTION),
    (BAKE_100, 300, True, 0, 0, False, A, H, Rule.EMPTY),
    # 5. the analysis: ROLLBACK and HALT end the stage at once, before bake time and past the deadline
    (LONG_WARMUP, 110, True, 500, 500, False, R, R, Rule.ANALYSIS),
    (BAKE, 10, True, 5, 5, False, H, H, Rule.ANALYSIS),
    (BAKE, 700, True, 500, 500, False, H, H, Rule.ANALYSIS),
    # 6. promotion needs the bake time, the minimum canary requests and every metric non-inferior
    (BAKE, 299, True, 500, 500, False, A, C, Rule.OBSERVING),
    (BAKE, 300, True, 99, 500, False, A, C, Rule.OBSERVING),
    (BAKE, 300, True, 100, 500, False, A, A, Rule.PROMOTION),
    (BAKE, 300, True, 500, 500, False, C, C, Rule.OBSERVING),
    (LONG_WARMUP, 100, True, 500, 500, False, A, A, Rule.PROMOTION),
    # 7. the deadline: promotion beats it, an undecided stage times out
    (BAKE, 600, True, 100, 500, False, A, A, Rule.PROMOTION),
    (BAKE, 600, True, 99, 500, False, A, T, Rule.TIMEOUT),
    (BAKE, 600, True, 500, 500, False, C, T, Rule.TIMEOUT),
    (CAPPED, 250, True, 500, 500, False, C, T, Rule.TIMEOUT),
    # 8. otherwise keep observing
    (BAKE, 599, True, 500, 500, False, C, C, Rule.OBSERVING),
]


@pytest.mark.parametrize(("stage", "elapsed_s", "has_data", "canary", "stable", "breached", "verdict", "decision",
                          "rule"), CASES)
def test_stage_decision(stage, elapsed_s, has_data, canary, stable, breached, verdict, decision, rule):
    got = stage_decision(stage, elapsed_s, has_data=has_data, canary_requests=canary, stable_requests=stable,
                         breached=breached, verdict=verdict)
    assert (got.decision, got.rule) == (decision, rule)
    assert type(got.decision) is Decision and type(got.rule) is Rule


def test_stage_decision_on_arrays_equals_the_scalar_table():
    """Replay's call: every row at once, rule numbers per row, enum members (not strings) out."""
    columns = list(zip(*CASES, strict=True))
    field = lambda name: np.array([getattr(stage, name) for stage in columns[0]])  # noqa: E731
    stage = StageRules(warmup_s=field("warmup_s"), poll_interval_s=field("poll_interval_s"),
                       min_duration_s=field("min_duration_s"), max_duration_s=field("max_duration_s"),
                       min_requests=field("min_requests"), compares=field("compares"))
    verdicts = np.empty(len(CASES), dtype=object)
    verdicts[:] = columns[6]
    got = stage_decision(stage, np.array(columns[1], dtype=float), has_data=np.array(columns[2]),
                         canary_requests=np.array(columns[3]), stable_requests=np.array(columns[4]),
                         breached=np.array(columns[5]), verdict=verdicts)
    assert list(got.decision) == list(columns[7])
    assert list(got.rule) == list(columns[8])
    assert all(type(d) is Decision for d in got.decision) and all(type(r) is Rule for r in got.rule)


def test_screen_leaves_the_decision_to_the_analysis_only_when_no_earlier_rule_fires():
    assert screen(BAKE, 10, has_data=True, canary_requests=5, stable_requests=5, breached=False) == (C, Rule.ANALYSIS)
    assert screen(BAKE, 10, has_data=True, canary_requests=5, stable_requests=0, breached=False) == (C, Rule.EMPTY)
    assert conclude(BAKE, 10, canary_requests=5, verdict=R) == (R, Rule.ANALYSIS)


@pytest.mark.parametrize(("rollback", "halt", "all_non_inferior", "expected"), [
    (True, True, False, R),  # a regression beats missing data
    (True, False, True, R),
    (False, True, True, H),
    (False, False, True, A),
    (False, False, False, C),
])
def test_analysis_verdict(rollback, halt, all_non_inferior, expected):
    assert analysis_verdict(rollback=rollback, halt=halt, all_non_inferior=all_non_inferior) is expected


def test_analysis_verdict_on_arrays():
    got = analysis_verdict(rollback=np.array([True, False, False, False]), halt=np.array([True, True, False, False]),
                           all_non_inferior=np.array([True, True, True, False]))
    assert list(got) == [R, H, A, C]


@pytest.mark.parametrize(("canary", "stable", "compares", "expected"), [
    (0, 0, True, (True, True)),
    (5, 0, True, (False, True)),
    (0, 5, True, (True, False)),
    (5, 0, False, (False, False)),  # 100%: stable does not count
])
def test_empty_versions(canary, stable, compares, expected):
    assert empty_versions(rules(0, 30, 0, 600, compares=compares), canary, stable) == expected


RAILS = Guardrails(max_error_rate=0.05, max_latency_p99_ms=500, min_requests=50)


@pytest.mark.parametrize(("rails", "requests", "errors", "p99_ms", "expected"), [
    (RAILS, 49, 49, 900.0, (False, False)),  # below the guardrails' minimum requests
    (RAILS, 50, 3, None, (True, False)),  # 6% errors
    (RAILS, 100, 5, 500.0, (False, False)),  # at the limits is not above them
    (RAILS, 50, 2, 501.0, (False, True)),
    (RAILS, 50, 2, math.nan, (False, False)),  # no latency data
    (RAILS, 50, 50, 900.0, (True, True)),
    (Guardrails(max_error_rate=None, max_latency_p99_ms=None, min_requests=1), 50, 50, 900.0, (False, False)),
])
def test_guardrail_breaches(rails, requests, errors, p99_ms, expected):
    assert guardrail_breaches(rails, requests, errors, p99_ms) == expected


def test_guardrail_breaches_on_arrays():
    rate, p99 = guardrail_breaches(RAILS, np.array([49, 50, 50, 100]), np.array([49, 3, 2, 5]),
                                   np.array([900.0, np.nan, 501.0, 500.0]))
    assert list(rate) == [False, True, False, False] and list(p99) == [False, False, True, False]


def test_rules_of_a_spec_stage():
    spec = parse_spec({"model": "m", "endpoint": "e",
                       "stages": [{"weight": 10, "min_duration": "1m", "max_duration": "10m", "min_requests": 7},
                                  {"weight": 100, "min_duration": "0s", "max_duration": "5m"}],
                       "analysis": {"warmup": "4m", "poll_interval": "30s"}})
    first, last = StageRules.of(spec, spec.stages[0]), StageRules.of(spec, spec.stages[1])
    assert first == rules(240, 30, 60, 600, min_requests=7)
    assert last.compares is False and no_data_deadline_s(first) == 270.0
