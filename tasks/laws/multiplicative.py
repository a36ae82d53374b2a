"""The multiplicative form perf = a N^b D^c C^d: log-linear least squares with rank-deficiency detection."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.results import FitResult
from tasks.laws.uncertainty import Z_95, _exp, _Intervals, _percentile_intervals, _resample_counts
from tasks.laws.validation import UnidentifiableError, _check_bootstrap, _validated_columns

# A multiplicative design whose centred, unit-scaled log columns have a smallest/largest singular
# value ratio below this is treated as rank deficient.  Exact C = 6 N D gives ~1e-16; C = 6 N D with
# 0.1% (1%) log noise about 1.5e-4 (1.4e-3); C independent of N D typically > 0.05.  Below 1e-3, d
# would rest on sub-percent departures of C from a power of N D.
MULTIPLICATIVE_RANK_RTOL = 1e-3


def fit_multiplicative(
    N: ArrayLike, D: ArrayLike, C: ArrayLike, perf: ArrayLike, *, bootstrap: int = 0, seed: int = 0
) -> FitResult:
    """Fit perf = a * N^b * D^c * C^d by least squares on [1, log N, log D, log C].

    If the design is numerically rank deficient (conditioning below MULTIPLICATIVE_RANK_RTOL; e.g.
    C = 6 N D makes log C = log 6 + log N + log D), log C is dropped and the identifiable reduced form
    perf = a' N^b' D^c' is returned as "multiplicative_reduced": params b, c hold b' = b + d and
    c' = c + d, and d is nan.  Intervals are classical OLS; with ``bootstrap`` > 0, percentiles of
    least-squares refits to that many resamples of the runs."""
    n, d, c, perf_values = _validated_columns("multiplicative", 4, N=N, D=D, C=C, perf=perf)
    _check_bootstrap(bootstrap)
    options = {"bootstrap": bootstrap, "seed": seed}
    columns = {"log N": np.log(n), "log D": np.log(d), "log C": np.log(c)}
    conditioning = _design_conditioning(columns.values())
    if conditioning >= MULTIPLICATIVE_RANK_RTOL:
        note = f"Design conditioning (smallest/largest singular value, scaled columns) {conditioning:.2g}."
        return _log_linear_fit(
            "multiplicative", ("a", "b", "c", "d"), columns, perf_values, note=note, **options
        )
    reduced = {name: values for name, values in columns.items() if name != "log C"}
    if _design_conditioning(reduced.values()) < MULTIPLICATIVE_RANK_RTOL:
        raise UnidentifiableError(
            "log N and log D are collinear (or one is constant), so no multiplicative form is "
            "identifiable; vary N and D independently across runs."
        )
    note = (
        f"log C is a linear combination of 1, log N and log D (design conditioning {conditioning:.2g} < "
        f"{MULTIPLICATIVE_RANK_RTOL:g}), e.g. C = 6ND, so d is unidentifiable. Fitted the reduced form "
        "perf = a' N^b' D^c': params b, c are b' = b + d and c' = c + d, a' = a k^d when C = k N D; d is nan."
    )
    result = _log_linear_fit(
        "multiplicative_reduced", ("a", "b", "c"), reduced, perf_values, note=note, **options
    )
    return replace(result, **_with_nan_param(result, "d"))


def _design_conditioning(log_columns: Iterable[np.ndarray]) -> float:
    """Smallest over largest singular value of the columns after centring (which projects out the
    intercept) and scaling to unit norm; 0 when a column is constant or the columns are collinear."""
    scaled = []
    for column in log_columns:
        centred = column - column.mean()
        norm = np.linalg.norm(centred)
        if norm <= 1e-12 * max(1.0, float(np.abs(column).max())):
            return 0.0
        scaled.append(centred / norm)
    singular_values = np.linalg.svd(np.column_stack(scaled), compute_uv=False)
    return float(singular_values.min() / singular_values.max())


def _with_nan_param(result: FitResult, name: str) -> dict[str, dict[str, float]]:
    return {
        key: {**getattr(result, key), name: math.nan} for key in ("params", "stderr", "ci_low", "ci_high")
    }


def _log_linear_fit(
    form: str,
    names: tuple[str, ...],
    log_columns: dict[str, np.ndarray],
    perf: np.ndarray,
    *,
    note: str,
    bootstrap: int = 0,
    seed: int = 0,
) -> FitResult:
    """Ordinary least squares of log perf on [1, columns]; the intercept is reported as exp(.)."""
    design = np.column_stack([np.ones(len(perf)), *log_columns.values()])
    log_perf = np.log(perf)
    coefficients, *_ = np.linalg.lstsq(design, log_perf, rcond=None)
    residuals = log_perf - design @ coefficients
    to_scale = [_exp] + [float] * (len(names) - 1)
    params = {name: f(v) for name, f, v in zip(names, to_scale, coefficients, strict=True)}
    samples, sample_names = None, ()
    if bootstrap > 0:
        resampled, identified = _resampled_coefficients(design, log_perf, bootstrap, seed)
        samples = np.array([[f(v) for f, v in zip(to_scale, row, strict=True)] for row in resampled])
        samples[~np.isfinite(samples)] = np.nan  # a resample whose intercept overflowed says nothing of it
        sample_names = names
        intervals = _percentile_intervals(samples, names)
        method = (
            f"{bootstrap}-resample bootstrap, percentile ({identified:.1%} of resamples identified the form)"
        )
    else:
        intervals = _ols_intervals(design, residuals, coefficients, names, to_scale)
        method = "classical OLS (normal approximation)"
    return FitResult(
        form=form,
        params=params,
        stderr={name: float(v) for name, v in intervals.stderr.items()},
        ci_low={name: float(v) for name, v in intervals.low.items()},
        ci_high={name: float(v) for name, v in intervals.high.items()},
        objective=float(residuals @ residuals),
        n_points=len(perf),
        converged=True,
        residuals=residuals,
        note=f"{note} Least squares on log perf; intervals: {method}.",
        samples=samples,
        sample_names=sample_names,
    )


def _ols_intervals(
    design: np.ndarray,
    residuals: np.ndarray,
    coefficients: np.ndarray,
    names: tuple[str, ...],
    to_scale: list[Callable[[float], float]],
) -> _Intervals:
    """Classical OLS standard errors and normal 95% intervals of the reported parameters."""
    dof = len(residuals) - design.shape[1]
    covariance = float(residuals @ residuals) / dof * np.linalg.inv(design.T @ design)
    stderr = np.sqrt(np.diag(covariance))
    low, high = coefficients - Z_95 * stderr, coefficients + Z_95 * stderr
    # The intercept is reported as a = exp(log a): its interval is exp of the log-scale one and its
    # standard error a * se(log a) (delta method).
    stderr[0] *= to_scale[0](coefficients[0])
    return _Intervals(
        {name: float(v) for name, v in zip(names, stderr, strict=True)},
        {name: f(v) for name, f, v in zip(names, to_scale, low, strict=True)},
        {name: f(v) for name, f, v in zip(names, to_scale, high, strict=True)},
    )


def _resampled_coefficients(
    design: np.ndarray, log_perf: np.ndarray, n_resamples: int, seed: int
) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of ``n_resamples`` resamples of the runs (with replacement), one row
    per resample, nan where a resample repeats too few distinct runs to identify them; and the share
    of resamples that identify them."""
    coefficients = np.full((n_resamples, design.shape[1]), np.nan)
    for row, counts in enumerate(_resample_counts(len(log_perf), n_resamples, seed)):
        weights = np.sqrt(counts)
        solution, _, rank, _ = np.linalg.lstsq(design * weights[:, None], log_perf * weights, rcond=None)
        if rank == design.shape[1]:
            coefficients[row] = solution
    return coefficients, float(np.mean(np.isfinite(coefficients[:, 0])))
