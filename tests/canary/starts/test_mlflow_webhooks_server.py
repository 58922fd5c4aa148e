"""MLflow webhook deliveries from a real MLflow server: signed as the check expects, mapped to asset event extras.

The server (SQLite store, loopback port) is allowed to call an http URL on a private address, which
its defaults refuse; a small receiver in the test records what it sends.
"""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from mlflow_harness import MlflowServer, mlflow_servers, require_mlflow_server

from canary.backends import build_backend
from canary.devstack.processes import free_port
from canary.starts.mlflow_webhooks import WebhookRefusedError, event_extra, verify_delivery

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = "whsec-" + uuid.uuid4().hex


class Receiver:
    """Record every POST (headers, raw body); answer 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.deliveries.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/mlflow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout_s: float = 60.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.time() + timeout_s
        while time.time() < deadline and len(self.deliveries) < count:
            time.sleep(0.2)
        assert len(self.deliveries) >= count, f"{len(self.deliveries)} of {count} deliveries after {timeout_s}s"
        return self.deliveries


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[MlflowServer]:
    env = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true"}
    with mlflow_servers(require_mlflow_server(), tmp_path_factory.mktemp("mlflow_webhooks"), env=env) as [srv]:
        yield srv


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()


def test_signed_deliveries_of_new_versions_and_alias_moves_become_registry_events(server, receiver):
    from mlflow import MlflowClient

    model = f"wh-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    client.create_webhook(name=f"canary-{model}", url=receiver.url, secret=SECRET,
                          events=["model_version.created", "model_version_alias.created"])
    registry = build_backend("registry", "mlflow", server.conn())
    version = registry.register_version(model, f"s3://canary-test/{model}/1")
    registry.set_alias(model, "challenger", version)
    deliveries = receiver.wait(2)
    extras = []
    for headers, body in deliveries:
        verify_delivery(SECRET, headers, body, now_s=time.time())
        extras.append(event_extra(body, model_for={model: "churn"}))
    assert sorted(extras, key=lambda e: e["cause"]) == [
        {"model": "churn", "version": version, "cause": "alias_moved",
         "detail": f"MLflow webhook: alias 'challenger' set to version {version} in '{model}'"},
        {"model": "churn", "version": version, "cause": "new_version",
         "detail": f"MLflow webhook: version {version} created in '{model}'"},
    ]
    headers, body = deliveries[0]
    with pytest.raises(WebhookRefusedError, match="X-MLflow-Signature: does not match the body"):
        verify_delivery("not-the-secret", headers, body, now_s=time.time())
    with pytest.raises(WebhookRefusedError, match="X-MLflow-Timestamp: delivery is"):
        verify_delivery(SECRET, headers, body, now_s=time.time() + 3600)
