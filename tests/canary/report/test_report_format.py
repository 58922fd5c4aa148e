"""Numbers for people: each format on a table of literal values."""

from __future__ import annotations

import math

import pytest

from canary.report import format as fmt


@pytest.mark.parametrize(("share", "text"), [
    (0.094, "9.4%"), (0.0092, "0.92%"), (0.1034, "10.3%"), (0.25, "25%"), (1.0, "100%"), (0.0, "0%"),
    (0.009772727272727273, "0.98%"), (0.00002, "0.002%"), (0.5, "50%"), (0.12345, "12.3%"), (None, "n/a"),
    (math.nan, "n/a"),
])
def test_pct(share, text):
    assert fmt.pct(share) == text


@pytest.mark.parametrize(("value", "text"), [(25, "25%"), (24.87, "24.9%"), (40.0, "40%"), (4.567, "4.57%"),
                                             (None, "n/a")])
def test_pct_points(value, text):
    assert fmt.pct_points(value) == text


@pytest.mark.parametrize(("x", "digits", "text"), [
    (0.9772727272727273, 3, "0.977"), (0.0123456, 3, "0.0123"), (1234.5, 3, "1,234"), (2.0, 3, "2"),
    (12.345, 3, "12.3"), (0.00001234, 3, "1.23e-5"), (-0.5, 2, "-0.5"), (0, 3, "0"), (math.inf, 3, "∞"),
    (None, 3, "n/a"),
])
def test_sig(x, digits, text):
    assert fmt.sig(x, digits) == text


@pytest.mark.parametrize(("n", "compact", "text"), [
    (1234, False, "1,234"), (97, False, "97"), (12345, True, "12.3k"), (9999, True, "9,999"),
    (2_500_000, True, "2.5M"), (1_234_567, False, "1,234,567"), (None, False, "n/a"),
])
def test_count(n, compact, text):
    assert fmt.count(n, compact=compact) == text


@pytest.mark.parametrize(("e", "text"), [
    (881.3, "881"), (1.2e9, "1.2e9"), (0.42, "0.42"), (12345.6, "12,346"), (1e6, "1e6"), (200.0, "200"),
    (1111.111, "1,111"), (0.0000123, "1.2e-5"), (61.22, "61.2"), (None, ">1e304"), (math.inf, ">1e304"),
])
def test_evalue(e, text):
    assert fmt.evalue(e) == text


@pytest.mark.parametrize(("r", "text"), [(1.3712, "1.37x"), (0.9981, "0.998x"), (2.0, "2x"), (12.04, "12x"),
                                         (None, "n/a")])
def test_ratio(r, text):
    assert fmt.ratio(r) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (151, "2m31s"), (59.6, "1m"), (0.85, "850ms"), (3600, "1h"), (3912, "1h5m"), (90061, "1d1h1m"), (0, "0s"),
    (None, "n/a"), (-1, "n/a"),
])
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize(("epoch_s", "text"), [(1_796_207_465.4, "2026-12-02 10:31:05Z"), (0, "1970-01-01 00:00:00Z"),
                                               (None, "n/a")])
def test_timestamp(epoch_s, text):
    assert fmt.timestamp(epoch_s) == text


@pytest.mark.parametrize(("threshold", "text"), [(200, "99.5%"), (20, "95%"), (1000, "99.9%"), (61.2, "98.4%"),
                                                 (1, "n/a"), (None, "n/a")])
def test_confidence_of_a_rollback_threshold(threshold, text):
    assert fmt.confidence(threshold) == text
