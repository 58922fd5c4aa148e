"""The comparison interface: canary vs stable, one verdict per metric.

An :class:`Analyzer` turns a window of cumulative statistics into one :class:`MetricAssessment` per
metric of the spec, plus an immutable state value that travels between polls (JSON-able, so it
can ride in trigger kwargs and events). The gate (:mod:`canary.policy.gate`) combines the assessments with
the guardrails, the stage timing and the policy. The implementation is
:class:`canary.stats.SequentialAnalyzer` (anytime-valid under repeated looks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from canary.policy.decisions import Decision, assessment_label
from canary.policy.evidence import Snapshot
from canary.spec.model import RolloutSpec


@dataclass(frozen=True, kw_only=True)
class MetricAssessment:
    """One metric's verdict at one poll.

    ``decision`` is ROLLBACK (a regression is shown), HALT (the metric cannot be evaluated: missing
    data, sample-ratio mismatch), ADVANCE (non-inferiority within tolerance is shown) or CONTINUE.
    """

    metric: str
    kind: str
    decision: Decision
    reason: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    #: ``by=value`` for a test in one segment (``analysis.segments``), None overall.
    segment: str | None = None

    @property
    def label(self) -> str:
        """The test's name for people and reports: ``error_rate``, ``error_rate in segment device=android``."""
        return assessment_label(self.metric, self.segment)

    def to_dict(self) -> dict[str, Any]:
        d = {"metric": self.metric, "kind": self.kind, "decision": self.decision.value,
             "reason": self.reason, "evidence": dict(self.evidence)}
        if self.segment is not None:
            d |= {"segment": self.segment, "label": self.label}
        return d


class Analyzer(Protocol):
    """Compares canary with stable; pure, deterministic, no I/O."""

    def assess(self, spec: RolloutSpec, window: Snapshot, *, canary_weight_pct: int,
               state: Mapping[str, Any] | None) -> tuple[list[MetricAssessment], dict[str, Any]]:
        """Return one assessment per metric (and any extra checks) and the next state."""
