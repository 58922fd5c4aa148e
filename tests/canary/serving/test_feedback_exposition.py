"""Feedback counters per version and request labels, from predictions and feedback sent to the real app."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serving_harness import TOKEN, Served

from canary.serving import exposition
from canary.serving.app import serving_in_thread
from canary.serving.exposition import OTHER_OUTCOME, PrometheusCounters

_LINE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def parse(text: str, family: str) -> dict[frozenset[tuple[str, str]], float]:
    """Return ``family``'s samples by their label set."""
    out = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match["name"] == family:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            out[labels] = float(match["value"])
    return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db_path = tmp_path / "metrics.db"
    with serving_in_thread(db_path, TOKEN, seed=11) as url:
        handle = Served(url=url, db_path=db_path)
        handle.setup("churn", {"v1": 50, "v2": 50})
        yield handle


def send(served: Served, body: dict[str, object]) -> None:
    reply = requests.post(f"{served.url}/v1/endpoints/churn/feedback", json=body,
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert reply.status_code == 200, reply.text


def test_feedback_counters_per_version_and_request_labels(served: Served) -> None:
    ios = served.predict_many("churn", [f"ios-{i}" for i in range(30)], attributes={"device": "ios", "region": "eu-west"})
    web = served.predict_many("churn", [f"web-{i}" for i in range(30)], attributes={"device": "web"})
    segments = dict(served.rows("SELECT request_id, segment FROM requests WHERE mirrored = 0"))
    expected: dict[str, Counter[tuple[str, ...]]] = {"labels": Counter(), "wrong": Counter(), "outcome": Counter()}
    value_sum: Counter[tuple[str, ...]] = Counter()
    for i, (_status, body) in enumerate(ios + web):
        device, region = ("ios", "eu-west") if i < len(ios) else ("web", "")
        key = (body["version"], segments[body["request_id"]], device, region)
        feedback: dict[str, object] = {"request_id": body["request_id"]}
        if i % 3:  # two thirds get a label, half of those the opposite of the predicted class
            feedback["label"] = body["label"] if i % 2 else 1 - body["label"]
            expected["labels"][key] += 1
            expected["wrong"][key] += int(i % 2 == 0)
        if i % 4 == 0 or "label" not in feedback:
            feedback |= {"outcome": "refund", "value": 2.5}
            expected["outcome"][key] += 1
            value_sum[key] += 2.5
        send(served, feedback)
    served.flush()  # the counters are read from the store: its batch must be committed
    text = PrometheusCounters(store_path=served.db_path).render()

    def by_key(family: str, **extra: str) -> Counter[tuple[str, ...]]:
        got: Counter[tuple[str, ...]] = Counter()
        for labels, value in parse(text, family).items():
            d = dict(labels)
            assert d.pop("endpoint") == "churn" and all(d.pop(k) == v for k, v in extra.items())
            got[(d.pop("version"), d.pop("segment"), d.pop("device"), d.pop("region", ""))] += value
            assert d == {}, labels  # no other label (in particular no mirrored)
        return +got

    assert by_key("canary_feedback_labels_total") == expected["labels"]
    assert by_key("canary_feedback_wrong_total") == +expected["wrong"]
    assert by_key("canary_feedback_outcome_total", outcome="refund") == expected["outcome"]
    assert by_key("canary_feedback_outcome_value_sum", outcome="refund") == value_sum
    versions = {v for v, *_ in expected["labels"]}
    assert versions == {"v1", "v2"} and sum(expected["wrong"].values()) > 0
    assert "# TYPE canary_feedback_wrong_total counter" in text


def test_outcome_names_past_the_cap_are_summed_under_other(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exposition, "MAX_OUTCOME_NAMES", 2)
    answers = served.predict_many("churn", [f"u{i}" for i in range(4)], attributes={"device": "ios"})
    for (_status, body), name in zip(answers, ["click", "refund", "chargeback", "signup"], strict=True):
        send(served, {"request_id": body["request_id"], "outcome": name, "value": 1.0})
    served.flush()
    outcomes = Counter()
    for labels, value in parse(PrometheusCounters(store_path=served.db_path).render(),
                               "canary_feedback_outcome_total").items():
        outcomes[dict(labels)["outcome"]] += value
    assert outcomes == {"click": 1, "refund": 1, OTHER_OUTCOME: 2}


def test_without_a_store_the_feedback_families_are_absent(tmp_path: Path) -> None:
    assert "canary_feedback_labels_total" not in PrometheusCounters().render()
    text = PrometheusCounters(store_path=tmp_path / "missing.db").render()
    assert "# TYPE canary_feedback_labels_total counter" in text and "canary_feedback_labels_total{" not in text


def test_the_metrics_route_serves_the_feedback_counters(served: Served) -> None:
    ((_status, body),) = served.predict_many("churn", ["u1"], attributes={"device": "ios"})
    send(served, {"request_id": body["request_id"], "label": body["label"]})
    served.flush()
    text = requests.get(f"{served.url}/metrics", timeout=5).text
    assert sum(parse(text, "canary_feedback_labels_total").values()) == 1
