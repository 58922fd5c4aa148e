"""One polling loop for every trigger that polls a backend (observe, endpoint lease, serving change, registry watch).

Each trigger says what one poll is and what its results mean; the loop owns what they share: the pause
between polls, backoff after failures, the error limit, and an absolute deadline (so a restarted
trigger never waits longer than the first one would have). It is an async generator of
:class:`Polled`, :class:`Failed`, :class:`GaveUp` and :class:`DeadlinePassed` steps; the trigger reacts
to each and ``return``\\ s when it has fired its event, which closes the loop. Every path sleeps at
least ``min_sleep_s`` before the next poll, so no configuration can make a trigger spin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from canary.spec import defaults

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class PollPolicy:
    """How often to poll, how to back off, and when to stop trying.

    After the ``n``-th failure in a row the pause is ``min(max_backoff_s, backoff_base_s * 2 ** (n - 1))``;
    after a successful poll it is ``interval_s``. Pauses never run past ``deadline_s`` and are never
    shorter than ``min_sleep_s``.
    """

    interval_s: float
    #: consecutive failures that end the loop with :class:`GaveUp` (None: retry for ever).
    max_consecutive_errors: int | None = None
    backoff_base_s: float = defaults.POLL_BACKOFF_BASE_S
    #: None: the poll interval (retrying is never slower than polling).
    max_backoff_s: float | None = None
    #: epoch seconds after which a poll that did not end the loop yields :class:`DeadlinePassed`.
    deadline_s: float | None = None
    min_sleep_s: float = defaults.POLL_MIN_SLEEP_S

    def backoff_s(self, failures: int) -> float:
        """Return the pause after ``failures`` consecutive failed polls (>= 1)."""
        cap = self.interval_s if self.max_backoff_s is None else self.max_backoff_s
        return min(cap, self.backoff_base_s * 2.0 ** (failures - 1))


@dataclass(frozen=True)
class Polled(Generic[T]):
    """A poll that succeeded: its value. The loop pauses ``interval_s`` and polls again."""

    value: T
    polls: int  # successful polls so far, this one included


@dataclass(frozen=True)
class Failed:
    """A poll that raised one of the retried errors; the loop backs off and polls again."""

    error: Exception
    failures: int  # consecutive failures, this one included


@dataclass(frozen=True)
class GaveUp:
    """``max_consecutive_errors`` polls in a row failed; the loop has ended."""

    error: Exception
    failures: int


@dataclass(frozen=True)
class DeadlinePassed:
    """The deadline passed and the last poll did not end the loop; the loop has ended."""

    last_error: Exception | None  # the last poll's error, if it failed


Step = Polled[Any] | Failed | GaveUp | DeadlinePassed


async def poll_loop(poll: Callable[[], Awaitable[T]], policy: PollPolicy, *,
                    retry_on: tuple[type[BaseException], ...]) -> AsyncIterator[Step]:
    """Poll until the consumer stops, the error limit is reached or the deadline passes.

    :param poll: one poll; errors of ``retry_on`` count as failures, any other error propagates.
    :param policy: intervals, backoff, error limit and deadline.
    :param retry_on: the exception types a later poll may cure (a backend that is briefly down).
    """
    polls = failures = 0
    while True:
        error: Exception | None = None
        try:
            value = await poll()
        except retry_on as err:
            failures += 1
            error = err  # type: ignore[assignment]
            if policy.max_consecutive_errors is not None and failures >= policy.max_consecutive_errors:
                yield GaveUp(err, failures)  # type: ignore[arg-type]
                return
            yield Failed(err, failures)  # type: ignore[arg-type]
            pause_s = policy.backoff_s(failures)
        else:
            polls, failures = polls + 1, 0
            yield Polled(value, polls)
            pause_s = policy.interval_s
        if policy.deadline_s is not None:
            remaining_s = policy.deadline_s - time.time()
            if remaining_s <= 0:
                yield DeadlinePassed(error)
                return
            pause_s = min(pause_s, remaining_s)
        await asyncio.sleep(max(policy.min_sleep_s, pause_s))


__all__ = ["DeadlinePassed", "Failed", "GaveUp", "PollPolicy", "Polled", "Step", "poll_loop"]
