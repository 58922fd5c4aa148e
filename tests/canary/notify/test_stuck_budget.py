"""When a rollout counts as stuck: every deadline of its spec plus a margin."""

from __future__ import annotations

import pytest

from canary.notify.stuck import stuck_budget
from canary.spec.model import parse_spec

STAGES = [{"weight": 10, "max_duration": "1h"}, {"weight": 50, "max_duration": "30m"},
          {"weight": 100, "max_duration": "30m"}]


@pytest.mark.parametrize(("changes", "parts", "total_s"), [
    # shadow 5m (default) + stages 2h + endpoint wait 1h (default wait) = 3h5m; margin 25% of it
    ({}, (3600.0, 300.0, 7200.0, 2775.0), 13875.0),
    ({"shadow": {"enabled": False}}, (3600.0, 0.0, 7200.0, 2700.0), 13500.0),
    ({"concurrency": {"on_busy": "refuse"}}, (0.0, 300.0, 7200.0, 1875.0), 9375.0),
    # a short rollout still gets the 10-minute floor
    ({"shadow": {"enabled": False}, "concurrency": {"on_busy": "refuse"},
      "stages": [{"weight": 100, "min_duration": "10s", "max_duration": "1m"}], "analysis": {"poll_interval": "5s"}},
     (0.0, 0.0, 60.0, 600.0), 660.0),
])
def test_the_budget_is_the_sum_of_the_deadlines_plus_a_margin(changes, parts, total_s):
    spec = parse_spec({"model": "m", "endpoint": "e", "stages": STAGES, **changes})
    budget = stuck_budget(spec)
    assert (budget.lock_wait_s, budget.shadow_s, budget.stages_s, budget.margin_s) == parts
    assert budget.total_s == total_s


def test_the_explanation_names_each_part():
    spec = parse_spec({"model": "m", "endpoint": "e", "stages": STAGES})
    assert stuck_budget(spec).explain() == "stage deadlines 2h + shadow test 5m + endpoint wait 1h + margin 46m15s"
