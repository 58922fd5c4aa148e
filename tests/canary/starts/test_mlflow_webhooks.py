"""MLflow webhook deliveries: signature checked against MLflow's own signer, refusals name the header, event mapping."""

from __future__ import annotations

import json

import pytest

from canary.starts.mlflow_webhooks import WebhookRefusedError, event_extra, sign, verify_delivery

SECRET = "s3cr3t-webhook-key"
NOW_S = 1_800_000_000.0
BODY = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2027-01-15T08:00:00+00:00",
                   "data": {"name": "churn", "version": "7", "source": "models:/m-1", "run_id": "r1", "tags": {},
                            "description": None}}).encode()


def headers(body: bytes = BODY, *, secret: str = SECRET, timestamp: float = NOW_S, delivery_id: str = "d-1") -> dict:
    ts = str(int(timestamp))
    return {"X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign(secret, delivery_id=delivery_id, timestamp=ts, body=body)}


def test_signature_matches_the_one_the_mlflow_server_computes():
    from mlflow.webhooks.delivery import _generate_hmac_signature  # the server's signer, as the reference

    ours = sign(SECRET, delivery_id="d-1", timestamp="1800000000", body=BODY)
    assert ours == _generate_hmac_signature(SECRET, "d-1", "1800000000", BODY.decode())


def test_a_signed_recent_delivery_passes_and_header_case_does_not_matter():
    verify_delivery(SECRET, headers(), BODY, now_s=NOW_S + 10)
    verify_delivery(SECRET, {k.lower(): v for k, v in headers().items()}, BODY, now_s=NOW_S)


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda h, b: (headers(secret="other"), b), "X-MLflow-Signature", "does not match the body"),
    (lambda h, b: (h, b + b" "), "X-MLflow-Signature", "does not match the body"),
    (lambda h, b: ({**h, "X-MLflow-Delivery-Id": "d-2"}, b), "X-MLflow-Signature", "does not match"),
    (lambda h, b: ({**h, "X-MLflow-Signature": "v2,abc="}, b), "X-MLflow-Signature", "got version 'v2'"),
    (lambda h, b: ({**h, "X-MLflow-Signature": "v1,not base64!"}, b), "X-MLflow-Signature", "not valid base64"),
    (lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Signature"}, b), "X-MLflow-Signature",
     "header is missing"),
    (lambda h, b: (headers(timestamp=NOW_S - 301), b), "X-MLflow-Timestamp", "delivery is 301s old"),
    (lambda h, b: (headers(timestamp=NOW_S + 400), b), "X-MLflow-Timestamp", "at most 300s"),
])
def test_refusals_name_the_header(change, field, message):
    bad_headers, bad_body = change(headers(), BODY)
    with pytest.raises(WebhookRefusedError) as err:
        verify_delivery(SECRET, bad_headers, bad_body, now_s=NOW_S)
    assert err.value.field == field and message in str(err.value), str(err.value)


def test_no_secret_no_verification():
    with pytest.raises(WebhookRefusedError, match="secret: a webhook secret is required"):
        verify_delivery("", headers(), BODY, now_s=NOW_S)


def test_new_versions_and_alias_moves_become_asset_event_extras():
    assert event_extra(BODY, model_for={"churn": "churn"}) == {
        "model": "churn", "version": "7", "cause": "new_version",
        "detail": "MLflow webhook: version 7 created in 'churn'"}
    alias = json.dumps({"entity": "model_version_alias", "action": "created",
                        "data": {"name": "prod.churn", "alias": "challenger", "version": "8"}}).encode()
    assert event_extra(alias, model_for={"prod.churn": "churn"}) == {
        "model": "churn", "version": "8", "cause": "alias_moved",
        "detail": "MLflow webhook: alias 'challenger' set to version 8 in 'prod.churn'"}


@pytest.mark.parametrize("payload", [
    {"entity": "model_version_tag", "action": "set", "data": {"name": "churn", "version": "7"}},
    {"entity": "model_version", "action": "created", "data": {"name": "other", "version": "1"}},
])
def test_other_events_and_models_start_nothing(payload):
    assert event_extra(json.dumps(payload).encode(), model_for={"churn": "churn"}) is None


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "body"),
    (json.dumps({"entity": "model_version", "action": "created"}).encode(), "data"),
    (json.dumps({"entity": "model_version", "action": "created", "data": {"name": "churn"}}).encode(),
     "data.version"),
])
def test_malformed_payloads_are_refused(body, field):
    with pytest.raises(WebhookRefusedError) as err:
        event_extra(body, model_for={"churn": "churn"})
    assert err.value.field == field
