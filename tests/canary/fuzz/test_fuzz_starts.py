"""Fuzz the push starts: registry asset events and MLflow webhook deliveries are refused naming the field."""

from __future__ import annotations

import json

from fuzz_inputs import FUZZ, GARBAGE, TEXT, mutated
from hypothesis import given
from hypothesis import strategies as st

from canary.errors import RequestError
from canary.starts.mlflow_webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRefusedError,
    event_extra,
    sign,
    verify_delivery,
)
from canary.starts.registry_events import (
    AssetEventInput,
    RegistryEvent,
    asset_name,
    parse_event,
    plan_dispatch,
)

SECRET = "s3cret"
NOW_S = 1_750_000_000.0
KNOWN = {"churn", "fraud"}
EVENT_EXTRA = {"model": "churn", "version": "3", "cause": "new_version", "detail": "d", "dry_run": False}
WATCHER_EXTRA = {"from_trigger": True, "payload": dict(EVENT_EXTRA)}
HEADER_NAMES = st.sampled_from([SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER, SIGNATURE_HEADER.lower(),
                                "Content-Type"]) | TEXT
WEBHOOK_PAYLOAD = {"entity": "model_version", "action": "created", "timestamp": "2025-01-01T00:00:00Z",
                   "data": {"name": "churn", "version": "3", "alias": "challenger", "tags": {}}}


class Registry:
    def list_versions(self, model: str) -> list[str]:
        return ["1", "2", "3"]

    def champion(self, model: str) -> str:
        return "1"

    def resolve(self, model: str, ref: str) -> str:
        from canary.errors import UnknownVersionError

        if ref not in ("1", "2", "3"):
            raise UnknownVersionError(model, ref, ["1", "2", "3"])
        return ref

    def get_tags(self, model: str, version: str) -> dict[str, str]:
        return {}

    def alias_version(self, model: str, alias: str) -> str | None:
        return None


EXTRAS = st.one_of(mutated(EVENT_EXTRA), mutated(WATCHER_EXTRA), GARBAGE)


@FUZZ
@given(extra=EXTRAS, asset=st.sampled_from([asset_name("churn"), asset_name("fraud"), "other"]) | TEXT)
def test_asset_event_is_parsed_or_refused_naming_the_field(extra, asset):
    item = AssetEventInput(asset=asset, timestamp="2025-01-01T00:00:00+00:00", extra=extra)
    try:
        event = parse_event(item, known_models=KNOWN)
    except RequestError as err:
        assert err.field in {"extra", "model", "version", "cause", "detail", "reason", "dry_run"}
        return
    assert isinstance(event, RegistryEvent) and event.model in KNOWN and event.version.strip()


@FUZZ
@given(extras=st.lists(EXTRAS, max_size=5))
def test_a_batch_of_bad_events_never_stops_the_dispatcher(extras):
    """One bad event is refused on its own: the batch is decided whole, one choice per event, at most one start."""
    items = [AssetEventInput(asset=asset_name("churn"), timestamp=f"2025-01-01T00:00:0{i}+00:00", extra=extra)
             for i, extra in enumerate(extras)]
    choices = plan_dispatch(items, known_models=KNOWN, registry_for=lambda _m: Registry(),
                            active_runs_for=lambda _m: 0)
    assert len(choices) == len(items)
    assert all(c.action in ("start", "skip", "refuse", "error") and c.reason for c in choices)
    assert sum(c.action == "start" for c in choices) <= 1
    json.dumps([c.to_dict() for c in choices])  # the dispatcher's report is JSON


def _signed(body: bytes, *, timestamp: str, delivery_id: str = "d-1") -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(SECRET, delivery_id=delivery_id, timestamp=timestamp, body=body),
            TIMESTAMP_HEADER: timestamp, DELIVERY_ID_HEADER: delivery_id}


@FUZZ
@given(headers=st.dictionaries(HEADER_NAMES, TEXT, max_size=5), body=st.binary(max_size=200),
       now_s=st.floats(allow_nan=True, allow_infinity=True) | st.just(NOW_S))
def test_unsigned_deliveries_are_refused_naming_the_header(headers, body, now_s):
    try:
        verify_delivery(SECRET, headers, body, now_s=now_s)
    except WebhookRefusedError as err:
        assert err.field in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER)
    else:
        raise AssertionError(f"an unsigned delivery passed: {headers!r}")


@FUZZ
@given(timestamp=TEXT | st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.just(f"{NOW_S:.0f}"),
       delivery_id=TEXT.filter(bool), body=st.binary(max_size=100))
def test_signed_deliveries_with_odd_timestamps_pass_only_when_recent(timestamp, delivery_id, body):
    """A correctly signed delivery still needs a finite timestamp within the replay window."""
    try:
        headers = _signed(body, timestamp=timestamp, delivery_id=delivery_id)
    except UnicodeEncodeError:
        return  # not sendable as an HTTP header either
    try:
        verify_delivery(SECRET, headers, body, now_s=NOW_S)
    except WebhookRefusedError as err:
        assert err.field in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_ID_HEADER)
        return
    assert abs(float(timestamp) - NOW_S) <= 300.0


@FUZZ
@given(payload=mutated(WEBHOOK_PAYLOAD) | GARBAGE)
def test_signed_payloads_with_mutated_json_are_an_extra_or_refused_naming_the_field(payload):
    body = json.dumps(payload).encode()
    verify_delivery(SECRET, _signed(body, timestamp=f"{NOW_S:.0f}"), body, now_s=NOW_S)
    try:
        extra = event_extra(body, model_for={"churn": "churn"})
    except WebhookRefusedError as err:
        assert err.field in ("body", "data", "data.version", "data.name", "entity", "action")
        return
    if extra is not None:
        event = parse_event(AssetEventInput(asset=asset_name(extra["model"]), timestamp="t", extra=extra),
                            known_models={"churn"})
        assert event.version == extra["version"].strip()


@FUZZ
@given(body=st.binary(max_size=200) | st.sampled_from([b"[" * 100_000, b'{"data": ' * 50_000]))
def test_arbitrary_webhook_bodies_are_refused_naming_the_field(body):
    try:
        event_extra(body, model_for={"churn": "churn"})
    except WebhookRefusedError as err:
        assert err.field in ("body", "data", "data.version", "data.name", "entity", "action")
