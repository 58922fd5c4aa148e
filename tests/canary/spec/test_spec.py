from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from canary.errors import SpecError
from canary.spec.model import MetricKind, load_spec, parse_spec, spec_files

ROOT = Path(__file__).resolve().parents[3]

VALID = {
    "model": "fraud",
    "endpoint": "fraud",
    "stages": [{"weight": 5, "min_duration": "1m", "max_duration": "10m"}, {"weight": 25}, {"weight": 100}],
}


def problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="x.yaml")
    return info.value.problems


def with_(**changes) -> dict:
    return {**VALID, **changes}


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec(VALID)
    assert spec.dag_id == "canary_rollout__fraud"
    assert spec.stages[0].min_duration_s == 60.0 and spec.stages[0].max_duration_s == 600.0
    assert spec.analysis.alpha == 0.05
    assert spec.analysis.metrics[0].kind is MetricKind.ERROR_RATE
    assert spec.backends.conn_id("metrics") == "canary_metrics_default"
    assert spec.policy.on_timeout.value == "rollback"


@pytest.mark.parametrize(
    ("data", "location", "fragment"),
    [
        (with_(stages=[{"weight": 5}, {"weight": 25}, {"weight": 20}, {"weight": 100}]),
         "stages[2].weight", "must be greater than stages[1].weight (25)"),
        (with_(stages=[{"weight": 5}, {"weight": 50}]), "stages[1].weight", "last stage must be 100"),
        (with_(stages=[{"weight": 5, "min_duration": "10x"}, {"weight": 100}]), "stages[0].min_duration",
         "expected a duration like"),
        (with_(stages=[{"weight": 5, "min_duration": "2h", "max_duration": "1h"}, {"weight": 100}]),
         "stages[0].min_duration", "must not exceed"),
        (with_(stages=[{"weight": 0}, {"weight": 100}]), "stages[0].weight", "greater than or equal to 1"),
        (with_(stages=[]), "stages", "at least 1"),
        (with_(analysis={"alpha": 1.5}), "analysis.alpha", "less than 1"),
        (with_(analysis={"alpha": 0}), "analysis.alpha", "greater than 0"),
        (with_(surprise=1), "surprise", "unknown key"),
        (with_(stages=[{"weight": 100, "wait": "1m"}]), "stages[0].wait", "unknown key"),
        (with_(backends={"serving": {"name": "k8s"}}), "backends.serving.name", "known: local, sagemaker"),
        (with_(analysis={"metrics": [{"name": "e", "kind": "errs", "tolerance": 0.1}]}),
         "analysis.metrics[0].kind", "must be one of"),
        (with_(analysis={"metrics": [{"name": "l", "kind": "latency", "tolerance": 0.1}]}),
         "analysis.metrics[0]", "needs quantile"),
        (with_(analysis={"metrics": [{"name": "e", "kind": "error_rate", "tolerance": 0.1},
                                     {"name": "e", "kind": "kpi", "tolerance": 0.1}]}),
         "analysis.metrics[1].name", "duplicate"),
        (with_(analysis={"metrics": [{"name": "e", "kind": "error_rate", "tolerance": 0.2, "mde": 0.1}]}),
         "analysis.metrics[0].mde", "must be >= tolerance"),
        (with_(policy={"on_timeout": "pray"}), "policy.on_timeout", "must be one of"),
        (with_(schedule={"nightly_cron": "every night"}), "schedule.nightly_cron", "not a valid cron"),
        (with_(model="no spaces"), "model", "match pattern"),
        (with_(backends={"metrics": {"name": "cloudwatch"}}), "shadow.enabled", "cannot pair mirrored requests"),
        (with_(backends={"serving": {"name": "sagemaker"}}, shadow={"mirror_percent": 50}),
         "shadow.mirror_percent", "must be 100"),
        (with_(analysis={"metrics": [{"name": "k", "kind": "kpi", "tolerance": 0.6}]}), "analysis.metrics[0].mde",
         "must be < 1"),
        ({k: v for k, v in VALID.items() if k != "endpoint"}, "endpoint", "required"),
    ],
)
def test_each_kind_of_invalid_spec_names_field_and_fix(data, location, fragment):
    found = problems(data)
    assert any(loc == location and fragment in msg for loc, msg in found), found


def test_every_problem_is_reported_not_just_the_first():
    found = problems(with_(analysis={"alpha": 2}, surprise=1, stages=[{"weight": 5, "min_duration": "?"}]))
    assert {loc for loc, _ in found} >= {"analysis.alpha", "surprise", "stages[0].min_duration"}


def test_load_spec_requires_file_name_to_match_model(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(VALID))
    with pytest.raises(SpecError, match=r"other.yaml: model: must match the file name 'other'"):
        load_spec(path)


def test_load_spec_reports_yaml_syntax(tmp_path):
    path = tmp_path / "fraud.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_shipped_specs_are_valid():
    files = spec_files(ROOT / "include" / "rollouts")
    assert files, "no specs shipped"
    for path in files:
        assert load_spec(path).model == path.stem


def test_validate_cli_exit_codes_and_lines(tmp_path):
    good = tmp_path / "fraud.yaml"
    good.write_text(yaml.safe_dump(VALID))
    bad = tmp_path / "churn.yaml"
    bad.write_text(yaml.safe_dump({**VALID, "model": "churn",
                                   "stages": [{"weight": 5}, {"weight": 25}, {"weight": 20}, {"weight": 100}]}))
    ok = subprocess.run([sys.executable, "-m", "canary", "validate", str(good)], capture_output=True, text=True,
                        cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "ok (canary_rollout__fraud" in ok.stdout
    res = subprocess.run([sys.executable, "-m", "canary", "validate", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 1
    assert f"{bad}: stages[2].weight: must be greater than stages[1].weight (25)" in res.stderr


CLOUDWATCH = {"backends": {"metrics": {"name": "cloudwatch", "options": {"period_s": 60, "settle_s": 120}}},
              "shadow": {"enabled": False}, "analysis": {"warmup": "30s"}}


@pytest.mark.parametrize(("min_durations", "bad"), [
    (["5m", "5m", "5m"], []),                         # 30 + 120 + 2 x 60 = 270 s
    (["4m30s", "5m", "10m"], []),                      # exactly enough
    (["4m", "5m", "1m"], [0, 2]),
])
def test_cloudwatch_stages_must_last_long_enough_to_see_a_whole_period(min_durations, bad):
    stages = [{"weight": w, "min_duration": d, "max_duration": "1h"} for w, d in zip((5, 25, 100), min_durations, strict=True)]
    data = {**VALID, **CLOUDWATCH, "stages": stages}
    if not bad:
        assert parse_spec(data).backends.metrics.name == "cloudwatch"
        return
    found = problems(data)
    assert [field for field, _ in found] == [f"stages[{i}].min_duration" for i in bad]
    assert "must be at least warmup + settle_s + 2 x period_s (270s) with CloudWatch metrics" in found[0][1]


def test_the_cloudwatch_window_rule_uses_the_backend_default_period():
    data = {**VALID, "backends": {"metrics": {"name": "cloudwatch"}}, "shadow": {"enabled": False},
            "stages": [{"weight": 5, "min_duration": "1m"}, {"weight": 100}]}
    ((field, message),) = problems(data)  # the 100% stage keeps the 5m default
    assert field == "stages[0].min_duration" and "(120s)" in message and "got 60s" in message
