"""Event-driven starts on a real Airflow: events pushed through the REST API, and a watcher on a real MLflow server.

The module adds five specs to the session's Airflow for its own duration (and removes them again, so the
other tests see the specs they expect): ``api-push`` (local registry, push only), ``api-mlflow`` and
``api-restart`` (a real MLflow registry, watched for new versions every second), ``api-alias`` (the same
MLflow, watched for its ``challenger`` alias moving) and ``api-webhook`` (the same MLflow, no watcher:
MLflow webhook deliveries only). Their rollout DAGs stay paused, so a started rollout stays queued and
moves no traffic; the test deletes those runs. Each test uses its own model and registers the versions
it needs, so it passes alone and in any order (the watchers' watermarks are per model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import requests
import yaml
from fast_spec import fast_spec
from mlflow_harness import mlflow_servers, require_mlflow_server

from canary.airflow_api import AirflowApiError
from canary.backends import build_backend
from canary.starts.mlflow_webhooks import sign

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ENDPOINT = "api"  # the endpoint of tests/airflow_api/conftest.py
DISPATCHER = "canary_registry_events"
PUSH_MODEL, WATCHED_MODEL, ALIAS_MODEL = "api-push", "api-mlflow", "api-alias"
RESTART_MODEL, WEBHOOK_MODEL = "api-restart", "api-webhook"
MLFLOW_CONN_ID = "canary_registry_mlflow_events"
WEBHOOK_CONN_ID, WEBHOOK_SECRET = "canary_mlflow_webhook_default", "api-test-webhook-secret"
WAIT_S = 120.0


@dataclass
class EventsSetup:
    server: object
    client: object  # one client (and token) for the module: the API server is slow on a loaded machine
    mlflow_registry: object


def runs(client, dag_id: str) -> list[dict]:
    return client.request("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                          params={"order_by": "-run_after", "limit": 50})["dag_runs"]


def delete_run(client, dag_id: str, run_id: str) -> None:
    client.request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")


def delete_runs(client, dag_id: str) -> None:
    for run in runs(client, dag_id):
        delete_run(client, dag_id, run["dag_run_id"])


def wait_for(what: str, check, timeout_s: float = WAIT_S, interval_s: float = 1.0):
    """Poll ``check`` until it returns something truthy; a request the API server did not answer
    (it stalls for tens of seconds on a loaded machine) counts as "not yet"."""
    deadline, last_error = time.time() + timeout_s, None
    while time.time() < deadline:
        try:
            value = check()
        except AirflowApiError as err:
            if err.status is not None:
                raise
            value, last_error = None, err
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}"
                         + (f" (last: {last_error})" if last_error else ""))


def reparse(client, dag_id: str) -> None:
    """Ask the DAG processor to parse the file of ``dag_id`` now (the specs are read at parse time)."""
    token = client.request("GET", f"/api/v2/dags/{dag_id}")["file_token"]
    client.request("PUT", f"/api/v2/parseDagFile/{token}")


def asset(client, model: str) -> dict | None:
    name = f"canary_registry__{model}"
    found = [a for a in client.request("GET", "/api/v2/assets", params={"name_pattern": name})["assets"]
             if a["name"] == name]
    return found[0] if found else None


@pytest.fixture(scope="module")
def events(airflow_server, tmp_path_factory) -> Iterator[EventsSetup]:
    server, client = airflow_server, airflow_server.client()
    specs = server.home.parent / "specs"  # CANARY_SPECS_DIR of the session's Airflow
    with mlflow_servers(require_mlflow_server(), tmp_path_factory.mktemp("mlflow_events")) as [mlflow]:
        client.request("POST", "/api/v2/connections", json_body={
            "connection_id": MLFLOW_CONN_ID, "conn_type": "canary_registry", "host": mlflow.url})
        client.request("POST", "/api/v2/connections", json_body={
            "connection_id": WEBHOOK_CONN_ID, "conn_type": "generic", "password": WEBHOOK_SECRET})
        mlflow_registry = build_backend("registry", "mlflow", mlflow.conn())
        for model in (WATCHED_MODEL, RESTART_MODEL, WEBHOOK_MODEL):
            mlflow_registry.register_version(model, f"s3://canary-test/{model}/1")
            mlflow_registry.set_alias(model, "champion", "1")
        for n in (1, 2, 3):
            mlflow_registry.register_version(ALIAS_MODEL, f"s3://canary-test/api-alias/{n}")
        mlflow_registry.set_alias(ALIAS_MODEL, "champion", "1")
        local = server.registry()
        for version, tags in (("v1", {}), ("v2", {}), ("v3", {"rollout.result": "rolled_back"})):
            local.register_version(PUSH_MODEL, version, tags=tags)
        local.set_alias(PUSH_MODEL, "champion", "v1")
        mlflow = {"registry": {"name": "mlflow", "conn_id": MLFLOW_CONN_ID}}
        new_versions = {"on_registry_event": {"enabled": True, "poll_interval": "1s"}}
        added = {
            PUSH_MODEL: fast_spec(PUSH_MODEL, ENDPOINT, schedule={"on_registry_event": {"enabled": True,
                                                                                        "watch": "none"}}),
            WATCHED_MODEL: fast_spec(WATCHED_MODEL, ENDPOINT, backends=mlflow, schedule=new_versions),
            RESTART_MODEL: fast_spec(RESTART_MODEL, ENDPOINT, backends=mlflow, schedule=new_versions),
            ALIAS_MODEL: fast_spec(ALIAS_MODEL, ENDPOINT, backends=mlflow,
                                   schedule={"on_registry_event": {"enabled": True, "watch": "alias",
                                                                   "alias": "challenger", "poll_interval": "1s"}}),
            WEBHOOK_MODEL: fast_spec(WEBHOOK_MODEL, ENDPOINT, backends=mlflow,
                                     schedule={"on_registry_event": {"enabled": True, "watch": "none"}}),
        }
        for model, spec in added.items():
            (specs / f"{model}.yaml").write_text(yaml.safe_dump(spec))
        try:
            reparse(client, "canary_rollout__api-model")
            reparse(client, DISPATCHER)
            for model in added:
                wait_for(f"DAG canary_rollout__{model}", lambda m=model: server.has_dag(f"canary_rollout__{m}"))
                wait_for(f"asset of {model}", lambda m=model: asset(client, m))
            # Watchers run only for assets a non-paused DAG is scheduled on, decided when the file is parsed.
            server.set_paused(DISPATCHER, False)
            reparse(client, DISPATCHER)
            for model in (WATCHED_MODEL, RESTART_MODEL, ALIAS_MODEL):
                wait_for(f"the MLflow watcher of {model}", lambda m=model: asset(client, m)["watchers"])
            yield EventsSetup(server=server, client=client, mlflow_registry=mlflow_registry)
        finally:
            server.set_paused(DISPATCHER, True)
            for model in added:
                (specs / f"{model}.yaml").unlink()
                delete_runs(client, f"canary_rollout__{model}")
            reparse(client, "canary_rollout__api-model")
            reparse(client, DISPATCHER)
            client.request("DELETE", f"/api/v2/connections/{MLFLOW_CONN_ID}")
            client.request("DELETE", f"/api/v2/connections/{WEBHOOK_CONN_ID}")


def push(client, model: str, extra: dict, *, asset_of: str | None = None) -> dict:
    asset_id = asset(client, asset_of or model)["id"]
    return client.request("POST", "/api/v2/assets/events", json_body={"asset_id": asset_id, "extra": extra})


def dispatcher_reports(client, after: set[str], *, until) -> list[tuple[str, dict]]:
    """Wait until the dispatcher runs not in ``after`` are finished and ``until(reports)``; return them."""

    def finished():
        new = [r for r in runs(client, DISPATCHER) if r["dag_run_id"] not in after]
        if not new or any(r["state"] not in ("success", "failed") for r in new):
            return None
        reports = [(r["state"], client.xcom(DISPATCHER, r["dag_run_id"], "report")) for r in new]
        return reports if until([rep for _state, rep in reports]) else None

    return wait_for("the dispatcher's report", finished, timeout_s=WAIT_S, interval_s=2.0)


def run_ids(client) -> set[str]:
    return {r["dag_run_id"] for r in runs(client, DISPATCHER)}


def test_a_pushed_event_starts_the_rollout_of_that_version(events):
    client = events.client
    before = run_ids(client)
    push(client, PUSH_MODEL, {"model": PUSH_MODEL, "version": "v2", "reason": "registered by training run 42"})
    [(state, report)] = dispatcher_reports(client, before, until=lambda reps: any(r["started"] for r in reps))
    assert state == "success", report
    [started] = report["started"]
    assert (started["model"], started["version"]) == (PUSH_MODEL, "v2")
    assert report["refused"] == [] and report["errors"] == [] and report["trigger_failures"] == []
    [run] = runs(client, f"canary_rollout__{PUSH_MODEL}")
    try:
        assert run["dag_run_id"] == started["run_id"] and run["dag_run_id"].startswith("registry__v2__")
        assert run["state"] == "queued"  # the rollout DAG is paused: nothing moves
        conf = dict(run["conf"])
        # the dispatcher says who started the run, for the rollout history
        assert conf.pop("started_by") == "registry_event"
        assert conf.pop("started_by_detail").startswith("canary_registry_events run ")
        assert conf == {"version": "v2", "reason": "registry event (REST API, pushed): registered by training run 42"}
    finally:  # no rollout of the model left queued for the next test
        delete_run(client, f"canary_rollout__{PUSH_MODEL}", run["dag_run_id"])


@pytest.mark.parametrize(("extra", "kind", "reason"), [
    ({"model": "no-such-model", "version": "v2"}, "refused",
     "model: unknown model 'no-such-model': no spec with schedule.on_registry_event.enabled "
     "(known: api-alias, api-mlflow, api-push, api-restart, api-webhook)"),
    ({"model": PUSH_MODEL}, "refused",
     'version: is missing; the event\'s extra must be {"model": "<model>", "version": "<version>"}'),
    ({"model": PUSH_MODEL, "version": 2}, "refused", 'version: must be a non-empty string, got 2 (quote it: "2")'),
    ({"model": PUSH_MODEL, "version": "v3"}, "skipped", "v3 was already rolled out (rollout.result=rolled_back)"),
])
def test_bad_events_are_refused_naming_the_field_and_start_nothing(events, extra, kind, reason):
    # One event at a time: Airflow hands events that arrive on an asset while its run is being created
    # to the run of the next event.
    client = events.client
    before, rollouts = run_ids(client), len(runs(client, f"canary_rollout__{PUSH_MODEL}"))
    push(client, PUSH_MODEL, extra)
    [(state, report)] = dispatcher_reports(client, before, until=lambda reps: any(r[kind] for r in reps))
    assert [c["reason"] for c in report[kind]] == [reason]
    assert report["started"] == [] and len(runs(client, f"canary_rollout__{PUSH_MODEL}")) == rollouts
    assert state == ("failed" if kind == "refused" else "success")  # a refusal shows as a failed run


def test_the_watcher_starts_a_rollout_when_a_version_is_registered_in_mlflow(events):
    client = events.client
    dag_id = f"canary_rollout__{WATCHED_MODEL}"
    assert runs(client, dag_id) == []  # only the champion so far: nothing to report
    version = events.mlflow_registry.register_version(WATCHED_MODEL, f"s3://canary-test/{WATCHED_MODEL}/2")
    started = time.time()
    [run] = wait_for(f"a rollout run of {WATCHED_MODEL} version {version}", lambda: runs(client, dag_id))
    print(f"\nwatcher-driven rollout run created {time.time() - started:.1f}s after registering version {version}")
    assert run["dag_run_id"].startswith(f"registry__{version}__") and run["state"] == "queued"
    assert run["conf"]["version"] == version
    # "after the champion (1)" or "after the last version seen (1)", depending on whether it polled before
    assert run["conf"]["reason"].startswith(f"registry event (watcher, new_version): version {version} registered "
                                            "after the ")
    assert run["conf"]["reason"].endswith(" (1)")
    time.sleep(5)  # several more polls: the watcher does not report the same version again
    assert len(runs(client, dag_id)) == 1
    watermark = wait_for("the watermark in the asset's state store", lambda: stored_watermark(client))
    assert watermark == {"last_version": version, "alias_version": None, "watch": "new_version"}


def stored_watermark(client, model: str = WATCHED_MODEL) -> dict | None:
    asset_id = asset(client, model)["id"]
    try:
        return client.request("GET", f"/api/v2/assets/{asset_id}/state-store/canary_registry_watermark")["value"]
    except Exception:
        return None


def test_a_restarted_watcher_resumes_from_its_watermark_and_reports_nothing_again(events):
    """The watcher reports a new version; its rollout run is deleted (nothing queued, no tag), so only the
    stored watermark keeps a new watcher from starting it again."""
    client, server = events.client, events.server
    dag_id = f"canary_rollout__{RESTART_MODEL}"
    version = events.mlflow_registry.register_version(RESTART_MODEL, f"s3://canary-test/{RESTART_MODEL}/2")
    [run] = wait_for(f"a rollout run of {RESTART_MODEL} version {version}", lambda: runs(client, dag_id))
    assert run["conf"]["version"] == version
    wait_for(f"the watermark at version {version}",
             lambda: (stored_watermark(client, RESTART_MODEL) or {}).get("last_version") == version)
    delete_runs(client, dag_id)
    dispatcher_runs = run_ids(client)
    # Pausing the dispatcher stops the watcher (at the next parse), unpausing starts a new one.
    server.set_paused(DISPATCHER, True)
    reparse(client, DISPATCHER)
    wait_for("the watcher to stop", lambda: asset(client, RESTART_MODEL)["watchers"] == [])
    server.set_paused(DISPATCHER, False)
    reparse(client, DISPATCHER)
    wait_for("a new watcher", lambda: asset(client, RESTART_MODEL)["watchers"])
    time.sleep(15)  # several polls of the new watcher, and time for a run it would have started
    assert runs(client, dag_id) == [] and run_ids(client) == dispatcher_runs


def test_the_alias_watcher_starts_a_rollout_when_the_challenger_alias_moves(events):
    """Only moves of the alias count: versions registered without it start nothing."""
    client, registry = events.client, events.mlflow_registry
    dag_id = f"canary_rollout__{ALIAS_MODEL}"
    registry.register_version(ALIAS_MODEL, f"s3://canary-test/{ALIAS_MODEL}/4")
    time.sleep(5)  # several polls: a new version without the alias is not the alias moving
    assert runs(client, dag_id) == []
    registry.set_alias(ALIAS_MODEL, "challenger", "2")
    [run] = wait_for(f"a rollout run of {ALIAS_MODEL} version 2", lambda: runs(client, dag_id))
    assert run["dag_run_id"].startswith("registry__2__") and run["conf"]["version"] == "2"
    assert run["conf"]["reason"] == "registry event (watcher, alias_moved): alias 'challenger' names version 2"
    delete_run(client, dag_id, run["dag_run_id"])
    registry.set_alias(ALIAS_MODEL, "challenger", "3")
    [moved] = wait_for(f"a rollout run of {ALIAS_MODEL} version 3", lambda: runs(client, dag_id))
    assert moved["conf"]["version"] == "3"
    assert moved["conf"]["reason"] == ("registry event (watcher, alias_moved): alias 'challenger' moved from "
                                       "version 2 to 3")
    watermark = wait_for("the alias watermark", lambda: stored_watermark(client, ALIAS_MODEL))
    assert watermark == {"last_version": None, "alias_version": "3", "watch": "alias"}


def test_a_signed_mlflow_webhook_delivery_starts_the_rollout_and_a_forged_one_is_refused(events):
    """The receiver the API server serves at /canary/mlflow/webhook, as MLflow would call it."""
    client, server = events.client, events.server
    dag_id = f"canary_rollout__{WEBHOOK_MODEL}"
    source = f"s3://canary-test/{WEBHOOK_MODEL}/2"
    version = events.mlflow_registry.register_version(WEBHOOK_MODEL, source)  # what MLflow reports next
    before = run_ids(client)
    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-12-01T00:00:00+00:00",
                       "data": {"name": WEBHOOK_MODEL, "version": version, "source": source}}).encode()
    sent = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": "api-test-1", "X-MLflow-Timestamp": sent,
               "X-MLflow-Signature": sign(WEBHOOK_SECRET, delivery_id="api-test-1", timestamp=sent, body=body)}
    url = f"{server.url}/canary/mlflow/webhook"
    forged = requests.post(url, data=body, timeout=30, headers={
        **headers, "X-MLflow-Signature": sign("not-the-secret", delivery_id="api-test-1", timestamp=sent, body=body)})
    assert forged.status_code == 401 and forged.json()["field"] == "X-MLflow-Signature", forged.text
    accepted = requests.post(url, data=body, headers=headers, timeout=30)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["asset"] == f"canary_registry__{WEBHOOK_MODEL}"
    [(state, report)] = dispatcher_reports(client, before, until=lambda reps: any(r["started"] for r in reps))
    assert state == "success", report
    [started] = report["started"]
    assert (started["model"], started["version"]) == (WEBHOOK_MODEL, version)
    [run] = runs(client, dag_id)
    conf = dict(run["conf"])
    assert conf.pop("started_by") == "registry_event"
    assert conf.pop("started_by_detail").startswith("canary_registry_events run ")
    assert conf == {"version": version, "reason": "registry event (REST API, new_version): MLflow webhook: "
                                                         f"version {version} created in '{WEBHOOK_MODEL}'"}
