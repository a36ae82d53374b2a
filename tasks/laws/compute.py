"""Training compute of a run from its parameters and tokens: C = 6 N D, or C = f(N) D with the
per-token FLOPs f(N) that a sweep's own accounting measured (attention scores, the unembedding)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.validation import FitInputError, _validated_columns

FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D
SIX_N_RTOL = 1e-9  # runs whose C / D is 6 N to rounding are counted as C = 6 N D exactly


def _six_n_d(N: ArrayLike, D: ArrayLike) -> np.ndarray:
    return FLOPS_PER_PARAM_TOKEN * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token as a function of N: f(N) = 6 N + kappa N^gamma, the overhead being
    what a run spends beyond 6 N (attention scores, the unembedding). kappa = 0 is C = 6 N D."""

    kappa: float = 0.0
    gamma: float = 1.0

    def __call__(self, N: ArrayLike) -> np.ndarray:
        N = np.asarray(N, dtype=float)
        return FLOPS_PER_PARAM_TOKEN * N + self.kappa * N**self.gamma

    def slope(self, N: ArrayLike) -> np.ndarray:
        """d log f / d log N."""
        N = np.asarray(N, dtype=float)
        return (FLOPS_PER_PARAM_TOKEN * N + self.gamma * self.kappa * N**self.gamma) / self(N)

    @property
    def is_six_n(self) -> bool:
        return self.kappa == 0.0


def flops_per_token_from_runs(N: ArrayLike, D: ArrayLike, compute: ArrayLike) -> FlopsPerToken:
    """The per-token FLOPs of the runs' own accounting, C / D, as 6 N plus a power law of N fitted in
    log space to the overhead. Runs whose C is 6 N D give kappa = 0 (the closed form applies); runs
    whose C / D falls below 6 N (N counted as total parameters, C from the non-embedding ones) have no
    such accounting and raise FitInputError."""
    N, D, compute = _validated_columns("compute accounting", None, N=N, D=D, compute=compute)
    overhead = compute / D - FLOPS_PER_PARAM_TOKEN * N
    if np.all(np.abs(overhead) <= SIX_N_RTOL * FLOPS_PER_PARAM_TOKEN * N):
        return FlopsPerToken()
    if np.any(overhead <= 0):
        raise FitInputError(
            "the compute per token is below 6 N for some runs (N counts parameters that the compute "
            "does not), so no compute-optimal allocation in this accounting; count N and C alike "
            "(fit.params_kind nonembedding, or fit.compute_kind with_attention)."
        )
    if len(np.unique(N)) < 2:
        return FlopsPerToken(float(np.mean(overhead / N)), 1.0)
    gamma, log_kappa = np.polyfit(np.log(N), np.log(overhead), 1)
    return FlopsPerToken(float(np.exp(log_kappa)), float(gamma))
