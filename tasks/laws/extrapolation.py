"""How a fitted law extrapolates: a fit on the smaller runs that predicts the larger ones, and the
confidence and prediction bands of a bootstrapped Chinchilla fit."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import FLOPS_PER_PARAM_TOKEN
from tasks.laws.predictors import _predict_chinchilla
from tasks.laws.registry import fit
from tasks.laws.results import ExtrapolationResult, FitResult, PredictionBands
from tasks.laws.validation import _validated_columns


def _predict_runs(result: FitResult, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Predicted loss of runs (N, D) for any form, with C = 6 N D where a form needs it."""
    compute = FLOPS_PER_PARAM_TOKEN * n * d
    first_argument = {"power_law_D": d, "power_law_C": compute}.get(result.form, n)
    return result.predict(first_argument, d, C=compute)


def prediction_bands(fit: FitResult, N: ArrayLike, D: ArrayLike, level: float = 0.95) -> PredictionBands:
    """Confidence and prediction bands of a bootstrapped Chinchilla fit at (N, D)."""
    if fit.form != "chinchilla" or fit.samples is None:
        raise ValueError("prediction_bands needs a chinchilla fit with bootstrap > 0; refit with bootstrap.")
    n, d = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
    names = ("E", "A", "B", "alpha", "beta")
    draws = np.stack(
        [
            _predict_chinchilla(dict(zip(names, row, strict=True)), n, d, None)
            for row in _parameter_rows(fit, names)
        ]
    )
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    with_scatter = draws[:, None, ...] * np.exp(fit.residuals)[None, :, *([None] * n.ndim)]
    with_scatter = with_scatter.reshape(-1, *n.shape)
    return PredictionBands(
        predicted=fit.predict(n, d),
        confidence=tuple(np.nanpercentile(draws, tails, axis=0)),
        prediction=tuple(np.nanpercentile(with_scatter, tails, axis=0)),
    )


def _parameter_rows(fit: FitResult, names: tuple[str, ...]) -> np.ndarray:
    return np.column_stack([fit.sample_column(name) for name in names])


def extrapolation_check(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, threshold_flops: float, form: str = "chinchilla"
) -> ExtrapolationResult:
    """Fit ``form`` on runs with 6 N D below ``threshold_flops`` and predict the others."""
    n, d, loss_values = _validated_columns("extrapolation_check", None, N=N, D=D, loss=loss)
    compute = FLOPS_PER_PARAM_TOKEN * n * d
    train = compute < threshold_flops
    if train.all() or not train.any():
        raise ValueError(
            f"threshold_flops={threshold_flops:g} leaves {int(train.sum())} training and "
            f"{int((~train).sum())} held-out runs; pick a threshold between {compute.min():g} "
            f"and {compute.max():g}."
        )
    result = fit(form, n[train], d[train], loss_values[train])
    predicted = _predict_runs(result, n[~train], d[~train])
    observed = loss_values[~train]
    relative_error = (predicted - observed) / observed
    return ExtrapolationResult(
        fit=result,
        threshold_flops=float(threshold_flops),
        n_train=int(train.sum()),
        held_out_compute=compute[~train],
        observed=observed,
        predicted=predicted,
        relative_error=relative_error,
        mean_abs_relative_error=float(np.mean(np.abs(relative_error))),
        max_abs_relative_error=float(np.max(np.abs(relative_error))),
    )
