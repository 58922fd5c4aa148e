"""End to end: the ML-aware gates (per-segment analysis, prediction quality on late labels) on the embedded stack.

Whole rollout DAGs run with `airflow dags test` against the real serving layer, traffic generator (which
sends device and region attributes, and true labels late), SQLite metrics store and registry file.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from embedded_e2e import journal, roll_out
from fast_spec import FIRST_STAGE_PCT, fast_spec

from canary.devstack.demo import local_stack, migrate
from canary.devstack.processes import Processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ENDPOINT = "e2e-ml"
BASE = 0.02
# v2 fails four times as often as stable on the web (20% of users: 8% against 2%) and a quarter as often
# elsewhere (0.5%), so its overall error rate is stable's (0.8 x 0.5% + 0.2 x 8% = 2%): only the per-segment
# test (SEGMENTS_MODEL) can catch it. (0.0754 composed with the 0.5% everywhere is 8%.) At three times (the
# fast spec's tolerance) the web test needs about 60 s at 120 requests/s; four times leaves a loaded machine
# more room before the stage's 3-minute deadline.
# v3 flips half of its predictions (as fast and as error-free as stable: only the labels show it), v4 is as
# accurate as stable.
# v5 fails half the requests from ap-south (20% of users) and is healthy elsewhere: TARGETED_MODEL exposes it to
# eu-west and us-east only in its first stage, which it passes; the next stage exposes everyone and rolls it back.
FAULTS = {"v1": f"error_rate={BASE}", "v2": ["error_rate=0.005", "error_rate=0.0754,when.device=web"],
          "v3": f"error_rate={BASE},score_flip=0.5", "v4": f"error_rate={BASE}",
          "v5": [f"error_rate={BASE}", "error_rate=0.5,when.region=ap-south"]}
SEGMENTS_MODEL = "e2e-segments"  # per-device analysis, no shadow test
# The traffic sends the true label of half the answered requests 2 s after the answer, and every conversion
# (more likely when the prediction was right) as a business outcome as late. QUALITY_MODEL gates on wrong
# predictions among labelled requests at least 3 s old, and on conversions among served requests as old.
QUALITY_MODEL = "e2e-quality"
LABELS = (0.5, 2.0)
TARGETED_MODEL = "e2e-targeted"
TARGET = {"region": ["eu-west", "us-east"]}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-ml")
    specs = root / "specs"
    specs.mkdir()
    segments = fast_spec(SEGMENTS_MODEL, ENDPOINT, shadow={"enabled": False})
    # require_each (the default): promotion waits for non-inferiority in every segment, so a regression in one
    # is found before the stage advances on the overall evidence.
    segments["analysis"]["segments"] = {"by": "device", "values": ["android", "ios", "web"]}
    (specs / f"{SEGMENTS_MODEL}.yaml").write_text(yaml.safe_dump(segments))
    quality = fast_spec(QUALITY_MODEL, ENDPOINT, shadow={"enabled": False})
    quality["analysis"]["metrics"] += [
        {"name": "accuracy", "kind": "prediction_quality", "tolerance": 0.5, "mde": 1.0, "label_delay": "3s"},
        # Conversions sent as a business outcome, as late as the labels (more likely when the prediction was
        # right): a drop of up to half is tolerated, so the accuracy test is the one that stops v3.
        {"name": "conversion", "kind": "kpi", "outcome": "conversion", "tolerance": 0.5, "mde": 0.8,
         "label_delay": "3s"}]
    (specs / f"{QUALITY_MODEL}.yaml").write_text(yaml.safe_dump(quality))
    targeted = fast_spec(TARGETED_MODEL, ENDPOINT, shadow={"enabled": False}, targeting={"match": TARGET, "stages": 1})
    first, last = targeted["stages"]
    targeted["stages"] = [first, {**last, "weight": 75, "max_duration": "60s"}, last]
    (specs / f"{TARGETED_MODEL}.yaml").write_text(yaml.safe_dump(targeted))
    procs = Processes()
    try:
        with local_stack(root / "stack", procs, model=SEGMENTS_MODEL, endpoint=ENDPOINT,
                         versions=("v1", "v2", "v3", "v4", "v5"), labels=LABELS, outcome="conversion", faults=FAULTS,
                         rps=120) as stack:
            migrate(root / "airflow", stack)
            yield stack, root / "airflow", {"CANARY_SPECS_DIR": str(specs)}
    finally:
        procs.stop_all()


def test_a_regression_on_one_device_is_rolled_back_naming_the_segment(e2e):
    stack, home, env = e2e
    before, report = roll_out(stack, home, env, SEGMENTS_MODEL, "v2")
    assert report["outcome"] == "rolled_back", report
    assert report["reason"].startswith(f"stage 1 ({FIRST_STAGE_PCT}%): error_rate in segment device=web: e-value "), \
        report["reason"]
    assert stack.weights() == {before: 100}
    _, record, looks, _ = journal(report, SEGMENTS_MODEL)
    last = looks[-1]
    assert last.decision == "rollback" and last.metric == "error_rate in segment device=web"
    tests = {m.get("label", m["metric"]): m for m in last.evidence["metrics"]}
    # Overall the canary fails as often as stable: its test did not fire, nor does its confidence sequence place
    # the ratio beyond the tolerance (ratio 3). The other devices are better than stable.
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
    before, report = roll_out(stack, home, env, QUALITY_MODEL, "v3")
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
    # Its users convert less (they act on worse predictions): the outcome KPI sees it, from the same late feedback.
    conversion = tests["conversion"]["evidence"]
    assert conversion["outcome"] == "conversion" and conversion["canary_exposure"] > accuracy["canary_exposure"]
    assert conversion["canary_events"] / conversion["canary_exposure"] < \
        conversion["stable_events"] / conversion["stable_exposure"], conversion


def test_a_targeted_first_stage_exposes_only_its_population_and_the_next_stage_everyone(e2e):
    stack, home, env = e2e
    before, report = roll_out(stack, home, env, TARGETED_MODEL, "v5")
    assert report["outcome"] == "rolled_back", report
    assert [s["decision"] for s in report["timeline"]] == ["advance", "rollback"], report["timeline"]
    assert report["reason"].startswith("stage 2 (75%): error_rate: e-value "), report["reason"]
    assert stack.weights() == {before: 100}
    history, record, looks, _ = journal(report, TARGETED_MODEL)
    traffic = {e.key: e for e in history.events(record.dag_id, record.run_id) if e.kind == "traffic"}
    assert traffic["stage_1"].data["targeting"] == TARGET and traffic["stage_2"].data["targeting"] is None
    with closing(sqlite3.connect(stack.metrics_db)) as db:
        def canary_requests(region: str, start_s: float, end_s: float) -> int:
            return db.execute("SELECT COUNT(*) FROM requests WHERE version = 'v5' AND mirrored = 0 AND ts >= ? "
                              "AND ts < ? AND json_extract(attributes, '$.region') = ?",
                              (start_s, end_s, region)).fetchone()[0]

        # Stage 1 runs from its traffic event to its deciding look. (Not to stage 2's traffic event: that is
        # recorded once stage 2's split is in effect, so requests just before it may already be stage 2's; a
        # clean-clone run counted one ap-south request there.)
        decided_at_s = max(lk.look_at_s for lk in looks if lk.stage_index == 0)
        first_stage = (traffic["stage_1"].at_s, decided_at_s)
        assert canary_requests("ap-south", *first_stage) == 0  # nobody outside the population saw it
        assert canary_requests("eu-west", *first_stage) > 100 and canary_requests("us-east", *first_stage) > 100
        assert canary_requests("ap-south", traffic["stage_2"].at_s, record.finished_at_s + 60) > 0
    # The first stage compared canary and stable on the targeted requests only, where the split is the
    # configured 50% (over every request it would be 50% of 80%, 40%, and the sample-ratio check would halt).
    first = [lk for lk in looks if lk.stage_index == 0][-1]
    assert first.decision == "advance" and first.evidence["canary_requests"] > 0
    assert abs(first.observed_weight_pct - first.weight_pct) < 4, first.evidence
    page = Path(record.report_location).read_text()
    assert "50% of requests with region in [eu-west, us-east]" in page


def test_an_equally_accurate_candidate_is_promoted_on_its_labels(e2e):
    # Last in the module: it moves the endpoint to v4, the other tests' rollouts compare with v1.
    stack, home, env = e2e
    _, report = roll_out(stack, home, env, QUALITY_MODEL, "v4")
    assert report["outcome"] == "promoted", report
    assert stack.weights() == {"v4": 100}
    _, _, looks, _ = journal(report, QUALITY_MODEL)
    first_stage = [lk for lk in looks if lk.stage_index == 0]
    accuracy = {m["metric"]: m for m in first_stage[-1].evidence["metrics"]}["accuracy"]
    assert accuracy["decision"] == "advance" and accuracy["evidence"]["ratio_upper"] <= 1.5, accuracy
    conversion = {m["metric"]: m for m in first_stage[-1].evidence["metrics"]}["conversion"]
    assert conversion["decision"] == "advance" and conversion["evidence"]["canary_events"] > 0, conversion
    assert conversion["evidence"]["tolerance_ratio"] == 0.5, conversion  # canary/stable: a drop of half at most
