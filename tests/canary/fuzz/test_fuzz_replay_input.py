"""Fuzz the replay CSV reader: any text is a checked table or a ReplayInputError naming row and/or column."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from fuzz_inputs import FUZZ, TEXT
from hypothesis import example, given
from hypothesis import strategies as st

from canary.spec.model import parse_spec
from canary.stats.replay_input import REQUIRED_COLUMNS, ReplayInputError, load_csv

SPEC = parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 10}, {"weight": 100}], "analysis": {
    "metrics": [{"name": "error_rate", "kind": "error_rate", "tolerance": 0.2},
                {"name": "p99", "kind": "latency", "quantile": 0.99, "tolerance": 0.2}]}})
OPTIONAL = ["weight", "latency_le_100", "latency_le_+Inf", "latency_le_250.5", "latency_le_1e3", "pred_bin_0",
            "pred_bin_1", "pred_bin_3", "kpi_events", "labelled", "wrong", "segment", " run", "run ", "t",
            "Unnamed: 0", ""]
CELLS = st.one_of(st.integers(-5, 1000).map(str), st.sampled_from(
    ["", "NaN", "nan", "inf", "-inf", "1e400", "-0", "1.5", "True", "False", "stable", "canary", " canary ",
     "9" * 30, "0x10", "1,000", '"', "\n", "NA", "null", "None"]), TEXT)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    columns = list(REQUIRED_COLUMNS)
    columns = [c for c in columns if draw(st.integers(0, 9))]  # now and then a required column is missing
    columns += draw(st.lists(st.sampled_from(OPTIONAL) | TEXT, max_size=4))
    columns = draw(st.permutations(columns))
    rows = draw(st.lists(st.lists(CELLS, min_size=len(columns), max_size=len(columns)), max_size=6))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    text = out.getvalue()
    if draw(st.integers(0, 9)) == 0:  # raw garbage now and then: ragged rows, stray quotes, no header
        text = draw(st.text(max_size=200))
    return text


def _good_row(run: str, t: int, version: str, requests: int, errors: int, buckets: tuple[int, int]) -> list:
    return [run, t, version, requests, errors, *buckets]


GOOD_HEADER = ["run", "t", "version", "requests", "errors", "latency_le_100", "latency_le_+Inf"]


def _check(tmp_path_factory, text: str | bytes) -> None:
    path = tmp_path_factory.mktemp("replay") / "in.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        df, layout = load_csv(path, SPEC)
    except ReplayInputError as err:
        assert type(err) is ReplayInputError
        assert err.row is not None or err.column is not None or str(path) in str(err), str(err)
        if err.row is not None:
            assert str(err).startswith(f"row {err.row} (line {err.row + 1})")
        return
    # Accepted: every count is a finite whole number >= 0, errors never exceed requests.
    assert len(df) > 0
    for col in ("requests", "errors", *layout.latency_columns):
        values = df[col].to_numpy(dtype=float)
        assert np.isfinite(values).all() and (values >= 0).all() and (values == np.floor(values)).all()
    assert (df["errors"] <= df["requests"]).all()
    assert set(df["version"]) <= {"stable", "canary"}


_HEAD = ",".join(GOOD_HEADER)
#: What the fuzzer found (each crashed, or was read as counts, before the fix).
FOUND = {
    "a column twice once stripped": f"{_HEAD}, run\nr,1,stable,5,1,1,5,x\n",
    "requests twice once stripped": f"{_HEAD},requests \nr,1,stable,5,1,1,5,3\n",
    "True/False read as counts": f"{_HEAD}\nr,1,stable,True,False,1,5\n",
    "surplus values shift every column": f"{_HEAD}\nr,1,stable,5,1,1,5,9,9\n",
    "one bucket bound twice": "run,t,version,requests,errors,latency_le_100,latency_le_100.0,latency_le_+Inf\n"
                              "r,1,stable,5,1,1,1,5\n",
}


@FUZZ
@given(text=csv_texts())
@example(text=FOUND["a column twice once stripped"])
@example(text=FOUND["requests twice once stripped"])
@example(text=FOUND["True/False read as counts"])
@example(text=FOUND["surplus values shift every column"])
@example(text=FOUND["one bucket bound twice"])
def test_arbitrary_csv_is_checked_or_refused_naming_row_and_column(tmp_path_factory, text):
    _check(tmp_path_factory, text)


@pytest.mark.parametrize("case", sorted(FOUND))
def test_found_defects_are_refused_naming_the_place(tmp_path, case):
    path = tmp_path / "in.csv"
    path.write_text(FOUND[case])
    with pytest.raises(ReplayInputError) as err:
        load_csv(path, SPEC)
    assert err.value.row is not None or err.value.column is not None


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["r1", "r2"]), st.integers(-3, 5), st.sampled_from(["stable", "canary"]),
                               st.integers(-2, 50), st.integers(-2, 50), st.integers(-2, 50), st.integers(-2, 60)),
                     min_size=1, max_size=8))
def test_structured_rows_with_bad_counts_are_refused_naming_row_and_column(tmp_path_factory, rows):
    """Negative counts, errors above requests, decreasing buckets and t going back: refused, naming the cell."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(GOOD_HEADER)
    writer.writerows(_good_row(r, t, v, n, e, (b1, b2)) for r, t, v, n, e, b1, b2 in rows)
    _check(tmp_path_factory, out.getvalue())


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_are_refused(tmp_path_factory, raw):
    _check(tmp_path_factory, raw)
