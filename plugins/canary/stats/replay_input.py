"""The input of ``canary replay``: a CSV of per-version counts, read and checked against a spec.

One row per (run, t, version) holding counts *since the previous row* of that run and version: the
columns of :data:`REQUIRED_COLUMNS`, and optionally ``weight`` (the canary's configured percent),
``latency_le_<ms>`` (cumulative latency buckets), ``pred_bin_<i>`` (prediction bins),
``kpi_events``, ``labelled`` and ``wrong`` (together: the requests newly counted as labelled at this
row, and of those the ones the version predicted wrongly, for ``prediction_quality``) and ``segment``
(the row's value of ``analysis.segments.by``: then one row per run, t, version and segment, each
segment's counts; a spec with segments needs it, one without sums the segments). A bad file is a
:class:`ReplayInputError` naming the row and column.

``labelled`` follows the live window: a request counts once its label has arrived *and* it is at least
the metric's ``label_delay`` old at the row's ``t`` (the author of the file applies ``label_delay``;
replay cannot, per-row counts do not say when requests arrived or labels came).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from canary.spec.model import MetricKind, RolloutSpec

REQUIRED_COLUMNS = ("run", "t", "version", "requests", "errors")
#: The columns of a ``prediction_quality`` metric, given together.
LABEL_COLUMNS = ("labelled", "wrong")
VERSIONS = ("stable", "canary")
#: The largest replay CSV read, in bytes and in data rows (a year of looks of many runs fits well below).
MAX_CSV_BYTES = 256 * 1024 * 1024
MAX_CSV_ROWS = 2_000_000
_LATENCY = re.compile(r"^latency_le_(\d+(?:\.\d+)?)$")
_PRED = re.compile(r"^pred_bin_(\d+)$")


class ReplayInputError(ValueError):
    """Bad replay input; ``row`` is the 1-based data row (the file line is ``row + 1``), ``column`` its column."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None) -> None:
        self.row = row
        self.column = column
        where = []
        if row is not None:
            where.append(f"row {row} (line {row + 1})")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass(frozen=True)
class Layout:
    """Optional columns found in the file."""

    latency_columns: tuple[str, ...]
    latency_bounds_ms: tuple[float, ...]
    pred_columns: tuple[str, ...]
    has_weight: bool
    has_kpi: bool
    has_segment: bool = False
    has_labels: bool = False


def _layout(columns: list[str], spec: RolloutSpec) -> Layout:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ReplayInputError(f"missing required column(s) {missing}; the header has {columns}",
                               row=None, column=missing[0])
    lat = sorted(((float(m.group(1)), c) for c in columns if (m := _LATENCY.match(c))), key=lambda x: x[0])
    pred = sorted(((int(m.group(1)), c) for c in columns if (m := _PRED.match(c))), key=lambda x: x[0])
    bounds = [b for b, _ in lat]
    if len(set(bounds)) != len(bounds):
        twice = next(c for (b, c) in lat if bounds.count(b) > 1)
        raise ReplayInputError(f"latency bucket bound {twice.removeprefix('latency_le_')} ms given by more than one "
                               f"column: {[c for b, c in lat if bounds.count(b) > 1]}", column=twice)
    if pred and [i for i, _ in pred] != list(range(len(pred))):
        raise ReplayInputError(f"pred_bin_<i> columns must be numbered 0..{len(pred) - 1}, got "
                               f"{[c for _, c in pred]}", column=pred[0][1])
    layout = Layout(latency_columns=tuple(c for _, c in lat), latency_bounds_ms=tuple(b for b, _ in lat),
                    pred_columns=tuple(c for _, c in pred), has_weight="weight" in columns,
                    has_kpi="kpi_events" in columns, has_segment="segment" in columns,
                    has_labels=all(c in columns for c in LABEL_COLUMNS))
    given = [c for c in LABEL_COLUMNS if c in columns]
    if given and not layout.has_labels:
        missing = [c for c in LABEL_COLUMNS if c not in columns]
        raise ReplayInputError(f"columns {list(LABEL_COLUMNS)} go together: {given} without {missing}",
                               column=missing[0])
    segments = spec.analysis.segments
    if segments is not None and not layout.has_segment:
        raise ReplayInputError(f"analysis.segments needs a segment column holding each row's value of "
                               f"{segments.by!r} (one row per run, t, version and segment)", column="segment")
    for m in spec.analysis.metrics:
        if m.kind is MetricKind.LATENCY and not layout.latency_columns:
            raise ReplayInputError(f"metric {m.name!r} (latency) needs latency_le_<ms> bucket columns",
                                   column="latency_le_<ms>")
        if m.kind is MetricKind.PREDICTION_QUALITY and not layout.has_labels:
            raise ReplayInputError(f"metric {m.name!r} (prediction_quality) needs columns {list(LABEL_COLUMNS)}: "
                                   "per row, the requests newly labelled (label arrived, request at least "
                                   f"label_delay = {m.label_delay_s:g} s old) and of those the ones predicted "
                                   "wrongly", column=LABEL_COLUMNS[0])
        if m.kind is MetricKind.KPI and m.outcome is not None:
            raise ReplayInputError(f"metric {m.name!r} (kpi on the business outcome {m.outcome!r}) cannot be "
                                   "replayed: replay reads kpi_events per request, not outcomes joined to requests "
                                   "old enough for them; replay a copy of the spec without this metric, or with "
                                   "kind kpi and no outcome on a kpi_events column", column="kpi_events")
        if m.kind is MetricKind.KPI and not layout.has_kpi:
            raise ReplayInputError(f"metric {m.name!r} (kpi) needs a kpi_events column", column="kpi_events")
        if m.kind is MetricKind.PREDICTION_DISTRIBUTION and not layout.pred_columns:
            raise ReplayInputError(f"metric {m.name!r} (prediction_distribution) needs pred_bin_<i> columns",
                                   column="pred_bin_0")
    return layout


def load_csv(path: str | Path, spec: RolloutSpec) -> tuple[pd.DataFrame, Layout]:
    """Read and validate a replay CSV; raise :class:`ReplayInputError` naming row and column."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_CSV_BYTES:
            raise ReplayInputError(f"{path}: {size} bytes, over the limit of {MAX_CSV_BYTES} (MAX_CSV_BYTES): "
                                   "split the runs into several files")
        df = pd.read_csv(path, dtype={"run": str, "version": str, "segment": str}, keep_default_na=False,
                         na_values=[""], nrows=MAX_CSV_ROWS + 1)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ReplayInputError(f"cannot read {path}: {err}") from err
    if len(df) > MAX_CSV_ROWS:
        raise ReplayInputError(f"{path}: more than {MAX_CSV_ROWS} data rows (MAX_CSV_ROWS): split the runs into "
                               "several files")
    if not isinstance(df.index, pd.RangeIndex):
        # pandas takes the first row's surplus leading values as an index: every column would be shifted.
        raise ReplayInputError(f"more values than the header has columns ({len(df.columns)})", row=1)
    df.columns = [str(c).strip() for c in df.columns]
    duplicates = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicates:
        raise ReplayInputError(f"column(s) {duplicates} given more than once", column=duplicates[0])
    layout = _layout(list(df.columns), spec)
    numeric = ["t", "requests", "errors", *layout.latency_columns, *layout.pred_columns]
    numeric += ["kpi_events"] if layout.has_kpi else []
    numeric += list(LABEL_COLUMNS) if layout.has_labels else []
    numeric += ["weight"] if layout.has_weight else []
    for col in ("run", "version", *(["segment"] if layout.has_segment else [])):
        bad = df[col].isna()
        if bad.any():
            raise ReplayInputError("empty value", row=int(np.argmax(bad.to_numpy())) + 1, column=col)
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce")
        if pd.api.types.is_bool_dtype(values):  # a column of True/False reads as booleans, not counts
            values = pd.Series(np.nan, index=df.index)
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if col == "weight":
            bad &= df[col].notna()  # a blank weight means "unchanged"
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise ReplayInputError(f"not a number: {str(df[col].iloc[i])!r}", row=i + 1, column=col)
        df[col] = values
        if col not in ("t", "weight"):
            neg = (values < 0).to_numpy()
            if neg.any():
                i = int(np.argmax(neg))
                raise ReplayInputError(f"negative count {values.iloc[i]:g}", row=i + 1, column=col)
            frac = (values != np.floor(values)).to_numpy()
            if frac.any():
                i = int(np.argmax(frac))
                raise ReplayInputError(f"counts must be whole numbers, got {values.iloc[i]:g}", row=i + 1, column=col)
    if layout.has_weight:
        w = df["weight"]
        bad = (w.notna() & ((w < 0) | (w > 100))).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ReplayInputError(f"weight must be a percentage in [0, 100], got {w.iloc[i]:g}", row=i + 1,
                                   column="weight")
    versions = df["version"].str.strip()
    bad = ~versions.isin(VERSIONS).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ReplayInputError(f"unknown version {df['version'].iloc[i]!r}; expected one of {list(VERSIONS)}",
                               row=i + 1, column="version")
    df["version"] = versions
    over = (df["errors"] > df["requests"]).to_numpy()
    if over.any():
        i = int(np.argmax(over))
        raise ReplayInputError(f"errors ({df['errors'].iloc[i]:g}) exceed requests ({df['requests'].iloc[i]:g})",
                               row=i + 1, column="errors")
    if layout.has_labels:
        over = (df["wrong"] > df["labelled"]).to_numpy()
        if over.any():
            i = int(np.argmax(over))
            raise ReplayInputError(f"wrong ({df['wrong'].iloc[i]:g}) exceeds labelled ({df['labelled'].iloc[i]:g})",
                                   row=i + 1, column="wrong")
    if layout.latency_columns:
        lat = df[list(layout.latency_columns)].to_numpy(dtype=float)
        dec = np.diff(lat, axis=1) < 0
        if dec.any():
            i, j = np.argwhere(dec)[0]
            raise ReplayInputError("cumulative latency buckets must be non-decreasing", row=int(i) + 1,
                                   column=layout.latency_columns[j + 1])
        over = lat[:, -1] > df["requests"].to_numpy()
        if over.any():
            i = int(np.argmax(over))
            raise ReplayInputError("bucket count exceeds the row's requests", row=i + 1,
                                   column=layout.latency_columns[-1])
    t = df["t"].to_numpy(dtype=float)
    run_codes, _ = pd.factorize(df["run"])
    order = np.argsort(run_codes, kind="stable")
    same_run = run_codes[order][1:] == run_codes[order][:-1]
    back = same_run & (np.diff(t[order]) < 0)
    if back.any():
        i = int(order[int(np.argmax(back)) + 1])
        raise ReplayInputError(f"t goes backwards within run {df['run'].iloc[i]!r} ({t[i]:g})", row=i + 1,
                               column="t")
    if len(df) == 0:
        raise ReplayInputError("no data rows")
    return df, layout


# -- vectorised evaluation ---------------------------------------------------------------------------


__all__ = ["LABEL_COLUMNS", "MAX_CSV_BYTES", "MAX_CSV_ROWS", "REQUIRED_COLUMNS", "VERSIONS", "Layout", "ReplayInputError", "load_csv"]
