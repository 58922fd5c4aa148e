from __future__ import annotations

import pytest

from canary.spec.durations import format_duration, parse_duration_s


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                               ("1d", 86400), ("250ms", 0.25), (45, 45), ("1.5m", 90)])
def test_parse(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "m10", "10 minutes", "1h 30", "-5m", True, "10m5"])
def test_parse_rejects_with_accepted_forms(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(bad)


@pytest.mark.parametrize(("seconds", "text"), [(5400, "1h30m"), (60, "1m"), (0.25, "250ms"), (86461, "1d1m1s")])
def test_format(seconds, text):
    assert format_duration(seconds) == text
