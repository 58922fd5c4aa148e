"""Per-segment analysis (``analysis.segments``): the budget split, the analyzer's verdicts per segment, the gate's
wording, the carried state, and an A/A simulation over four segments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from canary.errors import SpecError
from canary.policy.decisions import Decision
from canary.policy.evidence import Snapshot
from canary.policy.gate import StageClock, evaluate_stage
from canary.spec.model import parse_spec
from canary.stats import SequentialAnalyzer, SequentialState
from canary.stats.budget import error_budget

from .helpers import vstats

A = SequentialAnalyzer()
DEVICES = ["android", "ios", "web"]


def seg_spec(*, alpha: float = 0.05, metrics_backend: str = "local", stages=None, **segments):
    return parse_spec({
        "model": "m", "endpoint": "e", "backends": {"metrics": {"name": metrics_backend}},
        "shadow": {"enabled": False},
        "stages": stages or [{"weight": 10, "min_duration": "0s", "max_duration": "1h", "min_requests": 0},
                             {"weight": 50, "min_duration": "0s", "max_duration": "1h", "min_requests": 0},
                             {"weight": 100, "max_duration": "1h"}],
        "analysis": {"alpha": alpha, "metrics": [{"name": "error_rate", "kind": "error_rate", "tolerance": 0.25,
                                                  "mde": 1.0}],
                     "segments": {"by": "device", "values": DEVICES, **segments}},
    })


def window(parts: dict[str, tuple[int, int, int, int]]) -> Snapshot:
    """A window from per-segment ``(stable requests, stable errors, canary requests, canary errors)``."""
    segs = {v: Snapshot(stable=vstats("s", sn, se), canary=vstats("c", cn, ce), start_s=0.0, end_s=600.0)
            for v, (sn, se, cn, ce) in parts.items()}
    total = [sum(p[i] for p in parts.values()) for i in range(4)]
    return Snapshot(stable=vstats("s", total[0], total[1]), canary=vstats("c", total[2], total[3]),
                    start_s=0.0, end_s=600.0, segments=segs)


def by_label(assessments):
    return {a.label: a for a in assessments}


def test_budget_gives_the_overall_test_and_each_segment_its_share_and_sums_to_alpha():
    spec = seg_spec(alpha=0.05, alpha_share=0.6)
    overall = error_budget(spec.analysis)
    seg = overall.for_segment()
    assert overall.srm_alpha == pytest.approx(0.4 * 0.001)
    assert overall.metric("error_rate") == pytest.approx(0.4 * 0.049)
    assert seg.srm_alpha == pytest.approx(0.2 * 0.001) and seg.metric("error_rate") == pytest.approx(0.2 * 0.049)
    spent = overall.srm_alpha + overall.metrics_alpha + 3 * (seg.srm_alpha + seg.metrics_alpha)
    assert spent == pytest.approx(0.05)
    assert seg.promote_alpha == overall.promote_alpha == 0.05  # promotion is an intersection-union test
    assert "overall 40%, each of 3 segments 20.0%" in overall.describe()
    with pytest.raises(ValueError, match="no segments"):
        seg.for_segment()


def test_regression_confined_to_one_segment_rolls_back_naming_it_while_overall_is_within_tolerance():
    # android: canary 5% vs 1% errors on 2,000 requests; ios and web healthy and much larger, so that the
    # canary's overall error rate is 1.08% vs 1%, within the 25% tolerance.
    w = window({"android": (18_000, 180, 2_000, 100), "ios": (450_000, 4_500, 50_000, 500),
                "web": (450_000, 4_500, 50_000, 500)})
    res, _ = A.assess(seg_spec(), w, canary_weight_pct=10, state=None)
    got = by_label(res)
    assert got["error_rate"].decision is not Decision.ROLLBACK
    assert got["error_rate"].evidence["ratio_estimate"] < 1.25
    android = got["error_rate in segment device=android"]
    assert android.decision is Decision.ROLLBACK and android.segment == "device=android"
    # 2% of the canary requests: too few to be required to show non-inferiority, enough to show harm.
    assert android.evidence["canary_events"] == 100 and android.evidence["required"] is False
    assert got["error_rate in segment device=ios"].decision is not Decision.ROLLBACK
    result, _ = evaluate_stage(seg_spec(), seg_spec().stages[0], StageClock(index=0, elapsed_s=600.0), w, analyzer=A)
    assert result.decision is Decision.ROLLBACK and result.metric == "error_rate in segment device=android"
    assert result.reason.startswith("error_rate in segment device=android: e-value ")
    json.dumps(result.evidence)


def test_healthy_in_every_segment_advances_and_an_undecided_required_segment_holds_the_stage():
    healthy = window({"android": (297_000, 2_970, 33_000, 330), "ios": (297_000, 2_970, 33_000, 330),
                      "web": (297_000, 2_970, 33_000, 330)})
    result, _ = evaluate_stage(seg_spec(), seg_spec().stages[0], StageClock(index=0, elapsed_s=600.0), healthy,
                               analyzer=A)
    assert result.decision is Decision.ADVANCE, result.reason
    # web with 6% of the canary requests (above min_share 5%) cannot show non-inferiority yet: the stage waits.
    thin = window({"android": (297_000, 2_970, 33_000, 330), "ios": (297_000, 2_970, 33_000, 330),
                   "web": (38_700, 387, 4_300, 43)})
    result, _ = evaluate_stage(seg_spec(), seg_spec().stages[0], StageClock(index=0, elapsed_s=600.0), thin,
                               analyzer=A)
    assert result.decision is Decision.CONTINUE and "error_rate in segment device=web" in result.reason


@pytest.mark.parametrize(("segments", "web_decision", "why"), [
    ({"min_share": 0.1}, Decision.ADVANCE, "below min_share 10%"),  # web: 6% of canary requests
    ({"require_each": False}, Decision.ADVANCE, "require_each: false"),
    ({}, Decision.CONTINUE, "not yet conclusive"),
])
def test_a_segment_not_required_to_show_non_inferiority_does_not_hold_the_stage(segments, web_decision, why):
    thin = window({"android": (297_000, 2_970, 33_000, 330), "ios": (297_000, 2_970, 33_000, 330),
                   "web": (38_700, 387, 4_300, 43)})
    res, _ = A.assess(seg_spec(**segments), thin, canary_weight_pct=10, state=None)
    web = by_label(res)["error_rate in segment device=web"]
    assert web.decision is web_decision and why in web.reason
    assert web.evidence["canary_share"] == pytest.approx(4_300 / 70_300)


def test_a_small_segment_still_rolls_back_on_a_regression():
    w = window({"android": (297_000, 2_970, 33_000, 330), "ios": (297_000, 2_970, 33_000, 330),
                "web": (9_000, 90, 1_000, 200)})
    res, _ = A.assess(seg_spec(min_share=0.1), w, canary_weight_pct=10, state=None)
    web = by_label(res)["error_rate in segment device=web"]
    assert web.decision is Decision.ROLLBACK and web.evidence["required"] is False


def test_a_segment_without_stable_traffic_waits_instead_of_halting_the_rollout():
    # web: 3 canary requests (13% of them) and no stable one yet.
    w = window({"android": (90, 1, 10, 0), "ios": (90, 1, 10, 0), "web": (0, 0, 3, 0)})
    res, _ = A.assess(seg_spec(), w, canary_weight_pct=10, state=None)
    got = by_label(res)
    assert got["error_rate in segment device=web"].decision is Decision.CONTINUE
    assert "no stable traffic in the segment" in got["error_rate in segment device=web"].reason
    assert not any(a.decision is Decision.HALT for a in res)


def test_no_request_in_any_listed_segment_halts_as_a_misconfiguration():
    w = Snapshot(stable=vstats("s", 9_000, 90), canary=vstats("c", 1_000, 10), start_s=0.0, end_s=600.0)
    res, _ = A.assess(seg_spec(), w, canary_weight_pct=10, state=None)
    (halt,) = [a for a in res if a.decision is Decision.HALT]
    assert halt.metric == "segments" and "none of 1000 canary requests has device in ['android', 'ios', 'web']" \
        in halt.reason
    few = Snapshot(stable=vstats("s", 90, 1), canary=vstats("c", 10, 0), start_s=0.0, end_s=600.0)
    res, _ = A.assess(seg_spec(), few, canary_weight_pct=10, state=None)  # below guardrails.min_requests: wait
    assert not any(a.decision is Decision.HALT for a in res)


def test_sample_ratio_mismatch_in_one_segment_halts_naming_it():
    # Overall 10% canary; inside ios the canary gets 20%: its router is wrong for ios only.
    w = window({"android": (90_000, 900, 6_000, 60), "ios": (40_000, 400, 10_000, 100),
                "web": (90_000, 900, 8_400, 84)})
    res, _ = A.assess(seg_spec(), w, canary_weight_pct=10, state=None)
    got = by_label(res)
    assert got["srm in segment device=ios"].decision is Decision.HALT
    assert got["srm in segment device=ios"].evidence["threshold"] == pytest.approx(1 / (0.001 * 0.5 / 3))


def test_each_segment_carries_its_own_evidence_into_the_next_stage():
    spec = seg_spec()
    w = window({"android": (9_000, 90, 1_000, 30), "ios": (9_000, 90, 1_000, 10), "web": (9_000, 90, 1_000, 10)})
    _, state = A.assess(spec, w, canary_weight_pct=10, state=None)
    restored = SequentialState.from_dict(json.loads(json.dumps(state)))
    assert restored.to_dict() == state
    android = restored.segment("android").metric("error_rate")
    assert android.periods == ((30.0, 90.0, 1000.0, 9000.0),)
    assert restored.metric("error_rate").periods == ((50.0, 270.0, 3000.0, 27000.0),)
    assert restored.segment("mobile") == SequentialState()
    # The second stage's android evidence adds to the first's: two moderate stages make one rollback.
    res, _ = A.assess(spec, window({"android": (5_000, 50, 5_000, 150), "ios": (5_000, 50, 5_000, 50),
                                    "web": (5_000, 50, 5_000, 50)}), canary_weight_pct=50, state=state)
    android_now = by_label(res)["error_rate in segment device=android"]
    assert android_now.evidence["canary_events"] == 180 and android_now.evidence["stages"] == 2


@pytest.mark.parametrize(("segments", "where", "fragment"), [
    ({"by": "device"}, "analysis.segments", "values: list the segments to test"),
    ({"by": "device", "values": ["ios", "ios"]}, "analysis.segments.values", "listed more than once"),
    ({"by": "Device", "values": ["ios"]}, "analysis.segments.by", "must match"),
    ({"by": "device", "values": []}, "analysis.segments.values", "at least 1"),
    ({"by": "device", "values": ["ios"], "alpha_share": 1.0}, "analysis.segments.alpha_share", "less than 1"),
])
def test_bad_segments_are_refused_naming_the_field(segments, where, fragment):
    with pytest.raises(SpecError) as err:
        parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 100}], "analysis": {"segments": segments}})
    assert any(loc == where and fragment in msg for loc, msg in err.value.problems), err.value.problems


def test_cloudwatch_refuses_segments_naming_the_backends_that_can():
    with pytest.raises(SpecError) as err:
        seg_spec(metrics_backend="cloudwatch", stages=[{"weight": 10, "min_duration": "10m", "max_duration": "1h"},
                                                       {"weight": 100, "min_duration": "10m"}])
    (msg,) = [m for loc, m in err.value.problems if loc == "analysis.segments"]
    assert "cloudwatch metrics backend cannot split" in msg and "local, prometheus" in msg


def test_a_a_with_four_segments_stays_within_alpha():
    """Healthy canary, four segments of unequal size, 10 looks per run: false stops <= alpha (seeded, exact).

    bench/stats_bench.py (B10) runs the same scenario with thousands of runs."""
    values = ["a", "b", "c", "d"]
    sizes = np.array([0.4, 0.3, 0.2, 0.1])
    spec = parse_spec({
        "model": "m", "endpoint": "e", "shadow": {"enabled": False},
        "stages": [{"weight": 20, "max_duration": "1h"}, {"weight": 100}],
        "analysis": {"alpha": 0.1, "metrics": [{"name": "error_rate", "kind": "error_rate", "tolerance": 0.5}],
                     "segments": {"by": "device", "values": values}}})
    rng = np.random.default_rng(7)
    runs, looks, per_look, rate = 60, 10, 2_000, 0.02
    stops = 0
    for _ in range(runs):
        n = np.zeros((4, 2), dtype=int)  # per segment: stable, canary requests
        x = np.zeros((4, 2), dtype=int)
        for _ in range(looks):
            seg_n = rng.multinomial(per_look, sizes)
            canary = rng.binomial(seg_n, 0.2)
            new = np.stack([seg_n - canary, canary], axis=1)
            n += new
            x += rng.binomial(new, rate)
            w = Snapshot(stable=vstats("s", int(n[:, 0].sum()), int(x[:, 0].sum())),
                         canary=vstats("c", int(n[:, 1].sum()), int(x[:, 1].sum())), start_s=0.0, end_s=1.0,
                         segments={v: Snapshot(stable=vstats("s", int(n[i, 0]), int(x[i, 0])),
                                               canary=vstats("c", int(n[i, 1]), int(x[i, 1])), start_s=0.0, end_s=1.0)
                                   for i, v in enumerate(values)})
            res, _ = A.assess(spec, w, canary_weight_pct=20, state=None)
            if any(a.decision in (Decision.ROLLBACK, Decision.HALT) for a in res):
                stops += 1
                break
    # alpha 0.1 over 60 runs: 6 at the bound; the union bound makes the real rate far lower.
    assert stops / runs <= 0.1, stops


# -- canary replay with a segment column ----------------------------------------------------------------

REPLAY_SPEC = {
    "model": "m", "endpoint": "e", "shadow": {"enabled": False},
    "stages": [{"weight": 50, "min_duration": "60s", "max_duration": "1h", "min_requests": 500},
               {"weight": 100, "min_duration": "60s", "max_duration": "1h"}],
    "analysis": {"poll_interval": "30s", "metrics": [{"name": "error_rate", "kind": "error_rate",
                                                      "tolerance": 0.25, "mde": 1.0}],
                 "segments": {"by": "device", "values": DEVICES, "require_each": False}},
}
#: Requests per version and poll, per segment; the canary's error rate per segment (stable: 1%).
SIZES = {"android": 4_000, "ios": 3_000, "web": 600}


def replay_rows(web_error_rate: float, polls: int = 16) -> list[dict]:
    rows = []
    for k in range(polls):
        for device, n in SIZES.items():
            for version, rate in (("stable", 0.01), ("canary", web_error_rate if device == "web" else 0.01)):
                rows.append({"run": "r", "t": 30.0 * (k + 1), "version": version, "segment": device,
                             "requests": n, "errors": int(round(n * rate)), "weight": 50})
    return rows


def test_replay_reads_a_segment_column_and_agrees_with_the_live_gate_at_every_poll(tmp_path):
    """Replay of every prefix of a run: the same decision, time and test as the gate polled on the same counts."""
    from canary.stats.replay import replay
    from canary.stats.replay_input import load_csv

    spec = parse_spec(REPLAY_SPEC)
    rows = replay_rows(web_error_rate=0.06)
    polls = sorted({r["t"] for r in rows})
    gate_first_stop = None
    for t in polls:
        seen = [r for r in rows if r["t"] <= t]

        def stats(version, device=None, seen=seen):
            picked = [r for r in seen if r["version"] == version and device in (None, r["segment"])]
            return vstats(version, sum(r["requests"] for r in picked), sum(r["errors"] for r in picked))

        window = Snapshot(stable=stats("stable"), canary=stats("canary"), start_s=0.0, end_s=t,
                          segments={d: Snapshot(stable=stats("stable", d), canary=stats("canary", d), start_s=0.0,
                                                end_s=t) for d in DEVICES})
        result, _ = evaluate_stage(spec, spec.stages[0], StageClock(index=0, elapsed_s=t - 30.0), window, analyzer=A)
        if result.decision in (Decision.ROLLBACK, Decision.HALT):
            gate_first_stop = (t, result.metric)
            break
    assert gate_first_stop is not None and gate_first_stop[1] == "error_rate in segment device=web"
    path = tmp_path / "runs.csv"
    import pandas as pd

    # vstats puts every request at <= 50 ms: the latency columns are not needed here.
    pd.DataFrame(rows).to_csv(path, index=False)
    (out,) = list(replay(spec, *load_csv(path, spec)))
    assert (out["decision"], out["t"], out["metric"]) == ("rollback", gate_first_stop[0], gate_first_stop[1])
    assert out["evidence"]["segment"] == "device=web" and out["evidence"]["ratio_lower"] > 1.0


def test_replay_of_a_healthy_segmented_run_promotes_and_without_segments_sums_the_segment_rows(tmp_path):
    import pandas as pd

    from canary.stats.replay import replay
    from canary.stats.replay_input import ReplayInputError, load_csv

    path = tmp_path / "runs.csv"
    pd.DataFrame(replay_rows(web_error_rate=0.01, polls=40)).to_csv(path, index=False)
    spec = parse_spec(REPLAY_SPEC)
    (out,) = list(replay(spec, *load_csv(path, spec)))
    assert out["decision"] == "promote", out
    assert out["evidence"]["error_rate in segment device=web"] == "advance"  # not required: it cannot hold
    plain = parse_spec({**REPLAY_SPEC, "analysis": {**REPLAY_SPEC["analysis"], "segments": None}})
    (summed,) = list(replay(plain, *load_csv(path, plain)))
    assert summed["decision"] == "promote" and "error_rate in segment device=web" not in summed["evidence"]
    mislabelled = pd.DataFrame(replay_rows(web_error_rate=0.01)).assign(segment="tablet")
    mislabelled.to_csv(path, index=False)
    (out,) = list(replay(spec, *load_csv(path, spec)))
    assert (out["decision"], out["metric"], out["t"]) == ("halt", "segments", 30.0), out
    pd.DataFrame(replay_rows(0.01)).drop(columns="segment").to_csv(path, index=False)
    with pytest.raises(ReplayInputError, match="analysis.segments needs a segment column"):
        load_csv(path, spec)
