"""Late feedback over real HTTP: labels and outcomes joined to the serving version and segment, and every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from serving_harness import TOKEN, Served

from canary.serving.app import serving_in_thread
from canary.serving.feedback import MAX_BODY_BYTES, RateLimiter, read_feedback

FEEDBACK_TOKEN = "test-feedback-token"


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Served]:
    """A serving layer with its own feedback token, a 1-hour retention and a small rate limit."""
    db_path = tmp_path / "metrics.db"
    with serving_in_thread(db_path, TOKEN, seed=7, feedback_token=FEEDBACK_TOKEN, feedback_retention_s=3600.0,
                           feedback_rate_per_s=5.0, feedback_burst=30) as url:
        served = Served(url=url, db_path=db_path)
        served.setup("churn", {"v1": 50, "v2": 50})
        yield served


def send(served: Served, body: Any, *, token: str | None = FEEDBACK_TOKEN, endpoint: str = "churn",
         raw: bytes | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return requests.post(f"{served.url}/v1/endpoints/{endpoint}/feedback", data=raw, headers=headers, timeout=10)
    return requests.post(f"{served.url}/v1/endpoints/{endpoint}/feedback", json=body, headers=headers, timeout=10)


def test_labels_and_outcomes_are_joined_to_the_version_and_segment_that_served(fed: Served) -> None:
    answers = fed.predict_many("churn", [f"user-{i}" for i in range(20)])
    by_version = {body["version"] for _status, body in answers}
    assert by_version == {"v1", "v2"}  # both versions served some
    for i, (_status, body) in enumerate(answers[:10]):
        # Right after the answer (before the store's batch is written): the feedback still finds it.
        reply = send(fed, {"request_id": body["request_id"], "label": i % 2, "outcome": "conversion", "value": 1.0})
        assert reply.status_code == 200, reply.text
        stored = reply.json()["stored"]
        assert [(s["kind"], s["name"], s["value"]) for s in stored] == [("label", "label", i % 2),
                                                                      ("outcome", "conversion", 1.0)]
        assert {s["version"] for s in stored} == {body["version"]}
    served_by = {body["request_id"]: body["version"] for _s, body in answers}
    rows = read_feedback(fed.db_path, "churn")
    assert len(rows) == 20 and all(version == served_by[rid] for rid, version, *_ in rows)
    segments = dict(fed.rows("SELECT request_id, segment FROM requests WHERE mirrored = 0"))
    assert all(segment == segments[rid] for rid, _v, segment, *_ in rows)


def test_feedback_on_an_older_request_read_back_from_the_store(tmp_path: Path) -> None:
    """A request answered before a restart is found in the store (no longer in memory)."""
    db_path = tmp_path / "metrics.db"
    with serving_in_thread(db_path, TOKEN, seed=7, deployments={"churn": ["v1"]}) as url:
        served = Served(url=url, db_path=db_path)
        ((_status, body),) = served.predict_many("churn", ["u1"])
        served.flush()
    with serving_in_thread(db_path, TOKEN, seed=7, deployments={"churn": ["v1"]}) as url:
        reply = send(Served(url=url, db_path=db_path), {"request_id": body["request_id"], "label": 1}, token=TOKEN)
        assert reply.status_code == 200 and reply.json()["stored"][0]["version"] == "v1", reply.text


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong", 401), (TOKEN, 401)])
def test_feedback_needs_its_own_token(fed: Served, token: str | None, status: int) -> None:
    ((_s, body),) = fed.predict_many("churn", ["u1"])
    reply = send(fed, {"request_id": body["request_id"], "label": 1}, token=token)
    assert reply.status_code == status and "feedback API: missing or wrong bearer token" in reply.json()["detail"]
    assert read_feedback(fed.db_path, "churn") == []


@pytest.mark.parametrize(("body", "detail"), [
    ({"label": 1}, "request_id: Field required"),
    ({"request_id": "x", "label": 2}, "label: Input should be less than or equal to 1"),
    ({"request_id": "x"}, "give a label, or an outcome with its value (or both)"),
    ({"request_id": "x", "outcome": "conversion"}, "outcome and value go together"),
    ({"request_id": "x", "outcome": "no spaces", "value": 1}, "outcome: String should match pattern"),
    ({"request_id": "x", "label": 1, "extra": True}, "extra: Extra inputs are not permitted"),
])
def test_malformed_feedback_is_422_naming_the_field(fed: Served, body: dict[str, Any], detail: str) -> None:
    reply = send(fed, body)
    assert reply.status_code == 422 and detail in reply.json()["detail"], reply.text


def test_unknown_duplicate_mirrored_and_oversized_feedback_is_refused(fed: Served) -> None:
    assert send(fed, {"request_id": "nope", "label": 1}).status_code == 404
    ((_s, body),) = fed.predict_many("churn", ["u1"])
    rid = body["request_id"]
    assert send(fed, {"request_id": rid, "label": 1}, endpoint="other").status_code == 404  # another endpoint
    assert send(fed, {"request_id": rid, "label": 1}).status_code == 200
    again = send(fed, {"request_id": rid, "label": 0, "outcome": "click", "value": 1})
    assert again.status_code == 409 and "nothing of this body was stored" in again.json()["detail"]
    assert [r[3:] for r in read_feedback(fed.db_path, "churn")] == [("label", "label", 1.0)]  # no half-write
    assert send(fed, {"request_id": rid, "outcome": "click", "value": 1}).status_code == 200  # another name: fine
    big = send(fed, None, raw=b'{"request_id": "' + b"x" * MAX_BODY_BYTES + b'", "label": 1}')
    assert big.status_code == 413 and f"at most {MAX_BODY_BYTES}" in big.json()["detail"]


def test_feedback_past_the_retention_window_is_410(tmp_path: Path) -> None:
    db_path = tmp_path / "metrics.db"
    with serving_in_thread(db_path, TOKEN, seed=7, deployments={"churn": ["v1"]}, feedback_retention_s=0.0) as url:
        served = Served(url=url, db_path=db_path)
        ((_s, body),) = served.predict_many("churn", ["u1"])
        reply = send(served, {"request_id": body["request_id"], "label": 1}, token=TOKEN)
        assert reply.status_code == 410 and "beyond the feedback retention of" in reply.json()["detail"], reply.text


def test_a_burst_above_the_rate_limit_gets_429_with_retry_after(fed: Served) -> None:
    replies = [send(fed, {"request_id": "nope", "label": 1}) for _ in range(40)]
    statuses = [r.status_code for r in replies]
    assert statuses.count(429) >= 5 and set(statuses) == {404, 429}, statuses  # burst 30, then 5/s
    limited = next(r for r in replies if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and "requests/s" in limited.json()["detail"]


def test_the_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take() == 0.0 and limiter.take() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(0.0, 1)


def test_feedback_is_counted_in_the_prometheus_exposition(fed: Served) -> None:
    answers = fed.predict_many("churn", ["u1", "u2", "u3"])
    for i, (_s, body) in enumerate(answers):
        assert send(fed, {"request_id": body["request_id"], "label": int(i < 2)}).status_code == 200
    text = requests.get(f"{fed.url}/metrics", timeout=5).text
    counted = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("canary_feedback_total{") and 'kind="label"' in line)
    positives = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("canary_feedback_value_sum{") and 'name="label"' in line)
    assert (counted, positives) == (3, 2.0), text[-800:]
    versions = {body["version"] for _s, body in answers}
    assert all(f'version="{v}"' in text for v in versions) and 'segment="' in text
