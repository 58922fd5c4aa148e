"""The registry watcher: an asset watcher's trigger that fires when a model gets a new version or an alias moves.

It runs in the triggerer for as long as the dispatcher DAG (``canary_registry_events``) is unpaused,
polls the spec's registry every ``poll_interval_seconds`` through the core's registry interface and
fires ``{"model", "version", "cause", "detail"}``; Airflow records that as an event of the model's
asset, which starts a run of the dispatcher. The watermark (what was already reported) is kept in
the asset's state store when the triggerer provides one, so a restarted watcher does not report the
same change again; without one it reports the newest version after the champion once, and the
dispatcher skips what was already rolled out or is running. Registry failures never end the watch:
it logs them and polls again with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from canary.spec import defaults
from canary.starts.registry_events import Watermark, poll_registry
from canary_airflow.polling import Failed, Polled, PollPolicy, poll_loop

#: Upper bound of the wait between polls after repeated failures.
MAX_BACKOFF_SECONDS = defaults.REGISTRY_WATCH_MAX_BACKOFF_S
#: The key of the watermark in the asset's state store.
WATERMARK_KEY = "canary_registry_watermark"


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

    def _store(self) -> Any:
        return getattr(self, "asset_state_store", None)

    async def _load_watermark(self) -> Watermark | None:
        store = self._store()
        if store is None:
            return None
        try:
            return Watermark.from_dict(await store.aget(WATERMARK_KEY))
        except Exception as err:  # the store is an optimisation: never let it stop the watch
            self.log.warning("registry watch %s: cannot read the stored watermark (%s); starting afresh",
                             self.model, err)
            return None

    async def _save_watermark(self, watermark: Watermark) -> None:
        store = self._store()
        if store is None:
            return
        try:
            await store.aset(WATERMARK_KEY, {**watermark.to_dict(), "watch": self.watch})
        except Exception as err:
            self.log.warning("registry watch %s: cannot store the watermark (%s)", self.model, err)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from canary_airflow.hooks import CanaryRegistryHook

        watermark = await self._load_watermark()
        self.log.info("registry watch %s: %s every %gs, from %s", self.model,
                      f"alias {self.alias!r}" if self.watch == "alias" else "new versions",
                      self.poll_interval_seconds, watermark or "the champion")
        client: Any = None

        async def poll() -> tuple[dict[str, Any] | None, Watermark | None]:
            nonlocal client
            if client is None:
                hook = CanaryRegistryHook(self.registry["name"], self.registry["conn_id"],
                                          **self.registry.get("options", {}))
                client = await hook.aclient()
            return await asyncio.to_thread(poll_registry, client, self.model, watch=self.watch, alias=self.alias,
                                           watermark=watermark)

        policy = PollPolicy(interval_s=self.poll_interval_seconds, backoff_base_s=self.poll_interval_seconds,
                            max_backoff_s=MAX_BACKOFF_SECONDS)
        # A watcher must outlive any registry outage or misconfiguration: every error is retried, for ever.
        async for step in poll_loop(poll, policy, retry_on=(Exception,)):
            if isinstance(step, Failed):
                self.log.warning("registry watch %s: poll failed (%d in a row), next try in %gs: %s", self.model,
                                 step.failures, policy.backoff_s(step.failures), step.error)
                continue
            assert isinstance(step, Polled)
            event, after = step.value
            if event is not None:
                self.log.info("registry watch %s: %s", self.model, event["detail"])
                yield TriggerEvent(event)
            if after != watermark:
                # Stored after the event is handed over: a crash in between repeats it, never loses it.
                await self._save_watermark(after)
                watermark = after

__all__ = ["MAX_BACKOFF_SECONDS", "RegistryWatchTrigger"]
