"""The demo-sized rollout spec the end-to-end tests share (seconds, not minutes, per stage)."""

from __future__ import annotations

from typing import Any

#: The first stage's canary share: large enough that a healthy candidate is shown non-inferior at
#: alpha 0.001 in well under the stage's deadline at ~120 requests/s.
FIRST_STAGE_PCT = 50
#: Each stage's deadline (max_duration), for tests that check a look's time to a decision against it.
STAGE_MAX_DURATION_S = (180.0, 30.0)


def fast_spec(model: str, endpoint: str, **overrides: Any) -> dict[str, Any]:
    """Return a spec: 50% then 100%, error rate only, polls every 2 s; ``overrides`` replace top-level keys."""
    spec = {
        "model": model, "endpoint": endpoint, "owner": "e2e",
        # Wide margins: a healthy candidate's shadow test is conclusive after a few hundred pairs.
        "shadow": {"requests": 60, "mirror_percent": 100, "max_duration": "40s", "max_error_rate_increase": 0.3,
                   "max_slow_share_increase": 0.3, "min_prediction_agreement": 0.7},
        "stages": [{"weight": FIRST_STAGE_PCT, "min_duration": "8s", "max_duration": f"{STAGE_MAX_DURATION_S[0]:.0f}s", "min_requests": 150},
                   {"weight": 100, "min_duration": "4s", "max_duration": f"{STAGE_MAX_DURATION_S[1]:.0f}s", "min_requests": 50}],
        # alpha 0.001: a test asserting that a healthy candidate is promoted must not flake on the 5%
        # false-rollback rate a production alpha allows (the faulty candidates are caught at once anyway).
        # Tolerance 2.0 (canary/stable error ratio up to 3): with both at 1% and 60 canary requests/s,
        # a healthy candidate is shown non-inferior in 42 s (median; 99th percentile 104 s) and no
        # simulated run of 400 reached the 3m deadline; at 40 requests/s (a loaded machine) 0.25% did.
        # Tolerance 1.5 timed out in 0.5% of runs at 60 requests/s and 4.5% at 40, and a clean-clone CI
        # run saw one. The faulty candidates (16x the error rate) are rolled back at once either way.
        "analysis": {"alpha": 0.001, "poll_interval": "2s", "warmup": "1s",
                     "metrics": [{"name": "error_rate", "kind": "error_rate", "tolerance": 2.0, "mde": 4.0}],
                     "guardrails": {"max_error_rate": 0.5, "min_requests": 100}},
    }
    spec.update(overrides)
    return spec
