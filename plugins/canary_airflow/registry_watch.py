"""The registry watcher: an asset watcher's trigger that fires when a model gets a new version or an alias moves.

It runs in the triggerer for as long as the dispatcher DAG (``canary_registry_events``) is unpaused,
polls the spec's registry every ``poll_interval_seconds`` through the core's registry interface and
fires ``{"model", "version", "cause", "detail"}``; Airflow records that as an event of the model's
asset, which starts a run of the dispatcher. The watermark (what was already reported) lives in the
trigger: a restarted watcher starts from the champion again and reports the newest version after it
once, which the dispatcher skips when it was already rolled out or a rollout of the model is queued
or running. (Airflow 3.3's asset state store could keep the watermark across restarts; using it from
this watcher hung the triggerer and the API server of ``airflow standalone`` (Airflow 3.3.2, SQLite
metadata database) in a test run, so it is not used.) Registry failures never end the watch: it logs
them and polls again with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from canary.registry_events import Watermark, poll_registry

#: Upper bound of the wait between polls after repeated failures.
MAX_BACKOFF_SECONDS = 600.0


class RegistryWatchTrigger(BaseEventTrigger):
    """Poll a model registry; fire an event per new version (or alias move), forever.

    :param model: the model (spec name) to watch.
    :param registry: ``{"name", "conn_id", "options"}`` of the spec's registry backend.
    :param watch: ``new_version`` or ``alias``.
    :param alias: the alias to watch when ``watch`` is ``alias`` (e.g. ``challenger``).
    :param poll_interval_seconds: wait between polls.
    """

    def __init__(self, *, model: str, registry: dict[str, Any], watch: str, alias: str,
                 poll_interval_seconds: float) -> None:
        super().__init__()
        self.model = model
        self.registry = registry
        self.watch = watch
        self.alias = alias
        self.poll_interval_seconds = poll_interval_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"model": self.model, "registry": self.registry, "watch": self.watch, "alias": self.alias,
                 "poll_interval_seconds": self.poll_interval_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from canary_airflow.hooks import CanaryRegistryHook

        self.log.info("registry watch %s: %s every %gs", self.model,
                      f"alias {self.alias!r}" if self.watch == "alias" else "new versions after the champion",
                      self.poll_interval_seconds)
        watermark: Watermark | None = None
        client: Any = None
        failures = 0
        while True:
            try:
                if client is None:
                    hook = CanaryRegistryHook(self.registry["name"], self.registry["conn_id"],
                                              **self.registry.get("options", {}))
                    client = await hook.aclient()
                event, after = await asyncio.to_thread(poll_registry, client, self.model, watch=self.watch,
                                                       alias=self.alias, watermark=watermark)
            except Exception as err:  # a watcher must outlive any registry outage or misconfiguration
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, self.poll_interval_seconds * 2.0 ** (failures - 1))
                self.log.warning("registry watch %s: poll failed (%d in a row), next try in %gs: %s", self.model,
                                 failures, delay, err)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if event is not None:
                self.log.info("registry watch %s: %s", self.model, event["detail"])
                yield TriggerEvent(event)
            watermark = after
            await asyncio.sleep(self.poll_interval_seconds)


__all__ = ["MAX_BACKOFF_SECONDS", "RegistryWatchTrigger"]
