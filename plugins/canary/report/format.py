"""Numbers for people: percentages, significant digits, counts, e-values, ratios, durations, times.

Every page, sentence and table of the report formats its numbers here, so ``0.9772727272727273``
never reaches a reader. Each function takes None (and NaN or infinity where that can arise) and
says so in plain words instead of raising: a report must render whatever the journal holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from canary.spec.durations import format_duration

#: What a missing number reads as.
MISSING = "n/a"


def _bad(x: float | None) -> bool:
    return x is None or isinstance(x, bool) or math.isnan(x)


def sig(x: float | None, digits: int = 3) -> str:
    """Round to ``digits`` significant digits without scientific notation for ordinary sizes.

    ``sig(0.0123456) == "0.0123"``, ``sig(1234.5) == "1,234"`` (integers keep every digit of the
    integral part: rounding 1,234 to 1,230 would only confuse), ``sig(2.0) == "2"``.
    """
    if _bad(x):
        return MISSING
    assert x is not None
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= digits - 1:
        return f"{round(x):,}"
    if magnitude < -4:
        return f"{x:.{digits - 1}e}".replace("e-0", "e-")
    decimals = digits - 1 - magnitude
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def pct(share: float | None, digits: int = 2) -> str:
    """Format a share in [0, 1] as a percentage with ``digits`` significant digits: ``0.094 -> 9.4%``.

    Shares of 10% and more get one decimal at most (``0.1034 -> 10.3%``), whole percentages none
    (``0.25 -> 25%``); tiny but non-zero shares stay visible (``0.00002 -> 0.002%``).
    """
    if _bad(share):
        return MISSING
    assert share is not None
    value = share * 100.0
    if value != 0 and abs(value) >= 10:
        text = f"{value:.1f}".rstrip("0").rstrip(".")
    else:
        text = sig(value, digits)
    return f"{text}%"


def pct_points(value_pct: float | None) -> str:
    """Format a number that already is a percentage (``25 -> 25%``, ``24.87 -> 24.9%``)."""
    return MISSING if _bad(value_pct) else pct(value_pct / 100.0, 3)  # type: ignore[operator]


def count(n: float | None, *, compact: bool = False) -> str:
    """Format a count with thousands separators (``1234 -> 1,234``); ``compact`` shortens large ones.

    Compact form (for chart labels and tight cells): ``12345 -> 12.3k``, ``2500000 -> 2.5M``; below
    10,000 the full number is shorter to read than its abbreviation.
    """
    if _bad(n):
        return MISSING
    assert n is not None
    if compact and abs(n) >= 10_000:
        for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(n) >= size:
                return f"{sig(n / size, 3)}{unit}"
    return f"{round(n):,}"


def evalue(e: float | None) -> str:
    """Format an e-value: ``881``, ``0.42``, ``12,345``, ``1.2e9`` (beyond a million, powers of ten).

    ``None`` from the analyzer means the value overflowed a float (e-value ``> 1e304``): that reads
    as "more than 1e304", never as "n/a".
    """
    if e is None:
        return ">1e304"
    if _bad(e):
        return MISSING
    if math.isinf(e):
        return ">1e304"
    if e >= 1e6:
        mantissa, exponent = f"{e:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    if 0 < e < 1e-3:
        mantissa, exponent = f"{e:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return sig(e, 3) if e < 1000 else f"{round(e):,}"


def ratio(r: float | None) -> str:
    """Format a ratio with its unit, 3 significant digits: ``1.3712 -> 1.37x``, ``0.9981 -> 0.998x``."""
    if _bad(r):
        return MISSING
    assert r is not None
    if math.isinf(r):
        return "∞"
    return f"{sig(r, 3)}x"


def duration(seconds: float | None) -> str:
    """Format seconds as ``2m31s``, ``1h5m``, ``850ms`` (:func:`canary.spec.durations.format_duration`)."""
    if _bad(seconds) or seconds is None or seconds < 0:
        return MISSING
    if seconds == 0:
        return "0s"
    if seconds >= 3600:  # past an hour, seconds are noise: 1h5m, not 1h5m12s
        seconds = round(seconds / 60.0) * 60.0
    return format_duration(seconds)


def timestamp(epoch_s: float | None) -> str:
    """Format epoch seconds as a UTC time: ``2026-12-02 10:31:05Z``."""
    if _bad(epoch_s):
        return MISSING
    assert epoch_s is not None
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def confidence(threshold: float | None) -> str:
    """Return the confidence level of a sequence whose rollback e-value threshold is ``threshold``.

    A rollback threshold ``1/a`` goes with a confidence sequence at level ``1 - a`` (Ville's
    inequality): ``200 -> 99.5%``, ``20 -> 95%``.
    """
    if _bad(threshold) or threshold is None or threshold <= 1:
        return MISSING
    return pct(1.0 - 1.0 / threshold, 3)


__all__ = ["MISSING", "confidence", "count", "duration", "evalue", "pct", "pct_points", "ratio", "sig",
           "timestamp"]


def paired_test_cells(test: Mapping[str, Any]) -> dict[str, str]:
    """Return the shadow test's table cells of one paired test (:class:`canary.stats.paired.PairedAssessment`).

    ``pairs``: the counts the test used; ``evidence``: its e-value against the threshold (the
    disagreement test has none); ``bound``: the confidence bounds against the limit, in points of the
    rate (or the disagreement rate itself, or the mean score difference on the score scale against its
    band ``±limit``); ``verdict``: fail, pass or open.
    """
    def points(x: Any) -> str:
        return MISSING if x is None else f"{x * 100:+.2f}"

    def score(x: Any) -> str:
        return MISSING if _bad(x) else f"{x:+.3f}"

    kind = test.get("kind") or ("rate" if test.get("candidate_only") is None else "discordant")
    if kind == "mean":
        pairs = f"{count(test.get('pairs'))} answered, mean difference {score(test.get('estimate'))}"
        bound = f"{score(test.get('lower'))} to {score(test.get('upper'))} (limit ±{sig(test.get('limit'))})"
        evidence = ""
    elif kind == "distance":
        pairs = f"{count(test.get('pairs'))} answered, distance {sig(test.get('estimate'))}"
        bound = f"{sig(test.get('lower'))} to {sig(test.get('upper'))} (limit {sig(test.get('limit'))})"
        evidence = ""
    elif kind == "rate":
        pairs = f"{count(test.get('pairs'))} answered, {pct(test.get('estimate'))} disagree"
        bound = f"{pct(test.get('lower'))} to {pct(test.get('upper'))} (limit {pct(test.get('limit'))})"
        evidence = ""
    else:
        one, other = test.get("sides") or ("candidate only", "stable only")
        pairs = (f"{count(test.get('candidate_only'))} {one}, {count(test.get('stable_only'))} {other}, "
                 f"of {count(test.get('pairs'))}")
        bound = (f"{points(test.get('lower'))} to {points(test.get('upper'))} points "
                 f"(limit {points(test.get('limit'))})")
        evidence = f"{evalue(test.get('e_value'))} of {evalue(test.get('e_threshold'))}"
    verdict = {"fail": "FAIL", "pass": "pass", "continue": "open"}.get(str(test.get("decision")), MISSING)
    return {"test": str(test.get("test", "")), "pairs": pairs, "evidence": evidence, "bound": bound,
            "verdict": verdict}
