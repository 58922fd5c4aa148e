"""``canary replay`` of a ``prediction_quality`` metric: the ``labelled`` and ``wrong`` columns, decided as
the live gate decides at every row (the parity pattern of ``test_replay_gate_parity.py``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from canary.spec.model import parse_spec
from canary.stats.replay import replay
from canary.stats.replay_input import ReplayInputError, load_csv

from .test_replay_gate_parity import ROWS_PER_STAGE, gate_at_every_row, replay_every_prefix

#: (warm-up, poll interval, minimum duration, maximum duration), seconds.
TIMINGS = [(0, 30, 300, 3600), (90, 60, 120, 600), (60, 15, 300, 420)]
LABEL_DELAY_S = 60
N = 20_000
#: Per case: (canary wrong rate, stable wrong rate, labelled share) as a function of the row k in its stage.
QUALITY = {
    "as_accurate": lambda k: (0.1, 0.1, 0.5),
    "flipping": lambda k: (0.45, 0.1, 0.5),
    "slightly_worse": lambda k: (0.115, 0.1, 0.05),
    "no_labels": lambda k: (0.1, 0.1, 0.0),
    "labels_stop": lambda k: (0.1, 0.1, 0.5 if k < 8 else 0.0),
}


def quality_spec(warmup_s: float, poll_s: float, min_s: float, max_s: float):
    stage = {"min_duration": f"{min_s}s", "max_duration": f"{max_s}s", "min_requests": 500}
    return parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 50, **stage}, {"weight": 100, **stage}],
                       "analysis": {"warmup": f"{warmup_s}s", "poll_interval": f"{poll_s}s", "metrics": [
                           {"name": "error_rate", "kind": "error_rate", "tolerance": 0.25, "mde": 1.0},
                           {"name": "accuracy", "kind": "prediction_quality", "tolerance": 0.2,
                            "label_delay": f"{LABEL_DELAY_S}s"}]}})


def quality_recording(case: str, weights: tuple[int, ...], poll_s: float, seed: int = 3) -> list[dict]:
    """Rows of one run; a row's ``labelled`` are requests of its stage at least ``LABEL_DELAY_S`` old (as
    the author of a replay file counts them), a share of those labelled, ``wrong`` drawn at the version's rate."""
    rng = np.random.default_rng(seed)
    delay_rows = math.ceil(LABEL_DELAY_S / poll_s)
    rows = []
    for s, weight in enumerate(weights):
        for k in range(ROWS_PER_STAGE):
            t = (s * ROWS_PER_STAGE + k) * poll_s
            c_wrong, s_wrong, share = QUALITY[case](k)
            for version, n, rate in (("canary", N, c_wrong), ("stable", 0 if weight == 100 else N, s_wrong)):
                labelled = int(rng.binomial(n, share)) if k >= delay_rows else 0
                rows.append({"t": t, "version": version, "requests": n, "errors": int(rng.binomial(n, 0.01)),
                             "weight": weight, "labelled": labelled, "wrong": int(rng.binomial(labelled, rate))})
    return rows


@pytest.mark.parametrize(("timing", "case", "weights"),
                         [*itertools.product(TIMINGS, QUALITY, [(50,), (50, 100)])])
def test_replay_decides_prediction_quality_like_the_gate_at_every_row(tmp_path, timing, case, weights):
    spec = quality_spec(*timing)
    rows = quality_recording(case, weights, timing[1])
    expected = gate_at_every_row(spec, rows)
    got = replay_every_prefix(tmp_path, spec, rows)
    mismatches = [(k, e, g) for k, (e, g) in enumerate(zip(expected, got, strict=True)) if e != g]
    assert not mismatches, f"(row, gate, replay): {mismatches[:5]}"


def test_the_quality_cases_reach_rollback_promote_and_undecided():
    seen: dict[str, set[str]] = {}
    for timing, case in itertools.product(TIMINGS, QUALITY):
        seen.setdefault(case, set()).update(d for d, _ in gate_at_every_row(quality_spec(*timing),
                                                                           quality_recording(case, (50,), timing[1])))
    assert "rollback" in seen["flipping"] and "promote" in seen["as_accurate"]
    assert "promote" not in seen["no_labels"] | seen["slightly_worse"]  # no labels is never healthy


def test_a_rollback_on_accuracy_names_the_metric_and_its_labelled_counts(tmp_path):
    spec = quality_spec(0, 30, 300, 3600)
    path = tmp_path / "run.csv"
    pd.DataFrame([{"run": "r1", **row} for row in quality_recording("flipping", (50,), 30)]).to_csv(path, index=False)
    (out,) = list(replay(spec, *load_csv(path, spec)))
    assert out["decision"] == "rollback" and out["metric"] == "accuracy"
    assert out["evidence"]["canary_labelled"] > 0 and out["evidence"]["label_delay_s"] == LABEL_DELAY_S


def _write(tmp_path, rows: list[dict]):
    path = tmp_path / "bad.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_quality_metric_without_the_label_columns_is_refused_naming_them(tmp_path):
    spec = quality_spec(0, 30, 300, 3600)
    rows = [{"run": "r", "t": 0, "version": v, "requests": 10, "errors": 0} for v in ("canary", "stable")]
    with pytest.raises(ReplayInputError, match=r"metric 'accuracy' \(prediction_quality\) needs columns "
                                               r"\['labelled', 'wrong'\].*label_delay = 60 s") as info:
        load_csv(_write(tmp_path, rows), spec)
    assert info.value.column == "labelled"
    with pytest.raises(ReplayInputError, match=r"\['labelled', 'wrong'\] go together: \['labelled'\] without "
                                               r"\['wrong'\]"):
        load_csv(_write(tmp_path, [{**r, "labelled": 3} for r in rows]), spec)


def test_more_wrong_than_labelled_names_the_row(tmp_path):
    spec = quality_spec(0, 30, 300, 3600)
    rows = [{"run": "r", "t": 0, "version": "canary", "requests": 10, "errors": 0, "labelled": 4, "wrong": 1},
            {"run": "r", "t": 0, "version": "stable", "requests": 10, "errors": 0, "labelled": 2, "wrong": 3}]
    with pytest.raises(ReplayInputError, match=r"row 2 \(line 3\), column 'wrong': wrong \(3\) exceeds labelled \(2\)"):
        load_csv(_write(tmp_path, rows), spec)
