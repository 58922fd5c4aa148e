"""Event-driven rollout starts: what the registry watcher reports, and what an event may start.

Two halves, both pure:

- :func:`poll_registry` checks a registry once for a watcher: a version registered after the last
  one seen (``new_version``) or an alias that moved (``alias``). Its :class:`Watermark` is all the
  state (the Airflow watcher keeps it in the asset's state store); a watcher that has none yet
  measures from the champion, so it reports the newest version after the champion once and the
  dispatcher skips it if it was already rolled out.
- :func:`plan_dispatch` turns a batch of asset events (from the watcher or pushed through
  ``POST /api/v2/assets/events``) into decisions: each event is validated (bad ones are refused,
  naming the field), and a model gets at most one rollout per batch, only for a version that the
  nightly pick-up would also call a candidate (:func:`canary.starts.nightly.candidates`: registered after
  the champion and never rolled out) and only when no rollout of it is queued or running.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from canary.backends.local_registry import TAG_RESULT
from canary.errors import CanaryError, RequestError, UnknownVersionError
from canary.spec import defaults
from canary.starts.nightly import TaggedRegistry, candidates

ASSET_PREFIX = "canary_registry__"
#: A private ("x-") scheme: Airflow leaves it as it is instead of loading every provider's URI handlers.
URI_SCHEME = "x-canary-registry"
#: Causes a watcher reports; pushed events may name their own (free text).
CAUSE_NEW_VERSION = "new_version"
CAUSE_ALIAS_MOVED = "alias_moved"
MAX_VERSION_CHARS = 200  # the rollout form's limit for ``version``
MAX_REASON_CHARS = 500  # the rollout form's limit for ``reason``
#: Keys Airflow adds to asset events itself.
_AIRFLOW_KEYS = frozenset({"from_rest_api", "from_trigger", "payload"})


def asset_name(model: str) -> str:
    """Return the name of the asset whose events start rollouts of ``model``."""
    return f"{ASSET_PREFIX}{model}"


def asset_uri(model: str) -> str:
    """Return the URI of that asset (``x-canary-registry://<model>``)."""
    return f"{URI_SCHEME}://{model}"


def model_of_asset(name: str) -> str | None:
    """Return the model an asset name belongs to, None for other assets."""
    return name.removeprefix(ASSET_PREFIX) if name.startswith(ASSET_PREFIX) else None


class WatchableRegistry(TaggedRegistry, Protocol):
    """A registry a watcher can poll: tags and alias lookup (the local and MLflow registries)."""

    def alias_version(self, model: str, alias: str) -> str | None:
        """Return the version ``alias`` names; None if the alias is not set or the model not registered."""


# -- the watcher ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Watermark:
    """What a watcher has already reported (or taken as its starting point).

    :param last_version: ``new_version``: the newest version reported or measured from.
    :param alias_version: ``alias``: the version the alias named when last reported (None: unset).
    """

    last_version: str | None = None
    alias_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Watermark | None:
        """Rebuild a stored watermark; None for anything that is not one (then the watcher starts afresh)."""
        if not isinstance(data, Mapping):
            return None
        values = {k: data.get(k) for k in ("last_version", "alias_version")}
        if any(v is not None and not isinstance(v, str) for v in values.values()):
            return None
        return cls(**values)


def poll_registry(registry: WatchableRegistry, model: str, *, watch: str, alias: str,
                  watermark: Watermark | None) -> tuple[dict[str, str] | None, Watermark]:
    """Check the registry once; return the event to fire (or None) and the watermark after it.

    The event is ``{"model", "version", "cause", "detail"}``. Raises what the registry raises.
    """
    if watch == "alias":
        target = registry.alias_version(model, alias)
        previous = watermark.alias_version if watermark else None
        after = Watermark(alias_version=target)
        if target is None or target == previous:
            return None, after
        detail = (f"alias {alias!r} moved from version {previous} to {target}" if previous
                  else f"alias {alias!r} names version {target}")
        return {"model": model, "version": target, "cause": CAUSE_ALIAS_MOVED, "detail": detail}, after
    if watch != "new_version":
        raise ValueError(f"watch must be 'new_version' or 'alias', got {watch!r}")
    versions = registry.list_versions(model)
    if watermark is not None and watermark.last_version in versions:
        since, what = watermark.last_version, "the last version seen"
    else:
        since, what = registry.champion(model), "the champion"
        if since not in versions:  # no champion yet: nothing to roll out against; start from the newest
            return None, Watermark(last_version=versions[-1] if versions else None)
    newer = versions[versions.index(since) + 1:]
    if not newer:
        return None, Watermark(last_version=since)
    newest = newer[-1]
    also = f" (newest of {', '.join(newer)})" if len(newer) > 1 else ""
    detail = f"version {newest} registered after {what} ({since}){also}"
    return ({"model": model, "version": newest, "cause": CAUSE_NEW_VERSION, "detail": detail},
            Watermark(last_version=newest))


# -- the dispatcher ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AssetEventInput:
    """One asset event as the dispatcher received it."""

    asset: str
    timestamp: str  # ISO 8601
    extra: Any


@dataclass(frozen=True, kw_only=True)
class RegistryEvent:
    """A validated event: roll out ``version`` (a version or an alias) of ``model``."""

    model: str
    version: str
    cause: str
    detail: str
    source: str  # "watcher", "REST API" or "asset event"
    dry_run: bool = False


def parse_event(item: AssetEventInput, *, known_models: Collection[str]) -> RegistryEvent:
    """Validate one event; raise :class:`RequestError` naming the field and the fix.

    The watcher's events carry their fields under ``payload`` (Airflow wraps trigger events so);
    pushed events carry them at the top level of ``extra``. Unknown keys are ignored.
    """
    extra = item.extra
    if not isinstance(extra, Mapping):
        raise RequestError("extra", f"must be a JSON object, got {type(extra).__name__}")
    if extra.get("from_trigger") is True and isinstance(extra.get("payload"), Mapping):
        fields, source = extra["payload"], "watcher"
    else:
        fields = {k: v for k, v in extra.items() if k not in _AIRFLOW_KEYS}
        source = "REST API" if extra.get("from_rest_api") is True else "asset event"
    example = '{"model": "<model>", "version": "<version>"}'
    model = fields.get("model")
    if model is None:
        raise RequestError("model", f"is missing; the event's extra must be {example}")
    if not isinstance(model, str) or not model:
        raise RequestError("model", f"must be a non-empty string, got {model!r}")
    if model not in known_models:
        known = ", ".join(sorted(known_models)) or "none"
        raise RequestError("model", f"unknown model {model!r}: no spec with schedule.on_registry_event.enabled "
                                    f"(known: {known})")
    owner = model_of_asset(item.asset)
    if owner != model:
        raise RequestError("model", f"{model!r} does not match asset {item.asset!r}; post events for {model!r} "
                                    f"to asset {asset_name(model)!r}")
    version = fields.get("version")
    if version is None:
        raise RequestError("version", f"is missing; the event's extra must be {example}")
    if not isinstance(version, str) or not version.strip():
        hint = f' (quote it: "{version}")' if isinstance(version, int) and not isinstance(version, bool) else ""
        raise RequestError("version", f"must be a non-empty string, got {version!r}{hint}")
    if len(version) > MAX_VERSION_CHARS:
        raise RequestError("version", f"must be at most {MAX_VERSION_CHARS} characters, got {len(version)}")
    texts = {}
    for key in ("cause", "detail", "reason"):
        value = fields.get(key, "")
        if not isinstance(value, str):
            raise RequestError(key, f"must be a string, got {value!r}")
        texts[key] = value
    dry_run = fields.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise RequestError("dry_run", f"must be true or false, got {dry_run!r}")
    return RegistryEvent(model=model, version=version.strip(), cause=texts["cause"] or "pushed",
                         detail=texts["detail"] or texts["reason"], source=source, dry_run=dry_run)


@dataclass(frozen=True, kw_only=True)
class EventChoice:
    """What the dispatcher did with one event: start, skip (with why), refuse (bad input) or error."""

    action: str  # "start" | "skip" | "refuse" | "error"
    reason: str
    asset: str
    timestamp: str
    model: str | None = None
    version: str | None = None  # as resolved by the registry when it could be
    dag_id: str | None = None
    run_id: str | None = None
    conf: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")


def event_run_id(version: str, timestamp: str) -> str:
    """Return the run id of an event-started rollout: the same for the same event, so a retry starts none."""
    return _RUN_ID_UNSAFE.sub("_", f"registry__{version}__{timestamp}")[:250]


def _conf(event: RegistryEvent, version: str) -> dict[str, Any]:
    what = event.detail or f"{event.version} ({event.cause})"
    reason = f"registry event ({event.source}, {event.cause}): {what}"
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    conf: dict[str, Any] = {"version": version, "reason": reason}
    if event.dry_run:
        conf["dry_run"] = True
    return conf


def plan_dispatch(items: Sequence[AssetEventInput], *, known_models: Collection[str],
                  registry_for: Callable[[str], WatchableRegistry],
                  active_runs_for: Callable[[str], int]) -> list[EventChoice]:
    """Decide every event of a batch (oldest first); never raises for one bad event or model.

    :param known_models: models whose spec opts in (``schedule.on_registry_event.enabled``).
    :param registry_for: builds the registry of a model's spec (may raise :class:`CanaryError`).
    :param active_runs_for: number of queued or running rollout runs of a model.
    """
    ordered = sorted(items, key=lambda i: i.timestamp)
    choices: dict[int, EventChoice] = {}
    per_model: dict[str, list[tuple[int, RegistryEvent]]] = {}
    for index, item in enumerate(ordered):
        try:
            event = parse_event(item, known_models=known_models)
        except RequestError as err:
            choices[index] = EventChoice(action="refuse", reason=str(err), asset=item.asset,
                                         timestamp=item.timestamp, model=model_of_asset(item.asset))
            continue
        per_model.setdefault(event.model, []).append((index, event))
    for model, events in per_model.items():
        dag_id = defaults.rollout_dag_id(model)
        decided = _decide_model(model, dag_id, events, ordered, registry_for, active_runs_for)
        choices.update(decided)
    return [choices[i] for i in range(len(ordered))]


def _decide_model(model: str, dag_id: str, events: list[tuple[int, RegistryEvent]],
                  items: Sequence[AssetEventInput], registry_for: Callable[[str], WatchableRegistry],
                  active_runs_for: Callable[[str], int]) -> dict[int, EventChoice]:
    def choice(index: int, action: str, reason: str, version: str | None = None, **more: Any) -> EventChoice:
        item = items[index]
        return EventChoice(action=action, reason=reason, asset=item.asset, timestamp=item.timestamp, model=model,
                           version=version, dag_id=dag_id, **more)

    active = active_runs_for(model)
    if active:
        why = f"{active} rollout run(s) of {dag_id} already queued or running"
        return {i: choice(i, "skip", why, e.version) for i, e in events}
    try:
        registry = registry_for(model)
        found = candidates(registry, model)
        champion = registry.champion(model)
    except LookupError as err:  # no champion, or the champion is not among the versions
        return {i: choice(i, "skip", str(err), e.version) for i, e in events}
    except CanaryError as err:
        return {i: choice(i, "error", f"registry: {err}", e.version) for i, e in events}
    out: dict[int, EventChoice] = {}
    startable: list[tuple[int, RegistryEvent, str]] = []
    for index, event in events:
        try:
            version = registry.resolve(model, event.version)
            if version in found:
                startable.append((index, event, version))
                continue
            if version == champion:
                why = f"{version} is already the champion"
            elif TAG_RESULT in (tags := registry.get_tags(model, version)):
                why = f"{version} was already rolled out ({TAG_RESULT}={tags[TAG_RESULT]})"
            else:
                why = f"{version} was registered before champion {champion}: not a candidate"
            out[index] = choice(index, "skip", why, version)
        except UnknownVersionError as err:
            out[index] = choice(index, "refuse", f"version: {err}", event.version)
        except CanaryError as err:
            out[index] = choice(index, "error", f"registry: {err}", event.version)
    if startable:
        # One rollout per model and batch: the newest candidate (registry order), from its first event.
        newest = max(startable, key=lambda s: found.index(s[2]))[2]
        first = next(s for s in startable if s[2] == newest)
        for index, _event, version in startable:
            if index != first[0]:
                why = (f"duplicate of an earlier event for {version} in this batch" if version == newest
                       else f"superseded by newer version {newest} in the same batch")
                out[index] = choice(index, "skip", why, version)
        index, event, version = first
        out[index] = choice(index, "start", f"{version}: {event.detail or event.cause} (after champion {champion}, "
                                            "not rolled out yet)", version,
                            run_id=event_run_id(version, items[index].timestamp), conf=_conf(event, version))
    return out


def summarize(choices: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group decisions for the dispatcher's report."""
    groups = {"start": "started", "skip": "skipped", "refuse": "refused", "error": "errors"}
    report: dict[str, list[dict[str, Any]]] = {name: [] for name in groups.values()}
    for c in choices:
        report[groups[c["action"]]].append(dict(c))
    return report


__all__ = [
    "ASSET_PREFIX", "AssetEventInput", "EventChoice", "RegistryEvent", "WatchableRegistry", "Watermark",
    "asset_name", "asset_uri", "event_run_id", "model_of_asset", "parse_event", "plan_dispatch", "poll_registry",
    "summarize",
]
