"""The fail-safe invariant as a pure rule: one row per way a run can end, and per way it can end unsafely."""

from __future__ import annotations

from dataclasses import replace

import pytest

from canary.backends.base import Lease, LeaseHolder
from canary.history.model import RolloutRecord
from canary.rollout.invariant import ObservedState, invariant_violations

DAG, RUN, STABLE, CANDIDATE = "canary_rollout__m", "manual__1", "v1", "v2"
NOW = 1_000_000.0


def record(outcome: str | None, reason: str | None = "stage 1 (5%): error_rate: ...") -> RolloutRecord:
    return RolloutRecord(dag_id=DAG, run_id=RUN, model="m", endpoint="e", candidate=CANDIDATE, stable=STABLE,
                         started_at_s=NOW - 600, finished_at_s=None if outcome is None else NOW - 1,
                         outcome=outcome, outcome_reason=reason)


def lease(*, run_id: str = RUN, expires_in_s: float = 60.0) -> Lease:
    return Lease(key="local:e", holder=LeaseHolder(dag_id=DAG, run_id=run_id), acquired_at_s=NOW - 600,
                 renewed_at_s=NOW - 10, expires_at_s=NOW + expires_in_s)


ROLLED_BACK = ObservedState(weights={STABLE: 100}, champion=STABLE, candidate_tags={"rollout.result": "rolled_back"},
                            record=record("rolled_back"), has_json_report=True, has_html_report=True)
PROMOTED = ObservedState(weights={CANDIDATE: 100}, champion=CANDIDATE, record=record("promoted", "every stage passed"),
                         has_json_report=True, has_html_report=True)
FAILED = replace(ROLLED_BACK, candidate_tags={}, record=record("failed", "task stage_1.observe failed"))


@pytest.mark.parametrize("state", [
    ROLLED_BACK, PROMOTED, FAILED,
    replace(ROLLED_BACK, weights={STABLE: 100, CANDIDATE: 0}),  # the candidate at 0% (not yet removed)
    replace(PROMOTED, weights={CANDIDATE: 100, STABLE: 0}),
    replace(ROLLED_BACK, lease=lease(expires_in_s=-1.0)),  # an expired lease of the run is no longer held
    replace(ROLLED_BACK, lease=lease(run_id="manual__2")),  # another run's lease is not this run's
    replace(FAILED, has_json_report=True, has_html_report=True),
], ids=["rolled_back", "promoted", "failed", "candidate_at_0", "stable_at_0", "expired_lease", "other_run_lease",
        "failed_with_reports"])
def test_a_safe_end_holds_the_invariant(state):
    assert invariant_violations(state, dag_id=DAG, run_id=RUN, stable=STABLE, candidate=CANDIDATE, now_s=NOW) == []


@pytest.mark.parametrize(("state", "expected"), [
    (replace(ROLLED_BACK, weights={STABLE: 95, CANDIDATE: 5}),
     "rolled_back, but traffic is v1 95%, v2 5% (expected v1 100%)"),
    (replace(FAILED, weights={STABLE: 50, CANDIDATE: 50}), "failed, but traffic is v1 50%, v2 50% (expected v1 100%)"),
    (replace(PROMOTED, weights={STABLE: 25, CANDIDATE: 75}),
     "promoted, but traffic is v1 25%, v2 75% (expected v2 100%)"),
    (replace(ROLLED_BACK, weights=None, serving_error="ConnectionError: refused"),
     "the serving layer could not be read (ConnectionError: refused): traffic may be split in any way"),
    (replace(ROLLED_BACK, record=None), f"no history record of {DAG} run {RUN}"),
    (replace(ROLLED_BACK, record=record(None)), f"the record of {DAG} run {RUN} has no outcome: it still reads as running"),
    (replace(ROLLED_BACK, record=record("rolled_back", reason="")), "the record says rolled_back without a reason"),
    (replace(ROLLED_BACK, record=record("halted")),
     "the record's outcome 'halted' is not one of promoted, rolled_back, failed, dry_run"),
    (replace(ROLLED_BACK, mirror=CANDIDATE), "a mirror to v2 is still set on the endpoint"),
    (replace(ROLLED_BACK, targeting={"version": CANDIDATE, "match": {"region": ["eu-west"]}}),
     "a targeting rule is still set on the endpoint"),
    (replace(ROLLED_BACK, champion=CANDIDATE),
     "not promoted (rolled_back), but the registry's champion is the candidate 'v2'"),
    (replace(PROMOTED, champion=STABLE), "promoted, but the registry's champion is 'v1' (expected 'v2')"),
    (replace(ROLLED_BACK, candidate_tags={}), "rolled back, but the registry was not told: v2's rollout.result is None"),
    (replace(ROLLED_BACK, lease=lease()), "the run still holds the lease on local:e"),
    (replace(ROLLED_BACK, has_html_report=False), "the run's html report is not in the history"),
    (replace(PROMOTED, has_json_report=False, has_html_report=False),
     "the run's json and html report is not in the history"),
])
def test_every_unsafe_end_is_named(state, expected):
    found = invariant_violations(state, dag_id=DAG, run_id=RUN, stable=STABLE, candidate=CANDIDATE, now_s=NOW)
    assert any(p.startswith(expected) for p in found), found


def test_several_violations_are_all_reported():
    state = replace(ROLLED_BACK, weights={STABLE: 90, CANDIDATE: 10}, lease=lease(), mirror=CANDIDATE,
                    has_html_report=False)
    assert len(invariant_violations(state, dag_id=DAG, run_id=RUN, stable=STABLE, candidate=CANDIDATE,
                                    now_s=NOW)) == 4
