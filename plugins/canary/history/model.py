"""What the rollout history keeps: one record per rollout run, every look of every stage, and its events.

Values only (frozen dataclasses with ``to_dict``/``from_dict``): the store (:mod:`canary.history.store`)
persists them, the report and the UI read them. A look is keyed by ``(dag_id, run_id, stage_index,
look_at_s)``: a retried or restarted poll that records the same look again changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class StartedBy(StrEnum):
    """Who or what started a rollout run."""

    UI = "ui"  # the trigger form in the Airflow UI (a manual run)
    API = "api"  # the REST API (e.g. `canary trigger` right after registering a model)
    NIGHTLY = "nightly"  # the nightly schedule (canary_nightly)
    REGISTRY_EVENT = "registry_event"  # a registry event (asset event, MLflow webhook, registry watcher)
    CLI = "cli"  # `airflow dags test` or another in-process run
    UNKNOWN = "unknown"


#: Look times are stored rounded to this many decimals (milliseconds): the identity of a look.
LOOK_TIME_DECIMALS = 3


@dataclass(frozen=True, kw_only=True)
class RolloutRecord:
    """One rollout run, from its frozen plan to its outcome (``outcome`` is None while it runs)."""

    dag_id: str
    run_id: str
    model: str
    endpoint: str
    candidate: str
    stable: str
    started_by: StartedBy = StartedBy.UNKNOWN
    started_by_detail: str = ""  # e.g. the user, the registry event, the nightly DAG
    reason: str = ""
    dry_run: bool = False
    started_at_s: float
    finished_at_s: float | None = None
    stages_planned: tuple[int, ...] = ()
    stages_reached: int = 0
    outcome: str | None = None
    outcome_reason: str | None = None
    report_location: str | None = None
    spec: Mapping[str, Any] = field(default_factory=dict)  # the spec as frozen for the run

    @property
    def running(self) -> bool:
        return self.outcome is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_by"] = self.started_by.value
        data["stages_planned"] = list(self.stages_planned)
        data["spec"] = dict(self.spec)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutRecord:
        values = dict(data)
        values["started_by"] = StartedBy(values.get("started_by") or StartedBy.UNKNOWN.value)
        values["stages_planned"] = tuple(int(w) for w in values.get("stages_planned") or ())
        values["spec"] = dict(values.get("spec") or {})
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class Look:
    """One poll of one stage: the evidence the gate saw and what it concluded.

    ``evidence`` is the gate result's evidence (:class:`canary.policy.decisions.GateResult`): per-version
    requests and errors, each metric's assessment (e-value, threshold, confidence-sequence bounds,
    tolerance) and the SRM check under ``metrics``.
    """

    dag_id: str
    run_id: str
    stage_index: int
    look_at_s: float
    weight_pct: int
    decision: str
    reason: str
    metric: str | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None  # estimated seconds until the stage decides (None: unknown)
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def observed_weight_pct(self) -> float | None:
        """The canary's observed share of the stage's requests in percent (None without requests)."""
        canary, stable = self.evidence.get("canary_requests"), self.evidence.get("stable_requests")
        if canary is None or stable is None or canary + stable <= 0:
            return None
        return 100.0 * canary / (canary + stable)

    @property
    def key(self) -> tuple[str, str, int, float]:
        return (self.dag_id, self.run_id, self.stage_index, round(self.look_at_s, LOOK_TIME_DECIMALS))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = dict(self.evidence)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Look:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["evidence"] = dict(values.get("evidence") or {})
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class RolloutEvent:
    """Something that happened in a run besides looks: a traffic change, a gate's action, an approval,
    the shadow test's verdict, a notification sent or failed. Keyed by ``(dag_id, run_id, kind, key)``."""

    dag_id: str
    run_id: str
    at_s: float
    kind: str  # e.g. "traffic", "gate", "approval", "shadow", "notification"
    key: str = ""  # what makes it unique within its kind (e.g. "stage_2"); re-recording replaces it
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["data"] = dict(self.data)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutEvent:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["data"] = dict(values.get("data") or {})
        return cls(**values)


__all__ = ["LOOK_TIME_DECIMALS", "Look", "RolloutEvent", "RolloutRecord", "StartedBy"]
