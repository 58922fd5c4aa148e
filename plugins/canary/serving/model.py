"""Small numpy logistic-regression classifiers, one per version, trained on synthetic data at deploy time.

Every version is trained on data from the same generator with a seed derived from its name, so versions
give broadly similar, but not identical, predictions, and a version always gives the same ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Length of a feature vector.
N_FEATURES = 8
#: Coefficients and intercept of the data generator's true log-odds.
_TRUE_COEF = np.array([1.2, -0.9, 0.6, 0.0, 0.4, -0.5, 0.8, -0.3])
_TRUE_INTERCEPT = -1.0


def sample_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` feature vectors, shape ``(n, N_FEATURES)``, from the generator all versions share."""
    return rng.standard_normal((n, N_FEATURES))


def true_probability(features: np.ndarray) -> np.ndarray:
    """Return the generator's true positive-class probability of feature vectors (the ground truth's law)."""
    return _sigmoid(_TRUE_INTERCEPT + np.asarray(features, dtype=float) @ _TRUE_COEF)


def version_seed(version: str) -> int:
    """Return the training seed of a version (stable across processes and platforms)."""
    return zlib.crc32(version.encode())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True, eq=False)
class LogisticModel:
    """A fitted logistic-regression classifier: ``score = sigmoid(intercept + coef . x)``."""

    version: str
    coef: np.ndarray
    intercept: float

    def score(self, features: Sequence[float]) -> float:
        """Return the positive-class probability of one feature vector."""
        x = np.asarray(features, dtype=float)
        if x.shape != (N_FEATURES,):
            raise ValueError(f"expected {N_FEATURES} features, got shape {x.shape}")
        return float(_sigmoid(self.intercept + self.coef @ x))


def train_model(version: str, *, rows: int = 2000, max_iterations: int = 25) -> LogisticModel:
    """Fit a version's model by Newton-Raphson (IRLS) on ``rows`` synthetic examples seeded by its name."""
    rng = np.random.default_rng(version_seed(version))
    x = sample_features(rng, rows)
    y = (rng.random(rows) < _sigmoid(_TRUE_INTERCEPT + x @ _TRUE_COEF)).astype(float)
    design = np.hstack([np.ones((rows, 1)), x])
    w = np.zeros(N_FEATURES + 1)
    # A tiny ridge keeps the Hessian invertible should a seed produce separable data.
    ridge = 1e-6 * np.eye(N_FEATURES + 1)
    for _ in range(max_iterations):
        p = _sigmoid(design @ w)
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, design.T @ (y - p))
        w += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return LogisticModel(version=version, coef=w[1:], intercept=float(w[0]))
