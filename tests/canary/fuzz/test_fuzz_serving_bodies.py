"""Fuzz the serving layer's predict and feedback bodies: arbitrary JSON is answered, or a 4xx naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fuzz_inputs import FUZZ_FEW, GARBAGE, mutated
from hypothesis import given
from hypothesis import strategies as st

from canary.serving.app import create_app
from canary.serving.model import N_FEATURES

TOKEN = "fuzz-token"
PREDICT = {"features": [0.5] * N_FEATURES, "attributes": {"device": "ios"}}
FEEDBACK = {"request_id": "r-1", "label": 1, "outcome": "conversion", "value": 1.0}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    db_path = Path(tmp_path_factory.mktemp("serving")) / "metrics.db"
    app = create_app(db_path, TOKEN, deployments={"e": ["v1"]}, seed=1, jitter_ms=(0.0, 0.0),
                     feedback_rate_per_s=1e6, feedback_burst=10**6)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _post(client: TestClient, route: str, body: object) -> None:
    try:
        content = json.dumps(body).encode()
    except (ValueError, TypeError, OverflowError):
        content = repr(body).encode()
    resp = client.post(f"/v1/endpoints/e/{route}", content=content, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        detail = resp.json()["detail"]
        assert isinstance(detail, str) and detail, resp.text


@FUZZ_FEW
@given(body=mutated(PREDICT) | GARBAGE)
def test_predict_bodies_are_answered_or_refused_naming_the_field(client, body):
    _post(client, "predict", body)


@FUZZ_FEW
@given(body=mutated(FEEDBACK) | GARBAGE | st.just({"request_id": "x" * 64, "label": 0}))
def test_feedback_bodies_are_stored_or_refused_naming_the_field(client, body):
    _post(client, "feedback", body)
