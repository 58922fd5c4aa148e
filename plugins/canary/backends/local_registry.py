"""The embedded model registry: versions, aliases, tags and rollout history in one JSON file.

Writes are atomic (temp file + ``os.replace``) under an exclusive ``fcntl`` lock on a side file, so
concurrent writers (several Airflow workers, the nightly DAG) never lose an update or corrupt it.

File layout::

    {"models": {"<model>": {"versions": {"<version>": {"created_at_s": ..., "tags": {...}}},
                            "aliases": {"champion": "<version>", ...},
                            "history": [{"event": "promoted" | "rolled_back", ...}]}}}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from canary.backends.base import ConnInfo, summary_tag
from canary.errors import BackendError, ConfigError, UnknownVersionError
from canary.spec import defaults

CHAMPION = defaults.CHAMPION_ALIAS
#: Tag keys written on rollout outcomes (the same names the MLflow backend uses).
TAG_RESULT = "rollout.result"
TAG_RUN_ID = "rollout.run_id"
TAG_REASON = "rollout.reason"
TAG_SUMMARY = "rollout.summary"


def registry_path(conn: ConnInfo) -> Path:
    """Return the registry file named by a connection (``extra.path``, else ``host``)."""
    raw = conn.extra.get("path") or conn.host
    if not raw:
        raise ConfigError(f"connection {conn.conn_id!r}: the local registry needs extra.path (a JSON file path)")
    return Path(str(raw))


class LocalModelRegistry:
    """A :class:`~canary.backends.base.ModelRegistry` in a local JSON file."""

    def __init__(self, conn: ConnInfo, **options: Any) -> None:
        if options:
            raise ConfigError(f"local registry takes no options, got {sorted(options)}")
        self.path = registry_path(conn)

    # -- file access -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"models": {}}
        except (OSError, json.JSONDecodeError) as err:
            raise BackendError("local registry", f"cannot read {self.path}: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise BackendError("local registry", f"{self.path} is not a registry file (no 'models' mapping)")
        return data

    def _write(self, data: Mapping[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        with self._locked():
            data = self._read()
            yield data
            self._write(data)

    @staticmethod
    def _model(data: Mapping[str, Any], model: str) -> dict[str, Any]:
        try:
            return data["models"][model]
        except KeyError:
            raise UnknownVersionError(model, "") from None

    @staticmethod
    def _require_version(entry: Mapping[str, Any], model: str, version: str) -> None:
        if version not in entry["versions"]:
            raise UnknownVersionError(model, version, list(entry["versions"]))

    # -- the ModelRegistry protocol -----------------------------------------------------------------

    def resolve(self, model: str, ref: str) -> str:
        entry = self._model(self._read(), model)
        if ref in entry["versions"]:
            return ref
        if ref in entry["aliases"]:
            return str(entry["aliases"][ref])
        raise UnknownVersionError(model, ref, [*entry["versions"], *entry["aliases"]])

    def champion(self, model: str) -> str | None:
        entry = self._read()["models"].get(model)
        return None if entry is None else entry["aliases"].get(CHAMPION)

    def list_versions(self, model: str) -> list[str]:
        entry = self._read()["models"].get(model)
        return [] if entry is None else list(entry["versions"])

    def promote(self, model: str, version: str, *, run_id: str, summary: Mapping[str, Any]) -> None:
        with self._update() as data:
            entry = self._model(data, model)
            self._require_version(entry, model, version)
            previous = entry["aliases"].get(CHAMPION)
            entry["aliases"][CHAMPION] = version
            entry["versions"][version]["tags"].update({
                TAG_RESULT: "promoted", TAG_RUN_ID: run_id, TAG_SUMMARY: summary_tag(summary)})
            entry["history"].append({"event": "promoted", "version": version, "previous_champion": previous,
                                     "run_id": run_id, "at_s": time.time()})

    def record_rollback(self, model: str, version: str, *, run_id: str, reason: str,
                        summary: Mapping[str, Any]) -> None:
        with self._update() as data:
            entry = self._model(data, model)
            self._require_version(entry, model, version)
            entry["versions"][version]["tags"].update({
                TAG_RESULT: "rolled_back", TAG_RUN_ID: run_id, TAG_REASON: reason,
                TAG_SUMMARY: summary_tag(summary)})
            entry["history"].append({"event": "rolled_back", "version": version, "reason": reason,
                                     "run_id": run_id, "at_s": time.time()})

    # -- administration (CLI, demo, tests) -----------------------------------------------------------

    def register_version(self, model: str, version: str, *, tags: Mapping[str, str] | None = None) -> None:
        """Add ``version`` (no-op if present; tags are merged)."""
        with self._update() as data:
            entry = data["models"].setdefault(model, {"versions": {}, "aliases": {}, "history": []})
            record = entry["versions"].setdefault(version, {"created_at_s": time.time(), "tags": {}})
            record["tags"].update(dict(tags or {}))

    def set_alias(self, model: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""
        with self._update() as data:
            entry = self._model(data, model)
            self._require_version(entry, model, version)
            entry["aliases"][alias] = version

    def alias_version(self, model: str, alias: str) -> str | None:
        """Return the version ``alias`` names; None if the alias is not set or the model not registered."""
        entry = self._read()["models"].get(model)
        version = None if entry is None else entry["aliases"].get(alias)
        return None if version is None else str(version)

    def get_tags(self, model: str, version: str) -> dict[str, str]:
        entry = self._model(self._read(), model)
        self._require_version(entry, model, version)
        return dict(entry["versions"][version]["tags"])

    def history(self, model: str) -> list[dict[str, Any]]:
        entry = self._read()["models"].get(model)
        return [] if entry is None else list(entry["history"])
