"""What the promote and rollback tasks hand the registry as the evidence of the rollout."""

from __future__ import annotations

from typing import Any

from canary_airflow.operators import decided_metrics


class _Ti:
    def __init__(self, xcoms: dict[str, Any]) -> None:
        self.xcoms = xcoms

    def xcom_pull(self, *, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get(task_ids)


ASSESSMENTS = [{"metric": "accuracy", "kind": "prediction_quality", "decision": "advance", "reason": "...",
                "evidence": {"ratio_upper": 1.08, "canary_events": 41, "canary_exposure": 812}}]


def test_decided_metrics_are_the_stages_gate_assessments() -> None:
    observed = {"result": {"decision": "advance", "reason": "ok", "metric": None, "warning": None,
                           "evidence": {"canary_requests": 900, "metrics": ASSESSMENTS}}}
    context = {"ti": _Ti({"stage_3.observe": observed})}
    assert decided_metrics(context, 2) == {"stage": 3, "metrics": ASSESSMENTS}


def test_no_assessments_give_nothing() -> None:
    bake_only = {"result": {"decision": "advance", "reason": "bake time", "evidence": {"canary_requests": 10}}}
    assert decided_metrics({"ti": _Ti({"stage_1.observe": bake_only})}, 0) == {}
    assert decided_metrics({"ti": _Ti({})}, 1) == {}
