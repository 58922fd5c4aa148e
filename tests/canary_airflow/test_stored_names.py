"""Names stored outside the code keep importing: moving a class must not break runs in flight.

Airflow stores trigger classpaths in its trigger table and in asset watchers, hook class paths come from
the provider info, and the ``canary`` command is an entry point. Each is written here literally, as it
was stored by earlier releases, so a move that forgets an alias fails this test.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Classpaths Airflow has stored for triggers in flight (trigger table, asset watchers).
STORED_TRIGGERS = [
    "canary_airflow.triggers.CanaryObserveTrigger",
    "canary_airflow.triggers.EndpointLeaseTrigger",
    "canary_airflow.serving_changes.ServingChangeTrigger",
    "canary_airflow.registry_watch.RegistryWatchTrigger",
]


def import_path(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", STORED_TRIGGERS)
def test_stored_trigger_classpaths_import_and_are_what_the_triggers_serialize(path):
    cls = import_path(path)
    assert f"{cls.__module__}.{cls.__qualname__}" == path  # serialize() writes exactly this path


def test_provider_hook_class_paths_import():
    from canary_airflow.provider import get_provider_info

    paths = [c["hook-class-name"] for c in get_provider_info()["connection-types"]]
    assert len(paths) >= 5
    for path in paths:
        assert isinstance(import_path(path), type), path


def test_the_canary_entry_point_imports():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"canary": "canary.cli:main"}
    module, _, func = scripts["canary"].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
