"""End to end: whole rollout DAGs run with `airflow dags test` against the real embedded stack.

The serving layer, the traffic generator, the SQLite metrics store and the registry file are the
real ones (as `make demo` uses them); nothing is faked. The ML-aware gates (segments, late labels) run on
their own stack in test_ml_gates_e2e.py, so the two modules run on two workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from embedded_e2e import (
    invariant_violations_of,
    journal,
    register_against_the_serving_version,
    registry,
    roll_out,
)
from fast_spec import FIRST_STAGE_PCT, STAGE_MAX_DURATION_S, fast_spec

from canary.devstack.demo import local_stack, migrate, run_rollout
from canary.devstack.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

MODEL, ENDPOINT = "e2e-model", "e2e"
STAGED_MODEL = "e2e-staged"  # same endpoint and versions, no shadow test
BASE = 0.01
# v3 fails 16% of requests. The shadow test would stop it (see v5), so it is rolled out as STAGED_MODEL, whose
# spec has no shadow test: a regression only live traffic shows must be caught at the first stage.
# v5 fails 60%: the shadow test must stop it before it serves anything.
# v6 is as healthy as stable by every comparison, but 30% of its scores are outside [0, 1]: the shadow
# test's default output expectations must stop it.
# v7 answers as fast and fails as rarely as stable, but adds 0.12 to every score (a miscalibrated model whose
# predicted classes mostly stay): only the shadow test's score-shift test can see it.
FAULTS = {"v1": f"error_rate={BASE}", "v2": f"error_rate={BASE}", "v3": f"error_rate={BASE + 0.15}",
          "v4": f"error_rate={BASE}", "v5": "error_rate=0.6", "v6": f"error_rate={BASE},score_out_of_range=0.3",
          "v7": f"error_rate={BASE},prediction_shift=0.12"}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    specs = root / "specs"
    specs.mkdir()
    (specs / f"{MODEL}.yaml").write_text(yaml.safe_dump(fast_spec(MODEL, ENDPOINT)))
    # Same endpoint, metrics from a store file that does not exist: the backend builds (validate_request
    # refuses only what cannot be built), but reading it fails, so its observe task fails after traffic moved.
    broken = fast_spec("e2e-broken", ENDPOINT, shadow={"enabled": False},
                  backends={"metrics": {"name": "local", "conn_id": "missing_store"}})
    missing_store = json.dumps({"conn_type": "canary_metrics", "extra": {"path": str(root / "no-such-store.db")}})
    (specs / "e2e-broken.yaml").write_text(yaml.safe_dump(broken))
    (specs / f"{STAGED_MODEL}.yaml").write_text(yaml.safe_dump(fast_spec(STAGED_MODEL, ENDPOINT,
                                                                         shadow={"enabled": False})))
    procs = Processes()
    try:
        with local_stack(root / "stack", procs, model=MODEL, endpoint=ENDPOINT,
                         versions=("v1", "v2", "v3", "v5", "v6", "v7"), faults=FAULTS, rps=120) as stack:
            migrate(root / "airflow", stack)
            yield stack, root / "airflow", {"CANARY_SPECS_DIR": str(specs), "AIRFLOW_CONN_MISSING_STORE": missing_store}
    finally:
        procs.stop_all()


def test_good_candidate_is_promoted(e2e):
    stack, home, env = e2e
    report = run_rollout(stack, home, "v2", extra_env=env)
    assert invariant_violations_of(stack, report, MODEL) == []  # fails safe, whatever the outcome
    assert report["outcome"] == "promoted", report
    assert stack.weights() == {"v2": 100}
    assert registry(stack).champion(MODEL) == "v2"
    assert [s["decision"] for s in report["timeline"]] == ["advance", "advance"]
    assert report["shadow"]["passed"] is True
    expectations = report["shadow"]["expectations"]
    assert len(expectations) == 4 and all(e["success"] for e in expectations), expectations
    assert report["shadow"]["outputs_validated"] >= 60
    assert Path(stack.state_dir / "reports-v2" / MODEL).glob("*.md")
    history, record, looks, events = journal(report, MODEL)
    assert (record.outcome, record.candidate, record.stages_reached) == ("promoted", "v2", 2)
    assert record.started_by.value == "cli" and record.report_location.endswith(".html")
    page = Path(record.report_location).read_text()
    assert page == history.report(record.dag_id, record.run_id, "html") and "<svg" in page
    assert [lk.stage_index for lk in looks] == sorted(lk.stage_index for lk in looks)
    for stage in (0, 1):  # every stage's looks, its last one the decision the report shows
        stage_looks = [lk for lk in looks if lk.stage_index == stage]
        assert stage_looks and stage_looks[-1].decision == "advance", stage_looks
        assert all(lk.decision == "continue" for lk in stage_looks[:-1])
    # Every undecided look estimates the time to a decision once canary requests arrived after the
    # warm-up (how many looks came before that depends on the machine's speed), within the stage's time.
    warmup_s = 1.0  # fast_spec's analysis.warmup
    for lk in looks:
        if lk.decision != "continue":
            assert lk.eta_s == 0.0, lk
        elif (lk.evidence.get("canary_requests") or 0) > 0 and (lk.elapsed_s or 0.0) > warmup_s:
            max_duration_s = STAGE_MAX_DURATION_S[lk.stage_index]
            assert lk.eta_s is not None and 0.0 <= lk.eta_s <= round(max_duration_s - lk.elapsed_s, 3), lk
        else:
            assert lk.eta_s is None, lk
    assert events[("traffic", "stage_1")]["weight_pct"] == FIRST_STAGE_PCT
    assert events[("gate", "stage_2")]["action"] == "promote" and ("promote", "") in events
    assert events[("shadow", "")]["passed"] is True
    assert json.loads(history.report(record.dag_id, record.run_id, "json"))["outcome"] == "promoted"


def test_faulty_candidate_is_rolled_back_at_the_first_stage(e2e):
    stack, home, env = e2e
    before, report = roll_out(stack, home, env, STAGED_MODEL, "v3")
    assert report["outcome"] == "rolled_back", report
    assert len(report["timeline"]) == 1 and report["timeline"][0]["decision"] == "rollback"
    assert report["timeline"][0]["weight_pct"] == FIRST_STAGE_PCT
    assert stack.weights() == {before: 100}
    assert registry(stack).champion(STAGED_MODEL) == before
    tags = registry(stack).get_tags(STAGED_MODEL, "v3")
    assert tags["rollout.result"] == "rolled_back", tags
    assert tags["rollout.reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%): ") and "error_rate" in tags["rollout.reason"], tags
    _, record, looks, events = journal(report, STAGED_MODEL)
    assert (record.outcome, record.stages_reached) == ("rolled_back", 1)
    assert looks and looks[-1].decision == "rollback" and looks[-1].metric is not None
    assert all(lk.stage_index == 0 and lk.weight_pct == FIRST_STAGE_PCT for lk in looks)
    assert looks[-1].evidence["canary_requests"] > 0 and looks[-1].observed_weight_pct is not None
    assert events[("gate", "stage_1")]["action"] == "rollback" and ("rollback", "stage_1") in events


def test_shadow_test_stops_a_broken_candidate_before_it_serves(e2e):
    stack, home, env = e2e
    before = stack.weights()
    report = run_rollout(stack, home, "v5", extra_env=env)
    assert invariant_violations_of(stack, report, MODEL) == []  # fails safe, whatever the outcome
    assert report["outcome"] == "rolled_back", report
    # The sequential McNemar test stops it at the first conclusive poll, long before max_duration.
    assert report["reason"].startswith("shadow test failed: errors: candidate only failed on "), report["reason"]
    (errors,) = [t for t in report["shadow"]["tests"] if t["test"] == "errors"]
    assert errors["decision"] == "fail" and errors["e_value"] >= errors["e_threshold"]
    assert errors["candidate_only"] > 5 * errors["stable_only"]
    assert report["timeline"] == [] and report["shadow"]["summary"]["pairs"] > 0
    assert stack.weights() == before


def test_shadow_test_stops_a_candidate_whose_scores_are_shifted(e2e):
    stack, home, env = e2e
    before = stack.weights()
    report = run_rollout(stack, home, "v7", extra_env=env)
    assert invariant_violations_of(stack, report, MODEL) == []  # fails safe, whatever the outcome
    assert report["outcome"] == "rolled_back", report
    tests = {t["test"]: t for t in report["shadow"]["tests"]}
    shift = tests["score shift beyond ±0.1"]
    assert shift["decision"] == "fail" and shift["lower"] > shift["limit"], shift
    assert "its scores are shifted up" in report["reason"], report["reason"]
    # Errors and latency are stable's: neither paired test found harm.
    assert tests["errors"]["decision"] != "fail" and [t for n, t in tests.items() if n.startswith("latency")
                                                       and t["decision"] == "fail"] == []
    assert report["timeline"] == [] and stack.weights() == before


def test_shadow_test_stops_a_candidate_whose_outputs_break_an_expectation(e2e):
    stack, home, env = e2e
    before = stack.weights()
    report = run_rollout(stack, home, "v6", extra_env=env)
    assert invariant_violations_of(stack, report, MODEL) == []  # fails safe, whatever the outcome
    assert report["outcome"] == "rolled_back", report
    # Scores reported as 1 + the score are also far above stable's: the score-shift test may name them first.
    expected = "expectation expect_column_values_to_be_between(column=score, min_value=0.0, max_value=1.0) failed: "
    assert report["reason"].startswith("shadow test failed: ") and expected in report["reason"], report["reason"]
    failed = [e for e in report["shadow"]["expectations"] if not e["success"]]
    assert [(e["type"], e["kwargs"]["column"]) for e in failed] == [("expect_column_values_to_be_between", "score")]
    assert failed[0]["unexpected_count"] > 0 and all(v > 1.0 for v in failed[0]["unexpected_values"]), failed
    assert report["timeline"] == [] and stack.weights() == before
    (markdown,) = (stack.state_dir / "reports-v6" / MODEL).glob("*.md")
    assert "| all | **FAIL** |" in markdown.read_text()
    tags = registry(stack).get_tags(MODEL, "v6")
    assert tags["rollout.result"] == "rolled_back" and "expect_column_values_to_be_between" in tags["rollout.reason"]


def test_failing_task_leaves_traffic_on_stable(e2e):
    stack, home, env = e2e
    stable = register_against_the_serving_version(stack, "e2e-broken", "v4")
    broken_stack = type(stack)(state_dir=stack.state_dir, port=stack.port, token=stack.token, model="e2e-broken",
                               endpoint=ENDPOINT)
    report = run_rollout(broken_stack, home, "v4", extra_env=env)
    assert invariant_violations_of(stack, report, "e2e-broken") == []  # fails safe, whatever the outcome
    assert report["outcome"] == "failed", report
    assert "stage_1.observe" in report["reason"]
    assert stack.weights() == {stable: 100}
