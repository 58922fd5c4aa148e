"""Sample-ratio mismatch: is the observed traffic split the configured one?

Lindon & Malek, "Anytime-Valid Inference for Multinomial Count Data" (NeurIPS 2022), Sec. 4 (the
"SRM" application; also the ``ssrm`` package): under the null each request goes to the canary with the
configured probability :math:`w`; the Dirichlet(here Beta)-multinomial mixture of likelihood ratios

.. math:: E_t = \\frac{B(a + n_c, b + n_s)}{B(a, b)} \\Big/ \\left(w^{n_c} (1 - w)^{n_s}\\right),
          \\qquad a = k w,\\; b = k (1 - w),

is a test martingale under the null. Stages with different weights are independent periods, so their
e-values multiply (a product of test martingales started at each stage). A mismatch means the
comparison is biased (a router or logging fault): HALT, never a rollback or a promotion.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaln

#: Prior concentration k of the Beta mixture (Lindon & Malek use a prior centred on the null split).
PRIOR_CONCENTRATION = 100.0


def log_e_value(n_c: np.ndarray | float, n_s: np.ndarray | float, weight: np.ndarray | float,
                concentration: float = PRIOR_CONCENTRATION) -> np.ndarray:
    """Return log E of the SRM mixture e-process for one period.

    Parameters
    ----------
    n_c, n_s : array_like
        Canary and stable request counts (>= 0).
    weight : array_like
        Configured canary share, in (0, 1).
    concentration : float
        Beta prior concentration ``k`` (prior ``Beta(k w, k (1 - w))``).
    """
    n_c = np.asarray(n_c, dtype=float)
    n_s = np.asarray(n_s, dtype=float)
    w = np.asarray(weight, dtype=float)
    a, b = concentration * w, concentration * (1.0 - w)
    return betaln(a + n_c, b + n_s) - betaln(a, b) - n_c * np.log(w) - n_s * np.log1p(-w)
