"""``targeting``: which stages expose the canary to whom, and which backends can do it."""

from __future__ import annotations

import pytest

from canary.errors import SpecError
from canary.spec.model import parse_spec

STAGES = [{"weight": 5}, {"weight": 25}, {"weight": 50}, {"weight": 100}]


def spec(targeting, *, serving: str = "local", metrics: str = "local", stages=STAGES):
    return parse_spec({"model": "m", "endpoint": "e", "stages": stages, "shadow": {"enabled": False},
                       "backends": {"serving": {"name": serving}, "metrics": {"name": metrics}},
                       "targeting": targeting})


def problems(targeting, **kwargs) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        spec(targeting, **kwargs)
    return info.value.problems


@pytest.mark.parametrize(("stages", "expected"), [
    (None, [{"region": ["eu-west"]}] * 3 + [None]),  # every stage below 100%
    (1, [{"region": ["eu-west"]}, None, None, None]),
    (2, [{"region": ["eu-west"]}] * 2 + [None, None]),
])
def test_the_first_stages_are_targeted_and_the_last_one_serves_everyone(stages, expected):
    parsed = spec({"match": {"region": ["eu-west"]}, **({"stages": stages} if stages else {})})
    got = [(t.match if (t := parsed.targeting_for(i)) else None) for i in range(len(STAGES))]
    assert got == expected
    assert parsed.targeting.describe() == "region in [eu-west]"


def test_a_spec_without_targeting_targets_no_stage():
    parsed = parse_spec({"model": "m", "endpoint": "e", "stages": STAGES})
    assert parsed.targeting is None and all(parsed.targeting_for(i) is None for i in range(len(STAGES)))


@pytest.mark.parametrize(("targeting", "kwargs", "location", "fragment"), [
    ({"match": {"region": ["eu-west"]}}, {"serving": "sagemaker", "metrics": "cloudwatch"}, "targeting",
     "the sagemaker serving backend cannot route by request attributes (it splits traffic by weight only); remove "
     "targeting or use a serving backend that can: local"),
    ({"match": {"region": ["eu-west"]}}, {"metrics": "cloudwatch"}, "targeting",
     "the cloudwatch metrics backend cannot restrict its statistics to the targeted requests"),
    ({"match": {"region": ["eu-west"]}, "stages": 4}, {}, "targeting.stages",
     "must be at most 3, the number of stages below 100%: the last stage serves everyone"),
    ({"match": {"region": ["eu-west"]}}, {"stages": [{"weight": 100}]}, "targeting", "no stage below 100% to target"),
    ({"match": {}}, {}, "targeting.match", "Dictionary should have at least 1 item"),
    ({"match": {"region": []}}, {}, "targeting.match", "region: list 1 to 20 values, got 0"),
    ({"match": {"region": ["eu-west", "eu-west"]}}, {}, "targeting.match", "region: each value once: ['eu-west']"),
    ({"match": {"Region": ["eu-west"]}}, {}, "targeting.match.Region.[key]", "must match pattern"),
    ({"match": {"region": ["eu-west"]}, "stages": 0}, {}, "targeting.stages", "greater than or equal to 1"),
    ({"match": {"region": ["eu-west"]}, "users": 3}, {}, "targeting.users", "unknown key"),
])
def test_bad_targeting_names_the_field_and_the_fix(targeting, kwargs, location, fragment):
    found = problems(targeting, **kwargs)
    assert any(loc == location and fragment in msg for loc, msg in found), found


def test_prometheus_metrics_can_read_a_targeted_population():
    parsed = spec({"match": {"device": ["android"]}}, metrics="prometheus")
    assert parsed.targeting_for(0).match == {"device": ["android"]}
