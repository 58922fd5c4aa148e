"""Fixtures for the local backends: a real serving layer in a thread, with a temporary metrics store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from canary.backends.base import ConnInfo
from canary.backends.local_serving import LocalTrafficRouter
from canary.serving.app import serving_in_thread

TOKEN = "backend-test-token"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "metrics.db"


@pytest.fixture
def serving_url(store_path: Path) -> Iterator[str]:
    with serving_in_thread(store_path, TOKEN, seed=11) as url:
        yield url


@pytest.fixture
def serving_conn(serving_url: str) -> ConnInfo:
    url = urlsplit(serving_url)
    return ConnInfo(conn_id="canary_serving_test", host=url.hostname, port=url.port, password=TOKEN)


@pytest.fixture
def router(serving_conn: ConnInfo) -> LocalTrafficRouter:
    return LocalTrafficRouter(serving_conn, endpoint="churn")


@pytest.fixture
def flush(serving_url: str) -> Callable[[], None]:
    """Return a function that waits until every answer so far is in the store."""

    def flush() -> None:
        requests.post(f"{serving_url}/admin/flush", headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10).raise_for_status()

    return flush


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A real moto server in a thread on a free loopback port (AWS APIs for the SageMaker/CloudWatch tests)."""
    from moto_harness import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def aws_conn(moto_url: str) -> Iterator[ConnInfo]:
    """An AWS connection to the moto server, reset to an empty account for each test."""
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    yield ConnInfo(conn_id="aws_moto", login="testing", password="testing",
                   extra={"region_name": "us-east-1", "endpoint_url": moto_url})
