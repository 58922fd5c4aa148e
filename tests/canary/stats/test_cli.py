"""``canary plan`` and ``canary replay``: output, agreement with the analyzer, and bad input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from canary.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from replay_bench import synthetic_runs  # the benchmark's generator: one definition

SPEC = """\
model: {model}
endpoint: e
stages:
  - {{weight: 5, max_duration: 1h}}
  - {{weight: 25, max_duration: 1h}}
  - {{weight: 50, max_duration: 1h}}
  - {{weight: 100, max_duration: 1h}}
analysis:
  metrics:
    - {{name: error_rate, kind: error_rate, tolerance: 0.25, mde: 1.0}}
    - {{name: slow, kind: latency, threshold_ms: 300, tolerance: 0.2}}
"""


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(SPEC.format(model="svc"))
    return path


def make_csv(path: Path, runs: int = 6, points: int = 60, seed: int = 0, bad_runs: tuple[int, ...] = (1, 3)) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(runs):
        theta = 3.0 if r in bad_runs else 1.0
        for k in range(points):
            w = 5 if k < points // 3 else (25 if k < 2 * points // 3 else 50)
            nc = int(rng.binomial(1000, w / 100))
            for version, n, rate in (("canary", nc, 0.01 * theta), ("stable", 1000 - nc, 0.01)):
                fast = int(rng.binomial(n, 0.9))
                rows.append({"run": f"r{r}", "t": 30.0 * k, "version": version, "requests": n,
                             "errors": int(rng.binomial(n, rate)), "weight": w, "latency_le_100": fast,
                             "latency_le_300": fast + int(rng.binomial(n - fast, 0.9))})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run_cli(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


def test_replay_prints_one_line_per_run_and_a_summary(tmp_path, spec_path, capsys):
    data = make_csv(tmp_path / "d.csv")
    code, lines, _ = run_cli(capsys, "replay", str(spec_path), str(data))
    assert code == 0
    results = [json.loads(x) for x in lines[:-1]]
    summary = json.loads(lines[-1])
    assert summary["runs"] == 6 == len(results)
    assert sum(summary[k] for k in ("rollback", "promote", "halt", "timeout", "continue")) == 6
    by_run = {r["run"]: r for r in results}
    for bad in ("r1", "r3"):
        assert by_run[bad]["decision"] == "rollback"
        assert by_run[bad]["metric"] == "error_rate"
        ev = by_run[bad]["evidence"]
        assert ev["log_e_value"] >= math.log(ev["threshold"])
        assert set(by_run[bad]) == {"run", "decision", "t", "canary_requests", "metric", "evidence"}


def test_replay_decision_time_does_not_depend_on_row_cadence(tmp_path, spec_path, capsys):
    """Merging pairs of rows (polling half as often) can only delay the first firing to the merged row."""
    data = make_csv(tmp_path / "d.csv", runs=2, bad_runs=(0,))
    _, lines, _ = run_cli(capsys, "replay", str(spec_path), str(data))
    first = json.loads(lines[0])
    df = pd.read_csv(data)
    df["t"] = np.ceil(df["t"] / 60.0) * 60.0
    merged = df.groupby(["run", "t", "version"], as_index=False, sort=False).agg(
        {"requests": "sum", "errors": "sum", "weight": "max", "latency_le_100": "sum", "latency_le_300": "sum"})
    merged.to_csv(tmp_path / "m.csv", index=False)
    _, lines2, _ = run_cli(capsys, "replay", str(spec_path), str(tmp_path / "m.csv"))
    second = json.loads(lines2[0])
    assert second["decision"] == first["decision"] == "rollback"
    assert first["t"] <= second["t"] <= first["t"] + 60.0


@pytest.mark.parametrize(("mutate", "row", "column"), [
    (lambda df: df.drop(columns=["errors"]), None, "errors"),
    (lambda df: df.assign(errors=df["errors"].where(df.index != 4, -1)), 5, "errors"),
    (lambda df: df.assign(version=df["version"].where(df.index != 7, "blue")), 8, "version"),
    (lambda df: df.assign(t=df["t"].where(df.index != 9, -5.0)), 10, "t"),
    (lambda df: df.assign(requests=df["requests"].astype(object).where(df.index != 2, "many")), 3, "requests"),
    (lambda df: df.assign(errors=df["errors"].where(df.index != 3, 10**6)), 4, "errors"),
    (lambda df: df.assign(latency_le_300=df["latency_le_300"].where(df.index != 6, 0)), 7, "latency_le_300"),
])
def test_replay_bad_input_exits_2_naming_row_and_column(tmp_path, spec_path, capsys, mutate, row, column):
    df = pd.read_csv(make_csv(tmp_path / "d.csv", runs=1, points=10))
    mutate(df).to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run_cli(capsys, "replay", str(spec_path), str(tmp_path / "bad.csv"))
    assert code == 2
    assert repr(column) in err
    if row is not None:
        assert f"row {row} (line {row + 1})" in err


def test_replay_needs_the_columns_its_metrics_use(tmp_path, spec_path, capsys):
    df = pd.read_csv(make_csv(tmp_path / "d.csv", runs=1, points=5))
    df.drop(columns=["latency_le_100", "latency_le_300"]).to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run_cli(capsys, "replay", str(spec_path), str(tmp_path / "bad.csv"))
    assert code == 2 and "latency_le_" in err


def test_plan_prints_every_compared_stage_and_metric(spec_path, capsys):
    code, lines, _ = run_cli(capsys, "plan", str(spec_path), "--rps", "100", "--json")
    assert code == 0
    rows = [json.loads(x) for x in lines]
    assert {(r["stage"], r["metric"]) for r in rows} == {(s, m) for s in (0, 1, 2) for m in ("error_rate", "slow")}
    for r in rows:
        # Sequential detection at the MDE beats the fixed horizon on the expected path.
        assert r["detect_requests"] < r["fixed_horizon_requests"]
        assert r["detect_s"] == pytest.approx(r["detect_requests"] / (100 * r["weight_pct"] / 100))


def test_plan_fixed_horizon_matches_statsmodels_reference():
    from canary.stats.plan import fixed_horizon_n

    # STATS.md: 1% -> 2% at a 5% share, one-sided alpha 0.05, power 0.9 needs about 1,295 canary requests.
    assert fixed_horizon_n(0.02, 0.01, 0.05, 0.05) == pytest.approx(1295, rel=0.01)


def test_plan_warns_when_a_stage_cannot_decide(spec_path, capsys):
    code, lines, _ = run_cli(capsys, "plan", str(spec_path), "--rps", "0.5")
    assert code == 0
    assert any(line.startswith("warning: stage 0 (5%)") for line in lines)


SEGMENTED = SPEC + """\
  segments: {{by: device, values: [android, ios, web]}}
"""


def test_plan_shows_each_segments_time_to_a_decision_and_warns_about_a_small_one(tmp_path, capsys):
    path = tmp_path / "seg.yaml"
    path.write_text(SEGMENTED.format(model="seg"))
    code, lines, _ = run_cli(capsys, "plan", str(path), "--rps", "400", "--segment-share", "android=0.6",
                             "--segment-share", "ios=0.38", "--segment-share", "web=0.02", "--json")
    assert code == 0
    rows = {(r["stage"], r["segment"], r["metric"]): r for r in map(json.loads, lines)}
    overall, android, web = (rows[(0, s, "error_rate")] for s in (None, "device=android", "device=web"))
    # A segment sees its share of the canary requests and tests at its share of the error budget.
    assert android["rollback_alpha"] == pytest.approx(overall["rollback_alpha"] / 3)
    assert android["detect_requests"] > overall["detect_requests"]
    assert android["detect_s"] == pytest.approx(android["detect_requests"] / (400 * 0.05 * 0.6))
    assert web["required"] is False and android["required"] is True and web["segment_share"] == 0.02
    assert "too small a segment to decide within the stage" in web["warning"]
    code, lines, _ = run_cli(capsys, "plan", str(path), "--rps", "400")  # equal shares by default
    assert code == 0 and any(line.startswith("0      5%      device=web      33%") for line in lines), lines


@pytest.mark.parametrize(("flag", "fragment"), [("tv=0.2", "VALUE one of ['android', 'ios', 'web']"),
                                                ("web=2", "SHARE in [0, 1]"), ("web", "give VALUE=SHARE")])
def test_plan_refuses_a_bad_segment_share(tmp_path, capsys, flag, fragment):
    path = tmp_path / "seg.yaml"
    path.write_text(SEGMENTED.format(model="seg"))
    code, _, err = run_cli(capsys, "plan", str(path), "--rps", "400", "--segment-share", flag)
    assert code == 2 and fragment in err


def test_plan_rejects_bad_arguments(spec_path, capsys):
    code, _, err = run_cli(capsys, "plan", str(spec_path), "--rps", "10", "--baseline-error-rate", "2")
    assert code == 2 and "--baseline-error-rate" in err


def test_replay_of_many_long_runs_rolls_back_the_regressions(tmp_path, spec_path, capsys):
    """100 runs x 400 rows (its speed at 1,000 x 1,000 is measured by bench/replay_bench.py)."""
    runs = 100
    synthetic_runs(runs, 200).to_csv(tmp_path / "big.csv", index=False)
    code, lines, _ = run_cli(capsys, "replay", str(spec_path), str(tmp_path / "big.csv"))
    assert code == 0 and json.loads(lines[-1])["runs"] == runs
    decisions = {int(r["run"]): r["decision"] for r in map(json.loads, lines[:-1])}
    regressed = [d for run, d in decisions.items() if run % 2 == 1]
    healthy = [d for run, d in decisions.items() if run % 2 == 0]
    assert regressed.count("rollback") >= 0.95 * len(regressed), regressed
    assert healthy.count("rollback") <= 0.1 * len(healthy), healthy


def test_replay_reports_progress_on_stderr_and_keeps_stdout_json(tmp_path, spec_path, capsys):
    """Piped (no terminal), progress is a plain line on stderr; stdout stays one JSON object per line."""
    data = make_csv(tmp_path / "d.csv")
    code, lines, err = run_cli(capsys, "replay", str(spec_path), str(data))
    assert code == 0 and len(lines) == 7 and all(isinstance(json.loads(line), dict) for line in lines)
    assert "replaying runs: 6/6" in err
