"""The nightly pick-up: which models get a rollout tonight, which version, and why the others do not.

A candidate is a version registered after the champion (registry order, oldest first) that carries
no ``rollout.result`` tag, i.e. was never rolled out (promoted or rolled back). The newest candidate
of a model is rolled out; with ``force`` tagged versions count as candidates again. A model with a
rollout already queued or running is skipped, so the schedule never starts a second one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from canary.backends.base import ModelRegistry
from canary.backends.local_registry import TAG_RESULT
from canary.errors import CanaryError


class TaggedRegistry(ModelRegistry, Protocol):
    """A registry that also reads a version's tags (the local and MLflow registries do)."""

    def get_tags(self, model: str, version: str) -> dict[str, str]:
        """Return the tags of ``model`` ``version``."""


@dataclass(frozen=True, kw_only=True)
class NightlyChoice:
    """The decision for one model: start a rollout of ``version``, or skip it, with the reason."""

    model: str
    dag_id: str
    action: str  # "start" | "skip" | "error"
    reason: str
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidates(registry: TaggedRegistry, model: str, *, force: bool = False) -> list[str]:
    """Return the versions after the champion not rolled out yet (all after it with ``force``), oldest first.

    Raises :class:`LookupError` when the model has no champion or the champion is not among its versions.
    """
    champion = registry.champion(model)
    if champion is None:
        raise LookupError(f"model {model!r} has no champion")
    versions = registry.list_versions(model)
    if champion not in versions:
        raise LookupError(f"champion {champion!r} of model {model!r} is not among its versions")
    newer = versions[versions.index(champion) + 1:]
    return [v for v in newer if force or TAG_RESULT not in registry.get_tags(model, v)]


def choose(model: str, dag_id: str, registry: TaggedRegistry, *, active_runs: int, force: bool = False) -> NightlyChoice:
    """Decide for one model; registry failures become an ``error`` choice, never an exception."""
    if active_runs:
        return NightlyChoice(model=model, dag_id=dag_id, action="skip",
                             reason=f"{active_runs} rollout run(s) of {dag_id} already queued or running")
    try:
        found = candidates(registry, model, force=force)
    except LookupError as err:
        return NightlyChoice(model=model, dag_id=dag_id, action="skip", reason=str(err))
    except CanaryError as err:
        return NightlyChoice(model=model, dag_id=dag_id, action="error", reason=f"registry: {err}")
    champion = registry.champion(model)
    if not found:
        reason = (f"no version registered after champion {champion}" if force
                  else f"no version after champion {champion} that was not rolled out yet")
        return NightlyChoice(model=model, dag_id=dag_id, action="skip", reason=reason)
    newest = found[-1]
    note = f" (newest of {', '.join(found)})" if len(found) > 1 else ""
    why = "forced re-roll" if force else "not rolled out yet"
    return NightlyChoice(model=model, dag_id=dag_id, action="start", version=newest,
                         reason=f"{newest} registered after champion {champion}, {why}{note}")


def is_due(cron: str, at: datetime) -> bool:
    """Return whether ``cron`` (UTC) fires at the minute of ``at`` (a scheduled nightly run's logical time)."""
    from croniter import croniter  # an Airflow dependency

    return bool(croniter.match(cron, at.astimezone(UTC).replace(second=0, microsecond=0)))


def nightly_time_choice(model: str, dag_id: str, *, own_cron: str | None, default_cron: str,
                        run_at: datetime | None) -> NightlyChoice | None:
    """Return a ``skip`` choice when a scheduled run is not the model's nightly time, else None (take part).

    ``run_at`` is the scheduled run's logical time; None (a manual run) checks every opted-in model.
    """
    cron = own_cron or default_cron
    if run_at is None or is_due(cron, run_at):
        return None
    source = "schedule.nightly_cron" if own_cron else "$CANARY_NIGHTLY_CRON"
    return NightlyChoice(model=model, dag_id=dag_id, action="skip",
                         reason=f"not due at {run_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC (its time: {cron!r} "
                                f"from {source})")


_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")


def rollout_run_id(nightly_run_id: str, version: str) -> str:
    """Return the run id of a nightly-started rollout (stable, so a retried trigger does not start two)."""
    return _RUN_ID_UNSAFE.sub("_", f"nightly__{version}__{nightly_run_id}")[:250]


def summarize(choices: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Group choices for the nightly report."""
    return {"started": [dict(c) for c in choices if c["action"] == "start"],
            "skipped": [dict(c) for c in choices if c["action"] == "skip"],
            "errors": [dict(c) for c in choices if c["action"] == "error"]}


__all__ = ["NightlyChoice", "TaggedRegistry", "candidates", "choose", "is_due", "nightly_time_choice",
           "rollout_run_id", "summarize"]
