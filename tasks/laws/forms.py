"""The nonlinear law forms, fitted in log space: Chinchilla, Kaplan and the one-axis power laws.

Every form's residual of a run is ``log(L_obs) - log(L_pred)``.  The Chinchilla form uses the objective
of Hoffmann et al. (2022): the Huber loss (delta 1e-3) of the log residuals, summed over runs, minimised
with L-BFGS from their grid of 4,500 starts (all screened together by the batched L-BFGS of
``tasks.laws.optimizer``).  The others are least squares on log loss from data-driven start grids.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.objective import _KaplanModel, _Objective, _SumOfPowerLaws
from tasks.laws.optimizer import _multistart_minimum
from tasks.laws.results import FitResult
from tasks.laws.uncertainty import (
    _bootstrap_samples,
    _delta_method_intervals,
    _delta_method_note,
    _exp,
    _FormSpec,
    _percentile_intervals,
    _sandwich_covariance,
)
from tasks.laws.validation import _check_bootstrap, _validated_columns

HUBER_DELTA_CHINCHILLA = 1e-3

# Hoffmann et al.'s start grid: alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}.
_GRID_EXPONENTS = np.arange(0.0, 2.01, 0.5)
_GRID_LOG_E = np.arange(-1.0, 1.01, 0.5)
_GRID_LOG_COEFFICIENTS = np.arange(0.0, 25.1, 5.0)

# A Chinchilla optimum is flagged as degenerate when a term stays below _NEGLIGIBLE_LOSS_SHARE of the
# smallest loss, or when an exponent times its variable's log range is below
# _CONSTANT_TERM_LOG_VARIATION (the term is a constant).
_NEGLIGIBLE_LOSS_SHARE = 1e-3
_CONSTANT_TERM_LOG_VARIATION = 0.01


def _share(part: float, total: float) -> float:
    return part / total if total != 0 else math.nan


def _chinchilla_public(theta: np.ndarray) -> dict[str, float]:
    log_e, log_a, alpha, log_b, beta = (float(v) for v in theta)
    return {
        "E": _exp(log_e),
        "A": _exp(log_a),
        "B": _exp(log_b),
        "alpha": alpha,
        "beta": beta,
        "a_opt": _share(beta, alpha + beta),
        "b_opt": _share(alpha, alpha + beta),
    }


def _power_law_public(theta: np.ndarray) -> dict[str, float]:
    log_e, log_a, alpha = (float(v) for v in theta)
    return {"E": _exp(log_e), "A": _exp(log_a), "alpha": alpha}


def _kaplan_public(theta: np.ndarray) -> dict[str, float]:
    log_n_c, log_d_c, alpha_n, alpha_d = (float(v) for v in theta)
    return {"N_c": _exp(log_n_c), "D_c": _exp(log_d_c), "alpha_N": alpha_n, "alpha_D": alpha_d}


_CHINCHILLA = _FormSpec("chinchilla", _chinchilla_public, frozenset({"E", "A", "B"}))
_KAPLAN = _FormSpec("kaplan", _kaplan_public, frozenset({"N_c", "D_c"}))


def _power_law_spec(axis: str) -> _FormSpec:
    return _FormSpec(f"power_law_{axis}", _power_law_public, frozenset({"E", "A"}))


def _fit_log_space(
    spec: _FormSpec,
    objective: _Objective,
    starts: np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    note: str,
) -> FitResult:
    """Best of ``starts`` and its intervals: percentile intervals of ``bootstrap`` resamples, or
    (bootstrap=0) the delta method on the sandwich covariance."""
    minimum = _multistart_minimum(objective, starts)
    params = spec.public(minimum.theta)
    samples, sample_names = None, ()
    if bootstrap > 0:
        samples, sample_names, converged_share = _bootstrap_samples(spec, objective, minimum, bootstrap, seed)
        intervals = _percentile_intervals(samples, sample_names)
        note += (
            f" Intervals: {bootstrap}-resample bootstrap, percentile "
            f"({converged_share:.1%} of refits converged)."
        )
    else:
        covariance = _sandwich_covariance(objective, minimum.theta)
        intervals = _delta_method_intervals(spec, minimum.theta, covariance)
        note += _delta_method_note(objective, minimum.theta, covariance is not None)
    return FitResult(
        form=spec.name,
        params={name: float(value) for name, value in params.items()},
        stderr={name: float(value) for name, value in intervals.stderr.items()},
        ci_low={name: float(value) for name, value in intervals.low.items()},
        ci_high={name: float(value) for name, value in intervals.high.items()},
        objective=minimum.value,
        n_points=len(objective.log_loss),
        converged=minimum.converged,
        residuals=objective.residuals(minimum.theta),
        note=note,
        samples=samples,
        sample_names=sample_names,
    )


def chinchilla_start_grid() -> np.ndarray:
    """Hoffmann et al.'s 4,500 starts as rows (e, a, alpha, b, beta)."""
    grid = itertools.product(
        _GRID_LOG_E, _GRID_LOG_COEFFICIENTS, _GRID_EXPONENTS, _GRID_LOG_COEFFICIENTS, _GRID_EXPONENTS
    )
    return np.array(list(grid))


def chinchilla_objective(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, huber_delta: float = HUBER_DELTA_CHINCHILLA
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """The summed Huber objective and its gradient at theta = (e, a, alpha, b, beta), for checks
    against other optimisers."""
    n, d, loss_values = _validated_columns("chinchilla", 5, N=N, D=D, loss=loss)
    return _chinchilla_objective(n, d, loss_values, huber_delta).scalar


def _chinchilla_objective(n: np.ndarray, d: np.ndarray, loss: np.ndarray, huber_delta: float) -> _Objective:
    return _Objective(_SumOfPowerLaws((np.log(n), np.log(d))), np.log(loss), huber_delta)


def fit_chinchilla(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    *,
    huber_delta: float = HUBER_DELTA_CHINCHILLA,
    bootstrap: int = 0,
    seed: int = 0,
) -> FitResult:
    """Fit L = E + A / N^alpha + B / D^beta as Hoffmann et al. (2022): Huber(delta) of log residuals,
    summed over runs, minimised from their 4,500-start grid.  ``bootstrap`` > 0 refits that many
    resamples of the runs for percentile intervals and keeps the samples (for compute_optimal bands).
    params also holds a_opt = beta/(alpha+beta) and b_opt = alpha/(alpha+beta)."""
    n, d, loss_values = _validated_columns("chinchilla", 5, N=N, D=D, loss=loss)
    _check_bootstrap(bootstrap)
    objective = _chinchilla_objective(n, d, loss_values, huber_delta)
    note = (
        f"Huber(delta={huber_delta:g}) on log loss, summed over runs; best of Hoffmann et al.'s 4,500 starts "
        "(all screened together by a batched L-BFGS, best basins polished to machine precision)."
    )
    result = _fit_log_space(
        _CHINCHILLA, objective, chinchilla_start_grid(), bootstrap=bootstrap, seed=seed, note=note
    )
    return _with_note(result, _chinchilla_degeneracy_note(result.params, n, d, loss_values))


def _chinchilla_degeneracy_note(
    params: dict[str, float], n: np.ndarray, d: np.ndarray, loss: np.ndarray
) -> str:
    """Warn when the optimum sits in a flat valley: a term that is negligible (< 0.1% of the smallest
    loss at every run) or constant (its exponent times the log range of its variable < 0.01)."""
    floor = _NEGLIGIBLE_LOSS_SHARE * float(loss.min())
    problems = ["E ~ 0"] if params["E"] < floor else []
    for name, coefficient, exponent, x in (("N", "A", "alpha", n), ("D", "B", "beta", d)):
        largest_term = params[coefficient] * float(np.max(x ** -params[exponent]))
        if largest_term < floor:
            problems.append(f"the {name} term ~ 0")
        elif abs(params[exponent]) * float(np.log(x.max() / x.min())) < _CONSTANT_TERM_LOG_VARIATION:
            problems.append(f"{exponent} ~ 0 (the {name} term is a constant that trades off with E)")
    if not problems:
        return ""
    return (
        f" Degenerate optimum: {'; '.join(problems)}. The data do not identify these parameters; "
        "compare objectives or predictions rather than parameter values."
    )


def fit_power_law(
    x: ArrayLike, loss: ArrayLike, *, axis: str, bootstrap: int = 0, seed: int = 0
) -> FitResult:
    """Fit L = E + A * x^(-alpha), E >= 0, by least squares on log loss from a data-driven start grid.
    ``axis`` names x: "N" (parameters), "D" (tokens) or "C" (FLOPs).  ``bootstrap`` > 0: percentile
    intervals from that many resamples of the runs, as in fit_chinchilla."""
    if axis not in ("N", "D", "C"):
        raise ValueError(f'axis must be "N", "D" or "C" (got {axis!r}); name the variable you pass as x.')
    x_values, loss_values = _validated_columns(f"power_law_{axis}", 3, **{axis: x, "loss": loss})
    _check_bootstrap(bootstrap)
    objective = _Objective(_SumOfPowerLaws((np.log(x_values),)), np.log(loss_values), math.inf)
    note = "Least squares on log loss; E = exp(e) keeps E >= 0."
    starts = _power_law_starts(x_values, loss_values)
    result = _fit_log_space(
        _power_law_spec(axis), objective, starts, bootstrap=bootstrap, seed=seed, note=note
    )
    if result.params["E"] < 1e-6 * float(np.min(loss_values)):
        return _with_note(result, " E went to its bound 0: the data favour a pure power law.")
    return result


def _power_law_starts(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Starts over a grid of (alpha, E as a fraction of the smallest loss), with log A set so the
    median log residual is zero."""
    starts = []
    for alpha in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5):
        for floor_fraction in (1e-6, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99):
            floor = floor_fraction * float(np.min(loss))
            log_a = float(np.median(np.log(loss - floor) + alpha * np.log(x)))
            starts.append((math.log(floor), log_a, alpha))
    return np.array(starts)


def fit_kaplan(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, bootstrap: int = 0, seed: int = 0
) -> FitResult:
    """Fit L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020, eq. 1.5) by least
    squares on log loss from a data-driven multi-start grid.  ``bootstrap`` > 0: percentile intervals
    from that many resamples of the runs, as in fit_chinchilla."""
    n, d, loss_values = _validated_columns("kaplan", 4, N=N, D=D, loss=loss)
    _check_bootstrap(bootstrap)
    objective = _Objective(_KaplanModel(np.log(n), np.log(d)), np.log(loss_values), math.inf)
    note = "Least squares on log loss."
    starts = _kaplan_starts(n, d, loss_values)
    return _fit_log_space(_KAPLAN, objective, starts, bootstrap=bootstrap, seed=seed, note=note)


def _kaplan_starts(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """For each (alpha_N, alpha_D) on a grid, log N_c and log D_c where either term alone would fit
    the median run, shifted by -1, 0, +1 nats."""
    exponents = (0.03, 0.07, 0.15, 0.3, 0.6)
    starts = []
    for alpha_n, alpha_d in itertools.product(exponents, exponents):
        log_n_c = float(np.median(np.log(n) + np.log(loss) / alpha_n))
        log_d_c = float(np.median(np.log(d) + np.log(loss) / alpha_d))
        for shift_n, shift_d in itertools.product((-1.0, 0.0, 1.0), repeat=2):
            starts.append((log_n_c + shift_n, log_d_c + shift_d, alpha_n, alpha_d))
    return np.array(starts)


def _with_note(result: FitResult, extra: str) -> FitResult:
    return replace(result, note=result.note + extra)
