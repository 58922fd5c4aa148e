"""Decisions and outcomes: one enum each, transitions in this module only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True, kw_only=True)
class Finalization:
    """What ``finalize`` concludes about a finished run, and what it must still do to traffic and lease."""

    outcome: Outcome
    reason: str
    return_to_stable: bool  # move all traffic back to stable and remove the candidate
    release_lease: bool  # traffic is settled: the endpoint is free for the next rollout


def decide_outcome(*, promoted: Mapping[str, Any] | None, rollbacks: Sequence[Mapping[str, Any]],
                   shadow: Mapping[str, Any] | None, failed_tasks: Sequence[str], lease_lost: str | None,
                   dry_run: bool) -> Finalization:
    """Decide how a run ended from what its tasks left behind, first match wins.

    A promotion (or a dry run's pretend one); else the first stage's rollback; else a failed shadow
    test; else failed tasks (FAILED) or a run stopped before promotion (ROLLED_BACK). If another
    rollout has taken the endpoint (``lease_lost`` says how), an unfinished run is FAILED and its
    traffic is left to that rollout. Traffic goes back to stable unless the run was promoted, is a dry
    run, was already rolled back by a ``rollback`` task, or lost the endpoint.

    :param promoted: the ``promote`` task's result (``outcome``, ``reason``), or None.
    :param rollbacks: the results of the stages' ``rollback`` tasks that ran, in stage order.
    :param shadow: the shadow test's result (``passed``, ``reasons``), or None.
    :param failed_tasks: ids of the run's failed tasks (other than ``finalize``).
    :param lease_lost: why the run no longer holds the endpoint's lease, or None.
    """
    if promoted:
        outcome, reason = Outcome(promoted["outcome"]), str(promoted["reason"])
    elif rollbacks:
        outcome, reason = Outcome.ROLLED_BACK, str(rollbacks[0]["reason"])
    elif shadow and not shadow.get("passed", True):
        outcome, reason = Outcome.ROLLED_BACK, "shadow test failed: " + "; ".join(shadow.get("reasons") or [])
    elif failed_tasks:
        outcome, reason = Outcome.FAILED, f"task(s) {', '.join(failed_tasks)} failed"
    else:
        outcome, reason = Outcome.ROLLED_BACK, "stopped before promotion (approval rejected or run stopped)"
    if lease_lost is not None and not outcome.is_success():
        outcome, reason = Outcome.FAILED, f"{reason}; {lease_lost}: traffic left to the rollout that owns the endpoint"
    unsettled = outcome in (Outcome.ROLLED_BACK, Outcome.FAILED)
    return Finalization(outcome=outcome, reason=reason,
                        return_to_stable=unsettled and not dry_run and not rollbacks and lease_lost is None,
                        release_lease=not dry_run and lease_lost is None)


def assessment_label(metric: str, segment: str | None) -> str:
    """Return the name of a metric's test overall (``metric``) or in a segment (``metric in segment by=value``)."""
    return metric if segment is None else f"{metric} in segment {segment}"


def label_of(item: Mapping[str, Any]) -> str:
    """Return the label of an assessment given as :meth:`MetricAssessment.to_dict` (older records: the metric)."""
    return str(item.get("label") or item.get("metric"))
