"""The typed ``options`` of every notifier (``notify[].options`` in a spec), one pydantic model each.

Checked when the spec is loaded (``canary validate``, DAG parse), so a missing address or a topic that is
not an ARN is a spec error naming the field and the fix, not a warning in the first task that notifies.
This module imports only pydantic and the standard library: DAG parse reads it, and must never import a
provider's SDK. Whether the Slack provider is installed is read from the installed distributions, without
importing anything.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: An address as SMTP needs it: something@domain (the mail server checks the rest).
EMAIL_PATTERN = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
#: Notifier -> the provider distribution that ships it.
PROVIDERS = {
    "http": "apache-airflow-providers-http",
    "smtp": "apache-airflow-providers-smtp",
    "sns": "apache-airflow-providers-amazon",
    "slack": "apache-airflow-providers-slack",
}


class NotifierOptions(BaseModel):
    """Base of the option models: unknown keys are refused, values are typed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HttpNotifyOptions(NotifierOptions):
    """``notifier: http``: a JSON POST of the notice to the connection's host plus ``endpoint``."""

    endpoint: str = Field("", description="the path on the connection's host, e.g. /hooks/rollouts")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("endpoint")
    @classmethod
    def _a_path(cls, endpoint: str) -> str:
        if "://" in endpoint:
            raise ValueError("must be a path such as /hooks/rollouts: the scheme and host are the connection's "
                             "(put them in the connection's host)")
        return endpoint


class SmtpNotifyOptions(NotifierOptions):
    """``notifier: smtp``: an e-mail through the connection's SMTP server."""

    to: Annotated[list[str], Field(min_length=1, description="a list of addresses, e.g. [oncall@example.com]")]
    from_email: str | None = Field(None, alias="from", description="the sender; default: the connection's "
                                                                   "from_email")
    cc: list[str] = Field(default_factory=list)

    @field_validator("to", "cc", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # one address is a list of one

    @field_validator("to", "cc")
    @classmethod
    def _valid_addresses(cls, addresses: list[str]) -> list[str]:
        bad = [a for a in addresses if not EMAIL_PATTERN.match(a)]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(repr(a) for a in bad)} (e.g. oncall@example.com)")
        return addresses

    @field_validator("from_email")
    @classmethod
    def _valid_sender(cls, sender: str | None) -> str | None:
        if sender is not None and not EMAIL_PATTERN.search(sender.rsplit("<", 1)[-1].rstrip(">")):
            raise ValueError(f"not an e-mail address: {sender!r} (e.g. canary@example.com)")
        return sender


class SnsNotifyOptions(NotifierOptions):
    """``notifier: sns``: a message published to an SNS topic (or endpoint) with the connection's credentials."""

    target_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:.+$",
                            description="the topic ARN, e.g. arn:aws:sns:eu-west-1:123456789012:rollouts")
    region_name: str | None = Field(None, description="default: the connection's region")


class SlackNotifyOptions(NotifierOptions):
    """``notifier: slack``: a message to a channel through the Slack provider's API connection."""

    channel: str = Field(pattern=r"^#?[A-Za-z0-9._-]+$", description="a channel name or id, e.g. '#ml-rollouts'")


NOTIFIER_OPTIONS: dict[str, type[NotifierOptions]] = {
    "http": HttpNotifyOptions,
    "smtp": SmtpNotifyOptions,
    "sns": SnsNotifyOptions,
    "slack": SlackNotifyOptions,
}


def provider_installed(notifier: str) -> bool:
    """Return whether the provider distribution that ships ``notifier`` is installed (nothing is imported)."""
    try:
        metadata.distribution(PROVIDERS[notifier])
    except metadata.PackageNotFoundError:
        return False
    return True


def _key(model: type[NotifierOptions], name: str) -> str:
    field = model.model_fields.get(name)
    return field.alias if field is not None and field.alias else name


def option_problems(notifier: str, options: Any) -> tuple[NotifierOptions | None, list[tuple[str, str]]]:
    """Validate ``notify[].options`` of ``notifier``; return the typed options and the problems.

    Locations are relative to ``notify[i].options``; each message says what is wrong and how to fix it.
    """
    model = NOTIFIER_OPTIONS[notifier]
    try:
        return model.model_validate(options), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(_key(model, str(p)) if i == 0 else str(p) for i, p in enumerate(e["loc"]))
            field = model.model_fields.get(str(e["loc"][0])) if e["loc"] else None
            hint = field.description if field is not None and field.description else ""
            if e["type"] == "extra_forbidden":
                allowed = ", ".join(_key(model, n) for n in model.model_fields)
                msg = f"unknown {notifier} notifier option (set to {e.get('input')!r}); allowed: {allowed}"
            elif e["type"] == "missing":
                msg = f"required by the {notifier} notifier: {hint}" if hint else f"required by the {notifier} notifier"
            elif e["type"] == "string_pattern_mismatch":
                msg = f"must be {hint}, got {e.get('input')!r}" if hint else f"{e['msg']}, got {e.get('input')!r}"
            elif e["type"] == "too_short" and hint:
                msg = f"must be {hint}, got {e.get('input')!r}"
            elif e["type"] == "value_error":  # ours: the message names the value and the fix
                msg = str(e["msg"]).removeprefix("Value error, ")
            else:
                msg = str(e["msg"]).replace("Input should be", "must be")
                msg = f"{msg}, got {e.get('input')!r}"
            problems.append((loc, msg))
        return None, problems


__all__ = ["NOTIFIER_OPTIONS", "PROVIDERS", "HttpNotifyOptions", "NotifierOptions", "SlackNotifyOptions",
           "SmtpNotifyOptions", "SnsNotifyOptions", "option_problems", "provider_installed"]
