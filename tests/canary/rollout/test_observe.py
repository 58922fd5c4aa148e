"""read_window: the stage's window after warm-up, per segment and with late labels (fake at the metrics interface)."""

from __future__ import annotations

import pytest

from canary.errors import ConfigError
from canary.policy.evidence import VersionStats
from canary.rollout.observe import StageWatch, label_delay_s, outcome_names, read_window
from canary.spec.model import parse_spec


class Labelled:
    """A metrics source with labels: records the windows asked for."""

    def __init__(self) -> None:
        self.label_windows: list[tuple[str, float, float, str | None]] = []

    def version_stats(self, version, *, start_s, end_s):
        return VersionStats(version=version, requests=1_000)

    def segment_stats(self, version, *, by, values, start_s, end_s):
        return {v: VersionStats(version=version, requests=500) for v in values}

    def label_stats(self, version, *, start_s, end_s, by=None, values=()):
        self.label_windows.append((version, start_s, end_s, by))
        wrong = 90 if version == "v2" else 60
        return {None: (300, wrong), **{v: (150, wrong // 2) for v in values}}

    def outcome_stats(self, version, *, names, start_s, end_s, by=None, values=()):
        raise AssertionError("no business outcome was asked for")

    def shadow_summary(self, **_):
        raise NotImplementedError


class Unlabelled:
    def version_stats(self, version, *, start_s, end_s):
        return VersionStats(version=version, requests=1_000)

    def shadow_summary(self, **_):
        raise NotImplementedError


WATCH = StageWatch(stage_index=0, stable="v1", candidate="v2", stage_started_at_s=1_000.0)
SEGMENTS = parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 100}],
                       "analysis": {"segments": {"by": "device", "values": ["ios", "web"]}}}).analysis.segments


def test_labels_are_read_for_requests_old_enough_overall_and_per_segment():
    source = Labelled()
    window, problem = read_window(source, WATCH, warmup_s=10.0, now_s=1_300.0, segments=SEGMENTS, label_delay_s=120.0)
    assert problem is None and window is not None
    # Requests from the window's start to label_delay before now: only those can have their label.
    assert source.label_windows == [("v1", 1_010.0, 1_180.0, "device"), ("v2", 1_010.0, 1_180.0, "device")]
    assert (window.canary.labelled, window.canary.wrong, window.stable.wrong) == (300, 90, 60)
    assert (window.segments["web"].canary.labelled, window.segments["web"].canary.wrong) == (150, 45)
    assert window.canary.requests == 1_000  # the rest of the window is as read


def test_before_any_request_is_old_enough_nothing_is_labelled_and_the_backend_is_not_asked():
    source = Labelled()
    window, _ = read_window(source, WATCH, warmup_s=10.0, now_s=1_100.0, label_delay_s=120.0)
    assert source.label_windows == [] and (window.canary.labelled, window.stable.labelled) == (0, 0)


def test_a_backend_without_labels_is_a_configuration_error():
    with pytest.raises(ConfigError, match="does not join late feedback"):
        read_window(Unlabelled(), WATCH, warmup_s=0.0, now_s=2_000.0, label_delay_s=60.0)


def test_the_label_delay_is_the_quality_metrics():
    quality = {"name": "acc", "kind": "prediction_quality", "tolerance": 0.1, "label_delay": "90s"}
    with_quality = parse_spec({"model": "m", "endpoint": "e", "shadow": {"enabled": False},
                               "stages": [{"weight": 10, "max_duration": "1h"}, {"weight": 100}],
                               "analysis": {"metrics": [{"name": "error_rate", "kind": "error_rate",
                                                         "tolerance": 0.2}, quality]}})
    assert label_delay_s(with_quality) == 90.0
    assert label_delay_s(parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 100}]})) is None


class WithOutcomes(Labelled):
    """A metrics source with labels and business outcomes: records the windows asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.outcome_windows: list[tuple[str, tuple[str, ...], float, float, str | None]] = []

    def outcome_stats(self, version, *, names, start_s, end_s, by=None, values=()):
        self.outcome_windows.append((version, tuple(names), start_s, end_s, by))
        converted = 30 if version == "v2" else 50
        return {None: (800, {"conversion": converted}), **{v: (400, {"conversion": converted // 2}) for v in values}}


def test_business_outcomes_are_read_for_the_requests_old_enough_overall_and_per_segment():
    spec = parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 10, "max_duration": "1h"}, {"weight": 100}],
                       "analysis": {"metrics": [{"name": "conversion", "kind": "kpi", "outcome": "conversion",
                                                 "tolerance": 0.1, "label_delay": "2m"}]}})
    assert outcome_names(spec) == ("conversion",) and label_delay_s(spec) == 120.0
    source = WithOutcomes()
    window, problem = read_window(source, WATCH, warmup_s=10.0, now_s=1_300.0, segments=SEGMENTS, label_delay_s=120.0,
                                  outcomes=outcome_names(spec))
    assert problem is None and window is not None
    assert source.outcome_windows == [("v1", ("conversion",), 1_010.0, 1_180.0, "device"),
                                      ("v2", ("conversion",), 1_010.0, 1_180.0, "device")]
    assert (window.canary.aged, window.canary.outcome_events("conversion")) == (800, 30)
    assert (window.segments["ios"].stable.aged, window.segments["ios"].stable.outcome_events("conversion")) == (400, 25)
    # Before any request is old enough: zero exposure, and the backend is not asked.
    source = WithOutcomes()
    early, _ = read_window(source, WATCH, warmup_s=10.0, now_s=1_100.0, label_delay_s=120.0, outcomes=("conversion",))
    assert source.outcome_windows == [] and (early.canary.aged, early.canary.outcomes) == (0, (("conversion", 0),))
