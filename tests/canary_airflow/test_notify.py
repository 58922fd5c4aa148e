"""Sending notices through the real provider notifiers to local receivers: an HTTP server, an SMTP server
(aiosmtpd), and SNS on the moto server (read back through a subscribed SQS queue). A receiver that is down
is a logged warning, never an error."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from types import SimpleNamespace

import pytest
from moto_harness import moto_server
from notify_receivers import free_port, http_receiver, smtp_receiver

from canary.notify import messages
from canary.notify.messages import RunRef
from canary.notify.stuck import stuck_budget
from canary.policy.decisions import Outcome
from canary.spec.model import NotifySpec, parse_spec
from canary_airflow import notify

LOG = logging.getLogger("test.notify")
REF = RunRef(model="m", dag_id="canary_rollout__m", run_id="manual__1", base_url="http://airflow.test",
             candidate="v2", stable="v1")
PROMOTED = messages.finished(REF, Outcome.PROMOTED, "every stage passed (10 -> 100%)")
SECRET = "s3cret-token-123"


def entry(notifier: str, conn_id: str, events=("all",), **options) -> NotifySpec:
    return NotifySpec.model_validate({"notifier": notifier, "conn_id": conn_id, "events": list(events),
                                      "options": options})


@pytest.fixture
def http(monkeypatch):
    with http_receiver() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_HTTP", receiver.connection(login="bot", password=SECRET))
        yield receiver


def test_http_posts_the_notice_as_json_to_the_endpoint(http):
    sent = notify.send(PROMOTED, [entry("http", "notify_http", endpoint="/hooks/rollouts",
                                        headers={"X-Team": "ml"})], {}, log=LOG)
    assert sent == ["http:notify_http"]
    (got,) = http.received
    assert (got.method, got.path, got.headers["X-Team"]) == ("POST", "/hooks/rollouts", "ml")
    assert got.headers["Authorization"].startswith("Basic ")  # the connection's credentials, not the spec's
    assert got.body == PROMOTED.payload()
    assert got.body["event"] == "promoted" and got.body["link"].endswith("/runs/manual__1/plugin/rollout")


def test_only_the_entries_that_want_the_event_are_told(http):
    sent = notify.send(PROMOTED, [entry("http", "notify_http", events=["rolled_back"], endpoint="/a"),
                                  entry("http", "notify_http", events=["promoted"], endpoint="/b", method="PUT")],
                       {}, log=LOG)
    assert sent == ["http:notify_http"]
    assert [(r.method, r.path) for r in http.received] == [("PUT", "/b")]


def test_smtp_sends_a_short_email_with_the_link(monkeypatch):
    with smtp_receiver() as smtp:
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_SMTP", smtp.connection())
        sent = notify.send(PROMOTED, [entry("smtp", "notify_smtp", to=["oncall@example.com", "ml@example.com"],
                                            **{"from": "canary@example.com"})], {}, log=LOG)
        assert sent == ["smtp:notify_smtp"]
        (mail,) = smtp.received
    assert mail.mail_from == "canary@example.com"
    assert sorted(mail.rcpt_tos) == ["ml@example.com", "oncall@example.com"]
    assert mail.message["Subject"] == "m: v2 promoted"
    (part,) = [p for p in mail.message.walk() if p.get_content_type() == "text/html"]
    body = part.get_payload(decode=True).decode()
    assert "<p>v2 is the champion now; v1 is retired.</p>" in body
    assert 'href="http://airflow.test/dags/canary_rollout__m/runs/manual__1/plugin/rollout"' in body


def test_smtp_takes_the_sender_from_the_connection_when_the_spec_names_none(monkeypatch):
    with smtp_receiver() as smtp:
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_SMTP", smtp.connection(from_email="airflow@example.com"))
        assert notify.send(PROMOTED, [entry("smtp", "notify_smtp", to=["a@example.com"])], {}, log=LOG)
        assert smtp.received[0].mail_from == "airflow@example.com"


def test_sns_publishes_to_the_topic(monkeypatch):
    import boto3

    with moto_server() as url:
        kwargs = {"endpoint_url": url, "region_name": "eu-west-1", "aws_access_key_id": "testing",
                  "aws_secret_access_key": "testing"}
        sns, sqs = boto3.client("sns", **kwargs), boto3.client("sqs", **kwargs)
        topic = sns.create_topic(Name="rollouts")["TopicArn"]
        queue = sqs.create_queue(QueueName="rollouts-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_AWS", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": "eu-west-1", "endpoint_url": url}}))
        assert notify.send(PROMOTED, [entry("sns", "notify_aws", target_arn=topic)], {}, log=LOG) == \
            ["sns:notify_aws"]
        (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    envelope = json.loads(message["Body"])
    assert envelope["Subject"] == "m: v2 promoted"
    assert envelope["Message"] == f"m: v2 promoted\n{PROMOTED.text()}"


def test_a_receiver_that_is_down_is_a_warning_naming_notifier_and_connection(monkeypatch, caplog):
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_HTTP", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                               "port": port, "login": "bot", "password": SECRET}))
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_SMTP", json.dumps({"conn_type": "smtp", "host": "127.0.0.1",
                                                               "port": port, "password": SECRET,
                                                               "extra": {"disable_tls": True, "disable_ssl": True,
                                                                         "retry_limit": 0, "timeout": 2}}))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        sent = notify.send(PROMOTED, [entry("http", "notify_http"), entry("smtp", "notify_smtp", to=["a@example.com"],
                                                                          **{"from": "c@example.com"})], {}, log=LOG)
    assert sent == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("notification 'promoted' not sent by the http notifier (connection 'notify_http'): "
                                  "ConnectionError: ")
    assert warnings[1].startswith("notification 'promoted' not sent by the smtp notifier (connection 'notify_smtp'): ")
    assert all(SECRET not in m for m in caplog.messages)


def test_a_receiver_that_answers_an_error_is_a_warning(http, caplog):
    http.status = 500
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert notify.send(PROMOTED, [entry("http", "notify_http")], {}, log=LOG) == []
    assert "500" in caplog.messages[0] and "connection 'notify_http'" in caplog.messages[0]


def test_a_missing_connection_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert notify.send(PROMOTED, [entry("http", "no_such_conn")], {}, log=LOG) == []
    assert "connection 'no_such_conn'" in caplog.messages[0] and "isn't defined" in caplog.messages[0]


def test_errors_never_quote_the_connections_secrets(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFY_HTTP", json.dumps({"conn_type": "http", "host": "h", "password": SECRET,
                                                               "extra": {"webhook_token": "tok-98765"}}))
    err = RuntimeError(f"POST https://h/hooks/{SECRET}?t=tok-98765 failed\nsecond line")
    assert notify.describe_error(err, "notify_http") == "RuntimeError: POST https://h/hooks/***?t=*** failed second line"
    assert len(notify.describe_error(RuntimeError("x" * 1000), "notify_http")) == notify.MAX_ERROR_CHARS


def test_the_link_uses_the_api_base_url(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    plan = SimpleNamespace(model="m", candidate="v2", stable="v1", dry_run=False)
    ref = notify._run_ref({"dag": SimpleNamespace(dag_id="canary_rollout__m"), "run_id": "r1"}, plan)
    assert ref.link == "https://airflow.example.com/dags/canary_rollout__m/runs/r1/plugin/rollout"


# -- the stuck-rollout alert --------------------------------------------------------------------------

SPEC = {"model": "m", "endpoint": "e", "stages": [{"weight": 10, "max_duration": "1h"}, {"weight": 100}],
        "notify": [{"notifier": "http", "conn_id": "notify_http", "events": ["stuck", "promoted"],
                    "options": {"endpoint": "/stuck"}},
                   {"notifier": "http", "conn_id": "other", "events": ["promoted"]}]}


def test_the_stuck_deadline_is_the_specs_budget_from_when_the_run_was_queued():
    from airflow.sdk import AsyncCallback, DeadlineReference

    spec = parse_spec(SPEC)
    alert = notify.stuck_deadline(spec)
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(seconds=stuck_budget(spec).total_s)
    assert isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "canary_airflow.notify.send_stuck_alert"
    kwargs = alert.callback.kwargs
    assert json.loads(json.dumps(kwargs)) == kwargs  # stored in the serialized DAG
    assert [e["conn_id"] for e in kwargs["notify"]] == ["notify_http"]  # only the entries that want "stuck"


def test_no_deadline_when_nobody_wants_stuck():
    spec = parse_spec({**SPEC, "notify": [SPEC["notify"][1]]})
    assert notify.stuck_deadline(spec) is None
    assert notify.stuck_deadline(parse_spec({**SPEC, "notify": []})) is None


def test_the_stuck_callback_sends_the_stuck_notice(http):
    """Called as the triggerer's CallbackTrigger calls it: kwargs plus the scheduler's simple context."""
    kwargs = notify.stuck_deadline(parse_spec(SPEC)).callback.kwargs
    context = {"dag_run": {"dag_id": "canary_rollout__m", "dag_run_id": "manual__9", "conf": {"version": "v3"},
                           "state": "running"},
               "deadline": {"id": "d1", "deadline_time": "2026-12-02T12:00:00+00:00"}}
    sent = asyncio.run(notify.send_stuck_alert(**json.loads(json.dumps(kwargs)), context=context))
    assert sent == ["http:notify_http"]
    (got,) = http.received
    assert got.path == "/stuck" and got.body["event"] == "stuck"
    assert got.body["subject"] == "m: rollout of v3 still running after 3h51m15s"
    assert got.body["link"] == "http://localhost:8080/dags/canary_rollout__m/runs/manual__9/plugin/rollout"


def test_the_stuck_callback_never_raises(caplog):
    with caplog.at_level(logging.WARNING, logger="canary_airflow.notify"):
        assert asyncio.run(notify.send_stuck_alert(model="m", notify=[{"notifier": "nope"}], budget={},
                                                   context=None)) == []
    assert "no stuck notification for m" in caplog.text


def test_the_rollout_dag_carries_the_deadline_through_serialization(tmp_path):
    import yaml
    from airflow.serialization.serialized_objects import DagSerialization

    from canary_airflow.factory import build_rollout_dag

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    dag = build_rollout_dag(path)
    (alert,) = dag.deadline
    data = DagSerialization.to_dict(dag)
    (stored,) = data["dag"]["deadline"]
    assert "send_stuck_alert" in json.dumps(stored)
    assert alert.interval == timedelta(seconds=stuck_budget(parse_spec(SPEC)).total_s)
