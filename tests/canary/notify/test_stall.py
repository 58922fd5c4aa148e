"""When a stage under observation counts as stalled: no look for N poll intervals, or undecided past its deadline."""

from __future__ import annotations

import pytest

from canary.notify.stuck import StallKind, find_stall
from canary.spec.model import parse_spec

# poll every 10s; stage 1 may run 5m, stage 2 10m
SPEC = parse_spec({"model": "m", "endpoint": "e", "analysis": {"poll_interval": "10s"},
                   "stages": [{"weight": 10, "min_duration": "1m", "max_duration": "5m"},
                              {"weight": 100, "min_duration": "1m", "max_duration": "10m"}]})
T0 = 1_000_000.0  # stage 1's traffic change
STAGE_1 = [("traffic", 0, T0)]
STAGE_2 = [*STAGE_1, ("gate", 0, T0 + 100), ("traffic", 1, T0 + 110)]


def looks_every(stage: int, start_s: float, end_s: float, step_s: float = 10.0) -> list[tuple[int, float]]:
    out, t = [], start_s
    while t <= end_s:
        out.append((stage, t))
        t += step_s
    return out


@pytest.mark.parametrize(("events", "looks", "now_s", "expected"), [
    # polled on time: no stall
    (STAGE_1, looks_every(0, T0 + 10, T0 + 120), T0 + 125, None),
    # no look yet, but within 5 intervals of the traffic change
    (STAGE_1, [], T0 + 50, None),
    # no look at all for more than 5 intervals since the traffic change
    (STAGE_1, [], T0 + 51, (StallKind.NO_LOOKS, 0, 51.0)),
    # looks stopped at +60: silent for 61s at +121
    (STAGE_1, looks_every(0, T0 + 10, T0 + 60), T0 + 121, (StallKind.NO_LOOKS, 0, 61.0)),
    # exactly 5 intervals is not yet a stall (strictly more)
    (STAGE_1, looks_every(0, T0 + 10, T0 + 60), T0 + 110, None),
    # polled, but still undecided 5 intervals past max_duration (5m + 50s)
    (STAGE_1, looks_every(0, T0 + 10, T0 + 350), T0 + 351, (StallKind.PAST_DEADLINE, 0, 1.0)),
    (STAGE_1, looks_every(0, T0 + 10, T0 + 345), T0 + 349, None),
    # stage 1 decided: stage 2 is the one observed (stage 1's looks do not count for it)
    (STAGE_2, looks_every(0, T0 + 10, T0 + 100), T0 + 150, None),
    (STAGE_2, looks_every(0, T0 + 10, T0 + 100), T0 + 161, (StallKind.NO_LOOKS, 1, 51.0)),
    (STAGE_2, looks_every(1, T0 + 120, T0 + 160), T0 + 161, None),
    # a stage waiting for a person (gate recorded, next traffic not set) is not observed
    ([*STAGE_1, ("gate", 0, T0 + 100)], [], T0 + 10_000, None),
    # before any traffic change (shadow test, deploy): nothing observed
    ([], [], T0 + 10_000, None),
    # looks of an earlier try of the stage (before its traffic change was recorded again) do not count
    ([("traffic", 0, T0 + 200)], looks_every(0, T0 + 10, T0 + 190), T0 + 251, (StallKind.NO_LOOKS, 0, 51.0)),
    # other events are ignored
    ([*STAGE_1, ("notification", 0, T0 + 300), ("shadow", -1, T0 - 5)], looks_every(0, T0, T0 + 120), T0 + 125,
     None),
])
def test_find_stall(events, looks, now_s, expected):
    stall = find_stall(SPEC, events, looks, now_s=now_s, missed_polls=5)
    if expected is None:
        assert stall is None
    else:
        assert stall is not None
        assert (stall.kind, stall.stage_index, round(stall.silent_s, 6)) == expected


def test_fewer_missed_polls_alert_sooner():
    assert find_stall(SPEC, STAGE_1, [], now_s=T0 + 21, missed_polls=2) is not None
    assert find_stall(SPEC, STAGE_1, [], now_s=T0 + 21, missed_polls=3) is None
    with pytest.raises(ValueError, match="missed_polls must be at least 1, got 0"):
        find_stall(SPEC, STAGE_1, [], now_s=T0, missed_polls=0)


def test_the_explanation_and_key_name_the_stage_and_the_numbers():
    silent = find_stall(SPEC, STAGE_1, looks_every(0, T0 + 10, T0 + 60), now_s=T0 + 480, missed_polls=5)
    assert silent.key == "stage_1/no_looks"
    assert silent.explain() == ("stage 1 (10%) has had no look for 7m since its last look: it should be polled "
                                "every 10s (alert after 5 missed polls)")
    never = find_stall(SPEC, STAGE_1, [], now_s=T0 + 90, missed_polls=5)
    assert "has had no look for 1m30s since its traffic was set" in never.explain()
    late = find_stall(SPEC, STAGE_1, looks_every(0, T0 + 10, T0 + 400), now_s=T0 + 400, missed_polls=5)
    assert late.key == "stage_1/past_deadline"
    assert late.explain() == ("stage 1 (10%) is still undecided after 6m40s, past its max_duration of 5m: the "
                              "stage should have decided by its timeout policy")
