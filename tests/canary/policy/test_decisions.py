"""decide_outcome: how finalize reads a finished run (table-tested, literal inputs)."""

from __future__ import annotations

import pytest

from canary.policy.decisions import Outcome, decide_outcome

PROMOTED = {"outcome": "promoted", "reason": "all 3 stages passed"}
DRY = {"outcome": "dry_run", "reason": "dry run: would promote"}
RB1 = {"outcome": "rolled_back", "reason": "error_rate: e-value 881 >= 200", "stage_index": 0}
RB2 = {"outcome": "rolled_back", "reason": "later stage", "stage_index": 1}
SHADOW_FAIL = {"passed": False, "reasons": ["errors 9% vs 1%", "score_out_of_range"]}
SHADOW_OK = {"passed": True, "reasons": []}
LOST = "lease on local/churn taken by canary_rollout__other run r2"

CASES = [
    # id, promoted, rollbacks, shadow, failed, lost, dry, -> outcome, reason (prefix), back to stable, release
    ("promoted", PROMOTED, [], SHADOW_OK, [], None, False,
     Outcome.PROMOTED, "all 3 stages passed", False, True),
    ("promoted despite a failed side task", PROMOTED, [], None, ["stage_1.approve"], None, False,
     Outcome.PROMOTED, "all 3 stages passed", False, True),
    ("promoted, lease lost afterwards: still promoted", PROMOTED, [], None, [], LOST, False,
     Outcome.PROMOTED, "all 3 stages passed", False, False),
    ("dry run", DRY, [], None, [], None, True,
     Outcome.DRY_RUN, "dry run: would promote", False, False),
    ("rolled back by a stage: the rollback task moved traffic", None, [RB1, RB2], None, [], None, False,
     Outcome.ROLLED_BACK, "error_rate: e-value 881 >= 200", False, True),
    ("shadow failed", None, [], SHADOW_FAIL, [], None, False,
     Outcome.ROLLED_BACK, "shadow test failed: errors 9% vs 1%; score_out_of_range", True, True),
    ("a task failed", None, [], SHADOW_OK, ["stage_1.observe", "stage_1.set_traffic"], None, False,
     Outcome.FAILED, "task(s) stage_1.observe, stage_1.set_traffic failed", True, True),
    ("stopped before promotion", None, [], SHADOW_OK, [], None, False,
     Outcome.ROLLED_BACK, "stopped before promotion (approval rejected or run stopped)", True, True),
    ("lease lost mid-run: traffic is the new holder's", None, [], None, ["stage_2.observe"], LOST, False,
     Outcome.FAILED, f"task(s) stage_2.observe failed; {LOST}: traffic left", False, False),
    ("dry run that failed: nothing to move", None, [], None, ["validate_request"], None, True,
     Outcome.FAILED, "task(s) validate_request failed", False, False),
    ("dry run rolled back by a stage", None, [RB1], None, [], None, True,
     Outcome.ROLLED_BACK, "error_rate: e-value 881 >= 200", False, False),
]


@pytest.mark.parametrize(("promoted", "rollbacks", "shadow", "failed", "lost", "dry", "outcome", "reason",
                          "to_stable", "release"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_outcome(promoted, rollbacks, shadow, failed, lost, dry, outcome, reason, to_stable, release):
    final = decide_outcome(promoted=promoted, rollbacks=rollbacks, shadow=shadow, failed_tasks=failed,
                           lease_lost=lost, dry_run=dry)
    assert final.outcome is outcome
    assert final.reason.startswith(reason), final.reason
    assert (final.return_to_stable, final.release_lease) == (to_stable, release)


def test_only_a_promotion_or_a_dry_run_is_a_success():
    assert {o for o in Outcome if o.is_success()} == {Outcome.PROMOTED, Outcome.DRY_RUN}
