"""How sure a log-space fit is: the sandwich covariance and the delta method at the optimum, or a
bootstrap (resamples of the runs refitted together by the batched L-BFGS) and its percentile intervals."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.laws.objective import _huber, _Objective
from tasks.laws.optimizer import _DESCENT_FTOL, _batched_lbfgs, _Minimum

Z_95 = 1.959963984540054  # standard normal quantile for two-sided 95% intervals

# Bootstrap refits start from the optimum and the next best distinct end points of the descent.
_BOOTSTRAP_WARM_STARTS = 4
_BOOTSTRAP_ITERATIONS = 500


@dataclass(frozen=True)
class _FormSpec:
    """How a log-space form's internal parameters map to the reported ones.  Intervals of the
    ``log_scale`` parameters are built on the log scale (they are positive by construction)."""

    name: str
    public: Callable[[np.ndarray], dict[str, float]]
    log_scale: frozenset[str]


def _exp(log_value: float) -> float:
    """exp that gives inf instead of raising, for wild bootstrap refits."""
    with np.errstate(over="ignore"):
        return float(np.exp(log_value))


def _central_difference(function: Callable[[np.ndarray], np.ndarray], theta: np.ndarray) -> np.ndarray:
    """d function / d theta, shape (*function's shape, params); steps scale with |theta|."""
    steps = 1e-5 * np.maximum(1.0, np.abs(theta))
    columns = []
    for j, step in enumerate(steps):
        shift = np.zeros_like(theta)
        shift[j] = step
        columns.append((function(theta + shift) - function(theta - shift)) / (2.0 * step))
    return np.stack(columns, axis=-1)


def _objective_hessian(objective: _Objective, theta: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """Hessian of sum_i rho(r_i), r_i = log L_pred_i - log L_obs_i, split where rho is not smooth:
    sum_i rho''(r_i) J_i J_i^T (rho'' = 1 inside delta, 0 outside: exact) plus sum_i psi(r_i) d2 r_i,
    the model's curvature under the optimum's fixed weights psi, by central differences of a smooth
    function.  Differencing the whole gradient instead made its steps straddle the kinks of the Huber
    loss at |r| = delta wherever a run lies near them, and the Hessian came out indefinite."""
    residual = -objective.residuals(theta)
    _, slope = _huber(residual, objective.huber_delta)
    inside = (np.abs(residual) < objective.huber_delta).astype(float)

    def gradient_at_fixed_weights(t: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            _, vjp = objective.model.log_predict(t[None, :])
            return vjp(slope[None, :])[0]

    curvature = _central_difference(gradient_at_fixed_weights, theta)
    return (jacobian * inside[:, None]).T @ jacobian + 0.5 * (curvature + curvature.T)


def _sandwich_covariance(objective: _Objective, theta: np.ndarray) -> np.ndarray | None:
    """M-estimator covariance H^-1 M H^-1 with M = sum psi(r)^2 J J^T (HC1 small-sample factor).
    For least squares it is the heteroscedasticity-robust covariance; None if H is not positive definite."""
    jacobian = _central_difference(lambda t: objective.log_predictions(t[None, :])[0], theta)
    hessian = _objective_hessian(objective, theta, jacobian)
    _, slope = _huber(objective.residuals(theta), objective.huber_delta)
    meat = (jacobian * slope[:, None] ** 2).T @ jacobian
    n_points, n_params = jacobian.shape
    try:  # a Hessian that passes Cholesky can still be singular to working precision
        np.linalg.cholesky(hessian)
        inverse = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return None
    return inverse @ meat @ inverse * n_points / max(n_points - n_params, 1)


@dataclass(frozen=True)
class _Intervals:
    stderr: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


def _delta_method_intervals(spec: _FormSpec, theta: np.ndarray, covariance: np.ndarray | None) -> _Intervals:
    params = spec.public(theta)
    names = list(params)
    if covariance is None:
        nan = dict.fromkeys(names, math.nan)
        return _Intervals(nan, dict(nan), dict(nan))

    def linked(t: np.ndarray) -> np.ndarray:
        values = spec.public(t)
        return np.array([np.log(values[n]) if n in spec.log_scale else values[n] for n in names])

    jacobian = _central_difference(linked, theta)
    linked_stderr = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jacobian, covariance, jacobian), 0.0))
    stderr, low, high = {}, {}, {}
    for name, value, se in zip(names, linked(theta), linked_stderr, strict=True):
        if name in spec.log_scale:
            stderr[name] = _exp(value) * se
            low[name], high[name] = _exp(value - Z_95 * se), _exp(value + Z_95 * se)
        else:
            stderr[name] = se
            low[name], high[name] = value - Z_95 * se, value + Z_95 * se
    return _Intervals(stderr, low, high)


def _delta_method_note(objective: _Objective, theta: np.ndarray, available: bool) -> str:
    if not available:
        return " Intervals unavailable: the objective's Hessian is not positive definite at the optimum."
    note = " Intervals: delta method on the sandwich covariance (asymptotic)."
    if math.isfinite(objective.huber_delta):
        inside = int(np.sum(np.abs(objective.residuals(theta)) < objective.huber_delta))
        note += (
            f" Only {inside} of {len(objective.log_loss)} runs have |log residual| < delta and carry the "
            "Hessian, so these intervals are rough; bootstrap > 0 gives percentile intervals."
        )
    return note


def _resample_counts(n_points: int, n_resamples: int, seed: int) -> np.ndarray:
    """(resamples, runs) counts of each run in a resample of the runs drawn with replacement."""
    return np.random.default_rng(seed).multinomial(n_points, np.full(n_points, 1.0 / n_points), n_resamples)


def _bootstrap_samples(
    spec: _FormSpec, objective: _Objective, minimum: _Minimum, n_resamples: int, seed: int
) -> tuple[np.ndarray, tuple[str, ...], float]:
    """Refit ``n_resamples`` resamples of the runs (with replacement), each warm-started from the
    full-data optimum and the next best distinct end points of its descent, all batched; returns
    (samples, names, fraction converged).  A resample is a vector of run counts (weights)."""
    n_points = len(objective.log_loss)
    counts = _resample_counts(n_points, n_resamples, seed)
    weighted = _Objective(objective.model, objective.log_loss, objective.huber_delta, counts.astype(float))
    warm_starts = minimum.warm_starts[:_BOOTSTRAP_WARM_STARTS]
    resample_of_row = np.repeat(np.arange(n_resamples), len(warm_starts))
    x, values, converged = _batched_lbfgs(
        lambda theta, rows: weighted.value_and_grad(theta, resample_of_row[rows]),
        np.tile(warm_starts, (n_resamples, 1)),
        max_iterations=_BOOTSTRAP_ITERATIONS,
        ftol=_DESCENT_FTOL,
    )
    values = values.reshape(n_resamples, len(warm_starts))
    best_row = np.arange(n_resamples) * len(warm_starts) + np.argmin(values, axis=1)
    names = tuple(spec.public(minimum.theta))
    samples = np.array([[spec.public(theta)[n] for n in names] for theta in x[best_row]])
    samples[~np.isfinite(samples)] = np.nan  # a resample whose parameter overflowed says nothing of it
    return samples, names, float(np.mean(converged[best_row]))


def _percentile_intervals(samples: np.ndarray, names: tuple[str, ...]) -> _Intervals:
    """Standard errors and 95% percentile intervals of bootstrap samples, one column per name."""
    with np.errstate(over="ignore"):  # resamples of a coefficient near 1e300: its spread is infinite
        standard_errors = np.nanstd(samples, axis=0, ddof=1)
    return _Intervals(
        dict(zip(names, standard_errors, strict=True)),
        dict(zip(names, np.nanpercentile(samples, 2.5, axis=0), strict=True)),
        dict(zip(names, np.nanpercentile(samples, 97.5, axis=0), strict=True)),
    )
