"""Progress: a live bar on a terminal, throttled plain lines otherwise, always on the given stream."""

from __future__ import annotations

import io

from canary.progress import PLAIN_EVERY_S, Progress, track


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_it_prints_plain_lines_at_most_every_ten_seconds_and_the_last_one():
    out, clock = io.StringIO(), Clock()
    with Progress(5, "replaying runs", stream=out, clock=clock) as progress:
        for step in range(5):
            clock.now_s = step * (PLAIN_EVERY_S / 2)  # 0, 5, 10, 15, 20 s
            progress.advance(f"run {step}")
    assert out.getvalue().splitlines() == ["replaying runs: 3/5 (run 2)", "replaying runs: 5/5 (run 4)"]


def test_an_unknown_total_prints_counts_only():
    out, clock = io.StringIO(), Clock()
    with Progress(None, "looks", stream=out, clock=clock) as progress:
        clock.now_s = PLAIN_EVERY_S
        progress.advance()
    assert out.getvalue() == "looks: 1\n"


def test_on_a_terminal_it_draws_a_bar_with_the_count():
    out = Terminal()
    assert list(track(range(3), total=3, description="demo rollouts", stream=out)) == [0, 1, 2]
    drawn = out.getvalue()
    assert "demo rollouts" in drawn and "3/3" in drawn
    assert "\x1b[" in drawn  # drawn with terminal control sequences, not plain lines
