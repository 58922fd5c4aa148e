"""The serving layer over real HTTP: auth, admin validation, sticky splits, faults, mirroring, /metrics."""

from __future__ import annotations

import math
import re
import statistics
import time

import pytest
import requests
from serving_harness import FEATURES, Served

from canary.serving.state import Faults


def test_healthz_needs_no_token(served: Served) -> None:
    response = requests.get(f"{served.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_admin_api_rejects_missing_or_wrong_token(served: Served, token: str | None) -> None:
    response = served.admin("GET", "/state", token=token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in response.json()["detail"]
    assert served.admin("PUT", "/endpoints/churn/versions/v1", token=token).status_code == 401
    assert served.admin("GET", "/state").json() == {"endpoints": {}, "faults": {}}


def test_deploy_is_idempotent_and_starts_at_zero(served: Served) -> None:
    for _ in range(2):
        assert served.admin("PUT", "/endpoints/churn/versions/v1").status_code == 200
    state = served.admin("GET", "/endpoints/churn").json()
    assert state == {"endpoint": "churn", "versions": ["v1"], "weights": {"v1": 0}, "mirror": None,
                     "targeting": None}
    [(status, body)] = served.predict_many("churn", ["u1"])
    assert status == 503
    assert "no version with traffic" in body["detail"]


def test_unknown_endpoint_and_bad_features(served: Served) -> None:
    [(status, body)] = served.predict_many("nope", ["u1"])
    assert (status, body["detail"]) == (404, "endpoint 'nope' does not exist (known: none)")
    served.setup("churn", {"v1": 100})
    [(status, body)] = served.predict_many("churn", ["u1"], features=[1.0, 2.0])
    assert status == 422
    assert body["detail"].startswith("features: ")
    assert served.admin("GET", "/endpoints/nope").status_code == 404


@pytest.mark.parametrize(("weights", "detail"), [
    ({"v1": 50, "v2": 45}, "weights: must sum to 100, got 95"),
    ({"v1": 150, "v2": -50}, "weights.v1: must be an integer in 0..100, got 150"),
    ({"v1": 90, "v3": 10}, "weights.v3: not deployed on endpoint 'churn' (deployed: v1, v2)"),
    ({"v1": "half", "v2": 50}, "weights.v1: Input should be a valid integer, unable to parse string as an integer"),
])
def test_weight_validation_names_the_field(served: Served, weights: dict[str, object], detail: str) -> None:
    served.setup("churn", {"v1": 100, "v2": 0})
    response = served.admin("PUT", "/endpoints/churn/weights", json={"weights": weights})
    assert response.status_code == 422
    assert response.json() == {"detail": detail}
    assert served.admin("GET", "/endpoints/churn").json()["weights"] == {"v1": 100, "v2": 0}


def test_weights_are_a_full_mapping(served: Served) -> None:
    served.setup("churn", {"v1": 60, "v2": 40})
    response = served.admin("PUT", "/endpoints/churn/weights", json={"weights": {"v2": 100}})
    assert response.json()["weights"] == {"v1": 0, "v2": 100}


def test_split_is_sticky_per_user_and_follows_weights(served: Served) -> None:
    served.setup("churn", {"v1": 70, "v2": 30})
    users = [f"user-{i}" for i in range(2000)]
    first = {u: body["version"] for u, (status, body) in zip(users, served.predict_many("churn", users), strict=True)
             if status == 200}
    assert len(first) == len(users)
    share_v2 = sum(v == "v2" for v in first.values()) / len(users)
    assert abs(share_v2 - 0.30) < 0.03
    again = users[:300]
    assert [body["version"] for _, body in served.predict_many("churn", again)] == [first[u] for u in again]
    # Raising v2's weight only moves users towards v2: nobody already on v2 goes back.
    served.setup("churn", {"v1": 50, "v2": 50})
    later = {u: body["version"] for u, (_, body) in zip(users, served.predict_many("churn", users), strict=True)}
    assert all(later[u] == "v2" for u, v in first.items() if v == "v2")
    assert abs(sum(v == "v2" for v in later.values()) / len(users) - 0.50) < 0.03


def test_error_rate_fault(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    users = [f"u{i}" for i in range(300)]
    served.admin("PUT", "/faults/v1", json={"error_rate": 1.0}).raise_for_status()
    answers = served.predict_many("churn", users[:50])
    assert {status for status, _ in answers} == {500}
    assert answers[0][1]["version"] == "v1"
    served.admin("PUT", "/faults/v1", json={"error_rate": 0.3}).raise_for_status()
    share = sum(status == 500 for status, _ in served.predict_many("churn", users)) / len(users)
    assert 0.2 < share < 0.4
    served.admin("DELETE", "/faults/v1").raise_for_status()
    assert {status for status, _ in served.predict_many("churn", users[:50])} == {200}
    assert served.admin("GET", "/state").json()["faults"] == {}


def test_faults_can_be_set_before_the_version_is_deployed(served: Served) -> None:
    response = served.admin("PUT", "/faults/v9", json={"error_rate": 1.0})
    assert response.json()["faults"]["error_rate"] == 1.0
    served.setup("churn", {"v9": 100})
    assert {status for status, _ in served.predict_many("churn", ["a", "b", "c"])} == {500}


def test_invalid_fault_is_rejected_with_the_field(served: Served) -> None:
    response = served.admin("PUT", "/faults/v1", json={"error_rate": 2})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("error_rate: ")
    response = served.admin("PUT", "/faults/v1", json={"latency": 5})
    assert response.json()["detail"].startswith("latency: Extra inputs")


def test_attributes_are_recorded_and_a_fault_can_be_confined_to_them(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    served.admin("PUT", "/faults/v1", json={"error_rate": 1.0, "when": {"device": "android"}}).raise_for_status()
    android = served.predict_many("churn", ["a1", "a2"], attributes={"device": "android", "region": "eu-west"})
    ios = served.predict_many("churn", ["i1", "i2"], attributes={"device": "ios"})
    bare = served.predict_many("churn", ["b1"])
    assert [s for s, _ in android] == [500, 500] and [s for s, _ in ios + bare] == [200, 200, 200]
    rows = served.rows("SELECT json_extract(attributes, '$.device'), error FROM requests ORDER BY id")
    assert sorted(rows, key=str) == sorted([("android", 1), ("android", 1), ("ios", 0), ("ios", 0), (None, 0)], key=str)
    text = requests.get(f"{served.url}/metrics", timeout=5).text  # the attributes are labels too
    assert _sample(text, "canary_request_errors_total", version="v1", device="android", region="eu-west") == 2
    assert _sample(text, "canary_requests_total", version="v1", device="ios") == 2
    # Several faults of one version apply together, each where its `when` matches.
    both = [{"error_rate": 1.0, "when": {"device": "android"}}, {"latency_ms": 30}]
    assert served.admin("PUT", "/faults/v1", json=both).json()["faults"] == [
        {**Faults(**f).model_dump()} for f in both]
    started = time.perf_counter()
    assert [s for s, _ in served.predict_many("churn", ["i3"], attributes={"device": "ios"})] == [200]
    assert time.perf_counter() - started >= 0.03
    assert [s for s, _ in served.predict_many("churn", ["a3"], attributes={"device": "android"})] == [500]
    bad = served.admin("PUT", "/faults/v1", json=[{"error_rate": 0.1}, {"error_rate": 2}])
    assert bad.status_code == 422 and bad.json()["detail"].startswith("1.error_rate: ")
    # The segment derived from X-User-Id is an attribute to the faults too.
    served.admin("PUT", "/faults/v1", json={"error_rate": 1.0, "when": {"segment": "nobody"}}).raise_for_status()
    assert [s for s, _ in served.predict_many("churn", ["a1"], attributes={"device": "android"})] == [200]


@pytest.mark.parametrize(("attributes", "detail"), [
    ({"Device": "ios"}, "attributes.Device.[key]: String should match pattern"),
    ({"device": ""}, "attributes.device: String should have at least 1 character"),
    ({"device": "x" * 65}, "attributes.device: String should have at most 64 characters"),
    ({f"a{i}": "v" for i in range(9)}, "attributes: Dictionary should have at most 8 items"),
    ({"segment": "new"}, "attributes: Value error, 'segment' is reserved: the serving layer derives it"),
    (["ios"], "attributes: Input should be a valid dictionary"),
])
def test_bad_attributes_are_refused_naming_the_field(served: Served, attributes, detail: str) -> None:
    served.setup("churn", {"v1": 100})
    [(status, body)] = served.predict_many("churn", ["u1"], attributes=attributes)
    assert status == 422 and body["detail"].startswith(detail), body


def test_latency_fault_delays_every_answer(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    served.admin("PUT", "/faults/v1", json={"latency_ms": 60}).raise_for_status()
    started = time.perf_counter()
    served.predict_many("churn", ["u1"], workers=1)
    assert time.perf_counter() - started >= 0.06
    served.predict_many("churn", [f"u{i}" for i in range(40)])
    latencies = [ms for (ms,) in served.rows("SELECT latency_ms FROM requests")]
    assert len(latencies) == 41
    assert min(latencies) >= 60.0


def test_tail_latency_fault_slows_only_a_fraction(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    served.admin("PUT", "/faults/v1", json={"tail_latency_ms": 100, "tail_fraction": 0.25}).raise_for_status()
    served.predict_many("churn", [f"u{i}" for i in range(300)], workers=32)
    latencies = [ms for (ms,) in served.rows("SELECT latency_ms FROM requests")]
    assert 0.15 < sum(ms >= 100 for ms in latencies) / len(latencies) < 0.35
    assert statistics.median(latencies) < 50


def test_prediction_shift_moves_scores(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    [(_, before)] = served.predict_many("churn", ["u1"])
    served.admin("PUT", "/faults/v1", json={"prediction_shift": 0.4}).raise_for_status()
    [(_, shifted)] = served.predict_many("churn", ["u1"], features=FEATURES)
    assert shifted["score"] == pytest.approx(min(1.0, before["score"] + 0.4))
    assert shifted["label"] == int(shifted["score"] >= 0.5)
    served.admin("PUT", "/faults/v1", json={"prediction_shift": -1.0}).raise_for_status()
    [(_, floored)] = served.predict_many("churn", ["u1"])
    assert (floored["score"], floored["label"]) == (0.0, 0)


def test_score_out_of_range_fault_breaks_a_share_of_scores_but_not_labels(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    [(_, healthy)] = served.predict_many("churn", ["u1"])
    served.admin("PUT", "/faults/v1", json={"score_out_of_range": 0.5}).raise_for_status()
    answers = [body for _, body in served.predict_many("churn", [f"u{i}" for i in range(200)])]
    broken = [a for a in answers if a["score"] > 1.0]
    assert 60 < len(broken) < 140
    assert all(a["score"] == pytest.approx(healthy["score"] + 1.0) and a["label"] == healthy["label"]
               for a in broken)  # same features: the label is the healthy one
    assert all(a["score"] == pytest.approx(healthy["score"]) for a in answers if a["score"] <= 1.0)


def test_kpi_drop_removes_kpi_events(served: Served) -> None:
    served.setup("churn", {"v1": 50, "v2": 50})
    served.admin("PUT", "/faults/v2", json={"kpi_drop": 1.0}).raise_for_status()
    served.predict_many("churn", [f"u{i}" for i in range(800)], workers=32)
    rows = dict(served.rows("SELECT version, SUM(kpi_event) FROM requests GROUP BY version"))
    assert rows["v2"] == 0
    assert rows["v1"] > 10  # about 0.1 of ~400 requests


def test_every_request_is_recorded(served: Served) -> None:
    served.setup("churn", {"v1": 100})
    answers = served.predict_many("churn", ["new-or-returning", "someone-else"])
    rows = served.rows("SELECT endpoint, version, status, error, score, label, segment, request_id, mirrored, "
                       "log_latency_ms, latency_ms, ts FROM requests ORDER BY id")
    assert sorted(r[7] for r in rows) == sorted(body["request_id"] for _, body in answers)
    for endpoint, version, status, error, score, label, segment, _, mirrored, log_ms, ms, ts in rows:
        assert (endpoint, version, status, error, mirrored) == ("churn", "v1", 200, 0, 0)
        assert 0.0 <= score <= 1.0 and label in (0, 1)
        assert segment in ("new", "returning")
        assert log_ms == pytest.approx(math.log(ms))
        assert abs(ts - time.time()) < 60


def test_mirror_answers_are_recorded_as_pairs_and_never_served(served: Served) -> None:
    served.setup("churn", {"v1": 100, "v2": 0})
    assert served.admin("PUT", "/endpoints/churn/mirror", json={"version": "v3"}).status_code == 422
    mirror = served.admin("PUT", "/endpoints/churn/mirror", json={"version": "v2", "percent": 100}).json()["mirror"]
    assert mirror == {"version": "v2", "percent": 100}
    answers = served.predict_many("churn", [f"u{i}" for i in range(60)])
    assert {body["version"] for _, body in answers} == {"v1"}
    pairs = served.rows("SELECT s.request_id, s.ts, c.ts, c.score IS NOT NULL FROM requests s "
                        "JOIN requests c ON c.request_id = s.request_id "
                        "WHERE s.version = 'v1' AND s.mirrored = 0 AND c.version = 'v2' AND c.mirrored = 1")
    assert sorted(p[0] for p in pairs) == sorted(body["request_id"] for _, body in answers)
    assert all(s_ts == c_ts and answered for _, s_ts, c_ts, answered in pairs)

    served.admin("PUT", "/endpoints/churn/mirror", json={"version": "v2", "percent": 0}).raise_for_status()
    served.predict_many("churn", [f"u{i}" for i in range(20)])
    assert served.rows("SELECT COUNT(*) FROM requests WHERE mirrored = 1") == [(60,)]
    assert served.admin("DELETE", "/endpoints/churn/versions/v2").status_code == 409
    assert served.admin("DELETE", "/endpoints/churn/mirror").json()["mirror"] is None


def test_remove_refuses_a_version_with_traffic(served: Served) -> None:
    served.setup("churn", {"v1": 80, "v2": 20})
    response = served.admin("DELETE", "/endpoints/churn/versions/v2")
    assert response.status_code == 409
    assert response.json()["detail"].startswith("version 'v2' still holds 20% of endpoint 'churn'")
    served.setup("churn", {"v1": 100, "v2": 0})
    for _ in range(2):
        response = served.admin("DELETE", "/endpoints/churn/versions/v2")
        assert response.status_code == 200
        assert response.json()["versions"] == ["v1"]


def _sample(text: str, name: str, **labels: str) -> float:
    """Return the sum of the samples of ``name`` whose labels include ``labels`` (at least one sample)."""
    found = []
    for body, value in re.findall(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, flags=re.M):
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(value))
    assert found, f"no {name} sample with {labels}"
    return sum(found)


def test_metrics_exposition_has_per_version_series(served: Served) -> None:
    served.setup("churn", {"v1": 100, "v2": 0})
    served.admin("PUT", "/endpoints/churn/mirror", json={"version": "v2"}).raise_for_status()
    served.admin("PUT", "/faults/v1", json={"error_rate": 0.5}).raise_for_status()
    answers = served.predict_many("churn", [f"u{i}" for i in range(100)])
    served.flush()
    errors = sum(status == 500 for status, _ in answers)
    response = requests.get(f"{served.url}/metrics", timeout=5)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    served_v1 = {"endpoint": "churn", "version": "v1", "mirrored": "false"}
    assert _sample(text, "canary_requests_total", **served_v1) == 100
    assert _sample(text, "canary_request_errors_total", **served_v1) == errors
    assert _sample(text, "canary_requests_total", endpoint="churn", version="v2", mirrored="true") == 100
    assert 'version="v2",mirrored="false"' not in text
    assert _sample(text, "canary_request_latency_ms_bucket", **served_v1, le="+Inf") == 100
    assert _sample(text, "canary_request_latency_ms_count", **served_v1) == 100
    assert _sample(text, "canary_request_latency_ms_bucket", **served_v1, le="5000.0") == 100
    assert _sample(text, "canary_request_latency_ms_sum", **served_v1) > 0
    bins = [_sample(text, "canary_prediction_score_bin_total", **served_v1, bin=str(i)) for i in range(10)]
    assert sum(bins) == 100 - errors
    assert "# TYPE canary_request_latency_ms histogram" in text
    assert "# TYPE canary_kpi_events_total counter" in text


def test_targeting_exposes_the_canary_only_to_matching_requests_and_keeps_users_sticky(served: Served) -> None:
    served.setup("churn", {"v1": 50, "v2": 50})
    rule = {"version": "v2", "match": {"region": ["eu-west"], "plan": ["internal", "beta"]}}
    response = served.admin("PUT", "/endpoints/churn/targeting", json=rule)
    assert response.status_code == 200 and response.json()["targeting"] == rule
    users = [f"user-{i}" for i in range(600)]
    outside = served.predict_many("churn", users, attributes={"region": "eu-west", "plan": "free"})
    assert {body["version"] for _, body in outside} == {"v1"}  # every attribute must match
    inside = served.predict_many("churn", users, attributes={"region": "eu-west", "plan": "beta"})
    first = [body["version"] for _, body in inside]
    assert 0.4 < first.count("v2") / len(users) < 0.6  # matching requests follow the weights
    again = served.predict_many("churn", users, attributes={"region": "eu-west", "plan": "beta"})
    assert [body["version"] for _, body in again] == first  # sticky per user
    # The derived user segment is an attribute too; headers carry attributes for clients that cannot change
    # the body (X-Attribute-Plan is plan).
    served.admin("PUT", "/endpoints/churn/targeting", json={"version": "v2", "match": {"plan": ["internal"]}})
    url = f"{served.url}/v1/endpoints/churn/predict"
    by_header = [requests.post(url, json={"features": list(FEATURES)}, timeout=5,
                               headers={"X-User-Id": u, "X-Attribute-Plan": "internal"}).json()["version"]
                 for u in users[:200]]
    assert by_header.count("v2") > 60
    both = requests.post(url, json={"features": list(FEATURES), "attributes": {"plan": "free"}}, timeout=5,
                         headers={"X-Attribute-Plan": "internal"})
    assert both.status_code == 422 and both.json()["detail"].startswith("attributes.plan: given both"), both.text
    bad = requests.post(url, json={"features": list(FEATURES)}, timeout=5, headers={"X-Attribute-Bad!": "x"})
    assert bad.status_code == 422 and "X-Attribute-* headers" in bad.json()["detail"], bad.text
    # With the canary at 100% it serves everyone; lifting the rule restores plain weights.
    served.admin("PUT", "/endpoints/churn/weights", json={"weights": {"v2": 100}})
    assert {body["version"] for _, body in served.predict_many("churn", users[:50])} == {"v2"}
    assert served.admin("DELETE", "/endpoints/churn/targeting").json()["targeting"] is None


@pytest.mark.parametrize(("rule", "detail"), [
    ({"version": "v9", "match": {"region": ["eu-west"]}},
     "targeting.version: 'v9' is not deployed on endpoint 'churn' (deployed: v1, v2)"),
    ({"version": "v2", "match": {}}, "match: Dictionary should have at least 1 item after validation, not 0"),
    ({"version": "v2", "match": {"Region": ["eu-west"]}}, "match.Region.[key]: String should match pattern"),
    ({"version": "v2", "match": {"region": []}}, "match: Value error, region: list 1 to 20 values, got 0"),
])
def test_bad_targeting_is_refused_naming_the_field(served: Served, rule: dict[str, object], detail: str) -> None:
    served.setup("churn", {"v1": 100, "v2": 0})
    response = served.admin("PUT", "/endpoints/churn/targeting", json=rule)
    assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.text
    assert served.admin("GET", "/endpoints/churn").json()["targeting"] is None
