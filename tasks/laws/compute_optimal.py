"""Compute-optimal allocation under C = 6 N D, in closed form from a Chinchilla fit."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import FLOPS_PER_PARAM_TOKEN
from tasks.laws.results import ComputeOptimal, FitResult
from tasks.laws.validation import _validated_columns


def _optimal_allocation(
    E: np.ndarray, A: np.ndarray, B: np.ndarray, alpha: np.ndarray, beta: np.ndarray, compute: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_opt, D_opt, loss) minimising E + A/N^alpha + B/D^beta subject to 6 N D = compute.
    Parameters may be columns (one row per bootstrap sample); invalid fits give nan."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = alpha + beta
        scale = (alpha * A / (beta * B)) ** (1.0 / total)
        tokens_times_params = compute / FLOPS_PER_PARAM_TOKEN
        n_opt = scale * tokens_times_params ** (beta / total)
        d_opt = tokens_times_params ** (alpha / total) / scale
        loss = E + A / n_opt**alpha + B / d_opt**beta
    return n_opt, d_opt, loss


def compute_optimal(fit: FitResult, compute: ArrayLike) -> ComputeOptimal:
    """Closed-form compute-optimal N, D and loss under C = 6 N D:
    N_opt = G (C/6)^a, D_opt = (C/6)^b / G, G = (alpha A / (beta B))^(1/(alpha+beta)).
    With bootstrap samples on ``fit``, adds 95% percentile bands of N_opt and of a."""
    if fit.form != "chinchilla":
        raise ValueError(
            f"compute_optimal needs a chinchilla fit (got {fit.form!r}); fit with fit_chinchilla."
        )
    (compute_values,) = _validated_columns("compute_optimal", None, compute=compute)
    p = fit.params
    if not (p["alpha"] > 0 and p["beta"] > 0):
        raise ValueError(
            f"The fit has alpha={p['alpha']:g}, beta={p['beta']:g}; both must be positive for a finite "
            "compute-optimal allocation, so check the fit."
        )
    n_opt, d_opt, loss = _optimal_allocation(p["E"], p["A"], p["B"], p["alpha"], p["beta"], compute_values)
    exponent_n, exponent_d = p["beta"] / (p["alpha"] + p["beta"]), p["alpha"] / (p["alpha"] + p["beta"])
    bands: dict[str, Any] = {}
    if fit.samples is not None:
        bands = _compute_optimal_bands(fit, compute_values)
    return ComputeOptimal(compute_values, n_opt, d_opt, d_opt / n_opt, loss, exponent_n, exponent_d, **bands)


def _compute_optimal_bands(fit: FitResult, compute: np.ndarray) -> dict[str, Any]:
    E, A, B, alpha, beta = (fit.sample_column(name)[:, None] for name in ("E", "A", "B", "alpha", "beta"))
    n_opt, _, _ = _optimal_allocation(E, A, B, alpha, beta, compute[None, :])

    def band(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)

    def scalar_band(name: str) -> tuple[float, float]:
        low, high = band(fit.sample_column(name))
        return float(low), float(high)

    return {"N_opt_ci": band(n_opt), "a_ci": scalar_band("a_opt")}
