"""Replay CSVs are bounded: a file over MAX_CSV_BYTES or MAX_CSV_ROWS is refused, naming the limit."""

from __future__ import annotations

import pytest
from fast_spec import fast_spec

from canary.spec.model import parse_spec
from canary.stats import replay_input
from canary.stats.replay_input import ReplayInputError, load_csv

SPEC = parse_spec(fast_spec("m", "e"))


def write(path, rows: int) -> None:
    lines = ["run,t,version,requests,errors"]
    for i in range(rows // 2):
        lines += [f"r1,{i + 1},stable,100,1", f"r1,{i + 1},canary,100,1"]
    path.write_text("\n".join(lines) + "\n")


def test_a_file_within_the_limits_is_read(tmp_path):
    write(tmp_path / "runs.csv", 10)
    df, _layout = load_csv(tmp_path / "runs.csv", SPEC)
    assert len(df) == 10


def test_too_many_rows_are_refused_naming_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(replay_input, "MAX_CSV_ROWS", 8)
    write(tmp_path / "runs.csv", 10)
    with pytest.raises(ReplayInputError, match=r"more than 8 data rows \(MAX_CSV_ROWS\)"):
        load_csv(tmp_path / "runs.csv", SPEC)


def test_too_many_bytes_are_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(replay_input, "MAX_CSV_BYTES", 100)
    write(tmp_path / "runs.csv", 10)
    with pytest.raises(ReplayInputError, match=r"over the limit of 100 \(MAX_CSV_BYTES\)"):
        load_csv(tmp_path / "runs.csv", SPEC)


def test_the_limits_are_generous_for_real_runs():
    assert replay_input.MAX_CSV_ROWS >= 1_000_000 and replay_input.MAX_CSV_BYTES >= 100 * 1024 * 1024
