"""A rollout request (the DAG run's conf) and the frozen plan it resolves to before any traffic moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from canary.backends.base import ModelRegistry
from canary.errors import RequestError, UnknownVersionError
from canary.spec.model import ApprovalMode, RolloutSpec, StageSpec, parse_spec

#: Approval modes from the fewest to the most human checks: a run may ask for more than its spec, never fewer.
APPROVAL_ORDER: tuple[ApprovalMode, ...] = (ApprovalMode.NONE, ApprovalMode.BEFORE_PROMOTE, ApprovalMode.EVERY_STAGE)


def allowed_approval_modes(spec: RolloutSpec) -> list[str]:
    """Return the approval modes a run of ``spec`` may ask for: the spec's own and every stricter one."""
    return [m.value for m in APPROVAL_ORDER[APPROVAL_ORDER.index(spec.policy.approval):]]


class RolloutRequest(BaseModel):
    """What a person, a pipeline or the nightly schedule asks for (mirrors the DAG's params form)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, description="candidate version or registry alias (e.g. 'challenger')")
    stages: list[int] | None = Field(None, description="canary weights overriding the spec's, same count")
    dry_run: bool = False
    approval: ApprovalMode | None = Field(None, description="human approvals for this run; stricter than the "
                                                            "spec's policy.approval only")
    reason: str = ""
    force: bool = False

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None) -> RolloutRequest:
        """Validate a run conf; raise :class:`RequestError` naming the first bad field."""
        if conf is None:  # a run triggered without any conf
            conf = {}
        if not isinstance(conf, Mapping):
            raise RequestError("conf", f"must be a JSON object such as {{\"version\": \"challenger\"}}, got "
                                       f"{type(conf).__name__}")
        known = set(cls.model_fields)
        # Airflow adds every param to the conf; keys that are not ours are ignored, not errors.
        data = {k: v for k, v in conf.items() if k in known and v is not None}
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "conf"
            raise RequestError(field, str(first["msg"])) from err


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    """The resolved rollout: which versions, which stages, under which spec. Travels as XCom."""

    spec: RolloutSpec
    candidate: str
    stable: str
    stages: tuple[StageSpec, ...]
    dry_run: bool
    reason: str
    run_id: str
    started_at_s: float

    @property
    def model(self) -> str:
        return self.spec.model

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json", by_alias=True), "candidate": self.candidate,
                "stable": self.stable, "stages": [s.model_dump(mode="json", by_alias=True) for s in self.stages],
                "dry_run": self.dry_run, "reason": self.reason, "run_id": self.run_id,
                "started_at_s": self.started_at_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPlan:
        return cls(spec=parse_spec(data["spec"], source="rollout plan"), candidate=data["candidate"],
                   stable=data["stable"], stages=tuple(StageSpec.model_validate(s) for s in data["stages"]),
                   dry_run=bool(data["dry_run"]), reason=str(data.get("reason", "")), run_id=str(data["run_id"]),
                   started_at_s=float(data["started_at_s"]))


def effective_stages(spec: RolloutSpec, override: list[int] | None) -> tuple[StageSpec, ...]:
    """Apply a weight override (same number of stages: the DAG's shape is fixed when it is parsed)."""
    if override is None:
        return tuple(spec.stages)
    if len(override) != len(spec.stages):
        raise RequestError("stages", f"must list {len(spec.stages)} weights (the spec's stage count), "
                                     f"got {len(override)}")
    prev = 0
    for i, weight in enumerate(override):
        if not 1 <= weight <= 100:
            raise RequestError(f"stages[{i}]", f"must be between 1 and 100, got {weight}")
        if weight <= prev:
            raise RequestError(f"stages[{i}]", f"must be greater than stages[{i - 1}] ({prev})")
        prev = weight
    if override[-1] != 100:
        raise RequestError(f"stages[{len(override) - 1}]", f"the last stage must be 100, got {override[-1]}")
    return tuple(s.model_copy(update={"weight": w}) for s, w in zip(spec.stages, override, strict=True))


def effective_spec(spec: RolloutSpec, approval: ApprovalMode | None) -> RolloutSpec:
    """Apply a run's approval mode; refuse one with fewer human checks than the spec declares."""
    if approval is None or approval is spec.policy.approval:
        return spec
    allowed = allowed_approval_modes(spec)
    if approval.value not in allowed:
        raise RequestError("approval", f"the spec declares policy.approval {spec.policy.approval.value!r}; a run "
                                       f"may only ask for as many or more approvals ({', '.join(allowed)}), "
                                       f"got {approval.value!r}")
    return spec.model_copy(update={"policy": spec.policy.model_copy(update={"approval": approval})})


def plan_rollout(spec: RolloutSpec, request: RolloutRequest, registry: ModelRegistry, *, run_id: str,
                 now_s: float) -> RolloutPlan:
    """Resolve versions and stages; refuse anything that cannot run, before any traffic moves."""
    stages = effective_stages(spec, request.stages)
    spec = effective_spec(spec, request.approval)
    try:
        candidate = registry.resolve(spec.model, request.version)
    except UnknownVersionError as err:
        raise RequestError("version", str(err)) from err
    stable = registry.champion(spec.model)
    if stable is None:
        raise RequestError("version", f"model {spec.model!r} has no champion to compare with; "
                                      "register one and set its 'champion' alias first")
    if candidate == stable:
        raise RequestError("version", f"{request.version!r} resolves to {candidate!r}, which is already the "
                                      "champion; nothing to roll out")
    return RolloutPlan(spec=spec, candidate=candidate, stable=stable, stages=stages, dry_run=request.dry_run,
                       reason=request.reason, run_id=run_id, started_at_s=now_s)
