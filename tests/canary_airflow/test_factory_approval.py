"""The approval task shows the gate's evidence: its body is a template pulling the gate's Markdown."""

from __future__ import annotations

import yaml
from fast_spec import fast_spec

from canary.policy.evidence_md import EVIDENCE_MD_XCOM_KEY
from canary_airflow.factory import build_rollout_dag


class FakeTI:
    def __init__(self, xcoms):
        self.xcoms, self.pulled = xcoms, []

    def xcom_pull(self, task_ids=None, key="return_value"):
        self.pulled.append((task_ids, key))
        return self.xcoms.get((task_ids, key))


def approve_task(tmp_path, stage: int):
    path = tmp_path / "churn.yaml"
    path.write_text(yaml.safe_dump(fast_spec("churn", "e")))
    dag = build_rollout_dag(path)
    return dag.get_task(f"stage_{stage}.approve")


def test_the_body_renders_the_evidence_of_its_own_stages_gate(tmp_path):
    task = approve_task(tmp_path, 2)
    assert "body" in task.template_fields
    table = "| metric | decision |\n|---|---|\n| error_rate | continue |"
    ti = FakeTI({("stage_2.gate", EVIDENCE_MD_XCOM_KEY): table})
    body = task.render_template(task.body, {"ti": ti})
    assert ti.pulled == [("stage_2.gate", EVIDENCE_MD_XCOM_KEY)]
    assert body.startswith("The gate could not decide on its own") and body.endswith(table)


def test_without_evidence_the_body_says_where_to_look(tmp_path):
    task = approve_task(tmp_path, 1)
    body = task.render_template(task.body, {"ti": FakeTI({})})
    assert body.endswith("No evidence from the gate: see its log.")
