"""Typed backend options: every backend declares a model that matches its constructor; bad options are named."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from canary.backends import KNOWN_BACKENDS
from canary.backends.options import (
    BACKEND_OPTIONS,
    CloudWatchOptions,
    MlflowRegistryOptions,
    exceedance_thresholds_ms,
    option_problems,
    parse_options,
)
from canary.errors import ConfigError
from canary.spec import defaults

#: Constructor parameters that are not spec options: the Airflow layer passes ``endpoint`` (the spec's
#: endpoint); the rest are injected by tests (clients, sessions, clocks).
NOT_OPTIONS = {"conn", "endpoint", "session", "sleep", "clock", "sagemaker_client", "cloudwatch_client"}
#: Options a constructor takes through ``**kwargs`` (checked by the backend itself).
KWARGS_OPTIONS = {("metrics", "prometheus"): {"requests_metric", "errors_metric", "latency_metric", "kpi_metric",
                                              "prediction_bins_metric", "bin_label"}}

BUILTIN = [(role, name) for role, names in KNOWN_BACKENDS.items() for name in names]


def constructor(role: str, name: str):
    module, attr = KNOWN_BACKENDS[role][name].split(":")
    return getattr(importlib.import_module(module), attr)


def test_every_registered_backend_declares_an_options_model():
    assert {role: set(names) for role, names in BACKEND_OPTIONS.items()} == \
        {role: set(names) for role, names in KNOWN_BACKENDS.items()}


@pytest.mark.parametrize(("role", "name"), BUILTIN)
def test_the_options_model_matches_the_constructor(role, name):
    params = inspect.signature(constructor(role, name)).parameters
    keywords = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - NOT_OPTIONS
    keywords |= KWARGS_OPTIONS.get((role, name), set())
    model = BACKEND_OPTIONS[role][name]
    assert set(model.model_fields) == keywords
    for field_name, field in model.model_fields.items():  # a default the core reads is the backend's default
        if field.default is not None:
            assert field.default == params[field_name].default, field_name


@pytest.mark.parametrize(("role", "name", "options", "location", "fragment"), [
    ("metrics", "cloudwatch", {"period": 60}, "period", "unknown cloudwatch metrics option (set to 60); allowed: "
                                                         "namespace, period_s, settle_s,"),
    ("metrics", "cloudwatch", {"period_s": "1m"}, "period_s", "must be a valid integer, unable to parse string as an "
                                                              "integer, got '1m'"),
    ("metrics", "cloudwatch", {"period_s": 7}, "period_s", "must be 1, 5, 10, 30 or a multiple of 60, got 7"),
    ("metrics", "cloudwatch", {"settle_s": -1}, "settle_s", "greater than or equal to 0, got -1"),
    ("metrics", "cloudwatch", {"latency_exceedance_metrics": {"fast": "X"}}, "latency_exceedance_metrics",
     "key 'fast' must be a positive number of milliseconds"),
    ("metrics", "prometheus", {"latency_unit": "us"}, "latency_unit", "'ms' or 's', got 'us'"),
    ("metrics", "local", {"endpoint": "other"}, "endpoint", "allowed: none"),
    ("serving", "sagemaker", {"wait": "maybe"}, "wait", "valid boolean, unable to interpret input, got 'maybe'"),
    ("serving", "sagemaker", {"initial_instance_count": 0}, "initial_instance_count", "greater than or equal to 1"),
    ("serving", "local", {"retries": 1.5}, "retries", "valid integer, got a number with a fractional part, got 1.5"),
    ("registry", "mlflow", {"champion": "prod"}, "champion", "allowed: registered_model_name, champion_alias,"),
    ("registry", "local", {"path": "/x"}, "path", "allowed: none"),
    ("lock", "postgres", {"connect_timeout_s": 0}, "connect_timeout_s", "greater than 0, got 0"),
    ("lock", "local", {"busy_timeout": 5}, "busy_timeout", "allowed: path, table, busy_timeout_s"),
])
def test_a_bad_option_names_the_option_the_value_and_the_allowed_ones(role, name, options, location, fragment):
    typed, problems = option_problems(role, name, options)
    assert typed is None
    assert [loc for loc, _ in problems] == [location]
    assert fragment in problems[0][1], problems


def test_a_backend_without_options_model_is_a_problem_not_a_silent_pass():
    typed, problems = option_problems("metrics", "nobody", {})
    assert typed is None and "declares no options model" in problems[0][1]


def test_only_options_the_spec_sets_reach_the_constructor_typed_and_json_able():
    typed = parse_options("metrics", "cloudwatch", {"settle_s": "120", "latency_exceedance_metrics": {100: "Over100"},
                                                    "error_metrics": ["Invocation5XXErrors"]})
    assert isinstance(typed, CloudWatchOptions)
    assert typed.period_s == defaults.CLOUDWATCH_PERIOD_S  # what the window rule reads
    assert typed.constructor_kwargs() == {"settle_s": 120.0, "latency_exceedance_metrics": {"100": "Over100"},
                                          "error_metrics": ["Invocation5XXErrors"]}
    registry = parse_options("registry", "mlflow", {})
    assert isinstance(registry, MlflowRegistryOptions) and registry.champion_alias == defaults.CHAMPION_ALIAS
    assert registry.constructor_kwargs() == {}


def test_parse_options_raises_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"^backends\.lock\.options\.table: must be a valid string, got 3$"):
        parse_options("lock", "postgres", {"table": 3})


def test_typed_options_build_the_backend():
    from canary.backends import build_backend
    from canary.backends.base import ConnInfo

    kwargs = parse_options("metrics", "prometheus", {"timeout_s": 2, "extra_matchers": {"job": "serving"},
                                                     "kpi_metric": None}).constructor_kwargs()
    source = build_backend("metrics", "prometheus", ConnInfo(conn_id="p", host="prom"), endpoint="churn", **kwargs)
    assert source.timeout_s == 2.0 and source.names.kpi == ""


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"100": "Over100", 250: "Over250", 0.5: "OverHalf"}, {100.0: "Over100", 250.0: "Over250", 0.5: "OverHalf"}),
    ({}, {}),
])
def test_exceedance_thresholds_are_milliseconds(metrics, expected):
    assert exceedance_thresholds_ms(metrics) == expected


@pytest.mark.parametrize("key", ["fast", 0, -5, "inf", "nan", True, None])
def test_a_threshold_that_is_not_a_positive_number_is_refused_by_the_spec_and_the_backend(key):
    from canary.backends.base import ConnInfo
    from canary.backends.cloudwatch import CloudWatchMetricsSource

    _, problems = option_problems("metrics", "cloudwatch", {"latency_exceedance_metrics": {key: "X"}})
    assert problems == [("latency_exceedance_metrics",
                         f"key {key!r} must be a positive number of milliseconds, got {{{key!r}: 'X'}}")]
    with pytest.raises(ConfigError, match=rf"latency_exceedance_metrics key {re.escape(repr(key))} must be a positive"):
        CloudWatchMetricsSource(ConnInfo(conn_id="aws"), endpoint="e", latency_exceedance_metrics={key: "X"},
                                cloudwatch_client=object())
