"""The one polling loop every trigger shares: pauses, backoff, error limit, deadline (patched clock)."""

from __future__ import annotations

import asyncio

import pytest
from clock import PatchedClock

from canary.errors import BackendError
from canary_airflow.polling import DeadlinePassed, Failed, GaveUp, Polled, PollPolicy, poll_loop

Clock = PatchedClock


def scripted(outcomes: list[object]):
    """A poll that returns or raises the next scripted outcome."""
    it = iter(outcomes)

    async def poll() -> object:
        item = next(it)
        if isinstance(item, Exception):
            raise item
        return item

    return poll


def run(poll, policy: PollPolicy, *, stop_on=lambda step: False, retry_on=(BackendError,), max_steps: int = 50):
    """Collect the loop's steps until it ends, ``stop_on`` says so, or ``max_steps``."""

    async def collect() -> list[object]:
        steps: list[object] = []
        async for step in poll_loop(poll, policy, retry_on=retry_on):
            steps.append(step)
            if stop_on(step) or len(steps) >= max_steps:
                break
        return steps

    return asyncio.run(collect())


@pytest.mark.parametrize(("policy", "failures", "pause_s"), [
    (PollPolicy(interval_s=30.0), 1, 2.0),
    (PollPolicy(interval_s=30.0), 3, 8.0),
    (PollPolicy(interval_s=30.0), 5, 30.0),  # never slower than polling
    (PollPolicy(interval_s=30.0, backoff_base_s=30.0, max_backoff_s=600.0), 1, 30.0),
    (PollPolicy(interval_s=30.0, backoff_base_s=30.0, max_backoff_s=600.0), 4, 240.0),
    (PollPolicy(interval_s=30.0, backoff_base_s=30.0, max_backoff_s=600.0), 9, 600.0),
])
def test_backoff_doubles_from_its_base_up_to_its_cap(policy, failures, pause_s):
    assert policy.backoff_s(failures) == pause_s


def test_polls_every_interval_until_the_consumer_stops(monkeypatch):
    clock = Clock(monkeypatch)
    steps = run(scripted(["a", "b", "c"]), PollPolicy(interval_s=5.0), stop_on=lambda s: s.value == "c")
    assert [(type(s), s.value, s.polls) for s in steps] == [(Polled, "a", 1), (Polled, "b", 2), (Polled, "c", 3)]
    assert clock.sleeps == [5.0, 5.0]  # no pause after the consumer stopped


def test_failures_back_off_and_a_success_resets_the_count(monkeypatch):
    clock = Clock(monkeypatch)
    err = BackendError("fake", "down")
    steps = run(scripted([err, err, "ok", err, "done"]), PollPolicy(interval_s=30.0),
                stop_on=lambda s: isinstance(s, Polled) and s.value == "done")
    assert [type(s) for s in steps] == [Failed, Failed, Polled, Failed, Polled]
    assert [s.failures for s in steps if isinstance(s, Failed)] == [1, 2, 1]
    assert clock.sleeps == [2.0, 4.0, 30.0, 2.0]


def test_gives_up_after_the_error_limit_without_a_last_pause(monkeypatch):
    clock = Clock(monkeypatch)
    err = BackendError("fake", "down")
    steps = run(scripted([err] * 5), PollPolicy(interval_s=30.0, max_consecutive_errors=3))
    assert [type(s) for s in steps] == [Failed, Failed, GaveUp]
    assert steps[-1].failures == 3 and steps[-1].error is err
    assert clock.sleeps == [2.0, 4.0]


def test_the_deadline_is_absolute_and_pauses_never_run_past_it(monkeypatch):
    clock = Clock(monkeypatch, start_s=1000.0)
    steps = run(scripted(["busy"] * 10), PollPolicy(interval_s=4.0, deadline_s=1010.0))
    assert [type(s) for s in steps] == [Polled, Polled, Polled, Polled, DeadlinePassed]
    assert clock.sleeps == [4.0, 4.0, 2.0]  # the last pause ends at the deadline
    assert steps[-1].last_error is None


def test_a_deadline_after_a_failure_carries_that_error(monkeypatch):
    Clock(monkeypatch, start_s=1000.0)
    err = BackendError("fake", "store down")
    steps = run(scripted([err, err]), PollPolicy(interval_s=10.0, deadline_s=1001.0))
    assert [type(s) for s in steps] == [Failed, Failed, DeadlinePassed]
    assert steps[-1].last_error is err


def test_no_pause_is_shorter_than_the_floor(monkeypatch):
    clock = Clock(monkeypatch)
    run(scripted(["x"] * 3), PollPolicy(interval_s=0.01, min_sleep_s=0.5), max_steps=3)
    assert clock.sleeps == [0.5, 0.5]


def test_errors_that_are_not_retried_propagate(monkeypatch):
    Clock(monkeypatch)
    with pytest.raises(ZeroDivisionError):
        run(scripted([ZeroDivisionError("defect")]), PollPolicy(interval_s=1.0))
