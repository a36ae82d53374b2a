"""Compute-optimal allocation from a Chinchilla fit: in closed form under C = 6 N D, and by bisection
under C = f(N) D with the per-token FLOPs f of a sweep's own accounting (FlopsPerToken)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import FLOPS_PER_PARAM_TOKEN, FlopsPerToken
from tasks.laws.results import ComputeOptimal, FitResult
from tasks.laws.validation import _validated_columns

BISECTION_STEPS = 100  # halvings of a bracket of at most ~120 in log N: past machine precision

Allocation = tuple[np.ndarray, np.ndarray, np.ndarray]


def _optimal_allocation(
    E: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    compute: np.ndarray,
    flops: FlopsPerToken | None = None,
) -> Allocation:
    """(N_opt, D_opt, loss) minimising E + A/N^alpha + B/D^beta subject to 6 N D = compute.
    Parameters may be columns (one row per bootstrap sample); invalid fits give nan.  With ``flops``
    not 6 N, subject to f(N) D = compute instead."""
    if flops is not None and not flops.is_six_n:
        return _allocation_by_bisection(E, A, B, alpha, beta, compute, flops)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = alpha + beta
        scale = (alpha * A / (beta * B)) ** (1.0 / total)
        tokens_times_params = compute / FLOPS_PER_PARAM_TOKEN
        n_opt = scale * tokens_times_params ** (beta / total)
        d_opt = tokens_times_params ** (alpha / total) / scale
        loss = E + A / n_opt**alpha + B / d_opt**beta
    return n_opt, d_opt, loss


def _allocation_by_bisection(
    E: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    compute: np.ndarray,
    flops: FlopsPerToken,
) -> Allocation:
    """The minimum along f(N) D = compute: the root in u = log N of the loss's derivative,
    -alpha A N^-alpha + beta B D^-beta d log f / d log N, which is negative at N = 1 and positive
    where D = 1 token; bisected elementwise, so bootstrap columns cost one pass."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        low = np.zeros(np.broadcast_shapes(np.shape(A), np.shape(compute)))
        high = low + np.log(compute / FLOPS_PER_PARAM_TOKEN)
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            n = np.exp(middle)
            d = compute / flops(n)
            rising = beta * B * d**-beta * flops.slope(n) > alpha * A * n**-alpha
            high, low = np.where(rising, middle, high), np.where(rising, low, middle)
        n_opt = np.exp((low + high) / 2)
        d_opt = compute / flops(n_opt)
        loss = E + A / n_opt**alpha + B / d_opt**beta
        valid = np.isfinite(loss) & (alpha > 0) & (beta > 0)
    return np.where(valid, n_opt, np.nan), np.where(valid, d_opt, np.nan), np.where(valid, loss, np.nan)


def compute_optimal(fit: FitResult, compute: ArrayLike, flops: FlopsPerToken | None = None) -> ComputeOptimal:
    """Compute-optimal N, D and loss of a Chinchilla fit at each compute budget. Under C = 6 N D (no
    ``flops``, or kappa = 0) in closed form: N_opt = G (C/6)^a, D_opt = (C/6)^b / G,
    G = (alpha A / (beta B))^(1/(alpha+beta)); under C = f(N) D (``flops``, the runs' own accounting,
    from ``flops_per_token_from_runs``) by bisection, a and b then being the 6 N D exponents, which
    the optimum approaches as the overhead's share of f vanishes. With bootstrap samples on ``fit``,
    adds 95% percentile bands of N_opt and of a."""
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
    n_opt, d_opt, loss = _optimal_allocation(
        p["E"], p["A"], p["B"], p["alpha"], p["beta"], compute_values, flops
    )
    exponent_n, exponent_d = p["beta"] / (p["alpha"] + p["beta"]), p["alpha"] / (p["alpha"] + p["beta"])
    bands: dict[str, Any] = {}
    if fit.samples is not None:
        bands = _compute_optimal_bands(fit, compute_values, flops)
    return ComputeOptimal(compute_values, n_opt, d_opt, d_opt / n_opt, loss, exponent_n, exponent_d, **bands)


def _compute_optimal_bands(
    fit: FitResult, compute: np.ndarray, flops: FlopsPerToken | None
) -> dict[str, Any]:
    E, A, B, alpha, beta = (fit.sample_column(name)[:, None] for name in ("E", "A", "B", "alpha", "beta"))
    n_opt, _, _ = _optimal_allocation(E, A, B, alpha, beta, compute[None, :], flops)

    def band(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)

    def scalar_band(name: str) -> tuple[float, float]:
        low, high = band(fit.sample_column(name))
        return float(low), float(high)

    return {"N_opt_ci": band(n_opt), "a_ci": scalar_band("a_opt")}
