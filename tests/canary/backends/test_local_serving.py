"""LocalTrafficRouter against the real serving layer (and a stdlib server for retry behaviour)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from canary.backends import TrafficRouter, build_backend
from canary.backends.base import ConnInfo
from canary.backends.local_serving import LocalTrafficRouter
from canary.errors import BackendError


def test_factory_builds_a_traffic_router(serving_conn: ConnInfo) -> None:
    router = build_backend("serving", "local", serving_conn, endpoint="churn")
    assert isinstance(router, LocalTrafficRouter)
    assert isinstance(router, TrafficRouter)


def test_deploy_split_mirror_and_remove(router: LocalTrafficRouter) -> None:
    router.deploy("v1")
    router.deploy("v1")
    assert router.get_weights() == {"v1": 0}
    router.deploy("v2")
    router.set_weights({"v1": 100})
    router.set_weights({"v1": 90, "v2": 10})
    assert router.get_weights() == {"v1": 90, "v2": 10}
    router.set_mirror("v2", 50)
    assert router.state()["mirror"] == {"version": "v2", "percent": 50}
    router.set_mirror(None)
    router.set_mirror(None)
    assert router.state()["mirror"] is None
    router.set_weights({"v1": 100, "v2": 0})
    router.remove("v2")
    router.remove("v2")
    assert router.get_weights() == {"v1": 100}


def test_rejections_carry_status_request_and_body(router: LocalTrafficRouter, serving_url: str) -> None:
    router.deploy("v1")
    router.deploy("v2")
    with pytest.raises(BackendError) as err:
        router.set_weights({"v1": 50, "v2": 45})
    assert err.value.status == 422
    assert f"PUT {serving_url}/admin/endpoints/churn/weights" in str(err.value)
    assert "weights: must sum to 100, got 95" in str(err.value)
    router.set_weights({"v1": 50, "v2": 50})
    with pytest.raises(BackendError) as err:
        router.remove("v2")
    assert err.value.status == 409


def test_unknown_endpoint_is_an_error(serving_conn: ConnInfo) -> None:
    with pytest.raises(BackendError) as err:
        LocalTrafficRouter(serving_conn, endpoint="nope").get_weights()
    assert err.value.status == 404


def test_wrong_token_is_401_and_never_echoed(serving_conn: ConnInfo) -> None:
    conn = ConnInfo(host=serving_conn.host, port=serving_conn.port, password="not-the-token")
    with pytest.raises(BackendError) as err:
        LocalTrafficRouter(conn, endpoint="churn").deploy("v1")
    assert err.value.status == 401
    assert "not-the-token" not in str(err.value)


def test_unreachable_server_fails_after_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    router = LocalTrafficRouter(ConnInfo(host="127.0.0.1", port=port, password="t"), endpoint="churn",
                                retries=2, backoff_s=0.01)
    with pytest.raises(BackendError, match="failed after 3 attempts") as err:
        router.get_weights()
    assert err.value.status is None
    assert isinstance(err.value.__cause__, Exception)


class _FlakyAdmin(BaseHTTPRequestHandler):
    """Answer the first ``failures`` requests with 503, then with an endpoint state."""

    failures = 0
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        failing = type(self).seen <= type(self).failures
        body = b"overloaded" if failing else json.dumps({"weights": {"v1": 100}}).encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[ThreadingHTTPServer, type[_FlakyAdmin]]]:
    handler = type("Handler", (_FlakyAdmin,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("failures", "succeeds"), [(2, True), (5, False)])
def test_5xx_is_retried_with_backoff(flaky: tuple[ThreadingHTTPServer, type[_FlakyAdmin]], failures: int,
                                     succeeds: bool) -> None:
    server, handler = flaky
    handler.failures = failures
    router = LocalTrafficRouter(ConnInfo(host="127.0.0.1", port=server.server_address[1]), endpoint="churn",
                                retries=2, backoff_s=0.01)
    if succeeds:
        assert router.get_weights() == {"v1": 100}
    else:
        with pytest.raises(BackendError, match="HTTP 503: overloaded") as err:
            router.get_weights()
        assert err.value.status == 503
    assert handler.seen == 3
