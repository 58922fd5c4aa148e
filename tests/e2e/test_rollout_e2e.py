"""End to end: whole rollout DAGs run with `airflow dags test` against the real embedded stack.

The serving layer, the traffic generator, the SQLite metrics store and the registry file are the
real ones (as `make demo` uses them); nothing is faked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fast_spec import FIRST_STAGE_PCT, STAGE_MAX_DURATION_S, fast_spec

from canary.backends.base import ConnInfo
from canary.devstack.demo import local_stack, migrate, run_rollout, seed_registry
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
# v8 fails like stable everywhere but on the web (20% of users), where it fails 8% of requests: 2.4% overall,
# within the error-rate tolerance (ratio 3), so only the per-segment test (SEGMENTS_MODEL) can catch it.
FAULTS = {"v1": f"error_rate={BASE}", "v2": f"error_rate={BASE}", "v3": f"error_rate={BASE + 0.15}",
          "v4": f"error_rate={BASE}", "v5": "error_rate=0.6", "v6": f"error_rate={BASE},score_out_of_range=0.3",
          "v7": f"error_rate={BASE},prediction_shift=0.12",
          "v8": [f"error_rate={BASE}", "error_rate=0.07,when.device=web"],
          "v9": f"error_rate={BASE},score_flip=0.5", "v10": f"error_rate={BASE}"}
SEGMENTS_MODEL = "e2e-segments"  # same endpoint, per-device analysis, no shadow test
# The traffic sends the true label of half the answered requests 2 s after the answer. QUALITY_MODEL gates on
# wrong predictions among labelled requests at least 3 s old: v9 flips half of its predictions (as fast and
# as error-free as stable: only the labels show it), v10 is as accurate as stable.
QUALITY_MODEL = "e2e-quality"
LABELS = (0.5, 2.0)


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
    segments = fast_spec(SEGMENTS_MODEL, ENDPOINT, shadow={"enabled": False})
    segments["analysis"]["segments"] = {"by": "device", "values": ["android", "ios", "web"], "require_each": False}
    (specs / f"{SEGMENTS_MODEL}.yaml").write_text(yaml.safe_dump(segments))
    quality = fast_spec(QUALITY_MODEL, ENDPOINT, shadow={"enabled": False})
    quality["analysis"]["metrics"].append({"name": "accuracy", "kind": "prediction_quality", "tolerance": 0.5,
                                           "mde": 1.0, "label_delay": "3s"})
    (specs / f"{QUALITY_MODEL}.yaml").write_text(yaml.safe_dump(quality))
    procs = Processes()
    try:
        with local_stack(root / "stack", procs, model=MODEL, endpoint=ENDPOINT,
                         versions=("v1", "v2", "v3", "v5", "v6", "v7", "v8", "v9", "v10"), labels=LABELS,
                         faults=FAULTS, rps=120) as stack:
            migrate(root / "airflow", stack)
            yield stack, root / "airflow", {"CANARY_SPECS_DIR": str(specs), "AIRFLOW_CONN_MISSING_STORE": missing_store}
    finally:
        procs.stop_all()


def registry(stack):
    from canary.backends.local_registry import LocalModelRegistry

    return LocalModelRegistry(ConnInfo(conn_id="t", extra={"path": str(stack.registry_file)}))


def register_against_the_serving_version(stack, model: str, candidate: str) -> str:
    """Register ``model`` with the version serving the endpoint now as its champion, and ``candidate``."""
    (serving,) = [v for v, w in stack.weights().items() if w == 100]
    seed_registry(stack, (serving, candidate), model=model)
    return serving


def journal(report, model: str = MODEL):
    """Return the run's record, looks and events from the rollout history the run wrote (this test's store)."""
    from canary.history import open_history
    from canary.spec import defaults

    history = open_history()  # CANARY_HISTORY_URL: the test's own store, inherited by `airflow dags test`
    dag_id = defaults.rollout_dag_id(model)
    record = history.rollout(dag_id, report["run_id"])
    assert record is not None, f"no history of {dag_id}/{report['run_id']} in {history.where()}"
    events = {(e.kind, e.key): e.data for e in history.events(dag_id, report["run_id"])}
    return history, record, history.looks(dag_id, report["run_id"]), events


def test_good_candidate_is_promoted(e2e):
    stack, home, env = e2e
    report = run_rollout(stack, home, "v2", extra_env=env)
    assert report["outcome"] == "promoted", report
    assert stack.weights() == {"v2": 100}
    assert registry(stack).champion(MODEL) == "v2"
    assert [s["decision"] for s in report["timeline"]] == ["advance", "advance"]
    assert report["shadow"]["passed"] is True
    expectations = report["shadow"]["expectations"]
    assert len(expectations) == 4 and all(e["success"] for e in expectations), expectations
    assert report["shadow"]["outputs_validated"] >= 60
    assert Path(stack.state_dir / "reports-v2" / MODEL).glob("*.md")
    history, record, looks, events = journal(report)
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
    before = register_against_the_serving_version(stack, STAGED_MODEL, "v3")
    report = run_rollout(stack, home, "v3", extra_env=env, model=STAGED_MODEL)
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


def test_a_regression_on_one_device_is_rolled_back_naming_the_segment(e2e):
    stack, home, env = e2e
    before = register_against_the_serving_version(stack, SEGMENTS_MODEL, "v8")
    report = run_rollout(stack, home, "v8", extra_env=env, model=SEGMENTS_MODEL)
    assert report["outcome"] == "rolled_back", report
    assert report["reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%): error_rate in segment device=web: e-value "), \
        report["reason"]
    assert stack.weights() == {before: 100}
    _, record, looks, _ = journal(report, SEGMENTS_MODEL)
    last = looks[-1]
    assert last.decision == "rollback" and last.metric == "error_rate in segment device=web"
    tests = {m.get("label", m["metric"]): m for m in last.evidence["metrics"]}
    # Overall the canary (2.4% vs 1%) is within tolerance (ratio 3): its test did not fire, nor does its
    # confidence sequence place the ratio beyond the tolerance. (Its point estimate after a few hundred
    # canary requests is noisy: one run read 3.3.) The other devices look like stable.
    overall = tests["error_rate"]
    assert overall["decision"] != "rollback" and overall["evidence"]["ratio_lower"] < 3.0, overall
    web = tests["error_rate in segment device=web"]["evidence"]
    assert web["canary_share"] == pytest.approx(0.2, abs=0.08) and web["ratio_lower"] > 1.0, web
    for device in ("android", "ios"):
        assert tests[f"error_rate in segment device={device}"]["decision"] != "rollback"
    assert {f"srm in segment device={d}" for d in ("android", "ios", "web")} <= set(tests)
    page = Path(record.report_location).read_text()
    assert 'id="segments"' in page and "error rate in segment device=web" in page


def test_a_less_accurate_candidate_is_rolled_back_once_its_labels_arrive(e2e):
    stack, home, env = e2e
    before = register_against_the_serving_version(stack, QUALITY_MODEL, "v9")
    report = run_rollout(stack, home, "v9", extra_env=env, model=QUALITY_MODEL)
    assert report["outcome"] == "rolled_back", report
    assert report["reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%): accuracy: e-value "), report["reason"]
    assert stack.weights() == {before: 100}
    _, _, looks, _ = journal(report, QUALITY_MODEL)
    tests = {m["metric"]: m for m in looks[-1].evidence["metrics"]}
    accuracy, errors = tests["accuracy"]["evidence"], tests["error_rate"]
    assert errors["decision"] != "rollback"  # it fails no more often than stable: only the labels tell
    assert accuracy["canary_exposure"] > 0 and accuracy["label_delay_s"] == 3.0
    assert accuracy["canary_events"] / accuracy["canary_exposure"] > 1.3 * accuracy["stable_events"] / \
        accuracy["stable_exposure"], accuracy
    # Labels lag the requests: the labelled requests are fewer than those served in the window.
    assert accuracy["canary_exposure"] < looks[-1].evidence["canary_requests"]


def test_shadow_test_stops_a_broken_candidate_before_it_serves(e2e):
    stack, home, env = e2e
    before = stack.weights()
    report = run_rollout(stack, home, "v5", extra_env=env)
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
    assert report["outcome"] == "failed", report
    assert "stage_1.observe" in report["reason"]
    assert stack.weights() == {stable: 100}


def test_an_equally_accurate_candidate_is_promoted_on_its_labels(e2e):
    # Last in the module: it moves the endpoint to v10, the other tests' rollouts compare with v2.
    stack, home, env = e2e
    register_against_the_serving_version(stack, QUALITY_MODEL, "v10")
    report = run_rollout(stack, home, "v10", extra_env=env, model=QUALITY_MODEL)
    assert report["outcome"] == "promoted", report
    assert stack.weights() == {"v10": 100}
    _, _, looks, _ = journal(report, QUALITY_MODEL)
    first_stage = [lk for lk in looks if lk.stage_index == 0]
    accuracy = {m["metric"]: m for m in first_stage[-1].evidence["metrics"]}["accuracy"]
    assert accuracy["decision"] == "advance" and accuracy["evidence"]["ratio_upper"] <= 1.5, accuracy
