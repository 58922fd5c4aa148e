"""A patched clock for trigger tests: ``asyncio.sleep`` advances ``time.time`` instead of waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class PatchedClock:
    """``time.time`` everywhere reads ``now``; every ``asyncio.sleep`` is recorded and advances it.

    :param on_sleep: called with the new time after each sleep (e.g. to change a backend's answer).
    """

    def __init__(self, monkeypatch, start_s: float = 1000.0) -> None:
        self.now = start_s
        self.sleeps: list[float] = []
        self.on_sleep: list[Callable[[float], object]] = []
        monkeypatch.setattr(time, "time", lambda: self.now)

        async def fake_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds
            for hook in self.on_sleep:
                hook(self.now)

        monkeypatch.setattr(asyncio, "sleep", fake_sleep)

    def __call__(self) -> float:
        return self.now
