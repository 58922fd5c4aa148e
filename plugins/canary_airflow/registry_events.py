"""The ``canary_registry_events`` DAG: start rollouts from registry events, report what was refused and why.

Graph::

    dispatch (validate each asset event, skip what must not start) >> start_rollout (mapped) >> report

Every spec with ``schedule.on_registry_event.enabled`` gets an asset ``canary_registry__<model>``
(URI ``x-canary-registry://<model>``). With ``watch: new_version`` or ``watch: alias`` the asset has a
watcher (:class:`~canary_airflow.registry_watch.RegistryWatchTrigger`) that polls the registry; with
``watch: none`` events only come from outside, ``POST /api/v2/assets/events`` with
``{"asset_id": <id>, "extra": {"model": "<model>", "version": "<version>"}}``. The DAG runs on any of
these assets; a run sees every event since the previous one. Watchers run only while this DAG is
unpaused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, AssetAny, AssetWatcher, BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowFailException

from canary.errors import SpecError
from canary.history.model import StartedBy
from canary.history.started_by import STARTED_BY_DETAIL_KEY, STARTED_BY_KEY
from canary.spec.model import RegistryWatch, RolloutSpec, load_spec, spec_files
from canary.starts.registry_events import asset_name, asset_uri
from canary_airflow.factory import START_DATE, specs_dir
from canary_airflow.nightly import ACTIVE_STATES
from canary_airflow.operators import failed_task_ids
from canary_airflow.registry_watch import RegistryWatchTrigger

REGISTRY_EVENTS_DAG_ID = "canary_registry_events"
DISPATCH_TASK_ID = "dispatch"


def opted_in_specs(specs_path: str | Path) -> dict[str, RolloutSpec]:
    """Return the valid specs that opt in to event-driven starts, by model (invalid ones are import errors elsewhere)."""
    specs: dict[str, RolloutSpec] = {}
    for path in spec_files(specs_path):
        try:
            spec = load_spec(path)
        except SpecError:
            continue  # canary_rollouts.py reports it as an import error
        if spec.schedule.on_registry_event.enabled:
            specs[spec.model] = spec
    return specs


def registry_asset(spec: RolloutSpec) -> Asset:
    """Return the asset whose events start rollouts of ``spec``'s model, with its watcher if the spec asks."""
    events = spec.schedule.on_registry_event
    watchers = []
    if events.watch is not RegistryWatch.NONE:
        ref = spec.backends.registry
        trigger = RegistryWatchTrigger(
            model=spec.model, registry={"name": ref.name, "conn_id": spec.backends.conn_id("registry"),
                                        "options": spec.backends.constructor_kwargs("registry")},
            watch=events.watch.value, alias=events.alias, poll_interval_seconds=events.poll_interval_s)
        watchers.append(AssetWatcher(name=f"registry_watch__{spec.model}", trigger=trigger))
    return Asset(name=asset_name(spec.model), uri=asset_uri(spec.model), group="canary", watchers=watchers)


class DispatchRegistryEventsOperator(BaseOperator):
    """Decide every triggering asset event: start a rollout, skip it, or refuse it; return the triggers.

    Pushes every decision (with its reason) as XCom ``choices``.

    :param specs_path: directory of rollout specs (read when the task runs, not when the DAG is parsed).
    """

    template_fields: Sequence[str] = ("specs_path",)
    ui_color = "#e8f1ff"

    def __init__(self, *, specs_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs_path = specs_path

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from canary.starts.registry_events import AssetEventInput, plan_dispatch
        from canary_airflow.operators import registry_hook

        items = [AssetEventInput(asset=event.asset.name, timestamp=event.timestamp.isoformat(),
                                 extra=event.extra)
                 for _asset, events in (context.get("triggering_asset_events") or {}).items() for event in events]
        specs = opted_in_specs(self.specs_path)
        ti = context["ti"]
        choices = plan_dispatch(
            items, known_models=specs,
            registry_for=lambda model: registry_hook(specs[model]).registry,
            active_runs_for=lambda model: ti.get_dr_count(dag_id=specs[model].dag_id, states=ACTIVE_STATES))
        if not items:
            self.log.info("REGISTRY EVENT none: this run has no triggering asset events")
        for c in choices:
            self.log.info("REGISTRY EVENT %s %s%s (%s at %s): %s", c.action, c.model or "?",
                          f" {c.version}" if c.version else "", c.asset, c.timestamp, c.reason)
        ti.xcom_push(key="choices", value=[c.to_dict() for c in choices])
        # started_by: the rollout's history says a registry event started it (its tasks see no caller).
        marker = {STARTED_BY_KEY: StartedBy.REGISTRY_EVENT.value,
                  STARTED_BY_DETAIL_KEY: f"{REGISTRY_EVENTS_DAG_ID} run {context['run_id']}"}
        return [{"trigger_dag_id": c.dag_id, "trigger_run_id": c.run_id, "conf": {**(c.conf or {}), **marker},
                 "note": f"started by {REGISTRY_EVENTS_DAG_ID} run {context['run_id']}: {c.reason}"}
                for c in choices if c.action == "start"]


class RegistryEventsReportOperator(BaseOperator):
    """Log and return what the events started, skipped and refused; fail if any event was refused or failed."""

    ui_color = "#eeeeee"

    def execute(self, context: Any) -> dict[str, Any]:
        from canary.starts.registry_events import summarize

        ti = context["ti"]
        choices = ti.xcom_pull(task_ids=DISPATCH_TASK_ID, key="choices")
        if choices is None:
            raise AirflowFailException(f"{DISPATCH_TASK_ID} recorded no decisions (did it fail?)")
        report = summarize(choices)
        report["trigger_failures"] = failed_task_ids(context)
        for kind in ("started", "skipped", "refused", "errors"):
            for c in report[kind]:
                self.log.info("REGISTRY EVENT %s %s%s: %s", kind, c["model"] or "?",
                              f" {c['version']}" if c["version"] else "", c["reason"])
        if report["refused"] or report["errors"] or report["trigger_failures"]:
            ti.xcom_push(key="return_value", value=report)
            problems = [f"{c['asset']} at {c['timestamp']}: {c['reason']}" for c in report["refused"] + report["errors"]]
            raise AirflowFailException("registry events: " + ("; ".join(problems) or "-")
                                       + f"; failed tasks: {', '.join(report['trigger_failures']) or '-'}")
        return report


def build_registry_events_dag(*, specs_path: str | Path | None = None) -> DAG:
    """Build the ``canary_registry_events`` DAG: reads the spec files, never the network."""
    path = str(specs_path or specs_dir())
    assets = [registry_asset(spec) for spec in opted_in_specs(path).values()]
    with DAG(
        dag_id=REGISTRY_EVENTS_DAG_ID,
        description="Start rollouts when the model registry reports a new version or a moved alias",
        schedule=AssetAny(*assets) if assets else None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        doc_md=__doc__,
        tags=["canary", "registry-events"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=10)},
    ) as dag:
        dispatch = DispatchRegistryEventsOperator(task_id=DISPATCH_TASK_ID, specs_path=path)
        start = TriggerDagRunOperator.partial(
            task_id="start_rollout", wait_for_completion=False, skip_when_already_exists=True,
            map_index_template="{{ task.trigger_dag_id }}",
        ).expand_kwargs(dispatch.output)
        report = RegistryEventsReportOperator(task_id="report", trigger_rule=TriggerRule.ALL_DONE)
        dispatch >> start >> report
    return dag


__all__ = ["REGISTRY_EVENTS_DAG_ID", "build_registry_events_dag", "opted_in_specs", "registry_asset"]
