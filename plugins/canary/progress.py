"""Progress for long work (``canary replay``, ``make bench``, ``make demo``): a live bar on a terminal,
plain lines otherwise (CI logs, pipes), always on stderr so stdout stays machine-readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: Without a terminal, print a plain line at most every this many seconds (and at the end).
PLAIN_EVERY_S = 10.0


class Progress:
    """Count ``total`` steps of ``description``; ``advance(note)`` after each.

    On a terminal it draws a rich progress bar (imported only then); otherwise it prints
    ``description: done/total (note)`` lines, at most one per :data:`PLAIN_EVERY_S`, and the last one.

    :param stream: where to draw (default stderr); ``live`` forces (True) or forbids (False) the bar.
    """

    def __init__(self, total: int | None, description: str, *, stream: TextIO | None = None,
                 live: bool | None = None, clock: Any = time.monotonic) -> None:
        self.total, self.description = total, description
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.done = 0
        self._clock = clock
        self._last_plain_s = clock()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                                     console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, note="")
        return self

    def advance(self, note: str = "", steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, note=note)
            return
        now = self._clock()
        if now - self._last_plain_s >= PLAIN_EVERY_S or (self.total is not None and self.done >= self.total):
            self._last_plain_s = now
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.description}: {self.done}{of}" + (f" ({note})" if note else ""), file=self.stream,
                  flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def track(items: Iterable[T], *, total: int | None, description: str, stream: TextIO | None = None,
          live: bool | None = None) -> Iterator[T]:
    """Yield ``items``, showing progress (see :class:`Progress`)."""
    with Progress(total, description, stream=stream, live=live) as progress:
        for item in items:
            yield item
            progress.advance()


__all__ = ["PLAIN_EVERY_S", "Progress", "track"]
