"""The spec's ``notify`` entries: events from one enum, per-notifier options, errors naming field and fix."""

from __future__ import annotations

import pytest

from canary.errors import SpecError
from canary.notify import options
from canary.spec import defaults
from canary.spec.model import NotifierKind, NotifyEvent, parse_spec

BASE = {"model": "m", "endpoint": "e", "stages": [{"weight": 100}]}


def spec_with(*entries):
    return parse_spec({**BASE, "notify": list(entries)})


def problems(*entries) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        spec_with(*entries)
    return info.value.problems


def test_no_notify_by_default():
    assert parse_spec(BASE).notify == []


def test_an_entry_gets_the_documented_defaults():
    (entry,) = spec_with({"notifier": "http"}).notify
    assert entry.notifier is NotifierKind.HTTP
    assert [e.value for e in entry.events] == list(defaults.NOTIFY_EVENTS)
    assert entry.effective_conn_id == "http_default"
    assert [spec_with({"notifier": kind, "options": opts}).notify[0].effective_conn_id
            for kind, opts in (("smtp", {"to": ["a@example.com"]}),
                               ("sns", {"target_arn": "arn:aws:sns:eu-west-1:123456789012:t"}))] == \
        ["smtp_default", "aws_default"]


@pytest.mark.parametrize(("events", "asked", "wanted"), [
    (["promoted"], [NotifyEvent.PROMOTED], True),
    (["promoted"], [NotifyEvent.ROLLED_BACK], False),
    (["stage_decided"], [NotifyEvent.APPROVAL_NEEDED, NotifyEvent.STAGE_DECIDED], True),
    (["halted"], [NotifyEvent.APPROVAL_NEEDED, NotifyEvent.HALTED, NotifyEvent.STAGE_DECIDED], True),
    (["all"], [NotifyEvent.STUCK], True),
    (["started", "failed"], [NotifyEvent.STUCK], False),
])
def test_an_entry_wants_a_notice_standing_for_any_of_its_events(events, asked, wanted):
    (entry,) = spec_with({"notifier": "http", "events": events}).notify
    assert entry.wants(asked) is wanted


def test_options_are_typed_per_notifier():
    http, smtp, sns = spec_with(
        {"notifier": "http", "options": {"endpoint": "/hooks/rollouts", "method": "PUT", "headers": {"X-K": "v"}}},
        {"notifier": "smtp", "conn_id": "mail", "options": {"to": "oncall@example.com", "from": "Canary <c@ex.io>"}},
        {"notifier": "sns", "options": {"target_arn": "arn:aws:sns:eu-west-1:123456789012:rollouts"}},
    ).notify
    assert options.option_problems("http", http.options)[0].method == "PUT"
    typed = options.option_problems("smtp", smtp.options)[0]
    assert typed.to == ["oncall@example.com"] and typed.from_email == "Canary <c@ex.io>"
    assert options.option_problems("sns", sns.options)[0].region_name is None


@pytest.mark.parametrize(("entry", "expected"), [
    ({"notifier": "smtp"}, [("notify[0].options.to", "required by the smtp notifier: a list of addresses, "
                                                     "e.g. [oncall@example.com]")]),
    ({"notifier": "smtp", "options": {"to": []}},
     [("notify[0].options.to", "must be a list of addresses, e.g. [oncall@example.com], got []")]),
    ({"notifier": "smtp", "options": {"to": ["oncall"], "bcc": ["x@example.com"]}},
     [("notify[0].options.to", "not an e-mail address: 'oncall' (e.g. oncall@example.com)"),
      ("notify[0].options.bcc", "unknown smtp notifier option (set to ['x@example.com']); allowed: to, from, cc")]),
    ({"notifier": "sns", "options": {"target_arn": "rollouts"}},
     [("notify[0].options.target_arn", "must be the topic ARN, e.g. arn:aws:sns:eu-west-1:123456789012:rollouts, "
                                       "got 'rollouts'")]),
    ({"notifier": "sns"}, [("notify[0].options.target_arn", "required by the sns notifier: the topic ARN, e.g. "
                                                            "arn:aws:sns:eu-west-1:123456789012:rollouts")]),
    ({"notifier": "http", "options": {"endpoint": "https://hooks.example.com/x"}},
     [("notify[0].options.endpoint", "must be a path such as /hooks/rollouts: the scheme and host are the "
                                     "connection's (put them in the connection's host)")]),
    ({"notifier": "http", "options": {"method": "GET"}},
     [("notify[0].options.method", "must be 'POST', 'PUT' or 'PATCH', got 'GET'")]),
    ({"notifier": "http", "events": []},
     [("notify[0].events", "must list at least one event, e.g. [rolled_back, promoted], or [all]; omit it for the "
                           f"default {list(defaults.NOTIFY_EVENTS)}")]),
    ({"notifier": "http", "events": ["done"]},
     [("notify[0].events[0]", "must be one of 'started', 'stage_decided', 'approval_needed', 'halted', "
                              "'rolled_back', 'promoted', 'failed', 'stuck' or 'all', got 'done'")]),
    ({"notifier": "pagerduty"}, [("notify[0].notifier", "must be one of 'http', 'smtp', 'sns' or 'slack', got "
                                                        "'pagerduty'")]),
])
def test_a_bad_entry_is_refused_naming_the_field_and_the_fix(entry, expected):
    assert problems(entry) == expected


def test_slack_is_refused_naming_the_provider_to_install_while_it_is_not_installed():
    assert not options.provider_installed("slack")  # the day it is installed, test the Slack notifier for real
    assert problems({"notifier": "slack", "options": {"channel": "#ml"}}) == [
        ("notify[0].notifier", "the slack notifier needs the apache-airflow-providers-slack package: install it "
                               "(pip install apache-airflow-providers-slack) or use http, smtp or sns")]


def test_slack_options_are_checked_once_its_provider_is_installed(monkeypatch):
    monkeypatch.setattr(options, "provider_installed", lambda notifier: True)
    assert problems({"notifier": "slack", "options": {"channel": "ml rollouts"}}) == [
        ("notify[0].options.channel", "must be a channel name or id, e.g. '#ml-rollouts', got 'ml rollouts'")]
    assert spec_with({"notifier": "slack", "options": {"channel": "#ml"}}).notify[0].effective_conn_id == \
        "slack_api_default"


def test_notify_problems_are_reported_with_the_other_field_problems_in_one_pass():
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, "stages": [{"weight": 0}], "notify": [{"notifier": "sns", "options": {}}]})
    assert [loc for loc, _ in info.value.problems] == ["stages[0].weight", "notify[0].options.target_arn"]


def test_the_entries_survive_the_frozen_plan_round_trip():
    spec = spec_with({"notifier": "smtp", "events": ["all"], "options": {"to": ["a@example.com"], "from": "c@ex.io"}})
    again = parse_spec(spec.model_dump(mode="json", by_alias=True))
    assert again.notify == spec.notify
