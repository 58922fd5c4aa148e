"""Per-version models: deterministic, close to the generator's truth, broadly similar across versions."""

from __future__ import annotations

import numpy as np
import pytest

from canary.serving.model import N_FEATURES, sample_features, train_model, version_seed


def test_seed_is_stable_across_processes() -> None:
    assert version_seed("v1") == 1768082613  # zlib.crc32(b"v1"), independent of PYTHONHASHSEED


def test_same_version_same_model() -> None:
    a, b = train_model("v1"), train_model("v1")
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.intercept == b.intercept


def test_versions_differ_but_agree_broadly() -> None:
    x = sample_features(np.random.default_rng(0), 2000)
    v1, v2 = train_model("v1"), train_model("v2")
    s1 = np.array([v1.score(row) for row in x])
    s2 = np.array([v2.score(row) for row in x])
    assert not np.array_equal(s1, s2)
    assert np.mean((s1 >= 0.5) == (s2 >= 0.5)) > 0.9
    assert np.mean(np.abs(s1 - s2)) < 0.05
    # Both recover the generator's coefficients (1.2, -0.9, 0.6, 0, ...) to within sampling error.
    np.testing.assert_allclose(v1.coef[:3], [1.2, -0.9, 0.6], atol=0.25)


def test_score_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match=f"expected {N_FEATURES} features"):
        train_model("v1").score([1.0, 2.0])
