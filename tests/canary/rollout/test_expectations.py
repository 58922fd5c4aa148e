"""The Great Expectations runner on literal tables: every supported expectation passing and failing, nulls,
row selection, and the JSON-able result shape. GX itself runs (imported once, on the first validation)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from canary.rollout.expectations import SUPPORTED_EXPECTATIONS, ExpectationSpec, validate_outputs
from canary.spec import defaults

pytestmark = pytest.mark.gx

#: Four successful answers and one failed one (score and label null, slow).
OUTPUTS = pd.DataFrame({"score": [0.1, 0.4, 0.6, 0.9, None], "label": [0, 0, 1, 1, None],
                        "latency_ms": [2.0, 3.0, 4.0, 5.0, 50.0], "error": [0, 0, 0, 0, 1]})


def one(type_: str, rows: str = "all", outputs=OUTPUTS, **kwargs):
    (result,) = validate_outputs(outputs, [ExpectationSpec(type=type_, kwargs=kwargs, rows=rows)])
    return result


# (expectation, rows, kwargs that pass, kwargs that fail, what the failure shows)
CASES = [
    ("expect_column_values_to_not_be_null", "answered", {"column": "score"}, None, None),
    ("expect_column_values_to_not_be_null", "all", {"column": "label", "mostly": 0.8}, {"column": "label"},
     {"unexpected_count": 1, "unexpected_values": [None]}),
    ("expect_column_values_to_be_between", "all", {"column": "score", "min_value": 0, "max_value": 1},
     {"column": "score", "min_value": 0, "max_value": 0.5}, {"unexpected_count": 2, "unexpected_values": [0.6, 0.9]}),
    ("expect_column_values_to_be_in_set", "all", {"column": "label", "value_set": [0, 1]},
     {"column": "label", "value_set": [0]}, {"unexpected_count": 2, "unexpected_values": [1, 1]}),
    ("expect_column_values_to_not_be_in_set", "all", {"column": "label", "value_set": [2]},
     {"column": "label", "value_set": [1]}, {"unexpected_count": 2, "unexpected_values": [1, 1]}),
    ("expect_column_distinct_values_to_be_in_set", "all", {"column": "label", "value_set": [0, 1]},
     {"column": "label", "value_set": [0]}, {"unexpected_values": [1]}),
    ("expect_column_min_to_be_between", "all", {"column": "score", "min_value": 0.05},
     {"column": "score", "min_value": 0.2}, {"observed_value": 0.1}),
    ("expect_column_max_to_be_between", "all", {"column": "latency_ms", "max_value": 60},
     {"column": "latency_ms", "max_value": 10}, {"observed_value": 50.0}),
    ("expect_column_mean_to_be_between", "all", {"column": "error", "max_value": 0.25},
     {"column": "error", "max_value": 0.1}, {"observed_value": 0.2}),
    ("expect_column_median_to_be_between", "answered", {"column": "score", "min_value": 0.4, "max_value": 0.6},
     {"column": "score", "max_value": 0.3}, {"observed_value": 0.5}),
    ("expect_column_stdev_to_be_between", "answered", {"column": "latency_ms", "max_value": 2},
     {"column": "latency_ms", "max_value": 1}, {"observed_value": pytest.approx(1.2910, abs=1e-4)}),
    ("expect_column_proportion_of_non_null_values_to_be_between", "all", {"column": "score", "min_value": 0.75},
     {"column": "score", "min_value": 0.9}, {"observed_value": 0.8}),
    ("expect_table_row_count_to_be_between", "answered", {"min_value": 4, "max_value": 4}, {"min_value": 5},
     {"observed_value": 4}),
]


def test_every_supported_expectation_has_a_case():
    assert {c[0] for c in CASES} == set(SUPPORTED_EXPECTATIONS)


@pytest.mark.parametrize(("type_", "rows", "passing", "failing", "shown"), CASES, ids=[c[0] for c in CASES])
def test_expectation_passes_and_fails(type_, rows, passing, failing, shown):
    ok = one(type_, rows, **passing)
    assert ok.success and ok.exception is None, ok
    if failing is None:  # the same expectation on every row fails: see the null-handling tests
        return
    bad = one(type_, rows, **failing)
    assert not bad.success and bad.exception is None, bad
    assert {k: getattr(bad, k) for k in shown} == shown


def test_null_scores_are_not_range_checked_but_fail_not_null():
    between = one("expect_column_values_to_be_between", column="score", min_value=0, max_value=1)
    assert between.success and between.missing_count == 1 and between.rows_checked == 5
    not_null = one("expect_column_values_to_not_be_null", column="score")
    assert not not_null.success and not_null.unexpected_count == 1
    assert one("expect_column_values_to_not_be_null", "answered", column="score").rows_checked == 4


def test_records_with_none_and_nan_are_nulls():
    records = [{"score": 0.3, "label": 1, "latency_ms": 3.0, "error": 0, "request_id": "a"},
               {"score": float("nan"), "label": None, "latency_ms": 3.0, "error": 0, "request_id": "b"},
               {"score": None, "label": None, "latency_ms": 9.0, "error": 1, "request_id": "c"}]
    result = one("expect_column_values_to_not_be_null", "answered", outputs=records, column="score")
    assert (result.success, result.rows_checked, result.unexpected_count) == (False, 2, 1)


def test_column_expectations_on_no_rows_fail():
    all_failed = OUTPUTS.assign(error=1)
    result = one("expect_column_values_to_not_be_null", "answered", outputs=all_failed, column="score")
    assert (result.success, result.rows_checked, result.exception) == (False, 0, "no rows to validate")
    assert not one("expect_table_row_count_to_be_between", "answered", outputs=all_failed, min_value=1).success


def test_default_suite_passes_on_healthy_outputs_and_names_out_of_range_scores():
    assert all(r.success for r in validate_outputs(OUTPUTS, defaults.SHADOW_EXPECTATIONS))
    broken = OUTPUTS.assign(score=[0.1, 1.4, 0.6, 1.9, None])
    failed = [r for r in validate_outputs(broken, defaults.SHADOW_EXPECTATIONS) if not r.success]
    assert [(r.type, r.kwargs["column"]) for r in failed] == [("expect_column_values_to_be_between", "score")]
    assert failed[0].describe() == "expect_column_values_to_be_between(column=score, min_value=0.0, max_value=1.0)"
    assert failed[0].observed() == "2 of 5 values unexpected (40.0%), 1 null not checked, e.g. 1.4, 1.9"


def test_result_shape_is_small_plain_json():
    many = pd.DataFrame({"score": [1.5 + i for i in range(20)], "label": [1] * 20, "latency_ms": [3.0] * 20,
                         "error": [0] * 20})
    (values, mean) = validate_outputs(many, [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "score", "max_value": 1}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "latency_ms", "max_value": 2}}])
    data = values.to_dict()
    assert set(data) == {"type", "kwargs", "rows", "success", "rows_checked", "observed_value", "unexpected_count",
                         "unexpected_percent", "missing_count", "unexpected_values", "exception"}
    assert data["unexpected_values"] == [1.5, 2.5, 3.5, 4.5, 5.5]  # at most 5, plain floats
    assert (data["unexpected_count"], data["unexpected_percent"], data["rows"]) == (20, 100.0, "all")
    assert type(mean.to_dict()["observed_value"]) is float and math.isclose(mean.observed_value, 3.0)
    assert json.loads(json.dumps([values.to_dict(), mean.to_dict()], allow_nan=False))[1]["success"] is False


def test_invalid_expectations_and_tables_are_refused():
    with pytest.raises(ValueError, match=r"expectations\[0\].type: unknown expectation 'expect_foo'"):
        validate_outputs(OUTPUTS, [{"type": "expect_foo"}])
    with pytest.raises(ValueError, match="lack column"):
        validate_outputs(OUTPUTS.drop(columns=["latency_ms"]), defaults.SHADOW_EXPECTATIONS)
    assert validate_outputs(OUTPUTS, []) == []
