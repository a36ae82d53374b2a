"""Training compute of a run from its parameters and tokens."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D


def _six_n_d(N: ArrayLike, D: ArrayLike) -> np.ndarray:
    return FLOPS_PER_PARAM_TOKEN * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)
