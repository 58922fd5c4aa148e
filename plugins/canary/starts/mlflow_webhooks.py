"""MLflow webhooks as the push path: check a delivery's signature, turn it into a registry event.

MLflow 3 servers can POST registry events to a URL. With a webhook secret, each delivery carries
``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature:
v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<raw body>">``. A receiver calls
:func:`verify_delivery` on the raw body before reading it, then :func:`event_extra` for the
``extra`` of ``POST /api/v2/assets/events``. No HTTP server is part of this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from typing import Any

from canary.errors import CanaryError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
#: Deliveries older (or further in the future) than this are refused: a captured one cannot be replayed later.
MAX_AGE_SECONDS = 300.0
#: (entity, action) pairs that can start a rollout, and the cause they are reported as.
_CAUSES = {("model_version", "created"): "new_version", ("model_version_alias", "created"): "alias_moved"}


class WebhookRefusedError(CanaryError):
    """A webhook delivery was refused; ``field`` names the header or payload key at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def sign(secret: str, *, delivery_id: str, timestamp: str, body: bytes) -> str:
    """Return the ``X-MLflow-Signature`` value of a delivery (what the MLflow server sends)."""
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes, *, now_s: float,
                    max_age_s: float = MAX_AGE_SECONDS) -> None:
    """Refuse a delivery unless it is signed with ``secret`` and recent; raise :class:`WebhookRefusedError`.

    Header names are matched case-insensitively; the signature is compared in constant time.
    """
    if not secret:
        raise WebhookRefusedError("secret", "a webhook secret is required to verify deliveries")
    lower = {k.lower(): v for k, v in headers.items()}

    def header(name: str) -> str:
        value = lower.get(name.lower())
        if not value:
            raise WebhookRefusedError(name, "header is missing (is the webhook created with a secret?)")
        return value

    signature, timestamp, delivery_id = header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER), header(DELIVERY_ID_HEADER)
    version, _, encoded = signature.partition(",")
    if version != SIGNATURE_VERSION or not encoded:
        raise WebhookRefusedError(SIGNATURE_HEADER, f"expected '{SIGNATURE_VERSION},<base64>', got version {version!r}")
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise WebhookRefusedError(SIGNATURE_HEADER, "is not valid base64") from err
    expected = base64.b64decode(sign(secret, delivery_id=delivery_id, timestamp=timestamp, body=body).partition(",")[2])
    if not hmac.compare_digest(given, expected):
        raise WebhookRefusedError(SIGNATURE_HEADER, "does not match the body (wrong secret, or the body was altered)")
    try:
        sent_s = float(timestamp)
    except ValueError as err:
        raise WebhookRefusedError(TIMESTAMP_HEADER, f"must be Unix seconds, got {timestamp!r}") from err
    if not math.isfinite(sent_s):  # NaN compares as "not too old": it would switch the replay check off
        raise WebhookRefusedError(TIMESTAMP_HEADER, f"must be Unix seconds, got {timestamp!r}")
    if abs(now_s - sent_s) > max_age_s:
        raise WebhookRefusedError(TIMESTAMP_HEADER, f"delivery is {now_s - sent_s:.0f}s old; at most {max_age_s:.0f}s "
                                                    "is accepted (replay protection; check the clocks)")


def event_extra(body: bytes, *, model_for: Mapping[str, str]) -> dict[str, Any] | None:
    """Return the asset event ``extra`` for a verified delivery, or None for events that start nothing.

    :param model_for: MLflow registered model name -> spec model (they differ when a spec sets
        ``registered_model_name``); deliveries for other models return None.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise WebhookRefusedError("body", "is not JSON") from err
    except RecursionError as err:  # json.loads recurses once per nesting level
        raise WebhookRefusedError("body", "is nested too deeply") from err
    if not isinstance(payload, Mapping) or not isinstance(payload.get("data"), Mapping):
        raise WebhookRefusedError("data", "the payload has no 'data' object")
    kind = (payload.get("entity"), payload.get("action"))
    cause = _CAUSES.get(kind) if all(isinstance(part, str) for part in kind) else None  # a list is unhashable
    data = payload["data"]
    if cause is None or not isinstance(data.get("name"), str) or data["name"] not in model_for:
        return None
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise WebhookRefusedError("data.version", f"must be a non-empty string, got {version!r}")
    what = f"alias {data.get('alias')!r} set to version {version}" if cause == "alias_moved" else f"version {version} created"
    return {"model": model_for[data["name"]], "version": version, "cause": cause,
            "detail": f"MLflow webhook: {what} in {data['name']!r}"}


__all__ = ["MAX_AGE_SECONDS", "WebhookRefusedError", "event_extra", "sign", "verify_delivery"]
