"""An HTTP receiver for MLflow webhooks, served by the Airflow API server (``/canary/mlflow/webhook``).

MLflow 3 POSTs registry events to a URL, signed with the webhook's secret. This receiver refuses every
delivery over :data:`MAX_DELIVERY_BYTES` (413), whose signature does not verify (401) or that is older
than the replay window, turns the rest into the ``extra`` of an asset event on ``canary_registry__<model>``
(:mod:`canary.starts.mlflow_webhooks`), and posts that through the Airflow REST API, so the
``canary_registry_events`` dispatcher validates it and starts the rollout exactly as for any pushed event. Deliveries for models no spec opts in, and events
that start nothing (e.g. a tag set), are answered 200 with the reason, so MLflow does not retry them.

Connections (read in the API server):

- ``canary_mlflow_webhook_default``: ``password`` is the webhook secret given to MLflow;
- ``canary_airflow_api_default``: the Airflow API the event is posted through (as for run notes).

Only specs with ``schedule.on_registry_event.enabled`` and the ``mlflow`` registry are served; the MLflow
model name is the registry's ``registered_model_name`` option (default: the spec's model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request  # this module is imported only by the API server (canary_plugin.py)
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from canary.starts.mlflow_webhooks import WebhookRefusedError, event_extra, verify_delivery
from canary.starts.registry_events import asset_name

URL_PREFIX = "/canary"
WEBHOOK_PATH = "/mlflow/webhook"
SECRET_CONN_ID = "canary_mlflow_webhook_default"
#: The largest delivery read (an MLflow registry event is well under 1 KiB): 413 above.
MAX_DELIVERY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """What the receiver answers: HTTP status and JSON body; ``extra`` is the asset event to post."""

    status: int
    body: dict[str, Any]
    extra: dict[str, Any] | None = None


def handle_delivery(headers: Mapping[str, str], body: bytes, *, secret: str | None,
                    model_for: Mapping[str, str], now_s: float) -> Reply:
    """Decide what to do with one delivery (pure: no I/O).

    :param secret: the webhook secret; None when the connection holding it is not defined.
    :param model_for: MLflow registered model name -> spec model, for the specs that opt in.
    """
    if not secret:
        return Reply(503, {"error": f"connection {SECRET_CONN_ID!r} is not defined: set its password to the "
                                    "MLflow webhook's secret"})
    try:
        verify_delivery(secret, headers, body, now_s=now_s)
    except WebhookRefusedError as err:
        return Reply(401, {"error": str(err), "field": err.field})
    try:
        extra = event_extra(body, model_for=model_for)
    except WebhookRefusedError as err:
        return Reply(400, {"error": str(err), "field": err.field})
    if extra is None:
        known = ", ".join(sorted(model_for)) or "none"
        return Reply(200, {"ignored": "the event starts no rollout: not a new version or alias of a model "
                                      f"a spec opts in (schedule.on_registry_event with the mlflow registry; "
                                      f"served: {known})"})
    return Reply(202, {"asset": asset_name(extra["model"]), "extra": extra}, extra=extra)


def webhook_models(specs_path: Any = None) -> dict[str, str]:
    """Return MLflow registered model name -> spec model for the specs the receiver serves."""
    from canary_airflow.factory import specs_dir
    from canary_airflow.registry_events import opted_in_specs

    return {str(spec.backends.typed_options("registry").registered_model_name or model): model
            for model, spec in opted_in_specs(specs_path or specs_dir()).items()
            if spec.backends.registry.name == "mlflow"}


def _connection(conn_id: str) -> Any | None:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


def _secret() -> str | None:
    conn = _connection(SECRET_CONN_ID)
    return conn.password if conn is not None and conn.password else None


def _post_asset_event(extra: dict[str, Any]) -> dict[str, Any]:
    """Post ``extra`` on the model's asset through the Airflow REST API; return the created event."""
    from canary.airflow_api import AirflowApiError
    from canary_airflow.run_notes import CanaryAirflowApiHook, api_client

    conn_id = CanaryAirflowApiHook.default_conn_name
    conn = _connection(conn_id)
    if conn is None or not conn.host:
        raise AirflowApiError(f"connection {conn_id!r} (the Airflow API URL and a user allowed to create "
                              "asset events) is not defined")
    client = api_client(conn, conn_id)
    name = asset_name(extra["model"])
    found = [a for a in client.request("GET", "/api/v2/assets", params={"name_pattern": name})["assets"]
             if a["name"] == name]
    if not found:
        raise AirflowApiError(f"no asset {name!r}: is canary_registry_events parsed with this model's spec?")
    return client.request("POST", "/api/v2/assets/events", json_body={"asset_id": found[0]["id"], "extra": extra})


async def read_bounded(request: Request, max_bytes: int = MAX_DELIVERY_BYTES) -> bytes | None:
    """Return the raw body, or None once it is over ``max_bytes`` (declared or streamed; the rest is not read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(*, secret: Callable[[], str | None] = _secret,
               models: Callable[[], Mapping[str, str]] = webhook_models,
               post_event: Callable[[dict[str, Any]], dict[str, Any]] = _post_asset_event,
               clock: Callable[[], float] = time.time, ui: bool = True) -> FastAPI:
    """Return the plugin's FastAPI app; the callables are the receiver's I/O (replaced in unit tests).

    :param ui: also serve the rollout pages (:mod:`canary_airflow.ui`, each route authenticated by Airflow);
        the webhook route itself is authenticated by its signature only.
    """
    # No /docs or /openapi.json: Airflow does not authenticate plugin apps, and those routes would be open.
    app = FastAPI(title="canary-rollouts: MLflow webhook receiver and rollout pages", docs_url=None,
                  redoc_url=None, openapi_url=None)
    if ui:
        from canary_airflow.ui import create_router

        app.include_router(create_router())

    @app.post(WEBHOOK_PATH)
    async def receive(request: Request) -> JSONResponse:
        body = await read_bounded(request)  # the raw bytes: the signature covers exactly these
        if body is None:
            return JSONResponse({"error": f"the delivery is over {MAX_DELIVERY_BYTES} bytes", "field": "body"},
                                status_code=413)
        reply = handle_delivery(dict(request.headers), body, secret=await run_in_threadpool(secret),
                                model_for=await run_in_threadpool(models), now_s=clock())
        if reply.extra is None:
            return JSONResponse(reply.body, status_code=reply.status)
        from canary.airflow_api import AirflowApiError

        try:
            event = await run_in_threadpool(post_event, reply.extra)
        except AirflowApiError as err:  # MLflow retries a 5xx delivery
            return JSONResponse({"error": f"could not post the asset event: {err}", **reply.body}, status_code=502)
        return JSONResponse({**reply.body, "asset_event_id": event.get("id")}, status_code=reply.status)

    return app


__all__ = ["MAX_DELIVERY_BYTES", "SECRET_CONN_ID", "URL_PREFIX", "WEBHOOK_PATH", "Reply", "create_app",
           "handle_delivery", "webhook_models"]
