"""The registry watcher trigger: what it fires, its watermark across restarts, and polling on through errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import registry_fakes
from registry_fakes import MemoryRegistry

from canary.errors import BackendError
from canary_airflow import registry_watch
from canary_airflow.registry_watch import MAX_BACKOFF_SECONDS, WATERMARK_KEY, RegistryWatchTrigger

POLL_S = 2.0


class Stop(Exception):
    """Ends a trigger run after a number of polls."""


class MemoryStore:
    """The asset state store's async accessors (``aget``/``aset``), in memory."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        assert value is not None
        self.values[key] = json.loads(json.dumps(value))


@pytest.fixture(autouse=True)
def memory_backend(monkeypatch):
    registry_fakes.install(monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_WATCH_REGISTRY", json.dumps({"conn_type": "canary_registry", "host": "x"}))
    registry_fakes.REGISTRIES.clear()


def make_trigger(watch: str = "new_version", key: str = "r") -> RegistryWatchTrigger:
    return RegistryWatchTrigger(model="m", registry={"name": "memory", "conn_id": "watch_registry",
                                                     "options": {"key": key}},
                                watch=watch, alias="challenger", poll_interval_seconds=POLL_S)


def run(monkeypatch, trigger: RegistryWatchTrigger, *, polls: int, on_sleep=None) -> tuple[list[dict], list[float]]:
    """Run the trigger through ``polls`` sleeps (patched: no waiting); return its events and the sleeps."""
    events: list[dict] = []
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if on_sleep is not None:
            on_sleep(len(sleeps))
        if len(sleeps) >= polls:
            raise Stop

    monkeypatch.setattr(registry_watch.asyncio, "sleep", fake_sleep)

    async def go() -> None:
        with pytest.raises(Stop):
            async for event in trigger.run():
                events.append(event.payload)

    asyncio.run(go())
    return events, sleeps


def test_serialize_round_trip_is_json_and_rebuilds_the_same_trigger():
    trigger = make_trigger("alias")
    path, kwargs = trigger.serialize()
    assert path == "canary_airflow.registry_watch.RegistryWatchTrigger"
    rebuilt = RegistryWatchTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)


def test_fires_for_the_newest_version_after_the_champion_then_for_each_new_one(monkeypatch):
    reg = registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2"], champion="1")

    def register(n: int) -> None:
        if n == 2:
            reg.versions.append("3")
        if n == 3:
            reg.versions.extend(["4", "5"])

    events, sleeps = run(monkeypatch, make_trigger(), polls=5, on_sleep=register)
    assert [(e["version"], e["cause"]) for e in events] == [("2", "new_version"), ("3", "new_version"),
                                                            ("5", "new_version")]
    assert events[2]["detail"] == "version 5 registered after the last version seen (3) (newest of 4, 5)"
    assert all(e["model"] == "m" for e in events) and sleeps == [POLL_S] * 5


def test_fires_when_the_alias_moves(monkeypatch):
    reg = registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2", "3"], aliases={"challenger": "2"})
    events, _ = run(monkeypatch, make_trigger("alias"), polls=4,
                    on_sleep=lambda n: reg.aliases.update(challenger="3") if n == 2 else None)
    assert [(e["version"], e["detail"]) for e in events] == [
        ("2", "alias 'challenger' names version 2"), ("3", "alias 'challenger' moved from version 2 to 3")]


def test_a_restarted_watcher_resumes_from_the_stored_watermark(monkeypatch):
    reg = registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2", "3"], champion="1")
    store = MemoryStore()
    first = make_trigger()
    first.asset_state_store = store
    events, _ = run(monkeypatch, first, polls=3)
    assert [e["version"] for e in events] == ["3"]
    assert store.values[WATERMARK_KEY] == {"last_version": "3", "alias_version": None, "watch": "new_version"}

    restarted = RegistryWatchTrigger(**first.serialize()[1])
    restarted.asset_state_store = store
    events, _ = run(monkeypatch, restarted, polls=3, on_sleep=lambda n: reg.versions.append("4") if n == 2 else None)
    assert [e["version"] for e in events] == ["4"]  # 3 is not reported again


def test_without_a_store_a_restart_reports_the_newest_candidate_again(monkeypatch):
    registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2"], champion="1")
    assert [e["version"] for e in run(monkeypatch, make_trigger(), polls=2)[0]] == ["2"]
    assert [e["version"] for e in run(monkeypatch, make_trigger(), polls=2)[0]] == ["2"]  # the dispatcher skips it


def logged(capsys) -> list[str]:
    out = capsys.readouterr()
    return (out.out + out.err).splitlines()


def test_keeps_polling_through_registry_errors_with_backoff_and_a_log_line(monkeypatch, capsys):
    reg = registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2"], champion="1")
    reg.fail = BackendError("mlflow registry", "search versions of model 'm' at http://x failed: INTERNAL_ERROR")

    def recover(n: int) -> None:
        if n == 4:
            reg.fail = None

    events, sleeps = run(monkeypatch, make_trigger(), polls=6, on_sleep=recover)
    assert sleeps[:4] == [POLL_S, 2 * POLL_S, 4 * POLL_S, 8 * POLL_S] and sleeps[4:] == [POLL_S, POLL_S]
    assert [e["version"] for e in events] == ["2"]
    failures = [line for line in logged(capsys) if "poll failed" in line]
    assert len(failures) == 4 and "(4 in a row), next try in 16s: mlflow registry: search versions" in failures[3]


def test_backoff_is_capped(monkeypatch):
    reg = registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1"])
    reg.fail = BackendError("local registry", "cannot read")
    _, sleeps = run(monkeypatch, make_trigger(), polls=12)
    assert max(sleeps) == MAX_BACKOFF_SECONDS and sleeps[-1] == MAX_BACKOFF_SECONDS


def test_a_missing_connection_is_retried_not_fatal(monkeypatch, capsys):
    registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2"])
    monkeypatch.delenv("AIRFLOW_CONN_WATCH_REGISTRY")
    events, sleeps = run(monkeypatch, make_trigger(), polls=3)
    assert events == [] and sleeps == [POLL_S, 2 * POLL_S, 4 * POLL_S]
    assert any("poll failed" in line and "watch_registry" in line for line in logged(capsys))


def test_a_failing_state_store_does_not_stop_the_watch(monkeypatch):
    class BrokenStore:
        async def aget(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("state store unavailable")

        async def aset(self, key: str, value: Any) -> None:
            raise RuntimeError("state store unavailable")

    registry_fakes.REGISTRIES["r"] = MemoryRegistry(["1", "2"])
    trigger = make_trigger()
    trigger.asset_state_store = BrokenStore()
    assert [e["version"] for e in run(monkeypatch, trigger, polls=2)[0]] == ["2"]
