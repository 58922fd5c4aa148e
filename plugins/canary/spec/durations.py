"""Parse and format human durations such as ``90s``, ``10m``, ``2h``, ``1h30m``, ``1d``."""

from __future__ import annotations

import math
import re

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration_s(value: str | int | float) -> float:
    """Return seconds for a duration like ``10m``; a bare number means seconds.

    :raises ValueError: naming the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '30s', '10m', '2h', got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError as err:  # an int beyond any float
            raise ValueError(f"duration must be a finite number of seconds, got {value:.3g}") from err
    elif not isinstance(value, str):  # YAML null, a list, a mapping: not a duration (and never AttributeError)
        raise ValueError(f"expected a duration like '30s', '10m', '2h', got {type(value).__name__} {value!r}")
    else:
        text = value.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(f"expected a duration like '30s', '10m', '2h' or '1h30m', got {value!r}")
    if not math.isfinite(seconds):  # NaN passes every comparison; infinity is no deadline at all
        raise ValueError(f"duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must be >= 0, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Format seconds compactly (``5400`` -> ``1h30m``)."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    total = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            out.append(f"{total // size}{unit}")
            total %= size
    return "".join(out) or "0s"
