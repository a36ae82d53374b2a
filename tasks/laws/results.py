"""What the fitters return: a fitted law, compute-optimal allocations, IsoFLOP optima, an extrapolation
check and prediction bands; and a fit as a JSON-ready dict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.predictors import _PREDICTORS


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted law.  ``params`` also holds derived quantities (chinchilla: a_opt, b_opt).

    For the reduced multiplicative form ``d`` is reported as nan (it is not identifiable) and
    ``b``, ``c`` hold b' = b + d and c' = c + d.
    """

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci_low: dict[str, float]
    ci_high: dict[str, float]
    objective: float
    n_points: int
    converged: bool
    residuals: np.ndarray
    note: str
    samples: np.ndarray | None = None  # bootstrap parameter samples, one row per resample
    sample_names: tuple[str, ...] = field(default=())

    def predict(self, N: ArrayLike, D: ArrayLike | None = None, *, C: ArrayLike | None = None) -> np.ndarray:
        """Predicted loss.  Power-law forms take their variable (N, D or C) as the first argument;
        the full multiplicative form also needs ``C``."""
        return _PREDICTORS[self.form](self.params, N, D, C)

    def sample_column(self, name: str) -> np.ndarray:
        """One parameter's bootstrap samples."""
        if self.samples is None:
            raise ValueError(f"{self.form} fit has no bootstrap samples; refit with bootstrap > 0.")
        return self.samples[:, self.sample_names.index(name)]


@dataclass(frozen=True, eq=False)
class ComputeOptimal:
    """Compute-optimal allocation under C = 6 N D, or the accounting given to compute_optimal;
    ``*_ci`` are 95% bootstrap bands (or None)."""

    compute: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    tokens_per_param: np.ndarray
    loss: np.ndarray
    a: float  # N_opt ∝ C^a, a = beta / (alpha + beta) (under C = 6 N D; the large-C limit otherwise)
    b: float  # D_opt ∝ C^b, b = alpha / (alpha + beta)
    N_opt_ci: tuple[np.ndarray, np.ndarray] | None = None
    a_ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class IsoFlopGroup:
    """One compute budget of Chinchilla's Approach 2; ``warning`` is empty when the group is usable."""

    compute: float  # geometric mean of the group's compute
    n_points: int
    N_opt: float
    D_opt: float  # compute / (6 N_opt)
    loss_at_opt: float
    warning: str
    N_opt_low: float = math.nan  # 95% interval of N_opt: delta method on the parabola's coefficients
    N_opt_high: float = math.nan


@dataclass(frozen=True)
class IsoFlopResult:
    """IsoFLOP optima and the fit N_opt = coefficient * C^a over the usable groups."""

    groups: tuple[IsoFlopGroup, ...]
    a: float
    a_stderr: float
    coefficient: float
    n_groups_used: int
    note: str


@dataclass(frozen=True, eq=False)
class ExtrapolationResult:
    """Fit on runs below ``threshold_flops``, prediction of the runs at or above it."""

    fit: FitResult
    threshold_flops: float
    n_train: int
    held_out_compute: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    relative_error: np.ndarray  # (pred - obs) / obs, signed
    mean_abs_relative_error: float
    max_abs_relative_error: float


@dataclass(frozen=True, eq=False)
class PredictionBands:
    """Predicted loss with two different 95% bands, kept apart on purpose:
    ``confidence``: where the fitted law itself lies (parameter uncertainty, from the bootstrap);
    ``prediction``: where one new run's loss lies (the law's uncertainty plus run-to-run scatter,
    taken from the fit's own log residuals)."""

    predicted: np.ndarray
    confidence: tuple[np.ndarray, np.ndarray]
    prediction: tuple[np.ndarray, np.ndarray]


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def result_to_dict(result: FitResult) -> dict[str, Any]:
    """JSON-ready flat dict: one key per parameter plus objective, n_points, converged, form, note,
    "stderr" {name: value} and "ci" {name: [low, high]}; nan and inf become None."""
    return {
        **{name: _json_number(value) for name, value in result.params.items()},
        "objective": _json_number(result.objective),
        "n_points": result.n_points,
        "converged": result.converged,
        "form": result.form,
        "note": result.note,
        "stderr": {name: _json_number(value) for name, value in result.stderr.items()},
        "ci": {
            name: [_json_number(result.ci_low[name]), _json_number(result.ci_high[name])]
            for name in result.ci_low
        },
    }
