"""Every route of the plugin's FastAPI app (mounted by the Airflow API server, which does not authenticate
plugin apps) declares Airflow's auth, except the MLflow webhook, which its signature authenticates.

The routes are enumerated from the app: a new route without an auth dependency fails here.
"""

from __future__ import annotations

import pytest
from airflow.api_fastapi.core_api import security
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from canary_airflow.webhook_receiver import MAX_DELIVERY_BYTES, WEBHOOK_PATH, create_app

#: Routes authenticated by something else than Airflow: the webhook's HMAC signature and timestamp.
SIGNED = {("POST", WEBHOOK_PATH)}


def app():
    return create_app(secret=lambda: "s3cret", models=dict, post_event=lambda extra: {"id": 1})


def dependency_calls(dependant) -> list:
    calls = []
    for sub in dependant.dependencies:
        calls += [sub.call, *dependency_calls(sub)]
    return calls


def test_only_api_routes_are_served():
    # FastAPI's /docs, /redoc and /openapi.json would be open routes of the API server: they are turned off.
    others = [getattr(r, "path", r) for r in app().routes if not isinstance(r, APIRoute)]
    assert others == []


ROUTES = [(method, route) for route in app().routes if isinstance(route, APIRoute) for method in sorted(route.methods)]


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{m} {r.path}" for m, r in ROUTES])
def test_every_route_declares_airflow_auth_or_is_signed(method, route):
    if (method, route.path) in SIGNED:
        return
    calls = dependency_calls(route.dependant)
    assert security.get_user in calls, f"{method} {route.path} has no Airflow auth dependency (GetUserDep, " \
                                       f"requires_access_dag...): {calls}"


def test_every_mutating_route_is_known():
    mutating = {(m, r.path) for m, r in ROUTES if m not in ("GET", "HEAD")}
    assert mutating == SIGNED


@pytest.mark.parametrize(("headers", "field"), [
    ({}, "X-MLflow-Signature"),
    ({"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Timestamp": "1", "X-MLflow-Delivery-Id": "d"}, "X-MLflow-Signature"),
])
def test_the_signed_route_refuses_an_unsigned_or_forged_delivery(headers, field):
    reply = TestClient(app()).post(WEBHOOK_PATH, content=b'{"entity": "model_version"}', headers=headers)
    assert reply.status_code == 401 and reply.json()["field"] == field, reply.text


def test_the_signature_is_compared_in_constant_time(monkeypatch):
    import hmac

    from canary.starts import mlflow_webhooks

    calls, real = [], hmac.compare_digest
    monkeypatch.setattr(mlflow_webhooks.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    body = b"{}"
    headers = {"X-MLflow-Delivery-Id": "d", "X-MLflow-Timestamp": "100",
               "X-MLflow-Signature": mlflow_webhooks.sign("k", delivery_id="d", timestamp="100", body=body)}
    mlflow_webhooks.verify_delivery("k", headers, body, now_s=100.0)
    assert len(calls) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_a_delivery_over_the_limit_is_refused_unread(chunked):
    big = b" " * (MAX_DELIVERY_BYTES + 1)
    content = (big[i:i + 4096] for i in range(0, len(big), 4096)) if chunked else big
    reply = TestClient(app()).post(WEBHOOK_PATH, content=content)
    assert reply.status_code == 413 and reply.json()["field"] == "body", reply.text
