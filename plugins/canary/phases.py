"""Decisions and outcomes: one enum each, transitions in this module only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Decision(StrEnum):
    """What the gate concludes from the evidence at one poll."""

    CONTINUE = "continue"  # keep observing
    ADVANCE = "advance"  # non-inferiority shown: go to the next stage (or promote after the last)
    ROLLBACK = "rollback"  # a regression or a guardrail breach: final
    HALT = "halt"  # missing data or a sample-ratio mismatch: neither promote nor keep going blindly
    TIMEOUT = "timeout"  # stage deadline reached undecided: apply the spec's timeout policy

    def is_terminal(self) -> bool:
        """Return True if observing this stage should stop."""
        return self is not Decision.CONTINUE


class Action(StrEnum):
    """What the DAG does after a stage's gate."""

    NEXT_STAGE = "next_stage"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    HOLD = "hold"  # wait for a human (approval gate)


class Outcome(StrEnum):
    """How a rollout ended."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"  # the DAG failed; traffic was returned to stable
    DRY_RUN = "dry_run"

    def is_success(self) -> bool:
        return self in (Outcome.PROMOTED, Outcome.DRY_RUN)


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """A decision with its reason and evidence, small and JSON-able (it travels in trigger events and XCom)."""

    decision: Decision
    reason: str
    metric: str | None = None  # the metric that fired, for ROLLBACK/HALT
    evidence: Mapping[str, Any] = field(default_factory=dict)
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision.value, "reason": self.reason, "metric": self.metric,
                "evidence": dict(self.evidence), "warning": self.warning}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        """Validate and rebuild an event payload; raise ValueError naming what is wrong."""
        try:
            decision = Decision(data["decision"])
        except (KeyError, ValueError) as err:
            raise ValueError(f"gate result needs 'decision' in {[d.value for d in Decision]}, got {data!r}") from err
        if not isinstance(data.get("reason"), str):
            raise ValueError(f"gate result needs a string 'reason', got {data.get('reason')!r}")
        return cls(decision=decision, reason=data["reason"], metric=data.get("metric"),
                   evidence=dict(data.get("evidence") or {}), warning=data.get("warning"))
