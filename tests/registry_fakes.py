"""An in-memory registry at the ``ModelRegistry`` interface (plus tags and alias lookup), for watcher tests.

Registered as the registry backend ``memory`` for one test by :func:`install`; the backend option ``key`` picks
the shared instance in :data:`REGISTRIES`, so a test can change the registry a trigger polls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canary.backends import KNOWN_BACKENDS
from canary.backends.base import ConnInfo
from canary.backends.options import BACKEND_OPTIONS, BackendOptions
from canary.errors import UnknownVersionError


class MemoryRegistry:
    """A registry at the interface: versions in order, aliases, tags; ``fail`` makes every read raise."""

    def __init__(self, versions: list[str], *, champion: str | None = "1", aliases: Mapping[str, str] | None = None,
                 tags: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.versions = list(versions)
        self.aliases = {**({"champion": champion} if champion else {}), **(aliases or {})}
        self.tags = {v: dict((tags or {}).get(v, {})) for v in versions}
        self.fail: Exception | None = None

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def resolve(self, model: str, ref: str) -> str:
        self._check()
        if ref in self.aliases:
            return self.aliases[ref]
        if ref in self.versions:
            return ref
        raise UnknownVersionError(model, ref, [*self.versions, *sorted(self.aliases)])

    def champion(self, model: str) -> str | None:
        self._check()
        return self.aliases.get("champion")

    def list_versions(self, model: str) -> list[str]:
        self._check()
        return list(self.versions)

    def alias_version(self, model: str, alias: str) -> str | None:
        self._check()
        return self.aliases.get(alias)

    def get_tags(self, model: str, version: str) -> dict[str, str]:
        self._check()
        return dict(self.tags[version])

    def promote(self, model: str, version: str, *, run_id: str, summary: Mapping[str, Any]) -> None:
        raise AssertionError("the dispatcher never writes to the registry")

    def record_rollback(self, model: str, version: str, *, run_id: str, reason: str,
                        summary: Mapping[str, Any]) -> None:
        raise AssertionError("the dispatcher never writes to the registry")


#: Shared instances by key (the ``key`` backend option).
REGISTRIES: dict[str, MemoryRegistry] = {}


def build(conn: ConnInfo, *, key: str) -> MemoryRegistry:
    """The backend factory: return the shared instance named by ``key``."""
    return REGISTRIES[key]


class MemoryOptions(BackendOptions):
    """The ``memory`` registry's one option: which shared instance of :data:`REGISTRIES` to use."""

    key: str


def install(monkeypatch: Any) -> None:
    """Register the backend for one test (``monkeypatch`` removes it again, so no other test sees it)."""
    monkeypatch.setitem(KNOWN_BACKENDS["registry"], "memory", "registry_fakes:build")
    monkeypatch.setitem(BACKEND_OPTIONS["registry"], "memory", MemoryOptions)
