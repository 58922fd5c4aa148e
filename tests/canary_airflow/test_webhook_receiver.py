"""The MLflow webhook receiver: what it answers for each kind of delivery (pure), and its app with the
Airflow REST API replaced at the one function that posts the asset event."""

from __future__ import annotations

import json

import pytest
import yaml
from fast_spec import fast_spec
from fastapi.testclient import TestClient

from canary.airflow_api import AirflowApiError
from canary.starts.mlflow_webhooks import sign
from canary_airflow.webhook_receiver import WEBHOOK_PATH, create_app, handle_delivery, webhook_models

SECRET = "receiver-secret"
NOW_S = 1_800_000_000.0
MODELS = {"Churn Model": "churn"}


def delivery(data: dict | None = None, *, entity: str = "model_version", action: str = "created",
             secret: str = SECRET, sent_s: float = NOW_S) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"entity": entity, "action": action, "timestamp": "2027-01-15T08:00:00+00:00",
                       "data": data if data is not None else {"name": "Churn Model", "version": "7"}}).encode()
    ts = str(int(sent_s))
    return ({"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": ts,
             "X-MLflow-Signature": sign(secret, delivery_id="d-1", timestamp=ts, body=body)}, body)


@pytest.mark.parametrize(("make", "secret", "status", "text"), [
    (lambda: delivery(), None, 503, "connection 'canary_mlflow_webhook_default' is not defined"),
    (lambda: delivery(secret="wrong"), SECRET, 401, "X-MLflow-Signature: does not match the body"),
    (lambda: delivery(sent_s=NOW_S - 3600), SECRET, 401, "X-MLflow-Timestamp: delivery is 3600s old"),
    (lambda: delivery({"name": "Churn Model", "version": 7}), SECRET, 400, "data.version: must be a non-empty"),
    (lambda: delivery({"name": "Other", "version": "1"}), SECRET, 200, "served: Churn Model"),
    (lambda: delivery(entity="model_version_tag", action="set"), SECRET, 200, "the event starts no rollout"),
])
def test_deliveries_that_post_nothing(make, secret, status, text):
    headers, body = make()
    reply = handle_delivery(headers, body, secret=secret, model_for=MODELS, now_s=NOW_S)
    assert reply.status == status and reply.extra is None
    assert text in json.dumps(reply.body), reply.body


def test_a_signed_new_version_becomes_the_asset_event_of_the_spec_model():
    headers, body = delivery()
    reply = handle_delivery(headers, body, secret=SECRET, model_for=MODELS, now_s=NOW_S + 5)
    assert reply.status == 202 and reply.body["asset"] == "canary_registry__churn"
    assert reply.extra == {"model": "churn", "version": "7", "cause": "new_version",
                           "detail": "MLflow webhook: version 7 created in 'Churn Model'"}


def make_client(posted: list, *, fail: bool = False) -> TestClient:
    def post_event(extra):
        if fail:
            raise AirflowApiError("POST /api/v2/assets/events: HTTP 503")
        posted.append(extra)
        return {"id": 41}

    return TestClient(create_app(secret=lambda: SECRET, models=lambda: MODELS, post_event=post_event,
                                 clock=lambda: NOW_S))


def test_the_app_posts_a_verified_event_and_nothing_else():
    posted: list = []
    client = make_client(posted)
    headers, body = delivery()
    ok = client.post(WEBHOOK_PATH, content=body, headers=headers)
    assert ok.status_code == 202 and ok.json()["asset_event_id"] == 41
    assert posted == [ok.json()["extra"]]
    # The signature covers the raw bytes: the same JSON re-serialised differently is refused.
    reformatted = json.dumps(json.loads(body), indent=2).encode()
    refused = client.post(WEBHOOK_PATH, content=reformatted, headers=headers)
    assert refused.status_code == 401 and refused.json()["field"] == "X-MLflow-Signature"
    assert len(posted) == 1


def test_a_failed_post_is_a_5xx_so_that_mlflow_delivers_again():
    headers, body = delivery()
    reply = make_client([], fail=True).post(WEBHOOK_PATH, content=body, headers=headers)
    assert reply.status_code == 502 and "HTTP 503" in reply.json()["error"]


def test_served_models_are_the_opted_in_specs_on_the_mlflow_registry(tmp_path):
    mlflow = {"name": "mlflow", "conn_id": "m", "options": {"registered_model_name": "Churn Model"}}
    on = {"on_registry_event": {"enabled": True}}
    specs = {"churn": fast_spec("churn", "e", backends={"registry": mlflow}, schedule=on),
             "plain": fast_spec("plain", "e", backends={"registry": {"name": "mlflow", "conn_id": "m"}}, schedule=on),
             "local": fast_spec("local", "e", schedule=on),
             "off": fast_spec("off", "e", backends={"registry": mlflow})}
    for name, spec in specs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "broken.yaml").write_text("model: [")
    assert webhook_models(tmp_path) == {"Churn Model": "churn", "plain": "plain"}
