"""Feedback metrics: prediction_quality (wrong predictions among labelled requests) and kpi metrics on a business
outcome, both from feedback that arrives late."""

from __future__ import annotations

import json

import pytest

from canary.errors import SpecError
from canary.policy.decisions import Decision
from canary.policy.evidence import Snapshot, VersionStats
from canary.spec.model import parse_spec
from canary.stats import SequentialAnalyzer
from canary.stats.eta import eta_s
from canary.stats.plan import plan

A = SequentialAnalyzer()
QUALITY = {"name": "accuracy", "kind": "prediction_quality", "tolerance": 0.1, "mde": 0.5, "label_delay": "2m"}
CONVERSION = {"name": "conversion", "kind": "kpi", "outcome": "conversion", "tolerance": 0.1, "mde": 0.3,
              "label_delay": "2m"}


def spec(*metrics, stages=None, backend="local", **analysis):
    return parse_spec({"model": "m", "endpoint": "e", "shadow": {"enabled": False},
                       "backends": {"metrics": {"name": backend}},
                       "stages": stages or [{"weight": 20, "min_duration": "0s", "max_duration": "1h",
                                             "min_requests": 0}, {"weight": 100}],
                       "analysis": {"metrics": list(metrics) or [QUALITY], **analysis}})


def window(stable: tuple[int, int, int], canary: tuple[int, int, int]) -> Snapshot:
    """``(requests, labelled, wrong)`` per version."""
    def stats(name, t):
        return VersionStats(version=name, requests=t[0], labelled=t[1], wrong=t[2])

    return Snapshot(stable=stats("s", stable), canary=stats("c", canary), start_s=0.0, end_s=600.0)


@pytest.mark.parametrize(("stable", "canary", "decision"), [
    ((40_000, 20_000, 4_000), (10_000, 5_000, 1_500), Decision.ROLLBACK),  # 30% wrong vs 20%
    ((400_000, 200_000, 40_000), (100_000, 50_000, 10_000), Decision.ADVANCE),  # as accurate
    ((400, 200, 40), (100, 50, 10), Decision.CONTINUE),
    ((40_000, 0, 0), (10_000, 0, 0), Decision.CONTINUE),  # no label yet: never read as healthy
])
def test_wrong_predictions_among_labelled_requests_decide(stable, canary, decision):
    res, _ = A.assess(spec(), window(stable, canary), canary_weight_pct=20, state=None)
    got = {a.metric: a for a in res}["accuracy"]
    assert got.decision is decision, got.reason
    ev = got.evidence
    assert (ev["canary_exposure"], ev["canary_events"], ev["label_delay_s"]) == (canary[1], canary[2], 120.0)
    json.dumps(got.to_dict())


def test_errors_do_not_count_as_exposure_of_the_quality_test():
    # Same labelled counts, many more requests (and errors) on the canary: quality is judged on labels only.
    a, _ = A.assess(spec(), window((40_000, 20_000, 4_000), (10_000, 5_000, 1_000)), canary_weight_pct=20, state=None)
    b, _ = A.assess(spec(), window((40_000, 20_000, 4_000), (30_000, 5_000, 1_000)), canary_weight_pct=20, state=None)
    assert a[0].evidence["log_e_value"] == b[0].evidence["log_e_value"]


@pytest.mark.parametrize(("metrics", "backend", "stages", "where", "fragment"), [
    ([{**QUALITY, "kind": "error_rate"}], "local", None, "analysis.metrics[0].label_delay",
     "applies to prediction_quality metrics and kpi metrics with an outcome only, not error_rate"),
    ([{**QUALITY, "kind": "kpi", "tolerance": 0.1}], "local", None, "analysis.metrics[0].label_delay",
     "applies to prediction_quality metrics and kpi metrics with an outcome only, not kpi without one"),
    ([{**QUALITY, "outcome": "conversion"}], "local", None, "analysis.metrics[0].outcome",
     "applies to kpi metrics only, not prediction_quality"),
    ([{**CONVERSION, "outcome": "two words"}], "local", None, "analysis.metrics[0].outcome", "must match pattern"),
    ([CONVERSION], "prometheus", None, "analysis.metrics[0].outcome", "does not join late feedback"),
    ([QUALITY, {**CONVERSION, "label_delay": "5m"}], "local", None, "analysis.metrics[1].label_delay",
     "must equal analysis.metrics[0].label_delay (120s)"),
    ([QUALITY, {**QUALITY, "name": "acc2", "label_delay": "5m"}], "local", None, "analysis.metrics[1].label_delay",
     "must equal analysis.metrics[0].label_delay (120s)"),
    ([QUALITY], "prometheus", None, "analysis.metrics[0].kind", "does not join late feedback"),
    ([QUALITY], "local", [{"weight": 20, "max_duration": "90s"}, {"weight": 100}], "analysis.metrics[0].label_delay",
     "must be shorter than stages[0].max_duration (90s)"),
])
def test_bad_quality_metrics_are_refused_naming_the_field(metrics, backend, stages, where, fragment):
    with pytest.raises(SpecError) as err:
        spec(*metrics, backend=backend, stages=stages)
    assert any(loc == where and fragment in msg for loc, msg in err.value.problems), err.value.problems


def test_plan_includes_the_label_delay_and_the_labelled_share():
    s = spec(QUALITY)
    (full,) = plan(s, rps=100, baseline_wrong_rate=0.2, label_share=1.0)
    (half,) = plan(s, rps=100, baseline_wrong_rate=0.2, label_share=0.5)
    assert full.detect_s == pytest.approx(full.detect_requests / 20 + 120.0)
    assert half.detect_s - 120.0 == pytest.approx(2 * (full.detect_s - 120.0))


def test_eta_of_the_quality_test_waits_for_the_labels():
    s = spec(QUALITY)
    res, _ = A.assess(s, window((4_000, 2_000, 400), (1_000, 500, 100)), canary_weight_pct=20, state=None)
    evidence = {"elapsed_s": 300.0, "canary_requests": 1_000, "metrics": [a.to_dict() for a in res]}
    eta = eta_s(s, s.stages[0], evidence, decision="continue")
    assert eta is not None and eta >= 120.0  # at least the label delay: no new request's label is in yet


def test_replay_of_a_quality_metric_needs_the_label_columns(tmp_path):
    from canary.stats.replay_input import ReplayInputError, load_csv

    path = tmp_path / "r.csv"
    path.write_text("run,t,version,requests,errors\nr,1,stable,10,0\nr,1,canary,10,0\n")
    with pytest.raises(ReplayInputError, match="prediction_quality\\) needs columns \\['labelled', 'wrong'\\]"):
        load_csv(path, spec())


def outcome_window(stable: tuple[int, int, int], canary: tuple[int, int, int]) -> Snapshot:
    """``(requests, aged, conversions)`` per version."""
    def stats(name, t):
        return VersionStats(version=name, requests=t[0], aged=t[1], outcomes=(("conversion", t[2]),))

    return Snapshot(stable=stats("s", stable), canary=stats("c", canary), start_s=0.0, end_s=600.0)


@pytest.mark.parametrize(("stable", "canary", "decision"), [
    ((40_000, 30_000, 3_000), (10_000, 7_500, 450), Decision.ROLLBACK),  # 6% convert vs 10%
    ((400_000, 300_000, 30_000), (100_000, 75_000, 7_500), Decision.ADVANCE),  # as many
    ((400_000, 300_000, 30_000), (100_000, 75_000, 9_000), Decision.ADVANCE),  # more: better, not a regression
    ((400, 300, 30), (100, 75, 7), Decision.CONTINUE),
    ((40_000, 0, 0), (10_000, 0, 0), Decision.CONTINUE),  # no request old enough yet: never read as healthy
])
def test_a_kpi_on_a_business_outcome_counts_the_requests_old_enough_for_it(stable, canary, decision):
    res, _ = A.assess(spec(CONVERSION), outcome_window(stable, canary), canary_weight_pct=20, state=None)
    got = {a.metric: a for a in res}["conversion"]
    assert got.decision is decision, got.reason
    ev = got.evidence
    assert (ev["canary_exposure"], ev["canary_events"]) == (canary[1], canary[2])
    assert (ev["outcome"], ev["label_delay_s"]) == ("conversion", 120.0)


def test_outcome_counts_survive_the_state_round_trip_and_subtract():
    late = VersionStats(version="c", requests=900, aged=600, outcomes=(("chargeback", 3), ("conversion", 60)))
    early = VersionStats(version="c", requests=300, aged=200, outcomes=(("conversion", 20),))
    assert VersionStats.from_dict(json.loads(json.dumps(late.to_dict()))) == late
    assert late.minus(early) == VersionStats(version="c", requests=600, aged=400,
                                             outcomes=(("chargeback", 3), ("conversion", 40)))
    assert late.outcome_events("refund") == 0
    with pytest.raises(ValueError, match="outcome 'conversion' events \\(700\\) must be within 0..aged \\(600\\)"):
        VersionStats(version="c", aged=600, outcomes=(("conversion", 700),))


def test_plan_and_eta_of_an_outcome_kpi_include_the_delay():
    s = spec(CONVERSION)
    (row,) = plan(s, rps=100, baseline_kpi_rate=0.1)
    assert row.detect_s == pytest.approx(row.detect_requests / 20 + 120.0)
    res, _ = A.assess(s, outcome_window((4_000, 3_000, 300), (1_000, 750, 75)), canary_weight_pct=20, state=None)
    evidence = {"elapsed_s": 300.0, "canary_requests": 1_000, "metrics": [a.to_dict() for a in res]}
    eta = eta_s(s, s.stages[0], evidence, decision="continue")
    assert eta is not None and eta >= 120.0


def test_replay_refuses_an_outcome_kpi_naming_the_metric(tmp_path):
    from canary.stats.replay_input import ReplayInputError, load_csv

    path = tmp_path / "r.csv"
    path.write_text("run,t,version,requests,errors,kpi_events\nr,1,stable,10,0,1\nr,1,canary,10,0,1\n")
    with pytest.raises(ReplayInputError, match="metric 'conversion' \\(kpi on the business outcome 'conversion'\\) "
                                               "cannot be replayed"):
        load_csv(path, spec(CONVERSION))
