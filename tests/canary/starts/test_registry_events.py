"""Event-driven starts, the pure half: the spec field, what the watcher reports, and what an event may start."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from registry_fakes import MemoryRegistry

from canary.errors import BackendError, RequestError, SpecError
from canary.spec.model import RegistryWatch, parse_spec
from canary.starts.registry_events import (
    AssetEventInput,
    Watermark,
    asset_name,
    event_run_id,
    model_of_asset,
    parse_event,
    plan_dispatch,
    poll_registry,
    summarize,
)

BASE_SPEC = {"model": "m", "endpoint": "e", "stages": [{"weight": 50}, {"weight": 100}]}


# -- the spec field ------------------------------------------------------------------------------------


def test_on_registry_event_defaults_off_with_documented_defaults():
    events = parse_spec(BASE_SPEC).schedule.on_registry_event
    assert (events.enabled, events.watch, events.alias, events.poll_interval_s) == (
        False, RegistryWatch.NEW_VERSION, "challenger", 30.0)


def test_on_registry_event_parses_durations_and_modes():
    spec = parse_spec({**BASE_SPEC, "schedule": {"on_registry_event": {
        "enabled": True, "watch": "alias", "alias": "candidate", "poll_interval": "2m"}}})
    events = spec.schedule.on_registry_event
    assert (events.watch, events.alias, events.poll_interval_s) == (RegistryWatch.ALIAS, "candidate", 120.0)


@pytest.mark.parametrize(("events", "field", "message"), [
    ({"watch": "tags"}, "schedule.on_registry_event.watch", "must be one of 'new_version', 'alias' or 'none', got 'tags'"),
    ({"poll_interval": "100ms"}, "schedule.on_registry_event.poll_interval", "greater than or equal to 1"),
    ({"poll_interval": "soon"}, "schedule.on_registry_event.poll_interval", "a duration like"),
    ({"alias": "bad alias"}, "schedule.on_registry_event.alias", "match pattern"),
    ({"enabled": True, "watch": "alias", "alias": "champion"}, "schedule.on_registry_event.alias",
     "must not be the champion alias 'champion'"),
    ({"enable": True}, "schedule.on_registry_event.enable", "unknown key"),
])
def test_on_registry_event_refusals_name_the_field(events, field, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE_SPEC, "schedule": {"on_registry_event": events}}, source="m.yaml")
    assert [loc for loc, _ in err.value.problems] == [field], err.value.problems
    assert message in str(err.value)


def test_the_champion_alias_option_is_respected():
    spec = {**BASE_SPEC, "backends": {"registry": {"name": "mlflow", "options": {"champion_alias": "prod"}}},
            "schedule": {"on_registry_event": {"enabled": True, "watch": "alias", "alias": "champion"}}}
    assert parse_spec(spec).schedule.on_registry_event.alias == "champion"
    with pytest.raises(SpecError, match="must not be the champion alias 'prod'"):
        parse_spec({**spec, "schedule": {"on_registry_event": {"enabled": True, "watch": "alias", "alias": "prod"}}})


# -- the watcher's poll ----------------------------------------------------------------------------------


def new_version(reg, watermark):
    return poll_registry(reg, "m", watch="new_version", alias="challenger", watermark=watermark)


def test_first_poll_reports_the_newest_version_after_the_champion():
    event, after = new_version(MemoryRegistry(["1", "2", "3"], champion="1"), None)
    assert event == {"model": "m", "version": "3", "cause": "new_version",
                     "detail": "version 3 registered after the champion (1) (newest of 2, 3)"}
    assert after == Watermark(last_version="3")


def test_first_poll_with_nothing_after_the_champion_reports_nothing():
    assert new_version(MemoryRegistry(["1", "2"], champion="2"), None) == (None, Watermark(last_version="2"))


def test_without_a_champion_the_watch_starts_from_the_newest_version():
    assert new_version(MemoryRegistry(["1", "2"], champion=None), None) == (None, Watermark(last_version="2"))
    assert new_version(MemoryRegistry([], champion=None), None) == (None, Watermark(last_version=None))


def test_later_polls_report_only_versions_after_the_watermark():
    reg = MemoryRegistry(["1", "2"], champion="1")
    assert new_version(reg, Watermark(last_version="2")) == (None, Watermark(last_version="2"))
    reg.versions.append("3")
    event, after = new_version(reg, Watermark(last_version="2"))
    assert event["version"] == "3" and event["detail"] == "version 3 registered after the last version seen (2)"
    assert after == Watermark(last_version="3")


def test_a_deleted_watermark_version_falls_back_to_the_champion():
    event, after = new_version(MemoryRegistry(["1", "3"], champion="1"), Watermark(last_version="2"))
    assert event["version"] == "3" and after == Watermark(last_version="3")


def alias(reg, watermark):
    return poll_registry(reg, "m", watch="alias", alias="challenger", watermark=watermark)


@pytest.mark.parametrize(("aliases", "watermark", "version", "detail"), [
    ({"challenger": "2"}, None, "2", "alias 'challenger' names version 2"),
    ({"challenger": "3"}, Watermark(alias_version="2"), "3", "alias 'challenger' moved from version 2 to 3"),
    ({"challenger": "2"}, Watermark(alias_version="2"), None, None),
    ({}, Watermark(alias_version="2"), None, None),
])
def test_alias_watch(aliases, watermark, version, detail):
    event, after = alias(MemoryRegistry(["1", "2", "3"], aliases=aliases), watermark)
    assert (event or {}).get("version") == version and (event or {}).get("detail") == detail
    assert after == Watermark(alias_version=aliases.get("challenger"))
    if event:
        assert event["cause"] == "alias_moved" and event["model"] == "m"


def test_an_alias_removed_and_set_again_is_reported_again():
    reg = MemoryRegistry(["1", "2"], aliases={})
    _, after = alias(reg, Watermark(alias_version="2"))
    reg.aliases["challenger"] = "2"
    assert alias(reg, after)[0]["version"] == "2"


def test_registry_errors_propagate_to_the_watcher():
    reg = MemoryRegistry(["1"])
    reg.fail = BackendError("mlflow registry", "down")
    with pytest.raises(BackendError):
        new_version(reg, None)


@pytest.mark.parametrize("stored", [None, "x", {"last_version": 3}, []])
def test_a_stored_watermark_that_is_not_one_is_ignored(stored):
    assert Watermark.from_dict(stored) is None


def test_watermark_round_trip():
    w = Watermark(last_version="4", alias_version="3")
    assert Watermark.from_dict({**w.to_dict(), "watch": "new_version"}) == w


# -- validating events --------------------------------------------------------------------------------------


def item(extra: Any, model: str = "m", ts: str = "2026-01-01T00:00:00+00:00") -> AssetEventInput:
    return AssetEventInput(asset=asset_name(model), timestamp=ts, extra=extra)


def test_pushed_and_watcher_events_parse():
    pushed = parse_event(item({"model": "m", "version": "7", "reason": "training run 42", "from_rest_api": True,
                               "other": 1}), known_models={"m"})
    assert (pushed.model, pushed.version, pushed.cause, pushed.detail, pushed.source, pushed.dry_run) == (
        "m", "7", "pushed", "training run 42", "REST API", False)
    watched = parse_event(item({"from_trigger": True, "payload": {"model": "m", "version": "3", "cause": "new_version",
                                                                  "detail": "version 3 registered"}}),
                          known_models={"m"})
    assert (watched.version, watched.cause, watched.source) == ("3", "new_version", "watcher")
    assert parse_event(item({"model": "m", "version": "2", "dry_run": True}), known_models={"m"}).dry_run


@pytest.mark.parametrize(("extra", "field", "message"), [
    ({"version": "7"}, "model", "is missing"),
    ({"model": "", "version": "7"}, "model", "must be a non-empty string"),
    ({"model": "nope", "version": "7"}, "model", "unknown model 'nope': no spec with schedule.on_registry_event"),
    ({"model": "other", "version": "7"}, "model", "'other' does not match asset 'canary_registry__m'; post events "
                                                  "for 'other' to asset 'canary_registry__other'"),
    ({"model": "m"}, "version", "is missing"),
    ({"model": "m", "version": "  "}, "version", "must be a non-empty string"),
    ({"model": "m", "version": 7}, "version", 'got 7 (quote it: "7")'),
    ({"model": "m", "version": "v" * 201}, "version", "at most 200 characters"),
    ({"model": "m", "version": "7", "dry_run": "yes"}, "dry_run", "must be true or false"),
    ({"model": "m", "version": "7", "reason": 5}, "reason", "must be a string"),
    ("not an object", "extra", "must be a JSON object"),
])
def test_bad_events_are_refused_naming_the_field(extra, field, message):
    with pytest.raises(RequestError) as err:
        parse_event(item(extra), known_models={"m", "other"} - ({"other"} if "nope" in str(extra) else set()))
    assert err.value.field == field and message in str(err.value), str(err.value)


# -- dispatching a batch -------------------------------------------------------------------------------------


def dispatch(items, regs: Mapping[str, MemoryRegistry], active: Mapping[str, int] | None = None):
    return [c.to_dict() for c in plan_dispatch(items, known_models=set(regs), registry_for=lambda m: regs[m],
                                               active_runs_for=lambda m: (active or {}).get(m, 0))]


def push(version: Any, model: str = "m", ts: str = "2026-01-01T00:00:00+00:00", **more: Any) -> AssetEventInput:
    return item({"model": model, "version": version, "from_rest_api": True, **more}, model=model, ts=ts)


def test_a_candidate_is_started_with_a_deterministic_run_id_and_conf():
    [choice] = dispatch([push("2", reason="training run 42")], {"m": MemoryRegistry(["1", "2"])})
    assert choice["action"] == "start" and choice["version"] == "2" and choice["dag_id"] == "canary_rollout__m"
    assert choice["run_id"] == "registry__2__2026-01-01T00:00:00+00:00"
    assert choice["conf"] == {"version": "2", "reason": "registry event (REST API, pushed): training run 42"}
    assert choice["reason"] == "2: training run 42 (after champion 1, not rolled out yet)"


def test_an_alias_is_resolved_and_dry_run_passed_on():
    [choice] = dispatch([push("challenger", dry_run=True)],
                        {"m": MemoryRegistry(["1", "2", "3"], aliases={"challenger": "3"})})
    assert choice["version"] == "3" and choice["conf"]["version"] == "3" and choice["conf"]["dry_run"] is True
    assert choice["run_id"].startswith("registry__3__")


@pytest.mark.parametrize(("registry", "version", "active", "reason"), [
    (MemoryRegistry(["1", "2"]), "2", 1, "1 rollout run(s) of canary_rollout__m already queued or running"),
    (MemoryRegistry(["1", "2"], tags={"2": {"rollout.result": "rolled_back"}}), "2", 0,
     "2 was already rolled out (rollout.result=rolled_back)"),
    (MemoryRegistry(["1", "2"], champion="2"), "2", 0, "2 is already the champion"),
    (MemoryRegistry(["1", "2"], champion="2"), "1", 0, "1 was registered before champion 2: not a candidate"),
    (MemoryRegistry(["1", "2"], champion=None), "2", 0, "model 'm' has no champion"),
])
def test_skips_say_why(registry, version, active, reason):
    [choice] = dispatch([push(version)], {"m": registry}, {"m": active})
    assert (choice["action"], choice["reason"]) == ("skip", reason)


def test_unknown_version_is_refused_and_registry_failure_is_an_error():
    [refused] = dispatch([push("9")], {"m": MemoryRegistry(["1", "2"])})
    assert refused["action"] == "refuse"
    assert refused["reason"] == "version: model 'm' has no version or alias '9' (known: 1, 2, champion)"
    down = MemoryRegistry(["1", "2"])
    down.fail = BackendError("mlflow registry", "get registered model 'm' at http://x failed")
    [error] = dispatch([push("2")], {"m": down})
    assert error["action"] == "error" and error["reason"].startswith("registry: mlflow registry: get registered")


def test_one_rollout_per_model_and_batch_the_newest_and_bad_events_do_not_stop_the_others():
    regs = {"m": MemoryRegistry(["1", "2", "3"]), "n": MemoryRegistry(["1", "2"])}
    choices = dispatch([
        push("3", ts="2026-01-01T00:00:03+00:00"),
        push("2", ts="2026-01-01T00:00:01+00:00"),
        push("3", ts="2026-01-01T00:00:04+00:00"),
        item({"model": "n"}, model="n", ts="2026-01-01T00:00:02+00:00"),
        push("2", model="n", ts="2026-01-01T00:00:05+00:00"),
        item({"model": "zzz", "version": "1"}, model="zzz", ts="2026-01-01T00:00:06+00:00"),
    ], regs)
    got = [(c["model"], c["version"], c["action"], c["reason"]) for c in choices]
    assert got == [
        ("m", "2", "skip", "superseded by newer version 3 in the same batch"),
        ("n", None, "refuse", "version: is missing; the event's extra must be "
                              '{"model": "<model>", "version": "<version>"}'),
        ("m", "3", "start", "3: pushed (after champion 1, not rolled out yet)"),
        ("m", "3", "skip", "duplicate of an earlier event for 3 in this batch"),
        ("n", "2", "start", "2: pushed (after champion 1, not rolled out yet)"),
        ("zzz", None, "refuse", "model: unknown model 'zzz': no spec with schedule.on_registry_event.enabled "
                                "(known: m, n)"),
    ]
    report = summarize(choices)
    assert [len(report[k]) for k in ("started", "skipped", "refused", "errors")] == [2, 2, 2, 0]


def test_run_ids_are_safe_and_bounded():
    assert event_run_id("a b/c", "2026-01-01T00:00:00+00:00") == "registry__a_b_c__2026-01-01T00:00:00+00:00"
    assert len(event_run_id("v" * 400, "t")) == 250


def test_asset_names():
    assert asset_name("churn") == "canary_registry__churn"
    assert model_of_asset("canary_registry__churn") == "churn" and model_of_asset("other") is None
