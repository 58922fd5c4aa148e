"""The fault-injection proxy in front of a real serving layer: forward, fail, drop, rewrite, outages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from canary.backends.base import ConnInfo
from canary.backends.local_serving import LocalTrafficRouter
from canary.devstack.faultproxy import FaultProxy, FaultRule
from canary.errors import BackendError
from canary.serving.app import serving_in_thread

TOKEN = "proxy-test-token"


@pytest.fixture
def proxied(tmp_path: Path):
    with serving_in_thread(tmp_path / "m.db", TOKEN, seed=3) as url, FaultProxy(url).running() as proxy:
        direct = LocalTrafficRouter(ConnInfo(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), password=TOKEN),
                                    endpoint="churn")
        through = LocalTrafficRouter(ConnInfo(host="127.0.0.1", port=proxy.port, password=TOKEN), endpoint="churn",
                                     retries=0)
        direct.deploy("v1")
        direct.deploy("v2")
        direct.set_weights({"v1": 100})
        yield proxy, direct, through


def test_requests_are_forwarded_unchanged(proxied):
    proxy, direct, through = proxied
    through.set_weights({"v1": 90, "v2": 10})
    assert direct.get_weights() == {"v1": 90, "v2": 10}
    assert [e.status for e in proxy.forwarded("PUT", "/weights$")] == [200]
    assert requests.get(f"{proxy.url}/healthz", timeout=5).json() == {"status": "ok"}


def test_an_error_status_for_a_number_of_requests(proxied):
    proxy, direct, through = proxied
    proxy.add(FaultRule("weights 503 twice", method="PUT", path="/weights$", times=2))
    for _ in range(2):
        with pytest.raises(BackendError, match="HTTP 503"):
            through.set_weights({"v1": 50, "v2": 50})
    assert direct.get_weights() == {"v1": 100, "v2": 0}  # never reached the serving layer
    through.set_weights({"v1": 50, "v2": 50})
    assert direct.get_weights() == {"v1": 50, "v2": 50} and len(proxy.injected("weights 503 twice")) == 2


def test_a_dropped_connection_and_an_outage_that_ends(proxied):
    proxy, direct, through = proxied
    proxy.add(FaultRule("down", path="/admin/", action="drop", for_s=0.5))
    with pytest.raises(BackendError, match="failed after 1 attempts"):
        through.get_weights()
    time.sleep(0.6)
    assert through.get_weights() == {"v1": 100, "v2": 0}  # the outage is over


def test_a_router_that_applies_other_weights_than_it_was_given(proxied):
    proxy, direct, through = proxied

    def a_third(body: bytes) -> bytes:
        weights = json.loads(body)["weights"]
        weights["v2"] = max(1, weights["v2"] // 3)
        weights["v1"] = 100 - weights["v2"]
        return json.dumps({"weights": weights}).encode()

    proxy.add(FaultRule("ignores weights", method="PUT", path="/weights$", action="rewrite", rewrite=a_third))
    through.set_weights({"v1": 50, "v2": 50})  # the call succeeds: the fault is silent
    assert direct.get_weights() == {"v1": 84, "v2": 16}


def test_an_answer_of_the_proxy_s_own(proxied):
    proxy, _direct, _through = proxied
    proxy.add(FaultRule("nothing here", method="GET", path="/healthz$", action="respond", status=200,
                        response=b'{"status": "empty"}'))
    assert requests.get(f"{proxy.url}/healthz", timeout=5).json() == {"status": "empty"}


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="action must be status, respond, drop, delay or rewrite"):
        FaultRule("x", action="explode")
    with pytest.raises(ValueError, match="target must be http://host:port"):
        FaultProxy("ftp://nowhere")
