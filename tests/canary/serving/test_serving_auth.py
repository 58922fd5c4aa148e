"""Every route of the serving app that changes anything, or reads admin state, refuses a caller without its
token; tokens are compared in constant time; bodies are bounded.

The routes are enumerated from the app itself: a new mutating route without auth makes these tests fail
until it is protected (or added to PUBLIC with a reason).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from canary.serving import app as serving_app
from canary.serving.app import MAX_REQUEST_BYTES, create_app
from canary.serving.feedback import MAX_BODY_BYTES

ADMIN, FEEDBACK = "admin-token-for-auth-tests", "feedback-token-for-auth-tests"
#: Routes open by design: predictions (the product's public API), metrics scraping and the health check.
PUBLIC = {("POST", "/v1/endpoints/{endpoint}/predict"), ("GET", "/metrics"), ("GET", "/healthz")}
#: The route the feedback token opens (and nothing else).
FEEDBACK_ROUTES = {("POST", "/v1/endpoints/{endpoint}/feedback")}


def routes() -> list[tuple[str, str]]:
    app = create_app(":memory:", ADMIN, feedback_token=FEEDBACK)
    found = [(method, route.path) for route in app.routes if isinstance(route, APIRoute)
             for method in sorted(route.methods)]
    assert found, "the app has no routes?"
    return found


ROUTES = routes()
#: What must be protected: every non-GET route and every admin route, whatever its method.
PROTECTED = [(m, p) for m, p in ROUTES if (m not in ("GET", "HEAD") or p.startswith("/admin")) and (m, p) not in PUBLIC]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    app = create_app(tmp_path_factory.mktemp("auth") / "metrics.db", ADMIN, feedback_token=FEEDBACK,
                     deployments={"x": ["v1"]})
    with TestClient(app) as c:
        yield c


def test_the_inventory_is_what_the_docstring_lists():
    assert set(PUBLIC) <= set(ROUTES)
    assert {p for _m, p in PROTECTED} >= {"/admin/state", "/admin/flush", "/v1/endpoints/{endpoint}/feedback"}
    # Nothing mutating is left out: everything not protected is a GET outside /admin, or public by design.
    assert {r for r in ROUTES if r not in PROTECTED} <= PUBLIC | {(m, p) for m, p in ROUTES
                                                                 if m in ("GET", "HEAD") and not p.startswith("/admin")}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {ADMIN}", f"Bearer {ADMIN}x",
                                           f"bearer {ADMIN}", "Bearer "], ids=["none", "wrong", "basic", "longer",
                                                                              "lowercase", "empty"])
def test_every_protected_route_refuses_without_its_token(client, method, path, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    # A valid-looking body: the refusal must come from the token, not from validation.
    reply = client.request(method, concrete(path), headers=headers, json={"weights": {"v1": 100}})
    assert reply.status_code == 401, (method, path, reply.status_code, reply.text)
    assert reply.headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_each_token_opens_only_its_own_routes(client, method, path):
    other = ADMIN if (method, path) in FEEDBACK_ROUTES else FEEDBACK
    reply = client.request(method, concrete(path), headers={"Authorization": f"Bearer {other}"}, json={})
    assert reply.status_code == 401, (method, path, reply.text)


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_the_right_token_gets_past_auth(client, method, path):
    token = FEEDBACK if (method, path) in FEEDBACK_ROUTES else ADMIN
    reply = client.request(method, concrete(path), headers={"Authorization": f"Bearer {token}"}, json={})
    assert reply.status_code != 401, (method, path, reply.text)


def test_tokens_are_compared_in_constant_time(monkeypatch):
    calls = []
    real = serving_app.secrets.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serving_app.secrets, "compare_digest", spy)
    assert serving_app._bearer_matches(f"Bearer {ADMIN}", ADMIN)
    assert not serving_app._bearer_matches("Bearer nope", ADMIN)
    assert not serving_app._bearer_matches(None, ADMIN)
    assert len(calls) == 3


@pytest.mark.parametrize(("path", "limit"), [("/v1/endpoints/x/predict", MAX_REQUEST_BYTES),
                                             ("/admin/flush", MAX_REQUEST_BYTES),
                                             ("/v1/endpoints/x/feedback", MAX_BODY_BYTES)])
def test_bodies_over_the_limit_are_refused_with_413(client, path, limit):
    headers = {"Authorization": f"Bearer {FEEDBACK if 'feedback' in path else ADMIN}",
               "Content-Type": "application/json"}
    reply = client.post(path, content=b" " * (limit + 1), headers=headers)
    assert reply.status_code == 413 and str(limit) in reply.json()["detail"], reply.text


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(client):
    def chunks():
        for _ in range(MAX_REQUEST_BYTES // 1024 + 2):
            yield b" " * 1024

    reply = client.put("/admin/faults/v9", content=chunks(), headers={"Authorization": f"Bearer {ADMIN}"})
    assert reply.status_code == 413 and str(MAX_REQUEST_BYTES) in reply.json()["detail"], reply.text


def test_a_prediction_of_normal_size_still_works(client):
    reply = client.post("/v1/endpoints/x/predict", json={"features": [0.1] * 8, "attributes": {"device": "ios"}})
    assert reply.status_code in (200, 500), reply.text  # 500: an injected error (none configured here)
