"""``canary validate``: one pass reports the field problems and the cross-field problems among valid fields."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from canary.cli.validate import run_validate

STAGES = [{"weight": 5, "min_duration": "1m", "max_duration": "10m"}, {"weight": 25}, {"weight": 100}]
CLOUDWATCH = {"name": "cloudwatch", "options": {"period_s": 60, "settle_s": 120}}


def spec(**changes) -> dict:
    return {"model": "fraud", "endpoint": "fraud", "stages": STAGES, **changes}


def validate(tmp_path: Path, data: dict, capsys) -> tuple[int, list[str]]:
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(data))
    code = run_validate(argparse.Namespace(paths=[str(path)]))
    lines = capsys.readouterr().err.splitlines()
    return code, [line.removeprefix(f"{path}: ") for line in lines]


@pytest.mark.parametrize(("data", "expected"), [
    # a field problem elsewhere, a cross-field problem in the stages
    (spec(owner=3, stages=[{"weight": 50}, {"weight": 20}, {"weight": 100}]),
     ["owner: must be a valid string",
      "stages[1].weight: must be greater than stages[0].weight (50)"]),
    # a field problem in one stage, min_duration > max_duration in another
    (spec(stages=[{"weight": 5, "min_requests": -1}, {"weight": 100, "min_duration": "20m", "max_duration": "10m"}]),
     ["stages[0].min_requests: must be greater than or equal to 0",
      "stages[1].min_duration: must not exceed stages[1].max_duration (600s)"]),
    # a field problem in shadow, the CloudWatch window rule (warmup 0 + settle 120 s + 2 x 60 s = 240 s)
    (spec(backends={"metrics": CLOUDWATCH}, shadow={"enabled": False, "requests": 0}),
     ["shadow.requests: must be greater than or equal to 1",
      "stages[0].min_duration: must be at least warmup + settle_s + 2 x period_s (240s) with CloudWatch metrics, "
      "got 60s: earlier, no whole period is in the window and the stage halts on missing data"]),
    # a mistyped backend option and a cross-field problem: both in one pass
    (spec(backends={"metrics": {"name": "prometheus", "options": {"timeout": 5}}}, shadow={"enabled": False},
          stages=[{"weight": 5}, {"weight": 50}]),
     ["backends.metrics.options.timeout: unknown prometheus metrics option (set to 5); allowed: metric_prefix, "
      "version_label, endpoint_label, mirrored_label, extra_matchers, latency_unit, lookback_s, timeout_s, retries, "
      "backoff_s, requests_metric, errors_metric, latency_metric, kpi_metric, prediction_bins_metric, bin_label, "
      "segment_label",
      "stages[1].weight: the last stage must be 100 (full promotion), got 50"]),
])
def test_one_pass_reports_the_field_problem_and_the_cross_field_problem(tmp_path, capsys, data, expected):
    code, lines = validate(tmp_path, data, capsys)
    assert code == 1
    assert lines == expected


@pytest.mark.parametrize(("data", "expected"), [
    # stage 0's weight is invalid: no "must be greater than stages[0].weight" judged on a stand-in value
    (spec(stages=[{"weight": "x"}, {"weight": 100}]),
     ["stages[0].weight: must be a valid integer, unable to parse string as an integer"]),
    # min_duration is invalid: the default (5m) must not stand in for it against max_duration 1m
    (spec(stages=[{"weight": 5, "min_duration": "soon", "max_duration": "1m"}, {"weight": 100}]),
     ["stages[0].min_duration: expected a duration like '30s', '10m', '2h' or '1h30m', got 'soon'"]),
    # invalid CloudWatch options: the window rule does not guess the period
    (spec(backends={"metrics": {"name": "cloudwatch", "options": {"period_s": 7}}}, shadow={"enabled": False}),
     ["backends.metrics.options.period_s: must be 1, 5, 10, 30 or a multiple of 60, got 7"]),
])
def test_a_cross_field_rule_over_an_invalid_field_is_not_judged(tmp_path, capsys, data, expected):
    code, lines = validate(tmp_path, data, capsys)
    assert code == 1
    assert lines == expected


def test_a_valid_spec_passes(tmp_path, capsys):
    code, lines = validate(tmp_path, spec(), capsys)
    assert (code, lines) == (0, [])


def test_a_model_not_matching_the_file_name_is_reported_with_the_other_problems(tmp_path, capsys):
    code, lines = validate(tmp_path, spec(model="frauds", owner=3), capsys)
    assert code == 1
    assert lines == ["owner: must be a valid string", "model: must match the file name 'fraud', got 'frauds'"]
