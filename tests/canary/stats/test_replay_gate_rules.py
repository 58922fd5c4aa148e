"""``canary replay`` applies the live gate's stage rules: minimum duration and canary requests before
promotion, and HALT when a stage has had no canary (or stable) requests by its no-data deadline.

Row-by-row agreement with :func:`canary.policy.gate.evaluate_stage` is ``test_replay_gate_parity.py``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from canary.stats.replay import replay
from canary.stats.replay_input import load_csv

from .helpers import make_spec

METRICS = [{"name": "error_rate", "kind": "error_rate", "tolerance": 0.25, "mde": 1.0}]


def spec_with(min_duration: str = "10m", min_requests: int = 100, warmup_s: float | None = None):
    spec = make_spec(METRICS, stages=[
        {"weight": 50, "min_duration": min_duration, "min_requests": min_requests, "max_duration": "1h"},
        {"weight": 100, "min_duration": min_duration, "min_requests": min_requests, "max_duration": "1h"}])
    if warmup_s is not None:
        spec = spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"warmup_s": warmup_s})})
    return spec


def rows(times: list[float], *, weight: float | None = 50, canary: int = 50_000, stable: int = 50_000,
         run: str = "r0", error_rate: float = 0.01) -> list[dict]:
    """Deterministic rows: both versions at the same error rate (a healthy canary)."""
    out = []
    for t in times:
        for version, n in (("canary", canary), ("stable", stable)):
            row = {"run": run, "t": t, "version": version, "requests": n, "errors": int(round(n * error_rate))}
            if weight is not None:
                row["weight"] = weight
            out.append(row)
    return out


def run_replay(tmp_path: Path, spec, data: list[dict]) -> dict[str, dict]:
    path = tmp_path / "d.csv"
    pd.DataFrame(data).to_csv(path, index=False)
    df, layout = load_csv(path, spec)
    return {r["run"]: r for r in replay(spec, df, layout)}


def test_healthy_canary_promotes_only_after_the_minimum_duration(tmp_path):
    spec = spec_with(min_duration="10m")
    short = run_replay(tmp_path, spec, rows([30.0 * k for k in range(10)]))["r0"]  # 270 s of a 600 s minimum
    assert short["decision"] == "continue"
    assert short["evidence"]["error_rate"] == "advance"  # non-inferiority alone is not enough
    assert short["evidence"]["gate"]["waiting"] == ["270/600 s"]
    long = run_replay(tmp_path, spec, rows([30.0 * k for k in range(21)]))["r0"]  # 600 s
    assert long["decision"] == "promote" and long["evidence"]["gate"]["waiting"] == []


def test_healthy_canary_promotes_only_after_the_minimum_canary_requests(tmp_path):
    spec = spec_with(min_duration="0s", min_requests=2_000_000)
    few = run_replay(tmp_path, spec, rows([30.0 * k for k in range(21)]))["r0"]  # 1,050,000 canary requests
    assert few["decision"] == "continue"
    assert few["evidence"]["gate"]["waiting"] == ["1050000/2000000 canary requests"]
    enough = run_replay(tmp_path, spec, rows([30.0 * k for k in range(41)]))["r0"]
    assert enough["decision"] == "promote"


def test_minimum_requests_count_the_last_stage_window_only(tmp_path):
    spec = spec_with(min_duration="0s", min_requests=600_000)
    data = rows([30.0 * k for k in range(20)]) + rows([600.0 + 30.0 * k for k in range(10)], weight=100,
                                                       canary=50_000, stable=0)
    res = run_replay(tmp_path, spec, data)["r0"]
    assert res["decision"] == "continue"  # 500,000 canary requests at 100% (1.5M over the run)
    assert res["evidence"]["gate"]["canary_requests"] == 500_000
    data += rows([900.0, 930.0], weight=100, canary=50_000, stable=0)
    assert run_replay(tmp_path, spec, data)["r0"]["decision"] == "promote"


@pytest.mark.parametrize("empty", ["canary", "stable"])
def test_a_stage_without_requests_halts_after_its_minimum_duration(tmp_path, empty):
    spec = spec_with(min_duration="5m")
    kw = {empty: 0}
    res = run_replay(tmp_path, spec, rows([30.0 * k for k in range(20)], **kw))["r0"]
    assert res["decision"] == "halt" and res["metric"] == "data"
    assert res["t"] == 300.0  # the first row at or past the minimum duration
    assert res["evidence"]["min_duration_s"] == 300.0
    assert f"no {empty} requests" in res["evidence"]["reason"]
    # Before the minimum duration it only waits.
    assert run_replay(tmp_path, spec, rows([30.0 * k for k in range(10)], **kw))["r0"]["decision"] == "continue"


def test_no_stable_traffic_at_100_percent_is_not_missing_data(tmp_path):
    spec = spec_with(min_duration="5m")
    data = rows([30.0 * k for k in range(20)]) + rows([600.0 + 30.0 * k for k in range(12)], weight=100, stable=0)
    res = run_replay(tmp_path, spec, data)["r0"]
    assert res["decision"] == "promote"  # 100% after a non-inferior 50% stage, bake time and requests reached
    data = rows([30.0 * k for k in range(20)]) + rows([600.0 + 30.0 * k for k in range(12)], weight=100, canary=0,
                                                      stable=0)
    res = run_replay(tmp_path, spec, data)["r0"]
    assert res["decision"] == "halt" and res["metric"] == "data" and res["t"] == 900.0


def test_data_halt_waits_a_poll_interval_after_the_warm_up(tmp_path):
    """Warm-up 240 s, minimum duration 60 s, poll 30 s: the gate's no-data deadline is 270 s (replay
    used to halt at 240 s, when the window had only just opened)."""
    spec = spec_with(min_duration="1m", warmup_s=240.0)
    res = run_replay(tmp_path, spec, rows([30.0 * k for k in range(20)], canary=0))["r0"]
    assert res["decision"] == "halt" and res["t"] == 270.0
    assert res["evidence"]["no_data_deadline_s"] == 270.0


def test_without_a_weight_column_the_first_spec_stage_rules_apply(tmp_path):
    spec = spec_with(min_duration="10m")
    assert run_replay(tmp_path, spec, rows([30.0 * k for k in range(10)], weight=None))["r0"]["decision"] == "continue"
    assert run_replay(tmp_path, spec, rows([30.0 * k for k in range(21)], weight=None))["r0"]["decision"] == "promote"
    res = run_replay(tmp_path, spec, rows([30.0 * k for k in range(21)], weight=None, canary=0))["r0"]
    assert res["decision"] == "halt" and res["t"] == 600.0


def test_a_weight_no_spec_stage_has_takes_the_strictest_rules(tmp_path):
    spec = make_spec(METRICS, stages=[{"weight": 50, "min_duration": "1m", "max_duration": "1h"},
                                      {"weight": 100, "min_duration": "10m", "max_duration": "1h"}])
    data = rows([30.0 * k for k in range(10)], weight=30, canary=30_000, stable=70_000)
    assert run_replay(tmp_path, spec, data)["r0"]["decision"] == "continue"
    data = rows([30.0 * k for k in range(21)], weight=30, canary=30_000, stable=70_000)
    assert run_replay(tmp_path, spec, data)["r0"]["decision"] == "promote"
