"""The one sentence: every way a rollout ends (and a running one), from literal looks, then from journals."""

from __future__ import annotations

from typing import Any

import journals
import pytest

from canary.history.model import Look
from canary.report.html import headline
from canary.report.sentence import deciding_look, outcome_sentence, running_sentence


def look(decision: str, *, weight: int = 25, stage: int = 1, elapsed_s: float = 151.0, metric: str | None = None,
         reason: str = "", metrics: list[dict[str, Any]] | None = None, eta_s: float | None = None,
         **evidence: Any) -> Look:
    ev: dict[str, Any] = {"stage": stage, "weight_pct": weight, "elapsed_s": elapsed_s, **evidence}
    if metrics is not None:
        ev["metrics"] = metrics
    return Look(dag_id="canary_rollout__m", run_id="r", stage_index=stage, look_at_s=1000.0 + elapsed_s,
                weight_pct=weight, decision=decision, reason=reason, metric=metric, elapsed_s=elapsed_s, eta_s=eta_s,
                evidence=ev)


def metric(name: str, kind: str, decision: str, **evidence: Any) -> dict[str, Any]:
    return {"metric": name, "kind": kind, "decision": decision, "reason": f"{name} says {decision}",
            "evidence": evidence}


ERROR_RATE_RB = metric("error_rate", "error_rate", "rollback", test="label", e_value=881.3, log_e_value=6.78,
                       threshold=200.0, ratio_estimate=11.4, ratio_lower=1.3712, ratio_upper=None, tolerance_ratio=1.25,
                       canary_events=10, canary_exposure=97, stable_events=9, stable_exposure=1000)
KPI_RB = metric("conversion", "kpi", "rollback", test="label", e_value=1.2e9, threshold=81.6, ratio_estimate=0.81,
                ratio_lower=0.7, ratio_upper=0.912, tolerance_ratio=0.9524, canary_events=405, canary_exposure=5000,
                stable_events=1500, stable_exposure=15000)
LATENCY_RB = metric("latency_tail", "latency", "rollback", test="label", e_value=3300.0, threshold=200.0,
                    ratio_lower=1.8, ratio_upper=4.0, tolerance_ratio=1.5, canary_events=81, canary_exposure=1000,
                    stable_events=90, stable_exposure=3000, threshold_ms=200.0)
MSPRT_RB = metric("latency_p50", "latency", "rollback", test="msprt_mean_log_latency", e_value=450.0,
                  threshold=200.0, ratio_estimate=1.254, ratio_lower=1.121, ratio_upper=1.4, tolerance_ratio=1.1)
TV_RB = metric("prediction_drift", "prediction_distribution", "rollback", test="tv_confidence_sequence",
               tv_estimate=0.1834, tv_lower=0.1412, tv_upper=0.23, tolerance=0.1)
SRM_HALT = metric("srm", "srm", "halt", test="srm", e_value=11808.4, threshold=1000.0, configured_weight_pct=25,
                  observed_weight_pct=31.24, canary_requests=3124, stable_requests=6876)
SRM_OK = metric("srm", "srm", "advance", test="srm", e_value=0.2, threshold=1000.0, configured_weight_pct=50,
                observed_weight_pct=50.1)
ERROR_RATE_OK = metric("error_rate", "error_rate", "advance", test="label", e_value=0.01, threshold=200.0,
                       ratio_lower=0.5, ratio_upper=1.0834, tolerance_ratio=2.0)
LATENCY_OK = metric("latency_tail", "latency", "advance", test="label", e_value=0.02, threshold=200.0,
                    ratio_lower=0.6, ratio_upper=1.4321, tolerance_ratio=1.5, threshold_ms=200.0)
ERROR_RATE_OPEN = metric("error_rate", "error_rate", "continue", test="label", e_value=3.1, threshold=200.0,
                         ratio_lower=0.8123, ratio_upper=1.6123, tolerance_ratio=1.25)
COUNTS = {"canary_requests": 97, "canary_errors": 10, "stable_requests": 1000, "stable_errors": 9}
POLICY = {"on_timeout": "rollback", "on_halt": "rollback", "approval": "none"}


def rolled_back(*looks: Look, **kwargs: Any) -> str:
    return outcome_sentence(outcome="rolled_back", reason=kwargs.pop("reason", "see the looks"), candidate="v2",
                            looks=looks, stages_planned=(5, 25, 100), policy=kwargs.pop("policy", POLICY), **kwargs)


@pytest.mark.parametrize(("deciding", "sentence"), [
    pytest.param(
        look("rollback", metric="error_rate", metrics=[ERROR_RATE_RB, SRM_OK], **COUNTS),
        "Rolled back at 25% after 2m31s and 97 canary requests: error rate 10.3% vs 0.9% on stable; ratio at "
        "least 1.37x (99.5% confidence sequence); evidence 881 against a threshold of 200.", id="error-rate"),
    pytest.param(
        look("rollback", metric="conversion", metrics=[KPI_RB], elapsed_s=600, **{**COUNTS, "canary_requests": 5000}),
        "Rolled back at 25% after 10m and 5,000 canary requests: conversion rate 8.1% vs 10% on stable; ratio at "
        "most 0.912x (98.8% confidence sequence); evidence 1.2e9 against a threshold of 81.6.", id="kpi"),
    pytest.param(
        look("rollback", metric="latency_tail", metrics=[LATENCY_RB], **{**COUNTS, "canary_requests": 1000}),
        "Rolled back at 25% after 2m31s and 1,000 canary requests: latency_tail (share slower than 200 ms) 8.1% vs "
        "3% on stable; ratio at least 1.8x (99.5% confidence sequence); evidence 3,300 against a threshold of 200.",
        id="latency-exceedances"),
    pytest.param(
        look("rollback", metric="latency_p50", metrics=[MSPRT_RB], **COUNTS),
        "Rolled back at 25% after 2m31s and 97 canary requests: latency_p50: geometric-mean latency 1.25x stable's, "
        "at least 1.12x (99.5% confidence sequence); evidence 450 against a threshold of 200.", id="latency-msprt"),
    pytest.param(
        look("rollback", metric="prediction_drift", metrics=[TV_RB], **COUNTS),
        "Rolled back at 25% after 2m31s and 97 canary requests: prediction_drift: prediction distribution moved, "
        "total-variation distance at least 0.14 (estimate 0.18) against a tolerance of 0.1.", id="prediction-tv"),
    pytest.param(
        look("rollback", metric="guardrail.max_error_rate", elapsed_s=30, error_rate=0.3103, limit=0.25,
             **{**COUNTS, "canary_errors": 30}),
        "Rolled back at 25% after 30s and 97 canary requests: canary error rate 31% above the 25% guardrail "
        "(30 errors in 97 requests).", id="guardrail-error-rate"),
    pytest.param(
        look("rollback", metric="guardrail.max_latency_p99_ms", elapsed_s=30, latency_p99_ms=1234.5, limit=1000.0,
             **COUNTS),
        "Rolled back at 25% after 30s and 97 canary requests: canary p99 latency 1,234 ms above the 1,000 ms "
        "guardrail.", id="guardrail-latency"),
    pytest.param(
        look("halt", metric="srm", metrics=[ERROR_RATE_OPEN, SRM_HALT], **COUNTS),
        "Halted at 25% after 2m31s and 97 canary requests: traffic split 31.2% canary vs 25% configured "
        "(sample-ratio mismatch; evidence 11,808 against a threshold of 1,000); rolled back (on_halt: rollback).",
        id="halt-srm"),
    pytest.param(
        look("halt", metric="data", elapsed_s=120, reason="no metrics data after 2m: prometheus returned no series"),
        "Halted at 25%: no metrics data after 2m: prometheus returned no series; rolled back (on_halt: rollback).",
        id="halt-no-data"),
    pytest.param(
        look("timeout", elapsed_s=3600, metrics=[ERROR_RATE_OPEN, SRM_OK], reason="undecided at the 1h deadline: "
             "error_rate", **{**COUNTS, "canary_requests": 2400}),
        "Timed out at 25% after 1h and 2,400 canary requests: the stage deadline passed with error_rate undecided "
        "(ratio between 0.812x and 1.61x, tolerance 1.25x); rolled back (on_timeout: rollback).", id="timeout"),
])
def test_a_rollback_names_the_numbers_that_decided_it(deciding, sentence):
    earlier = look("advance", weight=5, stage=0, metrics=[ERROR_RATE_OK])
    assert rolled_back(earlier, look("continue", **COUNTS), deciding) == sentence


def test_a_halt_held_for_approval_then_rejected_says_the_policy():
    halted = look("halt", metric="srm", metrics=[SRM_HALT], **COUNTS)
    assert rolled_back(halted, policy={"on_halt": "hold_for_approval"}).endswith(
        "; rolled back (on_halt: hold_for_approval).")


def test_promoted_quotes_every_metrics_bound_and_the_total_traffic():
    stage1 = look("advance", weight=25, stage=0, elapsed_s=300, metrics=[ERROR_RATE_OK, LATENCY_OK, SRM_OK],
                  canary_requests=4000)
    stage2 = look("advance", weight=100, stage=1, elapsed_s=60, canary_requests=512)
    text = outcome_sentence(outcome="promoted", reason="every stage passed (25 -> 100%)", candidate="v2",
                            looks=[stage1, stage2], stages_planned=(25, 100), duration_s=452.0)
    assert text == ("Promoted v2 after 2 stages (25% → 100%) in 7m32s and 4,512 canary requests: every metric within "
                    "tolerance at 25% (error rate ratio at most 1.08x, tolerance 2x; latency_tail ratio at most 1.43x, "
                    "tolerance 1.5x).")


def test_promoted_after_a_timeout_carries_the_warning():
    timed_out = look("timeout", weight=25, stage=0, elapsed_s=3600, metrics=[ERROR_RATE_OPEN], canary_requests=100)
    text = outcome_sentence(outcome="promoted", reason="every stage passed", candidate="v2",
                            looks=[timed_out, look("advance", weight=100, stage=1, canary_requests=50)],
                            stages_planned=(25, 100), policy={"on_timeout": "promote_with_warning"})
    assert text.endswith("; with a warning: stage 1 (25%) timed out undecided (on_timeout: promote_with_warning).")


@pytest.mark.parametrize(("kwargs", "sentence"), [
    pytest.param(dict(outcome="rolled_back", reason="shadow test failed: prediction agreement 62.0% below 80%",
                      shadow={"passed": False, "reasons": ["prediction agreement 62.0% below 80%"],
                              "summary": {"pairs": 150}}),
                 "Rolled back before any user was served: the shadow test failed on 150 mirrored requests: prediction "
                 "agreement 62.0% below 80%.", id="shadow"),
    pytest.param(dict(outcome="refused", reason="endpoint churn is busy with canary_rollout__x run r1; refused "
                                                "(on_busy: refuse)"),
                 "Refused before any traffic moved: endpoint churn is busy with canary_rollout__x run r1; refused "
                 "(on_busy: refuse).", id="refused"),
    pytest.param(dict(outcome="failed", reason="task(s) stage_1.set_traffic failed", looks=[look("continue")]),
                 "Failed at stage 2 (25%): task(s) stage_1.set_traffic failed.", id="failed"),
    pytest.param(dict(outcome="rolled_back", reason="stopped before promotion (approval rejected or run stopped)",
                      looks=[look("advance", weight=100)]),
                 "Rolled back at 100%: stopped before promotion (approval rejected or run stopped).", id="rejected"),
    pytest.param(dict(outcome="dry_run", reason="every stage passed (25 -> 100%)", stages_planned=(25, 100),
                      looks=[look("advance", stage=0, metrics=[ERROR_RATE_OK], canary_requests=40),
                             look("advance", weight=100, canary_requests=20)]),
                 "Dry run of v2 passed after 2 stages (25% → 100%) and 60 canary requests: every metric within "
                 "tolerance at 25% (error rate ratio at most 1.08x, tolerance 2x); nothing was changed.", id="dry-run"),
    pytest.param(dict(outcome="rolled_back", reason="x", dry_run=True,
                      looks=[look("rollback", metric="error_rate", metrics=[ERROR_RATE_RB], **COUNTS)]),
                 "Dry run (no traffic or registry state changed): rolled back at 25% after 2m31s and 97 canary "
                 "requests: error rate 10.3% vs 0.9% on stable; ratio at least 1.37x (99.5% confidence sequence); "
                 "evidence 881 against a threshold of 200.", id="dry-run-rolled-back"),
])
def test_other_endings(kwargs, sentence):
    assert outcome_sentence(candidate="v2", **kwargs) == sentence


def test_a_running_rollout_says_its_stage_time_and_eta():
    now = look("continue", weight=25, stage=1, elapsed_s=190, eta_s=240, reason="observing: error_rate",
               canary_requests=1234, canary_errors=12, stable_requests=3700, stable_errors=33)
    assert running_sentence(looks=[now], stages_planned=(5, 25, 100)) == (
        "Observing stage 2 of 3 (25%) for 3m10s: 1,234 canary requests, error rate 0.97% vs 0.89% on stable; "
        "decision expected in about 4m.")
    # between looks the time in the stage keeps counting
    assert "for 3m20s" in running_sentence(looks=[now], stage_started_s=1000.0, now_s=1200.0)
    waiting = look("continue", elapsed_s=2, reason="warming up (2s of 3s)")
    assert running_sentence(looks=[waiting]) == "Observing stage 2 (25%) for 2s: warming up (2s of 3s)."
    assert running_sentence(looks=[], stages_planned=(25, 100)) == "Starting (25% → 100%): no look at the canary yet."


def test_the_deciding_look_is_the_last_that_stopped_a_stage():
    looks = [look("continue"), look("rollback", metric="error_rate"), look("continue")]
    assert deciding_look(looks) is looks[1]
    assert deciding_look([look("advance")]) is None


@pytest.mark.parametrize(("scenario", "start", "contains"), [
    ("promotion", "Promoted v2 after 3 stages (25% → 50% → 100%)", "every metric within tolerance at 50%"),
    ("rollback", "Rolled back at 25% after", "on stable over 2 stages; ratio at least"),  # the test pools stages
    ("regression", "Rolled back at 50% after 20s and 2,550 canary requests: error rate 2.2% vs 1% on stable over 2 "
                   "stages; ratio at least 1.1x (99.6% confidence sequence); evidence 11,530 against a threshold of 222",
     "."),
    ("guardrail", "Rolled back at 50% after 2s and 20 canary requests: canary error rate 60% above the 50% guardrail",
     "(12 errors in 20 requests)"),
    ("srm_halt", "Halted at 50% after", "traffic split 40% canary vs 50% configured (sample-ratio mismatch"),
    ("no_data_halt", "Halted at 50%: no metrics data after", "prometheus returned no series for v2"),
    ("timeout", "Timed out at 50% after 20s", "the stage deadline passed with error_rate undecided"),
    ("shadow_failure", "Rolled back before any user was served: the shadow test failed on 150 mirrored requests",
     "prediction agreement: 56 of 148 answered pairs predict a different class; disagreement at least 22.8%"),
    ("running", "Observing stage 2 of 3 (50%) for", "decision expected in about"),
    ("segment_rollback", "Rolled back at 25% after 30s and 1,350 canary requests: error rate in segment device=web "
                         "5.9% vs 0.99% on stable; ratio at least 1.13x", "evidence 3,571 against a threshold of 1,333"),
])
def test_the_journals_sentences(scenario, start, contains):
    journal = journals.SCENARIOS[scenario]()
    text = headline(journal.record, journal.looks, journal.events, report=journal.report)
    assert text.startswith(start), text
    assert contains in text, text
