"""The one DAG factory: a rollout DAG per spec file.

Graph (stage groups repeat; ``approve`` runs only when the gate holds for a human, and is skipped otherwise,
so a run may ask for stricter approvals than its spec without another DAG shape)::

    validate_request >> shadow_test >> deploy_canary
      >> stage_1[set_traffic >> observe >> gate -> proceed | approve | rollback]
      >> stage_2[...] >> ... >> promote
    finalize  (teardown of validate_request: runs whatever happened; traffic back to stable unless promoted)

Cheap to parse: only the spec (pydantic + YAML) and Airflow's authoring API are imported here.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param, TaskGroup, TriggerRule

from canary.errors import SpecError
from canary.policy.evidence_md import EVIDENCE_MD_XCOM_KEY
from canary.rollout.lease import lock_store_conflicts
from canary.rollout.plan import allowed_approval_modes
from canary.spec import defaults
from canary.spec.durations import format_duration
from canary.spec.model import RolloutSpec, load_spec, spec_files
from canary_airflow import notify
from canary_airflow.operators import (
    PLAN_TASK_ID,
    PROMOTE_TASK_ID,
    SHADOW_TASK_ID,
    CanaryGateOperator,
    DeployCanaryOperator,
    FinalizeRolloutOperator,
    PromoteOperator,
    RollbackOperator,
    SetTrafficOperator,
    ShadowTestOperator,
    ValidateRolloutRequestOperator,
)
from canary_airflow.sensors import CanaryObserveSensor

DEFAULT_SPECS_DIR = Path(__file__).resolve().parents[2] / "include" / "rollouts"
START_DATE = datetime(2025, 1, 1)
#: The one DAG that carries every invalid spec's error into the UI's import errors.
INVALID_SPECS_DAG_ID = defaults.rollout_dag_id("invalid_specs")
#: How long an approval waits for a person before it fails (and ``finalize`` returns traffic to stable).
APPROVAL_TIMEOUT_HOURS = 24
#: Retries of each stage's observe sensor (see build_rollout_dag).
OBSERVE_RETRIES = 2


def approval_body(gate_task_id: str) -> str:
    """Return the approval's Markdown body: a template pulling the gate's evidence (rendered at execute)."""
    return ("The gate could not decide on its own or the approval mode asks for a person.\n\n"
            f"{{{{ ti.xcom_pull(task_ids='{gate_task_id}', key='{EVIDENCE_MD_XCOM_KEY}') "
            "or 'No evidence from the gate: see its log.' }}")


def specs_dir() -> Path:
    """Return ``$CANARY_SPECS_DIR`` or the repository's ``include/rollouts``."""
    return Path(os.environ.get("CANARY_SPECS_DIR", DEFAULT_SPECS_DIR))


def rollout_params(spec: RolloutSpec) -> dict[str, Param]:
    """Return the trigger form: JSON-schema validated by the UI and the REST API."""
    n = len(spec.stages)
    weights = ", ".join(str(s.weight) for s in spec.stages)
    return {
        "version": Param("challenger", type="string", minLength=1, maxLength=200, title="Candidate version",
                         description="Registry version or alias to roll out (e.g. '7' or 'challenger')."),
        "stages": Param(None, type=["null", "array"], items={"type": "integer", "minimum": 1, "maximum": 100},
                        minItems=n, maxItems=n, title="Stage weights override",
                        description=f"Optional: {n} increasing canary percentages ending at 100 "
                                    f"(spec: {weights})."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Read and decide everything, change no traffic and no registry state."),
        "approval": Param(spec.policy.approval.value, type="string", enum=allowed_approval_modes(spec),
                          title="Approval mode",
                          description="Human approvals in this run: 'before_promote' asks before the last stage "
                                      "promotes, 'every_stage' after every stage. A run may ask for more "
                                      f"approvals than the spec ({spec.policy.approval.value}), never fewer."),
        "reason": Param("", type="string", maxLength=500, title="Reason", description="Why this rollout (audit)."),
    }


def _doc(spec: RolloutSpec, spec_path: Path) -> str:
    rows = "\n".join(f"| {i + 1} | {s.weight}% | {format_duration(s.min_duration_s)} | "
                     f"{format_duration(s.max_duration_s)} | {s.min_requests} |" for i, s in enumerate(spec.stages))
    metrics = ", ".join(f"`{m.name}` ({m.kind.value}, tolerance {m.tolerance:g})" for m in spec.analysis.metrics)
    return (f"# Canary rollout of `{spec.model}`\n\n{spec.description}\n\n"
            f"Endpoint `{spec.endpoint}`; spec `{spec_path.name}`. Alpha {spec.analysis.alpha}, polls every "
            f"{format_duration(spec.analysis.poll_interval_s)}; metrics: {metrics}.\n\n"
            "| stage | weight | min | max | min canary requests |\n|---|---|---|---|---|\n"
            f"{rows}\n\nOn timeout: `{spec.policy.on_timeout.value}`; on halt: `{spec.policy.on_halt.value}`; "
            f"approval: `{spec.policy.approval.value}`. Any failure returns all traffic to the stable version.")


def build_rollout_dag(spec_path: str | Path, spec: RolloutSpec | None = None) -> DAG:
    """Build the rollout DAG of one spec file (raises :class:`SpecError` for an invalid spec).

    :param spec: the file's spec, when the caller has loaded it already.
    """
    spec_path = Path(spec_path)
    spec = spec if spec is not None else load_spec(spec_path)
    with DAG(
        dag_id=spec.dag_id,
        description=spec.description or f"Canary rollout of {spec.model}",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        params=rollout_params(spec),
        doc_md=_doc(spec, spec_path),
        tags=["canary", f"model:{spec.model}", *spec.tags],
        default_args={"owner": spec.owner, "retries": 1, "retry_delay": timedelta(seconds=10)},
        render_template_as_native_obj=False,
        deadline=notify.stuck_deadline(spec),
    ) as dag:
        validate = ValidateRolloutRequestOperator(task_id=PLAN_TASK_ID, spec_path=str(spec_path))
        shadow = ShadowTestOperator(task_id=SHADOW_TASK_ID,
                                    execution_timeout=timedelta(seconds=spec.shadow.max_duration_s + 120))
        deploy = DeployCanaryOperator(task_id="deploy_canary")
        validate >> shadow >> deploy
        upstream: list[Any] = [deploy]
        leaves: list[Any] = []
        for i, stage in enumerate(spec.stages):
            with TaskGroup(f"stage_{i + 1}", tooltip=f"{stage.weight}% canary") as _group:
                set_traffic = SetTrafficOperator(task_id="set_traffic", stage_index=i,
                                                 trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
                # Retried: every look rebuilds the stage's evidence from its cumulative window and the stage
                # clock is absolute, so a retry loses nothing and extends nothing. It covers a flaky metrics
                # backend, a lost triggerer, and Airflow 3.3 failing a deferred try whose trigger fired
                # before the scheduler had processed the deferral (a "state mismatch" in the audit log).
                observe = CanaryObserveSensor(task_id="observe", stage_index=i,
                                              stage_max_duration_s=stage.max_duration_s,
                                              poll_interval_s=spec.analysis.poll_interval_s,
                                              retries=OBSERVE_RETRIES, retry_delay=timedelta(seconds=2))
                gate = CanaryGateOperator(task_id="gate", stage_index=i, has_approval=True)
                proceed = EmptyOperator(task_id="proceed")
                rollback = RollbackOperator(task_id="rollback", stage_index=i)
                # Skipped unless the gate holds (policy hold, or the run's approval mode asks for a person).
                approve = ApprovalOperator(
                    task_id="approve",
                    subject=f"{spec.model}: continue the rollout after stage {i + 1} ({stage.weight}%)?",
                    body=approval_body(f"stage_{i + 1}.gate"),
                    response_timeout=timedelta(hours=APPROVAL_TIMEOUT_HOURS),
                )
                set_traffic >> observe >> gate >> [proceed, rollback, approve]
                nexts: list[Any] = [proceed, approve]
            upstream >> set_traffic
            upstream = nexts
            leaves.append(rollback)
        promote = PromoteOperator(task_id=PROMOTE_TASK_ID, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        upstream >> promote
        finalize = FinalizeRolloutOperator(task_id="finalize", stage_count=len(spec.stages))
        [promote, *leaves] >> finalize
        finalize.as_teardown(setups=validate, on_failure_fail_dagrun=True)
    return dag


def _invalid_specs_dag(errors: list[SpecError]) -> DAG:
    """Return a DAG that fails Airflow's validation with every spec problem, so they show as import errors.

    Airflow records an exception raised while bagging one DAG as an import error and still loads the
    other DAGs of the file: one broken spec never hides the valid ones.
    """
    message = "invalid rollout spec(s):\n" + "\n".join(str(e) for e in errors)

    class InvalidSpecsDAG(DAG):
        def validate(self) -> None:
            raise ValueError(message)

    return InvalidSpecsDAG(dag_id=INVALID_SPECS_DAG_ID, schedule=None, start_date=START_DATE,
                           description=message[:200])


def build_all(directory: str | Path | None = None) -> tuple[dict[str, DAG], list[SpecError]]:
    """Build a DAG per valid spec; return them with the errors of the invalid ones."""
    dags: dict[str, DAG] = {}
    errors: list[SpecError] = []
    valid: list[tuple[str, RolloutSpec]] = []
    dag_ids: dict[str, str] = {}
    for path in spec_files(directory or specs_dir()):
        # Each file is read once: a spec removed (or replaced) while the DAG processor parses must not turn
        # into an exception that takes every rollout DAG of this file down with it.
        try:
            spec = load_spec(path)
            dag = build_rollout_dag(path, spec)
        except SpecError as err:
            if not path.exists():  # removed after the directory was listed: gone, not broken
                continue
            errors.append(err)
            continue
        dags[dag.dag_id] = dag
        valid.append((str(path), spec))
        dag_ids[str(path)] = dag.dag_id
    # Specs sharing an endpoint must share the lock store, or their rollouts could overlap: refuse both.
    for source, field, message in lock_store_conflicts(valid):
        errors.append(SpecError(source, [(field, message)]))
        dags.pop(dag_ids[source], None)
    return dags, errors


def register_dags(namespace: dict[str, Any], directory: str | Path | None = None) -> list[str]:
    """Put one DAG per valid spec into a DAG file's globals; invalid specs become one import error."""
    dags, errors = build_all(directory)
    namespace.update(dags)
    if errors:
        namespace[INVALID_SPECS_DAG_ID] = _invalid_specs_dag(errors)
    return list(dags)


__all__ = ["build_all", "build_rollout_dag", "register_dags", "rollout_params"]
