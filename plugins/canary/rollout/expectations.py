"""Output validation of the shadow test: Great Expectations suites on the candidate's mirrored answers.

The candidate's mirrored answers form a small table, one row per answer, with the columns in
:data:`OUTPUT_COLUMNS` (``score`` and ``label`` are null on a failed answer). A spec lists expectations on
it (``shadow.expectations``), each a Great Expectations 1.x expectation by name with its arguments::

    - {type: expect_column_values_to_be_between, kwargs: {column: score, min_value: 0, max_value: 1}}
    - {type: expect_column_values_to_not_be_null, kwargs: {column: score}, rows: answered}

``rows: answered`` validates only the successful answers (``error == 0``), ``all`` (the default) every one.

This module has two halves. The catalogue of supported expectations and :func:`expectation_problems` are
plain Python, used when a spec is loaded (so a DAG file never imports GX, whose import takes seconds).
:func:`validate_outputs` runs the expectations with GX, imported only when it is called (in the shadow task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from numbers import Real
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import pandas as pd

#: The columns of the candidate's output table, as :meth:`canary.backends.base.ShadowOutputSource.shadow_outputs`
#: returns them: predicted probability, predicted class, server-side latency, 1 for a failed answer.
OUTPUT_COLUMNS = ("score", "label", "latency_ms", "error")
#: Unexpected values kept per expectation in results, logs and reports.
MAX_UNEXPECTED_VALUES = 5


class RowSelection(StrEnum):
    ALL = "all"  # every mirrored answer
    ANSWERED = "answered"  # successful answers only (error == 0): score and label are set


class ExpectationSpec(BaseModel):
    """One expectation on the candidate's outputs: a GX expectation name, its arguments, and which rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="GX expectation name, e.g. expect_column_values_to_be_between")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="its arguments, e.g. column, min_value")
    rows: RowSelection = RowSelection.ALL

    def describe(self) -> str:
        """Return e.g. ``expect_column_values_to_be_between(column=score, min_value=0, max_value=1)``."""
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        on = " on answered rows" if self.rows is RowSelection.ANSWERED else ""
        return f"{self.type}({args}){on}"


@dataclass(frozen=True)
class _Kind:
    column: bool  # takes (and needs) ``column``
    optional: tuple[str, ...]  # other arguments it accepts
    bounds: bool = False  # min_value / max_value, at least one of them
    value_set: bool = False  # needs value_set
    unit_interval: bool = False  # bounds are proportions in [0, 1]
    count: bool = False  # bounds are row counts (non-negative integers)


_BOUNDS = ("min_value", "max_value", "strict_min", "strict_max")
_MAP_BETWEEN = _Kind(column=True, optional=(*_BOUNDS, "mostly"), bounds=True)
_MAP_SET = _Kind(column=True, optional=("value_set", "mostly"), value_set=True)
_AGGREGATE = _Kind(column=True, optional=_BOUNDS, bounds=True)

#: The supported expectations (GX 1.x names) and the arguments each accepts.
SUPPORTED_EXPECTATIONS: dict[str, _Kind] = {
    "expect_column_values_to_not_be_null": _Kind(column=True, optional=("mostly",)),
    "expect_column_values_to_be_between": _MAP_BETWEEN,
    "expect_column_values_to_be_in_set": _MAP_SET,
    "expect_column_values_to_not_be_in_set": _MAP_SET,
    "expect_column_distinct_values_to_be_in_set": _Kind(column=True, optional=("value_set",), value_set=True),
    "expect_column_min_to_be_between": _AGGREGATE,
    "expect_column_max_to_be_between": _AGGREGATE,
    "expect_column_mean_to_be_between": _AGGREGATE,
    "expect_column_median_to_be_between": _AGGREGATE,
    "expect_column_stdev_to_be_between": _AGGREGATE,
    "expect_column_proportion_of_non_null_values_to_be_between": _Kind(column=True, optional=_BOUNDS, bounds=True,
                                                                       unit_interval=True),
    "expect_table_row_count_to_be_between": _Kind(column=False, optional=_BOUNDS, bounds=True, count=True),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def expectation_problems(expectation: ExpectationSpec) -> list[tuple[str, str]]:
    """Return ``(field, message)`` problems of one expectation (fields relative to it, e.g. ``kwargs.column``).

    Checks what can be checked without GX: the name is supported, the arguments are the ones it takes,
    with values of the right type; the column is one of :data:`OUTPUT_COLUMNS`.
    """
    kind = SUPPORTED_EXPECTATIONS.get(expectation.type)
    if kind is None:
        return [("type", f"unknown expectation {expectation.type!r}; supported: "
                         f"{', '.join(SUPPORTED_EXPECTATIONS)}")]
    kwargs = expectation.kwargs
    problems: list[tuple[str, str]] = []
    allowed = (("column",) if kind.column else ()) + kind.optional
    for key in kwargs:
        if key in ("row_condition", "condition_parser"):
            problems.append((f"kwargs.{key}", "not supported: to validate successful answers only, set "
                                              "rows: answered on the expectation"))
        elif key not in allowed:
            problems.append((f"kwargs.{key}", f"not an argument of {expectation.type}; allowed: "
                                              f"{', '.join(allowed)}"))
    if kind.column:
        column = kwargs.get("column")
        if column is None:
            problems.append(("kwargs.column", f"required: one of {', '.join(OUTPUT_COLUMNS)}"))
        elif column not in OUTPUT_COLUMNS:
            problems.append(("kwargs.column", f"unknown column {column!r}; the candidate's outputs have: "
                                              f"{', '.join(OUTPUT_COLUMNS)}"))
    if kind.bounds:
        problems += _bound_problems(kwargs, kind)
    if kind.value_set:
        values = kwargs.get("value_set")
        if values is None:
            problems.append(("kwargs.value_set", "required: the allowed values, e.g. [0, 1]"))
        elif not isinstance(values, list) or not values:
            problems.append(("kwargs.value_set", f"must be a non-empty list, e.g. [0, 1], got {values!r}"))
        elif not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            problems.append(("kwargs.value_set", f"must hold numbers or strings only, got {values!r}"))
    if "mostly" in kwargs and not (_is_number(kwargs["mostly"]) and 0 < kwargs["mostly"] <= 1):
        problems.append(("kwargs.mostly", f"must be a share in (0, 1], e.g. 0.99, got {kwargs['mostly']!r}"))
    return problems


def _bound_problems(kwargs: Mapping[str, Any], kind: _Kind) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    bounds = {k: kwargs[k] for k in ("min_value", "max_value") if kwargs.get(k) is not None}
    if not bounds:
        problems.append(("kwargs", "needs min_value or max_value (or both)"))
    for key, value in bounds.items():
        if kind.count and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            problems.append((f"kwargs.{key}", f"must be a row count (an integer >= 0), got {value!r}"))
        elif not _is_number(value):
            problems.append((f"kwargs.{key}", f"must be a finite number, got {value!r}"))
        elif kind.unit_interval and not 0 <= value <= 1:
            problems.append((f"kwargs.{key}", f"must be a proportion in [0, 1], got {value!r}"))
    lo, hi = bounds.get("min_value"), bounds.get("max_value")
    if _is_number(lo) and _is_number(hi) and lo > hi:
        problems.append(("kwargs.min_value", f"must not exceed max_value ({hi!r})"))
    for key in ("strict_min", "strict_max"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            problems.append((f"kwargs.{key}", f"must be true or false, got {kwargs[key]!r}"))
    return problems


@dataclass(frozen=True, kw_only=True)
class ExpectationResult:
    """What one expectation found on the candidate's outputs (JSON-able through :meth:`to_dict`).

    ``observed_value`` is set by aggregate expectations (a mean, a row count), the ``unexpected_*`` fields by
    per-value ones (``unexpected_percent`` of all rows checked; nulls, counted in ``missing_count``, are not
    checked except by ``expect_column_values_to_not_be_null``; ``unexpected_values`` holds at most
    :data:`MAX_UNEXPECTED_VALUES`). ``rows_checked`` is
    the number of rows the expectation saw; ``exception`` says why it could not be evaluated.
    """

    type: str
    kwargs: dict[str, Any]
    rows: str
    success: bool
    rows_checked: int
    observed_value: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    missing_count: int | None = None
    unexpected_values: list[Any] = field(default_factory=list)
    exception: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "kwargs": dict(self.kwargs), "rows": self.rows, "success": self.success,
                "rows_checked": self.rows_checked, "observed_value": self.observed_value,
                "unexpected_count": self.unexpected_count, "unexpected_percent": self.unexpected_percent,
                "missing_count": self.missing_count, "unexpected_values": list(self.unexpected_values),
                "exception": self.exception}

    def observed(self) -> str:
        """Return what was observed, for people: ``12 of 200 values unexpected (6.0%), e.g. 1.2, 1.7``."""
        if self.exception:
            return f"could not be evaluated: {self.exception}"
        if self.type == "expect_column_distinct_values_to_be_in_set":
            return f"distinct values outside the set: {', '.join(map(_shown, self.unexpected_values)) or 'none'}"
        if self.unexpected_count is not None:
            text = f"{self.unexpected_count} of {self.rows_checked} values unexpected"
            if self.unexpected_percent is not None:
                text += f" ({self.unexpected_percent:.1f}%)"
            if self.missing_count:
                text += f", {self.missing_count} null not checked"
            if self.unexpected_values:
                text += ", e.g. " + ", ".join(map(_shown, self.unexpected_values))
            return text
        return f"observed {_shown(self.observed_value)} over {self.rows_checked} rows"

    def describe(self) -> str:
        return ExpectationSpec(type=self.type, kwargs=self.kwargs, rows=RowSelection(self.rows)).describe()


def _shown(value: Any) -> str:
    """Return a value for people: floats to 4 significant digits (results keep them exact)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def outputs_frame(outputs: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return the output table: the :data:`OUTPUT_COLUMNS` of ``outputs``, nulls as NA, ``label``/``error`` integers.

    :raises ValueError: a DataFrame lacks one of the columns.
    """
    import pandas as pd

    if isinstance(outputs, pd.DataFrame):
        missing = [c for c in OUTPUT_COLUMNS if c not in outputs.columns]
        if missing:
            raise ValueError(f"the candidate's outputs lack column(s) {', '.join(missing)} "
                             f"(expected: {', '.join(OUTPUT_COLUMNS)})")
        frame = outputs.loc[:, list(OUTPUT_COLUMNS)].copy()
    else:
        frame = pd.DataFrame.from_records([{c: row.get(c) for c in OUTPUT_COLUMNS} for row in outputs],
                                          columns=list(OUTPUT_COLUMNS))
    frame = frame.reset_index(drop=True)
    for column in ("score", "latency_ms"):
        frame[column] = pd.to_numeric(frame[column]).astype("float64")
    for column in ("label", "error"):
        try:
            frame[column] = frame[column].astype("Int64")
        except (TypeError, ValueError):  # e.g. string classes: kept as they are
            frame[column] = frame[column].astype("object")
    return frame


def validate_outputs(outputs: pd.DataFrame | Sequence[Mapping[str, Any]],
                     expectations: Sequence[ExpectationSpec | Mapping[str, Any]]) -> list[ExpectationResult]:
    """Run ``expectations`` on the candidate's outputs with Great Expectations; one result per expectation, in order.

    Uses an ephemeral GX context with a pandas datasource and a whole-dataframe batch (one per row selection).
    A column expectation that sees no rows (e.g. ``rows: answered`` when every answer failed) fails: no data
    is never a pass. An expectation GX cannot evaluate fails with the exception's message.

    :param outputs: the candidate's mirrored answers, a DataFrame or records with :data:`OUTPUT_COLUMNS`.
    :param expectations: :class:`ExpectationSpec` values, or mappings of the same shape.
    :raises ValueError: an expectation is not supported or its arguments are invalid.
    """
    specs = [e if isinstance(e, ExpectationSpec) else ExpectationSpec.model_validate(e) for e in expectations]
    for i, spec in enumerate(specs):
        problems = expectation_problems(spec)
        if problems:
            raise ValueError("; ".join(f"expectations[{i}].{loc}: {msg}" for loc, msg in problems))
    if not specs:
        return []
    frame = outputs_frame(outputs)
    answered = frame[frame["error"].eq(0).fillna(False).astype(bool)].reset_index(drop=True)
    tables = {RowSelection.ALL: frame, RowSelection.ANSWERED: answered}

    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.expectations.registry import get_expectation_impl

    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False)))
    batch_definition = (context.data_sources.add_pandas("canary_shadow")
                        .add_dataframe_asset("candidate_outputs")
                        .add_batch_definition_whole_dataframe("mirrored_answers"))
    batches = {rows: batch_definition.get_batch(batch_parameters={"dataframe": table})
               for rows, table in tables.items() if any(s.rows is rows for s in specs)}
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_UNEXPECTED_VALUES}
    results = []
    for spec in specs:
        rows_checked = len(tables[spec.rows])
        base = {"type": spec.type, "kwargs": dict(spec.kwargs), "rows": spec.rows.value, "rows_checked": rows_checked}
        if rows_checked == 0 and SUPPORTED_EXPECTATIONS[spec.type].column:
            results.append(ExpectationResult(**base, success=False, exception="no rows to validate"))
            continue
        try:
            expectation = get_expectation_impl(spec.type)(**spec.kwargs)
            validation = batches[spec.rows].validate(expectation, result_format=result_format)
        except Exception as err:  # GX refused the arguments or failed: the expectation is not met
            results.append(ExpectationResult(**base, success=False, exception=f"{type(err).__name__}: {err}"))
            continue
        results.append(_result(base, validation))
    return results


def _result(base: dict[str, Any], validation: Any) -> ExpectationResult:
    found = validation.result or {}
    exception = _exception_message(validation.exception_info)
    unexpected = found.get("partial_unexpected_list")
    return ExpectationResult(
        **base, success=bool(validation.success) and exception is None,
        observed_value=_plain(found.get("observed_value")),
        unexpected_count=_plain(found.get("unexpected_count")),
        unexpected_percent=_plain(found.get("unexpected_percent_total", found.get("unexpected_percent"))),
        missing_count=_plain(found.get("missing_count")),
        unexpected_values=[_plain(v) for v in (unexpected or [])][:MAX_UNEXPECTED_VALUES],
        exception=exception)


def _exception_message(info: Any) -> str | None:
    """Return the first raised exception's message from GX's ``exception_info`` (flat, or per metric)."""
    if not isinstance(info, Mapping):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, Mapping)]
    for entry in entries:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message") or "GX raised an exception").strip()
    return None


def _plain(value: Any) -> Any:
    """Return ``value`` as plain JSON-able Python (numpy scalars unwrapped, NA/NaN as None)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else (None if math.isnan(value) else str(value))
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)
