"""The canary_registry_events DAG: assets and watchers per opted-in spec, cheap parsing, the dispatcher task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import registry_fakes
import yaml
from fast_spec import fast_spec
from registry_fakes import MemoryRegistry

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "registry_events.py"


def write_specs(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    specs = {
        "watched": {"enabled": True, "poll_interval": "2s"},
        "aliased": {"enabled": True, "watch": "alias", "alias": "candidate"},
        "pushed": {"enabled": True, "watch": "none"},
        "off": {"enabled": False},
    }
    for model, events in specs.items():
        (directory / f"{model}.yaml").write_text(yaml.safe_dump(fast_spec(model, "e", schedule={
            "on_registry_event": events})))
    (directory / "broken.yaml").write_text(yaml.safe_dump({"model": "broken", "endpoint": "e", "stages": []}))
    return directory


def bag_for(specs: Path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CANARY_SPECS_DIR", str(specs))
    return DagBag(str(DAG_FILE))


def test_one_asset_per_opted_in_spec_with_a_watcher_unless_push_only(tmp_path, monkeypatch):
    bag = bag_for(write_specs(tmp_path / "specs"), monkeypatch)
    assert bag.import_errors == {}  # a broken spec is reported by canary_rollouts.py, not here
    dag = bag.dags["canary_registry_events"]
    assert dag.max_active_runs == 1 and dag.catchup is False and "canary" in dag.tags and dag.doc_md
    assets = {a.name: a for a in dag.timetable.asset_condition.objects}
    assert type(dag.timetable.asset_condition).__name__ == "AssetAny"
    assert sorted(assets) == ["canary_registry__aliased", "canary_registry__pushed", "canary_registry__watched"]
    assert assets["canary_registry__watched"].uri == "x-canary-registry://watched"
    assert assets["canary_registry__pushed"].watchers == []
    (watcher,) = assets["canary_registry__watched"].watchers
    assert watcher.name == "registry_watch__watched"
    assert watcher.trigger.serialize() == ("canary_airflow.registry_watch.RegistryWatchTrigger", {
        "model": "watched", "registry": {"name": "local", "conn_id": "canary_registry_default", "options": {}},
        "watch": "new_version", "alias": "challenger", "poll_interval_seconds": 2.0})
    (alias_watcher,) = assets["canary_registry__aliased"].watchers
    assert alias_watcher.trigger.serialize()[1]["watch"] == "alias"
    assert alias_watcher.trigger.serialize()[1]["alias"] == "candidate"
    assert dag.get_task("dispatch").downstream_task_ids == {"start_rollout"}
    assert dag.get_task("start_rollout").downstream_task_ids == {"report"}
    assert dag.get_task("report").trigger_rule.value == "all_done"


def test_without_opted_in_specs_the_dag_has_no_schedule(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "off.yaml").write_text(yaml.safe_dump(fast_spec("off", "e")))
    bag = bag_for(specs, monkeypatch)
    assert bag.import_errors == {}
    assert type(bag.dags["canary_registry_events"].timetable).__name__ == "NullTimetable"


def test_parsing_reads_no_registry_and_imports_nothing_heavy(tmp_path):
    specs = write_specs(tmp_path / "specs")
    code = ("import sys, runpy, json; runpy.run_path(sys.argv[1]);"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'mlflow','boto3','botocore','scipy','pandas','requests_toolbelt'} or m.startswith('canary.stats') "
            "or m.startswith('canary.serving') or m == 'canary.backends.mlflow_registry')))")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT / 'dags'}", "CANARY_SPECS_DIR": str(specs)}
    out = subprocess.run([sys.executable, "-c", code, str(DAG_FILE)], capture_output=True, text=True, env=env,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


class RecordingTI:
    """The two task-instance calls the dispatcher makes (active-run count, XCom push)."""

    def __init__(self, active: dict[str, int]) -> None:
        self.active, self.xcom = active, {}

    def get_dr_count(self, *, dag_id: str, states: list[str]) -> int:
        assert states == ["queued", "running"]
        return self.active.get(dag_id, 0)

    def xcom_push(self, *, key: str, value) -> None:
        self.xcom[key] = json.loads(json.dumps(value))


def asset_event(model: str, extra: dict, second: int):
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    return AssetEventDagRunReferenceResult(
        asset=AssetReferenceAssetEventDagRun(name=f"canary_registry__{model}", uri=f"x-canary-registry://{model}",
                                             extra={}),
        extra=extra, source_task_id=None, source_dag_id=None, source_run_id=None, source_map_index=None,
        source_aliases=[], timestamp=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC))


@pytest.fixture
def memory_specs(tmp_path, monkeypatch):
    registry_fakes.install(monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_MEM_REGISTRY", json.dumps({"conn_type": "canary_registry", "host": "x"}))
    specs = tmp_path / "specs"
    specs.mkdir()
    for model in ("watched", "busy"):
        registry_fakes.REGISTRIES[model] = MemoryRegistry(["1", "2"])
        (specs / f"{model}.yaml").write_text(yaml.safe_dump(fast_spec(model, "e", backends={
            "registry": {"name": "memory", "conn_id": "mem_registry", "options": {"key": model}}},
            schedule={"on_registry_event": {"enabled": True}})))
    return specs


def test_dispatcher_starts_skips_and_refuses_with_reasons(memory_specs):
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from canary_airflow.registry_events import DispatchRegistryEventsOperator

    events = TriggeringAssetEventsAccessor.build([
        asset_event("watched", {"from_trigger": True, "payload": {"model": "watched", "version": "2",
                                                                  "cause": "new_version",
                                                                  "detail": "version 2 registered"}}, 1),
        asset_event("busy", {"model": "busy", "version": "2", "from_rest_api": True}, 2),
        asset_event("watched", {"model": "watched", "from_rest_api": True}, 3),
    ])
    ti = RecordingTI({"canary_rollout__busy": 1})
    op = DispatchRegistryEventsOperator(task_id="dispatch", specs_path=str(memory_specs))
    triggers = op.execute({"triggering_asset_events": events, "ti": ti, "run_id": "asset_triggered__x"})
    assert triggers == [{
        "trigger_dag_id": "canary_rollout__watched",
        "trigger_run_id": "registry__2__2026-01-01T00:00:01+00:00",
        "conf": {"version": "2", "reason": "registry event (watcher, new_version): version 2 registered",
                 "started_by": "registry_event", "started_by_detail": "canary_registry_events run asset_triggered__x"},
        "note": "started by canary_registry_events run asset_triggered__x: 2: version 2 registered "
                "(after champion 1, not rolled out yet)"}]
    got = [(c["model"], c["action"], c["reason"]) for c in ti.xcom["choices"]]
    assert got[1:] == [
        ("busy", "skip", "1 rollout run(s) of canary_rollout__busy already queued or running"),
        ("watched", "refuse", "version: is missing; the event's extra must be "
                              '{"model": "<model>", "version": "<version>"}'),
    ]


def test_dispatcher_without_events_starts_nothing(memory_specs):
    from canary_airflow.registry_events import DispatchRegistryEventsOperator

    ti = RecordingTI({})
    op = DispatchRegistryEventsOperator(task_id="dispatch", specs_path=str(memory_specs))
    assert op.execute({"triggering_asset_events": {}, "ti": ti, "run_id": "manual__x"}) == []
    assert ti.xcom["choices"] == []
