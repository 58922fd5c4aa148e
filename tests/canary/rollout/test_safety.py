"""Returning traffic to stable through a failing serving layer (fake at the router interface)."""

from __future__ import annotations

import pytest

from canary.errors import BackendError
from canary.rollout.safety import StableNotRestoredError, describe_traffic, return_to_stable


class Flaky:
    """A router whose first ``failures`` set_weights calls fail; get_weights fails while ``down``."""

    def __init__(self, failures: int, *, down: bool = False) -> None:
        self.failures, self.down = failures, down
        self.weights = {"v1": 50, "v2": 50}
        self.calls = 0

    def set_weights(self, weights):
        self.calls += 1
        if self.calls <= self.failures:
            raise BackendError("local-serving", "PUT /weights -> HTTP 503")
        self.weights = dict(weights)

    def get_weights(self):
        if self.down:
            raise BackendError("local-serving", "connection refused")
        return dict(self.weights)


class Clock:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.mark.parametrize(("failures", "attempts", "sleeps"), [
    (0, 1, []), (1, 2, [1.0]), (4, 5, [1.0, 2.0, 4.0, 8.0]), (6, 7, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
])
def test_failures_are_retried_with_backoff_until_traffic_is_on_stable(failures, attempts, sleeps):
    router, clock, lines = Flaky(failures), Clock(), []
    got = return_to_stable(router, "v1", log=lines.append, max_s=120.0, clock=clock, sleep=clock.sleep)
    assert (got, clock.sleeps, router.weights) == (attempts, sleeps, {"v1": 100})
    assert len(lines) == failures + (1 if failures else 0)
    if failures:
        assert lines[0] == ("returning traffic to v1 failed (attempt 1): local-serving: PUT /weights -> HTTP 503; "
                            "traffic now: v1 50%, v2 50%; again in 1s")


def test_past_the_deadline_it_fails_loudly_saying_what_traffic_may_be():
    router, clock = Flaky(failures=100, down=True), Clock()
    with pytest.raises(StableNotRestoredError) as err:
        return_to_stable(router, "v1", log=lambda _m: None, max_s=30.0, clock=clock, sleep=clock.sleep)
    assert clock.now == 25.0 and router.calls == 6  # 1 + 2 + 4 + 8 + 10 s slept; 10 more would pass 30 s
    message = str(err.value)
    assert "could not return traffic to v1 in 30s (6 attempts)" in message
    assert "traffic may still be: unknown (the serving layer does not answer: local-serving: connection refused)" \
        in message and err.value.traffic.startswith("unknown")


def test_describe_traffic():
    assert describe_traffic(Flaky(0)) == "v1 50%, v2 50%"
    assert describe_traffic(Flaky(0, down=True)).startswith("unknown (")
