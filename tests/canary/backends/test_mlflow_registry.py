"""The MLflow registry backend against a real MLflow server (basic auth on, SQLite store, loopback port).

The server runs from its own virtualenv (``.state/mlflow-venv``, installed by ``make services``): the
full ``mlflow`` server package is not part of the Airflow environment, only the ``mlflow-skinny`` client
is. Retry behaviour is tested against a small HTTP stub that answers 503
first, since a healthy server cannot be made to fail on cue.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
from mlflow_harness import ROOT, MlflowServer, mlflow_servers, require_mlflow_server

from canary.backends import build_backend
from canary.backends.base import ConnInfo, ModelRegistry
from canary.backends.mlflow_registry import MAX_TAG_VALUE_CHARS, MlflowModelRegistry, evidence_metrics
from canary.devstack.processes import free_port
from canary.errors import BackendError, ConfigError, UnknownVersionError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[list[MlflowServer]]:
    with mlflow_servers(require_mlflow_server(), tmp_path_factory.mktemp("mlflow"), auth=(False, True)) as srvs:
        yield srvs


@pytest.fixture(scope="module")
def server(servers) -> MlflowServer:
    """No authentication: the basic-auth app hashes the password on every request (~0.5 s here)."""
    return servers[0]


@pytest.fixture(scope="module")
def auth_server(servers) -> MlflowServer:
    return servers[1]


@pytest.fixture
def model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def reg(server: MlflowServer, model: str) -> MlflowModelRegistry:
    """A model with versions 1, 2, 3; champion 1, challenger 3."""
    r = build_backend("registry", "mlflow", server.conn())
    for i in (1, 2, 3):
        assert r.register_version(model, f"s3://canary-test/{model}/{i}") == str(i)
    r.set_alias(model, "champion", "1")
    r.set_alias(model, "challenger", "3")
    return r


def test_implements_the_protocol(reg):
    assert isinstance(reg, ModelRegistry)


def test_resolve_versions_and_aliases(reg, model):
    assert reg.resolve(model, "2") == "2"
    assert reg.resolve(model, "challenger") == "3"
    assert reg.champion(model) == "1"
    assert reg.list_versions(model) == ["1", "2", "3"]
    known = r"\(known: 1, 2, 3, challenger, champion\)"
    with pytest.raises(UnknownVersionError, match=rf"no version or alias '9' {known}"):
        reg.resolve(model, "9")
    with pytest.raises(UnknownVersionError, match=rf"no version or alias 'canary' {known}") as info:
        reg.resolve(model, "canary")
    assert info.value.known == ["1", "2", "3", "challenger", "champion"]


def test_unknown_model(reg):
    with pytest.raises(UnknownVersionError, match="'no-such-model' is not registered"):
        reg.resolve("no-such-model", "1")
    with pytest.raises(UnknownVersionError, match="is not registered"):
        reg.resolve("no-such-model", "champion")
    with pytest.raises(UnknownVersionError, match="is not registered"):
        reg.promote("no-such-model", "1", run_id="r", summary={})
    with pytest.raises(UnknownVersionError, match="is not registered"):
        reg.record_rollback("no-such-model", "1", run_id="r", reason="x", summary={})
    assert reg.champion("no-such-model") is None
    assert reg.list_versions("no-such-model") == []


def test_champion_is_none_without_the_alias(server, model):
    r = build_backend("registry", "mlflow", server.conn())
    r.register_version(model, "s3://canary-test/x")
    assert r.champion(model) is None


def test_promote_moves_the_alias_and_tags_only_candidate_and_previous_champion(reg, model):
    reg.promote(model, "2", run_id="run-1", summary={"retired": "1", "reason": "every stage passed"})
    assert reg.champion(model) == "2"
    assert reg.aliases(model) == {"challenger": "3", "champion": "2"}
    tags = reg.get_tags(model, "2")
    assert tags["rollout.result"] == "promoted" and tags["rollout.run_id"] == "run-1"
    assert json.loads(tags["rollout.summary"]) == {"retired": "1", "reason": "every stage passed"}
    assert reg.get_tags(model, "1") == {"rollout.retired_by": "2"}
    assert reg.get_tags(model, "3") == {}
    reg.promote(model, "2", run_id="run-1", summary={})  # a retried task changes nothing else
    assert reg.get_tags(model, "1") == {"rollout.retired_by": "2"} and reg.champion(model) == "2"


def test_promote_of_an_unknown_version_changes_nothing(reg, model):
    with pytest.raises(UnknownVersionError, match="no version or alias '7'"):
        reg.promote(model, "7", run_id="r", summary={})
    assert reg.aliases(model) == {"challenger": "3", "champion": "1"}
    assert all(reg.get_tags(model, v) == {} for v in ("1", "2", "3"))


def test_record_rollback_tags_reason_and_summary_and_moves_no_alias(reg, model):
    reason = "stage 1 (25%): error rate " + "x" * 10_000
    reg.record_rollback(model, "3", run_id="run-2", reason=reason, summary={"stable": "1"})
    tags = reg.get_tags(model, "3")
    assert tags["rollout.result"] == "rolled_back" and tags["rollout.run_id"] == "run-2"
    assert len(tags["rollout.reason"]) == MAX_TAG_VALUE_CHARS
    assert tags["rollout.reason"].startswith("stage 1 (25%)") and tags["rollout.reason"].endswith("[truncated]")
    assert json.loads(tags["rollout.summary"]) == {"stable": "1"}
    assert reg.aliases(model) == {"challenger": "3", "champion": "1"}
    assert reg.get_tags(model, "1") == {} and reg.get_tags(model, "2") == {}


def test_registered_model_name_option(server, reg, model):
    other = build_backend("registry", "mlflow", server.conn(), registered_model_name=model,
                          champion_alias="challenger")
    assert other.resolve("spec-name", "2") == "2"
    assert other.champion("spec-name") == "3"


@pytest.fixture(scope="module")
def auth_model(auth_server) -> str:
    """A model on the server with basic auth: version 1, the champion."""
    r = build_backend("registry", "mlflow", auth_server.conn())
    r.register_version("secured", "s3://canary-test/secured/1")
    r.set_alias("secured", "champion", "1")
    return "secured"


def test_login_and_password_authenticate(auth_server, auth_model):
    assert build_backend("registry", "mlflow", auth_server.conn()).champion(auth_model) == "1"


def test_host_may_be_a_full_url_with_credentials(auth_server, auth_model):
    url = auth_server.url.replace("http://", f"http://{auth_server.username}:{auth_server.password}@")
    r = MlflowModelRegistry(ConnInfo(conn_id="c", host=url))
    assert r.champion(auth_model) == "1"
    assert r.tracking_uri == auth_server.url and auth_server.password not in repr(r)


def test_bad_credentials_are_a_backend_error_naming_the_server(auth_server, auth_model):
    bad = build_backend("registry", "mlflow", auth_server.conn(password="wrong-password"))
    with pytest.raises(BackendError, match=rf"at {auth_server.url} failed: UNAUTHENTICATED \(check the conn") as info:
        bad.champion(auth_model)
    assert info.value.status == 401
    assert "wrong-password" not in str(info.value)
    anonymous = build_backend("registry", "mlflow", auth_server.conn(login=None, password=None))
    with pytest.raises(BackendError, match="UNAUTHENTICATED"):
        anonymous.resolve(auth_model, "1")


def test_credentials_come_only_from_the_connection(auth_server, auth_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    anonymous = build_backend("registry", "mlflow", auth_server.conn(login=None, password=None))
    with pytest.raises(BackendError, match="UNAUTHENTICATED"):
        anonymous.champion(auth_model)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == auth_server.password  # restored after the call
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    build_backend("registry", "mlflow", auth_server.conn()).champion(auth_model)
    assert not [k for k in os.environ if k.startswith("MLFLOW_TRACKING_")]


def test_unreachable_server_is_a_backend_error_after_retries():
    port = free_port()  # nothing listens there
    r = MlflowModelRegistry(ConnInfo(conn_id="c", host="127.0.0.1", port=port, login="u", password="p"),
                            backoff_seconds=0.01)
    expected = rf"at http://127.0.0.1:{port} failed: INTERNAL_ERROR \(no answer from the server: ConnectionError\)"
    with pytest.raises(BackendError, match=expected) as info:
        r.champion("m")
    assert info.value.backend == "mlflow registry" and info.value.status is None


def test_configuration_errors():
    with pytest.raises(ConfigError, match="needs a host"):
        MlflowModelRegistry(ConnInfo(conn_id="c"))
    with pytest.raises(ConfigError, match="either login/password or extra.token"):
        MlflowModelRegistry(ConnInfo(conn_id="c", host="h", login="u", password="p", extra={"token": "t"}))
    with pytest.raises(ConfigError, match=r"unknown options \['endpoint'\]; known: registered_model_name"):
        build_backend("registry", "mlflow", ConnInfo(conn_id="c", host="h"), endpoint="churn")
    with pytest.raises(ConfigError, match="must be http"):
        MlflowModelRegistry(ConnInfo(conn_id="c", host="file:///tmp/mlruns"))


def test_reading_a_spec_or_building_the_backend_does_not_import_mlflow():
    code = ("import sys; import canary.spec.model; from canary.backends import build_backend, ConnInfo; "
            "build_backend('registry', 'mlflow', ConnInfo(conn_id='c', host='h')); "
            "print('mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")})
    assert done.stdout.strip() == "False"


# -- retries, against a stub that answers like an overloaded server ----------------------------------------


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then a registered model with a champion alias."""

    failures = 0
    requests: list[str] = []
    authorization: list[str | None] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        type(self).authorization.append(self.headers.get("Authorization"))
        if len(type(self).requests) <= type(self).failures:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"upstream overloaded")
            return
        body = json.dumps({"registered_model": {"name": "m", "aliases": [{"alias": "champion", "version": "4"}]}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Flaky", (_Flaky,), {"requests": [], "authorization": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_transient_errors_are_retried_with_backoff(flaky):
    url, handler = flaky
    handler.failures = 2
    r = MlflowModelRegistry(ConnInfo(conn_id="c", host=url, extra={"token": "tok"}), backoff_seconds=0.01)
    assert r.champion("m") == "4"
    assert len(handler.requests) == 3
    assert handler.authorization == ["Bearer tok"] * 3


def test_persistent_5xx_gives_up_with_the_status(flaky):
    url, handler = flaky
    handler.failures = 99
    r = MlflowModelRegistry(ConnInfo(conn_id="c", host=url), max_attempts=2, backoff_seconds=0.01)
    with pytest.raises(BackendError, match=rf"get registered model 'm' at {url} failed: INTERNAL_ERROR \(the server kept "
                                           r"answering with a transient HTTP error \(408/429/5xx\)\)"):
        r.champion("m")
    assert len(handler.requests) == 2


def test_alias_version(reg, model):
    assert reg.alias_version(model, "challenger") == "3"
    assert reg.alias_version(model, "champion") == "1"
    assert reg.alias_version(model, "canary") is None
    assert reg.alias_version("no-such-model", "challenger") is None
    reg.set_alias(model, "challenger", "2")
    assert reg.alias_version(model, "challenger") == "2"


def test_alias_version_failure_names_the_server(model):
    dead = build_backend("registry", "mlflow", ConnInfo(conn_id="t", host=f"http://127.0.0.1:{free_port()}"),
                         max_attempts=1, request_timeout_seconds=2)
    with pytest.raises(BackendError, match=rf"get registered model '{model}' at http://127.0.0.1:\d+ failed"):
        dead.alias_version(model, "challenger")


# -- the decided metrics logged to the candidate's run ------------------------------------------------

def _assessment(metric: str, kind: str, decision: str, *, segment: str | None = None, **evidence) -> dict:
    """An assessment as the analyzer writes it into the gate's evidence (``MetricAssessment.to_dict()``)."""
    found = {"metric": metric, "kind": kind, "decision": decision, "reason": "...", "evidence": evidence}
    return found | ({"segment": segment, "label": f"{metric} in segment {segment}"} if segment else {})


LAST_GATE = [
    _assessment("accuracy", "prediction_quality", "advance", test="label", ratio_estimate=0.97, ratio_lower=0.81,
                ratio_upper=1.08, e_value=0.2, canary_events=41, stable_events=130, canary_exposure=812,
                stable_exposure=2466, stages=3),
    _assessment("conversion", "kpi", "advance", test="label", ratio_lower=0.93, ratio_upper=float("inf"),
                canary_events=120, stable_events=350, canary_exposure=900, stable_exposure=2700),
    _assessment("accuracy", "prediction_quality", "continue", segment="device=ios", ratio_upper=1.4,
                canary_events=5, canary_exposure=80),
]


def _run_with_version(server: MlflowServer, reg: MlflowModelRegistry, model: str) -> tuple[str, str]:
    """Create an MLflow run and register a version of ``model`` from it; return ``(run_id, version)``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.create_experiment(f"exp-{model}")
    run_id = client.create_run(experiment).info.run_id
    return run_id, reg.register_version(model, f"runs:/{run_id}/model", run_id=run_id)


def _run_data(server: MlflowServer, run_id: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url).get_run(run_id).data


def test_promote_logs_the_decided_metrics_to_the_candidates_run(server, reg, model):
    run_id, version = _run_with_version(server, reg, model)
    reg.promote(model, version, run_id="rollout-run-7",
                summary={"retired": "1", "reason": "every stage passed", "stage": 3, "metrics": LAST_GATE})
    assert reg.champion(model) == version
    data = _run_data(server, run_id)
    assert data.metrics["canary.accuracy.ratio_upper"] == pytest.approx(1.08)
    assert data.metrics["canary.accuracy.canary_rate"] == pytest.approx(41 / 812)
    assert data.metrics["canary.accuracy.stable_rate"] == pytest.approx(130 / 2466)
    assert data.metrics["canary.accuracy.canary_exposure"] == 812
    assert data.metrics["canary.conversion.canary_rate"] == pytest.approx(120 / 900)
    assert "canary.conversion.ratio_upper" not in data.metrics  # infinite: no bound shown, nothing logged
    assert not any("ios" in key for key in [*data.metrics, *data.tags])  # segments stay in the summary
    assert {k: data.tags[k] for k in ("canary.result", "canary.stage", "canary.accuracy.decision",
                                      "canary.accuracy.kind", "canary.conversion.decision",
                                      "canary.rollout_run_id", "canary.model_version")} == {
        "canary.result": "promoted", "canary.stage": "3", "canary.accuracy.decision": "advance",
        "canary.accuracy.kind": "prediction_quality", "canary.conversion.decision": "advance",
        "canary.rollout_run_id": "rollout-run-7", "canary.model_version": f"{model}/{version}"}
    assert reg.get_tags(model, version)["rollout.evidence"].startswith(f"run {run_id}: ")


def test_record_rollback_logs_the_decided_metrics_to_the_candidates_run(server, reg, model):
    run_id, version = _run_with_version(server, reg, model)
    fired = _assessment("accuracy", "prediction_quality", "rollback", ratio_lower=1.3, ratio_upper=2.9,
                        canary_events=90, stable_events=120, canary_exposure=400, stable_exposure=1600)
    reg.record_rollback(model, version, run_id="rollout-run-8", reason="stage 1 (10%): accuracy: e-value 52",
                        summary={"stable": "1", "stage": 1, "metrics": [fired]})
    data = _run_data(server, run_id)
    assert data.tags["canary.result"] == "rolled_back" and data.tags["canary.accuracy.decision"] == "rollback"
    assert data.metrics["canary.accuracy.ratio_lower"] == pytest.approx(1.3)
    assert data.metrics["canary.accuracy.canary_rate"] == pytest.approx(90 / 400)
    assert reg.get_tags(model, version)["rollout.result"] == "rolled_back"


def test_a_version_without_a_run_says_so_and_is_promoted(reg, model):
    reg.promote(model, "2", run_id="r", summary={"stage": 3, "metrics": LAST_GATE})
    assert reg.champion(model) == "2"
    assert reg.get_tags(model, "2")["rollout.evidence"].startswith("not logged: the model version has no MLflow run")


def test_a_failure_to_log_the_metrics_warns_and_the_promotion_stands(server, reg, model, caplog):
    from mlflow import MlflowClient

    run_id, version = _run_with_version(server, reg, model)
    MlflowClient(tracking_uri=server.url).delete_run(run_id)  # a deleted run refuses new metrics
    with caplog.at_level("WARNING", logger="canary.backends.mlflow_registry"):
        reg.promote(model, version, run_id="r", summary={"stage": 3, "metrics": LAST_GATE})
    assert reg.champion(model) == version and reg.get_tags(model, version)["rollout.result"] == "promoted"
    assert "rollout.evidence" not in reg.get_tags(model, version)
    assert any("were not logged to the run" in r.getMessage() and "promoted stands" in r.getMessage()
               for r in caplog.records), caplog.text


def test_evidence_metrics_reads_the_overall_assessments_only():
    metrics, tags = evidence_metrics({"stage": 2, "metrics": LAST_GATE}, "promoted")
    assert metrics["canary.accuracy.e_value"] == 0.2 and metrics["canary.accuracy.stages"] == 3
    assert "canary.accuracy.test" not in metrics and "canary.conversion.ratio_upper" not in metrics
    assert tags == {"canary.result": "promoted", "canary.stage": "2", "canary.accuracy.decision": "advance",
                    "canary.accuracy.kind": "prediction_quality", "canary.conversion.decision": "advance",
                    "canary.conversion.kind": "kpi"}
    assert evidence_metrics({}, "rolled_back") == ({}, {"canary.result": "rolled_back"})
