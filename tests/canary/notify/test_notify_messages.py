"""What people are told, per event: subject, one or two lines with the deciding numbers, the rollout tab link."""

from __future__ import annotations

import pytest

from canary.notify import messages
from canary.notify.messages import RunRef, evidence_line, format_pct, rollout_url
from canary.notify.stuck import StuckBudget
from canary.policy.decisions import Action, Decision, GateResult, Outcome
from canary.spec.model import NotifyEvent

REF = RunRef(model="fraud-detector", dag_id="canary_rollout__fraud-detector",
             run_id="manual__2026-12-02T10:00:00+00:00", base_url="https://airflow.example.com/",
             candidate="v7", stable="v6")
LINK = ("https://airflow.example.com/dags/canary_rollout__fraud-detector/runs/"
        "manual__2026-12-02T10%3A00%3A00%2B00%3A00/plugin/rollout")
EVIDENCE = {"stage": 1, "weight_pct": 25, "elapsed_s": 751.0, "canary_requests": 2000, "canary_errors": 82,
            "stable_requests": 20000, "stable_errors": 200, "metrics": []}


def test_the_link_is_the_runs_rollout_tab_with_the_run_id_escaped():
    assert REF.link == LINK
    assert rollout_url("http://localhost:8080", "d", "r") == "http://localhost:8080/dags/d/runs/r/plugin/rollout"


@pytest.mark.parametrize(("rate", "text"), [(0.094, "9.4%"), (0.0004, "0.04%"), (0.0, "0%"), (1.0, "100.0%"),
                                            (0.041, "4.1%")])
def test_rates_are_rounded_for_reading(rate, text):
    assert format_pct(rate) == text


@pytest.mark.parametrize(("evidence", "line"), [
    (EVIDENCE, "Canary 4.1% errors (82/2,000) vs stable 1.0% (200/20,000) after 12m31s."),
    ({"canary_requests": 10, "canary_errors": 0}, "Canary 0% errors (0/10)."),
    ({"canary_requests": 0, "canary_errors": 0}, None),
    ({}, None),
])
def test_the_evidence_line_has_the_headline_numbers(evidence, line):
    assert evidence_line(evidence) == line


def gate(decision: Decision, reason: str, evidence=EVIDENCE) -> GateResult:
    return GateResult(decision=decision, reason=reason, metric="error_rate", evidence=evidence)


ROLLBACK_WHY = "error_rate: e-value 412 >= 40: canary/stable ratio above 1 (CS bound 2.7)"
NUMBERS = "Canary 4.1% errors (82/2,000) vs stable 1.0% (200/20,000) after 12m31s."


@pytest.mark.parametrize(("index", "decision", "action", "why", "events", "subject", "lines"), [
    (1, Decision.ROLLBACK, Action.ROLLBACK, ROLLBACK_WHY, ("stage_decided",),
     "fraud-detector: stage 2 of 4 (25%) failed, rolling back v7",
     ("error_rate: e-value 412 >= 40: canary/stable ratio above 1 (CS bound 2.7).",
      f"{NUMBERS} All traffic returns to v6.")),
    (0, Decision.ADVANCE, Action.NEXT_STAGE, "every metric within tolerance after 2000 canary requests in 12m31s",
     ("stage_decided",), "fraud-detector: stage 1 of 4 (25%) passed, moving to stage 2",
     ("Every metric within tolerance after 2000 canary requests in 12m31s.", NUMBERS)),
    (3, Decision.ADVANCE, Action.PROMOTE, "every metric within tolerance", ("stage_decided",),
     "fraud-detector: stage 4 of 4 (25%) passed, promoting v7", ("Every metric within tolerance.", NUMBERS)),
    (1, Decision.HALT, Action.ROLLBACK, "halted: srm: e-value 1.2e+04 >= 1e+03", ("halted", "stage_decided"),
     "fraud-detector: stage 2 of 4 (25%) halted, rolling back v7",
     ("Halted: srm: e-value 1.2e+04 >= 1e+03.", f"{NUMBERS} All traffic returns to v6.")),
    (1, Decision.HALT, Action.HOLD, "halted, waiting for approval: no metrics data after 5m",
     ("approval_needed", "halted", "stage_decided"), "fraud-detector: stage 2 of 4 (25%) needs approval",
     ("Halted, waiting for approval: no metrics data after 5m.",
      f"{NUMBERS} Approve or reject it in the run's approve task.")),
    (3, Decision.ADVANCE, Action.HOLD, "every metric within tolerance", ("approval_needed", "stage_decided"),
     "fraud-detector: stage 4 of 4 (25%) needs approval",
     ("Every metric within tolerance.", f"{NUMBERS} Approve or reject it in the run's approve task.")),
    (2, Decision.TIMEOUT, Action.ROLLBACK, "timed out: undecided at the 1h deadline: latency_p99",
     ("stage_decided",), "fraud-detector: stage 3 of 4 (25%) failed, rolling back v7",
     ("Timed out: undecided at the 1h deadline: latency_p99.", f"{NUMBERS} All traffic returns to v6.")),
])
def test_a_gate_notice_says_what_happened_and_why(index, decision, action, why, events, subject, lines):
    notice = messages.gate_decided(REF, stage_index=index, stage_count=4, weight_pct=25,
                                   result=gate(decision, why.split(": ", 1)[-1]), action=action, why=why)
    assert [e.value for e in notice.events] == list(events)
    assert (notice.subject, notice.lines, notice.link) == (subject, lines, LINK)
    assert notice.facts["stage"] == index + 1 and notice.facts["action"] == action.value


def test_a_gate_notice_without_traffic_numbers_still_says_what_comes_next():
    notice = messages.gate_decided(REF, stage_index=0, stage_count=2, weight_pct=10,
                                   result=gate(Decision.HALT, "no metrics data after 5m", evidence={}),
                                   action=Action.ROLLBACK, why="halted: no metrics data after 5m")
    assert notice.lines == ("Halted: no metrics data after 5m.", "All traffic returns to v6.")


@pytest.mark.parametrize(("outcome", "event", "subject", "first"), [
    (Outcome.PROMOTED, "promoted", "fraud-detector: v7 promoted", "v7 is the champion now; v6 is retired."),
    (Outcome.ROLLED_BACK, "rolled_back", "fraud-detector: v7 rolled back", "All traffic is back on v6."),
    (Outcome.FAILED, "failed", "fraud-detector: rollout of v7 failed",
     "Traffic was returned to v6 unless another rollout owns the endpoint."),
    (Outcome.DRY_RUN, "promoted", "fraud-detector: v7 would be promoted",
     "Dry run: no traffic or registry state was changed."),
])
def test_an_outcome_notice_per_outcome(outcome, event, subject, first):
    notice = messages.finished(REF, outcome, "stage 2 (25%): error_rate: e-value 412 >= 40")
    assert notice.event.value == event
    assert notice.subject == subject
    assert notice.lines == (first, "Why: stage 2 (25%): error_rate: e-value 412 >= 40.")
    assert notice.text().endswith(f"\nDetails: {LINK}")


def test_started_refused_and_stuck_notices():
    started = messages.started(REF, [5, 25, 50, 100], reason="nightly pick-up")
    assert (started.event, started.subject) == (NotifyEvent.STARTED, "fraud-detector: rollout of v7 started")
    assert started.lines == ("Rolling out v7 against champion v6: 5% -> 25% -> 50% -> 100% canary traffic.",
                             "Reason: nightly pick-up.")
    refused = messages.refused(RunRef(model="m", dag_id="d", run_id="r", base_url="http://a"), "version: unknown 'v9'")
    assert (refused.event, refused.subject) == (NotifyEvent.FAILED, "m: rollout of the candidate refused")
    assert refused.lines == ("Refused before any traffic moved: version: unknown 'v9'.",)
    budget = StuckBudget(lock_wait_s=3600, shadow_s=300, stages_s=12600, margin_s=4125)
    stuck = messages.stuck(REF, budget)
    assert (stuck.event, stuck.subject) == (NotifyEvent.STUCK, "fraud-detector: rollout of v7 still running after "
                                                               "5h43m45s")
    assert stuck.lines[0] == ("It should have ended within 5h43m45s (stage deadlines 3h30m + shadow test 5m + "
                              "endpoint wait 1h + margin 1h8m45s).")


def test_a_dry_run_says_so_in_the_subject_and_subjects_are_one_ascii_line():
    ref = RunRef(model="m", dag_id="d", run_id="r", base_url="http://a", candidate="v2 \u2192 new\n", stable="v1",
                 dry_run=True)
    notice = messages.finished(ref, Outcome.ROLLED_BACK, "stopped")
    assert notice.subject == "[dry run] m: v2 ? new  rolled back"
    assert notice.subject.isascii() and "\n" not in notice.subject


def test_the_payload_is_one_json_object_with_the_facts():
    import json

    payload = messages.finished(REF, Outcome.PROMOTED, "every stage passed").payload()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["event"] == "promoted" and payload["events"] == ["promoted"]
    assert payload["text"].startswith("fraud-detector: v7 promoted\nv7 is the champion now")
    assert (payload["model"], payload["candidate"], payload["stable"], payload["outcome"], payload["link"]) == \
        ("fraud-detector", "v7", "v6", "promoted", LINK)


def test_a_stalled_stage_says_what_stopped_and_what_to_check():
    from canary.notify.stuck import Stall, StallKind

    stall = Stall(kind=StallKind.NO_LOOKS, stage_index=1, weight_pct=25, stage_started_at_s=100.0,
                  last_look_at_s=160.0, silent_s=420.0, stage_running_s=480.0, poll_interval_s=30.0, missed_polls=5,
                  max_duration_s=1800.0)
    notice = messages.stalled(REF, stall)
    assert (notice.event, notice.events) == (NotifyEvent.STUCK, (NotifyEvent.STUCK,))
    assert notice.subject == "fraud-detector: rollout of v7 stalled at stage 2 (25%): no look for 7m"
    assert notice.lines == (
        "Stage 2 (25%) has had no look for 7m since its last look: it should be polled every 30s (alert after 5 "
        "missed polls).",
        "Check that a triggerer is running (airflow jobs check --job-type TriggererJob) and the observe task's "
        "log; traffic stays as it is until the stage decides.")
    assert notice.facts["stall"] == "no_looks" and notice.facts["stage"] == 2
    late = messages.stalled(REF, Stall(**{**stall.__dict__, "kind": StallKind.PAST_DEADLINE}))
    assert late.subject == "fraud-detector: rollout of v7 undecided at stage 2 (25%) past its deadline"
