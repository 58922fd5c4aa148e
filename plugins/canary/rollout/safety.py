"""Returning traffic to stable when the serving layer is failing: keep trying, then say what traffic may be."""

from __future__ import annotations

import time
from collections.abc import Callable

from canary.backends.base import TrafficRouter
from canary.errors import BackendError, CanaryError
from canary.spec import defaults


class StableNotRestoredError(BackendError):
    """Traffic could not be returned to stable within the deadline; ``traffic`` says what it may be."""

    def __init__(self, message: str, *, traffic: str) -> None:
        self.traffic = traffic
        super().__init__("serving", message)


def describe_traffic(router: TrafficRouter) -> str:
    """Return the endpoint's split as the serving layer reports it, or why it cannot be read."""
    try:
        weights = router.get_weights()
    except Exception as err:  # reading is best effort: the message must say "unknown", never raise
        return f"unknown (the serving layer does not answer: {err})"
    return ", ".join(f"{v} {w}%" for v, w in sorted(weights.items())) or "no version deployed"


def return_to_stable(router: TrafficRouter, stable: str, *, log: Callable[[str], None],
                     max_s: float = defaults.RETURN_TO_STABLE_MAX_S, first_delay_s: float = 1.0,
                     max_delay_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> int:
    """Set all traffic on ``stable``, retrying failures with backoff for up to ``max_s``; return the attempts.

    The call is declarative and idempotent, so retrying it is always safe. Each failure is logged with the
    split the serving layer reports (or that it cannot be read).

    :raises StableNotRestoredError: still failing after ``max_s``; its message says what traffic may be.
    """
    deadline_s = clock() + max_s
    delay_s, attempt = first_delay_s, 0
    while True:
        attempt += 1
        try:
            router.set_weights({stable: 100})
            if attempt > 1:
                log(f"traffic back on {stable} at attempt {attempt}")
            return attempt
        except CanaryError as err:
            traffic = describe_traffic(router)
            if clock() + delay_s > deadline_s:
                raise StableNotRestoredError(
                    f"could not return traffic to {stable} in {max_s:g}s ({attempt} attempts): {err}; traffic "
                    f"may still be: {traffic}. Set it by hand (all traffic on {stable}) if the serving layer "
                    "stays unreachable; the task's retries keep trying", traffic=traffic) from err
            log(f"returning traffic to {stable} failed (attempt {attempt}): {err}; traffic now: {traffic}; "
                f"again in {delay_s:g}s")
            sleep(delay_s)
            delay_s = min(2 * delay_s, max_delay_s)


__all__ = ["StableNotRestoredError", "describe_traffic", "return_to_stable"]
