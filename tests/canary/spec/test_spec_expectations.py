"""shadow.expectations in the spec: the default suite, turning it off, and every refusal naming field and fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canary.errors import SpecError
from canary.rollout.expectations import OUTPUT_COLUMNS, SUPPORTED_EXPECTATIONS, RowSelection
from canary.rollout.plan import RolloutPlan
from canary.spec import defaults
from canary.spec.model import StageSpec, parse_spec

VALID = {"model": "fraud", "endpoint": "fraud", "stages": [{"weight": 10}, {"weight": 100}]}


def with_expectations(*expectations) -> dict:
    return {**VALID, "shadow": {"expectations": list(expectations)}}


def problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="x.yaml")
    return info.value.problems


def test_default_suite_is_the_documented_one():
    spec = parse_spec(VALID)
    got = [{"type": e.type, "kwargs": e.kwargs, "rows": e.rows.value} for e in spec.shadow.expectations]
    assert got == [{"rows": "all", **e} for e in defaults.SHADOW_EXPECTATIONS]
    assert [e.type for e in spec.shadow.expectations] == ["expect_column_values_to_not_be_null"] * 2 + [
        "expect_column_values_to_be_between", "expect_column_values_to_be_in_set"]
    assert spec.shadow.expectations[0].rows is RowSelection.ANSWERED


def test_empty_list_turns_output_validation_off():
    assert parse_spec(with_expectations()).shadow.expectations == []


def test_own_suite_replaces_the_default_and_survives_the_frozen_plan():
    spec = parse_spec(with_expectations(
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "latency_ms", "max_value": 50}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 100}, "rows": "answered"}))
    assert [(e.type, e.rows) for e in spec.shadow.expectations] == [
        ("expect_column_mean_to_be_between", RowSelection.ALL),
        ("expect_table_row_count_to_be_between", RowSelection.ANSWERED)]
    plan = RolloutPlan(spec=spec, candidate="v2", stable="v1", stages=(StageSpec(weight=100),),
                       run_id="r", dry_run=False, reason="", started_at_s=0.0)
    assert RolloutPlan.from_dict(plan.to_dict()).spec.shadow.expectations == spec.shadow.expectations


def test_every_supported_expectation_is_accepted_with_its_arguments():
    examples = {"mostly": 0.99, "value_set": [0, 1], "min_value": 0, "max_value": 1, "strict_min": False,
                "strict_max": True}
    for name, kind in SUPPORTED_EXPECTATIONS.items():
        kwargs = {k: examples[k] for k in kind.optional}
        if kind.column:
            kwargs["column"] = "score"
        assert parse_spec(with_expectations({"type": name, "kwargs": kwargs})).shadow.expectations[0].type == name


E = "shadow.expectations"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"


@pytest.mark.parametrize(("expectation", "location", "fragment"), [
    ({"type": "expect_foo", "kwargs": {"column": "score"}}, f"{E}[1].type",
     "unknown expectation 'expect_foo'; supported: expect_column_values_to_not_be_null, "),
    ({"type": NOT_NULL, "kwargs": {"column": "prediction"}}, f"{E}[1].kwargs.column",
     f"unknown column 'prediction'; the candidate's outputs have: {', '.join(OUTPUT_COLUMNS)}"),
    ({"type": NOT_NULL, "kwargs": {}}, f"{E}[1].kwargs.column", "required: one of score, label"),
    ({"type": NOT_NULL, "kwargs": {"column": "score", "value_set": [1]}}, f"{E}[1].kwargs.value_set",
     "not an argument of expect_column_values_to_not_be_null; allowed: column, mostly"),
    ({"type": NOT_NULL, "kwargs": {"column": "score", "row_condition": "error == 0"}},
     f"{E}[1].kwargs.row_condition", "set rows: answered"),
    ({"type": NOT_NULL, "kwargs": {"column": "score", "mostly": 1.5}}, f"{E}[1].kwargs.mostly", "(0, 1]"),
    ({"type": NOT_NULL, "kwargs": "score"}, f"{E}[1].kwargs", "valid dictionary"),
    ({"type": NOT_NULL, "kwargs": {"column": "score"}, "rows": "some"}, f"{E}[1].rows", "must be one of"),
    ({"type": NOT_NULL, "kwarg": {"column": "score"}}, f"{E}[1].kwarg", "unknown key"),
    ({"kwargs": {"column": "score"}}, f"{E}[1].type", "required"),
    ({"type": BETWEEN, "kwargs": {"column": "score"}}, f"{E}[1].kwargs", "needs min_value or max_value"),
    ({"type": BETWEEN, "kwargs": {"column": "score", "min_value": "0"}}, f"{E}[1].kwargs.min_value",
     "finite number"),
    ({"type": BETWEEN, "kwargs": {"column": "score", "min_value": 1, "max_value": 0}}, f"{E}[1].kwargs.min_value",
     "must not exceed max_value (0)"),
    ({"type": BETWEEN, "kwargs": {"column": "score", "min_value": 0, "strict_min": "yes"}},
     f"{E}[1].kwargs.strict_min", "true or false"),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label"}}, f"{E}[1].kwargs.value_set",
     "required"),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": []}},
     f"{E}[1].kwargs.value_set", "non-empty list"),
    ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [[0]]}},
     f"{E}[1].kwargs.value_set", "numbers or strings"),
    ({"type": "expect_column_proportion_of_non_null_values_to_be_between",
      "kwargs": {"column": "score", "min_value": 99}}, f"{E}[1].kwargs.min_value", "proportion in [0, 1]"),
    ({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1.5}}, f"{E}[1].kwargs.min_value",
     "row count"),
    ({"type": "expect_table_row_count_to_be_between", "kwargs": {"column": "score", "min_value": 1}},
     f"{E}[1].kwargs.column", "not an argument of expect_table_row_count_to_be_between"),
])
def test_each_invalid_expectation_names_field_and_fix(expectation, location, fragment):
    ok = {"type": NOT_NULL, "kwargs": {"column": "score"}}
    found = problems(with_expectations(ok, expectation))
    assert any(loc == location and fragment in msg for loc, msg in found), found
    assert not any(loc.startswith(f"{E}[0]") for loc, _ in found), found


def test_every_problem_of_every_expectation_is_reported():
    found = problems(with_expectations({"type": "expect_foo"}, {"type": BETWEEN, "kwargs": {"column": "x"}}))
    assert {loc for loc, _ in found} == {f"{E}[0].type", f"{E}[1].kwargs.column", f"{E}[1].kwargs"}


def test_loading_a_spec_imports_neither_gx_nor_pandas(root):
    code = ("import sys; from canary.spec.model import parse_spec; import canary.rollout.shadow;"
            "parse_spec({'model': 'm', 'endpoint': 'e', 'stages': [{'weight': 100}]});"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('great_expectations', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root / "plugins")})
    assert out.stdout.strip() == "[]"
