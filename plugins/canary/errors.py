"""Typed errors of the core. Branch on the type, never on the message."""

from __future__ import annotations


class CanaryError(Exception):
    """Base class of every error raised by canary-rollouts."""


class SpecError(CanaryError):
    """A rollout spec is invalid; ``problems`` holds one ``(location, message)`` per problem."""

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class ConfigError(CanaryError):
    """A backend, connection or option is configured wrongly (e.g. an unknown backend name)."""


class BackendError(CanaryError):
    """A backend call failed; the message names the backend, the resource and the response."""

    def __init__(self, backend: str, message: str, *, status: int | None = None) -> None:
        self.backend = backend
        self.status = status
        super().__init__(f"{backend}: {message}")


class ChangeFailedError(BackendError):
    """A change the backend accepted ended in failure (e.g. a SageMaker update that went ``Failed``).

    Waiting or polling again will not help; a new attempt of the change might.
    """


class NoDataError(BackendError):
    """A metrics backend returned no data for a version: never read as healthy."""


class UnknownVersionError(CanaryError):
    """The registry does not know a model version or alias."""

    def __init__(self, model: str, ref: str, known: list[str] | None = None) -> None:
        self.model = model
        self.ref = ref
        self.known = known or []
        hint = f" (known: {', '.join(self.known)})" if self.known else ""
        if ref:
            super().__init__(f"model {model!r} has no version or alias {ref!r}{hint}")
        else:
            super().__init__(f"model {model!r} is not registered")


class RequestError(CanaryError):
    """A rollout request (DAG run conf) is invalid; ``field`` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
