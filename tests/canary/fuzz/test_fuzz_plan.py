"""Fuzz the run conf: any conf is a plan or a RequestError naming the conf key, never another exception."""

from __future__ import annotations

from fuzz_inputs import FUZZ, GARBAGE, TEXT, mutated
from hypothesis import given
from hypothesis import strategies as st

from canary.errors import RequestError, UnknownVersionError
from canary.rollout.plan import RolloutPlan, RolloutRequest, plan_rollout
from canary.spec.model import parse_spec

SPEC = parse_spec({"model": "m", "endpoint": "e", "stages": [{"weight": 10}, {"weight": 50}, {"weight": 100}]})
FIELDS = set(RolloutRequest.model_fields) | {"conf"}
VALID_CONF = {"version": "challenger", "stages": [5, 50, 100], "dry_run": True, "approval": "before_promote",
              "reason": "fuzz", "force": False}


class Registry:
    """Versions 1..3, champion 1, challenger 3."""

    def resolve(self, model: str, ref: str) -> str:
        found = {"champion": "1", "challenger": "3"}.get(ref, ref)
        if found not in ("1", "2", "3"):
            raise UnknownVersionError(model, ref, ["1", "2", "3"])
        return found

    def champion(self, model: str) -> str | None:
        return "1"


CONFS = st.one_of(
    mutated(VALID_CONF),
    st.dictionaries(st.sampled_from(sorted(FIELDS - {"conf"})) | TEXT, GARBAGE, max_size=6),
    GARBAGE,
)


@FUZZ
@given(conf=CONFS)
def test_conf_is_a_plan_or_a_request_error_naming_the_field(conf):
    try:
        request = RolloutRequest.from_conf(conf)
        plan = plan_rollout(SPEC, request, Registry(), run_id="r", now_s=0.0)
    except RequestError as err:
        root = err.field.split(".")[0].split("[")[0]
        assert root in FIELDS, f"{err.field!r} names no conf key"
        assert str(err).startswith(f"{err.field}: ") and len(str(err)) > len(err.field) + 2
        return
    assert [s.weight for s in plan.stages][-1] == 100
    assert plan.candidate != plan.stable
    # The plan travels as XCom: it must come back the same.
    assert RolloutPlan.from_dict(plan.to_dict()) == plan
