from __future__ import annotations

import pytest
from fakes import FakeRegistry

from canary.errors import RequestError
from canary.rollout.plan import RolloutPlan, RolloutRequest, effective_stages, plan_rollout
from canary.spec.model import ApprovalMode, parse_spec

SPEC = parse_spec({"model": "m", "endpoint": "e",
                   "stages": [{"weight": 5, "min_duration": "1m"}, {"weight": 25}, {"weight": 100}]})


@pytest.fixture
def registry():
    FakeRegistry.versions = {"m": ["1", "2", "3"]}
    FakeRegistry.aliases = {"m": {"champion": "1", "challenger": "3"}}
    return FakeRegistry(None)


def test_conf_ignores_foreign_keys_and_validates_types():
    req = RolloutRequest.from_conf({"version": "2", "dry_run": True, "stages": None, "airflow_extra": 1})
    assert (req.version, req.dry_run, req.stages) == ("2", True, None)
    with pytest.raises(RequestError) as info:
        RolloutRequest.from_conf({"version": "", "dry_run": False})
    assert info.value.field == "version"
    with pytest.raises(RequestError) as info:
        RolloutRequest.from_conf({"version": "2", "dry_run": "maybe"})
    assert info.value.field == "dry_run"


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ([5, 100], "stages", "must list 3 weights"),
        ([5, 5, 100], "stages[1]", "greater than stages[0] (5)"),
        ([10, 50, 90], "stages[2]", "last stage must be 100"),
        ([0, 50, 100], "stages[0]", "between 1 and 100"),
        ([5, 50, 101], "stages[2]", "between 1 and 100"),
    ],
)
def test_stage_override_errors_name_the_field(override, field, fragment):
    with pytest.raises(RequestError) as info:
        effective_stages(SPEC, override)
    assert info.value.field == field and fragment in str(info.value)


def test_stage_override_keeps_the_timing_of_each_stage():
    stages = effective_stages(SPEC, [10, 50, 100])
    assert [s.weight for s in stages] == [10, 50, 100]
    assert stages[0].min_duration_s == 60.0


def test_plan_resolves_alias_and_champion(registry):
    plan = plan_rollout(SPEC, RolloutRequest(version="challenger"), registry, run_id="r1", now_s=5.0)
    assert (plan.candidate, plan.stable) == ("3", "1")
    assert RolloutPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("version", "fragment"),
    [("9", "has no version or alias '9' (known: 1, 2, 3)"), ("champion", "already the champion"),
     ("1", "already the champion")],
)
def test_plan_refuses_before_any_traffic_moves(registry, version, fragment):
    with pytest.raises(RequestError) as info:
        plan_rollout(SPEC, RolloutRequest(version=version), registry, run_id="r", now_s=0.0)
    assert info.value.field == "version" and fragment in str(info.value)


def test_plan_refuses_a_model_without_champion(registry):
    FakeRegistry.aliases = {"m": {}}
    with pytest.raises(RequestError, match="no champion"):
        plan_rollout(SPEC, RolloutRequest(version="2"), registry, run_id="r", now_s=0.0)


@pytest.mark.parametrize(
    ("spec_mode", "asked", "effective"),
    [("none", None, "none"), ("none", "every_stage", "every_stage"), ("before_promote", "every_stage", "every_stage"),
     ("before_promote", "before_promote", "before_promote"), ("every_stage", None, "every_stage")],
)
def test_a_run_may_ask_for_more_approvals(registry, spec_mode, asked, effective):
    spec = SPEC.model_copy(update={"policy": SPEC.policy.model_copy(update={"approval": ApprovalMode(spec_mode)})})
    request = RolloutRequest.from_conf({"version": "2", "approval": asked})
    plan = plan_rollout(spec, request, registry, run_id="r", now_s=0.0)
    assert plan.spec.policy.approval.value == effective
    assert RolloutPlan.from_dict(plan.to_dict()).spec.policy.approval.value == effective


@pytest.mark.parametrize(("spec_mode", "asked"), [("every_stage", "none"), ("every_stage", "before_promote"),
                                                  ("before_promote", "none")])
def test_a_run_may_not_drop_approvals_the_spec_declares(registry, spec_mode, asked):
    spec = SPEC.model_copy(update={"policy": SPEC.policy.model_copy(update={"approval": ApprovalMode(spec_mode)})})
    with pytest.raises(RequestError) as info:
        plan_rollout(spec, RolloutRequest.from_conf({"version": "2", "approval": asked}), registry, run_id="r",
                     now_s=0.0)
    assert info.value.field == "approval" and f"declares policy.approval {spec_mode!r}" in str(info.value)


def test_an_unknown_approval_mode_names_the_field():
    with pytest.raises(RequestError) as info:
        RolloutRequest.from_conf({"version": "2", "approval": "sometimes"})
    assert info.value.field == "approval"
